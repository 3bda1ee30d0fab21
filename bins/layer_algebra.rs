//! `layer-algebra`: data-independent complexity and intrinsic power of an architecture
//! (the layer algebra of Badias & Banerjee), per layer and globally. See `aiq_algebra`.

use std::io::Write;
use std::path::PathBuf;

use aiq_algebra::{parse_widths, Analysis, Arch, Modifier};
use aiq_io::{Output, Provenance};
use clap::Parser;
use serde::Serialize;

/// Layer algebra of a LeNet: each layer's local complexity c and intrinsic power p, their
/// cumulative values along the network, and the globals GCC, GCIP, GSC (sum of c) and
/// GWC = GCC·GSC. Needs no data or training: the values depend on the architecture only.
#[derive(Debug, Parser)]
#[command(name = "layer-algebra", version)]
struct Args {
    /// Architecture: lenet300 (widths N1,N2) or lenet5 (widths N1,N2,N3).
    #[arg(long, value_name = "A")]
    arch: String,
    /// Hidden widths, comma-separated, each 1..=4096 (e.g. 3,9,4).
    #[arg(long, value_name = "W")]
    widths: String,
    /// Layer after every hidden activation: none, batchnorm or dropout (they change nothing
    /// in the algebra but appear as rows).
    #[arg(long, value_name = "M", default_value = "none")]
    modifier: String,
    /// Print JSON: {"layers":[{name, kind, output_shape, complexity, intrinsic_power,
    /// cumulative_complexity, cumulative_intrinsic_power}], "gcc", "gcip", "gsc", "gwc", ...}.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print a Markdown table (for the README).
    #[arg(long)]
    markdown: bool,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The JSON document: the analysis plus what it is of and what produced it.
#[derive(Serialize)]
struct Report<'a> {
    arch: &'static str,
    widths: &'a [usize],
    modifier: &'static str,
    #[serde(flatten)]
    analysis: &'a Analysis,
    provenance: Provenance,
}

fn main() {
    let args = Args::parse();
    aiq_io::run_main("layer-algebra", || {
        let arch: Arch = args.arch.parse()?;
        let modifier: Modifier = args.modifier.parse()?;
        let widths = parse_widths(&args.widths)?;
        let analysis = arch.graph(&widths, modifier)?.analyze();
        let mut out = Output::create(args.output.as_deref(), false)?;
        if args.json {
            let report = Report {
                arch: arch.name(),
                widths: &widths,
                modifier: modifier.name(),
                analysis: &analysis,
                provenance: Provenance::current("layer-algebra", env!("CARGO_PKG_VERSION")),
            };
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        } else {
            let body = if args.markdown {
                analysis.to_markdown()
            } else {
                analysis.to_table()
            };
            write!(out, "{body}")?;
        }
        out.commit()?;
        Ok(())
    })
}
