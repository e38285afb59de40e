#!/usr/bin/env bash
# Reproduce models/fraud-attention from scratch (`make train` calls this).
#
#   1. venv .venv-train with the pinned requirements (created / updated if needed)
#   2. training data from the Rust side, unless training/.data/features.parquet exists:
#        riskstream simulate --transactions 400000 --seed 2026 --out training/.data/transactions.parquet
#        riskstream features --in training/.data/transactions.parquet --out training/.data/features.parquet
#   3. train + export + golden files (training/train_fraud.py), then verify (export_check.py)
#
# Environment:
#   RISKSTREAM_BIN  how to run the engine binary (default: cargo run --release --)
#   REGENERATE=1    re-run simulate + features even if features.parquet exists
#   SIM_TRANSACTIONS, SIM_SEED   simulator size and seed (default 400000, 2026)
#   SYNTHETIC=1     train on training/synthetic.py data instead (pipeline testing only)
#   SEED            training seed (default 42)
# Extra arguments are passed to train_fraud.py (e.g. --epochs 10).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-train}
DATA=training/.data
mkdir -p "$DATA"

if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# Reinstall only when requirements.txt changed (the torch wheel is ~3 GB).
if ! cmp -s training/requirements.txt "$VENV/.requirements.installed"; then
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r training/requirements.txt
    "$VENV/bin/pip" uninstall -q -y triton 2>/dev/null || true  # GPU-only, unused here
    cp training/requirements.txt "$VENV/.requirements.installed"
fi

if [ "${SYNTHETIC:-0}" = 1 ]; then
    "$VENV/bin/python" training/synthetic.py --out "$DATA/synthetic.parquet"
    FEATURES="$DATA/synthetic.parquet"
else
    FEATURES="$DATA/features.parquet"
    if [ ! -f "$FEATURES" ] || [ "${REGENERATE:-0}" = 1 ]; then
        RISKSTREAM=${RISKSTREAM_BIN:-cargo run --release --}
        # Word splitting of $RISKSTREAM is intended: the default is a multi-word command.
        # shellcheck disable=SC2086
        $RISKSTREAM simulate --transactions "${SIM_TRANSACTIONS:-400000}" --seed "${SIM_SEED:-2026}" \
            --out "$DATA/transactions.parquet"
        # shellcheck disable=SC2086
        $RISKSTREAM features --in "$DATA/transactions.parquet" --out "$FEATURES"
    fi
fi

"$VENV/bin/python" training/train_fraud.py --data "$FEATURES" --out models/fraud-attention \
    --seed "${SEED:-42}" "$@"
"$VENV/bin/python" training/export_check.py models/fraud-attention
