//! The decide stage: each scored transaction against the thresholds in
//! force, shaped into the rows the sink writes (decision, features,
//! explanation, provenance).

use super::stage::{each_batch, EngineError, Item, Shared, Work};
use crate::features::HISTORY_LEN;
use crate::sink::{DecisionRow, SinkBatch};
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
    let features = work.features.as_deref();
    let decisions = work
        .txs
        .iter()
        .zip(&work.scored)
        .enumerate()
        .map(|(i, (src, s))| {
            let f = features.expect("scored batches have features");
            DecisionRow {
                decision: shared.thresholds.decide(s.score, src.tx.channel),
                score: s.score,
                features: f.row_features(i).to_vec(),
                feature_weights: s.feature_attention.clone(),
                history_tx_ids: f.history_tx_ids[i].clone(),
                history_weights: s.history_attention[..HISTORY_LEN].to_vec(),
                state_complete: work.state_complete,
                mcc_surprise: work.mcc_surprise.as_ref().map(|s| s[i]),
                partition: src.partition,
                offset: src.offset,
                kafka_ts: src
                    .kafka_ts_ms
                    .and_then(chrono::DateTime::from_timestamp_millis),
                tx: src.tx.clone(),
            }
        })
        .collect();
    SinkBatch {
        decisions,
        dead_letters: work.dead_letters.clone(),
        labels: work.labels.clone(),
        offsets: work.offsets.clone(),
    }
}
