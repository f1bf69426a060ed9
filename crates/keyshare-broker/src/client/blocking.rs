//! The broker client behind the blocking [`Store`] trait, so an app's storage is
//! `SecretStorage::builder(Arc::new(broker)).legacy(own_store)`.

use std::fmt;
use std::sync::Arc;

use keyshare::{Result, SecretKey, SecretValue, Store, StoreInfo};

use crate::client::{
    BrokerClient, ClientConfig, ClientError, EventStream, ServerInfo, TransportError,
};
use crate::protocol::BrokerStatus;

/// A [`BrokerClient`] with its own small runtime (one I/O thread), usable from any thread.
///
/// Calls from several threads share one connection and are pipelined. A process that makes a
/// call or two and exits is served faster by [`OneShotClient`](crate::client::OneShotClient).
///
/// Every method but [`keeps_change_times`](Store::keeps_change_times) blocks the calling thread
/// until the broker answered (at most the configured timeout per request, plus starting a
/// broker). Called from async code, a method works (it runs the request on this client's own
/// runtime and waits for it: it never panics with "Cannot start a runtime from within a
/// runtime"), but the thread it blocks is the caller's runtime's, which runs no other task
/// meanwhile. So from async code, use [`BrokerClient`] ([`async_client`](Self::async_client)),
/// or call this one from `spawn_blocking` (which is what `AsyncSecretStorage` does).
pub struct BlockingBrokerClient {
    // `Option` so that `Drop` can shut the runtime down without blocking, which would panic if
    // the last reference were dropped inside an async context.
    runtime: Option<tokio::runtime::Runtime>,
    client: Arc<BrokerClient>,
}

impl fmt::Debug for BlockingBrokerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BlockingBrokerClient")
            .field(&self.client)
            .finish()
    }
}

impl Drop for BlockingBrokerClient {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl BlockingBrokerClient {
    /// A client that connects on first use.
    pub fn new(config: ClientConfig) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keyshare-broker-client")
            .enable_all()
            .build()
            .map_err(|e| keyshare::Error::io("starting the broker client's runtime", e))?;
        Ok(BlockingBrokerClient {
            runtime: Some(runtime),
            client: Arc::new(BrokerClient::new(config)),
        })
    }

    /// A client that has connected already (starting the broker if configured to).
    pub fn connect(config: ClientConfig) -> Result<Self> {
        let client = Self::new(config)?;
        client.server_info()?;
        Ok(client)
    }

    /// The async client inside, for subscriptions from async code.
    pub fn async_client(&self) -> &Arc<BrokerClient> {
        &self.client
    }

    /// Runs the call `call` makes of the async client to completion, blocking this thread.
    fn run<T, F>(
        &self,
        call: impl FnOnce(Arc<BrokerClient>) -> F,
    ) -> std::result::Result<T, ClientError>
    where
        F: std::future::Future<Output = std::result::Result<T, ClientError>> + Send + 'static,
        T: Send + 'static,
    {
        let runtime = self.runtime.as_ref().expect("present until drop");
        let call = call(Arc::clone(&self.client));
        if tokio::runtime::Handle::try_current().is_err() {
            return runtime.block_on(call);
        }
        // In a runtime's context (a task, or `spawn_blocking`), where `block_on` may panic
        // ("Cannot start a runtime from within a runtime"; found in an API review). The call
        // runs on this client's runtime, whose thread no caller's task ever holds, and this
        // thread waits for its result on a channel that needs no runtime.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(call.await);
        });
        rx.recv()
            .unwrap_or_else(|_| Err(TransportError::Closed.into()))
    }

    fn block_on<T, F>(&self, call: impl FnOnce(Arc<BrokerClient>) -> F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<T, ClientError>> + Send + 'static,
        T: Send + 'static,
    {
        self.run(call)
            .map_err(|e| e.into_store_error(self.client.store_name()))
    }

    /// What the broker said in hello.
    pub fn server_info(&self) -> Result<ServerInfo> {
        self.block_on(|client| async move { client.server_info().await })
    }

    /// Connects (starting the broker if configured to) and says hello, keeping transport and
    /// remote failures apart, so a caller can tell "no broker" from "the broker refused".
    pub fn hello(&self) -> std::result::Result<ServerInfo, ClientError> {
        self.run(|client| async move { client.server_info().await })
    }

    /// The broker's state.
    pub fn status(&self) -> Result<BrokerStatus> {
        self.block_on(|client| async move { client.status().await })
    }

    /// Subscribes to changes of `keys` (all keys this app may see when `None`); read the
    /// stream with [`EventStream::blocking_next`].
    ///
    /// As [`BrokerClient::subscribe`]: each subscription has a connection of its own, so a
    /// client may hold several, each getting the events of its own keys, and a later one never
    /// ends an earlier one. A stream ends (`None`) only when its connection closed (resubscribe
    /// then); dropping it closes the connection.
    pub fn subscribe(&self, keys: Option<Vec<SecretKey>>) -> Result<EventStream> {
        self.block_on(|client| async move { client.subscribe(keys).await })
    }
}

impl Store for BlockingBrokerClient {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "broker",
            location: self.client.config().paths.socket.display().to_string(),
            protection: "the broker process's store, reached over a same-user socket".to_owned(),
        }
    }

    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let key = key.clone();
        self.block_on(|client| async move { client.get(&key).await })
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        let (key, value) = (key.clone(), value.clone());
        self.block_on(|client| async move { client.set(&key, &value).await })
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        let key = key.clone();
        self.block_on(|client| async move { client.delete(&key).await })
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        self.block_on(|client| async move { client.keys().await })
    }

    fn deleted_at(&self, key: &SecretKey) -> Result<Option<std::time::SystemTime>> {
        let key = key.clone();
        self.block_on(|client| async move { client.deleted_at(&key).await })
    }

    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: std::time::SystemTime,
    ) -> Result<bool> {
        let (key, value) = (key.clone(), value.cloned());
        self.block_on(move |client| async move {
            client
                .write_unless_changed_after(&key, value.as_ref(), after)
                .await
        })
    }

    /// What the broker said in hello on this client's latest connection, without blocking:
    /// `false` before the first connection (or [`connect`](Self::connect) and
    /// [`server_info`](Self::server_info), which connect, to know at once).
    ///
    /// It never connects: `AsyncSecretStorage` asks it from async code, where connecting
    /// (waiting for a broker, starting one) would block the caller's runtime; it used to, and
    /// panicked there (found in an API review). `false` is the answer that promises nothing:
    /// that a repair's conditional write may not be refused, which holds of any broker (one
    /// that keeps change times refuses only a write a later change overtook).
    fn keeps_change_times(&self) -> bool {
        self.client
            .last_server_info()
            .is_some_and(|info| info.keeps_change_times)
    }
}
