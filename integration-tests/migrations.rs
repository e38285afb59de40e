//! Migrations: what was stored before them reads the same after, and what
//! they check is still checked.

use crate::common::{drop_scratch_database, migrations_before, scratch_database};
use riskstream::features::FEATURE_NAMES;
use riskstream::sink;
use sqlx::PgPool;

/// A fresh, empty database `db`, owned by `postgres`.
async fn scratch_pool(db: &str) -> PgPool {
    PgPool::connect(&scratch_database(db, "postgres").await)
        .await
        .unwrap()
}

/// `risk_decisions.features` went from a JSON object by name to `real[]` in
/// the model's input order: every stored decision's values land at their
/// feature's position, and `decision_features` gives the object back.
#[tokio::test]
async fn stored_features_move_to_model_input_order() {
    let db = "riskstream_it_migrate_features";
    let pool = scratch_pool(db).await;
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

/// Decisions, explanations and shadow rows stored before the month
/// partitions move into their months' partitions with everything readable
/// as before:
/// the same rows, the views re-created with their grants, every id in
/// `decision_ids`.
#[tokio::test]
async fn stored_decisions_move_into_month_partitions() {
    let db = "riskstream_it_migrate_partitions";
    let pool = scratch_pool(db).await;
    migrations_before(20261204000001).run(&pool).await.unwrap();
    for sql in [
        "INSERT INTO model_versions (name, version, sha256, task, feature_names, manifest)
         VALUES ('m', '1', 'abc', 'fraud', '{a,b}', '{}')",
        "INSERT INTO threshold_sets (version, content_sha256, thresholds, changed_by)
         VALUES (1, 'x', '{}', 'test')",
        // 30 decisions, 3 days apart: January 4th to April 1st.
        "INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, score, decision, model_name,
             model_version, model_sha256, threshold_version, features, state_complete, source_topic,
             source_partition, source_offset)
         SELECT 't' || g, timestamptz '2026-01-01 00:00+00' + g * interval '3 days', 'c' || g % 3, 'm', g,
                g / 100.0, CASE WHEN g % 5 = 0 THEN 'review' ELSE 'approve' END, 'm', '1', 'abc', 1,
                '{1,2}', true, 'tx', 0, g
           FROM generate_series(1, 30) g",
        "INSERT INTO attention_explanations SELECT tx_id, '{0.25,0.75}', '{}', '{}' FROM risk_decisions",
        "INSERT INTO shadow_decisions (tx_id, model_name, model_version, model_sha256, score, decision,
             threshold_version, feature_weights, history_weights)
         SELECT tx_id, 's', '1', 'def', 0.5, 'review', 1, '{}', '{}' FROM risk_decisions WHERE source_offset % 2 = 0",
        "INSERT INTO labels (tx_id, is_fraud, reported_at, source_partition, source_offset)
         VALUES ('t5', true, now(), 0, 1)",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let views = [
        "SELECT tx_id, top_features FROM decision_reasons",
        "SELECT * FROM decision_features",
        "SELECT * FROM daily_alerts",
        "SELECT * FROM alert_quality",
        "SELECT * FROM shadow_comparison",
        "SELECT tx_id, score FROM shadow_decisions",
    ];
    let read = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(&format!(
                "SELECT to_jsonb(x)::text FROM ({sql}) x ORDER BY 1"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let mut before = Vec::new();
    for v in views {
        before.push(read(v).await);
    }

    sink::schema::MIGRATOR.run(&pool).await.unwrap();
    for (v, want) in views.iter().zip(&before) {
        assert!(!want.is_empty(), "{v}");
        assert_eq!(&read(v).await, want, "{v} reads as before");
    }
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM decision_ids").await, 30);
    assert_eq!(
        count("SELECT count(DISTINCT tableoid) FROM risk_decisions").await,
        4,
        "one partition per month"
    );
    for table in [
        "risk_decisions",
        "attention_explanations",
        "shadow_decisions",
    ] {
        let misplaced: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table}
              WHERE tableoid::regclass::text <> decision_partition_name('{table}', (ts AT TIME ZONE 'UTC')::date)"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(misplaced, 0, "{table}");
    }
    // The grants came along: the analyst reads the views, the writer inserts.
    let granted: Vec<bool> = sqlx::query_scalar(
        "SELECT unnest(ARRAY[
             has_table_privilege('riskstream_analyst', 'decision_reasons', 'SELECT'),
             has_table_privilege('riskstream_analyst', 'daily_alerts', 'SELECT'),
             has_table_privilege('riskstream_writer', 'risk_decisions', 'INSERT'),
             has_table_privilege('riskstream_writer', 'decision_ids', 'INSERT'),
             has_table_privilege('riskstream_writer', 'shadow_decisions', 'INSERT'),
             NOT has_table_privilege('riskstream_writer', 'risk_decisions', 'DELETE')])",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(granted.iter().all(|g| *g), "{granted:?}");
    pool.close().await;
    drop_scratch_database(db).await;
}

/// `threshold_version` lost its per-row foreign key for a per-statement check
/// (migration 20261205000001): an insert or a COPY naming a version that is not
/// in `threshold_sets` still fails as a foreign key violation and stores
/// nothing, on decisions and on shadow decisions alike.
#[tokio::test]
async fn decisions_must_name_an_existing_threshold_set() {
    use sqlx::postgres::PgPoolCopyExt;
    let db = "riskstream_it_threshold_version";
    let pool = scratch_pool(db).await;
    sink::schema::MIGRATOR.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO threshold_sets (version, content_sha256, thresholds, changed_by)
         VALUES (1, 'x', '{}', 'test')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let decisions = |batch: &str, versions: &str| {
        format!(
            "INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, score, decision, model_name,
                 model_version, model_sha256, threshold_version, features, state_complete, source_topic,
                 source_partition, source_offset)
             SELECT '{batch}' || o, timestamptz '2026-03-01 00:00+00', 'c', 'm', 1, 0.1, 'approve',
                    'm', '1', 'abc', v, '{{1}}', true, 'tx', 0, o
               FROM unnest('{{{versions}}}'::int[]) WITH ORDINALITY AS x(v, o)"
        )
    };
    let refused = |sql: String| {
        let pool = pool.clone();
        async move {
            match sqlx::query(&sql).execute(&pool).await {
                Err(sqlx::Error::Database(e)) => {
                    assert_eq!(e.code().as_deref(), Some("23503"), "{e}");
                    e.message().to_string()
                }
                other => panic!("{sql} was not refused: {other:?}"),
            }
        }
    };
    sqlx::query(&decisions("ok", "1,1"))
        .execute(&pool)
        .await
        .unwrap();
    let message = refused(decisions("bad", "1,7,1")).await;
    assert!(message.contains("threshold_version 7"), "{message}");
    let mut copy = pool
        .copy_in_raw(
            "COPY risk_decisions (tx_id, ts, card_id, terminal_id, amount, score, decision, model_name,
                 model_version, model_sha256, threshold_version, features, state_complete, source_topic,
                 source_partition, source_offset) FROM STDIN",
        )
        .await
        .unwrap();
    copy.send(
        "c1\t2026-03-02 00:00+00\tc\tm\t1\t0.1\tapprove\tm\t1\tabc\t1\t{1}\tt\ttx\t0\t10\n\
         c2\t2026-03-02 00:00+00\tc\tm\t1\t0.1\tapprove\tm\t1\tabc\t2\t{1}\tt\ttx\t0\t11\n"
            .as_bytes(),
    )
    .await
    .unwrap();
    match copy.finish().await {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("23503"), "{e}"),
        other => panic!("a COPY naming version 2 was not refused: {other:?}"),
    }
    refused(
        "INSERT INTO shadow_decisions (tx_id, ts, model_name, model_version, model_sha256, score, decision,
             threshold_version, feature_weights, history_weights)
         VALUES ('ok1', timestamptz '2026-03-01 00:00+00', 's', '1', 'def', 0.5, 'review', 3, '{}', '{}')"
            .to_string(),
    )
    .await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT tx_id FROM risk_decisions ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(stored, ["ok1", "ok2"], "only the first, valid insert");
    pool.close().await;
    drop_scratch_database(db).await;
}

/// The per-decision arrays carry no planner statistics (migration
/// 20261206000001): on the month partitions there were when it ran and on
/// the months made after it, while the other columns keep theirs. Checked
/// where it matters, in what ANALYZE leaves in `pg_stats`.
#[tokio::test]
async fn analyze_skips_the_weight_arrays_of_old_and_new_months() {
    let db = "riskstream_it_array_statistics";
    let pool = scratch_pool(db).await;
    migrations_before(20261206000001).run(&pool).await.unwrap();
    let day = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    sink::partitions::create(&pool, &[day("2026-03-10")])
        .await
        .unwrap();
    sink::schema::MIGRATOR.run(&pool).await.unwrap();
    sink::partitions::create(&pool, &[day("2026-04-10")])
        .await
        .unwrap();
    for sql in [
        "INSERT INTO threshold_sets (version, content_sha256, thresholds, changed_by)
         VALUES (1, 'x', '{}', 'test')",
        // 10 decisions in each month, with their explanations and shadow rows.
        "INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, score, decision, model_name,
             model_version, model_sha256, threshold_version, features, state_complete, source_topic,
             source_partition, source_offset)
         SELECT 't' || g, timestamptz '2026-03-10 00:00+00' + g * interval '2 days', 'c' || g % 3, 'm', g,
                g / 100.0, 'approve', 'm', '1', 'abc', 1, ARRAY[g, 1]::real[], true, 'tx', 0, g
           FROM generate_series(1, 20) g",
        "INSERT INTO attention_explanations (tx_id, ts, feature_weights, history_tx_ids, history_weights)
         SELECT tx_id, ts, '{0.5,0.5}', ARRAY['h' || source_offset], '{1}' FROM risk_decisions",
        "INSERT INTO shadow_decisions (tx_id, ts, model_name, model_version, model_sha256, score, decision,
             threshold_version, feature_weights, history_weights)
         SELECT tx_id, ts, 's', '1', 'def', 0.5, 'review', 1, '{0.5,0.5}', '{1}' FROM risk_decisions",
        "ANALYZE risk_decisions_p202603, risk_decisions_p202604, attention_explanations_p202603,
                 attention_explanations_p202604, shadow_decisions_p202603, shadow_decisions_p202604",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    let analyzed: Vec<(String, String)> = sqlx::query_as(
        "SELECT tablename::text, attname::text FROM pg_stats
          WHERE tablename ~ '_p20260[34]$'
            AND attname IN ('features', 'feature_weights', 'history_tx_ids', 'history_weights',
                            'card_id', 'rules_fired', 'score')
          ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // The arrays nowhere, on either month; the attention partitions have no other column asked for.
    let mut want = Vec::new();
    for (table, columns) in [
        ("risk_decisions", &["card_id", "rules_fired", "score"][..]),
        ("shadow_decisions", &["rules_fired", "score"][..]),
    ] {
        for month in ["202603", "202604"] {
            for column in columns {
                want.push((format!("{table}_p{month}"), column.to_string()));
            }
        }
    }
    assert_eq!(analyzed, want);
    pool.close().await;
    drop_scratch_database(db).await;
}
