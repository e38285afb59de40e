//! Every metric the engine exports, in one place, in Prometheus format.
//!
//! Names are `riskstream_*`; stages record into these handles and nothing
//! else registers metrics, so this file is the reference for dashboards.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Records read from Kafka, by topic.
    pub consumed: IntCounterVec,
    /// Decisions committed to Postgres, by outcome.
    pub decided: IntCounterVec,
    /// Records dead-lettered (both streams), by reason: `json`, `empty`,
    /// `too_large`, `invalid_<field>`, `skew_ahead`, `skew_behind`,
    /// `skew_future`, `duplicate`, `postgres_data`, `postgres_constraint`.
    pub dead_letters: IntCounterVec,
    /// Each partition's committed event-time clock (unix seconds): the
    /// newest event time it has admitted. `time() - x` is its event-time age.
    pub partition_event_time: GaugeVec,
    /// When each partition last committed (unix seconds): a partition whose
    /// lag is positive and whose value stops moving is stalled.
    pub partition_committed_at: GaugeVec,
    /// Records in each partition not yet read, from librdkafka's statistics.
    pub consumer_lag: IntGaugeVec,
    /// Labels committed.
    pub labels: IntCounter,
    /// Seconds per stage per batch (`featurize`, `surprise`, `score`, `sink`,
    /// `total`); `surprise` (the merchant language model) only when configured.
    pub stage_seconds: HistogramVec,
    /// Seconds per ONNX Runtime call.
    pub model_seconds: Histogram,
    /// Rows per committed batch.
    pub batch_rows: Histogram,
    /// Seconds from a transaction's Kafka timestamp to the start of its
    /// batch's featurization (`at="featurize"`: reading and waiting for a
    /// batch to close or for the watermark) and to its decision's commit
    /// (`at="commit"`: the end-to-end latency). The broker's append time
    /// when the topic is `message.timestamp.type=LogAppendTime`, else the
    /// producer's clock.
    pub record_age_seconds: HistogramVec,
    /// Sink transactions retried after a transient Postgres error.
    pub sink_retries: IntCounter,
    /// Every Postgres operation retried after a transient error, by the
    /// work that failed (the sink's transaction and the reads of state).
    pub postgres_retries: IntCounterVec,
    /// Batches Postgres refused by binary COPY, written by INSERT instead.
    pub sink_copy_refused: IntCounter,
    /// Batches whose month partitions could not be created (their rows
    /// went to the default partition).
    pub partition_failures: IntCounter,
    pub stale_batches: IntCounter,
    /// Batches scored before the terminal/label watermark was reached.
    pub incomplete_state: IntCounter,
    /// Records read but not yet committed (consumed − committed).
    pub in_flight: IntGauge,
    /// Surprise of each committed transaction's MCC under the merchant
    /// language model, in nats (only when `[language_model]` is configured).
    pub mcc_surprise: Histogram,
    /// Scores of committed decisions: their distribution over time shows
    /// drift (the share above a threshold moving against last week's).
    pub scores: Histogram,
    /// `threshold_sets.version` of the policy (thresholds and rules) deciding now.
    pub policy_version: IntGauge,
    /// Looks at a changed config file, by outcome: `applied` (a new policy
    /// decides from the next batch), `unchanged` (nothing live changed),
    /// `rejected` (invalid: the old policy stays; the log names every problem).
    pub config_reloads: IntCounterVec,
    /// Rows on which each rule fired (counted when decided, so a batch
    /// replayed after a crash counts again).
    pub rules_fired: IntCounterVec,
    /// Rows on which a rule's condition could not be evaluated (it did not
    /// fire), by rule: a sign the rule needs a `!= null` guard.
    pub rule_failures: IntCounterVec,
    /// Batches the shadow model failed to score (its rows are missing from
    /// `shadow_decisions`; the champion decided them as ever).
    pub shadow_failures: IntCounter,
    /// Rows where the shadow's would-be decision differs from the champion's.
    pub shadow_disagreements: IntCounter,
}

impl Metrics {
    /// The ages of records with these Kafka timestamps (ms) now, `at` a
    /// point of the pipeline (a label of `record_age_seconds`).
    pub fn record_ages(&self, at: &str, kafka_ts_ms: impl Iterator<Item = i64>) {
        let h = self.record_age_seconds.with_label_values(&[at]);
        let now = chrono::Utc::now().timestamp_millis();
        for ts in kafka_ts_ms {
            h.observe((now - ts).max(0) as f64 / 1000.0);
        }
    }

    /// One batch's time in `stage` (a label of `stage_seconds`), since `started`.
    pub fn stage_took(&self, stage: &str, started: std::time::Instant) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn new() -> Metrics {
        let registry = Registry::new();
        let latency = || {
            vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]
        };
        let m = Metrics {
            consumed: IntCounterVec::new(
                Opts::new("riskstream_consumed_total", "Records read from Kafka"),
                &["topic"],
            )
            .unwrap(),
            decided: IntCounterVec::new(
                Opts::new("riskstream_decisions_total", "Decisions committed"),
                &["decision"],
            )
            .unwrap(),
            dead_letters: IntCounterVec::new(
                Opts::new("riskstream_dead_letters_total", "Records dead-lettered"),
                &["reason"],
            )
            .unwrap(),
            partition_event_time: GaugeVec::new(
                Opts::new(
                    "riskstream_partition_event_time_seconds",
                    "Newest event time admitted per partition (unix seconds)",
                ),
                &["topic", "partition"],
            )
            .unwrap(),
            partition_committed_at: GaugeVec::new(
                Opts::new(
                    "riskstream_partition_committed_at_seconds",
                    "Last commit per partition (unix seconds)",
                ),
                &["topic", "partition"],
            )
            .unwrap(),
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "riskstream_consumer_lag_records",
                    "Records not yet read per partition",
                ),
                &["topic", "partition"],
            )
            .unwrap(),
            labels: IntCounter::new("riskstream_labels_total", "Labels committed").unwrap(),
            stage_seconds: HistogramVec::new(
                HistogramOpts::new("riskstream_stage_seconds", "Seconds per batch and stage")
                    .buckets(latency()),
                &["stage"],
            )
            .unwrap(),
            model_seconds: Histogram::with_opts(
                HistogramOpts::new("riskstream_model_seconds", "Seconds per ONNX Runtime batch")
                    .buckets(latency()),
            )
            .unwrap(),
            batch_rows: Histogram::with_opts(
                HistogramOpts::new("riskstream_batch_rows", "Rows per batch")
                    .buckets(vec![1.0, 10.0, 100.0, 500.0, 1000.0, 2000.0, 5000.0]),
            )
            .unwrap(),
            record_age_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "riskstream_record_age_seconds",
                    "Seconds from a transaction's Kafka timestamp to its batch's featurization (at=featurize) and to its commit (at=commit)",
                )
                .buckets(
                    [latency(), vec![30.0, 60.0, 300.0]].concat(),
                ),
                &["at"],
            )
            .unwrap(),
            sink_retries: IntCounter::new(
                "riskstream_sink_retries_total",
                "Sink transactions retried",
            )
            .unwrap(),
            postgres_retries: IntCounterVec::new(
                Opts::new(
                    "riskstream_postgres_retries_total",
                    "Postgres operations retried after a connection-type error, by the work that failed",
                ),
                &["work"],
            )
            .unwrap(),
            sink_copy_refused: IntCounter::new(
                "riskstream_sink_copy_refused_total",
                "Batches Postgres refused by binary COPY (a tx_id decided meanwhile, or a refused value), written by INSERT instead",
            )
            .unwrap(),
            partition_failures: IntCounter::new(
                "riskstream_partition_failures_total",
                "Batches whose month partitions could not be created; their rows went to the default partition until `riskstream partitions` or a later batch creates the month",
            )
            .unwrap(),
            stale_batches: IntCounter::new(
                "riskstream_stale_batches_total",
                "Batches dropped at commit because their partitions were claimed again since (replayed by the new claim)",
            )
            .unwrap(),
            incomplete_state: IntCounter::new(
                "riskstream_incomplete_state_batches_total",
                "Batches scored before the watermark",
            )
            .unwrap(),
            in_flight: IntGauge::new(
                "riskstream_in_flight_records",
                "Records read but not committed",
            )
            .unwrap(),
            mcc_surprise: Histogram::with_opts(
                HistogramOpts::new(
                    "riskstream_mcc_surprise_nats",
                    "Surprise of committed transactions' MCC under the merchant language model (nats)",
                )
                .buckets(vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0]),
            )
            .unwrap(),
            scores: Histogram::with_opts(
                HistogramOpts::new(
                    "riskstream_score",
                    "Fraud scores of committed decisions",
                )
                .buckets(vec![
                    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99,
                ]),
            )
            .unwrap(),
            policy_version: IntGauge::new(
                "riskstream_policy_version",
                "threshold_sets.version of the thresholds and rules deciding now",
            )
            .unwrap(),
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "riskstream_config_reloads_total",
                    "Changed config files looked at, by outcome (applied, unchanged, rejected)",
                ),
                &["outcome"],
            )
            .unwrap(),
            rules_fired: IntCounterVec::new(
                Opts::new("riskstream_rules_fired_total", "Rows on which a rule fired"),
                &["rule"],
            )
            .unwrap(),
            rule_failures: IntCounterVec::new(
                Opts::new(
                    "riskstream_rule_failures_total",
                    "Rows on which a rule's condition could not be evaluated (it did not fire)",
                ),
                &["rule"],
            )
            .unwrap(),
            shadow_failures: IntCounter::new(
                "riskstream_shadow_failures_total",
                "Batches the shadow model failed to score (the champion decided them)",
            )
            .unwrap(),
            shadow_disagreements: IntCounter::new(
                "riskstream_shadow_disagreements_total",
                "Rows whose shadow decision differs from the champion's",
            )
            .unwrap(),
            registry,
        };
        m.registry.register(Box::new(m.consumed.clone())).unwrap();
        m.registry.register(Box::new(m.scores.clone())).unwrap();
        for c in [&m.shadow_failures, &m.shadow_disagreements] {
            m.registry.register(Box::new(c.clone())).unwrap();
        }
        m.registry
            .register(Box::new(m.policy_version.clone()))
            .unwrap();
        for c in [&m.config_reloads, &m.rules_fired, &m.rule_failures] {
            m.registry.register(Box::new(c.clone())).unwrap();
        }
        m.registry.register(Box::new(m.decided.clone())).unwrap();
        m.registry
            .register(Box::new(m.dead_letters.clone()))
            .unwrap();
        for g in [&m.partition_event_time, &m.partition_committed_at] {
            m.registry.register(Box::new(g.clone())).unwrap();
        }
        m.registry
            .register(Box::new(m.consumer_lag.clone()))
            .unwrap();
        m.registry.register(Box::new(m.labels.clone())).unwrap();
        m.registry
            .register(Box::new(m.stage_seconds.clone()))
            .unwrap();
        m.registry
            .register(Box::new(m.model_seconds.clone()))
            .unwrap();
        m.registry.register(Box::new(m.batch_rows.clone())).unwrap();
        m.registry
            .register(Box::new(m.record_age_seconds.clone()))
            .unwrap();
        m.registry
            .register(Box::new(m.sink_retries.clone()))
            .unwrap();
        m.registry
            .register(Box::new(m.postgres_retries.clone()))
            .unwrap();
        m.registry
            .register(Box::new(m.sink_copy_refused.clone()))
            .unwrap();
        m.registry
            .register(Box::new(m.partition_failures.clone()))
            .unwrap();
        m.registry
            .register(Box::new(m.stale_batches.clone()))
            .unwrap();
        m.registry
            .register(Box::new(m.incomplete_state.clone()))
            .unwrap();
        m.registry.register(Box::new(m.in_flight.clone())).unwrap();
        m.registry
            .register(Box::new(m.mcc_surprise.clone()))
            .unwrap();
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

/// The Prometheus text exposition of everything in `registry`.
fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("prometheus text is UTF-8")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics of `riskstream serve` (model serving) and its model registry,
/// in their own registry so the engine's `/metrics` stays as it was.
pub struct ServeMetrics {
    pub registry: Registry,
    /// Inference requests by model and HTTP status (`model` is `_unknown`
    /// for names that are not served, so bad clients cannot grow the label set).
    pub requests: IntCounterVec,
    /// Seconds from request to response, by model.
    pub request_seconds: HistogramVec,
    /// Rows per ONNX Runtime run (after dynamic batching), by model.
    pub batch_rows: HistogramVec,
    /// Requests merged into one ONNX Runtime run, by model.
    pub batch_requests: HistogramVec,
    /// Seconds per ONNX Runtime run, by model.
    pub inference_seconds: HistogramVec,
    /// Inference requests being handled, by model.
    pub in_flight: IntGaugeVec,
    /// Model versions loaded and swapped in (including the first load), by model.
    pub model_reloads: IntCounterVec,
    /// Model directories that failed to load or verify, by model (or directory).
    pub model_reload_failures: IntCounterVec,
    /// Models currently served.
    pub models_loaded: IntGauge,
}

impl ServeMetrics {
    pub fn new() -> ServeMetrics {
        let registry = Registry::new();
        let seconds = || {
            vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]
        };
        let sizes = || {
            vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ]
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).unwrap();
            registry.register(Box::new(c.clone())).unwrap();
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["model"])
                .unwrap();
            registry.register(Box::new(h.clone())).unwrap();
            h
        };
        ServeMetrics {
            requests: counter(
                "riskstream_serve_requests_total",
                "Inference requests by model and HTTP status",
                &["model", "status"],
            ),
            request_seconds: histogram(
                "riskstream_serve_request_seconds",
                "Seconds per inference request",
                seconds(),
            ),
            batch_rows: histogram(
                "riskstream_serve_batch_rows",
                "Rows per ONNX Runtime run after dynamic batching",
                sizes(),
            ),
            batch_requests: histogram(
                "riskstream_serve_batch_requests",
                "Requests merged into one ONNX Runtime run",
                sizes(),
            ),
            inference_seconds: histogram(
                "riskstream_serve_inference_seconds",
                "Seconds per ONNX Runtime run",
                seconds(),
            ),
            in_flight: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "riskstream_serve_in_flight_requests",
                        "Inference requests being handled",
                    ),
                    &["model"],
                )
                .unwrap();
                registry.register(Box::new(g.clone())).unwrap();
                g
            },
            model_reloads: counter(
                "riskstream_model_reloads_total",
                "Model versions loaded and swapped in",
                &["model"],
            ),
            model_reload_failures: counter(
                "riskstream_model_reload_failures_total",
                "Model directories that failed to load or verify (the old version keeps serving)",
                &["model"],
            ),
            models_loaded: {
                let g =
                    IntGauge::new("riskstream_models_loaded", "Models currently served").unwrap();
                registry.register(Box::new(g.clone())).unwrap();
                g
            },
            registry,
        }
    }

    /// The Prometheus text exposition of every serving metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for ServeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every `riskstream_*` name in `text`.
    fn metric_names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("riskstream_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
        names
    }

    /// The dashboards and alert rules in `deploy/` name only metrics defined
    /// here (histograms with their `_bucket`, `_sum` and `_count` series), so
    /// a renamed metric cannot leave a panel or an alert silently empty.
    #[test]
    fn deploy_files_name_only_metrics_the_engine_exports() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let defined = metric_names(include_str!("metrics.rs"));
        let dashboard =
            std::fs::read_to_string(root.join("deploy/grafana/riskstream.json")).unwrap();
        let parsed: serde_json::Value =
            serde_json::from_str(&dashboard).expect("the dashboard is JSON");
        assert!(parsed["panels"].as_array().is_some_and(|p| !p.is_empty()));
        let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
        let mut used = metric_names(&dashboard);
        used.extend(metric_names(&alerts));
        assert!(used.len() > 10, "{used:?}");
        let unknown: Vec<&String> = used
            .iter()
            .filter(|name| {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name);
                !defined.contains(*name) && !defined.contains(base)
            })
            .collect();
        assert!(
            unknown.is_empty(),
            "not defined in src/metrics.rs: {unknown:?}"
        );
    }
}
