"""The fraud-model study: every model and positional encoding under the Handbook protocol.

    python training/study.py                    # run what is missing, then write docs/MODELS.md
    python training/study.py --only gru-attention,lr
    python training/study.py --report-only      # re-render docs/MODELS.md from the results
    python training/study.py --data training/.data/handbook/features.parquet \
        --test-start 2018-08-29 --results training/results-handbook \
        --scores training/.data/handbook/study --report-dir training/results-handbook
                                                # another data set (training/handbook.sh)

For each configuration and each of the 4 prequential folds (train 7 days, 7-day label
delay, test the next 7 days, known-compromised cards removed; see fraudlib/data.py) it
trains the model, scores the test week, and records AUC ROC, average precision and card
precision@100, per-scenario recall at the operating point, and for history models the same
metrics when 25% / 50% of the history is replaced by other cards' transactions. On fold 0
it exports the model to ONNX, checks ONNX Runtime against PyTorch (1e-5) and times it.

One JSON per configuration in training/results/ (committed: the table's source); test
scores for the reliability plot in training/.data/study/ (not committed). A configuration
whose JSON exists is skipped, so an interrupted study resumes where it stopped. Another
data set gets its own --results, --scores and --report-dir, so it never touches these.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from fraudlib import data as D
from fraudlib import export as X
from fraudlib import fit as T
from fraudlib import metrics as M
from fraudlib.models import FeedForward, FraudModel, LogisticRegression, input_stats, uses_history

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "training" / "results"
SCORES = ROOT / "training" / ".data" / "study"
# The production operating point: review the top 1.5% of transactions, decline the top
# 0.2%. Each model's thresholds are those quantiles of its scores on its own training
# window, so they are fixed before the test week is seen.
OPERATING_POINT = {"review": 0.015, "decline": 0.002}
NOISE = (0.25, 0.5)


def cfg(name, family, group, k=16, train_days=D.TRAIN_DAYS, **kw):
    return {"name": name, "family": family, "group": group, "k": k, "train_days": train_days, "model": kw}


CONFIGS = [
    cfg("logistic-regression", "lr", "baseline"),
    cfg("gradient-boosting", "gbdt", "baseline"),
    cfg("feed-forward", "ffnn", "baseline"),
    cfg("feature-attention", "attn", "model", history="none", positional="none"),
    *[cfg(f"transformer-{p}", "attn", "model", history="transformer", positional=p)
      for p in ("none", "sinusoidal", "learned", "alibi", "time")],
    cfg("gru-attention", "attn", "model", history="gru", positional="none"),
    cfg("lstm-attention", "attn", "model", history="lstm", positional="none"),
    # The cheap encoder (issue 10: the model is most of the engine's CPU): each past
    # transaction by an MLP on its own, then the same cross-attention; no self-attention.
    cfg("mlp-attention", "attn", "model", history="mlp", positional="none"),
    cfg("transformer-sinusoidal-k5", "attn", "history length", k=5, history="transformer", positional="sinusoidal"),
    cfg("transformer-sinusoidal-k64", "attn", "history length", k=64, history="transformer",
        positional="sinusoidal"),
    cfg("transformer-sinusoidal-concat", "attn", "fusion", history="transformer", positional="sinusoidal",
        fusion="concat"),
    cfg("transformer-sinusoidal-bias", "attn", "fusion", history="transformer", positional="sinusoidal",
        fusion="bias"),
    # Not the Handbook protocol: the same test weeks, 28 training days instead of 7.
    cfg("gradient-boosting-28d", "gbdt", "training window", train_days=28),
    cfg("transformer-sinusoidal-28d", "attn", "training window", train_days=28, history="transformer",
        positional="sinusoidal"),
    cfg("transformer-none-28d", "attn", "training window", train_days=28, history="transformer",
        positional="none"),
    cfg("mlp-attention-28d", "attn", "training window", train_days=28, history="mlp", positional="none"),
]


def build(c: dict, stats: dict):
    if c["family"] == "lr":
        return LogisticRegression(stats)
    if c["family"] == "ffnn":
        return FeedForward(stats)
    return FraudModel(stats, c["k"], **c["model"])


def thresholds_from(train_scores: np.ndarray) -> dict:
    return {name: float(np.quantile(train_scores, 1 - rate)) for name, rate in OPERATING_POINT.items()}


def run_config(c: dict, data: dict, folds: list[D.Fold], tcfg: T.TrainConfig, scores: Path = SCORES) -> dict:
    out = {"config": c, "train_config": asdict(tcfg), "folds": []}
    scores.mkdir(parents=True, exist_ok=True)
    for f in folds:
        t_fold = time.time()
        T.set_determinism(tcfg.seed)
        tr, te = f.train, f.test
        day, card, y = data["day"][te], data["card_id"][te], data["y"][te]
        if c["family"] == "gbdt":
            model, info = T.train_gbdt(data, tr, tcfg.seed)
            s_te = model.predict_proba(data["features"][te])[:, 1]
            s_tr = model.predict_proba(data["features"][tr])[:, 1]
            n_params = None
        else:
            stats = input_stats(data["features"][tr], data["history"][tr], data["history_mask"][tr])
            model = build(c, stats)
            n_params = sum(p.numel() for p in model.parameters())
            info = T.train(model, data, tr, tcfg, log=lambda m: print(f"[{c['name']} fold {f.k}]{m}", flush=True))
            pred = T.predict(model, D.inputs(data, te))
            s_te = pred["score"]
            s_tr = T.predict(model, D.inputs(data, tr))["score"]
        thr = thresholds_from(s_tr)
        fold = {
            "k": f.k, "test_days": [D_str(d) for d in f.test_days], "train_days": [D_str(d) for d in f.train_days],
            "test_rows": int(len(te)), "test_frauds": int(y.sum()), "test_removed_known_compromised": f.test_removed,
            **M.quality(day, card, y, s_te),
            "card_precision_upper_bound": M.card_precision_upper_bound(day, card, y),
            "brier": M.brier(y, s_te),
            "thresholds": thr,
            "alert_rate": {t: float((s_te >= v).mean()) for t, v in thr.items()},
            "per_scenario": M.per_scenario_recall(data["scenario"][te] if data["scenario"] is not None else None,
                                                  y, s_te, thr),
            **info,
        }
        if c["family"] != "gbdt" and uses_history(model):
            fold["noise"] = {}
            for share in NOISE:
                noisy = D.with_history_noise(data, te, share, seed=1000 + f.k)
                fold["noise"][str(share)] = M.quality(day, card, y, T.predict(model, noisy)["score"])
        np.savez_compressed(scores / f"{c['name']}-fold{f.k}.npz", score=s_te.astype(np.float32), y=y,
                            day=day, card=card.astype(str), tx_id=data["tx_id"][te].astype(str))
        if f.k == 0:
            fold["onnx"] = onnx_cost(c, model, data, te)
        fold["parameters"] = n_params
        fold["fold_seconds"] = time.time() - t_fold
        print(f"[{c['name']} fold {f.k}] AUC {fold['auc_roc']:.4f} AP {fold['average_precision']:.4f} "
              f"CP@100 {fold['card_precision_at_100']:.4f} (train {info['train_seconds']:.0f}s)", flush=True)
        out["folds"].append(fold)
    return out


def onnx_cost(c: dict, model, data: dict, te: np.ndarray) -> dict:
    """Export to ONNX, check ONNX Runtime against the in-memory model, time it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        feed_all = D.inputs(data, te[:4096])
        if c["family"] == "gbdt":
            X.export_gbdt(model, path)
            expected = {"score": model.predict_proba(feed_all["features"])[:, 1].astype(np.float32)}
        else:
            X.export_torch(model, feed_all, path, c["k"])
            expected = T.predict(model, feed_all)
        sess = X.ort_session(path)
        feed = X.model_feed(sess, feed_all)
        diff = X.check_against(sess, feed, expected)
        return {"bytes": path.stat().st_size, "ort_vs_reference_max_abs_diff": max(diff.values()),
                "microseconds_per_tx_batch256_1thread": X.microseconds_per_tx(sess, feed)}


def D_str(d: int) -> str:
    import datetime as dt
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(d))).isoformat()


def D_num(date: str) -> int:
    """The day number (days since 1970-01-01) of an ISO date; the inverse of D_str."""
    import datetime as dt
    return (dt.date.fromisoformat(date) - dt.date(1970, 1, 1)).days


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="training/.data/features64.parquet",
                    help="featurized table with history length >= the largest K (64)")
    ap.add_argument("--only", default="", help="comma-separated configuration names")
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--rerun", action="store_true", help="rerun configurations that have results")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--test-start", default=None,
                    help="UTC date (YYYY-MM-DD) on which fold 0's test week starts, fold k's 7k days "
                         "earlier (default: the last 7 full days of the data)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="one JSON per configuration")
    ap.add_argument("--scores", type=Path, default=SCORES, help="test scores (for the reliability plot)")
    ap.add_argument("--report-dir", type=Path, default=ROOT / "docs",
                    help="MODELS.md (between the study's markers) and img/fraud-calibration.png are "
                         "written here")
    a = ap.parse_args()
    results = a.results
    results.mkdir(parents=True, exist_ok=True)
    t0 = D_num(a.test_start) if a.test_start else None
    if not a.report_only:
        todo = [c for c in CONFIGS if (not a.only or c["name"] in a.only.split(","))
                and (a.rerun or not (results / f"{c['name']}.json").exists())]
        cache: dict[int, dict] = {}
        for c in todo:
            if c["k"] not in cache:
                cache.clear()  # one table in memory at a time
                cache[c["k"]] = D.load_table(Path(a.data), history_len=c["k"])
            data = cache[c["k"]]
            folds = D.prequential_folds(data, a.folds, c["train_days"], t0)
            res = run_config(c, data, folds, T.TrainConfig(), a.scores)
            res["data"] = {"path": str(a.data), "sha256": D.sha256_file(Path(a.data)), "rows": int(data["n"])}
            res["torch"] = torch.__version__
            (results / f"{c['name']}.json").write_text(json.dumps(res, indent=1) + "\n")
    from report import render
    a.report_dir.mkdir(parents=True, exist_ok=True)
    render(results, a.scores, a.report_dir, [c["name"] for c in CONFIGS])


if __name__ == "__main__":
    sys.exit(main())
