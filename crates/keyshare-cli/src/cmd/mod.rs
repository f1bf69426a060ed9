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

/// A key as text output shows it: as it is, or quoted and escaped (as Rust's `Debug` does)
/// when it would not read as itself: when it holds a control character, so that a key with a
/// newline does not print as two keys and one with an escape sequence cannot drive the
/// terminal (found by QA); an invisible or direction-changing character (bidirectional
/// overrides and marks, zero-width space, word joiner, byte-order mark, tag characters), by
/// which one name displays as another (found by QA); a line or paragraph separator; edge
/// whitespace (a key of spaces printed as a blank line); or a combining mark first. Letters
/// with marks, the joiners of Indic scripts and emoji sequences print as they are. `--json`
/// gives every key exactly.
pub fn shown(key: &SecretKey) -> std::borrow::Cow<'_, str> {
    let key = key.as_str();
    let first_is_a_mark = key
        .chars()
        .next()
        .is_some_and(|c| !matches!(c, '"' | '\'' | '\\') && c.escape_debug().len() > 1);
    if key.chars().any(hides_or_turns_text)
        || key.starts_with(char::is_whitespace)
        || key.ends_with(char::is_whitespace)
        || first_is_a_mark
    {
        format!("{key:?}").into()
    } else {
        key.into()
    }
}

/// Control characters, and those that change how the text around them displays while showing
/// nothing themselves (Unicode's bidirectional controls, zero-width and invisible characters,
/// separators), but not the zero-width joiners, which scripts and emoji need.
fn hides_or_turns_text(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{180E}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
                | '\u{E0000}'..='\u{E007F}'
        )
}

/// After an acknowledged write: when the shared store did not take it (the app's own store
/// did, and a repair is queued), says so on stderr, and returns whether it did. The command
/// succeeded, but the user should know that the other apps do not see the change yet (found
/// by QA: it said nothing).
pub fn say_if_queued(storage: &keyshare::SecretStorage, key: &SecretKey, ctx: &Context) -> bool {
    let queued = storage.status().pending_repairs.contains(key);
    if queued {
        eprintln!(
            "keyshare: note: the shared store did not take this change to {}; app {}'s own \
             store has it, so this app sees it, but the other apps do not yet. It is queued: \
             the app's next command retries it, and `{}` does now",
            shown(key),
            ctx.app,
            command_for(ctx, "repair")
        );
    }
    queued
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
        "use a separate vault instead, which holds none of these secrets: `{keyshare_in} stop` \
         first if its broker runs, then add `--store vault`"
    )
}

/// How this command's advised commands start ([`keyshare_in`]), and whether a vault is an
/// option at all (not under `require_os_keyring`), once its context is made.
static ADVISED_AS: std::sync::OnceLock<(String, bool)> = std::sync::OnceLock::new();

/// Records how this command's advised commands start (see [`advised`]).
pub fn advise_as(ctx: &Context) {
    let _ = ADVISED_AS.set((keyshare_in(ctx), !ctx.config.require_os_keyring));
}

/// [`advice_for`] this command, as [`advise_as`] recorded it (plain `keyshare` before).
pub fn advised(text: &str) -> String {
    match ADVISED_AS.get() {
        Some((keyshare_in, vault_allowed)) => advice_for(keyshare_in, *vault_allowed, text),
        None => advice_for("keyshare", true, text),
    }
}

/// `text` (an error or a report, as shown) with the commands it advises made to work for this
/// invocation, started `keyshare_in` ([`keyshare_in`]): the library and the broker, which
/// know no flavour, say `` `keyshare stop` ``, `` `keyshare repair` ``..., which followed as
/// written act on the stable flavour (found by QA: a broker's "`keyshare stop`" stopped the
/// stable one from another flavour); and a store's "use the vault: --store vault" (see
/// [`use_a_vault_instead`]), or, where `require_os_keyring` refuses any vault
/// (`vault_allowed` false), no such advice at all (found by QA: followed, it failed, exit 6).
pub fn advice_for(keyshare_in: &str, vault_allowed: bool, text: &str) -> String {
    const USE_THE_VAULT: &str = "use the vault: --store vault";
    let text = if vault_allowed {
        text.replace(USE_THE_VAULT, &use_a_vault_instead(keyshare_in))
    } else {
        [", or ", "; or ", " or ", "; ", ""]
            .into_iter()
            .fold(text.to_owned(), |text, joint| {
                text.replace(&format!("{joint}{USE_THE_VAULT}"), "")
            })
    };
    if keyshare_in == "keyshare" {
        return text;
    }
    // Every command advised to run, quoted; not a command named in passing ("`keyshare set`
    // never takes the value on the command line"), nor one that names its flavour already.
    const ADVISED: [&str; 8] = [
        "stop",
        "repair",
        "doctor",
        "serve",
        "migrate",
        "import",
        "legacy",
        "openbao-login",
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find("`keyshare ") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let after = &from["`keyshare ".len()..];
        let subcommand = after.split([' ', '`']).next().unwrap_or_default();
        if ADVISED.contains(&subcommand) {
            out.push('`');
            out.push_str(keyshare_in);
            out.push(' ');
        } else {
            out.push_str("`keyshare ");
        }
        rest = after;
    }
    out.push_str(rest);
    out
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
        let advised = advice_for(keyshare_in, true, locked);
        assert!(
            advised.ends_with(
                "(log in), or use a separate vault instead, which holds none of these secrets: \
                 `keyshare --flavor insiders stop` first if its broker runs, then add `--store \
                 vault`"
            ),
            "{advised}"
        );
        // The macOS and Windows stores say it without "or".
        assert!(
            advice_for(keyshare_in, true, "denied); use the vault: --store vault")
                .starts_with("denied); use a separate vault instead"),
        );
        // Every advised command, not only `stop`; not one named in passing, nor one that
        // names its flavour already.
        assert_eq!(
            advice_for(
                keyshare_in,
                true,
                "run `keyshare repair` or `keyshare doctor`; `keyshare set` takes no value; \
                 `keyshare --flavor stable stop`"
            ),
            "run `keyshare --flavor insiders repair` or `keyshare --flavor insiders doctor`; \
             `keyshare set` takes no value; `keyshare --flavor stable stop`"
        );
        // Without a context (the command did not get that far), nothing to add.
        assert_eq!(
            advice_for("keyshare", true, "run `keyshare repair`"),
            "run `keyshare repair`"
        );
        let mismatch = "serves vault:/a, not vault:/b; stop that broker (`keyshare stop`; it was";
        assert_eq!(
            advice_for(keyshare_in, true, mismatch),
            "serves vault:/a, not vault:/b; stop that broker (`keyshare --flavor insiders stop`; \
             it was"
        );
        assert_eq!(
            advice_for(keyshare_in, true, "nothing to advise"),
            "nothing to advise"
        );
        // Under require_os_keyring no vault would do: the advice goes, whatever joins it.
        for (text, left) in [
            (
                "unlock it (log in), or use the vault: --store vault",
                "unlock it (log in)",
            ),
            ("denied; use the vault: --store vault.", "denied."),
        ] {
            assert_eq!(advice_for(keyshare_in, false, text), left);
        }
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
            "'quoted'",
            "\\\\server\\share",
            "naïve",
            "cafe\u{301}",
            "हिन्दी.token",
            "❤\u{fe0f}",
            "👩\u{200d}💻",
            "git:https://example.com/a%20b",
        ] {
            assert_eq!(shown(plain), plain);
        }
        assert_eq!(shown("new\nline"), "\"new\\nline\"");
        assert_eq!(shown(" "), "\" \"");
        assert_eq!(shown("trailing "), "\"trailing \"");
        assert_eq!(shown("\u{202e}txt.exe"), "\"\\u{202e}txt.exe\"");
        assert_eq!(shown("zero\u{200b}width"), "\"zero\\u{200b}width\"");
        assert_eq!(shown("\u{301}x"), "\"\\u{301}x\"");
        assert_eq!(shown("\u{2066}x"), "\"\\u{2066}x\"");
    }
}
