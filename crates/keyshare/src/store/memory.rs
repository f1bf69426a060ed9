use std::collections::HashMap;
use std::sync::RwLock;
use std::time::SystemTime;

use crate::error::Result;
use crate::model::{Limits, SecretKey, SecretValue};
use crate::store::{Store, StoreInfo};

/// A store that keeps secrets in process memory only: for the `in-memory` storage type, for
/// tests, and as the reference that the conformance suite holds other stores to. It records
/// when each key was last set or deleted, as the vault does, so that repairs across apps can be
/// tested against it.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RwLock<Entries>,
    limits: Limits,
}

#[derive(Debug, Default)]
struct Entries {
    values: HashMap<SecretKey, SecretValue>,
    /// When each key was last set or deleted (deleted keys stay here).
    changed: HashMap<SecretKey, SystemTime>,
}

impl Entries {
    fn set(&mut self, key: &SecretKey, value: &SecretValue) {
        self.values.insert(key.clone(), value.clone());
        self.changed.insert(key.clone(), SystemTime::now());
    }

    fn delete(&mut self, key: &SecretKey) -> bool {
        self.changed.insert(key.clone(), SystemTime::now());
        self.values.remove(key).is_some()
    }
}

impl MemoryStore {
    /// An empty store with default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        MemoryStore {
            entries: RwLock::default(),
            limits,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        // A panic while holding the lock cannot leave the maps torn in a way that matters
        // (each update is an insert or remove and a time), so a poisoned lock is still safe.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store for MemoryStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "memory",
            location: "process memory".to_owned(),
            protection: "none (lost when the process exits)".to_owned(),
        }
    }

    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        Ok(self.read().values.get(key).cloned())
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.limits.check_value(value)?;
        self.write().set(key, value);
        Ok(())
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        Ok(self.write().delete(key))
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        Ok(self.read().values.keys().cloned().collect())
    }

    /// A map behind a lock held only for one insert, remove or lookup.
    fn is_nonblocking(&self) -> bool {
        true
    }

    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool> {
        if let Some(value) = value {
            self.limits.check_value(value)?;
        }
        let mut entries = self.write();
        if entries
            .changed
            .get(key)
            .is_some_and(|changed| *changed > after)
        {
            return Ok(false);
        }
        match value {
            Some(value) => entries.set(key, value),
            None => {
                entries.delete(key);
            }
        }
        Ok(true)
    }

    fn keeps_change_times(&self) -> bool {
        true
    }

    fn deleted_at(&self, key: &SecretKey) -> Result<Option<SystemTime>> {
        let entries = self.read();
        if entries.values.contains_key(key) {
            return Ok(None);
        }
        Ok(entries.changed.get(key).copied())
    }
}
