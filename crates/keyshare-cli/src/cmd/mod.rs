//! One module per command. Each takes the parsed arguments and the context, and returns an
//! error for `main` to render; none of them exits or prints errors itself.

pub mod delete;
pub mod docker_credential;
pub mod doctor;
pub mod get;
pub mod git_credential;
pub mod import;
pub mod legacy;
pub mod list;
pub mod migrate;
pub mod repair;
pub mod serve;
pub mod set;
pub mod stop;
pub mod watch;

use keyshare::SecretKey;

/// A key as text output shows it: as it is, or quoted and escaped when it holds a control
/// character, so that a key with a newline does not print as two keys and one with an escape
/// sequence cannot drive the terminal (found by QA). `--json` gives every key exactly.
pub fn shown(key: &SecretKey) -> std::borrow::Cow<'_, str> {
    let key = key.as_str();
    if key.chars().any(char::is_control) {
        format!("{key:?}").into()
    } else {
        key.into()
    }
}

/// After an acknowledged write: when the shared store did not take it (the app's own store
/// did, and a repair is queued), says so on stderr. The command succeeded, but the user should
/// know that the other apps do not see the change yet (found by QA: it said nothing).
pub fn say_if_queued(storage: &keyshare::SecretStorage, key: &SecretKey, app: &keyshare::AppId) {
    if storage.status().pending_repairs.contains(key) {
        eprintln!(
            "keyshare: note: the shared store did not take this change to {}; app {app}'s own \
             store has it, so this app sees it, but the other apps do not yet. It is queued: \
             `keyshare --app {app} repair` (or the next write of the key) brings the shared store \
             up to date",
            shown(key)
        );
    }
}

/// Validates a key given on the command line.
pub fn parse_key(key: &str) -> anyhow::Result<SecretKey> {
    Ok(SecretKey::new(key)?)
}

/// The command line to parse when the binary runs under a helper's program name (a link or a
/// copy): `docker-credential-keyshare VERB` is `keyshare docker-credential VERB`, and
/// `git-credential-keyshare OP` (for `credential.helper = keyshare`) is
/// `keyshare git-credential OP`. `None` under any other name.
pub fn multicall_args() -> Option<Vec<std::ffi::OsString>> {
    let mut args = std::env::args_os().peekable();
    let argv0 = args.next()?;
    let subcommand = match std::path::Path::new(&argv0).file_stem()?.to_str()? {
        docker_credential::PROGRAM => "docker-credential",
        "git-credential-keyshare" => {
            // `credential.helper = "keyshare git-credential"` makes git run
            // `git-credential-keyshare git-credential get`: the helper's own name comes again.
            if args.peek().is_some_and(|a| a == "git-credential") {
                args.next();
            }
            "git-credential"
        }
        _ => return None,
    };
    Some(
        ["keyshare", subcommand]
            .into_iter()
            .map(std::ffi::OsString::from)
            .chain(args)
            .collect(),
    )
}
