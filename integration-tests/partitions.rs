//! Month partitions and retention: the engine puts each decision in its
//! month's partition (a stream across a month's end), and `riskstream
//! partitions` creates months ahead and drops the months past `[retention]
//! keep_days` with everything that belongs to their decisions, leaving every
//! other month exactly as it was.

use crate::common::{url_as, World, ENGINE, MIGRATOR};
use chrono::{NaiveDate, Utc};
use std::process::{Command, Output};

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
async fn retention_drops_whole_months_and_leaves_the_others_as_they_were() {
    let world = World::new("partitions", 2).await;
    let shadow = World::shadow_section();
    std::fs::write(&world.config_path, world.config_text(2, &shadow)).unwrap();
    // From January 30th: the stream crosses into February.
    let start = NaiveDate::from_ymd_opt(2026, 1, 30).unwrap();
    let (produced, labels) = world.produce_simulated_from(3_000, 29, start);
    world.decide_all("partitions", labels).await;
    // Every row in its month's partition (assert_exactly_once checks it).
    world.assert_exactly_once(produced).await;

    let days: Vec<NaiveDate> = sqlx::query_scalar(
        "SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM risk_decisions ORDER BY 1",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    let february = NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
    assert!(
        days[0] < february && days[days.len() - 1] >= february,
        "the stream must cross a month's end: {days:?}"
    );
    // Keep from February 1st: January goes.
    let cutoff = february;
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
    assert!(labelled_dropped > 0, "the dropped month has labels to drop");

    let today = Utc::now().date_naive();
    let keep_days = (today - cutoff).num_days() + 1;
    let retention =
        format!("{shadow}\n[retention]\nkeep_days = {keep_days}\ncreate_ahead_days = 2\n");
    std::fs::write(&world.config_path, world.config_text(2, &retention)).unwrap();

    // The engine's login may create months but not drop them: refused, and
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
    assert!(
        stdout.contains("1 month(s) dropped (2026-01 .. 2026-01); kept from 2026-02-01"),
        "{stdout}"
    );

    // The dropped month is gone everywhere...
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
                 SELECT decision_partition_name(t, date '2026-01-01')
                   FROM unnest(ARRAY['risk_decisions', 'attention_explanations', 'shadow_decisions']) t)",
        ),
    ] {
        let sql = sql.replace("{c}", &cutoff.to_string());
        assert_eq!(world.count(&sql).await, 0, "{what} of the dropped month remain");
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
    // ...and every other month is exactly as it was.
    for (q, want) in kept.iter().zip(&before) {
        assert_eq!(&snapshot(&world, q).await, want, "{q}");
    }
    world.assert_in_month_partitions().await;
    // The months of today and the two days ahead have their partitions.
    let missing = world
        .count(
            "SELECT count(*) FROM unnest(ARRAY['risk_decisions', 'attention_explanations', 'shadow_decisions']) t,
                    generate_series(0, 2) k
              WHERE to_regclass(decision_partition_name(t, (now() AT TIME ZONE 'UTC')::date + k)) IS NULL",
        )
        .await;
    assert_eq!(missing, 0, "months ahead without partitions");

    // Again: nothing more to drop or create.
    let again = run(&world, &world.config_path, "partitions");
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(
        stdout.contains("0 partition(s) created") && stdout.contains("nothing before"),
        "{stdout}"
    );
    world.tear_down().await;
}
