//! Turning Kafka records into batches: each record is decoded and validated
//! once, on arrival, before it can touch event time or state; what fails
//! (bad bytes, a field out of range, an event time beyond the skew bounds)
//! becomes a dead letter that travels with its neighbours, so its offset is
//! committed in order. [`Pending`] holds the decoded records per partition
//! and hands out batches oldest first.

use super::event_time::{self, Clocks, SkewPolicy};
use crate::event::{DecodeError, Label, Transaction};
use crate::ingest::{Record, Stream};
use crate::sink::{DeadLetter, LabelRow, OffsetUpdate};
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

impl AsRef<Transaction> for Sourced {
    fn as_ref(&self) -> &Transaction {
        &self.tx
    }
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

/// What a record turned out to be.
#[derive(Debug)]
enum Decoded {
    Tx(Sourced),
    Label(LabelRow),
    Dead(DeadLetter),
}

/// One record after decoding, with the event time it is ordered by.
#[derive(Debug)]
struct Entry {
    topic: String,
    partition: i32,
    offset: i64,
    epoch: i64,
    /// The transaction's own time; dead letters and labels carry their
    /// predecessor's (or `i64::MIN`), so they never move event time.
    ts: i64,
    decoded: Decoded,
}

/// Records read but not yet featurized, per partition in read order. Pieces
/// are taken oldest-first across partitions, so a partition that lags in
/// the fetch is worked off first instead of holding the others' watermark
/// back. Owns the partitions' event-time clocks.
pub struct Pending {
    queues: BTreeMap<i32, VecDeque<Entry>>,
    /// Event time of the last admitted transaction per partition, for dead
    /// letters, which travel with their neighbours.
    last_ts: HashMap<i32, i64>,
    clocks: Clocks,
    policy: SkewPolicy,
    len: usize,
}

/// A piece taken from [`Pending`], with the span of its transactions' event days.
pub struct Piece {
    entries: Vec<Entry>,
    pub days: Option<(i64, i64)>,
}

impl Piece {
    pub fn rows(&self) -> usize {
        self.entries.len()
    }

    /// Transactions, labels and dead letters in read order, and every
    /// partition's new committed position.
    pub fn assemble(self) -> Assembled {
        let mut out = Assembled::default();
        let mut positions: BTreeMap<(String, i32), OffsetUpdate> = BTreeMap::new();
        for e in self.entries {
            let pos = positions
                .entry((e.topic.clone(), e.partition))
                .or_insert_with(|| OffsetUpdate {
                    topic: e.topic,
                    partition: e.partition,
                    next_offset: e.offset + 1,
                    max_event_ts: None,
                    epoch: e.epoch,
                });
            pos.next_offset = pos.next_offset.max(e.offset + 1);
            pos.epoch = pos.epoch.max(e.epoch);
            // Only admitted records move the committed clock (it is what a
            // restarted engine resumes its skew verdicts from).
            let event_ts = match e.decoded {
                Decoded::Tx(s) => {
                    let ts = s.tx.ts;
                    out.txs.push(s);
                    Some(ts)
                }
                Decoded::Label(l) => {
                    let ts = l.label.reported_at;
                    out.labels.push(l);
                    Some(ts)
                }
                Decoded::Dead(d) => {
                    out.dead_letters.push(d);
                    None
                }
            };
            if let Some(ts) = event_ts {
                pos.max_event_ts = Some(pos.max_event_ts.map_or(ts, |m| m.max(ts)));
            }
        }
        out.offsets = positions.into_values().collect();
        out
    }
}

impl Pending {
    pub fn new(policy: SkewPolicy) -> Self {
        Pending {
            queues: BTreeMap::new(),
            last_ts: HashMap::new(),
            clocks: Clocks::default(),
            policy,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drop what is waiting (the partitions are being revoked).
    pub fn clear(&mut self) {
        self.queues.clear();
        self.len = 0;
    }

    /// Forget the clocks too: the partitions' next claim restores them.
    pub fn reset(&mut self) {
        self.clear();
        self.clocks.clear();
        self.last_ts.clear();
    }

    /// Partitions were claimed: the newest clock committed on the stream.
    pub fn restore_stream_clock(&mut self, committed_ms: Option<i64>) {
        self.clocks.restore_stream(committed_ms);
    }

    /// A partition was claimed; its clock resumes from what is committed.
    pub fn restore_clock(&mut self, partition: i32, committed_ms: Option<i64>) {
        self.clocks.restore(partition, committed_ms);
        match committed_ms {
            Some(ms) => self.last_ts.insert(partition, ms),
            None => self.last_ts.remove(&partition),
        };
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

    /// Decode, validate and admit one record. Its raw bytes (and their share
    /// of the in-flight budget) are released here unless it is a dead letter.
    pub fn push(&mut self, r: Record, now_ms: i64) {
        let decoded = match r.stream {
            Stream::Transactions => match decode_transaction(&r) {
                Ok(tx) => {
                    let ts = tx.ts.timestamp_millis();
                    match self.clocks.admit(&self.policy, r.partition, ts, now_ms) {
                        Ok(()) => Ok(Decoded::Tx(Sourced {
                            tx,
                            partition: r.partition,
                            offset: r.offset,
                            kafka_ts_ms: r.timestamp_ms,
                        })),
                        Err(skew) => Err((skew.kind(), skew.to_string())),
                    }
                }
                Err(e) => Err((e.kind(), e.to_string())),
            },
            Stream::Labels => match Label::decode(r.payload.as_deref().unwrap_or_default()) {
                Ok(label) => Ok(Decoded::Label(LabelRow {
                    label,
                    topic: r.topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                })),
                Err(e) => Err((e.kind(), e.to_string())),
            },
        };
        let (ts, decoded) = match decoded {
            Ok(Decoded::Tx(s)) => {
                let ts = s.tx.ts.timestamp_millis();
                self.last_ts.insert(r.partition, ts);
                (ts, Decoded::Tx(s))
            }
            Ok(other) => (self.predecessor_ts(r.partition), other),
            Err((kind, reason)) => (
                self.predecessor_ts(r.partition),
                Decoded::Dead(DeadLetter {
                    topic: r.topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                    reason,
                    kind,
                    key: r.key,
                    payload: r.payload,
                    truncated_from: r.truncated_from,
                }),
            ),
        };
        self.queues
            .entry(r.partition)
            .or_default()
            .push_back(Entry {
                topic: r.topic,
                partition: r.partition,
                offset: r.offset,
                epoch: r.epoch,
                ts,
                decoded,
            });
        self.len += 1;
    }

    fn predecessor_ts(&self, partition: i32) -> i64 {
        self.last_ts.get(&partition).copied().unwrap_or(i64::MIN)
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
                .filter_map(|(p, q)| q.front().map(|e| (p, e.ts)))
                .min_by_key(|(p, ts)| (*ts, **p))
            else {
                break;
            };
            let queue = self
                .queues
                .get_mut(&partition)
                .expect("partition has a head");
            let head = queue.front().expect("non-empty");
            if let Decoded::Tx(_) = head.decoded {
                let day = crate::features::day_of(head.ts);
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
        for e in piece.entries.into_iter().rev() {
            self.queues.entry(e.partition).or_default().push_front(e);
            self.len += 1;
        }
    }
}

/// A record the consumer refused to copy whole is too large, whatever its
/// prefix says.
fn decode_transaction(r: &Record) -> Result<Transaction, DecodeError> {
    if let Some(len) = r.truncated_from {
        return Err(DecodeError::TooLarge(len, crate::event::MAX_RECORD_BYTES));
    }
    Transaction::decode(r.payload.as_deref().unwrap_or_default())
}

/// The event time of a transaction record as the pipeline would admit it
/// (`None`: it would be dead-lettered), given its partition's committed
/// clock. The watermark reader uses it to find a partition's first
/// uncommitted valid record, so both agree on what counts.
///
/// It knows only the partition's own committed clock, not the stream's: a
/// record far ahead of its own partition but not of the stream (a quiet
/// partition resuming) is skipped here while the pipeline admits it, which
/// can let the watermark pass it early; bounded by `max_ahead` and rare.
pub fn admitted_time(bytes: &[u8], clock: Option<i64>, policy: &SkewPolicy) -> Option<i64> {
    let ts = Transaction::decode(bytes).ok()?.ts.timestamp_millis();
    policy.admit(ts, clock, None, event_time::now_ms()).ok()?;
    Some(ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_790_000_000_000; // 2026-09

    fn policy() -> SkewPolicy {
        SkewPolicy {
            max_ahead_ms: 86_400_000,
            max_behind_ms: 86_400_000,
            max_future_ms: 3_600_000,
        }
    }

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
            truncated_from: None,
            epoch: 3,
            timestamp_ms: None,
            budget: None,
        }
    }

    fn tx_at(id: &str, ts: &str) -> String {
        format!(r#"{{"tx_id":"{id}","ts":"{ts}","card_id":"c","terminal_id":"t","amount":5}}"#)
    }

    fn assemble(records: Vec<Record>) -> Assembled {
        let mut pending = Pending::new(policy());
        for r in records {
            pending.push(r, NOW);
        }
        pending.take(usize::MAX, i64::MAX).assemble()
    }

    fn drain(pending: &mut Pending, max_days: i64) -> Vec<Vec<(i32, i64)>> {
        let mut taken = Vec::new();
        while !pending.is_empty() {
            let piece = pending.take(100, max_days);
            let a = piece.assemble();
            let mut ids: Vec<(i32, i64)> = a.txs.iter().map(|s| (s.partition, s.offset)).collect();
            ids.extend(a.dead_letters.iter().map(|d| (d.partition, d.offset)));
            ids.sort_by_key(|&(p, o)| (o, p));
            taken.push(ids);
        }
        taken
    }

    #[test]
    fn pieces_are_oldest_first_across_partitions_and_span_at_most_the_delay() {
        let tx = |day: u32| tx_at("a", &format!("2026-01-{day:02}T00:00:00Z"));
        let mut pending = Pending::new(SkewPolicy {
            max_ahead_ms: 30 * 86_400_000,
            ..policy()
        });
        // Partition 0 is read far ahead of partition 1.
        for (i, d) in [5, 9, 20].iter().enumerate() {
            pending.push(rec(Stream::Transactions, 0, i as i64, &tx(*d)), NOW);
        }
        pending.push(rec(Stream::Transactions, 0, 3, "poison"), NOW);
        for (i, d) in [1, 2, 12].iter().enumerate() {
            pending.push(rec(Stream::Transactions, 1, i as i64, &tx(*d)), NOW);
        }
        let mut taken = Vec::new();
        while !pending.is_empty() {
            let piece = pending.take(100, 7);
            let mut ids: Vec<(i32, i64)> = piece
                .entries
                .iter()
                .map(|e| (e.partition, e.offset))
                .collect();
            ids.sort_by_key(|&(p, o)| (p != 1, o));
            let _ = piece.assemble();
            taken.push(ids);
        }
        assert_eq!(
            taken,
            [vec![(1, 0), (1, 1), (0, 0)], vec![(1, 2), (0, 1)], vec![(0, 2), (0, 3)]],
            "oldest first, each partition in order, poison with its predecessor, spans of at most 7 days"
        );

        let mut pending = Pending::new(policy());
        pending.push(rec(Stream::Transactions, 0, 0, &tx(1)), NOW);
        pending.push(rec(Stream::Transactions, 0, 1, &tx(1)), NOW);
        let piece = pending.take(1, 7);
        pending.put_back(piece);
        assert_eq!(pending.len(), 2);
        let a = pending.take(10, 7).assemble();
        assert_eq!(a.txs.iter().map(|s| s.offset).collect::<Vec<_>>(), [0, 1]);
    }

    /// Seen in the field: a record with no tx_id and a timestamp years ahead
    /// froze its partition (it was ordered by the time it claimed before it
    /// was validated) and throttled the others through the watermark.
    #[test]
    fn an_invalid_record_never_moves_event_time() {
        let mut pending = Pending::new(policy());
        pending.push(
            rec(
                Stream::Transactions,
                0,
                0,
                &tx_at("a", "2026-03-01T10:00:00Z"),
            ),
            NOW,
        );
        pending.push(
            rec(
                Stream::Transactions,
                0,
                1,
                r#"{"ts":"2031-01-01T00:00:00Z","card_id":"c","terminal_id":"t","amount":5}"#,
            ),
            NOW,
        );
        pending.push(
            rec(
                Stream::Transactions,
                0,
                2,
                &tx_at("b", "2026-03-01T10:01:00Z"),
            ),
            NOW,
        );
        pending.push(
            rec(
                Stream::Transactions,
                1,
                0,
                &tx_at("c", "2026-03-01T10:00:30Z"),
            ),
            NOW,
        );
        // One piece holds everything: nothing is ordered by the bad record's time.
        let a = pending.take(100, 7).assemble();
        assert!(pending.is_empty());
        assert_eq!(a.txs.len(), 3);
        assert_eq!(a.dead_letters.len(), 1);
        assert!(
            a.dead_letters[0].reason.contains("tx_id"),
            "{}",
            a.dead_letters[0].reason
        );
        let p0 = a.offsets.iter().find(|o| o.partition == 0).unwrap();
        assert_eq!(p0.next_offset, 3);
        assert_eq!(
            p0.max_event_ts.unwrap().to_rfc3339(),
            "2026-03-01T10:01:00+00:00"
        );
    }

    #[test]
    fn valid_records_beyond_the_skew_bounds_are_dead_lettered_with_their_reason() {
        let a = assemble(vec![
            rec(
                Stream::Transactions,
                0,
                0,
                &tx_at("a", "2026-03-01T10:00:00Z"),
            ),
            rec(
                Stream::Transactions,
                0,
                1,
                &tx_at("future", "2026-07-01T10:00:00Z"),
            ),
            rec(
                Stream::Transactions,
                0,
                2,
                &tx_at("past", "2019-03-01T10:00:00Z"),
            ),
            rec(
                Stream::Transactions,
                0,
                3,
                &tx_at("wall", "2027-03-01T10:00:00Z"),
            ),
            rec(
                Stream::Transactions,
                0,
                4,
                &tx_at("b", "2026-03-01T11:00:00Z"),
            ),
        ]);
        let ids: Vec<&str> = a.txs.iter().map(|s| s.tx.tx_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let kinds: Vec<&str> = a.dead_letters.iter().map(|d| d.kind).collect();
        assert_eq!(kinds, ["skew_ahead", "skew_behind", "skew_future"]);
        assert!(a.dead_letters[0]
            .reason
            .contains("ahead of its partition's stream time"));
        assert_eq!(
            a.offsets[0].max_event_ts.unwrap().to_rfc3339(),
            "2026-03-01T11:00:00+00:00",
            "the committed clock only counts admitted records"
        );
    }

    #[test]
    fn a_restored_clock_judges_the_first_records_after_a_restart() {
        let mut pending = Pending::new(policy());
        let committed = chrono::DateTime::parse_from_rfc3339("2026-03-05T00:00:00Z").unwrap();
        pending.restore_clock(0, Some(committed.timestamp_millis()));
        pending.push(
            rec(
                Stream::Transactions,
                0,
                7,
                &tx_at("old", "2026-03-01T00:00:00Z"),
            ),
            NOW,
        );
        pending.push(
            rec(
                Stream::Transactions,
                0,
                8,
                &tx_at("ok", "2026-03-05T01:00:00Z"),
            ),
            NOW,
        );
        let a = pending.take(10, 7).assemble();
        assert_eq!(a.txs.len(), 1);
        assert_eq!(a.dead_letters[0].kind, "skew_behind");
    }

    #[test]
    fn oversized_records_are_refused_whatever_their_prefix() {
        let mut r = rec(
            Stream::Transactions,
            0,
            0,
            &tx_at("a", "2026-03-01T10:00:00Z"),
        );
        r.truncated_from = Some(5_000_000);
        let a = assemble(vec![r]);
        assert!(a.txs.is_empty());
        assert_eq!(a.dead_letters[0].kind, "too_large");
        assert!(a.dead_letters[0].reason.contains("5000000 bytes"));
    }

    #[test]
    fn hostile_input_never_stalls_a_partition() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut pending = Pending::new(policy());
        let mut good = 0;
        for offset in 0..2_000i64 {
            let partition = (offset % 4) as i32;
            let payload: Vec<u8> = match rng.gen_range(0..6) {
                0 => (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect(),
                1 => tx_at(
                    "x",
                    &format!("{}-01-01T00:00:00Z", rng.gen_range(1000..9999)),
                )
                .into_bytes(),
                2 => tx_at("x", "2026-03-01T00:00:00Z")
                    .replace("\"c\"", "\"c\\u0000\"")
                    .into_bytes(),
                _ => {
                    good += 1;
                    tx_at(
                        &format!("g{offset}"),
                        &format!("2026-03-01T{:02}:{:02}:00Z", offset / 60 % 24, offset % 60),
                    )
                    .into_bytes()
                }
            };
            let mut r = rec(Stream::Transactions, partition, offset, "");
            r.payload = Some(payload);
            pending.push(r, NOW);
        }
        let taken = drain(&mut pending, 7);
        let decided: usize = taken.iter().map(Vec::len).sum();
        assert_eq!(decided, 2_000, "every record leaves, decided or dead");
        assert!(good > 1_000);
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
        let mut dead: Vec<_> = a
            .dead_letters
            .iter()
            .map(|d| (d.partition, d.offset, d.kind))
            .collect();
        dead.sort();
        assert_eq!(dead, [(0, 11, "json"), (1, 7, "empty")]);
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
