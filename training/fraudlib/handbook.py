"""The Fraud Detection Handbook's public data: reading its daily pickles, converting them
to riskstream's transaction event schema, and the book's own baseline features.

The data is the repository `Fraud-Detection-Handbook/simulated-data-raw`: one pickle a day,
2018-04-01 .. 2018-09-30, 1,754,155 transactions of 5,000 customers at 10,000 terminals,
14,681 frauds. Columns TRANSACTION_ID, TX_DATETIME (naive, read as UTC), CUSTOMER_ID,
TERMINAL_ID, TX_AMOUNT, TX_TIME_SECONDS, TX_TIME_DAYS (seconds / days since 2018-04-01),
TX_FRAUD (0/1), TX_FRAUD_SCENARIO (0 legit; 1, 2, 3 below). Nothing here downloads it:
`training/handbook.sh` expects a local copy under training/.data/handbook/raw/.

`baseline_features` is the book's "Baseline feature transformation" (Chapter 3), computed
the way its notebook computes it (pandas time-based rolling windows per customer and per
terminal), so `check_handbook.py` can reproduce the book's Chapter 3 table. riskstream's
own featurizer (`riskstream features`) computes its features differently (UTC calendar
days, label reports) and is what the study uses.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd  # the pickles are pandas DataFrames
import polars as pl

FIRST_DAY = dt.date(2018, 4, 1)  # TX_TIME_DAYS = 0
LABEL_DELAY_DAYS = 7  # the book's feedback delay: a fraud is known 7 days after it happened
# TX_FRAUD_SCENARIO (the book's "Simulated dataset" section): 1 = any amount above 220,
# 2 = a compromised terminal (its transactions of the next 28 days are frauds),
# 3 = a compromised customer (a third of its next 14 days' transactions, amounts x5).
SCENARIOS = {1: "large_amount", 2: "compromised_terminal", 3: "compromised_card"}
# The book's 15 baseline features, in the order its Chapter 3 models take them.
BASELINE_FEATURES = [
    "TX_AMOUNT", "TX_DURING_WEEKEND", "TX_DURING_NIGHT",
    "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_7DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW",
    "CUSTOMER_ID_NB_TX_30DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW",
    "TERMINAL_ID_NB_TX_1DAY_WINDOW", "TERMINAL_ID_RISK_1DAY_WINDOW",
    "TERMINAL_ID_NB_TX_7DAY_WINDOW", "TERMINAL_ID_RISK_7DAY_WINDOW",
    "TERMINAL_ID_NB_TX_30DAY_WINDOW", "TERMINAL_ID_RISK_30DAY_WINDOW",
]
WINDOWS = (1, 7, 30)


def day_files(raw: Path, begin: str | None = None, end: str | None = None) -> list[Path]:
    """The daily pickles `YYYY-MM-DD.pkl` in `raw` between `begin` and `end` (inclusive)."""
    return [p for p in sorted(Path(raw).glob("????-??-??.pkl"))
            if (begin is None or p.stem >= begin) and (end is None or p.stem <= end)]


def read_raw(raw: Path, begin: str | None = None, end: str | None = None) -> pd.DataFrame:
    """The days [begin, end] as one frame in TRANSACTION_ID order, as the book's
    `read_from_files` returns them (the ids are integers in the pickles; the time columns
    are stored as objects and are made integers here)."""
    files = day_files(raw, begin, end)
    if not files:
        raise FileNotFoundError(f"no daily pickles in {raw} between {begin} and {end}")
    df = pd.concat([pd.read_pickle(p) for p in files], ignore_index=True)
    df = df.sort_values("TRANSACTION_ID", kind="stable").reset_index(drop=True)
    for col in ("CUSTOMER_ID", "TERMINAL_ID", "TX_TIME_SECONDS", "TX_TIME_DAYS"):
        df[col] = df[col].astype(np.int64)
    return df


def to_events(df: pd.DataFrame) -> pl.DataFrame:
    """The transactions in riskstream's labelled event schema, the columns `riskstream
    simulate --out x.parquet` writes (src/event.rs, src/features/offline.rs):

    * `tx_id` "hb-<TRANSACTION_ID>", `card_id` "card-<CUSTOMER_ID, 5 digits>", `terminal_id`
      "term-<TERMINAL_ID, 5 digits>": zero-padded so that sorting the ids as strings
      (card precision@k breaks ties by card id) keeps the book's numeric order.
    * `ts` TX_DATETIME as UTC, milliseconds; `amount` TX_AMOUNT (42 rows are 0.00).
    * `is_fraud` TX_FRAUD; `scenario` the names in SCENARIOS, null for legit rows.
    * `reported_at` (frauds only) ts + 7 days: the book assumes every fraud is known exactly
      after its 7-day delay. The featurizer counts a fraud in a terminal's risk on day D
      only if it was reported before D began; its windows end on day D - 7 - 1, and
      a fraud of that day is reported on day D - 1, so every fraud the book's windows see
      is known in time, and none of the 7-day delay period is.
    * `currency`, `mcc`, `channel`, `country` are left out: the Handbook has none, and the
      schema makes them optional (the features that use them are then 0).
    """
    ts = pl.Series("ts", df["TX_DATETIME"].to_numpy().astype("datetime64[ms]")).dt.replace_time_zone("UTC")
    fraud = pl.Series("is_fraud", df["TX_FRAUD"].to_numpy() == 1)
    out = pl.DataFrame({
        "tx_id": "hb-" + pl.Series(df["TRANSACTION_ID"].to_numpy()).cast(pl.String),
        "ts": ts,
        "card_id": "card-" + pl.Series(df["CUSTOMER_ID"].to_numpy()).cast(pl.String).str.zfill(5),
        "terminal_id": "term-" + pl.Series(df["TERMINAL_ID"].to_numpy()).cast(pl.String).str.zfill(5),
        "amount": pl.Series(df["TX_AMOUNT"].to_numpy(), dtype=pl.Float64),
        "is_fraud": fraud,
        "scenario": pl.Series(df["TX_FRAUD_SCENARIO"].to_numpy()).replace_strict(SCENARIOS, default=None,
                                                                               return_dtype=pl.String),
    })
    out = out.with_columns(
        pl.when(pl.col("is_fraud")).then(pl.col("ts") + pl.duration(days=LABEL_DELAY_DAYS))
        .otherwise(None).alias("reported_at"))
    # Event-time order (ties by transaction id), the order a stream would deliver.
    order = np.lexsort((df["TRANSACTION_ID"].to_numpy(), df["TX_DATETIME"].to_numpy()))
    return out[order]


def baseline_features(df: pd.DataFrame, delay: int = LABEL_DELAY_DAYS) -> pd.DataFrame:
    """`df` with the book's 15 baseline features added, as its Chapter 3 notebook
    ("Baseline feature transformation") computes them:

    * TX_DURING_WEEKEND: Saturday or Sunday; TX_DURING_NIGHT: hour <= 6 (the book's code
      says `<= 6`, its text "before 6am"; the code is what produced its tables).
    * per customer, for w in 1, 7, 30 days: the number and mean amount of its transactions
      in the time window (t - w days, t], the current one included;
    * per terminal: the number of transactions in (t - delay - w days, t - delay] and the
      share of frauds among them (0 when there are none). The book computes it as the
      difference of two rolling windows ending at t, of delay + w and delay days.

    Windows are pandas' time-based rolling windows over TX_DATETIME within each customer or
    terminal, exactly the book's `rolling(str(n) + 'd')`; `groupby().rolling()` runs the same
    per-group computation at once. The rows' order is kept."""
    out = df.copy()
    out["TX_DURING_WEEKEND"] = (out["TX_DATETIME"].dt.weekday >= 5).astype(np.int64)
    out["TX_DURING_NIGHT"] = (out["TX_DATETIME"].dt.hour <= 6).astype(np.int64)
    cols = ["TX_DATETIME", "TRANSACTION_ID", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]
    by_key = {}  # per key: the rows grouped by key, chronological within a group (as the book sorts them)
    for key in ("CUSTOMER_ID", "TERMINAL_ID"):
        by_key[key] = out[cols].sort_values([key, "TX_DATETIME", "TRANSACTION_ID"], kind="stable")
    where = {}  # per key: position in by_key[key] of each row of `out`
    for key, srt in by_key.items():
        pos = pd.Series(np.arange(len(srt)), index=srt["TRANSACTION_ID"].to_numpy())
        where[key] = pos.reindex(out["TRANSACTION_ID"].to_numpy()).to_numpy()

    def rolling(key: str, col: str, days: int, how: str) -> np.ndarray:
        """Per `key`, the rolling `how` ("sum" or "count") of `col` over `days`, in `out`'s row order."""
        srt = by_key[key]
        # groupby(sort=True) yields the groups in key order, each in its rows' order: the
        # result is row-aligned with `srt`.
        r = getattr(srt.groupby(key, sort=True).rolling(f"{days}D", on="TX_DATETIME")[col], how)()
        return r.to_numpy()[where[key]]

    for w in WINDOWS:
        n = rolling("CUSTOMER_ID", "TX_AMOUNT", w, "count")
        out[f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"] = n
        out[f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"] = rolling("CUSTOMER_ID", "TX_AMOUNT", w, "sum") / n
    frauds_delay = rolling("TERMINAL_ID", "TX_FRAUD", delay, "sum")
    count_delay = rolling("TERMINAL_ID", "TX_FRAUD", delay, "count")
    for w in WINDOWS:
        n = rolling("TERMINAL_ID", "TX_FRAUD", delay + w, "count") - count_delay
        frauds = rolling("TERMINAL_ID", "TX_FRAUD", delay + w, "sum") - frauds_delay
        with np.errstate(invalid="ignore", divide="ignore"):
            risk = frauds / n
        out[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"] = n
        out[f"TERMINAL_ID_RISK_{w}DAY_WINDOW"] = np.nan_to_num(risk, nan=0.0)  # the book's fillna(0)
    return out


def terminal_windows(df: pd.DataFrame, resolution_s: int, delay: int = LABEL_DELAY_DAYS) -> np.ndarray:
    """The terminal's 6 features (count and fraud share over 1, 7, 30 days, the book's order)
    with windows of `resolution_s` seconds' granularity, as a stream that keeps the
    terminal's counts in buckets of that size computes them: a transaction at t, in the bucket
    starting at B = t rounded down to `resolution_s`, counts the terminal's transactions in
    [B - delay - w days, B - delay days) and the frauds among them (with the book's 7-day
    delay every one of those is known before B). 86,400 is the engine's calendar-day
    windows (`src/features/terminal.rs`); 1 is the book's windows up to their closed/open
    ends. Rows in `df`'s order; float32."""
    day = 86_400
    t = df["TX_TIME_SECONDS"].to_numpy().astype(np.int64)
    term = df["TERMINAL_ID"].to_numpy().astype(np.int64)
    fraud = df["TX_FRAUD"].to_numpy().astype(np.int64)
    span = int(t.max()) + 400 * day  # > any time or window edge: keys of terminals never mix
    key = term * span + t
    order = np.argsort(key, kind="stable")
    keys = key[order]
    frauds_before = np.r_[0, np.cumsum(fraud[order])]  # frauds among the first i sorted rows
    bucket = t // resolution_s * resolution_s
    out = np.zeros((len(df), 2 * len(WINDOWS)), np.float32)
    for i, w in enumerate(WINDOWS):
        lo = np.searchsorted(keys, term * span + bucket - (delay + w) * day, side="left")
        hi = np.searchsorted(keys, term * span + bucket - delay * day, side="left")
        n = hi - lo
        bad = frauds_before[hi] - frauds_before[lo]
        out[:, 2 * i] = n
        out[:, 2 * i + 1] = np.where(n > 0, bad / np.maximum(n, 1), 0.0)
    return out


def epoch_day(df: pd.DataFrame) -> np.ndarray:
    """Days since 1970-01-01 (the unit of fraudlib.data) from TX_TIME_DAYS."""
    return df["TX_TIME_DAYS"].to_numpy() + (FIRST_DAY - dt.date(1970, 1, 1)).days


def day_number(date: str) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days
