//! The [`Store`] trait and the stores that implement it.
//!
//! A store is one place secrets live, bound at construction to one namespace (a flavour's
//! shared service name, an app's private vault, ...). The trait is deliberately small and
//! object-safe so that every store, including the broker client, is interchangeable behind
//! `Arc<dyn Store>`.

pub mod electron;
#[cfg(target_os = "macos")]
pub mod keychain;
mod memory;
#[cfg(feature = "openbao")]
pub mod openbao;
#[cfg(any(target_os = "macos", target_os = "windows"))]
mod os_call;
#[cfg(target_os = "linux")]
pub mod secret_service;
mod sqlite_check;
mod unreachable;
pub mod vault;
#[cfg(target_os = "windows")]
pub mod wincred;
#[cfg(any(target_os = "windows", test))]
mod wincred_parts;

pub use electron::ElectronStore;
#[cfg(target_os = "macos")]
pub use keychain::KeychainStore;
pub use memory::MemoryStore;
#[cfg(feature = "openbao")]
pub use openbao::{OpenBaoAuth, OpenBaoConfig, OpenBaoStore};
#[cfg(target_os = "linux")]
pub use secret_service::SecretServiceStore;
pub use unreachable::UnreachableStore;
pub use vault::VaultStore;
#[cfg(target_os = "windows")]
pub use wincred::CredentialManagerStore;

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::model::{SecretKey, SecretValue};

/// The default bound on any store call that can hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a store is, for `doctor` and for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    /// A short kind name: `memory`, `vault`, `secret-service`, `electron`, `broker`, ...
    pub kind: &'static str,
    /// Where the data lives (a path, a D-Bus collection, a socket), for humans.
    pub location: String,
    /// What protects the data at rest, in words, e.g. "key file (file permissions only)".
    pub protection: String,
}

impl fmt::Display for StoreInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {} ({})",
            self.kind, self.location, self.protection
        )
    }
}

/// One place secrets live, within one namespace.
///
/// Contracts every implementation keeps (the conformance suite in `keyshare::testing` checks
/// them):
/// - `get` returns `Ok(None)` when the key has no value; the empty value is `Ok(Some(empty))`.
/// - `set` is an upsert. When it returns `Ok`, a later `get` from any process returns the value.
/// - `delete` returns whether something was deleted; deleting a missing key is `Ok(false)`.
/// - `keys` lists every key with a value, in no particular order. An entry whose name is not a
///   valid [`SecretKey`] is skipped (and logged), never an error for the whole listing.
/// - Errors: [`crate::Error::Unavailable`] when the backing service cannot answer (locked,
///   denied, not running, or no answer within the store's timeout: no call may hang);
///   [`crate::Error::Corrupt`] when stored data cannot be decoded (and it is left untouched);
///   [`crate::Error::TooLarge`] when the value exceeds what this store can hold;
///   [`crate::Error::Io`] for local I/O failures; [`crate::Error::Invalid`] and
///   [`crate::Error::ProtectionUnavailable`] for requests a store will not carry out as asked
///   (a broker's store that is not the one asked for, a protection it cannot give). A store
///   that refuses (see [`crate::Error::is_refusal`]: `Denied`, `Invalid`, `TooLarge`,
///   `ProtectionUnavailable`) must not have taken the write; [`crate::SecretStorage`] then fails
///   the write, where after other errors it acknowledges it from the app's own copy and repairs
///   the shared one later.
/// - An error does not say whether the operation took effect: callers must allow both.
pub trait Store: Send + Sync + fmt::Debug {
    /// Describes the store.
    fn info(&self) -> StoreInfo;

    /// Reads a value.
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>>;

    /// Writes a value, replacing any previous one.
    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()>;

    /// Deletes a value; `Ok(false)` when there was none.
    fn delete(&self, key: &SecretKey) -> Result<bool>;

    /// Lists the keys that have values.
    fn keys(&self) -> Result<Vec<SecretKey>>;

    /// Writes several values, as `set` would one after the other. A store that can make them
    /// one durable operation overrides this (the vault: one transaction, all or nothing), which
    /// is what makes bulk imports fast. The default calls `set` for each, in order, and stops
    /// at the first error; as for every write, an error does not say what took effect.
    fn set_many(&self, entries: &[(SecretKey, SecretValue)]) -> Result<()> {
        entries
            .iter()
            .try_for_each(|(key, value)| self.set(key, value))
    }

    /// [`set_many`](Store::set_many) of `entries` only if the store holds no value yet; whether
    /// it wrote. A store that can check and write in one durable operation overrides this (the
    /// vault: one transaction), so that of two processes seeding the same empty store, the
    /// later writes nothing (an app's repair journal about a new shared store: the later seed
    /// could put back a repair the earlier process had carried out meanwhile). The default
    /// checks, then writes.
    fn set_many_if_empty(&self, entries: &[(SecretKey, SecretValue)]) -> Result<bool> {
        if !self.keys()?.is_empty() {
            return Ok(false);
        }
        self.set_many(entries)?;
        Ok(true)
    }

    /// [`set_many`](Store::set_many) of `entries` that later writes may join: a store that
    /// commits in one durable operation may call `more` just before it commits, and as long as
    /// it returns entries, write those in the same operation (all or nothing). Each entry
    /// passed in, or returned by `more`, is written when this returns `Ok`. A group commit
    /// (`SecretStorage`'s queue of sets) then carries the writes that arrived while this one
    /// was being prepared, instead of leaving them for the next flush. The default writes
    /// `entries` with `set_many` and never calls `more`.
    fn set_many_joining(
        &self,
        entries: &[(SecretKey, SecretValue)],
        more: &mut dyn FnMut() -> Vec<(SecretKey, SecretValue)>,
    ) -> Result<()> {
        let _ = more;
        self.set_many(entries)
    }

    /// Whether every call returns promptly on the calling thread: no I/O, no other process,
    /// no sleep, and no lock that anyone holds across I/O. `SecretStorage`'s async face then
    /// runs the call inline on the runtime thread instead of hopping to tokio's blocking pool,
    /// which costs two cross-thread wake-ups per operation.
    ///
    /// The default is `false`: when in doubt, a store blocks. Claiming `true` wrongly stalls
    /// the async runtime of every app using the store (on a single-threaded runtime, all of
    /// its tasks), so only stores that are plain in-process data structures claim it. A store
    /// that wraps another must not claim it just because the inner store does, unless it adds
    /// no blocking of its own.
    fn is_nonblocking(&self) -> bool {
        false
    }

    /// [`get`](Store::get), if it can be answered at once on the calling thread without
    /// waiting: for a lock another thread or process holds, for another process, for a slow
    /// device. `None` means "not without waiting" (nothing was read), and the caller then calls
    /// `get` where waiting is fine. `SecretStorage`'s async face asks this before handing a
    /// read to the blocking pool, whose two cross-thread wake-ups cost more than a read from a
    /// file the OS holds in memory.
    ///
    /// The default answers only for a [non-blocking](Store::is_nonblocking) store. A store that
    /// overrides it must never wait in it: on a single-threaded runtime that stalls every task.
    fn try_get_now(&self, key: &SecretKey) -> Option<Result<Option<SecretValue>>> {
        self.is_nonblocking().then(|| self.get(key))
    }

    /// A repair's write (see `SecretStorage::repair`): writes `value` (`None`: deletes the key)
    /// unless the key changed in this store after `after` (a set or a delete, by anyone), in
    /// one step. `Ok(true)` when it wrote, `Ok(false)` when the store's later change stands.
    ///
    /// Why: an app whose write the shared store failed repairs it later, and another app may
    /// have written or deleted the key in between; only the time of that change tells whose
    /// came last. The default, for a store that keeps no change times, always writes (this
    /// app's copy wins); a store that keeps them says so in
    /// [`keeps_change_times`](Store::keeps_change_times).
    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool> {
        let _ = after;
        match value {
            Some(value) => self.set(key, value)?,
            None => {
                self.delete(key)?;
            }
        }
        Ok(true)
    }

    /// [`write_unless_changed_after`](Store::write_unless_changed_after) of several values
    /// with one `after`: whether each was written, in order. A store that can make them one
    /// durable operation overrides it (the vault: one transaction), which is what keeps an
    /// import that must not write over another app's delete as fast as
    /// [`set_many`](Store::set_many). The default writes them one by one and stops at the
    /// first error; as for every write, an error does not say what took effect.
    fn set_many_unless_changed_after(
        &self,
        entries: &[(SecretKey, SecretValue)],
        after: SystemTime,
    ) -> Result<Vec<bool>> {
        entries
            .iter()
            .map(|(key, value)| self.write_unless_changed_after(key, Some(value), after))
            .collect()
    }

    /// Whether [`write_unless_changed_after`](Store::write_unless_changed_after) can tell a
    /// later change (the store records when each key was last set or deleted). Never blocks: a
    /// broker client answers from what the broker said when it last connected, and `false`
    /// (which promises nothing) before it has connected.
    fn keeps_change_times(&self) -> bool {
        false
    }

    /// When `key` was last deleted, if it has no value now and this store records deletes
    /// (one that [keeps change times](Store::keeps_change_times)); `Ok(None)` when it has a
    /// value, was never deleted, or the store records no deletes (the default).
    ///
    /// Why: a copy from before sharing (an import of a legacy store) must not bring back a
    /// secret another app deleted, and a dry run has to say so without writing. The real copy
    /// uses [`write_unless_changed_after`](Store::write_unless_changed_after), which checks
    /// and writes in one step; this only reads.
    fn deleted_at(&self, key: &SecretKey) -> Result<Option<SystemTime>> {
        let _ = key;
        Ok(None)
    }
}

impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    fn info(&self) -> StoreInfo {
        (**self).info()
    }
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        (**self).get(key)
    }
    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        (**self).set(key, value)
    }
    fn delete(&self, key: &SecretKey) -> Result<bool> {
        (**self).delete(key)
    }
    fn keys(&self) -> Result<Vec<SecretKey>> {
        (**self).keys()
    }
    fn set_many(&self, entries: &[(SecretKey, SecretValue)]) -> Result<()> {
        (**self).set_many(entries)
    }
    fn set_many_if_empty(&self, entries: &[(SecretKey, SecretValue)]) -> Result<bool> {
        (**self).set_many_if_empty(entries)
    }
    fn set_many_joining(
        &self,
        entries: &[(SecretKey, SecretValue)],
        more: &mut dyn FnMut() -> Vec<(SecretKey, SecretValue)>,
    ) -> Result<()> {
        (**self).set_many_joining(entries, more)
    }
    fn is_nonblocking(&self) -> bool {
        (**self).is_nonblocking()
    }
    fn try_get_now(&self, key: &SecretKey) -> Option<Result<Option<SecretValue>>> {
        (**self).try_get_now(key)
    }
    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool> {
        (**self).write_unless_changed_after(key, value, after)
    }
    fn set_many_unless_changed_after(
        &self,
        entries: &[(SecretKey, SecretValue)],
        after: SystemTime,
    ) -> Result<Vec<bool>> {
        (**self).set_many_unless_changed_after(entries, after)
    }
    fn keeps_change_times(&self) -> bool {
        (**self).keeps_change_times()
    }
    fn deleted_at(&self, key: &SecretKey) -> Result<Option<SystemTime>> {
        (**self).deleted_at(key)
    }
}
