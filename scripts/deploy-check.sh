#!/usr/bin/env bash
# `make deploy-check` (part of `make test`): the Prometheus alert rules in
# deploy/ parse and pass their unit tests (promtool), and the Grafana
# dashboard and the rules name only metrics the engine exports (a Rust unit
# test, run with the others). promtool is built once from the Go module
# proxy into ~/.cache/riskstream/bin (a few minutes, then cached); a machine
# without Go skips the promtool part and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${RISKSTREAM_TOOLS:-$HOME/.cache/riskstream/bin}"
PROMTOOL="$BIN/promtool"
PROMETHEUS_VERSION=v0.316.0   # Prometheus 3.x as a Go module
if [[ ! -x $PROMTOOL ]]; then
  if ! command -v go >/dev/null; then
    echo "deploy-check: no Go on this machine: alert rules NOT checked by promtool" >&2
    exit 0
  fi
  echo "deploy-check: building promtool $PROMETHEUS_VERSION into $BIN (once)" >&2
  mkdir -p "$BIN"
  GOBIN="$BIN" go install "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
fi
"$PROMTOOL" check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && "$PROMTOOL" test rules alerts_test.yml)
