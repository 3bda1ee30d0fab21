//! The paper's measures, as pure functions of counts and efficiencies.
//!
//! Every sum runs in an order fixed by the counts' positions (the counts format keeps them
//! sorted by state value), in `f64`, so a result is the same on every run and thread count.

/// A measure asked of values outside its domain.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("{what} must be in [0, 1], got {value}")]
    OutOfUnit { what: &'static str, value: f64 },
    #[error("beta must be a finite number > 0, got {0}")]
    Beta(f64),
    #[error("no layers to take the network efficiency of")]
    NoLayers,
}

fn unit(what: &'static str, value: f64) -> Result<f64, MetricsError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(MetricsError::OutOfUnit { what, value })
    }
}

/// Shannon entropy in bits of the distribution the counts describe: `-Σ p log2 p`.
/// Zero for no observations or a single state.
pub fn shannon_bits(counts: &[u64]) -> f64 {
    let mut h = ShannonSum::new(counts.iter().sum(), counts.len());
    h.add_all(counts);
    h.bits()
}

/// Shannon entropy summed one count at a time in the order given, so that counts streamed
/// from a file need not be held: the same terms in the same order as [`shannon_bits`] of
/// the same counts, hence the same bits.
///
/// The terms go round [`LANES`] partial sums by their position in the whole sequence, added
/// together at the end: four additions in flight instead of one chain of dependent ones,
/// and still the same bits however the counts are split into blocks.
#[derive(Debug, Clone)]
pub struct ShannonSum {
    n: f64,
    small: Vec<f64>,
    lanes: [f64; LANES],
    /// The lane of the next term.
    next: usize,
}

/// Partial sums of [`ShannonSum`].
const LANES: usize = 4;

impl ShannonSum {
    /// For `distinct` counts that sum to `total`.
    pub fn new(total: u64, distinct: usize) -> Self {
        let n = total as f64;
        // Most states of a wide layer are seen a few times: their terms come from a table
        // of the small counts, computed by the same expression (so the same bits), rather
        // than one log2 per state.
        let small = if total > 0 && distinct > 4 * SMALL_COUNTS {
            (0..SMALL_COUNTS as u64).map(|c| term(c, n)).collect()
        } else {
            Vec::new()
        };
        // -0.0: where `f64`'s `Sum` starts, and what a zero count adds.
        ShannonSum {
            n,
            small,
            lanes: [-0.0; LANES],
            next: 0,
        }
    }

    /// Adds the terms of `counts`, in order (zero counts add nothing); blocks of counts
    /// added one after another give the same bits as all of them at once.
    pub fn add_all(&mut self, counts: &[u64]) {
        let t = |c: u64| match self.small.get(c as usize) {
            Some(&t) => t,
            None => term(c, self.n),
        };
        let mut lanes = self.lanes;
        let head = ((LANES - self.next) % LANES).min(counts.len());
        let (head, rest) = counts.split_at(head);
        for &c in head {
            lanes[self.next] += t(c);
            self.next = (self.next + 1) % LANES;
        }
        let mut quads = rest.chunks_exact(LANES);
        for q in &mut quads {
            for (l, &c) in lanes.iter_mut().zip(q) {
                *l += t(c);
            }
        }
        for &c in quads.remainder() {
            lanes[self.next] += t(c);
            self.next = (self.next + 1) % LANES;
        }
        self.lanes = lanes;
    }

    /// The entropy in bits of the counts added (0 when the total is 0).
    pub fn bits(&self) -> f64 {
        let [a, b, c, d] = self.lanes;
        if self.n == 0.0 {
            0.0
        } else {
            ((a + b) + (c + d)).max(0.0)
        }
    }
}

/// One state's Shannon term, `-p log2 p` with `p = c / n`; a zero count's is -0.0, which
/// adds nothing to any sum.
fn term(c: u64, n: f64) -> f64 {
    if c == 0 {
        return -0.0;
    }
    let p = c as f64 / n;
    -p * p.log2()
}

/// Counts below this get their entropy term from a table when a layer has many states.
const SMALL_COUNTS: usize = 1024;

/// Rényi entropy of order `alpha` in bits: `log2(Σ p^α) / (1 - α)`; order 0 is the log of the
/// number of distinct states, order 1 is Shannon's, order infinity is `-log2 max p`.
pub fn renyi_bits(counts: &[u64], alpha: f64) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let n = total as f64;
    let present = counts.iter().filter(|&&c| c > 0);
    if alpha == 0.0 {
        (present.count() as f64).log2()
    } else if alpha == 1.0 {
        shannon_bits(counts)
    } else if alpha.is_infinite() {
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        -(max / n).log2()
    } else {
        let s: f64 = present.map(|&c| (c as f64 / n).powf(alpha)).sum();
        (s.log2() / (1.0 - alpha)).max(0.0)
    }
}

/// Neural efficiency: entropy divided by the layer's maximum entropy, one bit per neuron
/// (clamped to [0, 1] against rounding).
pub fn efficiency(entropy_bits: f64, neurons: u32) -> f64 {
    if neurons == 0 {
        0.0
    } else {
        (entropy_bits / f64::from(neurons)).clamp(0.0, 1.0)
    }
}

/// The largest efficiency `observations` can show: `log2(observations) / neurons`, at most 1.
/// Entropy is not capped by the sample, so a layer near its ceiling below 1 is measured by
/// the sample size rather than by the network (a 130-neuron layer seen 500 times shows at
/// most `log2(500)/130`).
pub fn efficiency_ceiling(observations: u64, neurons: u32) -> f64 {
    if observations == 0 || neurons == 0 {
        return 0.0;
    }
    ((observations as f64).log2() / f64::from(neurons)).min(1.0)
}

/// Network efficiency: the geometric mean of the layer efficiencies (zero if any is zero).
pub fn network_efficiency(efficiencies: &[f64]) -> Result<f64, MetricsError> {
    if efficiencies.is_empty() {
        return Err(MetricsError::NoLayers);
    }
    for &e in efficiencies {
        unit("a layer efficiency", e)?;
    }
    let k = efficiencies.len() as f64;
    let product: f64 = efficiencies.iter().product();
    if product == 0.0 && efficiencies.iter().all(|&e| e > 0.0) {
        // The product underflowed: take the mean of logs instead.
        let mean_ln = efficiencies.iter().map(|e| e.ln()).sum::<f64>() / k;
        return Ok(mean_ln.exp());
    }
    Ok(product.powf(1.0 / k))
}

/// aIQ: `(P^β · η_N)^(1/(β+1))`, `P` the accuracy and `η_N` the network efficiency; β weighs
/// accuracy against efficiency (the paper uses 2 and prints aIQ × 100).
pub fn aiq(accuracy: f64, network_efficiency: f64, beta: f64) -> Result<f64, MetricsError> {
    if !(beta.is_finite() && beta > 0.0) {
        return Err(MetricsError::Beta(beta));
    }
    let p = unit("accuracy", accuracy)?;
    let e = unit("network efficiency", network_efficiency)?;
    Ok((p.powf(beta) * e).powf(1.0 / (beta + 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_entropies() {
        // Uniform over 4 states: 2 bits; over 8: 3 bits.
        assert!(close(shannon_bits(&[5, 5, 5, 5]), 2.0));
        assert!(close(shannon_bits(&[1; 8]), 3.0));
        // p = (1/2, 1/4, 1/4): 1.5 bits.
        assert!(close(shannon_bits(&[2, 1, 1]), 1.5));
        // p = (3/4, 1/4): 2 - (3/4) log2 3.
        assert!(close(shannon_bits(&[3, 1]), 2.0 - 0.75 * 3f64.log2()));
        // Rényi: order 0 counts states, order 2 is -log2 Σp², order ∞ -log2 max p.
        assert!(close(renyi_bits(&[2, 1, 1], 0.0), 3f64.log2()));
        assert!(close(renyi_bits(&[2, 1, 1], 2.0), -(0.375f64).log2()));
        assert!(close(renyi_bits(&[2, 1, 1], f64::INFINITY), 1.0));
        assert!(close(renyi_bits(&[2, 1, 1], 1.0), 1.5));
        // Rényi is non-increasing in its order.
        let c = [9, 3, 3, 1, 1, 1];
        assert!(renyi_bits(&c, 0.0) >= renyi_bits(&c, 0.5));
        assert!(renyi_bits(&c, 0.5) >= shannon_bits(&c));
        assert!(shannon_bits(&c) >= renyi_bits(&c, 2.0));
    }

    #[test]
    fn tabled_terms_give_the_same_bits_as_direct_ones() {
        // Enough states for the table, counts small and large, some zero.
        let counts: Vec<u64> = (0..20_000u64).map(|i| (i * i * 7919) % 3001).collect();
        let n = counts.iter().sum::<u64>() as f64;
        // Each term straight from its count, round the lanes by position (a zero count
        // keeps its place and adds nothing).
        let mut lanes = [-0.0f64; LANES];
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                lanes[i % LANES] += -(c as f64 / n) * (c as f64 / n).log2();
            }
        }
        let direct = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
        assert!(counts.len() > 4 * SMALL_COUNTS);
        assert_eq!(shannon_bits(&counts).to_bits(), direct.to_bits());
    }

    #[test]
    fn blocks_of_any_length_give_the_same_bits() {
        let counts: Vec<u64> = (0..30_000u64).map(|i| (i * i * 7919) % 37).collect();
        let whole = shannon_bits(&counts);
        for step in [1, 3, 4, 5, 31, 32, 1000] {
            let mut h = ShannonSum::new(counts.iter().sum(), counts.len());
            // Blocks of growing, uneven lengths, so that they start in every lane.
            let mut at = 0;
            let mut len = 1;
            while at < counts.len() {
                let end = (at + len).min(counts.len());
                h.add_all(&counts[at..end]);
                at = end;
                len = len % step + 1;
            }
            assert_eq!(h.bits().to_bits(), whole.to_bits(), "step {step}");
        }
        // Against a plain sum: the lanes reorder the additions, not the terms.
        let n = counts.iter().sum::<u64>() as f64;
        let plain: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| -(c as f64 / n) * (c as f64 / n).log2())
            .sum();
        assert!((whole - plain).abs() < 1e-9 * plain);
    }

    #[test]
    fn single_state_and_all_distinct_layers() {
        assert_eq!(shannon_bits(&[1000]), 0.0);
        assert_eq!(renyi_bits(&[1000], 2.0), 0.0);
        assert_eq!(efficiency(shannon_bits(&[1000]), 4), 0.0);
        assert_eq!(shannon_bits(&[]), 0.0);
        // 500 distinct states of 130 neurons: entropy log2(500), at the sample's ceiling.
        let h = shannon_bits(&[1; 500]);
        assert!(close(h, 500f64.log2()));
        assert!(close(efficiency(h, 130), efficiency_ceiling(500, 130)));
        assert!(efficiency_ceiling(500, 130) < 0.07);
        assert_eq!(efficiency_ceiling(1 << 20, 4), 1.0);
    }

    #[test]
    fn network_efficiency_is_a_geometric_mean() {
        assert_eq!(network_efficiency(&[0.5, 0.125]).unwrap(), 0.25);
        assert_eq!(network_efficiency(&[0.5, 0.0, 0.9]).unwrap(), 0.0);
        assert!(close(network_efficiency(&[0.3]).unwrap(), 0.3));
        let tiny = network_efficiency(&[1e-200, 1e-200, 1e-200]).unwrap();
        assert!((tiny / 1e-200 - 1.0).abs() < 1e-9, "{tiny}");
        assert_eq!(network_efficiency(&[]), Err(MetricsError::NoLayers));
        assert!(network_efficiency(&[1.5]).is_err());
    }

    #[test]
    fn aiq_matches_tensorstate() {
        assert!(close(aiq(0.9, 0.5, 2.0).unwrap(), 0.739863622299141));
        // β → weight on accuracy: perfect accuracy leaves efficiency^(1/(β+1)).
        assert!(close(aiq(1.0, 0.125, 2.0).unwrap(), 0.5));
        assert!(close(aiq(0.25, 1.0, 1.0).unwrap(), 0.5));
        assert!(aiq(0.9, 0.5, 0.0).is_err());
        assert!(aiq(0.9, 0.5, f64::NAN).is_err());
        assert!(aiq(1.2, 0.5, 2.0).is_err());
    }
}
