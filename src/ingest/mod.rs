//! Kafka ingest: the consumer that feeds the pipeline, its rebalance
//! protocol, the dead-letter producer, and topic administration.
//!
//! Polling runs on a dedicated OS thread (librdkafka's poll and its rebalance
//! callback may block; tokio workers never do). Records go to the pipeline
//! through a bounded channel, so a slow sink stops the polling instead of
//! growing memory. Offsets are never committed to Kafka: positions come from
//! Postgres on every assignment (see [`crate::sink::claim_partitions`]).

pub mod client;
mod consumer;
mod dead_letters;
pub mod topics;

pub use consumer::{budget, spawn_consumer, Claims, ConsumerHandle, PauseRequests, Subscription};
pub use dead_letters::DeadLetterTopic;

use std::sync::mpsc as std_mpsc;

/// Which stream a record belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Transactions,
    Labels,
}

/// One Kafka record, copied out of librdkafka's buffer (whole only up to
/// [`crate::event::MAX_RECORD_BYTES`]).
#[derive(Debug)]
pub struct Record {
    pub stream: Stream,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The value, or only its first [`OVERSIZE_PREFIX_BYTES`] when it was
    /// larger than a record may be.
    pub payload: Option<Vec<u8>>,
    /// The value's real length when `payload` holds only its prefix.
    pub truncated_from: Option<usize>,
    /// The payload's share of the in-flight byte budget, released when the
    /// record is decoded (or its dead letter written).
    pub budget: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The ownership epoch of the partition when the record was read.
    pub epoch: i64,
    /// Kafka's timestamp (append or create time), in ms.
    pub timestamp_ms: Option<i64>,
}

/// How much of an oversized value is kept for its dead letter.
pub const OVERSIZE_PREFIX_BYTES: usize = 1024;

/// What the consumer thread tells the pipeline, in order.
#[derive(Debug)]
pub enum Ingested {
    Record(Record),
    /// Partitions were claimed, with each one's committed event-time clock
    /// (ms; `None` if nothing was committed yet) and the newest committed by
    /// any partition of the stream. Comes before their records.
    Assigned {
        clocks: Vec<(i32, Option<i64>)>,
        stream_clock: Option<i64>,
    },
    /// Partitions are being revoked: finish everything read so far, then
    /// acknowledge. Nothing after this message belongs to the old assignment.
    Revoke {
        ack: std_mpsc::Sender<()>,
    },
}
