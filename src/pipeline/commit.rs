//! The commit stage: each decided batch in one Postgres transaction with
//! its offsets (exactly-once; see `sink::write_batch`), its dead letters
//! published to Kafka just before the commit.

use super::stage::{Backoff, EngineError, Item, RunSummary, Shared};
use crate::ingest::{self, DeadLetterTopic};
use crate::sink::{self, Failure, SinkBatch, SinkError};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Commit each decided batch in one Postgres transaction (its dead
/// letters published to Kafka just before the commit). Connection errors
/// are retried with backoff until shutdown, with readiness down meanwhile;
/// a value Postgres refuses dead-letters its row and the batch proceeds;
/// any other error stops the engine.
pub(super) async fn sink_stage(
    shared: Arc<Shared>,
    group: String,
    dlq: Arc<DeadLetterTopic>,
    claims: ingest::Claims,
    mut input: mpsc::Receiver<Item>,
) -> Result<RunSummary, EngineError> {
    let mut summary = RunSummary::default();
    let mut partitions = sink::partitions::Partitions::default();
    while let Some(item) = input.recv().await {
        let work = match item {
            Item::Barrier(ack) => {
                let _ = ack.send(());
                continue;
            }
            Item::Batch(w) => w,
        };
        let t = Instant::now();
        let mut work = work;
        // The decide stage moved the batch's contents into these rows.
        let batch = work.decided.take().expect("the decide stage ran");
        let rows = batch.rows();
        if !partitions.ensure(&shared.pool, &batch).await {
            shared.metrics.partition_failures.inc();
        }
        let Some(written) = commit(&shared, &group, dlq.as_ref(), &claims, &batch).await? else {
            // Stale: its rows are not committed, and the barrier of the
            // revocation that made it stale follows it.
            shared.metrics.in_flight.sub(rows);
            shared.health.dropped(rows);
            continue;
        };
        let m = &shared.metrics;
        for d in &batch.decisions {
            m.decided.with_label_values(&[d.decision.as_str()]).inc();
            m.scores.observe(f64::from(d.score));
            if let Some(s) = d.mcc_surprise {
                m.mcc_surprise.observe(f64::from(s));
            }
        }
        m.record_ages(
            "commit",
            batch
                .decisions
                .iter()
                .filter_map(|d| d.kafka_ts.map(|t| t.timestamp_millis())),
        );
        for kind in &written.dead_kinds {
            m.dead_letters.with_label_values(&[kind]).inc();
        }
        m.labels.inc_by(written.labels as u64);
        if written.copy_refused {
            m.sink_copy_refused.inc();
        }
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
        m.in_flight.sub(rows);
        shared
            .health
            .committed(rows, work.state_complete || batch.decisions.is_empty());
        m.batch_rows.observe(rows as f64);
        m.stage_took("sink", t);
        m.stage_took("total", work.started);
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
    let mut backoff = Backoff::new();
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
                backoff.ride_out(shared, "writing the batch", e).await?;
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
