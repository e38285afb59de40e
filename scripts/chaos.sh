#!/usr/bin/env bash
# `make chaos`: the chaos run (integration-tests/chaos.rs), not part of CI.
#
# CHAOS_TX simulated transactions with a deterministic hostile record after
# every CHAOS_HOSTILE_EVERY-th one go once through a single undisturbed
# instance (the fault-free baseline), then through a group scaled 1 -> 3 -> 1
# that takes CHAOS_KILLS `kill -9`s, a broker restart and a Postgres outage.
# The test checks decided + dead-lettered = N, no duplicate, every hostile
# record's fate, features equal to the baseline's and the longest partition
# stall, and prints a summary (also written to summary.txt beside the engine
# logs). Copy the figures into docs/RELIABILITY.md, "Chaos run".
#
# It stops and starts the shared local stack (scripts/stack): run nothing
# else against it meanwhile. The stack is brought back up however it ends.
#
# Env knobs (see integration-tests/chaos.rs for all of them):
#   CHAOS_TX             simulated transactions (default 1000000)
#   CHAOS_KILLS          kill -9s (default 20)
#   CHAOS_HOSTILE_EVERY  one hostile record after every n-th transaction (default 100)
#   CHAOS_PROFILE        cargo profile: dev (default: the build `make test` already made;
#                        dependencies are optimised) or release (a separate, long build)
#   CHAOS_LOG_DIR        where engine logs and summary.txt go (default: a new dir under /tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?source scripts/env.sh first}"

PROFILE="${CHAOS_PROFILE:-dev}"
export CHAOS_TX="${CHAOS_TX:-1000000}"
export CHAOS_KILLS="${CHAOS_KILLS:-20}"
export CHAOS_HOSTILE_EVERY="${CHAOS_HOSTILE_EVERY:-100}"
export CHAOS_LOG_DIR="${CHAOS_LOG_DIR:-/tmp/riskstream-chaos-$(date -u +%Y%m%dT%H%M%S)}"
mkdir -p "$CHAOS_LOG_DIR"

case "$PROFILE" in
  release) PROFILE_ARGS=(--release) ;;
  dev) PROFILE_ARGS=() ;;
  *) echo "chaos: CHAOS_PROFILE must be release or dev, not $PROFILE" >&2; exit 2 ;;
esac

if pgrep -f 'target/[a-z]+/deps/integration-' >/dev/null; then
  echo "chaos: another integration test binary is running; the chaos run stops the shared stack" >&2
  exit 1
fi

bash scripts/stack up
echo "chaos: CHAOS_TX=$CHAOS_TX CHAOS_KILLS=$CHAOS_KILLS CHAOS_HOSTILE_EVERY=$CHAOS_HOSTILE_EVERY profile $PROFILE, logs in $CHAOS_LOG_DIR"
started=$SECONDS
status=0
cargo test "${PROFILE_ARGS[@]}" --test integration chaos -- --ignored --nocapture --test-threads=1 \
  2>&1 | tee "$CHAOS_LOG_DIR/test.out" || status=$?
# The test restores the stack itself; make sure of it whatever happened.
bash scripts/stack up >/dev/null || status=1
echo "chaos: $( ((status == 0)) && echo passed || echo FAILED ) in $((SECONDS - started)) s; summary: $CHAOS_LOG_DIR/summary.txt"
exit "$status"
