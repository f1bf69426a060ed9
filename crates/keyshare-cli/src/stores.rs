//! Turns the config and flags into an app's `SecretStorage`: which shared store, which legacy
//! store, where the repair journal lives. Every command goes through here.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keyshare::{AppId, Flavour, Limits, MemoryStore, SecretStorage, Store};

use crate::config::{Config, Dirs, LegacyConfig, StoreChoice};

/// Everything a command needs to know about where it runs.
#[derive(Debug)]
pub struct Context {
    pub config: Config,
    pub dirs: Dirs,
    pub flavour: Flavour,
    pub app: AppId,
    pub store: StoreChoice,
    #[allow(dead_code)] // read by the OS keyring stores, landing next
    pub timeout: Duration,
    pub json: bool,
    pub limits: Limits,
}

/// The shared store that was chosen, and why.
#[derive(Debug)]
pub struct SharedChoice {
    pub store: Arc<dyn Store>,
    pub reason: String,
}

/// An opened storage, with what `doctor` reports about it.
#[derive(Debug)]
pub struct Opened {
    pub storage: SecretStorage,
    pub shared: SharedChoice,
    pub legacy: Option<Arc<dyn Store>>,
}

pub fn open_vault(path: &Path, namespace: &str, ctx: &Context) -> anyhow::Result<Arc<dyn Store>> {
    let _ = (path, namespace, ctx);
    anyhow::bail!("the vault store is not built yet")
}

/// Picks the shared store: the explicit choice, or for `auto` the Secret Service when it is
/// reachable and unlocked, else the vault.
pub fn open_shared(ctx: &Context) -> anyhow::Result<SharedChoice> {
    let service = ctx.flavour.service();
    match ctx.store {
        StoreChoice::Memory => Ok(SharedChoice {
            store: Arc::new(MemoryStore::with_limits(ctx.limits)),
            reason: "chosen explicitly (nothing persists)".to_owned(),
        }),
        StoreChoice::Vault => Ok(SharedChoice {
            store: open_vault(&ctx.dirs.shared_vault_path(&ctx.flavour), service, ctx)?,
            reason: "chosen explicitly".to_owned(),
        }),
        StoreChoice::SecretService => {
            anyhow::bail!("the Secret Service store is not built yet")
        }
        StoreChoice::Auto => Ok(SharedChoice {
            store: open_vault(&ctx.dirs.shared_vault_path(&ctx.flavour), service, ctx)?,
            reason: "auto: no Secret Service support in this build".to_owned(),
        }),
    }
}

/// Opens the app's storage: the shared store plus, if configured, its legacy store and journal.
pub fn open(ctx: &Context) -> anyhow::Result<Opened> {
    let shared = open_shared(ctx)?;
    let mut builder = SecretStorage::builder(shared.store.clone()).limits(ctx.limits);
    let mut legacy = None;
    if let Some(app) = ctx.config.app(&ctx.app) {
        match &app.legacy {
            None => {}
            Some(LegacyConfig::Vault) => {
                let path = ctx.dirs.app_vault_path(&ctx.flavour, &ctx.app);
                let store = open_vault(&path, "legacy", ctx)?;
                let journal = open_vault(&path, "journal", ctx)?;
                builder = builder.legacy(store.clone()).journal(journal);
                legacy = Some(store);
            }
        }
    }
    Ok(Opened {
        storage: builder.build(),
        shared,
        legacy,
    })
}
