//! One masked multi-head attention layer, exported from PyTorch by
//! `training/export_attention_layer.py`, computes in ONNX Runtime what the
//! native reference in `riskstream::attention` computes from the same
//! weights: outputs and attention weights agree within 1e-5, with and without
//! an ALiBi bias, on rows with padding, without padding and with nothing but
//! padding. Needs ONNX Runtime (`ORT_DYLIB_PATH`), not Kafka or Postgres.

use crate::common::repo_root;
use ndarray::{s, Array1, Array2, Array3, ArrayD, Axis, Ix1, Ix2, Ix3, IxDyn};
use ort::value::TensorRef;
use riskstream::attention::{alibi_bias, key_mask_from_f32, Linear, MultiHeadAttention};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-5;
const OUTPUTS: [&str; 4] = ["output", "weights", "output_alibi", "weights_alibi"];

fn fixture_dir() -> PathBuf {
    repo_root().join("integration-tests/fixtures/attention-layer")
}

/// A JSON nested list as an array; the shape is read off the nesting.
fn tensor(v: &Value) -> ArrayD<f32> {
    let mut shape = Vec::new();
    let mut level = v;
    while let Value::Array(items) = level {
        shape.push(items.len());
        level = &items[0];
    }
    fn flatten(v: &Value, out: &mut Vec<f32>) {
        match v {
            Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
            Value::Number(n) => out.push(n.as_f64().expect("a number") as f32),
            other => panic!("unexpected {other} in a tensor"),
        }
    }
    let mut data = Vec::new();
    flatten(v, &mut data);
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("a rectangular nested list")
}

fn array1(v: &Value) -> Array1<f32> {
    tensor(v).into_dimensionality::<Ix1>().unwrap()
}

fn array2(v: &Value) -> Array2<f32> {
    tensor(v).into_dimensionality::<Ix2>().unwrap()
}

fn array3(v: &Value) -> Array3<f32> {
    tensor(v).into_dimensionality::<Ix3>().unwrap()
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The fixture: the layer's weights, its inputs and PyTorch's outputs.
struct Layer {
    fixture: Value,
    mha: MultiHeadAttention,
    query: Array3<f32>,
    key_value: Array3<f32>,
    key_mask: Array2<f32>,
}

impl Layer {
    fn load() -> Layer {
        let fixture: Value =
            serde_json::from_slice(&std::fs::read(fixture_dir().join("layer.json")).unwrap())
                .unwrap();
        let linear = |name: &str| {
            let w = &fixture["weights"][name];
            Linear::new(array2(&w["weight"]), array1(&w["bias"])).unwrap()
        };
        let heads = fixture["heads"].as_u64().unwrap() as usize;
        let mha =
            MultiHeadAttention::new(heads, linear("q"), linear("k"), linear("v"), linear("o"))
                .unwrap();
        Layer {
            query: array3(&fixture["inputs"]["query"]),
            key_value: array3(&fixture["inputs"]["key_value"]),
            key_mask: array2(&fixture["inputs"]["key_mask"]),
            fixture,
            mha,
        }
    }

    /// The native reference, batch row by batch row, stacked like the graph's outputs.
    fn native(&self) -> BTreeMap<&'static str, ArrayD<f32>> {
        let (tq, tk) = (self.query.dim().1, self.key_value.dim().1);
        let alibi = alibi_bias(self.mha.heads(), tq, tk);
        let mut parts: BTreeMap<&str, Vec<ArrayD<f32>>> = BTreeMap::new();
        for b in 0..self.query.dim().0 {
            let mask = key_mask_from_f32(self.key_mask.row(b).as_slice().unwrap());
            let (q, kv) = (
                self.query.index_axis(Axis(0), b),
                self.key_value.index_axis(Axis(0), b),
            );
            let plain = self.mha.forward(q, kv, Some(&mask), None);
            let biased = self.mha.forward(q, kv, Some(&mask), Some(alibi.view()));
            for (name, value) in [
                ("output", plain.output.into_dyn()),
                ("weights", plain.weights.into_dyn()),
                ("output_alibi", biased.output.into_dyn()),
                ("weights_alibi", biased.weights.into_dyn()),
            ] {
                parts.entry(name).or_default().push(value);
            }
        }
        parts
            .into_iter()
            .map(|(name, rows)| {
                let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
                (name, ndarray::stack(Axis(0), &views).unwrap())
            })
            .collect()
    }

    /// `layer.onnx` in ONNX Runtime on the fixture's inputs.
    fn onnx_runtime(&self) -> BTreeMap<&'static str, ArrayD<f32>> {
        let mut session = riskstream::scoring::session(&fixture_dir().join("layer.onnx"))
            .expect("ONNX Runtime loads layer.onnx");
        let outputs = session
            .run(ort::inputs![
                "query" => TensorRef::from_array_view(&self.query).unwrap(),
                "key_value" => TensorRef::from_array_view(&self.key_value).unwrap(),
                "key_mask" => TensorRef::from_array_view(&self.key_mask).unwrap(),
            ])
            .expect("layer.onnx runs");
        OUTPUTS
            .into_iter()
            .map(|name| {
                let value = outputs[name].try_extract_array::<f32>().unwrap();
                (name, value.to_owned())
            })
            .collect()
    }

    fn torch(&self, name: &str) -> ArrayD<f32> {
        tensor(&self.fixture["outputs"][name])
    }
}

#[test]
fn exported_attention_layer_matches_the_native_reference() {
    let layer = Layer::load();
    let (batch, tq, _) = layer.query.dim();
    let tk = layer.key_value.dim().1;

    // The fixture exercises what the test claims: padding, and a padding-only row.
    let real_keys: Vec<f32> = layer.key_mask.rows().into_iter().map(|r| r.sum()).collect();
    assert!(
        real_keys.iter().any(|n| *n > 0.0 && *n < tk as f32),
        "{real_keys:?}"
    );
    assert!(real_keys.contains(&0.0), "{real_keys:?}");

    let torch_alibi = tensor(&layer.fixture["alibi_bias"]);
    let native_alibi = alibi_bias(layer.mha.heads(), tq, tk).into_dyn();
    assert_eq!(
        native_alibi, torch_alibi,
        "ALiBi bias differs from PyTorch's"
    );

    let native = layer.native();
    let runtime = layer.onnx_runtime();
    for name in OUTPUTS {
        let vs_ort = max_abs_diff(&native[name], &runtime[name]);
        let vs_torch = max_abs_diff(&native[name], &layer.torch(name));
        println!("{name}: native vs ONNX Runtime {vs_ort:.2e}, vs PyTorch {vs_torch:.2e}");
        assert!(
            vs_ort < TOLERANCE,
            "{name}: native vs ONNX Runtime {vs_ort}"
        );
        assert!(vs_torch < TOLERANCE, "{name}: native vs PyTorch {vs_torch}");
    }
    assert_eq!(
        native["weights"].shape(),
        [batch, layer.mha.heads(), tq, tk]
    );
    let alibi_effect = max_abs_diff(&native["weights"], &native["weights_alibi"]);
    assert!(
        alibi_effect > 1e-2,
        "the ALiBi bias barely changes the weights ({alibi_effect})"
    );
}

#[test]
fn padding_gets_exactly_zero_weight_in_the_graph_and_the_reference() {
    let layer = Layer::load();
    let native = layer.native();
    let runtime = layer.onnx_runtime();
    let out_bias = array1(&layer.fixture["weights"]["o"]["bias"]);
    for (b, mask) in layer.key_mask.rows().into_iter().enumerate() {
        for name in ["weights", "weights_alibi"] {
            for weights in [&native[name], &runtime[name]] {
                // [heads, Tq, Tk] for this batch row: padding columns are exactly 0.
                let row = weights.index_axis(Axis(0), b);
                for (j, m) in mask.iter().enumerate() {
                    if *m == 0.0 {
                        let column = row.slice(s![.., .., j]);
                        assert!(column.iter().all(|w| *w == 0.0), "{name} row {b} key {j}");
                    }
                }
            }
        }
        if mask.sum() == 0.0 {
            // Nothing to attend to: no NaN, and the output is the projection's bias.
            for output in [&native["output"], &runtime["output"]] {
                for query_out in output.index_axis(Axis(0), b).outer_iter() {
                    let diff = query_out
                        .iter()
                        .zip(&out_bias)
                        .map(|(x, y)| (x - y).abs())
                        .fold(0.0, f32::max);
                    assert!(diff < TOLERANCE, "padding-only row {b}: {query_out}");
                }
            }
        }
    }
}
