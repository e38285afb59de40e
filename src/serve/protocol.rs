//! The Open Inference Protocol v2 wire format (KServe v2 / Triton HTTP/REST):
//! decode and validate an infer request against a model's signature, and
//! encode the response.
//!
//! Tensors come as JSON (`data` flat or nested, row-major) or through the
//! binary tensor extension (`Inference-Header-Content-Length` plus
//! `parameters.binary_data_size`), which is what `tritonclient` sends by
//! default. Pure functions over bytes: no I/O, and no input makes them panic;
//! every refusal is one message naming the tensor and what was expected.

use crate::onnx::manifest::{DType, TensorSpec};
use crate::registry::tensor::{element_count, Data, Tensor};
use crate::registry::{fits, LoadedModel};
use serde::Serialize;
use serde_json::Value;

/// What a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Signature<'a> {
    pub model: &'a str,
    pub inputs: &'a [TensorSpec],
    pub outputs: &'a [TensorSpec],
    /// When dim 0 is the batch: the most rows one request may carry.
    pub max_batch: Option<usize>,
}

impl<'a> Signature<'a> {
    pub fn of(model: &'a LoadedModel) -> Signature<'a> {
        Signature {
            model: model.name(),
            inputs: &model.inputs,
            outputs: &model.outputs,
            max_batch: model.batch_dim().then(|| model.max_batch()),
        }
    }
}

/// A valid request: inputs in manifest order, the outputs to return.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Indices into the model's outputs, in the order to return them, each
    /// with "send as binary".
    pub outputs: Vec<(usize, bool)>,
}

fn spec_list(specs: &[TensorSpec]) -> String {
    let items: Vec<String> = specs
        .iter()
        .map(|s| {
            let dtype: &str = match s.dtype() {
                Some(d) => d.v2_name(),
                None => &s.dtype,
            };
            format!("{:?} {dtype} {:?}", s.name, s.shape)
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Decode `body` (whose first `header_len` bytes are the JSON header when the
/// binary extension is used) into validated tensors.
pub fn decode(
    sig: Signature<'_>,
    body: &[u8],
    header_len: Option<usize>,
) -> Result<Decoded, String> {
    let (json, mut binary) = match header_len {
        None => (body, &[][..]),
        Some(n) if n <= body.len() => body.split_at(n),
        Some(n) => {
            return Err(format!(
                "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                body.len()
            ))
        }
    };
    let request: Value =
        serde_json::from_slice(json).map_err(|e| format!("malformed JSON request: {e}"))?;
    let request = request
        .as_object()
        .ok_or("the request must be a JSON object with \"inputs\"")?;
    let id = match request.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(format!("\"id\" must be a string, not {other}")),
    };
    let inputs = request
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            format!(
                "the request needs \"inputs\": a list of tensors; model {:?} takes {}",
                sig.model,
                spec_list(sig.inputs)
            )
        })?;
    let mut slots: Vec<Option<Tensor>> = vec![None; sig.inputs.len()];
    for (i, input) in inputs.iter().enumerate() {
        let input = input.as_object().ok_or_else(|| {
            format!("inputs[{i}] must be an object with name, shape, datatype, data")
        })?;
        let name = input
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("inputs[{i}] has no \"name\""))?;
        let Some(k) = sig.inputs.iter().position(|s| s.name == name) else {
            return Err(format!(
                "unknown input {name:?}: model {:?} takes {}",
                sig.model,
                spec_list(sig.inputs)
            ));
        };
        if slots[k].is_some() {
            return Err(format!("input {name:?} is given twice"));
        }
        slots[k] = Some(decode_input(&sig.inputs[k], input, &mut binary)?);
    }
    if !binary.is_empty() {
        return Err(format!(
            "{} bytes of binary data follow the JSON header but no input declares them (parameters.binary_data_size)",
            binary.len()
        ));
    }
    let missing: Vec<&TensorSpec> = sig
        .inputs
        .iter()
        .zip(&slots)
        .filter(|(_, t)| t.is_none())
        .map(|(s, _)| s)
        .collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|s| format!("{:?}", s.name)).collect();
        return Err(format!(
            "missing input {}: model {:?} takes {}",
            names.join(", "),
            sig.model,
            spec_list(sig.inputs)
        ));
    }
    let inputs: Vec<Tensor> = slots.into_iter().flatten().collect();
    if let Some(max) = sig.max_batch {
        check_batch(sig, &inputs, max)?;
    }
    let outputs = requested_outputs(sig, request)?;
    Ok(Decoded {
        id,
        inputs,
        outputs,
    })
}

/// Every input agrees on dim 0 (the batch), which is at most `max`.
fn check_batch(sig: Signature<'_>, inputs: &[Tensor], max: usize) -> Result<(), String> {
    let rows = inputs
        .first()
        .and_then(|t| t.shape.first())
        .copied()
        .unwrap_or(0);
    for (spec, t) in sig.inputs.iter().zip(inputs) {
        if t.shape.first() != Some(&rows) {
            return Err(format!(
                "input {:?} has batch size (dim 0) {:?}, but input {:?} has {rows}: every input must have the same batch size",
                spec.name,
                t.shape.first(),
                sig.inputs[0].name
            ));
        }
    }
    if rows > max {
        return Err(format!(
            "batch size {rows} (dim 0 of input {:?}) exceeds the maximum of {max} (--max-batch)",
            sig.inputs[0].name
        ));
    }
    Ok(())
}

fn decode_input(
    spec: &TensorSpec,
    input: &serde_json::Map<String, Value>,
    binary: &mut &[u8],
) -> Result<Tensor, String> {
    let name = &spec.name;
    let want = spec
        .dtype()
        .ok_or_else(|| format!("input {name:?} has no servable dtype"))?;
    let datatype = input
        .get("datatype")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "input {name:?} has no \"datatype\" (expected {})",
                want.v2_name()
            )
        })?;
    if datatype != want.v2_name() {
        return Err(format!(
            "input {name:?} has datatype {datatype}, expected {}",
            want.v2_name()
        ));
    }
    let shape: Vec<usize> = input
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        })
        .ok_or_else(|| {
            format!(
                "input {name:?} needs \"shape\": a list of non-negative integers fitting {:?}",
                spec.shape
            )
        })?;
    fits(spec, &shape).map_err(|e| format!("input {name:?}: {e}"))?;
    if shape.contains(&0) {
        return Err(format!(
            "input {name:?}: shape {shape:?} has a zero dim (nothing to infer)"
        ));
    }
    let count = element_count(&shape)
        .ok_or_else(|| format!("input {name:?}: shape {shape:?} is too large"))?;
    let binary_size = input
        .get("parameters")
        .and_then(|p| p.get("binary_data_size"));
    let data = match (input.get("data"), binary_size) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "input {name:?} has both \"data\" and parameters.binary_data_size"
            ))
        }
        (None, None) => return Err(format!("input {name:?} has no \"data\"")),
        (Some(data), None) => json_data(name, want, data, count)?,
        (None, Some(size)) => {
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| format!("input {name:?}: binary_data_size must be a byte count"))?;
            let expected = count.saturating_mul(want.size());
            if size != expected {
                return Err(format!(
                    "input {name:?}: binary_data_size is {size} bytes, shape {shape:?} of {} needs {expected}",
                    want.v2_name()
                ));
            }
            if size > binary.len() {
                return Err(format!(
                    "input {name:?}: {size} bytes of binary data declared, only {} left in the body",
                    binary.len()
                ));
            }
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            Data::from_le_bytes(want, mine).expect("size is a multiple of the element size")
        }
    };
    if data.len() != count {
        let has = if data.len() > count {
            format!("more than {count}")
        } else {
            data.len().to_string()
        };
        return Err(format!(
            "input {name:?}: shape {shape:?} needs {count} values, \"data\" has {has}"
        ));
    }
    if let Data::F32(values) = &data {
        if let Some(i) = values.iter().position(|x| !x.is_finite()) {
            return Err(format!(
                "input {name:?}: element {i} is {}, expected a finite FP32 value",
                values[i]
            ));
        }
    }
    Tensor::new(shape, data).map_err(|e| format!("input {name:?}: {e}"))
}

/// Flatten `data` (a flat or nested list of numbers) into `dtype` values;
/// stops as soon as there are more than `count`.
fn json_data(name: &str, dtype: DType, data: &Value, count: usize) -> Result<Data, String> {
    let mut out = match dtype {
        DType::F32 => Data::F32(Vec::with_capacity(count.min(1 << 20))),
        DType::I64 => Data::I64(Vec::with_capacity(count.min(1 << 20))),
    };
    let mut stack = vec![data];
    if !data.is_array() {
        return Err(format!(
            "input {name:?}: \"data\" must be a list of numbers"
        ));
    }
    // Depth-first, left to right: the row-major order of a nested list.
    while let Some(v) = stack.pop() {
        let i = out.len();
        if i > count {
            break;
        }
        match (v, &mut out) {
            (Value::Array(items), _) => stack.extend(items.iter().rev()),
            (Value::Number(n), Data::F32(values)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                let f = x as f32;
                if !f.is_finite() {
                    return Err(format!(
                        "input {name:?}: element {i} is {n}, out of range for FP32"
                    ));
                }
                values.push(f);
            }
            (Value::Number(n), Data::I64(values)) => {
                let x = n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                        .map(|f| f as i64)
                });
                values.push(x.ok_or_else(|| {
                    format!("input {name:?}: element {i} is {n}, expected an INT64 integer")
                })?);
            }
            (other, _) => {
                let shown: String = other.to_string().chars().take(40).collect();
                return Err(format!(
                    "input {name:?}: element {i} is {shown}, expected a number"
                ));
            }
        }
    }
    Ok(out)
}

fn requested_outputs(
    sig: Signature<'_>,
    request: &serde_json::Map<String, Value>,
) -> Result<Vec<(usize, bool)>, String> {
    let flag = |v: Option<&Value>, key: &str| -> Option<bool> {
        v.and_then(|p| p.get(key)).and_then(Value::as_bool)
    };
    let all_binary = flag(request.get("parameters"), "binary_data_output").unwrap_or(false);
    let requested = match request.get("outputs") {
        None | Some(Value::Null) => {
            return Ok((0..sig.outputs.len()).map(|k| (k, all_binary)).collect())
        }
        Some(Value::Array(items)) if items.is_empty() => {
            return Ok((0..sig.outputs.len()).map(|k| (k, all_binary)).collect())
        }
        Some(Value::Array(items)) => items,
        Some(_) => return Err("\"outputs\" must be a list of {\"name\": ...}".into()),
    };
    let mut out: Vec<(usize, bool)> = Vec::with_capacity(requested.len());
    for (i, o) in requested.iter().enumerate() {
        let name = o
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("outputs[{i}] has no \"name\""))?;
        let k = sig
            .outputs
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                format!(
                    "unknown output {name:?}: model {:?} has outputs {}",
                    sig.model,
                    spec_list(sig.outputs)
                )
            })?;
        let binary = flag(o.get("parameters"), "binary_data").unwrap_or(all_binary);
        if !out.iter().any(|(seen, _)| *seen == k) {
            out.push((k, binary));
        }
    }
    Ok(out)
}

#[derive(Serialize)]
#[serde(untagged)]
enum Values<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

#[derive(Serialize)]
struct BinaryParameters {
    binary_data_size: usize,
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'a str,
    datatype: &'static str,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Values<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinaryParameters>,
}

#[derive(Serialize)]
struct Response<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputTensor<'a>>,
}

/// The response body, and the JSON header's length when binary outputs
/// follow it (for `Inference-Header-Content-Length`). FP32 values that are
/// not finite are written as `null` (JSON has no NaN).
pub fn encode(
    model: &str,
    version: &str,
    id: Option<&str>,
    outputs: &[(&TensorSpec, &Tensor, bool)],
) -> (Vec<u8>, Option<usize>) {
    let mut binary = Vec::new();
    let tensors = outputs
        .iter()
        .map(|(spec, t, as_binary)| {
            let (data, parameters) = if *as_binary {
                let bytes = t.data.to_le_bytes();
                let size = bytes.len();
                binary.push(bytes);
                (
                    None,
                    Some(BinaryParameters {
                        binary_data_size: size,
                    }),
                )
            } else {
                let values = match &t.data {
                    Data::F32(v) => Values::F32(v),
                    Data::I64(v) => Values::I64(v),
                };
                (Some(values), None)
            };
            OutputTensor {
                name: &spec.name,
                datatype: t.dtype().v2_name(),
                shape: &t.shape,
                data,
                parameters,
            }
        })
        .collect();
    let response = Response {
        model_name: model,
        model_version: version,
        id,
        outputs: tensors,
    };
    let mut body = serde_json::to_vec(&response).expect("serializing plain data cannot fail");
    if binary.is_empty() {
        return (body, None);
    }
    let header_len = body.len();
    for bytes in binary {
        body.extend_from_slice(&bytes);
    }
    (body, Some(header_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, dtype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    struct Model {
        inputs: Vec<TensorSpec>,
        outputs: Vec<TensorSpec>,
    }

    fn model() -> Model {
        Model {
            inputs: vec![
                spec("features", "float32", &[-1, 3]),
                spec("tokens", "int64", &[-1, -1]),
            ],
            outputs: vec![
                spec("score", "float32", &[-1]),
                spec("top", "int64", &[-1, 2]),
            ],
        }
    }

    fn sig(m: &Model) -> Signature<'_> {
        Signature {
            model: "m",
            inputs: &m.inputs,
            outputs: &m.outputs,
            max_batch: Some(4),
        }
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn valid() -> Value {
        json!({
            "id": "r1",
            "inputs": [
                {"name": "tokens", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]},
                {"name": "features", "shape": [2, 3], "datatype": "FP32", "data": [0.5, 1, 2, 3, 4, 5]}
            ]
        })
    }

    fn refused(v: Value) -> String {
        let m = model();
        decode(sig(&m), &body(v), None).unwrap_err()
    }

    #[test]
    fn flat_and_nested_data_decode_in_manifest_order() {
        let m = model();
        let d = decode(sig(&m), &body(valid()), None).unwrap();
        assert_eq!(d.id.as_deref(), Some("r1"));
        assert_eq!(d.inputs[0].shape, vec![2, 3]);
        assert_eq!(
            d.inputs[0].data,
            Data::F32(vec![0.5, 1.0, 2.0, 3.0, 4.0, 5.0])
        );
        assert_eq!(d.inputs[1].data, Data::I64(vec![1, 2, 3, 4]));
        assert_eq!(d.outputs, vec![(0, false), (1, false)]);
    }

    #[test]
    fn every_refusal_names_the_tensor_and_what_was_expected() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"inputs": [{"name": "feature", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
                "unknown input \"feature\": model \"m\" takes [\"features\" FP32 [-1, 3]",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
                "missing input \"tokens\"",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]}),
                "input \"features\" has datatype FP64, expected FP32",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}),
                "input \"features\": shape [1, 4] does not fit [-1, 3]: dim 1 is 4, expected 3",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}),
                "input \"features\": shape [3] has rank 1, expected rank 2",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}),
                "input \"features\": shape [1, 3] needs 3 values, \"data\" has 2",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 1e39]}]}),
                "input \"features\": element 2 is 1e+39, out of range for FP32",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, "x", 2]}]}),
                "input \"features\": element 1 is \"x\", expected a number",
            ),
            (
                json!({"inputs": [{"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 2.5]}]}),
                "input \"tokens\": element 1 is 2.5, expected an INT64 integer",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [-1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}),
                "input \"features\" needs \"shape\": a list of non-negative integers",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [0, 3], "datatype": "FP32", "data": []}]}),
                "input \"features\": shape [0, 3] has a zero dim",
            ),
            (
                json!({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32"}]}),
                "input \"features\" has no \"data\"",
            ),
            (
                json!({"inputs": [
                {"name": "features", "shape": [5, 3], "datatype": "FP32", "data": vec![0.0; 15]},
                {"name": "tokens", "shape": [5, 1], "datatype": "INT64", "data": [1, 2, 3, 4, 5]}]}),
                "batch size 5 (dim 0 of input \"features\") exceeds the maximum of 4",
            ),
            (
                json!({"inputs": [
                {"name": "features", "shape": [2, 3], "datatype": "FP32", "data": vec![0.0; 6]},
                {"name": "tokens", "shape": [1, 1], "datatype": "INT64", "data": [1]}]}),
                "input \"tokens\" has batch size (dim 0) Some(1), but input \"features\" has 2",
            ),
            (
                json!({"inputs": {"features": [1, 2, 3]}}),
                "the request needs \"inputs\"",
            ),
            (json!([1, 2]), "the request must be a JSON object"),
        ];
        for (request, expected) in cases {
            let got = refused(request.clone());
            assert!(
                got.contains(expected),
                "{request}\n  got: {got}\n want: {expected}"
            );
        }
        let mut twice = valid();
        let first = twice["inputs"][0].clone();
        twice["inputs"].as_array_mut().unwrap().push(first);
        assert!(refused(twice).contains("input \"tokens\" is given twice"));
        let mut bad_output = valid();
        bad_output["outputs"] = json!([{"name": "scores"}]);
        assert!(refused(bad_output).contains("unknown output \"scores\": model \"m\" has outputs"));
    }

    #[test]
    fn malformed_json_is_refused_not_panicked_on() {
        let m = model();
        for raw in [
            &b"{\"inputs\": ["[..],
            b"",
            b"\xff\xfe",
            b"{\"inputs\": [NaN]}",
        ] {
            let e = decode(sig(&m), raw, None).unwrap_err();
            assert!(e.starts_with("malformed JSON request"), "{e}");
        }
        assert!(decode(sig(&m), b"{}", Some(10))
            .unwrap_err()
            .contains("Inference-Header-Content-Length"));
    }

    #[test]
    fn binary_inputs_are_read_in_order_and_sizes_checked() {
        let m = model();
        let header = json!({
            "inputs": [
                {"name": "features", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}},
                {"name": "tokens", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}
            ],
            "outputs": [{"name": "top", "parameters": {"binary_data": true}}, {"name": "score"}]
        });
        let mut raw = body(header.clone());
        let n = raw.len();
        for x in [1.5f32, -2.0, 3.25] {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        for x in [7i64, -9] {
            raw.extend_from_slice(&x.to_le_bytes());
        }
        let d = decode(sig(&m), &raw, Some(n)).unwrap();
        assert_eq!(d.inputs[0].data, Data::F32(vec![1.5, -2.0, 3.25]));
        assert_eq!(d.inputs[1].data, Data::I64(vec![7, -9]));
        assert_eq!(d.outputs, vec![(1, true), (0, false)]);

        let short = &raw[..raw.len() - 8];
        assert!(decode(sig(&m), short, Some(n))
            .unwrap_err()
            .contains("only 8 left"));
        let mut long = raw.clone();
        long.push(0);
        assert!(decode(sig(&m), &long, Some(n))
            .unwrap_err()
            .contains("no input declares them"));
        let mut nan = raw.clone();
        nan[n..n + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(decode(sig(&m), &nan, Some(n))
            .unwrap_err()
            .contains("element 0 is NaN, expected a finite FP32"));
    }

    #[test]
    fn responses_are_flat_row_major_json_or_binary() {
        let m = model();
        let score = Tensor::new(vec![2], Data::F32(vec![0.25, f32::NAN])).unwrap();
        let top = Tensor::new(vec![2, 2], Data::I64(vec![1, 2, 3, 4])).unwrap();
        let (json_body, header) = encode(
            "m",
            "3",
            Some("r1"),
            &[(&m.outputs[0], &score, false), (&m.outputs[1], &top, false)],
        );
        assert_eq!(header, None);
        let v: Value = serde_json::from_slice(&json_body).unwrap();
        assert_eq!(
            v,
            json!({"model_name": "m", "model_version": "3", "id": "r1", "outputs": [
                {"name": "score", "datatype": "FP32", "shape": [2], "data": [0.25, null]},
                {"name": "top", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}]})
        );
        let (bin_body, header) = encode("m", "3", None, &[(&m.outputs[1], &top, true)]);
        let n = header.unwrap();
        let v: Value = serde_json::from_slice(&bin_body[..n]).unwrap();
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 32);
        assert!(v["outputs"][0].get("data").is_none());
        assert_eq!(&bin_body[n..n + 8], &1i64.to_le_bytes());
    }
}
