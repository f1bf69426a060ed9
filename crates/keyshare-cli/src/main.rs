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
    Set(cmd::set::Args),
    /// Print a secret's value to standard output, exactly as stored.
    Get(cmd::get::Args),
    /// Delete a secret from every store of the app.
    Delete(cmd::delete::Args),
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
    OpenbaoLogin(openbao::LoginArgs),
    /// Inspect an Electron app's own secrets (VS Code's state database).
    #[command(subcommand)]
    Legacy(cmd::legacy::Command),
    /// Copy another program's secrets into this flavour's shared store.
    #[command(subcommand)]
    Import(cmd::import::Source),
    /// Run the flavour's broker in the foreground (until SIGTERM or SIGINT).
    Serve(cmd::serve::Args),
    /// Print change events as they happen (never values).
    Watch(cmd::watch::Args),
    /// git's credential helper: `git config --global credential.helper '!keyshare git-credential'`.
    GitCredential(cmd::git_credential::Args),
    /// docker's credential helper, also run as `docker-credential-keyshare VERB`.
    DockerCredential(cmd::docker_credential::Args),
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
        autostarted: matches!(&cli.command, Command::Serve(args) if args.autostarted),
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let (ctx, config_path) = context(cli)?;
    match &cli.command {
        Command::Set(args) => cmd::set::run(args, &ctx),
        Command::Get(args) => cmd::get::run(args, &ctx),
        Command::Delete(args) => cmd::delete::run(args, &ctx),
        Command::List => cmd::list::run(&ctx),
        Command::Migrate => cmd::migrate::run(&ctx),
        Command::Repair => cmd::repair::run(&ctx),
        Command::Doctor => cmd::doctor::run(&ctx, &config_path),
        Command::OpenbaoLogin(args) => openbao::login(args, &ctx),
        Command::Legacy(command) => cmd::legacy::run(command, &ctx),
        Command::Import(source) => cmd::import::run(source, &ctx),
        Command::Serve(args) => cmd::serve::run(args, &ctx),
        Command::Watch(args) => cmd::watch::run(args, &ctx),
        Command::GitCredential(args) => cmd::git_credential::run(args, &ctx),
        Command::DockerCredential(args) => cmd::docker_credential::run(args, &ctx),
    }
}

fn main() {
    // Logs go to stderr, off unless KEYSHARE_LOG asks (e.g. KEYSHARE_LOG=warn); without it no
    // subscriber is built at all, which keeps start-up short. Logs never contain values: the
    // library logs keys and error kinds only.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("KEYSHARE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .try_init();
    }
    let cli = cmd::multicall_args().map_or_else(Cli::parse, Cli::parse_from);
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
