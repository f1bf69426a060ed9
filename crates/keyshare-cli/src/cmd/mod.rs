//! One module per command. Each takes the parsed arguments and the context, and returns an
//! error for `main` to render; none of them exits or prints errors itself.

/// `println!` into a report (a `String`) that the command then writes with [`print_out`]:
/// `println!` itself panics when whoever reads standard output went away (found by QA:
/// `keyshare doctor | head -1` printed a panic and exited 101).
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        $out.push_str(&format!($($arg)*));
        $out.push('\n');
    }};
}
pub(crate) use say;

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

use crate::stores::Context;

/// Writes a command's report to standard output: a reader that went away is an error (exit
/// 7, as for every command whose output is not delivered), not a panic.
pub fn print_out(text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context(crate::exit::WRITING_STDOUT)
}

/// A key as text output shows it: as it is, or quoted and escaped when it holds a control
/// character, so that a key with a newline does not print as two keys and one with an escape
/// sequence cannot drive the terminal (found by QA), or another character Rust's `Debug`
/// escapes as unprintable (bidirectional overrides, which can make a name display as another,
/// zero-width and format characters, line separators), or begins or ends with whitespace (a
/// key of spaces printed as a blank line; found by QA). `--json` gives every key exactly.
pub fn shown(key: &SecretKey) -> std::borrow::Cow<'_, str> {
    let key = key.as_str();
    let quoted = format!("{key:?}");
    // Escaped beyond its quotes and backslashes, which need no quotes of their own.
    let escaped = quoted[1..quoted.len() - 1] != key.replace('\\', "\\\\").replace('"', "\\\"");
    if escaped || key.starts_with(char::is_whitespace) || key.ends_with(char::is_whitespace) {
        quoted.into()
    } else {
        key.into()
    }
}

/// After an acknowledged write: when the shared store did not take it (the app's own store
/// did, and a repair is queued), says so on stderr. The command succeeded, but the user should
/// know that the other apps do not see the change yet (found by QA: it said nothing).
pub fn say_if_queued(storage: &keyshare::SecretStorage, key: &SecretKey, ctx: &Context) {
    if storage.status().pending_repairs.contains(key) {
        eprintln!(
            "keyshare: note: the shared store did not take this change to {}; app {}'s own \
             store has it, so this app sees it, but the other apps do not yet. It is queued: \
             the app's next command retries it, and `{}` does now",
            shown(key),
            ctx.app,
            command_for(ctx, "repair")
        );
    }
}

/// The command line that runs `rest` as this command's app in its flavour, on its store, for
/// advice: the flavour is always named, since a bare `keyshare` may mean another one in the
/// shell that runs it (KEYSHARE_FLAVOR, `default_flavor`), and advice followed in another
/// flavour acts on that flavour's stores (found by QA: doctor's advice for an insiders app
/// said `keyshare --app code migrate`); so are the `--config`, `--store` and `--direct` this
/// command was given ([`crate::stores::StoreOptions`]).
pub fn command_for(ctx: &Context, rest: &str) -> String {
    let options = &ctx.store_options;
    let mut line = keyshare_in(ctx);
    if let Some(store) = options.store {
        line.push_str(&format!(" --store {}", store.name()));
    }
    if options.direct {
        line.push_str(" --direct");
    }
    format!("{line} --app {} {rest}", ctx.app)
}

/// `keyshare --flavor F`, with the `--config` this command was given: how every advised
/// command line starts, whichever store it names.
pub fn keyshare_in(ctx: &Context) -> String {
    let mut line = format!("keyshare --flavor {}", ctx.flavour.name());
    if let Some(config) = &ctx.store_options.config {
        line.push_str(" --config ");
        line.push_str(&keyshare::store::vault::shell_quote(config));
    }
    line
}

/// How to switch to a vault of the flavour's own while the store it uses is out, for an
/// advice: a running broker serves the store it was started with and refuses a command that
/// asks for another (exit 7), so it is stopped first (found by QA: "use the vault: --store
/// vault", followed, failed so).
pub fn use_a_vault_instead(keyshare_in: &str) -> String {
    format!(
        "or use a separate vault instead, which holds none of these secrets: `{keyshare_in} \
         stop` first if its broker runs, then add `--store vault`"
    )
}

/// `text` (an error, as shown) with the commands it advises made to work for this invocation,
/// started `keyshare_in` ([`keyshare_in`]): a store's "or use the vault: --store vault" (see
/// [`use_a_vault_instead`]), and a broker's `keyshare stop`, which the broker says without
/// knowing its flavour (found by QA: followed as written, it stopped the stable flavour's).
pub fn advice_for(keyshare_in: &str, text: &str) -> String {
    let vault = use_a_vault_instead(keyshare_in);
    text.replace(", or use the vault: --store vault", &format!(", {vault}"))
        .replace("; or use the vault: --store vault", &format!("; {vault}"))
        .replace("(`keyshare stop`;", &format!("(`{keyshare_in} stop`;"))
}

/// Validates a key given on the command line.
pub fn parse_key(key: &str) -> anyhow::Result<SecretKey> {
    Ok(SecretKey::new(key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advised_commands_name_this_flavour_and_stop_its_broker_before_the_vault() {
        let keyshare_in = "keyshare --flavor insiders";
        let locked = "Secret Service: locked: unlock your login keyring (log in), or use the \
                      vault: --store vault";
        let advised = advice_for(keyshare_in, locked);
        assert!(
            advised.ends_with(
                "(log in), or use a separate vault instead, which holds none of these secrets: \
                 `keyshare --flavor insiders stop` first if its broker runs, then add `--store \
                 vault`"
            ),
            "{advised}"
        );
        let mismatch = "serves vault:/a, not vault:/b; stop that broker (`keyshare stop`; it was";
        assert_eq!(
            advice_for(keyshare_in, mismatch),
            "serves vault:/a, not vault:/b; stop that broker (`keyshare --flavor insiders stop`; \
             it was"
        );
        assert_eq!(
            advice_for(keyshare_in, "nothing to advise"),
            "nothing to advise"
        );
    }

    #[test]
    fn keys_that_would_not_read_as_themselves_are_quoted() {
        let shown = |key: &str| shown(&SecretKey::new(key).unwrap()).into_owned();
        for plain in [
            "github.auth",
            "a b",
            "domain\\user",
            "say \"hi\"",
            "it's",
            "naïve",
        ] {
            assert_eq!(shown(plain), plain);
        }
        assert_eq!(shown("new\nline"), "\"new\\nline\"");
        assert_eq!(shown(" "), "\" \"");
        assert_eq!(shown("trailing "), "\"trailing \"");
        assert_eq!(shown("\u{202e}txt.exe"), "\"\\u{202e}txt.exe\"");
        assert_eq!(shown("zero\u{200b}width"), "\"zero\\u{200b}width\"");
        // A combining mark is escaped: "café" spelled with one (NFD) is another key than
        // "café" with `é` (NFC), and must not print as the same.
        assert_eq!(shown("café"), "café");
        assert_eq!(shown("cafe\u{301}"), "\"cafe\\u{301}\"");
    }
}
