//! Tests of [`super`] on generated hostile input in every format: rows the
//! stream would reject are set aside with its reasons, and never change
//! what the valid rows featurize to.

use super::*;
use crate::simulate::{write_file, SimConfig, Simulator};

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

    let err = |text: &str| {
        std::fs::write(&csv, text).unwrap();
        format!("{:#}", read_transactions(&csv).unwrap_err())
    };
    let header = "tx_id,ts,card_id,terminal_id,amount\n";
    assert!(
        err(&format!("{header}t1,\"12\n")).contains("tx.csv:2: a quoted cell is not closed"),
        "unclosed quote"
    );
    let short = err(&format!("{header}t1,2026-01-01T00:00:00Z\n"));
    assert!(
        short.contains("row 2 (line 2): wrong number of cells: 2, the header has 5"),
        "{short}"
    );
    assert!(err("tx_id,ts\nt1,x\n").contains("no `card_id` column"));
    assert!(err("tx_id,ts,ts,card_id\n").contains("column `ts` appears twice"));
}

/// A clean file reads exactly as the strict decode of every row did
/// before rows could be rejected, in every format: featurized outputs
/// of clean files do not change.
#[test]
fn clean_files_read_exactly_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let sim = || {
        Simulator::new(SimConfig {
            max_transactions: Some(3_000),
            ..SimConfig::for_transactions(3_000, 11)
        })
    };
    let (jsonl, parquet) = (dir.path().join("s.jsonl"), dir.path().join("s.parquet"));
    write_file(&jsonl, sim()).unwrap();
    write_file(&parquet, sim()).unwrap();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let before: Vec<LabelledTx> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(before.len() > 2_000);
    let strict = |p: &Path| {
        read_checked(p, FutureBound::from_now(3_600), |r| panic!("{r:?}"))
            .map(|rows| format!("{rows:?}"))
            .unwrap()
    };
    assert_eq!(strict(&jsonl), format!("{before:?}"));
    assert_eq!(strict(&parquet), format!("{before:?}"));
}

fn json_tx(id: &str, ts: &str, card: &str, amount: &str) -> String {
    format!(
        r#"{{"tx_id":"{id}","ts":"{ts}","card_id":"{card}","terminal_id":"m1","amount":{amount},"channel":"ecom","is_fraud":false}}"#
    )
}

/// Hour `h` of January 2026 (hours past 24 run into the next days).
fn hour(h: u32) -> String {
    format!("2026-01-{:02}T{:02}:00:00Z", 1 + h / 24, h % 24)
}

const FAR_FUTURE: &str = "9999-12-31T23:59:59Z";

/// The stream's bound on event times ahead of the wall clock (its
/// default), at one instant: a reason names the clock.
fn future() -> FutureBound {
    static NOW: std::sync::OnceLock<FutureBound> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| FutureBound::from_now(3_600))
}

/// Featurize `input` into `out` (not strict); the report and the bytes written.
fn featurize(input: &Path, out: &Path) -> (FeaturizeReport, Vec<u8>) {
    let report = featurize_file(input, out, 7, 4, 3, future(), false).unwrap();
    (report, std::fs::read(out).unwrap())
}

/// What every format must do with `hostile`, whose rows are expected to be
/// featurized (`None`) or rejected with the stream's label, against
/// `clean`, its featurized rows alone: the counts, the rejected rows (in
/// file order, written aside, summed up in the report), a table equal to
/// the clean one, and `--strict` failing on the first bad row. Returns the
/// rejected rows and the featurized tx ids.
fn check_hostile(
    hostile: &Path,
    clean: &Path,
    expected: &[Option<&'static str>],
) -> (Vec<Rejected>, Vec<String>) {
    let dir = hostile.parent().unwrap();
    let (out, clean_out) = (dir.join("out.parquet"), dir.join("clean-out.parquet"));
    let bad: Vec<&str> = expected.iter().flatten().copied().collect();
    let good = expected.len() - bad.len();

    let (report, featurized) = featurize(hostile, &out);
    assert_eq!(
        (report.read, report.featurized, report.rejected),
        (expected.len(), good, bad.len())
    );
    let mut by_kind = BTreeMap::new();
    for kind in &bad {
        *by_kind.entry(*kind).or_default() += 1;
    }
    assert_eq!(report.by_kind, by_kind);

    let mut rejected = Vec::new();
    read_checked(hostile, future(), |r| {
        rejected.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(rejected.iter().map(|r| r.kind).collect::<Vec<_>>(), bad);
    for r in &rejected {
        assert!(!r.reason.chars().any(char::is_control), "{r:?}");
    }
    // The file holds exactly the rejected rows, nothing else.
    let text = std::fs::read_to_string(rejected_path(&out)).unwrap();
    let written: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected_written: Vec<serde_json::Value> = rejected
        .iter()
        .map(|r| serde_json::json!({"location": r.location, "reason": r.reason, "row": r.row}))
        .collect();
    assert_eq!(written, expected_written);
    assert_eq!(report.first_rejected, rejected[..5]);
    assert_eq!(report.rejected_file, Some(rejected_path(&out)));
    let shown = report.to_string();
    assert!(
        shown.contains(&format!(
            "read {} rows, featurized {good}, rejected {}",
            expected.len(),
            bad.len()
        )),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{:>9}  {}\n", by_kind["json"], "json")),
        "{shown}"
    );
    for r in &rejected[..5] {
        assert!(
            shown.contains(&format!("{}: {}\n", r.location, r.reason)),
            "{shown}"
        );
    }
    assert!(!shown.contains(&rejected[5].location), "{shown}");

    // The table is the one the clean rows alone give.
    let (clean_report, clean_featurized) = featurize(clean, &clean_out);
    assert_eq!((clean_report.read, clean_report.rejected), (good, 0));
    assert!(featurized == clean_featurized, "featurized tables differ");
    assert!(!rejected_path(&clean_out).exists());
    // A clean run into the same output leaves no stale rejected file.
    featurize(clean, &out);
    assert!(!rejected_path(&out).exists());

    // --strict stops at the first bad row and writes nothing.
    let strict_out = dir.join("strict.parquet");
    let err = featurize_file(hostile, &strict_out, 7, 4, 3, future(), true)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("--strict: {}: {}", rejected[0].location, rejected[0].reason)
    );
    assert!(!strict_out.exists() && !rejected_path(&strict_out).exists());

    // Without the wall-clock bound, far-future rows are transactions.
    let unbounded = read_checked(hostile, FutureBound::OFF, |_| Ok(())).unwrap();
    let future_rows = bad.iter().filter(|k| **k == "skew_future").count();
    assert!(future_rows > 0);
    assert_eq!(unbounded.len(), good + future_rows);

    (rejected, tx_ids(&out))
}

fn tx_ids(parquet: &Path) -> Vec<String> {
    let df = ParquetReader::new(File::open(parquet).unwrap())
        .finish()
        .unwrap();
    let ids = df.column("tx_id").unwrap().str().unwrap();
    ids.iter().map(|s| s.unwrap().to_owned()).collect()
}

#[test]
fn hostile_json_lines_are_rejected_row_by_row_with_the_streams_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let huge = json_tx("t13", &hour(13), "c1", "1").replace(
        r#""is_fraud""#,
        &format!(r#""pad":"{}","is_fraud""#, "x".repeat(MAX_RECORD_BYTES)),
    );
    let mut non_utf8 = json_tx("t12", &hour(12), "c1", "5").into_bytes();
    non_utf8.insert(12, 0xff);
    let lines: Vec<(Vec<u8>, Option<&str>)> = vec![
        (json_tx("t01", &hour(1), "c1", "10.0").into(), None),
        (
            json_tx("t02", &hour(2), "c1", "-5").into(),
            Some("invalid_amount"),
        ),
        (json_tx("t03", &hour(3), "c1", "20").into(), None),
        (json_tx("t04", &hour(4), "c1", "NaN").into(), Some("json")),
        (json_tx("t05", &hour(5), "c1", "1e400").into(), Some("json")),
        (
            json_tx("t07", &hour(7), "c1", "3")
                .replace(r#""card_id":"c1","#, "")
                .into(),
            Some("json"),
        ),
        (
            json_tx("t08", &hour(8), r"c\u0000", "3").into(),
            Some("invalid_card_id"),
        ),
        (br#"{"tx_id":"t09","ts":"#.to_vec(), Some("json")),
        (
            json_tx("t10", FAR_FUTURE, "c1", "4").into(),
            Some("skew_future"),
        ),
        (json_tx("t11", &hour(11), "c1", "0").into(), None),
        (non_utf8, Some("json")),
        (huge.into(), Some("too_large")),
        (json_tx("t14", &hour(30), "c2", "7.5").into(), None),
        // Valid for the stream; its ground truth is not.
        (
            json_tx("t15", &hour(31), "c1", "6")
                .replace("false", r#""yes""#)
                .into(),
            Some("json"),
        ),
        (json_tx("t16", &hour(32), "c1", "0.0").into(), None),
    ];
    let write = |name: &str, keep: &dyn Fn(bool) -> bool| {
        let path = dir.path().join(name);
        let mut bytes = Vec::new();
        for (i, (line, kind)) in lines.iter().enumerate() {
            if keep(kind.is_none()) {
                bytes.extend_from_slice(line);
                bytes.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
            }
            if i == 4 {
                bytes.extend_from_slice(b"   \n");
            }
        }
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let hostile = write("hostile.jsonl", &|_| true);
    let clean = write("clean.jsonl", &|ok| ok);
    let expected: Vec<_> = lines.iter().map(|(_, kind)| *kind).collect();
    let (rejected, ids) = check_hostile(&hostile, &clean, &expected);
    assert_eq!(ids, ["t01", "t03", "t11", "t14", "t16"]);

    let bad = lines
        .iter()
        .enumerate()
        // Line numbers count the blank line after the fifth row.
        .map(|(i, (l, kind))| (i + 1 + usize::from(i > 4), l, kind))
        .filter(|(_, _, kind)| kind.is_some());
    for (r, (n, line, _)) in rejected.iter().zip(bad) {
        assert_eq!(r.location, format!("{}:{n}", hostile.display()));
        // The reason the stream's dead-letter queue gives the same record.
        if let Err(stream) = Transaction::decode(line) {
            assert_eq!(r.reason, stream.to_string());
        }
        let line = String::from_utf8_lossy(line);
        if line.len() <= MAX_RECORD_BYTES {
            assert_eq!(r.row, line);
        } else {
            assert!(line.starts_with(&r.row) && r.row.len() == MAX_RECORD_BYTES + 1);
        }
    }
    let reason = |id: &str| {
        let r = rejected.iter().find(|r| r.row.contains(id)).unwrap();
        r.reason.clone()
    };
    assert!(reason("t10").contains("ahead of this machine's clock"));
    assert!(reason("t15").starts_with("invalid JSON: invalid type: string \"yes\""));
}

#[test]
fn hostile_csv_rows_are_rejected_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let header = "tx_id,ts,card_id,terminal_id,amount,channel,is_fraud,scenario";
    let row = |id: &str, ts: &str, card: &str, amount: &str, fraud: &str| {
        format!("{id},{ts},{card},m1,{amount},ecom,{fraud},").into_bytes()
    };
    let mut non_utf8 = row("t12", &hour(12), "c1", "5", "0");
    non_utf8.insert(2, 0xff);
    let mut multi_line = row("t03", &hour(3), "c1", "20", "1");
    multi_line.extend_from_slice(b"\"card,testing\nsecond line\"");
    let records: Vec<(Vec<u8>, Option<&str>)> = vec![
        (row("t01", &hour(1), "c1", "10.0", "0"), None),
        (
            row("t02", &hour(2), "c1", "-5", "0"),
            Some("invalid_amount"),
        ),
        (multi_line, None),
        (row("t04", &hour(4), "c1", "NaN", "0"), Some("json")),
        (row("t05", &hour(5), "c1", "1e400", "0"), Some("json")),
        (row("t07", &hour(7), "", "3", "0"), Some("json")),
        (
            row("t08", &hour(8), "c\0", "3", "0"),
            Some("invalid_card_id"),
        ),
        (
            format!("t09,{},c1", hour(9)).into_bytes(),
            Some("wrong_cell_count"),
        ),
        (
            row("t10", FAR_FUTURE, "c1", "4", "false"),
            Some("skew_future"),
        ),
        (row("t11", &hour(11), "c1", "0", "FALSE"), None),
        (non_utf8, Some("invalid_utf8")),
        (row("t13", &hour(13), "c1", "abc", "0"), Some("json")),
        (row("t14", &hour(14), "c1", "6", "yes"), Some("json")),
        (row("t15", &hour(30), "c2", "7.5", "true"), None),
        (row("\"t16\"", &hour(31), "c1", "0.0", ""), None),
    ];
    // Also where each record starts: the header is row 1, line 1; a blank
    // line follows the fifth record.
    let write = |name: &str, keep: &dyn Fn(bool) -> bool| {
        let path = dir.path().join(name);
        let mut starts = Vec::new();
        let mut bytes = format!("{header}\r\n").into_bytes();
        let mut line = 2;
        for (i, (record, kind)) in records.iter().enumerate() {
            if keep(kind.is_none()) {
                starts.push((i + 2, line));
                bytes.extend_from_slice(record);
                bytes.extend_from_slice(b"\r\n");
                line += 1 + record.iter().filter(|&&b| b == b'\n').count();
            }
            if i == 4 {
                bytes.extend_from_slice(b"\r\n");
                line += 1;
            }
        }
        std::fs::write(&path, bytes).unwrap();
        (path, starts)
    };
    let (hostile, starts) = write("hostile.csv", &|_| true);
    let (clean, _) = write("clean.csv", &|ok| ok);
    let expected: Vec<_> = records.iter().map(|(_, kind)| *kind).collect();
    let (rejected, ids) = check_hostile(&hostile, &clean, &expected);
    assert_eq!(ids, ["t01", "t03", "t11", "t15", "t16"]);

    let bad = records
        .iter()
        .zip(starts)
        .filter(|((_, kind), _)| kind.is_some());
    for (r, ((record, _), (row, line))) in rejected.iter().zip(bad) {
        assert_eq!(
            r.location,
            format!("{}: row {row} (line {line})", hostile.display())
        );
        assert_eq!(r.row, String::from_utf8_lossy(record));
    }
    // A row's reason is the stream's for the same record as JSON.
    let stream = Transaction::decode(json_tx("t02", &hour(2), "c1", "-5").as_bytes());
    assert_eq!(rejected[0].reason, stream.unwrap_err().to_string());
    assert!(
        rejected[2].reason.contains("number out of range"),
        "{rejected:?}"
    );
}

#[test]
fn hostile_parquet_rows_are_rejected_row_by_row() {
    let dir = tempfile::tempdir().unwrap();
    let ms = |ts: &str| Some(DateTime::parse_from_rfc3339(ts).unwrap().timestamp_millis());
    let h = |h: u32| ms(&hour(h));
    // (tx_id, ts, card_id, amount, channel, expected)
    type Row = (
        &'static str,
        Option<i64>,
        Option<&'static str>,
        f64,
        &'static str,
        Option<&'static str>,
    );
    let rows: Vec<Row> = vec![
        ("t01", h(1), Some("c1"), 10.0, "ecom", None),
        (
            "t02",
            h(2),
            Some("c1"),
            -5.0,
            "ecom",
            Some("invalid_amount"),
        ),
        (
            "t03",
            h(3),
            Some("c1"),
            f64::NAN,
            "ecom",
            Some("invalid_amount"),
        ),
        (
            "t04",
            h(4),
            Some("c1"),
            f64::INFINITY,
            "ecom",
            Some("invalid_amount"),
        ),
        ("t05", h(5), None, 3.0, "ecom", Some("json")),
        (
            "t06",
            h(6),
            Some("c\0"),
            3.0,
            "ecom",
            Some("invalid_card_id"),
        ),
        ("t07", h(7), Some("c1"), 3.0, "web", Some("json")),
        (
            "t08",
            ms(FAR_FUTURE),
            Some("c1"),
            4.0,
            "pos",
            Some("skew_future"),
        ),
        ("t09", h(9), Some("c1"), 0.0, "atm", None),
        ("t10", None, Some("c1"), 3.0, "ecom", Some("json")),
        ("t11", h(30), Some("c2"), 7.5, "ecom", None),
    ];
    let write = |name: &str, rows: &[&Row]| {
        let utc = DataType::Datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC));
        let column = |name: &str, values: Vec<_>| Column::new(name.into(), values);
        let mut df = DataFrame::new_infer_height(vec![
            Column::new("tx_id".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new("ts".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>())
                .cast(&utc)
                .unwrap(),
            Column::new(
                "card_id".into(),
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            ),
            column("terminal_id", vec!["m1"; rows.len()]),
            Column::new(
                "amount".into(),
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            ),
            Column::new(
                "channel".into(),
                rows.iter().map(|r| r.4).collect::<Vec<_>>(),
            ),
            Column::new("is_fraud".into(), vec![false; rows.len()]),
        ])
        .unwrap();
        let path = dir.path().join(name);
        ParquetWriter::new(File::create(&path).unwrap())
            .finish(&mut df)
            .unwrap();
        path
    };
    let hostile = write("hostile.parquet", &rows.iter().collect::<Vec<_>>());
    let clean = write(
        "clean.parquet",
        &rows.iter().filter(|r| r.5.is_none()).collect::<Vec<_>>(),
    );
    let expected: Vec<_> = rows.iter().map(|r| r.5).collect();
    let (rejected, ids) = check_hostile(&hostile, &clean, &expected);
    assert_eq!(ids, ["t01", "t09", "t11"]);

    let bad = rows.iter().enumerate().filter(|(_, r)| r.5.is_some());
    for (r, (i, row)) in rejected.iter().zip(bad) {
        assert_eq!(r.location, format!("{}: row index {i}", hostile.display()));
        let shown: serde_json::Value = serde_json::from_str(&r.row).unwrap();
        assert_eq!(shown["tx_id"], row.0);
        assert_eq!(shown["card_id"].as_str(), row.2);
    }
    let row = |i: usize| serde_json::from_str::<serde_json::Value>(&rejected[i].row).unwrap();
    assert_eq!(row(1)["amount"], "NaN");
    assert_eq!(row(5)["ts"], "2026-01-01T07:00:00Z");
    assert_eq!(row(6)["ts"], FAR_FUTURE);
    assert!(
        rejected[4].reason.contains("card_id") && rejected[4].reason.contains("control character"),
        "{rejected:?}"
    );
    assert!(
        rejected[5].reason.contains("unknown variant `web`"),
        "{rejected:?}"
    );
    assert_eq!(rejected[7].reason, "invalid JSON: missing field `ts`");

    // A file without a required column is broken as a whole.
    let mut df = DataFrame::new_infer_height(vec![Column::new("tx_id".into(), ["t1"])]).unwrap();
    let broken = dir.path().join("broken.parquet");
    ParquetWriter::new(File::create(&broken).unwrap())
        .finish(&mut df)
        .unwrap();
    let err = read_checked(&broken, future(), |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no `ts` column"), "{err}");
}
