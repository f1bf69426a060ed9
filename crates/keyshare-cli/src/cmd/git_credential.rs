//! `keyshare git-credential get|store|erase`: git's credential helper.
//!
//! Configure with `git config --global credential.helper '!keyshare git-credential'` (the `!`
//! makes git run the command as written; without it git would run `git credential-keyshare`).
//! The protocol and the key scheme live in `keyshare_credential_helpers::git`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use keyshare_credential_helpers::git::{self, Request, StoreOutcome};

use crate::stores::{self, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `get`, `store` or `erase`, as git passes it. Other operations are ignored, as git asks
    /// of helpers.
    pub operation: String,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    if !matches!(args.operation.as_str(), "get" | "store" | "erase") {
        // git-credential(7): "If a helper receives any other operation, it should silently
        // ignore the request", so that newer versions of git can add operations. The input is
        // still read (and dropped) so that git never writes into a closed pipe.
        let _ = std::io::copy(
            &mut std::io::Read::take(std::io::stdin().lock(), git::MAX_INPUT_LEN as u64),
            &mut std::io::sink(),
        );
        return Ok(());
    }
    // Read and check the whole request before opening any store: bad input changes nothing.
    let request = Request::parse(std::io::stdin().lock())?;
    if args.operation == "store" && !request.has_credential() {
        // Ignored without a word, as git's own helpers do (see `Request::has_credential`), and
        // before opening the store, whose opening may itself print (a vault it created) or fail.
        tracing::debug!("git store without a username or a password: nothing to store");
        return Ok(());
    }
    let opened = stores::open(ctx)?;
    let storage = &opened.storage;
    let now = now();
    match args.operation.as_str() {
        "get" => {
            // Nothing found: no output and success, which tells git to ask the next helper or
            // the user.
            let credential = git::get_reporting(storage, &request, now, &mut |key, err| {
                eprintln!(
                    "keyshare: warning: skipped {:?}, left untouched: {err}",
                    key.as_str()
                );
            })?;
            if let Some(credential) = credential {
                let mut out = std::io::stdout().lock();
                credential
                    .write_answer(&mut out, now)
                    .context("cannot write the credential to standard output")?;
            }
        }
        "store" => match git::store(storage, &request, now)? {
            StoreOutcome::Expired => {
                let _ = writeln!(
                    std::io::stderr(),
                    "keyshare: not storing an already expired credential"
                );
            }
            StoreOutcome::Stored | StoreOutcome::Incomplete => {}
        },
        _ => {
            git::erase(storage, &request).map_err(|err| with_way_out(err, ctx))?;
        }
    }
    Ok(())
}

/// An erase that meets a credential it cannot read leaves it (it may or may not be the one git
/// means), and git, which ignores the failure, offers no other way to remove it: the error says
/// how (found by QA: exit 4 and no word of what to do).
fn with_way_out(err: keyshare::Error, ctx: &Context) -> anyhow::Error {
    let advice = match &err {
        keyshare::Error::Corrupt { key: Some(key), .. } => Some(format!(
            "git asked to erase a credential that cannot be read, so it was left as it is; if \
             it is not needed, `{}` removes it",
            super::command_for(ctx, &format!("delete '{}'", key.replace('\'', r"'\''")))
        )),
        _ => None,
    };
    let err = anyhow::Error::from(err);
    match advice {
        Some(advice) => err.context(advice),
        None => err,
    }
}
