//! Exit codes and error messages. The codes are part of the CLI's interface (documented in the
//! README) and never change meaning.

use keyshare::{Error, UnavailableReason};

use crate::config::ConfigError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    NotFound = 1,
    Usage = 2,
    Unavailable = 3,
    Corrupt = 4,
    Config = 5,
    Protection = 6,
    Failure = 7,
    Denied = 8,
}

/// "The thing asked for does not exist": exit 1 with this message.
#[derive(Debug)]
pub struct NotFound(pub String);

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotFound {}

/// The context of every failed write to standard output.
pub const WRITING_STDOUT: &str = "cannot write to standard output";

/// Whether the command failed only because whoever read its output stopped reading. For
/// `watch | head -1` that is how it ends, not an error (found by QA: it printed "Broken
/// pipe" and exited 7). Other commands still report it (a value not delivered is a failure,
/// `a_closed_standard_output_is_an_error_not_a_signal`), as they do a broken pipe anywhere
/// else (the broker's socket).
pub fn reader_went_away(err: &anyhow::Error) -> bool {
    err.to_string() == WRITING_STDOUT
        && err
            .root_cause()
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Picks the exit code for an error by the most specific cause in its chain.
pub fn classify(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if cause.downcast_ref::<NotFound>().is_some() {
            return ExitCode::NotFound;
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return ExitCode::Config;
        }
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                // A vault file or directory others can read, a config file others can write:
                // a protection problem, not usage.
                Error::Invalid {
                    what: "vault permissions" | "config permissions",
                    ..
                } => ExitCode::Protection,
                // The file at the vault's (or its key file's, or the broker's lock file's)
                // path is not one: nothing the arguments can fix (found by QA: `keyshare stop`
                // on a FIFO lock file exited 2, "usage").
                Error::Invalid {
                    what:
                        "vault" | "key file" | "auto store record" | "broker store" | "lock file"
                        | "broker socket" | "broker directory",
                    ..
                } => ExitCode::Failure,
                Error::Invalid { .. } | Error::TooLarge { .. } => ExitCode::Usage,
                Error::Unavailable {
                    reason: UnavailableReason::Denied,
                    ..
                } => ExitCode::Denied,
                Error::Unavailable { .. } => ExitCode::Unavailable,
                Error::Corrupt { .. } => ExitCode::Corrupt,
                Error::ProtectionUnavailable(_) => ExitCode::Protection,
                Error::Io { .. } => ExitCode::Failure,
                _ => ExitCode::Failure,
            };
        }
    }
    ExitCode::Failure
}

/// The error chain on one line, causes joined with ": ", without repeating a cause that the
/// one before already contains (`{err:#}` repeats them: an I/O error's text came twice, found
/// by QA in doctor's report).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    // The commands it advises, made to work for this command (see `cmd::advised`).
    crate::cmd::advised(&out)
}

/// Renders the error chain on one line per cause, without repeating a cause that the previous
/// message already contains.
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for (i, cause) in err.chain().enumerate() {
        let text = cause.to_string();
        if !last.is_empty() && last.contains(&text) {
            continue;
        }
        if i == 0 {
            out.push_str(&format!("keyshare: error: {text}"));
        } else {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        last = text;
    }
    crate::cmd::advised(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An I/O error's text is in its context's message already: `{:#}` printed it twice (found
    /// by QA in doctor's report of a missing OpenBao CA file).
    #[test]
    fn one_line_says_each_cause_once() {
        let err = anyhow::Error::new(Error::io(
            "reading the OpenBao CA file /x/ca.pem",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ))
        .context("cannot open the stores");
        let line = one_line(&err);
        assert_eq!(line.matches("entity not found").count(), 1, "{line}");
        assert!(
            line.starts_with("cannot open the stores: reading the OpenBao CA file /x/ca.pem: "),
            "{line}"
        );
    }
}
