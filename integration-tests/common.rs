//! Shared harness: an isolated "world" (topics, group, database, config
//! file) and the engine as a child process.

use chrono::NaiveDate;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use riskstream::simulate::{self, SimConfig, Simulator};
use sqlx::{PgPool, Row};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:15432/riskstream".into())
}

/// A fresh, empty database `name` (dropped first if a previous run left
/// it), owned by `owner`; returns its superuser URL.
pub async fn scratch_database(name: &str, owner: &str) -> String {
    drop_scratch_database(name).await;
    let admin = PgPool::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name} OWNER {owner}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    admin_url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/{name}"))
        .unwrap()
}

/// Drop database `name` (if it exists), whoever is connected to it.
pub async fn drop_scratch_database(name: &str) {
    let admin = PgPool::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
}

/// The migrations older than `version`: a schema as an earlier release left it.
pub fn migrations_before(version: i64) -> sqlx::migrate::Migrator {
    sqlx::migrate::Migrator {
        migrations: riskstream::sink::schema::MIGRATOR
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    }
}

/// A login of the local stack (scripts/stack creates them with these dev
/// passwords; [`World::new`] too, when they are missing).
#[derive(Debug, Clone, Copy)]
pub struct Login {
    pub user: &'static str,
    pub password: &'static str,
    /// The group role it is a member of.
    pub role: &'static str,
}

/// Runs `riskstream migrate`: owns the schema.
pub const MIGRATOR: Login = Login {
    user: "riskstream_migrator",
    password: "dev-migrator",
    role: "riskstream_owner",
};
/// Runs `riskstream run`: inserts, updates only `kafka_offsets`.
pub const ENGINE: Login = Login {
    user: "riskstream_engine",
    password: "dev-engine",
    role: "riskstream_writer",
};
/// Reads.
pub const ANALYST: Login = Login {
    user: "riskstream_analyst_user",
    password: "dev-analyst",
    role: "riskstream_analyst",
};

/// Runs `riskstream console`: reads, appends label reviews.
pub const REVIEWER: Login = Login {
    user: "riskstream_reviewer_user",
    password: "dev-reviewer",
    role: "riskstream_reviewer",
};

/// The URL of database `db` for `login`, on the server of [`admin_url`].
pub fn url_as(login: Login, db: &str) -> String {
    let admin = admin_url();
    let rest = admin.split_once("://").map_or(admin.as_str(), |(_, r)| r);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split_once('/').map_or(host, |(h, _)| h);
    format!("postgres://{}:{}@{host}/{db}", login.user, login.password)
}

/// The group roles and the logins, as `scripts/stack up` makes them, so a
/// stack started by an older script works too. Idempotent and safe against
/// a concurrent test doing the same.
async fn ensure_logins(admin: &PgPool) {
    let mut statements = Vec::new();
    for role in [MIGRATOR.role, ENGINE.role, ANALYST.role, REVIEWER.role] {
        statements.push(format!(
            "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                 CREATE ROLE {role} NOLOGIN;
             END IF;"
        ));
    }
    for l in [MIGRATOR, ENGINE, ANALYST, REVIEWER] {
        statements.push(format!(
            "IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN
                 CREATE ROLE {user} LOGIN PASSWORD '{password}';
             END IF;
             IF NOT pg_has_role('{user}', '{role}', 'MEMBER') THEN
                 GRANT {role} TO {user};
             END IF;",
            user = l.user,
            password = l.password,
            role = l.role
        ));
    }
    for statement in statements {
        sqlx::query(&format!(
            "DO $$ BEGIN {statement}
               EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ))
        .execute(admin)
        .await
        .unwrap();
    }
}

/// The checkout under test: `cargo test` names it at run time. The
/// compile-time path can be another checkout's: clones sharing one
/// `CARGO_TARGET_DIR` share this binary when their sources look unchanged
/// (seen: a test run in one checkout looked for the other's broker).
pub fn repo_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn model_dir() -> PathBuf {
    repo_root().join("models/fraud-attention")
}

/// "name vVERSION" of the model in `dir`, as the engine names it in its
/// reports and logs, read from its manifest.
pub fn model_label(dir: &Path) -> String {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    format!(
        "{} v{}",
        m["name"].as_str().unwrap(),
        m["version"].as_str().unwrap()
    )
}

/// The merchant language model every world's engine runs (`[language_model]`).
pub fn lm_dir() -> PathBuf {
    repo_root().join("models/merchant-lm")
}

/// An isolated set of topics, a consumer group and a database.
pub struct World {
    pub name: String,
    pub dir: tempfile::TempDir,
    /// The superuser's URL of this world's database.
    pub db_url: String,
    /// The superuser's pool: what tests inspect (and break) with.
    pub pool: PgPool,
    pub config_path: PathBuf,
    /// The config has a `[language_model]`: decisions carry `mcc_surprise`.
    pub language_model: bool,
}

/// The topics a world makes (`World::topic`) and deletes when torn down.
const TOPIC_KINDS: [&str; 3] = ["transactions", "labels", "dlq"];

impl World {
    pub async fn new(test: &str, partitions: i32) -> World {
        let name = format!("it_{test}_{}", std::process::id());
        let admin = PgPool::connect(&admin_url())
            .await
            .expect("postgres is up (make stack-up)");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&admin)
            .await
            .unwrap();
        ensure_logins(&admin).await;
        // Owned by riskstream_owner, as in production: the migrator (not a
        // superuser) creates the schema, and the engine runs as the writer.
        sqlx::query(&format!("CREATE DATABASE {name} OWNER {}", MIGRATOR.role))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let db_url = admin_url()
            .rsplit_once('/')
            .map(|(base, _)| format!("{base}/{name}"))
            .unwrap();
        let pool = PgPool::connect(&db_url).await.unwrap();
        let migrator = PgPool::connect(&url_as(MIGRATOR, &name))
            .await
            .expect("the migrator logs in (scripts/stack up)");
        let migrated = riskstream::sink::migrate(&migrator).await.unwrap();
        assert_eq!(
            migrated.role, MIGRATOR.role,
            "objects belong to the owner role"
        );
        migrator.close().await;
        let dir = tempfile::tempdir().unwrap();
        let world = World {
            config_path: dir.path().join("riskstream.toml"),
            name,
            dir,
            db_url,
            pool,
            language_model: true,
        };
        std::fs::write(&world.config_path, world.config_text(partitions, "")).unwrap();
        let topics = TOPIC_KINDS.map(|kind| {
            let n = if kind == "transactions" {
                partitions
            } else {
                1
            };
            (world.topic(kind), n)
        });
        let topics: Vec<(&str, i32)> = topics.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        riskstream::ingest::topics::ensure_topics(
            &riskstream::ingest::client::plain(&brokers()),
            &topics,
        )
        .await
        .unwrap();
        world
    }

    pub fn topic(&self, kind: &str) -> String {
        format!("{}.{kind}", self.name)
    }

    /// A complete config for this world; `extra` is appended (TOML).
    pub fn config_text(&self, partitions: i32, extra: &str) -> String {
        format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{name}"
transactions_topic = "{name}.transactions"
labels_topic = "{name}.labels"
dlq_topic = "{name}.dlq"
partitions = {partitions}
session_timeout_ms = 6000

[postgres]
url = "{engine}"
migrate_url = "{migrator}"
max_connections = 4

[pipeline]
batch_max_rows = 1000
batch_max_wait_ms = 20
channel_capacity_rows = 10000
scoring_workers = 1
state_wait_ms = 60000
shutdown_deadline_ms = 10000

[model]
dir = "{model}"

[thresholds]
review = 0.5
decline = 0.9

[language_model]
dir = "{lm}"

[server]
listen = ""
{extra}
"#,
            brokers = brokers(),
            name = self.name,
            engine = url_as(ENGINE, &self.name),
            migrator = url_as(MIGRATOR, &self.name),
            model = model_dir().display(),
            lm = lm_dir().display(),
        )
    }

    /// Produce a simulated stream of about `n` transactions; returns what was produced.
    pub fn produce_simulated(&self, n: usize, seed: u64) -> (u64, u64) {
        self.produce_simulated_from(n, seed, SimConfig::for_transactions(n, seed).start)
    }

    /// [`World::produce_simulated`], its first day `start`.
    pub fn produce_simulated_from(&self, n: usize, seed: u64, start: NaiveDate) -> (u64, u64) {
        let sim = Simulator::new(SimConfig {
            max_transactions: Some(n),
            start,
            ..SimConfig::for_transactions(n, seed)
        });
        let (t, l) = (self.topic("transactions"), self.topic("labels"));
        let target = simulate::kafka::Target {
            client: riskstream::ingest::client::plain(&brokers()),
            transactions_topic: &t,
            labels_topic: &l,
            rate: None,
            progress: false,
        };
        let p = simulate::kafka::produce(sim, None, &target).unwrap();
        (p.transactions, p.labels)
    }

    /// The `[shadow]` section that scores the int8 model beside `[model]`.
    pub fn shadow_section() -> String {
        format!(
            "[shadow]\ndir = \"{}\"\n",
            repo_root().join("models/fraud-attention-int8").display()
        )
    }

    /// Run an engine over everything produced until its `labels` labels
    /// are in, then stop it gracefully.
    pub async fn decide_all(&self, tag: &str, labels: u64) {
        let mut engine = self.start_engine(tag);
        self.wait_until_done(&mut [&mut engine], Duration::from_secs(240))
            .await;
        self.wait_for_labels(labels).await;
        assert!(engine.terminate().success());
    }

    pub fn start_engine(&self, tag: &str) -> Engine {
        Engine::start(
            &self.config_path,
            &self.dir.path().join(format!("engine-{tag}.log")),
        )
    }

    /// Log-end offsets of a topic, by partition.
    pub fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", "it-probe")
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut out = BTreeMap::new();
        for p in md.topics()[0].partitions() {
            // Just after a broker restart the partitions may have no leader
            // yet (NotLeaderForPartition): ask again until they do.
            let deadline = Instant::now() + Duration::from_secs(60);
            let high = loop {
                match c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)) {
                    Ok((_, high)) => break high,
                    Err(e) if Instant::now() < deadline => {
                        eprintln!("end offsets of {topic}/{}: {e}; asking again", p.id());
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(e) => panic!("end offsets of {topic}/{}: {e}", p.id()),
                }
            };
            out.insert(p.id(), high);
        }
        out
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// Wait until every record of the transactions topic is decided or
    /// dead-lettered and the stored offsets reached the log ends.
    pub async fn wait_until_done(&self, engines: &mut [&mut Engine], timeout: Duration) {
        let ends = self.end_offsets(&self.topic("transactions"));
        let started = Instant::now();
        loop {
            let stored: BTreeMap<i32, i64> =
                sqlx::query("SELECT partition, next_offset FROM kafka_offsets WHERE topic = $1")
                    .bind(self.topic("transactions"))
                    .fetch_all(&self.pool)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect();
            if ends
                .iter()
                .all(|(p, end)| *end == 0 || stored.get(p) == Some(end))
            {
                return;
            }
            for e in engines.iter_mut() {
                if let Some(status) = e.child.try_wait().unwrap() {
                    panic!("engine exited early ({status}):\n{}", e.log_tail());
                }
            }
            if started.elapsed() > timeout {
                let logs: Vec<String> = engines.iter().map(|e| e.log_tail()).collect();
                panic!(
                    "not done after {timeout:?}: stored {stored:?}, ends {ends:?}\n{}",
                    logs.join("\n---\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Wait until at least `n` decisions are committed (the engine must stay up).
    /// Wait (up to 60 s) until `n` labels are stored.
    pub async fn wait_for_labels(&self, n: u64) {
        let started = Instant::now();
        while self.count("SELECT count(*) FROM labels").await < n as i64 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "labels not all stored"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_for_decisions(&self, engine: &mut Engine, n: i64, timeout: Duration) {
        let started = Instant::now();
        while self.count("SELECT count(*) FROM risk_decisions").await < n {
            if let Some(status) = engine.child.try_wait().unwrap() {
                panic!("engine exited early ({status}):\n{}", engine.log_tail());
            }
            assert!(
                started.elapsed() < timeout,
                "fewer than {n} decisions after {timeout:?}:\n{}",
                engine.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The invariants every run must satisfy, whatever happened during it.
    pub async fn assert_exactly_once(&self, produced: u64) {
        let decisions = self.count("SELECT count(*) FROM risk_decisions").await;
        let dead = self
            .count("SELECT count(*) FROM dead_letters WHERE source_topic LIKE '%.transactions'")
            .await;
        assert_eq!(
            decisions + dead,
            produced as i64,
            "every transaction decided or dead-lettered exactly once"
        );
        let distinct = self
            .count("SELECT count(DISTINCT tx_id) FROM risk_decisions")
            .await;
        assert_eq!(distinct, decisions);
        let dup_offsets = self
            .count("SELECT count(*) FROM (SELECT source_partition, source_offset FROM risk_decisions GROUP BY 1, 2 HAVING count(*) > 1) d")
            .await;
        assert_eq!(dup_offsets, 0, "no Kafka record decided twice");
        let explained = self
            .count("SELECT count(*) FROM attention_explanations")
            .await;
        assert_eq!(explained, decisions, "every decision has its explanation");
        self.assert_in_month_partitions().await;
        let bad_features = self
            .count("SELECT count(*) FROM attention_explanations WHERE abs((SELECT sum(w) FROM unnest(feature_weights) w) - 1) > 1e-4")
            .await;
        assert_eq!(bad_features, 0, "feature attention sums to 1");
        let bad_history = self
            .count(
                "SELECT count(*) FROM attention_explanations
                  WHERE cardinality(history_tx_ids) > 0
                    AND abs((SELECT sum(w) FROM unnest(history_weights) w) - 1) > 1e-4",
            )
            .await;
        assert_eq!(
            bad_history, 0,
            "history attention sums to 1 when there is history"
        );
        let foreign = self
            .count(
                "SELECT count(*) FROM attention_explanations e JOIN risk_decisions d USING (tx_id),
                        unnest(e.history_tx_ids) h JOIN risk_decisions p ON p.tx_id = h
                  WHERE p.card_id <> d.card_id OR p.ts > d.ts",
            )
            .await;
        assert_eq!(
            foreign, 0,
            "history positions point at earlier transactions of the same card"
        );
        // The explanation an analyst reads first: the past transaction with the highest
        // history weight. It must be a decided transaction of the same card, earlier.
        let with_history = self
            .count(
                "SELECT count(*) FROM attention_explanations WHERE cardinality(history_tx_ids) > 0",
            )
            .await;
        assert!(with_history > 0, "some decisions have a history to explain");
        let top_ok = self
            .count(
                "SELECT count(*) FROM attention_explanations e JOIN risk_decisions d USING (tx_id)
                   CROSS JOIN LATERAL (
                        SELECT h.tx FROM unnest(e.history_tx_ids, e.history_weights) AS h(tx, w)
                         WHERE h.tx IS NOT NULL ORDER BY h.w DESC LIMIT 1) top
                   JOIN risk_decisions p ON p.tx_id = top.tx
                  WHERE p.card_id = d.card_id AND p.ts <= d.ts",
            )
            .await;
        assert_eq!(
            top_ok, with_history,
            "the top history weight of every decision refers to an earlier transaction of the same card"
        );
        if self.language_model {
            self.assert_mcc_surprise().await;
        }
        let ends = self.end_offsets(&self.topic("transactions"));
        for (p, end) in ends {
            let stored: Option<i64> = sqlx::query_scalar(
                "SELECT next_offset FROM kafka_offsets WHERE topic = $1 AND partition = $2",
            )
            .bind(self.topic("transactions"))
            .bind(p)
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            assert_eq!(
                stored.unwrap_or(0).max(0),
                end,
                "stored offset of partition {p} equals its end offset"
            );
        }
    }

    /// With a language model: every decision has a finite, non-negative
    /// `mcc_surprise`, the same in its column and in `decision_features`, and a
    /// card's first transaction is scored from `<bos>` alone.
    async fn assert_mcc_surprise(&self) {
        let bad = self
            .count(
                "SELECT count(*) FROM risk_decisions
                  WHERE mcc_surprise IS NULL OR mcc_surprise < 0
                     OR mcc_surprise IN ('NaN'::real, 'Infinity'::real, '-Infinity'::real)",
            )
            .await;
        assert_eq!(
            bad, 0,
            "every decision has a finite, non-negative mcc_surprise"
        );
        // Analysts read the inputs by name: the view names the stored
        // array in the model's input order.
        let differ = self
            .count(
                "SELECT count(*) FROM decision_features f JOIN risk_decisions d USING (tx_id)
                  WHERE (f.features ->> 'amount_log')::real IS DISTINCT FROM d.features[1]
                     OR (f.features ->> 'country_change_1h')::real IS DISTINCT FROM d.features[20]
                     OR (SELECT count(*) FROM jsonb_object_keys(f.features)) <> 20
                     OR f.mcc_surprise IS DISTINCT FROM d.mcc_surprise",
            )
            .await;
        assert_eq!(
            differ, 0,
            "decision_features names the stored inputs in model order"
        );
        // Before its first transaction a card has no context: the surprise
        // depends on the MCC alone. Later ones see the card's past.
        let first_ambiguous = self
            .count(
                "SELECT count(*) FROM (
                    SELECT mcc FROM risk_decisions d
                     WHERE NOT EXISTS (SELECT 1 FROM risk_decisions p
                                        WHERE p.card_id = d.card_id
                                          AND (p.ts, p.source_offset) < (d.ts, d.source_offset))
                     GROUP BY mcc HAVING count(DISTINCT mcc_surprise) > 1) f",
            )
            .await;
        assert_eq!(
            first_ambiguous, 0,
            "a card's first transaction is scored from <bos> alone"
        );
        let distinct = self
            .count("SELECT count(DISTINCT (mcc, mcc_surprise)) FROM risk_decisions")
            .await;
        let mccs = self
            .count("SELECT count(DISTINCT mcc) FROM risk_decisions")
            .await;
        assert!(
            distinct > mccs,
            "later transactions are scored in their card's context"
        );
    }

    /// tx_id → stored features (JSON text), for comparing runs.
    /// Every decision, explanation and shadow row sits in the partition of
    /// its UTC month (none in a default partition), with its explanation at
    /// the same time, and `decision_ids` holds exactly the decided ids.
    pub async fn assert_in_month_partitions(&self) {
        for table in [
            "risk_decisions",
            "attention_explanations",
            "shadow_decisions",
        ] {
            let misplaced = self
                .count(&format!(
                    "SELECT count(*) FROM {table}
                      WHERE tableoid::regclass::text
                            <> decision_partition_name('{table}', (ts AT TIME ZONE 'UTC')::date)"
                ))
                .await;
            assert_eq!(misplaced, 0, "{table} rows outside their month's partition");
        }
        let unmatched = self
            .count(
                "SELECT count(*) FROM risk_decisions d
                   FULL JOIN attention_explanations e USING (tx_id, ts)
                   FULL JOIN decision_ids i USING (tx_id, ts)
                  WHERE d.tx_id IS NULL OR e.tx_id IS NULL OR i.tx_id IS NULL",
            )
            .await;
        assert_eq!(
            unmatched, 0,
            "each decision has its explanation and its decision_ids row, at its time"
        );
    }

    pub async fn features(&self) -> BTreeMap<String, String> {
        sqlx::query("SELECT tx_id, features::text FROM risk_decisions")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Drop the world's database and delete its topics: a `make test` makes
    /// about 150 topics, which a stack that runs it every day would keep.
    pub async fn tear_down(self) {
        self.pool.close().await;
        let admin = PgPool::connect(&admin_url()).await.unwrap();
        // Best effort (a failed drop must not fail a test that passed), but
        // said: a database left behind once went unexplained.
        if let Err(e) = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await
        {
            eprintln!("tear-down: database {} left behind: {e}", self.name);
        }
        let kafka: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()
            .unwrap();
        let topics = TOPIC_KINDS.map(|kind| self.topic(kind));
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        // Best effort, like the database; a topic a test never made is not an error.
        match kafka.delete_topics(&names, &options).await {
            Err(e) => eprintln!("tear-down: topics of {} left behind: {e}", self.name),
            Ok(results) => {
                for (topic, code) in results.into_iter().filter_map(Result::err) {
                    if code != rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition {
                        eprintln!("tear-down: topic {topic} left behind: {code}");
                    }
                }
            }
        }
    }
}

/// The `riskstream run` binary as a child process.
pub struct Engine {
    pub child: Child,
    pub log: PathBuf,
}

impl Engine {
    pub fn start(config: &Path, log: &Path) -> Engine {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_riskstream"))
            .args(["--config", config.to_str().unwrap(), "run"])
            .env("RUST_LOG", "info,sqlx=warn,rdkafka=warn")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start riskstream");
        Engine {
            child,
            log: log.to_owned(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe_sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("engine ignored SIGTERM for 30 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status of an engine expected to stop on its own (a fatal
    /// error) within `timeout`; `waiting_for` names what a run still going
    /// would mean.
    pub async fn exits_within(
        &mut self,
        timeout: Duration,
        waiting_for: &str,
    ) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{waiting_for} after {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGHUP: look at the config file now.
    pub fn hangup(&self) {
        let _ = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status();
    }

    /// Lines of the log containing `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Wait until the log has more than `before` lines containing `needle`.
    pub async fn wait_for_log(&mut self, needle: &str, before: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log_count(needle) <= before {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("engine exited early ({status}):\n{}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "no new {needle:?} in the log after {timeout:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
