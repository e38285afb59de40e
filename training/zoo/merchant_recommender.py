"""models/merchant-recommender: DIN-style target attention over a card's merchant
history (Zhou et al. 2018, "Deep Interest Network") → scores for every merchant and
the top 10.

Items are terminals (`terminal_id`), not MCCs: there are only 11 MCCs, while the
simulator's cards shop at the few dozen shop terminals near home (plus ATMs nearby
and e-commerce merchants anywhere), so "which terminal next" is a real ranking
problem with structure to learn. Item ids: 0 = <pad>, 1 = <oov>, then the ITEMS most
frequent terminals of the training period (ties by terminal_id); every other
terminal maps to <oov>. Both special ids are never recommended.

For a card's last L=20 merchants e_1..e_L (position 0 = most recent, padding on the
right, history_mask 1/0) and each candidate item i:
    a_j(i)  = masked softmax_j( MLP([e_j, e_i, e_j - e_i, e_j * e_i]) )   (activation unit)
    u(i)    = Σ_j a_j(i) e_j                                               (interest in i)
    score_i = MLP([u(i), e_i, u(i) * e_i]) + bias_i
The first MLP layer is evaluated in its decomposed form (A e_j + B e_i + W(e_j ⊙ e_i))
so all items are scored with one matmul. Unlike the paper the attention is a softmax
over the history (the brief asks for rows summing to 1); an empty history gives
a(i) = 0, u = 0 and the score falls back to an item prior (cold start).

Inputs: history_items int64 [B,20], history_mask float32 [B,20].
Outputs: scores float32 [B,N] (N = vocabulary incl. the 2 special ids, which score
-1e9), top_items int64 [B,10] (descending score), top_attention float32 [B,10,20]
(a(i) of each returned item over the history positions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections import Counter

import numpy as np
import polars as pl
import torch
import torch.nn as nn
import torch.nn.functional as F

import common as C

L = 20
TOPK = 10
PAD, OOV = 0, 1
INVALID = -1e9


def prelu(x, a):
    """PReLU with per-unit slopes `a` broadcast against x (nn.PReLU assumes channels on dim 1)."""
    return torch.where(x >= 0, x, a * x)


class DIN(nn.Module):
    def __init__(self, n_items: int, d: int = 32, h_att: int = 16, h_out: int = 32):
        super().__init__()
        self.emb = nn.Embedding(n_items, d, padding_idx=PAD)
        nn.init.normal_(self.emb.weight, std=0.1)
        with torch.no_grad():
            self.emb.weight[PAD].zero_()
        self.att_in = nn.Linear(4 * d, h_att)      # activation unit on [e_j, e_i, e_j-e_i, e_j*e_i]
        self.att_act = nn.PReLU(h_att)
        self.att_out = nn.Linear(h_att, 1)
        self.out_in = nn.Linear(3 * d, h_out)      # scorer on [u, e_i, u*e_i]
        self.out_act = nn.PReLU(h_out)
        self.out_out = nn.Linear(h_out, 1)
        self.bias = nn.Embedding(n_items, 1)
        nn.init.zeros_(self.bias.weight)
        self.d = d
        valid = torch.ones(n_items, dtype=torch.bool)
        valid[PAD] = valid[OOV] = False
        self.register_buffer("valid", valid, persistent=False)

    def candidate_scores(self, history_items, history_mask, cand):
        """cand: item ids [C] (shared by the batch) or [B,C] → (scores [B,C], attention [B,C,L])."""
        d = self.d
        eh = self.emb(history_items)                                   # [B,L,d]
        ec = self.emb(cand)                                            # [C,d] or [B,C,d]
        w = self.att_in.weight                                         # [h,4d]
        wj, wi, wdiff, wprod = w[:, :d], w[:, d:2 * d], w[:, 2 * d:3 * d], w[:, 3 * d:]
        b, l, _ = eh.shape
        hj = eh @ (wj + wdiff).t()                                     # [B,L,h]
        hi = ec @ (wi - wdiff).t()                                     # [C,h] / [B,C,h]
        # W_prod (e_j ⊙ e_i): scale e_j by each hidden unit's row, then one matmul with the items.
        ejw = (eh.unsqueeze(2) * wprod).reshape(b, l * wprod.shape[0], d)   # [B,L*h,d]
        bil = (ejw @ ec.transpose(-1, -2)).reshape(b, l, wprod.shape[0], -1)  # [B,L,h,C]
        pre = hj.unsqueeze(-1) + bil + self.att_in.bias[:, None]
        pre = pre + (hi.t()[None, None] if ec.dim() == 2 else hi.transpose(1, 2)[:, None])
        act = prelu(pre, self.att_act.weight.reshape(1, 1, -1, 1))     # [B,L,h,C]
        logits = (act * self.att_out.weight.reshape(1, 1, -1, 1)).sum(2) + self.att_out.bias  # [B,L,C]
        att = C.masked_softmax(logits.transpose(1, 2), history_mask[:, None, :])          # [B,C,L]
        u = att @ eh                                                   # [B,C,d]
        ecb = ec.expand(b, -1, -1) if ec.dim() == 2 else ec
        z = prelu(self.out_in(torch.cat([u, ecb, u * ecb], dim=-1)), self.out_act.weight)
        s = self.out_out(z).squeeze(-1) + self.bias(cand).squeeze(-1)
        return s, att

    def forward(self, history_items, history_mask):
        all_items = torch.arange(self.emb.num_embeddings, device=history_items.device)
        s, att = self.candidate_scores(history_items, history_mask, all_items)
        scores = torch.where(self.valid[None, :], s, torch.full_like(s, INVALID))
        _, top = torch.topk(scores, TOPK, dim=1)
        top_att = torch.gather(att, 1, top.unsqueeze(-1).expand(-1, -1, L))
        return scores, top, top_att


def load(path, split_days: int, dev: bool, n_items: int, min_count: int):
    df = pl.read_parquet(path, columns=["tx_id", "ts", "card_id", "terminal_id"]).sort(["card_id", "ts", "tx_id"])
    t_end = df["ts"].max()
    split = t_end - dt.timedelta(days=split_days)
    test_end = None
    if dev:  # development: the week before the real test week plays the test week
        test_end, split = split, split - dt.timedelta(days=split_days)
    train_df = df.filter(pl.col("ts") < split)
    counts = train_df.group_by("terminal_id").len().sort(["len", "terminal_id"], descending=[True, False])
    keep = counts.filter(pl.col("len") >= min_count)["terminal_id"].head(n_items).to_list()
    items = ["<pad>", "<oov>"] + keep
    index = {t: i for i, t in enumerate(items)}
    item = np.array([index.get(t, OOV) for t in df["terminal_id"].to_list()], np.int64)
    card = df["card_id"].to_numpy()
    ts = df["ts"].to_numpy()
    split_np = np.datetime64(split.replace(tzinfo=None), "ms")
    end_np = np.datetime64(test_end.replace(tzinfo=None), "ms") if test_end else None
    # Per row: the card's previous L items, most recent first.
    n = len(df)
    hist = np.zeros((n, L), np.int64)
    mask = np.zeros((n, L), np.float32)
    starts = np.r_[0, np.flatnonzero(card[1:] != card[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    for s, e in zip(starts, ends):
        for k in range(1, L + 1):
            rows = np.arange(s + k, e)
            hist[rows, k - 1] = item[rows - k]
            mask[rows, k - 1] = 1.0
    is_train = ts < split_np
    in_test = (ts >= split_np) & ((ts < end_np) if end_np is not None else True)
    test_rows = [int(np.flatnonzero(in_test[s:e])[-1] + s) for s, e in zip(starts, ends) if in_test[s:e].any()]
    return {"df": df, "items": items, "item": item, "hist": hist, "mask": mask, "is_train": is_train,
            "test": np.array(test_rows), "split": split, "t_end": test_end or t_end, "path": path,
            "train_counts": counts}


def ranking_metrics(top: np.ndarray, target: np.ndarray) -> dict:
    hit = top == target[:, None]
    rank = np.where(hit.any(1), hit.argmax(1), -1)
    ndcg = np.where(rank >= 0, 1.0 / np.log2(np.maximum(rank, 0) + 2), 0.0)
    return {"hr_at_10": C.r6(hit.any(1).mean()), "ndcg_at_10": C.r6(ndcg.mean())}


def own_history_top(hist: np.ndarray, mask: np.ndarray, fill: list[int]) -> np.ndarray:
    """Most frequent valid items of the row's own history (ties: most recent first), then
    the globally most popular items not already chosen."""
    out = np.zeros((len(hist), TOPK), np.int64)
    for r in range(len(hist)):
        seq = [int(x) for x, m in zip(hist[r], mask[r]) if m > 0 and x > OOV]
        c = Counter(seq)
        first = {x: seq.index(x) for x in c}
        picks = sorted(c, key=lambda x: (-c[x], first[x]))[:TOPK]
        picks += [x for x in fill if x not in picks][:TOPK - len(picks)]
        out[r] = picks
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", default=str(C.DATA / "transactions.parquet"))
    ap.add_argument("--items", type=int, default=5000, help="cap on the item vocabulary")
    ap.add_argument("--min-count", type=int, default=5, help="training occurrences for a terminal to get an id")
    ap.add_argument("--test-days", type=int, default=7)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--negatives", type=int, default=128)
    ap.add_argument("--dev", action="store_true", help="evaluate on the week before the test week; no export")
    ap.add_argument("--out", default=str(C.MODELS / "merchant-recommender"))
    a = ap.parse_args()
    clock = C.Clock()
    C.setup(a.seed)
    out = C.Path(a.out)

    D = load(C.Path(a.data), a.test_days, a.dev, a.items, a.min_count)
    items, item, hist, mask = D["items"], D["item"], D["hist"], D["mask"]
    n_items = len(items)
    tr = np.flatnonzero(D["is_train"] & (item > OOV))
    te = D["test"]
    y_te = item[te]
    oov_share = float((y_te == OOV).mean())
    print(f"{n_items} item ids ({n_items - 2} terminals + pad/oov), {len(tr)} training targets before "
          f"{D['split']:%Y-%m-%d %H:%M}, {len(te)} test cards ({oov_share:.1%} with an OOV target)")

    # Baselines.
    pop = [int(x) for x in np.argsort(-np.bincount(item[tr], minlength=n_items), kind="stable") if x > OOV][:TOPK]
    base_pop = ranking_metrics(np.tile(pop, (len(te), 1)), y_te)
    base_own = ranking_metrics(own_history_top(hist[te], mask[te], pop), y_te)
    # Reference with more information than the model gets: the card's whole past, not 20.
    card = D["df"]["card_id"].to_numpy()
    first_row = {c: i for i, c in reversed(list(enumerate(card)))}
    whole = [[int(x) for x in item[first_row[card[r]]:r][::-1]] for r in te]
    wl = max(len(w) for w in whole)
    wh = np.array([w + [0] * (wl - len(w)) for w in whole], np.int64)
    base_all = ranking_metrics(own_history_top(wh, (wh > 0).astype(np.float32), pop), y_te)
    print("baseline popularity", base_pop, "own last-20 most frequent", base_own, "own whole past", base_all)

    model = DIN(n_items)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=a.steps, pct_start=0.05)
    g = torch.Generator().manual_seed(a.seed)
    H, M, Y = torch.from_numpy(hist), torch.from_numpy(mask), torch.from_numpy(item)
    t_train = C.Clock()
    perm, pos = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)], 0
    for step in range(a.steps):
        if pos + a.batch > len(perm):
            perm, pos = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)], 0
        j = perm[pos:pos + a.batch]
        pos += a.batch
        model.train()
        # Sampled softmax: the row's positive + negatives drawn uniformly from the catalogue
        # (shared by the batch). Uniform proposals need no log-Q correction.
        neg = torch.randint(2, n_items, (a.negatives,), generator=g)
        cand = torch.cat([Y[j, None], neg[None].expand(len(j), -1)], dim=1)     # [B,1+K]
        s, _ = model.candidate_scores(H[j], M[j], cand)
        s = s.masked_fill(torch.cat([torch.zeros(len(j), 1, dtype=torch.bool),
                                     neg[None] == Y[j, None]], 1), INVALID)     # accidental hits
        loss = F.cross_entropy(s, torch.zeros(len(j), dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == a.steps - 1:
            print(f"step {step:5d} loss {float(loss.detach()):.4f} ({t_train()}s)", flush=True)
    train_seconds = t_train()
    model.eval()

    if a.dev:  # quick look with PyTorch, no export
        with torch.no_grad():
            top_dev = np.concatenate([model(H[te[s:s + 64]], M[te[s:s + 64]])[1].numpy()
                                      for s in range(0, len(te), 64)])
        print("DIN (dev week)", ranking_metrics(top_dev, y_te), f"train {train_seconds}s")
        return

    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "model.onnx"
    names = ["scores", "top_items", "top_attention"]
    C.export(model, {"history_items": H[te[:2]], "history_mask": M[te[:2]]}, onnx_path, names,
             {"history_items": {0: "batch"}, "history_mask": {0: "batch"}, "scores": {0: "batch"},
              "top_items": {0: "batch"}, "top_attention": {0: "batch"}})
    sess = C.ort_session(onnx_path)
    # ORT vs PyTorch on 320 test rows (scoring every item costs ~20 ms a row); top_items must agree exactly.
    feeds = [{"history_items": hist[te[s:s + 64]], "history_mask": mask[te[s:s + 64]]} for s in range(0, 320, 64)]
    diff = C.compare_torch_ort(model, sess, feeds, names, exact=("top_items",))
    print("ORT vs PyTorch max abs diff", diff)
    # Metrics from what is served: the ONNX model on every test card.
    ort_top, t_ort = [], time.time()
    for s in range(0, len(te), 64):
        f = {"history_items": hist[te[s:s + 64]], "history_mask": mask[te[s:s + 64]]}
        o = C.ort_run(sess, f)
        ort_top.append(o["top_items"])
        C.check_attention(o["top_attention"], f["history_mask"][:, None, :], "top_attention")
        assert np.all(o["top_items"] > OOV)
        assert np.all(np.diff(np.take_along_axis(o["scores"], o["top_items"], 1), axis=1) <= 0)
    metrics = ranking_metrics(np.concatenate(ort_top), y_te)
    ms_per_row = round((time.time() - t_ort) / len(te) * 1000, 1)
    print("DIN", metrics, f"train {train_seconds}s, ORT {ms_per_row} ms/row")

    # Golden rows: full histories, a short one, an empty one (cold start), one with OOV items.
    lens = mask[te].sum(1)
    full = te[lens == L][:3].tolist()
    short = te[(lens > 0) & (lens < 8)][:1].tolist() or tr[:1].tolist()
    oov_rows = te[((hist[te] == OOV) & (mask[te] > 0)).any(1)][:1].tolist()
    g_hist = np.concatenate([hist[full + short + oov_rows], np.zeros((1, L), np.int64)])
    g_mask = np.concatenate([mask[full + short + oov_rows], np.zeros((1, L), np.float32)])
    if not short:   # no short history in the test week: cut one artificially
        g_mask[3, 5:] = 0
        g_hist[3, 5:] = 0
    gout = C.write_golden(out, sess, {"history_items": g_hist, "history_mask": g_mask})
    C.check_attention(gout["top_attention"], g_mask[:, None, :], "golden top_attention")

    C.write_json(out / "items.json", items)
    df = D["df"]
    C.write_manifest(out, sess, {
        "name": "merchant-recommender", "version": "1", "task": "recommendation",
        "item_vocab": "items.json",
        "items": {"kind": "terminal_id", "count_including_special": n_items, "pad_id": PAD, "oov_id": OOV,
                  "rule": f"terminals with >= {a.min_count} transactions in the training period, most frequent first "
                          f"(ties by terminal_id, at most {a.items}), get ids 2.. in that order; any other terminal "
                          "-> <oov> (1); <pad>/<oov> score -1e9 and are never recommended",
                  "why_terminals": "11 MCCs would make top-10 trivial; cards shop at the few dozen terminals near "
                                   "home, which the item embeddings learn (co-visitation ~ geography)"},
        "history": {"length": L, "order": "position 0 = most recent previous transaction; padding on the right "
                                          "(history_items 0, history_mask 0)"},
        "top_k": TOPK,
        "attention": "top_attention[b,k,j] = a_j(top_items[b,k]): the DIN activation-unit weight of history "
                     "position j for the k-th recommended item (softmax over valid positions; 0 on padding; all 0 "
                     "for an empty history)",
        "metrics": {
            "split": f"time split: train on targets before {D['split']:%Y-%m-%d %H:%M} UTC; test = each card's last "
                     f"transaction in the final {a.test_days} days ({len(te)} cards; history from any earlier "
                     f"transaction). A test target outside the vocabulary counts as a miss "
                     f"({oov_share:.2%} of test cards).",
            "model": metrics,
            "baseline_popularity": base_pop,
            "baseline_own_history_most_frequent": {**base_own, "rule": "most frequent items of the same last-20 "
                                                   "history (ties: most recent), filled with popularity"},
            "reference_own_whole_past_most_frequent": {**base_all, "rule": "the same rule over the card's whole "
                                                       "past (more information than the model's 20 positions)"},
        },
        "training_data": {"kind": "riskstream simulate (training/.data/transactions.parquet)",
                          "path": str(C.Path(a.data).resolve().relative_to(C.ROOT)) if C.Path(a.data).resolve().is_relative_to(C.ROOT) else a.data, "sha256": C.sha256_file(D["path"]),
                          "rows": int(len(df)), "cards": int(df["card_id"].n_unique()),
                          "terminals": int(df["terminal_id"].n_unique()), "train_targets": int(len(tr))},
        "training": {"steps": a.steps, "batch": a.batch, "loss": f"sampled softmax: positive + {a.negatives} "
                     "uniform negatives shared by the batch (accidental hits masked)",
                     "optimizer": "Adam, OneCycle max lr 3e-3", "train_seconds": train_seconds, "threads": 1},
        "architecture": {"summary": "item embedding d=32; activation unit MLP(4d -> 16, PReLU -> 1) on "
                                    "[e_j, e_i, e_j-e_i, e_j*e_i], masked softmax over history; interest u = sum a_j "
                                    "e_j; scorer MLP(3d -> 32, PReLU -> 1) on [u, e_i, u*e_i] + item bias",
                         "d": 32, "parameters": C.n_params(model),
                         "inference_memory": f"the activation unit materialises [B,20,16,N] floats: "
                                             f"{20 * 16 * n_items * 4 / 1e6:.1f} MB per row for N={n_items}; "
                                             "score in batches of <= 64 rows",
                         "ort_ms_per_row_batch64_1thread": ms_per_row},
        "export": C.export_info(diff),
        "seed": a.seed,
    })
    print(f"merchant-recommender: HR@10 {metrics['hr_at_10']:.4f} NDCG@10 {metrics['ndcg_at_10']:.4f} vs popularity "
          f"{base_pop['hr_at_10']:.4f}/{base_pop['ndcg_at_10']:.4f}, own-history {base_own['hr_at_10']:.4f}/"
          f"{base_own['ndcg_at_10']:.4f}; train {train_seconds}s, total {clock()}s")


if __name__ == "__main__":
    main()
