//! `riskstream serve` end to end, without Kafka or Postgres: the real binary
//! on a free port, serving a temporary copy of `models/`.
//!
//! * every model with a `golden.json` through the real Triton client
//!   (`integration-tests/triton_client.py`, `tritonclient[http]` in `.venv`);
//! * malformed requests get a 4xx JSON error naming the problem, and the
//!   server keeps answering;
//! * hot swap: a new version is swapped in with no failed request while a
//!   client keeps sending, a broken one leaves the old version serving and
//!   is counted, a new directory is loaded and a removed one unloaded.

use crate::common::repo_root;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FRAUD: &str = "fraud-attention";
const MAX_BODY: usize = 4 << 20;

/// The server as a child process, killed on drop.
struct Server {
    child: Child,
    addr: String,
    models: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- riskstream serve log (last lines) ---");
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

impl Server {
    fn start() -> Server {
        Server::start_with_timeout(60_000)
    }

    /// Copy every model directory of the repository and start serving it.
    fn start_with_timeout(timeout_ms: u64) -> Server {
        let models = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(repo_root().join("models")).unwrap() {
            let dir = entry.unwrap().path();
            if dir.join("manifest.json").is_file() {
                copy_dir(&dir, &models.path().join(dir.file_name().unwrap()));
            }
        }
        // The tests count versions from 1, whatever the committed one is.
        edit_manifest(&models.path().join(FRAUD), |m| m["version"] = "1".into());
        let log = models.path().with_extension("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_riskstream"))
            .args(["serve", "--listen", "127.0.0.1:0", "--models"])
            .arg(models.path())
            .args([
                "--poll-ms",
                "300",
                "--max-delay-ms",
                "20",
                "--max-batch",
                "32",
            ])
            .args([
                "--max-body-bytes",
                &MAX_BODY.to_string(),
                "--timeout-ms",
                &timeout_ms.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start riskstream serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("riskstream serve prints its address");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let server = Server {
            child,
            addr,
            models,
            log,
        };
        wait_until(Duration::from_secs(120), "the server is ready", || {
            server.get("/v2/health/ready").0 == 200
        });
        server
    }

    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        http(&self.addr, method, path, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, b"")
    }

    fn infer(&self, model: &str, body: &[u8]) -> (u16, Value) {
        let (status, text) = self.request("POST", &format!("/v2/models/{model}/infer"), body);
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("non-JSON answer {status} {text:?}: {e}"));
        (status, value)
    }

    fn served_version(&self, model: &str) -> Option<String> {
        let (status, text) = self.get(&format!("/v2/models/{model}"));
        (status == 200).then(|| {
            let v: Value = serde_json::from_str(&text).unwrap();
            v["versions"][0].as_str().unwrap().to_string()
        })
    }

    /// The value of `name{model="..."}` in /metrics (0 when absent).
    fn metric(&self, name: &str, model: &str) -> f64 {
        let (_, text) = self.get("/metrics");
        let prefix = format!("{name}{{model=\"{model}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }
}

/// One HTTP/1.1 exchange on a fresh connection: (status, body).
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to riskstream serve");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // A refused (oversized) body may be cut short by the server; the answer still comes.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response to {method} {path}: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An infer request for row `row` of the model's golden inputs (nested data).
fn golden_row(dir: &Path, row: usize) -> Vec<u8> {
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let golden: Value =
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    let inputs: Vec<Value> = manifest["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|spec| {
            let name = spec["name"].as_str().unwrap();
            let data = golden["inputs"][name][row].clone();
            let mut shape = vec![1];
            let mut probe = &data;
            while let Value::Array(items) = probe {
                shape.push(items.len());
                probe = &items[0];
            }
            let datatype = if spec["dtype"] == "int64" {
                "INT64"
            } else {
                "FP32"
            };
            json!({"name": name, "shape": shape, "datatype": datatype, "data": [data]})
        })
        .collect();
    serde_json::to_vec(&json!({"id": format!("row-{row}"), "inputs": inputs})).unwrap()
}

fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn serve_answers_the_triton_client_with_every_golden_output() {
    let server = Server::start();
    let golden_dirs = std::fs::read_dir(server.models.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("golden.json").is_file())
        .count();
    assert!(golden_dirs >= 1);
    let out = Command::new(repo_root().join(".venv/bin/python"))
        .arg(repo_root().join("integration-tests/triton_client.py"))
        .args(["--url", &server.addr, "--models"])
        .arg(server.models.path())
        .output()
        .expect("run .venv/bin/python (make setup; pip install tritonclient[http])");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "triton_client.py failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        golden_dirs + 1,
        "one line per model with a golden.json, then the total:\n{stdout}"
    );
    print!("{stdout}");
}

#[test]
fn serve_refuses_malformed_requests_with_a_4xx_naming_the_problem() {
    let server = Server::start();
    let good = golden_row(&server.models.path().join(FRAUD), 0);
    let mut request: Value = serde_json::from_slice(&good).unwrap();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut r = request.clone();
        edit(&mut r);
        serde_json::to_vec(&r).unwrap()
    };
    let oversized = vec![b' '; MAX_BODY + 1];
    let rows33 = with(&|r| {
        for input in r["inputs"].as_array_mut().unwrap() {
            let row = input["data"][0].clone();
            input["data"] = Value::Array(vec![row; 33]);
            input["shape"][0] = 33.into();
        }
    });
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("wrong tensor name", FRAUD, with(&|r| r["inputs"][0]["name"] = "feature".into()), 400,
         "unknown input \"feature\": model \"fraud-attention\" takes [\"features\" FP32 [-1, 20]"),
        ("missing tensor", FRAUD, with(&|r| { r["inputs"].as_array_mut().unwrap().remove(1); }), 400,
         "missing input \"history\""),
        ("extra tensor", FRAUD, with(&|r| { let x = r["inputs"][0].clone(); r["inputs"].as_array_mut().unwrap().push(x); }), 400,
         "input \"features\" is given twice"),
        ("wrong shape", FRAUD, with(&|r| r["inputs"][0]["shape"] = json!([1, 10, 2])), 400,
         "input \"features\": shape [1, 10, 2] has rank 3, expected rank 2"),
        ("wrong fixed dim", FRAUD, with(&|r| { r["inputs"][0]["shape"] = json!([2, 10]); }), 400,
         "input \"features\": shape [2, 10] does not fit [-1, 20]: dim 1 is 10, expected 20"),
        ("data length", FRAUD, with(&|r| r["inputs"][0]["shape"] = json!([2, 20])), 400,
         "input \"features\": shape [2, 20] needs 40 values, \"data\" has 20"),
        ("wrong dtype", FRAUD, with(&|r| r["inputs"][2]["datatype"] = "INT64".into()), 400,
         "input \"history_mask\" has datatype INT64, expected FP32"),
        ("non-finite", FRAUD, with(&|r| r["inputs"][0]["data"][0][3] = json!(1e300)), 400,
         "input \"features\": element 3 is 1e+300, out of range for FP32"),
        ("unknown output", FRAUD, with(&|r| r["outputs"] = json!([{"name": "scores"}])), 400,
         "unknown output \"scores\""),
        ("batch over max", FRAUD, rows33, 400, "batch size 33 (dim 0 of input \"features\") exceeds the maximum of 32"),
        ("bad JSON", FRAUD, b"{\"inputs\": [".to_vec(), 400, "malformed JSON request"),
        ("not an object", FRAUD, b"[1, 2]".to_vec(), 400, "the request must be a JSON object"),
        ("oversized body", FRAUD, oversized, 413, "request body exceeds 4194304 bytes"),
        ("unknown model", "no-such-model", good.clone(), 404, "unknown model \"no-such-model\""),
    ];
    for (what, model, body, status, message) in cases {
        let (got, answer) = server.infer(model, &body);
        let error = answer["error"].as_str().unwrap_or_default();
        assert_eq!(got, status, "{what}: {answer}");
        assert!(
            error.contains(message),
            "{what}: {error:?} should contain {message:?}"
        );
    }
    let (status, answer) = server.request(
        "POST",
        &format!("/v2/models/{FRAUD}/versions/9/infer"),
        &good,
    );
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer.contains("version \\\"9\\\" is not served"),
        "{answer}"
    );

    // Still serving, and flat data is as good as nested.
    assert_eq!(server.get("/v2/health/ready").0, 200);
    let (status, nested) = server.infer(FRAUD, &good);
    assert_eq!(status, 200, "{nested}");
    for input in request["inputs"].as_array_mut().unwrap() {
        let mut flat = Vec::new();
        let mut stack = vec![input["data"].take()];
        while let Some(v) = stack.pop() {
            match v {
                Value::Array(items) => stack.extend(items.into_iter().rev()),
                x => flat.push(x),
            }
        }
        input["data"] = Value::Array(flat);
    }
    let (status, flat) = server.infer(FRAUD, &serde_json::to_vec(&request).unwrap());
    assert_eq!(status, 200, "{flat}");
    assert_eq!(flat, nested);
    assert_eq!(nested["id"], "row-0");
    assert_eq!(nested["model_version"], "1");
    let statuses = server.get("/metrics").1;
    assert!(
        statuses.contains("riskstream_serve_requests_total{model=\"_unknown\",status=\"404\"} 1"),
        "{statuses}"
    );
    assert!(statuses.contains(&format!(
        "riskstream_serve_requests_total{{model=\"{FRAUD}\",status=\"413\"}} 1"
    )));
}

#[test]
fn serve_hot_swaps_versions_without_failing_requests() {
    let server = Server::start();
    let dir = server.models.path().join(FRAUD);
    let request = golden_row(&dir, 1);
    let (status, baseline) = server.infer(FRAUD, &request);
    assert_eq!(
        (status, baseline["model_version"].as_str()),
        (200, Some("1"))
    );

    // A client keeps sending while versions change under it.
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, stop, request) = (server.addr.clone(), stop.clone(), request.clone());
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, text) = http(
                    &addr,
                    "POST",
                    &format!("/v2/models/{FRAUD}/infer"),
                    &request,
                );
                answers.push((status, text));
                std::thread::sleep(Duration::from_millis(5));
            }
            answers
        })
    };

    edit_manifest(&dir, |m| m["version"] = "2".into());
    wait_until(Duration::from_secs(60), "version 2 is served", || {
        server.served_version(FRAUD).as_deref() == Some("2")
    });
    std::thread::sleep(Duration::from_millis(300));

    let failures = server.metric("riskstream_model_reload_failures_total", FRAUD);
    let onnx = std::fs::read(dir.join("model.onnx")).unwrap();
    std::fs::write(dir.join("model.onnx"), &onnx[..onnx.len() / 2]).unwrap();
    edit_manifest(&dir, |m| m["version"] = "3".into());
    wait_until(
        Duration::from_secs(60),
        "the broken version is counted",
        || server.metric("riskstream_model_reload_failures_total", FRAUD) > failures,
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.served_version(FRAUD).as_deref(), Some("2"));

    stop.store(true, Ordering::Relaxed);
    let answers = client.join().unwrap();
    assert!(
        answers.len() > 10,
        "the client loop ran ({} requests)",
        answers.len()
    );
    let mut versions = Vec::new();
    for (status, text) in &answers {
        assert_eq!(*status, 200, "a request failed during the swap: {text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["outputs"], baseline["outputs"], "same model, same answer");
        let version = v["model_version"].as_str().unwrap().to_string();
        if versions.last() != Some(&version) {
            versions.push(version);
        }
    }
    assert_eq!(versions, ["1", "2"], "versions in the order they answered");
    assert!(server.metric("riskstream_model_reloads_total", FRAUD) >= 2.0);

    // A new directory is loaded; a removed one is unloaded.
    let copy = server.models.path().join("fraud-copy");
    copy_dir(&repo_root().join("models").join(FRAUD), &copy);
    edit_manifest(&copy, |m| m["name"] = "fraud-copy".into());
    wait_until(
        Duration::from_secs(60),
        "the new directory is served",
        || server.get("/v2/models/fraud-copy/ready").0 == 200,
    );
    let (status, answer) = server.infer("fraud-copy", &request);
    assert_eq!(status, 200, "{answer}");
    std::fs::remove_dir_all(&copy).unwrap();
    wait_until(
        Duration::from_secs(60),
        "the removed directory is unloaded",
        || server.get("/v2/models/fraud-copy/ready").0 == 404,
    );
    assert_eq!(server.infer(FRAUD, &request).0, 200);
}

#[test]
fn serve_times_out_a_stalled_request_and_keeps_serving() {
    let server = Server::start_with_timeout(500);
    let mut stream = TcpStream::connect(&server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // A body that never arrives in full.
    let head = format!(
        "POST /v2/models/{FRAUD}/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{{\"inputs\""
    );
    stream.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 504"), "{text}");
    assert!(text.contains("no answer within 500 ms"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let request = golden_row(&server.models.path().join(FRAUD), 2);
    assert_eq!(server.infer(FRAUD, &request).0, 200);
}
