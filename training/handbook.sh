#!/usr/bin/env bash
# The Fraud Detection Handbook's public data as a benchmark (`make handbook`), end to end:
#
#   1. training/handbook.py: the book's daily pickles (training/.data/handbook/raw/*.pkl, a
#      copy of github.com/Fraud-Detection-Handbook/simulated-data-raw data/) -> the event
#      schema, training/.data/handbook/transactions.parquet
#   2. riskstream features --history-len 64 -> training/.data/handbook/features.parquet
#      (rows the stream would reject are set aside in features.parquet.rejected.jsonl)
#   3. training/study.py on it, on the book's own test weeks (starting 2018-08-08, -15, -22,
#      -29: --test-start 2018-08-29 is fold 0), results in training/results-handbook/*.json
#      and its table in training/results-handbook/MODELS.md; the simulator's results
#      (training/results/, docs/MODELS.md) are not touched
#
# Nothing is downloaded: without the pickles it stops and says where to put them. Steps 1 and
# 2 are skipped when their output exists (REGENERATE=1 redoes them); the study resumes, as
# `make study` does. Extra arguments go to study.py (e.g. --only gradient-boosting,feed-forward
# or --rerun). The book's Chapter 3 reproduction is a separate check:
# `.venv-train/bin/python training/fraudlib/check_handbook.py`.
#
# Environment:
#   RISKSTREAM_BIN  how to run the engine binary (default: cargo run --release --)
#   VENV            the training environment (default .venv-train; training/train.sh makes it)
#   HISTORY_LEN     history length of the features (default 64, the study's largest K)
#   REGENERATE=1    redo the conversion and the features even if they exist
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-train}
DIR=training/.data/handbook
RAW=$DIR/raw
TX=$DIR/transactions.parquet
FEATURES=$DIR/features.parquet
# The book's model selection (Chapter 5) tests on the 4 weeks starting 2018-08-08 .. 08-29.
TEST_START=2018-08-29

if ! ls "$RAW"/2018-*.pkl >/dev/null 2>&1; then
    echo "handbook: no daily pickles in $RAW; copy there the data/*.pkl of" \
         "github.com/Fraud-Detection-Handbook/simulated-data-raw (183 files)" >&2
    exit 2
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "handbook: no $VENV (make train creates it from training/requirements.txt)" >&2
    exit 2
fi

if [ ! -f "$TX" ] || [ "${REGENERATE:-0}" = 1 ]; then
    "$VENV/bin/python" training/handbook.py --raw "$RAW" --out "$TX"
fi

if [ ! -f "$FEATURES" ] || [ "${REGENERATE:-0}" = 1 ]; then
    source scripts/env.sh
    RISKSTREAM=${RISKSTREAM_BIN:-cargo run --release --}
    # Word splitting of $RISKSTREAM is intended: the default is a multi-word command.
    # shellcheck disable=SC2086
    $RISKSTREAM features --in "$TX" --history-len "${HISTORY_LEN:-64}" --out "$FEATURES"
fi

"$VENV/bin/python" training/study.py --data "$FEATURES" --test-start "$TEST_START" \
    --results training/results-handbook --scores "$DIR/study" --report-dir training/results-handbook "$@"
