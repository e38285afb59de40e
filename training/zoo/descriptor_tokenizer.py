"""The merchant-descriptor tokenizer (models/merchant-descriptor/tokenizer.json).
Pure Python, no dependencies: the reference the Rust port must match, pinned by
tokenizer_vectors.json."""

from __future__ import annotations

from collections import Counter

T = 16
PAD, UNK, NUM = 0, 1, 2
SPECIALS = ["<pad>", "<unk>", "<num>"]
MIN_COUNT = 2

TOKENIZER_SPEC = (
    "1) Lowercase ASCII only: bytes 'A'..'Z' become 'a'..'z'; every other character (including all "
    "non-ASCII, e.g. 'É', the Kelvin sign, 'İ') is left as is and is therefore a separator. "
    "2) Split into maximal runs of [a-z] and maximal runs of [0-9]; every other character separates, "
    "and a letter run and a digit run that touch are separate tokens ('7eleven' -> '7', 'eleven'). "
    "Working on UTF-8 bytes or on Unicode scalar values gives the same result. "
    "3) A digit run becomes <num> (id 2); a letter run becomes its vocabulary id, or <unk> (id 1) when absent. "
    "4) Nothing is prepended or appended. Keep the first 16 tokens (truncate the rest); pad on the right "
    "with <pad> (id 0). token_mask is 1.0 for real tokens and 0.0 for padding. "
    "Vocabulary: ids 0,1,2 = <pad>,<unk>,<num>; then every letter run occurring >= 2 times in the training "
    "descriptors (counted over all runs, before truncation), by descending count, ties alphabetical, ids 3..")


def pieces(text: str) -> list[str]:
    """Step 1-2 of the spec: the raw runs, digits kept as digits."""
    out, cur, kind = [], [], None
    for ch in text:
        if "A" <= ch <= "Z":
            ch = chr(ord(ch) + 32)
        k = "a" if "a" <= ch <= "z" else "d" if "0" <= ch <= "9" else None
        if k != kind and cur:
            out.append("".join(cur))
            cur = []
        if k is not None:
            cur.append(ch)
        kind = k
    if cur:
        out.append("".join(cur))
    return out


def build_vocab(texts: list[str]) -> list[str]:
    counts = Counter(p for t in texts for p in pieces(t) if not p[0].isdigit())
    words = sorted((w for w, c in counts.items() if c >= MIN_COUNT), key=lambda w: (-counts[w], w))
    return SPECIALS + words


def encode(text: str, index: dict) -> tuple[list[int], list[float]]:
    ids = [NUM if p[0].isdigit() else index.get(p, UNK) for p in pieces(text)][:T]
    mask = [1.0] * len(ids) + [0.0] * (T - len(ids))
    return ids + [PAD] * (T - len(ids)), mask
