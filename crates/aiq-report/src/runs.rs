//! Finding and reading the runs of a sweep: every `score*.json` under the given roots.
//!
//! A run directory holds `score.json` (the model measured on its own data set's test split)
//! and possibly `score-emnist.json` (the same model measured on EMNIST digits, Table 4). The
//! score file carries the model's identity, so the report needs nothing from the path.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ReportError;

/// A score file is a few kilobytes; anything past this is not one.
const MAX_SCORE_BYTES: u64 = 16 << 20;

/// One hidden layer's measurements, as `score-aiq --json` writes them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LayerScore {
    pub name: String,
    pub neurons: u64,
    pub efficiency: f64,
}

/// The identity of the trained model (`model` in a score file).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ModelId {
    pub arch: String,
    pub widths: Vec<u32>,
    pub modifier: String,
    pub seed: u64,
    /// Fraction of training labels randomized, 0..=1.
    pub randomize_labels: f64,
    /// The data set the model was trained on.
    pub dataset: String,
    pub parameters: u64,
    #[serde(default)]
    pub epochs: Option<f64>,
    #[serde(default)]
    pub train_accuracy: Option<f64>,
}

/// The parts of a `score-aiq --json` document the report uses (other fields are ignored).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Score {
    pub layers: Vec<LayerScore>,
    pub network_efficiency: f64,
    pub accuracy: f64,
    pub beta: f64,
    pub aiq: f64,
    pub model: ModelId,
    /// The data set measured (differs from `model.dataset` for the EMNIST test).
    pub dataset: String,
    pub split: String,
}

impl Score {
    /// True for the model measured on the test split of its own data set (`score.json`),
    /// as opposed to the EMNIST generalization test.
    pub fn is_primary(&self) -> bool {
        self.dataset == self.model.dataset && self.split == "test"
    }
}

/// A score file and where it was found.
#[derive(Debug, Clone)]
pub struct Run {
    pub path: PathBuf,
    pub score: Score,
}

/// Reads every `score*.json` below each root (a root may also be a single file), in path
/// order so that the report does not depend on directory listing order.
pub fn load_runs(roots: &[PathBuf]) -> Result<Vec<Run>, ReportError> {
    let mut files = Vec::new();
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|e| ReportError::io(root, e))?;
        if meta.is_file() {
            files.push(root.clone());
        } else {
            collect(root, &mut files)?;
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(ReportError::NoRuns {
            roots: roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    files
        .into_iter()
        .map(|path| {
            let score = read_score(&path)?;
            Ok(Run { path, score })
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReportError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ReportError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ReportError::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| ReportError::io(&path, e))?;
        if kind.is_dir() {
            collect(&path, out)?;
        } else if kind.is_file() && is_score_name(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// `score.json`, `score-emnist.json`, ...; not the hidden temporaries of an interrupted write.
fn is_score_name(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.starts_with("score") && name.ends_with(".json")
}

/// Reads and parses one score file, bounded in size.
pub fn read_score(path: &Path) -> Result<Score, ReportError> {
    let file = std::fs::File::open(path).map_err(|e| ReportError::io(path, e))?;
    let mut text = String::new();
    file.take(MAX_SCORE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ReportError::io(path, e))?;
    if text.len() as u64 > MAX_SCORE_BYTES {
        return Err(ReportError::Parse {
            path: path.display().to_string(),
            detail: format!("larger than {MAX_SCORE_BYTES} bytes; not a score file"),
        });
    }
    let score: Score = serde_json::from_str(&text).map_err(|e| ReportError::Parse {
        path: path.display().to_string(),
        detail: format!("expected a `score-aiq --json` document: {e}"),
    })?;
    if !(0.0..=1.0).contains(&score.model.randomize_labels) {
        return Err(ReportError::Parse {
            path: path.display().to_string(),
            detail: format!(
                "model.randomize_labels must be a fraction in [0, 1], found {}",
                score.model.randomize_labels
            ),
        });
    }
    Ok(score)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn score_json(widths: &[u32], seed: u64, acc: f64) -> String {
        format!(
            r#"{{"layers":[{{"name":"dense1","neurons":{},"observations":10,"distinct_states":3,
            "entropy_bits":1.0,"efficiency":0.5,"efficiency_ceiling":1.0}}],
            "network_efficiency":0.5,"accuracy":{acc},"beta":2.0,"aiq":0.6,
            "model":{{"arch":"lenet300","widths":{widths:?},"modifier":"none","seed":{seed},
            "randomize_labels":0.0,"dataset":"mnist","parameters":100,"epochs":3,
            "train_accuracy":0.9,"test_accuracy":{acc}}},"dataset":"mnist","split":"test"}}"#,
            widths[0]
        )
    }

    #[test]
    fn finds_scores_recursively_and_skips_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("a/none/r0/seed1");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("score.json"), score_json(&[2, 2], 1, 0.5)).unwrap();
        std::fs::write(run.join(".score.json.x.part"), "{").unwrap();
        std::fs::write(run.join("train.log"), "log").unwrap();
        let runs = load_runs(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].score.model.widths, vec![2, 2]);
        assert_eq!(runs[0].score.accuracy, 0.5);
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("score.json");
        std::fs::write(&path, r#"{"layers": 3}"#).unwrap();
        let err = load_runs(&[dir.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("score.json") && err.contains("score-aiq --json"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = load_runs(&[empty.path().to_path_buf()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no score"), "{err}");
        let err = load_runs(&[dir.path().join("missing")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
