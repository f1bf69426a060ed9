//! A broker client with no runtime and no thread of its own, for a process that makes a call or
//! two and exits (the `keyshare` CLI).
//!
//! A whole `keyshare get` through the broker is mostly process start-up, so what this client
//! leaves out is measurable there (crates/keyshare-cli/benches/broker_get.rs): no async
//! runtime to build and tear down (its epoll instance, wake-up descriptors and first
//! allocations), and no round trip of its own for hello: hello goes out in the same write as
//! the first request, and the broker's two replies come back together.
//!
//! Except for a write (`set`, `delete`): on a new connection it waits for hello's answer. A
//! connection that ends before that answer most likely met a broker on its way out (an idle
//! broker exits as a client connects; the connection was still in its listener's backlog), so
//! the call is made once more on a new connection, starting a broker if configured to. That
//! is safe only for a request the broker cannot have carried out: a read, or a write that was
//! never sent. A write sent on a connection that ended before its reply may have been made,
//! and is reported as failed: made again, it could undo what another app wrote or deleted
//! since.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::{Zeroize, Zeroizing};

use keyshare::{Result, SecretKey, SecretValue, Store, StoreInfo};

use crate::client::{
    check_value_len, conditional_write, encode_request, expect_reply, hello_request, is_absent,
    is_idempotent, keep_autostart_output, lock, read_hello, written, ClientConfig, ClientError,
    ServerInfo, TransportError,
};
use crate::protocol::{
    decode, frame_len, BrokerStatus, Reply, Request, RequestFrame, ServerFrame, WireKey, WireValue,
    HEADER_LEN,
};

/// A broker client over a plain blocking socket, implementing [`Store`].
///
/// Calls are made one at a time (callers on several threads take turns); there are no
/// subscriptions (nothing would read events between calls: use
/// [`BlockingBrokerClient`](crate::BlockingBrokerClient) for them). The connection is made on
/// first use, or by [`connect`](Self::connect), starting the broker if configured to, and
/// made again after a failed call.
///
/// Every method but [`keeps_change_times`](Store::keeps_change_times) blocks the calling thread
/// on the socket until the broker answered (at most the configured timeout, plus starting a
/// broker). Called from async code it works, but the thread it blocks is the caller's
/// runtime's, which runs no other task meanwhile: call it from `spawn_blocking` there (as
/// `AsyncSecretStorage` does), or use [`BrokerClient`](crate::BrokerClient).
pub struct OneShotClient {
    config: ClientConfig,
    store_name: String,
    conn: Mutex<Option<Conn>>,
    autostart_output: Mutex<Option<String>>,
    /// What the latest hello reply said of change times, readable while a call holds `conn`.
    keeps_change_times: AtomicBool,
}

impl std::fmt::Debug for OneShotClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OneShotClient")
            .field("socket", &self.config.paths.socket)
            .field("app", &self.config.app)
            .finish_non_exhaustive()
    }
}

struct Conn {
    stream: UnixStream,
    /// Received bytes (which may hold secret values): `filled` of them are unread.
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
    next_id: u64,
    /// What the broker said in hello, once its reply was read; until then the hello request is
    /// still to be written (`greeted == false`) or its reply still to be read.
    info: Option<ServerInfo>,
    greeted: bool,
}

impl OneShotClient {
    /// A client that connects on first use.
    pub fn new(config: ClientConfig) -> Self {
        OneShotClient {
            store_name: format!("broker at {}", config.paths.socket.display()),
            config,
            conn: Mutex::new(None),
            autostart_output: Mutex::new(None),
            keeps_change_times: AtomicBool::new(false),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The name used for this broker in errors (`broker at <socket>`).
    pub fn store_name(&self) -> &str {
        &self.store_name
    }

    /// What a broker this client started wrote to stderr before it was ready, once.
    pub fn take_autostart_output(&self) -> Option<String> {
        lock(&self.autostart_output).take()
    }

    /// Connects now (starting the broker if configured to), without waiting for any answer:
    /// hello goes out with the first request. An error here is always a
    /// [`ClientError::Transport`]: nothing answered.
    pub fn connect(&self) -> std::result::Result<(), ClientError> {
        let mut conn = lock(&self.conn);
        if conn.is_none() {
            *conn = Some(self.open()?);
        }
        Ok(())
    }

    /// Connects if needed and says hello, keeping transport and remote failures apart, so a
    /// caller can tell "no broker" from "the broker refused".
    pub fn hello(&self) -> std::result::Result<ServerInfo, ClientError> {
        let mut guard = lock(&self.conn);
        self.on_connection(&mut guard, |conn, deadline| {
            conn.greet(&self.config, deadline)
        })
    }

    /// The broker's state.
    pub fn status(&self) -> Result<BrokerStatus> {
        self.call(
            Request::Status,
            |reply| expect_reply!(reply, Status(status) => status),
        )
    }

    fn open(&self) -> std::result::Result<Conn, ClientError> {
        let config = &self.config;
        config.check_dir()?;
        let stream = match UnixStream::connect(&config.paths.socket) {
            Ok(stream) => stream,
            Err(err) if is_absent(&err) => match &config.autostart {
                Some(autostart) => {
                    let output = autostart.start_blocking(&config.paths)?;
                    keep_autostart_output(&self.autostart_output, output);
                    UnixStream::connect(&config.paths.socket)
                        .map_err(|source| config.connect_failed(source))?
                }
                None => return Err(config.not_running().into()),
            },
            Err(source) => return Err(config.connect_failed(source).into()),
        };
        config.check_peer(&stream)?;
        Ok(Conn {
            stream,
            buf: Zeroizing::new(vec![0; 1024]),
            filled: 0,
            next_id: 1,
            info: None,
            greeted: false,
        })
    }

    fn connected<'a>(
        &self,
        guard: &'a mut Option<Conn>,
    ) -> std::result::Result<&'a mut Conn, ClientError> {
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        Ok(guard.as_mut().expect("just set"))
    }

    /// Sends `request` (behind hello on a new connection) and turns its reply into `T`. Any
    /// failure drops the connection: a reply may still be on its way, and the next call must
    /// not mistake it for its own.
    fn call<T>(
        &self,
        request: Request,
        accept: impl FnOnce(Reply) -> std::result::Result<T, ClientError>,
    ) -> Result<T> {
        // Before connecting: no broker could take it.
        check_value_len(&request).map_err(|e| e.into_store_error(&self.store_name))?;
        let mut guard = lock(&self.conn);
        let write = !is_idempotent(&request);
        let result = self
            .on_connection(&mut guard, |conn, deadline| {
                if write && conn.info.is_none() {
                    // Not behind hello: if the connection ends before hello's answer, the
                    // write was never sent and can be sent on a new connection, and if that
                    // ends the same way, nothing was done (found by QA: reported as "may or
                    // may not have been carried out").
                    conn.greet(&self.config, deadline).map_err(|e| match e {
                        ClientError::Transport(TransportError::Closed) => {
                            TransportError::NotSent.into()
                        }
                        other => other,
                    })?;
                }
                conn.exchange(&self.config, request.clone(), deadline)
            })
            .and_then(accept);
        if result.is_err() {
            *guard = None;
        }
        result.map_err(|e| e.into_store_error(&self.store_name))
    }

    /// Runs `exchange` over the connection (made first if needed, starting the broker if
    /// configured to), and once more over a new connection when the first ended before the
    /// broker answered hello: no broker took it, so it is as if none had answered. The
    /// callers make sure that such an exchange sent nothing it would be wrong to send twice.
    /// A failure drops the connection.
    fn on_connection<T>(
        &self,
        guard: &mut Option<Conn>,
        mut exchange: impl FnMut(&mut Conn, Instant) -> std::result::Result<T, ClientError>,
    ) -> std::result::Result<T, ClientError> {
        let mut again = true;
        loop {
            let conn = match self.connected(guard) {
                Ok(conn) => conn,
                // Sending it again found no broker (or could not start one): nothing of this
                // request reached a broker.
                Err(ClientError::Transport(then)) if !again => {
                    return Err(TransportError::StoppedBeforeSent(Box::new(then)).into())
                }
                Err(err) => return Err(err),
            };
            // From now: the wait for a broker being started has a bound of its own.
            let deadline = Instant::now() + self.config.timeout;
            let result = exchange(conn, deadline);
            let unanswered = conn.info.is_none();
            if let Some(info) = &conn.info {
                self.keeps_change_times
                    .store(info.keeps_change_times, Ordering::Relaxed);
            }
            if result.is_err() {
                *guard = None;
            }
            match result {
                Err(ClientError::Transport(TransportError::Closed)) if unanswered && again => {
                    tracing::debug!(
                        "the broker closed the connection before answering hello; connecting again"
                    );
                    again = false;
                }
                // A stopping broker shut its reading side: nothing it could carry out was
                // sent.
                Err(ClientError::Transport(TransportError::NotSent)) if again => {
                    tracing::debug!(
                        "the broker closed the connection before the request was sent; connecting again"
                    );
                    again = false;
                }
                result => return result,
            }
        }
    }
}

impl Conn {
    /// Writes hello if it has not been written, then reads its reply if not read yet.
    fn greet(
        &mut self,
        config: &ClientConfig,
        deadline: Instant,
    ) -> std::result::Result<ServerInfo, ClientError> {
        if !self.greeted {
            let hello = encode_request(&hello_request(config))?;
            self.write(&hello, deadline, config.timeout)?;
            self.greeted = true;
        }
        self.read_hello_reply(deadline, config.timeout)
    }

    fn read_hello_reply(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> std::result::Result<ServerInfo, ClientError> {
        if let Some(info) = &self.info {
            return Ok(info.clone());
        }
        let frame = self.read_frame(deadline, timeout)?;
        let info = read_hello(frame)?;
        self.info = Some(info.clone());
        Ok(info)
    }

    fn exchange(
        &mut self,
        config: &ClientConfig,
        request: Request,
        deadline: Instant,
    ) -> std::result::Result<Reply, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = encode_request(&RequestFrame { id, request })?;
        if self.greeted {
            self.write(&frame, deadline, config.timeout)?;
        } else {
            // One write, one wake-up of the broker, one round trip for both.
            let mut both = encode_request(&hello_request(config))?;
            both.extend_from_slice(&frame);
            self.write(&both, deadline, config.timeout)?;
            self.greeted = true;
        }
        self.read_hello_reply(deadline, config.timeout)?;
        match self.read_frame(deadline, config.timeout)? {
            ServerFrame::Reply { id: got, reply } if got == id => Ok(reply),
            ServerFrame::Error {
                id: Some(got),
                error,
            } if got == id => Err(ClientError::Remote(error)),
            // The broker is closing this connection, for a reason this request reports.
            ServerFrame::Error { id: None, error } => Err(ClientError::Remote(error)),
            // No subscription is ever made on this connection, and every earlier request was
            // answered before its call returned: anything else is a broken broker.
            other => Err(TransportError::Unexpected(format!(
                "expected the reply to request {id}, got {}",
                super::describe(&other)
            ))
            .into()),
        }
    }

    fn write(
        &mut self,
        bytes: &[u8],
        deadline: Instant,
        timeout: Duration,
    ) -> std::result::Result<(), TransportError> {
        let left = remaining(deadline, timeout)?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|e| TransportError::Frame(e.into()))?;
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                TransportError::TimedOut(timeout)
            }
            // Not whole: the broker reads only whole frames (and a part of one is never
            // completed: the connection is dropped).
            _ => TransportError::NotSent,
        })
    }

    /// The next whole frame from the broker, decoded.
    fn read_frame(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> std::result::Result<ServerFrame, TransportError> {
        loop {
            if let Some(len) = frame_len(&self.buf[..self.filled])? {
                let frame = decode::<ServerFrame>(&self.buf[HEADER_LEN..len]);
                // Decoded: the frame's bytes (a `get` reply's value) are not needed any more.
                // Zeroize the tail that moving what follows to the front leaves behind, rather
                // than keep them for as long as the client lives (found in an API review).
                let left = self.filled - len;
                self.buf.copy_within(len..self.filled, 0);
                self.buf[left..self.filled].zeroize();
                self.filled = left;
                return Ok(frame?);
            }
            // The header is known by now if enough bytes came: make room for the whole frame
            // (frame_len refused a body over the limit already).
            let wanted = match self.buf[..self.filled].get(..HEADER_LEN) {
                Some(header) => {
                    HEADER_LEN + u32::from_be_bytes(header.try_into().expect("4 bytes")) as usize
                }
                None => HEADER_LEN,
            };
            if self.buf.len() < wanted {
                // Into a new zeroizing buffer: growing in place could leave a copy of the old
                // bytes behind in freed memory.
                let mut bigger = Zeroizing::new(vec![0; wanted.max(2 * self.buf.len())]);
                bigger[..self.filled].copy_from_slice(&self.buf[..self.filled]);
                self.buf = bigger;
            }
            let left = remaining(deadline, timeout)?;
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|e| TransportError::Frame(e.into()))?;
            match self.stream.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Err(TransportError::Closed),
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(TransportError::TimedOut(timeout))
                }
                Err(_) => return Err(TransportError::Closed),
            }
        }
    }
}

/// What is left of the call's time; a socket timeout of zero would mean "none", so an
/// exhausted deadline is a timeout here.
fn remaining(
    deadline: Instant,
    timeout: Duration,
) -> std::result::Result<Duration, TransportError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(TransportError::TimedOut(timeout));
    }
    Ok(left)
}

impl Store for OneShotClient {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "broker",
            location: self.config.paths.socket.display().to_string(),
            protection: "the broker process's store, reached over a same-user socket".to_owned(),
        }
    }

    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let request = Request::Get {
            key: WireKey(key.clone()),
        };
        self.call(
            request,
            |reply| expect_reply!(reply, Get { value } => value.map(|v| v.0)),
        )
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        let request = Request::Set {
            key: WireKey(key.clone()),
            value: WireValue(value.clone()),
            unless_changed_after: None,
        };
        self.call(request, |reply| expect_reply!(reply, Set { .. } => ()))
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        let request = Request::Delete {
            key: WireKey(key.clone()),
            unless_changed_after: None,
        };
        self.call(
            request,
            |reply| expect_reply!(reply, Delete { deleted, .. } => deleted),
        )
    }

    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: std::time::SystemTime,
    ) -> Result<bool> {
        let request = conditional_write(key, value, after);
        self.call(request, |reply| written(reply, value.is_some()))
    }

    /// What the broker said in the latest hello reply this client read, without blocking:
    /// `false` before the first (call [`hello`](Self::hello) first to know at once).
    ///
    /// It never connects or waits (not even for another thread's call): `AsyncSecretStorage`
    /// asks it from async code, where blocking on a socket stalls the caller's runtime (found
    /// in an API review). `false` is the answer that promises nothing: that a repair's
    /// conditional write may not be refused, which holds of any broker.
    fn keeps_change_times(&self) -> bool {
        self.keeps_change_times.load(Ordering::Relaxed)
    }

    fn deleted_at(&self, key: &SecretKey) -> Result<Option<std::time::SystemTime>> {
        let request = Request::DeletedAt {
            key: WireKey(key.clone()),
        };
        self.call(request, |reply| {
            expect_reply!(reply, DeletedAt { deleted_at } => deleted_at.map(super::from_nanos))
        })
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        let mut pages = super::KeyPages::default();
        loop {
            let request = pages.request();
            if self.call(request, |reply| pages.take(reply))? {
                return Ok(pages.keys);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encode;

    /// A `get` reply read and decoded must not stay in the buffer for the client's life (found
    /// in an API review: the tail left behind by moving the unread bytes to the front was
    /// never cleared).
    #[test]
    fn a_decoded_frame_leaves_none_of_its_bytes_in_the_buffer() {
        let (stream, mut broker) = UnixStream::pair().unwrap();
        let mut conn = Conn {
            stream,
            buf: Zeroizing::new(vec![0; 1024]),
            filled: 0,
            next_id: 1,
            info: None,
            greeted: true,
        };
        let value = SecretValue::from_slice(b"hunter2-SECRET-hunter2-SECRET");
        let get = encode(&ServerFrame::Reply {
            id: 1,
            reply: Reply::Get {
                value: Some(WireValue(value.clone())),
            },
        })
        .unwrap();
        let resync = encode(&ServerFrame::Resync { missed: 1 }).unwrap();
        let marker = &get[get.len() - 20..];
        let holds_the_get = |buf: &[u8]| buf.windows(marker.len()).any(|w| w == marker);
        let deadline = Instant::now() + Duration::from_secs(5);

        // Both frames at once, then one after the other.
        broker.write_all(&get).unwrap();
        broker.write_all(&resync).unwrap();
        let timeout = Duration::from_secs(5);
        assert!(matches!(
            conn.read_frame(deadline, timeout).unwrap(),
            ServerFrame::Reply { reply: Reply::Get { value: Some(WireValue(v)) }, .. } if v == value
        ));
        assert!(!holds_the_get(&conn.buf), "the get reply is still buffered");
        assert!(matches!(
            conn.read_frame(deadline, timeout).unwrap(),
            ServerFrame::Resync { missed: 1 }
        ));
        broker.write_all(&get).unwrap();
        conn.read_frame(deadline, timeout).unwrap();
        assert!(!holds_the_get(&conn.buf), "the get reply is still buffered");
    }
}
