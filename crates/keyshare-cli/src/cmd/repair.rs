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
        println!(
            "{}",
            serde_json::json!({
                "repaired": report.repaired,
                "superseded": superseded,
                "refused": refused,
                "failed": failed,
            })
        );
    } else {
        println!("repaired: {}", report.repaired);
        // Not an error: another app's change came after this app's failed write, so it is the
        // latest, and this app now reads it too.
        for key in &report.superseded {
            println!("kept another app's later change: {}", super::shown(key));
        }
        for (key, why) in &report.refused {
            println!(
                "refused by the shared store, no longer pending: {}: {why}",
                super::shown(key)
            );
        }
        for (key, why) in &report.failed {
            println!("still pending: {}: {why}", super::shown(key));
        }
    }
    if !report.refused.is_empty() {
        // The writes were acknowledged (into this app's own store) but will never reach the
        // other apps: the user must know, and scripts too.
        anyhow::bail!(
            "{} write(s) of app {} that waited for a repair are refused by the shared store for \
             good and no longer pending: the other apps never got them (this app's own store \
             keeps them){}",
            report.refused.len(),
            ctx.app,
            if report.failed.is_empty() {
                String::new()
            } else {
                format!("; {} repair(s) still pending", report.failed.len())
            }
        );
    }
    if !report.failed.is_empty() {
        // Named with the app: a bare `keyshare repair` acts on the default app.
        anyhow::bail!(
            "{} repair(s) still pending; run `keyshare --app {} repair` again once the shared store is reachable",
            report.failed.len(),
            ctx.app
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
