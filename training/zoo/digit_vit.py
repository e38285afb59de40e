"""models/digit-vit: a small vision transformer on scikit-learn's bundled 8×8 digits
(stand-in for cheque amount digits).

Input `image` [B,8,8] float32, raw 0..16 pixel values (normalised inside the graph).
2×2 patches → P = 16 patch tokens + a CLS token, learned positional embedding,
2 pre-norm self-attention blocks. Outputs `probabilities` [B,10] and `attention` [B,16]:
the CLS token's attention over the 16 patches in the last block, mean over heads.
In the last block the CLS query is not allowed to attend to the CLS key (the CLS
state still flows through the residual), so that row is a distribution over the
patches alone and the exported attention is exactly what the model used.
Patch p covers rows 2·(p // 4) .. +1 and columns 2·(p % 4) .. +1.
"""

from __future__ import annotations

import argparse
import hashlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

import common as C

PATCH = 2
GRID = 8 // PATCH
P = GRID * GRID


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, mask):  # x [B,S,d]; mask [S,S] (1 = query may attend key)
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        w = C.masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh), mask)  # [B,H,S,S]
        return self.out((w @ v).transpose(1, 2).reshape(b, s, d)), w


class Block(nn.Module):
    def __init__(self, d: int, heads: int, drop: float):
        super().__init__()
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.drop = nn.Dropout(drop)

    def forward(self, x, mask):
        a, w = self.att(self.n1(x), mask)
        x = x + self.drop(a)
        return x + self.drop(self.mlp(self.n2(x))), w


class DigitViT(nn.Module):
    def __init__(self, d: int = 48, heads: int = 4, layers: int = 2, drop: float = 0.1):
        super().__init__()
        self.embed = nn.Linear(PATCH * PATCH, d)
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, P + 1, d) * 0.02)
        self.blocks = nn.ModuleList([Block(d, heads, drop) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)
        full = torch.ones(P + 1, P + 1)
        last = full.clone()
        last[0, 0] = 0.0                      # CLS query never attends to the CLS key in the last block
        self.register_buffer("mask_full", full, persistent=False)
        self.register_buffer("mask_last", last, persistent=False)

    def forward(self, image):                 # [B,8,8] raw 0..16
        logits, attention = self.scores(image)
        return torch.softmax(logits, dim=-1), attention

    def scores(self, image):
        b = image.shape[0]
        x = image / 16.0
        x = x.reshape(b, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4).reshape(b, P, PATCH * PATCH)
        x = torch.cat([self.cls.expand(b, -1, -1), self.embed(x)], dim=1) + self.pos
        w = None
        for i, blk in enumerate(self.blocks):
            x, w = blk(x, self.mask_last if i == len(self.blocks) - 1 else self.mask_full)
        logits = self.head(self.norm(x[:, 0]))
        attention = w[:, :, 0, 1:].mean(dim=1)  # CLS row of the last block, mean over heads → [B,P]
        return logits, attention


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by -1..1 pixels in each direction, zero fill (augmentation)."""
    b = x.shape[0]
    pad = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=g)
    dx = torch.randint(0, 3, (b,), generator=g)
    rows = (dy[:, None] + torch.arange(8)[None, :])               # [B,8]
    cols = (dx[:, None] + torch.arange(8)[None, :])
    return pad[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--out", default=str(C.MODELS / "digit-vit"))
    a = ap.parse_args()
    clock = C.Clock()
    C.setup(a.seed)
    out = C.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    X = digits.images.astype(np.float32)          # [1797,8,8], 0..16
    y = digits.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=0.2, stratify=y, random_state=a.seed)

    base = LogisticRegression(max_iter=5000, C=1.0).fit(X[tr].reshape(len(tr), -1) / 16.0, y[tr])
    base_acc = float((base.predict(X[te].reshape(len(te), -1) / 16.0) == y[te]).mean())

    model = DigitViT()
    g = torch.Generator().manual_seed(a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    Xtr, ytr = torch.from_numpy(X[tr]), torch.from_numpy(y[tr])
    bs = 64
    steps = a.epochs * math.ceil(len(tr) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    t_train = C.Clock()
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(len(tr), generator=g)
        tot = 0.0
        for s in range(0, len(tr), bs):
            j = perm[s:s + bs]
            logits, _ = model.scores(shift(Xtr[j], g))
            loss = F.cross_entropy(logits, ytr[j], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(j)
        if ep % 20 == 0 or ep == a.epochs - 1:
            print(f"epoch {ep:3d} loss {tot / len(tr):.4f}  ({t_train()}s)", flush=True)
    train_seconds = t_train()
    model.eval()

    with torch.no_grad():
        p_te, att_te = model(torch.from_numpy(X[te]))
    acc = float((p_te.argmax(1).numpy() == y[te]).mean())
    print(f"test accuracy ViT {acc:.4f}  logistic regression {base_acc:.4f}")

    onnx_path = out / "model.onnx"
    names = ["probabilities", "attention"]
    C.export(model, {"image": torch.from_numpy(X[te[:3]])}, onnx_path, names,
             {"image": {0: "batch"}, "probabilities": {0: "batch"}, "attention": {0: "batch"}})
    sess = C.ort_session(onnx_path)
    feeds = [{"image": X[te[s:s + 128]]} for s in range(0, len(te), 128)]
    diff = C.compare_torch_ort(model, sess, feeds, names)
    print("ORT vs PyTorch max abs diff", diff)
    ort_all = {k: np.concatenate([C.ort_run(sess, f)[k] for f in feeds]) for k in names}
    C.check_attention(ort_all["attention"], np.ones_like(ort_all["attention"]), "digit-vit attention")
    assert np.allclose(ort_all["probabilities"].sum(1), 1, atol=1e-5)

    # Golden: one held-out image per class 0..5 plus a blank image and a saturated one.
    rows = [te[np.flatnonzero(y[te] == c)[0]] for c in range(6)]
    gimg = np.concatenate([X[rows], np.zeros((1, 8, 8), np.float32), np.full((1, 8, 8), 16, np.float32)])
    gout = C.write_golden(out, sess, {"image": gimg})
    C.check_attention(gout["attention"], np.ones_like(gout["attention"]), "golden attention")

    # Where the model looks, per class: mean attention map of the held-out images.
    att_np = ort_all["attention"]
    mean_map = {int(c): np.round(att_np[y[te] == c].astype(np.float64).mean(0).reshape(GRID, GRID), 3).tolist()
                for c in range(10)}

    C.write_manifest(out, sess, {
        "name": "digit-vit", "version": "1", "task": "vision",
        "labels": [str(c) for c in range(10)],
        "image": {"height": 8, "width": 8, "pixel_range": [0, 16],
                  "normalisation": "inside the graph: x / 16; feed raw 0..16 values (row-major [row][col])"},
        "patches": {"size": PATCH, "grid": [GRID, GRID], "count": P,
                    "order": "row-major: patch p covers rows 2*(p//4)..2*(p//4)+1, cols 2*(p%4)..2*(p%4)+1"},
        "attention": "CLS token's attention over the 16 patches in the last block, mean over 4 heads; the CLS "
                     "query cannot attend to itself in that block, so each row sums to 1 over patches",
        "metrics": {
            "split": f"sklearn load_digits (1797 images), stratified train_test_split test_size=0.2 "
                     f"random_state={a.seed}: {len(tr)} train / {len(te)} held-out",
            "accuracy": C.r6(acc),
            "baseline_logistic_regression": {"accuracy": C.r6(base_acc),
                                             "config": "LogisticRegression(max_iter=5000, C=1.0) on x/16"},
            "mean_attention_by_class_4x4": mean_map,
        },
        "training_data": {"kind": "sklearn.datasets.load_digits (bundled UCI optdigits 8x8 test set)",
                          "rows": int(len(y)),
                          "sha256_images_float32": hashlib.sha256(X.tobytes()).hexdigest()},
        "training": {"epochs": a.epochs, "batch": bs, "optimizer": "AdamW wd 0.05, OneCycle max lr 3e-3",
                     "augmentation": "random translation -1..1 px (zero fill)", "label_smoothing": 0.05,
                     "dropout": 0.1, "train_seconds": train_seconds, "threads": 1},
        "architecture": {"summary": "2x2 patches -> Linear(4,48) + learned positional embedding (17 incl. CLS); "
                                    "2 pre-LN blocks (4 heads, d=48, MLP 96, GELU); LayerNorm + Linear on CLS; "
                                    "softmax",
                         "d_model": 48, "heads": 4, "layers": 2, "parameters": C.n_params(model)},
        "export": C.export_info(diff),
        "seed": a.seed,
    })
    print(f"digit-vit: accuracy {acc:.4f} vs logistic regression {base_acc:.4f}; train {train_seconds}s, "
          f"total {clock()}s")


if __name__ == "__main__":
    main()
