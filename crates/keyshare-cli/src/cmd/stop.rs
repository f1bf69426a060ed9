//! `keyshare stop`: stops the flavour's running broker (SIGTERM, as systemd or `kill` would),
//! and waits until it has exited: after an upgrade, to run one started with other settings,
//! or to take the store's privilege away.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use keyshare_broker::stop::{SocketLeft, Stopped};
use serde_json::json;

use crate::broker;
use crate::stores::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to wait for the broker to exit, in seconds (it finishes the requests it is
    /// running first).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout: u64,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    let flavour = ctx.flavour.name();
    if ctx.dirs.runtime_dir.is_none() {
        // A broker's socket and instance lock live there: without it none can run (commands
        // open the store themselves), so there is nothing to stop (found by QA: exit 3, with
        // advice to use --direct, which means nothing to `stop`).
        let mut out = std::io::stdout().lock();
        return if ctx.json {
            let report = json!({
                "flavor": flavour,
                "stopped": false,
                "pid": null,
                "socket": null,
                "socket_left": "nothing",
            });
            writeln!(out, "{report}")
        } else {
            writeln!(
                out,
                "no {flavour} broker can be running: XDG_RUNTIME_DIR is not set (or not an \
                 absolute path), and a broker needs it for its socket"
            )
        }
        .context(crate::exit::WRITING_STDOUT);
    }
    let paths = broker::paths(ctx)?;
    let outcome = keyshare_broker::stop::stop(&paths, Duration::from_secs(args.timeout))?;
    let (pid, socket) = match outcome {
        Stopped::NotRunning { socket } => (None, socket),
        Stopped::Stopped { pid, socket } => (Some(pid), socket),
        other => unreachable!("a new outcome of stopping: {other:?}"),
    };
    let path = paths.socket.display();
    let (state, note) = match socket {
        SocketLeft::Nothing => ("nothing", None),
        // A broker removes the socket it bound when it stops; one systemd passed it stays,
        // and systemd starts a broker again at the next connection.
        SocketLeft::Socket => (
            "socket",
            Some(format!(
                "the socket {path} remains: a systemd socket unit's, which starts a broker at \
                 the next connection (`systemctl --user stop keyshare@{flavour}.socket` stops \
                 that too), one left by a broker that was killed (the next broker removes it), or \
                 one a broker that is starting now has just made"
            )),
        ),
        SocketLeft::NotASocket => (
            "not_a_socket",
            Some(format!(
                "{path} is not a socket, so no broker can start until it is removed by hand"
            )),
        ),
        SocketLeft::NewBroker(new) => (
            "new_broker",
            Some(format!(
                "another {flavour} broker (pid {new}) has started since, for a command that \
                 needed one, and serves {path}"
            )),
        ),
        other => unreachable!("a new state of the socket: {other:?}"),
    };
    let mut out = std::io::stdout().lock();
    if ctx.json {
        let report = json!({
            "flavor": flavour,
            "stopped": pid.is_some(),
            "pid": pid,
            "socket": paths.socket.display().to_string(),
            "socket_left": state,
        });
        return writeln!(out, "{report}").context(crate::exit::WRITING_STDOUT);
    }
    match pid {
        Some(pid) => writeln!(out, "stopped the {flavour} broker (pid {pid})"),
        None => writeln!(out, "no {flavour} broker is running"),
    }
    .context(crate::exit::WRITING_STDOUT)?;
    if let Some(note) = note {
        eprintln!("keyshare: note: {note}");
    }
    Ok(())
}
