//! Classification metrics from predicted probabilities: a confusion matrix, per-class
//! precision, recall and F1, their macro and weighted means, and top-1 / top-5 errors.
//!
//! Pure arithmetic, no libtorch, so the numbers can be checked by hand in the tests.
//!
//! # Conventions
//!
//! - The predicted class of a row of probabilities is the one the plugin would report: the
//!   highest probability, the lower class index on ties, NaN never ranking (a row of NaN
//!   predicts class 0, as the plugin's top-k list does).
//! - A ratio whose denominator is zero is 0, as scikit-learn's `zero_division=0`: the
//!   precision of a class never predicted, the recall of a class with no support, the F1 of a
//!   class whose precision and recall are both 0.
//! - Macro means run over the classes with support (at least one true sample), so a class
//!   absent from the evaluated split does not add a meaningless 0. scikit-learn gives the same
//!   numbers with `labels=` the classes present in the truth. A class with no support that is
//!   still predicted costs the other classes recall, which the macro recall shows.
//! - Weighted means weigh each class by its support; classes without support weigh nothing,
//!   so they equal scikit-learn's `average="weighted"`. Weighted recall equals accuracy.
//! - Macro and weighted F1 are means of the per-class F1, not the F1 of the mean precision
//!   and recall (scikit-learn's definition).
//! - Top-k uses k = min(5, classes); the true class is a hit when fewer than k classes rank
//!   before it, ranking as the plugin does (higher probability first, then lower index), so a
//!   tie costs the true class a place only to classes with a lower index. A NaN probability of
//!   the true class is a miss unless the class is also the predicted one.
//! - With no samples every rate is 0 and `samples` says so.

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

/// The k of the top-k error (the paper reports top-1; the plugin reports up to five classes).
pub const TOP_K: usize = 5;

/// Counts of (true class, predicted class) pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confusion {
    classes: usize,
    /// `classes * classes` counts, row = true class, column = predicted class.
    counts: Vec<u64>,
}

impl Confusion {
    /// An empty matrix for `classes` classes.
    pub fn new(classes: usize) -> Self {
        Self { classes, counts: vec![0; classes * classes] }
    }

    /// The matrix of the given true classes and probability rows (see the module's
    /// conventions for the predicted class).
    pub fn from_predictions(classes: usize, truth: &[u32], probs: &[f32]) -> Result<Self> {
        check_shapes(classes, truth, probs)?;
        let mut confusion = Self::new(classes);
        for (row, &t) in probs.chunks_exact(classes.max(1)).zip(truth) {
            confusion.add(t as usize, predicted_class(row))?;
        }
        Ok(confusion)
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Counts one sample; refuses a class index out of range.
    pub fn add(&mut self, truth: usize, predicted: usize) -> Result<()> {
        if truth >= self.classes || predicted >= self.classes {
            bail!("class index ({truth}, {predicted}) out of range for {} classes", self.classes);
        }
        self.counts[truth * self.classes + predicted] += 1;
        Ok(())
    }

    /// Samples of true class `truth` predicted as `predicted`; 0 out of range.
    pub fn get(&self, truth: usize, predicted: usize) -> u64 {
        if truth >= self.classes || predicted >= self.classes {
            return 0;
        }
        self.counts[truth * self.classes + predicted]
    }

    /// All samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Samples whose true class is `truth` (its support).
    pub fn row_total(&self, truth: usize) -> u64 {
        (0..self.classes).map(|p| self.get(truth, p)).sum()
    }

    /// Samples predicted as `predicted`.
    pub fn column_total(&self, predicted: usize) -> u64 {
        (0..self.classes).map(|t| self.get(t, predicted)).sum()
    }

    /// Correctly classified samples.
    pub fn correct(&self) -> u64 {
        (0..self.classes).map(|c| self.get(c, c)).sum()
    }

    /// The matrix as rows (true classes) of counts, for JSON.
    pub fn rows(&self) -> Vec<Vec<u64>> {
        self.counts.chunks(self.classes.max(1)).map(<[u64]>::to_vec).collect()
    }
}

/// Metrics of one class.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// True samples of the class.
    pub support: u64,
    /// Samples predicted as the class.
    pub predicted: u64,
}

/// Metrics of a set of predictions; rates are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    /// One entry per class, in class order.
    pub per_class: Vec<ClassMetrics>,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub weighted_precision: f64,
    pub weighted_recall: f64,
    pub weighted_f1: f64,
    /// 1 - accuracy.
    pub top1_error: f64,
    /// Fraction of samples whose true class is not among the `top_k` most probable.
    pub top5_error: f64,
    /// The k of `top5_error`: min(5, classes).
    pub top_k: usize,
    /// Classes the macro means run over (those with support).
    pub classes_with_support: usize,
    pub samples: u64,
}

impl Metrics {
    /// Metrics of `truth.len()` samples whose probabilities are `probs`, `classes` per
    /// sample, row after row.
    pub fn from_predictions(classes: usize, truth: &[u32], probs: &[f32]) -> Result<Self> {
        let confusion = Confusion::from_predictions(classes, truth, probs)?;
        let k = TOP_K.min(classes);
        let top_k_misses = probs
            .chunks_exact(classes.max(1))
            .zip(truth)
            .filter(|&(row, &t)| !in_top_k(row, t as usize, k))
            .count() as u64;
        Ok(Self::from_confusion(&confusion, top_k_misses, k))
    }

    /// Metrics of a confusion matrix, given how many samples missed the top `k`.
    pub fn from_confusion(confusion: &Confusion, top_k_misses: u64, k: usize) -> Self {
        let samples = confusion.total();
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };

        // Per class, zero_division = 0.
        let per_class: Vec<ClassMetrics> = (0..confusion.classes())
            .map(|c| {
                let hits = confusion.get(c, c) as f64;
                let support = confusion.row_total(c);
                let predicted = confusion.column_total(c);
                let precision = ratio(hits, predicted as f64);
                let recall = ratio(hits, support as f64);
                let f1 = ratio(2.0 * precision * recall, precision + recall);
                ClassMetrics { precision, recall, f1, support, predicted }
            })
            .collect();

        // Macro over classes with support; weighted by support.
        let supported: Vec<&ClassMetrics> = per_class.iter().filter(|m| m.support > 0).collect();
        let count = supported.len() as f64;
        let mean = |f: fn(&ClassMetrics) -> f64| ratio(supported.iter().map(|m| f(m)).sum(), count);
        let weighted = |f: fn(&ClassMetrics) -> f64| {
            let sum: f64 = per_class.iter().map(|m| f(m) * m.support as f64).sum();
            ratio(sum, samples as f64)
        };
        let accuracy = ratio(confusion.correct() as f64, samples as f64);
        Self {
            accuracy,
            macro_precision: mean(|m| m.precision),
            macro_recall: mean(|m| m.recall),
            macro_f1: mean(|m| m.f1),
            weighted_precision: weighted(|m| m.precision),
            weighted_recall: weighted(|m| m.recall),
            weighted_f1: weighted(|m| m.f1),
            top1_error: if samples > 0 { 1.0 - accuracy } else { 0.0 },
            top5_error: ratio(top_k_misses as f64, samples as f64),
            top_k: k,
            classes_with_support: supported.len(),
            samples,
            per_class,
        }
    }
}

/// The class the plugin reports for a row: highest probability, lower index on ties, NaN
/// never ranking; 0 for an empty or all-NaN row.
pub fn predicted_class(row: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (class, &p) in row.iter().enumerate() {
        // Strictly greater: an equal later class does not displace an earlier one.
        if !p.is_nan() && best.is_none_or(|(_, q)| p > q) {
            best = Some((class, p));
        }
    }
    best.map_or(0, |(class, _)| class)
}

/// Whether `truth` is among the `k` best-ranked classes of `row`.
pub fn in_top_k(row: &[f32], truth: usize, k: usize) -> bool {
    if predicted_class(row) == truth {
        return k > 0;
    }
    let Some(&p) = row.get(truth) else {
        return false;
    };
    if p.is_nan() {
        return false;
    }
    // Classes ranked before the truth: more probable, or as probable with a lower index.
    let before =
        row.iter().enumerate().filter(|&(class, &q)| q > p || (q == p && class < truth)).count();
    before < k
}

fn check_shapes(classes: usize, truth: &[u32], probs: &[f32]) -> Result<()> {
    if classes == 0 {
        bail!("metrics need at least one class");
    }
    if probs.len() != truth.len() * classes {
        bail!("{} probabilities for {} samples of {classes} classes", probs.len(), truth.len());
    }
    if let Some(&t) = truth.iter().find(|&&t| t as usize >= classes) {
        bail!("true class {t} out of range for {classes} classes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// A probability row of `classes` that predicts `class`.
    fn row_for(class: usize, classes: usize) -> Vec<f32> {
        let mut row = vec![0.1 / classes as f32; classes];
        row[class] = 0.9;
        row
    }

    /// Builds samples from a confusion matrix given as rows of counts.
    fn samples_of(matrix: &[&[u64]]) -> (Vec<u32>, Vec<f32>) {
        let classes = matrix.len();
        let (mut truth, mut probs) = (Vec::new(), Vec::new());
        for (t, row) in matrix.iter().enumerate() {
            for (p, &count) in row.iter().enumerate() {
                for _ in 0..count {
                    truth.push(t as u32);
                    probs.extend(row_for(p, classes));
                }
            }
        }
        (truth, probs)
    }

    #[test]
    fn hand_computed_matrix() {
        // Rows = truth, columns = predicted. Class 3 has no support and is never predicted.
        //            p0 p1 p2 p3   support
        //   t0     [  3, 1, 0, 0 ]   4
        //   t1     [  1, 2, 1, 0 ]   4
        //   t2     [  0, 0, 2, 0 ]   2
        //   t3     [  0, 0, 0, 0 ]   0
        //   predicted  4  3  3  0   total 10, correct 3 + 2 + 2 = 7
        let (truth, probs) = samples_of(&[&[3, 1, 0, 0], &[1, 2, 1, 0], &[0, 0, 2, 0], &[0; 4]]);
        let m = Metrics::from_predictions(4, &truth, &probs).unwrap();
        assert_eq!(m.samples, 10);
        assert!(close(m.accuracy, 0.7));
        assert!(close(m.top1_error, 0.3));

        // Class 0: P = 3/4, R = 3/4, F1 = 3/4.
        // Class 1: P = 2/3, R = 2/4, F1 = 2 (2/3)(1/2) / (2/3 + 1/2) = (2/3) / (7/6) = 4/7.
        // Class 2: P = 2/3, R = 2/2, F1 = 2 (2/3)(1) / (5/3) = 4/5.
        // Class 3: no support, never predicted: all 0 (zero_division = 0).
        let expected = [(0.75, 0.75, 0.75, 4), (2.0 / 3.0, 0.5, 4.0 / 7.0, 4)];
        for (class, (p, r, f, s)) in expected.into_iter().enumerate() {
            let c = m.per_class[class];
            assert!(close(c.precision, p) && close(c.recall, r) && close(c.f1, f), "{c:?}");
            assert_eq!(c.support, s);
        }
        let c2 = m.per_class[2];
        assert!(close(c2.precision, 2.0 / 3.0) && close(c2.recall, 1.0) && close(c2.f1, 0.8));
        let c3 = m.per_class[3];
        assert_eq!((c3.precision, c3.recall, c3.f1, c3.support), (0.0, 0.0, 0.0, 0));

        // Macro over the 3 classes with support:
        //   P = (3/4 + 2/3 + 2/3) / 3 = (9 + 8 + 8) / 36 = 25/36
        //   R = (3/4 + 1/2 + 1) / 3 = (9/4) / 3 = 3/4
        //   F1 = (3/4 + 4/7 + 4/5) / 3 = (105 + 80 + 112) / 420 = 297/420 = 99/140
        assert_eq!(m.classes_with_support, 3);
        assert!(close(m.macro_precision, 25.0 / 36.0));
        assert!(close(m.macro_recall, 0.75));
        assert!(close(m.macro_f1, 99.0 / 140.0));

        // Weighted by support 4, 4, 2 of 10:
        //   P = (4 * 3/4 + 4 * 2/3 + 2 * 2/3) / 10 = (3 + 8/3 + 4/3) / 10 = 7/10
        //   R = (4 * 3/4 + 4 * 1/2 + 2 * 1) / 10 = 7/10 (always the accuracy)
        //   F1 = (4 * 3/4 + 4 * 4/7 + 2 * 4/5) / 10 = (3 + 16/7 + 8/5) / 10
        //      = ((105 + 80 + 56) / 35) / 10 = 241/350
        assert!(close(m.weighted_precision, 0.7));
        assert!(close(m.weighted_recall, 0.7));
        assert!(close(m.weighted_f1, 241.0 / 350.0));

        // Four classes: k = 4, every true class is in the top 4.
        assert_eq!(m.top_k, 4);
        assert!(close(m.top5_error, 0.0));

        // The confusion matrix holds the same counts.
        let confusion = Confusion::from_predictions(4, &truth, &probs).unwrap();
        assert_eq!(confusion.get(1, 2), 1);
        assert_eq!(confusion.get(0, 1), 1);
        assert_eq!(confusion.total(), 10);
        assert_eq!(confusion.rows()[1], vec![1, 2, 1, 0]);
    }

    #[test]
    fn a_predicted_class_without_support_is_left_out_of_the_macro_means() {
        // t0 [1, 1], t1 [0, 0]: class 1 predicted once, never true.
        // Class 0: P = 1/1, R = 1/2, F1 = 2 (1)(1/2) / (3/2) = 2/3. Class 1: P = 0/1 = 0.
        // Macro over class 0 only; weighted = class 0's values (all the support).
        let (truth, probs) = samples_of(&[&[1, 1], &[0, 0]]);
        let m = Metrics::from_predictions(2, &truth, &probs).unwrap();
        assert_eq!(m.classes_with_support, 1);
        assert!(close(m.macro_precision, 1.0));
        assert!(close(m.macro_recall, 0.5));
        assert!(close(m.macro_f1, 2.0 / 3.0));
        assert!(close(m.weighted_f1, 2.0 / 3.0));
        assert_eq!(m.per_class[1].predicted, 1);
        assert!(close(m.per_class[1].precision, 0.0));
    }

    #[test]
    fn top5_with_ties() {
        // Seven classes, k = 5. Ties rank the lower class index first, as the plugin does.
        let uniform = vec![1.0 / 7.0; 7];
        // Equal rows: class 0 is predicted; class 4 has 0..3 before it (4 < 5): hit;
        // class 5 has 0..4 before it (5): miss.
        let mut probs = Vec::new();
        let mut truth = Vec::new();
        for t in [0, 4, 5] {
            truth.push(t);
            probs.extend(&uniform);
        }
        // The truth (6) tied with classes 0, 1, 3 and below class 2 (rows need not sum to 1:
        // only the order matters). Before 6: class 2 (higher) and 0, 1, 3 (tied, lower
        // index): 4 < 5, a hit.
        truth.push(6);
        probs.extend([0.1, 0.1, 0.3, 0.1, 0.05, 0.05, 0.1]);
        // The truth (4) tied with 0, 1, 2, 3 and below 5 and 6: 6 before it, a miss.
        truth.push(4);
        probs.extend([0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2]);
        // A NaN for the truth (3) never ranks: a miss; NaN elsewhere never ranks either.
        truth.push(3);
        probs.extend([f32::NAN, 0.2, 0.1, f32::NAN, 0.0, 0.0, 0.0]);

        let m = Metrics::from_predictions(7, &truth, &probs).unwrap();
        assert_eq!(m.top_k, 5);
        // Top-1: only the first sample (truth 0, uniform) is right: 1/6 accuracy.
        assert!(close(m.accuracy, 1.0 / 6.0));
        // Top-5 misses: the uniform row for 5, the second 4, the NaN row: 3/6.
        assert!(close(m.top5_error, 0.5));
        assert_eq!(predicted_class(&[f32::NAN, 0.2, 0.1, f32::NAN]), 1);
        assert_eq!(predicted_class(&[f32::NAN; 3]), 0);
    }

    #[test]
    fn empty_input() {
        let m = Metrics::from_predictions(3, &[], &[]).unwrap();
        assert_eq!(m.samples, 0);
        assert_eq!(m.per_class.len(), 3);
        assert_eq!(m.classes_with_support, 0);
        for value in [m.accuracy, m.macro_f1, m.weighted_f1, m.top1_error, m.top5_error] {
            assert_eq!(value, 0.0);
        }
        assert_eq!(Confusion::new(3).total(), 0);
        // Serialises (no NaN that JSON could not hold).
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("\"samples\":0"));
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(Metrics::from_predictions(0, &[], &[]).is_err());
        assert!(Metrics::from_predictions(2, &[0], &[0.5]).is_err());
        assert!(Metrics::from_predictions(2, &[2], &[0.5, 0.5]).is_err());
        assert!(Confusion::new(2).add(0, 2).is_err());
        assert_eq!(Confusion::new(2).get(5, 0), 0);
    }
}
