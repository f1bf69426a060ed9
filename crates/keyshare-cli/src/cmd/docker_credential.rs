//! `docker-credential-keyshare store|get|erase|list|version`: docker's credential helper.
//!
//! The same binary as `keyshare`: installed (or linked) under the name
//! `docker-credential-keyshare`, it runs `keyshare docker-credential VERB`. docker reads a
//! helper's errors from its standard output, one line, so errors go there only (the three lines
//! docker recognises exactly as `docker_credential_helpers` defines them, else the whole
//! message): docker passes a helper's stderr to the user's terminal, and the reference helpers
//! write nothing there. The protocol and the key scheme live in
//! `keyshare_credential_helpers::docker`.

use std::io::{Read, Write};

use anyhow::Context as _;
use keyshare_credential_helpers::docker::{self, Credential};

use crate::exit::NotFound;
use crate::stores::{self, Context};

/// The program name docker runs for `"credsStore": "keyshare"`.
pub const PROGRAM: &str = "docker-credential-keyshare";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `store`, `get`, `erase`, `list` or `version`, as docker passes it.
    #[arg(num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
    pub verb: Vec<String>,
}

fn read_stdin() -> anyhow::Result<Vec<u8>> {
    let mut input = Vec::new();
    std::io::stdin()
        .lock()
        .take(docker::MAX_INPUT_LEN as u64 + 1)
        .read_to_end(&mut input)
        .context("cannot read standard input")?;
    Ok(input)
}

fn not_found() -> anyhow::Error {
    NotFound(docker::NOT_FOUND.to_owned()).into()
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    let verb = match args.verb.as_slice() {
        [verb] => verb.as_str(),
        _ => {
            return Err(keyshare::Error::invalid(
                docker::DOCKER_WORDING,
                format!("Usage: {PROGRAM} <store|get|erase|list|version>"),
            )
            .into())
        }
    };
    let mut out = std::io::stdout().lock();
    match verb {
        "version" => {
            writeln!(out, "{PROGRAM} (keyshare) {}", env!("CARGO_PKG_VERSION"))?;
        }
        "store" => {
            // Zeroized: the payload holds the secret.
            let input = zeroize::Zeroizing::new(read_stdin()?);
            let credential = Credential::parse_store(&input)?;
            docker::store(&stores::open(ctx)?.storage, &credential)?;
        }
        "get" => {
            let url = docker::parse_server_url(&read_stdin()?)?;
            let credential =
                docker::get(&stores::open(ctx)?.storage, &url)?.ok_or_else(not_found)?;
            out.write_all(&credential.answer()?)?;
        }
        "erase" => {
            let url = docker::parse_server_url(&read_stdin()?)?;
            // Nothing stored for that URL is success, as with the reference helpers on Linux
            // (secretservice, pass): docker's `logout` removes its own entry for the registry
            // from config.json only after the helper's erase succeeds, and tries several
            // spellings of the address, so a not-found error left a login that could never be
            // logged out of (found in review).
            docker::erase(&stores::open(ctx)?.storage, &url)?;
        }
        "list" => {
            let listed = docker::list_reporting(&stores::open(ctx)?.storage, &mut |key, err| {
                eprintln!(
                    "keyshare: warning: skipped {:?}, left untouched: {err}",
                    key.as_str()
                );
            })?;
            serde_json::to_writer(&mut out, &listed)?;
            writeln!(out)?;
        }
        other => {
            return Err(keyshare::Error::invalid(
                docker::DOCKER_WORDING,
                format!("Unknown credential action `{other}`"),
            )
            .into())
        }
    }
    out.flush().context(crate::exit::WRITING_STDOUT)?;
    Ok(())
}

/// Writes the one line docker shows for an error to stdout, the only place a docker helper's
/// errors go: docker's wording when docker defines one (it matches some exactly), else the
/// whole error with its causes (`keyshare: ...`), input problems included (found by QA: a
/// malformed payload's message came without the `keyshare: ` that tells whose it is).
pub fn report_on_stdout(err: &anyhow::Error) {
    let line = err
        .chain()
        .find_map(|cause| {
            if cause.downcast_ref::<NotFound>().is_some() {
                return Some(docker::NOT_FOUND.to_owned());
            }
            match cause.downcast_ref::<keyshare::Error>() {
                Some(keyshare::Error::Invalid { what, reason })
                    if *what == docker::DOCKER_WORDING =>
                {
                    Some(reason.clone())
                }
                _ => None,
            }
        })
        .unwrap_or_else(|| format!("keyshare: {}", crate::exit::one_line(err)));
    let _ = writeln!(std::io::stdout(), "{line}");
}
