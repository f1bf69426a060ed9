//! Is the app that owns a state database running?
//!
//! A running VS Code caches `ItemTable` in memory and writes its cache back, so rows written
//! behind its back can be lost. What a running instance leaves behind:
//! - `<userData>/code.lock`, holding the main process's pid (written at start-up, removed at a
//!   clean exit; a crash leaves it stale);
//! - `<userData>/SingletonLock`, a symlink to `<hostname>-<pid>`, for Electron apps that take
//!   Chromium's single-instance lock (Cursor, Windsurf and other forks may);
//! - on Linux, processes whose command line carries `--user-data-dir=<userData>` (Electron
//!   passes it on to its helper processes), or, for the default directory, processes of the
//!   app's binary started without that flag.
//!
//! On Linux every clue is checked against `/proc` (the pid must be alive and the user's own).
//! Elsewhere only the lock files can be seen, and their presence is taken as "running": a
//! stale lock costs a `--force`, a missed instance costs the user's secrets.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A running instance of the app, and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningApp {
    /// The process id, when known.
    pub pid: Option<u32>,
    /// What gave it away, for the error message.
    pub evidence: String,
}

/// Looks for a running instance of `app_name` using `user_data_dir`. `is_default_dir` says
/// whether that directory is the one the app uses when started without `--user-data-dir`.
pub fn find_running_app(
    app_name: &str,
    user_data_dir: &Path,
    is_default_dir: bool,
) -> Option<RunningApp> {
    imp::find_by_lock(user_data_dir)
        .or_else(|| imp::find_by_process(app_name, user_data_dir, is_default_dir))
}

/// How long a process scan that found nothing is trusted. The lock files are checked on every
/// call; the scan of every process's command line (about a millisecond) at most this often,
/// so that a burst of writes does not rescan for each one. An app started in between is caught
/// by its `code.lock` at once.
const SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// [`find_running_app`] for one store, rescanning processes at most once per second.
#[derive(Debug)]
pub(super) struct RunningCheck {
    app_name: String,
    user_data_dir: PathBuf,
    is_default_dir: bool,
    last_clear_scan: Mutex<Option<Instant>>,
}

impl RunningCheck {
    pub(super) fn new(app_name: &str, user_data_dir: PathBuf, is_default_dir: bool) -> Self {
        RunningCheck {
            app_name: app_name.to_owned(),
            user_data_dir,
            is_default_dir,
            last_clear_scan: Mutex::new(None),
        }
    }

    pub(super) fn find(&self) -> Option<RunningApp> {
        if let Some(found) = imp::find_by_lock(&self.user_data_dir) {
            return Some(found);
        }
        // A poisoned lock only guards a timestamp: still usable.
        let mut last = self
            .last_clear_scan
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < SCAN_INTERVAL) {
            return None;
        }
        let found = imp::find_by_process(&self.app_name, &self.user_data_dir, self.is_default_dir);
        *last = if found.is_none() {
            Some(Instant::now())
        } else {
            None
        };
        found
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// The lower-case binary names an app's main executable has on Linux.
    fn binary_names(app_name: &str) -> Vec<String> {
        let known: &[&str] = match app_name {
            "Code" => &["code"],
            "Code - Insiders" => &["code-insiders"],
            "Code - OSS" => &["code-oss"],
            "VSCodium" => &["codium", "vscodium"],
            "VSCodium - Insiders" => &["codium-insiders", "vscodium-insiders"],
            "Cursor" => &["cursor"],
            "Windsurf" => &["windsurf"],
            _ => &[],
        };
        if known.is_empty() {
            vec![app_name.to_lowercase().replace(' ', "-")]
        } else {
            known.iter().map(|s| (*s).to_owned()).collect()
        }
    }

    fn canonical(path: &Path) -> PathBuf {
        std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    }

    fn own_uid() -> Option<u32> {
        std::fs::metadata("/proc/self").ok().map(|m| m.uid())
    }

    /// Whether `pid` is a live process of the user `uid` (and not this process).
    fn alive(pid: u32, uid: u32) -> bool {
        pid != std::process::id()
            && std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == uid)
    }

    pub fn find_by_lock(user_data_dir: &Path) -> Option<RunningApp> {
        let uid = own_uid()?;
        let lock = user_data_dir.join("code.lock");
        if let Some(pid) = std::fs::read_to_string(&lock)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
        {
            if alive(pid, uid) {
                return Some(RunningApp {
                    pid: Some(pid),
                    evidence: format!("{} names process {pid}, which is running", lock.display()),
                });
            }
        }

        let singleton = user_data_dir.join("SingletonLock");
        if let Ok(target) = std::fs::read_link(&singleton) {
            let target = target.to_string_lossy().into_owned();
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            if let Some((host, pid)) = target.rsplit_once('-') {
                if let Ok(pid) = pid.parse::<u32>() {
                    if host == hostname.trim() && alive(pid, uid) {
                        return Some(RunningApp {
                            pid: Some(pid),
                            evidence: format!(
                                "{} points to process {pid}, which is running",
                                singleton.display()
                            ),
                        });
                    }
                }
            }
        }
        None
    }

    pub fn find_by_process(
        app_name: &str,
        user_data_dir: &Path,
        is_default_dir: bool,
    ) -> Option<RunningApp> {
        let uid = own_uid()?;
        let wanted = canonical(user_data_dir);
        let names = binary_names(app_name);
        let entries = std::fs::read_dir("/proc").ok()?;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if !alive(pid, uid) {
                continue;
            }
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            match user_data_dir_arg(&args) {
                Some(dir) => {
                    let dir = Path::new(OsStr::from_bytes(dir));
                    let dir = if dir.is_relative() {
                        match std::fs::read_link(format!("/proc/{pid}/cwd")) {
                            Ok(cwd) => cwd.join(dir),
                            Err(_) => continue,
                        }
                    } else {
                        dir.to_path_buf()
                    };
                    if canonical(&dir) == wanted {
                        return Some(RunningApp {
                            pid: Some(pid),
                            evidence: format!(
                                "process {pid} runs with --user-data-dir={}",
                                user_data_dir.display()
                            ),
                        });
                    }
                }
                None if is_default_dir => {
                    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                    let argv0 = args.first().map(|a| Path::new(OsStr::from_bytes(a)));
                    let is_app = [exe.as_deref(), argv0].into_iter().flatten().any(|path| {
                        path.file_name()
                            .and_then(OsStr::to_str)
                            .is_some_and(|name| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
                    });
                    if is_app {
                        return Some(RunningApp {
                            pid: Some(pid),
                            evidence: format!(
                                "process {pid} is {app_name} with its default user-data directory"
                            ),
                        });
                    }
                }
                None => {}
            }
        }
        None
    }

    /// The value of `--user-data-dir=X` or `--user-data-dir X`.
    fn user_data_dir_arg<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
        const FLAG: &[u8] = b"--user-data-dir";
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if let Some(rest) = arg.strip_prefix(FLAG) {
                if let Some(value) = rest.strip_prefix(b"=") {
                    return Some(value);
                }
                if rest.is_empty() {
                    return iter.next().copied();
                }
            }
        }
        None
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub fn find_by_process(_app: &str, _dir: &Path, _default: bool) -> Option<RunningApp> {
        None
    }

    pub fn find_by_lock(user_data_dir: &Path) -> Option<RunningApp> {
        ["code.lock", "SingletonLock"].iter().find_map(|name| {
            let path = user_data_dir.join(name);
            std::fs::symlink_metadata(&path).ok().map(|_| RunningApp {
                pid: None,
                evidence: format!(
                    "{} exists (the app is running, or it crashed and left it behind)",
                    path.display()
                ),
            })
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// A child shell that blocks on its stdin until dropped, so it is alive for the whole test.
    struct Blocked(Child);

    impl Blocked {
        /// Runs `program -c 'echo ready; read x' args...` and waits for its "ready": until the
        /// new program runs, the kernel may still show an empty command line for it.
        fn spawn(program: &Path, args: &[&str]) -> Blocked {
            let mut child = Command::new(program)
                .args(["-c", "echo ready; read x", "sh"])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn");
            let mut line = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line, "ready\n");
            Blocked(child)
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Blocked {
        fn drop(&mut self) {
            drop(self.0.stdin.take());
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// `sh -c '...' sh args...`: the arguments land in /proc/<pid>/cmdline.
    fn sh_waiting_with(args: &[&str]) -> Blocked {
        Blocked::spawn(Path::new("/bin/sh"), args)
    }

    #[test]
    fn nothing_running_in_a_fresh_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_running_app("Code", dir.path(), false), None);
    }

    #[test]
    fn code_lock_with_a_live_pid_is_running_and_a_dead_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let child = sh_waiting_with(&[]);
        std::fs::write(dir.path().join("code.lock"), child.pid().to_string()).unwrap();
        let found = find_running_app("Code", dir.path(), false).expect("running");
        assert_eq!(found.pid, Some(child.pid()));
        assert!(found.evidence.contains("code.lock"), "{}", found.evidence);
        let pid = child.pid();
        drop(child);
        std::fs::write(dir.path().join("code.lock"), pid.to_string()).unwrap();
        assert_eq!(find_running_app("Code", dir.path(), false), None);
    }

    #[test]
    fn a_store_check_sees_a_new_code_lock_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let check = RunningCheck::new("Code", dir.path().to_path_buf(), false);
        assert_eq!(check.find(), None);
        let child = sh_waiting_with(&[]);
        std::fs::write(dir.path().join("code.lock"), child.pid().to_string()).unwrap();
        assert_eq!(check.find().and_then(|r| r.pid), Some(child.pid()));
    }

    #[test]
    fn singleton_lock_names_host_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let child = sh_waiting_with(&[]);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let lock = dir.path().join("SingletonLock");
        std::os::unix::fs::symlink(format!("{}-{}", host.trim(), child.pid()), &lock).unwrap();
        let found = find_running_app("Cursor", dir.path(), false).expect("running");
        assert!(
            found.evidence.contains("SingletonLock"),
            "{}",
            found.evidence
        );
        std::fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink(format!("otherhost-{}", child.pid()), &lock).unwrap();
        assert_eq!(find_running_app("Cursor", dir.path(), false), None);
    }

    #[test]
    fn a_process_with_our_user_data_dir_is_running() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let flag = format!("--user-data-dir={}", other.path().display());
        let _unrelated = sh_waiting_with(&["--type=renderer", &flag]);
        assert_eq!(find_running_app("Code", dir.path(), false), None);

        let path = dir.path().display().to_string();
        let child = sh_waiting_with(&["--type=renderer", "--user-data-dir", &path]);
        let found = find_running_app("Code", dir.path(), false).expect("running");
        assert_eq!(found.pid, Some(child.pid()));
    }

    #[test]
    fn the_apps_binary_counts_for_the_default_directory_only() {
        let dir = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        // A symlink rather than a copy: executing a freshly written file can fail with
        // ETXTBSY while another test thread forks.
        let fake_code = bin.path().join("code-insiders");
        std::os::unix::fs::symlink("/bin/sh", &fake_code).unwrap();
        let child = Blocked::spawn(&fake_code, &[]);
        let found = find_running_app("Code - Insiders", dir.path(), true).expect("running");
        assert_eq!(found.pid, Some(child.pid()));
        assert_eq!(find_running_app("Code - Insiders", dir.path(), false), None);
        assert_eq!(find_running_app("Code", dir.path(), true), None);
    }
}
