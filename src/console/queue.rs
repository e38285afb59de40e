//! `/queue`: decisions in review, newest first, 50 a page.
//!
//! Filters: day, channel, minimum score, a rule that fired, unlabelled only.
//! Paging is by position (`before` = the last row's time and id), so new
//! decisions arriving while a reviewer pages do not shift what they see; it
//! reads the partial index `risk_decisions_review_queue`.

use super::{given, html, Nav, PageError, Shared, Viewer};
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use sqlx::Row;

const PAGE: i64 = 50;

#[derive(Deserialize, Default)]
pub struct Filters {
    day: Option<String>,
    channel: Option<String>,
    min_score: Option<String>,
    rule: Option<String>,
    unlabelled: Option<String>,
    before_ts: Option<String>,
    before_tx: Option<String>,
}

/// The filters, checked.
struct Parsed {
    day: Option<NaiveDate>,
    channel: Option<String>,
    min_score: Option<f32>,
    rule: Option<String>,
    unlabelled: bool,
    before: Option<(DateTime<Utc>, String)>,
}

fn parse(f: &Filters) -> Result<Parsed, PageError> {
    let mut problems = Vec::new();
    let day = given(&f.day).and_then(|d| {
        d.parse::<NaiveDate>()
            .map_err(|_| problems.push(format!("day: {d:?} is not a date like 2026-12-01")))
            .ok()
    });
    let channel = given(&f.channel).and_then(|c| {
        if crate::event::Channel::parse(c).is_some() {
            Some(c.to_owned())
        } else {
            problems.push(format!("channel: {c:?} is not pos, ecom or atm"));
            None
        }
    });
    let min_score = given(&f.min_score).and_then(|s| match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Some(v),
        _ => {
            problems.push(format!(
                "minimum score: {s:?} is not a number within [0, 1]"
            ));
            None
        }
    });
    let before = match (given(&f.before_ts), given(&f.before_tx)) {
        (Some(ts), Some(tx)) => match DateTime::parse_from_rfc3339(ts) {
            Ok(t) => Some((t.with_timezone(&Utc), tx.to_owned())),
            Err(_) => {
                problems.push(format!("before_ts: {ts:?} is not an RFC 3339 time"));
                None
            }
        },
        _ => None,
    };
    if !problems.is_empty() {
        return Err(PageError::BadRequest(problems));
    }
    Ok(Parsed {
        day,
        channel,
        min_score,
        rule: given(&f.rule).map(str::to_owned),
        unlabelled: given(&f.unlabelled).is_some(),
        before,
    })
}

pub struct QueueRow {
    pub tx_id: String,
    pub ts: DateTime<Utc>,
    pub card_id: String,
    pub amount: String,
    pub channel: String,
    pub score: f32,
    pub rules_fired: Vec<String>,
    /// "fraud", "legitimate" or "" (no label yet), and whose.
    pub label: String,
    pub label_source: String,
}

#[derive(Template)]
#[template(path = "queue.html")]
struct QueuePage {
    nav: Nav,
    rows: Vec<QueueRow>,
    day: String,
    channel: String,
    /// Each channel and whether it is the one filtered on.
    channels: Vec<(&'static str, bool)>,
    min_score: String,
    rule: String,
    unlabelled: bool,
    rule_names: Vec<String>,
    /// The query string of the next (older) page, if there is one.
    next: Option<String>,
    filtered: bool,
}

pub async fn page(
    State(c): State<Shared>,
    viewer: Viewer,
    Query(f): Query<Filters>,
) -> Result<Html<String>, PageError> {
    let p = parse(&f)?;
    let rows = sqlx::query(
        "SELECT d.tx_id, d.ts, d.card_id, d.amount::text || coalesce(' ' || d.currency, ''),
                coalesce(d.channel, ''), d.score, d.rules_fired,
                l.is_fraud, coalesce(l.source || coalesce(' · ' || l.reviewer, ''), '')
           FROM risk_decisions d
           LEFT JOIN labels_in_force l USING (tx_id)
          WHERE d.decision = 'review'
            AND ($1::date IS NULL OR (d.ts >= $1::date AND d.ts < $1::date + 1))
            AND ($2::text IS NULL OR d.channel = $2)
            AND ($3::real IS NULL OR d.score >= $3)
            AND ($4::text IS NULL OR $4 = ANY (d.rules_fired))
            AND (NOT $5 OR l.tx_id IS NULL)
            AND ($6::timestamptz IS NULL OR (d.ts, d.tx_id) < ($6, $7))
          ORDER BY d.ts DESC, d.tx_id DESC
          LIMIT $8",
    )
    .bind(p.day)
    .bind(&p.channel)
    .bind(p.min_score)
    .bind(&p.rule)
    .bind(p.unlabelled)
    .bind(p.before.as_ref().map(|b| b.0))
    .bind(p.before.as_ref().map(|b| b.1.clone()))
    .bind(PAGE + 1)
    .fetch_all(&c.pool)
    .await?;
    let more = rows.len() as i64 > PAGE;
    let rows: Vec<QueueRow> = rows
        .iter()
        .take(PAGE as usize)
        .map(|r| {
            let label: Option<bool> = r.get(7);
            QueueRow {
                tx_id: r.get(0),
                ts: r.get(1),
                card_id: r.get(2),
                amount: r.get(3),
                channel: r.get(4),
                score: r.get(5),
                rules_fired: r.get(6),
                label: match label {
                    Some(true) => "fraud",
                    Some(false) => "legitimate",
                    None => "",
                }
                .into(),
                label_source: r.get(8),
            }
        })
        .collect();
    let next = match rows.last() {
        Some(last) if more => {
            let mut q = form_urlencoded(&[
                ("day", given(&f.day).unwrap_or("")),
                ("channel", given(&f.channel).unwrap_or("")),
                ("min_score", given(&f.min_score).unwrap_or("")),
                ("rule", given(&f.rule).unwrap_or("")),
                ("before_ts", &last.ts.to_rfc3339()),
                ("before_tx", &last.tx_id),
            ]);
            if p.unlabelled {
                q.push_str("&unlabelled=1");
            }
            Some(q)
        }
        _ => None,
    };
    html(QueuePage {
        nav: Nav::of(&viewer, "queue"),
        rows,
        day: given(&f.day).unwrap_or("").into(),
        channels: ["pos", "ecom", "atm"]
            .into_iter()
            .map(|ch| (ch, p.channel.as_deref() == Some(ch)))
            .collect(),
        channel: p.channel.unwrap_or_default(),
        min_score: given(&f.min_score).unwrap_or("").into(),
        rule: p.rule.unwrap_or_default(),
        unlabelled: p.unlabelled,
        rule_names: c.config.rules.rule.iter().map(|r| r.name.clone()).collect(),
        next,
        filtered: p.before.is_some(),
    })
}

/// `k=v&k=v`, percent-encoded.
fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(super) fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_filter_is_named() {
        let f = Filters {
            day: Some("yesterday".into()),
            channel: Some("fax".into()),
            min_score: Some("2".into()),
            ..Filters::default()
        };
        match parse(&f) {
            Err(PageError::BadRequest(p)) => {
                assert_eq!(p.len(), 3, "{p:?}");
                assert!(p[0].starts_with("day") && p[1].starts_with("channel"));
            }
            other => panic!("expected a bad request, got {:?}", other.err()),
        }
        let ok = parse(&Filters {
            day: Some(" ".into()),
            min_score: Some("0.5".into()),
            ..Filters::default()
        })
        .ok()
        .unwrap();
        assert_eq!((ok.day, ok.min_score), (None, Some(0.5)));
    }

    #[test]
    fn cursors_are_percent_encoded() {
        assert_eq!(
            form_urlencoded(&[("before_tx", "a&b=c d"), ("x", "é")]),
            "before_tx=a%26b%3Dc%20d&x=%C3%A9"
        );
    }
}
