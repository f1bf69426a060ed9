//! Where a vault's key-encryption key (KEK) comes from: the OS keyring, a key file next to the
//! vault, or a passphrase through Argon2id. A new vault takes the first that works, in that
//! order; an existing vault always uses the provider recorded in it.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::crypto::{random_bytes, Kek, KEY_LEN};
use super::files;
use crate::error::{Error, Result, UnavailableReason};
use crate::model::SecretValue;

/// The environment variable a passphrase is read from by default.
pub const PASSPHRASE_ENV: &str = "KEYSHARE_PASSPHRASE";

/// A vault's identity: 16 random bytes chosen when the vault is created, recorded in its
/// `meta` table. The OS keyring stores the vault's KEK under it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct VaultId([u8; 16]);

impl VaultId {
    pub(crate) fn generate() -> Result<Self> {
        let mut id = [0u8; 16];
        random_bytes(&mut id)?;
        Ok(VaultId(id))
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(VaultId)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lower-case hex, 32 characters: the form to use as a keyring attribute.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for VaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for VaultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VaultId({})", self.to_hex())
    }
}

/// An OS keyring that keeps vault KEKs (the Secret Service on Linux, ...). Implemented outside
/// this module; the vault only calls it.
///
/// Error contract:
/// - `load`: `Ok(None)` when the keyring has no KEK for this vault; [`Error::Unavailable`] when
///   the keyring cannot answer (locked, not running, timed out). Never `Ok(None)` for "cannot
///   answer".
/// - `store`: `Ok` only once the KEK is durably in the keyring; any error means the vault will
///   not be protected by this keyring (a new vault then falls back to the next provider, or,
///   with `require_os_keyring`, is not created).
pub trait KekStore: Send + Sync + fmt::Debug {
    /// Reads the KEK of `vault`.
    fn load(&self, vault: &VaultId) -> Result<Option<Kek>>;
    /// Saves the KEK of a new `vault`.
    fn store(&self, vault: &VaultId, kek: &Kek) -> Result<()>;
    /// Removes the KEK [`KekStore::store`] saved for a vault that was then never created (its
    /// file lost a creation race, or could not be written), so that no keyring entry outlives
    /// it. Only called with the id of such a vault: ids are random, so no vault file holds it.
    /// `Ok` also when there was nothing to remove.
    fn forget_uncreated(&self, vault: &VaultId) -> Result<()>;
    /// Names the keyring for humans, e.g. "Secret Service (collection \"login\")".
    fn describe(&self) -> String;
}

/// What protects a vault's data key at rest. Recorded in the vault when it is created.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protection {
    /// The OS keyring holds the KEK.
    OsKeyring {
        /// [`KekStore::describe`] of the keyring.
        keyring: String,
    },
    /// A key file next to the vault holds the KEK: only its file permissions protect it.
    KeyFile {
        /// The key file.
        path: PathBuf,
    },
    /// The KEK is derived from a passphrase with Argon2id.
    Passphrase,
}

impl Protection {
    /// True when the OS keyring protects the vault.
    pub fn is_os_keyring(&self) -> bool {
        matches!(self, Protection::OsKeyring { .. })
    }
}

impl fmt::Display for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protection::OsKeyring { keyring } => write!(f, "OS keyring: {keyring}"),
            Protection::KeyFile { path } => write!(
                f,
                "key file {} (protected only by its file permissions)",
                path.display()
            ),
            Protection::Passphrase => f.write_str("passphrase (Argon2id)"),
        }
    }
}

/// The provider names recorded in the vault's `meta` table. FROZEN: they are stored on disk
/// and bound into the wrapped DEK's associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProviderKind {
    OsKeyring,
    KeyFile,
    Passphrase,
}

impl ProviderKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ProviderKind::OsKeyring => "os-keyring",
            ProviderKind::KeyFile => "key-file",
            ProviderKind::Passphrase => "passphrase",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        [
            ProviderKind::OsKeyring,
            ProviderKind::KeyFile,
            ProviderKind::Passphrase,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// Argon2id cost parameters for passphrase-protected vaults; stored in the vault, so changing
/// the defaults never breaks an existing vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// RFC 9106's second recommended option (64 MiB, 3 passes), with one lane since the CLI
    /// derives once per process.
    fn default() -> Self {
        Argon2Params {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl Argon2Params {
    /// Bounds on what a vault may ask for, so a tampered `meta` table cannot make opening
    /// take unbounded memory or time.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        let ok = (1..=16).contains(&self.parallelism)
            && (1..=64).contains(&self.iterations)
            && self.memory_kib >= 8 * self.parallelism
            && self.memory_kib <= 4 * 1024 * 1024;
        if ok {
            Ok(())
        } else {
            Err(format!(
                "Argon2 parameters out of range (memory {} KiB, {} iterations, {} lanes)",
                self.memory_kib, self.iterations, self.parallelism
            ))
        }
    }
}

/// What a passphrase prompt is asked for.
#[derive(Clone, Copy, Debug)]
pub struct PassphraseRequest<'a> {
    /// The vault the passphrase is for.
    pub vault: &'a Path,
    /// True when the vault is being created: the prompt should ask twice.
    pub creating: bool,
}

/// A caller-supplied prompt: `Ok(None)` when no passphrase can be had (no terminal).
pub type PassphrasePrompt =
    Arc<dyn Fn(&PassphraseRequest<'_>) -> Result<Option<SecretValue>> + Send + Sync>;

/// The KEK providers a vault may use, in the order a new vault tries them: the OS keyring,
/// then a passphrase from the environment, then a key file, then a prompted passphrase.
#[derive(Clone)]
pub struct KeyProviders {
    /// The OS keyring, when there is one.
    pub os_keyring: Option<Arc<dyn KekStore>>,
    /// Whether a new vault may be protected by a key file next to it.
    pub allow_key_file: bool,
    /// The environment variable a passphrase is read from, if any
    /// (default [`PASSPHRASE_ENV`]). Read before the prompt is asked.
    pub passphrase_env: Option<String>,
    /// A passphrase the caller already has, taken where one from the environment would be (and
    /// before it): how a broker started by a client gets the client's `KEYSHARE_PASSPHRASE`
    /// through a pipe, so that the broker's environment, readable for its whole life, does not
    /// hold it (QA s18 F4).
    pub passphrase: Option<SecretValue>,
    /// Asks the user for a passphrase.
    pub passphrase_prompt: Option<PassphrasePrompt>,
    /// Argon2id parameters for a NEW passphrase vault (an existing one uses its own).
    pub argon2: Argon2Params,
}

impl Default for KeyProviders {
    fn default() -> Self {
        KeyProviders {
            os_keyring: None,
            allow_key_file: true,
            passphrase_env: Some(PASSPHRASE_ENV.to_owned()),
            passphrase: None,
            passphrase_prompt: None,
            argon2: Argon2Params::default(),
        }
    }
}

impl fmt::Debug for KeyProviders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyProviders")
            .field("os_keyring", &self.os_keyring)
            .field("allow_key_file", &self.allow_key_file)
            .field("passphrase_env", &self.passphrase_env)
            .field("passphrase", &self.passphrase.as_ref().map(|_| "<given>"))
            .field(
                "passphrase_prompt",
                &self.passphrase_prompt.as_ref().map(|_| "<prompt>"),
            )
            .field("argon2", &self.argon2)
            .finish()
    }
}

/// The KEK a new vault will be created with, and how it was obtained.
pub(crate) struct NewKek {
    pub(crate) kind: ProviderKind,
    pub(crate) kek: Kek,
    pub(crate) protection: Protection,
    /// Argon2 parameters and salt, for a passphrase vault.
    pub(crate) argon2: Option<(Argon2Params, [u8; 16])>,
    /// The one line the caller should show the user when the new vault is protected by a key
    /// file, or by a passphrase from the environment: which protection it got, and why.
    pub(crate) notice: Option<String>,
}

impl KeyProviders {
    /// Picks and sets up the provider for a new vault.
    pub(crate) fn for_new_vault(
        &self,
        vault: &Path,
        id: &VaultId,
        require_os_keyring: bool,
    ) -> Result<NewKek> {
        let mut keyring_failure = None;
        match &self.os_keyring {
            Some(keyring) => {
                let kek = Kek::generate()?;
                match keyring.store(id, &kek) {
                    Ok(()) => {
                        return Ok(NewKek {
                            kind: ProviderKind::OsKeyring,
                            kek,
                            protection: Protection::OsKeyring {
                                keyring: keyring.describe(),
                            },
                            argon2: None,
                            notice: None,
                        })
                    }
                    Err(e) if require_os_keyring => {
                        return Err(Error::ProtectionUnavailable(format!(
                            "require_os_keyring is set, but the OS keyring ({}) could not \
                             store the key of the new vault {}: {e}. Unlock or start the \
                             keyring and try again.",
                            keyring.describe(),
                            vault.display()
                        )))
                    }
                    Err(e) => keyring_failure = Some(format!("{}: {e}", keyring.describe())),
                }
            }
            None if require_os_keyring => {
                return Err(Error::ProtectionUnavailable(format!(
                    "require_os_keyring is set, but no OS keyring is available to protect \
                     the new vault {}. Run keyshare in a desktop session with a keyring \
                     (Secret Service), or turn require_os_keyring off.",
                    vault.display()
                )))
            }
            None => {}
        }
        let why = keyring_failure
            .map(|f| format!(" because the OS keyring was unavailable ({f})"))
            .unwrap_or_default();

        // A passphrase in the environment is the user asking for passphrase protection,
        // which a key file (protected only by its permissions) would silently weaken; the
        // prompt is asked only where it was before, when key files are disabled.
        let env_passphrase = self.passphrase_from_env()?;
        if self.allow_key_file && env_passphrase.is_none() {
            let path = key_file_path(vault);
            let (kek, created) = ensure_key_file(&path)?;
            // The process whose vault file wins the creation race shows this, whichever
            // process wrote the key file, so a new vault is announced exactly once.
            let notice = Some(format!(
                "keyshare: created vault {} with its key in {} ({}){why}; the vault is \
                 protected only by that file's permissions (0600)",
                vault.display(),
                path.display(),
                if created {
                    "new key file"
                } else {
                    "existing key file"
                },
            ));
            return Ok(NewKek {
                kind: ProviderKind::KeyFile,
                kek,
                protection: Protection::KeyFile { path },
                argon2: None,
                notice,
            });
        }

        // The user typed a prompted passphrase twice and knows; one from the environment
        // decided the protection without asking, so the notice says so.
        let notice = env_passphrase.as_ref().map(|_| {
            format!(
                "keyshare: created vault {} protected by the passphrase in {}{why}; it cannot \
                 be opened without that passphrase",
                vault.display(),
                self.passphrase_env.as_deref().unwrap_or(PASSPHRASE_ENV)
            )
        });
        let passphrase = match env_passphrase {
            Some(p) => Some(p),
            None => self.passphrase(vault, true)?,
        };
        let Some(passphrase) = passphrase else {
            return Err(Error::ProtectionUnavailable(format!(
                "no key provider can protect the new vault {}{why}: key files are disabled \
                 and no passphrase was given. Set {} or run keyshare in a terminal.",
                vault.display(),
                self.passphrase_env.as_deref().unwrap_or(PASSPHRASE_ENV)
            )));
        };
        let params = self.argon2;
        params
            .check()
            .map_err(|reason| Error::invalid("argon2 parameters", reason))?;
        let mut salt = [0u8; 16];
        random_bytes(&mut salt)?;
        let kek = derive_kek(&passphrase, &salt, &params)?;
        Ok(NewKek {
            kind: ProviderKind::Passphrase,
            kek,
            protection: Protection::Passphrase,
            argon2: Some((params, salt)),
            notice,
        })
    }

    /// The KEK of an existing vault, from the provider recorded in it.
    pub(crate) fn for_existing_vault(
        &self,
        vault: &Path,
        id: &VaultId,
        kind: ProviderKind,
        argon2: Option<(Argon2Params, [u8; 16])>,
    ) -> Result<(Kek, Protection)> {
        match kind {
            ProviderKind::OsKeyring => {
                let Some(keyring) = &self.os_keyring else {
                    return Err(Error::unavailable(
                        "vault",
                        UnavailableReason::NotRunning,
                        format!(
                            "{} is protected by the OS keyring, but no OS keyring is \
                             available here. Run keyshare in the desktop session whose \
                             keyring holds the vault's key (vault id {id}).",
                            vault.display()
                        ),
                    ));
                };
                match keyring.load(id) {
                    Ok(Some(kek)) => Ok((
                        kek,
                        Protection::OsKeyring {
                            keyring: keyring.describe(),
                        },
                    )),
                    Ok(None) => Err(Error::unavailable(
                        "vault",
                        UnavailableReason::Locked,
                        format!(
                            "{} is protected by the OS keyring, but {} holds no key for it \
                             (vault id {id}). If the keyring was reset or the vault copied \
                             from another machine, restore that keyring; the vault was left \
                             untouched.",
                            vault.display(),
                            keyring.describe()
                        ),
                    )),
                    Err(e) => {
                        let reason = match &e {
                            Error::Unavailable { reason, .. } => *reason,
                            _ => UnavailableReason::Backend,
                        };
                        // Advice for what happened: "unlock" helps a locked keyring only (found
                        // by QA: a hung keyring was told to unlock).
                        let advice = match reason {
                            UnavailableReason::Locked => "Unlock the keyring and try again.",
                            UnavailableReason::TimedOut => {
                                "The keyring did not answer in time: check that it is not hung \
                                 (restart it if so) and try again."
                            }
                            UnavailableReason::NotRunning => {
                                "Start the keyring (log in to a desktop session) and try again."
                            }
                            _ => "Try again once the keyring works.",
                        };
                        Err(Error::unavailable(
                            "vault",
                            reason,
                            format!(
                                "{} is protected by the OS keyring, which could not give its key: \
                                 {e}. {advice}",
                                vault.display()
                            ),
                        ))
                    }
                }
            }
            ProviderKind::KeyFile => {
                let path = key_file_path(vault);
                match read_key_file(&path)? {
                    Some(kek) => Ok((kek, Protection::KeyFile { path })),
                    None => Err(Error::unavailable(
                        "vault",
                        UnavailableReason::Locked,
                        format!(
                            "{} is protected by the key file {}, which is missing. Restore \
                             it from a backup; without it the vault cannot be decrypted (the \
                             vault was left untouched).",
                            vault.display(),
                            path.display()
                        ),
                    )),
                }
            }
            ProviderKind::Passphrase => {
                let Some((params, salt)) = argon2 else {
                    return Err(Error::Corrupt {
                        store: format!("vault {}", vault.display()),
                        key: None,
                        detail: "passphrase vault without Argon2 parameters".to_owned(),
                    });
                };
                let Some(passphrase) = self.passphrase(vault, false)? else {
                    return Err(Error::unavailable(
                        "vault",
                        UnavailableReason::Locked,
                        format!(
                            "{} is protected by a passphrase and none was given. Set {} or \
                             run keyshare in a terminal.",
                            vault.display(),
                            self.passphrase_env.as_deref().unwrap_or(PASSPHRASE_ENV)
                        ),
                    ));
                };
                Ok((
                    derive_kek(&passphrase, &salt, &params)?,
                    Protection::Passphrase,
                ))
            }
        }
    }

    /// [`KeyProviders::passphrase`] when given, else the passphrase in
    /// [`KeyProviders::passphrase_env`], when that variable is set.
    fn passphrase_from_env(&self) -> Result<Option<SecretValue>> {
        if let Some(given) = &self.passphrase {
            if given.is_empty() {
                return Err(Error::invalid(
                    "passphrase",
                    "the passphrase given is empty".to_owned(),
                ));
            }
            return Ok(Some(given.clone()));
        }
        let Some(var) = &self.passphrase_env else {
            return Ok(None);
        };
        let Some(value) = std::env::var_os(var) else {
            return Ok(None);
        };
        use std::os::unix::ffi::OsStringExt;
        let value = SecretValue::new(value.into_vec());
        if value.is_empty() {
            return Err(Error::invalid(
                "passphrase",
                format!("{var} is set but empty; unset it or give a passphrase"),
            ));
        }
        Ok(Some(value))
    }

    fn passphrase(&self, vault: &Path, creating: bool) -> Result<Option<SecretValue>> {
        if let Some(value) = self.passphrase_from_env()? {
            return Ok(Some(value));
        }
        let Some(prompt) = &self.passphrase_prompt else {
            return Ok(None);
        };
        let answer = prompt(&PassphraseRequest { vault, creating })?;
        if answer.as_ref().is_some_and(|p| p.is_empty()) {
            return Err(Error::invalid(
                "passphrase",
                "the passphrase cannot be empty",
            ));
        }
        Ok(answer)
    }
}

/// Derives a KEK from a passphrase with Argon2id.
pub(crate) fn derive_kek(
    passphrase: &SecretValue,
    salt: &[u8; 16],
    params: &Argon2Params,
) -> Result<Kek> {
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.iterations,
        params.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| Error::invalid("argon2 parameters", e.to_string()))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut out = Zeroizing::new([0u8; KEY_LEN]);
    argon
        .hash_password_into(passphrase.expose_secret(), salt, out.as_mut())
        .map_err(|e| Error::invalid("passphrase", e.to_string()))?;
    Ok(Kek::from_array(out))
}

/// The key file of a vault: `vault.db` -> `vault.key`.
pub fn key_file_path(vault: &Path) -> PathBuf {
    let candidate = vault.with_extension("key");
    if candidate == vault {
        let mut name = vault.as_os_str().to_owned();
        name.push(".key");
        PathBuf::from(name)
    } else {
        candidate
    }
}

/// The first (and only) line of a key file, before the hex key. FROZEN.
const KEY_FILE_PREFIX: &str = "keyshare-vault-key v1 ";

fn read_key_file(path: &Path) -> Result<Option<Kek>> {
    if files::check_private_file(path)?.is_none() {
        return Ok(None);
    }
    let text = Zeroizing::new(
        fs::read(path).map_err(|e| Error::io(format!("reading key file {}", path.display()), e))?,
    );
    let not_a_key_file = || {
        Error::invalid(
            "key file",
            format!(
                "{} is not a keyshare key file (expected one line `{KEY_FILE_PREFIX}<64 hex \
                 digits>`); it was left untouched",
                path.display()
            ),
        )
    };
    let body = text
        .strip_prefix(KEY_FILE_PREFIX.as_bytes())
        .and_then(|rest| rest.strip_suffix(b"\n"))
        .ok_or_else(not_a_key_file)?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(body, key.as_mut()).map_err(|_| not_a_key_file())?;
    Ok(Some(Kek::from_array(key)))
}

/// Loads the key file, or creates it (0600, atomically, never replacing an existing file).
/// Returns the KEK and whether this call created the file.
fn ensure_key_file(path: &Path) -> Result<(Kek, bool)> {
    if let Some(kek) = read_key_file(path)? {
        return Ok((kek, false));
    }
    let kek = Kek::generate()?;
    let mut line = Zeroizing::new(String::with_capacity(KEY_FILE_PREFIX.len() + 65));
    line.push_str(KEY_FILE_PREFIX);
    line.push_str(&Zeroizing::new(hex::encode(kek.expose_secret())));
    line.push('\n');
    let created = files::create_private_file_atomically(path, |file, _| {
        file.write_all(line.as_bytes())
            .map_err(|e| Error::io(format!("writing key file {}", path.display()), e))
    })?;
    if created {
        Ok((kek, true))
    } else {
        // Another process created it first: use theirs, so both vault candidates agree.
        let kek = read_key_file(path)?.ok_or_else(|| {
            Error::io(
                format!("reading key file {}", path.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })?;
        Ok((kek, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_next_to_vault() {
        assert_eq!(
            key_file_path(Path::new("/d/vault.db")),
            Path::new("/d/vault.key")
        );
        assert_eq!(
            key_file_path(Path::new("/d/vault")),
            Path::new("/d/vault.key")
        );
        assert_eq!(
            key_file_path(Path::new("/d/x.key")),
            Path::new("/d/x.key.key")
        );
    }

    #[test]
    fn provider_names_round_trip() {
        for kind in [
            ProviderKind::OsKeyring,
            ProviderKind::KeyFile,
            ProviderKind::Passphrase,
        ] {
            assert_eq!(ProviderKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ProviderKind::from_name("plaintext"), None);
    }

    #[test]
    fn argon2_bounds() {
        assert!(Argon2Params::default().check().is_ok());
        let huge = Argon2Params {
            memory_kib: u32::MAX,
            ..Argon2Params::default()
        };
        assert!(huge.check().is_err());
    }

    #[test]
    fn argon2_is_deterministic_and_salted() {
        let params = Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let p = SecretValue::from_slice(b"correct horse");
        let a = derive_kek(&p, &[1; 16], &params).unwrap();
        let b = derive_kek(&p, &[1; 16], &params).unwrap();
        let c = derive_kek(&p, &[2; 16], &params).unwrap();
        assert_eq!(a.expose_secret(), b.expose_secret());
        assert_ne!(a.expose_secret(), c.expose_secret());
    }
}
