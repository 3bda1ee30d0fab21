//! Dropout with rate 0.5 (the paper's), inverted as in Keras: kept values are doubled in
//! training, and the layer is the identity at inference.
//!
//! With rate exactly one half, a mask is one random bit per value, 64 values per `u64`
//! drawn from the shard's ChaCha stream: 32 times less randomness than a float per value.

use rand::RngCore;

/// Scale of the kept values: `1 / (1 − 0.5)`.
const KEEP_SCALE: f32 = 2.0;

/// Fills `bits` (at least `len.div_ceil(64)` words) with a fresh mask for `len` values.
pub(crate) fn draw_mask(rng: &mut impl RngCore, len: usize, bits: &mut [u64]) {
    for w in &mut bits[..len.div_ceil(64)] {
        *w = rng.next_u64();
    }
}

#[inline(always)]
fn kept(bits: &[u64], i: usize) -> bool {
    (bits[i / 64] >> (i % 64)) & 1 == 1
}

/// `y = 2·x` where the mask bit is set, `0` elsewhere.
pub(crate) fn forward(x: &[f32], bits: &[u64], y: &mut [f32]) {
    for (i, (y, &x)) in y.iter_mut().zip(x).enumerate() {
        *y = if kept(bits, i) { x * KEEP_SCALE } else { 0.0 };
    }
}

/// `dx = 2·dy` where the mask bit is set, `0` elsewhere.
pub(crate) fn backward(dy: &[f32], bits: &[u64], dx: &mut [f32]) {
    forward(dy, bits, dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;

    #[test]
    fn keeps_about_half_and_scales() {
        let n: usize = 10_000;
        let mut bits = vec![0u64; n.div_ceil(64)];
        draw_mask(&mut rng(7), n, &mut bits);
        let x = vec![1.5f32; n];
        let mut y = vec![0.0; n];
        forward(&x, &bits, &mut y);
        let kept = y.iter().filter(|&&v| v == 3.0).count();
        assert_eq!(kept + y.iter().filter(|&&v| v == 0.0).count(), n);
        assert!((4700..5300).contains(&kept), "{kept}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let n = 50;
        let mut g = rng(8);
        let mut bits = vec![0u64; 1];
        draw_mask(&mut g, n, &mut bits);
        let mut x = uniform(&mut g, n, -1.0, 1.0);
        let r = uniform(&mut g, n, -1.0, 1.0);
        let mut dx = vec![0.0; n];
        backward(&r, &bits, &mut dx);
        let mut y = vec![0.0; n];
        grad_check("dropout dx", &mut x, &dx, 1, 1e-2, |x| {
            forward(x, &bits, &mut y);
            dot(&r, &y)
        });
    }
}
