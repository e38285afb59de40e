"""Export ONE masked multi-head attention layer to ONNX, with its weights, inputs and
PyTorch outputs as JSON, for the Rust parity test `integration-tests/attention_parity.rs`.

The layer has exactly the masking contract of `MaskedMHA` in training/fraudlib/models.py:

    weights = softmax(scores + (1 - mask) * -1e9) * mask
    weights = weights / max(sum(weights), 1e-12)

so padding gets exactly 0 and an all-padding row gets all zeros. The graph computes the
layer twice from the same weights and inputs: once plain, once with an ALiBi bias added
to the scores (bias[h, i, j] = -slope_h * |i - j|, slope_h = 2^(-8 (h + 1) / H)), the
conventions documented in `src/attention/positional.rs`.

Usage (writes integration-tests/fixtures/attention-layer/{layer.onnx,layer.json}):

    .venv-train/bin/python training/export_attention_layer.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fraudlib.models import MaskedMHA

D_MODEL, HEADS, Q_LEN, K_LEN = 32, 4, 3, 16
SEED = 20_241_125
OPSET = 17
INPUTS = ["query", "key_value", "key_mask"]
OUTPUTS = ["output", "weights", "output_alibi", "weights_alibi"]


def alibi_bias(heads: int, q_len: int, k_len: int) -> torch.Tensor:
    """[heads, q_len, k_len]: -slope_h * |i - j| for query i and key j, both counted from 0."""
    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)])
    dist = (torch.arange(q_len)[:, None] - torch.arange(k_len)[None, :]).abs().float()
    return -slopes[:, None, None] * dist


class MaskedMHALayer(MaskedMHA):
    """The models' own MaskedMHA (training/fraudlib/models.py), run plain and with an ALiBi bias."""

    def __init__(self, d: int, heads: int, q_len: int, k_len: int):
        super().__init__(d, heads)
        self.register_buffer("alibi", alibi_bias(heads, q_len, k_len))

    def forward(self, query, key_value, key_mask):
        out, w = super().forward(query, key_value, key_mask)
        out_alibi, w_alibi = super().forward(query, key_value, key_mask, self.alibi)
        return out, w, out_alibi, w_alibi


def example_inputs(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Four batch rows: tail padding, scattered padding, no padding, all padding. Inputs are
    scaled up so that some heads attend sharply and others spread out."""
    b = 4
    query = torch.randn(b, Q_LEN, D_MODEL, generator=gen) * 2.0
    key_value = torch.randn(b, K_LEN, D_MODEL, generator=gen) * 2.0
    mask = torch.ones(b, K_LEN)
    mask[0, 11:] = 0.0
    mask[1, [1, 4, 5, 9, 15]] = 0.0
    mask[3, :] = 0.0
    return {"query": query, "key_value": key_value, "key_mask": mask}


def linear_json(layer: torch.nn.Linear) -> dict:
    return {"weight": layer.weight.detach().numpy().tolist(),
            "bias": layer.bias.detach().numpy().tolist()}


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=root / "integration-tests/fixtures/attention-layer")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(SEED)
    layer = MaskedMHALayer(D_MODEL, HEADS, Q_LEN, K_LEN).eval()
    inputs = example_inputs(torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        outputs = dict(zip(OUTPUTS, layer(*(inputs[n] for n in INPUTS))))

    onnx_path = args.out / "layer.onnx"
    batch = {0: "batch"}
    torch.onnx.export(layer, tuple(inputs[n] for n in INPUTS), str(onnx_path),
                      input_names=INPUTS, output_names=OUTPUTS, opset_version=OPSET,
                      dynamic_axes={n: batch for n in INPUTS + OUTPUTS}, dynamo=False)

    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    got = session.run(OUTPUTS, {n: inputs[n].numpy() for n in INPUTS})
    diff = max(float(np.abs(g - outputs[n].numpy()).max()) for g, n in zip(got, OUTPUTS))
    assert diff < 1e-5, f"ONNX Runtime differs from PyTorch by {diff}"
    assert float(outputs["weights"][3].abs().max()) == 0.0, "all-padding row must get zero weights"

    fixture = {
        "description": "the models' MaskedMHA layer (training/fraudlib/models.py), plain and with an ALiBi "
                       "bias; written by training/export_attention_layer.py",
        "d_model": D_MODEL,
        "heads": HEADS,
        "seed": SEED,
        "opset": OPSET,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "ort_vs_torch_max_abs_diff": diff,
        "weights": {name: linear_json(getattr(layer, name)) for name in ("q", "k", "v", "o")},
        "alibi_bias": layer.alibi.numpy().tolist(),
        "inputs": {n: inputs[n].numpy().tolist() for n in INPUTS},
        "outputs": {n: outputs[n].numpy().tolist() for n in OUTPUTS},
    }
    (args.out / "layer.json").write_text(json.dumps(fixture) + "\n")
    print(f"wrote {onnx_path} and layer.json; ONNX Runtime vs PyTorch max abs diff {diff:.2e}")


if __name__ == "__main__":
    main()
