//! The paper's measures: Shannon and Rényi entropy of a layer's state counts, neural
//! efficiency (entropy / neurons) with the ceiling the sample size allows, network efficiency
//! (geometric mean over layers) and aIQ = (P^β · η_N)^(1/(β+1)); plus the [`Scorecard`] that
//! `score-aiq` prints.
//!
//! ```
//! use aiq_metrics::{aiq, efficiency, network_efficiency, shannon_bits};
//! let h = shannon_bits(&[2, 1, 1]); // p = 1/2, 1/4, 1/4
//! assert_eq!(h, 1.5);
//! assert_eq!(efficiency(h, 3), 0.5);
//! assert_eq!(network_efficiency(&[0.5, 0.125]).unwrap(), 0.25);
//! assert!((aiq(0.9, 0.5, 2.0).unwrap() - 0.739863622299141).abs() < 1e-12);
//! ```

// Tests may unwrap: a panic there is a test failure with its message.

mod card;
mod measures;

pub use card::{LayerScore, ScoreError, Scorecard};
pub use measures::{
    aiq, efficiency, efficiency_ceiling, network_efficiency, renyi_bits, shannon_bits,
    shannon_bits_of_profile, MetricsError,
};
