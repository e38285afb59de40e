//! Event-time watermarks and the terminal-state loader.
//!
//! Terminal windows read other cards' transactions, which other partitions
//! (maybe other instances) decide. The watermark of a topic is the event time
//! of the oldest record not yet committed to Postgres, over all partitions:
//! every valid record before it is committed (partitions are in event-time
//! order, up to `late_tolerance`). [`TerminalLoader::check`] loads a day
//! into [`TerminalStats`] only once the watermark has passed it; the caller
//! waits (reading on, so lagging partitions catch up) up to a bound, after
//! which the batch is scored anyway and marked incomplete.

use super::event_time::SkewPolicy;
use crate::event::Label;
use crate::features::terminal_needed_days as needed_days;
use crate::features::{day_of, TerminalStats, MS_PER_DAY};
use crate::sink::{self, SinkError};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A partition's committed position: `(topic, partition, offset)`.
type HeadKey = (String, i32, i64);

/// Records read past poison at a partition's head before giving up for now.
const PEEK_LIMIT: usize = 1000;

/// The heads' Kafka client is made anew after a failure, at most this often.
const REMAKE_AFTER: Duration = Duration::from_secs(15);

/// Closed days loaded beyond what a batch reads (see [`LookAhead`]).
const LOOK_AHEAD_DAYS: i64 = 7;

/// One watermarked stream: a topic, the consumer group that commits it, and
/// how to read an event time from its records.
#[derive(Clone)]
pub struct Stream {
    pub topic: String,
    pub group: String,
    /// The event time of a record as the pipeline would admit it, given its
    /// partition's committed clock; `None` if it would be dead-lettered.
    pub event_time: fn(&[u8], Option<i64>, &SkewPolicy) -> Option<i64>,
    pub policy: SkewPolicy,
}

/// Exactly the pipeline's verdict ([`super::batch::admitted_time`]): a
/// record it dead-letters for its time must not hold or move the watermark.
pub fn transaction_time(bytes: &[u8], clock: Option<i64>, policy: &SkewPolicy) -> Option<i64> {
    super::batch::admitted_time(bytes, clock, policy)
}

pub fn label_time(bytes: &[u8], _clock: Option<i64>, _policy: &SkewPolicy) -> Option<i64> {
    Label::decode(bytes)
        .ok()
        .map(|l| l.reported_at.timestamp_millis())
}

/// Reads committed positions (Postgres) and the records at them (Kafka).
pub struct TerminalLoader {
    pool: PgPool,
    kafka: Arc<Mutex<BaseConsumer>>,
    /// How `kafka` was made, to make it again (see `remake_kafka`).
    client: ClientConfig,
    /// When `kafka` was last made.
    made_at: Instant,
    transactions: Stream,
    labels: Stream,
    delay_days: i64,
    late_tolerance_ms: i64,
    /// (topic, partition, offset) → event time of the first valid record at or after it.
    peeked: HashMap<HeadKey, i64>,
}

/// Whether a batch can be featurized, and on what terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Complete,
    /// The wait ran out; what was closed is loaded.
    Incomplete,
    /// The days it needs are not closed yet.
    NotYet,
}

impl TerminalLoader {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        mut client: ClientConfig,
        transactions: Stream,
        labels: Stream,
        delay_days: i64,
        late_tolerance_secs: i64,
    ) -> rdkafka::error::KafkaResult<Self> {
        // Never subscribes: only assigns partitions to peek at their heads.
        client
            .set("group.id", format!("{}-watermarks", transactions.group))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10");
        let kafka: BaseConsumer = client.create()?;
        Ok(TerminalLoader {
            pool,
            kafka: Arc::new(Mutex::new(kafka)),
            client,
            made_at: Instant::now(),
            transactions,
            labels,
            delay_days,
            late_tolerance_ms: late_tolerance_secs * 1000,
            peeked: HashMap::new(),
        })
    }

    /// The event time before which every valid record of `stream` is
    /// committed, in ms (`i64::MAX` when every partition is committed to its end).
    pub async fn watermark(&mut self, stream: &Stream) -> Result<i64, SinkError> {
        let committed: HashMap<i32, (i64, Option<i64>)> =
            sink::committed_progress(&self.pool, &stream.group, &stream.topic)
                .await?
                .into_iter()
                .map(|(p, next, clock)| (p, (next, clock.map(|t| t.timestamp_millis()))))
                .collect();
        let kafka = self.kafka.clone();
        let s = stream.clone();
        let known: HashMap<HeadKey, i64> = self.peeked.clone();
        let peeked = tokio::task::spawn_blocking(move || {
            let consumer = kafka.lock().expect("watermark consumer lock");
            heads(&consumer, &s, &committed, &known)
        })
        .await
        .expect("watermark task panicked");
        let heads = match peeked {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, topic = %stream.topic, "cannot read partition heads; watermark not advanced");
                self.remake_kafka();
                return Ok(i64::MIN);
            }
        };
        let mut wm = i64::MAX;
        for (key, head) in heads {
            match head {
                Head::Drained => {}
                Head::At(ts) => {
                    self.peeked.insert(key, ts);
                    wm = wm.min(ts.saturating_sub(self.late_tolerance_ms));
                }
                Head::Unknown => wm = i64::MIN,
            }
        }
        if self.peeked.len() > 10_000 {
            self.peeked.clear();
        }
        Ok(wm)
    }

    /// A new client for the heads, at most every [`REMAKE_AFTER`]. Seen in the
    /// broker-outage test: after the broker came back, this client's metadata
    /// requests kept failing with "broker transport failure" for minutes
    /// while the pipeline's consumers had reconnected, so every batch waited
    /// `state_wait_ms` and was scored incomplete. A fresh client connects anew.
    fn remake_kafka(&mut self) {
        if self.made_at.elapsed() < REMAKE_AFTER {
            return;
        }
        self.made_at = Instant::now();
        match self.client.create::<BaseConsumer>() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut self.kafka, Arc::new(Mutex::new(fresh)));
                // Dropping a client joins its threads: not on the runtime's.
                tokio::task::spawn_blocking(move || drop(old));
                tracing::info!("made a new Kafka client for the watermark's partition heads");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a new Kafka client for the watermark")
            }
        }
    }

    /// Can transactions on days `[min_day, max_day]` be featurized now? Loads
    /// what they need if their days are closed. With `force` (the wait ran
    /// out), loads whatever is closed and answers `Incomplete`.
    pub async fn check(
        &mut self,
        stats: &mut TerminalStats,
        min_day: i64,
        max_day: i64,
        force: bool,
    ) -> Result<Readiness, SinkError> {
        let (from, _) = needed_days(min_day, self.delay_days);
        let (_, until) = needed_days(max_day, self.delay_days);
        if covered(stats, from, until, max_day) {
            return Ok(Readiness::Complete);
        }
        let (transactions, labels) = (self.transactions.clone(), self.labels.clone());
        let tx_wm = self.watermark(&transactions).await?;
        let label_wm = self.watermark(&labels).await?;
        let complete = tx_wm >= until.saturating_mul(MS_PER_DAY)
            && label_wm >= max_day.saturating_mul(MS_PER_DAY);
        if !complete && !force {
            return Ok(Readiness::NotYet);
        }
        // Day d is closed once the watermark reaches its end; never before
        // `from` (nothing closed), so day arithmetic stays in range.
        let (closed_until, reported_before) = if complete {
            let ahead = LookAhead {
                delay_days: self.delay_days,
                max_behind_ms: self.transactions.policy.max_behind_ms,
                today: day_of(chrono::Utc::now().timestamp_millis()),
            };
            ahead.bounds(until, max_day, tx_wm, label_wm)
        } else {
            (
                until.min(closed_day(tx_wm)).max(from),
                max_day.min(closed_day(label_wm)).max(from),
            )
        };
        self.load(stats, from, closed_until, reported_before)
            .await?;
        if complete {
            Ok(Readiness::Complete)
        } else {
            tracing::warn!(
                max_day,
                tx_wm,
                label_wm,
                "terminal state incomplete after waiting; scoring anyway"
            );
            Ok(Readiness::Incomplete)
        }
    }

    async fn load(
        &self,
        stats: &mut TerminalStats,
        from: i64,
        until: i64,
        reported_before: i64,
    ) -> Result<(), SinkError> {
        let (have_from, have_until) = stats.counts_range().unwrap_or((from, from));
        // Before what we have (a late batch) and after it (time moving on).
        if from < have_from {
            let rows = sink::state::terminal_counts(&self.pool, from, have_from.min(until)).await?;
            stats.add_closed_days(from, have_from.min(until), rows);
        }
        if until > have_until {
            let start = have_until.max(from);
            let rows = sink::state::terminal_counts(&self.pool, start, until).await?;
            stats.add_closed_days(start, until, rows);
        }
        let frauds = sink::state::terminal_frauds(&self.pool, from, until, reported_before).await?;
        stats.set_frauds(from, until, reported_before, frauds);
        // Keep a margin for slightly late batches; older days cannot be read again.
        stats.evict_before(from - 7);
        Ok(())
    }
}

/// How far a complete load reaches beyond what its batch reads. Without it
/// every new day of the stream cost a check of both watermarks (Kafka
/// metadata, offsets and a peek at each partition's head), a count and a
/// read of the window's labels, in the featurize stage while the batch
/// waits: ~130 ms a day, more than the stage's own work on the simulator's
/// stream, where a day is ~1.2 batches.
struct LookAhead {
    delay_days: i64,
    /// A partition admits nothing further than this behind its clock
    /// (`event_time.max_behind_secs`).
    max_behind_ms: i64,
    /// This machine's date, as a day number.
    today: i64,
}

impl LookAhead {
    /// Transactions' days are loaded up to what is closed *for good*: no
    /// record admitted later can fall on it. A partition's clock is at or
    /// past its head, and it admits nothing more than `max_behind` before
    /// its clock, so that is the days before the watermark less
    /// `max_behind` (the days a batch itself reads are `delay` behind it,
    /// closed for good already), at most [`LOOK_AHEAD_DAYS`] past `until`.
    /// Labels are loaded as far as rows reading those days can know of them.
    ///
    /// A drained topic (`i64::MAX`: nothing uncommitted right now) says
    /// nothing about records still to come: then transactions are not
    /// loaded ahead, and labels only up to today's date, as a check on a
    /// later day would have. Returns `(counts until, reported before)`; a
    /// complete check guarantees `until` and `max_day` are closed.
    fn bounds(&self, until: i64, max_day: i64, tx_wm: i64, label_wm: i64) -> (i64, i64) {
        let settled = match tx_wm {
            i64::MAX => until,
            wm => closed_day(wm.saturating_sub(self.max_behind_ms)),
        };
        let counts_until = settled.min(until + LOOK_AHEAD_DAYS).max(until);
        let labels_until = match label_wm {
            i64::MAX => self.today,
            wm => closed_day(wm),
        };
        let reported_before = labels_until
            .min(counts_until + self.delay_days)
            .max(max_day);
        (counts_until, reported_before)
    }
}

/// Days strictly before the returned one are closed at watermark `wm_ms`.
fn closed_day(wm_ms: i64) -> i64 {
    match wm_ms {
        i64::MAX => i64::MAX / MS_PER_DAY,
        i64::MIN => i64::MIN / MS_PER_DAY,
        ms => day_of(ms),
    }
}

fn covered(stats: &TerminalStats, from: i64, until: i64, max_day: i64) -> bool {
    let counts = stats
        .counts_range()
        .is_some_and(|(f, u)| f <= from && u >= until);
    let frauds = stats
        .frauds_range()
        .is_some_and(|(f, u, r)| f <= from && u >= until && r >= max_day);
    counts && frauds
}

enum Head {
    /// Committed to the log end: nothing pending.
    Drained,
    /// Event time of the first valid uncommitted record.
    At(i64),
    /// Not readable now (poison beyond the peek limit, or a fetch timeout).
    Unknown,
}

/// For each partition of the stream, the first valid record at or after its
/// committed offset. Blocking: runs on the blocking pool.
fn heads(
    consumer: &BaseConsumer,
    s: &Stream,
    committed: &HashMap<i32, (i64, Option<i64>)>,
    known: &HashMap<HeadKey, i64>,
) -> rdkafka::error::KafkaResult<Vec<(HeadKey, Head)>> {
    let timeout = Duration::from_secs(5);
    let md = consumer.fetch_metadata(Some(&s.topic), timeout)?;
    let mut out = Vec::new();
    let mut pending: HashMap<i32, (i64, i64)> = HashMap::new(); // partition -> (start, high)
    for t in md.topics() {
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(&s.topic, p.id(), timeout)?;
            let start = committed.get(&p.id()).map_or(-1, |c| c.0).max(low);
            let key = (s.topic.clone(), p.id(), start);
            if start >= high {
                out.push((key, Head::Drained));
            } else if let Some(ts) = known.get(&key) {
                out.push((key, Head::At(*ts)));
            } else {
                pending.insert(p.id(), (start, high));
            }
        }
    }
    if pending.is_empty() {
        return Ok(out);
    }
    let mut tpl = TopicPartitionList::new();
    for (p, (start, _)) in &pending {
        tpl.add_partition_offset(&s.topic, *p, Offset::Offset(*start))?;
    }
    consumer.assign(&tpl)?;
    let mut found: HashMap<i32, Head> = HashMap::new();
    let mut read: HashMap<i32, usize> = HashMap::new();
    let deadline = Instant::now() + timeout;
    while found.len() < pending.len() && Instant::now() < deadline {
        let Some(polled) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(m) = polled else { continue };
        let p = m.partition();
        let Some((_, high)) = pending.get(&p) else {
            continue;
        };
        if found.contains_key(&p) {
            continue;
        }
        let clock = committed.get(&p).and_then(|c| c.1);
        if let Some(ts) = m
            .payload()
            .and_then(|bytes| (s.event_time)(bytes, clock, &s.policy))
        {
            found.insert(p, Head::At(ts));
        } else if m.offset() + 1 >= *high {
            found.insert(p, Head::Drained); // only poison up to the end
        } else {
            let n = read.entry(p).or_default();
            *n += 1;
            if *n >= PEEK_LIMIT {
                found.insert(p, Head::Unknown);
            }
        }
    }
    consumer.unassign()?;
    for (p, (start, _)) in pending {
        out.push((
            (s.topic.clone(), p, start),
            found.remove(&p).unwrap_or(Head::Unknown),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = MS_PER_DAY;

    fn ahead() -> LookAhead {
        LookAhead {
            delay_days: 7,
            max_behind_ms: DAY,
            today: 1_000,
        }
    }

    #[test]
    fn loads_ahead_only_days_no_later_record_can_fall_on() {
        // A batch on days ..=107 reads days < 100; the transactions' heads
        // are at day 105, noon. Records admitted later are at most a day
        // behind their partition's clock, so at or after day 104, noon:
        // days < 104 are settled.
        let (counts_until, reported_before) =
            ahead().bounds(100, 107, 105 * DAY + DAY / 2, 200 * DAY);
        assert_eq!(counts_until, 104);
        // Rows reading days < 104 are on days < 111: they know labels
        // reported before their own day, so before day 111 at the latest.
        assert_eq!(reported_before, 111);
        // Whatever the heads, every loaded day ends before the earliest
        // time a later record may have.
        for wm in (100 * DAY..120 * DAY).step_by((DAY / 7) as usize) {
            let (u, _) = ahead().bounds(100, 107, wm, 200 * DAY);
            assert!(
                u == 100 || u * DAY <= wm - DAY,
                "wm {wm}: loaded up to day {u}"
            );
        }
    }

    #[test]
    fn loads_at_most_a_week_ahead() {
        assert_eq!(ahead().bounds(100, 107, 900 * DAY, 900 * DAY), (107, 114));
    }

    #[test]
    fn labels_known_only_up_to_their_watermark() {
        // Labels committed up to day 108: rows of later days wait for theirs.
        assert_eq!(ahead().bounds(100, 107, 105 * DAY, 108 * DAY + 5).1, 108);
    }

    #[test]
    fn a_drained_topic_is_not_read_ahead() {
        // Nothing uncommitted: records still to come may fall on any day.
        assert_eq!(ahead().bounds(100, 107, i64::MAX, 200 * DAY).0, 100);
        // Labels drained: known up to today's date, not beyond (a replay of
        // an old stream reads ahead; a live one as a later check would).
        let live = LookAhead {
            today: 104,
            ..ahead()
        };
        assert_eq!(live.bounds(100, 107, 105 * DAY, i64::MAX), (104, 107));
        assert_eq!(ahead().bounds(100, 107, 105 * DAY, i64::MAX), (104, 111));
    }
}
