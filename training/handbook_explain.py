"""What the attention explanations look like on Handbook decisions (issue 12, item 5).

Trains the production architecture (`mlp-attention-28d`, the study's configuration, seed and
training rows: fold 0 of `training/handbook.sh`, test week 2018-08-29..09-04) on the
Handbook's data, scores that test week, and writes, for the highest-scored fraud of each of
the book's scenarios (compromised terminal, compromised card, large amount), the decision
as riskstream stores it: the score, the features the model attended to most
(`feature_attention`) and the card's past transactions it attended to (`history_attention`,
position 0 = most recent), each with its terminal and whether it was a fraud.

    .venv-train/bin/python training/handbook_explain.py    # -> training/results-handbook/EXPLANATIONS.md

Needs the Handbook features (`training/handbook.sh` makes them); PyTorch, as the study does.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))

from contract import FEATURE_NAMES, HISTORY_FIELDS  # noqa: E402
from fraudlib import data as D  # noqa: E402
from fraudlib import fit as T  # noqa: E402
from fraudlib.models import input_stats  # noqa: E402
from study import CONFIGS, D_num, build  # noqa: E402

SCENARIOS = ["compromised_terminal", "compromised_card", "large_amount"]


def day_str(day: int) -> str:
    return str(dt.date(1970, 1, 1) + dt.timedelta(days=int(day)))


def when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def explain(i: int, data: dict, raw: pl.DataFrame, pred: dict, te: np.ndarray, top: int) -> list[str]:
    """One decision: row i of the table (a position in te's predictions is looked up)."""
    j = int(np.flatnonzero(te == i)[0])
    score, fa, ha = pred["score"][j], pred["feature_attention"][j], pred["history_attention"][j]
    r = raw.row(i, named=True)
    lines = [f"Transaction `{r['tx_id']}`, card `{r['card_id']}` at terminal `{r['terminal_id']}`, "
             f"{when(int(data['ts_ms'][i]))} UTC, amount {r['amount']:.2f}: score **{score:.4f}**.", "",
             "| feature | value | attention |", "|---|---:|---:|"]
    for f in np.argsort(-fa)[:top]:
        lines.append(f"| {FEATURE_NAMES[f]} | {r[FEATURE_NAMES[f]]:.3f} | {fa[f]:.3f} |")
    # The card's earlier rows, most recent first: history position p is the p-th of them.
    card = data["card_id"][i]
    earlier = np.flatnonzero((data["card_id"] == card) & (np.arange(data["n"]) < i))[::-1]
    mask = data["history_mask"][i]
    lines += ["", "| history position | transaction | when | amount | terminal | same terminal | fraud (truth; the model never sees labels of the history) | attention |",
              "|---:|---|---|---:|---|---|---|---:|"]
    shown = [p for p in np.argsort(-ha) if mask[p] > 0][:top]
    for p in sorted(shown):
        k = earlier[p] if p < len(earlier) else None
        if k is None:
            continue
        e = raw.row(int(k), named=True)
        same = data["history"][i, p, HISTORY_FIELDS.index("same_terminal")] > 0.5
        lines.append(f"| {p} | `{e['tx_id']}` | {when(int(data['ts_ms'][k]))} | {e['amount']:.2f} | "
                     f"`{e['terminal_id']}` | {'yes' if same else 'no'} | "
                     f"{'yes' if e['is_fraud'] else 'no'} | {ha[p]:.3f} |")
    held = int(mask.sum())
    lines += ["", f"{held} of the card's past transactions in its history; the {len(shown)} it attended "
              f"to most are shown (their weights sum to {sum(ha[p] for p in shown):.2f} of 1).", ""]
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "training/.data/handbook/features.parquet")
    ap.add_argument("--config", default="mlp-attention-28d")
    ap.add_argument("--test-start", default="2018-08-29")
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "training/results-handbook/EXPLANATIONS.md")
    a = ap.parse_args()
    c = next(c for c in CONFIGS if c["name"] == a.config)
    data = D.load_table(a.data, history_len=c["k"])
    raw = pl.read_parquet(a.data, columns=["tx_id", "ts", "card_id", "terminal_id", "amount", *FEATURE_NAMES,
                                           "is_fraud"]).sort("ts", maintain_order=True)
    fold = D.prequential_folds(data, 1, c["train_days"], D_num(a.test_start))[0]
    tcfg = T.TrainConfig()
    T.set_determinism(tcfg.seed)
    tr, te = fold.train, fold.test
    model = build(c, input_stats(data["features"][tr], data["history"][tr], data["history_mask"][tr]))
    T.train(model, data, tr, tcfg, log=lambda m: print(f"[{c['name']}]{m}", flush=True))
    pred = T.predict(model, D.inputs(data, te))
    doc = [
        "# Explanations of Handbook decisions",
        "",
        f"Generated by `.venv-train/bin/python training/handbook_explain.py` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: `{c['name']}` trained as in the study's fold 0 "
        f"(training days {day_str(fold.train_days[0])}..{day_str(fold.train_days[1])}, seed {tcfg.seed}), "
        f"test week from {a.test_start}. For each of the book's fraud scenarios, its highest-scored fraud of the test week, "
        "with what `attention_explanations` would hold for it: the features and the card's past transactions "
        f"the model attended to most (top {a.top} of each).",
        "",
    ]
    y, scen = data["y"][te], data["scenario"][te]
    for s in SCENARIOS:
        hits = np.flatnonzero((y > 0) & (scen == s))
        if len(hits) == 0:
            doc += [f"## {s}", "", "No fraud of this scenario in the test week.", ""]
            continue
        best = hits[np.argmax(pred["score"][hits])]
        rank = int((pred["score"] > pred["score"][best]).sum()) + 1
        doc += [f"## {s.replace('_', ' ')}", "",
                f"{len(hits)} frauds of this scenario in the test week; this one ranks {rank} of "
                f"{len(te):,} test transactions by score.", "",
                *explain(int(te[best]), data, raw, pred, te, a.top)]
    a.out.write_text("\n".join(doc).rstrip() + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
