//! CPU training of the paper's LeNets (Schaub & Hotaling 2023, §3.1–3.3) on ndarray, and
//! inference with hidden-layer taps for the state pipeline.
//!
//! - **Architectures.** LeNet-300-100: dense N1 → dense N2 → dense 10. LeNet-5: conv 5×5 N1
//!   → max pool 2×2 → conv 5×5 N2 → max pool 2×2 → dense N3 → dense 10, 'valid' convolutions
//!   (28 → 24 → 12 → 8 → 4), so the dense layer sees 16·N2 inputs. Every hidden layer is
//!   followed by ELU, then by the modifier (batch normalization or dropout 0.5) if any, and
//!   in LeNet-5 then by the pooling.
//! - **Recipe.** He-normal kernels (Keras': truncated normal, σ = √(2/fan_in)), zero biases;
//!   L2 0.0005 on kernels and biases as Keras adds it (loss += 0.0005·Σw², gradient +=
//!   0.001·w; batch norm's γ, β are not regularized); softmax cross-entropy; SGD with
//!   Keras' Nesterov momentum (`v = 0.9·v − 0.001·g; w += 0.9·v − 0.001·g`); mini-batches of
//!   200 reshuffled every epoch; early stopping on the training accuracy with patience 5,
//!   keeping the best epoch's weights.
//! - **Training accuracy** is Keras' figure: the fraction of training images classified
//!   right during the epoch's mini-batches, in training mode (before each batch's update).
//!   It drives early stopping. The loss reported is the mean of the batches' losses,
//!   L2 term included.
//! - **Determinism.** A mini-batch is cut into shards of [`SHARD`] images whatever the thread
//!   count; rayon computes each shard's gradient and batch-norm partial sums, which are added
//!   in shard order. Dropout masks come from a ChaCha stream keyed by (seed, epoch, batch,
//!   shard, layer). So one seed gives a bit-identical model for any `--threads`.
//! - **Taps.** [`Model::forward_hidden`] hands out each hidden layer's ELU output — before
//!   batch normalization or dropout. That is what the authors' TensorState captures: their
//!   Keras example attaches its state-capture layers `after` each `Conv2D`/`Dense` layer,
//!   whose activation (ELU) is fused into the layer, and any `BatchNormalization` is a
//!   separate layer after it. A neuron is on iff its ELU output is > 0, which is also the
//!   sign of its pre-activation. [`Model::forward_states`] uses that: where pooling follows
//!   the ELU (no batch norm between), it pools first and runs the ELU on a quarter of the
//!   values (the same logits to the bit: the ELU is non-decreasing), and its taps hand out
//!   the pre-activation.
//! - **Narrow convolutions** (LeNet-5's, up to 64 output channels) run direct kernels
//!   (`layers/direct.rs`) instead of im2col + GEMM, whose copies cost more than the
//!   arithmetic at these widths; they are compiled for the baseline target and for
//!   AVX2 + FMA and the clone is chosen at run time (the `multiversion` crate), so results
//!   on an FMA machine differ in the last bits from a machine without — never with the
//!   thread count.
//! - **GEMM** goes through ndarray: matrixmultiply (pure Rust, AVX2/FMA chosen at run time)
//!   by default, the system OpenBLAS with the `openblas` feature (Debian's
//!   `libopenblas-dev`). Rayon already runs one shard per core, so give OpenBLAS one thread
//!   (`OPENBLAS_NUM_THREADS=1`); its own threading would oversubscribe the cores.
//! - **Parameters** are counted as Keras' `count_params()` does: kernels and biases, plus
//!   batch norm's γ, β, moving mean and moving variance (4 per channel) when present.
//!
//! ```
//! use aiq_train::{describe, Arch, Modifier};
//! let d = describe(Arch::Lenet5, &[3, 9, 4], Modifier::None).unwrap();
//! assert_eq!(d.parameters, 1_392);
//! ```

// With the `openblas` feature, link the system OpenBLAS that ndarray's `blas` GEMM calls.
#[cfg(feature = "openblas")]
use blas_src as _;

mod gemm;
mod layers;
mod model;
mod net;
mod stats;
mod train;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use model::{Model, ModelMeta, FORMAT_VERSION};
pub use net::{INPUT, WIDTHS};
pub use train::{train, EpochReport, Progress, Stepper, TrainConfig, SHARD};

/// Errors of training and of reading models. Each says what was expected and what was found.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{arch} takes {expected} hidden widths, found {found}")]
    WidthCount {
        arch: Arch,
        expected: usize,
        found: usize,
    },
    #[error("hidden width {width} is outside {}..={}", WIDTHS.start(), WIDTHS.end())]
    Width { width: usize },
    #[error("data set {dataset} does not fit the network: {detail}")]
    DataShape { dataset: String, detail: String },
    #[error("training diverged: the loss became {loss} at epoch {epoch}, batch {batch}; nothing written")]
    Diverged {
        epoch: usize,
        batch: usize,
        loss: f64,
    },
    #[error("invalid setting: {0}")]
    Config(String),
    #[error("{name}: corrupt model: {detail}")]
    Model { name: String, detail: String },
    #[error(transparent)]
    Io(#[from] aiq_io::IoError),
    #[error(transparent)]
    Data(#[from] aiq_data::DataError),
}

/// The two network families of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// LeNet-300-100: two hidden dense layers.
    Lenet300,
    /// LeNet-5: two convolutions with pooling, one hidden dense layer.
    Lenet5,
}

impl Arch {
    /// How many hidden widths the architecture takes.
    pub fn hidden_layers(self) -> usize {
        match self {
            Arch::Lenet300 => 2,
            Arch::Lenet5 => 3,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Lenet300 => "lenet300",
            Arch::Lenet5 => "lenet5",
        })
    }
}

impl FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "lenet300" | "lenet-300-100" => Ok(Arch::Lenet300),
            "lenet5" | "lenet-5" => Ok(Arch::Lenet5),
            other => Err(format!(
                "unknown architecture {other:?} (expected lenet300 or lenet5)"
            )),
        }
    }
}

/// What follows every hidden layer's activation (§3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Modifier {
    None,
    /// Batch normalization (momentum 0.9, epsilon 1e-5); inference uses running statistics.
    Batchnorm,
    /// Dropout with rate 0.5, off at inference.
    Dropout,
}

impl fmt::Display for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Modifier::None => "none",
            Modifier::Batchnorm => "batchnorm",
            Modifier::Dropout => "dropout",
        })
    }
}

impl FromStr for Modifier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Modifier::None),
            "batchnorm" => Ok(Modifier::Batchnorm),
            "dropout" => Ok(Modifier::Dropout),
            other => Err(format!(
                "unknown modifier {other:?} (expected none, batchnorm or dropout)"
            )),
        }
    }
}

/// A hidden layer as the state pipeline sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// `dense1`, `dense2` (LeNet-300-100); `conv1`, `conv2`, `dense3` (LeNet-5).
    pub name: String,
    pub neurons: usize,
    /// Observed states per input image: the output positions (24·24 for `conv1`, 8·8 for
    /// `conv2`, 1 for dense layers).
    pub states_per_input: usize,
}

/// One layer of a [`Description`].
#[derive(Debug, Clone, Serialize)]
pub struct LayerDescription {
    pub kind: String,
    /// Output shape per image: `[height, width, channels]`.
    pub output: [usize; 3],
    pub parameters: usize,
}

/// An architecture, as `train --describe` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    pub arch: Arch,
    pub widths: Vec<usize>,
    pub modifier: Modifier,
    /// Keras' `count_params()`: trainable plus batch norm's moving statistics.
    pub parameters: usize,
    pub trainable_parameters: usize,
    pub layers: Vec<LayerDescription>,
    pub hidden_layers: Vec<LayerInfo>,
}

/// Describes `arch` with `widths` without training anything.
pub fn describe(
    arch: Arch,
    widths: &[usize],
    modifier: Modifier,
) -> Result<Description, TrainError> {
    let net = net::Net::new(arch, widths, modifier)?;
    let layers = net
        .layers
        .iter()
        .map(|l| {
            let side = (l.positions as f64).sqrt() as usize;
            let (kind, parameters) = match &l.op {
                net::Op::Dense { inp, out, .. } => ("dense", inp * out + out),
                net::Op::Conv { s, .. } => ("conv5x5", s.kdim() * s.cout + s.cout),
                net::Op::Elu => ("elu", 0),
                net::Op::Pool { .. } => ("maxpool2x2", 0),
                net::Op::BatchNorm { c, .. } => ("batchnorm", 4 * c),
                net::Op::Dropout => ("dropout", 0),
            };
            LayerDescription {
                kind: kind.to_string(),
                output: [side, side, l.channels],
                parameters,
            }
        })
        .collect();
    Ok(Description {
        arch,
        widths: widths.to_vec(),
        modifier,
        parameters: net.n_params + net.n_state,
        trainable_parameters: net.n_params,
        layers,
        hidden_layers: net.taps.iter().map(|(_, i)| i.clone()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_match_table_1() {
        for (arch, widths, want) in [
            (Arch::Lenet300, vec![128, 1024], 242_826),
            (Arch::Lenet300, vec![11, 4], 8_733),
            (Arch::Lenet5, vec![3, 9, 4], 1_392),
            (Arch::Lenet5, vec![3, 5, 5], 923),
            (Arch::Lenet5, vec![1024, 1024, 1024], 43_030_538),
        ] {
            let d = describe(arch, &widths, Modifier::None).unwrap();
            assert_eq!(d.parameters, want, "{arch} {widths:?}");
            let layer_sum: usize = d.layers.iter().map(|l| l.parameters).sum();
            assert_eq!(layer_sum, want);
        }
        // Batch norm adds 4 per channel of every hidden layer; dropout adds nothing.
        let bn = describe(Arch::Lenet300, &[11, 4], Modifier::Batchnorm).unwrap();
        assert_eq!(bn.parameters, 8_733 + 4 * 15);
        assert_eq!(bn.trainable_parameters, 8_733 + 2 * 15);
        assert_eq!(
            describe(Arch::Lenet5, &[3, 9, 4], Modifier::Dropout)
                .unwrap()
                .parameters,
            1_392
        );
    }

    #[test]
    fn hidden_layers_and_shapes() {
        let d = describe(Arch::Lenet5, &[3, 9, 4], Modifier::None).unwrap();
        let names: Vec<_> = d
            .hidden_layers
            .iter()
            .map(|h| (h.name.as_str(), h.neurons, h.states_per_input))
            .collect();
        assert_eq!(
            names,
            vec![("conv1", 3, 576), ("conv2", 9, 64), ("dense3", 4, 1)]
        );
        let outs: Vec<_> = d.layers.iter().map(|l| l.output).collect();
        assert_eq!(outs[0], [24, 24, 3]);
        assert_eq!(outs[2], [12, 12, 3]);
        assert_eq!(outs[5], [4, 4, 9]);
    }

    #[test]
    fn bad_widths_are_errors() {
        assert!(matches!(
            describe(Arch::Lenet5, &[3, 9], Modifier::None),
            Err(TrainError::WidthCount { .. })
        ));
        assert!(matches!(
            describe(Arch::Lenet300, &[0, 9], Modifier::None),
            Err(TrainError::Width { width: 0 })
        ));
        assert!(matches!(
            describe(Arch::Lenet300, &[4097, 9], Modifier::None),
            Err(TrainError::Width { .. })
        ));
        assert!(describe(Arch::Lenet300, &[4096, 1], Modifier::None).is_ok());
    }

    #[test]
    fn names_round_trip() {
        for a in [Arch::Lenet300, Arch::Lenet5] {
            assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
        }
        for m in [Modifier::None, Modifier::Batchnorm, Modifier::Dropout] {
            assert_eq!(m.to_string().parse::<Modifier>().unwrap(), m);
        }
        assert!("lenet7".parse::<Arch>().is_err());
    }
}
