//! Key material for each platform's blob format, and the per-platform key sets used to decrypt.

use std::fmt;

use pbkdf2::pbkdf2_hmac;
use sha1::Sha1;
use zeroize::Zeroizing;

/// Chromium's fixed PBKDF2 salt for every CBC key.
const SALT: &[u8] = b"saltysalt";
/// Linux derives with a single PBKDF2 round (Chromium's `kEncryptionIterations` on Linux).
const LINUX_ITERATIONS: u32 = 1;
/// macOS derives with 1003 PBKDF2 rounds (Chromium's `kEncryptionIterations` on macOS).
const MACOS_ITERATIONS: u32 = 1003;
/// The password Chromium on Linux uses when no keyring is available (`--password-store=basic`).
const LINUX_V10_PASSWORD: &[u8] = b"peanuts";

/// The operating system whose OSCrypt flavour produced (or will read) a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// AES-128-CBC; `v10` with the `peanuts` key, `v11` with a key from the keyring secret.
    Linux,
    /// AES-128-CBC; `v10` with a key from the keychain password.
    MacOs,
    /// AES-256-GCM; `v10` with the raw key from `Local State`.
    Windows,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Platform::Linux => "Linux",
            Platform::MacOs => "macOS",
            Platform::Windows => "Windows",
        })
    }
}

/// The three-byte version tag that starts every non-empty blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V10,
    V11,
}

impl Version {
    pub(crate) const LEN: usize = 3;

    pub(crate) fn tag(self) -> &'static [u8; Self::LEN] {
        match self {
            Version::V10 => b"v10",
            Version::V11 => b"v11",
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V10 => "v10",
            Version::V11 => "v11",
        }
    }

    /// Splits a blob into its version and body; `None` for anything Electron would reject.
    pub(crate) fn split(blob: &[u8]) -> Option<(Version, &[u8])> {
        let (tag, body) = blob.split_first_chunk::<{ Self::LEN }>()?;
        match tag {
            b"v10" => Some((Version::V10, body)),
            b"v11" => Some((Version::V11, body)),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub(crate) enum Material {
    /// AES-128-CBC key derived with PBKDF2 (Linux and macOS).
    Cbc(Zeroizing<[u8; 16]>),
    /// Raw AES-256-GCM key (Windows).
    Gcm(Zeroizing<[u8; 32]>),
}

/// Key material for one blob format, zeroized on drop.
///
/// Moving a `Key` may leave copies of its bytes in memory the compiler reuses; zeroizing is
/// best effort, as it is for every Rust type.
#[derive(Clone)]
pub struct Key {
    platform: Platform,
    version: Version,
    pub(crate) material: Material,
}

impl Key {
    /// The Linux `v10` key, derived from the fixed password `peanuts`, used when no keyring is
    /// available.
    pub fn linux_v10() -> Key {
        Key::cbc(
            Platform::Linux,
            Version::V10,
            LINUX_V10_PASSWORD,
            LINUX_ITERATIONS,
        )
    }

    /// The Linux `v11` key, derived from the keyring secret.
    ///
    /// The secret is fed to PBKDF2 as the text stored in the keyring (24 base64 characters),
    /// not base64-decoded.
    pub fn linux_v11(keyring_secret: &[u8]) -> Key {
        Key::cbc(
            Platform::Linux,
            Version::V11,
            keyring_secret,
            LINUX_ITERATIONS,
        )
    }

    /// The macOS `v10` key, derived from the keychain password text (`<App> Safe Storage`).
    pub fn macos(keychain_password: &[u8]) -> Key {
        Key::cbc(
            Platform::MacOs,
            Version::V10,
            keychain_password,
            MACOS_ITERATIONS,
        )
    }

    /// The Windows `v10` key: the 32 raw bytes unwrapped (by DPAPI) from `Local State`.
    ///
    /// The caller's copy of `raw_key` is not zeroized; wrap it in [`zeroize::Zeroizing`] if that
    /// matters.
    pub fn windows(raw_key: [u8; 32]) -> Key {
        Key {
            platform: Platform::Windows,
            version: Version::V10,
            material: Material::Gcm(Zeroizing::new(raw_key)),
        }
    }

    /// The key Chromium on Linux retries with when the prefix's key fails: PBKDF2 of the empty
    /// password.
    pub(crate) fn linux_empty_fallback() -> Key {
        Key::linux_v11(b"")
    }

    fn cbc(platform: Platform, version: Version, password: &[u8], iterations: u32) -> Key {
        let mut derived = Zeroizing::new([0u8; 16]);
        pbkdf2_hmac::<Sha1>(password, SALT, iterations, derived.as_mut_slice());
        Key {
            platform,
            version,
            material: Material::Cbc(derived),
        }
    }

    /// The platform whose format this key reads and writes.
    pub fn platform(&self) -> Platform {
        self.platform
    }

    /// The version tag (`"v10"` or `"v11"`) that blobs encrypted with this key start with.
    pub fn prefix(&self) -> &'static str {
        self.version.as_str()
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The derived (CBC, 16 bytes) or raw (GCM, 32 bytes) key bytes.
    ///
    /// Exposed so that derivations can be checked against known vectors; treat the result as a
    /// secret.
    pub fn expose_secret(&self) -> &[u8] {
        match &self.material {
            Material::Cbc(k) => k.as_slice(),
            Material::Gcm(k) => k.as_slice(),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("platform", &self.platform)
            .field("prefix", &self.version.as_str())
            .field("material", &"<redacted>")
            .finish()
    }
}

/// Every key one platform's decryptor may need, with that platform's rules for choosing among
/// them (see [`crate::decrypt`]).
#[derive(Debug, Clone)]
pub struct Keys(pub(crate) KeySet);

#[derive(Debug, Clone)]
pub(crate) enum KeySet {
    Linux {
        v10: Key,
        v11: Option<Key>,
        empty_fallback: Key,
    },
    MacOs(Key),
    Windows(Key),
}

impl Keys {
    /// Linux keys: the fixed `v10` key, the `v11` key derived from the keyring secret when one is
    /// known, and the empty-password fallback.
    pub fn linux(keyring_secret: Option<&[u8]>) -> Keys {
        Keys(KeySet::Linux {
            v10: Key::linux_v10(),
            v11: keyring_secret.map(Key::linux_v11),
            empty_fallback: Key::linux_empty_fallback(),
        })
    }

    /// macOS key, derived from the keychain password text.
    pub fn macos(keychain_password: &[u8]) -> Keys {
        Keys(KeySet::MacOs(Key::macos(keychain_password)))
    }

    /// Windows key: the 32 raw bytes unwrapped from `Local State`.
    pub fn windows(raw_key: [u8; 32]) -> Keys {
        Keys(KeySet::Windows(Key::windows(raw_key)))
    }

    /// The platform whose rules these keys decrypt by.
    pub fn platform(&self) -> Platform {
        match &self.0 {
            KeySet::Linux { .. } => Platform::Linux,
            KeySet::MacOs(_) => Platform::MacOs,
            KeySet::Windows(_) => Platform::Windows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_redacts_key_material() {
        let key = Key::windows([0xAB; 32]);
        let debug = format!("{key:?} {:?}", Keys::linux(Some(b"secret")));
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains("171"), "{debug}");
        assert!(!debug.contains("secret\""), "{debug}");
    }

    #[test]
    fn prefixes_match_platform_formats() {
        assert_eq!(Key::linux_v10().prefix(), "v10");
        assert_eq!(Key::linux_v11(b"x").prefix(), "v11");
        assert_eq!(Key::macos(b"x").prefix(), "v10");
        assert_eq!(Key::windows([0; 32]).prefix(), "v10");
        assert_eq!(Key::macos(b"x").platform(), Platform::MacOs);
    }

    #[test]
    fn macos_and_linux_derivations_differ_for_the_same_password() {
        assert_ne!(
            Key::macos(b"pw").expose_secret(),
            Key::linux_v11(b"pw").expose_secret()
        );
    }

    #[test]
    fn version_split_rejects_short_and_unknown_tags() {
        assert_eq!(Version::split(b"v1"), None);
        assert_eq!(Version::split(b"v12abc"), None);
        assert_eq!(Version::split(b"V10abc"), None);
        assert_eq!(Version::split(b"v10"), Some((Version::V10, &b""[..])));
        assert_eq!(Version::split(b"v11x"), Some((Version::V11, &b"x"[..])));
    }
}
