//! Every SELECT the README and docs/OPERATIONS.md give analysts and
//! operators runs, as the analyst login, on what a real run stored (with a
//! rule and a shadow model, so every view has rows).

use crate::common::{repo_root, url_as, World, ANALYST, REVIEWER};
use std::time::Duration;

/// The SELECT statements of every ```sql block of `text`, comments dropped.
fn selects(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        match (&mut block, trimmed) {
            (None, "```sql") => block = Some(String::new()),
            (Some(b), "```") => {
                // Comments first: a `;` in one must not split a statement.
                let code: String = b
                    .lines()
                    .map(|l| l.split("--").next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("\n");
                for sql in code.split(';') {
                    if sql.trim_start().to_ascii_uppercase().starts_with("SELECT") {
                        out.push(sql.trim().to_owned());
                    }
                }
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_query_runs_as_the_analyst() {
    let world = World::new("analyst_sql", 2).await;
    let extra = format!(
        r#"
[shadow]
dir = "{}"

[[rules.rule]]
name = "large"
when = "amount > 200.0"
action = "review"
reason = "large amount"
"#,
        repo_root().join("models/fraud-attention-int8").display()
    );
    std::fs::write(&world.config_path, world.config_text(2, &extra)).unwrap();
    world.produce_simulated(3_000, 5);
    let mut engine = world.start_engine("analyst");
    world
        .wait_until_done(&mut [&mut engine], Duration::from_secs(180))
        .await;
    assert!(engine.terminate().success());

    let analyst = sqlx::PgPool::connect(&url_as(ANALYST, &world.name))
        .await
        .unwrap();
    let some_tx: String = sqlx::query_scalar("SELECT tx_id FROM risk_decisions LIMIT 1")
        .fetch_one(&analyst)
        .await
        .unwrap();
    // A label from the console, as the reviewer's login writes it.
    let reviewer = sqlx::PgPool::connect(&url_as(REVIEWER, &world.name))
        .await
        .unwrap();
    sqlx::query("INSERT INTO label_reviews (tx_id, is_fraud, reviewer) VALUES ($1, true, 'alice')")
        .bind(&some_tx)
        .execute(&reviewer)
        .await
        .unwrap();
    reviewer.close().await;
    let mut queries = Vec::new();
    for doc in ["README.md", "docs/OPERATIONS.md"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        queries.extend(selects(&text).into_iter().map(|q| (doc, q)));
    }
    assert!(queries.len() >= 10, "found only {} queries", queries.len());
    let mut empty = Vec::new();
    for (doc, sql) in &queries {
        let sql = sql.replace("some-tx-id", &some_tx);
        let rows = sqlx::query(&sql)
            .fetch_all(&analyst)
            .await
            .unwrap_or_else(|e| panic!("{doc}: the analyst cannot run\n{sql}\n: {e}"));
        if rows.is_empty() && *doc == "README.md" {
            empty.push(sql);
        }
    }
    // Queries over recent days (now() - interval …) find nothing in a
    // simulated past; every other one must show something.
    let unexplained: Vec<&String> = empty.iter().filter(|q| !q.contains("now()")).collect();
    assert!(
        unexplained.is_empty(),
        "documented queries that return nothing: {unexplained:#?}"
    );
    world.tear_down().await;
}
