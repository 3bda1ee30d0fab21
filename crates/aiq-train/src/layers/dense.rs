//! Dense (fully connected) layer: `y = x·W + b`, `W` stored `inputs × outputs` row-major
//! (Keras' kernel layout).

use crate::gemm::gemm;

/// `y (n×out) = x (n×inp) · w (inp×out) + b`.
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    y: &mut [f32],
) {
    fill_rows(&mut y[..n * out], b);
    gemm(false, false, n, out, inp, 1.0, x, w, 1.0, y);
}

/// Gradients of one shard: `dw = xᵀ·dy`, `db = Σ_rows dy` (both overwritten) and, when
/// asked, `dx = dy·wᵀ`. The first layer passes `None`: nobody needs the image gradient.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    inp: usize,
    out: usize,
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    gemm(true, false, inp, out, n, 1.0, x, dy, 0.0, dw);
    column_sums(dy, n, out, db);
    if let Some(dx) = dx {
        gemm(false, true, n, inp, out, 1.0, dy, w, 0.0, dx);
    }
}

/// Sets every row of `y` to `b`. An element loop, not `copy_from_slice`: rows can be a few
/// floats (a 3-channel convolution has 28,800 of them per shard) and a memcpy call per row
/// costs more than the copy.
pub(crate) fn fill_rows(y: &mut [f32], b: &[f32]) {
    for row in y.chunks_exact_mut(b.len()) {
        for (v, b) in row.iter_mut().zip(b) {
            *v = *b;
        }
    }
}

/// `out[j] = Σ_i m[i][j]` of an `n × cols` row-major matrix, rows in order.
pub(crate) fn column_sums(m: &[f32], n: usize, cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in m[..n * cols].chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;

    #[test]
    fn gradients_match_finite_differences() {
        let (n, inp, out) = (3, 5, 4);
        let mut g = rng(1);
        let mut x = uniform(&mut g, n * inp, -1.0, 1.0);
        let mut w = uniform(&mut g, inp * out, -1.0, 1.0);
        let mut b = uniform(&mut g, out, -1.0, 1.0);
        let r = uniform(&mut g, n * out, -1.0, 1.0);
        let (mut dw, mut db, mut dx) = (vec![0.0; inp * out], vec![0.0; out], vec![0.0; n * inp]);
        backward(&x, &w, &r, n, inp, out, &mut dw, &mut db, Some(&mut dx));
        let mut y = vec![0.0; n * out];
        let (x0, w0, b0) = (x.clone(), w.clone(), b.clone());
        grad_check("dense dx", &mut x, &dx, 1, 1e-2, |x| {
            forward(x, &w0, &b0, n, inp, out, &mut y);
            dot(&r, &y)
        });
        grad_check("dense dw", &mut w, &dw, 1, 1e-2, |w| {
            forward(&x0, w, &b0, n, inp, out, &mut y);
            dot(&r, &y)
        });
        grad_check("dense db", &mut b, &db, 1, 1e-2, |b| {
            forward(&x0, &w0, b, n, inp, out, &mut y);
            dot(&r, &y)
        });
    }
}
