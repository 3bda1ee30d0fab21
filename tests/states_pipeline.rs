//! End to end on the MNIST fixture: `train | dump-states | score-aiq` through pipes and the
//! same stages through files give identical numbers; the thread count does not change the
//! states; damaged, cut or foreign streams give one clear error and a non-zero exit, a
//! pipe closed early ends quietly, and an output named by a FIFO is written into it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde_json::Value;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mnist")
}

const TRAIN_ARGS: [&str; 8] = [
    "--arch",
    "lenet5",
    "--widths",
    "3,9,4",
    "--max-epochs",
    "1",
    "--seed",
    "7",
];

fn bin(name: &str) -> Command {
    let path = match name {
        "train" => env!("CARGO_BIN_EXE_train"),
        "dump-states" => env!("CARGO_BIN_EXE_dump-states"),
        "count-states" => env!("CARGO_BIN_EXE_count-states"),
        "score-aiq" => env!("CARGO_BIN_EXE_score-aiq"),
        other => panic!("no binary {other}"),
    };
    Command::new(path)
}

fn ok(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs `cmd` with `input` on standard input.
fn feed(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The child may stop reading early (that is what some tests check): ignore the pipe error.
    let _ = stdin.write_all(input);
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// A temporary directory with a model trained once for all tests, and its states.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let run = Run {
            dir: tempfile::tempdir().unwrap(),
        };
        let model = run.path("model.bin");
        ok(
            bin("train")
                .args(TRAIN_ARGS)
                .arg("--data")
                .arg(fixture())
                .arg("-o")
                .arg(&model)
                .output()
                .unwrap(),
            "train",
        );
        ok(
            bin("dump-states")
                .arg("--model")
                .arg(&model)
                .arg("--data")
                .arg(fixture())
                .arg("-o")
                .arg(run.path("states.bin"))
                .output()
                .unwrap(),
            "dump-states",
        );
        run
    })
}

/// The score without provenance (which names the commands, so differs between routes).
fn numbers(json: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(json).unwrap();
    v.as_object_mut().unwrap().remove("provenance");
    v["model"].as_object_mut().unwrap().remove("provenance");
    v
}

#[test]
fn pipe_and_file_routes_agree() {
    let r = run();
    // Files: model -> states -> counts -> score, and states -> score directly.
    ok(
        bin("count-states")
            .arg(r.path("states.bin"))
            .arg("-o")
            .arg(r.path("counts.bin"))
            .output()
            .unwrap(),
        "count",
    );
    let via_counts = ok(
        bin("score-aiq")
            .arg(r.path("counts.bin"))
            .arg("--json")
            .output()
            .unwrap(),
        "score counts",
    );
    let via_states = ok(
        bin("score-aiq")
            .arg(r.path("states.bin"))
            .arg("--json")
            .output()
            .unwrap(),
        "score states",
    );
    // Pipes: train | dump-states | score-aiq (-o - and stdin throughout).
    let mut train = bin("train")
        .args(TRAIN_ARGS)
        .arg("--data")
        .arg(fixture())
        .args(["-o", "-"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut dump = bin("dump-states")
        .arg("--data")
        .arg(fixture())
        .stdin(train.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let piped = bin("score-aiq")
        .args(["--json", "-"])
        .stdin(dump.stdout.take().unwrap())
        .output()
        .unwrap();
    assert!(train.wait().unwrap().success() && dump.wait().unwrap().success());
    let piped = ok(piped, "score pipe");

    let card = numbers(&via_counts);
    assert_eq!(card, numbers(&via_states));
    assert_eq!(card, numbers(&piped));
    // What the pipeline reports is what the model says of itself and of the fixture.
    let layers = card["layers"].as_array().unwrap();
    let names: Vec<&str> = layers.iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["conv1", "conv2", "dense3"]);
    let inputs = card["inputs"].as_u64().unwrap();
    for (l, (neurons, positions)) in layers.iter().zip([(3, 576), (9, 64), (4, 1)]) {
        assert_eq!(l["neurons"], neurons);
        assert_eq!(l["observations"].as_u64().unwrap(), inputs * positions);
        let (h, e) = (
            l["entropy_bits"].as_f64().unwrap(),
            l["efficiency"].as_f64().unwrap(),
        );
        assert!(h > 0.0 && (e - h / f64::from(neurons)).abs() < 1e-12, "{l}");
    }
    assert_eq!(card["accuracy"], card["model"]["test_accuracy"]);
    assert_eq!(
        (card["dataset"].as_str(), card["split"].as_str()),
        (Some("mnist"), Some("test"))
    );
    assert_eq!(card["model"]["widths"], serde_json::json!([3, 9, 4]));
    let (p, net) = (
        card["accuracy"].as_f64().unwrap(),
        card["network_efficiency"].as_f64().unwrap(),
    );
    assert!((card["aiq"].as_f64().unwrap() - (p * p * net).cbrt()).abs() < 1e-12);
    // The table carries the same numbers.
    let table = String::from_utf8(ok(
        bin("score-aiq").arg(r.path("counts.bin")).output().unwrap(),
        "table",
    ))
    .unwrap();
    assert!(
        table.contains(&format!("{:.2}", card["aiq"].as_f64().unwrap() * 100.0)),
        "{table}"
    );
}

#[test]
fn thread_count_does_not_change_the_states() {
    let r = run();
    let counts = |threads: &str| {
        let states = ok(
            bin("dump-states")
                .arg("--model")
                .arg(r.path("model.bin"))
                .arg("--data")
                .arg(fixture())
                .args(["--threads", threads])
                .output()
                .unwrap(),
            "dump",
        );
        let counts = ok(feed(&mut bin("count-states"), &states), "count");
        aiq_count::read_counts(&mut counts.as_slice(), "counts").unwrap()
    };
    let (one, two) = (counts("1"), counts("2"));
    assert_eq!(one.layers, two.layers);
    assert_eq!(one.measurement.correct, two.measurement.correct);
}

#[test]
fn counts_streams_merge() {
    let r = run();
    let counts = ok(
        bin("count-states")
            .arg(r.path("states.bin"))
            .output()
            .unwrap(),
        "count",
    );
    let once = aiq_count::read_counts(&mut counts.as_slice(), "c").unwrap();
    let twice = ok(
        feed(
            bin("count-states").arg(r.path("states.bin")).arg("-"),
            &counts,
        ),
        "merge",
    );
    let twice = aiq_count::read_counts(&mut twice.as_slice(), "c").unwrap();
    for (a, b) in once.layers.iter().zip(&twice.layers) {
        assert_eq!(a.states, b.states);
        assert_eq!(b.observations, 2 * a.observations);
        assert!(a.counts.iter().zip(&b.counts).all(|(x, y)| 2 * x == *y));
    }
}

fn fails(out: Output, expect: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1, stderr: {err}");
    assert!(err.contains(expect), "expected {expect:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err:?}");
    assert!(out.stdout.is_empty());
}

/// `tool` fails on `bytes` with `expect` both through a pipe and from a file (which the
/// states tools map into memory and read by another route), naming the file.
fn fails_both_ways(tool: &str, bytes: &[u8], expect: &str) {
    fails(feed(&mut bin(tool), bytes), expect);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.states");
    std::fs::write(&path, bytes).unwrap();
    let out = bin(tool).arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    fails(out, expect);
    assert!(err.contains("damaged.states"), "{err}");
}

#[test]
fn damaged_streams_are_clear_errors() {
    let r = run();
    let states = std::fs::read(r.path("states.bin")).unwrap();
    let model = std::fs::read(r.path("model.bin")).unwrap();
    // Cut anywhere: reported as cut short, never scored in part.
    for cut in [
        0,
        5,
        12,
        100,
        states.len() / 3,
        states.len() / 2,
        states.len() - 17,
        states.len() - 1,
    ] {
        fails_both_ways("score-aiq", &states[..cut], "ends early");
        fails_both_ways("count-states", &states[..cut], "ends early");
    }
    // A model where states are expected, states where a model is expected.
    fails(
        feed(&mut bin("score-aiq"), &model),
        "expected a states or counts stream, found a model stream",
    );
    fails(
        feed(bin("dump-states").arg("--data").arg(fixture()), &states),
        "expected a model stream, found a states stream",
    );
    // Another format version.
    let mut v9 = states.clone();
    v9[8] = 9;
    fails(
        feed(&mut bin("score-aiq"), &v9),
        "version 9 is not supported",
    );
    // Not an aiq stream at all.
    fails(
        feed(&mut bin("score-aiq"), b"\x93NUMPY\x01\x00 something else"),
        "not an aiq stream",
    );
    // A header claiming absurd sizes: the first layer's neuron count set to 2^31.
    let at = states.windows(5).position(|w| w == b"conv1").unwrap() + 5;
    let mut absurd = states.clone();
    absurd[at..at + 4].copy_from_slice(&(1u32 << 31).to_le_bytes());
    fails(feed(&mut bin("score-aiq"), &absurd), "neurons");
    // Bits beyond a layer's neurons: the last state before the 20-byte end record is
    // dense3's (4 neurons, one byte); setting its high bits makes the stream corrupt.
    let mut flipped = states.clone();
    let n = flipped.len();
    flipped[n - 21] |= 0xf0;
    fails_both_ways("score-aiq", &flipped, "beyond its 4 neurons");
    fails_both_ways("count-states", &flipped, "beyond its 4 neurons");
    // A counts stream with data after its last layer.
    let mut counts = ok(
        bin("count-states")
            .arg(r.path("states.bin"))
            .output()
            .unwrap(),
        "count",
    );
    // Cut, or damaged inside its records (which score-aiq checks by their CRC-32, not by
    // decoding them), through a pipe and from a file; then with data after its end.
    for cut in [30, counts.len() / 2, counts.len() - 5, counts.len() - 1] {
        fails_both_ways("score-aiq", &counts[..cut], "ends early");
        fails_both_ways("count-states", &counts[..cut], "ends early");
    }
    let mut damaged = counts.clone();
    let last_record = damaged.len() - 4 - 1;
    damaged[last_record] ^= 0x10;
    fails_both_ways("score-aiq", &damaged, "CRC-32");
    counts.push(0);
    fails(feed(&mut bin("score-aiq"), &counts), "after the last layer");
    fails(
        bin("score-aiq")
            .arg(r.path("missing.bin"))
            .output()
            .unwrap(),
        "missing.bin",
    );
    fails(
        feed(bin("score-aiq").args(["--beta", "0"]), &states),
        "beta",
    );
}

#[test]
fn closed_pipe_ends_quietly() {
    let r = run();
    for tool in ["dump-states", "count-states"] {
        let mut cmd = bin(tool);
        if tool == "dump-states" {
            cmd.arg("--model")
                .arg(r.path("model.bin"))
                .arg("--data")
                .arg(fixture());
        } else {
            cmd.arg(r.path("states.bin"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut first = [0u8; 8];
        std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
        drop(stdout);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `-o` naming a FIFO (as `/dev/null`, `/dev/stdout` or a shell's `>(...)` do: not regular
/// files) writes into it and leaves it a FIFO, where a rename into place would replace it.
#[test]
fn output_to_a_fifo_is_written_into_it() {
    use std::os::unix::fs::FileTypeExt;
    let r = run();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("counts.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    let out = bin("count-states")
        .arg(r.path("states.bin"))
        .arg("-o")
        .arg(&fifo)
        .output()
        .unwrap();
    ok(out, "count-states -o FIFO");
    // Checked before the join: had the FIFO been replaced, its reader would wait forever.
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    let counts = reader.join().unwrap();
    let from_fifo = ok(feed(bin("score-aiq").arg("--json"), &counts), "score-aiq -");
    let direct = ok(
        bin("score-aiq")
            .arg("--json")
            .arg(r.path("states.bin"))
            .output()
            .unwrap(),
        "score-aiq states",
    );
    assert_eq!(numbers(&from_fifo), numbers(&direct));
}
