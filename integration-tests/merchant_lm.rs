//! The merchant language model through the real ONNX Runtime (no Kafka or
//! Postgres): the surprise the engine stores (`mcc_surprise`) equals the one
//! the Python reference computed at training time (`surprise_vectors.json`),
//! from the featurizer's MCC context as well as from the windows themselves,
//! and a row's value does not depend on the rows it is batched with.

use crate::common::lm_dir;
use chrono::{TimeZone, Utc};
use riskstream::event::{Channel, Transaction};
use riskstream::features::{featurize, CardState, TerminalStats};
use riskstream::models::lm::MerchantLm;
use riskstream::registry::{BatchOptions, LoadOptions};
use serde_json::Value;
use std::sync::Arc;

const TOLERANCE: f32 = 1e-5;

fn lm(max_batch: usize) -> MerchantLm {
    let opts = LoadOptions {
        batch: BatchOptions {
            max_batch,
            ..Default::default()
        },
        ..Default::default()
    };
    MerchantLm::load(&lm_dir(), &opts).expect("the committed merchant-lm loads and verifies")
}

fn vectors() -> Vec<Value> {
    let file: Value =
        serde_json::from_slice(&std::fs::read(lm_dir().join("surprise_vectors.json")).unwrap())
            .unwrap();
    let vectors = file["vectors"].as_array().unwrap().clone();
    assert!(!vectors.is_empty());
    vectors
}

fn mccs(v: &Value) -> Vec<Option<i32>> {
    v["mccs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_i64().map(|m| m as i32))
        .collect()
}

fn f32s(v: &Value) -> Vec<f32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn tx(card: &str, i: usize, mcc: Option<i32>) -> Transaction {
    Transaction {
        tx_id: format!("{card}-{i}"),
        ts: Utc
            .timestamp_opt(1_767_225_600 + i as i64 * 3600, 0)
            .unwrap(),
        card_id: card.into(),
        terminal_id: "t".into(),
        amount: 12.5,
        currency: None,
        mcc,
        channel: Some(Channel::Pos),
        country: Some("FR".into()),
    }
}

#[test]
fn surprise_of_the_last_transaction_matches_the_python_vectors() {
    let lm = lm(64);
    for (n, v) in vectors().iter().enumerate() {
        let mccs = mccs(v);
        let k = v["last_tx"]["context_len"].as_u64().unwrap() as usize;
        assert_eq!(mccs.len(), k + 1, "vector {n}: the context and the target");
        let (past, current) = (&mccs[..k], *mccs.last().unwrap());
        // The window is the one the reference ran (extended by the target
        // there when it fits).
        let (tokens, mask, at) = lm.window(past);
        assert_eq!(at, k);
        let want_tokens: Vec<i64> = serde_json::from_value(v["tokens"].clone()).unwrap();
        let want_mask = f32s(&v["token_mask"]);
        assert_eq!(tokens[..=k], want_tokens[..=k], "vector {n}");
        assert_eq!(mask[..=k], want_mask[..=k], "vector {n}");
        let got = lm
            .surprise_blocking(std::iter::once((current, past)))
            .unwrap()[0];
        let want = v["last_tx"]["surprise"].as_f64().unwrap() as f32;
        assert!(
            (got - want).abs() <= TOLERANCE,
            "vector {n} ({}): Rust {got}, Python {want}",
            v["last_tx"]["tx_id"]
        );
    }
}

/// Every transaction of each vector's sequence, fed through the featurizer
/// as a fresh card (in two batches), gets the Python surprise of its position:
/// the first from `<bos>` alone, each later one after all those before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surprise_from_the_featurizer_matches_the_python_vectors() {
    let lm = Arc::new(tokio::task::block_in_place(|| lm(8)));
    let terminals = TerminalStats::default();
    for (n, v) in vectors().iter().enumerate() {
        let mccs = mccs(v);
        let card = format!("card{n}");
        let txs: Vec<Transaction> = mccs
            .iter()
            .enumerate()
            .map(|(i, &m)| tx(&card, i, m))
            .collect();
        let mut cards = CardState::default();
        let mut got = Vec::new();
        for part in txs.chunks(txs.len() / 2 + 1) {
            let batch = Arc::new(featurize(part, &mut cards, &terminals, 7).unwrap());
            got.extend(lm.surprise(batch).await.unwrap());
        }
        let per_position = f32s(&v["surprise"]);
        let last = v["last_tx"]["surprise"].as_f64().unwrap() as f32;
        let want: Vec<f32> = (0..mccs.len())
            .map(|j| per_position.get(j).copied().unwrap_or(last))
            .collect();
        assert_eq!(*want.last().unwrap(), last, "vector {n}");
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= TOLERANCE,
                "vector {n}, transaction {j}: Rust {g}, Python {w}"
            );
        }
        assert_eq!(got.len(), want.len());
    }
}

/// The engine stores the surprise and a replay must store the same bytes,
/// whatever rows a batch happened to hold: a row's value is bit-for-bit the
/// same alone, in one large run, and in small runs.
#[test]
fn a_rows_surprise_does_not_depend_on_its_batch() {
    let vocab: Vec<Option<i32>> = [5411, 5812, 5999, 5311, 7011, 6011, 1234]
        .into_iter()
        .map(Some)
        .chain([None])
        .collect();
    // Deterministic pseudo-random contexts of every length 0..=40.
    let mut state = 7u64;
    let mut next = |n: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        (state >> 33) as usize % n
    };
    let rows: Vec<(Option<i32>, Vec<Option<i32>>)> = (0..123)
        .map(|i| {
            let past = (0..i % 41).map(|_| vocab[next(vocab.len())]).collect();
            (vocab[next(vocab.len())], past)
        })
        .collect();
    let run = |lm: &MerchantLm, rows: &[(Option<i32>, Vec<Option<i32>>)]| {
        lm.surprise_blocking(rows.iter().map(|(m, p)| (*m, p.as_slice())))
            .unwrap()
    };
    let (big, small) = (lm(512), lm(7));
    let together = run(&big, &rows);
    let in_sevens = run(&small, &rows);
    let alone: Vec<f32> = rows
        .iter()
        .flat_map(|r| run(&big, std::slice::from_ref(r)))
        .collect();
    let reversed: Vec<f32> = {
        let mut r = rows.clone();
        r.reverse();
        let mut out = run(&big, &r);
        out.reverse();
        out
    };
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&together), bits(&alone));
    assert_eq!(bits(&together), bits(&in_sevens));
    assert_eq!(bits(&together), bits(&reversed));
    assert!(together.iter().all(|s| s.is_finite() && *s >= 0.0));
    // Contexts beyond the window read only its last max_len − 1 MCCs.
    let t = big.max_len();
    let long = &rows.iter().find(|r| r.1.len() > t).unwrap();
    let cut = &long.1[long.1.len() - (t - 1)..];
    assert_eq!(
        run(&big, std::slice::from_ref(long)),
        run(&big, &[(long.0, cut.to_vec())])
    );
}
