//! keyshare: one sign-in, shared by a family of applications through the OS keychain or an
//! embedded encrypted vault.
//!
//! The pieces, in the order data flows through them:
//! - [`SecretStorage`]: an app's secret storage. It writes to a shared store and the app's own
//!   legacy store, reads the shared store first, migrates legacy secrets lazily, orders
//!   operations per key, emits change events, and stays consistent when either store fails
//!   half-way (see `docs/architecture.md`).
//! - [`Store`]: one place secrets live. [`MemoryStore`] here; the vault, the OS keychains, the
//!   Electron legacy store and the broker client implement the same trait. [`VaultStore`] is
//!   the embedded encrypted SQLite vault.
//!
//! ```
//! use std::sync::Arc;
//! use keyshare::{MemoryStore, SecretKey, SecretStorage, SecretValue};
//!
//! let shared = Arc::new(MemoryStore::new());
//! let legacy = Arc::new(MemoryStore::new());
//! let storage = SecretStorage::builder(shared.clone()).legacy(legacy).build();
//!
//! let key = SecretKey::new("github.auth")?;
//! storage.set(&key, &SecretValue::from_slice(b"token"))?;
//! assert_eq!(storage.get(&key)?.unwrap().expose_secret(), b"token");
//! # Ok::<(), keyshare::Error>(())
//! ```

pub mod error;
pub mod model;
pub mod storage;
pub mod store;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::{Error, Result, UnavailableReason};
pub use model::{AppId, Flavour, Limits, SecretKey, SecretValue};
pub use storage::{
    pending_repairs_in_journal, seed_journal_from_earlier, AsyncSecretStorage, ChangeEvent,
    ChangeKind, Notification, SecretStorage, StorageType, Subscription,
};
#[cfg(target_os = "linux")]
pub use store::SecretServiceStore;
pub use store::{MemoryStore, Store, StoreInfo, UnreachableStore, VaultStore};
