//! The paper's measures, as pure functions of counts and efficiencies.
//!
//! Entropies are sums over a layer's count profile, by ascending count, in `f64`: a result
//! depends on the counts alone, so it is the same on every run, thread count and route.

use aiq_count::count_profile;

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
    shannon_bits_of_profile(&count_profile(counts))
}

/// Shannon entropy in bits from a layer's count profile (`(count, states)` pairs by
/// ascending count, [`aiq_count::count_profile`]): the states seen `c` times of `n` add
/// `states · (-p log2 p)` with `p = c / n`. One term per different count, summed by
/// ascending count: the bits follow from the counts alone, whatever their order and
/// however they were read, and a counts file's header gives them without its records.
pub fn shannon_bits_of_profile(profile: &[(u64, u64)]) -> f64 {
    let Some(n) = profile_total(profile) else {
        return 0.0;
    };
    // -0.0: where `f64`'s `Sum` starts, so a single state's -0.0 term gives 0.
    let h = profile
        .iter()
        .fold(-0.0, |h, &(c, states)| h + states as f64 * term(c, n));
    h.max(0.0)
}

/// The observations a profile describes, as `f64`; `None` when there are none.
fn profile_total(profile: &[(u64, u64)]) -> Option<f64> {
    let n: u128 = profile
        .iter()
        .map(|&(c, states)| u128::from(c) * u128::from(states))
        .sum();
    (n > 0).then_some(n as f64)
}

/// One state's Shannon term, `-p log2 p` with `p = c / n`.
fn term(c: u64, n: f64) -> f64 {
    let p = c as f64 / n;
    -p * p.log2()
}

/// Rényi entropy of order `alpha` in bits: `log2(Σ p^α) / (1 - α)`; order 0 is the log of the
/// number of distinct states, order 1 is Shannon's, order infinity is `-log2 max p`.
pub fn renyi_bits(counts: &[u64], alpha: f64) -> f64 {
    let profile = count_profile(counts);
    let Some(n) = profile_total(&profile) else {
        return 0.0;
    };
    if alpha == 0.0 {
        (profile
            .iter()
            .map(|&(_, states)| states as f64)
            .sum::<f64>())
        .log2()
    } else if alpha == 1.0 {
        shannon_bits_of_profile(&profile)
    } else if alpha.is_infinite() {
        let max = profile.last().map_or(0, |&(c, _)| c) as f64;
        -(max / n).log2()
    } else {
        let s: f64 = profile
            .iter()
            .map(|&(c, states)| states as f64 * (c as f64 / n).powf(alpha))
            .sum();
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
    fn profile_sums_match_plain_sums_and_ignore_order() {
        // Counts small and large (past the profile's tally), some zero, in no order.
        let counts: Vec<u64> = (0..30_000u64).map(|i| (i * i * 7919) % 3001).collect();
        let n = counts.iter().sum::<u64>() as f64;
        let h = shannon_bits(&counts);
        let plain: f64 = counts
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| -(c as f64 / n) * (c as f64 / n).log2())
            .sum();
        assert!((h - plain).abs() < 1e-12 * plain, "{h} {plain}");
        let mut shuffled = counts.clone();
        shuffled.reverse();
        shuffled.rotate_left(7);
        assert_eq!(shannon_bits(&shuffled).to_bits(), h.to_bits());
        assert_eq!(
            shannon_bits_of_profile(&count_profile(&counts)).to_bits(),
            h.to_bits()
        );
        let r2: f64 = counts
            .iter()
            .map(|&c| (c as f64 / n).powi(2))
            .sum::<f64>()
            .log2();
        assert!((renyi_bits(&counts, 2.0) + r2).abs() < 1e-12 * r2.abs());
        assert_eq!(shannon_bits_of_profile(&[]), 0.0);
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
