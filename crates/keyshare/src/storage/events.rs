//! Change events: every change gets the next sequence number, and a subscriber that falls behind
//! is told to resync instead of silently missing changes.

use std::sync::Mutex;

use tokio::sync::broadcast;

use crate::model::SecretKey;

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChangeKind {
    /// A value was written.
    Set,
    /// The value was deleted.
    Delete,
}

/// One change. Events carry the key and kind, never the value: a subscriber reads the value if
/// it wants it, through the same access checks as any read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Strictly increasing within one event source, without gaps; a gap means missed events.
    pub seq: u64,
    /// The key that changed.
    pub key: SecretKey,
    /// What happened.
    pub kind: ChangeKind,
}

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A change, in order.
    Changed(ChangeEvent),
    /// The subscriber fell behind and `missed` events were dropped: it must re-read everything
    /// it caches (list keys, re-read values) rather than trust its state.
    Resync {
        /// How many events were lost.
        missed: u64,
    },
}

#[derive(Debug)]
pub(crate) struct EventHub {
    // Sequence assignment and sending happen under one lock so that receivers see sequence
    // numbers in increasing order even when two threads report changes at once.
    next: Mutex<Next>,
}

#[derive(Debug)]
struct Next {
    seq: u64,
    capacity: usize,
    // Made by the first `subscribe`: a broadcast channel allocates all its slots up front
    // (tens of KiB for the default 1,024), which a one-shot process such as `keyshare get`
    // that never subscribes should not pay for. Events sent before anyone subscribed reach
    // nobody either way.
    tx: Option<broadcast::Sender<ChangeEvent>>,
}

impl EventHub {
    pub(crate) fn new(capacity: usize) -> Self {
        EventHub {
            next: Mutex::new(Next {
                seq: 1,
                capacity: capacity.max(1),
                tx: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Next> {
        // Only a counter and an Option change under this lock: a panic cannot leave it torn.
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn emit(&self, key: &SecretKey, kind: ChangeKind) -> u64 {
        let mut next = self.lock();
        let seq = next.seq;
        next.seq += 1;
        if let Some(tx) = &next.tx {
            // No subscribers left is not an error.
            let _ = tx.send(ChangeEvent {
                seq,
                key: key.clone(),
                kind,
            });
        }
        seq
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().seq - 1
    }

    pub(crate) fn subscribe(&self) -> Subscription {
        let mut next = self.lock();
        let capacity = next.capacity;
        let tx = next
            .tx
            .get_or_insert_with(|| broadcast::channel(capacity).0);
        Subscription { rx: tx.subscribe() }
    }
}

/// A stream of [`Notification`]s, usable from async code ([`Subscription::recv`]) and from
/// blocking code ([`Subscription::blocking_recv`]).
#[derive(Debug)]
pub struct Subscription {
    rx: broadcast::Receiver<ChangeEvent>,
}

impl Subscription {
    fn map(result: Result<ChangeEvent, broadcast::error::RecvError>) -> Option<Notification> {
        match result {
            Ok(event) => Some(Notification::Changed(event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Some(Notification::Resync { missed })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next notification; `None` once the source is gone.
    pub async fn recv(&mut self) -> Option<Notification> {
        Self::map(self.rx.recv().await)
    }

    /// The next notification, blocking the thread. Do not call from async code.
    pub fn blocking_recv(&mut self) -> Option<Notification> {
        Self::map(self.rx.blocking_recv())
    }

    /// The next notification if one is ready.
    pub fn try_recv(&mut self) -> Option<Notification> {
        match self.rx.try_recv() {
            Ok(event) => Some(Notification::Changed(event)),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                Some(Notification::Resync { missed })
            }
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_increase_and_lag_means_resync() {
        let hub = EventHub::new(2);
        let mut sub = hub.subscribe();
        let k = SecretKey::new("k").unwrap();
        for _ in 0..5 {
            hub.emit(&k, ChangeKind::Set);
        }
        assert_eq!(sub.try_recv(), Some(Notification::Resync { missed: 3 }));
        let Some(Notification::Changed(a)) = sub.try_recv() else {
            panic!("expected an event")
        };
        let Some(Notification::Changed(b)) = sub.try_recv() else {
            panic!("expected an event")
        };
        assert_eq!((a.seq, b.seq), (4, 5));
        assert_eq!(sub.try_recv(), None);
        assert_eq!(hub.last_seq(), 5);
    }
}
