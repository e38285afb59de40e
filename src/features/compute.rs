//! The featurizer proper: one function from a batch and the state to model inputs.

use super::card::{CardState, PastTx};
use super::terminal::TerminalStats;
use super::{
    day_of, FeatureBatch, CARD_WINDOW_DAYS, HISTORY_FIELD_COUNT, MCC_CONTEXT_LEN, MS_PER_DAY,
    NUM_FEATURES,
};
use crate::event::{Channel, Transaction};
use chrono::{Datelike, Timelike};
use polars::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

const MS_PER_HOUR: i64 = 3_600_000;
/// Used as "time since the previous transaction" for a card's first one.
const NO_PREVIOUS_SECS: f64 = 30.0 * 86_400.0;
/// The short card window catching card-testing bursts.
const BURST_WINDOW: &str = "10m";

/// Featurize `batch` (in partition order), then remember its transactions in
/// `cards`. Rows of the result follow `batch`.
///
/// The history sequence is `cards.history_len()` long: the state is what
/// remembers that many past transactions, so the two cannot disagree.
///
/// Card windows are computed by polars over integer cents, so sums are exact
/// and a value never depends on which rows a batch happened to contain.
pub fn featurize(
    batch: &[Transaction],
    cards: &mut CardState,
    terminals: &TerminalStats,
    label_delay_days: i64,
) -> PolarsResult<FeatureBatch> {
    let n = batch.len();
    let k = cards.history_len();
    let windows = card_windows(batch, cards)?;
    let mut out = FeatureBatch {
        rows: n,
        features: vec![0.0; n * NUM_FEATURES],
        history: vec![0.0; n * k * HISTORY_FIELD_COUNT],
        history_mask: vec![0.0; n * k],
        history_tx_ids: Vec::with_capacity(n),
        mcc_context: Vec::with_capacity(n),
    };
    for (i, tx) in batch.iter().enumerate() {
        let ts_ms = tx.ts.timestamp_millis();
        let ecom = tx.channel == Some(Channel::Ecom);
        let f = &mut out.features[i * NUM_FEATURES..(i + 1) * NUM_FEATURES];
        f[0] = (tx.amount.ln_1p()) as f32;
        for (w, (count, cents)) in windows.card[i].iter().enumerate() {
            f[1 + 2 * w] = *count as f32;
            f[2 + 2 * w] = if *count == 0 {
                0.0
            } else {
                (*cents as f64 / *count as f64 / 100.0) as f32
            };
        }
        for (w, (count, risk)) in terminals
            .windows(&tx.terminal_id, day_of(ts_ms), label_delay_days)
            .iter()
            .enumerate()
        {
            f[7 + 2 * w] = *count;
            f[8 + 2 * w] = *risk;
        }
        f[13] = (tx.ts.hour() < 6) as u8 as f32;
        f[14] = (tx.ts.weekday().number_from_monday() >= 6) as u8 as f32;
        f[15] = ecom as u8 as f32;
        let avg_30d = f[6];
        f[16] = if avg_30d > 0.0 {
            (tx.amount / avg_30d as f64) as f32
        } else {
            1.0
        };
        f[17] = windows.burst[i] as f32;

        // Everything below looks at the card's past in event time, as of this row.
        let past: Vec<&PastTx> = cards
            .history(&tx.card_id)
            .filter(|p| p.ts_ms <= ts_ms)
            .collect();
        let prev = past.last();
        let gap_secs = prev.map_or(NO_PREVIOUS_SECS, |p| (ts_ms - p.ts_ms) as f64 / 1000.0);
        f[18] = gap_secs.ln_1p() as f32;
        f[19] = prev.is_some_and(|p| {
            ts_ms - p.ts_ms <= MS_PER_HOUR
                && matches!((&p.country, &tx.country), (Some(a), Some(b)) if a.as_ref() != b.as_str())
        }) as u8 as f32;

        let mut ids = Vec::with_capacity(k.min(past.len()));
        for (pos, p) in past.iter().rev().take(k).enumerate() {
            let h = &mut out.history[(i * k + pos) * HISTORY_FIELD_COUNT..][..HISTORY_FIELD_COUNT];
            h[0] = p.amount.ln_1p() as f32;
            h[1] = (((ts_ms - p.ts_ms) as f64) / 1000.0).ln_1p() as f32;
            h[2] = (p.terminal_id.as_ref() == tx.terminal_id) as u8 as f32;
            h[3] = (p.country.as_deref() == tx.country.as_deref()) as u8 as f32;
            h[4] = p.ecom as u8 as f32;
            h[5] = (p.ts_ms.rem_euclid(MS_PER_DAY) as f64 / MS_PER_DAY as f64) as f32;
            out.history_mask[i * k + pos] = 1.0;
            ids.push(p.tx_id.to_string());
        }
        out.history_tx_ids.push(ids);
        let from = past.len().saturating_sub(MCC_CONTEXT_LEN);
        let mut mccs: Vec<Option<i32>> = past[from..].iter().map(|p| p.mcc).collect();
        mccs.push(tx.mcc);
        out.mcc_context.push(mccs);
        cards.push(&tx.card_id, past_tx(tx));
    }
    Ok(out)
}

/// The card's memory of a featurized transaction.
pub fn past_tx(tx: &Transaction) -> PastTx {
    PastTx {
        tx_id: Arc::from(tx.tx_id.as_str()),
        ts_ms: tx.ts.timestamp_millis(),
        amount: tx.amount,
        terminal_id: Arc::from(tx.terminal_id.as_str()),
        country: tx.country.as_deref().map(Arc::from),
        ecom: tx.channel == Some(Channel::Ecom),
        mcc: tx.mcc,
    }
}

fn cents(amount: f64) -> i64 {
    (amount * 100.0).round() as i64
}

struct CardWindows {
    /// Per batch row, `(count, sum of cents)` for each of CARD_WINDOW_DAYS.
    card: Vec<[(i64, i64); 3]>,
    /// Per batch row, the card's transactions in the burst window.
    burst: Vec<i64>,
}

/// Rolling card windows (closed on both ends, so the current transaction
/// counts) over each card's remembered transactions plus the batch.
fn card_windows(batch: &[Transaction], cards: &CardState) -> PolarsResult<CardWindows> {
    // One integer per card keeps the frame small; rows sorted by (card, time)
    // let polars roll each card's group in one pass.
    let mut card_ix: HashMap<&str, u32> = HashMap::with_capacity(batch.len());
    for tx in batch {
        let next = card_ix.len() as u32;
        card_ix.entry(tx.card_id.as_str()).or_insert(next);
    }
    // (card, ts_ms, order, cents, batch row or -1)
    let mut rows: Vec<(u32, i64, u32, i64, i64)> = Vec::with_capacity(batch.len() * 8);
    for (card, &ix) in &card_ix {
        for (order, p) in cards.history(card).enumerate() {
            rows.push((ix, p.ts_ms, order as u32, cents(p.amount), -1));
        }
    }
    for (i, tx) in batch.iter().enumerate() {
        rows.push((
            card_ix[tx.card_id.as_str()],
            tx.ts.timestamp_millis(),
            u32::MAX / 2 + i as u32,
            cents(tx.amount),
            i as i64,
        ));
    }
    rows.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    // A card's transactions at the same millisecond are ordered by arrival
    // (a microsecond apart), so a window ends at the current transaction
    // whether or not a same-time successor happens to be in the same batch.
    let mut ts_us: Vec<i64> = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let tie = match i.checked_sub(1).map(|j| &rows[j]) {
            Some(prev) if (prev.0, prev.1) == (r.0, r.1) => (ts_us[i - 1] % 1000 + 1).min(999),
            _ => 0,
        };
        ts_us.push(r.1 * 1000 + tie);
    }

    let df = DataFrame::new_infer_height(vec![
        Column::new("card".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
        Column::new("ts".into(), ts_us).cast(&DataType::Datetime(TimeUnit::Microseconds, None))?,
        Column::new("cents".into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
        Column::new("one".into(), vec![1i64; rows.len()]),
        Column::new("row".into(), rows.iter().map(|r| r.4).collect::<Vec<_>>()),
    ])?;
    let window = |size: &str| RollingOptionsDynamicWindow {
        window_size: Duration::parse(size),
        min_periods: 1,
        closed_window: ClosedWindow::Both,
        fn_params: None,
    };
    let mut exprs = Vec::new();
    for days in CARD_WINDOW_DAYS {
        let size = format!("{days}d");
        exprs.push(
            col("one")
                .rolling_sum_by(col("ts"), window(&size))
                .over([col("card")])?
                .alias(format!("n{days}")),
        );
        exprs.push(
            col("cents")
                .rolling_sum_by(col("ts"), window(&size))
                .over([col("card")])?
                .alias(format!("s{days}")),
        );
    }
    exprs.push(
        col("one")
            .rolling_sum_by(col("ts"), window(BURST_WINDOW))
            .over([col("card")])?
            .alias("burst"),
    );
    let out = df
        .lazy()
        .with_columns(exprs)
        .filter(col("row").gt_eq(lit(0i64)))
        .collect()?;

    // Beyond the per-card cap a window covers the card's most recent `cap`
    // transactions: the count saturates, the sum is over those, from
    // prefix sums over the frame (which holds at least `cap` of the card's
    // transactions before any row whose window exceeds the cap).
    let cap = cards.cap() as i64;
    let mut prefix: Vec<i64> = Vec::with_capacity(rows.len() + 1);
    prefix.push(0);
    let mut frame_row = Vec::with_capacity(batch.len());
    for (j, r) in rows.iter().enumerate() {
        let same_card = j > 0 && rows[j - 1].0 == r.0;
        prefix.push(if same_card { prefix[j] } else { 0 } + r.3);
        if r.4 >= 0 {
            frame_row.push(j);
        }
    }
    let capped = |k: usize, (n, s): (i64, i64)| -> (i64, i64) {
        if n <= cap {
            return (n, s);
        }
        let j = frame_row[k] + 1;
        (cap, prefix[j] - prefix[j - cap as usize])
    };

    let row = out.column("row")?.i64()?;
    let get = |name: &str| -> PolarsResult<Vec<i64>> {
        Ok(out
            .column(name)?
            .i64()?
            .iter()
            .map(|v| v.unwrap_or(0))
            .collect())
    };
    let (n1, s1, n7, s7, n30, s30, burst) = (
        get("n1")?,
        get("s1")?,
        get("n7")?,
        get("s7")?,
        get("n30")?,
        get("s30")?,
        get("burst")?,
    );
    let mut result = CardWindows {
        card: vec![[(0, 0); 3]; batch.len()],
        burst: vec![0; batch.len()],
    };
    for (k, r) in row.iter().enumerate() {
        let r = r.expect("filtered to batch rows") as usize;
        result.card[r] = [
            capped(k, (n1[k], s1[k])),
            capped(k, (n7[k], s7[k])),
            capped(k, (n30[k], s30[k])),
        ];
        result.burst[r] = burst[k].min(cap);
    }
    Ok(result)
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
        assert_eq!(b2.history_tx_ids[1], ["c", "a"], "most recent first");
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
}
