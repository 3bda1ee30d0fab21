//! `dump-states`: runs a trained model over a data set and streams every hidden layer's
//! packed states (the `AIQSTATE` stream) for `count-states` or `score-aiq`.
//!
//! Images go through the model in fixed chunks, several chunks in parallel (rayon); each
//! layer's activations are packed into bits inside the tap, so the float activations of the
//! whole data set never exist at once, and chunks are written in input order as they
//! complete: the output is the same bytes (provenance aside) for any thread count.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex, PoisonError};

use aiq_data::{load_split_bytes, pixel, DatasetKind, SplitName};
use aiq_io::{run_main, Input, Output, Provenance};
use aiq_states::{pack_rows, LayerSpec, ModelIdentity, StatesHeader, StatesWriter};
use aiq_train::{Model, INPUT};
use clap::Parser;
use ndarray::ArrayView2;

#[derive(Debug, Parser)]
#[command(
    name = "dump-states",
    version,
    about = "Run a trained model over a data set and write every hidden layer's states",
    long_about = "Run a trained model over a data set and write every hidden layer's states.\n\n\
        A layer's state for one input is the on/off pattern of its neurons (on iff the \
        activation output is > 0). A dense layer gives one state per image, a conv layer one \
        per spatial position per image. States are taken at each hidden layer's activation \
        output, never at the output layer. The stream also records the model's identity, \
        the data set and split, every label and prediction, and the accuracy, for score-aiq.\n\n\
        The stream (binary) goes to -o FILE or standard output, never to a terminal.\n\n\
        Examples:\n  dump-states --model model.bin --data data/mnist -o states.bin\n  \
        train ... | dump-states --data data/mnist | score-aiq\n  \
        dump-states --model model.bin --data data/emnist --dataset emnist-digits | score-aiq"
)]
struct Args {
    /// The model stream (from train); `-` is standard input.
    #[arg(long, value_name = "FILE", default_value = "-")]
    model: PathBuf,
    /// Directory holding the data set's IDX files (raw or .gz).
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Data set to measure on (default: the one the model was trained on).
    #[arg(long, value_name = "KIND")]
    dataset: Option<DatasetKind>,
    /// Split to measure on: test or train.
    #[arg(long, default_value = "test")]
    split: SplitName,
    /// Output file; `-` or none is standard output (never a terminal).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Worker threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    threads: Option<usize>,
    /// Images per chunk. Fixed whatever the thread count, so the stream does not depend on
    /// it; it trades memory (a chunk's activations per thread) against per-call overhead.
    // 32 rather than 64: a LeNet-5 (20,…) chunk's first conv output (1.5 MB) stays in cache
    // for the pooling and the next layer; 2–8% faster in three A/B runs of 10k images.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    chunk_images: u32,
}

/// The model's identity as the states and counts headers carry it.
fn identity(model: &Model) -> ModelIdentity {
    let m = model.meta();
    ModelIdentity {
        arch: m.arch.to_string(),
        widths: m.widths.iter().map(|&w| w as u32).collect(),
        modifier: m.modifier.to_string(),
        seed: m.seed,
        randomize_labels: m.randomize_labels,
        dataset: m.dataset.to_string(),
        parameters: m.parameters as u64,
        epochs: m.epochs as u32,
        best_epoch: m.best_epoch as u32,
        train_accuracy: m.train_accuracy,
        test_accuracy: m.test_accuracy,
        provenance: m.provenance.clone(),
    }
}

/// Index of the largest logit, the first on ties (the model's own prediction rule).
fn argmax(row: impl IntoIterator<Item = f32>) -> u8 {
    let mut best = (0, f32::NEG_INFINITY);
    for (i, x) in row.into_iter().enumerate() {
        if x > best.1 {
            best = (i, x);
        }
    }
    best.0 as u8
}

/// A chunk's predictions and each hidden layer's packed states.
type Chunk = (Vec<u8>, Vec<Vec<u64>>);

/// One chunk through the model.
/// `pixels` are the chunk's image bytes, made floats here, a chunk at a time: the whole
/// split as floats would be 31 MB of fresh memory for MNIST's test set, filled on the main
/// thread before any work starts.
fn run_chunk(model: &Model, pixels: &[u8], layers: usize) -> Chunk {
    let floats: Vec<f32> = pixels.iter().map(|&b| pixel(b)).collect();
    let images =
        ArrayView2::from_shape((pixels.len() / INPUT, INPUT), &floats).expect("whole images");
    let mut packed = vec![Vec::new(); layers];
    let logits = model.forward_states(images, &mut |i, acts| pack_rows(acts, &mut packed[i]));
    let predictions = logits
        .rows()
        .into_iter()
        .map(|r| argmax(r.iter().copied()))
        .collect();
    (predictions, packed)
}

/// Waits until chunk `i` is fewer than `window` chunks ahead of the writer; false if the
/// writer has stopped.
fn wait_for_writer(progress: &(Mutex<(usize, bool)>, Condvar), i: usize, window: usize) -> bool {
    let (lock, signal) = progress;
    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
    while i >= state.0 + window && !state.1 {
        state = signal.wait(state).unwrap_or_else(PoisonError::into_inner);
    }
    !state.1
}

/// mimalloc keeps freed pages for the next allocation (see the workspace manifest).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    run_main("dump-states", || -> Result<(), Box<dyn Error>> {
        aiq_io::prefer_small_pages();
        let args = Args::parse();
        if let Some(t) = args.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build_global()?;
        }
        let mut out = Output::create(args.output.as_deref(), true)?;
        if args.model.as_os_str() == "-" && std::io::stdin().is_terminal() {
            return Err("<stdin> is a terminal: give --model FILE, or pipe a model in".into());
        }
        let (model_name, mut model_reader) = Input::open(Some(&args.model))?.into_parts();
        let model = Model::read_from(&mut model_reader, &model_name)?;
        let dataset = args.dataset.unwrap_or(model.meta().dataset);
        let split = load_split_bytes(&args.data, dataset, args.split)?;
        if split.rows * split.cols != INPUT {
            return Err(format!(
                "{}: {dataset} images are {}x{} pixels; the model takes 28x28",
                args.data.display(),
                split.rows,
                split.cols
            )
            .into());
        }
        let hidden = model.hidden_layers();
        let layers = hidden
            .iter()
            .map(|l| {
                Ok(LayerSpec {
                    name: l.name.clone(),
                    neurons: u32::try_from(l.neurons)?,
                    states_per_input: u32::try_from(l.states_per_input)?,
                })
            })
            .collect::<Result<Vec<_>, std::num::TryFromIntError>>()?;
        let n = split.labels.len();
        let header = StatesHeader {
            model: Some(identity(&model)),
            dataset: dataset.to_string(),
            split: args.split.to_string(),
            layers,
            inputs: n as u64,
            chunk_inputs: args.chunk_images,
            labels: split.labels.clone(),
            provenance: Provenance::current("dump-states", env!("CARGO_PKG_VERSION")),
        };
        let name = out.name().to_string();
        let mut writer = StatesWriter::new(&mut out, &name, header)?;
        let chunk = args.chunk_images as usize;
        let chunks = n.div_ceil(chunk);
        // Each pool thread takes the next chunk as soon as it is done with one, and this
        // thread writes the chunks in order as they arrive: no thread waits for a group's
        // slowest chunk. A thread starts chunk `i` only once fewer than `window` chunks lie
        // between it and the writer, so computed-but-unwritten chunks stay few whatever
        // the timing.
        let threads = rayon::current_num_threads();
        let window = 2 * threads;
        let next = AtomicUsize::new(0);
        // Chunks written so far, and whether the writer has stopped; signalled on change.
        let progress = (Mutex::new((0usize, false)), Condvar::new());
        let (done, arrived) = mpsc::channel::<(usize, Chunk)>();
        let compute = || {
            rayon::scope(|s| {
                for _ in 0..threads {
                    let done = done.clone();
                    let (next, progress) = (&next, &progress);
                    let (model, split, layers) = (&model, &split, hidden.len());
                    s.spawn(move |_| loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= chunks || !wait_for_writer(progress, i, window) {
                            break;
                        }
                        let images = i * chunk * INPUT..((i + 1) * chunk).min(n) * INPUT;
                        let out = run_chunk(model, &split.pixels[images], layers);
                        if done.send((i, out)).is_err() {
                            break;
                        }
                    });
                }
            });
            drop(done);
        };
        let written = std::thread::scope(|scope| {
            scope.spawn(compute);
            let mut write = || -> Result<(), aiq_io::IoError> {
                let mut waiting = BTreeMap::new();
                let mut want = 0;
                for (i, c) in &arrived {
                    waiting.insert(i, c);
                    while let Some((predictions, packed)) = waiting.remove(&want) {
                        let refs: Vec<&[u64]> = packed.iter().map(Vec::as_slice).collect();
                        writer.write_chunk(&predictions, &refs)?;
                        want += 1;
                        let (lock, signal) = &progress;
                        lock.lock().unwrap_or_else(PoisonError::into_inner).0 = want;
                        signal.notify_all();
                    }
                }
                Ok(())
            };
            let result = write();
            // On an error, the threads waiting for room stop (and so does the pool).
            let (lock, signal) = &progress;
            lock.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
            signal.notify_all();
            drop(arrived);
            result
        });
        written?;
        writer.finish()?;
        out.flush()?;
        out.commit()?;
        Ok(())
    })
}
