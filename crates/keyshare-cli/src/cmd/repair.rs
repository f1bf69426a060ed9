use crate::stores::{self, Context};

/// `keyshare repair`: retries pending repairs of the shared store now.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let opened = stores::open(ctx)?;
    let report = opened.storage.repair()?;
    if ctx.json {
        let failed: Vec<_> = report
            .failed
            .iter()
            .map(|(k, why)| serde_json::json!({ "key": k.as_str(), "reason": why }))
            .collect();
        let superseded: Vec<_> = report.superseded.iter().map(|k| k.as_str()).collect();
        println!(
            "{}",
            serde_json::json!({
                "repaired": report.repaired,
                "superseded": superseded,
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
        for (key, why) in &report.failed {
            println!("still pending: {}: {why}", super::shown(key));
        }
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
