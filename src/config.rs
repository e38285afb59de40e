//! Engine configuration: one TOML file, `RISKSTREAM_*` environment overrides,
//! and a single [`RawConfig::validate`] that reports *every* problem by key.
//!
//! This module owns parsing and validation only. It never connects to
//! anything and never logs secret values: connection strings live in
//! [`Secret`], whose `Debug` and `Display` print `***`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A value that must never reach a log line.
#[derive(Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub postgres: PostgresConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub features: FeatureConfig,
    #[serde(default)]
    pub event_time: EventTimeConfig,
    pub model: ModelConfig,
    /// A second fraud model scored on every transaction beside `[model]`,
    /// stored in `shadow_decisions`, never deciding. Live, like `[model]`.
    #[serde(default)]
    pub shadow: Option<ModelConfig>,
    pub thresholds: ThresholdConfig,
    #[serde(default)]
    pub server: ServerConfig,
    /// The merchant language model whose surprise is stored with every
    /// decision; absent = the feature is off.
    #[serde(default)]
    pub language_model: Option<LanguageModelConfig>,
    /// Rules checked beside the model's score (see [`crate::decision`]).
    /// Live like `[thresholds]`: a changed file takes effect without a restart.
    #[serde(default)]
    pub rules: RulesConfig,
    /// `riskstream console`, the analysts' review pages; absent = no console.
    #[serde(default)]
    pub console: Option<ConsoleConfig>,
    /// Month partitions of the decision tables: created ahead and dropped
    /// after `keep_days` by `riskstream partitions`.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// The file this configuration was read from, when it was read from one:
    /// the engine watches it for live changes to thresholds and rules.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    #[serde(default = "defaults::group_id")]
    pub group_id: String,
    #[serde(default = "defaults::transactions_topic")]
    pub transactions_topic: String,
    #[serde(default = "defaults::labels_topic")]
    pub labels_topic: String,
    #[serde(default = "defaults::dlq_topic")]
    pub dlq_topic: String,
    /// Partitions created for `transactions_topic` when it does not exist yet.
    #[serde(default = "defaults::partitions")]
    pub partitions: i32,
    #[serde(default = "defaults::session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Extra librdkafka properties (e.g. security settings). Values are secret.
    #[serde(default)]
    pub properties: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The engine's login: a member of `riskstream_writer` (insert, update
    /// only `kafka_offsets`), never the schema owner or a superuser.
    pub url: Secret,
    /// `riskstream migrate`'s login: a member of `riskstream_owner`, which
    /// owns the schema. Absent: `url`.
    #[serde(default)]
    pub migrate_url: Option<Secret>,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days of decisions kept at least (UTC days of the transaction, today
    /// included): `riskstream partitions` drops the whole months that ended
    /// before the oldest kept day's month, with their explanations, shadow
    /// rows, labels, reviews and summaries. Absent: everything is kept.
    #[serde(default)]
    pub keep_days: Option<u32>,
    /// Days after today whose months `riskstream partitions` creates
    /// partitions for, so that the engine does not on the hot path.
    #[serde(default = "defaults::create_ahead_days")]
    pub create_ahead_days: u32,
}

impl PostgresConfig {
    /// The login that owns the schema (`migrate_url`, else `url`) and the
    /// key that names it in messages.
    pub fn owner_login(&self) -> (&Secret, &'static str) {
        match &self.migrate_url {
            Some(url) => (url, "postgres.migrate_url"),
            None => (&self.url, "postgres.url"),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            keep_days: None,
            create_ahead_days: defaults::create_ahead_days(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// A batch closes as soon as the next stage has nothing queued (so at
    /// low load it holds what arrived meanwhile), and at the latest at this
    /// many rows...
    pub batch_max_rows: usize,
    /// ...or this long after its first row, whichever comes first.
    pub batch_max_wait_ms: u64,
    /// Rows buffered between ingest and featurization; bounds memory. While
    /// a batch waits for the watermark, a partition holding more than half
    /// of this is paused, so at most `partitions × capacity / 2 + capacity`
    /// decoded rows wait.
    pub channel_capacity_rows: usize,
    /// Blocking threads running ONNX Runtime sessions, one session each.
    pub scoring_workers: usize,
    /// Batches handed on by the featurize stage but not yet committed, at
    /// most: a new batch closes only while fewer are in flight (unless it
    /// is full or its `batch_max_wait_ms` has passed), so at low load
    /// batches do not queue in front of the slowest stage; under load they
    /// grow instead, and a full batch is featurized ahead and waits for a
    /// place. 3 lets score, decide and the sink each hold a batch.
    #[serde(default = "defaults::max_batches_in_flight")]
    pub max_batches_in_flight: usize,
    /// How long a batch may wait for the terminal/label watermark before it is
    /// scored anyway and marked `state_complete = false`.
    pub state_wait_ms: u64,
    /// On shutdown, how long the current batch may take to commit.
    pub shutdown_deadline_ms: u64,
    /// Raw record bytes read from Kafka but not yet decoded, per consumer;
    /// the consumer waits when it is spent. Bounds memory in bytes where
    /// `channel_capacity_rows` bounds it in rows.
    #[serde(default = "defaults::max_in_flight_bytes")]
    pub max_in_flight_bytes: usize,
    /// How often the engine looks at its config file for changed thresholds
    /// and rules (SIGHUP makes it look at once); 0: on SIGHUP only.
    #[serde(default = "defaults::config_poll_ms")]
    pub config_poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    /// Terminal fraud statistics only count transactions at least this many
    /// days old, modelling the investigation delay of fraud labels.
    pub label_delay_days: i64,
    /// How far a transaction may be behind its partition's newest event time
    /// and still be counted by cross-partition (terminal) windows.
    pub late_tolerance_secs: i64,
}

/// `[event_time]`: how far a valid transaction may be from its partition's
/// stream time (the newest event time it has admitted) before it is
/// dead-lettered instead of scored (see [`crate::pipeline::event_time`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventTimeConfig {
    /// Ahead of the partition's stream time. Also how long a partition can
    /// wait behind one early record: set it above the longest quiet spell
    /// of a partition.
    pub max_ahead_secs: i64,
    /// Behind the partition's stream time.
    pub max_behind_secs: i64,
    /// Ahead of this machine's clock; 0 disables the check (for replaying
    /// a data set dated in the future).
    pub max_future_secs: i64,
}

impl Default for EventTimeConfig {
    fn default() -> Self {
        EventTimeConfig {
            max_ahead_secs: 86_400,
            max_behind_secs: 86_400,
            max_future_secs: 3_600,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub dir: PathBuf,
    /// Rows per ONNX Runtime call.
    #[serde(default = "defaults::model_batch")]
    pub max_batch: usize,
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
}

/// `[language_model]`: a causal model over the card's MCC sequence (e.g.
/// `models/merchant-lm`), verified at startup like the fraud model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LanguageModelConfig {
    pub dir: PathBuf,
    /// Rows per ONNX Runtime call.
    #[serde(default = "defaults::model_batch")]
    pub max_batch: usize,
    #[serde(default = "defaults::intra_threads")]
    pub intra_threads: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub review: f32,
    pub decline: f32,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdConfig {
    pub review: f32,
    pub decline: f32,
    /// Who made the last change; recorded in `threshold_sets` for the audit.
    #[serde(default = "defaults::changed_by")]
    pub changed_by: String,
    /// Per-channel overrides (`pos`, `ecom`, `atm`).
    #[serde(default)]
    pub channel: BTreeMap<String, Thresholds>,
}

/// `[rules]`: named lists, and conditions in CEL (the Common Expression
/// Language) over the transaction, its features and its score, each with the
/// decision it asks for. Compiled and checked by [`crate::decision::Policy`],
/// which knows the model's feature names.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// `[rules.lists] blocked_cards = ["c-1", "c-2"]`, read in a rule as
    /// `card_id in lists.blocked_cards`.
    #[serde(default)]
    pub lists: BTreeMap<String, Vec<String>>,
    /// `[[rules.rule]]`, in precedence order.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique; recorded in `risk_decisions.rules_fired`.
    pub name: String,
    /// A CEL condition, e.g. `amount > 2000.0 && channel == "ecom"`.
    pub when: String,
    /// `approve`, `review` or `decline`.
    pub action: String,
    /// Shown to analysts beside the attention explanation.
    #[serde(default)]
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `/metrics` and `/healthz`; empty disables the server.
    pub listen: String,
}

/// `riskstream console` (see [`crate::console`]).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Loopback by default: put a TLS reverse proxy in front to reach it
    /// from elsewhere.
    #[serde(default = "defaults::console_listen")]
    pub listen: String,
    /// A Postgres login in riskstream_reviewer: reads what analysts read,
    /// appends `label_reviews`.
    pub url: Secret,
    /// `password`: `users` log in with their password (argon2 hashes here).
    /// `proxy`: a reverse proxy has authenticated the user and names them in
    /// `proxy_header`; `users` gives their roles.
    #[serde(default = "defaults::console_auth")]
    pub auth: String,
    #[serde(default = "defaults::proxy_header")]
    pub proxy_header: String,
    /// A login lasts this long.
    #[serde(default = "defaults::session_minutes")]
    pub session_minutes: u64,
    #[serde(default)]
    pub users: Vec<ConsoleUser>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUser {
    pub name: String,
    /// `reviewer` (may label) or `read-only`.
    pub role: String,
    /// argon2 PHC string (`riskstream console --hash-password`); required
    /// with `auth = "password"`.
    #[serde(default)]
    pub password_hash: Option<Secret>,
}

mod defaults {
    pub fn create_ahead_days() -> u32 {
        7
    }
    pub fn console_listen() -> String {
        "127.0.0.1:8090".into()
    }
    pub fn console_auth() -> String {
        "password".into()
    }
    pub fn proxy_header() -> String {
        "x-forwarded-user".into()
    }
    pub fn session_minutes() -> u64 {
        12 * 60
    }
    pub fn group_id() -> String {
        "riskstream".into()
    }
    pub fn transactions_topic() -> String {
        "transactions".into()
    }
    pub fn labels_topic() -> String {
        "labels".into()
    }
    pub fn dlq_topic() -> String {
        "transactions.dlq".into()
    }
    pub fn partitions() -> i32 {
        4
    }
    pub fn session_timeout_ms() -> u64 {
        10_000
    }
    pub fn max_connections() -> u32 {
        8
    }
    pub fn model_batch() -> usize {
        256
    }
    pub fn intra_threads() -> usize {
        1
    }
    pub fn config_poll_ms() -> u64 {
        1000
    }
    pub fn max_in_flight_bytes() -> usize {
        64 << 20
    }
    pub fn max_batches_in_flight() -> usize {
        3
    }
    pub fn changed_by() -> String {
        "unknown".into()
    }
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_max_rows: 2000,
            batch_max_wait_ms: 50,
            channel_capacity_rows: 20_000,
            scoring_workers: 2,
            max_batches_in_flight: defaults::max_batches_in_flight(),
            state_wait_ms: 30_000,
            shutdown_deadline_ms: 10_000,
            max_in_flight_bytes: defaults::max_in_flight_bytes(),
            config_poll_ms: defaults::config_poll_ms(),
        }
    }
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            label_delay_days: 7,
            late_tolerance_secs: 0,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// One thing wrong with a configuration, named by its dotted key.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem, each as `key: message`, joined by `separator`.
pub fn listed(problems: &[Problem], separator: &str) -> String {
    problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(separator)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{} problem(s) in {}:\n  {}", .problems.len(), .path.display(), listed(.problems, "\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

pub const ENV_PREFIX: &str = "RISKSTREAM_";

impl Config {
    /// Read, apply environment overrides, deserialize and validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_text(path, &text, env)
    }

    /// The configuration `text`, read from `path` (relative paths resolve
    /// against its folder; errors name it), environment overrides applied.
    pub fn from_text(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let parsed = Self::parse(text, base, env).map(|mut c| {
            c.path = Some(path.to_owned());
            c
        });
        parsed.map_err(|e| match e {
            ParseFailure::Syntax(message) => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            ParseFailure::Invalid(problems) => ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            },
        })
    }

    /// Parse TOML text; relative paths resolve against `base` (the config's folder).
    pub fn parse(
        text: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ParseFailure> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ParseFailure::Syntax(syntax_error(text, &e)))?;
        let mut problems = apply_env_overrides(&mut doc, env);
        let mut config: Config = match doc.try_into() {
            Ok(c) => c,
            Err(e) => {
                problems.push(Problem {
                    key: "(file)".into(),
                    message: redact_quoted(&e.to_string()),
                });
                return Err(ParseFailure::Invalid(problems));
            }
        };
        if config.model.dir.is_relative() {
            config.model.dir = base.join(&config.model.dir);
        }
        if let Some(shadow) = config.shadow.as_mut().filter(|m| m.dir.is_relative()) {
            shadow.dir = base.join(&shadow.dir);
        }
        if let Some(lm) = config
            .language_model
            .as_mut()
            .filter(|lm| lm.dir.is_relative())
        {
            lm.dir = base.join(&lm.dir);
        }
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ParseFailure::Invalid(problems))
        }
    }

    /// Every semantic problem, each named by its key. Empty means valid.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: &str, message: String| {
            p.push(Problem {
                key: key.into(),
                message,
            })
        };

        if self.kafka.brokers.trim().is_empty() {
            bad("kafka.brokers", "must name at least one broker".into());
        }
        for (key, topic) in [
            ("kafka.transactions_topic", &self.kafka.transactions_topic),
            ("kafka.labels_topic", &self.kafka.labels_topic),
            ("kafka.dlq_topic", &self.kafka.dlq_topic),
        ] {
            if topic.is_empty()
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                bad(key, format!("{topic:?} is not a valid Kafka topic name"));
            }
        }
        if self.kafka.dlq_topic == self.kafka.transactions_topic {
            bad(
                "kafka.dlq_topic",
                "must differ from kafka.transactions_topic".into(),
            );
        }
        if self.kafka.partitions < 1 {
            bad("kafka.partitions", "must be at least 1".into());
        }
        for key in self.kafka.properties.keys() {
            if [
                "enable.auto.commit",
                "enable.auto.offset.store",
                "group.id",
                "bootstrap.servers",
            ]
            .contains(&key.as_str())
            {
                bad(
                    &format!("kafka.properties.{key}"),
                    "is managed by riskstream and cannot be overridden".into(),
                );
            }
        }
        if !self.postgres.url.expose().starts_with("postgres://")
            && !self.postgres.url.expose().starts_with("postgresql://")
        {
            bad("postgres.url", "must be a postgres:// URL".into());
        }
        if let Some(url) = &self.postgres.migrate_url {
            if !url.expose().starts_with("postgres://")
                && !url.expose().starts_with("postgresql://")
            {
                bad("postgres.migrate_url", "must be a postgres:// URL".into());
            }
        }
        if self.retention.keep_days == Some(0) {
            bad(
                "retention.keep_days",
                "must be at least 1 (today's decisions are always kept); remove it to keep everything".into(),
            );
        }
        if self.retention.create_ahead_days > 366 {
            bad(
                "retention.create_ahead_days",
                format!(
                    "{} days ahead is more than a year: at most 366",
                    self.retention.create_ahead_days
                ),
            );
        }
        if self.postgres.max_connections < 2 {
            bad("postgres.max_connections", "must be at least 2".into());
        }
        let pl = &self.pipeline;
        if pl.batch_max_rows == 0 {
            bad("pipeline.batch_max_rows", "must be at least 1".into());
        }
        if pl.channel_capacity_rows < pl.batch_max_rows {
            bad(
                "pipeline.channel_capacity_rows",
                format!(
                    "must be at least pipeline.batch_max_rows ({})",
                    pl.batch_max_rows
                ),
            );
        }
        if pl.scoring_workers == 0 {
            bad("pipeline.scoring_workers", "must be at least 1".into());
        }
        if pl.max_batches_in_flight == 0 {
            bad(
                "pipeline.max_batches_in_flight",
                "must be at least 1".into(),
            );
        }
        if !(0..=60).contains(&self.features.label_delay_days) {
            bad(
                "features.label_delay_days",
                "must be between 0 and 60".into(),
            );
        }
        if self.features.late_tolerance_secs < 0 {
            bad(
                "features.late_tolerance_secs",
                "must not be negative".into(),
            );
        }
        let et = &self.event_time;
        for (key, v) in [
            ("event_time.max_ahead_secs", et.max_ahead_secs),
            ("event_time.max_behind_secs", et.max_behind_secs),
        ] {
            if v < 1 {
                bad(key, format!("must be at least 1 second, got {v}"));
            }
        }
        if et.max_future_secs < 0 {
            bad(
                "event_time.max_future_secs",
                "must not be negative (0 disables the check)".into(),
            );
        }
        check_model(&mut bad, "model", &self.model.dir, self.model.max_batch);
        if let Some(shadow) = &self.shadow {
            check_model(&mut bad, "shadow", &shadow.dir, shadow.max_batch);
        }
        if let Some(lm) = &self.language_model {
            check_model(&mut bad, "language_model", &lm.dir, lm.max_batch);
        }
        check_thresholds(
            &mut bad,
            "thresholds",
            self.thresholds.review,
            self.thresholds.decline,
        );
        for (channel, t) in &self.thresholds.channel {
            let key = format!("thresholds.channel.{channel}");
            if !["pos", "ecom", "atm"].contains(&channel.as_str()) {
                bad(&key, "unknown channel (expected pos, ecom or atm)".into());
            }
            check_thresholds(&mut bad, &key, t.review, t.decline);
        }
        if !self.server.listen.is_empty()
            && self.server.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "server.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.server.listen
                ),
            );
        }
        if let Some(console) = &self.console {
            check_console(&mut bad, console);
        }
        p
    }
}

fn check_console(bad: &mut impl FnMut(&str, String), c: &ConsoleConfig) {
    if c.listen.parse::<std::net::SocketAddr>().is_err() {
        bad(
            "console.listen",
            format!("{:?} is not an address like 127.0.0.1:8090", c.listen),
        );
    }
    if c.url.expose().trim().is_empty() {
        bad(
            "console.url",
            "must name the reviewer's Postgres login".into(),
        );
    }
    let password = c.auth == "password";
    match c.auth.as_str() {
        "password" | "proxy" => {}
        other => bad(
            "console.auth",
            format!("{other:?} is not \"password\" or \"proxy\""),
        ),
    }
    if c.auth == "proxy" && axum::http::HeaderName::try_from(c.proxy_header.as_str()).is_err() {
        bad(
            "console.proxy_header",
            format!("{:?} is not an HTTP header name", c.proxy_header),
        );
    }
    if !(1..=7 * 24 * 60).contains(&c.session_minutes) {
        bad(
            "console.session_minutes",
            format!(
                "must be within 1..=10080 (a week), got {}",
                c.session_minutes
            ),
        );
    }
    if password && c.users.is_empty() {
        bad(
            "console.users",
            "auth = \"password\" needs at least one user".into(),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, u) in c.users.iter().enumerate() {
        let key = format!("console.users[{i}]");
        if u.name.is_empty() || u.name.len() > 64 || u.name.chars().any(|ch| ch.is_control()) {
            bad(
                &format!("{key}.name"),
                "must be 1 to 64 characters, none of them control characters".into(),
            );
        } else if !seen.insert(u.name.as_str()) {
            bad(
                &format!("{key}.name"),
                format!("{:?} is listed twice", u.name),
            );
        }
        if !["reviewer", "read-only"].contains(&u.role.as_str()) {
            bad(
                &format!("{key}.role"),
                format!("{:?} is not \"reviewer\" or \"read-only\"", u.role),
            );
        }
        match &u.password_hash {
            Some(h) if argon2::password_hash::phc::PasswordHash::new(h.expose()).is_err() => bad(
                &format!("{key}.password_hash"),
                "is not an argon2 PHC string (make one with `riskstream console --hash-password`)"
                    .into(),
            ),
            None if password => bad(
                &format!("{key}.password_hash"),
                "required with auth = \"password\"".into(),
            ),
            _ => {}
        }
    }
}

/// A model section: its directory holds a model and a manifest, and it runs
/// at least one row at a time. (What they hold is checked when it is opened.)
fn check_model(bad: &mut impl FnMut(&str, String), section: &str, dir: &Path, max_batch: usize) {
    if max_batch == 0 {
        bad(&format!("{section}.max_batch"), "must be at least 1".into());
    }
    for file in ["model.onnx", "manifest.json"] {
        let path = dir.join(file);
        if !path.is_file() {
            bad(
                &format!("{section}.dir"),
                format!("{} does not exist", path.display()),
            );
        }
    }
}

fn check_thresholds(bad: &mut impl FnMut(&str, String), key: &str, review: f32, decline: f32) {
    for (name, v) in [("review", review), ("decline", decline)] {
        if !(0.0..=1.0).contains(&v) {
            bad(
                &format!("{key}.{name}"),
                format!("must be within [0, 1], got {v}"),
            );
        }
    }
    if review > decline {
        bad(
            &format!("{key}.review"),
            format!("review ({review}) is above decline ({decline})"),
        );
    }
}

/// A TOML syntax error by position only: toml's own message quotes the
/// offending line, which may hold a password.
fn syntax_error(text: &str, e: &toml::de::Error) -> String {
    let position = e.span().map(|span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("line {line}, column {column}: ")
    });
    format!(
        "TOML syntax error at {}{}",
        position.unwrap_or_default(),
        redact_quoted(e.message())
    )
}

/// Every `"…"` in a message becomes `"***"`: serde quotes the values it
/// could not use, and a value in the wrong key may be a secret. Key names
/// stay readable (serde puts them in backticks).
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut inside = false;
    for c in message.chars() {
        match (c, inside) {
            ('"', false) => {
                out.push_str("\"***");
                inside = true;
            }
            ('"', true) => {
                out.push('"');
                inside = false;
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    out
}

#[derive(Debug)]
pub enum ParseFailure {
    Syntax(String),
    Invalid(Vec<Problem>),
}

/// `RISKSTREAM_SECTION__KEY=value` sets `section.key`. Values are parsed as
/// TOML scalars when they can be (`8`, `0.7`, `true`), otherwise taken as strings.
fn apply_env_overrides(
    doc: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.len() < 2 || path.iter().any(|s| s.is_empty()) {
            // Not an override (e.g. RISKSTREAM_CONFIG): ignore.
            continue;
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .filter(|v| !v.is_table() && !v.is_array())
            .unwrap_or(toml::Value::String(value));
        if let Err(message) = set_path(doc, &path, parsed) {
            problems.push(Problem {
                key: name.clone(),
                message,
            });
        }
    }
    problems
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, sections) = path.split_last().expect("at least two parts");
    let mut table = table;
    for part in sections {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.onnx"), b"x").unwrap();
        std::fs::write(dir.path().join("manifest.json"), b"{}").unwrap();
        dir
    }

    fn sample(model: &Path) -> String {
        format!(
            r#"
[kafka]
brokers = "127.0.0.1:9092"
[postgres]
url = "postgres://u:hunter2@localhost/db"
[model]
dir = "{}"
[thresholds]
review = 0.5
decline = 0.9
[thresholds.channel.ecom]
review = 0.4
decline = 0.8
"#,
            model.display()
        )
    }

    fn no_env() -> Vec<(String, String)> {
        vec![]
    }

    #[test]
    fn every_console_problem_is_named_and_hashes_stay_secret() {
        let dir = model_dir();
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$jOfDTsF0ej2NMM3pde+2/w$NFen/bGf8r8UwdD6EXupc6Qz9mKN6EaagT1DQu6pHiA";
        let good = format!(
            "{}\n[console]\nurl = \"postgres://r:pw@h/db\"\n[[console.users]]\nname = \"alice\"\nrole = \"reviewer\"\npassword_hash = \"{hash}\"\n",
            sample(dir.path())
        );
        let c = Config::parse(&good, Path::new("."), no_env()).unwrap();
        let console = c.console.as_ref().unwrap();
        assert_eq!(
            (console.listen.as_str(), console.auth.as_str()),
            ("127.0.0.1:8090", "password")
        );
        assert!(
            !format!("{c:?}").contains("argon2id"),
            "hashes are not printed"
        );

        let bad = format!(
            r#"{}
[console]
listen = "everywhere"
url = ""
auth = "magic"
session_minutes = 0
[[console.users]]
name = "alice"
role = "admin"
password_hash = "hunter2"
[[console.users]]
name = "alice"
role = "reviewer"
"#,
            sample(dir.path())
        );
        let Err(ParseFailure::Invalid(problems)) = Config::parse(&bad, Path::new("."), no_env())
        else {
            panic!("must be invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "console.listen",
            "console.url",
            "console.auth",
            "console.session_minutes",
            "console.users[0].role",
            "console.users[0].password_hash",
            "console.users[1].name",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
    }

    #[test]
    fn a_valid_config_parses_with_defaults() {
        let dir = model_dir();
        let c = Config::parse(&sample(dir.path()), Path::new("."), no_env()).unwrap();
        assert_eq!(c.kafka.group_id, "riskstream");
        assert_eq!(c.thresholds.channel["ecom"].review, 0.4);
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "secrets must not be printed"
        );
    }

    #[test]
    fn every_problem_is_named_by_key() {
        let text = r#"
[kafka]
brokers = ""
[postgres]
url = "mysql://x"
[pipeline]
batch_max_rows = 0
batch_max_wait_ms = 10
channel_capacity_rows = 10
scoring_workers = 0
max_batches_in_flight = 0
state_wait_ms = 1
shutdown_deadline_ms = 1
[model]
dir = "/nonexistent/model"
[thresholds]
review = 0.95
decline = 0.9
[thresholds.channel.moon]
review = 0.1
decline = 1.5
[language_model]
dir = "/nonexistent/lm"
max_batch = 0
[retention]
keep_days = 0
create_ahead_days = 1000
"#;
        let Err(ParseFailure::Invalid(problems)) = Config::parse(text, Path::new("."), no_env())
        else {
            panic!("must be invalid")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for want in [
            "language_model.dir",
            "language_model.max_batch",
            "kafka.brokers",
            "postgres.url",
            "pipeline.batch_max_rows",
            "pipeline.scoring_workers",
            "pipeline.max_batches_in_flight",
            "model.dir",
            "thresholds.review",
            "thresholds.channel.moon",
            "thresholds.channel.moon.decline",
            "retention.keep_days",
            "retention.create_ahead_days",
        ] {
            assert!(keys.contains(&want), "missing {want} in {keys:?}");
        }
    }

    #[test]
    fn the_language_model_is_optional_and_resolved_against_the_config_folder() {
        let dir = model_dir();
        let c = Config::parse(&sample(dir.path()), Path::new("."), no_env()).unwrap();
        assert!(c.language_model.is_none(), "absent = off");

        let base = dir.path().parent().unwrap();
        let name = dir.path().file_name().unwrap().to_str().unwrap();
        let text = format!(
            "{}\n[language_model]\ndir = \"{name}\"\n",
            sample(dir.path())
        );
        let c = Config::parse(&text, base, no_env()).unwrap();
        let lm = c.language_model.unwrap();
        assert_eq!(lm.dir, dir.path());
        assert_eq!((lm.max_batch, lm.intra_threads), (256, 1));

        let text = format!(
            "{}\n[language_model]\ndir = \"{name}\"\nsize = 3\n",
            sample(dir.path())
        );
        let Err(ParseFailure::Invalid(p)) = Config::parse(&text, base, no_env()) else {
            panic!("unknown keys are rejected")
        };
        assert!(p[0].message.contains("size"), "{p:?}");
    }

    /// Seen: an override that failed to parse printed its value, secrets
    /// included. No error text may carry a value from the file or the
    /// environment.
    #[test]
    fn secrets_never_reach_error_messages() {
        let dir = model_dir();
        let secret = "hunter2-s3cret";
        let texts = [
            // An unterminated string on the password's line.
            sample(dir.path()).replace(
                "url = \"postgres://u:hunter2@localhost/db\"",
                &format!("url = \"postgres://u:{secret}@localhost/db"),
            ),
            // A secret in a key that wants a number.
            sample(dir.path()).replace(
                "[postgres]",
                &format!("[postgres]\nmax_connections = \"{secret}\""),
            ),
            // A secret in a Kafka property of the wrong type.
            format!(
                "{}\n[kafka.properties]\n\"sasl.password\" = [\"{secret}\"]\n",
                sample(dir.path())
            ),
        ];
        for text in &texts {
            let failure = Config::parse(text, Path::new("."), no_env()).unwrap_err();
            let message = match failure {
                ParseFailure::Syntax(m) => m,
                ParseFailure::Invalid(p) => format!("{p:?}"),
            };
            assert!(!message.contains(secret), "{message}");
            assert!(!message.is_empty());
        }
        let env = vec![(
            "RISKSTREAM_POSTGRES__MAX_CONNECTIONS".to_string(),
            format!("postgres://u:{secret}@db/x"),
        )];
        let Err(ParseFailure::Invalid(p)) = Config::parse(&sample(dir.path()), Path::new("."), env)
        else {
            panic!("a URL is no connection count")
        };
        let message = p.iter().map(|p| p.to_string()).collect::<String>();
        assert!(!message.contains(secret), "{message}");
        assert!(message.contains("max_connections"), "{message}");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let dir = model_dir();
        let text = sample(dir.path()).replace("[postgres]", "[postgres]\npool_size = 3");
        let Err(ParseFailure::Invalid(p)) = Config::parse(&text, Path::new("."), no_env()) else {
            panic!()
        };
        assert!(p[0].message.contains("pool_size"), "{p:?}");
    }

    #[test]
    fn environment_overrides_apply_and_are_validated() {
        let dir = model_dir();
        let env = vec![
            (
                "RISKSTREAM_THRESHOLDS__DECLINE".to_string(),
                "0.95".to_string(),
            ),
            (
                "RISKSTREAM_KAFKA__BROKERS".to_string(),
                "broker:1".to_string(),
            ),
            ("RISKSTREAM_CONFIG".to_string(), "ignored".to_string()),
        ];
        let c = Config::parse(&sample(dir.path()), Path::new("."), env).unwrap();
        assert_eq!(c.thresholds.decline, 0.95);
        assert_eq!(c.kafka.brokers, "broker:1");

        let env = vec![(
            "RISKSTREAM_THRESHOLDS__REVIEW".to_string(),
            "0.99".to_string(),
        )];
        let Err(ParseFailure::Invalid(p)) = Config::parse(&sample(dir.path()), Path::new("."), env)
        else {
            panic!()
        };
        assert_eq!(p[0].key, "thresholds.review");
    }
}
