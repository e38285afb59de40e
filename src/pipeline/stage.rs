//! What the stages share: the batch on its way ([`Work`], [`Item`]), the
//! read-only context ([`Shared`]), their error, and [`each_batch`], the
//! one shape of the stages between featurize and commit. Every stage file
//! builds on this; `mod.rs` wires them together.

use super::batch;
pub(super) use super::models::Models;
use crate::config::Config;
use crate::decision::Policy;
use crate::features::FeatureBatch;
use crate::health::Health;
use crate::ingest;
use crate::metrics::Metrics;
use crate::models::lm::MerchantLm;
use crate::scoring::Scored;
use crate::sink::{DeadLetter, LabelRow, OffsetUpdate, Provenance, SinkBatch, SinkError};
use sqlx::PgPool;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Scoring(#[from] crate::scoring::ScoringError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("featurization: {0}")]
    Features(#[from] polars::error::PolarsError),
    #[error("merchant language model: {0}")]
    LanguageModel(#[from] crate::models::ModelError),
    #[error("kafka topics: {0}")]
    Topics(#[from] ingest::topics::TopicsError),
    #[error("{0}")]
    Other(String),
}

/// What a run did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunSummary {
    pub decisions: u64,
    pub dead_letters: u64,
    pub labels: u64,
    pub batches: u64,
}

/// Everything the stages share, read-only.
pub(super) struct Shared {
    pub(super) config: Config,
    pub(super) pool: PgPool,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<Health>,
    /// The fraud models in force: replaced when `[model]` or `[shadow]`
    /// changes in the config file, read once per batch by the score stage.
    pub(super) models: tokio::sync::watch::Receiver<Arc<Models>>,
    /// The merchant language model, when `[language_model]` is configured.
    pub(super) lm: Option<Arc<MerchantLm>>,
    /// The thresholds and rules in force: replaced when the config file
    /// changes, read once per batch by the decide stage.
    pub(super) policy: tokio::sync::watch::Receiver<Arc<Policy>>,
    pub(super) provenance: Provenance,
}

/// A batch on its way through the stages.
pub(super) struct Work {
    pub(super) started: Instant,
    /// Its place among the pipeline's batches in flight, given back when the
    /// batch is dropped (after its commit); see [`InFlight`].
    pub(super) _in_flight: Option<tokio::sync::OwnedSemaphorePermit>,
    pub(super) txs: Vec<batch::Sourced>,
    pub(super) labels: Vec<LabelRow>,
    pub(super) dead_letters: Vec<DeadLetter>,
    pub(super) offsets: Vec<OffsetUpdate>,
    pub(super) features: Option<Arc<FeatureBatch>>,
    pub(super) state_complete: bool,
    /// Per transaction, in row order (with a language model only).
    pub(super) mcc_surprise: Option<Vec<f32>>,
    pub(super) scored: Vec<Scored>,
    /// The models that scored this batch (set by the score stage).
    pub(super) models: Option<Arc<Models>>,
    /// The shadow model's scores, in row order; empty without a shadow (or
    /// when it failed on this batch: it never holds the stream up).
    pub(super) shadow_scored: Vec<Scored>,
    /// The rows to write, once the decide stage has run.
    pub(super) decided: Option<SinkBatch>,
}

impl Work {
    /// Records this batch answers for: its offsets cover them all.
    pub(super) fn rows(&self) -> i64 {
        (self.txs.len() + self.labels.len() + self.dead_letters.len()) as i64
    }
}

/// The pipeline's batches between featurize and commit, at most
/// `pipeline.max_batches_in_flight`: the featurize stage closes a batch
/// while one of these places is free, and each batch holds its place until
/// it is dropped after its commit.
pub(super) struct InFlight(Arc<tokio::sync::Semaphore>);

impl InFlight {
    pub(super) fn new(places: usize) -> Self {
        InFlight(Arc::new(tokio::sync::Semaphore::new(places)))
    }

    pub(super) fn free(&self) -> bool {
        self.0.available_permits() > 0
    }

    /// Wait for a place (only a full or timed-out batch waits here).
    pub(super) async fn take(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.0
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

pub(super) enum Item {
    Batch(Box<Work>),
    /// Everything before this is committed when the sink acknowledges it.
    Barrier(std_mpsc::Sender<()>),
}

impl EngineError {
    /// A dependency that may come up: connection errors and Kafka's
    /// not-reachable-yet codes at start-up. Bad credentials, certificates,
    /// schema or data are not.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            EngineError::Sink(e) => e.is_transient(),
            EngineError::Topics(e) => e.is_transient(),
            EngineError::Kafka(e) => e.rdkafka_error_code().is_none_or(ingest::topics::transient),
            _ => false,
        }
    }
}

/// How the stages ride out a Postgres outage (the sink's transaction and
/// the reads of card and terminal state alike): connection-type errors are
/// retried with backoff from 100 ms doubling to 5 s, readiness says what
/// is failing meanwhile; anything else is the stage's end.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    /// `Ok` after waiting if `e` is worth retrying, else `Err(e)`. `what`
    /// names the work for the log, for readiness and for the metric.
    pub(super) async fn ride_out(
        &mut self,
        shared: &Shared,
        what: &str,
        e: SinkError,
    ) -> Result<(), EngineError> {
        if !e.is_transient() {
            return Err(e.into());
        }
        shared
            .metrics
            .postgres_retries
            .with_label_values(&[what])
            .inc();
        shared.health.sink_failed(&format!("{what}: {e}"));
        tracing::warn!(error = %e, backoff = ?self.0, "{what} failed; retrying");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

/// The shape of every stage between featurize and commit: `step` takes
/// each batch and hands it on, in order; barriers pass through. Ends when its
/// input does, when the next stage is gone, or at `step`'s first error.
pub(super) async fn each_batch<F, Fut>(
    mut input: mpsc::Receiver<Item>,
    out: mpsc::Sender<Item>,
    mut step: F,
) -> Result<(), EngineError>
where
    F: FnMut(Box<Work>) -> Fut,
    Fut: std::future::Future<Output = Result<Box<Work>, EngineError>>,
{
    while let Some(mut item) = input.recv().await {
        if let Item::Batch(work) = item {
            item = Item::Batch(step(work).await?);
        }
        if out.send(item).await.is_err() {
            break;
        }
    }
    Ok(())
}
