//! `/what-if`: `riskstream backtest` on a page. The candidate is the policy
//! in the engine's configuration file (read at each request: an edit shows
//! at once) with the review and decline thresholds from the form; the figures
//! and the sweep's curve are the backtest's own ([`crate::backtest`]).

use super::{date_range, given, html, Nav, PageError, Shared, Viewer};
use crate::backtest::{self, Figures};
use crate::config::Config;
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use serde::Deserialize;

/// A page holds at most this many decisions in memory to replay them.
const MAX_ROWS: i64 = 3_000_000;

#[derive(Deserialize)]
pub struct Form {
    from: Option<String>,
    to: Option<String>,
    review: Option<String>,
    decline: Option<String>,
}

/// One line of the side-by-side table.
pub struct Line {
    pub what: &'static str,
    pub in_force: String,
    pub candidate: String,
}

#[derive(Template)]
#[template(path = "what_if.html")]
struct WhatIfPage {
    nav: Nav,
    from: String,
    to: String,
    review: String,
    decline: String,
    decisions: u64,
    versions: String,
    lines: Vec<Line>,
    changes: Vec<(String, u64)>,
    plot: String,
}

pub async fn page(
    State(c): State<Shared>,
    viewer: Viewer,
    Query(f): Query<Form>,
) -> Result<Html<String>, PageError> {
    let (from, to) = date_range(&c, &f.from, &f.to, 7).await?;
    let config = match &c.config_path {
        Some(path) => Config::load(path)
            .map_err(|e| PageError::BadRequest(vec![format!("the engine's configuration: {e}")]))?,
        None => c.config.clone(),
    };
    let mut problems = Vec::new();
    let mut threshold = |name: &str, v: &Option<String>, current: f32| match given(v) {
        None => Some(current),
        Some(s) => s
            .parse::<f32>()
            .map_err(|_| problems.push(format!("{name}: {s:?} is not a number")))
            .ok(),
    };
    let review = threshold("review", &f.review, config.thresholds.review);
    let decline = threshold("decline", &f.decline, config.thresholds.decline);
    if !problems.is_empty() {
        return Err(PageError::BadRequest(problems));
    }
    let (policy, inputs) = backtest::candidate(config, review, decline)
        .map_err(|e| PageError::BadRequest(vec![format!("{e:#}")]))?;
    let (start, end) = backtest::bounds(Some(from), Some(to));
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM risk_decisions WHERE ts >= $1 AND ts < $2")
            .bind(start)
            .bind(end)
            .fetch_one(&c.pool)
            .await?;
    if count > MAX_ROWS {
        return Err(PageError::BadRequest(vec![format!(
            "{from}..{to} holds {count} decisions, more than a page replays ({MAX_ROWS}): \
             choose fewer days, or run `riskstream backtest`"
        )]));
    }
    let loaded = backtest::load(&c.pool, Some(from), Some(to), inputs, false).await?;
    let report = tokio::task::spawn_blocking(move || backtest::run(&loaded, &policy, true))
        .await
        .map_err(|e| PageError::Internal(e.into()))?;
    html(WhatIfPage {
        nav: Nav::of(&viewer, "what-if"),
        from: from.to_string(),
        to: to.to_string(),
        review: review.map_or(String::new(), |v| v.to_string()),
        decline: decline.map_or(String::new(), |v| v.to_string()),
        decisions: report.in_force.decisions,
        versions: report
            .versions_in_force
            .iter()
            .map(|v| format!("v{v}"))
            .collect::<Vec<_>>()
            .join(", "),
        lines: lines(&report.in_force, &report.candidate),
        changes: report.changes.clone().into_iter().collect(),
        plot: backtest::plot::svg(&report),
    })
}

fn lines(a: &Figures, b: &Figures) -> Vec<Line> {
    let int = |v: u64| v.to_string();
    let day = |v: f64| format!("{v:.1}");
    let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}"));
    let money = |v: f64| format!("{v:.2}");
    let line = |what, f: &dyn Fn(&Figures) -> String| Line {
        what,
        in_force: f(a),
        candidate: f(b),
    };
    vec![
        line("alerts (review + decline)", &|f| int(f.alerts)),
        line("alerts per day", &|f| day(f.alerts_per_day)),
        line("review queue per day", &|f| day(f.reviews_per_day)),
        line("declines", &|f| int(f.declines)),
        line("frauds alerted", &|f| {
            format!("{} of {}", f.frauds_alerted, f.frauds)
        }),
        line("precision", &|f| ratio(f.precision)),
        line("recall", &|f| ratio(f.recall)),
        line("fraud amount caught", &|f| money(f.fraud_amount_caught)),
        line("good amount declined", &|f| money(f.good_amount_declined)),
    ]
}
