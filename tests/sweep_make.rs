//! End-to-end: the tiny grid (2×2 widths, 2 seeds, 1 epoch on the MNIST fixtures) through
//! `make -f mk/sweep.mk` with the real binaries. Checks that a second `make` does nothing,
//! that a sweep killed midway (SIGKILL to make and its children) resumes to completion with no
//! corrupted or partial file, and that the report's means and 95% intervals equal a hand
//! computation from the runs' score files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

const RUNS: usize = 8;
/// t(0.975, 1): the two-sided 95% Student-t critical value for two seeds (statistics tables).
const T_975_DF1: f64 = 12.706_204_736_174_707;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_train"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A sweep in a temporary directory: runs, generated rules and report all inside it.
struct Sweep {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Sweep {
    fn new() -> Self {
        Sweep {
            dir: tempfile::tempdir().unwrap(),
            bin: bin_dir(),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("runs")
    }

    fn report(&self) -> PathBuf {
        self.dir.path().join("report")
    }

    fn make(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("make");
        cmd.current_dir(repo())
            .arg("-f")
            .arg("mk/sweep.mk")
            .arg("GRID=grids/tiny")
            .arg(format!("BIN={}", self.bin.display()))
            .arg(format!("SWEEP_ROOT={}", self.root().display()))
            .arg(format!(
                "SWEEP_GEN={}",
                self.dir.path().join("gen").display()
            ))
            .arg(format!("SWEEP_REPORT_DIR={}", self.report().display()))
            .arg("SWEEP_BUILD=")
            .args(args)
            .env_remove("MAKEFLAGS")
            .env_remove("MAKELEVEL");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.make(args).output().expect("make runs");
        assert!(
            out.status.success(),
            "make {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Every file under the runs root with its modification time.
    fn files(&self) -> BTreeMap<PathBuf, SystemTime> {
        let mut out = BTreeMap::new();
        walk(&self.root(), &mut out);
        walk(&self.report(), &mut out);
        out
    }

    fn count(&self, name: &str) -> usize {
        self.files()
            .keys()
            .filter(|p| p.file_name().is_some_and(|n| n == name))
            .count()
    }
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, SystemTime>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), e.metadata().unwrap().modified().unwrap());
        }
    }
}

#[test]
fn tiny_sweep_is_complete_idempotent_and_hand_checked() {
    let sweep = Sweep::new();
    sweep.run(&["sweep", "-j2"]);
    assert_eq!(sweep.count("score.json"), RUNS);
    assert_eq!(sweep.count("model.bin"), RUNS);
    assert_eq!(sweep.count("counts.bin"), RUNS, "counts are kept");
    assert_eq!(sweep.count("states.bin"), 0, "states are intermediate");
    assert_eq!(sweep.count("train.log"), RUNS);
    for f in ["summary.csv", "summary.json", "tables.md"] {
        assert!(sweep.report().join(f).is_file(), "{f}");
    }
    for ext in ["png", "svg"] {
        let fig = sweep
            .report()
            .join(format!("fig1-lenet300-none-r0-accuracy.{ext}"));
        assert!(fig.is_file(), "{}", fig.display());
    }

    // A second make: up to date for `make -q`, and a real run touches nothing.
    let q = sweep.make(&["-q", "sweep"]).status().unwrap();
    assert_eq!(q.code(), Some(0), "make -q says the sweep is up to date");
    let before = sweep.files();
    let again = sweep.run(&["sweep", "-j2"]);
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(text.contains("Nothing to be done"), "{text}");
    assert_eq!(before, sweep.files(), "second make changed files");

    check_report_by_hand(&sweep);
    check_table5(&sweep);

    // A stale stage is redone, and only what depends on it: touch one model.
    let model = sweep.root().join("lenet300-2-4/none/r0/seed2/model.bin");
    let later = SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&model)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let out = sweep.run(&["sweep"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("train "), "no retraining: {text}");
    assert_eq!(text.matches("dump-states ").count(), 1, "{text}");
    assert_eq!(text.matches("aiq-report ").count(), 1, "{text}");
}

/// The report's CSV against means and intervals computed here from the score files.
fn check_report_by_hand(sweep: &Sweep) {
    let mut by_widths: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for path in sweep.files().keys() {
        if path.file_name().is_some_and(|n| n == "score.json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let w = v["model"]["widths"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("x");
            by_widths.entry(w).or_default().push(v);
        }
    }
    assert_eq!(by_widths.len(), 4);
    let csv = std::fs::read_to_string(sweep.report().join("summary.csv")).unwrap();
    let mut lines = csv.lines().filter(|l| !l.starts_with('#'));
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4);
    let col = |row: &[&str], name: &str| -> f64 {
        let i = header.iter().position(|h| *h == name).unwrap();
        row[i]
            .parse()
            .unwrap_or_else(|_| panic!("{name}: {:?}", row[i]))
    };
    for row in &rows {
        let runs = &by_widths[row[1]];
        assert_eq!(runs.len(), 2);
        assert_eq!(col(row, "n"), 2.0);
        let metrics = [
            ("accuracy", "/accuracy"),
            ("aiq", "/aiq"),
            ("network_efficiency", "/network_efficiency"),
            ("eta2", "/layers/1/efficiency"),
        ];
        for (name, pointer) in metrics {
            let get = |v: &serde_json::Value| v.pointer(pointer).unwrap().as_f64().unwrap();
            let (a, b) = (get(&runs[0]), get(&runs[1]));
            // Two values: mean (a+b)/2, sd |a−b|/√2, half-width t·sd/√2 = t·|a−b|/2.
            let mean = (a + b) / 2.0;
            let ci = T_975_DF1 * (a - b).abs() / 2.0;
            let (m, c) = (
                col(row, &format!("{name}_mean")),
                col(row, &format!("{name}_ci95")),
            );
            assert!(
                (m - mean).abs() <= 1e-12,
                "{} {name} mean {m} vs {mean}",
                row[1]
            );
            assert!(
                (c - ci).abs() <= 1e-9 * ci.max(1e-3),
                "{} {name} ci {c} vs {ci}",
                row[1]
            );
        }
    }
}

/// Table 5 is in every report: with a row per statistic over all runs when the train logs
/// carry statistics, with the reason when they do not; its CSV and JSON forms agree.
fn check_table5(sweep: &Sweep) {
    let with_stats = sweep
        .files()
        .keys()
        .filter(|p| p.file_name().is_some_and(|n| n == "train.log"))
        .all(|p| std::fs::read_to_string(p).unwrap().contains("\"stats\""));
    let md = std::fs::read_to_string(sweep.report().join("tables.md")).unwrap();
    assert!(
        md.contains("## Table 5. Parameter statistics vs aIQ and test accuracy"),
        "{md}"
    );
    let csv = std::fs::read_to_string(sweep.report().join("param_stats.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().filter(|l| l.starts_with("lenet300,")).collect();
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(sweep.report().join("summary.json")).unwrap(),
    )
    .unwrap();
    let corr = &json["param_stats_correlation"];
    assert!(corr.is_array(), "{json}");
    if with_stats {
        assert!(
            md.contains("**LeNet-300-100** (8 of 8 runs with statistics)"),
            "{md}"
        );
        assert!(md.contains("| network.parameters | 8 |"), "{md}");
        assert!(md.contains("| dense1.weights.variance | 8 |"), "{md}");
        assert!(!rows.is_empty(), "{csv}");
        assert_eq!(corr[0]["statistics"].as_array().unwrap().len(), rows.len());
    } else {
        assert!(md.contains("No parameter statistics"), "{md}");
        assert!(rows.is_empty(), "{csv}");
    }
}

#[test]
fn killed_sweep_resumes_without_partial_files() {
    let sweep = Sweep::new();
    // A bin directory whose `train` holds (sleeps) for seed 2, so that make -j2 is certainly
    // mid-flight when killed: both job slots end up in a held training.
    let bin = sweep.dir.path().join("bin");
    let hold = sweep.dir.path().join("hold");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&hold).unwrap();
    for tool in ["dump-states", "count-states", "score-aiq", "aiq-report"] {
        std::os::unix::fs::symlink(sweep.bin.join(tool), bin.join(tool)).unwrap();
    }
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in *' --seed 2 '*) if [ -n \"$SWEEP_TEST_HOLD\" ]; then \
         touch \"$SWEEP_TEST_HOLD/$$\"; sleep 60; fi;; esac\nexec {} \"$@\"\n",
        sweep.bin.join("train").display()
    );
    std::fs::write(bin.join("train"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("train"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let held = Sweep {
        dir: sweep.dir,
        bin: bin.clone(),
    };
    let mut cmd = held.make(&["sweep", "-j2"]);
    use std::os::unix::process::CommandExt;
    cmd.env("SWEEP_TEST_HOLD", &hold)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while std::fs::read_dir(&hold).unwrap().count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "two held trainings never started"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("make ended before the kill: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGKILL to make and everything it started.
    let pgid = child.id() as i32;
    // The shell's own kill (no procps needed); a negative pid is the process group.
    let killed = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -KILL -{pgid}"))
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();

    let done_before = held.count("model.bin");
    assert!(done_before < RUNS, "the kill came before the end");
    assert!(!held.report().join("summary.json").exists());
    // Every stage output that exists is whole: each counts/score file reads back.
    for path in held.files().keys() {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(!name.ends_with(".part") || name.starts_with('.'), "{name}");
        if name == "score.json" {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            assert!(v["aiq"].is_number(), "{}", path.display());
        }
        if name == "counts.bin" {
            let ok = Command::new(held.bin.join("score-aiq"))
                .arg(path)
                .arg("--json")
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(ok.success(), "{} is corrupt", path.display());
        }
    }

    // Rerun without the hold: finishes, and trains only what had no model.
    let out = held.run(&["sweep", "-j2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("train ").count(),
        RUNS - done_before,
        "retrained only the missing: {text}"
    );
    assert_eq!(held.count("score.json"), RUNS);
    assert!(held.report().join("summary.json").is_file());
    for path in held.files().keys() {
        if path.file_name().is_some_and(|n| n == "score.json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            assert!(v["accuracy"].is_number());
        }
    }
    // The temporaries a SIGKILL can leave are cleaned by their own target.
    held.run(&["sweep-clean-parts"]);
    assert!(held
        .files()
        .keys()
        .all(|p| !p.to_string_lossy().ends_with(".part")));
    let q = held.make(&["-q", "sweep"]).status().unwrap();
    assert_eq!(q.code(), Some(0));
}

/// Writes `fixtures/mnist` in EMNIST-digits' layout (file names, images transposed), so the
/// sweep's EMNIST stage (Table 4) runs on real digits.
fn emnist_like(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let src = repo().join("fixtures/mnist");
    for (from, to) in [
        ("train", "emnist-digits-train"),
        ("t10k", "emnist-digits-test"),
    ] {
        let mut images = std::fs::read(src.join(format!("{from}-images.idx3-ubyte"))).unwrap();
        let (rows, cols) = (28, 28);
        for img in images[16..].chunks_exact_mut(rows * cols) {
            let orig = img.to_vec();
            for r in 0..rows {
                for c in 0..cols {
                    img[c * rows + r] = orig[r * cols + c];
                }
            }
        }
        std::fs::write(dir.join(format!("{to}-images-idx3-ubyte")), images).unwrap();
        std::fs::copy(
            src.join(format!("{from}-labels.idx1-ubyte")),
            dir.join(format!("{to}-labels-idx1-ubyte")),
        )
        .unwrap();
    }
}

#[test]
fn randomization_and_emnist_grid_fills_tables_3_and_4() {
    let sweep = Sweep::new();
    let emnist = sweep.dir.path().join("emnist");
    emnist_like(&emnist);
    let grid = sweep.dir.path().join("tiny-rand");
    std::fs::write(
        &grid,
        format!(
            "arch lenet300\nn1 2 4\nn2 2\nmodifier none\nrandomize 0 75\nseeds 1 2\n\
             data fixtures/mnist\nmax-epochs 1\nemnist {}\n",
            emnist.display()
        ),
    )
    .unwrap();
    sweep.run(&["sweep", "-j2", &format!("GRID={}", grid.display())]);
    assert_eq!(sweep.count("score.json"), 8);
    assert_eq!(sweep.count("score-emnist.json"), 8);
    let e: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            sweep
                .root()
                .join("lenet300-4-2/none/r75/seed1/score-emnist.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(e["dataset"], "emnist-digits");
    assert_eq!(e["model"]["dataset"], "mnist");
    assert_eq!(e["model"]["randomize_labels"], 0.75);
    let md = std::fs::read_to_string(sweep.report().join("tables.md")).unwrap();
    assert!(
        md.contains("| Layer 1 | Layer 2 | 0% Rand | 75% Rand |"),
        "{md}"
    );
    assert!(
        md.contains("| MNIST 0% Rand | MNIST 75% Rand | EMNIST 0% Rand | EMNIST 75% Rand |"),
        "{md}"
    );
    assert!(!md.contains("No EMNIST measurements"), "{md}");
}

#[test]
fn bad_grids_and_empty_run_roots_fail_with_one_clear_line() {
    let sweep = Sweep::new();
    let grid = sweep.dir.path().join("bad");
    std::fs::write(&grid, "arch lenet300\nn1 2 4\nn2 two\n").unwrap();
    let out = sweep
        .make(&["sweep-status", &format!("GRID={}", grid.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:3: \"n2\" expects non-negative integers, found \"two\"",
            grid.display()
        )),
        "{err}"
    );
    std::fs::write(
        &grid,
        "arch lenet5\nn1 2\nn2 2\nmodifier none\nrandomize 0\nseeds 1\ndata d\n",
    )
    .unwrap();
    let out = sweep
        .make(&["sweep-status", &format!("GRID={}", grid.display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lenet5 needs n1, n2 and n3"));

    let empty = sweep.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_aiq-report"))
        .arg(&empty)
        .arg("-o")
        .arg(sweep.dir.path().join("r"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("aiq-report: no score*.json files under "),
        "{err}"
    );
    assert!(!sweep.dir.path().join("r").exists(), "nothing written");
}
