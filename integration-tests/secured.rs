//! A secured cluster: `riskstream run` against Kafka's SASL_SSL listener
//! (SCRAM-SHA-512, broker certificate checked against the stack's local CA)
//! with Postgres over `sslmode=verify-full`, and Postgres refusing a server
//! it cannot verify.
//!
//! The stack (`scripts/stack up`) provides the listener on
//! `KAFKA_SASL_BROKERS`, the SCRAM user and the CA at `RISKSTREAM_TLS_CA`
//! (exported by `scripts/env.sh`). The engine's config names only the SASL
//! listener, and the broker advertises that listener's own address there, so
//! every Kafka client the engine makes (topic admin, consumers, watermark
//! reader, dead-letter producer) works only if `kafka.properties` reached it.

use crate::common::{admin_url, repo_root, Engine, World};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use riskstream::config::{Config, KafkaConfig};
use riskstream::ingest::client;
use riskstream::simulate::{self, SimConfig, Simulator};
use sqlx::{Connection, PgConnection};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

const N: usize = 2_000;
const SEED: u64 = 11;
/// Undecodable records produced after the stream, so the dead-letter
/// producer has to write through the SASL listener too.
const POISON: usize = 3;
const POISON_KEY: &[u8] = b"secured-poison";
/// Marks the engine's Postgres sessions in `pg_stat_activity`.
const APP_NAME: &str = "riskstream-secured-it";

fn sasl_brokers() -> String {
    std::env::var("KAFKA_SASL_BROKERS").unwrap_or_else(|_| "127.0.0.1:19094".into())
}

fn scram_user() -> String {
    std::env::var("KAFKA_SASL_USERNAME").unwrap_or_else(|_| "riskstream".into())
}

fn scram_password() -> String {
    std::env::var("KAFKA_SASL_PASSWORD").unwrap_or_else(|_| "riskstream-dev-only".into())
}

fn tls_ca() -> PathBuf {
    let ca = std::env::var("RISKSTREAM_TLS_CA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".stack/tls/ca.pem"));
    assert!(
        ca.is_file(),
        "{} missing: run scripts/stack up (it makes the local CA)",
        ca.display()
    );
    ca
}

/// `url` with TLS required and the server verified against `ca`, by name.
fn verify_full(url: &str, ca: &std::path::Path) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode=verify-full&sslrootcert={}", ca.display())
}

fn metadata(client: &ClientConfig, topic: Option<&str>) -> Result<usize, String> {
    let consumer: BaseConsumer = client
        .clone()
        .set("group.id", "it-secured-probe")
        .set("log_level", "0")
        .create()
        .map_err(|e| e.to_string())?;
    consumer
        .fetch_metadata(topic, Duration::from_secs(8))
        .map(|md| md.topics().len())
        .map_err(|e| e.to_string())
}

/// The world's config, pointed at the SASL_SSL listener (with the security
/// settings in `[kafka.properties]`) and at Postgres with `verify-full`.
fn secured_config(world: &World, partitions: i32) -> String {
    let mut doc: toml::Table = world
        .config_text(partitions, "")
        .parse()
        .expect("the world's config is TOML");
    let kafka = doc["kafka"].as_table_mut().unwrap();
    kafka.insert("brokers".into(), sasl_brokers().into());
    let mut props = toml::Table::new();
    for (k, v) in [
        ("security.protocol", "SASL_SSL".to_string()),
        ("sasl.mechanisms", "SCRAM-SHA-512".to_string()),
        ("sasl.username", scram_user()),
        ("sasl.password", scram_password()),
        ("ssl.ca.location", tls_ca().display().to_string()),
    ] {
        props.insert(k.into(), v.into());
    }
    kafka.insert("properties".into(), props.into());
    let postgres = doc["postgres"].as_table_mut().unwrap();
    for key in ["url", "migrate_url"] {
        if let Some(url) = postgres.get(key).and_then(|u| u.as_str()) {
            let url = format!(
                "{}&application_name={APP_NAME}",
                verify_full(url, &tls_ca())
            );
            postgres.insert(key.into(), url.into());
        }
    }
    toml::to_string(&doc).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_runs_against_a_sasl_ssl_broker() {
    let partitions = 2;
    let world = World::new("sasl", partitions).await;
    let config_path = world.dir.path().join("secured.toml");
    std::fs::write(&config_path, secured_config(&world, partitions)).unwrap();
    let kafka: KafkaConfig = Config::load(&config_path)
        .expect("the secured config is valid")
        .kafka;
    let transactions = world.topic("transactions");

    // The listener really is secured: without credentials, or with the wrong
    // password, nothing can be read; with the config's properties it can.
    let anonymous = metadata(&client::plain(&sasl_brokers()), Some(&transactions));
    assert!(
        anonymous.is_err(),
        "a client without SASL/TLS settings must not read metadata from {}: {anonymous:?}",
        sasl_brokers()
    );
    let mut wrong = client::base(&kafka);
    wrong.set("sasl.password", "not-the-password");
    let wrong = metadata(&wrong, Some(&transactions));
    assert!(
        wrong.is_err(),
        "a wrong SCRAM password must be refused: {wrong:?}"
    );
    assert_eq!(
        metadata(&client::base(&kafka), Some(&transactions)),
        Ok(1),
        "kafka.properties authenticate against the SASL_SSL listener"
    );

    // Produce through the SASL listener, with the client the CLI's simulator uses.
    let sim = Simulator::new(SimConfig {
        max_transactions: Some(N),
        ..SimConfig::for_transactions(N, SEED)
    });
    let labels = world.topic("labels");
    let target = simulate::kafka::Target {
        client: client::base(&kafka),
        transactions_topic: &transactions,
        labels_topic: &labels,
        rate: None,
        progress: false,
    };
    let produced = simulate::kafka::produce(sim, None, &target)
        .expect("produce through SASL_SSL")
        .transactions;
    assert!(produced as usize >= N);
    let producer: BaseProducer = client::base(&kafka).create().unwrap();
    for i in 0..POISON {
        let payload = format!("{{not json #{i}");
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&transactions)
                    .key(POISON_KEY)
                    .payload(payload.as_bytes()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    let produced = produced + POISON as u64;

    let mut engine = Engine::start(&config_path, &world.dir.path().join("engine-sasl.log"));
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(300))
        .await;

    // While it runs: every Postgres session of the engine is encrypted.
    let (sessions, encrypted): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name = $1",
    )
    .bind(APP_NAME)
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert!(sessions > 0, "the engine's sessions are visible");
    assert_eq!(
        encrypted, sessions,
        "every engine session to Postgres uses TLS"
    );

    let status = engine.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status}:\n{}",
        engine.log_tail()
    );
    world.assert_exactly_once(produced).await;

    let poisoned = world
        .count("SELECT count(*) FROM dead_letters WHERE message_key = 'secured-poison'::bytea")
        .await;
    assert_eq!(
        poisoned, POISON as i64,
        "the poison records are dead-lettered"
    );
    let dead = world.count("SELECT count(*) FROM dead_letters").await;
    let on_dlq: i64 = world.end_offsets(&world.topic("dlq")).values().sum();
    assert_eq!(
        on_dlq, dead,
        "the dead-letter producer wrote every dead letter to Kafka through SASL_SSL"
    );
    world.tear_down().await;
}

/// A wrong password is not a broker that is still starting: the engine
/// used to retry it forever (its start-up wait saw only timeouts). It must
/// exit non-zero, say the brokers refused it, and never print the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sasl_login_fails_start_up_with_its_cause() {
    let world = World::new("sasl_refused", 1).await;
    let config_path = world.dir.path().join("refused.toml");
    let wrong = "wrong-password-c4f1";
    std::fs::write(
        &config_path,
        secured_config(&world, 1).replace(&scram_password(), wrong),
    )
    .unwrap();
    let mut engine = Engine::start(&config_path, &world.dir.path().join("engine-refused.log"));
    let status = engine
        .exits_within(Duration::from_secs(120), "still retrying a refused login")
        .await;
    let log = engine.log_tail();
    assert!(!status.success(), "exit code must be non-zero: {status}");
    assert!(log.contains("refused"), "the cause is named:\n{log}");
    let whole = std::fs::read_to_string(&engine.log).unwrap();
    assert!(!whole.contains(wrong), "the password never reaches the log");
    world.tear_down().await;
}

async fn ssl_of(c: &mut PgConnection) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(c)
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_verify_full() {
    let ca = tls_ca();
    let url = admin_url();

    let mut tls = PgConnection::connect(&verify_full(&url, &ca))
        .await
        .expect("verify-full against the stack's CA connects");
    assert!(ssl_of(&mut tls).await, "the session is encrypted");
    tls.close().await.unwrap();

    // Plain connections keep working (tests, scripts, older configs).
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut plain = PgConnection::connect(&format!("{url}{sep}sslmode=disable"))
        .await
        .unwrap();
    assert!(
        !ssl_of(&mut plain).await,
        "sslmode=disable is not encrypted"
    );
    plain.close().await.unwrap();

    // A CA that did not sign the server's certificate: refused.
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=some other CA", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .expect("openssl is installed (scripts/stack uses it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = PgConnection::connect(&verify_full(&url, &other_ca)).await;
    let err = refused
        .expect_err("a server certificate from another CA is refused")
        .to_string();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "refused for its certificate, not for something else: {err}"
    );
}
