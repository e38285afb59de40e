#!/usr/bin/env bash
# `make console`: the review console on what `make demo` stored (database
# riskstream_demo), at http://127.0.0.1:8090 until Ctrl-C. Log in as alice
# (reviewer, password dev-alice) or bob (read-only, dev-bob): the dev users of
# config/riskstream.toml.
#
# `scripts/console.sh --screenshots DIR`: start it, take the README's
# screenshots in headless Chromium (integration-tests/console.rs,
# screenshots_of_the_demo), stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CARGO_TARGET_DIR:?source scripts/env.sh first}"

BIN="$CARGO_TARGET_DIR/debug/riskstream"
DB=riskstream_demo
export RISKSTREAM_CONSOLE__URL="postgres://riskstream_reviewer_user:dev-reviewer@127.0.0.1:15432/$DB"

if [[ "$(psql -X -h 127.0.0.1 -p 15432 -U postgres -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
  echo "no demo database yet: run \`make demo\` first" >&2
  exit 1
fi
# The demo database may predate the console's migration.
RISKSTREAM_POSTGRES__MIGRATE_URL="postgres://riskstream_migrator:dev-migrator@127.0.0.1:15432/$DB" \
  "$BIN" migrate >/dev/null

if [[ "${1:-}" != --screenshots ]]; then
  echo "riskstream console on http://127.0.0.1:8090 (alice / dev-alice reviews, bob / dev-bob reads); Ctrl-C stops it"
  exec "$BIN" console
fi

OUT="${2:?usage: scripts/console.sh --screenshots DIR}"
mkdir -p "$OUT"
LOG=.stack/console.log
mkdir -p .stack
"$BIN" console 2>"$LOG" &
CONSOLE=$!
trap 'kill -TERM $CONSOLE 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8090) 2>/dev/null && break
  kill -0 "$CONSOLE" 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
RISKSTREAM_CONSOLE_URL=http://127.0.0.1:8090 RISKSTREAM_CONSOLE_USER=alice \
RISKSTREAM_CONSOLE_PASSWORD=dev-alice RISKSTREAM_SCREENSHOTS="$(realpath "$OUT")" \
  cargo test --test integration console::screenshots_of_the_demo -- --ignored --exact
echo "screenshots in $OUT"
