//! Stopping a flavour's running broker from another process (`keyshare stop`): the way systemd
//! and `kill` stop it, by SIGTERM, so that it shuts down as it does for them (requests in
//! flight finish, every acknowledged write is durable, the socket goes), and then waiting until
//! it has exited.
//!
//! The broker is found by its instance lock, not by its socket: connecting to a socket that a
//! systemd socket unit holds would start a broker, and a broker that is stopped or hung still
//! holds the lock. The lock file holds the pid its holder wrote; the signal goes through a
//! pidfd opened while that same process is seen to hold the lock, so a pid reused by another
//! process after the broker exited is never signalled.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use keyshare::{Error, Result, UnavailableReason};
use rustix::process::{Pid, Signal};

use crate::daemon::{lock_holder_pid, BrokerPaths, FileLock};

/// How often [`holder`] looks again for the lock holder's pid (and, without pidfds, whether
/// the broker has exited).
const POLL: Duration = Duration::from_millis(10);

/// How long a lock holder may take to write its pid into the lock file after taking the lock
/// (it writes it at once; only a broker caught between the two needs this).
const PID_PATIENCE: Duration = Duration::from_secs(1);

/// What [`stop`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stopped {
    /// No broker of the flavour was running.
    NotRunning {
        /// The socket file exists all the same: a systemd socket unit's, which starts a
        /// broker at the next connection, or one left by a broker that was killed (the next
        /// broker removes it).
        socket_remains: bool,
    },
    /// The broker with this pid was running and has exited.
    Stopped {
        /// Its process id.
        pid: u32,
        /// Its socket file outlives it: a systemd socket unit's (see `NotRunning`).
        socket_remains: bool,
    },
}

/// Stops the broker of `paths`' flavour, if one runs: sends it SIGTERM, then SIGCONT (a broker
/// stopped with SIGSTOP or Ctrl-Z acts on the SIGTERM only once it runs again), and waits up to
/// `patience` for it to exit. A broker that is already shutting down is sent SIGTERM again,
/// which makes it stop at once, without waiting for its clients to read their replies.
///
/// Errors: the broker directory is another user's ([`Error::ProtectionUnavailable`]: nothing
/// is signalled); the broker did not exit within `patience` ([`Error::Unavailable`],
/// [`UnavailableReason::TimedOut`], naming its pid); the lock holder cannot be signalled or
/// named ([`Error::Io`], [`Error::Unavailable`]).
pub fn stop(paths: &BrokerPaths, patience: Duration) -> Result<Stopped> {
    let socket_remains = || fs::symlink_metadata(&paths.socket).is_ok();
    match fs::symlink_metadata(&paths.dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Stopped::NotRunning {
                socket_remains: false,
            })
        }
        Err(e) => return Err(Error::io(format!("inspecting {}", paths.dir.display()), e)),
        Ok(meta) => refuse_foreign_dir(&paths.dir, meta.uid())?,
    }
    // Probing a lock file creates it; one that does not exist has no holder.
    if !paths.instance_lock.exists() {
        return Ok(Stopped::NotRunning {
            socket_remains: socket_remains(),
        });
    }
    let Some((pid, process)) = holder(&paths.instance_lock)? else {
        return Ok(Stopped::NotRunning {
            socket_remains: socket_remains(),
        });
    };
    for signal in [Signal::TERM, Signal::CONT] {
        match process.signal(signal) {
            Ok(()) => {}
            // It exited meanwhile: the wait below sees the lock released.
            Err(rustix::io::Errno::SRCH) => break,
            Err(e) => {
                return Err(Error::io(
                    format!("signalling the broker (pid {pid})"),
                    e.into(),
                ))
            }
        }
    }
    if !process.exited_within(patience)? {
        return Err(Error::unavailable(
            "broker",
            UnavailableReason::TimedOut,
            format!(
                "the broker (pid {pid}) was sent SIGTERM but has not exited within {:.1?}: it \
                 waits for requests still running (a store that is slow to answer) and, for up \
                 to 5 s, for clients to read their replies. Stopping it again ends it without \
                 waiting for its clients; `kill -KILL {pid}` ends it at once (acknowledged \
                 writes are kept either way)",
                patience
            ),
        ));
    }
    Ok(Stopped::Stopped {
        pid,
        socket_remains: socket_remains(),
    })
}

fn refuse_foreign_dir(dir: &Path, owner: u32) -> Result<()> {
    let me = rustix::process::geteuid().as_raw();
    if owner == me {
        return Ok(());
    }
    Err(Error::ProtectionUnavailable(format!(
        "refused to stop a broker in {}: another user (uid {owner}) owns that directory, not \
         you (uid {me}), so whatever runs there is not yours to signal; nothing was signalled",
        dir.display()
    )))
}

/// The process holding the instance lock, with a handle on it: `None` when no process holds
/// it. The handle is opened for the pid the lock file names, and kept only if the lock is still
/// held and still names that pid afterwards, so it refers to the holder itself, not to a
/// process that got the pid of one that exited in between.
fn holder(lock: &Path) -> Result<Option<(u32, Process)>> {
    let since = Instant::now();
    loop {
        if !FileLock::is_held(lock)? {
            return Ok(None);
        }
        let named = lock_holder_pid(lock);
        if let Some(pid) = named.and_then(|pid| Pid::from_raw(i32::try_from(pid).ok()?)) {
            match Process::open(pid) {
                Ok(process) => {
                    if FileLock::is_held(lock)? && lock_holder_pid(lock) == named {
                        return Ok(Some((pid.as_raw_nonzero().get() as u32, process)));
                    }
                }
                // Gone already: look again.
                Err(rustix::io::Errno::SRCH) => {}
                Err(e) => {
                    return Err(Error::io(
                        format!("finding the broker process (pid {})", pid.as_raw_nonzero()),
                        e.into(),
                    ))
                }
            }
        }
        if since.elapsed() >= PID_PATIENCE {
            return Err(Error::unavailable(
                "broker",
                UnavailableReason::Backend,
                format!(
                    "a process holds the broker's instance lock {} but the file does not name a \
                     running process ({}); find it with `fuser {}` and stop it by hand",
                    lock.display(),
                    match named {
                        Some(pid) => format!("it says pid {pid}"),
                        None => "it names none".to_owned(),
                    },
                    lock.display()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// A process to signal and wait for: by pidfd, which keeps referring to that process even
/// once its pid is reused.
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Process(rustix::fd::OwnedFd);

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Process {
    fn open(pid: Pid) -> rustix::io::Result<Self> {
        rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map(Process)
    }

    fn signal(&self, signal: Signal) -> rustix::io::Result<()> {
        rustix::process::pidfd_send_signal(&self.0, signal)
    }

    /// Waits for the process to exit (its pidfd becomes readable; its instance lock is
    /// released by then, with its descriptors), up to `patience`. The process, not the lock:
    /// a broker that another app starts as soon as this one is gone holds the lock again.
    fn exited_within(&self, patience: Duration) -> Result<bool> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let timeout = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(Error::io("waiting for the broker to exit", e.into())),
            }
        }
    }
}

/// Without pidfds: by pid. Unverified here (see the README's platforms): a pid reused between
/// the lock check and the signal would be signalled.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
struct Process(Pid);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl Process {
    fn open(pid: Pid) -> rustix::io::Result<Self> {
        rustix::process::test_kill_process(pid).map(|()| Process(pid))
    }

    fn signal(&self, signal: Signal) -> rustix::io::Result<()> {
        rustix::process::kill_process(self.0, signal)
    }

    fn exited_within(&self, patience: Duration) -> Result<bool> {
        let deadline = Instant::now() + patience;
        loop {
            match rustix::process::test_kill_process(self.0) {
                Err(rustix::io::Errno::SRCH) => return Ok(true),
                _ if Instant::now() >= deadline => return Ok(false),
                _ => std::thread::sleep(POLL),
            }
        }
    }
}
