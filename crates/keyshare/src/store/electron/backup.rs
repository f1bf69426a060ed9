//! A private copy of the state database, taken before keyshare first writes to it.
//!
//! The rule (QA #5: every command that wrote took another full copy, forever, and the copies
//! kept deleted tokens):
//! - before a store instance's first write there is a backup from before it: a new one, or the
//!   newest existing keyshare backup of the database when that one is less than
//!   [`REUSE_WITHIN`] old (so a burst of commands, each its own instance, makes one copy, and a
//!   token written and deleted within the burst is in none);
//! - then only the newest [`KEEP`] keyshare backups of the database are kept (the one just
//!   taken or reused always among them): older ones are deleted, so the copies are bounded in
//!   number and a deleted token leaves them after a few more backups instead of never;
//! - "keyshare backups" are regular files named exactly
//!   `<db file name>.keyshare-backup-<YYYYMMDDTHHMMSSZ>` or `...-<N>` (N from 2 to 100), in
//!   the database's directory: nothing else is ever deleted. Age and order come from the time
//!   in the name (UTC); a name in the future (the clock was set back) is never "recent".

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, MAIN_DB};

use crate::error::{Error, Result};

/// How many keyshare backups of one database are kept.
pub const KEEP: usize = 3;

/// A keyshare backup younger than this is reused instead of taking another.
pub const REUSE_WITHIN: Duration = Duration::from_secs(3600);

/// The highest `-N` suffix [`backup_database`] gives.
const MAX_ATTEMPTS: u32 = 100;

/// Makes sure a backup from before the first write exists, by the rule in the module
/// documentation, and prunes the older ones. Returns the backup's path, and whether it was
/// taken now (`false`: a recent one was reused).
pub fn backup_before_first_write(
    conn: &Connection,
    db_path: &Path,
    now: SystemTime,
) -> Result<(PathBuf, bool)> {
    let now_secs = unix_secs(now);
    let recent = backups_of(db_path).into_iter().next().filter(|newest| {
        newest.time <= now_secs
            && now_secs - newest.time < REUSE_WITHIN.as_secs()
            && std::fs::metadata(&newest.path).is_ok_and(|m| m.len() > 0)
    });
    let (path, taken) = match recent {
        Some(found) => (found.path, false),
        None => (backup_database(conn, db_path, now)?, true),
    };
    prune(db_path, &path);
    Ok((path, taken))
}

/// A keyshare backup found next to the database.
#[derive(Debug)]
struct Found {
    path: PathBuf,
    /// The time in its name, in seconds since the epoch.
    time: u64,
    /// Its `-N` suffix, 1 without one.
    n: u32,
}

/// The keyshare backups of `db_path`, newest first (by the time in the name, then `-N`).
fn backups_of(db_path: &Path) -> Vec<Found> {
    let (Some(dir), Some(db_name)) = (db_path.parent(), db_path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.keyshare-backup-", db_name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!("cannot list {} for old backups: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut found: Vec<Found> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name();
            let (time, n) = parse_backup_name(name.to_str()?.strip_prefix(&prefix)?)?;
            // Only regular files: never a directory or a symbolic link that happens to match.
            entry
                .file_type()
                .ok()
                .filter(|t| t.is_file())
                .map(|_| Found {
                    path: entry.path(),
                    time,
                    n,
                })
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse((f.time, f.n)));
    found
}

/// Deletes the keyshare backups of `db_path` beyond the newest [`KEEP`], never `keep`.
/// Failures are logged: a backup left behind is no reason to refuse the write.
fn prune(db_path: &Path, keep: &Path) {
    let mut kept = 1; // `keep` itself
    for found in backups_of(db_path) {
        if found.path == keep {
            continue;
        }
        if kept < KEEP {
            kept += 1;
            continue;
        }
        match std::fs::remove_file(&found.path) {
            Ok(()) => tracing::info!(backup = %found.path.display(), "deleted an old backup"),
            Err(e) => tracing::warn!(
                backup = %found.path.display(),
                "cannot delete an old backup: {e}"
            ),
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` or `YYYYMMDDTHHMMSSZ-N` (2 <= N <= 100, no leading zero) to the time
/// (seconds since the epoch) and N (1 without a suffix); `None` for anything else.
fn parse_backup_name(rest: &str) -> Option<(u64, u32)> {
    let (stamp, n) = match rest.split_once('-') {
        None => (rest, 1),
        Some((stamp, n)) => {
            if n.starts_with('0') || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u32 = n.parse().ok()?;
            if !(2..=MAX_ATTEMPTS).contains(&n) {
                return None;
            }
            (stamp, n)
        }
    };
    let b = stamp.as_bytes();
    if b.len() != 16
        || b[8] != b'T'
        || b[15] != b'Z'
        || !b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit)
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| stamp[range].parse::<u32>().ok();
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some((u64::try_from(secs).ok()?, n))
}

/// Copies the database behind `conn` (a consistent snapshot, through SQLite's backup API) to
/// `<db>.keyshare-backup-<UTC time>` (then `-2`, `-3`, ... if taken), created with mode 0600
/// since it holds the same secrets. Returns the backup's path.
pub fn backup_database(conn: &Connection, db_path: &Path, now: SystemTime) -> Result<PathBuf> {
    let stamp = utc_stamp(now);
    let file_name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state.vscdb".to_owned());
    let base = db_path.with_file_name(format!("{file_name}.keyshare-backup-{stamp}"));
    for attempt in 1..=MAX_ATTEMPTS {
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

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYYMMDDTHHMMSSZ`: sortable, and valid in file names on every OS.
pub fn utc_stamp(time: SystemTime) -> String {
    let secs = unix_secs(time);
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

/// A proleptic Gregorian date to days since 1970-01-01 (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
        let first = backup_database(&conn, &db, SystemTime::now()).unwrap();
        let second = backup_database(&conn, &db, SystemTime::now()).unwrap();
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

    #[test]
    fn backup_names_parse_strictly() {
        let at = |secs| utc_stamp(UNIX_EPOCH + Duration::from_secs(secs));
        for secs in [0, 951_782_400, 1_709_251_199, 4_102_444_800] {
            assert_eq!(parse_backup_name(&at(secs)), Some((secs, 1)));
        }
        assert_eq!(
            parse_backup_name("20240229T235959Z-2"),
            Some((1_709_251_199, 2))
        );
        assert_eq!(
            parse_backup_name("20240229T235959Z-100"),
            Some((1_709_251_199, 100))
        );
        for not_ours in [
            "",
            "20240229T235959Z-1",
            "20240229T235959Z-02",
            "20240229T235959Z-101",
            "20240229T235959Z-",
            "20240229T235959Z-journal",
            "20240229T235959Z.bak",
            "20240229T235959",
            "20241329T235959Z",
            "20240229T245959Z",
            "2024022AT235959Z",
            "+2024029T235959Z",
        ] {
            assert_eq!(parse_backup_name(not_ours), None, "{not_ours:?}");
        }
    }

    /// QA #5: one backup per command, forever.
    #[test]
    fn a_recent_backup_stands_and_only_the_newest_three_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.vscdb");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (42);")
            .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        let hours_ago = |h: u64| now - Duration::from_secs(h * 3600);
        let name = |t: SystemTime, suffix: &str| {
            format!("state.vscdb.keyshare-backup-{}{suffix}", utc_stamp(t))
        };
        // Older backups, and files that only look like them: those are never touched.
        let old: Vec<PathBuf> = [(5, ""), (4, ""), (3, ""), (2, ""), (2, "-2"), (2, "-10")]
            .iter()
            .map(|(h, suffix)| {
                let path = dir.path().join(name(hours_ago(*h), suffix));
                std::fs::write(&path, b"old copy").unwrap();
                path
            })
            .collect();
        let decoys = [
            name(hours_ago(9), ".bak"),
            name(hours_ago(9), "-journal"),
            name(hours_ago(9), "-1"),
            "state.vscdb.keyshare-backup-notes".to_owned(),
            format!("other.vscdb.keyshare-backup-{}", utc_stamp(hours_ago(9))),
        ];
        for decoy in &decoys {
            std::fs::write(dir.path().join(decoy), b"not ours").unwrap();
        }
        let directory = dir.path().join(name(hours_ago(8), ""));
        std::fs::create_dir(&directory).unwrap();

        // None is recent: a new one, then the two newest old ones (by N: -10 after -2).
        let (taken, new) = backup_before_first_write(&conn, &db, now).unwrap();
        assert!(new);
        let mut left: Vec<PathBuf> = backups_of(&db).into_iter().map(|f| f.path).collect();
        assert_eq!(left, vec![taken.clone(), old[5].clone(), old[4].clone()]);
        for decoy in &decoys {
            assert!(dir.path().join(decoy).exists(), "{decoy} was deleted");
        }
        assert!(directory.is_dir());

        // Within the hour it stands for a new one; after, a new one replaces the oldest.
        let soon = now + REUSE_WITHIN - Duration::from_secs(1);
        assert_eq!(
            backup_before_first_write(&conn, &db, soon).unwrap(),
            (taken.clone(), false)
        );
        let later = now + REUSE_WITHIN;
        let (newer, new) = backup_before_first_write(&conn, &db, later).unwrap();
        assert!(new);
        left.pop();
        left.insert(0, newer);
        assert_eq!(
            backups_of(&db)
                .into_iter()
                .map(|f| f.path)
                .collect::<Vec<_>>(),
            left
        );

        // An empty file (a copy interrupted) or one from the future (the clock was set back)
        // never stands for a backup.
        let future = dir.path().join(name(later + Duration::from_secs(60), ""));
        std::fs::write(&future, b"").unwrap();
        let (taken, new) = backup_before_first_write(&conn, &db, later).unwrap();
        assert!(new && taken != future);
        assert_eq!(backups_of(&db).len(), KEEP);
    }
}
