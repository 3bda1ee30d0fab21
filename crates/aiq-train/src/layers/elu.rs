//! ELU activation (alpha = 1): `y = x` for `x > 0`, `e^x − 1` otherwise.
//!
//! The exponential is a branch-free Cephes-style polynomial that the compiler vectorizes:
//! `f32::exp_m1` is a library call per element, and ELU runs on every hidden activation of
//! every image in every epoch. The result is clamped to `≤ 0` on the negative branch, so
//! the sign of the output (the neuron's state) is exactly the sign of `x`.

use multiversion::multiversion;

/// `exp(x)` for `x ≤ 0` (accurate to a few ulp; below −87 it returns ~0).
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to the nearest integer in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let z = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * z + r + 1.0;
    // n is in [-126, 0]: build 2^n from the exponent bits.
    let bits = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let scale = f32::from_bits(((bits + 127) << 23) as u32);
    e * scale
}

/// `y = elu(x)`, elementwise. Compiled for AVX2 too (picked at run time): the same IEEE
/// operations eight lanes at a time, so the same bits.
#[multiversion(targets("x86_64+avx2"))]
pub(crate) fn forward(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        let neg = (exp_nonpositive(x.min(0.0)) - 1.0).min(0.0);
        // NaN stays NaN (a diverged network must not look healthy).
        *y = if x > 0.0 || x.is_nan() { x } else { neg };
    }
}

/// `dx = dy · elu'(x)`, from the output: `1` where `y > 0`, `y + 1 = e^x` elsewhere.
#[multiversion(targets("x86_64+avx2"))]
pub(crate) fn backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &y), &dy) in dx.iter_mut().zip(y).zip(dy) {
        *dx = if y > 0.0 { dy } else { dy * (y + 1.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;

    #[test]
    fn matches_libm_and_keeps_the_sign() {
        let mut worst = 0.0f32;
        for i in 0..200_000 {
            let x = -90.0 * (i as f32 / 200_000.0);
            let mut y = [0.0];
            forward(&[x], &mut y);
            let want = x.exp_m1();
            worst = worst.max((y[0] - want).abs());
            assert!(y[0] <= 0.0, "elu({x}) = {} must not be positive", y[0]);
        }
        assert!(worst < 2e-7, "worst abs error {worst}");
        let mut y = [0.0; 4];
        forward(&[0.0, -0.0, 1e-30, -1e-30], &mut y);
        assert_eq!(y[0], 0.0);
        assert!(y[2] > 0.0 && y[3] <= 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mut g = rng(2);
        // Away from 0, where the central difference straddles the kink of the 2nd derivative.
        let mut x: Vec<f32> = uniform(&mut g, 40, 0.05, 2.0)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { v } else { -v })
            .collect();
        let r = uniform(&mut g, 40, -1.0, 1.0);
        let mut y = vec![0.0; 40];
        forward(&x, &mut y);
        let mut dx = vec![0.0; 40];
        backward(&y, &r, &mut dx);
        grad_check("elu dx", &mut x, &dx, 1, 1e-2, |x| {
            forward(x, &mut y);
            dot(&r, &y)
        });
    }
}
