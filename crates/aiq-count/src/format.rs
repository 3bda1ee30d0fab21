//! The counts stream (`AIQCOUNT`), written by `count-states` and read by `count-states`
//! (to merge) and `score-aiq`.
//!
//! Layout (bincode with fixed-width little-endian integers, see `aiq_io`):
//!
//! ```text
//! "AIQCOUNT" u32 version
//! CountsHeader                 the measurement (model, data set, split, inputs, correct,
//!                              provenance chain) and per layer name, neurons, states per
//!                              input, observations, distinct
//! per layer, distinct × { state: words × u64, count: u64 }   little-endian, no length prefix,
//!                              states strictly ascending by value (deterministic bytes)
//! ```
//!
//! Because states are sorted and unique, two count files merge by a linear merge that adds
//! the counts of equal states: counts of shards add up to the counts of the whole.

use std::io::{self, Read, Write};

use aiq_io::{decode_bounded, encode, IoError, StreamKind};
use aiq_states::{words_for, MAX_NEURONS};
use serde::{Deserialize, Serialize};

use crate::{Counts, LayerCounts, Measurement};

/// Format version of the counts stream; bump on any layout change.
pub const COUNTS_VERSION: u32 = 1;
const HEADER_LIMIT: u64 = 16 << 20;
/// Records read at a time, so memory follows the data actually present.
const BLOCK_RECORDS: u64 = 1 << 16;

#[derive(Debug, Serialize, Deserialize)]
struct LayerHeader {
    name: String,
    neurons: u32,
    states_per_input: u32,
    observations: u64,
    distinct: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct CountsHeader {
    measurement: Measurement,
    layers: Vec<LayerHeader>,
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
            })
            .collect(),
    };
    encode(w, &header, name)?;
    let mut buf = Vec::with_capacity(1 << 16);
    for l in &counts.layers {
        for (state, &count) in l.states.chunks_exact(l.words()).zip(&l.counts) {
            for x in state.iter().chain([&count]) {
                buf.extend_from_slice(&x.to_le_bytes());
            }
            if buf.len() >= 1 << 16 {
                w.write_all(&buf).map_err(|e| IoError::io(name, e))?;
                buf.clear();
            }
        }
    }
    w.write_all(&buf).map_err(|e| IoError::io(name, e))
}

fn words_from_le_word(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    u64::from_le_bytes(a)
}

/// Reads a counts stream, magic included.
pub fn read_counts(r: &mut impl Read, name: &str) -> Result<Counts, IoError> {
    StreamKind::Counts.expect_header(r, name, COUNTS_VERSION)?;
    read_counts_after_magic(r, name)
}

/// Reads a counts stream whose magic and version the caller has already read and checked.
/// Every claim of the header is checked against the data: sizes, strict order, counts that
/// sum to the observations, no bits beyond the layer's neurons, no trailing bytes.
pub fn read_counts_after_magic(r: &mut impl Read, name: &str) -> Result<Counts, IoError> {
    let header: CountsHeader = decode_bounded(r, HEADER_LIMIT, name, "counts header")?;
    let corrupt = |detail: String| IoError::Corrupt {
        name: name.to_string(),
        what: "counts".to_string(),
        detail,
    };
    let mut layers = Vec::with_capacity(header.layers.len().min(1024));
    let mut bytes = Vec::new();
    for lh in header.layers {
        if lh.neurons == 0 || lh.neurons > MAX_NEURONS {
            return Err(corrupt(format!(
                "layer {:?} claims {} neurons",
                lh.name, lh.neurons
            )));
        }
        let words = words_for(lh.neurons as usize);
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
        let rec = (words as u64 + 1) * 8;
        let mut states = Vec::new();
        let mut counts = Vec::new();
        let mut left = lh.distinct;
        while left > 0 {
            let n = left.min(BLOCK_RECORDS);
            bytes.clear();
            r.by_ref()
                .take(n * rec)
                .read_to_end(&mut bytes)
                .map_err(|e| IoError::io(name, e))?;
            if bytes.len() as u64 != n * rec {
                return Err(IoError::Truncated {
                    name: name.to_string(),
                    what: format!(
                        "cut inside the counts of layer {:?} ({} of {} distinct states present)",
                        lh.name,
                        lh.distinct - left + bytes.len() as u64 / rec,
                        lh.distinct
                    ),
                });
            }
            // The block is really there: reserve for it, then decode straight into place.
            states.reserve(n as usize * words);
            counts.reserve(n as usize);
            for record in bytes.chunks_exact(rec as usize) {
                let (state, count) = record.split_at(words * 8);
                states.extend(state.chunks_exact(8).map(words_from_le_word));
                counts.push(words_from_le_word(count));
            }
            left -= n;
        }
        let layer = LayerCounts {
            name: lh.name,
            neurons: lh.neurons,
            states_per_input: lh.states_per_input,
            observations: lh.observations,
            states,
            counts,
        };
        layer.check().map_err(corrupt)?;
        layers.push(layer);
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
    Ok(Counts {
        measurement: header.measurement,
        layers,
    })
}
