//! The model what-if of `riskstream backtest --model DIR`: the champion and
//! a candidate model on the same rows and labels.
//!
//! Histories (16 past transactions per row) are not stored, so the stored
//! transactions of the range, with the history before it (30 days of
//! windows plus the label delay, and each card's last transactions before
//! that), go through the offline featurizer again: the stream's own code, whose output equals the
//! stream's (`features::offline` tests). Both models score those inputs; the
//! champion's fresh scores against the stored ones say how faithful the
//! replay was. Frauds are the labels stored so far, each known from the day
//! it was reported, as the stream knew them.

use super::{transaction_of, Figures, Stored, IN_RANGE, TRANSACTION_COLUMNS};
use crate::decision::{Decision, Facts, Policy};
use crate::evaluate::metrics::{self, CardRow};
use crate::features::offline::{featurize_rows, LabelledTx};
use crate::features::{day_of, kept_per_card, FEATURE_NAMES, HISTORY_LEN};
use crate::scoring::{Scored, Scorer};
use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::{PgPool, Row};

/// Days of history before the range that the features read: the longest
/// card window (30 days), the label delay, and a day of margin.
pub fn lookback_days(label_delay_days: i64) -> i64 {
    30 + label_delay_days + 1
}

/// The stored transactions from `start` to `end` with their labels and the
/// stored score, ordered as the stream read them, and before `start` each
/// of their cards' last transactions that a card keeps whatever their age
/// (its history sequence reaches past any window).
pub async fn load(
    pool: &PgPool,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> Result<Vec<(LabelledTx, f32)>> {
    let columns = format!(
        "{TRANSACTION_COLUMNS}, l.is_fraud, l.reported_at, d.score, d.source_partition, d.source_offset"
    );
    let sql = format!(
        "SELECT {columns}
           FROM risk_decisions d LEFT JOIN labels l USING (tx_id)
          WHERE {IN_RANGE}
         UNION ALL
         SELECT {columns}
           FROM (SELECT DISTINCT card_id FROM risk_decisions
                  WHERE $1::timestamptz IS NOT NULL AND ts >= $1
                    AND ($2::timestamptz IS NULL OR ts < $2)) c
          CROSS JOIN LATERAL (SELECT * FROM risk_decisions p
                               WHERE p.card_id = c.card_id AND p.ts < $1
                               ORDER BY p.ts DESC LIMIT $3) d
           LEFT JOIN labels l USING (tx_id)
          ORDER BY 2, 13, 14"
    );
    let kept = kept_per_card(HISTORY_LEN) as i64;
    let mut stream = sqlx::query(&sql)
        .bind(start)
        .bind(end)
        .bind(kept)
        .fetch(pool);
    let mut rows = Vec::new();
    while let Some(r) = stream.try_next().await.context("read the transactions")? {
        rows.push((
            LabelledTx {
                tx: transaction_of(&r),
                is_fraud: Some(r.get::<Option<bool>, _>(9).unwrap_or(false)),
                scenario: None,
                reported_at: r.get(10),
            },
            r.get(11),
        ));
    }
    Ok(rows)
}

/// One model on the compared rows.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFigures {
    pub model: String,
    pub auc_roc: Option<f64>,
    pub average_precision: Option<f64>,
    pub card_precision_at_100: Option<f64>,
    /// The candidate policy's decisions on this model's scores.
    pub alerts: Figures,
}

/// A transaction the two models decide differently, with both explanations.
#[derive(Debug, Clone, Serialize)]
pub struct Flip {
    pub tx_id: String,
    pub fraud: bool,
    pub champion: Side,
    pub challenger: Side,
}

#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub score: f32,
    pub decision: &'static str,
    /// The three features the model's attention weighed most, with weights.
    pub top_features: Vec<(String, f32)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelComparison {
    pub rows: usize,
    pub frauds: usize,
    pub champion: ModelFigures,
    pub challenger: ModelFigures,
    /// Rows whose decision differs, of which the first (largest score
    /// difference) are listed in `flips`.
    pub decisions_differ: usize,
    pub flips: Vec<Flip>,
    /// Largest difference between the champion's stored score and its score
    /// on the replayed inputs (rows it decided): 0 up to float noise when
    /// the replay reproduces the stream's features.
    pub replay_max_score_diff: Option<f32>,
}

const FLIPS_SHOWN: usize = 10;

/// Featurize the loaded rows and compare the two models on those from
/// `range_start` on, under `policy`; per-day figures over the range's `days`
/// (the backtest's own, so both tables divide alike).
pub fn compare(
    loaded: &[(LabelledTx, f32)],
    range_start: Option<DateTime<Utc>>,
    days: i64,
    label_delay_days: i64,
    champion: &Scorer,
    challenger: &Scorer,
    policy: &Policy,
) -> Result<ModelComparison> {
    let rows: Vec<LabelledTx> = loaded.iter().map(|(r, _)| r.clone()).collect();
    let in_range = |i: usize| range_start.is_none_or(|s| rows[i].tx.ts >= s);
    let batch = featurize_rows(&rows, label_delay_days, HISTORY_LEN, 2000, in_range)
        .context("featurize the stored transactions")?;
    let kept: Vec<usize> = (0..rows.len()).filter(|&i| in_range(i)).collect();
    let scores_a = champion.score_blocking(&batch)?;
    let scores_b = challenger.score_blocking(&batch)?;
    let stored: Vec<Stored> = kept
        .iter()
        .enumerate()
        .map(|(j, &i)| Stored {
            tx: rows[i].tx.clone(),
            score: loaded[i].1,
            decision: Decision::Approve,
            features: batch.row_features(j).to_vec(),
            fraud: rows[i].is_fraud.unwrap_or(false),
            threshold_version: 0,
        })
        .collect();
    let decide = |scored: &[Scored]| -> Vec<Decision> {
        stored
            .iter()
            .zip(scored)
            .map(|(r, s)| {
                policy
                    .decide(&Facts {
                        tx: &r.tx,
                        features: &r.features,
                        score: s.score,
                    })
                    .decision
            })
            .collect()
    };
    let (decided_a, decided_b) = (decide(&scores_a), decide(&scores_b));
    let y: Vec<bool> = stored.iter().map(|r| r.fraud).collect();
    let figures = |scorer: &Scorer, scored: &[Scored], decided: &[Decision]| {
        let s: Vec<f32> = scored.iter().map(|s| s.score).collect();
        let cards: Vec<CardRow> = stored
            .iter()
            .zip(&s)
            .map(|(r, &score)| CardRow {
                day: day_of(r.tx.ts.timestamp_millis()),
                card: &r.tx.card_id,
                fraud: r.fraud,
                score,
            })
            .collect();
        ModelFigures {
            model: format!("{} v{}", scorer.manifest.name, scorer.manifest.version),
            auc_roc: metrics::roc_auc(&y, &s),
            average_precision: metrics::average_precision(&y, &s),
            card_precision_at_100: metrics::card_precision_at_k(&cards, 100),
            alerts: Figures::of(&stored, decided.iter().copied(), days),
        }
    };
    let mut differ: Vec<usize> = (0..stored.len())
        .filter(|&j| decided_a[j] != decided_b[j])
        .collect();
    let decisions_differ = differ.len();
    differ.sort_by(|&x, &y| {
        let d = |j: usize| (scores_a[j].score - scores_b[j].score).abs();
        d(y).total_cmp(&d(x))
    });
    let side = |s: &Scored, d: Decision| Side {
        score: s.score,
        decision: d.as_str(),
        top_features: top_features(&s.feature_attention),
    };
    let flips = differ
        .iter()
        .take(FLIPS_SHOWN)
        .map(|&j| Flip {
            tx_id: stored[j].tx.tx_id.clone(),
            fraud: stored[j].fraud,
            champion: side(&scores_a[j], decided_a[j]),
            challenger: side(&scores_b[j], decided_b[j]),
        })
        .collect();
    Ok(ModelComparison {
        rows: stored.len(),
        frauds: y.iter().filter(|&&f| f).count(),
        champion: figures(champion, &scores_a, &decided_a),
        challenger: figures(challenger, &scores_b, &decided_b),
        decisions_differ,
        flips,
        replay_max_score_diff: stored
            .iter()
            .zip(&scores_a)
            .map(|(r, s)| (r.score - s.score).abs())
            .reduce(f32::max),
    })
}

fn top_features(weights: &[f32]) -> Vec<(String, f32)> {
    let mut named: Vec<(String, f32)> = FEATURE_NAMES
        .iter()
        .zip(weights)
        .map(|(n, w)| (n.to_string(), *w))
        .collect();
    named.sort_by(|a, b| b.1.total_cmp(&a.1));
    named.truncate(3);
    named
}

impl ModelComparison {
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
        let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
        let _ = writeln!(
            s,
            "\nModel what-if on {} replayed transactions ({} labelled fraud), the candidate policy on each model's scores:",
            self.rows, self.frauds
        );
        let _ = writeln!(
            s,
            "{:<28}{:>9}{:>9}{:>9}{:>12}{:>11}{:>9}{:>16}",
            "model", "AUC", "AP", "CP@100", "alerts/day", "precision", "recall", "fraud caught"
        );
        for m in [&self.champion, &self.challenger] {
            let _ = writeln!(
                s,
                "{:<28}{:>9}{:>9}{:>9}{:>12.1}{:>11}{:>9}{:>16.2}",
                m.model,
                f(m.auc_roc),
                f(m.average_precision),
                f(m.card_precision_at_100),
                m.alerts.alerts_per_day,
                pct(m.alerts.precision),
                pct(m.alerts.recall),
                m.alerts.fraud_amount_caught
            );
        }
        if let Some(d) = self.replay_max_score_diff {
            let _ = writeln!(s, "(the champion's scores on the replayed inputs differ from the stored ones by at most {d:.2e})");
        }
        let _ = writeln!(s, "Decisions that differ: {}", self.decisions_differ);
        for flip in &self.flips {
            let why = |side: &Side| {
                side.top_features
                    .iter()
                    .map(|(n, w)| format!("{n} {w:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "  {}{}: champion {:.3} {} [{}]  |  challenger {:.3} {} [{}]",
                flip.tx_id,
                if flip.fraud { " (fraud)" } else { "" },
                flip.champion.score,
                flip.champion.decision,
                why(&flip.champion),
                flip.challenger.score,
                flip.challenger.decision,
                why(&flip.challenger)
            );
        }
        s
    }
}
