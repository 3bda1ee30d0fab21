//! Exact counting of distinct states, memory bounded by the distinct states (see
//! [`LayerCounter`] for the three strategies and why).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use aiq_states::words_for;

use crate::LayerCounts;

/// A multiply-fold hasher: one 64×64→128-bit multiply per word, high and low halves folded,
/// so every input bit reaches the bucket index (hashbrown uses the low bits) and the tag
/// (the top 7 bits). Fixed seed: the keys are our own states, not adversarial input, and a
/// fixed seed keeps runs reproducible. Hand-rolled rather than a crate: it is ten lines.
#[derive(Debug, Clone, Copy)]
pub struct FoldHasher(u64);

const SEED: u64 = 0x243f_6a88_85a3_08d3;
const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

impl Default for FoldHasher {
    fn default() -> Self {
        FoldHasher(SEED)
    }
}

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FoldHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut a = [0u8; 8];
            a[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(a));
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.0 = fold_mul(self.0 ^ x, MUL);
    }
    #[inline]
    fn write_u128(&mut self, x: u128) {
        self.write_u64(x as u64);
        self.write_u64((x >> 64) as u64);
    }
    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type Map<K> = HashMap<K, u64, BuildHasherDefault<FoldHasher>>;

/// Layers of at most this many neurons are counted in a table indexed by the state itself
/// (`2^20` counts = 8 MiB at most): one increment per observation, no hashing, no sorting.
pub const DENSE_MAX_NEURONS: u32 = 20;
/// Observations buffered before a sort-and-merge, unless the distinct states already
/// outnumber it (then the buffer matches them, which keeps the merges amortized).
const BUFFER: usize = if cfg!(test) { 1 << 10 } else { 1 << 20 };

/// Buffers at least this long are sorted in parallel.
const PARALLEL_SORT: usize = if cfg!(test) { 1 << 8 } else { 1 << 16 };

/// Sorted distinct keys with counts, plus a buffer of raw observations. A flush sorts the
/// buffer, run-length encodes it and merges it into the sorted list: memory stays at the
/// distinct states plus a buffer no larger than them (or [`BUFFER`]), and the cost is a
/// sort per observation rather than a cache miss into a large hash table.
#[derive(Debug, Clone, Default)]
struct Runs<K> {
    keys: Vec<K>,
    counts: Vec<u64>,
    buf: Vec<K>,
}

impl<K: Copy + Ord + Send + Sync> Runs<K> {
    /// A list of distinct keys, ascending, with their counts.
    fn sealed((keys, counts): (Vec<K>, Vec<u64>)) -> Self {
        Runs {
            keys,
            counts,
            buf: Vec::new(),
        }
    }

    fn push(&mut self, k: K) {
        self.buf.push(k);
        if self.buf.len() >= BUFFER.max(self.keys.len()) {
            self.flush();
        }
    }

    /// Flushes once the buffer has reached its bound (checked per batch of observations, so
    /// it may pass the bound by one batch).
    fn flush_if_full(&mut self) {
        if self.buf.len() >= BUFFER.max(self.keys.len()) {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut self.buf);
        // The distinct keys stay at the front of the buffer, which becomes the sorted list
        // itself on the first flush (no copy, no new pages).
        let counts = sort_runs(&mut buf);
        if self.keys.is_empty() {
            self.keys = buf;
            self.counts = counts;
        } else {
            self.merge_sorted(&buf, &counts);
            buf.clear();
            self.buf = buf;
        }
    }

    /// Merges a sorted list of distinct keys and counts into this one.
    fn merge_sorted(&mut self, keys: &[K], counts: &[u64]) {
        if self.keys.is_empty() {
            self.keys = keys.to_vec();
            self.counts = counts.to_vec();
            return;
        }
        let n = self.keys.len() + keys.len();
        let (mut k2, mut c2) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut i, mut j) = (0, 0);
        while i < self.keys.len() && j < keys.len() {
            let (a, b) = (self.keys[i], keys[j]);
            if a < b {
                k2.push(a);
                c2.push(self.counts[i]);
                i += 1;
            } else if b < a {
                k2.push(b);
                c2.push(counts[j]);
                j += 1;
            } else {
                k2.push(a);
                c2.push(self.counts[i] + counts[j]);
                i += 1;
                j += 1;
            }
        }
        k2.extend_from_slice(&self.keys[i..]);
        c2.extend_from_slice(&self.counts[i..]);
        k2.extend_from_slice(&keys[j..]);
        c2.extend_from_slice(&counts[j..]);
        self.keys = k2;
        self.counts = c2;
    }
}

/// Sorts `keys`, leaves each distinct key once at the front (the vector cut to them) and
/// returns their counts.
///
/// Measured on LeNet-5 conv2 states (640k, 50 bits): pdqsort beat LSD radix sorts with 8-,
/// 11- and 16-bit digits, an in-place MSD radix sort, and sorting cache-sized pieces as they
/// arrive then merging them. A large buffer is split in two on the pool's threads: one
/// branch-free pass puts the keys below a sampled median first, then each side is sorted and
/// encoded on its own thread (with LeNet-5's layers split between two threads, conv2's keys
/// are sorted after the stream ends, when the other thread has nothing left to do). Every
/// key below the pivot sorts before every other, so the two sides' runs concatenate in
/// order: the same result for any thread count.
fn sort_runs<K: Copy + Ord + Send + Sync>(keys: &mut Vec<K>) -> Vec<u64> {
    let n = keys.len();
    // Zeroed lazily by the allocator: only the pages of the distinct keys' counts are touched.
    let mut counts = vec![0u64; n];
    aiq_io::advise_huge_pages(&counts);
    let split = if n >= PARALLEL_SORT && rayon::current_num_threads() > 1 {
        let mut sample: Vec<K> = (0..255).map(|i| keys[i * n / 255]).collect();
        sample.sort_unstable();
        let pivot = sample[127];
        // Branch-free Lomuto partition: keys[..m] < pivot <= keys[m..].
        let mut m = 0;
        for i in 0..n {
            keys.swap(i, m);
            m += usize::from(keys[m] < pivot);
        }
        (m > 0 && m < n).then_some(m)
    } else {
        None
    };
    let distinct = match split {
        None => {
            keys.sort_unstable();
            runs(&mut [], &mut [], keys, &mut counts)
        }
        Some(m) => {
            let (lo, hi) = keys.split_at_mut(m);
            let (clo, chi) = counts.split_at_mut(m);
            // The lower side hands the room after its distinct keys (and their counts) to
            // the upper side, which run-length encodes its keys straight into it: no copy,
            // and no page of counts touched beyond the distinct states.
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let (dlo, dhi) = rayon::join(
                move || {
                    lo.sort_unstable();
                    let d = runs(&mut [], &mut [], lo, clo);
                    let (_, kt) = <[K]>::split_at_mut(lo, d);
                    let (_, ct) = <[u64]>::split_at_mut(clo, d);
                    // The other side holds the receiver until it has this.
                    let _ = tx.send((kt, ct));
                    d
                },
                move || {
                    hi.sort_unstable();
                    match rx.recv() {
                        Ok((kt, ct)) => runs(kt, ct, hi, chi),
                        // The lower side panicked; the join re-raises it.
                        Err(_) => 0,
                    }
                },
            );
            dlo + dhi
        }
    };
    keys.truncate(distinct);
    counts.truncate(distinct);
    counts
}

/// Run-length encodes the sorted `keys` into `room ++ keys`: their distinct keys go to the
/// front of that concatenation (the `i`-th distinct key never lands after the `i`-th key, so
/// none is overwritten before it is read) and their counts are added into the same places
/// of `room_counts ++ counts` (zero on entry). Branch-free (most of conv2's runs are one key
/// long, so a branch per key would be mispredicted often) but for the move from `room` into
/// `keys`. Returns the number of distinct keys.
fn runs<K: Copy + Eq>(
    room: &mut [K],
    room_counts: &mut [u64],
    keys: &mut [K],
    counts: &mut [u64],
) -> usize {
    debug_assert_eq!(room.len(), room_counts.len());
    let Some(&first) = keys.first() else {
        return 0;
    };
    let t = room.len();
    let (mut d, mut prev, mut i) = (0, first, 1);
    if t > 0 {
        room[0] = first;
        room_counts[0] = 1;
        while i < keys.len() {
            let k = keys[i];
            let next = d + usize::from(k != prev);
            if next == t {
                break;
            }
            d = next;
            room[d] = k;
            room_counts[d] += 1;
            prev = k;
            i += 1;
        }
        if i == keys.len() {
            return d + 1;
        }
        // keys[i] starts the run that lands at keys[0].
        prev = keys[i];
        keys[0] = prev;
        counts[0] = 1;
        d = 0;
        i += 1;
    } else {
        counts[0] = 1;
    }
    for i in i..keys.len() {
        let k = keys[i];
        d += usize::from(k != prev);
        keys[d] = k;
        counts[d] += 1;
        prev = k;
    }
    t + d + 1
}

/// Adds states of `nb` ≤ 3 bytes each to a dense table, each state's bytes its index;
/// returns the bitwise OR of the states' last bytes (see
/// [`LayerCounter::bits_beyond_neurons`]).
fn dense_from_bytes<T: std::ops::AddAssign + From<u8>>(t: &mut [T], bytes: &[u8], nb: usize) -> u8 {
    match nb {
        1 => dense_add::<1, T>(t, bytes),
        2 => dense_add::<2, T>(t, bytes),
        _ => dense_add::<3, T>(t, bytes),
    }
}

/// Little-endian bytes `b[at..at + 8]` as a word.
#[inline(always)]
fn word_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// [`dense_from_bytes`] for states of `NB` bytes, eight at a time: eight equal states in a
/// row (a conv layer's blank background, say) are one add of 8.
///
/// Increments of one counter in a row wait on each other (each a load, an add and a store
/// through the store buffer), and runs of one state are where they pile up: LeNet-5's
/// conv1 has 42% of its 5.76M states in a single state and 16% of its blocks of eight
/// uniform. Its table took 8.7 ms one state at a time and 6.9 ms so (median of 6 on its real
/// states, one core). A block is uniform iff each byte equals the one `NB` further on,
/// found with a few overlapping word compares.
fn dense_add<const NB: usize, T: std::ops::AddAssign + From<u8>>(t: &mut [T], bytes: &[u8]) -> u8 {
    // The mask drops bits beyond the neurons (corrupt input, reported from the returned
    // OR), and lets the compiler drop the bounds check.
    let mask = t.len() - 1;
    let mut last = 0;
    // Adds `n` observations of the state whose bytes begin `c`.
    let mut add = |c: &[u8], n: u8| {
        last |= c[NB - 1];
        t[(0..NB).fold(0, |i, k| i | (c[k] as usize) << (8 * k)) & mask] += T::from(n);
    };
    let mut blocks = bytes.chunks_exact(8 * NB);
    for b in &mut blocks {
        let uniform = match NB {
            1 => word_at(b, 0) == word_at(b, 0).rotate_left(8),
            2 => (word_at(b, 0) ^ word_at(b, 2)) | (word_at(b, 6) ^ word_at(b, 8)) == 0,
            _ => {
                (word_at(b, 0) ^ word_at(b, 3))
                    | (word_at(b, 8) ^ word_at(b, 11))
                    | (word_at(b, 13) ^ word_at(b, 16))
                    == 0
            }
        };
        if uniform {
            add(b, 8);
        } else {
            b.chunks_exact(NB).for_each(|c| add(c, 1));
        }
    }
    blocks.remainder().chunks_exact(NB).for_each(|c| add(c, 1));
    last
}

/// The states a dense table saw, ascending, with their counts. Most of a 2^20 table is
/// zero: blocks of 16 counts are skipped with one OR each.
fn dense_nonzero<T: Copy + Into<u64>>(t: &[T]) -> (Vec<u64>, Vec<u64>) {
    let (mut states, mut counts) = (Vec::new(), Vec::new());
    for (b, block) in t.chunks(16).enumerate() {
        if block.iter().fold(0, |acc, &c| acc | c.into()) == 0 {
            continue;
        }
        for (i, &c) in block.iter().enumerate() {
            if c.into() > 0 {
                states.push((b * 16 + i) as u64);
                counts.push(c.into());
            }
        }
    }
    (states, counts)
}

/// A zeroed counting table that starts on a 2 MiB boundary, over which it asks for huge
/// pages: a table touched all over (LeNet-5's conv1 touches every page of its 4 MiB) then
/// takes one page fault per 2 MiB. An allocation starts wherever the allocator puts it, and
/// only its 2 MiB-aligned middle could be huge: half of that 4 MiB table was faulted in
/// 4 KiB at a time. The slack allocated before the table is never touched, so it costs
/// address space only.
#[derive(Debug, Clone)]
struct HugeTable<T> {
    buf: Vec<T>,
    at: usize,
    len: usize,
}

impl<T: Copy + Default> HugeTable<T> {
    const HUGE: usize = 2 << 20;

    fn zeroed(len: usize) -> Self {
        let size = std::mem::size_of::<T>().max(1);
        let slack = if len * size >= Self::HUGE {
            Self::HUGE / size
        } else {
            0
        };
        let buf = vec![T::default(); len + slack];
        let at = buf.as_ptr().align_offset(Self::HUGE).min(slack);
        let t = HugeTable { buf, at, len };
        aiq_io::advise_huge_pages(&t);
        t
    }
}

impl<T> std::ops::Deref for HugeTable<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.at..self.at + self.len]
    }
}

impl<T> std::ops::DerefMut for HugeTable<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.at..self.at + self.len]
    }
}

#[derive(Debug, Clone)]
enum Table {
    /// Count of each state, indexed by its value (layers of ≤ [`DENSE_MAX_NEURONS`]), in
    /// `u32` while the counter has seen fewer than 2^32 observations (half the memory and
    /// page faults of `u64`), then widened to [`Table::Dense64`].
    Dense(HugeTable<u32>),
    Dense64(HugeTable<u64>),
    One(Runs<u64>),
    Two(Runs<u128>),
    Many(Map<Box<[u64]>>),
}

/// Counts the states of one layer, exactly.
///
/// Narrow layers (≤ 20 neurons) use a table indexed by the state; states of up to 128
/// neurons are sorted in buffered batches and merged into a sorted list (memory: the
/// distinct states plus a bounded buffer); wider states go to a hash map keyed by the boxed
/// state, allocated once per distinct state. Memory never grows with the observations.
#[derive(Debug, Clone)]
pub struct LayerCounter {
    neurons: u32,
    words: usize,
    observations: u64,
    /// The bitwise OR of the last byte of every state given to [`add_bytes`](Self::add_bytes).
    last_bytes: u8,
    table: Table,
}

impl LayerCounter {
    pub fn new(neurons: u32) -> Self {
        let words = words_for(neurons as usize).max(1);
        let table = if neurons <= DENSE_MAX_NEURONS {
            Table::Dense(HugeTable::zeroed(1 << neurons))
        } else {
            match words {
                1 => Table::One(Runs::default()),
                2 => Table::Two(Runs::default()),
                _ => Table::Many(Map::default()),
            }
        };
        LayerCounter {
            neurons,
            words,
            observations: 0,
            last_bytes: 0,
            table,
        }
    }

    /// Whether a state given to [`add_bytes`](Self::add_bytes) had a bit set beyond the
    /// neurons (in the top `8·ceil(neurons / 8) − neurons` bits of its last byte): a corrupt
    /// stream, whose reader left that check to this counter
    /// (`aiq_states::StatesReader::leave_spare_bits_to_caller`).
    /// Checked in the counting pass itself, where the bytes are in registers already.
    pub fn bits_beyond_neurons(&self) -> bool {
        let spare = self.neurons.div_ceil(8) * 8 - self.neurons;
        spare > 0 && self.last_bytes >> (8 - spare) != 0
    }

    pub fn neurons(&self) -> u32 {
        self.neurons
    }

    /// Observations counted so far.
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// Counts packed states laid end to end (`words_for(neurons)` words each).
    pub fn add(&mut self, states: &[u64]) {
        debug_assert_eq!(states.len() % self.words, 0);
        self.observations += (states.len() / self.words) as u64;
        if self.observations > u64::from(u32::MAX) {
            self.widen();
        }

        match &mut self.table {
            Table::Dense(t) => {
                let mask = t.len() - 1;
                for &s in states {
                    // The mask only matters for corrupt input; states are checked on reading.
                    t[s as usize & mask] += 1;
                }
            }
            Table::Dense64(t) => {
                let mask = t.len() - 1;
                for &s in states {
                    t[s as usize & mask] += 1;
                }
            }
            Table::One(r) => {
                for &s in states {
                    r.push(s);
                }
            }
            Table::Two(r) => {
                for s in states.chunks_exact(2) {
                    r.push(u128::from(s[0]) | u128::from(s[1]) << 64);
                }
            }
            Table::Many(m) => {
                for s in states.chunks_exact(self.words) {
                    match m.get_mut(s) {
                        Some(c) => *c += 1,
                        None => {
                            m.insert(s.into(), 1);
                        }
                    }
                }
            }
        }
    }

    /// Counts states stored as `ceil(neurons / 8)` little-endian bytes each, end to end (the
    /// states stream's layout, [`aiq_states::RawChunk`]), without decoding them into words
    /// first: a narrow layer's state bytes are its table index.
    pub fn add_bytes(&mut self, bytes: &[u8]) {
        let nb = (self.neurons as usize).div_ceil(8);
        debug_assert_eq!(bytes.len() % nb, 0);
        self.observations += (bytes.len() / nb) as u64;
        if self.observations > u64::from(u32::MAX) {
            self.widen();
        }
        let last = match &mut self.table {
            Table::Dense(t) => dense_from_bytes(t, bytes, nb),
            Table::Dense64(t) => dense_from_bytes(t, bytes, nb),
            Table::One(r) => {
                /// Appends the states as words; returns the OR of them all.
                fn fixed<const N: usize>(r: &mut Runs<u64>, bytes: &[u8]) -> u64 {
                    let mut all = 0;
                    r.buf.extend(bytes.chunks_exact(N).map(|c| {
                        let mut a = [0u8; 8];
                        a[..N].copy_from_slice(c);
                        let k = u64::from_le_bytes(a);
                        all |= k;
                        k
                    }));
                    all
                }
                let all = match nb {
                    1 => fixed::<1>(r, bytes),
                    2 => fixed::<2>(r, bytes),
                    3 => fixed::<3>(r, bytes),
                    4 => fixed::<4>(r, bytes),
                    5 => fixed::<5>(r, bytes),
                    6 => fixed::<6>(r, bytes),
                    7 => fixed::<7>(r, bytes),
                    _ => fixed::<8>(r, bytes),
                };
                r.flush_if_full();
                (all >> (8 * (nb - 1))) as u8
            }
            Table::Two(r) => {
                let mut all = 0;
                r.buf.extend(bytes.chunks_exact(nb).map(|c| {
                    let mut a = [0u8; 16];
                    a[..nb].copy_from_slice(c);
                    let k = u128::from_le_bytes(a);
                    all |= k;
                    k
                }));
                r.flush_if_full();
                (all >> (8 * (nb - 1))) as u8
            }
            Table::Many(m) => {
                let mut last = 0;
                let mut key = vec![0u64; self.words];
                for s in bytes.chunks_exact(nb) {
                    last |= s[nb - 1];
                    for (k, b) in key.iter_mut().zip(s.chunks(8)) {
                        let mut a = [0u8; 8];
                        a[..b.len()].copy_from_slice(b);
                        *k = u64::from_le_bytes(a);
                    }
                    match m.get_mut(key.as_slice()) {
                        Some(c) => *c += 1,
                        None => {
                            m.insert(key.as_slice().into(), 1);
                        }
                    }
                }
                last
            }
        };
        self.last_bytes |= last;
    }

    /// Reserves room for about `observations` more observations in the buffer of a sorted
    /// layer (at most its bound), so it never grows by copying: address space only, pages
    /// are touched as observations arrive.
    pub fn reserve(&mut self, observations: u64) {
        let n = observations.min(BUFFER as u64) as usize;
        match &mut self.table {
            Table::One(r) => {
                r.buf.reserve(n.saturating_sub(r.buf.len()));
                aiq_io::advise_huge_pages(r.buf.spare_capacity_mut());
            }
            Table::Two(r) => {
                r.buf.reserve(n.saturating_sub(r.buf.len()));
                aiq_io::advise_huge_pages(r.buf.spare_capacity_mut());
            }
            Table::Dense(_) | Table::Dense64(_) | Table::Many(_) => {}
        }
    }

    /// Sorts what is buffered, so that a later [`merge`](Self::merge) or
    /// [`finish`](Self::finish) is a linear pass; parallel workers call it on their own
    /// counters before handing them over. A dense table becomes the sorted list of the
    /// states it saw (a merge then adds two short lists rather than two 2^20 tables, and
    /// the scan of the table runs on the worker's thread); counting may go on after.
    pub fn seal(&mut self) {
        match &mut self.table {
            Table::One(r) => r.flush(),
            Table::Two(r) => r.flush(),
            Table::Dense(t) => self.table = Table::One(Runs::sealed(dense_nonzero(t))),
            Table::Dense64(t) => self.table = Table::One(Runs::sealed(dense_nonzero(t))),
            Table::Many(_) => {}
        }
    }

    /// Turns a `u32` dense table into a `u64` one (before any count could overflow).
    fn widen(&mut self) {
        if let Table::Dense(t) = &self.table {
            let mut wide = HugeTable::zeroed(t.len());
            wide.iter_mut()
                .zip(t.iter())
                .for_each(|(w, &c)| *w = u64::from(c));
            self.table = Table::Dense64(wide);
        }
    }

    /// Adds another counter's counts of the same layer (exact, order-independent).
    pub fn merge(&mut self, mut other: LayerCounter) {
        debug_assert_eq!(self.neurons, other.neurons);
        let dense = |t: &Table| matches!(t, Table::Dense(_) | Table::Dense64(_));
        if dense(&self.table) != dense(&other.table) {
            // One of them was sealed into a sorted list.
            self.seal();
            other.seal();
        }
        self.observations += other.observations;
        self.last_bytes |= other.last_bytes;
        let wide = |t: &Table| matches!(t, Table::Dense64(_));
        if self.observations > u64::from(u32::MAX) || wide(&self.table) || wide(&other.table) {
            self.widen();
            other.widen();
        }

        match (&mut self.table, other.table) {
            (Table::Dense(a), Table::Dense(b)) => {
                a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y)
            }
            (Table::Dense64(a), Table::Dense64(b)) => {
                a.iter_mut().zip(b.iter()).for_each(|(x, y)| *x += y)
            }
            (Table::One(a), Table::One(mut b)) => {
                a.flush();
                b.flush();
                a.merge_sorted(&b.keys, &b.counts);
            }
            (Table::Two(a), Table::Two(mut b)) => {
                a.flush();
                b.flush();
                a.merge_sorted(&b.keys, &b.counts);
            }
            (Table::Many(a), Table::Many(b)) => b
                .into_iter()
                .for_each(|(k, c)| *a.entry(k).or_insert(0) += c),
            _ => unreachable!("counters of one layer share their table kind"),
        }
    }

    /// The distinct states sorted by value (as unsigned integers, bit `i` = neuron `i`) with
    /// their counts: a deterministic result whatever order the states came in.
    pub fn finish(self, name: &str, states_per_input: u32) -> LayerCounts {
        let words = self.words;

        let (states, counts) = match self.table {
            Table::Dense(t) => dense_nonzero(&t),
            Table::Dense64(t) => dense_nonzero(&t),
            Table::One(mut r) => {
                r.flush();
                (r.keys, r.counts)
            }
            Table::Two(mut r) => {
                r.flush();
                let states = r
                    .keys
                    .iter()
                    .flat_map(|&k| [k as u64, (k >> 64) as u64])
                    .collect();
                (states, r.counts)
            }
            Table::Many(m) => {
                let mut v: Vec<(Box<[u64]>, u64)> = m.into_iter().collect();
                v.sort_unstable_by(|a, b| a.0.iter().rev().cmp(b.0.iter().rev()));
                let mut states = Vec::with_capacity(v.len() * words);
                let mut counts = Vec::with_capacity(v.len());
                for (k, c) in v {
                    states.extend_from_slice(&k);
                    counts.push(c);
                }
                (states, counts)
            }
        };
        LayerCounts {
            name: name.to_string(),
            neurons: self.neurons,
            states_per_input,
            observations: self.observations,
            states,
            counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sorted_by_value_for_every_width() {
        for neurons in [5u32, 64, 100, 130, 200] {
            let w = words_for(neurons as usize);
            // Three states: high word set, low word set, zero; the high one twice.
            let mut hi = vec![0u64; w];
            hi[w - 1] = 1;
            let mut lo = vec![0u64; w];
            lo[0] = 3;
            let zero = vec![0u64; w];
            let mut a = LayerCounter::new(neurons);
            a.add(&[hi.clone(), lo.clone()].concat());
            let mut b = LayerCounter::new(neurons);
            b.add(&[hi.clone(), zero.clone()].concat());
            a.merge(b);
            let c = a.finish("l", 1);
            assert_eq!(c.observations, 4);
            assert_eq!(
                c.counts,
                if w == 1 { vec![1, 2, 1] } else { vec![1, 1, 2] },
                "{neurons}"
            );
            if w > 1 {
                assert_eq!(c.states, [zero, lo, hi].concat());
            }
        }
    }

    #[test]
    fn every_strategy_agrees_with_a_plain_count() {
        use std::collections::BTreeMap;
        // Pseudo-random states with many repeats, for dense, one-word, two-word and boxed
        // layers, counted in two halves and merged; more than BUFFER observations so that
        // the sorted runs flush and merge several times.
        for neurons in [7u32, 20, 21, 50, 64, 100, 128, 150] {
            let w = words_for(neurons as usize);
            let n = if neurons <= 64 {
                3 * BUFFER + 17
            } else {
                20_000
            };
            let mut x = 0x1234_5678_9abc_def0u64 ^ u64::from(neurons);
            let mut states = Vec::with_capacity(n * w);
            for _ in 0..n {
                for i in 0..w {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let bits = (neurons as usize - 64 * i).min(64);
                    // Few high bits vary, so states repeat.
                    let v = (x % 4093).wrapping_mul(0x9e37_79b9);
                    states.push(if bits == 64 { v } else { v & ((1 << bits) - 1) });
                }
            }
            let mut plain = BTreeMap::new();
            for s in states.chunks_exact(w) {
                let key: Vec<u64> = s.iter().rev().copied().collect();
                *plain.entry(key).or_insert(0u64) += 1;
            }
            let (a, b) = states.split_at(states.len() / w / 3 * w);
            let mut c1 = LayerCounter::new(neurons);
            c1.add(a);
            let mut c2 = LayerCounter::new(neurons);
            c2.add(b);
            c1.merge(c2);
            let got = c1.finish("l", 1);
            // The same states as the stream stores them, counted from their bytes.
            let nb = (neurons as usize).div_ceil(8);
            let bytes: Vec<u8> = states
                .chunks_exact(w)
                .flat_map(|s| s.iter().flat_map(|x| x.to_le_bytes()).take(nb))
                .collect();
            let mut c3 = LayerCounter::new(neurons);
            c3.add_bytes(&bytes[..bytes.len() / nb / 2 * nb]);
            c3.add_bytes(&bytes[bytes.len() / nb / 2 * nb..]);
            assert_eq!(c3.finish("l", 1), got, "{neurons}: from bytes");
            let want_counts: Vec<u64> = plain.values().copied().collect();
            let want_states: Vec<u64> =
                plain.keys().flat_map(|k| k.iter().rev().copied()).collect();
            assert_eq!(got.observations, n as u64, "{neurons}");
            assert_eq!(got.counts, want_counts, "{neurons}");
            assert_eq!(got.states, want_states, "{neurons}");
        }
    }

    #[test]
    fn bits_beyond_the_neurons_are_seen_in_every_table_and_merge() {
        // Every table kind and width of last byte: dense (1-3 bytes), one word (up to 8),
        // two words, boxed; widths that fill their last byte have no spare bits to set.
        for neurons in [3u32, 8, 12, 20, 21, 50, 63, 64, 70, 128, 130, 200] {
            let nb = (neurons as usize).div_ceil(8);
            let spare = nb * 8 - neurons as usize;
            // 40 states, every neuron on in some and every state byte used.
            let mut bytes: Vec<u8> = (0..40 * nb).map(|i| (i * 37 % 251) as u8).collect();
            for s in bytes.chunks_exact_mut(nb) {
                s[nb - 1] &= 0xff >> spare;
            }
            let mut clean = LayerCounter::new(neurons);
            clean.add_bytes(&bytes);
            assert!(!clean.bits_beyond_neurons(), "{neurons}");
            for bit in 8 - spare..8 {
                let mut bad = bytes.clone();
                bad[17 * nb + nb - 1] |= 1 << bit;
                let (mut a, mut b) = (LayerCounter::new(neurons), LayerCounter::new(neurons));
                a.add_bytes(&bad[..10 * nb]);
                b.add_bytes(&bad[10 * nb..]);
                assert!(b.bits_beyond_neurons(), "{neurons} bit {bit}");
                a.merge(b);
                assert!(a.bits_beyond_neurons(), "{neurons} bit {bit}: merged");
            }
        }
    }

    #[test]
    fn runs_of_one_state_count_as_its_states_one_by_one() {
        use std::collections::BTreeMap;
        // Runs of 1 to 29 equal states, so that blocks of eight are uniform at every offset
        // of a run, and mixed, for states of 1, 2 and 3 bytes.
        for neurons in [5u32, 8, 12, 16, 20] {
            let nb = (neurons as usize).div_ceil(8);
            let mut states = Vec::new();
            for r in 0..400u64 {
                let state = (r * 0x9e37_79b9) % (1 << neurons) / (1 + r % 3);
                states.extend(std::iter::repeat_n(state, 1 + (r as usize * 7) % 29));
            }
            let mut plain = BTreeMap::new();
            for &s in &states {
                *plain.entry(s).or_insert(0u64) += 1;
            }
            let bytes: Vec<u8> = states
                .iter()
                .flat_map(|s| s.to_le_bytes().into_iter().take(nb))
                .collect();
            let mut c = LayerCounter::new(neurons);
            // Two calls, the first ending inside a block.
            let cut = 101 * nb;
            c.add_bytes(&bytes[..cut]);
            c.add_bytes(&bytes[cut..]);
            assert!(!c.bits_beyond_neurons(), "{neurons}");
            let got = c.finish("l", 1);
            assert_eq!(
                got.states,
                plain.keys().copied().collect::<Vec<_>>(),
                "{neurons}"
            );
            assert_eq!(
                got.counts,
                plain.values().copied().collect::<Vec<_>>(),
                "{neurons}"
            );
            // A spare bit set in a run's states is seen, whether the run fills a block or not.
            let spare = nb * 8 - neurons as usize;
            if spare > 0 {
                let mut bad = bytes.clone();
                let long = states.len() - 20; // inside the last run, 29 states long
                for s in long - 8..long {
                    bad[s * nb + nb - 1] |= 0x80;
                }
                let mut c = LayerCounter::new(neurons);
                c.add_bytes(&bad);
                assert!(c.bits_beyond_neurons(), "{neurons}");
            }
        }
    }

    #[test]
    fn large_dense_tables_start_on_a_huge_page() {
        let t = HugeTable::<u32>::zeroed(1 << 20);
        assert_eq!(t.len(), 1 << 20);
        assert_eq!(t.as_ptr() as usize % HugeTable::<u32>::HUGE, 0);
        assert!(t.iter().all(|&c| c == 0));
        let wide = HugeTable::<u64>::zeroed(1 << 18);
        assert_eq!(wide.as_ptr() as usize % HugeTable::<u64>::HUGE, 0);
        // Below 2 MiB no slack is allocated.
        let small = HugeTable::<u32>::zeroed(1000);
        assert_eq!((small.len(), small.buf.len()), (1000, 1000));
    }

    #[test]
    fn dense_counts_widen_and_merge_across_widths() {
        let mut a = LayerCounter::new(4);
        a.add(&[1, 1, 3]);
        let mut b = a.clone();
        b.widen();
        b.add(&[3, 15]);
        assert!(matches!(b.table, Table::Dense64(_)));
        // u32 into u64 (after widening on a large total) and the other way round.
        let mut c = a.clone();
        c.observations = u64::from(u32::MAX);
        let mut b2 = b.clone();
        b2.merge(c);
        let got = b2.finish("l", 1);
        assert_eq!((got.states, got.counts), (vec![1, 3, 15], vec![4, 3, 1]));
        a.merge(b);
        let got = a.finish("l", 1);
        assert_eq!((got.states, got.counts), (vec![1, 3, 15], vec![4, 3, 1]));
    }

    #[test]
    fn sealed_dense_counters_keep_counting_and_merge() {
        let mut a = LayerCounter::new(4);
        a.add(&[1, 1, 3]);
        let mut b = a.clone();
        a.seal();
        assert!(matches!(a.table, Table::One(_)));
        a.add_bytes(&[15, 1]);
        let mut c = b.clone();
        b.merge(a.clone());
        a.merge(c.clone());
        c.seal();
        c.merge(a.clone());
        // a: 1 ×3, 3, 15; b and c: 1 ×2, 3.
        let want = (vec![1, 3, 15], vec![5, 2, 1]);
        let got = |x: LayerCounter| {
            let l = x.finish("l", 1);
            (l.states, l.counts)
        };
        assert_eq!(got(b), want);
        assert_eq!(got(a), want);
        assert_eq!(got(c), (vec![1, 3, 15], vec![7, 3, 1]));
    }

    #[test]
    fn sorted_runs_for_any_split_and_thread_count() {
        let mut x = 7u64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let cases: Vec<Vec<u64>> = vec![
            vec![],
            vec![5],
            vec![3; 1000],
            // The sampled median is the minimum: nothing below it, no split.
            (0..1000).map(|i| u64::from(i % 10 != 0)).collect(),
            (0..5000).map(|_| rand() % 300).collect(),
            (0..5000).map(|_| rand()).collect(),
        ];
        for keys in cases {
            let mut plain = std::collections::BTreeMap::new();
            keys.iter()
                .for_each(|&k| *plain.entry(k).or_insert(0u64) += 1);
            for threads in [1, 2, 3] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                let mut k = keys.clone();
                let counts = pool.install(|| sort_runs(&mut k));
                assert_eq!(k, plain.keys().copied().collect::<Vec<_>>());
                assert_eq!(counts, plain.values().copied().collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn runs_fill_the_room_then_the_keys() {
        let keys = [1u64, 1, 2, 3, 3, 3, 5, 8, 8, 9];
        let want = (vec![1u64, 2, 3, 5, 8, 9], vec![2u64, 1, 3, 1, 2, 1]);
        // No room, room for some of the distinct keys, for all of them and more.
        for t in 0..=8 {
            let (mut room, mut room_counts) = (vec![0u64; t], vec![0u64; t]);
            let (mut k, mut c) = (keys.to_vec(), vec![0u64; keys.len()]);
            let d = runs(&mut room, &mut room_counts, &mut k, &mut c);
            let got = |a: &[u64], b: &[u64]| a.iter().chain(b).take(d).copied().collect();
            assert_eq!((got(&room, &k), got(&room_counts, &c)), want, "room {t}");
        }
        assert_eq!(runs(&mut [0u64; 2], &mut [0; 2], &mut [], &mut []), 0);
    }

    #[test]
    fn hasher_spreads_high_bits() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let b = BuildHasherDefault::<FoldHasher>::default();
        let low: std::collections::HashSet<u64> =
            (0..1024u64).map(|i| b.hash_one(i << 40) & 1023).collect();
        assert!(low.len() > 500, "{}", low.len());
    }
}
