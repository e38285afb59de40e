#!/usr/bin/env bash
# The Handbook's experiments on data nobody tuned on (`make handbook-heldout`): a new draw of
# the book's own generator with another seed, under the same protocol.
#
#   1. fraudlib/handbook_sim.py --seed $SEED: the book's simulator (Chapter 3), re-implemented;
#      seed 0 is the public data row for row (fraudlib/check_handbook_sim.py checks that), seed
#      k > 0 shifts every seed the book uses by k * 1,000,003
#      -> training/.data/handbook-seed$SEED/raw/*.pkl
#   2. training/handbook.py and riskstream features, as `make handbook` does
#   3. training/handbook_experiments.py --data training/.data/handbook-seed$SEED: every
#      configuration of the public data's experiments, results in
#      training/results-handbook/seed$SEED/ (experiments.json, EXPERIMENTS.md)
#
# Each step is skipped when its output exists (REGENERATE=1 redoes 1 and 2); extra arguments go
# to handbook_experiments.py (e.g. --only rf-book15). Environment: SEED (default 1),
# RISKSTREAM_BIN and VENV as for training/handbook.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-train}
SEED=${SEED:-1}
DIR=training/.data/handbook-seed$SEED
if [ ! -x "$VENV/bin/python" ]; then
    echo "handbook-heldout: no $VENV (make train creates it from training/requirements.txt)" >&2
    exit 2
fi
if ! ls "$DIR"/raw/2018-*.pkl >/dev/null 2>&1 || [ "${REGENERATE:-0}" = 1 ]; then
    py=$(cd "$VENV" && pwd)/bin/python  # absolute: the module runs from training/
    (cd training && "$py" -m fraudlib.handbook_sim --seed "$SEED" --out "../$DIR/raw")
fi
if [ ! -f "$DIR/transactions.parquet" ] || [ "${REGENERATE:-0}" = 1 ]; then
    "$VENV/bin/python" training/handbook.py --raw "$DIR/raw" --out "$DIR/transactions.parquet"
fi
if [ ! -f "$DIR/features.parquet" ] || [ "${REGENERATE:-0}" = 1 ]; then
    source scripts/env.sh
    RISKSTREAM=${RISKSTREAM_BIN:-cargo run --release --}
    # shellcheck disable=SC2086  # a multi-word command by default
    $RISKSTREAM features --in "$DIR/transactions.parquet" --history-len 16 --out "$DIR/features.parquet"
fi
nice -n 19 env OMP_NUM_THREADS=1 "$VENV/bin/python" training/handbook_experiments.py \
    --data "$DIR" --out "training/results-handbook/seed$SEED" "$@"
