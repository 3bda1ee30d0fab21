//! Training kernels: one mini-batch of 200 (forward, backward, SGD-Nesterov update) for the
//! configurations the speed targets name, and LeNet-5 (20,50,100) inference with taps (what
//! `dump-states` runs). Images are synthetic (uniform pixels, fixed labels): speed does not
//! depend on the pixel values. Threads: rayon's default (all cores); set
//! `RAYON_NUM_THREADS=1` or `2` to pin. Run: `cargo bench --bench train`.

use aiq_train::{Arch, Modifier, Stepper, TrainConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::Array2;

/// 1,000 images of pseudo-random pixels in [0, 1) and labels 0..9.
fn images(n: usize) -> (Array2<f32>, Vec<u8>) {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let img = Array2::from_shape_fn((n, 784), |_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32
    });
    (img, (0..n).map(|i| (i % 10) as u8).collect())
}

fn train_steps(c: &mut Criterion) {
    let (img, labels) = images(200);
    let mut g = c.benchmark_group("train_step");
    g.throughput(Throughput::Elements(200));
    for (arch, widths, modifier) in [
        (Arch::Lenet300, vec![11, 4], Modifier::None),
        (Arch::Lenet5, vec![3, 9, 4], Modifier::None),
        (Arch::Lenet300, vec![128, 1024], Modifier::None),
        (Arch::Lenet5, vec![32, 64, 128], Modifier::None),
        (Arch::Lenet5, vec![3, 9, 4], Modifier::Batchnorm),
        (Arch::Lenet5, vec![3, 9, 4], Modifier::Dropout),
    ] {
        let name = format!(
            "{arch}_{}{}_train_step",
            widths
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
                .join("_"),
            if modifier == Modifier::None {
                String::new()
            } else {
                format!("_{modifier}")
            }
        );
        let cfg = TrainConfig {
            modifier,
            ..TrainConfig::paper(arch, widths)
        };
        let mut st = Stepper::new(&cfg).unwrap();
        g.bench_function(name, |b| b.iter(|| st.step(img.view(), &labels).unwrap()));
    }
    g.finish();
}

fn inference(c: &mut Criterion) {
    // Weights do not matter for speed: one quick step gives a valid model-shaped network.
    let (img, _) = images(500);
    let data = aiq_data::Dataset {
        kind: aiq_data::DatasetKind::Mnist,
        train: aiq_data::Split {
            images: img.clone(),
            labels: vec![1; 500],
            rows: 28,
            cols: 28,
        },
        test: aiq_data::Split {
            images: img.clone(),
            labels: vec![1; 500],
            rows: 28,
            cols: 28,
        },
    };
    let cfg = TrainConfig {
        max_epochs: 1,
        batch: 500,
        ..TrainConfig::paper(Arch::Lenet5, vec![20, 50, 100])
    };
    let model = aiq_train::train(&data, &cfg, &mut |_| {}).unwrap();
    let mut g = c.benchmark_group("inference");
    g.throughput(Throughput::Elements(500));
    g.bench_function("lenet5_20_50_100_forward_hidden_500", |b| {
        b.iter(|| {
            let mut on = 0usize;
            let logits = model.forward_hidden(img.view(), &mut |_, a| {
                on += a.iter().filter(|&&v| v > 0.0).count()
            });
            (logits, on)
        })
    });
    g.finish();
}

criterion_group!(benches, train_steps, inference);
criterion_main!(benches);
