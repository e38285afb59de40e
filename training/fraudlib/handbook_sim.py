"""The Fraud Detection Handbook's transaction data simulator, re-implemented with a seed.

Reference: Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud
Detection - Practical Handbook", Chapter 3, "Transaction data simulator", the functions
`generate_customer_profiles_table`, `generate_terminal_profiles_table`,
`get_list_terminals_within_radius`, `generate_transactions_table`, `generate_dataset`,
`add_frauds`, and the loop that saves one pickle per day. `generate(seed=0)` with the
default sizes is the book's own run (5,000 customers, 10,000 terminals, 183 days from
2018-04-01, radius 5) and reproduces the public `simulated-data-raw` pickles
(`check_handbook_sim.py` compares them column by column).

The book's code, step by step, and what is done here:

1. Customer profiles: `np.random.seed(0)`, then per customer, in id order,
   x = U(0,100), y = U(0,100), mean_amount = U(5,100), std_amount = mean_amount/2,
   mean_nb_tx_per_day = U(0,4).
2. Terminal profiles: `np.random.seed(1)`, per terminal x = U(0,100), y = U(0,100).
3. Terminals of a customer: indices of the terminals at Euclidean distance < r.
4. Transactions, per customer in id order (the book's `groupby('CUSTOMER_ID').apply`):
   `random.seed(customer_id)`, `np.random.seed(customer_id)`, then per day
   nb_tx = poisson(mean_nb_tx_per_day); per transaction time = int(normal(43200, 20000)),
   kept only if 0 < time < 86400, and then amount = normal(mean_amount, std_amount),
   redrawn as U(0, 2 * mean_amount) if negative, rounded to cents, and (if the customer
   has a terminal) terminal = random.choice(terminals).
   The draws are exactly these scalar calls in this order (they interleave poisson,
   normal and uniform on one legacy MT19937 stream, so they cannot be vectorised without
   changing them). A private `np.random.RandomState(s)` / `random.Random(s)` gives the
   same stream as the book's `np.random.seed(s)` / `random.seed(s)` without touching the
   global generators.
5. Sort by TX_DATETIME with pandas' default `sort_values` (numpy's *unstable* quicksort),
   TRANSACTION_ID = position. The order of transactions at the same second depends on
   that algorithm; numpy >= 1.25 may use SIMD sorts for integers and datetimes whose tie
   order differs from the introsort numpy 1.x used when the book's data was made. So the
   introsort is reproduced explicitly: numpy's generic (object-dtype) quicksort is that
   same introsort, and `_argsort_quick` checks this against a pure-Python port of
   numpy's `aquicksort` (falling back to the port if a future numpy differs).
6. Frauds (`add_frauds`): scenario 1, TX_AMOUNT > 220. Scenario 2, for day in
   range(max TX_TIME_DAYS) (0..181): `TERMINAL_ID.sample(n=2, random_state=day)`, i.e.
   `np.random.RandomState(day).choice(n_terminals, 2, replace=False)`, and all their
   transactions of days [day, day+28) become scenario 2. Scenario 3, same days:
   `CUSTOMER_ID.sample(n=3, random_state=day)`, their transactions of days
   [day, day+14) in TRANSACTION_ID order, `random.seed(day)`,
   `random.sample(list(index), k=int(n/3))`: amounts x5, scenario 3 (a transaction
   picked on several days is multiplied several times, as in the book).
7. Daily pickles: the rows of each TX_TIME_DAYS, `sort_values('TX_TIME_SECONDS')`
   (again the unstable quicksort, on an object column), `to_pickle(protocol=4)`,
   index = TRANSACTION_ID.

Column types are those of the public pickles: TRANSACTION_ID, TX_FRAUD,
TX_FRAUD_SCENARIO int64; TX_DATETIME datetime64[ns]; TX_AMOUNT float64; CUSTOMER_ID,
TERMINAL_ID, TX_TIME_SECONDS, TX_TIME_DAYS *object* holding Python ints. (In the book
the per-customer frames of customers without transactions are empty object-dtype
frames; pandas 1.x's concat upcast the integer columns to object when mixing them in,
while the float column was filled as float64.)

Seed rule. `generate(seed=k)` adds `k * SEED_STRIDE` (SEED_STRIDE = 1_000_003, a prime
larger than any customer id or day) to every seed the book uses, in both generators:

* customer profiles:      np.random.seed(0 + k*SEED_STRIDE)
* terminal profiles:      np.random.seed(1 + k*SEED_STRIDE)
* customer c:             random.seed(c + k*SEED_STRIDE), np.random.seed(c + k*SEED_STRIDE)
* scenario 2, day d:      sample(n=2, random_state=d + k*SEED_STRIDE)
* scenario 3, day d:      sample(n=3, random_state=d + k*SEED_STRIDE), random.seed(d + k*SEED_STRIDE)

k = 0 is the book's run. Every stream changes with k, the rules (distributions,
thresholds, windows, sizes) do not. numpy's legacy seeds must be < 2**32, so
0 <= k <= (2**32 - 1 - max(n_customers, n_terminals, nb_days)) // SEED_STRIDE (4294 with
the book's sizes). Different k never share a stream for the same role as long as the
customer ids and days are below SEED_STRIDE.

CLI: `python -m fraudlib.handbook_sim --seed 1 --out DIR` writes DIR/YYYY-MM-DD.pkl.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SEED_STRIDE = 1_000_003
COLUMNS = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT",
           "TX_TIME_SECONDS", "TX_TIME_DAYS", "TX_FRAUD", "TX_FRAUD_SCENARIO"]
OBJECT_COLUMNS = ["CUSTOMER_ID", "TERMINAL_ID", "TX_TIME_SECONDS", "TX_TIME_DAYS"]


# --------------------------------------------------------------------------------------
# numpy 1.x's unstable argsort ("quicksort" = introsort), needed for the tie order.

_SMALL_QUICKSORT = 15


def _aheapsort_py(v, a, lo: int, n: int) -> None:
    """numpy's `aheapsort` on a[lo:lo+n] (indices into v), 1-based as in the C code."""
    def get(i):
        return a[lo + i - 1]

    def put(i, x):
        a[lo + i - 1] = x

    def sift_down(tmp, i: int, n: int) -> None:
        """Put `tmp` at heap position `i` of the first `n`, moving larger children up."""
        j = i << 1
        while j <= n:
            if j < n and v[get(j)] < v[get(j + 1)]:
                j += 1
            if v[tmp] < v[get(j)]:
                put(i, get(j))
                i = j
                j += j
            else:
                break
        put(i, tmp)

    for l in range(n >> 1, 0, -1):
        sift_down(get(l), l, n)
    while n > 1:
        tmp = get(n)
        put(n, get(1))
        n -= 1
        sift_down(tmp, 1, n)


def _aquicksort_py(values) -> np.ndarray:
    """Pure-Python port of numpy's `aquicksort` (npysort/quicksort, numpy >= 1.17):
    median-of-3 quicksort, insertion sort below 16 elements, heapsort past depth
    2*floor(log2(n)). Slow; the reference for `_argsort_quick`."""
    v = list(values)
    num = len(v)
    a = list(range(num))
    if num < 2:
        return np.asarray(a, dtype=np.intp)
    pl, pr = 0, num - 1
    stack: list[tuple[int, int, int]] = []
    cdepth = (num.bit_length() - 1) * 2
    while True:
        # As in the C code, the depth limit is only checked for a segment popped from the
        # stack (or the whole array); a segment being partitioned is partitioned to the end.
        if cdepth < 0:
            _aheapsort_py(v, a, pl, pr - pl + 1)
        else:
            while pr - pl > _SMALL_QUICKSORT:
                pm = pl + ((pr - pl) >> 1)
                if v[a[pm]] < v[a[pl]]:
                    a[pm], a[pl] = a[pl], a[pm]
                if v[a[pr]] < v[a[pm]]:
                    a[pr], a[pm] = a[pm], a[pr]
                if v[a[pm]] < v[a[pl]]:
                    a[pm], a[pl] = a[pl], a[pm]
                vp = v[a[pm]]
                pi, pj = pl, pr - 1
                a[pm], a[pj] = a[pj], a[pm]
                while True:
                    pi += 1
                    while v[a[pi]] < vp:
                        pi += 1
                    pj -= 1
                    while vp < v[a[pj]]:
                        pj -= 1
                    if pi >= pj:
                        break
                    a[pi], a[pj] = a[pj], a[pi]
                pk = pr - 1
                a[pi], a[pk] = a[pk], a[pi]
                cdepth -= 1
                if pi - pl < pr - pi:  # push the larger partition
                    stack.append((pi + 1, pr, cdepth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, cdepth))
                    pl = pi + 1
            for pi in range(pl + 1, pr + 1):  # insertion sort
                vi = a[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and vp < v[a[pj - 1]]:
                    a[pj] = a[pj - 1]
                    pj -= 1
                a[pj] = vi
        if not stack:
            break
        pl, pr, cdepth = stack.pop()
    return np.asarray(a, dtype=np.intp)


_OBJECT_SORT_IS_INTROSORT: bool | None = None


def _object_sort_is_introsort() -> bool:
    """Whether numpy's object-dtype quicksort here is the introsort of `_aquicksort_py`
    (checked once, on arrays with many ties)."""
    global _OBJECT_SORT_IS_INTROSORT
    if _OBJECT_SORT_IS_INTROSORT is None:
        rs = np.random.RandomState(12345)
        ok = True
        for n, hi in ((3000, 50), (5000, 4000), (40, 3), (17, 2), (2000, 1)):
            x = rs.randint(0, hi, size=n).astype(object)
            ok &= np.array_equal(np.argsort(x, kind="quicksort"), _aquicksort_py(x))
        _OBJECT_SORT_IS_INTROSORT = bool(ok)
    return _OBJECT_SORT_IS_INTROSORT


def _argsort_quick(values: np.ndarray) -> np.ndarray:
    """numpy 1.x `argsort(kind='quicksort')` of integer values, ties included."""
    obj = np.asarray(values).astype(np.int64).astype(object)
    if _object_sort_is_introsort():
        return np.argsort(obj, kind="quicksort")
    return _aquicksort_py(obj)


# --------------------------------------------------------------------------------------
# The book's functions.

def generate_customer_profiles_table(n_customers: int, random_state: int = 0) -> pd.DataFrame:
    rs = np.random.RandomState(random_state)
    rows = []
    for customer_id in range(n_customers):
        x = rs.uniform(0, 100)
        y = rs.uniform(0, 100)
        mean_amount = rs.uniform(5, 100)
        std_amount = mean_amount / 2
        mean_nb_tx_per_day = rs.uniform(0, 4)
        rows.append([customer_id, x, y, mean_amount, std_amount, mean_nb_tx_per_day])
    return pd.DataFrame(rows, columns=["CUSTOMER_ID", "x_customer_id", "y_customer_id",
                                       "mean_amount", "std_amount", "mean_nb_tx_per_day"])


def generate_terminal_profiles_table(n_terminals: int, random_state: int = 0) -> pd.DataFrame:
    rs = np.random.RandomState(random_state)
    rows = []
    for terminal_id in range(n_terminals):
        x = rs.uniform(0, 100)
        y = rs.uniform(0, 100)
        rows.append([terminal_id, x, y])
    return pd.DataFrame(rows, columns=["TERMINAL_ID", "x_terminal_id", "y_terminal_id"])


def get_list_terminals_within_radius(x_y_customer: np.ndarray, x_y_terminals: np.ndarray,
                                     r: float) -> list:
    squared_diff_x_y = np.square(x_y_customer - x_y_terminals)
    dist_x_y = np.sqrt(np.sum(squared_diff_x_y, axis=1))
    return list(np.where(dist_x_y < r)[0])


def _customer_transactions(customer_id: int, mean_amount: float, std_amount: float,
                           mean_nb_tx_per_day: float, terminals: list, nb_days: int,
                           seed: int, out: list) -> None:
    """The book's `generate_transactions_table` for one customer: appends
    (seconds, day, customer, terminal, amount) rows to `out`."""
    py_rng = random.Random(seed)          # == random.seed(seed)
    np_rng = np.random.RandomState(seed)  # == np.random.seed(seed)
    poisson, normal, uniform = np_rng.poisson, np_rng.normal, np_rng.uniform
    choice = py_rng.choice
    has_terminals = len(terminals) > 0
    append = out.append
    for day in range(nb_days):
        nb_tx = poisson(mean_nb_tx_per_day)
        if nb_tx > 0:
            for _ in range(nb_tx):
                time_tx = int(normal(86400 / 2, 20000))
                if (time_tx > 0) and (time_tx < 86400):
                    amount = normal(mean_amount, std_amount)
                    if amount < 0:
                        amount = uniform(0, mean_amount * 2)
                    amount = np.round(amount, decimals=2)
                    if has_terminals:
                        terminal_id = choice(terminals)
                        append((time_tx + day * 86400, day, customer_id, int(terminal_id),
                                float(amount)))


def add_frauds(customer_ids: np.ndarray, n_terminals: int, tx: dict, offset: int,
               verbose: bool = False) -> dict:
    """The book's `add_frauds` on the columns of the sorted transactions (numpy arrays,
    row i = TRANSACTION_ID i). Returns the per-scenario counts the book prints."""
    amount = tx["TX_AMOUNT"]
    days = tx["TX_TIME_DAYS"]
    terminal = tx["TERMINAL_ID"]
    customer = tx["CUSTOMER_ID"]
    fraud = np.zeros(len(amount), dtype=np.int64)
    scenario = np.zeros(len(amount), dtype=np.int64)
    n_customers = len(customer_ids)

    big = amount > 220
    fraud[big] = 1
    scenario[big] = 1
    nb1 = int(fraud.sum())

    max_day = int(days.max())
    # Rows of each day, so the windows are cheap to select (positions stay increasing).
    day_start = np.searchsorted(np.sort(days, kind="stable"), np.arange(max_day + 2))
    by_day = np.argsort(days, kind="stable")
    for day in range(max_day):
        # TERMINAL_ID.sample(n=2, random_state=day): RandomState(day).choice(n, 2, replace=False)
        comp = np.random.RandomState(day + offset).choice(n_terminals, size=2, replace=False)
        rows = by_day[day_start[day]:day_start[min(day + 28, max_day + 1)]]
        rows = rows[np.isin(terminal[rows], comp)]
        fraud[rows] = 1
        scenario[rows] = 2
    nb2 = int(fraud.sum()) - nb1

    for day in range(max_day):
        pos = np.random.RandomState(day + offset).choice(n_customers, size=3, replace=False)
        comp = customer_ids[pos]
        rows = by_day[day_start[day]:day_start[min(day + 14, max_day + 1)]]
        rows = np.sort(rows[np.isin(customer[rows], comp)])  # TRANSACTION_ID order
        rng = random.Random(day + offset)  # random.seed(day)
        picked = rng.sample(rows.tolist(), k=int(len(rows) / 3))
        picked = np.asarray(picked, dtype=np.int64)
        amount[picked] = amount[picked] * 5
        fraud[picked] = 1
        scenario[picked] = 3
    nb3 = int(fraud.sum()) - nb2 - nb1
    if verbose:
        print(f"Number of frauds from scenario 1: {nb1}\n"
              f"Number of frauds from scenario 2: {nb2}\n"
              f"Number of frauds from scenario 3: {nb3}", file=sys.stderr)
    tx["TX_FRAUD"] = fraud
    tx["TX_FRAUD_SCENARIO"] = scenario
    return {1: nb1, 2: nb2, 3: nb3}


def _check_seed(seed: int, n_customers: int, n_terminals: int, nb_days: int) -> int:
    if seed < 0:
        raise ValueError("seed must be >= 0")
    offset = seed * SEED_STRIDE
    if offset + max(n_customers, n_terminals, nb_days) > 2**32 - 1:
        raise ValueError(f"seed {seed} too large: numpy legacy seeds must stay below 2**32")
    if max(n_customers, nb_days) >= SEED_STRIDE:
        raise ValueError("n_customers and nb_days must be below SEED_STRIDE")
    return offset


def generate(seed: int = 0, n_customers: int = 5000, n_terminals: int = 10000,
             nb_days: int = 183, start_date: str = "2018-04-01", r: float = 5,
             verbose: bool = False) -> pd.DataFrame:
    """The book's `generate_dataset` + `add_frauds` with every seed shifted by
    `seed * SEED_STRIDE` (module docstring). Returns the transactions in TRANSACTION_ID
    order (index = TRANSACTION_ID) with the columns and dtypes of the book's pickles."""
    offset = _check_seed(seed, n_customers, n_terminals, nb_days)
    timings = {}
    t0 = time.time()
    customers = generate_customer_profiles_table(n_customers, random_state=0 + offset)
    terminals = generate_terminal_profiles_table(n_terminals, random_state=1 + offset)
    x_y_terminals = terminals[["x_terminal_id", "y_terminal_id"]].values.astype(float)
    x_y_customers = customers[["x_customer_id", "y_customer_id"]].values.astype(float)
    available = [get_list_terminals_within_radius(x_y_customers[i], x_y_terminals, r)
                 for i in range(n_customers)]
    timings["profiles"] = time.time() - t0

    t0 = time.time()
    rows: list = []
    cid = customers["CUSTOMER_ID"].to_numpy()
    mean_amount = customers["mean_amount"].to_numpy()
    std_amount = customers["std_amount"].to_numpy()
    mean_nb = customers["mean_nb_tx_per_day"].to_numpy()
    # groupby('CUSTOMER_ID') visits the customers in increasing id order = row order here.
    for i in range(n_customers):
        c = int(cid[i])
        _customer_transactions(c, float(mean_amount[i]), float(std_amount[i]), float(mean_nb[i]),
                               available[i], nb_days, c + offset, rows)
    timings["transactions"] = time.time() - t0

    t0 = time.time()
    if rows:
        secs, days, cust, term, amt = (np.asarray(col) for col in zip(*rows))
    else:
        secs = days = cust = term = np.zeros(0, dtype=np.int64)
        amt = np.zeros(0, dtype=np.float64)
    secs = secs.astype(np.int64)
    order = _argsort_quick(secs)  # sort_values('TX_DATETIME'); TX_DATETIME = origin + secs
    tx = {
        "TX_TIME_SECONDS": secs[order],
        "TX_TIME_DAYS": days.astype(np.int64)[order],
        "CUSTOMER_ID": cust.astype(np.int64)[order],
        "TERMINAL_ID": term.astype(np.int64)[order],
        "TX_AMOUNT": amt.astype(np.float64)[order],
    }
    timings["sort"] = time.time() - t0

    t0 = time.time()
    counts = add_frauds(cid.astype(np.int64), n_terminals, tx, offset, verbose=verbose)
    timings["frauds"] = time.time() - t0

    origin = np.datetime64(start_date, "ns")
    n = len(secs)
    df = pd.DataFrame({
        "TRANSACTION_ID": np.arange(n, dtype=np.int64),
        "TX_DATETIME": pd.Series(origin + tx["TX_TIME_SECONDS"].astype("timedelta64[s]")
                                 .astype("timedelta64[ns]"), dtype="datetime64[ns]"),
        "CUSTOMER_ID": pd.Series(tx["CUSTOMER_ID"].astype(object), dtype=object),
        "TERMINAL_ID": pd.Series(tx["TERMINAL_ID"].astype(object), dtype=object),
        "TX_AMOUNT": tx["TX_AMOUNT"],
        "TX_TIME_SECONDS": pd.Series(tx["TX_TIME_SECONDS"].astype(object), dtype=object),
        "TX_TIME_DAYS": pd.Series(tx["TX_TIME_DAYS"].astype(object), dtype=object),
        "TX_FRAUD": tx["TX_FRAUD"],
        "TX_FRAUD_SCENARIO": tx["TX_FRAUD_SCENARIO"],
    }, columns=COLUMNS)
    df.attrs["timings"] = timings
    df.attrs["scenario_counts"] = counts
    if verbose:
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), file=sys.stderr)
    return df


def daily_frames(df: pd.DataFrame, start_date: str = "2018-04-01"):
    """Yield (file name, frame) per day as the book saves them: the day's rows
    (TX_TIME_DAYS == day) sorted with `sort_values('TX_TIME_SECONDS')` (numpy 1.x's
    unstable quicksort on the object column), index = TRANSACTION_ID."""
    start = dt.datetime.strptime(start_date, "%Y-%m-%d")
    days = df["TX_TIME_DAYS"].to_numpy().astype(np.int64)
    secs = df["TX_TIME_SECONDS"].to_numpy().astype(np.int64)
    by_day = np.argsort(days, kind="stable")  # row order kept within a day, like a mask
    bounds = np.searchsorted(days[by_day], np.arange(int(days.max()) + 2))
    for day in range(int(days.max()) + 1):
        rows = by_day[bounds[day]:bounds[day + 1]]
        rows = rows[_argsort_quick(secs[rows])]
        day_df = df.iloc[rows]
        day_df.index = pd.Index(df.index.to_numpy()[rows].astype(np.int64))
        name = (start + dt.timedelta(days=day)).strftime("%Y-%m-%d") + ".pkl"
        yield name, day_df


def write_daily_pickles(df: pd.DataFrame, out_dir, start_date: str = "2018-04-01") -> list[Path]:
    """One pickle per day, `out_dir/YYYY-MM-DD.pkl`, protocol 4, as the book's loop."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, day_df in daily_frames(df, start_date):
        day_df.to_pickle(out / name, protocol=4)
        paths.append(out / name)
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-customers", type=int, default=5000)
    ap.add_argument("--n-terminals", type=int, default=10000)
    ap.add_argument("--nb-days", type=int, default=183)
    ap.add_argument("--start-date", default="2018-04-01")
    ap.add_argument("--r", type=float, default=5)
    a = ap.parse_args(argv)
    t0 = time.time()
    df = generate(a.seed, a.n_customers, a.n_terminals, a.nb_days, a.start_date, a.r, verbose=True)
    paths = write_daily_pickles(df, a.out, a.start_date)
    c = df.attrs["scenario_counts"]
    sc = df["TX_FRAUD_SCENARIO"].value_counts().sort_index().to_dict()
    print(f"seed {a.seed}: {len(df)} transactions, {int(df['TX_FRAUD'].sum())} frauds, "
          f"labels by scenario {sc} (book's incremental counts {c}), "
          f"{len(paths)} daily pickles in {a.out}, {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
