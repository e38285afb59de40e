//! The ONNX Runtime core every model runs on — the stream's fraud scorer
//! ([`crate::scoring`]) and the model server's registry ([`crate::registry`])
//! alike: the process's one environment, the pool of sessions a model is run
//! with, and the manifest a model directory carries (its tensors, their names,
//! types and shapes). Nothing here knows what a model is for.

pub mod manifest;

pub use manifest::{DType, Manifest, ManifestError, TensorSpec};
use ort::session::{builder::GraphOptimizationLevel, Session};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::Semaphore;

/// The ONNX Runtime library cannot be found or loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "ONNX Runtime library: {0} (set ORT_DYLIB_PATH to libonnxruntime.so, e.g. run `make setup`)"
)]
pub struct RuntimeError(pub String);

/// Where the ONNX Runtime shared library is: `ORT_DYLIB_PATH`, as `make setup` installs it.
pub fn runtime_library() -> Result<PathBuf, RuntimeError> {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .ok_or_else(|| RuntimeError("ORT_DYLIB_PATH is not set".into()))?;
    if !path.is_file() {
        return Err(RuntimeError(format!("{} does not exist", path.display())));
    }
    Ok(path)
}

/// ONNX Runtime allows one environment per process; every model shares it.
pub(crate) fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let lib = runtime_library().map_err(|e| e.0)?;
        ort::init_from(&lib)
            .map_err(|e| format!("cannot load {}: {e}", lib.display()))?
            .with_name("riskstream")
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| RuntimeError(e.clone()))
}

/// ONNX Runtime's graph optimisers every session is built without, by name.
///
/// `SkipLayerNormFusion` folds an `Add` chain into `LayerNormalization` as
/// one `SkipLayerNormalization` node. On the fraud model that node is the
/// feature tokens' norm, whose skip input is a broadcast bias, and it ran at
/// 3.9 µs a row where the unfused `Add`s and `LayerNormalization` take about
/// half that: the whole model 17.9 against 20.3 µs a row at 512 rows (17.4
/// against 21.6 at 48), outputs within 4e-7 (2026-12-03, one thread, this
/// level, medians of 9 alternated runs; docs/DECISIONS.md). Of the other
/// committed models only its int8 variant (the same graph) has a node it
/// fuses.
pub const DISABLED_OPTIMIZERS: &[&str] = &["SkipLayerNormFusion"];

/// A session for one model's `bytes` in `env` (the process's [`environment`]),
/// as every model is run here: all graph optimisations but
/// [`DISABLED_OPTIMIZERS`], `intra_threads` threads inside one run and none
/// across the graph's branches.
pub(crate) fn open_session(
    env: &ort::environment::Environment,
    bytes: &[u8],
    intra_threads: usize,
) -> Result<Session, String> {
    Session::builder(env)
        .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::Level3)?))
        .and_then(|b| {
            Ok(b.with_config_entry(
                "optimization.disable_specified_optimizers",
                DISABLED_OPTIMIZERS.join(","),
            )?)
        })
        .and_then(|b| Ok(b.with_intra_threads(intra_threads.max(1))?))
        .and_then(|b| Ok(b.with_inter_threads(1)?))
        .and_then(|mut b| b.commit_from_memory(bytes))
        .map_err(|e| e.to_string())
}

/// One model's sessions, handed out one per run: a caller holds a permit
/// while it holds a session, so [`SessionPool::take`] finds one then.
pub(crate) struct SessionPool {
    sessions: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
}

impl SessionPool {
    pub(crate) fn new(sessions: Vec<Session>) -> SessionPool {
        SessionPool {
            permits: Arc::new(Semaphore::new(sessions.len())),
            sessions: Mutex::new(sessions),
        }
    }

    /// One permit per session.
    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Run `f` with a free session on the calling (blocking) thread and give
    /// the session back; `None` when none is free (there is one while the
    /// caller holds a permit). The pool's lock is not held during `f`.
    pub(crate) fn with_session<R>(&self, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let mut session = self.lock().pop()?;
        let result = f(&mut session);
        self.lock().push(session);
        Some(result)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}
