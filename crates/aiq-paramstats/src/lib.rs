//! Parameter statistics during training, after Salit, *Improving Neural Networks Through
//! Optimization Techniques of Parameter Statistics* (seeds/004): for every layer and every
//! epoch, the variance, the maximum magnitude and the fraction below a threshold of its
//! weights, its activations and its gradients; the fraction of its neurons that never fire;
//! its parameter count. `aiq-report` then asks which of them track aIQ and test accuracy
//! across a sweep, with the correlations in [`pearson`] and [`spearman`].
//!
//! Choices where the paper is silent, fixed here once:
//! - *maximum* is the largest magnitude `max |x|` (a weight of −3 is as extreme as one of 3);
//! - *below a threshold* counts `|x| < threshold`, default [`DEFAULT_THRESHOLD`] (1e-3);
//! - a neuron *fires* when its output is `> 0` (the state rule of the aIQ paper), and *never
//!   fires* when it fired for no input of the epoch;
//! - variance is the population variance (divide by n), accumulated in `f64`.
//!
//! Accumulators are streaming and mergeable, so statistics of a whole epoch are gathered batch
//! by batch, and per-thread partial results merge in a fixed order (bit-identical whatever the
//! thread count).
//!
//! ```
//! use aiq_paramstats::Accumulator;
//! let mut acc = Accumulator::new(0.5);
//! acc.add_slice(&[1.0, -3.0, 0.25, 2.0]);
//! let s = acc.summary();
//! assert_eq!((s.count, s.max_abs, s.below_threshold), (4, 3.0, 0.25));
//! assert!((s.variance - 3.51171875).abs() < 1e-12);
//! ```

use serde::{Deserialize, Serialize};

/// The threshold under which a magnitude counts as "below threshold" unless told otherwise.
pub const DEFAULT_THRESHOLD: f64 = 1e-3;

/// Variance, largest magnitude and fraction below the threshold of a set of values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub variance: f64,
    pub max_abs: f64,
    /// Fraction of the values with `|x| < threshold`.
    pub below_threshold: f64,
}

/// A streaming, mergeable accumulator of [`Summary`] (Chan et al.'s pairwise update, so
/// merging partial accumulators is as exact as one pass).
#[derive(Debug, Clone, PartialEq)]
pub struct Accumulator {
    threshold: f64,
    count: u64,
    mean: f64,
    m2: f64,
    max_abs: f64,
    below: u64,
}

impl Accumulator {
    pub fn new(threshold: f64) -> Self {
        Accumulator {
            threshold,
            count: 0,
            mean: 0.0,
            m2: 0.0,
            max_abs: 0.0,
            below: 0,
        }
    }

    /// Adds a block of values: summed locally first, then merged, which is both faster and
    /// more accurate than one update per value.
    pub fn add_slice(&mut self, xs: &[f32]) {
        if xs.is_empty() {
            return;
        }
        let n = xs.len() as f64;
        let mut sum = 0.0f64;
        let mut max_abs = 0.0f64;
        let mut below = 0u64;
        for &x in xs {
            let x = f64::from(x);
            sum += x;
            max_abs = max_abs.max(x.abs());
            below += u64::from(x.abs() < self.threshold);
        }
        let mean = sum / n;
        let m2 = xs
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>();
        self.merge(&Accumulator {
            threshold: self.threshold,
            count: xs.len() as u64,
            mean,
            m2,
            max_abs,
            below,
        });
    }

    /// Merges another accumulator (with the same threshold) into this one.
    pub fn merge(&mut self, other: &Accumulator) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = Accumulator {
                threshold: self.threshold,
                ..other.clone()
            };
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        self.mean += delta * nb / n;
        self.m2 += other.m2 + delta * delta * na * nb / n;
        self.count += other.count;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.below += other.below;
    }

    pub fn summary(&self) -> Summary {
        let n = self.count.max(1) as f64;
        Summary {
            count: self.count,
            mean: self.mean,
            variance: self.m2 / n,
            max_abs: self.max_abs,
            below_threshold: self.below as f64 / n,
        }
    }
}

/// Which neurons of a layer fired (output `> 0`) for at least one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireTracker {
    fired: Vec<bool>,
}

impl FireTracker {
    pub fn new(neurons: usize) -> Self {
        FireTracker {
            fired: vec![false; neurons],
        }
    }

    /// Records a row-major block of activations, one row per observed state (`neurons`
    /// values each).
    pub fn add_rows(&mut self, acts: &[f32]) {
        let neurons = self.fired.len();
        if neurons == 0 {
            return;
        }
        for row in acts.chunks_exact(neurons) {
            for (f, &x) in self.fired.iter_mut().zip(row) {
                *f |= x > 0.0;
            }
        }
    }

    pub fn merge(&mut self, other: &FireTracker) {
        for (a, &b) in self.fired.iter_mut().zip(&other.fired) {
            *a |= b;
        }
    }

    /// Fraction of the neurons that never fired.
    pub fn never_fire_fraction(&self) -> f64 {
        if self.fired.is_empty() {
            return 0.0;
        }
        self.fired.iter().filter(|&&f| !f).count() as f64 / self.fired.len() as f64
    }
}

/// One layer's statistics for one epoch, as written into `train --log` lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerStats {
    pub name: String,
    pub parameters: usize,
    pub weights: Summary,
    pub activations: Summary,
    pub gradients: Summary,
    pub never_fire: f64,
}

/// Pearson's correlation of two equally long series; `None` when either is constant or they
/// hold fewer than two pairs.
pub fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() || x.len() < 2 {
        return None;
    }
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// Spearman's rank correlation (Pearson's on average ranks, so ties are handled).
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    if x.len() != y.len() {
        return None;
    }
    pearson(&ranks(x), &ranks(y))
}

/// Average ranks (1-based), ties sharing the mean of their positions.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut out = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_by_hand() {
        // Values 1, -3, 0.25, 2: mean 0.0625; squared deviations 0.87890625, 9.37890625,
        // 0.03515625, 3.75390625, sum 14.046875, population variance 3.51171875.
        let mut acc = Accumulator::new(0.5);
        acc.add_slice(&[1.0, -3.0, 0.25, 2.0]);
        let s = acc.summary();
        assert_eq!(s.count, 4);
        assert!((s.mean - 0.0625).abs() < 1e-15);
        assert!((s.variance - 3.51171875).abs() < 1e-12, "{}", s.variance);
        assert_eq!(s.max_abs, 3.0);
        assert_eq!(s.below_threshold, 0.25); // only 0.25 has |x| < 0.5
    }

    #[test]
    fn merged_blocks_equal_one_pass() {
        let xs: Vec<f32> = (0..1000)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 5.0)
            .collect();
        let mut whole = Accumulator::new(0.1);
        whole.add_slice(&xs);
        let mut parts = Accumulator::new(0.1);
        for chunk in xs.chunks(77) {
            let mut p = Accumulator::new(0.1);
            p.add_slice(chunk);
            parts.merge(&p);
        }
        let (a, b) = (whole.summary(), parts.summary());
        assert_eq!(
            (a.count, a.max_abs, a.below_threshold),
            (b.count, b.max_abs, b.below_threshold)
        );
        assert!((a.mean - b.mean).abs() < 1e-12 && (a.variance - b.variance).abs() < 1e-10);
    }

    #[test]
    fn empty_accumulator_is_zero() {
        let s = Accumulator::new(DEFAULT_THRESHOLD).summary();
        assert_eq!(
            (s.count, s.variance, s.max_abs, s.below_threshold),
            (0, 0.0, 0.0, 0.0)
        );
    }

    #[test]
    fn never_firing_neurons() {
        // 3 neurons, 2 inputs: neuron 0 fires once, neuron 1 is 0 or -0 (off), neuron 2 NaN/-1.
        let mut t = FireTracker::new(3);
        t.add_rows(&[0.5, 0.0, f32::NAN, -1.0, -0.0, -1.0]);
        assert!((t.never_fire_fraction() - 2.0 / 3.0).abs() < 1e-15);
        let mut other = FireTracker::new(3);
        other.add_rows(&[0.0, 0.0, 1e-30]);
        t.merge(&other);
        assert!((t.never_fire_fraction() - 1.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn correlations_by_hand() {
        // y = 2x + 1 exactly: r = 1; reversed: r = -1.
        let x = [1.0, 2.0, 3.0, 4.0];
        assert!((pearson(&x, &[3.0, 5.0, 7.0, 9.0]).unwrap() - 1.0).abs() < 1e-15);
        assert!((pearson(&x, &[9.0, 7.0, 5.0, 3.0]).unwrap() + 1.0).abs() < 1e-15);
        // x = 1,2,3 and y = 1,3,2: sxy = (-1)(-1) + 0 + (1)(0) = 1, sxx = syy = 2, r = 0.5.
        assert!((pearson(&[1.0, 2.0, 3.0], &[1.0, 3.0, 2.0]).unwrap() - 0.5).abs() < 1e-15);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let y = [1.0, 8.0, 27.0, 64.0];
        assert!((spearman(&x, &y).unwrap() - 1.0).abs() < 1e-15);
        assert!(pearson(&x, &y).unwrap() < 0.99);
        // Ties take average ranks: ranks of [1, 1, 2] are [1.5, 1.5, 3].
        assert_eq!(ranks(&[1.0, 1.0, 2.0]), vec![1.5, 1.5, 3.0]);
        assert_eq!(pearson(&x, &[1.0; 4]), None);
        assert_eq!(pearson(&[1.0], &[1.0]), None);
    }

    #[test]
    fn layer_stats_serialize_with_the_documented_names() {
        let mut acc = Accumulator::new(DEFAULT_THRESHOLD);
        acc.add_slice(&[1.0]);
        let s = LayerStats {
            name: "dense1".into(),
            parameters: 7,
            weights: acc.summary(),
            activations: acc.summary(),
            gradients: acc.summary(),
            never_fire: 0.0,
        };
        let json = serde_json::to_value(&s).unwrap();
        for key in ["variance", "max_abs", "below_threshold"] {
            assert!(json["weights"][key].is_number(), "{key}");
        }
        assert_eq!(json["parameters"], 7);
    }
}
