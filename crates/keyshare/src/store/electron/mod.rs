//! The Electron legacy store: VS Code's (and its forks') secrets in `state.vscdb`.
//!
//! VS Code keeps each secret as a row of `ItemTable`:
//! - key `secret://<key>` (an extension's key is `JSON.stringify({extensionId, key})`, but any
//!   string may follow the prefix);
//! - value `JSON.stringify(buffer)` of the Electron `safeStorage` blob, exactly
//!   `{"type":"Buffer","data":[118,49,49,...]}`, bound as TEXT;
//! - an entry `"secret://<key>": 1` in the `__$__targetStorageMarker` row, without which VS
//!   Code's `keys()` does not list the secret.
//!
//! The keyshare key of a row is the row key without `secret://`. [`ElectronStore`] reads and
//! writes exactly that, with these guarantees beyond VS Code's own:
//! - a row that cannot be decoded or decrypted is reported (`Error::Corrupt`, naming the key
//!   and the reason) and never deleted or rewritten by a read, and it does not stop `keys()`;
//! - a write happens only when the new blob decrypts back to the value with the app's keys,
//!   and (for a keyring password typed by the user) only once that password has been checked
//!   against the rows the app wrote or, when none can tell, against the app's Secret Service
//!   item: VS Code deletes any secret it cannot decrypt. A password nothing can check is
//!   refused unless the caller opts in ([`ElectronStoreBuilder::write_unverified_password`]);
//! - a write is refused while the app runs (it caches the table and would overwrite the
//!   change), unless forced; reads are always allowed;
//! - before the first write of each store instance, the database is copied to
//!   `state.vscdb.keyshare-backup-<time>` (mode 0600), unless keyshare's newest copy is less
//!   than an hour old; only the newest three copies are kept (see `backup.rs`);
//! - each write is one `BEGIN IMMEDIATE` transaction (row and marker together).
//!
//! ```no_run
//! use keyshare::store::electron::{ElectronStore, KeySource};
//! use keyshare::{SecretKey, Store};
//!
//! let store = ElectronStore::for_app("Code", None, &KeySource::GnomeLibsecret)?.open()?;
//! let key = SecretKey::new(r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#)?;
//! let sessions = store.get(&key)?;
//! # Ok::<(), keyshare::Error>(())
//! ```

mod backup;
mod import;
mod keys;
mod marker;
mod paths;
mod platform;
mod running;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

#[cfg(target_os = "linux")]
pub use crate::store::secret_service::SafeStorageLookup;
pub use backup::utc_stamp;
pub use import::{
    import_legacy, import_legacy_with, ImportOptions, ImportOutcome, ImportProgress, ImportReport,
};
pub use keys::{KeySource, KeyringLookup, SafeStorageKeys, TYPE_THE_PASSWORD_INSTEAD};
pub use marker::{MarkerError, TargetMarker, TARGET_MARKER_ROW};
pub use oscrypt::{ExtensionSecretKey, SECRET_ROW_PREFIX};
pub use paths::{
    check_app_name, state_db_path, user_data_dir, user_data_dir_in, user_data_dir_of_state_db, Os,
    KNOWN_APPS,
};
pub use platform::wrapped_key_from_local_state;
use running::RunningCheck;
pub use running::{find_running_app, RunningApp};

use crate::error::{Error, Result, UnavailableReason};
use crate::model::{Limits, SecretKey, SecretValue};
use crate::store::{Store, StoreInfo, DEFAULT_TIMEOUT};

/// VS Code's schema, exactly as VS Code creates it.
const SCHEMA: &str = "PRAGMA user_version = 1; \
     CREATE TABLE IF NOT EXISTS ItemTable (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)";

/// Every key starting with `secret://` sorts from `secret://` up to (excluding) `secret:/0`,
/// since `0` follows `/`: a range the key's unique index answers.
const SECRET_ROWS: &str =
    "SELECT key, value FROM ItemTable WHERE key >= 'secret://' AND key < 'secret:/0'";
const SECRET_ROW_KEYS: &str =
    "SELECT key FROM ItemTable WHERE key >= 'secret://' AND key < 'secret:/0'";

/// Up to this size a state database gets SQLite's full `PRAGMA integrity_check` when it is
/// opened; above, `quick_check` (pages only) and a check that the key index finds each
/// `secret://` row ([`check_secret_index`]). `quick_check` alone misses a damaged index entry,
/// which makes a read say "not found" and a write add a second row for the key (QA s19 F4).
/// Measured (sqlite3 shell 3.40, optimized, warm cache): 20 MB of VS Code-like rows (4,300 of
/// 50 B to 20 kB) 10 ms; 30 MB of 180,000 rows of 60 B 0.5 s, where `quick_check` takes 0.06 s.
pub const FULL_CHECK_MAX_BYTES: u64 = super::sqlite_check::FULL_CHECK_MAX;

/// A [`Store`] over an Electron app's `state.vscdb`. See the module documentation.
pub struct ElectronStore {
    path: PathBuf,
    app_name: String,
    /// `None` when the database is not inside a user-data directory we know.
    running_check: Option<RunningCheck>,
    keys: SafeStorageKeys,
    keyring: KeyringCheck,
    write_unverified_password: bool,
    force: bool,
    how_to_force: Option<String>,
    backup: bool,
    read_only: bool,
    limits: Limits,
    /// The lock wait (see [`ElectronStoreBuilder::timeout`]).
    timeout: Duration,
    state: Mutex<State>,
}

struct State {
    conn: Connection,
    /// `None` until the first write; then the backup taken (if any).
    first_write: Option<Option<PathBuf>>,
    /// Set after the first write commits: the write key (a typed keyring password, or the
    /// fixed `v10` key against a database of `v11` rows) has then been checked against the
    /// app's rows (or, for a typed password no row can check, its Secret Service item).
    write_key_confirmed: bool,
    /// Set once the app's Secret Service item was found to hold the typed keyring password, so
    /// that the Secret Service is asked once per instance, not before every write.
    keyring_vouched: bool,
}

/// Where a typed keyring password is checked when no row can tell; a newtype for `Debug`.
#[derive(Clone)]
struct KeyringCheck(Arc<dyn KeyringLookup + Send + Sync>);

impl fmt::Debug for KeyringCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyringCheck")
    }
}

/// What the app's rows say about the write key (see `SafeStorageKeys::vouches_for_write_key`).
enum RowVerdict {
    /// At least one row opens with it.
    Confirmed,
    /// This many rows that only the real key opens, and none opens with it.
    Contradicted(usize),
    /// No row can tell: none has the write key's version tag, or the empty-password key opens
    /// them too.
    Silent,
}

impl fmt::Debug for ElectronStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElectronStore")
            .field("path", &self.path)
            .field("app_name", &self.app_name)
            .field("keys", &self.keys)
            .field("write_unverified_password", &self.write_unverified_password)
            .field("force", &self.force)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

/// Opens an [`ElectronStore`]; see [`ElectronStore::builder`].
#[derive(Debug)]
pub struct ElectronStoreBuilder {
    path: PathBuf,
    keys: SafeStorageKeys,
    keyring: KeyringCheck,
    write_unverified_password: bool,
    app_name: String,
    user_data_dir: Option<PathBuf>,
    force: bool,
    how_to_force: Option<String>,
    backup: bool,
    create: bool,
    read_only: bool,
    limits: Limits,
    timeout: Duration,
}

impl ElectronStoreBuilder {
    /// How long a read or write waits for a lock another program (the app) holds on the
    /// database before it fails as unavailable (default [`DEFAULT_TIMEOUT`]): the configured
    /// `timeout_ms`, the bound on any store call that can hang (QA s19 F8: it was always 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The app that owns the database (default `Code`): named in messages and used to find a
    /// running instance.
    pub fn app_name(mut self, app_name: impl Into<String>) -> Self {
        self.app_name = app_name.into();
        self
    }

    /// The app's user-data directory, where a running instance leaves its lock files. By
    /// default it is derived from the database path when that has the standard layout
    /// (`<userData>/User/globalStorage/state.vscdb`); otherwise no running check is possible.
    pub fn user_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.user_data_dir = Some(dir.into());
        self
    }

    /// Writes even while the app runs (default: refuse). The app may then overwrite or lose
    /// what was written.
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// How the caller's user forces a write, in the caller's words, for the refusal while the
    /// app runs (default: the builder's own [`ElectronStoreBuilder::force`]). A command-line
    /// tool names its own setting here: the library cannot know it.
    pub fn how_to_force(mut self, how: impl Into<String>) -> Self {
        self.how_to_force = Some(how.into());
        self
    }

    /// Where a keyring password typed by the user ([`KeySource::KeyringPassword`]) is checked
    /// when no row of the database can confirm or contradict it: the app's Secret Service item
    /// (default: the session's Secret Service, asked only then, at the first write, never for
    /// a read).
    pub fn keyring_lookup(mut self, lookup: impl KeyringLookup + Send + Sync + 'static) -> Self {
        self.keyring = KeyringCheck(Arc::new(lookup));
        self
    }

    /// Writes with a typed keyring password that no row of the database can confirm or
    /// contradict without asking the Secret Service (default: no, the app's Secret Service item
    /// must hold it). For a database of the app under another keyring (a profile copied from
    /// another machine), whose password the caller answers for: with a wrong one, every secret
    /// written is one the app cannot read, and deletes. Rows that contradict the password
    /// refuse it even so.
    pub fn write_unverified_password(mut self, write_unverified_password: bool) -> Self {
        self.write_unverified_password = write_unverified_password;
        self
    }

    /// Whether to back the database up before the first write (default: yes). The backup is
    /// `<db>.keyshare-backup-<UTC time>` (mode 0600) next to the database; when the newest such
    /// backup is less than an hour old, it stands for a new one. Afterwards only the newest
    /// three such backups are kept: older ones are deleted (they may hold secrets deleted
    /// since), and no other file is.
    pub fn backup(mut self, backup: bool) -> Self {
        self.backup = backup;
        self
    }

    /// Creates the database, with VS Code's schema, if it does not exist (default: no, a
    /// missing database is an error).
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Opens the database read-only: writes fail, and nothing (not even a journal) is written.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Value size limits for writes.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Opens the database and checks that it is a VS Code state database.
    pub fn open(self) -> Result<ElectronStore> {
        check_app_name(&self.app_name)?;
        let user_data_dir = self
            .user_data_dir
            .clone()
            .or_else(|| user_data_dir_of_state_db(&self.path));
        let is_default_dir = user_data_dir.as_deref().is_some_and(|dir| {
            paths::user_data_dir(&self.app_name, None).is_ok_and(|default| same_path(dir, &default))
        });
        let name = store_name(&self.app_name, &self.path);
        let exists = self.path.exists();
        if !exists && (!self.create || self.read_only) {
            return Err(Error::io(
                format!("opening {name}"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such file (is the app name or user-data directory right?)",
                ),
            ));
        }
        if self.path.is_dir() {
            // SQLite would answer "disk I/O error" (found by QA).
            return Err(Error::io(
                format!("opening {name}"),
                std::io::Error::other(
                    "it is a directory; give the state database file (.../User/globalStorage/\
                     state.vscdb)",
                ),
            ));
        }
        if !exists {
            create_private_file(&self.path)?;
        }
        let flags = if self.read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
        };
        let sql = |doing: &str, e: rusqlite::Error| {
            sql_error(&name, &self.app_name, self.timeout, doing, e)
        };
        let conn = Connection::open_with_flags(&self.path, flags).map_err(|e| sql("opening", e))?;
        conn.busy_timeout(self.timeout)
            .map_err(|e| sql("configuring", e))?;
        if exists {
            // Before anything is read or written: a damaged index answers reads wrongly and
            // makes writes miss the row they replace, so neither may happen (QA s19 F4).
            let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
            match check_structure(&conn, size, FULL_CHECK_MAX_BYTES) {
                Ok(Ok(())) => {}
                Ok(Err(damage)) => {
                    return Err(Error::Corrupt {
                        store: name,
                        key: None,
                        detail: format!(
                            "its file structure is damaged ({damage}); nothing was read from \
                             it and the file was left untouched. {} itself may still open it: \
                             restore a backup (keyshare's are beside it, *.keyshare-backup-*), \
                             or repair it with the sqlite3 tool (.recover)",
                            self.app_name
                        ),
                    })
                }
                Err(e) => return Err(sql("checking the file structure", e)),
            }
        }
        let has_table: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ItemTable')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| sql("reading the schema", e))?;
        if !has_table {
            if !self.create || self.read_only {
                return Err(Error::Corrupt {
                    store: name,
                    key: None,
                    detail: "it has no ItemTable, so it is not a VS Code state database".to_owned(),
                });
            }
            conn.execute_batch(SCHEMA)
                .map_err(|e| sql("creating the schema", e))?;
        } else {
            // An ItemTable without the columns every read and write uses: refused here, before
            // a write reaches the shared store and then fails on this one (found by QA: "no
            // such column: value" half-way through a `set`).
            let columns: Vec<String> = conn
                .prepare("SELECT name FROM pragma_table_info('ItemTable')")
                .and_then(|mut stmt| {
                    stmt.query_map([], |row| row.get(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(|e| sql("reading the schema", e))?;
            let missing: Vec<&str> = ["key", "value"]
                .into_iter()
                .filter(|wanted| !columns.iter().any(|c| c.eq_ignore_ascii_case(wanted)))
                .collect();
            if !missing.is_empty() {
                return Err(Error::Corrupt {
                    store: name,
                    key: None,
                    detail: format!(
                        "its ItemTable has no {} column, so it is not a VS Code state database \
                         (the file was left untouched)",
                        missing.join(" or ")
                    ),
                });
            }
        }
        Ok(ElectronStore {
            path: self.path,
            running_check: user_data_dir
                .map(|dir| RunningCheck::new(&self.app_name, dir, is_default_dir)),
            app_name: self.app_name,
            keys: self.keys,
            keyring: self.keyring,
            write_unverified_password: self.write_unverified_password,
            force: self.force,
            how_to_force: self.how_to_force,
            backup: self.backup,
            read_only: self.read_only,
            limits: self.limits,
            timeout: self.timeout,
            state: Mutex::new(State {
                conn,
                // A database created just now holds nothing to back up.
                first_write: if exists { None } else { Some(None) },
                write_key_confirmed: false,
                keyring_vouched: false,
            }),
        })
    }
}

/// One `secret://` row, as `ElectronStore::rows` reports it.
#[derive(Debug)]
pub struct SecretRow {
    /// Everything after `secret://`, verbatim (lossily decoded if it is not UTF-8).
    pub key: String,
    /// The extension id and key, when the row key is exactly what VS Code writes for an
    /// extension's secret.
    pub extension: Option<ExtensionSecretKey>,
    /// Whether the target marker lists the row (`1`), so that VS Code's `keys()` returns it.
    pub listed: bool,
    /// The blob's version tag (`v10`, `v11`), `""` for the empty blob, `None` when the value
    /// is not a Node Buffer or starts with something else.
    pub version: Option<String>,
    /// The decrypted value, or why it could not be read.
    pub value: Result<SecretValue>,
}

/// Every `secret://` row of a database, for `keyshare legacy list`.
#[derive(Debug)]
pub struct RowListing {
    /// The rows, in key order.
    pub rows: Vec<SecretRow>,
    /// Why the target marker could not be read, if it could not (then `listed` is false
    /// everywhere).
    pub marker_problem: Option<MarkerError>,
}

impl ElectronStore {
    /// A builder for the store over the database at `state_db`, decrypting and encrypting with
    /// `keys`.
    pub fn builder(state_db: impl Into<PathBuf>, keys: SafeStorageKeys) -> ElectronStoreBuilder {
        ElectronStoreBuilder {
            path: state_db.into(),
            keys,
            keyring: KeyringCheck(Arc::new(keys::DefaultKeyringLookup)),
            write_unverified_password: false,
            app_name: "Code".to_owned(),
            user_data_dir: None,
            force: false,
            how_to_force: None,
            backup: true,
            create: false,
            read_only: false,
            limits: Limits::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A builder for an installed app: finds its user-data directory (`explicit`, else
    /// `VSCODE_PORTABLE`, `VSCODE_APPDATA` or the OS default) and resolves its keys from
    /// `source` (which may ask the Secret Service or the keychain).
    pub fn for_app(
        app_name: &str,
        explicit_user_data_dir: Option<&Path>,
        source: &KeySource,
    ) -> Result<ElectronStoreBuilder> {
        let dir = user_data_dir(app_name, explicit_user_data_dir)?;
        let keys = source.resolve(app_name, Some(&dir))?;
        Ok(ElectronStore::builder(state_db_path(&dir), keys)
            .app_name(app_name)
            .user_data_dir(dir))
    }

    /// The database's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The owning app's name.
    pub fn app_name(&self) -> &str {
        &self.app_name
    }

    /// The keys this store uses.
    pub fn keys_in_use(&self) -> &SafeStorageKeys {
        &self.keys
    }

    /// The backup from before the first write, once there has been one: taken then, or a recent
    /// one that stood for it (see [`ElectronStoreBuilder::backup`]).
    pub fn backup_path(&self) -> Option<PathBuf> {
        self.lock().first_write.clone().flatten()
    }

    /// Every `secret://` row with its decoded key, whether VS Code lists it, and its value or
    /// why it cannot be read. Reads only.
    pub fn rows(&self) -> Result<RowListing> {
        let (raw_rows, marker, marker_problem) = {
            let state = self.lock();
            let (marker, marker_problem) = match self.read_marker(&state.conn) {
                Ok(marker) => (marker, None),
                Err(Error::Corrupt { .. }) => {
                    (TargetMarker::default(), self.marker_error(&state.conn))
                }
                Err(e) => return Err(e),
            };
            let mut stmt = state
                .conn
                .prepare_cached(SECRET_ROWS)
                .map_err(|e| self.sql("listing secrets", e))?;
            let raw_rows = stmt
                .query_map([], |row| {
                    let key = match row.get_ref(0)? {
                        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                        _ => String::new(),
                    };
                    Ok((key, value_bytes(row.get_ref(1)?)))
                })
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(|e| self.sql("listing secrets", e))?;
            (raw_rows, marker, marker_problem)
        };
        let rows = raw_rows
            .into_iter()
            .map(|(row_key, raw)| {
                let parsed = oscrypt::parse_secret_row_key(&row_key);
                let key = parsed.as_ref().map(|p| p.key.clone()).unwrap_or_default();
                let blob =
                    raw.and_then(|raw| oscrypt::decode_buffer_json(raw).map_err(|e| e.to_string()));
                let version = blob.as_ref().ok().and_then(|b| version_of(b));
                let value = match blob {
                    Ok(blob) => self.decrypt_row(&key, &blob),
                    Err(detail) => Err(self.corrupt(&key, detail)),
                };
                SecretRow {
                    listed: marker.is_machine(&row_key),
                    extension: parsed.and_then(|p| p.extension),
                    key,
                    version,
                    value,
                }
            })
            .collect();
        Ok(RowListing {
            rows,
            marker_problem,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every write is a transaction that rolls back when dropped, so a panic while the lock
        // was held cannot leave the database half-written.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn name(&self) -> String {
        store_name(&self.app_name, &self.path)
    }

    fn sql(&self, doing: &str, e: rusqlite::Error) -> Error {
        sql_error(&self.name(), &self.app_name, self.timeout, doing, e)
    }

    fn corrupt(&self, key: &str, detail: impl fmt::Display) -> Error {
        Error::Corrupt {
            store: self.name(),
            key: Some(key.to_owned()),
            detail: format!("{detail} (the row is left untouched)"),
        }
    }

    fn decrypt_row(&self, key: &str, blob: &[u8]) -> Result<SecretValue> {
        match self.keys.decrypt(blob) {
            Ok(plain) => Ok(SecretValue::from(plain)),
            Err(oscrypt::DecryptError::MissingKey { prefix }) => Err(Error::unavailable(
                self.name(),
                UnavailableReason::NotRunning,
                format!(
                    "key {key:?} is a {prefix} secret, which needs {app}'s keyring secret; this \
                     store reads with {origin}. {advice}",
                    app = self.app_name,
                    origin = self.keys.origin(),
                    advice = self.keys.missing_key_advice.as_deref().unwrap_or(
                        "Use the gnome-libsecret password store or give the keyring password"
                    )
                ),
            )),
            Err(e) => Err(self.corrupt(
                key,
                match &self.keys.wrong_key_hint {
                    Some(hint) => {
                        format!("cannot decrypt it with {}: {e}; {hint}", self.keys.origin())
                    }
                    None => format!("cannot decrypt it with {}: {e}", self.keys.origin()),
                },
            )),
        }
    }

    /// The marker, or `Corrupt` if it cannot be parsed.
    fn read_marker(&self, conn: &Connection) -> Result<TargetMarker> {
        match self.raw_marker(conn)? {
            None => Ok(TargetMarker::default()),
            Some(raw) => TargetMarker::parse(&raw).map_err(|e| Error::Corrupt {
                store: self.name(),
                key: None,
                detail: format!(
                    "{e}; keyshare does not list or write secrets until it is repaired, and \
                     leaves it untouched"
                ),
            }),
        }
    }

    fn marker_error(&self, conn: &Connection) -> Option<MarkerError> {
        self.raw_marker(conn)
            .ok()
            .flatten()
            .and_then(|raw| TargetMarker::parse(&raw).err())
    }

    fn raw_marker(&self, conn: &Connection) -> Result<Option<Vec<u8>>> {
        conn.prepare_cached("SELECT value FROM ItemTable WHERE key = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([TARGET_MARKER_ROW], |row| {
                    Ok(value_bytes(row.get_ref(0)?).unwrap_or_default())
                })
                .optional()
            })
            .map_err(|e| self.sql("reading the target marker", e))
    }

    fn write_marker(&self, conn: &Connection, marker: &TargetMarker) -> Result<()> {
        conn.prepare_cached("INSERT INTO ItemTable (key, value) VALUES (?1, ?2)")
            .and_then(|mut stmt| stmt.execute((TARGET_MARKER_ROW, marker.to_json())))
            .map(drop)
            .map_err(|e| self.sql("writing the target marker", e))
    }

    /// Refuses writes on a read-only store or while the app runs (unless forced).
    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::unavailable(
                self.name(),
                UnavailableReason::Denied,
                "the store was opened read-only",
            ));
        }
        if self.force {
            return Ok(());
        }
        if let Some(check) = &self.running_check {
            if let Some(running) = check.find() {
                return Err(Error::unavailable(
                    self.name(),
                    UnavailableReason::InUse,
                    format!(
                        "{app} is running ({evidence}); it keeps its secrets in memory and would \
                         overwrite what keyshare writes now. Quit {app} and retry, or {how} to \
                         write anyway (then {app} may overwrite or lose what was written)",
                        app = self.app_name,
                        evidence = running.evidence,
                        how = self
                            .how_to_force
                            .as_deref()
                            .unwrap_or("open the store with force (ElectronStoreBuilder::force)")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Before the first write of this instance: a backup of the database (taken now, or a
    /// recent one reused) and old backups pruned, by the rule in `backup.rs`.
    fn before_first_write(&self, state: &mut State) -> Result<()> {
        if state.first_write.is_some() {
            return Ok(());
        }
        let backup = if self.backup {
            let (path, taken) = backup::backup_before_first_write(
                &state.conn,
                &self.path,
                std::time::SystemTime::now(),
            )?;
            if taken {
                tracing::info!(backup = %path.display(), "backed up {}", self.path.display());
            } else {
                tracing::info!(backup = %path.display(), "a recent backup of {} stands", self.path.display());
            }
            Some(path)
        } else {
            None
        };
        state.first_write = Some(backup);
        Ok(())
    }

    /// Checks a user-given keyring password before the first write, outside any transaction:
    /// against the rows the app wrote with it, else against the app's Secret Service item.
    fn check_typed_password(&self, state: &mut State) -> Result<()> {
        match self.row_verdict(&state.conn)? {
            RowVerdict::Confirmed => Ok(()),
            RowVerdict::Contradicted(rows) => Err(self.contradicted_by_rows(rows)),
            RowVerdict::Silent if self.write_unverified_password || state.keyring_vouched => Ok(()),
            RowVerdict::Silent => {
                self.check_against_keyring()?;
                state.keyring_vouched = true;
                Ok(())
            }
        }
    }

    /// The same check inside the write transaction, where the rows cannot change any more; the
    /// Secret Service's answer (`keyring_vouched`) was got before it.
    fn confirm_write_key(&self, conn: &Connection, keyring_vouched: bool) -> Result<()> {
        match self.row_verdict(conn)? {
            RowVerdict::Confirmed => Ok(()),
            RowVerdict::Contradicted(rows) => Err(self.contradicted_by_rows(rows)),
            RowVerdict::Silent if self.write_unverified_password || keyring_vouched => Ok(()),
            // Only when the rows that confirmed it a moment ago are gone.
            RowVerdict::Silent => Err(Error::invalid(
                "keyring password",
                format!(
                    "the secrets that confirmed it were removed from {path} just now (is {app} \
                     running?). Nothing was written; retry",
                    path = self.path.display(),
                    app = self.app_name
                ),
            )),
        }
    }

    /// What the rows say about the write key; undecodable rows say nothing (they are reported
    /// on read).
    fn row_verdict(&self, conn: &Connection) -> Result<RowVerdict> {
        let mut stmt = conn
            .prepare_cached(SECRET_ROWS)
            .map_err(|e| self.sql("checking the keyring password", e))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| self.sql("checking the keyring password", e))?;
        let (mut confirmed, mut contradicted) = (0usize, 0usize);
        while let Some(row) = rows
            .next()
            .map_err(|e| self.sql("checking the keyring password", e))?
        {
            let Ok(Ok(blob)) = row.get_ref(1).map(|v| {
                value_bytes(v)
                    .and_then(|raw| oscrypt::decode_buffer_json(raw).map_err(|e| e.to_string()))
            }) else {
                continue;
            };
            match self.keys.vouches_for_write_key(&blob) {
                Some(true) => confirmed += 1,
                Some(false) => contradicted += 1,
                None => {}
            }
        }
        Ok(if confirmed > 0 {
            RowVerdict::Confirmed
        } else if contradicted > 0 {
            RowVerdict::Contradicted(contradicted)
        } else {
            RowVerdict::Silent
        })
    }

    fn contradicted_by_rows(&self, rows: usize) -> Error {
        Error::invalid(
            "keyring password",
            format!(
                "it decrypts none of the {rows} {prefix} secrets {app} wrote, so it is not \
                 {app}'s key; writing with it would leave secrets {app} cannot read (and \
                 deletes). Nothing was written",
                prefix = self.keys.write_prefix().unwrap_or("v11"),
                app = self.app_name
            ),
        )
    }

    /// Checks the typed password against the secret of the app's Secret Service item, the key
    /// the app encrypts with on this keyring. A password nothing can check is refused: a
    /// mistyped one would write secrets the app deletes, and overwrite the values they replace.
    fn check_against_keyring(&self) -> Result<()> {
        const OPT_IN: &str = "ElectronStoreBuilder::write_unverified_password";
        let app = &self.app_name;
        let path = self.path.display();
        let unconfirmed = format!(
            "no {prefix} secret in {path} can confirm it",
            prefix = self.keys.write_prefix().unwrap_or("v11")
        );
        let (why, what_to_do) = match self.keyring.0.keyring_secret(app) {
            Ok(Some(secret)) if self.keys.writes_with_keyring_secret(&secret) => return Ok(()),
            Ok(Some(_)) => (
                format!(
                    "{unconfirmed}, and it is not the secret of the Secret Service item \
                     application={app:?}, the key {app} encrypts with on this keyring"
                ),
                format!(
                    "Give that item's secret, or let keyshare read it (password store \
                     gnome-libsecret); only if {path} belongs to {app} under another keyring (a \
                     copied profile), write anyway with {OPT_IN}"
                ),
            ),
            Ok(None) => (
                format!(
                    "{unconfirmed}, and the Secret Service has no item application={app:?} to \
                     check it against ({app} makes up a new key when it next starts)"
                ),
                format!(
                    "Start {app} once so that it creates its item, then give that item's \
                     secret; only if {path} belongs to {app} under another keyring (a copied \
                     profile), write anyway with {OPT_IN}"
                ),
            ),
            Err(e) => (
                format!(
                    "{unconfirmed}, and it could not be checked against the Secret Service item \
                     application={app:?}: {}",
                    without_password_advice(&e)
                ),
                format!(
                    "Make the Secret Service reachable (and unlocked) and retry, or, if you are \
                     sure of the password, write anyway with {OPT_IN}"
                ),
            ),
        };
        Err(Error::invalid(
            "keyring password",
            format!(
                "{why}; writing with a wrong one would leave secrets {app} cannot read (and \
                 deletes). Nothing was written. {what_to_do}"
            ),
        ))
    }

    /// Refuses a write with the fixed `v10` key when the app keeps `v11` rows: those were
    /// written with a keyring key, so the app protects its secrets with the keyring, and a
    /// `v10` row would be a readable-by-anyone copy of a secret that was protected (often
    /// over a value this store could not even read).
    fn refuse_downgrade(&self, conn: &Connection) -> Result<()> {
        let mut stmt = conn
            .prepare_cached(SECRET_ROWS)
            .map_err(|e| self.sql("checking how the app protects its secrets", e))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| self.sql("checking how the app protects its secrets", e))?;
        let mut keyring_rows = 0usize;
        while let Some(row) = rows
            .next()
            .map_err(|e| self.sql("checking how the app protects its secrets", e))?
        {
            // Undecodable rows say nothing about the key; they are reported on read.
            let Ok(Ok(blob)) = row.get_ref(1).map(|v| {
                value_bytes(v)
                    .and_then(|raw| oscrypt::decode_buffer_json(raw).map_err(|e| e.to_string()))
            }) else {
                continue;
            };
            if blob.starts_with(b"v11") {
                keyring_rows += 1;
            }
        }
        if keyring_rows > 0 {
            return Err(Error::ProtectionUnavailable(format!(
                "{app} protects its secrets with the keyring ({keyring_rows} v11 secrets in \
                 {path}), but this store has only {origin}, which would write the secret \
                 readable by anyone. Nothing was written. Use the gnome-libsecret password store, \
                 which reads {app}'s keyring password from the Secret Service",
                app = self.app_name,
                path = self.path.display(),
                origin = self.keys.origin()
            )));
        }
        Ok(())
    }

    /// Encrypts `value` into a row value, and checks that it decodes and decrypts back to
    /// `value` with the app's keys.
    fn seal(&self, key: &SecretKey, value: &SecretValue) -> Result<String> {
        let write_key = self.keys.write.as_ref().ok_or_else(|| {
            Error::unavailable(
                self.name(),
                UnavailableReason::Denied,
                format!(
                    "cannot write {key:?}: {}",
                    self.keys
                        .no_write_reason
                        .as_deref()
                        .unwrap_or("the app's key is unknown")
                ),
            )
        })?;
        let blob = oscrypt::encrypt(write_key, value.expose_secret()).map_err(|e| match e {
            oscrypt::EncryptError::TooLong => Error::TooLarge {
                limit: self.limits.max_value_len,
                actual: value.len(),
            },
            other => Error::io(
                format!("encrypting {key:?}"),
                std::io::Error::other(other.to_string()),
            ),
        })?;
        let row_value = oscrypt::encode_buffer_json(&blob);
        let round_trip = oscrypt::decode_buffer_json(&row_value)
            .ok()
            .filter(|decoded| *decoded == blob)
            .and_then(|decoded| self.keys.decrypt(&decoded).ok())
            .map(SecretValue::from);
        if round_trip.as_ref() != Some(value) {
            return Err(Error::unavailable(
                self.name(),
                UnavailableReason::Backend,
                format!(
                    "refusing to write {key:?}: the new row does not decrypt back to the value \
                     with {}; nothing was written",
                    self.keys.origin()
                ),
            ));
        }
        Ok(row_value)
    }
}

impl Store for ElectronStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "electron",
            location: self.path.display().to_string(),
            protection: format!(
                "{} safeStorage, key from {}",
                self.app_name,
                self.keys.origin()
            ),
        }
    }

    /// `Ok(None)` when there is no row. `Corrupt` (naming the key) when the row is not a Node
    /// Buffer or does not decrypt; `Unavailable` when it needs a key this store was not given
    /// or the database stays locked; the row is never changed by a read.
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let row_key = format!("{SECRET_ROW_PREFIX}{key}");
        let raw = {
            let state = self.lock();
            state
                .conn
                .prepare_cached("SELECT value FROM ItemTable WHERE key = ?1")
                .and_then(|mut stmt| {
                    stmt.query_row([&row_key], |row| Ok(value_bytes(row.get_ref(0)?)))
                        .optional()
                })
                .map_err(|e| self.sql("reading a secret", e))?
        };
        let Some(raw) = raw else {
            return Ok(None);
        };
        let blob = raw
            .and_then(|raw| oscrypt::decode_buffer_json(raw).map_err(|e| e.to_string()))
            .map_err(|detail| self.corrupt(key.as_str(), detail))?;
        self.decrypt_row(key.as_str(), &blob).map(Some)
    }

    /// Writes the row (TEXT) and its marker in one transaction. `Unavailable` when the app is
    /// running (unless forced), when the app's key is unknown, or when the database stays
    /// locked; `Invalid` when a user-given keyring password does not match the app's rows or,
    /// without rows that can tell, its Secret Service item, or cannot be checked at all (unless
    /// [`ElectronStoreBuilder::write_unverified_password`]);
    /// `ProtectionUnavailable` when the fixed `v10` key (password store basic) would write
    /// into a database whose `v11` rows show that the app protects its secrets with the keyring;
    /// `Corrupt` when the target marker cannot be parsed (nothing is written then).
    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.limits.check_value(value)?;
        self.check_writable()?;
        let row_key = format!("{SECRET_ROW_PREFIX}{key}");
        let row_value = self.seal(key, value)?;
        let mut guard = self.lock();
        let state = &mut *guard;
        if self.keys.confirm_before_write && !state.write_key_confirmed {
            // Before the backup and outside the write transaction: the Secret Service may take
            // seconds to answer, and the app's database must not stay locked meanwhile.
            self.check_typed_password(state)?;
        }
        self.before_first_write(state)?;
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql("starting a write", e))?;
        if self.keys.confirm_before_write && !state.write_key_confirmed {
            self.confirm_write_key(&tx, state.keyring_vouched)?;
        }
        if self.keys.writes_with_fixed_key() && !state.write_key_confirmed {
            self.refuse_downgrade(&tx)?;
        }
        let mut marker = self.read_marker(&tx)?;
        tx.prepare_cached("INSERT INTO ItemTable (key, value) VALUES (?1, ?2)")
            .and_then(|mut stmt| stmt.execute((&row_key, &row_value)))
            .map_err(|e| self.sql("writing a secret", e))?;
        if marker.set_machine(&row_key) {
            self.write_marker(&tx, &marker)?;
        }
        tx.commit().map_err(|e| self.sql("committing a write", e))?;
        state.write_key_confirmed = true;
        Ok(())
    }

    /// Deletes the row and its marker entry in one transaction; the same refusals as `set`.
    fn delete(&self, key: &SecretKey) -> Result<bool> {
        self.check_writable()?;
        let row_key = format!("{SECRET_ROW_PREFIX}{key}");
        let mut guard = self.lock();
        let state = &mut *guard;
        self.before_first_write(state)?;
        let tx = state
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.sql("starting a delete", e))?;
        let mut marker = self.read_marker(&tx)?;
        let deleted = tx
            .prepare_cached("DELETE FROM ItemTable WHERE key = ?1")
            .and_then(|mut stmt| stmt.execute([&row_key]))
            .map_err(|e| self.sql("deleting a secret", e))?;
        if marker.remove(&row_key) {
            self.write_marker(&tx, &marker)?;
        }
        tx.commit()
            .map_err(|e| self.sql("committing a delete", e))?;
        Ok(deleted > 0)
    }

    /// The keys of the `secret://` rows that the target marker lists (VS Code's semantics).
    /// Rows whose key is not a valid keyshare key are skipped and logged; an undecryptable row
    /// is listed (its `get` reports why). `Corrupt` when the marker itself cannot be parsed.
    fn keys(&self) -> Result<Vec<SecretKey>> {
        let state = self.lock();
        let marker = self.read_marker(&state.conn)?;
        let listed: std::collections::HashSet<&str> = marker.machine_keys().collect();
        let mut stmt = state
            .conn
            .prepare_cached(SECRET_ROW_KEYS)
            .map_err(|e| self.sql("listing secrets", e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql("listing secrets", e))?;
        let mut keys = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sql("listing secrets", e))? {
            let ValueRef::Text(raw) = row.get_ref(0).map_err(|e| self.sql("listing secrets", e))?
            else {
                continue;
            };
            let Ok(row_key) = std::str::from_utf8(raw) else {
                tracing::warn!(store = %self.name(), "skipping a secret row whose key is not UTF-8");
                continue;
            };
            if !listed.contains(row_key) {
                continue;
            }
            let name = &row_key[SECRET_ROW_PREFIX.len()..];
            match SecretKey::new(name) {
                Ok(key) => keys.push(key),
                Err(e) => tracing::warn!(
                    store = %self.name(),
                    "skipping secret row {row_key:?}: {e}"
                ),
            }
        }
        Ok(keys)
    }
}

/// Whether SQLite finds the database sound: `PRAGMA integrity_check` up to `full_check_max`
/// bytes, else `quick_check` and [`check_secret_index`]. `Ok(Err(..))` names the damage, its
/// first complaints; other failures (the file stays locked, an I/O error) are the outer error,
/// not damage, as in the vault's `check_pages`.
fn check_structure(
    conn: &Connection,
    size: u64,
    full_check_max: u64,
) -> rusqlite::Result<std::result::Result<(), String>> {
    use super::sqlite_check::{check, damage_from_corruption, Depth};
    let depth = if size <= full_check_max {
        Depth::Full
    } else {
        Depth::Quick
    };
    match check(conn, depth)? {
        Err(damage) => Ok(Err(format!("{}: {damage}", depth.pragma()))),
        Ok(()) if depth == Depth::Full => Ok(Ok(())),
        Ok(()) => damage_from_corruption(check_secret_index(conn)),
    }
}

/// Whether the key index finds every `secret://` row the table holds, once: what
/// `quick_check` does not look at, and what keyshare's reads and writes rely on. A table scan
/// (as VS Code reads the table) and one index lookup per secret row: a few, in a large file.
fn check_secret_index(conn: &Connection) -> rusqlite::Result<std::result::Result<(), String>> {
    let mut scan = conn.prepare(
        "SELECT rowid, key FROM ItemTable NOT INDEXED WHERE substr(key, 1, 9) = 'secret://'",
    )?;
    let mut lookup = conn.prepare("SELECT rowid FROM ItemTable WHERE key = ?1")?;
    let mut rows = scan.query([])?;
    while let Some(row) = rows.next()? {
        let rowid: i64 = row.get(0)?;
        let key: String = row.get(1)?;
        let found: Vec<i64> = lookup
            .query_map([&key], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if found != [rowid] {
            return Ok(Err(format!(
                "the index of ItemTable's keys does not lead to secret row {rowid} (it finds \
                 rows {found:?})"
            )));
        }
    }
    Ok(Ok(()))
}

/// A Secret Service error without the lookup's advice to type the password: the user did.
fn without_password_advice(error: &Error) -> String {
    let shown = error.to_string();
    match shown.strip_suffix(TYPE_THE_PASSWORD_INSTEAD) {
        Some(stripped) => stripped.to_owned(),
        None => shown,
    }
}

fn store_name(app_name: &str, path: &Path) -> String {
    format!("{app_name} state database {}", path.display())
}

/// The bytes of a row value stored as TEXT or BLOB; an error message for anything else.
fn value_bytes(value: ValueRef<'_>) -> std::result::Result<Vec<u8>, String> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => Ok(bytes.to_vec()),
        ValueRef::Null => Err("the row value is NULL, not a Node Buffer".to_owned()),
        ValueRef::Integer(_) | ValueRef::Real(_) => {
            Err("the row value is a number, not a Node Buffer".to_owned())
        }
    }
}

fn version_of(blob: &[u8]) -> Option<String> {
    if blob.is_empty() {
        return Some(String::new());
    }
    match blob.get(..3) {
        Some(tag @ (b"v10" | b"v11")) => Some(String::from_utf8_lossy(tag).into_owned()),
        _ => None,
    }
}

fn sql_error(
    store: &str,
    app_name: &str,
    timeout: Duration,
    doing: &str,
    e: rusqlite::Error,
) -> Error {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::unavailable(
            store,
            UnavailableReason::TimedOut,
            format!(
                "{doing}: another program (is {app_name} running?) kept the database locked for \
                 {} ms (timeout_ms)",
                timeout.as_millis()
            ),
        ),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Error::Corrupt {
            store: store.to_owned(),
            key: None,
            detail: format!("{doing}: {e} (the file is left untouched)"),
        },
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied) => {
            Error::unavailable(store, UnavailableReason::Denied, format!("{doing}: {e}"))
        }
        _ => Error::io(
            format!("{doing} in {store}"),
            std::io::Error::other(e.to_string()),
        ),
    }
}

/// Creates a new database file readable by its owner only (it will hold secrets).
fn create_private_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
        .open(path)
        .map(drop)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

fn same_path(a: &Path, b: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(a) == canonical(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Above the size bound, a damaged key index is still found: `quick_check` misses it, the
    /// secret rows' index lookups do not (QA s19 F4).
    #[test]
    fn a_large_database_gets_its_secret_rows_index_checked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.vscdb");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO ItemTable VALUES ('secret://{\"key\":\"github.auth\"}', 'x'), \
             ('other.state', 'y')",
            [],
        )
        .unwrap();
        drop(conn);
        let check = |max| {
            let conn = Connection::open(&db).unwrap();
            check_structure(&conn, 1 << 30, max).unwrap()
        };
        assert_eq!(check(0), Ok(()), "an intact file passes");

        let mut bytes = std::fs::read(&db).unwrap();
        let needle = b"github.auth";
        let at = bytes
            .windows(needle.len())
            .rposition(|w| w == needle)
            .unwrap();
        bytes[at] = b'G';
        std::fs::write(&db, bytes).unwrap();
        let damage = check(0).unwrap_err();
        assert!(damage.contains("secret row 1"), "{damage}");
        assert!(
            check(u64::MAX).unwrap_err().contains("integrity_check"),
            "the full check finds it too"
        );
    }

    #[test]
    fn a_blob_that_does_not_decrypt_back_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.vscdb");
        // Keys that disagree with themselves: what a bug in key handling would look like.
        let mut keys = SafeStorageKeys::linux_keyring(b"read-with-this", String::new(), false);
        keys.write = Some(oscrypt::Key::linux_v11(b"but-write-with-this"));
        let store = ElectronStore::builder(&db, keys)
            .create(true)
            .open()
            .unwrap();
        let key = SecretKey::new("k").unwrap();
        let err = store
            .set(&key, &SecretValue::from_slice(b"a value"))
            .unwrap_err();
        assert!(err.to_string().contains("does not decrypt back"), "{err}");
        assert_eq!(store.get(&key).unwrap(), None, "the row was written");
        assert!(store.keys().unwrap().is_empty());
    }

    #[test]
    fn a_failed_password_check_does_not_advise_typing_the_password() {
        let lookup_error = Error::unavailable(
            "secret service",
            UnavailableReason::Locked,
            format!("the default collection is locked{TYPE_THE_PASSWORD_INSTEAD}"),
        );
        let shown = without_password_advice(&lookup_error);
        assert!(
            shown.ends_with("the default collection is locked"),
            "{shown}"
        );
        let other = Error::invalid("x", "y");
        assert_eq!(without_password_advice(&other), other.to_string());
    }
}
