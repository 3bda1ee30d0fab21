//! Max pooling, 2×2 windows, stride 2, on NHWC activations ('valid': an odd last row or
//! column is dropped, as in Keras).

use super::L;

/// `y = maxpool(x)` for `n` images of `h×w×c`; `arg`, when given (training), records which
/// of the 4 window cells won (first maximum on ties) for the backward pass. Inference
/// passes none and takes the max alone, a compare-and-select per cell (a `vmaxps`), with
/// no index to keep. Either way the same maxima, to the bit.
pub(crate) fn forward(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    y: &mut [f32],
    arg: Option<&mut [u8]>,
) {
    match arg {
        Some(arg) => {
            assert!(
                arg.len() >= n * (h / 2) * (w / 2) * c,
                "pool: argmax buffer too short"
            );
            forward_arg(x, n, h, w, c, y, arg)
        }
        None => forward_max(x, n, h, w, c, y),
    }
}

#[multiversion::multiversion(targets("x86_64+avx2"))]
fn forward_arg(x: &[f32], n: usize, h: usize, w: usize, c: usize, y: &mut [f32], arg: &mut [u8]) {
    let (oh, ow) = (h / 2, w / 2);
    let images = x.chunks_exact(h * w * c).zip(
        y.chunks_exact_mut(oh * ow * c)
            .zip(arg.chunks_exact_mut(oh * ow * c)),
    );
    // Slices and zipped iterators rather than computed indices: no bounds check per cell,
    // which at 3 channels was most of the work.
    for (img, (yi, ai)) in images.take(n) {
        let rows = img
            .chunks_exact(2 * w * c)
            .zip(yi.chunks_exact_mut(ow * c).zip(ai.chunks_exact_mut(ow * c)));
        for (pair, (yr, ar)) in rows {
            let (r0, r1) = pair.split_at(w * c);
            let cells = r0.chunks_exact(2 * c).zip(r1.chunks_exact(2 * c));
            for ((top, bottom), (yc, ac)) in
                cells.zip(yr.chunks_exact_mut(c).zip(ar.chunks_exact_mut(c)))
            {
                let (t0, t1) = top.split_at(c);
                let (b0, b1) = bottom.split_at(c);
                let cols = t0.iter().zip(t1).zip(b0.iter().zip(b1));
                for (((&v0, &v1), (&v2, &v3)), (yv, av)) in
                    cols.zip(yc.iter_mut().zip(ac.iter_mut()))
                {
                    let (mut best, mut at) = (v0, 0u8);
                    for (v, a) in [(v1, 1u8), (v2, 2), (v3, 3)] {
                        if v > best {
                            best = v;
                            at = a;
                        }
                    }
                    *yv = best;
                    *av = at;
                }
            }
        }
    }
}

/// [`forward_arg`]'s maxima alone: the same comparisons in the same order.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn forward_max(x: &[f32], n: usize, h: usize, w: usize, c: usize, y: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    let images = x
        .chunks_exact(h * w * c)
        .zip(y.chunks_exact_mut(oh * ow * c));
    for (img, yi) in images.take(n) {
        for (pair, yr) in img.chunks_exact(2 * w * c).zip(yi.chunks_exact_mut(ow * c)) {
            let (r0, r1) = pair.split_at(w * c);
            let cells = r0.chunks_exact(2 * c).zip(r1.chunks_exact(2 * c));
            for ((top, bottom), yc) in cells.zip(yr.chunks_exact_mut(c)) {
                let (t0, t1) = top.split_at(c);
                let (b0, b1) = bottom.split_at(c);
                if c < L {
                    max_of_four(t0, t1, b0, b1, yc);
                    continue;
                }
                // Vectors of channels, the last one ending at `c` and overlapping the one
                // before (its channels again, the same maxima): LeNet-5's 20 channels
                // took two vectors and four channels one at a time.
                for at in (0..c).step_by(L) {
                    let a = at.min(c - L);
                    let v = |x: &[f32]| -> [f32; L] { x[a..a + L].try_into().expect("a vector") };
                    let mut out = [0.0; L];
                    max_of_four(&v(t0), &v(t1), &v(b0), &v(b1), &mut out);
                    yc[a..a + L].copy_from_slice(&out);
                }
            }
        }
    }
}

/// `y[i]`: the largest of the four cells' `i`-th values, compared in [`forward_arg`]'s order
/// (a later cell wins only when greater).
#[inline(always)]
fn max_of_four(v0: &[f32], v1: &[f32], v2: &[f32], v3: &[f32], y: &mut [f32]) {
    let cols = v0.iter().zip(v1).zip(v2.iter().zip(v3));
    for (((&v0, &v1), (&v2, &v3)), yv) in cols.zip(y.iter_mut()) {
        let mut best = v0;
        for v in [v1, v2, v3] {
            if v > best {
                best = v;
            }
        }
        *yv = best;
    }
}

/// `dx` (overwritten): each `dy` goes to the cell that won the forward max.
pub(crate) fn backward(
    dy: &[f32],
    arg: &[u8],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    dx: &mut [f32],
) {
    let (oh, ow) = (h / 2, w / 2);
    dx[..n * h * w * c].fill(0.0);
    for i in 0..n {
        let base_in = i * h * w * c;
        let base = i * oh * ow * c;
        for oy in 0..oh {
            for ox in 0..ow {
                let o = base + (oy * ow + ox) * c;
                for ch in 0..c {
                    let a = arg[o + ch] as usize;
                    let (yy, xx) = (2 * oy + (a >> 1), 2 * ox + (a & 1));
                    dx[base_in + (yy * w + xx) * c + ch] = dy[o + ch];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;

    #[test]
    fn picks_window_maxima() {
        // One 4×4 single-channel image.
        let x: Vec<f32> = vec![
            1., 2., 0., 0., 3., 4., 0., 9., -1., -2., 5., 5., -3., -4., 5., 5.,
        ];
        let (mut y, mut a) = (vec![0.0; 4], vec![0u8; 4]);
        forward(&x, 1, 4, 4, 1, &mut y, Some(&mut a));
        assert_eq!(y, vec![4., 9., -1., 5.]);
        assert_eq!(a, vec![3, 3, 0, 0]);
    }

    #[test]
    fn odd_sizes_drop_the_last_row_and_column() {
        let (n, h, w, c) = (2, 5, 7, 3);
        let mut g = rng(6);
        // Rounded, so that windows have ties (the first maximum wins).
        let x: Vec<f32> = uniform(&mut g, n * h * w * c, -2.0, 2.0)
            .iter()
            .map(|v| v.round())
            .collect();
        let (oh, ow) = (h / 2, w / 2);
        let (mut y, mut a) = (vec![0.0; n * oh * ow * c], vec![9u8; n * oh * ow * c]);
        forward(&x, n, h, w, c, &mut y, Some(&mut a));
        for i in 0..n {
            for (oy, ox, ch) in
                (0..oh).flat_map(|p| (0..ow).flat_map(move |q| (0..c).map(move |r| (p, q, r))))
            {
                let at =
                    |dy: usize, dx: usize| x[((i * h + 2 * oy + dy) * w + 2 * ox + dx) * c + ch];
                let cells = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                let best = cells.iter().copied().fold(f32::MIN, f32::max);
                let first = cells.iter().position(|&v| v == best).unwrap() as u8;
                let o = ((i * oh + oy) * ow + ox) * c + ch;
                assert_eq!(
                    (y[o], a[o]),
                    (best, first),
                    "image {i} ({oy}, {ox}) channel {ch}"
                );
            }
        }
    }

    /// Inference's max alone and training's max with argmax: the same bits, ties, signed
    /// zeros, infinities and NaN included (a NaN wins only in a window's first cell).
    #[test]
    fn max_alone_is_the_max_with_argmax() {
        // Fewer channels than a vector, one vector, and 20 (two vectors and an overlapping
        // third, as in LeNet-5's conv1).
        for c in [5, 8, 20] {
            max_alone_is_the_max_with_argmax_at(c);
        }
    }

    fn max_alone_is_the_max_with_argmax_at(c: usize) {
        let (n, h, w) = (3, 6, 4);
        let mut g = rng(7);
        let special = [
            f32::NAN,
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1.0,
            -1.0,
        ];
        let x: Vec<f32> = uniform(&mut g, n * h * w * c, -2.0, 2.0)
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if i % 2 == 0 {
                    special[(i / 2) % 7]
                } else {
                    v.round()
                }
            })
            .collect();
        let out = n * (h / 2) * (w / 2) * c;
        let (mut want, mut a) = (vec![0.0; out], vec![0u8; out]);
        forward(&x, n, h, w, c, &mut want, Some(&mut a));
        let mut got = vec![1.5; out];
        forward(&x, n, h, w, c, &mut got, None);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{c} channels");
        assert!(
            want.iter().any(|v| v.is_nan())
                && want.iter().any(|v| v.to_bits() == (-0.0f32).to_bits())
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, h, w, c) = (2, 4, 6, 3);
        let mut g = rng(5);
        // Distinct values, spaced wider than 2·eps, so no window changes its winner.
        let len = n * h * w * c;
        let mut x: Vec<f32> = (0..len).map(|i| i as f32 * 0.1).collect();
        for i in (1..len).rev() {
            let j = rand::Rng::gen_range(&mut g, 0..=i);
            x.swap(i, j);
        }
        let out = n * (h / 2) * (w / 2) * c;
        let r = uniform(&mut g, out, -1.0, 1.0);
        let (mut y, mut a) = (vec![0.0; out], vec![0u8; out]);
        forward(&x, n, h, w, c, &mut y, Some(&mut a));
        let mut dx = vec![0.0; len];
        backward(&r, &a, n, h, w, c, &mut dx);
        grad_check("pool dx", &mut x, &dx, 1, 1e-2, |x| {
            forward(x, n, h, w, c, &mut y, None);
            dot(&r, &y)
        });
    }
}
