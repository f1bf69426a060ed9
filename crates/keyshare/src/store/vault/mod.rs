//! The embedded encrypted vault: one SQLite file holding sealed secrets for one or more
//! namespaces.
//!
//! - Every value is sealed with XChaCha20-Poly1305 under the vault's random 256-bit data key
//!   (DEK), with a fresh random nonce per write, bound to the record schema version, the
//!   namespace and the key (see `crypto::AssociatedData`, FROZEN), so a row moved to another
//!   key or namespace fails to open as [`Error::Corrupt`].
//! - The DEK is stored wrapped by a key-encryption key from a [`KeyProviders`] chain: the OS
//!   keyring ([`KekStore`]), a key file beside the vault, or a passphrase through Argon2id. The
//!   provider is recorded in the vault; [`VaultStore::protection`] always says which.
//! - Creation is atomic (a complete file is hard-linked into place): of processes creating
//!   one vault at once, one wins and the others open its file; a loser removes the keyring
//!   entry it had stored for its own vault id, so none is left behind.
//! - Durability: WAL, `synchronous=FULL`, a busy timeout, and every write one `BEGIN IMMEDIATE`
//!   transaction, so an acknowledged `set` survives `kill -9` and several processes can share
//!   a vault.
//! - Hygiene: directory 0700, files 0600; a vault or directory that group or others can
//!   access is refused with the `chmod` that fixes it. A file that is not a vault is refused
//!   and left byte-for-byte untouched, and nothing is ever deleted because it failed to open.
//!
//! The on-disk format is described in `docs/vault-format.md`.
//!
//! ```
//! use keyshare::store::vault::{VaultOptions, VaultStore};
//! use keyshare::{SecretKey, SecretValue, Store};
//!
//! let dir = tempfile::tempdir()?;
//! // The vault's directory is created 0700; an existing one must not be readable by others.
//! let path = dir.path().join("keyshare").join("vault.db");
//! let store = VaultStore::open(VaultOptions::new(path, "dev.keyshare.shared-secrets"))?;
//! // A new vault without an OS keyring is protected by a key file; tell the user once.
//! if let Some(notice) = store.notice() {
//!     eprintln!("{notice}");
//! }
//! let key = SecretKey::new("github.auth")?;
//! store.set(&key, &SecretValue::from_slice(b"token"))?;
//! assert_eq!(store.get(&key)?.unwrap().expose_secret(), b"token");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod changes;
mod crypto;
mod files;
mod keys;
mod schema;
mod wal;

pub use changes::ChangeMarks;
pub use files::shell_quote;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

pub use crypto::Kek;
pub use keys::{
    key_file_path, Argon2Params, KekStore, KeyProviders, PassphrasePrompt, PassphraseRequest,
    Protection, VaultId, PASSPHRASE_ENV,
};

use crate::error::{Error, Result, UnavailableReason};
use crate::model::{Flavour, Limits, SecretKey, SecretValue};
use crate::store::{sqlite_check, Store, StoreInfo, DEFAULT_TIMEOUT};
use crypto::{unwrap_dek, wrap_dek, AssociatedData, Dek, Sealed, UnwrapError};
use keys::{NewKek, ProviderKind};
use schema::Meta;

/// The file name of a flavour's shared vault.
pub const VAULT_FILE_NAME: &str = "vault.db";

/// Creates `path` (mode 0600, in a 0700 directory created if missing) holding `contents`,
/// atomically and without ever replacing a file: `Ok(false)` when `path` already exists
/// (another process won a race), and that file is left alone. For the small records kept
/// beside a vault, such as which store `auto` chose.
pub fn create_private_file(path: &Path, contents: &[u8]) -> Result<bool> {
    use std::io::Write;
    files::ensure_private_dir(files::parent_dir(path))?;
    files::create_private_file_atomically(path, |file, temp| {
        file.write_all(contents)
            .map_err(|e| Error::io(format!("writing {}", temp.display()), e))
    })
}

/// The longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 1024;

/// How to open (or create) a vault.
#[derive(Clone, Debug)]
pub struct VaultOptions {
    /// The vault file. Its directory is created (0700) if missing.
    pub path: PathBuf,
    /// The namespace this store reads and writes within the file.
    pub namespace: String,
    /// Where the key-encryption key comes from.
    pub keys: KeyProviders,
    /// Refuse to create or open a vault that the OS keyring does not protect.
    pub require_os_keyring: bool,
    /// How long a write waits for another process's write lock before `Unavailable`.
    pub busy_timeout: Duration,
    /// Size limits on values.
    pub limits: Limits,
    /// Up to what size (the database and its WAL, in bytes) the open checks every page of the
    /// file, refusing a damaged one ([`DEFAULT_PAGE_CHECK_UP_TO`]); `None`: whatever the size.
    /// The check reads the whole file: about 3 ms per MiB warm, far more from a cold cache
    /// (found by QA: 13.5 ms for 20,000 secrets), which a process that opens the vault for
    /// one call should not pay for a big vault; a long-lived one (a broker) should.
    pub check_pages_up_to: Option<u64>,
}

/// The default of [`VaultOptions::check_pages_up_to`]: 1 MiB, about 2,500 secrets of a few
/// hundred bytes, where the check costs a few milliseconds at most.
pub const DEFAULT_PAGE_CHECK_UP_TO: u64 = 1024 * 1024;

impl VaultOptions {
    /// Options with defaults: no OS keyring, key file allowed, passphrase from
    /// `KEYSHARE_PASSPHRASE`, [`DEFAULT_TIMEOUT`], default limits.
    ///
    /// So a vault created with these alone keeps its key in a file beside it, protected by
    /// that file's permissions only (found in an API review: easy to miss). For the OS
    /// keyring, set `keys.os_keyring`; to refuse anything weaker, `require_os_keyring`.
    /// [`VaultStore::protection`] and [`VaultStore::notice`] say what a vault got, and an app
    /// should tell its user (the `keyshare` CLI does, once, when it creates one).
    pub fn new(path: impl Into<PathBuf>, namespace: impl Into<String>) -> Self {
        VaultOptions {
            path: path.into(),
            namespace: namespace.into(),
            keys: KeyProviders::default(),
            require_os_keyring: false,
            busy_timeout: DEFAULT_TIMEOUT,
            limits: Limits::default(),
            check_pages_up_to: Some(DEFAULT_PAGE_CHECK_UP_TO),
        }
    }
}

/// `$XDG_DATA_HOME/keyshare/<flavour>/vault.db`, with `XDG_DATA_HOME` defaulting to
/// `~/.local/share` (a relative `XDG_DATA_HOME` is ignored, as the XDG spec says).
pub fn default_vault_path(flavour: &str) -> Result<PathBuf> {
    vault_path_in(
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
        flavour,
    )
}

fn vault_path_in(
    xdg_data_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
    flavour: &str,
) -> Result<PathBuf> {
    // The flavour becomes a path component: reuse the flavour name rules (no '/', no '..').
    Flavour::with_default_service(flavour)?;
    let data_home =
        match xdg_data_home.map(PathBuf::from) {
            Some(dir) if dir.is_absolute() => dir,
            _ => match home.map(PathBuf::from) {
                Some(home) if home.is_absolute() => home.join(".local").join("share"),
                _ => return Err(Error::invalid(
                    "vault path",
                    "neither XDG_DATA_HOME nor HOME is set to an absolute path; give the vault \
                     path explicitly",
                )),
            },
        };
    Ok(data_home
        .join("keyshare")
        .join(flavour)
        .join(VAULT_FILE_NAME))
}

/// One open vault file, shared by the [`VaultStore`]s of its namespaces.
struct Vault {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Writes waiting for the next group commit (see [`Vault::write`]).
    pending: Mutex<Vec<PendingWrite>>,
    dek: Dek,
    vault_id: VaultId,
    protection: Protection,
    notice: Option<String>,
    limits: Limits,
    busy_timeout: Duration,
    /// What this connection's own commits left, per key, since the last look for other
    /// processes' changes (see `changes`); `None` until something looks, so a vault nobody
    /// watches records nothing.
    own_marks: Mutex<Option<changes::OwnMarks>>,
    /// The opened file's device and inode: a file put at the path since (a backup restored,
    /// the directory moved away) is not this one, and writes to this one would be lost.
    file_id: (u64, u64),
    /// The same for the `-wal` and `-shm` files this connection uses, once they exist (SQLite
    /// makes them at the first read). Removed or replaced under a running process, the
    /// recent writes are only in that process's files, and an opener of the path sees another
    /// store (found by QA: acknowledged writes were lost at the broker's restart).
    side_ids: Mutex<[Option<(u64, u64)>; 2]>,
}

/// The side files whose identity [`Vault::check_file`] follows, in `side_ids` order.
const SIDE_FILES: [&str; 2] = ["-wal", "-shm"];

impl Drop for Vault {
    fn drop(&mut self) {
        // The WAL file is kept between opens (see `keep_wal_files`); a size limit makes the
        // close that follows truncate it to zero bytes after its checkpoint, so no page image
        // outlives the connection in it. Set only now: while the vault is open, a limit makes
        // SQLite shrink the file after checkpoints and grow it again, which measured 35-50%
        // fewer durable sets per second (crates/keyshare-broker/benches/broker.rs, (d)).
        let conn = self.conn.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = conn.pragma_update(None, "journal_size_limit", 0) {
            tracing::debug!(error = %err, "could not limit the WAL before closing the vault");
        }
    }
}

impl Vault {
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock can at worst leave a transaction open, which
        // `write` rolls back before starting its own.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store_name(&self) -> String {
        format!("vault {}", self.path.display())
    }

    /// `Ok` while the file at the vault's path, and its `-wal` and `-shm` files, are the ones
    /// this connection opened.
    fn check_file(&self) -> Result<()> {
        let now = files::file_id(&self.path);
        if !matches!(&now, Ok(id) if *id == self.file_id) {
            let what = match now {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "was removed".to_owned(),
                Err(e) => format!("cannot be inspected ({e})"),
                Ok(_) => "is another file now (a restored backup?)".to_owned(),
            };
            return Err(self.moved(&self.path, &what));
        }
        let mut ids = self.side_ids.lock().unwrap_or_else(|e| e.into_inner());
        for (recorded, suffix) in ids.iter_mut().zip(SIDE_FILES) {
            let side = side_file(&self.path, suffix);
            match (files::file_id(&side), *recorded) {
                (Ok(now), Some(id)) if now == id => {}
                // First seen now: SQLite made it for this connection.
                (Ok(now), None) => *recorded = Some(now),
                (Err(e), None) if e.kind() == std::io::ErrorKind::NotFound => {}
                (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(self.moved(&side, "was removed"))
                }
                (Err(e), _) => return Err(self.moved(&side, &format!("cannot be inspected ({e})"))),
                (Ok(_), Some(_)) => return Err(self.moved(&side, "is another file now")),
            }
        }
        Ok(())
    }

    fn moved(&self, file: &Path, what: &str) -> Error {
        // A log or index that left the path still takes this process's writes, but no other
        // process sees them (found by QA: "no longer reaches the vault" was not true of it).
        let so = if file == self.path {
            "what this process writes no longer reaches the vault at"
        } else {
            "other processes no longer see what this process writes to the vault at"
        };
        Error::unavailable(
            "vault",
            UnavailableReason::NotRunning,
            format!(
                "{} {what} since this process opened the vault, so {so} {}; open the vault \
                 again (a broker: `keyshare stop`, and the next command starts one over the \
                 files now there)",
                file.display(),
                self.path.display()
            ),
        )
    }

    /// What a process does once [`Vault::check_file`] failed and before it closes the vault:
    /// it saves a copy of everything it holds (its file and its log, so every write it
    /// acknowledged), and when the file at the path is another one but the `-wal` there is
    /// still this connection's, it empties that log into its own file. Otherwise SQLite,
    /// which does not copy the log of a moved file into it at close, leaves the log at the
    /// path, and the next opener applies it to whatever file is there now (found by QA: a
    /// restored backup came back with the newer values; a removed vault came back as a new one
    /// full of values it could not read). Returns what it did, in words.
    fn set_aside(&self) -> String {
        let mut did = Vec::new();
        let conn = self.conn();
        let now = SystemTime::now();
        let saved = self.save_copy(&conn, now);
        match &saved {
            Ok(copy) => did.push(format!(
                "saved a copy of the vault as this process had it (every write it \
                 acknowledged) in {}; it opens with this vault's key ({})",
                copy.display(),
                match &self.protection {
                    Protection::KeyFile { path } => format!(
                        "for a key file: copy {} to {} first",
                        path.display(),
                        key_file_path(copy).display()
                    ),
                    _ => "the same keyring entry or passphrase".to_owned(),
                }
            )),
            Err(e) => did.push(format!("could not save a copy of the vault: {e}")),
        }
        let here = |suffix: &str, index: usize| {
            let recorded = self.side_ids.lock().unwrap_or_else(|e| e.into_inner())[index];
            recorded.is_some() && files::file_id(&side_file(&self.path, suffix)).ok() == recorded
        };
        let file_here = files::file_id(&self.path).ok() == Some(self.file_id);
        if file_here || !here("-wal", 0) {
            return did.join("; ");
        }
        let wal = side_file(&self.path, "-wal");
        // With a copy saved, the log is emptied into this connection's own file (moved away
        // or removed), and truncated. Without one (found by QA: a second restore within the
        // same second could not name its copy, and the emptied log took the writes it had
        // acknowledged with it; a full disk kept the log at the path, which the next open
        // applied to the restored file), it is moved aside whole: a rename needs no space.
        let emptied = saved.is_ok()
            && matches!(
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row
                    .get::<_, i64>(0)),
                Ok(0)
            );
        if emptied {
            did.push(format!(
                "emptied {} into the file it belongs to, so it is not applied to the file now \
                 at {}",
                wal.display(),
                self.path.display()
            ));
            return did.join("; ");
        }
        let stamp = crate::store::electron::utc_stamp(now);
        for (suffix, index) in [("-wal", 0), ("-shm", 1)] {
            if !here(suffix, index) {
                continue;
            }
            let from = side_file(&self.path, suffix);
            let to = unused_path(|n| aside_path(&self.path, &stamp, n, suffix));
            match to.and_then(|to| std::fs::rename(&from, &to).map(|()| to)) {
                Ok(to) => did.push(format!(
                    "moved {} aside to {}, so it is not applied to the file now at {}",
                    from.display(),
                    to.display(),
                    self.path.display()
                )),
                Err(e) => did.push(format!(
                    "could not move {} aside ({e}): move it away yourself before opening {}, \
                     or the next open applies it to the file now there",
                    from.display(),
                    self.path.display()
                )),
            }
        }
        did.join("; ")
    }

    /// Copies everything this connection sees (its file and its log) into a new file beside
    /// the vault, made with mode 0600 first (VACUUM INTO accepts an empty file), so the copy
    /// is never readable by others for a moment. A copy that failed half-way is removed: it
    /// is this function's own file, and would pass for a saved copy.
    fn save_copy(&self, conn: &Connection, now: SystemTime) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let stamp = crate::store::electron::utc_stamp(now);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let copy = saved_copy_path(&self.path, &stamp, attempt);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&copy)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    continue
                }
                Err(e) => return Err(e),
            }
            return match conn.execute("VACUUM INTO ?1", [copy.to_string_lossy()]) {
                Ok(_) => Ok(copy),
                Err(e) => {
                    let _ = std::fs::remove_file(&copy);
                    Err(std::io::Error::other(format!("{}: {e}", copy.display())))
                }
            };
        }
    }

    fn sql_error(&self, doing: &str, e: rusqlite::Error) -> Error {
        sql_error(&self.path, self.busy_timeout, doing, e)
    }

    /// Applies one write, committed together with whatever other writes are waiting (group
    /// commit): the first writer to get the connection becomes the leader and applies every
    /// queued write in one `BEGIN IMMEDIATE` transaction (each in its own savepoint, so one
    /// failing write does not undo the others), with one `fsync` for all of them; the others
    /// wait for the leader's answer. Concurrent writers (the broker's clients, on different
    /// keys) then share commits instead of queueing for one `fsync` each. A write is
    /// acknowledged only after the transaction holding it committed.
    fn write(&self, doing: &'static str, op: WriteOp) -> Result<bool> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.lock_pending().push((doing, op, answer));
        let conn = self.conn();
        // A leader that held the connection before us may have committed our write already.
        if let Ok(result) = answered.try_recv() {
            return result;
        }
        let batch = std::mem::take(&mut *self.lock_pending());
        let results = self.commit_batch(&conn, &batch, None);
        drop(conn);
        self.answer(doing, batch, results, answered)
    }

    /// [`Vault::write`] of several writes in one transaction (with whatever other threads
    /// queued meanwhile), each with its own result, in order.
    fn write_all(&self, doing: &'static str, ops: Vec<WriteOp>) -> Vec<Result<bool>> {
        let conn = self.conn();
        let mut batch = std::mem::take(&mut *self.lock_pending());
        let mut receivers = Vec::with_capacity(ops.len());
        for op in ops {
            let (answer, answered) = std::sync::mpsc::sync_channel(1);
            batch.push((doing, op, answer));
            receivers.push(answered);
        }
        let results = self.commit_batch(&conn, &batch, None);
        drop(conn);
        for ((_, _, answer), result) in batch.into_iter().zip(results) {
            // Only a waiting writer's receiver can be gone, if it panicked.
            let _ = answer.send(result);
        }
        receivers
            .into_iter()
            .map(|answered| {
                answered.recv().unwrap_or_else(|_| {
                    Err(Error::io(
                        format!("{doing} in vault {}", self.path.display()),
                        std::io::Error::other("the transaction's result was lost"),
                    ))
                })
            })
            .collect()
    }

    /// [`Vault::write`] of a `SetMany` that later sets may join: `more` is called just before
    /// the commit, and each op it returns is applied in the same transaction, until it returns
    /// `None` (see [`Store::set_many_joining`]). This writer always leads its own commit, so
    /// `more` is called by the thread that gave it; writes other threads queued meanwhile are
    /// committed with it, as a leader's are.
    fn write_joining(
        &self,
        doing: &'static str,
        op: WriteOp,
        more: &mut dyn FnMut() -> Result<Option<WriteOp>>,
    ) -> Result<bool> {
        let conn = self.conn();
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let mut batch = std::mem::take(&mut *self.lock_pending());
        batch.push((doing, op, answer));
        let results = self.commit_batch(&conn, &batch, Some(more));
        drop(conn);
        self.answer(doing, batch, results, answered)
    }

    /// Sends each write of a committed batch its result, and returns this writer's own.
    fn answer(
        &self,
        doing: &'static str,
        batch: Vec<PendingWrite>,
        results: Vec<Result<bool>>,
        answered: std::sync::mpsc::Receiver<Result<bool>>,
    ) -> Result<bool> {
        for ((_, _, answer), result) in batch.into_iter().zip(results) {
            // Only the waiting writer's receiver can be gone, if it panicked.
            let _ = answer.send(result);
        }
        answered.recv().unwrap_or_else(|_| {
            Err(Error::io(
                format!("{doing} in vault {}", self.path.display()),
                std::io::Error::other("the writer that took this write panicked"),
            ))
        })
    }

    /// Copies the WAL into the database file and empties it. Called after a delete: the WAL
    /// holds earlier images of the deleted value's page (sealed, but readable by whoever
    /// later learns the vault's key), and a broker keeps the vault open for days. Best effort
    /// and without waiting: while another connection reads, SQLite cannot empty it, and the
    /// next delete or the close does. Not after every write: it costs flushes of its own.
    fn empty_wal(&self) {
        let conn = self.conn();
        let busy = self.without_waiting(&conn, |conn| {
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
                row.get::<_, i64>(0)
            })
        });
        match busy {
            Ok(Ok(0)) => {}
            Ok(Ok(_)) => tracing::debug!("the WAL is in use by another reader; emptied later"),
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "could not empty the WAL after a delete")
            }
            Err(err) => tracing::warn!(error = %err, "could not restore the vault's busy timeout"),
        }
    }

    /// Runs `f` with a zero busy timeout, so that SQLite answers "busy" at once instead of
    /// waiting for another connection, then puts the vault's timeout back. The outer error is
    /// from setting the timeout; the inner one is `f`'s.
    fn without_waiting<T>(
        &self,
        conn: &Connection,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<rusqlite::Result<T>> {
        conn.busy_timeout(Duration::ZERO)?;
        let result = f(conn);
        conn.busy_timeout(self.busy_timeout)?;
        Ok(result)
    }

    fn lock_pending(&self) -> MutexGuard<'_, Vec<PendingWrite>> {
        // Pushes and takes of whole vectors only: a panic cannot leave it torn.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `batch` in one transaction; with `more` (see [`Vault::write_joining`]), the ops
    /// it returns too, just before the commit.
    fn commit_batch(
        &self,
        conn: &Connection,
        batch: &[PendingWrite],
        more: Option<&mut dyn FnMut() -> Result<Option<WriteOp>>>,
    ) -> Vec<Result<bool>> {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        // The transaction failed as a whole: every write of the batch gets the same error
        // (rebuilt per write, since errors are not `Clone`), keeping its kind.
        let fail_all = |first: Error| -> Vec<Result<bool>> {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            let text = first.to_string();
            batch
                .iter()
                .map(|_| {
                    // Each part as it was, not the whole text as the detail: that said "vault is
                    // unavailable (timed out): " twice (found by QA).
                    Err(match &first {
                        Error::Unavailable {
                            store,
                            reason,
                            detail,
                        } => Error::unavailable(store.clone(), *reason, detail.clone()),
                        Error::Corrupt { store, key, detail } => Error::Corrupt {
                            store: store.clone(),
                            key: key.clone(),
                            detail: detail.clone(),
                        },
                        // A value that joined late (`write_joining`) was over the limit.
                        Error::TooLarge { limit, actual } => Error::TooLarge {
                            limit: *limit,
                            actual: *actual,
                        },
                        _ => Error::io(text.clone(), std::io::Error::other("transaction failed")),
                    })
                })
                .collect()
        };
        if let Err(e) = conn
            .prepare_cached("BEGIN IMMEDIATE")
            .and_then(|mut s| s.execute([]))
        {
            return fail_all(self.sql_error("starting a write", e));
        }
        // One time for the whole transaction: its writes take effect together.
        let now = epoch_nanos(SystemTime::now());
        let mut marks = self.own_marks_recorded().then(Vec::new);
        let mut mark = |op: &WriteOp, changed: bool| {
            if let Some(marks) = &mut marks {
                op.marks(now, changed, marks);
            }
        };
        let run = |sql: &str| conn.prepare_cached(sql).and_then(|mut s| s.execute([]));
        let results = if let [(doing, op, _)] = batch {
            // A write alone needs no savepoint: the transaction is all it would undo.
            match op.apply(conn, now) {
                Ok(changed) => {
                    mark(op, changed);
                    vec![Ok(changed)]
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return vec![Err(self.sql_error(doing, e))];
                }
            }
        } else {
            let mut results = Vec::with_capacity(batch.len());
            for (doing, op, _) in batch {
                match run("SAVEPOINT one_write").and_then(|_| op.apply(conn, now)) {
                    Ok(changed) => {
                        let _ = run("RELEASE one_write");
                        mark(op, changed);
                        results.push(Ok(changed));
                    }
                    Err(e) => {
                        let _ = run("ROLLBACK TO one_write").and_then(|_| run("RELEASE one_write"));
                        results.push(Err(self.sql_error(doing, e)));
                    }
                }
            }
            results
        };
        // Late writes join only a transaction whose own writes all succeeded: one that failed
        // gives them nothing to join, and they keep their place for the next commit.
        if let Some(more) = more.filter(|_| results.iter().all(Result::is_ok)) {
            loop {
                match more() {
                    Ok(None) => break,
                    Ok(Some(op)) => match op.apply(conn, now) {
                        Ok(changed) => mark(&op, changed),
                        Err(e) => return fail_all(self.sql_error("writing values", e)),
                    },
                    Err(e) => return fail_all(e),
                }
            }
        }
        if let Err(e) = run("COMMIT") {
            return fail_all(self.sql_error("committing", e));
        }
        // A write into a file no longer at the path would be lost to every later open (found by
        // QA: a broker wrote on into a vault moved away), so it is not acknowledged. Checked
        // after the commit, not before: a rename takes no SQLite lock, so the file may be moved
        // away while the transaction runs, and one look after it covers every earlier move.
        if let Err(e) = self.check_file() {
            return fail_all(e);
        }
        if let Some(marks) = marks {
            self.record_own_marks(marks);
        }
        results
    }
}

/// One queued write: what it is doing (for errors), the change, and where its answer goes.
type PendingWrite = (
    &'static str,
    WriteOp,
    std::sync::mpsc::SyncSender<Result<bool>>,
);

/// A change to one row, applied by whichever writer leads the commit.
enum WriteOp {
    Set {
        namespace: String,
        key: Vec<u8>,
        sealed: Vec<u8>,
    },
    Delete {
        namespace: String,
        key: Vec<u8>,
    },
    /// Every row; with `only_into_empty`, none if the namespace holds anything (whether it
    /// wrote: see [`Store::set_many_if_empty`]).
    SetMany {
        namespace: String,
        rows: Vec<(Vec<u8>, Vec<u8>)>,
        only_into_empty: bool,
    },
    /// A repair's write: the set (`sealed`) or delete (`None`) happens only if the key did not
    /// change after `after` (nanoseconds since the Unix epoch); whether it happened.
    Repair {
        namespace: String,
        key: Vec<u8>,
        sealed: Option<Vec<u8>>,
        after: i64,
    },
}

const UPSERT: &str = "INSERT INTO secrets (namespace, key, sealed, changed_at) \
                      VALUES (?1, ?2, ?3, ?4) ON CONFLICT (namespace, key) \
                      DO UPDATE SET sealed = excluded.sealed, changed_at = excluded.changed_at";

/// Nanoseconds since the Unix epoch, as the vault records change times (saturating: a clock
/// set before 1970 reads as 0, one past 2262 as the largest time).
fn epoch_nanos(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl WriteOp {
    /// Applies the change at `now` (nanoseconds since the Unix epoch, the time it records);
    /// whether a row changed (for a repair: whether it wrote).
    fn apply(&self, conn: &Connection, now: i64) -> rusqlite::Result<bool> {
        match self {
            WriteOp::Set {
                namespace,
                key,
                sealed,
            } => conn
                .prepare_cached(UPSERT)?
                .execute((namespace, key, sealed, now))
                .map(|n| n > 0),
            WriteOp::Delete { namespace, key } => delete_row(conn, namespace, key, now),
            WriteOp::SetMany {
                namespace,
                rows,
                only_into_empty,
            } => {
                if *only_into_empty
                    && conn
                        .prepare_cached("SELECT 1 FROM secrets WHERE namespace = ?1 LIMIT 1")?
                        .exists([namespace])?
                {
                    return Ok(false);
                }
                let mut stmt = conn.prepare_cached(UPSERT)?;
                for (key, sealed) in rows {
                    stmt.execute((namespace, key, sealed, now))?;
                }
                Ok(!rows.is_empty())
            }
            WriteOp::Repair {
                namespace,
                key,
                sealed,
                after,
            } => {
                if last_change(conn, namespace, key)?.is_some_and(|changed| changed > *after) {
                    return Ok(false);
                }
                match sealed {
                    Some(sealed) => {
                        conn.prepare_cached(UPSERT)?
                            .execute((namespace, key, sealed, now))?;
                    }
                    None => {
                        delete_row(conn, namespace, key, now)?;
                    }
                }
                Ok(true)
            }
        }
    }
}

impl WriteOp {
    /// What applying this at `now` left for each key it wrote (`changed`: what `apply`
    /// answered), added to `marks`.
    fn marks(&self, now: i64, changed: bool, marks: &mut Vec<((String, Vec<u8>), changes::Mark)>) {
        use changes::Mark;
        match self {
            WriteOp::Set { namespace, key, .. } => {
                marks.push(((namespace.clone(), key.clone()), Mark::Set(Some(now))))
            }
            // A delete records its time even when there was no value.
            WriteOp::Delete { namespace, key } => {
                marks.push(((namespace.clone(), key.clone()), Mark::Deleted(now)))
            }
            // Nothing written (an empty list, or a namespace that held something): no mark.
            WriteOp::SetMany {
                namespace, rows, ..
            } if changed => marks.extend(
                rows.iter()
                    .map(|(key, _)| ((namespace.clone(), key.clone()), Mark::Set(Some(now)))),
            ),
            WriteOp::SetMany { .. } => {}
            WriteOp::Repair {
                namespace,
                key,
                sealed,
                ..
            } if changed => marks.push((
                (namespace.clone(), key.clone()),
                match sealed {
                    Some(_) => Mark::Set(Some(now)),
                    None => Mark::Deleted(now),
                },
            )),
            WriteOp::Repair { .. } => {}
        }
    }
}

/// Deletes a key's row and records when (even when it had none: a delete is a change, which
/// a later repair of another app's earlier write must not undo); whether there was a row.
fn delete_row(conn: &Connection, namespace: &str, key: &[u8], now: i64) -> rusqlite::Result<bool> {
    let deleted = conn
        .prepare_cached("DELETE FROM secrets WHERE namespace = ?1 AND key = ?2")?
        .execute((namespace, key))?;
    conn.prepare_cached(
        "INSERT INTO deleted (namespace, key, deleted_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (namespace, key) DO UPDATE SET deleted_at = excluded.deleted_at",
    )?
    .execute((namespace, key, now))?;
    Ok(deleted > 0)
}

/// When a key last changed: its value's `changed_at` if it has one (`None` for a row written
/// before change times were recorded), else its last delete's time, else `None` (never
/// changed, as far as the vault knows).
fn last_change(conn: &Connection, namespace: &str, key: &[u8]) -> rusqlite::Result<Option<i64>> {
    let row: Option<Option<i64>> = conn
        .prepare_cached("SELECT changed_at FROM secrets WHERE namespace = ?1 AND key = ?2")?
        .query_row((namespace, key), |row| row.get(0))
        .optional()?;
    match row {
        Some(changed_at) => Ok(changed_at),
        None => conn
            .prepare_cached("SELECT deleted_at FROM deleted WHERE namespace = ?1 AND key = ?2")?
            .query_row((namespace, key), |row| row.get(0))
            .optional(),
    }
}

fn sql_error(path: &Path, busy_timeout: Duration, doing: &str, e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::unavailable(
            "vault",
            UnavailableReason::TimedOut,
            format!(
                "{} stayed locked by another process for longer than the busy timeout ({} ms) \
                 while {doing}",
                path.display(),
                busy_timeout.as_millis()
            ),
        ),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => Error::Corrupt {
            store: format!("vault {}", path.display()),
            key: None,
            detail: format!("{doing}: {e}; the file was left untouched"),
        },
        _ => Error::io(
            format!("vault {}: {doing}", path.display()),
            std::io::Error::other(e),
        ),
    }
}

/// An error of SQLite while it builds a new vault, named by the vault's path: the temporary
/// file it is built in is gone by the time anyone reads the message (QA s18 F8: a full disk
/// named `.vault.db.<hex>.tmp`), and a full disk says which file system to make room on.
fn creation_error(path: &Path, busy_timeout: Duration, e: rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
        return Error::io(
            format!("creating vault {}", path.display()),
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "no space left on the file system holding {} ({e})",
                    files::parent_dir(path).display()
                ),
            ),
        );
    }
    sql_error(path, busy_timeout, "creating the vault", e)
}

/// A [`Store`] over one namespace of a vault file.
pub struct VaultStore {
    vault: Arc<Vault>,
    namespace: String,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("path", &self.vault.path)
            .field("namespace", &self.namespace)
            .field("protection", &self.vault.protection)
            .finish_non_exhaustive()
    }
}

fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN {
        return Err(Error::invalid(
            "namespace",
            format!("must be 1 to {MAX_NAMESPACE_LEN} bytes long"),
        ));
    }
    if namespace.contains('\0') {
        return Err(Error::invalid(
            "namespace",
            "cannot contain a NUL character",
        ));
    }
    Ok(())
}

/// What a freshly created vault already knows, so opening it does not ask for the key again.
struct Created {
    dek: Dek,
    vault_id: VaultId,
    protection: Protection,
    notice: Option<String>,
}

/// Where [`Vault::set_aside`] saves its copy: beside the vault, named by the time and, after
/// the first, a number (two restores within a second), e.g. `vault.saved-20261129T160512Z.db`
/// and `vault.saved-20261129T160512Z-2.db` for `vault.db`.
fn saved_copy_path(path: &Path, stamp: &str, attempt: u32) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let number = numbered(attempt);
    let name = match path.extension() {
        Some(ext) => format!("{stem}.saved-{stamp}{number}.{}", ext.to_string_lossy()),
        None => format!("{stem}.saved-{stamp}{number}"),
    };
    path.with_file_name(name)
}

/// Where [`Vault::set_aside`] moves a log it could not empty: `vault.db.aside-<time>-wal`.
fn aside_path(path: &Path, stamp: &str, attempt: u32, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".aside-{stamp}{}{suffix}", numbered(attempt)));
    PathBuf::from(name)
}

/// What tells the `attempt`th name of a kind from the first: nothing, then `-2`, `-3`, ...
fn numbered(attempt: u32) -> String {
    if attempt > 1 {
        format!("-{attempt}")
    } else {
        String::new()
    }
}

/// The first of `candidate(1)`, `candidate(2)`, ... that names nothing yet.
fn unused_path(candidate: impl Fn(u32) -> PathBuf) -> std::io::Result<PathBuf> {
    (1..100)
        .map(candidate)
        .find(|path| std::fs::symlink_metadata(path).is_err())
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::AlreadyExists))
}

/// Refuses to create a vault where the log of an earlier one still holds writes: SQLite would
/// apply them to the new file, which then lists keys it cannot read, or is damaged (found by
/// QA, after a vault was removed under a running broker, or after a crash).
fn refuse_orphaned_log(path: &Path) -> Result<()> {
    let wal = side_file(path, "-wal");
    let len = match std::fs::symlink_metadata(&wal) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("inspecting {}", wal.display()), e)),
    };
    // Looked at after the log: a vault another process creates meanwhile has a file before it
    // has a log, so a log with writes and no file is an earlier vault's.
    if len == 0 || std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    Err(Error::Corrupt {
        store: format!("vault {}", path.display()),
        key: None,
        detail: format!(
            "{} ({len} bytes) holds writes of a vault that is no longer at {} (removed while a \
             process had it open, or after a crash); a new vault made there would take them \
             in and come out damaged. Nothing was created or changed: put back the vault file \
             it belongs to, or move it and {} away to start a new vault (a broker still \
             running over the removed vault empties it when it stops: `keyshare stop`)",
            wal.display(),
            path.display(),
            side_file(path, "-shm").display()
        ),
    })
}

fn side_file(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl VaultStore {
    /// Opens the vault at `options.path`, creating it (directory 0700, file 0600, a new data
    /// key under the first available provider) when it does not exist.
    ///
    /// Errors: [`Error::Invalid`] for a bad namespace, loose permissions (with the `chmod`
    /// that fixes them), a file that is not a vault, or a vault written by a newer keyshare;
    /// [`Error::Unavailable`] when the vault's key provider cannot give its key (missing key
    /// file, locked keyring, no passphrase: `Locked`; wrong key or passphrase: `Denied`);
    /// [`Error::ProtectionUnavailable`] when `require_os_keyring` is set and the OS keyring
    /// does not protect the vault; [`Error::Corrupt`] for a damaged vault. On every error the
    /// files are left as they were.
    pub fn open(options: VaultOptions) -> Result<VaultStore> {
        check_namespace(&options.namespace)?;
        let dir = files::parent_dir(&options.path).to_owned();
        if files::check_private_file(&options.path)?.is_none() {
            files::ensure_private_dir(&dir)?;
            refuse_orphaned_log(&options.path)?;
            if let Some(created) = Self::create(&options)? {
                return Self::open_existing(&options, Some(created));
            }
            // Another process created it meanwhile: open theirs.
        }
        Self::open_existing(&options, None)
    }

    /// Creates a new vault file atomically. `Ok(None)` when another process created the file
    /// first (ours is discarded).
    fn create(options: &VaultOptions) -> Result<Option<Created>> {
        let path = &options.path;
        let vault_id = VaultId::generate()?;
        let dek = Dek::generate()?;
        let new_kek = options
            .keys
            .for_new_vault(path, &vault_id, options.require_os_keyring)?;
        let created = Self::create_with(options, vault_id, &new_kek, &dek);
        if new_kek.kind == ProviderKind::OsKeyring {
            // The keyring now holds a key for `vault_id`. If no vault file with that id came
            // to exist, nothing will ever read it: remove it rather than leave an orphan in
            // the user's keyring. After an error the file may still be ours (the error can
            // come after it was linked into place), so only a missing file proves it is not.
            let uncreated = match &created {
                Ok(created) => !created,
                Err(_) => !path.exists(),
            };
            if let (true, Some(keyring)) = (uncreated, &options.keys.os_keyring) {
                if let Err(e) = keyring.forget_uncreated(&vault_id) {
                    tracing::warn!(
                        vault = %path.display(),
                        "could not remove the key {} stored for vault id {vault_id}, which \
                         was never created (another process created the vault first, or it \
                         could not be written): {e}",
                        keyring.describe()
                    );
                }
            }
        }
        Ok(created?.then(|| Created {
            dek,
            vault_id,
            protection: new_kek.protection,
            notice: new_kek.notice,
        }))
    }

    /// Writes the new vault file for [`VaultStore::create`]; `Ok(false)` when another process
    /// created it first.
    fn create_with(
        options: &VaultOptions,
        vault_id: VaultId,
        new_kek: &NewKek,
        dek: &Dek,
    ) -> Result<bool> {
        let path = &options.path;
        let meta = Meta {
            schema_version: schema::SCHEMA_VERSION,
            vault_id,
            provider: new_kek.kind,
            wrapped_dek: wrap_dek(&new_kek.kek, dek, vault_id.as_bytes(), new_kek.kind.name())?,
            argon2: new_kek.argon2,
        };
        files::create_private_file_atomically(path, |_, temp| {
            let map = |e| creation_error(path, options.busy_timeout, e);
            let conn = Connection::open_with_flags(
                temp,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(map)?;
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(map)?;
            schema::create(&conn, &meta).map_err(map)?;
            // WAL is recorded in the file header, so every later open finds it set.
            let mode: String = conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
                .map_err(map)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(Error::io(
                    format!("creating vault {}", path.display()),
                    std::io::Error::other(format!("SQLite refused WAL mode (got {mode})")),
                ));
            }
            conn.close().map_err(|(_, e)| map(e))
        })
    }

    fn open_existing(options: &VaultOptions, created: Option<Created>) -> Result<VaultStore> {
        let path = &options.path;
        let dir = files::parent_dir(path);
        files::check_private_dir(dir)?;
        // A creation killed before it cleaned up (kill -9 of a CLI in the middle of it) left
        // its temporary files here: the key file's holds the raw key. Found by QA.
        files::remove_leftover_temps(
            dir,
            &[
                (path, &files::SQLITE_SIDE_FILES),
                (&key_file_path(path), &[]),
            ],
        );
        if files::check_private_file(path)?.is_none() {
            return Err(Error::io(
                format!("opening vault {}", path.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        for suffix in ["-wal", "-shm"] {
            files::check_private_file(&side_file(path, suffix))?;
        }
        let is_wal = schema::check_header(path)?;
        wal::check(path, &side_file(path, "-wal"))?;

        let map = |doing: &'static str| move |e| sql_error(path, options.busy_timeout, doing, e);
        // No CREATE flag: if the file vanished since the checks, fail instead of making one.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(map("opening the vault"))?;
        let file_id = files::file_id(path)
            .map_err(|e| Error::io(format!("inspecting vault {}", path.display()), e))?;
        conn.busy_timeout(options.busy_timeout)
            .map_err(map("setting the busy timeout"))?;
        // A damaged file is refused before anything reads on or writes to it (found by QA: with
        // a page the open path does not read zeroed, the broker refused the vault, but commands
        // read it, wrote into it, and their close copied the WAL into it). `integrity_check`
        // reads every page and checks every index entry against its row (about a millisecond
        // per thousand secrets; above 32 MiB `quick_check`, without the index entries: see
        // `sqlite_check`), and writes nothing. A damaged index entry made a read say "not
        // found" of a row that was there (found by QA on a state.vscdb, which has the same
        // check now).
        let size = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let on_disk = size(path) + size(&side_file(path, "-wal"));
        let checked = options
            .check_pages_up_to
            .is_none_or(|limit| on_disk <= limit);
        if !checked {
            tracing::debug!(vault = %path.display(), "over the page check's size limit: not checked at open");
        } else if let Err(damage) =
            sqlite_check::check(&conn, sqlite_check::Depth::for_size(on_disk))
                .map_err(map("checking the vault's pages"))?
        {
            // Closed without the usual checkpoint: the file and its WAL stay as they are.
            let _ = conn.set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            );
            return Err(Error::Corrupt {
                store: format!("vault {}", path.display()),
                key: None,
                detail: format!(
                    "the file is damaged ({damage}); it and its -wal file were left untouched: \
                     restore them from a backup, or move them away to start a new vault"
                ),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(map("setting synchronous=FULL"))?;
        // A deleted or replaced value's sealed bytes are zeroed instead of left in the page's
        // free space, where whoever later learns the vault's key could read them. Costs no
        // I/O of its own: the page is written anyway.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(map("setting secure_delete=ON"))?;

        let (dek, vault_id, protection, notice, version) = match created {
            Some(c) => (
                c.dek,
                c.vault_id,
                c.protection,
                c.notice,
                schema::SCHEMA_VERSION,
            ),
            None => {
                let meta = schema::read_meta(&conn, path, map("reading the vault's meta table"))?;
                if options.require_os_keyring && meta.provider != ProviderKind::OsKeyring {
                    return Err(Error::ProtectionUnavailable(format!(
                        "require_os_keyring is set, but the vault {} is protected by {}, not \
                         the OS keyring. Turn require_os_keyring off to use it.",
                        path.display(),
                        match meta.provider {
                            ProviderKind::KeyFile => "a key file",
                            _ => "a passphrase",
                        }
                    )));
                }
                let (kek, protection) = options.keys.for_existing_vault(
                    path,
                    &meta.vault_id,
                    meta.provider,
                    meta.argon2,
                )?;
                let dek = unwrap_dek(
                    &kek,
                    &meta.wrapped_dek,
                    meta.vault_id.as_bytes(),
                    meta.provider.name(),
                )
                .map_err(|e| match e {
                    UnwrapError::Malformed => Error::Corrupt {
                        store: format!("vault {}", path.display()),
                        key: None,
                        detail: "the wrapped data key is malformed; the file was left \
                                 untouched"
                            .to_owned(),
                    },
                    UnwrapError::WrongKey => wrong_key(path, &protection),
                })?;
                (dek, meta.vault_id, protection, None, meta.schema_version)
            }
        };

        // Only now, with the key proven right, may anything be written.
        if version < schema::SCHEMA_VERSION {
            schema::upgrade(&conn, path, schema::MIGRATIONS, map("upgrading the schema"))?;
        }
        if !is_wal {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(map("switching to WAL mode"))?;
        }
        // Only for a vault that opened: a refused file is closed the default way, which
        // removes the side files its reading made.
        keep_wal_files(&conn).map_err(map("keeping the WAL file between opens"))?;

        let vault = Vault {
            path: path.clone(),
            conn: Mutex::new(conn),
            pending: Mutex::new(Vec::new()),
            dek,
            vault_id,
            protection,
            notice,
            limits: options.limits,
            busy_timeout: options.busy_timeout,
            own_marks: Mutex::new(None),
            file_id,
            side_ids: Mutex::new(
                SIDE_FILES.map(|suffix| files::file_id(&side_file(path, suffix)).ok()),
            ),
        };
        Ok(VaultStore {
            vault: Arc::new(vault),
            namespace: options.namespace.clone(),
        })
    }

    /// `Ok` while the file at the vault's path is still the one this store opened; else why
    /// not ([`Error::Unavailable`]: it was removed or replaced, as by a restored backup). Writes
    /// check it themselves and fail then; a long-running process (the broker) also looks now
    /// and then, to stop serving a file no other process sees any more.
    pub fn check_file(&self) -> Result<()> {
        self.vault.check_file()
    }

    /// For a process whose [`VaultStore::check_file`] failed, before it closes the vault:
    /// saves a copy of all it holds beside the vault (`<vault>.saved-<UTC time>`, mode 0600,
    /// readable with the vault's key), and keeps its log from being applied to another file
    /// now at the path. Returns what it did, in words, for the log.
    pub fn set_aside(&self) -> String {
        self.vault.set_aside()
    }

    /// A store over another namespace of the same open vault file (same connection, same
    /// key): e.g. an app's `legacy` and `journal` namespaces in its private vault.
    pub fn with_namespace(&self, namespace: &str) -> Result<VaultStore> {
        check_namespace(namespace)?;
        Ok(VaultStore {
            vault: self.vault.clone(),
            namespace: namespace.to_owned(),
        })
    }

    /// What protects this vault's key, for `doctor`.
    pub fn protection(&self) -> Protection {
        self.vault.protection.clone()
    }

    /// The vault file.
    pub fn path(&self) -> &Path {
        &self.vault.path
    }

    /// The namespace this store works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The namespaces of the vault's file that hold at least one entry and start with
    /// `prefix`, sorted: what else the file holds (an app's vault keeps its repair journals,
    /// one per shared store, each in a namespace of its own).
    pub fn namespaces_starting_with(&self, prefix: &str) -> Result<Vec<String>> {
        let conn = self.vault.conn();
        conn.prepare_cached("SELECT DISTINCT namespace FROM secrets ORDER BY namespace")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .filter(|name| name.as_ref().map_or(true, |n| n.starts_with(prefix)))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| self.vault.sql_error("listing namespaces", e))
    }

    /// The vault's id (the OS keyring stores its key under it).
    pub fn vault_id(&self) -> VaultId {
        self.vault.vault_id
    }

    /// One line to show the user, when opening created something they should know about (a
    /// key file that protects the vault only by its permissions, or a vault protected by the
    /// passphrase in the environment). A library does not print:
    /// the caller shows it, on stderr.
    pub fn notice(&self) -> Option<&str> {
        self.vault.notice.as_deref()
    }

    fn aad<'a>(&'a self, key: &'a SecretKey) -> AssociatedData<'a> {
        AssociatedData::v1(&self.namespace, key.as_str())
    }

    /// The values checked and sealed (before any transaction starts), as one write op, so one
    /// savepoint: all rows or none (with `only_into_empty`, none if the namespace holds any).
    fn set_many_op(
        &self,
        entries: &[(SecretKey, SecretValue)],
        only_into_empty: bool,
    ) -> Result<WriteOp> {
        let rows = entries
            .iter()
            .map(|(key, value)| {
                self.vault.limits.check_value(value)?;
                let sealed = Sealed::seal(&self.vault.dek, &self.aad(key), value)?;
                Ok((key.as_str().as_bytes().to_vec(), sealed.as_bytes().to_vec()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(WriteOp::SetMany {
            namespace: self.namespace.clone(),
            rows,
            only_into_empty,
        })
    }

    fn corrupt(&self, key: &SecretKey, detail: &str) -> Error {
        Error::Corrupt {
            store: self.vault.store_name(),
            key: Some(key.as_str().to_owned()),
            detail: format!("{detail}; the entry was left untouched"),
        }
    }

    /// The stored row for `key`: `None` when there is none, `Some(None)` when its value is not
    /// a blob.
    fn read_sealed(
        &self,
        conn: &Connection,
        key: &SecretKey,
    ) -> rusqlite::Result<Option<Option<Vec<u8>>>> {
        conn.prepare_cached("SELECT sealed FROM secrets WHERE namespace = ?1 AND key = ?2")
            .and_then(|mut stmt| {
                stmt.query_row((&self.namespace, key.as_str().as_bytes()), |row| match row
                    .get_ref(0)?
                {
                    ValueRef::Blob(bytes) => Ok(Some(bytes.to_vec())),
                    _ => Ok(None),
                })
                .optional()
            })
    }

    fn unseal(
        &self,
        key: &SecretKey,
        stored: Option<Option<Vec<u8>>>,
    ) -> Result<Option<SecretValue>> {
        match stored {
            None => Ok(None),
            Some(None) => Err(self.corrupt(key, "the stored value is not a blob")),
            Some(Some(bytes)) => Sealed::from_stored(bytes)
                .open(&self.vault.dek, &self.aad(key))
                .map(Some)
                .map_err(|detail| self.corrupt(key, detail)),
        }
    }
}

/// Keeps the `-wal` and `-shm` files when the last connection closes, instead of SQLite's
/// default of deleting both and creating them again on the next open. Every `keyshare get` is
/// a process of its own, and that create-and-unlink pair was a measurable part of its run time
/// (crates/keyshare-cli/benches/process.rs). The close still checkpoints, and `Vault`'s `Drop`
/// sets `journal_size_limit = 0` first, so the kept WAL is truncated to zero bytes then and no
/// page images outlive the connection in it. The files keep the vault's 0600 mode and are
/// checked like it.
#[allow(unsafe_code)]
fn keep_wal_files(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::ffi;
    let mut persist: std::ffi::c_int = 1;
    // SAFETY: `conn.handle()` is the open connection `conn` owns, used on this thread for the
    // duration of the call only. "main" is a NUL-terminated string. For
    // SQLITE_FCNTL_PERSIST_WAL, SQLite reads (and writes back) one `int` through the last
    // argument, which points at `persist` for the whole call.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut persist).cast(),
        )
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(ffi::Error::new(rc), None))
    }
}

/// The KEK did not unwrap the DEK. The AEAD cannot tell a wrong key from a damaged wrapped
/// key, so the message names both (QA s18 F8: a flipped bit in `wrapped_dek` sent the user
/// after the key file alone).
fn wrong_key(path: &Path, protection: &Protection) -> Error {
    let (what, fix) = match protection {
        Protection::Passphrase => (
            "the passphrase".to_owned(),
            "Try again with the right passphrase",
        ),
        Protection::KeyFile { path: key } => (
            format!("the key file {}", key.display()),
            "If the key file was replaced, restore the one that belongs to this vault",
        ),
        Protection::OsKeyring { keyring } => (
            format!("the key in {keyring}"),
            "If the keyring entry was replaced, restore the one that belongs to this vault",
        ),
    };
    Error::unavailable(
        "vault",
        UnavailableReason::Denied,
        format!(
            "{what} does not unlock {}: either it is not the one this vault was created with, \
             or the vault's wrapped key (meta.wrapped_dek) is damaged. {fix}; nothing was \
             written",
            path.display()
        ),
    )
}

impl Store for VaultStore {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "vault",
            location: format!(
                "{} (namespace {})",
                self.vault.path.display(),
                self.namespace
            ),
            protection: self.vault.protection.to_string(),
        }
    }

    /// `Ok(None)` when absent; [`Error::Corrupt`] naming the key when its sealed value does
    /// not authenticate (other keys stay readable).
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let stored = self
            .read_sealed(&self.vault.conn(), key)
            .map_err(|e| self.vault.sql_error("reading a value", e))?;
        self.unseal(key, stored)
    }

    /// A read in WAL mode waits for nothing but a recovery or checkpoint another connection is
    /// running, and the file's pages are in the OS's memory after the first read: so the read
    /// is answered at once when the connection is free (a write holds it across its fsync) and
    /// SQLite reports no lock (with the busy timeout off, a wait is `SQLITE_BUSY` at once).
    fn try_get_now(&self, key: &SecretKey) -> Option<Result<Option<SecretValue>>> {
        let conn = match self.vault.conn.try_lock() {
            Ok(conn) => conn,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let stored = self
            .vault
            .without_waiting(&conn, |conn| self.read_sealed(conn, key));
        drop(conn);
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => return Some(Err(self.vault.sql_error("setting the busy timeout", e))),
        };
        match stored {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                None
            }
            Err(e) => Some(Err(self.vault.sql_error("reading a value", e))),
            Ok(stored) => Some(self.unseal(key, stored)),
        }
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.vault.limits.check_value(value)?;
        let sealed = Sealed::seal(&self.vault.dek, &self.aad(key), value)?;
        let op = WriteOp::Set {
            namespace: self.namespace.clone(),
            key: key.as_str().as_bytes().to_vec(),
            sealed: sealed.as_bytes().to_vec(),
        };
        self.vault.write("writing a value", op).map(drop)
    }

    /// One transaction for all the values: every one is written, or none. Limits are checked
    /// and values sealed before the transaction starts.
    fn set_many(&self, entries: &[(SecretKey, SecretValue)]) -> Result<()> {
        let op = self.set_many_op(entries, false)?;
        self.vault.write("writing values", op).map(drop)
    }

    /// One transaction that checks the namespace is empty and writes every value, or nothing.
    fn set_many_if_empty(&self, entries: &[(SecretKey, SecretValue)]) -> Result<bool> {
        let op = self.set_many_op(entries, true)?;
        self.vault.write("writing values", op)
    }

    /// One transaction for `entries` and whatever `more` returns just before it commits.
    fn set_many_joining(
        &self,
        entries: &[(SecretKey, SecretValue)],
        more: &mut dyn FnMut() -> Vec<(SecretKey, SecretValue)>,
    ) -> Result<()> {
        let op = self.set_many_op(entries, false)?;
        let mut more_ops = || {
            let entries = more();
            if entries.is_empty() {
                return Ok(None);
            }
            self.set_many_op(&entries, false).map(Some)
        };
        self.vault
            .write_joining("writing values", op, &mut more_ops)
            .map(drop)
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        let op = WriteOp::Delete {
            namespace: self.namespace.clone(),
            key: key.as_str().as_bytes().to_vec(),
        };
        let deleted = self.vault.write("deleting a value", op)?;
        if deleted {
            self.vault.empty_wal();
        }
        Ok(deleted)
    }

    /// One transaction: the check of the key's last change and the write.
    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool> {
        let sealed = match value {
            Some(value) => {
                self.vault.limits.check_value(value)?;
                Some(
                    Sealed::seal(&self.vault.dek, &self.aad(key), value)?
                        .as_bytes()
                        .to_vec(),
                )
            }
            None => None,
        };
        let deleting = sealed.is_none();
        let op = WriteOp::Repair {
            namespace: self.namespace.clone(),
            key: key.as_str().as_bytes().to_vec(),
            sealed,
            after: epoch_nanos(after),
        };
        let written = self.vault.write("repairing a value", op)?;
        if written && deleting {
            self.vault.empty_wal();
        }
        Ok(written)
    }

    /// One transaction: each key's check of its last change and its write.
    fn set_many_unless_changed_after(
        &self,
        entries: &[(SecretKey, SecretValue)],
        after: SystemTime,
    ) -> Result<Vec<bool>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let after = epoch_nanos(after);
        let ops = entries
            .iter()
            .map(|(key, value)| {
                self.vault.limits.check_value(value)?;
                let sealed = Sealed::seal(&self.vault.dek, &self.aad(key), value)?;
                Ok(WriteOp::Repair {
                    namespace: self.namespace.clone(),
                    key: key.as_str().as_bytes().to_vec(),
                    sealed: Some(sealed.as_bytes().to_vec()),
                    after,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.vault
            .write_all("writing values unless changed", ops)
            .into_iter()
            .collect()
    }

    fn keeps_change_times(&self) -> bool {
        true
    }

    fn deleted_at(&self, key: &SecretKey) -> Result<Option<SystemTime>> {
        let conn = self.vault.conn();
        let read = || -> rusqlite::Result<Option<i64>> {
            // One snapshot: a value set between the two reads would otherwise leave its key
            // looking deleted.
            let snapshot = conn.unchecked_transaction()?;
            let key = key.as_str().as_bytes();
            let has_value = conn
                .prepare_cached("SELECT 1 FROM secrets WHERE namespace = ?1 AND key = ?2")?
                .exists((&self.namespace, key))?;
            let deleted_at = if has_value {
                None
            } else {
                conn.prepare_cached(
                    "SELECT deleted_at FROM deleted WHERE namespace = ?1 AND key = ?2",
                )?
                .query_row((&self.namespace, key), |row| row.get(0))
                .optional()?
            };
            snapshot.commit()?;
            Ok(deleted_at)
        };
        let nanos =
            read().map_err(|e| self.vault.sql_error("reading when a key was deleted", e))?;
        Ok(nanos.map(|n| {
            SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(n).unwrap_or(0))
        }))
    }

    /// Rows whose key is not a valid [`SecretKey`] are skipped with a warning.
    fn keys(&self) -> Result<Vec<SecretKey>> {
        let conn = self.vault.conn();
        let mut keys = Vec::new();
        let mut skipped = 0usize;
        conn.prepare_cached("SELECT key FROM secrets WHERE namespace = ?1")
            .and_then(|mut stmt| {
                let mut rows = stmt.query([&self.namespace])?;
                while let Some(row) = rows.next()? {
                    let parsed = match row.get_ref(0)? {
                        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => {
                            SecretKey::from_bytes(bytes)
                        }
                        _ => Err(Error::invalid("key", "not text")),
                    };
                    match parsed {
                        Ok(key) => keys.push(key),
                        Err(e) => {
                            skipped += 1;
                            tracing::warn!(
                                vault = %self.vault.path.display(),
                                namespace = %self.namespace,
                                "skipping a vault entry whose key is not valid: {e}"
                            );
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| self.vault.sql_error("listing keys", e))?;
        if skipped > 0 {
            tracing::debug!(skipped, "vault listing skipped invalid keys");
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk is only met on a full file system, which a test cannot make without
    /// privileges: the error SQLite then returns is built here.
    #[test]
    fn a_full_disk_at_creation_names_the_vault_and_its_file_system() {
        let path = Path::new("/data/keyshare/stable/vault.db");
        let full = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
            Some("database or disk is full".to_owned()),
        );
        let err = creation_error(path, Duration::from_secs(1), full);
        let text = err.to_string();
        assert_eq!(
            text,
            "creating vault /data/keyshare/stable/vault.db: no space left on the file system \
             holding /data/keyshare/stable (database or disk is full)"
        );
        assert!(matches!(err, Error::Io { .. }), "{err:?}");
    }

    #[test]
    fn default_path_follows_xdg() {
        assert_eq!(
            vault_path_in(Some("/data".into()), Some("/home/u".into()), "stable").unwrap(),
            Path::new("/data/keyshare/stable/vault.db")
        );
        assert_eq!(
            vault_path_in(None, Some("/home/u".into()), "insiders").unwrap(),
            Path::new("/home/u/.local/share/keyshare/insiders/vault.db")
        );
        // A relative XDG_DATA_HOME is ignored.
        assert_eq!(
            vault_path_in(Some("rel".into()), Some("/home/u".into()), "stable").unwrap(),
            Path::new("/home/u/.local/share/keyshare/stable/vault.db")
        );
        assert!(vault_path_in(None, None, "stable").is_err());
        assert!(vault_path_in(None, Some("/home/u".into()), "../x").is_err());
    }

    #[test]
    fn try_get_now_does_not_wait_for_a_connection_in_use() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let mut options = VaultOptions::new(dir.path().join("vault.db"), "ns");
        options.keys.passphrase_env = None;
        let store = VaultStore::open(options).unwrap();
        let k = SecretKey::new("k").unwrap();
        store.set(&k, &SecretValue::from_slice(b"v")).unwrap();
        // As a write does across its commit and fsync.
        let in_use = store.vault.conn();
        assert!(store.try_get_now(&k).is_none());
        drop(in_use);
        assert_eq!(
            store.try_get_now(&k).unwrap().unwrap(),
            Some(SecretValue::from_slice(b"v"))
        );
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(check_namespace("dev.keyshare.shared-secrets").is_ok());
        assert!(check_namespace("").is_err());
        assert!(check_namespace("a\0b").is_err());
        assert!(check_namespace(&"n".repeat(MAX_NAMESPACE_LEN + 1)).is_err());
    }
}
