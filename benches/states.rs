//! State pipeline kernels: packing activations into bits, counting distinct states, entropy.
//!
//! The inputs mimic the LeNet-5 (20,50,100) measurement on the 10k MNIST test images:
//! activations are projections of low-dimensional Gaussian points through random
//! hyperplanes, so states repeat the way a trained layer's do (a 20-neuron layer over an
//! 8-dimensional input shows tens of thousands of distinct states, not a million).
//! Run: `cargo bench --bench states`.

use aiq_count::LayerCounter;
use aiq_states::{pack_rows, words_for};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ndarray::Array2;

/// xorshift64*: a fixed, dependency-free stream of pseudo-random numbers.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Roughly normal (sum of uniforms).
    fn gauss(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            - 2.0
    }
}

/// `rows` activations of `neurons` neurons over a `dim`-dimensional latent input.
fn activations(rows: usize, neurons: usize, dim: usize, seed: u64) -> Array2<f32> {
    let mut rng = Rng(seed);
    let w: Vec<f32> = (0..neurons * dim).map(|_| rng.gauss()).collect();
    let b: Vec<f32> = (0..neurons).map(|_| rng.gauss() * 0.5).collect();
    let mut a = Array2::zeros((rows, neurons));
    for mut row in a.rows_mut() {
        let x: Vec<f32> = (0..dim).map(|_| rng.gauss()).collect();
        for (j, v) in row.iter_mut().enumerate() {
            *v = b[j] + (0..dim).map(|k| w[j * dim + k] * x[k]).sum::<f32>();
        }
    }
    a
}

fn states(rows: usize, neurons: usize, dim: usize, seed: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(rows * words_for(neurons));
    // Generate in blocks to keep the float matrix small.
    let block = 1 << 16;
    let mut done = 0;
    while done < rows {
        let n = block.min(rows - done);
        pack_rows(
            activations(n, neurons, dim, seed + done as u64).view(),
            &mut out,
        );
        done += n;
    }
    out
}

fn packing(c: &mut Criterion) {
    let mut g = c.benchmark_group("pack");
    // One 64-image chunk of conv1 (20 channels, 24x24 positions) and of the dense layer.
    let conv1 = activations(64 * 576, 20, 8, 1);
    g.throughput(Throughput::Elements(conv1.nrows() as u64));
    g.bench_function("pack_rows_conv1_20_neurons_64_images", |b| {
        let mut out = Vec::with_capacity(conv1.nrows());
        b.iter(|| {
            out.clear();
            pack_rows(conv1.view(), &mut out);
            out.len()
        })
    });
    let dense = activations(10_000, 100, 16, 2);
    g.throughput(Throughput::Elements(dense.nrows() as u64));
    g.bench_function("pack_rows_dense_100_neurons_10000_images", |b| {
        let mut out = Vec::with_capacity(2 * dense.nrows());
        b.iter(|| {
            out.clear();
            pack_rows(dense.view(), &mut out);
            out.len()
        })
    });
    g.finish();
}

fn counting(c: &mut Criterion) {
    let mut g = c.benchmark_group("count");
    g.sample_size(20);
    let pool = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a thread pool")
    };
    let one = pool(1);
    for (name, rows, neurons, dim) in [
        (
            "count_conv1_5760000_states_20_neurons_1_thread",
            5_760_000,
            20,
            8,
        ),
        (
            "count_conv2_640000_states_50_neurons_1_thread",
            640_000,
            50,
            24,
        ),
        (
            "count_dense_10000_states_100_neurons_1_thread",
            10_000,
            100,
            16,
        ),
    ] {
        let s = states(rows, neurons, dim, 3);
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(name, |b| {
            b.iter_batched(
                || LayerCounter::new(neurons as u32),
                |mut counter| {
                    one.install(|| {
                        counter.add(&s);
                        counter.finish("layer", 1).counts.len()
                    })
                },
                BatchSize::LargeInput,
            )
        });
        // The same states as the states stream stores them (ceil(neurons / 8) bytes each),
        // counted straight from the bytes as count-states does.
        let nb = neurons.div_ceil(8);
        let w = words_for(neurons);
        let bytes: Vec<u8> = s
            .chunks_exact(w)
            .flat_map(|st| st.iter().flat_map(|x| x.to_le_bytes()).take(nb))
            .collect();
        // In 64-image chunks of the stream; sorted layers are sorted on every thread of the
        // pool once the stream ends.
        let count_bytes = |counter: &mut LayerCounter| {
            for chunk in bytes.chunks(64 * (rows / 10_000).max(1) * nb) {
                counter.add_bytes(chunk);
            }
        };
        g.bench_function(format!("{name}_from_bytes"), |b| {
            b.iter_batched(
                || LayerCounter::new(neurons as u32),
                |mut counter| {
                    one.install(|| {
                        count_bytes(&mut counter);
                        counter.finish("layer", 1).counts.len()
                    })
                },
                BatchSize::LargeInput,
            )
        });
        if neurons > 20 && rows > 10_000 {
            let two = pool(2);
            let name = name.replace("1_thread", "2_threads");
            g.bench_function(format!("{name}_from_bytes"), |b| {
                b.iter_batched(
                    || LayerCounter::new(neurons as u32),
                    |mut counter| {
                        two.install(|| {
                            count_bytes(&mut counter);
                            counter.finish("layer", 1).counts.len()
                        })
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

/// The counts stream of a conv2-like layer (640k states of 50 neurons): written as
/// `count-states` writes it, scored as `score-aiq` scores it (the header's count profile,
/// the records checked against the CRC-32) and read whole, every record decoded and checked,
/// as a merge reads it.
fn counts_stream(c: &mut Criterion) {
    use aiq_count::{write_counts, Counts, Measurement};
    let mut counter = LayerCounter::new(50);
    counter.add(&states(640_000, 50, 24, 4));
    let counts = Counts {
        measurement: Measurement::default(),
        layers: vec![counter.finish("conv2", 64)],
    };
    let mut bytes = Vec::new();
    write_counts(&mut bytes, &counts, "bench").expect("written to memory");
    let distinct = counts.layers[0].distinct();
    let mut g = c.benchmark_group("counts_stream");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function(
        format!("write_counts_conv2_{distinct}_distinct_states"),
        |b| {
            let mut out = Vec::with_capacity(bytes.len());
            b.iter(|| {
                out.clear();
                write_counts(&mut out, &counts, "bench").expect("written to memory");
                out.len()
            })
        },
    );
    g.bench_function(
        format!("score_counts_conv2_{distinct}_distinct_states"),
        |b| {
            b.iter(|| {
                let tool = aiq_io::Provenance::current("bench", "0");
                aiq_metrics::Scorecard::read(bytes.as_slice(), "bench", 2.0, None, tool)
                    .expect("a valid stream")
                    .network_efficiency
            })
        },
    );
    g.bench_function(
        format!("read_counts_conv2_{distinct}_distinct_states"),
        |b| {
            b.iter(|| {
                aiq_count::read_counts(&mut bytes.as_slice(), "bench")
                    .expect("a valid stream")
                    .layers[0]
                    .distinct()
            })
        },
    );
    g.finish();
}

/// A whole LeNet-5-like states stream (10k inputs: conv1 20 neurons × 576 positions, conv2
/// 50 × 64, dense 100), counted as `count-states` counts a pipe (chunks copied into reused
/// buffers) and as it counts a mapped file (chunks counted where they lie), on 2 threads.
fn states_stream(c: &mut Criterion) {
    use aiq_io::{Provenance, Source};
    use aiq_states::{LayerSpec, StatesHeader, StatesWriter};
    let inputs = 10_000usize;
    let layers = [
        ("conv1", 20, 576, 8),
        ("conv2", 50, 64, 24),
        ("dense3", 100, 1, 16),
    ];
    let all: Vec<Vec<u64>> = layers
        .iter()
        .map(|&(_, n, per, dim)| states(inputs * per, n, dim, 5))
        .collect();
    let header = StatesHeader {
        model: None,
        dataset: "mnist".into(),
        split: "test".into(),
        layers: layers
            .iter()
            .map(|&(name, neurons, per, _)| LayerSpec {
                name: name.into(),
                neurons: neurons as u32,
                states_per_input: per as u32,
            })
            .collect(),
        inputs: inputs as u64,
        chunk_inputs: 256,
        labels: vec![0; inputs],
        provenance: Provenance::current("bench", "0"),
    };
    let mut w = StatesWriter::new(Vec::new(), "bench", header).expect("a valid header");
    for first in (0..inputs).step_by(256) {
        let n = 256.min(inputs - first);
        let chunk: Vec<&[u64]> = layers
            .iter()
            .zip(&all)
            .map(|(&(_, neurons, per, _), s)| {
                let w = words_for(neurons);
                &s[first * per * w..(first + n) * per * w]
            })
            .collect();
        w.write_chunk(&vec![0; n], &chunk).expect("a valid chunk");
    }
    let bytes = w.finish().expect("a finished stream");
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a thread pool");
    let mut g = c.benchmark_group("count_states_stream");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("lenet5_like_10000_inputs_read_2_threads", |b| {
        b.iter(|| {
            two.install(|| aiq_count::read_any(Source::Reader(Box::new(bytes.as_slice())), "b"))
                .expect("a valid stream")
                .layers
                .len()
        })
    });
    g.bench_function("lenet5_like_10000_inputs_in_memory_2_threads", |b| {
        b.iter(|| {
            two.install(|| aiq_count::read_any(Source::Bytes(&bytes), "b"))
                .expect("a valid stream")
                .layers
                .len()
        })
    });
    g.finish();
}

fn entropy(c: &mut Criterion) {
    let s = states(640_000, 50, 24, 4);
    let mut counter = LayerCounter::new(50);
    counter.add(&s);
    let counts = counter.finish("conv2", 64).counts;
    c.bench_function(&format!("shannon_{}_distinct_states", counts.len()), |b| {
        b.iter(|| aiq_metrics::shannon_bits(&counts))
    });
}

criterion_group!(
    benches,
    packing,
    counting,
    entropy,
    counts_stream,
    states_stream
);
criterion_main!(benches);
