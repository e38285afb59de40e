//! The model manifest: what a model directory promises about its `model.onnx`.
//!
//! The engine trusts nothing it has not checked: the file's sha256 must match
//! the manifest, and the ONNX graph's input and output names must be the ones
//! the manifest (and so the featurizer) expects. A mismatch fails at startup.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub task: String,
    pub sha256: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub feature_names: Vec<String>,
    #[serde(default)]
    pub default_thresholds: Option<serde_json::Value>,
    /// Everything else (metrics, training data, ...) is kept for `model_versions`.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid manifest: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: sha256 is {actual}, manifest says {expected}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| ManifestError::Json { path, source })
    }

    /// Check `model.onnx` against the manifest's sha256; returns the file's bytes.
    pub fn verify_file(&self, dir: &Path) -> Result<Vec<u8>, ManifestError> {
        let path = dir.join("model.onnx");
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if !actual.eq_ignore_ascii_case(&self.sha256) {
            return Err(ManifestError::Checksum {
                path,
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }
}

/// The element types a generic model may use in its inputs and outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I64,
}

impl DType {
    /// The manifest's spelling: `float32` or `int64`.
    pub fn parse(manifest_dtype: &str) -> Option<DType> {
        match manifest_dtype {
            "float32" => Some(DType::F32),
            "int64" => Some(DType::I64),
            _ => None,
        }
    }

    pub fn manifest_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I64 => "int64",
        }
    }

    /// The Open Inference Protocol (KServe v2 / Triton) datatype.
    pub fn v2_name(self) -> &'static str {
        match self {
            DType::F32 => "FP32",
            DType::I64 => "INT64",
        }
    }

    pub fn from_v2(name: &str) -> Option<DType> {
        match name {
            "FP32" => Some(DType::F32),
            "INT64" => Some(DType::I64),
            _ => None,
        }
    }

    pub fn from_ort(ty: ort::value::TensorElementType) -> Option<DType> {
        match ty {
            ort::value::TensorElementType::Float32 => Some(DType::F32),
            ort::value::TensorElementType::Int64 => Some(DType::I64),
            _ => None,
        }
    }

    /// Bytes per element (both types are 8 or 4 bytes, little-endian on the wire).
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

impl TensorSpec {
    /// The element type, if the manifest names one the runtime serves.
    pub fn dtype(&self) -> Option<DType> {
        DType::parse(&self.dtype)
    }
}

impl Manifest {
    /// Everything structurally wrong with the manifest itself, each naming its
    /// field: empty names, unknown dtypes, impossible dims, duplicate tensors.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (field, value) in [("name", &self.name), ("version", &self.version)] {
            if value.trim().is_empty() {
                out.push(format!("{field} is empty"));
            }
        }
        if self.name.contains('/') {
            out.push(format!("name {:?} contains '/'", self.name));
        }
        for (kind, specs) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            if specs.is_empty() {
                out.push(format!("{kind} is empty"));
            }
            for (i, spec) in specs.iter().enumerate() {
                if spec.name.is_empty() {
                    out.push(format!("{kind}[{i}].name is empty"));
                }
                if specs[..i].iter().any(|s| s.name == spec.name) {
                    out.push(format!(
                        "{kind}[{i}].name {:?} is declared twice",
                        spec.name
                    ));
                }
                if spec.dtype().is_none() {
                    out.push(format!(
                        "{kind}[{i}] {:?}: dtype {:?} is not float32 or int64",
                        spec.name, spec.dtype
                    ));
                }
                if let Some(d) = spec.shape.iter().find(|&&d| d < -1 || d == 0) {
                    out.push(format!(
                        "{kind}[{i}] {:?}: shape {:?} has dim {d} (use -1 for dynamic)",
                        spec.name, spec.shape
                    ));
                }
            }
        }
        out
    }

    /// Compare the ONNX graph's inputs and outputs with the manifest: the same
    /// names, element types and ranks, and no fixed dim that disagrees. Returns
    /// every mismatch, or the manifest's specs tightened with the graph's
    /// fixed dims where the manifest says -1 (so requests are checked against
    /// what the graph really accepts).
    pub fn check_session_io(
        &self,
        session: &ort::session::Session,
    ) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>), Vec<String>> {
        let mut problems = Vec::new();
        let inputs = compare_io("input", &self.inputs, session.inputs(), &mut problems);
        let outputs = compare_io("output", &self.outputs, session.outputs(), &mut problems);
        if problems.is_empty() {
            Ok((inputs, outputs))
        } else {
            Err(problems)
        }
    }
}

fn compare_io(
    kind: &str,
    declared: &[TensorSpec],
    graph: &[ort::value::Outlet],
    problems: &mut Vec<String>,
) -> Vec<TensorSpec> {
    let graph_names: Vec<&str> = graph.iter().map(|o| o.name()).collect();
    for outlet in graph {
        if !declared.iter().any(|d| d.name == outlet.name()) {
            problems.push(format!(
                "model.onnx has {kind} {:?} that the manifest does not declare",
                outlet.name()
            ));
        }
    }
    let mut tightened = Vec::with_capacity(declared.len());
    for spec in declared {
        let Some(outlet) = graph.iter().find(|o| o.name() == spec.name) else {
            problems.push(format!(
                "model.onnx has no {kind} {:?} (it has {graph_names:?})",
                spec.name
            ));
            continue;
        };
        let actual = outlet.dtype().tensor_type().and_then(DType::from_ort);
        if actual.is_none() || actual != spec.dtype() {
            problems.push(format!(
                "{kind} {:?}: model.onnx has {}, the manifest says {}",
                spec.name,
                outlet.dtype(),
                spec.dtype
            ));
            continue;
        }
        let Some(shape) = outlet.dtype().tensor_shape() else {
            continue;
        };
        if shape.len() != spec.shape.len() {
            problems.push(format!(
                "{kind} {:?}: model.onnx has rank {} {:?}, the manifest says rank {} {:?}",
                spec.name,
                shape.len(),
                &shape[..],
                spec.shape.len(),
                spec.shape
            ));
            continue;
        }
        let mut spec = spec.clone();
        for (i, (&g, m)) in shape.iter().zip(spec.shape.iter_mut()).enumerate() {
            if g > 0 && *m > 0 && g != *m {
                problems.push(format!(
                    "{kind} {:?}: dim {i} is {g} in model.onnx, {m} in the manifest",
                    spec.name
                ));
            } else if g > 0 && *m == -1 {
                *m = g;
            }
        }
        tightened.push(spec);
    }
    tightened
}
