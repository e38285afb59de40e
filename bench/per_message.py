#!/usr/bin/env python3
"""The benchmark's naive Python consumer: bench/baseline.py one record at a time.

What a first version is usually like: poll ONE record; decode and validate it;
featurize it; score it with onnxruntime as a batch of one; INSERT its decision
and its attention explanation (plain parameterised INSERTs, no COPY); commit
that Postgres transaction together with the record's next offset; then poll
the next record. A label is one record and one transaction too, as is a record
that does not validate (a `dead_letters` row).

Everything that decides what is written is bench/baseline.py's, imported, so
the rows are the ones it writes: decoding and validation (`assemble`), the
cards' memory, the terminal windows and the 20 features + 16x6 history
(`Baseline.featurize`), the model (`Scorer`), the thresholds
(`Thresholds.decide`), each row's column values (`decision_stage`), the
transaction with dead letters, labels and offsets (`Baseline.write`), and
resuming from the offsets stored in Postgres. Only the batching differs, hence
three differences from a baseline run over the same stream:
  * ONNX Runtime computes a batch of one on another kernel path than larger
    batches: in a check on this model, 20 of 59 scores and most attention
    weights differed by float32 rounding (<= 1.5e-7 absolute, <= 4e-6
    relative). A decision differs only if its score is that close to a
    threshold. (The baseline's own batches of one, e.g. at low rates, do the same.)
  * terminal windows read the days that are closed when the record is
    processed (checked per record instead of per batch); where a day was still
    open in either run, `state_complete` is false there and the windows can
    differ, as they can between two baseline runs;
  * a card's transactions arriving out of event-time order, or two with the
    same millisecond, within one baseline batch: the baseline's windows and
    history include a batch's later-arriving one, here it is not seen yet.
    The simulator emits each card's transactions in event-time order.

Same command line as baseline.py (its own defaults for --group and --db-url),
plus --max-records N: stop consuming after N records of the transactions topic
(labels read meanwhile are not counted), so that the committed offsets of the
transactions topic then sum to exactly N; it then idles, holding no Kafka
consumer, until SIGTERM/SIGINT or --idle-exit-seconds after that last record,
so bench/run.sh can still read its CPU time and peak RSS. Prints baseline.py's
JSON summary on stdout, where a "batch" is one record.
"""

from __future__ import annotations

import argparse
import json
import sys

import polars as pl
import psycopg
from confluent_kafka import KafkaException, Message

from baseline import Baseline, Batch, arg_parser, parse_args

# Each record appends one chunk to the cards' polars frame (baseline.py appends
# one per batch and rechunks once per event-time day). Thousands of chunks
# would make every lookup walk them all (~24 ms per lookup at 3000 chunks), so
# the frame is compacted every so often: it measures per-record processing,
# not polars' chunk bookkeeping.
RECHUNK_AFTER = 32

# One decision_stage row (baseline.decision_stage), with the conversions of
# baseline.INSERT_DECISIONS, so the stored values are the same.
INSERT_DECISION = """
WITH claimed AS (  -- decision_ids: the unique tx_id the day partitions cannot have
    INSERT INTO decision_ids (tx_id, ts)
    VALUES (%(tx_id)s, timestamptz 'epoch' + %(ts_ms)s::bigint * interval '1 ms')
    ON CONFLICT (tx_id) DO NOTHING
    RETURNING tx_id, ts)
INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, currency, mcc, channel, country,
        score, decision, model_name, model_version, model_sha256, threshold_version, features,
        state_complete, source_topic, source_partition, source_offset, kafka_ts)
SELECT tx_id, ts, %(card_id)s, %(terminal_id)s,
       %(amount)s::float8::numeric(14, 2), %(currency)s, %(mcc)s::int, %(channel)s, %(country)s,
       %(score)s::real, %(decision)s, %(name)s, %(version)s, %(sha256)s, %(threshold_version)s,
       %(features)s::real[], %(state_complete)s, %(topic)s, %(source_partition)s::int,
       %(source_offset)s::bigint, timestamptz 'epoch' + %(kafka_ts_ms)s::bigint * interval '1 ms'
  FROM claimed
RETURNING source_partition, source_offset
"""

INSERT_EXPLANATION = """
INSERT INTO attention_explanations (tx_id, feature_weights, history_tx_ids, history_weights, ts)
VALUES (%(tx_id)s, %(feature_weights)s::real[], %(history_tx_ids)s::text[], %(history_weights)s::real[],
        timestamptz 'epoch' + %(ts_ms)s::bigint * interval '1 ms')
"""


class PerMessage(Baseline):
    def __init__(self, args: argparse.Namespace):
        super().__init__(args)
        self.max_records = args.max_records
        self.transactions_read = 0
        self.said_done = False

    def next_batch(self, poll_s: float) -> list[Message]:
        """One record: the baseline's run loop, a batch of one at a time."""
        m = self.consumer.poll(poll_s)
        if m is None:
            return []
        if m.error():
            print(f"kafka: {m.error()}", file=sys.stderr)
            return []
        if m.topic() == self.args.transactions_topic:
            self.transactions_read += 1
        return [m]

    def done_reading(self) -> bool:
        if self.max_records is None or self.transactions_read < self.max_records:
            return False
        if not self.said_done:
            print(f"per_message: stopped consuming after {self.transactions_read} transactions (--max-records)",
                  file=sys.stderr)
            self.said_done = True
        return True

    def featurize(self, b: Batch):
        out = super().featurize(b)
        if self.cards.frame.n_chunks() > RECHUNK_AFTER:
            self.cards.frame = self.cards.frame.rechunk()
        return out

    def insert_decisions(self, cur: psycopg.Cursor, stage: pl.DataFrame) -> set[tuple[int, int]]:
        """Row by row: the decision, and its explanation when the tx_id was not decided before."""
        fresh = set()
        for row in stage.iter_rows(named=True):
            inserted = cur.execute(INSERT_DECISION, {**row, **self.provenance}).fetchone()
            if inserted is not None:
                cur.execute(INSERT_EXPLANATION, row)
                fresh.add(tuple(inserted))
        return fresh


def positive_int(text: str) -> int:
    n = int(text)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return n


def main():
    ap = arg_parser(__doc__)
    ap.set_defaults(group="riskstream-python-naive",
                    db_url="postgres://postgres@127.0.0.1:15432/riskstream_naive")
    ap.add_argument("--max-records", type=positive_int, metavar="N",
                    help="stop consuming after N records of the transactions topic, then idle until a signal "
                         "or --idle-exit-seconds (default: no limit)")
    args = parse_args(ap)
    try:
        summary = PerMessage(args).run()
    except KafkaException as e:
        sys.exit(f"kafka: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
