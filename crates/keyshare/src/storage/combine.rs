//! Group commit of async `set`s, for a storage whose only store is the shared one (the broker's
//! case: apps keep their legacy stores on their side).
//!
//! Without it every concurrent `set` holds a blocking-pool thread of its own, and the store's own
//! group commit then wakes each of those threads in turn: measured, the broker spent more time
//! switching threads than writing (crates/keyshare-broker/benches/broker.rs, part (d)). Here a
//! set whose key's turn has already come (its ticket is served) joins a queue, and one blocking
//! task at a time drains the queue: each round is written with one [`Store::set_many`] and every
//! caller answered. A set that must wait for an earlier operation on its key takes the blocking
//! pool as before: the drainer never waits for a turn, because the operation it would wait for
//! may be a set queued behind it (futures are first polled in any order, not in call order),
//! which would deadlock. Only one ticket per key is served at a time, so a key is never queued
//! twice and everything queued can go into one round.

use std::sync::Mutex;

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
    draining: bool,
}

/// The queue of sets waiting for the drainer.
#[derive(Default)]
pub(crate) struct SetQueue {
    state: Mutex<State>,
}

impl std::fmt::Debug for SetQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SetQueue").finish_non_exhaustive()
    }
}

impl SetQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Pushes, takes and a flag: a panic cannot leave the state torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a set. `true` when no drainer runs: the caller must start one.
    pub(crate) fn push(&self, set: PendingSet) -> bool {
        let mut state = self.lock();
        state.queue.push(set);
        !std::mem::replace(&mut state.draining, true)
    }

    /// Everything queued so far, in call order; `None` (and the drainer is done) when the
    /// queue is empty.
    pub(crate) fn take(&self) -> Option<Vec<PendingSet>> {
        let mut state = self.lock();
        if state.queue.is_empty() {
            state.draining = false;
            return None;
        }
        Some(std::mem::take(&mut state.queue))
    }

    /// Marks the drainer gone (it panicked): the next `push` starts another. Sets it had taken
    /// are answered with an error when their reply senders drop.
    pub(crate) fn drainer_gone(&self) {
        self.lock().draining = false;
    }
}
