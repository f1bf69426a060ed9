//! A store wrapper that injects faults, for every crate's tests.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result, UnavailableReason};
use crate::model::{SecretKey, SecretValue};
use crate::store::{Store, StoreInfo};

/// What an injected fault does to the call it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Fails without touching the inner store.
    FailBefore,
    /// Performs the call on the inner store, then reports an error anyway (a write that landed
    /// but whose acknowledgement was lost).
    FailAfter,
    /// Blocks for the store's timeout, then fails as timed out, without touching the inner
    /// store.
    Stall,
}

/// Which calls an armed fault may hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Calls {
    /// Any call.
    Any,
    /// Only writes (`set`, `delete`).
    Writes,
    /// Only reads (`get`, `keys`).
    Reads,
}

#[derive(Debug, Default)]
struct Plan {
    // (remaining matching calls to let through, what to do, which calls count)
    armed: Vec<(u64, Fault, Calls)>,
}

/// Wraps a store and fails chosen calls.
///
/// `arm(n, fault)` makes the n-th call from now (0 = the next one) fail with `fault`; several
/// faults can be armed at once. `set_down(true)` makes every call fail as if the service had
/// stopped. `fired()` counts injected faults, so a test can tell whether a fault actually hit.
pub struct FaultStore<S> {
    inner: S,
    timeout: Duration,
    plan: Mutex<Plan>,
    down: AtomicBool,
    fired: AtomicU64,
    calls: AtomicU64,
}

impl<S: Store> fmt::Debug for FaultStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultStore")
            .field("inner", &self.inner)
            .field("fired", &self.fired.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Read,
    Write,
}

impl<S: Store> FaultStore<S> {
    /// Wraps `inner`; a `Stall` blocks for `timeout`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        FaultStore {
            inner,
            timeout,
            plan: Mutex::default(),
            down: AtomicBool::new(false),
            fired: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Makes the `nth` call from now fail with `fault`.
    pub fn arm(&self, nth: u64, fault: Fault) {
        self.arm_on(nth, fault, Calls::Any);
    }

    /// Makes the `nth` matching call from now fail with `fault`.
    pub fn arm_on(&self, nth: u64, fault: Fault, calls: Calls) {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .armed
            .push((nth, fault, calls));
    }

    /// Removes every armed fault that has not fired.
    pub fn disarm(&self) {
        self.plan
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .armed
            .clear();
    }

    /// While `down`, every call fails before reaching the inner store.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// How many faults have been injected so far.
    pub fn fired(&self) -> u64 {
        self.fired.load(Ordering::SeqCst)
    }

    /// How many calls reached this wrapper.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    fn take_fault(&self, kind: CallKind) -> Option<Fault> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            self.fired.fetch_add(1, Ordering::SeqCst);
            return Some(Fault::FailBefore);
        }
        let mut plan = self.plan.lock().unwrap_or_else(|e| e.into_inner());
        let mut hit = None;
        plan.armed.retain_mut(|(remaining, fault, calls)| {
            let matches = match calls {
                Calls::Any => true,
                Calls::Writes => kind == CallKind::Write,
                Calls::Reads => kind == CallKind::Read,
            };
            if !matches {
                return true;
            }
            if *remaining == 0 {
                if hit.is_none() {
                    hit = Some(*fault);
                }
                false
            } else {
                *remaining -= 1;
                true
            }
        });
        if hit.is_some() {
            self.fired.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }

    fn injected(&self, fault: Fault) -> Error {
        match fault {
            Fault::Stall => Error::unavailable(
                "fault-injected store",
                UnavailableReason::TimedOut,
                format!("no answer within {:?} (injected stall)", self.timeout),
            ),
            _ => Error::unavailable(
                "fault-injected store",
                UnavailableReason::Backend,
                "injected failure",
            ),
        }
    }

    fn call<T>(&self, kind: CallKind, op: impl FnOnce(&S) -> Result<T>) -> Result<T> {
        match self.take_fault(kind) {
            None => op(&self.inner),
            Some(Fault::FailBefore) => Err(self.injected(Fault::FailBefore)),
            Some(Fault::FailAfter) => {
                let _ = op(&self.inner);
                Err(self.injected(Fault::FailAfter))
            }
            Some(Fault::Stall) => {
                std::thread::sleep(self.timeout);
                Err(self.injected(Fault::Stall))
            }
        }
    }
}

impl<S: Store> Store for FaultStore<S> {
    fn info(&self) -> StoreInfo {
        let mut info = self.inner.info();
        info.location = format!("{} (with fault injection)", info.location);
        info
    }

    fn get(&self, key: &SecretKey) -> Result<Option<SecretValue>> {
        self.call(CallKind::Read, |s| s.get(key))
    }

    fn set(&self, key: &SecretKey, value: &SecretValue) -> Result<()> {
        self.call(CallKind::Write, |s| s.set(key, value))
    }

    fn delete(&self, key: &SecretKey) -> Result<bool> {
        self.call(CallKind::Write, |s| s.delete(key))
    }

    fn keys(&self) -> Result<Vec<SecretKey>> {
        self.call(CallKind::Read, |s| s.keys())
    }

    fn write_unless_changed_after(
        &self,
        key: &SecretKey,
        value: Option<&SecretValue>,
        after: std::time::SystemTime,
    ) -> Result<bool> {
        self.call(CallKind::Write, |s| {
            s.write_unless_changed_after(key, value, after)
        })
    }

    fn set_many_unless_changed_after(
        &self,
        entries: &[(SecretKey, SecretValue)],
        after: std::time::SystemTime,
    ) -> Result<Vec<bool>> {
        self.call(CallKind::Write, |s| {
            s.set_many_unless_changed_after(entries, after)
        })
    }

    fn keeps_change_times(&self) -> bool {
        self.inner.keeps_change_times()
    }

    fn deleted_at(&self, key: &SecretKey) -> Result<Option<std::time::SystemTime>> {
        self.call(CallKind::Read, |s| s.deleted_at(key))
    }

    /// Never, whatever it wraps: an armed `Stall` sleeps for the timeout.
    fn is_nonblocking(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn k() -> SecretKey {
        SecretKey::new("k").unwrap()
    }

    #[test]
    fn fail_before_does_not_apply_and_fail_after_does() {
        let s = FaultStore::new(MemoryStore::new(), Duration::from_millis(1));
        s.arm(0, Fault::FailBefore);
        assert!(s.set(&k(), &SecretValue::from_slice(b"1")).is_err());
        assert_eq!(s.get(&k()).unwrap(), None);
        s.arm(0, Fault::FailAfter);
        assert!(s.set(&k(), &SecretValue::from_slice(b"2")).is_err());
        assert_eq!(s.get(&k()).unwrap().unwrap().expose_secret(), b"2");
        assert_eq!(s.fired(), 2);
    }

    #[test]
    fn stall_waits_for_the_timeout_and_nth_counts_calls() {
        let s = FaultStore::new(MemoryStore::new(), Duration::from_millis(30));
        s.arm(1, Fault::Stall);
        assert!(s.get(&k()).is_ok());
        let start = std::time::Instant::now();
        let err = s.get(&k()).unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(30));
        assert!(matches!(
            err,
            Error::Unavailable {
                reason: UnavailableReason::TimedOut,
                ..
            }
        ));
        assert!(s.get(&k()).is_ok());
    }

    #[test]
    fn down_fails_everything_until_up() {
        let s = FaultStore::new(MemoryStore::new(), Duration::from_millis(1));
        s.set_down(true);
        assert!(s.keys().is_err());
        s.set_down(false);
        assert!(s.keys().is_ok());
    }
}
