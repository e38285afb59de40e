//! The fraud model's scoring: its contract with the featurizer, checked at
//! startup (IO names and shapes, golden outputs), and its runs on a pool of
//! sessions of the shared ONNX Runtime core ([`crate::onnx`]). Inference is
//! CPU work: [`Scorer::score`] hands it to tokio's blocking pool and never
//! runs it on an async worker.
//!
//! The engine only runs models that take the whole fraud contract and explain
//! their scores ([`Contract::Engine`]); offline evaluation also runs models
//! with another history length or only some of the inputs, such as a
//! features-only baseline ([`Contract::ScoreOnly`]).

use crate::features::{
    FeatureBatch, FEATURE_NAMES, HISTORY_FIELD_COUNT, HISTORY_LEN, NUM_FEATURES,
};
use crate::onnx::{
    environment, open_session, Manifest, ManifestError, RuntimeError, SessionPool, TensorSpec,
};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The fraud model's contract with the featurizer.
pub const FRAUD_INPUTS: [&str; 3] = ["features", "history", "history_mask"];
pub const FRAUD_OUTPUTS: [&str; 3] = ["score", "history_attention", "feature_attention"];

/// What the caller needs from a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// The engine: exactly [`FRAUD_INPUTS`] with [`HISTORY_LEN`] and
    /// [`FRAUD_OUTPUTS`], since every decision stores its explanation.
    Engine,
    /// Scores only: `features` plus optionally `history` and `history_mask`
    /// of any length K (the manifest's `history.length`), and an output
    /// `score`. [`Scored`] then carries empty attention vectors.
    ScoreOnly,
}

/// The tensors a checked model is fed and what comes back.
#[derive(Debug, Clone)]
struct Io {
    /// The declared inputs, in manifest order; each is one of [`FRAUD_INPUTS`].
    inputs: Vec<String>,
    /// K of the history inputs, or the length to featurize with when the
    /// model reads no history.
    history_len: usize,
    /// Read `history_attention` and `feature_attention`.
    explains: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("model {model}: {message}")]
    Contract { model: String, message: String },
    #[error("model {model}: inference failed: {message}")]
    Inference { model: String, message: String },
}

/// Open any ONNX model file in the shared environment, on one thread, without
/// the fraud contract checks of [`Scorer::open`]: for tools and tests that run
/// other graphs (e.g. the attention parity test).
pub fn session(path: &Path) -> Result<Session, ScoringError> {
    let broken = |message: String| ScoringError::Contract {
        model: path.display().to_string(),
        message: format!("cannot load: {message}"),
    };
    let bytes = std::fs::read(path).map_err(|e| broken(e.to_string()))?;
    open_session(environment()?, &bytes, 1).map_err(broken)
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
    pool: Arc<SessionPool>,
    max_batch: usize,
    /// Sessions in the pool: a batch is split into at most this many parts.
    workers: usize,
    io: Io,
}

/// A batch is split across sessions only into parts at least this large:
/// below it, a session's fixed cost per run outweighs the parallelism.
const MIN_ROWS_PER_SESSION: usize = 128;

impl Scorer {
    /// Verify the model directory against the engine's contract and open
    /// `workers` sessions.
    pub fn open(
        dir: &Path,
        workers: usize,
        intra_threads: usize,
        max_batch: usize,
    ) -> Result<Scorer, ScoringError> {
        Scorer::open_with(Contract::Engine, dir, workers, intra_threads, max_batch)
    }

    /// Verify the model directory against `contract` and open `workers` sessions.
    pub fn open_with(
        contract: Contract,
        dir: &Path,
        workers: usize,
        intra_threads: usize,
        max_batch: usize,
    ) -> Result<Scorer, ScoringError> {
        let manifest = Manifest::read(dir)?;
        let bytes = manifest.verify_file(dir)?;
        let broken = |message: String| ScoringError::Contract {
            model: manifest.name.clone(),
            message,
        };
        let io = match contract {
            Contract::Engine => check_fraud_contract(&manifest),
            Contract::ScoreOnly => check_score_contract(&manifest),
        }
        .map_err(broken)?;
        let env = environment()?;
        let mut sessions = Vec::with_capacity(workers);
        for _ in 0..workers.max(1) {
            let session = open_session(env, &bytes, intra_threads)
                .map_err(|e| broken(format!("cannot load model.onnx: {e}")))?;
            check_session(&session, &manifest).map_err(broken)?;
            sessions.push(session);
        }
        if contract == Contract::Engine && dir.join("golden.json").exists() {
            check_golden(&mut sessions[0], dir, &io, max_batch.max(1)).map_err(broken)?;
        }
        Ok(Scorer {
            manifest,
            dir: dir.to_owned(),
            workers: sessions.len(),
            pool: Arc::new(SessionPool::new(sessions)),
            max_batch: max_batch.max(1),
            io,
        })
    }

    /// K, the history length the featurizer must produce for this model.
    pub fn history_len(&self) -> usize {
        self.io.history_len
    }

    /// Score a batch on the blocking pool, in chunks of at most `max_batch`
    /// rows. A batch large enough is split across the sessions, which score
    /// their parts at once (the rows' order is kept): with the pipeline's
    /// stages otherwise waiting on the score stage, that is where a second
    /// core helps.
    pub async fn score(&self, batch: Arc<FeatureBatch>) -> Result<Vec<Scored>, ScoringError> {
        let parts = (batch.rows / MIN_ROWS_PER_SESSION).clamp(1, self.workers);
        let per_part = batch.rows.div_ceil(parts);
        let runs = (0..parts).map(|i| {
            let rows = i * per_part..((i + 1) * per_part).min(batch.rows);
            self.score_rows(batch.clone(), rows)
        });
        let mut scored = Vec::with_capacity(batch.rows);
        for part in futures::future::join_all(runs).await {
            scored.extend(part?);
        }
        Ok(scored)
    }

    /// Score `rows` of `batch` on one session, on the blocking pool.
    async fn score_rows(
        &self,
        batch: Arc<FeatureBatch>,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<Scored>, ScoringError> {
        let _permit = self
            .pool
            .permits()
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let pool = self.pool.clone();
        let (name, max_batch, io) = (self.manifest.name.clone(), self.max_batch, self.io.clone());
        tokio::task::spawn_blocking(move || {
            let result = pool
                .with_session(|session| run_chunks(session, &batch, rows, max_batch, &io))
                .expect("a permit guarantees a session");
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
        let result = self
            .pool
            .with_session(|session| {
                run_chunks(session, batch, 0..batch.rows, self.max_batch, &self.io)
            })
            .expect("no concurrent blocking use");
        result.map_err(|message| ScoringError::Inference {
            model: self.manifest.name.clone(),
            message,
        })
    }
}

/// Largest difference from `golden.json` a model may show on this machine:
/// the outputs were written by ONNX Runtime from Python, and a different
/// build or CPU may round the last bits differently.
const GOLDEN_TOLERANCE: f32 = 1e-4;

/// The model reproduces its `golden.json` (the inputs and outputs recorded
/// when it was exported): the bytes are the model, and this runtime runs it
/// as its exporter did. Unlike the model server's generic check
/// (`registry::model`), which feeds the file's tensors to the session as
/// they are, this one goes through the stream's own path (a
/// [`FeatureBatch`], the chunking and tensor packing of [`run_chunks`], the
/// [`Scored`] rows), so it also proves the engine's side of the contract.
fn check_golden(
    session: &mut Session,
    dir: &Path,
    io: &Io,
    max_batch: usize,
) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Golden {
        inputs: GoldenInputs,
        outputs: GoldenOutputs,
    }
    #[derive(serde::Deserialize)]
    struct GoldenInputs {
        features: Vec<Vec<f32>>,
        history: Vec<Vec<Vec<f32>>>,
        history_mask: Vec<Vec<f32>>,
    }
    #[derive(serde::Deserialize)]
    struct GoldenOutputs {
        score: Vec<f32>,
        history_attention: Vec<Vec<f32>>,
        feature_attention: Vec<Vec<f32>>,
    }
    let text = std::fs::read_to_string(dir.join("golden.json"))
        .map_err(|e| format!("golden.json: {e}"))?;
    let g: Golden = serde_json::from_str(&text).map_err(|e| format!("golden.json: {e}"))?;
    let rows = g.inputs.features.len();
    let batch = FeatureBatch {
        rows,
        features: g.inputs.features.concat(),
        history: g.inputs.history.concat().concat(),
        history_mask: g.inputs.history_mask.concat(),
        history_tx_ids: vec![Vec::new(); rows],
        mcc_context: vec![vec![None]; rows],
    };
    let scored = run_chunks(session, &batch, 0..rows, max_batch, io)?;
    if g.outputs.score.len() != rows {
        return Err(format!(
            "golden.json has {rows} input rows but {} scores",
            g.outputs.score.len()
        ));
    }
    let worst = |got: &[f32], want: &[f32]| {
        if got.len() != want.len() {
            return f32::INFINITY;
        }
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    };
    for (i, s) in scored.iter().enumerate() {
        for (what, diff) in [
            ("score", (s.score - g.outputs.score[i]).abs()),
            (
                "history_attention",
                worst(&s.history_attention, &g.outputs.history_attention[i]),
            ),
            (
                "feature_attention",
                worst(&s.feature_attention, &g.outputs.feature_attention[i]),
            ),
        ] {
            if diff.is_nan() || diff > GOLDEN_TOLERANCE {
                return Err(format!(
                    "golden.json row {i}: {what} differs by {diff} (tolerance {GOLDEN_TOLERANCE}): the model does not reproduce its recorded outputs"
                ));
            }
        }
    }
    Ok(())
}

fn names(specs: &[TensorSpec]) -> Vec<String> {
    specs.iter().map(|t| t.name.clone()).collect()
}

fn check_fraud_contract(m: &Manifest) -> Result<Io, String> {
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
        check_shape(spec, &want)?;
    }
    check_feature_names(m)?;
    Ok(Io {
        inputs: names(&m.inputs),
        history_len: HISTORY_LEN,
        explains: true,
    })
}

/// [`Contract::ScoreOnly`]: the inputs are some of [`FRAUD_INPUTS`] (always
/// `features`; `history` only with `history_mask`), all with the history
/// length the manifest declares, and there is an output `score`.
fn check_score_contract(m: &Manifest) -> Result<Io, String> {
    let inputs = names(&m.inputs);
    let has = |name: &str| inputs.iter().any(|i| i == name);
    if let Some(other) = inputs.iter().find(|i| !FRAUD_INPUTS.contains(&i.as_str())) {
        return Err(format!(
            "input {other:?} is not one the featurizer produces ({FRAUD_INPUTS:?})"
        ));
    }
    let mut unique = inputs.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != inputs.len() || !has("features") || has("history") != has("history_mask") {
        return Err(format!(
            "inputs {inputs:?}: need `features`, and `history` together with `history_mask`"
        ));
    }
    if !m.outputs.iter().any(|o| o.name == "score") {
        return Err(format!("outputs {:?} have no `score`", names(&m.outputs)));
    }
    let declared = match m.extra.get("history").and_then(|h| h.get("length")) {
        None => None,
        Some(v) => match v.as_u64() {
            Some(k) if k > 0 => Some(k as usize),
            _ => return Err(format!("history.length {v} is not a positive integer")),
        },
    };
    let from_shape = m
        .input("history")
        .and_then(|h| h.shape.get(1))
        .and_then(|&k| usize::try_from(k).ok())
        .filter(|&k| k > 0);
    let history_len = match (declared, from_shape, has("history")) {
        (Some(k), _, _) | (None, Some(k), _) => k,
        (None, None, false) => HISTORY_LEN,
        (None, None, true) => {
            return Err(
                "the history length is neither in history.length nor in the input shape".into(),
            )
        }
    };
    for spec in &m.inputs {
        let want = match spec.name.as_str() {
            "features" => vec![-1, NUM_FEATURES as i64],
            "history" => vec![-1, history_len as i64, HISTORY_FIELD_COUNT as i64],
            _ => vec![-1, history_len as i64],
        };
        check_shape(spec, &want)?;
    }
    check_feature_names(m)?;
    Ok(Io {
        inputs,
        history_len,
        explains: false,
    })
}

/// The declared shape matches `want` beyond the batch dimension, as float32.
fn check_shape(spec: &TensorSpec, want: &[i64]) -> Result<(), String> {
    let dims_match =
        spec.shape.len() == want.len() && spec.shape.iter().zip(want).skip(1).all(|(a, b)| a == b);
    if !dims_match || spec.dtype != "float32" {
        return Err(format!(
            "input {} is {} {:?}, the featurizer produces float32 {want:?}",
            spec.name, spec.dtype, spec.shape
        ));
    }
    Ok(())
}

fn check_feature_names(m: &Manifest) -> Result<(), String> {
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

/// Score `rows` of `b`, in chunks of at most `max_batch`.
fn run_chunks(
    session: &mut Session,
    b: &FeatureBatch,
    rows: std::ops::Range<usize>,
    max_batch: usize,
    io: &Io,
) -> Result<Vec<Scored>, String> {
    let k = io.history_len;
    if b.features.len() != b.rows * NUM_FEATURES
        || b.history.len() != b.rows * k * HISTORY_FIELD_COUNT
        || b.history_mask.len() != b.rows * k
    {
        return Err(format!(
            "a batch of {} rows with histories of {} does not fit the model's history length {k}",
            b.rows,
            b.history_len()
        ));
    }
    let mut out = Vec::with_capacity(rows.len());
    let mut start = rows.start;
    while start < rows.end {
        let n = (rows.end - start).min(max_batch);
        let feats = &b.features[start * NUM_FEATURES..(start + n) * NUM_FEATURES];
        let hist =
            &b.history[start * k * HISTORY_FIELD_COUNT..(start + n) * k * HISTORY_FIELD_COUNT];
        let mask = &b.history_mask[start * k..(start + n) * k];
        let e = |e: ort::Error| e.to_string();
        let mut feed = Vec::with_capacity(io.inputs.len());
        for name in &io.inputs {
            let value = match name.as_str() {
                "features" => TensorRef::from_array_view(([n, NUM_FEATURES], feats)),
                "history" => TensorRef::from_array_view(([n, k, HISTORY_FIELD_COUNT], hist)),
                "history_mask" => TensorRef::from_array_view(([n, k], mask)),
                other => return Err(format!("no data for input {other:?}")),
            }
            .map_err(e)?;
            feed.push((Cow::from(name.as_str()), SessionInputValue::from(value)));
        }
        let outputs = session.run(feed).map_err(e)?;
        let (_, score) = outputs["score"].try_extract_tensor::<f32>().map_err(e)?;
        if score.len() != n {
            return Err(format!("score has {} values for {n} rows", score.len()));
        }
        if !io.explains {
            out.extend(score.iter().map(|&score| Scored {
                score,
                history_attention: Vec::new(),
                feature_attention: Vec::new(),
            }));
            start += n;
            continue;
        }
        let (_, hatt) = outputs["history_attention"]
            .try_extract_tensor::<f32>()
            .map_err(e)?;
        let (_, fatt) = outputs["feature_attention"]
            .try_extract_tensor::<f32>()
            .map_err(e)?;
        if hatt.len() != n * k || fatt.len() != n * NUM_FEATURES {
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
                history_attention: hatt[i * k..(i + 1) * k].to_vec(),
                feature_attention: fatt[i * NUM_FEATURES..(i + 1) * NUM_FEATURES].to_vec(),
            });
        }
        start += n;
    }
    Ok(out)
}
