//! Batch normalization over the channel (last) axis, as Keras defines it: in training,
//! `y = γ·(x − μ)/√(σ² + ε) + β` with the mini-batch's mean and biased variance over all
//! rows (images × positions); at inference the running statistics
//! `r ← 0.9·r + 0.1·batch` are used instead.
//!
//! A mini-batch is split over shards, so statistics are sums: each shard computes its
//! partial sums ([`partial_stats`], [`partial_grads`]), the trainer adds them in shard order
//! (in `f64`) and hands the totals back to every shard. That keeps the result independent of
//! the thread count.

/// Keras' default epsilon in the authors' code.
pub(crate) const EPSILON: f32 = 1e-5;
/// Keras' momentum of the running statistics.
pub(crate) const MOMENTUM: f32 = 0.9;

/// `out[..c] = Σ x`, `out[c..2c] = Σ x²` per channel over `rows` rows.
pub(crate) fn partial_stats(x: &[f32], rows: usize, c: usize, out: &mut [f64]) {
    let (s, q) = out[..2 * c].split_at_mut(c);
    s.fill(0.0);
    q.fill(0.0);
    for row in x[..rows * c].chunks_exact(c) {
        for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
            let v = f64::from(v);
            *s += v;
            *q += v * v;
        }
    }
}

/// Mean and `1/√(var + ε)` from the summed partials of `total` rows.
pub(crate) fn finish_stats(
    sums: &[f64],
    c: usize,
    total: usize,
    mean: &mut [f32],
    var: &mut [f32],
    inv_std: &mut [f32],
) {
    let t = total as f64;
    for j in 0..c {
        let m = sums[j] / t;
        let v = (sums[c + j] / t - m * m).max(0.0);
        mean[j] = m as f32;
        var[j] = v as f32;
        inv_std[j] = (1.0 / (v + f64::from(EPSILON)).sqrt()) as f32;
    }
}

/// `y = γ·(x − mean)·inv_std + β`; stores `x̂ = (x − mean)·inv_std` when asked (training).
#[allow(clippy::too_many_arguments)]
pub(crate) fn normalize(
    x: &[f32],
    rows: usize,
    c: usize,
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mut xhat: Option<&mut [f32]>,
    y: &mut [f32],
) {
    for (r, (xr, yr)) in x[..rows * c]
        .chunks_exact(c)
        .zip(y.chunks_exact_mut(c))
        .enumerate()
    {
        match xhat.as_deref_mut() {
            Some(xh) => {
                let hr = &mut xh[r * c..(r + 1) * c];
                for j in 0..c {
                    let h = (xr[j] - mean[j]) * inv_std[j];
                    hr[j] = h;
                    yr[j] = gamma[j] * h + beta[j];
                }
            }
            None => {
                for j in 0..c {
                    yr[j] = gamma[j] * ((xr[j] - mean[j]) * inv_std[j]) + beta[j];
                }
            }
        }
    }
}

/// Inference scale and shift from the running statistics: `y = x·scale + shift`.
pub(crate) fn inference_affine(
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + EPSILON).sqrt()).collect();
    let scale: Vec<f32> = gamma.iter().zip(&inv).map(|(g, i)| g * i).collect();
    let shift: Vec<f32> = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

/// `out[..c] = Σ dy`, `out[c..2c] = Σ dy·x̂` per channel over `rows` rows. These are also
/// the gradients of β and γ.
pub(crate) fn partial_grads(dy: &[f32], xhat: &[f32], rows: usize, c: usize, out: &mut [f64]) {
    let (s, q) = out[..2 * c].split_at_mut(c);
    s.fill(0.0);
    q.fill(0.0);
    for (dr, hr) in dy[..rows * c].chunks_exact(c).zip(xhat.chunks_exact(c)) {
        for j in 0..c {
            let d = f64::from(dr[j]);
            s[j] += d;
            q[j] += d * f64::from(hr[j]);
        }
    }
}

/// `dx = γ·inv_std/N · (N·dy − Σdy − x̂·Σ(dy·x̂))` with the batch totals.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_dx(
    dy: &[f32],
    xhat: &[f32],
    rows: usize,
    c: usize,
    gamma: &[f32],
    inv_std: &[f32],
    sum_dy: &[f32],
    sum_dy_xhat: &[f32],
    total: usize,
    dx: &mut [f32],
) {
    let t = total as f32;
    let k: Vec<f32> = gamma.iter().zip(inv_std).map(|(g, i)| g * i / t).collect();
    for ((dr, hr), xr) in dy[..rows * c]
        .chunks_exact(c)
        .zip(xhat.chunks_exact(c))
        .zip(dx.chunks_exact_mut(c))
    {
        for j in 0..c {
            xr[j] = k[j] * (t * dr[j] - sum_dy[j] - hr[j] * sum_dy_xhat[j]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;

    /// Training-mode batch norm of the whole batch, in one call.
    #[allow(clippy::too_many_arguments)]
    fn full(
        x: &[f32],
        rows: usize,
        c: usize,
        gamma: &[f32],
        beta: &[f32],
        xhat: &mut [f32],
        inv: &mut Vec<f32>,
        y: &mut [f32],
    ) {
        let mut sums = vec![0.0; 2 * c];
        partial_stats(x, rows, c, &mut sums);
        let (mut mean, mut var) = (vec![0.0; c], vec![0.0; c]);
        inv.resize(c, 0.0);
        finish_stats(&sums, c, rows, &mut mean, &mut var, inv);
        normalize(x, rows, c, &mean, inv, gamma, beta, Some(xhat), y);
    }

    #[test]
    fn gradients_match_finite_differences_across_two_shards() {
        let (rows, c) = (6, 3);
        let mut g = rng(6);
        let mut x = uniform(&mut g, rows * c, -2.0, 2.0);
        let mut gamma = uniform(&mut g, c, 0.5, 1.5);
        let mut beta = uniform(&mut g, c, -0.5, 0.5);
        let r = uniform(&mut g, rows * c, -1.0, 1.0);
        let (mut xhat, mut inv, mut y) = (vec![0.0; rows * c], Vec::new(), vec![0.0; rows * c]);
        full(&x, rows, c, &gamma, &beta, &mut xhat, &mut inv, &mut y);
        // Backward as the trainer does it: partial sums of two shards of 2 and 4 rows.
        let split = 2 * c;
        let (mut p1, mut p2) = (vec![0.0; 2 * c], vec![0.0; 2 * c]);
        partial_grads(&r[..split], &xhat[..split], 2, c, &mut p1);
        partial_grads(&r[split..], &xhat[split..], 4, c, &mut p2);
        let tot: Vec<f32> = p1.iter().zip(&p2).map(|(a, b)| (a + b) as f32).collect();
        let mut dx = vec![0.0; rows * c];
        backward_dx(
            &r[..split],
            &xhat[..split],
            2,
            c,
            &gamma,
            &inv,
            &tot[..c],
            &tot[c..],
            rows,
            &mut dx[..split],
        );
        backward_dx(
            &r[split..],
            &xhat[split..],
            4,
            c,
            &gamma,
            &inv,
            &tot[..c],
            &tot[c..],
            rows,
            &mut dx[split..],
        );
        let (dbeta, dgamma) = (tot[..c].to_vec(), tot[c..].to_vec());
        let (x0, g0, b0) = (x.clone(), gamma.clone(), beta.clone());
        let mut scratch = vec![0.0; rows * c];
        grad_check("bn dx", &mut x, &dx, 1, 1e-2, |x| {
            full(x, rows, c, &g0, &b0, &mut scratch, &mut Vec::new(), &mut y);
            dot(&r, &y)
        });
        grad_check("bn dgamma", &mut gamma, &dgamma, 1, 1e-2, |g| {
            full(&x0, rows, c, g, &b0, &mut scratch, &mut Vec::new(), &mut y);
            dot(&r, &y)
        });
        grad_check("bn dbeta", &mut beta, &dbeta, 1, 1e-2, |b| {
            full(&x0, rows, c, &g0, b, &mut scratch, &mut Vec::new(), &mut y);
            dot(&r, &y)
        });
    }

    #[test]
    fn inference_affine_equals_normalize_with_running_stats() {
        let (gamma, beta, mean, var) = (
            vec![1.5, 0.5],
            vec![0.1, -0.2],
            vec![0.3, -1.0],
            vec![2.0, 0.25],
        );
        let (scale, shift) = inference_affine(&gamma, &beta, &mean, &var);
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + EPSILON).sqrt()).collect();
        let x = [0.7f32, -0.4];
        let mut y = [0.0; 2];
        normalize(&x, 1, 2, &mean, &inv, &gamma, &beta, None, &mut y);
        for j in 0..2 {
            assert!((x[j] * scale[j] + shift[j] - y[j]).abs() < 1e-6);
        }
    }
}
