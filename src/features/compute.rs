//! The featurizer proper: one function from a batch and the state to model inputs.
//!
//! Two passes. The first walks the batch in order against the cards' and
//! terminals' state (which is what makes features sequential): each row
//! reads its card's windows, previous transaction and history from the
//! incremental state, then becomes part of it. The second is columnar:
//! polars turns those raw per-row aggregates into the model's feature
//! columns in one pass over the batch.

use super::card::{cents, CardState, PastTx};
use super::terminal::TerminalStats;
use super::{
    day_of, FeatureBatch, CARD_WINDOW_DAYS, FEATURE_NAMES, HISTORY_FIELD_COUNT, MCC_CONTEXT_LEN,
    MS_PER_DAY, NUM_FEATURES, TERMINAL_WINDOW_DAYS,
};
use crate::event::{Channel, Transaction};
use polars::prelude::*;
use std::sync::Arc;

const MS_PER_HOUR: i64 = 3_600_000;
/// Used as "time since the previous transaction" for a card's first one.
const NO_PREVIOUS_SECS: f64 = 30.0 * 86_400.0;
/// The short card window catching card-testing bursts.
const BURST_WINDOW_MS: i64 = 10 * 60_000;

/// Featurize `batch` (in partition order), then remember its transactions in
/// `cards`. Rows of the result follow `batch`.
///
/// A row's card windows cover the card's transactions that came before it
/// (in stream order) and itself, within `[ts − window, ts]`; so a value
/// never depends on which rows a batch happened to contain. Sums are over
/// integer cents, so they are exact.
///
/// The history sequence is `cards.history_len()` long: the state is what
/// remembers that many past transactions, so the two cannot disagree.
pub fn featurize<T: AsRef<Transaction>>(
    batch: &[T],
    cards: &mut CardState,
    terminals: &TerminalStats,
    label_delay_days: i64,
) -> PolarsResult<FeatureBatch> {
    let n = batch.len();
    let k = cards.history_len();
    let mut raw = Raw::with_capacity(n);
    let mut out = FeatureBatch {
        rows: n,
        features: Vec::new(),
        history: vec![0.0; n * k * HISTORY_FIELD_COUNT],
        history_mask: vec![0.0; n * k],
        history_tx_ids: Vec::with_capacity(n),
        mcc_context: Vec::with_capacity(n),
    };
    for (i, tx) in batch.iter().map(AsRef::as_ref).enumerate() {
        let ts_ms = tx.ts.timestamp_millis();
        let own = cents(tx.amount);
        let past = cards.past(&tx.card_id, ts_ms);
        for (w, days) in CARD_WINDOW_DAYS.iter().enumerate() {
            let (count, cents) = past.window(ts_ms, days * MS_PER_DAY, own);
            raw.card_count[w].push(count);
            raw.card_cents[w].push(cents);
        }
        raw.burst.push(past.window(ts_ms, BURST_WINDOW_MS, own).0);
        let term = terminals.windows(&tx.terminal_id, day_of(ts_ms), label_delay_days);
        for (w, (count, risk)) in term.iter().enumerate() {
            raw.terminal_count[w].push(*count);
            raw.terminal_risk[w].push(*risk);
        }
        let prev = past.last();
        raw.gap_secs
            .push(prev.map_or(NO_PREVIOUS_SECS, |p| (ts_ms - p.ts_ms) as f64 / 1000.0));
        raw.country_change.push(prev.is_some_and(|p| {
            ts_ms - p.ts_ms <= MS_PER_HOUR
                && matches!((&p.country, &tx.country), (Some(a), Some(b)) if a.as_ref() != b.as_str())
        }));
        raw.amount.push(tx.amount);
        raw.ts_ms.push(ts_ms);
        raw.ecom.push(tx.channel == Some(Channel::Ecom));

        // The history sequence, most recent first. Same terminal / country:
        // the state's copies of the current ones, compared by address (see
        // `CardState::shared`); none means no remembered transaction names it.
        let terminal = cards.shared(&tx.terminal_id);
        let country = tx.country.as_deref().map(|c| cards.shared(c));
        let same = |a: &Arc<str>, b: Option<&Arc<str>>| b.is_some_and(|b| Arc::ptr_eq(a, b));
        let mut ids = Vec::with_capacity(k.min(past.len()));
        for (pos, (p, fixed)) in past.tail_fixed(k).rev().enumerate() {
            let h = &mut out.history[(i * k + pos) * HISTORY_FIELD_COUNT..][..HISTORY_FIELD_COUNT];
            h[0] = fixed.amount_log;
            h[1] = (((ts_ms - p.ts_ms) as f64) / 1000.0).ln_1p() as f32;
            h[2] = same(&p.terminal_id, terminal) as u8 as f32;
            h[3] = match (&p.country, country) {
                (None, None) => true,
                (Some(a), Some(b)) => same(a, b),
                _ => false,
            } as u8 as f32;
            h[4] = p.ecom as u8 as f32;
            h[5] = fixed.day_fraction;
            out.history_mask[i * k + pos] = 1.0;
            ids.push(p.tx_id.clone());
        }
        out.history_tx_ids.push(ids);
        let mut mccs = Vec::with_capacity(MCC_CONTEXT_LEN + 1);
        mccs.extend(past.tail(MCC_CONTEXT_LEN).map(|p| p.mcc));
        mccs.push(tx.mcc);
        out.mcc_context.push(mccs);
        cards.push(&tx.card_id, past_tx(tx));
    }
    out.features = raw.feature_columns()?;
    Ok(out)
}

/// The card's memory of a featurized transaction.
pub fn past_tx(tx: &Transaction) -> PastTx {
    PastTx {
        tx_id: Arc::from(tx.tx_id.as_str()),
        ts_ms: tx.ts.timestamp_millis(),
        // As Postgres stores it (numeric, two decimals), so a card reloaded
        // after a restart remembers the same amounts.
        amount: cents(tx.amount) as f64 / 100.0,
        terminal_id: Arc::from(tx.terminal_id.as_str()),
        country: tx.country.as_deref().map(Arc::from),
        ecom: tx.channel == Some(Channel::Ecom),
        mcc: tx.mcc,
    }
}

/// What the state says of each batch row, column by column.
struct Raw {
    amount: Vec<f64>,
    ts_ms: Vec<i64>,
    ecom: Vec<bool>,
    /// Per card window, the count and the sum of cents (the row included).
    card_count: [Vec<i64>; CARD_WINDOW_DAYS.len()],
    card_cents: [Vec<i64>; CARD_WINDOW_DAYS.len()],
    burst: Vec<i64>,
    terminal_count: [Vec<f32>; TERMINAL_WINDOW_DAYS.len()],
    terminal_risk: [Vec<f32>; TERMINAL_WINDOW_DAYS.len()],
    gap_secs: Vec<f64>,
    country_change: Vec<bool>,
}

impl Raw {
    fn with_capacity(n: usize) -> Raw {
        macro_rules! v {
            () => {
                Vec::with_capacity(n)
            };
        }
        Raw {
            amount: v!(),
            ts_ms: v!(),
            ecom: v!(),
            card_count: [v!(), v!(), v!()],
            card_cents: [v!(), v!(), v!()],
            burst: v!(),
            terminal_count: [v!(), v!(), v!()],
            terminal_risk: [v!(), v!(), v!()],
            gap_secs: v!(),
            country_change: v!(),
        }
    }

    /// The model's features, row-major in [`FEATURE_NAMES`] order, computed
    /// by polars in one columnar pass.
    fn feature_columns(self) -> PolarsResult<Vec<f32>> {
        let rows = self.amount.len();
        let mut columns = vec![
            Column::new("amount".into(), self.amount),
            Column::new("ts".into(), self.ts_ms)
                .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?,
            Column::new("ecom".into(), self.ecom),
            Column::new("burst".into(), self.burst),
            Column::new("gap_secs".into(), self.gap_secs),
            Column::new("country_change".into(), self.country_change),
        ];
        let card = CARD_WINDOW_DAYS
            .iter()
            .zip(self.card_count)
            .zip(self.card_cents);
        for ((days, count), cents) in card {
            columns.push(Column::new(format!("n{days}").into(), count));
            columns.push(Column::new(format!("s{days}").into(), cents));
        }
        let terminal = TERMINAL_WINDOW_DAYS
            .iter()
            .zip(self.terminal_count)
            .zip(self.terminal_risk);
        for ((days, count), risk) in terminal {
            columns.push(Column::new(format!("tn{days}").into(), count));
            columns.push(Column::new(format!("tr{days}").into(), risk));
        }
        let f32_ = |e: Expr| e.cast(DataType::Float32);
        // Mean amount in a window (its count is at least 1: the row itself).
        let avg = |days: i64| {
            f32_(
                col(format!("s{days}")).cast(DataType::Float64)
                    / col(format!("n{days}")).cast(DataType::Float64)
                    / lit(100.0),
            )
        };
        let mut exprs = vec![f32_(col("amount").log1p())];
        for days in CARD_WINDOW_DAYS {
            exprs.push(f32_(col(format!("n{days}"))));
            exprs.push(avg(days));
        }
        for days in TERMINAL_WINDOW_DAYS {
            exprs.push(col(format!("tn{days}")));
            exprs.push(col(format!("tr{days}")));
        }
        let avg_30d = avg(CARD_WINDOW_DAYS[2]).cast(DataType::Float64);
        exprs.extend([
            f32_(col("ts").dt().hour().lt(lit(6))),
            f32_(col("ts").dt().weekday().gt_eq(lit(6))),
            f32_(col("ecom")),
            f32_(
                when(avg_30d.clone().gt(lit(0.0)))
                    .then(col("amount") / avg_30d)
                    .otherwise(lit(1.0)),
            ),
            f32_(col("burst")),
            f32_(col("gap_secs").log1p()),
            f32_(col("country_change")),
        ]);
        let exprs: Vec<Expr> = exprs
            .into_iter()
            .zip(FEATURE_NAMES)
            .map(|(e, name)| e.alias(name))
            .collect();
        let frame = DataFrame::new(rows, columns)?
            .lazy()
            .select(exprs)
            .collect()?;

        let mut features = vec![0.0f32; rows * NUM_FEATURES];
        for (j, column) in frame.columns().iter().enumerate() {
            for (i, v) in column.f32()?.iter().enumerate() {
                features[i * NUM_FEATURES + j] = v.unwrap_or(0.0);
            }
        }
        Ok(features)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{FEATURE_NAMES, HISTORY_LEN};
    use chrono::{TimeZone, Utc};

    fn tx(id: &str, card: &str, term: &str, secs: i64, amount: f64, country: &str) -> Transaction {
        Transaction {
            tx_id: id.into(),
            ts: Utc.timestamp_opt(1_767_225_600 + secs, 0).unwrap(), // 2026-01-01T00:00Z, a Thursday
            card_id: card.into(),
            terminal_id: term.into(),
            amount,
            currency: None,
            mcc: None,
            channel: Some(Channel::Pos),
            country: Some(country.into()),
        }
    }

    fn feature(b: &FeatureBatch, row: usize, name: &str) -> f32 {
        b.row_features(row)[FEATURE_NAMES.iter().position(|n| *n == name).unwrap()]
    }

    const H: i64 = 3600;

    #[test]
    fn card_windows_include_the_current_transaction_and_span_batches() {
        let mut cards = CardState::default();
        let terms = TerminalStats::default();
        let first = vec![
            tx("a", "c1", "t", 10 * H, 10.0, "FR"),
            tx("b", "c2", "t", 10 * H, 99.0, "FR"),
        ];
        let b1 = featurize(&first, &mut cards, &terms, 7).unwrap();
        assert_eq!(feature(&b1, 0, "card_count_1d"), 1.0);
        assert_eq!(feature(&b1, 0, "card_avg_amount_1d"), 10.0);
        assert_eq!(b1.history_mask[..HISTORY_LEN].iter().sum::<f32>(), 0.0);

        // Next batch: c1 again 2 h later (abroad), and 3 days later.
        let second = vec![
            tx("c", "c1", "u", 12 * H, 30.0, "US"),
            tx("d", "c1", "t", 84 * H, 50.0, "FR"),
        ];
        let b2 = featurize(&second, &mut cards, &terms, 7).unwrap();
        assert_eq!(feature(&b2, 0, "card_count_1d"), 2.0);
        assert_eq!(feature(&b2, 0, "card_avg_amount_1d"), 20.0);
        assert_eq!(
            feature(&b2, 0, "country_change_1h"),
            0.0,
            "2 h apart is not within 1 h"
        );
        assert_eq!(feature(&b2, 1, "card_count_1d"), 1.0);
        assert_eq!(feature(&b2, 1, "card_count_7d"), 3.0);
        assert_eq!(feature(&b2, 1, "card_avg_amount_7d"), 30.0);
        assert_eq!(
            b2.history_tx_ids[1]
                .iter()
                .map(|s| &**s)
                .collect::<Vec<_>>(),
            ["c", "a"],
            "most recent first"
        );
        assert_eq!(
            feature(&b2, 1, "secs_since_prev_log"),
            ((72 * H) as f64).ln_1p() as f32
        );
    }

    #[test]
    fn mcc_context_is_the_cards_past_mccs_then_its_own() {
        let mut cards = CardState::default();
        let terms = TerminalStats::default();
        let mut txs: Vec<_> = (0..40)
            .map(|i| tx(&format!("t{i}"), "c", "m", i * H, 5.0, "FR"))
            .collect();
        for (i, t) in txs.iter_mut().enumerate() {
            t.mcc = (i != 3).then_some(5000 + i as i32);
        }
        // Another card in between must not leak into c's context.
        txs.insert(10, tx("other", "d", "m", 9 * H + 1, 5.0, "FR"));
        txs[10].mcc = Some(7011);
        let first = featurize(&txs[..20], &mut cards, &terms, 7).unwrap();
        let rest = featurize(&txs[20..], &mut cards, &terms, 7).unwrap();
        assert_eq!(first.mcc_row(0), (Some(5000), &[][..]), "first: no past");
        assert_eq!(first.mcc_context[10], [Some(7011)]);
        let (current, past) = first.mcc_row(5);
        assert_eq!(current, Some(5005));
        assert_eq!(past, [Some(5000), Some(5001), Some(5002), None, Some(5004)]);
        // The last row of c (i = 39): the 31 previous MCCs, oldest first.
        let (current, past) = rest.mcc_row(rest.rows - 1);
        assert_eq!(current, Some(5039));
        let want: Vec<Option<i32>> = (8..39).map(|i| Some(5000 + i)).collect();
        assert_eq!(past, want.as_slice());
        assert_eq!(past.len(), MCC_CONTEXT_LEN);
        // The fraud model's inputs do not carry it.
        assert_eq!(rest.features.len(), rest.rows * NUM_FEATURES);
    }

    /// History fields 2 and 3 (same terminal, same country as the current
    /// transaction), whether the past came through the stream or from
    /// storage (other copies of the same strings), and with countries absent.
    #[test]
    fn history_says_which_past_transactions_share_terminal_and_country() {
        let flags = |b: &FeatureBatch, row: usize| -> Vec<(f32, f32)> {
            let k = HISTORY_LEN;
            (0..k)
                .filter(|pos| b.history_mask[row * k + pos] == 1.0)
                .map(|pos| {
                    let h = &b.history[(row * k + pos) * HISTORY_FIELD_COUNT..];
                    (h[2], h[3])
                })
                .collect()
        };
        let terms = TerminalStats::default();
        let mut no_country = tx("n", "c", "t1", 3 * H, 1.0, "");
        no_country.country = None;
        let stream = vec![
            tx("a", "c", "t1", H, 1.0, "FR"),
            tx("b", "c", "t2", 2 * H, 1.0, "DE"),
            no_country.clone(),
            tx("d", "c", "t1", 4 * H, 1.0, "FR"),
            tx("e", "c", "t9", 5 * H, 1.0, "IT"),
        ];
        let mut no_country_now = tx("f", "c", "t2", 6 * H, 1.0, "");
        no_country_now.country = None;
        let mut cards = CardState::default();
        let mut all = stream.clone();
        all.push(no_country_now.clone());
        let b = featurize(&all, &mut cards, &terms, 7).unwrap();
        // Most recent first: d sees n, b, a.
        assert_eq!(flags(&b, 3), [(1.0, 0.0), (0.0, 0.0), (1.0, 1.0)]);
        // A terminal and a country no past transaction had.
        assert_eq!(flags(&b, 4), [(0.0, 0.0); 4]);
        // No country now: only n (no country either) matches.
        assert_eq!(
            flags(&b, 5),
            [(0.0, 0.0), (0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
        );

        // The same past loaded from storage: fresh copies of every string.
        let mut loaded = CardState::default();
        let copies = stream
            .iter()
            .map(|t| {
                let mut p = past_tx(t);
                p.terminal_id = Arc::from(p.terminal_id.to_string());
                p.country = p.country.map(|c| Arc::from(c.to_string()));
                p
            })
            .collect();
        loaded.load("c".into(), copies);
        let again = featurize(&[no_country_now], &mut loaded, &terms, 7).unwrap();
        assert_eq!(flags(&again, 0), flags(&b, 5));
        assert_eq!(again.history, b.history[5 * again.history.len()..]);
    }

    #[test]
    fn bursts_and_impossible_travel_are_visible() {
        let mut cards = CardState::default();
        let terms = TerminalStats::default();
        let mut batch: Vec<_> = (0..5)
            .map(|i| tx(&format!("b{i}"), "c", "e", 1000 + i * 60, 1.0, "FR"))
            .collect();
        batch.push(tx("far", "c", "x", 1000 + 30 * 60, 500.0, "TH"));
        let b = featurize(&batch, &mut cards, &terms, 7).unwrap();
        assert_eq!(feature(&b, 4, "card_count_10m"), 5.0);
        assert_eq!(feature(&b, 5, "country_change_1h"), 1.0);
        assert_eq!(feature(&b, 5, "is_night"), 1.0);
        assert_eq!(feature(&b, 0, "is_weekend"), 0.0);
    }

    #[test]
    fn batch_boundaries_do_not_change_features() {
        let mut txs: Vec<_> = (0..200)
            .map(|i| {
                tx(
                    &format!("t{i}"),
                    &format!("c{}", i % 7),
                    &format!("m{}", i % 3),
                    i * 1800,
                    1.0 + (i % 13) as f64 * 7.31,
                    "FR",
                )
            })
            .collect();
        for (i, t) in txs.iter_mut().enumerate() {
            t.mcc = (i % 5 != 0).then_some(5000 + (i % 11) as i32);
        }
        // Same card, same second: the split below puts them in different batches.
        txs[34].ts = txs[33].ts;
        txs[34].card_id = txs[33].card_id.clone();
        let terms = TerminalStats::default();
        let whole = featurize(&txs, &mut CardState::default(), &terms, 7).unwrap();
        let mut cards = CardState::default();
        let mut pieces = FeatureBatch::default();
        for chunk in txs.chunks(17) {
            let b = featurize(chunk, &mut cards, &terms, 7).unwrap();
            pieces.features.extend(b.features);
            pieces.history.extend(b.history);
            pieces.history_mask.extend(b.history_mask);
            pieces.history_tx_ids.extend(b.history_tx_ids);
            pieces.mcc_context.extend(b.mcc_context);
        }
        assert_eq!(whole.features, pieces.features);
        assert_eq!(whole.history, pieces.history);
        assert_eq!(whole.history_tx_ids, pieces.history_tx_ids);
        assert_eq!(whole.mcc_context, pieces.mcc_context);
    }

    /// A merchant's test card: far more transactions than the cap within
    /// the windows. Counts saturate at the cap, means are over the most
    /// recent ones, and neither depends on how the stream was batched.
    #[test]
    fn a_card_beyond_the_cap_saturates_the_same_way_in_any_batching() {
        let cap = 40;
        let txs: Vec<_> = (0..300)
            .map(|i| {
                tx(
                    &format!("t{i}"),
                    "busy",
                    "m",
                    i * 60,
                    1.0 + (i % 10) as f64,
                    "FR",
                )
            })
            .collect();
        let terms = TerminalStats::default();
        let whole = featurize(&txs, &mut CardState::default().with_cap(cap), &terms, 7).unwrap();
        for size in [1, 7, 64] {
            let mut cards = CardState::default().with_cap(cap);
            let mut features = Vec::new();
            for chunk in txs.chunks(size) {
                features.extend(featurize(chunk, &mut cards, &terms, 7).unwrap().features);
            }
            assert_eq!(features, whole.features, "batches of {size}");
        }
        let last = whole.rows - 1;
        assert_eq!(feature(&whole, last, "card_count_1d"), cap as f32);
        assert_eq!(feature(&whole, last, "card_count_30d"), cap as f32);
        // The last 40 amounts: 1 + (i % 10) for i in 260..300, mean 5.5.
        assert_eq!(feature(&whole, last, "card_avg_amount_1d"), 5.5);
        assert_eq!(
            feature(&whole, 20, "card_count_1d"),
            21.0,
            "below the cap: exact"
        );
    }

    #[test]
    fn a_longer_history_extends_the_default_one() {
        // 3 cards with a transaction every ~36 h: 31 days of retention hold
        // ~21 of them, so K = 64 reaches transactions older than any window.
        let txs: Vec<_> = (0..600)
            .map(|i| {
                tx(
                    &format!("t{i}"),
                    &format!("c{}", i % 3),
                    &format!("m{}", i % 5),
                    i * 12 * H + (i % 7) * 60,
                    1.0 + (i % 11) as f64 * 3.7,
                    if i % 9 == 0 { "US" } else { "FR" },
                )
            })
            .collect();
        let terms = TerminalStats::default();
        let run = |k: usize| {
            let mut cards = CardState::with_history_len(k);
            let mut all = FeatureBatch::default();
            for chunk in txs.chunks(50) {
                let b = featurize(chunk, &mut cards, &terms, 7).unwrap();
                all.rows += b.rows;
                all.features.extend(b.features);
                all.history.extend(b.history);
                all.history_mask.extend(b.history_mask);
            }
            all
        };
        let (short, long) = (run(HISTORY_LEN), run(64));
        assert_eq!(short.history_len(), HISTORY_LEN);
        assert_eq!(long.history_len(), 64);
        assert_eq!(long.features, short.features);
        let (w_short, w_long) = (HISTORY_LEN * HISTORY_FIELD_COUNT, 64 * HISTORY_FIELD_COUNT);
        for i in 0..txs.len() {
            assert_eq!(
                long.history[i * w_long..][..w_short],
                short.history[i * w_short..][..w_short],
                "row {i}"
            );
            assert_eq!(
                long.history_mask[i * 64..][..HISTORY_LEN],
                short.history_mask[i * HISTORY_LEN..][..HISTORY_LEN],
                "row {i}"
            );
        }
        // The test is only worth something if the longer history is used.
        assert_eq!(
            long.history_mask[599 * 64..][..64].iter().sum::<f32>(),
            64.0
        );
    }

    /// Card windows against their definition, computed the slow way: a
    /// row's window holds the card's earlier rows (in stream order) whose
    /// time is within `[ts − size, ts]`, and the row itself. The stream has
    /// late events (up to two days back), same-second ties and quiet days;
    /// any batching gives the same values.
    #[test]
    fn card_windows_follow_their_definition_in_any_batching() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut clock = 0i64;
        let txs: Vec<_> = (0..1_500)
            .map(|i| {
                clock += rng.gen_range(0..1_800);
                let late = if rng.gen_bool(0.1) {
                    rng.gen_range(0..2 * 24 * H)
                } else {
                    0
                };
                let amount = (rng.gen_range(0..100_000) as f64) / 100.0;
                tx(
                    &format!("t{i}"),
                    &format!("c{}", rng.gen_range(0..6)),
                    "m",
                    clock - late,
                    amount,
                    "FR",
                )
            })
            .collect();
        let want: Vec<[f32; 7]> = txs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let at = t.ts.timestamp_millis();
                let window = |size_ms: i64| {
                    let rows = txs[..=i].iter().filter(|p| {
                        let ms = p.ts.timestamp_millis();
                        p.card_id == t.card_id && ms <= at && ms >= at - size_ms
                    });
                    rows.fold((0i64, 0i64), |(n, s), p| (n + 1, s + cents(p.amount)))
                };
                let mut row = [0f32; 7];
                for (w, days) in CARD_WINDOW_DAYS.iter().enumerate() {
                    let (n, s) = window(days * MS_PER_DAY);
                    row[2 * w] = n as f32;
                    row[2 * w + 1] = (s as f64 / n as f64 / 100.0) as f32;
                }
                row[6] = window(BURST_WINDOW_MS).0 as f32;
                row
            })
            .collect();
        let terms = TerminalStats::default();
        for size in [1, 13, 250, txs.len()] {
            let mut cards = CardState::default();
            let mut got = Vec::new();
            for chunk in txs.chunks(size) {
                let b = featurize(chunk, &mut cards, &terms, 7).unwrap();
                for r in 0..b.rows {
                    let f = b.row_features(r);
                    got.push([f[1], f[2], f[3], f[4], f[5], f[6], f[17]]);
                }
            }
            assert_eq!(got, want, "batches of {size}");
        }
    }
}
