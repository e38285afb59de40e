//! The analyst views on daily summaries (`refresh_summaries()`, `riskstream
//! summarise`) equal the same figures aggregated from every decision, before
//! any summary, after one, and after labels, reviews and a late decision
//! changed summarised days.

use crate::common::World;
use std::process::Command;

/// Each view beside its figures computed from every decision (the views'
/// definitions before the summaries, with UTC days).
const VIEWS: [(&str, &str); 5] = [
    (
        "daily_alerts",
        "SELECT (ts AT TIME ZONE 'UTC')::date AS day, decision, count(*) AS decisions,
                round(avg(score)::numeric, 4) AS avg_score
           FROM risk_decisions GROUP BY 1, 2",
    ),
    (
        "alert_quality",
        "SELECT (d.ts AT TIME ZONE 'UTC')::date AS day,
                count(*) FILTER (WHERE d.decision <> 'approve') AS alerts,
                count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud) AS true_alerts,
                count(*) FILTER (WHERE l.is_fraud) AS frauds,
                round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE d.decision <> 'approve'), 0), 4) AS precision,
                round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS recall
           FROM risk_decisions d LEFT JOIN labels_in_force l USING (tx_id) GROUP BY 1",
    ),
    (
        "alert_quality_by_version",
        "SELECT (d.ts AT TIME ZONE 'UTC')::date AS day,
                d.model_name || ' v' || d.model_version AS model, d.threshold_version,
                count(*) AS decisions,
                count(*) FILTER (WHERE d.decision <> 'approve') AS alerts,
                count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud) AS true_alerts,
                count(*) FILTER (WHERE l.is_fraud) AS frauds,
                round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE d.decision <> 'approve'), 0), 4) AS precision,
                round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS recall
           FROM risk_decisions d LEFT JOIN labels_in_force l USING (tx_id) GROUP BY 1, 2, 3",
    ),
    (
        "versions_in_force",
        "SELECT d.model_name, d.model_version, d.model_sha256, d.threshold_version,
                t.thresholds, t.changed_by,
                min(d.decided_at) AS first_decision, max(d.decided_at) AS last_decision,
                count(*) AS decisions
           FROM risk_decisions d JOIN threshold_sets t ON t.version = d.threshold_version
          GROUP BY 1, 2, 3, 4, 5, 6",
    ),
    (
        "shadow_comparison",
        "SELECT (d.ts AT TIME ZONE 'UTC')::date AS day,
                d.model_name || ' v' || d.model_version AS champion,
                s.model_name || ' v' || s.model_version AS shadow,
                count(*) AS decisions,
                count(*) FILTER (WHERE l.is_fraud) AS frauds,
                count(*) FILTER (WHERE d.decision <> 'approve') AS champion_alerts,
                count(*) FILTER (WHERE s.decision <> 'approve') AS shadow_alerts,
                count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud) AS champion_true_alerts,
                count(*) FILTER (WHERE s.decision <> 'approve' AND l.is_fraud) AS shadow_true_alerts,
                round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE d.decision <> 'approve'), 0), 4) AS champion_precision,
                round((count(*) FILTER (WHERE s.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE s.decision <> 'approve'), 0), 4) AS shadow_precision,
                round((count(*) FILTER (WHERE d.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS champion_recall,
                round((count(*) FILTER (WHERE s.decision <> 'approve' AND l.is_fraud))::numeric
                      / NULLIF(count(*) FILTER (WHERE l.is_fraud), 0), 4) AS shadow_recall,
                count(*) FILTER (WHERE d.decision <> s.decision) AS disagreements,
                round(avg(abs(d.score - s.score))::numeric, 6) AS mean_abs_score_diff
           FROM shadow_decisions s JOIN risk_decisions d USING (tx_id)
           LEFT JOIN labels_in_force l USING (tx_id)
          GROUP BY 1, 2, 3",
    ),
];

async fn rows(world: &World, sql: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT to_jsonb(x)::text FROM ({sql}) x ORDER BY 1"
    ))
    .fetch_all(&world.pool)
    .await
    .unwrap()
}

async fn assert_views_exact(world: &World, when: &str) {
    for (view, raw) in VIEWS {
        let (got, want) = (
            rows(world, &format!("SELECT * FROM {view}")).await,
            rows(world, raw).await,
        );
        assert!(!want.is_empty(), "{view}: nothing to compare");
        assert_eq!(got, want, "{view} {when}");
    }
}

fn summarise(world: &World) -> i64 {
    let out = Command::new(env!("CARGO_BIN_EXE_riskstream"))
        .args(["--config", world.config_path.to_str().unwrap(), "summarise"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "summarise failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("summarise printed {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_on_summaries_equal_the_figures_of_every_decision() {
    let world = World::new("summaries", 2).await;
    // With a shadow model, for shadow_comparison.
    let shadow = World::shadow_section();
    std::fs::write(&world.config_path, world.config_text(2, &shadow)).unwrap();
    let (_, labels) = world.produce_simulated(4_000, 21);
    world.decide_all("summaries", labels).await;

    // Nothing summarised yet: every day is aggregated live.
    assert_views_exact(&world, "before any summary").await;

    // The engine's login summarises every day.
    let days: i64 = world
        .count(
            "SELECT (max(ts AT TIME ZONE 'UTC')::date - min(ts AT TIME ZONE 'UTC')::date + 1)::bigint
               FROM risk_decisions",
        )
        .await;
    assert!(days >= 3, "the stream spans too few days: {days}");
    assert_eq!(summarise(&world), days);
    assert_eq!(
        world
            .count(
                "SELECT ((SELECT max(ts AT TIME ZONE 'UTC')::date FROM risk_decisions)
                      - (SELECT through FROM summary_state))::bigint"
            )
            .await,
        0
    );
    assert!(world.count("SELECT count(*) FROM decision_days").await > 0);
    assert_views_exact(&world, "after the first summary").await;

    let late = |id: &'static str, day: &'static str| {
        let pool = world.pool.clone();
        async move {
            sqlx::query(&format!(
                "INSERT INTO risk_decisions
                 SELECT (jsonb_populate_record(d, jsonb_build_object('tx_id', '{id}',
                         'ts', ({day})::timestamp AT TIME ZONE 'UTC' + interval '1 hour'))).*
                   FROM risk_decisions d ORDER BY ts LIMIT 1"
            ))
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    // A decision on a day after the summarised ones is counted live.
    late("next-day", "(SELECT through + 1 FROM summary_state)").await;
    assert_views_exact(&world, "with a day not summarised yet").await;

    // A review calls an approved decision of the first day fraud, a stream
    // label another one, and a late decision lands on the second day.
    sqlx::query(
        "INSERT INTO label_reviews (tx_id, is_fraud, reviewer)
         SELECT tx_id, true, 'alice' FROM risk_decisions
          WHERE decision = 'approve' AND NOT EXISTS (SELECT FROM labels l WHERE l.tx_id = risk_decisions.tx_id)
          ORDER BY ts LIMIT 1",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO labels (tx_id, is_fraud, reported_at, source_partition, source_offset)
         SELECT tx_id, true, now(), 0, -1 FROM risk_decisions
          WHERE decision = 'approve' AND NOT EXISTS (SELECT FROM labels l WHERE l.tx_id = risk_decisions.tx_id)
            AND NOT EXISTS (SELECT FROM label_reviews r WHERE r.tx_id = risk_decisions.tx_id)
          ORDER BY ts LIMIT 1",
    )
    .execute(&world.pool)
    .await
    .unwrap();
    // A partition a day behind: a decision for the day before the last summarised one.
    late("late-1", "(SELECT through - 1 FROM summary_state)").await;
    assert!(
        summarise(&world) >= 2,
        "the changed days are summarised again"
    );
    assert_views_exact(&world, "after labels, a review and a late decision").await;

    // Older than the recheck window (7 days): found by a wider recheck.
    late(
        "late-2",
        "(SELECT min(ts AT TIME ZONE 'UTC')::date + 1 FROM risk_decisions)",
    )
    .await;
    let out = Command::new(env!("CARGO_BIN_EXE_riskstream"))
        .args(["--config", world.config_path.to_str().unwrap()])
        .args(["summarise", "--recheck-days", "400"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_views_exact(&world, "after a recheck of every day").await;

    // Analysts read the summaries.
    let analyst =
        sqlx::PgPool::connect(&crate::common::url_as(crate::common::ANALYST, &world.name))
            .await
            .unwrap();
    for (view, _) in VIEWS {
        sqlx::query(&format!("SELECT * FROM {view}"))
            .fetch_all(&analyst)
            .await
            .unwrap_or_else(|e| panic!("the analyst reads {view}: {e}"));
    }
    analyst.close().await;
    world.tear_down().await;
}
