//! The failures seen with another team's stream, each as it was reported.
//! These tests failed on the engine before the hardening (commit 50cda2f)
//! and pass after it; `hostile.rs` covers the wider generated cases.

use crate::common::{brokers, World};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use std::time::Duration;

fn tx(id: &str, card: &str, minute: i64, amount: &str) -> String {
    let ts = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap()
        + chrono::Duration::minutes(minute);
    format!(
        r#"{{"tx_id":"{id}","ts":"{}","card_id":"{card}","terminal_id":"term-{}","amount":{amount}}}"#,
        ts.to_rfc3339(),
        minute % 3
    )
}

fn produce(world: &World, records: &[(i32, String)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let topic = world.topic("transactions");
    for (partition, payload) in records {
        producer
            .send(
                BaseRecord::<[u8], [u8]>::to(&topic)
                    .partition(*partition)
                    .key(b"k")
                    .payload(payload.as_bytes()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// "A record with no tx_id and a timestamp years ahead of the stream was
/// never dead-lettered: its partition stopped at that offset for good, the
/// other partitions dropped to one batch per state_wait_ms, and decisions
/// were made with state_complete = false." With state_wait_ms = 60 s, the
/// stream must be done well within a minute, with complete state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_a_far_future_record_without_tx_id_froze_its_partition() {
    let world = World::new("seen_freeze", 4).await;
    let mut records = Vec::new();
    for minute in 0..4_000i64 {
        let p = (minute % 4) as i32;
        records.push((
            p,
            tx(
                &format!("t{minute}"),
                &format!("c{p}-{}", minute % 13),
                minute,
                "10",
            ),
        ));
        if minute == 2_000 {
            records.push((
                0,
                r#"{"ts":"2031-06-01T00:00:00Z","card_id":"c","terminal_id":"t","amount":5}"#
                    .into(),
            ));
        }
    }
    produce(&world, &records);
    let mut engine = world.start_engine("seen-freeze");
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(50))
        .await;
    engine.terminate();
    assert_eq!(
        world.count("SELECT count(*) FROM risk_decisions").await,
        4_000
    );
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 1);
    assert_eq!(
        world
            .count("SELECT count(*) FROM risk_decisions WHERE NOT state_complete")
            .await,
        0
    );
    world.tear_down().await;
}

/// "A valid-looking event whose card_id holds a NUL character ended the
/// run: pipeline finished, engine stopped, exit code 0, no error logged."
/// And "zero-amount authorisations are dead-lettered". The records after
/// the NUL must be decided, the zero amounts too, and the engine must
/// still be running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_a_nul_in_a_card_id_stopped_the_engine_and_zero_amounts_were_refused() {
    let world = World::new("seen_nul", 1).await;
    let mut records = Vec::new();
    for minute in 0..600i64 {
        let amount = if minute % 100 == 50 { "0" } else { "12.5" };
        records.push((0, tx(&format!("t{minute}"), "card", minute, amount)));
        if minute == 300 {
            records.push((0, tx("nul", r"ca\u0000rd", minute, "7")));
        }
    }
    produce(&world, &records);
    let mut engine = world.start_engine("seen-nul");
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(60))
        .await;
    assert!(
        engine.child.try_wait().unwrap().is_none(),
        "the engine must still be running:\n{}",
        engine.log_tail()
    );
    assert!(engine.terminate().success());
    assert_eq!(
        world.count("SELECT count(*) FROM risk_decisions").await,
        600
    );
    assert_eq!(
        world
            .count("SELECT count(*) FROM risk_decisions WHERE amount = 0")
            .await,
        6,
        "zero-amount authorisations are scored"
    );
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert!(reason.contains("card_id"), "{reason}");
    world.tear_down().await;
}
