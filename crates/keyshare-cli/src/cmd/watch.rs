//! `keyshare watch [KEY...]`: change events as they happen, one line each (`--json`: one JSON
//! object per line). Values are never printed: read them with `keyshare get`.

use std::io::Write;

use anyhow::Context as _;
use keyshare::{ChangeKind, Notification};
use keyshare_broker::client::{BlockingBrokerClient, EventStream};
use keyshare_broker::daemon::lock_holder_pid;
use keyshare_broker::stop::{stop_marker, StopMarker};

use crate::broker;
use crate::cmd::parse_key;
use crate::config::StoreChoice;
use crate::stores::Context;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only these keys (default: every key this app may see).
    pub keys: Vec<String>,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    if ctx.routing.direct {
        return Err(keyshare::Error::invalid(
            "arguments",
            "`keyshare watch` needs the broker (change events come from it); drop --direct",
        )
        .into());
    }
    if ctx.store == StoreChoice::Memory {
        // No broker serves it (`keyshare serve` refuses it): a watch would wait forever.
        return Err(keyshare::Error::invalid(
            "arguments",
            "`keyshare watch` has nothing to watch with the memory store: each command that \
             uses it keeps its secrets in its own process, so no change is ever announced; watch \
             a persistent store (not --store memory or store = \"memory\")",
        )
        .into());
    }
    let keys = if args.keys.is_empty() {
        None
    } else {
        Some(
            args.keys
                .iter()
                .map(|k| parse_key(k))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    #[cfg(unix)]
    end_when_the_reader_goes();
    let client = broker::client(ctx)?;
    // Made when first needed (see `resubscribe`), and kept: its runtime carries the connection
    // of a subscription made through it, which would end with it.
    let mut waiting = None;
    let mut out = std::io::stdout().lock();
    let mut first = true;
    // The pid of the broker the subscription is with, as its instance lock says (read from the
    // file, not asked: a request through `client` could start a broker): a stop's marker that
    // names another broker is left over from an earlier stop, and does not mean this one was
    // stopped.
    let instance_lock = broker::paths(ctx)?.instance_lock;
    let mut serving = None;
    loop {
        let mut events = if first {
            client.subscribe(keys.clone())
        } else {
            resubscribe(ctx, &client, &mut waiting, serving, keys.clone())
        }
        .map_err(|err| no_broker_to_watch(ctx, err))?;
        serving = lock_holder_pid(&instance_lock);
        if let Some(notice) = client.async_client().take_autostart_output() {
            // What a broker this watch started said while starting (that it created a key
            // file, say) is for the user who caused the start, as for any command (found by
            // QA: a watch that created the vault said nothing of its key file).
            eprintln!("{}", notice.trim_end());
        }
        if first {
            eprintln!(
                "keyshare: watching {} (Ctrl-C to stop)",
                if args.keys.is_empty() {
                    // The broker's policy may narrow it (`shared_keys`; found by QA: "every
                    // key" for an app that sees one).
                    format!("every key app {} may see", ctx.app)
                } else {
                    args.keys.join(", ")
                }
            );
        } else {
            // The broker restarted: whatever changed meanwhile was not reported.
            print(
                &mut out,
                ctx.json,
                &Notification::Resync { missed: 0 },
                true,
            )?;
        }
        first = false;
        while let Some(notification) = events.blocking_next() {
            print(&mut out, ctx.json, &notification, false)?;
        }
    }
}

/// Subscribes again after the broker went away. After a crash (or a SIGTERM from elsewhere) that is at once, starting a broker
/// as the first subscription did; after `keyshare stop` of the broker it lost (`lost`; the
/// stop's marker, `BrokerPaths::stopped`, names it) the watch waits for a broker that something
/// else starts, instead of undoing the stop: the README's backup and restore steps need no
/// broker running.
fn resubscribe(
    ctx: &Context,
    client: &BlockingBrokerClient,
    waiting: &mut Option<BlockingBrokerClient>,
    lost: Option<u32>,
    keys: Option<Vec<keyshare::SecretKey>>,
) -> keyshare::Result<EventStream> {
    // Neither fails where the first subscription worked (the same paths and settings).
    let other = |err: anyhow::Error| keyshare::Error::invalid("broker", format!("{err:#}"));
    let paths = broker::paths(ctx).map_err(other)?;
    // Whether a stop is in force for the broker lost. A marker that names another broker was
    // left by an earlier stop whose next broker could not remove it (it logged why); one that
    // names none, or a broker that did not say its pid, is taken at its word.
    let stop_in_force = match (stop_marker(&paths), lost) {
        (StopMarker::Absent, _) => false,
        (StopMarker::Stopped(stopped), Some(lost)) => stopped == lost,
        (StopMarker::Stopped(_) | StopMarker::Unreadable, _) => true,
    };
    if !stop_in_force {
        return client.subscribe(keys);
    }
    // From here, any marker is a stop in force: one written while this watch waits (a command
    // started a broker, which removed the first marker, and another `keyshare stop` stopped it
    // between two looks) names a broker this watch never had (found in review).
    let still_stopped = || stop_marker(&paths) != StopMarker::Absent;
    let waiting = match waiting {
        Some(waiting) => waiting,
        None => waiting.insert(broker::client_without_autostart(ctx).map_err(other)?),
    };
    let mut said = false;
    loop {
        match waiting.subscribe(keys.clone()) {
            Err(keyshare::Error::Unavailable {
                reason: keyshare::UnavailableReason::NotRunning,
                ..
            }) if still_stopped() => {
                if !said {
                    eprintln!(
                        "keyshare: the {} broker was stopped (`keyshare stop`); waiting for one to start \
                         again (any keyshare command that needs it starts one; Ctrl-C to stop \
                         watching)",
                        ctx.flavour.name()
                    );
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            // The marker is gone (a broker started and removed it, and may have stopped again
            // since, not through `keyshare stop`): as after a crash.
            Err(keyshare::Error::Unavailable {
                reason: keyshare::UnavailableReason::NotRunning,
                ..
            }) => return client.subscribe(keys),
            // A broker answers (or another error).
            other => return other,
        }
    }
}

/// Ends the process, as quietly as a failed write to a reader that went away (exit 0), as soon
/// as standard output's reader goes, not at the next event: `keyshare watch KEY | head -1`
/// otherwise lived on, and held its pipeline open, until that key next changed (found by
/// QA). Only for a pipe or a socket, whose writer is told so (POLLERR, POLLHUP): a terminal
/// that hangs up sends SIGHUP anyway, a file has no reader, and macOS answers poll on a
/// terminal or /dev/null with POLLNVAL, at once, every time (found in review: the thread
/// would have spun). Checked before the watch opens anything, while standard output is still
/// what it was given (a descriptor closed at start could later be the broker's socket).
#[cfg(unix)]
fn end_when_the_reader_goes() {
    use rustix::event::{poll, PollFd, PollFlags};
    use rustix::fs::FileType;
    let stdout = std::io::stdout();
    match rustix::fs::fstat(&stdout) {
        Ok(stat)
            if matches!(
                FileType::from_raw_mode(stat.st_mode),
                FileType::Fifo | FileType::Socket
            ) => {}
        _ => return,
    }
    std::thread::spawn(move || loop {
        // No events asked: only the error and hang-up conditions, always reported.
        let mut fds = [PollFd::new(&stdout, PollFlags::empty())];
        match poll(&mut fds, None) {
            Ok(_) if fds[0].revents().intersects(PollFlags::ERR | PollFlags::HUP) => {
                std::process::exit(0)
            }
            // Not a descriptor poll can watch after all: the next write will tell.
            Ok(_) if fds[0].revents().contains(PollFlags::NVAL) => return,
            // Woken for nothing, or interrupted by a signal: wait again.
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    });
}

/// The client's advice when no broker runs and autostart is off includes `--direct`, which
/// `watch` refuses (found by QA): say what works for it.
fn no_broker_to_watch(ctx: &Context, err: keyshare::Error) -> keyshare::Error {
    match err {
        keyshare::Error::Unavailable {
            reason: keyshare::UnavailableReason::NotRunning,
            ..
        } if !broker::autostart_on(ctx) => keyshare::Error::unavailable(
            "broker",
            keyshare::UnavailableReason::NotRunning,
            format!(
                "no {} broker is running, and autostart is off (--no-autostart, \
                 KEYSHARE_NO_AUTOSTART or autostart = false): `keyshare watch` needs one, as \
                 change events come from it; start it with `keyshare serve`",
                ctx.flavour.name()
            ),
        ),
        err => err,
    }
}

fn print(
    out: &mut impl Write,
    json: bool,
    notification: &Notification,
    reconnected: bool,
) -> anyhow::Result<()> {
    let line = match (notification, json) {
        (Notification::Changed(e), true) => serde_json::json!({
            "seq": e.seq,
            "key": e.key.as_str(),
            "kind": kind(e.kind),
        })
        .to_string(),
        (Notification::Changed(e), false) => {
            format!("{} {} {}", e.seq, kind(e.kind), super::shown(&e.key))
        }
        // After a reconnection nobody counted what was missed: `null`, not 0 (found by QA).
        (Notification::Resync { missed }, true) => serde_json::json!({
            "resync": true,
            "missed": (!reconnected).then_some(missed),
            "reconnected": reconnected,
        })
        .to_string(),
        (Notification::Resync { .. }, false) if reconnected => {
            "resync: reconnected to the broker; changes in between were not reported".to_owned()
        }
        (Notification::Resync { missed }, false) => {
            format!("resync: {missed} changes were not reported; re-read what you cache")
        }
    };
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .context(crate::exit::WRITING_STDOUT)
}

fn kind(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Delete => "delete",
        _ => "set",
    }
}
