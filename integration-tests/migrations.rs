//! Migrations that move data: what was stored before them reads the same after.

use crate::common::{drop_scratch_database, migrations_before, scratch_database};
use riskstream::features::FEATURE_NAMES;
use riskstream::sink;
use sqlx::PgPool;

/// `risk_decisions.features` went from a JSON object by name to `real[]` in
/// the model's input order: every stored decision's values land at their
/// feature's position, and `decision_features` gives the object back.
#[tokio::test]
async fn stored_features_move_to_model_input_order() {
    let db = "riskstream_it_migrate_features";
    let pool = PgPool::connect(&scratch_database(db, "postgres").await)
        .await
        .unwrap();
    let before = migrations_before(20261202000001);
    before.run(&pool).await.unwrap();
    // Names in model order; a stored object lists them in another order
    // (jsonb sorts its keys) with distinct values.
    let names: Vec<&str> = FEATURE_NAMES.to_vec();
    let object: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .enumerate()
        .rev()
        .map(|(i, n)| (n.to_string(), serde_json::json!(i as f32 + 0.5)))
        .chain([("mcc_surprise".to_string(), serde_json::json!(2.25))])
        .collect();
    sqlx::query(
        "INSERT INTO model_versions (name, version, sha256, task, feature_names, manifest)
         VALUES ('m', '1', 'abc', 'fraud', $1, '{}')",
    )
    .bind(&names)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO threshold_sets (version, content_sha256, thresholds, changed_by)
         VALUES (1, 'x', '{}', 'test')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, score, decision, model_name,
             model_version, model_sha256, threshold_version, features, state_complete, source_topic,
             source_partition, source_offset, mcc_surprise)
         VALUES ('t1', now(), 'c', 'm', 1, 0.1, 'approve', 'm', '1', 'abc', 1, $1, true, 'tx', 0, 0, 2.25)",
    )
    .bind(serde_json::Value::Object(object.clone()))
    .execute(&pool)
    .await
    .unwrap();

    sink::schema::MIGRATOR.run(&pool).await.unwrap();
    let stored: Vec<f32> = sqlx::query_scalar("SELECT features FROM risk_decisions")
        .fetch_one(&pool)
        .await
        .unwrap();
    let want: Vec<f32> = (0..names.len()).map(|i| i as f32 + 0.5).collect();
    assert_eq!(stored, want, "values at their feature's position");
    let named: serde_json::Value =
        sqlx::query_scalar("SELECT features FROM decision_features WHERE tx_id = 't1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let mut without_surprise = object;
    without_surprise.remove("mcc_surprise");
    assert_eq!(named, serde_json::Value::Object(without_surprise));
    pool.close().await;
    drop_scratch_database(db).await;
}
