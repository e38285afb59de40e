#!/usr/bin/env bash
# Latency of riskstream builds at an offered rate, one after the other on fresh
# topics (the quick check beside `make bench`, which stays the record):
#
#   bench/latency.sh N RATE LABEL=BINARY[:KEY=VALUE,...] [LABEL=BINARY ...]
#
# For each build: fresh topics and database, the engine started, then the
# simulator offers N transactions at RATE tx/s. Prints, over the records
# appended from 10 s after the first one (as `make bench` does), the latency
# percentiles (Postgres commit - Kafka append), and where a batch's time went
# from the engine's /metrics: mean rows per batch, mean seconds per stage and
# batch, and the median age of a record when its batch starts featurizing
# (reading from Kafka, waiting for a batch to close or for the watermark) and
# when it is committed (over all rows, warm-up included). KEY=VALUE pairs are extra environment for that run,
# e.g. fast=$BIN:RISKSTREAM_PIPELINE__BATCH_MAX_WAIT_MS=2. LATENCY_SIMULATE_ARGS:
# more arguments to the simulator (e.g. "--cards 100000").
set -euo pipefail
cd "$(dirname "$0")/.."
: "${KAFKA_BROKERS:?source scripts/env.sh first}"
(( $# >= 3 )) || { echo "usage: $0 N RATE LABEL=BINARY[:KEY=VALUE,...] ..." >&2; exit 2; }
N=$1 RATE=$2
shift 2
PY=$PWD/.venv/bin/python
OUT=$PWD/bench/.out
PSQL=(psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 15432 -U postgres)
METRICS=127.0.0.1:9467
# shellcheck source=bench/common.sh
. bench/common.sh
mkdir -p "$OUT"
[[ $("${PSQL[@]}" -d riskstream -tA -c "SHOW track_commit_timestamp") == on ]] ||
  { echo "latency: track_commit_timestamp is off (make bench turns it on)" >&2; exit 1; }

for spec in "$@"; do
  label=${spec%%=*} rest=${spec#*=}
  bin=${rest%%:*} extra=""
  [[ $rest == *:* ]] && extra=${rest#*:}
  prefix="lat$(date +%s)-$label" db="lat_${label//-/_}"
  "$PY" bench/topics.py create "$prefix" 4 "$KAFKA_BROKERS"
  ENV=(RISKSTREAM_KAFKA__TRANSACTIONS_TOPIC="$prefix.transactions" RISKSTREAM_KAFKA__LABELS_TOPIC="$prefix.labels"
       RISKSTREAM_KAFKA__DLQ_TOPIC="$prefix.transactions.dlq" RISKSTREAM_KAFKA__PARTITIONS=4
       RISKSTREAM_KAFKA__GROUP_ID="$prefix" RISKSTREAM_POSTGRES__URL="postgres://postgres@127.0.0.1:15432/$db"
       RISKSTREAM_POSTGRES__MIGRATE_URL="postgres://postgres@127.0.0.1:15432/$db"
       RISKSTREAM_MODEL__DIR="$PWD/models/fraud-attention" RISKSTREAM_SERVER__LISTEN="$METRICS")
  if [[ -n $extra ]]; then
    IFS=, read -ra more <<<"$extra"
    ENV+=("${more[@]}")
  fi
  fresh_db "$db"
  env "${ENV[@]}" "$bin" migrate >/dev/null
  env "${ENV[@]}" "$bin" run 2>"$OUT/lat-$label.log" &
  pid=$!
  trap 'kill -TERM $pid 2>/dev/null || true' EXIT
  # shellcheck disable=SC2086  # LATENCY_SIMULATE_ARGS is a list of arguments
  produced=$(env "${ENV[@]}" "$bin" simulate --transactions "$N" --seed 2 --rate "$RATE" ${LATENCY_SIMULATE_ARGS:-} |
             sed -n 's/^produced \([0-9]*\) transactions.*/\1/p')
  wait_committed_offsets "$pid" "$db" "$prefix.transactions" "$produced" "$OUT/lat-$label.log"
  curl -s "http://$METRICS/metrics" >"$OUT/lat-$label.metrics"
  cpu=$(cpu_seconds "$pid")
  kill -TERM "$pid"
  wait "$pid" || true
  trap - EXIT
  read -r p50 p90 p99 rows < <("${PSQL[@]}" -d "$db" -tA -F ' ' -c "
    WITH l AS (SELECT kafka_ts, extract(epoch FROM pg_xact_commit_timestamp(xmin) - kafka_ts) * 1000 AS ms
                 FROM risk_decisions),
         s AS (SELECT min(kafka_ts) + interval '10 s' AS since FROM l)
    SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(percentile_cont(0.9) WITHIN GROUP (ORDER BY ms)::numeric, 1),
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), count(*)
      FROM l, s WHERE kafka_ts >= s.since")
  # Mean per batch of each stage (riskstream_stage_seconds) and of batch_rows.
  stages=$(awk '
    /^riskstream_stage_seconds_sum/ { match($0, /stage="[^"]*"/); s = substr($0, RSTART + 7, RLENGTH - 8); sum[s] = $2 }
    /^riskstream_stage_seconds_count/ { match($0, /stage="[^"]*"/); s = substr($0, RSTART + 7, RLENGTH - 8); cnt[s] = $2 }
    /^riskstream_batch_rows_sum/ { rs = $2 } /^riskstream_batch_rows_count/ { rc = $2 }
    END { printf "rows/batch %.0f", (rc ? rs / rc : 0)
          for (s in sum) if (cnt[s]) printf ", %s %.1f ms", s, 1000 * sum[s] / cnt[s]
          printf "\n" }' "$OUT/lat-$label.metrics")
  # Median record age at featurize and at commit, interpolated in the histogram's buckets.
  ages=$(awk '
    /^riskstream_record_age_seconds_bucket/ {
      match($0, /at="[^"]*"/); at = substr($0, RSTART + 4, RLENGTH - 5)
      match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      n[at]++; les[at, n[at]] = le; cum[at, n[at]] = $2 }
    END { for (at in n) { total = cum[at, n[at]]; prev = 0; lo = 0
            for (i = 1; i <= n[at]; i++) {
              if (cum[at, i] >= total / 2) {
                hi = les[at, i]; if (hi == "+Inf") hi = lo
                f = cum[at, i] > prev ? (total / 2 - prev) / (cum[at, i] - prev) : 0
                printf "%s p50 ~%.1f ms; ", at, 1000 * (lo + f * (hi - lo)); break }
              prev = cum[at, i]; lo = les[at, i] } } }' "$OUT/lat-$label.metrics")
  printf '%s: %s tx at %s tx/s: p50 %s, p90 %s, p99 %s ms over %s steady rows; engine CPU %.1f s\n  %s\n  record age (all rows): %s\n' \
    "$label" "$produced" "$RATE" "$p50" "$p90" "$p99" "$rows" "$cpu" "$stages" "$ages"
  "${PSQL[@]}" -d riskstream -c "DROP DATABASE $db WITH (FORCE)" -c "CHECKPOINT"
  "$PY" bench/topics.py delete "$prefix" "$KAFKA_BROKERS"
done
