//! `dump-states` (work in progress).
fn main() {
    eprintln!("dump-states: not built yet");
    std::process::exit(2);
}
