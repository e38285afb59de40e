#!/usr/bin/env bash
# `make fuzz`: fuzz the wire decoders (src/event.rs) with AFL++ through
# cargo-afl, then minimize the corpus and print what the run did.
#
# The fuzz crate (fuzz/) compiles src/event.rs on its own, so a build takes a
# minute, not the main crate's eight. Inputs start from fuzz/corpus/ (seeds/
# hand-written, min/ what earlier runs kept); afterwards the queue is
# minimized with afl-cmin into fuzz/corpus/min/, ready to commit. A crash or
# hang fails the run and prints the input in hex; replay one with
#   fuzz/target/release/decoders < FILE
#
# Env knobs:
#   FUZZ_SECONDS      how long afl-fuzz runs (default 1800)
#   FUZZ_NICE         niceness of the fuzzer (default 19: it yields to builds)
#   FUZZ_TIMEOUT_MS   per-input time limit before an input counts as a hang (default 200)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

FUZZ_SECONDS="${FUZZ_SECONDS:-1800}"
FUZZ_NICE="${FUZZ_NICE:-19}"
FUZZ_TIMEOUT_MS="${FUZZ_TIMEOUT_MS:-200}"
# cargo-afl must match the `afl` crate in fuzz/Cargo.lock: its AFL++ runtime
# is built per afl.rs version.
AFL_RS_VERSION=0.18.2
# A committed corpus must stay reviewable.
MAX_FILES=500
MAX_BYTES=$((2 * 1024 * 1024))

say() { printf 'fuzz: %s\n' "$*"; }
die() { printf 'fuzz: error: %s\n' "$*" >&2; exit 1; }

# env.sh points CARGO_TARGET_DIR at the main crate's cache; the fuzz build
# (instrumented, different flags) keeps to fuzz/target.
unset CARGO_TARGET_DIR

if ! cargo afl --version 2>/dev/null | grep -q "cargo-afl $AFL_RS_VERSION"; then
  say "installing cargo-afl $AFL_RS_VERSION (builds AFL++ from the crate, a few minutes)"
  nice -n "$FUZZ_NICE" cargo install cargo-afl --version "$AFL_RS_VERSION" --locked
fi

say "building the instrumented target"
nice -n "$FUZZ_NICE" cargo afl build --release --locked --quiet
BIN="$PWD/target/release/decoders"

# Flat copy of every input: AFL++ reads subdirectories, but names must not
# collide between seeds/ and min/.
IN=target/afl-in OUT=target/afl-out
rm -rf "$IN" "$OUT"
mkdir -p "$IN" corpus/seeds corpus/min
for f in corpus/seeds/* corpus/min/*; do
  if [[ -f "$f" ]]; then cp "$f" "$IN/$(basename "$(dirname "$f")")-$(basename "$f")"; fi
done
BEFORE_FILES=$(find corpus -type f | wc -l)

export AFL_SKIP_CPUFREQ=1 # the governor is not ours to change
export AFL_NO_AFFINITY=1  # a shared machine: let the scheduler place it
[[ -t 1 ]] || export AFL_NO_UI=1
# A piped core_pattern (systemd-coredump) only delays crash detection here.
if [[ "$(cat /proc/sys/kernel/core_pattern 2>/dev/null)" == \|* ]]; then
  export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
fi

LOG=target/afl-fuzz.log
say "fuzzing for ${FUZZ_SECONDS}s (nice $FUZZ_NICE); progress in fuzz/$LOG"
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
if [[ -t 1 ]]; then
  nice -n "$FUZZ_NICE" cargo afl fuzz -V "$FUZZ_SECONDS" -t "$FUZZ_TIMEOUT_MS" \
    -x decoders.dict -i "$IN" -o "$OUT" -- "$BIN"
else
  nice -n "$FUZZ_NICE" cargo afl fuzz -V "$FUZZ_SECONDS" -t "$FUZZ_TIMEOUT_MS" \
    -x decoders.dict -i "$IN" -o "$OUT" -- "$BIN" >"$LOG" 2>&1 ||
    { tail -30 "$LOG" >&2; die "afl-fuzz failed"; }
fi

STATS="$OUT/default/fuzzer_stats"
stat_of() { sed -n "s/^$1 *: *//p" "$STATS"; }
QUEUE_FILES=$(find "$OUT/default/queue" -maxdepth 1 -type f | wc -l)

# afl-showmap's forkserver reports every input of this persistent-mode target
# as timed out in cmin mode (AFL++ 4.40c), which would keep nothing;
# AFL_NO_FORKSRV runs one process per input instead. -e keeps one input per
# edge rather than per hit count, which keeps the corpus reviewable.
say "minimizing $QUEUE_FILES queue entries with afl-cmin"
MIN=target/afl-cmin
rm -rf "$MIN"
AFL_NO_FORKSRV=1 nice -n "$FUZZ_NICE" cargo afl cmin -e -t 1000 \
  -i "$OUT/default/queue" -o "$MIN" -- "$BIN" >target/afl-cmin.log 2>&1 ||
  { tail -20 target/afl-cmin.log >&2; die "afl-cmin failed"; }

# afl-cmin keeps the smallest input per edge, some of them for edges the
# seeds reach anyway. A greedy cover that counts the seeds as already kept
# drops those, then copies the rest under content-addressed names (no `:`
# or `,`, stable across runs).
TRACES=target/afl-traces
rm -rf "$TRACES" && mkdir -p "$TRACES"
for d in corpus/seeds "$MIN"; do
  AFL_NO_FORKSRV=1 nice -n "$FUZZ_NICE" cargo afl showmap -q -e -m none -t 1000 \
    -i "$d" -o "$TRACES/$(basename "$d")" -- "$BIN" >/dev/null 2>&1 ||
    die "afl-showmap failed on $d"
done
rm -rf corpus/min.new && mkdir corpus/min.new
python3 - "$TRACES/seeds" "$TRACES/$(basename "$MIN")" <<'PY' |
import os, sys
def edges(d):
    return {f: {l.split(":")[0] for l in open(os.path.join(d, f)) if l.strip()}
            for f in os.listdir(d)}
seeds, found = edges(sys.argv[1]), edges(sys.argv[2])
left = set().union(*found.values()) - set().union(*seeds.values())
while left:
    best = max(sorted(found), key=lambda f: len(found[f] & left))
    left -= found.pop(best)
    print(best)
PY
  while read -r f; do
    cp "$MIN/$f" "corpus/min.new/$(sha1sum <"$MIN/$f" | cut -c1-40)"
  done
rm -rf corpus/min && mv corpus/min.new corpus/min

AFTER_FILES=$(find corpus -type f | wc -l)
SEED_FILES=$(find corpus/seeds -type f | wc -l)
AFTER_BYTES=$(find corpus -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
CRASHES=$(find "$OUT/default/crashes" -maxdepth 1 -type f -name 'id:*' | wc -l)
HANGS=$(find "$OUT/default/hangs" -maxdepth 1 -type f -name 'id:*' | wc -l)

cat <<EOF | tee target/fuzz-summary.txt
started           $STARTED
fuzzer            $(cargo afl --version) ($(nproc) CPUs: $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1))
run time          $(stat_of run_time) s
execs             $(stat_of execs_done) ($(stat_of execs_per_sec) exec/s)
stability         $(stat_of stability)
edges             $(stat_of edges_found) of $(stat_of total_edges) ($(stat_of bitmap_cvg))
corpus            $BEFORE_FILES files in -> $QUEUE_FILES in the queue -> $AFTER_FILES after afl-cmin and the cover ($SEED_FILES seeds + $((AFTER_FILES - SEED_FILES)) in min/, $AFTER_BYTES bytes)
crashes           $CRASHES
hangs             $HANGS
EOF

if ((AFTER_FILES > MAX_FILES || AFTER_BYTES > MAX_BYTES)); then
  say "warning: fuzz/corpus is over $MAX_FILES files or $MAX_BYTES bytes; review before committing"
fi
if ((CRASHES + HANGS > 0)); then
  for f in "$OUT"/default/crashes/id:* "$OUT"/default/hangs/id:*; do
    [[ -f "$f" ]] || continue
    say "$f"
    od -An -v -tx1 "$f" | tr -d ' \n' | cut -c1-2000
    echo
  done
  die "$CRASHES crash(es), $HANGS hang(s); inputs in fuzz/$OUT/default/{crashes,hangs}"
fi
