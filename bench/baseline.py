#!/usr/bin/env python3
"""The benchmark's Python baseline: the riskstream pipeline as a Python scoring script.

This is what a competent data engineer would write instead of the Rust engine:
one process, one thread of control, the usual libraries (confluent-kafka,
polars, onnxruntime, psycopg), and the engine's contract:

  * reads the transactions and labels topics with enable.auto.commit=false, in
    micro-batches of up to `pipeline.batch_max_rows` records or
    `pipeline.batch_max_wait_ms` after the first one (from the engine's config);
  * decodes and validates each record like src/event.rs; bad ones become
    `dead_letters` rows;
  * computes the same 20 features and 16x6 history sequence as
    src/features/compute.rs: card windows with polars over the batch plus the
    cards' remembered transactions, terminal windows from Postgres with the
    same day-based definition (src/features/terminal.rs);
  * scores with onnxruntime (same model file, one intra-op thread) and decides
    with the same thresholds;
  * writes decisions, attention explanations, dead letters, labels and the
    partitions' next offsets in ONE Postgres transaction per batch, and on
    partition assignment resumes from the offsets stored there: exactly once,
    like the engine.

Deliberate simplifications (also listed in docs/BENCHMARKS.md):
  * Watermarks: the engine waits up to `pipeline.state_wait_ms` for every
    partition to close the days a batch's terminal windows read. This script
    checks the same watermark once per batch that needs new days, loads what is
    closed and scores without waiting (`state_complete` records whether it was
    all closed).
  * Card history: for an event that arrives after a later-timestamped event
    of the same card in the same batch, the engine's history sequence leaves the
    later-arriving one out; here it is included. The simulator emits each
    card's transactions in event-time order, so benchmark streams do not hit this.
  * One instance only: no epoch fencing of partitions taken over by another
    instance, and dead letters are not also published to the Kafka DLQ topic.

It never shares a database with the engine: point --db-url at its own one; an
empty database gets the schema from migrations/*.sql. It stops on SIGTERM or
SIGINT (after committing the batch in hand) or after --idle-exit-seconds
without records, and prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import signal
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

ROOT = Path(__file__).resolve().parent.parent

FEATURE_NAMES = [
    "amount_log", "card_count_1d", "card_avg_amount_1d", "card_count_7d", "card_avg_amount_7d",
    "card_count_30d", "card_avg_amount_30d", "terminal_count_1d", "terminal_risk_1d",
    "terminal_count_7d", "terminal_risk_7d", "terminal_count_30d", "terminal_risk_30d",
    "is_night", "is_weekend", "is_ecom", "amount_ratio_30d", "card_count_10m",
    "secs_since_prev_log", "country_change_1h",
]
HISTORY_LEN = 16
HISTORY_FIELDS = 6
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
CARD_WINDOW_DAYS = (1, 7, 30)
TERMINAL_WINDOW_DAYS = (1, 7, 30)
# A card's memory: the longest window plus a day of slack (src/features/card.rs).
CARD_RETENTION_MS = (CARD_WINDOW_DAYS[-1] + 1) * MS_PER_DAY
NO_PREVIOUS_SECS = 30.0 * 86_400.0  # "time since previous" for a card's first transaction
MAX_RECORD_BYTES = 64 * 1024
CHANNELS = ("pos", "ecom", "atm")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
# Watermark sentinels, as the engine's i64::MIN / i64::MAX.
TS_MIN, TS_MAX = -(2**63), 2**63 - 1

CARD_SCHEMA = {
    "card": pl.String, "seq": pl.Int64, "ts": pl.Int64, "cents": pl.Int64, "amount": pl.Float64,
    "terminal": pl.String, "country": pl.String, "ecom": pl.Boolean, "tx_id": pl.String,
}
TERMINAL_COUNTS_SCHEMA = {"terminal": pl.String, "cday": pl.Int64, "n": pl.Int64}
TERMINAL_FRAUDS_SCHEMA = {"terminal": pl.String, "tx_day": pl.Int64, "reported_day": pl.Int64}


# --------------------------------------------------------------------- decoding


class Invalid(ValueError):
    """A record that does not decode or validate; the message is the dead-letter reason."""


def _object(payload: bytes | None) -> dict:
    if not payload:
        raise Invalid("empty value")
    if len(payload) > MAX_RECORD_BYTES:
        raise Invalid(f"value too large: {len(payload)} bytes (limit {MAX_RECORD_BYTES})")
    try:
        obj = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:
        raise Invalid(f"invalid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise Invalid("invalid JSON: expected an object")
    return obj


def _required(obj: dict, name: str):
    if obj.get(name) is None:
        raise Invalid(f"invalid JSON: missing field `{name}`")
    return obj[name]


def _ident(obj: dict, name: str) -> str:
    v = _required(obj, name)
    if not isinstance(v, str):
        raise Invalid(f"invalid JSON: `{name}` must be a string")
    if not v.strip():
        raise Invalid(f"invalid field `{name}`: must not be empty")
    if len(v.encode()) > 128:
        raise Invalid(f"invalid field `{name}`: longer than 128 bytes")
    return v


def _timestamp_ms(obj: dict, name: str) -> int:
    v = _required(obj, name)
    try:
        t = dt.datetime.fromisoformat(v) if isinstance(v, str) else None
    except ValueError:
        t = None
    if t is None or t.tzinfo is None:
        raise Invalid(f"invalid JSON: `{name}` must be an RFC 3339 timestamp with an offset")
    return (t - EPOCH) // dt.timedelta(milliseconds=1)


def _optional_code(obj: dict, name: str, length: int, what: str) -> str | None:
    v = obj.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise Invalid(f"invalid JSON: `{name}` must be a string")
    if len(v) != length or not (v.isascii() and v.isalpha() and v.isupper()):
        raise Invalid(f"invalid field `{name}`: not an {what} code: {v!r}")
    return v


def decode_transaction(payload: bytes | None) -> dict:
    """The checks of `Transaction::decode` in src/event.rs."""
    obj = _object(payload)
    tx = {
        "tx_id": _ident(obj, "tx_id"),
        "ts": _timestamp_ms(obj, "ts"),
        "card": _ident(obj, "card_id"),
        "terminal": _ident(obj, "terminal_id"),
    }
    amount = _required(obj, "amount")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise Invalid("invalid JSON: `amount` must be a number")
    amount = float(amount)
    if not math.isfinite(amount) or amount <= 0:
        raise Invalid(f"invalid field `amount`: must be a positive number, got {amount}")
    if amount > 1e9:
        raise Invalid(f"invalid field `amount`: implausibly large: {amount}")
    mcc = obj.get("mcc")
    if mcc is not None and (isinstance(mcc, bool) or not isinstance(mcc, int)):
        raise Invalid("invalid JSON: `mcc` must be an integer")
    if mcc is not None and not 0 <= mcc <= 9999:
        raise Invalid(f"invalid field `mcc`: not a 4-digit merchant category code: {mcc}")
    channel = obj.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise Invalid(f"invalid JSON: unknown `channel` {channel!r}")
    tx.update(
        amount=amount,
        currency=_optional_code(obj, "currency", 3, "ISO 4217"),
        mcc=mcc,
        channel=channel,
        country=_optional_code(obj, "country", 2, "ISO 3166 alpha-2"),
    )
    return tx


def decode_label(payload: bytes | None) -> dict:
    obj = _object(payload)
    is_fraud = _required(obj, "is_fraud")
    if not isinstance(is_fraud, bool):
        raise Invalid("invalid JSON: `is_fraud` must be a boolean")
    return {"tx_id": _ident(obj, "tx_id"), "is_fraud": is_fraud, "reported_at": _timestamp_ms(obj, "reported_at")}


def ms_to_datetime(ms: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms)


@dataclass
class Batch:
    """A run of records, decoded, with every partition's new position."""

    txs: list[dict] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)
    dead_letters: list[tuple] = field(default_factory=list)
    # (topic, partition) -> [next offset, newest event time in ms or None]
    positions: dict[tuple[str, int], list] = field(default_factory=dict)


def assemble(messages, labels_topic: str) -> Batch:
    b = Batch()
    for m in messages:
        topic, partition, offset = m.topic(), m.partition(), m.offset()
        pos = b.positions.setdefault((topic, partition), [offset + 1, None])
        pos[0] = max(pos[0], offset + 1)
        try:
            if topic == labels_topic:
                label = decode_label(m.value())
                label.update(partition=partition, offset=offset)
                b.labels.append(label)
                event_ms = label["reported_at"]
            else:
                tx = decode_transaction(m.value())
                _, kafka_ts = m.timestamp()
                tx.update(partition=partition, offset=offset, kafka_ts=kafka_ts if kafka_ts > 0 else None,
                          key=m.key(), payload=m.value())
                b.txs.append(tx)
                event_ms = tx["ts"]
        except Invalid as e:
            b.dead_letters.append((topic, partition, offset, str(e), m.key(), m.value()))
            continue
        pos[1] = event_ms if pos[1] is None else max(pos[1], event_ms)
    return b


# ------------------------------------------------------------------- card state


class CardState:
    """Every card's recent transactions, as one polars frame.

    Rows keep their arrival order in `seq`; sorting by (card, ts, seq) gives
    each card's history exactly as the engine's per-card deque holds it.
    """

    def __init__(self):
        self.clear()

    def clear(self):
        self.frame = pl.DataFrame(schema=CARD_SCHEMA)
        self.known: set[str] = set()
        self.next_seq = 0
        self.pruned_day: int | None = None

    def missing(self, cards: list[str]) -> list[str]:
        return [c for c in cards if c not in self.known]

    def load(self, cards: list[str], rows: pl.DataFrame):
        """Install the memory of `cards` read from storage (`rows`, sorted by time)."""
        self.remember(rows)
        self.known.update(cards)

    def remember(self, rows: pl.DataFrame):
        """Append `rows` (CARD_SCHEMA without seq), in order."""
        seq = pl.int_range(self.next_seq, self.next_seq + rows.height, dtype=pl.Int64)
        self.frame = pl.concat([self.frame, rows.with_columns(seq=seq).select(*CARD_SCHEMA)], rechunk=False)
        self.next_seq += rows.height

    def rows_for(self, cards: pl.Series) -> pl.DataFrame:
        return self.frame.filter(pl.col("card").is_in(cards.implode()))

    def forget_old(self, day: int):
        """Once per event-time day, drop what no window can reach; keep the last
        HISTORY_LEN of each card whatever their age, as the engine does."""
        if self.pruned_day is not None and day <= self.pruned_day:
            return
        self.pruned_day = day
        self.frame = (
            self.frame.sort("card", "ts", "seq")
            .filter(
                (pl.col("ts") >= pl.col("ts").max().over("card") - CARD_RETENTION_MS)
                | (pl.int_range(pl.len()).reverse().over("card") < HISTORY_LEN)
            )
            .rechunk()
        )


# --------------------------------------------------------------- terminal state


class TerminalStats:
    """Per-terminal transactions per closed day and the frauds known on them
    (src/features/terminal.rs), as polars frames."""

    def __init__(self):
        self.counts = pl.DataFrame(schema=TERMINAL_COUNTS_SCHEMA)
        self.frauds = pl.DataFrame(schema=TERMINAL_FRAUDS_SCHEMA)
        self.counts_range: tuple[int, int] | None = None
        self.frauds_range: tuple[int, int, int] | None = None

    def covered(self, lo: int, hi: int, max_day: int) -> bool:
        c, f = self.counts_range, self.frauds_range
        counts = c is not None and c[0] <= lo and c[1] >= hi
        return counts and f is not None and f[0] <= lo and f[1] >= hi and f[2] >= max_day

    def add_closed_days(self, lo: int, hi: int, rows: pl.DataFrame):
        self.counts = pl.concat([self.counts, rows])
        c = self.counts_range
        self.counts_range = (lo, hi) if c is None else (min(c[0], lo), max(c[1], hi))

    def set_frauds(self, lo: int, hi: int, reported_before: int, rows: pl.DataFrame):
        # As the engine: a label reported before its transaction's day is ignored.
        self.frauds = rows.filter(pl.col("reported_day") >= pl.col("tx_day"))
        self.frauds_range = (lo, hi, reported_before)

    def evict_before(self, day: int):
        self.counts = self.counts.filter(pl.col("cday") >= day)
        if self.counts_range is not None:
            self.counts_range = (max(self.counts_range[0], day), self.counts_range[1])

    def windows(self, batch: pl.DataFrame, delay: int) -> np.ndarray:
        """(count, risk) per terminal window for each row of `batch` (row, terminal,
        day): the days [day - delay - w, day - delay), and the frauds among them
        reported before `day`. Returns rows x 6, in FEATURE_NAMES order."""
        start = pl.col("day") - delay - TERMINAL_WINDOW_DAYS[-1]
        end = pl.col("day") - delay
        counts = (
            batch.join(self.counts, on="terminal")
            .filter(pl.col("cday") >= start, pl.col("cday") < end)
            .group_by("row")
            .agg([pl.col("n").filter(pl.col("cday") >= end - w).sum().alias(f"n{w}") for w in TERMINAL_WINDOW_DAYS])
        )
        frauds = (
            batch.join(self.frauds, on="terminal")
            .filter(pl.col("tx_day") >= start, pl.col("tx_day") < end, pl.col("reported_day") < pl.col("day"))
            .group_by("row")
            .agg([(pl.col("tx_day") >= end - w).sum().cast(pl.Int64).alias(f"bad{w}") for w in TERMINAL_WINDOW_DAYS])
        )
        joined = (
            batch.select("row").join(counts, on="row", how="left").join(frauds, on="row", how="left")
            .fill_null(0).sort("row")
        )
        out = np.zeros((batch.height, 2 * len(TERMINAL_WINDOW_DAYS)), np.float32)
        for i, w in enumerate(TERMINAL_WINDOW_DAYS):
            n = joined[f"n{w}"].to_numpy().astype(np.float32)
            bad = joined[f"bad{w}"].to_numpy().astype(np.float32)
            out[:, 2 * i] = n
            out[:, 2 * i + 1] = np.divide(bad, n, out=np.zeros_like(n), where=n > 0)
        return out


# ------------------------------------------------------------------ featurizing


@dataclass
class Features:
    features: np.ndarray  # rows x 20
    history: np.ndarray  # rows x 16 x 6
    history_mask: np.ndarray  # rows x 16
    history_tx_ids: pl.Series  # rows of up to 16 tx_ids, most recent first


def featurize(txs: pl.DataFrame, cards: CardState, terminals: TerminalStats, delay: int) -> Features:
    """src/features/compute.rs in polars and numpy; rows follow `txs`. Then the
    batch joins the cards' memory."""
    n = txs.height
    batch_rows = txs.select(
        "card", "ts", "amount", "terminal", "country", "tx_id",
        cents=(pl.col("amount") * 100 + 0.5).floor().cast(pl.Int64),  # round half away from zero, as Rust
        ecom=(pl.col("channel") == "ecom").fill_null(False),
    )
    seq = pl.int_range(cards.next_seq, cards.next_seq + n, dtype=pl.Int64)
    frame = (
        pl.concat([
            cards.rows_for(txs["card"].unique()).with_columns(row=pl.lit(-1, pl.Int64)),
            batch_rows.with_columns(seq=seq, row=pl.int_range(n, dtype=pl.Int64)).select(*CARD_SCHEMA, "row"),
        ])
        # Each card's rows in time order, arrival order among equal times: a
        # row's predecessors in its card group are its history.
        .sort("card", "ts", "seq")
        .with_columns(
            t=pl.col("ts").cast(pl.Datetime("ms")),
            one=pl.lit(1, pl.Int64),
            pos=pl.int_range(pl.len()).over("card"),
            term_code=pl.col("terminal").rank("dense"),
            country_code=pl.col("country").rank("dense").fill_null(0),
        )
    )

    def rolling(column: str, window: str) -> pl.Expr:
        # Closed on both ends: the current transaction counts (ClosedWindow::Both).
        return pl.col(column).rolling_sum_by("t", window, closed="both", min_samples=1).over("card")

    frame = frame.with_columns(
        *(rolling("one", f"{d}d").alias(f"n{d}") for d in CARD_WINDOW_DAYS),
        *(rolling("cents", f"{d}d").alias(f"s{d}") for d in CARD_WINDOW_DAYS),
        burst=rolling("one", "10m"),
    )

    col = {c: frame[c].to_numpy() for c in ("ts", "amount", "pos", "term_code", "country_code", "ecom", "row")}
    at = np.flatnonzero(col["row"] >= 0)
    at = at[np.argsort(col["row"][at])]  # sorted-frame position of each batch row, in batch order
    ts = col["ts"][at]

    f = np.zeros((n, len(FEATURE_NAMES)), np.float32)
    f[:, 0] = np.log1p(col["amount"][at])
    for i, d in enumerate(CARD_WINDOW_DAYS):
        count = frame[f"n{d}"].to_numpy()[at]
        cents = frame[f"s{d}"].to_numpy()[at]
        f[:, 1 + 2 * i] = count
        f[:, 2 + 2 * i] = np.divide(cents, count, out=np.zeros(n), where=count > 0) / 100.0
    day = ts // MS_PER_DAY
    f[:, 7:13] = terminals.windows(
        pl.DataFrame({"row": np.arange(n), "terminal": txs["terminal"], "day": day}), delay
    )
    f[:, 13] = (ts % MS_PER_DAY) < 6 * MS_PER_HOUR
    f[:, 14] = (day + 3) % 7 >= 5  # 1970-01-01 was a Thursday; Saturday and Sunday
    f[:, 15] = col["ecom"][at]
    avg_30d = f[:, 6].astype(np.float64)
    f[:, 16] = np.divide(col["amount"][at], avg_30d, out=np.ones(n), where=avg_30d > 0)
    f[:, 17] = frame["burst"].to_numpy()[at]

    # History: position k-1 is the row k places earlier in the card's group.
    k = np.arange(1, HISTORY_LEN + 1)
    valid = col["pos"][at][:, None] >= k[None, :]
    past = np.where(valid, at[:, None] - k[None, :], 0)  # padding reads row 0, then is zeroed
    gap_ms = np.where(valid, ts[:, None] - col["ts"][past], 0)
    history = np.zeros((n, HISTORY_LEN, HISTORY_FIELDS), np.float32)
    history[..., 0] = np.log1p(col["amount"][past])
    history[..., 1] = np.log1p(gap_ms / 1000.0)
    history[..., 2] = col["term_code"][past] == col["term_code"][at][:, None]
    history[..., 3] = col["country_code"][past] == col["country_code"][at][:, None]
    history[..., 4] = col["ecom"][past]
    history[..., 5] = (col["ts"][past] % MS_PER_DAY) / MS_PER_DAY
    history[~valid] = 0.0
    has_prev = valid[:, 0]
    f[:, 18] = np.log1p(np.where(has_prev, gap_ms[:, 0] / 1000.0, NO_PREVIOUS_SECS))
    prev_country, country = col["country_code"][past[:, 0]], col["country_code"][at]
    f[:, 19] = has_prev & (gap_ms[:, 0] <= MS_PER_HOUR) & (prev_country > 0) & (country > 0) & (prev_country != country)

    # The same positions' tx_ids, padding as nulls, which then drop out of each list.
    padding = pl.repeat(None, past.size, dtype=pl.String, eager=True)
    ids = frame["tx_id"].gather(past.ravel()).zip_with(pl.Series(valid.ravel()), padding)
    history_tx_ids = ids.reshape((n, HISTORY_LEN)).arr.to_list().list.drop_nulls()
    cards.remember(batch_rows)
    return Features(f, history, valid.astype(np.float32), history_tx_ids)


# ---------------------------------------------------------------------- scoring


class Scorer:
    """The model directory's ONNX file, checked against its manifest."""

    def __init__(self, model_dir: Path, max_batch: int):
        self.manifest = json.loads((model_dir / "manifest.json").read_text())
        model = (model_dir / "model.onnx").read_bytes()
        digest = hashlib.sha256(model).hexdigest()
        if digest != self.manifest["sha256"].lower():
            sys.exit(f"{model_dir}/model.onnx: sha256 is {digest}, manifest says {self.manifest['sha256']}")
        if self.manifest.get("feature_names") != FEATURE_NAMES:
            sys.exit(f"{model_dir}: feature_names differ from this featurizer's")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The engine's session options (src/onnx/mod.rs, DISABLED_OPTIMIZERS): the
        # comparison is of the pipelines, not of ONNX Runtime settings.
        options.add_session_config_entry("optimization.disable_specified_optimizers", "SkipLayerNormFusion")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.max_batch = max_batch

    def score(self, x: Features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """score[B], history_attention[B,16], feature_attention[B,20], in chunks of max_batch rows."""
        parts = []
        for lo in range(0, len(x.features), self.max_batch):
            hi = lo + self.max_batch
            parts.append(self.session.run(["score", "history_attention", "feature_attention"], {
                "features": x.features[lo:hi], "history": x.history[lo:hi], "history_mask": x.history_mask[lo:hi],
            }))
        return tuple(np.concatenate(p) for p in zip(*parts))


class Thresholds:
    """config [thresholds]: a score at or above `decline` declines, at or above `review` reviews."""

    def __init__(self, cfg: dict):
        self.default = (np.float32(cfg["review"]), np.float32(cfg["decline"]))
        self.by_channel = {
            c: (np.float32(t["review"]), np.float32(t["decline"])) for c, t in cfg.get("channel", {}).items()
        }
        self.canonical = json.dumps(
            {"review": cfg["review"], "decline": cfg["decline"], "channel": cfg.get("channel", {})},
            sort_keys=True, separators=(",", ":"),
        )
        self.changed_by = cfg["changed_by"]

    def decide(self, scores: np.ndarray, channels: list[str | None]) -> np.ndarray:
        per_row = np.array([self.by_channel.get(c, self.default) for c in channels], np.float32)
        review, decline = per_row.reshape(-1, 2).T
        return np.where(scores >= decline, "decline", np.where(scores >= review, "review", "approve"))


# ------------------------------------------------------------------------- sink

# Decisions arrive by COPY into a session-local staging table (see decision_stage),
# then move into the real tables with one statement that skips tx_ids already
# decided.
STAGE_DDL = """
CREATE TEMP TABLE decision_stage (
    ord int, tx_id text, ts_ms bigint, card_id text, terminal_id text, amount float8, currency text,
    mcc int, channel text, country text, score real, decision text, features real[], state_complete bool,
    source_partition int, source_offset bigint, kafka_ts_ms bigint,
    feature_weights real[], history_tx_ids text[], history_weights real[]
) ON COMMIT DELETE ROWS
"""

INSERT_DECISIONS = """
WITH claimed AS (  -- decision_ids: the unique tx_id the day partitions cannot have
    INSERT INTO decision_ids (tx_id, ts)
    SELECT tx_id, timestamptz 'epoch' + ts_ms * interval '1 ms'
      FROM decision_stage ORDER BY ord  -- the first of several rows with one tx_id wins
    ON CONFLICT (tx_id) DO NOTHING
    RETURNING tx_id),
inserted AS (
    INSERT INTO risk_decisions (tx_id, ts, card_id, terminal_id, amount, currency, mcc, channel, country,
            score, decision, model_name, model_version, model_sha256, threshold_version, features,
            state_complete, source_topic, source_partition, source_offset, kafka_ts)
    SELECT DISTINCT ON (tx_id)
           tx_id, timestamptz 'epoch' + ts_ms * interval '1 ms', card_id, terminal_id, amount::numeric(14, 2),
           currency, mcc, channel, country, score, decision, %(name)s, %(version)s, %(sha256)s,
           %(threshold_version)s, features, state_complete, %(topic)s, source_partition, source_offset,
           timestamptz 'epoch' + kafka_ts_ms * interval '1 ms'
      FROM decision_stage JOIN claimed USING (tx_id) ORDER BY tx_id, ord
    RETURNING source_partition, source_offset, ts),
explained AS (
    INSERT INTO attention_explanations (tx_id, feature_weights, history_tx_ids, history_weights, ts)
    SELECT s.tx_id, s.feature_weights, s.history_tx_ids, s.history_weights, i.ts
      FROM decision_stage s JOIN inserted i USING (source_partition, source_offset))
SELECT source_partition, source_offset FROM inserted
"""

# The engine creates the month partitions of a batch's days before its transaction
# (src/sink/partitions.rs); so does the baseline.
CREATE_PARTITIONS = "SELECT create_decision_partitions(%s::date[])"

UPSERT_OFFSET = """
INSERT INTO kafka_offsets (consumer_group, topic, partition, next_offset, max_event_ts)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (consumer_group, topic, partition) DO UPDATE
   SET next_offset = GREATEST(kafka_offsets.next_offset, EXCLUDED.next_offset),
       max_event_ts = GREATEST(kafka_offsets.max_event_ts, EXCLUDED.max_event_ts), updated_at = now()
"""

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (source_topic, source_partition, source_offset, reason, message_key, payload)
VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""

INSERT_LABEL = """
INSERT INTO labels (tx_id, is_fraud, reported_at, source_partition, source_offset)
VALUES (%s, %s, %s, %s, %s) ON CONFLICT (tx_id) DO NOTHING
"""

# The engine's reads (src/sink/state.rs), verbatim.
LOAD_CARDS = """
SELECT card_id, tx_id, ts, amount::float8, terminal_id, country, channel FROM (
    SELECT *, row_number() OVER (PARTITION BY card_id ORDER BY ts DESC) AS rn,
           max(ts) OVER (PARTITION BY card_id) AS newest
      FROM risk_decisions WHERE card_id = ANY(%s)) r
 WHERE rn <= %s OR ts >= newest - make_interval(secs => %s::float8 / 1000)
 ORDER BY card_id, ts, source_offset
"""
TERMINAL_COUNTS = """
SELECT terminal_id, floor(extract(epoch FROM ts) / 86400)::bigint AS day, count(*)
  FROM risk_decisions WHERE ts >= %s AND ts < %s GROUP BY 1, 2
"""
# The engine's read (sink::state::terminal_frauds): labels reported in
# [lo, reported_before), each looked up by tx_id.
TERMINAL_FRAUDS = """
SELECT d.terminal_id, floor(extract(epoch FROM i.ts) / 86400)::bigint,
       floor(extract(epoch FROM l.reported_at) / 86400)::bigint
  FROM labels l
 CROSS JOIN LATERAL (SELECT ts FROM decision_ids WHERE tx_id = l.tx_id LIMIT 1) i
 CROSS JOIN LATERAL (
       SELECT terminal_id FROM risk_decisions WHERE tx_id = l.tx_id AND ts = i.ts LIMIT 1) d
 WHERE l.is_fraud AND l.reported_at >= %(lo)s AND l.reported_at < %(reported_before)s
   AND i.ts >= %(lo)s AND i.ts < %(hi)s
"""


def decision_stage(txs: pl.DataFrame, x: Features, scored, decisions: np.ndarray, complete: bool) -> pl.DataFrame:
    """The batch's decision_stage rows, built column-wise: psycopg's per-row
    adaptation of the three arrays alone would cost more than everything else."""
    score, history_attention, feature_attention = scored

    def pg_array(elements: pl.Expr, name: str) -> pl.Expr:
        return pl.concat_str(pl.lit("{"), elements.list.join(","), pl.lit("}")).alias(name)

    def float_array(name: str) -> pl.Expr:
        return pg_array(pl.col(name).arr.to_list().list.eval(pl.element().cast(pl.String)), name)

    def text_array(name: str) -> pl.Expr:
        quoted = pl.element().str.replace_all("\\", "\\\\", literal=True).str.replace_all('"', '\\"', literal=True)
        return pg_array(pl.col(name).list.eval(pl.format('"{}"', quoted)), name)

    return pl.DataFrame({
        "ord": np.arange(txs.height),
        "tx_id": txs["tx_id"], "ts_ms": txs["ts"], "card_id": txs["card"], "terminal_id": txs["terminal"],
        "amount": txs["amount"], "currency": txs["currency"], "mcc": txs["mcc"], "channel": txs["channel"],
        "country": txs["country"], "score": score, "decision": decisions,
        "features": x.features,
        "state_complete": np.full(txs.height, complete),
        "source_partition": txs["partition"], "source_offset": txs["offset"], "kafka_ts_ms": txs["kafka_ts"],
        "feature_weights": feature_attention,
        "history_tx_ids": x.history_tx_ids,
        "history_weights": history_attention,
    }).with_columns(float_array("features"), float_array("feature_weights"), text_array("history_tx_ids"),
                    float_array("history_weights"))


def day_start(day: int) -> dt.datetime:
    return EPOCH + dt.timedelta(days=day)


def apply_migrations(conn: psycopg.Connection):
    """An empty database gets migrations/*.sql, in order (the engine uses sqlx for this)."""
    if conn.execute("SELECT to_regclass('public.risk_decisions')").fetchone()[0] is not None:
        return
    for path in sorted((ROOT / "migrations").glob("*.sql")):
        with conn.transaction():
            conn.execute(path.read_text())


# ---------------------------------------------------------------------- engine


class Baseline:
    def __init__(self, args: argparse.Namespace):
        cfg = tomllib.loads(Path(args.config).read_text())
        self.args = args
        self.group = args.group
        self.batch_rows = cfg["pipeline"]["batch_max_rows"]
        self.batch_wait_s = cfg["pipeline"]["batch_max_wait_ms"] / 1000
        self.delay = cfg["features"]["label_delay_days"]
        self.late_tolerance_ms = cfg["features"]["late_tolerance_secs"] * 1000
        self.thresholds = Thresholds(cfg["thresholds"])
        self.scorer = Scorer(Path(args.model_dir), cfg["model"]["max_batch"])
        self.cards = CardState()
        self.terminals = TerminalStats()

        self.db = psycopg.connect(args.db_url, autocommit=True)
        self.days_with_partitions: set[int] = set()
        apply_migrations(self.db)
        self.db.execute(STAGE_DDL)
        m = self.scorer.manifest
        self.db.execute(
            "INSERT INTO model_versions (name, version, sha256, task, feature_names, manifest)"
            " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (m["name"], m["version"], m["sha256"], m["task"], m["feature_names"], json.dumps(m)),
        )
        threshold_version = self.db.execute(
            "INSERT INTO threshold_sets (content_sha256, thresholds, changed_by) VALUES (%s, %s, %s)"
            " ON CONFLICT (content_sha256) DO UPDATE SET content_sha256 = EXCLUDED.content_sha256 RETURNING version",
            (hashlib.sha256(self.thresholds.canonical.encode()).hexdigest(), self.thresholds.canonical,
             self.thresholds.changed_by),
        ).fetchone()[0]
        self.provenance = {"name": m["name"], "version": m["version"], "sha256": m["sha256"],
                           "threshold_version": threshold_version, "topic": args.transactions_topic}

        self.consumer = Consumer({
            "bootstrap.servers": args.brokers,
            "group.id": args.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": cfg["kafka"]["session_timeout_ms"],
            # As the engine: small fetches per partition keep partitions close in event time.
            "max.partition.fetch.bytes": 262144,
        })
        self.consumer.subscribe([args.transactions_topic, args.labels_topic],
                                on_assign=self._on_assign, on_revoke=self._on_revoke)
        # Log-end offsets come from a separate, group-less client, as in the
        # engine: asked through the subscribed consumer, they would queue behind
        # its long-polling fetches (~0.5 s each).
        self.log_ends = Consumer({"bootstrap.servers": args.brokers, "group.id": f"{args.group}-watermarks",
                                  "enable.auto.commit": False})

    # -- Kafka

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]):
        """Resume every partition where Postgres says its committed data ends."""
        rows = self.db.execute(
            "SELECT topic, partition, next_offset FROM kafka_offsets WHERE consumer_group = %s", (self.group,)
        ).fetchall()
        committed = {(t, p): o for t, p, o in rows if o >= 0}
        for tp in partitions:
            tp.offset = committed.get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]):
        # Batches commit before the next poll, so nothing is in flight here; the
        # next owner may change these cards, so their memory goes (and reloads).
        self.cards.clear()
        consumer.unassign()

    def done_reading(self) -> bool:
        """Whether to stop consuming before a signal or the idle exit (never, here)."""
        return False

    def next_batch(self, poll_s: float) -> list:
        """Up to batch_max_rows records, or what arrived batch_max_wait_ms after the first."""
        first = self.consumer.poll(poll_s)
        if first is None:
            return []
        messages = [first]
        deadline = time.monotonic() + self.batch_wait_s
        while len(messages) < self.batch_rows and (left := deadline - time.monotonic()) > 0:
            messages += self.consumer.consume(self.batch_rows - len(messages), timeout=left)
        good = []
        for m in messages:
            if m.error():
                print(f"kafka: {m.error()}", file=sys.stderr)
            else:
                good.append(m)
        return good

    # -- terminal state (src/pipeline/watermark.rs, without the waiting)

    def watermark(self, topic: str) -> int:
        """The time before which every record of `topic` is committed, in ms (TS_MAX when all are)."""
        committed = {p: (o, ts) for p, o, ts in self.db.execute(
            "SELECT partition, next_offset, max_event_ts FROM kafka_offsets WHERE consumer_group = %s AND topic = %s",
            (self.group, topic),
        )}
        wm = TS_MAX
        for p in self.log_ends.list_topics(topic, timeout=5).topics[topic].partitions:
            low, high = self.log_ends.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
            next_offset, max_ts = committed.get(p, (-1, None))
            if next_offset >= high or (next_offset < 0 and low >= high):
                continue  # drained
            progress = TS_MIN if max_ts is None else (max_ts - EPOCH) // dt.timedelta(milliseconds=1)
            wm = min(wm, progress - self.late_tolerance_ms)
        return wm

    def ensure_terminals(self, min_day: int, max_day: int) -> bool:
        """Load the closed days a batch on [min_day, max_day] reads; whether all were closed."""
        longest = TERMINAL_WINDOW_DAYS[-1]
        lo, hi = min_day - self.delay - longest, max_day - self.delay
        t = self.terminals
        if t.covered(lo, hi, max_day):
            return True
        tx_wm, label_wm = self.watermark(self.args.transactions_topic), self.watermark(self.args.labels_topic)
        complete = tx_wm >= hi * MS_PER_DAY and label_wm >= max_day * MS_PER_DAY
        # Days are closed once the watermark has passed their end. Clamped to
        # `lo` when nothing is: those day numbers would not be dates.
        closed_until = max(lo, min(hi, TS_MAX // MS_PER_DAY if tx_wm == TS_MAX else tx_wm // MS_PER_DAY))
        reported_before = max(lo, min(max_day, TS_MAX // MS_PER_DAY if label_wm == TS_MAX else label_wm // MS_PER_DAY))
        have_lo, have_hi = t.counts_range or (lo, lo)
        if lo < have_lo:
            t.add_closed_days(lo, min(have_lo, closed_until), self._terminal_counts(lo, min(have_lo, closed_until)))
        if closed_until > have_hi:
            start = max(have_hi, lo)
            t.add_closed_days(start, closed_until, self._terminal_counts(start, closed_until))
        frauds = self.db.execute(TERMINAL_FRAUDS, {"reported_before": day_start(reported_before),
                                                    "lo": day_start(lo), "hi": day_start(closed_until)})
        t.set_frauds(lo, closed_until, reported_before,
                     pl.DataFrame(frauds.fetchall(), schema=TERMINAL_FRAUDS_SCHEMA, orient="row"))
        t.evict_before(lo - 7)  # margin for slightly late batches, as the engine
        return complete

    def _terminal_counts(self, lo: int, hi: int) -> pl.DataFrame:
        rows = self.db.execute(TERMINAL_COUNTS, (day_start(lo), day_start(hi))).fetchall()
        return pl.DataFrame(rows, schema=TERMINAL_COUNTS_SCHEMA, orient="row")

    def load_cards(self, cards: list[str]):
        """Cards this process has not seen: their memory comes from committed decisions."""
        rows = self.db.execute(LOAD_CARDS, (cards, HISTORY_LEN, float(CARD_RETENTION_MS))).fetchall()
        frame = pl.DataFrame(
            [(c, (ts - EPOCH) // dt.timedelta(milliseconds=1), math.floor(a * 100 + 0.5), a, term, country,
              channel == "ecom", tx_id) for c, tx_id, ts, a, term, country, channel in rows],
            schema={k: v for k, v in CARD_SCHEMA.items() if k != "seq"}, orient="row",
        )
        self.cards.load(cards, frame)

    # -- the batch

    def featurize(self, b: Batch) -> tuple[pl.DataFrame, Features, bool]:
        txs = pl.DataFrame(b.txs, schema={
            "tx_id": pl.String, "ts": pl.Int64, "card": pl.String, "terminal": pl.String, "amount": pl.Float64,
            "currency": pl.String, "mcc": pl.Int32, "channel": pl.String, "country": pl.String,
            "partition": pl.Int32, "offset": pl.Int64, "kafka_ts": pl.Int64,
        })
        missing = self.cards.missing(txs["card"].unique().to_list())
        if missing:
            self.load_cards(missing)
        days = txs["ts"] // MS_PER_DAY
        complete = self.ensure_terminals(days.min(), days.max())
        features = featurize(txs, self.cards, self.terminals, self.delay)
        self.cards.forget_old(days.max())
        return txs, features, complete

    def insert_decisions(self, cur: psycopg.Cursor, stage: pl.DataFrame) -> set[tuple[int, int]]:
        """The batch's decision_stage rows into risk_decisions and attention_explanations, tx_ids
        already decided skipped; the (partition, offset) of each row inserted."""
        with cur.copy(f"COPY decision_stage ({', '.join(stage.columns)}) FROM STDIN (FORMAT csv)") as copy:
            copy.write(stage.write_csv(include_header=False))
        return set(cur.execute(INSERT_DECISIONS, self.provenance).fetchall())

    def ensure_partitions(self, txs: pl.DataFrame):
        """The partitions of the batch's months (create_decision_partitions takes its days),
        created outside its transaction, as the engine does."""
        days = set((txs["ts"] // MS_PER_DAY).unique().to_list()) - self.days_with_partitions
        if days:
            self.db.execute(CREATE_PARTITIONS,
                            [[dt.date(1970, 1, 1) + dt.timedelta(days=d) for d in sorted(days)]])
            self.days_with_partitions |= days

    def write(self, b: Batch, txs: pl.DataFrame, x: Features | None, scored, complete: bool) -> int:
        """Everything the batch produced and its offsets, in one transaction. Returns decisions written."""
        dead = list(b.dead_letters)
        written = 0
        if b.txs:
            self.ensure_partitions(txs)
        with self.db.transaction(), self.db.cursor() as cur:
            if b.txs:
                decisions = self.thresholds.decide(scored[0], txs["channel"].to_list())
                fresh = self.insert_decisions(cur, decision_stage(txs, x, scored, decisions, complete))
                written = len(fresh)
                for tx in b.txs:
                    if (tx["partition"], tx["offset"]) not in fresh:
                        reason = f"duplicate tx_id {json.dumps(tx['tx_id'])}: already decided"
                        dead.append((self.args.transactions_topic, tx["partition"], tx["offset"], reason,
                                     tx["key"], tx["payload"]))
            if dead:
                cur.executemany(INSERT_DEAD_LETTER, dead)
            if b.labels:
                cur.executemany(INSERT_LABEL, [(l["tx_id"], l["is_fraud"], ms_to_datetime(l["reported_at"]),
                                                l["partition"], l["offset"]) for l in b.labels])
            cur.executemany(UPSERT_OFFSET, [
                (self.group, topic, partition, next_offset, None if ts is None else ms_to_datetime(ts))
                for (topic, partition), (next_offset, ts) in b.positions.items()
            ])
        return written

    def run(self) -> dict:
        stop = False

        def on_signal(*_):
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        stages = dict.fromkeys(("decode", "featurize", "score", "sink", "total"), 0.0)
        totals = {"decisions": 0, "dead_letters": 0, "labels": 0, "batches": 0}
        first_record = last_commit = None
        last_record = time.monotonic()
        while not stop and not self.done_reading():
            messages = self.next_batch(poll_s=0.5)
            if not messages:
                if self.args.idle_exit_seconds and time.monotonic() - last_record >= self.args.idle_exit_seconds:
                    break
                continue
            t0 = time.perf_counter()
            first_record = first_record or time.time()
            b = assemble(messages, self.args.labels_topic)
            t1 = time.perf_counter()
            txs, x, scored, complete = None, None, None, True
            if b.txs:
                txs, x, complete = self.featurize(b)
            t2 = time.perf_counter()
            if b.txs:
                scored = self.scorer.score(x)
            t3 = time.perf_counter()
            decided = self.write(b, txs, x, scored, complete)
            t4 = time.perf_counter()
            last_commit = time.time()
            for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                stages[name] += seconds
            totals["decisions"] += decided
            totals["dead_letters"] += len(b.txs) - decided + len(b.dead_letters)
            totals["labels"] += len(b.labels)
            totals["batches"] += 1
            last_record = time.monotonic()
        self.consumer.close()
        self.log_ends.close()
        if not stop and self.done_reading():
            # Stopped reading on purpose: stay up like a consumer with nothing
            # to do, until a signal or the idle exit, as the harness expects.
            idle_s = self.args.idle_exit_seconds
            while not stop and not (idle_s and time.monotonic() - last_record >= idle_s):
                time.sleep(0.2)
        wall = (last_commit - first_record) if first_record and last_commit else 0.0
        batches = max(totals["batches"], 1)
        return {
            **totals,
            "wall_seconds": round(wall, 3),
            "decisions_per_s": round(totals["decisions"] / wall, 1) if wall else 0.0,
            "stage_ms_per_batch": {k: round(1000 * v / batches, 3) for k, v in stages.items()},
            "stage_seconds": {k: round(v, 3) for k, v in stages.items()},
        }


def arg_parser(description: str | None = __doc__) -> argparse.ArgumentParser:
    """This script's command line (bench/per_message.py adds to it)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="127.0.0.1:19092")
    ap.add_argument("--group", default="riskstream-python-baseline")
    ap.add_argument("--topic-prefix", help="read PREFIX.transactions and PREFIX.labels")
    ap.add_argument("--transactions-topic", default="transactions")
    ap.add_argument("--labels-topic", default="labels")
    ap.add_argument("--db-url", default="postgres://postgres@127.0.0.1:15432/riskstream_baseline",
                    help="its own database, never the engine's")
    ap.add_argument("--model-dir", default=str(ROOT / "models" / "fraud-attention"))
    ap.add_argument("--config", default=str(ROOT / "config" / "riskstream.toml"),
                    help="the engine's config: batch size and wait, thresholds, label delay")
    ap.add_argument("--idle-exit-seconds", type=float, default=10.0,
                    help="stop after this long without records (0: run until a signal)")
    return ap


def parse_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    args = ap.parse_args()
    if args.topic_prefix:
        args.transactions_topic = f"{args.topic_prefix}.transactions"
        args.labels_topic = f"{args.topic_prefix}.labels"
    return args


def main():
    args = parse_args(arg_parser())
    try:
        summary = Baseline(args).run()
    except KafkaException as e:
        sys.exit(f"kafka: {e}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
