"""Training: one loop for every neural model, and the gradient-boosting baseline.

Every epoch sees all frauds of the training window and a fresh random 1:`neg_ratio` sample
of its legit transactions; afterwards log(sampling rate) is added to the output bias (prior
correction), so scores are probabilities on the real class balance. There is no early
stopping: the Handbook's 7-day window has no room for a validation split, so every model
gets the same fixed budget of sampled rows, chosen before looking at any test week.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import ARRAYS


@dataclass
class TrainConfig:
    rows_seen: int = 300_000  # the training budget: sampled rows over all epochs
    batch: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-4
    neg_ratio: float = 20.0
    seed: int = 42
    history_noise: float = 0.0  # share of history positions replaced by other cards' (train-time)


def set_determinism(seed: int, threads: int = 1) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.use_deterministic_algorithms(True)


def tensors(batch: dict) -> tuple:
    return tuple(torch.from_numpy(np.ascontiguousarray(batch[k])) for k in ARRAYS)


def train(model: nn.Module, data: dict, idx: np.ndarray, cfg: TrainConfig, log=print) -> dict:
    from .data import inputs, with_history_noise

    torch.manual_seed(cfg.seed)
    y = data["y"]
    pos, neg = idx[y[idx] > 0], idx[y[idx] == 0]
    rate = min(1.0, cfg.neg_ratio * len(pos) / max(len(neg), 1))
    rows_per_epoch = len(pos) + int(round(rate * len(neg)))
    epochs = max(1, round(cfg.rows_seen / rows_per_epoch))
    steps = epochs * math.ceil(rows_per_epoch / cfg.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps + epochs, pct_start=0.1)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        ep = np.concatenate([pos, neg[rng.random(len(neg)) < rate]])
        rng.shuffle(ep)
        tot = 0.0
        for s in range(0, len(ep), cfg.batch):
            j = np.sort(ep[s:s + cfg.batch])
            if cfg.history_noise > 0:
                batch = with_history_noise(data, j, cfg.history_noise, int(rng.integers(1 << 31)))
            else:
                batch = inputs(data, j)
            logit, _, _ = model(*tensors(batch))
            loss = F.binary_cross_entropy_with_logits(logit, torch.from_numpy(y[j]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            tot += loss.item() * len(j)
        if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            log(f"  epoch {epoch + 1}/{epochs} loss {tot / len(ep):.4f}")
    with torch.no_grad():
        model.bias += math.log(rate)  # prior correction
    model.eval()
    return {"epochs": epochs, "rows_per_epoch": rows_per_epoch, "neg_sampling_rate": rate,
            "train_seconds": time.time() - t0, "train_rows": int(len(idx)), "train_frauds": int(len(pos))}


@torch.no_grad()
def predict(model: nn.Module, batch: dict, size: int = 8192) -> dict:
    """Scores and attention maps of `batch` (dict of the three input arrays)."""
    model.eval()
    n = len(batch["features"])
    parts = {"score": [], "history_attention": [], "feature_attention": []}
    for s in range(0, n, size):
        logit, ha, fa = model(*tensors({k: v[s:s + size] for k, v in batch.items()}))
        parts["score"].append(torch.sigmoid(logit).numpy())
        if ha is not None:
            parts["history_attention"].append(ha.numpy())
        if fa is not None:
            parts["feature_attention"].append(fa.numpy())
    return {k: np.concatenate(v) for k, v in parts.items() if v}


def train_gbdt(data: dict, idx: np.ndarray, seed: int):
    """Histogram gradient boosting on the 20 features (sklearn's LightGBM-style trees),
    early-stopped on an internal 10% split of the training window."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    t0 = time.time()
    gb = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.1, random_state=seed)
    gb.fit(data["features"][idx], data["y"][idx])
    return gb, {"train_seconds": time.time() - t0, "train_rows": int(len(idx)),
                "train_frauds": int(data["y"][idx].sum()), "iterations": int(gb.n_iter_)}
