//! The `keyshare` command. Its commands arrive with the vault issue; this entry point exists so
//! the workspace layout is in place.

fn main() {
    eprintln!("keyshare: no commands yet");
    std::process::exit(2);
}
