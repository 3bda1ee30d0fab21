//! Sweep aggregation for the aiq pipeline.
//!
//! A sweep leaves one directory per run, each with a `score.json` written by
//! `score-aiq --json` (and `score-emnist.json` for the EMNIST test). This crate reads them
//! all, groups runs that differ only by seed, summarizes every metric as mean and half-width
//! of the 95% Student-t interval (the paper's "mean ± 95% CI of 11 replicates"), and writes:
//!
//! - `summary.csv` and `summary.json`: one entry per configuration (`summary.json` is written
//!   last, so its presence means a complete report);
//! - `tables.md`: the paper's Tables 1–4, and Table 5: which parameter statistics (from the
//!   runs' `train.log`, see [`paramstats`]) track aIQ and test accuracy;
//! - `param_stats.csv`: Table 5's correlations (also under `param_stats_correlation` in
//!   `summary.json`);
//! - `fig1-*.png` / `fig1-*.svg`: Figure 1's heatmaps over N1 × N2.
//!
//! ```
//! use aiq_report::stats::Summary;
//! // Two seeds with accuracies 0.5 and 0.7: mean 0.6, half-width t(0.975,1)·sd/√2.
//! let s = Summary::of(&[0.5, 0.7]).unwrap();
//! assert!((s.mean - 0.6).abs() < 1e-12);
//! assert!((s.ci95.unwrap() - 12.706204736 * 0.1).abs() < 1e-8);
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

pub mod aggregate;
pub mod figure;
pub mod paramstats;
pub mod runs;
pub mod stats;
pub mod tables;

/// Errors of the report; each names the file or configuration it is about.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: String, detail: String },
    #[error("no score*.json files under {roots}; run the sweep first (make sweep GRID=...)")]
    NoRuns { roots: String },
    #[error("runs of {group} disagree: {detail}")]
    Inconsistent { group: String, detail: String },
    #[error("{detail}")]
    Font { detail: String },
    #[error("rendering {what}: {detail}")]
    Render { what: String, detail: String },
    #[error(transparent)]
    Output(#[from] aiq_io::IoError),
}

impl ReportError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What to report on and where.
#[derive(Debug, Clone)]
pub struct Config {
    /// Run roots (directories searched for `score*.json`, or single score files).
    pub roots: Vec<PathBuf>,
    /// Output directory (created if missing).
    pub out_dir: PathBuf,
    /// Render the Figure 1 heatmaps.
    pub figures: bool,
    /// Font file for the PNG text; `None` looks in the usual places.
    pub font: Option<PathBuf>,
}

/// What [`write_report`] produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub runs: usize,
    pub groups: usize,
    pub files: Vec<PathBuf>,
}

/// Reads the runs, aggregates them and writes every report file (each atomically).
pub fn write_report(
    config: &Config,
    provenance: &aiq_io::Provenance,
) -> Result<Written, ReportError> {
    let runs = runs::load_runs(&config.roots)?;
    let groups = aggregate::aggregate(&runs)?;
    let correlations = paramstats::correlate(&paramstats::load(&runs)?);
    std::fs::create_dir_all(&config.out_dir).map_err(|e| ReportError::io(&config.out_dir, e))?;
    let stamp = format!(
        "produced by {} {}: {}",
        provenance.tool,
        provenance.version,
        provenance.args.join(" ")
    );
    let mut files = Vec::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), ReportError> {
        let path = config.out_dir.join(name);
        let mut out = aiq_io::Output::create(Some(&path), true)?;
        out.write_all(bytes)
            .map_err(|e| ReportError::io(&path, e))?;
        out.commit()?;
        files.push(path);
        Ok(())
    };
    put("summary.csv", aggregate::to_csv(&groups, &stamp).as_bytes())?;
    put(
        "summary.json",
        aggregate::to_json(&groups, &correlations, provenance).as_bytes(),
    )?;
    let md = format!(
        "<!-- {} -->\n# aIQ sweep report\n\n{} runs in {} configurations.\n\n{}{}",
        figure::xml_comment_safe(&stamp),
        runs.len(),
        groups.len(),
        tables::render_tables(&groups),
        paramstats::table5(&correlations)
    );
    put("tables.md", md.as_bytes())?;
    put(
        "param_stats.csv",
        paramstats::to_csv(&correlations, &stamp).as_bytes(),
    )?;
    if config.figures {
        let maps = figure::heatmaps(&groups);
        if !maps.is_empty() {
            figure::init_font(config.font.as_deref())?;
        }
        for map in &maps {
            put(&format!("{}.png", map.stem), &map.to_png(&stamp)?)?;
            put(&format!("{}.svg", map.stem), map.to_svg(&stamp)?.as_bytes())?;
        }
    }
    // Last, so that its presence means the whole report was written (make's target).
    put(
        "summary.json",
        aggregate::to_json(&groups, &correlations, provenance).as_bytes(),
    )?;
    Ok(Written {
        runs: runs.len(),
        groups: groups.len(),
        files,
    })
}
