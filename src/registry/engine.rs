//! What runs one served model: its session pool (of the shared ONNX Runtime
//! core, [`crate::onnx`]) and one run of it ([`Engine`]), and how a run fails
//! ([`InferError`]). Below both the model (`model.rs`: loading, verifying,
//! serving) and its batcher (`batch.rs`), which share an engine.

use super::tensor::Tensor;
use crate::metrics::ServeMetrics;
use crate::onnx::{SessionPool, TensorSpec};
use ort::session::{Session, SessionInputValue};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How an inference request failed; the HTTP layer maps these to statuses.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferError {
    /// ONNX Runtime refused these inputs (e.g. an out-of-range token id).
    #[error("model {model} rejected the inputs: {message}")]
    Rejected { model: String, message: String },
    /// The model's queue is full.
    #[error("model {0} is overloaded: its request queue is full")]
    Overloaded(String),
    /// The model was unloaded or replaced while the request waited.
    #[error("model {0} is not available")]
    Unavailable(String),
    #[error("model {model}: {message}")]
    Internal { model: String, message: String },
}

/// What runs a model: shared by its [`LoadedModel`] and its batcher task, so
/// the batcher outlives a swap only as long as it has queued work.
pub(crate) struct Engine {
    pub name: String,
    pub(super) pool: SessionPool,
    pub(super) input_names: Vec<String>,
    pub(super) outputs: Vec<TensorSpec>,
    /// Dim 0 of every input and output is the batch (from the manifest).
    pub(super) batch_dim: bool,
    /// Requests may be merged: `batch_dim`, not refused by the manifest or the
    /// golden self-test, and no run has shown otherwise.
    pub(super) batching: AtomicBool,
    pub(super) metrics: Option<Arc<ServeMetrics>>,
}

impl Engine {
    fn rejected(&self, message: impl Into<String>) -> InferError {
        InferError::Rejected {
            model: self.name.clone(),
            message: message.into(),
        }
    }

    fn internal(&self, message: impl Into<String>) -> InferError {
        InferError::Internal {
            model: self.name.clone(),
            message: message.into(),
        }
    }

    pub(crate) fn batching(&self) -> bool {
        self.batching.load(Ordering::Relaxed)
    }

    pub(crate) fn disable_batching(&self, why: &str) {
        if self.batching.swap(false, Ordering::Relaxed) {
            tracing::warn!(model = %self.name, reason = why, "dynamic batching disabled");
        }
    }

    /// One ONNX Runtime run: `inputs` in manifest order, outputs in manifest order.
    pub(crate) fn run(
        &self,
        session: &mut Session,
        inputs: &[Tensor],
    ) -> Result<Vec<Tensor>, InferError> {
        let started = Instant::now();
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for (name, tensor) in self.input_names.iter().zip(inputs) {
            let value = tensor
                .to_ort()
                .map_err(|e| self.rejected(format!("input {name:?}: {e}")))?;
            feed.push((Cow::from(name.as_str()), value));
        }
        let outputs = session
            .run(feed)
            .map_err(|e| self.rejected(e.to_string()))?;
        let mut out = Vec::with_capacity(self.outputs.len());
        for spec in &self.outputs {
            let value = outputs
                .get(&spec.name)
                .ok_or_else(|| self.internal(format!("no output {:?}", spec.name)))?;
            let tensor = Tensor::from_ort(value)
                .map_err(|e| self.internal(format!("output {:?}: {e}", spec.name)))?;
            if Some(tensor.dtype()) != spec.dtype() {
                return Err(self.internal(format!(
                    "output {:?} is {}, the manifest says {}",
                    spec.name,
                    tensor.dtype().manifest_name(),
                    spec.dtype
                )));
            }
            out.push(tensor);
        }
        if let Some(m) = &self.metrics {
            m.inference_seconds
                .with_label_values(&[&self.name])
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(out)
    }

    /// Run `f` with a pooled session on the calling (blocking) thread.
    pub(crate) fn with_session<R>(
        &self,
        f: impl FnOnce(&mut Session) -> R,
    ) -> Result<R, InferError> {
        self.pool
            .with_session(f)
            .ok_or_else(|| self.internal("no free session"))
    }

    /// Wait for a free session, then run on the blocking pool. The permit
    /// travels with the blocking task, so a caller that gives up (timeout)
    /// never frees a session that is still running.
    pub(crate) async fn run_async(
        self: &Arc<Self>,
        inputs: Vec<Tensor>,
    ) -> Result<Vec<Tensor>, InferError> {
        let permit = self
            .pool
            .permits()
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| InferError::Unavailable(self.name.clone()))?;
        let engine = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            engine.observe_batch(&inputs, 1);
            engine.with_session(|s| engine.run(s, &inputs))?
        })
        .await
        .map_err(|e| self.internal(format!("inference task failed: {e}")))?
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.pool.permits().clone().acquire_owned().await.ok()
    }

    pub(crate) fn observe_batch(&self, inputs: &[Tensor], requests: usize) {
        let (Some(m), true) = (&self.metrics, self.batch_dim) else {
            return;
        };
        if let Some(rows) = inputs.first().and_then(|t| t.shape.first()) {
            m.batch_rows
                .with_label_values(&[&self.name])
                .observe(*rows as f64);
            m.batch_requests
                .with_label_values(&[&self.name])
                .observe(requests as f64);
        }
    }
}
