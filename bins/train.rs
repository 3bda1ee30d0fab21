//! `train` (work in progress).
fn main() {
    eprintln!("train: not built yet");
    std::process::exit(2);
}
