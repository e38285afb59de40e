//! The streaming engine: ingest → batch → featurize → score → decide → sink.
//!
//! Stages are async tasks joined by bounded channels (records from ingest,
//! two batches between later stages), so a slow Postgres slows the consumer
//! instead of growing memory. With a `[language_model]`, a surprise stage
//! between featurize and score adds each row's MCC surprise. CPU work
//! (polars, ONNX Runtime) runs on the blocking pool. Batches flow in order,
//! and the sink commits them in order: a partition's committed offset never
//! passes an uncommitted record.
//!
//! A revocation travels down the pipeline as a barrier: when the sink has
//! committed everything before it, the consumer lets the partitions go.

mod batch;
pub mod event_time;
pub mod watermark;

use crate::config::Config;
use crate::decision::ThresholdSet;
use crate::event::Transaction;
use crate::features::{self, CardState, FeatureBatch, TerminalStats, HISTORY_LEN};
use crate::health::Health;
use crate::ingest::{self, Ingested};
use crate::metrics::Metrics;
use crate::models::lm::MerchantLm;
use crate::scoring::{Scored, Scorer};
use crate::sink::{
    self, DeadLetter, DecisionRow, Failure, LabelRow, OffsetUpdate, Provenance, SinkBatch,
    SinkError,
};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use watermark::{Readiness, TerminalLoader};

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
struct Shared {
    config: Config,
    pool: PgPool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    scorer: Scorer,
    /// The merchant language model, when `[language_model]` is configured.
    lm: Option<Arc<MerchantLm>>,
    thresholds: ThresholdSet,
    provenance: Provenance,
}

/// A batch on its way through the stages.
struct Work {
    started: Instant,
    txs: Vec<batch::Sourced>,
    labels: Vec<LabelRow>,
    dead_letters: Vec<DeadLetter>,
    offsets: Vec<OffsetUpdate>,
    features: Option<Arc<FeatureBatch>>,
    state_complete: bool,
    /// Per transaction, in row order (with a language model only).
    mcc_surprise: Option<Vec<f32>>,
    scored: Vec<Scored>,
}

enum Item {
    Batch(Box<Work>),
    /// Everything before this is committed when the sink acknowledges it.
    Barrier(std_mpsc::Sender<()>),
}

/// Run the engine until `shutdown` is cancelled (then finish the batch in
/// hand, commit it and return) or a fatal error occurs.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<RunSummary, EngineError> {
    let pool = until_up("postgres", &shutdown, || {
        sink::connect(
            config.postgres.url.expose(),
            config.postgres.max_connections,
        )
    })
    .await?;
    // The engine's login may not change the schema: `riskstream migrate` does.
    let unknown = sink::check_migrations(&pool)
        .await
        .map_err(|e| EngineError::Other(e.to_string()))?;
    if !unknown.is_empty() {
        tracing::warn!(versions = ?unknown, "the database has migrations this riskstream does not know (migrated by a newer version)");
    }
    let (dir, workers, intra, max_batch) = (
        config.model.dir.clone(),
        config.pipeline.scoring_workers,
        config.model.intra_threads,
        config.model.max_batch,
    );
    let scorer = tokio::task::spawn_blocking(move || Scorer::open(&dir, workers, intra, max_batch))
        .await
        .map_err(|e| EngineError::Other(e.to_string()))??;
    sink::register_model(&pool, &scorer.manifest).await?;
    let lm = match config.language_model.clone() {
        None => None,
        Some(c) => {
            let lm = tokio::task::spawn_blocking(move || {
                let opts = crate::registry::LoadOptions {
                    sessions: 1,
                    intra_threads: c.intra_threads,
                    batch: crate::registry::BatchOptions {
                        max_batch: c.max_batch,
                        ..Default::default()
                    },
                };
                MerchantLm::load(&c.dir, &opts)
            })
            .await
            .map_err(|e| EngineError::Other(e.to_string()))?
            // Named by its key, like every other startup problem.
            .map_err(|e| EngineError::Other(format!("language_model.dir: {e}")))?;
            sink::register_model(&pool, &lm.model().manifest).await?;
            tracing::info!(model = %lm.model().name(), version = %lm.model().version(), "merchant language model in force (mcc_surprise)");
            Some(Arc::new(lm))
        }
    };
    let mut thresholds = ThresholdSet::new(config.thresholds.clone());
    thresholds.version = sink::register_thresholds(&pool, &thresholds).await?;
    tracing::info!(model = %scorer.manifest.name, version = %scorer.manifest.version, thresholds = thresholds.version, "model and thresholds in force");

    let k = &config.kafka;
    until_up("kafka", &shutdown, || async {
        ingest::topics::ensure_topics(
            &ingest::client::base(k),
            &[
                (&k.transactions_topic, k.partitions),
                (&k.labels_topic, 1),
                (&k.dlq_topic, 1),
            ],
        )
        .await
    })
    .await?;
    let provenance = Provenance {
        model_name: scorer.manifest.name.clone(),
        model_version: scorer.manifest.version.clone(),
        model_sha256: scorer.manifest.sha256.clone(),
        threshold_version: thresholds.version,
        feature_names: scorer.manifest.feature_names.clone(),
        source_topic: k.transactions_topic.clone(),
    };
    let dlq = DeadLetterTopic {
        producer: ingest::client::base(k)
            .set("enable.idempotence", "true")
            // Below the group session timeout: a publish waiting on a broker
            // that is down fails (and the batch's transaction, holding its
            // offset rows, rolls back and is retried) before the group
            // rebalances around it.
            .set(
                "message.timeout.ms",
                (k.session_timeout_ms / 2).max(5_000).to_string(),
            )
            .create()?,
        topic: k.dlq_topic.clone(),
    };
    let shared = Arc::new(Shared {
        config: config.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        scorer,
        lm,
        thresholds,
        provenance,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let owner = format!("{}-{}", hostname(), std::process::id());

    // Labels run in a pipeline of their own (and their own consumer group), so
    // transactions waiting for the label watermark never hold labels back.
    let labels_group = format!("{}.labels", k.group_id);
    let tx_revoking = Arc::new(AtomicBool::new(false));
    let loader = TerminalLoader::new(
        pool.clone(),
        ingest::client::base(k),
        watermark::Stream {
            topic: k.transactions_topic.clone(),
            group: k.group_id.clone(),
            event_time: watermark::transaction_time,
            policy: (&config.event_time).into(),
        },
        watermark::Stream {
            topic: k.labels_topic.clone(),
            group: labels_group.clone(),
            event_time: watermark::label_time,
            policy: (&config.event_time).into(),
        },
        config.features.label_delay_days,
        config.features.late_tolerance_secs,
    )?;
    let transactions = spawn_pipeline(
        &shared,
        ingest::Subscription {
            topics: vec![k.transactions_topic.clone()],
            group: k.group_id.clone(),
            labels_topic: k.labels_topic.clone(),
        },
        Some(loader),
        Arc::new(dlq.clone()),
        &owner,
        stop.clone(),
        tx_revoking,
    )?;
    let labels = spawn_pipeline(
        &shared,
        ingest::Subscription {
            topics: vec![k.labels_topic.clone()],
            group: labels_group,
            labels_topic: k.labels_topic.clone(),
        },
        None,
        Arc::new(dlq),
        &owner,
        stop.clone(),
        Arc::new(AtomicBool::new(false)),
    )?;
    health.set_started(true);

    // Run until a signal or until any stage ends on its own (which only an
    // error makes it do: it is logged with its cause and the engine exits
    // non-zero); then stop both pipelines and let them commit what they
    // hold, within the shutdown deadline.
    let (done_tx, mut done_rx) = mpsc::channel(16);
    for (name, sink) in [("transactions", transactions.sink), ("labels", labels.sink)] {
        let done = done_tx.clone();
        tokio::spawn(async move {
            let result = sink
                .await
                .map_err(|e| EngineError::Other(format!("{name} sink task: {e}")))
                .and_then(|r| r);
            let _ = done.send((name, result)).await;
        });
    }
    let mut stage_tasks = Vec::new();
    for (name, stages) in [
        ("transactions", transactions.stages),
        ("labels", labels.stages),
    ] {
        for (stage, task) in stages {
            let done = done_tx.clone();
            let abort = task.abort_handle();
            stage_tasks.push(abort);
            tokio::spawn(async move {
                let failure = match task.await {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => EngineError::Other(format!("{stage} stage: {e}")),
                    Err(e) if e.is_cancelled() => return,
                    Err(e) => EngineError::Other(format!("{stage} stage panicked: {e}")),
                };
                let _ = done.send((name, Err(failure))).await;
            });
        }
    }
    drop(done_tx);
    let failed = [
        transactions.consumer.failed.clone(),
        labels.consumer.failed.clone(),
    ];
    let deadline = Duration::from_millis(config.pipeline.shutdown_deadline_ms);
    let mut stopping: Option<tokio::time::Instant> = None;
    let mut summaries = Vec::new();
    let mut first_error = None;
    loop {
        tokio::select! {
            finished = done_rx.recv() => match finished {
                Some((name, Ok(summary))) => {
                    tracing::info!(pipeline = name, ?summary, "pipeline finished");
                    summaries.push(summary);
                }
                Some((name, Err(e))) => {
                    tracing::error!(pipeline = name, error = %e, "pipeline failed; stopping");
                    first_error.get_or_insert(e);
                }
                None => break,
            },
            _ = watch_consumers(&failed, &shutdown), if stopping.is_none() => {}
            _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now) + deadline), if stopping.is_some() => {
                tracing::warn!(?deadline, "shutdown deadline passed; uncommitted work will be replayed on restart");
                first_error.get_or_insert(EngineError::Other("shutdown deadline passed".into()));
                break;
            }
        }
        if stopping.is_none() {
            stopping = Some(tokio::time::Instant::now());
            stop.store(true, Ordering::Relaxed);
            health.set_started(false);
        }
    }
    stop.store(true, Ordering::Relaxed);
    health.set_started(false);
    for task in &stage_tasks {
        task.abort();
    }
    if first_error.is_none() {
        for c in [transactions.consumer, labels.consumer] {
            let _ = tokio::task::spawn_blocking(move || c.thread.join()).await;
        }
    }
    if let Some(e) = failed.iter().find_map(|f| f.lock().expect("lock").clone()) {
        first_error.get_or_insert(EngineError::Other(format!("consumer failed: {e}")));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(summaries
        .into_iter()
        .fold(RunSummary::default(), |a, b| RunSummary {
            decisions: a.decisions + b.decisions,
            dead_letters: a.dead_letters + b.dead_letters,
            labels: a.labels + b.labels,
            batches: a.batches + b.batches,
        }))
}

/// Retry a start-up step with backoff while its dependency is not up yet
/// (Postgres or Kafka starting after the engine); give up only on shutdown.
async fn until_up<T, F, Fut, E>(
    what: &str,
    shutdown: &CancellationToken,
    mut step: F,
) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Into<EngineError>,
{
    let mut backoff = Duration::from_millis(250);
    loop {
        let e: EngineError = match step().await {
            Ok(v) => return Ok(v),
            Err(e) => e.into(),
        };
        if !e.is_transient() {
            return Err(e);
        }
        tracing::warn!(dependency = what, error = %e, ?backoff, "not reachable yet; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Err(e),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

impl EngineError {
    /// A dependency that may come up: connection errors and Kafka's
    /// not-reachable-yet codes at start-up. Bad credentials, certificates,
    /// schema or data are not.
    fn is_transient(&self) -> bool {
        match self {
            EngineError::Sink(e) => e.is_transient(),
            EngineError::Topics(e) => e.is_transient(),
            EngineError::Kafka(e) => e.rdkafka_error_code().is_none_or(ingest::topics::transient),
            _ => false,
        }
    }
}

/// The dead-letter topic: the original bytes, keyed by their source
/// (`topic/partition/offset`, stable across retries and restarts, so a
/// consumer drops the duplicates a crash may leave), with the reason,
/// source and original key in headers.
#[derive(Clone)]
struct DeadLetterTopic {
    producer: FutureProducer,
    topic: String,
}

impl sink::PublishDeadLetters for DeadLetterTopic {
    fn publish<'a>(
        &'a self,
        dead: &'a [DeadLetter],
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            publish_dead_letters(&self.producer, &self.topic, dead)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// A pipeline task other than the sink, by name.
type Stage = (
    &'static str,
    tokio::task::JoinHandle<Result<(), EngineError>>,
);

/// One consumer feeding featurize → score → sink.
struct Pipeline {
    consumer: ingest::ConsumerHandle,
    stages: Vec<Stage>,
    sink: tokio::task::JoinHandle<Result<RunSummary, EngineError>>,
}

fn spawn_pipeline(
    shared: &Arc<Shared>,
    sub: ingest::Subscription,
    loader: Option<TerminalLoader>,
    dlq: Arc<DeadLetterTopic>,
    owner: &str,
    stop: Arc<AtomicBool>,
    revoking: Arc<AtomicBool>,
) -> Result<Pipeline, EngineError> {
    let (records_tx, records_rx) = mpsc::channel(shared.config.pipeline.channel_capacity_rows);
    let pauses = Arc::new(ingest::PauseRequests::default());
    let (featurized_tx, featurized_rx) = mpsc::channel(2);
    let (scored_tx, scored_rx) = mpsc::channel(2);
    // featurize → (surprise →) score: the language model's stage only when configured.
    let (to_score_rx, surprise) = match &shared.lm {
        None => (featurized_rx, None),
        Some(lm) => {
            let (surprised_tx, surprised_rx) = mpsc::channel(2);
            let stage = tokio::spawn(surprise_stage(
                shared.clone(),
                lm.clone(),
                featurized_rx,
                surprised_tx,
            ));
            (surprised_rx, Some(("surprise", stage)))
        }
    };
    let group = sub.group.clone();
    let consumer = ingest::spawn_consumer(
        &shared.config.kafka,
        sub,
        shared.pool.clone(),
        owner.to_owned(),
        records_tx,
        stop,
        revoking.clone(),
        pauses.clone(),
        ingest::budget(shared.config.pipeline.max_in_flight_bytes),
        shared.metrics.clone(),
        shared.health.clone(),
    )?;
    let mut stages: Vec<Stage> = vec![
        (
            "featurize",
            tokio::spawn(featurize_stage(
                shared.clone(),
                loader,
                revoking,
                pauses,
                records_rx,
                featurized_tx,
            )),
        ),
        (
            "score",
            tokio::spawn(score_stage(shared.clone(), to_score_rx, scored_tx)),
        ),
    ];
    stages.extend(surprise);
    let sink = tokio::spawn(sink_stage(
        shared.clone(),
        group,
        dlq,
        consumer.claims.clone(),
        scored_rx,
    ));
    Ok(Pipeline {
        consumer,
        stages,
        sink,
    })
}

/// Resolves on shutdown, or when a consumer thread reported a failure.
async fn watch_consumers(
    failed: &[Arc<std::sync::Mutex<Option<String>>>],
    shutdown: &CancellationToken,
) {
    loop {
        if failed.iter().any(|f| f.lock().expect("lock").is_some()) {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}

/// Collect records into batches (≤ N rows or ≤ T ms), decode, and featurize.
///
/// Records wait in [`batch::Pending`] per partition; batches are taken oldest
/// first. A batch whose terminal days are not closed yet goes back, and the
/// stage keeps reading (a lagging partition's older records may be what the
/// watermark waits for) until it is ready or `state_wait_ms` has passed.
async fn featurize_stage(
    shared: Arc<Shared>,
    mut loader: Option<TerminalLoader>,
    revoking: Arc<AtomicBool>,
    pauses: Arc<ingest::PauseRequests>,
    mut input: mpsc::Receiver<Ingested>,
    out: mpsc::Sender<Item>,
) -> Result<(), EngineError> {
    let p = &shared.config.pipeline;
    let delay = shared.config.features.label_delay_days;
    let state_wait = Duration::from_millis(p.state_wait_ms);
    let mut cards = CardState::default();
    let mut terminals = TerminalStats::default();
    let mut recent = RecentIds::default();
    let mut pending = batch::Pending::new((&shared.config.event_time).into());
    let mut blocked_since: Option<Instant> = None;
    // From a revocation until its barrier, nothing read is featurized: the
    // partitions' next owner starts from what is committed.
    let mut dropping = false;
    let mut input_open = true;
    loop {
        // Read: wait for work when there is none, then take whatever else
        // arrives within a batch's wait, up to a batch (or, while blocked,
        // the buffer cap).
        let mut barrier = None;
        if input_open {
            let idle = pending.is_empty() && blocked_since.is_none();
            let mut until =
                (!idle).then(|| tokio::time::Instant::now() + Duration::from_millis(20));
            loop {
                let next = match until {
                    None => Ok(input.recv().await),
                    Some(t) => tokio::time::timeout_at(t, input.recv()).await,
                };
                match next {
                    Err(_) => break,
                    Ok(None) => {
                        input_open = false;
                        break;
                    }
                    Ok(Some(Ingested::Revoke { ack })) => {
                        barrier = Some(ack);
                        break;
                    }
                    Ok(Some(Ingested::Assigned {
                        clocks,
                        stream_clock,
                    })) => {
                        pending.restore_stream_clock(stream_clock);
                        for (partition, clock) in clocks {
                            pending.restore_clock(partition, clock);
                        }
                    }
                    Ok(Some(Ingested::Record(r))) => {
                        if !dropping {
                            pending.push(r, event_time::now_ms());
                        }
                        if until.is_none() && !pending.is_empty() {
                            until = Some(
                                tokio::time::Instant::now()
                                    + Duration::from_millis(p.batch_max_wait_ms),
                            );
                        }
                    }
                }
                // While blocked on the watermark there is no row cap: the
                // partitions ahead are paused once each holds half the
                // channel's capacity, which bounds what arrives, and the
                // lagging partition's records, queued in the channel
                // behind theirs, must get through. (With a cap, a blocked
                // stage read one record per watermark check: a livelock
                // seen in the 1M bench when one partition fell behind.)
                if blocked_since.is_none() && pending.len() >= p.batch_max_rows {
                    break;
                }
            }
        } else if pending.is_empty() {
            break;
        } else if blocked_since.is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if revoking.load(Ordering::Relaxed) && !dropping {
            dropping = true;
            pending.clear();
        }
        pauses.set(pending.partitions_over(p.channel_capacity_rows / 2));

        // Featurize every piece that is ready, oldest first.
        while !dropping && !pending.is_empty() {
            let piece = pending.take(p.batch_max_rows, delay);
            let readiness = match (piece.days, loader.as_mut()) {
                (Some((lo, hi)), Some(loader)) => {
                    let force = blocked_since.is_some_and(|t| t.elapsed() >= state_wait);
                    let mut backoff = Backoff::new();
                    loop {
                        match loader.check(&mut terminals, lo, hi, force).await {
                            Ok(r) => break r,
                            Err(e) => backoff.ride_out(&shared, "terminal state", e).await?,
                        }
                    }
                }
                _ => Readiness::Complete,
            };
            if readiness == Readiness::NotYet {
                pending.put_back(piece);
                blocked_since.get_or_insert_with(Instant::now);
                break;
            }
            blocked_since = None;
            if readiness == Readiness::Incomplete {
                shared.metrics.incomplete_state.inc();
            }
            let span = tracing::debug_span!("featurize", rows = piece.rows());
            let work = build_work(
                &shared,
                piece.assemble(),
                readiness == Readiness::Complete,
                &mut cards,
                &mut terminals,
                &mut recent,
            )
            .instrument(span)
            .await?;
            if out.send(Item::Batch(Box::new(work))).await.is_err() {
                return Ok(());
            }
        }

        if let Some(ack) = barrier {
            // Cards of revoked partitions may change under their next owner.
            cards.clear();
            recent.clear();
            pending.reset();
            pauses.set(Default::default());
            dropping = false;
            blocked_since = None;
            if out.send(Item::Barrier(ack)).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// Postgres reads outside the sink (card and terminal state, watermarks)
/// ride out an outage as the sink does: connection-type errors are retried
/// with backoff, readiness says why meanwhile; anything else is the stage's end.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    /// `Ok` after waiting if `e` is worth retrying, else `Err(e)`.
    async fn ride_out(
        &mut self,
        shared: &Shared,
        what: &str,
        e: SinkError,
    ) -> Result<(), EngineError> {
        if !e.is_transient() {
            return Err(e.into());
        }
        shared.health.sink_failed(&format!("reading {what}: {e}"));
        tracing::warn!(error = %e, backoff = ?self.0, "reading {what} failed; retrying");
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
        Ok(())
    }
}

/// The tx_ids of the batches featurized lately, which may not be committed
/// yet (at most a few batches are between featurize and the sink's commit).
#[derive(Default)]
struct RecentIds {
    batches: std::collections::VecDeque<Vec<String>>,
    ids: std::collections::HashSet<String>,
}

impl RecentIds {
    /// More batches than can be in flight between featurize and commit.
    const BATCHES: usize = 16;

    fn remember(&mut self, ids: Vec<String>) {
        self.ids.extend(ids.iter().cloned());
        self.batches.push_back(ids);
        if self.batches.len() > Self::BATCHES {
            for id in self.batches.pop_front().unwrap_or_default() {
                self.ids.remove(&id);
            }
        }
    }

    fn clear(&mut self) {
        self.batches.clear();
        self.ids.clear();
    }
}

/// A transaction whose tx_id is already decided (in Postgres, earlier in
/// flight, or earlier in this batch) is dead-lettered as a duplicate before
/// it reaches card state. Found by the chaos run: duplicates used to be
/// featurized (so they entered the card's memory) and only then refused by
/// the sink, while a restarted engine rebuilds card memory from decisions
/// alone; the card's later features then differed from a fault-free run.
async fn drop_duplicates(
    shared: &Shared,
    work: &mut Work,
    recent: &mut RecentIds,
) -> Result<(), EngineError> {
    let ids: Vec<&str> = work.txs.iter().map(|s| s.tx.tx_id.as_str()).collect();
    let mut backoff = Backoff::new();
    let decided = loop {
        match sink::state::decided_among(&shared.pool, &ids).await {
            Ok(d) => break d,
            Err(e) => backoff.ride_out(shared, "decided tx_ids", e).await?,
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::with_capacity(work.txs.len());
    for s in std::mem::take(&mut work.txs) {
        let id = s.tx.tx_id.as_str();
        if decided.contains(id) || recent.ids.contains(id) || !seen.insert(id.to_owned()) {
            work.dead_letters.push(DeadLetter::duplicate(
                &shared.provenance.source_topic,
                s.partition,
                s.offset,
                &s.tx,
            ));
        } else {
            kept.push(s);
        }
    }
    recent.remember(seen.into_iter().collect());
    work.txs = kept;
    Ok(())
}

/// Decode and featurize one batch whose terminal days are loaded.
async fn build_work(
    shared: &Shared,
    a: batch::Assembled,
    state_complete: bool,
    cards: &mut CardState,
    terminals: &mut TerminalStats,
    recent: &mut RecentIds,
) -> Result<Work, EngineError> {
    let started = Instant::now();
    let rows = (a.txs.len() + a.labels.len() + a.dead_letters.len()) as i64;
    let mut work = Work {
        started,
        txs: a.txs,
        labels: a.labels,
        dead_letters: a.dead_letters,
        offsets: a.offsets,
        features: None,
        state_complete,
        mcc_surprise: None,
        scored: Vec::new(),
    };
    shared.metrics.in_flight.add(rows);
    shared.health.read(rows);
    if work.txs.is_empty() {
        return Ok(work);
    }
    drop_duplicates(shared, &mut work, recent).await?;
    if work.txs.is_empty() {
        return Ok(work);
    }
    // Cards never seen by this process: rebuild their memory from Postgres.
    let mut missing: Vec<String> = work
        .txs
        .iter()
        .map(|s| s.tx.card_id.clone())
        .filter(|c| !cards.contains(c))
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let mut backoff = Backoff::new();
        let rows = loop {
            let retention = features::card_retention_ms();
            match sink::state::load_cards(&shared.pool, &missing, retention).await {
                Ok(rows) => break rows,
                Err(e) => backoff.ride_out(shared, "card state", e).await?,
            }
        };
        let mut by_card: std::collections::HashMap<String, Vec<features::PastTx>> =
            missing.into_iter().map(|c| (c, Vec::new())).collect();
        for (card, tx) in rows {
            by_card.entry(card).or_default().push(tx);
        }
        for (card, txs) in by_card {
            cards.load(card, txs);
        }
    }

    // Polars on the blocking pool; the state moves there and back.
    let txs: Vec<Transaction> = work.txs.iter().map(|s| s.tx.clone()).collect();
    let delay = shared.config.features.label_delay_days;
    let mut state = (std::mem::take(cards), std::mem::take(terminals));
    let (result, returned) = tokio::task::spawn_blocking(move || {
        let r = features::featurize(&txs, &mut state.0, &state.1, delay);
        (r, state)
    })
    .await
    .map_err(|e| EngineError::Other(format!("featurize task: {e}")))?;
    (*cards, *terminals) = returned;
    // Cards idle for longer than any window reload from Postgres if seen again.
    let newest = work
        .txs
        .iter()
        .map(|s| s.tx.ts.timestamp_millis())
        .max()
        .unwrap_or(0);
    if cards.len() > 200_000 {
        cards.evict_idle(newest - features::card_retention_ms());
    }
    work.features = Some(Arc::new(result?));
    shared
        .metrics
        .stage_seconds
        .with_label_values(&["featurize"])
        .observe(started.elapsed().as_secs_f64());
    Ok(work)
}

/// The merchant language model's surprise at each row's MCC, on the blocking
/// pool. Rows are padded to the model's full window, so a value does not
/// depend on how the stream was cut into batches (the crash tests compare
/// stored features byte for byte).
async fn surprise_stage(
    shared: Arc<Shared>,
    lm: Arc<MerchantLm>,
    mut input: mpsc::Receiver<Item>,
    out: mpsc::Sender<Item>,
) -> Result<(), EngineError> {
    while let Some(mut item) = input.recv().await {
        if let Item::Batch(work) = &mut item {
            if let Some(features) = work.features.clone() {
                let t = Instant::now();
                let span = tracing::debug_span!("surprise", rows = features.rows);
                work.mcc_surprise = Some(lm.surprise(features).instrument(span).await?);
                shared
                    .metrics
                    .stage_seconds
                    .with_label_values(&["surprise"])
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        if out.send(item).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Score each batch through the ONNX Runtime session pool.
async fn score_stage(
    shared: Arc<Shared>,
    mut input: mpsc::Receiver<Item>,
    out: mpsc::Sender<Item>,
) -> Result<(), EngineError> {
    while let Some(mut item) = input.recv().await {
        if let Item::Batch(work) = &mut item {
            if let Some(features) = work.features.clone() {
                let t = Instant::now();
                work.scored = shared.scorer.score(features).await?;
                shared
                    .metrics
                    .model_seconds
                    .observe(t.elapsed().as_secs_f64());
                shared
                    .metrics
                    .stage_seconds
                    .with_label_values(&["score"])
                    .observe(t.elapsed().as_secs_f64());
            }
        }
        if out.send(item).await.is_err() {
            break;
        }
    }
    Ok(())
}

/// Decide, then commit each batch in one Postgres transaction (its dead
/// letters published to Kafka just before the commit). Connection errors
/// are retried with backoff until shutdown, with readiness down meanwhile;
/// a value Postgres refuses dead-letters its row and the batch proceeds;
/// any other error stops the engine.
async fn sink_stage(
    shared: Arc<Shared>,
    group: String,
    dlq: Arc<DeadLetterTopic>,
    claims: ingest::Claims,
    mut input: mpsc::Receiver<Item>,
) -> Result<RunSummary, EngineError> {
    let mut summary = RunSummary::default();
    while let Some(item) = input.recv().await {
        let work = match item {
            Item::Barrier(ack) => {
                let _ = ack.send(());
                continue;
            }
            Item::Batch(w) => w,
        };
        let t = Instant::now();
        let batch = decide(&shared, &work);
        let Some(written) = commit(&shared, &group, dlq.as_ref(), &claims, &batch).await? else {
            // Stale: its rows are not committed, and the barrier of the
            // revocation that made it stale follows it.
            shared
                .metrics
                .in_flight
                .sub((work.txs.len() + work.labels.len() + work.dead_letters.len()) as i64);
            continue;
        };
        let m = &shared.metrics;
        for d in &batch.decisions {
            m.decided.with_label_values(&[d.decision.as_str()]).inc();
            if let Some(s) = d.mcc_surprise {
                m.mcc_surprise.observe(f64::from(s));
            }
        }
        for kind in &written.dead_kinds {
            m.dead_letters.with_label_values(&[kind]).inc();
        }
        m.labels.inc_by(written.labels as u64);
        for o in &batch.offsets {
            let partition = o.partition.to_string();
            let labels = [o.topic.as_str(), partition.as_str()];
            if let Some(ts) = o.max_event_ts {
                m.partition_event_time
                    .with_label_values(&labels)
                    .set(ts.timestamp_millis() as f64 / 1000.0);
            }
            m.partition_committed_at
                .with_label_values(&labels)
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
        let rows = work.txs.len() + work.labels.len() + work.dead_letters.len();
        m.in_flight.sub(rows as i64);
        shared
            .health
            .committed(rows as i64, work.state_complete || work.txs.is_empty());
        m.batch_rows.observe(rows as f64);
        m.stage_seconds
            .with_label_values(&["sink"])
            .observe(t.elapsed().as_secs_f64());
        m.stage_seconds
            .with_label_values(&["total"])
            .observe(work.started.elapsed().as_secs_f64());
        summary.decisions += written.decisions as u64;
        summary.dead_letters += written.dead_letters as u64;
        summary.labels += written.labels as u64;
        summary.batches += 1;
        tracing::debug!(
            decisions = written.decisions,
            dead = written.dead_letters,
            labels = written.labels,
            "batch committed"
        );
    }
    Ok(summary)
}

/// One batch's transaction, whatever it takes: retried while Postgres or
/// the DLQ topic is unreachable; written row by row if Postgres refuses a
/// value (those rows become dead letters); an error again in that mode, or
/// any other error, is the engine's end.
async fn commit(
    shared: &Shared,
    group: &str,
    dlq: &DeadLetterTopic,
    claims: &ingest::Claims,
    batch: &SinkBatch,
) -> Result<Option<sink::Written>, EngineError> {
    let mut backoff = Duration::from_millis(100);
    let mut mode = sink::Mode::Bulk;
    loop {
        let attempt =
            sink::write_batch(&shared.pool, group, &shared.provenance, batch, dlq, mode).await;
        let e = match attempt {
            Ok(w) => return Ok(Some(w)),
            Err(e) => e,
        };
        // Fenced by a rebalance this consumer has seen (e.g. its session
        // expired while the broker restarted, and it or another instance
        // claimed the partition again): nothing of the batch landed, and
        // the partition's owner replays it from the committed offset. A
        // fence on a partition still held under the batch's own claim means
        // another instance took it unseen: this instance's state is wrong.
        // Every partition of the batch must be stale (a revocation takes
        // them all: the assignment is eager), or a partition still held
        // would lose the batch's rows under later commits.
        let stale = || {
            batch
                .offsets
                .iter()
                .all(|o| claims.is_stale(&o.topic, o.partition, o.epoch))
        };
        if matches!(e, SinkError::Fenced { .. }) && stale() {
            shared.metrics.stale_batches.inc();
            tracing::info!(error = %e, rows = batch.decisions.len(), "batch of partitions claimed again since dropped; their owners replay it");
            return Ok(None);
        }
        match (e.failure(), mode) {
            (Failure::Retry, _) => {
                shared.metrics.sink_retries.inc();
                shared.health.sink_failed(&e.to_string());
                tracing::warn!(error = %e, ?backoff, "sink transaction failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            (Failure::Data, sink::Mode::Bulk) => {
                tracing::warn!(error = %e, rows = batch.decisions.len(), "postgres refused a value; writing the batch row by row");
                mode = sink::Mode::RowByRow;
            }
            _ => {
                tracing::error!(error = %e, "sink failed; stopping");
                return Err(e.into());
            }
        }
    }
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

/// Larger payloads go to the Kafka DLQ truncated (the `dead_letters` row
/// keeps them whole), so one oversized record cannot block the stream.
const DLQ_MAX_PAYLOAD: usize = 900 * 1024;

/// The DLQ record key: the record's source, the same every time it is
/// published, so duplicates left by a crash or a retried batch are easy to drop.
pub fn dead_letter_key(d: &DeadLetter) -> String {
    format!("{}/{}/{}", d.topic, d.partition, d.offset)
}

/// The DLQ topic gets the original bytes with the reason and source in headers.
async fn publish_dead_letters(
    dlq: &FutureProducer,
    topic: &str,
    dead: &[DeadLetter],
) -> Result<(), EngineError> {
    let keys: Vec<String> = dead.iter().map(dead_letter_key).collect();
    let sends = dead.iter().zip(&keys).map(|(d, key)| {
        let payload = d.payload.as_deref().unwrap_or_default();
        let partition = d.partition.to_string();
        let offset = d.offset.to_string();
        let original_len = d.truncated_from.unwrap_or(payload.len()).to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "source_topic",
                value: Some(d.topic.as_str()),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "reason",
                value: Some(d.reason.as_str()),
            });
        if payload.len() > DLQ_MAX_PAYLOAD || d.truncated_from.is_some() {
            headers = headers.insert(Header {
                key: "truncated_from",
                value: Some(original_len.as_str()),
            });
        }
        if let Some(k) = d.key.as_deref() {
            headers = headers.insert(Header {
                key: "source_key",
                value: Some(k),
            });
        }
        let record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
            .key(key.as_bytes())
            .payload(&payload[..payload.len().min(DLQ_MAX_PAYLOAD)])
            .headers(headers);
        dlq.send(record, Duration::from_secs(30))
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| EngineError::Kafka(e))?;
    }
    Ok(())
}
