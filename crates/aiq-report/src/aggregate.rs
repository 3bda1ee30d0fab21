//! Grouping runs into configurations (everything but the seed) and summarizing each metric
//! across the seeds, then writing the groups as CSV and JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::paramstats::ArchCorrelations;
use crate::runs::Run;
use crate::stats::Summary;
use crate::ReportError;

/// Everything that identifies a configuration; the seeds of one key are its replicates.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GroupKey {
    pub arch: String,
    pub widths: Vec<u32>,
    pub modifier: String,
    /// Percentage of training labels randomized (0, 25, 50, 75, 100 in the paper).
    pub randomize_pct: u32,
    /// The data set the model was trained on.
    pub trained_on: String,
    /// The data set and split the scores were measured on.
    pub measured_on: String,
    pub split: String,
}

impl GroupKey {
    /// True for the model measured on the test split of its own data set (score.json).
    pub fn is_primary(&self) -> bool {
        self.measured_on == self.trained_on && self.split == "test"
    }

    /// A short label for error messages: `lenet300 128x1024 none r0 mnist→mnist/test`.
    pub fn label(&self) -> String {
        format!(
            "{} {} {} r{} {}→{}/{}",
            self.arch,
            widths_label(&self.widths, "x"),
            self.modifier,
            self.randomize_pct,
            self.trained_on,
            self.measured_on,
            self.split
        )
    }
}

pub(crate) fn widths_label(widths: &[u32], sep: &str) -> String {
    widths
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(sep)
}

/// The metrics summarized for every group, in CSV column order.
pub const METRICS: [&str; 5] = [
    "accuracy",
    "aiq",
    "network_efficiency",
    "train_accuracy",
    "epochs",
];

/// Per-layer efficiencies get columns `eta1..eta{MAX_CSV_LAYERS}`.
pub const MAX_CSV_LAYERS: usize = 3;

/// One configuration summarized over its seeds.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    #[serde(flatten)]
    pub key: GroupKey,
    pub seeds: Vec<u64>,
    pub parameters: u64,
    pub beta: f64,
    /// Hidden layer names, in order; `eta{i}` is the efficiency of layer `i` (from 1).
    pub layers: Vec<String>,
    /// Metric name → summary across seeds (`accuracy`, `aiq`, `network_efficiency`,
    /// `eta1`, ..., `train_accuracy`, `epochs` when the score files have them).
    pub metrics: BTreeMap<String, Summary>,
}

impl Group {
    pub fn metric(&self, name: &str) -> Option<&Summary> {
        self.metrics.get(name)
    }

    /// Mean of a metric, NaN when absent (sorts last with `total_cmp` on the negation).
    pub fn mean(&self, name: &str) -> f64 {
        self.metric(name).map_or(f64::NAN, |s| s.mean)
    }
}

/// Groups runs by configuration and summarizes each metric over the seeds. Groups come out
/// ordered by key (architecture, widths numerically, modifier, randomization, ...).
pub fn aggregate(runs: &[Run]) -> Result<Vec<Group>, ReportError> {
    let mut by_key: BTreeMap<GroupKey, Vec<&Run>> = BTreeMap::new();
    for run in runs {
        let s = &run.score;
        let key = GroupKey {
            arch: s.model.arch.clone(),
            widths: s.model.widths.clone(),
            modifier: s.model.modifier.clone(),
            randomize_pct: (s.model.randomize_labels * 100.0).round() as u32,
            trained_on: s.model.dataset.clone(),
            measured_on: s.dataset.clone(),
            split: s.split.clone(),
        };
        by_key.entry(key).or_default().push(run);
    }
    by_key
        .into_iter()
        .map(|(key, runs)| summarize(key, &runs))
        .collect()
}

fn summarize(key: GroupKey, runs: &[&Run]) -> Result<Group, ReportError> {
    let first = &runs[0].score;
    let inconsistent = |detail: String| ReportError::Inconsistent {
        group: key.label(),
        detail,
    };
    let mut seeds: Vec<u64> = Vec::with_capacity(runs.len());
    for run in runs {
        let s = &run.score;
        if seeds.contains(&s.model.seed) {
            return Err(inconsistent(format!(
                "seed {} appears twice (second at {}); give each run root once",
                s.model.seed,
                run.path.display()
            )));
        }
        seeds.push(s.model.seed);
        if s.model.parameters != first.model.parameters {
            return Err(inconsistent(format!(
                "{} has {} parameters, {} has {}",
                runs[0].path.display(),
                first.model.parameters,
                run.path.display(),
                s.model.parameters
            )));
        }
        if s.beta != first.beta {
            return Err(inconsistent(format!(
                "β differs: {} in {}, {} in {}",
                first.beta,
                runs[0].path.display(),
                s.beta,
                run.path.display()
            )));
        }
        let names: Vec<&str> = s.layers.iter().map(|l| l.name.as_str()).collect();
        let first_names: Vec<&str> = first.layers.iter().map(|l| l.name.as_str()).collect();
        if names != first_names {
            return Err(inconsistent(format!(
                "layers {first_names:?} in {} but {names:?} in {}",
                runs[0].path.display(),
                run.path.display()
            )));
        }
    }
    seeds.sort_unstable();

    let mut metrics = BTreeMap::new();
    let mut put = |name: String, values: Vec<f64>| {
        if values.len() == runs.len() {
            if let Some(s) = Summary::of(&values) {
                metrics.insert(name, s);
            }
        }
    };
    let column = |f: &dyn Fn(&crate::runs::Score) -> Option<f64>| -> Vec<f64> {
        runs.iter().filter_map(|r| f(&r.score)).collect()
    };
    put("accuracy".into(), column(&|s| Some(s.accuracy)));
    put("aiq".into(), column(&|s| Some(s.aiq)));
    put(
        "network_efficiency".into(),
        column(&|s| Some(s.network_efficiency)),
    );
    put("train_accuracy".into(), column(&|s| s.model.train_accuracy));
    put("epochs".into(), column(&|s| s.model.epochs));
    for i in 0..first.layers.len() {
        put(
            format!("eta{}", i + 1),
            column(&|s| Some(s.layers[i].efficiency)),
        );
    }
    Ok(Group {
        layers: first.layers.iter().map(|l| l.name.clone()).collect(),
        parameters: first.model.parameters,
        beta: first.beta,
        seeds,
        metrics,
        key,
    })
}

/// The groups as CSV: one row per configuration, `<metric>_mean` and `<metric>_ci95`
/// (half-width of the 95% Student-t interval; empty for a single seed). The first line is a
/// `#` comment recording what produced the file.
pub fn to_csv(groups: &[Group], provenance: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {provenance}");
    let mut header = vec![
        "arch",
        "widths",
        "n1",
        "n2",
        "n3",
        "modifier",
        "randomize_pct",
        "trained_on",
        "measured_on",
        "split",
        "beta",
        "parameters",
        "n",
        "seeds",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    let mut metric_names: Vec<String> = METRICS.iter().map(|m| m.to_string()).collect();
    metric_names.extend((1..=MAX_CSV_LAYERS).map(|i| format!("eta{i}")));
    for m in &metric_names {
        header.push(format!("{m}_mean"));
        header.push(format!("{m}_ci95"));
    }
    let _ = writeln!(out, "{}", header.join(","));
    for g in groups {
        let k = &g.key;
        let w = |i: usize| k.widths.get(i).map_or(String::new(), |v| v.to_string());
        let mut row = vec![
            csv_field(&k.arch),
            widths_label(&k.widths, "x"),
            w(0),
            w(1),
            w(2),
            csv_field(&k.modifier),
            k.randomize_pct.to_string(),
            csv_field(&k.trained_on),
            csv_field(&k.measured_on),
            csv_field(&k.split),
            g.beta.to_string(),
            g.parameters.to_string(),
            g.seeds.len().to_string(),
            widths_label(&g.seeds.iter().map(|&s| s as u32).collect::<Vec<_>>(), " "),
        ];
        for m in &metric_names {
            match g.metric(m) {
                Some(s) => {
                    row.push(s.mean.to_string());
                    row.push(s.ci95.map_or(String::new(), |c| c.to_string()));
                }
                None => {
                    row.push(String::new());
                    row.push(String::new());
                }
            }
        }
        let _ = writeln!(out, "{}", row.join(","));
    }
    out
}

/// Quotes a field when it holds a comma, quote or newline.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The groups and Table 5's correlations as JSON, with the provenance of the report.
pub fn to_json(
    groups: &[Group],
    param_stats_correlation: &[ArchCorrelations],
    provenance: &aiq_io::Provenance,
) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        provenance: &'a aiq_io::Provenance,
        groups: &'a [Group],
        param_stats_correlation: &'a [ArchCorrelations],
    }
    let mut s = serde_json::to_string_pretty(&Doc {
        provenance,
        groups,
        param_stats_correlation,
    })
    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runs::{LayerScore, ModelId, Score};

    pub(crate) fn run(
        widths: &[u32],
        modifier: &str,
        r: f64,
        seed: u64,
        acc: f64,
        eta: f64,
    ) -> Run {
        let aiq = (acc * acc * eta).cbrt();
        Run {
            path: format!("runs/{widths:?}/{modifier}/{r}/seed{seed}/score.json").into(),
            score: Score {
                layers: widths
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| LayerScore {
                        name: format!("dense{}", i + 1),
                        neurons: n as u64,
                        efficiency: eta,
                    })
                    .collect(),
                network_efficiency: eta,
                accuracy: acc,
                beta: 2.0,
                aiq,
                model: ModelId {
                    arch: "lenet300".into(),
                    widths: widths.to_vec(),
                    modifier: modifier.into(),
                    seed,
                    randomize_labels: r,
                    dataset: "mnist".into(),
                    parameters: widths.iter().map(|&w| w as u64 * 100).sum(),
                    epochs: Some(5.0),
                    train_accuracy: Some(acc),
                },
                dataset: "mnist".into(),
                split: "test".into(),
            },
        }
    }

    #[test]
    fn groups_by_everything_but_seed() {
        let runs = vec![
            run(&[4, 2], "none", 0.0, 2, 0.8, 0.5),
            run(&[2, 2], "none", 0.0, 1, 0.5, 0.5),
            run(&[4, 2], "none", 0.0, 1, 0.6, 0.5),
            run(&[4, 2], "none", 0.25, 1, 0.4, 0.5),
        ];
        let groups = aggregate(&runs).unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].key.widths, vec![2, 2]);
        let g = &groups[1];
        assert_eq!((g.key.widths.clone(), g.key.randomize_pct), (vec![4, 2], 0));
        assert_eq!(g.seeds, vec![1, 2]);
        let acc = g.metric("accuracy").unwrap();
        assert!((acc.mean - 0.7).abs() < 1e-15);
        // sd = 0.1·√2, half-width = 12.7062047 · sd / √2 = 1.27062047.
        assert!((acc.ci95.unwrap() - 1.270_620_473_6).abs() < 1e-8);
        assert!(g.metric("eta2").is_some() && g.metric("eta3").is_none());
        assert_eq!(groups[2].key.randomize_pct, 25);
    }

    #[test]
    fn duplicate_seed_is_an_error() {
        let runs = vec![
            run(&[2, 2], "none", 0.0, 1, 0.5, 0.5),
            run(&[2, 2], "none", 0.0, 1, 0.6, 0.5),
        ];
        let err = aggregate(&runs).unwrap_err().to_string();
        assert!(err.contains("seed 1 appears twice"), "{err}");
    }

    #[test]
    fn csv_has_means_and_intervals() {
        let runs = vec![
            run(&[2, 2], "none", 0.0, 1, 0.5, 0.5),
            run(&[2, 2], "none", 0.0, 2, 0.7, 0.5),
            run(&[4, 2], "none", 0.0, 1, 0.5, 0.5),
        ];
        let csv = to_csv(&aggregate(&runs).unwrap(), "test");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "# test");
        let header: Vec<&str> = lines[1].split(',').collect();
        let row: Vec<&str> = lines[2].split(',').collect();
        assert_eq!(header.len(), row.len());
        let col = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(col("n"), "2");
        assert_eq!(col("seeds"), "1 2");
        assert_eq!(col("n3"), "");
        assert!((col("accuracy_mean").parse::<f64>().unwrap() - 0.6).abs() < 1e-15);
        let single: Vec<&str> = lines[3].split(',').collect();
        assert_eq!(
            single[header.iter().position(|h| *h == "accuracy_ci95").unwrap()],
            ""
        );
    }
}
