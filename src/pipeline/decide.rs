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
        work.decided = Some(decide(&shared, &work));
        std::future::ready(Ok(work))
    })
    .await
}

fn decide(shared: &Shared, work: &Work) -> SinkBatch {
    let policy = shared.policy.borrow().clone();
    let features = work.features.as_deref();
    let mut first_failure = None;
    let decisions = work
        .txs
        .iter()
        .zip(&work.scored)
        .enumerate()
        .map(|(i, (src, s))| {
            let f = features.expect("scored batches have features");
            let row_features = f.row_features(i);
            let decided = policy.decide(&Facts {
                tx: &src.tx,
                features: row_features,
                score: s.score,
            });
            // The shadow under the same policy: its rules read its score.
            let shadow = work.shadow_scored.get(i).map(|sh| {
                let would = policy.decide(&Facts {
                    tx: &src.tx,
                    features: row_features,
                    score: sh.score,
                });
                if would.decision != decided.decision {
                    shared.metrics.shadow_disagreements.inc();
                }
                ShadowRow {
                    score: sh.score,
                    decision: would.decision,
                    rules_fired: would.rules_fired,
                    feature_weights: sh.feature_attention.clone(),
                    history_weights: sh.history_attention[..HISTORY_LEN].to_vec(),
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
            DecisionRow {
                decision: decided.decision,
                score: s.score,
                features: row_features.to_vec(),
                feature_weights: s.feature_attention.clone(),
                history_tx_ids: f.history_tx_ids[i].clone(),
                history_weights: s.history_attention[..HISTORY_LEN].to_vec(),
                state_complete: work.state_complete,
                threshold_version: policy.version,
                rules_fired: decided.rules_fired,
                mcc_surprise: work.mcc_surprise.as_ref().map(|s| s[i]),
                partition: src.partition,
                offset: src.offset,
                kafka_ts: src
                    .kafka_ts_ms
                    .and_then(chrono::DateTime::from_timestamp_millis),
                tx: src.tx.clone(),
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
            .filter(|_| !work.shadow_scored.is_empty())
            .map(|s| (&s.manifest).into()),
        decisions,
        dead_letters: work.dead_letters.clone(),
        labels: work.labels.clone(),
        offsets: work.offsets.clone(),
    }
}
