//! Encoder-decoder decoding for the cheque-words pair: written amount →
//! digits, with the cross-attention of every output character over the
//! source words as the explanation.
//!
//! The source tokenizer follows the encoder manifest's `source_tokenizer`
//! (vocabulary from its `source_vocab` file); greedy and beam search follow
//! the decoder manifest's `decoding` spec, the same text as
//! `decode_vectors.json` and `training/zoo/cheque_decode.py`: at most
//! `max_steps` decoder runs on the whole prefix (no KV cache), `<pad>` and
//! `<bos>` never chosen, ties to the lowest id (greedy) or to the lower
//! hypothesis then the lower token (beam), scores summed in `f64`, finished
//! hypotheses ranked by score / generated tokens. The decoder is run with the
//! same batch shapes as the reference (one row for greedy, every alive
//! hypothesis at once for beam) so the float results are the reference's.
//!
//! The search itself ([`greedy`], [`beam`]) only sees a step function, so it
//! is tested without ONNX Runtime. [`Translator::translate`] holds a pooled
//! session of each model while it runs and does all of its ONNX Runtime work
//! on the blocking pool, never on an async worker.

use super::{in_manifest_order, io_index, manifest_str, read_json, ModelError};
use crate::onnx::manifest::DType;
use crate::registry::{Data, LoadedModel, Registry, Tensor};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The source side: `source_vocab.json` and the tokenizer the encoder
/// manifest describes.
#[derive(Debug, Clone)]
pub struct SourceVocab {
    index: HashMap<String, i64>,
    unk_id: i64,
}

impl SourceVocab {
    /// Read `{"tokens": [...], "pad_id": 0, "unk_id": 1}`.
    pub fn from_file(path: &Path) -> Result<SourceVocab, ModelError> {
        let v = read_json(path)?;
        let tokens = string_list(&v, "tokens").map_err(|m| ModelError::spec(path, m))?;
        let pad_id = v.get("pad_id").and_then(|x| x.as_i64());
        let unk_id = v.get("unk_id").and_then(|x| x.as_i64());
        let (Some(pad_id), Some(unk_id)) = (pad_id, unk_id) else {
            return Err(ModelError::spec(
                path,
                "needs integers \"pad_id\" and \"unk_id\"",
            ));
        };
        if [pad_id, unk_id]
            .iter()
            .any(|&i| i < 0 || i as usize >= tokens.len())
        {
            return Err(ModelError::spec(
                path,
                "pad_id / unk_id out of the vocabulary",
            ));
        }
        let mut index = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if index.insert(t.clone(), i as i64).is_some() {
                return Err(ModelError::spec(path, format!("token {t:?} repeats")));
            }
        }
        Ok(SourceVocab { index, unk_id })
    }

    /// The source tokens of `text` and their ids (no padding: one row).
    pub fn encode(&self, text: &str) -> (Vec<String>, Vec<i64>) {
        let tokens = source_tokens(text);
        let ids = tokens
            .iter()
            .map(|t| self.index.get(t).copied().unwrap_or(self.unk_id))
            .collect();
        (tokens, ids)
    }
}

/// Lowercase `A`–`Z` only, split on spaces and hyphens (no empty pieces); a
/// piece made only of `[a-z]` is one token, any other piece is split into its
/// characters (Unicode scalar values, as Python iterates a `str`).
pub fn source_tokens(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    for piece in lower.split([' ', '-']).filter(|p| !p.is_empty()) {
        if piece.bytes().all(|b| b.is_ascii_lowercase()) {
            out.push(piece.to_owned());
        } else {
            out.extend(piece.chars().map(String::from));
        }
    }
    out
}

/// The target side: `target_vocab.json`.
#[derive(Debug, Clone)]
pub struct TargetVocab {
    tokens: Vec<String>,
    pub pad_id: i64,
    pub bos_id: i64,
    pub eos_id: i64,
}

impl TargetVocab {
    /// Read `{"tokens": [...], "pad_id", "bos_id", "eos_id"}`.
    pub fn from_file(path: &Path) -> Result<TargetVocab, ModelError> {
        let v = read_json(path)?;
        let tokens = string_list(&v, "tokens").map_err(|m| ModelError::spec(path, m))?;
        let id = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_i64())
                .filter(|&i| i >= 0 && (i as usize) < tokens.len())
                .ok_or_else(|| {
                    ModelError::spec(path, format!("needs {k:?}, an id in the vocabulary"))
                })
        };
        Ok(TargetVocab {
            pad_id: id("pad_id")?,
            bos_id: id("bos_id")?,
            eos_id: id("eos_id")?,
            tokens,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The output string of generated tokens: their characters up to the
    /// first `<eos>`.
    pub fn to_text(&self, generated: &[i64]) -> String {
        generated
            .iter()
            .take_while(|&&t| t != self.eos_id)
            .map(|&t| self.tokens[t as usize].as_str())
            .collect()
    }

    /// Tokens a search may choose: all but `<pad>` and `<bos>`.
    fn choosable(&self, t: usize) -> bool {
        t as i64 != self.pad_id && t as i64 != self.bos_id
    }
}

fn string_list(v: &serde_json::Value, key: &str) -> Result<Vec<String>, String> {
    v.get(key)
        .and_then(|x| x.as_array())
        .and_then(|items| {
            items
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .ok_or_else(|| format!("needs a list of strings {key:?}"))
}

/// The decoder's last position for one prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// Log-probabilities of the next token, one per target token.
    pub log_probs: Vec<f32>,
    /// Cross-attention of that position over the source tokens.
    pub attention: Vec<f32>,
}

/// A decoded sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated tokens (without `<bos>`; ends with `<eos>` when finished).
    pub tokens: Vec<i64>,
    /// Sum of the chosen tokens' log-probs (float64).
    pub score: f64,
    /// `score` divided by the number of generated tokens.
    pub normalised: f64,
    /// One cross-attention row per generated token.
    pub attention: Vec<Vec<f32>>,
}

impl Hypothesis {
    fn start() -> Hypothesis {
        Hypothesis {
            tokens: Vec::new(),
            score: 0.0,
            normalised: 0.0,
            attention: Vec::new(),
        }
    }

    fn extend(&self, t: usize, logp: f32, attention: &[f32]) -> Hypothesis {
        let mut h = self.clone();
        h.tokens.push(t as i64);
        h.score += f64::from(logp);
        h.attention.push(attention.to_vec());
        h
    }

    fn normalise(mut self) -> Hypothesis {
        self.normalised = self.score / self.tokens.len().max(1) as f64;
        self
    }
}

fn prefix(bos: i64, h: &Hypothesis) -> Vec<i64> {
    std::iter::once(bos)
        .chain(h.tokens.iter().copied())
        .collect()
}

/// Greedy search: run `step` on the one prefix, append the most likely
/// choosable token (lowest id on ties), stop after `<eos>` or `max_steps`.
pub fn greedy<E>(
    vocab: &TargetVocab,
    max_steps: usize,
    mut step: impl FnMut(&[Vec<i64>]) -> Result<Vec<StepOutput>, E>,
) -> Result<Hypothesis, E> {
    let mut h = Hypothesis::start();
    for _ in 0..max_steps {
        let out = step(&[prefix(vocab.bos_id, &h)])?;
        let lp = &out[0].log_probs;
        let best = (0..lp.len())
            .filter(|&t| vocab.choosable(t))
            .fold(None, |b: Option<usize>, t| match b {
                Some(b) if lp[b] >= lp[t] => Some(b),
                _ => Some(t),
            })
            .expect("the vocabulary has a choosable token");
        h = h.extend(best, lp[best], &out[0].attention);
        if best as i64 == vocab.eos_id {
            break;
        }
    }
    Ok(h.normalise())
}

/// Beam search of width `k` (≥ 1) as the decoding spec writes it; returns
/// the best finished hypothesis (or the best alive one if none finished).
pub fn beam<E>(
    vocab: &TargetVocab,
    max_steps: usize,
    k: usize,
    mut step: impl FnMut(&[Vec<i64>]) -> Result<Vec<StepOutput>, E>,
) -> Result<Hypothesis, E> {
    let mut alive = vec![Hypothesis::start()];
    let mut finished: Vec<Hypothesis> = Vec::new();
    for _ in 0..max_steps {
        if alive.is_empty() {
            break;
        }
        let prefixes: Vec<Vec<i64>> = alive.iter().map(|h| prefix(vocab.bos_id, h)).collect();
        let out = step(&prefixes)?;
        let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
        for (i, (h, o)) in alive.iter().zip(&out).enumerate() {
            for (t, &lp) in o.log_probs.iter().enumerate() {
                if vocab.choosable(t) {
                    candidates.push((h.score + f64::from(lp), i, t));
                }
            }
        }
        // Descending score; ties → lower hypothesis, then lower token. The
        // sort is stable and candidates are built in (i, t) order, so equal
        // scores keep that order; NaN sorts as equal, as in Python.
        candidates.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal));
        let mut next = Vec::with_capacity(k);
        for &(_, i, t) in candidates.iter().take(k) {
            let h = alive[i].extend(t, out[i].log_probs[t], &out[i].attention);
            if t as i64 == vocab.eos_id {
                finished.push(h.normalise());
            } else {
                next.push(h);
            }
        }
        alive = next;
    }
    if finished.is_empty() {
        finished = alive.into_iter().map(Hypothesis::normalise).collect();
    }
    // Highest normalised score; ties → the one finished first.
    let best = finished
        .iter()
        .enumerate()
        .fold(None, |b: Option<usize>, (j, h)| match b {
            Some(b) if finished[b].normalised >= h.normalised => Some(b),
            _ => Some(j),
        })
        .expect("the beam keeps at least one hypothesis");
    Ok(finished.swap_remove(best))
}

/// How to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Search {
    Greedy,
    /// Beam search of this width.
    Beam(usize),
}

impl std::fmt::Display for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Search::Greedy => write!(f, "greedy"),
            Search::Beam(k) => write!(f, "beam {k}"),
        }
    }
}

/// A decoded text with its explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The output string (the characters before `<eos>`).
    pub text: String,
    pub search: Search,
    pub source_tokens: Vec<String>,
    pub source_ids: Vec<i64>,
    /// Generated target ids, `<eos>` included when it came.
    pub tokens: Vec<i64>,
    /// Sum of the generated tokens' log-probs / their number (what beam
    /// search ranks by).
    pub normalised_log_prob: f64,
    /// `alignment[c][s]`: cross-attention of output character `c` over
    /// source token `s` (rows sum to 1).
    pub alignment: Vec<Vec<f32>>,
}

impl Translation {
    /// The alignment as a table: one row per output character, one column
    /// per source token, weights to two decimals.
    pub fn alignment_table(&self) -> String {
        let names: Vec<String> = self
            .source_tokens
            .iter()
            .map(|t| t.escape_debug().to_string())
            .collect();
        let widths: Vec<usize> = names.iter().map(|t| t.chars().count().max(4)).collect();
        let mut out = String::from("     ");
        for (t, w) in names.iter().zip(&widths) {
            out += &format!(" {t:>w$}", w = *w);
        }
        out.push('\n');
        for (c, row) in self.text.chars().zip(&self.alignment) {
            out += &format!("  {c:<3}");
            for (a, w) in row.iter().zip(&widths) {
                out += &format!(" {a:>w$.2}", w = *w);
            }
            out.push('\n');
        }
        out
    }
}

/// The encoder-decoder pair with its vocabularies and decoding limits.
#[derive(Clone)]
pub struct Translator {
    inner: Arc<Inner>,
}

struct Inner {
    encoder: Arc<LoadedModel>,
    decoder: Arc<LoadedModel>,
    source: SourceVocab,
    target: TargetVocab,
    max_steps: usize,
    default_beam: usize,
    max_source_len: Option<usize>,
    /// Input positions: encoder (src_ids, src_mask), decoder (memory,
    /// src_mask, tgt_ids); output positions: memory, log_probs, cross_attention.
    enc_ids: usize,
    enc_mask: usize,
    enc_memory: usize,
    dec_memory: usize,
    dec_mask: usize,
    dec_tgt: usize,
    dec_log_probs: usize,
    dec_attention: usize,
}

impl std::fmt::Debug for Translator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Translator")
            .field("encoder", &self.inner.encoder)
            .field("decoder", &self.inner.decoder)
            .field("max_steps", &self.inner.max_steps)
            .finish_non_exhaustive()
    }
}

/// The other half a manifest's `pair` names, and the sha256 it was exported with.
fn pair<'a>(model: &'a LoadedModel, other: &str) -> (Option<&'a str>, Option<&'a str>) {
    let pair = model.manifest.extra.get("pair");
    let get = |k: String| pair.and_then(|p| p.get(k)).and_then(|v| v.as_str());
    (get(other.to_owned()), get(format!("{other}_sha256")))
}

impl Translator {
    /// Around a loaded encoder and decoder that name each other in their
    /// manifests' `pair` (with matching sha256s).
    pub fn new(
        encoder: Arc<LoadedModel>,
        decoder: Arc<LoadedModel>,
    ) -> Result<Translator, ModelError> {
        let mut problems = Vec::new();
        for (model, other, role) in [
            (&encoder, &decoder, "decoder"),
            (&decoder, &encoder, "encoder"),
        ] {
            let (name, sha) = pair(model, role);
            if name != Some(other.name()) {
                problems.push(format!(
                    "{}: pair.{role} is {name:?}, the {role} given is {:?}",
                    model.name(),
                    other.name()
                ));
            }
            if sha.is_some_and(|s| s != other.manifest.sha256) {
                problems.push(format!(
                    "{}: pair.{role}_sha256 is {}, but {} has sha256 {} (exported as a different pair)",
                    model.name(),
                    sha.unwrap_or_default(),
                    other.name(),
                    other.manifest.sha256
                ));
            }
        }
        if !problems.is_empty() {
            return Err(ModelError::spec(&encoder.dir, problems.join("; ")));
        }
        let source =
            SourceVocab::from_file(&encoder.dir.join(manifest_str(&encoder, "source_vocab")?))?;
        let target =
            TargetVocab::from_file(&decoder.dir.join(manifest_str(&decoder, "target_vocab")?))?;
        let dec_manifest = decoder.dir.join("manifest.json");
        let decoding = decoder.manifest.extra.get("decoding");
        let limit = |k: &str| {
            decoding
                .and_then(|d| d.get(k))
                .and_then(|v| v.as_u64())
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    ModelError::spec(&dec_manifest, format!("needs a positive decoding.{k}"))
                })
        };
        let (max_steps, default_beam) = (limit("max_steps")?, limit("beam")?);
        let max_of = |m: &LoadedModel, k: &str| {
            m.manifest
                .extra
                .get(k)
                .and_then(|v| v.as_u64())
                .map(|n| n as usize)
        };
        if let Some(t) = max_of(&decoder, "max_target_len") {
            // The longest prefix fed is <bos> + max_steps - 1 tokens.
            if max_steps > t {
                return Err(ModelError::spec(
                    &dec_manifest,
                    format!("decoding.max_steps {max_steps} > max_target_len {t}"),
                ));
            }
        }
        let inner = Inner {
            enc_ids: io_index(&encoder, false, "src_ids", DType::I64)?,
            enc_mask: io_index(&encoder, false, "src_mask", DType::F32)?,
            enc_memory: io_index(&encoder, true, "memory", DType::F32)?,
            dec_memory: io_index(&decoder, false, "memory", DType::F32)?,
            dec_mask: io_index(&decoder, false, "src_mask", DType::F32)?,
            dec_tgt: io_index(&decoder, false, "tgt_ids", DType::I64)?,
            dec_log_probs: io_index(&decoder, true, "log_probs", DType::F32)?,
            dec_attention: io_index(&decoder, true, "cross_attention", DType::F32)?,
            max_source_len: max_of(&encoder, "max_source_len"),
            encoder,
            decoder,
            source,
            target,
            max_steps,
            default_beam,
        };
        let v = inner.decoder.outputs[inner.dec_log_probs]
            .shape
            .last()
            .copied();
        if v.is_some_and(|v| v >= 0 && v as usize != inner.target.len()) {
            return Err(ModelError::spec(
                &dec_manifest,
                format!(
                    "log_probs has {v:?} tokens, the target vocabulary {}",
                    inner.target.len()
                ),
            ));
        }
        if inner.encoder.inputs.len() != 2 || inner.decoder.inputs.len() != 3 {
            return Err(ModelError::spec(
                &inner.encoder.dir,
                "expected encoder inputs src_ids, src_mask and decoder inputs memory, src_mask, tgt_ids",
            ));
        }
        Ok(Translator {
            inner: Arc::new(inner),
        })
    }

    /// Load and verify both directories (blocking), then pair them.
    pub fn load(encoder_dir: &Path, decoder_dir: &Path) -> Result<Translator, ModelError> {
        let load = |dir: &Path| {
            LoadedModel::load(dir, &Default::default(), None)
                .map(Arc::new)
                .map_err(|e| ModelError::spec(dir, e.problems.join("; ")))
        };
        Translator::new(load(encoder_dir)?, load(decoder_dir)?)
    }

    /// The encoder `registry` serves under `encoder`, with the decoder its
    /// manifest pairs it with.
    pub fn from_registry(registry: &Registry, encoder: &str) -> Result<Translator, ModelError> {
        let get = |name: &str| {
            registry
                .get(name)
                .ok_or_else(|| ModelError::Input(format!("no model {name:?} is being served")))
        };
        let enc = get(encoder)?;
        let decoder = pair(&enc, "decoder").0.ok_or_else(|| {
            ModelError::spec(
                &enc.dir.join("manifest.json"),
                "needs a string pair.decoder",
            )
        })?;
        let dec = get(decoder)?;
        Translator::new(enc, dec)
    }

    pub fn max_steps(&self) -> usize {
        self.inner.max_steps
    }

    /// The beam width the decoder manifest's `decoding.beam` recommends.
    pub fn default_beam(&self) -> usize {
        self.inner.default_beam
    }

    /// Source tokens and ids of `text`, refused when the encoder cannot take
    /// them (none, or more than its positions cover).
    pub fn encode_source(&self, text: &str) -> Result<(Vec<String>, Vec<i64>), ModelError> {
        let (tokens, ids) = self.inner.source.encode(text);
        if ids.is_empty() {
            return Err(ModelError::Input(format!("{text:?} has no source tokens")));
        }
        if let Some(max) = self.inner.max_source_len.filter(|&m| ids.len() > m) {
            return Err(ModelError::Input(format!(
                "{text:?} has {} source tokens, the encoder takes at most {max}",
                ids.len()
            )));
        }
        Ok((tokens, ids))
    }

    /// Decode `text` on the calling thread (tools and tests: each model needs
    /// a free session right away).
    pub fn translate_blocking(
        &self,
        text: &str,
        search: Search,
    ) -> Result<Translation, ModelError> {
        let (tokens, ids) = self.encode_source(text)?;
        let memory = self.inner.encode(&ids)?;
        self.inner.decode(tokens, ids, &memory, search)
    }

    /// Decode `text`, waiting for a session of each model and running on the
    /// blocking pool.
    pub async fn translate(&self, text: &str, search: Search) -> Result<Translation, ModelError> {
        let (tokens, ids) = self.encode_source(text)?;
        let unavailable = |m: &LoadedModel| {
            ModelError::Infer(crate::registry::InferError::Unavailable(m.name().into()))
        };
        let inner = self.inner.clone();
        let permit = inner
            .encoder
            .engine
            .acquire()
            .await
            .ok_or_else(|| unavailable(&inner.encoder))?;
        let (memory, ids) = tokio::task::spawn_blocking(move || {
            let _session = permit;
            inner.encode(&ids).map(|m| (m, ids))
        })
        .await
        .map_err(|e| {
            ModelError::output(&self.inner.encoder, format!("encoder task failed: {e}"))
        })??;
        let inner = self.inner.clone();
        let permit = inner
            .decoder
            .engine
            .acquire()
            .await
            .ok_or_else(|| unavailable(&inner.decoder))?;
        tokio::task::spawn_blocking(move || {
            let _session = permit;
            inner.decode(tokens, ids, &memory, search)
        })
        .await
        .map_err(|e| ModelError::output(&self.inner.decoder, format!("decoder task failed: {e}")))?
    }
}

impl Inner {
    /// Run the encoder on one source row: memory `[1, S, d]`.
    fn encode(&self, ids: &[i64]) -> Result<Tensor, ModelError> {
        let s = ids.len();
        let src = Tensor::new(vec![1, s], Data::I64(ids.to_vec())).expect("one row");
        let mask = Tensor::new(vec![1, s], Data::F32(vec![1.0; s])).expect("one row");
        let inputs = in_manifest_order(
            &self.encoder,
            vec![(self.enc_ids, src), (self.enc_mask, mask)],
        );
        let mut out = self.encoder.infer_blocking(&inputs)?;
        let memory = out.swap_remove(self.enc_memory);
        if memory.shape.len() != 3 || memory.shape[..2] != [1, s] || memory.dtype() != DType::F32 {
            return Err(ModelError::output(
                &self.encoder,
                format!("memory has shape {:?}, expected [1, {s}, d]", memory.shape),
            ));
        }
        Ok(memory)
    }

    /// One decoder run on `prefixes` (equal lengths) over `memory`: the last
    /// position of each.
    fn step(&self, memory: &Tensor, prefixes: &[Vec<i64>]) -> Result<Vec<StepOutput>, ModelError> {
        let (m, t, s) = (prefixes.len(), prefixes[0].len(), memory.shape[1]);
        let memories = Tensor::concat(&vec![memory; m]).map_err(ModelError::Input)?;
        let mask = Tensor::new(vec![m, s], Data::F32(vec![1.0; m * s])).expect("m rows");
        let tgt = Tensor::new(vec![m, t], Data::I64(prefixes.concat())).expect("equal prefixes");
        let inputs = in_manifest_order(
            &self.decoder,
            vec![
                (self.dec_memory, memories),
                (self.dec_mask, mask),
                (self.dec_tgt, tgt),
            ],
        );
        let out = self.decoder.infer_blocking(&inputs)?;
        let v = self.target.len();
        let last_rows = |i: usize, width: usize| -> Result<Vec<Vec<f32>>, ModelError> {
            match &out[i] {
                Tensor {
                    shape,
                    data: Data::F32(x),
                } if shape[..] == [m, t, width] => Ok((0..m)
                    .map(|r| {
                        let at = (r * t + t - 1) * width;
                        x[at..at + width].to_vec()
                    })
                    .collect()),
                other => Err(ModelError::output(
                    &self.decoder,
                    format!(
                        "{} has shape {:?}, expected float32 [{m}, {t}, {width}]",
                        self.decoder.outputs[i].name, other.shape
                    ),
                )),
            }
        };
        let log_probs = last_rows(self.dec_log_probs, v)?;
        let attention = last_rows(self.dec_attention, s)?;
        Ok(log_probs
            .into_iter()
            .zip(attention)
            .map(|(log_probs, attention)| StepOutput {
                log_probs,
                attention,
            })
            .collect())
    }

    fn decode(
        &self,
        source_tokens: Vec<String>,
        source_ids: Vec<i64>,
        memory: &Tensor,
        search: Search,
    ) -> Result<Translation, ModelError> {
        let step = |prefixes: &[Vec<i64>]| self.step(memory, prefixes);
        let h = match search {
            Search::Greedy => greedy(&self.target, self.max_steps, step)?,
            Search::Beam(k) if k >= 1 => beam(&self.target, self.max_steps, k, step)?,
            Search::Beam(_) => {
                return Err(ModelError::Input(
                    "the beam width must be at least 1".into(),
                ))
            }
        };
        let text = self.target.to_text(&h.tokens);
        let mut alignment = h.attention;
        alignment.truncate(text.chars().count());
        Ok(Translation {
            text,
            search,
            source_tokens,
            source_ids,
            tokens: h.tokens,
            normalised_log_prob: h.normalised,
            alignment,
        })
    }
}

/// The CLI's report for one translation: the digits, then the alignment.
pub fn render(source: &str, t: &Translation) -> String {
    let finished = t.tokens.len() > t.text.chars().count();
    format!(
        "{source:?} → {}\n    search: {}, normalised log-prob {:.6}{}\n\n{}",
        t.text,
        t.search,
        t.normalised_log_prob,
        if finished {
            ""
        } else {
            " (no <eos> within max_steps)"
        },
        t.alignment_table()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// <pad> <bos> <eos> a b c
    fn vocab() -> TargetVocab {
        TargetVocab {
            tokens: ["<pad>", "<bos>", "<eos>", "a", "b", "c"]
                .map(String::from)
                .to_vec(),
            pad_id: 0,
            bos_id: 1,
            eos_id: 2,
        }
    }

    const NEG: f32 = -20.0;

    /// A fake decoder: `table(prefix without <bos>)` gives the next-token
    /// log-probs; the attention row records the prefix length.
    fn fake<'a>(
        table: &'a dyn Fn(&[i64]) -> [f32; 6],
        calls: &'a std::cell::RefCell<Vec<usize>>,
    ) -> impl FnMut(&[Vec<i64>]) -> Result<Vec<StepOutput>, ()> + 'a {
        move |prefixes| {
            calls.borrow_mut().push(prefixes.len());
            let len = prefixes[0].len();
            assert!(prefixes.iter().all(|p| p.len() == len && p[0] == 1));
            Ok(prefixes
                .iter()
                .map(|p| StepOutput {
                    log_probs: table(&p[1..]).to_vec(),
                    attention: vec![len as f32, 0.0],
                })
                .collect())
        }
    }

    #[test]
    fn source_tokens_follow_the_manifest_rules() {
        assert_eq!(
            source_tokens("Two Hundred Forty-Five and 10/100"),
            ["two", "hundred", "forty", "five", "and", "1", "0", "/", "1", "0", "0"]
        );
        assert_eq!(
            source_tokens("forty-two  and 00/100 "),
            ["forty", "two", "and", "0", "0", "/", "1", "0", "0"]
        );
        assert_eq!(source_tokens("--  -"), Vec::<String>::new());
        // Only spaces and hyphens separate; other pieces split into characters.
        assert_eq!(
            source_tokens("one\ttwo"),
            ["o", "n", "e", "\t", "t", "w", "o"]
        );
        assert_eq!(source_tokens("CAFÉ"), ["c", "a", "f", "É"]);
        assert_eq!(source_tokens("ÉCOLE"), ["É", "c", "o", "l", "e"]);
    }

    #[test]
    fn greedy_takes_the_first_maximum_skips_pad_and_bos_and_stops_after_eos() {
        let table = |p: &[i64]| match p.len() {
            // <pad> and <bos> are the most likely: never chosen. a == b: a.
            0 => [0.0, 0.0, NEG, -0.5, -0.5, -1.0],
            1 => [NEG, NEG, -2.0, -3.0, -0.1, -3.0],
            _ => [NEG, NEG, -0.1, -3.0, -3.0, -3.0],
        };
        let calls = Default::default();
        let h = greedy(&vocab(), 12, fake(&table, &calls)).unwrap();
        assert_eq!(h.tokens, [3, 4, 2]);
        assert_eq!(vocab().to_text(&h.tokens), "ab");
        assert_eq!(h.score, -0.5f64 + f64::from(-0.1f32) + f64::from(-0.1f32));
        assert_eq!(h.normalised, h.score / 3.0);
        assert_eq!(
            h.attention,
            [vec![1.0, 0.0], vec![2.0, 0.0], vec![3.0, 0.0]]
        );
        assert_eq!(*calls.borrow(), [1, 1, 1]);
    }

    #[test]
    fn greedy_stops_at_max_steps_without_eos() {
        let table = |_: &[i64]| [NEG, NEG, -5.0, -0.1, -3.0, -3.0];
        let calls = Default::default();
        let h = greedy(&vocab(), 4, fake(&table, &calls)).unwrap();
        assert_eq!(vocab().to_text(&h.tokens), "aaaa");
        assert_eq!(calls.borrow().len(), 4);
    }

    #[test]
    fn beam_keeps_k_best_narrows_as_hypotheses_finish_and_normalises_by_length() {
        // Step 1: <pad> and <bos> (0.0) are never candidates; b (-0.1) > a
        // (-0.2) > eos (-0.3) > c (-3).  K = 2 keeps b, a.
        // From b: eos -1.0 (total -1.1, norm -0.55); from a: c -0.05 (total -0.25).
        // Step 2 keeps a·c (-0.25) and b·eos (-1.1): one finishes, the beam narrows to 1.
        // Step 3 from a·c: eos -0.05 → -0.3 / 3 = -0.1 beats -0.55.
        let table = |p: &[i64]| match p {
            [] => [0.0, 0.0, -0.3, -0.2, -0.1, -3.0],
            [4] => [NEG, NEG, -1.0, -4.0, -4.0, -4.0],
            [3] => [NEG, NEG, -4.0, -4.0, -4.0, -0.05],
            [3, 5] => [NEG, NEG, -0.05, -4.0, -4.0, -4.0],
            _ => [NEG; 6],
        };
        let calls = Default::default();
        let h = beam(&vocab(), 12, 2, fake(&table, &calls)).unwrap();
        assert_eq!(h.tokens, [3, 5, 2]);
        assert!((h.normalised - (-0.3 / 3.0)).abs() < 1e-6);
        // One hypothesis, then two, then one again (the other finished).
        assert_eq!(calls.borrow()[..3], [1, 2, 1]);
        assert_eq!(h.attention.len(), 3);
        // Greedy takes b first and ends worse: the searches really differ.
        let g = greedy(&vocab(), 12, fake(&table, &Default::default())).unwrap();
        assert_eq!(g.tokens, [4, 2]);
    }

    #[test]
    fn beam_ties_go_to_the_lower_hypothesis_then_the_lower_token() {
        // Two alive hypotheses with equal scores extend with equal log-probs:
        // K = 2 keeps hypothesis 0's a and b (not hypothesis 1's).
        let table = |p: &[i64]| match p {
            [] => [NEG, NEG, NEG, -1.0, -1.0, NEG],
            [_] => [NEG, NEG, -1.0, -1.0, -1.0, NEG],
            [_, _] => [NEG, NEG, 0.0, NEG, NEG, NEG],
            _ => [NEG; 6],
        };
        let h = beam(&vocab(), 12, 2, fake(&table, &Default::default())).unwrap();
        // Step 2 keeps a·eos and a·a; a·eos finishes with -2/2 = -1; a·a·eos
        // ends with -2/3 — higher. Ties elsewhere never favoured hypothesis b.
        assert_eq!(h.tokens, [3, 3, 2]);
    }

    #[test]
    fn beam_final_ties_go_to_the_hypothesis_finished_first() {
        // a·eos and b·eos both finish at step 2 with -1.0; a's is kept first.
        let table = |p: &[i64]| match p {
            [] => [NEG, NEG, NEG, -0.5, -0.5, NEG],
            [_] => [NEG, NEG, -0.5, NEG, NEG, NEG],
            _ => [NEG; 6],
        };
        let h = beam(&vocab(), 12, 2, fake(&table, &Default::default())).unwrap();
        assert_eq!(h.tokens, [3, 2]);
    }

    #[test]
    fn beam_without_a_finished_hypothesis_takes_the_best_alive() {
        let table = |p: &[i64]| match p.len() {
            0 => [NEG, NEG, NEG, -0.1, -0.2, NEG],
            _ => [NEG, NEG, NEG, -1.0, NEG, -0.5],
        };
        let calls = Default::default();
        let h = beam(&vocab(), 3, 2, fake(&table, &calls)).unwrap();
        assert_eq!(vocab().to_text(&h.tokens), "acc");
        assert_eq!(h.tokens.len(), 3);
        assert!((h.normalised - (-1.1 / 3.0)).abs() < 1e-6);
        assert_eq!(calls.borrow().len(), 3);
    }

    #[test]
    fn beam_of_width_one_is_greedy_here() {
        let table = |p: &[i64]| match p.len() {
            0..=2 => [NEG, NEG, -3.0, -0.2, -0.1, -3.0],
            _ => [NEG, NEG, -0.1, -3.0, -3.0, -3.0],
        };
        let b = beam(&vocab(), 12, 1, fake(&table, &Default::default())).unwrap();
        let g = greedy(&vocab(), 12, fake(&table, &Default::default())).unwrap();
        assert_eq!(b, g);
    }
}
