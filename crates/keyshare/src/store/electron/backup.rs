//! A private copy of the state database, taken before keyshare first writes to it.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, MAIN_DB};

use crate::error::{Error, Result};

/// Copies the database behind `conn` (a consistent snapshot, through SQLite's backup API) to
/// `<db>.keyshare-backup-<UTC time>` (then `-2`, `-3`, ... if taken), created with mode 0600
/// since it holds the same secrets. Returns the backup's path.
pub fn backup_database(conn: &Connection, db_path: &Path) -> Result<PathBuf> {
    let stamp = utc_stamp(SystemTime::now());
    let file_name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state.vscdb".to_owned());
    let base = db_path.with_file_name(format!("{file_name}.keyshare-backup-{stamp}"));
    for attempt in 1..=100u32 {
        let path = if attempt == 1 {
            base.clone()
        } else {
            PathBuf::from(format!("{}-{attempt}", base.display()))
        };
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(&path) {
            Ok(file) => {
                drop(file);
                return match conn.backup(MAIN_DB, &path, None) {
                    Ok(()) => Ok(path),
                    Err(e) => {
                        // A half-written copy is worse than none: it looks like a backup.
                        let _ = std::fs::remove_file(&path);
                        Err(Error::io(
                            format!("backing up {} to {}", db_path.display(), path.display()),
                            std::io::Error::other(e.to_string()),
                        ))
                    }
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(Error::io(
                    format!("creating the backup {}", path.display()),
                    e,
                ))
            }
        }
    }
    Err(Error::io(
        format!("backing up {}", db_path.display()),
        std::io::Error::other("a hundred backups were already taken this second"),
    ))
}

/// `YYYYMMDDTHHMMSSZ`: sortable, and valid in file names on every OS.
pub fn utc_stamp(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        let at = |secs| utc_stamp(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(951_782_400), "20000229T000000Z");
        assert_eq!(at(1_709_164_799), "20240228T235959Z");
        assert_eq!(at(1_709_251_199), "20240229T235959Z");
        assert_eq!(at(4_102_444_800), "21000101T000000Z");
    }

    #[test]
    fn backups_are_private_and_never_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.vscdb");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
            .unwrap();
        let first = backup_database(&conn, &db).unwrap();
        let second = backup_database(&conn, &db).unwrap();
        assert_ne!(first, second);
        for path in [&first, &second] {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("state.vscdb.keyshare-backup-"), "{name}");
            let copy = Connection::open(path).unwrap();
            let x: i64 = copy.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(x, 42);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600);
            }
        }
    }
}
