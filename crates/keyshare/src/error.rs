//! The library's one error type.
//!
//! Errors never carry secret values: they are built from key names, store names, limits and OS
//! status text only. "Not found" is not an error: [`crate::Store::get`] returns `Ok(None)`, so an
//! empty secret, a missing secret and an unreachable store can never be confused.

use std::fmt;

/// Why a store could not answer. Every variant means "try again later or elsewhere": the data
/// may well exist, so callers must never treat it as "not found".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// The collection or keychain is locked and nobody is there to unlock it.
    Locked,
    /// The OS or the broker refused access.
    Denied,
    /// The call did not answer within the store's timeout.
    TimedOut,
    /// The backing service is not running or cannot be reached.
    NotRunning,
    /// The backing service answered with an error of its own.
    Backend,
    /// Another program owns the data and would overwrite changes made now (e.g. VS Code
    /// running over its state database): retry after it exits.
    InUse,
}

impl fmt::Display for UnavailableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnavailableReason::Locked => "locked",
            UnavailableReason::Denied => "access denied",
            UnavailableReason::TimedOut => "timed out",
            UnavailableReason::NotRunning => "not reachable",
            UnavailableReason::Backend => "backend error",
            UnavailableReason::InUse => "in use by another program",
        })
    }
}

/// Every error the library returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key, app id, flavour or configuration value was not acceptable.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was rejected ("key", "app id", ...).
        what: &'static str,
        /// Why, in words a user can act on. Never contains a secret value.
        reason: String,
    },

    /// A value is larger than the configured limit.
    #[error("value is {actual} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The configured limit in bytes.
        limit: usize,
        /// The size that was offered.
        actual: usize,
    },

    /// The store cannot answer now: locked, denied, timed out, not running.
    #[error("{}", unavailable_text(.store, *.reason, .detail))]
    Unavailable {
        /// Which store ("secret service", "vault", ...).
        store: String,
        /// The kind of unavailability.
        reason: UnavailableReason,
        /// What happened and, where we know it, what to do about it.
        detail: String,
    },

    /// Stored data exists but cannot be decoded or authenticated. It is left untouched.
    #[error("{store}: stored data for {} is corrupt: {detail}", key.as_deref().map(|k| format!("key {k:?}")).unwrap_or_else(|| "the store".to_owned()))]
    Corrupt {
        /// Which store.
        store: String,
        /// The key whose data is corrupt, when the corruption is local to one key.
        key: Option<String>,
        /// What check failed.
        detail: String,
    },

    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing, including the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The configuration demands a protection level that is not available here.
    #[error("{0}")]
    ProtectionUnavailable(String),
}

/// A refusal is worded as one, not as an outage ("is unavailable (access denied)" read like a
/// store that was down; found by QA).
fn unavailable_text(store: &str, reason: UnavailableReason, detail: &str) -> String {
    match reason {
        UnavailableReason::Denied => format!("{store} refused access: {detail}"),
        _ => format!("{store} is unavailable ({reason}): {detail}"),
    }
}

impl Error {
    /// Whether this is a refusal: the store will not do this as asked, now or later (an
    /// invalid request, a value over its limit, access denied by the OS, a keychain prompt or
    /// the broker's policy, a protection it cannot give), as against an outage, which may pass.
    /// [`crate::SecretStorage`] fails a write the shared store refuses instead of acknowledging
    /// it from the app's own copy and queueing a repair that could never succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::Invalid { .. }
                | Error::TooLarge { .. }
                | Error::ProtectionUnavailable(_)
                | Error::Unavailable {
                    reason: UnavailableReason::Denied,
                    ..
                }
        )
    }

    /// The same error with `note` added to its words, keeping its kind (and so the exit code or
    /// wire code a caller derives from it): for what a layer above the store knows and the
    /// store could not, such as that the shared half of a dual write had already succeeded.
    pub(crate) fn noting(mut self, note: &str) -> Self {
        match &mut self {
            Error::Invalid { reason: text, .. }
            | Error::Unavailable { detail: text, .. }
            | Error::Corrupt { detail: text, .. }
            | Error::Io { context: text, .. }
            | Error::ProtectionUnavailable(text) => {
                text.push_str(" (");
                text.push_str(note);
                text.push(')');
            }
            // The limit is the same for both halves: the shared one would have refused first.
            Error::TooLarge { .. } => {}
        }
        self
    }

    /// Shorthand for an [`Error::Invalid`].
    pub fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// Shorthand for an [`Error::Unavailable`].
    pub fn unavailable(
        store: impl Into<String>,
        reason: UnavailableReason,
        detail: impl Into<String>,
    ) -> Self {
        Error::Unavailable {
            store: store.into(),
            reason,
            detail: detail.into(),
        }
    }

    /// Shorthand for an [`Error::Io`].
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True for errors that say "cannot answer now" rather than "the answer is bad".
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_as_one_and_an_outage_as_one() {
        let denied = Error::unavailable(
            "broker",
            UnavailableReason::Denied,
            "app \"agents\" may not use key \"x\"",
        );
        assert_eq!(
            denied.to_string(),
            "broker refused access: app \"agents\" may not use key \"x\""
        );
        let down = Error::unavailable("vault", UnavailableReason::TimedOut, "no answer");
        assert_eq!(
            down.to_string(),
            "vault is unavailable (timed out): no answer"
        );
    }
}
