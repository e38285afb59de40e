//! The chaos run (`make chaos`; not in CI: it is long and it stops the
//! shared stack). A simulated stream with deterministic hostile records
//! interleaved in every partition goes once through one undisturbed
//! instance (the fault-free baseline) and once through a group of instances
//! that is scaled 1 → 3 → 1, `kill -9`ed again and again, and loses its
//! broker and then Postgres for a while. Afterwards every record must be
//! decided or dead-lettered exactly once, each hostile record with its
//! reason, the features must equal the baseline's, and no partition may
//! have stalled longer than the wait bound outside the faults.
//!
//! Sized by the environment (defaults in brackets): `CHAOS_TX` simulated
//! transactions [1,000,000], `CHAOS_KILLS` [20], `CHAOS_HOSTILE_EVERY`
//! one hostile record after every n-th transaction [100, so ≥ 10k],
//! `CHAOS_PARTITIONS` [4], `CHAOS_SEED` [2026], `CHAOS_PG_OUTAGE_SECS` [30],
//! `CHAOS_BROKER_DOWN_SECS` [15], `CHAOS_MAX_INSTANCES` [3],
//! `CHAOS_STALL_BOUND_SECS` [60, the config's `pipeline.state_wait_ms`],
//! `CHAOS_RECOVERY_SECS` [30: how long after a fault a stall is still
//! put down to it], `CHAOS_SKIP_KINDS` [none: hostile kinds to leave out,
//! by name, e.g. `Duplicate`], `CHAOS_LOG_DIR` [a new temporary directory;
//! engine logs and `summary.txt` are kept there], `CHAOS_KEEP_DB=1` keeps
//! the databases of a passing run (a failing one always keeps them).
//!
//! An instance that exits on its own is restarted, as a supervisor would,
//! and reported; it does not fail the run by itself (fencing and fatal
//! errors exit non-zero by design, docs/OPERATIONS.md "Recovery").

use crate::common::{brokers, Engine, World};
use crate::outages::{reconnect, stop_broker, PgServer, StackGuard};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;
use riskstream::event::Transaction;
use riskstream::simulate::{SimConfig, SimEvent, Simulator};
use sqlx::postgres::PgPoolOptions;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ------------------------------------------------------------ parameters --

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

#[derive(Debug, Clone)]
struct Params {
    tx: usize,
    kills: usize,
    hostile_every: usize,
    partitions: i32,
    seed: u64,
    pg_outage: Duration,
    broker_down: Duration,
    max_instances: usize,
    stall_bound: Duration,
    recovery: Duration,
    log_dir: PathBuf,
    keep_db: bool,
    /// The hostile kinds cycled through (`CHAOS_SKIP_KINDS` leaves some out).
    kinds: Vec<Kind>,
}

impl Params {
    fn from_env() -> Params {
        let log_dir = std::env::var("CHAOS_LOG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                std::env::temp_dir().join(format!(
                    "riskstream-chaos-{}",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S")
                ))
            });
        let p = Params {
            tx: env_or("CHAOS_TX", 1_000_000),
            kills: env_or("CHAOS_KILLS", 20),
            hostile_every: env_or("CHAOS_HOSTILE_EVERY", 100),
            partitions: env_or("CHAOS_PARTITIONS", 4),
            seed: env_or("CHAOS_SEED", 2026),
            pg_outage: Duration::from_secs(env_or("CHAOS_PG_OUTAGE_SECS", 30)),
            broker_down: Duration::from_secs(env_or("CHAOS_BROKER_DOWN_SECS", 15)),
            max_instances: env_or("CHAOS_MAX_INSTANCES", 3),
            stall_bound: Duration::from_secs(env_or("CHAOS_STALL_BOUND_SECS", 60)),
            recovery: Duration::from_secs(env_or("CHAOS_RECOVERY_SECS", 30)),
            log_dir,
            keep_db: env_or("CHAOS_KEEP_DB", 0) != 0,
            kinds: {
                let skip = std::env::var("CHAOS_SKIP_KINDS").unwrap_or_default();
                let skip: Vec<&str> = skip.split(',').map(str::trim).collect();
                KINDS
                    .into_iter()
                    .filter(|k| !skip.contains(&format!("{k:?}").as_str()))
                    .collect()
            },
        };
        assert!(
            !p.kinds.is_empty(),
            "CHAOS_SKIP_KINDS leaves no hostile kind"
        );
        assert!(
            p.hostile_every >= 2,
            "CHAOS_HOSTILE_EVERY must be at least 2"
        );
        assert!(
            p.partitions as usize >= p.max_instances,
            "CHAOS_PARTITIONS must be at least CHAOS_MAX_INSTANCES, so each instance owns one"
        );
        p
    }
}

// ------------------------------------------------------- hostile records --

/// The hostile records, in the order they are cycled through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    /// The record that once froze a partition: no tx_id, a time years ahead.
    NoTxIdFarFuture,
    /// Valid, but years ahead of the wall clock.
    FarFuture,
    /// Valid, 200 days ahead of its partition (still in the wall clock's past).
    FarAhead,
    /// Valid, 900 days behind its partition.
    FarPast,
    NulInCardId,
    ControlCharInTxId,
    LongTxId,
    /// A $0 authorisation: valid, must be decided.
    ZeroAmount,
    /// An earlier tx_id of the same partition again, at a later time.
    Duplicate,
    RandomBytes,
    TruncatedJson,
    /// `1e400`: not a finite number.
    Amount1e400,
    /// `1e15`: a finite but implausible amount.
    HugeAmount,
    NegativeAmount,
    /// 70 kB, over the 64 KiB record limit.
    TooLarge,
    Empty,
}

const KINDS: [Kind; 16] = [
    Kind::NoTxIdFarFuture,
    Kind::FarFuture,
    Kind::FarAhead,
    Kind::FarPast,
    Kind::NulInCardId,
    Kind::ControlCharInTxId,
    Kind::LongTxId,
    Kind::ZeroAmount,
    Kind::Duplicate,
    Kind::RandomBytes,
    Kind::TruncatedJson,
    Kind::Amount1e400,
    Kind::HugeAmount,
    Kind::NegativeAmount,
    Kind::TooLarge,
    Kind::Empty,
];

impl Kind {
    /// What its dead-letter reason must contain; `None`: it must be decided.
    fn reason(self) -> Option<&'static str> {
        Some(match self {
            Kind::NoTxIdFarFuture => "invalid JSON",
            Kind::FarFuture => "ahead of this machine's clock",
            Kind::FarAhead => "ahead of its partition's stream time",
            Kind::FarPast => "behind its partition's stream time",
            Kind::NulInCardId => "card_id",
            Kind::ControlCharInTxId | Kind::LongTxId => "tx_id",
            Kind::ZeroAmount => return None,
            Kind::Duplicate => "duplicate tx_id",
            Kind::RandomBytes | Kind::TruncatedJson | Kind::Amount1e400 => "invalid JSON",
            Kind::HugeAmount | Kind::NegativeAmount => "amount",
            Kind::TooLarge => "too large",
            Kind::Empty => "empty value",
        })
    }
}

/// A short class of a dead-letter reason, for the summary.
fn reason_class(reason: &str) -> String {
    let class = if reason.starts_with("duplicate tx_id") {
        "duplicate"
    } else if reason.contains("ahead of this machine's clock") {
        "skew_future"
    } else if reason.contains("ahead of its partition's stream time") {
        "skew_ahead"
    } else if reason.contains("behind its partition's stream time") {
        "skew_behind"
    } else if reason.contains("too large") {
        "too_large"
    } else if reason.starts_with("empty value") {
        "empty"
    } else if reason.starts_with("invalid JSON") {
        "json"
    } else if let Some(rest) = reason.strip_prefix("invalid field `") {
        return format!("invalid_{}", rest.split('`').next().unwrap_or("field"));
    } else if reason.contains("postgres refused") {
        "postgres"
    } else {
        "other"
    };
    class.to_owned()
}

/// The payload of hostile record number `h` of `kind`, placed right after
/// `prev` (a valid transaction of the same partition); `recent` holds that
/// partition's latest valid transactions.
fn hostile_payload(
    kind: Kind,
    h: usize,
    prev: &Transaction,
    recent: &VecDeque<Transaction>,
    rng: &mut ChaCha8Rng,
) -> Vec<u8> {
    let like = |id: String| Transaction {
        tx_id: id,
        ..prev.clone()
    };
    let s = |v: &str| serde_json::to_string(v).unwrap();
    match kind {
        Kind::NoTxIdFarFuture => format!(
            r#"{{"ts":"2031-06-01T00:00:00Z","card_id":{},"terminal_id":{},"amount":5}}"#,
            s(&prev.card_id),
            s(&prev.terminal_id)
        )
        .into_bytes(),
        Kind::FarFuture => Transaction {
            ts: chrono::DateTime::parse_from_rfc3339("2031-06-01T00:00:00Z")
                .unwrap()
                .to_utc()
                + chrono::Duration::minutes(h as i64),
            ..like(format!("chaos-future-{h}"))
        }
        .encode(),
        Kind::FarAhead => {
            let ts = prev.ts + chrono::Duration::days(200);
            assert!(
                ts < chrono::Utc::now() - chrono::Duration::days(1),
                "a far-ahead record must still be in the wall clock's past"
            );
            Transaction {
                ts,
                ..like(format!("chaos-ahead-{h}"))
            }
            .encode()
        }
        Kind::FarPast => Transaction {
            ts: prev.ts - chrono::Duration::days(900),
            ..like(format!("chaos-past-{h}"))
        }
        .encode(),
        Kind::NulInCardId => Transaction {
            card_id: format!("ca\u{0}rd-{h}"),
            ..like(format!("chaos-nul-{h}"))
        }
        .encode(),
        Kind::ControlCharInTxId => like(format!("chaos-\u{1b}[2J-{h}")).encode(),
        Kind::LongTxId => like(format!("chaos-long-{h}-{}", "x".repeat(200))).encode(),
        Kind::ZeroAmount => Transaction {
            amount: 0.0,
            ..like(format!("chaos-zero-{h}"))
        }
        .encode(),
        Kind::Duplicate => {
            let original = &recent[rng.gen_range(0..recent.len())];
            Transaction {
                ts: prev.ts,
                amount: original.amount + 1.0,
                ..original.clone()
            }
            .encode()
        }
        Kind::RandomBytes => {
            let n = rng.gen_range(1..=300);
            (0..n).map(|_| rng.gen::<u8>()).collect()
        }
        Kind::TruncatedJson => {
            let full = like(format!("chaos-cut-{h}")).encode();
            full[..rng.gen_range(1..full.len() - 1)].to_vec()
        }
        Kind::Amount1e400 => format!(
            r#"{{"tx_id":"chaos-inf-{h}","ts":{},"card_id":{},"terminal_id":{},"amount":1e400}}"#,
            serde_json::to_string(&prev.ts).unwrap(),
            s(&prev.card_id),
            s(&prev.terminal_id)
        )
        .into_bytes(),
        Kind::HugeAmount => Transaction {
            amount: 1e15,
            ..like(format!("chaos-huge-{h}"))
        }
        .encode(),
        Kind::NegativeAmount => Transaction {
            amount: -0.01,
            ..like(format!("chaos-neg-{h}"))
        }
        .encode(),
        Kind::TooLarge => format!(
            r#"{{"tx_id":"chaos-big-{h}","pad":"{}"}}"#,
            "x".repeat(70_000)
        )
        .into_bytes(),
        Kind::Empty => Vec::new(),
    }
}

/// A card's partition: a stable hash, so the input is the same in every
/// world (the records are produced with explicit partitions).
fn partition_of(card: &str, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in card.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % partitions as u64) as i32
}

/// What was produced to a world's topics.
#[derive(Debug, PartialEq)]
struct Input {
    /// Records in the transactions topic: simulated plus hostile.
    records: u64,
    simulated: u64,
    labels: u64,
    /// Every hostile record by (partition, offset).
    hostile: BTreeMap<(i32, i64), Kind>,
}

impl Input {
    fn expected_decided(&self) -> u64 {
        self.records - self.expected_dead()
    }

    fn expected_dead(&self) -> u64 {
        self.hostile
            .values()
            .filter(|k| k.reason().is_some())
            .count() as u64
    }
}

/// The simulated stream with a hostile record after every
/// `hostile_every`-th transaction, in that transaction's partition;
/// deterministic in the parameters.
fn produce_input(world: &World, p: &Params) -> Input {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .unwrap();
    let (tx_topic, labels_topic) = (world.topic("transactions"), world.topic("labels"));
    let send = |topic: &str, partition: Option<i32>, key: &[u8], payload: &[u8]| {
        let mut record = BaseRecord::to(topic).key(key).payload(payload);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        loop {
            match producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("produce: {e}"),
            }
        }
    };
    let sim = Simulator::new(SimConfig {
        max_transactions: Some(p.tx),
        ..SimConfig::for_transactions(p.tx, p.seed)
    });
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x0063_6861_6f73);
    let parts = p.partitions as usize;
    let mut next_offset = vec![0i64; parts];
    let mut recent: Vec<VecDeque<Transaction>> = vec![VecDeque::new(); parts];
    let mut input = Input {
        records: 0,
        simulated: 0,
        labels: 0,
        hostile: BTreeMap::new(),
    };
    for event in sim {
        let tx = match event {
            SimEvent::Label(l) => {
                send(&labels_topic, None, l.tx_id.as_bytes(), &l.encode());
                input.labels += 1;
                continue;
            }
            SimEvent::Transaction { tx, .. } => tx,
        };
        let part = partition_of(&tx.card_id, p.partitions);
        let i = part as usize;
        send(&tx_topic, Some(part), tx.card_id.as_bytes(), &tx.encode());
        next_offset[i] += 1;
        input.simulated += 1;
        recent[i].push_back(tx.clone());
        if recent[i].len() > 32 {
            recent[i].pop_front();
        }
        if input.simulated as usize % p.hostile_every != p.hostile_every / 2 {
            continue;
        }
        let h = input.hostile.len();
        let kind = p.kinds[h % p.kinds.len()];
        let payload = hostile_payload(kind, h, &tx, &recent[i], &mut rng);
        send(&tx_topic, Some(part), tx.card_id.as_bytes(), &payload);
        input.hostile.insert((part, next_offset[i]), kind);
        next_offset[i] += 1;
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    input.records = next_offset.iter().sum::<i64>() as u64;
    input
}

// ------------------------------------------------------------- outcomes --

/// What a world's database says once the stream is done.
struct Outcome {
    decided: i64,
    /// (partition, offset) → reason.
    dead: BTreeMap<(i32, i64), String>,
    /// tx_id → md5 of the stored features.
    features: HashMap<String, String>,
    incomplete: i64,
    duplicate_tx_ids: i64,
    offsets_decided_twice: i64,
    offsets_decided_and_dead: i64,
    /// (partition, offset) of every decision of a hostile `chaos-zero-…`.
    zero_decided: Vec<(i32, i64)>,
}

impl Outcome {
    async fn read(world: &World) -> Outcome {
        let topic = world.topic("transactions");
        let dead = sqlx::query(
            "SELECT source_partition, source_offset, reason FROM dead_letters WHERE source_topic = $1",
        )
        .bind(&topic)
        .fetch_all(&world.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
        let features = sqlx::query("SELECT tx_id, md5(features::text) FROM risk_decisions")
            .fetch_all(&world.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let zero_decided = sqlx::query(
            "SELECT source_partition, source_offset FROM risk_decisions WHERE tx_id LIKE 'chaos-zero-%'",
        )
        .fetch_all(&world.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        Outcome {
            decided: world.count("SELECT count(*) FROM risk_decisions").await,
            dead,
            features,
            incomplete: world
                .count("SELECT count(*) FROM risk_decisions WHERE NOT state_complete")
                .await,
            duplicate_tx_ids: world
                .count("SELECT count(*) - count(DISTINCT tx_id) FROM risk_decisions")
                .await,
            offsets_decided_twice: world
                .count(
                    "SELECT count(*) FROM (SELECT 1 FROM risk_decisions
                      GROUP BY source_partition, source_offset HAVING count(*) > 1) d",
                )
                .await,
            offsets_decided_and_dead: world
                .count(&format!(
                    "SELECT count(*) FROM risk_decisions d JOIN dead_letters l
                        ON l.source_topic = '{topic}' AND l.source_partition = d.source_partition
                       AND l.source_offset = d.source_offset"
                ))
                .await,
            zero_decided,
        }
    }

    /// Every hostile record met its fate, and nothing else was dead-lettered.
    fn check_hostile(&self, input: &Input) -> Vec<String> {
        let mut problems = Vec::new();
        let zero: std::collections::BTreeSet<_> = self.zero_decided.iter().copied().collect();
        for (at, kind) in &input.hostile {
            match (kind.reason(), self.dead.get(at)) {
                (Some(want), Some(reason)) if reason.contains(want) => {}
                (None, None) if zero.contains(at) => {}
                (want, got) => problems.push(format!(
                    "{kind:?} at p{}@{}: expected {}, got {}",
                    at.0,
                    at.1,
                    want.map_or("a decision".into(), |w| format!(
                        "a dead letter saying {w:?}"
                    )),
                    got.map_or("no dead letter".into(), |r| format!("{r:?}"))
                )),
            }
        }
        for (at, reason) in &self.dead {
            if !input.hostile.contains_key(at) {
                problems.push(format!(
                    "simulated record p{}@{} dead-lettered: {reason:?}",
                    at.0, at.1
                ));
            }
        }
        problems
    }

    fn dead_by_class(&self) -> BTreeMap<String, usize> {
        let mut by = BTreeMap::new();
        for reason in self.dead.values() {
            *by.entry(reason_class(reason)).or_default() += 1;
        }
        by
    }
}

// ------------------------------------------------------------- the fleet --

/// The engine instances of the chaos world, in slots, and their supervisor:
/// an instance that exits on its own is restarted, and why it exited is noted.
struct Fleet<'a> {
    world: &'a World,
    log_dir: PathBuf,
    slots: Vec<Option<Engine>>,
    starts: usize,
    /// Exits nobody asked for: (slot, status, the last error lines of its log).
    unexpected: Vec<String>,
}

impl<'a> Fleet<'a> {
    fn new(world: &'a World, log_dir: &Path) -> Fleet<'a> {
        Fleet {
            world,
            log_dir: log_dir.to_owned(),
            slots: Vec::new(),
            starts: 0,
            unexpected: Vec::new(),
        }
    }

    fn start(&mut self, slot: usize) {
        self.starts += 1;
        let log = self
            .log_dir
            .join(format!("engine-{slot}-{:03}.log", self.starts));
        let engine = Engine::start(&self.world.config_path, &log);
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        self.slots[slot] = Some(engine);
    }

    fn running(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|s| self.slots[*s].is_some())
            .collect()
    }

    fn supervise(&mut self) {
        for slot in self.running() {
            let engine = self.slots[slot].as_mut().unwrap();
            if let Some(status) = engine.child.try_wait().unwrap() {
                let log = strip_ansi(&std::fs::read_to_string(&engine.log).unwrap_or_default());
                let errors: Vec<&str> = log.lines().filter(|l| l.contains("ERROR")).collect();
                let why = errors[errors.len().saturating_sub(2)..].join("\n    ");
                let note = format!(
                    "instance {slot} ({}) exited on its own ({status}):\n    {why}",
                    engine.log.display()
                );
                println!("chaos: {note}");
                self.unexpected.push(note);
                self.start(slot);
            }
        }
    }

    fn kill9_and_restart(&mut self, slot: usize) {
        if let Some(engine) = self.slots[slot].as_mut() {
            engine.kill9();
        }
        self.start(slot);
    }

    /// Start or gracefully stop instances until `n` run; the exit statuses
    /// of those stopped.
    fn scale_to(&mut self, n: usize) -> Vec<String> {
        let mut problems = Vec::new();
        while self.running().len() < n {
            let free = (0..=self.slots.len())
                .find(|s| self.slots.get(*s).is_none_or(Option::is_none))
                .unwrap();
            self.start(free);
        }
        while self.running().len() > n {
            let slot = *self.running().last().unwrap();
            let mut engine = self.slots[slot].take().unwrap();
            let status = engine.terminate();
            if !status.success() {
                problems.push(format!(
                    "instance {slot} stopped with {status} on SIGTERM:\n{}",
                    engine.log_tail()
                ));
            }
        }
        problems
    }
}

/// Log text without the terminal colours `tracing` writes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ------------------------------------------------------------ monitoring --

/// A span in which a partition's committed offset did not move while it
/// had records left.
#[derive(Debug, Clone)]
struct Stall {
    partition: i32,
    from: Instant,
    to: Instant,
}

impl Stall {
    fn length(&self) -> Duration {
        self.to.duration_since(self.from)
    }
}

#[derive(Debug, Default)]
struct Watch {
    /// Committed records, summed over partitions.
    committed: i64,
    /// partition → (committed offset, when it was seen to move).
    last: BTreeMap<i32, (i64, Instant)>,
    stalls: Vec<Stall>,
    samples: u64,
    failed_samples: u64,
}

/// Polls the committed offsets every 250 ms on its own pool (tolerating a
/// Postgres that is down): progress for the schedule, stalls for the report.
struct Monitor {
    watch: Arc<Mutex<Watch>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    fn start(world: &World, ends: BTreeMap<i32, i64>) -> Monitor {
        let watch = Arc::new(Mutex::new(Watch::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, s) = (watch.clone(), stop.clone());
        let url = world.db_url.clone();
        let topic = world.topic("transactions");
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(2))
                .connect_lazy(&url)
                .unwrap();
            {
                let mut w = w.lock().unwrap();
                for p in ends.keys() {
                    w.last.insert(*p, (0, started));
                }
            }
            while !s.load(Ordering::Relaxed) {
                let rows = sqlx::query(
                    "SELECT partition, greatest(next_offset, 0) FROM kafka_offsets WHERE topic = $1",
                )
                .bind(&topic)
                .fetch_all(&pool)
                .await;
                let now = Instant::now();
                {
                    let mut guard = w.lock().unwrap();
                    let w = &mut *guard;
                    match rows {
                        Err(_) => w.failed_samples += 1,
                        Ok(rows) => {
                            w.samples += 1;
                            let stored: BTreeMap<i32, i64> =
                                rows.iter().map(|r| (r.get(0), r.get(1))).collect();
                            w.committed = stored.values().sum();
                            for (p, end) in &ends {
                                let offset = stored.get(p).copied().unwrap_or(0);
                                let (was, since) = w.last[p];
                                if offset != was {
                                    if was < *end {
                                        w.stalls.push(Stall {
                                            partition: *p,
                                            from: since,
                                            to: now,
                                        });
                                    }
                                    w.last.insert(*p, (offset, now));
                                }
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            pool.close().await;
        });
        Monitor { watch, stop, task }
    }

    fn committed(&self) -> i64 {
        self.watch.lock().unwrap().committed
    }

    async fn finish(self, ends: &BTreeMap<i32, i64>) -> Watch {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        let mut w = Arc::try_unwrap(self.watch)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default();
        let now = Instant::now();
        let open: Vec<Stall> = w
            .last
            .iter()
            .filter(|(p, (offset, _))| offset < &ends[p])
            .map(|(p, (_, since))| Stall {
                partition: *p,
                from: *since,
                to: now,
            })
            .collect();
        w.stalls.extend(open);
        w
    }
}

/// One fault the run injected.
#[derive(Debug, Clone)]
struct Fault {
    what: String,
    from: Instant,
    to: Instant,
    /// Committed records when it started; < N means mid-stream.
    at_progress: i64,
}

// ----------------------------------------------------------------- plan --

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Scale(usize),
    Kill,
    BrokerRestart,
    PostgresOutage,
}

/// The steps and the share of the stream committed before each: scale up
/// early, the kills, the broker restart (a third in) and the Postgres
/// outage (two thirds in) spread over 8–85 %, scale down at 92 %.
fn plan(p: &Params) -> Vec<(f64, Step)> {
    let mut middle = vec![Step::Kill; p.kills];
    let m = middle.len() + 2;
    middle.insert(m / 3, Step::BrokerRestart);
    middle.insert((2 * m) / 3, Step::PostgresOutage);
    let mut steps = vec![(0.03, Step::Scale(p.max_instances))];
    for (i, step) in middle.into_iter().enumerate() {
        steps.push((0.08 + 0.77 * i as f64 / (m - 1).max(1) as f64, step));
    }
    steps.push((0.92, Step::Scale(1)));
    steps
}

// ------------------------------------------------------------- the test --

fn kept(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the chaos run: `make chaos` (long; stops the shared stack)"]
async fn chaos_run() {
    let p = Params::from_env();
    std::fs::create_dir_all(&p.log_dir).unwrap();
    println!("chaos: {p:?}");
    let run_started = Instant::now();
    let wait_timeout = Duration::from_secs(600 + (p.tx / 200) as u64);

    // The fault-free baseline: the same input through one instance.
    let t = Instant::now();
    let mut clean_world = World::new("chaosclean", p.partitions).await;
    let input = produce_input(&clean_world, &p);
    let produce_secs = t.elapsed().as_secs_f64();
    println!(
        "chaos: produced {} records ({} simulated, {} hostile) and {} labels in {produce_secs:.0} s",
        input.records,
        input.simulated,
        input.hostile.len(),
        input.labels
    );
    let t = Instant::now();
    let mut engine = Engine::start(&clean_world.config_path, &p.log_dir.join("baseline.log"));
    clean_world
        .wait_until_done(&mut [&mut engine], wait_timeout)
        .await;
    let baseline_secs = t.elapsed().as_secs_f64();
    let status = engine.terminate();
    assert!(
        status.success(),
        "baseline exits 0: {status}\n{}",
        engine.log_tail()
    );
    let clean = Outcome::read(&clean_world).await;
    println!(
        "chaos: baseline decided {} and dead-lettered {} in {baseline_secs:.0} s",
        clean.decided,
        clean.dead.len()
    );

    // The chaos world: the same input.
    let mut world = World::new("chaos", p.partitions).await;
    let same = produce_input(&world, &p);
    assert_eq!(same, input, "the input is deterministic");
    let ends = world.end_offsets(&world.topic("transactions"));
    assert_eq!(ends.values().sum::<i64>() as u64, input.records);
    let total = input.records as i64;
    let pg = PgServer::locate().await;
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x6b696c6c);
    let t = Instant::now();
    let monitor = Monitor::start(&world, ends.clone());
    let mut fleet = Fleet::new(&world, &p.log_dir);
    fleet.start(0);
    let mut faults: Vec<Fault> = Vec::new();
    let mut scale_steps: Vec<String> = vec!["1".into()];
    let mut problems: Vec<String> = Vec::new();
    let mut kills = 0;
    let steps = plan(&p);
    for (share, step) in &steps {
        // Wait for the stream to get there (or to end), supervising.
        let target = (*share * total as f64) as i64;
        let mut last = (monitor.committed(), Instant::now());
        loop {
            fleet.supervise();
            let committed = monitor.committed();
            if committed >= target {
                break;
            }
            if committed != last.0 {
                last = (committed, Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(600),
                "no progress for 10 minutes at {committed} of {total} before {step:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
        let at_progress = monitor.committed();
        let from = Instant::now();
        let what = match *step {
            Step::Scale(n) => {
                let was = fleet.running().len();
                problems.extend(fleet.scale_to(n));
                scale_steps.push(n.to_string());
                format!("scale {was}→{n}")
            }
            Step::Kill => {
                let running = fleet.running();
                let slot = running[rng.gen_range(0..running.len())];
                fleet.kill9_and_restart(slot);
                kills += 1;
                format!("kill -9 #{kills} of instance {slot}")
            }
            Step::BrokerRestart => {
                let mut guard = StackGuard::new();
                stop_broker();
                let down = Instant::now();
                while down.elapsed() < p.broker_down {
                    fleet.supervise();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                let stopped = down.duration_since(from).as_secs_f64();
                guard.restore();
                format!(
                    "broker restart ({stopped:.0} s to stop, up {:.0} s later)",
                    from.elapsed().as_secs_f64() - stopped
                )
            }
            Step::PostgresOutage => {
                let mut guard = StackGuard::new();
                pg.stop();
                let down = Instant::now();
                while down.elapsed() < p.pg_outage {
                    fleet.supervise();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                guard.restore();
                format!(
                    "postgres outage (up {:.0} s later)",
                    from.elapsed().as_secs_f64()
                )
            }
        };
        println!(
            "chaos: {what} at {at_progress}/{total} committed, {:.0} s in",
            t.elapsed().as_secs_f64()
        );
        faults.push(Fault {
            what,
            from,
            to: Instant::now(),
            at_progress,
        });
    }

    // Until every partition is committed to its end.
    let mut last = (monitor.committed(), Instant::now());
    loop {
        fleet.supervise();
        let stored: BTreeMap<i32, i64> = sqlx::query(
            "SELECT partition, greatest(next_offset, 0) FROM kafka_offsets WHERE topic = $1",
        )
        .bind(world.topic("transactions"))
        .fetch_all(&world.pool)
        .await
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default();
        if ends.iter().all(|(p, end)| stored.get(p) == Some(end)) {
            break;
        }
        let committed = stored.values().sum::<i64>();
        if committed != last.0 {
            last = (committed, Instant::now());
        }
        assert!(
            last.1.elapsed() < wait_timeout.min(Duration::from_secs(900)),
            "no progress at {committed} of {total}; logs in {}",
            p.log_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let chaos_secs = t.elapsed().as_secs_f64();
    problems.extend(fleet.scale_to(0));
    let unexpected = std::mem::take(&mut fleet.unexpected);
    drop(fleet);
    reconnect(&mut world).await;
    reconnect(&mut clean_world).await;
    let watch = monitor.finish(&ends).await;
    let outcome = Outcome::read(&world).await;

    // The figures.
    let dead = outcome.dead.len() as i64;
    if outcome.decided + dead != total {
        problems.push(format!(
            "decided {} + dead-lettered {dead} = {} ≠ N = {total}",
            outcome.decided,
            outcome.decided + dead
        ));
    }
    for (name, n) in [
        ("duplicate tx_ids among decisions", outcome.duplicate_tx_ids),
        ("offsets decided twice", outcome.offsets_decided_twice),
        (
            "offsets both decided and dead-lettered",
            outcome.offsets_decided_and_dead,
        ),
    ] {
        if n != 0 {
            problems.push(format!("{n} {name}"));
        }
    }
    let hostile_problems = outcome.check_hostile(&input);
    if !hostile_problems.is_empty() {
        problems.push(format!(
            "{} hostile records not handled as expected, e.g. {:?}",
            hostile_problems.len(),
            &hostile_problems[..hostile_problems.len().min(5)]
        ));
    }
    let baseline_hostile = clean.check_hostile(&input);
    if !baseline_hostile.is_empty() {
        problems.push(format!(
            "the baseline itself: {} hostile records not handled as expected, e.g. {:?}",
            baseline_hostile.len(),
            &baseline_hostile[..baseline_hostile.len().min(5)]
        ));
    }
    let differing: Vec<String> = clean
        .features
        .iter()
        .filter(|(id, md5)| outcome.features.get(*id) != Some(md5))
        .map(|(id, _)| id.clone())
        .collect();
    let mut feature_note = String::new();
    let mut feature_note_example: Option<String> = None;
    if !differing.is_empty() || outcome.features.len() != clean.features.len() {
        // Which differing decisions came after a duplicate of their card
        // (dead-lettered, but seen by the featurizer first)?
        let after_duplicate: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM risk_decisions d WHERE d.tx_id = ANY($1)
               AND EXISTS (SELECT 1 FROM dead_letters l
                            WHERE l.reason LIKE 'duplicate tx_id%'
                              AND l.source_partition = d.source_partition
                              AND l.source_offset < d.source_offset
                              AND l.message_key = convert_to(d.card_id, 'UTF8'))",
        )
        .bind(&differing)
        .fetch_one(&world.pool)
        .await
        .unwrap();
        if let Some(id) = differing.iter().min() {
            let example = feature_example(&clean_world, &world, id).await;
            feature_note_example = Some(example);
        }
        feature_note = format!(
            " ({after_duplicate} of them on a card with an earlier dead-lettered duplicate)"
        );
        problems.push(format!(
            "{} of {} decisions have other features than the fault-free run{feature_note}, e.g. {:?}; {} decisions vs {}",
            differing.len(),
            clean.features.len(),
            &differing[..differing.len().min(5)],
            outcome.features.len(),
            clean.features.len()
        ));
    }
    if outcome.incomplete != clean.incomplete {
        problems.push(format!(
            "{} decisions scored with incomplete state (baseline: {})",
            outcome.incomplete, clean.incomplete
        ));
    }
    let mid_stream = faults.iter().filter(|f| f.at_progress < total).count();
    if kills < p.kills {
        problems.push(format!("only {kills} of {} kills done", p.kills));
    }
    // Stalls: the longest overall, and the longest that no fault explains.
    let overlaps = |s: &Stall| {
        faults
            .iter()
            .filter(|f| s.from <= f.to + p.recovery && f.from <= s.to)
            .map(|f| f.what.clone())
            .collect::<Vec<_>>()
    };
    let longest = watch.stalls.iter().max_by_key(|s| s.length());
    let unexplained = watch
        .stalls
        .iter()
        .filter(|s| overlaps(s).is_empty())
        .max_by_key(|s| s.length());
    let describe = |s: Option<&Stall>| match s {
        None => "none".to_owned(),
        Some(s) => format!(
            "{:.1} s (partition {}, from {:.0} s into the chaos run{})",
            s.length().as_secs_f64(),
            s.partition,
            s.from.saturating_duration_since(t).as_secs_f64(),
            match overlaps(s) {
                f if f.is_empty() => String::new(),
                f => format!(", during {}", f.join(" + ")),
            }
        ),
    };
    if let Some(s) = unexplained {
        if s.length() > p.stall_bound {
            problems.push(format!(
                "a partition stalled {} outside any fault, over the bound of {:?}",
                describe(Some(s)),
                p.stall_bound
            ));
        }
    }

    let mut summary = String::new();
    let w = &mut summary;
    let _ = writeln!(
        w,
        "chaos run summary ({})",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        w,
        "  input: N = {total} records = {} simulated + {} hostile (one after every {}th transaction, {} kinds), {} labels, {} partitions, seed {}",
        input.simulated,
        input.hostile.len(),
        p.hostile_every,
        p.kinds.len(),
        input.labels,
        p.partitions,
        p.seed
    );
    let _ = writeln!(
        w,
        "  decided {} (expected {}), dead-lettered {dead} (expected {}); decided + dead = {}",
        outcome.decided,
        input.expected_decided(),
        input.expected_dead(),
        outcome.decided + dead
    );
    let _ = writeln!(w, "  dead letters by reason: {:?}", outcome.dead_by_class());
    let _ = writeln!(
        w,
        "  hostile records with the expected outcome: {} of {} (baseline: {} of {}); $0 transactions decided: {}",
        input.hostile.len() - hostile_problems.len(),
        input.hostile.len(),
        input.hostile.len() - baseline_hostile.len(),
        input.hostile.len(),
        outcome.zero_decided.len()
    );
    let _ = writeln!(
        w,
        "  duplicates: {} tx_ids decided twice, {} offsets decided twice, {} offsets both decided and dead",
        outcome.duplicate_tx_ids, outcome.offsets_decided_twice, outcome.offsets_decided_and_dead
    );
    let _ = writeln!(
        w,
        "  features compared with the fault-free run: {} decisions, {} differ{feature_note}; incomplete state: {} (baseline {})",
        clean.features.len(),
        differing.len(),
        outcome.incomplete,
        clean.incomplete
    );
    if let Some(example) = &feature_note_example {
        let _ = writeln!(w, "    e.g. {example}");
    }
    let _ = writeln!(
        w,
        "  faults: {kills} kill -9s, {} broker restart, {} postgres outage, scale {}; {} of {} steps mid-stream",
        faults.iter().filter(|f| f.what.starts_with("broker")).count(),
        faults.iter().filter(|f| f.what.starts_with("postgres")).count(),
        scale_steps.join("→"),
        mid_stream,
        faults.len()
    );
    for f in &faults {
        let _ = writeln!(
            w,
            "    {:>6.1} s  {:<32} at {}/{total} committed, took {:.1} s",
            f.from.saturating_duration_since(t).as_secs_f64(),
            f.what,
            f.at_progress,
            f.to.duration_since(f.from).as_secs_f64()
        );
    }
    let _ = writeln!(
        w,
        "  instance exits nobody asked for (restarted, as a supervisor would): {}",
        unexpected.len()
    );
    for u in &unexpected {
        let _ = writeln!(w, "    {u}");
    }
    let _ = writeln!(
        w,
        "  longest a partition's committed offset did not move while it had lag: {}; outside the faults (+{} s recovery): {} (bound {} s)",
        describe(longest),
        p.recovery.as_secs(),
        describe(unexplained),
        p.stall_bound.as_secs()
    );
    let _ = writeln!(
        w,
        "  offsets sampled {} times ({} failed: postgres down)",
        watch.samples, watch.failed_samples
    );
    let _ = writeln!(
        w,
        "  wall time: {:.0} s total; produce {produce_secs:.0} s (x2), baseline {baseline_secs:.0} s, chaos run {chaos_secs:.0} s",
        run_started.elapsed().as_secs_f64()
    );
    let _ = writeln!(w, "  engine logs: {}", p.log_dir.display());
    let _ = writeln!(w, "  problems: {}", problems.len());
    for problem in &problems {
        let _ = writeln!(w, "    - {problem}");
    }
    println!("{summary}");
    kept(&p.log_dir.join("summary.txt"), &summary);

    if !problems.is_empty() {
        panic!(
            "the chaos run failed (databases {} and {} kept for inspection):\n{summary}",
            clean_world.name, world.name
        );
    }
    world.assert_exactly_once(input.records).await;
    if !p.keep_db {
        clean_world.tear_down().await;
        world.tear_down().await;
    }
}

/// How one decision's features and history differ between the two runs.
async fn feature_example(clean: &World, chaos: &World, tx_id: &str) -> String {
    async fn read(world: &World, tx_id: &str) -> (serde_json::Value, Vec<String>) {
        let row = sqlx::query(
            "SELECT d.features, e.history_tx_ids FROM decision_features d
               JOIN attention_explanations e USING (tx_id) WHERE tx_id = $1",
        )
        .bind(tx_id)
        .fetch_one(&world.pool)
        .await
        .unwrap();
        (row.get(0), row.get(1))
    }
    let (a, ha) = read(clean, tx_id).await;
    let (b, hb) = read(chaos, tx_id).await;
    let keys: Vec<String> = a
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| b.get(k.as_str()) != Some(*v))
                .map(|(k, v)| {
                    format!(
                        "{k}: {v} vs {}",
                        b.get(k.as_str()).unwrap_or(&serde_json::Value::Null)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let repeated: Vec<&String> = ha
        .iter()
        .enumerate()
        .filter(|(i, id)| ha[..*i].contains(id))
        .map(|(_, id)| id)
        .collect();
    format!(
        "{tx_id}: fault-free vs chaos {keys:?}; history fault-free {} ids{}, chaos {} ids",
        ha.len(),
        if repeated.is_empty() {
            String::new()
        } else {
            format!(" ({repeated:?} twice)")
        },
        hb.len()
    )
}
