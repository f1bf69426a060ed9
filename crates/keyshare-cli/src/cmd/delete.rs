use crate::cmd::parse_key;
use crate::exit::NotFound;
use crate::stores::{self, Context};

/// `keyshare delete KEY`: from every store of the app; exit 1 if there was nothing to delete.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The secret's key.
    pub key: String,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let opened = stores::open(ctx)?;
    let deleted = opened.storage.delete(&key)?;
    crate::cmd::say_if_queued(&opened.storage, &key, ctx);
    if !deleted {
        return Err(NotFound(format!(
            "no secret named {:?} in flavour {} (app {})",
            key.as_str(),
            ctx.flavour.name(),
            ctx.app
        ))
        .into());
    }
    Ok(())
}
