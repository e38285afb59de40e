"""Reference text processing and decoding for the cheque-words encoder/decoder pair.
The Rust side reimplements exactly this; decode_vectors.json pins the results.

Amount → words (the generator, `amount_words`): integer part n in 0..99,999 in US
cheque style — "zero"; 1..19 as one word; tens as "forty-five" (hyphen); "two
hundred forty-five" (no "and" inside the integer part); "twelve thousand three
hundred forty-five" — then " and NN/100" with two-digit cents.
Example: 245.10 → "two hundred forty-five and 10/100".

Source tokens (`source_tokens`): lowercase ASCII (A-Z → a-z), split on spaces and
hyphens (runs of separators give no empty tokens); a piece made only of [a-z] is
one token; any other piece (the "10/100" cents part) is split into its single
characters: "1", "0", "/", "1", "0", "0". Ids from source_vocab.json; a token not in
the vocabulary → <unk> (1); padded on the right with <pad> (0), src_mask 1.0 / 0.0.

Target: characters "0".."9" and "." (ids 3..13) with <pad>=0, <bos>=1, <eos>=2.

Greedy (`greedy`): prefix = [<bos>]; for up to MAX_STEPS=12 steps run the decoder
on the whole prefix, take log_probs at the last position, pick the argmax over
the tokens other than <pad> and <bos> (ties → lowest id), append it; stop after
<eos>. The output string is the characters of the generated tokens before
<eos> (all of them if <eos> never came).

Beam search (`beam`, width K=4, length-normalised log-prob, MAX_STEPS=12):
  alive = [([<bos>], 0.0)], finished = []
  for step in 1..=12 while alive is non-empty:
    run the decoder on every alive prefix (same length), last-position log_probs
    candidates = (score_i + logp_i[t], i, t) for every alive hypothesis i (in
        order) and every token t except <pad>, <bos>; scores summed in float64
    keep the K best by score (descending; ties → lower i, then lower t)
    each kept candidate ending in <eos> → finished with normalised score
        score / n (n = generated tokens including <eos>); the others → the new
        alive list, in kept order (so the beam narrows as hypotheses finish)
  if finished is empty: finished = alive, normalised by their length
  result = the finished hypothesis with the highest normalised score (ties →
        the one finished first); its string as for greedy.
"""

from __future__ import annotations

import numpy as np

PAD, BOS, EOS = 0, 1, 2
TARGET_VOCAB = ["<pad>", "<bos>", "<eos>"] + list("0123456789.")
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
        "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
SOURCE_VOCAB = ["<pad>", "<unk>"] + ONES + TENS[2:] + ["hundred", "thousand", "and"] + list("0123456789/")
MAX_STEPS = 12
BEAM = 4


def int_words(n: int) -> str:
    assert 0 <= n <= 99_999
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    if n < 1000:
        return ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + int_words(n % 100))
    return int_words(n // 1000) + " thousand" + ("" if n % 1000 == 0 else " " + int_words(n % 1000))


def amount_words(cents_total: int) -> str:
    return f"{int_words(cents_total // 100)} and {cents_total % 100:02d}/100"


def amount_digits(cents_total: int) -> str:
    return f"{cents_total // 100}.{cents_total % 100:02d}"


def source_tokens(text: str) -> list[str]:
    text = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in text)
    out = []
    for piece in text.replace("-", " ").split(" "):
        if not piece:
            continue
        if all("a" <= c <= "z" for c in piece):
            out.append(piece)
        else:
            out.extend(piece)
    return out


def encode_source(texts: list[str], index: dict, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    toks = [[index.get(t, 1) for t in source_tokens(s)] for s in texts]
    s = length or max(len(t) for t in toks)
    ids = np.zeros((len(texts), s), np.int64)
    mask = np.zeros((len(texts), s), np.float32)
    for i, t in enumerate(toks):
        ids[i, :len(t)] = t
        mask[i, :len(t)] = 1.0
    return ids, mask


def target_ids(s: str) -> list[int]:
    return [BOS] + [TARGET_VOCAB.index(c) for c in s] + [EOS]


def to_string(tokens: list[int]) -> str:
    out = []
    for t in tokens:
        if t == EOS:
            break
        out.append(TARGET_VOCAB[t])
    return "".join(out)


def run_decoder(dec, memory: np.ndarray, src_mask: np.ndarray, prefixes: np.ndarray) -> np.ndarray:
    """Last-position log_probs [N,V] (float64) for N prefixes of equal length."""
    lp = dec.run(["log_probs"], {"memory": memory, "src_mask": src_mask, "tgt_ids": prefixes})[0]
    return lp[:, -1, :].astype(np.float64)


def greedy(enc, dec, src_ids: np.ndarray, src_mask: np.ndarray) -> list[str]:
    """Batched greedy decoding; returns one string per row."""
    memory = enc.run(["memory"], {"src_ids": src_ids, "src_mask": src_mask})[0]
    n = len(src_ids)
    prefix = np.full((n, 1), BOS, np.int64)
    done = np.zeros(n, bool)
    for _ in range(MAX_STEPS):
        lp = run_decoder(dec, memory, src_mask, prefix)
        lp[:, [PAD, BOS]] = -np.inf
        nxt = lp.argmax(1)            # first maximum = lowest id on ties
        nxt[done] = PAD                # finished rows: filler, never read
        prefix = np.concatenate([prefix, nxt[:, None]], axis=1)
        done |= nxt == EOS
        if done.all():
            break
    return [to_string(list(r[1:])) for r in prefix]


def beam(enc, dec, src_ids: np.ndarray, src_mask: np.ndarray, k: int = BEAM) -> tuple[str, float]:
    """Beam search for ONE source row ([1,S] arrays); returns (string, normalised log-prob)."""
    memory = enc.run(["memory"], {"src_ids": src_ids, "src_mask": src_mask})[0]
    alive: list[tuple[list[int], float]] = [([BOS], 0.0)]
    finished: list[tuple[list[int], float]] = []
    for _ in range(MAX_STEPS):
        if not alive:
            break
        m = len(alive)
        lp = run_decoder(dec, np.repeat(memory, m, 0), np.repeat(src_mask, m, 0),
                         np.array([p for p, _ in alive], np.int64))
        cands = [(alive[i][1] + float(lp[i, t]), i, t)
                 for i in range(m) for t in range(lp.shape[1]) if t not in (PAD, BOS)]
        cands.sort(key=lambda c: (-c[0], c[1], c[2]))
        new_alive = []
        for score, i, t in cands[:k]:
            seq = alive[i][0] + [t]
            if t == EOS:
                finished.append((seq, score / (len(seq) - 1)))
            else:
                new_alive.append((seq, score))
        alive = new_alive
    if not finished:
        finished = [(seq, score / (len(seq) - 1)) for seq, score in alive]
    best = max(range(len(finished)), key=lambda j: (finished[j][1], -j))
    seq, norm = finished[best]
    return to_string(seq[1:]), norm
