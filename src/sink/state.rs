//! Reads that rebuild featurizer state from what Postgres has committed.
//!
//! Card histories come from `risk_decisions` (exactly the committed
//! transactions); terminal statistics from `risk_decisions` and `labels`,
//! only for days every partition has closed (see [`crate::pipeline::watermark`]).

use super::SinkError;
use crate::features::{kept_per_card, FraudReport, PastTx, HISTORY_LEN, MAX_PER_CARD, MS_PER_DAY};
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use std::sync::Arc;

fn day_start(day: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(day * MS_PER_DAY).expect("day in range")
}

/// The remembered transactions of `cards`: the last
/// [`kept_per_card`]`(HISTORY_LEN)` of each (the history sequence and the MCC
/// context), and everything within the card retention of its newest one,
/// at most [`MAX_PER_CARD`] (the most recent),
/// exactly what [`crate::features::CardState`] keeps in a fault-free run
/// (same-time transactions of a card in partition order, as they arrived).
pub async fn load_cards(
    pool: &PgPool,
    cards: &[String],
    retention_ms: i64,
) -> Result<Vec<(String, PastTx)>, SinkError> {
    let rows = sqlx::query(
        "SELECT card_id, tx_id, ts, amount::float8, terminal_id, country, channel, mcc FROM (
             SELECT *, row_number() OVER (PARTITION BY card_id ORDER BY ts DESC, source_offset DESC) AS rn,
                    max(ts) OVER (PARTITION BY card_id) AS newest
               FROM risk_decisions WHERE card_id = ANY($1)) r
          WHERE (rn <= $2 OR ts >= newest - make_interval(secs => $3::float8 / 1000)) AND rn <= $4
          ORDER BY card_id, ts, source_offset",
    )
    .bind(cards)
    .bind(kept_per_card(HISTORY_LEN) as i64)
    .bind(retention_ms as f64)
    .bind(MAX_PER_CARD as i64)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ts: DateTime<Utc> = r.get(2);
            let channel: Option<String> = r.get(6);
            let country: Option<String> = r.get(5);
            let terminal: String = r.get(4);
            let tx_id: String = r.get(1);
            (
                r.get(0),
                PastTx {
                    tx_id: Arc::from(tx_id),
                    ts_ms: ts.timestamp_millis(),
                    amount: r.get(3),
                    terminal_id: Arc::from(terminal),
                    country: country.map(Arc::from),
                    ecom: channel.as_deref() == Some("ecom"),
                    mcc: r.get(7),
                },
            )
        })
        .collect())
}

/// Which of `tx_ids` are decided already.
pub async fn decided_among(
    pool: &PgPool,
    tx_ids: &[&str],
) -> Result<std::collections::HashSet<String>, SinkError> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT tx_id FROM decision_ids WHERE tx_id = ANY($1)")
            .bind(tx_ids)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Transactions per terminal and day, for the closed days `[from, until)`.
pub async fn terminal_counts(
    pool: &PgPool,
    from: i64,
    until: i64,
) -> Result<Vec<(String, i64, u32)>, SinkError> {
    let rows = sqlx::query(
        "SELECT terminal_id, floor(extract(epoch FROM ts) / 86400)::bigint AS day, count(*)
           FROM risk_decisions WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2",
    )
    .bind(day_start(from))
    .bind(day_start(until))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) as u32))
        .collect())
}

/// Frauds on tx days `[from, until)` whose label was reported before day
/// `reported_before` and not before day `from`.
///
/// The labels drive the read: those reported in `[from, reported_before)`
/// (an index range on `labels.reported_at`, about the window's days of
/// labels), each looked up by its tx_id: its time in `decision_ids`, then
/// its terminal in that one partition. Joining the other way round reads
/// every decision of the window (30 days of the stream) once a day. A label
/// reported before `from` is reported before its transaction's day, which
/// [`crate::features::TerminalStats`] ignores.
pub async fn terminal_frauds(
    pool: &PgPool,
    from: i64,
    until: i64,
    reported_before: i64,
) -> Result<Vec<(String, FraudReport)>, SinkError> {
    // Both lookups are equalities on a unique key, in `LIMIT 1` subqueries
    // so the planner cannot turn them into a join that scans the window's
    // decisions, and no ts range inside them: as a cached plan, a range
    // lookup was once walked per label (135 s a call). Planning on every
    // call instead (`persistent(false)`) was measured worse: p50 at 5k tx/s
    // 90-1,703 ms in 3 of 5 runs, 17-26 ms without (docs/DECISIONS.md).
    let rows = sqlx::query(
        "SELECT d.terminal_id, floor(extract(epoch FROM i.ts) / 86400)::bigint,
                floor(extract(epoch FROM l.reported_at) / 86400)::bigint
           FROM labels l
          CROSS JOIN LATERAL (SELECT ts FROM decision_ids WHERE tx_id = l.tx_id LIMIT 1) i
          CROSS JOIN LATERAL (
                SELECT terminal_id FROM risk_decisions WHERE tx_id = l.tx_id AND ts = i.ts LIMIT 1) d
          WHERE l.is_fraud AND l.reported_at >= $1 AND l.reported_at < $3
            AND i.ts >= $1 AND i.ts < $2",
    )
    .bind(day_start(from))
    .bind(day_start(until))
    .bind(day_start(reported_before))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                FraudReport {
                    tx_day: r.get(1),
                    reported_day: r.get(2),
                },
            )
        })
        .collect())
}
