//! The vault's SQLite schema: the file header check that recognises a vault before SQLite
//! touches it, the `meta` table, and forward migrations.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use rusqlite::types::Value;
use rusqlite::Connection;

use super::keys::{Argon2Params, ProviderKind, VaultId};
use crate::error::{Error, Result};

/// The newest schema this build reads and writes.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// SQLite's `application_id` header field for keyshare vaults: ASCII "KSHV". Lets the header
/// check tell a vault from any other SQLite database without running a query.
pub(crate) const APPLICATION_ID: u32 = 0x4b53_4856;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// One forward step of the schema.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Migration {
    /// The version this step produces.
    pub(crate) to: i64,
    pub(crate) sql: &'static str,
}

/// Every step from an empty file to [`SCHEMA_VERSION`], in order. Steps are never edited once
/// released; a change is a new step.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 1,
        sql: "CREATE TABLE meta (
                  name  TEXT PRIMARY KEY NOT NULL,
                  value ANY NOT NULL
              ) WITHOUT ROWID;
              CREATE TABLE secrets (
                  namespace TEXT NOT NULL,
                  key       BLOB NOT NULL,
                  sealed    BLOB NOT NULL,
                  PRIMARY KEY (namespace, key)
              );",
    },
    // When each key last changed, so that a repair can tell whether another app's change came
    // after the write it repairs: `changed_at` for a value's last set (NULL for rows written
    // before version 2: unknown), and a row in `deleted` for a key's last delete. Both in
    // nanoseconds since the Unix epoch. A key with a value changed last at its `changed_at`
    // (a delete after it would have removed the row); a key without one, at its `deleted_at`.
    Migration {
        to: 2,
        sql: "ALTER TABLE secrets ADD COLUMN changed_at INTEGER;
              CREATE TABLE deleted (
                  namespace  TEXT NOT NULL,
                  key        BLOB NOT NULL,
                  deleted_at INTEGER NOT NULL,
                  PRIMARY KEY (namespace, key)
              ) WITHOUT ROWID;",
    },
];

fn not_a_vault(path: &Path, why: &str) -> Error {
    Error::invalid(
        "vault",
        format!(
            "{} is not a keyshare vault ({why}). It was left untouched; move it away or choose \
             another vault path",
            path.display()
        ),
    )
}

/// Reads the 100-byte SQLite header of an existing file and checks that it is a keyshare
/// vault, before SQLite opens it (so a foreign file is never modified, not even its journal
/// mode). Returns whether the file is already in WAL mode.
pub(crate) fn check_header(path: &Path) -> Result<bool> {
    let mut header = [0u8; 100];
    let mut file =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut filled = 0;
    while filled < header.len() {
        match file.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }
    if filled == 0 {
        return Err(not_a_vault(path, "the file is empty"));
    }
    if filled < header.len() || &header[..16] != SQLITE_MAGIC {
        return Err(not_a_vault(path, "not a SQLite database"));
    }
    let application_id = u32::from_be_bytes([header[68], header[69], header[70], header[71]]);
    if application_id != APPLICATION_ID {
        return Err(not_a_vault(
            path,
            "a SQLite database of another application",
        ));
    }
    // Bytes 18 and 19 are the read and write format versions: 2 means WAL.
    Ok(header[18] == 2 && header[19] == 2)
}

/// What the `meta` table records.
#[derive(Debug)]
pub(crate) struct Meta {
    pub(crate) schema_version: i64,
    pub(crate) vault_id: VaultId,
    pub(crate) provider: ProviderKind,
    pub(crate) wrapped_dek: Vec<u8>,
    pub(crate) argon2: Option<(Argon2Params, [u8; 16])>,
}

/// The `meta` row names. FROZEN: they are on disk.
pub(crate) mod names {
    pub(crate) const SCHEMA_VERSION: &str = "schema_version";
    pub(crate) const VAULT_ID: &str = "vault_id";
    pub(crate) const KEK_PROVIDER: &str = "kek_provider";
    pub(crate) const WRAPPED_DEK: &str = "wrapped_dek";
    pub(crate) const ARGON2_MEMORY_KIB: &str = "argon2_memory_kib";
    pub(crate) const ARGON2_ITERATIONS: &str = "argon2_iterations";
    pub(crate) const ARGON2_PARALLELISM: &str = "argon2_parallelism";
    pub(crate) const ARGON2_SALT: &str = "argon2_salt";
}

pub(crate) fn too_new(path: &Path, version: i64) -> Error {
    Error::invalid(
        "vault",
        format!(
            "{} has schema version {version}, newer than the {SCHEMA_VERSION} this keyshare \
             supports; it was written by a newer keyshare. Upgrade keyshare to use it (the \
             vault was left untouched)",
            path.display()
        ),
    )
}

/// Reads the `meta` table in one query. A schema newer than this build is refused before
/// anything else in it is interpreted.
pub(crate) fn read_meta(
    conn: &Connection,
    path: &Path,
    map_sql: impl Fn(rusqlite::Error) -> Error,
) -> Result<Meta> {
    let corrupt = |detail: String| Error::Corrupt {
        store: format!("vault {}", path.display()),
        key: None,
        detail,
    };
    let mut rows: HashMap<String, Value> = HashMap::new();
    {
        let mut stmt = conn
            .prepare_cached("SELECT name, value FROM meta")
            .map_err(|e| match &e {
                // A vault header without a vault schema.
                rusqlite::Error::SqliteFailure(_, Some(msg)) if msg.contains("no such table") => {
                    not_a_vault(path, "it has no meta table")
                }
                _ => map_sql(e),
            })?;
        let mut query = stmt.query([]).map_err(&map_sql)?;
        while let Some(row) = query.next().map_err(&map_sql)? {
            rows.insert(row.get(0).map_err(&map_sql)?, row.get(1).map_err(&map_sql)?);
        }
    }
    let int = |name: &str| match rows.get(name) {
        Some(Value::Integer(i)) => Ok(*i),
        _ => Err(corrupt(format!(
            "meta row {name:?} is missing or not an integer"
        ))),
    };
    let blob = |name: &str| match rows.get(name) {
        Some(Value::Blob(b)) => Ok(b.clone()),
        _ => Err(corrupt(format!(
            "meta row {name:?} is missing or not a blob"
        ))),
    };
    let schema_version = int(names::SCHEMA_VERSION)?;
    if schema_version > SCHEMA_VERSION {
        return Err(too_new(path, schema_version));
    }
    if schema_version < 1 {
        return Err(corrupt(format!(
            "schema version {schema_version} is invalid"
        )));
    }
    let vault_id = VaultId::from_slice(&blob(names::VAULT_ID)?)
        .ok_or_else(|| corrupt("the vault id is not 16 bytes".to_owned()))?;
    let provider = match rows.get(names::KEK_PROVIDER) {
        Some(Value::Text(name)) => ProviderKind::from_name(name).ok_or_else(|| {
            corrupt(format!(
                "unknown key provider {name:?} (written by a newer keyshare?)"
            ))
        })?,
        _ => return Err(corrupt("the key provider is not recorded".to_owned())),
    };
    let wrapped_dek = blob(names::WRAPPED_DEK)?;
    let argon2 = if provider == ProviderKind::Passphrase {
        let param = |name: &str| {
            int(name).and_then(|v| {
                u32::try_from(v).map_err(|_| corrupt(format!("meta row {name:?} is out of range")))
            })
        };
        let params = Argon2Params {
            memory_kib: param(names::ARGON2_MEMORY_KIB)?,
            iterations: param(names::ARGON2_ITERATIONS)?,
            parallelism: param(names::ARGON2_PARALLELISM)?,
        };
        params.check().map_err(corrupt)?;
        let salt: [u8; 16] = blob(names::ARGON2_SALT)?
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("the Argon2 salt is not 16 bytes".to_owned()))?;
        Some((params, salt))
    } else {
        None
    };
    Ok(Meta {
        schema_version,
        vault_id,
        provider,
        wrapped_dek,
        argon2,
    })
}

/// Creates the schema and the `meta` rows of a new vault in one transaction.
pub(crate) fn create(conn: &Connection, meta: &Meta) -> rusqlite::Result<()> {
    conn.pragma_update(None, "application_id", APPLICATION_ID as i32)?;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        for step in MIGRATIONS {
            conn.execute_batch(step.sql)?;
        }
        let mut insert = conn.prepare("INSERT INTO meta (name, value) VALUES (?1, ?2)")?;
        insert.execute((names::SCHEMA_VERSION, SCHEMA_VERSION))?;
        insert.execute((names::VAULT_ID, &meta.vault_id.as_bytes()[..]))?;
        insert.execute((names::KEK_PROVIDER, meta.provider.name()))?;
        insert.execute((names::WRAPPED_DEK, &meta.wrapped_dek))?;
        if let Some((params, salt)) = &meta.argon2 {
            insert.execute((names::ARGON2_MEMORY_KIB, params.memory_kib))?;
            insert.execute((names::ARGON2_ITERATIONS, params.iterations))?;
            insert.execute((names::ARGON2_PARALLELISM, params.parallelism))?;
            insert.execute((names::ARGON2_SALT, &salt[..]))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Applies the steps of `migrations` newer than the vault's version, in one `BEGIN IMMEDIATE`
/// transaction, re-reading the version under the write lock (another process may have
/// upgraded it meanwhile). Refuses a vault newer than the last step. Returns the new version.
pub(crate) fn upgrade(
    conn: &Connection,
    path: &Path,
    migrations: &[Migration],
    map_sql: impl Fn(rusqlite::Error) -> Error,
) -> Result<i64> {
    let latest = migrations.last().map_or(0, |m| m.to);
    conn.execute_batch("BEGIN IMMEDIATE").map_err(&map_sql)?;
    let result = (|| {
        let current: i64 = conn
            .query_row(
                "SELECT value FROM meta WHERE name = ?1",
                [names::SCHEMA_VERSION],
                |row| row.get(0),
            )
            .map_err(&map_sql)?;
        if current > latest {
            return Err(too_new(path, current));
        }
        for step in migrations.iter().filter(|m| m.to > current) {
            conn.execute_batch(step.sql).map_err(&map_sql)?;
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE name = ?2",
                (step.to, names::SCHEMA_VERSION),
            )
            .map_err(&map_sql)?;
        }
        Ok(latest.max(current))
    })();
    match result {
        Ok(version) => {
            conn.execute_batch("COMMIT").map_err(&map_sql)?;
            Ok(version)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(e: rusqlite::Error) -> Error {
        Error::io("test", std::io::Error::other(e))
    }

    fn version(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT value FROM meta WHERE name = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn new_vault() -> (tempfile::TempDir, std::path::PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        let conn = Connection::open(&path).unwrap();
        let meta = Meta {
            schema_version: SCHEMA_VERSION,
            vault_id: VaultId::generate().unwrap(),
            provider: ProviderKind::KeyFile,
            wrapped_dek: vec![1; 73],
            argon2: None,
        };
        create(&conn, &meta).unwrap();
        (dir, path, conn)
    }

    #[test]
    fn a_new_vault_is_recognised_and_reads_back() {
        let (_dir, path, conn) = new_vault();
        assert!(!check_header(&path).unwrap(), "not yet in WAL mode");
        let meta = read_meta(&conn, &path, map).unwrap();
        assert_eq!(meta.schema_version, SCHEMA_VERSION);
        assert_eq!(meta.provider, ProviderKind::KeyFile);
        assert_eq!(meta.wrapped_dek, vec![1; 73]);
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        assert!(check_header(&path).unwrap());
    }

    #[test]
    fn upgrades_go_forward_once_and_atomically() {
        let (_dir, path, conn) = new_vault();
        let (next_version, too_new) = (SCHEMA_VERSION + 1, SCHEMA_VERSION + 2);
        let mut next = MIGRATIONS.to_vec();
        next.push(Migration {
            to: next_version,
            sql: "ALTER TABLE secrets ADD COLUMN written_at INTEGER",
        });
        assert_eq!(upgrade(&conn, &path, &next, map).unwrap(), next_version);
        assert_eq!(version(&conn), next_version);
        conn.execute_batch("SELECT written_at FROM secrets")
            .unwrap();
        // Applying again is a no-op (the ALTER would fail if it ran twice).
        assert_eq!(upgrade(&conn, &path, &next, map).unwrap(), next_version);

        // A failing step leaves the schema and version as they were.
        let mut broken = next.clone();
        broken.push(Migration {
            to: too_new,
            sql: "CREATE TABLE extra (x); THIS IS NOT SQL",
        });
        assert!(upgrade(&conn, &path, &broken, map).is_err());
        assert_eq!(version(&conn), next_version);
        assert!(conn.execute_batch("SELECT * FROM extra").is_err());

        // This build's steps stop at SCHEMA_VERSION: the vault is now too new for them.
        let err = upgrade(&conn, &path, MIGRATIONS, map).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        let err = read_meta(&conn, &path, map).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("schema version {next_version}")),
            "{err}"
        );
        assert_eq!(version(&conn), next_version);
    }
}
