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
        *y = elu(x);
    }
}

/// One ELU, branch-free so that loops over it vectorize.
#[inline(always)]
fn elu(x: f32) -> f32 {
    let neg = (exp_nonpositive(x.min(0.0)) - 1.0).min(0.0);
    // NaN stays NaN (a diverged network must not look healthy).
    if x > 0.0 || x.is_nan() {
        x
    } else {
        neg
    }
}

/// `y = elu(y)` in place: [`forward`]'s arithmetic.
#[multiversion(targets("x86_64+avx2"))]
pub(crate) fn forward_in_place(y: &mut [f32]) {
    // Adding +0 changes no bits (the ELU never returns −0, and NaN stays NaN), but the value
    // stored is then not the value loaded on the positive lanes, so the store stays a plain
    // vector store: LLVM made it a masked store, microcoded on AMD (~30 cycles per 8
    // values). Opaque, or LLVM folds the addition away on those lanes.
    let zero = std::hint::black_box(0.0f32);
    for y in y.iter_mut() {
        *y = elu(*y) + zero;
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

    /// Pooling the ELU's input then applying it gives the bits of pooling its output
    /// (`Workspace::pool_then_elu`) needs a non-decreasing ELU. The whole negative range
    /// was checked once, every `f32` from −∞ to −0 in order (2.1·10⁹ values, 24 s in
    /// release); this checks every value within 2¹⁵ ulps of each point where the range
    /// reduction's `n` steps (where the two polynomial pieces meet) and every 4099th value
    /// elsewhere.
    #[test]
    fn elu_is_non_decreasing() {
        let check = |xs: &mut dyn Iterator<Item = f32>| {
            let mut prev = (f32::NEG_INFINITY, elu(f32::NEG_INFINITY));
            for x in xs {
                let y = elu(x);
                assert!(y >= prev.1, "elu({}) = {} > elu({x}) = {y}", prev.0, prev.1);
                prev = (x, y);
            }
        };
        for k in 0..=126 {
            let mid = -((k as f32) + 0.5) * std::f32::consts::LN_2;
            let b = mid.to_bits();
            check(&mut (b - (1 << 15)..=b + (1 << 15)).rev().map(f32::from_bits));
        }
        check(
            &mut (0x8000_0000u32..=0xFF80_0000)
                .rev()
                .step_by(4099)
                .map(f32::from_bits),
        );
        assert_eq!(elu(-0.0).to_bits(), 0.0f32.to_bits());
    }

    /// ELU commutes with 2×2 max pooling, to the bit: ties made by the ELU's flat tail,
    /// NaN (first cell or not), ±0, tiny and huge values.
    #[test]
    fn pooling_then_elu_gives_the_bits_of_elu_then_pooling() {
        let special = [
            f32::NAN,
            -0.0,
            0.0,
            -1e-30,
            1e-30,
            -200.0,
            -150.0,
            -88.0,
            -87.0,
            3.0,
            -3.0,
        ];
        let mut g = rng(9);
        let (n, h, w, c) = (3, 6, 5, 4);
        let mut x = uniform(&mut g, n * h * w * c, -4.0, 4.0);
        for (i, v) in x.iter_mut().enumerate() {
            if i % 3 == 0 {
                *v = special[(i / 3) % special.len()];
            }
        }
        let out = n * (h / 2) * (w / 2) * c;
        let (mut arg, mut e) = (vec![0u8; out], vec![0.0; x.len()]);
        forward(&x, &mut e);
        let mut want = vec![0.0; out];
        crate::layers::pool::forward(&e, n, h, w, c, &mut want, Some(&mut arg));
        let mut got = vec![0.0; out];
        crate::layers::pool::forward(&x, n, h, w, c, &mut got, None);
        forward_in_place(&mut got);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want));
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
