//! `keyshare`: the command-line front end. Thin: it parses arguments, builds the context, and
//! hands over to one module per command. Exit codes: see `exit.rs` and the README.

mod broker;
mod cmd;
mod config;
mod exit;
mod input;
mod openbao;
mod stores;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use keyshare::{AppId, Limits};

use crate::config::{Config, Dirs, StoreChoice};
use crate::exit::{classify, render, ExitCode};
use crate::stores::Context;

#[derive(Debug, Parser)]
#[command(
    name = "keyshare",
    version,
    about = "Share secrets between a family of applications",
    disable_help_subcommand = true
)]
struct Cli {
    /// Product flavour (its secrets are invisible to other flavours) [default: stable].
    #[arg(long, global = true, env = "KEYSHARE_FLAVOR", value_name = "F")]
    flavor: Option<String>,
    /// The app id this command acts as.
    #[arg(
        long,
        global = true,
        env = "KEYSHARE_APP",
        value_name = "A",
        default_value = "keyshare"
    )]
    app: String,
    /// Config file [default: $XDG_CONFIG_HOME/keyshare/config.toml].
    #[arg(long, global = true, env = "KEYSHARE_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Which shared store to use (overrides the config file).
    #[arg(long, global = true, value_enum, value_name = "STORE")]
    store: Option<StoreChoice>,
    /// Open the shared store in this process instead of going through the broker.
    #[arg(long, global = true)]
    direct: bool,
    /// Never start a broker; fail if none is running (config: `autostart = false`).
    #[arg(long, global = true, env = "KEYSHARE_NO_AUTOSTART")]
    no_autostart: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Store a secret; the value is read from standard input (or --from-file).
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
    Repair,
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
struct Lazy<T>(T);

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
struct LazySubcommands<T>(T);

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

fn context(cli: &Cli) -> anyhow::Result<(Context, PathBuf)> {
    let dirs = Dirs::from_env()?;
    let (config_path, explicit) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (dirs.default_config_path(), false),
    };
    let config = Config::load(&config_path, explicit)?;
    let flavour_name = cli
        .flavor
        .clone()
        .or_else(|| config.default_flavor.clone())
        .unwrap_or_else(|| "stable".to_owned());
    let flavour = config.flavour(&flavour_name)?;
    let app = AppId::new(cli.app.clone())?;
    let store = cli.store.unwrap_or(config.store);
    let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(5_000));
    Ok((
        Context {
            config,
            dirs,
            flavour,
            app,
            store,
            timeout,
            json: cli.json,
            limits: Limits::default(),
            routing: routing(cli),
        },
        config_path,
    ))
}

fn routing(cli: &Cli) -> broker::Routing {
    let mut passthrough = Vec::new();
    if let Some(config) = &cli.config {
        passthrough.extend(["--config".into(), config.clone().into_os_string()]);
    }
    if let Some(store) = cli.store {
        passthrough.extend(["--store".into(), store.name().into()]);
    }
    broker::Routing {
        // `doctor` diagnoses the store itself, the way this machine would open it.
        direct: cli.direct || matches!(cli.command, Command::Doctor),
        no_autostart: cli.no_autostart,
        passthrough,
        autostarted: matches!(&cli.command, Command::Serve(Lazy(args)) if args.autostarted),
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let (ctx, config_path) = context(cli)?;
    match &cli.command {
        Command::Set(Lazy(args)) => cmd::set::run(args, &ctx),
        Command::Get(Lazy(args)) => cmd::get::run(args, &ctx),
        Command::Delete(Lazy(args)) => cmd::delete::run(args, &ctx),
        Command::List => cmd::list::run(&ctx),
        Command::Migrate => cmd::migrate::run(&ctx),
        Command::Repair => cmd::repair::run(&ctx),
        Command::Doctor => cmd::doctor::run(&ctx, &config_path),
        Command::OpenbaoLogin(Lazy(args)) => openbao::login(args, &ctx),
        Command::Legacy(LazySubcommands(command)) => cmd::legacy::run(command, &ctx),
        Command::Import(LazySubcommands(source)) => cmd::import::run(source, &ctx),
        Command::Serve(Lazy(args)) => cmd::serve::run(args, &ctx),
        Command::Watch(Lazy(args)) => cmd::watch::run(args, &ctx),
        Command::GitCredential(Lazy(args)) => cmd::git_credential::run(args, &ctx),
        Command::DockerCredential(Lazy(args)) => cmd::docker_credential::run(args, &ctx),
    }
}

fn init_logging(spec: &std::ffi::OsStr) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match spec
        .to_str()
        .map(str::parse::<tracing_subscriber::filter::Targets>)
    {
        Some(Ok(filter)) => filter,
        Some(Err(err)) => {
            eprintln!("keyshare: KEYSHARE_LOG is not a log filter ({err}); logging stays off. Example: KEYSHARE_LOG=warn or KEYSHARE_LOG=keyshare=debug");
            return;
        }
        None => {
            eprintln!("keyshare: KEYSHARE_LOG is not UTF-8; logging stays off");
            return;
        }
    };
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
}

/// The parsed command line (clap prints help, version and usage errors and exits itself).
fn parse_command_line() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let mut command = Cli::command();
    let matches = match cmd::multicall_args() {
        Some(args) => command
            .try_get_matches_from_mut(args)
            .unwrap_or_else(|e| e.exit()),
        None => command.get_matches_mut(),
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit());
    // The parser's tree is not needed again and the process ends soon: freeing its many small
    // allocations one by one was a measurable share of a `keyshare get` (benches/process.rs).
    std::mem::forget(command);
    cli
}

fn main() {
    // Logs go to stderr, off unless KEYSHARE_LOG asks (e.g. KEYSHARE_LOG=warn, or
    // KEYSHARE_LOG=keyshare=debug,zbus=warn); without it no subscriber is built at all, which
    // keeps start-up short. Logs never contain values: the library logs keys and error kinds
    // only. (`Targets`, not `EnvFilter`: the latter brings a regex engine into every run.)
    if let Some(spec) = std::env::var_os("KEYSHARE_LOG") {
        init_logging(&spec);
    }
    let cli = parse_command_line();
    let code = match run(&cli) {
        Ok(()) => ExitCode::Ok,
        Err(err) => {
            if let Command::DockerCredential(_) = cli.command {
                cmd::docker_credential::report_on_stdout(&err);
            }
            eprintln!("{}", render(&err));
            classify(&err)
        }
    };
    std::process::exit(code as i32);
}
