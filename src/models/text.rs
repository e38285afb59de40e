//! Merchant descriptors → token ids, and the text classifier around them.
//!
//! [`Tokenizer`] implements the spec stored in the model's `tokenizer.json`
//! (the same text is in the manifest): ASCII-only lowercasing, maximal runs of
//! `[a-z]` and of `[0-9]`, digit runs → `<num>`, unknown letter runs →
//! `<unk>`, truncate and right-pad to `max_len`. The vocabulary comes from
//! that file; nothing about it is hard-coded. It must give the same ids as the
//! Python tokenizer used in training, byte for byte: `tokenizer_vectors.json`
//! pins that.
//!
//! [`TextClassifier`] runs a loaded model on tokenized text and reads back the
//! label, its probability and the attention over the tokens. Its async entry
//! point goes through [`LoadedModel::infer`] (dynamic batching, ONNX Runtime on
//! the blocking pool); it never runs a model on an async worker.

use super::{in_manifest_order, io_index, read_json, ModelError};
use crate::onnx::manifest::DType;
use crate::registry::{Data, LoadedModel, Registry, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The merchant-descriptor tokenizer, as its `tokenizer.json` specifies it.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: Vec<String>,
    index: HashMap<String, i64>,
    max_len: usize,
    pad_id: i64,
    unk_id: i64,
    num_id: i64,
}

/// One kept token: the run of the text it came from (lowercased) and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub id: i64,
}

/// A tokenized text: `ids` and `mask` have `max_len` entries; `pieces` are the
/// real (unpadded) tokens, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoding {
    pub ids: Vec<i64>,
    pub mask: Vec<f32>,
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Letters,
    Digits,
}

/// Steps 1–2 of the spec: the maximal `[a-z]` and `[0-9]` runs of `text`
/// after lowercasing `A`–`Z` only, at most `limit` of them. Works on bytes:
/// every byte of a non-ASCII character is ≥ 0x80, so it separates exactly as
/// the character does.
pub fn runs(text: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut kind = None;
    for byte in text.bytes() {
        if out.len() == limit {
            return out;
        }
        let byte = byte.to_ascii_lowercase();
        let k = match byte {
            b'a'..=b'z' => Some(Run::Letters),
            b'0'..=b'9' => Some(Run::Digits),
            _ => None,
        };
        if k != kind && !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
        if k.is_some() {
            current.push(char::from(byte));
        }
        kind = k;
    }
    if !current.is_empty() && out.len() < limit {
        out.push(current);
    }
    out
}

impl Tokenizer {
    /// Read a `tokenizer.json` (`vocab`, `max_len`, `pad_id`, `unk_id`, `num_id`).
    pub fn from_file(path: &Path) -> Result<Tokenizer, ModelError> {
        Tokenizer::from_json(&read_json(path)?).map_err(|m| ModelError::spec(path, m))
    }

    /// From the parsed file; the error names every problem.
    pub fn from_json(v: &serde_json::Value) -> Result<Tokenizer, String> {
        let mut problems = Vec::new();
        let id = |key: &str, problems: &mut Vec<String>| match v.get(key).and_then(|x| x.as_i64()) {
            Some(x) => x,
            None => {
                problems.push(format!("needs an integer {key:?}"));
                -1
            }
        };
        let (pad_id, unk_id, num_id) = (
            id("pad_id", &mut problems),
            id("unk_id", &mut problems),
            id("num_id", &mut problems),
        );
        let max_len = v
            .get("max_len")
            .and_then(|x| x.as_u64())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| {
                problems.push("needs a positive integer \"max_len\"".into());
                0
            }) as usize;
        let vocab: Vec<String> = match v.get("vocab").and_then(|x| x.as_array()) {
            Some(items) => items
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    w.as_str().map(str::to_owned).unwrap_or_else(|| {
                        problems.push(format!("vocab[{i}] is not a string"));
                        String::new()
                    })
                })
                .collect(),
            None => {
                problems.push("needs a list \"vocab\"".into());
                Vec::new()
            }
        };
        let specials = [(pad_id, "<pad>"), (unk_id, "<unk>"), (num_id, "<num>")];
        for (id, name) in specials {
            if usize::try_from(id)
                .ok()
                .and_then(|i| vocab.get(i))
                .map(String::as_str)
                != Some(name)
            {
                problems.push(format!("id {id} is not {name} in the vocab"));
            }
        }
        let mut index = HashMap::with_capacity(vocab.len());
        for (i, word) in vocab.iter().enumerate() {
            let special = specials.iter().any(|(id, _)| *id == i as i64);
            if !special && (word.is_empty() || !word.bytes().all(|b| b.is_ascii_lowercase())) {
                // The tokenizer only ever looks up [a-z]+ runs: such an entry
                // means the file was built by a different tokenizer.
                problems.push(format!("vocab[{i}] {word:?} is not a run of [a-z]"));
            }
            if let Some(first) = index.insert(word.clone(), i as i64) {
                problems.push(format!("vocab[{i}] {word:?} repeats vocab[{first}]"));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        Ok(Tokenizer {
            vocab,
            index,
            max_len,
            pad_id,
            unk_id,
            num_id,
        })
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// The vocabulary entry of `id` (`<unk>`, `<num>`, a word).
    pub fn token(&self, id: i64) -> Option<&str> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.vocab.get(i))
            .map(String::as_str)
    }

    /// Ids and mask, `max_len` long: what the model's `token_ids` and
    /// `token_mask` rows take.
    pub fn tokenize(&self, text: &str) -> (Vec<i64>, Vec<f32>) {
        let e = self.encode(text);
        (e.ids, e.mask)
    }

    /// Ids, mask and the kept pieces.
    pub fn encode(&self, text: &str) -> Encoding {
        let pieces: Vec<Piece> = runs(text, self.max_len)
            .into_iter()
            .map(|run| {
                let id = if run.as_bytes()[0].is_ascii_digit() {
                    self.num_id
                } else {
                    self.index.get(&run).copied().unwrap_or(self.unk_id)
                };
                Piece { text: run, id }
            })
            .collect();
        let mut ids: Vec<i64> = pieces.iter().map(|p| p.id).collect();
        let mut mask = vec![1.0f32; ids.len()];
        ids.resize(self.max_len, self.pad_id);
        mask.resize(self.max_len, 0.0);
        Encoding { ids, mask, pieces }
    }
}

/// One token of a classified text with the attention the model gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttendedToken {
    /// The lowercased run of the text.
    pub text: String,
    pub id: i64,
    /// The vocabulary entry the model saw (`<unk>`, `<num>` or the run itself).
    pub token: String,
    pub attention: f32,
}

impl std::fmt::Display for AttendedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.token == self.text {
            write!(f, "{}", self.text)
        } else {
            write!(f, "{}({})", self.text, self.token)
        }
    }
}

/// What the classifier says about one text.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub label: String,
    pub probability: f32,
    /// Every label with its probability, in the manifest's label order.
    pub probabilities: Vec<(String, f32)>,
    /// The real tokens in text order with their attention (0 tokens for a
    /// text with no letters or digits).
    pub tokens: Vec<AttendedToken>,
}

impl Classification {
    /// The `n` most attended tokens, strongest first (ties: earlier first).
    pub fn top_tokens(&self, n: usize) -> Vec<&AttendedToken> {
        let mut order: Vec<&AttendedToken> = self.tokens.iter().collect();
        order.sort_by(|a, b| b.attention.total_cmp(&a.attention));
        order.truncate(n);
        order
    }
}

/// A text-classification model with its tokenizer and labels.
#[derive(Clone)]
pub struct TextClassifier {
    model: Arc<LoadedModel>,
    tokenizer: Arc<Tokenizer>,
    labels: Arc<Vec<String>>,
    /// Positions of `token_ids`, `token_mask` in the inputs and of
    /// `probabilities`, `attention` in the outputs.
    ids_in: usize,
    mask_in: usize,
    probs_out: usize,
    attention_out: usize,
}

impl std::fmt::Debug for TextClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextClassifier")
            .field("model", &self.model)
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl TextClassifier {
    /// Around a loaded model whose manifest names its tokenizer
    /// (`tokenizer.file`) and `labels`; its IO must be `token_ids`,
    /// `token_mask` → `probabilities`, `attention`, all `max_len` wide.
    pub fn new(model: Arc<LoadedModel>) -> Result<TextClassifier, ModelError> {
        let manifest_path = model.dir.join("manifest.json");
        let bad = |m: String| ModelError::spec(&manifest_path, m);
        let extra = &model.manifest.extra;
        let labels: Vec<String> = extra
            .get("labels")
            .and_then(|v| v.as_array())
            .and_then(|items| {
                items
                    .iter()
                    .map(|l| l.as_str().map(str::to_owned))
                    .collect()
            })
            .filter(|l: &Vec<String>| !l.is_empty())
            .ok_or_else(|| bad("needs a non-empty list of strings \"labels\"".into()))?;
        let spec = extra
            .get("tokenizer")
            .ok_or_else(|| bad("needs a \"tokenizer\" object".into()))?;
        let file = spec
            .get("file")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("needs a string \"tokenizer.file\"".into()))?;
        let tokenizer = Tokenizer::from_file(&model.dir.join(file))?;
        let t = tokenizer.max_len() as i64;
        let mut problems = Vec::new();
        if let Some(n) = spec.get("max_len").and_then(|v| v.as_i64()) {
            if n != t {
                problems.push(format!("tokenizer.max_len is {n}, {file} says {t}"));
            }
        }
        if let Some(n) = spec.get("vocab_size").and_then(|v| v.as_u64()) {
            if n as usize != tokenizer.vocab_size() {
                problems.push(format!(
                    "tokenizer.vocab_size is {n}, {file} has {}",
                    tokenizer.vocab_size()
                ));
            }
        }
        let ids_in = io_index(&model, false, "token_ids", DType::I64)?;
        let mask_in = io_index(&model, false, "token_mask", DType::F32)?;
        let probs_out = io_index(&model, true, "probabilities", DType::F32)?;
        let attention_out = io_index(&model, true, "attention", DType::F32)?;
        let wants = [
            (&model.inputs[ids_in], t),
            (&model.inputs[mask_in], t),
            (&model.outputs[probs_out], labels.len() as i64),
            (&model.outputs[attention_out], t),
        ];
        for (spec, width) in wants {
            if spec.shape.len() != 2 || ![-1, width].contains(&spec.shape[1]) {
                problems.push(format!(
                    "{:?} has shape {:?}, expected [batch, {width}]",
                    spec.name, spec.shape
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
        Ok(TextClassifier {
            model,
            tokenizer: Arc::new(tokenizer),
            labels: Arc::new(labels),
            ids_in,
            mask_in,
            probs_out,
            attention_out,
        })
    }

    /// Load and verify a model directory (blocking), then wrap it.
    pub fn load(dir: &Path) -> Result<TextClassifier, ModelError> {
        let model = LoadedModel::load(dir, &Default::default(), None)
            .map_err(|e| ModelError::spec(dir, e.problems.join("; ")))?;
        TextClassifier::new(Arc::new(model))
    }

    /// The version `registry` serves under `name` now.
    pub fn from_registry(registry: &Registry, name: &str) -> Result<TextClassifier, ModelError> {
        let model = registry
            .get(name)
            .ok_or_else(|| ModelError::Input(format!("no model {name:?} is being served")))?;
        TextClassifier::new(model)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// Classify `texts` through the model's queue (merged with concurrent
    /// requests when the model batches).
    pub async fn classify(&self, texts: &[&str]) -> Result<Vec<Classification>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (inputs, encodings) = self.inputs(texts);
        let outputs = self.model.infer(inputs).await?;
        self.read(&outputs, encodings)
    }

    /// Classify on the calling thread (tools and tests; a free session is
    /// needed right away).
    pub fn classify_blocking(&self, texts: &[&str]) -> Result<Vec<Classification>, ModelError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let (inputs, encodings) = self.inputs(texts);
        let outputs = self.model.infer_blocking(&inputs)?;
        self.read(&outputs, encodings)
    }

    fn inputs(&self, texts: &[&str]) -> (Vec<Tensor>, Vec<Encoding>) {
        let t = self.tokenizer.max_len();
        let encodings: Vec<Encoding> = texts.iter().map(|s| self.tokenizer.encode(s)).collect();
        let ids = encodings
            .iter()
            .flat_map(|e| e.ids.iter().copied())
            .collect();
        let mask = encodings
            .iter()
            .flat_map(|e| e.mask.iter().copied())
            .collect();
        let shape = vec![texts.len(), t];
        let ids = Tensor::new(shape.clone(), Data::I64(ids)).expect("rows of max_len");
        let mask = Tensor::new(shape, Data::F32(mask)).expect("rows of max_len");
        let inputs = in_manifest_order(&self.model, vec![(self.ids_in, ids), (self.mask_in, mask)]);
        (inputs, encodings)
    }

    fn read(
        &self,
        outputs: &[Tensor],
        encodings: Vec<Encoding>,
    ) -> Result<Vec<Classification>, ModelError> {
        let rows = encodings.len();
        let (t, k) = (self.tokenizer.max_len(), self.labels.len());
        let matrix = |i: usize, width: usize| -> Result<&[f32], ModelError> {
            match outputs.get(i) {
                Some(Tensor {
                    shape,
                    data: Data::F32(v),
                }) if shape[..] == [rows, width] => Ok(v),
                other => Err(ModelError::output(
                    &self.model,
                    format!(
                        "output {:?} is {:?}, expected float32 [{rows}, {width}]",
                        self.model.outputs[i].name,
                        other.map(|o| &o.shape)
                    ),
                )),
            }
        };
        let probs = matrix(self.probs_out, k)?;
        let attention = matrix(self.attention_out, t)?;
        Ok(encodings
            .into_iter()
            .enumerate()
            .map(|(r, e)| {
                let p = &probs[r * k..(r + 1) * k];
                // First maximum, as numpy's argmax.
                let best = (0..k).fold(0, |b, j| if p[j] > p[b] { j } else { b });
                let a = &attention[r * t..(r + 1) * t];
                Classification {
                    label: self.labels[best].clone(),
                    probability: p[best],
                    probabilities: self.labels.iter().cloned().zip(p.iter().copied()).collect(),
                    tokens: e
                        .pieces
                        .into_iter()
                        .zip(a)
                        .map(|(piece, &attention)| AttendedToken {
                            token: self.tokenizer.token(piece.id).unwrap_or("?").to_owned(),
                            text: piece.text,
                            id: piece.id,
                            attention,
                        })
                        .collect(),
                }
            })
            .collect())
    }
}

/// The CLI's lines for one classified text: label and probability, then the
/// `top` most attended tokens.
pub fn render(text: &str, c: &Classification, top: usize) -> String {
    let tokens: Vec<String> = c
        .top_tokens(top)
        .iter()
        .map(|t| format!("{t} {:.3}", t.attention))
        .collect();
    format!(
        "{text:?}\n    label:      {} (p = {:.4})\n    attention:  {}\n",
        c.label,
        c.probability,
        if tokens.is_empty() {
            "(no tokens)".to_owned()
        } else {
            tokens.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn committed_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/merchant-descriptor")
    }

    fn committed() -> Tokenizer {
        Tokenizer::from_file(&committed_dir().join("tokenizer.json")).unwrap()
    }

    fn small() -> Tokenizer {
        Tokenizer::from_json(&json!({
            "max_len": 4, "pad_id": 0, "unk_id": 1, "num_id": 2,
            "vocab": ["<pad>", "<unk>", "<num>", "eleven", "pizza", "s"]
        }))
        .unwrap()
    }

    #[test]
    fn matches_every_vector_of_the_python_tokenizer() {
        let tok = committed();
        let path = committed_dir().join("tokenizer_vectors.json");
        let vectors: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert!(vectors.len() >= 40, "only {} vectors", vectors.len());
        for v in &vectors {
            let text = v["text"].as_str().unwrap();
            let ids: Vec<i64> = serde_json::from_value(v["ids"].clone()).unwrap();
            let mask: Vec<f32> = serde_json::from_value(v["mask"].clone()).unwrap();
            let pieces: Vec<String> = serde_json::from_value(v["pieces"].clone()).unwrap();
            let e = tok.encode(text);
            assert_eq!((&e.ids, &e.mask), (&ids, &mask), "{text:?}");
            let kept = pieces.len().min(tok.max_len());
            let got: Vec<&str> = e.pieces.iter().map(|p| p.text.as_str()).collect();
            assert_eq!(got, pieces[..kept], "{text:?}");
            assert_eq!(tok.tokenize(text), (ids, mask));
        }
    }

    #[test]
    fn only_ascii_letters_are_lowercased_and_everything_else_separates() {
        // Kelvin sign, dotted capital I, fullwidth letters, accents: separators.
        assert_eq!(runs("\u{212A}ELVIN", 16), ["elvin"]);
        assert_eq!(runs("\u{0130}STANBUL", 16), ["stanbul"]);
        assert_eq!(runs("ｓｈｅｌｌ ＯＩＬ", 16), Vec::<String>::new());
        assert_eq!(runs("CAFÉ ZÜRICH", 16), ["caf", "z", "rich"]);
        assert_eq!(runs("Mc'Donald\u{2019}s", 16), ["mc", "donald", "s"]);
        // Unicode digits are not [0-9].
        assert_eq!(runs("٣4²5", 16), ["4", "5"]);
        assert_eq!(runs("uber\ttrip\nhelp", 16), ["uber", "trip", "help"]);
    }

    #[test]
    fn letter_and_digit_runs_that_touch_are_separate_tokens() {
        assert_eq!(runs("7ELEVEN", 16), ["7", "eleven"]);
        assert_eq!(runs("a1b2c3", 16), ["a", "1", "b", "2", "c", "3"]);
        assert_eq!(runs("US*2K4L91", 16), ["us", "2", "k", "4", "l", "91"]);
    }

    #[test]
    fn digits_are_num_unknown_words_unk_and_padding_is_masked() {
        let tok = small();
        let e = tok.encode("7-Eleven Pizza's");
        assert_eq!(e.ids, [2, 3, 4, 5]);
        assert_eq!(e.mask, [1.0; 4]);
        let (ids, mask) = tok.tokenize("joe's");
        assert_eq!(ids, [1, 5, 0, 0]);
        assert_eq!(mask, [1.0, 1.0, 0.0, 0.0]);
        // Nothing prepended or appended, and no token for an empty text.
        assert_eq!(tok.tokenize(""), (vec![0; 4], vec![0.0; 4]));
        assert_eq!(tok.tokenize(" *#/ "), (vec![0; 4], vec![0.0; 4]));
    }

    #[test]
    fn keeps_the_first_max_len_tokens() {
        let tok = small();
        let e = tok.encode("pizza 1 pizza 2 pizza 3");
        assert_eq!(e.ids, [4, 2, 4, 2]);
        assert_eq!(e.pieces.len(), 4);
        assert_eq!(runs("a b c", 2), ["a", "b"]);
        assert_eq!(runs("ab", 1), ["ab"]);
        assert_eq!(runs("ab", 0), Vec::<String>::new());
    }

    #[test]
    fn special_tokens_are_never_produced_from_text() {
        // "<unk>" in a text is punctuation around the word "unk".
        let tok = small();
        assert_eq!(tok.tokenize("<pad> <num>").0, [1, 1, 0, 0]);
    }

    #[test]
    fn a_tokenizer_file_that_disagrees_with_the_spec_is_refused() {
        let bad = |v: serde_json::Value| Tokenizer::from_json(&v).unwrap_err();
        let err = bad(json!({"max_len": 4, "pad_id": 0, "unk_id": 1, "num_id": 2,
                             "vocab": ["<pad>", "<unk>", "<num>", "Pizza", "a b", "pizza", "pizza"]}));
        assert!(err.contains("vocab[3] \"Pizza\""), "{err}");
        assert!(err.contains("vocab[4] \"a b\""), "{err}");
        assert!(err.contains("vocab[6] \"pizza\" repeats vocab[5]"), "{err}");
        let err = bad(json!({"max_len": 0, "pad_id": 1, "unk_id": 0, "vocab": ["<pad>", "<unk>"]}));
        assert!(err.contains("max_len"), "{err}");
        assert!(err.contains("num_id"), "{err}");
        assert!(err.contains("id 1 is not <pad>"), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn any_text_gives_max_len_ids_and_a_prefix_mask(text in "\\PC{0,60}") {
            let tok = committed();
            let (ids, mask) = tok.tokenize(&text);
            proptest::prop_assert_eq!(ids.len(), tok.max_len());
            proptest::prop_assert_eq!(mask.len(), tok.max_len());
            let real = mask.iter().filter(|m| **m == 1.0).count();
            proptest::prop_assert!(mask[..real].iter().all(|m| *m == 1.0));
            proptest::prop_assert!(ids[real..].iter().all(|i| *i == 0));
            proptest::prop_assert!(ids[..real].iter().all(|i| *i > 0 && (*i as usize) < tok.vocab_size()));
            // Working on bytes or on characters gives the same runs.
            let by_char: Vec<String> = text
                .chars()
                .map(|c| if c.is_ascii_uppercase() { c.to_ascii_lowercase() } else { c })
                .collect::<String>()
                .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
                .flat_map(|w| {
                    let mut out: Vec<String> = Vec::new();
                    for c in w.chars() {
                        match out.last_mut() {
                            Some(last) if last.chars().last().unwrap().is_ascii_digit() == c.is_ascii_digit() => last.push(c),
                            _ => out.push(c.to_string()),
                        }
                    }
                    out
                })
                .collect();
            proptest::prop_assert_eq!(runs(&text, usize::MAX), by_char);
        }
    }
}
