//! Generic tensors for any model: `f32` or `i64` elements, any rank, row-major.
//!
//! Owns the shape arithmetic that dynamic batching relies on (concatenating
//! requests along dim 0 and splitting the outputs back) and the conversions
//! to and from ONNX Runtime values and nested JSON lists (golden files).

use crate::onnx::manifest::DType;
use ort::session::SessionInputValue;
use ort::value::{DynValue, TensorRef};

/// Row-major element storage.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn with_capacity(dtype: DType, n: usize) -> Data {
        match dtype {
            DType::F32 => Data::F32(Vec::with_capacity(n)),
            DType::I64 => Data::I64(Vec::with_capacity(n)),
        }
    }

    /// Append `other[range]`; both must have the same dtype (checked by callers).
    fn extend_from(&mut self, other: &Data, range: std::ops::Range<usize>) {
        match (self, other) {
            (Data::F32(a), Data::F32(b)) => a.extend_from_slice(&b[range]),
            (Data::I64(a), Data::I64(b)) => a.extend_from_slice(&b[range]),
            _ => unreachable!("dtypes are checked before extending"),
        }
    }

    /// Little-endian bytes, as the binary tensor extension carries them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// From little-endian bytes; the length must be a multiple of the element size.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Option<Data> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return None;
        }
        Some(match dtype {
            DType::F32 => Data::F32(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect(),
            ),
            DType::I64 => Data::I64(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
        })
    }
}

/// A dense tensor. `shape` is never negative; `data.len()` is its product.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// The number of elements of `shape`, or `None` if it overflows.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor, String> {
        match element_count(&shape) {
            Some(n) if n == data.len() => Ok(Tensor { shape, data }),
            _ => Err(format!(
                "shape {shape:?} needs {} elements, got {}",
                element_count(&shape).map_or("too many".to_string(), |n| n.to_string()),
                data.len()
            )),
        }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Elements per row (everything beyond dim 0); 1 for a rank-1 tensor.
    fn row_len(&self) -> usize {
        element_count(&self.shape[1..]).unwrap_or(0)
    }

    /// Concatenate along dim 0. Every part must have rank ≥ 1, the same dtype
    /// and the same dims beyond dim 0.
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor, String> {
        let first = parts.first().ok_or("nothing to concatenate")?;
        if first.shape.is_empty() {
            return Err("cannot concatenate scalars".into());
        }
        let mut rows = 0;
        for p in parts {
            if p.dtype() != first.dtype() || p.shape.get(1..) != first.shape.get(1..) {
                return Err(format!(
                    "cannot concatenate {} {:?} with {} {:?}",
                    p.dtype().v2_name(),
                    p.shape,
                    first.dtype().v2_name(),
                    first.shape
                ));
            }
            rows += p.shape[0];
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        let mut data = Data::with_capacity(first.dtype(), rows * first.row_len());
        for p in parts {
            data.extend_from(&p.data, 0..p.data.len());
        }
        Ok(Tensor { shape, data })
    }

    /// Split along dim 0 into consecutive pieces of `rows[i]` rows each; the
    /// counts must add up to dim 0.
    pub fn split_rows(&self, rows: &[usize]) -> Result<Vec<Tensor>, String> {
        let total: usize = rows.iter().sum();
        if self.shape.first() != Some(&total) {
            return Err(format!(
                "cannot split shape {:?} into {total} rows",
                self.shape
            ));
        }
        let row_len = self.row_len();
        let mut start = 0;
        let mut out = Vec::with_capacity(rows.len());
        for &n in rows {
            let mut shape = self.shape.clone();
            shape[0] = n;
            let mut data = Data::with_capacity(self.dtype(), n * row_len);
            data.extend_from(&self.data, start * row_len..(start + n) * row_len);
            out.push(Tensor { shape, data });
            start += n;
        }
        Ok(out)
    }

    /// A borrowed ONNX Runtime input (no copy of the data).
    pub fn to_ort(&self) -> Result<SessionInputValue<'_>, ort::Error> {
        let shape = self.shape.clone();
        Ok(match &self.data {
            Data::F32(v) => SessionInputValue::from(TensorRef::from_array_view((shape, &v[..]))?),
            Data::I64(v) => SessionInputValue::from(TensorRef::from_array_view((shape, &v[..]))?),
        })
    }

    /// Copy an ONNX Runtime output; only f32 and i64 tensors are served.
    pub fn from_ort(value: &DynValue) -> Result<Tensor, String> {
        let dtype = value
            .dtype()
            .tensor_type()
            .and_then(DType::from_ort)
            .ok_or_else(|| format!("output type {} is not float32 or int64", value.dtype()))?;
        let dims =
            |s: &ort::value::Shape| -> Vec<usize> { s.iter().map(|&d| d as usize).collect() };
        let e = |e: ort::Error| e.to_string();
        match dtype {
            DType::F32 => {
                let (shape, data) = value.try_extract_tensor::<f32>().map_err(e)?;
                Tensor::new(dims(shape), Data::F32(data.to_vec()))
            }
            DType::I64 => {
                let (shape, data) = value.try_extract_tensor::<i64>().map_err(e)?;
                Tensor::new(dims(shape), Data::I64(data.to_vec()))
            }
        }
    }

    /// A nested JSON list (or a bare number for rank 0), as golden files
    /// store tensors; it must be rectangular.
    pub fn from_nested_json(value: &serde_json::Value, dtype: DType) -> Result<Tensor, String> {
        let mut shape = Vec::new();
        let mut probe = value;
        while let serde_json::Value::Array(items) = probe {
            shape.push(items.len());
            match items.first() {
                Some(first) => probe = first,
                None => break,
            }
        }
        let mut data = Data::with_capacity(dtype, element_count(&shape).unwrap_or(0));
        collect_nested(value, &shape, dtype, &mut data)?;
        Tensor::new(shape, data)
    }

    /// The largest absolute element difference; the shapes and dtypes must agree.
    pub fn max_abs_diff(&self, other: &Tensor) -> Result<f64, String> {
        if self.shape != other.shape || self.dtype() != other.dtype() {
            return Err(format!(
                "{} {:?} vs {} {:?}",
                self.dtype().v2_name(),
                self.shape,
                other.dtype().v2_name(),
                other.shape
            ));
        }
        Ok(match (&self.data, &other.data) {
            (Data::F32(a), Data::F32(b)) => a.iter().zip(b).fold(0f64, |m, (x, y)| {
                let d = (f64::from(*x) - f64::from(*y)).abs();
                if d.is_nan() {
                    f64::INFINITY
                } else {
                    m.max(d)
                }
            }),
            (Data::I64(a), Data::I64(b)) => a
                .iter()
                .zip(b)
                .fold(0f64, |m, (x, y)| m.max(x.abs_diff(*y) as f64)),
            _ => unreachable!("dtypes compared above"),
        })
    }
}

fn collect_nested(
    value: &serde_json::Value,
    shape: &[usize],
    dtype: DType,
    out: &mut Data,
) -> Result<(), String> {
    match (value, shape.split_first()) {
        (serde_json::Value::Array(items), Some((&n, rest))) if items.len() == n => {
            for item in items {
                collect_nested(item, rest, dtype, out)?;
            }
            Ok(())
        }
        (serde_json::Value::Number(x), None) => {
            match (out, dtype) {
                (Data::F32(v), DType::F32) => v.push(x.as_f64().ok_or("not a number")? as f32),
                (Data::I64(v), DType::I64) => {
                    v.push(x.as_i64().ok_or_else(|| format!("{x} is not an int64"))?)
                }
                _ => unreachable!("data is created with dtype"),
            }
            Ok(())
        }
        _ => Err(format!(
            "not a rectangular nested list of numbers (expected shape {shape:?} at {value})"
        )
        .chars()
        .take(200)
        .collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(shape: &[usize], start: f32) -> Tensor {
        let n = element_count(shape).unwrap();
        Tensor::new(
            shape.to_vec(),
            Data::F32((0..n).map(|i| start + i as f32).collect()),
        )
        .unwrap()
    }

    #[test]
    fn concat_then_split_gives_the_parts_back() {
        let a = f32s(&[2, 3], 0.0);
        let b = f32s(&[1, 3], 100.0);
        let c = f32s(&[3, 3], 200.0);
        let all = Tensor::concat(&[&a, &b, &c]).unwrap();
        assert_eq!(all.shape, vec![6, 3]);
        assert_eq!(all.split_rows(&[2, 1, 3]).unwrap(), vec![a, b, c]);
    }

    #[test]
    fn concat_refuses_other_row_shapes_and_dtypes() {
        let a = f32s(&[2, 3], 0.0);
        assert!(Tensor::concat(&[&a, &f32s(&[2, 4], 0.0)]).is_err());
        let ints = Tensor::new(vec![1, 3], Data::I64(vec![1, 2, 3])).unwrap();
        assert!(Tensor::concat(&[&a, &ints]).is_err());
        assert!(Tensor::concat(&[&Tensor::new(vec![], Data::F32(vec![1.0])).unwrap()]).is_err());
    }

    #[test]
    fn split_checks_the_row_total() {
        assert!(f32s(&[3, 2], 0.0).split_rows(&[1, 1]).is_err());
        assert!(f32s(&[3, 2], 0.0).split_rows(&[1, 2]).is_ok());
    }

    #[test]
    fn nested_json_must_be_rectangular() {
        let t = Tensor::from_nested_json(&serde_json::json!([[1, 2], [3, 4], [5, 6]]), DType::I64)
            .unwrap();
        assert_eq!(t.shape, vec![3, 2]);
        assert_eq!(t.data, Data::I64(vec![1, 2, 3, 4, 5, 6]));
        assert!(Tensor::from_nested_json(&serde_json::json!([[1, 2], [3]]), DType::F32).is_err());
        assert!(Tensor::from_nested_json(&serde_json::json!([[1.5]]), DType::I64).is_err());
        let scalar = Tensor::from_nested_json(&serde_json::json!(2.5), DType::F32).unwrap();
        assert_eq!((scalar.shape.len(), scalar.data.len()), (0, 1));
    }

    #[test]
    fn binary_round_trip_and_diff() {
        let t = f32s(&[2, 2], -1.5);
        let back = Data::from_le_bytes(DType::F32, &t.data.to_le_bytes()).unwrap();
        assert_eq!(back, t.data);
        assert!(Data::from_le_bytes(DType::I64, &[0u8; 7]).is_none());
        let mut u = t.clone();
        if let Data::F32(v) = &mut u.data {
            v[3] += 0.25;
        }
        assert_eq!(t.max_abs_diff(&u).unwrap(), 0.25);
        assert!(t.max_abs_diff(&f32s(&[4], 0.0)).is_err());
    }
}
