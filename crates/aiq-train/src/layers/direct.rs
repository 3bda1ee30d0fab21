//! Direct convolutions for LeNet-5's narrow layers, in place of im2col + GEMM.
//!
//! im2col turns a 28×28 image into a 576×25 matrix (18× the image) that matrixmultiply then
//! packs again, to feed a GEMM only `c_out` (3–64) columns wide: at these widths the copies
//! cost more than the arithmetic. The kernels here read the image where it lies and keep a
//! tile of outputs in registers:
//! - [`forward_multi`], an implicit GEMM: a tile of output positions × vectors of output
//!   channels accumulates over the kernel rows, each position's inputs broadcast from the
//!   image (for each kernel row, one contiguous run of `k·c_in` floats); channels left over
//!   from whole vectors go to tiles of output rows (vectors along the row) × channels, on
//!   the image copied to channel planes, rather than to a mostly padded vector;
//! - [`forward`] and [`backward_weights`], for a single input channel and fewer than 8
//!   output channels (vectors of channels would be mostly idle): vectors run along an
//!   output row instead, `x[oy+dy][ox+dx ..]` against each channel's weight.
//!
//! The kernels are compiled twice, for the baseline target and for AVX2 + FMA, and the clone
//! is chosen at run time (`multiversion`); both are plain safe Rust that LLVM vectorizes.
//! Sums run in a fixed order per image, so results do not depend on threads.

use multiversion::multiversion;

use super::conv::ConvShape;
use super::L;

/// Output channels per group: their accumulators and the image vectors fit the 16 vector
/// registers for up to three vectors per row.
const G: usize = 3;
/// Most kernel taps (`k²`) and output rows the stack buffers hold.
const MAX_TAPS: usize = 64;
const MAX_ROWS: usize = 32;

/// `a·b + c`, fused in the FMA clones (`fma` is the clone's constant, so the branch folds
/// away); the baseline clones never call `mul_add`, which would be a library call there.
#[inline(always)]
fn madd(a: f32, b: f32, c: f32, fma: bool) -> f32 {
    if fma {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Whether the row kernels ([`forward`], [`backward_weights`]) handle `s`: one input
/// channel, fewer than [`L`] output channels (each channel group re-reads the output
/// gradient, so wide layers are left to the GEMM), output rows of 8, 16 or 24 columns, at
/// most [`MAX_TAPS`] taps and [`MAX_ROWS`] rows.
pub(crate) fn applies(s: &ConvShape) -> bool {
    s.cin == 1
        && s.cout < L
        && s.ow().is_multiple_of(L)
        && (1..=3).contains(&(s.ow() / L))
        && s.k * s.k <= MAX_TAPS
        && s.oh() <= MAX_ROWS
}

/// `y = conv(x, w) + b` for `n` images (see [`applies`]).
pub(crate) fn forward(x: &[f32], w: &[f32], b: &[f32], n: usize, s: &ConvShape, y: &mut [f32]) {
    match s.ow() / L {
        1 => forward_rows::<1>(x, w, b, n, s, y),
        2 => forward_rows::<2>(x, w, b, n, s, y),
        _ => forward_rows::<3>(x, w, b, n, s, y),
    }
}

/// Kernel weights of channels `c0..c0 + G` per tap, zero beyond `c_out`.
fn group_weights(w: &[f32], s: &ConvShape, c0: usize) -> [[f32; G]; MAX_TAPS] {
    let mut wg = [[0.0; G]; MAX_TAPS];
    for (t, row) in wg.iter_mut().enumerate().take(s.k * s.k) {
        for (g, v) in row.iter_mut().enumerate().take(s.cout - c0) {
            *v = w[t * s.cout + c0 + g];
        }
    }
    wg
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn forward_rows<const V: usize>(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    s: &ConvShape,
    y: &mut [f32],
) {
    let fma = multiversion::target::target_cfg_f!(target_feature = "fma");
    let (k, iw, ow, cout) = (s.k, s.w, s.ow(), s.cout);
    for c0 in (0..cout).step_by(G) {
        let cn = G.min(cout - c0);
        let wg = group_weights(w, s, c0);
        let mut bias = [0.0; G];
        bias[..cn].copy_from_slice(&b[c0..c0 + cn]);
        let images = x
            .chunks_exact(s.in_size())
            .zip(y.chunks_exact_mut(s.out_size()));
        for (img, yi) in images.take(n) {
            for (oy, yrow) in yi.chunks_exact_mut(ow * cout).enumerate() {
                let mut acc = [[[0.0f32; L]; V]; G];
                for (a, &bg) in acc.iter_mut().zip(&bias) {
                    *a = [[bg; L]; V];
                }
                for dy in 0..k {
                    let row = &img[(oy + dy) * iw..(oy + dy) * iw + k - 1 + V * L];
                    for dx in 0..k {
                        let mut xs = [[0.0f32; L]; V];
                        for (v, xv) in xs.iter_mut().enumerate() {
                            xv.copy_from_slice(&row[dx + v * L..dx + v * L + L]);
                        }
                        acc = madd_tile(acc, &xs, &wg[dy * k + dx], fma);
                    }
                }
                // Read back from a copy: the loops below index it with run-time values,
                // which would otherwise keep `acc` in memory during the taps.
                let acc = std::hint::black_box(acc);
                for (v, av) in yrow.chunks_exact_mut(L * cout).enumerate().take(V) {
                    for (l, out) in av.chunks_exact_mut(cout).enumerate() {
                        for (g, a) in acc.iter().enumerate().take(cn) {
                            out[c0 + g] = a[v][l];
                        }
                    }
                }
            }
        }
    }
}

/// `acc[g][v] += xs[v] · w[g]`, lane-wise: one tap of [`forward_rows`], by value so that
/// the accumulators stay in registers.
#[inline(always)]
fn madd_tile<const V: usize>(
    mut acc: [[[f32; L]; V]; G],
    xs: &[[f32; L]; V],
    w: &[f32; G],
    fma: bool,
) -> [[[f32; L]; V]; G] {
    for (ag, &wg) in acc.iter_mut().zip(w) {
        for (av, xv) in ag.iter_mut().zip(xs) {
            for (a, &x) in av.iter_mut().zip(xv) {
                *a = madd(x, wg, *a, fma);
            }
        }
    }
    acc
}

/// Kernel and bias gradients of `n` images (overwritten), `dy` the output gradient (see
/// [`applies`]). No input gradient: a single-channel input is the image itself.
pub(crate) fn backward_weights(
    x: &[f32],
    dy: &[f32],
    n: usize,
    s: &ConvShape,
    dw: &mut [f32],
    db: &mut [f32],
) {
    match s.ow() / L {
        1 => backward_rows::<1>(x, dy, n, s, dw, db),
        2 => backward_rows::<2>(x, dy, n, s, dw, db),
        _ => backward_rows::<3>(x, dy, n, s, dw, db),
    }
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn backward_rows<const V: usize>(
    x: &[f32],
    dy: &[f32],
    n: usize,
    s: &ConvShape,
    dw: &mut [f32],
    db: &mut [f32],
) {
    let fma = multiversion::target::target_cfg_f!(target_feature = "fma");
    let (k, iw, oh, ow, cout) = (s.k, s.w, s.oh(), s.ow(), s.cout);
    let taps = k * k;
    for c0 in (0..cout).step_by(G) {
        let cn = G.min(cout - c0);
        // Lane-wise partial sums per tap, reduced across lanes at the end.
        let mut part = [[[[0.0f32; L]; V]; G]; MAX_TAPS];
        let mut bias = [[[0.0f32; L]; V]; G];
        // One image's output gradient for the group, channels planar (zero beyond c_out).
        let mut d = [[[[0.0f32; L]; V]; G]; MAX_ROWS];
        let images = x
            .chunks_exact(s.in_size())
            .zip(dy.chunks_exact(s.out_size()));
        for (img, dyi) in images.take(n) {
            for (dr, drow) in d.iter_mut().zip(dyi.chunks_exact(ow * cout)) {
                for (v, dv) in drow.chunks_exact(L * cout).enumerate().take(V) {
                    for (l, dpos) in dv.chunks_exact(cout).enumerate() {
                        for (g, dg) in dr.iter_mut().enumerate().take(cn) {
                            dg[v][l] = dpos[c0 + g];
                        }
                    }
                }
                bias = add_tile(bias, dr);
            }
            for ky in 0..k {
                for kx in 0..k {
                    // Accumulators stay in registers over the rows, then go to memory once.
                    let mut acc = [[[0.0f32; L]; V]; G];
                    for (oy, dr) in d.iter().enumerate().take(oh) {
                        let row = &img[(oy + ky) * iw + kx..(oy + ky) * iw + kx + V * L];
                        let mut xs = [[0.0f32; L]; V];
                        for (v, xv) in xs.iter_mut().enumerate() {
                            xv.copy_from_slice(&row[v * L..v * L + L]);
                        }
                        acc = madd_rows(acc, &xs, dr, fma);
                    }
                    let t = &mut part[ky * k + kx];
                    *t = add_tile(*t, &acc);
                }
            }
        }
        for (t, pt) in part.iter().enumerate().take(taps) {
            for (g, pg) in pt.iter().enumerate().take(cn) {
                dw[t * cout + c0 + g] = tile_sum(pg);
            }
        }
        for (g, bg) in bias.iter().enumerate().take(cn) {
            db[c0 + g] = tile_sum(bg);
        }
    }
}

/// `acc[g][v] += xs[v] · d[g][v]`, lane-wise: one row of [`backward_rows`].
#[inline(always)]
fn madd_rows<const V: usize>(
    mut acc: [[[f32; L]; V]; G],
    xs: &[[f32; L]; V],
    d: &[[[f32; L]; V]; G],
    fma: bool,
) -> [[[f32; L]; V]; G] {
    for (ag, dg) in acc.iter_mut().zip(d) {
        for ((av, xv), dv) in ag.iter_mut().zip(xs).zip(dg) {
            for ((a, &x), &dl) in av.iter_mut().zip(xv).zip(dv) {
                *a = madd(x, dl, *a, fma);
            }
        }
    }
    acc
}

#[inline(always)]
fn add_tile<const V: usize>(
    mut a: [[[f32; L]; V]; G],
    b: &[[[f32; L]; V]; G],
) -> [[[f32; L]; V]; G] {
    for (ag, bg) in a.iter_mut().zip(b) {
        for (av, bv) in ag.iter_mut().zip(bg) {
            for (x, &y) in av.iter_mut().zip(bv) {
                *x += y;
            }
        }
    }
    a
}

/// Sum of a channel's vectors, lanes pairwise (a fixed order).
fn tile_sum<const V: usize>(v: &[[f32; L]; V]) -> f32 {
    v.iter().map(lane_sum).fold(0.0, |a, b| a + b)
}

/// Sum of the lanes, pairwise (a fixed order).
fn lane_sum(v: &[f32; L]) -> f32 {
    let q = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (q[0] + q[2]) + (q[1] + q[3])
}

/// Whether [`forward_multi`] handles `s`: several input channels, or one and at least a
/// vector of output channels (fewer would leave most lanes idle: [`forward`] takes those);
/// at most [`MAX_VECS`] vectors of output channels; and room in the layer's im2col scratch
/// (at least one image's worth, `oh·ow·kdim` floats) for the padded weights and bias,
/// `(kdim + 1)` rows of `c_out` rounded up to [`L`].
pub(crate) fn applies_multi(s: &ConvShape) -> bool {
    let np = s.cout.div_ceil(L) * L;
    (s.cin > 1 || s.cout >= L)
        && np <= MAX_VECS * L
        && (s.kdim() + 1) * np <= s.oh() * s.ow() * s.kdim()
}

/// Most output-channel vectors [`forward_multi`] takes (64 channels); wider layers have
/// enough columns for the im2col GEMM to pay.
const MAX_VECS: usize = 8;

/// `y = conv(x, w) + b` for `n` images (see [`applies_multi`]): an implicit GEMM, tiles of
/// outputs accumulating in registers over the `k·k·c_in` kernel rows, inputs read where
/// they lie instead of being copied by im2col and packed again by the GEMM.
///
/// Output channels go in vectors of [`L`] to [`tiles`] (positions × channel vectors). A
/// remainder of fewer than [`L`] channels would pad a whole vector (LeNet-5's 50 channels:
/// 56 lanes, the 7th vector 75% padding), so when there are several input channels and the
/// rows hold a vector, it goes to [`plane_tiles`] instead (vectors along output rows, no
/// padding), which sum in the same order: the same bits either way. `scratch` (the layer's
/// im2col buffer) holds the weights padded to whole vectors, bias last, then the image in
/// channel planes for the plane tiles.
pub(crate) fn forward_multi(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    s: &ConvShape,
    scratch: &mut [f32],
    y: &mut [f32],
) {
    let planes = s.cin > 1
        && s.ow() >= L
        && !s.cout.is_multiple_of(L)
        && (s.kdim() + 1) * (s.cout / L * L) + s.in_size() <= s.oh() * s.ow() * s.kdim();
    forward_multi_with(x, w, b, n, s, scratch, y, planes);
}

/// [`forward_multi`], the remainder channels to the plane tiles or not.
#[allow(clippy::too_many_arguments)]
fn forward_multi_with(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    s: &ConvShape,
    scratch: &mut [f32],
    y: &mut [f32],
    planes: bool,
) {
    let (kdim, cout, cin) = (s.kdim(), s.cout, s.cin);
    // Channels in vectors: the padded weights' row length.
    let np = if planes {
        cout / L * L
    } else {
        cout.div_ceil(L) * L
    };
    // The weights, bias as the last row, padded to whole vectors and laid out group by
    // group of channel vectors (one group per tile shape below), each group's rows
    // contiguous from a 64-byte boundary: a tile then streams whole cache lines, none split
    // between two loads. (Rows of all `np` channels would have a tile of two vectors read
    // a third of each row, across lines.)
    let need = (kdim + 1) * np + if planes { s.in_size() } else { 0 };
    let skip = match scratch.as_ptr().align_offset(64) {
        a if a < ALIGN_SLACK && need + a <= scratch.len() => a,
        _ => 0,
    };
    let (wp, xt) = scratch[skip..].split_at_mut((kdim + 1) * np);
    let groups = groups(np / L, cin);
    let mut at = 0;
    for &(v0, nv) in &groups {
        for src in w.chunks_exact(cout).chain([b]) {
            let dst = &mut wp[at..at + nv * L];
            let c0 = (v0 * L).min(cout);
            let m = (cout - c0).min(nv * L);
            dst[..m].copy_from_slice(&src[c0..c0 + m]);
            dst[m..].fill(0.0);
            at += nv * L;
        }
    }
    let wp = &*wp;
    let plane = s.h * s.w;
    let pos = s.oh() * s.ow();
    let images = x
        .chunks_exact(s.in_size())
        .zip(y.chunks_exact_mut(s.out_size()));
    for (img, yi) in images.take(n) {
        // One input channel and 5×5 kernels (LeNet-5's first layer): a kernel row is 5 taps
        // known at compile time, so the tiles' inner loop unrolls (conv1 alone: 15% faster).
        if cin == 1 && s.k == 5 {
            image_tiles::<5>(img, s, wp, &groups, pos, yi);
        } else {
            image_tiles::<0>(img, s, wp, &groups, pos, yi);
        }
        if !planes {
            continue;
        }
        let xt = &mut xt[..s.in_size()];
        to_planes(img, cin, plane, xt);
        let xt = &*xt;
        let mut c0 = np;
        while cout - c0 >= G {
            plane_tiles::<G>(xt, w, b, s, c0, yi);
            c0 += G;
        }
        match cout - c0 {
            2 => plane_tiles::<2>(xt, w, b, s, c0, yi),
            1 => plane_tiles::<1>(xt, w, b, s, c0, yi),
            _ => {}
        }
    }
}

/// One image's position tiles, group by group of channel vectors (see [`groups`]), each
/// group's weights `wp`'s next `(kdim + 1)` rows of its vectors. `RUN` is the length of a
/// kernel row's run of inputs (`k·c_in`) when known at compile time, 0 otherwise.
fn image_tiles<const RUN: usize>(
    img: &[f32],
    s: &ConvShape,
    wp: &[f32],
    groups: &[(usize, usize)],
    pos: usize,
    y: &mut [f32],
) {
    let mut at = 0;
    for &(v0, nv) in groups {
        let wg = &wp[at..at + (s.kdim() + 1) * nv * L];
        match (nv, s.cin) {
            (6, _) => tiles::<2, 6, RUN>(img, s, wg, v0, pos, y),
            (3, _) => tiles::<3, 3, RUN>(img, s, wg, v0, pos, y),
            (2, 1) => tiles::<5, 2, RUN>(img, s, wg, v0, pos, y),
            (2, _) => tiles::<6, 2, RUN>(img, s, wg, v0, pos, y),
            _ => tiles::<8, 1, RUN>(img, s, wg, v0, pos, y),
        }
        at += wg.len();
    }
}

/// Most floats of scratch [`forward_multi`] skips to align the packed weights to 64 bytes
/// (when the scratch has room to spare).
const ALIGN_SLACK: usize = 16;

/// The groups `(first vector, vectors)` that `nvec` vectors of output channels go to
/// tiles in, one tile shape per group size (see [`image_tiles`]).
///
/// With several input channels (hundreds of taps a tile), pairs of vectors against six
/// positions: a tile reads its weights once per six positions, where six vectors against
/// two positions read three times as many weights per output. An odd vector out goes to a
/// group of three (a lone vector's tile broadcasts an input for every multiply-add). With
/// one input channel (25 taps), six vectors at a time, then three, then what is left with
/// more positions per tile.
fn groups(nvec: usize, cin: usize) -> Vec<(usize, usize)> {
    let mut sizes = Vec::new();
    if cin > 1 {
        if nvec % 2 == 1 && nvec >= 3 {
            sizes.push(3);
        }
        let left = nvec - sizes.len() * 3;
        sizes.extend(std::iter::repeat_n(2, left / 2));
        sizes.extend(std::iter::repeat_n(1, left % 2));
    } else {
        let mut left = nvec;
        for nv in [6, 3, 2, 1] {
            sizes.extend(std::iter::repeat_n(nv, left / nv));
            left %= nv;
        }
    }
    let mut v0 = 0;
    sizes
        .into_iter()
        .map(|nv| {
            v0 += nv;
            (v0 - nv, nv)
        })
        .collect()
}

/// All position tiles of one image for channel vectors `v0..v0 + NV`. The last tile may
/// run past the positions: it repeats the last one and stores only the real ones (cheaper
/// than one position at a time, whose lone accumulators wait on each other).
///
/// Compiled per target with [`tile`] inlined: conv1's tiles are 25 unrolled taps, and a
/// call per tile through the clone dispatch took a seventh of the layer (155 → 135 ms alone).
#[multiversion(targets("x86_64+avx2+fma"))]
fn tiles<const P: usize, const NV: usize, const RUN: usize>(
    img: &[f32],
    s: &ConvShape,
    wg: &[f32],
    v0: usize,
    pos: usize,
    y: &mut [f32],
) {
    let fma = multiversion::target::target_cfg_f!(target_feature = "fma");
    // Where each position's inputs start in the image, position by position (a division
    // per position cost as much as conv1's multiply-adds); past the end, the last one.
    let (mut oy, mut ox, mut last) = (0, 0, 0);
    for p0 in (0..pos).step_by(P) {
        let mut at = [0; P];
        for (i, a) in at.iter_mut().enumerate() {
            if p0 + i < pos {
                last = (oy * s.w + ox) * s.cin;
                ox += 1;
                if ox == s.ow() {
                    (oy, ox) = (oy + 1, 0);
                }
            }
            *a = last;
        }
        tile::<P, NV, RUN>(img, s, wg, v0, p0, &at, pos, y, fma);
    }
}

/// One tile of [`tiles`]: `P` positions from `at` × `NV` channel vectors. Inlined, so it is
/// compiled as the caller's clone (`fma` is that clone's constant).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile<const P: usize, const NV: usize, const RUN: usize>(
    img: &[f32],
    s: &ConvShape,
    wg: &[f32],
    v0: usize,
    p0: usize,
    at: &[usize; P],
    pos: usize,
    y: &mut [f32],
    fma: bool,
) {
    let (k, cin, cout) = (s.k, s.cin, s.cout);
    debug_assert!(RUN == 0 || RUN == k * cin);
    let run = if RUN > 0 { RUN } else { k * cin };
    let mut acc = [vectors::<NV>(&wg[s.kdim() * NV * L..]); P];
    for dy in 0..k {
        // Each position's run of inputs for kernel row `dy`.
        let mut runs: [&[f32]; P] = [&[]; P];
        for (r, &a) in runs.iter_mut().zip(at) {
            *r = &img[a + dy * s.w * cin..a + dy * s.w * cin + run];
        }
        acc = panel::<P, NV, RUN>(acc, &runs, &wg[dy * run * NV * L..], fma);
    }
    store_rows(&std::hint::black_box(acc), y, p0, pos - p0, cout, v0 * L);
}

/// `img` (`plane` positions × `cin` channels) as `cin` planes of `plane` positions, eight
/// positions at a time so that each plane gets whole vectors (a position-by-position
/// scatter cost more than the plane tiles it feeds).
#[multiversion(targets("x86_64+avx2"))]
fn to_planes(img: &[f32], cin: usize, plane: usize, xt: &mut [f32]) {
    let blocks = img.chunks_exact(L * cin);
    let rest = blocks.remainder();
    for (b, block) in blocks.enumerate() {
        let mut rows: [&[f32]; L] = [&[]; L];
        for (r, px) in rows.iter_mut().zip(block.chunks_exact(cin)) {
            *r = px;
        }
        for (c, dst) in xt.chunks_exact_mut(plane).enumerate() {
            let mut v = [0.0f32; L];
            for (o, r) in v.iter_mut().zip(&rows) {
                *o = r[c];
            }
            dst[b * L..b * L + L].copy_from_slice(&v);
        }
    }
    let p0 = plane - rest.len() / cin.max(1);
    for (p, px) in rest.chunks_exact(cin).enumerate() {
        for (dst, &v) in xt.chunks_exact_mut(plane).zip(px) {
            dst[p0 + p] = v;
        }
    }
}

/// Output rows per [`plane_tile`]: 4 rows × 3 channels of accumulators, the 3 weights and
/// an input vector fill the 16 vector registers. Each step of a tile is 4 input-row loads
/// and 3 weight broadcasts for 12 multiply-adds, on `c_in` planes of `h·w` (a row's inputs
/// contiguous).
const ROWS: usize = 4;

/// All tiles of one image for output channels `c0..c0 + C`: [`ROWS`] output rows at a time
/// (the last tile repeats the last row and stores only the real ones), one vector of
/// columns at a time (the last vector ends at the row's end, overlapping the one before,
/// whose columns it does not store again).
fn plane_tiles<const C: usize>(
    xt: &[f32],
    w: &[f32],
    b: &[f32],
    s: &ConvShape,
    c0: usize,
    y: &mut [f32],
) {
    let ow = s.ow();
    for y0 in (0..s.oh()).step_by(ROWS) {
        for x0 in (0..ow).step_by(L) {
            plane_tile::<C>(xt, w, b, s, c0, y0, x0.min(ow - L), x0, y);
        }
    }
}

/// One tile: output rows `y0..y0 + ROWS` (as far as they go), columns `x0..x0 + L` of
/// which those from `from` are stored, channels `c0..c0 + C`.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx2+fma"))]
fn plane_tile<const C: usize>(
    xt: &[f32],
    w: &[f32],
    b: &[f32],
    s: &ConvShape,
    c0: usize,
    y0: usize,
    x0: usize,
    from: usize,
    y: &mut [f32],
) {
    let fma = multiversion::target::target_cfg_f!(target_feature = "fma");
    let (k, cin, wd, oh, ow, cout) = (s.k, s.cin, s.w, s.oh(), s.ow(), s.cout);
    let plane = s.h * wd;
    let mut acc = [[[0.0f32; L]; C]; ROWS];
    for ar in acc.iter_mut() {
        for (c, a) in ar.iter_mut().enumerate() {
            *a = [b[c0 + c]; L];
        }
    }
    // Where each tile row's inputs start in a channel plane.
    let mut at = [0; ROWS];
    for (r, a) in at.iter_mut().enumerate() {
        *a = (y0 + r).min(oh - 1) * wd + x0;
    }
    // One kernel offset (dy, dx) at a time: `c_in` weight rows against each tile row's
    // inputs at that offset in every channel plane.
    let run = (cin - 1) * plane + L;
    for (t, wt) in w[..s.kdim() * cout].chunks_exact(cin * cout).enumerate() {
        let off = t / k * wd + t % k;
        let mut rows: [&[f32]; ROWS] = [&[]; ROWS];
        for (row, &a) in rows.iter_mut().zip(&at) {
            *row = &xt[a + off..a + off + run];
        }
        acc = plane_panel(acc, &rows, wt, cout, c0, plane, fma);
    }
    for (r, ar) in std::hint::black_box(acc).iter().enumerate().take(oh - y0) {
        let row = &mut y[(y0 + r) * ow * cout..(y0 + r + 1) * ow * cout];
        for (c, av) in ar.iter().enumerate() {
            for (l, &v) in av.iter().enumerate().skip(from - x0) {
                row[(x0 + l) * cout + c0 + c] = v;
            }
        }
    }
}

/// `acc[r][c] += Σ_ci rows[r][ci·plane ..][..L] · wt[ci·cout + c0 + c]`: one kernel
/// offset of a [`plane_tile`], over the input channels. Inlined into the multiversioned
/// caller, with the accumulators passed by value so that they stay in registers.
#[inline(always)]
fn plane_panel<const C: usize>(
    mut acc: [[[f32; L]; C]; ROWS],
    rows: &[&[f32]; ROWS],
    wt: &[f32],
    cout: usize,
    c0: usize,
    plane: usize,
    fma: bool,
) -> [[[f32; L]; C]; ROWS] {
    for (ci, wr) in wt.chunks_exact(cout).enumerate() {
        // Each weight splat to a vector straight from memory (a broadcast load, no shuffle).
        let mut wv = [[0.0f32; L]; C];
        for (v, &x) in wv.iter_mut().zip(&wr[c0..c0 + C]) {
            *v = [x; L];
        }
        let o = ci * plane;
        for (ar, row) in acc.iter_mut().zip(rows) {
            let xv: [f32; L] = row[o..o + L].try_into().expect("a vector");
            for (av, wc) in ar.iter_mut().zip(&wv) {
                for ((al, &xl), &w) in av.iter_mut().zip(&xv).zip(wc) {
                    *al = madd(xl, w, *al, fma);
                }
            }
        }
    }
    acc
}

/// `NV` vectors from the front of `s`.
#[inline(always)]
fn vectors<const NV: usize>(s: &[f32]) -> [[f32; L]; NV] {
    let mut v = [[0.0f32; L]; NV];
    for (i, x) in v.iter_mut().enumerate() {
        x.copy_from_slice(&s[i * L..i * L + L]);
    }
    v
}

/// `acc[i][v] += Σ_j runs[i][j] · b[j·NV·L + v·L ..][..L]`: one register tile of a GEMM
/// whose left-hand rows are read where they lie (each element broadcast in turn) and whose
/// right-hand rows are `NV` contiguous vectors. Inlined into multiversioned callers, so it
/// is compiled as their clone, closures included (the kernels here otherwise use plain
/// loops: a closure that is not inlined would be a call to baseline code).
///
/// The taps go four at a time, each position's four inputs one fixed-size slice: one bounds
/// check and one loop branch per four taps instead of per tap (LeNet-5's conv2 alone: 462
/// → 438 ms for 10k images). `RUN`, when not 0, is the runs' length known at compile time:
/// the loop over the taps then unrolls whole (conv1's 5). Each accumulator adds its terms
/// in `j` order either way.
#[inline(always)]
fn panel<const P: usize, const NV: usize, const RUN: usize>(
    mut acc: [[[f32; L]; NV]; P],
    runs: &[&[f32]; P],
    b: &[f32],
    fma: bool,
) -> [[[f32; L]; NV]; P] {
    // Every run cut to one length, so that indexing them below needs no bounds checks.
    let k = if RUN > 0 { RUN } else { runs[0].len() };
    let mut cut: [&[f32]; P] = [&[]; P];
    for (c, r) in cut.iter_mut().zip(runs) {
        *c = &r[..k];
    }
    let runs = cut;
    // Taps per block.
    const U: usize = 4;
    let blocks = if RUN > 0 { 0 } else { k / U };
    for jb in 0..blocks {
        let rb: [&[f32; U]; P] =
            std::array::from_fn(|i| runs[i][jb * U..][..U].try_into().unwrap());
        let rows = &b[jb * U * NV * L..][..U * NV * L];
        for t in 0..U {
            acc = tap::<P, NV>(acc, |i| rb[i][t], &rows[t * NV * L..][..NV * L], fma);
        }
    }
    for (j, row) in b[..k * NV * L]
        .chunks_exact(NV * L)
        .enumerate()
        .skip(blocks * U)
    {
        acc = tap::<P, NV>(acc, |i| runs[i][j], row, fma);
    }
    acc
}

/// One tap of [`panel`]: `acc[i][v] += x(i) · row[v·L ..][..L]`. The loops go so that LLVM
/// keeps the tile in the 16 vector registers: with more positions than vectors, the `NV`
/// weight vectors are loaded once and each position's input broadcast straight from memory
/// against them (`NV + 1` registers beside the accumulators); otherwise the `P` inputs are
/// broadcast first and each weight vector taken in turn (`P + 1`).
#[inline(always)]
fn tap<const P: usize, const NV: usize>(
    mut acc: [[[f32; L]; NV]; P],
    x: impl Fn(usize) -> f32,
    row: &[f32],
    fma: bool,
) -> [[[f32; L]; NV]; P] {
    if P > NV {
        let wv = vectors::<NV>(row);
        for (i, ai) in acc.iter_mut().enumerate() {
            let a = x(i);
            for (av, bv) in ai.iter_mut().zip(&wv) {
                for (al, &bl) in av.iter_mut().zip(bv) {
                    *al = madd(a, bl, *al, fma);
                }
            }
        }
    } else {
        let mut a = [0.0f32; P];
        for (i, a) in a.iter_mut().enumerate() {
            *a = x(i);
        }
        for (v, bv) in row.chunks_exact(L).enumerate() {
            for (ai, &a) in acc.iter_mut().zip(&a) {
                for (al, &bl) in ai[v].iter_mut().zip(bv) {
                    *al = madd(a, bl, *al, fma);
                }
            }
        }
    }
    acc
}

/// Writes the first `rows` tile rows `i` to `y` rows `r0 + i` (`cols` wide), columns from
/// `c0`, as far as `cols` goes.
///
/// When the tile holds every column, the last vector in part with no more spare lanes than
/// columns (LeNet-5's conv1: 20 channels in 3 vectors), a row with another after it in `y`
/// is stored as whole vectors: the spare lanes land on the next row's first columns, which
/// that row's store (later in this tile, or in the next one) overwrites. Lane by lane, the
/// partial vector took an eighth of conv1's time.
#[inline(always)]
fn store_rows<const P: usize, const NV: usize>(
    acc: &[[[f32; L]; NV]; P],
    y: &mut [f32],
    r0: usize,
    rows: usize,
    cols: usize,
    c0: usize,
) {
    let spill = c0 == 0 && !cols.is_multiple_of(L) && cols.div_ceil(L) == NV && 2 * cols >= NV * L;
    for (i, ai) in acc.iter().enumerate().take(rows) {
        let at = (r0 + i) * cols;
        if spill && at + NV * L <= y.len() {
            for (v, av) in ai.iter().enumerate() {
                y[at + v * L..at + v * L + L].copy_from_slice(av);
            }
            continue;
        }
        let out = &mut y[at..at + cols];
        for (v, av) in ai.iter().enumerate() {
            let c = c0 + v * L;
            // A whole vector as one fixed-size store (a variable length is a memcpy call).
            if c + L <= cols {
                out[c..c + L].copy_from_slice(av);
            } else if c < cols {
                // Lane by lane: a few floats, where a memcpy call would cost more.
                for (o, &v) in out[c..].iter_mut().zip(av) {
                    *o = std::hint::black_box(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::check::*;
    use crate::layers::conv;

    /// Inputs of `n` images, weights and bias for `sh`, uniform in [-1, 1].
    fn random_layer(sh: &ConvShape, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut g = rng(seed);
        let x = uniform(&mut g, n * sh.in_size(), -1.0, 1.0);
        let w = uniform(&mut g, sh.kdim() * sh.cout, -1.0, 1.0);
        let b = uniform(&mut g, sh.cout, -1.0, 1.0);
        (x, w, b)
    }

    fn shapes() -> [ConvShape; 3] {
        let s = |h, w, cout, k| ConvShape {
            h,
            w,
            cin: 1,
            cout,
            k,
        };
        // LeNet-5's first layer at 3 channels; 5 channels (a partial group) on 8- and
        // 16-column rows with 3×3 and 5×5 kernels.
        [s(28, 28, 3, 5), s(10, 12, 5, 5), s(7, 18, 6, 3)]
    }

    /// Whether `forward_multi` runs its AVX2 + FMA clone here (fused multiply-adds).
    fn fma_clone_runs() -> bool {
        #[cfg(target_arch = "x86_64")]
        return std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma");
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    #[test]
    fn multi_channel_forward_matches_im2col() {
        let s = |h, w, cin, cout, k| ConvShape { h, w, cin, cout, k };
        // LeNet-5's first layer at 20 channels, its second at (3,9,4) and (20,50,100) sizes; 3
        // vectors of channels plus 1 and plus 2 over 7×7 outputs (positions left over by every
        // tile size); one vector, one channel; one input channel and 5×5 kernels (unrolled
        // runs) in groups of 6 and 1 vectors, and of 2.
        for (i, sh) in [
            s(28, 28, 1, 20, 5),
            s(12, 12, 3, 9, 5),
            s(12, 12, 20, 50, 5),
            s(9, 9, 2, 30, 3),
            s(9, 9, 2, 40, 3),
            s(9, 9, 4, 1, 5),
            s(12, 12, 1, 56, 5),
            s(12, 12, 1, 16, 5),
        ]
        .into_iter()
        .enumerate()
        {
            assert!(applies_multi(&sh), "{sh:?}");
            let n = 2;
            let (x, w, b) = random_layer(&sh, n, 40 + i as u64);
            let mut col = vec![0.0; sh.col_len(n)];
            let mut want = vec![0.0; n * sh.out_size()];
            conv::forward_im2col(&x, &w, &b, n, &sh, &mut col, &mut want);
            let mut y = vec![f32::NAN; n * sh.out_size()];
            forward_multi(&x, &w, &b, n, &sh, &mut col, &mut y);
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() < 1e-4, "{sh:?}: {a} vs {e}");
            }
            // Whatever the tiles, each output sums its taps in one order: the same bits as
            // the direct convolution.
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            let naive = conv_naive(&x, &w, &b, n, &sh, fma_clone_runs());
            assert_eq!(bits(&y), bits(&naive), "{sh:?}");
        }
        // No room for the padded weights in one image's scratch, or too many channels.
        assert!(!applies_multi(&s(5, 5, 2, 30, 5)));
        assert!(!applies_multi(&s(12, 12, 20, 72, 5)));
    }

    /// Remainder channels in plane tiles or in a padded channel vector: the same order of
    /// sums, the same bits, on the LeNet-5 second layers and on shapes with partial tiles
    /// of rows, columns and channels.
    #[test]
    fn remainder_channels_in_planes_give_the_same_bits() {
        let s = |h, w, cin, cout, k| ConvShape { h, w, cin, cout, k };
        for (i, sh) in [
            s(12, 12, 3, 9, 5),
            s(12, 12, 20, 50, 5),
            s(15, 13, 2, 7, 3),
            s(10, 20, 5, 2, 3),
            s(10, 20, 5, 12, 3),
            s(14, 14, 6, 63, 5),
        ]
        .into_iter()
        .enumerate()
        {
            let n = 2;
            let (x, w, b) = random_layer(&sh, n, 60 + i as u64);
            let mut col = vec![0.0; sh.col_len(n)];
            let mut want = vec![f32::NAN; n * sh.out_size()];
            forward_multi_with(&x, &w, &b, n, &sh, &mut col, &mut want, false);
            let mut y = vec![f32::NAN; n * sh.out_size()];
            forward_multi_with(&x, &w, &b, n, &sh, &mut col, &mut y, true);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&y), bits(&want), "{sh:?}");
        }
    }

    /// Every vector of channels in exactly one group, in order, each group a size the
    /// dispatch has a tile for.
    #[test]
    fn groups_cover_every_vector_once() {
        for cin in [1, 2, 20] {
            for nvec in 1..=MAX_VECS {
                let g = groups(nvec, cin);
                let mut next = 0;
                for &(v0, nv) in &g {
                    assert_eq!(v0, next, "{nvec} vectors, {cin} inputs: {g:?}");
                    assert!([1, 2, 3, 6].contains(&nv), "{g:?}");
                    next += nv;
                }
                assert_eq!(next, nvec, "{g:?}");
            }
        }
        // Two-vector groups where there are several input channels.
        assert_eq!(groups(6, 20), [(0, 2), (2, 2), (4, 2)]);
        assert_eq!(groups(5, 20), [(0, 3), (3, 2)]);
        assert_eq!(groups(3, 1), [(0, 3)]);
    }

    #[test]
    fn row_kernels_apply_to_narrow_single_channel_layers() {
        assert!(shapes().iter().all(applies));
        let lenet = ConvShape {
            h: 28,
            w: 28,
            cin: 1,
            cout: 7,
            k: 5,
        };
        assert!(applies(&lenet));
        assert!(!applies(&ConvShape { cout: 8, ..lenet }));
        assert!(!applies(&ConvShape { cin: 2, ..lenet }));
        assert!(!applies(&ConvShape { w: 27, ..lenet }));
        assert!(!applies(&ConvShape { w: 36, ..lenet }));
    }

    /// The direct kernels against the im2col path (itself checked against the definition
    /// and by finite differences in `conv`).
    #[test]
    fn forward_and_weight_gradients_match_im2col() {
        for (i, s) in shapes().into_iter().enumerate() {
            let n = 3;
            let mut g = rng(20 + i as u64);
            let x = uniform(&mut g, n * s.in_size(), -1.0, 1.0);
            let w = uniform(&mut g, s.kdim() * s.cout, -1.0, 1.0);
            let b = uniform(&mut g, s.cout, -1.0, 1.0);
            let r = uniform(&mut g, n * s.out_size(), -1.0, 1.0);
            let mut col = vec![0.0; s.col_len(n)];
            let mut want = vec![0.0; n * s.out_size()];
            conv::forward_im2col(&x, &w, &b, n, &s, &mut col, &mut want);
            let mut y = vec![f32::NAN; n * s.out_size()];
            forward(&x, &w, &b, n, &s, &mut y);
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() < 1e-4, "{s:?}: {a} vs {e}");
            }

            let (mut dw0, mut db0) = (vec![0.0; w.len()], vec![0.0; s.cout]);
            conv::backward_im2col(&x, &w, &r, n, &s, &mut col, false, &mut dw0, &mut db0, None);
            let (mut dw, mut db) = (vec![f32::NAN; w.len()], vec![f32::NAN; s.cout]);
            backward_weights(&x, &r, n, &s, &mut dw, &mut db);
            for (a, e) in dw.iter().zip(&dw0).chain(db.iter().zip(&db0)) {
                assert!((a - e).abs() < 1e-3, "{s:?}: {a} vs {e}");
            }
        }
    }
}
