//! Hot-swap bookkeeping and batching against the committed fraud model
//! (needs `ORT_DYLIB_PATH`, as every ONNX test: `source scripts/env.sh`).

use super::*;
use std::time::Duration;

const MODEL: &str = "fraud-attention";

fn committed() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(MODEL)
}

/// A models root holding a copy of the committed model.
fn root_with_copy() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join(MODEL);
    copy_dir(&committed(), &dir);
    // The tests count versions from 1, whatever the committed one is.
    edit_json(&dir.join("manifest.json"), |m| m["version"] = "1".into());
    (root, dir)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in WATCHED_FILES {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn registry(root: &Path, batch: BatchOptions) -> (Registry, Arc<ServeMetrics>) {
    let metrics = Arc::new(ServeMetrics::new());
    let opts = LoadOptions {
        sessions: 1,
        intra_threads: 1,
        batch,
    };
    (Registry::new(root, opts, metrics.clone()), metrics)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// The golden inputs (manifest order) and outputs of the committed model.
fn golden(model: &LoadedModel) -> (Vec<Tensor>, Vec<Tensor>) {
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(committed().join("golden.json")).unwrap()).unwrap();
    let read = |specs: &[TensorSpec], key: &str| -> Vec<Tensor> {
        specs
            .iter()
            .map(|s| Tensor::from_nested_json(&g[key][&s.name], s.dtype().unwrap()).unwrap())
            .collect()
    };
    (
        read(&model.inputs, "inputs"),
        read(&model.outputs, "outputs"),
    )
}

fn counter(m: &prometheus::IntCounterVec, model: &str) -> u64 {
    m.with_label_values(&[model]).get()
}

#[test]
fn a_changed_version_is_swapped_in_once_settled_and_old_handles_keep_working() {
    let (root, dir) = root_with_copy();
    let (reg, metrics) = registry(root.path(), BatchOptions::default());
    assert_eq!(reg.scan(false).loaded, vec![MODEL.to_string()]);
    assert!(reg.ready());
    let old = reg.get(MODEL).unwrap();
    assert_eq!(old.version(), "1");
    assert_eq!(old.golden_rows, Some(8));

    edit_json(&dir.join("manifest.json"), |m| m["version"] = "2".into());
    assert_eq!(
        reg.scan(true),
        ScanReport::default(),
        "a fresh change settles first"
    );
    assert_eq!(reg.get(MODEL).unwrap().version(), "1");
    assert_eq!(reg.scan(true).loaded, vec![MODEL.to_string()]);
    assert_eq!(reg.get(MODEL).unwrap().version(), "2");
    assert_eq!(
        reg.scan(true),
        ScanReport::default(),
        "unchanged files are not reloaded"
    );
    assert_eq!(counter(&metrics.model_reloads, MODEL), 2);

    // A request that held the old version finishes on it.
    let (inputs, want) = golden(&old);
    let got = old.infer_blocking(&inputs).unwrap();
    assert!(got[0].max_abs_diff(&want[0]).unwrap() <= 1e-5);
    assert_eq!(old.version(), "1");
}

#[test]
fn a_broken_version_leaves_the_old_one_serving_and_is_counted() {
    let (root, dir) = root_with_copy();
    let (reg, metrics) = registry(root.path(), BatchOptions::default());
    reg.scan(false);
    let good = std::fs::read(dir.join("model.onnx")).unwrap();

    let mut corrupt = good.clone();
    corrupt.truncate(good.len() / 2);
    std::fs::write(dir.join("model.onnx"), &corrupt).unwrap();
    reg.scan(true);
    assert_eq!(reg.scan(true).failed, vec![MODEL.to_string()]);
    assert_eq!(reg.get(MODEL).unwrap().version(), "1");
    assert_eq!(counter(&metrics.model_reload_failures, MODEL), 1);
    let status = &reg.statuses()[0];
    assert_eq!(status.state, "READY");
    assert!(
        status.reason.as_deref().unwrap().contains("sha256"),
        "{status:?}"
    );
    assert_eq!(
        reg.scan(true),
        ScanReport::default(),
        "a failed version is not retried"
    );
    assert_eq!(counter(&metrics.model_reload_failures, MODEL), 1);

    // Golden outputs that the model does not reproduce.
    std::fs::write(dir.join("model.onnx"), &good).unwrap();
    edit_json(&dir.join("golden.json"), |g| {
        let x = g["outputs"]["score"][0].as_f64().unwrap();
        g["outputs"]["score"][0] = (x + 1e-3).into();
    });
    reg.scan(true);
    reg.scan(true);
    assert_eq!(counter(&metrics.model_reload_failures, MODEL), 2);
    let reason = reg.statuses()[0].reason.clone().unwrap();
    assert!(reason.contains("golden output \"score\""), "{reason}");

    // A manifest whose IO names are not the graph's.
    std::fs::copy(committed().join("golden.json"), dir.join("golden.json")).unwrap();
    edit_json(&dir.join("manifest.json"), |m| {
        m["inputs"][0]["name"] = "feats".into();
        m["version"] = "3".into();
    });
    reg.scan(true);
    reg.scan(true);
    assert_eq!(counter(&metrics.model_reload_failures, MODEL), 3);
    let reason = reg.statuses()[0].reason.clone().unwrap();
    assert!(reason.contains("no input \"feats\""), "{reason}");
    assert_eq!(reg.get(MODEL).unwrap().version(), "1");

    // Fixed files load again.
    std::fs::copy(committed().join("manifest.json"), dir.join("manifest.json")).unwrap();
    edit_json(&dir.join("manifest.json"), |m| m["version"] = "4".into());
    reg.scan(true);
    reg.scan(true);
    assert_eq!(reg.get(MODEL).unwrap().version(), "4");
    assert!(reg.statuses()[0].reason.is_none());
}

#[test]
fn a_removed_directory_unloads_and_a_duplicate_name_is_refused() {
    let (root, dir) = root_with_copy();
    copy_dir(&committed(), &root.path().join("zz-copy"));
    let (reg, metrics) = registry(root.path(), BatchOptions::default());
    let report = reg.scan(false);
    assert_eq!(report.loaded, vec![MODEL.to_string()]);
    assert_eq!(report.failed, vec!["zz-copy".to_string()]);
    assert_eq!(counter(&metrics.model_reload_failures, MODEL), 1);
    let copy = reg
        .statuses()
        .into_iter()
        .find(|s| s.dir == "zz-copy")
        .unwrap();
    assert!(copy
        .reason
        .unwrap()
        .contains("already served from directory"));

    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        reg.scan(true).unloaded.is_empty(),
        "a missing directory settles first"
    );
    assert_eq!(reg.scan(true).unloaded, vec![MODEL.to_string()]);
    assert!(reg.get(MODEL).is_none());
    assert_eq!(metrics.models_loaded.get(), 0);
}

#[test]
fn verify_names_every_broken_directory() {
    let (root, dir) = root_with_copy();
    let results = verify(root.path()).unwrap();
    assert!(results[0].is_ok());
    edit_json(&dir.join("manifest.json"), |m| {
        m["sha256"] = "00".into();
        m["outputs"][0]["dtype"] = "float64".into();
    });
    let err = verify(&dir).unwrap().pop().unwrap().unwrap_err();
    assert!(err.to_string().contains("dtype \"float64\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_merged_and_split_back() {
    let (root, _dir) = root_with_copy();
    let batch = BatchOptions {
        max_batch: 8,
        max_delay: Duration::from_millis(50),
        queue: 64,
    };
    let (reg, metrics) = registry(root.path(), batch);
    let reg = Arc::new(reg);
    let r = reg.clone();
    tokio::task::spawn_blocking(move || r.scan(false))
        .await
        .unwrap();
    let model = reg.get(MODEL).unwrap();
    assert!(model.batching());
    let (inputs, want) = golden(&model);
    let rows = inputs[0].shape[0];
    let row = |t: &Tensor, i: usize| t.split_rows(&[i, 1, rows - 1 - i]).unwrap().swap_remove(1);
    let singles: Vec<Vec<Tensor>> = (0..rows)
        .map(|i| inputs.iter().map(|t| row(t, i)).collect())
        .collect();
    let answers = futures::future::join_all(singles.into_iter().map(|x| model.infer(x))).await;
    for (i, answer) in answers.into_iter().enumerate() {
        let got = answer.unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(g.max_abs_diff(&row(w, i)).unwrap() <= 1e-5, "row {i}");
        }
    }
    let merged = metrics.batch_requests.with_label_values(&[MODEL]);
    assert!(
        merged.get_sample_sum() > merged.get_sample_count() as f64,
        "{rows} concurrent requests ran in {} runs",
        merged.get_sample_count()
    );
    assert_eq!(
        metrics
            .batch_rows
            .with_label_values(&[MODEL])
            .get_sample_sum(),
        rows as f64
    );
}

#[test]
fn an_output_whose_dim_0_is_not_the_batch_turns_batching_off() {
    let (_root, dir) = root_with_copy();
    let opts = LoadOptions::default();
    assert!(LoadedModel::load(&dir, &opts, None).unwrap().batching());

    // The manifest says `score` always has 8 rows: not a batch dim.
    edit_json(&dir.join("manifest.json"), |m| {
        m["outputs"][0]["shape"] = serde_json::json!([8])
    });
    let fixed = LoadedModel::load(&dir, &opts, None).unwrap();
    assert!(!fixed.batch_dim() && !fixed.batching());

    std::fs::copy(committed().join("manifest.json"), dir.join("manifest.json")).unwrap();
    edit_json(&dir.join("manifest.json"), |m| m["batching"] = false.into());
    let refused = LoadedModel::load(&dir, &opts, None).unwrap();
    assert!(refused.batch_dim() && !refused.batching());
}
