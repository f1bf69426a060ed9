//! The domain: secret keys, secret values, flavours, app ids and size limits.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 4096;

/// The default value size limit: 256 KiB. Configurable through [`Limits`].
pub const DEFAULT_MAX_VALUE_LEN: usize = 256 * 1024;

/// The name a secret is stored under: UTF-8, 1..=4096 bytes, no NUL.
///
/// Key names are not secret (they appear in listings and in error messages), but they may be
/// any text, including JSON such as VS Code's `{"extensionId":"...","key":"..."}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey(String);

impl SecretKey {
    /// Validates and wraps a key name.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.is_empty() {
            return Err(Error::invalid("key", "a key cannot be empty"));
        }
        if key.len() > MAX_KEY_LEN {
            return Err(Error::invalid(
                "key",
                format!(
                    "a key is at most {MAX_KEY_LEN} bytes, this one is {} bytes",
                    key.len()
                ),
            ));
        }
        if key.contains('\0') {
            return Err(Error::invalid(
                "key",
                "a key cannot contain a NUL character",
            ));
        }
        Ok(SecretKey(key))
    }

    /// Validates a key given as raw bytes, rejecting invalid UTF-8.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::invalid("key", "a key must be valid UTF-8"))?;
        Self::new(text)
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({:?})", self.0)
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SecretKey {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SecretKey::new(s)
    }
}

impl AsRef<str> for SecretKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A secret value: bytes that are zeroized on drop, never printed, never serialized, and
/// compared in constant time. The empty value is a valid value, distinct from "not found".
///
/// Read it through [`SecretValue::expose_secret`], which makes every read easy to find.
#[derive(Clone, Default)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Wraps bytes. Size limits are checked by the component that accepts the value, through
    /// [`Limits::check_value`].
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretValue(Zeroizing::new(bytes))
    }

    /// Copies bytes into a new value.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The secret bytes. The name is deliberately loud.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes (not secret: sizes appear in `TooLarge` errors).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty value.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretValue {
    fn from(bytes: Vec<u8>) -> Self {
        SecretValue::new(bytes)
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretValue {
    fn from(bytes: Zeroizing<Vec<u8>>) -> Self {
        SecretValue(bytes)
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue([REDACTED; {} bytes])", self.0.len())
    }
}

impl PartialEq for SecretValue {
    fn eq(&self, other: &Self) -> bool {
        // `ct_eq` on slices of different lengths returns false without looking at the bytes;
        // the length is not secret.
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl Eq for SecretValue {}

/// Size limits enforced on values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest value accepted, in bytes.
    pub max_value_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_len: DEFAULT_MAX_VALUE_LEN,
        }
    }
}

impl Limits {
    /// Rejects a value over the limit with an error naming the limit.
    pub fn check_value(&self, value: &SecretValue) -> Result<()> {
        if value.len() > self.max_value_len {
            return Err(Error::TooLarge {
                limit: self.max_value_len,
                actual: value.len(),
            });
        }
        Ok(())
    }
}

fn check_identifier(what: &'static str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        return Err(Error::invalid(
            what,
            format!("must be 1 to {max} characters long"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(Error::invalid(
            what,
            format!("{name:?} contains {bad:?}; use letters, digits, '-', '_' and '.'"),
        ));
    }
    if name.starts_with('.') {
        return Err(Error::invalid(
            what,
            format!("{name:?} cannot start with '.'"),
        ));
    }
    Ok(())
}

/// A product flavour (Stable, Insiders, ...). Each flavour has its own shared service name, so
/// flavours never see each other's secrets.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flavour {
    name: String,
    service: String,
}

impl Flavour {
    /// A flavour with an explicit shared service name.
    pub fn new(name: impl Into<String>, service: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let service = service.into();
        check_identifier("flavour", &name, 64)?;
        // Lowercase only: `STABLE` would otherwise be a flavour of its own, silently empty, next
        // to `stable` (found by QA: `KEYSHARE_FLAVOR=STABLE`).
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(Error::invalid(
                "flavour",
                format!(
                    "{name:?} has uppercase letters; flavour names are lowercase (did you mean \
                     {:?}?)",
                    name.to_ascii_lowercase()
                ),
            ));
        }
        check_identifier("service name", &service, 255)?;
        Ok(Flavour { name, service })
    }

    /// A flavour with the default service name `dev.keyshare.<name>.shared-secrets`
    /// (`dev.keyshare.shared-secrets` for `stable`).
    pub fn with_default_service(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        check_identifier("flavour", &name, 64)?;
        let service = if name == "stable" {
            "dev.keyshare.shared-secrets".to_owned()
        } else {
            format!("dev.keyshare.{name}.shared-secrets")
        };
        Flavour::new(name, service)
    }

    /// The flavour's name, e.g. `stable`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The shared service name, e.g. `dev.keyshare.shared-secrets`: the namespace of the
    /// flavour's shared store.
    pub fn service(&self) -> &str {
        &self.service
    }
}

/// An application of the family (`code`, `agents`, `git`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    /// Validates an app id: 1..=64 of ASCII letters, digits, `-`, `_`, `.`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        check_identifier("app id", &id, 64)?;
        Ok(AppId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_rules() {
        assert!(SecretKey::new("github.auth").is_ok());
        assert!(SecretKey::new("x".repeat(MAX_KEY_LEN)).is_ok());
        let long = SecretKey::new("x".repeat(MAX_KEY_LEN + 1)).unwrap_err();
        assert!(long.to_string().contains("4096"), "{long}");
        assert!(matches!(
            SecretKey::new(""),
            Err(Error::Invalid { what: "key", .. })
        ));
        assert!(SecretKey::new("a\0b")
            .unwrap_err()
            .to_string()
            .contains("NUL"));
        assert!(SecretKey::from_bytes(&[0xff, 0x41]).is_err());
        // Multi-byte characters count in bytes, not characters.
        assert!(SecretKey::new("é".repeat(MAX_KEY_LEN / 2)).is_ok());
        assert!(SecretKey::new("é".repeat(MAX_KEY_LEN / 2 + 1)).is_err());
    }

    #[test]
    fn flavour_names_are_lowercase() {
        assert!(Flavour::with_default_service("insiders-2").is_ok());
        let err = Flavour::with_default_service("STABLE").unwrap_err();
        assert!(err.to_string().contains("did you mean \"stable\""), "{err}");
        assert!(Flavour::new("Insiders", "com.Example.Shared").is_err());
        // Service names keep their case: they name things other programs made.
        assert!(Flavour::new("insiders", "com.Example.Shared").is_ok());
    }

    #[test]
    fn value_is_inert() {
        let v = SecretValue::from_slice(b"hunter2");
        let shown = format!("{v:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("7 bytes"));
        assert_eq!(v, SecretValue::from_slice(b"hunter2"));
        assert_ne!(v, SecretValue::from_slice(b"hunter3"));
        assert_ne!(v, SecretValue::from_slice(b"hunter"));
        assert!(SecretValue::default().is_empty());
    }

    #[test]
    fn limits_name_the_limit() {
        let limits = Limits { max_value_len: 4 };
        assert!(limits
            .check_value(&SecretValue::from_slice(b"1234"))
            .is_ok());
        let err = limits
            .check_value(&SecretValue::from_slice(b"12345"))
            .unwrap_err();
        assert!(matches!(
            err,
            Error::TooLarge {
                limit: 4,
                actual: 5
            }
        ));
        assert!(err.to_string().contains("limit of 4 bytes"));
        assert!(Limits::default().max_value_len >= 256 * 1024);
    }

    #[test]
    fn identifiers() {
        assert!(AppId::new("code").is_ok());
        assert!(AppId::new("code insiders").is_err());
        assert!(AppId::new("../x").is_err());
        let f = Flavour::with_default_service("insiders").unwrap();
        assert_eq!(f.service(), "dev.keyshare.insiders.shared-secrets");
        assert_eq!(
            Flavour::with_default_service("stable").unwrap().service(),
            "dev.keyshare.shared-secrets"
        );
        assert!(Flavour::new("a/b", "x").is_err());
    }
}
