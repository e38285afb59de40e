#!/usr/bin/env bash
# What storing decisions costs PostgreSQL, per table, without the engine:
# the decisions of SRC_DB (e.g. bench_engine_throughput, left by `make bench`)
# cut into batches of 2,000 binary COPY files, then loaded into a fresh
# migrated database with server-side COPY, one transaction per batch as the
# sink does, and the backend's CPU read from /proc (docs/DECISIONS.md, "No
# planner statistics on the per-decision arrays", has a run).
#
#   bench/sink_cost.sh SRC_DB [BATCHES]     (default 100 batches: 200,000 decisions)
#
# SINK_COST_VARIANT: SQL run on each fresh database after its migrations, to
# measure a schema variant (e.g. "DROP TRIGGER … ON risk_decisions");
# SINK_COST_TABLES: which loads to measure (default "ids;rd;ae;ids rd ae").
#
# Prints the backend CPU per decision for each table alone and for the three
# together. Needs the stack's superuser (server-side COPY and pg_read_file).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?source scripts/env.sh first}"
SRC=${1:?usage: $0 SRC_DB [BATCHES]} BATCHES=${2:-100}
BIN=${BENCH_BIN:-$CARGO_TARGET_DIR/release/riskstream}
PSQL=(psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 15432 -U postgres)
export PGOPTIONS="-c client_min_messages=warning"
# shellcheck source=bench/common.sh
. bench/common.sh
RD="tx_id, ts, card_id, terminal_id, amount, currency, mcc, channel, country, score, decision, model_name,
    model_version, model_sha256, threshold_version, state_complete, decided_at, kafka_ts, source_topic,
    source_partition, source_offset, mcc_surprise, features, rules_fired"
AE="tx_id, feature_weights, history_tx_ids, history_weights, ts"
DIR=$(mktemp -d)
chmod 777 "$DIR" # the server writes and reads the files
DB=sink_cost
trap 'rm -rf "$DIR"; "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" 2>/dev/null' EXIT

# The batches, in the order the engine committed them.
qualified() { sed -E "s/([a-z_0-9]+)/$1.\\1/g" <<<"$2"; }
{
  echo "CREATE TEMP TABLE o AS SELECT row_number() OVER (ORDER BY decided_at, source_partition, source_offset) AS n, tx_id, ts
          FROM risk_decisions;"
  for ((i = 0; i < BATCHES; i++)); do
    range="n > $((i * 2000)) AND n <= $((i * 2000 + 2000)) ORDER BY n"
    echo "COPY (SELECT tx_id, ts FROM o WHERE $range) TO '$DIR/ids.$i' (FORMAT binary);"
    echo "COPY (SELECT $(qualified r "$RD") FROM o JOIN risk_decisions r USING (tx_id, ts) WHERE $range)
            TO '$DIR/rd.$i' (FORMAT binary);"
    echo "COPY (SELECT $(qualified a "$AE") FROM o JOIN attention_explanations a USING (tx_id, ts) WHERE $range)
            TO '$DIR/ae.$i' (FORMAT binary);"
  done
} | "${PSQL[@]}" -d "$SRC"
rows=$("${PSQL[@]}" -d "$SRC" -tAc "SELECT least(count(*), $BATCHES * 2000) FROM risk_decisions")
versions=$("${PSQL[@]}" -d "$SRC" -tAc "SELECT string_agg(DISTINCT threshold_version::text, ',') FROM risk_decisions")
months=$("${PSQL[@]}" -d "$SRC" -tAc "SELECT string_agg(DISTINCT (ts AT TIME ZONE 'UTC')::date::text, ',') FROM risk_decisions")

# load TABLES...: a fresh database, the batches of TABLES (ids rd ae), backend CPU seconds.
load() {
  fresh_db "$DB"
  RISKSTREAM_CONFIG=config/riskstream.toml RISKSTREAM_POSTGRES__URL="postgres://postgres@127.0.0.1:15432/$DB" \
    RISKSTREAM_POSTGRES__MIGRATE_URL="postgres://postgres@127.0.0.1:15432/$DB" "$BIN" migrate >/dev/null
  "${PSQL[@]}" -d "$DB" \
    -c "INSERT INTO threshold_sets (version, content_sha256, thresholds, changed_by)
        SELECT v, 'sink_cost ' || v, '{}', 'sink_cost' FROM unnest('{$versions}'::int[]) v" \
    -c "SELECT create_decision_partitions('{$months}'::date[])" \
    -c "${SINK_COST_VARIANT:-SELECT}" -c "CHECKPOINT" >/dev/null
  {
    echo "SELECT pg_read_file('/proc/' || pg_backend_pid() || '/stat') AS s0 \\gset"
    for ((i = 0; i < BATCHES; i++)); do
      echo "BEGIN;"
      for t in "$@"; do
        case $t in
          ids) echo "COPY decision_ids (tx_id, ts) FROM '$DIR/ids.$i' (FORMAT binary);" ;;
          rd) echo "COPY risk_decisions (${RD//$'\n'/ }) FROM '$DIR/rd.$i' (FORMAT binary);" ;;
          ae) echo "COPY attention_explanations ($AE) FROM '$DIR/ae.$i' (FORMAT binary);" ;;
        esac
      done
      echo "COMMIT;"
    done
    # utime + stime, fields 14 and 15, in clock ticks.
    echo "SELECT (split_part(pg_read_file('/proc/' || pg_backend_pid() || '/stat'), ' ', 14)::bigint
                + split_part(pg_read_file('/proc/' || pg_backend_pid() || '/stat'), ' ', 15)::bigint
                - split_part(:'s0', ' ', 14)::bigint - split_part(:'s0', ' ', 15)::bigint)::float8
                / $(getconf CLK_TCK);"
  } | "${PSQL[@]}" -d "$DB" -tA
}

echo "PostgreSQL backend CPU for $rows decisions of $SRC in batches of 2,000 (server-side binary COPY):"
IFS=';' read -ra LOADS <<<"${SINK_COST_TABLES:-ids;rd;ae;ids rd ae}"
for tables in "${LOADS[@]}"; do
  # shellcheck disable=SC2086  # a list of tables
  cpu=$(load $tables)
  awk -v t="$tables" -v c="$cpu" -v n="$rows" 'BEGIN { printf "  %-10s %6.2f s  %5.1f us a decision\n", t, c, c * 1e6 / n }'
done
