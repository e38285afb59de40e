//! Scaled dot-product attention and multi-head attention, written to read
//! like the equations (and like `MaskedMHA` in `training/fraudlib/models.py`).
//!
//! Shapes are single sequences, no batch axis: queries `[Tq, d]`, keys and
//! values `[Tk, d]`. A key mask is `true` where a key is real and `false` on
//! padding; padding gets weight exactly `0.0` and a query with no real key
//! gets all-zero weights, so its attention output is zero (and the
//! multi-head output is the output projection's bias alone).
//!
//! Weights come from files, so constructors check shapes and return a
//! [`ShapeError`]; inputs of the wrong shape are a caller bug and panic, as
//! `ndarray`'s own products do.

use super::softmax::masked_softmax_in_place;
use ndarray::{s, Array1, Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};

/// Weights whose shapes do not fit together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("linear layer: weight is [{out_dim}, {in_dim}] but bias has {bias} entries")]
    Bias {
        out_dim: usize,
        in_dim: usize,
        bias: usize,
    },
    #[error("projection {name}: weight is [{out_dim}, {in_dim}], expected [{d_model}, {d_model}]")]
    Projection {
        name: &'static str,
        out_dim: usize,
        in_dim: usize,
        d_model: usize,
    },
    #[error("{d_model} model dimensions do not split into {heads} heads")]
    Heads { d_model: usize, heads: usize },
}

/// A key mask from the models' float convention (`1.0` real, `0.0` padding,
/// as in the `history_mask` input).
pub fn key_mask_from_f32(mask: &[f32]) -> Vec<bool> {
    mask.iter().map(|m| *m > 0.5).collect()
}

/// What one attention head computes.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionOutput {
    /// `[Tq, dv]`: `weights · v`.
    pub output: Array2<f32>,
    /// `[Tq, Tk]`: each row sums to 1 over the real keys, or is all zeros if
    /// there are none.
    pub weights: Array2<f32>,
}

/// Scaled dot-product attention:
/// `weights = masked_softmax(q kᵀ / √d + bias)`, `output = weights v`.
///
/// `q` is `[Tq, d]`, `k` is `[Tk, d]`, `v` is `[Tk, dv]`; `key_mask` has `Tk`
/// entries and `bias` (added to the scaled scores, e.g. one head of an ALiBi
/// bias) is `[Tq, Tk]`.
///
/// # Panics
/// If the shapes do not agree.
pub fn scaled_dot_product_attention(
    q: ArrayView2<f32>,
    k: ArrayView2<f32>,
    v: ArrayView2<f32>,
    key_mask: Option<&[bool]>,
    bias: Option<ArrayView2<f32>>,
) -> AttentionOutput {
    let (tq, d) = q.dim();
    let tk = k.nrows();
    assert_eq!(k.ncols(), d, "q is [{tq}, {d}] but k is {:?}", k.dim());
    assert_eq!(v.nrows(), tk, "k has {tk} rows but v has {}", v.nrows());
    if let Some(mask) = key_mask {
        assert_eq!(
            mask.len(),
            tk,
            "key mask has {} entries for {tk} keys",
            mask.len()
        );
    }
    // Divide (not multiply by 1/√d) like the PyTorch model, so that the
    // exported graph and this code round the same way.
    let mut weights = q.dot(&k.t()) / (d as f32).sqrt();
    if let Some(bias) = bias {
        assert_eq!(
            bias.dim(),
            (tq, tk),
            "bias is {:?}, scores are [{tq}, {tk}]",
            bias.dim()
        );
        weights += &bias;
    }
    for mut row in weights.rows_mut() {
        // The product's layout depends on the operands', so a row is not
        // always contiguous: work on a copy.
        let mut scores = row.to_vec();
        masked_softmax_in_place(&mut scores, key_mask);
        row.assign(&ArrayView1::from(&scores));
    }
    AttentionOutput {
        output: weights.dot(&v),
        weights,
    }
}

/// An affine map in PyTorch's `nn.Linear` convention: `y = x Wᵀ + b`, with
/// `W` of shape `[out, in]`, so weights exported from PyTorch load as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    weight: Array2<f32>,
    bias: Array1<f32>,
}

impl Linear {
    /// `weight` is `[out, in]`, `bias` has `out` entries.
    pub fn new(weight: Array2<f32>, bias: Array1<f32>) -> Result<Linear, ShapeError> {
        let (out_dim, in_dim) = weight.dim();
        if bias.len() != out_dim {
            return Err(ShapeError::Bias {
                out_dim,
                in_dim,
                bias: bias.len(),
            });
        }
        Ok(Linear { weight, bias })
    }

    /// The identity map on `d` dimensions (zero bias).
    pub fn identity(d: usize) -> Linear {
        Linear {
            weight: Array2::eye(d),
            bias: Array1::zeros(d),
        }
    }

    /// `[out, in]`.
    pub fn weight(&self) -> &Array2<f32> {
        &self.weight
    }

    pub fn bias(&self) -> &Array1<f32> {
        &self.bias
    }

    /// `x` is `[T, in]`; returns `[T, out]`.
    ///
    /// # Panics
    /// If `x` does not have `in` columns.
    pub fn forward(&self, x: ArrayView2<f32>) -> Array2<f32> {
        x.dot(&self.weight.t()) + &self.bias
    }
}

/// What multi-head attention computes.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiHeadOutput {
    /// `[Tq, d]`: the heads' outputs side by side, through the output projection.
    pub output: Array2<f32>,
    /// `[heads, Tq, Tk]`: each head's attention weights.
    pub weights: Array3<f32>,
}

impl MultiHeadOutput {
    /// `[Tq, Tk]`: the weights averaged over heads, which is what the fraud
    /// model reports as `history_attention`.
    pub fn mean_weights(&self) -> Array2<f32> {
        self.weights
            .mean_axis(Axis(0))
            .expect("a multi-head output has at least one head")
    }
}

/// Multi-head attention with learned projections, as in `MaskedMHA`: project
/// queries with `q`, keys and values with `k` and `v`, split the `d` model
/// dimensions into `heads` consecutive slices of `d / heads`, run
/// [`scaled_dot_product_attention`] on each slice, concatenate and project
/// with `o`.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiHeadAttention {
    heads: usize,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
}

impl MultiHeadAttention {
    /// All four projections must be `[d, d]`, and `heads` must divide `d`.
    pub fn new(
        heads: usize,
        q: Linear,
        k: Linear,
        v: Linear,
        o: Linear,
    ) -> Result<MultiHeadAttention, ShapeError> {
        let d_model = q.weight.nrows();
        for (name, layer) in [("q", &q), ("k", &k), ("v", &v), ("o", &o)] {
            let (out_dim, in_dim) = layer.weight.dim();
            if (out_dim, in_dim) != (d_model, d_model) {
                return Err(ShapeError::Projection {
                    name,
                    out_dim,
                    in_dim,
                    d_model,
                });
            }
        }
        if heads == 0 || !d_model.is_multiple_of(heads) {
            return Err(ShapeError::Heads { d_model, heads });
        }
        Ok(MultiHeadAttention { heads, q, k, v, o })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    pub fn d_model(&self) -> usize {
        self.q.weight.nrows()
    }

    /// Attend from `query` (`[Tq, d]`) to `key_value` (`[Tk, d]`, used as
    /// both keys and values). `key_mask` has `Tk` entries; `bias`, if given,
    /// is `[heads, Tq, Tk]` and is added to each head's scaled scores (see
    /// [`alibi_bias`](super::positional::alibi_bias)).
    ///
    /// # Panics
    /// If the shapes do not agree with each other or with `d`.
    pub fn forward(
        &self,
        query: ArrayView2<f32>,
        key_value: ArrayView2<f32>,
        key_mask: Option<&[bool]>,
        bias: Option<ArrayView3<f32>>,
    ) -> MultiHeadOutput {
        let (tq, tk) = (query.nrows(), key_value.nrows());
        if let Some(bias) = bias {
            assert_eq!(
                bias.dim(),
                (self.heads, tq, tk),
                "bias is {:?}, expected [heads, Tq, Tk]",
                bias.dim()
            );
        }
        let (q, k, v) = (
            self.q.forward(query),
            self.k.forward(key_value),
            self.v.forward(key_value),
        );
        let head_dim = self.d_model() / self.heads;
        let mut concat = Array2::zeros((tq, self.d_model()));
        let mut weights = Array3::zeros((self.heads, tq, tk));
        for h in 0..self.heads {
            let cols = s![.., h * head_dim..(h + 1) * head_dim];
            let head = scaled_dot_product_attention(
                q.slice(cols),
                k.slice(cols),
                v.slice(cols),
                key_mask,
                bias.map(|b| b.index_axis_move(Axis(0), h)),
            );
            concat.slice_mut(cols).assign(&head.output);
            weights.index_axis_mut(Axis(0), h).assign(&head.weights);
        }
        MultiHeadOutput {
            output: self.o.forward(concat.view()),
            weights,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array};
    use proptest::prelude::*;

    fn max_abs_diff<D: ndarray::Dimension>(a: &Array<f32, D>, b: &Array<f32, D>) -> f32 {
        assert_eq!(a.shape(), b.shape());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    fn matrix(rows: usize, cols: usize) -> impl Strategy<Value = Array2<f32>> {
        prop::collection::vec(-3f32..3.0, rows * cols)
            .prop_map(move |v| Array2::from_shape_vec((rows, cols), v).unwrap())
    }

    #[test]
    fn linear_follows_the_pytorch_convention() {
        let layer = Linear::new(
            array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
            array![0.5, 0.0, -1.0],
        )
        .unwrap();
        let y = layer.forward(array![[1.0, 1.0], [1.0, 0.0]].view());
        assert_eq!(y, array![[3.5, 7.0, 10.0], [1.5, 3.0, 4.0]]);
    }

    #[test]
    fn sdpa_matches_a_hand_computed_example() {
        // scores = [1/√2, 0]; weights = [e^{1/√2}, 1] / (e^{1/√2} + 1).
        let out = scaled_dot_product_attention(
            array![[1.0, 0.0]].view(),
            array![[1.0, 0.0], [0.0, 1.0]].view(),
            array![[1.0, 2.0], [3.0, 4.0]].view(),
            None,
            None,
        );
        let e = std::f32::consts::FRAC_1_SQRT_2.exp();
        let (w0, w1) = (e / (e + 1.0), 1.0 / (e + 1.0));
        assert!(max_abs_diff(&out.weights, &array![[w0, w1]]) < 1e-6);
        let want = array![[w0 + 3.0 * w1, 2.0 * w0 + 4.0 * w1]];
        assert!(max_abs_diff(&out.output, &want) < 1e-6);
    }

    #[test]
    fn bias_is_added_to_the_scaled_scores() {
        // Equal scores; a bias of ln 3 on the first key makes it 3 times as likely.
        let out = scaled_dot_product_attention(
            array![[0.0, 0.0]].view(),
            array![[1.0, 2.0], [3.0, 4.0]].view(),
            array![[1.0], [0.0]].view(),
            None,
            Some(array![[3f32.ln(), 0.0]].view()),
        );
        assert!(max_abs_diff(&out.weights, &array![[0.75, 0.25]]) < 1e-6);
    }

    #[test]
    fn a_query_with_only_padding_gets_zero_weights_and_the_output_bias() {
        let d = 4;
        let o = Linear::new(Array2::eye(d), array![1.0, 2.0, 3.0, 4.0]).unwrap();
        let mha = MultiHeadAttention::new(
            2,
            Linear::identity(d),
            Linear::identity(d),
            Linear::identity(d),
            o,
        )
        .unwrap();
        let x = Array2::from_shape_fn((3, d), |(i, j)| (i * d + j) as f32);
        let out = mha.forward(x.view(), x.view(), Some(&[false; 3]), None);
        assert!(out.weights.iter().all(|w| *w == 0.0));
        for row in out.output.rows() {
            assert_eq!(row, array![1.0, 2.0, 3.0, 4.0]);
        }
    }

    #[test]
    fn constructor_rejects_shapes_that_do_not_fit() {
        let d = 6;
        let id = || Linear::identity(d);
        assert_eq!(
            MultiHeadAttention::new(4, id(), id(), id(), id()),
            Err(ShapeError::Heads {
                d_model: 6,
                heads: 4
            })
        );
        assert!(matches!(
            MultiHeadAttention::new(2, id(), Linear::identity(4), id(), id()),
            Err(ShapeError::Projection { name: "k", .. })
        ));
        assert!(matches!(
            Linear::new(Array2::zeros((3, 2)), Array1::zeros(2)),
            Err(ShapeError::Bias { bias: 2, .. })
        ));
    }

    #[test]
    fn key_masks_convert_from_the_float_convention() {
        assert_eq!(key_mask_from_f32(&[1.0, 0.0, 1.0]), vec![true, false, true]);
    }

    proptest! {
        #[test]
        fn one_real_key_returns_its_value(
            (q, k, v) in (1usize..5, 1usize..6, 1usize..6)
                .prop_flat_map(|(tq, d, dv)| (matrix(tq, d), matrix(1, d), matrix(1, dv))),
        ) {
            let out = scaled_dot_product_attention(q.view(), k.view(), v.view(), Some(&[true]), None);
            prop_assert!(out.weights.iter().all(|w| *w == 1.0));
            for row in out.output.rows() {
                prop_assert_eq!(row, v.row(0));
            }
        }

        #[test]
        fn padding_keys_change_nothing(
            (q, k, v, pad_k, pad_v) in (1usize..4, 1usize..8, 1usize..5, 1usize..5)
                .prop_flat_map(|(tq, tk, d, pad)| {
                    (matrix(tq, d), matrix(tk, d), matrix(tk, d), matrix(pad, d), matrix(pad, d))
                }),
        ) {
            let (tk, pad) = (k.nrows(), pad_k.nrows());
            let plain = scaled_dot_product_attention(q.view(), k.view(), v.view(), None, None);
            let padded_k = ndarray::concatenate(Axis(0), &[k.view(), pad_k.view()]).unwrap();
            let padded_v = ndarray::concatenate(Axis(0), &[v.view(), (pad_v * 1e6).view()]).unwrap();
            let mask: Vec<bool> = (0..tk + pad).map(|j| j < tk).collect();
            let padded = scaled_dot_product_attention(
                q.view(), padded_k.view(), padded_v.view(), Some(&mask), None,
            );
            prop_assert!(max_abs_diff(&plain.output, &padded.output) < 1e-5);
            prop_assert!(max_abs_diff(&plain.weights, &padded.weights.slice(s![.., ..tk]).to_owned()) < 1e-5);
            prop_assert!(padded.weights.slice(s![.., tk..]).iter().all(|w| *w == 0.0));
        }

        #[test]
        fn one_head_with_identity_projections_is_plain_sdpa(
            (x, mem, mask) in (1usize..4, 1usize..8, 1usize..6).prop_flat_map(|(tq, tk, d)| {
                (matrix(tq, d), matrix(tk, d), prop::collection::vec(any::<bool>(), tk))
            }),
        ) {
            let d = x.ncols();
            let id = || Linear::identity(d);
            let mha = MultiHeadAttention::new(1, id(), id(), id(), id()).unwrap();
            let got = mha.forward(x.view(), mem.view(), Some(&mask), None);
            let want = scaled_dot_product_attention(x.view(), mem.view(), mem.view(), Some(&mask), None);
            prop_assert!(max_abs_diff(&got.output, &want.output) < 1e-6);
            prop_assert!(max_abs_diff(&got.weights.index_axis(Axis(0), 0).to_owned(), &want.weights) < 1e-7);
        }

        #[test]
        fn every_head_weights_a_distribution_over_real_keys(
            (x, mem, mask) in (1usize..4, 1usize..8).prop_flat_map(|(tq, tk)| {
                (matrix(tq, 8), matrix(tk, 8), prop::collection::vec(any::<bool>(), tk))
            }),
            w in prop::collection::vec(matrix(8, 8), 4),
        ) {
            let lin = |m: &Array2<f32>| Linear::new(m.clone(), Array1::zeros(8)).unwrap();
            let mha = MultiHeadAttention::new(4, lin(&w[0]), lin(&w[1]), lin(&w[2]), lin(&w[3])).unwrap();
            let out = mha.forward(x.view(), mem.view(), Some(&mask), None);
            let want_sum = if mask.iter().any(|m| *m) { 1.0 } else { 0.0 };
            for head in out.weights.outer_iter() {
                for row in head.rows() {
                    let sum: f32 = row.sum();
                    prop_assert!((sum - want_sum).abs() < 1e-5, "row sum {}", sum);
                    for (wi, real) in row.iter().zip(&mask) {
                        prop_assert!(*real || *wi == 0.0);
                    }
                }
            }
            prop_assert!(out.output.iter().all(|v| v.is_finite()));
        }
    }
}
