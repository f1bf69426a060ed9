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
//!
//! Also lays out the functions a lookup runs first in the binary, next to each other
//! (`startup-order.txt`, made and explained by `scripts/startup-order`): the kernel maps code
//! in 64 KiB windows as it is first touched, and spread over the whole binary those functions
//! touched ~45 windows per run. Only rust-lld, the linker Rust uses by default on x86-64 Linux
//! since 1.90, is given the list: GNU ld does not know the option.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    startup_order();
    static_unwinder();
}

/// Passes `startup-order.txt` to the linker when it is rust-lld: the x86-64 Linux target of a
/// rustc from 1.90 on, with no linker chosen in the configuration or flags (a chosen linker,
/// or `-fuse-ld`, may be GNU ld, which would fail on the option).
fn startup_order() {
    println!("cargo:rerun-if-changed=startup-order.txt");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.split('\x1f').any(|flag| {
        flag.contains("linker") || flag.contains("link-self-contained") || flag.contains("fuse-ld")
    }) {
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let Ok(out) = Command::new(rustc).arg("--version").output() else {
        return;
    };
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = String::from_utf8_lossy(&out.stdout);
    let mut numbers = version
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if (major, minor) < (1, 90) {
        return;
    }
    let list = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("startup-order.txt");
    println!(
        "cargo:rustc-link-arg-bin=keyshare=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    // Names this build does not have (the list covers several builds, and code changes) are
    // expected: they are skipped, and `scripts/startup-order check` says when too many are.
    println!("cargo:rustc-link-arg-bin=keyshare=-Wl,--no-warn-symbol-ordering");
}

/// Links GCC's unwinder in (see the top of this file).
fn static_unwinder() {
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
