"""Derive models/fraud-attention-int8 from models/fraud-attention: int8 weights. A second,
genuinely different fraud model directory, meant as a shadow/challenger example; it is not
trained, only derived. The committed directory is the --weight-only variant (batch-independent,
see below); without the flag, ONNX Runtime's quantize_dynamic, kept for comparison.

    .venv/bin/python training/quantize.py --weight-only             # model.onnx, manifest.json, golden.json, README.md
    .venv/bin/python training/quantize.py --weight-only --evaluate  # the same, plus the engine's own evaluation

Without --evaluate it needs only numpy, onnx and onnxruntime (no PyTorch):
  * onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=False,
    reduce_range=False), default op types (or --matmul-only). The quantizer turns the Gemm
    nodes into MatMul + Add and quantizes every MatMul with a constant weight: int8 weights
    (per tensor), uint8 activations quantized per tensor at run time (DynamicQuantizeLinear).
    No quantization pre-processing (quant_pre_process): the graph stays plain ONNX opset 17.
  * the quantization runs twice; the two files must be byte-identical (exit 1 otherwise);
  * golden.json: the float model's golden "inputs" and "rows", "outputs" recomputed by
    onnxruntime on the int8 model (one batch of all rows, one thread), the same layout;
  * manifest.json: the float manifest with name, sha256, "derived_from", "quantization"
    (what was quantized, differences from the float model on the golden rows, and how much a
    row's outputs depend on the other rows of its batch) in place of the float export's
    numbers; the float model's "metrics" are dropped (or re-measured, --evaluate);
  * README.md (generated: edit this script, not the file);
  * the contract invariants of training/export_check.py are checked on the new golden rows
    and reported; a failure is printed, not fatal (run export_check.py for the verdict).

Dynamic quantization scales activations per tensor, i.e. per batch: a row's outputs depend
on the rows scored with it (up to 0.0067 in score on the golden rows). The engine checks
golden rows one at a time in places (`riskstream check-config`, `serve`'s batch self-test and
per-row requests), and those checks fail for it. --weight-only instead keeps the same int8
weights behind DequantizeLinear nodes with float32 arithmetic: batch-independent, no int8
kernels (numpy + onnx only).

--evaluate runs the already built engine (--riskstream, default
$CARGO_TARGET_DIR/debug/riskstream; it never builds) and needs pyarrow (in .venv):
  * "metrics": `riskstream evaluate` with its default protocol on the float model's own
    training data (`riskstream simulate` with the manifest's training_data.simulate), for
    both models: the numbers that are comparable with the float manifest's "metrics";
  * "shadow_evaluation": `riskstream simulate --transactions 200000 --seed 7` and
    `riskstream evaluate --folds 2` for both models, and, from `riskstream features` of the
    same file, the score differences int8 vs float on the evaluator's test rows.
The work files go to --workdir (default /tmp) and are kept.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = ("score", "history_attention", "feature_attention")
NAME = "fraud-attention-int8"
EVAL_BATCH = 4096  # SCORE_BATCH_ROWS of src/evaluate/mod.rs
MS_PER_DAY = 86_400_000


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feed: dict) -> dict:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))


def max_mean(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max": float(d.max()), "mean": float(d.mean())}


def quantize(src: Path, dst: Path, matmul_only: bool, weight_only: bool) -> None:
    if weight_only:
        quantize_weights_only(src, dst)
        return
    kw = {"op_types_to_quantize": ["MatMul"]} if matmul_only else {}
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=False, reduce_range=False, **kw)


def quantize_weights_only(src: Path, dst: Path) -> None:
    """The same int8 weights as quantize_dynamic (symmetric, per tensor: scale = max|w| / 127,
    round half to even), each behind a DequantizeLinear: the arithmetic stays float32, so a
    row's outputs do not depend on the rest of its batch. Only weights whose every consumer
    is the constant B input of a MatMul or Gemm are quantized (the ones quantize_dynamic
    quantizes here)."""
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    uses = collections.defaultdict(list)
    for n in g.node:
        for k, name in enumerate(n.input):
            uses[name].append((n.op_type, k))
    weights = [name for name in inits
               if uses[name] and all(op in ("MatMul", "Gemm") and k == 1 for op, k in uses[name])
               and onnx.helper.tensor_dtype_to_np_dtype(inits[name].data_type) == np.float32]
    dq = []
    for name in weights:  # initializer order: deterministic
        w = numpy_helper.to_array(inits[name])
        scale = np.float32(np.abs(w).max() / 127.0)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        g.initializer.remove(inits[name])
        g.initializer.extend([numpy_helper.from_array(q, f"{name}_quantized"),
                              numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), f"{name}_zero_point")])
        dq.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
                                   [name], name=f"{name}_DequantizeLinear"))
    nodes = dq + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    m.producer_name, m.producer_version = "training/quantize.py --weight-only", "1"
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))


def op_counts(path: Path) -> collections.Counter:
    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def invariants(feed: dict, outs: dict) -> list[str]:
    """training/export_check.py's contract checks, each with how far off it is."""
    mask = feed["history_mask"]
    score, ha, fa = outs["score"], outs["history_attention"], outs["feature_attention"]
    has = mask.sum(1) > 0
    problems = []
    if not np.all((score >= 0) & (score <= 1)):
        problems.append(f"score outside [0, 1]: min {score.min()}, max {score.max()}")
    if not np.all(ha[mask == 0] == 0):
        problems.append(f"history_attention non-zero at padding: max {np.abs(ha[mask == 0]).max():.3g}")
    if has.any() and not np.allclose(ha[has].sum(1), 1.0, atol=1e-5):
        problems.append(f"history_attention sums off 1 by {np.abs(ha[has].sum(1) - 1).max():.3g}")
    if not np.allclose(fa.sum(1), 1.0, atol=1e-5):
        problems.append(f"feature_attention sums off 1 by {np.abs(fa.sum(1) - 1).max():.3g}")
    return problems


def batch_dependence(sess: ort.InferenceSession, feed: dict) -> dict:
    """Max abs difference, per output, between each row run alone and the same row in the batch."""
    batched = run(sess, feed)
    worst = {n: 0.0 for n in OUTPUTS}
    for r in range(len(feed["features"])):
        alone = run(sess, {k: v[r:r + 1] for k, v in feed.items()})
        for n in OUTPUTS:
            worst[n] = max(worst[n], float(np.abs(alone[n] - batched[n][r:r + 1]).max()))
    return worst


# -- the engine's evaluation (--evaluate) -------------------------------------------------

def riskstream_cmd(binary: Path, args: list[str], log: list[str]) -> None:
    shown = "riskstream " + " ".join(shlex.quote(a) for a in args)
    print(f"$ {shown}", flush=True)
    log.append(shown)
    r = subprocess.run([str(binary), *args], cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{shown} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")


def evaluate(binary: Path, model: Path, data: Path, out: Path, extra: list[str], log: list[str]) -> dict:
    riskstream_cmd(binary, ["evaluate", "--model", rel(model), "--data", str(data), *extra, "--json", str(out)], log)
    return json.loads(out.read_text())


def load_features(path: Path) -> dict:
    import pyarrow.parquet as pq  # only for --evaluate

    names = json.loads((ROOT / "models/fraud-attention/manifest.json").read_text())["feature_names"]
    t = pq.read_table(path, columns=["ts", "card_id", *names, "history", "history_mask", "is_fraud"])
    n = t.num_rows
    ts = t["ts"].cast("int64").to_numpy()
    order = np.argsort(ts, kind="stable")  # the evaluator sorts by time, stable
    feats = np.stack([t[c].to_numpy().astype(np.float32) for c in names], axis=1)
    mask = np.asarray(t["history_mask"].combine_chunks().flatten(), np.float32).reshape(n, -1)
    hist = np.asarray(t["history"].combine_chunks().flatten(), np.float32).reshape(n, mask.shape[1], -1)
    card = np.asarray(t["card_id"].cast("string").to_pylist(), dtype=object)
    y = np.asarray(t["is_fraud"].fill_null(False).to_pylist(), dtype=bool)
    return {"features": feats[order], "history": hist[order], "history_mask": mask[order],
            "day": ts[order] // MS_PER_DAY, "card": card[order], "y": y[order]}


def test_rows(d: dict, fold: dict, protocol: dict) -> np.ndarray:
    """The evaluator's test rows of one fold: the test days, minus cards known compromised
    (a fraud from the start of the training window up to t - delay - 1)."""
    t0 = int(np.datetime64(fold["test_start"], "D").astype(np.int64))
    lo = t0 - protocol["delay_days"] - protocol["train_days"]
    out = []
    for t in range(t0, t0 + protocol["test_days"]):
        known = np.unique(d["card"][d["y"] & (d["day"] >= lo) & (d["day"] <= t - protocol["delay_days"] - 1)])
        rows = np.flatnonzero(d["day"] == t)
        out.append(rows[~np.isin(d["card"][rows], known)])
    return np.concatenate(out)


def auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks for ties
    _, start, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    pos = y.sum()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def score_in_chunks(sess, d: dict, idx: np.ndarray, chunk: int) -> np.ndarray:
    out = []
    for i in range(0, len(idx), chunk):
        j = idx[i:i + chunk]
        out.append(run(sess, {k: d[k][j] for k in ("features", "history", "history_mask")})["score"])
    return np.concatenate(out)


def us_per_tx(sessions: dict, d: dict, idx: np.ndarray, rounds: int = 7, seconds: float = 0.3) -> dict:
    """Microseconds per transaction at batch 256, one thread: the best of `rounds` rounds,
    the models taking turns (a shared machine's noise hits both alike)."""
    feed = {k: d[k][idx[:256]] for k in ("features", "history", "history_mask")}
    best = {name: float("inf") for name in sessions}
    for s in sessions.values():
        run(s, feed)
    for _ in range(rounds):
        for name, s in sessions.items():
            n, t = 0, time.perf_counter()
            while time.perf_counter() - t < seconds:
                s.run(None, feed)
                n += 1
            best[name] = min(best[name], (time.perf_counter() - t) / (n * 256) * 1e6)
    return {name: round(v, 2) for name, v in best.items()}


def engine_evaluation(a, src: Path, out: Path, float_manifest: dict) -> tuple[dict, dict]:
    binary = Path(a.riskstream or Path(os.environ.get(
        "CARGO_TARGET_DIR", Path.home() / ".cache/riskstream/target")) / "debug/riskstream")
    if not binary.is_file():
        sys.exit(f"{binary}: no riskstream binary (source scripts/env.sh; build it, or pass --riskstream)")
    w = Path(a.workdir)
    w.mkdir(parents=True, exist_ok=True)
    log: list[str] = []

    # 1. The float manifest's own protocol and data: comparable with its "metrics".
    sim = float_manifest["training_data"]["simulate"]
    train_data = w / f"train-{sim['transactions'] // 1000}k-seed{sim['seed']}.parquet"
    riskstream_cmd(binary, ["simulate", "--transactions", str(sim["transactions"]), "--seed", str(sim["seed"]),
                            "--out", str(train_data)], log)
    m_float = evaluate(binary, src, train_data, w / "metrics-float.json", [], log)
    m_int8 = evaluate(binary, out, train_data, w / "metrics-int8.json", [], log)
    fm = float_manifest["metrics"]
    f0 = m_float["folds"][0]
    if f0["test_start"] != fm["test_window"][0] or f0["rows"] != fm["test_rows"] or \
            abs(f0["auc_roc"] - fm["auc_roc"]) > 2e-6:
        print(f"WARNING: riskstream evaluate does not reproduce the float manifest's metrics "
              f"({f0['test_start']} {f0['rows']} rows auc {f0['auc_roc']}, manifest {fm['test_window'][0]} "
              f"{fm['test_rows']} rows auc {fm['auc_roc']})", file=sys.stderr)
    i0 = m_int8["folds"][0]
    metrics = {
        "protocol": fm["protocol"] + " (measured by riskstream evaluate, default protocol)",
        "measured_on": f"the float model's training_data: riskstream simulate --transactions "
                       f"{sim['transactions']} --seed {sim['seed']}",
        "auc_roc": round(i0["auc_roc"], 6),
        "average_precision": round(i0["average_precision"], 6),
        "card_precision_at_100": round(i0["card_precision_at_100"], 6),
        "card_precision_at_100_upper_bound": round(i0["card_precision_upper_bound"], 6),
        "test_window": [i0["test_start"], i0["test_end"]],
        "test_rows": i0["rows"],
        "test_frauds": i0["frauds"],
        "test_removed_known_compromised": i0["removed_known_compromised"],
        "per_scenario": i0["per_scenario"],
        "float_model_same_run": {k: round(f0[k], 6) for k in ("auc_roc", "average_precision", "card_precision_at_100")},
        "commands": log[:],
    }

    # 2. The shadow comparison: fresh data, 2 folds, both models, identical options.
    log2: list[str] = []
    eval_data = w / f"eval-{a.eval_transactions // 1000}k.parquet"
    riskstream_cmd(binary, ["simulate", "--transactions", str(a.eval_transactions), "--seed", str(a.eval_seed),
                            "--out", str(eval_data)], log2)
    opts = ["--folds", str(a.eval_folds)]
    e_float = evaluate(binary, src, eval_data, w / "eval-float.json", opts, log2)
    e_int8 = evaluate(binary, out, eval_data, w / "eval-int8.json", opts, log2)
    feats_path = w / f"eval-{a.eval_transactions // 1000}k-features.parquet"
    riskstream_cmd(binary, ["features", "--in", str(eval_data), "--out", str(feats_path), "--history-len", "16"], log2)

    d = load_features(feats_path)
    s_float, s_int8 = session(src / "model.onnx"), session(out / "model.onnx")
    # As the evaluator scores: every row of every test window (known-compromised cards
    # included), in time order, in chunks of EVAL_BATCH; the folds then pick their rows.
    test_days = e_float["protocol"]["test_days"]
    starts = [int(np.datetime64(f["test_start"], "D").astype(np.int64)) for f in e_float["folds"]]
    tested = np.flatnonzero(np.any([(d["day"] >= t) & (d["day"] < t + test_days) for t in starts], axis=0))
    full_f, full_i, full_i1 = (np.full(len(d["day"]), np.nan, np.float32) for _ in range(3))
    full_f[tested] = score_in_chunks(s_float, d, tested, EVAL_BATCH)
    full_i[tested] = score_in_chunks(s_int8, d, tested, EVAL_BATCH)
    full_i1[tested] = score_in_chunks(s_int8, d, tested, 1)
    per_fold, all_f, all_i = [], [], []
    for fold_f, fold_i in zip(e_float["folds"], e_int8["folds"]):
        idx = test_rows(d, fold_f, e_float["protocol"])
        if len(idx) != fold_f["rows"]:
            print(f"WARNING: fold {fold_f['test_start']}: {len(idx)} test rows here, the evaluator had "
                  f"{fold_f['rows']}", file=sys.stderr)
        sf, si, si_alone = full_f[idx], full_i[idx], full_i1[idx]
        y = d["y"][idx]
        per_fold.append({
            "test_window": [fold_f["test_start"], fold_f["test_end"]], "rows": int(len(idx)),
            "score_int8_vs_float": max_mean(si, sf),
            "score_int8_alone_vs_int8_as_evaluated": max_mean(si_alone, si),
            "auc_roc_recomputed": {"float": round(auc(y, sf), 6), "int8": round(auc(y, si), 6)},
            "auc_roc_evaluator": {"float": round(fold_f["auc_roc"], 6), "int8": round(fold_i["auc_roc"], 6)},
            "auc_roc_int8_rows_alone": round(auc(y, si_alone), 6),
            "review_alerts": {"float": int((sf >= float_manifest["default_thresholds"]["review"]).sum()),
                              "int8": int((si >= float_manifest["default_thresholds"]["review"]).sum())},
            "decline_alerts": {"float": int((sf >= float_manifest["default_thresholds"]["decline"]).sum()),
                               "int8": int((si >= float_manifest["default_thresholds"]["decline"]).sum())},
            "rows_crossing_review": int(((sf >= float_manifest["default_thresholds"]["review"]) !=
                                         (si >= float_manifest["default_thresholds"]["review"])).sum()),
            "rows_crossing_decline": int(((sf >= float_manifest["default_thresholds"]["decline"]) !=
                                          (si >= float_manifest["default_thresholds"]["decline"])).sum()),
        })
        for name, mine, theirs in (("float", sf, fold_f), ("int8", si, fold_i)):
            if abs(auc(y, mine) - theirs["auc_roc"]) > 1e-6:
                print(f"WARNING: fold {fold_f['test_start']} {name}: AUC ROC {auc(y, mine):.6f} from these "
                      f"scores, the evaluator's {theirs['auc_roc']:.6f}: not the evaluator's scores", file=sys.stderr)
        all_f.append(sf)
        all_i.append(si)
    summary = lambda r: {k: round(r["mean"][k], 6) for k in ("auc_roc", "average_precision", "card_precision_at_100")}
    per_fold_metrics = lambda r: [{k: round(f[k], 6) for k in ("auc_roc", "average_precision", "card_precision_at_100")}
                                  | {"test_window": [f["test_start"], f["test_end"]]} for f in r["folds"]]
    shadow = {
        "data": f"riskstream simulate --transactions {a.eval_transactions} --seed {a.eval_seed}",
        "folds": a.eval_folds,
        "mean": {"float": summary(e_float), "int8": summary(e_int8)},
        "std": {"float": {k: round(e_float["std"][k], 6) for k in summary(e_float)},
                "int8": {k: round(e_int8["std"][k], 6) for k in summary(e_int8)}},
        "per_fold": {"float": per_fold_metrics(e_float), "int8": per_fold_metrics(e_int8)},
        "score_int8_vs_float": max_mean(np.concatenate(all_i), np.concatenate(all_f)),
        "score_diff_per_fold": per_fold,
        "ort_microseconds_per_tx_batch256_1thread": us_per_tx({"float": s_float, "int8": s_int8}, d, tested),
        "commands": log2,
    }
    return metrics, shadow


# -- README ------------------------------------------------------------------------------------

def fmt(x: float) -> str:
    return f"{x:.3g}" if x < 1e-3 else f"{x:.4f}"


def readme(m: dict, fm: dict, src_rel: str, sizes: tuple[int, int]) -> str:
    q = m["quantization"]
    g = q["vs_float_on_golden"]
    bd = q["batch_dependence_on_golden"]
    wo = "--weight-only" in q["script"]
    flag = " --weight-only" if wo else (" --matmul-only" if "--matmul-only" in q["script"] else "")
    if wo:
        how = [
            "* The same int8 weights `onnxruntime.quantization.quantize_dynamic` would give (symmetric, per "
            "tensor, scale = max|w| / 127) for every weight that is the constant input of a `MatMul` or "
            f"`Gemm`: {q['nodes_quantized']} weights, each stored as int8 + scale and restored by a "
            "`DequantizeLinear` node. The arithmetic stays float32 (no int8 kernels), so a row's outputs do "
            "not depend on the rest of its batch.",
            f"* Left in float32: {q['left_in_float']}.",
        ]
    else:
        how = [
            f"* `onnxruntime.quantization.quantize_dynamic` (onnxruntime {q['onnxruntime']}, onnx {q['onnx']}), "
            f"`weight_type=QInt8`, per tensor, no reduce_range, op types: {q['op_types_to_quantize']}. "
            "The quantizer rewrites the 3 `Gemm` nodes as `MatMul` + `Add` and quantizes every `MatMul` whose "
            f"second input is a constant: {q['nodes_quantized']} `MatMulInteger` nodes with int8 weights, their "
            "inputs quantized to uint8 at run time, per tensor (`DynamicQuantizeLinear`).",
            f"* Left in float32: {q['left_in_float']}.",
        ]
    if wo:
        batch = [
            "**Batch independence.** Each golden row run alone differs from the same row in the 8-row batch "
            "by at most " + ", ".join(f"{bd[n]:.2g} ({n})" for n in OUTPUTS) + ", as the float model: the "
            "engine's golden checks (one row at a time in `riskstream check-config`, the batch self-test "
            "and per-row requests of `riskstream serve`) hold, and dynamic batching stays on. "
            "(`training/quantize.py` without `--weight-only` gives the quantize_dynamic variant instead: "
            "int8 kernels, but batch-dependent outputs that fail those checks.)",
            "",
        ]
    else:
        batch = [
            "**Batch dependence.** Dynamic quantization picks one activation scale per tensor, i.e. per "
            "*batch*: a row's outputs depend on the other rows scored with it. On the golden rows, each row "
            "run alone differs from the same row in the 8-row batch by up to "
            + ", ".join(f"{bd[n]:.2g} ({n})" for n in OUTPUTS)
            + " (float model: ~1e-7). Consequences: `riskstream check-config` rejects this directory as "
            "`[model]` or `[shadow]` (it checks golden.json one row at a time, tolerance 1e-4); `riskstream "
            "serve` turns dynamic batching off for it (batch self-test, tolerance 1e-4) and its single-row "
            "answers differ from golden.json's batched outputs by more than the 1e-5 that "
            "`integration-tests/triton_client.py` allows; in the stream, a transaction's score depends on its "
            "micro-batch, so a replay need not give the same bits. `training/quantize.py --weight-only` gives "
            "a batch-independent variant (same int8 weights, float32 arithmetic).",
            "",
        ]
    lines = [
        f"# {NAME}",
        "",
        f"An **int8 {'weight-only' if wo else 'dynamic'}-quantized copy of `{src_rel}` v{fm['version']}**, "
        "kept as a second, genuinely "
        "different fraud model directory: an example of a **shadow / challenger** model (score the same "
        "traffic with both, compare, decide). It is not trained: the weights are the float model's, "
        "rounded to int8. Same IO contract, feature names, history layout and default thresholds as the "
        "float model; a different `model.onnx` (different graph, sha256 and outputs).",
        "",
        "Generated by `training/quantize.py` (this file too: edit the script, not this file).",
        "",
        "## How it is produced",
        "",
        "```sh",
        f".venv/bin/python training/quantize.py{flag}   # model.onnx, manifest.json, golden.json, README.md",
        f". scripts/env.sh && .venv/bin/python training/quantize.py{flag} --evaluate   # + the engine's evaluation below",
        ".venv/bin/python training/export_check.py models/fraud-attention-int8",
        "```",
        "",
        *how,
        f"* `model.onnx`: {sizes[1]:,} bytes (float: {sizes[0]:,}). Deterministic: the script quantizes "
        "twice and requires byte-identical files.",
        "* `golden.json`: the float model's 8 golden rows (same `inputs` and `rows`), `outputs` recomputed "
        "by onnxruntime on this model, all rows in one batch.",
        "* `manifest.json`: the float manifest, with this name and sha256, `derived_from`, and "
        "`quantization` in place of the float export's numbers. `training_data`, `training`, "
        "`architecture` and `seed` describe how the *source weights* were trained. "
        + ("`metrics` is re-measured for this model (see below); the float model's attention summaries, "
           "thresholded alert rates and prequential study are not carried over."
           if "metrics" in m else
           "The float model's `metrics` are not copied (run with `--evaluate` to re-measure)."),
        "",
        "## How it differs from the float model",
        "",
        "On the 8 golden rows (one batch), max / mean absolute difference from the float model's golden outputs:",
        "",
        "| output | max abs diff | mean abs diff |",
        "|---|---|---|",
        *[f"| {n} | {fmt(g[n]['max'])} | {fmt(g[n]['mean'])} |" for n in OUTPUTS],
        "",
        "Contract invariants (export_check.py) on the int8 golden rows: "
        + ("all hold" if not q["contract_invariant_problems"] else "; ".join(q["contract_invariant_problems"]))
        + f" (feature_attention sums deviate from 1 by at most {q['feature_attention_sum_max_dev']:.2g}, "
          f"history_attention by {q['history_attention_sum_max_dev']:.2g}"
        + ("; padding stays exactly 0)." if not q["contract_invariant_problems"] else ")."),
        "",
        *batch,
    ]
    if "metrics" in m:
        mt = m["metrics"]
        fl = mt["float_model_same_run"]
        lines += [
            "## Quality, measured by the engine (`riskstream evaluate`)",
            "",
            "### On the float model's own protocol and test week",
            "",
            f"Data: `{mt['measured_on'].split(': ', 1)[1]}`, default protocol (7 train / 7 delay / 7 test "
            f"days), test window {mt['test_window'][0]}..{mt['test_window'][1]}, {mt['test_rows']} rows, "
            f"{mt['test_frauds']} frauds. These are the numbers the float manifest's `metrics` report.",
            "",
            "| model | AUC ROC | average precision | card precision@100 |",
            "|---|---|---|---|",
            *[f"| {who} | {r['auc_roc']:.6f} | {r['average_precision']:.6f} | {r['card_precision_at_100']:.6f} |"
              for who, r in (("fraud-attention (float32)", fl), ("fraud-attention-int8", mt))],
            "",
            "```sh",
            ". scripts/env.sh; R=$CARGO_TARGET_DIR/debug/riskstream",
            *[f"$R {c.split(' ', 1)[1]}" for c in mt["commands"]],
            "```",
            "",
        ]
    if "shadow_evaluation" in m:
        s = m["shadow_evaluation"]
        mf, mi, sf, si = s["mean"]["float"], s["mean"]["int8"], s["std"]["float"], s["std"]["int8"]
        ks = ("auc_roc", "average_precision", "card_precision_at_100")
        lines += [
            f"### Fresh data, {s['folds']} folds",
            "",
            f"Data: `{s['data']}`; `--folds {s['folds']}`, everything else default, identical for both "
            "models. Mean ± population std over the folds:",
            "",
            "| model | AUC ROC | average precision | card precision@100 |",
            "|---|---|---|---|",
            "| fraud-attention (float32) | " + " | ".join(f"{mf[k]:.4f} ± {sf[k]:.4f}" for k in ks) + " |",
            "| fraud-attention-int8 | " + " | ".join(f"{mi[k]:.4f} ± {si[k]:.4f}" for k in ks) + " |",
            "",
            "Per fold:",
            "",
            "| test window | model | AUC ROC | average precision | card precision@100 |",
            "|---|---|---|---|---|",
        ]
        for ff, fi in zip(s["per_fold"]["float"], s["per_fold"]["int8"]):
            w = f"{ff['test_window'][0]}..{ff['test_window'][1]}"
            lines.append(f"| {w} | float32 | " + " | ".join(f"{ff[k]:.6f}" for k in ks) + " |")
            lines.append(f"| {w} | int8 | " + " | ".join(f"{fi[k]:.6f}" for k in ks) + " |")
        sd = s["score_int8_vs_float"]
        lines += [
            "",
            "```sh",
            ". scripts/env.sh; R=$CARGO_TARGET_DIR/debug/riskstream",
            *[f"$R {c.split(' ', 1)[1]}" for c in s["commands"]],
            "```",
            "",
            "Scores on the evaluator's test rows, from `riskstream features` of the same file, batched as "
            f"the evaluator batches them (every test-window row in time order, chunks of {EVAL_BATCH}; the "
            "AUC ROC recomputed from these scores equals the evaluator's, so these are its scores): int8 vs "
            f"float max abs diff {sd['max']:.4g}, mean {sd['mean']:.3g}. Thresholds are the default ones "
            "(review / decline); \"alone\" is each row scored as a batch of one.",
            "",
            "| " + " | ".join(["test window", "rows", "max abs score diff", "mean abs score diff",
                                "int8 alone vs int8 as evaluated (max / mean)", "review alerts float / int8",
                                "decline alerts float / int8", "rows crossing review / decline",
                                "int8 AUC ROC as evaluated / rows alone"]) + " |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in s["score_diff_per_fold"]:
            d, b = p["score_int8_vs_float"], p["score_int8_alone_vs_int8_as_evaluated"]
            lines.append(
                f"| {p['test_window'][0]}..{p['test_window'][1]} | {p['rows']} | {d['max']:.4g} | {d['mean']:.3g} | "
                f"{b['max']:.3g} / {b['mean']:.3g} | {p['review_alerts']['float']} / {p['review_alerts']['int8']} | "
                f"{p['decline_alerts']['float']} / {p['decline_alerts']['int8']} | "
                f"{p['rows_crossing_review']} / {p['rows_crossing_decline']} | "
                f"{p['auc_roc_evaluator']['int8']:.6f} / {p['auc_roc_int8_rows_alone']:.6f} |")
        t = s["ort_microseconds_per_tx_batch256_1thread"]
        lines += [
            "",
            f"Speed (onnxruntime from Python, batch 256, one thread, this machine): float {t['float']} µs/tx, "
            f"int8 {t['int8']} µs/tx (best of 7 alternating rounds; noisy on a busy machine, repeat before "
            "reading anything into it). The model "
            "is tiny (26k parameters, d_model 32) and much of its time goes to ops quantization does not "
            "touch: it is here as an example of a challenger, not as an optimisation.",
            "",
        ]
    lines += [
        "## Use",
        "",
        "The default thresholds are the float model's, not re-tuned: int8 scores move slightly, so alert "
        "rates at those thresholds move too (table above). As a challenger, compare its decisions with the "
        "float model's on the same traffic before promoting it; if promoted, retune the thresholds on its "
        "own scores.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(ROOT / "models/fraud-attention"))
    ap.add_argument("--out", default=str(ROOT / "models" / NAME))
    ap.add_argument("--matmul-only", action="store_true",
                    help="op_types_to_quantize=['MatMul'] (the default op types give the same file with "
                         "onnxruntime 1.32 on this graph)")
    ap.add_argument("--weight-only", action="store_true",
                    help="instead of quantize_dynamic: the same int8 weights behind DequantizeLinear, float32 "
                         "arithmetic (batch-invariant outputs; see the module docstring)")
    ap.add_argument("--evaluate", action="store_true", help="also run the engine's evaluation (see above)")
    ap.add_argument("--riskstream", help="the riskstream binary (default $CARGO_TARGET_DIR/debug/riskstream)")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--eval-transactions", type=int, default=200_000)
    ap.add_argument("--eval-seed", type=int, default=7)
    ap.add_argument("--eval-folds", type=int, default=2)
    a = ap.parse_args()
    if a.weight_only and a.matmul_only:
        ap.error("--matmul-only is for quantize_dynamic; --weight-only quantizes MatMul/Gemm weights only anyway")
    src, out = Path(a.src), Path(a.out)

    fm = json.loads((src / "manifest.json").read_text())
    fg = json.loads((src / "golden.json").read_text())
    float_sha = sha256(src / "model.onnx")
    if float_sha != fm["sha256"]:
        sys.exit(f"{src}/model.onnx is {float_sha}, its manifest says {fm['sha256']}")

    # Quantize twice; the bytes must agree.
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"
        quantize(src / "model.onnx", first, a.matmul_only, a.weight_only)
        quantize(src / "model.onnx", second, a.matmul_only, a.weight_only)
        if first.read_bytes() != second.read_bytes():
            sys.exit("the quantization is not deterministic here: two runs gave different files")
        out.mkdir(parents=True, exist_ok=True)
        (out / "model.onnx").write_bytes(first.read_bytes())
    int8_sha = sha256(out / "model.onnx")
    print(f"wrote {rel(out / 'model.onnx')} ({(out / 'model.onnx').stat().st_size} B, sha256 {int8_sha}); "
          "two quantization runs gave identical bytes")

    before, after = op_counts(src / "model.onnx"), op_counts(out / "model.onnx")
    float_left = {op: after[op] for op in ("MatMul", "Gemm", "Einsum") if after[op]}

    feed = {k: np.asarray(v, dtype=np.float32) for k, v in fg["inputs"].items()}
    s_int8 = session(out / "model.onnx")
    outs = run(s_int8, feed)
    if list(outs) != list(OUTPUTS) or list(fg["outputs"]) != list(OUTPUTS):
        sys.exit(f"outputs {list(outs)} / golden {list(fg['outputs'])}, expected {list(OUTPUTS)}")
    vs_float = {n: max_mean(outs[n], np.asarray(fg["outputs"][n], np.float32)) for n in OUTPUTS}
    problems = invariants(feed, outs)
    has = feed["history_mask"].sum(1) > 0
    bd = batch_dependence(s_int8, feed)
    bd_float = batch_dependence(session(src / "model.onnx"), feed)
    print("int8 vs float on the golden rows:", json.dumps(vs_float))
    print("row alone vs in the golden batch, int8:", json.dumps(bd), " float:", json.dumps(bd_float))
    print("contract invariants:", "ok" if not problems else "; ".join(problems))

    # The float manifest's inputs are byte-identical after a JSON round trip (floats repr exactly).
    (out / "golden.json").write_text(json.dumps({
        "inputs": fg["inputs"],
        "outputs": {n: outs[n].tolist() for n in OUTPUTS},
        "rows": fg["rows"]}) + "\n")

    opset = next(o.version for o in onnx.load(str(out / "model.onnx")).opset_import if o.domain in ("", "ai.onnx"))
    if a.weight_only:
        quantization = {
            "tool": "training/quantize.py --weight-only (numpy + onnx; no onnxruntime.quantization)",
            "script": "training/quantize.py --weight-only",
            "onnx": onnx.__version__,
            "opset": opset,
            "weight_type": "int8, symmetric, per tensor (scale = max|w| / 127): the values quantize_dynamic "
                           "gives these weights",
            "activation_type": "float32: each int8 weight goes through a DequantizeLinear, the MatMul/Gemm "
                               "arithmetic stays float32",
            "nodes_quantized": after["DequantizeLinear"],
            "nodes_before": {op: before[op] for op in ("MatMul", "Gemm", "Einsum")},
            "nodes_after": {op: after[op] for op in ("DequantizeLinear", "MatMul", "Gemm", "Einsum")},
            "left_in_float": "every activation; the weights of the Einsum of the per-feature embedding "
                             "(FeatureTokens.hmat) and "
                             "the per-feature token weights (element-wise Mul/Add), LayerNormalization, biases",
        }
    else:
        quantization = {
            "tool": "onnxruntime.quantization.quantize_dynamic",
            "script": "training/quantize.py" + (" --matmul-only" if a.matmul_only else ""),
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "opset": opset,
            "weight_type": "QInt8 (symmetric, per tensor)",
            "activation_type": "QUInt8, per tensor, computed at run time (DynamicQuantizeLinear)",
            "per_channel": False,
            "reduce_range": False,
            "op_types_to_quantize": "['MatMul']" if a.matmul_only else "default (every dynamic-quantizable op type)",
            "nodes_quantized": after["MatMulInteger"],
            "nodes_before": {op: before[op] for op in ("MatMul", "Gemm", "Einsum")},
            "nodes_after": {op: after[op] for op in ("MatMulInteger", "DynamicQuantizeLinear", "MatMul", "Gemm", "Einsum")},
            "left_in_float": (f"{float_left.get('MatMul', 0)} MatMul between two activations (attention scores and "
                              "weighted sums; MatMulConstBOnly), the Einsum of the per-feature embedding "
                              "(FeatureTokens.hmat), "
                              "the per-feature token weights (element-wise Mul/Add), LayerNormalization, "
                              "Softmax, and everything else that is not a MatMul with a constant weight"),
        }
    quantization |= {
        "deterministic": "two runs give byte-identical model.onnx (checked by the script)",
        "vs_float_on_golden": vs_float,
        "batch_dependence_on_golden": {n: bd[n] for n in OUTPUTS},
        "batch_dependence_on_golden_float": {n: bd_float[n] for n in OUTPUTS},
        "batch_dependence_note": "max abs difference between a golden row run alone and the same row in the "
                                 "8-row golden batch" + ("" if a.weight_only else
                                 ": dynamic quantization scales activations per tensor, so a row's outputs "
                                 "depend on the rest of its batch"),
        "contract_invariant_problems": problems,
        "feature_attention_sum_max_dev": float(np.abs(outs["feature_attention"].sum(1) - 1).max()),
        "history_attention_sum_max_dev": float(np.abs(outs["history_attention"][has].sum(1) - 1).max()),
    }

    manifest: dict = {}
    for k, v in fm.items():
        if k == "name":
            manifest[k] = NAME
        elif k == "sha256":
            manifest[k] = int8_sha
            manifest["derived_from"] = {
                "name": fm["name"], "version": fm["version"], "sha256": float_sha,
                "how": ("int8 weights behind DequantizeLinear, float32 arithmetic (training/quantize.py --weight-only)"
                        if a.weight_only else
                        "onnxruntime.quantization.quantize_dynamic, int8 weights (training/quantize.py)"),
            }
        elif k == "metrics":
            manifest["metrics_note"] = (
                "The float model's metrics (test week, alert rates at the thresholds, per-scenario "
                "recall, attention by group, prequential study) describe fraud-attention v2 and are not "
                "copied. " + ("`metrics` below is re-measured for this model by riskstream evaluate; "
                              "`shadow_evaluation` compares both models on fresh data." if a.evaluate else
                              "Re-measure with training/quantize.py --evaluate."))
            if a.evaluate:
                manifest["metrics"] = None  # placeholder keeps the key order
        elif k == "threshold_rationale":
            manifest[k] = ("Copied from fraud-attention v2, not re-tuned for the int8 scores (the alert rates, "
                           "precision and recall quoted are the float model's): " + v)
        elif k == "export":
            manifest["quantization"] = quantization
        else:
            manifest[k] = v
    if a.evaluate:
        metrics, shadow = engine_evaluation(a, src, out, fm)
        manifest["metrics"] = metrics
        manifest["shadow_evaluation"] = shadow
        print("metrics (float manifest protocol):", json.dumps({k: metrics[k] for k in
              ("auc_roc", "average_precision", "card_precision_at_100")}), "float:",
              json.dumps(metrics["float_model_same_run"]))
        print("shadow evaluation:", json.dumps(shadow["mean"]), "score diff:", json.dumps(shadow["score_int8_vs_float"]))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    sizes = ((src / "model.onnx").stat().st_size, (out / "model.onnx").stat().st_size)
    (out / "README.md").write_text(readme(manifest, fm, rel(src), sizes))
    print(f"wrote {rel(out / 'manifest.json')}, golden.json, README.md")


if __name__ == "__main__":
    main()
