//! The committed model, run through the engine's own scorer, reproduces the
//! golden outputs written at export (by ONNX Runtime from Python) within 1e-5.

use crate::common::model_dir;
use riskstream::features::{FeatureBatch, HISTORY_FIELD_COUNT, HISTORY_LEN, NUM_FEATURES};
use riskstream::scoring::Scorer;
use serde_json::Value;

fn flat(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(flat).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn committed_model_matches_its_golden_outputs() {
    let golden: Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("golden.json")).unwrap()).unwrap();
    let features = flat(&golden["inputs"]["features"]);
    let rows = features.len() / NUM_FEATURES;
    let batch = FeatureBatch {
        rows,
        features,
        history: flat(&golden["inputs"]["history"]),
        history_mask: flat(&golden["inputs"]["history_mask"]),
        history_tx_ids: vec![Vec::new(); rows],
        // No card past and no MCC: the fraud model does not read it.
        mcc_context: vec![vec![None]; rows],
    };
    assert_eq!(
        batch.history.len(),
        rows * HISTORY_LEN * HISTORY_FIELD_COUNT
    );
    let scorer = Scorer::open(&model_dir(), 1, 1, 64).expect("the committed model verifies");
    let scored = scorer.score_blocking(&batch).unwrap();
    let want_score = flat(&golden["outputs"]["score"]);
    let want_hist = flat(&golden["outputs"]["history_attention"]);
    let want_feat = flat(&golden["outputs"]["feature_attention"]);
    let mut worst = 0f32;
    for (i, s) in scored.iter().enumerate() {
        worst = worst.max((s.score - want_score[i]).abs());
        for (a, b) in s
            .history_attention
            .iter()
            .zip(&want_hist[i * HISTORY_LEN..])
        {
            worst = worst.max((a - b).abs());
        }
        for (a, b) in s
            .feature_attention
            .iter()
            .zip(&want_feat[i * NUM_FEATURES..])
        {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst <= 1e-5, "max abs difference {worst}");
    assert!(want_score.iter().any(|s| *s > 0.5) || rows > 0);
}

/// A batch split across the scorer's sessions (scored at once on the
/// blocking pool) comes back whole and in order: the golden rows, repeated
/// past the split threshold, each equal to its golden output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_split_across_sessions_keeps_its_rows_in_order() {
    let golden: Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("golden.json")).unwrap()).unwrap();
    let features = flat(&golden["inputs"]["features"]);
    let rows = features.len() / NUM_FEATURES;
    let copies = 400 / rows + 1;
    let batch = FeatureBatch {
        rows: rows * copies,
        features: features.repeat(copies),
        history: flat(&golden["inputs"]["history"]).repeat(copies),
        history_mask: flat(&golden["inputs"]["history_mask"]).repeat(copies),
        history_tx_ids: vec![Vec::new(); rows * copies],
        mcc_context: vec![vec![None]; rows * copies],
    };
    let want_score = flat(&golden["outputs"]["score"]);
    let want_hist = flat(&golden["outputs"]["history_attention"]);
    let scorer = Scorer::open(&model_dir(), 3, 1, 64).expect("the committed model verifies");
    let scored = scorer.score(std::sync::Arc::new(batch)).await.unwrap();
    assert_eq!(scored.len(), rows * copies);
    for (i, s) in scored.iter().enumerate() {
        let g = i % rows;
        assert!((s.score - want_score[g]).abs() <= 1e-5, "row {i}");
        let h = &want_hist[g * HISTORY_LEN..][..HISTORY_LEN];
        assert!(
            s.history_attention
                .iter()
                .zip(h)
                .all(|(a, b)| (a - b).abs() <= 1e-5),
            "row {i}"
        );
    }
}
