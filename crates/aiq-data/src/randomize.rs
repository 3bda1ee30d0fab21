//! Label randomization as in the paper's §3.3 (after Zhang et al.): a fraction `f` of the
//! training labels, exactly `round(f·n)` of them chosen by seed, each replaced by a label drawn
//! uniformly from the ten classes (so about a tenth keep their old label by chance, as in the
//! paper's protocol). Only ever applied to training labels.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{DataError, CLASSES};

/// Replaces the labels at `round(fraction·n)` positions chosen by `seed` with uniform draws
/// from the classes; returns how many positions were drawn. Deterministic per seed.
pub fn randomize_labels(labels: &mut [u8], fraction: f64, seed: u64) -> Result<usize, DataError> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(DataError::Fraction(fraction));
    }
    let k = (fraction * labels.len() as f64).round() as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut chosen = sample(&mut rng, labels.len(), k).into_vec();
    // Draw labels in index order so the result does not depend on the sampler's ordering.
    chosen.sort_unstable();
    for i in chosen {
        labels[i] = rng.gen_range(0..CLASSES as u8);
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels that make every replacement visible: 255 is no class.
    fn marked(n: usize) -> Vec<u8> {
        vec![255; n]
    }

    #[test]
    fn exactly_round_f_n_are_drawn() {
        for (n, f, k) in [
            (1000, 0.25, 250),
            (7, 0.5, 4),
            (10, 0.0, 0),
            (10, 1.0, 10),
            (3, 0.5, 2),
        ] {
            let mut l = marked(n);
            assert_eq!(randomize_labels(&mut l, f, 1).unwrap(), k);
            assert_eq!(l.iter().filter(|&&x| x != 255).count(), k, "n={n} f={f}");
            assert!(l.iter().all(|&x| x == 255 || x < 10));
        }
    }

    #[test]
    fn deterministic_per_seed_and_seeds_differ() {
        let base: Vec<u8> = (0..10_000).map(|i| (i % 10) as u8).collect();
        let run = |seed| {
            let mut l = base.clone();
            randomize_labels(&mut l, 0.5, seed).unwrap();
            l
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }

    #[test]
    fn drawn_labels_are_roughly_uniform() {
        let mut l = marked(100_000);
        randomize_labels(&mut l, 1.0, 9).unwrap();
        let mut hist = [0usize; 10];
        for x in l {
            hist[usize::from(x)] += 1;
        }
        // Each class expects 10,000; 5 standard deviations is ±474.
        assert!(
            hist.iter().all(|&h| (9_500..=10_500).contains(&h)),
            "{hist:?}"
        );
    }

    #[test]
    fn fractions_outside_unit_interval_are_refused() {
        for f in [-0.1, 1.5, f64::NAN] {
            assert!(matches!(
                randomize_labels(&mut [0; 4], f, 0),
                Err(DataError::Fraction(_))
            ));
        }
    }
}
