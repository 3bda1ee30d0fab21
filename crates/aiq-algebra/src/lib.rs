//! Layer algebra: data-independent complexity and intrinsic power of a network architecture
//! (Badias & Banerjee, "Neural Network Layer Algebra").
//!
//! Every layer gets two local values from its shape alone (§5): the *intrinsic power* `p`
//! (how much the layer compresses the data flow; < 1 compresses) and the *complexity* `c`
//! (its capacity). The layer algebra (§6) carries them through the graph from `u = 1` at
//! the input, multiplying by each layer's value (eq. 17–18, for both metrics); where paths
//! merge, power takes the maximum of the incoming values (eq. 19) and complexity their sum
//! (eq. 20). The values at the output are the global cumulative intrinsic power (GCIP) and
//! the global cumulative complexity (GCC). Two more globals ignore the topology: the global
//! sum complexity GSC = Σ c (eq. 3) and the global weighted complexity GWC = GCC · GSC (§7.4).
//!
//! | layer | intrinsic power `p` | complexity `c` |
//! |---|---|---|
//! | convolution, `n_k` filters of `K = K_H·K_W` | `n_k · S_o / (K · S_i)` (eq. 8, 10) | `n_k · log2 K` (eq. 9, 11) |
//! | pooling (a convolution, §5.4) | same, `n_k` = channels | same |
//! | dense `D_in → D_out` | `D_out / D_in` (eq. 15) | `log2(D_out · D_in)` (eq. 16) |
//! | ReLU, ELU, leaky ReLU | 0.584 | 1.713 |
//! | tanh / sigmoid / softmax | 0.628 / 0.208 / 1.342e-5 | 1.592 / 4.802 / 7.454e4 |
//! | batch norm, dropout, flatten, add | changes nothing | changes nothing |
//!
//! ```
//! use aiq_algebra::{Arch, Modifier};
//! let a = Arch::Lenet5.graph(&[3, 9, 4], Modifier::None)?.analyze();
//! assert_eq!(a.layers[0].name, "conv1");
//! assert!((a.layers[2].intrinsic_power - 0.1875).abs() < 1e-12); // pool1: 3·144/(4·576)
//! assert_eq!(a.gwc, a.gcc * a.gsc);
//! # Ok::<(), aiq_algebra::AlgebraError>(())
//! ```
//!
//! # Choices where the paper is ambiguous
//!
//! - **Sizes in eq. 8 are spatial.** The paper defines `S_i`, `S_o` as the `D × P` sizes of
//!   one feature map and `K = K_H × K_W`; input channels appear nowhere, so they do not
//!   enter `p` or `c` of a convolution (the output channels enter through `n_k`). `C_o = 1`.
//! - **`n_k` of a pooling layer is its number of channels.** Pooling is "a specific form of
//!   convolution" (§5.4); it applies one `K`-element window to each feature map, i.e. one
//!   filter per output map, as a convolution's `n_k` counts the filters producing its output
//!   maps. So 2×2/2 pooling of 24×24×3 has `p = 3·144/(4·576) = 0.1875` and
//!   `c = 3·log2 4 = 6`. (The other reading, one shared window with `n_k = 1`, would value
//!   pooling 3 maps the same as pooling 300.) Max and average pooling get the same values,
//!   as in the paper.
//! - **Layers that change nothing are transparent.** Batch norm (§5.10), dropout (§5.11),
//!   flatten (a reshape) and the add of a merge have no transfer function: the neutral
//!   element of the products (eq. 18) is 1 but that of the sum (eq. 3) is 0, so no single
//!   local complexity would change nothing in both. They pass their input's cumulative values
//!   on and report `p = 1`, `c = 0` (so the complexity column still sums to GSC).
//! - **Cumulative complexity is a product**, as §6.2 says ("in the same way"), not the sum
//!   of eq. 2. Hence a layer with `c = 0` (a 1×1 convolution, `log2 1 = 0`; a 1→1 dense
//!   layer) sets GCC to 0 on its path; we follow the paper and do not patch this.
//! - **A merge's own add changes nothing**; the merge rules (eq. 19–20) apply to what enters
//!   it. GSC counts every layer once whatever the number of paths through it.
//! - **The activations' `c` is the paper's printed value** (e.g. 7.454e4 for softmax), not
//!   recomputed as `1/p`; they differ in the fourth digit.
//! - **No input row.** The input is `u = 1` for both metrics; the data's size enters through
//!   the first layer (§6.1). The last layer added is the output where globals are read.

mod arch;
mod format;
mod graph;

pub use arch::{parse_widths, Arch, Modifier, MAX_WIDTH};
pub use graph::{Activation, Analysis, Graph, LayerKind, LayerRow, NodeId, PoolOp, Shape};

/// Errors building a layer graph or reading its description.
#[derive(Debug, thiserror::Error)]
pub enum AlgebraError {
    #[error("layer {name}: {detail}")]
    Layer { name: String, detail: String },
    #[error("widths: {arch} takes {expected} comma-separated widths, found {found}")]
    WidthCount {
        arch: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("widths: each width must be in 1..={max}, found {found}", max = MAX_WIDTH)]
    WidthRange { found: usize },
    #[error("widths: expected comma-separated positive integers such as 3,9,4, found {found:?}")]
    Widths { found: String },
    #[error("unknown {what} {found:?} (expected {expected})")]
    Unknown {
        what: &'static str,
        expected: &'static str,
        found: String,
    },
}
