//! End-to-end tests of the `layer-algebra` binary: JSON shape and values, the text and
//! Markdown tables, file output, and one-line errors on bad arguments.

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_layer-algebra"))
        .args(args)
        .output()
        .expect("run layer-algebra")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("valid JSON")
}

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

#[test]
fn lenet5_json_has_the_documented_shape_and_values() {
    let v = json(&["--arch", "lenet5", "--widths", "3,9,4", "--json"]);
    let layers = v["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), 11);
    for layer in layers {
        assert!(
            layer["name"].is_string() && layer["kind"].is_string(),
            "{layer}"
        );
        for key in [
            "complexity",
            "intrinsic_power",
            "cumulative_complexity",
            "cumulative_intrinsic_power",
        ] {
            assert!(num(layer, key).is_finite(), "{key} in {layer}");
        }
    }
    // conv1, 28×28×1 → 24×24×3 with 5×5 kernels: p = 3·576/(25·784), c = 3·log2 25.
    let conv1 = &layers[0];
    assert_eq!(
        (conv1["name"].as_str(), conv1["kind"].as_str()),
        (Some("conv1"), Some("conv2d"))
    );
    assert!((num(conv1, "intrinsic_power") - 1728.0 / 19600.0).abs() < 1e-12);
    assert!((num(conv1, "complexity") - 3.0 * 25f64.log2()).abs() < 1e-12);
    // dense3 144 → 4: p = 4/144, c = log2 576; its input came through flatten unchanged.
    let dense3 = layers
        .iter()
        .find(|l| l["name"] == "dense3")
        .expect("dense3");
    assert!((num(dense3, "intrinsic_power") - 4.0 / 144.0).abs() < 1e-12);
    assert!((num(dense3, "complexity") - 576f64.log2()).abs() < 1e-12);
    let last = &layers[10];
    assert_eq!(last["kind"], "softmax");
    assert_eq!(num(last, "cumulative_complexity"), num(&v, "gcc"));
    assert_eq!(num(last, "cumulative_intrinsic_power"), num(&v, "gcip"));
    let gsc: f64 = layers.iter().map(|l| num(l, "complexity")).sum();
    assert!((num(&v, "gsc") - gsc).abs() < 1e-9 * gsc);
    assert!((num(&v, "gwc") - num(&v, "gcc") * num(&v, "gsc")).abs() < 1e-9 * num(&v, "gwc"));
    // GCIP by hand (see aiq-algebra's arch tests): 2.7615952e-10.
    assert!((num(&v, "gcip") / 2.761_595_2e-10 - 1.0).abs() < 1e-7);
    assert_eq!(v["arch"], "lenet5");
    assert_eq!(v["widths"], serde_json::json!([3, 9, 4]));
    assert_eq!(v["provenance"]["tool"], "layer-algebra");
}

#[test]
fn modifier_rows_appear_and_globals_stay() {
    let plain = json(&["--arch", "lenet300", "--widths", "300,100", "--json"]);
    let bn = json(&[
        "--arch",
        "lenet300",
        "--widths",
        "300,100",
        "--modifier",
        "batchnorm",
        "--json",
    ]);
    assert_eq!(plain["layers"].as_array().map(Vec::len), Some(6));
    assert_eq!(bn["layers"].as_array().map(Vec::len), Some(8));
    assert_eq!(bn["layers"][2]["kind"], "batchnorm");
    for key in ["gcc", "gcip", "gsc", "gwc"] {
        assert_eq!(plain[key], bn[key], "{key}");
    }
}

#[test]
fn text_and_markdown_tables_and_file_output() {
    let out = run(&["--arch", "lenet5", "--widths", "3,9,4"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.starts_with("layer "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("pool1 ") && l.contains("0.1875")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("GWC ")), "{text}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("la.md");
    let p = path.to_str().expect("utf-8 path");
    let out = run(&[
        "--arch",
        "lenet5",
        "--widths",
        "3,9,4",
        "--markdown",
        "-o",
        p,
    ]);
    assert!(out.status.success() && out.stdout.is_empty());
    let md = std::fs::read_to_string(&path).expect("markdown file");
    assert!(md.starts_with("| layer | kind |"), "{md}");
    assert!(
        md.contains("| pool2 | max_pool2d | 4×4×9 | 18.00 | 0.5625 |"),
        "{md}"
    );
}

#[test]
fn bad_arguments_fail_with_one_line() {
    for (args, expect) in [
        (
            &["--arch", "lenet5", "--widths", "3,9"][..],
            "lenet5 takes 3",
        ),
        (&["--arch", "lenet300", "--widths", "0,9"][..], "1..=4096"),
        (
            &["--arch", "lenet300", "--widths", "5000,9"][..],
            "found 5000",
        ),
        (
            &["--arch", "lenet5", "--widths", "3,x,4"][..],
            "comma-separated",
        ),
        (&["--arch", "lenet7", "--widths", "3,9,4"][..], "lenet7"),
        (
            &["--arch", "lenet5", "--widths", "3,9,4", "--modifier", "bn"][..],
            "modifier",
        ),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("layer-algebra: ") && err.contains(expect),
            "{args:?}: {err}"
        );
    }
}
