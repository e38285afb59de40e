"""Convert the Fraud Detection Handbook's daily pickles into a riskstream transaction file
(the event schema `riskstream simulate --out` writes and `riskstream features --in` reads):

    python training/handbook.py [--raw training/.data/handbook/raw] \
        [--out training/.data/handbook/transactions.parquet]

The mapping (CUSTOMER_ID -> card_id, TERMINAL_ID -> terminal_id, TX_DATETIME -> ts in UTC,
TX_AMOUNT -> amount, TX_FRAUD -> is_fraud, TX_FRAUD_SCENARIO -> scenario, reported_at =
ts + the book's 7-day delay) is documented in fraudlib/handbook.py `to_events`. The raw data
is a local copy of github.com/Fraud-Detection-Handbook/simulated-data-raw (its data/*.pkl);
nothing is downloaded here. `training/handbook.sh` runs this, the featurizer and the study.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fraudlib import handbook as H

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raw", type=Path, default=ROOT / "training" / ".data" / "handbook" / "raw",
                    help="directory of the daily pickles YYYY-MM-DD.pkl")
    ap.add_argument("--out", type=Path, default=ROOT / "training" / ".data" / "handbook" / "transactions.parquet",
                    help="output file (.parquet)")
    a = ap.parse_args()
    if not H.day_files(a.raw):
        print(f"{a.raw}: no daily pickles (copy data/*.pkl of github.com/Fraud-Detection-Handbook/"
              "simulated-data-raw there)", file=sys.stderr)
        return 2
    df = H.read_raw(a.raw)
    events = H.to_events(df)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    events.write_parquet(a.out)
    n_zero = int((events["amount"] == 0).sum())
    print(f"wrote {a.out}: {events.height:,} transactions ({int(events['is_fraud'].sum()):,} frauds, "
          f"{n_zero} of amount 0), {df['TX_DATETIME'].min()} .. {df['TX_DATETIME'].max()} UTC, "
          f"{df['CUSTOMER_ID'].nunique():,} cards, {df['TERMINAL_ID'].nunique():,} terminals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
