//! Exact counting of distinct states in a hash map keyed by the packed state.
//!
//! Memory grows with the number of distinct states, never with the observations. States of
//! up to 64 neurons are `u64` keys and of up to 128 `u128` keys (no allocation per state);
//! wider states are boxed slices, allocated once per distinct state.

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

#[derive(Debug, Clone)]
enum Table {
    One(Map<u64>),
    Two(Map<u128>),
    Many(Map<Box<[u64]>>),
}

/// Counts the states of one layer.
#[derive(Debug, Clone)]
pub struct LayerCounter {
    neurons: u32,
    words: usize,
    observations: u64,
    table: Table,
}

impl LayerCounter {
    pub fn new(neurons: u32) -> Self {
        let words = words_for(neurons as usize);
        let table = match words {
            0 | 1 => Table::One(Map::default()),
            2 => Table::Two(Map::default()),
            _ => Table::Many(Map::default()),
        };
        LayerCounter {
            neurons,
            words: words.max(1),
            observations: 0,
            table,
        }
    }

    pub fn neurons(&self) -> u32 {
        self.neurons
    }

    /// Observations counted so far.
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// Distinct states seen so far.
    pub fn distinct(&self) -> usize {
        match &self.table {
            Table::One(m) => m.len(),
            Table::Two(m) => m.len(),
            Table::Many(m) => m.len(),
        }
    }

    /// Counts packed states laid end to end (`words_for(neurons)` words each).
    pub fn add(&mut self, states: &[u64]) {
        debug_assert_eq!(states.len() % self.words, 0);
        self.observations += (states.len() / self.words) as u64;
        match &mut self.table {
            Table::One(m) => {
                for &s in states {
                    *m.entry(s).or_insert(0) += 1;
                }
            }
            Table::Two(m) => {
                for s in states.chunks_exact(2) {
                    *m.entry(u128::from(s[0]) | u128::from(s[1]) << 64)
                        .or_insert(0) += 1;
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

    /// Adds `count` observations of one state.
    pub fn add_counted(&mut self, state: &[u64], count: u64) {
        self.observations += count;
        match &mut self.table {
            Table::One(m) => *m.entry(state[0]).or_insert(0) += count,
            Table::Two(m) => {
                *m.entry(u128::from(state[0]) | u128::from(state[1]) << 64)
                    .or_insert(0) += count
            }
            Table::Many(m) => match m.get_mut(state) {
                Some(c) => *c += count,
                None => {
                    m.insert(state.into(), count);
                }
            },
        }
    }

    /// Adds another counter's counts of the same layer (exact, order-independent).
    pub fn merge(&mut self, other: LayerCounter) {
        debug_assert_eq!(self.neurons, other.neurons);
        if other.distinct() > self.distinct() {
            let small = std::mem::replace(self, other);
            return self.merge(small);
        }
        self.observations += other.observations;
        match (&mut self.table, other.table) {
            (Table::One(a), Table::One(b)) => b
                .into_iter()
                .for_each(|(k, c)| *a.entry(k).or_insert(0) += c),
            (Table::Two(a), Table::Two(b)) => b
                .into_iter()
                .for_each(|(k, c)| *a.entry(k).or_insert(0) += c),
            (Table::Many(a), Table::Many(b)) => b
                .into_iter()
                .for_each(|(k, c)| *a.entry(k).or_insert(0) += c),
            _ => unreachable!("counters of one layer share their word count"),
        }
    }

    /// The distinct states sorted by value (as unsigned integers, bit `i` = neuron `i`) with
    /// their counts: a deterministic result whatever order the states came in.
    pub fn finish(self, name: &str, states_per_input: u32) -> LayerCounts {
        let words = self.words;
        let (states, counts) = match self.table {
            Table::One(m) => {
                let mut v: Vec<(u64, u64)> = m.into_iter().collect();
                v.sort_unstable_by_key(|&(k, _)| k);
                v.into_iter().unzip()
            }
            Table::Two(m) => {
                let mut v: Vec<(u128, u64)> = m.into_iter().collect();
                v.sort_unstable_by_key(|&(k, _)| k);
                let mut states = Vec::with_capacity(v.len() * 2);
                let mut counts = Vec::with_capacity(v.len());
                for (k, c) in v {
                    states.extend([k as u64, (k >> 64) as u64]);
                    counts.push(c);
                }
                (states, counts)
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
    fn hasher_spreads_high_bits() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let b = BuildHasherDefault::<FoldHasher>::default();
        let low: std::collections::HashSet<u64> =
            (0..1024u64).map(|i| b.hash_one(i << 40) & 1023).collect();
        assert!(low.len() > 500, "{}", low.len());
    }
}
