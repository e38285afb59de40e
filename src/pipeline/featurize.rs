//! The featurize stage: records become batches (decoded and validated on
//! arrival, see [`super::batch`]), wait for the terminal/label watermark
//! when they need it, lose their duplicate tx_ids, and are featurized with
//! polars against the cards' and terminals' state.

use super::stage::{Backoff, EngineError, InFlight, Item, Shared, Work};
use super::watermark::{Readiness, TerminalLoader};
use super::{batch, event_time};
use crate::features::{self, CardState, TerminalStats};
use crate::ingest::{self, Ingested};
use crate::sink::{self, DeadLetter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::Instrument;

/// How often a stage holding an open batch looks whether the next stage
/// has freed up.
const DOWNSTREAM_TICK: Duration = Duration::from_millis(1);

/// Collect records into batches (adaptively: see the read below; ≤ N rows,
/// ≤ T ms), decode, and featurize. At most `in_flight`'s places of batches
/// are between here and their commit.
///
/// Records wait in [`batch::Pending`] per partition; batches are taken oldest
/// first. A batch whose terminal days are not closed yet goes back, and the
/// stage keeps reading (a lagging partition's older records may be what the
/// watermark waits for) until it is ready or `state_wait_ms` has passed.
pub(super) async fn featurize_stage(
    shared: Arc<Shared>,
    mut loader: Option<TerminalLoader>,
    revoking: Arc<AtomicBool>,
    pauses: Arc<ingest::PauseRequests>,
    in_flight: InFlight,
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
        // The consumer pauses the partitions holding more than half the
        // buffer, so a lagging partition's records can come through. This
        // must reflect what is held *now*, before any wait for input: with
        // every partition paused from before the last featurization, an
        // idle stage would wait forever (found by the 1M chaos run's
        // fault-free baseline, frozen at 547k records).
        pauses.set(pending.partitions_over(p.channel_capacity_rows / 2));
        // Read: wait for work when there is none, then close the batch as
        // soon as the next stage has nothing queued, fewer than
        // `max_batches_in_flight` batches are between here and their
        // commit, and nothing more is waiting in the channel (adaptive
        // micro-batching: at low load a batch is what arrived meanwhile, so
        // latency is the stages' own time; under load the stages are busy,
        // batches grow and each stage's per-batch cost is shared by more
        // rows), at a full batch, or `batch_max_wait_ms` after its first
        // record. Without the in-flight bound, small batches queued in
        // front of the sink at 5k tx/s (its cost is mostly per batch) and
        // waited there longer than all the stages' work together. While
        // blocked on the watermark: read for up to 20 ms, without a row cap
        // (the pauses bound it).
        let mut barrier = None;
        if input_open {
            let idle = pending.is_empty() && blocked_since.is_none();
            let mut until =
                (!idle).then(|| tokio::time::Instant::now() + Duration::from_millis(20));
            loop {
                let open = blocked_since.is_none() && !pending.is_empty();
                let downstream_free = out.capacity() == out.max_capacity() && in_flight.free();
                if open && downstream_free && input.is_empty() {
                    break;
                }
                // With a batch open, look again at the next stage every
                // tick: it may free up without any record arriving.
                let wake = until.map(|t| match open {
                    true => t.min(tokio::time::Instant::now() + DOWNSTREAM_TICK),
                    false => t,
                });
                let next = match wake {
                    None => Ok(input.recv().await),
                    Some(t) => tokio::time::timeout_at(t, input.recv()).await,
                };
                match next {
                    Err(_) if until.is_some_and(|t| tokio::time::Instant::now() >= t) => break,
                    Err(_) => continue,
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
                    let started = Instant::now();
                    let force = blocked_since.is_some_and(|t| t.elapsed() >= state_wait);
                    let mut backoff = Backoff::new();
                    let readiness = loop {
                        match loader.check(&mut terminals, lo, hi, force).await {
                            Ok(r) => break r,
                            Err(e) => {
                                backoff
                                    .ride_out(&shared, "reading terminal state", e)
                                    .await?
                            }
                        }
                    };
                    shared.metrics.stage_took("terminal_state", started);
                    readiness
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
            let mut work = build_work(
                &shared,
                piece.assemble(),
                readiness == Readiness::Complete,
                &mut cards,
                &mut terminals,
                &mut recent,
            )
            .instrument(span)
            .await?;
            // A full or timed-out batch is featurized without a free place
            // (under load this stage works ahead) and waits for one here.
            work._in_flight = Some(in_flight.take().await);
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
            Err(e) => {
                backoff
                    .ride_out(shared, "reading decided tx_ids", e)
                    .await?
            }
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
    let mut work = Work {
        started,
        _in_flight: None,
        txs: a.txs,
        labels: a.labels,
        dead_letters: a.dead_letters,
        offsets: a.offsets,
        features: None,
        state_complete,
        mcc_surprise: None,
        scored: Vec::new(),
        models: None,
        shadow_scored: Vec::new(),
        decided: None,
    };
    shared.metrics.in_flight.add(work.rows());
    shared
        .metrics
        .record_ages("featurize", work.txs.iter().filter_map(|s| s.kafka_ts_ms));
    shared.health.read(work.rows());
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
        .filter(|s| !cards.contains(&s.tx.card_id))
        .map(|s| s.tx.card_id.clone())
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        let mut backoff = Backoff::new();
        let rows = loop {
            let retention = features::card_retention_ms();
            match sink::state::load_cards(&shared.pool, &missing, retention).await {
                Ok(rows) => break rows,
                Err(e) => backoff.ride_out(shared, "reading card state", e).await?,
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

    // Polars on the blocking pool; the batch and the state move there and back.
    let txs = std::mem::take(&mut work.txs);
    let delay = shared.config.features.label_delay_days;
    let mut state = (std::mem::take(cards), std::mem::take(terminals));
    let (result, txs, returned) = tokio::task::spawn_blocking(move || {
        let r = features::featurize(&txs, &mut state.0, &state.1, delay);
        (r, txs, state)
    })
    .await
    .map_err(|e| EngineError::Other(format!("featurize task: {e}")))?;
    work.txs = txs;
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
    shared.metrics.stage_took("featurize", started);
    Ok(work)
}
