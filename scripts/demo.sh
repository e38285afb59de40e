#!/usr/bin/env bash
# `make demo`: stream a simulated day-to-day card workload through the engine
# on the local stack and show what landed in Postgres.
#
# Each run gets fresh topics and a fresh database (riskstream_demo), so the
# demo can be repeated; the engine itself is the ordinary `riskstream run`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?source scripts/env.sh first}"

N="${DEMO_TRANSACTIONS:-100000}"
BIN="$CARGO_TARGET_DIR/debug/riskstream"
RUN="demo$(date +%s)"
DB=riskstream_demo
PSQL=(psql -q -X -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 15432 -U postgres)

# Owned by riskstream_owner, so the migrator (a member) creates the schema in it.
"${PSQL[@]}" -d riskstream -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
  -c "CREATE DATABASE $DB OWNER riskstream_owner"

# Environment overrides (RISKSTREAM_<SECTION>__<KEY>) point the stock config at
# this run, with the local stack's logins (scripts/stack): the engine as
# riskstream_engine (riskstream_writer), migrations as riskstream_migrator
# (riskstream_owner), the report as riskstream_analyst_user (read-only).
PG=127.0.0.1:15432/$DB
export RISKSTREAM_POSTGRES__URL="postgres://riskstream_engine:dev-engine@$PG"
export RISKSTREAM_POSTGRES__MIGRATE_URL="postgres://riskstream_migrator:dev-migrator@$PG"
ANALYST_URL="postgres://riskstream_analyst_user:dev-analyst@$PG"
export RISKSTREAM_KAFKA__GROUP_ID="$RUN"
export RISKSTREAM_KAFKA__TRANSACTIONS_TOPIC="$RUN.transactions"
export RISKSTREAM_KAFKA__LABELS_TOPIC="$RUN.labels"
export RISKSTREAM_KAFKA__DLQ_TOPIC="$RUN.transactions.dlq"
export RISKSTREAM_SERVER__LISTEN="127.0.0.1:9464"
# A challenger scored beside the model on every transaction, never deciding:
# the float model quantized to int8 (models/fraud-attention-int8).
export RISKSTREAM_SHADOW__DIR="../models/fraud-attention-int8"

"$BIN" check-config
# `run` does not migrate (its login may not): it refuses to start until this did.
"$BIN" migrate
LOG=".stack/demo-engine.log"
mkdir -p .stack
"$BIN" run 2>"$LOG" &
ENGINE=$!
trap 'kill -TERM $ENGINE 2>/dev/null || true' EXIT

echo "Simulating $N card transactions (5 fraud scenarios, labels days later) into Kafka..."
OUT=$("$BIN" simulate --transactions "$N" --seed 42)
echo "$OUT"
PRODUCED=$(sed -n 's/^produced \([0-9]*\) transactions.*/\1/p' <<<"$OUT")

echo "Waiting for the engine to decide all $PRODUCED transactions..."
START=$(date +%s)
while :; do
  DONE=$("${PSQL[@]}" -d "$DB" -tA -c \
    "SELECT (SELECT count(*) FROM risk_decisions) + (SELECT count(*) FROM dead_letters WHERE source_topic = '$RUN.transactions')" 2>/dev/null || echo 0)
  printf '\r  %s / %s' "$DONE" "$PRODUCED"
  [[ "$DONE" -ge "$PRODUCED" ]] && break
  if ! kill -0 "$ENGINE" 2>/dev/null; then echo; echo "engine died:"; tail -20 "$LOG"; exit 1; fi
  (( $(date +%s) - START < 900 )) || { echo; echo "timed out"; tail -20 "$LOG"; exit 1; }
  sleep 1
done
ELAPSED=$(( $(date +%s) - START ))
echo
echo "Engine metrics (http://127.0.0.1:9464/metrics):"
curl -s http://127.0.0.1:9464/metrics | grep -E '^riskstream_(decisions_total|dead_letters_total|labels_total|incomplete)' || true
kill -TERM "$ENGINE"; wait "$ENGINE" || true; trap - EXIT
echo "(all decided within ${ELAPSED}s of the producer finishing; engine log: $LOG)"
# The closed days into the daily summaries the analyst views read (a timer or
# the console does this every minute in production).
"$BIN" summarise
echo
RISKSTREAM_POSTGRES__URL="$ANALYST_URL" "$BIN" report
echo
echo "What if the review threshold were 0.1, with a rule for large online payments"
echo "on busy cards, and with the int8 challenger model? (riskstream backtest:"
echo "the stored decisions re-decided, and the stream replayed through both models)"
CANDIDATE=.stack/demo-candidate.toml
sed 's/^review = .*/review = 0.1/' config/riskstream.toml > "$CANDIDATE"
cat >> "$CANDIDATE" <<'TOML'

[[rules.rule]]
name = "large-ecom-busy-card"
when = "channel == 'ecom' && amount > 300.0 && card_count_1d >= 4.0"
action = "review"
reason = "large online payment on a card used 4+ times today"
TOML
RISKSTREAM_BACKTEST_URL="$ANALYST_URL" "$BIN" backtest --candidate "$CANDIDATE" --plot .stack/demo-sweep.svg \
  --model models/fraud-attention-int8
echo
echo "The shadow model against the champion, on the same transactions (view shadow_comparison):"
"${PSQL[@]}" -d "$DB" -P footer=off -c "
  SELECT champion, shadow, sum(decisions) AS decisions, sum(frauds) AS frauds,
         sum(champion_alerts) AS champion_alerts, sum(shadow_alerts) AS shadow_alerts,
         round(sum(champion_true_alerts) / NULLIF(sum(champion_alerts), 0), 3) AS champion_precision,
         round(sum(shadow_true_alerts) / NULLIF(sum(shadow_alerts), 0), 3) AS shadow_precision,
         round(sum(champion_true_alerts) / NULLIF(sum(frauds), 0), 3) AS champion_recall,
         round(sum(shadow_true_alerts) / NULLIF(sum(frauds), 0), 3) AS shadow_recall,
         sum(disagreements) AS disagreements
    FROM shadow_comparison GROUP BY 1, 2"
cat <<MSG

Explore it yourself, read-only (password dev-analyst):
  psql -h 127.0.0.1 -p 15432 -U riskstream_analyst_user $DB
  SELECT * FROM decision_reasons WHERE decision <> 'approve' ORDER BY score DESC LIMIT 10;

Review and label decisions in the browser:
  make console     then open http://127.0.0.1:8090 and log in as alice / dev-alice
MSG
