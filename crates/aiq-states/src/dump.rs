//! The states dump stream (`AIQSTATE`), written by `dump-states` and read by `count-states`
//! and `score-aiq`.
//!
//! Layout (bincode with fixed-width little-endian integers, see `aiq_io`):
//!
//! ```text
//! "AIQSTATE" u32 version
//! StatesHeader                      model identity, data set, split, layers, labels, provenance
//! Record::Chunk { inputs, predictions }   then, per layer, inputs × states_per_input
//!                                         states of ceil(neurons / 8) bytes each, image-major
//!                                         (no length prefix: the header fixes it)
//! ... more chunks ...
//! Record::End { inputs, correct }
//! ```
//!
//! A state on disk is its `u64` words' little-endian bytes cut to `ceil(neurons / 8)`:
//! neuron `i` at bit `i % 8` of byte `i / 8`, TensorState's byte order. A 20-neuron conv
//! state takes 3 bytes instead of 8, which is most of the stream.
//!
//! Predictions travel with their chunk and the accuracy in the end record, because
//! `dump-states` writes the header before the forward pass and streams chunks as they are
//! computed, so memory stays bounded by a chunk rather than by the data set. A stream without
//! its end record is cut short and is reported as such, never used in part.

use std::io::{self, Read, Write};

use aiq_io::{decode_bounded, encode, read_full, IoError, Provenance, StreamKind};
use serde::{Deserialize, Serialize};

use crate::pack::words_for;

/// Format version of the states stream; bump on any layout change.
pub const STATES_VERSION: u32 = 2;

/// Largest layer width accepted from a stream (a sanity bound against corrupt headers).
pub const MAX_NEURONS: u32 = 1 << 20;
/// Largest number of states per input accepted from a stream (spatial positions of a conv).
pub const MAX_STATES_PER_INPUT: u32 = 1 << 24;
/// Largest chunk payload accepted from a stream, in bytes.
pub const MAX_CHUNK_BYTES: u64 = 1 << 30;
/// Bound on the encoded header (labels included) decoded from a stream.
const HEADER_LIMIT: u64 = 256 << 20;

/// What model produced the states: carried through the states and counts headers so a score
/// can name its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// Architecture, e.g. `lenet5` or `lenet300-100`.
    pub arch: String,
    /// Hidden widths as trained.
    pub widths: Vec<u32>,
    /// Width modifier of the run (as the training tool names it).
    pub modifier: String,
    pub seed: u64,
    /// Fraction of training labels randomized.
    pub randomize_labels: f64,
    /// The training data set.
    pub dataset: String,
    /// Trainable parameters.
    pub parameters: u64,
    pub epochs: u32,
    pub best_epoch: u32,
    pub train_accuracy: f64,
    pub test_accuracy: f64,
    /// What trained the model.
    pub provenance: Provenance,
}

/// One hidden layer whose states the stream holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    pub name: String,
    /// Neurons (channels of a conv layer) = bits per state.
    pub neurons: u32,
    /// States observed per input: 1 for a dense layer, the spatial positions for a conv layer.
    pub states_per_input: u32,
}

impl LayerSpec {
    /// `u64` words per state.
    pub fn words(&self) -> usize {
        words_for(self.neurons as usize)
    }

    /// Bytes of one state on disk.
    pub fn state_bytes(&self) -> usize {
        (self.neurons as usize).div_ceil(8)
    }

    /// States of `inputs` inputs, if it fits in memory arithmetic.
    fn states_for_inputs(&self, inputs: u64) -> Option<u64> {
        inputs.checked_mul(u64::from(self.states_per_input))
    }

    /// Words of `inputs` inputs, if it fits in memory arithmetic.
    fn words_for_inputs(&self, inputs: u64) -> Option<u64> {
        self.states_for_inputs(inputs)?
            .checked_mul(self.words() as u64)
    }
}

/// The header of a states stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatesHeader {
    /// The measured model, when the states come from one.
    pub model: Option<ModelIdentity>,
    /// The data set measured (may differ from the training set).
    pub dataset: String,
    /// `test` or `train`.
    pub split: String,
    pub layers: Vec<LayerSpec>,
    /// Number of inputs (images) in the stream.
    pub inputs: u64,
    /// Largest number of inputs in one chunk.
    pub chunk_inputs: u32,
    /// Every input's label, in input order.
    pub labels: Vec<u8>,
    /// What wrote the stream.
    pub provenance: Provenance,
}

impl StatesHeader {
    /// Checks the sizes a header claims, so that a corrupt one fails before anything is
    /// allocated for it.
    pub fn validate(&self, name: &str) -> Result<(), IoError> {
        let corrupt = |detail: String| IoError::Corrupt {
            name: name.to_string(),
            what: "states header".to_string(),
            detail,
        };
        if self.layers.is_empty() {
            return Err(corrupt("no layers".into()));
        }
        for l in &self.layers {
            if l.neurons == 0 || l.neurons > MAX_NEURONS {
                return Err(corrupt(format!(
                    "layer {:?} claims {} neurons (expected 1 to {MAX_NEURONS})",
                    l.name, l.neurons
                )));
            }
            if l.states_per_input == 0 || l.states_per_input > MAX_STATES_PER_INPUT {
                return Err(corrupt(format!(
                    "layer {:?} claims {} states per input (expected 1 to {MAX_STATES_PER_INPUT})",
                    l.name, l.states_per_input
                )));
            }
        }
        if self.chunk_inputs == 0 {
            return Err(corrupt("chunks of 0 inputs".into()));
        }
        match self.chunk_bytes(u64::from(self.chunk_inputs)) {
            Some(b) if b <= MAX_CHUNK_BYTES => {}
            _ => {
                return Err(corrupt(format!(
                    "a chunk of {} inputs would exceed {MAX_CHUNK_BYTES} bytes",
                    self.chunk_inputs
                )))
            }
        }
        if self.labels.len() as u64 != self.inputs {
            return Err(corrupt(format!(
                "{} labels for {} inputs",
                self.labels.len(),
                self.inputs
            )));
        }
        Ok(())
    }

    /// Bytes of packed states in a chunk of `inputs` inputs.
    fn chunk_bytes(&self, inputs: u64) -> Option<u64> {
        self.layers.iter().try_fold(0u64, |acc, l| {
            acc.checked_add(
                l.states_for_inputs(inputs)?
                    .checked_mul(l.state_bytes() as u64)?,
            )
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Record {
    Chunk { inputs: u32, predictions: Vec<u8> },
    End { inputs: u64, correct: u64 },
}

/// One chunk of consecutive inputs: their predictions and, per layer, their packed states
/// (`inputs × states_per_input` states of `words` words each, image-major).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatesChunk {
    /// Index of the chunk's first input.
    pub first_input: u64,
    pub predictions: Vec<u8>,
    pub layers: Vec<Vec<u64>>,
}

/// One chunk as stored: its predictions and, per layer, its states as `ceil(neurons / 8)`
/// bytes each (neuron `i` at bit `i % 8` of byte `i / 8`), image-major, in one reused buffer.
#[derive(Debug, Clone, Default)]
pub struct RawChunk {
    /// Index of the chunk's first input.
    pub first_input: u64,
    pub predictions: Vec<u8>,
    /// The states, then whatever a larger earlier chunk left after them: the buffer only
    /// grows, so that reading into it never zero-fills it again.
    bytes: Vec<u8>,
    /// End of each layer's bytes in `bytes`.
    ends: Vec<usize>,
}

impl PartialEq for RawChunk {
    fn eq(&self, other: &Self) -> bool {
        (self.first_input, &self.predictions, &self.ends, self.used())
            == (
                other.first_input,
                &other.predictions,
                &other.ends,
                other.used(),
            )
    }
}

impl Eq for RawChunk {}

impl RawChunk {
    /// The states of every layer, end to end.
    fn used(&self) -> &[u8] {
        &self.bytes[..self.ends.last().copied().unwrap_or(0)]
    }

    /// Layer `i`'s states, `ceil(neurons / 8)` bytes each.
    pub fn layer(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.ends.len()
    }
}

/// Writes a states stream chunk by chunk.
#[derive(Debug)]
pub struct StatesWriter<W: Write> {
    w: W,
    name: String,
    header: StatesHeader,
    written: u64,
    correct: u64,
    bytes: Vec<u8>,
}

impl<W: Write> StatesWriter<W> {
    /// Writes the magic, version and header.
    pub fn new(mut w: W, name: &str, header: StatesHeader) -> Result<Self, IoError> {
        header.validate(name)?;
        StreamKind::States
            .write_header(&mut w, STATES_VERSION)
            .map_err(|e| IoError::io(name, e))?;
        encode(&mut w, &header, name)?;
        Ok(StatesWriter {
            w,
            name: name.to_string(),
            header,
            written: 0,
            correct: 0,
            bytes: Vec::new(),
        })
    }

    /// Appends the next chunk: `predictions` of its inputs and each layer's packed states.
    pub fn write_chunk(&mut self, predictions: &[u8], layers: &[&[u64]]) -> Result<(), IoError> {
        let n = predictions.len() as u64;
        let misuse = |detail: String| IoError::Corrupt {
            name: self.name.clone(),
            what: "states chunk".to_string(),
            detail,
        };
        if n == 0
            || n > u64::from(self.header.chunk_inputs)
            || self.written + n > self.header.inputs
        {
            return Err(misuse(format!(
                "{n} inputs after {} of {} (chunks hold 1 to {})",
                self.written, self.header.inputs, self.header.chunk_inputs
            )));
        }
        if layers.len() != self.header.layers.len() {
            return Err(misuse(format!(
                "{} layers, header has {}",
                layers.len(),
                self.header.layers.len()
            )));
        }
        for (spec, words) in self.header.layers.iter().zip(layers) {
            if Some(words.len() as u64) != spec.words_for_inputs(n) {
                return Err(misuse(format!(
                    "layer {:?}: {} words for {n} inputs",
                    spec.name,
                    words.len()
                )));
            }
            let (w, spare) = (spec.words(), spec.words() * 64 - spec.neurons as usize);
            if spare > 0 && words.chunks_exact(w).any(|s| s[w - 1] >> (64 - spare) != 0) {
                return Err(misuse(format!(
                    "layer {:?}: a state has bits beyond its {} neurons",
                    spec.name, spec.neurons
                )));
            }
        }
        let start = self.written as usize;
        self.correct += predictions
            .iter()
            .zip(&self.header.labels[start..])
            .filter(|(p, l)| p == l)
            .count() as u64;
        encode(
            &mut self.w,
            &Record::Chunk {
                inputs: n as u32,
                predictions: predictions.to_vec(),
            },
            &self.name,
        )?;
        for (spec, words) in self.header.layers.iter().zip(layers) {
            self.bytes.clear();
            let (w, nb) = (spec.words(), spec.state_bytes());
            if w == 1 {
                // Every word stored whole, each `nb` bytes after the one before: the store
                // is one fixed-size move (an `nb`-byte slice was a `memcpy` call per state,
                // most of `dump-states`' writer thread), and the bytes it puts past the
                // state are overwritten by the next one, or cut off after the last.
                let len = words.len() * nb;
                self.bytes.resize(len + 8 - nb, 0);
                for (at, word) in (0..len).step_by(nb).zip(words.iter()) {
                    self.bytes[at..at + 8].copy_from_slice(&word.to_le_bytes());
                }
                self.bytes.truncate(len);
            } else {
                for state in words.chunks_exact(w) {
                    let all = state.iter().flat_map(|x| x.to_le_bytes());
                    self.bytes.extend(all.take(nb));
                }
            }
            self.w
                .write_all(&self.bytes)
                .map_err(|e| IoError::io(&self.name, e))?;
        }
        self.written += n;
        Ok(())
    }

    /// Writes the end record and returns the writer. Fails if fewer inputs were written than
    /// the header announced.
    pub fn finish(mut self) -> Result<W, IoError> {
        if self.written != self.header.inputs {
            return Err(IoError::Corrupt {
                name: self.name,
                what: "states stream".to_string(),
                detail: format!("{} of {} inputs written", self.written, self.header.inputs),
            });
        }
        encode(
            &mut self.w,
            &Record::End {
                inputs: self.written,
                correct: self.correct,
            },
            &self.name,
        )?;
        Ok(self.w)
    }
}

/// Reads a states stream chunk by chunk, checking every size against the header.
#[derive(Debug)]
pub struct StatesReader<R: Read> {
    r: R,
    name: String,
    header: StatesHeader,
    read: u64,
    correct: u64,
    ended: bool,
    /// Whether chunks are checked for bits beyond their layers' neurons as they are read
    /// (see [`leave_spare_bits_to_caller`](Self::leave_spare_bits_to_caller)).
    check_spare_bits: bool,
    /// Scratch for [`read_chunk_into`](Self::read_chunk_into).
    raw: RawChunk,
}

impl<R: Read> StatesReader<R> {
    /// Reads and checks the magic, version and header.
    pub fn new(mut r: R, name: &str) -> Result<Self, IoError> {
        StreamKind::States.expect_header(&mut r, name, STATES_VERSION)?;
        Self::after_magic(r, name)
    }

    /// Reads the header when the caller has already consumed and checked the 12-byte magic
    /// and version (to dispatch on the stream kind).
    pub fn after_magic(mut r: R, name: &str) -> Result<Self, IoError> {
        let header: StatesHeader = decode_bounded(&mut r, HEADER_LIMIT, name, "states header")?;
        header.validate(name)?;
        Ok(StatesReader {
            r,
            name: name.to_string(),
            header,
            read: 0,
            correct: 0,
            ended: false,
            check_spare_bits: true,
            raw: RawChunk::default(),
        })
    }

    /// Stops checking each chunk's states for bits beyond their layer's neurons: for a
    /// caller that reads every state byte anyway and checks them in that pass (the counters
    /// of `aiq-count`), then reports [`spare_bits_error`](Self::spare_bits_error). The
    /// reader's own check is a second pass over every byte: on LeNet-5's 22 MB of states,
    /// ~1.6 ms of `count-states`' ~50 ms of CPU.
    pub fn leave_spare_bits_to_caller(&mut self) {
        self.check_spare_bits = false;
    }

    /// The error for states of layer `layer` with bits set beyond its neurons (the top
    /// `8·state_bytes − neurons` bits of a state's last byte).
    pub fn spare_bits_error(&self, layer: usize) -> IoError {
        let spec = &self.header.layers[layer];
        self.corrupt(format!(
            "layer {:?} has states with bits beyond its {} neurons",
            spec.name, spec.neurons
        ))
    }

    pub fn header(&self) -> &StatesHeader {
        &self.header
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next chunk, or `None` after the end record (which is checked against everything
    /// read). A stream cut anywhere is an [`IoError::Truncated`].
    pub fn next_chunk(&mut self) -> Result<Option<StatesChunk>, IoError> {
        let mut chunk = StatesChunk::default();
        Ok(self.read_chunk_into(&mut chunk)?.then_some(chunk))
    }

    /// Reads the next chunk into `chunk`, reusing its buffers (no allocation per chunk once
    /// they have grown), states decoded into `u64` words; `false` after the end record.
    pub fn read_chunk_into(&mut self, chunk: &mut StatesChunk) -> Result<bool, IoError> {
        let mut raw = std::mem::take(&mut self.raw);
        let more = self.read_raw_chunk_into(&mut raw);
        if let Ok(true) = more {
            chunk.layers.resize_with(self.header.layers.len(), Vec::new);
            for (i, (spec, states)) in self.header.layers.iter().zip(&mut chunk.layers).enumerate()
            {
                let (w, nb) = (spec.words(), spec.state_bytes());
                states.clear();
                if w == 1 {
                    decode_words(raw.layer(i), nb, states);
                } else {
                    for state in raw.layer(i).chunks_exact(nb) {
                        // ceil(nb / 8) = w chunks: one per word.
                        states.extend(state.chunks(8).map(le_word));
                    }
                }
            }
            chunk.first_input = raw.first_input;
            std::mem::swap(&mut chunk.predictions, &mut raw.predictions);
        }
        self.raw = raw;
        more
    }

    /// Reads the next chunk as stored, each layer's states as `ceil(neurons / 8)` bytes
    /// apiece, into `chunk`'s reused buffer: one read per chunk and no decoding, so a
    /// counter can index its table straight from the bytes. Sizes, bits beyond the neurons
    /// (unless [left to the caller](Self::leave_spare_bits_to_caller)) and the end record
    /// are checked as by [`read_chunk_into`](Self::read_chunk_into); `false` after the end
    /// record.
    pub fn read_raw_chunk_into(&mut self, chunk: &mut RawChunk) -> Result<bool, IoError> {
        let Some((n, predictions)) = self.next_record()? else {
            return Ok(false);
        };
        let first = self.read;
        let total = self.layer_ends(n, &mut chunk.ends);
        // Read straight into the reused buffer with reads as large as the chunk (no
        // small first reads served through the input's buffer, no second copy). It
        // grows by at most doubling what has arrived (or 1 MiB), so a corrupt record
        // cannot make it allocate much more than the stream holds.
        let mut got = 0;
        while got < total {
            let end = if chunk.bytes.len() >= total {
                total
            } else {
                total.min(got.saturating_mul(2).max(1 << 20))
            };
            if chunk.bytes.len() < end {
                chunk.bytes.resize(end, 0);
            }
            let n = read_full(&mut self.r, &mut chunk.bytes[got..end])
                .map_err(|e| IoError::io(&self.name, e))?;
            got += n;
            if got < end {
                break;
            }
        }
        if got < total {
            return Err(self.cut_in_chunk(n, got, &chunk.ends));
        }
        self.accept_chunk(&predictions, |i| chunk.layer(i))?;
        chunk.first_input = first;
        chunk.predictions = predictions;
        Ok(true)
    }

    /// Reads and checks the next record: `Some((inputs, predictions))` for a chunk, whose
    /// states follow, or `None` after a valid end record (checked against everything read,
    /// and with nothing after it).
    fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>, IoError> {
        if self.ended {
            return Ok(None);
        }
        let limit = u64::from(self.header.chunk_inputs) + 64;
        let record: Record = decode_bounded(&mut self.r, limit, &self.name, "states record")
            .map_err(|e| match e {
                IoError::Truncated { name, .. } => IoError::Truncated {
                    name,
                    what: format!(
                        "cut after {} of {} inputs, before the end record",
                        self.read, self.header.inputs
                    ),
                },
                other => other,
            })?;
        match record {
            Record::End { inputs, correct } => {
                if inputs != self.read || self.read != self.header.inputs || correct != self.correct
                {
                    return Err(self.corrupt(format!(
                        "end record says {inputs} inputs ({correct} correct); the header announced {} and the chunks hold {} ({} correct)",
                        self.header.inputs, self.read, self.correct
                    )));
                }
                let mut probe = [0u8; 1];
                loop {
                    match self.r.read(&mut probe) {
                        Ok(0) => break,
                        Ok(_) => return Err(self.corrupt("data after the end record".into())),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(IoError::io(&self.name, e)),
                    }
                }
                self.ended = true;
                Ok(None)
            }
            Record::Chunk {
                inputs,
                predictions,
            } => {
                let n = u64::from(inputs);
                if n == 0
                    || inputs > self.header.chunk_inputs
                    || predictions.len() as u64 != n
                    || self.read + n > self.header.inputs
                {
                    return Err(self.corrupt(format!(
                        "chunk of {inputs} inputs with {} predictions after {} of {} inputs",
                        predictions.len(),
                        self.read,
                        self.header.inputs
                    )));
                }
                Ok(Some((n, predictions)))
            }
        }
    }

    /// The end of each layer's states in a chunk of `n` inputs, into `ends`; the total.
    fn layer_ends(&self, n: u64, ends: &mut Vec<usize>) -> usize {
        // Validated in the header: a chunk fits in MAX_CHUNK_BYTES.
        ends.clear();
        let mut total = 0usize;
        for spec in &self.header.layers {
            total += spec.states_for_inputs(n).unwrap_or(0) as usize * spec.state_bytes();
            ends.push(total);
        }
        total
    }

    /// The error for a chunk of `n` inputs whose states stop after `got` bytes.
    fn cut_in_chunk(&self, n: u64, got: usize, ends: &[usize]) -> IoError {
        let cut = ends.iter().position(|&e| got < e).unwrap_or(0);
        IoError::Truncated {
            name: self.name.clone(),
            what: format!(
                "cut inside the states of layer {:?} in inputs {}..{}",
                self.header.layers[cut].name,
                self.read,
                self.read + n
            ),
        }
    }

    /// Checks a chunk's states for bits beyond the neurons, then counts it as read.
    fn accept_chunk<'b>(
        &mut self,
        predictions: &[u8],
        layer: impl Fn(usize) -> &'b [u8],
    ) -> Result<(), IoError> {
        for (i, spec) in self.header.layers.iter().enumerate() {
            let spare = spec.state_bytes() * 8 - spec.neurons as usize;
            if self.check_spare_bits && spare > 0 && stray_bits(layer(i), spec.state_bytes(), spare)
            {
                return Err(self.spare_bits_error(i));
            }
        }
        let first = self.read as usize;
        let labels = &self.header.labels[first..first + predictions.len()];
        self.correct += predictions
            .iter()
            .zip(labels)
            .filter(|(p, l)| p == l)
            .count() as u64;
        self.read += predictions.len() as u64;
        Ok(())
    }

    fn corrupt(&self, detail: String) -> IoError {
        IoError::Corrupt {
            name: self.name.clone(),
            what: "states stream".to_string(),
            detail,
        }
    }

    /// Inputs whose prediction equals the label, among the chunks read so far.
    pub fn correct(&self) -> u64 {
        self.correct
    }

    /// True once the end record has been read and checked.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Accuracy on the stream's inputs; known once the end record has been read.
    pub fn accuracy(&self) -> Option<f64> {
        (self.ended && self.read > 0).then(|| self.correct as f64 / self.read as f64)
    }
}

/// One chunk's states borrowed from a stream held in memory (a mapped file): what
/// [`RawChunk`] holds, without the copy.
#[derive(Debug, Clone)]
pub struct ChunkRef<'a> {
    /// Index of the chunk's first input.
    pub first_input: u64,
    layers: Vec<&'a [u8]>,
}

impl<'a> ChunkRef<'a> {
    /// Layer `i`'s states, `ceil(neurons / 8)` bytes each.
    pub fn layer(&self, i: usize) -> &'a [u8] {
        self.layers[i]
    }
}

impl<'a> StatesReader<&'a [u8]> {
    /// The next chunk of a stream held in memory, borrowed rather than copied and checked
    /// as by [`read_raw_chunk_into`](Self::read_raw_chunk_into); `None` after the end
    /// record.
    pub fn next_chunk_ref(&mut self) -> Result<Option<ChunkRef<'a>>, IoError> {
        let Some((n, predictions)) = self.next_record()? else {
            return Ok(None);
        };
        let first = self.read;
        let mut ends = Vec::with_capacity(self.header.layers.len());
        let total = self.layer_ends(n, &mut ends);
        if self.r.len() < total {
            return Err(self.cut_in_chunk(n, self.r.len(), &ends));
        }
        let (bytes, rest) = self.r.split_at(total);
        self.r = rest;
        let mut start = 0;
        let layers: Vec<&'a [u8]> = ends
            .iter()
            .map(|&end| {
                let layer = &bytes[start..end];
                start = end;
                layer
            })
            .collect();
        self.accept_chunk(&predictions, |i| layers[i])?;
        Ok(Some(ChunkRef {
            first_input: first,
            layers,
        }))
    }
}

/// Little-endian bytes to words (the stream's byte order on every machine).
pub fn words_from_le(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(le_word).collect()
}

/// Decodes one-word states of `nb` bytes each, with the width known at compile time so
/// that each state is a single load rather than a call to `memcpy`.
fn decode_words(bytes: &[u8], nb: usize, out: &mut Vec<u64>) {
    fn fixed<const N: usize>(bytes: &[u8], out: &mut Vec<u64>) {
        out.extend(bytes.chunks_exact(N).map(|c| {
            let mut a = [0u8; 8];
            a[..N].copy_from_slice(c);
            u64::from_le_bytes(a)
        }));
    }
    match nb {
        1 => fixed::<1>(bytes, out),
        2 => fixed::<2>(bytes, out),
        3 => fixed::<3>(bytes, out),
        4 => fixed::<4>(bytes, out),
        5 => fixed::<5>(bytes, out),
        6 => fixed::<6>(bytes, out),
        7 => fixed::<7>(bytes, out),
        _ => fixed::<8>(bytes, out),
    }
}

/// True if any `nb`-byte state has a bit set among the top `spare` bits of its last byte
/// (bits beyond the layer's neurons). Reads 8·`nb` bytes (8 states) as `nb` words at a time
/// against a fixed mask of those bits, rather than one strided byte per state; widths up to
/// 8 bytes get a copy compiled for their width (the inner loop unrolled: ~2.5× faster on
/// LeNet-5's 3- and 7-byte states).
fn stray_bits(bytes: &[u8], nb: usize, spare: usize) -> bool {
    match nb {
        1 => stray_bits_of::<1>(bytes, spare),
        2 => stray_bits_of::<2>(bytes, spare),
        3 => stray_bits_of::<3>(bytes, spare),
        4 => stray_bits_of::<4>(bytes, spare),
        5 => stray_bits_of::<5>(bytes, spare),
        6 => stray_bits_of::<6>(bytes, spare),
        7 => stray_bits_of::<7>(bytes, spare),
        8 => stray_bits_of::<8>(bytes, spare),
        _ => stray_bits_any(bytes, nb, spare),
    }
}

/// The word masks of 8 states of `nb` bytes: the top `spare` bits of each last byte.
fn stray_masks(nb: usize, spare: usize) -> Vec<u64> {
    let high = 0xffu8 << (8 - spare);
    let mask_bytes: Vec<u8> = (0..8 * nb)
        .map(|i| if i % nb == nb - 1 { high } else { 0 })
        .collect();
    words_from_le(&mask_bytes)
}

fn stray_bits_of<const NB: usize>(bytes: &[u8], spare: usize) -> bool {
    let mut mask = [0u64; NB];
    mask.copy_from_slice(&stray_masks(NB, spare));
    let blocks = bytes.chunks_exact(8 * NB);
    let tail = blocks.remainder();
    let mut acc = [0u64; NB];
    for block in blocks {
        for (k, w) in block.chunks_exact(8).enumerate() {
            acc[k] |= u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        }
    }
    let high = 0xffu8 << (8 - spare);
    acc.iter().zip(&mask).any(|(a, m)| a & m != 0)
        || tail.chunks_exact(NB).any(|s| s[NB - 1] & high != 0)
}

fn stray_bits_any(bytes: &[u8], nb: usize, spare: usize) -> bool {
    let high = 0xffu8 << (8 - spare);
    let mask = stray_masks(nb, spare);
    let blocks = bytes.chunks_exact(8 * nb);
    let tail = blocks.remainder();
    let mut acc = 0u64;
    for block in blocks {
        for (w, m) in block.chunks_exact(8).zip(&mask) {
            acc |= le_word(w) & m;
        }
    }
    acc != 0 || tail.chunks_exact(nb).any(|s| s[nb - 1] & high != 0)
}

/// Up to 8 little-endian bytes as a word, the missing high bytes zero.
#[inline]
fn le_word(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(inputs: u64) -> StatesHeader {
        StatesHeader {
            model: None,
            dataset: "mnist".into(),
            split: "test".into(),
            layers: vec![
                LayerSpec {
                    name: "conv1".into(),
                    neurons: 3,
                    states_per_input: 4,
                },
                LayerSpec {
                    name: "dense".into(),
                    neurons: 70,
                    states_per_input: 1,
                },
            ],
            inputs,
            chunk_inputs: 2,
            labels: (0..inputs).map(|i| (i % 10) as u8).collect(),
            provenance: Provenance::current("test", "0"),
        }
    }

    fn stream(inputs: u64) -> Vec<u8> {
        let mut w = StatesWriter::new(Vec::new(), "mem", header(inputs)).unwrap();
        let mut done = 0;
        while done < inputs {
            let n = (inputs - done).min(2);
            let preds: Vec<u8> = (done..done + n)
                .map(|i| if i == 1 { 7 } else { (i % 10) as u8 })
                .collect();
            let conv: Vec<u64> = (0..n * 4).map(|i| i % 8).collect();
            let dense: Vec<u64> = (0..n * 2).map(|i| (i % 4) << 2).collect();
            w.write_chunk(&preds, &[&conv, &dense]).unwrap();
            done += n;
        }
        w.finish().unwrap()
    }

    #[test]
    fn round_trip_with_accuracy() {
        let bytes = stream(5);
        let mut r = StatesReader::new(bytes.as_slice(), "mem").unwrap();
        assert_eq!(r.header(), &header(5));
        let mut firsts = Vec::new();
        while let Some(c) = r.next_chunk().unwrap() {
            assert_eq!(c.layers[0].len(), c.predictions.len() * 4);
            assert_eq!(c.layers[1].len(), c.predictions.len() * 2);
            firsts.push(c.first_input);
        }
        assert_eq!(firsts, vec![0, 2, 4]);
        assert_eq!(r.accuracy(), Some(0.8));
    }

    #[test]
    fn every_cut_is_reported_as_truncated() {
        let bytes = stream(3);
        for cut in 0..bytes.len() {
            let res = (|| {
                let mut r = StatesReader::new(&bytes[..cut], "cut.states")?;
                while r.next_chunk()?.is_some() {}
                Ok::<_, IoError>(())
            })();
            let err = res.unwrap_err();
            assert!(
                matches!(err, IoError::Truncated { .. }),
                "cut at {cut}: {err}"
            );
            assert!(err.to_string().contains("cut.states"));
        }
    }

    /// Each chunk's first input and layers' bytes, then the accuracy.
    type ReadBack = (Vec<(u64, Vec<Vec<u8>>)>, Option<f64>);

    /// Every chunk of `bytes` read both ways, copied and borrowed; or the error each way.
    fn both_ways(bytes: &[u8]) -> [Result<ReadBack, String>; 2] {
        let copied = (|| {
            let mut r = StatesReader::new(bytes, "mem")?;
            let (mut chunk, mut out) = (RawChunk::default(), Vec::new());
            while r.read_raw_chunk_into(&mut chunk)? {
                let layers = (0..chunk.layers()).map(|i| chunk.layer(i).to_vec());
                out.push((chunk.first_input, layers.collect()));
            }
            Ok::<_, IoError>((out, r.accuracy()))
        })();
        let borrowed = (|| {
            let mut r = StatesReader::new(bytes, "mem")?;
            let mut out = Vec::new();
            let n = r.header().layers.len();
            while let Some(chunk) = r.next_chunk_ref()? {
                let layers = (0..n).map(|i| chunk.layer(i).to_vec());
                out.push((chunk.first_input, layers.collect()));
            }
            Ok::<_, IoError>((out, r.accuracy()))
        })();
        [copied, borrowed].map(|r| r.map_err(|e| e.to_string()))
    }

    #[test]
    fn borrowed_chunks_are_the_copied_chunks() {
        let bytes = stream(5);
        let [copied, borrowed] = both_ways(&bytes);
        let (chunks, accuracy) = copied.unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(accuracy, Some(0.8));
        assert_eq!(borrowed.unwrap(), (chunks, accuracy));
        // Cut anywhere, or damaged: the same error either way.
        for cut in 0..bytes.len() {
            let [copied, borrowed] = both_ways(&bytes[..cut]);
            assert!(copied.is_err(), "cut at {cut}");
            assert_eq!(borrowed, copied, "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        let [copied, borrowed] = both_ways(&long);
        assert!(copied
            .as_ref()
            .unwrap_err()
            .contains("after the end record"));
        assert_eq!(borrowed, copied);
    }

    #[test]
    fn trailing_data_and_absurd_headers_are_corrupt() {
        let mut bytes = stream(2);
        bytes.push(0);
        let mut r = StatesReader::new(bytes.as_slice(), "x").unwrap();
        let err = loop {
            match r.next_chunk() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("accepted trailing data"),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, IoError::Corrupt { .. }), "{err}");

        let mut h = header(1);
        h.layers[0].neurons = u32::MAX;
        assert!(matches!(h.validate("x"), Err(IoError::Corrupt { .. })));
        let mut h = header(1);
        h.chunk_inputs = u32::MAX;
        h.layers[0].states_per_input = MAX_STATES_PER_INPUT;
        assert!(matches!(h.validate("x"), Err(IoError::Corrupt { .. })));
        // A header claiming 2^40 labels on a short stream: truncated, nothing huge allocated.
        let mut bytes = Vec::new();
        StreamKind::States
            .write_header(&mut bytes, STATES_VERSION)
            .unwrap();
        encode(&mut bytes, &None::<ModelIdentity>, "x").unwrap();
        encode(&mut bytes, &"mnist", "x").unwrap();
        encode(&mut bytes, &"test", "x").unwrap();
        encode(&mut bytes, &header(0).layers, "x").unwrap();
        encode(&mut bytes, &(1u64 << 40), "x").unwrap();
        encode(&mut bytes, &2u32, "x").unwrap();
        encode(&mut bytes, &(1u64 << 40), "x").unwrap();
        let err = StatesReader::new(bytes.as_slice(), "x").unwrap_err();
        assert!(
            matches!(err, IoError::Truncated { .. } | IoError::Corrupt { .. }),
            "{err}"
        );
    }

    #[test]
    fn bits_beyond_the_neurons_are_corrupt() {
        let mut w = StatesWriter::new(Vec::new(), "mem", header(1)).unwrap();
        // The writer refuses them...
        assert!(w.write_chunk(&[0], &[&[0; 4], &[0, 1 << 6]]).is_err());
        w.write_chunk(&[0], &[&[0; 4], &[0, 1 << 5]]).unwrap();
        let mut bytes = w.finish().unwrap();
        // ...and the reader finds them in a damaged stream: bit 70 of the 70-neuron layer is
        // bit 6 of the state's 9th byte, just before the 20-byte end record.
        let at = bytes.len() - 20 - 1;
        assert_eq!(bytes[at], 1 << 5);
        bytes[at] = 1 << 6;
        let mut r = StatesReader::new(bytes.as_slice(), "mem").unwrap();
        let err = r.next_chunk().unwrap_err();
        assert!(err.to_string().contains("beyond its 70 neurons"), "{err}");
    }

    #[test]
    fn stray_bits_found_wherever_they_are() {
        for nb in 1..=13usize {
            for spare in 1..8usize {
                for states in [1usize, 7, 8, 9, 17, 40] {
                    let clean = vec![0xffu8 >> spare; nb * states];
                    let mut clean = clean;
                    // Full bytes everywhere but the last byte of each state.
                    for (i, b) in clean.iter_mut().enumerate() {
                        if i % nb != nb - 1 {
                            *b = 0xff;
                        }
                    }
                    assert!(!stray_bits(&clean, nb, spare), "{nb} {spare} {states}");
                    for s in 0..states {
                        let mut bad = clean.clone();
                        bad[s * nb + nb - 1] |= 0x80;
                        assert!(stray_bits(&bad, nb, spare), "{nb} {spare} {states} {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_kind_and_version() {
        let mut bytes = Vec::new();
        StreamKind::Model.write_header(&mut bytes, 1).unwrap();
        let err = StatesReader::new(bytes.as_slice(), "m").unwrap_err();
        assert!(matches!(err, IoError::WrongKind { .. }), "{err}");
        let mut bytes = stream(1);
        bytes[8] = 99;
        let err = StatesReader::new(bytes.as_slice(), "m").unwrap_err();
        assert!(matches!(err, IoError::Version { found: 99, .. }), "{err}");
    }

    #[test]
    fn writer_rejects_misuse() {
        let mut w = StatesWriter::new(Vec::new(), "mem", header(2)).unwrap();
        assert!(w.write_chunk(&[0], &[&[0; 3], &[0; 2]]).is_err());
        assert!(w.write_chunk(&[0, 1, 2], &[&[0; 12], &[0; 6]]).is_err());
        w.write_chunk(&[0], &[&[0; 4], &[0; 2]]).unwrap();
        assert!(w.finish().is_err());
    }
}
