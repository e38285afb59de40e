#!/usr/bin/env bash
# Profile the engine on the local stack: N pre-loaded simulated transactions
# (bench/ab.sh's stream), `perf record` on the engine process for PROFILE_SECS
# once it is busy, then a flamegraph (inferno) and the top functions.
#
#   scripts/profile.sh [N] [OUT_PREFIX]     (defaults: 1000000, docs/img/profile)
#
# N must keep the engine busy past the recording (3 s + PROFILE_SECS): at
# ~13k tx/s, 400k finish inside it and perf is killed with the engine.
#
# Writes OUT_PREFIX.svg (flamegraph), OUT_PREFIX.txt (where the samples
# go by area, top functions by self time) and OUT_PREFIX.folded.gz (stacks). Needs perf (Debian
# `linux-perf`) and inferno (`cargo install inferno`; found on PATH or in
# ~/.cache/inferno/bin). Uses the release binary.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?source scripts/env.sh first}"
N="${1:-1000000}"
OUT="${2:-docs/img/profile}"
SECS="${PROFILE_SECS:-40}"
BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/release/riskstream}"
PATH="$PATH:$HOME/.cache/inferno/bin"
command -v perf >/dev/null || { echo "profile: perf is not installed" >&2; exit 1; }
command -v inferno-flamegraph >/dev/null || { echo "profile: inferno is not installed (cargo install inferno --root ~/.cache/inferno)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The run, in the background: bench/ab.sh prints when it is done.
bash bench/ab.sh "$N" "profiled=$BIN:$PWD" >"$work/ab.out" 2>&1 &
ab=$!
# Wait until the engine is deciding (its log says the model is in force and
# a few seconds passed), then record.
for _ in $(seq 1 600); do
  pid=$(pgrep -f "$BIN run" | head -1 || true)
  [[ -n $pid ]] && grep -q 'partition claimed' bench/.out/ab-profiled.log 2>/dev/null && break
  sleep 0.2
done
[[ -n ${pid:-} ]] || { cat "$work/ab.out" >&2; echo "profile: the engine did not start" >&2; exit 1; }
sleep 3
perf record -F 499 -g --call-graph dwarf,32768 -o "$work/perf.data" -p "$pid" -- sleep "$SECS" 2>"$work/perf.log"
wait "$ab"
cat "$work/ab.out" | grep -v '^produced' || true
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf >"$work/collapsed.txt"
inferno-flamegraph --minwidth 1 --title "riskstream run, $N tx, ${SECS}s of perf at 499 Hz ($(git describe --always --dirty))" \
  <"$work/collapsed.txt" >"$OUT.svg"
gzip -c "$work/collapsed.txt" >"$OUT.folded.gz"
"$PWD/.venv/bin/python" - "$work/collapsed.txt" "$N" "$SECS" "$(git describe --always --dirty)" >"$OUT.txt" <<'PY'
import collections, sys
path, n, secs, commit = sys.argv[1:]
total = 0
self_time = collections.Counter()
areas = collections.Counter()
# Where a sample is: the innermost frame of its stack that names one of these areas
# (a frame "names" polars when it is polars code, not when a type in it mentions polars).
def starts(*prefixes):
    return lambda f: f.lstrip("<").startswith(prefixes)
def contains(*parts):
    return lambda f: any(p in f for p in parts)
AREAS = [("ONNX Runtime", starts("[libonnxruntime", "onnxruntime", "Ort", "ort::")),
         ("polars (feature columns)", starts("polars")),
         ("featurize (Rust: decode, state)", starts("riskstream::features", "riskstream::pipeline::featurize",
                                                   "riskstream::pipeline::batch", "riskstream::event")),
         ("Postgres client (sqlx, sink)", starts("sqlx", "riskstream::sink", "riskstream::pipeline::commit")),
         ("decide", starts("riskstream::pipeline::decide", "riskstream::decision")),
         ("Kafka (librdkafka, consumer)", starts("rd_", "rdkafka", "riskstream::ingest")),
         ("JSON (serde)", starts("serde_json")),
         ("allocator, memcpy", contains("malloc", "free", "realloc", "memcpy", "memmove", "unlink_chunk", "tcache"))]
for line in open(path):
    stack, count = line.rsplit(" ", 1)
    count = int(count)
    frames = stack.split(";")
    total += count
    self_time[frames[-1]] += count
    area = next((name for f in reversed(frames) for name, named in AREAS if named(f)),
                "other (tokio, threads, kernel)")
    areas[area] += count
print(f"# riskstream run profile: {commit}, {n} pre-loaded transactions, perf -F 499 --call-graph dwarf for {secs} s")
print(f"# {total} samples of the engine process; flamegraph beside this file (.svg), folded stacks (.folded.gz)")
print()
print("## Where the samples are (the innermost frame that names an area)")
for name, c in areas.most_common():
    print(f"{100 * c / total:6.1f} %  {name}")
print()
print("## Top 30 functions by self time")
for f, c in self_time.most_common(30):
    print(f"{100 * c / total:6.1f} %  {f[:150]}")
PY
echo "profile: wrote $OUT.svg, $OUT.txt and $OUT.folded.gz"
