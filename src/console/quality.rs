//! `/quality`: alerts per day, precision and recall against
//! `labels_in_force`, per model and policy version (view
//! `alert_quality_by_version`).

use super::charts::{self, Series};
use super::{date_range, html, Nav, PageError, Shared, Viewer};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use chrono::NaiveDate;
use serde::Deserialize;
use sqlx::Row;
use std::collections::BTreeMap;

#[derive(Deserialize)]
pub struct Range {
    from: Option<String>,
    to: Option<String>,
}

pub struct QualityRow {
    pub day: NaiveDate,
    pub version: String,
    pub decisions: i64,
    pub alerts: i64,
    pub true_alerts: i64,
    pub frauds: i64,
    /// `None` without alerts (precision) or without frauds (recall).
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

impl QualityRow {
    /// A ratio for the table: four decimals, or a dash when undefined.
    pub fn shown(&self, v: &Option<f64>) -> String {
        v.map_or("-".into(), |v| format!("{v:.4}"))
    }
}

#[derive(Template)]
#[template(path = "quality.html")]
struct QualityPage {
    nav: Nav,
    from: String,
    to: String,
    alerts_chart: String,
    precision_chart: String,
    recall_chart: String,
    rows: Vec<QualityRow>,
}

pub async fn page(
    State(c): State<Shared>,
    viewer: Viewer,
    Query(q): Query<Range>,
) -> Result<Html<String>, PageError> {
    let (from, to) = date_range(&c, &q.from, &q.to, 30).await?;
    let rows: Vec<QualityRow> = sqlx::query(
        "SELECT day, model || ' · policy v' || threshold_version, decisions, alerts, true_alerts,
                frauds, precision::float8, recall::float8
           FROM alert_quality_by_version
          WHERE day BETWEEN $1 AND $2
          ORDER BY day, 2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&c.pool)
    .await?
    .iter()
    .map(|r| QualityRow {
        day: r.get(0),
        version: r.get(1),
        decisions: r.get(2),
        alerts: r.get(3),
        true_alerts: r.get(4),
        frauds: r.get(5),
        precision: r.get(6),
        recall: r.get(7),
    })
    .collect();
    // One line per model and policy version.
    let series = |pick: &dyn Fn(&QualityRow) -> Option<f64>| {
        let mut by: BTreeMap<&str, Vec<(NaiveDate, Option<f64>)>> = BTreeMap::new();
        for r in &rows {
            by.entry(r.version.as_str())
                .or_default()
                .push((r.day, pick(r)));
        }
        by.into_iter()
            .map(|(name, points)| Series {
                name: name.to_owned(),
                points,
            })
            .collect::<Vec<_>>()
    };
    html(QualityPage {
        nav: Nav::of(&viewer, "quality"),
        from: from.to_string(),
        to: to.to_string(),
        alerts_chart: charts::lines("alerts per day", &series(&|r| Some(r.alerts as f64)), None),
        precision_chart: charts::lines(
            "precision (frauds among alerts)",
            &series(&|r| r.precision),
            Some(1.0),
        ),
        recall_chart: charts::lines(
            "recall (alerted frauds among frauds)",
            &series(&|r| r.recall),
            Some(1.0),
        ),
        rows,
    })
}
