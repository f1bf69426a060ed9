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
        /// What is at the socket's path.
        socket: SocketLeft,
    },
    /// The broker with this pid was running and has exited.
    Stopped {
        /// Its process id.
        pid: u32,
        /// What is at the socket's path after it exited.
        socket: SocketLeft,
    },
}

/// What is at a flavour's socket path once no broker of [`stop`]'s runs there.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketLeft {
    /// Nothing: a broker removes the socket it bound when it stops.
    Nothing,
    /// A socket no broker holds the instance lock for: a systemd socket unit's, which starts
    /// a broker at the next connection, or one left by a broker that was killed (the next
    /// broker removes it).
    Socket,
    /// Something else than a socket, which keeps any broker from starting (it removes only a
    /// socket) until it is removed by hand.
    NotASocket,
    /// A broker started since (a command needed one) and serves it: this pid.
    NewBroker(u32),
}

/// Stops the broker of `paths`' flavour, if one runs: sends it SIGTERM, then SIGCONT (a broker
/// stopped with SIGSTOP or Ctrl-Z acts on the SIGTERM only once it runs again), and waits up to
/// `patience` for it to exit. A broker that is already shutting down is sent SIGTERM again,
/// which makes it stop at once, without waiting for its clients to read their replies; but a
/// stop that starts while another is still stopping the broker waits for that one (up to
/// `patience`) instead of signalling again.
///
/// Errors: the broker directory is another user's ([`Error::ProtectionUnavailable`]: nothing
/// is signalled); the broker did not exit within `patience` ([`Error::Unavailable`],
/// [`UnavailableReason::TimedOut`], naming its pid); the lock holder cannot be signalled or
/// named ([`Error::Io`], [`Error::Unavailable`]); another stop still held the stop lock after
/// `patience` ([`Error::Unavailable`], [`UnavailableReason::TimedOut`]: nothing is signalled).
pub fn stop(paths: &BrokerPaths, patience: Duration) -> Result<Stopped> {
    let socket_left = || socket_left(paths);
    match fs::symlink_metadata(&paths.dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Stopped::NotRunning {
                socket: SocketLeft::Nothing,
            })
        }
        Err(e) => return Err(Error::io(format!("inspecting {}", paths.dir.display()), e)),
        Ok(meta) => refuse_foreign_dir(&paths.dir, meta.uid())?,
    }
    let _stopping = one_stop_at_a_time(paths, patience)?;
    // Probing a lock file creates it; one that does not exist has no holder.
    if fs::symlink_metadata(&paths.instance_lock).is_err() {
        return Ok(Stopped::NotRunning {
            socket: socket_left(),
        });
    }
    let Some((pid, process)) = holder(&paths.instance_lock)? else {
        return Ok(Stopped::NotRunning {
            socket: socket_left(),
        });
    };
    // Before the signal: the broker's clients see their connections close while it shuts
    // down, and one that would start another broker then looks for this first.
    mark_stopped(paths, pid);
    for signal in [Signal::TERM, Signal::CONT] {
        match process.signal(signal) {
            Ok(()) => {}
            // It exited meanwhile: the wait below sees the lock released.
            Err(rustix::io::Errno::SRCH) => break,
            Err(e) => {
                // It runs on: no stop to wait out.
                clear_stopped(paths);
                return Err(Error::io(
                    format!("signalling the broker (pid {pid})"),
                    e.into(),
                ));
            }
        }
    }
    if !process.exited_within(patience)? {
        return Err(Error::unavailable(
            "broker",
            UnavailableReason::TimedOut,
            format!(
                "the broker (pid {pid}) was sent SIGTERM but has not exited within {} s: it \
                 waits for requests still running (a store that is slow to answer) and, for up \
                 to 5 s, for clients to read their replies. Stopping it again ends it without \
                 waiting for its clients; `kill -KILL {pid}` ends it at once (acknowledged \
                 writes are kept either way)",
                patience.as_secs_f64()
            ),
        ));
    }
    let socket = socket_left();
    if let SocketLeft::NewBroker(_) = socket {
        // A broker started meanwhile (the one stopped was exiting on its own, and a command
        // started another before the marker was written): the flavour is served, not stopped.
        clear_stopped(paths);
    }
    Ok(Stopped::Stopped { pid, socket })
}

/// Writes [`BrokerPaths::stopped`] (the stopped broker's pid), mode 0600. Not being able to is
/// not a reason to leave the broker running: it is logged, and a client that lost the broker
/// then starts another as it would after a crash.
fn mark_stopped(paths: &BrokerPaths, pid: u32) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&paths.stopped)
        .and_then(|mut file| writeln!(file, "{pid}"));
    if let Err(e) = written {
        tracing::warn!(error = %e, path = %paths.stopped.display(), "could not write the stop marker");
    }
}

/// What [`BrokerPaths::stopped`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMarker {
    /// No marker: no `keyshare stop` is in force.
    Absent,
    /// `keyshare stop` stopped the broker with this pid, and no broker has served since.
    Stopped(u32),
    /// A marker that cannot be read or holds no pid: a stop, of some broker.
    Unreadable,
}

/// Reads [`BrokerPaths::stopped`], a pid file as the instance lock is, with the same care (a
/// FIFO in its place is not waited on, a link not followed).
pub fn stop_marker(paths: &BrokerPaths) -> StopMarker {
    match fs::symlink_metadata(&paths.stopped) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => StopMarker::Absent,
        _ => lock_holder_pid(&paths.stopped).map_or(StopMarker::Unreadable, StopMarker::Stopped),
    }
}

/// Removes [`BrokerPaths::stopped`]: a broker calls it once it is ready to serve (a broker that
/// fails to start, over a vault being restored, say, leaves the stop in force).
pub fn clear_stopped(paths: &BrokerPaths) {
    match fs::remove_file(&paths.stopped) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, path = %paths.stopped.display(), "could not remove the stop marker");
        }
        _ => {}
    }
}

/// Takes the stop lock, waiting up to `patience` for another `keyshare stop` that holds it.
/// Without it, two stops at once each sent SIGTERM, and the second one, which a broker takes
/// to mean "now", ended it without its grace period: replies its clients had not read yet were
/// dropped. The second stop then finds the broker gone (or one started since).
fn one_stop_at_a_time(paths: &BrokerPaths, patience: Duration) -> Result<FileLock> {
    let deadline = Instant::now().checked_add(patience);
    loop {
        if let Some(lock) = FileLock::try_acquire(&paths.stop_lock)? {
            return Ok(lock);
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return Err(Error::unavailable(
                "broker",
                UnavailableReason::TimedOut,
                format!(
                    "another `keyshare stop` (it holds {}) is stopping the broker and has not \
                     finished within {} s; nothing was signalled",
                    paths.stop_lock.display(),
                    patience.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

fn socket_left(paths: &BrokerPaths) -> SocketLeft {
    use std::os::unix::fs::FileTypeExt;
    match fs::symlink_metadata(&paths.socket) {
        Err(_) => SocketLeft::Nothing,
        Ok(meta) if !meta.file_type().is_socket() => SocketLeft::NotASocket,
        Ok(_) => match FileLock::is_held(&paths.instance_lock) {
            Ok(true) => match lock_holder_by_kernel(&paths.instance_lock)
                .unwrap_or_else(|| lock_holder_pid(&paths.instance_lock))
            {
                Some(pid) => SocketLeft::NewBroker(pid),
                None => SocketLeft::Socket,
            },
            _ => SocketLeft::Socket,
        },
    }
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
/// it. The holder is the process the kernel names for the lock (`/proc/locks`), not the pid
/// the file holds: a broker writes its pid a moment after it takes the lock, and until then
/// the file names the one before, whose pid may be another process's by now (found by QA:
/// that process was signalled). The handle is kept only if the kernel still names the same
/// holder after it was opened, so it refers to the holder itself, not to a process that got
/// its pid in between. Without `/proc/locks` (not Linux), the file's pid, checked the same way.
fn holder(lock: &Path) -> Result<Option<(u32, Process)>> {
    let since = Instant::now();
    let named = || lock_holder_by_kernel(lock).unwrap_or_else(|| lock_holder_pid(lock));
    loop {
        if !FileLock::is_held(lock)? {
            return Ok(None);
        }
        let holder = named();
        if let Some(pid) = holder.and_then(|pid| Pid::from_raw(i32::try_from(pid).ok()?)) {
            match Process::open(pid) {
                Ok(process) => {
                    if FileLock::is_held(lock)? && named() == holder {
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
                    "a process holds the broker's instance lock {} but it could not be told \
                     which; find it with `fuser {}` and stop it by hand",
                    lock.display(),
                    lock.display()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The pid of the process holding an exclusive `flock` on `lock`, as the kernel lists it in
/// `/proc/locks` (`N: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF`; waiters' lines
/// have `->` after the number): `Some(None)` when it lists no such lock, `None` when it
/// cannot be read.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn lock_holder_by_kernel(lock: &Path) -> Option<Option<u32>> {
    let meta = fs::metadata(lock).ok()?;
    let file = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(meta.dev()),
        rustix::fs::minor(meta.dev()),
        meta.ino()
    );
    let locks = fs::read_to_string("/proc/locks").ok()?;
    Some(locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, "WRITE", pid, id, ..] if *id == file => pid.parse().ok(),
            _ => None,
        }
    }))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn lock_holder_by_kernel(_lock: &Path) -> Option<Option<u32>> {
    None
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
        // A patience past what an instant can hold (found by QA: `--timeout` near u64::MAX
        // panicked) waits without end.
        let deadline = Instant::now().checked_add(patience);
        loop {
            let timeout = deadline.and_then(|deadline| {
                Timespec::try_from(deadline.saturating_duration_since(Instant::now())).ok()
            });
            let mut fds = [PollFd::new(&self.0, PollFlags::IN)];
            match poll(&mut fds, timeout.as_ref()) {
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
        let deadline = Instant::now().checked_add(patience);
        loop {
            match rustix::process::test_kill_process(self.0) {
                Err(rustix::io::Errno::SRCH) => return Ok(true),
                _ if deadline.is_some_and(|d| Instant::now() >= d) => return Ok(false),
                _ => std::thread::sleep(POLL),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshare::Flavour;

    #[test]
    fn the_stop_marker_names_the_broker_stopped_or_is_taken_at_its_word() {
        let dir = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(
            dir.path(),
            &Flavour::with_default_service("stable").unwrap(),
        );
        fs::create_dir_all(&paths.dir).unwrap();
        assert_eq!(stop_marker(&paths), StopMarker::Absent);
        mark_stopped(&paths, 4242);
        assert_eq!(stop_marker(&paths), StopMarker::Stopped(4242));
        fs::write(&paths.stopped, "not a pid\n").unwrap();
        assert_eq!(stop_marker(&paths), StopMarker::Unreadable);
        // A FIFO in its place is a stop of some broker, and is not waited on.
        fs::remove_file(&paths.stopped).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &paths.stopped,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(stop_marker(&paths), StopMarker::Unreadable);
        clear_stopped(&paths);
        assert_eq!(stop_marker(&paths), StopMarker::Absent);
    }
}
