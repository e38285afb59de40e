//! `riskstream evaluate` (Rust: featurizer, ONNX Runtime, metrics) reproduces
//! the test-week numbers that training computed for the committed model
//! (Python: sklearn, polars), from the simulator data the manifest names.
//! Two independent implementations of the protocol, one answer.

use crate::common::model_dir;
use serde_json::Value;
use std::process::Command;

fn riskstream(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_riskstream"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "riskstream {args:?} failed:\n{text}");
    text
}

#[test]
fn evaluate_reproduces_the_metrics_in_the_model_manifest() {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(model_dir().join("manifest.json")).unwrap()).unwrap();
    let sim = &manifest["training_data"]["simulate"];
    let (n, seed) = (
        sim["transactions"].as_u64().unwrap(),
        sim["seed"].as_u64().unwrap(),
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("transactions.parquet");
    let json = dir.path().join("evaluate.json");
    riskstream(&[
        "simulate",
        "--transactions",
        &n.to_string(),
        "--seed",
        &seed.to_string(),
        "--out",
        data.to_str().unwrap(),
    ]);
    let table = riskstream(&[
        "evaluate",
        "--model",
        model_dir().to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let fold = &report["folds"][0];
    let expected = &manifest["metrics"];
    assert_eq!(fold["test_start"], expected["test_window"][0], "{table}");
    assert_eq!(fold["rows"], expected["test_rows"], "{table}");
    assert_eq!(fold["frauds"], expected["test_frauds"], "{table}");
    for key in ["auc_roc", "average_precision", "card_precision_at_100"] {
        let (got, want) = (fold[key].as_f64().unwrap(), expected[key].as_f64().unwrap());
        // The manifest rounds to 6 decimals; both sides score with ONNX Runtime.
        assert!(
            (got - want).abs() < 2e-6,
            "{key}: evaluate says {got}, training said {want}\n{table}"
        );
    }
}
