//! `SecretStorage`: the seed's storage service, made correct under partial failure.
//!
//! An app's storage is a **shared** store (the one every app of the family reads) plus an
//! optional **legacy** store of the app's own (kept written for rollback and migrated from).
//! The rules, and why they keep the consistency contract, are in `docs/architecture.md`; in
//! short:
//! - `set`/`delete` go to the shared store first, best effort, then to the legacy store, and are
//!   acknowledged when the legacy store took them. If the shared store failed, the key is first
//!   marked *dirty* in the repair journal, so until a repair copies the legacy value over, reads
//!   of that key are served from the legacy store and never from the stale shared copy.
//! - `get` reads the shared store, then falls back to the legacy store only where that cannot
//!   resurrect a deleted value: for dirty keys, for keys never migrated, and when the shared
//!   store cannot answer (the legacy store always holds this app's latest acknowledged value).
//! - Operations on one key run one at a time in call order; different keys run in parallel.

mod combine;
mod events;
mod journal;
mod queue;

pub use events::{ChangeEvent, ChangeKind, Notification, Subscription};

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::model::{Limits, SecretKey, SecretValue};
use crate::store::{MemoryStore, Store, StoreInfo};
use journal::Journal;
use queue::{KeyQueues, Ticket};

/// Where an app's secrets live for this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageType {
    /// In the shared store (and the legacy store, if any).
    Persisted,
    /// In process memory only; neither store is touched. Used when no protected storage is
    /// available and the user chose not to persist secrets.
    InMemory,
}

impl fmt::Display for StorageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageType::Persisted => "persisted",
            StorageType::InMemory => "in-memory",
        })
    }
}

type TypeProbe = Box<dyn FnOnce() -> Result<StorageType> + Send>;

/// Counters for `doctor` and for tests: failures are counted, never silently dropped.
#[derive(Debug, Default)]
struct Counters {
    shared_write_failures: AtomicU64,
    repairs_done: AtomicU64,
    repair_failures: AtomicU64,
    legacy_fallback_reads: AtomicU64,
}

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StorageStats {
    /// Writes or deletes that failed on the shared store and were queued for repair.
    pub shared_write_failures: u64,
    /// Keys repaired (shared store brought up to date from the legacy store).
    pub repairs_done: u64,
    /// Repair attempts that failed and remain pending.
    pub repair_failures: u64,
    /// Reads answered by the legacy store.
    pub legacy_fallback_reads: u64,
}

/// What `status()` reports.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StorageStatus {
    /// The settled storage type, or `None` before the first operation.
    pub storage_type: Option<StorageType>,
    /// The shared store.
    pub shared: StoreInfo,
    /// The legacy store, if any.
    pub legacy: Option<StoreInfo>,
    /// Keys whose shared copy waits for a repair.
    pub pending_repairs: Vec<SecretKey>,
    /// Whether the legacy -> shared migration has completed.
    pub migration_done: bool,
    /// Failure and repair counters since this instance started.
    pub stats: StorageStats,
    /// The sequence number of the latest change event.
    pub last_event_seq: u64,
    /// Keys superseded by another app's later change and not yet reported: see
    /// [`SecretStorage::take_superseded`].
    pub superseded: Vec<SecretKey>,
}

/// Migration progress, reported once per key.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MigrationProgress {
    /// Keys handled so far, including this one.
    pub done: usize,
    /// Keys to handle in this pass.
    pub total: usize,
    /// The key just handled.
    pub key: SecretKey,
    /// What happened to it.
    pub outcome: MigrationOutcome,
}

/// What migration did with one key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MigrationOutcome {
    /// Copied from the legacy store into the shared store.
    Copied,
    /// The shared store already had it (or it had been migrated before); left as is.
    AlreadyPresent,
    /// The key is busy with another operation; it is retried on the next pass.
    Deferred,
    /// It failed; the reason names no secret. Retried on the next pass.
    Failed(String),
}

/// The summary of one migration pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Keys copied into the shared store.
    pub copied: usize,
    /// Keys the shared store already had.
    pub already_present: usize,
    /// Keys that failed or were deferred, with reasons.
    pub failed: Vec<(SecretKey, String)>,
    /// True when every legacy key has reached the shared store; the done-marker is written.
    pub complete: bool,
}

/// The summary of one repair pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Keys whose shared copy was brought up to date.
    pub repaired: usize,
    /// Keys another app changed in the shared store after this app's write failed: that
    /// change is the later one and stands, and this app's own copy now follows it (no longer
    /// pending either).
    pub superseded: Vec<SecretKey>,
    /// Keys that still wait because the shared store refuses their write (see
    /// [`crate::Error::is_refusal`]: the broker's policy does not let this app use the key, the
    /// value is over its limit, another broker with other settings answered, a prompt was
    /// dismissed), with why: retrying as things are cannot help, but they stay pending, since
    /// dropping an acknowledged write (a sign-out among them) for what may pass would lose it.
    pub refused: Vec<(SecretKey, String)>,
    /// Keys that still wait for another reason (an outage), with reasons.
    pub failed: Vec<(SecretKey, String)>,
}

/// The most change events [`SecretStorageBuilder::event_capacity`] lets a subscriber lag behind.
pub const MAX_EVENT_CAPACITY: usize = 1 << 20;

/// Builds a [`SecretStorage`].
pub struct SecretStorageBuilder {
    shared: Arc<dyn Store>,
    legacy: Option<Arc<dyn Store>>,
    journal: Option<Arc<dyn Store>>,
    probe: TypeProbe,
    limits: Limits,
    event_capacity: usize,
    lazy_migration: bool,
}

impl fmt::Debug for SecretStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStorageBuilder")
            .field("shared", &self.shared)
            .field("legacy", &self.legacy)
            .field("journal", &self.journal)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl SecretStorageBuilder {
    /// Adds the app's legacy store: written on every change, read as a fallback, migrated from.
    pub fn legacy(mut self, legacy: Arc<dyn Store>) -> Self {
        self.legacy = Some(legacy);
        self
    }

    /// Where the repair journal persists. Without one, pending repairs live in memory only and
    /// are lost at exit (a stale shared copy could then win): production code always sets one
    /// when it sets a legacy store.
    pub fn journal(mut self, journal: Arc<dyn Store>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Fixes the storage type.
    pub fn storage_type(mut self, storage_type: StorageType) -> Self {
        self.probe = Box::new(move || Ok(storage_type));
        self
    }

    /// Decides the storage type with a probe that runs once, before the first operation
    /// answers (never earlier, never later). If the probe fails, the operation fails and the
    /// next operation runs the probe again.
    pub fn storage_type_probe(
        mut self,
        probe: impl FnOnce() -> Result<StorageType> + Send + 'static,
    ) -> Self {
        self.probe = Box::new(probe);
        self
    }

    /// Value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How many change events a subscriber may lag behind before it is told to resync: 1 to
    /// [`MAX_EVENT_CAPACITY`] (a value outside is taken as the nearest bound). The buffer is
    /// allocated whole at the first subscription.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        // Found in an API review: usize::MAX panicked at the first subscription.
        self.event_capacity = capacity.clamp(1, MAX_EVENT_CAPACITY);
        self
    }

    /// Whether the first operation runs a migration pass and retries pending repairs (default:
    /// yes).
    pub fn lazy_migration(mut self, enabled: bool) -> Self {
        self.lazy_migration = enabled;
        self
    }

    /// Builds the storage. Nothing is read yet: the first operation settles the storage type,
    /// loads the journal and (if enabled) migrates.
    pub fn build(self) -> SecretStorage {
        let journal_store: Arc<dyn Store> =
            self.journal.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let nonblocking = self.shared.is_nonblocking()
            && self.legacy.as_ref().is_none_or(|l| l.is_nonblocking())
            && journal_store.is_nonblocking();
        SecretStorage {
            inner: Arc::new(Inner {
                shared: self.shared,
                legacy: self.legacy,
                journal: Journal::new(journal_store),
                memory: MemoryStore::with_limits(self.limits),
                storage_type: Mutex::new(None),
                probe: Mutex::new(Some(self.probe)),
                ready: AtomicBool::new(false),
                init: Mutex::new(()),
                in_memory: AtomicBool::new(false),
                queues: KeyQueues::new(),
                events: events::EventHub::new(self.event_capacity),
                limits: self.limits,
                counters: Counters::default(),
                superseded: Mutex::default(),
                lazy_migration: self.lazy_migration,
                nonblocking,
                sets: Arc::default(),
            }),
        }
    }
}

/// An app's secret storage. Cheap to clone; clones share everything.
///
/// The methods here block the calling thread; from async code use [`SecretStorage::to_async`],
/// whose methods never block a runtime thread.
#[derive(Clone)]
pub struct SecretStorage {
    inner: Arc<Inner>,
}

impl fmt::Debug for SecretStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStorage")
            .field("shared", &self.inner.shared)
            .field("legacy", &self.inner.legacy)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<dyn Store>,
    legacy: Option<Arc<dyn Store>>,
    journal: Journal,
    memory: MemoryStore,
    storage_type: Mutex<Option<StorageType>>,
    probe: Mutex<Option<TypeProbe>>,
    ready: AtomicBool,
    init: Mutex<()>,
    in_memory: AtomicBool,
    queues: Arc<KeyQueues>,
    events: events::EventHub,
    limits: Limits,
    counters: Counters,
    /// Keys whose pending write another app's later change superseded, not yet reported by
    /// [`SecretStorage::repair`] or taken with [`SecretStorage::take_superseded`]: a repair
    /// that a migration pass or a write carried out is reported too (found by QA: the lazy
    /// migration of the next command did it, and `keyshare repair` then said nothing).
    superseded: Mutex<Vec<SecretKey>>,
    lazy_migration: bool,
    /// Every store (shared, legacy, journal) says its calls never block: see
    /// [`Store::is_nonblocking`].
    nonblocking: bool,
    /// Async sets waiting for their group commit (storages without a legacy store only).
    sets: Arc<combine::SetQueue>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A drainer parked waiting for sets ends now.
        self.sets.close();
    }
}

fn reason(err: &Error) -> String {
    err.to_string()
}

/// The keys whose repair a journal kept in `store` (a store once given to
/// [`SecretStorageBuilder::journal`]) still holds pending: for reporting repairs recorded
/// against another shared store than the one a storage uses now (a data directory that moved,
/// a store `auto` chose differently), which that storage never applies. Entries that cannot
/// be read are skipped with a warning, as a storage skips them.
pub fn pending_repairs_in_journal(store: Arc<dyn Store>) -> Result<Vec<SecretKey>> {
    let journal = journal::Journal::new(store);
    journal.load()?;
    let mut keys = journal.dirty_keys();
    keys.sort();
    Ok(keys)
}

/// Seeds `journal`, an app's repair journal about a shared store it has not used before, from
/// its journals about other shared stores (`earlier`):
/// - the keys migrated there, and whether the migration was done: whatever of the app's legacy
///   store was shared once is not migrated again, since another app may have signed out of it
///   there, and copying this app's copy into the new store would sign every app in again
///   (found by QA: switching to the OS keyring, or renaming the flavour's service, brought back
///   a signed-out token);
/// - its pending repairs, with when their writes failed: each is a write this app acknowledged
///   that no shared store has, and the new one gets it by the repair, unless it holds a later
///   change (found in review: seeded without them, the write read as "not found");
/// - an earlier journal with unreadable entries counts as migration done (no legacy copy is
///   migrated on a guess); those entries are skipped, as `repair --forget-unreadable` would.
///
/// Written in one [`Store::set_many_if_empty`] (one transaction in a vault), so that a seed cut
/// short leaves nothing, and of two processes seeding at once the later writes nothing. With `move_repairs` the pending
/// repairs are then removed from the earlier journals: carried once, a repair left behind
/// would be carried again at the next change of store, long after it was carried out, and
/// bring back a secret signed out since (found by QA); without it (`doctor`, which changes
/// nothing) they are copied. Does nothing, and says `false`, when `journal` holds entries
/// already.
pub fn seed_journal_from_earlier(
    journal: Arc<dyn Store>,
    earlier: &[Arc<dyn Store>],
    move_repairs: bool,
) -> Result<bool> {
    if !journal.keys()?.is_empty() {
        return Ok(false);
    }
    let mut dirty: HashMap<SecretKey, Option<SystemTime>> = HashMap::new();
    let mut migrated = HashSet::new();
    let mut done = false;
    for store in earlier {
        let earlier = journal::Journal::new(Arc::clone(store));
        done |= earlier.load_lenient()? > 0;
        done |= earlier.migration_done();
        migrated.extend(earlier.migrated_keys());
        for key in earlier.dirty_keys() {
            let failed_at = earlier.dirty_since(&key);
            // The later failure of two: its write is the later one.
            let kept = dirty.entry(key).or_insert(failed_at);
            *kept = (*kept).max(failed_at);
        }
    }
    let seed = journal::Journal::new(Arc::new(MemoryStore::new()));
    for key in &migrated {
        if !dirty.contains_key(key) {
            seed.mark_migrated(key)?;
        }
    }
    for (key, failed_at) in &dirty {
        seed.mark_dirty_at(key, *failed_at)?;
    }
    if done {
        seed.mark_migration_done()?;
    }
    let entries = seed.entries();
    if entries.is_empty() {
        return Ok(false);
    }
    // Into an empty journal only, checked in the same transaction: another process of the
    // app that seeded it first may have carried out a repair since (found by QA, in review).
    if !journal.set_many_if_empty(&entries)? {
        return Ok(false);
    }
    if move_repairs {
        for store in earlier {
            let earlier = journal::Journal::new(Arc::clone(store));
            for key in dirty.keys() {
                // Only where it is: clearing is a delete of the entry.
                earlier.forget_dirty(key)?;
            }
        }
    }
    Ok(true)
}

impl SecretStorage {
    /// Starts building a storage over `shared`.
    pub fn builder(shared: Arc<dyn Store>) -> SecretStorageBuilder {
        SecretStorageBuilder {
            shared,
            legacy: None,
            journal: None,
            probe: Box::new(|| Ok(StorageType::Persisted)),
            limits: Limits::default(),
            event_capacity: 1024,
            lazy_migration: true,
        }
    }

    /// The async face of this storage.
    pub fn to_async(&self) -> AsyncSecretStorage {
        AsyncSecretStorage {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Reads a secret: `Ok(None)` when it does not exist.
    pub fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        let ticket = self.inner.queues.enqueue(key);
        self.inner.run_get(ticket, key)
    }

    /// Writes a secret. `Ok` means acknowledged: every later `get` sees this value or a newer
    /// one.
    pub fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        let ticket = self.inner.queues.enqueue(key);
        self.inner.run_set(ticket, key, value)
    }

    /// Deletes a secret from every store; `Ok(true)` if it existed somewhere. `Ok` means the
    /// deletion is acknowledged: the value never comes back.
    pub fn delete(&self, key: &SecretKey) -> Result<bool> {
        let ticket = self.inner.queues.enqueue(key);
        self.inner.run_delete(ticket, key)
    }

    /// Another app's repair, in its turn with this storage's own operations on the key: sets
    /// `value` (`None`: deletes) unless the key changed after `after`, as
    /// [`Store::write_unless_changed_after`] says (the broker runs these for its clients).
    /// `Ok(false)`: the later change stands and nothing was written.
    pub fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool> {
        let ticket = self.inner.queues.enqueue(key);
        self.inner.run_write_unless(ticket, key, value, after)
    }

    /// Whether the shared store records change times (see [`Store::keeps_change_times`]).
    pub fn keeps_change_times(&self) -> bool {
        self.inner.shared.keeps_change_times()
    }

    /// When the shared store recorded `key`'s last delete, if it has no value there now (see
    /// [`Store::deleted_at`]; the broker answers this for an import's dry run).
    pub fn deleted_at(&self, key: &SecretKey) -> Result<Option<SystemTime>> {
        self.inner.ensure_ready()?;
        if self.inner.in_memory() {
            return self.inner.memory.deleted_at(key);
        }
        self.inner.shared.deleted_at(key)
    }

    /// Lists keys: the union of the stores, minus what the rules above hide.
    pub fn keys(&self) -> Result<Vec<SecretKey>> {
        self.inner.ensure_ready()?;
        self.inner.do_keys()
    }

    /// Runs a migration pass now, reporting each key to `progress`.
    pub fn migrate(&self, mut progress: impl FnMut(&MigrationProgress)) -> Result<MigrationReport> {
        self.inner.ensure_ready()?;
        self.inner.migrate(false, None, &mut progress)
    }

    /// Retries every pending repair (and an incomplete migration) now.
    pub fn repair(&self) -> Result<RepairReport> {
        self.inner.ensure_ready_to_repair()?;
        Ok(self.inner.repair_pending())
    }

    /// Subscribes to change events made through this storage: this process's own writes,
    /// repairs and [announced](SecretStorage::announce_external_change) changes, numbered in
    /// this storage's own sequence. Other processes' changes are not among them: over a
    /// broker, subscribe to the broker too (`keyshare_broker::BrokerClient::subscribe`), whose
    /// events have the broker's own numbering, and which reports this process's writes as well
    /// (found in an API review: the two streams were easy to take for one).
    pub fn subscribe(&self) -> Subscription {
        self.inner.events.subscribe()
    }

    /// Tells subscribers about a change that happened outside this storage (another machine
    /// wrote the shared store), as the next event in sequence; returns its sequence number.
    /// Nothing is read or written: subscribers re-read the key if they want its value.
    pub fn announce_external_change(&self, key: &SecretKey, kind: ChangeKind) -> u64 {
        self.inner.events.emit(key, kind)
    }

    /// Settles the storage type and loads the journal now, instead of on the first operation.
    pub fn ready(&self) -> Result<StorageType> {
        self.inner.ensure_ready()?;
        Ok(self.inner.storage_type().expect("settled by ensure_ready"))
    }

    /// What this storage is made of and how it is doing.
    pub fn status(&self) -> StorageStatus {
        let c = &self.inner.counters;
        StorageStatus {
            storage_type: self.inner.storage_type(),
            shared: self.inner.shared.info(),
            legacy: self.inner.legacy.as_ref().map(|l| l.info()),
            pending_repairs: self.inner.journal.dirty_keys(),
            migration_done: self.inner.legacy.is_none() || self.inner.journal.migration_done(),
            stats: StorageStats {
                shared_write_failures: c.shared_write_failures.load(Ordering::Relaxed),
                repairs_done: c.repairs_done.load(Ordering::Relaxed),
                repair_failures: c.repair_failures.load(Ordering::Relaxed),
                legacy_fallback_reads: c.legacy_fallback_reads.load(Ordering::Relaxed),
            },
            last_event_seq: self.inner.events.last_seq(),
            superseded: self.inner.superseded().clone(),
        }
    }

    /// The keys whose copy in this app's legacy store is never read any more because they left
    /// the shared store after reaching it (another app signed out of them, most likely): not
    /// pending a repair, not in the shared store, and shared once. Such a copy stays at rest
    /// until this app writes the key again; `doctor` names them (found by QA: nothing did).
    /// Empty without a legacy store.
    pub fn stale_legacy_copies(&self) -> Result<Vec<SecretKey>> {
        self.inner.ensure_ready()?;
        let inner = &self.inner;
        let Some(legacy) = &inner.legacy else {
            return Ok(Vec::new());
        };
        if inner.in_memory() {
            return Ok(Vec::new());
        }
        let shared: std::collections::HashSet<SecretKey> =
            inner.shared.keys()?.into_iter().collect();
        let mut stale: Vec<SecretKey> = legacy
            .keys()?
            .into_iter()
            .filter(|key| {
                !shared.contains(key)
                    && !inner.journal.is_dirty(key)
                    && !inner.journal.fallback_allowed(key)
            })
            .collect();
        stale.sort();
        Ok(stale)
    }

    /// The keys whose pending write another app's later change superseded (see
    /// [`RepairReport::superseded`]) since this storage was built or last asked, by this call
    /// or by [`SecretStorage::repair`], which reports them too: whatever carried the repair out
    /// (a repair pass, a migration pass, the first operation's lazy one, a write of the key),
    /// an app learns of each such key once, and can tell its user that their write gave way.
    pub fn take_superseded(&self) -> Vec<SecretKey> {
        std::mem::take(&mut *self.inner.superseded())
    }
}

/// The async face of a [`SecretStorage`]: the same operations and guarantees, without ever
/// blocking a runtime thread. Each operation takes its place in its key's queue when it is
/// called, so operations issued without awaiting each other still run in call order.
///
/// Where an operation runs: on tokio's blocking pool, unless it cannot block, in which case it
/// runs inline when the future is first polled, saving two cross-thread wake-ups. It cannot
/// block when every store is [non-blocking](Store::is_nonblocking) (a [`MemoryStore`]) or the
/// storage type is in-memory, the storage is ready (the storage type probe, which may block, has run) and the key's turn has
/// already come (waiting for it would block the runtime thread, and on a single-threaded
/// runtime could wait forever on a task that cannot run). A get whose turn has come on a
/// storage without a legacy store also runs inline when the shared store can answer it without
/// waiting ([`Store::try_get_now`]: the vault, when no write holds it). `repair` always uses the pool: it
/// waits for the turns of the keys it repairs.
#[derive(Clone)]
pub struct AsyncSecretStorage {
    inner: Arc<Inner>,
}

impl fmt::Debug for AsyncSecretStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncSecretStorage").finish_non_exhaustive()
    }
}

async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(job).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(Error::unavailable(
            "secret storage",
            crate::error::UnavailableReason::NotRunning,
            "the async runtime is shutting down",
        )),
    }
}

impl AsyncSecretStorage {
    /// See [`SecretStorage::get`].
    pub fn get(
        &self,
        key: &SecretKey,
    ) -> impl std::future::Future<Output = Result<Option<SecretValue>>> + Send + 'static {
        // The ticket is taken now, at call time, not when the future is first polled.
        let mut ticket = self.inner.queues.enqueue(key);
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        async move {
            if inner.can_run_inline(&mut ticket) {
                return inner.run_get(ticket, &key);
            }
            if let Some(answer) = inner.try_get_now(&mut ticket, &key) {
                return answer;
            }
            blocking(move || inner.run_get(ticket, &key)).await
        }
    }

    /// See [`SecretStorage::set`].
    pub fn set(
        &self,
        key: &SecretKey,
        value: &SecretValue,
    ) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        let mut ticket = self.inner.queues.enqueue(key);
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        let value = value.clone();
        async move {
            if inner.can_run_inline(&mut ticket) {
                return inner.run_set(ticket, &key, &value);
            }
            // Only a set whose turn has come is queued: the drainer then never waits for a turn,
            // so it can never wait for a set that is queued behind it (futures are first polled
            // in any order, not in call order).
            if inner.can_combine_sets() && ticket.is_served() {
                inner.limits.check_value(&value)?;
                let (reply, answer) = tokio::sync::oneshot::channel();
                let start_drainer = inner.sets.push(combine::PendingSet {
                    ticket,
                    key,
                    value,
                    reply,
                });
                if start_drainer {
                    Inner::start_drainer(&inner);
                }
                return answer.await.unwrap_or_else(|_| {
                    Err(Error::unavailable(
                        "secret storage",
                        crate::error::UnavailableReason::NotRunning,
                        "the write was dropped (the async runtime is shutting down, or the store panicked)",
                    ))
                });
            }
            blocking(move || inner.run_set(ticket, &key, &value)).await
        }
    }

    /// See [`SecretStorage::delete`].
    pub fn delete(
        &self,
        key: &SecretKey,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'static {
        let mut ticket = self.inner.queues.enqueue(key);
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        async move {
            if inner.can_run_inline(&mut ticket) {
                return inner.run_delete(ticket, &key);
            }
            blocking(move || inner.run_delete(ticket, &key)).await
        }
    }

    /// See [`SecretStorage::write_unless_changed_after`].
    pub fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<SecretValue>,
        after: SystemTime,
    ) -> impl std::future::Future<Output = Result<bool>> + Send + 'static {
        let ticket = self.inner.queues.enqueue(key);
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        async move {
            blocking(move || inner.run_write_unless(ticket, &key, value.as_ref(), after)).await
        }
    }

    /// See [`SecretStorage::keeps_change_times`].
    pub fn keeps_change_times(&self) -> bool {
        self.inner.shared.keeps_change_times()
    }

    /// See [`SecretStorage::deleted_at`].
    pub async fn deleted_at(&self, key: &SecretKey) -> Result<Option<SystemTime>> {
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        blocking(move || {
            inner.ensure_ready()?;
            if inner.in_memory() {
                return inner.memory.deleted_at(&key);
            }
            inner.shared.deleted_at(&key)
        })
        .await
    }

    /// See [`SecretStorage::keys`].
    pub async fn keys(&self) -> Result<Vec<SecretKey>> {
        let inner = Arc::clone(&self.inner);
        // `keys` takes no turn, so only the stores and readiness matter.
        if inner.ready.load(Ordering::Acquire) && (inner.nonblocking || inner.in_memory()) {
            return inner.do_keys();
        }
        blocking(move || {
            inner.ensure_ready()?;
            inner.do_keys()
        })
        .await
    }

    /// See [`SecretStorage::repair`].
    pub async fn repair(&self) -> Result<RepairReport> {
        let inner = Arc::clone(&self.inner);
        blocking(move || {
            inner.ensure_ready_to_repair()?;
            Ok(inner.repair_pending())
        })
        .await
    }

    /// See [`SecretStorage::subscribe`].
    pub fn subscribe(&self) -> Subscription {
        self.inner.events.subscribe()
    }

    /// The blocking face of the same storage.
    pub fn to_blocking(&self) -> SecretStorage {
        SecretStorage {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// How long the first operations of an app's storages leave its pending repairs alone after
/// one met a shared store that did not answer (see `Inner::repair_lazily`); `repair` retries
/// them at any time.
pub const REPAIRS_PAUSE: std::time::Duration = std::time::Duration::from_secs(60);

impl Inner {
    fn storage_type(&self) -> Option<StorageType> {
        *self.storage_type.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Settles the storage type, loads the journal and runs the lazy migration, once. Every
    /// operation calls this before it answers, which is what keeps an early read from skipping
    /// the shared store (the seed's problem 4).
    fn ensure_ready(&self) -> Result<()> {
        self.ensure_ready_in_turn(None, true)
    }

    /// [`Self::ensure_ready`] for `repair`, which retries the pending repairs itself and
    /// reports them: retried first on the way in, they would be missing from its report.
    fn ensure_ready_to_repair(&self) -> Result<()> {
        self.ensure_ready_in_turn(None, false)
    }

    /// [`Self::ensure_ready`] for a read of `key` holding `ticket`: when the ticket's turn has
    /// come, the lazy migration pass migrates `key` in that turn (and a pending repair of it is
    /// retried) instead of passing it by as busy (the read waits for the pass). Found by QA: a
    /// pass run by a `get` always left the key it was reading behind, so with reads alone the
    /// migration was never marked done and every later process ran the whole pass again.
    /// Writes do not: their own write settles their key.
    fn ensure_ready_holding(&self, ticket: &mut Ticket, key: &SecretKey) -> Result<()> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        self.ensure_ready_in_turn(ticket.is_served().then_some(key), true)
    }

    fn ensure_ready_in_turn(&self, own_turn: Option<&SecretKey>, repair: bool) -> Result<()> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let _init = self.init.lock().unwrap_or_else(|e| e.into_inner());
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let storage_type = match self.storage_type() {
            Some(t) => t,
            None => {
                let probe = self.probe.lock().unwrap_or_else(|e| e.into_inner()).take();
                let t = match probe {
                    Some(probe) => probe()?,
                    None => StorageType::Persisted,
                };
                *self.storage_type.lock().unwrap_or_else(|e| e.into_inner()) = Some(t);
                t
            }
        };
        if storage_type == StorageType::InMemory {
            self.in_memory.store(true, Ordering::Release);
            self.ready.store(true, Ordering::Release);
            return Ok(());
        }
        if self.legacy.is_some() {
            self.journal.load()?;
            if self.lazy_migration && !self.journal.migration_done() {
                // Best effort: whatever fails here is retried by the next pass, and reads fall
                // back to the legacy store for keys not yet migrated.
                if let Err(err) = self.migrate(true, own_turn, &mut |_| {}) {
                    tracing::warn!(error = %err, "lazy migration did not complete");
                }
            }
            if self.lazy_migration && repair {
                self.repair_lazily(own_turn);
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Retries the pending repairs on the first operation, as the lazy migration pass runs: an
    /// app driven by short commands has no background to retry them in, and a sign-out this
    /// app made during an outage reached no other app until someone ran `repair` (found by
    /// QA). Best effort, like the pass: busy keys are left to their own operations (the key of
    /// the read that started this is repaired in its turn); oldest first. A key the shared
    /// store refuses, or whose own copy cannot be read, is passed by; any other failure means
    /// the shared store is still out, and ends the round and pauses these retries for
    /// [`REPAIRS_PAUSE`]: otherwise every command would wait for the store's timeout before
    /// its own work, even one the app's own copy answers (found in review).
    fn repair_lazily(&self, own_turn: Option<&SecretKey>) {
        if self
            .journal
            .repairs_paused_until()
            .is_some_and(|until| SystemTime::now() < until)
        {
            return;
        }
        let mut keys = self.journal.dirty_keys();
        keys.sort_by_key(|key| self.journal.dirty_since(key));
        for key in keys {
            let Some(_turn) = self.lazy_turn(&key, own_turn) else {
                continue;
            };
            if let Err(err) = self.repair_key(&key) {
                self.counters
                    .repair_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %err, key = %key, "a pending repair failed again");
                if err.is_refusal() || matches!(err, Error::Corrupt { .. }) {
                    continue;
                }
                if let Err(err) = self
                    .journal
                    .pause_repairs_until(SystemTime::now() + REPAIRS_PAUSE)
                {
                    tracing::debug!(error = %err, "could not record the pause of repairs");
                }
                return;
            }
        }
    }

    /// `key`'s turn for work done on the way into the first operation (the lazy migration pass,
    /// the lazy repairs), which must never wait for an operation that may be waiting for it:
    /// `None` when the key is busy (its own operations handle it); `Some(None)` for the key of
    /// the operation that started this (`own_turn`), whose turn the caller holds; else a ticket
    /// taken on an idle key, held until the work is done.
    fn lazy_turn(&self, key: &SecretKey, own_turn: Option<&SecretKey>) -> Option<Option<Ticket>> {
        if own_turn == Some(key) {
            return Some(None);
        }
        // Taken idle, so served at once.
        self.queues.try_enqueue_idle(key).map(Some)
    }

    /// Whether an async operation holding `ticket` can run right here without blocking: see
    /// [`AsyncSecretStorage`]. Checked when the future is first polled, not when it is made,
    /// so an operation whose turn came in between still runs inline.
    fn can_run_inline(&self, ticket: &mut Ticket) -> bool {
        self.ready.load(Ordering::Acquire)
            && (self.nonblocking || self.in_memory())
            && ticket.is_served()
    }

    /// A get answered on the runtime thread by a shared store that can tell it need not wait
    /// ([`Store::try_get_now`]), when the shared store is the whole read: the type is settled,
    /// persisted, with no legacy store to fall back to, and the key's turn has come. `None`:
    /// run it on the blocking pool.
    fn try_get_now(
        &self,
        ticket: &mut Ticket,
        key: &SecretKey,
    ) -> Option<Result<Option<SecretValue>>> {
        if !(self.ready.load(Ordering::Acquire)
            && self.legacy.is_none()
            && !self.in_memory()
            && ticket.is_served())
        {
            return None;
        }
        self.shared.try_get_now(key)
    }

    /// Whether async sets may be group-committed (see `combine`): only the shared store is
    /// written, so one `set_many` is the whole operation, and the type is settled.
    fn can_combine_sets(&self) -> bool {
        self.legacy.is_none() && self.ready.load(Ordering::Acquire) && !self.in_memory()
    }

    /// Starts the drainer of `inner.sets`: on a thread of its own, not one from tokio's
    /// blocking pool, because operations waiting for their keys' turns may fill the pool, and
    /// the sets they wait for are the ones this thread writes. Not joined: it answers every
    /// queued set through its channel, and ends once nothing was queued for a while.
    fn start_drainer(inner: &Arc<Inner>) {
        let (storage, sets) = (Arc::downgrade(inner), Arc::clone(&inner.sets));
        let spawned = std::thread::Builder::new()
            .name("keyshare-sets".into())
            .spawn(move || Inner::drain_sets(storage, sets));
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "could not start a thread for queued sets; using the blocking pool");
            Inner::start_drainer_on(inner, &tokio::runtime::Handle::current());
        }
    }

    /// Starts the drainer on `runtime`'s blocking pool. If the pool never runs it (the runtime
    /// is shutting down), the queued sets are answered with an error instead of waiting for a
    /// drainer that does not exist, and the next set tries again.
    fn start_drainer_on(inner: &Arc<Inner>, runtime: &tokio::runtime::Handle) {
        struct NotRun(Option<Arc<combine::SetQueue>>);
        impl Drop for NotRun {
            fn drop(&mut self) {
                if let Some(sets) = self.0.take() {
                    sets.abandon();
                }
            }
        }
        let storage = Arc::downgrade(inner);
        let mut not_run = NotRun(Some(Arc::clone(&inner.sets)));
        drop(runtime.spawn_blocking(move || {
            let sets = not_run.0.take().expect("taken only here");
            Inner::drain_sets(storage, sets);
        }));
    }

    /// The drainer of `sets`: everything queued so far is a round, written with one
    /// `set_many`; then it waits for more (up to [`combine::DRAINER_IDLE`]). It holds the
    /// storage only while it writes a round, so a storage dropped while its drainer waits is
    /// dropped then (its stores closed) and the drainer ends.
    fn drain_sets(inner: Weak<Inner>, sets: Arc<combine::SetQueue>) {
        struct Gone<'a>(&'a combine::SetQueue);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.drainer_gone();
                }
            }
        }
        let _gone = Gone(&sets);
        while let Some(round) = sets.take(combine::DRAINER_IDLE) {
            // Every queued set's caller holds the storage until it is answered.
            let Some(inner) = inner.upgrade() else { return };
            inner.commit_round(round, &sets);
        }
    }

    /// Writes `round` with one `set_many_joining`: sets queued while the store prepares its
    /// commit join it (the store calls back just before committing), so they share this flush
    /// instead of waiting for the next. Measured on the broker bench (d), 8 clients.
    fn commit_round(&self, mut round: Vec<combine::PendingSet>, sets: &combine::SetQueue) {
        for set in &round {
            // Served when queued: returns at once.
            set.ticket.wait();
        }
        let entries = |sets: &[combine::PendingSet]| -> Vec<(SecretKey, SecretValue)> {
            sets.iter()
                .map(|set| (set.key.clone(), set.value.clone()))
                .collect()
        };
        let mut joined = Vec::new();
        let written = self.shared.set_many_joining(&entries(&round), &mut || {
            let late = sets.take_now(combine::MAX_ROUND.saturating_sub(round.len() + joined.len()));
            let late_entries = entries(&late);
            joined.extend(late);
            late_entries
        });
        round.extend(joined);
        let results: Vec<Result<()>> = match written {
            Ok(()) => round.iter().map(|_| Ok(())).collect(),
            // All or nothing failed (or failed after taking effect): one by one, so that each
            // caller gets its own answer. Writing a value twice is harmless.
            Err(err) => {
                tracing::debug!(error = %err, "a combined write failed; writing one by one");
                round
                    .iter()
                    .map(|set| self.shared.set(&set.key, &set.value))
                    .collect()
            }
        };
        for (set, result) in round.into_iter().zip(results) {
            self.emit_unless_refused(&set.key, ChangeKind::Set, &result);
            drop(set.ticket);
            // A caller that stopped waiting still had its value written, as with any set.
            let _ = set.reply.send(result);
        }
    }

    fn in_memory(&self) -> bool {
        self.in_memory.load(Ordering::Acquire)
    }

    /// Announces a write that may have changed the key: any but one a store refused, which
    /// changed nothing. (Another failure may or may not have taken effect: subscribers read
    /// again, which is harmless.)
    fn emit_unless_refused<T>(&self, key: &SecretKey, kind: ChangeKind, result: &Result<T>) {
        if !matches!(result, Err(err) if err.is_refusal()) {
            self.events.emit(key, kind);
        }
    }

    fn run_get(&self, mut ticket: Ticket, key: &SecretKey) -> Result<Option<SecretValue>> {
        self.ensure_ready_holding(&mut ticket, key)?;
        ticket.wait();
        self.do_get(key)
    }

    fn run_set(&self, ticket: Ticket, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.limits.check_value(value)?;
        self.ensure_ready()?;
        ticket.wait();
        let result = self.do_set(key, value);
        self.emit_unless_refused(key, ChangeKind::Set, &result);
        result
    }

    fn run_write_unless(
        &self,
        ticket: Ticket,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool> {
        if let Some(value) = value {
            self.limits.check_value(value)?;
        }
        self.ensure_ready()?;
        ticket.wait();
        let written = self.do_write_unless(key, value, after);
        // As for a set or delete, an error does not say that nothing happened, but a refusal
        // does (found in review).
        if !matches!(&written, Ok(false)) && !matches!(&written, Err(err) if err.is_refusal()) {
            let kind = match value {
                Some(_) => ChangeKind::Set,
                None => ChangeKind::Delete,
            };
            self.events.emit(key, kind);
        }
        written
    }

    fn do_write_unless(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: SystemTime,
    ) -> Result<bool> {
        if self.in_memory() {
            return self.memory.write_unless_changed_after(key, value, after);
        }
        let Some(legacy) = &self.legacy else {
            return self.shared.write_unless_changed_after(key, value, after);
        };
        // With a legacy store of its own (not the broker's case), this storage's copy follows
        // a write that took effect, as in a dual write; a shared failure fails it whole (the
        // app that asked keeps its own repair pending).
        let shared_result = self.shared.write_unless_changed_after(key, value, after);
        if !matches!(shared_result, Ok(true)) {
            return shared_result;
        }
        self.finish_write(
            key,
            Ok(()),
            || match value {
                Some(value) => legacy.set(key, value),
                None => legacy.delete(key).map(drop),
            },
            "but the shared store took the write, so the other apps see it: only this app's own \
             copy, in its legacy store, was not written",
        )?;
        Ok(true)
    }

    fn run_delete(&self, ticket: Ticket, key: &SecretKey) -> Result<bool> {
        // Not in its own turn: the pass would first copy a never-shared key into the shared
        // store, where every app could read the secret being deleted until the delete reached
        // it (found in review). Its key is left to the delete.
        self.ensure_ready()?;
        ticket.wait();
        let result = self.do_delete(key);
        self.emit_unless_refused(key, ChangeKind::Delete, &result);
        result
    }

    // The `do_*` methods assume the caller holds the key's turn. Internal work for a key whose
    // turn we already hold calls them directly, never through the queue, so it cannot deadlock.

    fn do_get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        if self.in_memory() {
            return self.memory.get(key);
        }
        let Some(legacy) = &self.legacy else {
            return self.shared.get(key);
        };
        if self.journal.is_dirty(key) {
            self.counters
                .legacy_fallback_reads
                .fetch_add(1, Ordering::Relaxed);
            return legacy.get(key);
        }
        match self.shared.get(key) {
            Ok(Some(value)) => Ok(Some(value)),
            Ok(None) if self.journal.fallback_allowed(key) => {
                let Some(value) = legacy.get(key)? else {
                    return Ok(None);
                };
                // Migrate this one key now; if that fails the next pass retries it.
                if !self.copy_to_shared(key, &value) {
                    return Ok(None);
                }
                self.counters
                    .legacy_fallback_reads
                    .fetch_add(1, Ordering::Relaxed);
                Ok(Some(value))
            }
            Ok(None) => Ok(None),
            // Once a key is in the shared store, the shared copy is the truth: another app may
            // have deleted it or written a newer value since this app's own copy was written,
            // so answering from that copy could bring back a signed-out token or go back to an
            // older value than one already read. Only a key that was never migrated (whose
            // legacy copy is what a read falls back to anyway) is answered from it. A key
            // whose shared copy is stale is dirty, answered above.
            Err(shared_err) if !self.journal.fallback_allowed(key) => Err(shared_err),
            Err(shared_err) => match legacy.get(key) {
                Ok(Some(value)) => {
                    tracing::warn!(error = %shared_err, key = %key, "shared store failed a read; answered from the legacy store");
                    self.counters
                        .legacy_fallback_reads
                        .fetch_add(1, Ordering::Relaxed);
                    Ok(Some(value))
                }
                // Another app may have written it to the shared store: "not found" would be a
                // lie, so the shared store's error stands.
                Ok(None) | Err(_) => Err(shared_err),
            },
        }
    }

    /// Copies a legacy secret the shared store does not have; `false` when the shared store
    /// records a change of the key (it is absent, so another app deleted it: that delete is
    /// later than any copy this app kept from before sharing, and stands).
    fn copy_to_shared(&self, key: &SecretKey, value: &SecretValue) -> bool {
        let copied = match self
            .shared
            .write_unless_changed_after(key, Some(value), UNIX_EPOCH)
        {
            Ok(copied) => copied,
            Err(err) => {
                tracing::warn!(error = %err, key = %key, "could not copy a legacy secret to the shared store");
                return true;
            }
        };
        if !copied {
            tracing::info!(key = %key, "another app deleted this key from the shared store; this app's copy from before sharing stays unused");
        }
        if let Err(err) = self.journal.mark_migrated(key) {
            tracing::warn!(error = %err, key = %key, "could not record a migrated key");
        }
        copied
    }

    fn do_set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        if self.in_memory() {
            return self.memory.set(key, value);
        }
        let Some(legacy) = &self.legacy else {
            return self.shared.set(key, value);
        };
        let shared_result = self.shared.set(key, value);
        self.finish_write(
            key,
            shared_result.map(|_| ()),
            || legacy.set(key, value),
            "but the value did reach the shared store, where the other apps read it: only this \
             app's own copy, in its legacy store, was not written",
        )
    }

    fn do_delete(&self, key: &SecretKey) -> Result<bool> {
        if self.in_memory() {
            return self.memory.delete(key);
        }
        let Some(legacy) = &self.legacy else {
            return self.shared.delete(key);
        };
        let shared_result = self.shared.delete(key);
        let shared_existed = *shared_result.as_ref().unwrap_or(&false);
        let mut legacy_existed = false;
        self.finish_write(
            key,
            shared_result.map(|_| ()),
            || {
                legacy_existed = legacy.delete(key)?;
                Ok(())
            },
            "but the secret was deleted from the shared store, so the other apps no longer see \
             it: only this app's own copy, in its legacy store, was not deleted",
        )?;
        Ok(shared_existed || legacy_existed)
    }

    /// The second half of a dual write, shared with `set` and `delete`: record a shared failure
    /// before touching the legacy store, write the legacy store, then clear what is resolved.
    /// A legacy failure after the shared write took effect carries `took_effect`: the legacy
    /// store's own words may say that nothing was written, true of its own file only (found by
    /// QA: "Nothing was written" for a token every other app could already read).
    fn finish_write(
        &self,
        key: &SecretKey,
        shared_result: Result<()>,
        write_legacy: impl FnOnce() -> Result<()>,
        took_effect: &str,
    ) -> Result<()> {
        let was_dirty = self.journal.is_dirty(key);
        let shared_ok = match shared_result {
            Ok(()) => true,
            // A refusal is no outage: a repair would be refused the same way, forever, while
            // this app read its own copy of a write no other app ever sees (found in an API
            // review: a key the broker's policy denies this app was acknowledged, and served
            // from the legacy copy). The write fails, nothing is written or queued.
            Err(err) if err.is_refusal() => return Err(err),
            Err(err) => {
                self.counters
                    .shared_write_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %err, key = %key, "shared store write failed; queued for repair");
                // Without this record an acknowledged value could be shadowed by the stale
                // shared copy, so failing to write it fails the operation (nothing has changed
                // in the legacy store yet). Written even if the key looks dirty already: see
                // `Journal::mark_dirty`.
                // Not a pause of the retries (see `repair_lazily`): the store may be back for
                // the next command, which then carries a sign-out to the other apps at once.
                // The next command pays one timeout if it is not.
                self.journal
                    .mark_dirty(key, SystemTime::now())
                    .map_err(|journal_err| {
                        tracing::error!(error = %journal_err, "could not record a pending repair");
                        err
                    })?;
                false
            }
        };
        write_legacy().map_err(|err| {
            if shared_ok {
                err.noting(took_effect)
            } else {
                err
            }
        })?;
        if shared_ok {
            // The store answers again: the next start retries what is pending.
            if self.journal.repairs_paused_until().is_some() {
                if let Err(err) = self.journal.end_repairs_pause() {
                    tracing::debug!(error = %err, "could not end the pause of repairs");
                }
            }
            if was_dirty {
                if let Err(err) = self.journal.clear_dirty(key) {
                    tracing::warn!(error = %err, key = %key, "could not clear a repair marker; a later repair clears it");
                }
            }
            if let Err(err) = self.journal.mark_migrated(key) {
                tracing::warn!(error = %err, key = %key, "could not record a migrated key");
            }
        }
        Ok(())
    }

    fn do_keys(&self) -> Result<Vec<SecretKey>> {
        if self.in_memory() {
            return self.memory.keys();
        }
        let Some(legacy) = &self.legacy else {
            return self.shared.keys();
        };
        let shared = self.shared.keys()?;
        let mut keys: BTreeSet<SecretKey> = shared
            .into_iter()
            .filter(|k| !self.journal.is_dirty(k))
            .collect();
        if !self.journal.legacy_invisible() {
            for key in legacy.keys()? {
                if self.journal.is_dirty(&key) || self.journal.fallback_allowed(&key) {
                    keys.insert(key);
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Brings the shared copy of one dirty key up to date from the legacy store, unless another
    /// app changed it there after this app's write failed: then that change is the later one,
    /// and this app's copy follows it instead. `Ok(true)` when the shared copy was written,
    /// `Ok(false)` when it stood.
    ///
    /// Why the time of the failure, not what the shared store held when this app last looked:
    /// a change another app made before the failed write looks the same from here as one made
    /// after it, and only the second may win (the model test found a version that let the
    /// first undo this app's own acknowledged delete).
    fn repair_key(&self, key: &SecretKey) -> Result<bool> {
        let Some(legacy) = &self.legacy else {
            return Ok(true);
        };
        if !self.journal.is_dirty(key) {
            return Ok(true);
        }
        let ours = legacy.get(key)?;
        let written = match self.journal.dirty_since(key) {
            Some(failed_at) => {
                self.shared
                    .write_unless_changed_after(key, ours.as_ref(), failed_at)?
            }
            // Recorded before failure times were: this app's copy wins, as it did then.
            None => {
                match &ours {
                    Some(value) => self.shared.set(key, value)?,
                    None => {
                        self.shared.delete(key)?;
                    }
                }
                true
            }
        };
        if !written {
            // The legacy copy is what this app reads while the key is dirty, so it follows the
            // shared one before the mark goes; a failure leaves the key dirty, and the next
            // repair finds the later change again.
            let kind = match self.shared.get(key)? {
                Some(theirs) => {
                    legacy.set(key, &theirs)?;
                    ChangeKind::Set
                }
                None => {
                    legacy.delete(key)?;
                    ChangeKind::Delete
                }
            };
            tracing::info!(key = %key, "another app changed this key after this app's write failed; its later change stands");
            self.journal.clear_dirty(key)?;
            let _ = self.journal.mark_migrated(key);
            let mut superseded = self.superseded();
            if !superseded.contains(key) {
                superseded.push(key.clone());
            }
            drop(superseded);
            // What this app reads for the key changed.
            self.events.emit(key, kind);
            return Ok(false);
        }
        self.journal.clear_dirty(key)?;
        let _ = self.journal.mark_migrated(key);
        self.counters.repairs_done.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn repair_pending(&self) -> RepairReport {
        let mut report = RepairReport::default();
        if self.in_memory() || self.legacy.is_none() {
            return report;
        }
        for key in self.journal.dirty_keys() {
            let ticket = self.queues.enqueue(&key);
            ticket.wait();
            match self.repair_key(&key) {
                Ok(true) => report.repaired += 1,
                // Reported below, with those a migration pass carried out.
                Ok(false) => {}
                Err(err) => {
                    self.counters
                        .repair_failures
                        .fetch_add(1, Ordering::Relaxed);
                    // Kept apart: "once the shared store is reachable" would not help (found
                    // by QA: a key the broker's policy stopped sharing with this app).
                    if err.is_refusal() {
                        report.refused.push((key, reason(&err)));
                    } else {
                        report.failed.push((key, reason(&err)));
                    }
                }
            }
        }
        if !self.journal.migration_done() {
            if let Err(err) = self.migrate(false, None, &mut |_| {}) {
                tracing::warn!(error = %err, "migration pass failed");
            }
        }
        report.superseded = std::mem::take(&mut *self.superseded());
        report
    }

    fn superseded(&self) -> MutexGuard<'_, Vec<SecretKey>> {
        // Pushes and takes: a panic cannot leave the list torn.
        self.superseded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One migration pass. `lazy` passes skip keys that are busy (their own operations
    /// handle them) instead of waiting, because the caller may hold one of those turns; the
    /// key whose turn the caller holds, `own_turn`, is migrated in that turn.
    fn migrate(
        &self,
        lazy: bool,
        own_turn: Option<&SecretKey>,
        progress: &mut dyn FnMut(&MigrationProgress),
    ) -> Result<MigrationReport> {
        let mut report = MigrationReport::default();
        let Some(legacy) = &self.legacy else {
            report.complete = true;
            return Ok(report);
        };
        if self.in_memory() {
            return Ok(report);
        }
        if self.journal.migration_done() {
            report.complete = true;
            return Ok(report);
        }
        let keys = legacy.keys()?;
        let total = keys.len();
        for (i, key) in keys.into_iter().enumerate() {
            let turn = if lazy {
                self.lazy_turn(&key, own_turn)
            } else {
                let ticket = self.queues.enqueue(&key);
                ticket.wait();
                Some(Some(ticket))
            };
            let outcome = match turn {
                None => MigrationOutcome::Deferred,
                Some(_turn) => self.migrate_key(legacy.as_ref(), &key),
            };
            match &outcome {
                MigrationOutcome::Copied => report.copied += 1,
                MigrationOutcome::AlreadyPresent => report.already_present += 1,
                MigrationOutcome::Deferred => report
                    .failed
                    .push((key.clone(), "busy; retried on the next pass".to_owned())),
                MigrationOutcome::Failed(why) => report.failed.push((key.clone(), why.clone())),
            }
            progress(&MigrationProgress {
                done: i + 1,
                total,
                key,
                outcome,
            });
        }
        // The done-marker is written only when every key made it; otherwise the next pass
        // retries exactly the keys that are not yet marked.
        if report.failed.is_empty() {
            self.journal.mark_migration_done()?;
            report.complete = true;
        }
        Ok(report)
    }

    fn migrate_key(&self, legacy: &dyn Store, key: &SecretKey) -> MigrationOutcome {
        if self.journal.is_dirty(key) {
            return match self.repair_key(key) {
                Ok(true) => MigrationOutcome::Copied,
                // Another app's later change stands: nothing of this app's was copied.
                Ok(false) => MigrationOutcome::AlreadyPresent,
                Err(err) => MigrationOutcome::Failed(reason(&err)),
            };
        }
        if self.journal.is_migrated(key) {
            return MigrationOutcome::AlreadyPresent;
        }
        let step = || -> Result<MigrationOutcome> {
            // The shared store's copy, if any, is at least as new as ours (it was written by
            // this app with a dual write, or by another app later): never overwrite it.
            if self.shared.get(key)?.is_some() {
                self.journal.mark_migrated(key)?;
                return Ok(MigrationOutcome::AlreadyPresent);
            }
            match legacy.get(key)? {
                Some(value) => {
                    // Not over a delete of another app's (see `copy_to_shared`).
                    let copied =
                        self.shared
                            .write_unless_changed_after(key, Some(&value), UNIX_EPOCH)?;
                    self.journal.mark_migrated(key)?;
                    Ok(if copied {
                        MigrationOutcome::Copied
                    } else {
                        MigrationOutcome::AlreadyPresent
                    })
                }
                // Deleted since the listing: nothing left to migrate.
                None => Ok(MigrationOutcome::AlreadyPresent),
            }
        };
        step().unwrap_or_else(|err| MigrationOutcome::Failed(reason(&err)))
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::mpsc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::*;
    use crate::testing::FaultStore;

    fn key(s: &str) -> SecretKey {
        SecretKey::new(s).unwrap()
    }

    fn value(s: &str) -> SecretValue {
        SecretValue::from_slice(s.as_bytes())
    }

    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// A single-threaded runtime whose only blocking-pool thread is busy until the returned
    /// sender is dropped: an operation sent to the pool cannot finish before that, so one that
    /// completes on its first poll ran inline.
    fn runtime_with_busy_pool() -> (tokio::runtime::Runtime, mpsc::Sender<()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        let (release, released) = mpsc::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        rt.spawn_blocking(move || {
            started_tx.send(()).unwrap();
            let _ = released.recv();
        });
        started.recv().unwrap();
        (rt, release)
    }

    fn ready(storage: SecretStorage) -> AsyncSecretStorage {
        storage.ready().unwrap();
        storage.to_async()
    }

    fn faulty() -> Arc<dyn Store> {
        Arc::new(FaultStore::new(MemoryStore::new(), Duration::from_secs(1)))
    }

    #[test]
    fn memory_stores_run_inline_without_the_blocking_pool() {
        let (rt, _release) = runtime_with_busy_pool();
        let storage = ready(
            SecretStorage::builder(Arc::new(MemoryStore::new()))
                .legacy(Arc::new(MemoryStore::new()))
                .journal(Arc::new(MemoryStore::new()))
                .build(),
        );
        let k = key("a");
        let _guard = rt.enter();
        let Poll::Ready(set) = poll_once(pin!(storage.set(&k, &value("1")))) else {
            panic!("set went to the blocking pool");
        };
        set.unwrap();
        let Poll::Ready(got) = poll_once(pin!(storage.get(&k))) else {
            panic!("get went to the blocking pool");
        };
        assert_eq!(got.unwrap(), Some(value("1")));
        let Poll::Ready(keys) = poll_once(pin!(storage.keys())) else {
            panic!("keys went to the blocking pool");
        };
        assert_eq!(keys.unwrap(), vec![k.clone()]);
        let Poll::Ready(deleted) = poll_once(pin!(storage.delete(&k))) else {
            panic!("delete went to the blocking pool");
        };
        assert!(deleted.unwrap());
    }

    #[test]
    fn in_memory_storage_runs_inline_whatever_its_stores() {
        let (rt, _release) = runtime_with_busy_pool();
        let storage = ready(
            SecretStorage::builder(faulty())
                .storage_type(StorageType::InMemory)
                .build(),
        );
        let _guard = rt.enter();
        let Poll::Ready(set) = poll_once(pin!(storage.set(&key("a"), &value("1")))) else {
            panic!("set went to the blocking pool");
        };
        set.unwrap();
    }

    /// Whether the first `get` over this storage goes to the blocking pool; it must still
    /// answer once the pool is free.
    fn first_get_uses_the_pool(storage: SecretStorage) -> bool {
        let (rt, release) = runtime_with_busy_pool();
        let storage = storage.to_async();
        let _guard = rt.enter();
        let mut get = pin!(storage.get(&key("a")));
        let answer = match poll_once(get.as_mut()) {
            Poll::Ready(answer) => Some(answer),
            Poll::Pending => None,
        };
        let used_pool = answer.is_none();
        drop(release);
        let answer = answer.unwrap_or_else(|| rt.block_on(get));
        assert_eq!(answer.unwrap(), None);
        used_pool
    }

    /// A store that blocks (as far as `SecretStorage` knows) but can say that a get will not
    /// wait (`now`), as the vault does when no write holds it.
    #[derive(Debug, Default)]
    struct AnswersNow {
        inner: MemoryStore,
        now: bool,
    }

    impl Store for AnswersNow {
        fn info(&self) -> StoreInfo {
            self.inner.info()
        }
        fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
            self.inner.get(key)
        }
        fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
            self.inner.set(key, value)
        }
        fn delete(&self, key: &SecretKey) -> Result<bool> {
            self.inner.delete(key)
        }
        fn keys(&self) -> Result<Vec<SecretKey>> {
            self.inner.keys()
        }
        fn try_get_now(&self, key: &SecretKey) -> Option<Result<Option<SecretValue>>> {
            self.now.then(|| self.inner.get(key))
        }
    }

    #[test]
    fn a_get_the_shared_store_can_answer_now_skips_the_pool_only_without_a_legacy_store() {
        let answers = |now| {
            Arc::new(AnswersNow {
                now,
                ..Default::default()
            })
        };
        let settled = |storage: SecretStorage| {
            storage.ready().unwrap();
            storage
        };
        let alone = |now| settled(SecretStorage::builder(answers(now)).build());
        assert!(!first_get_uses_the_pool(alone(true)));
        assert!(first_get_uses_the_pool(alone(false)));
        // With a legacy store, a miss may fall back to it (and migrate): the pool's job.
        let with_legacy = SecretStorage::builder(answers(true))
            .legacy(Arc::new(MemoryStore::new()))
            .build();
        assert!(first_get_uses_the_pool(settled(with_legacy)));
    }

    /// A store whose calls block (as far as `SecretStorage` knows) until the test opens its
    /// gate, and which records the rounds it is given.
    #[derive(Debug, Default)]
    struct GatedStore {
        inner: MemoryStore,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
        rounds: Mutex<Vec<Vec<String>>>,
        fail_set_many: bool,
        fail_key: Option<&'static str>,
        /// `set_many_joining` takes the late sets `more` offers (the vault's way); else it is
        /// the default, `set_many`.
        joins_late: bool,
        /// How many calls have reached the gate.
        entered: Mutex<usize>,
        entered_changed: std::sync::Condvar,
    }

    impl GatedStore {
        fn wait_for_entered(&self, calls: usize) {
            let mut entered = self.entered.lock().unwrap();
            while *entered < calls {
                entered = self.entered_changed.wait(entered).unwrap();
            }
        }
        fn wait_for_gate(&self) {
            *self.entered.lock().unwrap() += 1;
            self.entered_changed.notify_all();
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
        }
        fn open_gate(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    impl Store for GatedStore {
        fn info(&self) -> StoreInfo {
            self.inner.info()
        }
        fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
            self.inner.get(key)
        }
        fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
            self.wait_for_gate();
            if self.fail_key == Some(key.as_str()) {
                return Err(Error::invalid("test", "this key always fails"));
            }
            self.rounds
                .lock()
                .unwrap()
                .push(vec![key.as_str().to_owned()]);
            self.inner.set(key, value)
        }
        fn set_many(&self, entries: &[(SecretKey, SecretValue)]) -> Result<()> {
            self.wait_for_gate();
            let keys: Vec<String> = entries.iter().map(|(k, _)| k.as_str().to_owned()).collect();
            if self.fail_set_many {
                return Err(Error::invalid("test", "set_many fails"));
            }
            self.rounds.lock().unwrap().push(keys);
            self.inner.set_many(entries)
        }
        fn set_many_joining(
            &self,
            entries: &[(SecretKey, SecretValue)],
            more: &mut dyn FnMut() -> Vec<(SecretKey, SecretValue)>,
        ) -> Result<()> {
            if !self.joins_late {
                return self.set_many(entries);
            }
            self.wait_for_gate();
            let mut all = entries.to_vec();
            loop {
                let late = more();
                if late.is_empty() {
                    break;
                }
                all.extend(late);
            }
            let keys = all.iter().map(|(k, _)| k.as_str().to_owned()).collect();
            self.rounds.lock().unwrap().push(keys);
            self.inner.set_many(&all)
        }
        fn delete(&self, key: &SecretKey) -> Result<bool> {
            self.inner.delete(key)
        }
        fn keys(&self) -> Result<Vec<SecretKey>> {
            self.inner.keys()
        }
    }

    /// Makes every set (in order), polls each once so that all are queued while the store's
    /// gate is shut, then opens the gate and collects the answers.
    fn queued_sets(store: Arc<GatedStore>, sets: &[(&str, String)]) -> Vec<Result<()>> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let storage = ready(SecretStorage::builder(store.clone()).build());
        rt.block_on(async {
            let mut futures: Vec<_> = sets
                .iter()
                .map(|(k, v)| Box::pin(storage.set(&key(k), &value(v))))
                .collect();
            for future in &mut futures {
                assert!(poll_once(future.as_mut()).is_pending(), "the gate is shut");
            }
            store.open_gate();
            let mut answers = Vec::new();
            for future in futures {
                answers.push(future.await);
            }
            answers
        })
    }

    #[test]
    fn one_drainer_thread_serves_sets_one_after_another_and_ends_with_the_storage() {
        // Which thread each set ran on.
        let threads = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::new({
            let threads = Arc::clone(&threads);
            crate::testing::HookStore::new(move |call| {
                // A round of one is a `set_many` of one.
                if let crate::testing::Call::Set(_) | crate::testing::Call::SetMany(_) = call {
                    threads.lock().unwrap().push(std::thread::current().id());
                }
            })
        });
        let storage = ready(SecretStorage::builder(store.clone()).build());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        // Each set is answered (the queue is empty again) before the next is made.
        for i in 0..5 {
            rt.block_on(storage.set(&key("k"), &value(&i.to_string())))
                .unwrap();
        }
        let threads = threads.lock().unwrap().clone();
        assert_eq!(threads.len(), 5);
        assert!(
            threads.iter().all(|t| *t == threads[0]),
            "a thread per set: {threads:?}"
        );
        assert_ne!(threads[0], std::thread::current().id());
        // The parked drainer holds the storage only weakly: dropping the storage drops its
        // stores now, not after the drainer's idle time.
        drop(storage);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&store) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the store outlived the storage"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn concurrent_async_sets_are_written_in_rounds() {
        let store = Arc::new(GatedStore::default());
        let sets: Vec<(&str, String)> = (0..64)
            .map(|i| {
                (
                    &*Box::leak(format!("k{i}").into_boxed_str()),
                    format!("v{i}"),
                )
            })
            .collect();
        let answers = queued_sets(store.clone(), &sets);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        for (k, v) in &sets {
            assert_eq!(store.inner.get(&key(k)).unwrap(), Some(value(v)));
        }
        let rounds = store.rounds.lock().unwrap();
        // Whatever the drainer took before the gate opened is one round; everything queued
        // behind it is the next.
        assert!(rounds.len() <= 2, "{} rounds", rounds.len());
        assert_eq!(rounds.iter().map(Vec::len).sum::<usize>(), 64);
    }

    /// Sets queued while a round is being written join it, when the store lets them (the
    /// vault calls back just before its commit): they share that flush instead of waiting for
    /// the next one. Up to `MAX_ROUND` sets in all; the rest make the next round.
    #[test]
    fn sets_queued_while_a_round_is_written_join_it_up_to_the_round_limit() {
        let store = Arc::new(GatedStore {
            joins_late: true,
            ..GatedStore::default()
        });
        let storage = ready(SecretStorage::builder(store.clone()).build());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let late = combine::MAX_ROUND + 88;
        let names: Vec<String> = (0..=late).map(|i| format!("k{i}")).collect();
        rt.block_on(async {
            let mut futures: Vec<_> = names
                .iter()
                .map(|k| Box::pin(storage.set(&key(k), &value(k))))
                .collect();
            // The first set's round reaches the store, and waits there...
            assert!(poll_once(futures[0].as_mut()).is_pending());
            store.wait_for_entered(1);
            // ...while the others are queued.
            for future in &mut futures[1..] {
                assert!(poll_once(future.as_mut()).is_pending());
            }
            store.open_gate();
            for future in futures {
                future.await.unwrap();
            }
        });
        for k in &names {
            assert_eq!(store.inner.get(&key(k)).unwrap(), Some(value(k)), "{k}");
        }
        let rounds = store.rounds.lock().unwrap();
        let sizes: Vec<usize> = rounds.iter().map(Vec::len).collect();
        assert_eq!(sizes, [combine::MAX_ROUND, late + 1 - combine::MAX_ROUND]);
        assert_eq!(rounds[0][..3], ["k0", "k1", "k2"], "call order");
    }

    #[test]
    fn sets_queued_for_a_drainer_that_never_runs_get_an_error_and_the_next_set_works() {
        let store = Arc::new(GatedStore::default());
        store.open_gate();
        let storage = ready(SecretStorage::builder(store.clone()).build());
        let inner = &storage.inner;
        let (reply, answer) = tokio::sync::oneshot::channel();
        let start = inner.sets.push(combine::PendingSet {
            ticket: inner.queues.enqueue(&key("k")),
            key: key("k"),
            value: value("lost"),
            reply,
        });
        assert!(start, "no drainer existed");
        let dead = tokio::runtime::Runtime::new().unwrap();
        let handle = dead.handle().clone();
        dead.shutdown_timeout(Duration::from_secs(5));
        Inner::start_drainer_on(inner, &handle);
        // The set is answered (with an error) instead of waiting forever, its key's turn has
        // passed on, and the next set starts a drainer again.
        let (answered, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || answered.send(answer.blocking_recv().is_err()));
        assert_eq!(
            answers.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "the queued set was never answered"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(storage.set(&key("k"), &value("kept"))).unwrap();
        assert_eq!(store.inner.get(&key("k")).unwrap(), Some(value("kept")));
    }

    #[test]
    fn a_repeated_key_keeps_call_order_and_never_shares_a_round() {
        let store = Arc::new(GatedStore::default());
        let sets: Vec<(&str, String)> = (0..20)
            .map(|i| (if i % 2 == 0 { "same" } else { "other" }, format!("{i}")))
            .collect();
        let answers = queued_sets(store.clone(), &sets);
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
        assert_eq!(store.inner.get(&key("same")).unwrap(), Some(value("18")));
        assert_eq!(store.inner.get(&key("other")).unwrap(), Some(value("19")));
        let rounds = store.rounds.lock().unwrap();
        for round in rounds.iter() {
            let mut unique = round.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                round.len(),
                "a round held one key twice: {round:?}"
            );
        }
    }

    #[test]
    fn sets_polled_out_of_call_order_never_wait_on_each_other() {
        // The deadlock this guards against: with a queued set whose turn had not come, the
        // drainer waited for a set that was queued behind it. Futures spawned on a
        // multi-threaded runtime are first polled in any order.
        let store = Arc::new(GatedStore::default());
        store.open_gate();
        let storage = ready(SecretStorage::builder(store.clone()).build());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap();
        let finished = rt.block_on(async {
            let mut tasks = Vec::new();
            // Fewer operations than tokio's blocking pool has threads (512): more waiters than
            // that can starve whichever operation holds a turn, with or without combining.
            for i in 0..150 {
                let k = key(&format!("k{}", i % 3));
                // Made (tickets taken) in this order; spawned tasks are polled in any order.
                let set = storage.set(&k, &value(&i.to_string()));
                let get = storage.get(&k);
                tasks.push(tokio::spawn(set));
                tasks.push(tokio::spawn(async move { get.await.map(drop) }));
            }
            let all = async {
                for task in tasks {
                    task.await.unwrap().unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(30), all).await
        });
        // Deadlocked blocking-pool threads would keep a normal runtime drop waiting forever.
        rt.shutdown_background();
        assert!(finished.is_ok(), "every operation finished (no deadlock)");
        // Per-key call order: each key holds the last value written to it.
        for k in 0..3 {
            let last = (0..150).filter(|i| i % 3 == k).max().unwrap();
            assert_eq!(
                store.inner.get(&key(&format!("k{k}"))).unwrap(),
                Some(value(&last.to_string()))
            );
        }
    }

    #[test]
    fn a_failed_round_answers_each_set_on_its_own() {
        let store = Arc::new(GatedStore {
            fail_set_many: true,
            fail_key: Some("bad"),
            ..GatedStore::default()
        });
        let sets = [
            ("a", "1".to_owned()),
            ("bad", "2".to_owned()),
            ("c", "3".to_owned()),
        ];
        let answers = queued_sets(store.clone(), &sets);
        assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
        assert!(
            matches!(&answers[1], Err(Error::Invalid { reason, .. }) if reason.contains("always fails")),
            "{answers:?}"
        );
        assert_eq!(store.inner.get(&key("a")).unwrap(), Some(value("1")));
        assert_eq!(store.inner.get(&key("c")).unwrap(), Some(value("3")));
        assert_eq!(store.inner.get(&key("bad")).unwrap(), None);
    }

    #[test]
    fn blocking_stores_and_the_first_operation_use_the_blocking_pool() {
        let memory = || -> Arc<dyn Store> { Arc::new(MemoryStore::new()) };
        let ready_storage = |builder: SecretStorageBuilder| {
            let storage = builder.build();
            storage.ready().unwrap();
            storage
        };
        assert!(first_get_uses_the_pool(ready_storage(
            SecretStorage::builder(faulty())
        )));
        assert!(first_get_uses_the_pool(ready_storage(
            SecretStorage::builder(memory()).legacy(faulty())
        )));
        assert!(first_get_uses_the_pool(ready_storage(
            SecretStorage::builder(memory())
                .legacy(memory())
                .journal(faulty())
        )));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            // The vault refuses a directory others can read.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
            let mut vault = crate::store::vault::VaultOptions::new(dir.path().join("v.db"), "ns");
            vault.keys.passphrase_env = None;
            let vault: Arc<dyn Store> = Arc::new(crate::store::VaultStore::open(vault).unwrap());
            // A vault can block (a lock another process holds), so only a get it answers at
            // once skips the pool, and only without a legacy store to fall back to.
            assert!(first_get_uses_the_pool(ready_storage(
                SecretStorage::builder(vault.clone()).legacy(memory())
            )));
            assert!(!first_get_uses_the_pool(ready_storage(
                SecretStorage::builder(vault)
            )));
        }
        // Not ready yet: the storage type probe may block.
        assert!(first_get_uses_the_pool(
            SecretStorage::builder(memory()).build()
        ));
        // The control: the same check sees an inline run.
        assert!(!first_get_uses_the_pool(ready_storage(
            SecretStorage::builder(memory())
                .legacy(memory())
                .journal(memory())
        )));
    }

    #[test]
    fn an_operation_whose_turn_has_not_come_waits_in_call_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let storage = ready(SecretStorage::builder(Arc::new(MemoryStore::new())).build());
        let k = key("a");
        rt.block_on(async {
            // Made in this order, polled in reverse: each must see exactly what was called
            // before it, although its first poll comes before theirs.
            let set_1 = storage.set(&k, &value("1"));
            let get_1 = storage.get(&k);
            let set_2 = storage.set(&k, &value("2"));
            let get_2 = storage.get(&k);
            let delete = storage.delete(&k);
            let get_none = storage.get(&k);
            let mut get_none = pin!(get_none);
            let mut delete = pin!(delete);
            let mut get_2 = pin!(get_2);
            let mut get_1 = pin!(get_1);
            assert!(poll_once(get_none.as_mut()).is_pending());
            assert!(poll_once(delete.as_mut()).is_pending());
            assert!(poll_once(get_2.as_mut()).is_pending());
            assert!(poll_once(get_1.as_mut()).is_pending());
            set_1.await.unwrap();
            assert_eq!(get_1.await.unwrap(), Some(value("1")));
            set_2.await.unwrap();
            assert_eq!(get_2.await.unwrap(), Some(value("2")));
            assert!(delete.await.unwrap());
            assert_eq!(get_none.await.unwrap(), None);
        });
    }
}
