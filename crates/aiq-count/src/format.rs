//! The counts stream (`AIQCOUNT`), written by `count-states` and read by `count-states`
//! (to merge) and `score-aiq`.
//!
//! Layout (version 2; the header is bincode with fixed-width little-endian integers, see
//! `aiq_io`):
//!
//! ```text
//! "AIQCOUNT" u32 version
//! CountsHeader                 the measurement (model, data set, split, inputs, correct,
//!                              provenance chain) and per layer name, neurons, states per
//!                              input, observations, distinct, count_bytes
//! per layer, distinct × { state: ceil(neurons / 8) bytes, count: count_bytes bytes }
//!                              both little-endian (neuron i at bit i % 8 of byte i / 8, as
//!                              in the states stream), no length prefix, states strictly
//!                              ascending by value (deterministic bytes)
//! ```
//!
//! `count_bytes` is the fewest bytes (1 to 8) that hold the layer's largest count. Version 1
//! stored every state as whole `u64` words and every count as a `u64`: LeNet-5's counts took
//! 7.7 MB instead of 4.1 MB, most of it zero bytes that cost time to write and to read.
//!
//! Because states are sorted and unique, two count files merge by a linear merge that adds
//! the counts of equal states: counts of shards add up to the counts of the whole.

use std::io::{self, Read, Write};

use aiq_io::{decode_bounded, encode, IoError, StreamKind};
use aiq_states::MAX_NEURONS;
use serde::{Deserialize, Serialize};

use crate::{Counts, LayerCounts, LayerSummary, Measurement};

/// Format version of the counts stream; bump on any layout change.
pub const COUNTS_VERSION: u32 = 2;
const HEADER_LIMIT: u64 = 16 << 20;
/// Record bytes read at a time, so memory follows the data actually present.
const BLOCK_BYTES: usize = 1 << 16;

#[derive(Debug, Serialize, Deserialize)]
struct LayerHeader {
    name: String,
    neurons: u32,
    states_per_input: u32,
    observations: u64,
    distinct: u64,
    count_bytes: u8,
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

/// Writes `counts` as a counts stream.
pub fn write_counts(w: &mut impl Write, counts: &Counts, name: &str) -> Result<(), IoError> {
    StreamKind::Counts
        .write_header(w, COUNTS_VERSION)
        .map_err(|e| IoError::io(name, e))?;
    let header = CountsHeader {
        measurement: counts.measurement.clone(),
        layers: counts
            .layers
            .iter()
            .map(|l| LayerHeader {
                name: l.name.clone(),
                neurons: l.neurons,
                states_per_input: l.states_per_input,
                observations: l.observations,
                distinct: l.distinct() as u64,
                count_bytes: bytes_for(l.counts.iter().copied().max().unwrap_or(0)),
            })
            .collect(),
    };
    encode(w, &header, name)?;
    let io = |e| IoError::io(name, e);
    let mut buf = Vec::with_capacity(BLOCK_BYTES + 64);
    for (l, lh) in counts.layers.iter().zip(&header.layers) {
        let nb = (l.neurons as usize).div_ceil(8);
        let cb = usize::from(lh.count_bytes);
        if nb <= 8 {
            // State and count as one 16-byte word stored whole, the next record written over
            // its spare bytes: one fixed-size store per record.
            buf.resize(BLOCK_BYTES + 16, 0);
            let mut at = 0;
            for (&state, &count) in l.states.iter().zip(&l.counts) {
                let record = u128::from(state) | u128::from(count) << (8 * nb);
                buf[at..at + 16].copy_from_slice(&record.to_le_bytes());
                at += nb + cb;
                if at >= BLOCK_BYTES {
                    w.write_all(&buf[..at]).map_err(io)?;
                    at = 0;
                }
            }
            w.write_all(&buf[..at]).map_err(io)?;
            continue;
        }
        // Whole words are appended and the vector cut back to the field's bytes: fixed-size
        // copies rather than a variable-length one per field.
        let put = |buf: &mut Vec<u8>, x: u64, n: usize| {
            let at = buf.len();
            buf.extend_from_slice(&x.to_le_bytes());
            buf.truncate(at + n);
        };
        buf.clear();
        for (state, &count) in l.states.chunks_exact(l.words()).zip(&l.counts) {
            let mut left = nb;
            for &word in state {
                put(&mut buf, word, left.min(8));
                left = left.saturating_sub(8);
            }
            put(&mut buf, count, cb);
            if buf.len() >= BLOCK_BYTES {
                w.write_all(&buf).map_err(io)?;
                buf.clear();
            }
        }
        w.write_all(&buf).map_err(io)?;
    }
    Ok(())
}

/// Reads a counts stream, magic included.
pub fn read_counts(r: &mut impl Read, name: &str) -> Result<Counts, IoError> {
    StreamKind::Counts.expect_header(r, name, COUNTS_VERSION)?;
    read_counts_after_magic(r, name)
}

/// Reads a counts stream whose magic and version the caller has already read and checked.
/// Every claim of the header is checked against the data (see [`scan_counts_after_magic`]).
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
pub struct Records<'a> {
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
    /// Records straight from a layer's counts.
    pub(crate) fn of_layer(l: &'a LayerCounts) -> Self {
        Records {
            counts: &l.counts,
            states: Stored::Words {
                words: l.words(),
                states: &l.states,
            },
        }
    }

    /// The counts, in the states' order.
    pub fn counts(&self) -> &'a [u64] {
        self.counts
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
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
    let mask = if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * n)) - 1
    };
    match b.get(at..at + 8) {
        Some(w) => u64::from_le_bytes(w.try_into().unwrap_or([0; 8])) & mask,
        None => {
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(&b[at..at + n]);
            u64::from_le_bytes(a)
        }
    }
}

/// Reads a counts stream (after its magic and version) without keeping it: `visit` gets
/// each layer's index, summary and, in ascending state order, blocks of its distinct states
/// and their counts. Everything is checked as it streams by, each block before `visit` sees
/// it: header sizes, strictly ascending states, no bits beyond a layer's neurons, no zero
/// counts, counts that sum to the observations, no trailing bytes. Memory is one block of
/// records, whatever the header claims. On an error the caller must discard what `visit`
/// saw (a later block may fail, or the sum).
pub fn scan_counts_after_magic(
    r: &mut impl Read,
    name: &str,
    mut visit: impl FnMut(usize, &LayerSummary, &Records<'_>),
) -> Result<(Measurement, Vec<LayerSummary>), IoError> {
    let header: CountsHeader = decode_bounded(r, HEADER_LIMIT, name, "counts header")?;
    let corrupt = |detail: String| IoError::Corrupt {
        name: name.to_string(),
        what: "counts".to_string(),
        detail,
    };
    let mut summaries = Vec::with_capacity(header.layers.len().min(1024));
    let (mut bytes, mut counts) = (Vec::new(), Vec::new());
    for (index, lh) in header.layers.into_iter().enumerate() {
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
        let summary = LayerSummary {
            name: lh.name,
            neurons: lh.neurons,
            states_per_input: lh.states_per_input,
            observations: lh.observations,
            distinct: lh.distinct,
        };
        let nb = (lh.neurons as usize).div_ceil(8);
        let cb = usize::from(lh.count_bytes);
        let rec = nb + cb;
        // Bits of the state's last byte beyond the neurons must be zero.
        let spare = nb * 8 - lh.neurons as usize;
        let stray_mask = !(0xffu8 >> spare);
        let block_records = (BLOCK_BYTES / rec).max(1) as u64;
        let (mut prev_word, mut prev_bytes) = (None::<u64>, Vec::<u8>::new());
        let mut total = 0u64;
        let (mut out_of_order, mut stray, mut zero, mut overflow) = (false, false, false, false);
        let mut left = lh.distinct;
        while left > 0 {
            let n = left.min(block_records);
            bytes.clear();
            r.by_ref()
                .take(n * rec as u64)
                .read_to_end(&mut bytes)
                .map_err(|e| IoError::io(name, e))?;
            if bytes.len() as u64 != n * rec as u64 {
                return Err(IoError::Truncated {
                    name: name.to_string(),
                    what: format!(
                        "cut inside the counts of layer {:?} ({} of {} distinct states present)",
                        summary.name,
                        lh.distinct - left + (bytes.len() / rec) as u64,
                        lh.distinct
                    ),
                });
            }
            counts.clear();
            if nb <= 8 {
                // States as integers, checked without a branch per record.
                let beyond = if lh.neurons < 64 {
                    !((1u64 << lh.neurons) - 1)
                } else {
                    0
                };
                let (state_mask, count_mask) = (low_bytes(nb), low_bytes(cb));
                let (mut stray_word, mut sum, mut wrapped) = (0, total, false);
                let mut first = prev_word.is_none();
                let mut prev = prev_word.unwrap_or(0);
                counts.resize(n as usize, 0);
                let mut at = 0;
                for count in counts.iter_mut() {
                    // A record is at most 16 bytes: one 16-byte load where it fits (all but
                    // the block's last record or so), field by field otherwise.
                    let (s, c) = match bytes.get(at..at + 16) {
                        Some(w) => {
                            let w = u128::from_le_bytes(w.try_into().unwrap_or([0; 16]));
                            ((w as u64) & state_mask, (w >> (8 * nb)) as u64 & count_mask)
                        }
                        None => (le_prefix(&bytes, at, nb), le_prefix(&bytes, at + nb, cb)),
                    };
                    out_of_order |= !first & (s <= prev);
                    first = false;
                    prev = s;
                    stray_word |= s & beyond;
                    zero |= c == 0;
                    let (t, w) = sum.overflowing_add(c);
                    sum = t;
                    wrapped |= w;
                    *count = c;
                    at += rec;
                }
                (total, overflow) = (sum, overflow | wrapped);
                prev_word = (!first).then_some(prev);
                stray |= stray_word != 0;
            } else {
                for at in (0..bytes.len()).step_by(rec) {
                    let count = le_prefix(&bytes, at + nb, cb);
                    zero |= count == 0;
                    let (sum, wrapped) = total.overflowing_add(count);
                    total = sum;
                    overflow |= wrapped;
                    stray |= bytes[at + nb - 1] & stray_mask != 0;
                    let s = &bytes[at..at + nb];
                    if !prev_bytes.is_empty() {
                        out_of_order |= prev_bytes.iter().rev().cmp(s.iter().rev()).is_ge();
                    }
                    prev_bytes.clear();
                    prev_bytes.extend_from_slice(s);
                    counts.push(count);
                }
            }
            // Flags are checked once per block, before the visitor sees it.
            if zero {
                return Err(corrupt(format!(
                    "layer {:?}: a state counted 0 times",
                    summary.name
                )));
            }
            if stray {
                return Err(corrupt(format!(
                    "layer {:?}: a state has bits beyond its {} neurons",
                    summary.name, summary.neurons
                )));
            }
            if out_of_order {
                return Err(corrupt(format!(
                    "layer {:?}: states not strictly ascending",
                    summary.name
                )));
            }
            if overflow {
                return Err(corrupt(format!(
                    "layer {:?}: counts overflow",
                    summary.name
                )));
            }
            visit(
                index,
                &summary,
                &Records {
                    counts: &counts,
                    states: Stored::Bytes {
                        state_bytes: nb,
                        record: rec,
                        bytes: &bytes,
                    },
                },
            );
            left -= n;
        }
        if total != summary.observations {
            return Err(corrupt(format!(
                "layer {:?}: counts sum to {total}, header says {} observations",
                summary.name, summary.observations
            )));
        }
        summaries.push(summary);
    }
    let mut probe = [0u8; 1];
    loop {
        match r.read(&mut probe) {
            Ok(0) => break,
            Ok(_) => return Err(corrupt("data after the last layer".into())),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(IoError::io(name, e)),
        }
    }
    Ok((header.measurement, summaries))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // Records: 3 × (1 + 1), 2 × (3 + 6), 2 × (8 + 8), 2 × (9 + 3), 2 × (25 + 1).
        let header = bytes.len() - (6 + 18 + 32 + 24 + 52);
        let mut scanned = Vec::new();
        let (_, summaries) = scan_counts_after_magic(&mut &bytes[12..], "c", |i, l, r| {
            for (j, &n) in r.counts().iter().enumerate() {
                let mut s = Vec::new();
                r.push_state(j, &mut s);
                scanned.push((i, l.distinct, s, n));
            }
        })
        .unwrap();
        assert!(header < 300, "{header}");
        assert_eq!(summaries.len(), 6);
        assert_eq!(scanned.len(), 11);
        assert_eq!(scanned[10], (5, 2, vec![9, 0, 0, 1], 1));
    }

    #[test]
    fn damage_is_named() {
        let c = sample();
        let bytes = write(&c);
        let n = bytes.len();
        let err = |b: &[u8]| read_counts(&mut &b[..], "c").unwrap_err().to_string();
        // The 70-neuron layer's last state (9 bytes, 2 spare bits), before its 3-byte count
        // and the 200-neuron layer's 52 bytes.
        let mut b = bytes.clone();
        b[n - 52 - 4] |= 0x80;
        assert!(err(&b).contains("beyond its 70 neurons"), "{}", err(&b));
        let mut b = bytes.clone();
        b[n - 1] = 0;
        assert!(err(&b).contains("counted 0 times"), "{}", err(&b));
        // The first layer's states 0, 5, 7 with the second made 7: not ascending.
        let at = n - (6 + 18 + 32 + 24 + 52);
        let mut b = bytes.clone();
        b[at + 2] = 7;
        assert!(err(&b).contains("ascending"), "{}", err(&b));
        // The 64-neuron layer's counts made to wrap around.
        let at64 = at + 6 + 18;
        let mut b = bytes.clone();
        b[at64 + 24..at64 + 32].copy_from_slice(&2u64.to_le_bytes());
        assert!(err(&b).contains("overflow"), "{}", err(&b));
        for cut in [n - 1, at + 1, 20] {
            assert!(matches!(
                read_counts(&mut &bytes[..cut], "c"),
                Err(IoError::Truncated { .. })
            ));
        }
    }

    #[test]
    fn absurd_claims_allocate_nothing() {
        // A header claiming 2^40 distinct states of a 60-neuron layer, followed by one record:
        // cut short after reading one block, never a 2^40-record allocation.
        let mut c = Counts {
            measurement: Measurement::default(),
            layers: vec![layer(60, vec![1], vec![1])],
        };
        c.layers[0].observations = 1 << 41;
        let mut bytes = Vec::new();
        StreamKind::Counts
            .write_header(&mut bytes, COUNTS_VERSION)
            .unwrap();
        let header = CountsHeader {
            measurement: Measurement::default(),
            layers: vec![LayerHeader {
                name: "l".into(),
                neurons: 60,
                states_per_input: 1,
                observations: 1 << 41,
                distinct: 1 << 40,
                count_bytes: 1,
            }],
        };
        encode(&mut bytes, &header, "c").unwrap();
        bytes.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 1]);
        let e = read_counts(&mut bytes.as_slice(), "c").unwrap_err();
        assert!(e.to_string().contains("1 of 1099511627776"), "{e}");
        let mut bad = header;
        bad.layers[0].count_bytes = 9;
        let mut bytes = Vec::new();
        StreamKind::Counts
            .write_header(&mut bytes, COUNTS_VERSION)
            .unwrap();
        encode(&mut bytes, &bad, "c").unwrap();
        let e = read_counts(&mut bytes.as_slice(), "c").unwrap_err();
        assert!(e.to_string().contains("9-byte counts"), "{e}");
    }
}
