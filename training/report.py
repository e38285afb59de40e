"""Render the study's results (training/results/*.json) into docs/MODELS.md, between the
markers `<!-- fraud-study:begin -->` and `<!-- fraud-study:end -->`, and draw the
reliability curves to docs/img/fraud-calibration.png. Everything outside the markers is
prose written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BEGIN, END = "<!-- fraud-study:begin -->", "<!-- fraud-study:end -->"
METRICS = (("auc_roc", "AUC ROC"), ("average_precision", "AP"), ("card_precision_at_100", "CP@100"))
# Fraud Detection Handbook, chapter "Model selection", best model on its own simulated data.
HANDBOOK = {"auc_roc": 0.876, "average_precision": 0.687, "card_precision_at_100": 0.303}
CALIBRATION_MODELS = ("logistic-regression", "gradient-boosting", "feed-forward", "gru-attention",
                      "transformer-none", "transformer-none-28d", "mlp-attention-28d")
# Results computed before card precision@k followed the Handbook's definition (2026-12-02:
# cards detected on earlier test days are left out) and not rerun since (K = 64 trains for
# ~25 min a fold): their CP@100 reads higher than the other rows'. `make study RERUN=1`
# recomputes everything.
EARLIER_CP = {"transformer-sinusoidal-k64"}
EARLIER_CP_NOTE = ("‡ card precision@100 under the earlier per-day definition (not the Handbook's), "
                   "not comparable with the other rows; AUC ROC and AP are unaffected.")


def load(results: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def ms(r: dict, key: str, noise: str | None = None) -> tuple[float, float]:
    vals = [(f["noise"][noise] if noise else f)[key] for f in r["folds"]]
    a = np.asarray(vals, np.float64)
    return float(a.mean()), float(a.std())


def fmt(m: tuple[float, float]) -> str:
    return f"{m[0]:.3f} ± {m[1]:.3f}"


def cost_cols(r: dict) -> list[str]:
    f0 = r["folds"][0]
    train = np.mean([f["train_seconds"] for f in r["folds"]])
    us = f0.get("onnx", {}).get("microseconds_per_tx_batch256_1thread")
    params = f0.get("parameters")
    return [f"{train:.1f}", f"{us:.1f}" if us is not None else "–", f"{params:,}" if params else "trees"]


def table(rs: dict, names: list[str], label: str = "model") -> list[str]:
    out = [f"| {label} | AUC ROC | average precision | card precision@100 | train s/fold | ONNX µs/tx | parameters |",
           "|---|---|---|---|---:|---:|---:|"]
    for n in names:
        if n in rs:
            r = rs[n]
            cells = [fmt(ms(r, k)) + (" ‡" if k == "card_precision_at_100" and n in EARLIER_CP else "")
                     for k, _ in METRICS]
            out.append(f"| {n} | " + " | ".join(cells) + " | " + " | ".join(cost_cols(r)) + " |")
    if EARLIER_CP & {n for n in names if n in rs}:
        out += ["", EARLIER_CP_NOTE]
    return out


def pooled_scenarios(r: dict) -> dict:
    acc: dict = {}
    for f in r["folds"]:
        for name, v in f["per_scenario"].items():
            a = acc.setdefault(name, {"n": 0, "review": 0.0, "decline": 0.0})
            a["n"] += v["n"]
            a["review"] += v["recall_at_review"] * v["n"]
            a["decline"] += v["recall_at_decline"] * v["n"]
    return {k: {"n": v["n"], "review": v["review"] / max(v["n"], 1), "decline": v["decline"] / max(v["n"], 1)}
            for k, v in acc.items()}


def calibration_plot(rs: dict, scores: Path, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fraudlib.metrics import brier, reliability

    fig, ax = plt.subplots(figsize=(6, 5), dpi=110)
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1, label="perfectly calibrated")
    rows = []
    for name in CALIBRATION_MODELS:
        files = sorted(scores.glob(f"{name}-fold*.npz"))
        if name not in rs or not files:
            continue
        parts = [np.load(f) for f in files]
        s = np.concatenate([p["score"] for p in parts]).astype(np.float64)
        y = np.concatenate([p["y"] for p in parts]).astype(np.float64)
        bins = reliability(y, s, bins=10)
        ax.plot([b["mean_score"] for b in bins], [b["fraud_rate"] for b in bins], marker="o", ms=3, label=name)
        rows.append(f"| {name} | {brier(y, s):.5f} | {s.mean():.4f} | {y.mean():.4f} |")
    ax.set_xlabel("mean predicted fraud probability (bin)")
    ax.set_ylabel("observed fraud rate (bin)")
    ax.set_title("Reliability, 4 test weeks pooled\n(bins: the bottom 90% of scores, then ever finer top "
                 "quantiles down to the top 0.05%)", fontsize=9)
    ax.legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    return ["| model | Brier score | mean score | fraud rate |", "|---|---:|---:|---:|", *rows]


def render(results: Path, scores: Path, docs: Path, order: list[str]) -> None:
    found = load(results)
    rs = {n: found[n] for n in order if n in found}
    if not rs:
        return
    any_r = next(iter(rs.values()))
    folds = any_r["folds"]
    L = []
    try:  # the results folder as the repository names it (training/results by default)
        src = results.resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        src = results
    L.append(f"Generated by `training/study.py` from `{src}/*.json` (data sha256 "
             f"`{any_r['data']['sha256'][:12]}…`, {any_r['data']['rows']:,} transactions). "
             f"Mean ± population std over {len(folds)} prequential folds; test weeks "
             + ", ".join(f"{f['test_days'][0]}..{f['test_days'][1]}" for f in folds) + ". "
             f"Each fold trains on 7 days, skips 7, tests on 7 with known-compromised cards removed "
             f"(on average {np.mean([f['test_removed_known_compromised'] for f in folds]):,.0f} test rows "
             f"removed per fold, leaving {np.mean([f['test_rows'] for f in folds]):,.0f} rows with "
             f"{np.mean([f['test_frauds'] for f in folds]):.0f} frauds). CP@100 upper bound (fewer than "
             f"100 compromised cards a day): {fmt(ms(any_r, 'card_precision_upper_bound'))}. "
             "Train time: wall seconds per fold on the 2-core machine, shared with other jobs, so "
             "compare orders of magnitude only. ONNX µs/tx: ONNX Runtime, 1 thread, batches of 256, "
             "measured on fold 0 during the study, with the same caveat (the production model alone, on a "
             "quieter machine: `export.ort_microseconds_per_tx_batch256_1thread` in its manifest).")
    L.append("")
    L.append("### All models")
    L.append("")
    main = [n for n, r in rs.items() if r["config"]["group"] in ("baseline", "model")]
    L += table(rs, main)
    L.append(f"| *Handbook best, its own data* | {HANDBOOK['auc_roc']:.3f} | {HANDBOOK['average_precision']:.3f} | "
             f"{HANDBOOK['card_precision_at_100']:.3f} | | | |")
    L.append("")

    base = [n for n in main if rs[n]["config"]["group"] == "baseline"]
    if base:
        best = {k: max(base, key=lambda n: ms(rs[n], k)[0]) for k, _ in METRICS}
        L.append("Margin over the best baseline (per metric): mean of the per-fold differences ± their "
                 "std, and the folds won. **yes** marks the issue's bar: the mean margin exceeds one fold "
                 "standard deviation of both models. The fold std is mostly week-to-week variation that "
                 "all models share; the std of the paired differences is the tighter measure.")
        L.append("")
        L.append("| model | " + " | ".join(f"{lbl} vs {best[k]}" for k, lbl in METRICS) + " |")
        L.append("|---|" + "---|" * len(METRICS))
        for n in main:
            if rs[n]["config"]["group"] != "model":
                continue
            cells = []
            for k, _ in METRICS:
                a = np.array([f[k] for f in rs[n]["folds"]])
                b = np.array([f[k] for f in rs[best[k]]["folds"]])
                if len(a) != len(b):
                    cells.append("–")
                    continue
                d = float((a - b).mean())
                ok = d > max(a.std(), b.std())
                cells.append(f"{d:+.3f} ± {float((a - b).std()):.3f} (won {int((a > b).sum())}/{len(a)})"
                             f"{' **yes**' if ok else ''}")
            L.append(f"| {n} | " + " | ".join(cells) + " |")
        L.append("")

    for group, title in (("history length", "History length K (transformer, sinusoidal)"),
                         ("fusion", "How position enters attention (transformer, sinusoidal, K = 16)"),
                         ("training window", "Training window: 28 days instead of the Handbook's 7 (same test weeks)")):
        names = [n for n, r in rs.items() if r["config"]["group"] == group]
        if group == "history length":
            names = sorted(names + ["transformer-sinusoidal"], key=lambda n: rs[n]["config"]["k"] if n in rs else 0)
        elif group == "fusion":
            names = ["transformer-sinusoidal"] + names
        else:
            names = ["gradient-boosting", "transformer-sinusoidal", "transformer-none"] + names
        L.append(f"### {title}")
        L.append("")
        L += table(rs, names, "variant")
        L.append("")

    noisy = [n for n, r in rs.items() if "noise" in r["folds"][0]]
    if noisy:
        L.append("### Noise: a share of each history replaced by random transactions of other cards (test time)")
        L.append("")
        L.append("| model | AP clean | AP 25% | AP 50% | CP@100 clean | CP@100 25% | CP@100 50% |")
        L.append("|---|---|---|---|---|---|---|")
        for n in noisy:
            r = rs[n]
            mark = " ‡" if n in EARLIER_CP else ""
            L.append(f"| {n} | {fmt(ms(r, 'average_precision'))} | {fmt(ms(r, 'average_precision', '0.25'))} | "
                     f"{fmt(ms(r, 'average_precision', '0.5'))} | {fmt(ms(r, 'card_precision_at_100'))}{mark} | "
                     f"{fmt(ms(r, 'card_precision_at_100', '0.25'))}{mark} | "
                     f"{fmt(ms(r, 'card_precision_at_100', '0.5'))}{mark} |")
        if EARLIER_CP & set(noisy):
            L += ["", EARLIER_CP_NOTE]
        L.append("")

    L.append("### Per-scenario recall at the operating point (review = top 1.5%, decline = top 0.2%)")
    L.append("")
    L.append("Thresholds are each model's own score quantiles on its training window; recall pooled over the "
             "4 test weeks (frauds of the scenario scored at or above the threshold).")
    L.append("")
    scen = sorted({s for r in rs.values() for f in r["folds"] for s in f["per_scenario"]})
    L.append("| model | " + " | ".join(f"{s} review / decline" for s in scen) + " |")
    L.append("|---|" + "---|" * len(scen))
    for n in main:
        p = pooled_scenarios(rs[n])
        L.append(f"| {n} | " + " | ".join(
            f"{p[s]['review']:.2f} / {p[s]['decline']:.2f}" if s in p else "–" for s in scen) + " |")
    L.append("")

    L.append("### Calibration")
    L.append("")
    L.append("![reliability curves](img/fraud-calibration.png)")
    L.append("")
    L += calibration_plot(rs, scores, docs / "img" / "fraud-calibration.png")
    L.append("")

    path = docs / "MODELS.md"
    text = path.read_text() if path.exists() else f"# Models\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(head + BEGIN + "\n" + "\n".join(L) + "\n" + END + tail)
    print(f"wrote {path}")
