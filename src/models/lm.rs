//! The merchant language model: how surprising a card's new merchant category
//! (MCC) is, given the categories the card used before.
//!
//! [`MccVocab`] implements the model's `vocab.json` (`<pad>`, `<bos>`, `<unk>`,
//! then one token per MCC as a decimal string; unknown and missing MCCs are
//! `<unk>`). [`MerchantLm`] builds the window the manifest's `surprise` spec
//! describes — `[<bos>, the k most recent previous MCC ids, oldest first]`,
//! right-padded to `max_len`, `k ≤ max_len − 1` — and reads
//! `surprise = −log_probs[k, id(mcc)]` in nats. A card's first transaction
//! (`k = 0`) is scored from `<bos>` alone. `surprise_vectors.json`, written by
//! the Python reference at training time, pins the numbers.
//!
//! Every window is padded to the full `max_len`, so a row's value never
//! depends on which other rows share its ONNX Runtime run (the engine stores
//! it, and a replay must store the same bytes). The async entry point waits
//! for a pooled session and runs on tokio's blocking pool; nothing here runs
//! ONNX Runtime on an async worker.

use super::{in_manifest_order, io_index, manifest_str, read_json, ModelError};
use crate::features::{FeatureBatch, MCC_CONTEXT_LEN};
use crate::onnx::manifest::DType;
use crate::registry::{Data, LoadOptions, LoadedModel, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The MCC vocabulary of a merchant language model (`vocab.json`).
#[derive(Debug, Clone)]
pub struct MccVocab {
    ids: HashMap<i32, i64>,
    size: usize,
    pad_id: i64,
    bos_id: i64,
    unk_id: i64,
}

impl MccVocab {
    /// From the parsed `vocab.json` (`tokens`, `pad_id`, `bos_id`, `unk_id`);
    /// the error names every problem.
    pub fn from_json(v: &serde_json::Value) -> Result<MccVocab, String> {
        let mut problems = Vec::new();
        let mut id = |key: &str| match v.get(key).and_then(|x| x.as_i64()) {
            Some(x) => x,
            None => {
                problems.push(format!("needs an integer {key:?}"));
                -1
            }
        };
        let (pad_id, bos_id, unk_id) = (id("pad_id"), id("bos_id"), id("unk_id"));
        let tokens: Vec<&str> = match v.get("tokens").and_then(|x| x.as_array()) {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.as_str().unwrap_or_else(|| {
                        problems.push(format!("tokens[{i}] is not a string"));
                        ""
                    })
                })
                .collect(),
            None => {
                problems.push("needs a list \"tokens\"".into());
                Vec::new()
            }
        };
        let specials = [(pad_id, "<pad>"), (bos_id, "<bos>"), (unk_id, "<unk>")];
        for (id, name) in specials {
            let at = usize::try_from(id)
                .ok()
                .and_then(|i| tokens.get(i))
                .copied();
            if at != Some(name) {
                problems.push(format!("id {id} is not {name} in the tokens"));
            }
        }
        let mut ids = HashMap::with_capacity(tokens.len());
        for (i, token) in tokens.iter().enumerate() {
            if specials.iter().any(|(id, _)| *id == i as i64) {
                continue;
            }
            match token.parse::<i32>() {
                Ok(mcc) if token.bytes().all(|b| b.is_ascii_digit()) => {
                    if ids.insert(mcc, i as i64).is_some() {
                        problems.push(format!("tokens[{i}] {token:?} is listed twice"));
                    }
                }
                _ => problems.push(format!("tokens[{i}] {token:?} is not an MCC")),
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(MccVocab {
            ids,
            size: tokens.len(),
            pad_id,
            bos_id,
            unk_id,
        })
    }

    /// The token of an MCC: its own, or `<unk>` when it is unknown or missing.
    pub fn id(&self, mcc: Option<i32>) -> i64 {
        mcc.and_then(|m| self.ids.get(&m).copied())
            .unwrap_or(self.unk_id)
    }

    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
}

/// A verified merchant language model and its vocabulary.
pub struct MerchantLm {
    model: Arc<LoadedModel>,
    vocab: MccVocab,
    /// T: the window `[<bos>, up to T − 1 previous MCCs]`.
    max_len: usize,
    /// Rows per ONNX Runtime run.
    max_batch: usize,
    /// Positions of `tokens`, `token_mask` in the inputs and of `log_probs`
    /// in the outputs.
    tokens_in: usize,
    mask_in: usize,
    log_probs_out: usize,
}

impl std::fmt::Debug for MerchantLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MerchantLm")
            .field("model", &self.model)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl MerchantLm {
    /// Around a loaded model whose manifest names its `vocab` file and
    /// `max_len`; its IO must be `tokens` (int64), `token_mask` (float32)
    /// `[batch, max_len]` → `log_probs` (float32) `[batch, max_len, vocab]`.
    /// `max_batch` rows go into one ONNX Runtime run.
    pub fn new(model: Arc<LoadedModel>, max_batch: usize) -> Result<MerchantLm, ModelError> {
        let manifest_path = model.dir.join("manifest.json");
        let bad = |m: String| ModelError::spec(&manifest_path, m);
        let file = manifest_str(&model, "vocab")?;
        let vocab_path = model.dir.join(file);
        let vocab = MccVocab::from_json(&read_json(&vocab_path)?)
            .map_err(|m| ModelError::spec(&vocab_path, m))?;
        let extra = &model.manifest.extra;
        let max_len = extra
            .get("max_len")
            .and_then(|v| v.as_u64())
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("needs a positive integer \"max_len\"".into()))?
            as usize;
        let mut problems = Vec::new();
        if let Some(n) = extra.get("vocab_size").and_then(|v| v.as_u64()) {
            if n as usize != vocab.len() {
                problems.push(format!("vocab_size is {n}, {file} has {}", vocab.len()));
            }
        }
        if max_len - 1 > MCC_CONTEXT_LEN {
            problems.push(format!(
                "max_len {max_len} needs {} previous MCCs per row, the featurizer keeps {MCC_CONTEXT_LEN}",
                max_len - 1
            ));
        }
        let tokens_in = io_index(&model, false, "tokens", DType::I64)?;
        let mask_in = io_index(&model, false, "token_mask", DType::F32)?;
        let log_probs_out = io_index(&model, true, "log_probs", DType::F32)?;
        let (t, v) = (max_len as i64, vocab.len() as i64);
        let wants: [(_, &[i64]); 3] = [
            (&model.inputs[tokens_in], &[t]),
            (&model.inputs[mask_in], &[t]),
            (&model.outputs[log_probs_out], &[t, v]),
        ];
        for (spec, dims) in wants {
            let fits = spec.shape.len() == dims.len() + 1
                && spec.shape[1..]
                    .iter()
                    .zip(dims)
                    .all(|(got, want)| [-1, *want].contains(got));
            if !fits {
                problems.push(format!(
                    "{:?} has shape {:?}, expected [batch, {}]",
                    spec.name,
                    spec.shape,
                    dims.iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if model.inputs.len() != 2 {
            problems.push(format!(
                "expected 2 inputs, the model has {}",
                model.inputs.len()
            ));
        }
        if !problems.is_empty() {
            return Err(bad(problems.join("; ")));
        }
        Ok(MerchantLm {
            model,
            vocab,
            max_len,
            max_batch: max_batch.max(1),
            tokens_in,
            mask_in,
            log_probs_out,
        })
    }

    /// Load and verify a model directory (sha256, IO, golden outputs; blocking),
    /// then wrap it.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<MerchantLm, ModelError> {
        let model = LoadedModel::load(dir, opts, None)
            .map_err(|e| ModelError::spec(dir, e.problems.join("; ")))?;
        MerchantLm::new(Arc::new(model), opts.batch.max_batch)
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    pub fn vocab(&self) -> &MccVocab {
        &self.vocab
    }

    /// T, the window length; at most T − 1 previous MCCs are read.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The window for a transaction whose card used `past` before (oldest
    /// first; only the last T − 1 are read): `tokens` and `token_mask`, T
    /// long, and k, the position that predicts the transaction's own MCC.
    pub fn window(&self, past: &[Option<i32>]) -> (Vec<i64>, Vec<f32>, usize) {
        let past = &past[past.len().saturating_sub(self.max_len - 1)..];
        let mut tokens = Vec::with_capacity(self.max_len);
        tokens.push(self.vocab.bos_id);
        tokens.extend(past.iter().map(|&m| self.vocab.id(m)));
        let k = past.len();
        let mut mask = vec![1.0f32; k + 1];
        tokens.resize(self.max_len, self.vocab.pad_id);
        mask.resize(self.max_len, 0.0);
        (tokens, mask, k)
    }

    /// The surprise of each row's own MCC after its card's past MCCs, in
    /// nats, on the calling thread (a free session is needed right away).
    pub fn surprise_blocking<'a>(
        &self,
        rows: impl ExactSizeIterator<Item = (Option<i32>, &'a [Option<i32>])>,
    ) -> Result<Vec<f32>, ModelError> {
        let (t, v) = (self.max_len, self.vocab.len());
        let n = rows.len();
        let mut out = Vec::with_capacity(n);
        let mut rows = rows.peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(self.max_batch).collect();
            let b = chunk.len();
            let mut tokens = Vec::with_capacity(b * t);
            let mut mask = Vec::with_capacity(b * t);
            let mut wanted = Vec::with_capacity(b);
            for (mcc, past) in chunk {
                let (tk, m, k) = self.window(past);
                tokens.extend(tk);
                mask.extend(m);
                wanted.push((k, self.vocab.id(mcc) as usize));
            }
            let inputs = in_manifest_order(
                &self.model,
                vec![
                    (
                        self.tokens_in,
                        Tensor::new(vec![b, t], Data::I64(tokens)).expect("rows of max_len"),
                    ),
                    (
                        self.mask_in,
                        Tensor::new(vec![b, t], Data::F32(mask)).expect("rows of max_len"),
                    ),
                ],
            );
            let outputs = self.model.infer_blocking(&inputs)?;
            let log_probs = match outputs.get(self.log_probs_out) {
                Some(Tensor {
                    shape,
                    data: Data::F32(lp),
                }) if shape[..] == [b, t, v] => lp,
                other => {
                    return Err(ModelError::output(
                        &self.model,
                        format!(
                            "log_probs is {:?}, expected float32 [{b}, {t}, {v}]",
                            other.map(|o| &o.shape)
                        ),
                    ))
                }
            };
            for (r, (k, id)) in wanted.into_iter().enumerate() {
                let s = -log_probs[(r * t + k) * v + id];
                if !s.is_finite() {
                    return Err(ModelError::output(
                        &self.model,
                        format!("log_probs[{k}, {id}] is {}", -s),
                    ));
                }
                // −log p ≥ 0; a rounding error of log_softmax never makes it negative (or −0).
                out.push(if s > 0.0 { s } else { 0.0 });
            }
        }
        Ok(out)
    }

    /// The surprise of every row of a featurized batch
    /// ([`FeatureBatch::mcc_context`]), in row order: waits for a free
    /// session, then runs on the blocking pool in runs of `max_batch` rows.
    pub async fn surprise(
        self: &Arc<Self>,
        batch: Arc<FeatureBatch>,
    ) -> Result<Vec<f32>, ModelError> {
        let permit = self
            .model
            .engine
            .acquire()
            .await
            .ok_or_else(|| ModelError::output(&self.model, "the session pool is closed"))?;
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            me.surprise_blocking((0..batch.rows).map(|i| batch.mcc_row(i)))
        })
        .await
        .map_err(|e| ModelError::output(&self.model, format!("surprise task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vocab() -> MccVocab {
        MccVocab::from_json(&json!({
            "tokens": ["<pad>", "<bos>", "<unk>", "5411", "5812"],
            "pad_id": 0, "bos_id": 1, "unk_id": 2
        }))
        .unwrap()
    }

    #[test]
    fn unknown_and_missing_mccs_are_unk() {
        let v = vocab();
        assert_eq!(v.id(Some(5411)), 3);
        assert_eq!(v.id(Some(5812)), 4);
        assert_eq!(v.id(Some(7011)), 2);
        assert_eq!(v.id(None), 2);
        assert_eq!(v.len(), 5);
    }

    #[test]
    fn a_broken_vocab_names_every_problem() {
        let e = MccVocab::from_json(&json!({
            "tokens": ["<pad>", "<unk>", "<bos>", "54x1", "5411", "5411"],
            "pad_id": 0, "bos_id": 1
        }))
        .unwrap_err();
        for want in [
            "\"unk_id\"",
            "id 1 is not <bos>",
            "\"54x1\" is not an MCC",
            "listed twice",
        ] {
            assert!(e.contains(want), "{want:?} missing in {e}");
        }
    }
}
