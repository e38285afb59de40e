#!/usr/bin/env bash
# Train, export and verify the five zoo models (training/zoo/README.md), one after the
# other, on one CPU thread each:
#   merchant-recommender, merchant-descriptor, digit-vit,
#   cheque-words-encoder + cheque-words-decoder, merchant-lm
# then check every directory with training/zoo/check.py (numpy + onnxruntime only).
#
# Needs .venv-train (see training/train.sh) and, for the recommender and the language
# model, training/.data/transactions.parquet (riskstream simulate; train.sh makes it).
#
# Environment: SEED (default 42), PYTHON (default .venv-train/bin/python),
#              DATA (default training/.data/transactions.parquet).
# Deterministic: the same seed, data file and pinned versions give the same models.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv-train/bin/python}
SEED=${SEED:-42}
DATA=${DATA:-training/.data/transactions.parquet}
LOG=$(mktemp -d)
trap 'rm -rf "$LOG"' EXIT

if [ ! -f "$DATA" ]; then
    echo "missing $DATA: run training/train.sh first (or: riskstream simulate --transactions 400000 --seed 2026 --out $DATA)" >&2
    exit 1
fi

run() {  # run <script> [args...]: prints the script's own summary line (last line of output)
    local script=$1
    shift
    local t0=$SECONDS
    echo "== $script"
    if ! (cd training/zoo && PYTHONHASHSEED=0 "../../$PY" -u "$script" --seed "$SEED" "$@") >"$LOG/out" 2>&1; then
        tail -30 "$LOG/out" >&2
        exit 1
    fi
    grep -v -i warning "$LOG/out" | grep -E "^(baseline|DIN|model|test accuracy|held-out|LM|ORT)" || true
    tail -1 "$LOG/out"
    echo "   ($((SECONDS - t0)) s wall)"
}

ABS_DATA=$(cd "$(dirname "$DATA")" && pwd)/$(basename "$DATA")
run merchant_recommender.py --data "$ABS_DATA"
run merchant_descriptor.py
run digit_vit.py
run cheque_words.py
run merchant_lm.py --data "$ABS_DATA"

echo "== check"
(cd training/zoo && "../../$PY" check.py)
