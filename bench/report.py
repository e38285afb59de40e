#!/usr/bin/env python3
"""Render docs/BENCHMARKS.md from the raw results bench/run.sh leaves in bench/.out/.

Inputs (a system's files are missing when it was not run):
  throughput-{engine,python}.json     wall time, CPU and peak RSS, measured by run.sh
  throughput-engine.metrics           the engine's /metrics at the end of its run
  throughput-python.summary.json      the baseline's own summary, with its stage timings
  latency-{engine,python}.json        latency percentiles, from Postgres commit timestamps
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path

import onnxruntime
import polars
import psycopg

ROOT = Path(__file__).resolve().parent.parent
SYSTEMS = ("engine", "python")
NAMES = {"engine": "riskstream (Rust)", "python": "Python baseline"}
NAN = float("nan")


def load(out: Path, name: str) -> dict | None:
    path = out / name
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def command_output(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine(db_url: str) -> list[tuple[str, str]]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
    kafka = sorted((ROOT / ".stack/kafka/libs").glob("kafka-clients-*.jar"))
    with psycopg.connect(db_url) as conn:
        postgres = conn.execute("SHOW server_version").fetchone()[0]
    rust_polars = re.search(r'name = "polars"\nversion = "([^"]+)"', (ROOT / "Cargo.lock").read_text())
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("CPU model", cpu.group(1) if cpu else "unknown"),
        ("Memory", f"{mem_kb / 1024**2:.1f} GiB"),
        ("Kernel", platform.release()),
        ("Kafka", kafka[0].stem.removeprefix("kafka-clients-") if kafka else "unknown"),
        ("PostgreSQL", postgres),
        ("ONNX Runtime", f"{onnxruntime.__version__} (the engine loads the same library, ORT_DYLIB_PATH)"),
        ("rustc", command_output("rustc", "--version")),
        ("polars", f"{rust_polars.group(1) if rust_polars else 'unknown'} (Rust), {polars.__version__} (Python)"),
        ("Python", platform.python_version()),
    ]


def prometheus(text: str) -> dict[str, float]:
    """Prometheus text format as {"name{labels}": value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def engine_stages(metrics: str) -> tuple[list[tuple[str, float]], float]:
    """Mean ms per batch of each stage, and mean rows per batch."""
    m = prometheus(metrics)
    batches = m.get('riskstream_stage_seconds_count{stage="total"}') or NAN
    stage = lambda s: 1000 * m.get(f'riskstream_stage_seconds_sum{{stage="{s}"}}', NAN) / batches
    return [
        ("featurize (decode, state, polars)", stage("featurize")),
        ("score", stage("score")),
        # Per batch, whatever the number of ONNX Runtime calls (chunks of model.max_batch rows).
        ("  of which ONNX Runtime", 1000 * m.get("riskstream_model_seconds_sum", NAN) / batches),
        ("sink (decide, DLQ, Postgres transaction)", stage("sink")),
        ("total, batch in to committed", stage("total")),
    ], m.get("riskstream_batch_rows_sum", NAN) / batches


def python_stages(summary: dict) -> tuple[list[tuple[str, float]], float]:
    ms = summary["stage_ms_per_batch"]
    return [
        ("decode + validate", ms["decode"]),
        ("featurize (state, polars, numpy)", ms["featurize"]),
        ("score (ONNX Runtime)", ms["score"]),
        ("sink (decide, Postgres transaction)", ms["sink"]),
        ("total, batch in to committed", ms["total"]),
    ], (summary["decisions"] + summary["dead_letters"]) / max(summary["batches"], 1)


def fmt(v: float | None, digits: int = 0) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    if not (a and b):
        return "—"
    return f"{a / b:.1f}×" if a >= b else f"{a / b:.2f}×"


def results_table(t: dict, lat: dict, at_rate: str) -> list[str]:
    def per_s(s, key):
        r = t.get(s)
        return r["rows_committed"] / r[key] if r and r[key] > 0 else None

    sustained = {s: per_s(s, "first_to_last_commit_seconds") for s in SYSTEMS}
    overall = {s: per_s(s, "wall_seconds") for s in SYSTEMS}
    cpu = {s: 1e6 * t[s]["cpu_seconds"] / t[s]["transactions"] if t.get(s) else None for s in SYSTEMS}
    rss = {s: t[s]["peak_rss_mb"] if t.get(s) else None for s in SYSTEMS}
    lat_ms = {(s, k): lat[s][k] if lat.get(s) else None for s in SYSTEMS for k in ("p50_ms", "p99_ms", "max_ms")}

    def row(label, values, digits=0, better="higher"):
        e, p = values["engine"], values["python"]
        gain = ratio(e, p) if better == "higher" else ratio(p, e)
        return f"| {label} | {fmt(e, digits)} | {fmt(p, digits)} | {gain} |"

    return [
        f"| | {NAMES['engine']} | {NAMES['python']} | engine advantage |",
        "|---|---:|---:|---:|",
        row("Decisions/s, sustained (first to last commit)", sustained),
        row("Decisions/s, overall (process start to last commit)", overall),
        row("CPU ms per 1k transactions (process user+sys)", cpu, 1, "lower"),
        row("Peak RSS, MiB", rss, 0, "lower"),
        row(f"Latency p50{at_rate}, ms", {s: lat_ms[s, "p50_ms"] for s in SYSTEMS}, 1, "lower"),
        row(f"Latency p99{at_rate}, ms", {s: lat_ms[s, "p99_ms"] for s in SYSTEMS}, 1, "lower"),
        row(f"Latency max{at_rate}, ms", {s: lat_ms[s, "max_ms"] for s in SYSTEMS}, 1, "lower"),
    ]


def keeps_up(s: str, lat: dict | None) -> str:
    """Keeping up means a steady lag: the median latency of the last 10 s of
    input is not clearly above that of the first 10 s of the steady state."""
    if not lat:
        return f"- {NAMES[s]}: not run."
    first, last = lat["p50_first_10s_ms"], lat["p50_last_10s_ms"]
    verdict = "falls behind: its lag grows while the load lasts" if last > 1.5 * first + 100 else "keeps up"
    return (f"- {NAMES[s]}: {verdict} (median latency {fmt(first, 1)} ms over the first 10 s of the steady "
            f"state, {fmt(last, 1)} ms over the last 10 s of input; its last decision committed "
            f"{fmt(lat['drain_after_producer_s'], 1)} s after the producer finished).")


def stages_table(title: str, stages: list[tuple[str, float]], rows: float) -> list[str]:
    total = stages[-1][1]
    lines = [f"**{title}** (mean {fmt(rows)} records per batch)", "", "| stage | ms per batch | share of total |",
             "|---|---:|---:|"]
    lines += [f"| {name} | {fmt(ms, 1)} | {fmt(100 * ms / total)}% |" for name, ms in stages]
    return lines + [""]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--doc", type=Path, required=True)
    ap.add_argument("--command", required=True, help="the command line that produced the results")
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--db-url", default="postgres://postgres@127.0.0.1:55432/riskstream")
    a = ap.parse_args()

    t = {s: load(a.out, f"throughput-{s}.json") for s in SYSTEMS}
    lat = {s: load(a.out, f"latency-{s}.json") for s in SYSTEMS}
    py_summary = load(a.out, "throughput-python.summary.json")
    metrics = a.out / "throughput-engine.metrics"
    manifest = json.loads((a.model_dir / "manifest.json").read_text())
    n = next((r["transactions"] for r in t.values() if r), 0)
    rate = next((r["offered_rate"] for r in lat.values() if r), None)
    at_rate = f" at {rate:,} tx/s" if rate else ""
    lat_n = next((r["transactions"] for r in lat.values() if r), 0)
    commit = command_output("git", "-C", str(ROOT), "describe", "--always", "--dirty")

    doc = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (bench/run.sh, bench/report.py) on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC at commit `{commit}`; do not edit by hand. "
        "Raw results: `bench/.out/`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine(a.db_url)),
        "",
        "Kafka and PostgreSQL run on the same machine (scripts/stack) and compete for its cores with the "
        "system under test.",
        "",
        "## What runs",
        "",
        f"- **{NAMES['engine']}**: `riskstream run`, release build, stock `config/riskstream.toml` "
        "(batches of up to 2000 records or 50 ms, one scoring worker, one ONNX Runtime intra-op thread) with "
        "its topics, consumer group and database overridden through `RISKSTREAM_<SECTION>__<KEY>`.",
        f"- **{NAMES['python']}**: `bench/baseline.py`, the same pipeline as a Python scoring script "
        "(confluent-kafka, polars, numpy, onnxruntime, psycopg; one thread of control, batch by batch). Same "
        "topics, batch size and wait, features, model, thresholds, tables and exactly-once offsets; its "
        "simplifications are listed below.",
        f"- Model: `{manifest['name']}` v{manifest['version']} (sha256 `{manifest['sha256'][:12]}…`).",
        f"- Throughput: {n:,} transactions from `riskstream simulate --seed 1`, pre-loaded into fresh "
        "4-partition topics; each system consumes all of them into its own fresh database. Decisions/s count "
        "committed rows (decisions + dead letters).",
        f"- Latency: each system runs on fresh empty topics while `riskstream simulate --seed 2 --rate {rate}` "
        f"offers {lat_n:,} transactions. Latency of a decision = `pg_xact_commit_timestamp(xmin) - kafka_ts`: "
        "its Postgres commit time minus the Kafka append time of the record (topics use LogAppendTime). "
        "Percentiles are over the steady state: records appended 10 s or more after the first one.",
        "- CPU and peak RSS are the system's own process (`/proc/<pid>/stat` user+sys, `VmHWM` just before "
        "SIGTERM); the work Kafka and PostgreSQL do for it is not included.",
        "",
        "Reproduce:",
        "",
        "```sh",
        a.command,
        "```",
        "",
        "## Results",
        "",
        *results_table(t, lat, at_rate),
        "",
        f"Under load{at_rate}:",
        "",
        *(keeps_up(s, lat[s]) for s in SYSTEMS),
        "",
        "## Where the time goes",
        "",
        "Mean per batch over the throughput run. The engine's stages run concurrently (a batch is featurized "
        "while the previous one is scored and the one before is committed), so its throughput is bounded by "
        "the slowest stage, not the total; the baseline runs them one after the other.",
        "",
    ]
    if metrics.is_file():
        doc += stages_table(f"{NAMES['engine']}, from its /metrics histograms", *engine_stages(metrics.read_text()))
    if py_summary:
        doc += stages_table(f"{NAMES['python']}, from time.perf_counter", *python_stages(py_summary))
    doc += [
        "## How the baseline differs from the engine",
        "",
        "- Terminal state: the engine waits up to `pipeline.state_wait_ms` for every partition to close the "
        "days a batch's terminal windows read; the baseline checks the same watermark once and scores at once, "
        "recording `state_complete = false` when days were still open.",
        "- Card history: for an event arriving after a later-timestamped event of the same card in the same "
        "batch, the engine's history sequence leaves the later-arriving one out and the baseline's does not. "
        "The simulator emits each card's transactions in event-time order, so these streams do not hit this.",
        "- One instance only: no epoch fencing of partitions taken over by another instance, and dead letters "
        "are stored in Postgres only, not also published to the DLQ topic.",
        "- It is single-threaded Python around native libraries: polars and ONNX Runtime do the numeric work, "
        "JSON decoding and validation are per-record Python.",
        "",
    ]
    a.doc.write_text("\n".join(doc))


if __name__ == "__main__":
    main()
