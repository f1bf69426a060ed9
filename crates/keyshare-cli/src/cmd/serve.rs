//! `keyshare serve`: the broker for one flavour, in the foreground, until SIGTERM or SIGINT.

use std::time::Duration;

use keyshare::SecretStorage;
use keyshare_broker::daemon::{self, Daemon};
use keyshare_broker::{BrokerState, ServerOptions};

use crate::broker;
use crate::config::StoreChoice;
use crate::stores::{self, Context};

/// How long an autostarted broker stays without any client before it exits.
const AUTOSTARTED_IDLE_EXIT: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Started by a client: say "ready" on stdout once listening, then detach from stdio, and
    /// exit after 10 idle minutes.
    #[arg(long, hide = true)]
    pub autostarted: bool,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    if args.autostarted {
        close_inherited_descriptors();
    }
    let paths = broker::paths(ctx)?;
    // Before any thread exists: socket activation reads and clears the environment.
    let daemon = Daemon::prepare(&paths)?;
    let policy = broker::policy(&ctx.config)?;
    // OpenBao has no push notification for KV writes: the broker polls for other machines'.
    let (shared, external) = if ctx.store == StoreChoice::Openbao {
        let (shared, external) = crate::openbao::open_shared_watched(ctx)?;
        (shared, Some(external))
    } else {
        (stores::open_direct_shared(ctx)?, None)
    };
    let storage = SecretStorage::builder(shared.store.clone())
        .limits(ctx.limits)
        .build();
    storage.ready()?;
    let mut options = ServerOptions::default();
    if args.autostarted {
        options.idle_exit = Some(AUTOSTARTED_IDLE_EXIT);
        daemon::notify_ready_on_stdout()?;
    } else {
        eprintln!(
            "keyshare: serving flavour {} ({}) on {}",
            ctx.flavour.name(),
            shared.store.info(),
            paths.socket.display()
        );
    }
    let runtime = daemon::runtime()?;
    let mut state = BrokerState::new(storage)
        .with_policy(policy)
        .with_options(options)
        .with_store_identity(shared.identity.clone())
        .with_os_keyring_protection(shared.os_keyring);
    if let Some(external) = external {
        state = state.with_external_changes(external);
    }
    runtime.block_on(daemon::serve_on_worker(daemon, state))?;
    Ok(())
}

/// Closes every descriptor above standard error that this process inherited.
///
/// An autostarted broker outlives the command that started it, by ten idle minutes or more.
/// Rust opens every descriptor close-on-exec, but the app that ran that command may have
/// leaked some (a pipe it reads until its writers are gone, a lock file): a broker holding
/// them would keep that pipe from ending and that lock from being released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn close_inherited_descriptors() {
    // SAFETY: this runs first in an autostarted broker, before it opens its lock, socket,
    // store or any thread: no descriptor above 2 belongs to anything in this process, so none
    // is closed behind an owner's back.
    let failed = unsafe { libc::close_range(3, libc::c_uint::MAX, 0) } != 0;
    if failed {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not close the descriptors inherited from the command that started the broker"
        );
    }
}

/// Elsewhere (unverified platforms) inherited descriptors stay open.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn close_inherited_descriptors() {}
