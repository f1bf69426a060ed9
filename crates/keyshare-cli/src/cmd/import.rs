//! `keyshare import vscode`: copies the secrets VS Code (or a fork) keeps in its state database
//! into this flavour's shared store. The state database is opened read-only.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use keyshare::store::electron::{
    import_legacy_with, state_db_path, ImportOptions, ImportOutcome, ImportReport, SafeStorageKeys,
};
use keyshare::SecretKey;
use serde_json::json;

use crate::cmd::legacy::{open_read_only, KeyArgs};
use crate::stores::{self, Context};

#[derive(Debug, clap::Subcommand)]
pub enum Source {
    /// The secrets of VS Code or a fork (Code - Insiders, VSCodium, Cursor, Windsurf, ...),
    /// from <user-data-dir>/User/globalStorage/state.vscdb. Idempotent: a re-run copies only
    /// what is missing; a different value already in the shared store is kept.
    Vscode(VscodeArgs),
}

#[derive(Debug, clap::Args)]
pub struct VscodeArgs {
    #[command(flatten)]
    pub key: KeyArgs,
    /// Read both stores and report what would be copied, without writing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also copy secrets the shared store no longer holds because an app deleted them there
    /// (signed out) since they were imported or shared; without it they stay deleted.
    #[arg(long)]
    pub restore_deleted: bool,
}

pub fn run(source: &Source, ctx: &Context) -> anyhow::Result<()> {
    match source {
        Source::Vscode(args) => vscode(args, ctx),
    }
}

fn vscode(args: &VscodeArgs, ctx: &Context) -> anyhow::Result<()> {
    let dir = args.key.user_data_dir()?;
    let db = state_db_path(&dir);
    let key_source = args.key.key_source()?;
    // The database first: a wrong app name or directory (no such file) or a damaged file
    // (corrupt) is the problem to report, not the keyring the key would come from. Opened
    // read-only with a key that needs nothing, only to look at it.
    open_read_only(&db, SafeStorageKeys::linux_basic(), args.key.app_name())?;
    // As `legacy list`: without the keyring, what reads is imported and each v11 secret fails
    // with the reason (exit 7), instead of the whole import failing (QA #3).
    let (keys, note) = args.key.resolve_keys(&key_source, Some(&dir))?;
    let source = open_read_only(&db, keys, args.key.app_name())?;
    // Identified: whether the store keeps change times decides how deletes are known below.
    let target = stores::open_shared_identified(ctx)?;
    // Over a shared store that records no deletes (Secret Service, OpenBao), only a record of
    // what earlier imports handled tells a key deleted there since from one never imported.
    let record = (!target.store.keeps_change_times())
        .then(|| {
            target
                .identity
                .as_ref()
                .map(|identity| ImportRecord::new(ctx, identity, source.path()))
        })
        .flatten();
    let imported_before = match &record {
        Some(record) => record.read()?,
        None => HashSet::new(),
    };
    let options = ImportOptions::new(args.dry_run)
        .imported_before(imported_before)
        .restore_deleted(args.restore_deleted);

    // A progress bar only for a person watching; scripts get the summary alone.
    let bar = (std::io::stderr().is_terminal() && !ctx.json).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let report = import_legacy_with(&source, target.store.as_ref(), &options, &mut |p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            if p.outcome == ImportOutcome::Failed {
                bar.set_message(format!("failed: {}", p.key));
            }
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(record) = &record {
        record.add(&report)?;
    }

    let mut out = String::new();
    if ctx.json {
        let keys = |list: &[keyshare::SecretKey]| -> Vec<String> {
            list.iter().map(|k| k.to_string()).collect()
        };
        let with_reasons = |list: &[(keyshare::SecretKey, String)]| -> Vec<serde_json::Value> {
            list.iter()
                .map(|(k, why)| json!({ "key": k.as_str(), "reason": why }))
                .collect()
        };
        say!(
            out,
            "{}",
            json!({
                "dry_run": report.dry_run,
                "source": source.path().display().to_string(),
                "notes": note.iter().collect::<Vec<_>>(),
                "target": target.store.info().to_string(),
                "imported": keys(&report.imported),
                "already_present": keys(&report.already_present),
                "conflicts": with_reasons(&report.conflicts),
                "left_deleted": with_reasons(&report.left_deleted),
                "failed": with_reasons(&report.failed),
            })
        );
    } else {
        say!(
            out,
            "{} -> {}",
            source.path().display(),
            target.store.info()
        );
        if let Some(note) = &note {
            say!(out, "note: {note}");
        }
        say!(out, "{report}");
        for (key, why) in &report.conflicts {
            say!(out, "kept: {}: {why}", super::shown(key));
        }
        for (key, why) in &report.left_deleted {
            say!(out, "left deleted: {}: {why}", super::shown(key));
        }
        for (key, why) in &report.failed {
            say!(out, "failed: {}: {why}", super::shown(key));
        }
    }
    super::print_out(&out)?;
    if !report.is_success() {
        anyhow::bail!(
            "import incomplete: {} secret(s) failed; fix the cause and re-run to retry them",
            report.failed.len()
        );
    }
    Ok(())
}

/// Which keys earlier imports from one state database found in, or copied to, one shared
/// store that records no deletes: `$XDG_DATA_HOME/keyshare/<flavour>/imported.json`, a map
/// from the store's identity to the database's path to key names (names, never values; they
/// are in config.toml too). A key listed there that the store lacks was deleted there since.
struct ImportRecord {
    file: PathBuf,
    store: String,
    database: String,
}

type RecordFile = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

impl ImportRecord {
    fn new(ctx: &Context, store_identity: &str, database: &Path) -> ImportRecord {
        // The same database reached by another spelling is the same record.
        let database = std::fs::canonicalize(database).unwrap_or_else(|_| database.to_owned());
        ImportRecord {
            file: ctx
                .dirs
                .flavour_data_dir(&ctx.flavour)
                .join("imported.json"),
            store: store_identity.to_owned(),
            database: database.display().to_string(),
        }
    }

    /// The whole file: empty when there is none. One that does not parse is reported, and left
    /// as it is (it is the only memory of which sign-outs to respect).
    fn read_file(&self) -> anyhow::Result<RecordFile> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RecordFile::new()),
            Err(e) => {
                return Err(
                    keyshare::Error::io(format!("reading {}", self.file.display()), e).into(),
                )
            }
        };
        serde_json::from_str(&text).map_err(|e| {
            keyshare::Error::Corrupt {
                store: format!("import record {}", self.file.display()),
                key: None,
                detail: format!(
                    "{e}; the file was left untouched (move it aside to import as if for the \
                     first time, which may bring back secrets an app signed out of)"
                ),
            }
            .into()
        })
    }

    fn read(&self) -> anyhow::Result<HashSet<SecretKey>> {
        let file = self.read_file()?;
        Ok(file
            .get(&self.store)
            .and_then(|dbs| dbs.get(&self.database))
            .into_iter()
            .flatten()
            .filter_map(|k| SecretKey::new(k.as_str()).ok())
            .collect())
    }

    /// Adds what `report` handled (nothing for a dry run), replacing the file in one step.
    fn add(&self, report: &ImportReport) -> anyhow::Result<()> {
        let handled: Vec<&SecretKey> = report.handled().collect();
        if handled.is_empty() {
            return Ok(());
        }
        let mut file = self.read_file()?;
        let keys = file
            .entry(self.store.clone())
            .or_default()
            .entry(self.database.clone())
            .or_default();
        let before = keys.len();
        keys.extend(handled.into_iter().map(|k| k.as_str().to_owned()));
        if keys.len() == before {
            return Ok(());
        }
        let dir = self
            .file
            .parent()
            .context("the import record has no directory")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.file.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            out.write_all(serde_json::to_string_pretty(&file)?.as_bytes())?;
            out.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        };
        write().with_context(|| {
            format!(
                "recording the imported keys in {} (the import itself is done; a re-run \
                 could bring back a key an app deletes before then)",
                self.file.display()
            )
        })
    }
}
