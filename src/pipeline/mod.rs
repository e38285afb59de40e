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
mod commit;
mod decide;
pub mod event_time;
mod featurize;
mod models;
mod reload;
mod score;
mod stage;
pub mod watermark;

use crate::config::Config;
use crate::decision::Policy;
use crate::health::Health;
use crate::ingest::{self, DeadLetterTopic};
use crate::metrics::Metrics;
use crate::models::lm::MerchantLm;
use crate::sink::{self, Provenance};
use stage::Shared;
pub use stage::{EngineError, RunSummary};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use watermark::TerminalLoader;

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
    let models = models::Models::open(&config, &pool, None)
        .await
        .map_err(EngineError::Other)?;
    let feature_names = models.champion.manifest.feature_names.clone();
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
    let mut policy =
        Policy::compile(&config.thresholds, &config.rules, &feature_names).map_err(|problems| {
            EngineError::Other(format!(
                "{} problem(s) in [thresholds] and [rules]:\n  {}",
                problems.len(),
                crate::config::listed(&problems, "\n  ")
            ))
        })?;
    policy.version = sink::register_thresholds(&pool, &policy).await?;
    let owner = format!("{}-{}", hostname(), std::process::id());
    sink::record_policy_change(
        &pool,
        policy.version,
        policy.changed_by(),
        &models.describe(),
        &owner,
        "start",
    )
    .await?;
    metrics.policy_version.set(policy.version.into());
    tracing::info!(models = %models.describe(), thresholds = policy.version, rules = policy.rules.rules().len(), "models, thresholds and rules in force");
    let (policy_tx, policy_rx) = tokio::sync::watch::channel(Arc::new(policy));

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
        source_topic: k.transactions_topic.clone(),
    };
    let (models_tx, models_rx) = tokio::sync::watch::channel(Arc::new(models));
    let dlq = ingest::DeadLetterTopic::new(k)?;
    let shared = Arc::new(Shared {
        config: config.clone(),
        pool: pool.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        models: models_rx,
        lm,
        policy: policy_rx,
        provenance,
    });
    // Thresholds, rules and models follow the config file while the engine runs.
    let reloader = config.path.clone().map(|path| {
        let reloader = reload::Reloader::new(&shared, path, &owner, policy_tx, models_tx);
        tokio::spawn(reloader.run())
    });
    let stop = Arc::new(AtomicBool::new(false));

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
    if let Some(r) = &reloader {
        r.abort();
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
    let (decided_tx, decided_rx) = mpsc::channel(2);
    // featurize → (surprise →) score → decide → commit: the language model's
    // stage only when configured.
    let (to_score_rx, surprise) = match &shared.lm {
        None => (featurized_rx, None),
        Some(lm) => {
            let (surprised_tx, surprised_rx) = mpsc::channel(2);
            let stage = tokio::spawn(score::surprise_stage(
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
            tokio::spawn(featurize::featurize_stage(
                shared.clone(),
                loader,
                revoking,
                pauses,
                stage::InFlight::new(shared.config.pipeline.max_batches_in_flight),
                records_rx,
                featurized_tx,
            )),
        ),
        (
            "score",
            tokio::spawn(score::score_stage(shared.clone(), to_score_rx, scored_tx)),
        ),
        (
            "decide",
            tokio::spawn(decide::decide_stage(shared.clone(), scored_rx, decided_tx)),
        ),
    ];
    stages.extend(surprise);
    let sink = tokio::spawn(commit::sink_stage(
        shared.clone(),
        group,
        dlq,
        consumer.claims.clone(),
        decided_rx,
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
