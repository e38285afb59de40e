//! Poison input: every bad record lands in the DLQ (Kafka and Postgres) with
//! its reason and source offset, and the stream keeps flowing around it.

use crate::common::{brokers, World};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use sqlx::Row;
use std::time::Duration;

fn good(i: usize) -> String {
    format!(
        r#"{{"tx_id":"ok-{i}","ts":"2026-03-01T10:{:02}:00Z","card_id":"card-{}","terminal_id":"term-1","amount":{}.5,"channel":"pos","country":"FR"}}"#,
        i % 60,
        i % 3,
        10 + i
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_poison_record_is_dead_lettered_with_its_reason_and_offset() {
    let world = World::new("poison", 1).await;
    let huge = "x".repeat(1_000_000);
    let poison: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{not json".to_vec()),
        ("terminal_id", br#"{"tx_id":"p1","ts":"2026-03-01T10:00:00Z","card_id":"c","amount":5}"#.to_vec()),
        ("amount", br#"{"tx_id":"p2","ts":"2026-03-01T10:00:00Z","card_id":"c","terminal_id":"t","amount":-5}"#.to_vec()),
        ("invalid JSON", br#"{"tx_id":"p3","ts":"2026-03-01T10:00:00Z","card_id":"c","terminal_id":"t","amount":"ten"}"#.to_vec()),
        ("invalid JSON", br#"{"tx_id":"p4","ts":"not a time","card_id":"c","terminal_id":"t","amount":5}"#.to_vec()),
        ("too large", huge.into_bytes()),
        ("empty value", Vec::new()),
    ];
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let topic = world.topic("transactions");
    // good, poison, good, poison, ...: offsets 2k are good, 2k+1 poison.
    for (i, (_, payload)) in poison.iter().enumerate() {
        let g = good(i);
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&topic)
                    .key(b"k")
                    .payload(g.as_bytes()),
            )
            .unwrap();
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&topic)
                    .key(b"k")
                    .payload(payload.as_slice()),
            )
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    }
    let tail = good(100);
    producer
        .send(
            BaseRecord::<[u8], [u8]>::to(&topic)
                .key(b"k")
                .payload(tail.as_bytes()),
        )
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut engine = world.start_engine("poison");
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(120))
        .await;
    engine.terminate();

    let decided = world.count("SELECT count(*) FROM risk_decisions").await;
    assert_eq!(
        decided,
        poison.len() as i64 + 1,
        "every good record around the poison is decided"
    );
    let rows = sqlx::query(
        "SELECT source_offset, reason, length(payload) FROM dead_letters ORDER BY source_offset",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), poison.len());
    for (i, ((want, payload), row)) in poison.iter().zip(&rows).enumerate() {
        let offset: i64 = row.get(0);
        let reason: String = row.get(1);
        let stored_len: Option<i32> = row.get(2);
        assert_eq!(offset, 2 * i as i64 + 1, "source offset of poison #{i}");
        assert!(
            reason.contains(want),
            "poison #{i}: reason {reason:?} should mention {want:?}"
        );
        if *want == "too large" {
            // Refused before it was copied: its prefix is kept, its size named.
            assert_eq!(
                stored_len,
                Some(1024),
                "an oversized record keeps its prefix"
            );
            assert!(
                reason.contains(&format!("{} bytes", payload.len())),
                "{reason}"
            );
        } else {
            assert_eq!(
                stored_len.unwrap_or(0) as usize,
                payload.len(),
                "original bytes kept"
            );
        }
    }

    // The Kafka DLQ has the same records, with the source in headers.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("{}-dlq-reader", world.name))
        .set("auto.offset.reset", "earliest")
        .set("fetch.message.max.bytes", "2000000")
        .create()
        .unwrap();
    consumer.subscribe(&[&world.topic("dlq")]).unwrap();
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < poison.len() && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m.headers().expect("DLQ records carry headers");
            let header = |key: &str| {
                headers
                    .iter()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).to_string())
            };
            // Oversized payloads travel truncated, with their original length.
            let len = header("truncated_from")
                .map_or(m.payload().map_or(0, |p| p.len()), |n| n.parse().unwrap());
            // A stable key: the record's source, so duplicates are easy to drop.
            assert_eq!(
                m.key().map(|k| String::from_utf8_lossy(k).to_string()),
                Some(format!(
                    "{}/0/{}",
                    world.topic("transactions"),
                    header("source_offset").unwrap()
                ))
            );
            assert_eq!(header("source_key").as_deref(), Some("k"));
            seen.push((
                header("source_offset").unwrap(),
                header("reason").unwrap(),
                len,
            ));
        }
    }
    assert_eq!(
        seen.len(),
        poison.len(),
        "all poison records on the DLQ topic"
    );
    seen.sort_by_key(|s| s.0.parse::<i64>().unwrap());
    for (i, (offset, reason, len)) in seen.iter().enumerate() {
        assert_eq!(offset, &(2 * i + 1).to_string());
        assert!(reason.contains(poison[i].0));
        assert_eq!(*len, poison[i].1.len());
    }
    world.tear_down().await;
}
