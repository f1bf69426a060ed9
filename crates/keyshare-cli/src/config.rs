//! `config.toml` and the XDG directories.
//!
//! With no config file at all everything works with defaults: flavour `stable`, store `auto`,
//! no legacy stores. An app id the file does not name gets the same defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use keyshare::{AppId, Flavour};
use serde::Deserialize;

/// Which store holds a flavour's shared secrets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StoreChoice {
    /// The Secret Service when one runs (even locked), else the vault; decided on a flavour's
    /// first use and kept.
    #[default]
    Auto,
    /// The OS keyring over D-Bus (gnome-keyring, KeePassXC, KWallet).
    SecretService,
    /// The embedded encrypted SQLite vault.
    Vault,
    /// Process memory: nothing persists (for tests and experiments).
    Memory,
    /// An OpenBao (or HashiCorp Vault) KV v2 mount shared by several machines: `[openbao]`.
    Openbao,
}

impl StoreChoice {
    pub fn name(self) -> &'static str {
        match self {
            StoreChoice::Auto => "auto",
            StoreChoice::SecretService => "secret-service",
            StoreChoice::Vault => "vault",
            StoreChoice::Memory => "memory",
            StoreChoice::Openbao => "openbao",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Flavour used when `--flavor` is not given.
    pub default_flavor: Option<String>,
    /// Shared store selection.
    #[serde(default)]
    pub store: StoreChoice,
    /// Refuse to run the vault unless its key is protected by the OS keyring.
    #[serde(default)]
    pub require_os_keyring: bool,
    /// Start a broker automatically when none answers.
    #[allow(dead_code)] // read by the vault and broker wiring, landing next
    pub autostart: Option<bool>,
    /// Store call timeout, in milliseconds.
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub flavors: BTreeMap<String, FlavorConfig>,
    #[serde(default)]
    pub apps: BTreeMap<String, AppConfig>,
    /// What the broker lets app ids that `[apps.*]` does not name do: `all_keys` (the
    /// default) or `refuse`. Without `refuse`, a `shared_keys` list binds only the apps that
    /// declare that id: any process can declare another.
    #[serde(default)]
    pub unlisted_apps: keyshare_broker::access::UnlistedApps,
    /// The OpenBao server, for `store = "openbao"`.
    pub openbao: Option<crate::openbao::OpenBaoSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlavorConfig {
    /// The shared service name: the namespace of the flavour's shared store.
    pub service: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The app's own legacy store, dual-written and migrated from: one table, or a list of
    /// them, one per flavour (`[Config::legacy]` picks the command's).
    #[serde(default, deserialize_with = "one_or_many")]
    pub legacy: Vec<LegacyConfig>,
    /// Executables allowed to use this app id through the broker.
    #[serde(default)]
    pub executables: Vec<PathBuf>,
    /// Keys this app may use through the broker; absent means every key.
    pub shared_keys: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LegacyConfig {
    /// A private vault of the app's own under the data directory.
    Vault,
    /// An Electron app's state database (VS Code and its forks), e.g.
    /// `{ kind = "electron", app_name = "Code", user_data_dir = "..." }`.
    Electron(ElectronLegacy),
}

/// An Electron app's state database as an app's legacy store, for one flavour.
///
/// A VS Code build of one flavour keeps its own database (`Code` for stable, `Code - Insiders`
/// for insiders), and flavours never see each other's secrets: a command of another flavour
/// must neither read this database (lazy migration would copy its secrets into that flavour's
/// shared store) nor write its values there (found by QA: `--flavor insiders` read stable
/// VS Code's token and wrote insiders values into stable's database).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectronLegacy {
    /// The app's product name (`Code`, `Code - Insiders`, `VSCodium`, `Cursor`, ...).
    pub app_name: String,
    /// Its user-data directory [default: located from the app name].
    pub user_data_dir: Option<PathBuf>,
    /// How it stores its key [default: the OS's usual store].
    pub password_store: Option<crate::cmd::legacy::PasswordStore>,
    /// Write even while the app runs (it may then lose what keyshare wrote).
    #[serde(default)]
    pub force: bool,
    /// The flavour whose commands use this database [default: the one `app_name` implies:
    /// insiders for a name ending in ` - Insiders`, else stable].
    pub flavor: Option<String>,
}

impl ElectronLegacy {
    /// The flavour this database belongs to.
    pub fn flavour_name(&self) -> &str {
        self.flavor
            .as_deref()
            .or_else(|| implied_flavour(&self.app_name))
            .unwrap_or(STABLE)
    }

    /// The store's own settings, to open it.
    pub fn store_config(&self) -> crate::cmd::legacy::ElectronConfig {
        crate::cmd::legacy::ElectronConfig {
            app_name: self.app_name.clone(),
            user_data_dir: self.user_data_dir.clone(),
            password_store: self.password_store,
            force: self.force,
        }
    }
}

const STABLE: &str = "stable";
const INSIDERS: &str = "insiders";
/// How VS Code (and forks that follow it, `VSCodium - Insiders`) names its Insiders build.
const INSIDERS_SUFFIX: &str = " - Insiders";

/// The flavour an Electron product name belongs to, when the name says: an Insiders build's
/// ends in ` - Insiders`; `Code` and `VSCodium` are stable. `None` for a product keyshare
/// knows no flavours of (`Cursor`).
pub fn implied_flavour(app_name: &str) -> Option<&'static str> {
    if app_name.ends_with(INSIDERS_SUFFIX) {
        Some(INSIDERS)
    } else if matches!(app_name, "Code" | "VSCodium" | "Code - OSS") {
        Some(STABLE)
    } else {
        None
    }
}

/// VS Code's product name in `flavour`: what `import vscode` reads when not told.
pub fn vscode_app_name(flavour: &Flavour) -> String {
    if flavour.name() == INSIDERS {
        format!("Code{INSIDERS_SUFFIX}")
    } else {
        "Code".to_owned()
    }
}

impl LegacyConfig {
    /// Whether this legacy store serves commands of flavour `flavour`. An app's own vault
    /// lives in the flavour's data directory, so each flavour has its own anyway.
    fn serves(&self, flavour: &str) -> bool {
        match self {
            LegacyConfig::Vault => true,
            LegacyConfig::Electron(electron) => electron.flavour_name() == flavour,
        }
    }

    /// What it is, for messages.
    pub fn describe(&self) -> String {
        match self {
            LegacyConfig::Vault => "its own vault".to_owned(),
            LegacyConfig::Electron(electron) => format!(
                "{}'s state database, which belongs to the {} flavour",
                electron.app_name,
                electron.flavour_name()
            ),
        }
    }
}

/// `legacy = { ... }` or `legacy = [{ ... }, { ... }]` (also `[[apps.<id>.legacy]]`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<LegacyConfig>, D::Error> {
    struct OneOrMany;
    impl<'de> serde::de::Visitor<'de> for OneOrMany {
        type Value = Vec<LegacyConfig>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a legacy store table, or a list of them (one per flavour)")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            LegacyConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                .map(|one| vec![one])
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

/// Which legacy store, if any, an app has in one flavour.
#[derive(Debug)]
pub enum LegacyFor<'a> {
    /// None is configured.
    None,
    /// This one.
    Store(&'a LegacyConfig),
    /// Those configured belong to other flavours: this flavour's commands leave them alone.
    /// What they are, for the warning.
    OtherFlavours(Vec<String>),
}

impl LegacyFor<'_> {
    pub fn store(&self) -> Option<&LegacyConfig> {
        match self {
            LegacyFor::Store(store) => Some(store),
            _ => None,
        }
    }

    /// What to tell the user when the app's legacy stores belong to other flavours.
    pub fn set_aside(&self, app: &AppId, flavour: &Flavour) -> Option<String> {
        let LegacyFor::OtherFlavours(others) = self else {
            return None;
        };
        let name = flavour.name();
        Some(format!(
            "app {app}'s legacy store ({}) is not used by this {name} command, since flavours \
             never share secrets: its secrets are not read, migrated or written here. If the \
             app has a build for the {name} flavour, add its store to [apps.{app}] (legacy = \
             [{{ ... }}, {{ \
             kind = \"electron\", app_name = \"...\", flavor = \"{name}\" }}])",
            others.join("; ")
        ))
    }
}

/// The XDG base directories, resolved once from the environment.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub config_home: PathBuf,
    pub data_home: PathBuf,
    #[allow(dead_code)] // read by the vault and broker wiring, landing next
    pub runtime_dir: Option<PathBuf>,
    /// `$XDG_STATE_HOME` (default `~/.local/state`): logs. `None` without it and without
    /// `HOME`; only the broker's log needs it, so no command fails for it.
    pub state_home: Option<PathBuf>,
}

fn absolute_env(name: &str) -> Option<PathBuf> {
    // The XDG spec says relative paths in these variables are invalid and must be ignored.
    std::env::var_os(name)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
}

impl Dirs {
    pub fn from_env() -> anyhow::Result<Self> {
        let home = || -> anyhow::Result<PathBuf> {
            absolute_env("HOME").context(
                "cannot find your home directory: set HOME or XDG_DATA_HOME and XDG_CONFIG_HOME",
            )
        };
        let config_home = match absolute_env("XDG_CONFIG_HOME") {
            Some(p) => p,
            None => home()?.join(".config"),
        };
        let data_home = match absolute_env("XDG_DATA_HOME") {
            Some(p) => p,
            None => home()?.join(".local/share"),
        };
        Ok(Dirs {
            config_home,
            data_home,
            runtime_dir: absolute_env("XDG_RUNTIME_DIR"),
            state_home: absolute_env("XDG_STATE_HOME")
                .or_else(|| absolute_env("HOME").map(|home| home.join(".local/state"))),
        })
    }

    pub fn default_config_path(&self) -> PathBuf {
        self.config_home.join("keyshare").join("config.toml")
    }

    /// `$XDG_DATA_HOME/keyshare/<flavour>`
    pub fn flavour_data_dir(&self, flavour: &Flavour) -> PathBuf {
        self.data_home.join("keyshare").join(flavour.name())
    }

    /// The flavour's shared vault.
    pub fn shared_vault_path(&self, flavour: &Flavour) -> PathBuf {
        self.flavour_data_dir(flavour).join("vault.db")
    }

    /// Which store `auto` chose on the flavour's first use (see `stores::open_direct_shared`).
    pub fn auto_choice_path(&self, flavour: &Flavour) -> PathBuf {
        self.flavour_data_dir(flavour).join("auto-store")
    }

    /// Where a broker started by a client (`serve --autostarted`) logs:
    /// `$XDG_STATE_HOME/keyshare/<flavour>/broker.log`.
    pub fn broker_log_path(&self, flavour: &Flavour) -> Option<PathBuf> {
        let dir = self
            .state_home
            .as_ref()?
            .join("keyshare")
            .join(flavour.name());
        Some(dir.join("broker.log"))
    }

    /// An app's private vault: its legacy store and its repair journal.
    pub fn app_vault_path(&self, flavour: &Flavour, app: &AppId) -> PathBuf {
        self.flavour_data_dir(flavour)
            .join("apps")
            .join(format!("{}.db", app.as_str()))
    }
}

impl Config {
    /// Loads `path`; a missing file at the default location means defaults, a missing file
    /// that was named explicitly is an error.
    pub fn load(path: &Path, explicit: bool) -> anyhow::Result<Self> {
        let text = match read_regular_file(path) {
            Ok(text) => text,
            Err(ReadError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default())
            }
            Err(ReadError::Io(err)) => {
                return Err(anyhow::Error::new(ConfigError(format!(
                    "cannot read config file {}: {err}",
                    path.display()
                ))))
            }
            Err(ReadError::Untrusted(why)) => {
                return Err(anyhow::Error::new(keyshare::Error::invalid(
                    "config permissions",
                    format!(
                        "refusing config file {}: {why}. It decides where secrets are stored, \
                         whether the OS keyring must protect them and which apps the broker lets \
                         read which keys, so only you (or root) may be able to change it",
                        path.display()
                    ),
                )))
            }
            Err(ReadError::NotRegular(kind)) => {
                return Err(anyhow::Error::new(ConfigError(format!(
                    "config file {} is {kind}, not a regular file; keyshare reads its settings \
                     only from a regular file: replace it with one",
                    path.display()
                ))))
            }
        };
        let config: Config = toml::from_str(&text).map_err(|err| {
            // Where, by line and column, not by quoting the line: the message lands in logs.
            let at = err
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" (line {line}, column {column})")
                })
                .unwrap_or_default();
            anyhow::Error::new(ConfigError(format!(
                "config file {} is invalid{at}: {}",
                path.display(),
                err.message()
            )))
        })?;
        config.validate().map_err(|err| {
            anyhow::Error::new(ConfigError(format!(
                "config file {} is invalid: {}",
                path.display(),
                crate::exit::one_line(&err)
            )))
        })?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let mut services: BTreeMap<String, &str> = BTreeMap::new();
        for (name, flavor) in &self.flavors {
            let f = match &flavor.service {
                Some(service) => Flavour::new(name, service),
                None => Flavour::with_default_service(name),
            };
            let f = f.with_context(|| format!("[flavors.{name}]"))?;
            // Flavours never share secrets: two with one namespace would (found by QA: two
            // brokers then served one store, each with its own order and events, and doctor
            // saw no problem). Another flavour that the file does not configure has the default
            // namespace of its name.
            let other = services.insert(f.service().to_owned(), name).or_else(|| {
                Self::default_service_owner(f.service())
                    .filter(|owner| *owner != name && !self.flavors.contains_key(*owner))
            });
            if let Some(other) = other {
                bail!(
                    "[flavors.{name}] service {:?} is also flavour {other}'s, so the two flavours \
                     would share their secrets; give each flavour a service of its own",
                    f.service()
                );
            }
        }
        for (name, app) in &self.apps {
            AppId::new(name).with_context(|| format!("[apps.{name}]"))?;
            // Checked with the file, not only when a broker builds its policy: a command that
            // never serves would otherwise take a rule that can never work (found by QA).
            for pattern in app.shared_keys.iter().flatten() {
                keyshare_broker::access::KeyPattern::new(pattern.clone())
                    .with_context(|| format!("[apps.{name}] shared_keys"))?;
            }
            self.validate_legacy(name, app)?;
            if let Some(path) = app.executables.iter().find(|p| !p.is_absolute()) {
                bail!(
                    "[apps.{name}] executables: {} is not an absolute path (the broker compares \
                     it with the path of the program that connects)",
                    path.display()
                );
            }
        }
        if let Some(name) = &self.default_flavor {
            self.flavour(name).context("default_flavor")?;
        }
        match self.timeout_ms {
            Some(0) => bail!("timeout_ms must be at least 1"),
            Some(ms) if ms > MAX_TIMEOUT_MS => {
                bail!("timeout_ms is {ms}: at most {MAX_TIMEOUT_MS} (an hour) is taken")
            }
            _ => {}
        }
        if let Some(openbao) = &self.openbao {
            openbao.validate()?;
        }
        Ok(())
    }

    /// An app's legacy stores: valid flavour names, and at most one store per flavour (which
    /// would a command of that flavour write to?).
    fn validate_legacy(&self, name: &str, app: &AppConfig) -> anyhow::Result<()> {
        let mut flavours = Vec::new();
        for legacy in &app.legacy {
            match legacy {
                LegacyConfig::Vault if app.legacy.len() > 1 => bail!(
                    "[apps.{name}] legacy: a vault legacy store serves every flavour (each has \
                     its own), so it cannot be listed with other legacy stores"
                ),
                LegacyConfig::Vault => {}
                LegacyConfig::Electron(electron) => {
                    let flavour = electron.flavour_name();
                    self.flavour(flavour)
                        .with_context(|| format!("[apps.{name}] legacy flavor"))?;
                    if flavours.contains(&flavour) {
                        bail!(
                            "[apps.{name}] legacy: two stores for the {flavour} flavour; give \
                             each its own `flavor`"
                        );
                    }
                    flavours.push(flavour);
                }
            }
        }
        Ok(())
    }

    /// The legacy store app `app` uses in flavour `flavour`.
    pub fn legacy(&self, app: &AppId, flavour: &Flavour) -> LegacyFor<'_> {
        let Some(configured) = self.app(app).map(|a| &a.legacy) else {
            return LegacyFor::None;
        };
        if configured.is_empty() {
            return LegacyFor::None;
        }
        match configured.iter().find(|l| l.serves(flavour.name())) {
            Some(store) => LegacyFor::Store(store),
            None => {
                LegacyFor::OtherFlavours(configured.iter().map(LegacyConfig::describe).collect())
            }
        }
    }

    /// The flavour whose default service name `service` is, if it is one.
    fn default_service_owner(service: &str) -> Option<&str> {
        if service == "dev.keyshare.shared-secrets" {
            return Some("stable");
        }
        service
            .strip_prefix("dev.keyshare.")?
            .strip_suffix(".shared-secrets")
            .filter(|name| {
                Flavour::with_default_service(*name).is_ok_and(|f| f.service() == service)
            })
    }

    /// The flavour named `name`, with its configured service name or the default one.
    pub fn flavour(&self, name: &str) -> keyshare::Result<Flavour> {
        match self.flavors.get(name).and_then(|f| f.service.as_deref()) {
            Some(service) => Flavour::new(name, service),
            None => Flavour::with_default_service(name),
        }
    }

    pub fn app(&self, app: &AppId) -> Option<&AppConfig> {
        self.apps.get(app.as_str())
    }
}

/// Why [`read_regular_file`] read nothing.
enum ReadError {
    Io(std::io::Error),
    /// What the path is instead ("a FIFO", "a directory", ...).
    NotRegular(&'static str),
    /// Why another user could have written it, and what to do.
    Untrusted(String),
}

/// The text of the regular file at `path` (a symlink to one included).
///
/// Opened without blocking, then checked on the open descriptor: opening a FIFO waits for a
/// writer, forever if none comes (found by QA: every command hung, and a running broker's
/// policy reload stopped for good). `O_NONBLOCK` changes nothing for reading a regular file,
/// and checking the descriptor, not the path, leaves no gap for a swap between check and read.
fn read_regular_file(path: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(err) => {
            // A socket cannot be opened at all (ENXIO, "no such device or address"): say
            // what is there rather than that.
            return Err(match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => ReadError::NotRegular(file_kind(&meta)),
                _ => ReadError::Io(err),
            });
        }
    };
    let meta = file.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(file_kind(&meta)));
    }
    if let Some(why) = untrusted(&meta, path) {
        return Err(ReadError::Untrusted(why));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(ReadError::Io)?;
    Ok(text)
}

/// Why the config file `meta` describes, at `path`, could have been written by another user,
/// if it could: as ssh checks its config, the file must belong to this user or root and be
/// writable by no one else, and its directory must be one that others cannot put another file
/// into (found by QA: a file anyone could write was used without a word).
fn untrusted(meta: &std::fs::Metadata, path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let foreign = |uid: u32| uid != me && uid != 0;
    let mode = meta.mode() & 0o7777;
    if foreign(meta.uid()) {
        return Some(format!(
            "it belongs to uid {}, not to you (uid {me}) or root; `chown {me} {}` if it is yours",
            meta.uid(),
            path.display()
        ));
    }
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && !private_group(meta.gid())) {
        return Some(format!(
            "group or others can write it (mode {:o}); `chmod go-w {}`",
            mode & 0o777,
            path.display()
        ));
    }
    // The link's directory, and for a symlinked config (a dotfile manager's) its target's:
    // whoever can replace either file chooses what is read.
    let spelled = match path.parent() {
        Some(dir) if dir.as_os_str().is_empty() => Path::new(".").to_owned(),
        Some(dir) => dir.to_owned(),
        None => return None,
    };
    let target = std::fs::canonicalize(path)
        .ok()
        .and_then(|real| real.parent().map(Path::to_owned));
    [Some(spelled), target]
        .into_iter()
        .flatten()
        .find_map(|dir| untrusted_dir(&dir))
}

/// Why another user could replace a file in `dir`, if they could.
fn untrusted_dir(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    let dir_meta = std::fs::metadata(dir).ok()?;
    let dir_mode = dir_meta.mode() & 0o7777;
    if dir_meta.uid() != me && dir_meta.uid() != 0 {
        return Some(format!(
            "its directory {} belongs to uid {}, who could replace the file",
            dir.display(),
            dir_meta.uid()
        ));
    }
    // A sticky directory (`/tmp`) lets others add files, but not replace this one.
    let others_write =
        dir_mode & 0o002 != 0 || (dir_mode & 0o020 != 0 && !private_group(dir_meta.gid()));
    if others_write && dir_mode & 0o1000 == 0 {
        return Some(format!(
            "group or others can write its directory {} (mode {:o}), so they could replace \
             the file; `chmod go-w {}`",
            dir.display(),
            dir_mode & 0o777,
            dir.display()
        ));
    }
    None
}

/// Whether group `gid` is this user's private group (the user's own group, with no other
/// member), whose write permission lets no one else in: what umask 002 gives files on systems
/// with user private groups (Debian, Ubuntu, Fedora), as Debian's ssh also allows (found in
/// review: every config a user made there was refused). Decided from /etc/passwd and
/// /etc/group; a group known only to a directory service is not taken for private.
fn private_group(gid: u32) -> bool {
    let me = rustix::process::geteuid().as_raw();
    let entries = |file: &str| std::fs::read_to_string(file).unwrap_or_default();
    let passwd = entries("/etc/passwd");
    // name:password:uid:gid:...
    let Some((name, primary)) = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() > 3 && fields[2].parse() == Ok(me))
            .then(|| (fields[0].to_owned(), fields[3].parse::<u32>().ok()))
    }) else {
        return false;
    };
    if primary != Some(gid) {
        return false;
    }
    // name:password:gid:member,member
    entries("/etc/group").lines().any(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        fields.len() > 3
            && fields[2].parse() == Ok(gid)
            && fields[0] == name
            && fields[3]
                .split(',')
                .all(|member| member.is_empty() || member == name)
    })
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = meta.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "something else"
    }
}

/// The longest `timeout_ms` taken. Stores hand it on to their clients (SQLite's busy timeout
/// is an `int` of milliseconds), so an unbounded value could not be honoured, and it panicked
/// (found by QA: 2^31 ms).
const MAX_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// A config file problem (exit code 5).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two flavours with one namespace would share their secrets: refused with the file,
    /// naming both (found by QA: doctor saw no problem).
    #[test]
    fn two_flavours_with_one_service_are_refused() {
        let check = |text: &str| {
            let config: Config = toml::from_str(text).unwrap();
            config.validate().map_err(|e| crate::exit::one_line(&e))
        };
        let err =
            check("[flavors.insiders]\nservice = \"dev.keyshare.shared-secrets\"\n").unwrap_err();
        assert!(
            err.contains("[flavors.insiders]") && err.contains("stable"),
            "{err}"
        );
        let err = check(
            "[flavors.a]\nservice = \"com.example.s\"\n[flavors.b]\nservice = \"com.example.s\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains("flavour a") && err.contains("[flavors.b]"),
            "{err}"
        );
        let err = check("[flavors.stable]\nservice = \"dev.keyshare.beta.shared-secrets\"\n")
            .unwrap_err();
        assert!(err.contains("flavour beta"), "{err}");
        // A flavour that takes another's default namespace while that one has its own is fine,
        // as is a flavour named with its own default, and `stable`'s name in the default form
        // (stable's default has no name in it).
        check(
            "[flavors.stable]\nservice = \"dev.keyshare.insiders.shared-secrets\"\n\
             [flavors.insiders]\nservice = \"com.example.i\"\n",
        )
        .unwrap();
        check("[flavors.beta]\nservice = \"dev.keyshare.beta.shared-secrets\"\n").unwrap();
        check("[flavors.insiders]\nservice = \"dev.keyshare.stable.shared-secrets\"\n").unwrap();
    }

    #[test]
    fn full_example_parses() {
        let config: Config = toml::from_str(
            r#"
            default_flavor = "insiders"
            store = "vault"
            require_os_keyring = true
            timeout_ms = 2000
            [flavors.stable]
            service = "com.example.app.shared-secrets"
            [apps.code]
            legacy = { kind = "vault" }
            [apps.cursor]
            legacy = { kind = "electron", app_name = "Cursor", user_data_dir = "/u/Cursor", password_store = "basic" }
            [apps.agents]
            executables = ["/usr/bin/agents"]
            shared_keys = ["github.auth"]
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.store, StoreChoice::Vault);
        assert_eq!(
            config.flavour("stable").unwrap().service(),
            "com.example.app.shared-secrets"
        );
        assert_eq!(
            config.flavour("insiders").unwrap().service(),
            "dev.keyshare.insiders.shared-secrets"
        );
        assert!(matches!(
            config.apps["code"].legacy[..],
            [LegacyConfig::Vault]
        ));
        let [LegacyConfig::Electron(electron)] = &config.apps["cursor"].legacy[..] else {
            panic!("electron legacy store expected");
        };
        assert_eq!(electron.app_name, "Cursor");
        assert_eq!(
            electron.user_data_dir.as_deref(),
            Some(Path::new("/u/Cursor"))
        );
        assert!(!electron.force);
    }

    /// Values the file's syntax takes but that cannot work are refused by `validate`, naming
    /// the setting (found by QA: an invalid default flavour was a usage error naming no file,
    /// and a timeout of 2^31 ms panicked).
    #[test]
    fn out_of_range_settings_are_refused_by_name() {
        for (text, says) in [
            ("default_flavor = \"Insiders!\"", "default_flavor"),
            ("timeout_ms = 0", "timeout_ms must be at least 1"),
            (
                "[apps.code]\nshared_keys = [\"\"]",
                "[apps.code] shared_keys",
            ),
            (
                "[apps.code]\nexecutables = [\"bin/code\"]",
                "bin/code is not an absolute path",
            ),
            (
                "[openbao]\naddresses = [\"https://bao.example:8200\"]\nca_file = \"ca.pem\"",
                "[openbao] ca_file: ca.pem is not an absolute path",
            ),
            (
                "timeout_ms = 2147483648",
                "timeout_ms is 2147483648: at most 3600000",
            ),
        ] {
            let config: Config = toml::from_str(text).unwrap();
            let err = format!("{:#}", config.validate().unwrap_err());
            assert!(err.contains(says), "{text}: {err}");
        }
        let edge: Config = toml::from_str("timeout_ms = 3600000").unwrap();
        edge.validate().unwrap();
    }

    /// Which flavour's commands use an Electron database (QA s19 F3: every flavour did).
    #[test]
    fn an_electron_legacy_store_belongs_to_one_flavour() {
        let config: Config = toml::from_str(
            r#"
            [apps.code]
            legacy = [
                { kind = "electron", app_name = "Code" },
                { kind = "electron", app_name = "Code - Insiders" },
            ]
            [apps.cursor]
            legacy = { kind = "electron", app_name = "Cursor" }
            [apps.exp]
            legacy = { kind = "electron", app_name = "Code", flavor = "exploration" }
            [apps.own]
            legacy = { kind = "vault" }
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        let used = |app: &str, flavour: &str| {
            let app = AppId::new(app).unwrap();
            let flavour = Flavour::with_default_service(flavour).unwrap();
            match config.legacy(&app, &flavour) {
                LegacyFor::Store(LegacyConfig::Electron(e)) => Some(e.app_name.clone()),
                LegacyFor::Store(LegacyConfig::Vault) => Some("vault".to_owned()),
                LegacyFor::OtherFlavours(_) => None,
                LegacyFor::None => panic!("{app}: none configured"),
            }
        };
        assert_eq!(used("code", "stable").as_deref(), Some("Code"));
        assert_eq!(used("code", "insiders").as_deref(), Some("Code - Insiders"));
        assert_eq!(used("code", "exploration"), None);
        assert_eq!(used("cursor", "stable").as_deref(), Some("Cursor"));
        assert_eq!(used("cursor", "insiders"), None);
        assert_eq!(used("exp", "exploration").as_deref(), Some("Code"));
        assert_eq!(used("exp", "stable"), None);
        assert_eq!(used("own", "insiders").as_deref(), Some("vault"));
        assert!(matches!(
            config.legacy(
                &AppId::new("other").unwrap(),
                &Flavour::with_default_service("stable").unwrap()
            ),
            LegacyFor::None
        ));
        assert_eq!(implied_flavour("VSCodium - Insiders"), Some("insiders"));
        assert_eq!(
            vscode_app_name(&Flavour::with_default_service("insiders").unwrap()),
            "Code - Insiders"
        );
    }

    /// Which store would a command of that flavour write to? Refused, naming the setting.
    #[test]
    fn two_legacy_stores_for_one_flavour_are_refused() {
        for (legacy, says) in [
            (
                r#"[{ kind = "electron", app_name = "Code" }, { kind = "electron", app_name = "Cursor" }]"#,
                "two stores for the stable flavour",
            ),
            (
                r#"[{ kind = "vault" }, { kind = "electron", app_name = "Code - Insiders" }]"#,
                "a vault legacy store serves every flavour",
            ),
            (
                r#"{ kind = "electron", app_name = "Code", flavor = "Not A Flavour" }"#,
                "[apps.code] legacy flavor",
            ),
        ] {
            let config: Config =
                toml::from_str(&format!("[apps.code]\nlegacy = {legacy}")).unwrap();
            let err = format!("{:#}", config.validate().unwrap_err());
            assert!(err.contains(says), "{legacy}: {err}");
        }
        // A misspelt field is still refused, in a list too.
        let err = toml::from_str::<Config>(
            "[apps.code]\nlegacy = [{ kind = \"electron\", app_name = \"Code\", flavour = \"x\" }]",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `flavour`"), "{err}");
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(toml::from_str::<Config>("stor = \"vault\"").is_err());
        assert!(toml::from_str::<Config>("[apps.code]\nlegacy = { kind = \"nope\" }").is_err());
    }
}
