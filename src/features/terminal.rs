//! Per-terminal statistics over *closed* days: transaction counts and known
//! frauds, shared by every card (and so by every partition and instance).
//!
//! A transaction on day D counts the terminal's transactions on days
//! `[D - delay - w, D - delay)` and, among them, the frauds whose label was
//! reported before day D began. A label reported before its transaction's
//! day is ignored: no chargeback precedes its purchase, so such a label is a
//! bad clock or bad data, and ignoring it lets the label read start at the
//! window's first day (`sink::state::terminal_frauds`) instead of at the
//! beginning of time. Both inputs are complete only once every
//! partition has been processed past day `D - delay` and the labels stream
//! past day D; the caller loads days only then (see `sink::watermark`), so
//! the values are the same in every run, whatever the arrival order.

use super::{IdHasher, TERMINAL_WINDOW_DAYS};
use std::collections::HashMap;

/// A confirmed fraud on a terminal: the day of the transaction and the day
/// its label was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FraudReport {
    pub tx_day: i64,
    pub reported_day: i64,
}

#[derive(Debug, Default)]
pub struct TerminalStats {
    /// terminal → its closed days with transactions. Only closed days are present.
    counts: HashMap<String, DayCounts, IdHasher>,
    /// terminal → frauds, for the tx-day range in `frauds_range`.
    frauds: HashMap<String, Vec<FraudReport>, IdHasher>,
    /// Days `< counts_until` are loaded (closed); `None` before the first load.
    counts_from: Option<i64>,
    counts_until: Option<i64>,
    /// The label view: tx days `[.0, .1)`, reports before day `.2`.
    frauds_range: Option<(i64, i64, i64)>,
}

impl TerminalStats {
    /// Days whose transaction counts are loaded: `[from, until)`.
    pub fn counts_range(&self) -> Option<(i64, i64)> {
        Some((self.counts_from?, self.counts_until?))
    }

    pub fn frauds_range(&self) -> Option<(i64, i64, i64)> {
        self.frauds_range
    }

    /// Record the counts of the closed days `[from, until)`; `rows` holds
    /// `(terminal, day, count)` for days with transactions.
    pub fn add_closed_days(
        &mut self,
        from: i64,
        until: i64,
        rows: impl IntoIterator<Item = (String, i64, u32)>,
    ) {
        for (terminal, day, n) in rows {
            debug_assert!((from..until).contains(&day));
            self.counts.entry(terminal).or_default().add(day, n);
        }
        self.counts_from = Some(self.counts_from.map_or(from, |f| f.min(from)));
        self.counts_until = Some(self.counts_until.map_or(until, |u| u.max(until)));
    }

    /// Replace the fraud view: frauds on tx days `[from, until)` reported
    /// before day `reported_before`; reports dated before their
    /// transaction's day are dropped (see the module's doc).
    pub fn set_frauds(
        &mut self,
        from: i64,
        until: i64,
        reported_before: i64,
        rows: impl IntoIterator<Item = (String, FraudReport)>,
    ) {
        self.frauds.clear();
        for (terminal, f) in rows {
            if f.reported_day >= f.tx_day {
                self.frauds.entry(terminal).or_default().push(f);
            }
        }
        self.frauds_range = Some((from, until, reported_before));
    }

    /// Forget days no window of a transaction on `oldest_day` or later can reach.
    pub fn evict_before(&mut self, day: i64) {
        for days in self.counts.values_mut() {
            days.forget_before(day);
        }
        self.counts.retain(|_, days| !days.is_empty());
        if let Some(f) = self.counts_from.as_mut() {
            *f = (*f).max(day);
        }
    }

    /// `(count, risk)` for each terminal window of a transaction on `day`.
    pub fn windows(&self, terminal: &str, day: i64, delay: i64) -> [(f32, f32); 3] {
        let counts = self.counts.get(terminal);
        let frauds = self.frauds.get(terminal);
        TERMINAL_WINDOW_DAYS.map(|w| {
            let (from, until) = (day - delay - w, day - delay);
            let n = counts.map_or(0, |c| c.sum(from, until));
            let bad = frauds.map_or(0, |fs| {
                fs.iter()
                    .filter(|f| (from..until).contains(&f.tx_day) && f.reported_day < day)
                    .count()
            });
            let risk = if n == 0 { 0.0 } else { bad as f32 / n as f32 };
            (n as f32, risk)
        })
    }
}

/// A terminal's transaction count per day, ordered by day: a window is two
/// binary searches and a sum over at most 30 adjacent entries (a `BTreeMap`
/// range took 6 % of the featurizer's instructions). Days arrive in order
/// as they close, so an insert is nearly always an append.
#[derive(Debug, Default)]
struct DayCounts(Vec<(i64, u32)>);

impl DayCounts {
    fn add(&mut self, day: i64, n: u32) {
        let at = self.0.partition_point(|(d, _)| *d < day);
        match self.0.get_mut(at) {
            Some((d, count)) if *d == day => *count += n,
            _ => self.0.insert(at, (day, n)),
        }
    }

    fn forget_before(&mut self, day: i64) {
        let keep = self.0.partition_point(|(d, _)| *d < day);
        self.0.drain(..keep);
    }

    /// Transactions on days `[from, until)`.
    fn sum(&self, from: i64, until: i64) -> u32 {
        let start = self.0.partition_point(|(d, _)| *d < from);
        let end = self.0.partition_point(|(d, _)| *d < until);
        self.0[start..end.max(start)].iter().map(|(_, n)| n).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The tx days a transaction on `day` reads, for `delay`: `[day - delay - 30, day - delay)`.
pub fn needed_days(day: i64, delay: i64) -> (i64, i64) {
    let longest = TERMINAL_WINDOW_DAYS[TERMINAL_WINDOW_DAYS.len() - 1];
    (day - delay - longest, day - delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_closed_days_and_only_labels_known_in_time() {
        let mut s = TerminalStats::default();
        // Terminal T: 10 tx on day 90, 5 on day 92; day 100 transactions read days < 93.
        s.add_closed_days(60, 93, [("T".into(), 90, 10), ("T".into(), 92, 5)]);
        s.set_frauds(
            60,
            93,
            101,
            [
                (
                    "T".into(),
                    FraudReport {
                        tx_day: 92,
                        reported_day: 95,
                    },
                ),
                (
                    "T".into(),
                    FraudReport {
                        tx_day: 90,
                        reported_day: 100,
                    },
                ), // reported on day 100: not yet known on day 100
            ],
        );
        let w = s.windows("T", 100, 7);
        assert_eq!(w[0], (5.0, 1.0 / 5.0)); // day 92 only
        assert_eq!(w[1], (15.0, 1.0 / 15.0)); // days 86..93
        assert_eq!(s.windows("T", 101, 7)[1], (15.0, 2.0 / 15.0));
        assert_eq!(s.windows("unknown", 100, 7), [(0.0, 0.0); 3]);
    }

    #[test]
    fn day_counts_merge_days_in_any_order_and_sum_half_open_ranges() {
        let mut c = DayCounts::default();
        for (day, n) in [(5, 1), (3, 2), (5, 4), (9, 8), (1, 16)] {
            c.add(day, n);
        }
        assert_eq!(c.0, [(1, 16), (3, 2), (5, 5), (9, 8)]);
        assert_eq!(c.sum(3, 9), 7, "days 3 and 5, not 9");
        assert_eq!(c.sum(0, 100), 31);
        assert_eq!(c.sum(6, 9), 0);
        assert_eq!(c.sum(9, 3), 0, "an empty range");
        c.forget_before(5);
        assert_eq!(c.0, [(5, 5), (9, 8)]);
    }

    #[test]
    fn a_label_reported_before_its_transactions_day_is_ignored() {
        let mut s = TerminalStats::default();
        s.add_closed_days(60, 93, [("T".into(), 90, 4)]);
        let report = |reported_day| {
            (
                "T".to_string(),
                FraudReport {
                    tx_day: 90,
                    reported_day,
                },
            )
        };
        // Same day counts; the day before (or 1970) does not.
        s.set_frauds(60, 93, 101, [report(90), report(89), report(0)]);
        assert_eq!(s.windows("T", 100, 7)[2], (4.0, 1.0 / 4.0));
    }
}
