//! Kafka ingest: the consumer that feeds the pipeline, its rebalance
//! protocol, the dead-letter producer, and topic administration.
//!
//! Polling runs on a dedicated OS thread (librdkafka's poll and its rebalance
//! callback may block; tokio workers never do). Records go to the pipeline
//! through a bounded channel, so a slow sink stops the polling instead of
//! growing memory. Offsets are never committed to Kafka: positions come from
//! Postgres on every assignment (see [`crate::sink::claim_partitions`]).

mod consumer;
pub mod topics;

pub use consumer::{spawn_consumer, ConsumerHandle, PauseRequests, Subscription};

use std::sync::mpsc as std_mpsc;

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Transactions,
    Labels,
}

/// One Kafka record, copied out of librdkafka's buffer.
#[derive(Debug, Clone)]
pub struct Record {
    pub stream: Stream,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The ownership epoch of the partition when the record was read.
    pub epoch: i64,
    /// Kafka's timestamp (append or create time), in ms.
    pub timestamp_ms: Option<i64>,
}

/// What the consumer thread tells the pipeline, in order.
#[derive(Debug)]
pub enum Ingested {
    Record(Record),
    /// Partitions are being revoked: finish everything read so far, then
    /// acknowledge. Nothing after this message belongs to the old assignment.
    Revoke {
        ack: std_mpsc::Sender<()>,
    },
}
