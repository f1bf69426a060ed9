//! The freedesktop Secret Service (gnome-keyring, KWallet, KeePassXC, oo7-daemon) as a [`Store`].
//!
//! # Schema
//!
//! Every secret is one item in the default collection (the one the alias `default` names,
//! normally the login keyring):
//!
//! | attribute    | value                                                   |
//! |--------------|---------------------------------------------------------|
//! | `xdg:schema` | `dev.keyshare.Secret` ([`SCHEMA`])                      |
//! | `service`    | the namespace: a flavour's shared service name          |
//! | `account`    | the key                                                 |
//!
//! The label is `keyshare: <key> (<service>)`; the secret's content type is
//! `application/octet-stream` (values are bytes). Lookups match `service` and `account` only, so
//! other tools interoperate both ways:
//!
//! ```text
//! secret-tool lookup service dev.keyshare.shared-secrets account github.auth
//! printf %s "$TOKEN" | secret-tool store --label=x service dev.keyshare.shared-secrets account github.auth
//! ```
//!
//! Vault key-encryption keys ([`SecretServiceKekStore`]) are items of their own: `xdg:schema` =
//! `dev.keyshare.VaultKey` ([`VAULT_KEY_SCHEMA`]), `vault` = the vault id (32 hex digits), label
//! `keyshare vault key <id>`, one per vault (so one per flavour).
//!
//! Electron apps' safeStorage secrets ([`SafeStorageLookup`], read only) are Chromium's items:
//! attribute `application` = the app's name, `xdg:schema` = [`CHROMIUM_SAFE_STORAGE_SCHEMA`].
//! Their label changed between Electron versions, so they are found by `application` alone.
//!
//! # Behaviour
//!
//! - One D-Bus connection and one encrypted (DH) session, opened again when the service says
//!   the session is gone (the keyring daemon restarted) or the connection was lost: the call
//!   that found out is made once more on the new session.
//! - Every call is bounded by the store's timeout; past it the call gives up with
//!   [`UnavailableReason::TimedOut`] (whatever it started may still complete).
//! - A locked collection is reported as [`UnavailableReason::Locked`] at once: the store never
//!   asks for an unlock prompt, because there may be nobody to answer it.
//! - Other clients may delete an item between the search that found it and the call that reads
//!   or deletes it. Such an item counts as gone (a read searches again, a bounded number of
//!   times; a delete or the removal of an older copy has nothing left to do), never as an
//!   error (`Existence`, below, says which D-Bus errors mean that).
//! - The calls run on the calling thread with a small executor of their own (zbus runs its I/O
//!   on a thread of its own); no tokio runtime is involved, so the store may be called from any
//!   thread, including tokio's blocking pool.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secret_service::{Collection, EncryptionType, Item, SearchItemsResult, SecretService};
use zbus::zvariant::OwnedObjectPath;

use zeroize::Zeroizing;

use crate::error::{Error, Result, UnavailableReason};
use crate::model::{Limits, SecretKey, SecretValue};
use crate::store::vault::{Kek, KekStore, VaultId};
use crate::store::{Store, StoreInfo};

/// The `xdg:schema` attribute of the items keyshare writes.
pub const SCHEMA: &str = "dev.keyshare.Secret";

/// The `xdg:schema` attribute of the items holding vault keys.
pub const VAULT_KEY_SCHEMA: &str = "dev.keyshare.VaultKey";

/// The content type of the secrets keyshare writes: values are bytes.
pub const CONTENT_TYPE: &str = "application/octet-stream";

const STORE: &str = "secret service";
const SECRETS_NAME: &str = "org.freedesktop.secrets";
const ATTR_SCHEMA: &str = "xdg:schema";
const ATTR_SERVICE: &str = "service";
const ATTR_ACCOUNT: &str = "account";
const ATTR_VAULT: &str = "vault";
const ATTR_APPLICATION: &str = "application";

/// The `xdg:schema` of the safeStorage items Chromium's libsecret backend writes today.
pub const CHROMIUM_SAFE_STORAGE_SCHEMA: &str = "chrome_libsecret_os_crypt_password_v2";
const WHAT_TO_DO_LOCKED: &str =
    "unlock your login keyring (log in to the desktop, or run `gnome-keyring-daemon --unlock`), \
     or use the vault: --store vault";
const WHAT_TO_DO_NOT_RUNNING: &str =
    "start a Secret Service (e.g. gnome-keyring) in this session and make sure \
     DBUS_SESSION_BUS_ADDRESS points at its bus, or use the vault: --store vault";

/// Which D-Bus bus to find the Secret Service on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bus {
    /// The session bus: `DBUS_SESSION_BUS_ADDRESS`, else `$XDG_RUNTIME_DIR/bus`.
    Session,
    /// A bus at an explicit D-Bus address, e.g. `unix:path=/run/user/1000/bus`.
    Address(String),
}

impl Bus {
    fn describe(&self) -> String {
        match self {
            Bus::Session => match std::env::var("DBUS_SESSION_BUS_ADDRESS") {
                Ok(address) => format!("the session bus (DBUS_SESSION_BUS_ADDRESS={address})"),
                Err(_) => "the session bus (DBUS_SESSION_BUS_ADDRESS is not set)".to_owned(),
            },
            Bus::Address(address) => format!("the bus at {address}"),
        }
    }

    async fn connect(&self) -> zbus::Result<zbus::Connection> {
        match self {
            Bus::Session => zbus::connection::Builder::session()?.build().await,
            Bus::Address(address) => {
                zbus::connection::Builder::address(address.as_str())?
                    .build()
                    .await
            }
        }
    }
}

/// A [`Store`] over the Secret Service's default collection, within one namespace (the
/// `service` attribute). See the module documentation for the schema.
pub struct SecretServiceStore {
    namespace: String,
    timeout: Duration,
    limits: Limits,
    link: Arc<Link>,
    /// Run with the object paths each search of this store found, before it uses them.
    #[cfg(feature = "testing")]
    after_search: Option<AfterSearch>,
}

/// See [`SecretServiceStore::after_search`].
#[cfg(feature = "testing")]
type AfterSearch = Arc<dyn Fn(&[String]) + Send + Sync>;

/// One D-Bus connection with its open session.
struct Connection {
    bus: Bus,
    service: SecretService<'static>,
    /// The default collection's object path, resolved on first use. Cleared when the
    /// collection disappears, so that the next call resolves the alias again.
    default_collection: Mutex<Option<OwnedObjectPath>>,
    /// A call found the session or the connection gone: the next call opens new ones.
    stale: AtomicBool,
}

/// The way to the Secret Service shared by the stores made from one another: the connection
/// in use, replaced by a new one once a call finds it stale. Found by QA: after gnome-keyring
/// restarted, a broker's store kept its session with the daemon that died, and every read and
/// write failed ("NoSession: The session does not exist") until the broker was restarted.
struct Link {
    bus: Bus,
    current: Mutex<Arc<Connection>>,
}

impl Link {
    fn new(connection: Connection) -> Arc<Link> {
        Arc::new(Link {
            bus: connection.bus.clone(),
            current: Mutex::new(Arc::new(connection)),
        })
    }

    fn current(&self) -> Arc<Connection> {
        // Replaced whole: a panic cannot leave it torn.
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new connection in place of `stale`, unless another call has replaced it already.
    async fn renewed(&self, stale: &Arc<Connection>) -> Result<Arc<Connection>> {
        let current = self.current();
        if !Arc::ptr_eq(&current, stale) {
            return Ok(current);
        }
        tracing::info!(
            "the Secret Service session on {} is gone (the keyring daemon restarted, or the \
             connection was lost); opening a new one",
            self.bus.describe()
        );
        let fresh = Arc::new(Connection::open(self.bus.clone()).await?);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    /// Runs `call` on the current connection, and once more on a new one when it failed
    /// because the session or the connection was gone. Every call made through here may run
    /// twice: reads, and writes whose second run changes nothing more than the first.
    async fn call<T, F: Future<Output = Result<T>>>(
        &self,
        mut call: impl FnMut(Arc<Connection>) -> F,
    ) -> Result<T> {
        let mut connection = self.current();
        if connection.is_stale() {
            connection = self.renewed(&connection).await?;
        }
        let result = call(connection.clone()).await;
        if result.is_err() && connection.is_stale() {
            let fresh = self.renewed(&connection).await?;
            return call(fresh).await;
        }
        result
    }
}

impl fmt::Debug for SecretServiceStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretServiceStore")
            .field("namespace", &self.namespace)
            .field("bus", &self.link.bus)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// [`Connection::open`] bounded by `timeout` (a bus that accepts the connection and then
    /// never answers must not hang the caller).
    fn open_within(bus: Bus, timeout: Duration) -> Result<Connection> {
        let described = bus.describe();
        bounded(
            timeout,
            || format!("connecting on {described}"),
            Connection::open(bus),
        )
    }

    async fn open(bus: Bus) -> Result<Self> {
        let connection = bus.connect().await.map_err(|e| {
            Error::unavailable(
                STORE,
                UnavailableReason::NotRunning,
                format!(
                    "cannot connect to {}: {e}; {WHAT_TO_DO_NOT_RUNNING}",
                    bus.describe()
                ),
            )
        })?;
        let service = SecretService::connect_with_existing(EncryptionType::Dh, connection)
            .await
            .map_err(|e| map_error(e, &bus, "opening a session"))?;
        Ok(Connection {
            bus,
            service,
            default_collection: Mutex::new(None),
            stale: AtomicBool::new(false),
        })
    }

    fn map(&self, error: secret_service::Error, doing: &str) -> Error {
        if existence(&error) != Existence::Other {
            // The collection we cached may be gone (deleted, or the daemon restarted).
            *self.cache() = None;
        }
        if session_gone(&error) {
            self.stale.store(true, Ordering::Relaxed);
        }
        map_error(error, &self.bus, doing)
    }

    fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// `result`, of a call on the item at `path` that a search for `attributes` found:
    /// `Ok(None)` when the call failed because the item no longer exists (another client deleted
    /// it since), the error (as [`Connection::map`] makes it) when it failed otherwise.
    async fn unless_vanished<T>(
        &self,
        result: std::result::Result<T, secret_service::Error>,
        path: &OwnedObjectPath,
        attributes: HashMap<&str, &str>,
        doing: &str,
    ) -> Result<Option<T>> {
        let error = match result {
            Ok(value) => return Ok(Some(value)),
            Err(error) => error,
        };
        let gone = match existence(&error) {
            Existence::Gone => true,
            Existence::Other => false,
            Existence::MaybeGone => {
                let found =
                    self.service.search_items(attributes).await.map_err(|e| {
                        self.map(e, "searching again for an item that did not answer")
                    })?;
                !found
                    .unlocked
                    .iter()
                    .chain(&found.locked)
                    .any(|item| item.item_path == *path)
            }
        };
        if gone {
            tracing::debug!(item = %path.as_str(), "{doing}: the item was deleted meanwhile");
            return Ok(None);
        }
        Err(self.map(error, doing))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Option<OwnedObjectPath>> {
        // The guarded value is a plain path, replaced whole: a panic cannot leave it torn.
        self.default_collection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The default collection, unlocked; [`UnavailableReason::Locked`] if it is locked.
    async fn unlocked_default_collection(&self) -> Result<Collection<'_>> {
        let cached = self.cache().clone();
        let service: &SecretService<'_> = &self.service;
        if let Some(path) = cached {
            let collection = service
                .get_collection_by_path(path)
                .await
                .map_err(|e| self.map(e, "finding the default collection"))?;
            match collection.is_locked().await {
                Ok(locked) => return self.unless_locked(collection, locked),
                // The cached collection was deleted (by another client, or the daemon restarted
                // without it): look the alias up again, below.
                Err(e) if existence(&e) != Existence::Other => *self.cache() = None,
                Err(e) => {
                    return Err(self.map(e, "reading whether the default collection is locked"))
                }
            }
        }
        let collection = service
            .get_default_collection()
            .await
            .map_err(|e| self.map(e, "finding the default collection"))?;
        let locked = collection
            .is_locked()
            .await
            .map_err(|e| self.map(e, "reading whether the default collection is locked"))?;
        self.unless_locked(collection, locked)
    }

    /// `collection`, now cached, unless `locked`.
    fn unless_locked<'c>(
        &self,
        collection: Collection<'c>,
        locked: bool,
    ) -> Result<Collection<'c>> {
        *self.cache() = Some(collection_path(&collection));
        if locked {
            return Err(locked_error(&self.bus));
        }
        Ok(collection)
    }
}

impl SecretServiceStore {
    /// Connects to the Secret Service on the session bus and opens an encrypted session, for
    /// the items whose `service` attribute is `namespace`. Every call, this one included, gives
    /// up after `timeout`.
    ///
    /// Errors: [`Error::Invalid`] for an unusable namespace; [`Error::Unavailable`] with
    /// [`UnavailableReason::NotRunning`] when no bus or no Secret Service answers,
    /// [`UnavailableReason::TimedOut`] past the timeout. A locked collection does not fail
    /// here (each call reports it); use [`probe`] to know beforehand.
    pub fn open(namespace: &str, timeout: Duration) -> Result<Self> {
        Self::open_on(Bus::Session, namespace, timeout)
    }

    /// Like [`SecretServiceStore::open`], on the given bus.
    pub fn open_on(bus: Bus, namespace: &str, timeout: Duration) -> Result<Self> {
        check_namespace(namespace)?;
        let connection = Connection::open_within(bus, timeout)?;
        Ok(SecretServiceStore {
            namespace: namespace.to_owned(),
            timeout,
            limits: Limits::default(),
            link: Link::new(connection),
            #[cfg(feature = "testing")]
            after_search: None,
        })
    }

    /// A store over another namespace that shares this one's connection and session (and its
    /// timeout and limits).
    pub fn for_namespace(&self, namespace: &str) -> Result<Self> {
        check_namespace(namespace)?;
        Ok(SecretServiceStore {
            namespace: namespace.to_owned(),
            timeout: self.timeout,
            limits: self.limits,
            link: self.link.clone(),
            #[cfg(feature = "testing")]
            after_search: None,
        })
    }

    /// Runs `hook` right after each search this store makes (for `get`, `set`, `delete` and
    /// `keys`), with the object paths the search found, before the store reads or deletes them:
    /// lets a test act as another client that changes the items in between.
    #[cfg(feature = "testing")]
    pub fn after_search(mut self, hook: impl Fn(&[String]) + Send + Sync + 'static) -> Self {
        self.after_search = Some(Arc::new(hook));
        self
    }

    /// Replaces the value size limits (default: [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The store of vault keys on this store's connection and session.
    pub fn kek_store(&self) -> SecretServiceKekStore {
        SecretServiceKekStore {
            timeout: self.timeout,
            link: self.link.clone(),
        }
    }

    /// Electron safeStorage lookups on this store's connection and session.
    pub fn safe_storage_lookup(&self) -> SafeStorageLookup {
        SafeStorageLookup {
            timeout: self.timeout,
            link: self.link.clone(),
        }
    }

    /// The namespace: the `service` attribute of this store's items.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The bound on every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn attributes<'k>(&'k self, key: &'k SecretKey) -> HashMap<&'k str, &'k str> {
        HashMap::from([
            (ATTR_SERVICE, self.namespace.as_str()),
            (ATTR_ACCOUNT, key.as_str()),
        ])
    }

    fn run<T>(
        &self,
        doing: impl FnOnce() -> String,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        bounded(self.timeout, doing, call)
    }

    /// The items matching `attributes`, in any collection.
    async fn search<'c>(
        &self,
        conn: &'c Connection,
        attributes: HashMap<&str, &str>,
        doing: &str,
    ) -> Result<SearchItemsResult<Item<'c>>> {
        let found = conn
            .service
            .search_items(attributes)
            .await
            .map_err(|e| conn.map(e, doing))?;
        #[cfg(feature = "testing")]
        if let Some(hook) = &self.after_search {
            let paths: Vec<String> = (found.unlocked.iter().chain(&found.locked))
                .map(|item| item.item_path.as_str().to_owned())
                .collect();
            hook(&paths);
        }
        Ok(found)
    }

    async fn get_once(&self, conn: &Connection, key: &SecretKey) -> Result<Read> {
        let found = self.search(conn, self.attributes(key), "searching").await?;
        if let Some(item) = newest(found.unlocked).await {
            let secret = item.get_secret().await;
            return Ok(
                match conn
                    .unless_vanished(
                        secret,
                        &item.item_path,
                        self.attributes(key),
                        "reading the secret",
                    )
                    .await?
                {
                    Some(secret) => Read::Found(SecretValue::new(secret)),
                    None => Read::Vanished,
                },
            );
        }
        if !found.locked.is_empty() {
            return Err(locked_error(&conn.bus));
        }
        // Nothing matched. A locked collection may simply not show its items: only an unlocked
        // one makes "not found" true.
        conn.unlocked_default_collection().await?;
        Ok(Read::Missing)
    }

    async fn set_async(
        &self,
        conn: &Connection,
        key: &SecretKey,
        value: &SecretValue,
    ) -> Result<()> {
        // Checked first so that a locked collection fails fast instead of asking for a prompt.
        let collection = conn.unlocked_default_collection().await?;
        let mut attributes = self.attributes(key);
        attributes.insert(ATTR_SCHEMA, SCHEMA);
        let label = format!("keyshare: {key} ({})", self.namespace);
        let created = collection
            .create_item(
                &label,
                attributes,
                value.expose_secret(),
                true,
                CONTENT_TYPE,
            )
            .await
            .map_err(|e| conn.map(e, "storing the secret"))?;
        // `replace` only replaces an item with exactly our attributes. A copy stored by another
        // tool (without `xdg:schema`, say) or in another collection would shadow ours on the
        // next read: the key must have one value, so remove the others.
        let found = self
            .search(conn, self.attributes(key), "searching for older copies")
            .await?;
        for other in found
            .unlocked
            .iter()
            .filter(|item| item.item_path != created.item_path)
        {
            // Already deleted by someone else: gone either way.
            let deleted = other.delete().await;
            conn.unless_vanished(
                deleted,
                &other.item_path,
                self.attributes(key),
                "deleting an older copy",
            )
            .await?;
        }
        Ok(())
    }

    async fn delete_async(&self, conn: &Connection, key: &SecretKey) -> Result<bool> {
        let found = self.search(conn, self.attributes(key), "searching").await?;
        if !found.locked.is_empty() {
            // Some copy cannot be deleted: report that before deleting any.
            return Err(locked_error(&conn.bus));
        }
        if found.unlocked.is_empty() {
            conn.unlocked_default_collection().await?;
            return Ok(false);
        }
        let mut deleted = false;
        for item in &found.unlocked {
            // Deleted meanwhile by someone else: gone either way, but not by this call.
            let result = item.delete().await;
            if conn
                .unless_vanished(result, &item.item_path, self.attributes(key), "deleting")
                .await?
                .is_some()
            {
                deleted = true;
            }
        }
        Ok(deleted)
    }

    async fn keys_async(&self, conn: &Connection) -> Result<Vec<SecretKey>> {
        // Listing must not miss keys hidden in a locked collection.
        conn.unlocked_default_collection().await?;
        let found = self
            .search(
                conn,
                HashMap::from([(ATTR_SERVICE, self.namespace.as_str())]),
                "searching",
            )
            .await?;
        if !found.locked.is_empty() {
            return Err(locked_error(&conn.bus));
        }
        let mut keys = BTreeSet::new();
        let all = join_all(found.unlocked.iter().map(|item| item.get_attributes())).await;
        for (item, attributes) in found.unlocked.iter().zip(all) {
            // Deleted meanwhile by someone else: not a key any more.
            let Some(attributes) = conn
                .unless_vanished(
                    attributes,
                    &item.item_path,
                    HashMap::from([(ATTR_SERVICE, self.namespace.as_str())]),
                    "reading item attributes",
                )
                .await?
            else {
                continue;
            };
            match attributes.get(ATTR_ACCOUNT).map(SecretKey::new) {
                Some(Ok(key)) => {
                    keys.insert(key);
                }
                Some(Err(e)) => tracing::warn!(
                    item = %item.item_path.as_str(),
                    "skipping a Secret Service item whose account is not a valid key: {e}"
                ),
                None => tracing::warn!(
                    item = %item.item_path.as_str(),
                    "skipping a Secret Service item with a service attribute but no account"
                ),
            }
        }
        Ok(keys.into_iter().collect())
    }
}

impl Store for SecretServiceStore {
    fn info(&self) -> StoreInfo {
        let collection = self
            .link
            .current()
            .cache()
            .as_ref()
            .map(|path| path.as_str().to_owned())
            .unwrap_or_else(|| "the default collection".to_owned());
        StoreInfo {
            kind: "secret-service",
            location: format!(
                "{collection} on {}, service={}",
                self.link.bus.describe(),
                self.namespace
            ),
            protection: "the Secret Service keyring (encrypted with the login password)".to_owned(),
        }
    }

    /// Errors: `Unavailable` (`Locked` when the item or the default collection is locked,
    /// `NotRunning`, `TimedOut`, `Backend`).
    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        self.run(
            || format!("reading key {:?}", key.as_str()),
            self.link.call(|conn| async move {
                for _ in 0..READ_ATTEMPTS {
                    match self.get_once(&conn, key).await? {
                        Read::Found(value) => return Ok(Some(value)),
                        Read::Missing => return Ok(None),
                        // Deleted (or replaced) between the search and the read: search again, to
                        // see the state after that change.
                        Read::Vanished => continue,
                    }
                }
                // Each search found an item that another client deleted before it could be read:
                // deletes of this key keep taking effect while this call runs, and a read that
                // overlaps a delete may answer as after it. (Vault keys and safeStorage secrets,
                // which nothing deletes in normal use, say instead that they kept disappearing.)
                tracing::debug!(
                    key = key.as_str(),
                    "the key's item was deleted each time it was found; answering not found"
                );
                Ok(None)
            }),
        )
    }

    /// Errors: `TooLarge` over the limits; `Unavailable` as for `get`.
    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.limits.check_value(value)?;
        // A call that timed out was still sent: the service may carry it out when it answers
        // again (after a prompt, say), so the error must not claim that nothing was written.
        self.run(
            || {
                format!(
                    "writing key {:?} (the write may still take effect when the service answers)",
                    key.as_str()
                )
            },
            self.link
                .call(|conn| async move { self.set_async(&conn, key, value).await }),
        )
    }

    /// Deletes every copy of the key. Errors: `Unavailable` as for `get`; when some copy is
    /// locked nothing is deleted.
    fn delete(&self, key: &SecretKey) -> Result<bool> {
        self.run(
            || {
                format!(
                    "deleting key {:?} (the delete may still take effect when the service answers)",
                    key.as_str()
                )
            },
            self.link
                .call(|conn| async move { self.delete_async(&conn, key).await }),
        )
    }

    /// Errors: `Unavailable` as for `get`. Items without a valid `account` are skipped.
    fn keys(&self) -> Result<Vec<SecretKey>> {
        self.run(
            || "listing keys".to_owned(),
            self.link
                .call(|conn| async move { self.keys_async(&conn).await }),
        )
    }
}

/// Vault key-encryption keys kept in the Secret Service's default collection (see the module
/// documentation for the item schema).
pub struct SecretServiceKekStore {
    timeout: Duration,
    link: Arc<Link>,
}

impl fmt::Debug for SecretServiceKekStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretServiceKekStore")
            .field("bus", &self.link.bus)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SecretServiceKekStore {
    /// Connects to the Secret Service on the session bus. Errors as for
    /// [`SecretServiceStore::open`].
    pub fn open(timeout: Duration) -> Result<Self> {
        Self::open_on(Bus::Session, timeout)
    }

    /// Like [`SecretServiceKekStore::open`], on the given bus.
    pub fn open_on(bus: Bus, timeout: Duration) -> Result<Self> {
        let connection = Connection::open_within(bus, timeout)?;
        Ok(SecretServiceKekStore {
            timeout,
            link: Link::new(connection),
        })
    }

    fn attributes(id: &str) -> HashMap<&str, &str> {
        HashMap::from([(ATTR_SCHEMA, VAULT_KEY_SCHEMA), (ATTR_VAULT, id)])
    }

    async fn find<'c>(conn: &'c Connection, id: &str) -> Result<Option<Item<'c>>> {
        let found = conn
            .service
            .search_items(Self::attributes(id))
            .await
            .map_err(|e| conn.map(e, "searching for the vault key"))?;
        if !found.locked.is_empty() {
            return Err(locked_error(&conn.bus));
        }
        if let Some(item) = newest(found.unlocked).await {
            return Ok(Some(item));
        }
        // "No key" only counts when the collection could have shown one.
        conn.unlocked_default_collection().await?;
        Ok(None)
    }

    async fn read(conn: &Connection, id: &str) -> Result<Option<Kek>> {
        for _ in 0..READ_ATTEMPTS {
            let Some(item) = Self::find(conn, id).await? else {
                return Ok(None);
            };
            let secret = item.get_secret().await.map(Zeroizing::new);
            // Deleted between the search and the read: search again, to see what replaced it.
            if let Some(secret) = conn
                .unless_vanished(
                    secret,
                    &item.item_path,
                    Self::attributes(id),
                    "reading the vault key",
                )
                .await?
            {
                return Self::kek(id, &secret).map(Some);
            }
        }
        Err(kept_disappearing(&format!("the key of vault {id}")))
    }

    fn kek(id: &str, secret: &[u8]) -> Result<Kek> {
        Kek::from_slice(secret).map_err(|_| Error::Corrupt {
            store: STORE.to_owned(),
            key: None,
            detail: format!(
                "the Secret Service item holding the key of vault {id} has {} bytes, not {}",
                secret.len(),
                Kek::LEN
            ),
        })
    }
}

impl KekStore for SecretServiceKekStore {
    /// `Ok(None)` only when the default collection is unlocked and holds no key for the vault.
    fn load(&self, vault: &VaultId) -> Result<Option<Kek>> {
        let id = vault.to_hex();
        let id = id.as_str();
        bounded(
            self.timeout,
            || format!("reading the key of vault {id}"),
            self.link
                .call(|conn| async move { Self::read(&conn, id).await }),
        )
    }

    /// Refuses to replace the key of a vault that already has one (that would lose the vault),
    /// and reads the key back before answering `Ok`.
    fn store(&self, vault: &VaultId, kek: &Kek) -> Result<()> {
        let id = vault.to_hex();
        let id = id.as_str();
        bounded(
            self.timeout,
            || format!("storing the key of vault {id}"),
            self.link.call(|conn| async move {
                if Self::find(&conn, id).await?.is_some() {
                    return Err(Error::invalid(
                        "vault key",
                        format!("the Secret Service already holds a key for vault {id}"),
                    ));
                }
                let collection = conn.unlocked_default_collection().await?;
                collection
                    .create_item(
                        &format!("keyshare vault key {id}"),
                        Self::attributes(id),
                        kek.expose_secret(),
                        false,
                        CONTENT_TYPE,
                    )
                    .await
                    .map_err(|e| conn.map(e, "storing the vault key"))?;
                match Self::read(&conn, id).await? {
                    Some(stored) if stored.expose_secret() == kek.expose_secret() => Ok(()),
                    _ => Err(Error::unavailable(
                        STORE,
                        UnavailableReason::Backend,
                        format!("the key of vault {id} did not read back after being stored"),
                    )),
                }
            }),
        )
    }

    fn forget_uncreated(&self, vault: &VaultId) -> Result<()> {
        let id = vault.to_hex();
        let id = id.as_str();
        bounded(
            self.timeout,
            || format!("removing the key of vault {id}, which was never created"),
            self.link.call(|conn| async move {
                let found = conn
                    .service
                    .search_items(Self::attributes(id))
                    .await
                    .map_err(|e| conn.map(e, "searching for the vault key"))?;
                if !found.locked.is_empty() {
                    return Err(locked_error(&conn.bus));
                }
                for item in &found.unlocked {
                    let deleted = item.delete().await;
                    conn.unless_vanished(
                        deleted,
                        &item.item_path,
                        Self::attributes(id),
                        "removing the vault key",
                    )
                    .await?;
                }
                Ok(())
            }),
        )
    }

    fn describe(&self) -> String {
        match self.link.current().cache().as_ref() {
            Some(path) => format!(
                "Secret Service (collection {:?})",
                path.as_str().rsplit('/').next().unwrap_or_default()
            ),
            None => "Secret Service (default collection)".to_owned(),
        }
    }
}

/// Reads the keyring secret an Electron app's safeStorage uses on Linux (password store
/// `gnome-libsecret`): the secret of the item whose `application` attribute is the app's name.
pub struct SafeStorageLookup {
    timeout: Duration,
    link: Arc<Link>,
}

impl fmt::Debug for SafeStorageLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafeStorageLookup")
            .field("bus", &self.link.bus)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SafeStorageLookup {
    /// Connects to the Secret Service on the session bus. Errors as for
    /// [`SecretServiceStore::open`].
    pub fn open(timeout: Duration) -> Result<Self> {
        Self::open_on(Bus::Session, timeout)
    }

    /// Like [`SafeStorageLookup::open`], on the given bus.
    pub fn open_on(bus: Bus, timeout: Duration) -> Result<Self> {
        let connection = Connection::open_within(bus, timeout).map_err(safe_storage_advice)?;
        Ok(SafeStorageLookup {
            timeout,
            link: Link::new(connection),
        })
    }

    async fn read(conn: &Connection, app_name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        for _ in 0..READ_ATTEMPTS {
            match Self::read_once(conn, app_name).await? {
                Read::Found(secret) => return Ok(Some(secret)),
                Read::Missing => return Ok(None),
                // Deleted between the search and the read: search again.
                Read::Vanished => continue,
            }
        }
        Err(kept_disappearing(&format!(
            "the safeStorage secret of {app_name}"
        )))
    }

    async fn read_once(conn: &Connection, app_name: &str) -> Result<Read<Zeroizing<Vec<u8>>>> {
        let found = conn
            .service
            .search_items(HashMap::from([(ATTR_APPLICATION, app_name)]))
            .await
            .map_err(|e| conn.map(e, "searching for the safeStorage item"))?;
        let Some(item) = chromium_preferred(found.unlocked, app_name).await else {
            if !found.locked.is_empty() {
                return Err(locked_error(&conn.bus));
            }
            // "No item" only counts when the collection could have shown one.
            conn.unlocked_default_collection().await?;
            return Ok(Read::Missing);
        };
        let secret = item.get_secret().await.map(Zeroizing::new);
        Ok(
            match conn
                .unless_vanished(
                    secret,
                    &item.item_path,
                    HashMap::from([(ATTR_APPLICATION, app_name)]),
                    "reading the safeStorage secret",
                )
                .await?
            {
                Some(secret) => Read::Found(secret),
                None => Read::Vanished,
            },
        )
    }
}

impl crate::store::electron::KeyringLookup for SafeStorageLookup {
    /// `Ok(None)` only when the default collection is unlocked and has no item for the app.
    fn keyring_secret(&self, app_name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        bounded(
            self.timeout,
            || format!("reading the safeStorage secret of {app_name}"),
            self.link
                .call(|conn| async move { Self::read(&conn, app_name).await }),
        )
        .map_err(safe_storage_advice)
    }
}

/// The store's advice ("use the vault") does not help someone reading an Electron app's key:
/// what helps is giving the key another way.
fn safe_storage_advice(error: Error) -> Error {
    match error {
        Error::Unavailable {
            store,
            reason,
            detail,
        } => Error::Unavailable {
            store,
            reason,
            detail: detail
                .replace(", or use the vault: --store vault", "")
                .replace("; or use the vault: --store vault", "")
                + crate::store::electron::TYPE_THE_PASSWORD_INSTEAD,
        },
        other => other,
    }
}

/// When an app has several items (left over from older Electron versions), the ones with
/// Chromium's current schema first, then the newest: what Chromium itself reads.
async fn chromium_preferred<'a>(items: Vec<Item<'a>>, app_name: &str) -> Option<Item<'a>> {
    if items.len() <= 1 {
        return newest(items).await;
    }
    tracing::warn!(
        "{} Secret Service items have application={app_name:?}; using the newest with \
         Chromium's schema",
        items.len()
    );
    let schemas = join_all(items.iter().map(|item| item.get_attributes())).await;
    let (current, older): (Vec<_>, Vec<_>) =
        items.into_iter().zip(schemas).partition(|(_, attributes)| {
            attributes.as_ref().is_ok_and(|a| {
                a.get(ATTR_SCHEMA).map(String::as_str) == Some(CHROMIUM_SAFE_STORAGE_SCHEMA)
            })
        });
    let pick = if current.is_empty() { older } else { current };
    newest(pick.into_iter().map(|(item, _)| item).collect()).await
}

/// One attempt at reading a key (or another secret).
enum Read<T = SecretValue> {
    Found(T),
    Missing,
    /// The item the search found was deleted before its secret could be read.
    Vanished,
}

/// How many times a read searches again when the item it found was deleted (by another client)
/// before its secret could be read.
const READ_ATTEMPTS: usize = 5;

fn kept_disappearing(what: &str) -> Error {
    Error::unavailable(
        STORE,
        UnavailableReason::Backend,
        format!(
            "reading {what}: another client deleted its item each of the {READ_ATTEMPTS} times \
             it was found; try again"
        ),
    )
}

/// What [`probe`] found.
#[derive(Debug)]
pub struct ProbeReport {
    /// The bus probed, in words.
    pub bus: String,
    /// The default collection's object path, when the alias `default` resolved.
    pub collection: Option<String>,
    /// `Ok` when a store opened now would work; otherwise why not (always
    /// [`Error::Unavailable`]).
    pub outcome: Result<()>,
    /// How long the probe took.
    pub elapsed: Duration,
}

impl ProbeReport {
    /// True when the Secret Service answered and its default collection is unlocked.
    pub fn is_usable(&self) -> bool {
        self.outcome.is_ok()
    }

    /// True when the Secret Service answered but its default collection is locked.
    pub fn is_locked(&self) -> bool {
        matches!(
            &self.outcome,
            Err(Error::Unavailable {
                reason: UnavailableReason::Locked,
                ..
            })
        )
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.outcome, &self.collection) {
            (Ok(()), Some(collection)) => write!(
                f,
                "usable: {collection} on {} is unlocked (answered in {} ms)",
                self.bus,
                self.elapsed.as_millis()
            ),
            (Ok(()), None) => write!(f, "usable on {}", self.bus),
            (Err(e), _) => write!(f, "{e}"),
        }
    }
}

/// Says, within `timeout`, whether a Secret Service answers on the session bus and its default
/// collection is unlocked: what `--store auto` needs to know, and what `doctor` prints.
pub fn probe(timeout: Duration) -> ProbeReport {
    probe_on(Bus::Session, timeout)
}

/// Like [`probe`], on the given bus.
pub fn probe_on(bus: Bus, timeout: Duration) -> ProbeReport {
    let started = Instant::now();
    let mut collection = None;
    let outcome = bounded(
        timeout,
        || format!("probing on {}", bus.describe()),
        async {
            let connection = bus.connect().await.map_err(|e| {
                Error::unavailable(
                    STORE,
                    UnavailableReason::NotRunning,
                    format!(
                        "cannot connect to {}: {e}; {WHAT_TO_DO_NOT_RUNNING}",
                        bus.describe()
                    ),
                )
            })?;
            // No secret crosses this session, so it need not be encrypted.
            let service = SecretService::connect_with_existing(EncryptionType::Plain, connection)
                .await
                .map_err(|e| map_error(e, &bus, "opening a session"))?;
            let default = service
                .get_default_collection()
                .await
                .map_err(|e| map_error(e, &bus, "finding the default collection"))?;
            collection = Some(collection_path(&default).as_str().to_owned());
            let locked = default.is_locked().await.map_err(|e| {
                map_error(e, &bus, "reading whether the default collection is locked")
            })?;
            if locked {
                return Err(locked_error(&bus));
            }
            Ok(())
        },
    );
    ProbeReport {
        bus: bus.describe(),
        collection,
        outcome,
        elapsed: started.elapsed(),
    }
}

fn check_namespace(namespace: &str) -> Result<()> {
    if namespace.is_empty() || namespace.len() > 255 || namespace.contains('\0') {
        return Err(Error::invalid(
            "namespace",
            "a Secret Service namespace (the `service` attribute) must be 1 to 255 bytes with no NUL",
        ));
    }
    Ok(())
}

/// Runs `call` on this thread, giving up after `timeout`. Dropping the call cancels the wait
/// for its reply; whatever the service started may still complete.
fn bounded<T>(
    timeout: Duration,
    doing: impl FnOnce() -> String,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    let expired = async {
        async_io::Timer::after(timeout).await;
        Err(None)
    };
    let call = async { call.await.map_err(Some) };
    match async_io::block_on(futures_lite::future::or(call, expired)) {
        Ok(value) => Ok(value),
        Err(Some(error)) => Err(error),
        Err(None) => Err(Error::unavailable(
            STORE,
            UnavailableReason::TimedOut,
            format!(
                "no answer within {} ms while {}; the Secret Service may be hung or waiting for \
                 a prompt: restart it, or use the vault: --store vault",
                timeout.as_millis(),
                doing()
            ),
        )),
    }
}

fn collection_path(collection: &Collection<'_>) -> OwnedObjectPath {
    collection.collection_path.clone()
}

/// The item modified last, when several match (copies written by different tools).
async fn newest(mut items: Vec<Item<'_>>) -> Option<Item<'_>> {
    if items.len() <= 1 {
        return items.pop();
    }
    let modified = join_all(items.iter().map(|item| item.get_modified())).await;
    let newest = modified
        .iter()
        .enumerate()
        .max_by_key(|(_, m)| m.as_ref().ok().copied().unwrap_or(0))
        .map(|(i, _)| i)?;
    Some(items.swap_remove(newest))
}

/// Awaits all the futures, concurrently: the calls share the one connection.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn locked_error(bus: &Bus) -> Error {
    Error::unavailable(
        STORE,
        UnavailableReason::Locked,
        format!(
            "the default collection on {} is locked; {WHAT_TO_DO_LOCKED}",
            bus.describe()
        ),
    )
}

/// The D-Bus error name and message inside a Secret Service error, if it carries one.
fn dbus_error(error: &secret_service::Error) -> Option<(String, String)> {
    use zbus::DBusError;
    let from_zbus = |e: &zbus::Error| match e {
        zbus::Error::MethodError(name, message, _) => Some((
            name.as_str().to_owned(),
            message.clone().unwrap_or_default(),
        )),
        zbus::Error::FDO(fdo) => Some((
            fdo.name().as_str().to_owned(),
            fdo.description().unwrap_or_default().to_owned(),
        )),
        _ => None,
    };
    match error {
        secret_service::Error::Zbus(e) => from_zbus(e),
        secret_service::Error::ZbusFdo(fdo) => match fdo {
            zbus::fdo::Error::ZBus(e) => from_zbus(e),
            fdo => Some((
                fdo.name().as_str().to_owned(),
                fdo.description().unwrap_or_default().to_owned(),
            )),
        },
        _ => None,
    }
}

/// What a failed call on an object (an item, a collection) says about whether that object still
/// exists. Another client (a keyshare process, `secret-tool`, an editor) may delete an item
/// between the search that found it and the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existence {
    /// No object has the path: `org.freedesktop.DBus.Error.UnknownObject` (what services built
    /// on zbus or Qt answer: oo7-daemon, KWallet, KeePassXC) or the specification's
    /// `org.freedesktop.Secret.Error.NoSuchObject`.
    Gone,
    /// `org.freedesktop.DBus.Error.UnknownMethod`: what gnome-keyring (GDBus) answers for an
    /// item deleted meanwhile, for every call on it ("Object does not exist at path …", or
    /// while it is being removed "No such interface … on object at path …"; the message is in
    /// the daemon's language). GDBus answers the same for a method an existing object lacks, so
    /// the object counts as gone only once a fresh search no longer lists it.
    MaybeGone,
    /// Anything else: an error.
    Other,
}

fn existence(error: &secret_service::Error) -> Existence {
    match dbus_error(error).as_ref().map(|(name, _)| name.as_str()) {
        Some(
            "org.freedesktop.DBus.Error.UnknownObject"
            | "org.freedesktop.Secret.Error.NoSuchObject",
        ) => Existence::Gone,
        Some("org.freedesktop.DBus.Error.UnknownMethod") => Existence::MaybeGone,
        _ => Existence::Other,
    }
}

/// Whether `error` says that the session (or the whole connection) this call used is gone, so
/// that a new one would answer: the service restarted (its sessions died with it), the
/// service left the bus, or the connection to the bus was lost.
fn session_gone(error: &secret_service::Error) -> bool {
    use secret_service::Error as SsError;
    match error {
        SsError::Unavailable
        | SsError::Zbus(zbus::Error::InputOutput(_) | zbus::Error::Connection(..)) => true,
        _ => matches!(
            dbus_error(error).as_ref().map(|(name, _)| name.as_str()),
            Some(
                "org.freedesktop.Secret.Error.NoSession"
                    | "org.freedesktop.DBus.Error.ServiceUnknown"
                    | "org.freedesktop.DBus.Error.NameHasNoOwner"
            )
        ),
    }
}

fn map_error(error: secret_service::Error, bus: &Bus, doing: &str) -> Error {
    use secret_service::Error as SsError;
    use UnavailableReason::*;
    let (reason, detail) = match &error {
        SsError::Locked => return locked_error(bus),
        SsError::Unavailable => (
            NotRunning,
            format!(
                "no Secret Service ({SECRETS_NAME}) on {}; {WHAT_TO_DO_NOT_RUNNING}",
                bus.describe()
            ),
        ),
        SsError::Prompt | SsError::PromptDisconnected => (
            Denied,
            format!("{doing}: the Secret Service asked for a prompt that was dismissed ({error})"),
        ),
        SsError::NoResult => (
            Backend,
            format!(
                "{doing}: the Secret Service on {} has no default collection (the alias \
                 `default` is unset); create a login keyring, or use the vault: --store vault",
                bus.describe()
            ),
        ),
        SsError::Zbus(zbus::Error::InputOutput(_) | zbus::Error::Connection(..)) => (
            NotRunning,
            format!(
                "{doing}: lost the connection to {} ({error}); {WHAT_TO_DO_NOT_RUNNING}",
                bus.describe()
            ),
        ),
        _ => match dbus_error(&error) {
            Some((name, message)) => match name.as_str() {
                "org.freedesktop.Secret.Error.IsLocked" => return locked_error(bus),
                "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner" => (
                    NotRunning,
                    format!(
                        "no Secret Service ({SECRETS_NAME}) on {}: {message}; \
                         {WHAT_TO_DO_NOT_RUNNING}",
                        bus.describe()
                    ),
                ),
                "org.freedesktop.DBus.Error.AccessDenied" => {
                    (Denied, format!("{doing}: access denied: {message}"))
                }
                "org.freedesktop.DBus.Error.NoReply" | "org.freedesktop.DBus.Error.Timeout" => {
                    (TimedOut, format!("{doing}: no reply: {message}"))
                }
                _ => (Backend, format!("{doing}: {name}: {message}")),
            },
            None => (Backend, format!("{doing}: {error}")),
        },
    };
    Error::unavailable(STORE, reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(error: secret_service::Error) -> UnavailableReason {
        match map_error(error, &Bus::Address("unix:path=/x".to_owned()), "testing") {
            Error::Unavailable { reason, .. } => reason,
            other => panic!("not Unavailable: {other:?}"),
        }
    }

    #[test]
    fn errors_map_to_what_a_caller_can_act_on() {
        use secret_service::Error as E;
        use zbus::fdo::Error as Fdo;
        assert_eq!(reason(E::Locked), UnavailableReason::Locked);
        assert_eq!(reason(E::Unavailable), UnavailableReason::NotRunning);
        assert_eq!(reason(E::Prompt), UnavailableReason::Denied);
        assert_eq!(reason(E::NoResult), UnavailableReason::Backend);
        assert_eq!(
            reason(E::ZbusFdo(Fdo::ServiceUnknown("gone".into()))),
            UnavailableReason::NotRunning
        );
        assert_eq!(
            reason(E::Zbus(zbus::Error::FDO(Box::new(Fdo::NameHasNoOwner(
                "gone".into()
            ))))),
            UnavailableReason::NotRunning
        );
        assert_eq!(
            reason(E::ZbusFdo(Fdo::AccessDenied("no".into()))),
            UnavailableReason::Denied
        );
        assert_eq!(
            reason(E::ZbusFdo(Fdo::NoReply("slow".into()))),
            UnavailableReason::TimedOut
        );
        assert_eq!(
            reason(E::Zbus(zbus::Error::InputOutput(Arc::new(
                std::io::Error::from(std::io::ErrorKind::ConnectionReset)
            )))),
            UnavailableReason::NotRunning
        );
        assert_eq!(
            reason(E::ZbusFdo(Fdo::Failed("odd".into()))),
            UnavailableReason::Backend
        );
    }

    /// A method call's error reply, as zbus gives it for a method declared with `zbus::Result`
    /// (`Item.GetSecret`, `Item.Delete`).
    fn method_error(name: &str) -> secret_service::Error {
        let reply = zbus::Message::method_call("/org/freedesktop/secrets/collection/login/1", "X")
            .unwrap()
            .build(&())
            .unwrap();
        secret_service::Error::Zbus(zbus::Error::MethodError(
            name.try_into().unwrap(),
            Some("Object does not exist at path".to_owned()),
            reply,
        ))
    }

    #[test]
    fn only_errors_about_a_missing_object_may_mean_it_is_gone() {
        use secret_service::Error as E;
        use zbus::fdo::Error as Fdo;
        // What gnome-keyring answers for a deleted item: GetSecret (a method error) and
        // property reads, Delete's included (it reads `Locked` first).
        assert_eq!(
            existence(&method_error("org.freedesktop.DBus.Error.UnknownMethod")),
            Existence::MaybeGone
        );
        assert_eq!(
            existence(&E::ZbusFdo(Fdo::UnknownMethod("gone".into()))),
            Existence::MaybeGone
        );
        assert_eq!(
            existence(&E::ZbusFdo(Fdo::UnknownObject("gone".into()))),
            Existence::Gone
        );
        assert_eq!(
            existence(&method_error("org.freedesktop.DBus.Error.UnknownObject")),
            Existence::Gone
        );
        assert_eq!(
            existence(&method_error("org.freedesktop.Secret.Error.NoSuchObject")),
            Existence::Gone
        );
        for other in [
            E::ZbusFdo(Fdo::Failed("x".into())),
            E::ZbusFdo(Fdo::AccessDenied("x".into())),
            E::ZbusFdo(Fdo::ServiceUnknown("x".into())),
            method_error("org.freedesktop.Secret.Error.IsLocked"),
            method_error("org.freedesktop.DBus.Error.Failed"),
            E::Locked,
            E::NoResult,
            E::Unavailable,
        ] {
            assert_eq!(existence(&other), Existence::Other, "{other:?}");
        }
    }

    #[test]
    fn locked_and_not_running_messages_say_what_to_do() {
        let bus = Bus::Address("unix:path=/x".to_owned());
        let locked = locked_error(&bus).to_string();
        assert!(locked.contains("unlock your login keyring"), "{locked}");
        assert!(locked.contains("--store vault"), "{locked}");
        let not_running = map_error(secret_service::Error::Unavailable, &bus, "x").to_string();
        assert!(
            not_running.contains("DBUS_SESSION_BUS_ADDRESS"),
            "{not_running}"
        );
    }

    #[test]
    fn namespaces_are_checked() {
        assert!(check_namespace("dev.keyshare.shared-secrets").is_ok());
        assert!(check_namespace("").is_err());
        assert!(check_namespace("a\0b").is_err());
        assert!(check_namespace(&"x".repeat(256)).is_err());
    }

    #[test]
    fn a_call_that_never_answers_times_out() {
        let err = bounded(
            Duration::from_millis(50),
            || "waiting forever".to_owned(),
            std::future::pending::<Result<()>>(),
        )
        .unwrap_err();
        match err {
            Error::Unavailable {
                reason: UnavailableReason::TimedOut,
                detail,
                ..
            } => assert!(detail.contains("waiting forever"), "{detail}"),
            other => panic!("{other:?}"),
        }
    }
}
