//! The vault against bare SQLite, measured in the same run on the same disk.
//!
//! `cargo bench -p keyshare --bench vault` prints, each with its baseline and the ratio:
//! - `get` (query + XChaCha20-Poly1305 open) vs a bare rusqlite point SELECT of the same row
//!   on the same file. Target: within 3x.
//! - durable `set` rate (seal + `BEGIN IMMEDIATE` upsert + WAL commit with `synchronous=FULL`)
//!   vs bare single-row WAL + `synchronous=FULL` commits on a file in the same directory.
//!   Target: at least 0.8x.
//! - `VaultStore::open` + one `get` (what `keyshare get` adds to a process, key-file vault)
//!   vs spawning and reaping `/bin/true`. Target: at most 1x, so that `keyshare get` stays
//!   within 2x of a trivial binary's wall time.
//!
//! Rounds of the measured and baseline operations alternate; each figure is a median and each
//! ratio the median of the per-round ratios, so a noisy moment of the disk hits both sides.

use std::hint::black_box;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use keyshare::store::vault::{VaultOptions, VaultStore};
use keyshare::{SecretKey, SecretValue, Store};
use rusqlite::{Connection, OptionalExtension};

const NAMESPACE: &str = "dev.keyshare.shared-secrets";

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// Median ns per call of `measured` and of `baseline`, and the median of the per-round ratios
/// measured / baseline. Rounds alternate which side goes first, so a slow moment of the disk
/// (this is a shared virtual disk) lands on both sides.
fn compare(
    rounds: usize,
    iters: u64,
    mut measured: impl FnMut(u64),
    mut baseline: impl FnMut(u64),
) -> (f64, f64, f64) {
    let mut counter = 0u64;
    let mut time = |op: &mut dyn FnMut(u64)| {
        let start = Instant::now();
        for _ in 0..iters {
            counter += 1;
            op(counter);
        }
        start.elapsed().as_nanos() as f64 / iters as f64
    };
    // Warm-up: caches, prepared statements, the WAL.
    time(&mut measured);
    time(&mut baseline);
    let (mut m, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = time(&mut measured);
            (x, time(&mut baseline))
        } else {
            let y = time(&mut baseline);
            (time(&mut measured), y)
        };
        m.push(x);
        b.push(y);
        ratios.push(x / y);
    }
    (median(m), median(b), median(ratios))
}

fn options(path: &Path) -> VaultOptions {
    let mut options = VaultOptions::new(path, NAMESPACE);
    options.keys.passphrase_env = None;
    options.busy_timeout = Duration::from_secs(5);
    options
}

fn bare_connection(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn
}

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("vault bench: skipped (run with `cargo bench`)");
        return;
    }
    // On the target's disk rather than a tmpfs, so commits pay for real flushes.
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap().join("target"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.path().join("vault.db");
    println!("vault bench in {}", dir.path().display());

    let keys: Vec<SecretKey> = (0..64)
        .map(|i| SecretKey::new(format!("extension.{i}.github.auth")).unwrap())
        .collect();
    let value = SecretValue::from_slice(&[7u8; 256]);
    let n = keys.len() as u64;

    let store = VaultStore::open(options(&path)).unwrap();
    for k in &keys {
        store.set(k, &value).unwrap();
    }

    // --- get vs a bare point SELECT of the same rows in the same file.
    let bare = bare_connection(&path);
    let (vault_get, bare_get, get_ratio) = compare(
        15,
        20_000,
        |i| {
            black_box(store.get(&keys[(i % n) as usize]).unwrap().unwrap());
        },
        |i| {
            let row: Option<Vec<u8>> = bare
                .prepare_cached("SELECT sealed FROM secrets WHERE namespace = ?1 AND key = ?2")
                .unwrap()
                .query_row(
                    (NAMESPACE, keys[(i % n) as usize].as_str().as_bytes()),
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            black_box(row.unwrap());
        },
    );

    // --- durable set vs bare single-row WAL + synchronous=FULL commits, same directory.
    drop(bare);
    let bare_path = dir.path().join("bare.db");
    let bare_writes = bare_connection(&bare_path);
    bare_writes
        .execute_batch("CREATE TABLE t (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        .unwrap();
    let (vault_set, bare_set, set_ratio) = compare(
        60,
        20,
        |i| store.set(&keys[(i % n) as usize], &value).unwrap(),
        |i| {
            // As many bytes as a sealed 256-byte value, and never the same bytes twice:
            // SQLite skips writing a page whose content does not change.
            let mut row = vec![7u8; 256 + 41];
            row[..8].copy_from_slice(&i.to_le_bytes());
            bare_writes
                .prepare_cached(
                    "INSERT INTO t (k, v) VALUES (?1, ?2) \
                     ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                )
                .unwrap()
                .execute((keys[(i % n) as usize].as_str().as_bytes(), &row))
                .unwrap();
        },
    );

    // --- what a `keyshare get` process adds: open the vault and read one key.
    drop(store);
    let (open_get, spawn_true, open_ratio) = compare(
        20,
        20,
        |i| {
            let store = VaultStore::open(options(&path)).unwrap();
            black_box(store.get(&keys[(i % n) as usize]).unwrap().unwrap());
        },
        |_| {
            let status = std::process::Command::new("/bin/true").status().unwrap();
            assert!(status.success());
        },
    );

    println!("baseline  bare rusqlite point SELECT:             {bare_get:10.0} ns/op");
    println!(
        "measured  VaultStore::get (decrypt included):     {vault_get:10.0} ns/op  ratio {get_ratio:.2}x (target <= 3.00x)"
    );
    println!(
        "baseline  bare WAL+FULL single-row commits:       {:10.0} commits/s",
        1e9 / bare_set
    );
    println!(
        "measured  VaultStore::set (durable):              {:10.0} sets/s     ratio {:.2}x (target >= 0.80x)",
        1e9 / vault_set,
        1.0 / set_ratio
    );
    println!(
        "baseline  spawn + wait /bin/true:                 {:10.0} ns",
        spawn_true
    );
    println!(
        "measured  VaultStore::open + get (key file):      {open_get:10.0} ns      ratio {open_ratio:.2}x (target <= 1.00x: keyshare get within 2x of a trivial binary)"
    );
}
