//! 'Valid' 2-D convolution, stride 1, on NHWC activations, as im2col + GEMM.
//!
//! The kernel is stored `(kh, kw, c_in) × c_out` row-major (Keras' `(kh, kw, c_in, c_out)`
//! layout flattened), which is exactly the column order im2col produces: each im2col row is
//! `k` contiguous runs of `k·c_in` input values, so building it is `k` memcpys per output
//! position. Images are processed in chunks so the im2col buffer stays under [`COL_CAP`]
//! floats whatever the widths, and the backward pass rebuilds it rather than keeping it.

use super::direct;
use crate::gemm::gemm;

/// Most floats an im2col buffer holds (8 MiB): big enough for efficient GEMMs, small enough
/// to stay in cache and to bound memory at width 1024.
pub(crate) const COL_CAP: usize = 1 << 21;

/// Shape of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvShape {
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub cout: usize,
    pub k: usize,
}

impl ConvShape {
    pub fn oh(&self) -> usize {
        self.h + 1 - self.k
    }
    pub fn ow(&self) -> usize {
        self.w + 1 - self.k
    }
    /// Length of one im2col row: `k·k·c_in`.
    pub fn kdim(&self) -> usize {
        self.k * self.k * self.cin
    }
    pub fn in_size(&self) -> usize {
        self.h * self.w * self.cin
    }
    pub fn out_size(&self) -> usize {
        self.oh() * self.ow() * self.cout
    }
    /// Images per im2col chunk.
    pub fn chunk(&self) -> usize {
        (COL_CAP / (self.oh() * self.ow() * self.kdim())).max(1)
    }
    /// Floats of im2col scratch needed for `n` images.
    pub fn col_len(&self, n: usize) -> usize {
        n.min(self.chunk()) * self.oh() * self.ow() * self.kdim()
    }
}

/// Walks the im2col layout of `imgs` images: for every output position (one im2col row)
/// and kernel row `dy`, calls `f(at_col, at_x)` with where that run of `k·c_in` floats starts
/// in the im2col matrix and in the input. [`im2col`] copies along it, [`col2im_add`] adds
/// back along it.
#[inline(always)]
fn for_each_run(imgs: usize, s: &ConvShape, mut f: impl FnMut(usize, usize)) {
    let (oh, ow, k, c) = (s.oh(), s.ow(), s.k, s.cin);
    let mut at_col = 0;
    for img in 0..imgs {
        let base = img * s.in_size();
        for oy in 0..oh {
            for ox in 0..ow {
                for dy in 0..k {
                    f(at_col + dy * k * c, base + ((oy + dy) * s.w + ox) * c);
                }
                at_col += s.kdim();
            }
        }
    }
}

/// im2col of `imgs` images starting at `x` into `col` (`imgs·oh·ow × kdim`).
fn im2col(x: &[f32], imgs: usize, s: &ConvShape, col: &mut [f32]) {
    let run = s.k * s.cin;
    for_each_run(imgs, s, |at_col, at_x| {
        // An element loop, not copy_from_slice: runs are short (k·c_in floats) and a memcpy
        // call each costs more than the copy.
        for (d, v) in col[at_col..at_col + run]
            .iter_mut()
            .zip(&x[at_x..at_x + run])
        {
            *d = *v;
        }
    });
}

/// im2col of a single-channel input, stored transposed (`kdim × imgs·oh·ow`): each kernel
/// tap's row is, per image and output row, one contiguous run of `ow` pixels. The first
/// convolution (`c_in = 1`, runs of 5 floats in the usual layout) copies 24-float runs this
/// way, and the GEMMs read the buffer transposed at no cost.
fn im2col_t(x: &[f32], imgs: usize, s: &ConvShape, colt: &mut [f32]) {
    let (oh, ow, k) = (s.oh(), s.ow(), s.k);
    let rows = imgs * oh * ow;
    for dy in 0..k {
        for dx in 0..k {
            let dst = &mut colt[(dy * k + dx) * rows..(dy * k + dx + 1) * rows];
            for (img, out) in x[..imgs * s.in_size()]
                .chunks_exact(s.in_size())
                .zip(dst.chunks_exact_mut(oh * ow))
            {
                for (oy, o) in out.chunks_exact_mut(ow).enumerate() {
                    let start = (oy + dy) * s.w + dx;
                    for (d, v) in o.iter_mut().zip(&img[start..start + ow]) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

/// Adds each im2col row of `dcol` back onto the input positions it was built from.
fn col2im_add(dcol: &[f32], imgs: usize, s: &ConvShape, dx: &mut [f32]) {
    let run = s.k * s.cin;
    for_each_run(imgs, s, |at_col, at_x| {
        for (d, v) in dx[at_x..at_x + run]
            .iter_mut()
            .zip(&dcol[at_col..at_col + run])
        {
            *d += v;
        }
    });
}

/// `y = conv(x, w) + b` for `n` images; `col` is scratch of at least `s.col_len(n)`.
/// Narrow layers go to the direct kernels ([`direct::applies_multi`], [`direct::applies`]).
pub(crate) fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    s: &ConvShape,
    col: &mut [f32],
    y: &mut [f32],
) {
    if direct::applies_multi(s) {
        direct::forward_multi(x, w, b, n, s, col, y);
    } else if direct::applies(s) {
        direct::forward(x, w, b, n, s, y);
    } else {
        forward_im2col(x, w, b, n, s, col, y);
    }
}

/// Whether [`forward`] takes the im2col path for `s` (and so leaves the im2col in `col`).
pub(crate) fn forward_uses_im2col(s: &ConvShape) -> bool {
    !direct::applies_multi(s) && !direct::applies(s)
}

/// [`forward`] through im2col and GEMM, whatever the shape.
pub(crate) fn forward_im2col(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    s: &ConvShape,
    col: &mut [f32],
    y: &mut [f32],
) {
    let pos = s.oh() * s.ow();
    super::dense::fill_rows(&mut y[..n * s.out_size()], b);
    let mut i = 0;
    while i < n {
        let imgs = s.chunk().min(n - i);
        let rows = imgs * pos;
        let single = s.cin == 1;
        if single {
            im2col_t(&x[i * s.in_size()..], imgs, s, col);
        } else {
            im2col(&x[i * s.in_size()..], imgs, s, col);
        }
        gemm(
            single,
            false,
            rows,
            s.cout,
            s.kdim(),
            1.0,
            col,
            w,
            1.0,
            &mut y[i * s.out_size()..],
        );
        i += imgs;
    }
}

/// Gradients of one shard: `dw`, `db` overwritten, and `dx` (overwritten) when asked.
/// `col_ready`: `col` still holds the forward pass's im2col of `x`, which is the case when
/// [`forward`] ran on the same images with the same buffer and they fit one chunk; the
/// backward pass then skips rebuilding it.
/// With no input gradient asked for and a shape the direct kernels take, they compute the
/// kernel and bias gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    s: &ConvShape,
    col: &mut [f32],
    col_ready: bool,
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    if dx.is_none() && direct::applies(s) {
        direct::backward_weights(x, dy, n, s, dw, db);
    } else {
        // A direct forward pass leaves weights, not the im2col, in `col`.
        let col_ready = col_ready && forward_uses_im2col(s);
        backward_im2col(x, w, dy, n, s, col, col_ready, dw, db, dx);
    }
}

/// [`backward`] through im2col and GEMM, whatever the shape.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_im2col(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    n: usize,
    s: &ConvShape,
    col: &mut [f32],
    col_ready: bool,
    dw: &mut [f32],
    db: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let pos = s.oh() * s.ow();
    let kdim = s.kdim();
    super::dense::column_sums(dy, n * pos, s.cout, db);
    if let Some(dx) = dx.as_deref_mut() {
        dx[..n * s.in_size()].fill(0.0);
    }
    let mut i = 0;
    while i < n {
        let imgs = s.chunk().min(n - i);
        let rows = imgs * pos;
        let dy_c = &dy[i * s.out_size()..];
        let single = s.cin == 1;
        if !(col_ready && n <= s.chunk()) {
            if single {
                im2col_t(&x[i * s.in_size()..], imgs, s, col);
            } else {
                im2col(&x[i * s.in_size()..], imgs, s, col);
            }
        }
        let beta = if i == 0 { 0.0 } else { 1.0 };
        gemm(!single, false, kdim, s.cout, rows, 1.0, col, dy_c, beta, dw);
        if let Some(dx) = dx.as_deref_mut() {
            gemm(false, true, rows, kdim, s.cout, 1.0, dy_c, w, 0.0, col);
            col2im_add(col, imgs, s, &mut dx[i * s.in_size()..]);
        }
        i += imgs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;

    /// Forward against a direct convolution, for a shape and a seed.
    fn check_forward(s: ConvShape, seed: u64) {
        let n = 3;
        let mut g = rng(seed);
        let x = uniform(&mut g, n * s.in_size(), -1.0, 1.0);
        let w = uniform(&mut g, s.kdim() * s.cout, -1.0, 1.0);
        let b = uniform(&mut g, s.cout, -1.0, 1.0);
        let want = conv_naive(&x, &w, &b, n, &s, false);
        let mut col = vec![0.0; s.col_len(n)];
        let mut y = vec![0.0; n * s.out_size()];
        forward(&x, &w, &b, n, &s, &mut col, &mut y);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn forward_matches_direct_convolution_across_chunks() {
        check_forward(
            ConvShape {
                h: 7,
                w: 6,
                cin: 2,
                cout: 3,
                k: 3,
            },
            3,
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Several input channels (im2col) and one (the transposed im2col).
        check_gradients(ConvShape {
            h: 6,
            w: 5,
            cin: 2,
            cout: 3,
            k: 3,
        });
        check_gradients(ConvShape {
            h: 6,
            w: 5,
            cin: 1,
            cout: 4,
            k: 3,
        });
    }

    #[test]
    fn single_channel_forward_matches_direct_convolution() {
        check_forward(
            ConvShape {
                h: 7,
                w: 6,
                cin: 1,
                cout: 3,
                k: 3,
            },
            13,
        );
    }

    fn check_gradients(s: ConvShape) {
        let n = 2;
        let mut g = rng(4);
        let mut x = uniform(&mut g, n * s.in_size(), -1.0, 1.0);
        let mut w = uniform(&mut g, s.kdim() * s.cout, -1.0, 1.0);
        let mut b = uniform(&mut g, s.cout, -1.0, 1.0);
        let r = uniform(&mut g, n * s.out_size(), -1.0, 1.0);
        let mut col = vec![0.0; s.col_len(n)];
        let (mut dw, mut db, mut dx) = (vec![0.0; w.len()], vec![0.0; s.cout], vec![7.0; x.len()]);
        backward(
            &x,
            &w,
            &r,
            n,
            &s,
            &mut col,
            false,
            &mut dw,
            &mut db,
            Some(&mut dx),
        );
        // Reusing the forward pass's im2col gives the same gradients.
        let (mut dw2, mut db2, mut dx2) =
            (vec![0.0; w.len()], vec![0.0; s.cout], vec![0.0; x.len()]);
        let mut y = vec![0.0; n * s.out_size()];
        forward(&x, &w, &b, n, &s, &mut col, &mut y);
        backward(
            &x,
            &w,
            &r,
            n,
            &s,
            &mut col,
            true,
            &mut dw2,
            &mut db2,
            Some(&mut dx2),
        );
        assert_eq!((&dw, &db, &dx), (&dw2, &db2, &dx2));
        let (x0, w0, b0) = (x.clone(), w.clone(), b.clone());
        grad_check("conv dx", &mut x, &dx, 1, 1e-2, |x| {
            forward(x, &w0, &b0, n, &s, &mut col, &mut y);
            dot(&r, &y)
        });
        grad_check("conv dw", &mut w, &dw, 1, 1e-2, |w| {
            forward(&x0, w, &b0, n, &s, &mut col, &mut y);
            dot(&r, &y)
        });
        grad_check("conv db", &mut b, &db, 1, 1e-2, |b| {
            forward(&x0, &w0, b, n, &s, &mut col, &mut y);
            dot(&r, &y)
        });
    }
}
