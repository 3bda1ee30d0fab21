//! The one definition of a state: neuron `i` is on iff its output is `> 0` (so `0.0`, `-0.0`
//! and NaN are off), stored at bit `i % 64` of `u64` word `i / 64`, least significant bit
//! first. This is TensorState's byte order read as little-endian words, so a state's value as
//! an unsigned integer has bit `i` = neuron `i`.

use ndarray::ArrayView2;

/// Number of `u64` words holding the state of `neurons` neurons.
pub const fn words_for(neurons: usize) -> usize {
    neurons.div_ceil(64)
}

/// Packs one row of activations (one observed state) into `out`, which must hold exactly
/// [`words_for`]`(row.len())` words.
#[inline]
pub fn pack_row(row: &[f32], out: &mut [u64]) {
    pack_row_with(row, out, group_bits);
}

/// [`pack_row`] with `group` giving the states of 8 values as the low 8 bits: the portable
/// [`group_bits`], or an AVX compare and mask move in `pack_flat`'s AVX2 clone (always
/// inlined, so that clone compiles it, and the group, as its own).
#[inline(always)]
fn pack_row_with(row: &[f32], out: &mut [u64], group: impl Fn(&[f32]) -> u64) {
    debug_assert_eq!(out.len(), words_for(row.len()));
    for (word, values) in out.iter_mut().zip(row.chunks(64)) {
        let mut bits = 0u64;
        let groups = values.chunks_exact(8);
        let rest = groups.remainder();
        for (g, v) in groups.enumerate() {
            bits |= group(v) << (8 * g);
        }
        let base = values.len() - rest.len();
        if !rest.is_empty() && values.len() >= 8 {
            // The last 8 values as one more group, overlapping the one before; only the
            // bits of the `rest` values are kept.
            bits |= (group(&values[values.len() - 8..]) >> (8 - rest.len())) << base;
        } else {
            for (i, &x) in rest.iter().enumerate() {
                bits |= u64::from(on(x)) << (base + i);
            }
        }
        *word = bits;
    }
}

/// The states of 8 values as the low 8 bits: one vector compare makes 8 bytes of 0 or 1,
/// and one multiplication gathers them (byte `i`'s bit lands at bit `56 + i`; no partial
/// products overlap), where bit-by-bit shifts and ors compiled to a long shuffle chain.
#[inline(always)]
fn group_bits(v: &[f32]) -> u64 {
    let mut bytes = [0u8; 8];
    for (b, &x) in bytes.iter_mut().zip(&v[..8]) {
        *b = u8::from(on(x));
    }
    u64::from_le_bytes(bytes).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// The state rule for one neuron: on iff its output is `> 0`, false for NaN, 0.0 and -0.0.
#[inline(always)]
pub fn on(x: f32) -> bool {
    x > 0.0
}

/// Packs every row of `acts` (observations × neurons) and appends the words to `out`, row
/// after row.
pub fn pack_rows(acts: ArrayView2<'_, f32>, out: &mut Vec<u64>) {
    let (rows, neurons) = acts.dim();
    let words = words_for(neurons);
    let start = out.len();
    out.resize(start + rows * words, 0);
    if neurons == 0 {
        return;
    }
    match acts.as_slice() {
        Some(flat) => pack_flat(flat, neurons, &mut out[start..]),
        None => pack_strided(acts, &mut out[start..]),
    }
}

/// [`pack_rows`] of a standard-layout matrix. On x86-64 with AVX (chosen at run time),
/// each group of 8 neurons is one vector compare and one mask move: LLVM does not find
/// that instruction in the portable code, which it compiles to long shuffle chains.
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn pack_flat(flat: &[f32], neurons: usize, dest: &mut [u64]) {
    #[multiversion::target::target_cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    #[target_feature(enable = "avx")]
    fn rows(flat: &[f32], neurons: usize, dest: &mut [u64]) {
        use std::arch::x86_64::{_mm256_cmp_ps, _mm256_movemask_ps, _mm256_setr_ps};
        use std::arch::x86_64::{_mm256_setzero_ps, _CMP_GT_OQ};
        // Bit i of the result: v[i] > 0 (false for NaN, ±0), as `on`.
        let group = |v: &[f32]| {
            let x = _mm256_setr_ps(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_setzero_ps());
            u64::from(_mm256_movemask_ps(gt) as u8)
        };
        pack_flat_with(flat, neurons, dest, group);
    }
    #[multiversion::target::target_cfg(not(all(target_arch = "x86_64", target_feature = "avx2")))]
    fn rows(flat: &[f32], neurons: usize, dest: &mut [u64]) {
        pack_flat_with(flat, neurons, dest, group_bits);
    }
    rows(flat, neurons, dest);
}

/// [`pack_flat`] with `group` as in [`pack_row_with`]. States of one word go eight rows at
/// a time: their `8 · neurons` values are whole groups of 8, so the rows' bits are
/// `neurons` bytes made a group at a time, and each row's word is read from them at its bit
/// offset. A row at a time, each row paid a loop over words and groups and a tail: 1.8
/// times as long for LeNet-5's 20-neuron conv1 (criterion, `pack_rows_conv1`).
#[inline(always)]
fn pack_flat_with(flat: &[f32], neurons: usize, dest: &mut [u64], group: impl Fn(&[f32]) -> u64) {
    let words = words_for(neurons);
    let mut done = 0;
    if words == 1 {
        // Bits of 8 rows, and 8 bytes beyond them for the last row's 16-byte read.
        let mut bits = [0u8; 64 + 8];
        let mask = u64::MAX >> (64 - neurons);
        let blocks = flat.chunks_exact(8 * neurons).zip(dest.chunks_exact_mut(8));
        for (values, out) in blocks {
            for (b, v) in bits.iter_mut().zip(values.chunks_exact(8)) {
                *b = group(v) as u8;
            }
            for (r, word) in out.iter_mut().enumerate() {
                let at = r * neurons;
                let pair: [u8; 16] = bits[at / 8..at / 8 + 16].try_into().expect("16 bytes");
                *word = (u128::from_le_bytes(pair) >> (at % 8)) as u64 & mask;
            }
            done += 8;
        }
    }
    let rest = flat[done * neurons..].chunks_exact(neurons);
    for (row, out) in rest.zip(dest[done * words..].chunks_exact_mut(words)) {
        pack_row_with(row, out, &group);
    }
}

fn pack_strided(acts: ArrayView2<'_, f32>, dest: &mut [u64]) {
    let words = words_for(acts.ncols());
    let mut buf = vec![0f32; acts.ncols()];
    for (row, w) in acts.rows().into_iter().zip(dest.chunks_exact_mut(words)) {
        for (b, &x) in buf.iter_mut().zip(row.iter()) {
            *b = x;
        }
        pack_row(&buf, w);
    }
}

/// Packs a channel-major block: `block` holds `neurons` planes of `positions` values each
/// (one image of an NCHW array: value of neuron `c` at position `p` is
/// `block[c * positions + p]`), giving one state per position, appended to `out`.
pub fn pack_planes(block: &[f32], neurons: usize, positions: usize, out: &mut Vec<u64>) {
    debug_assert_eq!(block.len(), neurons * positions);
    let words = words_for(neurons);
    let start = out.len();
    out.resize(start + positions * words, 0);
    let dest = &mut out[start..];
    for (c, plane) in block
        .chunks_exact(positions.max(1))
        .enumerate()
        .take(neurons)
    {
        let (word, bit) = (c / 64, c % 64);
        for (p, &x) in plane.iter().enumerate() {
            dest[p * words + word] |= u64::from(on(x)) << bit;
        }
    }
}

/// Reads bit `neuron` of a packed state.
pub fn is_on(state: &[u64], neuron: usize) -> bool {
    state[neuron / 64] >> (neuron % 64) & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn zero_negative_zero_and_nan_are_off() {
        let row = [
            1.0,
            0.0,
            -0.0,
            f32::NAN,
            -1.0,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            1e-45,
        ];
        let mut w = [0u64; 1];
        pack_row(&row, &mut w);
        assert_eq!(w[0], 0b1110_0001);
    }

    /// Every row length up to three words, so every split into vector groups, overlapping
    /// tail and scalar remainder: each bit is its neuron's state.
    #[test]
    fn every_row_length_packs_each_neuron() {
        for n in 1..=192 {
            let row: Vec<f32> = (0..n)
                .map(|i| match (i * 7 + n) % 5 {
                    0 => 1.5,
                    1 => -0.0,
                    2 => f32::NAN,
                    3 => 1e-30,
                    _ => -2.0,
                })
                .collect();
            let mut out = vec![0u64; words_for(n)];
            pack_row(&row, &mut out);
            for (i, &x) in row.iter().enumerate() {
                assert_eq!(is_on(&out, i), on(x), "row of {n}, neuron {i}");
            }
            // The same row through pack_rows (its AVX clone on such a machine), 11 rows
            // (a block of 8 and 3 left over), each rotated by its index.
            let rotated = |r: usize| -> Vec<f32> { (0..n).map(|i| row[(i + r) % n]).collect() };
            let flat: Vec<f32> = (0..11).flat_map(rotated).collect();
            let mut packed = Vec::new();
            pack_rows(ArrayView2::from_shape((11, n), &flat).unwrap(), &mut packed);
            let mut want = Vec::new();
            for r in 0..11 {
                let mut w = vec![0u64; words_for(n)];
                pack_row(&rotated(r), &mut w);
                want.extend(w);
            }
            assert_eq!(packed, want, "rows of {n}");
            if n % 64 != 0 {
                let stray = out[n / 64] >> (n % 64);
                assert_eq!(stray, 0, "row of {n}: bits past the last neuron");
            }
        }
    }

    #[test]
    fn bit_order_is_lsb_first_across_words() {
        let mut row = vec![0f32; 130];
        row[0] = 1.0;
        row[63] = 1.0;
        row[64] = 2.0;
        row[129] = 3.0;
        let mut w = vec![0u64; words_for(130)];
        pack_row(&row, &mut w);
        assert_eq!(w, vec![1 | 1 << 63, 1, 0b10]);
        assert!(is_on(&w, 129) && !is_on(&w, 128));
    }

    #[test]
    fn rows_and_planes_agree() {
        // 2 images × 3 channels × 4 positions, NCHW, versus the same data as rows.
        let vals: Vec<f32> = (0..24).map(|i| ((i * 7 % 5) as f32) - 2.0).collect();
        let mut planes = Vec::new();
        for img in vals.chunks(12) {
            pack_planes(img, 3, 4, &mut planes);
        }
        let mut rows = Array2::<f32>::zeros((8, 3));
        for n in 0..2 {
            for c in 0..3 {
                for p in 0..4 {
                    rows[[n * 4 + p, c]] = vals[n * 12 + c * 4 + p];
                }
            }
        }
        let mut packed = Vec::new();
        pack_rows(rows.view(), &mut packed);
        assert_eq!(planes, packed);
        // A non-contiguous view (transposed twice over a column-major copy) packs the same.
        let fortran = rows.t().as_standard_layout().to_owned();
        let mut again = Vec::new();
        pack_rows(fortran.t(), &mut again);
        assert_eq!(again, packed);
    }
}
