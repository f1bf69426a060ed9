//! Turns the config and flags into an app's `SecretStorage`: which shared store, which legacy
//! store, where the repair journal lives. Every command goes through here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyshare::store::secret_service::{self, SecretServiceKekStore, SecretServiceStore};
use keyshare::store::vault::{
    Kek, KekStore, KeyProviders, PassphraseRequest, VaultId, VaultOptions, VaultStore,
};
use keyshare::{
    AppId, Flavour, Limits, MemoryStore, SecretStorage, SecretValue, Store, StoreInfo,
    UnavailableReason, UnreachableStore,
};

use crate::broker::Route;
use crate::config::{Config, Dirs, LegacyConfig, StoreChoice};

/// Everything a command needs to know about where it runs.
#[derive(Debug)]
pub struct Context {
    pub config: Config,
    pub dirs: Dirs,
    pub flavour: Flavour,
    pub app: AppId,
    pub store: StoreChoice,
    pub timeout: Duration,
    pub json: bool,
    pub limits: Limits,
    pub routing: crate::broker::Routing,
    /// The global options given to this command that choose its store, which the commands
    /// its messages advise repeat.
    pub store_options: StoreOptions,
    /// A vault passphrase given on standard input (`serve --passphrase-stdin`), taken before
    /// KEYSHARE_PASSPHRASE by the first vault opened (the broker's shared vault), and so
    /// dropped once that vault has derived its key from it: a broker lives for days.
    pub passphrase: std::sync::Mutex<Option<keyshare::SecretValue>>,
    /// Whether a Secret Service answers, asked once per command: `auto` asks both to name
    /// the store it expects a broker to serve and to choose one itself (found in review: two
    /// probes, so twice the timeout on a hung bus).
    pub secret_service_probe: std::sync::OnceLock<secret_service::ProbeReport>,
    /// The shared vault's identity ([`vault_identity`]), resolved once per command: resolving
    /// reads every directory of its path, and a lookup through the broker needed it twice.
    pub vault_identity: std::sync::OnceLock<String>,
}

impl Context {
    /// The Secret Service probe of this command (see `secret_service_probe`).
    pub fn probe_secret_service(&self) -> &secret_service::ProbeReport {
        self.secret_service_probe
            .get_or_init(|| secret_service::probe(self.timeout))
    }
}

/// The global options a command was given that choose the store it acts on (each `None` or
/// `false` when not given). A command line advised in a message repeats them: followed
/// without them, it acts on another store (found by QA: under `--store secret-service`, the
/// advised `repair` repaired the vault, said "repaired: 0", and the repair stayed pending).
#[derive(Debug, Default)]
pub struct StoreOptions {
    /// `--config`, made absolute: advice may be followed in another directory.
    pub config: Option<std::path::PathBuf>,
    pub store: Option<StoreChoice>,
    pub direct: bool,
}

/// The shared store that was chosen, and why.
#[derive(Debug)]
pub struct SharedChoice {
    pub store: Arc<dyn Store>,
    pub reason: String,
    /// Names this shared store stably across runs (kind and path or service), whatever its
    /// `info()` says; `None` for a store that forgets everything at exit.
    pub identity: Option<String>,
    /// Whether the OS keyring protects this store's secrets (the Secret Service itself, or a
    /// vault whose key it holds); `None` where that does not apply. A broker refuses clients
    /// that require it when it is `Some(false)`.
    pub os_keyring: Option<bool>,
    /// The store itself when it is a vault, which `keyshare serve` watches for other
    /// processes' writes (`keyshare_broker::VaultChanges`).
    pub vault: Option<Arc<VaultStore>>,
}

/// The file and the namespace in it: one vault file can hold several flavours' `service`
/// namespaces, and a broker serving one of them must not be taken for another's (found by QA:
/// with the path alone, a command configured for one namespace read and wrote the other's).
///
/// The path is resolved (symlinks, `..`), so that the same vault reached by another spelling
/// is the same store: its pending repairs are recorded in a journal named after this identity,
/// and under another name they were not found (found by QA: with a symlinked data directory,
/// as Fedora Silverblue's `/home` -> `/var/home`, a delete acknowledged during an outage was
/// forgotten and the signed-out token read again).
fn vault_identity(ctx: &Context) -> Option<String> {
    let identity = ctx.vault_identity.get_or_init(|| {
        let path = ctx.dirs.shared_vault_path(&ctx.flavour);
        vault_identity_of(&resolved(&path), ctx)
    });
    Some(identity.clone())
}

fn vault_identity_of(path: &Path, ctx: &Context) -> String {
    format!("vault:{}#{}", path.display(), ctx.flavour.service())
}

/// `path` with its longest existing ancestor resolved (symlinks, `.` and `..`) and the rest
/// appended as it is: stable from before the vault exists to after.
fn resolved(path: &Path) -> std::path::PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(mut real) = std::fs::canonicalize(at) {
            real.extend(rest.iter().rev());
            return real;
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                at = parent;
            }
            _ => return path.to_owned(),
        }
    }
}

/// The name earlier builds gave the vault `identity` names (its path as spelled, unresolved),
/// when that differs: their repair journal entries are kept under it.
fn earlier_vault_identity(ctx: &Context, identity: &str) -> Option<String> {
    if vault_identity(ctx).as_deref() != Some(identity) {
        return None;
    }
    let spelled = vault_identity_of(&ctx.dirs.shared_vault_path(&ctx.flavour), ctx);
    (spelled != identity).then_some(spelled)
}

/// The names earlier builds gave the shared store named `identity` (see
/// [`earlier_vault_identity`]), which a broker serving it accepts from their clients.
pub fn earlier_identities(ctx: &Context, identity: Option<&str>) -> Vec<String> {
    identity
        .and_then(|identity| earlier_vault_identity(ctx, identity))
        .into_iter()
        .collect()
}

/// Moves the repair journal entries kept under an earlier name of the same shared store
/// (`earlier`) to the journal under its name now, so that no pending repair is lost to the
/// rename. An entry both hold keeps the one under the name now (written later, by this
/// version). Moved, not copied: an entry left behind would be moved again after its repair
/// and undo it. An entry that cannot be read or moved stays where it is, with a warning: one
/// damaged entry must not stop every command of the app (found in review). With
/// `keep_earlier` (`doctor`, which changes nothing, into a copy in memory) they are copied.
fn adopt_journal(
    earlier: &dyn Store,
    journal: &dyn Store,
    keep_earlier: bool,
) -> keyshare::Result<()> {
    for key in earlier.keys()? {
        let moved = (|| -> keyshare::Result<()> {
            if journal.get(&key)?.is_none() {
                if let Some(entry) = earlier.get(&key)? {
                    journal.set(&key, &entry)?;
                }
            }
            if keep_earlier {
                return Ok(());
            }
            earlier.delete(&key).map(drop)
        })();
        if let Err(err) = moved {
            eprintln!(
                "keyshare: warning: a repair journal entry kept under the shared vault's earlier \
                 name could not be moved to its name now, and stays there: {err}"
            );
        }
    }
    Ok(())
}

/// A copy, in memory, of every entry of `store`.
fn copy_of(store: &dyn Store) -> keyshare::Result<MemoryStore> {
    let copy = MemoryStore::new();
    for key in store.keys()? {
        if let Some(value) = store.get(&key)? {
            copy.set(&key, &value)?;
        }
    }
    Ok(copy)
}

/// The app's repair journal about the shared store named `identity`, in the app's own vault
/// `vault`: with the entries kept under an earlier name of that store moved into it and, for a
/// shared store new to the app, seeded from its journals about earlier ones. `doctor` gets a
/// copy in memory of what that journal would be, and the vault is left as it is.
fn journal_in(vault: &VaultStore, identity: &str, ctx: &Context) -> anyhow::Result<Arc<dyn Store>> {
    let journal = vault.with_namespace(&format!("journal:{identity}"))?;
    let namespace = journal.namespace().to_owned();
    let look_only = ctx.routing.look_only;
    let journal: Arc<dyn Store> = if look_only {
        Arc::new(copy_of(&journal)?)
    } else {
        Arc::new(journal)
    };
    if let Some(earlier) = earlier_vault_identity(ctx, identity) {
        let earlier = vault.with_namespace(&format!("journal:{earlier}"))?;
        adopt_journal(&earlier, &*journal, look_only).map_err(|err| {
            anyhow::Error::new(err).context(format!(
                "moving the repair journal kept under the shared vault's earlier name ({}) to \
                 its name now",
                earlier.namespace()
            ))
        })?;
    }
    // A shared store new to this app (`auto` chose again, `store` or the flavour's `service`
    // changed): what the app shared before is not migrated into it again, and what it has not
    // brought to any shared store yet is repaired into it (see `seed_journal_from_earlier`).
    // Looked for only while the journal is empty, which it is once.
    if journal.keys()?.is_empty() {
        let mut earlier: Vec<Arc<dyn Store>> = Vec::new();
        for other in vault.namespaces_starting_with("journal:")? {
            if other != namespace {
                earlier.push(Arc::new(vault.with_namespace(&other)?));
            }
        }
        if !earlier.is_empty() {
            let seeded =
                keyshare::seed_journal_from_earlier(Arc::clone(&journal), &earlier, !look_only)
                    .map_err(|err| {
                        anyhow::Error::new(err).context(
                            "starting the repair journal of a shared store new to this app from \
                         its journals about earlier ones",
                        )
                    })?;
            if seeded {
                tracing::debug!(identity, "repair journal seeded from earlier shared stores");
            }
        }
    }
    Ok(journal)
}

/// An opened storage, with what `doctor` reports about it.
#[derive(Debug)]
pub struct Opened {
    pub storage: SecretStorage,
    pub shared: SharedChoice,
    pub legacy: Option<Arc<dyn Store>>,
    /// The app's repair journal, when it has a legacy store.
    pub journal: Option<Arc<dyn Store>>,
    /// The app it is.
    pub app: keyshare::AppId,
    /// Why the app's configured legacy store is not used: it belongs to another flavour.
    pub legacy_set_aside: Option<String>,
}

impl Drop for Opened {
    /// Whatever command ran, a write of the user's that gave way to another app's later change
    /// (its repair, carried out by this command's lazy migration or a write of the key) is
    /// said once: found by QA, the value was gone and no command said why. `keyshare repair`
    /// lists them itself and leaves none here.
    fn drop(&mut self) {
        for key in self.storage.take_superseded() {
            eprintln!(
                "keyshare: note: kept another app's later change to {}: this app's write of it, \
                 which had not reached the shared store, was older, so app {}'s own copy now \
                 follows the other app's",
                crate::cmd::shown(&key),
                self.app
            );
        }
    }
}

/// Asks for a vault passphrase on the terminal (twice when creating); `None` without one.
fn terminal_passphrase(request: &PassphraseRequest<'_>) -> keyshare::Result<Option<SecretValue>> {
    let Ok(tty) = std::fs::File::open("/dev/tty") else {
        return Ok(None);
    };
    drop(tty);
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(zeroize::Zeroizing::new)
            .map_err(|e| keyshare::Error::io("reading the passphrase from the terminal", e))
    };
    let first = ask(&format!("Passphrase for {}: ", request.vault.display()))?;
    if request.creating {
        let second = ask("Repeat the passphrase: ")?;
        if *first != *second {
            return Err(keyshare::Error::invalid(
                "passphrase",
                "the two passphrases differ",
            ));
        }
    }
    Ok(Some(SecretValue::from_slice(first.as_bytes())))
}

/// The Secret Service as the keeper of vault keys, connected only when a vault actually asks
/// for its key there: a vault protected by a key file never touches D-Bus, which keeps
/// `keyshare get` fast on a machine with no keyring.
#[derive(Debug)]
struct LazyKeyring {
    timeout: Duration,
    connected: std::sync::OnceLock<Result<SecretServiceKekStore, (UnavailableReason, String)>>,
}

impl LazyKeyring {
    fn connect(&self) -> keyshare::Result<&SecretServiceKekStore> {
        self.connected
            .get_or_init(|| {
                SecretServiceKekStore::open(self.timeout).map_err(|err| match err {
                    // The usual case on a server: say it in a few words, since this ends up in
                    // the one-line notice about the key file.
                    keyshare::Error::Unavailable {
                        reason: UnavailableReason::NotRunning,
                        ..
                    } => (
                        UnavailableReason::NotRunning,
                        // No bus at all (ssh, a container) is not "no Secret Service on it"
                        // (found by QA).
                        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS")
                            .is_some_and(|address| !address.is_empty())
                        {
                            "no Secret Service on the session bus".to_owned()
                        } else {
                            "no Secret Service reachable (DBUS_SESSION_BUS_ADDRESS is not set)"
                                .to_owned()
                        },
                    ),
                    keyshare::Error::Unavailable { reason, detail, .. } => (reason, detail),
                    other => (UnavailableReason::Backend, other.to_string()),
                })
            })
            .as_ref()
            .map_err(|(reason, detail)| {
                keyshare::Error::unavailable("OS keyring", *reason, detail.clone())
            })
    }
}

impl KekStore for LazyKeyring {
    fn load(&self, vault: &VaultId) -> keyshare::Result<Option<Kek>> {
        self.connect()?.load(vault)
    }
    fn store(&self, vault: &VaultId, kek: &Kek) -> keyshare::Result<()> {
        self.connect()?.store(vault, kek)
    }
    fn forget_uncreated(&self, vault: &VaultId) -> keyshare::Result<()> {
        self.connect()?.forget_uncreated(vault)
    }
    fn describe(&self) -> String {
        match self.connected.get() {
            Some(Ok(store)) => store.describe(),
            _ => "Secret Service (default collection)".to_owned(),
        }
    }
}

/// Opens a vault the way every command does: the configured protection requirements, the
/// store timeout, and the one-line notice on stderr when a key file was just created.
pub fn open_vault(path: &Path, namespace: &str, ctx: &Context) -> anyhow::Result<VaultStore> {
    let vault = VaultStore::open(vault_options(path, namespace, ctx))?;
    if let Some(notice) = vault.notice() {
        eprintln!("{notice}");
    }
    Ok(vault)
}

/// Opens a vault that exists, to look into it (`doctor`): no passphrase is asked for on the
/// terminal (one from KEYSHARE_PASSPHRASE is used), and `require_os_keyring` does not apply
/// (it is about the store in use, which this one is not). `None` when there is no file.
pub fn look_into_vault(
    path: &Path,
    namespace: &str,
    ctx: &Context,
) -> anyhow::Result<Option<VaultStore>> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut options = vault_options(path, namespace, ctx);
    options.require_os_keyring = false;
    options.keys.passphrase_prompt = None;
    Ok(Some(VaultStore::open(options)?))
}

/// How every command opens a vault: the configured protection requirements, the store
/// timeout, the keepers of its key.
fn vault_options(path: &Path, namespace: &str, ctx: &Context) -> VaultOptions {
    let mut options = VaultOptions::new(path, namespace);
    options.require_os_keyring = ctx.config.require_os_keyring;
    if ctx.routing.check_whole_vault {
        options.check_pages_up_to = None;
    }
    options.busy_timeout = ctx.timeout;
    options.limits = ctx.limits;
    options.keys = KeyProviders {
        os_keyring: Some(Arc::new(LazyKeyring {
            timeout: ctx.timeout,
            connected: std::sync::OnceLock::new(),
        })),
        // An autostarted broker has no terminal: a client that needs the passphrase typed
        // opens the vault itself instead.
        passphrase_prompt: (!ctx.routing.autostarted)
            .then(|| Arc::new(terminal_passphrase) as Arc<_>),
        passphrase: ctx
            .passphrase
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(),
        ..KeyProviders::default()
    };
    options
}

/// The shared store: the flavour's broker (see `broker.rs`), or the store itself.
pub fn open_shared(ctx: &Context) -> anyhow::Result<SharedChoice> {
    let not_started = match crate::broker::route(ctx)? {
        Route::Broker(through_broker) => return Ok(through_broker),
        Route::Direct(not_started) => not_started,
    };
    let opened = open_direct_shared(ctx).and_then(|mut shared| {
        // The broker's access policy holds without a broker too; only --direct says
        // otherwise (see `policed.rs`).
        if !ctx.routing.direct {
            let policy = crate::broker::policy(&ctx.config)?;
            shared.store = crate::policed::police(shared.store, &policy, &ctx.app)?;
        }
        Ok(shared)
    });
    if let Some(not_started) = not_started {
        not_started.report(opened.as_ref().err());
    }
    opened
}

/// [`open_shared`], knowing (through a broker, after its hello) the store's identity and
/// whether it keeps change times.
pub fn open_shared_identified(ctx: &Context) -> anyhow::Result<SharedChoice> {
    let not_started = match crate::broker::route_identified(ctx)? {
        Route::Broker(through_broker) => return Ok(through_broker),
        Route::Direct(not_started) => not_started,
    };
    let opened = open_direct_shared(ctx);
    if let Some(not_started) = not_started {
        not_started.report(opened.as_ref().err());
    }
    opened
}

/// Picks the shared store itself: the explicit choice, or for `auto` the Secret Service when
/// one runs (even locked), else the vault, as recorded at the flavour's first use.
pub fn open_direct_shared(ctx: &Context) -> anyhow::Result<SharedChoice> {
    // Which store and why, for KEYSHARE_LOG=debug (found by QA: a direct command logged
    // nothing at all). Never a value: the store's kind, location and the reason only.
    choose_direct_shared(ctx).inspect(|choice| {
        let info = choice.store.info();
        tracing::debug!(
            store = info.kind,
            location = %info.location,
            why = %choice.reason,
            "opened the shared store in this process"
        );
    })
}

fn choose_direct_shared(ctx: &Context) -> anyhow::Result<SharedChoice> {
    let service = ctx.flavour.service();
    match ctx.store {
        StoreChoice::Memory => Ok(SharedChoice {
            store: Arc::new(MemoryStore::with_limits(ctx.limits)),
            reason: "chosen explicitly (nothing persists)".to_owned(),
            identity: None,
            os_keyring: Some(false),
            vault: None,
        }),
        StoreChoice::Vault => shared_vault(ctx, "chosen explicitly".to_owned()),
        StoreChoice::SecretService => Ok(SharedChoice {
            store: Arc::new(
                SecretServiceStore::open(service, ctx.timeout)?.with_limits(ctx.limits),
            ),
            reason: "chosen explicitly".to_owned(),
            identity: secret_service_identity(ctx),
            os_keyring: Some(true),
            vault: None,
        }),
        StoreChoice::Openbao => crate::openbao::open_shared(ctx),
        StoreChoice::Auto => open_auto(ctx),
    }
}

/// What `auto` chose for a flavour, kept from its first use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AutoChoice {
    SecretService,
    Vault,
}

impl AutoChoice {
    const SECRET_SERVICE: &'static str = "secret-service";
    const VAULT: &'static str = "vault";

    fn as_str(self) -> &'static str {
        match self {
            AutoChoice::SecretService => Self::SECRET_SERVICE,
            AutoChoice::Vault => Self::VAULT,
        }
    }
}

/// The recorded choice: `None` when there is none yet; an error naming the file when it holds
/// anything else (it is left as it is).
fn read_auto_choice(path: &Path) -> anyhow::Result<Option<AutoChoice>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(keyshare::Error::io(format!("reading {}", path.display()), e).into()),
    };
    match text.trim_end_matches('\n') {
        AutoChoice::SECRET_SERVICE => Ok(Some(AutoChoice::SecretService)),
        AutoChoice::VAULT => Ok(Some(AutoChoice::Vault)),
        _ => Err(keyshare::Error::invalid(
            "auto store record",
            format!(
                "{} should say `{}` or `{}` (which store `--store auto` chose for this flavour) \
                 but says something else; it was left untouched. Fix or remove it (removing it \
                 makes the next command choose again)",
                path.display(),
                AutoChoice::SECRET_SERVICE,
                AutoChoice::VAULT
            ),
        )
        .into()),
    }
}

/// `auto`: the Secret Service when one runs on the session bus (unlocked or locked), else the
/// vault; decided on the flavour's first use and kept (in `Dirs::auto_choice_path`).
///
/// Why kept: deciding again on every run split a flavour's secrets between two stores. With
/// the keyring locked, or a shell without the session bus (ssh), a run chose the vault, so
/// reads said "not found" for secrets that are in the keyring, and writes went where the next
/// run with the keyring would not look. A locked keyring is the keyring's answer ("locked",
/// exit 3), and a missing one, once the flavour lives there, is "unavailable".
fn open_auto(ctx: &Context) -> anyhow::Result<SharedChoice> {
    let record = ctx.dirs.auto_choice_path(&ctx.flavour);
    let recorded = read_auto_choice(&record)?;
    let service = ctx.flavour.service();
    match recorded {
        Some(AutoChoice::Vault) => shared_vault(
            ctx,
            format!(
                "auto: the vault, chosen on this flavour's first use because the Secret Service \
                 was not usable then (recorded in {}; removing that file makes the next command \
                 choose again, and leaves the vault's secrets behind in it)",
                record.display()
            ),
        ),
        Some(AutoChoice::SecretService) => {
            let report = ctx.probe_secret_service();
            let reachable = report.is_usable() || report.is_locked();
            let store = SecretServiceStore::open(service, ctx.timeout)
                .and_then(|store| {
                    if reachable {
                        Ok(store)
                    } else {
                        Err(report_error(report))
                    }
                })
                .map_err(|err| {
                    anyhow::Error::new(err).context(format!(
                        "this flavour's shared secrets are in the Secret Service (`auto` chose it \
                         on the flavour's first use; recorded in {}), which cannot be reached now. \
                         Start the keyring (or run where the session bus is){}",
                        record.display(),
                        if ctx.config.require_os_keyring {
                            // No vault would do (found by QA: the advice, followed, failed).
                            String::new()
                        } else {
                            format!(
                                ", or {}",
                                crate::cmd::use_a_vault_instead(&crate::cmd::keyshare_in(ctx))
                            )
                        }
                    ))
                })?;
            Ok(SharedChoice {
                store: Arc::new(store.with_limits(ctx.limits)),
                reason: format!(
                    "auto: the Secret Service {} (chosen on this flavour's first use; recorded \
                     in {})",
                    secret_service_state(report),
                    record.display()
                ),
                identity: secret_service_identity(ctx),
                os_keyring: Some(true),
                vault: None,
            })
        }
        None => {
            let report = ctx.probe_secret_service();
            let choice = if report.is_usable() || report.is_locked() {
                AutoChoice::SecretService
            } else {
                AutoChoice::Vault
            };
            let shared = match choice {
                AutoChoice::SecretService => SharedChoice {
                    store: Arc::new(
                        SecretServiceStore::open(service, ctx.timeout)?.with_limits(ctx.limits),
                    ),
                    reason: format!("auto: the Secret Service {}", secret_service_state(report)),
                    identity: secret_service_identity(ctx),
                    os_keyring: Some(true),
                    vault: None,
                },
                AutoChoice::Vault => shared_vault(
                    ctx,
                    format!("auto: the Secret Service is not usable ({report})"),
                )?,
            };
            if ctx.routing.look_only {
                return Ok(SharedChoice {
                    reason: format!(
                        "{}; not recorded yet: the first command that uses the store makes \
                         this choice and keeps it",
                        shared.reason
                    ),
                    ..shared
                });
            }
            let line = format!("{}\n", choice.as_str());
            match keyshare::store::vault::create_private_file(&record, line.as_bytes()) {
                Ok(true) => Ok(shared),
                // Another process decided first: its choice stands.
                Ok(false) => match read_auto_choice(&record)? {
                    Some(theirs) if theirs != choice => open_auto(ctx),
                    _ => Ok(shared),
                },
                Err(err) => {
                    eprintln!(
                        "keyshare: warning: could not record which store `auto` chose ({}), so \
                         the next command chooses again: {err}",
                        choice.as_str()
                    );
                    Ok(shared)
                }
            }
        }
    }
}

/// How `auto` found the Secret Service it uses, after "the Secret Service ": "is usable: ..."
/// or, locked, that it answers (the report of a locked one is an error message of its own).
fn secret_service_state(report: &secret_service::ProbeReport) -> String {
    if report.is_locked() {
        "answers, but its keyring is locked now".to_owned()
    } else {
        format!("is {report}")
    }
}

/// The probe's error, rebuilt (errors are not `Clone`) with its kind.
fn report_error(report: &secret_service::ProbeReport) -> keyshare::Error {
    match &report.outcome {
        Err(keyshare::Error::Unavailable { reason, .. }) => {
            keyshare::Error::unavailable("secret service", *reason, report.to_string())
        }
        _ => keyshare::Error::unavailable(
            "secret service",
            UnavailableReason::NotRunning,
            report.to_string(),
        ),
    }
}

/// The flavour's shared vault, opened, as the shared store chosen for `reason`.
fn shared_vault(ctx: &Context, reason: String) -> anyhow::Result<SharedChoice> {
    let path = ctx.dirs.shared_vault_path(&ctx.flavour);
    if let Some(not_created) = NotCreatedYet::at(&path, ctx.flavour.service(), ctx) {
        return Ok(SharedChoice {
            store: Arc::new(not_created),
            reason,
            identity: vault_identity(ctx),
            os_keyring: None,
            vault: None,
        });
    }
    let vault = open_vault(&path, ctx.flavour.service(), ctx)?;
    let os_keyring = Some(vault.protection().is_os_keyring());
    let vault = Arc::new(vault);
    Ok(SharedChoice {
        store: vault.clone(),
        reason,
        identity: vault_identity(ctx),
        os_keyring,
        vault: Some(vault),
    })
}

/// The identity of the shared store this command means, as the broker names the one it
/// serves, when it can be told without opening anything: explicit choices, and `auto` once it
/// has chosen. `None`: any (`auto` before its first choice), or not through a broker.
pub fn expected_identity(ctx: &Context) -> Option<String> {
    match ctx.store {
        StoreChoice::Memory => None,
        StoreChoice::Vault => vault_identity(ctx),
        StoreChoice::SecretService => secret_service_identity(ctx),
        StoreChoice::Openbao => crate::openbao::identity(ctx),
        // An unreadable record is reported by the direct open; the broker's own open met it
        // too, or it would not be serving.
        StoreChoice::Auto => match read_auto_choice(&ctx.dirs.auto_choice_path(&ctx.flavour)) {
            Ok(Some(AutoChoice::Vault)) => vault_identity(ctx),
            Ok(Some(AutoChoice::SecretService)) => secret_service_identity(ctx),
            // Not chosen yet here: the store this command would choose now, as `open_auto`
            // does. A broker started for it chooses the same; one serving another data
            // directory's vault is refused (found by QA: with another XDG_DATA_HOME, commands
            // read and wrote the running broker's vault without a word).
            Ok(None) => {
                let report = ctx.probe_secret_service();
                if report.is_usable() || report.is_locked() {
                    secret_service_identity(ctx)
                } else {
                    vault_identity(ctx)
                }
            }
            Err(_) => None,
        },
    }
}

fn secret_service_identity(ctx: &Context) -> Option<String> {
    Some(format!("secret-service:{}", ctx.flavour.service()))
}

/// How `open` should treat the legacy -> shared migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migration {
    /// The first operation runs a pass (the normal case).
    Lazy,
    /// No pass runs on the first operation: the caller runs one itself and wants its report
    /// (`migrate`), or only reports what is left to do (`doctor`).
    Explicit,
}

/// Opens the app's storage: the shared store plus, if configured, its legacy store and journal.
///
/// If the shared store cannot be opened but the app has a legacy store, the storage still
/// works: writes are acknowledged into the legacy store and queued for repair, reads of keys
/// this app holds are served, and the user is told (here and by `doctor`).
pub fn open(ctx: &Context) -> anyhow::Result<Opened> {
    let opened = open_with(ctx, Migration::Lazy)?;
    if let Some(why) = &opened.legacy_set_aside {
        // Said, not silent: the user configured a store this command leaves alone.
        eprintln!("keyshare: warning: {why}");
    }
    Ok(opened)
}

/// Whether a shared store that could not be opened is out of reach for now (the legacy store
/// then carries the app, and repairs catch up), rather than refused on purpose: a broker
/// serving another store, a protection this config requires and the store lacks, a vault file
/// others could read (found by QA: writes were acknowledged into the legacy copy instead of
/// refused, exit 6), or a policy that denies this app are settings to fix. Working from the
/// legacy store through those would queue repairs for a store the app did not ask for (found
/// by QA: exit 0 and a warning).
fn is_outage(err: &anyhow::Error) -> bool {
    !matches!(
        err.downcast_ref::<keyshare::Error>(),
        Some(
            keyshare::Error::Invalid {
                what: "broker store" | "vault permissions",
                ..
            } | keyshare::Error::ProtectionUnavailable(_)
                | keyshare::Error::Unavailable {
                    reason: UnavailableReason::Denied,
                    ..
                }
        )
    )
}

/// [`open`], choosing how migration runs.
/// The app's legacy store could not be opened (a damaged state database, a locked keyring):
/// says which, so that `doctor` reports it as the legacy store's problem instead of the shared
/// store's. Shown as the error it wraps (the chain's next cause), so messages read as before.
#[derive(Debug)]
pub struct LegacyOpenFailed {
    pub kind: &'static str,
    pub location: String,
    message: String,
}

impl std::fmt::Display for LegacyOpenFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl LegacyOpenFailed {
    fn wrap(kind: &'static str, location: String, err: anyhow::Error) -> anyhow::Error {
        let message = crate::exit::one_line(&err);
        err.context(LegacyOpenFailed {
            kind,
            location,
            message,
        })
    }
}

pub fn open_with(ctx: &Context, migration: Migration) -> anyhow::Result<Opened> {
    let legacy_for = ctx.config.legacy(&ctx.app, &ctx.flavour);
    let legacy_config = legacy_for.store();
    let shared = match open_shared(ctx) {
        Ok(shared) => shared,
        Err(err) if legacy_config.is_some() && is_outage(&err) => {
            eprintln!(
                "keyshare: warning: the shared store cannot be opened, so this app works from its \
                 legacy store and queues repairs: {}",
                crate::exit::one_line(&err)
            );
            // The stand-in says "<store> is unavailable (<reason>): " itself: it gets the
            // detail alone, not that again (found in review: "vault is unavailable (locked):
            // vault is unavailable (locked): ...").
            let (reason, detail) = match err.downcast_ref::<keyshare::Error>() {
                Some(keyshare::Error::Unavailable { reason, detail, .. }) => {
                    (*reason, detail.clone())
                }
                _ => (UnavailableReason::Backend, crate::exit::one_line(&err)),
            };
            let stand_in: Arc<dyn Store> = Arc::new(UnreachableStore::new(
                shared_placeholder_info(ctx),
                reason,
                detail,
            ));
            // The policy holds in an outage too: a key this app may not use is refused, not
            // written to its own store and queued for a repair the broker would refuse
            // forever (found by QA: the app read the denied key back from its own copy).
            let stand_in = if ctx.routing.direct {
                stand_in
            } else {
                crate::policed::police(stand_in, &crate::broker::policy(&ctx.config)?, &ctx.app)?
            };
            SharedChoice {
                store: stand_in,
                reason: format!("could not be opened: {}", crate::exit::one_line(&err)),
                identity: shared_placeholder_identity(ctx),
                os_keyring: None,
                vault: None,
            }
        }
        Err(err) => return Err(err),
    };
    let mut builder = SecretStorage::builder(shared.store.clone())
        .limits(ctx.limits)
        .lazy_migration(migration == Migration::Lazy);
    let mut legacy = None;
    let mut journal_store = None;
    match legacy_config {
        None => {}
        Some(LegacyConfig::Vault) => {
            let path = ctx.dirs.app_vault_path(&ctx.flavour, &ctx.app);
            // Doctor, before the app's first write: nothing in it, no journal either.
            if let Some(not_created) = NotCreatedYet::at(&path, "legacy", ctx) {
                let store: Arc<dyn Store> = Arc::new(not_created);
                builder = builder.legacy(store.clone());
                legacy = Some(store);
            } else {
                let store = open_vault(&path, "legacy", ctx)
                    .map_err(|e| LegacyOpenFailed::wrap("vault", path.display().to_string(), e))?;
                // The journal's "migrated" and "dirty" marks are facts about one particular shared
                // store: its namespace names that store, so they are never applied to another when
                // the choice changes (`auto` may pick the keyring one day and the vault the next).
                // A shared store that forgets everything at exit gets a journal that does too.
                let journal: Arc<dyn Store> = match &shared.identity {
                    Some(identity) => journal_in(&store, identity, ctx)?,
                    None => Arc::new(MemoryStore::new()),
                };
                let store: Arc<dyn Store> = Arc::new(store);
                builder = builder.legacy(store.clone()).journal(journal.clone());
                legacy = Some(store);
                journal_store = Some(journal);
            }
        }
        Some(LegacyConfig::Electron(electron)) => {
            let config = electron.store_config();
            let store = config
                .open(ctx.app.as_str(), ctx.timeout)
                .map_err(|e| LegacyOpenFailed::wrap("electron", config.state_db(), e))?;
            // The journal cannot live in the state database (the app owns it): it lives in the
            // app's own vault, namespaced by the shared store as above.
            let journal_vault = ctx.dirs.app_vault_path(&ctx.flavour, &ctx.app);
            let journal: Arc<dyn Store> = match &shared.identity {
                // Doctor, before the app's first write: no journal, so nothing pending.
                Some(_) if NotCreatedYet::at(&journal_vault, "journal", ctx).is_some() => {
                    Arc::new(MemoryStore::new())
                }
                Some(identity) => {
                    let vault = open_vault(&journal_vault, &format!("journal:{identity}"), ctx)?;
                    journal_in(&vault, identity, ctx)?
                }
                None => Arc::new(MemoryStore::new()),
            };
            builder = builder.legacy(store.clone()).journal(journal.clone());
            legacy = Some(store);
            journal_store = Some(journal);
        }
    }
    match &legacy {
        Some(store) => {
            let info = store.info();
            tracing::debug!(
                app = %ctx.app,
                store = info.kind,
                location = %info.location,
                "opened the app's legacy store"
            );
        }
        None => tracing::debug!(app = %ctx.app, "the app has no legacy store"),
    }
    Ok(Opened {
        storage: builder.build(),
        shared,
        legacy,
        journal: journal_store,
        app: ctx.app.clone(),
        legacy_set_aside: legacy_for.set_aside(&ctx.app, &ctx.flavour),
    })
}

/// A vault `doctor` names but does not create (see `Routing::look_only`): nothing is at its
/// path yet. It holds nothing and takes no write (doctor writes nothing).
#[derive(Debug)]
struct NotCreatedYet {
    path: std::path::PathBuf,
    namespace: String,
}

impl NotCreatedYet {
    /// `Some` when this command creates nothing and nothing is at `path` (a dangling link is
    /// something, and a path that cannot be looked at is not "nothing": opening it says what is
    /// wrong).
    fn at(path: &Path, namespace: &str, ctx: &Context) -> Option<Self> {
        let absent = matches!(
            std::fs::symlink_metadata(path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound
        );
        (ctx.routing.look_only && absent).then(|| Self {
            path: path.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    fn refused(&self) -> keyshare::Error {
        keyshare::Error::unavailable(
            "vault",
            UnavailableReason::NotRunning,
            format!(
                "{} does not exist yet, and doctor creates nothing",
                self.path.display()
            ),
        )
    }
}

impl Store for NotCreatedYet {
    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "vault",
            location: format!("{} (namespace {})", self.path.display(), self.namespace),
            protection: NOT_CREATED_YET.to_owned(),
        }
    }

    fn get(&self, _key: &keyshare::SecretKey) -> keyshare::Result<Option<SecretValue>> {
        Ok(None)
    }

    fn set(&self, _key: &keyshare::SecretKey, _value: &SecretValue) -> keyshare::Result<()> {
        Err(self.refused())
    }

    fn delete(&self, _key: &keyshare::SecretKey) -> keyshare::Result<bool> {
        Err(self.refused())
    }

    fn keys(&self) -> keyshare::Result<Vec<keyshare::SecretKey>> {
        Ok(Vec::new())
    }
}

/// What `doctor` says protects a vault that does not exist yet.
pub const NOT_CREATED_YET: &str = "none yet: the vault does not exist; the first command that \
                                   uses it creates it and its key";

/// Whether `auto` chose the vault for this flavour (its record says so).
pub fn auto_chose_vault(ctx: &Context) -> bool {
    ctx.store == StoreChoice::Auto
        && matches!(
            read_auto_choice(&ctx.dirs.auto_choice_path(&ctx.flavour)),
            Ok(Some(AutoChoice::Vault))
        )
}

/// The store `ctx.store` names, `auto` resolved to the one it chose on the flavour's first use
/// (the vault before it chose: the Secret Service is chosen only when it answers). Names the
/// shared store that could not be opened, and so the journal its repairs are kept in.
fn attempted_store(ctx: &Context) -> StoreChoice {
    match ctx.store {
        StoreChoice::Auto => match read_auto_choice(&ctx.dirs.auto_choice_path(&ctx.flavour)) {
            Ok(Some(AutoChoice::SecretService)) => StoreChoice::SecretService,
            _ => StoreChoice::Vault,
        },
        other => other,
    }
}

pub fn shared_placeholder_identity(ctx: &Context) -> Option<String> {
    match attempted_store(ctx) {
        StoreChoice::SecretService => secret_service_identity(ctx),
        StoreChoice::Memory => None,
        StoreChoice::Openbao => crate::openbao::identity(ctx),
        _ => vault_identity(ctx),
    }
}

/// What the shared store would have been, for `doctor`, when it (or the app's legacy store)
/// could not be opened.
pub fn shared_placeholder_info(ctx: &Context) -> StoreInfo {
    match attempted_store(ctx) {
        StoreChoice::Openbao => crate::openbao::placeholder_info(ctx),
        // Not the vault: `--store memory` with a legacy store that failed to open was
        // reported as the vault, which that command would never use (found by QA).
        StoreChoice::Memory => MemoryStore::new().info(),
        StoreChoice::SecretService => StoreInfo {
            kind: "secret-service",
            location: ctx.flavour.service().to_owned(),
            protection: "unknown (not reachable)".to_owned(),
        },
        _ => StoreInfo {
            kind: "vault",
            location: ctx
                .dirs
                .shared_vault_path(&ctx.flavour)
                .display()
                .to_string(),
            protection: "unknown (could not be opened)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshare::{SecretKey, SecretValue};

    #[test]
    fn adopting_a_journal_moves_its_entries_and_keeps_the_later_name_s() {
        let key = |s: &str| SecretKey::new(s).unwrap();
        let value = |s: &str| SecretValue::from_slice(s.as_bytes());
        let (earlier, journal) = (MemoryStore::new(), MemoryStore::new());
        earlier.set(&key("dirty:a"), &value("earlier a")).unwrap();
        earlier.set(&key("dirty:b"), &value("earlier b")).unwrap();
        journal.set(&key("dirty:b"), &value("now b")).unwrap();
        adopt_journal(&earlier, &journal, false).unwrap();
        assert!(earlier.keys().unwrap().is_empty());
        let read = |k: &str| journal.get(&key(k)).unwrap().unwrap();
        assert_eq!(read("dirty:a").expose_secret(), b"earlier a");
        assert_eq!(read("dirty:b").expose_secret(), b"now b");

        // Doctor's copy: the earlier journal keeps its entries.
        let (earlier, journal) = (MemoryStore::new(), MemoryStore::new());
        earlier.set(&key("dirty:a"), &value("earlier a")).unwrap();
        adopt_journal(&earlier, &journal, true).unwrap();
        assert_eq!(earlier.keys().unwrap(), vec![key("dirty:a")]);
        assert_eq!(journal.keys().unwrap(), vec![key("dirty:a")]);
    }

    /// A memory store whose entry `bad` cannot be read.
    #[derive(Debug)]
    struct OneUnreadable(MemoryStore);

    impl Store for OneUnreadable {
        fn info(&self) -> StoreInfo {
            self.0.info()
        }
        fn get(&self, key: &SecretKey) -> keyshare::Result<Option<SecretValue>> {
            if key.as_str() == "bad" {
                return Err(keyshare::Error::Corrupt {
                    store: "test".into(),
                    key: Some("bad".into()),
                    detail: "unreadable".into(),
                });
            }
            self.0.get(key)
        }
        fn set(&self, key: &SecretKey, value: &SecretValue) -> keyshare::Result<()> {
            self.0.set(key, value)
        }
        fn delete(&self, key: &SecretKey) -> keyshare::Result<bool> {
            self.0.delete(key)
        }
        fn keys(&self) -> keyshare::Result<Vec<SecretKey>> {
            self.0.keys()
        }
    }

    /// One entry that cannot be read does not stop the others from moving, nor the command
    /// (found in review: every command of the app failed); it stays where it was.
    #[test]
    fn adopting_a_journal_leaves_an_unreadable_entry_and_moves_the_rest() {
        let key = |s: &str| SecretKey::new(s).unwrap();
        let earlier = OneUnreadable(MemoryStore::new());
        let journal = MemoryStore::new();
        for k in ["a", "bad", "z"] {
            earlier
                .0
                .set(&key(k), &SecretValue::from_slice(b"entry"))
                .unwrap();
        }
        adopt_journal(&earlier, &journal, false).unwrap();
        assert_eq!(earlier.keys().unwrap(), [key("bad")]);
        let mut moved = journal.keys().unwrap();
        moved.sort();
        assert_eq!(moved, [key("a"), key("z")]);
    }

    #[test]
    fn resolving_a_path_resolves_its_existing_part_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let canonical = std::fs::canonicalize(&real).unwrap();
        assert_eq!(
            resolved(&dir.path().join("link/a/b.db")),
            canonical.join("a/b.db")
        );
        assert_eq!(
            resolved(&dir.path().join("link/../real/b.db")),
            canonical.join("b.db")
        );
    }
}
