//! One loaded, verified model: its manifest, the IO the graph really has, a
//! session pool, and the golden check that proved it before it was served.
//!
//! Loading is blocking work (file reads, graph optimisation, a golden run) and
//! runs off the request path. Inference goes through [`Engine::run_async`],
//! which takes a pooled session on tokio's blocking pool; nothing here ever
//! runs ONNX Runtime on an async worker.

use super::batch::{self, BatchOptions, Job};
use super::engine::Engine;
pub use super::engine::InferError;
use super::tensor::Tensor;
use crate::metrics::ServeMetrics;
use crate::onnx::manifest::{DType, Manifest, TensorSpec};
use crate::onnx::SessionPool;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use tokio::sync::{mpsc, oneshot};

/// Golden outputs must match within this absolute difference (int outputs exactly).
pub const GOLDEN_TOLERANCE: f64 = 1e-5;
/// A row run alone may differ from the same row run in a batch by this much
/// (different kernels for different batch sizes) before batching is refused.
const BATCH_SELF_TEST_TOLERANCE: f64 = 1e-4;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Sessions per model (concurrent ONNX Runtime runs).
    pub sessions: usize,
    /// Threads inside one ONNX Runtime run.
    pub intra_threads: usize,
    pub batch: BatchOptions,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            sessions: 1,
            intra_threads: 1,
            batch: BatchOptions::default(),
        }
    }
}

/// Why a model directory cannot be served: every problem found, in order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}", dir.display(), problems.join("; "))]
pub struct LoadError {
    pub dir: PathBuf,
    /// The manifest's model name, when the manifest could be read.
    pub model: Option<String>,
    pub problems: Vec<String>,
}

/// A verified model, ready to serve. Replaced as a whole on hot swap: whoever
/// holds an `Arc<LoadedModel>` finishes on that version.
pub struct LoadedModel {
    pub manifest: Manifest,
    pub dir: PathBuf,
    /// The inputs and outputs as the graph accepts them: the manifest's, with
    /// any `-1` the graph fixes replaced by the graph's dim.
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Rows of the golden file that matched, if it has one.
    pub golden_rows: Option<usize>,
    pub(crate) engine: Arc<Engine>,
    batch: BatchOptions,
    batcher: OnceLock<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("name", &self.manifest.name)
            .field("version", &self.manifest.version)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LoadedModel {
    /// Read, verify and open a model directory: manifest fields, sha256 of
    /// `model.onnx`, the graph's IO against the manifest, and `golden.json`
    /// when present. Blocking.
    pub fn load(
        dir: &Path,
        opts: &LoadOptions,
        metrics: Option<Arc<ServeMetrics>>,
    ) -> Result<LoadedModel, LoadError> {
        let fail = |model: Option<&str>, problems: Vec<String>| LoadError {
            dir: dir.to_owned(),
            model: model.map(str::to_owned),
            problems,
        };
        let manifest = Manifest::read(dir).map_err(|e| fail(None, vec![e.to_string()]))?;
        let name = Some(manifest.name.as_str());
        let problems = manifest.problems();
        if !problems.is_empty() {
            return Err(fail(name, problems));
        }
        let bytes = manifest
            .verify_file(dir)
            .map_err(|e| fail(name, vec![e.to_string()]))?;
        let env = crate::onnx::environment().map_err(|e| fail(name, vec![e.to_string()]))?;
        let mut sessions = Vec::with_capacity(opts.sessions.max(1));
        for _ in 0..opts.sessions.max(1) {
            let session = crate::onnx::open_session(env, &bytes, opts.intra_threads)
                .map_err(|e| fail(name, vec![format!("cannot load model.onnx: {e}")]))?;
            sessions.push(session);
        }
        let (inputs, outputs) = manifest
            .check_session_io(&sessions[0])
            .map_err(|p| fail(name, p))?;
        let batch_dim = inputs
            .iter()
            .chain(&outputs)
            .all(|s| s.shape.first() == Some(&-1));
        let refused = manifest.extra.get("batching") == Some(&serde_json::Value::Bool(false));
        let engine = Arc::new(Engine {
            name: manifest.name.clone(),
            pool: SessionPool::new(sessions),
            input_names: inputs.iter().map(|s| s.name.clone()).collect(),
            outputs: outputs.clone(),
            batch_dim,
            batching: AtomicBool::new(batch_dim && !refused),
            metrics,
        });
        let mut model = LoadedModel {
            dir: dir.to_owned(),
            inputs,
            outputs,
            golden_rows: None,
            engine,
            batch: opts.batch.clone(),
            batcher: OnceLock::new(),
            manifest,
        };
        if dir.join("golden.json").exists() {
            model.golden_rows = Some(
                model
                    .check_golden()
                    .map_err(|p| fail(Some(&model.manifest.name), p))?,
            );
        }
        Ok(model)
    }

    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    pub fn version(&self) -> &str {
        &self.manifest.version
    }

    /// Dim 0 of every input and output is the batch (as the manifest declares).
    pub fn batch_dim(&self) -> bool {
        self.engine.batch_dim
    }

    /// Concurrent requests are merged into one run.
    pub fn batching(&self) -> bool {
        self.engine.batching()
    }

    /// The largest dim 0 a request may have (when [`Self::batch_dim`]).
    pub fn max_batch(&self) -> usize {
        self.batch.max_batch
    }

    /// Infer with inputs in manifest order (already validated against
    /// [`Self::inputs`]); returns every output in manifest order. Merged with
    /// concurrent requests when the model batches.
    pub async fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, InferError> {
        if !self.engine.batching() {
            return self.engine.run_async(inputs).await;
        }
        let tx = self.batcher.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.batch.queue.max(1));
            tokio::spawn(batch::run_batcher(
                self.engine.clone(),
                rx,
                self.batch.clone(),
            ));
            tx
        });
        let (reply, answer) = oneshot::channel();
        tx.try_send(Job::new(inputs, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => InferError::Overloaded(self.name().into()),
            mpsc::error::TrySendError::Closed(_) => InferError::Unavailable(self.name().into()),
        })?;
        answer
            .await
            .map_err(|_| InferError::Unavailable(self.name().into()))?
    }

    /// Infer on the calling thread (tools and tests; no batching).
    pub fn infer_blocking(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, InferError> {
        self.engine.with_session(|s| self.engine.run(s, inputs))?
    }

    /// Run `golden.json` and compare every output it lists. If the model
    /// batches and the file has several rows, also run the first row alone:
    /// a model whose outputs do not follow the batch is then served unbatched.
    fn check_golden(&self) -> Result<usize, Vec<String>> {
        let path = self.dir.join("golden.json");
        let text = std::fs::read(&path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let golden: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| vec![format!("golden.json is not JSON: {e}")])?;
        let (Some(g_in), Some(g_out)) = (
            golden.get("inputs").and_then(|v| v.as_object()),
            golden.get("outputs").and_then(|v| v.as_object()),
        ) else {
            return Err(vec![
                "golden.json needs objects \"inputs\" and \"outputs\"".into()
            ]);
        };
        let mut problems = Vec::new();
        for name in g_in.keys() {
            if !self.inputs.iter().any(|s| &s.name == name) {
                problems.push(format!("golden input {name:?} is not a model input"));
            }
        }
        for name in g_out.keys() {
            if !self.outputs.iter().any(|s| &s.name == name) {
                problems.push(format!("golden output {name:?} is not a model output"));
            }
        }
        let mut inputs = Vec::new();
        for spec in &self.inputs {
            let dtype = spec.dtype().expect("checked by Manifest::problems");
            match g_in
                .get(&spec.name)
                .map(|v| Tensor::from_nested_json(v, dtype))
            {
                None => problems.push(format!("golden.json has no input {:?}", spec.name)),
                Some(Err(e)) => problems.push(format!("golden input {:?}: {e}", spec.name)),
                Some(Ok(t)) => {
                    if let Err(e) = fits(spec, &t.shape) {
                        problems.push(format!("golden input {:?}: {e}", spec.name));
                    }
                    inputs.push(t);
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let got = self
            .infer_blocking(&inputs)
            .map_err(|e| vec![format!("golden run: {e}")])?;
        for (spec, actual) in self.outputs.iter().zip(&got) {
            let Some(want) = g_out.get(&spec.name) else {
                continue;
            };
            let want = match Tensor::from_nested_json(want, actual.dtype()) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("golden output {:?}: {e}", spec.name));
                    continue;
                }
            };
            let tolerance = match actual.dtype() {
                DType::F32 => GOLDEN_TOLERANCE,
                DType::I64 => 0.0,
            };
            match actual.max_abs_diff(&want) {
                Err(e) => problems.push(format!(
                    "golden output {:?}: model gives {e} (golden)",
                    spec.name
                )),
                Ok(d) if d > tolerance => problems.push(format!(
                    "golden output {:?}: max abs difference {d:.3e} > {tolerance:e}",
                    spec.name
                )),
                Ok(_) => {}
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        if self.engine.batching() {
            if let Err(why) = self.batch_self_test(&inputs, &got) {
                self.engine.disable_batching(&why);
            }
        }
        Ok(rows)
    }

    /// The first golden row alone must give the first row of the batched run.
    fn batch_self_test(&self, inputs: &[Tensor], batched: &[Tensor]) -> Result<(), String> {
        let rows = inputs[0].shape[0];
        if inputs.iter().any(|t| t.shape[0] != rows) {
            return Err("the golden inputs disagree on dim 0".into());
        }
        if rows < 2 {
            return Ok(());
        }
        let split = |t: &Tensor| {
            t.split_rows(&[1, t.shape[0] - 1])
                .map(|mut v| v.swap_remove(0))
        };
        let first: Vec<Tensor> = inputs.iter().map(split).collect::<Result<_, _>>()?;
        let alone = self
            .infer_blocking(&first)
            .map_err(|e| format!("one golden row alone fails: {e}"))?;
        for ((spec, b), a) in self.outputs.iter().zip(batched).zip(&alone) {
            if b.shape.first() != Some(&rows) || a.shape.first() != Some(&1) {
                return Err(format!(
                    "output {:?} does not follow the batch (dim 0 is {:?} for {rows} rows)",
                    spec.name,
                    b.shape.first()
                ));
            }
            let d = split(b)?.max_abs_diff(a)?;
            if d > BATCH_SELF_TEST_TOLERANCE {
                return Err(format!(
                    "output {:?} of a row depends on the other rows of the batch (differs by {d:.3e})",
                    spec.name
                ));
            }
        }
        Ok(())
    }
}

/// `shape` (of a concrete tensor) fits `spec`: same rank, and every fixed dim equal.
pub fn fits(spec: &TensorSpec, shape: &[usize]) -> Result<(), String> {
    if shape.len() != spec.shape.len() {
        return Err(format!(
            "shape {shape:?} has rank {}, expected rank {} {:?}",
            shape.len(),
            spec.shape.len(),
            spec.shape
        ));
    }
    for (i, (&got, &want)) in shape.iter().zip(&spec.shape).enumerate() {
        if want >= 0 && got as i64 != want {
            return Err(format!(
                "shape {shape:?} does not fit {:?}: dim {i} is {got}, expected {want}",
                spec.shape
            ));
        }
    }
    Ok(())
}
