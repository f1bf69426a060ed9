//! Reaching the shared store through the broker: whether to, and how.
//!
//! Persistent shared stores (vault, Secret Service, auto) are reached through the flavour's
//! broker unless `--direct` is given, starting it if none answers (unless `--no-autostart` or
//! `autostart = false`). The memory store is always direct: a broker's memory is not what a
//! one-off command means by "memory". Without `XDG_RUNTIME_DIR` there is no private place for
//! the socket, so the command goes direct (and says so in the log).

use std::sync::Arc;
use std::time::Duration;

use keyshare_broker::access::{AccessPolicy, AppRule, KeyPattern};
use keyshare_broker::client::Autostart;
use keyshare_broker::daemon::{lock_holder_pid, BrokerPaths, FileLock};
use keyshare_broker::protocol::BrokerStatus;
use keyshare_broker::{
    BlockingBrokerClient, ClientConfig, ClientError, OneShotClient, TransportError,
};

use crate::config::{Config, StoreChoice};
use crate::stores::{Context, SharedChoice};

/// How the command reaches the shared store, from the global flags.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// `--direct`: open the store in this process.
    pub direct: bool,
    /// `--no-autostart`: never start a broker.
    pub no_autostart: bool,
    /// The `--config` and `--store` given to this command, passed on to an autostarted broker
    /// so it serves the same store.
    pub passthrough: Vec<std::ffi::OsString>,
    /// This process is an autostarted broker: it has no terminal to ask a passphrase on.
    pub autostarted: bool,
    /// Check every page of a vault at open whatever its size: a broker, which keeps it open for
    /// days, and `doctor`, whose job it is. Other commands check vaults up to
    /// `DEFAULT_PAGE_CHECK_UP_TO`.
    pub check_whole_vault: bool,
    /// `doctor`: open what exists and create nothing. A vault that does not exist yet is
    /// reported as such (not created, nor its key), and `auto` records no choice: found by
    /// QA, a `doctor` run in a shell without the session bus (ssh) created a vault with a key
    /// file and pinned the flavour's store to it for good.
    pub look_only: bool,
}

/// The broker's paths for the context's flavour (a clear error when `XDG_RUNTIME_DIR` is unset).
pub fn paths(ctx: &Context) -> anyhow::Result<BrokerPaths> {
    Ok(BrokerPaths::from_runtime_dir(
        ctx.dirs.runtime_dir.clone().map(Into::into),
        &ctx.flavour,
    )?)
}

/// A client of the context's broker, autostarting it unless disabled, with an I/O thread of
/// its own (subscriptions need one).
pub fn client(ctx: &Context) -> anyhow::Result<BlockingBrokerClient> {
    Ok(BlockingBrokerClient::new(client_config(ctx)?)?)
}

/// [`client`], but one that never starts a broker.
pub fn client_without_autostart(ctx: &Context) -> anyhow::Result<BlockingBrokerClient> {
    Ok(BlockingBrokerClient::new(
        client_config(ctx)?.autostart(None),
    )?)
}

/// Whether a command may start the broker (`--no-autostart` and `autostart = false` say not).
pub fn autostart_on(ctx: &Context) -> bool {
    !ctx.routing.no_autostart && ctx.config.autostart != Some(false)
}

/// What a command allows the broker beyond its store's own time for a call: the broker's
/// share of the work (the request's turn, the reply's way back).
const BROKER_MARGIN: Duration = Duration::from_secs(1);

/// How long a command waits for the broker's reply to a request: as long as one call of the
/// store the broker serves may legitimately take (OpenBao: its whole failover and backoff
/// budget, more than `timeout_ms`), plus [`BROKER_MARGIN`]. Shorter, a command whose store
/// call fails slowly (a server down, a connection refused after retries) would report a broker
/// that did not answer, never the store's own error that the broker was about to send.
///
/// The store is the one this command means; with `auto` it is the vault or the Secret
/// Service, whose calls `timeout_ms` bounds.
fn reply_timeout(ctx: &Context) -> Duration {
    let store_budget = match ctx.store {
        StoreChoice::Openbao => crate::openbao::call_budget(ctx.timeout),
        _ => ctx.timeout,
    };
    store_budget + BROKER_MARGIN
}

fn client_config(ctx: &Context) -> anyhow::Result<ClientConfig> {
    let autostart = autostart_on(ctx);
    let reply_timeout = reply_timeout(ctx);
    let mut config = ClientConfig::with_paths(paths(ctx)?, ctx.app.clone())
        .client("keyshare", env!("CARGO_PKG_VERSION"))
        .timeout(reply_timeout)
        // A broker started with other settings (another `--store`, another config) must not
        // silently serve this command: it refuses hello instead.
        .expect_store(crate::stores::expected_identity(ctx))
        .require_os_keyring(ctx.config.require_os_keyring);
    if autostart {
        let mut start = Autostart::keyshare_serve(&ctx.flavour);
        start.args.extend(ctx.routing.passthrough.iter().cloned());
        // A starting broker may make a store call before it is ready (OpenBao: the listing
        // that later polls compare with), which may take the store's whole budget when the
        // server is down: the wait for it is never the shorter.
        start.ready_timeout = start.ready_timeout.max(reply_timeout);
        config = config.autostart(Some(start));
    }
    Ok(config)
}

/// How a command reaches the shared store.
pub enum Route {
    /// Through the broker, as the shared store.
    Broker(SharedChoice),
    /// The command opens the store itself; with why a broker it tried to start did not, said
    /// once the direct open has said what it has to (see [`BrokerNotStarted::report`]).
    Direct(Option<BrokerNotStarted>),
}

/// A broker that could not be started, as its own output says.
pub struct BrokerNotStarted {
    why: String,
}

impl BrokerNotStarted {
    /// Warns that the command goes on without a broker, after the direct open: `failed`, that
    /// open's error. The broker usually fails on what the direct open fails on too (the same
    /// config and store: `require_os_keyring` over a key-file vault), and its whole output in
    /// the warning then said the error twice, once inside the other (found by QA); then the
    /// warning only says the broker did not start either. Otherwise (a direct open that worked,
    /// or failed on something else) the broker's reason is news, and said whole.
    pub fn report(&self, failed: Option<&anyhow::Error>) {
        let why = self.why.trim_end();
        if failed.is_some_and(|err| why.contains(&err.to_string())) {
            eprintln!("keyshare: warning: could not start the broker, for the same reason as the error below");
            return;
        }
        eprintln!(
            "keyshare: warning: could not start the broker ({why}); opening the shared store \
             directly, without it (`keyshare doctor` says whether something keeps brokers from \
             starting)"
        );
    }
}

/// The broker as the shared store, or [`Route::Direct`] when the command should open it
/// directly: with `--direct`, for the memory store, without `XDG_RUNTIME_DIR`, when no broker
/// runs and autostart is off, and when autostart failed (the direct open then reports the real
/// problem, such as a vault that needs a passphrase typed on this terminal, with its own exit
/// code). A broker that answers but refuses (another app's pin, a protocol mismatch) is an
/// error.
pub fn route(ctx: &Context) -> anyhow::Result<Route> {
    route_with(ctx, false)
}

/// [`route`], with the broker's hello answered before it returns even when this command keeps
/// no journal: for a command that needs the store's identity and whether it
/// [keeps change times](keyshare::Store::keeps_change_times) (`import`), which a client knows
/// only from hello.
pub fn route_identified(ctx: &Context) -> anyhow::Result<Route> {
    route_with(ctx, true)
}

fn route_with(ctx: &Context, need_hello: bool) -> anyhow::Result<Route> {
    if ctx.routing.direct || ctx.store == StoreChoice::Memory {
        let why = if ctx.store_options.direct {
            "--direct"
        } else if ctx.store == StoreChoice::Memory {
            "the memory store has no broker"
        } else {
            "doctor looks at the store itself"
        };
        tracing::debug!(
            why,
            "not through a broker: opening the shared store in this process"
        );
        return Ok(Route::Direct(None));
    }
    if ctx.dirs.runtime_dir.is_none() {
        tracing::warn!("XDG_RUNTIME_DIR is not set: opening the shared store directly");
        return Ok(Route::Direct(None));
    }
    let broker_paths = paths(ctx)?;
    if let Some(why) = socket_path_too_long(&broker_paths) {
        // No broker can ever listen there, nor be reached: connecting fails at once, and
        // without a word every command went on without the broker (found by QA).
        eprintln!(
            "keyshare: warning: {why}; opening the shared store directly, without a broker, \
             until that is fixed (`keyshare doctor` checks)"
        );
        return Ok(Route::Direct(None));
    }
    // A command makes a call or two and exits: no runtime, and hello rides with the first
    // request. Connecting (or autostarting) says whether a broker is there; whether it accepts
    // this app is its answer to hello, which comes with the first reply.
    let client = OneShotClient::new(client_config(ctx)?);
    let mut identity = crate::stores::shared_placeholder_identity(ctx);
    let keeps_journal = ctx.config.legacy(&ctx.app, &ctx.flavour).store().is_some();
    // Waiting for hello's answer before the first request costs a round trip, and is needed
    // when this app keeps a repair journal about the shared store, keyed by that store's
    // identity: the broker says which store it serves (with `store = "auto"` this process
    // cannot know). And without autostart: a broker that is exiting accepts the connection
    // and closes it unanswered; with autostart the client starts another, without it this
    // command must see "no broker" now, while it can still open the store itself.
    if keeps_journal || need_hello || !autostart_on(ctx) {
        match client.hello() {
            Ok(info) => identity = info.store.or(identity),
            Err(err) if is_foreign(&err) => {
                return Err(err.into_store_error(client.store_name()).into())
            }
            Err(err @ ClientError::Transport(_)) => return Ok(Route::Direct(no_broker(&err))),
            Err(err) => return Err(err.into_store_error(client.store_name()).into()),
        }
    } else if let Err(err) = client.connect() {
        // Another user's socket at the path is an attack or a misconfiguration, never "no
        // broker": opening the store directly would hide it from the user.
        if is_foreign(&err) {
            return Err(err.into_store_error(client.store_name()).into());
        }
        return Ok(Route::Direct(no_broker(&err)));
    }
    if let Some(notice) = client.take_autostart_output() {
        // What the broker said while starting (e.g. that it created a key file) is for the
        // user who caused the start.
        eprintln!("{}", notice.trim_end());
    }
    tracing::debug!(
        socket = %broker_paths.socket.display(),
        store = identity.as_deref().unwrap_or("not known before its first reply"),
        "shared store through the broker"
    );
    Ok(Route::Broker(SharedChoice {
        store: Arc::new(client),
        reason: "through the broker (--direct opens it in this process)".to_owned(),
        identity,
        // The broker checked it at hello, when this command requires it.
        os_keyring: None,
        vault: None,
    }))
}

fn is_foreign(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Transport(
            TransportError::ForeignBroker { .. } | TransportError::ForeignDirectory { .. }
        )
    )
}

/// No broker answered (or none could be started): the command opens the store itself. A
/// broker that could not be started is returned, to be said after the direct open.
fn no_broker(err: &ClientError) -> Option<BrokerNotStarted> {
    if let ClientError::Transport(
        TransportError::StartupLockHeld { .. } | TransportError::TimedOut(_),
    ) = err
    {
        // The user waited for seconds: say why (who holds things up; a broker that is stopped
        // or hung, which went unsaid: found by QA).
        eprintln!("keyshare: warning: {err}; opening the shared store directly");
    } else if let ClientError::Transport(TransportError::Autostart(why)) = err {
        // Every command would go on without a broker, without announcing changes to
        // watchers, for as long as the cause lasts: the user must hear of it (found by QA: a
        // file in the socket's place went unsaid, and `doctor` found no problem). The cause
        // may also have passed (a broker stopped while it started): doctor tells.
        return Some(BrokerNotStarted { why: why.clone() });
    } else {
        tracing::warn!(error = %err, "no broker: opening the shared store directly");
    }
    None
}

/// Why no broker can use `paths.socket`, when its path is longer than a Unix socket address
/// holds (`sun_path`: 108 bytes on Linux, with its NUL): a deep `XDG_RUNTIME_DIR`.
pub fn socket_path_too_long(paths: &BrokerPaths) -> Option<String> {
    std::os::unix::net::SocketAddr::from_pathname(&paths.socket)
        .is_err()
        .then(|| {
            format!(
                "the broker's socket path {} is {} bytes long, longer than a Unix socket address \
                 holds (107 bytes on Linux), so no broker can run there: set XDG_RUNTIME_DIR to \
                 a shorter directory of your own (normally /run/user/{})",
                paths.socket.display(),
                paths.socket.as_os_str().len(),
                rustix::process::geteuid().as_raw()
            )
        })
}

/// What keeps any broker from starting for this flavour, with what to fix, when something
/// does: every command then warns and opens the store itself, without the broker's access
/// policy and change events, so `doctor` reports it (found by QA: it found no problem).
/// Checked without creating or locking anything: doctor never starts a broker.
pub fn start_obstacle(paths: &BrokerPaths) -> Option<String> {
    if let Some(why) = socket_path_too_long(paths) {
        return Some(why);
    }
    // The broker creates its directory (and the runtime directory, when missing) and its files
    // there: the nearest of them that exists must be writable. A read-only file system or a
    // directory it may not write stops it.
    if let Some(dir) = paths.dir.ancestors().find(|dir| dir.exists()) {
        if let Err(err) = rustix::fs::access(dir, rustix::fs::Access::WRITE_OK) {
            return Some(format!(
                "{} cannot be written ({}), so no broker can make its socket and lock files \
                 there: make it writable, or set XDG_RUNTIME_DIR to a writable directory of \
                 your own",
                dir.display(),
                std::io::Error::from(err)
            ));
        }
    }
    for lock in [&paths.instance_lock, &paths.startup_lock] {
        let Some(what) = crate::cmd::doctor::not_a_regular_file(lock) else {
            continue;
        };
        return Some(format!(
            "the lock file {} is {what}, not a regular file, so no broker can start (keyshare \
             leaves what it did not make alone): remove it by hand, and the next broker makes \
             the file anew",
            lock.display()
        ));
    }
    None
}

/// The broker's access policy from `[apps.<id>]` in `config.toml`.
pub fn policy(config: &Config) -> anyhow::Result<AccessPolicy> {
    let mut policy = AccessPolicy {
        unlisted_apps: config.unlisted_apps,
        ..AccessPolicy::default()
    };
    for (app, rule) in &config.apps {
        let shared_keys = match &rule.shared_keys {
            None => None,
            Some(patterns) => Some(
                patterns
                    .iter()
                    .map(|p| KeyPattern::new(p.clone()))
                    .collect::<keyshare::Result<Vec<_>>>()
                    .map_err(|e| {
                        crate::config::ConfigError(format!(
                            "[{}] shared_keys: {e}",
                            keyshare_broker::access::app_table(app)
                        ))
                    })?,
            ),
        };
        policy.apps.insert(
            app.clone(),
            AppRule {
                executables: rule.executables.clone(),
                shared_keys,
            },
        );
    }
    Ok(policy)
}

/// Whether the flavour's broker answers, for `doctor`. Never starts one.
#[derive(Debug)]
pub enum Probe {
    /// `XDG_RUNTIME_DIR` is unset: there is no broker socket, commands open stores directly.
    NoRuntimeDir,
    /// Nothing answers on the socket.
    NotRunning {
        socket: std::path::PathBuf,
        why: String,
    },
    /// A broker answers; its own account of itself.
    Running {
        socket: std::path::PathBuf,
        status: Box<BrokerStatus>,
    },
    /// A broker answers but cannot serve anyone now (it serves its maximum of connections).
    Busy {
        socket: std::path::PathBuf,
        why: String,
    },
    /// A broker answers but refuses this app (or speaks another protocol version).
    Refused {
        socket: std::path::PathBuf,
        why: String,
    },
    /// Another user's process serves the socket: this side refused it, sending nothing.
    Foreign {
        socket: std::path::PathBuf,
        why: String,
    },
    /// Something accepts connections on the socket but does not answer in time: a broker that
    /// is stopped (SIGSTOP, a debugger) or hung. `pid`: the broker holding the instance lock,
    /// when one does.
    NotAnswering {
        socket: std::path::PathBuf,
        pid: Option<u32>,
        why: String,
    },
}

pub fn probe(ctx: &Context) -> anyhow::Result<Probe> {
    if ctx.dirs.runtime_dir.is_none() {
        return Ok(Probe::NoRuntimeDir);
    }
    let config = client_config(ctx)?.autostart(None);
    let socket = config.paths.socket.clone();
    let instance_lock = config.paths.instance_lock.clone();
    let client = OneShotClient::new(config);
    let refused = |socket, err: ClientError| Probe::Refused {
        socket,
        why: err.to_string(),
    };
    // Connected, then silence: commands meet the same and fail (exit 3), so this is not "not
    // running" (found by QA: a stopped broker was, and doctor found no problem). The lock
    // says whether a broker runs, and which.
    let not_answering = |socket, why: String| Probe::NotAnswering {
        socket,
        pid: FileLock::is_held(&instance_lock)
            .unwrap_or(false)
            .then(|| lock_holder_pid(&instance_lock))
            .flatten(),
        why,
    };
    match client.hello() {
        Ok(_) => {}
        Err(err) if is_foreign(&err) => {
            return Ok(Probe::Foreign {
                socket,
                why: err.to_string(),
            })
        }
        Err(ClientError::Transport(err @ TransportError::TimedOut(_))) => {
            return Ok(not_answering(socket, err.to_string()))
        }
        // Its message carries advice for a command with autostart off; `doctor` words its own.
        Err(ClientError::Transport(TransportError::NotRunning { .. })) => {
            return Ok(Probe::NotRunning {
                socket,
                why: "nothing listens on the socket".to_owned(),
            })
        }
        Err(ClientError::Transport(err)) => {
            return Ok(Probe::NotRunning {
                socket,
                why: err.to_string(),
            })
        }
        // Not this app's fault (found by QA: doctor said the broker "refuses this app" when
        // it served its maximum of connections).
        Err(ClientError::Remote(err))
            if err.code == keyshare_broker::protocol::ErrorCode::Unavailable =>
        {
            return Ok(Probe::Busy {
                socket,
                why: err.message,
            })
        }
        Err(err) => return Ok(refused(socket, err)),
    }
    Ok(match client.status() {
        Ok(status) => Probe::Running {
            socket,
            status: Box::new(status),
        },
        Err(
            err @ keyshare::Error::Unavailable {
                reason: keyshare::UnavailableReason::TimedOut,
                ..
            },
        ) => not_answering(socket, err.to_string()),
        Err(err) => Probe::Refused {
            socket,
            why: err.to_string(),
        },
    })
}
