//! Changes other processes made to a vault: what a broker announces to its subscribers for the
//! apps and commands that write the vault file themselves (`--direct`, an app without a
//! broker), which it otherwise never hears of.
//!
//! Cheap when nothing happened: SQLite's `data_version` tells whether another connection
//! committed since the last look, with one query. Only then are the namespace's change times
//! read (`changed_at` of each value, `deleted_at` of each delete, both in nanoseconds) and
//! compared with the last look's. This connection's own writes were announced when they were
//! made, so what its own commits left (recorded as they commit, once someone looks) is not
//! reported again.

use std::collections::HashMap;

use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::{Vault, VaultStore};
use crate::error::Result;
use crate::model::SecretKey;
use crate::storage::ChangeKind;

/// When a key last changed, as the vault records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mark {
    /// It has a value, set at this time (`None`: written before change times were kept).
    Set(Option<i64>),
    /// It has no value; its last delete was at this time.
    Deleted(i64),
}

/// What one connection's own commits left, by namespace and key.
pub(crate) type OwnMarks = HashMap<(String, Vec<u8>), Mark>;

/// When each key of a namespace last changed, as of one look: the baseline
/// [`VaultStore::changes_since`] compares against. Holds key names and times, never a value.
#[derive(Clone, Debug)]
pub struct ChangeMarks {
    /// The connection's `data_version` at that look.
    data_version: i64,
    marks: HashMap<Vec<u8>, Mark>,
}

impl Vault {
    /// Whether commits record what they leave (someone looks for other processes' changes).
    pub(super) fn own_marks_recorded(&self) -> bool {
        self.lock_own_marks().is_some()
    }

    pub(super) fn record_own_marks(&self, marks: Vec<((String, Vec<u8>), Mark)>) {
        if let Some(own) = self.lock_own_marks().as_mut() {
            own.extend(marks);
        }
    }

    fn lock_own_marks(&self) -> std::sync::MutexGuard<'_, Option<OwnMarks>> {
        // Inserts and takes of whole maps: a panic cannot leave it torn.
        self.own_marks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl VaultStore {
    /// The namespace's change times now: the baseline for [`VaultStore::changes_since`]. From
    /// this call on, this store's connection records what its own commits leave, so that they
    /// are not reported as other processes' changes.
    pub fn change_marks(&self) -> Result<ChangeMarks> {
        let conn = self.vault.conn();
        // Under the connection's lock: no commit of its own falls between the two.
        self.vault.lock_own_marks().get_or_insert_with(HashMap::new);
        self.read_marks(&conn)
    }

    /// The keys of this namespace that other connections (other processes writing the vault
    /// file) set or deleted since `last`, which becomes the baseline for the next call. A key
    /// changed several times is reported once, as it is now. Changes made through this store's
    /// own connection (announced when they were made) are left out, unless another process
    /// changed the key again after them.
    pub fn changes_since(&self, last: &mut ChangeMarks) -> Result<Vec<(SecretKey, ChangeKind)>> {
        let conn = self.vault.conn();
        if data_version(&conn).map_err(|e| self.vault.sql_error("looking for changes", e))?
            == last.data_version
        {
            return Ok(Vec::new());
        }
        let now = self.read_marks(&conn)?;
        let own = self
            .vault
            .lock_own_marks()
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        drop(conn);
        let own_mark = |key: &Vec<u8>| own.get(&(self.namespace.clone(), key.clone())).copied();
        let mut changes = Vec::new();
        let keys = last
            .marks
            .keys()
            .chain(now.marks.keys().filter(|k| !last.marks.contains_key(*k)));
        for key in keys {
            let (before, after) = (last.marks.get(key).copied(), now.marks.get(key).copied());
            if before == after || own_mark(key) == after {
                continue;
            }
            let Ok(name) = SecretKey::from_bytes(key) else {
                // Skipped with a warning by `keys` too.
                continue;
            };
            let kind = match after {
                Some(Mark::Set(_)) => ChangeKind::Set,
                Some(Mark::Deleted(_)) | None => ChangeKind::Delete,
            };
            changes.push((name, kind));
        }
        *last = now;
        Ok(changes)
    }

    fn read_marks(&self, conn: &Connection) -> Result<ChangeMarks> {
        let read = || -> rusqlite::Result<ChangeMarks> {
            // Before the times: a commit after this is then either in what is read, and found
            // again (changing nothing) at the next look, or after it, and found then; read
            // after, a commit in between would be taken as seen and never reported.
            let data_version = data_version(conn)?;
            // One snapshot for both tables.
            let snapshot = conn.unchecked_transaction()?;
            let mut marks = HashMap::new();
            let mut scan = |sql: &str, mark: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Mark>| {
                let mut stmt = conn.prepare_cached(sql)?;
                let mut rows = stmt.query([&self.namespace])?;
                while let Some(row) = rows.next()? {
                    if let Some(key) = key_bytes(row.get_ref(0)?) {
                        marks.insert(key, mark(row)?);
                    }
                }
                Ok::<_, rusqlite::Error>(())
            };
            scan(
                "SELECT key, deleted_at FROM deleted WHERE namespace = ?1",
                |row| Ok(Mark::Deleted(row.get(1)?)),
            )?;
            // Second: a value stands over an older delete of the key.
            scan(
                "SELECT key, changed_at FROM secrets WHERE namespace = ?1",
                |row| Ok(Mark::Set(row.get(1)?)),
            )?;
            snapshot.commit()?;
            Ok(ChangeMarks {
                data_version,
                marks,
            })
        };
        read().map_err(|e| self.vault.sql_error("reading change times", e))
    }
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA data_version", [], |row| row.get(0))
}

fn key_bytes(value: ValueRef<'_>) -> Option<Vec<u8>> {
    match value {
        ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Some(bytes.to_vec()),
        _ => None,
    }
}
