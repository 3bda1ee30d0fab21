//! A trained model and its file format (`AIQMODEL`).
//!
//! Layout after the 12-byte header (`AIQMODEL`, `u32` [`FORMAT_VERSION`]), all bincode 1.3
//! with fixed-width little-endian integers (`aiq_io::encode`):
//! 1. [`ModelMeta`];
//! 2. the parameters, `Vec<f32>`, layer by layer in network order: each dense or conv
//!    kernel row-major as Keras stores it (`inputs × outputs`, `(kh, kw, c_in) × c_out`),
//!    then its bias; batch norm's γ then β;
//! 3. batch norm's running statistics, `Vec<f32>`: per batch-norm layer, mean then variance
//!    (empty without batch norm).
//!
//! The metadata is decoded first, under a 1 MiB bound; it fixes the architecture, so the
//! two vectors are then decoded under bounds of exactly their expected sizes.

use std::io::{Read, Write};

use aiq_data::DatasetKind;
use aiq_io::{Provenance, StreamKind};
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::net::{Net, WorkspacePool, CLASSES, INPUT};
use crate::{layers::loss::argmax, Arch, LayerInfo, Modifier, TrainError};

/// Version of the model stream this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Bound on the encoded metadata.
const META_LIMIT: u64 = 1 << 20;

/// What a model is and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub arch: Arch,
    pub widths: Vec<usize>,
    pub modifier: Modifier,
    pub seed: u64,
    /// Fraction of training labels randomized before training.
    pub randomize_labels: f64,
    pub dataset: DatasetKind,
    /// Epochs run (including those after the best, up to early stopping).
    pub epochs: usize,
    /// The epoch whose weights these are (1-based).
    pub best_epoch: usize,
    /// Training accuracy of the best epoch (Keras' in-epoch figure, on the possibly
    /// randomized labels).
    pub train_accuracy: f64,
    /// Test accuracy of these weights.
    pub test_accuracy: f64,
    /// Keras' `count_params()`.
    pub parameters: usize,
    pub provenance: Provenance,
}

/// A trained network: metadata, parameters and batch norm's running statistics.
#[derive(Debug)]
pub struct Model {
    meta: ModelMeta,
    net: Net,
    params: Vec<f32>,
    state: Vec<f32>,
    /// Inference workspaces kept between [`Model::forward_hidden`] calls, so callers that
    /// run many chunks (from several threads) do not allocate and zero buffers each time.
    spare: WorkspacePool,
}

impl Clone for Model {
    fn clone(&self) -> Model {
        Model::from_parts(
            self.meta.clone(),
            self.net.clone(),
            self.params.clone(),
            self.state.clone(),
        )
    }
}

impl Model {
    pub(crate) fn from_parts(
        meta: ModelMeta,
        net: Net,
        params: Vec<f32>,
        state: Vec<f32>,
    ) -> Model {
        Model {
            meta,
            net,
            params,
            state,
            spare: WorkspacePool::default(),
        }
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The flat parameter vector, in the file's order.
    pub fn parameters(&self) -> &[f32] {
        &self.params
    }

    /// Batch norm's running statistics (empty without batch norm).
    pub fn running_statistics(&self) -> &[f32] {
        &self.state
    }

    /// The hidden layers in order: `dense1`, `dense2` or `conv1`, `conv2`, `dense3`.
    pub fn hidden_layers(&self) -> Vec<LayerInfo> {
        self.net.taps.iter().map(|(_, info)| info.clone()).collect()
    }

    /// Writes the model stream (header included).
    pub fn write_to(&self, w: &mut impl Write, name: &str) -> Result<(), TrainError> {
        StreamKind::Model
            .write_header(w, FORMAT_VERSION)
            .map_err(|e| aiq_io::IoError::io(name, e))?;
        aiq_io::encode(w, &self.meta, name)?;
        aiq_io::encode(w, &self.params, name)?;
        aiq_io::encode(w, &self.state, name)?;
        Ok(())
    }

    /// Reads a model stream, header included.
    pub fn read_from(r: &mut impl Read, name: &str) -> Result<Model, TrainError> {
        StreamKind::Model.expect_header(r, name, FORMAT_VERSION)?;
        Self::read_after_header(r, name)
    }

    /// Reads the rest of a model stream whose header the caller has read and checked.
    pub fn read_after_header(r: &mut impl Read, name: &str) -> Result<Model, TrainError> {
        let meta: ModelMeta = aiq_io::decode_bounded(r, META_LIMIT, name, "model metadata")?;
        let corrupt = |detail: String| TrainError::Model {
            name: name.to_string(),
            detail,
        };
        let net =
            Net::new(meta.arch, &meta.widths, meta.modifier).map_err(|e| corrupt(e.to_string()))?;
        if meta.parameters != net.n_params + net.n_state {
            return Err(corrupt(format!(
                "metadata says {} parameters, {} {:?} {} has {}",
                meta.parameters,
                meta.arch,
                meta.widths,
                meta.modifier,
                net.n_params + net.n_state
            )));
        }
        let params: Vec<f32> =
            aiq_io::decode_bounded(r, 8 + 4 * net.n_params as u64, name, "model parameters")?;
        let state: Vec<f32> =
            aiq_io::decode_bounded(r, 8 + 4 * net.n_state as u64, name, "batch-norm statistics")?;
        if params.len() != net.n_params || state.len() != net.n_state {
            return Err(corrupt(format!(
                "expected {} parameters and {} running statistics, found {} and {}",
                net.n_params,
                net.n_state,
                params.len(),
                state.len()
            )));
        }
        Ok(Model::from_parts(meta, net, params, state))
    }

    /// Inference on `images` (rows of 784 pixels), single-threaded (callers parallelize over
    /// chunks of images): batch norm uses its running statistics, dropout is off.
    ///
    /// Calls `tap(i, states)` once per hidden layer `i`, in order, with that layer's **ELU
    /// output, before batch norm or dropout** (what TensorState captures in the authors'
    /// code, see the crate docs) as a `(inputs × positions, neurons)` row-major matrix:
    /// image-major, then y, then x; one row per observed state. Returns the logits,
    /// `inputs × 10`. Memory grows with the number of images (every layer's output is
    /// kept for the call), so pass chunks of a few hundred.
    pub fn forward_hidden(
        &self,
        images: ArrayView2<'_, f32>,
        tap: &mut dyn FnMut(usize, ArrayView2<'_, f32>),
    ) -> Array2<f32> {
        self.infer(images, true, tap)
    }

    /// [`Self::forward_hidden`] for callers that only need the states: the tap's matrix
    /// is positive exactly where the ELU output is (for a layer followed by pooling it is
    /// the ELU's input, pooled before the ELU: a quarter of the ELUs). The same logits to
    /// the bit.
    pub fn forward_states(
        &self,
        images: ArrayView2<'_, f32>,
        tap: &mut dyn FnMut(usize, ArrayView2<'_, f32>),
    ) -> Array2<f32> {
        self.infer(images, false, tap)
    }

    fn infer(
        &self,
        images: ArrayView2<'_, f32>,
        exact_taps: bool,
        tap: &mut dyn FnMut(usize, ArrayView2<'_, f32>),
    ) -> Array2<f32> {
        let n = images.nrows();
        assert_eq!(
            images.ncols(),
            INPUT,
            "Model inference: images must be rows of 28×28 pixels"
        );
        let images = images.as_standard_layout();
        let mut ws = self.spare.take(&self.net, n);
        let logits = crate::train::infer(
            &self.net,
            &self.params,
            &self.state,
            &mut ws,
            images.as_slice().expect("standard layout"),
            exact_taps,
            tap,
        );
        let logits = Array2::from_shape_vec((n, CLASSES), logits.to_vec()).expect("logits shape");
        self.spare.give(ws);
        logits
    }

    /// Predicted class of each image (argmax of the logits, the first on ties).
    pub fn predict(&self, images: ArrayView2<'_, f32>) -> Vec<u8> {
        let logits = self.forward_states(images, &mut |_, _| {});
        logits
            .rows()
            .into_iter()
            .map(|z| argmax(z.as_slice().expect("row")) as u8)
            .collect()
    }

    /// Fraction of `images` labelled right, in parallel on the current rayon pool.
    pub fn accuracy(&self, images: ArrayView2<'_, f32>, labels: &[u8]) -> f64 {
        let images = images.as_standard_layout();
        crate::train::evaluate(
            &self.net,
            &self.params,
            &self.state,
            images.as_slice().expect("standard layout"),
            labels,
            &self.spare,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tests::synthetic;
    use crate::{train, TrainConfig};
    use ndarray::s;

    fn trained(arch: Arch, widths: Vec<usize>, modifier: Modifier) -> (Model, aiq_data::Dataset) {
        let data = synthetic(120, 30, 21);
        let cfg = TrainConfig {
            modifier,
            seed: 2,
            batch: 40,
            max_epochs: 1,
            ..TrainConfig::paper(arch, widths)
        };
        (train(&data, &cfg, &mut |_| {}).unwrap(), data)
    }

    #[test]
    fn round_trip_is_bit_exact() {
        let (m, data) = trained(Arch::Lenet5, vec![2, 3, 4], Modifier::Batchnorm);
        let mut bytes = Vec::new();
        m.write_to(&mut bytes, "m").unwrap();
        assert_eq!(&bytes[..8], b"AIQMODEL");
        let back = Model::read_from(&mut bytes.as_slice(), "m").unwrap();
        assert_eq!(back.meta(), m.meta());
        assert_eq!(back.parameters(), m.parameters());
        assert_eq!(back.running_statistics(), m.running_statistics());
        let imgs = data.test.images.view();
        let (a, b) = (
            m.forward_hidden(imgs, &mut |_, _| {}),
            back.forward_hidden(imgs, &mut |_, _| {}),
        );
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits()));
        let mut again = Vec::new();
        back.write_to(&mut again, "m").unwrap();
        assert_eq!(again, bytes);
        // After the header, the same reader works for callers that read it themselves.
        let back = Model::read_after_header(&mut &bytes[12..], "m").unwrap();
        assert_eq!(back.parameters(), m.parameters());
    }

    #[test]
    fn bad_streams_are_errors() {
        let (m, _) = trained(Arch::Lenet300, vec![3, 2], Modifier::None);
        let mut bytes = Vec::new();
        m.write_to(&mut bytes, "m").unwrap();
        for cut in [5, 12, 40, bytes.len() - 3] {
            let err = Model::read_from(&mut &bytes[..cut], "cut.bin").unwrap_err();
            assert!(err.to_string().contains("cut.bin"), "{err}");
        }
        let mut states = bytes.clone();
        states[..8].copy_from_slice(b"AIQSTATE");
        assert!(matches!(
            Model::read_from(&mut states.as_slice(), "s"),
            Err(TrainError::Io(aiq_io::IoError::WrongKind { .. }))
        ));
        // Metadata that no longer matches the weights that follow.
        let mut meta = m.meta().clone();
        meta.widths = vec![3, 3];
        let mut other = Vec::new();
        Model::from_parts(meta, m.net.clone(), m.params.clone(), m.state.clone())
            .write_to(&mut other, "x")
            .unwrap();
        let err = Model::read_from(&mut other.as_slice(), "x").unwrap_err();
        assert!(matches!(err, TrainError::Model { .. }), "{err}");
    }

    /// `forward_states` (pooling before the ELU where it can) against `forward_hidden`:
    /// the same logits to the bit, and taps positive in the same places.
    #[test]
    fn state_taps_give_the_states_and_logits_of_the_exact_taps() {
        for (arch, widths, modifier) in [
            (Arch::Lenet5, vec![4, 9, 5], Modifier::None),
            (Arch::Lenet5, vec![3, 5, 4], Modifier::Dropout),
            (Arch::Lenet5, vec![3, 5, 4], Modifier::Batchnorm),
            (Arch::Lenet300, vec![6, 5], Modifier::None),
        ] {
            let (m, data) = trained(arch, widths, modifier);
            let imgs = data.test.images.slice(s![..7, ..]);
            let signs = |states: bool| {
                let mut on: Vec<Vec<bool>> = vec![Vec::new(); 3];
                let mut tap =
                    |i: usize, a: ArrayView2<'_, f32>| on[i].extend(a.iter().map(|&v| v > 0.0));
                let logits = if states {
                    m.forward_states(imgs, &mut tap)
                } else {
                    m.forward_hidden(imgs, &mut tap)
                };
                (logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), on)
            };
            assert_eq!(signs(true), signs(false), "{arch} {modifier}");
        }
    }

    #[test]
    fn taps_have_the_state_shapes_and_chunks_do_not_matter() {
        for modifier in [Modifier::None, Modifier::Batchnorm] {
            let (m, data) = trained(Arch::Lenet5, vec![2, 3, 4], modifier);
            let imgs = data.test.images.slice(s![..5, ..]);
            let mut seen = Vec::new();
            let mut taps: Vec<Vec<f32>> = vec![Vec::new(); 3];
            let logits = m.forward_hidden(imgs, &mut |i, a| {
                seen.push((i, a.nrows(), a.ncols()));
                taps[i].extend(a.iter());
            });
            assert_eq!(seen, vec![(0, 5 * 576, 2), (1, 5 * 64, 3), (2, 5, 4)]);
            assert_eq!(logits.dim(), (5, 10));
            // The taps are ELU outputs: never below −1.
            assert!(taps.iter().flatten().all(|&v| v >= -1.0));
            // Splitting the images into chunks gives the same bits.
            let a = m.forward_hidden(imgs.slice(s![..2, ..]), &mut |_, _| {});
            let b = m.forward_hidden(imgs.slice(s![2.., ..]), &mut |_, _| {});
            let joined: Vec<u32> = a.iter().chain(b.iter()).map(|v| v.to_bits()).collect();
            assert_eq!(
                joined,
                logits.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            let pred = m.predict(imgs);
            for (p, z) in pred.iter().zip(logits.rows()) {
                assert_eq!(usize::from(*p), argmax(z.as_slice().unwrap()));
            }
        }
    }

    #[test]
    fn models_can_be_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Model>();
    }

    #[test]
    fn lenet300_taps_are_dense_rows() {
        let (m, data) = trained(Arch::Lenet300, vec![5, 3], Modifier::Dropout);
        let hidden = m.hidden_layers();
        assert_eq!(
            hidden.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
            vec!["dense1", "dense2"]
        );
        let mut shapes = Vec::new();
        m.forward_hidden(data.test.images.view(), &mut |i, a| {
            shapes.push((i, a.dim()))
        });
        assert_eq!(shapes, vec![(0, (30, 5)), (1, (30, 3))]);
    }
}
