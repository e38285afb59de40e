//! The dead-letter topic (`kafka.dlq_topic`): what the pipeline refused,
//! published by the sink inside the batch's transaction, before it commits.

use crate::config::KafkaConfig;
use crate::sink::{self, DeadLetter};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::time::Duration;

/// The dead-letter topic: the original bytes, keyed by their source
/// (`topic/partition/offset`, stable across retries and restarts, so a
/// consumer drops the duplicates a crash may leave), with the reason,
/// source and original key in headers.
#[derive(Clone)]
pub struct DeadLetterTopic {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetterTopic {
    /// An idempotent producer to `kafka.dlq_topic`, built like every other client.
    pub fn new(k: &KafkaConfig) -> KafkaResult<Self> {
        Ok(DeadLetterTopic {
            producer: super::client::base(k)
                .set("enable.idempotence", "true")
                // Below the group session timeout: a publish waiting on a
                // broker that is down fails (and the batch's transaction,
                // holding its offset rows, rolls back and is retried) before
                // the group rebalances around it.
                .set(
                    "message.timeout.ms",
                    (k.session_timeout_ms / 2).max(5_000).to_string(),
                )
                .create()?,
            topic: k.dlq_topic.clone(),
        })
    }
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

/// Larger payloads go to the Kafka DLQ truncated (the `dead_letters` row
/// keeps them whole), so one oversized record cannot block the stream.
const DLQ_MAX_PAYLOAD: usize = 900 * 1024;

/// The DLQ record key: the record's source, the same every time it is
/// published, so duplicates left by a crash or a retried batch are easy to drop.
fn dead_letter_key(d: &DeadLetter) -> String {
    format!("{}/{}/{}", d.topic, d.partition, d.offset)
}

/// The DLQ topic gets the original bytes with the reason and source in headers.
async fn publish_dead_letters(
    dlq: &FutureProducer,
    topic: &str,
    dead: &[DeadLetter],
) -> KafkaResult<()> {
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
        r.map_err(|(e, _)| e)?;
    }
    Ok(())
}
