//! Bounds a blocking OS keychain call with a timeout: the call runs on a helper thread and the
//! caller stops waiting when the time is up. A call stuck on a dialog keeps its thread until the
//! dialog goes away; the caller has its answer (`TimedOut`) either way.

use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result, UnavailableReason};

pub(crate) fn call_with_timeout<T: Send + 'static>(
    store: &str,
    timeout: Duration,
    doing: &str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let (reply, answer) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("keyshare-os-call".to_owned())
        .spawn(move || {
            // The caller may have given up already; nobody to tell then.
            let _ = reply.send(call());
        })
        .map_err(|e| Error::io(format!("{store}: starting a thread for {doing}"), e))?;
    answer.recv_timeout(timeout).map_err(|e| match e {
        mpsc::RecvTimeoutError::Timeout => Error::unavailable(
            store,
            UnavailableReason::TimedOut,
            format!(
                "no answer within {} ms while {doing}; the system may be waiting for a dialog \
                 nobody answers",
                timeout.as_millis()
            ),
        ),
        mpsc::RecvTimeoutError::Disconnected => Error::unavailable(
            store,
            UnavailableReason::Backend,
            format!("{doing}: the OS call panicked"),
        ),
    })
}
