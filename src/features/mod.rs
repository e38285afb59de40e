//! Online featurization: turns a micro-batch of transactions plus per-card and
//! per-terminal state into the model's input tensors.
//!
//! The same code runs online (`riskstream run`) and offline
//! (`riskstream features`, which produces training data), so training and
//! serving cannot drift. Card windows come from the cards' incremental
//! state ([`CardState`]), terminal windows from [`TerminalStats`], which
//! only ever holds *closed* days; polars turns them into the feature
//! columns in one columnar pass per batch.
//!
//! Features depend on event time only, never on arrival time, so a replay of
//! the same partitions computes the same values. This module is pure CPU work:
//! callers run it on a blocking thread, never on the async runtime.

use std::sync::Arc;

mod card;
mod compute;
pub mod offline;
mod terminal;

pub use card::{cents, kept_per_card, CardPast, CardState, PastTx, MAX_PER_CARD};
pub use compute::featurize;
pub use terminal::{needed_days as terminal_needed_days, FraudReport, TerminalStats};

/// The hasher of the state's maps, which are keyed by ids from the stream:
/// ahash, keyed at random per map like the standard library's SipHash (so
/// crafted ids cannot pile into one bucket), at a fraction of its cost
/// (SipHash was 9 % of the featurizer's instructions).
type IdHasher = ahash::RandomState;

/// Names of the tabular features, in the model's input order.
pub const FEATURE_NAMES: [&str; NUM_FEATURES] = [
    "amount_log",
    "card_count_1d",
    "card_avg_amount_1d",
    "card_count_7d",
    "card_avg_amount_7d",
    "card_count_30d",
    "card_avg_amount_30d",
    "terminal_count_1d",
    "terminal_risk_1d",
    "terminal_count_7d",
    "terminal_risk_7d",
    "terminal_count_30d",
    "terminal_risk_30d",
    "is_night",
    "is_weekend",
    "is_ecom",
    "amount_ratio_30d",
    "card_count_10m",
    "secs_since_prev_log",
    "country_change_1h",
];
pub const NUM_FEATURES: usize = 20;

/// Fields describing each past transaction in the card's history sequence.
pub const HISTORY_FIELDS: [&str; HISTORY_FIELD_COUNT] = [
    "amount_log",
    "gap_log",
    "same_terminal",
    "same_country",
    "is_ecom",
    "hour_frac",
];
pub const HISTORY_FIELD_COUNT: usize = 6;
/// Past transactions the online model sees (position 0 = most recent). Offline
/// featurization can use another length ([`CardState::with_history_len`]).
pub const HISTORY_LEN: usize = 16;

/// Past merchant category codes of the card exposed per row
/// ([`FeatureBatch::mcc_context`]): what the merchant language model reads
/// (its window is `<bos>` plus up to 31 previous MCCs). Not a model input of
/// the fraud model.
pub const MCC_CONTEXT_LEN: usize = 31;

pub const MS_PER_DAY: i64 = 86_400_000;
/// Card windows in days; the longest bounds how much card state is kept.
pub const CARD_WINDOW_DAYS: [i64; 3] = [1, 7, 30];
/// Terminal windows in days, counted back from `label_delay_days` ago.
pub const TERMINAL_WINDOW_DAYS: [i64; 3] = [1, 7, 30];

/// The day number (days since the Unix epoch, UTC) of a millisecond timestamp.
pub fn day_of(ts_ms: i64) -> i64 {
    ts_ms.div_euclid(MS_PER_DAY)
}

/// Model inputs for a batch, laid out row-major exactly as the ONNX inputs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureBatch {
    pub rows: usize,
    /// `rows × NUM_FEATURES`
    pub features: Vec<f32>,
    /// `rows × K × HISTORY_FIELD_COUNT`, K = [`FeatureBatch::history_len`]
    /// ([`HISTORY_LEN`] online).
    pub history: Vec<f32>,
    /// `rows × K`, 1 for a real past transaction, 0 for padding.
    pub history_mask: Vec<f32>,
    /// For each row, the tx_ids at each history position (shorter when padded).
    pub history_tx_ids: Vec<Vec<Arc<str>>>,
    /// For each row, the card's MCC context: the MCCs of its last (up to
    /// [`MCC_CONTEXT_LEN`]) earlier transactions, oldest first, followed by
    /// the row's own MCC (always the last element; `None` = no MCC).
    pub mcc_context: Vec<Vec<Option<i32>>>,
}

impl FeatureBatch {
    pub fn row_features(&self, i: usize) -> &[f32] {
        &self.features[i * NUM_FEATURES..(i + 1) * NUM_FEATURES]
    }

    /// The row's own MCC and the MCCs of the card's earlier transactions
    /// (oldest first), from [`FeatureBatch::mcc_context`].
    pub fn mcc_row(&self, i: usize) -> (Option<i32>, &[Option<i32>]) {
        let (current, past) = self.mcc_context[i]
            .split_last()
            .expect("every row ends with its own mcc");
        (*current, past)
    }

    /// K, the history positions per row (0 for an empty batch).
    pub fn history_len(&self) -> usize {
        self.history_mask.len().checked_div(self.rows).unwrap_or(0)
    }
}

/// How far back a card's transactions are kept (see [`card`]).
pub fn card_retention_ms() -> i64 {
    card::RETENTION_MS
}
