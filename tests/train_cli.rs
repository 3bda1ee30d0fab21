//! End-to-end tests of the `train` binary on the MNIST fixture subset (600 training, 200 test
//! images): describe counts, a short training to a file and to a pipe, determinism across
//! thread counts, and bad input (clear error, non-zero exit, nothing under the output name).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use aiq_train::Model;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mnist")
}

fn train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn describe_prints_table_1_parameter_counts() {
    for (arch, widths, want) in [
        ("lenet300", "128,1024", 242_826),
        ("lenet300", "11,4", 8_733),
        ("lenet5", "3,9,4", 1_392),
        ("lenet5", "3,5,5", 923),
        ("lenet5", "1024,1024,1024", 43_030_538),
    ] {
        let out = train(&["--describe", "--arch", arch, "--widths", widths]);
        ok(&out);
        let d: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(d["parameters"], want, "{arch} {widths}");
    }
    let out = train(&["--describe", "--arch", "lenet5", "--widths", "3,9,4"]);
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hidden: Vec<(String, u64)> = d["hidden_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["name"].as_str().unwrap().to_string(),
                h["states_per_input"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hidden,
        vec![
            ("conv1".into(), 576),
            ("conv2".into(), 64),
            ("dense3".into(), 1)
        ]
    );
}

#[test]
fn trains_to_a_file_with_a_log_and_to_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.bin");
    let log = dir.path().join("train.log");
    let data = fixtures();
    let common = [
        "--arch",
        "lenet5",
        "--widths",
        "3,9,4",
        "--max-epochs",
        "2",
        "--seed",
        "3",
        "--data",
    ];
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        data.to_str().unwrap(),
        "--log",
        log.to_str().unwrap(),
        "-o",
        model.to_str().unwrap(),
    ]);
    let out = train(&args);
    ok(&out);
    let bytes = std::fs::read(&model).unwrap();
    let m = Model::read_from(&mut bytes.as_slice(), "model.bin").unwrap();
    assert_eq!(m.meta().epochs, 2);
    assert_eq!(m.meta().parameters, 1_392);
    assert_eq!(m.meta().widths, vec![3, 9, 4]);
    assert!((0.0..=1.0).contains(&m.meta().test_accuracy));
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["epoch"], i + 1);
        for key in [
            "seconds",
            "loss",
            "train_accuracy",
            "test_accuracy",
            "images_per_second",
        ] {
            assert!(l[key].as_f64().unwrap() > 0.0, "{key} in {l}");
        }
    }
    // Same run with the model on a pipe: same weights.
    let mut args: Vec<&str> = common.to_vec();
    args.push(data.to_str().unwrap());
    let piped = train(&args);
    ok(&piped);
    let p = Model::read_from(&mut piped.stdout.as_slice(), "<stdout>").unwrap();
    assert_eq!(p.parameters(), m.parameters());
    // The loaded model predicts the fixture test images with the recorded accuracy.
    let test = aiq_data::load(&data, aiq_data::DatasetKind::Mnist)
        .unwrap()
        .test;
    let pred = p.predict(test.images.view());
    let right = pred
        .iter()
        .zip(&test.labels)
        .filter(|(a, b)| a == b)
        .count();
    assert_eq!(
        right as f64 / test.labels.len() as f64,
        m.meta().test_accuracy
    );
}

#[test]
fn same_model_with_one_or_two_threads() {
    let data = fixtures();
    let run = |threads: &str| {
        let out = train(&[
            "--arch",
            "lenet300",
            "--widths",
            "8,6",
            "--modifier",
            "dropout",
            "--randomize-labels",
            "0.25",
            "--max-epochs",
            "1",
            "--seed",
            "9",
            "--threads",
            threads,
            "--data",
            data.to_str().unwrap(),
            "-o",
            "-",
        ]);
        ok(&out);
        Model::read_from(&mut out.stdout.as_slice(), "<stdout>").unwrap()
    };
    let (a, b) = (run("1"), run("2"));
    assert_eq!(a.parameters(), b.parameters());
    let (mut ma, mut mb) = (a.meta().clone(), b.meta().clone());
    assert_ne!(ma.provenance.args, mb.provenance.args);
    mb.provenance = ma.provenance.clone();
    ma.randomize_labels = mb.randomize_labels;
    assert_eq!(ma, mb);
    assert_eq!(a.meta().randomize_labels, 0.25);
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.bin");
    let data = fixtures();
    let data = data.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--arch", "lenet300", "--widths", "0,4"],
            "outside 1..=4096",
        ),
        (
            vec!["--arch", "lenet300", "--widths", "5000,4"],
            "outside 1..=4096",
        ),
        (
            vec!["--arch", "lenet5", "--widths", "3,9"],
            "takes 3 hidden widths, found 2",
        ),
        (
            vec!["--arch", "lenet300", "--widths", "3,9,4"],
            "takes 2 hidden widths, found 3",
        ),
        (
            vec![
                "--arch",
                "lenet300",
                "--widths",
                "3,4",
                "--randomize-labels",
                "1.5",
            ],
            "1.5",
        ),
        (
            vec!["--arch", "lenet300", "--widths", "3,4", "--batch", "0"],
            "batch",
        ),
        (
            vec![
                "--arch",
                "lenet300",
                "--widths",
                "3,4",
                "--dataset",
                "emnist-digits",
            ],
            "emnist-digits",
        ),
    ];
    for (args, want) in cases {
        let mut all = args.clone();
        all.extend([
            "--max-epochs",
            "1",
            "--data",
            data,
            "-o",
            model.to_str().unwrap(),
        ]);
        let out = train(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("train: ") && err.contains(want),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{args:?} left a file"
        );
    }
    // A missing data directory names it.
    let out = train(&[
        "--arch",
        "lenet300",
        "--widths",
        "3,4",
        "--data",
        "/nonexistent/mnist",
        "-o",
        model.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mnist"));
    assert!(!model.exists());
}
