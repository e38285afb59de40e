#!/usr/bin/env bash
# A/B throughput of riskstream builds on the same pre-loaded stream, in one
# run (the quick check beside `make bench`, which stays the record):
#
#   bench/ab.sh N LABEL=BINARY:DIR[:KEY=VALUE,...] [LABEL=BINARY:DIR ...]
#
# KEY=VALUE pairs after a second colon are extra environment for that run,
# e.g. a shadow model beside the champion:
#   shadow=$BIN:$PWD:RISKSTREAM_SHADOW__DIR=$PWD/models/fraud-attention-int8
#
# N simulated transactions are produced once (by the first binary, from its
# DIR, so an older build reads the stream it was written for); then each
# binary, started in its DIR (where its config/ and migrations are),
# consumes all of them into a fresh database of its own, one after the
# other. Prints wall time, the engine's CPU seconds, tx/s and the CPU
# seconds PostgreSQL used meanwhile (until the engine's connections closed,
# autovacuum included) per label; logs go to
# bench/.out/ab-LABEL.log. Each run's database is dropped after it. An older
# build is made with e.g.
#   git worktree add /tmp/base <commit> && (cd /tmp/base && cargo build --release)
# (sharing CARGO_TARGET_DIR: copy each binary out before building the next,
# and `touch src/lib.rs` in a checkout before building it again: cargo goes
# by modification times, and its files may be older than the other build).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KAFKA_BROKERS:?source scripts/env.sh first}"
(( $# >= 2 )) || { echo "usage: $0 N LABEL=BINARY:DIR ..." >&2; exit 2; }
N=$1
shift
PY=$PWD/.venv/bin/python
OUT=$PWD/bench/.out
PSQL=(psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 15432 -U postgres)
PREFIX="ab$(date +%s)"
# shellcheck source=bench/common.sh
. bench/common.sh
mkdir -p "$OUT"

"$PY" bench/topics.py create "$PREFIX" 4 "$KAFKA_BROKERS"

# env_for GROUP DB BINARY: the stock config pointed at the topics, GROUP and DB.
# migrate_url only where the build knows it (older ones refuse unknown keys).
env_for() {
  ENV=(RISKSTREAM_KAFKA__TRANSACTIONS_TOPIC="$PREFIX.transactions" RISKSTREAM_KAFKA__LABELS_TOPIC="$PREFIX.labels"
       RISKSTREAM_KAFKA__DLQ_TOPIC="$PREFIX.transactions.dlq" RISKSTREAM_KAFKA__PARTITIONS=4
       RISKSTREAM_KAFKA__GROUP_ID="$1" RISKSTREAM_POSTGRES__URL="postgres://postgres@127.0.0.1:15432/$2"
       RISKSTREAM_MODEL__DIR="$PWD/models/fraud-attention" RISKSTREAM_SERVER__LISTEN=127.0.0.1:9466)
  if grep -q migrate_url "$3"; then
    ENV+=(RISKSTREAM_POSTGRES__MIGRATE_URL="postgres://postgres@127.0.0.1:15432/$2")
  fi
}

first=${1#*=}
first_dir=${first#*:}
first_dir=${first_dir%%:*}
env_for "$PREFIX-simulator" unused "${first%%:*}"
(cd "$first_dir" && env "${ENV[@]}" "${first%%:*}" simulate --transactions "$N" --seed 1 >&2)

for spec in "$@"; do
  label=${spec%%=*} rest=${spec#*=}
  bin=${rest%%:*} after=${rest#*:} db="ab_${spec%%=*}"
  dir=${after%%:*} extra=""
  [[ $after == *:* ]] && extra=${after#*:}
  fresh_db "$db"
  env_for "$PREFIX-$label" "$db" "$bin"
  if [[ -n $extra ]]; then
    IFS=, read -ra more <<<"$extra"
    ENV+=("${more[@]}")
  fi
  (cd "$dir" && env "${ENV[@]}" "$bin" migrate >/dev/null)
  pg_start=$(postgres_cpu_seconds)
  steal_start=$(steal_seconds)
  start=$(date +%s.%N)
  (cd "$dir" && exec env "${ENV[@]}" "$bin" run 2>"$OUT/ab-$label.log") &
  pid=$!
  wait_committed_offsets "$pid" "$db" "$PREFIX.transactions" "$N" "$OUT/ab-$label.log"
  end=$(date +%s.%N)
  cpu=$(cpu_seconds "$pid")
  kill -TERM "$pid"
  wait "$pid" || true
  sleep 1 # its backends end and are reaped
  pg=$(awk -v a="$pg_start" -v b="$(postgres_cpu_seconds)" 'BEGIN { print b - a }')
  steal=$(awk -v a="$steal_start" -v b="$(steal_seconds)" -v w="$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" \
    -v c="$(nproc)" 'BEGIN { printf "%.1f", 100 * (b - a) / (w * c) }')
  # bench/policy.sh reads the fields by position: add new ones at the end.
  awk -v l="$label" -v a="$start" -v b="$end" -v n="$N" -v c="$cpu" -v p="$pg" -v s="$steal" \
    'BEGIN { printf "%s: %d tx in %.1f s wall, %.1f s CPU, %.0f tx/s; Postgres %.1f s CPU; host steal %s %%\n", l, n, b - a, c, n / (b - a), p, s }'
  # So that the next run does not share the cores with this one's autovacuum
  # and checkpoint (which made later runs of the same build up to 30 % slower).
  "${PSQL[@]}" -d riskstream -c "DROP DATABASE $db WITH (FORCE)" -c "CHECKPOINT"
done
"$PY" bench/topics.py delete "$PREFIX" "$KAFKA_BROKERS"
