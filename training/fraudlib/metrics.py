"""Quality metrics of the study. AUC ROC and average precision are sklearn's; card
precision@100 follows the Fraud Detection Handbook's card_precision_top_k (per day, the
top-100 cards by their max score that day among those not detected on an earlier day,
ties broken by card id; share with a fraud that day; mean over days)."""

from __future__ import annotations

import numpy as np
import polars as pl


def _per_day_cards(day, card, y, score):
    """Per day (in order), each card's max score and whether it had a fraud that day."""
    df = pl.DataFrame({"day": day, "card": card, "y": y, "s": score})
    per = df.group_by("day", "card").agg(pl.col("s").max(), pl.col("y").max())
    return [g for _, g in sorted(per.partition_by("day", as_dict=True).items())]


def _precision_over_days(day, card, y, score, k, oracle):
    detected: set = set()
    total, n_days = 0.0, 0
    for cards in _per_day_cards(day, card, y, score):
        n_days += 1
        cards = cards.filter(~pl.col("card").is_in(list(detected)))
        if oracle:
            cards = cards.sort(["y", "card"], descending=[True, False])
        else:
            cards = cards.sort(["s", "card"], descending=[True, False])
        hits = cards.head(k).filter(pl.col("y") > 0)["card"].to_list()
        total += len(hits) / k
        detected.update(hits)
    return total / n_days if n_days else float("nan")


def card_precision_at_k(day, card, y, score, k: int = 100) -> float:
    """Card precision@k as the Fraud Detection Handbook defines it (card_precision_top_k):
    days in order; cards detected (a fraud card in the day's top k) on an earlier day are
    left out of later days; each day's precision is the fraud cards in the top k of the
    remaining cards (by their max score that day, ties by card id) divided by k; the mean
    over the days. The same as src/evaluate/metrics.rs (training/fraudlib/check_metrics.py)."""
    return _precision_over_days(day, card, y, score, k, oracle=False)


def card_precision_upper_bound(day, card, y, k: int = 100) -> float:
    """The best card precision@k any model can reach under the same protocol: each day an
    oracle ranks the remaining fraud cards first."""
    return _precision_over_days(day, card, y, np.zeros(len(day)), k, oracle=True)


def quality(day, card, y, score) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score  # training only

    return {
        "auc_roc": float(roc_auc_score(y, score)),
        "average_precision": float(average_precision_score(y, score)),
        "card_precision_at_100": card_precision_at_k(day, card, y, score, 100),
    }


def reliability(y, score, bins: int = 10) -> list[dict]:
    """Calibration: mean score vs observed fraud rate per bin. Frauds are ~1% of rows and
    most scores are ~0, so the bins are score quantiles that get finer towards the top:
    the bottom 90%, then tails of 10%, 5%, 2.5%, ... down to the top 0.05%."""
    tails = np.geomspace(0.1, 0.0005, bins - 1)
    edges = np.unique(np.quantile(score, np.r_[0, 1 - tails, 1]))
    which = np.clip(np.searchsorted(edges, score, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        sel = which == b
        if sel.any():
            out.append({"mean_score": float(score[sel].mean()), "fraud_rate": float(y[sel].mean()),
                        "n": int(sel.sum())})
    return out


def brier(y, score) -> float:
    return float(np.mean((score - y) ** 2))


def per_scenario_recall(scenario, y, score, thresholds: dict) -> dict:
    """Share of each scenario's frauds scored at or above each threshold."""
    if scenario is None:
        return {}
    out = {}
    for name in sorted({s for s in scenario[y > 0] if s is not None}):
        sel = (scenario == name) & (y > 0)
        out[name] = {"n": int(sel.sum()),
                     **{f"recall_at_{t}": float((score[sel] >= v).mean()) for t, v in thresholds.items()}}
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) over folds."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())
