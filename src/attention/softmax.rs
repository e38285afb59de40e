//! Masked softmax and log-sum-exp over one row of logits.
//!
//! Both subtract the largest *attended* logit before exponentiating, so no
//! `exp` can overflow whatever the logits are (`1e30`, `f32::MAX`). A masked
//! position gets exactly `0.0`, and a row with nothing attended gets all zeros
//! (log-sum-exp: `-inf`), never NaN.
//!
//! The exported models write the same rule as
//! `softmax(x + (1 - mask) * -1e9) * mask`, renormalized by `max(sum, 1e-12)`
//! (`masked_softmax` in `training/fraudlib/models.py`). For logits well inside
//! ±1e9, which attention scores always are, the two agree to rounding; the
//! version here stays exact beyond that, where a `-1e9` offset no longer hides
//! a masked logit.

/// Softmax of `logits` over the positions where `mask` is `true` (all
/// positions if `mask` is `None`); masked positions get exactly `0.0`.
///
/// An empty row, or one where every position is masked, returns all zeros.
///
/// # Panics
/// If `mask` is not as long as `logits`.
pub fn masked_softmax(logits: &[f32], mask: Option<&[bool]>) -> Vec<f32> {
    let mut row = logits.to_vec();
    masked_softmax_in_place(&mut row, mask);
    row
}

/// [`masked_softmax`], overwriting `row` with the weights.
///
/// # Panics
/// If `mask` is not as long as `row`.
pub fn masked_softmax_in_place(row: &mut [f32], mask: Option<&[bool]>) {
    check_mask(row.len(), mask);
    let Some(max) = attended_max(row, mask) else {
        row.fill(0.0);
        return;
    };
    let mut sum = 0.0f32;
    for (i, x) in row.iter_mut().enumerate() {
        *x = if is_attended(mask, i) {
            shifted_exp(*x, max)
        } else {
            0.0
        };
        sum += *x;
    }
    // The largest logit contributes exp(0) = 1, so sum >= 1: the division is
    // safe, and the graph's max(sum, 1e-12) clamp only matters when nothing
    // is attended, which returned above.
    for x in row.iter_mut() {
        *x /= sum;
    }
}

/// `ln(sum(exp(x)))` over the attended positions, computed stably as
/// `max + ln(sum(exp(x - max)))`; `-inf` when nothing is attended.
///
/// The result overflows to `+inf` only when the true value exceeds `f32::MAX`.
///
/// # Panics
/// If `mask` is not as long as `logits`.
pub fn log_sum_exp(logits: &[f32], mask: Option<&[bool]>) -> f32 {
    check_mask(logits.len(), mask);
    let Some(max) = attended_max(logits, mask) else {
        return f32::NEG_INFINITY;
    };
    let sum: f32 = logits
        .iter()
        .enumerate()
        .filter(|(i, _)| is_attended(mask, *i))
        .map(|(_, x)| shifted_exp(*x, max))
        .sum();
    if max.is_infinite() {
        return max;
    }
    max + sum.ln()
}

fn check_mask(len: usize, mask: Option<&[bool]>) {
    if let Some(mask) = mask {
        assert_eq!(
            mask.len(),
            len,
            "mask has {} entries for a row of {len}",
            mask.len()
        );
    }
}

fn is_attended(mask: Option<&[bool]>, i: usize) -> bool {
    mask.is_none_or(|m| m[i])
}

/// The largest attended logit, or `None` if nothing is attended.
fn attended_max(row: &[f32], mask: Option<&[bool]>) -> Option<f32> {
    row.iter()
        .enumerate()
        .filter(|(i, _)| is_attended(mask, *i))
        .map(|(_, x)| *x)
        .reduce(f32::max)
}

/// `exp(x - max)`, with the maximum itself mapped to exactly 1 so that a row
/// of `+inf` or `-inf` logits does not compute `inf - inf`.
fn shifted_exp(x: f32, max: f32) -> f32 {
    if x == max {
        1.0
    } else {
        (x - max).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[test]
    fn matches_the_definition_on_a_small_row() {
        let w = masked_softmax(&[1.0, 2.0, 3.0], None);
        let e = [1f32.exp(), 2f32.exp(), 3f32.exp()];
        let z: f32 = e.iter().sum();
        assert!(close(&w, &[e[0] / z, e[1] / z, e[2] / z], 1e-7), "{w:?}");
    }

    #[test]
    fn masked_positions_get_exactly_zero_and_the_rest_renormalize() {
        let w = masked_softmax(&[5.0, 0.0, 0.0, 100.0], Some(&[false, true, true, false]));
        assert_eq!(w, vec![0.0, 0.5, 0.5, 0.0]);
    }

    #[test]
    fn all_masked_and_empty_rows_are_all_zeros() {
        let w = masked_softmax(&[1.0, f32::MAX, -3.0], Some(&[false; 3]));
        assert_eq!(w, vec![0.0; 3]);
        assert_eq!(masked_softmax(&[], None), Vec::<f32>::new());
        assert_eq!(
            log_sum_exp(&[1.0, 2.0], Some(&[false, false])),
            f32::NEG_INFINITY
        );
    }

    #[test]
    fn huge_logits_stay_finite() {
        let w = masked_softmax(&[1e30, -1e30, 0.0], None);
        assert_eq!(w, vec![1.0, 0.0, 0.0]);
        let w = masked_softmax(&[f32::MAX, f32::MAX, f32::MIN], None);
        assert_eq!(w, vec![0.5, 0.5, 0.0]);
        let w = masked_softmax(&[f32::MAX, 0.0, -1e30], Some(&[false, true, true]));
        assert_eq!(w, vec![0.0, 1.0, 0.0]);
        assert_eq!(log_sum_exp(&[1e30, -1e30], None), 1e30);
        assert_eq!(log_sum_exp(&[f32::MAX, f32::MIN], None), f32::MAX);
    }

    #[test]
    fn infinite_logits_do_not_produce_nan() {
        let w = masked_softmax(&[f32::INFINITY, 1.0, f32::INFINITY], None);
        assert_eq!(w, vec![0.5, 0.0, 0.5]);
        let w = masked_softmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY], None);
        assert_eq!(w, vec![0.5, 0.5]);
        let w = masked_softmax(&[f32::NEG_INFINITY, 0.0], None);
        assert_eq!(w, vec![0.0, 1.0]);
    }

    #[test]
    fn log_sum_exp_matches_the_naive_formula_where_that_is_safe() {
        let x = [0.5f32, -1.0, 2.0];
        let naive = x.iter().map(|v| v.exp()).sum::<f32>().ln();
        assert!((log_sum_exp(&x, None) - naive).abs() < 1e-6);
        let masked = (0.5f32.exp() + 2f32.exp()).ln();
        assert!((log_sum_exp(&x, Some(&[true, false, true])) - masked).abs() < 1e-6);
    }

    /// A row of logits and a mask of the same length.
    fn row_and_mask() -> impl Strategy<Value = (Vec<f32>, Vec<bool>)> {
        (1usize..24).prop_flat_map(|n| {
            (
                prop::collection::vec(-50f32..50.0, n),
                prop::collection::vec(any::<bool>(), n),
            )
        })
    }

    fn any_logit() -> impl Strategy<Value = f32> {
        prop_oneof![
            -1e4f32..1e4,
            Just(f32::MAX),
            Just(f32::MIN),
            Just(1e30f32),
            Just(-1e30f32),
            prop::num::f32::NORMAL,
        ]
    }

    proptest! {
        #[test]
        fn weights_are_a_distribution_over_attended_positions((x, mask) in row_and_mask()) {
            let w = masked_softmax(&x, Some(&mask));
            for (wi, attended) in w.iter().zip(&mask) {
                prop_assert!(wi.is_finite() && *wi >= 0.0);
                if !attended {
                    prop_assert_eq!(*wi, 0.0);
                }
            }
            let sum: f32 = w.iter().sum();
            if mask.iter().any(|m| *m) {
                prop_assert!((sum - 1.0).abs() < 1e-5, "sum {}", sum);
            } else {
                prop_assert_eq!(sum, 0.0);
            }
        }

        #[test]
        fn adding_a_constant_to_every_logit_changes_nothing(
            (x, mask) in row_and_mask(),
            c in -100f32..100.0,
        ) {
            let shifted: Vec<f32> = x.iter().map(|v| v + c).collect();
            let (a, b) = (masked_softmax(&x, Some(&mask)), masked_softmax(&shifted, Some(&mask)));
            prop_assert!(close(&a, &b, 1e-4), "{:?} vs {:?}", a, b);
            let (la, lb) = (log_sum_exp(&x, Some(&mask)), log_sum_exp(&shifted, Some(&mask)));
            if mask.iter().any(|m| *m) {
                prop_assert!((la + c - lb).abs() <= 1e-3 * (1.0 + lb.abs()), "{} + {} vs {}", la, c, lb);
            }
        }

        #[test]
        fn masked_logits_have_no_influence((x, mask) in row_and_mask(), junk in any_logit()) {
            let changed: Vec<f32> = x
                .iter()
                .zip(&mask)
                .map(|(v, m)| if *m { *v } else { junk })
                .collect();
            prop_assert_eq!(masked_softmax(&x, Some(&mask)), masked_softmax(&changed, Some(&mask)));
        }

        #[test]
        fn any_finite_logits_give_finite_weights(
            x in prop::collection::vec(any_logit(), 1..16),
        ) {
            let w = masked_softmax(&x, None);
            prop_assert!(w.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{:?}", w);
            prop_assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            prop_assert!(!log_sum_exp(&x, None).is_nan());
        }
    }
}
