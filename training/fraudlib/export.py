"""ONNX export of every model of the study, checks against PyTorch, inference timing, and
the golden rows of a model directory."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data import ARRAYS, FEATURE_NAMES, H_FIELDS, N_FEAT
from .models import Exported, FraudModel, uses_history

OPSET = 17


def io_spec(model, k: int) -> tuple[list, list]:
    """(inputs, outputs) as [(name, shape)] with -1 for the batch dimension."""
    if uses_history(model):
        ins = [("features", [-1, N_FEAT]), ("history", [-1, k, H_FIELDS]), ("history_mask", [-1, k])]
        outs = [("score", [-1]), ("history_attention", [-1, k]), ("feature_attention", [-1, N_FEAT])]
    else:
        ins = [("features", [-1, N_FEAT])]
        outs = [("score", [-1])] + ([("feature_attention", [-1, N_FEAT])] if isinstance(model, FraudModel) else [])
    return ins, outs


def export_torch(model, example: dict, path: Path, k: int) -> tuple[list, list]:
    ins, outs = io_spec(model, k)
    wrapped = Exported(model).eval()
    args = tuple(torch.from_numpy(np.ascontiguousarray(example[n])) for n, _ in ins)
    dyn = {name: {0: "batch"} for name, _ in ins + outs}
    # The legacy (TorchScript) exporter gives a compact static graph for models this small.
    torch.onnx.export(wrapped, args, str(path), input_names=[n for n, _ in ins],
                      output_names=[n for n, _ in outs], dynamic_axes=dyn, opset_version=OPSET,
                      do_constant_folding=True, dynamo=False)
    import onnx
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return ins, outs


def export_gbdt(gb, path: Path) -> tuple[list, list]:
    """skl2onnx TreeEnsemble graph, renamed to the contract: `features` -> `score`."""
    import onnx
    from onnx import helper
    import skl2onnx.common._container as container
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    # skl2onnx 1.20 passes numpy bools / uint32 in integer list attributes, which onnx 1.23
    # rejects; convert them to Python ints on the way in.
    if not getattr(container, "_riskstream_patched", False):
        make_node = container.make_node

        def clean(v):
            if isinstance(v, (list, tuple)) and v and not isinstance(v[0], (float, str, bytes)):
                return [int(x) if isinstance(x, (bool, np.bool_, np.integer)) else x for x in v]
            return v

        container.make_node = lambda *a, **kw: make_node(*a, **{k: clean(v) for k, v in kw.items()})
        container._riskstream_patched = True

    m = to_onnx(gb, initial_types=[("features", FloatTensorType([None, N_FEAT]))],
                options={id(gb): {"zipmap": False}}, target_opset={"": OPSET, "ai.onnx.ml": 3})
    g = m.graph
    prob = [o.name for o in g.output if o.name != "label"][0]
    # score = probabilities[:, 1]
    g.initializer.append(helper.make_tensor("one", onnx.TensorProto.INT64, [], [1]))
    g.node.append(helper.make_node("Gather", [prob, "one"], ["score"], axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("score", onnx.TensorProto.FLOAT, [None]))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return [("features", [-1, N_FEAT])], [("score", [-1])]


def ort_session(path: Path, threads: int = 1):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_against(sess, feed: dict, expected: dict, tol: float = 1e-4) -> dict:
    """Max abs difference ORT vs the reference outputs; fails beyond `tol`."""
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, sess.run(None, feed)))
    diff = {n: float(np.abs(got[n] - expected[n]).max()) for n in names if n in expected}
    if max(diff.values()) >= tol:
        sys.exit(f"ONNX Runtime differs from the reference by {diff} (>= {tol})")
    return diff


def microseconds_per_tx(sess, feed: dict, batch: int = 256, seconds: float = 2.0) -> float:
    """ONNX Runtime, 1 intra-op thread, batches of `batch`: wall time per transaction."""
    n = len(next(iter(feed.values())))
    j = np.resize(np.arange(n), batch)
    f = {k: np.ascontiguousarray(v[j]) for k, v in feed.items()}
    for _ in range(10):
        sess.run(None, f)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sess.run(None, f)
        reps += 1
    return (time.perf_counter() - t0) / (reps * batch) * 1e6


def model_feed(sess, batch: dict) -> dict:
    return {i.name: np.ascontiguousarray(batch[i.name]) for i in sess.get_inputs()}


# -- golden rows --------------------------------------------------------------------------

def first_transaction_variant(data, i: int) -> dict:
    """Row i rewritten as the card's very first transaction: no history, and the card
    features a first transaction necessarily has (its windows hold only itself)."""
    k = data["history_len"]
    f = data["features"][i].copy()
    col = {n: j for j, n in enumerate(FEATURE_NAMES)}
    amount = math.expm1(float(f[col["amount_log"]]))
    for w in ("1d", "7d", "30d"):
        f[col[f"card_count_{w}"]] = 1.0
        f[col[f"card_avg_amount_{w}"]] = amount
    f[col["amount_ratio_30d"]] = 1.0
    f[col["card_count_10m"]] = 1.0
    f[col["secs_since_prev_log"]] = math.log1p(30 * 86_400)
    f[col["country_change_1h"]] = 0.0
    return {"features": f, "history": np.zeros((k, H_FIELDS), np.float32), "history_mask": np.zeros(k, np.float32)}


def golden_rows(data, test_idx, score, rng) -> tuple[dict, list]:
    """8 test rows for the contract's edge cases: no history, full history, partial history,
    the highest-scored fraud, another fraud, legit rows. If the test window has no row
    without history, one row is rewritten as its card's first transaction."""
    k = data["history_len"]
    m = data["history_mask"][test_idx].sum(1)
    y = data["y"][test_idx]
    chosen: list[tuple[int, str]] = []

    def take(cands, why, by=None):
        cands = [c for c in cands if c not in {c for c, _ in chosen}]
        if cands:
            c = cands[int(np.argmax(by[cands]))] if by is not None else rng.choice(cands)
            chosen.append((int(c), why))

    take(np.flatnonzero(m == 0), "no history")
    take(np.flatnonzero(m == k), "full history")
    take(np.flatnonzero((m > 0) & (m < k)), "partial history")
    take(np.flatnonzero(y > 0), "highest-scored fraud", by=score)
    take(np.flatnonzero((y > 0) & (m > 0)), "fraud with history")
    take(np.flatnonzero(y > 0), "fraud")
    synthetic_first = not np.any(m == 0)
    while len(chosen) < (7 if synthetic_first else 8):
        take(np.flatnonzero(y == 0), "legit")
    rows = {n: [data[n][test_idx[c]] for c, _ in chosen] for n in ARRAYS}
    meta = [{"tx_id": str(data["tx_id"][test_idx[c]]), "why": why, "is_fraud": bool(y[c])} for c, why in chosen]
    if synthetic_first:
        c = int(rng.choice(np.flatnonzero(y == 0)))
        v = first_transaction_variant(data, int(test_idx[c]))
        for n in ARRAYS:
            rows[n].append(v[n])
        meta.append({"tx_id": str(data["tx_id"][test_idx[c]]), "why": "no history: test row rewritten as "
                     "the card's first transaction (the test window has none)", "is_fraud": False})
    return {n: np.stack(v).astype(np.float32) for n, v in rows.items()}, meta
