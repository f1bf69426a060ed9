//! Changes made outside the broker (another machine writing the shared store, an app or command
//! writing the vault file itself), found by polling and announced to subscribers as the usual
//! change events.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keyshare::store::openbao::{KvSnapshot, OpenBaoStore};
use keyshare::store::vault::ChangeMarks;
use keyshare::{ChangeKind, SecretKey, VaultStore};

/// Something the broker polls for changes it did not make. `poll` is called on a blocking
/// thread, once per [`ExternalChanges::interval`]; an error is logged and the next poll retries.
pub trait ChangeSource: Send {
    /// The changes since the previous successful poll.
    fn poll(&mut self) -> keyshare::Result<Vec<(SecretKey, ChangeKind)>>;
}

/// A [`ChangeSource`] and how often to poll it, for [`crate::BrokerState::with_external_changes`].
pub struct ExternalChanges {
    pub(crate) source: Box<dyn ChangeSource>,
    pub(crate) interval: Duration,
}

impl ExternalChanges {
    /// Polls `source` every `interval` (at least 1 ms).
    pub fn new(source: Box<dyn ChangeSource>, interval: Duration) -> Self {
        ExternalChanges {
            source,
            interval: interval.max(Duration::from_millis(1)),
        }
    }

    /// How often the source is polled.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl fmt::Debug for ExternalChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalChanges")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// Other machines' writes to an [`OpenBaoStore`]: its KV metadata compared between polls. Give
/// it the same store the broker's storage writes through, so the broker's own writes (already
/// announced) are not reported twice.
#[derive(Debug)]
pub struct OpenBaoChanges {
    store: Arc<OpenBaoStore>,
    last: Option<KvSnapshot>,
}

impl OpenBaoChanges {
    /// Starts with no baseline: the first successful poll takes one and reports nothing.
    pub fn new(store: Arc<OpenBaoStore>) -> Self {
        OpenBaoChanges { store, last: None }
    }

    /// Reports changes relative to `baseline` (from [`OpenBaoStore::snapshot`]).
    pub fn since(store: Arc<OpenBaoStore>, baseline: KvSnapshot) -> Self {
        OpenBaoChanges {
            store,
            last: Some(baseline),
        }
    }
}

impl ChangeSource for OpenBaoChanges {
    fn poll(&mut self) -> keyshare::Result<Vec<(SecretKey, ChangeKind)>> {
        match &self.last {
            None => {
                self.last = Some(self.store.snapshot()?);
                Ok(Vec::new())
            }
            Some(last) => {
                let (now, changes) = self.store.changes_since(last)?;
                self.last = Some(now);
                Ok(changes)
            }
        }
    }
}

/// Other processes' writes to a [`VaultStore`] (`--direct` commands, apps that open the vault
/// file themselves): found with [`VaultStore::changes_since`]. Give it the same store the
/// broker's storage writes through, so the broker's own writes (already announced) are not
/// reported twice.
#[derive(Debug)]
pub struct VaultChanges {
    store: Arc<VaultStore>,
    last: ChangeMarks,
}

impl VaultChanges {
    /// Reports changes relative to `baseline` (from [`VaultStore::change_marks`]).
    pub fn since(store: Arc<VaultStore>, baseline: ChangeMarks) -> Self {
        VaultChanges {
            store,
            last: baseline,
        }
    }
}

impl ChangeSource for VaultChanges {
    fn poll(&mut self) -> keyshare::Result<Vec<(SecretKey, ChangeKind)>> {
        self.store.changes_since(&mut self.last)
    }
}
