//! What `keyshare serve` needs around [`crate::server::run`]: the socket path, a private
//! directory, one instance per flavour, systemd socket activation, readiness and signals.
//!
//! ```no_run
//! # fn main() -> keyshare::Result<()> {
//! use keyshare::{Flavour, MemoryStore, SecretStorage};
//! use keyshare_broker::daemon::{BrokerPaths, Daemon};
//! use keyshare_broker::server::BrokerState;
//!
//! let paths = BrokerPaths::from_env(&Flavour::with_default_service("stable")?)?;
//! // Before any thread starts: socket activation reads (and clears) the environment.
//! let daemon = Daemon::prepare(&paths)?;
//! let runtime = keyshare_broker::daemon::runtime()?;
//! let storage = SecretStorage::builder(std::sync::Arc::new(MemoryStore::new())).build();
//! // Until SIGTERM or SIGINT, with the accept loop on one of the runtime's workers.
//! runtime.block_on(keyshare_broker::daemon::serve_on_worker(daemon, BrokerState::new(storage)))
//! # }
//! ```

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keyshare::{Error, Flavour, Result};

use crate::server::{run, BrokerState};

/// Where one flavour's broker lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerPaths {
    /// `$XDG_RUNTIME_DIR/keyshare`, mode 0700.
    pub dir: PathBuf,
    /// `<dir>/<flavour>.sock`, mode 0600.
    pub socket: PathBuf,
    /// `<dir>/<flavour>.lock`: held by the running broker (one instance per flavour).
    pub instance_lock: PathBuf,
    /// `<dir>/<flavour>.start.lock`: held by a client while it autostarts the broker, so that
    /// two clients do not start two.
    pub startup_lock: PathBuf,
    /// `<dir>/<flavour>.stop.lock`: held by `keyshare stop` while it stops the broker, so that
    /// a second stop at the same time waits for the first instead of signalling again (which
    /// would end the broker without its grace period).
    pub stop_lock: PathBuf,
    /// `<dir>/<flavour>.stopped`: written by `keyshare stop` before it signals the broker,
    /// removed by the next broker once it is ready to serve (`stop::clear_stopped`). A client
    /// that lost its broker can tell a deliberate stop from a crash: `keyshare watch` then
    /// waits for a broker instead of starting one, which undid the stop at once (a backup or
    /// restore that needs no broker running then ran under one).
    pub stopped: PathBuf,
}

impl BrokerPaths {
    /// The paths under `$XDG_RUNTIME_DIR`. Fails with a clear error when it is unset: the
    /// runtime directory is the only place that is private, per-user and cleaned at logout.
    pub fn from_env(flavour: &Flavour) -> Result<Self> {
        Self::from_runtime_dir(std::env::var_os("XDG_RUNTIME_DIR"), flavour)
    }

    /// [`BrokerPaths::from_env`] with the value of `XDG_RUNTIME_DIR` given.
    pub fn from_runtime_dir(
        runtime_dir: Option<std::ffi::OsString>,
        flavour: &Flavour,
    ) -> Result<Self> {
        let why = match runtime_dir {
            Some(dir) if Path::new(&dir).is_absolute() => {
                return Ok(Self::under(Path::new(&dir), flavour))
            }
            // The XDG spec says to ignore a relative one (the socket would land wherever the
            // command happens to run), as the CLI's own directories do.
            Some(dir) if !dir.is_empty() => format!(
                "XDG_RUNTIME_DIR is {:?}, not an absolute path, so it is ignored",
                Path::new(&dir)
            ),
            _ => "XDG_RUNTIME_DIR is not set".to_owned(),
        };
        Err(Error::unavailable(
            "broker",
            keyshare::UnavailableReason::NotRunning,
            format!(
                "{why}, so there is no private place for the broker's socket; log in through a \
                 session manager (systemd-logind sets it) or set it to a directory only you can \
                 access, or use --direct"
            ),
        ))
    }

    /// The paths under a given runtime directory (tests, or an explicit configuration).
    pub fn under(runtime_dir: &Path, flavour: &Flavour) -> Self {
        let dir = runtime_dir.join("keyshare");
        let name = flavour.name();
        BrokerPaths {
            socket: dir.join(format!("{name}.sock")),
            instance_lock: dir.join(format!("{name}.lock")),
            startup_lock: dir.join(format!("{name}.start.lock")),
            stop_lock: dir.join(format!("{name}.stop.lock")),
            stopped: dir.join(format!("{name}.stopped")),
            dir,
        }
    }

    /// Creates the directory with mode 0700 if needed, and refuses one that another user owns
    /// or that others can enter. An existing directory of ours with looser permissions is
    /// tightened (and logged), since nothing secret can have been exposed through it yet that
    /// a socket with mode 0600 did not protect.
    pub fn ensure_dir(&self) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        let meta = fs::symlink_metadata(&self.dir)
            .map_err(|e| Error::io(format!("inspecting {}", self.dir.display()), e))?;
        let uid = rustix::process::geteuid().as_raw();
        if !meta.is_dir() {
            return Err(Error::invalid(
                "broker directory",
                format!("{} is not a directory", self.dir.display()),
            ));
        }
        if meta.uid() != uid {
            return Err(Error::invalid(
                "broker directory",
                format!(
                    "{} belongs to uid {}, not to you (uid {uid}); remove it or fix \
                     XDG_RUNTIME_DIR",
                    self.dir.display(),
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o077 != 0 {
            tracing::warn!(dir = %self.dir.display(), mode = format!("{:o}", meta.mode() & 0o777), "tightening the broker directory to 0700");
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("chmod 0700 {}", self.dir.display()), e))?;
        }
        Ok(())
    }
}

/// How long a starting broker waits out clients probing its instance lock (each holds it for
/// a system call's time, every few milliseconds at most) before calling itself a second one.
const PROBE_PATIENCE: Duration = Duration::from_millis(200);

/// An exclusive `flock` on a file, released when dropped (or when the process dies, which is
/// what makes a stale lock impossible).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Opens (or creates) a lock file, which must be a regular file: a FIFO there blocked
    /// whoever read the holder's pid from it, for good (found by QA), and a symbolic link
    /// would lock whatever it points to.
    fn open(path: &Path) -> Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(NOT_WAITING_NOR_FOLLOWING)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                // What O_NOFOLLOW answers for a symlink: "Too many levels of symbolic links"
                // said nothing of what to do (found by QA).
                Some(libc_eloop) if libc_eloop == rustix::io::Errno::LOOP.raw_os_error() => {
                    Error::invalid(
                        "lock file",
                        format!(
                            "{} is a symbolic link, which keyshare does not follow (whoever \
                             planted it could point the lock elsewhere): remove it, and a \
                             broker makes the file anew",
                            path.display()
                        ),
                    )
                }
                _ => Error::io(format!("opening lock file {}", path.display()), e),
            })?;
        refuse_unless_regular(&file, path)?;
        Ok(file)
    }

    /// Takes the lock without waiting; `Ok(None)` when another process holds it.
    pub fn try_acquire(path: &Path) -> Result<Option<FileLock>> {
        let file = Self::open(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(FileLock {
                file,
                path: path.to_owned(),
            })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(Error::io(format!("locking {}", path.display()), e.into())),
        }
    }

    /// Whether a process holds the lock exclusively now (a broker, for the instance lock),
    /// found without taking it: a shared lock, released at once. Probes never exclude each
    /// other, and [`FileLock::try_acquire_past_probes`] tells them from a broker.
    pub fn is_held(path: &Path) -> Result<bool> {
        let file = Self::open(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => Ok(false),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(true),
            Err(e) => Err(Error::io(
                format!("probing lock {}", path.display()),
                e.into(),
            )),
        }
    }

    /// Takes the lock without waiting for an exclusive holder, but past probes
    /// ([`FileLock::is_held`]) that hold it shared for an instant: `Ok(None)` only when
    /// another process holds it exclusively, or probes kept it for all of `patience`.
    pub fn try_acquire_past_probes(path: &Path, patience: Duration) -> Result<Option<FileLock>> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(lock) = Self::try_acquire(path)? {
                return Ok(Some(lock));
            }
            // A shared lock is refused only while someone holds it exclusively.
            if Self::is_held(path)? || std::time::Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Takes the lock, waiting for the holder to release it. Blocks the thread.
    pub fn acquire(path: &Path) -> Result<FileLock> {
        let file = Self::open(path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(format!("locking {}", path.display()), e.into()))?;
        Ok(FileLock {
            file,
            path: path.to_owned(),
        })
    }

    /// The locked file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Where the listener came from, which decides who removes the socket file.
#[derive(Debug)]
enum Origin {
    /// We bound it; we remove it when done, if it is still ours.
    Bound(BoundSocket),
    /// systemd passed it (socket activation); systemd owns the file.
    Activated,
}

/// The socket file this process bound (this inode), removed when dropped if it is still the
/// one bound (a file put in its place by hand is left alone). So a broker that stops for any
/// reason, including one that fails to start after binding (its store could not be opened),
/// leaves no socket behind for the next command to stumble on.
#[derive(Debug)]
struct BoundSocket {
    path: PathBuf,
    id: (u64, u64),
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        if file_id(&self.path).ok() == Some(self.id) {
            if let Err(err) = fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %err, "could not remove the socket");
            }
        }
    }
}

/// A broker ready to serve: the listener is bound (or inherited) and the instance lock held.
/// Dropped without serving (a start that failed after [`Daemon::prepare`]), it removes the
/// socket file it bound.
#[derive(Debug)]
pub struct Daemon {
    listener: StdUnixListener,
    // Fields drop in this order: the socket file is removed while the instance lock is still
    // held, so never after another broker has bound its own in its place.
    origin: Origin,
    _lock: FileLock,
}

impl Daemon {
    /// Takes the instance lock and binds the socket, or takes the socket systemd passed, and
    /// raises this process's soft limit of open files to its hard limit: each connection takes
    /// a descriptor, the server serves up to
    /// [`ServerOptions::max_connections`](crate::server::ServerOptions::max_connections), and
    /// desktop sessions often start processes with a soft limit of 1024 (a failure to raise it
    /// is logged, and the broker serves with the lower limit).
    ///
    /// Call it before starting threads: socket activation reads and clears `LISTEN_PID` and
    /// `LISTEN_FDS`. Errors: another broker for this flavour is running
    /// ([`Error::Unavailable`] naming the socket), or the directory, lock or socket cannot be
    /// set up ([`Error::Io`], [`Error::Invalid`]).
    pub fn prepare(paths: &BrokerPaths) -> Result<Daemon> {
        raise_fd_limit();
        paths.ensure_dir()?;
        let activated = listenfd::ListenFd::from_env()
            .take_unix_listener(0)
            .map_err(|e| Error::io("taking the socket passed by systemd (LISTEN_FDS)", e))?;
        // Clients waiting for an exiting broker probe the lock (shared, for an instant): a
        // broker starting then is not a second broker.
        let lock = FileLock::try_acquire_past_probes(&paths.instance_lock, PROBE_PATIENCE)?
            .ok_or_else(|| {
                // The holder writes its pid into the lock file: name it, so that the user
                // knows which process to stop (found by QA: the message named none).
                let holder = lock_holder_pid(&paths.instance_lock)
                    .map(|pid| format!("pid {pid}, which holds"))
                    .unwrap_or_else(|| "it holds".to_owned());
                Error::unavailable(
                    "broker",
                    keyshare::UnavailableReason::Backend,
                    format!(
                        "another broker already serves {} ({holder} {}); stop it first to start \
                         another (`keyshare stop`, with this flavour's --flavor, or SIGTERM)",
                        paths.socket.display(),
                        paths.instance_lock.display()
                    ),
                )
            })?;
        write_pid(&lock);
        if let Some(listener) = activated {
            tracing::info!("using the socket passed by systemd");
            return Ok(Daemon {
                listener,
                origin: Origin::Activated,
                _lock: lock,
            });
        }
        remove_stale_socket(&paths.socket, &lock)?;
        let listener = StdUnixListener::bind(&paths.socket)
            .map_err(|e| Error::io(format!("binding {}", paths.socket.display()), e))?;
        let id = file_id(&paths.socket)
            .map_err(|e| Error::io(format!("inspecting {}", paths.socket.display()), e))?;
        let socket = BoundSocket {
            path: paths.socket.clone(),
            id,
        };
        // The directory is already 0700; 0600 on the socket keeps it private even if the
        // directory's mode is later loosened by hand.
        fs::set_permissions(&paths.socket, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("chmod 0600 {}", paths.socket.display()), e))?;
        Ok(Daemon {
            listener,
            origin: Origin::Bound(socket),
            _lock: lock,
        })
    }

    /// Serves until `shutdown` completes, then removes the socket file (unless systemd owns
    /// it) and releases the lock. A broker whose socket file was removed or replaced (the
    /// runtime directory cleaned at logout, say) can no longer be reached, so it stops too.
    pub async fn serve(self, state: BrokerState, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.serve_until(state, shutdown, std::future::pending())
            .await
    }

    /// [`Daemon::serve`], where `stop_now` ends the graceful shutdown that `shutdown` started
    /// without waiting for it to finish (see [`shutdown_signals`]): requests in progress and
    /// replies not yet read are dropped with their connections. The socket file is still
    /// removed.
    pub async fn serve_until(
        self,
        state: BrokerState,
        shutdown: impl Future<Output = ()>,
        stop_now: impl Future<Output = ()>,
    ) -> Result<()> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("making the broker socket non-blocking", e))?;
        let listener = tokio::net::UnixListener::from_std(self.listener)
            .map_err(|e| Error::io("registering the broker socket", e))?;
        let socket_gone = async {
            match &self.origin {
                Origin::Bound(socket) => socket_replaced(&socket.path, socket.id).await,
                Origin::Activated => std::future::pending().await,
            }
        };
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                () = socket_gone => {}
            }
        };
        let result = tokio::select! {
            result = run(listener, stop, state) => result,
            // Dropping `run` drops every connection with whatever it was doing. That loses
            // nothing acknowledged: a reply is made only after its request finished, so every
            // write a client was told about is already as durable as the store makes it (the
            // vault: committed). A request cut short was never answered, and its client sees
            // the connection close. Store calls already running on the blocking pool still
            // finish, when the runtime shuts down.
            () = stop_now => Ok(()),
        };
        // The socket file (if ours: see `BoundSocket`) goes while the instance lock is held.
        drop(self.origin);
        drop(self._lock);
        result
    }
}

/// Raises the soft limit of open files (`RLIMIT_NOFILE`) to the hard limit. Why: each connection takes a descriptor, the server serves up to 4096
/// (`ServerOptions::max_connections`), and desktop sessions often start processes with a soft
/// limit of 1024; past it `accept` fails until clients leave. Raising the soft limit up to the
/// hard one needs no privilege; if it fails anyway the broker serves with the lower limit.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), Some(maximum)) = (limit.current, limit.maximum) else {
        return;
    };
    if current >= maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(maximum),
        maximum: Some(maximum),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(from = current, to = maximum, "raised the open-file limit"),
        Err(err) => tracing::warn!(
            error = %err,
            soft = current,
            hard = maximum,
            "could not raise the open-file limit; fewer connections can be served at once"
        ),
    }
}

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    let meta = fs::symlink_metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Completes when `path` no longer is the socket we bound. Checked every few seconds: there is
/// no portable notification for "a file in /run was removed", and a few seconds do not matter
/// to an unreachable broker.
async fn socket_replaced(path: &Path, id: (u64, u64)) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tick.tick().await;
        match file_id(path) {
            Ok(now) if now == id => {}
            Ok(_) => {
                tracing::warn!(socket = %path.display(), "the socket file was replaced; stopping");
                return;
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(socket = %path.display(), "the socket file was removed; stopping");
                return;
            }
            Err(_) => {}
        }
    }
}

fn write_pid(lock: &FileLock) {
    // For humans and `doctor` only; the lock itself is the flock.
    let mut file = &lock.file;
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
}

/// The pid recorded in an instance lock file, for messages. Nothing from a file that is not
/// a regular file (a FIFO would block the read until its writer closed it).
pub fn lock_holder_pid(path: &Path) -> Option<u32> {
    let mut text = String::new();
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(NOT_WAITING_NOR_FOLLOWING)
        .open(path)
        .ok()?;
    refuse_unless_regular(&file, path).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// Opening flags for lock files: a FIFO opens without waiting for a writer, and a symbolic
/// link is not followed (the open fails).
const NOT_WAITING_NOR_FOLLOWING: i32 =
    rustix::fs::OFlags::NONBLOCK.bits() as i32 | rustix::fs::OFlags::NOFOLLOW.bits() as i32;

fn refuse_unless_regular(file: &File, path: &Path) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("inspecting lock file {}", path.display()), e))?;
    if meta.is_file() {
        return Ok(());
    }
    Err(Error::invalid(
        "lock file",
        format!(
            "{} is not a regular file; it was left untouched, remove it by hand",
            path.display()
        ),
    ))
}

/// Removes a socket file left by a broker that died. Takes the instance lock as proof that no
/// other broker of this flavour runs; refuses to remove a socket something still listens on
/// (systemd's, for instance), since removing it would orphan that listener.
fn remove_stale_socket(socket: &Path, _held: &FileLock) -> Result<()> {
    let meta = match fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("inspecting {}", socket.display()), e)),
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(Error::invalid(
            "broker socket",
            format!(
                "{} exists and is not a socket; it was left untouched, remove it by hand",
                socket.display()
            ),
        ));
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(Error::unavailable(
            "broker",
            keyshare::UnavailableReason::Backend,
            format!(
                "something already listens on {} (a systemd socket unit?); stop it first",
                socket.display()
            ),
        ));
    }
    tracing::info!(socket = %socket.display(), "removing a stale socket");
    fs::remove_file(socket)
        .map_err(|e| Error::io(format!("removing stale socket {}", socket.display()), e))
}

/// SIGTERM and SIGINT, from the moment this is called.
#[derive(Debug)]
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())
                .map_err(|e| Error::io("installing the SIGTERM handler", e))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| Error::io("installing the SIGINT handler", e))?,
        })
    }

    /// The next one's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Completes on the first SIGTERM or SIGINT. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    let mut signals = StopSignals::listen()?;
    Ok(async move {
        let name = signals.next().await;
        tracing::info!("{name}: shutting down");
    })
}

/// The two stops `keyshare serve` answers, for [`Daemon::serve_until`]: the first SIGTERM or
/// SIGINT asks for a graceful shutdown, which may wait [`ServerOptions::shutdown_grace`] for
/// clients to read their replies; a second one, during it, for an immediate stop (a user who
/// presses Ctrl-C twice wants the broker gone now). Must be called inside a tokio runtime.
///
/// [`ServerOptions::shutdown_grace`]: crate::server::ServerOptions::shutdown_grace
pub fn shutdown_signals() -> Result<(impl Future<Output = ()>, impl Future<Output = ()>)> {
    // One listener counts both, in a task of its own. Two listeners, one per stop, were
    // wrong: a listener counts signals only when polled, and signals that arrive between two
    // polls count as one, so the second stop's listener (polled only once the first stop
    // began) could take two signals for one and never stop.
    let mut signals = StopSignals::listen()?;
    let (first_tx, first) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let name = signals.next().await;
        tracing::info!("{name}: shutting down");
        let _ = first_tx.send(());
        let name = signals.next().await;
        tracing::warn!("{name} again: stopping now, without waiting for the shutdown to finish");
        let _ = second_tx.send(());
    });
    // A sender dropped without sending (the runtime is going away) is a stop too.
    Ok((
        async move {
            let _ = first.await;
        },
        async move {
            let _ = second.await;
        },
    ))
}

/// The most runtime threads [`runtime`] starts.
pub const MAX_WORKER_THREADS: usize = 4;

/// The runtime `keyshare serve` runs the broker on: one worker thread per core, up to
/// [`MAX_WORKER_THREADS`], with the default blocking pool for store calls that may block.
///
/// Why more than one worker: with several apps asking at once, one thread answering them all
/// was the bottleneck (8 connections on 2 cores: 48-53% of a raw socket ping-pong's rate on
/// one worker, 63-68% on two); a request's round trip takes the same time either way. Why a
/// cap: a broker serves one user's apps, and every idle worker is a thread parked for
/// nothing.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, MAX_WORKER_THREADS))
        .thread_name("keyshare-broker")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the broker's runtime", e))
}

/// Serves until SIGTERM or SIGINT (a second one stops it without waiting for the graceful
/// shutdown: [`shutdown_signals`]), from a task of the current runtime: `block_on` this (on
/// [`runtime`]) rather than `daemon.serve(..)` itself.
///
/// Why: `block_on` runs its future on the calling thread, which is not one of the runtime's
/// workers. The accept loop would run there, and every connection it accepted would be handed
/// to a worker across threads, a wake-up that cost a `keyshare get` through the broker
/// 0.08-0.2 ms of its 1.4 ms (crates/keyshare-cli/benches/broker_get.rs). Spawned, the loop
/// runs on a worker and a new connection's task starts on that same worker.
pub async fn serve_on_worker(daemon: Daemon, state: BrokerState) -> Result<()> {
    serve_on_worker_until(daemon, state, std::future::pending()).await
}

/// [`serve_on_worker`], stopping also (gracefully, as for a first SIGTERM) when `stop_when`
/// completes: for a store that can go away under the broker, such as a vault file replaced
/// by another (see `keyshare::VaultStore::check_file`).
pub async fn serve_on_worker_until(
    daemon: Daemon,
    state: BrokerState,
    stop_when: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (signalled, stop_now) = shutdown_signals()?;
    let stop = async move {
        tokio::select! {
            () = signalled => {}
            () = stop_when => {}
        }
    };
    match tokio::spawn(daemon.serve_until(state, stop, stop_now)).await {
        Ok(served) => served,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(err) => Err(Error::io("serving", std::io::Error::other(err.to_string()))),
    }
}

/// The line an autostarted broker writes to its stdout once it accepts connections.
pub const READY_LINE: &str = "keyshare-broker ready";

/// Tells the client that autostarted this broker that it is ready: writes [`READY_LINE`] (the
/// client accepts a line that ends with it) to
/// stdout, then points stdout and stderr at `/dev/null`, so the client can stop reading and
/// the broker never writes into a closed pipe. Call it after [`Daemon::prepare`] (the socket
/// accepts connections from then on; they wait in the backlog until `serve` runs).
///
/// A broker that has a log file should use [`notify_ready_on_stdout_then_log_to`]: after
/// this, whatever it writes to stderr (its log, a panic's message) is lost.
pub fn notify_ready_on_stdout() -> Result<()> {
    notify_ready(None)
}

/// [`notify_ready_on_stdout`], pointing stderr at `log` instead of `/dev/null`: from then on,
/// what the broker writes to stderr (its log lines, a panic's message) goes there.
///
/// Until the ready line, stderr stays the client's pipe: what the broker says while it starts
/// (a notice, or why it could not start) is for the user whose command started it.
pub fn notify_ready_on_stdout_then_log_to(log: &File) -> Result<()> {
    notify_ready(Some(log))
}

fn notify_ready(log: Option<&File>) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY_LINE}")
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::io("writing the readiness line", e))?;
    let null = File::options()
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("opening /dev/null", e))?;
    rustix::stdio::dup2_stdout(&null).map_err(|e| Error::io("redirecting stdout", e.into()))?;
    rustix::stdio::dup2_stderr(log.unwrap_or(&null))
        .map_err(|e| Error::io("redirecting stderr", e.into()))?;
    Ok(())
}

/// Points this process's stderr (where its log goes) at `log` from now on: a broker whose log
/// was moved aside while it runs continues in a new file.
pub fn log_to(log: &File) -> Result<()> {
    rustix::stdio::dup2_stderr(log).map_err(|e| Error::io("redirecting stderr", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flavour() -> Flavour {
        Flavour::with_default_service("stable").unwrap()
    }

    #[test]
    fn the_runtime_has_a_worker_per_core_up_to_the_cap() {
        let cores = std::thread::available_parallelism().unwrap().get();
        let runtime = runtime().unwrap();
        assert_eq!(
            runtime.metrics().num_workers(),
            cores.min(MAX_WORKER_THREADS)
        );
    }

    #[test]
    fn paths_follow_the_flavour() {
        let p = BrokerPaths::under(Path::new("/run/user/1000"), &flavour());
        assert_eq!(p.socket, Path::new("/run/user/1000/keyshare/stable.sock"));
        assert_eq!(p.dir, Path::new("/run/user/1000/keyshare"));
        assert_ne!(p.instance_lock, p.startup_lock);
    }

    #[test]
    fn prepare_raises_the_open_file_limit_to_the_hard_limit() {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let hard = getrlimit(Resource::Nofile).maximum;
        let Some(hard) = hard.filter(|&hard| hard > 512) else {
            return; // nothing to raise to here
        };
        // As a desktop session starts processes (the soft limit is often 1024 there). Other
        // tests of this binary run meanwhile; 512 descriptors are plenty for them.
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(512),
                maximum: Some(hard),
            },
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(tmp.path(), &flavour());
        let _daemon = Daemon::prepare(&paths).unwrap();
        assert_eq!(getrlimit(Resource::Nofile).current, Some(hard));
    }

    #[test]
    fn directory_is_private_and_socket_is_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(tmp.path(), &flavour());
        let daemon = Daemon::prepare(&paths).unwrap();
        let dir_mode = fs::metadata(&paths.dir).unwrap().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let sock_mode = fs::metadata(&paths.socket).unwrap().mode() & 0o777;
        assert_eq!(sock_mode, 0o600);
        assert_eq!(
            lock_holder_pid(&paths.instance_lock),
            Some(std::process::id())
        );
        // A second instance is refused while the first holds the lock, and the first
        // instance's socket is left alone.
        let second = Daemon::prepare(&paths).unwrap_err();
        assert!(second.to_string().contains("another broker"), "{second}");
        assert!(paths.socket.exists());
        drop(daemon);
    }

    #[test]
    fn loose_directory_is_tightened_and_stale_socket_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(tmp.path(), &flavour());
        fs::create_dir_all(&paths.dir).unwrap();
        fs::set_permissions(&paths.dir, fs::Permissions::from_mode(0o755)).unwrap();
        // A socket nobody listens on: what a killed broker leaves behind.
        drop(StdUnixListener::bind(&paths.socket).unwrap());
        assert!(paths.socket.exists());
        let daemon = Daemon::prepare(&paths).unwrap();
        assert_eq!(fs::metadata(&paths.dir).unwrap().mode() & 0o777, 0o700);
        std::os::unix::net::UnixStream::connect(&paths.socket).unwrap();
        drop(daemon);
    }

    #[test]
    fn a_broker_whose_socket_was_removed_stops() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(tmp.path(), &flavour());
        let daemon = Daemon::prepare(&paths).unwrap();
        fs::remove_file(&paths.socket).unwrap();
        let storage =
            keyshare::SecretStorage::builder(std::sync::Arc::new(keyshare::MemoryStore::new()))
                .build();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // No shutdown signal: only the removed socket can end this.
        runtime
            .block_on(daemon.serve(BrokerState::new(storage), std::future::pending()))
            .unwrap();
        // The lock is released with the daemon.
        assert!(FileLock::try_acquire(&paths.instance_lock)
            .unwrap()
            .is_some());
    }

    /// A broker that fails to start after binding (its store cannot be opened) drops its
    /// daemon without serving: the socket must go with it (QA #12), but not a file put in its
    /// place meanwhile.
    #[test]
    fn a_daemon_dropped_without_serving_removes_its_socket_only() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(tmp.path(), &flavour());
        drop(Daemon::prepare(&paths).unwrap());
        assert!(!paths.socket.exists());
        let daemon = Daemon::prepare(&paths).unwrap();
        fs::remove_file(&paths.socket).unwrap();
        fs::write(&paths.socket, b"not ours").unwrap();
        drop(daemon);
        assert_eq!(fs::read(&paths.socket).unwrap(), b"not ours");
    }

    #[test]
    fn a_live_socket_or_a_non_socket_is_left_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(tmp.path(), &flavour());
        paths.ensure_dir().unwrap();
        let live = StdUnixListener::bind(&paths.socket).unwrap();
        let err = Daemon::prepare(&paths).unwrap_err();
        assert!(err.to_string().contains("already listens"), "{err}");
        drop(live);
        fs::remove_file(&paths.socket).unwrap();
        fs::write(&paths.socket, b"not a socket").unwrap();
        let err = Daemon::prepare(&paths).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read(&paths.socket).unwrap(), b"not a socket");
    }

    #[test]
    fn missing_runtime_dir_is_a_clear_error() {
        for unset in [None, Some(std::ffi::OsString::new())] {
            let err = BrokerPaths::from_runtime_dir(unset, &flavour()).unwrap_err();
            assert!(
                err.to_string().contains("XDG_RUNTIME_DIR is not set"),
                "{err}"
            );
            assert!(err.is_unavailable());
        }
        // A relative one would put the socket wherever the command runs: ignored, as the XDG
        // spec says, and said so (found by QA: it was taken by `serve`).
        let err = BrokerPaths::from_runtime_dir(Some("run/user/7".into()), &flavour()).unwrap_err();
        assert!(
            err.to_string()
                .contains("XDG_RUNTIME_DIR is \"run/user/7\", not an absolute path"),
            "{err}"
        );
        let paths = BrokerPaths::from_runtime_dir(Some("/run/user/7".into()), &flavour()).unwrap();
        assert_eq!(paths.socket, Path::new("/run/user/7/keyshare/stable.sock"));
    }

    /// A client probing the instance lock (waiting for an exiting broker) holds it shared for
    /// an instant; a broker starting in that instant used to be refused as a second broker.
    #[test]
    fn a_broker_starts_past_a_probe_of_its_lock_but_not_past_another_broker() {
        let tmp = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(tmp.path(), &flavour());
        paths.ensure_dir().unwrap();
        let probe = FileLock::open(&paths.instance_lock).unwrap();
        rustix::fs::flock(&probe, rustix::fs::FlockOperation::LockShared).unwrap();
        assert!(!FileLock::is_held(&paths.instance_lock).unwrap());
        let releases = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(probe);
        });
        let first = Daemon::prepare(&paths).unwrap();
        releases.join().unwrap();
        assert!(FileLock::is_held(&paths.instance_lock).unwrap());
        // A real broker is told apart at once, not after the patience for probes.
        let started = std::time::Instant::now();
        let err = Daemon::prepare(&paths).unwrap_err();
        assert!(err.to_string().contains("another broker"), "{err}");
        assert!(
            started.elapsed() < PROBE_PATIENCE,
            "{:?}",
            started.elapsed()
        );
        drop(first);
        assert!(!FileLock::is_held(&paths.instance_lock).unwrap());
    }

    #[test]
    fn locks_exclude_each_other() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.lock");
        let held = FileLock::try_acquire(&path).unwrap().unwrap();
        assert!(FileLock::try_acquire(&path).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_acquire(&path).unwrap().is_some());
        assert_eq!(FileLock::acquire(&path).unwrap().path(), path);
    }
}
