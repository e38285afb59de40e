"""Verify the committed zoo model directories with numpy + onnxruntime only (no torch).

For every model: sha256(model.onnx) == manifest; ONNX inputs/outputs == manifest
(names, dtypes, shapes with -1 for dynamic dims); golden.json reproduced within 1e-6;
attention invariants on the golden rows (0 where masked, rows sum to 1). Then the
portable-logic vectors: tokenizer_vectors.json (descriptor tokenizer),
decode_vectors.json (greedy + beam through the two cheque ONNX sessions),
surprise_vectors.json (merchant-lm). Exits non-zero on the first failure.

    python training/zoo/check.py [model names...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import cheque_decode as CD
import common as C
import descriptor_tokenizer as DT

ZOO = ["merchant-recommender", "merchant-descriptor", "digit-vit", "cheque-words-encoder", "cheque-words-decoder",
       "merchant-lm"]


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def golden(d: Path):
    g = json.loads((d / "golden.json").read_text())
    sess = C.ort_session(d / "model.onnx")
    types = {i.name: i.type for i in sess.get_inputs()}
    feed = {k: np.asarray(v, dtype=np.int64 if types[k] == "tensor(int64)" else np.float32)
            for k, v in g["inputs"].items()}
    return sess, feed, {k: np.asarray(v) for k, v in g["outputs"].items()}


def check_dir(name: str) -> None:
    d = C.MODELS / name
    m = json.loads((d / "manifest.json").read_text())
    if C.sha256_file(d / "model.onnx") != m["sha256"]:
        fail(f"{name}: sha256 mismatch")
    sess, feed, out = golden(d)
    ins, outs = C.io_spec(sess)
    if ins != m["inputs"] or outs != m["outputs"]:
        fail(f"{name}: ONNX IO {ins} {outs} != manifest {m['inputs']} {m['outputs']}")
    worst = C.verify_golden(d, sess, tol=1e-6)
    rows = len(next(iter(feed.values())))
    if not 4 <= rows <= 8:
        fail(f"{name}: golden has {rows} rows")
    if name == "merchant-recommender":
        C.check_attention(out["top_attention"], feed["history_mask"][:, None, :], name)
        if not np.all(out["top_items"] > 1):
            fail(f"{name}: a special id was recommended")
    elif name == "merchant-descriptor":
        C.check_attention(out["attention"], feed["token_mask"], name)
    elif name == "digit-vit":
        C.check_attention(out["attention"], np.ones_like(out["attention"]), name)
    elif name == "cheque-words-decoder":
        C.check_attention(out["cross_attention"], feed["src_mask"][:, None, :], name)
    elif name == "merchant-lm":
        t = feed["tokens"].shape[1]
        allowed = np.tril(np.ones((t, t)))[None] * feed["token_mask"][:, None, :] * feed["token_mask"][:, :, None]
        C.check_attention(out["attention"], allowed, name)
    for k in ("probabilities",):
        if k in out and not np.allclose(out[k].sum(-1), 1, atol=1e-5):
            fail(f"{name}: {k} rows do not sum to 1")
    print(f"ok   {name}: sha256, IO, golden ({rows} rows, max diff {worst:.2g}), attention invariants")


def check_tokenizer() -> None:
    d = C.MODELS / "merchant-descriptor"
    tok = json.loads((d / "tokenizer.json").read_text())
    index = {w: i for i, w in enumerate(tok["vocab"])}
    vecs = json.loads((d / "tokenizer_vectors.json").read_text())
    for v in vecs:
        ids, mask = DT.encode(v["text"], index)
        if ids != v["ids"] or mask != v["mask"] or DT.pieces(v["text"]) != v["pieces"]:
            fail(f"tokenizer vector {v['text']!r}: got {ids}")
    print(f"ok   merchant-descriptor tokenizer: {len(vecs)} vectors")


def check_decoding() -> None:
    enc = C.ort_session(C.MODELS / "cheque-words-encoder" / "model.onnx")
    dec = C.ort_session(C.MODELS / "cheque-words-decoder" / "model.onnx")
    src = json.loads((C.MODELS / "cheque-words-encoder" / "source_vocab.json").read_text())
    index = {w: i for i, w in enumerate(src["tokens"])}
    vecs = json.loads((C.MODELS / "cheque-words-decoder" / "decode_vectors.json").read_text())["vectors"]
    for v in vecs:
        ids, m = CD.encode_source([v["text"]], index)
        if ids[0].tolist() != v["src_ids"] or m[0].tolist() != v["src_mask"]:
            fail(f"source ids of {v['text']!r}")
        g = CD.greedy(enc, dec, ids, m)[0]
        b, score = CD.beam(enc, dec, ids, m)
        if g != v["greedy"] or b != v["beam4"] or abs(score - v["beam4_normalised_log_prob"]) > 1e-5:
            fail(f"decoding {v['text']!r}: greedy {g} beam {b} ({score})")
    print(f"ok   cheque-words decoding: {len(vecs)} vectors (greedy + beam 4)")


def check_surprise() -> None:
    d = C.MODELS / "merchant-lm"
    sess = C.ort_session(d / "model.onnx")
    vecs = json.loads((d / "surprise_vectors.json").read_text())["vectors"]
    for v in vecs:
        tt = np.asarray([v["tokens"]], np.int64)
        mm = np.asarray([v["token_mask"]], np.float32)
        lp = C.ort_run(sess, {"tokens": tt, "token_mask": mm})["log_probs"][0]
        n = int(mm.sum())
        s = [-lp[t - 1, tt[0, t]] for t in range(1, n)]
        if np.abs(np.array(s) - np.array(v["surprise"])).max() > 1e-5:
            fail("surprise vector mismatch")
    print(f"ok   merchant-lm surprise: {len(vecs)} vectors")


def main() -> None:
    names = sys.argv[1:] or ZOO
    for n in names:
        check_dir(n)
    if "merchant-descriptor" in names:
        check_tokenizer()
    if "cheque-words-decoder" in names:
        check_decoding()
    if "merchant-lm" in names:
        check_surprise()


if __name__ == "__main__":
    main()
