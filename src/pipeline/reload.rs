//! Live policy and models: the engine watches its config file (every
//! `pipeline.config_poll_ms`, and at once on SIGHUP).
//! - A change to `[thresholds]` (with its channel overrides) or `[rules]` is
//!   checked as at start-up, registered as a `threshold_sets` version (with
//!   the file's `thresholds.changed_by`) and handed to the decide stage,
//!   which decides with it from its next batch.
//! - A change to `[model]` or `[shadow]` opens the model with every check of
//!   start-up (sha256, IO contract, golden outputs) and hands it to the score
//!   stage: promoting the shadow is pointing `[model]` at its directory.
//!
//! An edit is applied whole or not at all: an invalid file, a broken rule or
//! a model that fails a check changes nothing; the log names every problem
//! and `riskstream_config_reloads_total{outcome="rejected"}` counts it.
//! Exactly-once is untouched: a batch is scored and decided whole under one
//! model and one policy, each row records both, and a batch replayed after a
//! crash is simply decided again. Other sections take effect at the next
//! restart, and the log says so.

use super::stage::{Models, Shared};
use crate::config::{Config, ConfigError, Problem};
use crate::decision::Policy;
use crate::metrics::Metrics;
use crate::sink;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub(super) struct Reloader {
    path: PathBuf,
    /// The configuration the engine started with: what other sections are.
    running: Config,
    feature_names: Vec<String>,
    pool: PgPool,
    metrics: Arc<Metrics>,
    policy: watch::Sender<Arc<Policy>>,
    models: watch::Sender<Arc<Models>>,
    /// This engine, as `policy_changes.engine` names it.
    engine: String,
    /// The file's bytes last looked at, by hash: unchanged bytes are not
    /// looked at again, so a rejected file is reported once.
    last_seen: Option<[u8; 32]>,
}

/// What looking at a changed file did.
#[derive(Debug, PartialEq)]
enum Outcome {
    Applied,
    Unchanged,
    Rejected,
    /// Postgres could not register the policy: try again at the next look.
    Retry,
}

impl Reloader {
    pub(super) fn new(
        shared: &Shared,
        path: PathBuf,
        engine: &str,
        policy: watch::Sender<Arc<Policy>>,
        models: watch::Sender<Arc<Models>>,
    ) -> Reloader {
        let last_seen = std::fs::read(&path).ok().map(|b| Sha256::digest(b).into());
        Reloader {
            path,
            running: shared.config.clone(),
            feature_names: shared
                .models
                .borrow()
                .champion
                .manifest
                .feature_names
                .clone(),
            pool: shared.pool.clone(),
            metrics: shared.metrics.clone(),
            policy,
            models,
            engine: engine.to_owned(),
            last_seen,
        }
    }

    /// Until the engine stops (the task is aborted).
    pub(super) async fn run(mut self) {
        let poll = Duration::from_millis(self.running.pipeline.config_poll_ms);
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; the config file is still polled");
                None
            }
        };
        loop {
            let forced = tokio::select! {
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                _ = tokio::time::sleep(poll), if !poll.is_zero() => false,
                else => return,
            };
            self.look(forced).await;
        }
    }

    async fn look(&mut self, forced: bool) {
        let bytes = match tokio::fs::read(&self.path).await {
            Ok(b) => b,
            Err(e) => {
                // Editors replace files by renaming: a moment without one is normal.
                if forced {
                    tracing::warn!(path = %self.path.display(), error = %e, "SIGHUP: cannot read the config file");
                }
                return;
            }
        };
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        if !forced && self.last_seen == Some(digest) {
            return;
        }
        let outcome = match std::str::from_utf8(&bytes) {
            Ok(text) => self.apply(text).await,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "config change rejected: the file is not UTF-8; the policy in force stays");
                Outcome::Rejected
            }
        };
        let label = match outcome {
            Outcome::Applied => "applied",
            Outcome::Unchanged => "unchanged",
            Outcome::Rejected => "rejected",
            Outcome::Retry => return,
        };
        self.metrics
            .config_reloads
            .with_label_values(&[label])
            .inc();
        self.last_seen = Some(digest);
    }

    /// Apply `text`, the file's content whose hash `look` remembers.
    async fn apply(&mut self, text: &str) -> Outcome {
        let path = self.path.display().to_string();
        let config = match Config::from_text(&self.path, text, std::env::vars()) {
            Ok(c) => c,
            Err(ConfigError::Invalid { mut problems, .. }) => {
                // The rules' problems too, though the file did not load.
                problems.extend(rule_problems(text, &self.feature_names));
                return self.rejected(&problems);
            }
            Err(e) => {
                tracing::error!(path, error = %e, "config change rejected; the policy in force stays");
                return Outcome::Rejected;
            }
        };
        let mut policy =
            match Policy::compile(&config.thresholds, &config.rules, &self.feature_names) {
                Ok(p) => p,
                Err(problems) => return self.rejected(&problems),
            };
        let restart = restart_sections(&self.running, &config);
        if !restart.is_empty() {
            tracing::warn!(path, sections = ?restart, "these sections changed: they take effect at the next restart (only [thresholds], [rules], [model] and [shadow] are live)");
        }
        let current = self.policy.borrow().clone();
        let current_models = self.models.borrow().clone();
        let policy_changed = policy.content_sha256() != current.content_sha256();
        let models = if current_models.differ_from(&config) {
            match Models::open(&config, &self.pool, Some(&current_models)).await {
                Ok(m) => Some(m),
                Err(message) => {
                    let key = message.split(':').next().unwrap_or("model").to_owned();
                    return self.rejected(&[Problem { key, message }]);
                }
            }
        } else {
            None
        };
        if !policy_changed && models.is_none() {
            tracing::info!(
                path,
                version = current.version,
                "config file changed; nothing live did"
            );
            return Outcome::Unchanged;
        }
        if policy_changed {
            policy.version = match sink::register_thresholds(&self.pool, &policy).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(path, error = %e, "cannot register the changed policy yet; retrying at the next look");
                    return Outcome::Retry;
                }
            };
        }
        // The audit row first: if it cannot be written, nothing changes yet.
        let version = if policy_changed {
            policy.version
        } else {
            current.version
        };
        let described = models
            .as_ref()
            .map_or_else(|| current_models.describe(), |m| m.describe());
        if let Err(e) = sink::record_policy_change(
            &self.pool,
            version,
            policy.changed_by(),
            &described,
            &self.engine,
            "reload",
        )
        .await
        {
            tracing::warn!(path, error = %e, "cannot record the change in policy_changes yet; retrying at the next look");
            return Outcome::Retry;
        }
        // Models first: a batch scored by the new model and decided under
        // the old policy (or the reverse) records both, as they were.
        if let Some(models) = models {
            tracing::info!(path, from = %current_models.describe(), to = %models.describe(), "models changed; in force from the next batch");
            self.models.send_replace(Arc::new(models));
        }
        if policy_changed {
            tracing::info!(
                path,
                from = current.version,
                to = policy.version,
                changed_by = policy.changed_by(),
                review = policy.thresholds.config.review,
                decline = policy.thresholds.config.decline,
                rules = policy.rules.rules().len(),
                "policy changed; in force from the next batch"
            );
            self.metrics.policy_version.set(policy.version.into());
            self.policy.send_replace(Arc::new(policy));
        }
        Outcome::Applied
    }

    fn rejected(&self, problems: &[Problem]) -> Outcome {
        tracing::error!(
            path = %self.path.display(),
            problems = %crate::config::listed(problems, "; "),
            "config change rejected ({} problem(s)); the policy in force stays",
            problems.len()
        );
        Outcome::Rejected
    }
}

/// Problems in the `[rules]` of a file that may not load as a whole.
fn rule_problems(text: &str, feature_names: &[String]) -> Vec<Problem> {
    let rules = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut doc| doc.remove("rules"))
        .and_then(|rules| rules.try_into::<crate::config::RulesConfig>().ok());
    match rules.map(|r| crate::decision::Rules::compile(&r, feature_names)) {
        Some(Err(problems)) => problems,
        _ => Vec::new(),
    }
}

/// Sections other than the live ones that differ.
fn restart_sections(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            changed.push(name)
        }
    };
    check("kafka", running.kafka == new.kafka);
    check("postgres", running.postgres == new.postgres);
    check("pipeline", running.pipeline == new.pipeline);
    check("features", running.features == new.features);
    check("event_time", running.event_time == new.event_time);
    check("server", running.server == new.server);
    check(
        "language_model",
        running.language_model == new.language_model,
    );
    changed
}
