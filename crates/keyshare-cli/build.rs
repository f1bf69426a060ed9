//! Links GCC's unwinder into the `keyshare` binary on Linux/glibc instead of loading
//! `libgcc_s.so.1` at every start.
//!
//! Most `keyshare` runs are one lookup, where process start-up is most of the time
//! (crates/keyshare-cli/benches/process.rs). Loading `libgcc_s` costs a library mapping, its
//! relocations, and its constructor, which runs `cpuid` over and over: each one a trap to the
//! hypervisor on a virtual machine. Rust's standard library only needs the `_Unwind_*`
//! functions from it (for panics and backtraces); with the same functions linked in from
//! `libgcc_eh.a` (what `gcc -static-libgcc` does), the linker, which links system libraries
//! `--as-needed`, no longer records the shared library as needed. Panics unwind and
//! backtraces print as before (tests/cli.rs checks that the binary does not load it).
//!
//! Where `libgcc_eh.a` cannot be found (another C toolchain), nothing changes.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    if !linux_gnu {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let Ok(out) = Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    else {
        return;
    };
    // An unknown file is echoed back as given, without a directory.
    let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !archive.is_absolute() || !archive.is_file() {
        return;
    }
    let dir = archive
        .parent()
        .expect("an absolute file path has a parent");
    println!("cargo:rustc-link-search=native={}", dir.display());
    // Whole archive: its members would otherwise be pulled in only for symbols undefined when
    // it is scanned, which is before the standard library asks for them.
    println!("cargo:rustc-link-lib=static:+whole-archive=gcc_eh");
}
