//! Parameter statistics of every weighted layer, once per epoch (issue 6, after Salit):
//! the variance, largest magnitude and fraction below a threshold of its kernel weights, of
//! its activations and of its kernel gradient, the fraction of its neurons that never fire,
//! and its parameter count. The arithmetic lives in `aiq-paramstats`; this module only says
//! where each set of values comes from, chosen so the statistics cost almost nothing:
//!
//! - *weights*: the kernel (not the bias) at the end of the epoch;
//! - *gradients*: the kernel's gradient of the mean cross-entropy (without the L2 term) on the
//!   epoch's last mini-batch, as the trainer leaves it after the update;
//! - *activations*: the layer's output on the test set, gathered during the test evaluation
//!   the epoch runs anyway (hidden layers: after ELU, where states are taken; the output
//!   layer: its logits). *Never fires* counts neurons (channels) whose output was never > 0.

use aiq_paramstats::{Accumulator, FireTracker, LayerStats, DEFAULT_THRESHOLD};

use crate::net::{Net, Op};

/// The kernel range of each weighted layer, in network order.
pub(crate) fn weighted_layers(net: &Net) -> Vec<std::ops::Range<usize>> {
    net.layers
        .iter()
        .filter_map(|layer| match &layer.op {
            Op::Dense { inp, out, w, .. } => Some(*w..*w + inp * out),
            Op::Conv { s, w, .. } => Some(*w..*w + s.kdim() * s.cout),
            _ => None,
        })
        .collect()
}

/// Activation statistics of one evaluation, per weighted layer: mergeable in chunk order.
#[derive(Debug, Clone)]
pub(crate) struct ActStats {
    pub layers: Vec<(Accumulator, FireTracker)>,
}

impl ActStats {
    /// Empty statistics for `net`: one entry per hidden tap plus one for the logits.
    pub fn new(net: &Net) -> Self {
        let mut layers: Vec<_> = net
            .taps
            .iter()
            .map(|(_, info)| {
                (
                    Accumulator::new(DEFAULT_THRESHOLD),
                    FireTracker::new(info.neurons),
                )
            })
            .collect();
        layers.push((
            Accumulator::new(DEFAULT_THRESHOLD),
            FireTracker::new(crate::net::CLASSES),
        ));
        ActStats { layers }
    }

    /// Records one layer's activations (`rows × neurons`, row-major).
    pub fn add(&mut self, layer: usize, acts: &[f32]) {
        let (acc, fire) = &mut self.layers[layer];
        acc.add_slice(acts);
        fire.add_rows(acts);
    }

    pub fn merge(&mut self, other: &ActStats) {
        for ((a, f), (oa, of)) in self.layers.iter_mut().zip(&other.layers) {
            a.merge(oa);
            f.merge(of);
        }
    }
}

/// One epoch's statistics: `params` and `grad` are the flat parameter and gradient vectors.
pub(crate) fn epoch_stats(
    net: &Net,
    params: &[f32],
    grad: &[f32],
    acts: &ActStats,
) -> Vec<LayerStats> {
    let names = net
        .taps
        .iter()
        .map(|(_, info)| info.name.clone())
        .chain(std::iter::once("output".to_string()));
    let param_counts = layer_parameter_counts(net);
    weighted_layers(net)
        .into_iter()
        .zip(names)
        .zip(&acts.layers)
        .zip(param_counts)
        .map(|(((kernel, name), (act, fire)), parameters)| {
            let summarize = |xs: &[f32]| {
                let mut acc = Accumulator::new(DEFAULT_THRESHOLD);
                acc.add_slice(xs);
                acc.summary()
            };
            LayerStats {
                name,
                parameters,
                weights: summarize(&params[kernel.clone()]),
                gradients: summarize(&grad[kernel]),
                activations: act.summary(),
                never_fire: fire.never_fire_fraction(),
            }
        })
        .collect()
}

/// Kernel plus bias parameters of each weighted layer.
fn layer_parameter_counts(net: &Net) -> Vec<usize> {
    net.layers
        .iter()
        .filter_map(|layer| match &layer.op {
            Op::Dense { inp, out, .. } => Some(inp * out + out),
            Op::Conv { s, .. } => Some(s.kdim() * s.cout + s.cout),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Arch, Modifier};

    #[test]
    fn parameter_counts_per_layer_add_up() {
        // LeNet-300-100 (11,4): 784·11+11 = 8635, 11·4+4 = 48, 4·10+10 = 50; total 8733.
        let net = Net::new(Arch::Lenet300, &[11, 4], Modifier::None).unwrap();
        assert_eq!(layer_parameter_counts(&net), vec![8635, 48, 50]);
        // LeNet-5 (3,9,4): 25·3+3 = 78, 75·9+9 = 684, 144·4+4 = 580, 4·10+10 = 50; 1392.
        let net = Net::new(Arch::Lenet5, &[3, 9, 4], Modifier::None).unwrap();
        assert_eq!(layer_parameter_counts(&net), vec![78, 684, 580, 50]);
        let kernels: Vec<usize> = weighted_layers(&net).iter().map(|r| r.len()).collect();
        assert_eq!(kernels, vec![75, 675, 576, 40]);
    }

    #[test]
    fn statistics_of_known_vectors() {
        let net = Net::new(Arch::Lenet300, &[2, 2], Modifier::None).unwrap();
        let n = net.n_params;
        // Every parameter 0.5, every gradient -2e-4 (below the 1e-3 threshold).
        let params = vec![0.5f32; n];
        let grad = vec![-2e-4f32; n];
        let mut acts = ActStats::new(&net);
        // dense1 sees two inputs: neuron 0 fires once (1.0), neuron 1 never (0.0, -1.0).
        acts.add(0, &[1.0, 0.0, -0.5, -1.0]);
        let stats = epoch_stats(&net, &params, &grad, &acts);
        let names: Vec<&str> = stats.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["dense1", "dense2", "output"]);
        let d1 = &stats[0];
        assert_eq!(d1.parameters, 784 * 2 + 2);
        assert_eq!(d1.weights.count, 784 * 2);
        assert_eq!((d1.weights.variance, d1.weights.max_abs), (0.0, 0.5));
        assert_eq!(
            (d1.gradients.below_threshold, d1.gradients.max_abs),
            (1.0, f64::from(2e-4f32))
        );
        // Activations 1, 0, -0.5, -1: mean -0.125, variance (1.265625+0.015625+0.140625+0.765625)/4.
        assert!((d1.activations.variance - 0.546875).abs() < 1e-12);
        assert_eq!(d1.activations.below_threshold, 0.25);
        assert_eq!(d1.never_fire, 0.5);
        // No activations recorded for dense2: empty summary, every neuron silent.
        assert_eq!((stats[1].activations.count, stats[1].never_fire), (0, 1.0));
    }

    #[test]
    fn statistics_do_not_depend_on_the_thread_count() {
        let data = crate::train::tests::synthetic(400, 1200, 3);
        let cfg = crate::TrainConfig {
            batch: 100,
            ..crate::TrainConfig::paper(Arch::Lenet5, vec![2, 3, 4])
        };
        let mut st = crate::Stepper::new(&cfg).unwrap();
        st.step(data.train.images.view(), &data.train.labels)
            .unwrap();
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| st.evaluate(data.test.images.view(), &data.test.labels, true))
                .unwrap()
        };
        let (acc1, stats1) = run(1);
        let (acc2, stats2) = run(2);
        assert_eq!(acc1, acc2);
        assert_eq!(stats1, stats2);
        let stats = stats1.unwrap();
        assert_eq!(stats.len(), 4);
        // 1200 test images: conv1 sees 24·24 positions × 2 channels each, the logits 10.
        assert_eq!(stats[0].activations.count, 1200 * 576 * 2);
        assert_eq!(stats[3].activations.count, 1200 * 10);
        // Without statistics the accuracy is the same.
        assert_eq!(
            st.evaluate(data.test.images.view(), &data.test.labels, false)
                .unwrap()
                .0,
            acc1
        );
    }
}
