//! The one place Kafka clients are configured.
//!
//! Every client riskstream creates — the consumers, the dead-letter producer,
//! the watermark reader, the topic admin and the simulator's producer —
//! starts from [`base`], so the security settings in `kafka.properties`
//! (SASL, TLS, …) reach all of them. Values are secrets: this module never
//! logs them, and nothing should log a `ClientConfig` built from it.

use crate::config::KafkaConfig;
use rdkafka::ClientConfig;

/// `bootstrap.servers` plus every `kafka.properties` entry; callers add
/// what is specific to their role (group, idempotence, …).
pub fn base(cfg: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in &cfg.properties {
        client.set(k, v.expose());
    }
    client.set("bootstrap.servers", &cfg.brokers);
    client
}

/// A client for plain brokers (tools and tests without a config file).
pub fn plain(brokers: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    client
}
