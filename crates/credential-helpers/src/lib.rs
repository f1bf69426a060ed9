//! The wire protocols of two credential helpers that existing tools already call, over a
//! keyshare [`SecretStorage`](keyshare::SecretStorage):
//!
//! - [`git`]: git's credential helper protocol (`git help credential`), key=value lines.
//! - [`docker`]: the docker-credential-helpers protocol, JSON on stdin and stdout.
//!
//! Each module has a parser (pure, bounded, fuzzed under `fuzz/`), the key scheme that places
//! credentials in the flavour's shared store, and the operations over a storage. The binary
//! (`keyshare git-credential`, `docker-credential-keyshare`) only moves bytes between stdio and
//! these functions.
//!
//! Parsing lives here rather than in the CLI so that it can be fuzzed and unit-tested without a
//! process, and rather than in `keyshare` because the storage library should not know about
//! the tools that sit in front of it.
//!
//! ```
//! use std::sync::Arc;
//! use keyshare::{MemoryStore, SecretStorage};
//! use keyshare_credential_helpers::git;
//!
//! let storage = SecretStorage::builder(Arc::new(MemoryStore::new())).build();
//! let now = 1_700_000_000;
//! let approve = git::Request::parse(&b"protocol=https\nhost=example.com\nusername=alice\npassword=pw\n"[..])?;
//! git::store(&storage, &approve, now)?;
//! let fill = git::Request::parse(&b"protocol=https\nhost=example.com\n"[..])?;
//! let found = git::get(&storage, &fill, now)?.expect("stored above");
//! assert_eq!(found.username, "alice");
//! assert_eq!(found.password.expose_secret(), b"pw");
//! # Ok::<(), keyshare::Error>(())
//! ```

#![forbid(unsafe_code)]

pub mod docker;
pub mod git;
mod keys;
