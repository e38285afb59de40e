//! The consumer thread and its rebalance callback.

use super::{Ingested, Record, Stream, OVERSIZE_PREFIX_BYTES};
use crate::config::KafkaConfig;
use crate::event::MAX_RECORD_BYTES;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::sink;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a revocation waits for in-flight batches before letting the new
/// owner go ahead (the epoch fence keeps it correct even then).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a claim rides out a Postgres outage inside the rebalance
/// callback: well inside librdkafka's `max.poll.interval.ms` (5 minutes),
/// so the consumer keeps its group membership meanwhile.
const CLAIM_PATIENCE: Duration = Duration::from_secs(120);

/// The rebalance protocol: on revoke, drain the pipeline; on assign, claim
/// the partitions in Postgres (bumping their epochs) and start each at its
/// committed offset.
struct Rebalancer {
    pool: PgPool,
    runtime: tokio::runtime::Handle,
    group: String,
    owner: String,
    out: mpsc::Sender<Ingested>,
    /// (topic, partition) → epoch, read by the poll loop.
    epochs: Arc<Mutex<HashMap<(String, i32), i64>>>,
    failed: Arc<Mutex<Option<String>>>,
    /// Raised from the start of a revocation until the next assignment, so
    /// the pipeline stops waiting on watermarks and lets the drain finish.
    revoking: Arc<AtomicBool>,
    /// Partitions paused by the poll loop; a new assignment starts unpaused.
    paused: Arc<Mutex<BTreeSet<i32>>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl ClientContext for Rebalancer {
    /// librdkafka's statistics: consumer lag per partition, and whether any
    /// broker is up (readiness).
    fn stats(&self, stats: rdkafka::Statistics) {
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        self.health.brokers_up(up);
        for (topic, t) in &stats.topics {
            for (p, s) in &t.partitions {
                if *p >= 0 && s.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[topic.as_str(), &p.to_string()])
                        .set(s.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for Rebalancer {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.revoking.store(false, Ordering::Relaxed);
                if let Err(e) = self.assign(consumer, tpl) {
                    tracing::error!(error = %e, "cannot claim assigned partitions");
                    *self.failed.lock().expect("lock") = Some(e.to_string());
                    let _ = consumer.unassign();
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoking.store(true, Ordering::Relaxed);
                self.paused.lock().expect("lock").clear();
                // The claims go first: a batch of these partitions that is
                // fenced while the drain waits (the session expired, e.g.
                // during a broker restart, and another instance has claimed
                // them already) is stale, not a sign this instance is lost.
                // (Seen in the chaos run: the commit was fenced 1 s before the
                // drain's timeout, and the instance exited.)
                self.epochs.lock().expect("lock").clear();
                self.drain();
                let _ = consumer.unassign();
                tracing::info!(partitions = tpl.count(), "partitions revoked");
            }
            other => tracing::error!(?other, "rebalance error"),
        }
    }
}

impl Rebalancer {
    fn drain(&self) {
        let (ack, done) = std_mpsc::channel();
        if self.out.blocking_send(Ingested::Revoke { ack }).is_ok()
            && done.recv_timeout(DRAIN_TIMEOUT).is_err()
        {
            tracing::warn!("in-flight batches not drained in time; their commits will be fenced");
        }
    }

    /// A Postgres call from the rebalance callback, retried with backoff
    /// while Postgres is unreachable (up to [`CLAIM_PATIENCE`]), so a
    /// rebalance during an outage waits for it instead of stopping the consumer.
    fn patiently<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, sink::SinkError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, sink::SinkError>>,
    {
        let deadline = std::time::Instant::now() + CLAIM_PATIENCE;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.runtime.block_on(call()) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && std::time::Instant::now() + backoff < deadline => {
                    self.health.sink_failed(&format!("{what}: {e}"));
                    tracing::warn!(error = %e, ?backoff, "{what} failed; retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn assign(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> anyhow::Result<()> {
        let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
        for e in tpl.elements() {
            by_topic
                .entry(e.topic().to_owned())
                .or_default()
                .push(e.partition());
        }
        let mut epochs = HashMap::new();
        let mut clocks = Vec::new();
        let mut stream_clock = None;
        for (topic, partitions) in &by_topic {
            let claims = self.patiently("claiming partitions", || {
                sink::claim_partitions(&self.pool, &self.group, topic, partitions, &self.owner)
            })?;
            stream_clock = stream_clock.max(self.patiently("reading the stream clock", || {
                sink::stream_clock(&self.pool, &self.group, topic)
            })?);
            for c in claims {
                let offset = c.next_offset.map_or(Offset::Beginning, Offset::Offset);
                tpl.set_partition_offset(topic, c.partition, offset)?;
                epochs.insert((topic.clone(), c.partition), c.epoch);
                clocks.push((c.partition, c.clock_ms));
                tracing::info!(topic = %topic, partition = c.partition, ?offset, epoch = c.epoch, "partition claimed");
            }
        }
        *self.epochs.lock().expect("lock") = epochs;
        // Before any record of the new assignment: the pipeline judges event
        // times against the clocks committed with the offsets.
        if self
            .out
            .blocking_send(Ingested::Assigned {
                clocks,
                stream_clock,
            })
            .is_err()
        {
            anyhow::bail!("the pipeline is gone");
        }
        consumer.assign(tpl)?;
        // librdkafka keeps a partition's pause flag across assignments; a
        // partition paused under the old assignment must start flowing again.
        consumer.resume(tpl)?;
        Ok(())
    }
}

pub struct ConsumerHandle {
    pub thread: std::thread::JoinHandle<()>,
    /// Set when the consumer stopped because of an error.
    pub failed: Arc<Mutex<Option<String>>>,
    /// What this consumer holds now.
    pub claims: Claims,
}

/// The partitions a consumer holds now, with the epoch of its claim on each.
#[derive(Clone, Default)]
pub struct Claims(Arc<Mutex<HashMap<(String, i32), i64>>>);

impl Claims {
    /// A batch claimed under `epoch` is stale when this consumer no longer
    /// holds the partition, or holds it under a newer claim of its own (a
    /// rebalance came between): its partition's owner replays it from the
    /// committed offset.
    pub fn is_stale(&self, topic: &str, partition: i32, epoch: i64) -> bool {
        self.0
            .lock()
            .expect("lock")
            .get(&(topic.to_owned(), partition))
            .is_none_or(|held| *held > epoch)
    }
}

/// Partitions the pipeline wants paused: it holds more of their records than
/// it can use until a lagging partition catches up (event-time alignment).
/// The poll loop applies changes; pausing is flow control, never loss: a
/// resumed partition continues after the last record delivered.
#[derive(Debug, Default)]
pub struct PauseRequests {
    wanted: Mutex<BTreeSet<i32>>,
}

impl PauseRequests {
    pub fn set(&self, partitions: BTreeSet<i32>) {
        *self.wanted.lock().expect("lock") = partitions;
    }

    fn wanted(&self) -> BTreeSet<i32> {
        self.wanted.lock().expect("lock").clone()
    }
}

/// What one consumer reads, and as which group.
pub struct Subscription {
    pub topics: Vec<String>,
    pub group: String,
    /// Records of this topic are labels; all others are transactions.
    pub labels_topic: String,
}

/// Start the consumer thread. It stops when `stop` is set, dropping its
/// sender so the pipeline sees the end of input.
#[allow(clippy::too_many_arguments)]
pub fn spawn_consumer(
    cfg: &KafkaConfig,
    sub: Subscription,
    pool: PgPool,
    owner: String,
    out: mpsc::Sender<Ingested>,
    stop: Arc<AtomicBool>,
    revoking: Arc<AtomicBool>,
    pauses: Arc<PauseRequests>,
    budget: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> KafkaResult<ConsumerHandle> {
    let failed = Arc::new(Mutex::new(None));
    let epochs = Arc::new(Mutex::new(HashMap::new()));
    let paused = Arc::new(Mutex::new(BTreeSet::new()));
    let context = Rebalancer {
        pool,
        runtime: tokio::runtime::Handle::current(),
        group: sub.group.clone(),
        owner,
        out: out.clone(),
        epochs: epochs.clone(),
        failed: failed.clone(),
        revoking,
        paused: paused.clone(),
        metrics: metrics.clone(),
        health,
    };
    let mut client = super::client::base(cfg);
    client
        .set("group.id", &sub.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", "5000")
        // Small fetches per partition keep the partitions of one consumer
        // close in event time (watermarks wait for the slowest).
        .set("max.partition.fetch.bytes", "32768");
    let consumer: BaseConsumer<Rebalancer> = client.create_with_context(context)?;
    let topics: Vec<&str> = sub.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let labels_topic = sub.labels_topic.clone();
    let thread_failed = failed.clone();
    let claims = Claims(epochs.clone());
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            let transactions_topic = sub.topics.iter().find(|t| **t != labels_topic).cloned();
            while !stop.load(Ordering::Relaxed) {
                if let Some(topic) = &transactions_topic {
                    apply_pauses(&consumer, topic, &pauses, &paused, &epochs);
                }
                let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let msg = match polled {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "kafka poll error");
                        continue;
                    }
                };
                let topic = msg.topic().to_owned();
                let epoch = epochs
                    .lock()
                    .expect("lock")
                    .get(&(topic.clone(), msg.partition()))
                    .copied();
                let Some(epoch) = epoch else { continue };
                let stream = if topic == labels_topic {
                    Stream::Labels
                } else {
                    Stream::Transactions
                };
                metrics.consumed.with_label_values(&[topic.as_str()]).inc();
                // An oversized value is refused before it is copied: only
                // its prefix travels, for the dead letter.
                let (payload, truncated_from) = match msg.payload() {
                    Some(p) if p.len() > MAX_RECORD_BYTES => {
                        (Some(p[..OVERSIZE_PREFIX_BYTES].to_vec()), Some(p.len()))
                    }
                    p => (p.map(<[u8]>::to_vec), None),
                };
                let key = msg
                    .key()
                    .map(|k| k[..k.len().min(OVERSIZE_PREFIX_BYTES)].to_vec());
                let size = payload.as_ref().map_or(0, Vec::len) + key.as_ref().map_or(0, Vec::len);
                let Some(budget) = take_budget(&budget, size, &stop) else {
                    break;
                };
                let record = Record {
                    stream,
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key,
                    payload,
                    truncated_from,
                    budget: Some(budget),
                    timestamp_ms: msg.timestamp().to_millis(),
                    topic,
                    epoch,
                };
                if out.blocking_send(Ingested::Record(record)).is_err() {
                    break; // the pipeline is gone
                }
            }
            drop(out);
            // Leaving the group revokes our partitions; the pipeline is
            // already finishing, so the drain finds a closed channel.
            consumer.unsubscribe();
            if let Some(e) = thread_failed.lock().expect("lock").as_ref() {
                tracing::error!(error = %e, "consumer stopped after a failure");
            }
        })
        .expect("spawn consumer thread");
    Ok(ConsumerHandle {
        thread,
        failed,
        claims,
    })
}

/// Wait for `bytes` of the in-flight budget (see [`budget`]); `None` once
/// the consumer is stopping.
fn take_budget(
    budget: &Arc<Semaphore>,
    bytes: usize,
    stop: &AtomicBool,
) -> Option<OwnedSemaphorePermit> {
    let permits = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
    loop {
        match budget.clone().try_acquire_many_owned(permits) {
            Ok(p) => return Some(p),
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The in-flight byte budget of one consumer: raw record bytes read but not
/// yet decoded. A record never needs more than the whole budget.
pub fn budget(max_bytes: usize) -> Arc<Semaphore> {
    let floor = MAX_RECORD_BYTES * 2;
    Arc::new(Semaphore::new(max_bytes.max(floor)))
}

/// Bring librdkafka's paused set in line with what the pipeline asks for,
/// for partitions this consumer currently owns.
fn apply_pauses(
    consumer: &BaseConsumer<Rebalancer>,
    topic: &str,
    requests: &PauseRequests,
    paused: &Mutex<BTreeSet<i32>>,
    epochs: &Mutex<HashMap<(String, i32), i64>>,
) {
    let owned: BTreeSet<i32> = epochs
        .lock()
        .expect("lock")
        .keys()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| *p)
        .collect();
    let wanted: BTreeSet<i32> = requests.wanted().intersection(&owned).copied().collect();
    let mut paused = paused.lock().expect("lock");
    let list = |ps: Vec<i32>| {
        let mut tpl = TopicPartitionList::new();
        for p in ps {
            tpl.add_partition(topic, p);
        }
        tpl
    };
    let pause: Vec<i32> = wanted.difference(&paused).copied().collect();
    let resume: Vec<i32> = paused
        .intersection(&owned)
        .filter(|p| !wanted.contains(p))
        .copied()
        .collect();
    if !pause.is_empty() {
        match consumer.pause(&list(pause.clone())) {
            Ok(()) => paused.extend(pause),
            Err(e) => tracing::warn!(error = %e, "cannot pause partitions"),
        }
    }
    if !resume.is_empty() {
        match consumer.resume(&list(resume.clone())) {
            Ok(()) => resume.iter().for_each(|p| {
                paused.remove(p);
            }),
            Err(e) => tracing::warn!(error = %e, "cannot resume partitions"),
        }
    }
    paused.retain(|p| owned.contains(p));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_stale_once_its_claim_is_gone_or_superseded() {
        let claims = Claims::default();
        assert!(claims.is_stale("t", 0, 3), "not held at all");
        claims.0.lock().unwrap().insert(("t".into(), 0), 3);
        assert!(
            !claims.is_stale("t", 0, 3),
            "held under the batch's own claim"
        );
        assert!(claims.is_stale("t", 0, 2), "claimed again since");
        assert!(claims.is_stale("t", 1, 3), "another partition");
        assert!(claims.is_stale("u", 0, 3), "another topic");
    }
}
