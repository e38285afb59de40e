//! Offline featurization of a labelled transaction file, for training and
//! evaluation: `riskstream features --in tx.{parquet,jsonl,csv} --out features.parquet`.
//!
//! It drives the very same [`featurize`] as the online engine, batch by batch
//! in event-time order. Terminal statistics come from the file itself: with
//! the whole history at hand every day is closed, so the values equal what
//! the engine computes online from Postgres.
//!
//! Each row goes through the stream's own decoding and validation
//! ([`Transaction::decode`]) and its bound on event times ahead of the wall
//! clock ([`FutureBound`]). A row the stream would dead-letter is a
//! [`Rejected`] outcome, with the stream's reason, handed to the caller; it
//! never stops the read unless the caller says so (`--strict`). Only a file
//! that cannot be read as a whole (unopenable, a broken CSV header, a
//! Parquet file without a required column) is an error.

use super::terminal::{needed_days, FraudReport, TerminalStats};
use super::{
    day_of, featurize, CardState, FeatureBatch, FEATURE_NAMES, HISTORY_FIELD_COUNT, NUM_FEATURES,
};
use crate::event::{printable, Channel, DecodeError, Transaction, MAX_RECORD_BYTES};
use crate::pipeline::event_time::{self, Skew, SkewPolicy};
use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use polars::prelude::*;
use serde::de::IntoDeserializer;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

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

/// The ground-truth fields of a row, decoded apart from the transaction so
/// that the transaction goes through exactly the stream's decoder.
#[derive(Deserialize)]
struct GroundTruth {
    #[serde(default)]
    is_fraud: Option<bool>,
    #[serde(default)]
    scenario: Option<String>,
    #[serde(default)]
    reported_at: Option<DateTime<Utc>>,
}

/// A row the stream would have dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// `file:line` (JSON lines), `file: row R (line L)` (CSV, the header is
    /// row 1) or `file: row index I` (Parquet, from 0).
    pub location: String,
    /// The stream's short label for the reason, as in
    /// `riskstream_dead_letters_total{reason}` (`json`, `invalid_amount`,
    /// `skew_future`, …); CSV adds `wrong_cell_count` and `invalid_utf8`.
    #[serde(skip)]
    pub kind: &'static str,
    /// The dead-letter reason the stream would store.
    pub reason: String,
    /// The original line (JSON lines, CSV), or the row as a JSON object
    /// (Parquet); at most [`MAX_RECORD_BYTES`] + 1 bytes of it.
    pub row: String,
}

/// Why a row is rejected: the stream's label and reason.
struct Invalid {
    kind: &'static str,
    reason: String,
}

impl From<DecodeError> for Invalid {
    fn from(e: DecodeError) -> Self {
        Invalid {
            kind: e.kind(),
            reason: e.to_string(),
        }
    }
}

impl From<Skew> for Invalid {
    fn from(e: Skew) -> Self {
        Invalid {
            kind: e.kind(),
            reason: e.to_string(),
        }
    }
}

/// The stream's bound on event time past this machine's clock
/// (`event_time.max_future_secs`, see [`crate::pipeline::event_time`]).
/// Its other bounds compare a record with its Kafka partition's clock,
/// which depends on partitioning and arrival order; a file is read whole
/// and featurized in event-time order, so they do not apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FutureBound {
    pub now_ms: i64,
    /// 0 disables the bound.
    pub max_future_secs: i64,
}

impl FutureBound {
    pub const OFF: FutureBound = FutureBound {
        now_ms: 0,
        max_future_secs: 0,
    };

    pub fn from_now(max_future_secs: i64) -> FutureBound {
        FutureBound {
            now_ms: event_time::now_ms(),
            max_future_secs,
        }
    }

    fn admit(&self, row: LabelledTx) -> Result<LabelledTx, Invalid> {
        let policy = SkewPolicy {
            max_ahead_ms: i64::MAX,
            max_behind_ms: i64::MAX,
            max_future_ms: self.max_future_secs.saturating_mul(1000),
        };
        policy.admit(row.tx.ts.timestamp_millis(), None, None, self.now_ms)?;
        Ok(row)
    }
}

/// Read a `.jsonl`, `.csv` or `.parquet` transaction file, failing on the
/// first row that does not decode and validate as on the stream (with its
/// location and reason). Event times are not bounded.
pub fn read_transactions(path: &Path) -> Result<Vec<LabelledTx>> {
    read_checked(path, FutureBound::OFF, |r| {
        bail!("{}: {}", r.location, r.reason)
    })
}

/// Read a `.jsonl`, `.csv` or `.parquet` transaction file: the rows the
/// stream would accept (decoded, valid, within `future`), in file order.
/// Every other row goes to `on_reject`, in file order; an error from it
/// ends the read with that error.
pub fn read_checked(
    path: &Path,
    future: FutureBound,
    on_reject: impl FnMut(Rejected) -> Result<()>,
) -> Result<Vec<LabelledTx>> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") | Some("json") => read_jsonl(path, future, on_reject),
        Some("csv") => read_csv(path, future, on_reject),
        Some("parquet") => read_parquet(path, future, on_reject),
        _ => bail!(
            "{}: expected a .jsonl, .csv or .parquet file",
            path.display()
        ),
    }
}

/// Decode one JSON record as the stream does, plus its ground truth.
fn decode_record(bytes: &[u8]) -> Result<LabelledTx, DecodeError> {
    let tx = Transaction::decode(bytes)?;
    let truth: GroundTruth = serde_json::from_slice(bytes).map_err(json_error)?;
    Ok(LabelledTx {
        tx,
        is_fraud: truth.is_fraud,
        scenario: truth.scenario,
        reported_at: truth.reported_at,
    })
}

fn json_error(e: impl fmt::Display) -> DecodeError {
    DecodeError::Json(printable(&e.to_string()))
}

fn read_jsonl(
    path: &Path,
    future: FutureBound,
    mut on_reject: impl FnMut(Rejected) -> Result<()>,
) -> Result<Vec<LabelledTx>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let (mut out, mut line, mut n) = (Vec::new(), Vec::new(), 0usize);
    while let Some(len) = read_line_capped(&mut reader, &mut line, MAX_RECORD_BYTES + 1)
        .with_context(|| format!("read {}", path.display()))?
    {
        n += 1;
        let record = trim_line_end(&line);
        if record.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The stream refuses a record this large without parsing it.
        let decoded = if len > MAX_RECORD_BYTES {
            Err(DecodeError::TooLarge(len, MAX_RECORD_BYTES).into())
        } else {
            decode_record(record).map_err(Invalid::from)
        };
        match decoded.and_then(|row| future.admit(row)) {
            Ok(row) => out.push(row),
            Err(e) => on_reject(Rejected {
                location: format!("{}:{n}", path.display()),
                kind: e.kind,
                reason: e.reason,
                row: String::from_utf8_lossy(record).into_owned(),
            })?,
        }
    }
    Ok(out)
}

/// Read one line into `buf`, keeping at most `cap` bytes of it so that a
/// hostile file cannot make one line fill the memory. Returns the line's
/// full length without its `\n` or `\r\n`, or `None` at the end of the input.
fn read_line_capped(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let (mut total, mut last) = (None, None);
    loop {
        let chunk = r.fill_buf()?;
        let newline = chunk.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(chunk.len());
        if take > 0 {
            last = Some(chunk[take - 1]);
        }
        let keep = take.min(cap.saturating_sub(buf.len()));
        buf.extend_from_slice(&chunk[..keep]);
        if chunk.is_empty() && total.is_none() {
            return Ok(None);
        }
        let len = total.unwrap_or(0) + take;
        total = Some(len);
        r.consume(take + usize::from(newline.is_some()));
        if newline.is_some() || take == 0 {
            return Ok(Some(len - usize::from(last == Some(b'\r'))));
        }
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Columns without which no row can be a transaction.
const REQUIRED: [&str; 5] = ["tx_id", "ts", "card_id", "terminal_id", "amount"];

/// A CSV file with a header naming the JSON fields (`tx_id`, `ts` as RFC 3339,
/// `card_id`, …, `is_fraud`, `scenario`, `reported_at`); an empty cell is null.
/// Each row is decoded exactly as the same object in a `.jsonl` file would
/// be, so it is rejected for the reason the stream would give that object.
fn read_csv(
    path: &Path,
    future: FutureBound,
    mut on_reject: impl FnMut(Rejected) -> Result<()>,
) -> Result<Vec<LabelledTx>> {
    let text = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let mut header: Option<Vec<String>> = None;
    let mut out = Vec::new();
    let mut row = 1;
    csv_records(path, &text, |record| {
        let Some(names) = &header else {
            header =
                Some(csv_header(record.cells).with_context(|| {
                    format!("{}: header (line {})", path.display(), record.line)
                })?);
            return Ok(());
        };
        row += 1;
        match csv_row(names, record.cells).and_then(|row| future.admit(row)) {
            Ok(tx) => out.push(tx),
            Err(e) => on_reject(Rejected {
                location: format!("{}: row {row} (line {})", path.display(), record.line),
                kind: e.kind,
                reason: e.reason,
                row: String::from_utf8_lossy(
                    &record.raw[..record.raw.len().min(MAX_RECORD_BYTES + 1)],
                )
                .into_owned(),
            })?,
        }
        Ok(())
    })?;
    Ok(out)
}

fn csv_header(cells: Vec<Vec<u8>>) -> Result<Vec<String>> {
    let mut names = Vec::with_capacity(cells.len());
    for cell in cells {
        let name = String::from_utf8(cell).context("not UTF-8")?;
        if names.contains(&name) {
            bail!("column `{name}` appears twice");
        }
        names.push(name);
    }
    if let Some(missing) = REQUIRED.iter().find(|r| !names.iter().any(|n| n == *r)) {
        bail!("no `{missing}` column");
    }
    Ok(names)
}

/// One CSV row as the JSON object it stands for, decoded as the stream would.
fn csv_row(header: &[String], cells: Vec<Vec<u8>>) -> Result<LabelledTx, Invalid> {
    if cells.len() != header.len() {
        return Err(Invalid {
            kind: "wrong_cell_count",
            reason: format!(
                "wrong number of cells: {}, the header has {}",
                cells.len(),
                header.len()
            ),
        });
    }
    let mut json = String::from("{");
    for (name, cell) in header.iter().zip(cells) {
        let cell = String::from_utf8(cell).map_err(|e| Invalid {
            kind: "invalid_utf8",
            reason: format!("invalid UTF-8: {}", e.utf8_error()),
        })?;
        if cell.is_empty() {
            continue;
        }
        if json.len() > 1 {
            json.push(',');
        }
        json.push_str(&serde_json::Value::from(name.as_str()).to_string());
        json.push(':');
        match (name.as_str(), cell.to_ascii_lowercase().as_str()) {
            // Verbatim, so that the number is parsed (and refused) as in JSON.
            ("amount" | "mcc", _) if is_json_number(&cell) => json.push_str(&cell),
            ("is_fraud", "true" | "1") => json.push_str("true"),
            ("is_fraud", "false" | "0") => json.push_str("false"),
            _ => json.push_str(&serde_json::Value::String(cell).to_string()),
        }
    }
    json.push('}');
    Ok(decode_record(json.as_bytes())?)
}

/// Whether `s` is a number in JSON's grammar (and so safe to splice in).
fn is_json_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

/// One CSV record: its cells, the line it starts on and its raw text.
struct CsvRecord<'a> {
    cells: Vec<Vec<u8>>,
    line: usize,
    raw: &'a [u8],
}

/// Split CSV bytes into records of cells (RFC 4180: a quoted cell may hold
/// commas, newlines and `""` for a quote), handing each to `each` in order.
/// Blank lines are skipped. Cells are bytes: whether they are UTF-8 is the
/// row's problem, not the file's; a quoted cell still open at the end of
/// `text` (from `path`) is the file's.
fn csv_records<'a>(
    path: &Path,
    text: &'a [u8],
    mut each: impl FnMut(CsvRecord<'a>) -> Result<()>,
) -> Result<()> {
    let (mut record, mut cell) = (Vec::new(), Vec::new());
    let (mut quoted, mut quote_line) = (false, 0);
    let (mut line, mut start, mut start_line) = (1, 0, 1);
    let mut i = 0;
    let mut emit = |record: &mut Vec<Vec<u8>>, end: usize, start: usize, start_line: usize| {
        let cells = std::mem::take(record);
        if cells.len() == 1 && cells[0].is_empty() {
            return Ok(());
        }
        let raw = &text[start..end];
        each(CsvRecord {
            cells,
            line: start_line,
            raw: raw.strip_suffix(b"\r").unwrap_or(raw),
        })
    };
    while i < text.len() {
        let c = text[i];
        match (quoted, c) {
            (true, b'"') if text.get(i + 1) == Some(&b'"') => {
                i += 1;
                cell.push(b'"');
            }
            (true, b'"') => quoted = false,
            (true, c) => cell.push(c),
            (false, b'"') if cell.is_empty() => {
                quoted = true;
                quote_line = line;
            }
            (false, b',') => record.push(std::mem::take(&mut cell)),
            (false, b'\r') if text.get(i + 1) == Some(&b'\n') => {}
            (false, b'\n') => {
                record.push(std::mem::take(&mut cell));
                emit(&mut record, i, start, start_line)?;
                (start, start_line) = (i + 1, line + 1);
            }
            (false, c) => cell.push(c),
        }
        if c == b'\n' {
            line += 1;
        }
        i += 1;
    }
    if quoted {
        bail!(
            "{}:{quote_line}: a quoted cell is not closed",
            path.display()
        );
    }
    if !cell.is_empty() || !record.is_empty() {
        record.push(cell);
        emit(&mut record, text.len(), start, start_line)?;
    }
    Ok(())
}

fn read_parquet(
    path: &Path,
    future: FutureBound,
    mut on_reject: impl FnMut(Rejected) -> Result<()>,
) -> Result<Vec<LabelledTx>> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("read {}: {e}", path.display()))?;
    if let Some(missing) = REQUIRED.iter().find(|c| df.column(c).is_err()) {
        bail!("{}: no `{missing}` column", path.display());
    }
    let ms = |name: &str| -> Result<Vec<Option<i64>>> {
        match df.column(name) {
            Ok(c) => {
                let c = c.cast(&DataType::Datetime(TimeUnit::Milliseconds, None))?;
                Ok(c.datetime()?.physical().iter().collect())
            }
            Err(_) => Ok(vec![None; df.height()]),
        }
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
    let (ts, reported) = (ms("ts")?, ms("reported_at")?);
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
    // What the stream would say of the same object with that field absent.
    let missing = |name: &str| DecodeError::Json(format!("missing field `{name}`"));
    let row = |i: usize| -> Result<LabelledTx, DecodeError> {
        let ms = ts[i].ok_or_else(|| missing("ts"))?;
        let tx = Transaction {
            tx_id: tx_id[i].clone().ok_or_else(|| missing("tx_id"))?,
            ts: DateTime::from_timestamp_millis(ms).ok_or_else(|| DecodeError::Field {
                field: "ts",
                reason: format!("{ms} ms since 1970 is out of range"),
            })?,
            card_id: card[i].clone().ok_or_else(|| missing("card_id"))?,
            terminal_id: term[i].clone().ok_or_else(|| missing("terminal_id"))?,
            amount: amount[i].ok_or_else(|| missing("amount"))?,
            currency: currency[i].clone(),
            mcc: mcc[i],
            channel: channel[i]
                .as_deref()
                .map(|c| Channel::deserialize(c.into_deserializer()))
                .transpose()
                .map_err(|e: serde::de::value::Error| json_error(e))?,
            country: country[i].clone(),
        };
        tx.validate()?;
        Ok(LabelledTx {
            tx,
            is_fraud: fraud[i],
            scenario: scenario[i].clone(),
            reported_at: reported[i].and_then(DateTime::from_timestamp_millis),
        })
    };
    // The row as the JSON object it stands for (non-finite numbers, which
    // JSON cannot hold, as strings; nulls left out).
    let render = |i: usize| -> String {
        let time = |ms: Option<i64>| {
            ms.map(|ms| match DateTime::from_timestamp_millis(ms) {
                Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true).into(),
                None => ms.into(),
            })
        };
        let amount = amount[i].map(|a| match serde_json::Number::from_f64(a) {
            Some(n) => serde_json::Value::Number(n),
            None => a.to_string().into(),
        });
        let fields: [(&str, Option<serde_json::Value>); 12] = [
            ("tx_id", tx_id[i].clone().map(Into::into)),
            ("ts", time(ts[i])),
            ("card_id", card[i].clone().map(Into::into)),
            ("terminal_id", term[i].clone().map(Into::into)),
            ("amount", amount),
            ("currency", currency[i].clone().map(Into::into)),
            ("mcc", mcc[i].map(Into::into)),
            ("channel", channel[i].clone().map(Into::into)),
            ("country", country[i].clone().map(Into::into)),
            ("is_fraud", fraud[i].map(Into::into)),
            ("scenario", scenario[i].clone().map(Into::into)),
            ("reported_at", time(reported[i])),
        ];
        let object: serde_json::Map<String, serde_json::Value> = fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect();
        serde_json::Value::Object(object).to_string()
    };
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        match row(i)
            .map_err(Invalid::from)
            .and_then(|row| future.admit(row))
        {
            Ok(tx) => out.push(tx),
            Err(e) => on_reject(Rejected {
                location: format!("{}: row index {i}", path.display()),
                kind: e.kind,
                reason: e.reason,
                row: render(i),
            })?,
        }
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

/// Rejected rows shown in a [`FeaturizeReport`].
const REPORT_FIRST: usize = 5;

/// What [`featurize_file`] read, featurized and set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeaturizeReport {
    pub input: PathBuf,
    /// Rows read (blank lines aside): featurized + rejected.
    pub read: usize,
    pub featurized: usize,
    pub rejected: usize,
    /// Rejected rows per [`Rejected::kind`].
    pub by_kind: BTreeMap<&'static str, usize>,
    /// The first rejected rows, in file order.
    pub first_rejected: Vec<Rejected>,
    /// Where every rejected row was written, if any was.
    pub rejected_file: Option<PathBuf>,
}

impl fmt::Display for FeaturizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: read {} rows, featurized {}, rejected {}",
            self.input.display(),
            self.read,
            self.featurized,
            self.rejected
        )?;
        match &self.rejected_file {
            Some(p) => writeln!(f, " (written to {})", p.display())?,
            None => return writeln!(f),
        }
        let mut kinds: Vec<_> = self.by_kind.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        writeln!(f, "rejected rows by reason:")?;
        for (kind, n) in kinds {
            writeln!(f, "  {n:>9}  {kind}")?;
        }
        writeln!(f, "first rejected rows:")?;
        for r in &self.first_rejected {
            writeln!(f, "  {}: {}", r.location, r.reason)?;
        }
        Ok(())
    }
}

/// Where [`featurize_file`] writes the rows it rejects: `<out>.rejected.jsonl`.
pub fn rejected_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".rejected.jsonl");
    name.into()
}

/// Featurize a whole file in event-time order and write the training table,
/// with histories of `history_len` past transactions.
///
/// Rows the stream would reject (not decoding, not valid, or beyond
/// `future`) are left out, written as JSON lines to [`rejected_path`] (only
/// if there are any; a stale one is removed) and summed up in the report.
/// With `strict`, the first such row is an error naming its location and
/// reason, and nothing is written.
pub fn featurize_file(
    input: &Path,
    output: &Path,
    label_delay_days: i64,
    history_len: usize,
    batch_rows: usize,
    future: FutureBound,
    strict: bool,
) -> Result<FeaturizeReport> {
    let rejected_file = rejected_path(output);
    let mut report = FeaturizeReport {
        input: input.to_owned(),
        read: 0,
        featurized: 0,
        rejected: 0,
        by_kind: BTreeMap::new(),
        first_rejected: Vec::new(),
        rejected_file: None,
    };
    let mut sink: Option<BufWriter<File>> = None;
    let mut rows = read_checked(input, future, |r| {
        if strict {
            bail!("--strict: {}: {}", r.location, r.reason);
        }
        let out = match &mut sink {
            Some(out) => out,
            None => sink
                .insert(BufWriter::new(File::create(&rejected_file).with_context(
                    || format!("create {}", rejected_file.display()),
                )?)),
        };
        serde_json::to_writer(&mut *out, &r)?;
        out.write_all(b"\n")?;
        report.rejected += 1;
        *report.by_kind.entry(r.kind).or_default() += 1;
        if report.first_rejected.len() < REPORT_FIRST {
            report.first_rejected.push(r);
        }
        Ok(())
    })?;
    match sink {
        Some(out) => {
            // Flushed explicitly: dropping a BufWriter would swallow the error.
            out.into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("write {}", rejected_file.display()))?;
            report.rejected_file = Some(rejected_file);
        }
        None => match std::fs::remove_file(&rejected_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("remove {}", rejected_file.display()))
            }
            _ => {}
        },
    }
    // Stable: ties keep file order, as partition order would.
    rows.sort_by_key(|r| r.tx.ts);
    let all = featurize_rows(&rows, label_delay_days, history_len, batch_rows, |_| true)?;
    let mut df = training_frame(&rows, &all, history_len)?;
    let file = File::create(output).with_context(|| format!("create {}", output.display()))?;
    ParquetWriter::new(file).finish(&mut df)?;
    report.featurized = rows.len();
    report.read = report.featurized + report.rejected;
    Ok(report)
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
    let bar = crate::progress::bar(rows.len() as u64, "rows featurized");
    for (c, chunk) in rows.chunks(batch_rows).enumerate() {
        bar.inc(chunk.len() as u64);
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
    bar.finish_and_clear();
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
#[path = "offline_tests.rs"]
mod tests;
