//! `store = "openbao"`: a flavour's shared secrets in an OpenBao (or HashiCorp Vault) KV v2
//! mount, shared by every machine that points at the same server.
//!
//! ```toml
//! store = "openbao"
//! [openbao]
//! addresses = ["https://bao-1.example:8200", "https://bao-2.example:8200"]
//! mount = "secret"                 # the KV v2 mount (default "secret")
//! prefix = "keyshare"              # the flavour's service name is appended (default "keyshare")
//! ca_file = "/etc/keyshare/bao-ca.pem"   # trust this CA instead of the public web roots
//! auth = "token"                   # or "approle", with role_id (and approle_mount)
//! watch_interval_ms = 2000         # how often `keyshare serve` polls for other machines' writes
//! ```
//!
//! The token, or the AppRole secret id, never sits in the config file: `keyshare openbao-login`
//! reads it from standard input and keeps it in a local vault of its own,
//! `$XDG_DATA_HOME/keyshare/credentials.db`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use keyshare::store::openbao::{NodeState, OpenBaoAuth, OpenBaoConfig, OpenBaoStore};
use keyshare::{MemoryStore, SecretKey, SecretValue, Store, StoreInfo, UnavailableReason};
use keyshare_broker::{ExternalChanges, OpenBaoChanges};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::ConfigError;
use crate::input::read_value;
use crate::stores::{open_vault, Context, SharedChoice};

const TOKEN_KEY: &str = "openbao.token";
const SECRET_ID_KEY: &str = "openbao.secret_id";

/// How the CLI authenticates to the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthKind {
    #[default]
    Token,
    Approle,
}

/// The `[openbao]` section of config.toml. Holds no secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenBaoSection {
    pub addresses: Vec<String>,
    #[serde(default = "default_mount")]
    pub mount: String,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub auth: AuthKind,
    pub role_id: Option<String>,
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// How often the broker polls the KV metadata for other machines' writes.
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
}

fn default_watch_interval_ms() -> u64 {
    2000
}

fn default_mount() -> String {
    "secret".to_owned()
}

fn default_prefix() -> String {
    "keyshare".to_owned()
}

fn default_approle_mount() -> String {
    "approle".to_owned()
}

impl OpenBaoSection {
    /// Checks what can be checked without the server or the CA file.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.addresses.is_empty() {
            bail!("[openbao] addresses: list at least one, e.g. [\"https://bao.example:8200\"]");
        }
        if self.auth == AuthKind::Approle && self.role_id.as_deref().unwrap_or("").is_empty() {
            bail!("[openbao] auth = \"approle\" needs role_id");
        }
        if self.watch_interval_ms == 0 {
            bail!("[openbao] watch_interval_ms: must be at least 1 (milliseconds between polls)");
        }
        // The broker reads it too, and runs in `/`, not where the command that started it
        // ran: a relative path would name another file there.
        if let Some(ca_file) = self.ca_file.as_ref().filter(|p| !p.is_absolute()) {
            bail!(
                "[openbao] ca_file: {} is not an absolute path (the broker, which reads it too, \
                 does not run in this directory)",
                ca_file.display()
            );
        }
        // The library's own checks (address form, mount, prefix), with a throwaway store.
        let mut config = self.library_config("validation", Duration::from_secs(1));
        config.ca_file = None;
        OpenBaoStore::new(config, Arc::new(MemoryStore::new())).context("[openbao]")?;
        Ok(())
    }

    fn credential_key(&self) -> SecretKey {
        let name = match self.auth {
            AuthKind::Token => TOKEN_KEY,
            AuthKind::Approle => SECRET_ID_KEY,
        };
        SecretKey::new(name).expect("constant keys are valid")
    }

    fn library_config(&self, service: &str, timeout: Duration) -> OpenBaoConfig {
        let auth = match self.auth {
            AuthKind::Token => OpenBaoAuth::token(self.credential_key()),
            AuthKind::Approle => OpenBaoAuth::AppRole {
                mount: self.approle_mount.clone(),
                role_id: self.role_id.clone().unwrap_or_default(),
                secret_id_key: self.credential_key(),
            },
        };
        let mut config = OpenBaoConfig::new(self.addresses.clone(), &self.mount, "", auth)
            .with_namespace(&self.prefix)
            .with_namespace(service);
        config.ca_file = self.ca_file.clone();
        config.timeout = call_budget(timeout);
        config.request_timeout = timeout;
        config
    }
}

/// The longest one call of the OpenBao store may take, every failover and backoff included,
/// for the configured store timeout (`timeout_ms`, which bounds each HTTP exchange): twice it,
/// so that a call can fail over and wait out a leader election. A command waiting for a broker
/// that serves this store waits at least this long (`broker::reply_timeout`).
pub fn call_budget(timeout: Duration) -> Duration {
    timeout * 2
}

fn section(ctx: &Context) -> anyhow::Result<&OpenBaoSection> {
    ctx.config.openbao.as_ref().ok_or_else(|| {
        anyhow::Error::new(ConfigError(
            "store \"openbao\" needs an [openbao] section in config.toml with at least \
             `addresses`"
                .to_owned(),
        ))
    })
}

fn credentials_path(ctx: &Context) -> PathBuf {
    ctx.dirs.data_home.join("keyshare").join("credentials.db")
}

/// The local vault that holds the token or secret id.
fn credentials(ctx: &Context, path: &Path) -> anyhow::Result<Arc<dyn Store>> {
    // `doctor` creates nothing: without the vault there is no credential, which it reports.
    if ctx.routing.look_only
        && matches!(std::fs::symlink_metadata(path), Err(err) if err.kind() == std::io::ErrorKind::NotFound)
    {
        return Ok(Arc::new(keyshare::MemoryStore::new()));
    }
    Ok(Arc::new(open_vault(path, "openbao", ctx)?))
}

fn open_store(ctx: &Context) -> anyhow::Result<OpenBaoStore> {
    let section = section(ctx)?;
    let config = section.library_config(ctx.flavour.service(), ctx.timeout);
    let creds = credentials(ctx, &credentials_path(ctx))?;
    Ok(OpenBaoStore::new(config, creds)?.with_credential_advice(login_advice(section)))
}

/// How a CLI user fixes a missing or refused token (or secret id): the command that stores
/// one. The library's own advice names the credentials store's key, which this user never
/// sees.
fn login_advice(section: &OpenBaoSection) -> String {
    let what = match section.auth {
        AuthKind::Token => "a valid token",
        AuthKind::Approle => "a valid secret id",
    };
    format!("run `keyshare openbao-login` with {what} on standard input to store it")
}

/// Stable name of the shared store for the journal: the server and the path, not the node.
pub fn identity(ctx: &Context) -> Option<String> {
    let section = ctx.config.openbao.as_ref()?;
    Some(format!(
        "openbao:{}/{}/{}/{}",
        section.addresses.first().map(String::as_str).unwrap_or(""),
        section.mount,
        section.prefix,
        ctx.flavour.service()
    ))
}

pub fn open_shared(ctx: &Context) -> anyhow::Result<SharedChoice> {
    Ok(SharedChoice {
        store: Arc::new(open_store(ctx)?),
        reason: "chosen explicitly".to_owned(),
        identity: identity(ctx),
        os_keyring: None,
        vault: None,
    })
}

/// The shared store for `keyshare serve`, with the poller that announces other machines'
/// writes. The poller watches the very store the broker writes through, so the broker's own
/// writes are not announced twice.
pub fn open_shared_watched(ctx: &Context) -> anyhow::Result<(SharedChoice, ExternalChanges)> {
    let store = Arc::new(open_store(ctx)?);
    let interval = Duration::from_millis(section(ctx)?.watch_interval_ms);
    // The baseline is taken now, before the broker says it is serving: a write made elsewhere
    // after that message is then always announced. Taken later (on the poller's first tick),
    // a write landing in between would be part of the baseline and never announced.
    let source = match store.snapshot() {
        Ok(baseline) => OpenBaoChanges::since(Arc::clone(&store), baseline),
        Err(err) => {
            tracing::warn!(
                error = %err,
                "could not list the shared store's versions at start; writes made elsewhere \
                 before the first successful poll will not be announced"
            );
            OpenBaoChanges::new(Arc::clone(&store))
        }
    };
    let changes = ExternalChanges::new(Box::new(source), interval);
    let shared = SharedChoice {
        store,
        reason: "chosen explicitly".to_owned(),
        identity: identity(ctx),
        os_keyring: None,
        vault: None,
    };
    Ok((shared, changes))
}

pub fn placeholder_info(ctx: &Context) -> StoreInfo {
    StoreInfo {
        kind: "openbao",
        location: ctx
            .config
            .openbao
            .as_ref()
            .map(|s| s.addresses.join(","))
            .unwrap_or_else(|| "not configured".to_owned()),
        protection: "unknown (could not be opened)".to_owned(),
    }
}

/// `keyshare openbao-login [--from-file PATH]`: checks the token (or AppRole secret id) read
/// from standard input against the server, then keeps it in the local credentials vault.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Read the token or secret id from this file instead of standard input.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
}

pub fn login(args: &LoginArgs, ctx: &Context) -> anyhow::Result<()> {
    let section = section(ctx)?;
    let what = match section.auth {
        AuthKind::Token => "OpenBao token",
        AuthKind::Approle => "AppRole secret id",
    };
    let secret = read_value(args.from_file.as_deref(), &ctx.limits, &format!("{what}: "))?;
    let trimmed = std::str::from_utf8(secret.expose_secret())
        .map(str::trim)
        .map_err(|_| keyshare::Error::invalid("credential", format!("the {what} must be text")))?;
    // What was read is checked here, before anything is contacted: an empty read is a broken
    // pipe or an unset variable far more often than a token (as for `set`, a usage error).
    let source = match &args.from_file {
        Some(path) => path.display().to_string(),
        None => "standard input".to_owned(),
    };
    if trimmed.is_empty() {
        return Err(keyshare::Error::invalid(
            "credential",
            format!(
                "{source} was empty (or only white space), so no {what} was read; nothing was \
                 checked or stored"
            ),
        )
        .into());
    }
    if section.auth == AuthKind::Token && !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(keyshare::Error::invalid(
            "credential",
            format!(
                "what {source} holds is not a token (a token is printable ASCII without spaces); \
                 nothing was checked or stored"
            ),
        )
        .into());
    }
    let secret = SecretValue::from_slice(trimmed.as_bytes());
    // Try it before keeping it: a typo should not replace a working token.
    let trial = Arc::new(MemoryStore::new());
    trial.set(&section.credential_key(), &secret)?;
    let store = OpenBaoStore::new(
        section.library_config(ctx.flavour.service(), ctx.timeout),
        trial,
    )?
    .with_credential_advice(format!("check the {what} given (it was not stored)"));
    let status = store.probe();
    let token = match status.token {
        Ok(token) => token,
        Err(
            err @ keyshare::Error::Unavailable {
                reason: UnavailableReason::Denied,
                ..
            },
        ) => {
            return Err(anyhow::Error::new(err).context(format!(
                "the server did not accept the {what}; nothing was stored"
            )))
        }
        // Not an answer about the credential: say whether the server could be reached at all.
        Err(err) => {
            let unreachable: Vec<String> = status
                .nodes
                .iter()
                .filter_map(|node| match &node.state {
                    NodeState::Unreachable(why) => Some(format!("{}: {why}", node.address)),
                    _ => None,
                })
                .collect();
            let context = if unreachable.len() == status.nodes.len() {
                format!(
                    "the OpenBao server could not be reached ({}), so the {what} was not checked \
                     and nothing was stored",
                    unreachable.join("; ")
                )
            } else {
                format!("the OpenBao server could not check the {what}; nothing was stored")
            };
            return Err(anyhow::Error::new(err).context(context));
        }
    };
    let creds = credentials(ctx, &credentials_path(ctx))?;
    creds.set(&section.credential_key(), &secret)?;
    let ttl = match token.ttl {
        Some(ttl) => format!("expires in {}", human(ttl)),
        None => "does not expire".to_owned(),
    };
    eprintln!(
        "keyshare: {what} accepted (policies {}; the token {ttl}); kept in {}",
        token.policies.join(", "),
        credentials_path(ctx).display()
    );
    Ok(())
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn millis(d: Option<Duration>) -> Value {
    d.map(|d| json!((d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0))
        .unwrap_or(Value::Null)
}

/// The `openbao` part of `keyshare doctor`: nodes, leader, auth method, token expiry, latency.
pub fn doctor_report(ctx: &Context, problems: &mut Vec<String>) -> Value {
    let store = match open_store(ctx) {
        Ok(s) => s,
        Err(err) => {
            problems.push(format!("OpenBao: {}", crate::exit::one_line(&err)));
            return Value::Null;
        }
    };
    let status = store.probe();
    let nodes: Vec<Value> = status
        .nodes
        .iter()
        .map(|n| {
            let state = match &n.state {
                NodeState::Active => "active".to_owned(),
                NodeState::Standby => "standby".to_owned(),
                NodeState::PerformanceStandby => "performance standby".to_owned(),
                NodeState::Sealed => {
                    problems.push(format!(
                        "OpenBao node {} is sealed: unseal it with `bao operator unseal`",
                        n.address
                    ));
                    "sealed".to_owned()
                }
                NodeState::Uninitialized => {
                    problems.push(format!("OpenBao node {} is not initialised", n.address));
                    "uninitialized".to_owned()
                }
                NodeState::Unreachable(why) => {
                    problems.push(format!(
                        "OpenBao node {} is not reachable: {why}",
                        n.address
                    ));
                    "unreachable".to_owned()
                }
                NodeState::Other(code) => format!("HTTP {code}"),
                _ => "unknown".to_owned(),
            };
            json!({
                "address": n.address,
                "state": state,
                "version": n.version,
                "latency_ms": millis(n.latency),
            })
        })
        .collect();
    let token = match &status.token {
        Ok(t) => json!({
            "ttl_seconds": t.ttl.map(|d| d.as_secs()),
            "expire_time": t.expire_time,
            "renewable": t.renewable,
            "policies": t.policies,
        }),
        Err(err) => {
            problems.push(format!("OpenBao token: {err}"));
            Value::Null
        }
    };
    if status.ha_enabled == Some(true) && status.leader.is_none() {
        problems.push("OpenBao: no node names a leader".to_owned());
    }
    json!({
        "nodes": nodes,
        "leader": status.leader,
        "ha_enabled": status.ha_enabled,
        "auth_method": status.auth_method,
        "token": token,
        "latency_ms": millis(status.latency),
        "answered_by": status.answered_by,
        "credentials": credentials_path(ctx).display().to_string(),
    })
}

pub fn print_human(report: &Value, out: &mut String) {
    if report.is_null() {
        return;
    }
    let s = |v: &Value| {
        v.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string())
    };
    // No latency is no answer: JSON's `null` printed as text read "latency null ms" (QA).
    let latency = match &report["latency_ms"] {
        Value::Null => "latency unknown (no answer)".to_owned(),
        ms => format!("latency {} ms", s(ms)),
    };
    crate::cmd::say!(
        out,
        "openbao:       leader {}, auth {}, {latency}",
        s(&report["leader"]),
        s(&report["auth_method"]),
    );
    if let Some(nodes) = report["nodes"].as_array() {
        for n in nodes {
            let latency = match &n["latency_ms"] {
                Value::Null => String::new(),
                ms => format!(" ({} ms)", s(ms)),
            };
            crate::cmd::say!(
                out,
                "  node:        {} {}{latency}",
                s(&n["address"]),
                s(&n["state"]),
            );
        }
    }
    let token = &report["token"];
    if !token.is_null() {
        let expiry = match token["ttl_seconds"].as_u64() {
            Some(ttl) => format!(
                "expires in {} ({})",
                human(Duration::from_secs(ttl)),
                s(&token["expire_time"])
            ),
            None => "never expires".to_owned(),
        };
        crate::cmd::say!(out, "  token:       {expiry}");
    }
}
