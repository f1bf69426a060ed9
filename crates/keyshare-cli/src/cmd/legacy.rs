//! `keyshare legacy list`: what an Electron app (VS Code and its forks) keeps in its state
//! database, row by row. Reads only: the database is opened read-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use keyshare::store::electron::{
    state_db_path, user_data_dir, ElectronStore, KeySource, SafeStorageKeys, SecretRow,
    TYPE_THE_PASSWORD_INSTEAD,
};
use keyshare::{Limits, SecretValue, Store};
use serde_json::json;
use zeroize::Zeroizing;

use crate::input::read_value;
use crate::stores::Context;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List every secret row of a state database: its key, whether it decrypts, and why not.
    /// Values are shown only with --show-values.
    List(ListArgs),
}

/// Where the app's safeStorage key comes from (shared by `legacy` and `import`).
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// The app's product name, as in its user-data directory and keyring item [default: the
    /// flavour's VS Code, `Code` or `Code - Insiders` under insiders; for `legacy list`, the
    /// Electron legacy store of --app in the config file first].
    // No clap default: the real one depends on the flavour, known once the config is read
    // (found by QA: the help said `[default: Code]` under insiders too).
    #[arg(long, value_name = "NAME")]
    pub app_name: Option<String>,
    /// The app's user-data directory [default: VSCODE_PORTABLE, VSCODE_APPDATA, or the OS
    /// location for the app name].
    #[arg(long, value_name = "PATH")]
    pub user_data_dir: Option<PathBuf>,
    /// How the app stores its key (Electron's --password-store) [default: gnome-libsecret on
    /// Linux, the keychain on macOS, Local State on Windows].
    #[arg(long, value_enum, value_name = "STORE")]
    pub password_store: Option<PasswordStore>,
    /// Read the app's keyring password (the Secret Service item's secret) from standard input
    /// instead of asking the Secret Service.
    #[arg(long)]
    pub keyring_password_stdin: bool,
}

/// Electron's Linux `--password-store` choices keyshare can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PasswordStore {
    /// No keyring: `v10` secrets with Chromium's fixed key.
    Basic,
    /// The Secret Service (GNOME Keyring, KeePassXC, ...): `v11` secrets.
    GnomeLibsecret,
}

impl KeyArgs {
    /// The app name `--app-name` gave, or the one [`KeyArgs::or_app_legacy`] or
    /// `import vscode` chose for this flavour; stable's VS Code only if neither ran.
    pub fn app_name(&self) -> &str {
        self.app_name.as_deref().unwrap_or("Code")
    }

    /// The key source the flags ask for; reads the keyring password from stdin if asked to.
    pub fn key_source(&self) -> anyhow::Result<KeySource> {
        if self.keyring_password_stdin {
            if self.password_store == Some(PasswordStore::Basic) {
                return Err(keyshare::Error::invalid(
                    "arguments",
                    "--keyring-password-stdin is for the gnome-libsecret password store; the \
                     basic store has no password",
                )
                .into());
            }
            let value = read_value(
                None,
                &Limits {
                    max_value_len: 4096,
                },
                &format!("Keyring password of {}: ", self.app_name()),
            )?;
            return Ok(KeySource::KeyringPassword(keyring_password(&value)));
        }
        Ok(match self.password_store {
            Some(PasswordStore::Basic) => KeySource::Basic,
            Some(PasswordStore::GnomeLibsecret) => KeySource::GnomeLibsecret,
            None => KeySource::platform_default(),
        })
    }

    /// The app's keys, from the source the flags ask for (`source`, from
    /// [`KeyArgs::key_source`]), and a note for the report when they are not all of them.
    ///
    /// Without flags saying how the app keeps its key, the default Linux source (the Secret
    /// Service) may be unreachable or locked. Reading is still worth doing then (QA #3: `import`
    /// failed outright where `legacy list` read every row): the fixed `v10` key reads what the
    /// app wrote without a keyring, and each `v11` secret says why it cannot be read and what
    /// to do. On macOS and Windows no secret reads without the OS key, so there is no such
    /// fallback.
    pub fn resolve_keys(
        &self,
        source: &KeySource,
        dir: Option<&Path>,
    ) -> anyhow::Result<(SafeStorageKeys, Option<String>)> {
        let app = self.app_name();
        let explicit = self.keyring_password_stdin || self.password_store.is_some();
        match source.resolve(app, dir) {
            Ok(keys) => Ok((keys, None)),
            Err(err)
                if !explicit
                    && err.is_unavailable()
                    && matches!(source, KeySource::GnomeLibsecret) =>
            {
                let keys = SafeStorageKeys::linux_keyring_unavailable(
                    app,
                    "Start or unlock the keyring (the Secret Service) and re-run, or give the \
                     keyring password with --keyring-password-stdin",
                );
                let note = format!(
                    "cannot get {app}'s keyring secret ({err}); only v10 secrets can be \
                     decrypted. If {app} runs with --password-store=basic (no keyring), say so \
                     with --password-store basic"
                );
                Ok((keys, Some(note)))
            }
            Err(err) if err.is_unavailable() && matches!(source, KeySource::GnomeLibsecret) => {
                Err(anyhow::Error::new(err).context(format!(
                    "cannot get {app}'s keyring secret from the Secret Service (if {app} runs \
                     with --password-store=basic, use --password-store basic)"
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// These flags, or, when they name no database (no `--state-db`, `--user-data-dir` or
    /// `--app-name`) and `--app` has an Electron legacy store in the config, that store's app
    /// name, directory and password store: `keyshare --app code legacy list` looked in the
    /// default directory of `Code` instead (QA s19 F9). Without `--app-name`, otherwise, the
    /// flavour's own VS Code.
    pub fn or_app_legacy(&self, ctx: &Context, state_db_given: bool) -> KeyArgs {
        let mut key = self.clone();
        let configured = ctx.config.legacy(&ctx.app, &ctx.flavour);
        if key.app_name.is_some() {
            return key;
        }
        if state_db_given || key.user_data_dir.is_some() {
            key.app_name = Some(crate::config::vscode_app_name(&ctx.flavour));
            return key;
        }
        if let Some(crate::config::LegacyConfig::Electron(electron)) = configured.store() {
            key.app_name = Some(electron.app_name.clone());
            key.user_data_dir = electron.user_data_dir.clone();
            key.password_store = key.password_store.or(electron.password_store);
        } else {
            // The flavour's own VS Code, as `import vscode` takes (found by QA: under
            // insiders, `legacy list --show-values` printed stable's token).
            key.app_name = Some(crate::config::vscode_app_name(&ctx.flavour));
        }
        key
    }

    /// The user-data directory the flags and environment point at.
    pub fn user_data_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(user_data_dir(
            self.app_name(),
            self.user_data_dir.as_deref(),
        )?)
    }
}

/// An app's state database as its legacy store, in `config.toml`:
/// `legacy = { kind = "electron", app_name = "Code", user_data_dir = "...", password_store = "basic", force = false }`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectronConfig {
    /// The app's product name (`Code`, `Code - Insiders`, `VSCodium`, `Cursor`, ...).
    pub app_name: String,
    /// Its user-data directory [default: located from the app name].
    pub user_data_dir: Option<PathBuf>,
    /// How it stores its key [default: the OS's usual store].
    pub password_store: Option<PasswordStore>,
    /// Write even while the app runs (it may then lose what keyshare wrote).
    #[serde(default)]
    pub force: bool,
}

impl ElectronConfig {
    /// Where the app's state database is, as [`open`](Self::open) looks for it: for naming
    /// it when it cannot be opened.
    pub fn state_db(&self) -> String {
        match user_data_dir(&self.app_name, self.user_data_dir.as_deref()) {
            Ok(dir) => state_db_path(&dir).display().to_string(),
            Err(_) => format!("the state database of {}", self.app_name),
        }
    }

    /// Opens the store of app `app` (its id in the config) for dual writes and migration.
    ///
    /// Its errors name this setting, not flags: no command that uses it takes
    /// `--keyring-password-stdin` or forces a write (QA #4: the refusal while the app runs
    /// named a `--force` that does not exist).
    /// `timeout` bounds the wait for a lock the app holds on its database (`timeout_ms`).
    pub fn open(&self, app: &str, timeout: std::time::Duration) -> anyhow::Result<Arc<dyn Store>> {
        let source = match self.password_store {
            Some(PasswordStore::Basic) => KeySource::Basic,
            Some(PasswordStore::GnomeLibsecret) => KeySource::GnomeLibsecret,
            None => KeySource::platform_default(),
        };
        let setting = format!("the legacy setting of [apps.{app}] in the config file");
        let store = ElectronStore::for_app(&self.app_name, self.user_data_dir.as_deref(), &source)
            .map_err(|err| match err {
                keyshare::Error::Unavailable {
                    store,
                    reason,
                    detail,
                } => keyshare::Error::Unavailable {
                    store,
                    reason,
                    detail: match detail.strip_suffix(TYPE_THE_PASSWORD_INSTEAD) {
                        Some(detail) if matches!(source, KeySource::GnomeLibsecret) => format!(
                            "{detail}; or, if {name} runs with --password-store=basic (no \
                             keyring), set password_store = \"basic\" in {setting}",
                            name = self.app_name
                        ),
                        Some(detail) => detail.to_owned(),
                        None => detail,
                    },
                },
                other => other,
            })?
            .force(self.force)
            .timeout(timeout)
            .how_to_force(format!("set force = true in {setting}"))
            .open()?;
        Ok(Arc::new(store))
    }
}

/// The password as stored in the keyring: a trailing line break (from `echo` or a terminal)
/// is not part of it.
fn keyring_password(value: &SecretValue) -> Zeroizing<Vec<u8>> {
    let bytes = value.expose_secret();
    let bytes = bytes
        .strip_suffix(b"\n")
        .map(|b| b.strip_suffix(b"\r").unwrap_or(b))
        .unwrap_or(bytes);
    Zeroizing::new(bytes.to_vec())
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The state database [default: <user-data-dir>/User/globalStorage/state.vscdb].
    #[arg(long, value_name = "PATH")]
    pub state_db: Option<PathBuf>,
    #[command(flatten)]
    pub key: KeyArgs,
    /// Also print each value that decrypts. Values are secrets: mind your terminal and logs.
    #[arg(long)]
    pub show_values: bool,
}

pub fn run(command: &Command, ctx: &Context) -> anyhow::Result<()> {
    match command {
        Command::List(args) => list(args, ctx),
    }
}

fn list(args: &ListArgs, ctx: &Context) -> anyhow::Result<()> {
    let key = args.key.or_app_legacy(ctx, args.state_db.is_some());
    let args = &ListArgs {
        state_db: args.state_db.clone(),
        key,
        show_values: args.show_values,
    };
    let (db, dir) = match &args.state_db {
        Some(db) => (db.clone(), args.key.user_data_dir.clone()),
        None => {
            let dir = args.key.user_data_dir()?;
            (state_db_path(&dir), Some(dir))
        }
    };
    let source = args.key.key_source()?;
    // Listing is still useful without the keyring: v10 rows decrypt, the rest say why not.
    let (keys, note) = args.key.resolve_keys(&source, dir.as_deref())?;
    let mut notes: Vec<String> = note.into_iter().collect();
    let store = open_read_only(&db, keys, args.key.app_name())?;
    let listing = store.rows()?;
    if let Some(problem) = &listing.marker_problem {
        notes.push(format!(
            "{problem}: VS Code would list none of these secrets"
        ));
    }

    let mut out = String::new();
    if ctx.json {
        let secrets: Vec<_> = listing
            .rows
            .iter()
            .map(|row| row_json(row, args.show_values))
            .collect();
        say!(
            out,
            "{}",
            json!({
                "state_db": db.display().to_string(),
                "app_name": args.key.app_name(),
                "key_source": store.keys_in_use().origin(),
                "notes": notes,
                "secrets": secrets,
            })
        );
    } else {
        say!(
            out,
            "{}: {} secret row(s); key from {}",
            db.display(),
            listing.rows.len(),
            store.keys_in_use().origin()
        );
        for note in &notes {
            say!(out, "note: {note}");
        }
        for row in &listing.rows {
            print_row(row, args.show_values, &mut out);
        }
    }
    super::print_out(&out)?;
    Ok(())
}

pub fn open_read_only(
    db: &Path,
    keys: SafeStorageKeys,
    app_name: &str,
) -> anyhow::Result<ElectronStore> {
    Ok(ElectronStore::builder(db, keys)
        .app_name(app_name)
        .read_only(true)
        .open()?)
}

fn print_row(row: &SecretRow, show_values: bool, out: &mut String) {
    let name = match &row.extension {
        Some(ext) => format!("extension {} key {:?}", ext.extension_id, ext.key),
        None => format!("key {:?}", row.key),
    };
    let version = row
        .version
        .as_deref()
        .map_or("?", |v| if v.is_empty() { "empty" } else { v });
    let unlisted = if row.listed {
        ""
    } else {
        " (not in the target marker: VS Code does not list it)"
    };
    match &row.value {
        Ok(value) => {
            let shown = if show_values {
                format!(" value {}", display_value(value))
            } else {
                String::new()
            };
            say!(
                out,
                "ok    {version:<5} {name}: decrypts ({} bytes){shown}{unlisted}",
                value.len()
            );
        }
        Err(err) => say!(out, "FAIL  {version:<5} {name}: {err}{unlisted}"),
    }
}

fn display_value(value: &SecretValue) -> String {
    match std::str::from_utf8(value.expose_secret()) {
        Ok(text) => format!("{text:?}"),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(value.expose_secret())
        ),
    }
}

fn row_json(row: &SecretRow, show_values: bool) -> serde_json::Value {
    let mut out = json!({
        "key": row.key,
        "extension_id": row.extension.as_ref().map(|e| e.extension_id.as_str()),
        "extension_key": row.extension.as_ref().map(|e| e.key.as_str()),
        "listed": row.listed,
        "version": row.version,
        "decrypts": row.value.is_ok(),
        "error": row.value.as_ref().err().map(|e| e.to_string()),
    });
    if show_values {
        if let Ok(value) = &row.value {
            match std::str::from_utf8(value.expose_secret()) {
                Ok(text) => out["value"] = json!(text),
                Err(_) => {
                    out["value_base64"] = json!(
                        base64::engine::general_purpose::STANDARD.encode(value.expose_secret())
                    )
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trailing_line_break_is_not_part_of_the_password() {
        for input in [&b"pw"[..], b"pw\n", b"pw\r\n"] {
            let got = keyring_password(&SecretValue::from_slice(input));
            assert_eq!(got.as_slice(), b"pw", "{input:?}");
        }
        let inner = keyring_password(&SecretValue::from_slice(b"p\nw\n\n"));
        assert_eq!(inner.as_slice(), b"p\nw\n");
    }
}
