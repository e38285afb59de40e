//! Thresholds and rules change while the engine runs (issue 11): a valid
//! edit of the config file takes effect at a batch boundary with a new
//! `threshold_sets` version that every later decision carries; a broken edit
//! is rejected with its problems named and changes nothing.

use crate::common::{brokers, Engine, World};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use sqlx::Row;
use std::time::Duration;

/// `n` transactions from minute `from` on; every 50th on the blocked card.
fn produce(world: &World, prefix: &str, from: i64, n: i64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z").unwrap();
    for i in 0..n {
        let card = if i % 50 == 0 {
            "card-b".to_string()
        } else {
            format!("card-{}", i % 20)
        };
        let ts = start + chrono::Duration::minutes(from + i);
        let payload = format!(
            r#"{{"tx_id":"{prefix}-{i}","ts":"{}","card_id":"{card}","terminal_id":"term-{}","amount":{}.5,"channel":"ecom","country":"FR"}}"#,
            ts.to_rfc3339(),
            i % 7,
            (i * 37) % 400
        );
        producer
            .send(
                BaseRecord::<str, str>::to(&world.topic("transactions"))
                    .partition((i % 2) as i32)
                    .key(&card)
                    .payload(&payload),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// Write the config file, SIGHUP the engine, and wait for a new `line` in its log.
async fn edit(world: &World, engine: &mut Engine, text: String, line: &str) {
    let before = engine.log_count(line);
    std::fs::write(&world.config_path, text).unwrap();
    engine.hangup();
    engine
        .wait_for_log(line, before, Duration::from_secs(60))
        .await;
}

const V1: &str = "review = 0.5\ndecline = 0.9";

fn config(world: &World, thresholds: &str, rules: &str) -> String {
    world
        .config_text(2, rules)
        .replace(V1, thresholds)
        // SIGHUP only, so the test says when the engine looks.
        .replace(
            "shutdown_deadline_ms = 10000",
            "shutdown_deadline_ms = 10000\nconfig_poll_ms = 0",
        )
}

const RULES: &str = r#"
[rules.lists]
blocked = ["card-b"]

[[rules.rule]]
name = "blocked-card"
when = "card_id in lists.blocked"
action = "decline"
reason = "card on the block list"

[[rules.rule]]
name = "large"
when = "amount >= 250.0 && card_count_1d >= 1.0"
action = "review"
reason = "large amount on a card seen today"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_and_rules_change_live_and_a_broken_edit_changes_nothing() {
    let world = World::new("live_policy", 2).await;
    std::fs::write(&world.config_path, config(&world, V1, "")).unwrap();
    let mut engine = world.start_engine("live");
    produce(&world, "a", 0, 600);
    world
        .wait_for_decisions(&mut engine, 600, Duration::from_secs(120))
        .await;
    let v1: i32 = sqlx::query_scalar("SELECT DISTINCT threshold_version FROM risk_decisions")
        .fetch_one(&world.pool)
        .await
        .unwrap();

    // A broken edit: a threshold out of range. Rejected, named, nothing changes.
    let rejected = "config change rejected";
    let text = config(&world, "review = 1.5\ndecline = 0.9", RULES);
    edit(&world, &mut engine, text, rejected).await;
    assert!(
        engine.log_count("thresholds.review") > 0,
        "{}",
        engine.log_tail()
    );
    // A broken rule (a misspelt name), with valid thresholds: also rejected.
    let broken_rule = RULES.replace("card_count_1d >= 1.0", "card_cont_1d >= 1.0");
    let text = config(&world, "review = 0.2\ndecline = 0.95", &broken_rule);
    edit(&world, &mut engine, text, rejected).await;
    assert!(
        engine.log_count("rules.rule[1].when: unknown name `card_cont_1d`") > 0,
        "{}",
        engine.log_tail()
    );
    assert_eq!(world.count("SELECT count(*) FROM threshold_sets").await, 1);

    // A valid edit: lower review threshold, a block list and a rule.
    let text = config(
        &world,
        "review = 0.2\ndecline = 0.95\nchanged_by = \"it-ops: lower review, add rules\"",
        RULES,
    );
    edit(&world, &mut engine, text, "policy changed").await;
    produce(&world, "b", 600, 600);
    world
        .wait_for_decisions(&mut engine, 1200, Duration::from_secs(120))
        .await;
    assert!(engine.terminate().success());

    let v2: (i32, String, i64) = sqlx::query_as(
        "SELECT version, changed_by, jsonb_array_length(thresholds -> 'rules' -> 'rule')::bigint
           FROM threshold_sets WHERE version <> $1",
    )
    .bind(v1)
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(v2.1, "it-ops: lower review, add rules");
    assert_eq!(v2.2, 2);
    // Everything decided before the edit carries v1, everything after v2.
    let versions: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT left(tx_id, 1), threshold_version, count(*) FROM risk_decisions GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(versions, [("a".into(), v1, 600), ("b".into(), v2.0, 600)]);
    // The audit trail: the start and the one applied edit, not the rejected ones.
    let changes: Vec<(i32, String, String)> = sqlx::query_as(
        "SELECT threshold_version, changed_by, reason FROM policy_changes ORDER BY id",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!((changes[0].0, changes[0].2.as_str()), (v1, "start"));
    assert_eq!(
        changes[1],
        (
            v2.0,
            "it-ops: lower review, add rules".into(),
            "reload".into()
        )
    );

    // Each row's decision and fired rules are its version's policy, computed
    // here in SQL from the stored score, amount and features
    // (card_count_1d is the model's second input).
    let wrong: Vec<(String, String, String, Vec<String>)> = sqlx::query(
        "WITH expected AS (
           SELECT tx_id, decision, rules_fired,
                  CASE WHEN threshold_version = $1 THEN
                         CASE WHEN score >= 0.9::real THEN 'decline' WHEN score >= 0.5::real THEN 'review' ELSE 'approve' END
                       WHEN card_id = 'card-b' THEN 'decline'
                       WHEN score >= 0.95::real THEN 'decline'
                       WHEN score >= 0.2::real OR (amount >= 250 AND features[2] >= 1) THEN 'review'
                       ELSE 'approve' END AS want,
                  CASE WHEN threshold_version = $1 THEN '{}'::text[]
                       ELSE array_remove(ARRAY[CASE WHEN card_id = 'card-b' THEN 'blocked-card' END,
                                               CASE WHEN amount >= 250 AND features[2] >= 1 THEN 'large' END], NULL)
                  END AS want_rules
             FROM risk_decisions)
         SELECT tx_id, decision, want, rules_fired FROM expected
          WHERE decision <> want OR rules_fired <> want_rules",
    )
    .bind(v1)
    .fetch_all(&world.pool)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect();
    assert!(wrong.is_empty(), "decided against their policy: {wrong:?}");
    let fired: Vec<(String, i64)> =
        sqlx::query_as("SELECT rule, count(*) FROM decision_rules GROUP BY 1 ORDER BY 1")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert_eq!(fired.len(), 2, "both rules fired: {fired:?}");
    assert_eq!(fired[0], ("blocked-card".into(), 12));
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT unnest(rule_reasons) FROM decision_reasons WHERE tx_id = 'b-0'")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert_eq!(reasons[0], "blocked-card: card on the block list");
    world.tear_down().await;
}

fn int8_dir() -> std::path::PathBuf {
    crate::common::repo_root().join("models/fraud-attention-int8")
}

/// `[shadow]` scores every transaction beside the champion into
/// `shadow_decisions`; pointing `[model]` at it promotes it live, after the
/// checks of start-up, which a tampered model fails without changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_model_is_stored_beside_and_promoted_live() {
    let world = World::new("shadow", 2).await;
    let champion = crate::common::model_dir().display().to_string();
    let shadow = format!("[shadow]\ndir = \"{}\"\n", int8_dir().display());
    std::fs::write(&world.config_path, config(&world, V1, &shadow)).unwrap();
    let mut engine = world.start_engine("shadow");
    produce(&world, "a", 0, 600);
    world
        .wait_for_decisions(&mut engine, 600, Duration::from_secs(120))
        .await;
    // The shadow's rows land with the decisions' commit: wait for none.
    let stored: (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE s.decision <> CASE WHEN s.score >= 0.9::real THEN 'decline'
                                                                 WHEN s.score >= 0.5::real THEN 'review' ELSE 'approve' END),
                max(abs(s.score - d.score))::float8
           FROM shadow_decisions s JOIN risk_decisions d USING (tx_id)
          WHERE s.model_name = 'fraud-attention-int8' AND s.threshold_version = d.threshold_version",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    assert_eq!(stored.0, 600, "every decision has its shadow row");
    assert_eq!(
        stored.1, 0,
        "the shadow's would-be decisions follow the thresholds"
    );
    assert!(
        stored.2 < 0.1,
        "an int8 copy scores close to its float model: {}",
        stored.2
    );
    let compared: i64 = sqlx::query_scalar("SELECT sum(decisions)::bigint FROM shadow_comparison")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(compared, 600);

    // A promotion to a tampered model (golden outputs that it does not
    // reproduce) is refused: the champion keeps deciding.
    let tampered = world.dir.path().join("tampered-int8");
    std::fs::create_dir(&tampered).unwrap();
    for f in ["model.onnx", "manifest.json"] {
        std::fs::copy(int8_dir().join(f), tampered.join(f)).unwrap();
    }
    let golden = std::fs::read_to_string(int8_dir().join("golden.json")).unwrap();
    let mut golden: serde_json::Value = serde_json::from_str(&golden).unwrap();
    let first = golden["outputs"]["score"][0].as_f64().unwrap();
    golden["outputs"]["score"][0] = serde_json::json!(first + 0.01);
    std::fs::write(tampered.join("golden.json"), golden.to_string()).unwrap();
    let text = config(&world, V1, "").replace(&champion, &tampered.display().to_string());
    edit(&world, &mut engine, text, "config change rejected").await;
    assert!(
        engine.log_count("golden.json row 0") > 0,
        "{}",
        engine.log_tail()
    );

    // Promotion: [model] points at the shadow's directory, no shadow left.
    let text = config(&world, V1, "").replace(&champion, &int8_dir().display().to_string());
    edit(&world, &mut engine, text, "models changed").await;
    produce(&world, "b", 600, 600);
    world
        .wait_for_decisions(&mut engine, 1200, Duration::from_secs(120))
        .await;
    assert!(engine.terminate().success());
    let by_model: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT left(tx_id, 1), model_name, count(*) FROM risk_decisions GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        by_model,
        [
            ("a".into(), "fraud-attention".into(), 600),
            ("b".into(), "fraud-attention-int8".into(), 600)
        ]
    );
    assert_eq!(
        world.count("SELECT count(*) FROM shadow_decisions").await,
        600
    );
    let models: Vec<(String, String)> =
        sqlx::query_as("SELECT reason, models FROM policy_changes ORDER BY id")
            .fetch_all(&world.pool)
            .await
            .unwrap();
    assert_eq!(models.len(), 2, "the start and the promotion: {models:?}");
    assert!(
        models[0].1.contains("shadow fraud-attention-int8"),
        "{models:?}"
    );
    assert!(
        models[1].0 == "reload"
            && models[1].1.starts_with(&format!(
                "champion {}",
                crate::common::model_label(&int8_dir())
            )),
        "{models:?}"
    );
    world.tear_down().await;
}
