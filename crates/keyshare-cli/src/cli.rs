//! The command line: what clap parses, and how.
//!
//! `keyshare get` and the credential helpers are run by other programs for every lookup, so
//! their start-up time is the product's latency (crates/keyshare-cli/benches/process.rs).
//! Two things keep clap's share of it small: every subcommand's arguments are added to the
//! tree only when that subcommand is parsed ([`Lazy`]), and those lookups are first parsed by
//! a tree that holds only them ([`QuickCli`]), falling back to the whole tree for anything
//! else, including their help and every error, so what the user sees never differs.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::cmd;
use crate::config::StoreChoice;
use crate::openbao;

#[derive(Debug, Parser)]
#[command(
    name = "keyshare",
    version,
    about = "Share secrets between a family of applications",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(flatten)]
    pub globals: Globals,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every command takes, before or after its name.
#[derive(Debug, clap::Args)]
pub struct Globals {
    /// Product flavour (its secrets are invisible to other flavours) [default: the config
    /// file's `default_flavor`, else stable].
    #[arg(long, global = true, env = "KEYSHARE_FLAVOR", value_name = "F")]
    pub flavor: Option<String>,
    /// The app id this command acts as.
    #[arg(
        long,
        global = true,
        env = "KEYSHARE_APP",
        value_name = "A",
        default_value = "keyshare"
    )]
    pub app: String,
    /// Config file [default: $XDG_CONFIG_HOME/keyshare/config.toml].
    #[arg(long, global = true, env = "KEYSHARE_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Which shared store to use (overrides the config file).
    #[arg(long, global = true, value_enum, value_name = "STORE")]
    pub store: Option<StoreChoice>,
    /// Open the shared store in this process instead of going through the broker.
    #[arg(long, global = true)]
    pub direct: bool,
    /// Never start a broker: with none running, open the store in this process (config:
    /// `autostart = false`).
    #[arg(
        long,
        global = true,
        env = "KEYSHARE_NO_AUTOSTART",
        value_parser = no_autostart_switch
    )]
    pub no_autostart: bool,
}

/// `KEYSHARE_NO_AUTOSTART`'s value (and `--no-autostart`'s implied one): the usual ways of
/// saying yes and no, and an empty value as unset, as a shell's `KEYSHARE_NO_AUTOSTART=` means
/// (found by QA: it failed every command, the credential helpers' included). A bad value names
/// the variable, which is where it almost always comes from.
fn no_autostart_switch(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "n" | "off" => Ok(false),
        "1" | "true" | "yes" | "y" | "on" => Ok(true),
        _ => Err(
            "KEYSHARE_NO_AUTOSTART takes 1 or 0 (also true/false, yes/no, on/off; empty counts \
             as unset)"
                .to_owned(),
        ),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Store a secret; the value (at most 256 KiB) is read from standard input (or
    /// --from-file).
    Set(Lazy<cmd::set::Args>),
    /// Print a secret's value to standard output, exactly as stored.
    Get(Lazy<cmd::get::Args>),
    /// Delete a secret from every store of the app.
    Delete(Lazy<cmd::delete::Args>),
    /// List the keys (never the values).
    List,
    /// Copy the app's legacy secrets into the shared store now.
    Migrate,
    /// Retry pending repairs of the shared store now.
    Repair(Lazy<cmd::repair::Args>),
    /// Show which stores are in use, how they are protected, and any problem.
    Doctor,
    /// Check an OpenBao token (or AppRole secret id) read from standard input, and keep it in
    /// the local credentials vault for `store = "openbao"`.
    OpenbaoLogin(Lazy<openbao::LoginArgs>),
    /// Inspect an Electron app's own secrets (VS Code's state database).
    #[command(subcommand)]
    Legacy(LazySubcommands<cmd::legacy::Command>),
    /// Copy another program's secrets into this flavour's shared store.
    #[command(subcommand)]
    Import(LazySubcommands<cmd::import::Source>),
    /// Run the flavour's broker in the foreground (until SIGTERM or SIGINT).
    Serve(Lazy<cmd::serve::Args>),
    /// Stop the flavour's running broker (SIGTERM) and wait until it has exited.
    Stop(Lazy<cmd::stop::Args>),
    /// Print change events as they happen (never values).
    Watch(Lazy<cmd::watch::Args>),
    /// git's credential helper: `git config --global credential.helper '!keyshare git-credential'`.
    GitCredential(Lazy<cmd::git_credential::Args>),
    /// docker's credential helper, also run as `docker-credential-keyshare VERB`.
    DockerCredential(Lazy<cmd::docker_credential::Args>),
}

/// A subcommand's arguments, added to clap's command tree only when that subcommand is the one
/// being parsed (or when help lists them). Building every subcommand's arguments up front was
/// a sixth of the instructions `keyshare get` ran before doing any work
/// (crates/keyshare-cli/benches/process.rs measures the whole process).
#[derive(Debug)]
pub struct Lazy<T>(pub T);

impl<T: clap::FromArgMatches> clap::FromArgMatches for Lazy<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Lazy)
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl<T: clap::Args> clap::Args for Lazy<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args_for_update)
    }
}

/// [`Lazy`] for a command that has subcommands of its own (`legacy`, `import`).
#[derive(Debug)]
pub struct LazySubcommands<T>(pub T);

impl<T: clap::FromArgMatches> clap::FromArgMatches for LazySubcommands<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(LazySubcommands)
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }
}

impl<T: clap::Subcommand> clap::Subcommand for LazySubcommands<T> {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_subcommands)
    }
    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_subcommands_for_update)
    }
    fn has_subcommand(name: &str) -> bool {
        T::has_subcommand(name)
    }
}

/// The lookups that other programs run for every credential, parsed by a tree that has only
/// them (for `get`, with the global flags accepted before its name only): building and
/// walking it costs a fraction of the whole tree. A strict subset of [`Cli`] (same flags, same
/// subcommand arguments), so whatever it accepts the whole tree accepts the same way (the
/// `quick_parse_agrees_with_the_whole_tree` test checks this); the rest, such as a flag after
/// the subcommand's name, goes to the whole tree.
#[derive(Debug, Parser)]
#[command(name = "keyshare", disable_help_subcommand = true)]
struct QuickCli {
    #[command(flatten)]
    globals: Globals,
    #[command(subcommand)]
    command: QuickCommand,
}

#[derive(Debug, Subcommand)]
enum QuickCommand {
    Get(cmd::get::Args),
    GitCredential(cmd::git_credential::Args),
    DockerCredential(cmd::docker_credential::Args),
}

/// The subcommand names [`QuickCli`] knows.
const QUICK_COMMANDS: [&str; 3] = ["get", "git-credential", "docker-credential"];

impl From<QuickCli> for Cli {
    fn from(quick: QuickCli) -> Cli {
        Cli {
            globals: quick.globals,
            command: match quick.command {
                QuickCommand::Get(args) => Command::Get(Lazy(args)),
                QuickCommand::GitCredential(args) => Command::GitCredential(Lazy(args)),
                QuickCommand::DockerCredential(args) => Command::DockerCredential(Lazy(args)),
            },
        }
    }
}

/// The parsed command line; for help and version, and for a usage error, this prints and
/// exits (0, or 2 for an error).
pub fn parse_command_line() -> Cli {
    let args = multicall_args(std::env::args_os()).unwrap_or_else(|| std::env::args_os().collect());
    parse_from(args).unwrap_or_else(|e| exit_for(&e))
}

/// Prints what clap has to say and exits as clap would, but with a usage error starting
/// `keyshare: error:` like every other error (the README promises that prefix, and scripts
/// that run several programs tell them apart by it; found by QA: clap's own `error: ...`).
/// clap's text, its colours, help and version output are kept as they are.
fn exit_for(err: &clap::Error) -> ! {
    use std::io::Write as _;
    if err.use_stderr() && err.render().to_string().starts_with("error:") {
        eprint!("keyshare: ");
    }
    let _ = err.print();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(err.exit_code())
}

/// The command line to parse when the binary runs under a helper's program name (a link or a
/// copy): `docker-credential-keyshare VERB` is `keyshare docker-credential VERB`, and
/// `git-credential-keyshare OP` (for `credential.helper = keyshare`) is
/// `keyshare git-credential OP`. `None` under any other name.
pub fn multicall_args(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Option<Vec<std::ffi::OsString>> {
    let mut args = args.into_iter();
    let argv0 = args.next()?;
    let mut rest: Vec<std::ffi::OsString> = args.collect();
    let subcommand = match std::path::Path::new(&argv0).file_stem()?.to_str()? {
        cmd::docker_credential::PROGRAM => "docker-credential",
        "git-credential-keyshare" => {
            // git runs the helper as `git-credential-<what credential.helper says>` followed by
            // the operation, so `credential.helper = "keyshare git-credential"` and the
            // README's `"keyshare --flavor insiders git-credential"` give the subcommand's own
            // name again, after any global flags (found by QA: the second was refused, and git
            // stored nothing). docker runs its helper with the verb alone, so the docker name
            // never gets its subcommand's name.
            if let Some(at) = repeated_subcommand(&rest, "git-credential") {
                rest.remove(at);
            }
            "git-credential"
        }
        _ => return None,
    };
    Some(
        ["keyshare", subcommand]
            .into_iter()
            .map(std::ffi::OsString::from)
            .chain(rest)
            .collect(),
    )
}

/// Where `name` comes in `args` as the first word that is not a global flag or a flag's value:
/// `keyshare`'s own subcommand name, given again. `None` when another word (the operation)
/// comes first, or `--`.
fn repeated_subcommand(args: &[std::ffi::OsString], name: &str) -> Option<usize> {
    if !args.iter().any(|a| a == name) {
        return None;
    }
    // From clap's own definition, so that a flag added later is known here too; only built
    // when the name is there at all, which keeps it off every other lookup's start-up.
    let globals = <Globals as clap::Args>::augment_args(clap::Command::new("keyshare"));
    let takes_value = |flag: &str| {
        globals
            .get_arguments()
            .any(|arg| arg.get_long() == Some(flag) && arg.get_action().takes_values())
    };
    let mut words = args.iter().enumerate();
    while let Some((at, arg)) = words.next() {
        if arg == name {
            return Some(at);
        }
        let Some(flag) = arg.to_str().and_then(|a| a.strip_prefix("--")) else {
            // A short flag (keyshare has none that takes a value) or the operation.
            if arg.to_str().is_some_and(|a| a.starts_with('-') && a != "-") {
                continue;
            }
            return None;
        };
        if flag.is_empty() {
            return None;
        }
        if !flag.contains('=') && takes_value(flag) {
            words.next();
        }
    }
    None
}

/// Parses `args` (the program name first): by [`QuickCli`] if it can, else by the whole tree,
/// which also gives every help text and error.
pub fn parse_from(args: Vec<std::ffi::OsString>) -> Result<Cli, clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    if args
        .iter()
        .skip(1)
        .any(|a| QUICK_COMMANDS.iter().any(|q| a == q))
    {
        let mut quick = QuickCli::command();
        if !args
            .iter()
            .any(|a| a == "git-credential" || a == "docker-credential")
        {
            // For `get`, the flags are taken before its name only (how programs call it):
            // copying every global flag into every subcommand and back was half of what
            // parsing cost. Not for the helpers: their operation words may start with `-`, so
            // a flag after their name means something else to a tree without global flags.
            quick = quick.mut_args(|arg| arg.global(false));
        }
        let parsed = quick
            .try_get_matches_from_mut(&args)
            .ok()
            .and_then(|matches| QuickCli::from_arg_matches(&matches).ok());
        // Parser trees are not needed again and the process ends soon: freeing their many
        // small allocations one by one was a measurable share of a `keyshare get`.
        std::mem::forget(quick);
        if let Some(parsed) = parsed {
            return Ok(parsed.into());
        }
    }
    let mut command = Cli::command();
    let matches = command.try_get_matches_from_mut(args)?;
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
    std::mem::forget(command);
    Ok(cli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};
    use proptest::prelude::*;

    fn whole_tree(args: &[std::ffi::OsString]) -> Result<String, String> {
        let mut command = Cli::command();
        command
            .try_get_matches_from_mut(args)
            .and_then(|m| Cli::from_arg_matches(&m))
            .map(|cli| format!("{cli:?}"))
            .map_err(|e| e.render().to_string())
    }

    const TOKENS: &[&str] = &[
        "get",
        "get",
        "git-credential",
        "docker-credential",
        "set",
        "list",
        "doctor",
        "store",
        "erase",
        "github.auth",
        "k",
        "",
        "--flavor",
        "insiders",
        "--flavor=x",
        "--app",
        "code",
        "--config",
        "/tmp/c.toml",
        "--json",
        "--store",
        "vault",
        "memory",
        "bogus",
        "--direct",
        "--no-autostart",
        "--help",
        "-h",
        "--version",
        "-V",
        "--",
        "-x",
        "--from-file",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn quick_parse_agrees_with_the_whole_tree(
            picks in proptest::collection::vec(0..TOKENS.len(), 0..7)
        ) {
            let args: Vec<std::ffi::OsString> = std::iter::once("keyshare")
                .chain(picks.iter().map(|&i| TOKENS[i]))
                .map(Into::into)
                .collect();
            let expected = whole_tree(&args);
            let got = parse_from(args.clone())
                .map(|cli| format!("{cli:?}"))
                .map_err(|e| e.render().to_string());
            prop_assert_eq!(got, expected, "argv {:?}", args);
        }
    }

    fn multicall(argv: &[&str]) -> Option<Vec<String>> {
        multicall_args(argv.iter().map(std::ffi::OsString::from))
            .map(|args| args.into_iter().map(|a| a.into_string().unwrap()).collect())
    }

    /// QA: `credential.helper = "keyshare --flavor insiders git-credential"`, as the README
    /// gave it, made git run `git-credential-keyshare --flavor insiders git-credential store`,
    /// which clap refused ("unexpected argument 'store'"), and git stored nothing.
    #[test]
    fn the_git_helper_name_takes_its_subcommand_name_again_after_global_flags() {
        let git = "/home/u/bin/git-credential-keyshare";
        for (argv, expected) in [
            (
                &[git, "get"][..],
                &["keyshare", "git-credential", "get"][..],
            ),
            (
                &[git, "git-credential", "get"],
                &["keyshare", "git-credential", "get"],
            ),
            (
                &[git, "--flavor", "insiders", "git-credential", "store"],
                &[
                    "keyshare",
                    "git-credential",
                    "--flavor",
                    "insiders",
                    "store",
                ],
            ),
            (
                &[
                    git,
                    "--flavor=insiders",
                    "--direct",
                    "git-credential",
                    "erase",
                ],
                &[
                    "keyshare",
                    "git-credential",
                    "--flavor=insiders",
                    "--direct",
                    "erase",
                ],
            ),
            (
                &[git, "--no-autostart", "--json", "git-credential", "get"],
                &[
                    "keyshare",
                    "git-credential",
                    "--no-autostart",
                    "--json",
                    "get",
                ],
            ),
            // A flag's value is not the subcommand's name, nor is a word after the operation.
            (
                &[git, "--app", "git-credential", "get"],
                &[
                    "keyshare",
                    "git-credential",
                    "--app",
                    "git-credential",
                    "get",
                ],
            ),
            (
                &[git, "get", "git-credential"],
                &["keyshare", "git-credential", "get", "git-credential"],
            ),
            (
                &[git, "--", "git-credential", "get"],
                &["keyshare", "git-credential", "--", "git-credential", "get"],
            ),
        ] {
            assert_eq!(multicall(argv).unwrap(), expected, "{argv:?}");
        }
        assert_eq!(
            multicall(&["docker-credential-keyshare", "list"]).unwrap(),
            ["keyshare", "docker-credential", "list"]
        );
        assert_eq!(multicall(&["keyshare", "git-credential", "get"]), None);
        // And the whole command line parses as the operation, with the flag kept.
        let cli = parse_from(
            multicall_args(
                [git, "--flavor", "insiders", "git-credential", "store"]
                    .map(std::ffi::OsString::from),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(cli.globals.flavor.as_deref(), Some("insiders"));
        assert!(
            matches!(&cli.command, Command::GitCredential(Lazy(args)) if args.operation == "store")
        );
    }

    #[test]
    fn the_lookups_take_the_quick_tree() {
        // Not a timing test: this shows the quick tree accepts the forms programs use, so
        // they never pay for the whole tree.
        let quick = |argv: &[&str]| {
            QuickCli::command()
                .mut_args(|arg| arg.global(false))
                .try_get_matches_from(argv)
                .is_ok()
        };
        for argv in [
            &["keyshare", "get", "github.auth"][..],
            &["keyshare", "--store", "vault", "--direct", "get", "k"],
            &["keyshare", "--json", "--flavor", "insiders", "get", "k"],
            &["keyshare", "git-credential", "get"],
            &["keyshare", "docker-credential", "list"],
        ] {
            assert!(quick(argv), "{argv:?}");
        }
        // A flag after the subcommand's name is the whole tree's job (and it parses there).
        let late_flag = ["keyshare", "get", "k", "--json"];
        assert!(!quick(&late_flag));
        let cli = parse_from(late_flag.iter().map(Into::into).collect()).unwrap();
        assert!(cli.globals.json);
    }
}
