//! `score-aiq`: entropy and efficiency per layer, network efficiency and aIQ.
//!
//! Reads a states stream (counted here, with the same code as `count-states`) or a counts
//! stream, told apart by the header, and prints a table or one JSON object.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use aiq_io::{run_main, Input, Output, Provenance, StreamKind};
use aiq_metrics::Scorecard;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "score-aiq",
    version,
    about = "Neural efficiency per layer, network efficiency and aIQ of a states or counts stream",
    long_about = "Neural efficiency per layer, network efficiency and aIQ of a states or counts stream.\n\n\
        Entropy is Shannon's, in bits, of the observed state distribution; a layer's efficiency \
        is entropy / neurons, with the ceiling log2(observations) / neurons that the sample \
        size allows; network efficiency is the geometric mean over layers; \
        aIQ = (P^beta * network efficiency)^(1/(beta+1)), P the accuracy measured with the \
        states (or --accuracy). The table prints aIQ x 100, as the paper's tables do.\n\n\
        Example:\n  train ... | dump-states --data data/mnist | score-aiq"
)]
struct Args {
    /// A states or counts stream; `-` or none is standard input.
    input: Option<PathBuf>,
    /// Weight of accuracy against efficiency (> 0).
    #[arg(long, default_value_t = 2.0)]
    beta: f64,
    /// Accuracy P in [0, 1] to use instead of the one measured with the states.
    #[arg(long, value_name = "P")]
    accuracy: Option<f64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Output file; `-` or none is standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Worker threads for counting a states stream (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    run_main("score-aiq", || {
        let args = Args::parse();
        if let Some(t) = args.threads {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build_global()?;
        }
        let from_stdin = args.input.as_ref().is_none_or(|p| p.as_os_str() == "-");
        if from_stdin && std::io::stdin().is_terminal() {
            return Err(
                "<stdin> is a terminal: give a states or counts FILE, or pipe one in".into(),
            );
        }
        let mut input = Input::open_mapped(args.input.as_deref(), StreamKind::States)?;
        let name = input.name().to_string();
        let tool = Provenance::current("score-aiq", env!("CARGO_PKG_VERSION"));
        let card = Scorecard::read(input.source(), &name, args.beta, args.accuracy, tool)?;
        let mut out = Output::create(args.output.as_deref(), false)?;
        if args.json {
            serde_json::to_writer(&mut out, &card)?;
            writeln!(out)?;
        } else {
            write!(out, "{card}")?;
        }
        out.flush()?;
        out.commit()?;
        Ok(())
    })
}
