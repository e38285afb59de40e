//! Per-card memory: the card's recent transactions, enough to compute every
//! card window and the history sequence for the next transaction.
//!
//! The state only ever contains transactions the engine has featurized, in
//! partition order; after a restart it is rebuilt from `risk_decisions`, which
//! holds exactly the committed ones, so both paths give the same features.
//!
//! Windows are incremental: each remembered transaction carries the running
//! total of the card's cents before it, so a window's count and sum are two
//! binary searches and a subtraction, whatever the card's size.

use super::{IdHasher, CARD_WINDOW_DAYS, HISTORY_LEN, MCC_CONTEXT_LEN, MS_PER_DAY};
use std::collections::{HashMap, HashSet, VecDeque};
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

/// An amount in integer cents: window sums are exact and never depend on
/// the order they were added in.
pub fn cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

/// The fields of a past transaction's history entry that depend on it
/// alone, not on the transaction reading it: computed once when it is
/// remembered instead of once per later transaction of its card that reads
/// it (up to `history_len` times; the logarithm was 17 % of the
/// featurizer's instructions).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fixed {
    /// `ln(1 + amount)`.
    pub amount_log: f32,
    /// Time of day, as a fraction of the (UTC) day.
    pub day_fraction: f32,
}

impl Fixed {
    fn of(tx: &PastTx) -> Fixed {
        Fixed {
            amount_log: tx.amount.ln_1p() as f32,
            day_fraction: (tx.ts_ms.rem_euclid(MS_PER_DAY) as f64 / MS_PER_DAY as f64) as f32,
        }
    }
}

/// A remembered transaction, with the running total of the card's cents
/// before it (i128: a card's lifetime total cannot overflow).
#[derive(Debug)]
struct Kept {
    tx: PastTx,
    fixed: Fixed,
    cents: i64,
    cents_before: i128,
}

/// A card's transactions, oldest first by event time.
type Kepts = VecDeque<Kept>;

static NO_PAST: Kepts = VecDeque::new();

#[derive(Debug)]
pub struct CardState {
    cards: HashMap<String, Kepts, IdHasher>,
    /// One copy of each terminal id and country the remembered transactions
    /// name: see [`CardState::shared`].
    strings: SharedStrings,
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

/// A card's past as a transaction at `ts_ms` sees it: the remembered
/// transactions up to that time (a late event does not see the card's
/// later ones, which arrived before it).
pub struct CardPast<'a> {
    kept: &'a Kepts,
    end: usize,
    cap: usize,
}

impl<'a> CardPast<'a> {
    pub fn len(&self) -> usize {
        self.end
    }

    pub fn is_empty(&self) -> bool {
        self.end == 0
    }

    /// The most recent one.
    pub fn last(&self) -> Option<&'a PastTx> {
        self.end.checked_sub(1).map(|i| &self.kept[i].tx)
    }

    /// The `n` most recent, oldest first.
    pub fn tail(&self, n: usize) -> impl DoubleEndedIterator<Item = &'a PastTx> {
        self.tail_fixed(n).map(|(tx, _)| tx)
    }

    /// The `n` most recent with their [`Fixed`] history fields, oldest first.
    pub fn tail_fixed(&self, n: usize) -> impl DoubleEndedIterator<Item = (&'a PastTx, Fixed)> {
        self.kept
            .range(self.end.saturating_sub(n)..self.end)
            .map(|k| (&k.tx, k.fixed))
    }

    /// `(count, cents)` of the window `[ts_ms − size_ms, ts_ms]`, closed on
    /// both ends: the past transactions in it and the current one (`own`
    /// cents). Beyond the per-card cap it covers the most recent `cap`.
    pub fn window(&self, ts_ms: i64, size_ms: i64, own: i64) -> (i64, i64) {
        // Everything after `end` is later than the window's start too.
        let first = self.kept.partition_point(|k| k.tx.ts_ms < ts_ms - size_ms);
        let first = first.max(self.end.saturating_sub(self.cap.saturating_sub(1)));
        if first == self.end {
            return (1, own);
        }
        let last = &self.kept[self.end - 1];
        let sum = last.cents_before + last.cents as i128 - self.kept[first].cents_before;
        ((self.end - first + 1) as i64, sum as i64 + own)
    }
}

impl CardState {
    /// State for a featurizer whose history sequence is `history_len` long
    /// (offline data for models with another K; the engine uses [`HISTORY_LEN`]).
    pub fn with_history_len(history_len: usize) -> Self {
        CardState {
            cards: HashMap::default(),
            strings: SharedStrings::default(),
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

    /// Install a card's history loaded from storage.
    pub fn load(&mut self, card_id: String, mut txs: Vec<PastTx>) {
        for tx in &mut txs {
            self.strings.adopt(tx);
        }
        txs.sort_by_key(|t| t.ts_ms);
        let excess = txs.len().saturating_sub(self.cap);
        let mut total = 0i128;
        let kept = txs
            .into_iter()
            .skip(excess)
            .map(|tx| {
                let cents = cents(tx.amount);
                let k = Kept {
                    fixed: Fixed::of(&tx),
                    tx,
                    cents,
                    cents_before: total,
                };
                total += cents as i128;
                k
            })
            .collect();
        self.cards.insert(card_id, kept);
    }

    /// The card's remembered transactions, oldest first.
    pub fn history(&self, card_id: &str) -> impl Iterator<Item = &PastTx> {
        self.cards.get(card_id).into_iter().flatten().map(|k| &k.tx)
    }

    /// The remembered transactions' copy of `s`, a terminal id or a country,
    /// if any of them names it. Every [`PastTx`] in the state holds these
    /// copies, so a remembered transaction names `s` exactly when its
    /// `terminal_id` (or `country`) is this very `Arc` ([`Arc::ptr_eq`]):
    /// comparing a history of 16 with the current transaction then reads no
    /// string, where comparing the text read 32 strings scattered over the
    /// heap, most of them cache misses (4 % of the engine's CPU in the
    /// profile before this).
    pub fn shared(&self, s: &str) -> Option<&Arc<str>> {
        self.strings.set.get(s)
    }

    /// The card's past as a transaction at `ts_ms` sees it.
    pub fn past(&self, card_id: &str, ts_ms: i64) -> CardPast<'_> {
        let kept = self.cards.get(card_id).unwrap_or(&NO_PAST);
        // Nearly always the newest: search from the back.
        let end = if kept.back().is_none_or(|k| k.tx.ts_ms <= ts_ms) {
            kept.len()
        } else {
            kept.partition_point(|k| k.tx.ts_ms <= ts_ms)
        };
        CardPast {
            kept,
            end,
            cap: self.cap,
        }
    }

    /// Remember a featurized transaction, keeping time order, and forget what
    /// no window can reach any more.
    pub fn push(&mut self, card_id: &str, mut tx: PastTx) {
        self.strings.adopt(&mut tx);
        let kept = match self.cards.get_mut(card_id) {
            Some(k) => k,
            None => self.cards.entry(card_id.to_owned()).or_default(),
        };
        let at = if kept.back().is_none_or(|k| k.tx.ts_ms <= tx.ts_ms) {
            kept.len()
        } else {
            kept.partition_point(|k| k.tx.ts_ms <= tx.ts_ms)
        };
        let cents = cents(tx.amount);
        let cents_before = match at.checked_sub(1) {
            Some(i) => kept[i].cents_before + kept[i].cents as i128,
            None => kept.front().map_or(0, |k| k.cents_before),
        };
        // A late event: the totals after it grow by its cents.
        for later in kept.range_mut(at..) {
            later.cents_before += cents as i128;
        }
        kept.insert(
            at,
            Kept {
                fixed: Fixed::of(&tx),
                tx,
                cents,
                cents_before,
            },
        );
        let newest = kept.back().map_or(i64::MIN, |k| k.tx.ts_ms);
        // Keep the entries the history sequence and the MCC context read,
        // whatever their age (at least the previous one, which
        // `secs_since_prev_log` reads).
        let keep = kept_per_card(self.history_len);
        while kept.len() > keep
            && kept
                .front()
                .is_some_and(|k| k.tx.ts_ms < newest - RETENTION_MS)
        {
            kept.pop_front();
        }
        while kept.len() > self.cap {
            kept.pop_front();
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
        self.strings = SharedStrings::default();
    }

    /// Forget cards idle since before `before_ms`; they reload from storage if seen again.
    pub fn evict_idle(&mut self, before_ms: i64) {
        self.cards
            .retain(|_, kept| kept.back().is_some_and(|k| k.tx.ts_ms >= before_ms));
    }
}

/// The pool behind [`CardState::shared`]. Strings no remembered transaction
/// names any more are dropped when the pool has doubled since the last
/// sweep, so it stays within twice what the state references (a stream of
/// ever-new terminal ids cannot grow it without bound).
#[derive(Debug, Default)]
struct SharedStrings {
    set: HashSet<Arc<str>, IdHasher>,
    swept_len: usize,
}

impl SharedStrings {
    /// Point `tx`'s terminal id and country at the pool's copies (adding them).
    fn adopt(&mut self, tx: &mut PastTx) {
        tx.terminal_id = self.share(&tx.terminal_id);
        if let Some(c) = &tx.country {
            tx.country = Some(self.share(c));
        }
    }

    fn share(&mut self, s: &Arc<str>) -> Arc<str> {
        if let Some(shared) = self.set.get(s.as_ref()) {
            return shared.clone();
        }
        if self.set.len() >= 2 * self.swept_len.max(1024) {
            // Only the pool holds them: no remembered transaction names them.
            self.set.retain(|s| Arc::strong_count(s) > 1);
            self.swept_len = self.set.len();
        }
        self.set.insert(s.clone());
        s.clone()
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

    /// Ever-new terminal ids do not grow the shared strings without bound:
    /// those no remembered transaction names any more are swept.
    #[test]
    fn shared_strings_stay_within_what_the_state_remembers() {
        let mut s = CardState::default();
        for i in 0..100_000i64 {
            let mut t = tx(&format!("x{i}"), i * MS_PER_DAY);
            t.terminal_id = Arc::from(format!("terminal-{i}"));
            t.country = Some(Arc::from("FR"));
            s.push("c", t);
        }
        let remembered = s.history("c").count();
        assert!(
            s.strings.set.len() <= 2 * (remembered + 1).max(1024),
            "{}",
            s.strings.set.len()
        );
        // What is remembered is shared: one copy per distinct string.
        let last = s.history("c").last().unwrap();
        assert!(Arc::ptr_eq(
            s.shared("terminal-99999").unwrap(),
            &last.terminal_id
        ));
        assert!(Arc::ptr_eq(
            s.shared("FR").unwrap(),
            last.country.as_ref().unwrap()
        ));
        assert!(s.shared("terminal-0").is_none(), "forgotten long ago");
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
