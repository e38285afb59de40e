//! Producing a simulated stream to Kafka: transactions keyed by card (so each
//! card's history stays in one partition, in order) and labels keyed by tx_id,
//! interleaved in event time as a live system would see them.

use super::SimEvent;
use anyhow::{Context, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Produced {
    pub transactions: u64,
    pub labels: u64,
    pub elapsed: Duration,
}

pub struct Target<'a> {
    /// From [`crate::ingest::client`]: brokers and security settings.
    pub client: ClientConfig,
    pub transactions_topic: &'a str,
    pub labels_topic: &'a str,
    /// Transactions per second; `None` = as fast as the broker takes them.
    pub rate: Option<f64>,
    pub progress: bool,
}

pub fn produce(
    events: impl Iterator<Item = SimEvent>,
    expected: Option<u64>,
    t: &Target<'_>,
) -> Result<Produced> {
    let producer: ThreadedProducer<DefaultProducerContext> = t
        .client
        .clone()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .context("create Kafka producer")?;
    let bar = if t.progress {
        crate::progress::bar(expected.unwrap_or(0), "transactions")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut out = Produced::default();
    for event in events {
        let (topic, key, payload) = match &event {
            SimEvent::Transaction { tx, .. } => {
                (t.transactions_topic, tx.card_id.clone(), tx.encode())
            }
            SimEvent::Label(l) => (t.labels_topic, l.tx_id.clone(), l.encode()),
        };
        let mut record = BaseRecord::to(topic).key(key.as_bytes()).payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(e).context("produce"),
            }
        }
        match event {
            SimEvent::Transaction { .. } => {
                out.transactions += 1;
                bar.inc(1);
                if let Some(rate) = t.rate {
                    let due = Duration::from_secs_f64(out.transactions as f64 / rate);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            SimEvent::Label(_) => out.labels += 1,
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flush producer")?;
    bar.finish_and_clear();
    out.elapsed = started.elapsed();
    Ok(out)
}
