#!/usr/bin/env bash
# Training data for the fraud models, produced by the engine's own simulator and featurizer
# (so training and serving cannot drift), unless the file already exists or REGENERATE=1:
#
#   riskstream simulate --transactions 400000 --seed 2026 --out training/.data/transactions.parquet
#   riskstream features --in training/.data/transactions.parquet --history-len 64 --out <FEATURES>
#
# RISKSTREAM_BIN (default `cargo run --release --`), SIM_TRANSACTIONS, SIM_SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
FEATURES=${1:-training/.data/features64.parquet}
DATA=$(dirname "$FEATURES")
mkdir -p "$DATA"
if [ ! -f "$FEATURES" ] || [ "${REGENERATE:-0}" = 1 ]; then
    source scripts/env.sh
    RISKSTREAM=${RISKSTREAM_BIN:-cargo run --release --}
    # Word splitting of $RISKSTREAM is intended: the default is a multi-word command.
    # shellcheck disable=SC2086
    $RISKSTREAM simulate --transactions "${SIM_TRANSACTIONS:-400000}" --seed "${SIM_SEED:-2026}" \
        --out "$DATA/transactions.parquet"
    # shellcheck disable=SC2086
    $RISKSTREAM features --in "$DATA/transactions.parquet" --history-len 64 --out "$FEATURES"
fi
