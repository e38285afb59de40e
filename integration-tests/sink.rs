//! The sink on the real Postgres, below the engine: what its binary COPY
//! writes reads back as sent, a tx_id another instance decided meanwhile
//! (which the featurize stage's check cannot see), or decided before with
//! another time, turns the COPY into the INSERT path's duplicate, not a
//! failure, and rows of a month without a partition wait in the default one.

use crate::common::{model_dir, World};
use chrono::{DateTime, Utc};
use riskstream::config::ThresholdConfig;
use riskstream::decision::{Decision, Policy};
use riskstream::event::{Channel, Transaction};
use riskstream::onnx::Manifest;
use riskstream::sink::{
    self, DeadLetter, DecisionRow, Mode, ModelId, OffsetUpdate, Provenance, PublishDeadLetters,
    ShadowRow, SinkBatch,
};
use sqlx::Row;
use std::sync::Mutex;

/// The DLQ topic's stand-in: this test is about Postgres.
#[derive(Default)]
struct Published(Mutex<Vec<DeadLetter>>);

impl PublishDeadLetters for Published {
    fn publish<'a>(
        &'a self,
        dead: &'a [DeadLetter],
    ) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.0.lock().unwrap().extend(dead.iter().cloned());
            Ok(())
        })
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn row(id: &str, offset: i64, amount: f64) -> DecisionRow {
    DecisionRow {
        tx: Transaction {
            tx_id: id.into(),
            ts: at("2026-03-01T10:00:00.123456Z"),
            card_id: "card-é".into(),
            terminal_id: "term-1".into(),
            amount,
            currency: (offset % 2 == 0).then(|| "EUR".into()),
            mcc: (offset % 2 == 0).then_some(5411),
            channel: Some(Channel::Ecom),
            country: None,
        },
        score: 0.625,
        decision: Decision::Review,
        features: (0..20).map(|i| i as f32 / 7.0 - 1.0).collect(),
        feature_weights: (0..20).map(|i| i as f32 / 190.0).collect(),
        history_tx_ids: vec!["h-1".into(), r#"we"ird\id,{}"#.into()],
        history_weights: vec![0.75, 0.25],
        state_complete: offset % 2 == 0,
        threshold_version: 0,
        rules_fired: if offset % 2 == 0 {
            vec![]
        } else {
            vec!["big ecom".into(), r#"we"ird\rule,{}"#.into()]
        },
        mcc_surprise: (offset % 2 == 1).then_some(3.5),
        partition: 0,
        offset,
        kafka_ts: (offset % 2 == 0).then(|| at("2026-03-01T10:00:01.5Z")),
        // Odd rows were scored by the shadow too.
        shadow: (offset % 2 == 1).then(|| ShadowRow {
            score: 0.125,
            decision: Decision::Approve,
            rules_fired: vec!["shadow rule".into()],
            feature_weights: vec![0.05; 20],
            history_weights: vec![0.5, 0.5],
        }),
    }
}

/// The model and a threshold set registered, partition 0 of topic "tx"
/// claimed by group "g": the model's manifest, the thresholds' version and
/// the claim's epoch, what a [`SinkBatch`] carries.
async fn registered(pool: &sqlx::PgPool) -> (Manifest, i32, i64) {
    let manifest = Manifest::read(&model_dir()).unwrap();
    sink::register_model(pool, &manifest).await.unwrap();
    let thresholds = Policy::thresholds_only(ThresholdConfig {
        review: 0.5,
        decline: 0.9,
        changed_by: "sink test".into(),
        channel: Default::default(),
    });
    let version = sink::register_thresholds(pool, &thresholds).await.unwrap();
    let claim = sink::claim_partitions(pool, "g", "tx", &[0], "sink-test")
        .await
        .unwrap();
    (manifest, version, claim[0].epoch)
}

#[tokio::test]
async fn copied_rows_read_back_as_sent_and_a_tx_id_decided_meanwhile_is_a_duplicate() {
    let world = World::new("sink_copy", 1).await;
    let pool = &world.pool;
    let (manifest, version, epoch) = registered(pool).await;
    let p = Provenance {
        source_topic: "tx".into(),
    };
    let shadow_model = ModelId {
        name: "challenger".into(),
        version: "7".into(),
        sha256: "c0ffee".into(),
    };
    let batch = |decisions: Vec<DecisionRow>, next_offset: i64| SinkBatch {
        model: (&manifest).into(),
        shadow_model: Some(shadow_model.clone()),
        decisions,
        offsets: vec![OffsetUpdate {
            topic: "tx".into(),
            partition: 0,
            next_offset,
            max_event_ts: None,
            epoch,
        }],
        ..Default::default()
    };
    let dlq = Published::default();
    let mut sent = vec![row("t1", 0, 1_234_567.89), row("t2", 1, 0.1)];
    for r in &mut sent {
        r.threshold_version = version;
    }
    let first = sink::write_batch(pool, "g", &p, &batch(sent.clone(), 2), &dlq, Mode::Bulk)
        .await
        .unwrap();
    assert_eq!((first.decisions, first.copy_refused), (2, false));

    for d in &sent {
        let r = sqlx::query(
            "SELECT d.ts, d.card_id, d.amount::text, d.currency, d.mcc, d.channel, d.country, d.score,
                    d.decision, d.features, d.state_complete, d.source_offset, d.kafka_ts, d.mcc_surprise,
                    e.feature_weights, e.history_tx_ids, e.history_weights, d.threshold_version,
                    d.rules_fired
               FROM risk_decisions d JOIN attention_explanations e USING (tx_id) WHERE tx_id = $1",
        )
        .bind(&d.tx.tx_id)
        .fetch_one(pool)
        .await
        .unwrap();
        let t = &d.tx;
        assert_eq!(r.get::<DateTime<Utc>, _>(0), t.ts);
        assert_eq!(r.get::<String, _>(1), t.card_id);
        let amount = format!("{:.2}", t.amount);
        assert_eq!(r.get::<String, _>(2), amount);
        assert_eq!(r.get::<Option<String>, _>(3), t.currency);
        assert_eq!(r.get::<Option<i32>, _>(4), t.mcc);
        assert_eq!(r.get::<Option<String>, _>(5).as_deref(), Some("ecom"));
        assert_eq!(r.get::<Option<String>, _>(6), None);
        assert_eq!(r.get::<f32, _>(7), d.score);
        assert_eq!(r.get::<String, _>(8), "review");
        assert_eq!(r.get::<Vec<f32>, _>(9), d.features);
        assert_eq!(r.get::<bool, _>(10), d.state_complete);
        assert_eq!(r.get::<i64, _>(11), d.offset);
        assert_eq!(r.get::<Option<DateTime<Utc>>, _>(12), d.kafka_ts);
        assert_eq!(r.get::<Option<f32>, _>(13), d.mcc_surprise);
        assert_eq!(r.get::<Vec<f32>, _>(14), d.feature_weights);
        let ids: Vec<String> = r.get(15);
        assert_eq!(ids, ["h-1", r#"we"ird\id,{}"#]);
        assert_eq!(r.get::<Vec<f32>, _>(16), d.history_weights);
        assert_eq!(r.get::<i32, _>(17), version);
        let rules: Vec<String> = r.get(18);
        assert_eq!(
            rules,
            d.rules_fired
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
        );
    }

    // Another instance decided t2 from another offset since this batch's
    // duplicate check, and t1 comes again a month later (another month's
    // partition: only decision_ids sees it): the COPY is refused, the
    // INSERT path writes t3 and dead-letters t2 and t1, and the offsets
    // still move.
    let mut t1_again = row("t1", 4, 9.0);
    t1_again.tx.ts += chrono::Duration::days(31);
    let second = sink::write_batch(
        pool,
        "g",
        &p,
        &batch(
            [row("t2", 2, 5.0), row("t3", 3, 7.129), t1_again]
                .map(|r| DecisionRow {
                    threshold_version: version,
                    ..r
                })
                .to_vec(),
            5,
        ),
        &dlq,
        Mode::Bulk,
    )
    .await
    .unwrap();
    assert!(second.copy_refused);
    assert_eq!((second.decisions, second.duplicates), (1, 2));
    let stored: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT tx_id, source_offset, amount::text FROM risk_decisions ORDER BY tx_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        [
            ("t1".into(), 0, "1234567.89".into()),
            ("t2".into(), 1, "0.10".into()),
            ("t3".into(), 3, "7.13".into())
        ]
    );
    // Shadow rows went in with both paths (t2 by COPY, t3 by INSERT), none
    // for the duplicate.
    type Stored = (String, String, f32, String, Vec<String>, Vec<f32>);
    let shadows: Vec<Stored> = sqlx::query_as(
        "SELECT tx_id, model_name, score, decision, rules_fired, history_weights
           FROM shadow_decisions ORDER BY tx_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(shadows.len(), 2, "{shadows:?}");
    let ids: Vec<&str> = shadows.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(ids, ["t2", "t3"]);
    for s in &shadows {
        assert_eq!(
            (s.1.as_str(), s.2, s.3.as_str()),
            ("challenger", 0.125, "approve")
        );
        assert_eq!(s.4, ["shadow rule"]);
        assert_eq!(s.5, [0.5, 0.5]);
    }
    // The INSERT path writes the fired rules too.
    let t3_rules: Vec<String> =
        sqlx::query_scalar("SELECT rules_fired FROM risk_decisions WHERE tx_id = 't3'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(t3_rules, ["big ecom", r#"we"ird\rule,{}"#]);
    let explained = world
        .count("SELECT count(*) FROM attention_explanations")
        .await;
    assert_eq!(explained, 3);
    let dead: Vec<(i64, String)> =
        sqlx::query_as("SELECT source_offset, reason FROM dead_letters ORDER BY 1")
            .fetch_all(pool)
            .await
            .unwrap();
    let offsets: Vec<i64> = dead.iter().map(|d| d.0).collect();
    assert_eq!(offsets, [2, 4]);
    assert!(dlq.0.lock().unwrap().iter().all(|d| d.kind == "duplicate"));
    let next: i64 =
        sqlx::query_scalar("SELECT next_offset FROM kafka_offsets WHERE consumer_group = 'g'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(next, 5);

    // Nothing created the month's partitions (the engine's commit stage
    // does, before write_batch): the rows wait in the default partitions,
    // and creating the month moves them in.
    let defaults = world
        .count(
            "SELECT (SELECT count(*) FROM risk_decisions_default)
                  + (SELECT count(*) FROM attention_explanations_default)
                  + (SELECT count(*) FROM shadow_decisions_default)",
        )
        .await;
    assert_eq!(defaults, 3 + 3 + 2);
    let day = sent[0].tx.ts.date_naive();
    assert_eq!(sink::partitions::create(pool, &[day]).await.unwrap(), 3);
    assert_eq!(sink::partitions::create(pool, &[day]).await.unwrap(), 0);
    world.assert_in_month_partitions().await;
    assert_eq!(
        world.count("SELECT count(*) FROM risk_decisions").await,
        3,
        "moved, not lost"
    );
    world.tear_down().await;
}

/// A batch over several partitions moves all their offsets in its one
/// statement, or, when any one of them was claimed again since (a stale
/// epoch), is refused as `Fenced` naming that partition and writes nothing:
/// no offset moves, no row lands.
#[tokio::test]
async fn a_stale_epoch_on_any_partition_fences_the_whole_batch() {
    let world = World::new("sink_fence", 1).await;
    let pool = &world.pool;
    let (manifest, version, _) = registered(pool).await;
    let claims = sink::claim_partitions(pool, "g", "tx", &[1, 2, 3], "sink-test")
        .await
        .unwrap();
    let epoch = |p: i32| claims.iter().find(|c| c.partition == p).unwrap().epoch;
    let p = Provenance {
        source_topic: "tx".into(),
    };
    let batch = |ids: [&str; 3], next: i64, epochs: [i64; 3]| SinkBatch {
        model: (&manifest).into(),
        decisions: ids
            .iter()
            .zip(1..)
            .map(|(id, part)| DecisionRow {
                threshold_version: version,
                partition: part,
                shadow: None,
                ..row(id, next - 1, 1.0)
            })
            .collect(),
        offsets: (1..=3)
            .zip(epochs)
            .map(|(partition, epoch)| OffsetUpdate {
                topic: "tx".into(),
                partition,
                next_offset: next,
                max_event_ts: None,
                epoch,
            })
            .collect(),
        ..Default::default()
    };
    let positions = || async {
        sqlx::query_as::<_, (i32, i64)>(
            "SELECT partition, next_offset FROM kafka_offsets WHERE consumer_group = 'g' AND partition > 0 ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap()
    };
    let dlq = Published::default();
    let current = [epoch(1), epoch(2), epoch(3)];
    let w = sink::write_batch(
        pool,
        "g",
        &p,
        &batch(["a1", "a2", "a3"], 10, current),
        &dlq,
        Mode::Bulk,
    )
    .await
    .unwrap();
    assert_eq!(w.decisions, 3);
    assert_eq!(positions().await, [(1, 10), (2, 10), (3, 10)]);

    // Partition 2 is claimed again (another instance took it over).
    sink::claim_partitions(pool, "g", "tx", &[2], "other")
        .await
        .unwrap();
    for mode in [Mode::Bulk, Mode::RowByRow] {
        let refused = sink::write_batch(
            pool,
            "g",
            &p,
            &batch(["b1", "b2", "b3"], 20, current),
            &dlq,
            mode,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(refused, sink::SinkError::Fenced { partition: 2, .. }),
            "{mode:?}: {refused}"
        );
        assert_eq!(positions().await, [(1, 10), (2, 10), (3, 10)], "{mode:?}");
        assert_eq!(
            world.count("SELECT count(*) FROM risk_decisions").await,
            3,
            "{mode:?}: nothing of the fenced batch lands"
        );
    }
    world.tear_down().await;
}

/// The terminal-fraud read the featurizer reloads once a closed day
/// (`sink::state::terminal_frauds`): frauds of the window's transactions,
/// in two month partitions, reported from its first day and before
/// `reported_before`; nothing else.
#[tokio::test]
async fn terminal_frauds_are_the_windows_reported_frauds_and_nothing_else() {
    let world = World::new("terminal_frauds", 1).await;
    let pool = &world.pool;
    let (manifest, version, epoch) = registered(pool).await;
    let day = |d: &str| at(&format!("{d}T00:00:00Z")).timestamp() / 86_400;
    // The window: tx days 2026-02-26 .. 2026-03-03 (until 03-04), reports before 03-06.
    let (from, until, reported_before) = (day("2026-02-26"), day("2026-03-04"), day("2026-03-06"));
    // (tx_id, tx time, terminal, label: (is_fraud, reported at))
    type Case<'a> = (&'a str, &'a str, &'a str, Option<(bool, &'a str)>);
    #[rustfmt::skip]
    let cases: [Case; 9] = [
        ("in-a", "2026-02-27T23:59:59Z", "term-A", Some((true, "2026-03-01T08:00:00Z"))),
        ("in-same-day", "2026-03-02T10:00:00Z", "term-C", Some((true, "2026-03-02T23:00:00Z"))),
        // Reported in the window but before its transaction's day: returned
        // (the featurizer drops it).
        ("in-reported-early", "2026-03-03T12:00:00Z", "term-A", Some((true, "2026-03-01T00:00:00Z"))),
        ("reported-too-late", "2026-03-01T10:00:00Z", "term-B", Some((true, "2026-03-06T00:00:00Z"))),
        ("reported-before-window", "2026-03-01T10:00:00Z", "term-B", Some((true, "2026-02-25T23:59:59Z"))),
        ("not-fraud", "2026-03-01T10:00:00Z", "term-A", Some((false, "2026-03-02T00:00:00Z"))),
        ("tx-before-window", "2026-02-25T23:59:59Z", "term-A", Some((true, "2026-02-27T00:00:00Z"))),
        ("tx-after-window", "2026-03-04T00:00:00Z", "term-A", Some((true, "2026-03-04T01:00:00Z"))),
        ("no-label", "2026-03-01T10:00:00Z", "term-A", None),
    ];
    let decisions: Vec<DecisionRow> = cases
        .iter()
        .enumerate()
        .map(|(i, (id, ts, terminal, _))| {
            let mut r = row(id, i as i64, 10.0);
            r.tx.ts = at(ts);
            r.tx.terminal_id = terminal.to_string();
            r.threshold_version = version;
            r.shadow = None;
            r
        })
        .collect();
    let batch = SinkBatch {
        model: (&manifest).into(),
        decisions,
        offsets: vec![OffsetUpdate {
            topic: "tx".into(),
            partition: 0,
            next_offset: cases.len() as i64,
            max_event_ts: None,
            epoch,
        }],
        ..Default::default()
    };
    let written = sink::write_batch(
        pool,
        "g",
        &Provenance {
            source_topic: "tx".into(),
        },
        &batch,
        &Published::default(),
        Mode::Bulk,
    )
    .await
    .unwrap();
    assert_eq!(written.decisions, cases.len());
    // A fraud label whose transaction was never decided, reported in the window.
    let labels = cases
        .iter()
        .filter_map(|(id, _, _, l)| l.map(|(f, at)| (id.to_string(), f, at)))
        .chain([("never-decided".to_string(), true, "2026-03-01T00:00:00Z")]);
    for (i, (id, is_fraud, reported)) in labels.enumerate() {
        sqlx::query(
            "INSERT INTO labels (tx_id, is_fraud, reported_at, source_partition, source_offset)
             VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(id)
        .bind(is_fraud)
        .bind(at(reported))
        .bind(i as i64)
        .execute(pool)
        .await
        .unwrap();
    }

    let mut got: Vec<(String, i64, i64)> =
        sink::state::terminal_frauds(pool, from, until, reported_before)
            .await
            .unwrap()
            .into_iter()
            .map(|(t, f)| (t, f.tx_day, f.reported_day))
            .collect();
    got.sort();
    let want = [
        ("term-A", "2026-02-27", "2026-03-01"),
        ("term-A", "2026-03-03", "2026-03-01"),
        ("term-C", "2026-03-02", "2026-03-02"),
    ]
    .map(|(t, tx, rep)| (t.to_string(), day(tx), day(rep)));
    assert_eq!(got, want);
    world.tear_down().await;
}
