"""Check that `handbook_sim.generate(seed=0)` reproduces the Fraud Detection Handbook's
public daily pickles (training/.data/handbook/raw/YYYY-MM-DD.pkl).

Compares the file names, then, day file by day file and row by row (the pickles' own row
order, which is the book's within-day quicksort order), the index, every column's dtype
and values, and prints the number of differing rows per column with the first few
differences. Exit 0 if identical, 1 if not, 0 with "skipped" if the pickles are absent.

    python -m fraudlib.check_handbook_sim [--raw DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlib import handbook_sim

RAW = Path(__file__).resolve().parents[1] / ".data" / "handbook" / "raw"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", type=Path, default=RAW)
    ap.add_argument("--show", type=int, default=5, help="differences shown per column")
    a = ap.parse_args(argv)
    files = sorted(a.raw.glob("????-??-??.pkl"))
    if not files:
        print(f"skipped: no daily pickles in {a.raw}")
        return 0

    t0 = time.time()
    pub = [pd.read_pickle(p) for p in files]
    pub_names = [p.name for p in files]
    t_read = time.time() - t0

    t0 = time.time()
    df = handbook_sim.generate(seed=0, verbose=True)
    t_gen = time.time() - t0
    t0 = time.time()
    mine = list(handbook_sim.daily_frames(df))
    t_days = time.time() - t0
    print(f"read {len(files)} public pickles {t_read:.1f}s; generate(seed=0) {t_gen:.1f}s; "
          f"daily split {t_days:.1f}s")

    ok = True
    my_names = [n for n, _ in mine]
    if my_names != pub_names:
        ok = False
        print(f"day files differ: public {len(pub_names)} ({pub_names[0]}..{pub_names[-1]}), "
              f"generated {len(my_names)} ({my_names[0]}..{my_names[-1]})")
    common = sorted(set(my_names) & set(pub_names))
    P = pd.concat([pub[pub_names.index(n)] for n in common])
    G = pd.concat([d for n, d in mine if n in set(common)])
    n_pub_all = sum(len(d) for d in pub)
    print(f"rows: public {n_pub_all}, generated {len(df)}")
    if n_pub_all != len(df):
        ok = False
    per_day = {n: (len(pub[pub_names.index(n)]), len(d)) for n, d in mine if n in set(common)}
    bad_days = [(n, a_, b_) for n, (a_, b_) in per_day.items() if a_ != b_]
    if bad_days:
        ok = False
        print(f"{len(bad_days)} days with different row counts, first: {bad_days[:5]}")
        return 1  # row-by-row comparison is meaningless then

    if list(P.columns) != list(G.columns):
        ok = False
        print(f"columns differ: public {list(P.columns)}, generated {list(G.columns)}")
    # pandas may store the index as int64 either way; compare values.
    idx_diff = np.flatnonzero(P.index.to_numpy() != G.index.to_numpy())
    print(f"{'index':<18} dtype public {P.index.dtype} / generated {G.index.dtype}: "
          f"{len(idx_diff)} rows differ")
    if len(idx_diff):
        ok = False
    pos = np.arange(len(P))
    for col in P.columns:
        if col not in G.columns:
            continue
        pa, ga = P[col].to_numpy(), G[col].to_numpy()
        same_dtype = P[col].dtype == G[col].dtype
        if pa.dtype == object or ga.dtype == object:
            types_p = {type(v).__name__ for v in pa[:1000]}
            types_g = {type(v).__name__ for v in ga[:1000]}
            same_dtype &= types_p == types_g
        else:
            types_p = types_g = None
        diff = np.flatnonzero(~(pa == ga))
        print(f"{col:<18} dtype public {P[col].dtype}{'' if types_p is None else sorted(types_p)} / "
              f"generated {G[col].dtype}{'' if types_g is None else sorted(types_g)}"
              f"{'' if same_dtype else '  <-- DTYPE DIFFERS'}: {len(diff)} rows differ")
        if len(diff) or not same_dtype:
            ok = False
        for i in diff[:a.show]:
            print(f"    row {pos[i]} (TRANSACTION_ID public {P['TRANSACTION_ID'].iat[i]}, "
                  f"generated {G['TRANSACTION_ID'].iat[i]}): public {pa[i]!r}, generated {ga[i]!r}")
    # Also in TRANSACTION_ID order, the book's `read_from_files` view.
    Ps = P.sort_values("TRANSACTION_ID", kind="stable").reset_index(drop=True)
    Gs = G.sort_values("TRANSACTION_ID", kind="stable").reset_index(drop=True)
    same_sorted = all((Ps[c].to_numpy() == Gs[c].to_numpy()).all() for c in P.columns if c in G.columns)
    print(f"in TRANSACTION_ID order: {'identical' if same_sorted else 'DIFFERENT'}")
    ok &= same_sorted
    print(f"frauds: public {int(P['TX_FRAUD'].sum())}, generated {int(G['TX_FRAUD'].sum())}; "
          f"scenarios public {P['TX_FRAUD_SCENARIO'].value_counts().sort_index().to_dict()}, "
          f"generated {G['TX_FRAUD_SCENARIO'].value_counts().sort_index().to_dict()}")
    print("IDENTICAL" if ok else "DIFFERENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
