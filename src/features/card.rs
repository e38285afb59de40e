//! Per-card memory: the card's recent transactions, enough to compute every
//! card window and the history sequence for the next transaction.
//!
//! The state only ever contains transactions the engine has featurized, in
//! partition order; after a restart it is rebuilt from `risk_decisions`, which
//! holds exactly the committed ones, so both paths give the same features.

use super::{CARD_WINDOW_DAYS, HISTORY_LEN, MCC_CONTEXT_LEN, MS_PER_DAY};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// What the featurizer remembers of one past transaction of a card.
#[derive(Debug, Clone, PartialEq)]
pub struct PastTx {
    pub tx_id: Arc<str>,
    pub ts_ms: i64,
    pub amount: f64,
    pub terminal_id: Arc<str>,
    pub country: Option<Arc<str>>,
    pub ecom: bool,
    /// Merchant category code, when the transaction had one (the merchant
    /// language model's context).
    pub mcc: Option<i32>,
}

/// How far back a card's transactions are kept: the longest window plus one
/// day of slack for slightly late events.
pub const RETENTION_MS: i64 = (CARD_WINDOW_DAYS[2] + 1) * MS_PER_DAY;

/// At most this many transactions are remembered per card, however busy it
/// is (a merchant's test card may see a million a day): card windows then
/// cover the card's most recent `MAX_PER_CARD` transactions within the
/// window, so their counts saturate at this value and their mean amounts
/// are over the most recent ones. Storage reloads keep the same number, and
/// the windows do not depend on batch boundaries either way.
pub const MAX_PER_CARD: usize = 10_000;

/// How many of a card's most recent transactions are kept whatever their
/// age, for a featurizer with histories of `history_len`: the history
/// sequence and the MCC context both read that far back. Storage reloads
/// (`sink::state::load_cards`) use the same number, so a restarted engine
/// remembers exactly what a fault-free one would.
pub fn kept_per_card(history_len: usize) -> usize {
    history_len.max(MCC_CONTEXT_LEN).max(1)
}

#[derive(Debug)]
pub struct CardState {
    cards: HashMap<String, VecDeque<PastTx>>,
    /// Length of the history sequence; at least `kept_per_card(history_len)`
    /// transactions of each card are kept.
    history_len: usize,
    /// At most this many per card ([`MAX_PER_CARD`] outside tests).
    cap: usize,
}

/// The online engine's state: histories of [`HISTORY_LEN`].
impl Default for CardState {
    fn default() -> Self {
        CardState::with_history_len(HISTORY_LEN)
    }
}

impl CardState {
    /// State for a featurizer whose history sequence is `history_len` long
    /// (offline data for models with another K; the engine uses [`HISTORY_LEN`]).
    pub fn with_history_len(history_len: usize) -> Self {
        CardState {
            cards: HashMap::new(),
            history_len,
            cap: MAX_PER_CARD.max(kept_per_card(history_len)),
        }
    }

    /// A smaller per-card cap, for tests of what happens beyond it.
    #[cfg(test)]
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap.max(kept_per_card(self.history_len));
        self
    }

    /// The most transactions remembered per card.
    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn history_len(&self) -> usize {
        self.history_len
    }

    pub fn contains(&self, card_id: &str) -> bool {
        self.cards.contains_key(card_id)
    }

    /// Install a card's history loaded from storage (sorted by time).
    pub fn load(&mut self, card_id: String, mut txs: Vec<PastTx>) {
        txs.sort_by_key(|t| t.ts_ms);
        let excess = txs.len().saturating_sub(self.cap);
        txs.drain(..excess);
        self.cards.insert(card_id, txs.into());
    }

    /// The card's remembered transactions, oldest first.
    pub fn history(&self, card_id: &str) -> impl Iterator<Item = &PastTx> {
        self.cards.get(card_id).into_iter().flatten()
    }

    /// Remember a featurized transaction, keeping time order, and forget what
    /// no window can reach any more.
    pub fn push(&mut self, card_id: &str, tx: PastTx) {
        let txs = self.cards.entry(card_id.to_owned()).or_default();
        let at = txs
            .iter()
            .rposition(|t| t.ts_ms <= tx.ts_ms)
            .map_or(0, |i| i + 1);
        txs.insert(at, tx);
        let newest = txs.back().map_or(i64::MIN, |t| t.ts_ms);
        // Keep the entries the history sequence and the MCC context read,
        // whatever their age (at least the previous one, which
        // `secs_since_prev_log` reads).
        let keep = kept_per_card(self.history_len);
        while txs.len() > keep && txs.front().is_some_and(|t| t.ts_ms < newest - RETENTION_MS) {
            txs.pop_front();
        }
        while txs.len() > self.cap {
            txs.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.cards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// Drop everything (on partition revocation: the next owner may change it).
    pub fn clear(&mut self) {
        self.cards.clear();
    }

    /// Forget cards idle since before `before_ms`; they reload from storage if seen again.
    pub fn evict_idle(&mut self, before_ms: i64) {
        self.cards
            .retain(|_, txs| txs.back().is_some_and(|t| t.ts_ms >= before_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(id: &str, ts_ms: i64) -> PastTx {
        PastTx {
            tx_id: id.into(),
            ts_ms,
            amount: 1.0,
            terminal_id: "t".into(),
            country: None,
            ecom: false,
            mcc: None,
        }
    }

    #[test]
    fn keeps_time_order_and_forgets_only_what_no_window_needs() {
        let mut s = CardState::default();
        s.push("c", tx("b", 2_000));
        s.push("c", tx("a", 1_000)); // late event goes before
        let ids: Vec<_> = s.history("c").map(|t| t.tx_id.to_string()).collect();
        assert_eq!(ids, ["a", "b"]);
        for i in 0..40 {
            s.push("c", tx(&format!("x{i}"), 10 * MS_PER_DAY + i * MS_PER_DAY));
        }
        let kept: Vec<_> = s.history("c").collect();
        let newest = kept.last().unwrap().ts_ms;
        assert!(kept.iter().all(|t| t.ts_ms >= newest - RETENTION_MS));
        assert!(kept.len() >= HISTORY_LEN);
    }

    #[test]
    fn old_transactions_are_kept_for_the_mcc_context() {
        // 100 transactions ten days apart: retention alone would keep 4.
        let mut s = CardState::default();
        for i in 0..100 {
            s.push("c", tx(&format!("x{i}"), i * 10 * MS_PER_DAY));
        }
        assert_eq!(s.history("c").count(), MCC_CONTEXT_LEN);
        assert_eq!(s.history("c").last().unwrap().tx_id.as_ref(), "x99");
    }

    #[test]
    fn a_busy_card_is_capped() {
        let mut s = CardState::default().with_cap(100);
        for i in 0..1_000 {
            s.push("merchant-test-card", tx(&format!("x{i}"), i * 1_000));
        }
        assert_eq!(s.history("merchant-test-card").count(), 100);
        assert_eq!(
            s.history("merchant-test-card")
                .next()
                .unwrap()
                .tx_id
                .as_ref(),
            "x900",
            "the most recent are kept"
        );
    }

    #[test]
    fn a_longer_history_keeps_more_old_transactions() {
        let (mut short, mut long) = (CardState::default(), CardState::with_history_len(64));
        // 100 transactions a day apart: only the last 32 are within retention.
        for i in 0..100 {
            short.push("c", tx(&format!("x{i}"), i * MS_PER_DAY));
            long.push("c", tx(&format!("x{i}"), i * MS_PER_DAY));
        }
        assert_eq!(short.history("c").count(), 32);
        assert_eq!(long.history("c").count(), 64);
        assert_eq!(long.history("c").last().unwrap().tx_id.as_ref(), "x99");
    }
}
