//! Positional encodings of the model study: how a model learns *where* (and
//! *when*) a history entry is, besides what it is.
//!
//! Absolute encodings are vectors added to the token embeddings:
//! [`sinusoidal`] (fixed), [`LearnedPositional`] (a trained table) and
//! [`time_encoding`] (the same sinusoids, of the time gap instead of the
//! index). Relative encodings act on the attention scores instead:
//! [`alibi_bias`] is added to them directly, and [`t5_relative_bucket`] picks
//! which learned scalar bias to add.
//!
//! Positions are indices counted from 0: query `i` in `0..Tq` and key `j` in
//! `0..Tk`, as in `training/export_attention_layer.py`. In the model study
//! (`training/fraudlib/models.py`) history position 0 is the most recent
//! transaction and the current transaction sits at position -1.

use ndarray::{Array1, Array2, Array3, ArrayView1, ArrayView2};

/// The wavelength scale of the sinusoids (Vaswani et al. 2017).
pub const SINUSOID_BASE: f64 = 10_000.0;

/// The sinusoidal encoding of one (possibly fractional) position:
///
/// ```text
/// PE[pos, 2i]     = sin(pos / 10000^(2i / d))
/// PE[pos, 2i + 1] = cos(pos / 10000^(2i / d))
/// ```
///
/// Computed in `f64` and rounded once to `f32`, as `sinusoidal()` in
/// `training/fraudlib/models.py` does. An odd `d` ends with a sine.
pub fn sinusoidal_at(position: f64, d: usize) -> Array1<f32> {
    Array1::from_shape_fn(d, |j| {
        let angle = position / SINUSOID_BASE.powf((2 * (j / 2)) as f64 / d as f64);
        (if j % 2 == 0 { angle.sin() } else { angle.cos() }) as f32
    })
}

/// `[length, d]`: [`sinusoidal_at`] for positions `0..length`.
pub fn sinusoidal(length: usize, d: usize) -> Array2<f32> {
    let mut pe = Array2::zeros((length, d));
    for (pos, mut row) in pe.rows_mut().into_iter().enumerate() {
        row.assign(&sinusoidal_at(pos as f64, d));
    }
    pe
}

/// Time-aware encoding of the gap between a history entry and the current
/// transaction, in seconds: the sinusoids of [`sinusoidal_at`] at the
/// continuous "position" `t = ln(1 + gap_secs)`:
///
/// ```text
/// t            = ln(1 + max(gap_secs, 0))
/// TE[gap, 2i]     = sin(t / 10000^(2i / d))
/// TE[gap, 2i + 1] = cos(t / 10000^(2i / d))
/// ```
///
/// The logarithm spreads seconds-to-months gaps over `t` ≈ 0–15 (30 days is
/// `t` ≈ 14.8), the range where these frequencies tell gaps apart, and makes
/// the encoding depend on ratios of gaps rather than differences. A negative
/// gap (clock skew) or NaN counts as 0 and `+inf` as `f64::MAX`, so the
/// result is always finite.
pub fn time_encoding(gap_secs: f64, d: usize) -> Array1<f32> {
    let gap = if gap_secs.is_nan() {
        0.0
    } else {
        gap_secs.clamp(0.0, f64::MAX)
    };
    sinusoidal_at(gap.ln_1p(), d)
}

/// `[gaps.len(), d]`: [`time_encoding`] of each gap.
pub fn time_encodings(gaps_secs: &[f64], d: usize) -> Array2<f32> {
    let mut te = Array2::zeros((gaps_secs.len(), d));
    for (gap, mut row) in gaps_secs.iter().zip(te.rows_mut()) {
        row.assign(&time_encoding(*gap, d));
    }
    te
}

/// A learned absolute encoding: a trained `[max_len, d]` table whose row
/// `pos` is added to the token at position `pos` (`positional = "learned"`
/// in `training/fraudlib/models.py`).
#[derive(Debug, Clone, PartialEq)]
pub struct LearnedPositional {
    table: Array2<f32>,
}

impl LearnedPositional {
    pub fn new(table: Array2<f32>) -> LearnedPositional {
        LearnedPositional { table }
    }

    /// How many positions the table covers.
    pub fn max_len(&self) -> usize {
        self.table.nrows()
    }

    pub fn dim(&self) -> usize {
        self.table.ncols()
    }

    /// The encoding of `pos`, or `None` past the table: a learned encoding
    /// has nothing to say about positions it never saw.
    pub fn get(&self, pos: usize) -> Option<ArrayView1<'_, f32>> {
        (pos < self.max_len()).then(|| self.table.row(pos))
    }

    /// `[length, d]`: the encodings of positions `0..length`, or `None` if
    /// `length` exceeds the table.
    pub fn encode(&self, length: usize) -> Option<ArrayView2<'_, f32>> {
        (length <= self.max_len()).then(|| self.table.slice(ndarray::s![..length, ..]))
    }
}

/// ALiBi slopes (Press et al. 2022): `slope_h = 2^(-8 (h + 1) / H)` for heads
/// `h = 0..H`, a geometric sequence from `2^(-8/H)` down to `2^-8`.
///
/// For `H` a power of two this is the paper's sequence; for other `H` it is
/// the same closed form, not the paper's interleaving of two such sequences.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    (0..heads)
        .map(|h| 2f64.powf(-8.0 * (h + 1) as f64 / heads as f64) as f32)
        .collect()
}

/// `[heads, q_len, k_len]`: the ALiBi bias added to the attention scores,
///
/// ```text
/// bias[h, i, j] = -slope_h * |i - j|
/// ```
///
/// Symmetric in `i - j` (the paper's causal form only looks back; the
/// history here is attended in both directions), 0 on the diagonal and
/// linear in distance, so each head prefers near positions with its own
/// strength. Both axes count from 0, so in cross-attention query `i` is
/// nearest to key `i`; for other alignments use [`alibi_bias_at`].
pub fn alibi_bias(heads: usize, q_len: usize, k_len: usize) -> Array3<f32> {
    let positions = |n: usize| (0..n).map(|p| p as f32).collect::<Vec<_>>();
    alibi_bias_at(heads, &positions(q_len), &positions(k_len))
}

/// `[heads, queries, keys]`: the ALiBi bias for queries and keys at explicit
/// positions, `bias[h, i, j] = -slope_h * |query_pos[i] - key_pos[j]|`.
///
/// The model study (`training/fraudlib/models.py`) numbers the history from
/// 0 (the most recent transaction) and puts the current transaction at -1,
/// so its cross-attention bias is `alibi_bias_at(H, &[-1.0], &[0.0, 1.0, ..])`
/// = `-slope_h * (j + 1)`, and its self-attention bias is `alibi_bias(H, K, K)`.
pub fn alibi_bias_at(heads: usize, query_pos: &[f32], key_pos: &[f32]) -> Array3<f32> {
    let slopes = alibi_slopes(heads);
    Array3::from_shape_fn((heads, query_pos.len(), key_pos.len()), |(h, i, j)| {
        -slopes[h] * (query_pos[i] - key_pos[j]).abs()
    })
}

/// The T5 relative-position bucket (Raffel et al. 2020;
/// `_relative_position_bucket` in Mesh TensorFlow and Hugging Face) for
/// `relative_position = key position - query position`.
///
/// * `bidirectional`: half the buckets are for keys after the query
///   (`relative_position > 0`), half for keys at or before it. Otherwise
///   every key after the query shares bucket 0.
/// * Within a half of `n` buckets, distances `0..n/2` get a bucket each; the
///   rest are spaced logarithmically up to `max_distance`, and every larger
///   distance shares the last bucket.
///
/// The logarithm is taken in `f32` and truncated, as in those
/// implementations, so the buckets agree with theirs exactly.
///
/// # Panics
/// If a half has fewer than 2 buckets (`num_buckets < 4` bidirectional,
/// `< 2` otherwise) or `max_distance` does not exceed the exact range.
pub fn t5_relative_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let (half, offset, distance) = if bidirectional {
        let half = num_buckets / 2;
        let offset = if relative_position > 0 { half } else { 0 };
        (half, offset, relative_position.unsigned_abs())
    } else {
        (num_buckets, 0, relative_position.min(0).unsigned_abs())
    };
    let max_exact = half / 2;
    assert!(
        max_exact >= 1 && max_distance > max_exact,
        "T5 buckets need at least 2 buckets per direction and max_distance > {max_exact} \
         (got num_buckets {num_buckets}, max_distance {max_distance})"
    );
    let distance = usize::try_from(distance).unwrap_or(usize::MAX);
    if distance < max_exact {
        return offset + distance;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln()
        / ((max_distance as f64 / max_exact as f64).ln() as f32);
    let large = max_exact + (log_ratio * (half - max_exact) as f32) as usize;
    offset + large.min(half - 1)
}

/// `[q_len, k_len]`: [`t5_relative_bucket`] of `j - i` for query `i` and key `j`.
pub fn t5_buckets(
    q_len: usize,
    k_len: usize,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> Array2<usize> {
    Array2::from_shape_fn((q_len, k_len), |(i, j)| {
        t5_relative_bucket(
            j as i64 - i as i64,
            bidirectional,
            num_buckets,
            max_distance,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;
    use proptest::prelude::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn sinusoidal_matches_hand_computed_values() {
        let pe = sinusoidal(3, 6);
        assert_eq!(pe.row(0), array![0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
        // d = 6: dims 0/1 have wavelength 1, dims 2/3 10000^(2/6) = 10000^(1/3)
        // ≈ 21.544, dims 4/5 10000^(4/6) ≈ 464.16.
        let w1 = 10_000f64.powf(1.0 / 3.0);
        let w2 = 10_000f64.powf(2.0 / 3.0);
        let want = |p: f64| {
            [
                p.sin(),
                p.cos(),
                (p / w1).sin(),
                (p / w1).cos(),
                (p / w2).sin(),
                (p / w2).cos(),
            ]
            .map(|v| v as f32)
        };
        assert_eq!(pe[[1, 0]], 1f32.sin());
        assert_eq!(pe[[1, 1]], 1f32.cos());
        assert!(close(pe.row(1).as_slice().unwrap(), &want(1.0), 1e-7));
        assert!(close(pe.row(2).as_slice().unwrap(), &want(2.0), 1e-7));
        assert!((pe[[2, 2]] - 0.092_698_5).abs() < 1e-6, "sin(2 / 21.544)");
    }

    #[test]
    fn odd_dimensions_end_with_a_sine() {
        let pe = sinusoidal_at(1.0, 3);
        assert_eq!(pe.len(), 3);
        assert!((pe[2] - (1.0 / 10_000f64.powf(2.0 / 3.0)).sin() as f32).abs() < 1e-7);
    }

    #[test]
    fn time_encoding_is_the_sinusoid_at_log1p_of_the_gap() {
        assert_eq!(time_encoding(0.0, 8), sinusoidal(1, 8).row(0));
        // ln(1 + (e - 1)) = 1: the encoding of position 1.
        let te = time_encoding(std::f64::consts::E - 1.0, 8);
        assert!(close(
            te.as_slice().unwrap(),
            sinusoidal(2, 8).row(1).as_slice().unwrap(),
            1e-6
        ));
        // One day: t = ln(86401) ≈ 11.3668, so TE[0] = sin(11.3668) ≈ -0.9319.
        let day = time_encoding(86_400.0, 4);
        assert!((day[0] - (86_401f64.ln().sin() as f32)).abs() < 1e-7);
        assert!((day[0] - -0.9319).abs() < 1e-4, "{}", day[0]);
    }

    #[test]
    fn time_encoding_is_finite_for_any_gap() {
        for gap in [-5.0, f64::NAN, f64::INFINITY, f64::MAX, 1e300] {
            assert!(
                time_encoding(gap, 16).iter().all(|v| v.is_finite()),
                "{gap}"
            );
        }
        assert_eq!(time_encoding(-5.0, 4), time_encoding(0.0, 4));
        let te = time_encodings(&[0.0, 60.0], 4);
        assert_eq!(te.row(1), time_encoding(60.0, 4));
    }

    #[test]
    fn learned_table_is_a_lookup() {
        let table = LearnedPositional::new(array![[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]);
        assert_eq!((table.max_len(), table.dim()), (3, 2));
        assert_eq!(table.get(1), Some(array![3.0, 4.0].view()));
        assert_eq!(table.get(3), None);
        assert_eq!(table.encode(2), Some(array![[1.0, 2.0], [3.0, 4.0]].view()));
        assert_eq!(table.encode(4), None);
    }

    #[test]
    fn alibi_slopes_and_bias_match_hand_computed_values() {
        assert_eq!(alibi_slopes(4), vec![0.25, 0.0625, 0.015625, 0.00390625]);
        assert_eq!(alibi_slopes(8)[0], 0.5);
        assert_eq!(alibi_slopes(8)[7], 1.0 / 256.0);
        let bias = alibi_bias(4, 2, 4);
        assert_eq!(
            bias.index_axis(ndarray::Axis(0), 0),
            array![[0.0, -0.25, -0.5, -0.75], [-0.25, 0.0, -0.25, -0.5]]
        );
        assert_eq!(bias[[3, 0, 3]], -3.0 / 256.0);
        assert_eq!(bias[[1, 1, 0]], bias[[1, 0, 1]]);
        // The study's cross-attention: the current transaction at -1 looks at
        // history positions 0, 1, 2 with bias -slope * (j + 1).
        let cross = alibi_bias_at(4, &[-1.0], &[0.0, 1.0, 2.0]);
        assert_eq!(
            cross.index_axis(ndarray::Axis(0), 0),
            array![[-0.25, -0.5, -0.75]]
        );
    }

    #[test]
    fn t5_buckets_match_hand_computed_values() {
        let b = |rel| t5_relative_bucket(rel, true, 32, 128);
        // 16 buckets per direction: 0..8 exact, then log-spaced up to 128.
        assert_eq!([b(0), b(-1), b(-7), b(1), b(7)], [0, 1, 7, 17, 23]);
        // Distance 8 opens the log range: 8 + floor(8 * ln(8/8) / ln(16)) = 8.
        assert_eq!(b(-8), 8);
        // 16: 8 + floor(8 * ln 2 / ln 16) = 8 + 2; 32: 8 + 4; 64: 8 + 6.
        assert_eq!([b(-16), b(-32), b(-64)], [10, 12, 14]);
        // 127: 8 + floor(7.98) = 15; 128 and beyond: capped at the last bucket.
        assert_eq!([b(-127), b(-128), b(-10_000), b(10_000)], [15, 15, 15, 31]);

        let u = |rel| t5_relative_bucket(rel, false, 32, 128);
        // One direction, 32 buckets: keys after the query all share bucket 0.
        assert_eq!([u(5), u(0), u(-5), u(-15), u(-16)], [0, 0, 5, 15, 16]);
        // 32: 16 + floor(16 * ln 2 / ln 8) = 16 + 5; 128: capped at 31.
        assert_eq!([u(-32), u(-128), u(i64::MIN)], [21, 31, 31]);

        assert_eq!(
            t5_buckets(2, 3, true, 32, 128),
            array![[0, 17, 18], [1, 0, 17]]
        );
    }

    #[test]
    #[should_panic(expected = "T5 buckets need")]
    fn t5_rejects_too_few_buckets() {
        t5_relative_bucket(3, true, 2, 128);
    }

    proptest! {
        #[test]
        fn sinusoid_pairs_lie_on_the_unit_circle(pos in 0f64..1e4, d in 1usize..64) {
            let pe = sinusoidal_at(pos, d);
            for pair in pe.as_slice().unwrap().chunks_exact(2) {
                prop_assert!((pair[0].powi(2) + pair[1].powi(2) - 1.0).abs() < 1e-5);
            }
        }

        #[test]
        fn t5_buckets_are_in_range_and_monotone_in_distance(
            rel in -1000i64..1000,
            bidirectional in any::<bool>(),
            num_buckets in 4usize..64,
            extra in 1usize..200,
        ) {
            let half = if bidirectional { num_buckets / 2 } else { num_buckets };
            let max_distance = half / 2 + extra;
            let bucket = |r| t5_relative_bucket(r, bidirectional, num_buckets, max_distance);
            prop_assert!(bucket(rel) < num_buckets);
            // One step further from the query never moves to a nearer bucket,
            // and never crosses from one direction to the other.
            let further = if rel > 0 { rel + 1 } else { rel - 1 };
            prop_assert!(bucket(further) >= bucket(rel));
            if bidirectional {
                prop_assert_eq!(bucket(rel) >= num_buckets / 2, rel > 0);
            }
        }

        #[test]
        fn alibi_is_symmetric_and_prefers_near_keys(heads in 1usize..16, n in 1usize..12) {
            let bias = alibi_bias(heads, n, n);
            for h in 0..heads {
                for i in 0..n {
                    prop_assert_eq!(bias[[h, i, i]], 0.0);
                    for j in 0..n {
                        prop_assert_eq!(bias[[h, i, j]], bias[[h, j, i]]);
                        prop_assert!(bias[[h, i, j]] <= 0.0);
                    }
                }
            }
        }
    }
}
