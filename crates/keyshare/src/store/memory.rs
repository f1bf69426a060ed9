use std::collections::HashMap;
use std::sync::RwLock;

use crate::error::Result;
use crate::model::{Limits, SecretKey, SecretValue};
use crate::store::{Store, StoreInfo};

/// A store that keeps secrets in process memory only: for the `in-memory` storage type, for
/// tests, and as the reference that the conformance suite holds other stores to.
#[derive(Debug, Default)]
pub struct MemoryStore {
    entries: RwLock<HashMap<SecretKey, SecretValue>>,
    limits: Limits,
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

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SecretKey, SecretValue>> {
        // A panic while holding the lock cannot leave the map half-updated (every update is a
        // single insert or remove), so a poisoned lock is still safe to use.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SecretKey, SecretValue>> {
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
        Ok(self.read().get(key).cloned())
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.limits.check_value(value)?;
        self.write().insert(key.clone(), value.clone());
        Ok(())
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        Ok(self.write().remove(key).is_some())
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        Ok(self.read().keys().cloned().collect())
    }

    /// A map behind a lock held only for one insert, remove or lookup.
    fn is_nonblocking(&self) -> bool {
        true
    }
}
