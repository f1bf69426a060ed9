//! Wall-time measurement shared by the process-level benches.

use std::time::{Duration, Instant};

/// The median wall time of each of `runs` over `n` runs each, taken in turns of `block`
/// consecutive runs (each turn preceded by a tenth of a block, at least one run, unmeasured),
/// so that a change in the machine's load during the measurement weighs on all of them alike.
/// A block of 1 alternates run by run; a larger one measures each program in its steady state,
/// which matters when a program leaves work behind it (a daemon still busy after it exits)
/// that would otherwise land on the next program's run.
pub fn median_walls(runs: &mut [&mut dyn FnMut()], n: usize, block: usize) -> Vec<Duration> {
    let block = block.clamp(1, n);
    let mut times = vec![Vec::with_capacity(n); runs.len()];
    for _ in 0..n / block {
        for (run, times) in runs.iter_mut().zip(&mut times) {
            for _ in 0..(block / 10).max(1) {
                run();
            }
            for _ in 0..block {
                let start = Instant::now();
                run();
                times.push(start.elapsed());
            }
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[t.len() / 2]
        })
        .collect()
}

/// How the `keyshare` binary measured was built, for the bench's output: the benches are built
/// with the same flags as the binary (`scripts/static-cargo` or plain cargo).
pub fn keyshare_build() -> &'static str {
    if cfg!(target_feature = "crt-static") {
        "built as installed, C library linked in (scripts/static-cargo)"
    } else if cfg!(all(
        target_arch = "x86_64",
        target_os = "linux",
        target_env = "gnu"
    )) {
        "loading libc.so.6: a plain cargo build, not as installed (scripts/static-cargo)"
    } else {
        "built as installed on this platform"
    }
}
