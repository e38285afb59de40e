//! Task-level use of registry models whose inputs are not plain tensors:
//! [`text`] turns card-statement descriptors into token ids (the tokenizer the
//! merchant-descriptor model was trained with) and reads its labels and
//! attention back; [`seq2seq`] decodes with the cheque-words encoder-decoder
//! pair (greedy and beam search, with the cross-attention alignment as the
//! explanation); [`lm`] scores how surprising a card's new merchant category
//! is under the merchant language model (the engine's `mcc_surprise`).
//!
//! Everything a model needs beyond its graph (vocabularies, labels, decoding
//! limits) is read from the files its manifest names, never hard-coded here;
//! the algorithms follow the specs written beside those files. Inference goes
//! through [`crate::registry::LoadedModel`]: the async entry points wait for a
//! pooled session and run ONNX Runtime on the blocking pool, never on an async
//! worker.

pub mod lm;
pub mod seq2seq;
pub mod text;

use crate::registry::{InferError, LoadedModel, Tensor};
use std::path::{Path, PathBuf};

/// Why a task helper cannot be built or cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A manifest, vocabulary or tokenizer file is missing, malformed or
    /// disagrees with the model it belongs to.
    #[error("{}: {message}", path.display())]
    Spec { path: PathBuf, message: String },
    /// The input cannot be encoded for this model (e.g. no source tokens).
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Infer(#[from] InferError),
    /// The model answered with outputs its manifest does not promise.
    #[error("model {model}: {message}")]
    Output { model: String, message: String },
}

impl ModelError {
    fn spec(path: &Path, message: impl Into<String>) -> ModelError {
        ModelError::Spec {
            path: path.to_owned(),
            message: message.into(),
        }
    }

    fn output(model: &LoadedModel, message: impl Into<String>) -> ModelError {
        ModelError::Output {
            model: model.name().to_owned(),
            message: message.into(),
        }
    }
}

/// Read and parse a JSON file.
fn read_json(path: &Path) -> Result<serde_json::Value, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::spec(path, e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::spec(path, format!("not JSON: {e}")))
}

/// A string field of the manifest's extra keys, e.g. `"source_vocab"`.
fn manifest_str<'a>(model: &'a LoadedModel, key: &str) -> Result<&'a str, ModelError> {
    model
        .manifest
        .extra
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| {
            ModelError::spec(
                &model.dir.join("manifest.json"),
                format!("needs a string {key:?}"),
            )
        })
}

/// The position of the input or output `name` in manifest order (the order
/// [`LoadedModel::infer`] takes and returns), checking its dtype.
fn io_index(
    model: &LoadedModel,
    outputs: bool,
    name: &str,
    dtype: crate::onnx::manifest::DType,
) -> Result<usize, ModelError> {
    let specs = if outputs {
        &model.outputs
    } else {
        &model.inputs
    };
    let kind = if outputs { "output" } else { "input" };
    let manifest = model.dir.join("manifest.json");
    let i = specs
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| ModelError::spec(&manifest, format!("no {kind} {name:?}")))?;
    if specs[i].dtype() != Some(dtype) {
        return Err(ModelError::spec(
            &manifest,
            format!(
                "{kind} {name:?} is {}, expected {}",
                specs[i].dtype,
                dtype.manifest_name()
            ),
        ));
    }
    Ok(i)
}

/// Put named tensors into the manifest's input order.
fn in_manifest_order(model: &LoadedModel, mut named: Vec<(usize, Tensor)>) -> Vec<Tensor> {
    debug_assert_eq!(named.len(), model.inputs.len());
    named.sort_by_key(|(i, _)| *i);
    named.into_iter().map(|(_, t)| t).collect()
}
