//! Event time that hostile input cannot move: the skew policy.
//!
//! Every partition has a clock, the newest event time among the valid
//! transactions it has admitted; the stream's clock is the newest of them
//! (and of the other partitions' committed clocks, read when partitions are
//! claimed). A valid transaction is admitted only if its time is
//! - at most `max_ahead` past the newer of its partition's and the stream's
//!   clock (a quiet partition catches up with the stream; one record cannot
//!   jump ahead of it),
//! - at most `max_behind` before its partition's clock (only its own: the
//!   consumer may read one partition days ahead of another), and
//! - at most `max_future` past this machine's clock;
//!
//! anything else goes to the dead-letter queue with its reason. So no single record can move a
//! partition's event time by more than the bound, stall its partition (a
//! far-future record would wait for every other partition to catch up) or
//! slow the others (a far-past one would hold their watermark back).
//!
//! The clock only ever moves on admitted transactions, and it is committed
//! with the offsets (`kafka_offsets.max_event_ts`), so a restarted engine
//! resumes with exactly the clock a fault-free run had at that offset: the
//! verdicts, and so the features, do not depend on crashes or batching. The
//! wall-clock bound is the exception by nature; it only matters for records
//! near the present, where a future time is always wrong.

use crate::config::EventTimeConfig;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// The bounds, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SkewPolicy {
    pub max_ahead_ms: i64,
    pub max_behind_ms: i64,
    /// 0 disables the wall-clock bound.
    pub max_future_ms: i64,
}

impl From<&EventTimeConfig> for SkewPolicy {
    fn from(c: &EventTimeConfig) -> Self {
        SkewPolicy {
            max_ahead_ms: c.max_ahead_secs.saturating_mul(1000),
            max_behind_ms: c.max_behind_secs.saturating_mul(1000),
            max_future_ms: c.max_future_secs.saturating_mul(1000),
        }
    }
}

/// Why a valid transaction was not admitted; the `Display` text is its
/// dead-letter reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Skew {
    #[error("event time {ts} is {} ahead of its partition's stream time {clock} (limit event_time.max_ahead_secs = {limit_secs})", human(*ts - *clock))]
    Ahead {
        ts: Time,
        clock: Time,
        limit_secs: i64,
    },
    #[error("event time {ts} is {} behind its partition's stream time {clock} (limit event_time.max_behind_secs = {limit_secs})", human(*clock - *ts))]
    Behind {
        ts: Time,
        clock: Time,
        limit_secs: i64,
    },
    #[error("event time {ts} is {} ahead of this machine's clock {now} (limit event_time.max_future_secs = {limit_secs})", human(*ts - *now))]
    Future {
        ts: Time,
        now: Time,
        limit_secs: i64,
    },
}

impl Skew {
    /// A short label for metrics (`riskstream_rejected_total{reason}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Skew::Ahead { .. } => "skew_ahead",
            Skew::Behind { .. } => "skew_behind",
            Skew::Future { .. } => "skew_future",
        }
    }
}

/// A millisecond timestamp that prints as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub i64);

impl std::ops::Sub for Time {
    type Output = i64;
    fn sub(self, other: Time) -> i64 {
        self.0.saturating_sub(other.0)
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match DateTime::<Utc>::from_timestamp_millis(self.0) {
            Some(t) => write!(
                f,
                "{}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
            None => write!(f, "{}ms", self.0),
        }
    }
}

fn human(ms: i64) -> String {
    let secs = ms / 1000;
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 2 * 3_600 => format!("{} hours", s / 3_600),
        s => format!("{s} s"),
    }
}

impl SkewPolicy {
    /// The verdict on a valid transaction at `ts_ms`, given its partition's
    /// clock and the stream's (`None`: nothing admitted yet) and the wall clock.
    pub fn admit(
        &self,
        ts_ms: i64,
        partition: Option<i64>,
        stream: Option<i64>,
        now_ms: i64,
    ) -> Result<(), Skew> {
        if self.max_future_ms > 0 && ts_ms > now_ms.saturating_add(self.max_future_ms) {
            return Err(Skew::Future {
                ts: Time(ts_ms),
                now: Time(now_ms),
                limit_secs: self.max_future_ms / 1000,
            });
        }
        if let Some(clock) = partition.max(stream) {
            if ts_ms > clock.saturating_add(self.max_ahead_ms) {
                return Err(Skew::Ahead {
                    ts: Time(ts_ms),
                    clock: Time(clock),
                    limit_secs: self.max_ahead_ms / 1000,
                });
            }
        }
        if let Some(clock) = partition {
            if ts_ms < clock.saturating_sub(self.max_behind_ms) {
                return Err(Skew::Behind {
                    ts: Time(ts_ms),
                    clock: Time(clock),
                    limit_secs: self.max_behind_ms / 1000,
                });
            }
        }
        Ok(())
    }
}

/// The clocks of the partitions one consumer owns, and the stream's.
#[derive(Debug, Default, Clone)]
pub struct Clocks {
    by_partition: HashMap<i32, i64>,
    /// The newest clock committed by any partition of the stream when this
    /// consumer last claimed partitions (other instances' included).
    committed_stream: Option<i64>,
}

impl Clocks {
    /// Partitions just claimed, with the clock committed in Postgres.
    pub fn restore(&mut self, partition: i32, committed: Option<i64>) {
        match committed {
            Some(ms) => self.by_partition.insert(partition, ms),
            None => self.by_partition.remove(&partition),
        };
    }

    /// The newest committed clock of the whole stream, at claim time.
    pub fn restore_stream(&mut self, committed: Option<i64>) {
        self.committed_stream = self.committed_stream.max(committed);
    }

    pub fn get(&self, partition: i32) -> Option<i64> {
        self.by_partition.get(&partition).copied()
    }

    /// The stream's clock: the newest of every known partition clock.
    pub fn stream(&self) -> Option<i64> {
        self.by_partition
            .values()
            .copied()
            .max()
            .max(self.committed_stream)
    }

    /// Admit (and advance the clock) or refuse a valid transaction.
    pub fn admit(
        &mut self,
        policy: &SkewPolicy,
        partition: i32,
        ts_ms: i64,
        now_ms: i64,
    ) -> Result<(), Skew> {
        policy.admit(ts_ms, self.get(partition), self.stream(), now_ms)?;
        let clock = self.by_partition.entry(partition).or_insert(ts_ms);
        *clock = (*clock).max(ts_ms);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.by_partition.clear();
        self.committed_stream = None;
    }
}

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;
    const NOW: i64 = 1_790_000_000_000; // 2026-09

    fn policy() -> SkewPolicy {
        SkewPolicy {
            max_ahead_ms: DAY,
            max_behind_ms: DAY,
            max_future_ms: HOUR,
        }
    }

    #[test]
    fn a_far_future_record_is_refused_and_does_not_move_the_clock() {
        let mut clocks = Clocks::default();
        let start = 1_514_764_800_000; // 2018-01-01, a replayed data set
        clocks.admit(&policy(), 0, start, NOW).unwrap();
        let years_ahead = start + 5 * 365 * DAY;
        let err = clocks.admit(&policy(), 0, years_ahead, NOW).unwrap_err();
        assert_eq!(err.kind(), "skew_ahead");
        assert!(err.to_string().contains("1825 days ahead"), "{err}");
        assert!(err.to_string().contains("event_time.max_ahead_secs"));
        assert_eq!(clocks.get(0), Some(start), "the clock did not move");
        // The stream goes on.
        clocks.admit(&policy(), 0, start + HOUR, NOW).unwrap();
        assert_eq!(clocks.get(0), Some(start + HOUR));
    }

    #[test]
    fn far_past_and_wall_clock_future_records_are_refused() {
        let mut clocks = Clocks::default();
        clocks.admit(&policy(), 1, NOW - DAY, NOW).unwrap();
        let err = clocks.admit(&policy(), 1, NOW - 3 * DAY, NOW).unwrap_err();
        assert_eq!(err.kind(), "skew_behind");
        // Even the first record of a partition cannot come from the future.
        let err = clocks.admit(&policy(), 2, NOW + 2 * HOUR, NOW).unwrap_err();
        assert_eq!(err.kind(), "skew_future");
        assert_eq!(clocks.get(2), None);
        // Small disorder within the bounds is admitted without moving the clock back.
        clocks.admit(&policy(), 1, NOW - DAY - HOUR, NOW).unwrap();
        assert_eq!(clocks.get(1), Some(NOW - DAY));
    }

    #[test]
    fn a_restored_clock_gives_the_same_verdicts_as_an_uninterrupted_run() {
        let ts = [0, HOUR, 30 * DAY, 2 * HOUR, 3 * HOUR, -5 * DAY, 4 * HOUR];
        let mut whole = Clocks::default();
        let verdicts: Vec<bool> = ts
            .iter()
            .map(|t| whole.admit(&policy(), 0, NOW - 10 * DAY + t, NOW).is_ok())
            .collect();
        assert_eq!(verdicts, [true, true, false, true, true, false, true]);
        // Crash after the fourth record: the committed clock is restored.
        let mut first = Clocks::default();
        for t in &ts[..4] {
            let _ = first.admit(&policy(), 0, NOW - 10 * DAY + t, NOW);
        }
        let mut resumed = Clocks::default();
        resumed.restore(0, first.get(0));
        let rest: Vec<bool> = ts[4..]
            .iter()
            .map(|t| resumed.admit(&policy(), 0, NOW - 10 * DAY + t, NOW).is_ok())
            .collect();
        assert_eq!(rest, verdicts[4..]);
    }

    /// Where the stream clock helps and where it must not: a quiet partition
    /// resumes days later; a partition read far behind the others is not
    /// "late"; a stray first record that set a partition's clock far in the
    /// past does not lock out the records after it.
    #[test]
    fn a_quiet_partition_catches_up_and_a_lagging_one_is_not_late() {
        let mut clocks = Clocks::default();
        let t0 = NOW - 30 * DAY;
        clocks.admit(&policy(), 0, t0, NOW).unwrap();
        clocks.admit(&policy(), 1, t0, NOW).unwrap();
        // Partition 1 goes quiet for three days while 0 moves on.
        for d in 1..=3 {
            clocks.admit(&policy(), 0, t0 + d * DAY, NOW).unwrap();
        }
        clocks
            .admit(&policy(), 1, t0 + 3 * DAY + HOUR, NOW)
            .unwrap();
        // Partition 2 is read ten days behind the others.
        clocks.admit(&policy(), 2, t0 - 7 * DAY, NOW).unwrap();
        // Partition 3's first record is years in the past; the next one,
        // with the stream again, is admitted.
        clocks.admit(&policy(), 3, t0 - 900 * DAY, NOW).unwrap();
        clocks.admit(&policy(), 3, t0 + 3 * DAY, NOW).unwrap();
        assert_eq!(clocks.get(3), Some(t0 + 3 * DAY));
        // Other instances' committed clocks count too.
        let mut fresh = Clocks::default();
        fresh.restore_stream(Some(t0));
        assert!(fresh.admit(&policy(), 5, t0 + 5 * DAY, NOW).is_err());
        assert!(fresh.admit(&policy(), 5, t0 + HOUR, NOW).is_ok());
    }

    proptest! {
        /// Whatever the input, the clock never moves by more than the bound
        /// per admitted record and never backwards.
        #[test]
        fn the_clock_moves_forward_by_at_most_the_bound(ts in proptest::collection::vec(any::<i64>(), 1..64)) {
            let mut clocks = Clocks::default();
            clocks.restore(0, Some(NOW - DAY));
            for t in ts {
                let before = clocks.get(0).unwrap();
                let _ = clocks.admit(&policy(), 0, t, NOW);
                let after = clocks.get(0).unwrap();
                prop_assert!(after >= before);
                prop_assert!(after - before <= DAY);
                prop_assert!(after <= NOW + HOUR);
            }
        }
    }
}
