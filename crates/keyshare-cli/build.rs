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
//! touched ~45 windows per run. Only a linker that takes the list is given it (rust-lld, the
//! linker Rust uses by default on x86-64 Linux since 1.90, does; GNU ld does not): build.rs
//! links a probe with it first.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    startup_order();
    static_unwinder();
}

/// Passes `startup-order.txt` to the linker on Linux when the linker takes it: rust-lld (Rust's
/// default on x86-64 Linux since 1.90, in rustup's builds) and mold do, GNU ld does not (a
/// distribution's rustc, an older one, or a linker chosen in the configuration may use it).
fn startup_order() {
    println!("cargo:rerun-if-changed=startup-order.txt");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    // The probe's answer holds for the linker and flags it was asked with. Where they come from
    // the environment, a change reruns it (a host build also reruns it when they change in
    // cargo's configuration files, as the build script itself is then rebuilt; a cross build
    // given another linker there keeps the old answer until `cargo clean -p keyshare-cli`).
    let target = std::env::var("TARGET").expect("set by cargo");
    let triple = target.to_uppercase().replace(['-', '.'], "_");
    for var in [
        "RUSTFLAGS".to_owned(),
        "CARGO_ENCODED_RUSTFLAGS".to_owned(),
        "CARGO_BUILD_RUSTFLAGS".to_owned(),
        format!("CARGO_TARGET_{triple}_RUSTFLAGS"),
        format!("CARGO_TARGET_{triple}_LINKER"),
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let list = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("startup-order.txt");
    let args = [
        format!("-Wl,--symbol-ordering-file={}", list.display()),
        // Names this build does not have (the list covers several builds, and code changes)
        // are expected: they are skipped, and `scripts/startup-order check` says when too
        // many are.
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ];
    if !links_with(&args) {
        return;
    }
    for arg in args {
        println!("cargo:rustc-link-arg-bin=keyshare={arg}");
    }
}

/// Whether a program links with `link_args` added, as the binary will be linked: the same
/// compiler, target, flags and configured linker. Asking the linker is the one reliable test:
/// which linker `cc` runs depends on how rustc was built and configured.
fn links_with(link_args: &[String]) -> bool {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    let source = out_dir.join("link_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut probe = Command::new(rustc);
    probe
        .arg("--target")
        .arg(std::env::var("TARGET").expect("set by cargo"))
        .arg("-o")
        .arg(out_dir.join("link_probe"));
    // In cargo's order: the configured linker, then the flags, whose own `-C linker` wins.
    if let Some(linker) = std::env::var_os("RUSTC_LINKER") {
        let mut flag = std::ffi::OsString::from("linker=");
        flag.push(linker);
        probe.arg("-C").arg(flag);
    }
    probe.args(
        std::env::var("CARGO_ENCODED_RUSTFLAGS")
            .unwrap_or_default()
            .split('\x1f')
            .filter(|flag| !flag.is_empty()),
    );
    for arg in link_args {
        probe.arg("-C").arg(format!("link-arg={arg}"));
    }
    probe
        .arg(&source)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Links GCC's unwinder in (see the top of this file).
fn static_unwinder() {
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu");
    // Linking glibc in (scripts/static-cargo) links the unwinder in too.
    let static_libc = std::env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"));
    if !linux_gnu || static_libc {
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
