//! SQLite's own checks of a database file's structure, for the vault and the Electron legacy
//! store: both refuse a damaged file before anything reads it or writes to it.

use rusqlite::Connection;

/// Up to this size a database gets `PRAGMA integrity_check`; above it `quick_check`, which
/// skips what costs most: whether every index entry matches its row. A damaged index makes a
/// read miss a row that is there ("not found") and a write add a second row for the key
/// (found by QA on a state.vscdb). Measured: 1.1 ms for a 1.2 MiB file of vault rows, 42 ms
/// for 24 MiB (quick_check 1.5 and 22 ms).
pub(crate) const FULL_CHECK_MAX: u64 = 32 * 1024 * 1024;

/// How far [`check`] looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    /// `integrity_check`: pages, rows and every index entry.
    Full,
    /// `quick_check`: pages and rows, not index entries.
    Quick,
}

impl Depth {
    /// [`Depth::Full`] for a file (with its log) of up to [`FULL_CHECK_MAX`] bytes.
    pub(crate) fn for_size(bytes: u64) -> Depth {
        if bytes <= FULL_CHECK_MAX {
            Depth::Full
        } else {
            Depth::Quick
        }
    }
}

impl Depth {
    /// The statement that checks at this depth.
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Depth::Full => "PRAGMA integrity_check(3)",
            Depth::Quick => "PRAGMA quick_check(3)",
        }
    }
}

/// A check's outcome with SQLite's "the file is damaged" errors (met while checking) as
/// damage, every other failure as the outer error.
pub(crate) fn damage_from_corruption(
    checked: rusqlite::Result<std::result::Result<(), String>>,
) -> rusqlite::Result<std::result::Result<(), String>> {
    match checked {
        Err(rusqlite::Error::SqliteFailure(err, message))
            if matches!(
                err.code,
                rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
            ) =>
        {
            Ok(Err(message.unwrap_or_else(|| err.to_string())))
        }
        other => other,
    }
}

/// Whether SQLite finds the database sound at `depth`. `Ok(Err(..))` names the damage (its
/// first complaints); other failures (the file stays locked, an I/O error) are the outer
/// error, not damage: a busy file is busy, not damaged.
pub(crate) fn check(
    conn: &Connection,
    depth: Depth,
) -> rusqlite::Result<std::result::Result<(), String>> {
    let lines = conn.prepare(depth.pragma()).and_then(|mut stmt| {
        stmt.query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()
    });
    damage_from_corruption(lines.map(|lines| {
        if lines.len() == 1 && lines[0] == "ok" {
            Ok(())
        } else {
            Err(lines.join("; "))
        }
    }))
}
