//! `keyshare import vscode`: copies the secrets VS Code (or a fork) keeps in its state database
//! into this flavour's shared store. The state database is opened read-only.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use keyshare::store::electron::{import_legacy, state_db_path, ImportOutcome, SafeStorageKeys};
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
    open_read_only(&db, SafeStorageKeys::linux_basic(), &args.key.app_name)?;
    // As `legacy list`: without the keyring, what reads is imported and each v11 secret fails
    // with the reason (exit 7), instead of the whole import failing (QA #3).
    let (keys, note) = args.key.resolve_keys(&key_source, Some(&dir))?;
    let source = open_read_only(&db, keys, &args.key.app_name)?;
    let target = stores::open_shared(ctx)?;

    // A progress bar only for a person watching; scripts get the summary alone.
    let bar = (std::io::stderr().is_terminal() && !ctx.json).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let report = import_legacy(&source, target.store.as_ref(), args.dry_run, &mut |p| {
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
