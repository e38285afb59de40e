//! The consumer thread and its rebalance callback.

use super::{Ingested, Record, Stream};
use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::sink;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a revocation waits for in-flight batches before letting the new
/// owner go ahead (the epoch fence keeps it correct even then).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

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
}

impl ClientContext for Rebalancer {}

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
                self.drain();
                self.epochs.lock().expect("lock").clear();
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
        for (topic, partitions) in &by_topic {
            let claims = self.runtime.block_on(sink::claim_partitions(
                &self.pool,
                &self.group,
                topic,
                partitions,
                &self.owner,
            ))?;
            for c in claims {
                let offset = c.next_offset.map_or(Offset::Beginning, Offset::Offset);
                tpl.set_partition_offset(topic, c.partition, offset)?;
                epochs.insert((topic.clone(), c.partition), c.epoch);
                tracing::info!(topic = %topic, partition = c.partition, ?offset, epoch = c.epoch, "partition claimed");
            }
        }
        *self.epochs.lock().expect("lock") = epochs;
        consumer.assign(tpl)?;
        Ok(())
    }
}

pub struct ConsumerHandle {
    pub thread: std::thread::JoinHandle<()>,
    /// Set when the consumer stopped because of an error.
    pub failed: Arc<Mutex<Option<String>>>,
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
    metrics: Arc<Metrics>,
) -> KafkaResult<ConsumerHandle> {
    let failed = Arc::new(Mutex::new(None));
    let epochs = Arc::new(Mutex::new(HashMap::new()));
    let context = Rebalancer {
        pool,
        runtime: tokio::runtime::Handle::current(),
        group: sub.group.clone(),
        owner,
        out: out.clone(),
        epochs: epochs.clone(),
        failed: failed.clone(),
        revoking,
    };
    let mut client = ClientConfig::new();
    for (k, v) in &cfg.properties {
        client.set(k, v.expose());
    }
    client
        .set("bootstrap.servers", &cfg.brokers)
        .set("group.id", &sub.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", cfg.session_timeout_ms.to_string())
        .set("partition.assignment.strategy", "range")
        // Small fetches per partition keep the partitions of one consumer
        // close in event time (watermarks wait for the slowest).
        .set("max.partition.fetch.bytes", "32768");
    let consumer: BaseConsumer<Rebalancer> = client.create_with_context(context)?;
    let topics: Vec<&str> = sub.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let labels_topic = sub.labels_topic;
    let thread_failed = failed.clone();
    let thread = std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
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
                let record = Record {
                    stream,
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key().map(<[u8]>::to_vec),
                    payload: msg.payload().map(<[u8]>::to_vec),
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
    Ok(ConsumerHandle { thread, failed })
}
