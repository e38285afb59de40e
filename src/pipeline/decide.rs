//! The decide stage: each scored transaction against the policy in force
//! (thresholds and rules), shaped into the rows the sink writes (decision,
//! features, explanation, provenance). The policy is read once per batch, so
//! a live change takes effect at a batch boundary and every row records the
//! version it was decided under.

use super::stage::{each_batch, EngineError, Item, Shared, Work};
use crate::decision::Facts;
use crate::features::HISTORY_LEN;
use crate::sink::{DecisionRow, ModelId, ShadowRow, SinkBatch};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Decide every batch, in order.
pub(super) async fn decide_stage(
    shared: Arc<Shared>,
    input: mpsc::Receiver<Item>,
    out: mpsc::Sender<Item>,
) -> Result<(), EngineError> {
    each_batch(input, out, |mut work: Box<Work>| {
        work.decided = Some(decide(&shared, &mut work));
        std::future::ready(Ok(work))
    })
    .await
}

/// The batch's rows for the sink. What they carry (transactions, scores,
/// explanations, dead letters, labels, offsets) moves out of `work` into
/// them rather than being copied: after this stage only the sink reads the
/// batch, and only these rows.
fn decide(shared: &Shared, work: &mut Work) -> SinkBatch {
    let policy = shared.policy.borrow().clone();
    let mut features = work.features.take();
    // The score stage has let go of the features by now: their history ids
    // move too (a copy only if something still holds them).
    let mut history_ids = match &mut features {
        Some(f) => {
            if let Some(f) = Arc::get_mut(f) {
                std::mem::take(&mut f.history_tx_ids)
            } else {
                f.history_tx_ids.clone()
            }
        }
        None => Vec::new(),
    }
    .into_iter();
    let has_shadow = !work.shadow_scored.is_empty();
    let mut shadow_scored = std::mem::take(&mut work.shadow_scored).into_iter();
    let mut first_failure = None;
    let decisions = std::mem::take(&mut work.txs)
        .into_iter()
        .zip(std::mem::take(&mut work.scored))
        .enumerate()
        .map(|(i, (src, s))| {
            let f = features.as_deref().expect("scored batches have features");
            let row_features = f.row_features(i);
            let decided = policy.decide(&Facts {
                tx: &src.tx,
                features: row_features,
                score: s.score,
            });
            // The shadow under the same policy: its rules read its score.
            let shadow = shadow_scored.next().map(|mut sh| {
                let would = policy.decide(&Facts {
                    tx: &src.tx,
                    features: row_features,
                    score: sh.score,
                });
                if would.decision != decided.decision {
                    shared.metrics.shadow_disagreements.inc();
                }
                sh.history_attention.truncate(HISTORY_LEN);
                ShadowRow {
                    score: sh.score,
                    decision: would.decision,
                    rules_fired: would.rules_fired,
                    feature_weights: sh.feature_attention,
                    history_weights: sh.history_attention,
                }
            });
            for rule in &decided.rules_fired {
                shared.metrics.rules_fired.with_label_values(&[rule]).inc();
            }
            for (rule, error) in &decided.rules_failed {
                shared
                    .metrics
                    .rule_failures
                    .with_label_values(&[rule])
                    .inc();
                first_failure
                    .get_or_insert_with(|| (rule.clone(), error.clone(), src.tx.tx_id.clone()));
            }
            let mut history_weights = s.history_attention;
            history_weights.truncate(HISTORY_LEN);
            DecisionRow {
                decision: decided.decision,
                score: s.score,
                features: row_features.to_vec(),
                feature_weights: s.feature_attention,
                history_tx_ids: history_ids.next().unwrap_or_default(),
                history_weights,
                state_complete: work.state_complete,
                threshold_version: policy.version,
                rules_fired: decided.rules_fired,
                mcc_surprise: work.mcc_surprise.as_ref().map(|s| s[i]),
                partition: src.partition,
                offset: src.offset,
                kafka_ts: src
                    .kafka_ts_ms
                    .and_then(chrono::DateTime::from_timestamp_millis),
                tx: src.tx,
                shadow,
            }
        })
        .collect();
    if let Some((rule, error, tx_id)) = first_failure {
        // Once per batch at most: a rule failing on every row must not flood the log.
        tracing::warn!(%rule, %error, %tx_id, "a rule could not be evaluated (it did not fire); riskstream_rule_failures_total counts every row");
    }
    let models = work.models.as_deref();
    SinkBatch {
        model: models.map_or_else(ModelId::default, |m| (&m.champion.manifest).into()),
        shadow_model: models
            .and_then(|m| m.shadow.as_ref())
            .filter(|_| has_shadow)
            .map(|s| (&s.manifest).into()),
        decisions,
        dead_letters: std::mem::take(&mut work.dead_letters),
        labels: std::mem::take(&mut work.labels),
        offsets: std::mem::take(&mut work.offsets),
    }
}
