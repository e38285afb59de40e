//! `riskstream backtest` on what a real run stored: its figures equal the
//! same figures computed directly in SQL on the same rows.

use crate::common::World;
use serde_json::Value;
use sqlx::Row;
use std::process::Command;

fn backtest(config: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_riskstream"))
        .args(["--config", config.to_str().unwrap(), "backtest", "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "backtest failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backtest_figures_equal_sql_on_the_same_rows() {
    let world = World::new("backtest", 2).await;
    let (_, labels) = world.produce_simulated(6_000, 11);
    world.decide_all("backtest", labels).await;

    // The busiest card goes on a block list; a rule on amount and the card's
    // count today; lower thresholds, and another one for ecom.
    let (blocked, first, last): (String, chrono::NaiveDate, chrono::NaiveDate) = sqlx::query_as(
        "SELECT (SELECT card_id FROM risk_decisions GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1),
                (SELECT min(ts)::date + 1 FROM risk_decisions), (SELECT max(ts)::date - 1 FROM risk_decisions)",
    )
    .fetch_one(&world.pool)
    .await
    .unwrap();
    let candidate = world.dir.path().join("candidate.toml");
    std::fs::write(
        &candidate,
        world
            .config_text(
                2,
                &format!(
                    r#"
[thresholds.channel.ecom]
review = 0.03
decline = 0.7

[rules.lists]
blocked = ["{blocked}"]

[[rules.rule]]
name = "blocked"
when = "card_id in lists.blocked"
action = "decline"

[[rules.rule]]
name = "busy-large"
when = "amount > 100.0 && card_count_1d >= 3.0"
action = "review"
"#
                ),
            )
            .replace(
                "review = 0.5\ndecline = 0.9",
                "review = 0.05\ndecline = 0.8",
            ),
    )
    .unwrap();
    let plot = world.dir.path().join("sweep.svg");
    let (from, to) = (first.to_string(), last.to_string());
    let report = backtest(
        &world.config_path,
        &[
            "--candidate",
            candidate.to_str().unwrap(),
            "--from",
            &from,
            "--to",
            &to,
            "--plot",
            plot.to_str().unwrap(),
        ],
    );

    // The same, in SQL. Candidate: blocked card declines; otherwise the
    // channel's thresholds, raised to review when busy-large fires.
    let sql = "
      WITH rows AS (
        SELECT d.*, coalesce(l.is_fraud, false) AS fraud,
               d.card_id = $3 AS blocked,
               d.amount > 100 AND d.features[2] >= 3 AS busy_large,
               CASE WHEN d.channel = 'ecom' THEN 0.03::real ELSE 0.05::real END AS review_t,
               CASE WHEN d.channel = 'ecom' THEN 0.7::real ELSE 0.8::real END AS decline_t
          FROM risk_decisions d LEFT JOIN labels l USING (tx_id)
         WHERE d.ts >= $1::date AND d.ts < $2::date + 1),
      decided AS (
        SELECT *, CASE WHEN blocked THEN 'decline'
                       WHEN score >= decline_t THEN 'decline'
                       WHEN score >= review_t OR busy_large THEN 'review'
                       ELSE 'approve' END AS candidate
          FROM rows)
      SELECT count(*),
             count(*) FILTER (WHERE fraud),
             count(*) FILTER (WHERE decision <> 'approve'),
             count(*) FILTER (WHERE decision <> 'approve' AND fraud),
             count(*) FILTER (WHERE candidate <> 'approve'),
             count(*) FILTER (WHERE candidate = 'review'),
             count(*) FILTER (WHERE candidate = 'decline'),
             count(*) FILTER (WHERE candidate <> 'approve' AND fraud),
             coalesce(sum(amount) FILTER (WHERE candidate <> 'approve' AND fraud), 0)::float8,
             coalesce(sum(amount) FILTER (WHERE candidate = 'decline' AND NOT fraud), 0)::float8,
             count(*) FILTER (WHERE blocked),
             count(*) FILTER (WHERE busy_large),
             count(*) FILTER (WHERE busy_large AND fraud),
             count(*) FILTER (WHERE decision = 'approve' AND candidate = 'review'),
             ($2::date - $1::date + 1)::bigint
        FROM decided";
    let want = sqlx::query(sql)
        .bind(first)
        .bind(last)
        .bind(&blocked)
        .fetch_one(&world.pool)
        .await
        .unwrap();
    let n = |i: usize| want.get::<i64, _>(i);
    let amount = |i: usize| want.get::<f64, _>(i);
    let int = |v: &Value| v.as_i64().unwrap();
    let (a, c) = (&report["in_force"], &report["candidate"]);
    assert!(
        n(0) > 1000 && n(1) > 0,
        "enough rows and frauds: {} rows, {} frauds",
        n(0),
        n(1)
    );
    assert_eq!(int(&report["days"]), n(14));
    assert_eq!(int(&a["decisions"]), n(0));
    assert_eq!(int(&a["frauds"]), n(1));
    assert_eq!(int(&a["alerts"]), n(2));
    assert_eq!(int(&a["frauds_alerted"]), n(3));
    assert_eq!(int(&c["alerts"]), n(4));
    assert_eq!(int(&c["reviews"]), n(5));
    assert_eq!(int(&c["declines"]), n(6));
    assert_eq!(int(&c["frauds_alerted"]), n(7));
    assert!((c["fraud_amount_caught"].as_f64().unwrap() - amount(8)).abs() < 0.005);
    assert!((c["good_amount_declined"].as_f64().unwrap() - amount(9)).abs() < 0.005);
    let precision = n(7) as f64 / n(4) as f64;
    assert!((c["precision"].as_f64().unwrap() - precision).abs() < 1e-12);
    assert!((c["recall"].as_f64().unwrap() - n(7) as f64 / n(1) as f64).abs() < 1e-12);
    let alerts_per_day = n(4) as f64 / n(14) as f64;
    assert!((c["alerts_per_day"].as_f64().unwrap() - alerts_per_day).abs() < 1e-9);
    let rules = report["rules"].as_array().unwrap();
    assert_eq!(
        (rules[0]["name"].as_str(), int(&rules[0]["fires"])),
        (Some("blocked"), n(10))
    );
    assert_eq!(
        (int(&rules[1]["fires"]), int(&rules[1]["frauds"])),
        (n(11), n(12))
    );
    assert!(
        n(10) > 0 && n(11) > 0,
        "both rules fire: {} and {}",
        n(10),
        n(11)
    );
    assert_eq!(int(&report["changes"]["approve→review"]), n(13));

    // The sweep passes through the candidate, and the picture is drawn.
    let at_candidate = report["sweep"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| (p["review"].as_f64().unwrap() - 0.05).abs() < 1e-6)
        .expect("the candidate's review threshold is swept")
        .clone();
    assert_eq!(at_candidate["alerts_per_day"], c["alerts_per_day"]);
    assert_eq!(at_candidate["recall"], c["recall"]);
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2, "precision and recall");

    // The model what-if: the range replayed through the featurizer (with
    // the history before it) gives the champion exactly its stored scores,
    // so its AUC equals the AUC of the stored scores against the labels.
    let int8 = crate::common::repo_root().join("models/fraud-attention-int8");
    let replayed = backtest(
        &world.config_path,
        &[
            "--from",
            &from,
            "--to",
            &to,
            "--model",
            int8.to_str().unwrap(),
        ],
    );
    let m = &replayed["model"];
    assert_eq!((int(&m["rows"]), int(&m["frauds"])), (n(0), n(1)));
    assert!(
        m["replay_max_score_diff"].as_f64().unwrap() < 1e-6,
        "the replay reproduces the stream's inputs: {}",
        m["replay_max_score_diff"]
    );
    let (y, scores): (Vec<bool>, Vec<f32>) = sqlx::query_as::<_, (bool, f32)>(
        "SELECT coalesce(l.is_fraud, false), d.score FROM risk_decisions d LEFT JOIN labels l USING (tx_id)
          WHERE d.ts >= $1::date AND d.ts < $2::date + 1",
    )
    .bind(first)
    .bind(last)
    .fetch_all(&world.pool)
    .await
    .unwrap()
    .into_iter()
    .unzip();
    let auc = riskstream::evaluate::metrics::roc_auc(&y, &scores).unwrap();
    assert!((m["champion"]["auc_roc"].as_f64().unwrap() - auc).abs() < 1e-9);
    assert_eq!(m["challenger"]["model"], crate::common::model_label(&int8));
    assert!(m["challenger"]["auc_roc"].as_f64().unwrap() > 0.5);
    world.tear_down().await;
}
