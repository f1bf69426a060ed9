use crate::cmd::parse_key;
use crate::exit::NotFound;
use crate::stores::{self, Context};

/// `keyshare delete KEY`: from every store of the app; exit 1 if there was nothing to delete
/// (known to be nothing: a delete queued for the shared store succeeds).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The secret's key.
    pub key: String,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    let key = parse_key(&args.key)?;
    let opened = stores::open(ctx)?;
    let deleted = opened.storage.delete(&key)?;
    // A delete the shared store did not take is acknowledged and queued, as a `set` is: whether
    // the shared store held the key is not known, so "nothing to delete" (exit 1) would be a
    // guess, and the README promises "unavailable", never "not found", in an outage (found by
    // QA: exit 1 and "no secret named", right after the note that the delete was queued).
    let queued = crate::cmd::say_if_queued(&opened.storage, &key, ctx);
    if !deleted && !queued {
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
