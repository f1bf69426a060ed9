//! The repair journal: what `SecretStorage` must remember across restarts to keep its
//! consistency contract when the shared and legacy stores disagree.
//!
//! Three facts, each persisted in a small `Store` of the app's own (never in the shared store,
//! which other apps write):
//! - `dirty(k, t)`: the shared copy of `k` may be stale; the legacy copy is authoritative until a
//!   repair copies it over. Written BEFORE a write that failed on the shared store is
//!   acknowledged, so an acknowledged value can never be shadowed by an older shared one. `t`
//!   is when that write failed: a change another app made to the shared copy after `t` is
//!   later than this app's write, and the repair keeps it (entries written before `t` was
//!   recorded have none: this app's copy wins their repair, as it always did).
//! - `migrated(k)`: `k` has reached the shared store, so from now on "not in the shared store"
//!   means "deleted" (possibly by another app) and the legacy copy must not resurrect it.
//! - `migration done`: every legacy key present at migration time is `migrated`; after this no
//!   legacy fallback happens for keys that are not dirty.
//!
//! Entries are named by a hash of the key, so that a 4096-byte key still fits in a key; the
//! entry's value holds the key itself, so the journal can be listed. A `dirty` entry's value
//! is a NUL byte, `t` as 8 big-endian bytes of nanoseconds since the Unix epoch, then the key
//! (a key cannot hold a NUL, so a value without the leading NUL is an entry from before `t`
//! was recorded: the key alone). The in-memory copy is
//! loaded once and written through; only this process writes its journal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::{SecretKey, SecretValue};
use crate::store::Store;

const DIRTY: &str = "dirty:";
const MIGRATED: &str = "migrated:";
const MIGRATION_DONE: &str = "migration-done";
/// Until when the first operation of a storage does not retry pending repairs: the last try
/// met a shared store that did not answer (8 big-endian bytes of nanoseconds since the Unix
/// epoch).
const REPAIRS_PAUSED_UNTIL: &str = "repairs-paused-until";

#[derive(Debug, Default, Clone)]
pub(crate) struct JournalState {
    /// Each dirty key, with when this app's write of it failed on the shared store (`None`
    /// for an entry from before that was recorded).
    pub(crate) dirty: HashMap<SecretKey, Option<SystemTime>>,
    pub(crate) migrated: HashSet<SecretKey>,
    pub(crate) migration_done: bool,
    pub(crate) repairs_paused_until: Option<SystemTime>,
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

/// A time as the journal stores it: 8 big-endian bytes of nanoseconds since the Unix epoch
/// (saturating: before 1970 is 0).
fn time_bytes(time: SystemTime) -> [u8; 8] {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .to_be_bytes()
}

fn time_from_bytes(bytes: [u8; 8]) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::from_be_bytes(bytes))
}

fn repairs_paused_name() -> SecretKey {
    SecretKey::new(REPAIRS_PAUSED_UNTIL).expect("valid key")
}

/// `dirty(key, failed_at)` as stored: a NUL, the time, then the key (the key alone for an
/// entry without a time, as written before times were recorded).
fn dirty_entry(key: &SecretKey, failed_at: Option<SystemTime>) -> (SecretKey, SecretValue) {
    let mut entry = Vec::with_capacity(9 + key.as_str().len());
    if let Some(failed_at) = failed_at {
        entry.push(0);
        entry.extend_from_slice(&time_bytes(failed_at));
    }
    entry.extend_from_slice(key.as_str().as_bytes());
    (entry_name(DIRTY, key), SecretValue::new(entry))
}

fn migrated_entry(key: &SecretKey) -> (SecretKey, SecretValue) {
    (
        entry_name(MIGRATED, key),
        SecretValue::from_slice(key.as_str().as_bytes()),
    )
}

fn migration_done_entry() -> (SecretKey, SecretValue) {
    (
        SecretKey::new(MIGRATION_DONE).expect("valid key"),
        SecretValue::from_slice(b"1"),
    )
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
        self.load_with(false).map(drop)
    }

    /// [`Self::load`], skipping the entries that cannot be read instead (logged); how many
    /// were skipped. For a journal about another shared store, which is only consulted.
    pub(crate) fn load_lenient(&self) -> Result<usize> {
        self.load_with(true)
    }

    fn load_with(&self, lenient: bool) -> Result<usize> {
        let mut skipped = 0;
        let mut state = JournalState::default();
        for name in self.store.keys()? {
            let name_str = name.as_str();
            if name_str == MIGRATION_DONE {
                state.migration_done = true;
                continue;
            }
            if name_str == REPAIRS_PAUSED_UNTIL {
                // Only a pause: one that cannot be read is no pause.
                if let Ok(Some(value)) = self.store.get(&name) {
                    if let Ok(bytes) = <[u8; 8]>::try_from(value.expose_secret()) {
                        state.repairs_paused_until = Some(time_from_bytes(bytes));
                    }
                }
                continue;
            }
            let dirty = name_str.starts_with(DIRTY);
            if !dirty && !name_str.starts_with(MIGRATED) {
                continue;
            }
            // Vanished between the listing and the read: nothing to remember.
            let value = match self.store.get(&name) {
                Ok(Some(value)) => value,
                Ok(None) => continue,
                Err(Error::Corrupt { .. }) if lenient => {
                    tracing::warn!(
                        entry = name_str,
                        "skipped an unreadable repair journal entry"
                    );
                    skipped += 1;
                    continue;
                }
                // Said as the journal's trouble, with the way out: the store's own words name
                // only an entry nobody knows (found by QA: every command of the app failed with
                // "the entry was left untouched" and nothing to do about it).
                Err(Error::Corrupt { detail, .. }) => {
                    return Err(Error::Corrupt {
                        store: "repair journal".to_owned(),
                        key: Some(name_str.to_owned()),
                        detail: format!(
                            "{detail}. This app stops rather than guess whether a key's shared \
                             copy is stale; `repair --forget-unreadable` (with this app's \
                             --app) removes such entries, losing the pending repair one may \
                             hold (the app's own copy of the key stays in its store)"
                        ),
                    })
                }
                Err(err) => return Err(err),
            };
            let corrupt = || Error::Corrupt {
                store: "repair journal".to_owned(),
                key: Some(name_str.to_owned()),
                detail: "the entry does not hold a valid key name".to_owned(),
            };
            let decoded = match value.expose_secret() {
                [0, rest @ ..] if dirty => rest
                    .split_first_chunk::<8>()
                    .map(|(time, key)| (Some(time_from_bytes(*time)), key)),
                key => Some((None, key)),
            }
            .and_then(|(failed_at, key)| Some((failed_at, SecretKey::from_bytes(key).ok()?)));
            let (failed_at, key) = match decoded {
                Some(decoded) => decoded,
                None if lenient => {
                    tracing::warn!(
                        entry = name_str,
                        "skipped an unreadable repair journal entry"
                    );
                    skipped += 1;
                    continue;
                }
                None => return Err(corrupt()),
            };
            if dirty {
                state.dirty.insert(key, failed_at);
            } else {
                state.migrated.insert(key);
            }
        }
        *self.write() = state;
        Ok(skipped)
    }

    pub(crate) fn is_dirty(&self, key: &SecretKey) -> bool {
        let state = self.read();
        !state.dirty.is_empty() && state.dirty.contains_key(key)
    }

    /// When this app's write of a dirty `key` failed on the shared store, if it is dirty and
    /// that was recorded.
    pub(crate) fn dirty_since(&self, key: &SecretKey) -> Option<SystemTime> {
        self.read().dirty.get(key).copied().flatten()
    }

    pub(crate) fn dirty_keys(&self) -> Vec<SecretKey> {
        self.read().dirty.keys().cloned().collect()
    }

    pub(crate) fn migration_done(&self) -> bool {
        self.read().migration_done
    }

    pub(crate) fn migrated_keys(&self) -> Vec<SecretKey> {
        self.read().migrated.iter().cloned().collect()
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

    /// Always writes, even when the in-memory copy already says dirty: a clear that failed
    /// after taking effect leaves memory saying "dirty" while the journal on disk does not, and
    /// trusting memory here would let a restart serve the stale shared copy.
    ///
    /// `failed_at` is when the shared store failed the write; a later failed write of the
    /// same key records its own, later time.
    pub(crate) fn mark_dirty(&self, key: &SecretKey, failed_at: SystemTime) -> Result<()> {
        self.mark_dirty_at(key, Some(failed_at))
    }

    /// [`Self::mark_dirty`], also for an entry whose time is not known.
    pub(crate) fn mark_dirty_at(
        &self,
        key: &SecretKey,
        failed_at: Option<SystemTime>,
    ) -> Result<()> {
        let (name, entry) = dirty_entry(key, failed_at);
        self.store.set(&name, &entry)?;
        self.write().dirty.insert(key.clone(), failed_at);
        Ok(())
    }

    /// What this journal says, as the entries that say it: to seed another journal with.
    pub(crate) fn entries(&self) -> Vec<(SecretKey, SecretValue)> {
        let state = self.read();
        let mut entries: Vec<_> = state
            .dirty
            .iter()
            .map(|(key, failed_at)| dirty_entry(key, *failed_at))
            .chain(state.migrated.iter().map(migrated_entry))
            .collect();
        if state.migration_done {
            entries.push(migration_done_entry());
        }
        entries
    }

    /// Removes `key`'s pending repair from the stored journal, whatever memory says (a journal
    /// seeded from this one took it over).
    pub(crate) fn forget_dirty(&self, key: &SecretKey) -> Result<()> {
        self.store.delete(&entry_name(DIRTY, key))?;
        self.write().dirty.remove(key);
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
        let (name, entry) = migrated_entry(key);
        self.store.set(&name, &entry)?;
        self.write().migrated.insert(key.clone());
        Ok(())
    }

    /// Until when pending repairs are not retried on a storage's first operation.
    pub(crate) fn repairs_paused_until(&self) -> Option<SystemTime> {
        self.read().repairs_paused_until
    }

    pub(crate) fn pause_repairs_until(&self, until: SystemTime) -> Result<()> {
        self.store.set(
            &repairs_paused_name(),
            &SecretValue::from_slice(&time_bytes(until)),
        )?;
        self.write().repairs_paused_until = Some(until);
        Ok(())
    }

    pub(crate) fn end_repairs_pause(&self) -> Result<()> {
        self.store.delete(&repairs_paused_name())?;
        self.write().repairs_paused_until = None;
        Ok(())
    }

    pub(crate) fn mark_migration_done(&self) -> Result<()> {
        let (name, entry) = migration_done_entry();
        self.store.set(&name, &entry)?;
        self.write().migration_done = true;
        Ok(())
    }
}
