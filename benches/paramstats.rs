//! What the per-epoch parameter statistics cost (issue 6: under 5% of a training epoch).
//!
//! `train` gathers activation statistics during the test evaluation every epoch runs anyway,
//! plus one pass over the weights and the last gradient. These benches time that evaluation
//! over 10,000 images with and without the statistics; the difference, divided by an epoch
//! (300 steps of `benches/train.rs` plus one evaluation), is the figure.
//!
//! `cargo bench --bench paramstats`

use aiq_train::{Arch, Stepper, TrainConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::Array2;

/// Deterministic pseudo-images (pixels in [0, 1)) and labels.
fn images(n: usize) -> (Array2<f32>, Vec<u8>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let img = Array2::from_shape_fn((n, 784), |_| (next() % 256) as f32 / 256.0);
    let labels = (0..n).map(|_| (next() % 10) as u8).collect();
    (img, labels)
}

fn evaluation(c: &mut Criterion) {
    let (img, labels) = images(10_000);
    let mut g = c.benchmark_group("epoch_evaluation_10k");
    g.sample_size(10);
    for (name, arch, widths) in [
        ("lenet300_11_4", Arch::Lenet300, vec![11, 4]),
        ("lenet300_128_1024", Arch::Lenet300, vec![128, 1024]),
        ("lenet5_3_9_4", Arch::Lenet5, vec![3, 9, 4]),
    ] {
        let mut st = Stepper::new(&TrainConfig::paper(arch, widths)).expect("valid config");
        // One step so the gradient buffers hold a real gradient.
        st.step(img.view(), &labels).expect("step");
        for with_stats in [false, true] {
            let id = format!(
                "{name}_{}",
                if with_stats { "with_stats" } else { "no_stats" }
            );
            g.bench_function(id, |b| {
                b.iter(|| {
                    st.evaluate(img.view(), &labels, with_stats)
                        .expect("evaluate")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, evaluation);
criterion_main!(benches);
