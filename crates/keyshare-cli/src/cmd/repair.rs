use crate::stores::{self, Context};

/// `keyshare repair`: retries pending repairs of the shared store now.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// First remove entries of the app's repair journal that cannot be read (a damaged
    /// journal otherwise stops every command of the app). A pending repair such an entry held
    /// is lost; the app's own copy of the key stays in its store.
    #[arg(long)]
    pub forget_unreadable: bool,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    let opened = stores::open(ctx)?;
    if args.forget_unreadable {
        forget_unreadable(&opened)?;
    }
    let report = opened.storage.repair()?;
    let mut out = String::new();
    if ctx.json {
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(k, why)| serde_json::json!({ "key": k.as_str(), "reason": why }))
            .collect();
        let superseded: Vec<_> = report.superseded.iter().map(|k| k.as_str()).collect();
        let refused: Vec<_> = report
            .refused
            .iter()
            .map(|(k, why)| serde_json::json!({ "key": k.as_str(), "reason": why }))
            .collect();
        say!(
            out,
            "{}",
            serde_json::json!({
                "repaired": report.repaired,
                "superseded": superseded,
                "refused": refused,
                "failed": failed,
            })
        );
    } else {
        say!(out, "repaired: {}", report.repaired);
        // Not an error: another app's change came after this app's failed write, so it is the
        // latest, and this app now reads it too.
        for key in &report.superseded {
            say!(
                out,
                "kept another app's later change: {}",
                super::shown(key)
            );
        }
        for (key, why) in &report.refused {
            say!(
                out,
                "still pending, refused by the shared store: {}: {why}",
                super::shown(key)
            );
        }
        for (key, why) in &report.failed {
            say!(out, "still pending: {}: {why}", super::shown(key));
        }
    }
    super::print_out(&out)?;
    if !report.refused.is_empty() || !report.failed.is_empty() {
        // Named with the app: a bare `keyshare repair` acts on the default app.
        let app = &ctx.app;
        let mut why = Vec::new();
        if !report.refused.is_empty() {
            // Found by QA: "once the shared store is reachable" for a key the broker's policy
            // had stopped sharing with the app.
            why.push(format!(
                "{} refused by the shared store (it takes them once what refuses them changes: \
                 the broker's policy for app {app}, the store's limit, the broker that answers)",
                report.refused.len()
            ));
        }
        if !report.failed.is_empty() {
            why.push(format!(
                "{} because the shared store failed (run `{}` again once it is reachable)",
                report.failed.len(),
                super::command_for(ctx, "repair")
            ));
        }
        anyhow::bail!(
            "{} repair(s) still pending: {}",
            report.refused.len() + report.failed.len(),
            why.join("; ")
        );
    }
    Ok(())
}

/// Removes the journal entries that cannot be read, saying which (names only: they are hashes
/// of keys, never values). Only a corrupt entry goes: any other failure stops the command.
fn forget_unreadable(opened: &stores::Opened) -> anyhow::Result<()> {
    let Some(journal) = &opened.journal else {
        anyhow::bail!("this app has no repair journal (it has no legacy store)");
    };
    let mut forgotten = 0;
    for name in journal.keys()? {
        match journal.get(&name) {
            Err(keyshare::Error::Corrupt { .. }) => {
                journal.delete(&name)?;
                eprintln!(
                    "keyshare: removed the unreadable repair journal entry {}",
                    super::shown(&name)
                );
                forgotten += 1;
            }
            Err(err) => return Err(err.into()),
            Ok(_) => {}
        }
    }
    if forgotten == 0 {
        eprintln!("keyshare: every repair journal entry reads fine; nothing removed");
    }
    Ok(())
}
