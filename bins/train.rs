//! `train`: trains one of the paper's LeNets on MNIST (or Fashion-MNIST, EMNIST digits) on
//! the CPU and writes the model stream. The work lives in `aiq-train`; this parses
//! arguments, loads the data, shows progress and writes the outputs.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use aiq_data::DatasetKind;
use aiq_io::{run_main, Output};
use aiq_train::{describe, train, Arch, Modifier, Progress, TrainConfig};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Debug, Parser)]
#[command(
    name = "train",
    version,
    about = "Train the paper's LeNet-300-100 or LeNet-5 on the CPU and write the model",
    long_about = "Train the paper's LeNet-300-100 or LeNet-5 on the CPU and write the model.\n\n\
        The recipe is the paper's (Schaub & Hotaling 2023, section 3.1): ELU on every hidden \
        layer, He-normal kernels, L2 0.0005 on kernels and biases, softmax cross-entropy, SGD \
        with Nesterov momentum 0.9 and learning rate 0.001, mini-batches reshuffled every \
        epoch, and early stopping when the training accuracy has not beaten its best for \
        --patience epochs (the best epoch's weights are kept). The same --seed gives a \
        bit-identical model whatever --threads is.\n\n\
        The model (binary) goes to -o FILE, or to standard output with -o - or when standard \
        output is a pipe; never to a terminal. Nothing is written under the output name if \
        training fails (bad input, a non-finite loss).\n\n\
        Examples:\n  train --arch lenet5 --widths 3,9,4 --data data/mnist --log train.log -o model.bin\n  \
        train --describe --arch lenet300 --widths 128,1024"
)]
struct Args {
    /// Network family: lenet300 (dense N1, dense N2) or lenet5 (conv N1, conv N2, dense N3).
    #[arg(long)]
    arch: Arch,
    /// Hidden widths, comma-separated: N1,N2 for lenet300, N1,N2,N3 for lenet5; each 1..=4096.
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    widths: Vec<usize>,
    /// Layer after every hidden activation: none, batchnorm or dropout (rate 0.5).
    #[arg(long, default_value = "none")]
    modifier: Modifier,
    /// Fraction of training labels replaced by random ones before training, in [0, 1].
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    randomize_labels: f64,
    /// Seed of the initialization, shuffling, dropout masks and label randomization.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Directory holding the data set's IDX files (raw or .gz).
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    data: PathBuf,
    /// Data set: mnist, fashion or emnist-digits.
    #[arg(long, default_value = "mnist")]
    dataset: DatasetKind,
    /// Mini-batch size.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Most epochs to run.
    #[arg(long, default_value_t = 200)]
    max_epochs: usize,
    /// Stop after this many epochs without a new best training accuracy.
    #[arg(long, default_value_t = 5)]
    patience: usize,
    /// Worker threads (default: all cores). Does not change the result.
    #[arg(long)]
    threads: Option<usize>,
    /// Write one JSON line per epoch (epoch, seconds, loss, train_accuracy, test_accuracy,
    /// images_per_second, best) to FILE.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Model output; `-` is standard output (the default when it is not a terminal).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print the architecture as JSON (layers, exact parameter count) and train nothing.
    #[arg(long)]
    describe: bool,
}

fn main() {
    run_main("train", || {
        let args = Args::parse();
        let description = describe(args.arch, &args.widths, args.modifier)?;
        if args.describe {
            let mut out = Output::create(args.output.as_deref(), false)?;
            serde_json::to_writer_pretty(&mut out, &description)?;
            writeln!(out)?;
            out.commit()?;
            return Ok(());
        }
        // Open the outputs first: a bad path or a terminal fails before hours of training.
        let mut out = Output::create(args.output.as_deref(), true)?;
        let mut log = match &args.log {
            Some(p) => Some(Output::create(Some(p), false)?),
            None => None,
        };
        let data = aiq_data::load(&args.data, args.dataset)?;
        let cfg = TrainConfig {
            arch: args.arch,
            widths: args.widths.clone(),
            modifier: args.modifier,
            seed: args.seed,
            randomize_labels: args.randomize_labels,
            batch: args.batch,
            max_epochs: args.max_epochs,
            patience: args.patience,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(args.threads.unwrap_or(0))
            .build()?;
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")
                    .expect("progress template")
                    .progress_chars("=> "),
            );
            bar
        });
        let mut log_error = None;
        let result = pool.install(|| {
            train(&data, &cfg, &mut |p| match p {
                Progress::Batch { epoch, batch, batches, loss, accuracy, images_per_second } => {
                    if let Some(bar) = &bar {
                        bar.set_length(batches as u64);
                        bar.set_position(batch as u64);
                        bar.set_prefix(format!("epoch {epoch}"));
                        bar.set_message(format!(
                            "loss {loss:.4} acc {:.2}% {images_per_second:.0} img/s",
                            100.0 * accuracy
                        ));
                    }
                }
                Progress::Epoch(r) => {
                    if let Some(bar) = &bar {
                        bar.println(format!(
                            "epoch {:>3}: loss {:.4}  train {:.2}%  test {:.2}%  {:.1} s  {:.0} img/s{}",
                            r.epoch,
                            r.loss,
                            100.0 * r.train_accuracy,
                            100.0 * r.test_accuracy,
                            r.seconds,
                            r.images_per_second,
                            if r.best { "  *" } else { "" }
                        ));
                    }
                    if let Some(log) = &mut log {
                        let line = serde_json::to_string(r).expect("epoch report serializes");
                        if let Err(e) = writeln!(log, "{line}").and_then(|()| log.flush()) {
                            log_error.get_or_insert(e);
                        }
                    }
                }
            })
        });
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if let Some(e) = log_error {
            return Err(e.into());
        }
        // The log of a failed run is kept: it shows where the loss went.
        if let Some(log) = log {
            log.commit()?;
        }
        let model = result?;
        let name = out.name().to_string();
        model.write_to(&mut out, &name)?;
        out.commit()?;
        let m = model.meta();
        eprintln!(
            "train: {} {:?} {}: {} epochs, best {}: train {:.2}%, test {:.2}%, {} parameters",
            m.arch,
            m.widths,
            m.modifier,
            m.epochs,
            m.best_epoch,
            100.0 * m.train_accuracy,
            100.0 * m.test_accuracy,
            description.parameters
        );
        Ok(())
    })
}
