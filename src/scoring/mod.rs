//! Model scoring through ONNX Runtime.
//!
//! This module owns the ONNX Runtime environment, model verification at
//! startup and a pool of sessions (one per worker thread). Inference is CPU
//! work: [`Scorer::score`] hands it to tokio's blocking pool and never runs it
//! on an async worker.

pub mod manifest;

use crate::features::{
    FeatureBatch, FEATURE_NAMES, HISTORY_FIELD_COUNT, HISTORY_LEN, NUM_FEATURES,
};
pub use manifest::{Manifest, ManifestError};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Semaphore;

/// The fraud model's contract with the featurizer.
pub const FRAUD_INPUTS: [&str; 3] = ["features", "history", "history_mask"];
pub const FRAUD_OUTPUTS: [&str; 3] = ["score", "history_attention", "feature_attention"];

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error("ONNX Runtime library: {0} (set ORT_DYLIB_PATH to libonnxruntime.so, e.g. run `make setup`)")]
    Runtime(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("model {model}: {message}")]
    Contract { model: String, message: String },
    #[error("model {model}: inference failed: {message}")]
    Inference { model: String, message: String },
}

/// Where the ONNX Runtime shared library is: `ORT_DYLIB_PATH`, as `make setup` installs it.
pub fn runtime_library() -> Result<PathBuf, ScoringError> {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .ok_or_else(|| ScoringError::Runtime("ORT_DYLIB_PATH is not set".into()))?;
    if !path.is_file() {
        return Err(ScoringError::Runtime(format!(
            "{} does not exist",
            path.display()
        )));
    }
    Ok(path)
}

/// ONNX Runtime allows one environment per process; every model shares it.
fn environment() -> Result<&'static ort::environment::Environment, ScoringError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = runtime_library().map_err(|e| e.to_string())?;
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load {}: {e}", lib.display()))?
            .with_name("riskstream")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| ScoringError::Runtime(e.clone()))
}

/// One scored row.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub score: f32,
    pub history_attention: Vec<f32>,
    pub feature_attention: Vec<f32>,
}

/// A verified fraud model and its session pool.
pub struct Scorer {
    pub manifest: Manifest,
    pub dir: PathBuf,
    sessions: Arc<Mutex<Vec<Session>>>,
    permits: Arc<Semaphore>,
    max_batch: usize,
}

impl Scorer {
    /// Verify the model directory and open `workers` sessions.
    pub fn open(
        dir: &Path,
        workers: usize,
        intra_threads: usize,
        max_batch: usize,
    ) -> Result<Scorer, ScoringError> {
        let manifest = Manifest::read(dir)?;
        let bytes = manifest.verify_file(dir)?;
        let contract = |message: String| ScoringError::Contract {
            model: manifest.name.clone(),
            message,
        };
        check_fraud_contract(&manifest).map_err(contract)?;
        let env = environment()?;
        let mut sessions = Vec::with_capacity(workers);
        for _ in 0..workers.max(1) {
            let session = Session::builder(env)
                .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
                .and_then(|b| Ok(b.with_intra_threads(intra_threads.max(1))?))
                .and_then(|b| Ok(b.with_inter_threads(1)?))
                .and_then(|mut b| b.commit_from_memory(&bytes))
                .map_err(|e| contract(format!("cannot load model.onnx: {e}")))?;
            check_session(&session, &manifest).map_err(contract)?;
            sessions.push(session);
        }
        Ok(Scorer {
            manifest,
            dir: dir.to_owned(),
            permits: Arc::new(Semaphore::new(sessions.len())),
            sessions: Arc::new(Mutex::new(sessions)),
            max_batch: max_batch.max(1),
        })
    }

    /// Score a batch on the blocking pool, in chunks of at most `max_batch` rows.
    pub async fn score(&self, batch: Arc<FeatureBatch>) -> Result<Vec<Scored>, ScoringError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let sessions = self.sessions.clone();
        let (name, max_batch) = (self.manifest.name.clone(), self.max_batch);
        tokio::task::spawn_blocking(move || {
            let mut session = sessions
                .lock()
                .expect("pool lock")
                .pop()
                .expect("a permit guarantees a session");
            let result = run_chunks(&mut session, &batch, max_batch);
            sessions.lock().expect("pool lock").push(session);
            result.map_err(|message| ScoringError::Inference {
                model: name,
                message,
            })
        })
        .await
        .map_err(|e| ScoringError::Inference {
            model: self.manifest.name.clone(),
            message: e.to_string(),
        })?
    }

    /// Score synchronously on the calling thread (tools, tests, benchmarks).
    pub fn score_blocking(&self, batch: &FeatureBatch) -> Result<Vec<Scored>, ScoringError> {
        let mut session = self
            .sessions
            .lock()
            .expect("pool lock")
            .pop()
            .expect("no concurrent blocking use");
        let result = run_chunks(&mut session, batch, self.max_batch);
        self.sessions.lock().expect("pool lock").push(session);
        result.map_err(|message| ScoringError::Inference {
            model: self.manifest.name.clone(),
            message,
        })
    }
}

fn check_fraud_contract(m: &Manifest) -> Result<(), String> {
    let names =
        |specs: &[manifest::TensorSpec]| specs.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    if names(&m.inputs) != FRAUD_INPUTS || names(&m.outputs) != FRAUD_OUTPUTS {
        return Err(format!(
            "manifest IO {:?} -> {:?} is not the fraud contract {FRAUD_INPUTS:?} -> {FRAUD_OUTPUTS:?}",
            names(&m.inputs),
            names(&m.outputs)
        ));
    }
    let want = [
        vec![-1, NUM_FEATURES as i64],
        vec![-1, HISTORY_LEN as i64, HISTORY_FIELD_COUNT as i64],
        vec![-1, HISTORY_LEN as i64],
    ];
    for (spec, want) in m.inputs.iter().zip(want) {
        let dims_match = spec.shape.len() == want.len()
            && spec.shape.iter().zip(&want).skip(1).all(|(a, b)| a == b);
        if !dims_match || spec.dtype != "float32" {
            return Err(format!(
                "input {} is {} {:?}, the featurizer produces float32 {want:?}",
                spec.name, spec.dtype, spec.shape
            ));
        }
    }
    if m.feature_names != FEATURE_NAMES {
        return Err(format!(
            "feature_names {:?} differ from the featurizer's {FEATURE_NAMES:?}",
            m.feature_names
        ));
    }
    Ok(())
}

/// The graph itself must have the names the manifest promises.
fn check_session(s: &Session, m: &Manifest) -> Result<(), String> {
    let inputs: Vec<&str> = s.inputs().iter().map(|o| o.name()).collect();
    let outputs: Vec<&str> = s.outputs().iter().map(|o| o.name()).collect();
    for spec in &m.inputs {
        if !inputs.contains(&spec.name.as_str()) {
            return Err(format!(
                "model.onnx has no input {:?} (it has {inputs:?})",
                spec.name
            ));
        }
    }
    for spec in &m.outputs {
        if !outputs.contains(&spec.name.as_str()) {
            return Err(format!(
                "model.onnx has no output {:?} (it has {outputs:?})",
                spec.name
            ));
        }
    }
    Ok(())
}

fn run_chunks(
    session: &mut Session,
    b: &FeatureBatch,
    max_batch: usize,
) -> Result<Vec<Scored>, String> {
    let mut out = Vec::with_capacity(b.rows);
    let mut start = 0;
    while start < b.rows {
        let n = (b.rows - start).min(max_batch);
        let feats = &b.features[start * NUM_FEATURES..(start + n) * NUM_FEATURES];
        let hist = &b.history[start * HISTORY_LEN * HISTORY_FIELD_COUNT
            ..(start + n) * HISTORY_LEN * HISTORY_FIELD_COUNT];
        let mask = &b.history_mask[start * HISTORY_LEN..(start + n) * HISTORY_LEN];
        let e = |e: ort::Error| e.to_string();
        let outputs = session
            .run(ort::inputs![
                "features" => TensorRef::from_array_view(([n, NUM_FEATURES], feats)).map_err(e)?,
                "history" => TensorRef::from_array_view(([n, HISTORY_LEN, HISTORY_FIELD_COUNT], hist)).map_err(e)?,
                "history_mask" => TensorRef::from_array_view(([n, HISTORY_LEN], mask)).map_err(e)?,
            ])
            .map_err(e)?;
        let (_, score) = outputs["score"].try_extract_tensor::<f32>().map_err(e)?;
        let (_, hatt) = outputs["history_attention"]
            .try_extract_tensor::<f32>()
            .map_err(e)?;
        let (_, fatt) = outputs["feature_attention"]
            .try_extract_tensor::<f32>()
            .map_err(e)?;
        if score.len() != n || hatt.len() != n * HISTORY_LEN || fatt.len() != n * NUM_FEATURES {
            return Err(format!(
                "unexpected output sizes: score {}, history_attention {}, feature_attention {} for {n} rows",
                score.len(),
                hatt.len(),
                fatt.len()
            ));
        }
        for i in 0..n {
            out.push(Scored {
                score: score[i],
                history_attention: hatt[i * HISTORY_LEN..(i + 1) * HISTORY_LEN].to_vec(),
                feature_attention: fatt[i * NUM_FEATURES..(i + 1) * NUM_FEATURES].to_vec(),
            });
        }
        start += n;
    }
    Ok(out)
}
