//! The repair journal: what `SecretStorage` must remember across restarts to keep its
//! consistency contract when the shared and legacy stores disagree.
//!
//! Three facts, each persisted in a small `Store` of the app's own (never in the shared store,
//! which other apps write):
//! - `dirty(k)`: the shared copy of `k` may be stale; the legacy copy is authoritative until a
//!   repair copies it over. Written BEFORE a write that failed on the shared store is
//!   acknowledged, so an acknowledged value can never be shadowed by an older shared one.
//! - `migrated(k)`: `k` has reached the shared store, so from now on "not in the shared store"
//!   means "deleted" (possibly by another app) and the legacy copy must not resurrect it.
//! - `migration done`: every legacy key present at migration time is `migrated`; after this no
//!   legacy fallback happens for keys that are not dirty.
//!
//! Entries are named by a hash of the key, so that a 4096-byte key still fits in a key; the
//! entry's value holds the key itself, so the journal can be listed. The in-memory copy is
//! loaded once and written through; only this process writes its journal.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::{SecretKey, SecretValue};
use crate::store::Store;

const DIRTY: &str = "dirty:";
const MIGRATED: &str = "migrated:";
const MIGRATION_DONE: &str = "migration-done";

#[derive(Debug, Default, Clone)]
pub(crate) struct JournalState {
    pub(crate) dirty: HashSet<SecretKey>,
    pub(crate) migrated: HashSet<SecretKey>,
    pub(crate) migration_done: bool,
}

#[derive(Debug)]
pub(crate) struct Journal {
    store: Arc<dyn Store>,
    state: RwLock<JournalState>,
}

fn entry_name(prefix: &str, key: &SecretKey) -> SecretKey {
    let digest = Sha256::digest(key.as_str().as_bytes());
    SecretKey::new(format!("{prefix}{}", hex::encode(&digest[..16])))
        .expect("a prefix and 32 hex digits make a valid key")
}

impl Journal {
    pub(crate) fn new(store: Arc<dyn Store>) -> Self {
        Journal {
            store,
            state: RwLock::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, JournalState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, JournalState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the persisted journal into memory. An entry that cannot be read makes the whole
    /// load fail: guessing "not dirty" could let a stale shared value win.
    pub(crate) fn load(&self) -> Result<()> {
        let mut state = JournalState::default();
        for name in self.store.keys()? {
            let name_str = name.as_str();
            if name_str == MIGRATION_DONE {
                state.migration_done = true;
                continue;
            }
            let set = if name_str.starts_with(DIRTY) {
                &mut state.dirty
            } else if name_str.starts_with(MIGRATED) {
                &mut state.migrated
            } else {
                continue;
            };
            // Vanished between the listing and the read: nothing to remember.
            let Some(value) = self.store.get(&name)? else {
                continue;
            };
            let key = SecretKey::from_bytes(value.expose_secret()).map_err(|_| Error::Corrupt {
                store: "repair journal".to_owned(),
                key: Some(name_str.to_owned()),
                detail: "the entry does not hold a valid key name".to_owned(),
            })?;
            set.insert(key);
        }
        *self.write() = state;
        Ok(())
    }

    pub(crate) fn is_dirty(&self, key: &SecretKey) -> bool {
        let state = self.read();
        !state.dirty.is_empty() && state.dirty.contains(key)
    }

    pub(crate) fn dirty_keys(&self) -> Vec<SecretKey> {
        self.read().dirty.iter().cloned().collect()
    }

    pub(crate) fn migration_done(&self) -> bool {
        self.read().migration_done
    }

    pub(crate) fn is_migrated(&self, key: &SecretKey) -> bool {
        self.read().migrated.contains(key)
    }

    /// May a key missing from the shared store be served from the legacy store? Only while it
    /// has never reached the shared store: afterwards its absence there is a deletion.
    pub(crate) fn fallback_allowed(&self, key: &SecretKey) -> bool {
        let state = self.read();
        !state.migration_done && !state.migrated.contains(key)
    }

    /// Needs no legacy listing for `keys()` when nothing in legacy can be visible.
    pub(crate) fn legacy_invisible(&self) -> bool {
        let state = self.read();
        state.migration_done && state.dirty.is_empty()
    }

    fn record(&self, name: &SecretKey, key: &SecretKey) -> Result<()> {
        self.store
            .set(name, &SecretValue::from_slice(key.as_str().as_bytes()))
    }

    /// Always writes, even when the in-memory copy already says dirty: a clear that failed
    /// after taking effect leaves memory saying "dirty" while the journal on disk does not, and
    /// trusting memory here would let a restart serve the stale shared copy.
    pub(crate) fn mark_dirty(&self, key: &SecretKey) -> Result<()> {
        self.record(&entry_name(DIRTY, key), key)?;
        self.write().dirty.insert(key.clone());
        Ok(())
    }

    pub(crate) fn clear_dirty(&self, key: &SecretKey) -> Result<()> {
        if !self.is_dirty(key) {
            return Ok(());
        }
        self.store.delete(&entry_name(DIRTY, key))?;
        self.write().dirty.remove(key);
        Ok(())
    }

    pub(crate) fn mark_migrated(&self, key: &SecretKey) -> Result<()> {
        {
            let state = self.read();
            if state.migration_done || state.migrated.contains(key) {
                return Ok(());
            }
        }
        self.record(&entry_name(MIGRATED, key), key)?;
        self.write().migrated.insert(key.clone());
        Ok(())
    }

    pub(crate) fn mark_migration_done(&self) -> Result<()> {
        self.store.set(
            &SecretKey::new(MIGRATION_DONE).expect("valid key"),
            &SecretValue::from_slice(b"1"),
        )?;
        self.write().migration_done = true;
        Ok(())
    }
}
