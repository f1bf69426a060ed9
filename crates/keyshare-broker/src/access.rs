//! Which app may use which keys, and which executables may speak for an app.
//!
//! The CLI fills an [`AccessPolicy`] from `config.toml`:
//!
//! ```toml
//! [apps.code]
//! executables = ["/usr/share/code/code"]
//!
//! [apps.agents]
//! executables = ["/opt/agents/agents"]
//! shared_keys = ["github.auth"]
//! ```
//!
//! What this does and does not protect against is in `docs/threat-model.md`: in short, it keeps
//! honest apps in their lane and makes a compromised *declared* app id insufficient, but any
//! process of the same user can read the vault's files or ptrace another app, so it is not a
//! boundary against malicious code running as the user.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use keyshare::{AppId, SecretKey};

/// A key name or a prefix ending in `*` (`github.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPattern(String);

impl KeyPattern {
    /// An exact key, or a prefix when it ends with `*`. A lone `*` matches every key.
    pub fn new(pattern: impl Into<String>) -> keyshare::Result<Self> {
        let pattern = pattern.into();
        if pattern.is_empty() {
            return Err(keyshare::Error::invalid(
                "key pattern",
                "a key pattern cannot be empty",
            ));
        }
        if pattern[..pattern.len() - 1].contains('*') {
            return Err(keyshare::Error::invalid(
                "key pattern",
                format!("{pattern:?}: '*' is only allowed at the end (as a prefix match)"),
            ));
        }
        Ok(KeyPattern(pattern))
    }

    /// Whether `key` matches.
    pub fn matches(&self, key: &SecretKey) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => key.as_str().starts_with(prefix),
            None => key.as_str() == self.0,
        }
    }
}

impl<'de> Deserialize<'de> for KeyPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeyPattern::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The rules for one app id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRule {
    /// If not empty, only processes running one of these executables may declare this app id
    /// (checked through `/proc/<peer pid>/exe`).
    #[serde(default)]
    pub executables: Vec<PathBuf>,
    /// If set, the only keys this app may read, write, list and watch. Unset: every key.
    #[serde(default)]
    pub shared_keys: Option<Vec<KeyPattern>>,
}

/// What happens to app ids the policy does not list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnlistedApps {
    /// They may use every key (the default: same-user processes can read the store's files
    /// anyway, see the threat model).
    #[default]
    AllKeys,
    /// They are refused at hello.
    Refuse,
}

/// The broker's access policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Rules per app id.
    #[serde(default)]
    pub apps: BTreeMap<String, AppRule>,
    /// What unlisted app ids may do.
    #[serde(default)]
    pub unlisted_apps: UnlistedApps,
    /// The file this policy was read from has been removed since, and a broker keeps it in
    /// force: denials say so, since the file they would send the user to is gone (found by
    /// QA). Not part of the [fingerprint](AccessPolicy::fingerprint).
    #[serde(skip)]
    pub source_removed: bool,
}

/// How config.toml names the table of `app`: `apps.code`, or `apps."my.app"` for an id with a
/// dot, which TOML would read as nested tables (found by QA: the advice could not be written).
pub fn app_table(app: &str) -> String {
    if app
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        format!("apps.{app}")
    } else {
        format!("apps.{app:?}")
    }
}

/// Why a hello was refused. The text is sent to the client and logged.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The app id is not in the policy and unlisted apps are refused.
    #[error(
        "app {app:?} is not configured for this broker ([{}] in config.toml)",
        app_table(app)
    )]
    UnlistedApp {
        /// The declared app id.
        app: String,
    },
    /// The app id is pinned to executables and the peer runs another one.
    #[error("app {app:?} is pinned to other executables; this process runs {exe}")]
    WrongExecutable {
        /// The declared app id.
        app: String,
        /// What the peer runs, or why it could not be determined.
        exe: String,
    },
}

/// What a connection that passed hello may do.
#[derive(Clone, Debug)]
pub struct Grant {
    app: AppId,
    keys: Option<Vec<KeyPattern>>,
    source_removed: bool,
}

impl Grant {
    /// The app this connection speaks for.
    pub fn app(&self) -> &AppId {
        &self.app
    }

    /// Whether the app may use `key`.
    pub fn allows(&self, key: &SecretKey) -> bool {
        match &self.keys {
            None => true,
            Some(patterns) => patterns.iter().any(|p| p.matches(key)),
        }
    }

    /// Why the app may not use `key`, naming the setting that says so: the broker and a
    /// command applying the policy itself word it alike.
    pub fn denial(&self, key: &SecretKey) -> String {
        let removed = if self.source_removed {
            "; that file was removed since the broker read it, and the broker keeps the policy \
             it read: `keyshare stop` it to serve without one"
        } else {
            ""
        };
        format!(
            "app {:?} may not use key {:?} (see shared_keys under [{}] in config.toml{removed})",
            self.app.as_str(),
            key.as_str(),
            app_table(self.app.as_str())
        )
    }
}

impl AccessPolicy {
    /// Decides a hello: `peer_exe` is what the connecting process runs (`None` when it could
    /// not be determined, which fails any pin).
    pub fn admit(&self, app: &AppId, peer_exe: Option<&Path>) -> Result<Grant, Refusal> {
        let Some(rule) = self.apps.get(app.as_str()) else {
            return match self.unlisted_apps {
                UnlistedApps::AllKeys => Ok(Grant {
                    app: app.clone(),
                    keys: None,
                    source_removed: self.source_removed,
                }),
                UnlistedApps::Refuse => Err(Refusal::UnlistedApp {
                    app: app.to_string(),
                }),
            };
        };
        if !rule.executables.is_empty() {
            let pinned = peer_exe.is_some_and(|exe| {
                rule.executables
                    .iter()
                    .any(|allowed| same_file(allowed, exe))
            });
            if !pinned {
                return Err(Refusal::WrongExecutable {
                    app: app.to_string(),
                    exe: peer_exe
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "an executable that could not be determined".into()),
                });
            }
        }
        Ok(Grant {
            app: app.clone(),
            keys: rule.shared_keys.clone(),
            source_removed: self.source_removed,
        })
    }

    /// Whether any rule pins executables.
    pub fn pins_executables(&self) -> bool {
        self.apps.values().any(|r| !r.executables.is_empty())
    }

    /// Names this policy in 16 hex digits: equal policies get equal names, in every version
    /// that has this function, and different ones different names but by a 64-bit chance.
    /// What `status` reports, so `doctor` can tell whether a running broker decides by the
    /// policy that `config.toml` holds now. Not a secret, nor a check against tampering.
    pub fn fingerprint(&self) -> String {
        // FNV-1a over every part, each preceded by its length, so no two policies make one
        // stream of bytes.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        feed(match self.unlisted_apps {
            UnlistedApps::AllKeys => b"all_keys",
            UnlistedApps::Refuse => b"refuse",
        });
        for (app, rule) in &self.apps {
            feed(b"app");
            feed(app.as_bytes());
            for exe in &rule.executables {
                feed(b"exe");
                feed(std::os::unix::ffi::OsStrExt::as_bytes(exe.as_os_str()));
            }
            if let Some(patterns) = &rule.shared_keys {
                feed(b"keys");
                for pattern in patterns {
                    feed(pattern.0.as_bytes());
                }
            }
        }
        format!("{hash:016x}")
    }
}

/// Compares a configured path with the peer's resolved executable. The configured one may be a
/// symlink (`/usr/bin/code` -> `/usr/share/code/code`), so it is resolved first.
fn same_file(configured: &Path, exe: &Path) -> bool {
    match std::fs::canonicalize(configured) {
        Ok(resolved) => resolved == exe,
        Err(_) => configured == exe,
    }
}

/// The executable a process runs, from `/proc/<pid>/exe`.
pub fn process_executable(pid: i32) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_tables_are_named_as_toml_reads_them() {
        assert_eq!(app_table("code"), "apps.code");
        assert_eq!(app_table("my-app_2"), "apps.my-app_2");
        assert_eq!(app_table("my.app"), r#"apps."my.app""#);
    }

    fn key(s: &str) -> SecretKey {
        SecretKey::new(s).unwrap()
    }

    fn app(s: &str) -> AppId {
        AppId::new(s).unwrap()
    }

    #[test]
    fn patterns() {
        let exact = KeyPattern::new("github.auth").unwrap();
        assert!(exact.matches(&key("github.auth")));
        assert!(!exact.matches(&key("github.auth2")));
        let prefix = KeyPattern::new("github.*").unwrap();
        assert!(prefix.matches(&key("github.auth")));
        assert!(!prefix.matches(&key("gitlab.auth")));
        assert!(KeyPattern::new("*").unwrap().matches(&key("anything")));
        assert!(KeyPattern::new("a*b").is_err());
        assert!(KeyPattern::new("").is_err());
    }

    #[test]
    fn policy_from_toml_shaped_json() {
        let policy: AccessPolicy = serde_json::from_str(
            r#"{"apps":{"agents":{"shared_keys":["github.auth"]},
                "code":{"executables":["/nonexistent/code"]}},
                "unlisted_apps":"refuse"}"#,
        )
        .unwrap();
        let agents = policy.admit(&app("agents"), None).unwrap();
        assert!(agents.allows(&key("github.auth")));
        assert!(!agents.allows(&key("npm.token")));
        assert_eq!(
            policy.admit(&app("other"), None).unwrap_err(),
            Refusal::UnlistedApp {
                app: "other".into()
            }
        );
        let wrong = policy
            .admit(&app("code"), Some(Path::new("/usr/bin/evil")))
            .unwrap_err();
        assert!(wrong.to_string().contains("/usr/bin/evil"), "{wrong}");
        assert!(policy.admit(&app("code"), None).is_err());
        let ok = policy
            .admit(&app("code"), Some(Path::new("/nonexistent/code")))
            .unwrap();
        assert!(ok.allows(&key("npm.token")));
        assert!(policy.pins_executables());
        assert_eq!(policy.fingerprint(), policy.clone().fingerprint());
        assert_eq!(policy.fingerprint().len(), 16);
        assert_ne!(policy.fingerprint(), AccessPolicy::default().fingerprint());
        let mut other = policy.clone();
        other.unlisted_apps = UnlistedApps::AllKeys;
        assert_ne!(policy.fingerprint(), other.fingerprint());
        // A pattern moved from one list into another is another policy.
        let mut a = AccessPolicy::default();
        a.apps.insert(
            "x".into(),
            AppRule {
                executables: vec![],
                shared_keys: Some(vec![KeyPattern::new("k").unwrap()]),
            },
        );
        let mut b = AccessPolicy::default();
        b.apps.insert(
            "x".into(),
            AppRule {
                executables: vec!["k".into()],
                shared_keys: Some(vec![]),
            },
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        let err = serde_json::from_str::<AccessPolicy>(r#"{"apps":{"x":{"keys":[]}}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys"), "{err}");
    }

    #[test]
    fn own_executable_is_readable() {
        let exe = process_executable(std::process::id() as i32).unwrap();
        assert_eq!(exe, std::env::current_exe().unwrap());
    }
}
