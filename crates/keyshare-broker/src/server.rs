//! The broker server: [`run`] serves a [`SecretStorage`] over a Unix listener until a shutdown
//! future completes.
//!
//! Per connection: the peer's UID is checked on accept, the first request must be a `hello`
//! with this protocol version (and pass the [`AccessPolicy`]), then requests are read in order
//! and each takes its key's turn in the storage *as it is read*, so requests on one key run in
//! the order they arrived (across all connections: the storage orders them), while requests
//! on different keys run in parallel and may be answered out of order. A malformed frame ends
//! that connection only, and so does a frame left unfinished for
//! [`ServerOptions::frame_timeout`]; silence between frames is never timed.
//!
//! What a client that does not read its replies costs is bounded: its connection stops reading
//! requests once it has [`ServerOptions::max_in_flight_per_connection`] requests in progress or
//! holds [`ServerOptions::max_reply_bytes_per_connection`] in `get` and `keys` replies (the
//! ones that carry stored data), and such replies across all connections hold at most
//! [`ServerOptions::max_reply_bytes`] beyond one per connection, so that those clients never
//! stop the others' requests.
//!
//! The policy can be replaced while the server runs ([`PolicyHandle`]): every request read
//! after that is decided by the new one, on connections already open too. A connection whose
//! app the new policy no longer admits at all (now pinned to other executables, or unlisted
//! and refused) is told why and closed, idle or not; one whose keys were narrowed stays open
//! and is refused the keys it lost, in listings and change events too.
//!
//! Shutdown: stop accepting and reading, let the requests already read finish and their
//! replies reach the socket, then return. A `set` is answered only after the store returned, so
//! every acknowledged write is as durable as the store makes it. A client that does not read
//! its replies cannot hold shutdown up: after [`ServerOptions::shutdown_grace`] the replies
//! still waiting for it are dropped (the requests themselves still finish).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use zeroize::{Zeroize, Zeroizing};

use keyshare::{
    AppId, AsyncSecretStorage, ChangeKind, Notification, SecretKey, SecretStorage, SecretValue,
};

use crate::access::{process_executable, AccessPolicy, Grant, Refusal};
use crate::connection::FrameReader;
use crate::external::ExternalChanges;
use crate::protocol::{
    decode, encode, encode_with_capacity, hello_version, BrokerStatus, ErrorCode, EventKind,
    FrameError, HelloVersion, RemoteError, Reply, Request, RequestFrame, RequestOf, ServerFrame,
    UncheckedRequestFrame, WireKey, WireValue, HEADER_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION,
};

/// The server's name in `hello` replies.
pub const SERVER_NAME: &str = "keyshare-broker";

/// Tunables, with defaults suited to one user's apps.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Requests of one connection in progress at once, counting those whose reply waits for
    /// the client to read it; further requests wait unread, which pushes back on a client that
    /// pipelines without bound (or stops reading) without taking places from other clients.
    pub max_in_flight_per_connection: usize,
    /// Requests running across all connections (a request whose reply is ready no longer
    /// counts, so clients that do not read cannot use these up). Keep it below the runtime's limit of
    /// blocking threads (tokio's default is 512): a request waiting for its key's turn holds a
    /// blocking thread, and the request whose turn it is must always find one, or all of them
    /// wait forever.
    pub max_in_flight: usize,
    /// Bytes of `get` and `keys` replies (the replies that carry stored data, up to the frame
    /// limit each) one connection may hold at once: from when such a request starts until its
    /// reply is written to the socket, it holds the largest reply's worth, and from when the
    /// reply is encoded, its size. Once they are used up, that connection's further requests
    /// wait unread, so a client that does not read its replies slows only itself. At least
    /// one largest reply (1 MiB and its header); a smaller value counts as that.
    pub max_reply_bytes_per_connection: usize,
    /// Bytes of `get` and `keys` replies all connections together may hold, beyond the one
    /// largest reply each connection may always hold: those, taken from nowhere else, keep
    /// connections whose clients do not read from stopping everyone else's reads. So the
    /// broker holds at most this plus 1 MiB per open connection of such replies.
    pub max_reply_bytes: usize,
    /// How long a new connection may take to say hello.
    pub handshake_timeout: Duration,
    /// How long a frame may take to arrive in full once its first byte has. A client stalled
    /// inside a frame holds a buffer and a connection, so its connection is closed then (and
    /// logged). Silence between frames is never timed: subscribers wait for hours.
    pub frame_timeout: Duration,
    /// How often pending repairs of the shared store are retried.
    pub repair_interval: Duration,
    /// Stop on its own after this long without any connection (an autostarted broker does,
    /// so that it does not outlive its users indefinitely); `None` serves until told to stop.
    pub idle_exit: Option<Duration>,
    /// How long shutdown waits for clients to read the replies to requests they already sent;
    /// after it, undelivered replies are dropped so a client that never reads cannot keep the
    /// broker running. The requests themselves are still finished, however long they take.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_connections: 4096,
            max_in_flight_per_connection: 64,
            max_in_flight: 256,
            max_reply_bytes_per_connection: 4 * 1024 * 1024,
            max_reply_bytes: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(30),
            repair_interval: Duration::from_secs(30),
            idle_exit: None,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The access policy a server decides by, replaceable while it runs: from
/// [`BrokerState::policy_handle`]. Clones share the policy.
#[derive(Clone, Debug)]
pub struct PolicyHandle(Arc<watch::Sender<Arc<AccessPolicy>>>);

impl PolicyHandle {
    fn new(policy: AccessPolicy) -> Self {
        PolicyHandle(Arc::new(watch::Sender::new(Arc::new(policy))))
    }

    /// Puts `policy` in force: every request the server reads from now on is decided by it,
    /// on the connections already open too (see the [module docs](self)). Returns whether it
    /// differs from the policy it replaced.
    pub fn replace(&self, policy: AccessPolicy) -> bool {
        self.0.send_if_modified(|current| {
            if **current == policy {
                return false;
            }
            *current = Arc::new(policy);
            true
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<AccessPolicy> {
        Arc::clone(&self.0.borrow())
    }

    fn subscribe(&self) -> watch::Receiver<Arc<AccessPolicy>> {
        self.0.subscribe()
    }
}

/// What the server serves: the storage (shared store, and the broker's own legacy store if it
/// has one), the access policy and the options.
#[derive(Debug)]
pub struct BrokerState {
    storage: SecretStorage,
    policy: PolicyHandle,
    options: ServerOptions,
    external: Option<ExternalChanges>,
    store_identity: Option<String>,
    store_aliases: Vec<String>,
    os_keyring: Option<bool>,
}

impl BrokerState {
    /// Serves `storage` with the default (open) policy and default options.
    pub fn new(storage: SecretStorage) -> Self {
        BrokerState {
            storage,
            policy: PolicyHandle::new(AccessPolicy::default()),
            options: ServerOptions::default(),
            external: None,
            store_identity: None,
            store_aliases: Vec::new(),
            os_keyring: None,
        }
    }

    /// Names the shared store in every hello reply (see [`Reply::Hello`]'s `store`).
    pub fn with_store_identity(mut self, identity: Option<String>) -> Self {
        self.store_identity = identity;
        self
    }

    /// Other names of the same store that a hello's `expect_store` may give, and is then
    /// served: names that earlier versions gave it (a vault's path as spelled, before paths
    /// were resolved), so that their clients are not refused by this broker. Hello replies
    /// still give the identity.
    pub fn with_store_aliases(mut self, aliases: Vec<String>) -> Self {
        self.store_aliases = aliases;
        self
    }

    /// Says whether the OS keyring protects the shared store's secrets (`None`: does not
    /// apply). With `Some(false)`, a hello that requires it is refused.
    pub fn with_os_keyring_protection(mut self, protected: Option<bool>) -> Self {
        self.os_keyring = protected;
        self
    }

    /// Polls `changes` while serving and announces what it finds to subscribers, for writes
    /// to the shared store that did not go through this broker (another machine's).
    pub fn with_external_changes(mut self, changes: ExternalChanges) -> Self {
        self.external = Some(changes);
        self
    }

    /// Sets the access policy.
    pub fn with_policy(self, policy: AccessPolicy) -> Self {
        self.policy.replace(policy);
        self
    }

    /// A handle that replaces the access policy while the server runs.
    pub fn policy_handle(&self) -> PolicyHandle {
        self.policy.clone()
    }

    /// Sets the options.
    pub fn with_options(mut self, options: ServerOptions) -> Self {
        self.options = options;
        self
    }
}

struct Shared {
    storage: AsyncSecretStorage,
    policy: PolicyHandle,
    store_identity: Option<String>,
    store_aliases: Vec<String>,
    os_keyring: Option<bool>,
    options: ServerOptions,
    uid: u32,
    /// Open connections; a watch so the idle timer can wait for it to reach zero.
    connections: watch::Sender<u64>,
    /// [`ServerOptions::max_in_flight`].
    in_flight: Arc<Semaphore>,
    /// [`ServerOptions::max_reply_bytes`].
    reply_bytes: Arc<Semaphore>,
    /// Set once the shutdown grace period is over: every connection's writer then stops,
    /// dropping the replies its client did not read.
    abandon: watch::Sender<bool>,
}

/// A request's places: one among its connection's requests in progress, held until its reply
/// is queued, and one among all connections' requests, held only while it runs. So a client
/// that does not read its replies uses up its own connection's places, never everyone's.
struct Permits {
    own: OwnedSemaphorePermit,
    everyone: OwnedSemaphorePermit,
    /// For a request whose reply may be large (`get`, `keys`): its bytes, held until the reply
    /// is written to the socket.
    reply: Option<ReplyBytes>,
}

impl Permits {
    /// The request has run and its reply is ready: gives back the place among all requests
    /// before the reply waits for the client to read.
    fn ran(self) -> Ran {
        drop(self.everyone);
        Ran {
            own: self.own,
            reply: self.reply,
        }
    }
}

/// A request that has run, with what it still holds until its answer is queued.
struct Ran {
    own: OwnedSemaphorePermit,
    reply: Option<ReplyBytes>,
}

impl Ran {
    /// Queues `frame` as the request's answer, then gives back its place among its connection's
    /// requests (the reply's bytes go with the frame, until it is written).
    async fn answer(self, out: &mpsc::Sender<Outgoing>, frame: ServerFrame) {
        queue(out, frame, self.reply).await;
        drop(self.own);
    }
}

/// The most bytes one reply takes: a larger one is not sent (see [`unencodable`]).
const LARGEST_REPLY: usize = HEADER_LEN + MAX_FRAME_LEN;

/// Where a connection's bytes for `get` and `keys` replies come from (see
/// [`ServerOptions::max_reply_bytes`]).
struct ReplyBudget {
    /// [`ServerOptions::max_reply_bytes_per_connection`].
    own: Arc<Semaphore>,
    /// The one largest reply this connection may always hold, whatever the other connections
    /// hold of `everyone`.
    floor: Arc<Semaphore>,
    /// [`ServerOptions::max_reply_bytes`], shared by all connections.
    everyone: Arc<Semaphore>,
}

impl ReplyBudget {
    fn new(options: &ServerOptions, everyone: &Arc<Semaphore>) -> Self {
        let own = options
            .max_reply_bytes_per_connection
            .clamp(LARGEST_REPLY, Semaphore::MAX_PERMITS);
        ReplyBudget {
            own: Arc::new(Semaphore::new(own)),
            floor: Arc::new(Semaphore::new(LARGEST_REPLY)),
            everyone: Arc::clone(everyone),
        }
    }

    /// Bytes for the largest reply, taken before its request runs: the size of a stored value
    /// is known only once it is read, and a request that waits here has read nothing yet, so
    /// requests waiting for bytes hold none. Waits while this connection's budget is used up
    /// (its client is not reading) and while both its floor and everyone's budget are.
    async fn reserve(&self) -> ReplyBytes {
        let largest = LARGEST_REPLY as u32;
        let own = Arc::clone(&self.own).acquire_many_owned(largest).await;
        // The floor when it is free, as it is for a client that reads its replies; this
        // leaves everyone's budget, which all connections contend for, untouched.
        let pool = match Arc::clone(&self.floor).try_acquire_many_owned(largest) {
            Ok(floor) => Ok(floor),
            Err(_) => tokio::select! {
                biased;
                floor = Arc::clone(&self.floor).acquire_many_owned(largest) => floor,
                shared = Arc::clone(&self.everyone).acquire_many_owned(largest) => shared,
            },
        };
        ReplyBytes {
            own: own.expect("never closed"),
            pool: pool.expect("never closed"),
        }
    }
}

/// Bytes reserved for one reply, from the connection's budget and from its floor or everyone's
/// budget: the largest reply's until the reply is encoded, then its buffer's.
struct ReplyBytes {
    own: OwnedSemaphorePermit,
    pool: OwnedSemaphorePermit,
}

impl ReplyBytes {
    /// Gives back what the encoded reply, `bytes` long, does not need.
    fn shrink_to(&mut self, bytes: usize) {
        for permit in [&mut self.own, &mut self.pool] {
            let excess = permit.num_permits().saturating_sub(bytes);
            if excess > 0 {
                drop(permit.split(excess));
            }
        }
    }
}

/// Serves connections from `listener` until `shutdown` completes, then drains and returns.
///
/// Errors: only a listener that keeps failing ends the server early
/// ([`keyshare::Error::Io`]); running out of file descriptors or memory is not such a failure
/// and is retried for as long as it lasts; everything that goes wrong with one connection is logged and
/// ends that connection.
pub async fn run(
    listener: UnixListener,
    shutdown: impl Future<Output = ()>,
    state: BrokerState,
) -> keyshare::Result<()> {
    let shared = Arc::new(Shared {
        storage: state.storage.to_async(),
        policy: state.policy,
        store_identity: state.store_identity,
        store_aliases: state.store_aliases,
        os_keyring: state.os_keyring,
        in_flight: Arc::new(Semaphore::new(state.options.max_in_flight.max(1))),
        reply_bytes: Arc::new(Semaphore::new(
            state.options.max_reply_bytes.min(Semaphore::MAX_PERMITS),
        )),
        options: state.options,
        uid: rustix::process::geteuid().as_raw(),
        connections: watch::Sender::new(0),
        abandon: watch::Sender::new(false),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(repair_loop(Arc::clone(&shared), stop_rx.clone()));
    if let Some(external) = state.external {
        tasks.spawn(external_changes_loop(
            state.storage.clone(),
            external,
            stop_rx.clone(),
        ));
    }

    let limit = Arc::new(Semaphore::new(shared.options.max_connections.max(1)));
    let idle_exit = shared.options.idle_exit;
    let accepted = tokio::select! {
        result = accept_loop(&listener, &shared, &limit, &stop_rx, &mut tasks) => result,
        () = shutdown => Ok(()),
        () = idle(&shared, idle_exit) => {
            tracing::info!("no connection for {:?}; stopping", idle_exit.unwrap_or_default());
            Ok(())
        }
    };
    // Stop accepting first, so no client connects to a server that will not answer.
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = tokio::time::sleep(shared.options.shutdown_grace);
    tokio::pin!(grace);
    let mut abandoned = false;
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            () = &mut grace, if !abandoned => {
                // Dropping these replies loses nothing acknowledged: a reply is produced only
                // after its request finished (a write is durable before it is answered), and a
                // client that did not get the reply treats the request as not answered. The
                // requests still in the store are still awaited below.
                tracing::warn!(
                    "clients did not read their replies within {:?} of shutdown; dropping them",
                    shared.options.shutdown_grace
                );
                abandoned = true;
                shared.abandon.send_replace(true);
                continue;
            }
        };
        match joined {
            None => break,
            Some(Err(err)) if err.is_panic() => tracing::error!("a connection task panicked"),
            Some(_) => {}
        }
    }
    tracing::info!("broker stopped");
    accepted
}

async fn accept_loop(
    listener: &UnixListener,
    shared: &Arc<Shared>,
    limit: &Arc<Semaphore>,
    stop: &watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> keyshare::Result<()> {
    let mut backoff = AcceptBackoff::default();
    let mut refused_since_served = 0u64;
    let refusals = Arc::new(Semaphore::new(MAX_REFUSALS_AT_ONCE));
    loop {
        // Reap finished connections so the set does not grow with every connection ever made.
        while tasks.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff.succeeded();
                stream
            }
            Err(err) => match backoff.failed(&err) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    continue;
                }
                None => return Err(keyshare::Error::io("accepting a broker connection", err)),
            },
        };
        // At the limit, a client is told so at once. Left in the listen backlog instead, it
        // waited for an answer that never came and reported the broker as hung, and `doctor`
        // advised stopping it, with all its connections (found by QA).
        let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
            refused_since_served += 1;
            if refused_since_served.is_power_of_two() {
                tracing::warn!(
                    max_connections = shared.options.max_connections,
                    refused = refused_since_served,
                    "refused a connection: the broker serves its maximum number of connections"
                );
            }
            match Arc::clone(&refusals).try_acquire_owned() {
                Ok(permit) => {
                    let max = shared.options.max_connections;
                    tokio::spawn(async move {
                        refuse_busy(stream, max).await;
                        drop(permit);
                    });
                }
                // A flood: closed without a word rather than held open.
                Err(_) => drop(stream),
            }
            continue;
        };
        refused_since_served = 0;
        let shared = Arc::clone(shared);
        let stop = stop.clone();
        tasks.spawn(async move {
            shared.connections.send_modify(|n| *n += 1);
            serve_connection(&shared, stream, stop).await;
            shared.connections.send_modify(|n| *n -= 1);
            drop(permit);
        });
    }
}

/// Connections over the limit being told so at once; past that, further ones are closed
/// without a word (each holds a descriptor for up to [`REFUSAL_LINGER`]).
const MAX_REFUSALS_AT_ONCE: usize = 64;

/// How long a refused connection stays open for its client to finish writing: closed with the
/// client's bytes unread, a Unix socket makes the client's read fail (`ECONNRESET`), and
/// closed before the client wrote, its write fails (`EPIPE`); either way the client would not
/// read why it was refused.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Tells a client over the connection limit why it is refused (an `unavailable` error frame
/// with id null), reads and drops what it sends for up to [`REFUSAL_LINGER`], then closes the
/// connection.
async fn refuse_busy(mut stream: UnixStream, max_connections: usize) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let error = RemoteError {
        reason: Some("backend".to_owned()),
        ..RemoteError::new(
            ErrorCode::Unavailable,
            format!(
                "the broker already serves its maximum of {max_connections} connections, so \
                 this one was refused; try again once others have closed"
            ),
        )
    };
    let Ok(frame) = crate::protocol::encode(&ServerFrame::Error { id: None, error }) else {
        return;
    };
    if stream.write_all(&frame).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// How the accept loop waits after `accept` failed: doubling delays up to
/// [`AcceptBackoff::MAX_DELAY`], so it neither spins nor sleeps long once accepting works again.
///
/// Running out of file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) passes when
/// connections close, so it is retried for as long as it lasts: ending the broker then would
/// drop every connected client too. Any other failure that persists for
/// [`AcceptBackoff::GIVE_UP_AFTER`] of retries means the listener is broken, and ends the server.
#[derive(Debug)]
struct AcceptBackoff {
    delay: Duration,
    /// Failures since the last accepted connection.
    failures: u64,
    /// Time waited since the last accepted connection after failures other than exhaustion.
    waited_on_other: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff {
            delay: Self::FIRST_DELAY,
            failures: 0,
            waited_on_other: Duration::ZERO,
        }
    }
}

impl AcceptBackoff {
    const FIRST_DELAY: Duration = Duration::from_millis(10);
    const MAX_DELAY: Duration = Duration::from_secs(1);
    const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
    /// A failure streak is logged at warn on its first failure and then every this many, not
    /// at every retry (up to one a second for as long as the descriptors run short).
    const WARN_EVERY: u64 = 60;

    fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
        }
        *self = AcceptBackoff::default();
    }

    /// How long to wait before accepting again after `err`, or `None` to give up.
    fn failed(&mut self, err: &std::io::Error) -> Option<Duration> {
        use rustix::io::Errno;
        let exhausted = err
            .raw_os_error()
            .map(Errno::from_raw_os_error)
            .is_some_and(|e| {
                [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&e)
            });
        self.failures += 1;
        if self.failures % Self::WARN_EVERY == 1 {
            tracing::warn!(
                error = %err,
                failures = self.failures,
                "could not accept a connection; retrying"
            );
        }
        if !exhausted {
            if self.waited_on_other >= Self::GIVE_UP_AFTER {
                return None;
            }
            self.waited_on_other += self.delay;
        }
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX_DELAY);
        Some(delay)
    }
}

/// Completes once there has been no connection for `period` (never when `None`).
async fn idle(shared: &Shared, period: Option<Duration>) {
    let Some(period) = period else {
        return std::future::pending().await;
    };
    let mut connections = shared.connections.subscribe();
    loop {
        if connections.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        tokio::select! {
            () = tokio::time::sleep(period) => return,
            _ = connections.wait_for(|n| *n > 0) => {}
        }
    }
}

async fn repair_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.options.repair_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the storage runs its own pass on first use.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match shared.storage.repair().await {
            Ok(report) if report.repaired > 0 || !report.failed.is_empty() => {
                tracing::info!(
                    repaired = report.repaired,
                    still_pending = report.failed.len(),
                    "background repair pass"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "background repair pass failed"),
        }
    }
}

/// Polls the external change source on the blocking pool every interval and announces each
/// change through the storage, so subscribers get it in sequence with the broker's own.
async fn external_changes_loop(
    storage: SecretStorage,
    external: ExternalChanges,
    mut stop: watch::Receiver<bool>,
) {
    let ExternalChanges {
        mut source,
        interval,
    } = external;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The first tick completes at once: a source without a baseline takes it at start.
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let storage = storage.clone();
        let poll = tokio::task::spawn_blocking(move || {
            let result = source.poll();
            if let Ok(changes) = &result {
                for (key, kind) in changes {
                    storage.announce_external_change(key, *kind);
                }
            }
            (source, result.map(|changes| changes.len()))
        });
        // A poll in progress (bounded by the store's timeout) does not hold up shutdown.
        let (returned, result) = tokio::select! {
            joined = poll => match joined {
                Ok(done) => done,
                Err(_) => {
                    tracing::error!("the external change poll panicked; no longer polling");
                    return;
                }
            },
            _ = stop.changed() => return,
        };
        source = returned;
        match result {
            Ok(0) => {}
            Ok(n) => tracing::debug!(changes = n, "announced changes made elsewhere"),
            Err(err) => tracing::warn!(
                error = %err,
                "polling the shared store for changes made elsewhere failed; retrying next interval"
            ),
        }
    }
}

/// A frame on its way to the socket, with the bytes reserved for it if it answers a `get` or
/// `keys`: given back once it is written, or dropped.
struct Outgoing {
    bytes: Zeroizing<Vec<u8>>,
    _reserved: Option<ReplyBytes>,
}

impl Outgoing {
    fn unreserved(bytes: Zeroizing<Vec<u8>>) -> Self {
        Outgoing {
            bytes,
            _reserved: None,
        }
    }
}

/// One connection: refuse strangers, handshake, then serve requests until the client leaves,
/// breaks the protocol, or the server stops.
async fn serve_connection(shared: &Arc<Shared>, stream: UnixStream, stop: watch::Receiver<bool>) {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(err) => {
            tracing::warn!(error = %err, "could not read peer credentials; connection refused");
            return;
        }
    };
    let (read_half, write_half) = stream.into_split();
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(write_loop(write_half, out_rx, shared.abandon.subscribe()));

    if cred.uid() != shared.uid {
        tracing::warn!(
            peer_uid = cred.uid(),
            peer_pid = ?cred.pid(),
            "refused a connection from another user"
        );
        let message = format!(
            "connection refused: this broker serves uid {} only, you are uid {}",
            shared.uid,
            cred.uid()
        );
        send_error(&out_tx, None, RemoteError::new(ErrorCode::Denied, message)).await;
    } else {
        // Read now, not at hello: hello may come seconds later, by when the process that
        // connected may have exec'd a pinned program and handed the socket to a child that
        // speaks for it (found in review). Read whatever the policy pins now: a policy put in
        // force later may pin this connection's app, and is checked against this.
        let peer_exe = cred
            .pid()
            .and_then(|pid| process_executable(pid).ok())
            .map(Arc::from);
        let mut conn = Connection {
            replies: ReplyBudget::new(&shared.options, &shared.reply_bytes),
            shared: Arc::clone(shared),
            reader: FrameReader::new(read_half).with_frame_timeout(shared.options.frame_timeout),
            out: out_tx.clone(),
            in_flight: JoinSet::new(),
            in_flight_limit: Arc::new(Semaphore::new(
                shared.options.max_in_flight_per_connection.max(1),
            )),
            subscription: None,
            peer_pid: cred.pid(),
            peer_exe,
            admission: None,
            stop,
            draining: false,
            abandon: shared.abandon.subscribe(),
        };
        conn.serve().await;
        conn.finish().await;
    }
    drop(out_tx);
    let _ = writer.await;
}

/// Writes queued frames, batching whatever is queued into one flush, until the channel closes
/// or the shutdown grace period is over (`abandon`). Returning drops the channel's receiver, so
/// the tasks still waiting to queue a reply are released too.
async fn write_loop(
    write_half: OwnedWriteHalf,
    out: mpsc::Receiver<Outgoing>,
    mut abandon: watch::Receiver<bool>,
) {
    let abandoned = async {
        if abandon.wait_for(|a| *a).await.is_err() {
            // The server is gone without abandoning; nothing else will.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = write_frames(write_half, out) => {}
        () = abandoned => {}
    }
}

/// How many bytes of queued frames one write gathers.
const WRITE_BATCH: usize = 16 * 1024;

/// Writes the frames queued for a connection, gathering what is queued into one write. The
/// gathering buffer is the connection's own and zeroized after every write, since frames
/// carry values: tokio's `BufWriter` kept the last `get` reply it held, value and all, until
/// the connection closed and then freed it as it was (found with gcore in review, after QA s18
/// F3). A frame that does not fit what is left of the buffer is written on its own, from its
/// own zeroizing buffer, rather than grow this one: growing moves the bytes and frees the old
/// allocation uncleared.
async fn write_frames(mut write_half: OwnedWriteHalf, mut out: mpsc::Receiver<Outgoing>) {
    let mut batch = Batch(Vec::with_capacity(WRITE_BATCH));
    let batch = &mut batch.0;
    while let Some(mut frame) = out.recv().await {
        loop {
            if batch.len() + frame.bytes.len() <= WRITE_BATCH {
                batch.extend_from_slice(&frame.bytes);
            } else {
                if !batch.is_empty() && !write_batch(&mut write_half, batch).await {
                    return;
                }
                if frame.bytes.len() > WRITE_BATCH {
                    if write_half.write_all(&frame.bytes).await.is_err() {
                        return;
                    }
                } else {
                    batch.extend_from_slice(&frame.bytes);
                }
            }
            drop(frame);
            match out.try_recv() {
                Ok(next) => frame = next,
                Err(_) => break,
            }
        }
        if !batch.is_empty() && !write_batch(&mut write_half, batch).await {
            return;
        }
    }
    let _ = write_half.shutdown().await;
}

/// [`write_frames`]' gathering buffer. Bytes are only added at its end, and zeroized before it
/// is cleared ([`write_batch`]), so past its length it holds zeros or memory never written:
/// dropped, it zeroizes its bytes, not its whole capacity (16 KiB, a byte at a time as zeroize
/// writes: ~17,000 instructions per connection, callgrind).
struct Batch(Vec<u8>);

impl Drop for Batch {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

/// Writes `batch` and empties it, zeroizing the bytes it held (its spare capacity was never
/// written); whether the write succeeded.
async fn write_batch(write_half: &mut OwnedWriteHalf, batch: &mut Vec<u8>) -> bool {
    let written = write_half.write_all(batch).await;
    batch.as_mut_slice().zeroize();
    batch.clear();
    written.is_ok()
}

async fn send(out: &mpsc::Sender<Outgoing>, frame: &ServerFrame) {
    if let Some(bytes) = encode_answer(frame) {
        // A closed channel means the writer gave up on a dead socket; the reader notices too.
        let _ = out.send(Outgoing::unreserved(bytes)).await;
    }
}

/// [`send`] for a request's answer, with the bytes reserved for it, if any: the frame (and
/// the value in it) is dropped once encoded, and the reservation shrunk to the encoded
/// frame's buffer, before waiting for room in the queue.
async fn queue(out: &mpsc::Sender<Outgoing>, frame: ServerFrame, reserved: Option<ReplyBytes>) {
    let Some(bytes) = encode_answer(&frame) else {
        return;
    };
    drop(frame);
    let reserved = reserved.map(|mut reserved| {
        reserved.shrink_to(bytes.capacity());
        reserved
    });
    let _ = out
        .send(Outgoing {
            bytes,
            _reserved: reserved,
        })
        .await;
}

/// `frame` encoded, or the error that answers its request instead when it cannot be, in a
/// buffer no larger than [`LARGEST_REPLY`] (what was reserved for it).
fn encode_answer(frame: &ServerFrame) -> Option<Zeroizing<Vec<u8>>> {
    let encoded =
        encode_with_capacity(frame, capacity_hint(frame)).or_else(|err| {
            match unencodable(frame, &err) {
                Some(instead) => encode(&instead),
                None => Err(err),
            }
        });
    match encoded {
        Ok(bytes) if bytes.capacity() > LARGEST_REPLY => {
            // Grown by doubling past the limit (a `keys` reply just under it): moved into a
            // buffer of its size, the old one zeroized as it is dropped.
            let mut fitted = Zeroizing::new(Vec::with_capacity(bytes.len()));
            fitted.extend_from_slice(&bytes);
            Some(fitted)
        }
        Ok(bytes) => Some(bytes),
        Err(err) => {
            tracing::error!(error = %err, "could not encode a frame");
            None
        }
    }
}

/// The size of `frame` encoded, exactly or nearly for the large ones (a `get` reply's, from
/// its value's length), so that it is encoded without moving.
fn capacity_hint(frame: &ServerFrame) -> usize {
    // The frame around the data: `{"type":"reply","id":<20 digits>,"op":"get","value":""}`.
    const AROUND: usize = HEADER_LEN + 96;
    match frame {
        ServerFrame::Reply {
            reply: Reply::Get {
                value: Some(WireValue(value)),
            },
            ..
        } => AROUND + value.len().div_ceil(3) * 4,
        // Quotes and a comma around each key; keys that JSON escapes need more.
        ServerFrame::Reply {
            reply: Reply::Keys { keys, .. },
            ..
        } => AROUND + keys.iter().map(|k| k.0.as_str().len() + 3).sum::<usize>(),
        _ => 128,
    }
}

/// The most bytes of key names one page of a `keys` reply holds, counted as JSON writes them
/// at worst (six bytes for a character it escapes): well under the frame limit.
const KEYS_PAGE_BYTES: usize = 512 * 1024;

/// One page of `keys`: those after `after` in byte order, at most `limit` of them and at most
/// [`KEYS_PAGE_BYTES`] (always one at least), and whether others follow.
fn page_of_keys(
    keys: impl Iterator<Item = SecretKey>,
    after: Option<&str>,
    limit: u32,
) -> (Vec<SecretKey>, bool) {
    let mut keys: Vec<SecretKey> = keys
        .filter(|key| after.is_none_or(|after| key.as_str() > after))
        .collect();
    keys.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    let mut bytes = 0;
    let mut fit = 0;
    for key in &keys {
        bytes += key.as_str().len() * 6 + 3;
        if fit >= limit.max(1) as usize || (fit > 0 && bytes > KEYS_PAGE_BYTES) {
            break;
        }
        fit += 1;
    }
    let more = fit < keys.len();
    keys.truncate(fit);
    (keys, more)
}

/// The error frame that answers `frame`'s request when `frame` itself cannot be encoded (a
/// `keys` reply over the frame limit), so that every request is still answered exactly once:
/// a client would otherwise wait for its reply until it timed out. `None` for a frame that
/// answers no request.
fn unencodable(frame: &ServerFrame, err: &FrameError) -> Option<ServerFrame> {
    let id = match frame {
        ServerFrame::Reply { id, .. } | ServerFrame::Error { id: Some(id), .. } => *id,
        _ => return None,
    };
    let message = match err {
        FrameError::TooLarge { len } => {
            let hint = match frame {
                ServerFrame::Reply {
                    reply: Reply::Keys { .. },
                    ..
                } => {
                    "; the store holds too many keys, or too long ones, to list in one reply: \
                      ask for them a page at a time (`limit`)"
                }
                _ => "",
            };
            format!(
                "the reply would be {len} bytes, {} bytes over the frame limit of \
                 {MAX_FRAME_LEN} bytes{hint}",
                len.saturating_sub(MAX_FRAME_LEN)
            )
        }
        other => format!("the reply could not be encoded: {other}"),
    };
    tracing::warn!(id, "{message}");
    Some(ServerFrame::Error {
        id: Some(id),
        error: RemoteError::new(ErrorCode::Invalid, message),
    })
}

async fn send_error(out: &mpsc::Sender<Outgoing>, id: Option<u64>, error: RemoteError) {
    send(out, &ServerFrame::Error { id, error }).await;
}

struct Connection {
    shared: Arc<Shared>,
    replies: ReplyBudget,
    reader: FrameReader<OwnedReadHalf>,
    out: mpsc::Sender<Outgoing>,
    in_flight: JoinSet<()>,
    in_flight_limit: Arc<Semaphore>,
    subscription: Option<tokio::task::JoinHandle<()>>,
    peer_pid: Option<i32>,
    /// The peer's executable when the connection was accepted (`None` when it could not be
    /// read, which fails any pin).
    peer_exe: Option<Arc<Path>>,
    /// Once hello passed: what re-decides the grant when the policy changes.
    admission: Option<Admission>,
    stop: watch::Receiver<bool>,
    /// Set once the server stops: the connection's reading side is shut, and the requests
    /// the client sent before that are read and served until the socket is empty.
    draining: bool,
    /// The server's [`Shared::abandon`]: the shutdown grace period is over.
    abandon: watch::Receiver<bool>,
}

/// Who a connection speaks for, and the policy in force, to decide its grant again whenever
/// the policy is replaced. Cloned into the connection's subscription.
#[derive(Clone)]
struct Admission {
    app: AppId,
    peer_exe: Option<Arc<Path>>,
    policy: watch::Receiver<Arc<AccessPolicy>>,
}

impl Admission {
    /// The grant under the policy in force now.
    fn decide(&mut self) -> Result<Grant, Refusal> {
        let policy = Arc::clone(&self.policy.borrow_and_update());
        policy.admit(&self.app, self.peer_exe.as_deref())
    }

    /// Brings `grant` up to date with the policy in force, if that was replaced since it was
    /// decided; an error when the policy no longer admits the app at all.
    fn refresh(&mut self, grant: &mut Grant) -> Result<(), Refusal> {
        if self.policy.has_changed().unwrap_or(false) {
            *grant = self.decide()?;
        }
        Ok(())
    }

    /// Completes when the policy is replaced (never once the server is gone).
    async fn changed(admission: Option<&mut Admission>) {
        let Some(admission) = admission else {
            return std::future::pending().await;
        };
        if admission.policy.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What the reader loop saw.
enum Incoming<T> {
    /// A frame as the caller's decoder made it, or why none could be read.
    Frame(Result<T, FrameError>),
    Closed,
    Stop,
    /// The access policy was replaced (only once hello passed).
    PolicyChanged,
}

/// A connection's first frame.
enum Opening {
    /// A hello of another protocol version, whose other fields were not decoded: they may
    /// have another shape in that version.
    OtherVersion(HelloVersion),
    /// Keys unchecked: a first request that is not hello is refused whatever its key.
    Request(UncheckedRequestFrame),
}

/// Decodes a connection's first frame: a hello's version before the rest of it, so that a
/// client of another version hears that, rather than that its hello is malformed.
fn decode_opening(body: &[u8]) -> Result<Opening, FrameError> {
    match hello_version(body) {
        Some(hello) if hello.protocol != u64::from(PROTOCOL_VERSION) => {
            Ok(Opening::OtherVersion(hello))
        }
        _ => decode(body).map(Opening::Request),
    }
}

impl Connection {
    /// The next frame, decoded with `decode` (which runs while the frame is still in the
    /// reader's buffer).
    async fn next<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, FrameError>,
    ) -> Incoming<T> {
        if *self.stop.borrow() && !self.draining && !self.start_draining() {
            return Incoming::Stop;
        }
        loop {
            tokio::select! {
                biased;
                // The one arm that goes on below the `select`.
                _ = self.stop.changed(), if !self.draining => {}
                // Requests not started by the end of the grace period are never answered.
                _ = self.abandon.wait_for(|abandoned| *abandoned), if self.draining => {
                    return Incoming::Stop;
                }
                // The writer gave up (the peer is gone): requests still buffered in the socket
                // would be answered to nobody (found by QA: 24 s of full CPU after 300 clients
                // closed, and other clients waited seconds).
                () = self.out.closed() => return Incoming::Closed,
                () = Admission::changed(self.admission.as_mut()) => return Incoming::PolicyChanged,
                // Reap finished requests so the set stays small on a long-lived connection.
                Some(_) = self.in_flight.join_next(), if !self.in_flight.is_empty() => continue,
                frame = self.reader.read_frame() => {
                    return match frame {
                        Ok(Some(body)) => Incoming::Frame(decode(body)),
                        Ok(None) => Incoming::Closed,
                        Err(err) => Incoming::Frame(Err(err)),
                    };
                }
            }
            if !self.start_draining() {
                return Incoming::Stop;
            }
        }
    }

    /// At shutdown: shuts the connection's reading side, so that whatever the client sends
    /// from now on fails at its end (`EPIPE`: it knows the request was not sent, and may send
    /// it to the next broker), while the requests it sent before that stay readable. Those
    /// were sent to a broker that was serving: they are read and served as usual (found by
    /// QA: a `keyshare set` racing `keyshare stop` failed with "closed before it answered",
    /// its request unread in the socket). Whether that could be done; if not, the
    /// connection stops at once.
    fn start_draining(&mut self) -> bool {
        start_draining(&self.reader, &mut self.draining)
    }

    async fn serve(&mut self) {
        let Some(mut grant) = self.handshake().await else {
            return;
        };
        tracing::debug!(app = %grant.app(), pid = ?self.peer_pid, "client connected");
        loop {
            let frame = match self
                .next(|body| decode::<UncheckedRequestFrame>(body))
                .await
            {
                Incoming::Frame(Ok(frame)) => frame,
                Incoming::Frame(Err(err)) => {
                    self.protocol_violation(err).await;
                    return;
                }
                Incoming::PolicyChanged => {
                    let decided = self.admission.as_mut().map(Admission::decide);
                    match decided {
                        Some(Ok(now)) => grant = now,
                        Some(Err(refusal)) => return self.no_longer_admitted(None, refusal).await,
                        None => {}
                    }
                    continue;
                }
                Incoming::Closed | Incoming::Stop => return,
            };
            if let RequestOf::Hello { .. } = frame.request {
                // A protocol error closes the connection (docs/protocol.md), after the replies
                // to the requests already started; the client is confused about its state.
                let msg = "hello was already done on this connection; closing it";
                let error = RemoteError::new(ErrorCode::Protocol, msg);
                send_error(&self.out, Some(frame.id), error).await;
                return;
            }
            // A frame that decoded has an id to answer, so a bad key fails only its request.
            let frame = match frame.check_keys() {
                Ok(frame) => frame,
                Err(invalid) => {
                    tracing::debug!(id = invalid.id, error = %invalid, "refused a request's key");
                    let error = RemoteError::new(ErrorCode::Invalid, invalid.to_string());
                    send_error(&self.out, Some(invalid.id), error).await;
                    continue;
                }
            };
            // Wait for a slot before reading on: a client that pipelines without bound is
            // slowed down instead of growing the broker's memory. A reply that may be large
            // needs its bytes too, before its request takes a place among everyone's, so a
            // connection waiting for bytes (its client does not read) holds none of those.
            // A wait ends once the shutdown grace period is over: the request is not started,
            // and not answered. (At shutdown itself it goes on: the request was sent while
            // the broker served, see `start_draining`, which is done at once.)
            let large_reply = matches!(frame.request, Request::Get { .. } | Request::Keys { .. });
            let (own, everyone) = (
                Arc::clone(&self.in_flight_limit),
                Arc::clone(&self.shared.in_flight),
            );
            let permits = {
                let replies = &self.replies;
                let waiting = async {
                    let own = own.acquire_owned().await;
                    let reply = match large_reply {
                        true => Some(replies.reserve().await),
                        false => None,
                    };
                    let everyone = everyone.acquire_owned().await;
                    Permits {
                        own: own.expect("never closed"),
                        everyone: everyone.expect("never closed"),
                        reply,
                    }
                };
                tokio::pin!(waiting);
                let (mut stop, mut abandon) = (self.stop.clone(), self.abandon.clone());
                loop {
                    tokio::select! {
                        permits = &mut waiting => break permits,
                        _ = abandon.wait_for(|abandoned| *abandoned) => return,
                        _ = stop.changed(), if !self.draining => {
                            if !start_draining(&self.reader, &mut self.draining) {
                                return;
                            }
                        }
                    }
                }
            };
            // Decided by the policy in force now, should it have been replaced since the
            // last request (a change seen by `next` was applied there; this one came while
            // the frame was read, or while it waited for its places).
            if let Some(admission) = self.admission.as_mut() {
                if let Err(refusal) = admission.refresh(&mut grant) {
                    return self.no_longer_admitted(Some(frame.id), refusal).await;
                }
            }
            self.dispatch(&grant, frame, permits).await;
        }
    }

    /// Closes a connection whose app the policy put in force since hello no longer admits,
    /// telling the client why: as the answer to request `id`, or about the connection.
    async fn no_longer_admitted(&mut self, id: Option<u64>, refusal: Refusal) {
        tracing::warn!(pid = ?self.peer_pid, %refusal, "the access policy now refuses a connected client; closing its connection");
        let message = format!("{refusal} (the access policy changed since this connection began)");
        send_error(&self.out, id, RemoteError::new(ErrorCode::Denied, message)).await;
    }

    /// Why hello's expectations of the store are not met, if they are not: another store
    /// than `expect_store`, or not the OS keyring's protection when that is required.
    fn refuse_settings(
        &self,
        expect_store: Option<String>,
        require_os_keyring: bool,
    ) -> Option<RemoteError> {
        let pid = std::process::id();
        if let Some(expected) = expect_store {
            if self.shared.store_identity.as_deref() != Some(expected.as_str())
                && !self.shared.store_aliases.contains(&expected)
            {
                let serving = match &self.shared.store_identity {
                    Some(identity) => identity.as_str(),
                    None => "a store that keeps nothing across restarts (memory)",
                };
                let msg = format!(
                    "this flavour's broker (pid {pid}) serves {serving}, not {expected} as the \
                     client asked; stop that broker (`keyshare stop`; it was started with other \
                     settings) or open \
                     the store directly (`--direct`)"
                );
                return Some(RemoteError::new(ErrorCode::StoreMismatch, msg));
            }
        }
        if require_os_keyring && self.shared.os_keyring == Some(false) {
            // The store is the one the client means (else the check above refused it), so
            // neither another broker nor `--direct` would help: opened directly it is refused
            // the same way (found by QA: the advice led to exit 6 again).
            let serving = self.shared.store_identity.as_deref().unwrap_or("its store");
            let msg = format!(
                "the client requires the OS keyring to protect its secrets (require_os_keyring), \
                 and this flavour's broker (pid {pid}) serves {serving}, which the OS keyring \
                 does not protect (a vault keeps the protection it was created with); turn \
                 require_os_keyring off to use it"
            );
            return Some(RemoteError::new(ErrorCode::Protection, msg));
        }
        None
    }

    async fn handshake(&mut self) -> Option<Grant> {
        let timeout = self.shared.options.handshake_timeout;
        let incoming = match tokio::time::timeout(timeout, self.next(decode_opening)).await {
            Ok(incoming) => incoming,
            Err(_) => {
                let msg = format!("no hello within {} s", timeout.as_secs());
                send_error(&self.out, None, RemoteError::new(ErrorCode::Protocol, msg)).await;
                return None;
            }
        };
        let frame = match incoming {
            Incoming::Frame(Ok(Opening::Request(frame))) => frame,
            Incoming::Frame(Ok(Opening::OtherVersion(hello))) => {
                self.version_mismatch(hello).await;
                return None;
            }
            Incoming::Frame(Err(err)) => {
                self.protocol_violation(err).await;
                return None;
            }
            // Not before hello: there is no admission to watch yet.
            Incoming::Closed | Incoming::Stop | Incoming::PolicyChanged => return None,
        };
        let id = frame.id;
        let RequestOf::Hello {
            client,
            client_version,
            protocol,
            app,
            expect_store,
            require_os_keyring,
        } = frame.request
        else {
            let msg = format!(
                "the first request must be hello, not {}",
                frame.request.op()
            );
            send_error(
                &self.out,
                Some(id),
                RemoteError::new(ErrorCode::Protocol, msg),
            )
            .await;
            return None;
        };
        if protocol != PROTOCOL_VERSION {
            // `decode_opening` answers these before decoding the rest; this keeps the check
            // where the version is used, whatever the two decoders make of odd input.
            let hello = HelloVersion {
                id,
                protocol: protocol.into(),
                client: Some(client),
                client_version: Some(client_version),
            };
            self.version_mismatch(hello).await;
            return None;
        }
        let app = match AppId::new(app) {
            Ok(app) => app,
            Err(err) => {
                send_error(
                    &self.out,
                    Some(id),
                    RemoteError::new(ErrorCode::Invalid, err.to_string()),
                )
                .await;
                return None;
            }
        };
        if let Some(refusal) = self.refuse_settings(expect_store, require_os_keyring) {
            tracing::warn!(%client, %app, "{}", refusal.message);
            send_error(&self.out, Some(id), refusal).await;
            return None;
        }
        let mut admission = Admission {
            app: app.clone(),
            peer_exe: self.peer_exe.clone(),
            policy: self.shared.policy.subscribe(),
        };
        match admission.decide() {
            Ok(grant) => {
                self.admission = Some(admission);
                let reply = Reply::Hello {
                    server: SERVER_NAME.to_owned(),
                    server_version: env!("CARGO_PKG_VERSION").to_owned(),
                    protocol: PROTOCOL_VERSION,
                    store: self.shared.store_identity.clone(),
                    keeps_change_times: self.shared.storage.keeps_change_times(),
                };
                send(&self.out, &ServerFrame::Reply { id, reply }).await;
                Some(grant)
            }
            Err(refusal) => {
                tracing::warn!(app = %app, pid = ?self.peer_pid, %refusal, "refused a client");
                send_error(
                    &self.out,
                    Some(id),
                    RemoteError::new(ErrorCode::Denied, refusal.to_string()),
                )
                .await;
                None
            }
        }
    }

    /// Answers a hello of another protocol version; the connection is closed after it.
    async fn version_mismatch(&mut self, hello: HelloVersion) {
        let HelloVersion {
            id,
            protocol,
            client,
            client_version,
            ..
        } = hello;
        tracing::warn!(
            ?client,
            ?client_version,
            protocol,
            "protocol version mismatch"
        );
        let who = match (client, client_version) {
            (Some(client), Some(version)) => format!("{client} {version}"),
            (Some(client), None) => client,
            (None, _) => "the client".to_owned(),
        };
        let msg = format!(
            "protocol version mismatch: {who} speaks version {protocol}, this broker \
             ({SERVER_NAME} {}, pid {}) speaks version {PROTOCOL_VERSION}; upgrade the older \
             of the two (a broker started before an upgrade runs the old program until it \
             stops: `keyshare stop`, and the next command starts the new one)",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        );
        let error = RemoteError {
            protocol: Some(PROTOCOL_VERSION),
            ..RemoteError::new(ErrorCode::VersionMismatch, msg)
        };
        send_error(&self.out, Some(id), error).await;
    }

    async fn protocol_violation(&mut self, err: FrameError) {
        match &err {
            FrameError::Io(_) | FrameError::Truncated { .. } => {
                tracing::debug!(error = %err, "connection ended mid-frame");
            }
            // Including a frame left unfinished (`Stalled`): its error names lengths and the
            // time limit, never the bytes that did arrive.
            _ => {
                tracing::warn!(error = %err, pid = ?self.peer_pid, "protocol violation; closing the connection");
                send_error(
                    &self.out,
                    None,
                    RemoteError::new(ErrorCode::Protocol, err.to_string()),
                )
                .await;
            }
        }
    }

    /// Starts one request. Storage operations take their key's turn here, in arrival order;
    /// the rest runs in its own task.
    async fn dispatch(&mut self, grant: &Grant, frame: RequestFrame, permit: Permits) {
        let id = frame.id;
        let storage = &self.shared.storage;
        let out = self.out.clone();
        let peer_pid = self.peer_pid;
        let denied = |key: &SecretKey| {
            // Logged as a refusal is: a user asking why an app cannot see a key finds it in the
            // broker's log. Key names are not secret (they are in config.toml); values never
            // reach this point.
            tracing::warn!(app = %grant.app(), pid = ?peer_pid, key = %key.as_str(), "denied a request for a key the app may not use");
            RemoteError::new(ErrorCode::Denied, grant.denial(key))
        };
        match frame.request {
            Request::Get { key: WireKey(key) } => {
                if !grant.allows(&key) {
                    let error = ServerFrame::Error {
                        id: Some(id),
                        error: denied(&key),
                    };
                    return permit.ran().answer(&out, error).await;
                }
                let op = storage.get(&key);
                self.answer(
                    async move {
                        match op.await {
                            Ok(value) => ServerFrame::Reply {
                                id,
                                reply: Reply::Get {
                                    value: value.map(WireValue),
                                },
                            },
                            Err(err) => error_frame(id, "get", &key, &err),
                        }
                    },
                    permit,
                )
                .await;
            }
            Request::Set {
                key: WireKey(key),
                value: WireValue(value),
                unless_changed_after,
            } => {
                if !grant.allows(&key) {
                    let error = ServerFrame::Error {
                        id: Some(id),
                        error: denied(&key),
                    };
                    return permit.ran().answer(&out, error).await;
                }
                if let Some(after) = unless_changed_after {
                    return self.conditional(id, key, Some(value), after, permit).await;
                }
                let op = storage.set(&key, &value);
                drop(value);
                self.answer(
                    async move {
                        match op.await {
                            Ok(()) => ServerFrame::Reply {
                                id,
                                reply: Reply::Set { written: None },
                            },
                            Err(err) => error_frame(id, "set", &key, &err),
                        }
                    },
                    permit,
                )
                .await;
            }
            Request::Delete {
                key: WireKey(key),
                unless_changed_after,
            } => {
                if !grant.allows(&key) {
                    let error = ServerFrame::Error {
                        id: Some(id),
                        error: denied(&key),
                    };
                    return permit.ran().answer(&out, error).await;
                }
                if let Some(after) = unless_changed_after {
                    return self.conditional(id, key, None, after, permit).await;
                }
                let op = storage.delete(&key);
                self.answer(
                    async move {
                        match op.await {
                            Ok(deleted) => ServerFrame::Reply {
                                id,
                                reply: Reply::Delete {
                                    deleted,
                                    written: None,
                                },
                            },
                            Err(err) => error_frame(id, "delete", &key, &err),
                        }
                    },
                    permit,
                )
                .await;
            }
            Request::DeletedAt { key: WireKey(key) } => {
                // A delete's time says the key existed: as much as `get` tells, so the same
                // grant.
                if !grant.allows(&key) {
                    let error = ServerFrame::Error {
                        id: Some(id),
                        error: denied(&key),
                    };
                    return permit.ran().answer(&out, error).await;
                }
                let storage = storage.clone();
                self.in_flight.spawn(async move {
                    let frame = match storage.deleted_at(&key).await {
                        Ok(at) => ServerFrame::Reply {
                            id,
                            reply: Reply::DeletedAt {
                                deleted_at: at.map(|at| {
                                    at.duration_since(std::time::SystemTime::UNIX_EPOCH)
                                        .map_or(0, |d| {
                                            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
                                        })
                                }),
                            },
                        },
                        Err(err) => error_frame(id, "deleted_at", &key, &err),
                    };
                    permit.ran().answer(&out, frame).await;
                });
            }
            Request::Keys { after, limit } => {
                let storage = storage.clone();
                let grant = grant.clone();
                self.in_flight.spawn(async move {
                    let frame = match storage.keys().await {
                        Ok(keys) => {
                            let keys = keys.into_iter().filter(|k| grant.allows(k));
                            let (keys, more) = match limit {
                                None => (keys.collect(), false),
                                Some(limit) => page_of_keys(keys, after.as_deref(), limit),
                            };
                            ServerFrame::Reply {
                                id,
                                reply: Reply::Keys {
                                    keys: keys.into_iter().map(WireKey).collect(),
                                    more,
                                },
                            }
                        }
                        Err(err) => ServerFrame::Error {
                            id: Some(id),
                            error: RemoteError::from_store_error(&err),
                        },
                    };
                    permit.ran().answer(&out, frame).await;
                });
            }
            Request::Subscribe { keys } => {
                let only: Option<Vec<SecretKey>> =
                    keys.map(|keys| keys.into_iter().map(|WireKey(k)| k).collect());
                if let Some(key) = only.iter().flatten().find(|k| !grant.allows(k)) {
                    let error = ServerFrame::Error {
                        id: Some(id),
                        error: denied(key),
                    };
                    return permit.ran().answer(&out, error).await;
                }
                // Subscribe before reading the sequence number: an event in between is then
                // both counted and delivered (and skipped as already covered), never lost.
                let mut events = storage.subscribe();
                let last_seq = storage.to_blocking().status().last_event_seq;
                let reply = ServerFrame::Reply {
                    id,
                    reply: Reply::Subscribe { last_seq },
                };
                permit.ran().answer(&out, reply).await;
                if let Some(old) = self.subscription.take() {
                    old.abort();
                }
                let mut grant = grant.clone();
                let mut admission = self.admission.clone();
                let mut stop = self.stop.clone();
                self.subscription = Some(tokio::spawn(async move {
                    loop {
                        let notification = tokio::select! {
                            n = events.recv() => n,
                            _ = stop.changed() => return,
                        };
                        let frame = match notification {
                            None => return,
                            Some(Notification::Resync { missed }) => ServerFrame::Resync { missed },
                            Some(Notification::Changed(event)) => {
                                // Filtered by the policy in force; one that no longer admits
                                // the app closes the connection (`serve` sees it too).
                                if let Some(admission) = admission.as_mut() {
                                    if admission.refresh(&mut grant).is_err() {
                                        return;
                                    }
                                }
                                let wanted = event.seq > last_seq
                                    && grant.allows(&event.key)
                                    && only.as_ref().is_none_or(|o| o.contains(&event.key));
                                if !wanted {
                                    continue;
                                }
                                ServerFrame::Event {
                                    seq: event.seq,
                                    key: WireKey(event.key),
                                    kind: match event.kind {
                                        ChangeKind::Delete => EventKind::Delete,
                                        _ => EventKind::Set,
                                    },
                                }
                            }
                        };
                        let Ok(bytes) = encode(&frame) else { continue };
                        if out.send(Outgoing::unreserved(bytes)).await.is_err() {
                            return;
                        }
                    }
                }));
            }
            Request::Status => {
                let status = ServerFrame::Reply {
                    id,
                    reply: Reply::Status(self.shared.status(&self.shared.storage)),
                };
                permit.ran().answer(&out, status).await;
            }
            // Answered by `serve`, which then closes the connection.
            Request::Hello { .. } => {}
        }
    }

    /// A conditional `set` (`value`) or `delete` (`None`): another app's repair, written unless
    /// the key changed after `after` (nanoseconds since the Unix epoch).
    async fn conditional(
        &mut self,
        id: u64,
        key: SecretKey,
        value: Option<SecretValue>,
        after: u64,
        permit: Permits,
    ) {
        let setting = value.is_some();
        let after = SystemTime::UNIX_EPOCH + Duration::from_nanos(after);
        let op = self
            .shared
            .storage
            .write_unless_changed_after(&key, value, after);
        self.answer(
            async move {
                match (op.await, setting) {
                    (Ok(written), true) => ServerFrame::Reply {
                        id,
                        reply: Reply::Set {
                            written: Some(written),
                        },
                    },
                    (Ok(written), false) => ServerFrame::Reply {
                        id,
                        reply: Reply::Delete {
                            deleted: written,
                            written: Some(written),
                        },
                    },
                    (Err(err), setting) => {
                        error_frame(id, if setting { "set" } else { "delete" }, &key, &err)
                    }
                }
            },
            permit,
        )
        .await;
    }

    /// Sends the reply that `reply` makes, from this task if it is ready on its first poll (a
    /// storage operation that ran inline), which saves spawning a task and a scheduler round
    /// per request; otherwise from a task of its own, so that this connection reads on.
    async fn answer(
        &mut self,
        reply: impl Future<Output = ServerFrame> + Send + 'static,
        permit: Permits,
    ) {
        let mut reply = Box::pin(reply);
        // A no-op waker is enough for this first poll: if it is pending, the spawned task
        // polls it again with its own waker before waiting.
        let first = reply.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        if let Poll::Ready(frame) = first {
            return permit.ran().answer(&self.out, frame).await;
        }
        let out = self.out.clone();
        self.in_flight.spawn(async move {
            let frame = reply.await;
            permit.ran().answer(&out, frame).await;
        });
    }

    /// Lets every request already read finish and queue its reply.
    async fn finish(&mut self) {
        if let Some(subscription) = self.subscription.take() {
            subscription.abort();
        }
        // A client that only closed its writing side still gets its answers; once the writer
        // gives up (the peer is gone, or the shutdown grace is over), the requests still
        // running stop: a write already handed to the store goes on there, and one not yet
        // begun may not happen, which a client that did not get its answer cannot tell apart
        // (docs/protocol.md: a write whose connection ended may or may not have been made).
        loop {
            tokio::select! {
                joined = self.in_flight.join_next() => {
                    if joined.is_none() {
                        return;
                    }
                }
                () = self.out.closed() => {
                    self.in_flight.abort_all();
                    while self.in_flight.join_next().await.is_some() {}
                    return;
                }
            }
        }
    }
}

/// [`Connection::start_draining`], for callers that hold other parts of the connection.
fn start_draining(reader: &FrameReader<OwnedReadHalf>, draining: &mut bool) -> bool {
    *draining = true;
    let socket: &tokio::net::UnixStream = reader.get_ref().as_ref();
    match rustix::net::shutdown(socket, rustix::net::Shutdown::Read) {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(error = %err, "could not shut a connection's reading side at shutdown");
            false
        }
    }
}

fn error_frame(id: u64, op: &str, key: &SecretKey, err: &keyshare::Error) -> ServerFrame {
    tracing::debug!(op, key = %key, error = %err, "request failed");
    ServerFrame::Error {
        id: Some(id),
        error: RemoteError::from_store_error(err),
    }
}

impl Shared {
    fn status(&self, storage: &AsyncSecretStorage) -> BrokerStatus {
        let status = storage.to_blocking().status();
        BrokerStatus {
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            connections: *self.connections.borrow(),
            last_seq: status.last_event_seq,
            shared_store: status.shared.to_string(),
            legacy_store: status.legacy.map(|l| l.to_string()),
            pending_repairs: status.pending_repairs.len() as u64,
            policy: Some(self.policy.current().fingerprint()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_error(errno: rustix::io::Errno) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno.raw_os_error())
    }

    #[test]
    fn running_out_of_descriptors_or_memory_never_ends_the_accept_loop() {
        use rustix::io::Errno;
        for errno in [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM] {
            let mut backoff = AcceptBackoff::default();
            let mut waited = Duration::ZERO;
            // Far longer than any other failure is retried.
            while waited < AcceptBackoff::GIVE_UP_AFTER * 10 {
                let delay = backoff
                    .failed(&os_error(errno))
                    .unwrap_or_else(|| panic!("gave up on {errno:?} after {waited:?}"));
                assert!(delay <= AcceptBackoff::MAX_DELAY, "{delay:?} for {errno:?}");
                waited += delay;
            }
        }
    }

    #[test]
    fn other_accept_failures_end_the_loop_once_they_persist() {
        let mut backoff = AcceptBackoff::default();
        let mut waited = Duration::ZERO;
        while let Some(delay) = backoff.failed(&os_error(rustix::io::Errno::BADF)) {
            waited += delay;
            assert!(waited < AcceptBackoff::GIVE_UP_AFTER * 2, "never gave up");
        }
        assert!(
            waited >= AcceptBackoff::GIVE_UP_AFTER,
            "gave up after {waited:?}"
        );
        // An accepted connection starts the count again.
        backoff.succeeded();
        assert_eq!(
            backoff.failed(&os_error(rustix::io::Errno::BADF)),
            Some(AcceptBackoff::FIRST_DELAY)
        );
    }
}
