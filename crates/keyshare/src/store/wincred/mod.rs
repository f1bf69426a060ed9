//! Windows Credential Manager as a [`Store`]: generic credentials persisted on this machine
//! (`CRED_PERSIST_LOCAL_MACHINE`), target name `<namespace>:<key>`, user name `<key>`.
//!
//! A credential blob holds at most 2560 bytes. A longer value is split: the first 2560 bytes in
//! the main credential, the rest in parts `<namespace>#<n>:<key>` (n = 1, 2, ...), each starting
//! with the 8-byte id of the write that made it. The main credential's attribute
//! `keyshare.parts` holds the number of parts (u32, little endian) and that id, so a reader
//! detects parts left over from another write. Parts are written before the main credential and
//! deleted after it, so a reader never finds a main credential whose parts are not written yet.
//!
//! NEVER RUN on the project's machines (Linux only): type-checked and linted for
//! x86_64-pc-windows-gnu; the splitting (`wincred_parts`) is unit-tested everywhere.

mod ffi;

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result, UnavailableReason};
use crate::model::{Limits, SecretKey, SecretValue};
use crate::store::os_call::call_with_timeout;
use crate::store::wincred_parts as parts;
use crate::store::{Store, StoreInfo};

const STORE: &str = "Windows Credential Manager";
const PARTS_ATTRIBUTE: &str = "keyshare.parts";
const ERROR_NO_SUCH_LOGON_SESSION: u32 = 1312;

/// A [`Store`] over Windows Credential Manager within one namespace.
#[derive(Debug)]
pub struct CredentialManagerStore {
    namespace: Arc<str>,
    timeout: Duration,
    limits: Limits,
}

impl CredentialManagerStore {
    /// A store for the credentials named `<namespace>:<key>`. Every call gives up after
    /// `timeout`.
    pub fn open(namespace: &str, timeout: Duration) -> Result<Self> {
        if namespace.is_empty() || namespace.contains([':', '#', '*']) {
            return Err(Error::invalid(
                "namespace",
                "a Credential Manager namespace must be non-empty without ':', '#' or '*'",
            ));
        }
        Ok(CredentialManagerStore {
            namespace: namespace.into(),
            timeout,
            limits: Limits::default(),
        })
    }

    /// Replaces the value size limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn call<T: Send + 'static>(
        &self,
        doing: String,
        call: impl FnOnce(&str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let namespace = self.namespace.clone();
        call_with_timeout(STORE, self.timeout, &doing, move || call(&namespace))?
    }
}

fn main_target(namespace: &str, key: &str) -> String {
    format!("{namespace}:{key}")
}

fn part_target(namespace: &str, n: u32, key: &str) -> String {
    format!("{namespace}#{n}:{key}")
}

fn os_error(code: u32, doing: &str) -> Error {
    if code == ERROR_NO_SUCH_LOGON_SESSION {
        return Error::unavailable(
            STORE,
            UnavailableReason::NotRunning,
            format!(
                "{doing}: this logon session has no credential store (a service or network \
                 logon); use the vault: --store vault"
            ),
        );
    }
    Error::unavailable(
        STORE,
        UnavailableReason::Backend,
        format!("{doing}: Win32 error {code}"),
    )
}

enum Read {
    Found(SecretValue),
    Missing,
    /// Parts do not match the main credential: another write is under way.
    Torn,
}

fn read_once(namespace: &str, key: &str, doing: &str) -> Result<Read> {
    let Some(main) =
        ffi::read(&main_target(namespace, key), PARTS_ATTRIBUTE).map_err(|e| os_error(e, doing))?
    else {
        return Ok(Read::Missing);
    };
    let Some(header) = main.attribute else {
        return Ok(Read::Found(SecretValue::from(main.blob)));
    };
    let Some(header) = parts::parse_header(&header) else {
        return Err(Error::Corrupt {
            store: STORE.to_owned(),
            key: Some(key.to_owned()),
            detail: format!("the {PARTS_ATTRIBUTE} attribute is malformed"),
        });
    };
    let mut value = main.blob;
    for n in 1..=header.parts {
        let part =
            ffi::read(&part_target(namespace, n, key), "").map_err(|e| os_error(e, doing))?;
        match part {
            Some(part) if parts::append_part(&mut value, &header, &part.blob) => {}
            _ => return Ok(Read::Torn),
        }
    }
    Ok(Read::Found(SecretValue::from(value)))
}

/// Deletes parts from `first` on, until one is missing.
fn delete_parts_from(namespace: &str, key: &str, first: u32, doing: &str) -> Result<()> {
    let mut n = first;
    while ffi::delete(&part_target(namespace, n, key)).map_err(|e| os_error(e, doing))? {
        n += 1;
    }
    Ok(())
}

impl Store for CredentialManagerStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "wincred",
            location: format!("Windows Credential Manager, targets {}:*", self.namespace),
            protection: "Credential Manager (DPAPI, this user on this machine)".to_owned(),
        }
    }

    /// Errors: `Unavailable` (`NotRunning` without a credential store in this logon session,
    /// `TimedOut`, `Backend`); `Corrupt` when the parts header is malformed.
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let key = key.as_str().to_owned();
        let doing = format!("reading key {key:?}");
        self.call(doing.clone(), move |namespace| {
            for _ in 0..3 {
                match read_once(namespace, &key, &doing)? {
                    Read::Found(value) => return Ok(Some(value)),
                    Read::Missing => return Ok(None),
                    Read::Torn => continue,
                }
            }
            Err(Error::Corrupt {
                store: STORE.to_owned(),
                key: Some(key),
                detail: "parts of the value are missing or belong to another write".to_owned(),
            })
        })
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.limits.check_value(value)?;
        let key = key.as_str().to_owned();
        let value = value.clone();
        let doing = format!("writing key {key:?}");
        self.call(doing.clone(), move |namespace| {
            let id = RandomState::new()
                .hash_one((std::time::SystemTime::now(), std::process::id()))
                .to_le_bytes();
            let split = parts::split(value.expose_secret(), id);
            for (i, blob) in split.parts.iter().enumerate() {
                ffi::write(
                    &part_target(namespace, i as u32 + 1, &key),
                    &key,
                    blob,
                    None,
                )
                .map_err(|e| os_error(e, &doing))?;
            }
            let attribute = split.header.as_deref().map(|h| (PARTS_ATTRIBUTE, h));
            ffi::write(&main_target(namespace, &key), &key, split.main, attribute)
                .map_err(|e| os_error(e, &doing))?;
            let parts = split.parts.len() as u32;
            // Parts of an older, longer value.
            delete_parts_from(namespace, &key, parts + 1, &doing)
        })
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        let key = key.as_str().to_owned();
        let doing = format!("deleting key {key:?}");
        self.call(doing.clone(), move |namespace| {
            let deleted =
                ffi::delete(&main_target(namespace, &key)).map_err(|e| os_error(e, &doing))?;
            delete_parts_from(namespace, &key, 1, &doing)?;
            Ok(deleted)
        })
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        self.call("listing keys".to_owned(), move |namespace| {
            let prefix = format!("{namespace}:");
            let targets =
                ffi::enumerate(&format!("{prefix}*")).map_err(|e| os_error(e, "listing keys"))?;
            let mut keys = Vec::new();
            for target in targets {
                match target.strip_prefix(&prefix).map(SecretKey::new) {
                    Some(Ok(key)) => keys.push(key),
                    Some(Err(e)) => {
                        tracing::warn!("skipping a credential whose name is not a valid key: {e}")
                    }
                    None => {}
                }
            }
            Ok(keys)
        })
    }
}
