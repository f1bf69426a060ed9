//! The macOS keychain as a [`Store`]: one generic password per key, `service` = the namespace,
//! `account` = the key.
//!
//! Which keychain:
//! - with an access group (given, or the first entry of this binary's `keychain-access-groups`
//!   entitlement): the data-protection keychain, items in that group, so that every app of the
//!   family signed into the group shares them without prompts;
//! - without: the login keychain (the legacy file keychain), where macOS may ask the user to
//!   allow access for each app.
//!
//! NEVER RUN on the project's machines (Linux only): type-checked and linted with
//! `cargo clippy -p keyshare --lib --target aarch64-apple-darwin`, against security-framework 3
//! and core-foundation 0.10. Run its tests on a Mac before relying on it.

mod entitlement;

use std::time::Duration;

use security_framework::base::Error as OsError;
use security_framework::item::{ItemClass, ItemSearchOptions, Limit};
use security_framework::passwords::{
    delete_generic_password_options, generic_password, set_generic_password_options,
    PasswordOptions,
};

use crate::error::{Error, Result, UnavailableReason};
use crate::model::{Limits, SecretKey, SecretValue};
use crate::store::os_call::call_with_timeout;
use crate::store::{Store, StoreInfo};

const STORE: &str = "macOS keychain";

// OSStatus codes (Security/SecBase.h).
const ERR_SEC_ITEM_NOT_FOUND: i32 = -25300;
const ERR_SEC_INTERACTION_NOT_ALLOWED: i32 = -25308;
const ERR_SEC_AUTH_FAILED: i32 = -25293;
const ERR_SEC_USER_CANCELED: i32 = -128;
const ERR_SEC_MISSING_ENTITLEMENT: i32 = -34018;
const ERR_SEC_NOT_AVAILABLE: i32 = -25291;
const ERR_SEC_NO_SUCH_KEYCHAIN: i32 = -25294;

/// The `kSecAttrAccount` key in attribute dictionaries returned by a search.
const ATTR_ACCOUNT: &str = "acct";

/// A [`Store`] over macOS keychain generic passwords within one service name.
#[derive(Debug)]
pub struct KeychainStore {
    namespace: String,
    /// `Some`: the data-protection keychain, in this access group. `None`: the login keychain.
    access_group: Option<String>,
    timeout: Duration,
    limits: Limits,
}

impl KeychainStore {
    /// A store for the items whose service is `namespace`. `access_group` comes from the
    /// configuration; when it is `None`, the binary's `keychain-access-groups` entitlement is
    /// consulted, and without one the login keychain is used. Every call gives up after
    /// `timeout` (a keychain call can block on a dialog).
    pub fn open(namespace: &str, access_group: Option<&str>, timeout: Duration) -> Result<Self> {
        if namespace.is_empty() {
            return Err(Error::invalid(
                "namespace",
                "a keychain service name cannot be empty",
            ));
        }
        let access_group = match access_group {
            Some(group) => Some(group.to_owned()),
            None => entitlement::keychain_access_groups().into_iter().next(),
        };
        Ok(KeychainStore {
            namespace: namespace.to_owned(),
            access_group,
            timeout,
            limits: Limits::default(),
        })
    }

    /// Replaces the value size limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The access group in use; `None` means the login keychain.
    pub fn access_group(&self) -> Option<&str> {
        self.access_group.as_deref()
    }

    fn options(namespace: &str, access_group: Option<&str>, key: &str) -> PasswordOptions {
        let mut options = PasswordOptions::new_generic_password(namespace, key);
        if let Some(group) = access_group {
            options.use_protected_keychain();
            options.set_access_group(group);
        }
        options
    }

    /// Runs `call` on a helper thread with what it needs moved in, bounded by the timeout.
    fn call<T: Send + 'static>(
        &self,
        doing: String,
        call: impl FnOnce(String, Option<String>) -> Result<T, OsError> + Send + 'static,
    ) -> Result<Option<T>> {
        let namespace = self.namespace.clone();
        let group = self.access_group.clone();
        let outcome =
            call_with_timeout(STORE, self.timeout, &doing, move || call(namespace, group))?;
        match outcome {
            Ok(value) => Ok(Some(value)),
            Err(e) if e.code() == ERR_SEC_ITEM_NOT_FOUND => Ok(None),
            Err(e) => Err(map_error(e, &doing)),
        }
    }
}

impl Store for KeychainStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "keychain",
            location: match &self.access_group {
                Some(group) => format!(
                    "data-protection keychain, access group {group}, service={}",
                    self.namespace
                ),
                None => format!("login keychain, service={}", self.namespace),
            },
            protection: "the macOS keychain (encrypted, unlocked with the user's login)".to_owned(),
        }
    }

    /// Errors: `Unavailable` (`Locked` when the keychain is locked and no UI may be shown,
    /// `Denied` when access is refused, `TimedOut` past the timeout, `Backend` otherwise).
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let account = key.as_str().to_owned();
        let found = self.call(
            format!("reading key {:?}", key.as_str()),
            move |ns, group| generic_password(Self::options(&ns, group.as_deref(), &account)),
        )?;
        Ok(found.map(SecretValue::new))
    }

    /// Adds the item, or updates it in place when it exists.
    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.limits.check_value(value)?;
        let account = key.as_str().to_owned();
        // The helper thread needs its own copy; it is zeroized when dropped.
        let value = value.clone();
        self.call(
            format!("writing key {:?}", key.as_str()),
            move |ns, group| {
                set_generic_password_options(
                    value.expose_secret(),
                    Self::options(&ns, group.as_deref(), &account),
                )
            },
        )?;
        Ok(())
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        let account = key.as_str().to_owned();
        let deleted = self.call(
            format!("deleting key {:?}", key.as_str()),
            move |ns, group| {
                delete_generic_password_options(Self::options(&ns, group.as_deref(), &account))
            },
        )?;
        Ok(deleted.is_some())
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        let found = self.call("listing keys".to_owned(), move |ns, group| {
            let mut search = ItemSearchOptions::new();
            search
                .class(ItemClass::generic_password())
                .service(&ns)
                .load_attributes(true)
                .limit(Limit::All);
            if let Some(group) = &group {
                search.ignore_legacy_keychains().access_group(group);
            }
            // Only attributes were loaded (no secret data); the account names leave the thread.
            search.search().map(|results| {
                results
                    .iter()
                    .map(|result| {
                        result
                            .simplify_dict()
                            .and_then(|attributes| attributes.get(ATTR_ACCOUNT).cloned())
                    })
                    .collect::<Vec<_>>()
            })
        })?;
        let mut keys = Vec::new();
        for account in found.unwrap_or_default() {
            match account.map(SecretKey::new) {
                Some(Ok(key)) => keys.push(key),
                Some(Err(e)) => {
                    tracing::warn!("skipping a keychain item whose account is not a valid key: {e}")
                }
                None => tracing::warn!("skipping a keychain item without an account"),
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn map_error(error: OsError, doing: &str) -> Error {
    let message = error.message().unwrap_or_default();
    let code = error.code();
    let (reason, detail) = match code {
        ERR_SEC_INTERACTION_NOT_ALLOWED => (
            UnavailableReason::Locked,
            format!(
                "{doing}: the keychain is locked and no dialog may be shown ({code}: {message}); \
                 unlock it (log in, or `security unlock-keychain`), or use the vault: --store vault"
            ),
        ),
        ERR_SEC_AUTH_FAILED | ERR_SEC_USER_CANCELED => (
            UnavailableReason::Denied,
            format!("{doing}: access was refused ({code}: {message})"),
        ),
        ERR_SEC_MISSING_ENTITLEMENT => (
            UnavailableReason::Denied,
            format!(
                "{doing}: this binary is not entitled to the keychain access group ({code}: \
                 {message}); sign it with a keychain-access-groups entitlement, or configure no \
                 access group to use the login keychain"
            ),
        ),
        ERR_SEC_NOT_AVAILABLE | ERR_SEC_NO_SUCH_KEYCHAIN => (
            UnavailableReason::NotRunning,
            format!("{doing}: no keychain is available ({code}: {message}); use the vault: --store vault"),
        ),
        _ => (
            UnavailableReason::Backend,
            format!("{doing}: keychain error {code}: {message}"),
        ),
    };
    Error::unavailable(STORE, reason, detail)
}
