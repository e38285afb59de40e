//! `/decisions/{tx_id}`: one decision and why, and the form that labels it.

use super::charts::{self, Past};
use super::{check_csrf, html, Nav, PageError, Shared, Viewer};
use askama::Template;
use axum::extract::{Form, Path, Query, State};
use axum::response::{Html, Redirect};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use sqlx::Row;
use std::collections::HashMap;

/// One model input: its value and how much attention it got.
pub struct FeatureBar {
    pub name: String,
    pub value: String,
    pub weight: f32,
    /// Bar length, % of the largest weight.
    pub width: f32,
}

/// One of the card's earlier transactions the model looked at.
pub struct HistoryRow {
    pub position: usize,
    pub tx_id: String,
    pub ts: String,
    pub amount: String,
    pub terminal_id: String,
    pub decision: String,
    pub label: String,
    pub weight: f32,
    pub width: f32,
}

pub struct Review {
    pub label: String,
    pub reviewer: String,
    pub at: String,
    pub note: String,
}

#[derive(Template)]
#[template(path = "decision.html")]
struct DecisionPage {
    nav: Nav,
    tx_id: String,
    facts: Vec<(&'static str, String)>,
    score: f32,
    decision: String,
    rules_fired: Vec<String>,
    model: String,
    policy_version: i32,
    review_at: String,
    decline_at: String,
    policy_by: String,
    features: Vec<FeatureBar>,
    timeline: String,
    history: Vec<HistoryRow>,
    /// The label in force: "fraud", "legitimate" or "", and where it came from.
    label: String,
    label_source: String,
    stream_label: bool,
    reviews: Vec<Review>,
    just_labelled: bool,
}

#[derive(Deserialize)]
pub struct Shown {
    labelled: Option<String>,
}

pub async fn page(
    State(c): State<Shared>,
    viewer: Viewer,
    Path(tx_id): Path<String>,
    Query(shown): Query<Shown>,
) -> Result<Html<String>, PageError> {
    let r = sqlx::query(
        "SELECT d.ts, d.card_id, d.terminal_id, d.amount::text || coalesce(' ' || d.currency, ''),
                d.mcc, d.channel, d.country, d.score, d.decision, d.rules_fired,
                d.model_name || ' v' || d.model_version, d.threshold_version, d.features,
                d.decided_at, m.feature_names, e.feature_weights, e.history_tx_ids,
                e.history_weights, t.thresholds, t.changed_by, d.state_complete
           FROM risk_decisions d
           JOIN threshold_sets t ON t.version = d.threshold_version
           LEFT JOIN model_versions m
                  ON m.name = d.model_name AND m.version = d.model_version AND m.sha256 = d.model_sha256
           LEFT JOIN attention_explanations e USING (tx_id, ts)
          -- the time from decision_ids: one partition read, not every month's
          WHERE d.tx_id = $1 AND d.ts = (SELECT ts FROM decision_ids WHERE tx_id = $1)",
    )
    .bind(&tx_id)
    .fetch_optional(&c.pool)
    .await?
    .ok_or_else(|| PageError::NotFound(format!("no decision for transaction {tx_id:?}")))?;

    let ts: DateTime<Utc> = r.get(0);
    let channel: Option<String> = r.get(5);
    let mcc: Option<i32> = r.get(4);
    let country: Option<String> = r.get(6);
    let decided_at: DateTime<Utc> = r.get(13);
    let state_complete: bool = r.get(20);
    let facts = vec![
        ("time", ts.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        ("card", r.get(1)),
        ("terminal", r.get(2)),
        ("amount", r.get(3)),
        ("channel", channel.clone().unwrap_or_else(|| "-".into())),
        ("mcc", mcc.map_or("-".into(), |m| m.to_string())),
        ("country", country.unwrap_or_else(|| "-".into())),
        (
            "decided at",
            decided_at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
        ),
        (
            "card/terminal state",
            if state_complete {
                "complete".into()
            } else {
                "incomplete (the watermark was not reached in time)".into()
            },
        ),
    ];

    // The thresholds that applied to this transaction's channel.
    let thresholds: serde_json::Value = r.get(18);
    let applied = channel
        .as_deref()
        .and_then(|ch| thresholds.get("channel")?.get(ch))
        .unwrap_or(&thresholds);
    // Stored from f32: shown as the f32 it was (0.176094, not 0.17609399557113647).
    let at = |k: &str| {
        applied
            .get(k)
            .and_then(serde_json::Value::as_f64)
            .map_or("-".into(), |v| (v as f32).to_string())
    };

    let features = feature_bars(
        &r.get::<Option<Vec<String>>, _>(14).unwrap_or_default(),
        &r.get::<Vec<f32>, _>(12),
        &r.get::<Option<Vec<f32>>, _>(15).unwrap_or_default(),
    );

    let ids: Vec<Option<String>> = r
        .get::<Option<Vec<Option<String>>>, _>(16)
        .unwrap_or_default();
    let weights: Vec<f32> = r.get::<Option<Vec<f32>>, _>(17).unwrap_or_default();
    let (timeline, history) = history(&c, &ids, &weights, ts).await?;

    let stream: Option<(bool, DateTime<Utc>)> =
        sqlx::query_as("SELECT is_fraud, reported_at FROM labels WHERE tx_id = $1")
            .bind(&tx_id)
            .fetch_optional(&c.pool)
            .await?;
    let reviews: Vec<Review> = sqlx::query(
        "SELECT is_fraud, reviewer, reviewed_at, note FROM label_reviews
          WHERE tx_id = $1 ORDER BY id DESC",
    )
    .bind(&tx_id)
    .fetch_all(&c.pool)
    .await?
    .iter()
    .map(|r| Review {
        label: label_word(Some(r.get(0))).into(),
        reviewer: r.get(1),
        at: r
            .get::<DateTime<Utc>, _>(2)
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
        note: r.get(3),
    })
    .collect();
    let (label, label_source) = match (&stream, reviews.first()) {
        (Some((fraud, at)), _) => (
            label_word(Some(*fraud)).to_string(),
            format!(
                "the labels stream, reported {}",
                at.format("%Y-%m-%d %H:%M UTC")
            ),
        ),
        (None, Some(latest)) => (
            latest.label.clone(),
            format!("review by {} at {}", latest.reviewer, latest.at),
        ),
        (None, None) => (String::new(), String::new()),
    };

    html(DecisionPage {
        nav: Nav::of(&viewer, "decision"),
        tx_id,
        facts,
        score: r.get(7),
        decision: r.get(8),
        rules_fired: r.get(9),
        model: r.get(10),
        policy_version: r.get(11),
        review_at: at("review"),
        decline_at: at("decline"),
        policy_by: r.get(19),
        features,
        timeline,
        history,
        label,
        label_source,
        stream_label: stream.is_some(),
        reviews,
        just_labelled: shown.labelled.is_some(),
    })
}

fn label_word(fraud: Option<bool>) -> &'static str {
    match fraud {
        Some(true) => "fraud",
        Some(false) => "legitimate",
        None => "",
    }
}

/// The model's inputs by name with their attention, most attended first.
fn feature_bars(names: &[String], values: &[f32], weights: &[f32]) -> Vec<FeatureBar> {
    let max = weights.iter().copied().fold(0.0f32, f32::max).max(1e-9);
    let mut bars: Vec<FeatureBar> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| FeatureBar {
            name: names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("input {i}")),
            value: values.get(i).map_or("-".into(), |v| format!("{v:.4}")),
            weight: w,
            width: 100.0 * w / max,
        })
        .collect();
    bars.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    bars
}

/// The card's earlier transactions the model attended to: a timeline and a
/// table, most attended first.
async fn history(
    c: &Shared,
    ids: &[Option<String>],
    weights: &[f32],
    now: DateTime<Utc>,
) -> Result<(String, Vec<HistoryRow>), PageError> {
    let present: Vec<(usize, &str, f32)> = ids
        .iter()
        .zip(weights)
        .enumerate()
        .filter_map(|(i, (id, w))| Some((i, id.as_deref()?, *w)))
        .collect();
    let wanted: Vec<&str> = present.iter().map(|p| p.1).collect();
    let rows = sqlx::query(
        "SELECT d.tx_id, d.ts, d.amount::float8, d.terminal_id, d.decision, l.is_fraud
           FROM decision_ids i
           JOIN risk_decisions d ON d.tx_id = i.tx_id AND d.ts = i.ts
           LEFT JOIN labels_in_force l ON l.tx_id = d.tx_id
          WHERE i.tx_id = ANY ($1)",
    )
    .bind(&wanted)
    .fetch_all(&c.pool)
    .await?;
    struct Stored {
        ts: DateTime<Utc>,
        amount: f64,
        terminal: String,
        decision: String,
        fraud: Option<bool>,
    }
    let stored: HashMap<String, Stored> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                Stored {
                    ts: r.get(1),
                    amount: r.get(2),
                    terminal: r.get(3),
                    decision: r.get(4),
                    fraud: r.get(5),
                },
            )
        })
        .collect();
    let max = present.iter().map(|p| p.2).fold(0.0f32, f32::max).max(1e-9);
    let past: Vec<Past> = present
        .iter()
        .filter_map(|(_, id, w)| {
            let s = stored.get(*id)?;
            Some(Past {
                tx_id: id,
                ts: s.ts,
                weight: *w,
                amount: s.amount,
                fraud: s.fraud,
            })
        })
        .collect();
    let mut table: Vec<HistoryRow> = present
        .iter()
        .map(|(i, id, w)| {
            let s = stored.get(*id);
            HistoryRow {
                position: i + 1,
                tx_id: id.to_string(),
                ts: s.map_or("not stored".into(), |s| {
                    s.ts.format("%Y-%m-%d %H:%M").to_string()
                }),
                amount: s.map_or("-".into(), |s| format!("{:.2}", s.amount)),
                terminal_id: s.map_or("-".into(), |s| s.terminal.clone()),
                decision: s.map_or("-".into(), |s| s.decision.clone()),
                label: label_word(s.and_then(|s| s.fraud)).into(),
                weight: *w,
                width: 100.0 * w / max,
            }
        })
        .collect();
    table.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    Ok((charts::timeline(&past, now), table))
}

#[derive(Deserialize)]
pub struct LabelForm {
    csrf: String,
    /// "fraud" or "legitimate".
    label: String,
    #[serde(default)]
    note: String,
}

/// Append a review; the page shows it (and whether the stream's label
/// overrides it).
pub async fn label(
    State(c): State<Shared>,
    viewer: Viewer,
    Path(tx_id): Path<String>,
    Form(f): Form<LabelForm>,
) -> Result<Redirect, PageError> {
    check_csrf(&viewer, &f.csrf)?;
    if !viewer.may_label() {
        return Err(PageError::Forbidden(format!(
            "{} is {}: only reviewers label decisions",
            viewer.name,
            viewer.role.as_str()
        )));
    }
    let is_fraud = match f.label.as_str() {
        "fraud" => true,
        "legitimate" => false,
        other => {
            return Err(PageError::BadRequest(vec![format!(
                "label: {other:?} is not fraud or legitimate"
            )]))
        }
    };
    let note = f.note.trim();
    if note.chars().count() > 2000 {
        return Err(PageError::BadRequest(vec![
            "note: at most 2,000 characters".into(),
        ]));
    }
    let inserted = sqlx::query(
        "INSERT INTO label_reviews (tx_id, is_fraud, reviewer, note)
         SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT FROM decision_ids WHERE tx_id = $1)",
    )
    .bind(&tx_id)
    .bind(is_fraud)
    .bind(&viewer.name)
    .bind(note)
    .execute(&c.pool)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(PageError::NotFound(format!(
            "no decision for transaction {tx_id:?}"
        )));
    }
    tracing::info!(tx_id, reviewer = viewer.name, is_fraud, "decision labelled");
    // The quality figures count it now, not at the next minute's refresh.
    if let Err(e) = crate::sink::refresh_summaries(&c.pool, 0).await {
        tracing::warn!(error = %e, "daily summaries not refreshed after a label");
    }
    Ok(Redirect::to(&format!(
        "/decisions/{}?labelled=1",
        super::queue::encode(&tx_id)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_are_shown_most_attended_first_scaled_to_the_largest() {
        let names = vec!["a".to_string(), "b".into(), "c".into()];
        let bars = feature_bars(&names, &[1.0, 2.0, 3.0], &[0.2, 0.5, 0.3]);
        let order: Vec<&str> = bars.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(order, ["b", "c", "a"]);
        assert_eq!(bars[0].width, 100.0);
        assert!((bars[2].width - 40.0).abs() < 1e-4);
        assert_eq!(bars[0].value, "2.0000");
    }
}
