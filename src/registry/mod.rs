//! The model registry: every directory under a models root that has a
//! `manifest.json`, loaded, verified and served by its manifest name.
//!
//! All models share the single ONNX Runtime environment of [`crate::onnx`].
//! A background poller ([`Registry::watch`]) compares each directory's
//! fingerprint (the manifest's sha256 plus the size and mtime of its files);
//! a changed or new directory is loaded and verified off the request path and
//! swapped in atomically, so in-flight requests finish on the version they
//! started with. A version that fails to load leaves the previous one serving;
//! a removed directory unloads its model. Never loads on an async worker.

pub mod batch;
pub mod engine;
pub mod model;
pub mod tensor;

pub use batch::BatchOptions;
pub use model::{fits, InferError, LoadError, LoadOptions, LoadedModel};
pub use tensor::{Data, Tensor};

use crate::metrics::ServeMetrics;
use crate::onnx::manifest::TensorSpec;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The files whose change means "a new version": compared by size and mtime,
/// plus the sha256 the manifest declares.
const WATCHED_FILES: [&str; 3] = ["manifest.json", "model.onnx", "golden.json"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    sha256: Option<String>,
    files: Vec<Option<(u64, SystemTime)>>,
}

fn fingerprint(dir: &Path) -> Fingerprint {
    let sha256 = std::fs::read(dir.join("manifest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("sha256").and_then(|s| s.as_str()).map(str::to_owned));
    let files = WATCHED_FILES
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(dir.join(f)).ok()?;
            Some((meta.len(), meta.modified().ok()?))
        })
        .collect();
    Fingerprint { sha256, files }
}

/// The model directories directly under `root`, by directory name.
pub fn model_dirs(root: &Path) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root)? {
        let path = entry?.path();
        if path.is_dir() && path.join("manifest.json").is_file() {
            if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
                out.insert(name.to_owned(), path);
            }
        }
    }
    Ok(out)
}

/// Bookkeeping for one directory, touched only by scans.
#[derive(Debug, Default)]
struct DirState {
    /// What the previous scan saw (`None`: the directory was missing then).
    seen: Option<Fingerprint>,
    /// What the last load attempt read, successful or not.
    tried: Option<Fingerprint>,
    /// The model name served from this directory.
    serving: Option<String>,
    /// Why the last load attempt failed (cleared by a successful one).
    error: Option<String>,
}

/// One model directory as `riskstream models list` and the repository index show it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub dir: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub task: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// `READY` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is unavailable, or why its newest files are not the ones served.
    pub reason: Option<String>,
}

/// What one scan changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScanReport {
    /// Directories loaded or swapped in.
    pub loaded: Vec<String>,
    /// Directories whose new files failed to load (any old version stays).
    pub failed: Vec<String>,
    /// Directories removed, with their models.
    pub unloaded: Vec<String>,
}

pub struct Registry {
    root: PathBuf,
    opts: LoadOptions,
    metrics: Arc<ServeMetrics>,
    models: RwLock<HashMap<String, Arc<LoadedModel>>>,
    dirs: Mutex<BTreeMap<String, DirState>>,
    /// One scan at a time (the poller, or a test calling [`Registry::scan`]).
    scanning: Mutex<()>,
    scanned: AtomicBool,
}

impl Registry {
    pub fn new(root: &Path, opts: LoadOptions, metrics: Arc<ServeMetrics>) -> Registry {
        Registry {
            root: root.to_owned(),
            opts,
            metrics,
            models: RwLock::new(HashMap::new()),
            dirs: Mutex::new(BTreeMap::new()),
            scanning: Mutex::new(()),
            scanned: AtomicBool::new(false),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The version being served under `name`; the caller keeps it through a swap.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The first scan is done and at least one model serves.
    pub fn ready(&self) -> bool {
        self.scanned.load(Ordering::Acquire) && !self.names().is_empty()
    }

    /// Every model directory seen, served or not, by directory name.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        dirs.iter()
            .filter(|(_, st)| st.seen.is_some() || st.serving.is_some())
            .map(
                |(dir, st)| match st.serving.as_deref().and_then(|n| self.get(n)) {
                    Some(m) => ModelStatus {
                        dir: dir.clone(),
                        name: Some(m.name().to_owned()),
                        version: Some(m.version().to_owned()),
                        task: Some(m.manifest.task.clone()),
                        inputs: m.inputs.clone(),
                        outputs: m.outputs.clone(),
                        state: "READY",
                        reason: st
                            .error
                            .as_ref()
                            .map(|e| format!("newer files failed to load, still serving: {e}")),
                    },
                    None => {
                        let manifest = crate::onnx::Manifest::read(&self.root.join(dir)).ok();
                        ModelStatus {
                            dir: dir.clone(),
                            name: manifest.as_ref().map(|m| m.name.clone()),
                            version: manifest.as_ref().map(|m| m.version.clone()),
                            task: manifest.as_ref().map(|m| m.task.clone()),
                            inputs: manifest
                                .as_ref()
                                .map(|m| m.inputs.clone())
                                .unwrap_or_default(),
                            outputs: manifest
                                .as_ref()
                                .map(|m| m.outputs.clone())
                                .unwrap_or_default(),
                            state: "UNAVAILABLE",
                            reason: Some(
                                st.error.clone().unwrap_or_else(|| "not loaded yet".into()),
                            ),
                        }
                    }
                },
            )
            .collect()
    }

    /// Look at the models root once and apply what changed. Blocking: it
    /// loads models. With `settle`, a changed directory is loaded only once
    /// two consecutive scans saw the same files (so a copy in progress is not
    /// mistaken for a broken version), and a missing one is unloaded only
    /// when the next scan still misses it.
    pub fn scan(&self, settle: bool) -> ScanReport {
        let _one_at_a_time = self.scanning.lock().unwrap_or_else(|e| e.into_inner());
        let mut report = ScanReport::default();
        let found = match model_dirs(&self.root) {
            Ok(found) => found,
            Err(e) => {
                // An unreadable root is more likely a hiccup than "remove every model".
                tracing::error!(root = %self.root.display(), error = %e, "cannot read the models root");
                self.scanned.store(true, Ordering::Release);
                return report;
            }
        };
        let mut to_load = Vec::new();
        let mut to_unload = Vec::new();
        {
            let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
            for (name, path) in &found {
                let fp = fingerprint(path);
                let st = dirs.entry(name.clone()).or_default();
                let previous = st.seen.replace(fp.clone());
                if st.tried.as_ref() == Some(&fp) || (settle && previous.as_ref() != Some(&fp)) {
                    continue;
                }
                to_load.push((name.clone(), path.clone(), fp));
            }
            for (name, st) in dirs.iter_mut() {
                if found.contains_key(name) {
                    continue;
                }
                if settle && st.seen.take().is_some() {
                    continue;
                }
                to_unload.push(name.clone());
            }
        }
        let loads: Vec<_> = to_load
            .into_iter()
            .map(|(name, path, fp)| {
                let result = LoadedModel::load(&path, &self.opts, Some(self.metrics.clone()));
                (name, fp, result)
            })
            .collect();
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        for dir in to_unload {
            if let Some(st) = dirs.remove(&dir) {
                if let Some(model) = st.serving.and_then(|n| models.remove(&n)) {
                    tracing::info!(
                        dir,
                        model = model.name(),
                        version = model.version(),
                        "model directory removed: unloaded"
                    );
                }
            }
            report.unloaded.push(dir);
        }
        for (dir, fp, result) in loads {
            let conflict = result.as_ref().ok().and_then(|m| {
                dirs.iter()
                    .find(|(d, st)| **d != dir && st.serving.as_deref() == Some(m.name()))
                    .map(|(d, _)| d.clone())
            });
            let result = match (result, conflict) {
                (Ok(m), Some(other)) => Err(LoadError {
                    dir: self.root.join(&dir),
                    model: Some(m.name().to_owned()),
                    problems: vec![format!(
                        "model name {:?} is already served from directory {other:?}",
                        m.name()
                    )],
                }),
                (result, _) => result,
            };
            let st = dirs.entry(dir.clone()).or_default();
            st.tried = Some(fp);
            match result {
                Ok(model) => {
                    let model = Arc::new(model);
                    let name = model.name().to_owned();
                    let old = models.insert(name.clone(), model.clone());
                    if let Some(renamed) = st.serving.replace(name.clone()).filter(|n| *n != name) {
                        models.remove(&renamed);
                    }
                    st.error = None;
                    self.metrics.model_reloads.with_label_values(&[&name]).inc();
                    match old {
                        Some(old) => tracing::info!(
                            model = %name,
                            from = old.version(),
                            to = model.version(),
                            "model swapped in"
                        ),
                        None => tracing::info!(
                            model = %name,
                            version = model.version(),
                            dir,
                            batching = model.batching(),
                            "model loaded"
                        ),
                    }
                    report.loaded.push(dir);
                }
                Err(e) => {
                    let label = e.model.clone().unwrap_or_else(|| dir.clone());
                    self.metrics
                        .model_reload_failures
                        .with_label_values(&[&label])
                        .inc();
                    tracing::error!(
                        dir,
                        error = %e,
                        still_serving = st.serving.as_deref().unwrap_or("nothing"),
                        "model failed to load; the previous version (if any) keeps serving"
                    );
                    st.error = Some(e.problems.join("; "));
                    report.failed.push(dir);
                }
            }
        }
        self.metrics.models_loaded.set(models.len() as i64);
        self.scanned.store(true, Ordering::Release);
        report
    }

    /// Poll the models root every `every` until `shutdown`; scans run on the
    /// blocking pool.
    pub async fn watch(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let me = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || me.scan(true)).await {
                tracing::error!(error = %e, "model scan failed");
            }
        }
    }
}

/// Load every model under `dir` (or `dir` itself when it holds a
/// `manifest.json`), for `riskstream models verify`. Blocking.
pub fn verify(dir: &Path) -> std::io::Result<Vec<Result<LoadedModel, LoadError>>> {
    let dirs: Vec<PathBuf> = if dir.join("manifest.json").is_file() {
        vec![dir.to_owned()]
    } else {
        model_dirs(dir)?.into_values().collect()
    };
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    Ok(dirs
        .iter()
        .map(|d| {
            let model = LoadedModel::load(d, &LoadOptions::default(), None)?;
            if let Some(other) = seen.insert(model.name().to_owned(), d.clone()) {
                return Err(LoadError {
                    dir: d.clone(),
                    model: Some(model.name().to_owned()),
                    problems: vec![format!(
                        "model name {:?} is also declared by {}",
                        model.name(),
                        other.display()
                    )],
                });
            }
            Ok(model)
        })
        .collect())
}

/// `name float32[-1,20]` for listings.
pub fn describe(spec: &TensorSpec) -> String {
    let dims: Vec<String> = spec.shape.iter().map(|d| d.to_string()).collect();
    format!("{} {}[{}]", spec.name, spec.dtype, dims.join(","))
}

#[cfg(test)]
mod tests;
