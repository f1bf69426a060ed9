//! File-system hygiene for the vault: private directories and files, permission checks that
//! say how to fix what they refuse, and creation that is atomic and never replaces a file.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::crypto::random_bytes;
use crate::error::{Error, Result};

/// Group and other permission bits: none may be set on a vault, its key file or its directory.
const GROUP_OTHER: u32 = 0o077;

/// A path as a user would type it into a shell: as it is, or in single quotes when it holds
/// anything a shell would read otherwise (a space, a quote). For messages that name a path to
/// type, the CLI's advice included.
pub fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%".contains(c))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

fn too_open(path: &Path, mode: u32, fix: &str) -> Error {
    Error::invalid(
        "vault permissions",
        format!(
            "{} is accessible by group or others (mode {:03o}); keyshare refuses to use it. \
             Run `chmod {fix} {}` and try again",
            path.display(),
            mode & 0o777,
            shell_quote(path)
        ),
    )
}

/// Another user's file or directory, which that user could replace or roll back.
fn foreign(path: &Path, meta: &fs::Metadata) -> Option<Error> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    (meta.uid() != me).then(|| {
        Error::invalid(
            "vault permissions",
            format!(
                "{} belongs to uid {}, not to you (uid {me}): whoever owns it could replace \
                 or roll it back. Run `chown {me} {}` if it is yours",
                path.display(),
                meta.uid(),
                shell_quote(path)
            ),
        )
    })
}

/// Checks a file that must be private: `Ok(None)` when it does not exist, an error when it is
/// not a regular file of this user's (a symbolic link included) or group/other have any access.
pub(crate) fn check_private_file(path: &Path) -> Result<Option<fs::Metadata>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("checking {}", path.display()), e)),
    };
    if meta.file_type().is_symlink() {
        // Found by QA: SQLite puts the WAL and its index next to the link's target, so a link
        // to a file in a directory others can write took the whole vault out of the private
        // directory, without a word.
        return Err(Error::invalid(
            "vault permissions",
            format!(
                "{} is a symbolic link, which keyshare does not follow for a vault's files: \
                 they must be in the vault's private directory, and a link puts one (and for \
                 the database, its WAL) wherever the link points. Put the file itself there \
                 instead of the link",
                path.display()
            ),
        ));
    }
    if let Some(err) = foreign(path, &meta) {
        return Err(err);
    }
    if !meta.is_file() {
        return Err(Error::invalid(
            "vault",
            format!("{} exists but is not a regular file", path.display()),
        ));
    }
    let mode = meta.permissions().mode();
    if mode & GROUP_OTHER != 0 {
        return Err(too_open(path, mode, "600"));
    }
    Ok(Some(meta))
}

/// Checks a directory that must be private: `Ok(false)` when it does not exist.
pub(crate) fn check_private_dir(dir: &Path) -> Result<bool> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("checking {}", dir.display()), e)),
    };
    if !meta.is_dir() {
        return Err(Error::invalid(
            "vault",
            format!("{} exists but is not a directory", dir.display()),
        ));
    }
    if let Some(err) = foreign(dir, &meta) {
        return Err(err);
    }
    let mode = meta.permissions().mode();
    if mode & GROUP_OTHER != 0 {
        return Err(too_open(dir, mode, "700"));
    }
    Ok(true)
}

/// Creates `dir` (and missing parents) with mode 0700, or checks the existing one.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    if check_private_dir(dir)? {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating directory {}", dir.display()), e))?;
    // Recheck: a concurrent creator, or a umask, must not leave it open.
    check_private_dir(dir)?;
    Ok(())
}

/// Flushes a directory, so a file just linked into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))
}

/// A file's device and inode (following a symbolic link, as opening it does): the same pair
/// later means the same file is still at the path.
pub(crate) fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The random tag in a temporary file's name: this many bytes, as lowercase hex.
const TEMP_TAG_LEN: usize = 8;

/// What a temporary file's name beside `path` starts with: `.NAME.`.
fn temp_prefix(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.")
}

/// A path beside `path` that no other process will pick: `.NAME.RANDOM.tmp`.
fn temp_beside(path: &Path) -> Result<PathBuf> {
    let mut tag = [0u8; TEMP_TAG_LEN];
    random_bytes(&mut tag)?;
    Ok(parent_dir(path).join(format!("{}{}.tmp", temp_prefix(path), hex::encode(tag))))
}

/// The side files SQLite may make beside a database (and so beside a vault's temporary file).
pub(crate) const SQLITE_SIDE_FILES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// How old a leftover temporary file must be before an open removes it. A creator links its
/// temporary file into place moments after it made it, and removes it right after: one that
/// has not changed for this long belongs to a process that died first (kill -9, a crash, a
/// power cut), not to one still writing it.
pub(crate) const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `name` is what [`create_private_file_atomically`] names its temporary file beside
/// `path` (`.NAME.<16 hex digits>.tmp`), or one of `side_files` of it. Nothing else matches:
/// no other file of the user's is ever taken for one.
fn is_temp_of(name: &std::ffi::OsStr, path: &Path, side_files: &[&str]) -> bool {
    let Some(rest) = name
        .to_str()
        .and_then(|name| name.strip_prefix(temp_prefix(path).as_str()))
    else {
        return false;
    };
    let tag_len = 2 * TEMP_TAG_LEN;
    let tagged = rest.len() > tag_len
        && rest.as_bytes()[..tag_len]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match rest.get(tag_len..).and_then(|r| r.strip_prefix(".tmp")) {
        Some(side) if tagged => side.is_empty() || side_files.contains(&side),
        _ => false,
    }
}

/// Removes what [`create_private_file_atomically`] left beside each `(path, side files)` when
/// its process died before it could clean up: a vault's key file's leftover holds a complete
/// raw key, and nothing else would ever remove it. Only names it makes, only regular files of
/// this user's (a symlink is not followed), and only those older than [`LEFTOVER_AGE`], so
/// that a creator still at work keeps its file. Best effort: what cannot be removed stays, and
/// the next open tries again. Returns what was removed.
pub(crate) fn remove_leftover_temps(dir: &Path, targets: &[(&Path, &[&str])]) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let uid = rustix::process::geteuid().as_raw();
    let now = std::time::SystemTime::now();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !targets
            .iter()
            .any(|(path, side_files)| is_temp_of(&name, path, side_files))
        {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        // An mtime in the future is not old.
        let old = meta
            .modified()
            .ok()
            .and_then(|modified| now.duration_since(modified).ok())
            .is_some_and(|age| age >= LEFTOVER_AGE);
        if !meta.file_type().is_file() || meta.uid() != uid || !old {
            continue;
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed a temporary file left by an interrupted creation of a vault or key file");
                removed.push(path);
            }
            Err(e) => {
                tracing::debug!(file = %path.display(), error = %e, "could not remove a temporary file left by an interrupted creation");
            }
        }
    }
    removed
}

/// Removes a temporary file of our own and the SQLite side files it may have.
fn remove_temp(temp: &Path) {
    for suffix in std::iter::once("").chain(SQLITE_SIDE_FILES) {
        let mut name = temp.as_os_str().to_owned();
        name.push(suffix);
        // Best effort: the file is ours and may already be gone.
        let _ = fs::remove_file(PathBuf::from(name));
    }
}

/// Creates `path` with mode 0600 and contents written by `fill`, atomically: `fill` writes a
/// temporary file beside it (given as an open handle and its path), which is flushed and then
/// hard-linked into place. A hard link never replaces an existing file, so if `path` already
/// exists (another process won a race) this returns `Ok(false)` and leaves that file alone;
/// `Ok(true)` means this call created it. The directory must exist.
pub(crate) fn create_private_file_atomically(
    path: &Path,
    fill: impl FnOnce(&mut File, &Path) -> Result<()>,
) -> Result<bool> {
    let temp = temp_beside(path)?;
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| Error::io(format!("creating {}", temp.display()), e))?;
        fill(&mut file, &temp)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("syncing {}", temp.display()), e))?;
        drop(file);
        match fs::hard_link(&temp, path) {
            Ok(()) => {
                sync_dir(parent_dir(path))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(format!("creating {}", path.display()), e)),
        }
    })();
    remove_temp(&temp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(Path::new("/a/b.db")), "/a/b.db");
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }

    #[test]
    fn atomic_creation_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let created = create_private_file_atomically(&path, |f, _| {
            f.write_all(b"first").map_err(|e| Error::io("w", e))
        })
        .unwrap();
        assert!(created);
        let again = create_private_file_atomically(&path, |f, _| {
            f.write_all(b"second").map_err(|e| Error::io("w", e))
        })
        .unwrap();
        assert!(!again);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn only_the_names_of_our_temporary_files_are_taken_for_them() {
        let vault = Path::new("/d/vault.db");
        let sqlite = &SQLITE_SIDE_FILES[..];
        for (name, sides, expected) in [
            (".vault.db.0123456789abcdef.tmp", sqlite, true),
            (".vault.db.0123456789abcdef.tmp-journal", sqlite, true),
            (".vault.db.0123456789abcdef.tmp-wal", sqlite, true),
            (".vault.db.0123456789abcdef.tmp-shm", sqlite, true),
            (".vault.db.0123456789abcdef.tmp-journal", &[][..], false),
            (".vault.db.0123456789abcdef.tmpx", sqlite, false),
            (".vault.db.0123456789abcde.tmp", sqlite, false),
            (".vault.db.0123456789abcdef0.tmp", sqlite, false),
            (".vault.db.0123456789ABCDEF.tmp", sqlite, false),
            (".vault.db.0123456789abcdeg.tmp", sqlite, false),
            (".vault.db.é123456789abcdef.tmp", sqlite, false),
            ("vault.db.0123456789abcdef.tmp", sqlite, false),
            (".vault.dbx.0123456789abcdef.tmp", sqlite, false),
            (".vault.db.tmp", sqlite, false),
            ("vault.db", sqlite, false),
        ] {
            assert_eq!(
                is_temp_of(std::ffi::OsStr::new(name), vault, sides),
                expected,
                "{name}"
            );
        }
        // The names `temp_beside` makes are matched.
        let temp = temp_beside(vault).unwrap();
        assert!(is_temp_of(temp.file_name().unwrap(), vault, &[]));
    }

    #[test]
    fn open_permissions_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.db");
        fs::write(&path, b"x").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = check_private_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        assert!(err.contains("640"), "{err}");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_private_file(&path).unwrap().is_some());

        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let err = check_private_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("chmod 700"), "{err}");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private_dir(dir.path()).unwrap());
    }
}
