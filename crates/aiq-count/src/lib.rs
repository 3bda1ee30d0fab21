//! Exact counting of distinct neuron states, the mergeable counts format and `.npy` import.
//!
//! [`count_states`] reads a states stream (`AIQSTATE`) and counts every layer's distinct
//! states exactly, in parallel over chunks, with memory bounded by the distinct states rather
//! than the observations. The result, [`Counts`], holds each layer's distinct states sorted by
//! value with their counts, and is written and read as the `AIQCOUNT` stream
//! ([`write_counts`], [`read_counts`]). Counts of shards [`Counts::merge`] into the counts of
//! the whole. [`summarize_any`] gives what a score needs, each layer's [`count_profile`],
//! which a counts stream's header holds. [`count_npy`] counts activations exported from any
//! framework.
//!
//! ```
//! use aiq_count::LayerCounter;
//! let mut c = LayerCounter::new(3);
//! c.add(&[0b101, 0b001, 0b101]);
//! let layer = c.finish("dense", 1);
//! assert_eq!((layer.states, layer.counts), (vec![0b001, 0b101], vec![1, 2]));
//! ```

// Tests may unwrap: a panic there is a test failure with its message.

mod counter;
mod format;
mod npy;

use std::io::Read;
use std::sync::Mutex;

use aiq_io::{IoError, Provenance, Source, StreamKind};
use aiq_states::{words_for, ChunkRef, ModelIdentity, RawChunk, StatesReader, STATES_VERSION};
use serde::{Deserialize, Serialize};

pub use counter::{FoldHasher, LayerCounter};
pub use format::{
    read_counts, read_counts_after_magic, summarize_counts_after_magic, write_counts,
    write_counts_to, COUNTS_VERSION,
};
pub use npy::{count_npy, read_npy_header, NpyHeader};

/// What was measured: carried from the states header into the counts header and the score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Measurement {
    /// The measured model (`None` for arrays imported from `.npy`).
    pub model: Option<ModelIdentity>,
    /// The data set measured.
    pub dataset: Option<String>,
    /// `test` or `train`.
    pub split: Option<String>,
    /// Inputs measured, when known.
    pub inputs: Option<u64>,
    /// Inputs predicted correctly, when known.
    pub correct: Option<u64>,
    /// The chain of tools that produced these counts, oldest first (the model's own
    /// training provenance is in `model`).
    pub provenance: Vec<Provenance>,
}

impl Measurement {
    /// Accuracy on the measured inputs, when known.
    pub fn accuracy(&self) -> Option<f64> {
        match (self.correct, self.inputs) {
            (Some(c), Some(n)) if n > 0 => Some(c as f64 / n as f64),
            _ => None,
        }
    }
}

/// One layer's distinct states, ascending by value, and how often each was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerCounts {
    pub name: String,
    pub neurons: u32,
    /// States per input (spatial positions of a conv layer; 0 when unknown).
    pub states_per_input: u32,
    /// Observed states, duplicates included (= the sum of `counts`).
    pub observations: u64,
    /// Distinct states, `words()` words each, strictly ascending by value.
    pub states: Vec<u64>,
    /// Count of each distinct state.
    pub counts: Vec<u64>,
}

impl LayerCounts {
    /// `u64` words per state.
    pub fn words(&self) -> usize {
        words_for(self.neurons as usize).max(1)
    }

    pub fn distinct(&self) -> usize {
        self.counts.len()
    }

    /// The `i`-th distinct state.
    pub fn state(&self, i: usize) -> &[u64] {
        let w = self.words();
        &self.states[i * w..(i + 1) * w]
    }

    /// Everything but the states: what a score needs of the layer.
    pub fn summary(&self) -> LayerSummary {
        LayerSummary {
            name: self.name.clone(),
            neurons: self.neurons,
            states_per_input: self.states_per_input,
            observations: self.observations,
            distinct: self.distinct() as u64,
            profile: count_profile(&self.counts),
        }
    }

    /// Adds another layer's counts of the same states (a linear merge of two sorted lists).
    fn merge(&mut self, other: &LayerCounts) {
        let w = self.words();
        let (mut states, mut counts) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < self.distinct() || j < other.distinct() {
            let ord = if i == self.distinct() {
                std::cmp::Ordering::Greater
            } else if j == other.distinct() {
                std::cmp::Ordering::Less
            } else {
                self.state(i).iter().rev().cmp(other.state(j).iter().rev())
            };
            match ord {
                std::cmp::Ordering::Less => {
                    states.extend_from_slice(self.state(i));
                    counts.push(self.counts[i]);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    states.extend_from_slice(other.state(j));
                    counts.push(other.counts[j]);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    states.extend_from_slice(self.state(i));
                    counts.push(self.counts[i] + other.counts[j]);
                    i += 1;
                    j += 1;
                }
            }
        }
        debug_assert_eq!(states.len(), counts.len() * w);
        self.states = states;
        self.counts = counts;
        self.observations += other.observations;
    }
}

/// One layer as a consumer of counts alone (scoring) sees it: everything but the states.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    pub name: String,
    pub neurons: u32,
    /// States per input (0 when unknown).
    pub states_per_input: u32,
    pub observations: u64,
    pub distinct: u64,
    /// The layer's [`count_profile`]: every entropy of the layer follows from it.
    pub profile: Vec<(u64, u64)>,
}

/// Counts below this are tallied in an array by [`count_profile`], the others sorted.
const PROFILE_SMALL: usize = 1024;

/// How many distinct states were seen each number of times: `(count, states)` pairs, by
/// ascending count, zero counts left out. Entropies of any order depend on the counts only
/// through this profile, and it is short: `k` different counts sum to at least `k(k+1)/2`,
/// so it has at most `sqrt(2 · observations)` entries (LeNet-5 conv2: 444k distinct
/// states, a few hundred entries). The counts file stores it in its header, so that a score
/// needs no record (see `format`).
pub fn count_profile(counts: &[u64]) -> Vec<(u64, u64)> {
    let mut tally = ProfileTally::default();
    tally.add(counts);
    tally.finish()
}

/// A [`count_profile`] built from counts handed over in runs.
#[derive(Debug)]
pub(crate) struct ProfileTally {
    small: Box<[u64; PROFILE_SMALL]>,
    large: Vec<u64>,
}

impl Default for ProfileTally {
    fn default() -> Self {
        ProfileTally {
            small: Box::new([0; PROFILE_SMALL]),
            large: Vec::new(),
        }
    }
}

impl ProfileTally {
    pub(crate) fn add(&mut self, counts: &[u64]) {
        for &c in counts {
            match self.small.get_mut(c as usize) {
                Some(n) => *n += 1,
                None => self.large.push(c),
            }
        }
    }

    /// Adds another tally's counts.
    pub(crate) fn merge(&mut self, mut other: ProfileTally) {
        self.small
            .iter_mut()
            .zip(other.small.iter())
            .for_each(|(a, b)| *a += b);
        self.large.append(&mut other.large);
    }

    pub(crate) fn finish(mut self) -> Vec<(u64, u64)> {
        self.large.sort_unstable();
        let mut profile: Vec<(u64, u64)> = (1..PROFILE_SMALL)
            .filter(|&c| self.small[c] > 0)
            .map(|c| (c as u64, self.small[c]))
            .collect();
        for &c in &self.large {
            match profile.last_mut() {
                Some((last, n)) if *last == c => *n += 1,
                _ => profile.push((c, 1)),
            }
        }
        profile
    }
}

/// Why `profile` cannot be the [`count_profile`] of `distinct` states seen `observations`
/// times in all, if it cannot: counts ascending and above zero, every entry some states.
pub fn check_profile(
    profile: &[(u64, u64)],
    distinct: u64,
    observations: u64,
) -> Result<(), String> {
    let (mut states, mut total, mut prev) = (0u64, 0u64, 0u64);
    for &(c, n) in profile {
        if c <= prev || n == 0 {
            return Err(format!(
                "its count profile has {n} states seen {c} times after a count of {prev}"
            ));
        }
        prev = c;
        states = states.saturating_add(n);
        total = total.saturating_add(c.saturating_mul(n));
    }
    if (states, total) != (distinct, observations) {
        return Err(format!(
            "its count profile sums to {states} distinct states in {total} observations, \
             where the layer claims {distinct} in {observations}"
        ));
    }
    Ok(())
}

/// Every layer's counts plus what was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    pub measurement: Measurement,
    pub layers: Vec<LayerCounts>,
}

/// Errors of reading or merging counts.
#[derive(Debug, thiserror::Error)]
pub enum CountError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error("{name}: expected a states or counts stream, found a {found} stream")]
    NotCountable { name: String, found: StreamKind },
}

/// Counts a states stream or reads a counts stream, told apart by the magic. A states
/// stream given as [`Source::Bytes`] (a mapped file) is counted where it lies, uncopied.
pub fn read_any<'a>(src: impl Into<Source<'a>>, name: &str) -> Result<Counts, CountError> {
    let mut src = src.into();
    let (kind, version) = src.read_header(name)?;
    read_after_header(kind, version, src, name)
}

fn read_after_header(
    kind: StreamKind,
    version: u32,
    src: Source<'_>,
    name: &str,
) -> Result<Counts, CountError> {
    match kind {
        StreamKind::States => {
            StreamKind::States.check(kind, version, name, STATES_VERSION)?;
            Ok(match src {
                Source::Bytes(b) => count_states_in_memory(StatesReader::after_magic(b, name)?)?,
                Source::Reader(r) => count_states(StatesReader::after_magic(r, name)?)?,
            })
        }
        StreamKind::Counts => {
            StreamKind::Counts.check(kind, version, name, COUNTS_VERSION)?;
            Ok(read_counts_after_magic(&mut src.into_reader(), name)?)
        }
        found => Err(CountError::NotCountable {
            name: name.to_string(),
            found,
        }),
    }
}

/// A states or counts stream's measurement and every layer's summary, with its count
/// profile: all a score needs. A counts stream's records are checked against its CRC-32
/// rather than decoded, so a score of a counts file reads it at memory speed
/// ([`format::summarize_counts_after_magic`]); a states stream is counted first, as by
/// [`read_any`].
pub fn summarize_any<'a>(
    src: impl Into<Source<'a>>,
    name: &str,
) -> Result<(Measurement, Vec<LayerSummary>), CountError> {
    let mut src = src.into();
    let (kind, version) = src.read_header(name)?;
    match kind {
        StreamKind::Counts => {
            StreamKind::Counts.check(kind, version, name, COUNTS_VERSION)?;
            Ok(summarize_counts_after_magic(&mut src.into_reader(), name)?)
        }
        _ => {
            use rayon::prelude::*;
            let counts = read_after_header(kind, version, src, name)?;
            let summaries = counts.layers.par_iter().map(LayerCounts::summary).collect();
            Ok((counts.measurement, summaries))
        }
    }
}

/// Counts that cannot be merged, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot merge {name} into the counts before it: {detail}")]
pub struct MergeError {
    pub name: String,
    pub detail: String,
}

impl Counts {
    /// Adds the counts of another shard of the same measurement: same model, data set,
    /// split and layers. Counts of equal states add; inputs and correct predictions add.
    pub fn merge(&mut self, other: Counts, name: &str) -> Result<(), MergeError> {
        let err = |detail: String| MergeError {
            name: name.to_string(),
            detail,
        };
        let (a, b) = (&self.measurement, &other.measurement);
        if a.model != b.model {
            return Err(err("they measure different models".into()));
        }
        if (&a.dataset, &a.split) != (&b.dataset, &b.split) {
            return Err(err(format!(
                "data set/split {:?}/{:?} versus {:?}/{:?}",
                b.dataset, b.split, a.dataset, a.split
            )));
        }
        let layout = |c: &Counts| {
            c.layers
                .iter()
                .map(|l| (l.name.clone(), l.neurons))
                .collect::<Vec<_>>()
        };
        if layout(self) != layout(&other) {
            return Err(err(format!(
                "layers {:?} versus {:?}",
                layout(&other),
                layout(self)
            )));
        }
        for (l, o) in self.layers.iter_mut().zip(&other.layers) {
            l.merge(o);
            if l.states_per_input != o.states_per_input {
                l.states_per_input = 0;
            }
        }
        let m = &mut self.measurement;
        let add = |x: Option<u64>, y: Option<u64>| x.zip(y).map(|(x, y)| x + y);
        m.inputs = add(m.inputs, other.measurement.inputs);
        m.correct = add(m.correct, other.measurement.correct);
        m.provenance.extend(other.measurement.provenance);
        Ok(())
    }
}

/// Counts every layer of a states stream and checks the stream to its end record: a stream
/// cut short is an error, never counted in part. Bits set beyond a layer's neurons are
/// found by the counters in their counting pass rather than by the reader in a pass of its
/// own ([`LayerCounter::bits_beyond_neurons`]), and reported as the reader would.
///
/// With several threads, when the layers' estimated costs split evenly enough, each thread
/// counts whole layers (`count_by_layers`): no table is duplicated and nothing is merged.
/// Otherwise one worker per thread counts whole chunks into its own counters, merged at the
/// end (`count_by_chunks`). Either way each count is an exact integer sum, so the result
/// is the same for any thread count.
pub fn count_states<R: Read + Send>(reader: StatesReader<R>) -> Result<Counts, IoError> {
    count_split(reader, count_by_layers, count_by_chunks)
}

/// [`count_states`] of a stream held in memory (a mapped file): the chunks are counted
/// where they lie, so no thread copies them and the reading thread only checks them.
pub fn count_states_in_memory(reader: StatesReader<&[u8]>) -> Result<Counts, IoError> {
    count_split(reader, count_by_layers_in_memory, count_by_chunks_in_memory)
}

/// A reader and its counters once every chunk is counted.
type Counted<R> = Result<(StatesReader<R>, Vec<LayerCounter>), IoError>;

/// Counts with `by_layers` when the layers split evenly among the pool's threads
/// ([`layer_groups`]), else with `by_chunks`, then checks the end and builds the counts.
fn count_split<R: Read>(
    mut reader: StatesReader<R>,
    by_layers: impl FnOnce(StatesReader<R>, &[Vec<usize>]) -> Counted<R>,
    by_chunks: impl FnOnce(StatesReader<R>, usize) -> Counted<R>,
) -> Result<Counts, IoError> {
    // The counters check the states' spare bits as they count them (`finish_counts`).
    reader.leave_spare_bits_to_caller();
    let header = reader.header().clone();
    let threads = rayon::current_num_threads().max(1);
    let (reader, counters) = match layer_groups(&header, threads) {
        Some(groups) => by_layers(reader, &groups)?,
        None => by_chunks(reader, threads)?,
    };
    finish_counts(header, reader, counters)
}

/// Estimated nanoseconds to count one observation of a layer of `neurons` neurons (measured
/// on LeNet-5: a dense-table increment, a sorted-run push and sort, a hash-map probe).
fn cost_per_observation(neurons: u32) -> f64 {
    match neurons {
        0..=counter::DENSE_MAX_NEURONS => 2.0,
        21..=128 => 15.0,
        _ => 50.0,
    }
}

/// Splits the layers among `threads` threads by estimated cost (longest first, each to the
/// least loaded thread; thread 0 also reads the stream), or `None` when one thread would
/// carry more than 3/4 of the work (then splitting by chunks balances better).
fn layer_groups(header: &aiq_states::StatesHeader, threads: usize) -> Option<Vec<Vec<usize>>> {
    let n = header.layers.len();
    if threads < 2 || n < 2 {
        return None;
    }
    let per_input = |l: &aiq_states::LayerSpec| f64::from(l.states_per_input);
    let costs: Vec<f64> = header
        .layers
        .iter()
        .map(|l| per_input(l) * cost_per_observation(l.neurons))
        .collect();
    let read: f64 = header
        .layers
        .iter()
        .map(|l| per_input(l) * l.state_bytes() as f64 * 0.2)
        .sum();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| costs[b].total_cmp(&costs[a]).then(a.cmp(&b)));
    let k = threads.min(n);
    let mut load = vec![0.0; k];
    load[0] = read;
    let mut groups = vec![Vec::new(); k];
    for i in order {
        let g = (0..k)
            .min_by(|&a, &b| load[a].total_cmp(&load[b]))
            .unwrap_or(0);
        load[g] += costs[i];
        groups[g].push(i);
    }
    let total: f64 = load.iter().sum();
    let worst = load.iter().copied().fold(0.0, f64::max);
    (worst <= 0.75 * total).then_some(groups)
}

fn fresh_counters(header: &aiq_states::StatesHeader, share: u64) -> Vec<LayerCounter> {
    header
        .layers
        .iter()
        .map(|l| {
            let mut c = LayerCounter::new(l.neurons);
            c.reserve(header.inputs.saturating_mul(u64::from(l.states_per_input)) / share);
            c
        })
        .collect()
}

/// Fresh counters for every layer, split into `groups` of layer indices (each counter with
/// its layer's index).
fn counters_by_group(
    header: &aiq_states::StatesHeader,
    groups: &[Vec<usize>],
) -> Vec<Vec<(usize, LayerCounter)>> {
    let mut all: Vec<Option<LayerCounter>> =
        fresh_counters(header, 1).into_iter().map(Some).collect();
    groups
        .iter()
        .map(|g| {
            g.iter()
                .filter_map(|&i| all[i].take().map(|c| (i, c)))
                .collect()
        })
        .collect()
}

/// Seals counters, the layers with the fewest observations first: a large layer's sort
/// runs on all the pool's threads, and a small one's after it would leave all but one of
/// them idle (LeNet-5's dense layer: 0.5 ms after conv2's).
fn seal_smallest_first(own: &mut [(usize, LayerCounter)]) {
    own.sort_by_key(|(_, c)| c.observations());
    own.iter_mut().for_each(|(_, c)| c.seal());
}

/// Seals this thread's counters, then joins the workers' (re-raising a worker's panic).
fn seal_and_join(
    mut own: Vec<(usize, LayerCounter)>,
    workers: Vec<std::thread::ScopedJoinHandle<'_, Vec<(usize, LayerCounter)>>>,
) -> Vec<Vec<(usize, LayerCounter)>> {
    seal_smallest_first(&mut own);
    let mut all: Vec<_> = workers
        .into_iter()
        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect();
    all.push(own);
    all
}

/// The groups' counters back in layer order.
fn in_layer_order(groups: Vec<Vec<(usize, LayerCounter)>>) -> Vec<LayerCounter> {
    let mut all: Vec<(usize, LayerCounter)> = groups.into_iter().flatten().collect();
    all.sort_by_key(|&(i, _)| i);
    all.into_iter().map(|(_, c)| c).collect()
}

/// Batches in flight between the reading thread and the layer workers: with one more in the
/// ring, the reader fills a batch while the workers count the one before. More buffers
/// (3 or 5 in flight) measured no faster on LeNet-5, only larger.
const IN_FLIGHT: usize = 1;
/// Chunks handed over at a time: one hand-over per chunk cost a thread wake-up per chunk
/// (~7% of count-states' CPU on LeNet-5 in futex calls).
const BATCH: usize = 4;

/// Consecutive chunks read together and handed to the layer workers at once.
#[derive(Debug, Default)]
struct Batch {
    chunks: Vec<RawChunk>,
    len: usize,
}

impl Batch {
    /// The chunks read into this batch.
    fn chunks(&self) -> &[RawChunk] {
        &self.chunks[..self.len]
    }

    /// Reads up to [`BATCH`] chunks, reusing the buffers; `false` once the stream has ended.
    fn fill<R: Read>(&mut self, reader: &mut StatesReader<R>) -> Result<bool, IoError> {
        self.chunks.resize_with(BATCH, RawChunk::default);
        self.len = 0;
        while self.len < BATCH {
            if !reader.read_raw_chunk_into(&mut self.chunks[self.len])? {
                return Ok(false);
            }
            self.len += 1;
        }
        Ok(true)
    }
}

/// Each thread counts whole layers: thread `g` the layers of `groups[g]`. This thread reads
/// each batch of chunks once into a ring of shared buffers, hands it to the other threads and
/// counts its own layers of it; a buffer is reused once every thread is done with it.
fn count_by_layers<R: Read + Send>(
    mut reader: StatesReader<R>,
    groups: &[Vec<usize>],
) -> Counted<R> {
    use std::sync::{mpsc, Arc};
    let mut others = counters_by_group(reader.header(), groups);
    let mut own = others.remove(0);
    let mut error = None;
    let finished: Vec<Vec<(usize, LayerCounter)>> = std::thread::scope(|s| {
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for mut mine in others {
            let (tx, rx) = mpsc::sync_channel::<Arc<Batch>>(IN_FLIGHT);
            let done = done_tx.clone();
            handles.push(s.spawn(move || {
                for batch in rx {
                    for chunk in batch.chunks() {
                        for (i, c) in &mut mine {
                            c.add_bytes(chunk.layer(*i));
                        }
                    }
                    drop(batch);
                    // The reader may be waiting for this buffer; if it has gone, so be it.
                    let _ = done.send(());
                }
                mine.iter_mut().for_each(|(_, c)| c.seal());
                mine
            }));
            senders.push(tx);
        }
        drop(done_tx);
        let mut ring: Vec<Arc<Batch>> = (0..IN_FLIGHT + 1).map(|_| Arc::default()).collect();
        let mut slot = 0;
        'batches: loop {
            let buf = loop {
                if Arc::get_mut(&mut ring[slot]).is_some() {
                    break Arc::get_mut(&mut ring[slot]);
                }
                if done_rx.recv().is_err() {
                    // Every worker has stopped (a panic, re-raised at the join below).
                    break None;
                }
            };
            let Some(batch) = buf else { break };
            let more = match batch.fill(&mut reader) {
                Ok(more) => more,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            };
            if batch.len > 0 {
                for tx in &senders {
                    if tx.send(Arc::clone(&ring[slot])).is_err() {
                        break 'batches;
                    }
                }
                for chunk in ring[slot].chunks() {
                    for (i, c) in &mut own {
                        c.add_bytes(chunk.layer(*i));
                    }
                }
            }
            if !more {
                break;
            }
            slot = (slot + 1) % ring.len();
        }
        drop(senders);
        seal_and_join(own, handles)
    });
    match error {
        Some(e) => Err(e),
        None => Ok((reader, in_layer_order(finished))),
    }
}

/// [`count_by_layers`] of a stream held in memory: this thread checks each chunk, hands the
/// other threads a view of it and counts its own layers of it; nothing is copied or recycled.
fn count_by_layers_in_memory<'a>(
    mut reader: StatesReader<&'a [u8]>,
    groups: &[Vec<usize>],
) -> Counted<&'a [u8]> {
    use std::sync::mpsc;
    let mut others = counters_by_group(reader.header(), groups);
    let mut own = others.remove(0);
    let mut error = None;
    let (done_tx, done_rx) = mpsc::channel();
    // The other groups are counted by tasks on the pool rather than by threads of their
    // own: a layer's sort then runs on the pool's threads as they come free, and no more
    // threads are runnable than the pool has. With a thread of its own, LeNet-5's conv1 took
    // turns with both halves of conv2's sort on two cores: 2 ms slower.
    rayon::in_place_scope(|s| {
        let mut senders = Vec::new();
        for mut mine in others {
            let (tx, rx) = mpsc::channel::<ChunkRef<'a>>();
            let done = done_tx.clone();
            s.spawn(move |_| {
                for chunk in rx {
                    for (i, c) in &mut mine {
                        c.add_bytes(chunk.layer(*i));
                    }
                }
                mine.iter_mut().for_each(|(_, c)| c.seal());
                // The receiver outlives the scope.
                let _ = done.send(mine);
            });
            senders.push(tx);
        }
        loop {
            match reader.next_chunk_ref() {
                Ok(Some(chunk)) => {
                    // A send fails only if that task panicked; the scope re-raises it.
                    for tx in &senders {
                        let _ = tx.send(chunk.clone());
                    }
                    for (i, c) in &mut own {
                        c.add_bytes(chunk.layer(*i));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        drop(senders);
        seal_smallest_first(&mut own);
    });
    drop(done_tx);
    let mut finished: Vec<_> = done_rx.into_iter().collect();
    finished.push(own);
    match error {
        Some(e) => Err(e),
        None => Ok((reader, in_layer_order(finished))),
    }
}

/// [`count_by_chunks`] of a stream held in memory: a worker takes the reader's lock only to
/// check the next chunk, then counts it where it lies.
fn count_by_chunks_in_memory(reader: StatesReader<&[u8]>, threads: usize) -> Counted<&[u8]> {
    let header = reader.header().clone();
    let fresh = || fresh_counters(&header, threads as u64);
    let shared = Mutex::new((reader, None::<IoError>));
    let worker = |shared: &Mutex<(StatesReader<_>, Option<IoError>)>| {
        let mut counters = fresh();
        while let Some(chunk) = next_locked(shared, StatesReader::next_chunk_ref) {
            for (i, c) in counters.iter_mut().enumerate() {
                c.add_bytes(chunk.layer(i));
            }
        }
        counters.iter_mut().for_each(LayerCounter::seal);
        counters
    };
    merge_workers(shared, threads, worker, fresh)
}

/// One worker per thread: each takes the reader's lock only to read the next chunk's bytes
/// into its own reused buffer, then counts them straight from the bytes into its own
/// counters while the others read; the counters are merged at the end.
fn count_by_chunks<R: Read + Send>(reader: StatesReader<R>, threads: usize) -> Counted<R> {
    let header = reader.header().clone();
    let fresh = || fresh_counters(&header, threads as u64);
    // The reader, and the first error any worker met (which stops the others).
    let shared = Mutex::new((reader, None::<IoError>));
    let worker = |shared: &Mutex<(StatesReader<_>, Option<IoError>)>| {
        let mut counters = fresh();
        let mut chunk = RawChunk::default();
        while next_locked(shared, |r| {
            Ok(r.read_raw_chunk_into(&mut chunk)?.then_some(()))
        })
        .is_some()
        {
            for (i, c) in counters.iter_mut().enumerate() {
                c.add_bytes(chunk.layer(i));
            }
        }
        counters.iter_mut().for_each(LayerCounter::seal);
        counters
    };
    merge_workers(shared, threads, worker, fresh)
}

/// The next item `read` takes from the shared reader under its lock; `None` at the end, or
/// once any worker has met an error (the first is kept beside the reader).
fn next_locked<T, C>(
    shared: &Mutex<(T, Option<IoError>)>,
    read: impl FnOnce(&mut T) -> Result<Option<C>, IoError>,
) -> Option<C> {
    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
    let (reader, error) = &mut *guard;
    if error.is_some() {
        return None;
    }
    read(reader).unwrap_or_else(|e| {
        *error = Some(e);
        None
    })
}

/// Runs `worker` on `threads` threads, then merges their counters, unless one of them left
/// an error beside the shared reader.
fn merge_workers<T: Send>(
    shared: Mutex<(T, Option<IoError>)>,
    threads: usize,
    worker: impl Fn(&Mutex<(T, Option<IoError>)>) -> Vec<LayerCounter> + Sync,
    fresh: impl Fn() -> Vec<LayerCounter>,
) -> Result<(T, Vec<LayerCounter>), IoError> {
    let mut all: Vec<Vec<LayerCounter>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| worker(&shared))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let (reader, error) = shared.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = error {
        return Err(e);
    }
    let mut counters = all.pop().unwrap_or_else(fresh);
    for other in all {
        for (x, y) in counters.iter_mut().zip(other) {
            x.merge(y);
        }
    }
    Ok((reader, counters))
}

/// The counts of a fully read stream.
fn finish_counts<R: Read>(
    header: aiq_states::StatesHeader,
    reader: StatesReader<R>,
    counters: Vec<LayerCounter>,
) -> Result<Counts, IoError> {
    // No worker failed; the reader checked the end record if it reached it.
    if let Some(i) = counters.iter().position(LayerCounter::bits_beyond_neurons) {
        return Err(reader.spare_bits_error(i));
    }
    let inputs = header.inputs;
    let correct = reader.correct();
    if !reader.ended() {
        return Err(IoError::Truncated {
            name: reader.name().to_string(),
            what: "no end record".to_string(),
        });
    }
    let layers = counters
        .into_iter()
        .zip(&header.layers)
        .map(|(c, spec)| c.finish(&spec.name, spec.states_per_input))
        .collect();
    let provenance = vec![header.provenance];
    Ok(Counts {
        measurement: Measurement {
            model: header.model,
            dataset: Some(header.dataset),
            split: Some(header.split),
            inputs: Some(inputs),
            correct: Some(correct),
            provenance,
        },
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiq_states::{LayerSpec, StatesHeader, StatesWriter};

    /// A states stream of `inputs` inputs starting at `first`: a 3-neuron conv layer with
    /// 4 positions and a 70-neuron dense layer, states derived from the input index.
    fn stream(first: u64, inputs: u64) -> Vec<u8> {
        let header = StatesHeader {
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
            chunk_inputs: 3,
            labels: (first..first + inputs).map(|i| (i % 10) as u8).collect(),
            provenance: Provenance::current("test", "0"),
        };
        let mut w = StatesWriter::new(Vec::new(), "mem", header).unwrap();
        let mut i = first;
        while i < first + inputs {
            let n = (first + inputs - i).min(3);
            let preds: Vec<u8> = (i..i + n).map(|k| (k % 7) as u8).collect();
            let conv: Vec<u64> = (i * 4..(i + n) * 4).map(|k| k * k % 8).collect();
            let dense: Vec<u64> = (i..i + n).flat_map(|k| [k % 5, (k % 3) << 4]).collect();
            w.write_chunk(&preds, &[&conv, &dense]).unwrap();
            i += n;
        }
        w.finish().unwrap()
    }

    fn count(bytes: &[u8]) -> Result<Counts, IoError> {
        count_states(StatesReader::new(bytes, "mem")?)
    }

    #[test]
    fn every_split_and_thread_count_gives_the_same_counts() {
        let bytes = stream(0, 50);
        let reader = || StatesReader::new(bytes.as_slice(), "mem").unwrap();
        let whole = |r: StatesReader<&[u8]>, c: Vec<LayerCounter>| {
            let h = r.header().clone();
            finish_counts(h, r, c).unwrap()
        };
        let one = {
            let (r, c) = count_by_chunks(reader(), 1).unwrap();
            whole(r, c)
        };
        for threads in [2, 3, 5] {
            let (r, c) = count_by_chunks(reader(), threads).unwrap();
            assert_eq!(whole(r, c), one, "{threads} chunk workers");
        }
        for groups in [
            vec![vec![0], vec![1]],
            vec![vec![1], vec![0]],
            vec![vec![0, 1]],
        ] {
            let (r, c) = count_by_layers(reader(), &groups).unwrap();
            assert_eq!(whole(r, c), one, "{groups:?}");
        }
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            assert_eq!(pool.install(|| count(&bytes)).unwrap(), one);
        }
        // Counted where it lies (a mapped file), split either way: the same counts.
        for threads in [1, 2, 3] {
            let (r, c) = count_by_chunks_in_memory(reader(), threads).unwrap();
            assert_eq!(whole(r, c), one, "{threads} in-memory chunk workers");
        }
        for groups in [vec![vec![0], vec![1]], vec![vec![1], vec![0]]] {
            let (r, c) = count_by_layers_in_memory(reader(), &groups).unwrap();
            assert_eq!(whole(r, c), one, "in memory, {groups:?}");
        }
        // A cut stream fails the same way whichever way it is split.
        let cut = &bytes[..bytes.len() - 40];
        let r = StatesReader::new(cut, "mem").unwrap();
        let expected = count_by_layers(r, &[vec![0], vec![1]])
            .unwrap_err()
            .to_string();
        let r = StatesReader::new(cut, "mem").unwrap();
        assert_eq!(count_by_chunks(r, 2).unwrap_err().to_string(), expected);
        let r = StatesReader::new(cut, "mem").unwrap();
        let e = count_by_layers_in_memory(r, &[vec![0], vec![1]]).unwrap_err();
        assert_eq!(e.to_string(), expected);
        let r = StatesReader::new(cut, "mem").unwrap();
        let e = count_by_chunks_in_memory(r, 2).unwrap_err();
        assert_eq!(e.to_string(), expected);
    }

    #[test]
    fn bytes_and_reader_sources_give_the_same_counts_and_errors() {
        let bytes = stream(0, 50);
        let from_reader = |b: &[u8]| read_any(Source::Reader(Box::new(b)), "s");
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (a, b) =
                pool.install(|| (read_any(Source::Bytes(&bytes), "s"), from_reader(&bytes)));
            assert_eq!(a.unwrap(), b.unwrap(), "{threads} threads");
            for cut in [bytes.len() - 1, bytes.len() - 20, bytes.len() / 2, 30] {
                let (a, b) = pool.install(|| {
                    (
                        read_any(Source::Bytes(&bytes[..cut]), "s"),
                        from_reader(&bytes[..cut]),
                    )
                });
                let (a, b) = (a.unwrap_err(), b.unwrap_err());
                assert!(
                    matches!(a, CountError::Io(IoError::Truncated { .. })),
                    "{a}"
                );
                assert_eq!(a.to_string(), b.to_string(), "cut {cut}");
            }
        }
        // Bits beyond a layer's neurons (conv1 has 3 of 8) in the last chunk's states.
        let mut bad = bytes.clone();
        // The stream ends with the last chunk's 2 inputs: 8 conv states of 1 byte, 2 dense
        // states of 9 bytes, then the end record (a 4-byte tag, inputs and correct).
        let end_record = bad.len() - 20;
        bad[end_record - 2 * 9 - 1] |= 0x80;
        // The same in the dense layer's last state (70 neurons: 2 spare bits of 72).
        let mut bad_dense = bytes.clone();
        bad_dense[end_record - 1] |= 0x80;
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for (bad, want) in [
                (&bad, "bits beyond its 3 neurons"),
                (&bad_dense, "70 neurons"),
            ] {
                let (a, b) = pool.install(|| (read_any(Source::Bytes(bad), "s"), from_reader(bad)));
                let a = a.unwrap_err().to_string();
                assert!(a.contains(want), "{a}");
                assert_eq!(a, b.unwrap_err().to_string());
            }
        }
    }

    #[test]
    fn layers_split_when_they_balance() {
        let header = StatesReader::new(stream(0, 3).as_slice(), "mem")
            .unwrap()
            .header()
            .clone();
        assert_eq!(layer_groups(&header, 1), None);
        let groups = layer_groups(&header, 4).unwrap();
        assert_eq!(groups.len(), 2);
        let mut all: Vec<usize> = groups.concat();
        all.sort();
        assert_eq!(all, vec![0, 1]);
    }

    #[test]
    fn shards_add_up_to_the_whole() {
        let whole = count(&stream(0, 20)).unwrap();
        assert_eq!(whole.layers[0].observations, 80);
        assert_eq!(whole.layers[0].states, vec![0, 1, 4]);
        assert_eq!(whole.layers[1].distinct(), 15);
        let mut merged = count(&stream(0, 7)).unwrap();
        merged.merge(count(&stream(7, 13)).unwrap(), "b").unwrap();
        assert_eq!(merged.layers, whole.layers);
        assert_eq!(merged.measurement.inputs, Some(20));
        assert_eq!(merged.measurement.correct, whole.measurement.correct);
        // Labels i % 10 and predictions i % 7 agree for i in 0..7 and 70.. only.
        assert_eq!(whole.measurement.accuracy(), Some(7.0 / 20.0));
    }

    #[test]
    fn counts_file_round_trip_and_damage() {
        let counts = count(&stream(0, 10)).unwrap();
        let mut bytes = Vec::new();
        write_counts(&mut bytes, &counts, "c").unwrap();
        assert_eq!(read_counts(&mut bytes.as_slice(), "c").unwrap(), counts);
        for cut in [0, 5, 12, 40, bytes.len() - 9, bytes.len() - 1] {
            let e = read_counts(&mut &bytes[..cut], "c").unwrap_err();
            assert!(matches!(e, IoError::Truncated { .. }), "cut {cut}: {e}");
        }
        // Swap the first two records of the last layer: out of order.
        let mut bad = bytes.clone();
        // Before the 4-byte CRC-32, the last layer: 70 neurons (9 bytes) and counts of 1
        // (1 byte), 10 records.
        let n = bad.len() - 4;
        assert_eq!(counts.layers[1].distinct(), 10);
        let (a, b) = (n - 10 * 10, n - 9 * 10);
        let first: Vec<u8> = bad[a..b].to_vec();
        bad.copy_within(b..b + 10, a);
        bad[b..b + 10].copy_from_slice(&first);
        let e = read_counts(&mut bad.as_slice(), "c").unwrap_err();
        assert!(e.to_string().contains("ascending"), "{e}");
        // A changed count no longer sums to the observations.
        let mut bad = bytes.clone();
        bad[n - 1] ^= 2;
        let e = read_counts(&mut bad.as_slice(), "c").unwrap_err();
        assert!(e.to_string().contains("sum"), "{e}");
        let mut long = bytes.clone();
        long.push(1);
        assert!(matches!(
            read_counts(&mut long.as_slice(), "c"),
            Err(IoError::Corrupt { .. })
        ));
    }

    #[test]
    fn count_profiles_tally_every_count_once() {
        // Small counts (tallied) and large ones (sorted), zero counts left out, any order.
        let counts = [3, 1, 5000, 0, 1, 1 << 40, 3, 5000, 1, 1023, 1024];
        let profile = count_profile(&counts);
        assert_eq!(
            profile,
            vec![
                (1, 3),
                (3, 2),
                (1023, 1),
                (1024, 1),
                (5000, 2),
                (1 << 40, 1)
            ]
        );
        let total: u64 = counts.iter().sum();
        assert_eq!(check_profile(&profile, 10, total), Ok(()));
        assert!(check_profile(&profile, 11, total).is_err());
        assert!(check_profile(&profile, 10, total - 1).is_err());
        assert!(check_profile(&[(2, 1), (2, 1)], 2, 4).is_err());
        assert!(check_profile(&[(0, 1), (4, 1)], 2, 4).is_err());
        assert!(check_profile(&[(4, 0), (4, 1)], 1, 4).is_err());
        assert_eq!(check_profile(&[], 0, 0), Ok(()));
        assert!(count_profile(&[]).is_empty());
    }

    #[test]
    fn cut_states_stream_is_never_counted() {
        let bytes = stream(0, 10);
        for cut in [bytes.len() - 1, bytes.len() - 20, bytes.len() / 2, 30] {
            let e = count(&bytes[..cut]).unwrap_err();
            assert!(matches!(e, IoError::Truncated { .. }), "cut {cut}: {e}");
        }
    }

    #[test]
    fn read_any_tells_streams_apart() {
        let states = stream(0, 5);
        let counts = read_any(states.as_slice(), "s").unwrap();
        let mut bytes = Vec::new();
        write_counts(&mut bytes, &counts, "c").unwrap();
        assert_eq!(read_any(bytes.as_slice(), "c").unwrap(), counts);
        let mut model = Vec::new();
        StreamKind::Model.write_header(&mut model, 1).unwrap();
        model.extend_from_slice(&[0; 100]);
        let e = read_any(model.as_slice(), "m.bin").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.bin: expected a states or counts stream, found a model stream"
        );
        // Version 1 (whole words per state, u64 counts) is refused, naming the version.
        let mut v1 = bytes.clone();
        v1[8] = 1;
        let e = read_any(v1.as_slice(), "c").unwrap_err();
        assert!(
            matches!(e, CountError::Io(IoError::Version { found: 1, .. })),
            "{e}"
        );
    }

    #[test]
    fn merge_refuses_other_layers() {
        let mut a = count(&stream(0, 4)).unwrap();
        let mut b = count(&stream(0, 4)).unwrap();
        b.layers[1].name = "other".into();
        assert!(a.merge(b, "b").is_err());
        let mut b = count(&stream(0, 4)).unwrap();
        b.measurement.split = Some("train".into());
        assert!(a.merge(b, "b").is_err());
    }
}
