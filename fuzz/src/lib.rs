//! The properties the decoder fuzz target checks, on one input.
//!
//! `src/event.rs` is compiled here from its own file instead of through the
//! `riskstream` crate, which would drag polars, ort and rdkafka into every
//! fuzz build. Whatever bytes arrive, both decoders must return, every
//! rejection must be printable (it is stored as the dead-letter reason and
//! logged), and every accepted record must be one the engine can key, store
//! and re-encode unchanged. A violated property panics, which AFL records as
//! a crash.

#[allow(dead_code)]
#[path = "../../src/event.rs"]
mod event;

pub use event::{DecodeError, Label, Transaction};

/// Run one input through both decoders and assert their contracts.
pub fn check(bytes: &[u8]) {
    match Transaction::decode(bytes) {
        Ok(tx) => check_transaction(&tx),
        Err(e) => check_reason(&e),
    }
    match Label::decode(bytes) {
        Ok(label) => check_label(&label),
        Err(e) => check_reason(&e),
    }
}

fn check_reason(e: &DecodeError) {
    let reason = e.to_string();
    assert!(
        !reason.chars().any(char::is_control),
        "rejection reason holds a control character: {reason:?}"
    );
}

fn check_id(name: &str, id: &str) {
    assert!(
        !id.chars().any(char::is_control),
        "accepted {name} holds a control character: {id:?}"
    );
    assert!(!id.trim().is_empty(), "accepted blank {name}: {id:?}");
}

fn check_transaction(tx: &Transaction) {
    assert!(
        tx.amount.is_finite() && tx.amount >= 0.0,
        "accepted amount {}",
        tx.amount
    );
    check_id("tx_id", &tx.tx_id);
    check_id("card_id", &tx.card_id);
    check_id("terminal_id", &tx.terminal_id);
    let encoded = tx.encode();
    match Transaction::decode(&encoded) {
        Ok(again) => assert_eq!(&again, tx, "re-encoded as {:?}", lossy(&encoded)),
        Err(e) => panic!("re-encoded {:?} is rejected: {e}", lossy(&encoded)),
    }
}

fn check_label(label: &Label) {
    check_id("tx_id", &label.tx_id);
    let encoded = label.encode();
    match Label::decode(&encoded) {
        Ok(again) => assert_eq!(&again, label, "re-encoded as {:?}", lossy(&encoded)),
        Err(e) => panic!("re-encoded {:?} is rejected: {e}", lossy(&encoded)),
    }
}

fn lossy(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}
