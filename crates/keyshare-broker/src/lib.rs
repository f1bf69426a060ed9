//! The keyshare broker: one process per user and flavour owns the shared store and serves every
//! app over an authenticated local socket, so only the broker needs the store's privileges
//! (a keychain entitlement, the vault key) and every app sees the others' changes live.
//!
//! - [`protocol`]: length-prefixed JSON frames (`docs/protocol.md`).
//! - [`server::run`]: the server, a library function over an injected listener and a shutdown
//!   future; it serves a [`keyshare::SecretStorage`], so operations on one key are ordered
//!   across all clients.
//! - [`daemon`]: socket path, private directory, one instance per flavour, systemd socket
//!   activation, readiness, signals: what `keyshare serve` calls.
//! - [`stop`]: stopping a running broker from another process (`keyshare stop`).
//! - [`external`]: polling for changes other machines made to the shared store (OpenBao), so
//!   subscribers hear of them too.
//! - [`client`]: the async client (pipelined over one connection, autostarting the broker) and
//!   the blocking clients that implement [`keyshare::Store`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keyshare::{AppId, Flavour, MemoryStore, SecretKey, SecretStorage, SecretValue};
//! use keyshare_broker::client::{BrokerClient, ClientConfig};
//! use keyshare_broker::daemon::BrokerPaths;
//! use keyshare_broker::server::{run, BrokerState};
//!
//! let dir = tempfile::tempdir()?;
//! let paths = BrokerPaths::under(dir.path(), &Flavour::with_default_service("stable")?);
//! paths.ensure_dir()?;
//! let listener = tokio::net::UnixListener::bind(&paths.socket)?;
//! let storage = SecretStorage::builder(Arc::new(MemoryStore::new())).build();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(run(listener, async { let _ = stopped.await; }, BrokerState::new(storage)));
//!
//! let client = BrokerClient::connect(ClientConfig::with_paths(paths, AppId::new("code")?)).await?;
//! let key = SecretKey::new("github.auth")?;
//! client.set(&key, &SecretValue::from_slice(b"token")).await?;
//! assert_eq!(client.get(&key).await?.unwrap().expose_secret(), b"token");
//!
//! let _ = stop.send(());
//! server.await??;
//! # Ok(())
//! # }
//! ```

pub mod access;
pub mod client;
pub mod connection;
pub mod daemon;
pub mod external;
pub mod protocol;
pub mod server;
pub mod stop;

pub use client::{
    BlockingBrokerClient, BrokerClient, ClientConfig, ClientError, OneShotClient, TransportError,
};
pub use external::{ChangeSource, ExternalChanges, OpenBaoChanges, VaultChanges};
pub use protocol::RemoteError;
pub use server::{run, BrokerState, PolicyHandle, ServerOptions};
