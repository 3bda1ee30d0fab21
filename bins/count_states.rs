//! `count-states`: exact counts of every layer's distinct states.
//!
//! Reads a states stream (`dump-states` output) or counts streams (merged: counts of shards
//! add up to the counts of the whole), or activation arrays exported from any framework as
//! `.npy`, and writes the counts stream that `score-aiq` reads.

use std::error::Error;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use aiq_count::{count_npy, read_any, write_counts_to, Counts, Measurement};
use aiq_io::{run_main, Input, Output, Provenance, StreamKind};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "count-states",
    version,
    about = "Count the distinct neuron states of every layer, exactly",
    long_about = "Count the distinct neuron states of every layer, exactly.\n\n\
        Reads a states stream (from dump-states) or one or more counts streams, which are \
        merged (counts of equal states add), and writes a counts stream for score-aiq. \
        With --npy, counts activations exported from any framework instead: one float32 .npy \
        array per layer, neurons along --channel-axis, every other index one observed state \
        (a conv output of N images and HxW positions gives N*H*W states).\n\n\
        Examples:\n  dump-states --model m.bin --data data/mnist | count-states -o m.counts\n  \
        count-states shard1.counts shard2.counts -o all.counts\n  \
        count-states --npy conv1.npy --npy conv2.npy --npy fc.npy -o ts.counts"
)]
struct Args {
    /// States or counts streams; `-` (the default) is standard input.
    #[arg(conflicts_with = "npy")]
    inputs: Vec<PathBuf>,
    /// A float32 .npy activation array to count as one layer (repeat, in layer order).
    #[arg(long, value_name = "FILE")]
    npy: Vec<PathBuf>,
    /// Neuron axis of the --npy arrays: once for all, or once per --npy (1 = NCHW or (N, F)).
    #[arg(long, value_name = "AXIS", default_values_t = [1usize])]
    channel_axis: Vec<usize>,
    /// Layer name of each --npy array, in order (default: the file name without extension).
    #[arg(long, value_name = "L")]
    name: Vec<String>,
    /// Output file; `-` or none is standard output (never a terminal).
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Worker threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    threads: Option<usize>,
}

fn npy_counts(args: &Args) -> Result<Counts, Box<dyn Error>> {
    let n = args.npy.len();
    let axes = &args.channel_axis;
    if axes.len() != 1 && axes.len() != n {
        return Err(format!(
            "{} --channel-axis values for {n} --npy arrays (give one, or one each)",
            axes.len()
        )
        .into());
    }
    if !args.name.is_empty() && args.name.len() != n {
        return Err(format!("{} --name values for {n} --npy arrays", args.name.len()).into());
    }
    let mut layers = Vec::with_capacity(n);
    for (i, path) in args.npy.iter().enumerate() {
        let name = match args.name.get(i) {
            Some(name) => name.clone(),
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("layer{i}")),
        };
        layers.push(count_npy(
            path,
            axes[if axes.len() == 1 { 0 } else { i }],
            &name,
        )?);
    }
    Ok(Counts {
        measurement: Measurement::default(),
        layers,
    })
}

fn main() {
    run_main("count-states", || {
        let args = Args::parse();
        if let Some(t) = args.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build_global()?;
        }
        // Open the output first: refusing a terminal should not wait for the counting.
        let mut out = Output::create(args.output.as_deref(), true)?;
        let mut closing = Vec::new();
        let mut counts = if args.npy.is_empty() {
            let inputs = if args.inputs.is_empty() {
                vec![PathBuf::from("-")]
            } else {
                args.inputs.clone()
            };
            let stdin_uses = inputs.iter().filter(|p| p.as_os_str() == "-").count();
            if stdin_uses > 1 {
                return Err("standard input (-) given more than once".into());
            }
            if stdin_uses == 1 && std::io::stdin().is_terminal() {
                return Err(
                    "<stdin> is a terminal: give a states or counts FILE, or pipe one in".into(),
                );
            }
            let mut total: Option<Counts> = None;
            for path in &inputs {
                let mut input = Input::open_mapped(Some(path), StreamKind::States)?;
                let name = input.name().to_string();
                let counts = read_any(input.source(), &name)?;
                // Unmapping a large states file takes milliseconds of page-table work: it
                // happens on another thread, beside the merging and the writing.
                closing.push(std::thread::spawn(move || drop(input)));
                match &mut total {
                    None => total = Some(counts),
                    Some(t) => t.merge(counts, &name)?,
                }
            }
            total.ok_or("no input")?
        } else {
            npy_counts(&args)?
        };
        counts.measurement.provenance.push(Provenance::current(
            "count-states",
            env!("CARGO_PKG_VERSION"),
        ));
        let name = out.name().to_string();
        write_counts_to(&mut out, &counts, &name)?;
        out.flush()?;
        out.commit()?;
        for c in closing {
            // Dropping an input cannot fail; a panic there would be a bug worth seeing.
            c.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        }
        Ok(())
    })
}
