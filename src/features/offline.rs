//! Offline featurization of a labelled transaction file, for training and
//! evaluation: `riskstream features --in tx.{parquet,jsonl,csv} --out features.parquet`.
//!
//! It drives the very same [`featurize`] as the online engine, batch by batch
//! in event-time order. Terminal statistics come from the file itself: with
//! the whole history at hand every day is closed, so the values equal what
//! the engine computes online from Postgres.

use super::terminal::{needed_days, FraudReport, TerminalStats};
use super::{
    day_of, featurize, CardState, FeatureBatch, FEATURE_NAMES, HISTORY_FIELD_COUNT, NUM_FEATURES,
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

/// Read a `.jsonl`, `.csv` or `.parquet` transaction file.
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
        Some("csv") => read_csv(path),
        Some("parquet") => read_parquet(path),
        _ => bail!(
            "{}: expected a .jsonl, .csv or .parquet file",
            path.display()
        ),
    }
}

/// A CSV file with a header naming the JSON fields (`tx_id`, `ts` as RFC 3339,
/// `card_id`, …, `is_fraud`, `scenario`, `reported_at`); an empty cell is null.
/// Each row is decoded exactly as the same object in a `.jsonl` file would be.
fn read_csv(path: &Path) -> Result<Vec<LabelledTx>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut records = csv_records(&text).with_context(|| path.display().to_string())?;
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let header = records.remove(0);
    let mut out = Vec::with_capacity(records.len());
    for (n, record) in records.into_iter().enumerate() {
        let at = || format!("{}: row {}", path.display(), n + 2);
        if record.len() != header.len() {
            bail!(
                "{}: {} cells, the header has {}",
                at(),
                record.len(),
                header.len()
            );
        }
        let mut object = serde_json::Map::new();
        for (name, cell) in header.iter().zip(record) {
            if cell.is_empty() {
                continue;
            }
            let value = match name.as_str() {
                "amount" | "mcc" => cell
                    .parse()
                    .ok()
                    .map(serde_json::Value::Number)
                    .with_context(|| format!("{}: {name} {cell:?} is not a number", at()))?,
                "is_fraud" => serde_json::Value::Bool(match cell.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("{}: is_fraud {cell:?} is not a boolean", at()),
                }),
                _ => serde_json::Value::String(cell),
            };
            object.insert(name.clone(), value);
        }
        let row: LabelledTx = serde_json::from_value(object.into()).with_context(at)?;
        row.tx.validate().with_context(at)?;
        out.push(row);
    }
    Ok(out)
}

/// Split CSV text into records of cells (RFC 4180: a quoted cell may hold
/// commas, newlines and `""` for a quote). Blank lines are skipped.
fn csv_records(text: &str) -> Result<Vec<Vec<String>>> {
    let (mut records, mut record, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') if cell.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut cell)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut cell));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => cell.push(c),
        }
    }
    if quoted {
        bail!("a quoted cell is not closed");
    }
    if !cell.is_empty() || !record.is_empty() {
        record.push(cell);
        records.push(record);
    }
    records.retain(|r: &Vec<String>| !(r.len() == 1 && r[0].is_empty()));
    Ok(records)
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

/// Featurize a whole file in event-time order and write the training table,
/// with histories of `history_len` past transactions.
pub fn featurize_file(
    input: &Path,
    output: &Path,
    label_delay_days: i64,
    history_len: usize,
    batch_rows: usize,
) -> Result<usize> {
    let mut rows = read_transactions(input)?;
    // Stable: ties keep file order, as partition order would.
    rows.sort_by_key(|r| r.tx.ts);
    let all = featurize_rows(&rows, label_delay_days, history_len, batch_rows, |_| true)?;
    let mut df = training_frame(&rows, &all, history_len)?;
    let file =
        std::fs::File::create(output).with_context(|| format!("create {}", output.display()))?;
    ParquetWriter::new(file).finish(&mut df)?;
    Ok(rows.len())
}

/// Featurize `rows` (sorted by time) as the engine would have, `batch_rows`
/// at a time, with histories of `history_len`. Every row goes through the
/// featurizer (each builds the state for the next), but only the rows `i`
/// with `keep(i)` are returned, in order.
pub fn featurize_rows(
    rows: &[LabelledTx],
    label_delay_days: i64,
    history_len: usize,
    batch_rows: usize,
    keep: impl Fn(usize) -> bool,
) -> Result<FeatureBatch> {
    let terminals = terminal_stats_from(rows, label_delay_days);
    let mut cards = CardState::with_history_len(history_len);
    let mut all = FeatureBatch::default();
    let batch_rows = batch_rows.max(1);
    let (hist_w, mask_w) = (history_len * HISTORY_FIELD_COUNT, history_len);
    for (c, chunk) in rows.chunks(batch_rows).enumerate() {
        let txs: Vec<Transaction> = chunk.iter().map(|r| r.tx.clone()).collect();
        let b = featurize(&txs, &mut cards, &terminals, label_delay_days)?;
        for i in (0..b.rows).filter(|i| keep(c * batch_rows + i)) {
            all.rows += 1;
            all.features
                .extend_from_slice(&b.features[i * NUM_FEATURES..][..NUM_FEATURES]);
            all.history
                .extend_from_slice(&b.history[i * hist_w..][..hist_w]);
            all.history_mask
                .extend_from_slice(&b.history_mask[i * mask_w..][..mask_w]);
            all.mcc_context.push(b.mcc_context[i].clone());
        }
    }
    Ok(all)
}

fn training_frame(rows: &[LabelledTx], b: &FeatureBatch, k: usize) -> PolarsResult<DataFrame> {
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
        let l: ListChunked = (0..b.rows)
            .map(|i| &data[i * width..(i + 1) * width])
            .map(|c| Some(Series::new("".into(), c)))
            .collect();
        l.into_series().with_name(name.into()).into()
    };
    cols.push(list("history", &b.history, k * HISTORY_FIELD_COUNT));
    cols.push(list("history_mask", &b.history_mask, k));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_decode_like_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("tx.csv");
        std::fs::write(
            &csv,
            "tx_id,ts,card_id,terminal_id,amount,mcc,channel,country,is_fraud,scenario,reported_at\r\n\
             t1,2026-01-01T10:00:00Z,c1,m1,12.5,5411,ecom,FR,true,\"card,testing\",2026-01-08T00:00:00+00:00\r\n\
             \n\
             t2,2026-01-01 11:00:00.250+00:00,c1,m2,3,,,,false,,\n",
        )
        .unwrap();
        let jsonl = dir.path().join("tx.jsonl");
        std::fs::write(
            &jsonl,
            concat!(
                r#"{"tx_id":"t1","ts":"2026-01-01T10:00:00Z","card_id":"c1","terminal_id":"m1","amount":12.5,"mcc":5411,"channel":"ecom","country":"FR","is_fraud":true,"scenario":"card,testing","reported_at":"2026-01-08T00:00:00Z"}"#,
                "\n",
                r#"{"tx_id":"t2","ts":"2026-01-01T11:00:00.250Z","card_id":"c1","terminal_id":"m2","amount":3,"is_fraud":false}"#,
                "\n"
            ),
        )
        .unwrap();
        let (a, b) = (
            read_transactions(&csv).unwrap(),
            read_transactions(&jsonl).unwrap(),
        );
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(a[0].scenario.as_deref(), Some("card,testing"));

        std::fs::write(&csv, "tx_id,amount\nt1,\"12\n").unwrap();
        assert!(read_transactions(&csv).is_err(), "unclosed quote");
        std::fs::write(&csv, "tx_id,ts\nt1\n").unwrap();
        assert!(read_transactions(&csv).is_err(), "short row");
    }
}
