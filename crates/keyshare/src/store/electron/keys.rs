//! The app's safeStorage key: where it comes from and what it reads and writes.
//!
//! Electron encrypts with Chromium's OSCrypt. Which key an app uses depends on the OS and, on
//! Linux, on the password store it picked (`--password-store`): `basic` writes `v10` blobs with
//! a fixed key, `gnome-libsecret` writes `v11` blobs with a key derived from a random secret
//! kept in the Secret Service. A [`KeySource`] says where to get the key; resolving it gives
//! [`SafeStorageKeys`]: the keys to decrypt with, and the one key to write with (when the app's
//! real key is known).

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::{Error, Result, UnavailableReason};

/// Where an app's safeStorage key comes from. Mirrors Electron's `--password-store` choices.
#[derive(Clone)]
#[non_exhaustive]
pub enum KeySource {
    /// Linux `--password-store=basic` (or no keyring): `v10` blobs with the fixed `peanuts` key.
    Basic,
    /// Linux `gnome-libsecret`: the keyring secret is read from the Secret Service item whose
    /// attribute `application` is the app name (never matched by label, which varies between
    /// Electron versions).
    GnomeLibsecret,
    /// Linux: the keyring secret, supplied by the caller (the CLI's `--keyring-password-stdin`,
    /// or a test). Used as text, exactly as stored in the keyring. Reads use it as given; a
    /// store writes with it only once it is shown to be the app's key (see
    /// [`super::ElectronStoreBuilder::write_unverified_password`]).
    KeyringPassword(Zeroizing<Vec<u8>>),
    /// macOS: the keychain item `<App> Safe Storage` (account `<App> Key`, else `<App>`).
    MacosKeychain,
    /// Windows: the DPAPI-wrapped key in `<userData>/Local State`.
    WindowsLocalState,
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Basic => "KeySource::Basic",
            KeySource::GnomeLibsecret => "KeySource::GnomeLibsecret",
            KeySource::KeyringPassword(_) => "KeySource::KeyringPassword(<redacted>)",
            KeySource::MacosKeychain => "KeySource::MacosKeychain",
            KeySource::WindowsLocalState => "KeySource::WindowsLocalState",
        })
    }
}

/// The advice the Secret Service lookup adds to its errors, at their end (it names the flag
/// of `keyshare legacy list` and `keyshare import`). A caller with no way to type the password
/// (a store opened from configuration) replaces it with advice that holds for its user.
pub const TYPE_THE_PASSWORD_INSTEAD: &str =
    "; or give the app's keyring password instead (keyshare: --keyring-password-stdin)";

/// Finds the keyring secret Chromium stored for an app in the Secret Service.
///
/// The real lookup is [`crate::store::secret_service::SafeStorageLookup`] (Linux), on the
/// Secret Service store's connection code; tests inject their own.
pub trait KeyringLookup {
    /// The secret of the item with attribute `application=<app_name>`, or `None` when there is
    /// no such item. Errors are `Unavailable` (service not running, locked, timed out).
    fn keyring_secret(&self, app_name: &str) -> Result<Option<Zeroizing<Vec<u8>>>>;
}

impl KeySource {
    /// The key source Electron would pick by default on this OS, as far as a command-line tool
    /// can tell: `gnome-libsecret` on Linux (KWallet is not supported), the keychain on macOS,
    /// `Local State` on Windows.
    pub fn platform_default() -> KeySource {
        if cfg!(target_os = "macos") {
            KeySource::MacosKeychain
        } else if cfg!(windows) {
            KeySource::WindowsLocalState
        } else {
            KeySource::GnomeLibsecret
        }
    }

    /// Resolves the keys of `app_name`, whose user-data directory is `user_data_dir` (needed on
    /// Windows only). Talks to the Secret Service or the OS keychain where the source says so.
    pub fn resolve(&self, app_name: &str, user_data_dir: Option<&Path>) -> Result<SafeStorageKeys> {
        match self {
            KeySource::GnomeLibsecret => {
                self.resolve_with(app_name, user_data_dir, &DefaultKeyringLookup)
            }
            _ => self.resolve_with(app_name, user_data_dir, &NoKeyringLookup),
        }
    }

    /// Like [`KeySource::resolve`], with the Secret Service lookup given (for tests).
    pub fn resolve_with(
        &self,
        app_name: &str,
        user_data_dir: Option<&Path>,
        keyring: &dyn KeyringLookup,
    ) -> Result<SafeStorageKeys> {
        match self {
            KeySource::Basic => Ok(SafeStorageKeys::linux_basic()),
            KeySource::KeyringPassword(secret) => Ok(SafeStorageKeys::linux_keyring(
                secret,
                "the keyring password given on standard input".to_owned(),
                true,
            )),
            KeySource::GnomeLibsecret => match keyring.keyring_secret(app_name)? {
                Some(secret) => Ok(SafeStorageKeys::linux_keyring(
                    &secret,
                    format!("the Secret Service item application={app_name:?}"),
                    false,
                )),
                None => Ok(SafeStorageKeys::linux_keyring_missing(app_name)),
            },
            KeySource::MacosKeychain => {
                let password = super::platform::macos_keychain_password(app_name)?;
                Ok(SafeStorageKeys::macos(
                    &password,
                    format!("the keychain item {app_name:?} Safe Storage"),
                ))
            }
            KeySource::WindowsLocalState => {
                let dir = user_data_dir.ok_or_else(|| {
                    Error::invalid(
                        "user-data directory",
                        "the Windows key lives in <userData>\\Local State; give the directory",
                    )
                })?;
                let key = super::platform::windows_local_state_key(dir)?;
                Ok(SafeStorageKeys::windows(
                    *key,
                    format!("{}", dir.join("Local State").display()),
                ))
            }
        }
    }
}

/// The default Secret Service lookup (Linux), or "not available here" elsewhere.
pub(super) struct DefaultKeyringLookup;

impl KeyringLookup for DefaultKeyringLookup {
    fn keyring_secret(&self, app_name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        #[cfg(target_os = "linux")]
        {
            crate::store::secret_service::SafeStorageLookup::open(crate::store::DEFAULT_TIMEOUT)?
                .keyring_secret(app_name)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = app_name;
            Err(Error::ProtectionUnavailable(
                "the gnome-libsecret password store exists on Linux only".to_owned(),
            ))
        }
    }
}

/// Used for the sources that never ask the Secret Service.
struct NoKeyringLookup;

impl KeyringLookup for NoKeyringLookup {
    fn keyring_secret(&self, _app_name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        Err(Error::unavailable(
            "secret service",
            UnavailableReason::NotRunning,
            "this key source does not use the Secret Service",
        ))
    }
}

/// An app's resolved safeStorage keys.
///
/// `decrypt` follows the platform's rules (on Linux: `v10` with `peanuts`, `v11` with the
/// keyring key, the empty-password fallback). `write` is the key the app itself would write
/// with, or `None` when it is not known, in which case writes are refused: a blob the app
/// cannot decrypt is one it deletes.
#[derive(Clone)]
pub struct SafeStorageKeys {
    pub(super) decrypt: oscrypt::Keys,
    pub(super) write: Option<oscrypt::Key>,
    /// Why `write` is `None`, for the error message.
    pub(super) no_write_reason: Option<String>,
    /// Where the key came from, in words, for messages (never the key).
    pub(super) origin: String,
    /// Whether the write key came from the user and must be confirmed before anything is
    /// written with it, by the rows the app wrote or else by the app's Secret Service item (a
    /// mistyped keyring password would otherwise produce blobs the app deletes).
    pub(super) confirm_before_write: bool,
    /// What to do about a blob whose key is missing (a `v11` blob without the keyring secret),
    /// for its error; `None` for the usual advice (use the keyring, or give its password).
    pub(super) missing_key_advice: Option<String>,
    /// Why a blob the key does not open may not be damaged at all, for its error: the key is
    /// a guess (the empty password, when the keyring has no item for the app).
    pub(super) wrong_key_hint: Option<String>,
}

impl fmt::Debug for SafeStorageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeStorageKeys")
            .field("origin", &self.origin)
            .field("writes", &self.write.as_ref().map(|k| k.prefix()))
            .finish_non_exhaustive()
    }
}

impl SafeStorageKeys {
    /// Linux without a keyring (`--password-store=basic`): reads `v10`, writes `v10` with the
    /// `peanuts` key. Reads no `v11` blob, not even one written with the empty password: as in
    /// Chromium, which has no `v11` key without a keyring and fails before its empty-password
    /// retry (that retry follows a wrong key, never a missing one).
    pub fn linux_basic() -> Self {
        SafeStorageKeys {
            decrypt: oscrypt::Keys::linux(None),
            write: Some(oscrypt::Key::linux_v10()),
            no_write_reason: None,
            origin: "the fixed Linux v10 key (password store basic)".to_owned(),
            confirm_before_write: false,
            missing_key_advice: None,
            wrong_key_hint: None,
        }
    }

    /// Linux with the keyring secret known: reads `v10` and `v11`, writes `v11`.
    ///
    /// `origin` says where the secret came from, for messages. With `confirm_before_write`, the
    /// first write checks the key against the `v11` rows already in the database or, when none
    /// can tell, against the app's Secret Service item (see [`super::ElectronStoreBuilder`]).
    pub fn linux_keyring(secret: &[u8], origin: String, confirm_before_write: bool) -> Self {
        SafeStorageKeys {
            decrypt: oscrypt::Keys::linux(Some(secret)),
            write: Some(oscrypt::Key::linux_v11(secret)),
            no_write_reason: None,
            origin,
            confirm_before_write,
            missing_key_advice: None,
            wrong_key_hint: None,
        }
    }

    /// Linux with a keyring but no item for the app: Chromium then falls back to the empty
    /// password, so `v11` blobs are read with that key; nothing is written, since the app will
    /// make up a new secret (and delete what it cannot read) when it next starts.
    pub fn linux_keyring_missing(app_name: &str) -> Self {
        SafeStorageKeys {
            decrypt: oscrypt::Keys::linux(Some(b"")),
            write: None,
            no_write_reason: Some(format!(
                "the Secret Service has no item with application={app_name:?}, so {app_name}'s \
                 key is unknown; start {app_name} once so that it creates one, or give the \
                 keyring password"
            )),
            origin: format!(
                "the empty-password key (no Secret Service item application={app_name:?})"
            ),
            confirm_before_write: false,
            missing_key_advice: None,
            // Found by QA: a state database copied from another keyring read as "corrupt".
            wrong_key_hint: Some(format!(
                "it may well be intact: written with {app_name}'s keyring secret from another \
                 keyring (this one has no item application={app_name:?}), which only that \
                 keyring's password opens; give that password to read it"
            )),
        }
    }

    /// Linux when the app's keyring secret could not be got (the Secret Service is not running,
    /// not reachable or locked): reads `v10` blobs, as [`SafeStorageKeys::linux_basic`] does,
    /// and writes nothing, since the app may well protect its secrets with the keyring. For a
    /// caller that reads what it can (listing, importing) instead of failing outright. `advice`
    /// (what the caller's user can do to read the rest, in the caller's words) ends the error
    /// of each `v11` blob.
    pub fn linux_keyring_unavailable(app_name: &str, advice: impl Into<String>) -> Self {
        SafeStorageKeys {
            decrypt: oscrypt::Keys::linux(None),
            write: None,
            no_write_reason: Some(format!(
                "{app_name}'s keyring secret could not be got, so {app_name}'s key is unknown"
            )),
            origin: format!(
                "the fixed Linux v10 key only ({app_name}'s keyring secret could not be got)"
            ),
            confirm_before_write: false,
            missing_key_advice: Some(advice.into()),
            wrong_key_hint: None,
        }
    }

    /// macOS: the keychain password text of `<App> Safe Storage`.
    pub fn macos(password: &[u8], origin: String) -> Self {
        SafeStorageKeys {
            decrypt: oscrypt::Keys::macos(password),
            write: Some(oscrypt::Key::macos(password)),
            no_write_reason: None,
            origin,
            confirm_before_write: false,
            missing_key_advice: None,
            wrong_key_hint: None,
        }
    }

    /// Windows: the raw AES-256 key unwrapped from `Local State`.
    pub fn windows(raw_key: [u8; 32], origin: String) -> Self {
        SafeStorageKeys {
            decrypt: oscrypt::Keys::windows(raw_key),
            write: Some(oscrypt::Key::windows(raw_key)),
            no_write_reason: None,
            origin,
            confirm_before_write: false,
            missing_key_advice: None,
            wrong_key_hint: None,
        }
    }

    /// Where the key came from, in words (never the key).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The version tag new blobs get (`"v10"` or `"v11"`), or `None` when writing is refused.
    pub fn write_prefix(&self) -> Option<&'static str> {
        self.write.as_ref().map(|k| k.prefix())
    }

    /// Whether writes use Linux's fixed `v10` key (`peanuts`, password store basic): a
    /// protection in name only, since every copy of Chromium knows the key.
    pub(super) fn writes_with_fixed_key(&self) -> bool {
        self.decrypt.platform() == oscrypt::Platform::Linux && self.write_prefix() == Some("v10")
    }

    /// Decrypts a blob by the platform's rules.
    pub fn decrypt(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, oscrypt::DecryptError> {
        oscrypt::decrypt(&self.decrypt, blob)
    }

    /// Whether the write key is the one derived from `keyring_secret` (the secret of the app's
    /// Secret Service item). Compares derived keys in constant time, so the typed password
    /// itself need not be kept.
    pub(super) fn writes_with_keyring_secret(&self, keyring_secret: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        let Some(write) = self.write.as_ref() else {
            return false;
        };
        let item_key = oscrypt::Key::linux_v11(keyring_secret);
        write.platform() == item_key.platform()
            && write.prefix() == item_key.prefix()
            && bool::from(write.expose_secret().ct_eq(item_key.expose_secret()))
    }

    /// Whether an existing blob speaks for (`Some(true)`) or against (`Some(false)`) the write
    /// key being the app's real key; `None` when it says nothing (another version tag, the
    /// fixed `v10` key on Linux, a blob the empty-password key also opens, or a plaintext that
    /// is not text, which a wrong key can produce by chance).
    pub(super) fn vouches_for_write_key(&self, blob: &[u8]) -> Option<bool> {
        let write = self.write.as_ref()?;
        if blob.is_empty() || !blob.starts_with(write.prefix().as_bytes()) {
            return None;
        }
        let linux = self.decrypt.platform() == oscrypt::Platform::Linux;
        if linux && write.prefix() == "v10" {
            return None;
        }
        match oscrypt::decrypt(&self.decrypt, blob) {
            Err(_) => Some(false),
            Ok(_) if linux && oscrypt::decrypt(&oscrypt::Keys::linux(Some(b"")), blob).is_ok() => {
                None
            }
            // VS Code stores strings; a wrong key passes the padding check by chance about once
            // in 256 tries, and then almost never yields valid UTF-8.
            Ok(plain) => std::str::from_utf8(&plain).ok().map(|_| true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeKeyring(Option<&'static [u8]>);

    impl KeyringLookup for FakeKeyring {
        fn keyring_secret(&self, app_name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
            assert_eq!(app_name, "Code");
            Ok(self.0.map(|s| Zeroizing::new(s.to_vec())))
        }
    }

    #[test]
    fn keyring_item_gives_v11_keys() {
        let keys = KeySource::GnomeLibsecret
            .resolve_with(
                "Code",
                None,
                &FakeKeyring(Some(b"k8Q2Vx0mZt5bN1cR4yW7pA==")),
            )
            .unwrap();
        assert_eq!(keys.write_prefix(), Some("v11"));
        assert!(keys.origin().contains("application=\"Code\""));
        let blob = hex::decode("763131ac1fd5536d30b8bd7d27f340c9c477be").unwrap();
        assert_eq!(keys.decrypt(&blob).unwrap().as_slice(), b"hello");
    }

    #[test]
    fn missing_keyring_item_reads_with_empty_key_and_refuses_writes() {
        let keys = KeySource::GnomeLibsecret
            .resolve_with("Code", None, &FakeKeyring(None))
            .unwrap();
        assert_eq!(keys.write_prefix(), None);
        assert!(keys.no_write_reason.as_deref().unwrap().contains("Code"));
        let empty_key_blob = oscrypt::encrypt(&oscrypt::Key::linux_v11(b""), b"x").unwrap();
        assert_eq!(keys.decrypt(&empty_key_blob).unwrap().as_slice(), b"x");
    }

    #[test]
    fn basic_never_asks_the_keyring() {
        struct Panics;
        impl KeyringLookup for Panics {
            fn keyring_secret(&self, _: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
                panic!("basic must not look up the keyring")
            }
        }
        let keys = KeySource::Basic
            .resolve_with("Code", None, &Panics)
            .unwrap();
        assert_eq!(keys.write_prefix(), Some("v10"));
    }

    #[test]
    fn basic_reads_no_v11_blob_not_even_an_empty_password_one() {
        let keys = SafeStorageKeys::linux_basic();
        let v10 = oscrypt::encrypt(&oscrypt::Key::linux_v10(), b"x").unwrap();
        assert_eq!(keys.decrypt(&v10).unwrap().as_slice(), b"x");
        let empty_pw = oscrypt::encrypt(&oscrypt::Key::linux_v11(b""), b"x").unwrap();
        assert!(matches!(
            keys.decrypt(&empty_pw),
            Err(oscrypt::DecryptError::MissingKey { prefix: "v11" })
        ));
    }

    #[test]
    fn without_the_keyring_v10_reads_and_nothing_writes() {
        let keys = SafeStorageKeys::linux_keyring_unavailable("Code", "unlock it");
        let v10 = oscrypt::encrypt(&oscrypt::Key::linux_v10(), b"x").unwrap();
        assert_eq!(keys.decrypt(&v10).unwrap().as_slice(), b"x");
        let v11 = oscrypt::encrypt(&oscrypt::Key::linux_v11(b""), b"x").unwrap();
        assert!(keys.decrypt(&v11).is_err());
        assert_eq!(keys.write_prefix(), None);
        assert!(!keys.writes_with_fixed_key());
        assert!(
            keys.origin().contains("could not be got"),
            "{}",
            keys.origin()
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let source = KeySource::KeyringPassword(Zeroizing::new(b"hunter2-secret".to_vec()));
        let keys = source.resolve_with("Code", None, &NoKeyringLookup).unwrap();
        let shown = format!("{source:?} {keys:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn the_write_key_is_matched_against_the_items_secret() {
        let typed = SafeStorageKeys::linux_keyring(b"right", String::new(), true);
        assert!(typed.writes_with_keyring_secret(b"right"));
        assert!(!typed.writes_with_keyring_secret(b"wrong"));
        assert!(!typed.writes_with_keyring_secret(b""));
        // Keys that write no v11 blob are never the item's.
        assert!(!SafeStorageKeys::linux_basic().writes_with_keyring_secret(b"peanuts"));
        assert!(
            !SafeStorageKeys::macos(b"right", String::new()).writes_with_keyring_secret(b"right")
        );
        assert!(!SafeStorageKeys::linux_keyring_missing("Code").writes_with_keyring_secret(b""));
    }

    #[test]
    fn vouching_tells_right_from_wrong_keys() {
        let right = SafeStorageKeys::linux_keyring(b"right", String::new(), true);
        let wrong = SafeStorageKeys::linux_keyring(b"wrong", String::new(), true);
        let blob = oscrypt::encrypt(&oscrypt::Key::linux_v11(b"right"), b"a token").unwrap();
        assert_eq!(right.vouches_for_write_key(&blob), Some(true));
        assert_eq!(wrong.vouches_for_write_key(&blob), Some(false));
        let v10 = oscrypt::encrypt(&oscrypt::Key::linux_v10(), b"a token").unwrap();
        assert_eq!(wrong.vouches_for_write_key(&v10), None);
        let empty_pw = oscrypt::encrypt(&oscrypt::Key::linux_v11(b""), b"a token").unwrap();
        assert_eq!(wrong.vouches_for_write_key(&empty_pw), None);
        assert_eq!(wrong.vouches_for_write_key(b""), None);
    }
}
