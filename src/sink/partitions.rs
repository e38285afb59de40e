//! Month partitions of the decision tables (migration
//! `20261204000001_partitions_by_month.sql`): `risk_decisions`,
//! `attention_explanations` and `shadow_decisions` have one partition per
//! UTC calendar month of the transaction, and a default partition for rows
//! whose month has none yet.
//!
//! The sink creates the months of each batch before its transaction
//! ([`Partitions::ensure`]), outside it, so that a batch never waits on
//! DDL while holding its rows' locks; `riskstream partitions` creates months
//! ahead and drops the months past the retention ([`drop_before`]).

use super::{SinkBatch, SinkError};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// After a month could not be created, batches of that month go to the
/// default partition without asking again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The first day of the UTC month of a transaction time: its partition.
pub fn month_of(ts: DateTime<Utc>) -> NaiveDate {
    first_of_month(ts.date_naive())
}

/// The first day of `day`'s month.
pub fn first_of_month(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a first day")
}

/// The months a batch writes decisions for.
pub fn months_of(b: &SinkBatch) -> BTreeSet<NaiveDate> {
    b.decisions.iter().map(|d| month_of(d.tx.ts)).collect()
}

/// Create the partitions of the months of `days` that do not exist yet: how
/// many tables were created (three per new month).
pub async fn create(pool: &PgPool, days: &[NaiveDate]) -> Result<i32, SinkError> {
    Ok(
        sqlx::query_scalar("SELECT create_decision_partitions($1::date[])")
            .bind(days)
            .fetch_one(pool)
            .await?,
    )
}

/// Retention: drop every month that ended before `cutoff`'s month began,
/// with its decisions' explanations, shadow rows, ids, labels, reviews and
/// summaries. Needs the owner's login (the engine's never deletes). The
/// first days of the months dropped.
pub async fn drop_before(pool: &PgPool, cutoff: NaiveDate) -> Result<Vec<NaiveDate>, SinkError> {
    Ok(sqlx::query_scalar("SELECT drop_decisions_before($1::date)")
        .bind(cutoff)
        .fetch_one(pool)
        .await?)
}

/// The months this process knows to have partitions, so that a batch asks
/// Postgres only when it brings a new month.
#[derive(Debug, Default)]
pub struct Partitions {
    known: HashSet<NaiveDate>,
    failed: HashMap<NaiveDate, Instant>,
}

impl Partitions {
    /// Make sure the batch's months have partitions. Creating one can fail
    /// (the lock it needs is held by a long query, or Postgres is down):
    /// the rows then go to the default partition, which `riskstream
    /// partitions` (or a later batch) empties when it creates the month, so
    /// the failure is logged and `false` returned, never an error that
    /// would hold the stream (a month that failed is asked for again after
    /// a minute).
    pub async fn ensure(&mut self, pool: &PgPool, b: &SinkBatch) -> bool {
        let now = Instant::now();
        let missing: Vec<NaiveDate> = months_of(b)
            .into_iter()
            .filter(|m| !self.known.contains(m))
            .filter(|m| self.failed.get(m).is_none_or(|t| now - *t >= RETRY_AFTER))
            .collect();
        if missing.is_empty() {
            return true;
        }
        match create(pool, &missing).await {
            Ok(created) => {
                if created > 0 {
                    tracing::info!(months = ?missing, tables = created, "created month partitions");
                }
                for m in missing {
                    self.failed.remove(&m);
                    self.known.insert(m);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, months = ?missing, "could not create month partitions; those rows go to the default partition");
                for m in missing {
                    self.failed.insert(m, now);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_belongs_to_its_utc_month() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let d = |y, m, day| NaiveDate::from_ymd_opt(y, m, day).unwrap();
        assert_eq!(month_of(at("2026-03-31T23:59:59.999Z")), d(2026, 3, 1));
        assert_eq!(month_of(at("2026-04-01T00:00:00Z")), d(2026, 4, 1));
        // Local time is not UTC: 00:30 on April 1st in Paris is still March.
        assert_eq!(month_of(at("2026-04-01T00:30:00+02:00")), d(2026, 3, 1));
        assert_eq!(month_of(at("0000-01-15T00:00:00Z")), d(0, 1, 1));
    }
}
