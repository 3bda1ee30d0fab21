//! The one GEMM entry point of the crate, on row-major slices.
//!
//! Everything heavy (dense layers, im2col convolutions) goes through [`gemm`], which hands
//! the work to ndarray's `general_mat_mul`: matrixmultiply's runtime-dispatched AVX2/FMA
//! kernels by default, the system OpenBLAS with the `openblas` feature. Keeping one entry
//! point means the backend choice is made in one place.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};

/// `c (m×n) = alpha·op(a)·op(b) + beta·c` on row-major slices. `op(a)` is `m×k`: `a` holds
/// `m×k` when `ta` is false and `k×m` (used transposed) when true; likewise `b` with `tb`.
/// With `beta == 0`, `c` is overwritten without being read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    if m == 0 || n == 0 {
        return;
    }
    let a = view(a, m, k, ta);
    let b = view(b, k, n, tb);
    let mut c = ArrayViewMut2::from_shape((m, n), &mut c[..m * n]).expect("gemm: c shape");
    if k == 0 {
        c.map_inplace(|v| *v *= beta);
        return;
    }
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}

/// A `rows×cols` view of `s`, stored row-major, or stored as `cols×rows` and transposed.
fn view(s: &[f32], rows: usize, cols: usize, transposed: bool) -> ArrayView2<'_, f32> {
    if transposed {
        ArrayView2::from_shape((rows, cols).f(), &s[..rows * cols]).expect("gemm: shape")
    } else {
        ArrayView2::from_shape((rows, cols), &s[..rows * cols]).expect("gemm: shape")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av * bv;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn all_transpositions_match_naive() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        for ta in [false, true] {
            for tb in [false, true] {
                let want = naive(ta, tb, m, n, k, &a, &b);
                let mut c = vec![f32::NAN; m * n];
                gemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut c);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - y).abs() < 1e-5, "{ta} {tb}: {x} vs {y}");
                }
                // beta = 1 accumulates.
                gemm(ta, tb, m, n, k, 1.0, &a, &b, 1.0, &mut c);
                for (x, y) in c.iter().zip(&want) {
                    assert!((x - 2.0 * y).abs() < 1e-5);
                }
            }
        }
    }
}
