//! Day partitions of the decision tables (migration
//! `20261204000001_partitions_by_day.sql`): `risk_decisions`,
//! `attention_explanations` and `shadow_decisions` have one partition per
//! UTC day of the transaction, and a default partition for rows whose day
//! has none yet.
//!
//! The sink creates the days of each batch before its transaction
//! ([`DayPartitions::ensure`]), outside it, so that a batch never waits on
//! DDL while holding its rows' locks; `riskstream partitions` creates days
//! ahead and drops days past the retention ([`drop_days_before`]).

use super::{SinkBatch, SinkError};
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// After a day could not be created, batches of that day go to the default
/// partition without asking again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The UTC day of a transaction time.
pub fn day_of(ts: DateTime<Utc>) -> NaiveDate {
    ts.date_naive()
}

/// The days a batch writes decisions for.
pub fn days_of(b: &SinkBatch) -> BTreeSet<NaiveDate> {
    b.decisions.iter().map(|d| day_of(d.tx.ts)).collect()
}

/// Create the partitions of `days` that do not exist yet: how many tables
/// were created (three per new day).
pub async fn create(pool: &PgPool, days: &[NaiveDate]) -> Result<i32, SinkError> {
    Ok(
        sqlx::query_scalar("SELECT create_decision_partitions($1::date[])")
            .bind(days)
            .fetch_one(pool)
            .await?,
    )
}

/// Retention: drop every day before `cutoff`, with its decisions'
/// explanations, shadow rows, ids, labels, reviews and summaries. Needs the
/// owner's login (the engine's never deletes). The days dropped.
pub async fn drop_days_before(
    pool: &PgPool,
    cutoff: NaiveDate,
) -> Result<Vec<NaiveDate>, SinkError> {
    Ok(
        sqlx::query_scalar("SELECT drop_decision_days_before($1::date)")
            .bind(cutoff)
            .fetch_one(pool)
            .await?,
    )
}

/// The days this process knows to have partitions, so that a batch asks
/// Postgres only when it brings a new day.
#[derive(Debug, Default)]
pub struct DayPartitions {
    known: HashSet<NaiveDate>,
    failed: HashMap<NaiveDate, Instant>,
}

impl DayPartitions {
    /// Make sure the batch's days have partitions. Creating one can fail
    /// (the lock it needs is held by a long query, or Postgres is down):
    /// the rows then go to the default partition, which `riskstream
    /// partitions` (or a later batch) empties when it creates the day, so
    /// the failure is logged and `false` returned, never an error that
    /// would hold the stream (a day that failed is asked for again after a
    /// minute).
    pub async fn ensure(&mut self, pool: &PgPool, b: &SinkBatch) -> bool {
        let now = Instant::now();
        let missing: Vec<NaiveDate> = days_of(b)
            .into_iter()
            .filter(|d| !self.known.contains(d))
            .filter(|d| self.failed.get(d).is_none_or(|t| now - *t >= RETRY_AFTER))
            .collect();
        if missing.is_empty() {
            return true;
        }
        match create(pool, &missing).await {
            Ok(created) => {
                if created > 0 {
                    tracing::info!(days = ?missing, tables = created, "created day partitions");
                }
                for d in missing {
                    self.failed.remove(&d);
                    self.known.insert(d);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, days = ?missing, "could not create day partitions; those rows go to the default partition");
                for d in missing {
                    self.failed.insert(d, now);
                }
                false
            }
        }
    }
}
