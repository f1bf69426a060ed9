use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use keyshare::storage::MigrationOutcome;

use crate::stores::{self, Context};

/// `keyshare migrate`: copies the app's legacy secrets into the shared store now.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    // Refused before any store is opened, which would create the shared vault (found by QA:
    // "created vault", then "nothing to migrate").
    let legacy_for = ctx.config.legacy(&ctx.app, &ctx.flavour);
    if legacy_for.store().is_none() {
        return Err(nothing_to_migrate(
            ctx,
            legacy_for.set_aside(&ctx.app, &ctx.flavour),
        ));
    }
    let opened = stores::open_with(ctx, stores::Migration::Explicit)?;
    if opened.legacy.is_none() {
        return Err(nothing_to_migrate(ctx, opened.legacy_set_aside.clone()));
    }
    // A progress bar only for a person watching; scripts get the summary alone.
    let bar = if std::io::stderr().is_terminal() && !ctx.json {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let report = opened.storage.migrate(|p| {
        if let Some(bar) = &bar {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            if let MigrationOutcome::Failed(_) = p.outcome {
                bar.set_message(format!("failed: {}", p.key));
            }
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut out = String::new();
    if ctx.json {
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(k, why)| serde_json::json!({ "key": k.as_str(), "reason": why }))
            .collect();
        say!(
            out,
            "{}",
            serde_json::json!({
                "copied": report.copied,
                "already_present": report.already_present,
                "failed": failed,
                "complete": report.complete,
            })
        );
    } else if report.complete && report.copied + report.already_present == 0 {
        say!(out, "migration already complete: nothing to copy");
    } else {
        say!(
            out,
            "copied: {}, already present: {}, failed: {}",
            report.copied,
            report.already_present,
            report.failed.len()
        );
        for (key, why) in &report.failed {
            say!(out, "failed: {}: {why}", super::shown(key));
        }
    }
    super::print_out(&out)?;
    if !report.complete {
        // Named with the app: a bare `keyshare migrate` acts on the default app.
        anyhow::bail!(
            "migration incomplete: {} key(s) failed and will be retried by the next `{}`",
            report.failed.len(),
            super::command_for(ctx, "migrate")
        );
    }
    Ok(())
}

/// A usage error, not a config one (exit 5 says the file is broken; there may be none).
fn nothing_to_migrate(ctx: &Context, set_aside: Option<String>) -> anyhow::Error {
    keyshare::Error::invalid(
        "command",
        match set_aside {
            Some(why) => format!("nothing to migrate: {why}"),
            None => format!(
                "app {} has no legacy store configured, so there is nothing to migrate; \
                 configure one under [apps.{}] in the config file",
                ctx.app, ctx.app
            ),
        },
    )
    .into()
}
