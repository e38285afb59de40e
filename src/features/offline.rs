//! Offline featurization of a labelled transaction file, for training and
//! evaluation: `riskstream features --in tx.{parquet,jsonl} --out features.parquet`.
//!
//! It drives the very same [`featurize`] as the online engine, batch by batch
//! in event-time order. Terminal statistics come from the file itself: with
//! the whole history at hand every day is closed, so the values equal what
//! the engine computes online from Postgres.

use super::terminal::{needed_days, FraudReport, TerminalStats};
use super::{
    day_of, featurize, CardState, FeatureBatch, FEATURE_NAMES, HISTORY_FIELD_COUNT, HISTORY_LEN,
};
use crate::event::{Channel, Transaction};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use polars::prelude::*;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

/// A transaction with its ground truth, as simulator files carry it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LabelledTx {
    #[serde(flatten)]
    pub tx: Transaction,
    #[serde(default)]
    pub is_fraud: Option<bool>,
    #[serde(default)]
    pub scenario: Option<String>,
    #[serde(default)]
    pub reported_at: Option<DateTime<Utc>>,
}

/// Read a `.jsonl` or `.parquet` transaction file.
pub fn read_transactions(path: &Path) -> Result<Vec<LabelledTx>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("json") => {
            let file =
                std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
            let mut out = Vec::new();
            for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                let row: LabelledTx = serde_json::from_str(&line)
                    .with_context(|| format!("{}:{}", path.display(), n + 1))?;
                row.tx
                    .validate()
                    .with_context(|| format!("{}:{}", path.display(), n + 1))?;
                out.push(row);
            }
            Ok(out)
        }
        Some("parquet") => read_parquet(path),
        _ => bail!("{}: expected a .jsonl or .parquet file", path.display()),
    }
}

fn read_parquet(path: &Path) -> Result<Vec<LabelledTx>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let df = ParquetReader::new(file).finish()?;
    let ms = |name: &str| -> Result<Vec<Option<i64>>> {
        let c = df
            .column(name)?
            .cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?;
        Ok(c.datetime()?.physical().iter().collect())
    };
    let strs = |name: &str| -> Result<Vec<Option<String>>> {
        match df.column(name) {
            Ok(c) => Ok(c.str()?.iter().map(|v| v.map(str::to_owned)).collect()),
            Err(_) => Ok(vec![None; df.height()]),
        }
    };
    let (tx_id, card, term, currency, channel, country, scenario) = (
        strs("tx_id")?,
        strs("card_id")?,
        strs("terminal_id")?,
        strs("currency")?,
        strs("channel")?,
        strs("country")?,
        strs("scenario")?,
    );
    let ts = ms("ts")?;
    let reported = if df.column("reported_at").is_ok() {
        ms("reported_at")?
    } else {
        vec![None; df.height()]
    };
    let amount: Vec<Option<f64>> = df
        .column("amount")?
        .cast(&DataType::Float64)?
        .f64()?
        .iter()
        .collect();
    let mcc: Vec<Option<i32>> = match df.column("mcc") {
        Ok(c) => c.cast(&DataType::Int32)?.i32()?.iter().collect(),
        Err(_) => vec![None; df.height()],
    };
    let fraud: Vec<Option<bool>> = match df.column("is_fraud") {
        Ok(c) => c.cast(&DataType::Boolean)?.bool()?.iter().collect(),
        Err(_) => vec![None; df.height()],
    };
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let channel = match channel[i].as_deref() {
            None => None,
            Some("pos") => Some(Channel::Pos),
            Some("ecom") => Some(Channel::Ecom),
            Some("atm") => Some(Channel::Atm),
            Some(other) => bail!("row {i}: unknown channel {other:?}"),
        };
        let tx = Transaction {
            tx_id: tx_id[i].clone().context("tx_id missing")?,
            ts: DateTime::from_timestamp_millis(ts[i].context("ts missing")?)
                .context("ts out of range")?,
            card_id: card[i].clone().context("card_id missing")?,
            terminal_id: term[i].clone().context("terminal_id missing")?,
            amount: amount[i].context("amount missing")?,
            currency: currency[i].clone(),
            mcc: mcc[i],
            channel,
            country: country[i].clone(),
        };
        tx.validate().with_context(|| format!("row {i}"))?;
        out.push(LabelledTx {
            tx,
            is_fraud: fraud[i],
            scenario: scenario[i].clone(),
            reported_at: reported[i].and_then(DateTime::from_timestamp_millis),
        });
    }
    Ok(out)
}

/// Terminal statistics from a complete file: every day is closed, and a
/// fraud counts from the day its label was reported.
pub fn terminal_stats_from(rows: &[LabelledTx], label_delay_days: i64) -> TerminalStats {
    let mut stats = TerminalStats::default();
    if rows.is_empty() {
        return stats;
    }
    let days: Vec<i64> = rows
        .iter()
        .map(|r| day_of(r.tx.ts.timestamp_millis()))
        .collect();
    let (first, last) = (*days.iter().min().unwrap(), *days.iter().max().unwrap());
    let mut counts: HashMap<(String, i64), u32> = HashMap::new();
    for (r, d) in rows.iter().zip(&days) {
        *counts.entry((r.tx.terminal_id.clone(), *d)).or_default() += 1;
    }
    let (from, _) = needed_days(first, label_delay_days);
    let (_, until) = needed_days(last + 1, label_delay_days);
    let until = until.max(last + 1);
    stats.add_closed_days(
        from.min(first),
        until,
        counts.into_iter().map(|((t, d), n)| (t, d, n)),
    );
    let frauds = rows
        .iter()
        .zip(&days)
        .filter_map(|(r, d)| match (r.is_fraud, r.reported_at) {
            (Some(true), Some(at)) => Some((
                r.tx.terminal_id.clone(),
                FraudReport {
                    tx_day: *d,
                    reported_day: day_of(at.timestamp_millis()),
                },
            )),
            _ => None,
        });
    stats.set_frauds(from.min(first), until, i64::MAX, frauds);
    stats
}

/// Featurize a whole file in event-time order and write the training table.
pub fn featurize_file(
    input: &Path,
    output: &Path,
    label_delay_days: i64,
    batch_rows: usize,
) -> Result<usize> {
    let mut rows = read_transactions(input)?;
    // Stable: ties keep file order, as partition order would.
    rows.sort_by_key(|r| r.tx.ts);
    let terminals = terminal_stats_from(&rows, label_delay_days);
    let mut cards = CardState::default();
    let mut all = FeatureBatch::default();
    for chunk in rows.chunks(batch_rows.max(1)) {
        let txs: Vec<Transaction> = chunk.iter().map(|r| r.tx.clone()).collect();
        let b = featurize(&txs, &mut cards, &terminals, label_delay_days)?;
        all.rows += b.rows;
        all.features.extend(b.features);
        all.history.extend(b.history);
        all.history_mask.extend(b.history_mask);
    }
    let mut df = training_frame(&rows, &all)?;
    let file =
        std::fs::File::create(output).with_context(|| format!("create {}", output.display()))?;
    ParquetWriter::new(file).finish(&mut df)?;
    Ok(rows.len())
}

fn training_frame(rows: &[LabelledTx], b: &FeatureBatch) -> PolarsResult<DataFrame> {
    let utc = DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC));
    let mut cols = vec![
        Column::new(
            "tx_id".into(),
            rows.iter().map(|r| r.tx.tx_id.as_str()).collect::<Vec<_>>(),
        ),
        Column::new(
            "ts".into(),
            rows.iter()
                .map(|r| r.tx.ts.timestamp_millis())
                .collect::<Vec<_>>(),
        )
        .cast(&utc)?,
        Column::new(
            "card_id".into(),
            rows.iter()
                .map(|r| r.tx.card_id.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "terminal_id".into(),
            rows.iter()
                .map(|r| r.tx.terminal_id.as_str())
                .collect::<Vec<_>>(),
        ),
        Column::new(
            "amount".into(),
            rows.iter().map(|r| r.tx.amount).collect::<Vec<_>>(),
        ),
    ];
    for (j, name) in FEATURE_NAMES.iter().enumerate() {
        let v: Vec<f32> = (0..b.rows).map(|i| b.row_features(i)[j]).collect();
        cols.push(Column::new((*name).into(), v));
    }
    let list = |name: &str, data: &[f32], width: usize| -> Column {
        let l: ListChunked = data
            .chunks(width)
            .map(|c| Some(Series::new("".into(), c)))
            .collect();
        l.into_series().with_name(name.into()).into()
    };
    cols.push(list(
        "history",
        &b.history,
        HISTORY_LEN * HISTORY_FIELD_COUNT,
    ));
    cols.push(list("history_mask", &b.history_mask, HISTORY_LEN));
    cols.push(Column::new(
        "is_fraud".into(),
        rows.iter()
            .map(|r| r.is_fraud.unwrap_or(false))
            .collect::<Vec<_>>(),
    ));
    cols.push(Column::new(
        "scenario".into(),
        rows.iter()
            .map(|r| r.scenario.as_deref())
            .collect::<Vec<_>>(),
    ));
    DataFrame::new_infer_height(cols)
}
