//! The Postgres sink: everything a batch produced — decisions, attention
//! explanations, dead letters, labels — and the next Kafka offset of every
//! partition it covers, in ONE transaction.
//!
//! That transaction is the commit point of the engine: a batch is either
//! wholly in Postgres with its offsets or not at all, so a restart resumes
//! exactly where the data ends. Each offset row carries an `epoch`; a write
//! whose epoch is stale (another instance took the partition over) is
//! rejected as [`SinkError::Fenced`] and nothing of it lands.
//!
//! This module also owns the reads that rebuild engine state from Postgres
//! (partition claims, card histories and terminal statistics) and the month
//! partitions of the decision tables ([`partitions`]).

mod copy;
pub mod partitions;
pub mod schema;
pub mod state;

use crate::decision::Policy;
use crate::features;
use crate::onnx::Manifest;
use chrono::{DateTime, Utc};
use copy::BinaryCopy;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("postgres: {}", describe(.0))]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "partition {topic}/{partition} is owned by another instance now (epoch {epoch} is stale)"
    )]
    Fenced {
        topic: String,
        partition: i32,
        epoch: i64,
    },
    #[error("dead-letter topic: {0}")]
    Publish(String),
}

/// What to do about a failed sink transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection, the server or a race: retry the same batch.
    Retry,
    /// Postgres refused a value (SQLSTATE class 22 or 23): write the batch
    /// again row by row and dead-letter the rows it refuses.
    Data,
    /// Anything else (privileges, schema, fencing): retrying cannot help.
    Fatal,
}

/// `sqlx::Error` with the SQLSTATE in front, when there is one.
fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => match d.code() {
            Some(code) => format!("{code} {}", crate::event::printable(d.message())),
            None => crate::event::printable(d.message()),
        },
        other => crate::event::printable(&other.to_string()),
    }
}

impl SinkError {
    /// Only errors about the connection or the server are retried; errors
    /// about the data isolate the offending rows; the rest stop the engine.
    pub fn failure(&self) -> Failure {
        match self {
            SinkError::Db(sqlx::Error::Database(d)) => match d.code().as_deref() {
                // 08 connection, 40 serialization/deadlock, 53 resources,
                // 57 operator intervention (shutdown, cannot connect now), 58 system.
                Some(c)
                    if ["08", "40", "53", "57", "58"]
                        .iter()
                        .any(|k| c.starts_with(k)) =>
                {
                    Failure::Retry
                }
                Some(c) if c.starts_with("22") || c.starts_with("23") => Failure::Data,
                _ => Failure::Fatal,
            },
            SinkError::Db(
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_),
            ) => Failure::Retry,
            SinkError::Db(sqlx::Error::Encode(_)) => Failure::Data,
            SinkError::Publish(_) => Failure::Retry,
            SinkError::Db(_) | SinkError::Migrate(_) | SinkError::Fenced { .. } => Failure::Fatal,
        }
    }

    /// Worth retrying the same batch as it is.
    pub fn is_transient(&self) -> bool {
        self.failure() == Failure::Retry
    }

    /// The SQLSTATE, for a dead letter's kind.
    fn code(&self) -> Option<String> {
        match self {
            SinkError::Db(sqlx::Error::Database(d)) => d.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// Where dead letters go besides the `dead_letters` table: the pipeline's
/// Kafka DLQ topic. Called inside the batch's transaction, just before it
/// commits, with every dead letter of the batch (those found while writing
/// included), so the topic has at least what the table has; a retried
/// batch publishes again, under the same stable keys.
pub trait PublishDeadLetters: Send + Sync {
    fn publish<'a>(
        &'a self,
        dead: &'a [DeadLetter],
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, SinkError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await?)
}

pub use schema::{check_migrations, migrate};

/// Summarise the days for the analyst views (`refresh_summaries()`,
/// migration `20261203000003_daily_summaries.sql`): the number of days
/// (re)summarised; 0 while another refresh runs.
pub async fn refresh_summaries(pool: &PgPool, recheck_days: i32) -> Result<i32, SinkError> {
    Ok(sqlx::query_scalar("SELECT refresh_summaries($1)")
        .bind(recheck_days)
        .fetch_one(pool)
        .await?)
}

/// Record the model in force (idempotent).
pub async fn register_model(pool: &PgPool, m: &Manifest) -> Result<(), SinkError> {
    sqlx::query(
        "INSERT INTO model_versions (name, version, sha256, task, feature_names, manifest)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&m.name)
    .bind(&m.version)
    .bind(&m.sha256)
    .bind(&m.task)
    .bind(&m.feature_names)
    .bind(serde_json::to_value(m).unwrap_or_default())
    .execute(pool)
    .await?;
    Ok(())
}

/// The version of this threshold content, registering it on first use.
///
/// Two statements, so the engine needs no UPDATE on `threshold_sets`: the
/// insert waits for a concurrent insert of the same content to commit (or
/// roll back), and the select, in a later snapshot, then sees the row.
pub async fn register_thresholds(pool: &PgPool, set: &Policy) -> Result<i32, SinkError> {
    let sha = set.content_sha256();
    sqlx::query(
        "INSERT INTO threshold_sets (content_sha256, thresholds, changed_by) VALUES ($1, $2, $3)
         ON CONFLICT (content_sha256) DO NOTHING",
    )
    .bind(&sha)
    .bind(set.canonical_json())
    .bind(set.changed_by())
    .execute(pool)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT version FROM threshold_sets WHERE content_sha256 = $1")
            .bind(&sha)
            .fetch_one(pool)
            .await?,
    )
}

/// Record that `engine` put policy `version` (and `models`) in force, for
/// `reason` (`start` or `reload`): the audit row of `policy_changes`.
pub async fn record_policy_change(
    pool: &PgPool,
    version: i32,
    changed_by: &str,
    models: &str,
    engine: &str,
    reason: &str,
) -> Result<(), SinkError> {
    sqlx::query(
        "INSERT INTO policy_changes (threshold_version, changed_by, models, engine, reason)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(version)
    .bind(changed_by)
    .bind(models)
    .bind(engine)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// A claimed partition: where to resume and the epoch that fences older owners.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Claim {
    pub partition: i32,
    /// `None`: never committed, start from the beginning.
    pub next_offset: Option<i64>,
    pub epoch: i64,
    /// The partition's committed event-time clock, in ms.
    pub clock_ms: Option<i64>,
}

/// Take ownership of partitions: bump each epoch (fencing any previous owner,
/// whose in-flight commit either landed before this or will be rejected) and
/// read the committed position.
pub async fn claim_partitions(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partitions: &[i32],
    owner: &str,
) -> Result<Vec<Claim>, SinkError> {
    let rows = sqlx::query(
        "INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset, epoch, owner)
         SELECT $1, $2, p, -1, 1, $4 FROM unnest($3::int[]) AS p
         ON CONFLICT (consumer_group, topic, partition) DO UPDATE
            SET epoch = kafka_offsets.epoch + 1, owner = EXCLUDED.owner, updated_at = now()
         RETURNING partition, next_offset, epoch, max_event_ts",
    )
    .bind(group)
    .bind(topic)
    .bind(partitions)
    .bind(owner)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let next: i64 = r.get(1);
            let clock: Option<DateTime<Utc>> = r.get(3);
            Claim {
                partition: r.get(0),
                next_offset: (next >= 0).then_some(next),
                epoch: r.get(2),
                clock_ms: clock.map(|t| t.timestamp_millis()),
            }
        })
        .collect())
}

/// The newest event-time clock committed by any partition of `topic` (ms).
pub async fn stream_clock(
    pool: &PgPool,
    group: &str,
    topic: &str,
) -> Result<Option<i64>, SinkError> {
    let newest: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT max(max_event_ts) FROM kafka_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_one(pool)
    .await?;
    Ok(newest.map(|t| t.timestamp_millis()))
}

/// Committed progress of every partition of `topic`: `(partition, next_offset, max_event_ts)`.
pub async fn committed_progress(
    pool: &PgPool,
    group: &str,
    topic: &str,
) -> Result<Vec<(i32, i64, Option<DateTime<Utc>>)>, SinkError> {
    let rows = sqlx::query(
        "SELECT partition, next_offset, max_event_ts FROM kafka_offsets WHERE consumer_group = $1 AND topic = $2",
    )
    .bind(group)
    .bind(topic)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// One decided transaction, ready to store.
#[derive(Debug, Clone)]
pub struct DecisionRow {
    pub tx: crate::event::Transaction,
    pub score: f32,
    pub decision: crate::decision::Decision,
    pub features: Vec<f32>,
    pub feature_weights: Vec<f32>,
    pub history_tx_ids: Vec<std::sync::Arc<str>>,
    pub history_weights: Vec<f32>,
    pub state_complete: bool,
    /// `threshold_sets.version` of the policy this row was decided under.
    pub threshold_version: i32,
    /// Names of the rules that fired, in precedence order.
    pub rules_fired: Vec<std::sync::Arc<str>>,
    /// −log p(this MCC | the card's previous MCCs) under the merchant language
    /// model, in nats; `None` when no `[language_model]` is configured.
    pub mcc_surprise: Option<f32>,
    pub partition: i32,
    pub offset: i64,
    /// When Kafka received the record: the start of the end-to-end latency.
    pub kafka_ts: Option<DateTime<Utc>>,
    /// The shadow model's would-be decision, when one is configured and
    /// scored this row.
    pub shadow: Option<ShadowRow>,
}

/// What the shadow model would have decided on a row (`shadow_decisions`).
#[derive(Debug, Clone)]
pub struct ShadowRow {
    pub score: f32,
    pub decision: crate::decision::Decision,
    pub rules_fired: Vec<std::sync::Arc<str>>,
    pub feature_weights: Vec<f32>,
    pub history_weights: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
    /// Why, as a short label for metrics (`json`, `invalid_amount`,
    /// `skew_ahead`, `duplicate`, `postgres_22021`, …).
    pub kind: &'static str,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The value's real length when `payload` is only its prefix (an
    /// oversized record is never copied whole).
    pub truncated_from: Option<usize>,
}

impl DeadLetter {
    /// A transaction whose tx_id is already decided (from another offset).
    /// The pipeline finds most before featurizing; the sink's insert is the
    /// second line of defence. Both say it the same way.
    pub fn duplicate(
        topic: &str,
        partition: i32,
        offset: i64,
        tx: &crate::event::Transaction,
    ) -> DeadLetter {
        DeadLetter {
            topic: topic.to_owned(),
            partition,
            offset,
            reason: format!("duplicate tx_id {:?}: already decided", tx.tx_id),
            kind: "duplicate",
            key: Some(tx.card_id.clone().into_bytes()),
            payload: Some(tx.encode()),
            truncated_from: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct LabelRow {
    pub label: crate::event::Label,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The new committed position of one partition.
#[derive(Debug, Clone)]
pub struct OffsetUpdate {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
    pub max_event_ts: Option<DateTime<Utc>>,
    pub epoch: i64,
}

/// Everything one batch writes.
#[derive(Debug, Clone, Default)]
pub struct SinkBatch {
    /// The model that scored `decisions`.
    pub model: ModelId,
    /// The shadow model that scored beside it, when rows carry a `shadow`.
    pub shadow_model: Option<ModelId>,
    pub decisions: Vec<DecisionRow>,
    pub dead_letters: Vec<DeadLetter>,
    pub labels: Vec<LabelRow>,
    pub offsets: Vec<OffsetUpdate>,
}

impl SinkBatch {
    /// The records it accounts for: decided, dead-lettered, labels.
    pub fn rows(&self) -> i64 {
        (self.decisions.len() + self.dead_letters.len() + self.labels.len()) as i64
    }
}

/// What a committed batch amounted to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub decisions: usize,
    /// Transactions whose tx_id was already decided from another offset:
    /// dead-lettered as duplicates instead.
    pub duplicates: usize,
    pub dead_letters: usize,
    pub labels: usize,
    /// The kind of each dead letter written (for metrics).
    pub dead_kinds: Vec<&'static str>,
    /// Postgres refused the batch's binary COPY (a tx_id decided meanwhile,
    /// or a value it does not take): it went in by the INSERT path.
    pub copy_refused: bool,
}

/// Where a pipeline's rows come from.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub source_topic: String,
}

/// A model as `model_versions` names it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelId {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

impl From<&Manifest> for ModelId {
    fn from(m: &Manifest) -> Self {
        ModelId {
            name: m.name.clone(),
            version: m.version.clone(),
            sha256: m.sha256.clone(),
        }
    }
}

/// How [`write_batch`] writes rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// All rows of a table in one statement: the fast path.
    Bulk,
    /// One row at a time under a savepoint: rows Postgres refuses become
    /// dead letters with its reason, and the rest of the batch commits.
    RowByRow,
}

/// Write a batch and its offsets atomically. Fails with [`SinkError::Fenced`]
/// (and writes nothing) if any partition's epoch is stale.
///
/// In [`Mode::Bulk`] the rows go in by binary `COPY`, all or nothing, with no
/// savepoint around it (`SAVEPOINT` and `RELEASE`: two round trips a batch
/// saved while nothing is refused).
/// When Postgres refuses the COPY (a tx_id decided meanwhile by another
/// instance, or a value it does not take), that transaction is rolled back
/// and the batch is written again in a new one by the INSERT path, which
/// sorts such rows out.
pub async fn write_batch(
    pool: &PgPool,
    group: &str,
    p: &Provenance,
    b: &SinkBatch,
    dlq: &dyn PublishDeadLetters,
    mode: Mode,
) -> Result<Written, SinkError> {
    let rows = match mode {
        Mode::Bulk => Rows::Copy,
        Mode::RowByRow => Rows::OneByOne,
    };
    match transaction(pool, group, p, b, dlq, rows).await? {
        Ok(written) => Ok(written),
        Err(refused) => {
            tracing::info!(error = %refused, rows = b.decisions.len(), "postgres refused the batch's COPY; inserting it");
            let written = transaction(pool, group, p, b, dlq, Rows::Insert).await?;
            Ok(Written {
                copy_refused: true,
                ..written.expect("only the COPY path is refused as a whole")
            })
        }
    }
}

/// How one [`transaction`] writes the batch's decisions and labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// Binary `COPY` ([`copy_decided`]), all or nothing.
    Copy,
    /// One `INSERT` per table ([`insert_decided`]): duplicates become dead letters.
    Insert,
    /// One row at a time under a savepoint: rows Postgres refuses become
    /// dead letters with its reason.
    OneByOne,
}

/// One attempt at the batch's transaction. `Ok(Err(e))`: Postgres refused
/// the COPY of [`Rows::Copy`] as a data error; nothing was written.
async fn transaction(
    pool: &PgPool,
    group: &str,
    p: &Provenance,
    b: &SinkBatch,
    dlq: &dyn PublishDeadLetters,
    rows: Rows,
) -> Result<Result<Written, SinkError>, SinkError> {
    let mut tx = pool.begin().await?;
    // Offsets first: the row locks serialize this commit against a new
    // owner's claim, so the fence below is decisive.
    advance_offsets(&mut tx, group, &b.offsets).await?;

    let mut written = Written::default();
    let mut dead = b.dead_letters.clone();
    let decisions: Vec<&DecisionRow> = b.decisions.iter().collect();
    match rows {
        Rows::Copy | Rows::Insert => {
            if rows == Rows::Insert {
                insert_decided(&mut tx, p, b, &decisions, &mut dead, &mut written).await?;
            } else {
                match copy_decided(&mut tx, p, b, &decisions).await {
                    Ok(()) => written.decisions += decisions.len(),
                    // The transaction is aborted: dropping it rolls it back.
                    Err(e) if e.failure() == Failure::Data => return Ok(Err(e)),
                    Err(e) => return Err(e),
                }
            }
            insert_labels(&mut tx, &b.labels).await?;
            written.labels = b.labels.len();
        }
        Rows::OneByOne => {
            for d in decisions {
                let attempt = isolated(&mut tx, async |tx: &mut sqlx::PgConnection| {
                    let mut w = Written::default();
                    let mut extra = Vec::new();
                    insert_decided(tx, p, b, &[d], &mut extra, &mut w).await?;
                    Ok((w, extra))
                })
                .await?;
                match attempt {
                    Ok((w, extra)) => {
                        written.decisions += w.decisions;
                        written.duplicates += w.duplicates;
                        dead.extend(extra);
                    }
                    Err(e) => dead.push(refused(
                        &e,
                        &p.source_topic,
                        d.partition,
                        d.offset,
                        Some(d.tx.card_id.clone().into_bytes()),
                        Some(d.tx.encode()),
                    )),
                }
            }
            for l in &b.labels {
                let one = std::slice::from_ref(l);
                match isolated(&mut tx, async |tx: &mut sqlx::PgConnection| {
                    insert_labels(tx, one).await
                })
                .await?
                {
                    Ok(()) => written.labels += 1,
                    Err(e) => dead.push(refused(
                        &e,
                        &l.topic,
                        l.partition,
                        l.offset,
                        Some(l.label.tx_id.clone().into_bytes()),
                        Some(l.label.encode()),
                    )),
                }
            }
        }
    }
    if !dead.is_empty() {
        sqlx::query(
            "INSERT INTO dead_letters (source_topic, source_partition, source_offset, reason, message_key, payload)
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::bytea[], $6::bytea[])
             ON CONFLICT DO NOTHING",
        )
        .bind(dead.iter().map(|d| d.topic.as_str()).collect::<Vec<_>>())
        .bind(dead.iter().map(|d| d.partition).collect::<Vec<_>>())
        .bind(dead.iter().map(|d| d.offset).collect::<Vec<_>>())
        .bind(dead.iter().map(|d| d.reason.as_str()).collect::<Vec<_>>())
        .bind(dead.iter().map(|d| d.key.as_deref()).collect::<Vec<_>>())
        .bind(dead.iter().map(|d| d.payload.as_deref()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        dlq.publish(&dead).await.map_err(SinkError::Publish)?;
    }
    written.dead_letters = dead.len();
    written.dead_kinds = dead.iter().map(|d| d.kind).collect();
    tx.commit().await?;
    Ok(Ok(written))
}

/// Move every partition of the batch to its new position, in one statement
/// (one round trip, however many partitions), or fail with
/// [`SinkError::Fenced`] naming a partition whose epoch is stale. The rows
/// are locked in (topic, partition) order, as the batch lists them, so two
/// instances' commits and claims never wait on each other in a circle.
async fn advance_offsets(
    tx: &mut sqlx::PgConnection,
    group: &str,
    offsets: &[OffsetUpdate],
) -> Result<(), SinkError> {
    if offsets.is_empty() {
        return Ok(());
    }
    let moved: Vec<(String, i32)> = sqlx::query_as(
        "WITH wanted AS (
             SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[], $5::timestamptz[], $6::bigint[])
                 AS w(topic, partition, next_offset, max_event_ts, epoch)
         ), locked AS (
             SELECT o.topic, o.partition
               FROM kafka_offsets o
               JOIN wanted w ON o.topic = w.topic AND o.partition = w.partition AND o.epoch = w.epoch
              WHERE o.consumer_group = $1
              ORDER BY o.topic, o.partition
                FOR UPDATE OF o
         )
         UPDATE kafka_offsets o
            SET next_offset = GREATEST(o.next_offset, w.next_offset),
                max_event_ts = GREATEST(o.max_event_ts, w.max_event_ts), updated_at = now()
           FROM wanted w
           JOIN locked l ON l.topic = w.topic AND l.partition = w.partition
          WHERE o.consumer_group = $1 AND o.topic = w.topic AND o.partition = w.partition
            AND o.epoch = w.epoch
         RETURNING o.topic, o.partition",
    )
    .bind(group)
    .bind(offsets.iter().map(|o| o.topic.as_str()).collect::<Vec<_>>())
    .bind(offsets.iter().map(|o| o.partition).collect::<Vec<_>>())
    .bind(offsets.iter().map(|o| o.next_offset).collect::<Vec<_>>())
    .bind(offsets.iter().map(|o| o.max_event_ts).collect::<Vec<_>>())
    .bind(offsets.iter().map(|o| o.epoch).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    match offsets.iter().find(|o| {
        !moved
            .iter()
            .any(|(t, p)| *t == o.topic && *p == o.partition)
    }) {
        None => Ok(()),
        Some(o) => Err(SinkError::Fenced {
            topic: o.topic.clone(),
            partition: o.partition,
            epoch: o.epoch,
        }),
    }
}

/// Run `f` under a savepoint: `Ok(Err(e))` when Postgres refused the data
/// (rolled back to the savepoint, the transaction goes on); `Err` for
/// anything else, which ends the transaction.
async fn isolated<T>(
    tx: &mut sqlx::PgConnection,
    f: impl AsyncFnOnce(&mut sqlx::PgConnection) -> Result<T, SinkError>,
) -> Result<Result<T, SinkError>, SinkError> {
    sqlx::query("SAVEPOINT row").execute(&mut *tx).await?;
    match f(&mut *tx).await {
        Ok(v) => {
            sqlx::query("RELEASE SAVEPOINT row")
                .execute(&mut *tx)
                .await?;
            Ok(Ok(v))
        }
        Err(e) if e.failure() == Failure::Data => {
            sqlx::query("ROLLBACK TO SAVEPOINT row")
                .execute(&mut *tx)
                .await?;
            Ok(Err(e))
        }
        Err(e) => Err(e),
    }
}

/// The dead letter of a row Postgres refused.
fn refused(
    e: &SinkError,
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
) -> DeadLetter {
    DeadLetter {
        topic: topic.to_owned(),
        partition,
        offset,
        reason: format!("postgres refused the row: {e}"),
        kind: match e.code().as_deref() {
            Some(c) if c.starts_with("22") => "postgres_data",
            Some(c) if c.starts_with("23") => "postgres_constraint",
            _ => "postgres",
        },
        key,
        payload,
        truncated_from: None,
    }
}

/// Decisions with their explanations; a tx_id already decided (from
/// another offset) becomes a duplicate dead letter.
async fn insert_decided(
    tx: &mut sqlx::PgConnection,
    p: &Provenance,
    b: &SinkBatch,
    decisions: &[&DecisionRow],
    dead: &mut Vec<DeadLetter>,
    written: &mut Written,
) -> Result<(), SinkError> {
    if decisions.is_empty() {
        return Ok(());
    }
    let inserted = insert_ids(&mut *tx, decisions).await?;
    let mut fresh = Vec::with_capacity(inserted.len());
    let mut seen = std::collections::HashSet::new();
    for d in decisions {
        // The first row of a tx_id inserted it; any other is a duplicate.
        if inserted.contains(&d.tx.tx_id) && seen.insert(d.tx.tx_id.as_str()) {
            fresh.push(*d);
        } else {
            dead.push(DeadLetter::duplicate(
                &p.source_topic,
                d.partition,
                d.offset,
                &d.tx,
            ));
            written.duplicates += 1;
        }
    }
    insert_decisions(&mut *tx, p, &b.model, &fresh).await?;
    insert_explanations(&mut *tx, &fresh).await?;
    if let Some(shadow) = &b.shadow_model {
        insert_shadow(&mut *tx, shadow, &fresh).await?;
    }
    written.decisions += fresh.len();
    Ok(())
}

async fn insert_labels(tx: &mut sqlx::PgConnection, labels: &[LabelRow]) -> Result<(), SinkError> {
    if labels.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO labels (tx_id, is_fraud, reported_at, source_partition, source_offset)
         SELECT * FROM unnest($1::text[], $2::bool[], $3::timestamptz[], $4::int[], $5::bigint[])
         ON CONFLICT (tx_id) DO NOTHING",
    )
    .bind(
        labels
            .iter()
            .map(|l| l.label.tx_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(labels.iter().map(|l| l.label.is_fraud).collect::<Vec<_>>())
    .bind(
        labels
            .iter()
            .map(|l| l.label.reported_at)
            .collect::<Vec<_>>(),
    )
    .bind(labels.iter().map(|l| l.partition).collect::<Vec<_>>())
    .bind(labels.iter().map(|l| l.offset).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Claim the rows' tx_ids in `decision_ids` (the unique key the month
/// partitions cannot have): the ids that were not decided before.
async fn insert_ids(
    tx: &mut sqlx::PgConnection,
    rows: &[&DecisionRow],
) -> Result<std::collections::HashSet<String>, SinkError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "INSERT INTO decision_ids (tx_id, ts)
         SELECT * FROM unnest($1::text[], $2::timestamptz[])
         ON CONFLICT (tx_id) DO NOTHING
         RETURNING tx_id",
    )
    .bind(rows.iter().map(|d| d.tx.tx_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.ts).collect::<Vec<_>>())
    .fetch_all(&mut *tx)
    .await?;
    Ok(ids.into_iter().collect())
}

/// Decisions whose tx_ids [`insert_ids`] just claimed.
async fn insert_decisions(
    tx: &mut sqlx::PgConnection,
    p: &Provenance,
    model: &ModelId,
    rows: &[&DecisionRow],
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, currency, mcc, channel, country,
                score, decision, model_name, model_version, model_sha256, threshold_version, features,
                state_complete, source_topic, source_partition, source_offset, kafka_ts, mcc_surprise, rules_fired)
         SELECT u.tx_id, u.ts, u.card_id, u.terminal_id, (u.cents::numeric / 100)::numeric(14, 2), u.currency, u.mcc, u.channel,
                u.country, u.score, u.decision, $14, $15, $16, u.version, u.features::real[], u.complete, $18,
                u.part, u.off, u.kafka_ts, u.surprise, u.rules::text[]
           FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                       $7::int[], $8::text[], $9::text[], $10::real[], $11::text[], $12::text[], $13::bool[],
                       $17::int[], $19::int[], $20::bigint[], $21::timestamptz[], $22::real[], $23::text[])
             AS u(tx_id, ts, card_id, terminal_id, cents, currency, mcc, channel, country, score, decision,
                  features, complete, version, part, off, kafka_ts, surprise, rules)",
    )
    .bind(rows.iter().map(|d| d.tx.tx_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.ts).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.card_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.terminal_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| features::cents(d.tx.amount)).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.currency.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.mcc).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.channel.map(|c| c.as_str())).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.country.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.score).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.decision.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| real_array(&d.features)).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.state_complete).collect::<Vec<_>>())
    .bind(&model.name)
    .bind(&model.version)
    .bind(&model.sha256)
    .bind(rows.iter().map(|d| d.threshold_version).collect::<Vec<_>>())
    .bind(&p.source_topic)
    .bind(rows.iter().map(|d| d.partition).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.offset).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.kafka_ts).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.mcc_surprise).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| text_array(&d.rules_fired)).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The bulk path's fast lane: the tx_ids (`decision_ids`), decisions,
/// explanations and shadow rows as binary `COPY` streams. All or nothing: a
/// tx_id decided before (by another instance meanwhile, or with another
/// time) or a value Postgres refuses fails it, and [`write_batch`] writes
/// the batch again by [`insert_decided`], which sorts such rows out.
async fn copy_decided(
    tx: &mut sqlx::PgConnection,
    p: &Provenance,
    b: &SinkBatch,
    rows: &[&DecisionRow],
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut ids = BinaryCopy::new(rows.len() * 48);
    for d in rows {
        ids.row(2).text(&d.tx.tx_id).timestamptz(d.tx.ts);
    }
    copy_in(
        tx,
        "COPY decision_ids (tx_id, ts) FROM STDIN (FORMAT binary)",
        ids.finish(),
    )
    .await?;
    let m = &b.model;
    let mut decisions = BinaryCopy::new(rows.len() * 320);
    for d in rows {
        let t = &d.tx;
        decisions
            .row(23)
            .text(&t.tx_id)
            .timestamptz(t.ts)
            .text(&t.card_id)
            .text(&t.terminal_id)
            .numeric_cents(features::cents(t.amount))
            .opt_text(t.currency.as_deref())
            .opt_int4(t.mcc)
            .opt_text(t.channel.map(|c| c.as_str()))
            .opt_text(t.country.as_deref())
            .float4(d.score)
            .text(d.decision.as_str())
            .text(&m.name)
            .text(&m.version)
            .text(&m.sha256)
            .int4(d.threshold_version)
            .float4_array(&d.features)
            .bool(d.state_complete)
            .text(&p.source_topic)
            .int4(d.partition)
            .int8(d.offset)
            .opt_timestamptz(d.kafka_ts)
            .opt_float4(d.mcc_surprise)
            .text_array(&d.rules_fired);
    }
    copy_in(
        tx,
        "COPY risk_decisions (tx_id, ts, card_id, terminal_id, amount, currency, mcc, channel, country,
              score, decision, model_name, model_version, model_sha256, threshold_version, features,
              state_complete, source_topic, source_partition, source_offset, kafka_ts, mcc_surprise,
              rules_fired)
         FROM STDIN (FORMAT binary)",
        decisions.finish(),
    )
    .await?;
    let mut explanations = BinaryCopy::new(rows.len() * 640);
    for d in rows {
        explanations
            .row(5)
            .text(&d.tx.tx_id)
            .float4_array(&d.feature_weights)
            .text_array(&d.history_tx_ids)
            .float4_array(&d.history_weights)
            .timestamptz(d.tx.ts);
    }
    copy_in(
        tx,
        "COPY attention_explanations (tx_id, feature_weights, history_tx_ids, history_weights, ts)
         FROM STDIN (FORMAT binary)",
        explanations.finish(),
    )
    .await?;
    let Some(shadow) = &b.shadow_model else {
        return Ok(());
    };
    let mut shadows = BinaryCopy::new(rows.len() * 400);
    let mut any = false;
    for d in rows {
        let Some(s) = &d.shadow else { continue };
        any = true;
        shadows
            .row(11)
            .text(&d.tx.tx_id)
            .text(&shadow.name)
            .text(&shadow.version)
            .text(&shadow.sha256)
            .float4(s.score)
            .text(s.decision.as_str())
            .int4(d.threshold_version)
            .text_array(&s.rules_fired)
            .float4_array(&s.feature_weights)
            .float4_array(&s.history_weights)
            .timestamptz(d.tx.ts);
    }
    if !any {
        return Ok(());
    }
    copy_in(
        tx,
        "COPY shadow_decisions (tx_id, model_name, model_version, model_sha256, score, decision,
              threshold_version, rules_fired, feature_weights, history_weights, ts)
         FROM STDIN (FORMAT binary)",
        shadows.finish(),
    )
    .await
}

/// The shadow model's rows for decisions just inserted (a row another
/// instance already wrote is left as it is).
async fn insert_shadow(
    tx: &mut sqlx::PgConnection,
    shadow: &ModelId,
    rows: &[&DecisionRow],
) -> Result<(), SinkError> {
    let rows: Vec<(&DecisionRow, &ShadowRow)> = rows
        .iter()
        .filter_map(|d| d.shadow.as_ref().map(|s| (*d, s)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO shadow_decisions (tx_id, model_name, model_version, model_sha256, score, decision,
                threshold_version, rules_fired, feature_weights, history_weights, ts)
         SELECT u.tx_id, $1, $2, $3, u.score, u.decision, u.version, u.rules::text[], u.fw::real[], u.hw::real[], u.ts
           FROM unnest($4::text[], $5::real[], $6::text[], $7::int[], $8::text[], $9::text[], $10::text[],
                       $11::timestamptz[])
             AS u(tx_id, score, decision, version, rules, fw, hw, ts)
         ON CONFLICT DO NOTHING",
    )
    .bind(&shadow.name)
    .bind(&shadow.version)
    .bind(&shadow.sha256)
    .bind(rows.iter().map(|(d, _)| d.tx.tx_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, s)| s.score).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, s)| s.decision.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(d, _)| d.threshold_version).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, s)| text_array(&s.rules_fired)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, s)| real_array(&s.feature_weights)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, s)| real_array(&s.history_weights)).collect::<Vec<_>>())
    .bind(rows.iter().map(|(d, _)| d.tx.ts).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn copy_in(
    tx: &mut sqlx::PgConnection,
    statement: &str,
    data: Vec<u8>,
) -> Result<(), SinkError> {
    let mut copy = tx.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(data).await {
        // The server's error, if it sent one, is the better one to report.
        return Err(
            match copy.abort("the engine could not send the batch").await {
                Err(server) => server.into(),
                Ok(()) => e.into(),
            },
        );
    }
    copy.finish().await?;
    Ok(())
}

/// Explanations go in as one Postgres array literal per row and column:
/// parsing a short literal per row is cheap, where slicing one large array
/// parameter per row made Postgres copy the whole array each time.
async fn insert_explanations(
    tx: &mut sqlx::PgConnection,
    rows: &[&DecisionRow],
) -> Result<(), SinkError> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO attention_explanations (tx_id, feature_weights, history_tx_ids, history_weights, ts)
         SELECT tx_id, fw::real[], ids::text[], hw::real[], ts
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
             AS u(tx_id, fw, ids, hw, ts)",
    )
    .bind(rows.iter().map(|d| d.tx.tx_id.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| real_array(&d.feature_weights)).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| text_array(&d.history_tx_ids)).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| real_array(&d.history_weights)).collect::<Vec<_>>())
    .bind(rows.iter().map(|d| d.tx.ts).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A Postgres array literal, `{a,b}`, with each element written by `element`.
fn array_literal<T>(values: &[T], element: impl Fn(&mut String, &T)) -> String {
    let mut out = String::with_capacity(values.len() * 12 + 2);
    out.push('{');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        element(&mut out, v);
    }
    out.push('}');
    out
}

/// `{0.25,0.75}`: Rust's shortest round-trip formatting, so the stored
/// `real` is exactly the f32 the model returned.
fn real_array(values: &[f32]) -> String {
    array_literal(values, |out, v| out.push_str(&v.to_string()))
}

/// `{"a","b \"c\""}`: every element quoted, `"` and `\` escaped.
fn text_array<S: AsRef<str>>(values: &[S]) -> String {
    array_literal(values, |out, v| {
        out.push('"');
        for c in v.as_ref().chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_round_trip_through_postgres_syntax() {
        assert_eq!(real_array(&[0.25, 1e-7, 0.0]), "{0.25,0.0000001,0}");
        assert_eq!(real_array(&[]), "{}");
        let ids = vec!["tx-1".to_string(), r#"we"ird\id,{}"#.to_string()];
        assert_eq!(text_array(&ids), r#"{"tx-1","we\"ird\\id,{}"}"#);
    }
}
