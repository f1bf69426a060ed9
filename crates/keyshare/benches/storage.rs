//! SecretStorage overhead over the bare store it wraps, measured in the same run.
//!
//! `cargo bench -p keyshare --bench storage` prints ns/op for the bare `MemoryStore` and for
//! `SecretStorage` over it (shared only, and shared + legacy), and the ratios. Target: `get`
//! within 1.5x of the bare store, single-threaded.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use keyshare::{MemoryStore, SecretKey, SecretStorage, SecretValue, Store};

/// Median ns per call over several rounds, so one noisy round does not decide the figure.
fn ns_per_op(mut op: impl FnMut(u64)) -> f64 {
    const ROUNDS: usize = 9;
    const ITERS: u64 = 200_000;
    for i in 0..ITERS / 4 {
        op(i);
    }
    let mut rounds: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..ITERS {
                op(i);
            }
            start.elapsed().as_nanos() as f64 / ITERS as f64
        })
        .collect();
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    rounds[ROUNDS / 2]
}

fn main() {
    // `cargo test --benches` runs bench binaries with `--bench` absent; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("storage bench: skipped (run with `cargo bench`)");
        return;
    }
    let keys: Vec<SecretKey> = (0..64)
        .map(|i| SecretKey::new(format!("extension.{i}.github.auth")).unwrap())
        .collect();
    let value = SecretValue::from_slice(&[7u8; 256]);

    let bare = Arc::new(MemoryStore::new());
    for k in &keys {
        bare.set(k, &value).unwrap();
    }
    let shared_only = SecretStorage::builder(bare.clone()).build();
    let legacy_shared = Arc::new(MemoryStore::new());
    let legacy = Arc::new(MemoryStore::new());
    for k in &keys {
        legacy_shared.set(k, &value).unwrap();
        legacy.set(k, &value).unwrap();
    }
    let dual = SecretStorage::builder(legacy_shared).legacy(legacy).build();
    dual.ready().unwrap();
    shared_only.ready().unwrap();

    let n = keys.len() as u64;
    let bare_get = ns_per_op(|i| {
        black_box(bare.get(&keys[(i % n) as usize]).unwrap());
    });
    let storage_get = ns_per_op(|i| {
        black_box(shared_only.get(&keys[(i % n) as usize]).unwrap());
    });
    let dual_get = ns_per_op(|i| {
        black_box(dual.get(&keys[(i % n) as usize]).unwrap());
    });
    let bare_set = ns_per_op(|i| {
        bare.set(&keys[(i % n) as usize], &value).unwrap();
    });
    let storage_set = ns_per_op(|i| {
        shared_only.set(&keys[(i % n) as usize], &value).unwrap();
    });
    let dual_set = ns_per_op(|i| {
        dual.set(&keys[(i % n) as usize], &value).unwrap();
    });

    println!("baseline  bare MemoryStore get:                 {bare_get:8.1} ns/op");
    println!("measured  SecretStorage get (shared only):      {storage_get:8.1} ns/op  ratio {:.2}x (target <= 1.50x)", storage_get / bare_get);
    println!(
        "measured  SecretStorage get (shared + legacy):  {dual_get:8.1} ns/op  ratio {:.2}x",
        dual_get / bare_get
    );
    println!("baseline  bare MemoryStore set:                 {bare_set:8.1} ns/op");
    println!(
        "measured  SecretStorage set (shared only):      {storage_set:8.1} ns/op  ratio {:.2}x",
        storage_set / bare_set
    );
    println!("measured  SecretStorage set (shared + legacy):  {dual_set:8.1} ns/op  ratio {:.2}x (two stores written)", dual_set / bare_set);
}
