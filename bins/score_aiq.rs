//! `score-aiq` (work in progress).
fn main() {
    eprintln!("score-aiq: not built yet");
    std::process::exit(2);
}
