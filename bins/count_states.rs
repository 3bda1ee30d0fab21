//! `count-states` (work in progress).
fn main() {
    eprintln!("count-states: not built yet");
    std::process::exit(2);
}
