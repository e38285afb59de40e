//! Exactly-once through crashes and rebalances, on 50,000 simulated
//! transactions in a 4-partition topic.

use crate::common::{Engine, World};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

const N: usize = 50_000;
const SEED: u64 = 7;
const DONE_TIMEOUT: Duration = Duration::from_secs(600);

/// Features of a fault-free run over the same input, computed once.
static BASELINE: Mutex<Option<BTreeMap<String, String>>> = Mutex::new(None);

async fn baseline() -> BTreeMap<String, String> {
    if let Some(b) = BASELINE.lock().unwrap().clone() {
        return b;
    }
    let b = fault_free_run().await;
    *BASELINE.lock().unwrap() = Some(b.clone());
    b
}

async fn fault_free_run() -> BTreeMap<String, String> {
    let world = World::new("clean", 4).await;
    let (produced, _) = world.produce_simulated(N, SEED);
    assert!(produced as usize >= N);
    let mut engine = world.start_engine("clean");
    world
        .wait_until_done(&mut [&mut engine], DONE_TIMEOUT)
        .await;
    let status = engine.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status}:\n{}",
        engine.log_tail()
    );
    world.assert_exactly_once(produced).await;
    let incomplete = world
        .count("SELECT count(*) FROM risk_decisions WHERE NOT state_complete")
        .await;
    assert_eq!(
        incomplete, 0,
        "a fault-free run never scores before the watermark"
    );
    let features = world.features().await;
    world.tear_down().await;
    features
}

fn assert_same_features(run: &BTreeMap<String, String>, clean: &BTreeMap<String, String>) {
    assert_eq!(run.len(), clean.len());
    let differing: Vec<_> = clean
        .iter()
        .filter(|(k, v)| run.get(*k) != Some(v))
        .take(3)
        .collect();
    assert!(
        differing.is_empty(),
        "features differ from the fault-free run, e.g. {differing:?} vs {:?}",
        differing
            .iter()
            .map(|(k, _)| run.get(*k))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_every_transaction_decided_once_with_explanations() {
    let clean = baseline().await;
    assert!(clean.len() > N * 9 / 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_and_restart_changes_nothing() {
    let clean = baseline().await;
    let world = World::new("crash", 4).await;
    let (produced, _) = world.produce_simulated(N, SEED);
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for round in 0..4 {
        let mut engine = world.start_engine(&format!("crash{round}"));
        // Kill at a random point once this run has made progress, so every
        // crash lands mid-stream with batches in flight.
        let before = world.count("SELECT count(*) FROM risk_decisions").await;
        world
            .wait_for_decisions(&mut engine, before + 2_000, Duration::from_secs(120))
            .await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1500))).await;
        engine.kill9();
    }
    let decided_before_last = world.count("SELECT count(*) FROM risk_decisions").await;
    assert!(
        decided_before_last < produced as i64,
        "the crashes must happen mid-stream"
    );
    let mut engine = world.start_engine("final");
    world
        .wait_until_done(&mut [&mut engine], DONE_TIMEOUT)
        .await;
    engine.terminate();
    world.assert_exactly_once(produced).await;
    assert_same_features(&world.features().await, &clean);
    world.tear_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_killed_mid_stream() {
    let clean = baseline().await;
    let world = World::new("pair", 4).await;
    // Both members own partitions before the stream arrives: with the
    // stream already there, the first member to join could decide all of
    // it before the second one got its partitions (seen once the engine
    // drained 50k records faster), and nothing would be killed mid-stream.
    let mut a = world.start_engine("a");
    let mut b = world.start_engine("b");
    let owners = format!(
        "SELECT count(DISTINCT owner) FROM kafka_offsets WHERE topic = '{}'",
        world.topic("transactions")
    );
    let started = std::time::Instant::now();
    while world.count(&owners).await < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the two instances never shared the partitions"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (produced, _) = world.produce_simulated(N, SEED);
    // Kill b once the stream is flowing.
    world
        .wait_for_decisions(&mut b, 5_000, Duration::from_secs(120))
        .await;
    let before = world.count("SELECT count(*) FROM risk_decisions").await;
    assert!(before < produced as i64, "the kill must happen mid-stream");
    b.kill9();
    world.wait_until_done(&mut [&mut a], DONE_TIMEOUT).await;
    a.terminate();
    world.assert_exactly_once(produced).await;
    assert_same_features(&world.features().await, &clean);
    drop::<Engine>(b);
    world.tear_down().await;
}
