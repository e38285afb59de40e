#!/usr/bin/env bash
# What rules and a shadow model cost the stream (issue 11): the same build on
# the same pre-loaded stream, three ways, in one run of bench/ab.sh:
#   plain   the stock config
#   rules   the stock config plus three CEL rules (a block list, two conditions)
#   shadow  the stock config plus [shadow] = models/fraud-attention-int8
# Writes bench/.out/policy.md, which `make bench` (bench/report.py) puts into
# docs/BENCHMARKS.md.
#
#   bench/policy.sh [N]        N transactions (default 300000)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?source scripts/env.sh first}"
N="${1:-300000}"
BIN="${BENCH_BIN:-$CARGO_TARGET_DIR/release/riskstream}"
[[ -n ${BENCH_BIN:-} ]] || cargo build --release --bin riskstream >&2
OUT=bench/.out
mkdir -p "$OUT"
# A private copy: a rebuild during the run must not swap the binary under it.
cp "$BIN" "$OUT/policy-riskstream"
RULES_DIR=$(mktemp -d)
trap 'rm -rf "$RULES_DIR" "$OUT/policy-riskstream"' EXIT
mkdir -p "$RULES_DIR/config"
cp config/riskstream.toml "$RULES_DIR/config/"
cat >>"$RULES_DIR/config/riskstream.toml" <<'TOML'

[rules.lists]
blocked_cards = ["card-000001", "card-000002", "card-000003"]

[[rules.rule]]
name = "blocked-card"
when = "card_id in lists.blocked_cards"
action = "decline"

[[rules.rule]]
name = "large-ecom-burst"
when = "channel == 'ecom' && amount > 1000.0 && card_count_1d >= 5.0"
action = "review"

[[rules.rule]]
name = "night-atm-big"
when = "channel == 'atm' && hour < 5 && amount > 500.0"
action = "review"
TOML
B="$PWD/$OUT/policy-riskstream"
RESULT=$(bash bench/ab.sh "$N" plain="$B:$PWD" rules="$B:$RULES_DIR" \
  shadow="$B:$PWD:RISKSTREAM_SHADOW__DIR=$PWD/models/fraud-attention-int8")
echo "$RESULT"
{
  echo "Run: \`bench/policy.sh $N\` at commit \`$(git describe --always --dirty)\`, $(date -u '+%Y-%m-%d %H:%M') UTC."
  echo
  echo "| config | tx | wall s | engine CPU s | tx/s | CPU ms / 1k tx |"
  echo "|---|---|---|---|---|---|"
  awk '/ tx in / {
    label=$1; sub(":", "", label); n=$2; wall=$5; cpu=$8; tps=$11
    printf "| %s | %d | %.1f | %.1f | %d | %.1f |\n", label, n, wall, cpu, tps, cpu * 1e6 / n
  }' <<<"$RESULT"
} >"$OUT/policy.md"
cat "$OUT/policy.md"
