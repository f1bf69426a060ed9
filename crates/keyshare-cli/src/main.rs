//! `keyshare`: the command-line front end. Thin: it parses arguments, builds the context, and
//! hands over to one module per command. Exit codes: see `exit.rs` and the README.

// On Unix the C runtime calls `main` below directly (see there why); the unit tests keep the
// test harness's entry point.
#![cfg_attr(all(unix, not(test)), no_main)]

mod broker;
mod cli;
mod cmd;
mod config;
mod exit;
mod input;
mod openbao;
mod policed;
mod stores;

use std::path::PathBuf;
use std::time::Duration;

use keyshare::{AppId, Limits};

use crate::cli::{parse_command_line, Cli, Command, Lazy, LazySubcommands};
use crate::config::{Config, Dirs};
use crate::exit::{classify, render, ExitCode};
use crate::stores::Context;

fn context(cli: &Cli) -> anyhow::Result<(Context, PathBuf)> {
    let dirs = Dirs::from_env()?;
    let (config_path, explicit) = match &cli.globals.config {
        Some(path) => (path.clone(), true),
        None => (dirs.default_config_path(), false),
    };
    let config = Config::load(&config_path, explicit)?;
    let flavour_name = cli
        .globals
        .flavor
        .clone()
        .or_else(|| config.default_flavor.clone())
        .unwrap_or_else(|| "stable".to_owned());
    let flavour = config.flavour(&flavour_name)?;
    let app = AppId::new(cli.globals.app.clone())?;
    let store = cli.globals.store.unwrap_or(config.store);
    let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(5_000));
    Ok((
        Context {
            config,
            dirs,
            flavour,
            app,
            store,
            timeout,
            json: cli.globals.json,
            limits: Limits::default(),
            routing: routing(cli),
            store_options: stores::StoreOptions {
                config: cli.globals.config.as_deref().map(absolute),
                store: cli.globals.store,
                direct: cli.globals.direct,
            },
            secret_service_probe: std::sync::OnceLock::new(),
            vault_identity: std::sync::OnceLock::new(),
            passphrase: std::sync::Mutex::new(match &cli.command {
                Command::Serve(Lazy(args)) if args.passphrase_stdin => {
                    Some(cmd::serve::read_passphrase_from_stdin()?)
                }
                _ => None,
            }),
        },
        config_path,
    ))
}

fn routing(cli: &Cli) -> broker::Routing {
    let mut passthrough = Vec::new();
    if let Some(config) = &cli.globals.config {
        // An autostarted broker runs in `/`: a relative path must mean what it means here.
        passthrough.extend(["--config".into(), absolute(config).into_os_string()]);
    }
    if let Some(store) = cli.globals.store {
        passthrough.extend(["--store".into(), store.name().into()]);
    }
    // A dry run reads both stores and writes nothing: it creates no vault, records no `auto`
    // choice and starts no broker, as `doctor` does not (found by QA: a first dry run on a
    // fresh machine created the shared vault, its key file, and a broker).
    let dry_run = matches!(
        &cli.command,
        Command::Import(LazySubcommands(cmd::import::Source::Vscode(args))) if args.dry_run
    );
    broker::Routing {
        // `doctor` diagnoses the store itself, the way this machine would open it.
        direct: cli.globals.direct || matches!(cli.command, Command::Doctor) || dry_run,
        no_autostart: cli.globals.no_autostart,
        passthrough,
        autostarted: matches!(&cli.command, Command::Serve(Lazy(args)) if args.autostarted),
        check_whole_vault: matches!(cli.command, Command::Serve(_) | Command::Doctor),
        look_only: matches!(cli.command, Command::Doctor) || dry_run,
    }
}

/// `path` from the current directory, as another process elsewhere must be given it.
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn run(cli: &mut Cli) -> anyhow::Result<()> {
    let (ctx, config_path) = match context(cli) {
        Ok(made) => made,
        // `doctor` still reports, with the reason as its problem (found by QA: an invalid or
        // unsafe config file left `doctor --json` with no output at all). The exit code stays
        // the error's own.
        Err(err) if matches!(cli.command, Command::Doctor) => {
            let config_path = cli
                .globals
                .config
                .clone()
                .or_else(|| Dirs::from_env().ok().map(|dirs| dirs.default_config_path()));
            cmd::doctor::report_without_context(cli.globals.json, config_path.as_deref(), &err)?;
            return Err(err);
        }
        Err(err) => return Err(err),
    };
    cmd::advise_as(&ctx);
    if let Command::Import(LazySubcommands(cmd::import::Source::Vscode(args))) = &mut cli.command {
        vscode_of_this_flavour(&mut args.key.app_name, &ctx);
    }
    match &cli.command {
        Command::Set(Lazy(args)) => cmd::set::run(args, &ctx),
        Command::Get(Lazy(args)) => cmd::get::run(args, &ctx),
        Command::Delete(Lazy(args)) => cmd::delete::run(args, &ctx),
        Command::List => cmd::list::run(&ctx),
        Command::Migrate => cmd::migrate::run(&ctx),
        Command::Repair(Lazy(args)) => cmd::repair::run(args, &ctx),
        Command::Doctor => cmd::doctor::run(&ctx, &config_path, cli.globals.direct),
        Command::OpenbaoLogin(Lazy(args)) => openbao::login(args, &ctx),
        Command::Legacy(LazySubcommands(command)) => cmd::legacy::run(command, &ctx),
        Command::Import(LazySubcommands(source)) => cmd::import::run(source, &ctx),
        Command::Serve(Lazy(args)) => cmd::serve::run(args, &ctx, &config_path),
        Command::Stop(Lazy(args)) => cmd::stop::run(args, &ctx),
        Command::Watch(Lazy(args)) => cmd::watch::run(args, &ctx),
        Command::GitCredential(Lazy(args)) => cmd::git_credential::run(args, &ctx),
        Command::DockerCredential(Lazy(args)) => cmd::docker_credential::run(args, &ctx),
    }
}

/// The VS Code whose secrets `import vscode` copies into this flavour's shared store: by
/// default the flavour's own build (found by QA: `--flavor insiders import vscode` read stable
/// VS Code's database); one of another flavour, named on purpose, is read with a warning.
fn vscode_of_this_flavour(app_name: &mut Option<String>, ctx: &Context) {
    let Some(app_name) = app_name else {
        *app_name = Some(config::vscode_app_name(&ctx.flavour));
        return;
    };
    let flavour = ctx.flavour.name();
    if let Some(theirs) = config::implied_flavour(app_name).filter(|f| *f != flavour) {
        eprintln!(
            "keyshare: warning: importing the secrets of {app_name}, a {theirs} build, into the \
             {flavour} flavour's shared store, as --app-name asks; this flavour's VS Code is \
             {:?}",
            config::vscode_app_name(&ctx.flavour)
        );
    }
}

/// Logs on stderr as `spec` says; `held`: an autostarted broker's, held until its log file is
/// open (`cmd::serve::early_log`).
fn init_logging(spec: &std::ffi::OsStr, held: bool) {
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
    let writer = if held {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(|| cmd::serve::early_log::Writer)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    };
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(writer))
        .with(filter)
        .try_init();
}

/// The process entry point on Unix, called by the C runtime instead of Rust's own start-up.
///
/// Most runs of `keyshare` are one lookup, and process start-up is most of its time
/// (benches/process.rs, benches/broker_get.rs). Rust's start-up finds the main thread's stack
/// bounds, which glibc does by reading and parsing `/proc/self/maps`, and allocates a signal
/// stack, to print "stack overflow" instead of dying of SIGSEGV: ~80 µs of a ~1.4 ms lookup on
/// the machines these benches ran on. The one part of it that changes behaviour is kept:
/// SIGPIPE is ignored, so a write to a closed pipe or socket is an error this program reports
/// (or, for the broker, survives) rather than a silent death. The arguments still come from
/// `std::env::args`, which glibc hands to the standard library at load time; exiting goes
/// through `std::process::exit`, which flushes standard output.
#[cfg(all(unix, not(test)))]
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    // SAFETY: setting a signal's disposition to SIG_IGN, before any thread exists; no handler
    // function is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // A panic must not unwind into the C runtime; it exits the way Rust's start-up exits after
    // a panic in `main` (the panic hook has printed the message).
    std::process::exit(std::panic::catch_unwind(keyshare_main).unwrap_or(101))
}

/// `pow` for the whole program, so the dynamic loader need not map the C math library
/// (`libm.so.6`) at every start only for it: it is the one symbol the binary imports from
/// there (indicatif's rate estimate and tokio's scheduler statistics call it), and mapping,
/// relocating and binding a library is a measurable part of a `keyshare get`. The linker
/// links system libraries `--as-needed`, so with `pow` defined here it records no need for
/// `libm.so.6`. The `libm` crate is Rust's port of musl's math library. tests/cli.rs checks
/// that the binary does not load `libm.so.6`; the test below, that `libm::pow` agrees with
/// the C library's (which the test binary, without this definition, still calls).
#[cfg(all(target_os = "linux", target_env = "gnu", not(test)))]
#[allow(unsafe_code)]
#[no_mangle]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

#[cfg(any(not(unix), test))]
fn main() {
    std::process::exit(keyshare_main())
}

/// Runs the command line; the process's exit code.
fn keyshare_main() -> i32 {
    let mut cli = parse_command_line();
    // Logs go to stderr as KEYSHARE_LOG asks (e.g. KEYSHARE_LOG=warn, or
    // KEYSHARE_LOG=keyshare=debug,zbus=warn). Without it, a command logs nothing and builds no
    // subscriber at all, which keeps start-up short; the broker, a daemon whose warnings (a
    // refused connection, a failed repair) are only ever seen in its log, logs at `info`.
    // Logs never contain values: the library logs keys and error kinds only. (`Targets`, not
    // `EnvFilter`: the latter brings a regex engine into every run.)
    // An autostarted broker's stderr is the starting command's until its log file is open:
    // its log lines wait for that file.
    let autostarted = matches!(&cli.command, Command::Serve(Lazy(args)) if args.autostarted);
    match std::env::var_os("KEYSHARE_LOG") {
        Some(spec) => init_logging(&spec, autostarted),
        None if matches!(cli.command, Command::Serve(_)) => {
            init_logging("info".as_ref(), autostarted)
        }
        None => {}
    }
    no_core_dumps(matches!(cli.command, Command::Serve(_)));
    let code = match run(&mut cli) {
        Ok(()) => ExitCode::Ok,
        // `watch` runs until stopped, and in a pipeline its reader leaving is how it stops.
        Err(err) if matches!(cli.command, Command::Watch(_)) && exit::reader_went_away(&err) => {
            ExitCode::Ok
        }
        Err(err) => {
            if let Command::DockerCredential(_) = cli.command {
                // On stdout only, as the reference helpers do: docker reads the error there,
                // and passes a helper's stderr to the user's terminal, where "credentials not
                // found", docker's ordinary answer for a public registry, showed on every pull
                // (found by QA). The line is the whole message, causes included.
                cmd::docker_credential::report_on_stdout(&err);
            } else {
                eprintln!("{}", render(&err));
            }
            classify(&err)
        }
    };
    code as i32
}

/// Keeps this process's memory, which holds secrets (a value read from stdin, a vault's
/// key, the broker's whole cache of replies), out of core dumps: zeroizing buffers does not
/// reach the copies that stdin's buffer and grown vectors leave behind. A core size limit of 0
/// (soft and hard, so no child or library raises it) stops the kernel writing a core file and
/// tells a dump collector (systemd-coredump) not to keep one. The broker, which holds every
/// app's secrets for days, is also made non-dumpable: no dump at all, and no other process of
/// the user may attach to it with ptrace. Commands are not, because a broker that pins app ids
/// to executables reads its clients' `/proc/<pid>/exe`, which a non-dumpable process hides.
#[cfg(unix)]
fn no_core_dumps(serving: bool) {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    if let Err(err) = setrlimit(Resource::Core, none) {
        tracing::warn!(error = %err, "could not turn off core dumps");
    }
    #[cfg(target_os = "linux")]
    if serving {
        use rustix::process::{set_dumpable_behavior, DumpableBehavior};
        if let Err(err) = set_dumpable_behavior(DumpableBehavior::NotDumpable) {
            tracing::warn!(error = %err, "could not make the broker non-dumpable");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = serving;
}

/// Elsewhere (Windows: unverified here) nothing is done yet.
#[cfg(not(unix))]
fn no_core_dumps(_serving: bool) {}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn libm_pow_agrees_with_the_c_library() {
        let bases = [
            0.0,
            -0.0,
            0.5,
            1.0,
            1.5,
            2.0,
            10.0,
            1e-300,
            1e300,
            -2.0,
            f64::INFINITY,
        ];
        let exponents = [0.0, 0.5, 1.0, 2.0, 3.0, -1.0, -0.5, 0.1, 100.0, f64::NAN];
        for x in bases {
            for y in exponents {
                // `powf` is the C library's `pow` here: the test binary does not define its own.
                let (ours, theirs) = (libm::pow(x, y), x.powf(y));
                let agree = ours == theirs
                    || (ours.is_nan() && theirs.is_nan())
                    || (ours - theirs).abs() <= theirs.abs() * 4.0 * f64::EPSILON;
                assert!(agree, "pow({x}, {y}): libm {ours}, C {theirs}");
            }
        }
    }
}
