//! The wire events: card transactions and fraud labels, as JSON on Kafka.
//!
//! This module owns the schema and its validation. Decoding never panics and
//! never allocates more than the input: a record that does not decode or
//! validate becomes a [`DecodeError`] whose text is the dead-letter reason.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One card transaction (`transactions` topic, key = `card_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    pub tx_id: String,
    pub ts: DateTime<Utc>,
    pub card_id: String,
    pub terminal_id: String,
    /// At least 0: zero-amount authorisations are scored like any other.
    pub amount: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Pos,
    Ecom,
    Atm,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Pos => "pos",
            Channel::Ecom => "ecom",
            Channel::Atm => "atm",
        }
    }

    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "pos" => Some(Channel::Pos),
            "ecom" => Some(Channel::Ecom),
            "atm" => Some(Channel::Atm),
            _ => None,
        }
    }
}

/// A confirmed fraud or chargeback report (`labels` topic), arriving days later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub tx_id: String,
    pub is_fraud: bool,
    pub reported_at: DateTime<Utc>,
}

/// Why a record was rejected; the `Display` text is stored as the dead-letter reason.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("empty value")]
    Empty,
    #[error("value too large: {0} bytes (limit {1})")]
    TooLarge(usize, usize),
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid field `{field}`: {reason}")]
    Field { field: &'static str, reason: String },
}

impl DecodeError {
    /// A short, bounded label for metrics (`riskstream_dead_letters_total{reason}`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge(..) => "too_large",
            DecodeError::Json(_) => "json",
            DecodeError::Field { field, .. } => match *field {
                "tx_id" => "invalid_tx_id",
                "card_id" => "invalid_card_id",
                "terminal_id" => "invalid_terminal_id",
                "amount" => "invalid_amount",
                "currency" => "invalid_currency",
                "country" => "invalid_country",
                "mcc" => "invalid_mcc",
                _ => "invalid_field",
            },
        }
    }
}

/// Largest record accepted; anything larger is dead-lettered without parsing.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

fn field(field: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Field {
        field,
        reason: reason.into(),
    }
}

fn check_len(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(DecodeError::TooLarge(bytes.len(), MAX_RECORD_BYTES));
    }
    Ok(())
}

/// Longest id accepted (`tx_id`, `card_id`, `terminal_id`), in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Ids are keys in Postgres and in every log line: printable text only. A
/// NUL would be refused by Postgres (SQLSTATE 22021) long after decoding,
/// and other control characters forge log lines.
fn check_id(name: &'static str, v: &str) -> Result<(), DecodeError> {
    if v.trim().is_empty() {
        return Err(field(name, "must not be empty"));
    }
    if v.len() > MAX_ID_BYTES {
        return Err(field(name, format!("longer than {MAX_ID_BYTES} bytes")));
    }
    if let Some(c) = v.chars().find(|c| c.is_control()) {
        return Err(field(
            name,
            format!("contains the control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// A reason safe to store and log: control characters escaped (serde's
/// messages quote the offending input, which may hold a NUL), at most
/// 512 bytes.
pub fn printable(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(512));
    for c in reason.chars() {
        if out.len() >= 512 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// So that code taking a batch of things that carry a transaction (the
/// featurizer) takes plain transactions too.
impl AsRef<Transaction> for Transaction {
    fn as_ref(&self) -> &Transaction {
        self
    }
}

impl Transaction {
    /// Decode and validate one `transactions` record.
    pub fn decode(bytes: &[u8]) -> Result<Transaction, DecodeError> {
        check_len(bytes)?;
        let tx: Transaction = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Json(printable(&e.to_string())))?;
        tx.validate()?;
        Ok(tx)
    }

    pub fn validate(&self) -> Result<(), DecodeError> {
        check_id("tx_id", &self.tx_id)?;
        check_id("card_id", &self.card_id)?;
        check_id("terminal_id", &self.terminal_id)?;
        // Zero is a transaction: $0 authorisations are how card testing starts.
        if !self.amount.is_finite() || self.amount < 0.0 {
            return Err(field(
                "amount",
                format!("must be a number >= 0, got {}", self.amount),
            ));
        }
        if self.amount > 1e9 {
            return Err(field(
                "amount",
                format!("implausibly large: {}", self.amount),
            ));
        }
        if let Some(c) = &self.currency {
            if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(field("currency", format!("not an ISO 4217 code: {c:?}")));
            }
        }
        if let Some(c) = &self.country {
            if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(field(
                    "country",
                    format!("not an ISO 3166 alpha-2 code: {c:?}"),
                ));
            }
        }
        if let Some(m) = self.mcc {
            if !(0..=9999).contains(&m) {
                return Err(field(
                    "mcc",
                    format!("not a 4-digit merchant category code: {m}"),
                ));
            }
        }
        Ok(())
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Transaction always serializes")
    }
}

impl Label {
    pub fn decode(bytes: &[u8]) -> Result<Label, DecodeError> {
        check_len(bytes)?;
        let l: Label = serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Json(printable(&e.to_string())))?;
        check_id("tx_id", &l.tx_id)?;
        Ok(l)
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a Label always serializes")
    }
}

/// The decoders' contract on any bytes, as assertions: both decoders
/// return; every rejection is printable (it becomes a dead letter's reason
/// and a log line); every accepted record is one the engine can key, store
/// and re-encode unchanged. `make fuzz` checks it on what AFL++ generates
/// (`fuzz/` compiles this file on its own), `make test` on the committed
/// corpus (`tests::the_fuzz_corpus_keeps_the_decoders_contract`).
pub mod contract {
    use super::{DecodeError, Label, Transaction};

    /// Run one input through both decoders; panics if it breaks the contract.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = r#"{"tx_id":"t1","ts":"2026-01-01T10:00:00Z","card_id":"c1","terminal_id":"m1","amount":12.5,"currency":"EUR","mcc":5411,"channel":"pos","country":"FR","extra":1}"#;

    /// Every input `make fuzz` kept (and the hand-written seeds) replayed
    /// on each `make test`, so a decoder change that breaks one fails here
    /// without a fuzz run.
    #[test]
    fn the_fuzz_corpus_keeps_the_decoders_contract() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let mut replayed = 0;
        for dir in ["seeds", "min"] {
            for entry in std::fs::read_dir(corpus.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let outcome = std::panic::catch_unwind(|| contract::check(&bytes));
                assert!(outcome.is_ok(), "{} breaks the contract", path.display());
                replayed += 1;
            }
        }
        assert!(replayed >= 100, "only {replayed} corpus inputs found");
    }

    #[test]
    fn decodes_a_valid_transaction_and_ignores_unknown_fields() {
        let tx = Transaction::decode(GOOD.as_bytes()).unwrap();
        assert_eq!(tx.card_id, "c1");
        assert_eq!(tx.channel, Some(Channel::Pos));
        assert_eq!(Transaction::decode(&tx.encode()).unwrap(), tx);
    }

    #[test]
    fn rejects_bad_records_with_a_named_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty value"),
            ("{not json", "invalid JSON"),
            (
                r#"{"tx_id":"t","ts":"2026-01-01T00:00:00Z","card_id":"c","amount":1}"#,
                "terminal_id",
            ),
            (
                r#"{"tx_id":"t","ts":"2026-01-01T00:00:00Z","card_id":"c","terminal_id":"m","amount":-3}"#,
                "amount",
            ),
            (
                r#"{"tx_id":"t","ts":"2026-01-01T00:00:00Z","card_id":"c","terminal_id":"m","amount":"ten"}"#,
                "invalid JSON",
            ),
            (
                r#"{"tx_id":"t","ts":"yesterday","card_id":"c","terminal_id":"m","amount":1}"#,
                "invalid JSON",
            ),
            (
                r#"{"tx_id":"","ts":"2026-01-01T00:00:00Z","card_id":"c","terminal_id":"m","amount":1}"#,
                "tx_id",
            ),
        ];
        for (input, want) in cases {
            let err = Transaction::decode(input.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want),
                "{input:?}: {err:?} should mention {want:?}"
            );
        }
        // JSON escapes put a NUL, a newline and an ANSI escape into ids.
        for (field, original, hostile) in [
            ("card_id", "c1", r"ca\u0000rd"),
            ("tx_id", "t1", r"t\n1"),
            ("terminal_id", "m1", r"m\u001b[31m"),
        ] {
            let json = GOOD.replace(
                &format!(r#""{field}":"{original}""#),
                &format!(r#""{field}":"{hostile}""#),
            );
            let err = Transaction::decode(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(field) && err.contains("control character"),
                "{json}: {err}"
            );
        }
        let big = vec![b'x'; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            Transaction::decode(&big),
            Err(DecodeError::TooLarge(..))
        ));
    }

    #[test]
    fn zero_amounts_are_transactions_and_negative_or_non_finite_ones_are_not() {
        let with = |amount: &str| GOOD.replace("12.5", amount);
        assert_eq!(
            Transaction::decode(with("0").as_bytes()).unwrap().amount,
            0.0
        );
        assert_eq!(
            Transaction::decode(with("0.0").as_bytes()).unwrap().amount,
            0.0
        );
        assert_eq!(
            Transaction::decode(with("-0.0").as_bytes()).unwrap().amount,
            0.0
        );
        for bad in ["-0.01", "-1", "1e400", "NaN"] {
            assert!(
                Transaction::decode(with(bad).as_bytes()).is_err(),
                "{bad} must be rejected"
            );
        }
    }

    #[test]
    fn reasons_never_carry_control_characters() {
        let json = GOOD.replace(r#""channel":"pos""#, "\"channel\":\"p\\u0000s\"");
        let err = Transaction::decode(json.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(!err.chars().any(char::is_control), "{err:?}");
        assert!(printable(&"x".repeat(5000)).len() < 600);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Err(e) = Transaction::decode(&bytes) {
                prop_assert!(!e.to_string().chars().any(char::is_control));
            }
            let _ = Label::decode(&bytes);
        }

        /// Any accepted id is printable: hostile strings in a valid-looking
        /// record are either refused at decode or safe everywhere after.
        #[test]
        fn accepted_ids_hold_no_control_characters(card in "\\PC{0,8}[\\x00-\\x1f\\x7f]?\\PC{0,8}") {
            let json = GOOD.replace(r#""card_id":"c1""#, &format!(r#""card_id":{}"#, serde_json::to_string(&card).unwrap()));
            if let Ok(tx) = Transaction::decode(json.as_bytes()) {
                prop_assert!(!tx.card_id.chars().any(char::is_control));
                prop_assert!(!tx.card_id.trim().is_empty());
            }
        }

        #[test]
        fn valid_transactions_round_trip(amount in 0.01f64..1e6, secs in 0i64..4_000_000_000) {
            let tx = Transaction {
                tx_id: "t".into(), ts: DateTime::from_timestamp(secs, 0).unwrap(), card_id: "c".into(),
                terminal_id: "m".into(), amount, currency: None, mcc: None, channel: Some(Channel::Ecom), country: None,
            };
            prop_assert_eq!(Transaction::decode(&tx.encode()).unwrap(), tx);
        }
    }
}
