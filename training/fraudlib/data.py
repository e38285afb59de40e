"""The featurized table (produced by `riskstream features`) and the Handbook protocol.

Protocol (Fraud Detection Handbook, "Validation strategies"; `riskstream evaluate`
implements the same rules in Rust and the two must agree):

* A day is a UTC calendar day. Trailing days with fewer than half the median daily
  volume are a partial day (the simulator stops at a transaction budget) and are dropped.
* Fold k has its test week starting at T_k = T_0 - 7k, T_0 = the last 7 full days.
  Its training window is the 7 days [T-14, T-8]; the 7 days [T-7, T-1] are the label
  delay (frauds there are not known yet when the model is trained) and are skipped.
* Cards already known compromised are removed from the test set: at test day t, a card
  is known if it has a fraud on a day in [T-14, t-8].
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from contract import FEATURE_NAMES, HISTORY_FIELDS  # noqa: E402

N_FEAT, H_FIELDS = len(FEATURE_NAMES), len(HISTORY_FIELDS)
MS_PER_DAY = 86_400_000
FOLD_DAYS = TRAIN_DAYS = DELAY_DAYS = TEST_DAYS = 7
ARRAYS = ("features", "history", "history_mask")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_table(path: Path, history_len: int | None = None) -> dict:
    """Read the parquet into flat numpy arrays, sorted by time, and fail loudly on contract
    violations (a silently misaligned history is much worse than a crash). The file's
    history length K is inferred from `history_mask`; `history_len` <= K keeps the most
    recent positions only (position 0 = most recent)."""
    need = ["ts", "card_id", *FEATURE_NAMES, "history", "history_mask", "is_fraud"]
    df = pl.read_parquet(path)
    missing = [c for c in need if c not in df.columns]
    if missing:
        sys.exit(f"{path}: missing columns {missing}")
    df = df.sort("ts", maintain_order=True)
    n = df.height
    k_file = int(df["history_mask"].list.len().max())
    for col, length in (("history", k_file * H_FIELDS), ("history_mask", k_file)):
        bad = df.filter(pl.col(col).list.len() != length).height
        if bad:
            sys.exit(f"{path}: {bad} rows have `{col}` with length != {length}")
    k = history_len or k_file
    if k > k_file:
        sys.exit(f"{path}: history length {k_file} < requested {k} (rerun `riskstream features "
                 f"--history-len {k}`)")

    feats = df.select([pl.col(c).cast(pl.Float32) for c in FEATURE_NAMES]).to_numpy().astype(np.float32)
    hist = df["history"].explode().to_numpy().astype(np.float32).reshape(n, k_file, H_FIELDS)[:, :k]
    mask = df["history_mask"].explode().to_numpy().astype(np.float32).reshape(n, k_file)[:, :k]
    arrays = {"features": feats, "history": np.ascontiguousarray(hist), "history_mask": np.ascontiguousarray(mask)}
    for name, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            print(f"WARNING: {bad.sum()} non-finite values in `{name}` replaced by 0", file=sys.stderr)
            a[bad] = 0.0
    arrays["history"] *= arrays["history_mask"][:, :, None]  # the padding convention

    ts_ms = df["ts"].dt.epoch("ms").to_numpy()
    return {
        **arrays,
        "ts_ms": ts_ms,
        "day": ts_ms // MS_PER_DAY,
        "card_id": df["card_id"].to_numpy(),
        "tx_id": df["tx_id"].to_numpy() if "tx_id" in df.columns else np.arange(n).astype(str),
        "y": df["is_fraud"].fill_null(False).to_numpy().astype(np.float32),
        "scenario": df["scenario"].to_numpy() if "scenario" in df.columns else None,
        "n": n,
        "history_len": k,
        "path": Path(path),
    }


def full_days(day: np.ndarray) -> tuple[int, list[int]]:
    """The last full day, and the trailing partial days that were dropped."""
    days, per_day = np.unique(day, return_counts=True)
    dropped = []
    while per_day[-1] < 0.5 * np.median(per_day):
        dropped.append(int(days[-1]))
        days, per_day = days[:-1], per_day[:-1]
    return int(days[-1]), dropped


@dataclass
class Fold:
    k: int
    test_start: int  # day number (days since 1970-01-01)
    train: np.ndarray  # row indices
    test: np.ndarray  # row indices, known-compromised cards removed
    test_removed: int  # rows removed because their card was known compromised
    train_len: int = TRAIN_DAYS

    @property
    def train_days(self) -> tuple[int, int]:
        return self.test_start - DELAY_DAYS - self.train_len, self.test_start - DELAY_DAYS - 1

    @property
    def test_days(self) -> tuple[int, int]:
        return self.test_start, self.test_start + TEST_DAYS - 1


def handbook_fold(data: dict, test_start: int, k: int = 0, train_days: int = TRAIN_DAYS) -> Fold:
    day, y, card = data["day"], data["y"], data["card_id"]
    tr_lo = test_start - DELAY_DAYS - train_days
    train = np.flatnonzero((day >= tr_lo) & (day < test_start - DELAY_DAYS))
    # Known compromised: cards with a fraud from the start of the Handbook's 7-day training
    # window up to t - delay - 1 (as in the Handbook, even when more training days are used).
    known_lo = test_start - DELAY_DAYS - TRAIN_DAYS
    test, removed = [], 0
    for t in range(test_start, test_start + TEST_DAYS):
        known = set(card[(y > 0) & (day >= known_lo) & (day <= t - DELAY_DAYS - 1)])
        rows = np.flatnonzero(day == t)
        keep = ~np.isin(card[rows], list(known)) if known else np.ones(len(rows), bool)
        test.append(rows[keep])
        removed += int((~keep).sum())
    return Fold(k, test_start, train, np.concatenate(test), removed, train_days)


def prequential_folds(data: dict, n_folds: int = 4, train_days: int = TRAIN_DAYS,
                      t0: int | None = None) -> list[Fold]:
    """Fold k tests the week starting at t0 - 7k; t0 (a day number) defaults to the start of
    the last 7 full days. The Handbook's own model selection fixes it instead (its test weeks
    start 2018-08-08 .. 2018-08-29, so t0 = 2018-08-29), leaving its later weeks unused."""
    if t0 is None:
        last, _ = full_days(data["day"])
        t0 = last - TEST_DAYS + 1
    return [handbook_fold(data, t0 - FOLD_DAYS * k, k, train_days) for k in range(n_folds)]


def with_history_noise(data: dict, idx: np.ndarray, share: float, seed: int) -> dict:
    """Inputs of rows `idx` where a `share` of the real history positions is replaced by
    random history entries of *other* cards (the noise ablation). Padding stays padding."""
    rng = np.random.default_rng(seed)
    hist = data["history"][idx].copy()
    mask = data["history_mask"][idx]
    real = np.argwhere(mask > 0)  # (row, pos)
    hit = real[rng.random(len(real)) < share]
    # Donor entries: real positions of random rows of the whole table, from another card.
    pool = np.argwhere(data["history_mask"] > 0)
    donors = pool[rng.integers(0, len(pool), size=len(hit))]
    same = data["card_id"][donors[:, 0]] == data["card_id"][idx[hit[:, 0]]]
    while same.any():  # redraw the few that landed on the same card
        donors[same] = pool[rng.integers(0, len(pool), size=int(same.sum()))]
        same = data["card_id"][donors[:, 0]] == data["card_id"][idx[hit[:, 0]]]
    hist[hit[:, 0], hit[:, 1]] = data["history"][donors[:, 0], donors[:, 1]]
    return {"features": data["features"][idx], "history": hist, "history_mask": mask}


def inputs(data: dict, idx: np.ndarray) -> dict:
    return {k: data[k][idx] for k in ARRAYS}
