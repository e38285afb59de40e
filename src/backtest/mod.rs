//! `riskstream backtest`: what a candidate policy (thresholds and rules)
//! would have decided on what is stored, beside what was decided.
//!
//! Rows are the stored decisions of a date range with their score, the
//! model inputs they were decided on, and their label. A decision counts as
//! fraud when `labels_in_force` says so (the stream's label, else a
//! reviewer's from the console); everything else counts as legitimate
//! (labels arrive for frauds, days later: a recent range reads better than it
//! is). The `--model` replay reads the stream's `labels` alone, as the engine
//! did: its features must be the stored decisions' own.
//! The candidate is decided by the same [`Policy`] code as the stream, so a
//! backtest and the engine cannot disagree on what a policy means.
//!
//! Figures, for the policies in force (the stored decisions) and the candidate:
//! - alerts: reviews and declines; per day over the range's days;
//! - precision: frauds among alerts; recall: alerted frauds among frauds;
//! - fraud amount caught: the amount of alerted frauds;
//! - good amount declined: the amount of declined legitimate transactions.

pub mod model;
pub mod plot;

use crate::decision::{Decision, Facts, Outcome, Policy, ThresholdSet};
use crate::event::{Channel, Transaction};
use anyhow::{Context, Result};
use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::collections::{BTreeMap, BTreeSet};

/// One stored decision, as the backtest reads it.
pub struct Stored {
    pub tx: Transaction,
    pub score: f32,
    pub decision: Decision,
    pub features: Vec<f32>,
    pub fraud: bool,
    pub threshold_version: i32,
}

/// The stored decisions of a range.
pub struct Loaded {
    pub rows: Vec<Stored>,
    /// Decided on another number of model inputs than the candidate's model
    /// has (another model): left out, since the rules could not read them.
    pub skipped: u64,
    pub days: i64,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
}

/// The candidate policy of a backtest: `config`'s thresholds and rules with
/// the review and decline thresholds overridden, checked as the engine
/// checks a configuration (every problem named) and compiled against the
/// model's feature names; with the model's number of inputs.
pub fn candidate(
    mut config: crate::config::Config,
    review: Option<f32>,
    decline: Option<f32>,
) -> Result<(Policy, usize)> {
    let t = &mut config.thresholds;
    t.review = review.unwrap_or(t.review);
    t.decline = decline.unwrap_or(t.decline);
    let manifest = crate::onnx::Manifest::read(&config.model.dir)?;
    let mut problems = config.validate();
    match Policy::compile(&config.thresholds, &config.rules, &manifest.feature_names) {
        Ok(policy) if problems.is_empty() => Ok((policy, manifest.feature_names.len())),
        Ok(_) => anyhow::bail!("the candidate: {}", crate::config::listed(&problems, "; ")),
        Err(more) => {
            problems.extend(more);
            anyhow::bail!("the candidate: {}", crate::config::listed(&problems, "; "))
        }
    }
}

/// Decisions with `ts` in the days `from ..= to` (UTC), each bound optional.
pub async fn load(
    pool: &PgPool,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    inputs: usize,
    progress: bool,
) -> Result<Loaded> {
    let (start, end) = bounds(from, to);
    // Counted only for the bar: a scan of the range's index entries.
    let total: i64 = if progress {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM risk_decisions d WHERE {IN_RANGE}"
        ))
        .bind(start)
        .bind(end)
        .fetch_one(pool)
        .await
        .context("count the decisions in the range")?
    } else {
        0
    };
    let bar = if progress {
        crate::progress::bar(total.max(0) as u64, "decisions read")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let sql = format!(
        "SELECT {TRANSACTION_COLUMNS}, d.score, d.decision, d.features, d.threshold_version,
                coalesce(l.is_fraud, false)
           FROM risk_decisions d LEFT JOIN labels_in_force l USING (tx_id)
          WHERE {IN_RANGE}"
    );
    let mut stream = sqlx::query(&sql).bind(start).bind(end).fetch(pool);
    let mut rows = Vec::with_capacity(total.max(0) as usize);
    let mut skipped = 0;
    let mut days = BTreeSet::new();
    while let Some(r) = stream.try_next().await.context("read the decisions")? {
        bar.inc(1);
        let features: Vec<f32> = r.get(11);
        if features.len() != inputs {
            skipped += 1;
            continue;
        }
        let tx = transaction_of(&r);
        days.insert(tx.ts.date_naive());
        let decision: String = r.get(10);
        rows.push(Stored {
            tx,
            score: r.get(9),
            decision: Decision::parse(&decision)
                .with_context(|| format!("stored decision {decision:?}"))?,
            features,
            fraud: r.get(13),
            threshold_version: r.get(12),
        });
    }
    bar.finish_and_clear();
    let span = match (from, to, days.first(), days.last()) {
        (Some(f), Some(t), _, _) => (t - f).num_days() + 1,
        (f, t, Some(first), Some(last)) => {
            (t.unwrap_or(*last) - f.unwrap_or(*first)).num_days() + 1
        }
        _ => 0,
    };
    Ok(Loaded {
        rows,
        skipped,
        days: span.max(0),
        from,
        to,
    })
}

/// `risk_decisions d` rows with `ts` in `[$1, $2)`, each bound optional.
const IN_RANGE: &str =
    "($1::timestamptz IS NULL OR d.ts >= $1) AND ($2::timestamptz IS NULL OR d.ts < $2)";

/// The stored transaction's columns of `risk_decisions d`, first in a
/// select that [`transaction_of`] reads.
const TRANSACTION_COLUMNS: &str =
    "d.tx_id, d.ts, d.card_id, d.terminal_id, (d.amount * 100)::bigint, \
     d.currency, d.mcc, d.channel, d.country";

/// The transaction of a row that starts with [`TRANSACTION_COLUMNS`].
fn transaction_of(r: &PgRow) -> Transaction {
    let channel: Option<String> = r.get(7);
    Transaction {
        tx_id: r.get(0),
        ts: r.get(1),
        card_id: r.get(2),
        terminal_id: r.get(3),
        amount: r.get::<i64, _>(4) as f64 / 100.0,
        currency: r.get(5),
        mcc: r.get(6),
        channel: channel.as_deref().and_then(Channel::parse),
        country: r.get(8),
    }
}

/// The instants `from ..= to` (days, UTC) spans: `[start, end)`.
pub fn bounds(
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
    (
        from.map(midnight),
        to.map(|d| midnight(d + chrono::Days::new(1))),
    )
}

/// What a set of decisions on the rows amounts to.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub decisions: u64,
    pub reviews: u64,
    pub declines: u64,
    pub alerts: u64,
    pub alerts_per_day: f64,
    pub reviews_per_day: f64,
    pub frauds: u64,
    pub frauds_alerted: u64,
    /// `None` without alerts.
    pub precision: Option<f64>,
    /// `None` without labelled frauds.
    pub recall: Option<f64>,
    pub fraud_amount_caught: f64,
    pub good_amount_declined: f64,
}

impl Figures {
    pub fn of(rows: &[Stored], decisions: impl Iterator<Item = Decision>, days: i64) -> Figures {
        let mut f = Figures {
            decisions: 0,
            reviews: 0,
            declines: 0,
            alerts: 0,
            alerts_per_day: 0.0,
            reviews_per_day: 0.0,
            frauds: 0,
            frauds_alerted: 0,
            precision: None,
            recall: None,
            fraud_amount_caught: 0.0,
            good_amount_declined: 0.0,
        };
        let (mut caught_cents, mut declined_cents) = (0i64, 0i64);
        for (row, d) in rows.iter().zip(decisions) {
            let cents = crate::features::cents(row.tx.amount);
            f.decisions += 1;
            f.frauds += row.fraud as u64;
            match d {
                Decision::Approve => continue,
                Decision::Review => f.reviews += 1,
                Decision::Decline => {
                    f.declines += 1;
                    if !row.fraud {
                        declined_cents += cents;
                    }
                }
            }
            f.alerts += 1;
            if row.fraud {
                f.frauds_alerted += 1;
                caught_cents += cents;
            }
        }
        let per_day = |n: u64| {
            if days > 0 {
                n as f64 / days as f64
            } else {
                0.0
            }
        };
        f.alerts_per_day = per_day(f.alerts);
        f.reviews_per_day = per_day(f.reviews);
        f.precision = (f.alerts > 0).then(|| f.frauds_alerted as f64 / f.alerts as f64);
        f.recall = (f.frauds > 0).then(|| f.frauds_alerted as f64 / f.frauds as f64);
        f.fraud_amount_caught = caught_cents as f64 / 100.0;
        f.good_amount_declined = declined_cents as f64 / 100.0;
        f
    }
}

/// How one candidate rule did on the rows.
#[derive(Debug, Clone, Serialize)]
pub struct RuleFigures {
    pub name: String,
    pub action: &'static str,
    pub fires: u64,
    pub frauds: u64,
    pub precision: Option<f64>,
    pub fraud_amount: f64,
    /// Rows on which the condition could not be evaluated (it did not fire).
    pub failures: u64,
}

/// One point of a review-threshold sweep (the candidate's other settings kept).
#[derive(Debug, Clone, Serialize)]
pub struct SweepPoint {
    pub review: f32,
    pub alerts_per_day: f64,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub days: i64,
    pub skipped: u64,
    /// `threshold_sets` versions the stored decisions were made under.
    pub versions_in_force: Vec<i32>,
    pub in_force: Figures,
    pub candidate: Figures,
    /// `approve→review` and the like: how many stored decisions the
    /// candidate would change.
    pub changes: BTreeMap<String, u64>,
    pub rules: Vec<RuleFigures>,
    pub sweep: Vec<SweepPoint>,
    /// With `--model`: the champion and the candidate model on the same rows.
    pub model: Option<model::ModelComparison>,
}

/// The candidate against the stored decisions; with `sweep`, also the
/// candidate at other review thresholds.
pub fn run(loaded: &Loaded, candidate: &Policy, sweep: bool) -> Report {
    let rows = &loaded.rows;
    let outcomes: Vec<Outcome> = rows
        .iter()
        .map(|r| {
            candidate.rules.evaluate(&Facts {
                tx: &r.tx,
                features: &r.features,
                score: r.score,
            })
        })
        .collect();
    let decided: Vec<Decision> = rows
        .iter()
        .zip(&outcomes)
        .map(|(r, o)| candidate.combine(candidate.thresholds.decide(r.score, r.tx.channel), o))
        .collect();
    let mut changes = BTreeMap::new();
    for (r, d) in rows.iter().zip(&decided) {
        if r.decision != *d {
            *changes
                .entry(format!("{}→{}", r.decision.as_str(), d.as_str()))
                .or_insert(0) += 1;
        }
    }
    let rules = candidate
        .rules
        .rules()
        .iter()
        .enumerate()
        .map(|(k, rule)| {
            let (mut fires, mut frauds, mut cents, mut failures) = (0u64, 0u64, 0i64, 0u64);
            for (r, o) in rows.iter().zip(&outcomes) {
                if o.fired.contains(&k) {
                    fires += 1;
                    if r.fraud {
                        frauds += 1;
                        cents += crate::features::cents(r.tx.amount);
                    }
                }
                failures += o.failed.iter().any(|(i, _)| *i == k) as u64;
            }
            RuleFigures {
                name: rule.name.to_string(),
                action: rule.action.as_str(),
                fires,
                frauds,
                precision: (fires > 0).then(|| frauds as f64 / fires as f64),
                fraud_amount: cents as f64 / 100.0,
                failures,
            }
        })
        .collect();
    let sweep = if sweep {
        sweep_thresholds(rows, candidate)
            .into_iter()
            .map(|review| {
                let mut config = candidate.thresholds.config.clone();
                config.review = review.min(config.decline);
                let thresholds = ThresholdSet::new(config);
                let f = Figures::of(
                    rows,
                    (0..rows.len()).map(|i| {
                        let r = &rows[i];
                        candidate.combine(thresholds.decide(r.score, r.tx.channel), &outcomes[i])
                    }),
                    loaded.days,
                );
                SweepPoint {
                    review,
                    alerts_per_day: f.alerts_per_day,
                    precision: f.precision,
                    recall: f.recall,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    Report {
        from: loaded.from,
        to: loaded.to,
        days: loaded.days,
        skipped: loaded.skipped,
        versions_in_force: rows
            .iter()
            .map(|r| r.threshold_version)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
        in_force: Figures::of(rows, rows.iter().map(|r| r.decision), loaded.days),
        candidate: Figures::of(rows, decided.into_iter(), loaded.days),
        changes,
        rules,
        sweep,
        model: None,
    }
}

/// Review thresholds to sweep: the scores at which 0.1 % … 20 % of the rows
/// would be alerted by score alone, and the candidate's own.
fn sweep_thresholds(rows: &[Stored], candidate: &Policy) -> Vec<f32> {
    let mut scores: Vec<f32> = rows.iter().map(|r| r.score).collect();
    scores.sort_unstable_by(|a, b| b.total_cmp(a));
    let mut out: Vec<f32> = [
        0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
        0.075, 0.1, 0.15, 0.2,
    ]
    .iter()
    .filter_map(|share| {
        let k = ((scores.len() as f64 * share).ceil() as usize).checked_sub(1)?;
        scores.get(k).copied()
    })
    .collect();
    out.push(candidate.thresholds.config.review);
    out.sort_unstable_by(|a, b| b.total_cmp(a));
    out.dedup();
    out
}

impl Report {
    /// The report as a text table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let range = |d: Option<NaiveDate>| d.map_or("…".to_string(), |d| d.to_string());
        let _ = writeln!(
            s,
            "Backtest {} .. {} ({} days): {} decisions, {} labelled fraud; in force: threshold version(s) {:?}",
            range(self.from),
            range(self.to),
            self.days,
            self.in_force.decisions,
            self.in_force.frauds,
            self.versions_in_force
        );
        if self.skipped > 0 {
            let _ = writeln!(
                s,
                "({} decisions left out: made on another model's inputs)",
                self.skipped
            );
        }
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", v * 100.0));
        let (a, b) = (&self.in_force, &self.candidate);
        let _ = writeln!(
            s,
            "\n{:<24}{:>14}{:>14}{:>14}",
            "", "in force", "candidate", "change"
        );
        let mut line = |name: &str, x: f64, y: f64, digits: usize| {
            let _ = writeln!(
                s,
                "{name:<24}{x:>14.digits$}{y:>14.digits$}{:>+14.digits$}",
                y - x
            );
        };
        line("alerts / day", a.alerts_per_day, b.alerts_per_day, 1);
        line(
            "review queue / day",
            a.reviews_per_day,
            b.reviews_per_day,
            1,
        );
        line("declines", a.declines as f64, b.declines as f64, 0);
        line(
            "frauds alerted",
            a.frauds_alerted as f64,
            b.frauds_alerted as f64,
            0,
        );
        line(
            "fraud amount caught",
            a.fraud_amount_caught,
            b.fraud_amount_caught,
            2,
        );
        line(
            "good amount declined",
            a.good_amount_declined,
            b.good_amount_declined,
            2,
        );
        let _ = writeln!(
            s,
            "{:<24}{:>14}{:>14}\n{:<24}{:>14}{:>14}",
            "precision",
            pct(a.precision),
            pct(b.precision),
            "recall",
            pct(a.recall),
            pct(b.recall)
        );
        if self.changes.is_empty() {
            let _ = writeln!(s, "\nNo decision changes.");
        } else {
            let changed: Vec<String> = self
                .changes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(s, "\nDecisions that change: {}", changed.join(", "));
        }
        if !self.rules.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<28}{:>8}{:>10}{:>10}{:>12}{:>16}{:>10}",
                "candidate rule",
                "action",
                "fires",
                "frauds",
                "precision",
                "fraud amount",
                "failed"
            );
            for r in &self.rules {
                let _ = writeln!(
                    s,
                    "{:<28}{:>8}{:>10}{:>10}{:>12}{:>16.2}{:>10}",
                    r.name,
                    r.action,
                    r.fires,
                    r.frauds,
                    pct(r.precision),
                    r.fraud_amount,
                    r.failures
                );
            }
        }
        if let Some(m) = &self.model {
            s.push_str(&m.table());
        }
        if !self.sweep.is_empty() {
            let _ = writeln!(
                s,
                "\nReview-threshold sweep (decline and rules as the candidate's):\n{:>10}{:>14}{:>12}{:>10}",
                "review", "alerts / day", "precision", "recall"
            );
            for p in &self.sweep {
                let _ = writeln!(
                    s,
                    "{:>10.4}{:>14.1}{:>12}{:>10}",
                    p.review,
                    p.alerts_per_day,
                    pct(p.precision),
                    pct(p.recall)
                );
            }
        }
        s
    }
}
