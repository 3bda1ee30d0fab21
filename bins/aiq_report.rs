//! `aiq-report`: aggregates a sweep's runs into the paper's tables and figures.
//!
//! Reads every `score*.json` (written by `score-aiq --json`) under the given run roots,
//! groups runs that differ only by seed, and writes into the output directory:
//! `summary.csv`, `summary.json` (mean and 95% Student-t interval per configuration),
//! `tables.md` (Tables 1–4, and Table 5: parameter statistics from each run's `train.log`
//! correlated with aIQ and test accuracy, also in `param_stats.csv`) and the Figure 1
//! heatmaps `fig1-*.png` / `fig1-*.svg`.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "aiq-report",
    version,
    about = "Aggregate sweep runs: means and 95% CIs across seeds, the paper's tables, heatmaps",
    long_about = "Aggregate sweep runs: means and 95% CIs across seeds, the paper's tables, heatmaps.\n\n\
    Every score*.json below RUNS (as written by `score-aiq --json`; score-emnist.json for the \
    EMNIST generalization test) is one run. Runs that differ only by seed are one \
    configuration; each metric is summarized as the mean and the half-width of the two-sided \
    95% Student-t interval (t(0.975, n-1) * sd / sqrt(n)). Accuracy and η are fractions in the \
    CSV/JSON; the Markdown tables print them in % and aIQ ×100, as in the paper.\n\n\
    Table 5 (tables.md, param_stats.csv, summary.json's param_stats_correlation): the \
    parameter statistics of the epoch each model kept, read from the train.log next to its \
    score.json (`train --log` lines with \"stats\"; older logs without them are skipped), \
    correlated across runs of one architecture with aIQ and test accuracy (Pearson r, \
    Spearman ρ).\n\n\
    Example: aiq-report runs/lenet300 -o reports/lenet300"
)]
struct Args {
    /// Run roots: directories searched recursively for score*.json, or single score files.
    #[arg(required = true, value_name = "RUNS")]
    roots: Vec<PathBuf>,
    /// Output directory (created if missing); every file in it is written atomically.
    #[arg(short, long, value_name = "DIR")]
    out: PathBuf,
    /// Skip the Figure 1 heatmaps (PNG and SVG).
    #[arg(long)]
    no_figures: bool,
    /// TrueType font for the PNG text (default: DejaVu Sans from fonts-dejavu-core).
    #[arg(long, value_name = "FILE")]
    font: Option<PathBuf>,
}

fn main() {
    aiq_io::run_main("aiq-report", || {
        let args = Args::parse();
        let provenance = aiq_io::Provenance::current("aiq-report", env!("CARGO_PKG_VERSION"));
        let config = aiq_report::Config {
            roots: args.roots,
            out_dir: args.out,
            figures: !args.no_figures,
            font: args.font,
        };
        let written = aiq_report::write_report(&config, &provenance)?;
        eprintln!(
            "aiq-report: {} runs in {} configurations; wrote {} files to {}",
            written.runs,
            written.groups,
            written.files.len(),
            config.out_dir.display()
        );
        Ok(())
    })
}
