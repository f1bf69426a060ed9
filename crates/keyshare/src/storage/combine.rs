//! Group commit of async `set`s, for a storage whose only store is the shared one (the broker's
//! case: apps keep their legacy stores on their side).
//!
//! Without it every concurrent `set` holds a blocking-pool thread of its own, and the store's own
//! group commit then wakes each of those threads in turn: measured, the broker spent more time
//! switching threads than writing (crates/keyshare-broker/benches/broker.rs, part (d)). Here a
//! set whose key's turn has already come (its ticket is served) joins a queue, and one thread
//! at a time drains the queue: each round is written with one [`Store::set_many`] and every
//! caller answered. The thread then waits a while for more sets before it ends. A set that must wait for an earlier operation on its key takes the blocking
//! pool as before: the drainer never waits for a turn, because the operation it would wait for
//! may be a set queued behind it (futures are first polled in any order, not in call order),
//! which would deadlock. Only one ticket per key is served at a time, so a key is never queued
//! twice and everything queued can go into one round.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::queue::Ticket;
use crate::error::Result;
use crate::model::{SecretKey, SecretValue};

#[cfg(doc)]
use crate::store::Store;

/// One queued `set`.
pub(crate) struct PendingSet {
    pub(crate) ticket: Ticket,
    pub(crate) key: SecretKey,
    pub(crate) value: SecretValue,
    pub(crate) reply: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
struct State {
    queue: Vec<PendingSet>,
    /// A drainer thread exists (draining, or parked waiting for sets).
    draining: bool,
    /// The storage is gone: a parked drainer ends.
    closed: bool,
}

/// How long a drainer with nothing to write stays parked before it ends. Starting a thread
/// costs more than a round's own work on a fast disk, and a writer that keeps the queue only
/// nearly busy (the broker under a steady stream of sets) would start one per round.
pub(crate) const DRAINER_IDLE: Duration = Duration::from_secs(10);

/// The most sets one round writes, those that join it late included: a store's transaction
/// stays bounded when writers keep arriving faster than rounds commit.
pub(crate) const MAX_ROUND: usize = 512;

/// The queue of sets waiting for the drainer.
#[derive(Default)]
pub(crate) struct SetQueue {
    state: Mutex<State>,
    /// Signalled when a set is queued or the storage closes.
    queued: Condvar,
}

impl std::fmt::Debug for SetQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetQueue").finish_non_exhaustive()
    }
}

impl SetQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Pushes, takes and flags: a panic cannot leave the state torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a set. `true` when no drainer exists: the caller must start one.
    pub(crate) fn push(&self, set: PendingSet) -> bool {
        let mut state = self.lock();
        state.queue.push(set);
        let start = !std::mem::replace(&mut state.draining, true);
        drop(state);
        if !start {
            self.queued.notify_one();
        }
        start
    }

    /// Everything queued so far, in call order, waiting up to `idle` for a first set. `None`
    /// (and the drainer is done) when nothing came, or the storage closed.
    pub(crate) fn take(&self, idle: Duration) -> Option<Vec<PendingSet>> {
        let deadline = Instant::now() + idle;
        let mut state = self.lock();
        loop {
            if !state.queue.is_empty() {
                return Some(std::mem::take(&mut state.queue));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                state.draining = false;
                return None;
            }
            state = self
                .queued
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Up to `limit` of the sets queued now, in call order, without waiting: the ones that
    /// join a round while it is being written (see [`Store::set_many_joining`]).
    pub(crate) fn take_now(&self, limit: usize) -> Vec<PendingSet> {
        let mut state = self.lock();
        let n = state.queue.len().min(limit);
        state.queue.drain(..n).collect()
    }

    /// The storage is being dropped: a parked drainer ends now instead of after its idle time.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.queued.notify_all();
    }

    /// Marks the drainer gone (it panicked): the next `push` starts another. Sets it had taken
    /// are answered with an error when their reply senders drop.
    pub(crate) fn drainer_gone(&self) {
        self.lock().draining = false;
    }

    /// No drainer could be started: every queued set is answered with an error (its reply
    /// sender drops, its key's turn passes on), and the next `push` tries again.
    pub(crate) fn abandon(&self) {
        let queued = {
            let mut state = self.lock();
            state.draining = false;
            std::mem::take(&mut state.queue)
        };
        drop(queued);
    }
}
