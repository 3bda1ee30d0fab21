//! Table 5: which parameter statistics track aIQ and test accuracy across a sweep.
//!
//! `train --log` writes one JSON line per epoch; with the statistics of `aiq-paramstats` each
//! line carries `"stats": [LayerStats, ...]`, one entry per weighted layer in network order.
//! For every run the report takes the line of the epoch whose weights the model kept (the last
//! line with `"best": true`, else the last line), turns it into named statistics — per layer
//! (`dense1.weights.variance`, `conv1.gradients.below_threshold`, `dense1.never_fire`, ...)
//! and for the whole network (`network.parameters` summed, every other statistic averaged over
//! the layers) — and correlates each, across the runs of one architecture, with the run's aIQ
//! and test accuracy (Pearson's r and Spearman's ρ, per run rather than per configuration
//! mean, as a sweep's seeds are the spread the statistics should explain).
//!
//! Only runs measured on their own data set's test split take part (`score.json`; the EMNIST
//! measurement of the same model would count its statistics twice). Logs without statistics
//! (written before `train` had them) leave their run out; a run dir without `train.log` too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use aiq_paramstats::{pearson, spearman, LayerStats};
use serde::{Deserialize, Serialize};

use crate::runs::Run;
use crate::tables::arch_name;
use crate::ReportError;

/// How much of a `train.log` is read before it is refused: a log has one line per epoch
/// (`--max-epochs`, 200 in the paper), a line a few kilobytes even for LeNet-5's statistics.
#[derive(Debug, Clone, Copy)]
struct Limits {
    lines: usize,
    line_bytes: usize,
}

const LIMITS: Limits = Limits {
    lines: 100_000,
    line_bytes: 1 << 20,
};

/// Fewer runs than this give no correlation (with two, every r is ±1).
pub const MIN_RUNS: usize = 3;

/// The statistics of one run that the correlations use.
#[derive(Debug, Clone, PartialEq)]
pub struct RunStats {
    pub arch: String,
    pub aiq: f64,
    pub accuracy: f64,
    /// The kept epoch's statistics, `None` when the log has none.
    pub layers: Option<Vec<LayerStats>>,
}

/// One statistic's correlations with aIQ and test accuracy over `n` runs (`None` when fewer
/// than [`MIN_RUNS`] runs have it or either series is constant).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Correlation {
    pub statistic: String,
    pub n: usize,
    pub pearson_aiq: Option<f64>,
    pub spearman_aiq: Option<f64>,
    pub pearson_accuracy: Option<f64>,
    pub spearman_accuracy: Option<f64>,
}

/// The correlations of one architecture, sorted by |Spearman with test accuracy|, largest
/// first (undefined last, ties in network order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchCorrelations {
    pub arch: String,
    /// Runs of this architecture measured on their own test split.
    pub runs: usize,
    /// Of those, the runs whose `train.log` carries statistics.
    pub runs_with_stats: usize,
    pub statistics: Vec<Correlation>,
}

/// The statistics of every primary run (see the module doc), reading each run's `train.log`
/// next to its score file.
pub fn load(runs: &[Run]) -> Result<Vec<RunStats>, ReportError> {
    runs.iter()
        .filter(|r| r.score.is_primary())
        .map(|r| {
            let log = r
                .path
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("train.log");
            Ok(RunStats {
                arch: r.score.model.arch.clone(),
                aiq: r.score.aiq,
                accuracy: r.score.accuracy,
                layers: read_kept_stats(&log)?,
            })
        })
        .collect()
}

/// The statistics of the kept epoch of a `train --log` file: `None` when the file is missing
/// or its kept line has no (or an empty) `"stats"`.
pub fn read_kept_stats(path: &Path) -> Result<Option<Vec<LayerStats>>, ReportError> {
    read_kept_stats_with(path, LIMITS)
}

fn read_kept_stats_with(
    path: &Path,
    limits: Limits,
) -> Result<Option<Vec<LayerStats>>, ReportError> {
    #[derive(Deserialize)]
    struct Line {
        #[serde(default)]
        best: bool,
        /// Absent or `null` in logs from before `train` recorded statistics.
        #[serde(default)]
        stats: Option<serde_json::Value>,
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReportError::io(path, e)),
    };
    let parse_error = |line: usize, detail: String| ReportError::Parse {
        path: format!("{}:{line}", path.display()),
        detail,
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let (mut kept_best, mut last) = (None, None);
    let mut number = 0;
    loop {
        buf.clear();
        (&mut reader)
            .take(limits.line_bytes as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| ReportError::io(path, e))?;
        if buf.is_empty() {
            break;
        }
        number += 1;
        if buf.len() > limits.line_bytes {
            return Err(parse_error(
                number,
                format!(
                    "line longer than {} bytes; expected one `train --log` JSON line per epoch",
                    limits.line_bytes
                ),
            ));
        }
        if number > limits.lines {
            return Err(parse_error(
                number,
                format!(
                    "more than {} lines; expected one `train --log` line per epoch",
                    limits.lines
                ),
            ));
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Line = serde_json::from_slice(&buf).map_err(|e| {
            parse_error(
                number,
                format!("expected a `train --log` JSON object per line: {e}"),
            )
        })?;
        if line.best {
            kept_best = Some((number, line.stats.clone()));
        }
        last = Some((number, line.stats));
    }
    let Some((number, Some(stats))) = kept_best.or(last) else {
        return Ok(None);
    };
    let layers: Vec<LayerStats> = serde_json::from_value(stats).map_err(|e| {
        parse_error(
            number,
            format!("expected \"stats\" to be a list of per-layer statistics: {e}"),
        )
    })?;
    Ok((!layers.is_empty()).then_some(layers))
}

/// One layer's statistics as `(suffix, value)`: its parameters; the variance, largest
/// magnitude and fraction below threshold of its weights, activations and gradients; the
/// fraction of its neurons that never fire.
fn layer_values(l: &LayerStats) -> Vec<(String, f64)> {
    let mut out = vec![("parameters".to_string(), l.parameters as f64)];
    let parts = [
        ("weights", &l.weights),
        ("activations", &l.activations),
        ("gradients", &l.gradients),
    ];
    for (part, s) in parts {
        out.push((format!("{part}.variance"), s.variance));
        out.push((format!("{part}.max_abs"), s.max_abs));
        out.push((format!("{part}.below_threshold"), s.below_threshold));
    }
    out.push(("never_fire".to_string(), l.never_fire));
    out
}

/// Named statistics of one run: per layer in network order, then `network.*` (parameters
/// summed, every other statistic the mean over the layers).
pub fn features(layers: &[LayerStats]) -> Vec<(String, f64)> {
    let per: Vec<Vec<(String, f64)>> = layers.iter().map(layer_values).collect();
    let mut out: Vec<(String, f64)> = layers
        .iter()
        .zip(&per)
        .flat_map(|(l, values)| {
            values
                .iter()
                .map(move |(k, v)| (format!("{}.{k}", l.name), *v))
        })
        .collect();
    if let Some(first) = per.first() {
        for (j, (k, _)) in first.iter().enumerate() {
            let total: f64 = per.iter().map(|values| values[j].1).sum();
            let value = if k == "parameters" {
                total
            } else {
                total / per.len() as f64
            };
            out.push((format!("network.{k}"), value));
        }
    }
    out
}

/// Correlations per architecture (architectures in paper order), over the runs that have
/// statistics.
pub fn correlate(runs: &[RunStats]) -> Vec<ArchCorrelations> {
    let mut arches: Vec<&str> = runs.iter().map(|r| r.arch.as_str()).collect();
    arches.sort_by_key(|a| (*a != "lenet300", *a != "lenet5", a.to_string()));
    arches.dedup();
    arches
        .into_iter()
        .map(|arch| {
            let of_arch: Vec<&RunStats> = runs.iter().filter(|r| r.arch == arch).collect();
            // Statistic → (value, aIQ, accuracy) per run, in first-seen order.
            let mut order: Vec<String> = Vec::new();
            let mut series: BTreeMap<String, Vec<(f64, f64, f64)>> = BTreeMap::new();
            let mut with_stats = 0;
            for r in &of_arch {
                let Some(layers) = &r.layers else { continue };
                with_stats += 1;
                for (name, value) in features(layers) {
                    if !value.is_finite() {
                        continue;
                    }
                    let s = series.entry(name.clone()).or_insert_with(|| {
                        order.push(name);
                        Vec::new()
                    });
                    s.push((value, r.aiq, r.accuracy));
                }
            }
            let mut statistics: Vec<Correlation> = order
                .into_iter()
                .map(|name| {
                    let s = &series[&name];
                    let x: Vec<f64> = s.iter().map(|p| p.0).collect();
                    let aiq: Vec<f64> = s.iter().map(|p| p.1).collect();
                    let acc: Vec<f64> = s.iter().map(|p| p.2).collect();
                    let enough = x.len() >= MIN_RUNS;
                    let corr = |f: fn(&[f64], &[f64]) -> Option<f64>, y: &[f64]| {
                        enough.then(|| f(&x, y)).flatten()
                    };
                    Correlation {
                        n: x.len(),
                        pearson_aiq: corr(pearson, &aiq),
                        spearman_aiq: corr(spearman, &aiq),
                        pearson_accuracy: corr(pearson, &acc),
                        spearman_accuracy: corr(spearman, &acc),
                        statistic: name,
                    }
                })
                .collect();
            // Stable: equal magnitudes keep network order; undefined last.
            statistics.sort_by(|a, b| {
                let key = |c: &Correlation| c.spearman_accuracy.map_or(-1.0, f64::abs);
                key(b).total_cmp(&key(a))
            });
            ArchCorrelations {
                arch: arch.to_string(),
                runs: of_arch.len(),
                runs_with_stats: with_stats,
                statistics,
            }
        })
        .collect()
}

fn fmt_corr(c: Option<f64>) -> String {
    c.map_or("–".to_string(), |v| format!("{v:.3}"))
}

/// Table 5 as Markdown: one table per architecture.
pub fn table5(arches: &[ArchCorrelations]) -> String {
    let mut out = String::from(
        "## Table 5. Parameter statistics vs aIQ and test accuracy (Pearson r, Spearman ρ, n runs)\n\n",
    );
    let mut any = false;
    for a in arches.iter().filter(|a| a.runs_with_stats > 0) {
        any = true;
        let _ = writeln!(
            out,
            "**{}** ({} of {} runs with statistics)\n",
            arch_name(&a.arch),
            a.runs_with_stats,
            a.runs
        );
        out.push_str("| Statistic | n | r (aIQ) | ρ (aIQ) | r (test acc.) | ρ (test acc.) |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for c in &a.statistics {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                c.statistic,
                c.n,
                fmt_corr(c.pearson_aiq),
                fmt_corr(c.spearman_aiq),
                fmt_corr(c.pearson_accuracy),
                fmt_corr(c.spearman_accuracy)
            );
        }
        out.push('\n');
    }
    if any {
        let _ = writeln!(
            out,
            "Statistics of the epoch whose weights each model kept (its `train.log`), correlated \
             across runs (not configuration means) with the run's aIQ and test accuracy; sorted \
             by |ρ with test accuracy|. `variance` is the population variance, `max_abs` the \
             largest magnitude, `below_threshold` the fraction with |x| < 1e-3 (aiq-paramstats' \
             default), `never_fire` the fraction of neurons with no output > 0 in the epoch; \
             `network.parameters` is the total, other `network.*` the mean over layers. \
             – : fewer than {MIN_RUNS} runs or a constant series.\n"
        );
    } else {
        out.push_str(
            "No parameter statistics: the runs' train.log lines carry no \"stats\" (logs from \
             before `train` recorded them).\n\n",
        );
    }
    out
}

/// The correlations as CSV, one row per architecture and statistic (empty cells where
/// undefined), after a `#` line recording what produced the file.
pub fn to_csv(arches: &[ArchCorrelations], provenance: &str) -> String {
    let mut out = format!("# {provenance}\n");
    out.push_str("arch,statistic,n,pearson_aiq,spearman_aiq,pearson_accuracy,spearman_accuracy\n");
    let v = |c: Option<f64>| c.map_or(String::new(), |v| v.to_string());
    for a in arches {
        for c in &a.statistics {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{}",
                a.arch,
                c.statistic,
                c.n,
                v(c.pearson_aiq),
                v(c.spearman_aiq),
                v(c.pearson_accuracy),
                v(c.spearman_accuracy)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aiq_paramstats::Summary;

    fn summary(variance: f64, max_abs: f64, below: f64) -> Summary {
        Summary {
            count: 10,
            mean: 0.0,
            variance,
            max_abs,
            below_threshold: below,
        }
    }

    fn layer(name: &str, parameters: usize, v: f64, never_fire: f64) -> LayerStats {
        LayerStats {
            name: name.into(),
            parameters,
            weights: summary(v, 1.0, 0.5),
            activations: summary(2.0, v * v * v, 0.25),
            gradients: summary(3.0, 1.0, 0.0),
            never_fire,
        }
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    /// Four LeNet-300-100 runs i = 1..4 with aIQ = i/10 and test accuracy 0.6, 0.8, 0.7, 0.9
    /// (ranks 1, 3, 2, 4); dense1's weight variance is i, its activations' max |x| is i³, its
    /// never-firing fraction 1 − accuracy, its parameters 100·i; dense2 and output are
    /// constant. Plus one run without statistics and one LeNet-5 run.
    fn sample() -> Vec<RunStats> {
        let acc = [0.6, 0.8, 0.7, 0.9];
        let mut runs: Vec<RunStats> = (1..=4)
            .map(|i| {
                let x = i as f64;
                RunStats {
                    arch: "lenet300".into(),
                    aiq: x / 10.0,
                    accuracy: acc[i - 1],
                    layers: Some(vec![
                        layer("dense1", 100 * i, x, 1.0 - acc[i - 1]),
                        layer("dense2", 10, 0.0, 0.0),
                        layer("output", 1010, 0.0, 0.0),
                    ]),
                }
            })
            .collect();
        runs.push(RunStats {
            arch: "lenet300".into(),
            aiq: 0.9,
            accuracy: 0.1,
            layers: None,
        });
        runs.insert(
            0,
            RunStats {
                arch: "lenet5".into(),
                aiq: 0.5,
                accuracy: 0.5,
                layers: Some(vec![layer("conv1", 5, 1.0, 0.0)]),
            },
        );
        runs
    }

    fn find<'a>(a: &'a ArchCorrelations, name: &str) -> &'a Correlation {
        a.statistics
            .iter()
            .find(|c| c.statistic == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    }

    #[test]
    fn features_per_layer_then_network() {
        let f = features(&[
            layer("dense1", 100, 2.0, 0.5),
            layer("output", 30, 4.0, 0.0),
        ]);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).unwrap().1;
        // 3 parts × 3 measures + parameters + never_fire = 11 per layer and for the network.
        assert_eq!(f.len(), 33);
        assert_eq!(f[0].0, "dense1.parameters");
        assert_eq!(f[11].0, "output.parameters");
        assert_eq!(f[22].0, "network.parameters");
        assert_eq!(get("network.parameters"), 130.0); // 100 + 30
        assert_eq!(get("network.weights.variance"), 3.0); // (2 + 4) / 2
        assert_eq!(get("network.activations.max_abs"), 36.0); // (8 + 64) / 2
        assert_eq!(get("network.never_fire"), 0.25); // (0.5 + 0) / 2
        assert_eq!(get("dense1.gradients.variance"), 3.0);
        assert_eq!(get("output.activations.below_threshold"), 0.25);
    }

    #[test]
    fn correlations_by_hand() {
        let all = correlate(&sample());
        assert_eq!(all.len(), 2);
        let a = &all[0];
        assert_eq!(
            (a.arch.as_str(), a.runs, a.runs_with_stats),
            ("lenet300", 5, 4)
        );
        // dense1 weight variance = i = 10·aIQ: r = ρ = 1 with aIQ. With accuracy (ranks
        // 1,3,2,4 against 1,2,3,4): deviations (−1.5,−.5,.5,1.5) and (−1.5,.5,−.5,1.5),
        // sxy = 2.25 − .25 − .25 + 2.25 = 4, sxx = syy = 5, r = 0.8; the values are their
        // own ranks, so ρ = 0.8 too.
        let c = find(a, "dense1.weights.variance");
        assert_eq!(c.n, 4);
        assert!(
            close(c.pearson_aiq, 1.0) && close(c.spearman_aiq, 1.0),
            "{c:?}"
        );
        assert!(close(c.pearson_accuracy, 0.8), "{c:?}");
        assert!(close(c.spearman_accuracy, 0.8), "{c:?}");
        // never_fire = 1 − accuracy: r = ρ = −1 with accuracy, −0.8 with aIQ; the network
        // mean (never_fire / 3) is a linear function of it, so the same.
        for name in ["dense1.never_fire", "network.never_fire"] {
            let c = find(a, name);
            assert!(close(c.pearson_accuracy, -1.0) && close(c.spearman_accuracy, -1.0));
            assert!(
                close(c.pearson_aiq, -0.8) && close(c.spearman_aiq, -0.8),
                "{c:?}"
            );
        }
        // max |activation| = i³ = 1, 8, 27, 64 against i: y deviations from 25 are
        // −24, −17, 2, 39; sxy = 36 + 8.5 + 1 + 58.5 = 104, sxx = 5,
        // syy = 576 + 289 + 4 + 1521 = 2390, r = 104 / √11950; monotone, so ρ = 1.
        let c = find(a, "dense1.activations.max_abs");
        assert!(close(c.pearson_aiq, 104.0 / 11950f64.sqrt()), "{c:?}");
        assert!(close(c.spearman_aiq, 1.0));
        // Total parameters 100·i + 1020: r = 1 with aIQ.
        assert!(close(find(a, "network.parameters").pearson_aiq, 1.0));
        // Constant series have no correlation.
        let c = find(a, "output.parameters");
        assert_eq!((c.n, c.pearson_aiq, c.spearman_accuracy), (4, None, None));
        // Sorted by |ρ with accuracy|: the two −1 rows first in network order, undefined last.
        assert_eq!(a.statistics[0].statistic, "dense1.never_fire");
        assert_eq!(a.statistics[1].statistic, "network.never_fire");
        assert!(close(a.statistics[2].spearman_accuracy, 0.8));
        assert_eq!(a.statistics.last().unwrap().spearman_accuracy, None);
        // LeNet-5 has one run: its own table, no correlation (and never mixed into LeNet-300).
        let b = &all[1];
        assert_eq!(
            (b.arch.as_str(), b.runs, b.runs_with_stats),
            ("lenet5", 1, 1)
        );
        assert!(b.statistics.iter().all(|c| c.pearson_aiq.is_none()));
        assert!(a
            .statistics
            .iter()
            .all(|c| !c.statistic.starts_with("conv1")));
    }

    #[test]
    fn table_csv_and_json_forms() {
        let all = correlate(&sample());
        let md = table5(&all);
        assert!(md.starts_with(
            "## Table 5. Parameter statistics vs aIQ and test accuracy (Pearson r, Spearman ρ, n runs)"
        ));
        assert!(
            md.contains("**LeNet-300-100** (4 of 5 runs with statistics)"),
            "{md}"
        );
        assert!(
            md.contains("**LeNet-5** (1 of 1 runs with statistics)"),
            "{md}"
        );
        assert!(
            md.contains("| dense1.never_fire | 4 | -0.800 | -0.800 | -1.000 | -1.000 |"),
            "{md}"
        );
        assert!(
            md.contains("| dense1.weights.variance | 4 | 1.000 | 1.000 | 0.800 | 0.800 |"),
            "{md}"
        );
        assert!(
            md.contains("| output.parameters | 4 | – | – | – | – |"),
            "{md}"
        );
        let csv = to_csv(&all, "test");
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("# test"));
        assert_eq!(
            lines.next(),
            Some("arch,statistic,n,pearson_aiq,spearman_aiq,pearson_accuracy,spearman_accuracy")
        );
        assert!(
            csv.contains("\nlenet300,output.parameters,4,,,,\n"),
            "{csv}"
        );
        // 11 statistics for each of 3 layers + network, and of 1 layer + network.
        assert_eq!(csv.lines().count(), 2 + 44 + 22);
        let json = serde_json::to_value(&all).unwrap();
        assert_eq!(json[0]["statistics"][0]["statistic"], "dense1.never_fire");
        assert!(json[0]["statistics"][43]["spearman_accuracy"].is_null());

        let none = table5(&correlate(&[RunStats {
            arch: "lenet300".into(),
            aiq: 0.5,
            accuracy: 0.5,
            layers: None,
        }]));
        assert!(none.contains("No parameter statistics"), "{none}");
    }

    fn stats_json(v: f64) -> String {
        serde_json::to_string(&vec![
            layer("dense1", 7, v, 0.5),
            layer("output", 3, v, 0.0),
        ])
        .unwrap()
    }

    #[test]
    fn reads_the_kept_epoch_of_a_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("train.log");
        // Epochs 1 and 2 improve, 3 does not: the model kept epoch 2's weights.
        let lines: Vec<String> = [(1, true), (2, true), (3, false)]
            .iter()
            .map(|(e, best)| {
                format!(
                    r#"{{"epoch":{e},"loss":0.5,"train_accuracy":0.9,"best":{best},"stats":{}}}"#,
                    stats_json(*e as f64)
                )
            })
            .collect();
        std::fs::write(&log, lines.join("\n") + "\n\n").unwrap();
        let kept = read_kept_stats(&log).unwrap().unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!((kept[0].name.as_str(), kept[0].parameters), ("dense1", 7));
        assert_eq!(kept[0].weights.variance, 2.0);
        // No "best": true anywhere: the last line.
        std::fs::write(&log, lines[2].replace("true", "false")).unwrap();
        assert_eq!(
            read_kept_stats(&log).unwrap().unwrap()[0].weights.variance,
            3.0
        );
        // An older log without statistics, and no log at all: nothing, not an error.
        std::fs::write(
            &log,
            "{\"epoch\":1,\"best\":true}\n{\"epoch\":2,\"best\":false}\n",
        )
        .unwrap();
        assert_eq!(read_kept_stats(&log).unwrap(), None);
        assert_eq!(read_kept_stats(&dir.path().join("none.log")).unwrap(), None);
        // The kept line lacks statistics even if another has them.
        std::fs::write(
            &log,
            format!("{}\n{{\"epoch\":2,\"best\":true}}\n", lines[0]),
        )
        .unwrap();
        assert_eq!(read_kept_stats(&log).unwrap(), None);
    }

    #[test]
    fn loads_the_log_next_to_each_primary_score() {
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("lenet300-2-2/none/r0/seed1");
        let without = dir.path().join("lenet300-2-2/none/r0/seed2");
        for (run, seed) in [(&with, 1), (&without, 2)] {
            std::fs::create_dir_all(run).unwrap();
            let score = crate::runs::tests::score_json(&[2, 2], seed, 0.5);
            std::fs::write(run.join("score.json"), &score).unwrap();
            // The EMNIST measurement of the same model: not a second sample of its statistics.
            let emnist = score.replace(
                r#""dataset":"mnist","split""#,
                r#""dataset":"emnist-digits","split""#,
            );
            assert_ne!(emnist, score);
            std::fs::write(run.join("score-emnist.json"), emnist).unwrap();
        }
        std::fs::write(
            with.join("train.log"),
            format!("{{\"best\":true,\"stats\":{}}}\n", stats_json(4.0)),
        )
        .unwrap();
        std::fs::write(without.join("train.log"), "{\"best\":true}\n").unwrap();
        let runs = crate::runs::load_runs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(runs.len(), 4);
        let stats = load(&runs).unwrap();
        assert_eq!(stats.len(), 2);
        assert_eq!((stats[0].aiq, stats[0].accuracy), (0.6, 0.5));
        assert_eq!(stats[0].layers.as_ref().unwrap()[0].weights.variance, 4.0);
        assert_eq!(stats[1].layers, None);
    }

    #[test]
    fn bad_logs_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("train.log");
        let err = |text: &str, limits: Limits| {
            std::fs::write(&log, text).unwrap();
            read_kept_stats_with(&log, limits).unwrap_err().to_string()
        };
        let e = err("{\"best\":true}\nnot json\n", LIMITS);
        assert!(
            e.contains("train.log:2") && e.contains("JSON object"),
            "{e}"
        );
        let e = err("{\"best\":true,\"stats\":[{\"name\":\"d\"}]}\n", LIMITS);
        assert!(e.contains("train.log:1") && e.contains("\"stats\""), "{e}");
        let small = Limits {
            lines: 2,
            line_bytes: 16,
        };
        let e = err("{\"best\":true,\"epoch\":1}\n", small);
        assert!(
            e.contains("train.log:1") && e.contains("longer than 16 bytes"),
            "{e}"
        );
        let e = err("{}\n{}\n{}\n", small);
        assert!(
            e.contains("train.log:3") && e.contains("more than 2 lines"),
            "{e}"
        );
        std::fs::write(&log, "{\"best\":true,\"stats\":null}\n").unwrap();
        assert_eq!(read_kept_stats(&log).unwrap(), None);
        std::fs::write(&log, "{}\n{}\n").unwrap();
        assert_eq!(read_kept_stats_with(&log, small).unwrap(), None);
    }
}
