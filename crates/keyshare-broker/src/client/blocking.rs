//! The broker client behind the blocking [`Store`] trait, so an app's storage is
//! `SecretStorage::builder(Arc::new(broker)).legacy(own_store)`.

use std::fmt;
use std::sync::Arc;

use keyshare::{Result, SecretKey, SecretValue, Store, StoreInfo};

use crate::client::{BrokerClient, ClientConfig, ClientError, EventStream, ServerInfo};
use crate::protocol::BrokerStatus;

/// A [`BrokerClient`] with its own small runtime (one I/O thread), usable from any thread.
///
/// Calls from several threads share one connection and are pipelined. A process that makes a
/// call or two and exits is served faster by [`OneShotClient`](crate::client::OneShotClient).
/// Do not call it from
/// async code (it blocks the calling thread); use [`BrokerClient`] there, or the blocking
/// client from `spawn_blocking` (which is what `AsyncSecretStorage` does).
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

    fn block_on<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, ClientError>>,
    ) -> Result<T> {
        let runtime = self.runtime.as_ref().expect("present until drop");
        runtime
            .block_on(call)
            .map_err(|e| e.into_store_error(self.client.store_name()))
    }

    /// What the broker said in hello.
    pub fn server_info(&self) -> Result<ServerInfo> {
        self.block_on(self.client.server_info())
    }

    /// Connects (starting the broker if configured to) and says hello, keeping transport and
    /// remote failures apart, so a caller can tell "no broker" from "the broker refused".
    pub fn hello(&self) -> std::result::Result<ServerInfo, ClientError> {
        let runtime = self.runtime.as_ref().expect("present until drop");
        runtime.block_on(self.client.server_info())
    }

    /// The broker's state.
    pub fn status(&self) -> Result<BrokerStatus> {
        self.block_on(self.client.status())
    }

    /// Subscribes to changes; read the stream with [`EventStream::blocking_next`].
    pub fn subscribe(&self, keys: Option<Vec<SecretKey>>) -> Result<EventStream> {
        self.block_on(self.client.subscribe(keys))
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
        self.block_on(self.client.get(key))
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.block_on(self.client.set(key, value))
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        self.block_on(self.client.delete(key))
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        self.block_on(self.client.keys())
    }

    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: std::time::SystemTime,
    ) -> Result<bool> {
        self.block_on(self.client.write_unless_changed_after(key, value, after))
    }

    /// Asks the broker (its hello reply says), connecting if needed; `false` when it cannot
    /// be reached.
    fn keeps_change_times(&self) -> bool {
        self.server_info().is_ok_and(|info| info.keeps_change_times)
    }
}
