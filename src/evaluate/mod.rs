//! `riskstream evaluate`: how good a fraud model is on a labelled transaction
//! file, measured the Fraud Detection Handbook way.
//!
//! The file is featurized by the engine's own featurizer (with the model's
//! history length) and the test days are scored through [`crate::scoring`],
//! so the numbers describe the model as the engine would run it. Days are UTC
//! calendar days of the transaction time. For a test window starting on day
//! T, the days `[T - delay - train, T - delay - 1]` are the training window;
//! on test day t, a card with a fraud on any day from the training window's
//! start to `t - delay - 1` is *known compromised* and its rows leave the
//! test set (the handbook's `get_train_test_set`): flagging a card the bank
//! already blocked is no detection. Metrics are in [`metrics`].
//!
//! This module reads files and runs ONNX Runtime: it is CPU work for a
//! blocking thread, and it never touches Kafka or Postgres.

pub mod metrics;

use crate::features::offline::{featurize_rows, read_transactions};
use crate::features::{day_of, MS_PER_DAY};
use crate::scoring::{Contract, Scorer};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, NaiveDate};
use metrics::CardRow;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

/// Each further fold's test window starts this many days earlier.
pub const FOLD_STEP_DAYS: i64 = 7;
/// Card precision is measured on the top K cards of each day.
pub const CARD_PRECISION_K: usize = 100;
/// Rows per featurizer call; features do not depend on it.
const FEATURIZE_BATCH_ROWS: usize = 2000;
const SCORE_BATCH_ROWS: usize = 4096;

/// What `riskstream evaluate` was asked.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: PathBuf,
    pub data: PathBuf,
    /// First test day of fold 0; default: the last `test_days` full days.
    pub test_start: Option<NaiveDate>,
    pub protocol: Protocol,
    pub folds: usize,
    /// The featurizer's terminal label delay, as in `riskstream features`.
    pub label_delay_days: i64,
}

/// Window lengths in days.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Protocol {
    pub test_days: i64,
    pub delay_days: i64,
    pub train_days: i64,
}

/// Everything `evaluate` measured; serialized as the `--json` file.
#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub model_version: String,
    pub model_dir: PathBuf,
    pub data: PathBuf,
    pub data_rows: usize,
    pub history_length: usize,
    /// Trailing days with under half the median daily volume, left out.
    pub partial_days_left_out: Vec<String>,
    pub protocol: Protocol,
    pub thresholds: Thresholds,
    pub folds: Vec<FoldReport>,
    pub mean: Summary,
    /// Population standard deviation over folds (ddof = 0).
    pub std: Summary,
    pub std_ddof: u8,
    /// Caveats, e.g. a training window that starts before the data.
    pub notes: Vec<String>,
}

/// The model's default review and decline thresholds (manifest).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    pub review: Option<f64>,
    pub decline: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct FoldReport {
    pub test_start: String,
    pub test_end: String,
    /// Test rows kept (after removing known compromised cards).
    pub rows: usize,
    pub frauds: usize,
    pub removed_known_compromised: usize,
    pub auc_roc: Option<f64>,
    pub average_precision: Option<f64>,
    pub card_precision_at_100: Option<f64>,
    pub card_precision_upper_bound: Option<f64>,
    pub per_scenario: BTreeMap<String, ScenarioRecall>,
}

#[derive(Debug, Serialize)]
pub struct ScenarioRecall {
    pub n: usize,
    pub recall_at_review: Option<f64>,
    pub recall_at_decline: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub auc_roc: Option<f64>,
    pub average_precision: Option<f64>,
    pub card_precision_at_100: Option<f64>,
    pub card_precision_upper_bound: Option<f64>,
}

/// What the protocol needs of a transaction.
#[derive(Debug, Clone, Copy)]
struct Labelled<'a> {
    day: i64,
    card: &'a str,
    fraud: bool,
}

/// Evaluate `opts.model` on `opts.data`.
pub fn run(opts: &Options) -> Result<Report> {
    let Protocol {
        test_days,
        delay_days,
        train_days,
    } = opts.protocol;
    if test_days < 1 || delay_days < 0 || train_days < 0 || opts.folds < 1 {
        bail!("need --test-days >= 1, --delay-days >= 0, --train-days >= 0 and --folds >= 1");
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let scorer = Scorer::open_with(
        Contract::ScoreOnly,
        &opts.model,
        1,
        threads,
        SCORE_BATCH_ROWS,
    )
    .with_context(|| format!("model {}", opts.model.display()))?;
    let history_len = scorer.history_len();

    let started = Instant::now();
    let mut rows = read_transactions(&opts.data)?;
    if rows.is_empty() {
        bail!("{}: no transactions", opts.data.display());
    }
    // Stable, as `riskstream features` sorts: ties keep file order.
    rows.sort_by_key(|r| r.tx.ts);
    let labelled: Vec<Labelled> = rows
        .iter()
        .map(|r| Labelled {
            day: day_of(r.tx.ts.timestamp_millis()),
            card: &r.tx.card_id,
            fraud: r.is_fraud.unwrap_or(false),
        })
        .collect();
    let (first_day, mut last_day) = (labelled[0].day, labelled[labelled.len() - 1].day);
    let partial = partial_trailing_days(labelled.iter().map(|r| r.day));
    if let Some(&d) = partial.first() {
        last_day = d - 1;
    }

    let start0 = match opts.test_start {
        Some(date) => day_number(date),
        None => last_day - test_days + 1,
    };
    let starts: Vec<i64> = (0..opts.folds as i64)
        .map(|k| start0 - FOLD_STEP_DAYS * k)
        .collect();
    let mut notes = Vec::new();
    if start0 + test_days - 1 > last_day {
        bail!(
            "the test window {}..{} ends after the last full day of the data, {}",
            date_str(start0),
            date_str(start0 + test_days - 1),
            date_str(last_day)
        );
    }
    for (k, &t) in starts.iter().enumerate() {
        if t < first_day {
            bail!(
                "fold {k}: the test window starts on {}, before the data ({})",
                date_str(t),
                date_str(first_day)
            );
        }
        if t - delay_days - train_days < first_day {
            notes.push(format!(
                "fold {k}: the training window starts on {}, before the data ({}): fewer known compromised cards",
                date_str(t - delay_days - train_days),
                date_str(first_day)
            ));
        }
    }

    // Featurize everything up to the last test day (each row builds the
    // state of the next) and keep the test rows only.
    let in_test = |day: i64| starts.iter().any(|&t| (t..t + test_days).contains(&day));
    let end = labelled.partition_point(|r| r.day < start0 + test_days);
    let tested: Vec<usize> = (0..end).filter(|&i| in_test(labelled[i].day)).collect();
    let features = featurize_rows(
        &rows[..end],
        opts.label_delay_days,
        history_len,
        FEATURIZE_BATCH_ROWS,
        |i| in_test(labelled[i].day),
    )?;
    tracing::info!(
        rows = end,
        test_rows = tested.len(),
        history_len,
        secs = started.elapsed().as_secs_f64(),
        "read and featurized"
    );
    let started = Instant::now();
    let scored = scorer.score_blocking(&features)?;
    drop(features);
    let mut score = vec![f32::NAN; end];
    for (&i, s) in tested.iter().zip(&scored) {
        score[i] = s.score;
    }
    tracing::info!(
        rows = tested.len(),
        secs = started.elapsed().as_secs_f64(),
        "scored"
    );

    let thresholds = manifest_thresholds(scorer.manifest.default_thresholds.as_ref());
    let folds: Vec<FoldReport> = starts
        .iter()
        .map(|&t| {
            let kept = handbook_test_set(&labelled[..end], t, opts.protocol);
            let in_window = tested
                .iter()
                .filter(|&&i| (t..t + test_days).contains(&labelled[i].day))
                .count();
            let scenarios: Vec<Option<&str>> =
                kept.iter().map(|&i| rows[i].scenario.as_deref()).collect();
            fold_report(
                t,
                test_days,
                &kept.iter().map(|&i| labelled[i]).collect::<Vec<_>>(),
                &kept.iter().map(|&i| score[i]).collect::<Vec<_>>(),
                &scenarios,
                thresholds,
                in_window - kept.len(),
            )
        })
        .collect();
    let summary =
        |pick: fn(&FoldReport) -> Option<f64>| metrics::mean_std(folds.iter().map(pick)).unzip();
    let (auc_m, auc_s) = summary(|f| f.auc_roc);
    let (ap_m, ap_s) = summary(|f| f.average_precision);
    let (cp_m, cp_s) = summary(|f| f.card_precision_at_100);
    let (ub_m, ub_s) = summary(|f| f.card_precision_upper_bound);
    Ok(Report {
        model: scorer.manifest.name.clone(),
        model_version: scorer.manifest.version.clone(),
        model_dir: opts.model.clone(),
        data: opts.data.clone(),
        data_rows: rows.len(),
        history_length: history_len,
        partial_days_left_out: partial.iter().map(|&d| date_str(d)).collect(),
        protocol: opts.protocol,
        thresholds,
        folds,
        mean: Summary {
            auc_roc: auc_m,
            average_precision: ap_m,
            card_precision_at_100: cp_m,
            card_precision_upper_bound: ub_m,
        },
        std: Summary {
            auc_roc: auc_s,
            average_precision: ap_s,
            card_precision_at_100: cp_s,
            card_precision_upper_bound: ub_s,
        },
        std_ddof: 0,
        notes,
    })
}

/// Trailing days whose transaction count is under half the median daily
/// count (recomputed as each is dropped), latest last; the median is over
/// the days that have transactions, as numpy's.
fn partial_trailing_days(days: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut per_day: BTreeMap<i64, usize> = BTreeMap::new();
    for d in days {
        *per_day.entry(d).or_default() += 1;
    }
    let mut counts: Vec<(i64, usize)> = per_day.into_iter().collect();
    let mut dropped = Vec::new();
    while let Some(&(day, n)) = counts.last() {
        let mut sorted: Vec<usize> = counts.iter().map(|c| c.1).collect();
        sorted.sort_unstable();
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid] as f64
        } else {
            (sorted[mid - 1] + sorted[mid]) as f64 / 2.0
        };
        if (n as f64) >= 0.5 * median {
            break;
        }
        dropped.push(day);
        counts.pop();
    }
    dropped.reverse();
    dropped
}

/// Indices of the rows of the test window starting on `test_start` that stay
/// in the test set: those whose card is not known compromised on their day
/// (a fraud on a day in `[test_start - delay - train, day - delay - 1]`).
fn handbook_test_set(rows: &[Labelled], test_start: i64, p: Protocol) -> Vec<usize> {
    let known_from = test_start - p.delay_days - p.train_days;
    let mut fraud_days: HashMap<&str, Vec<i64>> = HashMap::new();
    for r in rows.iter().filter(|r| r.fraud) {
        fraud_days.entry(r.card).or_default().push(r.day);
    }
    let known = |r: &Labelled| {
        fraud_days.get(r.card).is_some_and(|days| {
            days.iter()
                .any(|&d| (known_from..=r.day - p.delay_days - 1).contains(&d))
        })
    };
    (0..rows.len())
        .filter(|&i| (test_start..test_start + p.test_days).contains(&rows[i].day))
        .filter(|&i| !known(&rows[i]))
        .collect()
}

fn fold_report(
    test_start: i64,
    test_days: i64,
    rows: &[Labelled],
    score: &[f32],
    scenario: &[Option<&str>],
    thresholds: Thresholds,
    removed: usize,
) -> FoldReport {
    let y: Vec<bool> = rows.iter().map(|r| r.fraud).collect();
    let cards: Vec<CardRow> = rows
        .iter()
        .zip(score)
        .map(|(r, &score)| CardRow {
            day: r.day,
            card: r.card,
            fraud: r.fraud,
            score,
        })
        .collect();
    let mut per_scenario: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for ((r, s), name) in rows.iter().zip(score).zip(scenario) {
        if let (true, Some(name)) = (r.fraud, name) {
            per_scenario.entry(name.to_string()).or_default().push(*s);
        }
    }
    // Thresholds compare in f32, as numpy compares a float32 score array
    // with a Python float.
    let recall = |scores: &[f32], threshold: Option<f64>| {
        threshold
            .map(|t| scores.iter().filter(|&&s| s >= t as f32).count() as f64 / scores.len() as f64)
    };
    FoldReport {
        test_start: date_str(test_start),
        test_end: date_str(test_start + test_days - 1),
        rows: rows.len(),
        frauds: y.iter().filter(|&&f| f).count(),
        removed_known_compromised: removed,
        auc_roc: metrics::roc_auc(&y, score),
        average_precision: metrics::average_precision(&y, score),
        card_precision_at_100: metrics::card_precision_at_k(&cards, CARD_PRECISION_K),
        card_precision_upper_bound: metrics::card_precision_upper_bound(&cards, CARD_PRECISION_K),
        per_scenario: per_scenario
            .into_iter()
            .map(|(name, s)| {
                let r = ScenarioRecall {
                    n: s.len(),
                    recall_at_review: recall(&s, thresholds.review),
                    recall_at_decline: recall(&s, thresholds.decline),
                };
                (name, r)
            })
            .collect(),
    }
}

fn manifest_thresholds(v: Option<&serde_json::Value>) -> Thresholds {
    let get = |key: &str| v.and_then(|v| v.get(key)).and_then(|t| t.as_f64());
    Thresholds {
        review: get("review"),
        decline: get("decline"),
    }
}

fn day_number(date: NaiveDate) -> i64 {
    day_of(
        date.and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
            .timestamp_millis(),
    )
}

fn date_str(day: i64) -> String {
    DateTime::from_timestamp_millis(day * MS_PER_DAY)
        .map_or_else(|| format!("day {day}"), |t| t.date_naive().to_string())
}

impl Report {
    /// The report as a readable table.
    pub fn table(&self) -> String {
        let f = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |v| format!("{v:.4}"));
        let mut out = String::new();
        let p = self.protocol;
        let _ = writeln!(
            out,
            "model {} v{} ({}), history length {}",
            self.model,
            self.model_version,
            self.model_dir.display(),
            self.history_length
        );
        let _ = writeln!(
            out,
            "data  {}: {} transactions{}",
            self.data.display(),
            self.data_rows,
            if self.partial_days_left_out.is_empty() {
                String::new()
            } else {
                format!(
                    ", partial trailing day(s) {} left out",
                    self.partial_days_left_out.join(", ")
                )
            }
        );
        let _ = writeln!(
            out,
            "protocol: {} test days, {} delay days, {} train days; rows of cards with a fraud from the train window start to t-{} are removed from test day t",
            p.test_days,
            p.delay_days,
            p.train_days,
            p.delay_days + 1
        );
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        let _ = writeln!(
            out,
            "\n{:<6} {:<22} {:>7} {:>6} {:>8} {:>8} {:>9} {:>7} {:>8}",
            "fold",
            "test window",
            "rows",
            "frauds",
            "removed",
            "AUC ROC",
            "avg prec",
            "CP@100",
            "CP bound"
        );
        for (k, fold) in self.folds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:<6} {:<22} {:>7} {:>6} {:>8} {:>8} {:>9} {:>7} {:>8}",
                k,
                format!("{}..{}", fold.test_start, fold.test_end),
                fold.rows,
                fold.frauds,
                fold.removed_known_compromised,
                f(fold.auc_roc),
                f(fold.average_precision),
                f(fold.card_precision_at_100),
                f(fold.card_precision_upper_bound)
            );
        }
        if self.folds.len() > 1 {
            let pm = |m: Option<f64>, s: Option<f64>| match (m, s) {
                (Some(m), Some(s)) => format!("{m:.4}±{s:.4}"),
                _ => "n/a".into(),
            };
            let _ = writeln!(
                out,
                "{:<53} {:>14} {:>14} {:>14} {:>14}",
                "mean ± std (population std, ddof=0)",
                pm(self.mean.auc_roc, self.std.auc_roc),
                pm(self.mean.average_precision, self.std.average_precision),
                pm(
                    self.mean.card_precision_at_100,
                    self.std.card_precision_at_100
                ),
                pm(
                    self.mean.card_precision_upper_bound,
                    self.std.card_precision_upper_bound
                ),
            );
        }
        let t = |v: Option<f64>| v.map_or_else(|| "none".into(), |v| format!("{v}"));
        let _ = writeln!(
            out,
            "\nper-scenario recall at the model's thresholds (review >= {}, decline >= {})",
            t(self.thresholds.review),
            t(self.thresholds.decline)
        );
        let _ = writeln!(
            out,
            "{:<22} {:>4} {:>6} {:>8} {:>8}",
            "scenario", "fold", "n", "review", "decline"
        );
        let names: std::collections::BTreeSet<&String> = self
            .folds
            .iter()
            .flat_map(|f| f.per_scenario.keys())
            .collect();
        for name in names {
            for (k, fold) in self.folds.iter().enumerate() {
                let Some(r) = fold.per_scenario.get(name) else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "{:<22} {:>4} {:>6} {:>8} {:>8}",
                    name,
                    k,
                    r.n,
                    f(r.recall_at_review),
                    f(r.recall_at_decline)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Protocol = Protocol {
        test_days: 7,
        delay_days: 7,
        train_days: 7,
    };

    fn row(day: i64, card: &str, fraud: bool) -> Labelled<'_> {
        Labelled { day, card, fraud }
    }

    #[test]
    fn known_compromised_cards_leave_the_test_set_from_the_day_their_fraud_is_known() {
        // Test window days 100..=106, train window 86..=92, delay 93..=99.
        let rows = [
            row(85, "before_train", true), // before the train window: not known
            row(86, "train_start", true),  // first train day: known all week
            row(95, "delay", true),        // known from test day 95 + 8 = 103
            row(99, "late", true),         // t - 8 >= 99 never holds in the window
            row(100, "before_train", false),
            row(100, "train_start", false),
            row(100, "delay", true), // day 100: fraud on 95 not yet known
            row(102, "delay", false),
            row(103, "delay", false), // 103 - 8 = 95: known, removed
            row(106, "late", true),
            row(101, "clean", false),
            row(107, "clean", false), // after the window
        ];
        let kept: Vec<(&str, i64)> = handbook_test_set(&rows, 100, P)
            .into_iter()
            .map(|i| (rows[i].card, rows[i].day))
            .collect();
        assert_eq!(
            kept,
            [
                ("before_train", 100),
                ("delay", 100),
                ("delay", 102),
                ("late", 106),
                ("clean", 101)
            ]
        );
        // A test day's own frauds never remove it, however many the card has.
        let same_day = [row(100, "c", true), row(100, "c", true)];
        assert_eq!(handbook_test_set(&same_day, 100, P), [0, 1]);
    }

    #[test]
    fn a_short_trailing_day_is_partial_and_dropped() {
        let days = |counts: &[(i64, usize)]| {
            counts
                .iter()
                .flat_map(|&(d, n)| std::iter::repeat_n(d, n))
                .collect::<Vec<_>>()
        };
        // Median of [10, 10, 10, 4] is 10: 4 < 5, dropped; then 10 is full.
        assert_eq!(
            partial_trailing_days(days(&[(1, 10), (2, 10), (3, 10), (4, 4)]).into_iter()),
            [4]
        );
        // Exactly half the median is a full day.
        assert!(partial_trailing_days(days(&[(1, 10), (2, 10), (3, 5)]).into_iter()).is_empty());
        // Two short days: the median is recomputed after each.
        assert_eq!(
            partial_trailing_days(
                days(&[(1, 10), (2, 10), (3, 10), (4, 10), (5, 2), (6, 1)]).into_iter()
            ),
            [5, 6]
        );
    }

    #[test]
    fn folds_scenarios_and_thresholds() {
        let rows = [
            row(100, "a", true),
            row(100, "b", false),
            row(101, "a", true),
            row(101, "c", false),
        ];
        let score = [0.9, 0.1, 0.3, 0.2];
        let scenario = [Some("s"), None, Some("s"), None];
        let th = Thresholds {
            review: Some(0.25),
            decline: Some(0.5),
        };
        let r = fold_report(100, 2, &rows, &score, &scenario, th, 3);
        assert_eq!(
            (r.test_start.as_str(), r.test_end.as_str()),
            ("1970-04-11", "1970-04-12")
        );
        assert_eq!((r.rows, r.frauds, r.removed_known_compromised), (4, 2, 3));
        assert_eq!(r.auc_roc, Some(1.0));
        // Day 100: card a detected (1/100); day 101: a is left out, c is not fraud.
        assert_eq!(r.card_precision_at_100, Some(0.005));
        let s = &r.per_scenario["s"];
        assert_eq!(
            (s.n, s.recall_at_review, s.recall_at_decline),
            (2, Some(1.0), Some(0.5))
        );
        assert_eq!(
            day_number(NaiveDate::from_ymd_opt(1970, 4, 11).unwrap()),
            100
        );
    }
}
