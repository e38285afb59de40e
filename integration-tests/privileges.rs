//! Least privilege: the engine's login (`riskstream_writer`) inserts what
//! the engine inserts and updates only `kafka_offsets`; it can never rewrite
//! or remove a decision, a label or a dead letter, nor change the schema.
//! Analysts read every table and view and write nothing. The owner role's
//! default privileges cover what later migrations add. And `riskstream run`
//! refuses a database `riskstream migrate` has not migrated.

use crate::common::{
    drop_scratch_database, migrations_before, model_dir, scratch_database, url_as, Login, World,
    ANALYST, ENGINE, MIGRATOR, REVIEWER,
};
use riskstream::config::ThresholdConfig;
use riskstream::decision::Policy;
use riskstream::sink;
use sqlx::PgPool;
use std::process::Command;
use std::time::Duration;

const DENIED: &str = "42501";

async fn login(l: Login, db: &str) -> PgPool {
    PgPool::connect(&url_as(l, db))
        .await
        .unwrap_or_else(|e| panic!("{} logs in to {db}: {e}", l.user))
}

/// `Ok(())`, or the SQLSTATE (or error) the statement failed with.
async fn run(pool: &PgPool, sql: &str) -> Result<(), String> {
    match sqlx::query(sql).execute(pool).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) => Err(e.code().map_or_else(
            || e.message().to_string(),
            |c| format!("{c} {}", e.message()),
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Every statement that does not fail with "insufficient privilege".
async fn not_denied(pool: &PgPool, statements: &[String]) -> Vec<String> {
    let mut wrong = Vec::new();
    for sql in statements {
        match run(pool, sql).await {
            Err(e) if e.starts_with(DENIED) => {}
            other => wrong.push(format!("{sql}  =>  {other:?}")),
        }
    }
    wrong
}

/// Tables (and, with `views`, views) of the public schema, by name.
async fn relations(admin: &PgPool, views: bool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND (c.relkind IN ('r', 'p') OR ($1 AND c.relkind IN ('v', 'm')))
          ORDER BY 1",
    )
    .bind(views)
    .fetch_all(admin)
    .await
    .unwrap()
}

async fn first_column(admin: &PgPool, table: &str) -> String {
    sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
          WHERE attrelid = ('public.' || quote_ident($1))::regclass AND attnum > 0 AND NOT attisdropped
          ORDER BY attnum LIMIT 1",
    )
    .bind(table)
    .fetch_one(admin)
    .await
    .unwrap()
}

fn thresholds() -> Policy {
    Policy::thresholds_only(ThresholdConfig {
        review: 0.5,
        decline: 0.9,
        changed_by: "privileges test".into(),
        channel: Default::default(),
    })
}

#[tokio::test]
async fn the_writer_inserts_and_advances_offsets_but_never_rewrites_history() {
    let world = World::new("priv_writer", 2).await;
    let writer = login(ENGINE, &world.name).await;

    // Everything the engine writes, through the engine's own functions
    // where they exist.
    let manifest = riskstream::onnx::Manifest::read(&model_dir()).unwrap();
    sink::register_model(&writer, &manifest).await.unwrap();
    sink::register_model(&writer, &manifest).await.unwrap();
    let set = thresholds();
    let version = sink::register_thresholds(&writer, &set).await.unwrap();
    assert_eq!(
        sink::register_thresholds(&writer, &set).await.unwrap(),
        version,
        "registering the same content again finds its version, without UPDATE"
    );
    let topic = world.topic("transactions");
    let claims = sink::claim_partitions(&writer, &world.name, &topic, &[0, 1], "a")
        .await
        .unwrap();
    assert!(claims.iter().all(|c| c.epoch == 1));
    let claims = sink::claim_partitions(&writer, &world.name, &topic, &[0, 1], "b")
        .await
        .unwrap();
    assert!(
        claims.iter().all(|c| c.epoch == 2),
        "a new owner's claim bumps the epoch (UPDATE on kafka_offsets)"
    );
    let inserts = [
        // The month's partitions (the sink does this before a batch with a new month).
        "SELECT create_decision_partitions(ARRAY[date '2026-06-01'])".into(),
        "INSERT INTO decision_ids (tx_id, ts) VALUES ('tx-1', '2026-06-01 12:00+00')
         ON CONFLICT (tx_id) DO NOTHING"
            .into(),
        format!(
            "INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, score, decision,
                 model_name, model_version, model_sha256, threshold_version, features, state_complete,
                 source_topic, source_partition, source_offset)
             VALUES ('tx-1', '2026-06-01 12:00+00', 'card-1', 'term-1', 12.5, 0.1, 'approve', '{name}',
                     '{version}', '{sha}', {threshold}, '{{}}', true, '{topic}', 0, 0)",
            name = manifest.name,
            version = manifest.version,
            sha = manifest.sha256,
            threshold = version,
        ),
        "INSERT INTO attention_explanations (tx_id, feature_weights, history_tx_ids, history_weights, ts)
         VALUES ('tx-1', '{1}', '{}', '{}', '2026-06-01 12:00+00')"
            .into(),
        "INSERT INTO labels (tx_id, is_fraud, reported_at, source_partition, source_offset)
         VALUES ('tx-1', true, now(), 0, 0) ON CONFLICT (tx_id) DO NOTHING"
            .into(),
        format!(
            "INSERT INTO dead_letters (source_topic, source_partition, source_offset, reason)
             VALUES ('{topic}', 0, 1, 'bad json') ON CONFLICT DO NOTHING"
        ),
        format!(
            "UPDATE kafka_offsets
                SET next_offset = GREATEST(next_offset, 2), max_event_ts = GREATEST(max_event_ts, now()),
                    updated_at = now()
              WHERE consumer_group = '{}' AND topic = '{topic}' AND partition = 0 AND epoch = 2",
            world.name
        ),
    ];
    for sql in &inserts {
        run(&writer, sql)
            .await
            .unwrap_or_else(|e| panic!("the writer may: {sql}\n  {e}"));
    }
    let progress = sink::committed_progress(&writer, &world.name, &topic)
        .await
        .unwrap();
    assert!(progress.iter().any(|(p, next, _)| *p == 0 && *next == 2));
    sink::state::load_cards(&writer, &["card-1".to_string()], 86_400_000)
        .await
        .unwrap();

    let mut denied: Vec<String> = [
        "UPDATE risk_decisions SET score = 0",
        "UPDATE risk_decisions SET decision = 'decline' WHERE tx_id = 'tx-1'",
        "DELETE FROM risk_decisions",
        "UPDATE labels SET is_fraud = false",
        "DELETE FROM labels",
        "UPDATE attention_explanations SET feature_weights = '{0}'",
        "DELETE FROM attention_explanations",
        "DELETE FROM decision_ids",
        "UPDATE decision_ids SET ts = now()",
        "DELETE FROM risk_decisions_p202606",
        // Retention deletes decisions: the owner's, not the engine's.
        "SELECT drop_decisions_before(date '2026-07-01')",
        "UPDATE dead_letters SET reason = 'fine'",
        "DELETE FROM dead_letters",
        "DELETE FROM kafka_offsets",
        "UPDATE threshold_sets SET changed_by = 'someone else'",
        "UPDATE model_versions SET sha256 = 'x'",
        "DELETE FROM model_versions",
        "DELETE FROM threshold_sets",
        // The old registration needed UPDATE on threshold_sets; it is refused now.
        "INSERT INTO threshold_sets (content_sha256, thresholds, changed_by) VALUES ('x', '{}', 'x')
         ON CONFLICT (content_sha256) DO UPDATE SET content_sha256 = EXCLUDED.content_sha256",
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (1, 'x', true, '', 0)",
        "DELETE FROM _sqlx_migrations",
        "CREATE TABLE mine (id int)",
        "CREATE VIEW mine AS SELECT 1 AS one",
        "ALTER TABLE risk_decisions ADD COLUMN mine int",
        "DROP TABLE labels",
        "CREATE SCHEMA mine",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for table in relations(&world.pool, false).await {
        denied.push(format!("TRUNCATE {table}"));
    }
    let wrong = not_denied(&writer, &denied).await;
    assert!(
        wrong.is_empty(),
        "the writer must be refused (SQLSTATE {DENIED}):\n  {}",
        wrong.join("\n  ")
    );

    // Nothing the writer tried changed anything.
    for (sql, want) in [
        (
            "SELECT count(*) FROM risk_decisions WHERE score = 0.1::real AND decision = 'approve'",
            1,
        ),
        ("SELECT count(*) FROM labels WHERE is_fraud", 1),
        ("SELECT count(*) FROM attention_explanations", 1),
        ("SELECT count(*) FROM decision_ids", 1),
        (
            "SELECT count(*) FROM dead_letters WHERE reason = 'bad json'",
            1,
        ),
        ("SELECT count(*) FROM kafka_offsets", 2),
        ("SELECT count(*) FROM threshold_sets", 1),
    ] {
        assert_eq!(world.count(sql).await, want, "{sql}");
    }
    // Every object belongs to the owner role, none to a login.
    let foreign: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname || ' ' || pg_get_userbyid(c.relowner)
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relowner <> 'riskstream_owner'::regrole",
    )
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert!(foreign.is_empty(), "owned by others: {foreign:?}");
    writer.close().await;
    world.tear_down().await;
}

#[tokio::test]
async fn the_analyst_reads_every_table_and_view_and_writes_nothing() {
    let world = World::new("priv_analyst", 1).await;
    let analyst = login(ANALYST, &world.name).await;
    let all = relations(&world.pool, true).await;
    for view in [
        "decision_reasons",
        "daily_alerts",
        "alert_quality",
        "versions_in_force",
    ] {
        assert!(all.iter().any(|r| r == view), "{view} in {all:?}");
    }
    for relation in &all {
        let sql = format!("SELECT count(*) FROM {relation}");
        run(&analyst, &sql)
            .await
            .unwrap_or_else(|e| panic!("the analyst may: {sql}\n  {e}"));
    }
    let mut writes = vec![
        "CREATE TABLE mine (id int)".to_string(),
        "CREATE VIEW mine AS SELECT 1 AS one".to_string(),
    ];
    for table in relations(&world.pool, false).await {
        let column = first_column(&world.pool, &table).await;
        writes.push(format!("INSERT INTO {table} DEFAULT VALUES"));
        writes.push(format!("UPDATE {table} SET {column} = {column}"));
        writes.push(format!("DELETE FROM {table}"));
        writes.push(format!("TRUNCATE {table}"));
    }
    let wrong = not_denied(&analyst, &writes).await;
    assert!(
        wrong.is_empty(),
        "the analyst must be refused (SQLSTATE {DENIED}):\n  {}",
        wrong.join("\n  ")
    );
    analyst.close().await;
    world.tear_down().await;
}

#[tokio::test]
async fn the_reviewer_reads_everything_and_only_appends_label_reviews() {
    let world = World::new("priv_reviewer", 1).await;
    let reviewer = login(REVIEWER, &world.name).await;
    for relation in relations(&world.pool, true).await {
        let sql = format!("SELECT count(*) FROM {relation}");
        run(&reviewer, &sql)
            .await
            .unwrap_or_else(|e| panic!("the reviewer may: {sql}\n  {e}"));
    }
    run(
        &reviewer,
        "INSERT INTO label_reviews (tx_id, is_fraud, reviewer, note) VALUES ('tx-1', true, 'alice', 'seen')",
    )
    .await
    .expect("the reviewer appends a review");
    let mut writes = vec![
        "UPDATE label_reviews SET is_fraud = false".to_string(),
        "DELETE FROM label_reviews".to_string(),
        "TRUNCATE label_reviews".to_string(),
    ];
    for table in relations(&world.pool, false).await {
        if table == "label_reviews" {
            continue;
        }
        let column = first_column(&world.pool, &table).await;
        writes.push(format!("INSERT INTO {table} DEFAULT VALUES"));
        writes.push(format!("UPDATE {table} SET {column} = {column}"));
        writes.push(format!("DELETE FROM {table}"));
    }
    let wrong = not_denied(&reviewer, &writes).await;
    assert!(
        wrong.is_empty(),
        "the reviewer must be refused (SQLSTATE {DENIED}):\n  {}",
        wrong.join("\n  ")
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM label_reviews")
        .fetch_one(&world.pool)
        .await
        .unwrap();
    assert_eq!(kept, 1);
    reviewer.close().await;
    world.tear_down().await;
}

/// A later migration creates a table and a view as the owner: analysts can
/// read them at once (ALTER DEFAULT PRIVILEGES), the engine can use them
/// only once the migration grants it.
#[tokio::test]
async fn default_privileges_cover_what_later_migrations_add() {
    let world = World::new("priv_default", 1).await;
    let owner = login(MIGRATOR, &world.name).await;
    let mut tx = owner.begin().await.unwrap();
    for sql in [
        "SET LOCAL ROLE riskstream_owner",
        "CREATE TABLE later_table (id bigserial PRIMARY KEY, note text NOT NULL)",
        "CREATE VIEW later_view AS SELECT id, note FROM later_table",
        "INSERT INTO later_table (note) VALUES ('from the migration')",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let analyst = login(ANALYST, &world.name).await;
    let writer = login(ENGINE, &world.name).await;
    for sql in ["SELECT * FROM later_table", "SELECT * FROM later_view"] {
        run(&analyst, sql).await.unwrap_or_else(|e| {
            panic!("the analyst reads what a later migration adds: {sql}\n  {e}")
        });
    }
    let ungranted = [
        "INSERT INTO later_table (note) VALUES ('engine')",
        "SELECT * FROM later_table",
        "UPDATE later_table SET note = 'x'",
        "DELETE FROM later_table",
    ]
    .map(String::from);
    let wrong = not_denied(&writer, &ungranted).await;
    assert!(
        wrong.is_empty(),
        "nothing for the writer until granted:\n  {}",
        wrong.join("\n  ")
    );
    let wrong = not_denied(
        &analyst,
        &["INSERT INTO later_table (note) VALUES ('analyst')".to_string()],
    )
    .await;
    assert!(wrong.is_empty(), "the analyst stays read-only: {wrong:?}");

    // What that migration would grant the engine, and no more.
    let mut tx = owner.begin().await.unwrap();
    for sql in [
        "SET LOCAL ROLE riskstream_owner",
        "GRANT INSERT ON later_table TO riskstream_writer",
        "GRANT USAGE ON SEQUENCE later_table_id_seq TO riskstream_writer",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    run(&writer, "INSERT INTO later_table (note) VALUES ('engine')")
        .await
        .expect("granted, the writer inserts");
    let wrong = not_denied(&writer, &ungranted[2..]).await;
    assert!(wrong.is_empty(), "still no UPDATE or DELETE: {wrong:?}");
    assert_eq!(world.count("SELECT count(*) FROM later_table").await, 2);
    for pool in [owner, analyst, writer] {
        pool.close().await;
    }
    world.tear_down().await;
}

/// `riskstream run` does not migrate: on a database without the migrations
/// it stops at once and says what to do; `riskstream migrate` with the
/// migrator's login fixes it; the writer's login cannot migrate.
#[tokio::test]
async fn run_refuses_an_unmigrated_database_and_migrate_fixes_it() {
    let world = World::new("priv_bare", 1).await;
    let bare = format!("{}_bare", world.name);
    scratch_database(&bare, "riskstream_owner").await;
    let text = world
        .config_text(1, "")
        .replace(&url_as(ENGINE, &world.name), &url_as(ENGINE, &bare))
        .replace(&url_as(MIGRATOR, &world.name), &url_as(MIGRATOR, &bare));
    let config = world.dir.path().join("bare.toml");
    std::fs::write(&config, &text).unwrap();
    let riskstream = |config: &std::path::Path, command: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_riskstream"))
            .args(["--config", config.to_str().unwrap(), command])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout),
        )
    };

    let started = std::time::Instant::now();
    let (ok, out) = riskstream(&config, "run");
    assert!(!ok, "run must refuse an unmigrated database:\n{out}");
    assert!(
        out.contains("not migrated") && out.contains("run `riskstream migrate`"),
        "run says why and what to do:\n{out}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "and stops at once"
    );

    // Without migrate_url, `migrate` logs in as the engine, which may not.
    let writer_only = world.dir.path().join("writer-only.toml");
    std::fs::write(
        &writer_only,
        text.lines()
            .filter(|l| !l.starts_with("migrate_url"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let (ok, out) = riskstream(&writer_only, "migrate");
    assert!(!ok, "the writer cannot migrate:\n{out}");
    assert!(
        out.contains("postgres.url") && out.contains("permission denied"),
        "{out}"
    );

    let (ok, out) = riskstream(&config, "migrate");
    assert!(ok, "the migrator migrates:\n{out}");
    assert!(out.contains("as riskstream_owner"), "{out}");
    let (ok, out) = riskstream(&config, "migrate");
    assert!(ok, "and again, idempotently:\n{out}");

    let pool = login(ENGINE, &bare).await;
    assert_eq!(
        sink::check_migrations(&pool).await.unwrap(),
        Vec::<i64>::new(),
        "the writer's check passes once migrated"
    );
    pool.close().await;
    drop_scratch_database(&bare).await;
    world.tear_down().await;
}

/// A database migrated by a superuser before the roles existed: the
/// migrator cannot take the objects over and says who can; one run as a
/// superuser hands everything to the owner and takes the writer's old
/// UPDATE grant away; from then on the migrator migrates.
#[tokio::test]
async fn a_database_migrated_before_the_roles_is_handed_to_the_owner() {
    let world = World::new("priv_upgrade", 1).await;
    let old = format!("{}_old", world.name);
    let old_admin_url = scratch_database(&old, "riskstream_owner").await;
    let superuser = PgPool::connect(&old_admin_url).await.unwrap();
    let before = migrations_before(20261125000003);
    before.run(&superuser).await.unwrap();
    let writer = login(ENGINE, &old).await;
    run(&writer, "INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset) VALUES ('g', 't', 0, 5)")
        .await
        .unwrap();
    run(&writer, "UPDATE kafka_offsets SET next_offset = 6")
        .await
        .expect("the first migration's writer could update anything");
    assert!(
        sink::check_migrations(&writer).await.is_err(),
        "not migrated yet"
    );

    let migrator = login(MIGRATOR, &old).await;
    let err = sink::migrate(&migrator).await.unwrap_err().to_string();
    assert!(
        err.contains("is owned by postgres") && err.contains("superuser"),
        "the migrator says who can take the objects over: {err}"
    );
    let done = sink::migrate(&superuser).await.unwrap();
    assert_eq!(done.role, "postgres");
    let again = sink::migrate(&migrator).await.unwrap();
    assert_eq!(again.role, "riskstream_owner", "from now on as the owner");

    let foreign: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'public' AND c.relowner <> 'riskstream_owner'::regrole",
    )
    .fetch_one(&superuser)
    .await
    .unwrap();
    assert_eq!(foreign, 0, "everything belongs to riskstream_owner");
    let wrong = not_denied(
        &writer,
        &[
            "UPDATE risk_decisions SET score = 0".to_string(),
            "UPDATE labels SET is_fraud = false".to_string(),
            "DELETE FROM kafka_offsets".to_string(),
        ],
    )
    .await;
    assert!(wrong.is_empty(), "old grants are gone: {wrong:?}");
    run(&writer, "UPDATE kafka_offsets SET next_offset = 7")
        .await
        .expect("offsets still advance");
    assert_eq!(
        sink::check_migrations(&writer).await.unwrap(),
        Vec::<i64>::new()
    );
    for pool in [writer, migrator, superuser] {
        pool.close().await;
    }
    drop_scratch_database(&old).await;
    world.tear_down().await;
}

/// The engine itself, as the writer, on a world the migrator migrated.
#[tokio::test]
async fn the_engine_decides_a_stream_as_the_writer() {
    let world = World::new("priv_engine", 2).await;
    let config = std::fs::read_to_string(&world.config_path).unwrap();
    assert!(
        config.contains(&url_as(ENGINE, &world.name)),
        "the world's engine logs in as {}",
        ENGINE.user
    );
    let (produced, _) = world.produce_simulated(600, 11);
    let mut engine = world.start_engine("writer");
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(180))
        .await;
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT usename::text FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid() AND usename <> 'postgres'",
    )
    .bind(&world.name)
    .fetch_all(&world.pool)
    .await
    .unwrap();
    assert_eq!(
        users,
        vec![ENGINE.user.to_string()],
        "the engine's sessions"
    );
    assert!(engine.terminate().success(), "{}", engine.log_tail());
    world.assert_exactly_once(produced).await;
    world.tear_down().await;
}
