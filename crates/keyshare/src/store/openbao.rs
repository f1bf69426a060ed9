//! [`OpenBaoStore`]: OpenBao (or HashiCorp Vault) KV version 2 over HTTPS as a shared store, so
//! that several machines share one set of secrets through an existing replicated secrets engine.
//!
//! # Layout on the server
//!
//! A key `k` of a store configured with mount `secret` and prefix `keyshare/dev.keyshare.shared-secrets`
//! lives at the KV v2 path `keyshare/dev.keyshare.shared-secrets/<encode_key(k)>` of mount
//! `secret`, as the KV data `{"value": "<standard base64 of the bytes>", "encoding": "base64"}`.
//!
//! Key names are encoded into exactly one path segment ([`encode_key`]): every byte outside
//! `[A-Za-z0-9._-]` becomes `%XX` (uppercase hex), and the two names that are path operators
//! (`.` and `..`) become `%2E` and `%2E%2E`. The encoding is canonical: [`decode_key`] accepts
//! only names that [`encode_key`] produces, so one key has exactly one name. In URLs the `%` is
//! escaped once more (`%25`), because the server decodes the request path once.
//!
//! # Consistency across machines
//!
//! - `set` is a check-and-set write: it reads the key's current version from the metadata and
//!   writes with `cas` = that version. If another machine wrote in between, the server refuses
//!   and `set` re-reads and tries again (a bounded number of times). So per key every
//!   acknowledged `set` has its own version number on the server (the Raft leader orders them),
//!   the value read afterwards is the one with the highest version, and no write is applied on
//!   top of a state its writer did not see: the last acknowledged writer, in version order, wins.
//! - `delete` removes the key's metadata and every version (`DELETE .../metadata/...`), so an
//!   acknowledged delete cannot be undone by reading an older version back.
//! - A write whose answer was lost may or may not have landed (the `Store` contract allows
//!   both); retrying it is harmless because a `set` is an upsert and a `delete` idempotent.
//!
//! # Availability
//!
//! Every HTTP exchange is bounded (connect timeout and a per-request timeout), and every store
//! call as a whole by [`OpenBaoConfig::timeout`]. Within that budget, a call tries the configured
//! addresses in turn, starting with the one that answered last: on a connection error, a timeout,
//! a sealed node (503), a standby that does not serve (429, 472, 473) or another 5xx answer it
//! moves on to the next address; after a full round it asks the nodes who the Raft leader is,
//! starts the next round there (if the leader is one of the configured addresses; a token is never
//! sent anywhere else), and backs off exponentially. A 403 makes it re-read the token (token auth)
//! or log in again (AppRole), once per call.
//!
//! # Credentials
//!
//! The token (or the AppRole secret id) is read from a credentials [`Store`] given to
//! [`OpenBaoStore::new`] (the OS keyring or the local vault), never from the configuration, and
//! kept in memory only as a [`SecretValue`].

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result, UnavailableReason};
use crate::model::{Limits, SecretKey, SecretValue};
use crate::storage::ChangeKind;
use crate::store::{Store, StoreInfo, DEFAULT_TIMEOUT};

const STORE_NAME: &str = "OpenBao";
/// Backoff between rounds over all addresses: starts small so a leader election (about a
/// second) costs little, and is capped so a call keeps trying until its deadline.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Stripes of the per-key write lock.
const WRITE_LOCK_STRIPES: usize = 64;
/// The first window of the random pause after a check-and-set conflict; it doubles per conflict.
const CAS_BACKOFF: Duration = Duration::from_millis(2);
/// Responses larger than this are refused: a listing of about 100,000 long keys fits.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;
/// Own writes remembered so that [`OpenBaoStore::changes_since`] does not report them back.
const MAX_OWN_WRITES: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// Key names in paths

fn is_safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Encodes a key into one KV path segment: bytes outside `[A-Za-z0-9._-]` become `%XX`
/// (uppercase hex), and the segments `.` and `..` become `%2E` and `%2E%2E`.
pub fn encode_key(key: &SecretKey) -> String {
    match key.as_str() {
        "." => return "%2E".to_owned(),
        ".." => return "%2E%2E".to_owned(),
        _ => {}
    }
    let mut out = String::with_capacity(key.as_str().len());
    for &b in key.as_str().as_bytes() {
        if is_safe(b) {
            out.push(char::from(b));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Decodes a path segment written by [`encode_key`]. Anything else (a name written by another
/// tool, lowercase hex, an escape of a safe byte, invalid UTF-8) is rejected, so every key has
/// exactly one name on the server.
pub fn decode_key(name: &str) -> Result<SecretKey> {
    let bad =
        |why: &str| Error::invalid("key", format!("{name:?} is not a keyshare key name: {why}"));
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')))
                    .ok_or_else(|| bad("'%' must be followed by two uppercase hex digits"))?;
                let text = std::str::from_utf8(hex).map_err(|_| bad("bad escape"))?;
                out.push(u8::from_str_radix(text, 16).map_err(|_| bad("bad escape"))?);
                i += 3;
            }
            b if is_safe(b) => {
                out.push(b);
                i += 1;
            }
            _ => return Err(bad("it contains a byte that would have been escaped")),
        }
    }
    let key = SecretKey::from_bytes(&out).map_err(|e| bad(&e.to_string()))?;
    if encode_key(&key) != name {
        return Err(bad("it is not in canonical form"));
    }
    Ok(key)
}

fn check_segments(what: &'static str, path: &str, allow_empty: bool) -> Result<()> {
    if path.is_empty() {
        return if allow_empty {
            Ok(())
        } else {
            Err(Error::invalid(what, "cannot be empty"))
        };
    }
    for segment in path.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return Err(Error::invalid(
                what,
                format!("{path:?} has an empty, '.' or '..' segment"),
            ));
        }
        if let Some(c) = segment.bytes().find(|b| !is_safe(*b)) {
            return Err(Error::invalid(
                what,
                format!(
                    "{path:?} contains {:?}; use letters, digits, '.', '_', '-' and '/' between segments",
                    char::from(c)
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// How the store authenticates. The secret part is never here: it is read from the credentials
/// store given to [`OpenBaoStore::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenBaoAuth {
    /// A token, stored in the credentials store under `token_key`.
    Token {
        /// The credentials-store key that holds the token.
        token_key: SecretKey,
    },
    /// AppRole login: the role id is not secret and lives here; the secret id is stored in the
    /// credentials store under `secret_id_key`. The login token is kept in memory only.
    AppRole {
        /// The auth mount, usually `approle`.
        mount: String,
        /// The role id.
        role_id: String,
        /// The credentials-store key that holds the secret id.
        secret_id_key: SecretKey,
    },
}

impl OpenBaoAuth {
    /// Token auth with the token under `token_key` in the credentials store.
    pub fn token(token_key: SecretKey) -> Self {
        OpenBaoAuth::Token { token_key }
    }

    /// AppRole auth at the `approle` mount.
    pub fn app_role(role_id: impl Into<String>, secret_id_key: SecretKey) -> Self {
        OpenBaoAuth::AppRole {
            mount: "approle".to_owned(),
            role_id: role_id.into(),
            secret_id_key,
        }
    }

    /// `token` or `approle`.
    pub fn method(&self) -> &'static str {
        match self {
            OpenBaoAuth::Token { .. } => "token",
            OpenBaoAuth::AppRole { .. } => "approle",
        }
    }
}

/// Where and how to reach the server. Contains no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenBaoConfig {
    /// Node addresses, e.g. `https://bao-1.example:8200`. Plain `http://` only on loopback.
    pub addresses: Vec<String>,
    /// The KV v2 mount, e.g. `secret`.
    pub mount: String,
    /// The path under the mount that holds this namespace's keys, e.g.
    /// `keyshare/dev.keyshare.shared-secrets` (one prefix per flavour).
    pub prefix: String,
    /// A PEM file of CA certificates to trust instead of the public web roots.
    pub ca_file: Option<PathBuf>,
    /// How to authenticate.
    pub auth: OpenBaoAuth,
    /// Bound on one store call, all retries and failovers included.
    pub timeout: Duration,
    /// Bound on one HTTP exchange.
    pub request_timeout: Duration,
    /// Bound on establishing a connection (TCP and TLS).
    pub connect_timeout: Duration,
    /// How many times `set` re-reads and retries after a check-and-set conflict.
    pub cas_retries: u32,
    /// Value size limits.
    pub limits: Limits,
}

impl OpenBaoConfig {
    /// A configuration with default timeouts (a call: 10s; an exchange: 5s; a connection: 2s)
    /// and 16 check-and-set retries.
    pub fn new(
        addresses: Vec<String>,
        mount: impl Into<String>,
        prefix: impl Into<String>,
        auth: OpenBaoAuth,
    ) -> Self {
        OpenBaoConfig {
            addresses,
            mount: mount.into(),
            prefix: prefix.into(),
            ca_file: None,
            auth,
            timeout: 2 * DEFAULT_TIMEOUT,
            request_timeout: DEFAULT_TIMEOUT,
            connect_timeout: Duration::from_secs(2),
            cas_retries: 16,
            limits: Limits::default(),
        }
    }

    /// The same server with `segment` appended to the prefix (one namespace per flavour).
    pub fn with_namespace(&self, segment: &str) -> Self {
        let mut c = self.clone();
        c.prefix = if c.prefix.is_empty() {
            segment.to_owned()
        } else {
            format!("{}/{segment}", c.prefix)
        };
        c
    }

    fn validate(&self) -> Result<Vec<String>> {
        if self.addresses.is_empty() {
            return Err(Error::invalid(
                "OpenBao address",
                "at least one address is needed, e.g. https://bao.example:8200",
            ));
        }
        let mut addresses = Vec::with_capacity(self.addresses.len());
        for a in &self.addresses {
            addresses.push(normalize_address(a)?);
        }
        check_segments("OpenBao mount", &self.mount, false)?;
        check_segments("OpenBao prefix", &self.prefix, true)?;
        if let OpenBaoAuth::AppRole { mount, role_id, .. } = &self.auth {
            check_segments("OpenBao AppRole mount", mount, false)?;
            if role_id.trim().is_empty() {
                return Err(Error::invalid("OpenBao AppRole role_id", "cannot be empty"));
            }
        }
        for (what, d) in [
            ("OpenBao timeout", self.timeout),
            ("OpenBao request timeout", self.request_timeout),
            ("OpenBao connect timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::invalid(what, "must be more than zero"));
            }
        }
        Ok(addresses)
    }
}

fn normalize_address(address: &str) -> Result<String> {
    let a = address.trim().trim_end_matches('/');
    let (scheme, rest) = a.split_once("://").ok_or_else(|| {
        Error::invalid(
            "OpenBao address",
            format!("{address:?} needs a scheme, e.g. https://bao.example:8200"),
        )
    })?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(Error::invalid(
            "OpenBao address",
            format!("{address:?} must be scheme://host[:port] with no path, query or user"),
        ));
    }
    match scheme {
        "https" => {}
        "http" => {
            let host = match rest.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or(""),
                None => rest.split(':').next().unwrap_or(""),
            };
            if !(host == "localhost" || host == "::1" || host.starts_with("127.")) {
                return Err(Error::invalid(
                    "OpenBao address",
                    format!(
                        "{address:?} uses plain http, which would send the token unencrypted; \
                         use https:// (plain http is accepted on loopback only)"
                    ),
                ));
            }
        }
        _ => {
            return Err(Error::invalid(
                "OpenBao address",
                format!("{address:?}: the scheme must be https (or http on loopback)"),
            ))
        }
    }
    Ok(a.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Wire types

#[derive(Deserialize)]
struct Envelope<T> {
    data: Option<T>,
}

#[derive(Deserialize)]
struct ErrorsReply {
    #[serde(default)]
    errors: Vec<String>,
}

/// The shape of an OpenBao answer, to tell its 404s from a proxy's or another server's: an
/// `errors` list, or a `data` envelope (KV's answer for a soft-deleted version).
#[derive(Deserialize)]
struct AnswerShape {
    errors: Option<Vec<String>>,
    data: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct KvData {
    data: Option<KvFields>,
}

#[derive(Deserialize)]
struct KvFields {
    value: Option<Zeroizing<String>>,
    encoding: Option<String>,
}

#[derive(Deserialize)]
struct WriteReply {
    version: u64,
}

#[derive(Deserialize)]
struct Metadata {
    current_version: u64,
    #[serde(default)]
    versions: HashMap<String, VersionMeta>,
}

#[derive(Deserialize)]
struct VersionMeta {
    #[serde(default)]
    deletion_time: String,
    #[serde(default)]
    destroyed: bool,
}

impl Metadata {
    /// The live version, or `None` when the latest version was deleted or destroyed by another
    /// tool (`bao kv delete` keeps the metadata).
    fn live_version(&self) -> Option<u64> {
        if self.current_version == 0 {
            return None;
        }
        match self.versions.get(&self.current_version.to_string()) {
            Some(v) if v.destroyed || !v.deletion_time.is_empty() => None,
            _ => Some(self.current_version),
        }
    }
}

#[derive(Deserialize)]
struct ListReply {
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct LoginReply {
    auth: Option<LoginAuth>,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: Zeroizing<String>,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LeaderReply {
    #[serde(default)]
    ha_enabled: bool,
    #[serde(default)]
    leader_address: String,
}

#[derive(Deserialize)]
struct HealthReply {
    #[serde(default)]
    version: String,
}

#[derive(Deserialize)]
struct LookupSelf {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    expire_time: Option<String>,
    #[serde(default)]
    renewable: bool,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    policies: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Status for `doctor`

/// What one node answered to `/v1/sys/health`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeState {
    /// Unsealed and active (the Raft leader).
    Active,
    /// Unsealed standby (forwards requests to the leader).
    Standby,
    /// Performance standby (serves reads itself).
    PerformanceStandby,
    /// Sealed: needs `bao operator unseal`.
    Sealed,
    /// Not initialised: needs `bao operator init`.
    Uninitialized,
    /// Another HTTP status.
    Other(u16),
    /// No answer: the reason.
    Unreachable(String),
}

/// One configured address, as seen by [`OpenBaoStore::probe`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHealth {
    /// The configured address.
    pub address: String,
    /// What it answered.
    pub state: NodeState,
    /// Round trip of the health request.
    pub latency: Option<Duration>,
    /// Server version, when it answered.
    pub version: Option<String>,
}

/// What the token can be used for and until when (from `auth/token/lookup-self`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Time to live; `None` for a token that never expires.
    pub ttl: Option<Duration>,
    /// Expiry as the server wrote it (RFC 3339), when it expires.
    pub expire_time: Option<String>,
    /// Whether the token can be renewed.
    pub renewable: bool,
    /// The token's display name.
    pub display_name: String,
    /// Its policies.
    pub policies: Vec<String>,
}

/// The server as seen from here, for `keyshare doctor`. Never contains a secret.
#[derive(Debug)]
pub struct OpenBaoStatus {
    /// Each configured address.
    pub nodes: Vec<NodeHealth>,
    /// Whether the server runs in HA mode (a Raft cluster); a single dev server has no leader.
    /// `None` when no node answered, so it is not known.
    pub ha_enabled: Option<bool>,
    /// The leader's API address, as the nodes report it.
    pub leader: Option<String>,
    /// `token` or `approle`.
    pub auth_method: &'static str,
    /// The token's state, or why it could not be looked up.
    pub token: Result<TokenInfo>,
    /// Round trip of an authenticated request (the token lookup), failover included.
    pub latency: Option<Duration>,
    /// The address that answered it.
    pub answered_by: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Change polling

/// The versions of every key at one poll, for [`OpenBaoStore::changes_since`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvSnapshot {
    versions: BTreeMap<SecretKey, u64>,
}

impl KvSnapshot {
    /// How many keys had a value.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// True when no key had a value.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The version a key had, if it had a value.
    pub fn version(&self, key: &SecretKey) -> Option<u64> {
        self.versions.get(key).copied()
    }
}

/// The changes from `old` to `new`: keys that appeared or got a new version are `Set`, keys
/// that vanished are `Delete`.
fn diff_snapshots(old: &KvSnapshot, new: &KvSnapshot) -> Vec<(SecretKey, ChangeKind, Option<u64>)> {
    let mut changes = Vec::new();
    for (key, version) in &new.versions {
        if old.versions.get(key) != Some(version) {
            changes.push((key.clone(), ChangeKind::Set, Some(*version)));
        }
    }
    for key in old.versions.keys() {
        if !new.versions.contains_key(key) {
            changes.push((key.clone(), ChangeKind::Delete, None));
        }
    }
    changes
}

/// What [`OpenBaoStore::changes_since`] needs to tell this store's writes from other writers'.
///
/// A poll's snapshot is taken while writes go on, so a version it sees may come from a write
/// whose reply has not been handled yet, or from an earlier write of this store that a later
/// one has already followed. Hence every own outcome not yet seen by a poll is kept (not only
/// the latest), and a key with a write in flight is decided at a later poll.
#[derive(Default)]
struct OwnWrites {
    /// Per key, in write order: versions written (`Some`) and deletes of a live value (`None`).
    done: HashMap<SecretKey, Vec<Option<u64>>>,
    /// Outcomes held in `done`, for the [`MAX_OWN_WRITES`] bound.
    len: usize,
    /// Writes sent (or about to be) whose outcome is not in `done` yet.
    in_flight: HashMap<SecretKey, usize>,
}

/// Marks a write to `key` in flight until dropped (every return path of a write, errors too).
struct InFlight<'a> {
    store: &'a OpenBaoStore,
    key: &'a SecretKey,
}

impl<'a> InFlight<'a> {
    fn start(store: &'a OpenBaoStore, key: &'a SecretKey) -> Self {
        *store.own().in_flight.entry(key.clone()).or_insert(0) += 1;
        InFlight { store, key }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut own = self.store.own();
        if let Some(n) = own.in_flight.get_mut(self.key) {
            *n -= 1;
            if *n == 0 {
                own.in_flight.remove(self.key);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The store

struct Session {
    token: SecretValue,
    /// When to renew (AppRole tokens with a lease); `None`: never.
    renew_at: Option<Instant>,
}

enum Method {
    Get,
    List,
    Post,
    Delete,
}

impl Method {
    fn name(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::List => "LIST",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

struct Request<'a> {
    method: Method,
    /// After `/v1/`, already escaped for the URL.
    path: String,
    body: Option<&'a [u8]>,
    authenticated: bool,
}

struct Reply {
    status: u16,
    body: Zeroizing<Vec<u8>>,
    address: String,
    /// The `Location` of a redirect.
    location: Option<String>,
}

impl Reply {
    fn json<'de, T: Deserialize<'de>>(&'de self, what: &str) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::unavailable(
                STORE_NAME,
                UnavailableReason::Backend,
                format!(
                    "{} answered {what} with HTTP {} and a body that is not the expected JSON ({})",
                    self.address,
                    self.status,
                    // serde_json's message names a line and column, never the content.
                    e.classify_name()
                ),
            )
        })
    }

    fn server_errors(&self) -> String {
        serde_json::from_slice::<ErrorsReply>(&self.body)
            .map(|e| e.errors.join("; "))
            .unwrap_or_default()
    }

    /// Whether the body is an OpenBao JSON answer (an `errors` list or a `data` envelope).
    /// A 404 from a proxy, a web server at a wrong address or a path that is not the API is
    /// not: taking it for "not found" would answer reads with nothing and acknowledge deletes
    /// that never reached the server.
    fn is_openbao_answer(&self) -> bool {
        serde_json::from_slice::<AnswerShape>(&self.body)
            .is_ok_and(|a| a.errors.is_some() || a.data.is_some())
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected fields or types",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// OpenBao / Vault KV v2 as a [`Store`]. See the module documentation.
pub struct OpenBaoStore {
    config: OpenBaoConfig,
    addresses: Vec<String>,
    agent: ureq::Agent,
    credentials: Arc<dyn Store>,
    session: Mutex<Option<Session>>,
    /// Serialises logins, so a burst of calls after a token expiry logs in once.
    login: Mutex<()>,
    /// Index of the address that answered last: the next call starts there.
    preferred: AtomicUsize,
    /// This store's writes, so the change poller does not report a machine's own writes back
    /// to it.
    own_writes: Mutex<OwnWrites>,
    cas_conflicts: AtomicU64,
    /// Writes to one key from this process go one at a time (striped by key hash), so threads
    /// of one machine do not starve each other in check-and-set retries.
    write_locks: Vec<Mutex<()>>,
    /// The `X-Vault-Index` value sent with KV requests, once the cluster id is known.
    index_header: Mutex<Option<String>>,
    /// What to tell the user to do about a missing, unusable or refused credential; `None`:
    /// store one in the credentials store (see [`OpenBaoStore::with_credential_advice`]).
    credential_advice: Option<String>,
}

impl fmt::Debug for OpenBaoStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenBaoStore")
            .field("addresses", &self.addresses)
            .field("mount", &self.config.mount)
            .field("prefix", &self.config.prefix)
            .field("auth", &self.config.auth.method())
            .finish_non_exhaustive()
    }
}

enum Outcome {
    /// The node answered; the call is settled (success, not found, conflict, client error).
    Done(Reply),
    /// The node could not serve; try another or later.
    Retry {
        reason: UnavailableReason,
        what: String,
        /// The node answered HTTP at all (so it can be asked who the leader is).
        answered: bool,
    },
    /// The token was refused.
    Forbidden(Reply),
    /// A standby that could not forward sent us to the active node, one of ours.
    Redirect(usize),
}

impl OpenBaoStore {
    /// A store over `config`, authenticating with the secret read from `credentials`.
    ///
    /// Validates the configuration and reads the CA file; does not contact the server, so an
    /// unreachable server does not prevent start-up (calls fail with `Unavailable` until it
    /// answers).
    ///
    /// Errors: [`Error::Invalid`] for a bad address, mount, prefix or CA file content;
    /// [`Error::Io`] when the CA file cannot be read.
    pub fn new(config: OpenBaoConfig, credentials: Arc<dyn Store>) -> Result<Self> {
        let addresses = config.validate()?;
        let tls = match &config.ca_file {
            None => ureq::tls::TlsConfig::builder().build(),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    Error::io(format!("reading the OpenBao CA file {}", path.display()), e)
                })?;
                let mut certs = Vec::new();
                for item in ureq::tls::parse_pem(&pem) {
                    match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                        Ok(_) => {}
                        Err(e) => {
                            return Err(Error::invalid(
                                "OpenBao CA file",
                                format!("{} is not valid PEM: {e}", path.display()),
                            ))
                        }
                    }
                }
                if certs.is_empty() {
                    return Err(Error::invalid(
                        "OpenBao CA file",
                        format!("{} holds no PEM certificate", path.display()),
                    ));
                }
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build()
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect would carry the token to an address nobody configured.
            .max_redirects(0)
            .timeout_connect(Some(config.connect_timeout))
            // Fixed per-read and per-write bounds cost nothing per request; a global timeout
            // is recomputed and set on the socket at every read (measured: +50% latency).
            .timeout_per_read(Some(config.request_timeout))
            .timeout_per_write(Some(config.request_timeout))
            .user_agent(format!("keyshare/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        Ok(OpenBaoStore {
            config,
            addresses,
            agent,
            credentials,
            session: Mutex::new(None),
            login: Mutex::new(()),
            preferred: AtomicUsize::new(0),
            own_writes: Mutex::default(),
            cas_conflicts: AtomicU64::new(0),
            write_locks: (0..WRITE_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            index_header: Mutex::new(None),
            credential_advice: None,
        })
    }

    /// Replaces the advice that ends the errors about the credential (none stored, one that is
    /// not a usable token, one the server refuses): by default, to store a valid one under the
    /// configured key in the credentials store. An application that stores it with a command
    /// of its own names that command here.
    pub fn with_credential_advice(mut self, advice: impl Into<String>) -> Self {
        self.credential_advice = Some(advice.into());
        self
    }

    /// [`OpenBaoStore::with_credential_advice`]'s advice, or `default`.
    fn credential_advice_or(&self, default: impl FnOnce() -> String) -> String {
        self.credential_advice.clone().unwrap_or_else(default)
    }

    /// [`token_text`], with this store's advice when the token is not usable.
    fn usable_token<'t>(&self, token: &'t SecretValue) -> Result<&'t str> {
        token_text(token).ok_or_else(|| {
            let advice = self.credential_advice_or(|| "store the token text itself".to_owned());
            Error::unavailable(
                STORE_NAME,
                UnavailableReason::Denied,
                format!("the stored OpenBao token is empty or not printable ASCII; {advice}"),
            )
        })
    }

    /// How many writes found that another writer had changed the key since it was read (and
    /// retried): a measure of write contention, for `doctor` and tests.
    pub fn cas_conflicts(&self) -> u64 {
        self.cas_conflicts.load(Ordering::Relaxed)
    }

    /// The configuration this store runs with.
    pub fn config(&self) -> &OpenBaoConfig {
        &self.config
    }

    // -- paths

    fn kv_path(&self, area: &str, key: &SecretKey) -> String {
        let mut p = format!("{}/{area}/", self.config.mount);
        if !self.config.prefix.is_empty() {
            p.push_str(&self.config.prefix);
            p.push('/');
        }
        // The server decodes the request path once; the stored name keeps its `%XX` escapes.
        p.push_str(&encode_key(key).replace('%', "%25"));
        p
    }

    fn list_path(&self) -> String {
        if self.config.prefix.is_empty() {
            format!("{}/metadata/?list=true", self.config.mount)
        } else {
            format!(
                "{}/metadata/{}/?list=true",
                self.config.mount, self.config.prefix
            )
        }
    }

    fn human_path(&self, key: &SecretKey) -> String {
        shown_path(&format!("{}/{}", self.config.prefix, encode_key(key)))
    }

    // -- transport

    fn exchange(
        &self,
        address: &str,
        req: &Request<'_>,
        token: Option<&str>,
        budget: Duration,
    ) -> std::result::Result<Reply, (UnavailableReason, String)> {
        let url = format!("{address}/v1/{}", req.path);
        let timeout = budget.min(self.config.request_timeout);
        let index = if req.authenticated {
            self.index_header
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        } else {
            None
        };
        fn headers<B>(
            mut r: ureq::RequestBuilder<B>,
            token: Option<&str>,
            index: Option<&str>,
            timeout: Option<Duration>,
        ) -> ureq::RequestBuilder<B> {
            if let Some(t) = token {
                r = r.header("X-Vault-Token", t);
            }
            if let Some(i) = index {
                r = r
                    .header("X-Vault-Index", i)
                    .header("X-Vault-Inconsistent", "forward-active-node");
            }
            match timeout {
                // A request-level config costs the pooled keep-alive connection (measured:
                // twice the latency), so only a request near the call's deadline gets one.
                Some(t) => r.config().timeout_global(Some(t)).build(),
                None => r,
            }
        }
        let index = index.as_deref();
        // The agent bounds each read and write by `request_timeout`; near the call's deadline
        // the whole exchange gets the remaining budget as its bound.
        let shorter = (timeout < self.config.request_timeout).then_some(timeout);
        let result = match req.method {
            Method::Get | Method::List => {
                headers(self.agent.get(&url), token, index, shorter).call()
            }
            Method::Delete => headers(self.agent.delete(&url), token, index, shorter).call(),
            Method::Post => headers(
                self.agent
                    .post(&url)
                    .header("Content-Type", "application/json"),
                token,
                index,
                shorter,
            )
            .send(req.body.unwrap_or(b"{}")),
        };
        let mut response = result.map_err(|e| classify_transport(&e, timeout))?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("Location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        if let Some(seen) = response.headers().get("X-Vault-Index") {
            self.learn_cluster(seen.as_bytes());
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(|e| classify_transport(&e, timeout))?;
        Ok(Reply {
            status,
            body: Zeroizing::new(body),
            address: address.to_owned(),
            location,
        })
    }

    /// Remembers the cluster id from a response's `X-Vault-Index` header and derives the header
    /// that makes every later KV request linearizable (see [`OpenBaoStore::ensure_consistency`]).
    fn learn_cluster(&self, header: &[u8]) {
        #[derive(Deserialize)]
        struct Index {
            cluster: String,
        }
        let Ok(json) = base64::engine::general_purpose::STANDARD.decode(header) else {
            return;
        };
        let Ok(index) = serde_json::from_slice::<Index>(&json) else {
            return;
        };
        let wanted = serde_json::json!({ "cluster": index.cluster, "value": u64::MAX.to_string() });
        let value = base64::engine::general_purpose::STANDARD.encode(wanted.to_string());
        let mut current = self.index_header.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_deref() != Some(value.as_str()) {
            *current = Some(value);
        }
    }

    /// Makes sure KV requests carry the "read at the leader's latest index" headers before the
    /// first one is sent.
    ///
    /// OpenBao standbys answer reads from their own replica, which may lag the leader, so a
    /// value another machine was just told is written could read as missing here. Every KV
    /// request therefore says it needs storage index `u64::MAX` of this cluster, or else to be
    /// forwarded to the active node (`X-Vault-Index` with `X-Vault-Inconsistent:
    /// forward-active-node`): no standby has that index, so the active node answers every read
    /// and reads are linearizable. The cluster id comes from `/v1/sys/health`. Servers without
    /// index headers (HashiCorp Vault's standbys forward everything anyway) ignore them.
    fn ensure_consistency(&self, deadline: Instant) {
        if self
            .index_header
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        let health = Request {
            method: Method::Get,
            path: "sys/health?standbyok=true&perfstandbyok=true".to_owned(),
            body: None,
            authenticated: false,
        };
        #[derive(Deserialize)]
        struct Cluster {
            #[serde(default)]
            cluster_id: String,
        }
        for address in &self.addresses {
            let budget = deadline.saturating_duration_since(Instant::now());
            if let Ok(reply) = self.exchange(address, &health, None, budget) {
                if let Ok(c) = serde_json::from_slice::<Cluster>(&reply.body) {
                    if !c.cluster_id.is_empty() {
                        let index = serde_json::json!({ "cluster": c.cluster_id });
                        self.learn_cluster(
                            base64::engine::general_purpose::STANDARD
                                .encode(index.to_string())
                                .as_bytes(),
                        );
                        return;
                    }
                }
            }
        }
        // No node answered: the request that follows fails over and reports why.
    }

    fn attempt(
        &self,
        index: usize,
        req: &Request<'_>,
        token: Option<&str>,
        deadline: Instant,
    ) -> Outcome {
        let address = &self.addresses[index];
        let budget = deadline.saturating_duration_since(Instant::now());
        let reply = match self.exchange(address, req, token, budget) {
            Ok(r) => r,
            Err((reason, what)) => {
                return Outcome::Retry {
                    reason,
                    what: format!("{address}: {what}"),
                    answered: false,
                }
            }
        };
        match reply.status {
            403 => Outcome::Forbidden(reply),
            // A standby that cannot forward a request redirects to the active node. Follow only
            // to a configured address: the token must not go anywhere else.
            307 | 308 => {
                let target = reply.location.as_deref().and_then(|l| {
                    self.addresses
                        .iter()
                        .position(|a| l.starts_with(a.as_str()) && l[a.len()..].starts_with('/'))
                });
                match target {
                    Some(t) if t != index => Outcome::Redirect(t),
                    _ => Outcome::Retry {
                        reason: UnavailableReason::Backend,
                        what: format!(
                            "{address}: standby redirected to {}, which is not a configured address",
                            reply.location.as_deref().unwrap_or("nowhere")
                        ),
                        answered: true,
                    },
                }
            }
            503 => {
                let errors = reply.server_errors();
                let sealed = errors.contains("sealed");
                Outcome::Retry {
                    reason: if sealed {
                        UnavailableReason::Locked
                    } else {
                        UnavailableReason::Backend
                    },
                    what: if sealed {
                        format!("{address}: sealed (unseal it with `bao operator unseal`)")
                    } else {
                        format!("{address}: HTTP 503 {errors}")
                    },
                    answered: true,
                }
            }
            429 | 472 | 473 => Outcome::Retry {
                reason: UnavailableReason::Backend,
                what: format!(
                    "{address}: standby that does not serve this request (HTTP {})",
                    reply.status
                ),
                answered: true,
            },
            s if s >= 500 => Outcome::Retry {
                reason: UnavailableReason::Backend,
                what: format!("{address}: HTTP {s} {}", reply.server_errors()),
                answered: true,
            },
            _ => Outcome::Done(reply),
        }
    }

    /// Sends `req` with failover, backoff and re-authentication, within the call's deadline.
    /// Returns every settled answer (2xx, 404, 400, ...) for the caller to interpret.
    fn send(&self, req: &Request<'_>, deadline: Instant) -> Result<Reply> {
        let n = self.addresses.len();
        if req.authenticated {
            self.ensure_consistency(deadline);
        }
        let mut backoff = INITIAL_BACKOFF;
        let mut reauthenticated = false;
        let mut failures: Vec<(UnavailableReason, String)> = Vec::new();
        loop {
            let start = self.preferred.load(Ordering::Relaxed) % n;
            let mut answered = Vec::new();
            let mut i = 0;
            let mut redirected_to = None;
            let mut redirects = 0;
            while i < n {
                if Instant::now() >= deadline {
                    return Err(self.give_up(req, failures));
                }
                let index = redirected_to.take().unwrap_or((start + i) % n);
                let token = if req.authenticated {
                    Some(self.token(deadline)?)
                } else {
                    None
                };
                let token_text = match &token {
                    Some(t) => Some(self.usable_token(t)?),
                    None => None,
                };
                match self.attempt(index, req, token_text, deadline) {
                    Outcome::Done(reply) => {
                        self.preferred.store(index, Ordering::Relaxed);
                        return Ok(reply);
                    }
                    Outcome::Forbidden(reply) => {
                        let rejected = token.as_ref();
                        if req.authenticated && !reauthenticated {
                            if let Some(rejected) = rejected {
                                reauthenticated = true;
                                if self.reauthenticate(rejected, deadline)? {
                                    continue; // same address, fresh token
                                }
                            }
                        }
                        return Err(self.denied(req, &reply));
                    }
                    Outcome::Redirect(target) if redirects < n => {
                        redirects += 1;
                        redirected_to = Some(target);
                    }
                    Outcome::Redirect(target) => {
                        failures.push((
                            UnavailableReason::Backend,
                            format!(
                                "{}: redirect loop via {}",
                                self.addresses[index], self.addresses[target]
                            ),
                        ));
                        i += 1;
                    }
                    Outcome::Retry {
                        reason,
                        what,
                        answered: a,
                    } => {
                        tracing::debug!(target: "keyshare::openbao", "{} {}: {what}", req.method.name(), shown_path(&req.path));
                        if a {
                            answered.push(index);
                        }
                        failures.push((reason, what));
                        i += 1;
                    }
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(self.give_up(req, failures));
            }
            self.follow_leader(&answered, deadline);
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Points the next round at the Raft leader, if a node names one we were configured with.
    fn follow_leader(&self, answered: &[usize], deadline: Instant) {
        let req = Request {
            method: Method::Get,
            path: "sys/leader".to_owned(),
            body: None,
            authenticated: false,
        };
        for &index in answered {
            if let Ok(reply) = self.exchange(
                &self.addresses[index],
                &req,
                None,
                deadline.saturating_duration_since(Instant::now()),
            ) {
                if reply.status != 200 {
                    continue;
                }
                if let Ok(leader) = serde_json::from_slice::<LeaderReply>(&reply.body) {
                    let leader = leader.leader_address.trim_end_matches('/');
                    if let Some(at) = self.addresses.iter().position(|a| a == leader) {
                        self.preferred.store(at, Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
    }

    fn give_up(&self, req: &Request<'_>, failures: Vec<(UnavailableReason, String)>) -> Error {
        // The most telling reason: sealed beats "answered with an error" beats timeouts beats
        // "not reachable".
        let rank = |r: UnavailableReason| match r {
            UnavailableReason::Locked => 0,
            UnavailableReason::Backend => 1,
            UnavailableReason::TimedOut => 2,
            _ => 3,
        };
        let reason = failures
            .iter()
            .map(|(r, _)| *r)
            .min_by_key(|r| rank(*r))
            .unwrap_or(UnavailableReason::TimedOut);
        // The last answer of each address is enough to act on.
        let mut last: Vec<String> = Vec::new();
        for (_, what) in failures.iter().rev() {
            let address = what.split(": ").next().unwrap_or_default();
            if !last.iter().any(|l| l.starts_with(address)) {
                last.push(what.clone());
            }
        }
        last.reverse();
        let advice = match reason {
            UnavailableReason::Locked => "unseal the server",
            UnavailableReason::TimedOut => "check the network and the server's load",
            UnavailableReason::NotRunning => {
                "check that the server runs and that the configured addresses are right"
            }
            _ => {
                "the cluster may be electing a leader or failing; try again, and check `bao status`"
            }
        };
        Error::unavailable(
            STORE_NAME,
            reason,
            format!(
                "{} {} failed on every address within {:?}: {}; {advice}",
                req.method.name(),
                shown_path(&req.path),
                self.config.timeout,
                if last.is_empty() {
                    "no attempt fit in the time budget".to_owned()
                } else {
                    last.join("; ")
                }
            ),
        )
    }

    fn denied(&self, req: &Request<'_>, reply: &Reply) -> Error {
        let how_to_fix = match &self.config.auth {
            OpenBaoAuth::Token { token_key } => self.credential_advice_or(|| {
                format!(
                    "store a valid token under {:?} in the credentials store ({})",
                    token_key.as_str(),
                    self.credentials.info().kind
                )
            }),
            OpenBaoAuth::AppRole { secret_id_key, .. } => {
                let advice = self.credential_advice_or(|| {
                    format!(
                        "store a valid secret id under {:?} in the credentials store ({})",
                        secret_id_key.as_str(),
                        self.credentials.info().kind
                    )
                });
                format!("check the role, or {advice}")
            }
        };
        Error::unavailable(
            STORE_NAME,
            UnavailableReason::Denied,
            format!(
                "{} denied {} {} ({}): the token is invalid or expired, or its policy does not \
                 allow this on mount {:?} path {:?}; {how_to_fix}",
                reply.address,
                req.method.name(),
                shown_path(&req.path),
                match reply.server_errors() {
                    e if e.is_empty() => "HTTP 403".to_owned(),
                    e => format!("HTTP 403: {e}"),
                },
                self.config.mount,
                self.config.prefix,
            ),
        )
    }

    // -- authentication

    fn read_credential(&self, key: &SecretKey, what: &str) -> Result<SecretValue> {
        match self.credentials.get(key) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(Error::unavailable(
                STORE_NAME,
                UnavailableReason::Denied,
                format!(
                    "no {what} is stored under {:?} in the credentials store ({}); {}",
                    key.as_str(),
                    self.credentials.info().kind,
                    self.credential_advice_or(|| "store one there".to_owned())
                ),
            )),
            Err(e) => Err(Error::unavailable(
                STORE_NAME,
                match &e {
                    Error::Unavailable { reason, .. } => *reason,
                    _ => UnavailableReason::Backend,
                },
                format!("cannot read the {what} from the credentials store: {e}"),
            )),
        }
    }

    /// The current token, logging in or renewing first when needed.
    fn token(&self, deadline: Instant) -> Result<SecretValue> {
        {
            let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = session.as_ref() {
                if s.renew_at.is_none_or(|at| Instant::now() < at) {
                    return Ok(s.token.clone());
                }
            }
        }
        let _login = self.login.lock().unwrap_or_else(|e| e.into_inner());
        let current = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| (s.token.clone(), s.renew_at));
        let fresh = match current {
            Some((token, renew_at)) if renew_at.is_none_or(|at| Instant::now() < at) => {
                return Ok(token)
            }
            // A lease near its end: renew it, or log in again if that fails.
            Some((token, _)) => match self.renew(&token, deadline) {
                Ok(s) => s,
                Err(_) => self.log_in(deadline)?,
            },
            None => self.log_in(deadline)?,
        };
        let token = fresh.token.clone();
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        Ok(token)
    }

    fn log_in(&self, deadline: Instant) -> Result<Session> {
        match &self.config.auth {
            OpenBaoAuth::Token { token_key } => Ok(Session {
                token: self.read_credential(token_key, "OpenBao token")?,
                renew_at: None,
            }),
            OpenBaoAuth::AppRole {
                mount,
                role_id,
                secret_id_key,
            } => {
                let secret_id = self.read_credential(secret_id_key, "OpenBao AppRole secret id")?;
                let secret_text = std::str::from_utf8(secret_id.expose_secret()).map_err(|_| {
                    Error::unavailable(
                        STORE_NAME,
                        UnavailableReason::Denied,
                        format!(
                            "the AppRole secret id under {:?} is not text",
                            secret_id_key.as_str()
                        ),
                    )
                })?;
                let mut body =
                    Zeroizing::new(Vec::with_capacity(64 + role_id.len() + secret_text.len()));
                serde_json::to_writer(
                    &mut *body,
                    &serde_json::json!({ "role_id": role_id, "secret_id": secret_text.trim() }),
                )
                .map_err(|e| Error::invalid("OpenBao AppRole login", e.to_string()))?;
                let req = Request {
                    method: Method::Post,
                    path: format!("auth/{mount}/login"),
                    body: Some(&body),
                    authenticated: false,
                };
                let reply = self.send(&req, deadline)?;
                if reply.status != 200 {
                    return Err(Error::unavailable(
                        STORE_NAME,
                        if matches!(reply.status, 400 | 403) {
                            UnavailableReason::Denied
                        } else {
                            UnavailableReason::Backend
                        },
                        format!(
                            "AppRole login at {} failed (HTTP {}: {}); check role_id and the secret id under {:?}",
                            reply.address,
                            reply.status,
                            reply.server_errors(),
                            secret_id_key.as_str()
                        ),
                    ));
                }
                self.session_from_auth(&reply)
            }
        }
    }

    fn session_from_auth(&self, reply: &Reply) -> Result<Session> {
        let login: LoginReply = reply.json("a login")?;
        let auth = login.auth.ok_or_else(|| {
            Error::unavailable(
                STORE_NAME,
                UnavailableReason::Backend,
                format!("{} answered a login without a token", reply.address),
            )
        })?;
        let renew_at = (auth.renewable && auth.lease_duration > 0)
            .then(|| Instant::now() + Duration::from_secs(auth.lease_duration) * 2 / 3);
        Ok(Session {
            token: SecretValue::from_slice(auth.client_token.as_bytes()),
            renew_at,
        })
    }

    fn renew(&self, token: &SecretValue, deadline: Instant) -> Result<Session> {
        let text = self.usable_token(token)?;
        let req = Request {
            method: Method::Post,
            path: "auth/token/renew-self".to_owned(),
            body: None,
            authenticated: false,
        };
        // Renewal goes to whichever node answers, with this token explicitly.
        for index in 0..self.addresses.len() {
            if let Outcome::Done(reply) = self.attempt(index, &req, Some(text), deadline) {
                if reply.status == 200 {
                    return self.session_from_auth(&reply);
                }
                break;
            }
        }
        Err(Error::unavailable(
            STORE_NAME,
            UnavailableReason::Denied,
            "token renewal failed",
        ))
    }

    /// After a 403 with `rejected`: get a different token if there is one. `Ok(false)` means
    /// there is none (the stored token is the one that was refused).
    fn reauthenticate(&self, rejected: &SecretValue, deadline: Instant) -> Result<bool> {
        let _login = self.login.lock().unwrap_or_else(|e| e.into_inner());
        {
            let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = session.as_ref() {
                if s.token != *rejected {
                    return Ok(true); // another thread already replaced it
                }
            }
        }
        let fresh = self.log_in(deadline)?;
        let changed = fresh.token != *rejected;
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        Ok(changed)
    }

    // -- KV operations

    fn deadline(&self) -> Instant {
        Instant::now() + self.config.timeout
    }

    fn unexpected(&self, what: &str, reply: &Reply) -> Error {
        let errors = reply.server_errors();
        let hint = if reply.status == 404 && errors.contains("no handler for route") {
            format!(
                "; is there a KV version 2 secrets engine at mount {:?}? (`bao secrets enable -path={} -version=2 kv`)",
                self.config.mount, self.config.mount
            )
        } else if !reply.is_openbao_answer() {
            " and a body that is not an OpenBao answer (a proxy or another server at this \
             address?)"
                .to_owned()
        } else {
            String::new()
        };
        Error::unavailable(
            STORE_NAME,
            UnavailableReason::Backend,
            format!(
                "{} answered {what} with HTTP {}{}{hint}",
                reply.address,
                reply.status,
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {errors}")
                },
            ),
        )
    }

    /// A KV "not found" is a 404 with an empty error list, or with a data envelope (a
    /// soft-deleted version); a 404 naming an error (no such mount) is a configuration
    /// problem, and a 404 whose body is not OpenBao JSON is not OpenBao's answer: neither is
    /// "not found".
    fn is_not_found(reply: &Reply) -> bool {
        reply.status == 404 && reply.is_openbao_answer() && reply.server_errors().is_empty()
    }

    fn read_metadata(&self, key: &SecretKey, deadline: Instant) -> Result<Option<Metadata>> {
        let req = Request {
            method: Method::Get,
            path: self.kv_path("metadata", key),
            body: None,
            authenticated: true,
        };
        let reply = self.send(&req, deadline)?;
        match reply.status {
            200 => {
                let env: Envelope<Metadata> = reply.json("a metadata read")?;
                Ok(env.data)
            }
            _ if Self::is_not_found(&reply) => Ok(None),
            _ => Err(self.unexpected("a metadata read", &reply)),
        }
    }

    fn write_lock(&self, key: &SecretKey) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        self.write_locks[(hash % WRITE_LOCK_STRIPES as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn own(&self) -> std::sync::MutexGuard<'_, OwnWrites> {
        self.own_writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember_own(&self, key: &SecretKey, version: Option<u64>) {
        let mut own = self.own();
        if own.len >= MAX_OWN_WRITES {
            // Forgetting only costs the poller a duplicate event (in-flight marks are kept:
            // their writes' outcomes are still to come).
            own.done.clear();
            own.len = 0;
        }
        own.done.entry(key.clone()).or_default().push(version);
        own.len += 1;
    }

    /// Every key's version now; the baseline for [`OpenBaoStore::changes_since`].
    ///
    /// Costs one LIST plus one metadata read per key.
    pub fn snapshot(&self) -> Result<KvSnapshot> {
        let deadline = self.deadline();
        let mut versions = BTreeMap::new();
        for key in self.list(deadline)? {
            if let Some(meta) = self.read_metadata(&key, deadline)? {
                if let Some(v) = meta.live_version() {
                    versions.insert(key, v);
                }
            }
        }
        Ok(KvSnapshot { versions })
    }

    /// The changes since `since` that this store did not make itself (another machine's writes),
    /// and the new snapshot to pass next time. The broker calls this at its polling interval
    /// and emits the usual change events; OpenBao offers no push notification for KV writes.
    ///
    /// A key written and deleted again between two polls is not seen; a key written twice is
    /// reported once. A key this store is writing while the snapshot is taken is compared
    /// again at the next poll (so a change by another writer to a key this store keeps
    /// writing back to back is reported late).
    pub fn changes_since(
        &self,
        since: &KvSnapshot,
    ) -> Result<(KvSnapshot, Vec<(SecretKey, ChangeKind)>)> {
        let mut now = self.snapshot()?;
        let mut own = self.own();
        let own = &mut *own;
        let mut changes = Vec::new();
        for (key, kind, version) in diff_snapshots(since, &now) {
            if own.in_flight.contains_key(&key) {
                // The version seen may be that write's, whose outcome is not known yet: keep
                // the key as it was, so the next poll compares again (and reports a change
                // that is not this store's then).
                match since.versions.get(&key) {
                    Some(v) => now.versions.insert(key, *v),
                    None => now.versions.remove(&key),
                };
                continue;
            }
            let mine = own.done.get_mut(&key).and_then(|outcomes| {
                let at = outcomes.iter().position(|o| *o == version)?;
                // That write and the earlier ones (which it followed) are accounted for.
                own.len -= at + 1;
                outcomes.drain(..=at);
                Some(outcomes.is_empty())
            });
            match mine {
                Some(true) => {
                    own.done.remove(&key);
                }
                Some(false) => {}
                None => changes.push((key, kind)),
            }
        }
        Ok((now, changes))
    }

    fn list(&self, deadline: Instant) -> Result<Vec<SecretKey>> {
        let req = Request {
            method: Method::List,
            path: self.list_path(),
            body: None,
            authenticated: true,
        };
        let reply = self.send(&req, deadline)?;
        if Self::is_not_found(&reply) {
            return Ok(Vec::new());
        }
        if reply.status != 200 {
            return Err(self.unexpected("a listing", &reply));
        }
        let env: Envelope<ListReply> = reply.json("a listing")?;
        let names = env.data.map(|d| d.keys).unwrap_or_default();
        let mut keys = Vec::with_capacity(names.len());
        for name in names {
            if name.ends_with('/') {
                // A folder: not a key of ours (ours never contain '/').
                continue;
            }
            match decode_key(&name) {
                Ok(k) => keys.push(k),
                Err(e) => tracing::warn!(
                    target: "keyshare::openbao",
                    "skipping an entry under {:?} that keyshare did not write: {e}",
                    self.config.prefix
                ),
            }
        }
        Ok(keys)
    }

    /// Asks every configured node for its health, the leader, and the token's state: what
    /// `keyshare doctor` shows. Never fails; what could not be learned is reported inside.
    pub fn probe(&self) -> OpenBaoStatus {
        let deadline = self.deadline();
        let health = Request {
            method: Method::Get,
            path: "sys/health?standbyok=false&perfstandbyok=false".to_owned(),
            body: None,
            authenticated: false,
        };
        let mut nodes = Vec::new();
        for address in &self.addresses {
            let started = Instant::now();
            let budget = deadline.saturating_duration_since(started);
            let node = match self.exchange(address, &health, None, budget) {
                Ok(reply) => NodeHealth {
                    address: address.clone(),
                    state: match reply.status {
                        200 => NodeState::Active,
                        429 => NodeState::Standby,
                        473 => NodeState::PerformanceStandby,
                        503 => NodeState::Sealed,
                        501 => NodeState::Uninitialized,
                        s => NodeState::Other(s),
                    },
                    latency: Some(started.elapsed()),
                    version: serde_json::from_slice::<HealthReply>(&reply.body)
                        .ok()
                        .map(|h| h.version)
                        .filter(|v| !v.is_empty()),
                },
                Err((_, what)) => NodeHealth {
                    address: address.clone(),
                    state: NodeState::Unreachable(what),
                    latency: None,
                    version: None,
                },
            };
            nodes.push(node);
        }
        let leader_req = Request {
            method: Method::Get,
            path: "sys/leader".to_owned(),
            body: None,
            authenticated: false,
        };
        let leader_reply = self
            .send(&leader_req, deadline)
            .ok()
            .and_then(|r| serde_json::from_slice::<LeaderReply>(&r.body).ok());
        let ha_enabled = leader_reply.as_ref().map(|l| l.ha_enabled);
        let leader = leader_reply
            .map(|l| l.leader_address)
            .filter(|l| !l.is_empty());
        let lookup = Request {
            method: Method::Get,
            path: "auth/token/lookup-self".to_owned(),
            body: None,
            authenticated: true,
        };
        let started = Instant::now();
        let mut latency = None;
        let mut answered_by = None;
        let token = self.send(&lookup, deadline).and_then(|reply| {
            latency = Some(started.elapsed());
            answered_by = Some(reply.address.clone());
            if reply.status != 200 {
                return Err(self.unexpected("a token lookup", &reply));
            }
            let env: Envelope<LookupSelf> = reply.json("a token lookup")?;
            let data = env
                .data
                .ok_or_else(|| self.unexpected("a token lookup", &reply))?;
            Ok(TokenInfo {
                ttl: (data.ttl > 0).then(|| Duration::from_secs(data.ttl)),
                expire_time: data.expire_time.filter(|t| !t.is_empty()),
                renewable: data.renewable,
                display_name: data.display_name,
                policies: data.policies,
            })
        });
        OpenBaoStatus {
            nodes,
            ha_enabled,
            leader,
            auth_method: self.config.auth.method(),
            token,
            latency,
            answered_by,
        }
    }
}

/// A request path for messages: without the query, and cut short (a 4 KiB key escapes to
/// 20 KiB of URL, which would bury the message).
fn shown_path(path: &str) -> String {
    const MAX: usize = 160;
    let path = path.split('?').next().unwrap_or_default();
    if path.len() <= MAX {
        return path.to_owned();
    }
    let mut cut = MAX;
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes)", &path[..cut], path.len())
}

/// A number in [0, 1) that differs between threads and calls; only for spreading retries.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The token as text to send, if it is one: not empty, printable ASCII.
fn token_text(token: &SecretValue) -> Option<&str> {
    std::str::from_utf8(token.expose_secret())
        .ok()
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
}

fn classify_transport(e: &ureq::Error, timeout: Duration) -> (UnavailableReason, String) {
    match e {
        ureq::Error::Timeout(which) => (
            UnavailableReason::TimedOut,
            format!("no answer within {timeout:?} ({which})"),
        ),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => (
            UnavailableReason::TimedOut,
            format!("no answer within {timeout:?}"),
        ),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => (
            UnavailableReason::NotRunning,
            format!("TLS failed ({e}); check the address and the configured CA file"),
        ),
        // rustls reports certificate problems as invalid data on the stream.
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => (
            UnavailableReason::NotRunning,
            format!("TLS failed ({io}); check the address and the configured CA file"),
        ),
        ureq::Error::HostNotFound => (
            UnavailableReason::NotRunning,
            "host name not found".to_owned(),
        ),
        _ => (
            UnavailableReason::NotRunning,
            format!("cannot connect ({e})"),
        ),
    }
}

impl Store for OpenBaoStore {
    fn info(&self) -> StoreInfo {
        let tls = if self.addresses.iter().all(|a| a.starts_with("http://")) {
            "plain HTTP on loopback".to_owned()
        } else {
            match &self.config.ca_file {
                Some(ca) => format!("TLS, CA {}", ca.display()),
                None => "TLS, public web roots".to_owned(),
            }
        };
        StoreInfo {
            kind: "openbao",
            location: format!(
                "{} mount {} path {}",
                self.addresses.join(","),
                self.config.mount,
                self.config.prefix
            ),
            protection: format!(
                "OpenBao server (encrypted at rest by the server; {tls}; {} auth)",
                self.config.auth.method()
            ),
        }
    }

    /// `Ok(None)` when the key has no live version. `Corrupt` when the entry was not written by
    /// keyshare (no base64 `value` field); it is left untouched.
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let req = Request {
            method: Method::Get,
            path: self.kv_path("data", key),
            body: None,
            authenticated: true,
        };
        let reply = self.send(&req, self.deadline())?;
        if Self::is_not_found(&reply) {
            return Ok(None);
        }
        if reply.status != 200 {
            return Err(self.unexpected("a read", &reply));
        }
        let corrupt = |detail: &str| Error::Corrupt {
            store: STORE_NAME.to_owned(),
            key: Some(key.as_str().to_owned()),
            detail: format!(
                "{} at {}: {detail}",
                self.config.mount,
                self.human_path(key)
            ),
        };
        let env: Envelope<KvData> = serde_json::from_slice(&reply.body).map_err(|e| {
            corrupt(&format!(
                "the entry is not KV v2 JSON ({})",
                e.classify_name()
            ))
        })?;
        let fields = env
            .data
            .and_then(|d| d.data)
            .ok_or_else(|| corrupt("the entry has no data"))?;
        if let Some(enc) = fields.encoding.as_deref() {
            if enc != "base64" {
                return Err(corrupt(&format!("unknown encoding {enc:?}")));
            }
        }
        let b64 = fields
            .value
            .ok_or_else(|| corrupt("the entry has no `value` field (not written by keyshare?)"))?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(b64.len() * 3 / 4 + 3));
        base64::engine::general_purpose::STANDARD
            .decode_vec(b64.as_bytes(), &mut bytes)
            // The decoder's message would quote an offending character of the secret.
            .map_err(|_| corrupt("the `value` field is not valid base64"))?;
        Ok(Some(SecretValue::from(bytes)))
    }

    /// A check-and-set write (see the module docs). `TooLarge` before any request when the
    /// value exceeds the limits; `Unavailable` (Backend) when other writers won the race
    /// `cas_retries + 1` times in a row.
    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.config.limits.check_value(value)?;
        let deadline = self.deadline();
        let mut encoded = Zeroizing::new(String::with_capacity(value.len() * 4 / 3 + 4));
        base64::engine::general_purpose::STANDARD
            .encode_string(value.expose_secret(), &mut encoded);
        let path = self.kv_path("data", key);
        let _turn = self.write_lock(key);
        let _in_flight = InFlight::start(self, key);
        let mut conflicts = 0u32;
        for _ in 0..=self.config.cas_retries {
            let version = self
                .read_metadata(key, deadline)?
                .map(|m| m.current_version)
                .unwrap_or(0);
            let head = format!("{{\"options\":{{\"cas\":{version}}},\"data\":{{\"encoding\":\"base64\",\"value\":\"");
            let tail = "\"}}";
            let mut body =
                Zeroizing::new(Vec::with_capacity(head.len() + encoded.len() + tail.len()));
            body.extend_from_slice(head.as_bytes());
            body.extend_from_slice(encoded.as_bytes());
            body.extend_from_slice(tail.as_bytes());
            let req = Request {
                method: Method::Post,
                path: path.clone(),
                body: Some(&body),
                authenticated: true,
            };
            let reply = self.send(&req, deadline)?;
            match reply.status {
                200 | 204 => {
                    let written = reply
                        .json::<Envelope<WriteReply>>("a write")
                        .ok()
                        .and_then(|e| e.data)
                        .map(|w| w.version);
                    if let Some(v) = written {
                        self.remember_own(key, Some(v));
                    }
                    return Ok(());
                }
                400 if reply.server_errors().contains("check-and-set") => {
                    self.cas_conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(target: "keyshare::openbao", "check-and-set conflict on {:?}; retrying", key.as_str());
                    // Writers that collided would collide again in lockstep: wait a random
                    // part of a growing window so one of them gets through.
                    conflicts += 1;
                    let window = CAS_BACKOFF * 2u32.saturating_pow(conflicts.min(6));
                    let pause = window.mul_f64(jitter());
                    if Instant::now() + pause >= deadline {
                        break;
                    }
                    std::thread::sleep(pause);
                    continue;
                }
                413 => {
                    return Err(Error::TooLarge {
                        limit: self.config.limits.max_value_len,
                        actual: value.len(),
                    })
                }
                _ => return Err(self.unexpected("a write", &reply)),
            }
        }
        Err(Error::unavailable(
            STORE_NAME,
            UnavailableReason::Backend,
            format!(
                "{:?} was changed by other writers {} times in a row while writing it; try again",
                key.as_str(),
                self.config.cas_retries + 1
            ),
        ))
    }

    /// Removes every version and the metadata. `Ok(true)` when the key had a live value.
    fn delete(&self, key: &SecretKey) -> Result<bool> {
        let deadline = self.deadline();
        let _turn = self.write_lock(key);
        let _in_flight = InFlight::start(self, key);
        let existed = self
            .read_metadata(key, deadline)?
            .and_then(|m| m.live_version())
            .is_some();
        let req = Request {
            method: Method::Delete,
            path: self.kv_path("metadata", key),
            body: None,
            authenticated: true,
        };
        let reply = self.send(&req, deadline)?;
        if !(matches!(reply.status, 200 | 204) || Self::is_not_found(&reply)) {
            return Err(self.unexpected("a delete", &reply));
        }
        if existed {
            // Only a delete of a live value shows in snapshots. Remembering the others would
            // hide a later delete by another writer (versions restart after a delete).
            self.remember_own(key, None);
        }
        Ok(existed)
    }

    /// One LIST of the prefix; a missing prefix is an empty list. Entries whose names keyshare
    /// did not write are skipped and logged. A key whose latest version another tool
    /// soft-deleted (`bao kv delete`) is still listed until its metadata is removed.
    fn keys(&self) -> Result<Vec<SecretKey>> {
        self.list(self.deadline())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> SecretKey {
        SecretKey::new(s).unwrap()
    }

    #[test]
    fn encoding_vectors() {
        // Fixed vectors: this is an on-server format.
        let cases = [
            ("github.auth", "github.auth"),
            ("a/b", "a%2Fb"),
            ("with space%", "with%20space%25"),
            (".", "%2E"),
            ("..", "%2E%2E"),
            ("...", "..."),
            ("é", "%C3%A9"),
            ("{\"k\":1}", "%7B%22k%22%3A1%7D"),
            ("Tab\t~", "Tab%09%7E"),
        ];
        for (k, name) in cases {
            assert_eq!(encode_key(&key(k)), name, "{k:?}");
            assert_eq!(decode_key(name).unwrap(), key(k), "{name:?}");
        }
    }

    #[test]
    fn decoding_rejects_non_canonical_names() {
        for name in [
            "%41",    // escape of a safe byte
            "%c3%a9", // lowercase hex
            "a b",    // raw unsafe byte
            "a/b",    // a folder
            "%",      // truncated
            "%4",     // truncated
            "%ZZ",    // not hex
            "%FF",    // not UTF-8
            "%00",    // NUL
            ".",      // the raw operators
            "..", "",
        ] {
            let err = decode_key(name).unwrap_err();
            assert!(
                matches!(err, Error::Invalid { what: "key", .. }),
                "{name:?}: {err}"
            );
        }
    }

    proptest! {
        #[test]
        fn any_key_round_trips_through_the_path_encoding(s in "[^\u{0}]{1,64}") {
            let k = SecretKey::new(s).unwrap();
            let name = encode_key(&k);
            prop_assert!(name.bytes().all(|b| is_safe(b) || b == b'%'));
            prop_assert!(name != "." && name != "..");
            prop_assert_eq!(decode_key(&name).unwrap(), k);
        }

        #[test]
        fn any_byte_string_decodes_only_to_its_own_encoding(s in "[A-Za-z0-9._%-]{1,16}") {
            if let Ok(k) = decode_key(&s) {
                prop_assert_eq!(encode_key(&k), s);
            }
        }
    }

    #[test]
    fn addresses_are_validated() {
        assert_eq!(
            normalize_address("https://bao.example:8200/").unwrap(),
            "https://bao.example:8200"
        );
        assert!(normalize_address("http://127.0.0.1:8200").is_ok());
        assert!(normalize_address("http://[::1]:8200").is_ok());
        assert!(normalize_address("http://localhost:8200").is_ok());
        let plain = normalize_address("http://bao.example:8200").unwrap_err();
        assert!(plain.to_string().contains("plain http"), "{plain}");
        assert!(normalize_address("bao.example:8200").is_err());
        assert!(normalize_address("https://bao.example:8200/v1").is_err());
        assert!(normalize_address("https://user@bao.example").is_err());
        assert!(normalize_address("ftp://bao.example").is_err());
    }

    fn config() -> OpenBaoConfig {
        OpenBaoConfig::new(
            vec!["http://127.0.0.1:1".into()],
            "secret",
            "keyshare/dev.keyshare.shared-secrets",
            OpenBaoAuth::token(key("openbao.token")),
        )
    }

    #[test]
    fn mount_and_prefix_are_validated() {
        let creds: Arc<dyn Store> = Arc::new(crate::MemoryStore::new());
        assert!(OpenBaoStore::new(config(), creds.clone()).is_ok());
        for (mount, prefix) in [
            ("", "p"),
            ("sec ret", "p"),
            ("secret", "a/../b"),
            ("secret", "a//b"),
            ("secret", "a/%2F"),
        ] {
            let mut c = config();
            c.mount = mount.into();
            c.prefix = prefix.into();
            let err = OpenBaoStore::new(c, creds.clone()).unwrap_err();
            assert!(
                matches!(err, Error::Invalid { .. }),
                "{mount:?} {prefix:?}: {err}"
            );
        }
        assert_eq!(
            config().with_namespace("x").prefix,
            "keyshare/dev.keyshare.shared-secrets/x"
        );
    }

    #[test]
    fn bad_ca_files_are_reported() {
        let creds: Arc<dyn Store> = Arc::new(crate::MemoryStore::new());
        let dir = std::env::temp_dir().join(format!("keyshare-openbao-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = config();
        c.ca_file = Some(dir.join("missing.pem"));
        assert!(matches!(
            OpenBaoStore::new(c.clone(), creds.clone()),
            Err(Error::Io { .. })
        ));
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        c.ca_file = Some(empty);
        let err = OpenBaoStore::new(c, creds).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn paths_escape_the_percent_for_the_url() {
        let s = OpenBaoStore::new(config(), Arc::new(crate::MemoryStore::new())).unwrap();
        assert_eq!(
            s.kv_path("data", &key("a/b")),
            "secret/data/keyshare/dev.keyshare.shared-secrets/a%252Fb"
        );
        assert_eq!(
            s.list_path(),
            "secret/metadata/keyshare/dev.keyshare.shared-secrets/?list=true"
        );
    }

    #[test]
    fn unreachable_server_is_unavailable_not_missing_and_bounded() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let mut c = config();
        c.timeout = Duration::from_millis(300);
        let creds = Arc::new(crate::MemoryStore::new());
        creds
            .set(&key("openbao.token"), &SecretValue::from_slice(b"t"))
            .unwrap();
        let s = OpenBaoStore::new(c, creds).unwrap();
        let started = Instant::now();
        let err = s.get(&key("k")).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    reason: UnavailableReason::NotRunning,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    }

    /// A loopback HTTP server answering every request with `status` and `body` (JSON when
    /// `json`, otherwise an HTML page as a proxy would send), until the test ends.
    fn answering(status: u16, json: bool, body: &'static str) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // Requests here carry no body: read up to the end of the headers.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                let kind = if json {
                    "application/json"
                } else {
                    "text/html"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        address
    }

    fn store_at(address: String) -> OpenBaoStore {
        let mut c = config();
        c.addresses = vec![address];
        c.timeout = Duration::from_secs(5);
        let creds = Arc::new(crate::MemoryStore::new());
        creds
            .set(&key("openbao.token"), &SecretValue::from_slice(b"t"))
            .unwrap();
        OpenBaoStore::new(c, creds).unwrap()
    }

    #[test]
    fn a_404_that_is_not_an_openbao_answer_is_unavailable_not_missing() {
        let s = store_at(answering(
            404,
            false,
            "<html><body><h1>404 Not Found</h1>nginx</body></html>",
        ));
        let is_backend = |e: &Error| {
            matches!(
                e,
                Error::Unavailable {
                    reason: UnavailableReason::Backend,
                    ..
                }
            )
        };
        let err = s.get(&key("k")).unwrap_err();
        assert!(is_backend(&err), "{err}");
        let shown = err.to_string();
        assert!(shown.contains("HTTP 404"), "{shown}");
        assert!(shown.contains("not an OpenBao answer"), "{shown}");
        let err = s.keys().unwrap_err();
        assert!(is_backend(&err), "{err}");
        let err = s.delete(&key("k")).unwrap_err();
        assert!(is_backend(&err), "{err}");
    }

    #[test]
    fn a_404_with_an_empty_error_list_or_a_data_envelope_is_not_found() {
        let s = store_at(answering(404, true, r#"{"errors":[]}"#));
        assert!(s.get(&key("k")).unwrap().is_none());
        assert!(s.keys().unwrap().is_empty());
        assert!(!s.delete(&key("k")).unwrap());
        // KV's answer for a soft-deleted latest version.
        let s = store_at(answering(
            404,
            true,
            r#"{"data":{"data":null,"metadata":{"deletion_time":"2026-01-01T00:00:00Z","destroyed":false,"version":2}}}"#,
        ));
        assert!(s.get(&key("k")).unwrap().is_none());
        // A 404 naming an error (no such mount) stays a configuration problem.
        let s = store_at(answering(
            404,
            true,
            r#"{"errors":["no handler for route \"nope/data/x\""]}"#,
        ));
        let err = s.get(&key("k")).unwrap_err();
        assert!(err.to_string().contains("KV version 2"), "{err}");
    }

    #[test]
    fn missing_token_is_denied_with_what_to_do() {
        let s = OpenBaoStore::new(config(), Arc::new(crate::MemoryStore::new())).unwrap();
        let err = s.get(&key("k")).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    reason: UnavailableReason::Denied,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("openbao.token"), "{err}");
        assert!(err.to_string().contains("store one there"), "{err}");
    }

    /// An application that stores the credential with a command of its own says so instead of
    /// the library's advice; the key is still named.
    #[test]
    fn the_credential_advice_can_name_the_applications_command() {
        let advice = "run `app login`";
        let s = OpenBaoStore::new(config(), Arc::new(crate::MemoryStore::new()))
            .unwrap()
            .with_credential_advice(advice);
        let err = s.get(&key("k")).unwrap_err().to_string();
        assert!(
            err.contains("openbao.token") && err.contains(advice),
            "{err}"
        );
        assert!(!err.contains("store one there"), "{err}");

        let creds = Arc::new(crate::MemoryStore::new());
        creds
            .set(
                &key("openbao.token"),
                &SecretValue::from_slice(b"two words"),
            )
            .unwrap();
        let s = OpenBaoStore::new(config(), creds)
            .unwrap()
            .with_credential_advice(advice);
        let err = s.get(&key("k")).unwrap_err().to_string();
        assert!(
            err.contains("not printable ASCII") && err.contains(advice),
            "{err}"
        );
        assert!(!err.contains("two words"), "{err}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let creds = Arc::new(crate::MemoryStore::new());
        creds
            .set(
                &key("openbao.token"),
                &SecretValue::from_slice(b"hvs.very-secret"),
            )
            .unwrap();
        let s = OpenBaoStore::new(config(), creds).unwrap();
        *s.session.lock().unwrap() = Some(Session {
            token: SecretValue::from_slice(b"hvs.very-secret"),
            renew_at: None,
        });
        let shown = format!("{s:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn snapshot_diff_reports_sets_and_deletes() {
        let snap = |pairs: &[(&str, u64)]| KvSnapshot {
            versions: pairs.iter().map(|(k, v)| (key(k), *v)).collect(),
        };
        let old = snap(&[("a", 1), ("b", 4), ("c", 2)]);
        let new = snap(&[("a", 1), ("b", 5), ("d", 1)]);
        let mut changes: Vec<_> = diff_snapshots(&old, &new)
            .into_iter()
            .map(|(k, kind, _)| (k.as_str().to_owned(), kind))
            .collect();
        changes.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(
            changes,
            vec![
                ("b".to_owned(), ChangeKind::Set),
                ("c".to_owned(), ChangeKind::Delete),
                ("d".to_owned(), ChangeKind::Set),
            ]
        );
        assert!(diff_snapshots(&new, &new).is_empty());
    }

    #[test]
    fn metadata_live_version() {
        let meta: Metadata = serde_json::from_str(
            r#"{"current_version":3,"versions":{"2":{"deletion_time":"","destroyed":false},"3":{"deletion_time":"2026-01-01T00:00:00Z","destroyed":false}}}"#,
        )
        .unwrap();
        assert_eq!(meta.live_version(), None);
        let meta: Metadata = serde_json::from_str(
            r#"{"current_version":2,"versions":{"2":{"deletion_time":"","destroyed":false}}}"#,
        )
        .unwrap();
        assert_eq!(meta.live_version(), Some(2));
    }
}
