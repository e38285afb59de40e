#!/usr/bin/env python3
"""Serving benchmark: `riskstream serve` per model, beside the in-process floor.

Starts the release binary (`riskstream serve --models DIR --listen 127.0.0.1:0`),
waits for /v2/health/ready, and for every model directory under DIR that has a
golden.json and is READY on the server, sends a batch-1 request built from the
first golden row (dim 0 of each golden input sliced to one row) and measures:

  latency     1 client, closed loop: warm-up, then --requests requests -> p50,
              p99, mean, req/s.
  throughput  --clients client processes (not threads: the GIL would make the
              client the bottleneck), closed loop for --duration seconds after
              a warm-up -> req/s, p50, p99, and the CPU the clients, the server
              and the whole machine used meanwhile.
  floor       the same model and the same batch-1 input run by Python's
              onnxruntime.InferenceSession in this process, with the server's
              session options (graph optimisation ORT_ENABLE_LAYOUT, which is
              what ort's Level3 maps to; --intra-threads intra-op threads; one
              inter-op thread) -> p50, p99, mean, req/s on one thread.

Overhead per request = serve p50 (p99) at 1 client - floor p50 (p99). The
delta of /metrics over each phase shows how many requests the dynamic batcher
merged into one ONNX Runtime run. With --alt-delay-pass (default on) a second
server with `--max-delay-ms <--alt-delay-ms, 2>` repeats both serve phases, to
show what waiting for company costs and buys against the default of no wait.

Client: http.client from the standard library, one keep-alive connection per
client with TCP_NODELAY; the JSON request body is encoded once, and responses
are read in full but only the first one is parsed (and checked against the
golden outputs), so the client does as little per request as Python allows.

Writes one JSON document (default bench/.out/serve.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import multiprocessing as mp
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
V2_DTYPES = {"float32": "FP32", "int64": "INT64"}
NP_DTYPES = {"float32": np.float32, "int64": np.int64}
# ort's GraphOptimizationLevel::Level3, which src/onnx/mod.rs (open_session) uses.
SERVER_GRAPH_OPT = "ORT_ENABLE_LAYOUT"
# src/onnx/mod.rs DISABLED_OPTIMIZERS, as the server builds every session.
SERVER_DISABLED_OPTIMIZERS = "SkipLayerNormFusion"


def say(msg: str) -> None:
    print(f"serve-bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine --

def machine() -> dict:
    import onnxruntime

    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu.group(1).strip() if cpu else "unknown",
        "memory_gib": round(mem_kb / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user/nice
    return total - idle, total


def process_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- server --

class Server:
    """A `riskstream serve` child process on a free port."""

    def __init__(self, binary: Path, models: Path, flags: list[str], log: Path):
        self.argv = [str(binary), "serve", "--models", str(models), "--listen", "127.0.0.1:0", *flags]
        self.log = log.open("w")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        m = re.match(r"listening on http://(\S+):(\d+)", line)
        if not m:
            self.stop()
            raise SystemExit(f"serve-bench: the server did not start (first line {line!r}); see {log}")
        self.host, self.port = m.group(1), int(m.group(2))
        # Keep draining stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def get(self, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"serve-bench: the server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"serve-bench: /v2/health/ready not 200 after {timeout_s:.0f} s; see {self.log.name}")

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        status, body = self.get("/metrics")
        assert status == 200, status
        return parse_prometheus(body.decode())

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text format as {(name, frozenset(labels)): value}."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        samples[name, frozenset(LABEL.findall(labels))] = float(value)
    return samples


def histogram_delta(before: dict, after: dict, name: str, model: str) -> dict:
    """One model's histogram `name` over an interval: count, sum, and the
    non-cumulative count per bucket ("le" upper bound)."""
    def series(samples, suffix):
        out = {}
        for (n, labels), v in samples.items():
            d = dict(labels)
            if n == name + suffix and d.get("model") == model:
                out[d.get("le")] = v
        return out

    delta = lambda suffix: {k: v - series(before, suffix).get(k, 0.0) for k, v in series(after, suffix).items()}
    count = delta("_count").get(None, 0.0)
    total = delta("_sum").get(None, 0.0)
    cumulative = sorted(delta("_bucket").items(), key=lambda kv: float(kv[0]))
    buckets, prev = [], 0.0
    for le, c in cumulative:
        buckets.append([le, int(round(c - prev))])
        prev = c
    while buckets and buckets[-1][1] == 0:
        buckets.pop()
    return {"count": int(round(count)), "sum": total, "mean": total / count if count else None,
            "buckets": buckets}


def status_delta(before: dict, after: dict, model: str) -> dict[str, int]:
    out = {}
    for (n, labels), v in after.items():
        d = dict(labels)
        if n == "riskstream_serve_requests_total" and d.get("model") == model:
            diff = v - before.get((n, labels), 0.0)
            if diff:
                out[d["status"]] = int(round(diff))
    return out


def server_view(before: dict, after: dict, model: str) -> dict:
    """What the server saw over one phase, from its /metrics."""
    req = histogram_delta(before, after, "riskstream_serve_request_seconds", model)
    inf = histogram_delta(before, after, "riskstream_serve_inference_seconds", model)
    merged = histogram_delta(before, after, "riskstream_serve_batch_requests", model)
    rows = histogram_delta(before, after, "riskstream_serve_batch_rows", model)
    ms = lambda v: None if v is None else round(1000 * v, 4)
    return {
        "requests_by_status": status_delta(before, after, model),
        "request_mean_ms": ms(req["mean"]),  # request in to response out, inside the server
        "ort_runs": inf["count"],
        "inference_mean_ms": ms(inf["mean"]),  # one ONNX Runtime run, maybe of merged requests
        "requests_per_run_mean": merged["mean"],
        # [bucket upper bound "le", runs in that bucket (not cumulative)], up to the last non-empty one
        "requests_per_run_buckets": merged["buckets"],
        "rows_per_run_mean": rows["mean"],
    }


# ---------------------------------------------------------------- request --

def model_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if (d / "manifest.json").is_file() and (d / "golden.json").is_file())


def batch1_inputs(manifest: dict, golden: dict) -> dict[str, np.ndarray]:
    """The first golden row of every input, as a batch of one, in manifest order."""
    out = {}
    for spec in manifest["inputs"]:
        rows = golden["inputs"][spec["name"]]
        out[spec["name"]] = np.asarray(rows[0], dtype=NP_DTYPES[spec["dtype"]])[np.newaxis, ...]
    return out


def v2_body(inputs: dict[str, np.ndarray]) -> bytes:
    return json.dumps({"inputs": [
        {"name": name, "shape": list(a.shape), "datatype": V2_DTYPES[a.dtype.name], "data": a.ravel().tolist()}
        for name, a in inputs.items()
    ]}, separators=(",", ":")).encode()


def max_abs_diff(golden_row, got) -> float:
    a = np.asarray(golden_row, dtype=np.float64).ravel()
    b = np.asarray(got, dtype=np.float64).ravel()
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# ----------------------------------------------------------------- client --

def connect(host: str, port: int) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.connect()
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


_CONN: dict = {}


def one_request(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, r.read()


def closed_loop(task: tuple) -> dict:
    """One client process of the throughput phase: requests back to back until
    `start_at` (warm-up), then until `end_at`; latencies of the requests that
    started inside the window. Clock: time.monotonic, system-wide on Linux."""
    host, port, path, body, start_at, end_at = task
    key = (host, port)
    if key not in _CONN:
        _CONN[key] = connect(host, port)
    conn = _CONN[key]
    headers = {"Content-Type": "application/json"}
    clock = time.perf_counter_ns
    lat, errors, completed = [], 0, 0
    start_ns, end_ns = int(start_at * 1e9), int(end_at * 1e9)
    while time.monotonic_ns() < start_ns:
        one_request(conn, path, body, headers)
    cpu0 = time.process_time()
    while True:
        t0 = clock()
        if time.monotonic_ns() >= end_ns:
            break
        status, _ = one_request(conn, path, body, headers)
        t1 = clock()
        if status != 200:
            errors += 1
        elif time.monotonic_ns() <= end_ns:
            completed += 1
            lat.append(t1 - t0)
    return {"latencies_ns": lat, "completed": completed, "errors": errors, "cpu_s": time.process_time() - cpu0}


def summarise(lat_ns, wall_s: float, n: int) -> dict:
    ms = np.asarray(lat_ns, dtype=np.float64) / 1e6
    if not ms.size:
        return {"requests": 0}
    return {
        "requests": n,
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "max_ms": round(float(ms.max()), 4),
        "req_per_s": round(n / wall_s, 1),
        "wall_s": round(wall_s, 3),
    }


def latency_phase(server: Server, model: str, path: str, body: bytes, warmup: int, n: int) -> dict:
    conn = connect(server.host, server.port)
    headers = {"Content-Type": "application/json"}
    for _ in range(warmup):
        one_request(conn, path, body, headers)
    m0 = server.metrics()
    lat = np.empty(n, dtype=np.int64)
    errors = 0
    cpu0, srv0 = time.process_time(), server.cpu_seconds()
    clock = time.perf_counter_ns
    started = clock()
    for i in range(n):
        t0 = clock()
        status, _ = one_request(conn, path, body, headers)
        lat[i] = clock() - t0
        errors += status != 200
    wall = (clock() - started) / 1e9
    client_cpu, server_cpu = time.process_time() - cpu0, server.cpu_seconds() - srv0
    conn.close()
    out = summarise(lat, wall, n)
    out.update(errors=errors, client_cpu_ms_per_request=round(1000 * client_cpu / n, 4),
               server_cpu_ms_per_request=round(1000 * server_cpu / n, 4),
               server=server_view(m0, server.metrics(), model))
    return out


def throughput_phase(server: Server, model: str, pool, clients: int, path: str, body: bytes,
                     warmup_s: float, duration_s: float) -> dict:
    start_at = time.monotonic() + warmup_s
    end_at = start_at + duration_s
    tasks = [(server.host, server.port, path, body, start_at, end_at)] * clients
    # Sample CPU counters at the window's edges, from a thread, while the
    # clients run (map_async returns at once).
    marks = {}

    def sample(at, key):
        time.sleep(max(0.0, at - time.monotonic()))
        marks[key] = (machine_busy_jiffies(), server.cpu_seconds(), time.monotonic(), load_average(),
                      server.metrics())

    samplers = [threading.Thread(target=sample, args=(start_at, "start")),
                threading.Thread(target=sample, args=(end_at, "end"))]
    for s in samplers:
        s.start()
    results = pool.map_async(closed_loop, tasks, chunksize=1).get(timeout=warmup_s + duration_s + 120)
    for s in samplers:
        s.join()
    (busy0, total0), srv0, t0, load0, m0 = marks["start"]
    (busy1, total1), srv1, t1, load1, m1 = marks["end"]
    wall = t1 - t0
    lat = np.concatenate([np.asarray(r["latencies_ns"], dtype=np.int64) for r in results])
    completed = sum(r["completed"] for r in results)
    client_cpu = sum(r["cpu_s"] for r in results)
    out = summarise(lat, duration_s, completed)
    out.update(
        clients=clients,
        errors=sum(r["errors"] for r in results),
        per_client_req_per_s=[round(r["completed"] / duration_s, 1) for r in results],
        # Cores busy on average over the window: the clients (their own
        # process time), the server, and the whole machine (/proc/stat).
        client_cores=round(client_cpu / duration_s, 2),
        server_cores=round((srv1 - srv0) / wall, 2),
        machine_cores=round((os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1), 2),
        client_cpu_ms_per_request=round(1000 * client_cpu / max(completed, 1), 4),
        server_cpu_ms_per_request=round(1000 * (srv1 - srv0) / max(completed, 1), 4),
        load_average_start=load0,
        load_average_end=load1,
        server=server_view(m0, m1, model),
    )
    return out


# ------------------------------------------------------------------ floor --

def floor_phase(model_path: Path, inputs: dict[str, np.ndarray], intra_threads: int,
                warmup: int, n: int, min_seconds: float) -> tuple[dict, dict]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, SERVER_GRAPH_OPT)
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("optimization.disable_specified_optimizers", SERVER_DISABLED_OPTIMIZERS)
    session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, inputs)))
    for _ in range(warmup):
        session.run(None, inputs)
    # At least n runs and min_seconds, so a fast model's floor is not a
    # fraction of a second that the machine's other jobs happen to miss.
    lat = []
    clock = time.perf_counter_ns
    cpu0 = time.process_time()
    started = clock()
    until = started + int(min_seconds * 1e9)
    while len(lat) < n or clock() < until:
        t0 = clock()
        session.run(None, inputs)
        lat.append(clock() - t0)
    wall = (clock() - started) / 1e9
    out = summarise(lat, wall, len(lat))
    out.update(cpu_ms_per_request=round(1000 * (time.process_time() - cpu0) / len(lat), 4),
               session_options={"graph_optimization_level": SERVER_GRAPH_OPT, "intra_op_num_threads": intra_threads,
                                "inter_op_num_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
                                "disabled_optimizers": SERVER_DISABLED_OPTIMIZERS})
    return out, outputs


# ------------------------------------------------------------------- main --

def flag_value(flags: list[str], name: str, default: str) -> str:
    return flags[flags.index(name) + 1] if name in flags else default


def bench_model(d: Path, server: Server, pool, a, intra_threads: int) -> dict:
    manifest = json.loads((d / "manifest.json").read_text())
    golden = json.loads((d / "golden.json").read_text())
    name = manifest["name"]
    inputs = batch1_inputs(manifest, golden)
    body = v2_body(inputs)
    path = f"/v2/models/{name}/infer"
    say(f"{name}: batch-1 request, {len(body):,} bytes of JSON")

    # Correctness first: the served answer to the first golden row.
    status, response = server.get(path, "POST", body)
    if status != 200:
        raise RuntimeError(f"{name}: infer returned {status}: {response[:300]!r}")
    served = {o["name"]: o["data"] for o in json.loads(response)["outputs"]}
    check = {o: max_abs_diff(golden["outputs"][o][0], served[o]) for o in golden["outputs"] if o in served}
    _, config = server.get(f"/v2/models/{name}/config")
    config = json.loads(config)

    lat = latency_phase(server, name, path, body, a.warmup_requests, a.requests)
    say(f"{name}: 1 client p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, {lat['req_per_s']:,.0f} req/s")
    thr = throughput_phase(server, name, pool, a.clients, path, body, a.warmup_seconds, a.duration)
    say(f"{name}: {a.clients} clients {thr['req_per_s']:,.0f} req/s, p50 {thr['p50_ms']:.3f} ms, "
        f"p99 {thr['p99_ms']:.3f} ms (client cores {thr['client_cores']}, server cores {thr['server_cores']})")
    floor, floor_out = floor_phase(d / "model.onnx", inputs, intra_threads, a.warmup_requests, a.requests,
                                   a.floor_seconds)
    floor_check = {o: max_abs_diff(golden["outputs"][o][0], v) for o, v in floor_out.items() if o in golden["outputs"]}
    say(f"{name}: floor p50 {floor['p50_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms, {floor['req_per_s']:,.0f} req/s")
    return {
        "name": name,
        "version": manifest.get("version"),
        "task": manifest.get("task"),
        "dir": str(d.relative_to(ROOT) if d.is_relative_to(ROOT) else d),
        "request": {
            "inputs": [{"name": k, "shape": list(v.shape), "datatype": V2_DTYPES[v.dtype.name]}
                        for k, v in inputs.items()],
            "body_bytes": len(body),
            "response_bytes": len(response),
            "encoding": "JSON (no binary tensor extension), all outputs returned",
        },
        "dynamic_batching": "dynamic_batching" in config,
        "max_batch_size": config.get("max_batch_size"),
        "max_abs_diff_vs_golden": {"serve": check, "floor": floor_check},
        "latency_1_client": lat,
        "throughput": thr,
        "floor": floor,
        "overhead_ms": {"p50": round(lat["p50_ms"] - floor["p50_ms"], 4),
                        "p99": round(lat["p99_ms"] - floor["p99_ms"], 4)},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path,
                    default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/riskstream")
    ap.add_argument("--models", type=Path, default=ROOT / "models")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/.out/serve.json")
    ap.add_argument("--requests", type=int, default=3000, help="measured requests at 1 client, and floor runs")
    ap.add_argument("--warmup-requests", type=int, default=300)
    ap.add_argument("--floor-seconds", type=float, default=3.0, help="the floor runs at least this long")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured at --clients clients")
    ap.add_argument("--warmup-seconds", type=float, default=2.0)
    ap.add_argument("--alt-delay-pass", action=argparse.BooleanOptionalAction, default=True,
                    help="repeat the serve phases on a server with --max-delay-ms ALT_DELAY_MS")
    ap.add_argument("--alt-delay-ms", default="2")
    ap.add_argument("--command", default="", help="the command line that ran this, for the report")
    ap.add_argument("server_flags", nargs="*",
                    help="extra `riskstream serve` flags after --, e.g. -- --sessions 1")
    a = ap.parse_args()
    a.models = a.models.resolve()

    binary = a.bin.resolve()
    if not binary.is_file():
        raise SystemExit(f"serve-bench: no binary at {binary}; cargo build --release --bin riskstream")
    # Hot swap off: a model written into models/ mid-run must not load (and
    # verify, on these same cores) while another model is being measured.
    flags = ["--poll-ms", "0", *a.server_flags]
    intra_threads = int(flag_value(flags, "--intra-threads", "1"))
    a.out.parent.mkdir(parents=True, exist_ok=True)

    result = {
        "system": "serve",
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "command": a.command or " ".join(sys.argv),
        "machine": machine(),
        "load_average_start": load_average(),
        "binary": {"path": str(binary),
                   "mtime": dt.datetime.fromtimestamp(binary.stat().st_mtime, dt.timezone.utc)
                   .isoformat(timespec="seconds")},
        "client": {
            "library": f"http.client (Python {platform.python_version()} standard library)",
            "connection": "one keep-alive HTTP/1.1 connection per client, TCP_NODELAY",
            "body": "JSON encoded once per model; responses read in full, parsed only once (golden check)",
            "throughput_clients_are": "processes (multiprocessing, spawn), one connection each",
        },
        "settings": {"requests_1_client": a.requests, "warmup_requests": a.warmup_requests,
                     "floor_min_seconds": a.floor_seconds,
                     "clients": a.clients, "duration_s": a.duration, "warmup_s": a.warmup_seconds},
        "models": [],
        "skipped": [],
    }

    # Client processes are spawned before onnxruntime is loaded here, and reused.
    pool = mp.get_context("spawn").Pool(a.clients)
    log = a.out.with_suffix(".server.log")
    server = Server(binary, a.models, flags, log)
    try:
        server.wait_ready(300)
        result["server"] = {
            "argv": [Path(server.argv[0]).name, *server.argv[1:]],
            "sessions_per_model": int(flag_value(flags, "--sessions", "2")),
            "intra_threads": intra_threads,
            "max_batch": int(flag_value(flags, "--max-batch", "64")),
            "max_delay_ms": float(flag_value(flags, "--max-delay-ms", "0")),
            "graph_optimization": f"{SERVER_GRAPH_OPT} (ort GraphOptimizationLevel::Level3)",
        }
        _, index = server.get("/v2/repository/index", "POST", b"{}")
        state = {m["name"]: m for m in json.loads(index)}
        result["http_round_trip"] = health_round_trip(server, a.warmup_requests, a.requests)
        say(f"GET /v2/health/live p50 {result['http_round_trip']['p50_ms']:.3f} ms (HTTP + client floor)")
        todo = []
        for d in model_dirs(a.models):
            name = json.loads((d / "manifest.json").read_text()).get("name", d.name)
            if state.get(name, {}).get("state") != "READY":
                reason = state.get(name, {}).get("reason", "not in the server's repository index")
                result["skipped"].append({"dir": d.name, "model": name, "reason": reason})
                say(f"skipping {d.name}: {reason}")
                continue
            todo.append(d)
        for d in todo:
            try:
                result["models"].append(bench_model(d, server, pool, a, intra_threads))
            except Exception as e:  # one broken model must not lose the others' numbers
                result["skipped"].append({"dir": d.name, "reason": f"{type(e).__name__}: {e}"})
                say(f"{d.name}: failed: {e}")
    finally:
        server.stop()

    if a.alt_delay_pass and result["models"]:
        result["alt_delay_ms"] = float(a.alt_delay_ms)
        flags0 = [*flags, "--max-delay-ms", a.alt_delay_ms]
        server = Server(binary, a.models, flags0, a.out.with_suffix(".server-altdelay.log"))
        try:
            server.wait_ready(300)
            result["alt_delay_server_argv"] = [Path(server.argv[0]).name, *server.argv[1:]]
            for m in result["models"]:
                body = v2_body(batch1_inputs(json.loads((ROOT / m["dir"] / "manifest.json").read_text()),
                                             json.loads((ROOT / m["dir"] / "golden.json").read_text())))
                path = f"/v2/models/{m['name']}/infer"
                lat = latency_phase(server, m["name"], path, body, a.warmup_requests, a.requests)
                m["latency_1_client_alt_delay"] = lat
                m["overhead_alt_delay_ms"] = {"p50": round(lat["p50_ms"] - m["floor"]["p50_ms"], 4),
                                             "p99": round(lat["p99_ms"] - m["floor"]["p99_ms"], 4)}
                thr = throughput_phase(server, m["name"], pool, a.clients, path, body, a.warmup_seconds, a.duration)
                m["throughput_alt_delay"] = thr
                say(f"{m['name']}: --max-delay-ms {a.alt_delay_ms}, 1 client p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms; "
                    f"{a.clients} clients {thr['req_per_s']:,.0f} req/s, p50 {thr['p50_ms']:.3f} ms")
        finally:
            server.stop()
    pool.close()
    pool.join()

    result["load_average_end"] = load_average()
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    say(f"wrote {a.out} ({len(result['models'])} models, {len(result['skipped'])} skipped)")
    return 0 if result["models"] else 1


def health_round_trip(server: Server, warmup: int, n: int) -> dict:
    """The same client against GET /v2/health/live: HTTP and client cost alone."""
    conn = connect(server.host, server.port)
    lat = np.empty(n, dtype=np.int64)
    for i in range(warmup + n):
        t0 = time.perf_counter_ns()
        conn.request("GET", "/v2/health/live")
        conn.getresponse().read()
        if i >= warmup:
            lat[i - warmup] = time.perf_counter_ns() - t0
    conn.close()
    return summarise(lat, lat.sum() / 1e9, n)


if __name__ == "__main__":
    sys.exit(main())
