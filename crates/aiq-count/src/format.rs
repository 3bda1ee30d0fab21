//! The counts stream (`AIQCOUNT`), written by `count-states` and read by `count-states`
//! (to merge) and `score-aiq`.
//!
//! Layout (version 4; the header is bincode with fixed-width little-endian integers, see
//! `aiq_io`):
//!
//! ```text
//! "AIQCOUNT" u32 version
//! CountsHeader                 the measurement (model, data set, split, inputs, correct,
//!                              provenance chain) and per layer name, neurons, states per
//!                              input, observations, distinct, count_bytes, record_bytes,
//!                              count profile: (count, states seen that many times) pairs
//! per layer, its distinct states strictly ascending by value, with their counts
//! (record_bytes bytes):
//!   layers of ≤ 64 neurons, in blocks of 32 records (the last one shorter):
//!     u8 widths                gap bytes g (1 to 8) in the low four bits, count bytes c
//!                              (0 to 8) in the high four
//!     n × g bytes              each state minus the one before (the layer's first: itself)
//!     n × c bytes              each count minus 1 (c = 0: every count in the block is 1)
//!   wider layers, distinct × { state: ceil(neurons / 8) bytes, count: count_bytes bytes }
//! u32 CRC-32                   of every byte between the version and itself
//! ```
//!
//! Integers are little-endian; a state's bit i is neuron i. `count_bytes` is the fewest bytes
//! (1 to 8) that hold the layer's largest count. Sorted states are close together (half of
//! LeNet-5 conv2's gaps fit 14 bits) and most are seen once, so the blocks take about half
//! the bytes of fixed-width records (version 2: LeNet-5's counts took 4.3 MB, now 2.2 MB),
//! which is what a pipe or a file between `count-states` and `score-aiq` costs; decoding
//! stays one load and mask per field. Version 1 stored whole `u64` words: 7.7 MB.
//!
//! A score needs each layer's count profile alone, which the header holds: `score-aiq`
//! checks the records against the CRC rather than decoding them
//! ([`summarize_counts_after_magic`]). Reading the records
//! ([`read_counts_after_magic`], for merging) checks them fully, the header's sizes and
//! profile included, and the CRC. Version 3 had no profile, record bytes or CRC.
//!
//! Because states are sorted and unique, two count files merge by a linear merge that adds
//! the counts of equal states: counts of shards add up to the counts of the whole.

use std::io::{self, Read, Write};

use aiq_io::{decode_bounded, encode, read_full, IoError, Output, StreamKind};
use aiq_states::MAX_NEURONS;
use serde::{Deserialize, Serialize};

use crate::{check_profile, Counts, LayerCounts, LayerSummary, Measurement, ProfileTally};

/// Format version of the counts stream; bump on any layout change.
pub const COUNTS_VERSION: u32 = 4;
const HEADER_LIMIT: u64 = 16 << 20;
/// Record bytes read at a time, so memory follows the data actually present.
const BLOCK_BYTES: usize = 1 << 16;
/// Records per delta-coded block: small enough that a block's widths follow the local
/// spacing of the states (LeNet-5 conv2: 4.7 bytes a record, against 4.9 for 64 and 5.1
/// for 128), large enough that the widths byte is a small share.
const DELTA_RECORDS: usize = 32;
/// Widest state (in bytes) stored delta-coded: one `u64` word.
const DELTA_MAX_BYTES: usize = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerHeader {
    name: String,
    neurons: u32,
    states_per_input: u32,
    observations: u64,
    distinct: u64,
    count_bytes: u8,
    /// Bytes of the layer's records.
    record_bytes: u64,
    /// `(count, states seen that many times)`, ascending: see [`crate::count_profile`].
    profile: Vec<(u64, u64)>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CountsHeader {
    measurement: Measurement,
    layers: Vec<LayerHeader>,
}

/// The fewest bytes (at least 1) that hold `max`.
fn bytes_for(max: u64) -> u8 {
    ((64 - max.leading_zeros()).div_ceil(8) as u8).max(1)
}

/// What a layer's header says of its records, found in one pass over them.
#[derive(Debug, Default)]
struct RecordStats {
    /// The largest count.
    max: u64,
    /// Bytes of the delta-coded blocks (layers of ≤ 64 neurons).
    delta_bytes: u64,
    tally: ProfileTally,
}

impl RecordStats {
    /// The stats of `piece`'s records.
    fn of(l: &LayerCounts, piece: &Piece) -> Self {
        let counts = &l.counts[piece.from..piece.to];
        let mut r = RecordStats {
            max: counts.iter().copied().max().unwrap_or(0),
            ..Default::default()
        };
        r.tally.add(counts);
        if delta_coded(l) {
            let mut prev = piece.prev(l);
            for (states, counts) in l.states[piece.from..piece.to]
                .chunks(DELTA_RECORDS)
                .zip(counts.chunks(DELTA_RECORDS))
            {
                let (g, c) = block_widths(states, counts, prev);
                r.delta_bytes += (1 + states.len() * (g + c)) as u64;
                prev = states[states.len() - 1];
            }
        }
        r
    }

    fn merge(&mut self, other: RecordStats) {
        self.max = self.max.max(other.max);
        self.delta_bytes += other.delta_bytes;
        self.tally.merge(other.tally);
    }
}

/// Whether a layer's records are delta-coded blocks (states of one word).
fn delta_coded(l: &LayerCounts) -> bool {
    (l.neurons as usize).div_ceil(8) <= DELTA_MAX_BYTES
}

/// Records of a layer sized, encoded and checksummed at a time, on the pool's threads: whole
/// delta blocks, so a piece's bytes are the same wherever it is encoded.
const PIECE_RECORDS: usize = if cfg!(test) {
    4 * DELTA_RECORDS
} else {
    1 << 17
};

/// Records `from..to` of layer `layer`.
#[derive(Debug)]
struct Piece {
    layer: usize,
    from: usize,
    to: usize,
}

impl Piece {
    /// The state before the piece's first, which its first gap is taken from.
    fn prev(&self, l: &LayerCounts) -> u64 {
        if self.from > 0 && delta_coded(l) {
            l.states[self.from - 1]
        } else {
            0
        }
    }
}

/// A counts stream's header and its records' pieces, with each piece's bytes: everything
/// the header says is found before a record is written, in one pass over the records.
struct Plan {
    header: CountsHeader,
    pieces: Vec<(Piece, u64)>,
}

impl Plan {
    fn of(counts: &Counts) -> Self {
        use rayon::prelude::*;
        let pieces: Vec<Piece> = (counts.layers.iter().enumerate())
            .flat_map(|(layer, l)| {
                (0..l.distinct())
                    .step_by(PIECE_RECORDS)
                    .map(move |from| Piece {
                        layer,
                        from,
                        to: (from + PIECE_RECORDS).min(l.distinct()),
                    })
            })
            .collect();
        let stats: Vec<RecordStats> = pieces
            .par_iter()
            .map(|p| RecordStats::of(&counts.layers[p.layer], p))
            .collect();
        let mut layers: Vec<RecordStats> =
            counts.layers.iter().map(|_| Default::default()).collect();
        let mut delta_bytes = Vec::with_capacity(pieces.len());
        for (p, st) in pieces.iter().zip(stats) {
            delta_bytes.push(st.delta_bytes);
            layers[p.layer].merge(st);
        }
        let header = CountsHeader {
            measurement: counts.measurement.clone(),
            layers: counts
                .layers
                .iter()
                .zip(layers)
                .map(|(l, st)| layer_header(l, st))
                .collect(),
        };
        let pieces = pieces
            .into_iter()
            .zip(delta_bytes)
            .map(|(p, delta)| {
                let l = &counts.layers[p.layer];
                let bytes = if delta_coded(l) {
                    delta
                } else {
                    let nb = (l.neurons as usize).div_ceil(8);
                    let cb = usize::from(header.layers[p.layer].count_bytes);
                    ((p.to - p.from) * (nb + cb)) as u64
                };
                (p, bytes)
            })
            .collect();
        Plan { header, pieces }
    }

    /// Writes the stream's magic, version and header; returns the CRC-32 of the header.
    fn write_head(&self, w: &mut impl Write, name: &str) -> Result<crc32fast::Hasher, IoError> {
        let io = |e| IoError::io(name, e);
        StreamKind::Counts
            .write_header(w, COUNTS_VERSION)
            .map_err(io)?;
        // Encoded in memory, then written at once: its fields are small writes.
        let mut head = Vec::new();
        encode(&mut head, &self.header, name)?;
        w.write_all(&head).map_err(io)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        Ok(crc)
    }
}

/// A layer's header from its records' stats.
fn layer_header(l: &LayerCounts, stats: RecordStats) -> LayerHeader {
    let nb = (l.neurons as usize).div_ceil(8);
    let count_bytes = bytes_for(stats.max);
    LayerHeader {
        name: l.name.clone(),
        neurons: l.neurons,
        states_per_input: l.states_per_input,
        observations: l.observations,
        distinct: l.distinct() as u64,
        count_bytes,
        record_bytes: if delta_coded(l) {
            stats.delta_bytes
        } else {
            (l.distinct() * (nb + usize::from(count_bytes))) as u64
        },
        profile: stats.tally.finish(),
    }
}

/// Writes `counts` as a counts stream, in order.
pub fn write_counts(w: &mut impl Write, counts: &Counts, name: &str) -> Result<(), IoError> {
    let plan = Plan::of(counts);
    let crc = plan.write_head(w, name)?;
    write_in_order(w, counts, &plan, crc, name)
}

/// Writes the records of `plan`'s pieces in order after its head (whose CRC-32 is `crc`),
/// then the checksum.
fn write_in_order(
    w: &mut impl Write,
    counts: &Counts,
    plan: &Plan,
    crc: crc32fast::Hasher,
    name: &str,
) -> Result<(), IoError> {
    let io = |e| IoError::io(name, e);
    let mut hashed = Crc32Writer { w: &mut *w, crc };
    let mut buf = Vec::with_capacity(BLOCK_BYTES + 2 * PAD);
    for (p, _) in &plan.pieces {
        let l = &counts.layers[p.layer];
        let cb = plan.header.layers[p.layer].count_bytes;
        encode_piece(l, p, cb, &mut buf, &mut hashed).map_err(io)?;
    }
    let crc = hashed.crc.finalize();
    w.write_all(&crc.to_le_bytes()).map_err(io)
}

/// Writes `counts` as a counts stream to `out`. To a file, the pieces of records are encoded
/// on the pool's threads, each written at its offset: LeNet-5's 2.2 MB took 2.8 ms to
/// encode on one thread. Elsewhere (a pipe), in order, as [`write_counts`].
pub fn write_counts_to(out: &mut Output, counts: &Counts, name: &str) -> Result<(), IoError> {
    use rayon::prelude::*;
    use std::os::unix::fs::FileExt;
    let plan = Plan::of(counts);
    let mut crc = plan.write_head(out, name)?;
    let io = |e| IoError::io(name, e);
    let Some((file, start)) = out.file_at_end().map_err(io)? else {
        return write_in_order(out, counts, &plan, crc, name);
    };
    let offsets: Vec<u64> = (plan.pieces.iter())
        .scan(start, |at, &(_, bytes)| {
            let here = *at;
            *at += bytes;
            Some(here)
        })
        .collect();
    let end = start + plan.pieces.iter().map(|&(_, bytes)| bytes).sum::<u64>();
    let crcs: Vec<io::Result<crc32fast::Hasher>> = (plan.pieces.par_iter())
        .zip(&offsets)
        .map(|((p, _), &at)| {
            let mut w = Crc32Writer {
                w: WriteAt { file, at },
                crc: crc32fast::Hasher::new(),
            };
            let cb = plan.header.layers[p.layer].count_bytes;
            let mut buf = Vec::with_capacity(BLOCK_BYTES + 2 * PAD);
            encode_piece(&counts.layers[p.layer], p, cb, &mut buf, &mut w)?;
            Ok(w.crc)
        })
        .collect();
    for piece in crcs {
        crc.combine(&piece.map_err(io)?);
    }
    file.write_all_at(&crc.finalize().to_le_bytes(), end)
        .map_err(io)?;
    out.seek_to_end().map_err(io)
}

/// Writes to a file from an offset on, which moves on with each write.
struct WriteAt<'f> {
    file: &'f std::fs::File,
    at: u64,
}

impl Write for WriteAt<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.write_at(b, self.at)?;
        self.at += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that adds what it writes to a CRC-32.
struct Crc32Writer<W> {
    w: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.w.write(b)?;
        self.crc.update(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// The bytes of a delta-coded block's gaps and counts - 1: the widths of the largest of
/// each, from their bitwise OR (0 count bytes when every count is 1).
fn block_widths(states: &[u64], counts: &[u64], prev: u64) -> (usize, usize) {
    let (mut gaps, mut over) = (0, 0);
    let mut p = prev;
    for (&state, &count) in states.iter().zip(counts) {
        gaps |= state.wrapping_sub(p);
        over |= count.wrapping_sub(1);
        p = state;
    }
    let g = usize::from(bytes_for(gaps));
    let c = if over == 0 {
        0
    } else {
        usize::from(bytes_for(over))
    };
    (g, c)
}

/// Writes a piece of a layer's records, as the counts stream stores them, to `w` through
/// `buf` (emptied whenever it holds [`BLOCK_BYTES`] or more, and at the end).
fn encode_piece(
    l: &LayerCounts,
    piece: &Piece,
    cb: u8,
    buf: &mut Vec<u8>,
    w: &mut impl Write,
) -> io::Result<()> {
    let mut flush = |buf: &mut Vec<u8>| {
        w.write_all(buf)?;
        buf.clear();
        Ok::<_, io::Error>(())
    };
    // Whole words are appended and the vector cut back to the field's bytes: fixed-size
    // copies rather than a variable-length one per field.
    let put = |buf: &mut Vec<u8>, x: u64, n: usize| {
        let at = buf.len();
        buf.extend_from_slice(&x.to_le_bytes());
        buf.truncate(at + n);
    };
    let nb = (l.neurons as usize).div_ceil(8);
    let (from, to) = (piece.from, piece.to);
    if delta_coded(l) {
        // Each field is stored as a whole word, the next one written over its spare
        // bytes: fixed-size stores into a block-sized array, then one copy out.
        let mut block = [0u8; 1 + PAD];
        let mut prev = piece.prev(l);
        for (states, counts) in l.states[from..to]
            .chunks(DELTA_RECORDS)
            .zip(l.counts[from..to].chunks(DELTA_RECORDS))
        {
            let (g, c) = block_widths(states, counts, prev);
            block[0] = (g | c << 4) as u8;
            let mut at = 1;
            for &state in states {
                block[at..at + 8].copy_from_slice(&state.wrapping_sub(prev).to_le_bytes());
                at += g;
                prev = state;
            }
            for &count in counts {
                block[at..at + 8].copy_from_slice(&count.wrapping_sub(1).to_le_bytes());
                at += c;
            }
            buf.extend_from_slice(&block[..at]);
            if buf.len() >= BLOCK_BYTES {
                flush(buf)?;
            }
        }
    } else {
        let words = l.words();
        for (state, &count) in l.states[from * words..to * words]
            .chunks_exact(words)
            .zip(&l.counts[from..to])
        {
            let mut left = nb;
            for &word in state {
                put(buf, word, left.min(8));
                left = left.saturating_sub(8);
            }
            put(buf, count, usize::from(cb));
            if buf.len() >= BLOCK_BYTES {
                flush(buf)?;
            }
        }
    }
    flush(buf)
}

/// Reads a counts stream, magic included.
pub fn read_counts(r: &mut impl Read, name: &str) -> Result<Counts, IoError> {
    StreamKind::Counts.expect_header(r, name, COUNTS_VERSION)?;
    read_counts_after_magic(r, name)
}

/// Reads a counts stream whose magic and version the caller has already read and checked.
/// Every claim of the header is checked against the data, and the stream against its CRC-32.
pub fn read_counts_after_magic(r: &mut impl Read, name: &str) -> Result<Counts, IoError> {
    // Each layer's states and counts, as far as the layers with states go.
    let mut data: Vec<(Vec<u64>, Vec<u64>)> = Vec::new();
    let (measurement, summaries) = scan_counts_after_magic(r, name, |i, _, records| {
        if data.len() <= i {
            data.resize_with(i + 1, Default::default);
        }
        let (states, counts) = &mut data[i];
        for j in 0..records.len() {
            records.push_state(j, states);
        }
        counts.extend_from_slice(records.counts());
    })?;
    let mut data = data.into_iter();
    let layers = summaries
        .into_iter()
        .map(|l| {
            let (states, counts) = data.next().unwrap_or_default();
            LayerCounts {
                name: l.name,
                neurons: l.neurons,
                states_per_input: l.states_per_input,
                observations: l.observations,
                states,
                counts,
            }
        })
        .collect();
    Ok(Counts {
        measurement,
        layers,
    })
}

/// A run of one layer's distinct states and their counts, in ascending state order, as a
/// reader hands them over, already checked.
#[derive(Debug, Clone, Copy)]
struct Records<'a> {
    counts: &'a [u64],
    states: Stored<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Stored<'a> {
    /// Records as in the stream: `state_bytes` bytes of state then the count, `record`
    /// bytes in all.
    Bytes {
        state_bytes: usize,
        record: usize,
        bytes: &'a [u8],
    },
    /// States as `words` words each.
    Words { words: usize, states: &'a [u64] },
}

impl<'a> Records<'a> {
    /// The counts, in the states' order.
    pub fn counts(&self) -> &'a [u64] {
        self.counts
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Appends the `j`-th state's `u64` words (bit `i` = neuron `i`) to `out`.
    pub fn push_state(&self, j: usize, out: &mut Vec<u64>) {
        match self.states {
            Stored::Bytes {
                state_bytes,
                record,
                bytes,
            } => {
                let s = &bytes[j * record..j * record + state_bytes];
                out.extend(s.chunks(8).map(|c| le_prefix(c, 0, c.len())));
            }
            Stored::Words { words, states } => {
                out.extend_from_slice(&states[j * words..(j + 1) * words]);
            }
        }
    }
}

/// A mask of the low `n` ≤ 8 bytes of a word.
fn low_bytes(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    }
}

/// `n` ≤ 8 little-endian bytes of `b` from `at`, as an integer: one unaligned 8-byte load
/// and a mask when 8 bytes are there (every record but the block's last few).
#[inline]
fn le_prefix(b: &[u8], at: usize, n: usize) -> u64 {
    let mask = low_bytes(n);
    match b.get(at..at + 8) {
        Some(w) => u64::from_le_bytes(w.try_into().unwrap_or([0; 8])) & mask,
        None => {
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(&b[at..at + n]);
            u64::from_le_bytes(a)
        }
    }
}

/// A stream's bytes handed out in exact amounts, read ahead at most [`BLOCK_BYTES`] (or the
/// amount asked) at a time: variable-size blocks are parsed without a read per field, and
/// memory follows what the stream really holds.
struct Feed<'r, R> {
    r: &'r mut R,
    buf: Vec<u8>,
    at: usize,
    /// Bytes handed out by [`take`](Self::take), and their CRC-32.
    taken: u64,
    crc: crc32fast::Hasher,
}

impl<'r, R: Read> Feed<'r, R> {
    /// Feeds `r`, adding to `crc` what it hands out.
    fn new(r: &'r mut R, crc: crc32fast::Hasher) -> Self {
        Feed {
            r,
            buf: Vec::new(),
            at: 0,
            taken: 0,
            crc,
        }
    }

    /// The next `n` bytes, or `Err(found)` with the bytes there were if the stream ends first.
    fn take(&mut self, n: usize) -> io::Result<Result<&[u8], usize>> {
        if let Err(found) = self.take_unhashed(n)? {
            return Ok(Err(found));
        }
        let b = &self.buf[self.at - n..self.at];
        self.crc.update(b);
        self.taken += n as u64;
        Ok(Ok(b))
    }

    /// [`take`](Self::take) without counting or hashing the bytes.
    fn take_unhashed(&mut self, n: usize) -> io::Result<Result<&[u8], usize>> {
        if self.buf.len() - self.at < n {
            self.buf.drain(..self.at);
            self.at = 0;
            let want = n.max(BLOCK_BYTES) - self.buf.len();
            self.r
                .by_ref()
                .take(want as u64)
                .read_to_end(&mut self.buf)?;
            if self.buf.len() < n {
                return Ok(Err(self.buf.len()));
            }
        }
        self.at += n;
        Ok(Ok(&self.buf[self.at - n..self.at]))
    }

    /// Whether the stream has ended with nothing left over.
    fn at_end(&mut self) -> io::Result<bool> {
        if self.at < self.buf.len() {
            return Ok(false);
        }
        let mut probe = [0u8; 1];
        loop {
            match self.r.read(&mut probe) {
                Ok(n) => return Ok(n == 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Damage found in a run of records, checked once per run before a visitor sees it.
#[derive(Debug, Default)]
struct Flags {
    out_of_order: bool,
    stray: bool,
    zero: bool,
    overflow: bool,
}

impl Flags {
    fn check(
        &self,
        layer: &LayerSummary,
        corrupt: impl Fn(String) -> IoError,
    ) -> Result<(), IoError> {
        let name = &layer.name;
        if self.zero {
            return Err(corrupt(format!("layer {name:?}: a state counted 0 times")));
        }
        if self.stray {
            return Err(corrupt(format!(
                "layer {name:?}: a state has bits beyond its {} neurons",
                layer.neurons
            )));
        }
        if self.out_of_order {
            return Err(corrupt(format!(
                "layer {name:?}: states not strictly ascending"
            )));
        }
        if self.overflow {
            return Err(corrupt(format!("layer {name:?}: counts overflow")));
        }
        Ok(())
    }
}

/// A delta-coded block's bytes with room past them: every field of every lane is one 8-byte
/// load within it (gaps at most at 31 × 8, counts at most at 32 × 8 + 31 × 8).
const PAD: usize = DELTA_RECORDS * 16 + 8;

/// Per lane of a block: all ones if it holds a record, else 0.
type Lanes = [u64; DELTA_RECORDS];

/// The running sums from `prev` of the `G`-byte gaps at the start of `pad`, in every lane
/// (a lane past the block's records adds 0). Returns whether a gap is 0 in a lane that
/// `exempt` does not mark (with a 1), and whether a sum wrapped.
#[inline(always)]
fn gap_sums<const G: usize>(
    pad: &[u8; PAD],
    prev: u64,
    (live, exempt): (&Lanes, &Lanes),
    states: &mut [u64; DELTA_RECORDS],
) -> (bool, bool) {
    let mask = low_bytes(G);
    let (mut s, mut probes, mut zero, mut carry) = (prev, 0u64, false, false);
    for (i, out) in states.iter_mut().enumerate() {
        let w = u64::from_le_bytes(pad[i * G..i * G + 8].try_into().unwrap_or_default());
        let gap = w & mask & live[i];
        let (t, c) = s.overflowing_add(gap);
        (s, carry) = (t, carry | c);
        *out = s;
        let probe = gap | exempt[i];
        if G < 8 {
            // Below 2^56, a gap minus 1 has its top bit set only if the gap is 0.
            probes |= probe.wrapping_sub(1);
        } else {
            zero |= probe == 0;
        }
    }
    if G < 8 {
        // 32 gaps below 2^56 sum below 2^61: a wrap happens at most once, and leaves the
        // last sum below the first.
        (probes >> 63 != 0, s < prev)
    } else {
        (zero, carry)
    }
}

/// The `C`-byte counts minus 1 at the start of `fields`, plus 1, in every live lane (all 1
/// for `C` = 0; 0 past the block's records). Returns their sum and whether a count field
/// was all ones (a count too large for 64 bits).
#[inline(always)]
fn counts_of<const C: usize>(
    fields: &[u8],
    live: &Lanes,
    counts: &mut [u64; DELTA_RECORDS],
) -> (u128, bool) {
    let mask = if C == 0 { 0 } else { low_bytes(C) };
    let (mut small, mut sum, mut wrapped) = (0u64, 0u128, false);
    for (i, out) in counts.iter_mut().enumerate() {
        let w = u64::from_le_bytes(fields[i * C..i * C + 8].try_into().unwrap_or_default());
        let k = (w & mask).wrapping_add(1) & live[i];
        *out = k;
        if C < 8 {
            // 32 counts up to 2^56 sum below 2^61.
            small += k;
        } else {
            sum += u128::from(k);
            wrapped |= (k == 0) & (live[i] != 0);
        }
    }
    (sum + u128::from(small), wrapped)
}

/// Decodes one delta-coded block of `n` records (`block` holds exactly their gaps and
/// counts, `g` and `c` bytes each, both checked to be at most 8): appends the states (`prev`
/// plus the running sum of the gaps) and counts, adds the counts to `total`, and flags zero
/// gaps (but the layer's first, if `first`), wrapped sums and counts. Returns the block's
/// last state.
///
/// Every block is decoded as [`DELTA_RECORDS`] lanes, the lanes past `n` masked out: each
/// field is one load and mask at an offset fixed by the widths (a loop per width, unrolled),
/// and the checks are a few bitwise operations per lane, no branch.
///
/// `pad` is the caller's, reused from block to block: what it holds past the block's bytes
/// is only ever loaded into masked-out bits.
#[allow(clippy::too_many_arguments)]
fn decode_block(
    block: &[u8],
    pad: &mut [u8; PAD],
    (g, c): (usize, usize),
    prev: u64,
    first: bool,
    states: &mut Vec<u64>,
    counts: &mut Vec<u64>,
    total: &mut u64,
    flags: &mut Flags,
) -> u64 {
    let n = block.len() / (g + c);
    pad[..block.len()].copy_from_slice(block);
    let pad = &*pad;
    let (mut live, mut exempt) = ([0u64; DELTA_RECORDS], [0u64; DELTA_RECORDS]);
    for (i, (l, e)) in live.iter_mut().zip(&mut exempt).enumerate() {
        *l = u64::from(i < n).wrapping_neg();
        *e = u64::from(i >= n || (first && i == 0));
    }
    let (mut st, mut ct) = ([0u64; DELTA_RECORDS], [0u64; DELTA_RECORDS]);
    let lanes = (&live, &exempt);
    let (zero_gap, wrapped) = match g {
        1 => gap_sums::<1>(pad, prev, lanes, &mut st),
        2 => gap_sums::<2>(pad, prev, lanes, &mut st),
        3 => gap_sums::<3>(pad, prev, lanes, &mut st),
        4 => gap_sums::<4>(pad, prev, lanes, &mut st),
        5 => gap_sums::<5>(pad, prev, lanes, &mut st),
        6 => gap_sums::<6>(pad, prev, lanes, &mut st),
        7 => gap_sums::<7>(pad, prev, lanes, &mut st),
        _ => gap_sums::<8>(pad, prev, lanes, &mut st),
    };
    // n ≤ 32 and g ≤ 8: the bound only lets the compiler see the slice fits.
    let at = (n * g).min(DELTA_RECORDS * 8);
    let fields = &pad[at..at + DELTA_RECORDS * 8 + 8];
    let (sum, too_large) = match c {
        0 => counts_of::<0>(fields, &live, &mut ct),
        1 => counts_of::<1>(fields, &live, &mut ct),
        2 => counts_of::<2>(fields, &live, &mut ct),
        3 => counts_of::<3>(fields, &live, &mut ct),
        4 => counts_of::<4>(fields, &live, &mut ct),
        5 => counts_of::<5>(fields, &live, &mut ct),
        6 => counts_of::<6>(fields, &live, &mut ct),
        7 => counts_of::<7>(fields, &live, &mut ct),
        _ => counts_of::<8>(fields, &live, &mut ct),
    };
    states.extend_from_slice(&st[..n]);
    counts.extend_from_slice(&ct[..n]);
    let (t, w) = total.overflowing_add(sum as u64);
    *total = t;
    flags.out_of_order |= zero_gap;
    flags.stray |= wrapped;
    flags.overflow |= too_large | w | (sum >> 64 != 0);
    st[n - 1]
}

/// Records decoded before a visitor sees them, for delta-coded layers.
const DELTA_BATCH: usize = 64 * DELTA_RECORDS;

/// Reads a counts stream (after its magic and version) without keeping it: `visit` gets
/// each layer's index, summary and, in ascending state order, blocks of its distinct states
/// and their counts. Everything is checked as it streams by, each block before `visit` sees
/// it: header sizes, strictly ascending states, no bits beyond a layer's neurons, no zero
/// counts, counts that sum to the observations, no trailing bytes. Memory is one block of
/// records, whatever the header claims. On an error the caller must discard what `visit`
/// saw (a later block may fail, or the sum).
fn scan_counts_after_magic(
    r: &mut impl Read,
    name: &str,
    mut visit: impl FnMut(usize, &LayerSummary, &Records<'_>),
) -> Result<(Measurement, Vec<LayerSummary>), IoError> {
    let (header, crc) = read_header(r, name)?;
    let corrupt = corrupt(name);
    let io = |e| IoError::io(name, e);
    let mut feed = Feed::new(r, crc);
    let mut summaries = Vec::with_capacity(header.layers.len().min(1024));
    let (mut states, mut counts) = (Vec::new(), Vec::new());
    for (index, lh) in header.layers.into_iter().enumerate() {
        let (summary, record_bytes, count_bytes) = layer_summary(lh, corrupt)?;
        let mut tally = ProfileTally::default();
        let start = feed.taken;
        let nb = (summary.neurons as usize).div_ceil(8);
        let cut = |present: u64| IoError::Truncated {
            name: name.to_string(),
            what: format!(
                "cut inside the counts of layer {:?} ({present} of {} distinct states present)",
                summary.name, summary.distinct
            ),
        };
        let mut total = 0u64;
        let mut flags = Flags::default();
        let mut done = 0u64;
        if nb <= DELTA_MAX_BYTES {
            // Bits beyond the neurons: states ascend, so checking each block's last is enough.
            let beyond = if summary.neurons < 64 {
                !((1u64 << summary.neurons) - 1)
            } else {
                0
            };
            let mut prev = 0u64;
            let mut pad = [0u8; PAD];
            while done < summary.distinct {
                states.clear();
                counts.clear();
                while states.len() < DELTA_BATCH && done < summary.distinct {
                    let n = (summary.distinct - done).min(DELTA_RECORDS as u64) as usize;
                    let widths = match feed.take(1).map_err(io)? {
                        Ok(b) => b[0],
                        Err(_) => return Err(cut(done)),
                    };
                    let (g, c) = (usize::from(widths & 15), usize::from(widths >> 4));
                    if !(1..=8).contains(&g) || c > 8 {
                        return Err(corrupt(format!(
                            "layer {:?}: a block claims {g}-byte gaps and {c}-byte counts \
                             (expected 1 to 8 and 0 to 8)",
                            summary.name
                        )));
                    }
                    let block = match feed.take(n * (g + c)).map_err(io)? {
                        Ok(b) => b,
                        Err(_) => return Err(cut(done)),
                    };
                    // The layer's first state is its own gap, and may be 0.
                    prev = decode_block(
                        block,
                        &mut pad,
                        (g, c),
                        prev,
                        done == 0,
                        &mut states,
                        &mut counts,
                        &mut total,
                        &mut flags,
                    );
                    flags.stray |= prev & beyond != 0;
                    done += n as u64;
                }
                flags.check(&summary, corrupt)?;
                tally.add(&counts);
                visit(
                    index,
                    &summary,
                    &Records {
                        counts: &counts,
                        states: Stored::Words {
                            words: 1,
                            states: &states,
                        },
                    },
                );
            }
        } else {
            let cb = usize::from(count_bytes);
            let rec = nb + cb;
            // Bits of the state's last byte beyond the neurons must be zero.
            let spare = nb * 8 - summary.neurons as usize;
            let stray_mask = !(0xffu8 >> spare);
            let block_records = (BLOCK_BYTES / rec).max(1) as u64;
            let mut prev_bytes = Vec::<u8>::new();
            while done < summary.distinct {
                let n = (summary.distinct - done).min(block_records);
                let bytes = match feed.take(n as usize * rec).map_err(io)? {
                    Ok(b) => b,
                    Err(found) => return Err(cut(done + (found / rec) as u64)),
                };
                counts.clear();
                for at in (0..bytes.len()).step_by(rec) {
                    let count = le_prefix(bytes, at + nb, cb);
                    flags.zero |= count == 0;
                    let (sum, wrapped) = total.overflowing_add(count);
                    total = sum;
                    flags.overflow |= wrapped;
                    flags.stray |= bytes[at + nb - 1] & stray_mask != 0;
                    let s = &bytes[at..at + nb];
                    if !prev_bytes.is_empty() {
                        flags.out_of_order |= prev_bytes.iter().rev().cmp(s.iter().rev()).is_ge();
                    }
                    prev_bytes.clear();
                    prev_bytes.extend_from_slice(s);
                    counts.push(count);
                }
                flags.check(&summary, corrupt)?;
                tally.add(&counts);
                visit(
                    index,
                    &summary,
                    &Records {
                        counts: &counts,
                        states: Stored::Bytes {
                            state_bytes: nb,
                            record: rec,
                            bytes,
                        },
                    },
                );
                done += n;
            }
        }
        if total != summary.observations {
            return Err(corrupt(format!(
                "layer {:?}: counts sum to {total}, header says {} observations",
                summary.name, summary.observations
            )));
        }
        if feed.taken - start != record_bytes {
            return Err(corrupt(format!(
                "layer {:?}: its records take {} bytes, header says {record_bytes}",
                summary.name,
                feed.taken - start
            )));
        }
        if tally.finish() != summary.profile {
            return Err(corrupt(format!(
                "layer {:?}: its counts differ from the header's count profile",
                summary.name
            )));
        }
        summaries.push(summary);
    }
    let stored = match feed.take_unhashed(4).map_err(io)? {
        Ok(b) => u32::from_le_bytes(b.try_into().unwrap_or_default()),
        Err(_) => return Err(missing_checksum(name)),
    };
    if !feed.at_end().map_err(io)? {
        return Err(corrupt("data after the last layer".into()));
    }
    check_crc(feed.crc.finalize(), stored, corrupt)?;
    Ok((header.measurement, summaries))
}

/// Reads a counts stream (after its magic and version) as far as a score needs: the
/// header's layers, with their count profiles. The records are not decoded, but every
/// byte is read and checked against the stream's CRC-32, and everything the header claims
/// is checked as by [`read_counts_after_magic`] but for what only the records show (which
/// the CRC covers: the writer checked them). A cut or damaged stream is an error, never a
/// score. Memory is one block of bytes, whatever the header claims.
pub fn summarize_counts_after_magic(
    r: &mut impl Read,
    name: &str,
) -> Result<(Measurement, Vec<LayerSummary>), IoError> {
    let (header, mut crc) = read_header(r, name)?;
    let corrupt = corrupt(name);
    let io = |e| IoError::io(name, e);
    let mut buf = vec![0u8; BLOCK_BYTES];
    let mut summaries = Vec::with_capacity(header.layers.len().min(1024));
    for lh in header.layers {
        let (summary, record_bytes, _) = layer_summary(lh, corrupt)?;
        let mut done = 0;
        while done < record_bytes {
            let n = (record_bytes - done).min(BLOCK_BYTES as u64) as usize;
            let got = read_full(r, &mut buf[..n]).map_err(io)?;
            crc.update(&buf[..got]);
            done += got as u64;
            if got < n {
                return Err(IoError::Truncated {
                    name: name.to_string(),
                    what: format!(
                        "cut inside the counts of layer {:?} ({done} of {record_bytes} bytes present)",
                        summary.name
                    ),
                });
            }
        }
        summaries.push(summary);
    }
    let mut stored = [0u8; 4];
    if read_full(r, &mut stored).map_err(io)? < 4 {
        return Err(missing_checksum(name));
    }
    if read_full(r, &mut [0u8; 1]).map_err(io)? > 0 {
        return Err(corrupt("data after the last layer".into()));
    }
    check_crc(crc.finalize(), u32::from_le_bytes(stored), corrupt)?;
    Ok((header.measurement, summaries))
}

/// The header of a counts stream after its magic and version, and the CRC-32 of its bytes
/// (the stream's checksum covers it).
fn read_header(
    r: &mut impl Read,
    name: &str,
) -> Result<(CountsHeader, crc32fast::Hasher), IoError> {
    let mut hashed = Hashed::new(r);
    let header = decode_bounded(&mut hashed, HEADER_LIMIT, name, "counts header")?;
    Ok((header, hashed.crc))
}

/// The error for damage found in the counts stream `name`.
fn corrupt(name: &str) -> impl Fn(String) -> IoError + Copy + '_ {
    move |detail| IoError::Corrupt {
        name: name.to_string(),
        what: "counts".to_string(),
        detail,
    }
}

/// A layer's header checked against itself and the format's bounds: its summary, record
/// bytes and count bytes.
fn layer_summary(
    lh: LayerHeader,
    corrupt: impl Fn(String) -> IoError,
) -> Result<(LayerSummary, u64, u8), IoError> {
    if lh.neurons == 0 || lh.neurons > MAX_NEURONS {
        return Err(corrupt(format!(
            "layer {:?} claims {} neurons",
            lh.name, lh.neurons
        )));
    }
    let possible = if lh.neurons < 64 {
        1u64 << lh.neurons
    } else {
        u64::MAX
    };
    if lh.distinct > lh.observations
        || lh.distinct > possible
        || (lh.distinct == 0) != (lh.observations == 0)
    {
        return Err(corrupt(format!(
            "layer {:?} claims {} distinct states of {} neurons in {} observations",
            lh.name, lh.distinct, lh.neurons, lh.observations
        )));
    }
    if !(1..=8).contains(&lh.count_bytes) {
        return Err(corrupt(format!(
            "layer {:?} claims {}-byte counts (expected 1 to 8)",
            lh.name, lh.count_bytes
        )));
    }
    // Delta-coded records take a widths byte per block and 1 to 16 bytes each; fixed
    // records, the state's bytes and the count's.
    let nb = (lh.neurons as u64).div_ceil(8);
    let d = u128::from(lh.distinct);
    let (least, most) = if nb <= DELTA_MAX_BYTES as u64 {
        let blocks = d.div_ceil(DELTA_RECORDS as u128);
        (blocks + d, blocks + 16 * d)
    } else {
        let fixed = d * u128::from(nb + u64::from(lh.count_bytes));
        (fixed, fixed)
    };
    if !(least..=most).contains(&u128::from(lh.record_bytes)) {
        return Err(corrupt(format!(
            "layer {:?} claims {} bytes of records for {} distinct states",
            lh.name, lh.record_bytes, lh.distinct
        )));
    }
    check_profile(&lh.profile, lh.distinct, lh.observations)
        .map_err(|e| corrupt(format!("layer {:?}: {e}", lh.name)))?;
    let summary = LayerSummary {
        name: lh.name,
        neurons: lh.neurons,
        states_per_input: lh.states_per_input,
        observations: lh.observations,
        distinct: lh.distinct,
        profile: lh.profile,
    };
    Ok((summary, lh.record_bytes, lh.count_bytes))
}

fn missing_checksum(name: &str) -> IoError {
    IoError::Truncated {
        name: name.to_string(),
        what: "missing its CRC-32 after the last layer".to_string(),
    }
}

fn check_crc(found: u32, stored: u32, corrupt: impl Fn(String) -> IoError) -> Result<(), IoError> {
    if found == stored {
        Ok(())
    } else {
        Err(corrupt(format!(
            "CRC-32 {found:08x} where the stream says {stored:08x}: damaged since it was written"
        )))
    }
}

/// A reader that adds what it reads to a CRC-32: the header, decoded straight from the
/// stream, is covered by the stream's checksum too.
struct Hashed<'r, R> {
    r: &'r mut R,
    crc: crc32fast::Hasher,
}

impl<'r, R: Read> Hashed<'r, R> {
    fn new(r: &'r mut R) -> Self {
        Hashed {
            r,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<R: Read> Read for Hashed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::count_profile;

    fn layer(neurons: u32, states: Vec<u64>, counts: Vec<u64>) -> LayerCounts {
        LayerCounts {
            name: format!("l{neurons}"),
            neurons,
            states_per_input: 1,
            observations: counts.iter().sum(),
            states,
            counts,
        }
    }

    fn write(counts: &Counts) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_counts(&mut bytes, counts, "c").unwrap();
        bytes
    }

    /// Layers of every state width and count width, one of them empty.
    fn sample() -> Counts {
        Counts {
            measurement: Measurement::default(),
            layers: vec![
                layer(3, vec![0, 5, 7], vec![1, 255, 2]),
                layer(0x14, vec![], vec![]),
                layer(20, vec![1, 1 << 19], vec![256, 1 << 40]),
                layer(64, vec![0, u64::MAX], vec![u64::MAX - 1, 1]),
                layer(70, vec![3, 0, 1, 1 << 5], vec![70_000, 1]),
                layer(200, vec![0, 0, 0, 1, 9, 0, 0, 1], vec![3, 1]),
            ],
        }
    }

    /// Bytes of the sample's records: 3-, 20- and 64-neuron layers in one delta block each
    /// (widths byte, gaps, counts - 1): 1 + 3 + 3, 1 + 6 + 10, 1 + 16 + 16; the 70- and
    /// 200-neuron layers in fixed records: 2 × (9 + 3), 2 × (25 + 1).
    const RECORDS: usize = 7 + 17 + 33 + 24 + 52;
    /// The CRC-32 after the records.
    const CRC: usize = 4;

    /// A layer's records, as `write_counts` writes them; their length, and each piece's, as
    /// the plan says.
    fn records(l: &LayerCounts) -> Vec<u8> {
        let c = Counts {
            measurement: Measurement::default(),
            layers: vec![l.clone()],
        };
        let plan = Plan::of(&c);
        let lh = &plan.header.layers[0];
        let mut all = Vec::new();
        for (p, bytes) in &plan.pieces {
            let before = all.len();
            encode_piece(l, p, lh.count_bytes, &mut Vec::new(), &mut all).unwrap();
            assert_eq!((all.len() - before) as u64, *bytes);
        }
        assert_eq!(all.len() as u64, lh.record_bytes);
        assert_eq!(lh.profile, count_profile(&l.counts));
        all
    }

    /// A counts stream of one layer with header `lh`, then `tail`.
    fn stream_of(lh: LayerHeader, tail: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        StreamKind::Counts
            .write_header(&mut b, COUNTS_VERSION)
            .unwrap();
        let header = CountsHeader {
            measurement: Measurement::default(),
            layers: vec![lh],
        };
        encode(&mut b, &header, "c").unwrap();
        b.extend_from_slice(tail);
        b
    }

    /// `bytes` with its CRC-32 made right again, as a writer of such a stream would.
    fn restamp(mut bytes: Vec<u8>) -> Vec<u8> {
        let n = bytes.len() - CRC;
        let crc = crc32fast::hash(&bytes[12..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    fn summarize(bytes: &[u8]) -> Result<(Measurement, Vec<LayerSummary>), IoError> {
        let mut r = bytes;
        StreamKind::Counts.expect_header(&mut r, "c", COUNTS_VERSION)?;
        summarize_counts_after_magic(&mut r, "c")
    }

    #[test]
    fn every_width_round_trips_in_few_bytes() {
        let mut c = sample();
        c.layers[1].observations = 0;
        let bytes = write(&c);
        assert_eq!(read_counts(&mut bytes.as_slice(), "c").unwrap(), c);
        assert_eq!(bytes_for(0), 1);
        assert_eq!(bytes_for(255), 1);
        assert_eq!(bytes_for(256), 2);
        assert_eq!(bytes_for(u64::MAX), 8);
        let header = bytes.len() - RECORDS - CRC;
        let mut scanned = Vec::new();
        let (_, summaries) = scan_counts_after_magic(&mut &bytes[12..], "c", |i, l, r| {
            for (j, &n) in r.counts().iter().enumerate() {
                let mut s = Vec::new();
                r.push_state(j, &mut s);
                scanned.push((i, l.distinct, s, n));
            }
        })
        .unwrap();
        // Most of the header is the six count profiles, 16 bytes an entry.
        assert!(header < 600, "{header}");
        assert_eq!(&bytes[header..header + 7], &[0x11, 0, 5, 2, 0, 254, 1]);
        assert_eq!(summaries.len(), 6);
        assert_eq!(scanned.len(), 11);
        assert_eq!(scanned[2], (0, 3, vec![7], 2));
        assert_eq!(scanned[10], (5, 2, vec![9, 0, 0, 1], 1));
        // The summaries alone, without decoding: the same, with every layer's profile.
        let (_, quick) = summarize(&bytes).unwrap();
        assert_eq!(quick, summaries);
        let want: Vec<LayerSummary> = c.layers.iter().map(LayerCounts::summary).collect();
        assert_eq!(quick, want);
        assert_eq!(quick[0].profile, vec![(1, 1), (2, 1), (255, 1)]);
    }

    #[test]
    fn many_blocks_round_trip_in_order() {
        // Blocks of every width, one all-ones block, batches of several blocks.
        let states: Vec<u64> = (0..5000u64).map(|i| i * i * i * 37 + i).collect();
        let counts: Vec<u64> = (0..5000u64)
            .map(|i| if i < 40 { 1 } else { 1 + (i % 7) * (i % 3) * i })
            .collect();
        let c = Counts {
            measurement: Measurement::default(),
            layers: vec![layer(48, states.clone(), counts.clone())],
        };
        let bytes = write(&c);
        assert_eq!(read_counts(&mut bytes.as_slice(), "c").unwrap(), c);
        // The first block's counts are all 1: no count bytes.
        let fixed = 5000 * (6 + 4);
        let records = records(&c.layers[0]).len();
        assert!(records < fixed * 3 / 4, "{records} of {fixed}");
        let mut seen = (Vec::new(), Vec::new());
        scan_counts_after_magic(&mut &bytes[12..], "c", |_, _, r| {
            for j in 0..r.len() {
                r.push_state(j, &mut seen.0);
            }
            seen.1.extend_from_slice(r.counts());
        })
        .unwrap();
        assert_eq!(seen, (states, counts));
    }

    #[test]
    fn long_layers_are_sized_in_pieces_as_a_whole() {
        // Many pieces, delta-coded and fixed: the header's sizes and profile as one pass
        // would find them (`records` checks both), and the stream reads back.
        let n = 200_003u64;
        let states: Vec<u64> = (0..n).map(|i| i * 37 + (i % 5)).collect();
        let counts: Vec<u64> = (0..n).map(|i| 1 + (i * i) % 2000).collect();
        let wide: Vec<u64> = (0..n).flat_map(|i| [i * 3, 1]).collect();
        let c = Counts {
            measurement: Measurement::default(),
            layers: vec![layer(40, states, counts.clone()), layer(70, wide, counts)],
        };
        for l in &c.layers {
            records(l);
        }
        let bytes = write(&c);
        assert_eq!(read_counts(&mut bytes.as_slice(), "c").unwrap(), c);
    }

    #[test]
    fn a_file_written_in_pieces_holds_the_stream_in_order() {
        let mut c = sample();
        let n = 5000u64;
        let states: Vec<u64> = (0..n).map(|i| i * i * 7 + i).collect();
        let counts: Vec<u64> = (0..n).map(|i| 1 + (i % 11) * (i % 3)).collect();
        c.layers.push(layer(50, states, counts.clone()));
        let wide: Vec<u64> = (0..n).flat_map(|i| [i * 5, 3]).collect();
        c.layers.push(layer(100, wide, counts));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.counts");
        let mut out = Output::create(Some(&path), true).unwrap();
        // Something written after the stream lands after it.
        write_counts_to(&mut out, &c, "c").unwrap();
        out.write_all(b"tail").unwrap();
        out.commit().unwrap();
        let mut want = write(&c);
        want.extend_from_slice(b"tail");
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }

    #[test]
    fn damage_is_named() {
        let c = sample();
        let bytes = write(&c);
        let n = bytes.len() - CRC;
        let err = |b: &[u8]| read_counts(&mut &b[..], "c").unwrap_err().to_string();
        let edit = |at: usize, to: &[u8]| {
            let mut b = bytes.clone();
            b[at..at + to.len()].copy_from_slice(to);
            err(&b)
        };
        // Fixed records: the 70-neuron layer's last state (9 bytes, 2 spare bits), before
        // its 3-byte count and the 200-neuron layer's 52 bytes; the last count.
        let e = edit(n - 52 - 4, &[0x80]);
        assert!(e.contains("beyond its 70 neurons"), "{e}");
        let e = edit(n - 1, &[0]);
        assert!(e.contains("counted 0 times"), "{e}");
        // Delta blocks: the 3-neuron layer's states 0, 5, 7 with the second gap made 0.
        let at = n - RECORDS;
        let e = edit(at + 2, &[0]);
        assert!(e.contains("ascending"), "{e}");
        // Widths out of range.
        let e = edit(at, &[0x09]);
        assert!(e.contains("9-byte gaps"), "{e}");
        let e = edit(at, &[0x91]);
        assert!(e.contains("9-byte counts"), "{e}");
        // The 20-neuron layer's second gap grown past 2^20.
        let at20 = at + 7;
        let e = edit(at20 + 1 + 5, &[0xff]);
        assert!(e.contains("beyond its 20 neurons"), "{e}");
        // The 64-neuron layer (states 0 and 2^64 - 1): a first gap of 1 wraps the second.
        let at64 = at20 + 17;
        let e = edit(at64 + 1, &[1]);
        assert!(e.contains("beyond its 64 neurons"), "{e}");
        // Its counts, 2^64 - 2 and 1, made to wrap around.
        let e = edit(at64 + 1 + 24, &2u64.to_le_bytes());
        assert!(e.contains("overflow"), "{e}");
        for cut in [n + CRC - 1, n, n - 1, at + 1, at20 + 3, 20] {
            assert!(matches!(
                read_counts(&mut &bytes[..cut], "c"),
                Err(IoError::Truncated { .. })
            ));
            assert!(
                matches!(summarize(&bytes[..cut]), Err(IoError::Truncated { .. })),
                "{cut}"
            );
        }
        let mut b = bytes.clone();
        b.push(0);
        assert!(err(&b).contains("data after the last layer"), "{}", err(&b));
        let e = summarize(&b).unwrap_err().to_string();
        assert!(e.contains("data after the last layer"), "{e}");
        // Damage no record check can see: the 3-neuron layer's states 0, 5, 7 made 0, 4, 6
        // (still ascending, still 3 bits), or its counts 1 and 255 swapped (the same sum
        // and profile). The CRC does, with or without decoding.
        for (at, to) in [(at + 2, &[4u8][..]), (at + 4, &[254, 0])] {
            let mut d = bytes.clone();
            d[at..at + to.len()].copy_from_slice(to);
            let e = err(&d);
            assert!(e.contains("CRC-32"), "{e}");
            let e = summarize(&d).unwrap_err().to_string();
            assert!(e.contains("CRC-32"), "{e}");
        }
        // The checksum itself damaged.
        let mut d = bytes.clone();
        d[n] ^= 1;
        assert!(err(&d).contains("CRC-32"), "{}", err(&d));
        assert!(summarize(&d).unwrap_err().to_string().contains("CRC-32"));
    }

    #[test]
    fn headers_must_agree_with_their_records() {
        // One 3-neuron layer, states 0 and 5 seen once and 3 times; every header below is
        // a consistent claim in itself, and its CRC is right.
        let c = Counts {
            measurement: Measurement::default(),
            layers: vec![layer(3, vec![0, 5], vec![1, 3])],
        };
        let bytes = write(&c);
        let records = records(&c.layers[0]);
        let stream = |lh: LayerHeader| {
            let mut tail = records.clone();
            tail.extend_from_slice(&[0; CRC]);
            restamp(stream_of(lh, &tail))
        };
        let header = |profile: Vec<(u64, u64)>, record_bytes: u64| LayerHeader {
            name: "l3".into(),
            neurons: 3,
            states_per_input: 1,
            observations: 4,
            distinct: 2,
            count_bytes: 1,
            record_bytes,
            profile,
        };
        let n = records.len() as u64;
        assert_eq!(stream(header(vec![(1, 1), (3, 1)], n)), bytes);
        // Two states seen twice: the right sums, not these counts. Only decoding shows it.
        let b = stream(header(vec![(2, 2)], n));
        let e = read_counts(&mut b.as_slice(), "c").unwrap_err().to_string();
        assert!(e.contains("count profile"), "{e}");
        // A profile that cannot be: wrong sums, a count of 0, counts not ascending.
        for p in [vec![(1, 2)], vec![(0, 1), (4, 1)], vec![(3, 1), (1, 1)]] {
            let b = stream(header(p, n));
            let e = summarize(&b).unwrap_err().to_string();
            assert!(e.contains("count profile"), "{e}");
        }
        // Record bytes beyond what 2 states can take, or one byte off.
        let e = summarize(&stream(header(vec![(1, 1), (3, 1)], 1 << 20)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bytes of records"), "{e}");
        let b = stream(header(vec![(1, 1), (3, 1)], n + 1));
        let e = read_counts(&mut b.as_slice(), "c").unwrap_err().to_string();
        assert!(e.contains("header says"), "{e}");
        assert!(summarize(&b).is_err());
    }

    /// Where each delta-coded block of the one layer of `c`, written as `bytes`, starts, and
    /// its gap and count widths.
    fn blocks(c: &Counts, bytes: &[u8]) -> Vec<(usize, usize, usize)> {
        let l = &c.layers[0];
        let start = bytes.len() - CRC - records(l).len();
        let (mut at, mut left, mut found) = (start, l.distinct(), Vec::new());
        while left > 0 {
            let (g, c) = (usize::from(bytes[at] & 15), usize::from(bytes[at] >> 4));
            found.push((at, g, c));
            let n = left.min(DELTA_RECORDS);
            at += 1 + n * (g + c);
            left -= n;
        }
        assert_eq!(at, bytes.len() - CRC);
        found
    }

    #[test]
    fn damage_inside_whole_blocks_is_named() {
        let one = |neurons: u32, states: Vec<u64>, counts: Vec<u64>| {
            let c = Counts {
                measurement: Measurement::default(),
                layers: vec![layer(neurons, states, counts)],
            };
            let bytes = write(&c);
            let blocks = blocks(&c, &bytes);
            (bytes, blocks)
        };
        let err = |b: &[u8]| read_counts(&mut &b[..], "c").unwrap_err().to_string();
        // 40 neurons, states 10 apart (1-byte gaps after the first block's first): a gap in
        // the middle of the second block, and the first gap of that block, made 0.
        let (bytes, b) = one(40, (1..=64).map(|i| i * 10).collect(), vec![1; 64]);
        assert_eq!(b[1].1, 1);
        for lane in [0, 17] {
            let mut d = bytes.clone();
            d[b[1].0 + 1 + lane] = 0;
            assert!(err(&d).contains("ascending"), "{}", err(&d));
        }
        // 64 neurons near the top: a 1-byte gap grown to 255 wraps the sum past 2^64.
        let top: Vec<u64> = (0..64).map(|i| u64::MAX - 639 + 10 * i).collect();
        let (bytes, b) = one(64, top, vec![1; 64]);
        assert_eq!((b[0].1, b[1].1), (8, 1));
        let mut d = bytes.clone();
        d[b[1].0 + 1 + 3] = 255;
        assert!(err(&d).contains("beyond its 64 neurons"), "{}", err(&d));
        // 8-byte gaps (states 2^58 apart): one made all ones wraps.
        let wide: Vec<u64> = (0..32).map(|i| i << 58).collect();
        let (bytes, b) = one(64, wide, vec![1; 32]);
        assert_eq!(b[0].1, 8);
        let mut d = bytes.clone();
        d[b[0].0 + 1 + 8 * 5..b[0].0 + 1 + 8 * 6].fill(0xff);
        assert!(err(&d).contains("beyond its 64 neurons"), "{}", err(&d));
        // 8-byte counts: one field all ones is a count past 2^64.
        let mut counts = vec![1u64; 32];
        counts[9] = 1 << 60;
        let (bytes, b) = one(30, (0..32).collect(), counts);
        assert_eq!(b[0].2, 8);
        let mut d = bytes.clone();
        let at = b[0].0 + 1 + 32 * b[0].1 + 8 * 9;
        d[at..at + 8].fill(0xff);
        assert!(err(&d).contains("overflow"), "{}", err(&d));
        // Undamaged, all of them read back.
        assert!(read_counts(&mut bytes.as_slice(), "c").is_ok());
    }

    #[test]
    fn absurd_claims_allocate_nothing() {
        // A header claiming 2^40 distinct states of a 70-neuron layer, followed by one record:
        // cut short after reading one block, never a 2^40-record allocation.
        let header = LayerHeader {
            name: "l".into(),
            neurons: 70,
            states_per_input: 1,
            observations: 1 << 41,
            distinct: 1 << 40,
            count_bytes: 1,
            record_bytes: 10 << 40,
            profile: vec![(2, 1 << 40)],
        };
        let bytes = stream_of(header.clone(), &[1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let e = read_counts(&mut bytes.as_slice(), "c").unwrap_err();
        assert!(e.to_string().contains("1 of 1099511627776"), "{e}");
        // The same of a 60-neuron layer, delta-coded: one whole block of 32, then the cut.
        let mut narrow = header;
        narrow.neurons = 60;
        narrow.record_bytes = 3 << 40;
        let mut block = vec![0x01];
        block.extend_from_slice(&[1; 32]);
        let bytes = stream_of(narrow.clone(), &block);
        let e = read_counts(&mut bytes.as_slice(), "c").unwrap_err();
        assert!(e.to_string().contains("32 of 1099511627776"), "{e}");
        let mut bad = narrow;
        bad.count_bytes = 9;
        let bytes = stream_of(bad, &[]);
        let e = read_counts(&mut bytes.as_slice(), "c").unwrap_err();
        assert!(e.to_string().contains("9-byte counts"), "{e}");
    }
}
