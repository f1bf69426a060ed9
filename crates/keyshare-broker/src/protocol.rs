//! The wire protocol: length-prefixed JSON frames.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (one object).
//! The length excludes the prefix and is at most [`MAX_FRAME_LEN`]; a longer length closes the
//! connection before anything is read or allocated. Values travel as standard base64 (with
//! padding) in the `value` field. `docs/protocol.md` is the reference for other languages; this
//! module is the reference implementation and its tests hold the fixed vectors.
//!
//! Buffers that may hold a secret value are zeroized when dropped, and no type here prints a
//! value in its `Debug` output.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use keyshare::{Error, SecretKey, SecretValue, UnavailableReason};

/// The protocol version this build speaks. A hello with any other version is refused with
/// [`ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest frame body accepted, in bytes: 1 MiB. A 256 KiB value is about 342 KiB in
/// base64, plus a key of at most 4 KiB (24 KiB when every byte needs a JSON escape).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// The largest value a `set` frame is sure to carry within [`MAX_FRAME_LEN`], whatever its key
/// (up to [`MAX_KEY_LEN`](keyshare::model::MAX_KEY_LEN) bytes, each escaped by JSON as
/// `\u00XX` at worst), id and condition: 767,922 bytes (750 KiB), whose base64 is 4/3 as long.
///
/// The clients refuse a larger value before sending anything, with
/// [`ClientError::ValueTooLarge`](crate::client::ClientError::ValueTooLarge)
/// ([`keyshare::Error::TooLarge`] with this limit through [`keyshare::Store`]): no broker could
/// ever take it, so it is not an outage to retry. A store's own limit is usually lower (256
/// KiB by default), and the broker refuses a value over it with `too_large` and that limit.
pub const MAX_VALUE_LEN: usize = (MAX_FRAME_LEN - SET_FRAME_OVERHEAD) / 4 * 3;

/// The bytes of the largest `set` frame body that are not the value's base64.
const SET_FRAME_OVERHEAD: usize = r#"{"id":18446744073709551615,"op":"set","key":""#.len()
    + 6 * keyshare::model::MAX_KEY_LEN
    + r#"","value":""#.len()
    + r#"","unless_changed_after":18446744073709551615}"#.len();

/// The length of the frame header.
pub const HEADER_LEN: usize = 4;

/// Why a frame could not be decoded. Any of these closes the connection it arrived on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {len} bytes is over the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
    },
    /// The connection ended in the middle of a frame.
    #[error("connection closed in the middle of a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes announced (header included).
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// A frame started and did not arrive in full within the reader's time limit.
    #[error(
        "frame not complete within {limit:?} of its start ({got} of {expected} bytes arrived)"
    )]
    Stalled {
        /// The time limit.
        limit: Duration,
        /// Bytes announced (header included; 4 when the header itself is incomplete).
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// The body is not a valid message. The text names the field, never a value.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Reading or writing the socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Finds the first complete frame in `buf`: `Ok(Some(n))` when `buf` starts with a complete
/// frame whose total length (header included) is `n`, `Ok(None)` when more bytes are needed,
/// and [`FrameError::TooLarge`] as soon as the header announces an oversized body (before the
/// body has arrived, so nothing is buffered for it).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    let total = HEADER_LEN + len;
    Ok((buf.len() >= total).then_some(total))
}

/// Encodes a message as one frame (header and body) in a buffer that is zeroized on drop.
pub fn encode<T: Serialize>(message: &T) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    encode_with_capacity(message, 128)
}

/// [`encode`] into a buffer with room for `capacity` bytes (header included) from the start.
/// A frame that fits is never moved while it grows: each move would leave a copy of its bytes
/// behind, not zeroized, and the last doubling can leave up to half the buffer unused.
pub fn encode_with_capacity<T: Serialize>(
    message: &T,
    capacity: usize,
) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(capacity.min(HEADER_LEN + MAX_FRAME_LEN)));
    buf.extend_from_slice(&[0; HEADER_LEN]);
    serde_json::to_writer(&mut *buf, message)
        .map_err(|e| FrameError::Malformed(format!("cannot encode: {e}")))?;
    let len = buf.len() - HEADER_LEN;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge { len });
    }
    buf[..HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes a frame body (without the header).
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(describe_json_error(&e)))
}

/// serde_json's messages quote the offending token for some errors ("invalid type: string
/// \"...\""), which could be a value. Keep only the category and the position.
fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match err.classify() {
        Category::Syntax => "not valid JSON",
        Category::Eof => "JSON ends early",
        Category::Data => "a field is missing, or of the wrong type or value",
        Category::Io => "read error",
    };
    let text = err.to_string();
    let text = text.split(" at line").next().unwrap_or("");
    // Messages like "missing field `key`", "duplicate field `key`" and "unknown variant `x`,
    // expected ..." name the field or the operation, which is what a client author needs, and
    // never a value; so do this crate's own ("`value` is not valid base64"). "invalid type:
    // string \"...\", expected u64" quotes what it got: only its kind is kept (found by QA: a
    // bad base64 value or a string id said only "missing, unknown or of the wrong type").
    let detail = if [
        "missing field",
        "duplicate field",
        "unknown variant",
        "`value` is not",
    ]
    .iter()
    .any(|start| text.starts_with(start))
    {
        text.to_owned()
    } else if let Some((prefix, rest)) = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|prefix| Some((*prefix, text.strip_prefix(prefix)?)))
    {
        let kind = rest.split([' ', ',']).next().unwrap_or("");
        match rest.rsplit_once(", expected ") {
            Some((_, expected)) => format!("{prefix}{kind}, expected {expected}"),
            None => format!("{prefix}{kind}"),
        }
    } else {
        String::new()
    };
    if detail.is_empty() {
        format!("{what} (line {}, column {})", err.line(), err.column())
    } else {
        format!("{what}: {detail}")
    }
}

/// What a broker reads of a connection's first frame before the rest: whether it is a hello,
/// and which protocol version it speaks. Only `id`, `op` and `protocol` must have their usual
/// shape, so that a hello of another version is answered with a clear `version_mismatch`
/// whatever its other fields became in that version (`docs/protocol.md`, "Versioning").
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HelloVersion {
    /// The request's id.
    pub id: u64,
    /// The protocol version the client speaks (wider than [`PROTOCOL_VERSION`]'s type: a later
    /// version may not fit it, and must still be reported as what it is).
    pub protocol: u64,
    /// The client's name, for logs, when it is a string.
    pub client: Option<String>,
    /// The client's version, for logs, when it is a string.
    pub client_version: Option<String>,
}

/// Reads a hello's id and protocol version (and the client's name and version, for logs),
/// ignoring the rest of the frame. `None` when `body` is not a JSON object with `"op":"hello"`,
/// a numeric `id` and a numeric `protocol`: decode the whole frame then to learn what it is.
pub fn hello_version(body: &[u8]) -> Option<HelloVersion> {
    #[derive(Deserialize)]
    struct Probe {
        id: u64,
        op: String,
        protocol: u64,
        #[serde(default, deserialize_with = "text_or_none")]
        client: Option<String>,
        #[serde(default, deserialize_with = "text_or_none")]
        client_version: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    (probe.op == "hello").then_some(HelloVersion {
        id: probe.id,
        protocol: probe.protocol,
        client: probe.client,
        client_version: probe.client_version,
    })
}

/// A string field of a later version's hello, which may have become something else.
fn text_or_none<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(text) => Some(text),
        _ => None,
    })
}

/// A secret value on the wire: standard base64 text. Its `Debug` is redacted like
/// [`SecretValue`]'s.
#[derive(Clone, PartialEq, Eq)]
pub struct WireValue(pub SecretValue);

impl fmt::Debug for WireValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for WireValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = Zeroizing::new(
            base64::engine::general_purpose::STANDARD.encode(self.0.expose_secret()),
        );
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for WireValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = WireValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<WireValue, E> {
                let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
                base64::engine::general_purpose::STANDARD
                    .decode_vec(text, &mut bytes)
                    .map_err(|_| E::custom("`value` is not valid base64"))?;
                Ok(WireValue(SecretValue::from(bytes)))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A key on the wire: a JSON string checked with [`SecretKey::new`] on arrival.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireKey(pub SecretKey);

impl Serialize for WireKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for WireKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SecretKey::new(text)
            .map(WireKey)
            .map_err(|e| serde::de::Error::custom(format!("bad key: {e}")))
    }
}

/// A request from client to broker, with the id the reply will carry. Ids are chosen by the
/// client; the broker answers every request exactly once, possibly out of order (requests on
/// different keys run in parallel), so a client may pipeline.
pub type RequestFrame = RequestFrameOf<WireKey>;

/// A request frame as the broker decodes it: keys still as the client sent them, checked
/// afterwards ([`UncheckedRequestFrame::check_keys`]) so that a bad key fails its request,
/// not the whole connection.
pub type UncheckedRequestFrame = RequestFrameOf<String>;

/// A request and its id, with keys of type `K`: [`RequestFrame`] or [`UncheckedRequestFrame`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrameOf<K> {
    /// The client's request id.
    pub id: u64,
    /// The operation.
    #[serde(flatten)]
    pub request: RequestOf<K>,
}

/// The operations, with checked keys.
pub type Request = RequestOf<WireKey>;

fn null_is_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

/// The operations, with keys of type `K` (see [`RequestFrameOf`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
// The explicit bound: serde would otherwise ask `K: Default` for subscribe's defaulted `keys`.
#[serde(
    tag = "op",
    rename_all = "snake_case",
    bound(deserialize = "K: Deserialize<'de>")
)]
#[non_exhaustive]
pub enum RequestOf<K> {
    /// Must be the first request on a connection.
    Hello {
        /// The client program's name, for logs.
        client: String,
        /// The client program's version, for logs.
        client_version: String,
        /// The protocol version the client speaks.
        protocol: u32,
        /// The app the client speaks for (`code`, `agents`, `cli`, ...).
        app: String,
        /// The shared store the client means, named as the hello reply's `store` names it. A
        /// broker that serves another store refuses hello with `store_mismatch`, so a client
        /// told to use one store never reads or writes another through a broker started
        /// with other settings.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expect_store: Option<String>,
        /// The client requires the OS keyring to protect the secrets (the keyring itself, or a
        /// vault whose key it holds). A broker whose store is protected otherwise refuses hello
        /// with `protection`.
        /// `null` counts as absent, as for the other optional fields (found in review of the
        /// protocol document).
        #[serde(
            default,
            deserialize_with = "null_is_false",
            skip_serializing_if = "std::ops::Not::not"
        )]
        require_os_keyring: bool,
    },
    /// Reads a value; the reply's `value` is `null` when there is none.
    Get {
        /// The key.
        key: K,
    },
    /// Writes a value. The reply comes once the store has acknowledged it (durably, for a
    /// durable store).
    Set {
        /// The key.
        key: K,
        /// The value.
        value: WireValue,
        /// A repair's condition: write only if the key did not change after this time
        /// (nanoseconds since the Unix epoch); the reply's `written` says whether it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unless_changed_after: Option<u64>,
    },
    /// Deletes a value; the reply says whether there was one.
    Delete {
        /// The key.
        key: K,
        /// As for `set`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unless_changed_after: Option<u64>,
    },
    /// When the store recorded the key's last delete, if it has no value now: what an
    /// import's dry run asks so that it can say which legacy secrets it would leave deleted.
    /// Read-only.
    DeletedAt {
        /// The key.
        key: K,
    },
    /// Lists the keys this app may see: all in one reply, or, with `limit`, a page of them
    /// in byte order after `after`, the reply saying `more` when others follow.
    Keys {
        /// With `limit`: only keys greater than this (byte order), for the next page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// Pages: at most this many keys per reply (and never more than fit a frame).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Starts (or replaces) this connection's change-event subscription.
    Subscribe {
        /// Only these keys; `null` or absent for every key this app may see.
        #[serde(default)]
        keys: Option<Vec<K>>,
    },
    /// Reports the broker's state.
    Status,
}

impl<K> RequestOf<K> {
    /// The operation's name, for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            RequestOf::Hello { .. } => "hello",
            RequestOf::Get { .. } => "get",
            RequestOf::Set { .. } => "set",
            RequestOf::Delete { .. } => "delete",
            RequestOf::DeletedAt { .. } => "deleted_at",
            RequestOf::Keys { .. } => "keys",
            RequestOf::Subscribe { .. } => "subscribe",
            RequestOf::Status => "status",
        }
    }
}

impl UncheckedRequestFrame {
    /// Checks every key with [`SecretKey::new`]. A key that fails is its request's fault, not
    /// the connection's: the broker answers that request with `invalid` and reads on.
    pub fn check_keys(self) -> Result<RequestFrame, InvalidKey> {
        let id = self.id;
        let op = self.request.op();
        let check = |index: Option<usize>, key: String| {
            SecretKey::new(key)
                .map(WireKey)
                .map_err(|error| InvalidKey {
                    id,
                    op,
                    index,
                    error,
                })
        };
        let request = match self.request {
            RequestOf::Hello {
                client,
                client_version,
                protocol,
                app,
                expect_store,
                require_os_keyring,
            } => RequestOf::Hello {
                client,
                client_version,
                protocol,
                app,
                expect_store,
                require_os_keyring,
            },
            RequestOf::Get { key } => RequestOf::Get {
                key: check(None, key)?,
            },
            RequestOf::Set {
                key,
                value,
                unless_changed_after,
            } => RequestOf::Set {
                key: check(None, key)?,
                value,
                unless_changed_after,
            },
            RequestOf::Delete {
                key,
                unless_changed_after,
            } => RequestOf::Delete {
                key: check(None, key)?,
                unless_changed_after,
            },
            RequestOf::DeletedAt { key } => RequestOf::DeletedAt {
                key: check(None, key)?,
            },
            RequestOf::Keys { after, limit } => RequestOf::Keys { after, limit },
            RequestOf::Subscribe { keys } => RequestOf::Subscribe {
                keys: keys
                    .map(|keys| {
                        (0..)
                            .zip(keys)
                            .map(|(index, key)| check(Some(index), key))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?,
            },
            RequestOf::Status => RequestOf::Status,
        };
        Ok(RequestFrame { id, request })
    }
}

/// A request whose key is not a valid [`SecretKey`] (empty, too long, with a NUL). Names what
/// is wrong with the key, never the key itself: a confused client may have sent a value there.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {}{error}", index.map(|i| format!("keys[{i}]: ")).unwrap_or_default())]
#[non_exhaustive]
pub struct InvalidKey {
    /// The request's id.
    pub id: u64,
    /// The request's operation.
    pub op: &'static str,
    /// Which of `subscribe`'s keys, counted from 0; `None` for an operation's one `key`.
    pub index: Option<usize>,
    /// Why the key was refused ([`keyshare::Error::Invalid`]; it never holds the key).
    pub error: Error,
}

/// A frame from broker to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerFrame {
    /// The successful answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        #[serde(flatten)]
        reply: Reply,
    },
    /// The failed answer to request `id`; `id` is `null` when the failure is not tied to a
    /// request (a malformed frame, a refused connection), after which the broker closes the
    /// connection.
    Error {
        /// The request's id, if known.
        id: Option<u64>,
        /// What went wrong.
        #[serde(flatten)]
        error: RemoteError,
    },
    /// A change, pushed to a subscribed connection.
    Event {
        /// The broker-wide sequence number. It increases by one per change; a subscriber
        /// restricted to some keys sees gaps, and only a `resync` frame means events were lost.
        seq: u64,
        /// The key that changed.
        key: WireKey,
        /// What happened.
        kind: EventKind,
    },
    /// The subscriber fell behind and `missed` events were dropped: re-read what it caches.
    Resync {
        /// How many events were lost.
        missed: u64,
    },
}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A value was written.
    Set,
    /// The value was deleted.
    Delete,
}

/// A successful answer, tagged with the operation it answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reply {
    /// Answer to `hello`.
    Hello {
        /// The broker program's name.
        server: String,
        /// The broker program's version.
        server_version: String,
        /// The protocol version in use.
        protocol: u32,
        /// Which shared store the broker serves, named as a process opening that store
        /// directly would name it (`vault:<path>`, `secret-service:<service>`, ...), so an app
        /// can key its own records about that store (its repair journal) the same way through
        /// the broker and without it. Absent when the broker was not told.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store: Option<String>,
        /// Whether the store records when each key last changed, so that a conditional `set`
        /// or `delete` (`unless_changed_after`) can refuse; absent means no.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        keeps_change_times: bool,
    },
    /// Answer to `get`: `null` when the key has no value.
    Get {
        /// The value, if any.
        value: Option<WireValue>,
    },
    /// Answer to `set`.
    Set {
        /// For a conditional set: whether it wrote (`false`: the key changed later). Absent
        /// for an unconditional one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        written: Option<bool>,
    },
    /// Answer to `delete`.
    Delete {
        /// Whether a value was deleted (for a conditional delete: whether it deleted).
        deleted: bool,
        /// As for `set`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        written: Option<bool>,
    },
    /// Answer to `deleted_at`.
    DeletedAt {
        /// Nanoseconds since the Unix epoch of the key's last delete; `null` when it has a
        /// value, was never deleted, or the store records no deletes.
        deleted_at: Option<u64>,
    },
    /// Answer to `keys`.
    Keys {
        /// The keys.
        keys: Vec<WireKey>,
        /// For a paged `keys`: more keys follow; ask again with `after` = the last key here.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Answer to `subscribe`: events with a greater `seq` than this follow.
    Subscribe {
        /// The latest sequence number at the time of subscribing.
        last_seq: u64,
    },
    /// Answer to `status`.
    Status(BrokerStatus),
}

/// What `status` reports. Never holds a value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BrokerStatus {
    /// The broker program's version.
    pub server_version: String,
    /// The broker's process id.
    pub pid: u32,
    /// Open connections.
    pub connections: u64,
    /// The latest change sequence number.
    pub last_seq: u64,
    /// The shared store, for humans.
    pub shared_store: String,
    /// The legacy store, if any, for humans.
    pub legacy_store: Option<String>,
    /// Keys whose shared copy waits for a repair.
    pub pending_repairs: u64,
    /// The access policy in force, as [`AccessPolicy::fingerprint`](crate::access::AccessPolicy::fingerprint)
    /// names it, so a client can tell whether the broker decides by the policy it expects;
    /// absent from brokers that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

/// The kind of a remote failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The store cannot answer now (locked, timed out, not running); `reason` says which.
    Unavailable,
    /// The broker refused: another user, an app pinned to other executables, or a key not
    /// shared with this app.
    Denied,
    /// A key or argument was not acceptable.
    Invalid,
    /// The value is over the store's limit; `limit` and `actual` say by how much.
    TooLarge,
    /// The stored data for the key is corrupt (and left untouched).
    Corrupt,
    /// The client broke the protocol (malformed frame, request before hello, ...). The broker
    /// closes the connection after sending it.
    Protocol,
    /// The client's protocol version is not the broker's. The broker closes the connection.
    VersionMismatch,
    /// The broker serves another store than the one hello's `expect_store` names. The broker
    /// closes the connection.
    StoreMismatch,
    /// Hello required a protection (`require_os_keyring`) the broker's store does not have.
    /// The broker closes the connection.
    Protection,
    /// The store failed with an I/O error of its own (disk full, read-only file system): not
    /// an outage that passes by itself, so not `unavailable`. Brokers before this code sent
    /// `unavailable` (`backend`) instead, which is also what older clients make of it.
    Io,
    /// A code this build does not know (sent by a newer broker).
    #[serde(other)]
    Unknown,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Denied => "denied",
            ErrorCode::Invalid => "invalid",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Corrupt => "corrupt",
            ErrorCode::Protocol => "protocol",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::StoreMismatch => "store_mismatch",
            ErrorCode::Protection => "protection",
            ErrorCode::Io => "io",
            ErrorCode::Unknown => "unknown",
        })
    }
}

/// A failure reported by the broker: the request reached it and it said no. Kept apart from
/// [`crate::client::TransportError`] (the request may not have reached it at all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("broker said {code}: {message}")]
pub struct RemoteError {
    /// The kind.
    pub code: ErrorCode,
    /// For humans; names keys and limits, never values.
    pub message: String,
    /// For `unavailable`: `locked`, `denied`, `timed_out`, `not_running` or `backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `too_large`: the limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// For `too_large`: the offered size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<u64>,
    /// For `corrupt`: the key, when the corruption is local to one key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// For `version_mismatch`: the protocol version the broker speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
}

impl RemoteError {
    /// An error with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
            reason: None,
            limit: None,
            actual: None,
            key: None,
            protocol: None,
        }
    }

    /// The broker-side translation of a store error.
    pub fn from_store_error(err: &Error) -> Self {
        match err {
            Error::Invalid { .. } => RemoteError::new(ErrorCode::Invalid, err.to_string()),
            Error::TooLarge { limit, actual } => RemoteError {
                limit: Some(*limit as u64),
                actual: Some(*actual as u64),
                ..RemoteError::new(ErrorCode::TooLarge, err.to_string())
            },
            Error::Unavailable { reason, .. } => RemoteError {
                reason: Some(reason_name(*reason).to_owned()),
                ..RemoteError::new(ErrorCode::Unavailable, err.to_string())
            },
            // The client says "stored data for key ... is corrupt" itself, with its `key`:
            // the message carries the rest (found by QA: the phrase came twice).
            Error::Corrupt { store, key, detail } => RemoteError {
                key: key.clone(),
                ..RemoteError::new(ErrorCode::Corrupt, format!("{store}: {detail}"))
            },
            // Kept apart from an outage, so that a client fails as an open of the store in its
            // own process would (found by QA: a full disk was exit 3, "unavailable, try
            // again", through the broker and exit 7 directly).
            Error::Io { .. } => RemoteError::new(ErrorCode::Io, err.to_string()),
            // Missing protection is the store's trouble, not the client's: the client may
            // retry later.
            _ => RemoteError {
                reason: Some(reason_name(UnavailableReason::Backend).to_owned()),
                ..RemoteError::new(ErrorCode::Unavailable, err.to_string())
            },
        }
    }

    /// The client-side translation into the library's error, so a broker-backed store fails
    /// the way any store does. `store` names the broker (socket path) in the message.
    pub fn into_store_error(self, store: &str) -> Error {
        match self.code {
            ErrorCode::Invalid => Error::invalid("request", self.message),
            ErrorCode::TooLarge => match (self.limit, self.actual) {
                (Some(limit), Some(actual)) => Error::TooLarge {
                    limit: limit as usize,
                    actual: actual as usize,
                },
                _ => Error::invalid("request", self.message),
            },
            ErrorCode::Corrupt => Error::Corrupt {
                store: store.to_owned(),
                key: self.key,
                detail: self.message,
            },
            ErrorCode::Denied => Error::unavailable(store, UnavailableReason::Denied, self.message),
            ErrorCode::StoreMismatch => Error::invalid("broker store", self.message),
            ErrorCode::Protection => Error::ProtectionUnavailable(self.message),
            // The OS error itself stayed in the broker; its words are in the message.
            ErrorCode::Io => Error::io(store, std::io::Error::other(self.message)),
            ErrorCode::Unavailable => {
                let reason = self
                    .reason
                    .as_deref()
                    .and_then(reason_from_name)
                    .unwrap_or(UnavailableReason::Backend);
                Error::unavailable(store, reason, self.message)
            }
            ErrorCode::Protocol | ErrorCode::VersionMismatch | ErrorCode::Unknown => {
                Error::unavailable(
                    store,
                    UnavailableReason::Backend,
                    format!("{}: {}", self.code, self.message),
                )
            }
        }
    }
}

fn reason_name(reason: UnavailableReason) -> &'static str {
    match reason {
        UnavailableReason::Locked => "locked",
        UnavailableReason::Denied => "denied",
        UnavailableReason::TimedOut => "timed_out",
        UnavailableReason::NotRunning => "not_running",
        _ => "backend",
    }
}

fn reason_from_name(name: &str) -> Option<UnavailableReason> {
    Some(match name {
        "locked" => UnavailableReason::Locked,
        "denied" => UnavailableReason::Denied,
        "timed_out" => UnavailableReason::TimedOut,
        "not_running" => UnavailableReason::NotRunning,
        "backend" => UnavailableReason::Backend,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> WireKey {
        WireKey(SecretKey::new(s).unwrap())
    }

    fn body(frame: &[u8]) -> &str {
        let n = frame_len(frame).unwrap().unwrap();
        assert_eq!(n, frame.len());
        std::str::from_utf8(&frame[HEADER_LEN..]).unwrap()
    }

    /// [`MAX_VALUE_LEN`] is what it says: a value of that size fits in a `set` frame with the
    /// longest key that JSON escapes the most, the largest id and a condition, and one byte
    /// more does not.
    #[test]
    fn the_largest_value_fits_in_the_largest_set_frame_and_one_byte_more_does_not() {
        let worst_key = key(&"\u{1}".repeat(keyshare::model::MAX_KEY_LEN));
        let set = |len: usize| RequestFrame {
            id: u64::MAX,
            request: Request::Set {
                key: worst_key.clone(),
                value: WireValue(SecretValue::from(vec![0xff; len])),
                unless_changed_after: Some(u64::MAX),
            },
        };
        let fits = encode(&set(MAX_VALUE_LEN)).unwrap();
        assert!(fits.len() - HEADER_LEN <= MAX_FRAME_LEN);
        assert!(
            MAX_FRAME_LEN - (fits.len() - HEADER_LEN) < 4,
            "a larger value would fit: {} bytes left",
            MAX_FRAME_LEN - (fits.len() - HEADER_LEN)
        );
        assert!(matches!(
            encode(&set(MAX_VALUE_LEN + 1)),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(MAX_VALUE_LEN, 767_922, "docs/protocol.md names it");
    }

    /// The vectors of `docs/protocol.md`: if one changes, the document and every client in
    /// another language change with it.
    #[test]
    fn request_vectors() {
        let cases: Vec<(RequestFrame, &str)> = vec![
            (
                RequestFrame {
                    id: 1,
                    request: Request::Hello {
                        client: "keyshare-cli".into(),
                        client_version: "0.1.0".into(),
                        protocol: 1,
                        app: "code".into(),
                        expect_store: None,
                        require_os_keyring: false,
                    },
                },
                r#"{"id":1,"op":"hello","client":"keyshare-cli","client_version":"0.1.0","protocol":1,"app":"code"}"#,
            ),
            (
                RequestFrame {
                    id: 1,
                    request: Request::Hello {
                        client: "keyshare-cli".into(),
                        client_version: "0.1.0".into(),
                        protocol: 1,
                        app: "code".into(),
                        expect_store: Some(
                            "vault:/home/u/.local/share/keyshare/stable/vault.db#dev.keyshare.shared-secrets".into(),
                        ),
                        require_os_keyring: true,
                    },
                },
                r#"{"id":1,"op":"hello","client":"keyshare-cli","client_version":"0.1.0","protocol":1,"app":"code","expect_store":"vault:/home/u/.local/share/keyshare/stable/vault.db#dev.keyshare.shared-secrets","require_os_keyring":true}"#,
            ),
            (
                RequestFrame {
                    id: 2,
                    request: Request::Set {
                        key: key("github.auth"),
                        value: WireValue(SecretValue::from_slice(b"token")),
                        unless_changed_after: None,
                    },
                },
                r#"{"id":2,"op":"set","key":"github.auth","value":"dG9rZW4="}"#,
            ),
            (
                RequestFrame {
                    id: 7,
                    request: Request::Set {
                        key: key("github.auth"),
                        value: WireValue(SecretValue::from_slice(b"token")),
                        unless_changed_after: Some(1_795_000_000_123_456_789),
                    },
                },
                r#"{"id":7,"op":"set","key":"github.auth","value":"dG9rZW4=","unless_changed_after":1795000000123456789}"#,
            ),
            (
                RequestFrame {
                    id: 3,
                    request: Request::Get {
                        key: key("github.auth"),
                    },
                },
                r#"{"id":3,"op":"get","key":"github.auth"}"#,
            ),
            (
                RequestFrame {
                    id: 4,
                    request: Request::Delete {
                        key: key("github.auth"),
                        unless_changed_after: None,
                    },
                },
                r#"{"id":4,"op":"delete","key":"github.auth"}"#,
            ),
            (
                RequestFrame {
                    id: 8,
                    request: Request::Delete {
                        key: key("github.auth"),
                        unless_changed_after: Some(1_795_000_000_123_456_789),
                    },
                },
                r#"{"id":8,"op":"delete","key":"github.auth","unless_changed_after":1795000000123456789}"#,
            ),
            (
                RequestFrame {
                    id: 5,
                    request: Request::Keys {
                        after: None,
                        limit: None,
                    },
                },
                r#"{"id":5,"op":"keys"}"#,
            ),
            (
                RequestFrame {
                    id: 9,
                    request: Request::DeletedAt {
                        key: key("github.auth"),
                    },
                },
                r#"{"id":9,"op":"deleted_at","key":"github.auth"}"#,
            ),
            (
                RequestFrame {
                    id: 11,
                    request: Request::Keys {
                        after: Some("github.auth".to_owned()),
                        limit: Some(1000),
                    },
                },
                r#"{"id":11,"op":"keys","after":"github.auth","limit":1000}"#,
            ),
            (
                RequestFrame {
                    id: 6,
                    request: Request::Subscribe {
                        keys: Some(vec![key("github.auth")]),
                    },
                },
                r#"{"id":6,"op":"subscribe","keys":["github.auth"]}"#,
            ),
            (
                RequestFrame {
                    id: 7,
                    request: Request::Status,
                },
                r#"{"id":7,"op":"status"}"#,
            ),
        ];
        for (frame, json) in cases {
            let encoded = encode(&frame).unwrap();
            assert_eq!(body(&encoded), json);
            assert_eq!(&encoded[..4], &(json.len() as u32).to_be_bytes());
            assert_eq!(decode::<RequestFrame>(json.as_bytes()).unwrap(), frame);
        }
        // `keys` may be omitted from subscribe.
        assert_eq!(
            decode::<RequestFrame>(br#"{"id":9,"op":"subscribe"}"#).unwrap(),
            RequestFrame {
                id: 9,
                request: Request::Subscribe { keys: None }
            }
        );
    }

    /// The part of a hello every version keeps (`docs/protocol.md`, "Versioning"): a broker
    /// reads it first, so a later version may reshape the rest of hello.
    #[test]
    fn hello_version_vectors() {
        let hello = |id, protocol, client: Option<&str>, client_version: Option<&str>| {
            Some(HelloVersion {
                id,
                protocol,
                client: client.map(str::to_owned),
                client_version: client_version.map(str::to_owned),
            })
        };
        let cases: &[(&str, Option<HelloVersion>)] = &[
            (
                r#"{"id":1,"op":"hello","client":"keyshare-cli","client_version":"0.1.0","protocol":1,"app":"code"}"#,
                hello(1, 1, Some("keyshare-cli"), Some("0.1.0")),
            ),
            (
                r#"{"id":7,"op":"hello","protocol":2}"#,
                hello(7, 2, None, None),
            ),
            (
                r#"{"id":0,"op":"hello","protocol":4294967296,"client":{"name":"x"},"client_version":2,"apps":["code"]}"#,
                hello(0, 4_294_967_296, None, None),
            ),
            // Not a hello, or not one whose version can be read: decoded in full instead.
            (r#"{"id":1,"op":"get","key":"k","protocol":2}"#, None),
            (r#"{"op":"hello","protocol":2}"#, None),
            (r#"{"id":1,"op":"hello"}"#, None),
            (r#"{"id":1,"op":"hello","protocol":"2"}"#, None),
            ("not json", None),
        ];
        for (body, expected) in cases {
            assert_eq!(&hello_version(body.as_bytes()), expected, "{body}");
        }
    }

    #[test]
    fn the_documented_get_bytes() {
        let frame = encode(&RequestFrame {
            id: 3,
            request: Request::Get {
                key: key("github.auth"),
            },
        })
        .unwrap();
        // docs/protocol.md shows these bytes.
        assert_eq!(&frame[..4], &[0, 0, 0, 39]);
        assert_eq!(&frame[4..10], b"{\"id\":");
    }

    #[test]
    fn server_vectors() {
        let cases: Vec<(ServerFrame, &str)> = vec![
            (
                ServerFrame::Reply {
                    id: 1,
                    reply: Reply::Hello {
                        server: "keyshare-broker".into(),
                        server_version: "0.1.0".into(),
                        protocol: 1,
                        store: None,
                        keeps_change_times: false,
                    },
                },
                r#"{"type":"reply","id":1,"op":"hello","server":"keyshare-broker","server_version":"0.1.0","protocol":1}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 1,
                    reply: Reply::Hello {
                        server: "keyshare-broker".into(),
                        server_version: "0.1.0".into(),
                        protocol: 1,
                        store: Some("secret-service:dev.keyshare.shared-secrets".into()),
                        keeps_change_times: false,
                    },
                },
                r#"{"type":"reply","id":1,"op":"hello","server":"keyshare-broker","server_version":"0.1.0","protocol":1,"store":"secret-service:dev.keyshare.shared-secrets"}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 1,
                    reply: Reply::Hello {
                        server: "keyshare-broker".into(),
                        server_version: "0.1.0".into(),
                        protocol: 1,
                        store: Some("vault:/v.db#s".into()),
                        keeps_change_times: true,
                    },
                },
                r#"{"type":"reply","id":1,"op":"hello","server":"keyshare-broker","server_version":"0.1.0","protocol":1,"store":"vault:/v.db#s","keeps_change_times":true}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 3,
                    reply: Reply::Get {
                        value: Some(WireValue(SecretValue::from_slice(b"token"))),
                    },
                },
                r#"{"type":"reply","id":3,"op":"get","value":"dG9rZW4="}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 3,
                    reply: Reply::Get { value: None },
                },
                r#"{"type":"reply","id":3,"op":"get","value":null}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 2,
                    reply: Reply::Set { written: None },
                },
                r#"{"type":"reply","id":2,"op":"set"}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 7,
                    reply: Reply::Set {
                        written: Some(false),
                    },
                },
                r#"{"type":"reply","id":7,"op":"set","written":false}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 8,
                    reply: Reply::Delete {
                        deleted: true,
                        written: Some(true),
                    },
                },
                r#"{"type":"reply","id":8,"op":"delete","deleted":true,"written":true}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 4,
                    reply: Reply::Delete {
                        deleted: true,
                        written: None,
                    },
                },
                r#"{"type":"reply","id":4,"op":"delete","deleted":true}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 5,
                    reply: Reply::Keys {
                        keys: vec![key("github.auth")],
                        more: false,
                    },
                },
                r#"{"type":"reply","id":5,"op":"keys","keys":["github.auth"]}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 9,
                    reply: Reply::DeletedAt {
                        deleted_at: Some(1_795_000_000_123_456_789),
                    },
                },
                r#"{"type":"reply","id":9,"op":"deleted_at","deleted_at":1795000000123456789}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 10,
                    reply: Reply::DeletedAt { deleted_at: None },
                },
                r#"{"type":"reply","id":10,"op":"deleted_at","deleted_at":null}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 11,
                    reply: Reply::Keys {
                        keys: vec![key("a")],
                        more: true,
                    },
                },
                r#"{"type":"reply","id":11,"op":"keys","keys":["a"],"more":true}"#,
            ),
            (
                ServerFrame::Reply {
                    id: 6,
                    reply: Reply::Subscribe { last_seq: 41 },
                },
                r#"{"type":"reply","id":6,"op":"subscribe","last_seq":41}"#,
            ),
            (
                ServerFrame::Event {
                    seq: 42,
                    key: key("github.auth"),
                    kind: EventKind::Set,
                },
                r#"{"type":"event","seq":42,"key":"github.auth","kind":"set"}"#,
            ),
            (
                ServerFrame::Resync { missed: 7 },
                r#"{"type":"resync","missed":7}"#,
            ),
            (
                ServerFrame::Error {
                    id: Some(8),
                    error: RemoteError::new(
                        ErrorCode::Denied,
                        "app \"agents\" may not read \"npm.token\"",
                    ),
                },
                r#"{"type":"error","id":8,"code":"denied","message":"app \"agents\" may not read \"npm.token\""}"#,
            ),
            (
                ServerFrame::Error {
                    id: None,
                    error: RemoteError {
                        protocol: Some(1),
                        ..RemoteError::new(ErrorCode::VersionMismatch, "client speaks 2")
                    },
                },
                r#"{"type":"error","id":null,"code":"version_mismatch","message":"client speaks 2","protocol":1}"#,
            ),
            (
                ServerFrame::Error {
                    id: Some(9),
                    error: RemoteError::new(
                        ErrorCode::Io,
                        "vault /v.db: committing: database or disk is full",
                    ),
                },
                r#"{"type":"error","id":9,"code":"io","message":"vault /v.db: committing: database or disk is full"}"#,
            ),
        ];
        for (frame, json) in cases {
            let encoded = encode(&frame).unwrap();
            assert_eq!(body(&encoded), json);
            assert_eq!(decode::<ServerFrame>(json.as_bytes()).unwrap(), frame);
        }
        let status = ServerFrame::Reply {
            id: 7,
            reply: Reply::Status(BrokerStatus {
                server_version: "0.1.0".into(),
                pid: 10,
                connections: 2,
                last_seq: 3,
                shared_store: "memory".into(),
                legacy_store: None,
                pending_repairs: 0,
                policy: Some("0123456789abcdef".into()),
            }),
        };
        let encoded = encode(&status).unwrap();
        assert_eq!(decode::<ServerFrame>(&encoded[4..]).unwrap(), status);
        // An error code from a newer broker still decodes.
        let future: ServerFrame =
            decode(br#"{"type":"error","id":1,"code":"rate_limited","message":"slow down"}"#)
                .unwrap();
        assert!(matches!(
            future,
            ServerFrame::Error {
                error: RemoteError {
                    code: ErrorCode::Unknown,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn frame_boundaries() {
        assert_eq!(frame_len(&[]).unwrap(), None);
        assert_eq!(frame_len(&[0, 0, 0]).unwrap(), None);
        assert_eq!(frame_len(&[0, 0, 0, 2, b'{']).unwrap(), None);
        assert_eq!(frame_len(&[0, 0, 0, 2, b'{', b'}', 9]).unwrap(), Some(6));
        let max = (MAX_FRAME_LEN as u32).to_be_bytes();
        assert_eq!(frame_len(&max).unwrap(), None);
        let over = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        assert!(matches!(
            frame_len(&over),
            Err(FrameError::TooLarge { len }) if len == MAX_FRAME_LEN + 1
        ));
        assert!(frame_len(&[0xff; 4]).is_err());
    }

    #[test]
    fn largest_value_fits_in_a_frame() {
        let value = SecretValue::new(vec![0xff; keyshare::model::DEFAULT_MAX_VALUE_LEN]);
        // The worst key: every byte a control character that JSON escapes as \u00XX.
        let key = key(&"\u{1}".repeat(keyshare::model::MAX_KEY_LEN));
        let frame = encode(&RequestFrame {
            id: u64::MAX,
            request: Request::Set {
                key,
                value: WireValue(value),
                // A repair's condition, at its longest.
                unless_changed_after: Some(u64::MAX),
            },
        })
        .unwrap();
        assert!(frame.len() <= MAX_FRAME_LEN + HEADER_LEN);
    }

    /// A corrupt value through the broker reads as one through the store, naming both, with
    /// "is corrupt" once (found by QA: the phrase and the key came twice).
    #[test]
    fn a_corrupt_value_is_said_once_through_the_broker() {
        let local = Error::Corrupt {
            store: "vault /v.db".to_owned(),
            key: Some("k".to_owned()),
            detail: "authentication failed; the entry was left untouched".to_owned(),
        };
        let remote = RemoteError::from_store_error(&local).into_store_error("broker at /s.sock");
        assert!(
            matches!(&remote, Error::Corrupt { key: Some(k), .. } if k == "k"),
            "{remote:?}"
        );
        let text = remote.to_string();
        assert_eq!(text.matches("is corrupt").count(), 1, "{text}");
        assert!(
            text.contains("broker at /s.sock")
                && text.contains("vault /v.db")
                && text.contains("authentication failed; the entry was left untouched"),
            "{text}"
        );
    }

    /// `null` in an optional field counts as absent, as the protocol document says.
    #[test]
    fn null_optional_fields_are_absent() {
        let hello = decode::<RequestFrame>(
            br#"{"id":0,"op":"hello","client":"c","client_version":"1","protocol":1,"app":"code","expect_store":null,"require_os_keyring":null}"#,
        )
        .unwrap();
        assert!(
            matches!(
                hello.request,
                Request::Hello {
                    expect_store: None,
                    require_os_keyring: false,
                    ..
                }
            ),
            "{hello:?}"
        );
        let keys =
            decode::<RequestFrame>(br#"{"id":1,"op":"keys","after":null,"limit":null}"#).unwrap();
        assert_eq!(
            keys.request,
            Request::Keys {
                after: None,
                limit: None
            }
        );
    }

    #[test]
    fn bad_bodies_are_named_without_values() {
        let cases: &[&[u8]] = &[
            b"",
            b"{",
            b"[]",
            b"null",
            br#"{"id":1}"#,
            br#"{"id":1,"op":"launch"}"#,
            br#"{"id":1,"op":"get"}"#,
            br#"{"id":1,"op":"get","key":""}"#,
            br#"{"id":1,"op":"set","key":"k","value":"hunter2-not-base64!"}"#,
            br#"{"id":1,"op":"set","key":"k","value":42}"#,
            br#"{"id":-1,"op":"keys"}"#,
            b"\xff\xfe",
        ];
        for body in cases {
            let err = decode::<RequestFrame>(body).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("malformed frame"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        let err = decode::<RequestFrame>(br#"{"id":1,"op":"get"}"#).unwrap_err();
        assert!(err.to_string().contains("`key`"), "{err}");
        let err = decode::<RequestFrame>(br#"{"id":1,"op":"launch"}"#).unwrap_err();
        assert!(err.to_string().contains("launch"), "{err}");
        // What was wrong, without what was sent (found by QA: all of these said only "a field
        // is missing, unknown or of the wrong type").
        for (body, says) in [
            (
                &br#"{"id":1,"op":"set","key":"k","value":"hunter2-not-base64!"}"#[..],
                "`value` is not valid base64",
            ),
            (
                br#"{"id":"hunter2","op":"keys"}"#,
                "invalid type: string, expected u64",
            ),
            (
                br#"{"id":1,"op":"get","key":"k","key":"hunter2"}"#,
                "duplicate field `key`",
            ),
            (br#"{"id":-1,"op":"keys"}"#, "invalid value: integer"),
        ] {
            let text = decode::<RequestFrame>(body).unwrap_err().to_string();
            assert!(text.contains(says), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    /// The broker decodes keys unchecked and checks them after, so a bad key fails only its
    /// request; the error names what is wrong, never the key (it may be a misplaced value).
    #[test]
    fn bad_keys_are_found_after_decoding_and_never_repeated() {
        let long = format!(
            r#"{{"id":2,"op":"delete","key":"{}"}}"#,
            "hunter2".repeat(600)
        );
        let cases: &[(&str, u64, &str)] = &[
            (
                r#"{"id":1,"op":"get","key":""}"#,
                1,
                "get: invalid key: a key cannot be empty",
            ),
            (
                &long,
                2,
                "delete: invalid key: a key is at most 4096 bytes, this one is 4200 bytes",
            ),
            (
                r#"{"id":3,"op":"set","key":"hunter2\u0000","value":"dG9rZW4="}"#,
                3,
                "set: invalid key: a key cannot contain a NUL character",
            ),
            (
                r#"{"id":4,"op":"subscribe","keys":["ok","hunter2\u0000"]}"#,
                4,
                "subscribe: keys[1]: invalid key: a key cannot contain a NUL character",
            ),
        ];
        for (body, id, message) in cases {
            // A client's decoder still refuses them outright.
            assert!(decode::<RequestFrame>(body.as_bytes()).is_err(), "{body}");
            let unchecked: UncheckedRequestFrame = decode(body.as_bytes()).unwrap();
            let invalid = unchecked.check_keys().unwrap_err();
            assert_eq!(invalid.id, *id);
            assert_eq!(invalid.to_string(), *message);
            assert!(!format!("{invalid:?}").contains("hunter2"), "{invalid:?}");
        }
        // Good keys come through unchanged, and so does everything else.
        for json in [
            r#"{"id":6,"op":"subscribe","keys":["github.auth"]}"#,
            r#"{"id":6,"op":"subscribe"}"#,
            r#"{"id":2,"op":"set","key":"github.auth","value":"dG9rZW4="}"#,
            r#"{"id":1,"op":"hello","client":"c","client_version":"1","protocol":1,"app":"code"}"#,
        ] {
            let unchecked: UncheckedRequestFrame = decode(json.as_bytes()).unwrap();
            let checked = unchecked.check_keys().unwrap();
            assert_eq!(checked, decode::<RequestFrame>(json.as_bytes()).unwrap());
        }
    }

    #[test]
    fn values_never_show_in_debug() {
        let frame = RequestFrame {
            id: 1,
            request: Request::Set {
                key: key("k"),
                value: WireValue(SecretValue::from_slice(b"hunter2")),
                unless_changed_after: None,
            },
        };
        let shown = format!("{frame:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("aHVudGVyMg"), "{shown}");
        let reply = ServerFrame::Reply {
            id: 1,
            reply: Reply::Get {
                value: Some(WireValue(SecretValue::from_slice(b"hunter2"))),
            },
        };
        assert!(!format!("{reply:?}").contains("hunter2"));
    }

    #[test]
    fn error_translation_round_trips_the_kind() {
        let cases = [
            Error::invalid("key", "empty"),
            Error::TooLarge {
                limit: 4,
                actual: 5,
            },
            Error::unavailable("vault", UnavailableReason::Locked, "locked"),
            Error::Corrupt {
                store: "vault".into(),
                key: Some("k".into()),
                detail: "bad tag".into(),
            },
            Error::io(
                "vault /v.db: committing",
                std::io::Error::other("database or disk is full"),
            ),
        ];
        for err in cases {
            let remote = RemoteError::from_store_error(&err);
            let back = remote.into_store_error("broker");
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&err),
                "{err} became {back}"
            );
        }
        let locked = RemoteError::from_store_error(&Error::unavailable(
            "vault",
            UnavailableReason::Locked,
            "x",
        ))
        .into_store_error("broker");
        assert!(matches!(
            locked,
            Error::Unavailable {
                reason: UnavailableReason::Locked,
                ..
            }
        ));
        let denied = RemoteError::new(ErrorCode::Denied, "no").into_store_error("broker");
        assert!(matches!(
            denied,
            Error::Unavailable {
                reason: UnavailableReason::Denied,
                ..
            }
        ));
    }
}
