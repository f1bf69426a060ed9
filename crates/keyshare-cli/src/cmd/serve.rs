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
    // One runtime thread is plenty: store calls run on the blocking pool, and fewer threads
    // mean fewer cross-thread wake-ups per request and a smaller idle footprint.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| keyshare::Error::io("starting the broker's runtime", e))?;
    runtime.block_on(async {
        let mut state = BrokerState::new(storage)
            .with_policy(policy)
            .with_options(options);
        if let Some(external) = external {
            state = state.with_external_changes(external);
        }
        daemon.serve(state, daemon::shutdown_signal()?).await
    })?;
    Ok(())
}
