//! Starting the broker when no broker answers.
//!
//! A client that finds no broker takes the startup lock (so that of several clients starting
//! at once, one starts the broker and the others wait for it), checks again, then runs
//! `<program> serve --flavor <F> --autostarted` in its own process group (a Ctrl-C in the
//! terminal does not reach it), in `/` (it keeps no directory of the client's busy), and waits
//! for the ready line the broker writes to its stdout once its socket is bound. No polling, no
//! sleeps for the broker: the pipe says when it is ready, or its end (with the broker's
//! stderr) says why it is not.
//!
//! The startup lock is waited for in bounded time: a client that hangs while holding it (stopped
//! in a debugger, stuck on a full disk) must not hang every other client of the flavour with
//! it. `flock` has no timeout, so the wait polls a non-blocking attempt; the client that holds
//! the lock records its pid in the file, so that an error can name it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyshare::store::vault::PASSPHRASE_ENV;
use keyshare::Flavour;

use crate::client::TransportError;
use crate::daemon::{lock_holder_pid, BrokerPaths, FileLock, READY_LINE};

/// How to start the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autostart {
    /// The program to run.
    pub program: PathBuf,
    /// Run this process's own executable instead when it has `program`'s file name (a CLI then
    /// starts a broker of its own version). Looked up when a broker is started, not before:
    /// most commands find one running, and reading `/proc/self/exe` was a measurable part of a
    /// lookup's start-up.
    pub prefer_own_executable: bool,
    /// Its arguments. The broker runs in `/`: a relative path among them is taken from there.
    pub args: Vec<OsString>,
    /// Extra environment variables for the broker.
    pub env: Vec<(OsString, OsString)>,
    /// How long to wait for the ready line.
    pub ready_timeout: Duration,
    /// When this process has a vault passphrase in `KEYSHARE_PASSPHRASE`: hand it to the
    /// broker on its standard input, with `--passphrase-stdin`, and leave the variable out of
    /// its environment, which stays readable (in `/proc/<pid>/environ` and the broker's
    /// memory) for the broker's whole life, days (QA s18 F4).
    pub passphrase_on_stdin: bool,
}

impl Autostart {
    /// `keyshare serve --flavor <F> --autostarted`, where `keyshare` is this process's own
    /// executable when it is named `keyshare` (so a CLI starts a broker of its own version),
    /// else `keyshare` from `PATH`.
    pub fn keyshare_serve(flavour: &Flavour) -> Self {
        Autostart {
            program: PathBuf::from("keyshare"),
            prefer_own_executable: true,
            args: vec![
                "serve".into(),
                "--flavor".into(),
                flavour.name().into(),
                "--autostarted".into(),
            ],
            env: Vec::new(),
            ready_timeout: Duration::from_secs(10),
            passphrase_on_stdin: true,
        }
    }

    /// Starts the broker unless one answers by the time the startup lock is ours. Returns what
    /// the broker wrote to stderr before it was ready (notices, such as a key file it created),
    /// for the caller to show; empty when another client started it.
    pub(crate) async fn start(&self, paths: &BrokerPaths) -> Result<String, TransportError> {
        let this = self.clone();
        let paths = paths.clone();
        tokio::task::spawn_blocking(move || this.start_blocking(&paths))
            .await
            .map_err(|_| TransportError::Autostart("the autostart task failed".into()))?
    }

    pub(crate) fn start_blocking(&self, paths: &BrokerPaths) -> Result<String, TransportError> {
        let fail = |what: String| TransportError::Autostart(what);
        paths.ensure_dir().map_err(|e| fail(e.to_string()))?;
        let _startup = self.take_startup_lock(paths)?;
        // Another client may have started it while we waited for the lock.
        if std::os::unix::net::UnixStream::connect(&paths.socket).is_ok() {
            return Ok(String::new());
        }
        if self.wait_for_exiting_broker(paths) == Exiting::Answered {
            return Ok(String::new());
        }
        let program = self.program_to_run();
        tracing::info!(program = %program.display(), "starting the broker");
        let passphrase = self
            .passphrase_on_stdin
            .then(|| std::env::var_os(PASSPHRASE_ENV))
            .flatten()
            .map(|value| {
                let value = zeroize::Zeroizing::new(value.into_vec());
                // Always ended with a newline, which the broker drops: a passphrase that itself
                // ends in one arrives whole (found in review). Sized first: a push past the
                // capacity would move the bytes and free the old buffer uncleared.
                let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(value.len() + 1));
                bytes.extend_from_slice(&value);
                bytes.push(b'\n');
                bytes
            });
        let mut command = Command::new(&program);
        command
            .args(&self.args)
            // The broker outlives the command that starts it, by ten idle minutes or more: in
            // the command's directory it would keep that directory busy (a USB stick that
            // cannot be unmounted, found by QA). It opens no relative path.
            .current_dir("/")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if passphrase.is_some() {
            command
                .env_remove(PASSPHRASE_ENV)
                .arg("--passphrase-stdin")
                .stdin(Stdio::piped());
        }
        let mut child = command
            .spawn()
            .map_err(|e| fail(Self::cannot_run(&program, &e)))?;
        if let Some(passphrase) = passphrase {
            // A few bytes, far under a pipe's capacity: written whole without waiting for the
            // broker to read. A broker that died first says why on stderr, read below.
            let mut stdin = child.stdin.take().expect("piped");
            let _ = stdin.write_all(&passphrase);
        }
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Other output before the ready line (a wrapper's banner, a test harness's
            // progress text on the same line) is skipped.
            let ready = BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| line.trim_end().ends_with(READY_LINE));
            let _ = ready_tx.send(ready);
        });
        // Drained on its own thread: a broker that logs a lot before it is ready must not
        // block on a full pipe. Only the tail is kept, for the error message.
        let stderr_reader = std::thread::spawn(move || {
            let mut tail = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 8192 {
                    tail.drain(..tail.len() - 4096);
                }
            }
            String::from_utf8_lossy(&tail).trim().to_owned()
        });
        match ready_rx.recv_timeout(self.ready_timeout) {
            Ok(true) => {
                // Reap it when it exits, so it never lingers as a zombie of a long-lived app.
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                // The broker points its stderr at its log file (or /dev/null) right after
                // the ready line, so the reader reaches the end at once.
                Ok(stderr_reader.join().unwrap_or_default())
            }
            Ok(false) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Its stdout ended without the ready line: it exited, or it is running but
                // broken (closed stdout without saying ready). Either way it is not the broker
                // we wait for; killing an exited child of ours is harmless (not yet reaped, so
                // the pid is still ours).
                let _ = child.kill();
                let status = child.wait().ok();
                let stderr = stderr_reader.join().unwrap_or_default();
                // It may have lost a race with a broker started by hand.
                if std::os::unix::net::UnixStream::connect(&paths.socket).is_ok() {
                    return Ok(String::new());
                }
                Err(fail(format!(
                    "{} exited ({}) before it was ready{}",
                    program.display(),
                    status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string()),
                    if stderr.is_empty() {
                        String::new()
                    } else {
                        format!(": {stderr}")
                    }
                )))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(fail(format!(
                    "{} was not ready within {:?}",
                    program.display(),
                    self.ready_timeout
                )))
            }
        }
    }

    /// The program to start: [`Autostart::program`], or this process's own executable (see
    /// [`Autostart::prefer_own_executable`]).
    fn program_to_run(&self) -> PathBuf {
        let own = self
            .prefer_own_executable
            .then(std::env::current_exe)
            .and_then(Result::ok)
            .filter(|exe| exe.file_name().is_some() && exe.file_name() == self.program.file_name());
        let program = own.unwrap_or_else(|| self.program.clone());
        // A relative path names a program from this process's directory, not the broker's.
        if program.components().count() > 1 && program.is_relative() {
            std::path::absolute(&program).unwrap_or(program)
        } else {
            program
        }
    }

    /// Why `program` could not be run, and what works instead. No setting names the program
    /// (it is this executable, or `keyshare` from `PATH`: [`Autostart::keyshare_serve`]), so
    /// the advice is to make it runnable, or to do without an autostarted broker (found by QA:
    /// it advised a config.toml setting that does not exist).
    fn cannot_run(program: &std::path::Path, err: &std::io::Error) -> String {
        let fix = if program.components().count() == 1 {
            format!(
                "it is looked up on PATH: put a {} that you can run there",
                program.display()
            )
        } else {
            format!("make {} a program that you can run", program.display())
        };
        format!(
            "cannot run {}: {err} ({fix}; or start the broker yourself with `keyshare \
             serve`, or do without it: --no-autostart, KEYSHARE_NO_AUTOSTART=1 or autostart = \
             false in config.toml, or --direct)",
            program.display()
        )
    }

    /// Waits until no broker holds the instance lock (or one answers), for as long as a start
    /// may take.
    ///
    /// Why: a broker that exits (idle, or told to) closes its listener first and releases the
    /// instance lock only when its process ends, a few milliseconds later; a client that
    /// connected in between finds no broker, and the broker it would start at once would find
    /// the lock taken and fail. Probing holds the lock shared for an instant, which a starting
    /// broker waits out ([`FileLock::try_acquire_past_probes`]).
    fn wait_for_exiting_broker(&self, paths: &BrokerPaths) -> Exiting {
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match FileLock::is_held(&paths.instance_lock) {
                Ok(false) => return Exiting::Gone,
                Ok(true) => {}
                // The broker about to start reports it better.
                Err(_) => return Exiting::Gone,
            }
            // The holder was starting, not exiting (it binds right after taking the lock).
            if std::os::unix::net::UnixStream::connect(&paths.socket).is_ok() {
                return Exiting::Answered;
            }
            if started.elapsed() >= self.ready_timeout {
                // Start one anyway: its error says which lock is held, and by whom.
                return Exiting::Gone;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Takes the startup lock, waiting for another client's start to finish, but not forever.
    ///
    /// The holder waits up to its ready timeout for its broker and then gives up and releases
    /// the lock; a lock held half as long again (the time to spawn and reap a broker included)
    /// belongs to a client that hangs. This client's own ready timeout stands for the
    /// holder's: clients of one flavour are normally the same program.
    fn take_startup_lock(&self, paths: &BrokerPaths) -> Result<FileLock, TransportError> {
        let path = &paths.startup_lock;
        let patience = self.ready_timeout + self.ready_timeout / 2;
        let started = Instant::now();
        // Starts short (a start takes tens of milliseconds) and stays short enough that a
        // waiting client sees the broker soon after it is ready.
        let mut pause = Duration::from_millis(2);
        let lock = loop {
            match FileLock::try_acquire(path) {
                Ok(Some(lock)) => break lock,
                Ok(None) => {}
                Err(err) => return Err(TransportError::Autostart(err.to_string())),
            }
            let waited = started.elapsed();
            if waited >= patience {
                return Err(TransportError::StartupLockHeld {
                    lock: path.clone(),
                    holder: lock_holder_pid(path).filter(|&pid| process_exists(pid)),
                    waited,
                });
            }
            std::thread::sleep(pause.min(patience - waited));
            pause = (pause * 2).min(Duration::from_millis(20));
        };
        // For the message above, in a client that waits for this one. Best effort: the lock is
        // the flock, not this content.
        if let Err(err) = std::fs::write(path, format!("{}\n", std::process::id())) {
            tracing::debug!(lock = %path.display(), error = %err, "could not record this pid in the startup lock");
        }
        Ok(lock)
    }
}

/// What [`Autostart::wait_for_exiting_broker`] found.
#[derive(Debug, PartialEq, Eq)]
enum Exiting {
    /// No broker holds the instance lock now (or it could not be told): start one.
    Gone,
    /// A broker answers on the socket: nothing to start.
    Answered,
}

/// Whether a process with this pid exists (a pid recorded in a lock file may be stale: the
/// process that wrote it released the lock and exited since).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    rustix::process::Pid::from_raw(pid).is_some_and(|pid| {
        // EPERM: it exists, as another user's process.
        matches!(
            rustix::process::test_kill_process(pid),
            Ok(()) | Err(rustix::io::Errno::PERM)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker started is this process's own executable when asked for and named alike
    /// (a CLI starts a broker of its own version), else the program as given.
    #[test]
    fn the_own_executable_is_run_only_when_preferred_and_named_alike() {
        let exe = std::env::current_exe().unwrap();
        let named = |program: &std::path::Path, prefer_own_executable| Autostart {
            program: program.to_owned(),
            prefer_own_executable,
            args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(1),
            passphrase_on_stdin: false,
        };
        let same_name = PathBuf::from(exe.file_name().unwrap());
        assert_eq!(named(&same_name, true).program_to_run(), exe);
        assert_eq!(named(&same_name, false).program_to_run(), same_name);
        let other = PathBuf::from("keyshare-test-other-name");
        assert_eq!(named(&other, true).program_to_run(), other);
        // A relative path with a directory is made absolute from here, not the broker's `/`.
        let relative = PathBuf::from("bin/keyshare-test-other-name");
        assert_eq!(
            named(&relative, true).program_to_run(),
            std::env::current_dir().unwrap().join(&relative)
        );
    }

    /// A program that cannot be run is reported with advice that works: the error used to
    /// suggest setting the broker program in config.toml, which has no such setting.
    #[test]
    fn a_program_that_cannot_be_run_is_reported_with_what_works() {
        let dir = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(
            dir.path(),
            &Flavour::with_default_service("stable").unwrap(),
        );
        let not_executable = dir.path().join("bin/keyshare");
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(&not_executable, "").unwrap();
        for (program, says) in [
            (
                not_executable.clone(),
                format!(
                    "make {} a program that you can run",
                    not_executable.display()
                ),
            ),
            (
                PathBuf::from("keyshare-test-no-such-program"),
                "it is looked up on PATH: put a keyshare-test-no-such-program that you can run \
                 there"
                    .to_owned(),
            ),
        ] {
            let autostart = Autostart {
                program,
                prefer_own_executable: false,
                args: Vec::new(),
                env: Vec::new(),
                ready_timeout: Duration::from_secs(10),
                passphrase_on_stdin: false,
            };
            let err = autostart.start_blocking(&paths).unwrap_err().to_string();
            assert!(err.contains("cannot run") && err.contains(&says), "{err}");
            assert!(
                err.contains("`keyshare serve`") && err.contains("--no-autostart"),
                "{err}"
            );
            assert!(!err.contains("broker program"), "{err}");
        }
    }
}
