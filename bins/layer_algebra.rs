//! `layer-algebra` (work in progress).
fn main() {
    eprintln!("layer-algebra: not built yet");
    std::process::exit(2);
}
