"""Drive `riskstream serve` with the real Triton HTTP client (tritonclient[http]).

For EVERY model directory under --models that has a golden.json:
  * server live/ready/metadata, model ready, model metadata against manifest.json;
  * the golden inputs, sent as JSON and as binary tensors: every output within
    1e-5 of golden.json (int outputs exactly);
  * one request per golden row, all at once: each answer equals its golden row,
    and for a model that batches, /metrics shows requests were merged.

Exits non-zero naming the first failure. Called by integration-tests/serve.rs:
    .venv/bin/python integration-tests/triton_client.py --url 127.0.0.1:PORT --models DIR
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

TOL = 1e-5
V2 = {"float32": "FP32", "int64": "INT64"}
NP = {"float32": np.float32, "int64": np.int64}


def fail(msg: str) -> None:
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def metric(url: str, name: str, model: str) -> float:
    text = urllib.request.urlopen(f"http://{url}/metrics", timeout=30).read().decode()
    m = re.search(rf'^{name}{{model="{re.escape(model)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def compare(model: str, how: str, result, manifest: dict, golden_out: dict, rows=slice(None)) -> float:
    worst = 0.0
    for spec in manifest["outputs"]:
        name = spec["name"]
        got = result.as_numpy(name)
        check(got is not None, f"{model} ({how}): no output {name!r}")
        if name not in golden_out:
            continue
        want = np.asarray(golden_out[name], dtype=NP[spec["dtype"]])[rows]
        check(got.shape == want.shape, f"{model} ({how}): output {name!r} shape {got.shape} != golden {want.shape}")
        check(got.dtype == want.dtype, f"{model} ({how}): output {name!r} dtype {got.dtype} != {want.dtype}")
        if spec["dtype"] == "int64":
            check(np.array_equal(got, want), f"{model} ({how}): int output {name!r} differs from golden")
        elif got.size:
            d = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max())
            check(d <= TOL, f"{model} ({how}): output {name!r} differs from golden by {d:.3g} > {TOL}")
            worst = max(worst, d)
    return worst


def inputs_for(manifest: dict, arrays: dict, binary: bool) -> list:
    out = []
    for spec in manifest["inputs"]:
        a = arrays[spec["name"]]
        i = httpclient.InferInput(spec["name"], list(a.shape), V2[spec["dtype"]])
        i.set_data_from_numpy(a, binary_data=binary)
        out.append(i)
    return out


def check_model(client, url: str, model_dir: Path) -> str:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    golden = json.loads((model_dir / "golden.json").read_text())
    name = manifest["name"]
    check(client.is_model_ready(name), f"{name}: not ready")
    meta = client.get_model_metadata(name)
    check(meta["name"] == name, f"{name}: metadata name {meta['name']!r}")
    check(manifest["version"] in meta["versions"], f"{name}: versions {meta['versions']}, manifest {manifest['version']}")
    check(meta["platform"] == "onnxruntime_onnx", f"{name}: platform {meta['platform']!r}")
    for kind in ("inputs", "outputs"):
        served = {t["name"]: t for t in meta[kind]}
        check(set(served) == {t["name"] for t in manifest[kind]}, f"{name}: {kind} {sorted(served)} differ from the manifest")
        for spec in manifest[kind]:
            t = served[spec["name"]]
            check(t["datatype"] == V2[spec["dtype"]], f"{name}: {kind} {spec['name']} datatype {t['datatype']}")
            check(len(t["shape"]) == len(spec["shape"]) and all(m in (-1, s) for s, m in zip(t["shape"], spec["shape"])),
                  f"{name}: {kind} {spec['name']} shape {t['shape']} vs manifest {spec['shape']}")

    arrays = {s["name"]: np.asarray(golden["inputs"][s["name"]], dtype=NP[s["dtype"]]) for s in manifest["inputs"]}
    worst = 0.0
    for binary in (False, True):
        how = "binary" if binary else "json"
        outputs = [httpclient.InferRequestedOutput(s["name"], binary_data=binary) for s in manifest["outputs"]]
        result = client.infer(name, inputs_for(manifest, arrays, binary), outputs=outputs, request_id=f"golden-{how}")
        check(result.get_response()["model_version"] == manifest["version"], f"{name}: answered by another version")
        worst = max(worst, compare(name, how, result, manifest, golden["outputs"]))
    # Default client settings (binary outputs for everything) and an output filter.
    first = manifest["outputs"][0]["name"]
    result = client.infer(name, inputs_for(manifest, arrays, True), outputs=[httpclient.InferRequestedOutput(first)])
    check([o["name"] for o in result.get_response()["outputs"]] == [first], f"{name}: output filter ignored")

    config = client.get_model_config(name)
    batches = "dynamic_batching" in config
    rows = min(len(a) for a in arrays.values()) if all(a.ndim for a in arrays.values()) else 0
    merged_before = (metric(url, "riskstream_serve_batch_requests_sum", name),
                     metric(url, "riskstream_serve_batch_requests_count", name))
    if config.get("max_batch_size", 0) > 0 and rows >= 2:
        # One request per golden row, all in flight together, twice.
        for _ in range(2):
            pending = [(r, client.async_infer(name, inputs_for(manifest, {k: a[r:r + 1] for k, a in arrays.items()}, r % 2 == 0)))
                       for r in range(rows)]
            for r, p in pending:
                compare(name, f"concurrent row {r}", p.get_result(), manifest, golden["outputs"], slice(r, r + 1))
    else:
        pending = [client.async_infer(name, inputs_for(manifest, arrays, True)) for _ in range(4)]
        for p in pending:
            compare(name, "concurrent", p.get_result(), manifest, golden["outputs"])
    merged = ""
    if batches and rows >= 2:
        s = metric(url, "riskstream_serve_batch_requests_sum", name) - merged_before[0]
        c = metric(url, "riskstream_serve_batch_requests_count", name) - merged_before[1]
        check(c > 0 and s > c, f"{name}: batching is on but {s:.0f} concurrent requests ran in {c:.0f} separate runs")
        merged = f", {s:.0f} concurrent requests in {c:.0f} runs"
    return f"{name} v{manifest['version']}: golden ok (max diff {worst:.2g}), json+binary{merged}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="host:port of riskstream serve")
    ap.add_argument("--models", required=True, type=Path, help="the models root the server serves")
    a = ap.parse_args()
    client = httpclient.InferenceServerClient(url=a.url, concurrency=16, network_timeout=120.0)
    check(client.is_server_live(), "server not live")
    check(client.is_server_ready(), "server not ready")
    meta = client.get_server_metadata()
    check(meta["name"] == "riskstream" and "binary_tensor_data" in meta["extensions"], f"server metadata {meta}")
    dirs = sorted(d for d in a.models.iterdir() if (d / "golden.json").is_file() and (d / "manifest.json").is_file())
    check(len(dirs) > 0, f"no model directory with a golden.json under {a.models}")
    for d in dirs:
        try:
            print(f"ok   {check_model(client, a.url, d)}", flush=True)
        except InferenceServerException as e:
            fail(f"{d.name}: {e}")
    # The real client surfaces the server's JSON error message.
    try:
        client.infer("no-such-model", [])
        fail("an unknown model was answered")
    except InferenceServerException as e:
        check("unknown model" in str(e), f"unknown model error: {e}")
    client.close()
    print(f"ok   {len(dirs)} models", flush=True)


if __name__ == "__main__":
    main()
