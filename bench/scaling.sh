#!/usr/bin/env bash
# How the engine's cost grows with its state and with its instances (issue
# 10), beside `make bench` (which stays the record for engine vs Python):
#
#   bench/scaling.sh [N]        N transactions per run (default 300000)
#
# 1. Cards: N transactions made by 10k and 100k cards (`simulate --cards`;
#    SCALING_CARDS overrides the list), one instance: decisions/s, CPU per
#    1k transactions and peak RSS (card state is what grows with the cards).
#    300k and 1M are not in the default list: the simulator builds a whole
#    day of all its customers' activity in memory first (over 8 GB and
#    several minutes for 300k; it was stopped).
# 2. Instances: one stream of N transactions (the simulator's default world)
#    consumed by 1, 2 and 4 instances in one consumer group, all on this box
#    with Kafka and Postgres: CPU and peak RSS summed over the instances.
#
# Each run consumes pre-loaded 4-partition topics into a fresh database;
# the clock runs from the first instance's start to the last commit.
# Prints a Markdown table; instance logs go to bench/.out/scaling-*.log.
# BENCH_BIN picks the binary (default: the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KAFKA_BROKERS:?source scripts/env.sh first}"
N=${1:-300000}
BIN=${BENCH_BIN:-$CARGO_TARGET_DIR/release/riskstream}
PY=$PWD/.venv/bin/python
OUT=$PWD/bench/.out
PSQL=(psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 15432 -U postgres)
RUN="scale$(date +%s)"
# shellcheck source=bench/common.sh
. bench/common.sh
mkdir -p "$OUT"

# topics PREFIX: fresh transactions (4 partitions), labels and DLQ topics;
# delete_topics PREFIX: delete them once every run that reads them is done.
topics() {
  "$PY" bench/topics.py create "$1" 4 "$KAFKA_BROKERS"
}
delete_topics() {
  "$PY" bench/topics.py delete "$1" "$KAFKA_BROKERS"
}

# env_for PREFIX DB PORT: the stock config pointed at PREFIX's topics, DB
# (whose name is also the consumer group: one per run), and its own metrics port.
env_for() {
  ENV=(RISKSTREAM_KAFKA__TRANSACTIONS_TOPIC="$1.transactions" RISKSTREAM_KAFKA__LABELS_TOPIC="$1.labels"
       RISKSTREAM_KAFKA__DLQ_TOPIC="$1.transactions.dlq" RISKSTREAM_KAFKA__PARTITIONS=4
       RISKSTREAM_KAFKA__GROUP_ID="$1-$2" RISKSTREAM_POSTGRES__URL="postgres://postgres@127.0.0.1:15432/$2"
       RISKSTREAM_POSTGRES__MIGRATE_URL="postgres://postgres@127.0.0.1:15432/$2"
       RISKSTREAM_MODEL__DIR="$PWD/models/fraud-attention" RISKSTREAM_SERVER__LISTEN="127.0.0.1:$3")
}

# consume LABEL PREFIX INSTANCES: prints "cards|tx/s|CPU ms per 1k tx|peak RSS MiB (sum)".
consume() {
  local label=$1 prefix=$2 instances=$3 db="scaling_$1" pids=() i
  fresh_db "$db"
  env_for "$prefix" "$db" 9470
  env "${ENV[@]}" "$BIN" migrate >/dev/null
  local start
  start=$(date +%s.%N)
  for ((i = 0; i < instances; i++)); do
    env_for "$prefix" "$db" $((9470 + i))
    env "${ENV[@]}" "$BIN" run 2>"$OUT/scaling-$label-$i.log" &
    pids+=($!)
  done
  wait_committed_offsets "${pids[*]}" "$db" "$prefix.transactions" "$N" "$OUT/scaling-$label-*.log" || exit 1
  local end cpu=0 rss=0
  end=$("${PSQL[@]}" -d "$db" -tA -c "SELECT extract(epoch FROM max(decided_at)) FROM risk_decisions")
  for i in "${pids[@]}"; do
    cpu=$(awk -v c="$cpu" -v t="$(getconf CLK_TCK)" '{ print c + ($14 + $15) / t }' "/proc/$i/stat")
    rss=$(awk -v r="$rss" '/^VmHWM/ { print r + $2 / 1024 }' "/proc/$i/status")
  done
  kill -TERM "${pids[@]}"
  wait "${pids[@]}" || true
  local cards
  cards=$("${PSQL[@]}" -d "$db" -tA -c "SELECT count(DISTINCT card_id) FROM risk_decisions")
  awk -v a="$start" -v b="$end" -v n="$N" -v c="$cpu" -v r="$rss" -v k="$cards" \
    'BEGIN { printf "%d|%.0f|%.1f|%.0f\n", k, n / (b - a), c * 1000000 / n, r }'
}

# produce PREFIX [--cards C]: N transactions into PREFIX's fresh topics.
produce() {
  local prefix=$1
  shift
  topics "$prefix"
  env_for "$prefix" unused 9470
  env "${ENV[@]}" "$BIN" simulate --transactions "$N" --seed 1 "$@" >&2
}

exec > >(tee "$OUT/scaling.md")
echo "Run at commit \`$(git describe --always --dirty)\`, started $(date -u '+%Y-%m-%d %H:%M') UTC: \`bench/scaling.sh $N\`, $N transactions per run, each consumed from pre-loaded 4-partition topics into a fresh database, Kafka and PostgreSQL on the same 2 cores. CPU and peak RSS are the engine processes' own, summed over the instances."
echo
echo "| run | instances | cards in the stream | decisions/s | CPU ms per 1k tx | peak RSS, MiB (sum) |"
echo "|---|---:|---:|---:|---:|---:|"
for cards in ${SCALING_CARDS:-10000 100000}; do
  produce "$RUN-c$cards" --cards "$cards"
  IFS='|' read -r k tps cpu rss < <(consume "c$cards" "$RUN-c$cards" 1)
  delete_topics "$RUN-c$cards"
  echo "| $cards cards | 1 | $k | $tps | $cpu | $rss |"
done
produce "$RUN-i"
for instances in 1 2 4; do
  # Each instance count reads the same stream, as a consumer group of its own.
  IFS='|' read -r k tps cpu rss < <(consume "i$instances" "$RUN-i" "$instances")
  echo "| default world | $instances | $k | $tps | $cpu | $rss |"
done
delete_topics "$RUN-i"
