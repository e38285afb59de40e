"""The Python card precision@k against the shared fixture (card_precision_fixture.json),
whose values were computed by hand and are also checked by the Rust implementation
(src/evaluate/metrics.rs). Run by `make model-check`; needs numpy and polars only:

    .venv/bin/python training/fraudlib/check_metrics.py
"""

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fraudlib.metrics import card_precision_at_k, card_precision_upper_bound  # noqa: E402


def main() -> None:
    fixture = json.loads((Path(__file__).parent / "card_precision_fixture.json").read_text())
    day, card, y, score = (np.array(col) for col in zip(*fixture["rows"]))
    for case in fixture["cases"]:
        k = case["k"]
        got = (card_precision_at_k(day, card, y, score.astype(float), k),
               card_precision_upper_bound(day, card, y, k))
        want = (case["card_precision"], case["upper_bound"])
        if not np.allclose(got, want, rtol=0, atol=1e-12):
            sys.exit(f"FAIL k={k}: card precision, upper bound {got} != {want} ({case['why']})")
        print(f"ok   k={k}: card precision {got[0]:.6f}, upper bound {got[1]:.6f}")


if __name__ == "__main__":
    main()
