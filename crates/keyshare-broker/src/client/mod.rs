//! The broker client: one connection per client for its requests, shared by every task and
//! thread that uses it, and one more per subscription ([`BrokerClient::subscribe`]).
//!
//! Requests are pipelined: each gets an id, goes to a writer task, and its reply is routed back
//! by id by a reader task, so concurrent callers never wait for each other's round trips. The
//! connection is made on first use (starting the broker if it is not running and autostart is
//! on) and remade after the broker went away, or at once when it closed before answering hello
//! (nothing but hello was sent on it then); a request in flight when the connection broke
//! fails with [`TransportError::Closed`] and may or may not have taken effect, as the
//! [`keyshare::Store`] contract allows: it is never sent again.
//!
//! [`BlockingBrokerClient`] is the same client behind the blocking [`keyshare::Store`] trait.
//! [`OneShotClient`] is a plain blocking client without a runtime, for a process that makes a
//! call or two and exits.

mod autostart;
mod blocking;
mod one_shot;

pub use autostart::Autostart;
pub use blocking::BlockingBrokerClient;
pub use one_shot::OneShotClient;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use keyshare::{
    AppId, ChangeEvent, ChangeKind, Flavour, Notification, SecretKey, SecretValue,
    UnavailableReason,
};

use crate::connection::FrameReader;
use crate::daemon::BrokerPaths;
use crate::protocol::{
    decode, encode_with_capacity, BrokerStatus, EventKind, FrameError, RemoteError, Reply, Request,
    RequestFrame, ServerFrame, WireKey, WireValue, HEADER_LEN, MAX_FRAME_LEN, MAX_VALUE_LEN,
    PROTOCOL_VERSION,
};

/// The request could not be carried to the broker and back: the broker may never have seen
/// it. Kept apart from [`RemoteError`] (the broker saw it and said no).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Nothing listens on the socket, and autostart is off or did not help.
    #[error("no broker is running at {socket}{hint}")]
    NotRunning {
        /// The socket path.
        socket: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// Connecting failed for another reason (permissions, ...).
    #[error("cannot connect to the broker at {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Starting the broker failed.
    #[error("could not start the broker: {0}")]
    Autostart(String),
    /// Another process has held the startup lock for longer than starting a broker takes (it
    /// hangs, or is stopped), so this client gave up waiting to start one.
    #[error(
        "gave up after {waited:.1?} waiting for {lock}: another process{holder} holds it while \
         it starts the broker, longer than a start takes; end that process if it is stuck, or \
         use --direct",
        lock = lock.display(),
        holder = holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    StartupLockHeld {
        /// The startup lock file.
        lock: PathBuf,
        /// The pid the holder recorded in it, when that process still exists.
        holder: Option<u32>,
        /// How long this client waited.
        waited: Duration,
    },
    /// The socket is served by another user's process: nothing was sent on it.
    #[error(
        "refused the broker socket {socket}: another user (uid {uid}) serves it, not you (uid \
         {me}), so nothing was sent to it. Whoever can create files where XDG_RUNTIME_DIR \
         points can put a socket there: set XDG_RUNTIME_DIR to a directory of your own \
         (normally /run/user/{me}), or use --direct",
        socket = socket.display()
    )]
    ForeignBroker {
        /// The socket path.
        socket: PathBuf,
        /// The user serving it.
        uid: u32,
        /// This process's user.
        me: u32,
    },
    /// The broker's directory belongs to another user, who could put a socket in it: nothing
    /// was connected to or started.
    #[error(
        "refused the broker directory {dir}: another user (uid {uid}) owns it, not you (uid \
         {me}), and could serve a socket in it, so nothing was sent and no broker started. \
         Whoever can create files where XDG_RUNTIME_DIR points can do this: set \
         XDG_RUNTIME_DIR to a directory of your own (normally /run/user/{me}), or use --direct",
        dir = dir.display()
    )]
    ForeignDirectory {
        /// The broker directory.
        dir: PathBuf,
        /// Its owner.
        uid: u32,
        /// This process's user.
        me: u32,
    },
    /// The connection closed before the reply arrived: the request may or may not have been
    /// carried out.
    #[error(
        "the connection to the broker closed before it answered; the request may or may not \
         have been carried out (read the key to know before repeating a change)"
    )]
    Closed,
    /// The connection closed before the request was sent whole, so the broker cannot have
    /// carried it out (a stopping broker shuts its connections' reading side: whatever a
    /// client sends after that fails to send). A client sends it once more, on a new
    /// connection, before reporting this.
    #[error("the connection to the broker closed before the request was sent (nothing was done)")]
    NotSent,
    /// The broker stopped before the request was sent, and sending it again failed too, for
    /// the reason inside (no broker runs and autostart is off, or the next broker could not
    /// start): nothing was done. Found by QA: only the second reason was given ("no broker is
    /// running"), which read as if the command had not tried.
    #[error(
        "the broker stopped before the request was sent, and sending it again failed: {0}; \
         nothing was done, so the command can be run again"
    )]
    StoppedBeforeSent(Box<TransportError>),
    /// No reply within the client's timeout.
    #[error(
        "the broker did not answer within {0:?}: it may be stopped or hung (`keyshare doctor` \
         names it; `keyshare stop` ends it)"
    )]
    TimedOut(Duration),
    /// A frame could not be read, written or decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The broker answered with something this client did not ask for.
    #[error("unexpected answer from the broker: {0}")]
    Unexpected(String),
}

/// Any failure of a client call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request did not make it there and back.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The broker refused or failed the request.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The value is over [`MAX_VALUE_LEN`], the most a request can carry: nothing was sent,
    /// and no broker could ever take it.
    #[error(
        "value is {actual} bytes, over the limit of {limit} bytes that a request to the broker \
         can carry"
    )]
    ValueTooLarge {
        /// [`MAX_VALUE_LEN`].
        limit: usize,
        /// The value's size.
        actual: usize,
    },
    /// A request without a value over the limit is still over the frame limit (a subscription
    /// to very many or very long keys): nothing was sent, and sending it again cannot help.
    #[error(
        "the request would be {len} bytes, over the frame limit of {MAX_FRAME_LEN} bytes: ask \
         for fewer or shorter keys"
    )]
    RequestTooLarge {
        /// The request's encoded size, in bytes.
        len: usize,
    },
}

impl ClientError {
    /// The library error an app sees through [`keyshare::Store`]: transport failures are
    /// `Unavailable` (not running, timed out), remote errors keep their kind, a value over
    /// [`MAX_VALUE_LEN`] is `TooLarge` and another request over the frame limit `Invalid`.
    pub fn into_store_error(self, store: &str) -> keyshare::Error {
        match self {
            ClientError::Remote(remote) => remote.into_store_error(store),
            // Found in an API review: it was `Unavailable` (`Backend`), "try again", for a
            // request that can never succeed. The limit is the protocol's, which a caller can
            // act on (shorten the value), not the frame's, which counts base64 and JSON.
            ClientError::ValueTooLarge { limit, actual } => {
                keyshare::Error::TooLarge { limit, actual }
            }
            // Not `TooLarge`, whose limit and size are a value's (this request has none over
            // the limit), nor `Unavailable`, which says to retry: the same request fails every
            // time, so its argument (the key list) is what is unacceptable, as the broker says
            // `invalid` of a `keys` reply over the frame limit.
            too_large @ ClientError::RequestTooLarge { .. } => {
                keyshare::Error::invalid("request", too_large.to_string())
            }
            // Not a refusal by the broker, nor an outage: this side refused an unsafe socket,
            // as it refuses a vault file others can read (found by QA: "broker ... refused
            // access" had the direction backwards).
            ClientError::Transport(
                transport @ (TransportError::ForeignBroker { .. }
                | TransportError::ForeignDirectory { .. }),
            ) => keyshare::Error::ProtectionUnavailable(transport.to_string()),
            ClientError::Transport(transport) => {
                keyshare::Error::unavailable(store, transport.reason(), transport.to_string())
            }
        }
    }
}

impl TransportError {
    /// Why the broker is unavailable, in the library's terms.
    fn reason(&self) -> UnavailableReason {
        match self {
            TransportError::TimedOut(_) | TransportError::StartupLockHeld { .. } => {
                UnavailableReason::TimedOut
            }
            TransportError::NotRunning { .. }
            | TransportError::Connect { .. }
            | TransportError::Autostart(_)
            | TransportError::Closed
            | TransportError::NotSent => UnavailableReason::NotRunning,
            TransportError::StoppedBeforeSent(then) => then.reason(),
            _ => UnavailableReason::Backend,
        }
    }
}

/// How a client finds and talks to its broker.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The broker's socket and lock paths.
    pub paths: BrokerPaths,
    /// The app this client speaks for, declared in hello.
    pub app: AppId,
    /// The client program's name and version, declared in hello (for the broker's logs).
    pub client_name: String,
    /// See `client_name`.
    pub client_version: String,
    /// The longest a request may wait for its reply.
    pub timeout: Duration,
    /// How to start the broker when none answers; `None` disables autostart.
    pub autostart: Option<Autostart>,
    /// The shared store the client means (see hello's `expect_store`); `None` takes whichever
    /// the broker serves.
    pub expect_store: Option<String>,
    /// Refuse a broker whose store the OS keyring does not protect (hello's
    /// `require_os_keyring`).
    pub require_os_keyring: bool,
}

impl ClientConfig {
    /// A configuration for `app` over the broker of `flavour` under `$XDG_RUNTIME_DIR`, with
    /// autostart through `keyshare serve`.
    pub fn new(flavour: &Flavour, app: AppId) -> keyshare::Result<Self> {
        Ok(Self::with_paths(BrokerPaths::from_env(flavour)?, app)
            .autostart(Some(Autostart::keyshare_serve(flavour))))
    }

    /// A configuration for explicit paths, without autostart.
    pub fn with_paths(paths: BrokerPaths, app: AppId) -> Self {
        ClientConfig {
            paths,
            app,
            client_name: "keyshare-broker-client".to_owned(),
            client_version: env!("CARGO_PKG_VERSION").to_owned(),
            timeout: keyshare::store::DEFAULT_TIMEOUT,
            autostart: None,
            expect_store: None,
            require_os_keyring: false,
        }
    }

    /// Names the shared store this client means: a broker serving another refuses hello.
    pub fn expect_store(mut self, identity: Option<String>) -> Self {
        self.expect_store = identity;
        self
    }

    /// Requires the OS keyring's protection of the broker's store.
    pub fn require_os_keyring(mut self, required: bool) -> Self {
        self.require_os_keyring = required;
        self
    }

    /// Sets (or clears) autostart.
    pub fn autostart(mut self, autostart: Option<Autostart>) -> Self {
        self.autostart = autostart;
        self
    }

    /// Sets the per-request timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Nothing listens on the socket and autostart is off.
    pub(crate) fn not_running(&self) -> TransportError {
        TransportError::NotRunning {
            socket: self.paths.socket.clone(),
            hint: " (autostart is off: run `keyshare serve`, or use --direct)",
        }
    }

    /// Connecting to the socket failed for another reason than nothing listening.
    pub(crate) fn connect_failed(&self, source: std::io::Error) -> TransportError {
        TransportError::Connect {
            socket: self.paths.socket.clone(),
            source,
        }
    }

    /// Refuses a connected socket that another user's process serves, before anything (hello,
    /// the app id, a value) is written to it. The broker checks its clients the same way; this
    /// is the other direction: a socket someone else put at the path (an `XDG_RUNTIME_DIR`
    /// others can write, such as `/tmp`) would otherwise receive this user's secrets, and
    /// could answer reads with values of its choosing (found by QA).
    /// Refuses a broker directory another user owns before connecting or starting a broker:
    /// with no broker listening, a command would otherwise open the store itself without a
    /// word (the broker refuses the directory), and whoever owns it can put a socket there
    /// (found by QA).
    pub(crate) fn check_dir(&self) -> Result<(), TransportError> {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        match std::fs::symlink_metadata(&self.paths.dir) {
            Ok(meta) if meta.uid() != me => Err(TransportError::ForeignDirectory {
                dir: self.paths.dir.clone(),
                uid: meta.uid(),
                me,
            }),
            // Ours, or none yet (a broker makes it, 0700), or unreadable (connecting says why).
            _ => Ok(()),
        }
    }

    pub(crate) fn check_peer(&self, stream: impl std::os::fd::AsFd) -> Result<(), TransportError> {
        let me = rustix::process::geteuid().as_raw();
        let uid = peer_uid(stream, &self.paths.socket).map_err(|e| self.connect_failed(e))?;
        if uid != me {
            return Err(TransportError::ForeignBroker {
                socket: self.paths.socket.clone(),
                uid,
                me,
            });
        }
        Ok(())
    }

    /// Sets the client name and version declared in hello.
    pub fn client(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.client_name = name.into();
        self.client_version = version.into();
        self
    }
}

/// What the broker said in hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerInfo {
    /// The broker program's name.
    pub server: String,
    /// Its version.
    pub server_version: String,
    /// The protocol version in use.
    pub protocol: u32,
    /// The shared store the broker serves, named as a direct open would name it (`None` when
    /// the broker does not say).
    pub store: Option<String>,
    /// Whether the broker's store records change times, so that a conditional write
    /// ([`BrokerClient::write_unless_changed_after`]) can refuse.
    pub keeps_change_times: bool,
}

type ReplySender = oneshot::Sender<Result<Reply, ClientError>>;

#[derive(Default)]
struct Pending {
    /// Per request: where its reply goes, and for a subscribe, the sink its events go to once
    /// the broker accepted it (installed by the reader before it reads the next frame, so no
    /// event of the new subscription can miss it and a refused one leaves the old in place).
    waiting: HashMap<u64, (ReplySender, Option<EventSink>)>,
    closed: bool,
}

/// Where pushed events go: the current subscription's channel, and how many events it missed
/// because its reader was slow.
struct EventSink {
    tx: mpsc::Sender<Notification>,
    missed: u64,
}

struct Connection {
    /// Callers write their own frames (no hop through a writer task: that is a cross-thread
    /// wake-up per request), one whole frame at a time under this lock.
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
    info: ServerInfo,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map or option update: poison cannot leave it torn.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    fn is_closed(&self) -> bool {
        lock(&self.pending).closed
    }

    async fn open(
        config: &ClientConfig,
        autostart_output: &Mutex<Option<String>>,
    ) -> Result<Connection, ClientError> {
        config.check_dir()?;
        let stream = match UnixStream::connect(&config.paths.socket).await {
            Ok(stream) => stream,
            Err(err) if is_absent(&err) => match &config.autostart {
                Some(autostart) => {
                    keep_autostart_output(autostart_output, autostart.start(&config.paths).await?);
                    UnixStream::connect(&config.paths.socket)
                        .await
                        .map_err(|source| config.connect_failed(source))?
                }
                None => return Err(config.not_running().into()),
            },
            Err(source) => return Err(config.connect_failed(source).into()),
        };
        config.check_peer(&stream)?;
        let (read_half, mut write_half) = stream.into_split();
        let mut reader = FrameReader::new(read_half);
        let hello = encode_request(&hello_request(config))?;
        let handshake = async {
            write_half
                .write_all(&hello)
                .await
                .map_err(|e| ended_or(TransportError::Frame(e.into())))?;
            let body = reader
                .read_frame()
                .await
                .map_err(|e| ended_or(e.into()))?
                .ok_or(TransportError::Closed)?;
            read_hello(decode::<ServerFrame>(body).map_err(TransportError::from)?)
        };
        let info = tokio::time::timeout(config.timeout, handshake)
            .await
            .map_err(|_| TransportError::TimedOut(config.timeout))??;

        let pending = Arc::new(Mutex::new(Pending::default()));
        let events: Arc<Mutex<Option<EventSink>>> = Arc::default();
        let reader = tokio::spawn(read_loop(reader, Arc::clone(&pending), events));
        Ok(Connection {
            writer: tokio::sync::Mutex::new(write_half),
            pending,
            next_id: AtomicU64::new(1),
            info,
            reader,
        })
    }

    async fn call(&self, request: Request, timeout: Duration) -> Result<Reply, ClientError> {
        self.call_with_sink(request, timeout, None).await
    }

    async fn call_with_sink(
        &self,
        request: Request,
        timeout: Duration,
        sink: Option<EventSink>,
    ) -> Result<Reply, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = encode_request(&RequestFrame { id, request })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.pending);
            if pending.closed {
                return Err(TransportError::NotSent.into());
            }
            pending.waiting.insert(id, (tx, sink));
        }
        let exchange = async {
            if let Err(err) = self.write_frame(&frame).await {
                lock(&self.pending).waiting.remove(&id);
                return Err(err.into());
            }
            rx.await.map_err(|_| TransportError::Closed)?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => {
                lock(&self.pending).waiting.remove(&id);
                Err(TransportError::TimedOut(timeout).into())
            }
        }
    }

    /// Writes one frame. If this future is dropped half-way (a timeout, a cancelled caller),
    /// the stream holds a partial frame: the connection is then marked closed, so no later
    /// request follows the fragment and the next call reconnects.
    async fn write_frame(&self, frame: &[u8]) -> Result<(), TransportError> {
        struct Unfinished<'a>(Option<&'a Mutex<Pending>>);
        impl Drop for Unfinished<'_> {
            fn drop(&mut self) {
                if let Some(pending) = self.0 {
                    fail_all(pending, || TransportError::Closed);
                }
            }
        }
        let mut writer = self.writer.lock().await;
        if lock(&self.pending).closed {
            return Err(TransportError::NotSent);
        }
        let mut unfinished = Unfinished(Some(&self.pending));
        let written = writer.write_all(frame).await;
        unfinished.0 = None;
        if written.is_err() {
            // Not whole: the broker reads only whole frames. No request goes out on this
            // connection any more, but those already written whole stay waiting: a stopping
            // broker still answers them (it shut only its reading side), and the reader fails
            // whatever is left once the connection ends (found in review: they were failed at
            // once, their answers discarded).
            lock(&self.pending).closed = true;
            return Err(TransportError::NotSent);
        }
        Ok(())
    }
}

/// The user of the process serving a connected Unix socket, as the kernel recorded it when the
/// listener was made.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_uid(stream: impl std::os::fd::AsFd, _socket: &std::path::Path) -> std::io::Result<u32> {
    Ok(rustix::net::sockopt::socket_peercred(stream)?.uid.as_raw())
}

/// Without `SO_PEERCRED`: the owner of the socket file, which its creator owns. Weaker (the
/// file could be replaced between the connect and this look, where others can write the
/// directory), and unverified here (Linux only).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_uid(_stream: impl std::os::fd::AsFd, socket: &std::path::Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::symlink_metadata(socket)?.uid())
}

/// [`TransportError::Closed`] when `err` says that the broker closed the connection or was
/// gone (a reset, a broken pipe, the end of the stream in a frame), else `err` as it is.
fn ended_or(err: TransportError) -> TransportError {
    use std::io::ErrorKind;
    match &err {
        TransportError::Frame(FrameError::Io(io))
            if matches!(
                io.kind(),
                ErrorKind::BrokenPipe
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::UnexpectedEof
            ) =>
        {
            TransportError::Closed
        }
        TransportError::Frame(FrameError::Truncated { .. }) => TransportError::Closed,
        _ => err,
    }
}

/// Refuses a request that no broker could ever take because its value is over
/// [`MAX_VALUE_LEN`], before connecting or sending anything.
fn check_value_len(request: &Request) -> Result<(), ClientError> {
    match request {
        Request::Set { value, .. } if value.0.len() > MAX_VALUE_LEN => {
            Err(ClientError::ValueTooLarge {
                limit: MAX_VALUE_LEN,
                actual: value.0.len(),
            })
        }
        _ => Ok(()),
    }
}

/// Encodes a request, refusing one over the frame limit with the error a caller can act on
/// ([`ClientError::ValueTooLarge`], [`ClientError::RequestTooLarge`]). A `set` is encoded into a
/// buffer large enough from the start, so that no copy of its value is left behind, not
/// zeroized, by the buffer growing.
fn encode_request(frame: &RequestFrame) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
    check_value_len(&frame.request)?;
    let capacity = match &frame.request {
        Request::Set { key, value, .. } => {
            HEADER_LEN + 128 + 6 * key.0.as_str().len() + value.0.len().div_ceil(3) * 4
        }
        _ => 256,
    };
    encode_with_capacity(frame, capacity).map_err(|err| match err {
        FrameError::TooLarge { len } => ClientError::RequestTooLarge { len },
        other => TransportError::from(other).into(),
    })
}

/// Keeps what a broker this client started printed before it was ready, for the caller.
fn keep_autostart_output(slot: &Mutex<Option<String>>, output: String) {
    if !output.is_empty() {
        *lock(slot) = Some(output);
    }
}

/// The hello that opens every connection.
fn hello_request(config: &ClientConfig) -> RequestFrame {
    RequestFrame {
        id: 0,
        request: Request::Hello {
            client: config.client_name.clone(),
            client_version: config.client_version.clone(),
            protocol: PROTOCOL_VERSION,
            app: config.app.to_string(),
            expect_store: config.expect_store.clone(),
            require_os_keyring: config.require_os_keyring,
        },
    }
}

/// The broker's answer to hello: who it is, or why it refused.
fn read_hello(frame: ServerFrame) -> Result<ServerInfo, ClientError> {
    match frame {
        ServerFrame::Reply {
            id: 0,
            reply:
                Reply::Hello {
                    server,
                    server_version,
                    protocol,
                    store,
                    keeps_change_times,
                },
        } if protocol == PROTOCOL_VERSION => Ok(ServerInfo {
            server,
            server_version,
            protocol,
            store,
            keeps_change_times,
        }),
        ServerFrame::Error { error, .. } => Err(ClientError::Remote(error)),
        other => Err(TransportError::Unexpected(format!(
            "expected the hello reply, got {}",
            describe(&other)
        ))
        .into()),
    }
}

/// The `set` (`value`) or `delete` of a repair, written unless the key changed after `after`.
/// A time the protocol carries as nanoseconds since the Unix epoch.
pub(crate) fn from_nanos(nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
}

fn conditional_write(key: &SecretKey, value: Option<&SecretValue>, after: SystemTime) -> Request {
    let after = after
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let key = WireKey(key.clone());
    match value {
        Some(value) => Request::Set {
            key,
            value: WireValue(value.clone()),
            unless_changed_after: Some(after),
        },
        None => Request::Delete {
            key,
            unless_changed_after: Some(after),
        },
    }
}

/// Whether a [`conditional_write`] wrote. A broker that does not know the condition writes and
/// says nothing of it: that counts as written, which it was.
fn written(reply: Reply, setting: bool) -> Result<bool, ClientError> {
    match reply {
        Reply::Set { written } if setting => Ok(written.unwrap_or(true)),
        Reply::Delete { written, .. } if !setting => Ok(written.unwrap_or(true)),
        other => Err(unexpected(if setting { "Set" } else { "Delete" }, &other)),
    }
}

/// The payload of `$reply` when it answers the operation `$variant`, else an "unexpected
/// answer" error: what every client method does with its reply.
macro_rules! expect_reply {
    ($reply:expr, $variant:ident $fields:tt => $out:expr) => {
        match $reply {
            $crate::protocol::Reply::$variant $fields => Ok($out),
            other => Err($crate::client::unexpected(stringify!($variant), &other)),
        }
    };
}
use expect_reply;

/// How many keys a client asks for per `keys` reply: a broker also stops a page before the
/// frame limit, so any number fits.
const KEYS_PER_PAGE: u32 = 10_000;

/// The keys listed so far, page by page (found by QA: a store whose key names did not fit one
/// frame could not be listed through the broker at all).
#[derive(Default)]
pub(crate) struct KeyPages {
    pub(crate) keys: Vec<SecretKey>,
}

impl KeyPages {
    /// The request for the next page.
    pub(crate) fn request(&self) -> Request {
        Request::Keys {
            after: self.keys.last().map(|key| key.as_str().to_owned()),
            limit: Some(KEYS_PER_PAGE),
        }
    }

    /// Adds a page; `true` once it was the last.
    pub(crate) fn take(&mut self, reply: Reply) -> Result<bool, ClientError> {
        let (keys, more) = expect_reply!(reply, Keys { keys, more } => (keys, more))?;
        if more && keys.is_empty() {
            return Err(TransportError::Unexpected(
                "a page of keys with none in it, and more to come".to_owned(),
            )
            .into());
        }
        self.keys.extend(keys.into_iter().map(|key| key.0));
        Ok(!more)
    }
}

/// Whether carrying out `request` twice has the effect of carrying it out once, so that it
/// may be sent again when it is not known whether the broker got it. Writes may not: another
/// app may have written or deleted the key in between, and the repeat would undo that (a
/// signed-out token brought back). A subscription is not repeated either: its events go to the
/// connection it was made on.
fn is_idempotent(request: &Request) -> bool {
    match request {
        Request::Hello { .. }
        | Request::Get { .. }
        | Request::DeletedAt { .. }
        | Request::Keys { .. }
        | Request::Status => true,
        Request::Set { .. } | Request::Delete { .. } | Request::Subscribe { .. } => false,
    }
}

fn is_absent(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

fn describe(frame: &ServerFrame) -> String {
    match frame {
        ServerFrame::Reply { id, reply } => format!("a reply to request {id} ({reply:?})"),
        ServerFrame::Error { id, error } => format!("an error for request {id:?} ({error})"),
        ServerFrame::Event { seq, .. } => format!("event {seq}"),
        ServerFrame::Resync { .. } => "a resync notice".to_owned(),
    }
}

async fn read_loop(
    mut reader: FrameReader<OwnedReadHalf>,
    pending: Arc<Mutex<Pending>>,
    events: Arc<Mutex<Option<EventSink>>>,
) {
    let why = loop {
        let body = match reader.read_frame().await {
            Ok(Some(body)) => body,
            Ok(None) => break None,
            Err(err) => {
                tracing::debug!(error = %err, "broker connection failed");
                break None;
            }
        };
        let frame = match decode::<ServerFrame>(body) {
            Ok(frame) => frame,
            Err(err) => {
                tracing::warn!(error = %err, "undecodable frame from the broker; closing");
                break None;
            }
        };
        match frame {
            ServerFrame::Reply { id, reply } => resolve(&pending, &events, id, Ok(reply)),
            ServerFrame::Error {
                id: Some(id),
                error,
            } => resolve(&pending, &events, id, Err(ClientError::Remote(error))),
            // Not tied to a request: the broker is closing this connection for a reason every
            // waiting request should report.
            ServerFrame::Error { id: None, error } => break Some(error),
            ServerFrame::Event { seq, key, kind } => deliver(
                &events,
                Notification::Changed(ChangeEvent {
                    seq,
                    key: key.0,
                    kind: match kind {
                        EventKind::Set => ChangeKind::Set,
                        EventKind::Delete => ChangeKind::Delete,
                    },
                }),
            ),
            ServerFrame::Resync { missed } => deliver(&events, Notification::Resync { missed }),
        }
    };
    match why {
        Some(error) => fail_all_remote(&pending, error),
        None => fail_all(&pending, || TransportError::Closed),
    }
    // Ends the subscription stream.
    lock(&events).take();
}

fn resolve(
    pending: &Mutex<Pending>,
    events: &Mutex<Option<EventSink>>,
    id: u64,
    result: Result<Reply, ClientError>,
) {
    let Some((tx, sink)) = lock(pending).waiting.remove(&id) else {
        return;
    };
    if let (Some(sink), Ok(Reply::Subscribe { .. })) = (sink, &result) {
        *lock(events) = Some(sink);
    }
    // The caller may have timed out and gone: nothing to do then.
    let _ = tx.send(result);
}

fn deliver(events: &Mutex<Option<EventSink>>, notification: Notification) {
    let mut guard = lock(events);
    let Some(sink) = guard.as_mut() else { return };
    if sink.missed > 0 {
        match sink.tx.try_send(Notification::Resync {
            missed: sink.missed,
        }) {
            Ok(()) => sink.missed = 0,
            Err(mpsc::error::TrySendError::Full(_)) => {
                sink.missed += 1;
                return;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                guard.take();
                return;
            }
        }
    }
    match sink.tx.try_send(notification) {
        Ok(()) => {}
        // A slow reader never blocks replies to other requests: count what it misses and tell
        // it to resync.
        Err(mpsc::error::TrySendError::Full(_)) => sink.missed += 1,
        Err(mpsc::error::TrySendError::Closed(_)) => {
            guard.take();
        }
    }
}

fn fail_all(pending: &Mutex<Pending>, error: impl Fn() -> TransportError) {
    let waiting = {
        let mut pending = lock(pending);
        pending.closed = true;
        std::mem::take(&mut pending.waiting)
    };
    for (_, (tx, _)) in waiting {
        let _ = tx.send(Err(error().into()));
    }
}

fn fail_all_remote(pending: &Mutex<Pending>, error: RemoteError) {
    let waiting = {
        let mut pending = lock(pending);
        pending.closed = true;
        std::mem::take(&mut pending.waiting)
    };
    for (_, (tx, _)) in waiting {
        let _ = tx.send(Err(error.clone().into()));
    }
}

/// How many notifications a subscription buffers before it starts counting misses.
const EVENT_BUFFER: usize = 1024;

/// Change notifications from the broker, over a connection of the stream's own. Ends (`None`)
/// only when that connection closed (the broker stopped or restarted, or closed it); the
/// subscriber should then resubscribe and re-read what it caches. Other subscriptions of the
/// same client do not end it. Dropping it closes its connection.
pub struct EventStream {
    rx: mpsc::Receiver<Notification>,
    last_seq: u64,
    /// The subscription's connection, closed when the stream is dropped.
    _connection: Connection,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}

impl EventStream {
    /// The broker's sequence number when the subscription started; events follow it.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The next notification.
    pub async fn next(&mut self) -> Option<Notification> {
        self.rx.recv().await
    }

    /// The next notification, blocking the thread. Not for async code: it panics there (use
    /// [`next`](Self::next)).
    pub fn blocking_next(&mut self) -> Option<Notification> {
        self.rx.blocking_recv()
    }
}

/// The async broker client. Cheap to share behind an `Arc`; every method may be called
/// concurrently, and concurrent calls are pipelined over one connection.
pub struct BrokerClient {
    config: ClientConfig,
    store_name: String,
    current: Mutex<Option<Arc<Connection>>>,
    connecting: tokio::sync::Mutex<()>,
    autostart_output: Mutex<Option<String>>,
    /// What the broker said in the latest hello reply, on any of this client's connections.
    last_info: Mutex<Option<ServerInfo>>,
}

impl std::fmt::Debug for BrokerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerClient")
            .field("socket", &self.config.paths.socket)
            .field("app", &self.config.app)
            .finish_non_exhaustive()
    }
}

impl BrokerClient {
    /// A client that connects on first use.
    pub fn new(config: ClientConfig) -> Self {
        BrokerClient {
            store_name: format!("broker at {}", config.paths.socket.display()),
            config,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            autostart_output: Mutex::new(None),
            last_info: Mutex::new(None),
        }
    }

    /// A client that has connected (and said hello) already, so configuration problems show
    /// at once.
    pub async fn connect(config: ClientConfig) -> Result<Self, ClientError> {
        let client = Self::new(config);
        client.connection().await?;
        Ok(client)
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The name used for this broker in errors (`broker at <socket>`).
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    async fn connection(&self) -> Result<Arc<Connection>, ClientError> {
        if let Some(conn) = lock(&self.current).as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        // One caller connects; the others wait for its connection instead of opening theirs.
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = lock(&self.current).as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(conn));
        }
        let conn = Arc::new(self.open().await?);
        *lock(&self.current) = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// A new connection, hello answered.
    async fn open(&self) -> Result<Connection, ClientError> {
        let opened = match Connection::open(&self.config, &self.autostart_output).await {
            // Hello goes first and alone, so nothing else was sent: it is as if no broker had
            // answered (most likely an idle broker exited as this client connected). Once more,
            // starting a broker if configured to.
            Err(ClientError::Transport(TransportError::Closed)) => {
                tracing::debug!(
                    "the broker closed the connection before answering hello; connecting again"
                );
                Connection::open(&self.config, &self.autostart_output).await
            }
            opened => opened,
        }?;
        *lock(&self.last_info) = Some(opened.info.clone());
        Ok(opened)
    }

    /// Sends `request` and waits for its reply, sending it once more on a new connection
    /// (starting a broker if configured to) if the first one closed before it was sent: a
    /// stopping broker, most likely, which did not carry it out.
    async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        check_value_len(&request)?;
        let conn = self.connection().await?;
        match conn.call(request.clone(), self.config.timeout).await {
            Err(ClientError::Transport(TransportError::NotSent)) => {
                tracing::debug!("the broker closed the connection before the request was sent; sending it on a new one");
                let conn = self.connection().await.map_err(|err| match err {
                    ClientError::Transport(then) => {
                        TransportError::StoppedBeforeSent(Box::new(then)).into()
                    }
                    other => other,
                })?;
                conn.call(request, self.config.timeout).await
            }
            answered => answered,
        }
    }

    /// What a broker this client started wrote to stderr before it was ready (a notice such as
    /// "created a key file"), once; a program with a terminal should show it.
    pub fn take_autostart_output(&self) -> Option<String> {
        lock(&self.autostart_output).take()
    }

    /// What the broker said in hello (connecting if needed).
    pub async fn server_info(&self) -> Result<ServerInfo, ClientError> {
        Ok(self.connection().await?.info.clone())
    }

    /// What the broker said in hello on this client's latest connection (which may have
    /// closed since), without connecting or waiting; `None` before the first connection.
    pub fn last_server_info(&self) -> Option<ServerInfo> {
        lock(&self.last_info).clone()
    }

    /// Reads a value; `Ok(None)` when there is none.
    pub async fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>, ClientError> {
        let reply = self
            .call(Request::Get {
                key: WireKey(key.clone()),
            })
            .await?;
        expect_reply!(reply, Get { value } => value.map(|v| v.0))
    }

    /// Writes a value; `Ok` once the broker's store acknowledged it. A value over
    /// [`MAX_VALUE_LEN`] is refused with [`ClientError::ValueTooLarge`] without sending it.
    pub async fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<(), ClientError> {
        let reply = self
            .call(Request::Set {
                key: WireKey(key.clone()),
                value: WireValue(value.clone()),
                unless_changed_after: None,
            })
            .await?;
        expect_reply!(reply, Set { .. } => ())
    }

    /// Deletes a value; whether there was one.
    pub async fn delete(&self, key: &SecretKey) -> Result<bool, ClientError> {
        let reply = self
            .call(Request::Delete {
                key: WireKey(key.clone()),
                unless_changed_after: None,
            })
            .await?;
        expect_reply!(reply, Delete { deleted, .. } => deleted)
    }

    /// A repair's write: sets `value` (`None`: deletes) unless the key changed in the broker's
    /// store after `after` (see [`keyshare::Store::write_unless_changed_after`]); whether it wrote. A
    /// broker that does not know the condition writes, and says nothing of it: that counts as
    /// written, which it was.
    pub async fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool, ClientError> {
        let reply = self.call(conditional_write(key, value, after)).await?;
        written(reply, value.is_some())
    }

    /// When the broker's store recorded `key`'s last delete, if it has no value now (see
    /// [`keyshare::Store::deleted_at`]). A broker older than this request answers with an
    /// error, never with "not deleted".
    pub async fn deleted_at(&self, key: &SecretKey) -> Result<Option<SystemTime>, ClientError> {
        let reply = self
            .call(Request::DeletedAt {
                key: WireKey(key.clone()),
            })
            .await?;
        expect_reply!(reply, DeletedAt { deleted_at } => deleted_at.map(from_nanos))
    }

    /// Lists the keys this app may see, a page at a time (a broker of an earlier version
    /// answers with all of them at once).
    pub async fn keys(&self) -> Result<Vec<SecretKey>, ClientError> {
        let mut pages = KeyPages::default();
        loop {
            let reply = self.call(pages.request()).await?;
            if pages.take(reply)? {
                return Ok(pages.keys);
            }
        }
    }

    /// The broker's state.
    pub async fn status(&self) -> Result<BrokerStatus, ClientError> {
        let reply = self.call(Request::Status).await?;
        expect_reply!(reply, Status(status) => status)
    }

    /// Subscribes to changes of `keys` (all keys this app may see when `None`).
    ///
    /// Each subscription has a connection of its own (the protocol allows one per
    /// connection), made now, so a client may hold several at once, each getting the events of
    /// its own keys; a later one never ends an earlier one (it used to, as if the connection
    /// had closed: found in an API review). The stream ends only when its connection closed;
    /// dropping it closes the connection.
    pub async fn subscribe(
        &self,
        keys: Option<Vec<SecretKey>>,
    ) -> Result<EventStream, ClientError> {
        let conn = self.open().await?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let request = Request::Subscribe {
            keys: keys.map(|keys| keys.into_iter().map(WireKey).collect()),
        };
        let sink = EventSink { tx, missed: 0 };
        let reply = conn
            .call_with_sink(request, self.config.timeout, Some(sink))
            .await?;
        expect_reply!(reply, Subscribe { last_seq } => EventStream {
            rx,
            last_seq,
            _connection: conn,
        })
    }
}

fn unexpected(op: &str, reply: &Reply) -> ClientError {
    TransportError::Unexpected(format!("asked {}, got {reply:?}", op.to_lowercase())).into()
}
