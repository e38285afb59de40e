"""models/merchant-descriptor: classify raw card-statement descriptors into 10 merchant
categories, with attention pooling over the tokens.

Data: descriptor_data.py (synthetic, seeded; test merchants held out by name).
Tokenizer (TOKENIZER_SPEC below, also in manifest.json and tokenizer.json):
ASCII-lowercase, maximal [a-z] runs and [0-9] runs, digits → <num>, unknown → <unk>,
truncate/pad to 16. Model: token + position embedding → 1 masked self-attention block
→ masked attention pooling → linear → softmax. Outputs `probabilities` [B,10] and
`attention` [B,16] (the pooling weights over token positions; 0 on padding).
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections import Counter

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

import common as C
import descriptor_data as DD
from descriptor_tokenizer import MIN_COUNT, NUM, PAD, T, TOKENIZER_SPEC, UNK, build_vocab, encode, pieces


class DescriptorClassifier(nn.Module):
    def __init__(self, vocab: int, n_classes: int, d: int = 64, heads: int = 4, drop: float = 0.1):
        super().__init__()
        self.h, self.dh = heads, d // heads
        self.tok = nn.Embedding(vocab, d, padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(1, T, d) * 0.02)
        self.n1, self.n2, self.n3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.pool = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        self.out = nn.Linear(d, n_classes)
        self.drop = nn.Dropout(drop)

    def scores(self, token_ids, token_mask):
        b, t = token_ids.shape
        x = self.drop(self.tok(token_ids) + self.pos[:, :t])
        q, k, v = self.qkv(self.n1(x)).reshape(b, t, 3, self.h, self.dh).permute(2, 0, 3, 1, 4).unbind(0)
        w = C.masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(self.dh), token_mask[:, None, None, :])
        x = x + self.drop(self.proj((w @ v).transpose(1, 2).reshape(b, t, -1)))
        x = x + self.drop(self.ff(self.n2(x)))
        x = self.n3(x)
        attention = C.masked_softmax(self.pool(x).squeeze(-1), token_mask)          # [B,T]
        pooled = (attention.unsqueeze(-1) * x).sum(1)
        return self.out(self.drop(pooled)), attention

    def forward(self, token_ids, token_mask):
        logits, attention = self.scores(token_ids, token_mask)
        return torch.softmax(logits, dim=-1), attention


TOKENIZER_CASES = [
    "", "   ", "***///---", "#", "SQ *BLUE BOTTLE COFFEE 0412 SAN FRANCISCO CA", "AMZN Mktp US*2K4L91",
    "UBER *TRIP HELP.UBER.COM", "SHELL OIL 57442 HOUSTON TX", "NETFLIX.COM 866-579-7172 CA", "7ELEVEN",
    "7-ELEVEN 32145", "AMZN*2K4L91", "CAFÉ ZÜRICH", "ÉCOLE", "naïve café", "\u212aELVIN",  # Kelvin sign K
    "\u0130STANBUL",  # dotted capital I
    "ｓｈｅｌｌ ＯＩＬ",  # fullwidth letters are not ASCII
    "Mc'Donald\u2019s", "TST* Joe's Pizza", "WAL-MART #0123", "PG&E WEB ONLINE", "AT&T *BILL PAYMENT",
    "CVS/PHARMACY #01234", "a1b2c3", "123456789", "12 34 56", "x" * 40,
    "ZZZ " * 30, "DELTA AIR 0062345678901 ATLANTA GA " * 3, "uber\ttrip\nhelp", "  leading and trailing  ",
    "ATM W/D 0412 CHASE BANK", "lyft *ride sat 10pm", "Ünïcödé Ønly ß", "emoji 🍕 pizza 🍕", "0",
    "PAYPAL *ALIEXPRESS", "GOOGLE *YOUTUBE PREMIUM", "qwertyuiop asdfghjkl", "No\u00b2 \u0663\u0664 12",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--train", type=int, default=16000)
    ap.add_argument("--test", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", default=str(C.MODELS / "merchant-descriptor"))
    a = ap.parse_args()
    clock = C.Clock()
    C.setup(a.seed)
    out = C.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    train, test, test_seen, pools = DD.generate(a.seed, a.train, a.test)
    vocab = build_vocab([t for t, _ in train])
    index = {w: i for i, w in enumerate(vocab)}
    print(f"{len(train)} train / {len(test)} test descriptors, vocab {len(vocab)}")

    def tensors(rows):
        enc = [encode(t, index) for t, _ in rows]
        return (np.array([e[0] for e in enc], np.int64), np.array([e[1] for e in enc], np.float32),
                np.array([c for _, c in rows], np.int64))

    ids_tr, m_tr, y_tr = tensors(train)
    ids_te, m_te, y_te = tensors(test)
    ids_se, m_se, y_se = tensors(test_seen)
    unk_rate = float(((ids_te == UNK) & (m_te > 0)).sum() / m_te.sum())

    # Baseline: bag of words over exactly the same token ids (counts), logistic regression.
    def bow(ids, m):
        x = np.zeros((len(ids), len(vocab)), np.float32)
        np.add.at(x, (np.repeat(np.arange(len(ids)), T), ids.ravel()), m.ravel())
        return x
    lr = LogisticRegression(max_iter=3000, C=1.0).fit(bow(ids_tr, m_tr), y_tr)
    pred_lr = lr.predict(bow(ids_te, m_te))
    base = {"accuracy": C.r6((pred_lr == y_te).mean()), "macro_f1": C.r6(f1_score(y_te, pred_lr, average="macro"))}
    pred_lr_se = lr.predict(bow(ids_se, m_se))
    base_seen = {"accuracy": C.r6((pred_lr_se == y_se).mean()),
                 "macro_f1": C.r6(f1_score(y_se, pred_lr_se, average="macro"))}
    print("baseline BoW logistic regression", base)

    model = DescriptorClassifier(len(vocab), len(DD.LABELS))
    g = torch.Generator().manual_seed(a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    bs = 128
    steps = a.epochs * math.ceil(len(train) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    Itr, Mtr, Ytr = map(torch.from_numpy, (ids_tr, m_tr, y_tr))
    t_train = C.Clock()
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(len(train), generator=g)
        tot = 0.0
        for s in range(0, len(train), bs):
            j = perm[s:s + bs]
            ids = Itr[j].clone()
            # Word dropout: real tokens become <unk> with p=0.15, so the model learns to
            # classify from the context around names it has never seen.
            drop = (torch.rand(ids.shape, generator=g) < 0.15) & (ids > NUM)
            ids[drop] = UNK
            logits, _ = model.scores(ids, Mtr[j])
            loss = F.cross_entropy(logits, Ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(j)
        print(f"epoch {ep:2d} loss {tot / len(train):.4f} ({t_train()}s)", flush=True)
    train_seconds = t_train()
    model.eval()
    with torch.no_grad():
        p_te, att_te = model(torch.from_numpy(ids_te), torch.from_numpy(m_te))
        p_se, _ = model(torch.from_numpy(ids_se), torch.from_numpy(m_se))
    pred = p_te.argmax(1).numpy()
    metrics = {"accuracy": C.r6((pred == y_te).mean()), "macro_f1": C.r6(f1_score(y_te, pred, average="macro"))}
    pred_se = p_se.argmax(1).numpy()
    seen = {"accuracy": C.r6((pred_se == y_se).mean()), "macro_f1": C.r6(f1_score(y_se, pred_se, average="macro"))}
    print("model", metrics, "seen merchants", seen, "baseline seen", base_seen)
    per_class = f1_score(y_te, pred, average=None)

    onnx_path = out / "model.onnx"
    names = ["probabilities", "attention"]
    C.export(model, {"token_ids": torch.from_numpy(ids_te[:3]), "token_mask": torch.from_numpy(m_te[:3])},
             onnx_path, names, {"token_ids": {0: "batch"}, "token_mask": {0: "batch"},
                                "probabilities": {0: "batch"}, "attention": {0: "batch"}})
    sess = C.ort_session(onnx_path)
    feeds = [{"token_ids": ids_te[s:s + 500], "token_mask": m_te[s:s + 500]} for s in range(0, len(test), 500)]
    diff = C.compare_torch_ort(model, sess, feeds, names)
    print("ORT vs PyTorch max abs diff", diff)
    att = np.concatenate([C.ort_run(sess, f)["attention"] for f in feeds])
    C.check_attention(att, m_te, "descriptor attention")

    # Golden rows: held-out descriptors of different categories, the empty string and one
    # longer than 16 tokens.
    gtexts = [test[i][0] for i in range(6)] + ["", "DELTA AIR 0062345678901 ATLANTA GA REF 12 34 SEAT 14C GATE B7 X"]
    genc = [encode(t, index) for t in gtexts]
    gfeed = {"token_ids": np.array([e[0] for e in genc], np.int64),
             "token_mask": np.array([e[1] for e in genc], np.float32)}
    gout = C.write_golden(out, sess, gfeed)
    C.check_attention(gout["attention"], gfeed["token_mask"], "golden attention")
    golden_texts = gtexts

    # Tokenizer artefacts for the Rust port.
    C.write_json(out / "tokenizer.json", {
        "spec": TOKENIZER_SPEC, "max_len": T, "pad_id": PAD, "unk_id": UNK, "num_id": NUM, "min_count": MIN_COUNT,
        "vocab": vocab})
    cases = TOKENIZER_CASES + golden_texts + [test[i][0] for i in range(6, 12)]
    C.write_json(out / "tokenizer_vectors.json", [
        {"text": t, "pieces": pieces(t), "ids": encode(t, index)[0], "mask": encode(t, index)[1]} for t in cases])

    # Which tokens get the attention: top pooled tokens by category on the test set.
    inv = {i: w for i, w in enumerate(vocab)}
    top_tokens = {}
    for c, lab in enumerate(DD.LABELS):
        acc = Counter()
        for r in np.flatnonzero(y_te == c)[:300]:
            k = int(att[r].argmax())
            acc[inv[int(ids_te[r, k])]] += 1
        top_tokens[lab] = [w for w, _ in acc.most_common(5)]

    data_digest = hashlib.sha256("\n".join(f"{c}\t{t}" for t, c in train + test).encode()).hexdigest()
    C.write_manifest(out, sess, {
        "name": "merchant-descriptor", "version": "1", "task": "text-classification",
        "labels": DD.LABELS,
        "tokenizer": {"file": "tokenizer.json", "vectors": "tokenizer_vectors.json", "max_len": T,
                      "vocab_size": len(vocab), "spec": TOKENIZER_SPEC},
        "attention": "attention-pooling weights over the 16 token positions (after one self-attention block); "
                     "0 on padding, rows sum to 1 (all 0 for an empty descriptor)",
        "metrics": {
            "split": f"synthetic descriptors: {len(train)} train / {len(test)} test, balanced classes; the test "
                     f"split uses held-out merchants (30% of each category's chains and 30% of the independent "
                     f"name words are test-only)",
            **metrics,
            "per_class_f1": {lab: C.r6(f) for lab, f in zip(DD.LABELS, per_class)},
            "baseline_bow_logistic_regression": {**base, "config": "LogisticRegression(max_iter=3000, C=1.0) on "
                                                 "token-id counts of the same 16-token encoding"},
            "seen_merchants_reference": {
                "split": f"{len(test_seen)} fresh descriptors of the training merchants (new store numbers, "
                         "cities, prefixes, truncation)",
                "model": seen, "baseline_bow_logistic_regression": base_seen},
            "test_unk_token_rate": C.r6(unk_rate),
            "top_attended_token_by_class": top_tokens,
        },
        "training_data": {"kind": "synthetic card-statement descriptors, training/zoo/descriptor_data.py",
                          "generated_with_seed": a.seed, "train_rows": len(train), "test_rows": len(test),
                          "sha256_of_label_tab_text_lines": data_digest,
                          "held_out_chains": {k: v["chains"] for k, v in pools["test"].items()}},
        "training": {"epochs": a.epochs, "batch": bs, "optimizer": "AdamW wd 0.01, OneCycle max lr 2e-3",
                     "word_dropout": 0.15, "dropout": 0.1, "train_seconds": train_seconds, "threads": 1},
        "architecture": {"summary": "token embedding (d=64) + learned position embedding; 1 pre-LN masked "
                                    "self-attention block (4 heads) + GELU MLP; LayerNorm; attention pooling "
                                    "(w . tanh(W h_t), masked softmax); Linear -> softmax",
                         "d_model": 64, "heads": 4, "parameters": C.n_params(model)},
        "export": C.export_info(diff),
        "seed": a.seed,
    })
    print(f"merchant-descriptor: accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f} vs BoW-LR "
          f"{base['accuracy']:.4f} / {base['macro_f1']:.4f}; train {train_seconds}s, total {clock()}s")


if __name__ == "__main__":
    main()
