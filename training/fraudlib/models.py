"""Every neural model of the study.

`FraudModel` is one attention architecture with switches, so that two rows of the
comparison table differ in exactly the part they name:

    history   none | transformer | gru | lstm | mlp how the card's last K transactions are encoded
              (mlp: each position on its own, no self-attention: the cheap encoder)
    position  none | sinusoidal | learned | alibi | time    (transformer only)
    fusion    add | concat | bias                   how an absolute position enters attention

Common to all: the feature-token attention of the seed formulation. Each of the 20 features
is a token e_i (a per-feature piecewise-linear embedding of its normalized value); a
context-conditioned score s_i = MLP(e_i + W c) is computed per token; p = softmax(s) is the
`feature_attention` output and the risk logit is sum_i p_i s_i + b, so the features with
large p_i are the ones that carry the risk. With history, c is the current transaction's
masked cross-attention over the encoded history (head-averaged weights =
`history_attention`); without history c is a learned constant.

`LogisticRegression` and `FeedForward` are baselines on the same 20 features (no history,
no attention). Inputs are raw featurizer outputs: normalization is inside every graph.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from .data import FEATURE_NAMES, H_FIELDS, N_FEAT

MASK_NEG = -1e9  # large negative, not -inf, so an all-padding row cannot produce NaN

# Heavy-tailed, non-negative features: log1p before standardizing.
LOG_SCALED = {
    "card_count_1d", "card_avg_amount_1d", "card_count_7d", "card_avg_amount_7d",
    "card_count_30d", "card_avg_amount_30d", "terminal_count_1d", "terminal_count_7d",
    "terminal_count_30d", "amount_ratio_30d", "card_count_10m",
}
HISTORY = ("none", "transformer", "gru", "lstm", "mlp")
POSITIONAL = ("none", "sinusoidal", "learned", "alibi", "time")
FUSION = ("add", "concat", "bias")


def input_stats(feats: np.ndarray, hist: np.ndarray, mask: np.ndarray) -> dict:
    """Normalization constants from the training window only."""
    log_mask = np.array([n in LOG_SCALED for n in FEATURE_NAMES], np.float32)
    x = np.where(log_mask > 0, np.log1p(np.clip(feats, 0, None)), feats).astype(np.float64)
    h = hist.reshape(-1, H_FIELDS)[mask.reshape(-1) > 0].astype(np.float64)
    hist_mean, hist_std = np.zeros(H_FIELDS), np.ones(H_FIELDS)
    for j in (0, 1):  # amount_log and gap_log; flags stay 0/1, hour goes sin/cos
        if len(h):
            hist_mean[j], hist_std[j] = h[:, j].mean(), max(h[:, j].std(), 1e-3)
    return {"feat_log": log_mask, "feat_mean": x.mean(0), "feat_std": np.maximum(x.std(0), 1e-3),
            "hist_mean": hist_mean, "hist_std": hist_std}


def sinusoidal(pos: torch.Tensor, d: int) -> torch.Tensor:
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same), for real-valued p
    (positions 0..K-1, or log time gaps for the time-aware encoding). Same formula as
    src/attention/positional.rs."""
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10_000.0) / d))
    ang = pos[..., None] * freq
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi (Press et al. 2022): head h gets slope 2^(-8(h+1)/H)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax restricted to mask == 1: padding gets exactly 0 and an all-padding row all
    zeros (softmax alone would make it uniform), with no 0/0."""
    w = torch.softmax(scores + (1.0 - mask) * MASK_NEG, dim=-1) * mask
    return w / torch.clamp(w.sum(dim=-1, keepdim=True), min=1e-12)


class MaskedMHA(nn.Module):
    """Multi-head attention with the contract's masking and an optional additive logit bias
    [.., heads, Q, K] (relative positions). Hand-written so the exported graph is exactly
    what src/attention/ computes, and per-head weights are available."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        assert d % heads == 0
        self.h, self.dh = heads, d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, q_in, kv_in, key_mask, bias=None):
        B, Q, _ = q_in.shape
        split = lambda x: x.reshape(B, x.shape[1], self.h, self.dh).transpose(1, 2)  # [B,h,T,dh]
        q, k, v = split(self.q(q_in)), split(self.k(kv_in)), split(self.v(kv_in))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dh)  # [B,h,Q,K]
        if bias is not None:
            scores = scores + bias
        w = masked_softmax(scores, key_mask[:, None, None, :])
        out = (w @ v).transpose(1, 2).reshape(B, Q, self.h * self.dh)
        return self.o(out), w


class Normalizer(nn.Module):
    """log1p on heavy-tailed features, standardization with training-window constants,
    clamped to +-8 so an absurd input cannot blow the network up."""

    def __init__(self, stats: dict):
        super().__init__()
        for k in ("feat_log", "feat_mean", "feat_std", "hist_mean", "hist_std"):
            self.register_buffer(k, torch.tensor(stats[k], dtype=torch.float32))

    def features(self, x):
        x = torch.where(self.feat_log > 0, torch.log1p(torch.clamp(x, min=0.0)), x)
        return torch.clamp((x - self.feat_mean) / self.feat_std, -8.0, 8.0)

    def history(self, hist, mask):
        z = (hist - self.hist_mean) / self.hist_std
        hour = hist[..., 5:6] * (2 * math.pi)  # cyclic: 23:59 is next to 00:00
        z = torch.cat([z[..., :5], torch.sin(hour), torch.cos(hour)], dim=-1)
        return torch.clamp(z, -8.0, 8.0) * mask[..., None]


class FeatureTokens(nn.Module):
    """e_i = LN(z_i w_i + b_i + H_i relu(z_i a_i + c_i)): a per-feature piecewise-linear
    embedding (Gorishniy et al. 2022) whose bias b_i doubles as the feature-id embedding."""

    def __init__(self, d: int, hinges: int = 8):
        super().__init__()
        self.a = nn.Parameter(torch.randn(N_FEAT, hinges))
        self.c = nn.Parameter(torch.randn(N_FEAT, hinges))
        self.w = nn.Parameter(torch.randn(N_FEAT, d) * 0.5)
        self.hmat = nn.Parameter(torch.randn(N_FEAT, hinges, d) / math.sqrt(hinges))
        self.b = nn.Parameter(torch.randn(N_FEAT, d) * 0.5)
        self.ln = nn.LayerNorm(d)

    def forward(self, z):
        hinge = torch.relu(z[..., None] * self.a + self.c)  # [B,20,m]
        return self.ln(z[..., None] * self.w + self.b + torch.einsum("bfm,fmd->bfd", hinge, self.hmat))


class FraudModel(nn.Module):
    """See the module docstring. forward -> (logit [B], history_attention [B,K] or None,
    feature_attention [B,20])."""

    def __init__(self, stats: dict, k: int, history: str = "transformer", positional: str = "sinusoidal",
                 fusion: str = "add", d: int = 32, heads: int = 4):
        super().__init__()
        assert history in HISTORY and positional in POSITIONAL and fusion in FUSION
        if history in ("gru", "lstm", "mlp", "none"):
            assert positional == "none" and fusion == "add", "position switches are transformer-only"
        self.k, self.d, self.heads = k, d, heads
        self.history_kind, self.positional, self.fusion = history, positional, fusion
        self.norm = Normalizer(stats)
        self.tokens = FeatureTokens(d)
        self.no_history = nn.Parameter(torch.zeros(d))
        self.ctx_proj = nn.Linear(d, d)
        self.tok_score = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, 1))
        self.bias = nn.Parameter(torch.zeros(1))
        if history == "none":
            return

        self.hist_in = nn.Sequential(nn.Linear(H_FIELDS + 1, d), nn.GELU(), nn.Linear(d, d))
        if history == "transformer":
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.self_attn = MaskedMHA(d, heads)
            self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        elif history in ("gru", "lstm"):
            self.rnn = (nn.GRU if history == "gru" else nn.LSTM)(d, d, batch_first=True)
        self.query = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.cross = MaskedMHA(d, heads)

        pos = torch.arange(k, dtype=torch.float32)
        if positional == "sinusoidal":
            self.register_buffer("pe", sinusoidal(pos, d))
        elif positional == "learned":
            self.pe = nn.Parameter(torch.randn(k, d) * 0.1)
        elif positional == "alibi":
            # Self-attention among history positions: -m_h |i - j|. Cross-attention from the
            # current transaction (conceptually position -1) to position j: -m_h (j + 1).
            m = alibi_slopes(heads)[:, None, None]
            self.register_buffer("self_bias", -m * (pos[:, None] - pos[None, :]).abs())
            self.register_buffer("cross_bias", -m * (pos[None, :] + 1.0))
        if positional in ("sinusoidal", "learned", "time") and fusion == "concat":
            self.fuse = nn.Linear(2 * d, d)
        if fusion == "bias":
            assert positional == "sinusoidal", "the bias fusion ablation projects the sinusoidal PE"
            # Per-head scalar bias from the PE of the distance: self |i-j|, cross j+1.
            self.register_buffer("pe_self", sinusoidal((pos[:, None] - pos[None, :]).abs(), d))
            self.register_buffer("pe_cross", sinusoidal(pos + 1.0, d))
            self.bias_proj = nn.Linear(d, heads, bias=False)

    # -- history ----------------------------------------------------------------------

    def position_encoding(self, history):
        if self.positional == "time":
            gap_log = history[..., 1]  # ln(1 + seconds before the current tx)
            return sinusoidal(gap_log, self.d)  # [B,K,d]
        if self.positional in ("sinusoidal", "learned") and self.fusion != "bias":
            return self.pe
        return None

    def logit_biases(self):
        if self.positional == "alibi":
            return self.self_bias, self.cross_bias
        if self.fusion == "bias":
            sb = self.bias_proj(self.pe_self).permute(2, 0, 1)  # [h,K,K]
            cb = self.bias_proj(self.pe_cross).T[:, None, :]  # [h,1,K]
            return sb, cb
        return None, None

    def encode_history(self, history, mask):
        h = self.hist_in(self.norm.history(history, mask))  # [B,K,d]
        if self.history_kind == "mlp":
            # Each past transaction encoded on its own (they still carry their gap to the
            # current one); the cross-attention below compares them with the current one.
            return h, None
        if self.history_kind in ("gru", "lstm"):
            # Position 0 is the most recent transaction, padding is at the end: run from the
            # most recent backwards so padding never feeds into a real position's state.
            out, _ = self.rnn(h)
            return out * mask[..., None], None
        pe = self.position_encoding(history)
        if pe is not None:
            h = self.fuse(torch.cat([h, pe.expand_as(h)], dim=-1)) if self.fusion == "concat" else h + pe
        self_bias, cross_bias = self.logit_biases()
        x = self.ln1(h)
        a, _ = self.self_attn(x, x, mask, self_bias)
        h = h + a
        return h + self.ff(self.ln2(h)), cross_bias

    # -- all --------------------------------------------------------------------------

    def forward(self, features, history=None, history_mask=None):
        tok = self.tokens(self.norm.features(features))  # [B,20,d]
        ha = None
        if self.history_kind == "none":
            ctx = self.no_history.expand(tok.shape[0], -1)
        else:
            hist, cross_bias = self.encode_history(history, history_mask)
            q = self.query(tok.mean(dim=1))[:, None, :]  # [B,1,d]
            ctx, w = self.cross(q, hist, history_mask, cross_bias)  # [B,1,d], [B,h,1,K]
            has = (history_mask.sum(dim=-1, keepdim=True) > 0).float()
            ctx = has * ctx[:, 0, :] + (1.0 - has) * self.no_history
            ha = w[:, :, 0, :].mean(dim=1)
        s = self.tok_score(tok + self.ctx_proj(ctx)[:, None, :])[..., 0]  # [B,20]
        fa = torch.softmax(s, dim=-1)
        return (fa * s).sum(dim=-1) + self.bias, ha, fa


class LogisticRegression(nn.Module):
    def __init__(self, stats: dict):
        super().__init__()
        self.norm = Normalizer(stats)
        self.lin = nn.Linear(N_FEAT, 1)
        self.bias = self.lin.bias

    def forward(self, features, history=None, history_mask=None):
        return self.lin(self.norm.features(features))[:, 0], None, None


class FeedForward(nn.Module):
    def __init__(self, stats: dict, hidden: int = 64):
        super().__init__()
        self.norm = Normalizer(stats)
        self.net = nn.Sequential(nn.Linear(N_FEAT, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, 1))
        self.bias = self.net[-1].bias

    def forward(self, features, history=None, history_mask=None):
        return self.net(self.norm.features(features))[:, 0], None, None


def uses_history(model: nn.Module) -> bool:
    return isinstance(model, FraudModel) and model.history_kind != "none"


class Exported(nn.Module):
    """The ONNX surface: probabilities, and the contract's output names in order."""

    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, features, history=None, history_mask=None):
        logit, ha, fa = self.m(features, history, history_mask)
        outs = [torch.sigmoid(logit)]
        if ha is not None:
            outs.append(ha)
        if fa is not None:
            outs.append(fa)
        return tuple(outs)
