//! `keyshare get` as a whole process vs a trivial Rust binary that only exits, in the same run.
//!
//! `scripts/static-cargo bench -p keyshare-cli --bench process` measures keyshare as it is
//! installed (glibc linked in); a plain `cargo bench` measures a build that loads libc.so.6.
//! Target: within 2x of the trivial binary's wall time (`rustc -O`, as Rust builds a program
//! by default), on the embedded vault (key-file protection, the default on a machine with no
//! keyring). The trivial binary built the way keyshare was is shown too.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod timing;
use timing::median_walls;

/// `fn main() {}` built with `rustc -O` and `extra` arguments.
fn trivial_binary(dir: &Path, name: &str, extra: &[String]) -> PathBuf {
    let src = dir.join("noop.rs");
    std::fs::write(&src, "fn main() {}\n").unwrap();
    let out = dir.join(name);
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["-O", "-o"])
        .arg(&out)
        .args(extra)
        .arg(&src)
        .status()
        .expect("rustc runs");
    assert!(status.success(), "building the trivial binary failed");
    out
}

/// Whether keyshare (and this bench, built with the same flags) link glibc in:
/// `scripts/static-cargo`.
const STATIC_LIBC: bool = cfg!(target_feature = "crt-static");

/// The rustc arguments that link the trivial binary as keyshare is linked: glibc linked in
/// (`scripts/static-cargo`), or else GCC's unwinder linked in as keyshare's build.rs does, if
/// this toolchain has it.
fn linked_like_keyshare_args() -> Option<Vec<String>> {
    if STATIC_LIBC {
        return Some(vec!["-Ctarget-feature=+crt-static".into()]);
    }
    let out = Command::new("cc")
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !archive.is_absolute() {
        return None;
    }
    Some(vec![
        "-L".into(),
        archive.parent()?.display().to_string(),
        "-l".into(),
        "static:+whole-archive=gcc_eh".into(),
    ])
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("process bench: skipped (run with `cargo bench`)");
        return;
    }
    let keyshare = env!("CARGO_BIN_EXE_keyshare");
    let home = tempfile::tempdir().unwrap();
    let env = |cmd: &mut Command| {
        cmd.env_clear()
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_RUNTIME_DIR", home.path().join("run"))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let mut set = Command::new(keyshare);
    env(&mut set);
    let mut child = set
        .args(["--store", "vault", "--direct", "set", "github.auth"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &[b'x'; 1024]).unwrap();
    assert!(child.wait().unwrap().success(), "keyshare set failed");

    let noop = trivial_binary(home.path(), "noop", &[]);
    // The same, linked as keyshare is: shown so the figure can be read both ways (keyshare's
    // start-up against what a Rust program costs by default, and against the cheapest Rust
    // program built the same way).
    let noop_linked =
        linked_like_keyshare_args().map(|args| trivial_binary(home.path(), "noop-linked", &args));
    const N: usize = 300;
    // Every process gets the same small environment and the same stdout/stderr, so the only
    // difference is the program.
    let run_trivial = |path: &Path| {
        let mut noop = Command::new(path);
        env(&mut noop);
        assert!(noop.status().unwrap().success());
    };
    let mut baseline = || run_trivial(&noop);
    let mut baseline_linked = || run_trivial(noop_linked.as_deref().unwrap_or(&noop));
    let mut measured = || {
        let mut get = Command::new(keyshare);
        env(&mut get);
        let status = get
            .args(["--store", "vault", "--direct", "get", "github.auth"])
            .status()
            .unwrap();
        assert!(status.success(), "keyshare get failed");
    };
    let medians = median_walls(
        &mut [&mut baseline, &mut baseline_linked, &mut measured],
        N,
        1,
    );
    let [baseline, baseline_linked, measured] = medians[..] else {
        unreachable!("three runs")
    };
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "baseline  trivial Rust binary (exit only):  {:8.3} ms (median of {N}; `rustc -O`, as Rust links by default)",
        ms(baseline)
    );
    if noop_linked.is_some() {
        println!(
            "          the same, linked as keyshare is:  {:8.3} ms (median of {N}; keyshare {:.2}x of it)",
            ms(baseline_linked),
            measured.as_secs_f64() / baseline_linked.as_secs_f64()
        );
    }
    println!(
        "measured  keyshare get (vault, key file):   {:8.3} ms (median of {N})  ratio {:.2}x (target <= 2.00x; keyshare {})",
        ms(measured),
        measured.as_secs_f64() / baseline.as_secs_f64(),
        timing::keyshare_build()
    );
}
