//! Labelled simulation output for offline training and evaluation.
//!
//! This file owns the folding of a [`SimEvent`] stream into one row per
//! transaction — the wire fields plus the ground truth (`is_fraud`,
//! `scenario`) and the time its label arrived (`reported_at`, null if none
//! did) — and writing those rows as JSON lines or Parquet. Rows keep stream
//! order. It never writes anything but the file it is given, and never
//! reads the ground truth from labels: labels only contribute their time.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use polars::prelude::*;
use serde::Serialize;

use super::SimEvent;
use crate::event::Transaction;

/// What [`write_file`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub transactions: usize,
    pub frauds: usize,
    /// Fraudulent transactions per scenario name, sorted by name.
    pub by_scenario: Vec<(String, usize)>,
}

/// Writes `events` to `path` as one row per transaction, in the format given
/// by the extension: `.jsonl` (one wire-format transaction object per line
/// with the extra fields `is_fraud`, `scenario` and `reported_at`) or
/// `.parquet` (the same columns, times as milliseconds in UTC).
///
/// Rows are buffered until the stream ends, because a label arrives days after
/// its transaction; about 200 bytes per transaction. A label for a transaction
/// not seen earlier in the stream, or a second label for one, is an error.
pub fn write_file(
    path: &Path,
    events: impl Iterator<Item = SimEvent>,
) -> anyhow::Result<FileSummary> {
    // Checked first so that a bad path fails before the simulation runs.
    let format = Format::of(path)?;
    let bar = crate::progress::bar(0, "events simulated");
    let rows = fold_labels(bar.wrap_iter(events))?;
    bar.finish_and_clear();
    match format {
        Format::JsonLines => write_json_lines(path, &rows),
        Format::Parquet => write_parquet(path, &rows),
    }
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(summarize(&rows))
}

enum Format {
    JsonLines,
    Parquet,
}

impl Format {
    fn of(path: &Path) -> anyhow::Result<Format> {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some("jsonl") => Ok(Format::JsonLines),
            Some("parquet") => Ok(Format::Parquet),
            _ => bail!(
                "{}: unknown output format, expected a .jsonl or .parquet file",
                path.display()
            ),
        }
    }
}

/// One output row: a transaction with its ground truth and label time.
#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    tx: Transaction,
    is_fraud: bool,
    scenario: Option<&'static str>,
    reported_at: Option<DateTime<Utc>>,
}

fn fold_labels(events: impl Iterator<Item = SimEvent>) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    // Only looked up, never iterated, so its order cannot leak into the output.
    let mut row_of_tx: HashMap<String, usize> = HashMap::new();
    for event in events {
        match event {
            SimEvent::Transaction {
                tx,
                is_fraud,
                scenario,
            } => {
                if row_of_tx.insert(tx.tx_id.clone(), rows.len()).is_some() {
                    bail!("transaction {} appears twice in the stream", tx.tx_id);
                }
                rows.push(Row {
                    tx,
                    is_fraud,
                    scenario,
                    reported_at: None,
                });
            }
            SimEvent::Label(label) => {
                let Some(&row) = row_of_tx.get(&label.tx_id) else {
                    bail!(
                        "label for transaction {} which is not earlier in the stream",
                        label.tx_id
                    );
                };
                if rows[row].reported_at.replace(label.reported_at).is_some() {
                    bail!("transaction {} is labelled twice", label.tx_id);
                }
            }
        }
    }
    Ok(rows)
}

fn write_json_lines(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    // Flushed explicitly: dropping a BufWriter would swallow the error.
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

fn write_parquet(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut frame = data_frame(rows)?;
    let file = File::create(path)?;
    ParquetWriter::new(&file).finish(&mut frame)?;
    file.sync_all()?;
    Ok(())
}

fn data_frame(rows: &[Row]) -> PolarsResult<DataFrame> {
    let strings = |name: &str, value: fn(&Row) -> Option<&str>| {
        Series::new(name.into(), rows.iter().map(value).collect::<Vec<_>>()).into_column()
    };
    let utc_millis = |name: &str, value: fn(&Row) -> Option<DateTime<Utc>>| {
        let millis: Vec<Option<i64>> = rows
            .iter()
            .map(|row| value(row).map(|t| t.timestamp_millis()))
            .collect();
        Series::new(name.into(), millis)
            .into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
            .into_column()
    };
    let columns = vec![
        strings("tx_id", |row| Some(row.tx.tx_id.as_str())),
        utc_millis("ts", |row| Some(row.tx.ts)),
        strings("card_id", |row| Some(row.tx.card_id.as_str())),
        strings("terminal_id", |row| Some(row.tx.terminal_id.as_str())),
        Series::new(
            "amount".into(),
            rows.iter().map(|row| row.tx.amount).collect::<Vec<f64>>(),
        )
        .into_column(),
        strings("currency", |row| row.tx.currency.as_deref()),
        Series::new(
            "mcc".into(),
            rows.iter()
                .map(|row| row.tx.mcc)
                .collect::<Vec<Option<i32>>>(),
        )
        .into_column(),
        strings("channel", |row| {
            row.tx.channel.map(|channel| channel.as_str())
        }),
        strings("country", |row| row.tx.country.as_deref()),
        Series::new(
            "is_fraud".into(),
            rows.iter().map(|row| row.is_fraud).collect::<Vec<bool>>(),
        )
        .into_column(),
        strings("scenario", |row| row.scenario),
        utc_millis("reported_at", |row| row.reported_at),
    ];
    DataFrame::new(rows.len(), columns)
}

fn summarize(rows: &[Row]) -> FileSummary {
    let mut by_scenario: BTreeMap<&str, usize> = BTreeMap::new();
    for scenario in rows.iter().filter_map(|row| row.scenario) {
        *by_scenario.entry(scenario).or_default() += 1;
    }
    FileSummary {
        transactions: rows.len(),
        frauds: rows.iter().filter(|row| row.is_fraud).count(),
        by_scenario: by_scenario
            .into_iter()
            .map(|(name, count)| (name.to_owned(), count))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::simulate::{SimConfig, Simulator};

    fn small_run() -> Simulator {
        Simulator::new(SimConfig {
            max_transactions: Some(20_000),
            ..SimConfig::for_transactions(20_000, 5)
        })
    }

    #[test]
    fn jsonl_lines_decode_as_wire_transactions_with_ground_truth() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.jsonl");
        let expected: Vec<SimEvent> = small_run().collect();
        let summary = write_file(&path, expected.clone().into_iter()).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        let expected_txs: Vec<(&Transaction, bool, Option<&str>)> = expected
            .iter()
            .filter_map(|event| match event {
                SimEvent::Transaction {
                    tx,
                    is_fraud,
                    scenario,
                } => Some((tx, *is_fraud, *scenario)),
                SimEvent::Label(_) => None,
            })
            .collect();
        assert_eq!(text.lines().count(), expected_txs.len());
        assert_eq!(summary.transactions, expected_txs.len());
        let mut labelled = 0;
        for (line, (tx, is_fraud, scenario)) in text.lines().zip(expected_txs) {
            assert_eq!(&Transaction::decode(line.as_bytes()).unwrap(), tx);
            let extra: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(extra["is_fraud"], is_fraud);
            assert_eq!(extra["scenario"].as_str(), scenario);
            if is_fraud {
                let reported_at: DateTime<Utc> =
                    serde_json::from_value(extra["reported_at"].clone()).unwrap();
                assert!(reported_at > tx.ts);
            }
            labelled += usize::from(!extra["reported_at"].is_null());
        }
        assert!(
            labelled >= summary.frauds && summary.frauds > 0,
            "{summary:?}"
        );
    }

    #[test]
    fn parquet_is_readable_with_the_expected_rows_and_types() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sim.parquet");
        let summary = write_file(&path, small_run()).unwrap();

        let frame = ParquetReader::new(File::open(&path).unwrap())
            .finish()
            .unwrap();
        assert_eq!(frame.height(), summary.transactions);
        let utc_millis = DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC));
        for (name, dtype) in [
            ("tx_id", DataType::String),
            ("ts", utc_millis.clone()),
            ("amount", DataType::Float64),
            ("mcc", DataType::Int32),
            ("channel", DataType::String),
            ("is_fraud", DataType::Boolean),
            ("scenario", DataType::String),
            ("reported_at", utc_millis),
        ] {
            assert_eq!(frame.column(name).unwrap().dtype(), &dtype, "{name}");
        }
        let frauds = frame
            .column("is_fraud")
            .unwrap()
            .bool()
            .unwrap()
            .sum()
            .unwrap_or(0) as usize;
        assert_eq!(frauds, summary.frauds);
        assert_eq!(
            summary.by_scenario.iter().map(|(_, n)| n).sum::<usize>(),
            summary.frauds
        );
    }

    #[test]
    fn unknown_extensions_and_orphan_labels_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_file(&dir.path().join("sim.csv"), small_run()).is_err());

        let orphan = SimEvent::Label(crate::event::Label {
            tx_id: "tx-nowhere".into(),
            is_fraud: true,
            reported_at: DateTime::UNIX_EPOCH,
        });
        let err = write_file(&dir.path().join("sim.jsonl"), std::iter::once(orphan)).unwrap_err();
        assert!(err.to_string().contains("tx-nowhere"), "{err}");
    }
}
