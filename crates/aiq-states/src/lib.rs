//! Bit-packed neuron states and the streaming states dump format.
//!
//! A layer's state for one observation is the on/off pattern of its neurons: neuron `i` is on
//! iff its output is `> 0` (0, -0 and NaN are off). [`pack_row`] is the one place that rule is
//! written; states are stored as `u64` words, neuron `i` at bit `i % 64` of word `i / 64`,
//! least significant bit first (TensorState's order). [`StatesWriter`] and [`StatesReader`]
//! stream the `AIQSTATE` format chunk by chunk, so neither side holds a whole data set.
//!
//! ```
//! use aiq_states::{pack_row, words_for};
//! let mut state = vec![0u64; words_for(4)];
//! pack_row(&[0.5, 0.0, f32::NAN, 2.0], &mut state);
//! assert_eq!(state, vec![0b1001]);
//! ```

// Tests may unwrap: a panic there is a test failure with its message.

mod dump;
mod pack;

pub use dump::{
    words_from_le, ChunkRef, LayerSpec, ModelIdentity, RawChunk, StatesChunk, StatesHeader,
    StatesReader, StatesWriter, MAX_CHUNK_BYTES, MAX_NEURONS, MAX_STATES_PER_INPUT, STATES_VERSION,
};
pub use pack::{is_on, on, pack_planes, pack_row, pack_rows, words_for};
