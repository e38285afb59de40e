"""models/merchant-lm: a causal transformer language model over a card's sequence of
merchant categories (MCC). The surprise of a new transaction, −log p(mcc_t | the
card's previous MCCs), is a fraud feature.

Vocabulary (vocab.json): 0 = <pad>, 1 = <bos>, 2 = <unk> (unknown or missing MCC),
then the MCCs of the training period by descending count (ties by code), ids 3..
Input: `tokens` int64 [B,32] = [<bos>, mcc ids of the card's previous transactions,
oldest first], right-padded with <pad>; `token_mask` float32 [B,32] (1 real, 0 pad).
Outputs: `log_probs` float32 [B,32,V]: position t holds log p(next token | tokens[..=t]);
`attention` float32 [B,32,32]: last layer, mean over heads, causal (row t over
positions ≤ t), 0 at padded keys, all-0 rows at padded queries.

Surprise of a new transaction with MCC m, given the card's k most recent previous MCCs
(k ≤ 31, oldest first): tokens = [<bos>, those k ids, pad...], mask = k+1 ones;
surprise = −log_probs[b, k, id(m)] (nats). Within one window, the surprise of the
token at position t ≥ 1 is −log_probs[b, t−1, tokens[b, t]].
"""

from __future__ import annotations

import argparse
import datetime as dt
import math

import numpy as np
import polars as pl
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import common as C

T = 32
PAD, BOS, UNK = 0, 1, 2


class CausalLM(nn.Module):
    def __init__(self, vocab: int, d: int = 48, heads: int = 4, layers: int = 2, ff: int = 96, drop: float = 0.1):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(T, d) * 0.02)
        self.layers = nn.ModuleList([nn.ModuleDict({
            "n1": nn.LayerNorm(d), "qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d),
            "n2": nn.LayerNorm(d), "ff": nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))})
            for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)
        self.drop = nn.Dropout(drop)
        self.register_buffer("causal", torch.tril(torch.ones(T, T)), persistent=False)

    def forward(self, tokens, token_mask):
        b, t = tokens.shape
        x = self.drop(self.tok(tokens) + self.pos[:t])
        # query i may attend key j iff j <= i, j is real, and i is real (padded query rows are all 0)
        mask = (self.causal[:t, :t][None] * token_mask[:, None, :] * token_mask[:, :, None])[:, None]  # [B,1,T,T]
        w = None
        for lyr in self.layers:
            q, k, v = lyr["qkv"](lyr["n1"](x)).reshape(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
            w = C.masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh), mask)
            x = x + self.drop(lyr["proj"]((w @ v).transpose(1, 2).reshape(b, t, -1)))
            x = x + self.drop(lyr["ff"](lyr["n2"](x)))
        return torch.log_softmax(self.out(self.norm(x)), dim=-1), w.mean(dim=1)


def load(path, test_days: int):
    df = pl.read_parquet(path, columns=["tx_id", "ts", "card_id", "mcc", "is_fraud", "scenario"]) \
        .sort(["card_id", "ts", "tx_id"])
    t_end = df["ts"].max()
    split = t_end - dt.timedelta(days=test_days)
    tr_df = df.filter((pl.col("ts") < split) & pl.col("mcc").is_not_null())
    counts = tr_df.group_by("mcc").len().sort(["len", "mcc"], descending=[True, False])
    vocab = ["<pad>", "<bos>", "<unk>"] + [str(m) for m in counts["mcc"].to_list()]
    index = {int(m): i + 3 for i, m in enumerate(counts["mcc"].to_list())}
    tok = np.array([index.get(m, UNK) if m is not None else UNK for m in df["mcc"].to_list()], np.int64)
    card = df["card_id"].to_numpy()
    starts = np.r_[0, np.flatnonzero(card[1:] != card[:-1]) + 1]
    ends = np.r_[starts[1:], len(df)]
    is_train = (df["ts"] < split).to_numpy()
    return {"df": df, "vocab": vocab, "tok": tok, "starts": starts, "ends": ends, "is_train": is_train,
            "split": split, "t_end": t_end, "fraud": df["is_fraud"].to_numpy(), "path": path}


def context_windows(tok, starts, ends, rows_mask):
    """One window per selected transaction i: [<bos>, previous ≤31 tokens] + the target.
    Returns tokens [N,T], mask [N,T], position k of the last context token, target id, row index."""
    rows = np.flatnonzero(rows_mask)
    card_start = np.repeat(starts, ends - starts)[rows]
    k = np.minimum(rows - card_start, T - 1)
    tokens = np.zeros((len(rows), T), np.int64)
    mask = np.zeros((len(rows), T), np.float32)
    tokens[:, 0] = BOS
    mask[:, 0] = 1
    for j in range(1, T):
        has = k >= j
        tokens[has, j] = tok[rows[has] - k[has] + j - 1]
        mask[has, j] = 1
    return tokens, mask, k, tok[rows], rows


def training_windows(tok, starts, ends, is_train, stride: int):
    """[<bos>, x_s .. x_{s+30}] with targets x_s .. x_{s+31}, over each card's training-period
    transactions, windows every `stride` positions (the last one flush with the end)."""
    X, Y = [], []
    for s, e in zip(starts, ends):
        n = int(is_train[s:e].sum())          # training rows are a prefix of each card's rows
        if n == 0:
            continue
        seq = tok[s:s + n]
        begins = list(range(0, max(n - T, 0) + 1, stride))
        if n > T and begins[-1] != n - T:
            begins.append(n - T)
        for b in begins:
            tgt = seq[b:b + T]
            x = np.zeros(T, np.int64)
            y = np.full(T, -100, np.int64)
            x[0] = BOS
            x[1:len(tgt)] = tgt[:-1]
            y[:len(tgt)] = tgt
            X.append(x)
            Y.append(y)
    return np.array(X), np.array(Y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--data", default=str(C.DATA / "transactions.parquet"))
    ap.add_argument("--test-days", type=int, default=14)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default=str(C.MODELS / "merchant-lm"))
    a = ap.parse_args()
    clock = C.Clock()
    C.setup(a.seed)
    out = C.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    D = load(C.Path(a.data), a.test_days)
    tok, vocab, V = D["tok"], D["vocab"], len(D["vocab"])
    X, Y = training_windows(tok, D["starts"], D["ends"], D["is_train"], a.stride)
    te_tokens, te_mask, te_k, te_y, te_rows = context_windows(tok, D["starts"], D["ends"], ~D["is_train"])
    print(f"vocab {V}, {len(X)} training windows, {len(te_rows)} held-out transactions after "
          f"{D['split']:%Y-%m-%d %H:%M}")

    # Baselines on the same held-out targets.
    tr_tok = tok[D["is_train"]]
    uni = np.bincount(tr_tok, minlength=V).astype(np.float64)[3:] + 1.0
    uni = np.r_[np.zeros(3), uni / uni.sum()]                    # add-one over the real MCCs
    nll_uni = -np.log(uni[te_y]).mean()
    prev = te_tokens[np.arange(len(te_k)), te_k]                 # the previous token (<bos> if none)
    big = np.ones((V, V))                                        # add-one bigram from training transitions
    for s, e in zip(D["starts"], D["ends"]):
        seq = np.r_[BOS, tok[s:e][D["is_train"][s:e]]]
        np.add.at(big, (seq[:-1], seq[1:]), 1)
    big[:, :3] = 0
    big /= big.sum(1, keepdims=True)
    nll_big = -np.log(big[prev, te_y]).mean()
    # Per-card context unigram with a Dirichlet prior towards the unigram; the prior strength
    # is chosen on training-period transactions (never on the held-out ones).
    def p_context(tokens, mask, k, y, alpha):
        counts = np.zeros((len(k), V))
        np.add.at(counts, (np.repeat(np.arange(len(k)), T - 1), tokens[:, 1:].ravel()), mask[:, 1:].ravel())
        return (counts[np.arange(len(k)), y] + alpha * uni[y]) / (k + alpha)
    tr_sample = np.zeros(len(tok), bool)
    tr_sample[np.random.default_rng(a.seed).choice(np.flatnonzero(D["is_train"]), 20000, replace=False)] = True
    tt, tm, tk, ty, _ = context_windows(tok, D["starts"], D["ends"], tr_sample)
    alphas = [1, 2, 5, 10, 20, 50, 100]
    alpha = min(alphas, key=lambda al: -np.log(p_context(tt, tm, tk, ty, al)).mean())
    p_ctx = p_context(te_tokens, te_mask, te_k, te_y, alpha)
    nll_ctx = -np.log(p_ctx).mean()
    print(f"baselines perplexity: unigram {math.exp(nll_uni):.4f}, bigram {math.exp(nll_big):.4f}, "
          f"own-context unigram {math.exp(nll_ctx):.4f}")

    model = CausalLM(V)
    g = torch.Generator().manual_seed(a.seed)
    bs = 128
    steps = a.epochs * math.ceil(len(X) / bs)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    Mt = (Xt != PAD).float()
    t_train = C.Clock()
    step = 0
    for ep in range(a.epochs):
        perm = torch.randperm(len(X), generator=g)
        model.train()
        for s in range(0, len(X), bs):
            j = perm[s:s + bs]
            lp, _ = model(Xt[j], Mt[j])
            loss = F.nll_loss(lp.reshape(-1, V), Yt[j].reshape(-1), ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 300 == 0:
                print(f"epoch {ep} step {step:5d} loss {float(loss.detach()):.4f} ({t_train()}s)", flush=True)
            step += 1
    train_seconds = t_train()
    model.eval()

    def surprise_of(tokens, mask, k, y, chunk=2048):
        out = np.zeros(len(y))
        with torch.no_grad():
            for s in range(0, len(y), chunk):
                lp, _ = model(torch.from_numpy(tokens[s:s + chunk]), torch.from_numpy(mask[s:s + chunk]))
                lp = lp.numpy()
                r = np.arange(len(lp))
                out[s:s + chunk] = -lp[r, k[s:s + chunk], y[s:s + chunk]]
        return out

    sur = surprise_of(te_tokens, te_mask, te_k, te_y)
    ppl = math.exp(sur.mean())
    fraud = D["fraud"][te_rows]
    auc = {"lm_surprise": C.r6(roc_auc_score(fraud, sur)),
           "unigram_surprise": C.r6(roc_auc_score(fraud, -np.log(uni[te_y]))),
           "own_context_surprise": C.r6(roc_auc_score(fraud, -np.log(p_ctx)))}
    print(f"LM perplexity {ppl:.4f}; fraud AUC of surprise {auc}")

    onnx_path = out / "model.onnx"
    names = ["log_probs", "attention"]
    C.export(model, {"tokens": torch.from_numpy(te_tokens[:2]), "token_mask": torch.from_numpy(te_mask[:2])},
             onnx_path, names, {"tokens": {0: "batch"}, "token_mask": {0: "batch"},
                                "log_probs": {0: "batch"}, "attention": {0: "batch"}})
    sess = C.ort_session(onnx_path)
    sample = np.random.default_rng(a.seed).choice(len(te_y), min(8192, len(te_y)), replace=False)
    feeds = [{"tokens": te_tokens[sample[s:s + 1024]], "token_mask": te_mask[sample[s:s + 1024]]}
             for s in range(0, len(sample), 1024)]
    diff = C.compare_torch_ort(model, sess, feeds, names)
    print("ORT vs PyTorch max abs diff", diff)
    for f in feeds:
        o = C.ort_run(sess, f)
        t = f["tokens"].shape[1]
        allowed = np.tril(np.ones((t, t)))[None] * f["token_mask"][:, None, :] * f["token_mask"][:, :, None]
        C.check_attention(o["attention"], allowed, "merchant-lm attention")
    # ORT surprise == PyTorch surprise on the sample
    o = C.ort_run(sess, {"tokens": te_tokens[sample[:1024]], "token_mask": te_mask[sample[:1024]]})
    ort_sur = -o["log_probs"][np.arange(1024), te_k[sample[:1024]], te_y[sample[:1024]]]
    assert np.abs(ort_sur - sur[sample[:1024]]).max() < 1e-5

    # Golden: full windows, a short one, <bos> only, an all-padding row.
    full = np.flatnonzero(te_k == T - 1)[:3]
    short = np.flatnonzero(te_k == 4)[:1]
    g_tok = np.concatenate([te_tokens[full], te_tokens[short], np.zeros((2, T), np.int64)])
    g_mask = np.concatenate([te_mask[full], te_mask[short], np.zeros((2, T), np.float32)])
    g_tok[-2, 0], g_mask[-2, 0] = BOS, 1.0
    gout = C.write_golden(out, sess, {"tokens": g_tok, "token_mask": g_mask})
    allowed = np.tril(np.ones((T, T)))[None] * g_mask[:, None, :] * g_mask[:, :, None]
    C.check_attention(gout["attention"], allowed, "golden attention")

    # surprise_vectors.json: whole windows [<bos>, x_1..x_n] from held-out cards, including
    # fraud, with the surprise of every token after <bos>.
    df = D["df"]
    vec_rows = list(np.flatnonzero((te_k == T - 1) & (fraud == 1))[:2]) + list(np.flatnonzero(te_k == T - 1)[:2]) \
        + list(np.flatnonzero(te_k == 6)[:1])
    vectors = []
    for r in vec_rows:
        row = te_rows[r]
        toks = np.r_[te_tokens[r, :te_k[r] + 1], te_y[r]]       # context + the target itself
        n = len(toks)
        tt = np.zeros((1, T), np.int64)
        mm = np.zeros((1, T), np.float32)
        tt[0, :min(n, T)] = toks[:T]
        mm[0, :min(n, T)] = 1
        if n > T:   # target beyond the window: score it from the k=31 window instead
            tt[0], mm[0] = te_tokens[r], te_mask[r]
        lp = C.ort_run(sess, {"tokens": tt, "token_mask": mm})["log_probs"][0]
        m = int(mm.sum())
        s_pos = [C.r6(-lp[t - 1, tt[0, t]]) for t in range(1, m)]
        target_surprise = C.r6(-lp[te_k[r], te_y[r]])
        first = row - te_k[r]
        vectors.append({"tx_ids": df["tx_id"][int(first):int(row) + 1].to_list(),
                        "mccs": [None if x is None else int(x) for x in df["mcc"][int(first):int(row) + 1].to_list()],
                        "tokens": tt[0].tolist(), "token_mask": mm[0].tolist(),
                        "surprise": s_pos,
                        "surprise_note": "surprise[t-1] = -log_probs[t-1, tokens[t]] for t = 1..sum(mask)-1",
                        "last_tx": {"tx_id": df["tx_id"][int(row)], "context_len": int(te_k[r]),
                                    "surprise": target_surprise, "is_fraud": bool(fraud[r]),
                                    "scenario": df["scenario"][int(row)]}})
    C.write_json(out / "surprise_vectors.json", {
        "note": "last_tx.surprise = -log_probs[context_len, id(mcc of last_tx)] with tokens = [<bos>, the previous "
                "context_len mcc ids]; `tokens` is that window when the target does not fit (context_len = 31), "
                "otherwise the window extended by the target itself", "vectors": vectors})
    C.write_json(out / "vocab.json", {"tokens": vocab, "pad_id": PAD, "bos_id": BOS, "unk_id": UNK,
                                      "note": "tokens[i] for i >= 3 is the MCC as a decimal string"})

    by_scen = {}
    scen = df["scenario"].to_numpy()[te_rows]
    for name in sorted({s for s in scen if s is not None}):
        by_scen[name] = C.r6(sur[scen == name].mean())
    by_scen["legit"] = C.r6(sur[fraud == 0].mean())
    C.write_manifest(out, sess, {
        "name": "merchant-lm", "version": "1", "task": "language-model",
        "vocab": "vocab.json", "vocab_size": V, "max_len": T,
        "surprise": "tokens = [<bos>, the card's k most recent previous MCC ids, oldest first] (k <= 31), right-padded "
                    "with <pad>, token_mask 1 on the k+1 real positions; surprise of a new transaction with MCC m = "
                    "-log_probs[b, k, id(m)] in nats (id(m) = <unk> for an unknown/missing MCC). Within a window, "
                    "the surprise of token t >= 1 is -log_probs[b, t-1, tokens[b,t]]. See surprise_vectors.json.",
        "attention": "last layer self-attention, mean over 4 heads: attention[b,i,j] = weight of position j <= i when "
                     "predicting the token after position i; 0 for j > i and at padded keys; padded query rows are "
                     "all 0",
        "metrics": {
            "split": f"time split: train on transactions before {D['split']:%Y-%m-%d %H:%M} UTC; held out = every "
                     f"transaction in the final {a.test_days} days ({len(te_rows)}), each scored with the card's "
                     "previous <= 31 MCCs as context (which may reach back into the training period)",
            "perplexity": C.r6(ppl), "mean_surprise_nats": C.r6(sur.mean()),
            "baseline_unigram_perplexity": C.r6(math.exp(nll_uni)),
            "baseline_bigram_perplexity": C.r6(math.exp(nll_big)),
            "baseline_own_context_unigram_perplexity": C.r6(math.exp(nll_ctx)),
            "baseline_own_context_rule": f"p(m) = (count of m in the same <=31-token context + a p_unigram(m)) / "
                                         f"(k + a), a = {alpha} chosen on training-period transactions",
            "fraud_auc_of_surprise": auc,
            "mean_surprise_by_scenario": by_scen,
        },
        "training_data": {"kind": "riskstream simulate (transactions: card_id, ts, mcc)",
                          "path": str(C.Path(a.data).resolve().relative_to(C.ROOT))
                          if C.Path(a.data).resolve().is_relative_to(C.ROOT) else a.data,
                          "sha256": C.sha256_file(D["path"]), "rows": int(len(df)),
                          "training_windows": int(len(X)), "window_stride": a.stride},
        "training": {"epochs": a.epochs, "batch": bs, "optimizer": "AdamW wd 0.01, OneCycle max lr 3e-3",
                     "dropout": 0.1, "train_seconds": train_seconds, "threads": 1},
        "architecture": {"summary": "token + learned position embedding (d=48); 2 pre-LN causal self-attention "
                                    "blocks (4 heads, GELU MLP 96); LayerNorm; Linear -> log_softmax",
                         "d_model": 48, "heads": 4, "layers": 2, "parameters": C.n_params(model)},
        "export": C.export_info(diff),
        "seed": a.seed,
    })
    print(f"merchant-lm: perplexity {ppl:.4f} vs unigram {math.exp(nll_uni):.4f}, bigram {math.exp(nll_big):.4f}, "
          f"own-context {math.exp(nll_ctx):.4f}; train {train_seconds}s, total {clock()}s")


if __name__ == "__main__":
    main()
