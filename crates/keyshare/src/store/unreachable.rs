use crate::error::{Error, Result, UnavailableReason};
use crate::model::{SecretKey, SecretValue};
use crate::store::{Store, StoreInfo};

/// Stands in for a store that could not be opened: every call fails with the same
/// `Unavailable` error. With a legacy store beside it, `SecretStorage` keeps acknowledging
/// writes (into the legacy store, queued for repair) instead of failing outright.
#[derive(Debug)]
pub struct UnreachableStore {
    info: StoreInfo,
    reason: UnavailableReason,
    detail: String,
}

impl UnreachableStore {
    /// A stand-in for the store described by `info`, failing with `detail`.
    pub fn new(info: StoreInfo, reason: UnavailableReason, detail: impl Into<String>) -> Self {
        UnreachableStore {
            info,
            reason,
            detail: detail.into(),
        }
    }

    fn error(&self) -> Error {
        Error::unavailable(self.info.kind, self.reason, self.detail.clone())
    }
}

impl Store for UnreachableStore {
    fn info(&self) -> StoreInfo {
        self.info.clone()
    }
    fn get(&self, _: &SecretKey) -> Result<Option<SecretValue>> {
        Err(self.error())
    }
    fn set(&self, _: &SecretKey, _: &SecretValue) -> Result<()> {
        Err(self.error())
    }
    fn delete(&self, _: &SecretKey) -> Result<bool> {
        Err(self.error())
    }
    fn keys(&self) -> Result<Vec<SecretKey>> {
        Err(self.error())
    }
    /// Every call only builds an error.
    fn is_nonblocking(&self) -> bool {
        true
    }
}
