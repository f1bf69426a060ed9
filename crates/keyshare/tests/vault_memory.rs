//! What a vault read leaves behind in the process's memory once its value is dropped.
//!
//! A process serving secrets for days (the broker) must not keep copies of the values it served
//! in memory it no longer uses, where a memory image (hibernation, swap, a VM snapshot, root's
//! `gcore`) would find them long after (QA s18 F3). These tests read their own process's
//! writable memory through `/proc/self/mem` and look for the value's bytes.
//!
//! The scanner is `keyshare::testing::memory`.
//!
//! The copy QA found is a block the cipher leaves on the stack in an optimised build: without
//! the vault's stack wipe, `cargo test --release -p keyshare --test vault_memory` fails, and a
//! debug build happens to overwrite that block on its own (the unit test
//! `sealing_and_opening_leave_no_plaintext_on_the_stack` in `store/vault/crypto.rs` checks the
//! wipe itself in every build). This test looks at the whole process, heap included, so a copy
//! made anywhere on the vault's way fails it.

#![cfg(target_os = "linux")]

use std::fs;
use std::path::Path;

use keyshare::store::vault::VaultOptions;
use keyshare::testing::memory::{is_masked, masked_random_value, scan_now, unmasked, Needles};
use keyshare::{SecretKey, Store, VaultStore};

/// Held by each test for its whole run: a scan running in another test thread reads this
/// test's memory into its buffer while a value is live, and holds that copy until it has
/// masked it; a scan of this test at that moment finds it there (seen once under load: a hit in
/// an anonymous mapping right after a set).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn open(path: &Path) -> VaultStore {
    let mut options = VaultOptions::new(path, "memory-test");
    options.keys.passphrase_env = None;
    VaultStore::open(options).unwrap()
}

/// QA s18 F3: after a read, one 64-byte block of the value stayed in memory (the cipher's
/// stack temporary); after a write, the same. 40 bytes has no whole block, 5000 ends with one
/// outside the 256-byte batches, as do 100, 255 and 1000.
#[test]
fn a_vault_read_or_write_leaves_no_copy_of_the_value_in_memory() {
    let _alone = one_at_a_time();
    let dir = private_dir();
    let store = open(&dir.path().join("vault.db"));
    let key = SecretKey::new("k").unwrap();
    for len in [40, 100, 255, 1000, 5000] {
        let masked = masked_random_value(len);
        let needles = Needles::new(&masked);
        set_deep(&store, &key, &masked);
        let after_set = scan_now(&needles);
        get_deep(&store, &key, &masked);
        let after_get = scan_now(&needles);
        assert!(
            after_set.is_empty() && after_get.is_empty(),
            "{len}-byte value: windows found after set: {after_set:?}, after get: {after_get:?}"
        );
    }
}

/// The checks on the scanner: a copy of the value that is still alive is found.
#[test]
fn the_scan_finds_a_live_copy() {
    let _alone = one_at_a_time();
    let masked = masked_random_value(300);
    let needles = Needles::new(&masked);
    let copy = unmasked(&masked);
    let hits = scan_now(&needles);
    assert!(
        hits.iter().any(|hit| hit.value_offset == 256),
        "the last window of a live copy was not found: {hits:?}"
    );
    drop(copy);
}

// The vault is called below a 64 KiB frame: the scan's own calls, made from shallower frames,
// then do not overwrite what the call left on the stack before the scan reads it.

#[inline(never)]
fn set_deep(store: &VaultStore, key: &SecretKey, masked: &[u8]) {
    let pad = std::hint::black_box([0u8; 64 * 1024]);
    store.set(key, &unmasked(masked)).unwrap();
    std::hint::black_box(&pad);
}

#[inline(never)]
fn get_deep(store: &VaultStore, key: &SecretKey, masked: &[u8]) {
    let pad = std::hint::black_box([0u8; 64 * 1024]);
    let got = store.get(key).unwrap().unwrap();
    assert!(is_masked(&got, masked));
    drop(got);
    std::hint::black_box(&pad);
}
