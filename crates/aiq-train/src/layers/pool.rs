//! Max pooling, 2×2 windows, stride 2, on NHWC activations ('valid': an odd last row or
//! column is dropped, as in Keras).

/// `y = maxpool(x)` for `n` images of `h×w×c`; `arg` records which of the 4 window cells
/// won (first maximum on ties) for the backward pass.
pub(crate) fn forward(
    x: &[f32],
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    y: &mut [f32],
    arg: &mut [u8],
) {
    let (oh, ow) = (h / 2, w / 2);
    for i in 0..n {
        let img = &x[i * h * w * c..(i + 1) * h * w * c];
        let base = i * oh * ow * c;
        for oy in 0..oh {
            for ox in 0..ow {
                let p00 = ((2 * oy) * w + 2 * ox) * c;
                let p01 = p00 + c;
                let p10 = p00 + w * c;
                let p11 = p10 + c;
                let o = base + (oy * ow + ox) * c;
                let (yr, ar) = (&mut y[o..o + c], &mut arg[o..o + c]);
                for ch in 0..c {
                    let (mut best, mut at) = (img[p00 + ch], 0u8);
                    for (v, a) in [(img[p01 + ch], 1u8), (img[p10 + ch], 2), (img[p11 + ch], 3)] {
                        if v > best {
                            best = v;
                            at = a;
                        }
                    }
                    yr[ch] = best;
                    ar[ch] = at;
                }
            }
        }
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
        forward(&x, 1, 4, 4, 1, &mut y, &mut a);
        assert_eq!(y, vec![4., 9., -1., 5.]);
        assert_eq!(a, vec![3, 3, 0, 0]);
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
        forward(&x, n, h, w, c, &mut y, &mut a);
        let mut dx = vec![0.0; len];
        backward(&r, &a, n, h, w, c, &mut dx);
        grad_check("pool dx", &mut x, &dx, 1, 1e-2, |x| {
            forward(x, n, h, w, c, &mut y, &mut a);
            dot(&r, &y)
        });
    }
}
