#!/usr/bin/env python3
"""Render docs/BENCHMARKS.md from the raw results bench/run.sh leaves in bench/.out/.

Inputs (a system's files are missing when it was not run; files of systems
not run this time are left from an earlier run, whose commit each section names):
  throughput-{engine,python}.json     wall time, CPU and peak RSS, measured by run.sh
  throughput-engine.metrics           the engine's /metrics at the end of its run
  throughput-python.summary.json      the baseline's own summary, with its stage timings
  latency-{engine,python}.json        latency percentiles, from Postgres commit timestamps
  run-{engine,python}.json            the commit, time and command of the run that wrote them
  *-python-naive.*                    the same for bench/per_message.py (BENCH_SYSTEMS=python-naive,
                                      not run by default); shown only when present
  serve.json                          bench/serve_bench.py: `riskstream serve` per model vs in-process ORT
  scaling.md, policy.md               bench/scaling.sh and bench/policy.sh
The scaling, policy and serving sections are kept from the committed document when their raw
results are absent (bench/.out/ is not in the repository: a fresh clone has none).
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
# bench/per_message.py, the baseline one record at a time: shown beside them when its results exist.
NAIVE = "python-naive"
NAMES = {"engine": "riskstream (Rust)", "python": "Python baseline", NAIVE: "Python per message (naive)"}
NAN = float("nan")


def load(out: Path, name: str) -> dict | None:
    path = out / name
    return json.loads(path.read_text()) if path.is_file() and path.stat().st_size else None


def command_output(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def postgres_version(db_url: str) -> str:
    try:
        with psycopg.connect(db_url, connect_timeout=3) as conn:
            return conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        return "unknown (not reachable when the report was rendered)"


def machine(db_url: str) -> list[tuple[str, str]]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    mem_kb = int(re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
    kafka = sorted((ROOT / ".stack/kafka/libs").glob("kafka-clients-*.jar"))
    postgres = postgres_version(db_url)
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
    # The featurize stage first waits for and loads the terminal days its
    # batch reads (measured apart since 2026-12-03; absent before).
    featurize = [("featurize (decode, state, polars)", stage("featurize"))]
    if 'riskstream_stage_seconds_sum{stage="terminal_state"}' in m:
        featurize = [
            ("featurize stage", stage("terminal_state") + stage("featurize")),
            ("  terminal state (watermarks, closed days from Postgres)", stage("terminal_state")),
            ("  decode, card state, polars", stage("featurize")),
        ]
    return featurize + [
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


def results_table(t: dict, lat: dict, at_rate: str, systems: tuple[str, ...] = SYSTEMS) -> list[str]:
    """Engine and baseline, with the engine's advantage; then, when in `systems`, the
    per-message consumer with the engine's advantage over it."""
    def per_s(s, key):
        r = t.get(s)
        return r["rows_committed"] / r[key] if r and r[key] > 0 else None

    sustained = {s: per_s(s, "first_to_last_commit_seconds") for s in systems}
    overall = {s: per_s(s, "wall_seconds") for s in systems}
    cpu = {s: 1e6 * t[s]["cpu_seconds"] / t[s]["transactions"] if t.get(s) else None for s in systems}
    rss = {s: t[s]["peak_rss_mb"] if t.get(s) else None for s in systems}
    lat_ms = {(s, k): lat[s][k] if lat.get(s) else None for s in systems for k in ("p50_ms", "p99_ms", "max_ms")}
    others = [s for s in systems if s != "engine"]

    def row(label, values, digits=0, better="higher"):
        e = values["engine"]
        cells = []
        for s in others:
            gain = ratio(e, values[s]) if better == "higher" else ratio(values[s], e)
            cells += [fmt(values[s], digits), gain]
        return f"| {label} | {fmt(e, digits)} | {' | '.join(cells)} |"

    header = f"| | {NAMES['engine']} | {NAMES['python']} | engine advantage |"
    if NAIVE in others:
        header += f" {NAMES[NAIVE]} | engine advantage over it |"
    return [
        header,
        "|---|---:|" + "---:|---:|" * len(others),
        row("Decisions/s, sustained (first to last commit)", sustained),
        row("Decisions/s, overall (process start to last commit)", overall),
        row("CPU ms per 1k transactions (process user+sys)", cpu, 1, "lower"),
        row("Peak RSS, MiB", rss, 0, "lower"),
        row(f"Latency p50{at_rate}, ms", {s: lat_ms[s, "p50_ms"] for s in systems}, 1, "lower"),
        row(f"Latency p99{at_rate}, ms", {s: lat_ms[s, "p99_ms"] for s in systems}, 1, "lower"),
        row(f"Latency max{at_rate}, ms", {s: lat_ms[s, "max_ms"] for s in systems}, 1, "lower"),
    ]


def steal_line(t: dict, systems: tuple[str, ...]) -> list[str]:
    """How much of the machine the host gave to other guests during each throughput run."""
    parts = [f"{NAMES[s]} {100 * r['steal_seconds'] / (r['wall_seconds'] * r['cores']):.1f} %"
             for s in systems if (r := t.get(s)) and "steal_seconds" in r and r["wall_seconds"] > 0]
    if not parts:
        return []
    return ["Host CPU steal during each throughput run (the time the hypervisor gave this machine's cores to "
            "other guests, `/proc/stat`, as a share of the run's wall time on all cores): " + ", ".join(parts)
            + ". On this shared box the same binaries have run at half these speeds on another hour of the same "
            "day: compare this, and the Python baseline's figures of the same run, before reading a change "
            "between two records as the code's (docs/DECISIONS.md, \"Benchmarks record the host's steal\").", ""]


def keeps_up(s: str, lat: dict | None) -> str:
    """Keeping up means a steady lag: the median latency of the last 10 s of
    input is not clearly above that of the first 10 s of the steady state."""
    if not lat:
        return f"- {NAMES[s]}: not run."
    first, last = lat["p50_first_10s_ms"], lat["p50_last_10s_ms"]
    if first is None or last is None:
        # A run too short for a steady state (under 20 s of input) has no medians.
        return f"- {NAMES[s]}: too short a latency run to tell (no 10 s windows of steady state)."
    verdict = "falls behind: its lag grows while the load lasts" if last > 1.5 * first + 100 else "keeps up"
    return (f"- {NAMES[s]}: {verdict} (median latency {fmt(first, 1)} ms over the first 10 s of the steady "
            f"state, {fmt(last, 1)} ms over the last 10 s of input; its last decision committed "
            f"{fmt(lat['drain_after_producer_s'], 1)} s after the producer finished).")


def near_capacity(high: dict | None) -> list[str]:
    """The engine's second latency run, near its capacity (BENCH_LATENCY_HIGH_RATE)."""
    if not high:
        return []
    verdict = keeps_up("engine", high).removeprefix(f"- {NAMES['engine']}: ")
    return [f"Near capacity, {NAMES['engine']} offered {high['offered_rate']:,} tx/s "
            f"({high['transactions']:,} transactions, `BENCH_LATENCY_HIGH_RATE`): latency p50 "
            f"{fmt(high['p50_ms'], 1)} ms, p99 {fmt(high['p99_ms'], 1)} ms, max {fmt(high['max_ms'], 1)} ms "
            f"over {high['steady_rows']:,} steady-state rows; it {verdict}", ""]


def stages_table(title: str, stages: list[tuple[str, float]], rows: float | str, digits: int = 1) -> list[str]:
    """`rows`: mean records per batch, or words saying what a batch is."""
    total = stages[-1][1]
    per_batch = rows if isinstance(rows, str) else f"mean {fmt(rows)} records per batch"
    lines = [f"**{title}** ({per_batch})", "", "| stage | ms per batch | share of total |",
             "|---|---:|---:|"]
    lines += [f"| {name} | {fmt(ms, digits)} | {fmt(100 * ms / total)}% |" for name, ms in stages]
    return lines + [""]


def provenance(out: Path, systems: tuple[str, ...], commit: str) -> list[str]:
    """Which run each system's results come from (run-SYSTEM.json, else the files' dates)."""
    lines = []
    for s in systems:
        refresh = "BENCH_SYSTEMS=python-naive" if s == NAIVE else 'BENCH_SYSTEMS="engine python"'
        older = f" — an earlier commit than this document's; `{refresh} make bench` refreshes it"
        run = load(out, f"run-{s}.json")
        files = sorted(out.glob(f"throughput-{s}.*")) + sorted(out.glob(f"latency-{s}.*"))
        if run:
            when = run["finished_at"].replace("T", " ").removesuffix("Z")
            lines.append(f"- {NAMES[s]}: run at commit `{run['commit']}`, finished {when} UTC"
                         f"{older if run['commit'] != commit else ''}.")
        elif files:
            newest = max(f.stat().st_mtime for f in files)
            when = dt.datetime.fromtimestamp(newest, dt.timezone.utc)
            lines.append(f"- {NAMES[s]}: commit not recorded; result files dated {when:%Y-%m-%d %H:%M} UTC.")
        else:
            lines.append(f"- {NAMES[s]}: not run (no results in `{out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}`).")
    return lines


def stack_section(out: Path, model_dir: Path, commit: str) -> list[str]:
    """The engine against the Python baseline on Kafka and Postgres (and the
    per-message consumer, when it has results)."""
    has_naive = any(load(out, f"{kind}-{NAIVE}.json") for kind in ("throughput", "latency"))
    systems = SYSTEMS + ((NAIVE,) if has_naive else ())
    t = {s: load(out, f"throughput-{s}.json") for s in systems}
    lat = {s: load(out, f"latency-{s}.json") for s in systems}
    runs = {s: load(out, f"run-{s}.json") for s in systems}
    doc = ["## Streaming pipeline: engine vs Python baseline (`riskstream run`)", "",
           *provenance(out, systems, commit), ""]
    if not any(t.values()) and not any(lat.values()):
        return doc
    py_summary = load(out, "throughput-python.summary.json")
    naive_summary = load(out, f"throughput-{NAIVE}.summary.json") if has_naive else None
    metrics = out / "throughput-engine.metrics"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    # The pre-loaded stream's size (python-naive consumes only the first `transactions` of it).
    n = next((r.get("stream_transactions", r["transactions"]) for r in t.values() if r), 0)
    naive_n = t[NAIVE]["transactions"] if t.get(NAIVE) else None
    rate = next((r["offered_rate"] for r in lat.values() if r), None)
    at_rate = f" at {rate:,} tx/s" if rate else ""
    lat_n = next((r["transactions"] for r in lat.values() if r), 0)
    cards = next((r.get("cards", 0) for r in lat.values() if r), 0)
    commands = [next((runs[s]["command"] for s in SYSTEMS if runs[s]),
                     f"BENCH_TRANSACTIONS={n} BENCH_LATENCY_TRANSACTIONS={lat_n} BENCH_LATENCY_RATE={rate} "
                     "BENCH_SYSTEMS=\"engine python\" make bench")]
    if runs.get(NAIVE) and runs[NAIVE]["command"] not in commands:
        commands.append(runs[NAIVE]["command"])
    if len({r["commit"] for r in runs.values() if r}) > 1:
        doc += [f"The {'' if has_naive else 'two '}systems' results come from different runs (above): "
                "compare them with care.", ""]
    doc += [
        "### What runs",
        "",
        f"- **{NAMES['engine']}**: `riskstream run`, release build, stock `config/riskstream.toml` "
        "(batches of up to 2000 records or 50 ms, one scoring worker, one ONNX Runtime intra-op thread) with "
        "its topics, consumer group and database overridden through `RISKSTREAM_<SECTION>__<KEY>`.",
        f"- **{NAMES['python']}**: `bench/baseline.py`, the same pipeline as a Python scoring script "
        "(confluent-kafka, polars, numpy, onnxruntime, psycopg; one thread of control, batch by batch). Same "
        "topics, batch size and wait, features, model, thresholds, tables and exactly-once offsets; its "
        "simplifications are listed below.",
        *([f"- **{NAMES[NAIVE]}**: `bench/per_message.py`, the baseline's code one record at a time, as a first "
           "version is usually written: poll one record, featurize it, score it with ONNX Runtime as a batch of "
           "one, INSERT its decision and explanation and commit them with the record's offset, then the next. "
           "Same features, model, thresholds, tables and exactly-once offsets as the baseline (it imports its "
           "functions). Its throughput is over the first "
           + (f"{naive_n:,} of the {n:,}" if naive_n is not None else "`BENCH_NAIVE_TRANSACTIONS`")
           + " pre-loaded transactions (`BENCH_NAIVE_TRANSACTIONS`); its latency run is the others'."]
          if has_naive else []),
        f"- Model: `{manifest['name']}` v{manifest['version']} (sha256 `{manifest['sha256'][:12]}…`; the "
        "manifest in the working tree now).",
        f"- Throughput: {n:,} transactions from `riskstream simulate --seed 1`, pre-loaded into fresh "
        "4-partition topics; each system consumes all of them into its own fresh database. Decisions/s count "
        "committed rows (decisions + dead letters).",
        f"- Latency: each system runs on fresh empty topics while `riskstream simulate --seed 2 --rate {rate}"
        + (f" --cards {cards}" if cards else "") + f"` offers {lat_n:,} transactions"
        + (f" of {cards:,} cards (so the stream spans about a day: a day closes, with its watermark wait and "
           "terminal-state load, about once in it, not every ~0.4 s as in the simulator's default world of "
           "~1,200 cards over ~90 days, which `BENCH_LATENCY_CARDS=0` measures)" if cards else
           " of the simulator's default world (~1,200 cards over ~90 days: a simulated day closes every ~0.4 s "
           "of wall time at 5k tx/s, each with a watermark wait and a terminal-state load)") + "."
        f" Latency of a decision = `pg_xact_commit_timestamp(xmin) - kafka_ts`: "
        "its Postgres commit time minus the Kafka append time of the record (topics use LogAppendTime). "
        "Percentiles are over the steady state: records appended 10 s or more after the first one.",
        "- CPU and peak RSS are the system's own process (`/proc/<pid>/stat` user+sys, `VmHWM` just before "
        "SIGTERM); the work Kafka and PostgreSQL do for it is not included.",
        "",
        "Reproduce:",
        "",
        "```sh",
        *commands,
        "```",
        "",
        "### Results",
        "",
        *results_table(t, lat, at_rate, systems),
        "",
        *steal_line(t, systems),
        *([f"{NAMES[NAIVE]}: decisions/s, CPU and peak RSS over the first {naive_n:,} of the {n:,} pre-loaded "
           "transactions (the others' over all of them); its state, and so its memory, is that much smaller.", ""]
          if naive_n is not None and naive_n != n else []),
        f"Under load{at_rate}:",
        "",
        *(keeps_up(s, lat[s]) for s in systems),
        "",
        *near_capacity(load(out, "latency-engine-high.json")),
        "### Where the time goes",
        "",
        "Mean per batch over the throughput run. The engine's stages run concurrently (a batch is featurized "
        "while the previous one is scored and the one before is committed), so its throughput is bounded by "
        "the slowest stage, not the total; the baseline runs them one after the other"
        + (", and the per-message consumer too, for each record." if has_naive else "."),
        "",
    ]
    if metrics.is_file():
        doc += stages_table(f"{NAMES['engine']}, from its /metrics histograms", *engine_stages(metrics.read_text()))
    if py_summary:
        doc += stages_table(f"{NAMES['python']}, from time.perf_counter", *python_stages(py_summary))
    if naive_summary:
        doc += stages_table(f"{NAMES[NAIVE]}, from time.perf_counter", python_stages(naive_summary)[0],
                            "each batch is one record, committed on its own; labels included", digits=3)
    doc += [
        "### How the baseline differs from the engine",
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
    if has_naive:
        doc += [
            "### How the per-message consumer differs from the baseline",
            "",
            "- One record per poll, per featurization (polars on a one-row frame joined with the card's memory), "
            "per ONNX Runtime run and per Postgres transaction (INSERT decision, INSERT explanation, upsert "
            "offset, commit); labels and dead letters too. Terminal windows' watermark is checked per record "
            "instead of per batch while days are open.",
            "- Its rows are the baseline's, except that ONNX Runtime computes a batch of one on another kernel "
            "path: some scores and most attention weights differ by float32 rounding (≤ 1.5e-7), and "
            "terminal windows read the days closed when each record is processed.",
            "",
        ]
    return doc


def ms(v: float | None) -> str:
    """Milliseconds with enough digits for sub-millisecond values."""
    if v is None:
        return "—"
    return f"{v:,.3f}" if abs(v) < 1 else f"{v:,.2f}" if abs(v) < 10 else f"{v:,.1f}"


def merged_runs(server: dict) -> str:
    """How many requests the batcher merged per ONNX Runtime run, from the histogram delta."""
    buckets = server.get("requests_per_run_buckets") or []
    if not server.get("ort_runs"):
        return "no runs recorded"
    parts, low = [], 0.0
    for le, count in buckets:
        high = float(le)
        label = "more" if le == "+Inf" else (f"{high:g}" if high - low <= 1 else f"{low + 1:g}–{high:g}")
        if count:
            parts.append(f"{label}: {count:,}")
        low = high
    return (f"{server['ort_runs']:,} runs, mean {server['requests_per_run_mean']:.2f} requests per run "
            f"(runs by requests merged: {', '.join(parts)})")


ALT = 2  # the alternate batching delay of the second serve pass; set from serve.json


def serve_model(m: dict) -> list[str]:
    lat, thr, floor = m["latency_1_client"], m["throughput"], m["floor"]
    altdelay = m.get("latency_1_client_alt_delay")
    shapes = ", ".join(f"{i['name']} {i['datatype']}{i['shape']}" for i in m["request"]["inputs"])
    row = lambda label, r, extra="": (f"| {label} | {ms(r['p50_ms'])} | {ms(r['p99_ms'])} | {ms(r['mean_ms'])} | "
                                      f"{fmt(r['req_per_s'])} | {extra} |")
    doc = [
        f"#### `{m['name']}` v{m['version']} ({m['task']})",
        "",
        f"Request: {shapes}; {m['request']['body_bytes']:,} bytes of JSON in, "
        f"{m['request']['response_bytes']:,} out. Dynamic batching: "
        f"{'on' if m['dynamic_batching'] else 'off (each request runs alone)'}.",
        "",
        "| | p50 ms | p99 ms | mean ms | req/s | |",
        "|---|---:|---:|---:|---:|---|",
        row("serve, 1 client", lat, f"server: {ms(lat['server']['request_mean_ms'])} ms mean request, "
            f"{ms(lat['server']['inference_mean_ms'])} ms mean ORT run"),
    ]
    if altdelay:
        doc.append(row(f"serve, 1 client, `--max-delay-ms {ALT}`", altdelay,
                       f"server: {ms(altdelay['server']['request_mean_ms'])} ms mean request"))
    cores = lambda t: f"cores: server {t['server_cores']}, clients {t['client_cores']}, machine {t['machine_cores']}"
    doc.append(row(f"serve, {thr['clients']} clients", thr, cores(thr)))
    if m.get("throughput_alt_delay"):
        doc.append(row(f"serve, {thr['clients']} clients, `--max-delay-ms {ALT}`", m["throughput_alt_delay"],
                       cores(m["throughput_alt_delay"])))
    doc += [
        row("floor: Python onnxruntime in-process, 1 thread", floor, ""),
        f"| overhead per request (serve 1 client − floor) | {ms(m['overhead_ms']['p50'])} | "
        f"{ms(m['overhead_ms']['p99'])} | | | "
        + (f"with `--max-delay-ms {ALT}`: p50 {ms(m['overhead_alt_delay_ms']['p50'])}, "
           f"p99 {ms(m['overhead_alt_delay_ms']['p99'])} |" if altdelay else "|"),
        "",
        f"Batching at {thr['clients']} clients (`/metrics` delta over the measured window): "
        f"{merged_runs(thr['server'])}"
        + (f"; with `--max-delay-ms {ALT}`: {merged_runs(m['throughput_alt_delay']['server'])}"
           if m.get("throughput_alt_delay") else "")
        + f". Server's mean ONNX Runtime run at 1 client {ms(lat['server']['inference_mean_ms'])} ms "
        f"(`riskstream_serve_inference_seconds`, tensor conversion included) vs the floor's mean "
        f"{ms(floor['mean_ms'])} ms. Golden row 0, largest |difference| over the outputs: served "
        f"{max(m['max_abs_diff_vs_golden']['serve'].values(), default=0):.1e}, floor "
        f"{max(m['max_abs_diff_vs_golden']['floor'].values(), default=0):.1e}. Errors: "
        f"{sum(p['errors'] for p in (lat, thr, altdelay or {}, m.get('throughput_alt_delay') or {}) if p)}.",
        "",
    ]
    return doc


def serve_section(out: Path) -> list[str]:
    global ALT
    r = load(out, "serve.json")
    if r is not None:
        ALT = f"{r.get('alt_delay_ms', 2):g}"
    if not r:
        return []
    doc = ["## Model serving (`riskstream serve`)", ""]
    srv, st, client = r["server"], r["settings"], r["client"]
    mach = r["machine"]
    when = r["generated_at"].replace("T", " ").split("+")[0]
    rows = []
    for m in r["models"]:
        lat, thr, floor = m["latency_1_client"], m["throughput"], m["floor"]
        rows.append(f"| `{m['name']}` | {ms(lat['p50_ms'])} / {ms(lat['p99_ms'])} | {fmt(lat['req_per_s'])} | "
                    f"{ms(thr['p50_ms'])} / {ms(thr['p99_ms'])} | {fmt(thr['req_per_s'])} | "
                    f"{ms(floor['p50_ms'])} / {ms(floor['p99_ms'])} | {fmt(floor['req_per_s'])} | "
                    f"{ms(m['overhead_ms']['p50'])} / {ms(m['overhead_ms']['p99'])} | "
                    f"{ms(m['overhead_alt_delay_ms']['p50']) if 'overhead_alt_delay_ms' in m else '—'} |")
    hrt = r.get("http_round_trip")
    doc += [
        f"Run at commit `{r['commit']}`, {when} UTC, release binary built {r['binary']['mtime'].split('+')[0]} "
        f"UTC, on the machine above ({mach['nproc']} × {mach['cpu_model']}). Load average (1/5/15 min) "
        f"{' / '.join(map(str, r['load_average_start']))} at the start and "
        f"{' / '.join(map(str, r['load_average_end']))} at the end: other jobs shared the cores, and every "
        "number here is under that load.",
        "",
        f"- Server: `{' '.join(srv['argv'])}` — {srv['sessions_per_model']} ONNX Runtime sessions per model, "
        f"{srv['intra_threads']} intra-op thread each, graph optimisation {srv['graph_optimization']}, dynamic "
        f"batching up to {srv['max_batch']} rows waiting at most {srv['max_delay_ms']:g} ms (the defaults; hot "
        "swap polling off so no model loads mid-run).",
        "- Request: batch 1, the first row of each model's `golden.json` (dim 0 of every input sliced to one), "
        f"JSON body, all outputs returned; the first answer is checked against the golden outputs. Client: "
        f"{client['library']}, {client['connection']}; {client['body']}.",
        f"- 1 client: closed loop, {st['warmup_requests']:,} warm-up then {st['requests_1_client']:,} measured "
        "requests; req/s = requests / wall time.",
        f"- {st['clients']} clients: {client['throughput_clients_are']}, closed loop for {st['duration_s']:g} s "
        f"after {st['warmup_s']:g} s of warm-up; latencies of the requests started in the window. The cores the "
        "clients, the server and the whole machine used over the window are given per model.",
        "- Floor: the same model and input in this Python process through `onnxruntime.InferenceSession` with "
        f"the server's session options (intra-op threads {srv['intra_threads']}, inter-op 1, "
        f"{SERVER_OPT_NOTE}), single-threaded closed loop, at least {st['requests_1_client']:,} runs and "
        f"{st.get('floor_min_seconds', 0):g} s. Overhead per request = serve p50 (p99) at 1 client − floor p50 "
        "(p99): HTTP, JSON, the batcher and the hops between threads; the floor itself includes Python's "
        "binding cost.",
        f"- `--max-delay-ms {ALT}`: a second server, otherwise identical, repeats both serve phases: with a "
        "delay, a request waits that long for company once a session is free (the default is no wait).",
    ]
    if hrt:
        doc.append(f"- For scale: the same client's `GET /v2/health/live` round trip, p50 {ms(hrt['p50_ms'])} ms, "
                   f"p99 {ms(hrt['p99_ms'])} ms.")
    doc += [
        "",
        "Reproduce:",
        "",
        "```sh",
        r["command"],
        "```",
        "",
        "| model | 1 client p50 / p99 ms | 1 client req/s | "
        f"{st['clients']} clients p50 / p99 ms | {st['clients']} clients req/s | floor p50 / p99 ms | floor req/s | "
        f"overhead p50 / p99 ms | overhead p50, `--max-delay-ms {ALT}` |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]
    doc += serve_summary(r)
    for s in r.get("skipped", []):
        doc.append(f"- Skipped `{s['dir']}`: {s['reason']}")
    if r.get("skipped"):
        doc.append("")
    doc += ["### Per model", ""]
    for m in r["models"]:
        doc += serve_model(m)
    return doc


def serve_summary(r: dict) -> list[str]:
    """The ranges across models, in words; numbers only, no verdicts."""
    models = r["models"]
    if not models:
        return []
    def span(vals, f=ms):
        lo, hi = f(min(vals)), f(max(vals))
        return lo if lo == hi else f"{lo}–{hi}"

    n0, n2 = (lambda v: fmt(v)), (lambda v: f"{v:.2f}")
    get = lambda phase, key: [m[phase][key] for m in models if m.get(phase)]
    srv = lambda phase, key: [m[phase]["server"][key] for m in models if m.get(phase) and m[phase]["server"][key]]
    lines = [
        f"Across the {len(models)} models: at 1 client, p50 {span(get('latency_1_client', 'p50_ms'))} ms with "
        f"the default {r['server']['max_delay_ms']:g} ms batching delay"
        + (f" and {span(get('latency_1_client_alt_delay', 'p50_ms'))} ms with `--max-delay-ms {ALT}`"
           if get("latency_1_client_alt_delay", "p50_ms") else "")
        + f"; the in-process floor p50 is {span(get('floor', 'p50_ms'))} ms"
        + (f" and this client's bare HTTP round trip (`/v2/health/live`) {ms(r['http_round_trip']['p50_ms'])} ms"
           if r.get("http_round_trip") else "")
        + ". Inside the server, a 1-client request took "
        f"{span(srv('latency_1_client', 'request_mean_ms'))} ms on average"
        + (f" ({span(srv('latency_1_client_alt_delay', 'request_mean_ms'))} ms with `--max-delay-ms {ALT}`)"
           if srv("latency_1_client_alt_delay", "request_mean_ms") else "")
        + f", of which the ONNX Runtime run {span(srv('latency_1_client', 'inference_mean_ms'))} ms.",
        "",
        f"At {r['settings']['clients']} clients: {span(get('throughput', 'req_per_s'), n0)} req/s, the batcher merging "
        f"a mean {span(srv('throughput', 'requests_per_run_mean'), n2)} requests per run, the server using "
        f"{span(get('throughput', 'server_cores'), n2)} cores and the clients {span(get('throughput', 'client_cores'), n2)} "
        f"while the machine had {span(get('throughput', 'machine_cores'), n2)} of its {r['machine']['nproc']} cores busy"
        + (f"; with `--max-delay-ms {ALT}`, {span(get('throughput_alt_delay', 'req_per_s'), n0)} req/s, "
           f"{span(srv('throughput_alt_delay', 'requests_per_run_mean'), n2)} requests per run"
           if get("throughput_alt_delay", "req_per_s") else "")
        + ".",
        "",
    ]
    return lines


SERVER_OPT_NOTE = "graph optimisation ORT_ENABLE_LAYOUT, what ort's Level3 maps to"


def scaling_rows(md: str) -> list[dict]:
    """The rows of bench/scaling.sh's Markdown table."""
    rows = []
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].isdigit():
            rows.append({"run": cells[0], "instances": int(cells[1]), "cards": int(cells[2]),
                         "tx_s": float(cells[3]), "cpu": float(cells[4]), "rss": float(cells[5])})
    return rows


def scaling_svg(rows: list[dict]) -> str:
    """Bars of decisions/s per run of the scaling table, CPU ms per 1k tx written on each bar:
    a hand-made SVG (the report needs nothing beyond the benchmark's Python)."""
    w, h, left, top, bottom, bar = 720, 300, 60, 30, 60, 56
    peak = max(r["tx_s"] for r in rows) * 1.15
    step = (w - left - 20) / len(rows)
    y = lambda v: top + (h - top - bottom) * (1 - v / peak)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">Decisions/s by run (CPU ms per 1k tx on the bar)</text>']
    for tick in range(0, int(peak) + 1, 5000):
        out += [f'<line x1="{left}" x2="{w - 20}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>',
                f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:,}</text>']
    for i, r in enumerate(rows):
        x = left + i * step + (step - bar) / 2
        colour = "#4c78a8" if r["run"].endswith("cards") else "#f58518"
        out += [f'<rect x="{x:.1f}" y="{y(r["tx_s"]):.1f}" width="{bar}" height="{y(0) - y(r["tx_s"]):.1f}" fill="{colour}"/>',
                f'<text x="{x + bar / 2:.1f}" y="{y(r["tx_s"]) - 4:.1f}" text-anchor="middle">{r["tx_s"]:,.0f}</text>',
                f'<text x="{x + bar / 2:.1f}" y="{y(0) - 6:.1f}" text-anchor="middle" fill="white">{r["cpu"]:.1f}</text>',
                f'<text x="{x + bar / 2:.1f}" y="{y(0) + 16:.1f}" text-anchor="middle">'
                f'{r["instances"]} instance{"s" if r["instances"] > 1 else ""}</text>',
                f'<text x="{x + bar / 2:.1f}" y="{y(0) + 30:.1f}" text-anchor="middle">{r["cards"]:,} cards</text>']
    out += [f'<text x="{left}" y="{h - 8}" fill="#4c78a8">■ cards (1 instance)</text>',
            f'<text x="{left + 150}" y="{h - 8}" fill="#f58518">■ instances in one group (default world)</text>',
            "</svg>"]
    return "\n".join(out) + "\n"


def scaling_section(out: Path) -> list[str]:
    """bench/scaling.sh's table, as it wrote it (with its own run line), and its plot
    (docs/img/scaling.svg)."""
    table = out / "scaling.md"
    if not table.exists():
        return []
    plot = []
    rows = scaling_rows(table.read_text())
    if rows:
        (ROOT / "docs/img/scaling.svg").write_text(scaling_svg(rows))
        plot = ["![decisions/s and CPU per 1k transactions by run](img/scaling.svg)", ""]
    return ["## How cost grows: cards and instances (`bench/scaling.sh`)", "",
            table.read_text().rstrip(), "", *plot,
            "Reading it: a stream of N transactions from more cards spans fewer days (the simulator's cards "
            "make ~2 a day), so the card runs differ in history length and in terminal days to load as well as "
            "in cards; card state is a small part of peak RSS at these sizes. Instances share the same 2 cores "
            "with Kafka and PostgreSQL, so a second one only adds overlap (one instance leaves a core partly idle "
            "while it waits on Postgres), and four pay four ONNX Runtime sessions, four card caches and more "
            "rebalancing for the same cores. On this machine throughput varies by up to ±20 % between runs of "
            "the same build; compare rows of one run.", ""]


def policy_section(out: Path) -> list[str]:
    """bench/policy.sh's table: what rules and a shadow model cost."""
    table = out / "policy.md"
    if not table.exists():
        return []
    return ["## Rules and a shadow model (`bench/policy.sh`)", "",
            table.read_text().rstrip(), "",
            "`rules`: three CEL rules evaluated on every transaction (a block list and two conditions; "
            "one CEL evaluation is 40-370 ns). `shadow`: `[shadow]` = models/fraud-attention-int8, a second "
            "fraud model scored on every transaction in its own ONNX Runtime session, its rows written to "
            "`shadow_decisions` in the same Postgres transaction. A shadow model costs about what the champion's "
            "scoring costs; rules cost nothing measurable at this size. Same build, same stream, one after the "
            "other on the same 2 cores with Kafka and PostgreSQL.", ""]


def committed_section(doc: Path, title: str) -> list[str]:
    """The section of the committed document whose heading starts with `## {title}`, as it is:
    what a section shows when its raw results are not in bench/.out/ (a fresh clone, or a
    system not run this time). Each such section names the run it comes from."""
    text = doc.read_text() if doc.exists() else ""
    i = text.find(f"\n## {title}")
    if i < 0:
        return []
    j = text.find("\n## ", i + 1)
    return [text[i + 1:j if j >= 0 else len(text)].rstrip(), ""]


def kept_sections(doc: Path) -> list[str]:
    """The sections another tool writes (bench/sql_scale.py's "Analyst SQL at …"), as they are:
    `make bench` rewrites everything before them."""
    text = doc.read_text() if doc.exists() else ""
    i = text.find("\n## Analyst SQL at ")
    return [text[i + 1:].rstrip(), ""] if i >= 0 else []


# Issue 10's targets: (label, key, bound, "min"/"max"); keys are filled in by targets_section.
TARGETS = [
    ("≥ 30,000 decisions/s sustained", "tx_s", 30_000, "min"),
    ("≥ 3× the Python baseline (decisions/s)", "vs_python", 3.0, "min"),
    ("≥ 10× the per-message consumer (decisions/s)", "vs_naive", 10.0, "min"),
    ("CPU ≤ 30 ms per 1k transactions (engine process)", "cpu", 30.0, "max"),
    ("latency p50 ≤ 15 ms at 5,000 tx/s", "p50", 15.0, "max"),
    ("latency p99 ≤ 50 ms at 5,000 tx/s", "p99", 50.0, "max"),
    ("latency p99 ≤ 250 ms at 20,000 tx/s", "p99_20k", 250.0, "max"),
]


def targets_section(out: Path) -> list[str]:
    """Issue 10's targets against this run's numbers: met, or short by how much; and
    where the engine's time goes (its last profile and the stage means)."""
    t = {s: load(out, f"throughput-{s}.json") for s in (*SYSTEMS, NAIVE)}
    lat = load(out, "latency-engine.json")
    high = load(out, "latency-engine-high.json")
    if not t.get("engine"):
        return []
    rate = lambda s: (t[s]["rows_committed"] / t[s]["first_to_last_commit_seconds"]) if t.get(s) else None
    got = {
        "tx_s": rate("engine"),
        "vs_python": rate("engine") / rate("python") if rate("python") else None,
        "vs_naive": rate("engine") / rate(NAIVE) if rate(NAIVE) else None,
        "cpu": 1e6 * t["engine"]["cpu_seconds"] / t["engine"]["transactions"],
        "p50": lat["p50_ms"] if lat and lat.get("offered_rate") == 5000 else None,
        "p99": lat["p99_ms"] if lat and lat.get("offered_rate") == 5000 else None,
        "p99_20k": high["p99_ms"] if high and high.get("offered_rate") == 20000 else None,
    }
    rows = ["| target | measured | |", "|---|---:|---|"]
    for label, key, bound, kind in TARGETS:
        v = got[key]
        if v is None:
            rows.append(f"| {label} | — | not measured in this run |")
            continue
        ok = v >= bound if kind == "min" else v <= bound
        digits = 1 if key in ("cpu", "p50", "p99", "p99_20k") else (0 if key == "tx_s" else 1)
        shown = f"{v:,.{digits}f}" + ("×" if key.startswith("vs_") else "")
        verdict = "met" if ok else (f"**not met**: {100 * (1 - v / bound):.0f} % short" if kind == "min"
                                    else f"**not met**: {100 * (v / bound - 1):.0f} % over" if v < 2 * bound
                                    else f"**not met**: {v / bound:.1f}× the bound")
        rows.append(f"| {label} | {shown} | {verdict} |")
    doc = ["## Issue 10's targets, against this run", "", *rows, ""]
    prof = ROOT / "docs/img/profile-engine.txt"
    if prof.exists():
        lines = prof.read_text().splitlines()
        head = next((l.lstrip("# ") for l in lines if l.startswith("# riskstream run profile")), "")
        areas = []
        start = next(i for i, l in enumerate(lines) if l.startswith("## Where the samples are"))
        for l in lines[start + 1:]:
            if not l.strip():
                if areas:
                    break
                continue
            areas.append(l.strip())
        doc += ["Where the engine's CPU goes, from its last profile (`scripts/profile.sh`, "
                f"[`docs/img/profile-engine.svg`](img/profile-engine.svg); {head}): "
                + "; ".join(a.replace("  ", " ") for a in areas) + ".", ""]
    metrics = out / "throughput-engine.metrics"
    if metrics.is_file():
        stages, _ = engine_stages(metrics.read_text())
        named = [(n, v) for n, v in stages if not n.startswith(" ") and not n.startswith("total")]
        slowest = max(named, key=lambda x: x[1])
        doc += [f"The slowest stage of this throughput run, which bounds it: {slowest[0]}, "
                f"{slowest[1]:.1f} ms per batch (the stage table above).", ""]
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--doc", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, required=True, help="the model of the engine vs Python benchmark")
    ap.add_argument("--db-url", default="postgres://postgres@127.0.0.1:15432/riskstream")
    a = ap.parse_args()
    a.out = a.out.resolve()

    commit = command_output("git", "-C", str(ROOT), "describe", "--always", "--dirty")
    doc = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (bench/run.sh, bench/report.py, bench/serve_bench.py) on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC at commit `{commit}`; do not edit by hand. "
        "Raw results: `bench/.out/`. `BENCH_SYSTEMS` picks what runs; results of systems not run are kept "
        "from their last run, so **each section names the run (commit, time) it comes from**.",
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
        *stack_section(a.out, a.model_dir, commit),
        *targets_section(a.out),
        *(scaling_section(a.out) or committed_section(a.doc, "How cost grows")),
        *(policy_section(a.out) or committed_section(a.doc, "Rules and a shadow model")),
        *(serve_section(a.out) or committed_section(a.doc, "Model serving")
          or ["## Model serving (`riskstream serve`)", "",
              "Not run (no `serve.json` in bench/.out/): `BENCH_SYSTEMS=serve make bench`.", ""]),
        *kept_sections(a.doc),
    ]
    a.doc.write_text("\n".join(doc))


if __name__ == "__main__":
    main()
