use std::io::Write;

use anyhow::Context as _;

use crate::stores::{self, Context};

/// `keyshare list`: keys only, one per line (or a JSON array), sorted.
pub fn run(ctx: &Context) -> anyhow::Result<()> {
    let opened = stores::open(ctx)?;
    let mut keys = opened.storage.keys()?;
    keys.sort();
    let mut out = std::io::stdout().lock();
    if ctx.json {
        let names: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        writeln!(out, "{}", serde_json::to_string(&names)?)
    } else {
        keys.iter()
            .try_for_each(|k| writeln!(out, "{}", super::shown(k)))
    }
    .context(crate::exit::WRITING_STDOUT)
}
