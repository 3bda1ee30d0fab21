//! `aiq-report` (work in progress).
fn main() {
    eprintln!("aiq-report: not built yet");
    std::process::exit(2);
}
