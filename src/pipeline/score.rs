//! Scoring: the merchant language model's surprise (when configured) and
//! the fraud model, both on ONNX Runtime's blocking pool.

use super::stage::{each_batch, EngineError, Item, Shared, Work};
use crate::models::lm::MerchantLm;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tracing::Instrument;

/// The merchant language model's surprise at each row's MCC, on the blocking
/// pool. Rows are padded to the model's full window, so a value does not
/// depend on how the stream was cut into batches (the crash tests compare
/// stored features byte for byte).
pub(super) async fn surprise_stage(
    shared: Arc<Shared>,
    lm: Arc<MerchantLm>,
    input: mpsc::Receiver<Item>,
    out: mpsc::Sender<Item>,
) -> Result<(), EngineError> {
    each_batch(input, out, |mut work: Box<Work>| {
        let (shared, lm) = (shared.clone(), lm.clone());
        async move {
            let Some(features) = work.features.clone() else {
                return Ok(work);
            };
            let t = Instant::now();
            let span = tracing::debug_span!("surprise", rows = features.rows);
            work.mcc_surprise = Some(lm.surprise(features).instrument(span).await?);
            shared.metrics.stage_took("surprise", t);
            Ok(work)
        }
    })
    .await
}

/// Score each batch through the champion's ONNX Runtime session pool, and
/// the shadow's when one is configured. The models are read once per batch,
/// so a promotion takes effect at a batch boundary.
pub(super) async fn score_stage(
    shared: Arc<Shared>,
    input: mpsc::Receiver<Item>,
    out: mpsc::Sender<Item>,
) -> Result<(), EngineError> {
    each_batch(input, out, |mut work: Box<Work>| {
        let shared = shared.clone();
        async move {
            let Some(features) = work.features.clone() else {
                return Ok(work);
            };
            let models = shared.models.borrow().clone();
            let t = Instant::now();
            work.scored = models.champion.score(features.clone()).await?;
            let m = &shared.metrics;
            m.model_seconds.observe(t.elapsed().as_secs_f64());
            m.stage_took("score", t);
            if let Some(shadow) = &models.shadow {
                let t = Instant::now();
                match shadow.score(features).await {
                    Ok(scored) => work.shadow_scored = scored,
                    Err(e) => {
                        m.shadow_failures.inc();
                        tracing::warn!(model = %shadow.manifest.name, error = %e, rows = work.txs.len(), "the shadow model failed on a batch; the champion's decisions go on without its rows");
                    }
                }
                m.stage_took("shadow", t);
            }
            work.models = Some(models);
            Ok(work)
        }
    })
    .await
}
