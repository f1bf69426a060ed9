//! The consistency contract, model-checked with the Electron store (a real `state.vscdb`) as the
//! app's legacy store, faults injected anywhere.
//!
//! `KEYSHARE_MODEL_CASES` overrides the number of cases (default 150; each case creates a
//! database).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keyshare::store::electron::{state_db_path, ElectronStore, SafeStorageKeys};
use keyshare::testing::model::{check_model, ModelConfig, ModelStores};
use keyshare::MemoryStore;

fn run(keys: fn() -> SafeStorageKeys) {
    // Memory-backed when possible: every write commits with an fsync, which on a disk costs far
    // more than the model's logic.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let next = AtomicUsize::new(0);
    let make = || {
        let db = state_db_path(
            &dir.path()
                .join(next.fetch_add(1, Ordering::Relaxed).to_string()),
        );
        let legacy = ElectronStore::builder(db, keys())
            .create(true)
            .open()
            .expect("a fresh state database opens");
        ModelStores {
            shared: Arc::new(MemoryStore::new()),
            legacy: Arc::new(legacy),
            journal: Arc::new(MemoryStore::new()),
        }
    };
    check_model(&ModelConfig::from_env(150), &make);
}

#[test]
fn consistency_contract_holds_with_a_v11_electron_legacy_store() {
    // As read from the app's Secret Service item: a typed password's checks are tested in
    // tests/electron.rs.
    run(|| SafeStorageKeys::linux_keyring(b"k8Q2Vx0mZt5bN1cR4yW7pA==", "test".to_owned(), false));
}

#[test]
fn consistency_contract_holds_with_a_basic_electron_legacy_store() {
    run(SafeStorageKeys::linux_basic);
}
