#!/usr/bin/env bash
# Reproduce the committed models from scratch (`make train` calls this).
#
#   1. venv .venv-train with the pinned requirements (created / updated if needed)
#   2. training data from the Rust side, unless training/.data/features64.parquet exists:
#        riskstream simulate --transactions 400000 --seed 2026 --out training/.data/transactions.parquet
#        riskstream features --in training/.data/transactions.parquet --history-len 64 \
#            --out training/.data/features64.parquet
#      (history length 64 so the study's K = 64 ablation can run; K = 5 and 16 are its
#      most recent positions)
#   3. the production fraud model (training/train_fraud.py), then verify (export_check.py)
#   4. the other models of the runtime (training/train_zoo.sh), unless FRAUD_ONLY=1
#
# The model study (every model and positional encoding, 4 prequential folds, ~40 min) is
# `make study` (training/study.py); it writes docs/MODELS.md.
#
# Environment:
#   RISKSTREAM_BIN  how to run the engine binary (default: cargo run --release --)
#   REGENERATE=1    re-run simulate + features even if the features file exists
#   SIM_TRANSACTIONS, SIM_SEED   simulator size and seed (default 400000, 2026)
#   SEED            training seed (default 42)
# Extra arguments are passed to train_fraud.py (e.g. --config transformer-alibi).
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

FEATURES="$DATA/features64.parquet"
bash training/data.sh "$FEATURES"

"$VENV/bin/python" training/train_fraud.py --data "$FEATURES" --out models/fraud-attention \
    --sim-transactions "${SIM_TRANSACTIONS:-400000}" --sim-seed "${SIM_SEED:-2026}" \
    --seed "${SEED:-42}" "$@"
"$VENV/bin/python" training/export_check.py models/fraud-attention

if [ "${FRAUD_ONLY:-0}" != 1 ] && [ -x training/train_zoo.sh ]; then
    bash training/train_zoo.sh
fi
