//! Day partitions and retention: the engine puts each decision in its day's
//! partition, and `riskstream partitions` creates days ahead and drops the
//! days past `[retention] keep_days` with everything that belongs to their
//! decisions, leaving every other day exactly as it was.

use crate::common::{url_as, World, ENGINE, MIGRATOR};
use chrono::{NaiveDate, Utc};
use std::process::{Command, Output};
use std::time::Duration;

fn run(world: &World, config: &std::path::Path, command: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_riskstream"))
        .args(["--config", config.to_str().unwrap(), command])
        .output()
        .unwrap_or_else(|e| panic!("riskstream {command}: {e} ({})", world.name))
}

/// Each row of `sql` as JSON text, sorted: a table's content to compare.
async fn snapshot(world: &World, sql: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT to_jsonb(x)::text FROM ({sql}) x ORDER BY 1"
    ))
    .fetch_all(&world.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_days_and_leaves_the_others_as_they_were() {
    let world = World::new("partitions", 2).await;
    let shadow = format!(
        "[shadow]\ndir = \"{}\"\n",
        crate::common::repo_root()
            .join("models/fraud-attention-int8")
            .display()
    );
    std::fs::write(&world.config_path, world.config_text(2, &shadow)).unwrap();
    let (produced, labels) = world.produce_simulated(3_000, 29);
    let mut engine = world.start_engine("partitions");
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(240))
        .await;
    world.wait_for_labels(labels).await;
    assert!(engine.terminate().success());
    // Every row in its day's partition (assert_exactly_once checks it too).
    world.assert_exactly_once(produced).await;

    let days: Vec<NaiveDate> = sqlx::query_scalar(
        "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM risk_decisions ORDER BY 1",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert!(days.len() >= 4, "the stream spans too few days: {days:?}");
    let cutoff = days[2];
    let summarised = run(&world, &world.config_path, "summarise");
    assert!(summarised.status.success());
    // Reviews on either side of the cutoff.
    sqlx::query(
        "INSERT INTO label_reviews (tx_id, is_fraud, reviewer)
         SELECT tx_id, true, 'alice' FROM risk_decisions WHERE ts < $1::date ORDER BY ts LIMIT 1",
    )
    .bind(cutoff)
    .execute(&world.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO label_reviews (tx_id, is_fraud, reviewer)
         SELECT tx_id, false, 'bob' FROM risk_decisions WHERE ts >= $1::date ORDER BY ts LIMIT 1",
    )
    .bind(cutoff)
    .execute(&world.pool)
    .await
    .unwrap();

    // What must not change, and what must go.
    let kept = [
        "SELECT tx_id, ts, score, decision, features FROM risk_decisions WHERE ts >= '{c}'",
        "SELECT tx_id, feature_weights, history_tx_ids FROM attention_explanations WHERE ts >= '{c}'",
        "SELECT tx_id, score FROM shadow_decisions WHERE ts >= '{c}'",
        "SELECT * FROM decision_ids WHERE ts >= '{c}'",
        "SELECT l.* FROM labels l JOIN decision_ids i USING (tx_id) WHERE i.ts >= '{c}'",
        "SELECT r.tx_id, r.is_fraud, r.reviewer FROM label_reviews r JOIN decision_ids i USING (tx_id)
          WHERE i.ts >= '{c}'",
        "SELECT * FROM decision_days WHERE day >= '{c}'",
        "SELECT * FROM shadow_days WHERE day >= '{c}'",
    ]
    .map(|q| q.replace("{c}", &cutoff.to_string()));
    let mut before = Vec::new();
    for q in &kept {
        let rows = snapshot(&world, q).await;
        assert!(!rows.is_empty(), "nothing to compare: {q}");
        before.push(rows);
    }
    let dropped_ids: Vec<String> =
        sqlx::query_scalar("SELECT tx_id FROM risk_decisions WHERE ts < $1::date")
            .bind(cutoff)
            .fetch_all(&world.pool)
            .await
            .unwrap();
    let labelled_dropped =
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM labels WHERE tx_id = ANY($1)")
            .bind(&dropped_ids)
            .fetch_one(&world.pool)
            .await
            .unwrap();
    assert!(labelled_dropped > 0, "dropped days have labels to drop");

    let today = Utc::now().date_naive();
    let keep_days = (today - cutoff).num_days() + 1;
    let retention =
        format!("{shadow}\n[retention]\nkeep_days = {keep_days}\ncreate_ahead_days = 2\n");
    std::fs::write(&world.config_path, world.config_text(2, &retention)).unwrap();

    // The engine's login may create days but not drop them: refused, and
    // the message says which login is needed. Nothing is dropped.
    let writer_only = world.config_path.with_file_name("writer-only.toml");
    let text = world.config_text(2, &retention).replace(
        &format!("migrate_url = \"{}\"", url_as(MIGRATOR, &world.name)),
        &format!("migrate_url = \"{}\"", url_as(ENGINE, &world.name)),
    );
    assert!(text.contains(&url_as(ENGINE, &world.name)));
    std::fs::write(&writer_only, text).unwrap();
    let refused = run(&world, &writer_only, "partitions");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("riskstream_owner") && stderr.contains("permission denied"),
        "{stderr}"
    );
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM risk_decisions WHERE ts < '{cutoff}'"
            ))
            .await,
        dropped_ids.len() as i64
    );

    let out = run(&world, &world.config_path, "partitions");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 day(s) dropped"), "{stdout}");

    // The dropped days are gone everywhere...
    for (what, sql) in [
        ("decisions", "SELECT count(*) FROM risk_decisions WHERE ts < '{c}'"),
        ("explanations", "SELECT count(*) FROM attention_explanations WHERE ts < '{c}'"),
        ("shadow rows", "SELECT count(*) FROM shadow_decisions WHERE ts < '{c}'"),
        ("ids", "SELECT count(*) FROM decision_ids WHERE ts < '{c}'"),
        ("summaries", "SELECT count(*) FROM decision_days WHERE day < '{c}'"),
        ("shadow summaries", "SELECT count(*) FROM shadow_days WHERE day < '{c}'"),
        ("daily_alerts", "SELECT count(*) FROM daily_alerts WHERE day < '{c}'"),
        (
            "partitions",
            "SELECT count(*) FROM pg_class WHERE relname IN (
                 SELECT decision_partition_name(t, d::date)
                   FROM unnest(ARRAY['risk_decisions', 'attention_explanations', 'shadow_decisions']) t,
                        generate_series(date '2025-12-01', '{c}'::date - 1, interval '1 day') d)",
        ),
    ] {
        let sql = sql.replace("{c}", &cutoff.to_string());
        assert_eq!(world.count(&sql).await, 0, "{what} of dropped days remain");
    }
    for table in ["labels", "label_reviews"] {
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE tx_id = ANY($1)"
        ))
        .bind(&dropped_ids)
        .fetch_one(&world.pool)
        .await
        .unwrap();
        assert_eq!(left, 0, "{table} of dropped decisions remain");
    }
    // ...and every other day is exactly as it was.
    for (q, want) in kept.iter().zip(&before) {
        assert_eq!(&snapshot(&world, q).await, want, "{q}");
    }
    world.assert_in_day_partitions().await;
    // Today and two days ahead have their partitions.
    let ahead = world
        .count(
            "SELECT count(*) FROM pg_class WHERE relname IN (
                 SELECT decision_partition_name(t, (now() AT TIME ZONE 'UTC')::date + k)
                   FROM unnest(ARRAY['risk_decisions', 'attention_explanations', 'shadow_decisions']) t,
                        generate_series(0, 2) k)",
        )
        .await;
    assert_eq!(ahead, 9);

    // Again: nothing more to drop or create.
    let again = run(&world, &world.config_path, "partitions");
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(
        stdout.contains("0 partition(s) created") && stdout.contains("nothing before"),
        "{stdout}"
    );
    world.drop_database().await;
}
