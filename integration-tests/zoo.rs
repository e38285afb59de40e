//! The text and encoder-decoder models of the zoo through the real ONNX
//! Runtime (`ORT_DYLIB_PATH`; no Kafka or Postgres): the Rust tokenizer and
//! decoders reproduce the vectors the Python reference wrote at training time,
//! through the registry's loaded models, and `riskstream models classify` /
//! `models translate` print what the library computes.

use crate::common::repo_root;
use riskstream::metrics::ServeMetrics;
use riskstream::models::seq2seq::{self, Search, Translator};
use riskstream::models::text::{self, TextClassifier};
use riskstream::registry::{LoadOptions, Registry};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn model(name: &str) -> PathBuf {
    repo_root().join("models").join(name)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn translator() -> Translator {
    Translator::load(
        &model("cheque-words-encoder"),
        &model("cheque-words-decoder"),
    )
    .expect("the committed cheque-words pair loads and verifies")
}

/// A models root holding (links to) only the named committed models.
fn root_with(names: &[&str]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for name in names {
        std::os::unix::fs::symlink(model(name), root.path().join(name)).unwrap();
    }
    root
}

/// A registry over just `names` (sorted), loaded off the async runtime; the
/// directory must outlive it.
async fn registry_with(names: &[&'static str]) -> (tempfile::TempDir, Registry) {
    let root = root_with(names);
    let registry = Registry::new(
        root.path(),
        LoadOptions::default(),
        Arc::new(ServeMetrics::new()),
    );
    let want = names.to_vec();
    let registry = tokio::task::spawn_blocking(move || {
        let report = registry.scan(false);
        assert_eq!(report.loaded, want, "{report:?}");
        registry
    })
    .await
    .unwrap();
    (root, registry)
}

fn riskstream(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_riskstream"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap()
}

fn stdout_of(args: &[&str]) -> String {
    let out = riskstream(args);
    assert!(
        out.status.success(),
        "riskstream {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn descriptor_tokenizer_vectors_through_the_model() {
    let dir = model("merchant-descriptor");
    let classifier = TextClassifier::load(&dir).expect("the committed model verifies");
    let vectors = read_json(&dir.join("tokenizer_vectors.json"));
    let vectors = vectors.as_array().unwrap();
    let mut mismatches = Vec::new();
    for v in vectors {
        let text = v["text"].as_str().unwrap();
        let want: (Vec<i64>, Vec<f32>) = (
            serde_json::from_value(v["ids"].clone()).unwrap(),
            serde_json::from_value(v["mask"].clone()).unwrap(),
        );
        let got = classifier.tokenizer().tokenize(text);
        if got != want {
            mismatches.push(format!("{text:?}: got {got:?}, Python {want:?}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} vectors differ:\n{}",
        mismatches.len(),
        vectors.len(),
        mismatches.join("\n")
    );

    let texts: Vec<&str> = vectors
        .iter()
        .map(|v| v["text"].as_str().unwrap())
        .collect();
    let results = classifier.classify_blocking(&texts).unwrap();
    assert_eq!(results.len(), texts.len());
    for (text, c) in texts.iter().zip(&results) {
        let total: f32 = c.probabilities.iter().map(|(_, p)| p).sum();
        assert!(
            (total - 1.0).abs() < 1e-4,
            "{text:?}: probabilities sum to {total}"
        );
        let best = c.probabilities.iter().map(|(_, p)| *p).fold(0.0, f32::max);
        assert_eq!(c.probability, best, "{text:?}");
        assert!(classifier.labels().contains(&c.label));
        let real = classifier.tokenizer().encode(text).pieces.len();
        assert_eq!(c.tokens.len(), real, "{text:?}");
        // The pooling weights cover exactly the real tokens.
        let attention: f32 = c.tokens.iter().map(|t| t.attention).sum();
        let want = if real == 0 { 0.0 } else { 1.0 };
        assert!(
            (attention - want).abs() < 1e-4,
            "{text:?}: attention sums to {attention}"
        );
    }
    let blue = &results[texts
        .iter()
        .position(|t| t.starts_with("SQ *BLUE BOTTLE COFFEE"))
        .unwrap()];
    assert_eq!(blue.label, "restaurants");
    let unk = blue.tokens.iter().find(|t| t.text == "bottle").unwrap();
    assert_eq!((unk.id, unk.token.as_str()), (1, "<unk>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_through_the_registry_matches_the_blocking_path() {
    let (_root, registry) = registry_with(&["merchant-descriptor"]).await;
    let classifier = TextClassifier::from_registry(&registry, "merchant-descriptor").unwrap();
    let texts = ["UBER *TRIP HELP.UBER.COM", "SHELL OIL 57442 HOUSTON TX", ""];
    let asked = classifier.classify(&texts).await.unwrap();
    let direct = tokio::task::block_in_place(|| classifier.classify_blocking(&texts)).unwrap();
    for (a, d) in asked.iter().zip(&direct) {
        assert_eq!(a.label, d.label);
        assert!((a.probability - d.probability).abs() < 1e-5);
        assert_eq!(a.tokens.len(), d.tokens.len());
    }
    assert!(TextClassifier::from_registry(&registry, "no-such-model").is_err());
}

#[test]
fn decode_vectors_match_the_python_reference() {
    let dir = model("cheque-words-decoder");
    let file = read_json(&dir.join("decode_vectors.json"));
    let manifest = read_json(&dir.join("manifest.json"));
    // The file was decoded under the spec this implementation follows.
    assert_eq!(file["spec"], manifest["decoding"]["greedy_and_beam"]);
    let t = translator();
    assert_eq!(file["max_steps"].as_u64(), Some(t.max_steps() as u64));
    let k = file["beam"].as_u64().unwrap() as usize;
    assert_eq!(k, t.default_beam());

    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 20, "only {} vectors", vectors.len());
    // Some vectors must tell beam search from greedy, or beam is untested.
    assert!(
        vectors.iter().any(|v| v["greedy"] != v["beam4"]),
        "no vector where beam search and greedy decoding differ"
    );
    let mut mismatches = Vec::new();
    for v in vectors {
        let text = v["text"].as_str().unwrap();
        let mut differ = |what: &str, got: String, want: &Value| {
            mismatches.push(format!("{text:?} {what}: Rust {got}, Python {want}"));
        };
        let (tokens, ids) = t.encode_source(text).unwrap();
        if serde_json::json!(tokens) != v["source_tokens"] {
            differ("source_tokens", format!("{tokens:?}"), &v["source_tokens"]);
        }
        if serde_json::json!(ids) != v["src_ids"] {
            differ("src_ids", format!("{ids:?}"), &v["src_ids"]);
        }
        if serde_json::json!(vec![1.0; ids.len()]) != v["src_mask"] {
            differ("src_mask", format!("{} ones", ids.len()), &v["src_mask"]);
        }
        let greedy = t.translate_blocking(text, Search::Greedy).unwrap();
        if greedy.text != v["greedy"] {
            differ("greedy", greedy.text.clone(), &v["greedy"]);
        }
        let beam = t.translate_blocking(text, Search::Beam(k)).unwrap();
        if beam.text != v["beam4"] {
            differ("beam", beam.text.clone(), &v["beam4"]);
        }
        // Python rounds the score to 6 decimals.
        let score = v["beam4_normalised_log_prob"].as_f64().unwrap();
        if (beam.normalised_log_prob - score).abs() > 2e-6 {
            differ(
                "beam score",
                beam.normalised_log_prob.to_string(),
                &v["beam4_normalised_log_prob"],
            );
        }
        for tr in [&greedy, &beam] {
            assert_eq!(tr.source_ids, ids);
            assert_eq!(tr.alignment.len(), tr.text.chars().count(), "{text:?}");
            for row in &tr.alignment {
                assert_eq!(row.len(), ids.len());
                let sum: f32 = row.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-4,
                    "{text:?}: alignment row sums to {sum}"
                );
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches over {} vectors:\n{}",
        mismatches.len(),
        vectors.len(),
        mismatches.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translate_through_the_registry_matches_the_blocking_path() {
    let (_root, registry) = registry_with(&["cheque-words-decoder", "cheque-words-encoder"]).await;
    let t = Translator::from_registry(&registry, "cheque-words-encoder").unwrap();
    let text = "five hundred forty-five and 25/100";
    let (greedy, beam) = tokio::join!(
        t.translate(text, Search::Greedy),
        t.translate(text, Search::Beam(4))
    );
    let (greedy, beam) = (greedy.unwrap(), beam.unwrap());
    let direct =
        tokio::task::block_in_place(|| t.translate_blocking(text, Search::Greedy)).unwrap();
    assert_eq!(greedy, direct);
    assert_eq!(beam.text, direct.text);
    // The decoder alone is not a translator.
    assert!(Translator::from_registry(&registry, "cheque-words-decoder").is_err());
    let err = t.translate("- -", Search::Greedy).await.unwrap_err();
    assert!(err.to_string().contains("no source tokens"), "{err}");
}

#[test]
fn cli_classify_prints_label_probability_and_top_tokens() {
    let dir = model("merchant-descriptor");
    let texts = ["SQ *BLUE BOTTLE COFFEE", "CVS/PHARMACY #01234"];
    let out = stdout_of(&[
        "models",
        "classify",
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--model",
        dir.to_str().unwrap(),
    ]);
    let results = TextClassifier::load(&dir)
        .unwrap()
        .classify_blocking(&texts)
        .unwrap();
    let want: String = texts
        .iter()
        .zip(&results)
        .map(|(t, c)| text::render(t, c, 3))
        .collect();
    assert_eq!(out, want);
    assert!(
        out.contains(&format!("label:      {} (p = ", results[0].label)),
        "{out}"
    );
    assert!(out.contains("coffee"), "{out}");
}

#[test]
fn cli_translate_prints_the_digits_and_the_alignment() {
    let file = read_json(&model("cheque-words-decoder").join("decode_vectors.json"));
    let vectors = file["vectors"].as_array().unwrap();
    let t = translator();
    for (v, beam) in [
        (&vectors[0], None),
        (&vectors[vectors.len() / 2], Some("4")),
    ] {
        let text = v["text"].as_str().unwrap();
        let mut args = vec!["models", "translate", text];
        let (search, want) = match beam {
            None => (Search::Greedy, &v["greedy"]),
            Some(k) => {
                args.extend(["--beam", k]);
                (Search::Beam(k.parse().unwrap()), &v["beam4"])
            }
        };
        let out = stdout_of(&args);
        let first = out.lines().next().unwrap();
        assert_eq!(first, format!("{text:?} → {}", want.as_str().unwrap()));
        let translation = t.translate_blocking(text, search).unwrap();
        assert_eq!(out, seq2seq::render(text, &translation));
        // One table row per output character, one column per source token.
        let rows = out
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .count();
        assert_eq!(rows, translation.text.chars().count(), "{out}");
    }
    let failed = riskstream(&["models", "translate", "  "]);
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("no source tokens"));
}
