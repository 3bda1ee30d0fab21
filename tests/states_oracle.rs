//! Every TensorState 0.4.0 answer in fixtures/oracle, through the `.npy` route: the library
//! (`aiq_count::count_npy` + `aiq_metrics`) and the binaries (`count-states --npy` piped into
//! `score-aiq --json`) give the same distinct states, counts, entropies and efficiency.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aiq_metrics::{efficiency, renyi_bits, shannon_bits};
use serde_json::Value;

fn oracle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/oracle")
}

fn cases() -> Vec<(PathBuf, Value)> {
    let mut out: Vec<_> = std::fs::read_dir(oracle_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .map(|p| {
            let json: Value =
                serde_json::from_slice(&std::fs::read(p.with_extension("json")).unwrap()).unwrap();
            (p, json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 7, "the oracle has 7 cases");
    out
}

fn close(ours: f64, theirs: &Value, what: &str, case: &Path) {
    let theirs = theirs.as_f64().unwrap();
    assert!(
        (ours - theirs).abs() <= 1e-9,
        "{}: {what} {ours} vs TensorState {theirs}",
        case.display()
    );
}

#[test]
fn library_matches_tensorstate() {
    for (path, want) in cases() {
        let axis = want["channel_axis"].as_u64().unwrap() as usize;
        let c = aiq_count::count_npy(&path, axis, "layer").unwrap();
        assert_eq!(
            c.observations,
            want["state_count"].as_u64().unwrap(),
            "{}",
            path.display()
        );
        assert_eq!(u64::from(c.neurons), want["neurons"].as_u64().unwrap());
        assert_eq!(
            c.distinct() as u64,
            want["distinct_states"].as_u64().unwrap()
        );
        let counts: Vec<u64> = want["counts_ascending_state_value"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            c.counts,
            counts,
            "{}: counts in state order",
            path.display()
        );
        // States as TensorState's bytes: neuron i at bit i % 8 of byte i / 8.
        let bytes_per_state = (c.neurons as usize).div_ceil(8);
        let ids: Vec<String> = (0..c.distinct())
            .map(|i| {
                let bytes: Vec<u8> = c
                    .state(i)
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .take(bytes_per_state)
                    .collect();
                bytes.iter().map(|b| format!("{b:02x}")).collect()
            })
            .collect();
        let want_ids: Vec<&str> = want["state_ids_hex_lsb_first"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(ids, want_ids, "{}: state ids", path.display());
        let h = shannon_bits(&c.counts);
        close(h, &want["entropy_bits"], "entropy", &path);
        close(
            efficiency(h, c.neurons),
            &want["efficiency"],
            "efficiency",
            &path,
        );
        close(
            renyi_bits(&c.counts, 0.0),
            &want["renyi0_bits"],
            "renyi0",
            &path,
        );
        close(
            renyi_bits(&c.counts, 2.0),
            &want["renyi2_bits"],
            "renyi2",
            &path,
        );
    }
}

#[test]
fn binaries_match_tensorstate() {
    let all = cases();
    // All cases as the layers of one network, through a pipe.
    let mut count = Command::new(env!("CARGO_BIN_EXE_count-states"));
    for (path, want) in &all {
        count
            .arg("--npy")
            .arg(path)
            .arg("--channel-axis")
            .arg(want["channel_axis"].as_u64().unwrap().to_string());
    }
    let mut count = count.stdout(Stdio::piped()).spawn().unwrap();
    let score = Command::new(env!("CARGO_BIN_EXE_score-aiq"))
        .args(["--json", "--accuracy", "0.9"])
        .stdin(count.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(count.wait().unwrap().success());
    assert!(
        score.status.success(),
        "{}",
        String::from_utf8_lossy(&score.stderr)
    );
    let card: Value = serde_json::from_slice(&score.stdout).unwrap();
    let layers = card["layers"].as_array().unwrap();
    assert_eq!(layers.len(), all.len());
    let mut effs = Vec::new();
    for ((path, want), got) in all.iter().zip(layers) {
        assert_eq!(got["name"], path.file_stem().unwrap().to_str().unwrap());
        assert_eq!(got["observations"], want["state_count"]);
        assert_eq!(got["neurons"], want["neurons"]);
        assert_eq!(got["distinct_states"], want["distinct_states"]);
        close(
            got["entropy_bits"].as_f64().unwrap(),
            &want["entropy_bits"],
            "entropy",
            path,
        );
        close(
            got["efficiency"].as_f64().unwrap(),
            &want["efficiency"],
            "efficiency",
            path,
        );
        effs.push(want["efficiency"].as_f64().unwrap());
    }
    // One layer never fires differently: the network efficiency is 0, and so is aIQ.
    assert!(effs.contains(&0.0));
    assert_eq!(card["network_efficiency"], 0.0);
    assert_eq!(card["aiq"], 0.0);
    assert_eq!(card["model"], Value::Null);

    // Without the single-state layer: the geometric mean of TensorState's efficiencies.
    let mut count = Command::new(env!("CARGO_BIN_EXE_count-states"));
    let mut product = 1.0;
    let live: Vec<_> = all
        .iter()
        .filter(|(_, w)| w["efficiency"].as_f64().unwrap() > 0.0)
        .collect();
    for (path, want) in &live {
        count.arg("--npy").arg(path);
        product *= want["efficiency"].as_f64().unwrap();
    }
    let out = count.output().unwrap();
    assert!(out.status.success());
    let score = Command::new(env!("CARGO_BIN_EXE_score-aiq"))
        .args(["--json", "--accuracy", "0.9", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&out.stdout)?;
            child.wait_with_output()
        })
        .unwrap();
    let card: Value = serde_json::from_slice(&score.stdout).unwrap();
    let net = product.powf(1.0 / live.len() as f64);
    assert!((card["network_efficiency"].as_f64().unwrap() - net).abs() < 1e-9);
    let aiq = (0.81 * net).cbrt();
    assert!((card["aiq"].as_f64().unwrap() - aiq).abs() < 1e-9);
}
