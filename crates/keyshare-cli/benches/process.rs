//! `keyshare get` as a whole process vs a trivial Rust binary that only exits, in the same run.
//!
//! `cargo bench -p keyshare-cli --bench process`. Target: within 2x of the trivial binary's wall
//! time, on the embedded vault (key-file protection, the default on a machine with no keyring).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn median_wall(mut run: impl FnMut(), n: usize) -> Duration {
    for _ in 0..n / 10 {
        run();
    }
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

fn trivial_binary(dir: &Path) -> PathBuf {
    let src = dir.join("noop.rs");
    std::fs::write(&src, "fn main() {}\n").unwrap();
    let out = dir.join("noop");
    let status = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["-O", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("rustc runs");
    assert!(status.success(), "building the trivial binary failed");
    out
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

    let noop = trivial_binary(home.path());
    const N: usize = 300;
    // Both processes get the same small environment and the same stdout/stderr, so the only
    // difference is the program.
    let baseline = median_wall(
        || {
            let mut noop = Command::new(&noop);
            env(&mut noop);
            assert!(noop.status().unwrap().success());
        },
        N,
    );
    let measured = median_wall(
        || {
            let mut get = Command::new(keyshare);
            env(&mut get);
            let status = get
                .args(["--store", "vault", "--direct", "get", "github.auth"])
                .status()
                .unwrap();
            assert!(status.success(), "keyshare get failed");
        },
        N,
    );
    println!(
        "baseline  trivial Rust binary (exit only):  {:8.3} ms (median of {N})",
        baseline.as_secs_f64() * 1e3
    );
    println!(
        "measured  keyshare get (vault, key file):   {:8.3} ms (median of {N})  ratio {:.2}x (target <= 2.00x)",
        measured.as_secs_f64() * 1e3,
        measured.as_secs_f64() / baseline.as_secs_f64()
    );
}
