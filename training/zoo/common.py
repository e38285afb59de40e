"""Shared plumbing for the model zoo: determinism, masked attention, ONNX export,
ORT-vs-PyTorch checks, golden rows and manifests.

Every zoo script follows the same path: `setup(seed)` → train → `export()` →
`compare_torch_ort()` on held-out rows → `write_golden()` → `write_manifest()`.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

# torch is imported inside the functions that need it, so check.py runs without it.

OPSET = 17
ROOT = Path(__file__).resolve().parents[2]          # the repository
MODELS = ROOT / "models"
DATA = ROOT / "training" / ".data"
NEG = -1e9                                           # additive mask; never -inf (NaN on all-masked rows)

DTYPES = {"tensor(float)": "float32", "tensor(int64)": "int64"}


def setup(seed: int) -> None:
    """One CPU thread (the machine is shared) and every RNG seeded."""
    import torch
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # may only be set once per process
        pass
    torch.use_deterministic_algorithms(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def masked_softmax(scores, mask, dim: int = -1):
    """softmax(scores + (1-mask)·-1e9) · mask, renormalised by max(sum, 1e-12).

    Masked positions come out exactly 0; a row with no valid position is all 0
    (never NaN); every other row sums to 1.
    """
    p = (scores + (1.0 - mask) * NEG).softmax(dim=dim) * mask
    return p / p.sum(dim=dim, keepdim=True).clamp_min(1e-12)


def n_params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export(model, example: dict, path: Path, output_names: list[str], dynamic: dict[str, dict[int, str]]) -> None:
    """TorchScript exporter (dynamo=False), opset 17; `example` is {input name: tensor} in
    input order; `dynamic` maps every input/output name to its dynamic axes."""
    import onnx
    import torch
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(model, tuple(example.values()), str(path), input_names=list(example),
                          output_names=output_names, dynamic_axes=dynamic, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def ort_session(path: Path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(sess, feed: dict) -> dict:
    names = [o.name for o in sess.get_outputs()]
    feed = {i.name: np.ascontiguousarray(feed[i.name]) for i in sess.get_inputs()}
    return dict(zip(names, sess.run(None, feed)))


def torch_run(model, feed: dict, output_names: list[str]) -> dict:
    import torch
    model.eval()
    with torch.no_grad():
        out = model(*[torch.from_numpy(np.ascontiguousarray(v)) for v in feed.values()])
    if isinstance(out, torch.Tensor):
        out = (out,)
    return {n: o.numpy() for n, o in zip(output_names, out)}


def compare_torch_ort(model, sess, feeds: list[dict], output_names: list[str], tol: float = 1e-5,
                      exact: tuple[str, ...] = ()) -> dict:
    """Max abs difference per output over several feeds; exits when any is >= tol.
    Outputs in `exact` (integer outputs such as top-k ids) must match exactly."""
    worst: dict[str, float] = {}
    for feed in feeds:
        a = torch_run(model, feed, output_names)
        b = ort_run(sess, feed)
        for n in output_names:
            if a[n].shape != b[n].shape:
                sys.exit(f"{n}: torch shape {a[n].shape} != ORT {b[n].shape}")
            d = float(np.abs(a[n].astype(np.float64) - b[n].astype(np.float64)).max()) if a[n].size else 0.0
            worst[n] = max(worst.get(n, 0.0), d)
    for n, d in worst.items():
        if (n in exact and d != 0) or not d < tol:
            sys.exit(f"ONNX Runtime vs PyTorch: {n} differs by {d:.3g} (tol {tol})")
    return worst


def check_attention(att: np.ndarray, mask: np.ndarray, what: str, tol: float = 1e-5) -> None:
    """Masked positions exactly 0; rows with a valid position sum to 1, other rows all 0.
    `mask` broadcasts against `att` (same shape, or missing leading query dims)."""
    mask = np.broadcast_to(mask, att.shape)
    if not np.all(np.isfinite(att)):
        sys.exit(f"{what}: non-finite attention")
    if not np.all(att[mask == 0] == 0):
        sys.exit(f"{what}: attention non-zero at a masked position")
    has = mask.sum(-1) > 0
    s = att.sum(-1)
    if not np.allclose(s[has], 1.0, atol=tol):
        sys.exit(f"{what}: attention rows do not sum to 1 (worst {np.abs(s[has] - 1).max():.3g})")
    if not np.all(s[~has] == 0):
        sys.exit(f"{what}: attention not all-zero on rows without valid positions")
    if np.any(att < 0):
        sys.exit(f"{what}: negative attention")


def _tolist(a: np.ndarray):
    # float32 -> Python float is exact, so the JSON round-trips bit for bit.
    return a.tolist()


def write_golden(model_dir: Path, sess, feed: dict) -> dict:
    """Runs ORT on `feed`, writes golden.json, reads it back and re-checks (1e-6)."""
    out = ort_run(sess, feed)
    golden = {"inputs": {k: _tolist(np.asarray(v)) for k, v in feed.items()},
              "outputs": {k: _tolist(v) for k, v in out.items()}}
    (model_dir / "golden.json").write_text(json.dumps(golden) + "\n")
    verify_golden(model_dir, sess)
    return out


def verify_golden(model_dir: Path, sess=None, tol: float = 1e-6) -> float:
    g = json.loads((model_dir / "golden.json").read_text())
    sess = sess or ort_session(model_dir / "model.onnx")
    types = {i.name: i.type for i in sess.get_inputs()}
    feed = {k: np.asarray(v, dtype=np.int64 if types[k] == "tensor(int64)" else np.float32)
            for k, v in g["inputs"].items()}
    got = ort_run(sess, feed)
    worst = 0.0
    for k, v in g["outputs"].items():
        exp = np.asarray(v)
        if got[k].shape != exp.shape:
            sys.exit(f"golden {model_dir.name}/{k}: shape {got[k].shape} != {exp.shape}")
        d = float(np.abs(got[k].astype(np.float64) - exp).max()) if exp.size else 0.0
        if not d <= tol:
            sys.exit(f"golden {model_dir.name}/{k}: ORT differs by {d:.3g} > {tol}")
        worst = max(worst, d)
    return worst


def io_spec(sess) -> tuple[list, list]:
    """Manifest `inputs`/`outputs` from the ONNX graph itself: dynamic dims as -1."""
    def spec(xs):
        return [{"name": x.name, "dtype": DTYPES[x.type],
                 "shape": [s if isinstance(s, int) else -1 for s in x.shape]} for x in xs]
    return spec(sess.get_inputs()), spec(sess.get_outputs())


def write_manifest(model_dir: Path, sess, fields: dict) -> dict:
    """name, version, task first; sha256 and IO from the exported file; then `fields`."""
    ins, outs = io_spec(sess)
    head = {k: fields[k] for k in ("name", "version", "task")}
    rest = {k: v for k, v in fields.items() if k not in head}
    manifest = {**head, "sha256": sha256_file(model_dir / "model.onnx"), "inputs": ins, "outputs": outs,
                **rest}
    (model_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def export_info(diff: dict) -> dict:
    import onnxruntime
    import torch
    return {"exporter": "torch.onnx.export (TorchScript, dynamo=False)", "opset": OPSET,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "ort_vs_torch_max_abs_diff": {k: float(f"{v:.3g}") for k, v in diff.items()}}


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


class Clock:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self) -> float:
        return round(time.time() - self.t0, 1)


def r6(x: float) -> float:
    return round(float(x), 6)
