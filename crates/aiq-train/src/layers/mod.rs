//! The layers, each a set of free functions on row-major `f32` slices: forward, backward and
//! a finite-difference gradient check side by side in one file per layer.
//!
//! Activations are stored NHWC-like: one row per (image, y, x) position, channels contiguous,
//! so a convolution's output *is* the `(inputs × positions, neurons)` state matrix and a
//! dense layer's input is the same memory read as `(images, positions·channels)`.

/// Lanes of one vector (AVX's eight `f32`), the width the kernels arrange their loops for.
pub(crate) const L: usize = 8;

pub(crate) mod batchnorm;
pub(crate) mod conv;
pub(crate) mod dense;
pub(crate) mod direct;
pub(crate) mod dropout;
pub(crate) mod elu;
pub(crate) mod loss;
pub(crate) mod pool;

/// Helpers for the gradient checks of every layer.
#[cfg(test)]
pub(crate) mod check {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    pub(crate) fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    pub(crate) fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(lo..hi)).collect()
    }

    /// Direct convolution, the definition: the bias, then one multiply-add per kernel tap in
    /// the image's order (rows, then columns, then input channels), fused when `fma` (as the
    /// kernels' AVX2 + FMA clones do), so a kernel that keeps this order matches it bit for
    /// bit.
    pub(crate) fn conv_naive(
        x: &[f32],
        w: &[f32],
        b: &[f32],
        n: usize,
        s: &super::conv::ConvShape,
        fma: bool,
    ) -> Vec<f32> {
        let mut y = vec![0.0; n * s.out_size()];
        for i in 0..n {
            for oy in 0..s.oh() {
                for ox in 0..s.ow() {
                    for co in 0..s.cout {
                        let mut acc = b[co];
                        for dy in 0..s.k {
                            for dx in 0..s.k {
                                for ci in 0..s.cin {
                                    let xv = x[i * s.in_size()
                                        + ((oy + dy) * s.w + ox + dx) * s.cin
                                        + ci];
                                    let wv = w[((dy * s.k + dx) * s.cin + ci) * s.cout + co];
                                    acc = if fma {
                                        xv.mul_add(wv, acc)
                                    } else {
                                        xv * wv + acc
                                    };
                                }
                            }
                        }
                        y[i * s.out_size() + (oy * s.ow() + ox) * s.cout + co] = acc;
                    }
                }
            }
        }
        y
    }

    /// `Σ r·y` in f64: a scalar loss whose gradient with respect to `y` is `r`.
    pub(crate) fn dot(r: &[f32], y: &[f32]) -> f64 {
        r.iter()
            .zip(y)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    }

    /// Checks `analytic[i]` against central differences of `f` at every (or every
    /// `stride`-th) coordinate of `x`.
    pub(crate) fn grad_check(
        what: &str,
        x: &mut [f32],
        analytic: &[f32],
        stride: usize,
        eps: f32,
        mut f: impl FnMut(&[f32]) -> f64,
    ) {
        assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
        let mut checked = 0;
        for i in (0..x.len()).step_by(stride.max(1)) {
            let keep = x[i];
            x[i] = keep + eps;
            let up = f(x);
            x[i] = keep - eps;
            let down = f(x);
            x[i] = keep;
            let numeric = (up - down) / (2.0 * f64::from(eps));
            let a = f64::from(analytic[i]);
            let tol = 2e-3 + 1e-2 * a.abs().max(numeric.abs());
            assert!(
                (a - numeric).abs() <= tol,
                "{what}[{i}]: analytic {a} vs numeric {numeric}"
            );
            checked += 1;
        }
        assert!(checked > 0, "{what}: nothing checked");
    }
}
