use std::io::Write;

use anyhow::Context as _;
use base64::Engine;

use crate::cmd::parse_key;
use crate::exit::NotFound;
use crate::stores::{self, Context};

/// `keyshare get KEY`: the value on stdout, exactly, with no newline added.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The secret's key.
    pub key: String,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let opened = stores::open(ctx)?;
    let Some(value) = opened.storage.get(&key)? else {
        return Err(NotFound(format!(
            "no secret named {:?} in flavour {} (app {})",
            key.as_str(),
            ctx.flavour.name(),
            ctx.app
        ))
        .into());
    };
    let mut out = std::io::stdout().lock();
    if ctx.json {
        let bytes = value.expose_secret();
        let doc = match std::str::from_utf8(bytes) {
            Ok(text) => serde_json::json!({ "key": key.as_str(), "value": text }),
            Err(_) => serde_json::json!({
                "key": key.as_str(),
                "value_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
            }),
        };
        writeln!(out, "{doc}").context(crate::exit::WRITING_STDOUT)?;
    } else {
        out.write_all(value.expose_secret())
            .context(crate::exit::WRITING_STDOUT)?;
    }
    out.flush().context(crate::exit::WRITING_STDOUT)?;
    Ok(())
}
