//! Ranking metrics of the Fraud Detection Handbook protocol, on plain slices.
//!
//! Definitions follow scikit-learn (`roc_auc_score`, `average_precision_score`)
//! and the handbook's card precision@k, so numbers compare with the Python
//! training reports. Scores are ranked with `f32::total_cmp`; equal scores
//! are one threshold (a tie), which is what both definitions need.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Cumulative (true positives, false positives) at each distinct score,
/// scores descending: the points of the ROC and precision-recall curves.
fn curve(y: &[bool], score: &[f32]) -> Vec<(u64, u64)> {
    assert_eq!(y.len(), score.len(), "one label per score");
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_unstable_by(|&a, &b| score[b].total_cmp(&score[a]));
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut points = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        if y[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = order
            .get(pos + 1)
            .is_none_or(|&next| score[next] != score[i]);
        if last_of_tie {
            points.push((tp, fp));
        }
    }
    points
}

/// Area under the ROC curve by the trapezoidal rule, so a tied positive and
/// negative count 1/2 (scikit-learn's `roc_auc_score`). `None` unless both
/// classes occur.
pub fn roc_auc(y: &[bool], score: &[f32]) -> Option<f64> {
    let points = curve(y, score);
    let &(pos, neg) = points.last()?;
    if pos == 0 || neg == 0 {
        return None;
    }
    let (mut area, mut prev) = (0.0, (0u64, 0u64));
    for &(tp, fp) in &points {
        area += (fp - prev.1) as f64 * (tp + prev.0) as f64 / 2.0;
        prev = (tp, fp);
    }
    Some(area / (pos as f64 * neg as f64))
}

/// Average precision as scikit-learn's `average_precision_score`: over the
/// distinct scores descending, Σ (R_n − R_{n−1}) · P_n, with R_0 = 0 (no
/// interpolation). `None` without positives.
pub fn average_precision(y: &[bool], score: &[f32]) -> Option<f64> {
    let points = curve(y, score);
    let &(pos, _) = points.last()?;
    if pos == 0 {
        return None;
    }
    let (mut ap, mut prev_tp) = (0.0, 0u64);
    for &(tp, fp) in &points {
        ap += (tp - prev_tp) as f64 / pos as f64 * (tp as f64 / (tp + fp) as f64);
        prev_tp = tp;
    }
    Some(ap)
}

/// One row of a day's test set, as card precision sees it.
#[derive(Debug, Clone, Copy)]
pub struct CardRow<'a> {
    pub day: i64,
    pub card: &'a str,
    pub fraud: bool,
    pub score: f32,
}

/// One card on one day: its max score and whether it had a fraud that day.
#[derive(Debug, Clone, Copy)]
struct CardDay<'a> {
    card: &'a str,
    score: f32,
    fraud: bool,
}

/// The cards of each day present in `rows`, days in order (so that sums over
/// days are the same in every run).
fn cards_by_day<'a>(rows: &[CardRow<'a>]) -> Vec<Vec<CardDay<'a>>> {
    let mut days: BTreeMap<i64, HashMap<&str, CardDay>> = BTreeMap::new();
    for r in rows {
        let card = days
            .entry(r.day)
            .or_default()
            .entry(r.card)
            .or_insert(CardDay {
                card: r.card,
                score: r.score,
                fraud: false,
            });
        if r.score.total_cmp(&card.score).is_gt() {
            card.score = r.score;
        }
        card.fraud |= r.fraud;
    }
    days.into_values()
        .map(|cards| cards.into_values().collect())
        .collect()
}

/// Card precision@k as the Fraud Detection Handbook defines it
/// (`card_precision_top_k`, its chapter on performance metrics): days in
/// order; each day the cards already detected on an earlier day of `rows`
/// are left out, the others rank by their highest score that day (ties by
/// card id, ascending), the day's precision is the share of the top k that
/// had a fraud that day (divided by k even when fewer cards remain), and
/// those fraud cards count as detected from then on. The mean over the
/// days present. `None` for no rows.
pub fn card_precision_at_k(rows: &[CardRow], k: usize) -> Option<f64> {
    precision_over_days(rows, k, |cards| {
        cards.sort_unstable_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.card.cmp(b.card)))
    })
}

/// The best card precision@k any ranking could reach on `rows`, under the
/// same protocol: each day an oracle ranks the remaining fraud cards first.
pub fn card_precision_upper_bound(rows: &[CardRow], k: usize) -> Option<f64> {
    precision_over_days(rows, k, |cards| {
        cards.sort_unstable_by(|a, b| b.fraud.cmp(&a.fraud).then_with(|| a.card.cmp(b.card)))
    })
}

/// The day loop both share: `rank` orders a day's remaining cards.
fn precision_over_days(
    rows: &[CardRow],
    k: usize,
    rank: impl Fn(&mut Vec<CardDay>),
) -> Option<f64> {
    let days = cards_by_day(rows);
    if days.is_empty() {
        return None;
    }
    let n_days = days.len() as f64;
    let mut detected: HashSet<&str> = HashSet::new();
    let mut total = 0.0;
    for mut cards in days {
        cards.retain(|c| !detected.contains(c.card));
        rank(&mut cards);
        let hits: Vec<&str> = cards
            .iter()
            .take(k)
            .filter(|c| c.fraud)
            .map(|c| c.card)
            .collect();
        total += hits.len() as f64 / k as f64;
        detected.extend(hits);
    }
    Some(total / n_days)
}

/// Mean and population standard deviation (ddof = 0) of the values present.
pub fn mean_std(values: impl IntoIterator<Item = Option<f64>>) -> Option<(f64, f64)> {
    let values: Vec<f64> = values.into_iter().flatten().collect();
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some((mean, var.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(y: &[u8]) -> Vec<bool> {
        y.iter().map(|&v| v == 1).collect()
    }

    fn close(a: Option<f64>, b: f64) {
        let a = a.expect("defined");
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn auc_and_ap_count_ties_as_one_threshold() {
        // By hand: positives .9 .5 .5 .1, negatives .9 .5 .2 .1. AUC: pairs
        // won 3.5 + 2.5 + 2.5 + 0.5 = 9 of 16. AP: thresholds .9 (R 1/4,
        // P 1/2), .5 (R 3/4, P 3/5), .2 (R unchanged), .1 (R 1, P 1/2):
        // 1/4·1/2 + 1/2·3/5 + 1/4·1/2 = 0.55.
        let y = labels(&[1, 0, 1, 0, 1, 0, 0, 1]);
        let s = [0.9, 0.9, 0.5, 0.5, 0.5, 0.2, 0.1, 0.1];
        close(roc_auc(&y, &s), 0.5625);
        close(average_precision(&y, &s), 0.55);
    }

    // Expected values below were computed with scikit-learn 1.9.1
    // (`roc_auc_score`, `average_precision_score` on float32 scores), an
    // independent implementation, and pasted here.
    #[test]
    fn auc_and_ap_agree_with_scikit_learn() {
        let cases: [(&[u8], &[f32], f64, f64); 4] = [
            (&[0, 0, 1, 1], &[0.1, 0.2, 0.3, 0.4], 1.0, 1.0),
            (
                &[1, 1, 0, 0],
                &[0.1, 0.2, 0.3, 0.4],
                0.0,
                0.41666666666666663,
            ),
            (&[1, 0, 0, 1, 0], &[0.5; 5], 0.5, 0.4),
            (
                &[0, 1, 0, 0, 1, 1, 0, 1, 0, 0],
                &[0.3, 0.8, 0.8, 0.1, 0.45, 0.45, 0.45, 0.05, 0.0, 0.7],
                0.5625,
                0.4861111111111111,
            ),
        ];
        for (y, s, auc, ap) in cases {
            close(roc_auc(&labels(y), s), auc);
            close(average_precision(&labels(y), s), ap);
        }
    }

    #[test]
    fn one_class_has_no_auc_and_no_positives_no_ap() {
        assert_eq!(roc_auc(&[true, true], &[0.1, 0.2]), None);
        assert_eq!(average_precision(&[false, false], &[0.1, 0.2]), None);
        assert_eq!(roc_auc(&[], &[]), None);
        close(average_precision(&[true], &[0.3]), 1.0);
    }

    fn row(day: i64, card: &str, fraud: bool, score: f32) -> CardRow<'_> {
        CardRow {
            day,
            card,
            fraud,
            score,
        }
    }

    #[test]
    fn card_precision_follows_the_handbook_on_the_shared_fixture() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(
            "../../training/fraudlib/card_precision_fixture.json"
        ))
        .unwrap();
        let raw: Vec<(i64, String, bool, f32)> = fixture["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[0].as_i64().unwrap(),
                    r[1].as_str().unwrap().to_owned(),
                    r[2].as_i64().unwrap() == 1,
                    r[3].as_f64().unwrap() as f32,
                )
            })
            .collect();
        let rows: Vec<CardRow> = raw
            .iter()
            .map(|(day, card, fraud, score)| row(*day, card, *fraud, *score))
            .collect();
        for case in fixture["cases"].as_array().unwrap() {
            let k = case["k"].as_u64().unwrap() as usize;
            close(
                card_precision_at_k(&rows, k),
                case["card_precision"].as_f64().unwrap(),
            );
            close(
                card_precision_upper_bound(&rows, k),
                case["upper_bound"].as_f64().unwrap(),
            );
        }
        assert_eq!(card_precision_at_k(&[], 100), None);
    }

    #[test]
    fn std_is_the_population_one() {
        let (m, s) = mean_std([Some(1.0), Some(3.0), None]).unwrap();
        assert_eq!((m, s), (2.0, 1.0));
        assert_eq!(mean_std([None]), None);
    }
}
