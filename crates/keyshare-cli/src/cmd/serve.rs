//! `keyshare serve`: the broker for one flavour, in the foreground, until SIGTERM or SIGINT.
//!
//! The access policy (`[apps.*]`'s `shared_keys` and `executables`, `unlisted_apps`) follows
//! edits of `config.toml` while the broker runs ([`PolicyReload`]); everything else in the
//! file (the store, its settings) is read once, at start.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use keyshare::SecretStorage;
use keyshare_broker::access::AccessPolicy;
use keyshare_broker::daemon::{self, Daemon};
use keyshare_broker::{BrokerState, ExternalChanges, PolicyHandle, ServerOptions, VaultChanges};

use crate::broker;
use crate::config::{Config, StoreChoice};
use crate::stores::{self, Context};

/// How long an autostarted broker stays without any client before it exits.
const AUTOSTARTED_IDLE_EXIT: Duration = Duration::from_secs(600);

/// An autostarted broker's log larger than this when the broker starts, or found so while it
/// runs, is moved to `broker.log.1` (replacing the one before) and a new one begun, so that the
/// two hold the last lines and never fill the disk, over months of starts or a broker that
/// never goes idle while a client keeps it busy with refused requests.
const LOG_ROTATE_AT: u64 = 1024 * 1024;

/// How often a running autostarted broker looks at its log's size: between two looks it can
/// outgrow the limit by what it logs in that time (a line per refused request, at most).
const LOG_CHECK_EVERY: Duration = Duration::from_secs(10);

/// How often a running broker looks at its config file (one `stat`) for an edited access
/// policy. An edit is applied once the file has rested for one look: 1 to 2 s after it.
const CONFIG_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Started by a client: say "ready" on stdout once listening, then log to
    /// $XDG_STATE_HOME/keyshare/<flavour>/broker.log, and exit after 10 idle minutes.
    #[arg(long, hide = true)]
    pub autostarted: bool,
    /// Read the vault's passphrase from standard input (to its end; one final newline is not
    /// part of it): how a client that starts the broker hands over its KEYSHARE_PASSPHRASE,
    /// which stays out of the broker's environment.
    #[arg(long, hide = true)]
    pub passphrase_stdin: bool,
}

/// The most a passphrase read from standard input may be.
const MAX_PASSPHRASE_LEN: usize = 64 * 1024;

/// The passphrase on standard input (`--passphrase-stdin`), read to its end; one final newline
/// is dropped (the starting client always ends it with one, so a passphrase that itself ends
/// in a newline arrives whole). Read from the descriptor itself, into one buffer zeroized when
/// dropped: `std::io::stdin()` would copy it into its own buffer, never cleared (found in
/// review).
pub fn read_passphrase_from_stdin() -> anyhow::Result<keyshare::SecretValue> {
    use std::io::Read as _;
    use std::os::fd::AsFd as _;
    let reading = |e| keyshare::Error::io("reading the passphrase from standard input", e);
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        // It would be echoed as typed: this flag is for a starting client's pipe.
        anyhow::bail!(keyshare::Error::invalid(
            "passphrase",
            "--passphrase-stdin reads a pipe, not a terminal: run `keyshare serve` without it \
             to be asked for the passphrase",
        ));
    }
    let mut stdin = std::fs::File::from(
        std::io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(reading)?,
    );
    // The passphrase, the newline the client ends it with, and one byte to see it is over.
    let mut bytes = zeroize::Zeroizing::new(vec![0u8; MAX_PASSPHRASE_LEN + 2]);
    let mut len = 0;
    while len < bytes.len() {
        match stdin.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(reading(e).into()),
        }
    }
    if len > 0 && bytes[len - 1] == b'\n' {
        len -= 1;
    }
    if len > MAX_PASSPHRASE_LEN {
        anyhow::bail!(keyshare::Error::invalid(
            "passphrase",
            format!(
                "the passphrase handed to the broker (KEYSHARE_PASSPHRASE) is over \
                 {MAX_PASSPHRASE_LEN} bytes"
            ),
        ));
    }
    Ok(keyshare::SecretValue::from_slice(&bytes[..len]))
}

pub fn run(args: &Args, ctx: &Context, config_path: &Path) -> anyhow::Result<()> {
    if args.autostarted {
        close_inherited_descriptors();
    }
    refuse_what_no_broker_serves(ctx)?;
    let paths = broker::paths(ctx)?;
    // Before any thread exists: socket activation reads and clears the environment.
    let daemon = Daemon::prepare(&paths)?;
    // The file as it is now, before the policy is built from what `main` read of it: an edit
    // between the two is then seen as a change, never missed.
    let config_seen = look(config_path);
    let policy = broker::policy(&ctx.config)?;
    // OpenBao has no push notification for KV writes: the broker polls for other machines'.
    // Nor has a vault for other processes' (`--direct` commands, apps without a broker).
    let (shared, external) = if ctx.store == StoreChoice::Openbao {
        let (shared, external) = crate::openbao::open_shared_watched(ctx)?;
        (shared, Some(external))
    } else {
        let shared = stores::open_direct_shared(ctx)?;
        let external = shared.vault.as_ref().map(watch_vault).transpose()?;
        (shared, external)
    };
    let storage = SecretStorage::builder(shared.store.clone())
        .limits(ctx.limits)
        .build();
    storage.ready()?;
    // Ready to serve: a `keyshare stop` no longer holds (see `BrokerPaths::stopped`).
    keyshare_broker::stop::clear_stopped(&paths);
    let mut options = ServerOptions::default();
    if args.autostarted {
        options.idle_exit = Some(AUTOSTARTED_IDLE_EXIT);
        // Opened while this process holds the flavour's instance lock, so that no other
        // broker rotates or writes the file meanwhile.
        match open_log(ctx.dirs.broker_log_path(&ctx.flavour), LOG_ROTATE_AT) {
            Ok(log) => {
                daemon::notify_ready_on_stdout_then_log_to(&log.file)?;
                early_log::release();
                if let Some(mode) = log.tightened_from {
                    tracing::warn!(log = %log.path.display(), mode = format!("{mode:03o}"), "the log was readable by others; now 0600");
                }
                keep_log_bounded(log.path);
            }
            Err(err) => {
                // Still on the client's pipe: the user whose command started this broker sees
                // it. Not a reason to refuse to serve: the commands would all go direct.
                eprintln!(
                    "keyshare: warning: the broker cannot keep a log, so it logs nothing: {}",
                    crate::exit::one_line(&err)
                );
                daemon::notify_ready_on_stdout()?;
                early_log::release();
            }
        }
        tracing::info!(
            pid = std::process::id(),
            flavour = ctx.flavour.name(),
            store = %shared.store.info(),
            socket = %paths.socket.display(),
            "started by a client; serving"
        );
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
        .with_store_aliases(stores::earlier_identities(ctx, shared.identity.as_deref()))
        .with_os_keyring_protection(shared.os_keyring);
    if let Some(external) = external {
        state = state.with_external_changes(external);
    }
    PolicyReload::new(config_path, config_seen, state.policy_handle()).spawn();
    // A vault file replaced under the broker (a backup restored) would take no more writes
    // (they fail) and answer reads from the file no other process sees: the broker stops, and
    // the next command starts one over the file now at the path (found by QA).
    let vault_gone = {
        let vault = shared.vault.clone();
        async move {
            let Some(vault) = vault else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(VAULT_WATCH_INTERVAL).await;
                if let Err(err) = vault.check_file() {
                    tracing::error!(error = %err, "stopping: the vault is not the file this broker opened");
                    return;
                }
            }
        }
    };
    let vault = shared.vault.clone();
    let served = runtime.block_on(daemon::serve_on_worker_until(daemon, state, vault_gone));
    // Once nothing writes any more, and before the vault closes: SQLite does not copy the log
    // of a moved file into it at close, and would leave it for the next opener to apply to
    // whatever file is at the path now.
    if let Some(vault) = vault.filter(|vault| vault.check_file().is_err()) {
        tracing::error!(
            "the vault's files were removed or replaced: {}",
            vault.set_aside()
        );
    }
    // Store calls still running on the blocking pool now answer nobody: every acknowledged
    // write was durable before its reply existed, and the server has stopped waiting for the
    // rest (its grace period ended, or a second signal cut it short). Dropping the runtime
    // would wait for them, for as long as a hung store's timeout; a moment is enough for
    // those about to finish.
    runtime.shutdown_timeout(STRAGGLERS_GRACE);
    served?;
    Ok(())
}

/// One look at the config file: what identifies its version cheaply (a `stat`: an edit, a
/// replacement or a removal changes it), `None` when there is no file, or why it could not be
/// looked at.
type Look = Result<Option<Stamp>, std::io::ErrorKind>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn look(path: &Path) -> Look {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        })),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err.kind()),
    }
}

/// Applies edits of the access policy in `config.toml` to the running broker.
///
/// It looks at the file every [`CONFIG_CHECK_EVERY`]; once a changed file has stayed the same
/// for one look (an editor or a script may still be writing it before), it reads it. A valid
/// file's policy replaces the one in force, for every request the broker reads from then on.
/// A file that cannot be used (invalid, unreadable, removed, not a regular file) changes
/// nothing: the policy in force stays, and the log says what is wrong with the file, once per
/// version of it; a half-written or removed file would otherwise loosen the policy, if only for
/// a moment. A FIFO in its place is not waited on (`Config::load` never blocks in `open`).
/// Settings other than the policy (the store) are not applied: they need a restart, and a
/// command that asks for another store is refused (`store_mismatch`) until then.
#[derive(Debug)]
struct PolicyReload {
    path: PathBuf,
    handle: PolicyHandle,
    /// The version of the file in force (or found unusable).
    applied: Look,
    /// The version seen at the last look.
    seen: Look,
}

impl PolicyReload {
    fn new(path: &Path, seen: Look, handle: PolicyHandle) -> Self {
        PolicyReload {
            path: path.to_owned(),
            handle,
            applied: seen,
            seen,
        }
    }

    /// Looks at the file from a thread of its own for as long as the process runs.
    fn spawn(mut self) {
        let watch = move || loop {
            std::thread::sleep(CONFIG_CHECK_EVERY);
            self.check();
        };
        if let Err(err) = std::thread::Builder::new()
            .name("keyshare-config".into())
            .spawn(watch)
        {
            tracing::warn!(error = %err, "no thread to follow config.toml: edits of the access policy apply once the broker restarts");
        }
    }

    /// One look: applies a changed file that rested since the last look.
    fn check(&mut self) {
        let now = look(&self.path);
        let rested = now == self.seen;
        self.seen = now;
        if now == self.applied || !rested {
            return;
        }
        let kept = "the broker keeps the access policy in force";
        match now {
            Err(kind) => {
                self.applied = now;
                let err = std::io::Error::from(kind);
                tracing::warn!(config = %self.path.display(), error = %err, "cannot look at the config file; {kept}");
            }
            Ok(None) => {
                self.applied = now;
                tracing::warn!(config = %self.path.display(), "the config file is gone; {kept} (restart the broker to serve without one)");
                // Denials then say that the file they name is gone.
                let kept = AccessPolicy {
                    source_removed: true,
                    ..(*self.handle.current()).clone()
                };
                self.handle.replace(kept);
            }
            Ok(Some(_)) => {
                let loaded = Config::load(&self.path, true).and_then(|c| broker::policy(&c));
                // Read while it changed again: judged at a later look, once it rests.
                let after = look(&self.path);
                if after != now {
                    self.seen = after;
                    return;
                }
                self.applied = now;
                match loaded.map(|policy| self.handle.replace(policy)) {
                    Ok(true) => {
                        tracing::info!(config = %self.path.display(), "access policy reloaded");
                    }
                    Ok(false) => {
                        tracing::debug!(config = %self.path.display(), "the config file changed; the access policy did not");
                    }
                    Err(err) => tracing::warn!(
                        error = crate::exit::one_line(&err),
                        "the config file changed and cannot be used; {kept}"
                    ),
                }
            }
        }
    }
}

/// Where an autostarted broker's log lines go until its log file is open.
///
/// Until it says it is ready, the broker's stderr is the pipe of the command that started it,
/// which shows what it reads there to its user as the broker's notices (a key file created,
/// why it could not start). Log lines are not for that user (commands log nothing unless
/// `KEYSHARE_LOG` asks): they are held here, in memory, and written to the log file once
/// stderr points at it ([`release`]). A broker that fails before then exits with its error on
/// the pipe, and its held lines are dropped.
pub mod early_log {
    use std::io::Write;
    use std::sync::Mutex;

    /// At most this much is held; lines past it are dropped (a start logs a few lines).
    const LIMIT: usize = 64 * 1024;

    /// The held lines; `None` once released.
    static HELD: Mutex<Option<Vec<u8>>> = Mutex::new(Some(Vec::new()));

    /// The log's writer (one per line, as `tracing_subscriber` makes them): holds the line
    /// until [`release`], then writes to stderr.
    pub struct Writer;

    impl Write for Writer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
            match held.as_mut() {
                Some(lines) => {
                    if lines.len() + buf.len() <= LIMIT {
                        lines.extend_from_slice(buf);
                    }
                    Ok(buf.len())
                }
                None => std::io::stderr().write(buf),
            }
        }

        fn flush(&mut self) -> std::io::Result<()> {
            std::io::stderr().flush()
        }
    }

    /// From now on log lines go to stderr (pointed at the log file, or /dev/null), the held
    /// ones first.
    pub fn release() {
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lines) = held.take() {
            let _ = std::io::stderr().write_all(&lines);
        }
    }
}

/// How often a broker over a vault looks for other processes' writes: one query when there is
/// none, so a look costs next to nothing; subscribers hear of such a write within this time.
const VAULT_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Other processes' writes to the vault, announced to subscribers. The baseline is taken now,
/// before the broker says it serves: a write made after that is then always announced.
fn watch_vault(vault: &std::sync::Arc<keyshare::VaultStore>) -> anyhow::Result<ExternalChanges> {
    let baseline = vault.change_marks()?;
    Ok(ExternalChanges::new(
        Box::new(VaultChanges::since(vault.clone(), baseline)),
        VAULT_WATCH_INTERVAL,
    ))
}

/// Settings a broker cannot serve, refused before anything is bound: the memory store, which
/// commands always open themselves (`broker::route`), so a broker over it would serve no one
/// and a `watch` on it would wait forever; and `--direct`, which asks to bypass the broker
/// (`serve` is the broker, so it cannot mean anything here).
fn refuse_what_no_broker_serves(ctx: &Context) -> anyhow::Result<()> {
    if ctx.routing.direct {
        return Err(keyshare::Error::invalid(
            "arguments",
            "`keyshare serve` is the broker; --direct is for commands that should bypass it: \
             drop --direct",
        )
        .into());
    }
    if ctx.store == StoreChoice::Memory {
        return Err(keyshare::Error::invalid(
            "arguments",
            "`keyshare serve` does not serve the memory store: a command with the memory store \
             never goes through a broker (each keeps its secrets in its own process), so no one \
             would use it; serve a persistent store (--store auto, vault, secret-service or \
             openbao)",
        )
        .into());
    }
    Ok(())
}

/// How long a stopping broker waits for store calls that outlived the server.
const STRAGGLERS_GRACE: Duration = Duration::from_millis(500);

/// An autostarted broker's log file, open for appending.
struct Log {
    file: File,
    path: PathBuf,
    /// The mode it had when it was found readable or writable by others (and made 0600).
    tightened_from: Option<u32>,
}

/// Opens the log at `path` for appending, after moving a large one to `<path>.1`.
///
/// The log names apps, keys and the broker's problems (never a value): it is kept as private as
/// the data. The directory is 0700 (created so, or refused if others may enter it) and the file
/// is created with mode 0600 at once, never looser for a moment (`create_private_file`); one
/// loosened by hand is tightened. A symlink in its place is refused rather than followed.
fn open_log(path: Option<PathBuf>, limit: u64) -> anyhow::Result<Log> {
    let path =
        path.context("there is no place for it: set XDG_STATE_HOME (or HOME, for ~/.local/state)")?;
    let rotated = {
        let mut name = path.clone().into_os_string();
        name.push(".1");
        PathBuf::from(name)
    };
    match std::fs::symlink_metadata(&path) {
        // Opening a FIFO would block the broker before it is ready; a symlink could point
        // anywhere.
        Ok(meta) if !meta.is_file() => {
            anyhow::bail!("{} is not a regular file; remove it", path.display())
        }
        Ok(meta) if meta.len() > limit => {
            std::fs::rename(&path, &rotated)
                .with_context(|| format!("moving {} to {}", path.display(), rotated.display()))?;
        }
        _ => {}
    }
    keyshare::store::vault::create_private_file(&path, b"")
        .with_context(|| format!("creating {}", path.display()))?;
    let file = OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    let uid = rustix::process::geteuid().as_raw();
    anyhow::ensure!(meta.is_file(), "{} is not a regular file", path.display());
    anyhow::ensure!(
        meta.uid() == uid,
        "{} belongs to uid {}, not to you (uid {uid}); remove it",
        path.display(),
        meta.uid()
    );
    let mode = meta.mode() & 0o777;
    let tightened_from = if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 600 {}", path.display()))?;
        Some(mode)
    } else {
        None
    };
    Ok(Log {
        file,
        path,
        tightened_from,
    })
}

/// Watches the log of a running broker from a thread of its own: moves it aside once it is
/// over [`LOG_ROTATE_AT`], and begins a new one if it was removed (a user cleaning up), then
/// logs there. Ends with the process.
fn keep_log_bounded(path: PathBuf) {
    let watch = move || loop {
        std::thread::sleep(LOG_CHECK_EVERY);
        match renewed_log(&path, LOG_ROTATE_AT) {
            Ok(None) => {}
            Ok(Some(log)) => match daemon::log_to(&log.file) {
                Ok(()) => tracing::info!(log = %path.display(), "began a new log"),
                Err(err) => tracing::warn!(error = %err, "could not move the log to a new file"),
            },
            // Tried again at the next look; one line per look at the most.
            Err(err) => tracing::warn!(
                error = crate::exit::one_line(&err),
                "could not begin a new log"
            ),
        }
    };
    if let Err(err) = std::thread::Builder::new()
        .name("keyshare-log".into())
        .spawn(watch)
    {
        tracing::warn!(error = %err, "no thread to keep the log's size bounded");
    }
}

/// A new log at `path` when the one there is over `limit` (moved aside first) or gone; `None`
/// while it is fine.
fn renewed_log(path: &std::path::Path, limit: u64) -> anyhow::Result<Option<Log>> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.len() <= limit => Ok(None),
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(err).with_context(|| format!("inspecting {}", path.display()))
        }
        _ => open_log(Some(path.to_owned()), limit).map(Some),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Two looks: the first sees the change, the second that it rested.
    fn settle(reload: &mut PolicyReload) {
        reload.check();
        reload.check();
    }

    fn agents_keys(handle: &PolicyHandle) -> Option<usize> {
        let policy = handle.current();
        policy
            .apps
            .get("agents")
            .and_then(|rule| rule.shared_keys.as_ref().map(Vec::len))
    }

    #[test]
    fn an_edited_policy_is_applied_and_an_unusable_file_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let storage =
            SecretStorage::builder(std::sync::Arc::new(keyshare::MemoryStore::new())).build();
        let handle = BrokerState::new(storage).policy_handle();
        // Started without a file.
        let mut reload = PolicyReload::new(&path, look(&path), handle.clone());
        settle(&mut reload);
        assert_eq!(agents_keys(&handle), None);

        // A new file: applied once it rested for one look, not at the look that found it.
        std::fs::write(&path, "[apps.agents]\nshared_keys = [\"github.auth\"]\n").unwrap();
        reload.check();
        assert_eq!(agents_keys(&handle), None, "applied before it rested");
        reload.check();
        assert_eq!(agents_keys(&handle), Some(1));

        // Unusable versions keep the policy in force: invalid TOML, an invalid pattern, a
        // half-written file that is valid TOML but not a config, the file removed.
        for text in [
            "[apps.agents\n",
            "[apps.agents]\nshared_keys = [\"a*b\"]\n",
            "[apps.agents]\nshared_ke",
        ] {
            std::fs::write(&path, text).unwrap();
            settle(&mut reload);
            assert_eq!(agents_keys(&handle), Some(1), "after {text:?}");
        }
        std::fs::remove_file(&path).unwrap();
        settle(&mut reload);
        assert_eq!(agents_keys(&handle), Some(1), "after removing the file");

        // A valid edit applies, loosening included.
        std::fs::write(&path, "[apps.agents]\nshared_keys = [\"a\", \"b\"]\n").unwrap();
        settle(&mut reload);
        assert_eq!(agents_keys(&handle), Some(2));
        std::fs::write(&path, "# nothing\n").unwrap();
        settle(&mut reload);
        assert_eq!(agents_keys(&handle), None);
    }

    /// Two looks from another thread, which must be done within 10 s: a look that blocks
    /// fails the test instead of hanging it.
    fn settle_within_bounds(mut reload: PolicyReload) -> PolicyReload {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            settle(&mut reload);
            let _ = done_tx.send(reload);
        });
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the policy reload blocked")
    }

    /// A config.toml replaced by a FIFO keeps the policy in force, and reloads go on once a
    /// regular file is back (found by QA: the reload thread blocked in `open` for good, so
    /// later edits were ignored until a restart, and nothing was logged).
    #[test]
    fn a_config_that_becomes_a_fifo_blocks_no_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let storage =
            SecretStorage::builder(std::sync::Arc::new(keyshare::MemoryStore::new())).build();
        let handle = BrokerState::new(storage).policy_handle();
        std::fs::write(&path, "[apps.agents]\nshared_keys = [\"github.auth\"]\n").unwrap();
        let reload = PolicyReload::new(&path, Ok(None), handle.clone());
        let reload = settle_within_bounds(reload);
        assert_eq!(agents_keys(&handle), Some(1));

        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let reload = settle_within_bounds(reload);
        assert_eq!(agents_keys(&handle), Some(1), "the policy in force is kept");

        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "[apps.agents]\nshared_keys = [\"a\", \"b\"]\n").unwrap();
        settle_within_bounds(reload);
        assert_eq!(agents_keys(&handle), Some(2), "reloads go on");
    }

    #[test]
    fn a_large_log_is_moved_aside_when_the_broker_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/keyshare/stable/broker.log");
        let rotated = path.with_file_name("broker.log.1");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().mode() & 0o777;

        // First start: directory and file created private.
        let mut log = open_log(Some(path.clone()), LOG_ROTATE_AT).unwrap();
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        log.file.write_all(b"first\n").unwrap();
        // Small: appended to.
        let mut log = open_log(Some(path.clone()), LOG_ROTATE_AT).unwrap();
        log.file.write_all(b"second\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first\nsecond\n");
        assert!(!rotated.exists());

        // Over the limit: moved aside, replacing the older one, and a new one begun.
        std::fs::write(&rotated, b"older").unwrap();
        log.file
            .write_all(&vec![b'x'; LOG_ROTATE_AT as usize])
            .unwrap();
        let mut log = open_log(Some(path.clone()), LOG_ROTATE_AT).unwrap();
        log.file.write_all(b"third\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"third\n");
        assert!(std::fs::read(&rotated)
            .unwrap()
            .starts_with(b"first\nsecond\nxxx"));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&rotated), 0o600);
    }

    #[test]
    fn a_log_loosened_by_hand_is_tightened_and_a_symlink_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.log");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = open_log(Some(path.clone()), LOG_ROTATE_AT).unwrap();
        assert_eq!(log.tightened_from, Some(0o644));
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);

        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        assert!(open_log(Some(path.clone()), LOG_ROTATE_AT).is_err());
        assert!(!dir.path().join("elsewhere").exists());

        let err = open_log(None, LOG_ROTATE_AT).err().unwrap();
        assert!(err.to_string().contains("XDG_STATE_HOME"), "{err}");
    }

    #[test]
    fn a_running_brokers_log_is_renewed_when_too_large_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/keyshare/stable/broker.log");
        let rotated = path.with_file_name("broker.log.1");
        let mut log = open_log(Some(path.clone()), 100).unwrap();
        log.file.write_all(&[b'a'; 100]).unwrap();
        // At the limit: left as it is.
        assert!(renewed_log(&path, 100).unwrap().is_none());
        log.file.write_all(b"b").unwrap();
        // Over it: moved aside and a new, private one begun.
        let mut new = renewed_log(&path, 100).unwrap().expect("renewed");
        new.file.write_all(b"after\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"after\n");
        assert_eq!(std::fs::read(&rotated).unwrap().len(), 101);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // Removed by hand: begun again.
        std::fs::remove_file(&path).unwrap();
        assert!(renewed_log(&path, 100).unwrap().is_some());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(std::fs::read(&rotated).unwrap().len(), 101);
    }
}
