"""Synthetic stand-in for `training/.data/features.parquet`.

The real training table is produced by the Rust featurizer
(`riskstream simulate` then `riskstream features`).  This script exists so the
training / export pipeline can be built and tested end to end without it, and
so CI-less local runs have something to chew on.  It is *not* a substitute for
the real data: metrics from a model trained here only show that the pipeline
works.

The generator follows the Fraud Detection Handbook's simulator (customers with a
mean spend and daily rate, a set of usual terminals, three fraud scenarios) and
adds one scenario that exercises the history branch of the model:

  * high_amount          - any transaction above 220 is fraud (handbook #1)
  * compromised_terminal - 2 terminals/day turn bad for 28 days (handbook #2)
  * compromised_card     - 3 cards/day; for 14 days a third of their
                           transactions are fraud with a 5x amount (handbook #3)
  * card_testing         - 1 card/day gets a night-time burst of small e-com
                           transactions abroad, minutes apart

Features are then computed from the raw transactions with exactly the
definitions of the model contract (see train_fraud.py / README.md), so the
schema and the semantics match what the Rust featurizer writes.

Usage: python training/synthetic.py --out training/.data/synthetic.parquet
(never written to features.parquet: that path belongs to the Rust featurizer)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import polars as pl

from contract import FEATURE_NAMES, K
DAY = 86_400
NO_PREV_SECS = 30 * DAY  # "no previous transaction" is encoded as 30 days ago
TERMINAL_DELAY = 7 * DAY  # fraud labels are known ~7 days late

COUNTRIES = np.array(["FR", "DE", "ES", "IT", "NL", "BE", "GB", "US", "BR", "NG", "RU", "CN"])
HOME_COUNTRIES = 7  # cards live in the first 7 countries; the rest are "abroad" only


def simulate(n_cards: int, n_terminals: int, n_days: int, seed: int, start: str):
    """Raw transactions as numpy arrays (unsorted)."""
    rng = np.random.default_rng(seed)
    start_s = int(np.datetime64(start, "s").astype(np.int64))

    # Terminals: each has a country, heavily skewed to the home countries.
    term_country = np.where(
        rng.random(n_terminals) < 0.9,
        rng.integers(0, HOME_COUNTRIES, n_terminals),
        rng.integers(0, len(COUNTRIES), n_terminals),
    )

    # Card profiles (handbook: mean amount U(5,100), std = mean/2, rate U(0,4)/day).
    mean_amt = rng.uniform(5, 100, n_cards)
    std_amt = mean_amt / 2
    rate = rng.uniform(0, 4, n_cards)
    ecom_p = rng.uniform(0, 0.4, n_cards)
    home = rng.integers(0, HOME_COUNTRIES, n_cards)
    # Usual terminals: 20 per card, drawn from terminals in the card's home country.
    by_country = [np.flatnonzero(term_country == c) for c in range(len(COUNTRIES))]
    usual = np.stack([rng.choice(by_country[h], 20) for h in home])  # [cards, 20]

    # Legit transactions: Poisson count per (card, day), time ~ N(noon, 20000 s).
    counts = rng.poisson(np.repeat(rate[:, None], n_days, axis=1))
    card = np.repeat(np.repeat(np.arange(n_cards), n_days), counts.ravel())
    day = np.repeat(np.tile(np.arange(n_days), n_cards), counts.ravel())
    n = card.size
    tod = rng.normal(DAY / 2, 20_000, n)
    keep = (tod > 0) & (tod < DAY)
    card, day, tod = card[keep], day[keep], tod[keep]
    n = card.size
    amount = rng.normal(mean_amt[card], std_amt[card])
    neg = amount <= 0
    amount[neg] = rng.uniform(0, 2 * mean_amt[card[neg]])
    amount = np.maximum(np.round(amount, 2), 0.01)
    terminal = usual[card, rng.integers(0, 20, n)]
    ecom = rng.random(n) < ecom_p[card]
    ts = start_s + day * DAY + tod.astype(np.int64)
    scenario = np.zeros(n, dtype=np.int8)  # 0 none, 1..4 scenarios below

    # Scenario 2: compromised terminals.
    for d in range(n_days):
        bad = rng.choice(n_terminals, 2, replace=False)
        hit = np.isin(terminal, bad) & (day >= d) & (day < d + 28) & (scenario == 0)
        scenario[hit] = 2

    # Scenario 3: compromised cards - a third of their tx over 14 days, amount x5.
    for d in range(n_days):
        bad = rng.choice(n_cards, 3, replace=False)
        cand = np.flatnonzero(np.isin(card, bad) & (day >= d) & (day < d + 14) & (scenario == 0))
        if cand.size:
            pick = rng.choice(cand, max(1, cand.size // 3), replace=False)
            amount[pick] = np.round(amount[pick] * 5, 2)
            scenario[pick] = 3

    # Scenario 1 last, so inflated amounts from scenario 3 stay labelled as 3.
    scenario[(amount > 220) & (scenario == 0)] = 1

    # Scenario 4: card testing bursts (new rows appended).
    b_card, b_ts, b_amt, b_term = [], [], [], []
    foreign_terms = np.flatnonzero(term_country >= HOME_COUNTRIES)
    for d in range(n_days):
        c = rng.integers(n_cards)
        t = start_s + d * DAY + int(rng.uniform(0, 6 * 3600))
        m = rng.integers(3, 9)
        term = rng.choice(foreign_terms)
        gaps = rng.uniform(20, 180, m).astype(np.int64)
        amts = np.round(rng.uniform(1, 5, m), 2)
        amts[-1] = np.round(rng.uniform(100, 400), 2)  # the cash-out after the probes
        b_card.append(np.full(m, c)); b_ts.append(t + np.cumsum(gaps))
        b_amt.append(amts); b_term.append(np.full(m, term))
    b_card = np.concatenate(b_card); b_ts = np.concatenate(b_ts)
    card = np.concatenate([card, b_card])
    ts = np.concatenate([ts, b_ts])
    amount = np.concatenate([amount, np.concatenate(b_amt)])
    terminal = np.concatenate([terminal, np.concatenate(b_term)])
    ecom = np.concatenate([ecom, np.ones(b_card.size, bool)])
    scenario = np.concatenate([scenario, np.full(b_card.size, 4, np.int8)])

    country = term_country[terminal]
    return dict(card=card, ts=ts, amount=amount, terminal=terminal, ecom=ecom,
                country=country, scenario=scenario)


def _window_count_sum(key_sorted, ts, group, lo_excl, hi_incl, values_cumsum):
    """Count and sum of `values` in (lo, hi] for the same group, via a
    (group, ts)-sorted composite key and binary search: O(n log n), no loops."""
    base = group.astype(np.int64) << 40
    r = np.searchsorted(key_sorted, base + hi_incl, side="right")
    l = np.searchsorted(key_sorted, base + lo_excl, side="right")
    cnt = r - l
    s = values_cumsum[r] - values_cumsum[l]
    return cnt, s


def featurize(raw) -> pl.DataFrame:
    """Compute the 20 contract features + history, mirroring the Rust definitions."""
    card, ts, amount = raw["card"], raw["ts"], raw["amount"]
    terminal, ecom, country = raw["terminal"], raw["ecom"], raw["country"]
    fraud = raw["scenario"] > 0

    # Sort by (card, ts): card windows and history become contiguous slices.
    order = np.lexsort((ts, card))
    card, ts, amount, terminal, ecom, country, fraud, scen = (
        a[order] for a in (card, ts, amount, terminal, ecom, country, fraud, raw["scenario"]))
    n = ts.size
    ckey = (card.astype(np.int64) << 40) + ts
    c_amt_cum = np.concatenate([[0.0], np.cumsum(amount)])
    c_one_cum = np.arange(n + 1, dtype=np.float64)

    f = np.zeros((n, 20), np.float64)
    f[:, 0] = np.log1p(amount)
    for j, w in ((1, DAY), (3, 7 * DAY), (5, 30 * DAY)):
        cnt, s = _window_count_sum(ckey, ts, card, ts - w, ts, c_amt_cum)
        f[:, j] = cnt
        f[:, j + 1] = s / np.maximum(cnt, 1)

    # Terminal windows (t - 7d - w, t - 7d]: only frauds old enough to be reported.
    tord = np.lexsort((ts, terminal))
    tkey = (terminal[tord].astype(np.int64) << 40) + ts[tord]
    t_fraud_cum = np.concatenate([[0.0], np.cumsum(fraud[tord])])
    for j, w in ((7, DAY), (9, 7 * DAY), (11, 30 * DAY)):
        hi = ts - TERMINAL_DELAY
        cnt, nf = _window_count_sum(tkey, ts, terminal, hi - w, hi, t_fraud_cum)
        f[:, j] = cnt
        f[:, j + 1] = np.where(cnt > 0, nf / np.maximum(cnt, 1), 0.0)

    sod = ts % DAY
    f[:, 13] = sod < 6 * 3600
    f[:, 14] = ((ts // DAY + 3) % 7) >= 5  # 1970-01-01 was a Thursday -> Mon=0
    f[:, 15] = ecom
    f[:, 16] = amount / f[:, 6]
    f[:, 17], _ = _window_count_sum(ckey, ts, card, ts - 600, ts, c_one_cum)

    # Previous transaction of the same card (sorted order => index i-1).
    idx = np.arange(n)
    has_prev = np.r_[False, card[1:] == card[:-1]]
    gap_prev = np.where(has_prev, ts - ts[np.maximum(idx - 1, 0)], NO_PREV_SECS)
    f[:, 18] = np.log1p(gap_prev)
    f[:, 19] = has_prev & (gap_prev <= 3600) & (country != country[np.maximum(idx - 1, 0)])

    # History: position k = the card's (k+1)-th previous transaction.
    hist = np.zeros((n, K, 6), np.float32)
    mask = np.zeros((n, K), np.float32)
    for k in range(K):
        j = idx - 1 - k
        ok = (j >= 0) & (card[np.maximum(j, 0)] == card)
        jj = np.maximum(j, 0)
        mask[ok, k] = 1
        hist[ok, k, 0] = np.log1p(amount[jj[ok]])
        hist[ok, k, 1] = np.log1p(ts[ok] - ts[jj[ok]])
        hist[ok, k, 2] = terminal[jj[ok]] == terminal[ok]
        hist[ok, k, 3] = country[jj[ok]] == country[ok]
        hist[ok, k, 4] = ecom[jj[ok]]
        hist[ok, k, 5] = (ts[jj[ok]] % DAY) / DAY

    # Back to time order, as a log would be.
    t_order = np.argsort(ts, kind="stable")
    names = np.array([None, "high_amount", "compromised_terminal", "compromised_card", "card_testing"],
                     dtype=object)
    cols = {
        "tx_id": [f"tx{i:08d}" for i in range(n)],
        "ts": pl.Series(ts[t_order] * 1000).cast(pl.Datetime("ms")).dt.replace_time_zone("UTC"),
        "card_id": [f"card{c:05d}" for c in card[t_order]],
        "terminal_id": [f"term{t:05d}" for t in terminal[t_order]],
        "amount": amount[t_order],
    }
    for j, name in enumerate(FEATURE_NAMES):
        cols[name] = pl.Series(f[t_order, j].astype(np.float32))
    cols["history"] = pl.Series(hist[t_order].reshape(n, K * 6)).cast(pl.List(pl.Float32))
    cols["history_mask"] = pl.Series(mask[t_order]).cast(pl.List(pl.Float32))
    cols["is_fraud"] = fraud[t_order]
    cols["scenario"] = pl.Series(names[scen[t_order]].tolist(), dtype=pl.String)
    return pl.DataFrame(cols)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="training/.data/synthetic.parquet")
    ap.add_argument("--cards", type=int, default=3000)
    ap.add_argument("--terminals", type=int, default=6000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--start", default="2026-01-01")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    t0 = time.time()
    df = featurize(simulate(a.cards, a.terminals, a.days, a.seed, a.start))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(out)
    print(f"wrote {out}: {df.height} rows, fraud rate {df['is_fraud'].mean():.4%}, "
          f"{time.time() - t0:.1f}s")
    print(df.group_by("scenario").len().sort("scenario"))


if __name__ == "__main__":
    main()
