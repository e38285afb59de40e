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
