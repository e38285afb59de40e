#!/usr/bin/env bash
# `make bench`: the engine against the Python baseline (bench/baseline.py) on
# the local stack, and `riskstream serve` per model against in-process ONNX
# Runtime (bench/serve_bench.py). Writes docs/BENCHMARKS.md; raw results go to
# bench/.out/. A system that is not run keeps its earlier results there, and
# the report says which run each section comes from.
#
#   1. Throughput: BENCH_TRANSACTIONS simulated transactions are pre-loaded
#      into fresh topics; each system then consumes all of them into its own
#      fresh database (the baseline as a second consumer group).
#      System "python-naive" (bench/per_message.py: the baseline one record per
#      Postgres transaction) consumes only the first BENCH_NAIVE_TRANSACTIONS of
#      them (all if fewer): at a few hundred tx/s it would take an hour on 1M.
#   2. Latency: each system runs on fresh, empty topics while the simulator
#      offers BENCH_LATENCY_RATE tx/s; latency = Postgres commit time of the
#      decision - Kafka append time of the record. Not python-naive: it
#      cannot keep up with the offered rate, so its latency is its backlog.
#      The engine again at BENCH_LATENCY_HIGH_RATE (20000; 0 = not) with
#      BENCH_LATENCY_HIGH_TRANSACTIONS (500000). The latency stream comes from
#      BENCH_LATENCY_CARDS cards (100000; 0 = the simulator's default world).
#   3. Policy (system "policy", bench/policy.sh): the engine with three rules and
#      with a shadow model beside the stock engine, on one pre-loaded stream of
#      BENCH_POLICY_TRANSACTIONS (300000).
#   4. Serving (system "serve"): `riskstream serve` on every model with a
#      golden.json, batch-1 requests at 1 and 8 clients, beside the same model
#      in Python's onnxruntime in-process. Needs no Kafka or Postgres:
#      BENCH_SYSTEMS=serve runs only this.
#
# Knobs (environment): BENCH_TRANSACTIONS (1000000), BENCH_LATENCY_TRANSACTIONS
# (150000), BENCH_LATENCY_RATE (5000), BENCH_MODEL_DIR (models/fraud-attention),
# BENCH_SYSTEMS ("engine python policy serve"; also "python-naive", not by default),
# BENCH_NAIVE_TRANSACTIONS (50000), BENCH_BIN (use this riskstream binary
# instead of building the release one), BENCH_SERVE_ARGS (extra arguments to
# bench/serve_bench.py, e.g. "--duration 20 -- --sessions 1").
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?source scripts/env.sh first}"

N="${BENCH_TRANSACTIONS:-1000000}"
LAT_N="${BENCH_LATENCY_TRANSACTIONS:-150000}"
LAT_RATE="${BENCH_LATENCY_RATE:-5000}"
# Cards of the latency runs' stream (0: the simulator's default world, whose ~1,200
# cards spread any number of transactions over ~90 days, so that at 5k tx/s a
# simulated day closes every ~0.4 s of wall time and each close is a watermark
# wait and a terminal-state load; with 100k cards 150k transactions span under
# a day, as a few seconds of a real stream do).
LAT_CARDS="${BENCH_LATENCY_CARDS:-100000}"
LAT_CARDS_ARGS=()
[[ $LAT_CARDS == 0 ]] || LAT_CARDS_ARGS=(--cards "$LAT_CARDS")
# The engine's second latency run, near its capacity (0: none).
HIGH_RATE="${BENCH_LATENCY_HIGH_RATE:-20000}"
HIGH_N="${BENCH_LATENCY_HIGH_TRANSACTIONS:-500000}"
MODEL_DIR="$(realpath "${BENCH_MODEL_DIR:-models/fraud-attention}")"
SYSTEMS="${BENCH_SYSTEMS:-engine python policy serve}"
# How many of the pre-loaded transactions "python-naive" consumes for throughput.
NAIVE_N="${BENCH_NAIVE_TRANSACTIONS:-50000}"
[[ $NAIVE_N =~ ^[1-9][0-9]*$ ]] || { printf 'bench: error: BENCH_NAIVE_TRANSACTIONS must be a positive integer\n' >&2; exit 1; }
# The systems that run on the Kafka/Postgres stack, in the order given.
STACK_SYSTEMS=$(for s in $SYSTEMS; do [[ $s == serve || $s == policy ]] || printf '%s ' "$s"; done)
for s in $SYSTEMS; do
  [[ $s == engine || $s == python || $s == python-naive || $s == serve || $s == policy ]] || { printf 'bench: error: unknown system %s\n' "$s" >&2; exit 1; }
done
BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/release/riskstream}"
PY=.venv/bin/python
OUT=bench/.out
PARTITIONS=4
# Not the engine's default 9464, so a running `make demo` does not interfere.
METRICS_ADDR=127.0.0.1:9465
# Give up on a run that has not committed everything after this long; python-naive,
# which commits one record at a time, gets NAIVE_MS_PER_TX more per transaction.
RUN_TIMEOUT_S=1200
NAIVE_MS_PER_TX=20
RUN="bench$(date +%s)"
PSQL=(psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 15432 -U postgres)

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
sql() { "${PSQL[@]}" -d "$1" -tA -c "$2"; }
# shellcheck source=bench/common.sh
. bench/common.sh

# Topics stamped with the broker's append time (LogAppendTime), so a record's
# Kafka timestamp is when Kafka received it, whoever produced it.
create_topics() {
  "$PY" bench/topics.py create "$1" "$PARTITIONS" "$KAFKA_BROKERS"
}
delete_topics() {
  "$PY" bench/topics.py delete "$1" "$KAFKA_BROKERS"
}

# engine_env PREFIX GROUP DB: the environment (in ENV) that points the stock
# config at topics PREFIX.*, consumer group GROUP and database DB.
engine_env() {
  ENV=(
    RISKSTREAM_KAFKA__TRANSACTIONS_TOPIC="$1.transactions"
    RISKSTREAM_KAFKA__LABELS_TOPIC="$1.labels"
    RISKSTREAM_KAFKA__DLQ_TOPIC="$1.transactions.dlq"
    RISKSTREAM_KAFKA__PARTITIONS="$PARTITIONS"
    RISKSTREAM_KAFKA__GROUP_ID="$2"
    RISKSTREAM_POSTGRES__URL="postgres://postgres@127.0.0.1:15432/$3"
    RISKSTREAM_POSTGRES__MIGRATE_URL="postgres://postgres@127.0.0.1:15432/$3"
    RISKSTREAM_MODEL__DIR="$MODEL_DIR"
    RISKSTREAM_SERVER__LISTEN="$METRICS_ADDR"
  )
}

# simulate PREFIX ARGS...: produce to PREFIX.*; prints the number of transactions produced.
simulate() {
  local prefix="$1" out n
  shift
  engine_env "$prefix" "$prefix-simulator" unused  # the simulator reads only the Kafka settings
  out=$(env "${ENV[@]}" "$BIN" simulate "$@")
  say "$out"
  n=$(sed -n 's/^produced \([0-9]*\) transactions.*/\1/p' <<<"$out")
  [[ -n $n ]] || die "no transaction count in the simulator's output"
  echo "$n"
}

# start SYSTEM PREFIX DB LOG [MAX]: start a system on PREFIX.* writing to DB; sets PID and
# STARTED. MAX (python-naive only): it stops consuming after MAX transactions.
start() {
  local system="$1" prefix="$2" db="$3" log="$4" max="${5:-}"
  fresh_db "$db"
  if [[ $system == engine ]]; then
    # `run` does not migrate; it refuses an unmigrated database. Not timed.
    engine_env "$prefix" "$prefix-engine" "$db"
    env "${ENV[@]}" "$BIN" migrate >/dev/null
  fi
  STARTED=$(date +%s.%N)
  if [[ $system == engine ]]; then
    env "${ENV[@]}" "$BIN" run 2>"$log" &
  else
    local script=bench/baseline.py limit=()
    if [[ $system == python-naive ]]; then
      script=bench/per_message.py
      [[ -z $max ]] || limit=(--max-records "$max")
    fi
    # Its JSON summary (with its own stage timings) goes to LOG's .summary.json sibling.
    "$PY" "$script" --brokers "$KAFKA_BROKERS" --group "$prefix-$system" --topic-prefix "$prefix" \
      --db-url "postgres://postgres@127.0.0.1:15432/$db" --model-dir "$MODEL_DIR" \
      --idle-exit-seconds "$RUN_TIMEOUT_S" "${limit[@]}" >"${log%.log}.summary.json" 2>"$log" &
  fi
  PID=$!
  trap 'kill -TERM $PID 2>/dev/null || true' EXIT
}

# wait_committed SYSTEM DB TOPIC N LOG: until the partitions' committed offsets cover
# N records (bench/common.sh), within the run's timeout.
wait_committed() {
  local system="$1" db="$2" topic="$3" n="$4" log="$5" timeout="$RUN_TIMEOUT_S"
  [[ $system != python-naive ]] || timeout=$(( RUN_TIMEOUT_S + n * NAIVE_MS_PER_TX / 1000 ))
  wait_committed_offsets "$PID" "$db" "$topic" "$n" "$log" "$timeout" || die "$log: process died or not done after ${timeout}s"
}

# stop: CPU seconds (user + sys) and peak RSS of PID, then SIGTERM it. Sets CPU_S and RSS_MB.
stop() {
  CPU_S=$(awk -v tck="$(getconf CLK_TCK)" '{ print ($14 + $15) / tck }' "/proc/$PID/stat")
  RSS_MB=$(awk '/^VmHWM/ { print $2 / 1024 }' "/proc/$PID/status")
  kill -TERM "$PID"
  wait "$PID" || true
  trap - EXIT
}

# throughput SYSTEM PREFIX PRODUCED: consume the pre-loaded PREFIX.* -> $OUT/throughput-SYSTEM.json.
# python-naive consumes only the first NAIVE_N of them; its tx/s are over those.
throughput() {
  local system="$1" prefix="$2" produced="$3" db="bench_${1//-/_}_throughput" log="$OUT/throughput-$1.log"
  local n="$produced" max=""
  if [[ $system == python-naive ]] && (( NAIVE_N < produced )); then
    n=$NAIVE_N max=$NAIVE_N
  fi
  say "throughput: $system consumes $n${max:+ (the first ones) of $produced} pre-loaded transactions"
  local steal_start
  steal_start=$(steal_seconds)
  start "$system" "$prefix" "$db" "$log" "$max"
  wait_committed "$system" "$db" "$prefix.transactions" "$n" "$log"
  if [[ $system == engine ]]; then
    "$PY" -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
      "http://$METRICS_ADDR/metrics" >"$OUT/throughput-engine.metrics"
  fi
  stop
  # Every transaction is either decided or dead-lettered, each exactly once.
  local rows first last
  IFS='|' read -r rows first last < <(sql "$db" "
    SELECT (SELECT count(*) FROM dead_letters WHERE source_topic = '$prefix.transactions') + count(*),
           extract(epoch FROM min(c)), extract(epoch FROM max(c))
      FROM (SELECT pg_xact_commit_timestamp(xmin) AS c FROM risk_decisions) d")
  (( rows == n )) || die "$system committed $rows rows for $n transactions"
  cat >"$OUT/throughput-$system.json" <<JSON
{"system": "$system", "transactions": $n, "stream_transactions": $produced, "rows_committed": $rows,
 "wall_seconds": $(awk -v a="$STARTED" -v b="$last" 'BEGIN { printf "%.3f", b - a }'),
 "first_to_last_commit_seconds": $(awk -v a="$first" -v b="$last" 'BEGIN { printf "%.3f", b - a }'),
 "cpu_seconds": $CPU_S, "peak_rss_mb": $RSS_MB,
 "steal_seconds": $(awk -v a="$steal_start" -v b="$(steal_seconds)" 'BEGIN { printf "%.2f", b - a }'), "cores": $(nproc)}
JSON
}

# latency SYSTEM [RATE N NAME]: fresh topics, the system first, then N (LAT_N)
# transactions at RATE (LAT_RATE) tx/s -> $OUT/NAME.json (latency-SYSTEM).
latency() {
  local system="$1" rate="${2:-$LAT_RATE}" n="${3:-$LAT_N}" name="${4:-latency-$1}"
  local prefix="$RUN-$name" db="bench_${name//-/_}" log="$OUT/$name.log"
  say "latency: $system at $rate tx/s"
  create_topics "$prefix"
  start "$system" "$prefix" "$db" "$log"
  local produced produced_at
  produced=$(simulate "$prefix" --transactions "$n" --seed 2 --rate "$rate" "${LAT_CARDS_ARGS[@]}")
  produced_at=$(date +%s.%N)
  wait_committed "$system" "$db" "$prefix.transactions" "$produced" "$log"
  stop
  delete_topics "$prefix"
  # Steady state: records appended at least 10 s after the first one.
  sql "$db" "
    WITH l AS (
      SELECT kafka_ts, extract(epoch FROM pg_xact_commit_timestamp(xmin) - kafka_ts) * 1000 AS ms,
             pg_xact_commit_timestamp(xmin) AS committed
        FROM risk_decisions),
    s AS (SELECT min(kafka_ts) + interval '10 s' AS since, max(kafka_ts) - interval '10 s' AS last10 FROM l)
    -- Whether lag grows: the median of the first and of the last 10 s of steady-state input.
    SELECT json_build_object(
      'system', '$system', 'transactions', $produced, 'offered_rate', $rate, 'cards', $LAT_CARDS,
      'steady_rows', count(*),
      'p50_ms', round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
      'p99_ms', round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
      'max_ms', round(max(ms)::numeric, 1),
      'p50_first_10s_ms', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)
                                 FILTER (WHERE kafka_ts < s.since + interval '10 s'))::numeric, 1),
      'p50_last_10s_ms', round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)
                                FILTER (WHERE kafka_ts >= s.last10))::numeric, 1),
      'drain_after_producer_s', round((extract(epoch FROM max(committed)) - $produced_at)::numeric, 2))
      FROM l, s WHERE l.kafka_ts >= s.since" >"$OUT/$name.json"
}

mkdir -p "$OUT"
# Only the results of the systems about to run are replaced.
for system in $SYSTEMS; do
  if [[ $system == serve ]]; then
    rm -f "$OUT"/serve.json "$OUT"/serve.*.log
  else
    rm -f "$OUT"/{throughput,latency,run}-"$system".*
    [[ $system != engine ]] || rm -f "$OUT"/latency-engine-high.*
  fi
done

# The simulator is the engine's binary too, so it is built even for BENCH_SYSTEMS=python.
[[ -n ${BENCH_BIN:-} ]] || cargo build --release --bin riskstream

if [[ -n $STACK_SYSTEMS ]]; then
  # Commit timestamps only exist for transactions committed while this is on,
  # and turning it on needs a server restart.
  if [[ $(sql riskstream "SHOW track_commit_timestamp") != on ]]; then
    say "track_commit_timestamp is off: restarting the stack to turn it on"
    bash scripts/stack down && bash scripts/stack up
  fi

  prefix="$RUN-throughput"
  create_topics "$prefix"
  say "pre-loading $N simulated transactions into $prefix.*"
  produced=$(simulate "$prefix" --transactions "$N" --seed 1)
  for system in $STACK_SYSTEMS; do throughput "$system" "$prefix" "$produced"; done
  delete_topics "$prefix"
  # python-naive is a throughput reference only: at a few hundred tx/s it
  # cannot keep up with the offered rate, so its "latency" is just its backlog.
  for system in $STACK_SYSTEMS; do [[ $system == python-naive ]] || latency "$system"; done
  # The engine near its capacity: does the lag stay steady, and what is p99 there?
  if [[ " $STACK_SYSTEMS " == *" engine "* && $HIGH_RATE != 0 ]]; then
    latency engine "$HIGH_RATE" "$HIGH_N" latency-engine-high
  fi
  # Which run each system's results come from, for the report.
  naive_knob=""
  [[ " $STACK_SYSTEMS " != *" python-naive "* ]] || naive_knob="BENCH_NAIVE_TRANSACTIONS=$NAIVE_N "
  for system in $STACK_SYSTEMS; do
    cat >"$OUT/run-$system.json" <<JSON
{"system": "$system", "commit": "$(git describe --always --dirty 2>/dev/null || echo unknown)",
 "finished_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "command": "BENCH_TRANSACTIONS=$N ${naive_knob}BENCH_LATENCY_TRANSACTIONS=$LAT_N BENCH_LATENCY_RATE=$LAT_RATE BENCH_LATENCY_CARDS=$LAT_CARDS BENCH_LATENCY_HIGH_RATE=$HIGH_RATE BENCH_LATENCY_HIGH_TRANSACTIONS=$HIGH_N BENCH_SYSTEMS=\"${STACK_SYSTEMS% }\" make bench"}
JSON
  done
fi

if [[ " $SYSTEMS " == *" policy "* ]]; then
  say "policy: the engine plain, with rules, and with a shadow model (bench/policy.sh)"
  BENCH_BIN="$BIN" bash bench/policy.sh "${BENCH_POLICY_TRANSACTIONS:-300000}" >&2
fi

if [[ " $SYSTEMS " == *" serve "* ]]; then
  say "serving: riskstream serve on every model with a golden.json, 1 and 8 clients, vs in-process ONNX Runtime"
  # shellcheck disable=SC2086  # BENCH_SERVE_ARGS is a list of arguments
  "$PY" bench/serve_bench.py --bin "$BIN" --models models --out "$OUT/serve.json" \
    --command "BENCH_SYSTEMS=serve ${BENCH_SERVE_ARGS:+BENCH_SERVE_ARGS=\"$BENCH_SERVE_ARGS\" }make bench" \
    ${BENCH_SERVE_ARGS:-}
fi

"$PY" bench/report.py --out "$OUT" --doc docs/BENCHMARKS.md --model-dir "$MODEL_DIR"
say "wrote docs/BENCHMARKS.md (raw results in $OUT/)"
