//! A memory store that runs a test's code before each call: to hold a call until the test
//! lets it go, count the calls inside at once, or note the thread a call ran on.

use std::fmt;

use crate::error::Result;
use crate::model::{SecretKey, SecretValue};
use crate::store::{MemoryStore, Store, StoreInfo};

/// The call a [`HookStore`] is about to make.
#[derive(Clone, Copy, Debug)]
pub enum Call<'a> {
    /// `get` of this key.
    Get(&'a SecretKey),
    /// `set` of this key.
    Set(&'a SecretKey),
    /// `set_many` of these entries.
    SetMany(&'a [(SecretKey, SecretValue)]),
    /// `delete` of this key.
    Delete(&'a SecretKey),
    /// `keys`.
    Keys,
}

type Hook = Box<dyn Fn(Call<'_>) + Send + Sync>;

/// A [`MemoryStore`] whose every call first runs a hook. Unlike the memory store it does not
/// say it never blocks, so `SecretStorage` treats it as a store that may (the blocking pool,
/// group commit), which is what a hook that waits needs.
pub struct HookStore {
    inner: MemoryStore,
    hook: Hook,
}

impl HookStore {
    /// A store that runs `hook` before each call.
    pub fn new(hook: impl Fn(Call<'_>) + Send + Sync + 'static) -> Self {
        HookStore {
            inner: MemoryStore::new(),
            hook: Box::new(hook),
        }
    }

    /// The memory store underneath, to look at without running the hook.
    pub fn inner(&self) -> &MemoryStore {
        &self.inner
    }
}

impl fmt::Debug for HookStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Store for HookStore {
    fn info(&self) -> StoreInfo {
        self.inner.info()
    }
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        (self.hook)(Call::Get(key));
        self.inner.get(key)
    }
    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        (self.hook)(Call::Set(key));
        self.inner.set(key, value)
    }
    fn set_many(&self, entries: &[(SecretKey, SecretValue)]) -> Result<()> {
        (self.hook)(Call::SetMany(entries));
        self.inner.set_many(entries)
    }
    fn delete(&self, key: &SecretKey) -> Result<bool> {
        (self.hook)(Call::Delete(key));
        self.inner.delete(key)
    }
    fn keys(&self) -> Result<Vec<SecretKey>> {
        (self.hook)(Call::Keys);
        self.inner.keys()
    }
    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: std::time::SystemTime,
    ) -> Result<bool> {
        match value {
            Some(_) => (self.hook)(Call::Set(key)),
            None => (self.hook)(Call::Delete(key)),
        }
        self.inner.write_unless_changed_after(key, value, after)
    }
    fn set_many_unless_changed_after(
        &self,
        entries: &[(SecretKey, SecretValue)],
        after: std::time::SystemTime,
    ) -> Result<Vec<bool>> {
        (self.hook)(Call::SetMany(entries));
        self.inner.set_many_unless_changed_after(entries, after)
    }
    fn keeps_change_times(&self) -> bool {
        self.inner.keeps_change_times()
    }
    fn deleted_at(&self, key: &SecretKey) -> Result<Option<std::time::SystemTime>> {
        (self.hook)(Call::Get(key));
        self.inner.deleted_at(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn the_hook_sees_every_call_before_the_store_does() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let store = {
            let seen = Arc::clone(&seen);
            HookStore::new(move |call| seen.lock().unwrap().push(format!("{call:?}")))
        };
        let key = SecretKey::new("k").unwrap();
        store.set(&key, &SecretValue::from_slice(b"v")).unwrap();
        assert!(store.get(&key).unwrap().is_some());
        store
            .set_many(&[(key.clone(), SecretValue::from_slice(b"w"))])
            .unwrap();
        assert_eq!(store.keys().unwrap(), vec![key.clone()]);
        assert!(store.delete(&key).unwrap());
        let seen = seen.lock().unwrap();
        let kinds: Vec<&str> = seen.iter().map(|c| c.split('(').next().unwrap()).collect();
        assert_eq!(kinds, ["Set", "Get", "SetMany", "Keys", "Delete"]);
        assert!(!store.is_nonblocking());
    }
}
