//! Turning a run of Kafka records into a batch: decode and validate each
//! record, dead-letter what fails, and work out every partition's new
//! committed position.

use crate::event::{Label, Transaction};
use crate::ingest::{Record, Stream};
use crate::sink::{DeadLetter, LabelRow, OffsetUpdate};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// A valid transaction and where it came from.
#[derive(Debug, Clone)]
pub struct Sourced {
    pub tx: Transaction,
    pub partition: i32,
    pub offset: i64,
    /// Kafka's timestamp of the record, in ms.
    pub kafka_ts_ms: Option<i64>,
}

/// A decoded batch, before featurization.
#[derive(Debug, Default)]
pub struct Assembled {
    /// Valid transactions, in read order.
    pub txs: Vec<Sourced>,
    pub labels: Vec<LabelRow>,
    pub dead_letters: Vec<DeadLetter>,
    pub offsets: Vec<OffsetUpdate>,
}

/// Records read but not yet featurized, per partition in read order, each
/// with its event time. Pieces are taken oldest-first across partitions, so
/// a partition that lags in the fetch is worked off first instead of holding
/// the others' watermark back.
#[derive(Default)]
pub struct Pending {
    queues: BTreeMap<i32, VecDeque<(Record, i64)>>,
    /// Event time of the last valid record seen per partition, for poison
    /// records, which travel with their neighbours.
    last_ts: HashMap<i32, i64>,
    len: usize,
}

/// A piece taken from [`Pending`], with the span of its transactions' event days.
pub struct Piece {
    entries: Vec<(Record, i64)>,
    pub days: Option<(i64, i64)>,
}

impl Piece {
    pub fn rows(&self) -> usize {
        self.entries.len()
    }

    pub fn into_records(self) -> Vec<Record> {
        self.entries.into_iter().map(|(r, _)| r).collect()
    }
}

impl Pending {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.queues.clear();
        self.len = 0;
    }

    /// Partitions holding more than `limit` waiting records: the consumer
    /// pauses them so a lagging partition's records can come through.
    pub fn partitions_over(&self, limit: usize) -> std::collections::BTreeSet<i32> {
        self.queues
            .iter()
            .filter(|(_, q)| q.len() > limit)
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn push(&mut self, r: Record) {
        #[derive(serde::Deserialize)]
        struct EventTime {
            ts: DateTime<Utc>,
        }
        let ts = match (r.stream, r.payload.as_deref()) {
            (Stream::Transactions, Some(p)) => serde_json::from_slice::<EventTime>(p)
                .ok()
                .map(|e| e.ts.timestamp_millis()),
            _ => None,
        };
        let ts = match ts {
            Some(ts) => *self
                .last_ts
                .entry(r.partition)
                .and_modify(|t| *t = ts)
                .or_insert(ts),
            None => self.last_ts.get(&r.partition).copied().unwrap_or(i64::MIN),
        };
        self.queues
            .entry(r.partition)
            .or_default()
            .push_back((r, ts));
        self.len += 1;
    }

    /// Take up to `max_rows` of the oldest records (each partition's order
    /// kept) whose event days span at most `max_days`: a batch waits for the
    /// watermark to pass `its newest day − label delay`, and its own oldest
    /// records hold that watermark, so with a span of at most the delay a
    /// batch never waits on itself.
    pub fn take(&mut self, max_rows: usize, max_days: i64) -> Piece {
        let mut piece = Piece {
            entries: Vec::new(),
            days: None,
        };
        while piece.entries.len() < max_rows {
            let Some((&partition, _)) = self
                .queues
                .iter()
                .filter_map(|(p, q)| q.front().map(|(_, ts)| (p, *ts)))
                .min_by_key(|(p, ts)| (*ts, **p))
            else {
                break;
            };
            let queue = self
                .queues
                .get_mut(&partition)
                .expect("partition has a head");
            let (record, ts) = queue.front().expect("non-empty");
            if ts != &i64::MIN && record.stream == Stream::Transactions {
                let day = crate::features::day_of(*ts);
                let (lo, hi) = piece
                    .days
                    .map_or((day, day), |(lo, hi)| (lo.min(day), hi.max(day)));
                if hi - lo > max_days {
                    break;
                }
                piece.days = Some((lo, hi));
            }
            piece.entries.push(queue.pop_front().expect("non-empty"));
            self.len -= 1;
        }
        piece
    }

    /// Return a piece that could not be featurized yet, in front of what came after it.
    pub fn put_back(&mut self, piece: Piece) {
        for (r, ts) in piece.entries.into_iter().rev() {
            self.queues
                .entry(r.partition)
                .or_default()
                .push_front((r, ts));
            self.len += 1;
        }
    }
}

pub fn assemble(records: Vec<Record>) -> Assembled {
    let mut out = Assembled::default();
    let mut positions: BTreeMap<(String, i32), OffsetUpdate> = BTreeMap::new();
    for r in records {
        let pos = positions
            .entry((r.topic.clone(), r.partition))
            .or_insert_with(|| OffsetUpdate {
                topic: r.topic.clone(),
                partition: r.partition,
                next_offset: r.offset + 1,
                max_event_ts: None,
                epoch: r.epoch,
            });
        pos.next_offset = pos.next_offset.max(r.offset + 1);
        pos.epoch = pos.epoch.max(r.epoch);
        let payload = r.payload.as_deref().unwrap_or_default();
        let event_ts: Result<DateTime<Utc>, String> = match r.stream {
            Stream::Transactions => match Transaction::decode(payload) {
                Ok(tx) => {
                    let ts = tx.ts;
                    out.txs.push(Sourced {
                        tx,
                        partition: r.partition,
                        offset: r.offset,
                        kafka_ts_ms: r.timestamp_ms,
                    });
                    Ok(ts)
                }
                Err(e) => Err(e.to_string()),
            },
            Stream::Labels => match Label::decode(payload) {
                Ok(label) => {
                    let ts = label.reported_at;
                    out.labels.push(LabelRow {
                        label,
                        partition: r.partition,
                        offset: r.offset,
                    });
                    Ok(ts)
                }
                Err(e) => Err(e.to_string()),
            },
        };
        match event_ts {
            Ok(ts) => pos.max_event_ts = Some(pos.max_event_ts.map_or(ts, |m| m.max(ts))),
            Err(reason) => out.dead_letters.push(DeadLetter {
                topic: r.topic,
                partition: r.partition,
                offset: r.offset,
                reason,
                key: r.key,
                payload: r.payload,
            }),
        }
    }
    out.offsets = positions.into_values().collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stream: Stream, partition: i32, offset: i64, payload: &str) -> Record {
        Record {
            stream,
            topic: if stream == Stream::Labels {
                "labels"
            } else {
                "transactions"
            }
            .into(),
            partition,
            offset,
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
            epoch: 3,
            timestamp_ms: None,
        }
    }

    #[test]
    fn pieces_are_oldest_first_across_partitions_and_span_at_most_the_delay() {
        let tx = |day: u32| {
            format!(
                r#"{{"tx_id":"a","ts":"2026-01-{day:02}T00:00:00Z","card_id":"c","terminal_id":"t","amount":5}}"#
            )
        };
        let mut pending = Pending::default();
        // Partition 0 is read far ahead of partition 1.
        for (i, d) in [5, 9, 20].iter().enumerate() {
            pending.push(rec(Stream::Transactions, 0, i as i64, &tx(*d)));
        }
        pending.push(rec(Stream::Transactions, 0, 3, "poison"));
        for (i, d) in [1, 2, 12].iter().enumerate() {
            pending.push(rec(Stream::Transactions, 1, i as i64, &tx(*d)));
        }
        let mut taken = Vec::new();
        while !pending.is_empty() {
            let piece = pending.take(100, 7);
            taken.push(
                piece
                    .into_records()
                    .iter()
                    .map(|r| (r.partition, r.offset))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            taken,
            [vec![(1, 0), (1, 1), (0, 0)], vec![(0, 1), (1, 2)], vec![(0, 2), (0, 3)]],
            "oldest first, each partition in order, poison with its predecessor, spans of at most 7 days"
        );

        let mut pending = Pending::default();
        pending.push(rec(Stream::Transactions, 0, 0, &tx(1)));
        pending.push(rec(Stream::Transactions, 0, 1, &tx(2)));
        let piece = pending.take(1, 7);
        pending.put_back(piece);
        assert_eq!(pending.len(), 2);
        assert_eq!(
            pending
                .take(10, 7)
                .into_records()
                .iter()
                .map(|r| r.offset)
                .collect::<Vec<_>>(),
            [0, 1]
        );
    }

    #[test]
    fn bad_records_are_dead_lettered_and_still_advance_their_partition() {
        let good = r#"{"tx_id":"a","ts":"2026-01-02T00:00:00Z","card_id":"c","terminal_id":"t","amount":5}"#;
        let label = r#"{"tx_id":"a","is_fraud":true,"reported_at":"2026-01-05T00:00:00Z"}"#;
        let a = assemble(vec![
            rec(Stream::Transactions, 0, 10, good),
            rec(Stream::Transactions, 0, 11, "garbage"),
            rec(Stream::Transactions, 1, 7, ""),
            rec(Stream::Labels, 0, 3, label),
        ]);
        assert_eq!(a.txs.len(), 1);
        assert_eq!(a.labels.len(), 1);
        assert_eq!(a.dead_letters.len(), 2);
        assert_eq!(
            (a.dead_letters[0].partition, a.dead_letters[0].offset),
            (0, 11)
        );
        assert!(a.dead_letters[1].reason.contains("empty"));
        let pos: Vec<_> = a
            .offsets
            .iter()
            .map(|o| (o.topic.as_str(), o.partition, o.next_offset, o.epoch))
            .collect();
        assert_eq!(
            pos,
            [
                ("labels", 0, 4, 3),
                ("transactions", 0, 12, 3),
                ("transactions", 1, 8, 3)
            ]
        );
        assert_eq!(
            a.offsets[2].max_event_ts, None,
            "a partition with only bad records has no event time"
        );
    }
}
