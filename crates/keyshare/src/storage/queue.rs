//! Per-key FIFO ordering.
//!
//! Every operation takes a numbered ticket for its key at the moment it is called, then waits
//! until that number is served. Tickets for one key are served in the order they were taken;
//! tickets for different keys never wait for each other. Because the ticket is taken before any
//! work (before an async call hops onto the blocking pool, or checks whether its turn has come
//! so that it may run inline), call order is the execution order, which is what "FIFO per key"
//! means to a caller who fires a `set` and a `get` without awaiting the first.
//!
//! Keys are identified by a keyed 64-bit hash. Two different keys colliding would only make them
//! share a queue (less concurrency, never a correctness problem).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::model::SecretKey;

const SHARDS: usize = 16;

/// The map's keys are already uniformly distributed hashes: hashing them again would only cost
/// time on every operation.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Lines = HashMap<u64, Line, BuildHasherDefault<PassThrough>>;

#[derive(Debug, Default)]
struct Shard {
    lines: Mutex<Lines>,
    turn_changed: Condvar,
}

#[derive(Debug)]
struct Line {
    next_ticket: u64,
    now_serving: u64,
    waiting: usize,
    abandoned: Vec<u64>,
}

#[derive(Debug)]
pub(crate) struct KeyQueues {
    hasher: foldhash::fast::RandomState,
    shards: Box<[Shard]>,
}

impl KeyQueues {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(KeyQueues {
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        })
    }

    fn shard(&self, hash: u64) -> &Shard {
        &self.shards[(hash as usize) % SHARDS]
    }

    fn lock(shard: &Shard) -> MutexGuard<'_, Lines> {
        // Updates under this lock are single counter changes: a panic cannot leave them torn.
        shard.lines.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the next ticket for `key`. Never blocks beyond a short internal lock.
    pub(crate) fn enqueue(self: &Arc<Self>, key: &SecretKey) -> Ticket {
        let hash = self.hasher.hash_one(key.as_str());
        let mut lines = Self::lock(self.shard(hash));
        let line = lines.entry(hash).or_insert(Line {
            next_ticket: 0,
            now_serving: 0,
            waiting: 0,
            abandoned: Vec::new(),
        });
        let number = line.next_ticket;
        line.next_ticket += 1;
        Ticket {
            queues: Arc::clone(self),
            hash,
            number,
            // The common case: nobody ahead, so `wait` need not look again.
            served: line.now_serving == number,
        }
    }

    /// Takes a ticket only if nobody holds or waits for one on `key`.
    pub(crate) fn try_enqueue_idle(self: &Arc<Self>, key: &SecretKey) -> Option<Ticket> {
        let hash = self.hasher.hash_one(key.as_str());
        // The check and the ticket under one lock hold: an operation that took the key's ticket
        // in between would otherwise be waited for, by a caller (the lazy pass, under the
        // storage's start-up lock) that operation may itself be waiting for (found in review:
        // two gets at start-up hung).
        let mut lines = Self::lock(self.shard(hash));
        if lines.contains_key(&hash) {
            return None;
        }
        lines.insert(
            hash,
            Line {
                next_ticket: 1,
                now_serving: 0,
                waiting: 0,
                abandoned: Vec::new(),
            },
        );
        Some(Ticket {
            queues: Arc::clone(self),
            hash,
            number: 0,
            served: true,
        })
    }
}

/// A place in one key's line. Dropping it, served or not, lets the next ticket through in
/// order, so an abandoned operation cannot wedge its key.
#[derive(Debug)]
pub(crate) struct Ticket {
    queues: Arc<KeyQueues>,
    hash: u64,
    number: u64,
    served: bool,
}

impl Ticket {
    /// Whether it is this ticket's turn now, without waiting. Once true it stays true (the
    /// line only moves on when this ticket is dropped).
    pub(crate) fn is_served(&mut self) -> bool {
        if !self.served {
            let lines = KeyQueues::lock(self.queues.shard(self.hash));
            self.served = lines
                .get(&self.hash)
                .is_some_and(|line| line.now_serving == self.number);
        }
        self.served
    }

    /// Blocks until it is this ticket's turn.
    pub(crate) fn wait(&self) {
        if self.served {
            return;
        }
        let shard = self.queues.shard(self.hash);
        let mut lines = KeyQueues::lock(shard);
        let mut registered = false;
        loop {
            let line = lines
                .get_mut(&self.hash)
                .expect("a line exists while one of its tickets is alive");
            if line.now_serving == self.number {
                if registered {
                    line.waiting -= 1;
                }
                return;
            }
            if !registered {
                line.waiting += 1;
                registered = true;
            }
            lines = shard
                .turn_changed
                .wait(lines)
                .unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let shard = self.queues.shard(self.hash);
        let mut lines = KeyQueues::lock(shard);
        let Some(line) = lines.get_mut(&self.hash) else {
            return;
        };
        if line.now_serving == self.number && line.next_ticket == self.number + 1 {
            // Alone in the line: the line ends here.
            lines.remove(&self.hash);
            return;
        }
        if line.now_serving != self.number {
            // Abandoned before its turn: remember to skip it, without blocking the dropper.
            line.abandoned.push(self.number);
            return;
        }
        line.now_serving += 1;
        while let Some(pos) = line.abandoned.iter().position(|&n| n == line.now_serving) {
            line.abandoned.swap_remove(pos);
            line.now_serving += 1;
        }
        if line.now_serving == line.next_ticket {
            lines.remove(&self.hash);
        } else if line.waiting > 0 {
            shard.turn_changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn key(s: &str) -> SecretKey {
        SecretKey::new(s).unwrap()
    }

    #[test]
    fn same_key_is_served_in_ticket_order() {
        let q = KeyQueues::new();
        let order = Arc::new(Mutex::new(Vec::new()));
        let first = q.enqueue(&key("a"));
        let mut handles = Vec::new();
        for i in 1..=5 {
            let t = q.enqueue(&key("a"));
            let order = Arc::clone(&order);
            handles.push(std::thread::spawn(move || {
                t.wait();
                order.lock().unwrap().push(i);
            }));
        }
        // Give the threads a chance to run out of order if ordering were broken.
        std::thread::sleep(Duration::from_millis(20));
        assert!(order.lock().unwrap().is_empty(), "nobody passes the holder");
        first.wait();
        drop(first);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn other_keys_do_not_wait() {
        let q = KeyQueues::new();
        let held = q.enqueue(&key("a"));
        held.wait();
        let (tx, rx) = mpsc::channel();
        let q2 = Arc::clone(&q);
        std::thread::spawn(move || {
            let t = q2.enqueue(&key("b"));
            t.wait();
            tx.send(()).unwrap();
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("key b runs while key a is held");
        drop(held);
    }

    #[test]
    fn abandoned_ticket_does_not_wedge_the_key() {
        let q = KeyQueues::new();
        let first = q.enqueue(&key("a"));
        let abandoned = q.enqueue(&key("a"));
        let third = q.enqueue(&key("a"));
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::spawn(move || {
            third.wait();
            tx.send(()).unwrap();
        });
        drop(abandoned);
        first.wait();
        drop(first);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the third ticket is served");
        handle.join().unwrap();
        assert!(q.try_enqueue_idle(&key("a")).is_some(), "the line is gone");
    }

    #[test]
    fn is_served_tells_whose_turn_it_is_without_waiting() {
        let q = KeyQueues::new();
        let mut first = q.enqueue(&key("a"));
        let mut abandoned = q.enqueue(&key("a"));
        let mut third = q.enqueue(&key("a"));
        let mut other = q.enqueue(&key("b"));
        assert!(first.is_served());
        assert!(other.is_served(), "other keys do not wait");
        assert!(!abandoned.is_served());
        assert!(!third.is_served());
        drop(abandoned);
        assert!(!third.is_served(), "still behind the holder");
        drop(first);
        assert!(third.is_served(), "the abandoned ticket is skipped");
        third.wait();
    }

    #[test]
    fn a_ticket_taken_while_idle_holds_the_line_like_any_other() {
        let q = KeyQueues::new();
        let mut first = q.try_enqueue_idle(&key("a")).unwrap();
        assert!(first.is_served());
        let mut second = q.enqueue(&key("a"));
        assert!(!second.is_served(), "behind the idle-taken ticket");
        drop(first);
        assert!(second.is_served());
        drop(second);
        assert!(q.try_enqueue_idle(&key("a")).is_some(), "the line ended");
    }

    #[test]
    fn try_enqueue_idle_refuses_a_busy_key() {
        let q = KeyQueues::new();
        let t = q.enqueue(&key("a"));
        assert!(q.try_enqueue_idle(&key("a")).is_none());
        assert!(q.try_enqueue_idle(&key("b")).is_some());
        drop(t);
        assert!(q.try_enqueue_idle(&key("a")).is_some());
    }
}
