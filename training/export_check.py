"""Verify a committed fraud-attention model without PyTorch.

Checks, in order, and exits non-zero on the first failure:
  1. sha256(model.onnx) == manifest.json "sha256"
  2. the ONNX inputs/outputs match the manifest (names, float32, shapes, dynamic batch)
  3. onnxruntime reproduces golden.json outputs within --tol (default 1e-6)
  4. contract invariants on the golden rows: score in [0,1]; history_attention exactly 0 on
     padding, summing to 1 on rows with history and all-zero on rows without;
     feature_attention sums to 1

Needs only numpy + onnxruntime:  python training/export_check.py [models/fraud-attention]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

ORT_TYPES = {"float32": "tensor(float)"}


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_dir = Path(__file__).resolve().parent.parent / "models" / "fraud-attention"
    ap.add_argument("model_dir", nargs="?", help=f"model directory (default {default_dir})")
    ap.add_argument("--dir", help="same as the positional argument")
    ap.add_argument("--tol", type=float, default=1e-6)
    a = ap.parse_args()
    d = Path(a.model_dir or a.dir or default_dir)
    model_path = d / "model.onnx"
    manifest = json.loads((d / "manifest.json").read_text())
    golden = json.loads((d / "golden.json").read_text())

    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    if digest != manifest["sha256"]:
        fail(f"sha256 mismatch: model.onnx is {digest}, manifest says {manifest['sha256']}")
    print(f"ok   sha256 {digest}")

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])

    def check_io(kind, actual, declared):
        if [x.name for x in actual] != [x["name"] for x in declared]:
            fail(f"{kind} names {[x.name for x in actual]} != manifest {[x['name'] for x in declared]}")
        for x, m in zip(actual, declared):
            if x.type != ORT_TYPES[m["dtype"]]:
                fail(f"{kind} {x.name}: type {x.type}, manifest {m['dtype']}")
            # Dynamic dims come back as strings (e.g. "batch"); the manifest writes them as -1.
            shape = [-1 if not isinstance(s, int) else s for s in x.shape]
            if shape != m["shape"]:
                fail(f"{kind} {x.name}: shape {x.shape}, manifest {m['shape']}")

    check_io("input", sess.get_inputs(), manifest["inputs"])
    check_io("output", sess.get_outputs(), manifest["outputs"])
    print("ok   inputs/outputs match the manifest")

    feed = {k: np.asarray(v, dtype=np.float32) for k, v in golden["inputs"].items()}
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    worst = 0.0
    for name, expected in golden["outputs"].items():
        exp = np.asarray(expected, dtype=np.float32)
        got = outs[name]
        if got.shape != exp.shape:
            fail(f"{name}: shape {got.shape} != golden {exp.shape}")
        diff = float(np.abs(got - exp).max())
        worst = max(worst, diff)
        if not diff <= a.tol:  # also catches NaN
            fail(f"{name}: max abs diff {diff:.3g} > {a.tol}")
    print(f"ok   golden outputs reproduced ({len(feed['features'])} rows, max abs diff {worst:.3g})")

    mask = feed["history_mask"]
    score, ha, fa = outs["score"], outs["history_attention"], outs["feature_attention"]
    has = mask.sum(1) > 0
    if not np.all((score >= 0) & (score <= 1)):
        fail("score outside [0, 1]")
    if not np.all(ha[mask == 0] == 0):
        fail("history_attention non-zero at a padded position")
    if not np.all(ha[~has] == 0):
        fail("history_attention non-zero on a row without history")
    if not np.allclose(ha[has].sum(1), 1.0, atol=1e-5):
        fail("history_attention does not sum to 1 on rows with history")
    if not np.allclose(fa.sum(1), 1.0, atol=1e-5):
        fail("feature_attention does not sum to 1")
    if (~has).sum() == 0 or (mask.sum(1) == mask.shape[1]).sum() == 0:
        fail("golden.json must contain a row without history and a row with full history")
    print("ok   attention invariants hold")


if __name__ == "__main__":
    main()
