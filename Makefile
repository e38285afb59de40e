# riskstream: what CI runs is what a person runs.
#
#   make demo          set everything up, stream a simulated workload through the engine, show Postgres
#   make console       the review console on the demo's decisions: http://127.0.0.1:8090 (alice / dev-alice)
#   make screenshots   docs/img/console-*.png from the demo's decisions (headless Chromium)
#   make test          set everything up; fmt, clippy, then every test (unit + end-to-end on real Kafka/Postgres)
#   make bench         throughput/latency benchmark vs. the Python baseline -> docs/BENCHMARKS.md
#   make bench-sql     every README query on SQL_ROWS (10M) synthetic decisions: times and plans -> docs/BENCHMARKS.md (~10 GB, ~12 min)
#   make train         retrain every committed model from the simulator (needs PyTorch; not used by tests)
#   make study         the fraud model study: every model/positional encoding, 4 folds -> docs/MODELS.md (~40 min)
#   make handbook      the study on the Fraud Detection Handbook's public data -> training/results-handbook (needs its pickles; docs/HANDBOOK.md)
#   make handbook-check  the book's Chapter 3 table reproduced to ±0.005 by our protocol and metric code, and its
#                        generator re-implemented (fraudlib/handbook_sim.py) reproducing its data row for row (skip without the pickles)
#   make handbook-heldout  the Handbook experiments on a new draw of its generator (SEED=1): data nobody tuned on
#   make evaluate      handbook-protocol metrics of MODEL on DATA, FOLDS weekly test windows (release build)
#   make fuzz          AFL++ on the wire decoders for FUZZ_SECONDS (default 1800), then minimize fuzz/corpus
#   make chaos         CHAOS_TX (1M) tx + 1% hostile records through 20 kill -9s, outages, scale 1->3->1 (~25 min; stops the stack)
#   make lint          rustfmt --check and clippy -D warnings
#   make deploy-check  the Prometheus alert rules in deploy/ parse and pass their tests (promtool)
#   make setup         install system packages, Kafka jars, .venv with onnxruntime (idempotent)
#   make stack-up      start local Kafka (127.0.0.1:19092) + PostgreSQL (127.0.0.1:15432)
#   make stack-status  show both; fails if either is down
#   make stack-down    stop both, keep data
#   make stack-reset   stop both and delete their data

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

# Every cargo/test command runs with the ONNX Runtime path, the persistent
# CARGO_TARGET_DIR and the stack's addresses from scripts/env.sh.
ENV := source scripts/env.sh &&

.PHONY: help setup stack-up stack-down stack-status stack-reset build demo console screenshots bench-sql test unit-test integration-test model-check deploy-check lint bench train study handbook handbook-check handbook-heldout evaluate fuzz chaos

help:
	@sed -n 's/^#   make /make /p' $(firstword $(MAKEFILE_LIST))

setup:
	bash scripts/setup.sh

stack-up: setup
	bash scripts/stack up

stack-down:
	bash scripts/stack down

stack-status:
	bash scripts/stack status

stack-reset:
	bash scripts/stack reset

build: setup
	$(ENV) cargo build --bins --tests

demo: build stack-up
	$(ENV) bash scripts/demo.sh

console: build stack-up
	$(ENV) bash scripts/console.sh

screenshots: build stack-up
	$(ENV) bash scripts/console.sh --screenshots docs/img

test: build stack-up
	$(ENV) cargo fmt --all -- --check
	$(ENV) cargo clippy --all-targets -- -D warnings
	$(ENV) $(MAKE) --no-print-directory model-check deploy-check unit-test integration-test

unit-test:
	cargo test --lib --bins

integration-test:
	cargo test --test integration -- --test-threads=1

# The committed models still match their manifests, golden files and test vectors (ONNX Runtime from Python, no PyTorch).
model-check:
	.venv/bin/python training/export_check.py models/fraud-attention
	.venv/bin/python training/export_check.py models/fraud-attention-int8
	.venv/bin/python training/fraudlib/check_metrics.py
	.venv/bin/python training/zoo/check.py

deploy-check:
	bash scripts/deploy-check.sh

lint: setup
	$(ENV) cargo fmt --all -- --check
	$(ENV) cargo clippy --all-targets -- -D warnings

bench: setup stack-up
	$(ENV) bash bench/run.sh

SQL_ROWS ?= 10000000
bench-sql: build stack-up
	$(ENV) .venv/bin/python bench/sql_scale.py --rows $(SQL_ROWS)

train:
	bash training/train.sh

# Resumes: configurations with a result in training/results/ are skipped (RERUN=1 reruns all).
study:
	bash training/data.sh training/.data/features64.parquet
	.venv-train/bin/python training/study.py --data training/.data/features64.parquet $(if $(RERUN),--rerun)

# Not part of `make test`: the Handbook's data is not in the repository
# (docs/HANDBOOK.md says where to put it); results are committed.
handbook:
	$(ENV) bash training/handbook.sh

handbook-check:
	.venv-train/bin/python training/fraudlib/check_handbook.py
	cd training && ../.venv-train/bin/python -m fraudlib.check_handbook_sim

# The experiments on a held-out draw of the book's generator (SEED=1 by default).
handbook-heldout:
	$(ENV) bash training/handbook_heldout.sh

# AUC ROC, average precision and card precision@100 of a model on a labelled
# transaction file (Fraud Detection Handbook protocol),
# for example `make evaluate MODEL=models/other DATA=tx.parquet FOLDS=1`.
MODEL ?= models/fraud-attention
DATA ?= training/.data/transactions.parquet
FOLDS ?= 4
evaluate: setup
	$(ENV) cargo run --release -- evaluate --model $(MODEL) --data $(DATA) --folds $(FOLDS)

# Not part of `make test`: it runs for half an hour. Own crate and target dir (fuzz/), so no $(ENV).
fuzz:
	bash scripts/fuzz.sh

# Not part of `make test`: long, and it stops and starts the shared stack.
# Results go to docs/RELIABILITY.md ("Chaos run"), with the command used.
chaos: setup stack-up
	$(ENV) bash scripts/chaos.sh
