use std::path::PathBuf;

use crate::cmd::parse_key;
use crate::input::read_value;
use crate::stores::{self, Context};

/// `keyshare set KEY [--from-file PATH]`: the value comes from stdin or the file, never argv.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The secret's key.
    pub key: String,
    /// Read the value from this file instead of standard input.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Store an empty value (refused otherwise: an empty input is usually a mistake).
    #[arg(long)]
    pub allow_empty: bool,
    /// Catches a value typed after the key, so that it is refused without being echoed back
    /// (clap's own error would print it).
    #[arg(hide = true, num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
    pub value_in_argv: Vec<std::ffi::OsString>,
}

pub fn run(args: &Args, ctx: &Context) -> anyhow::Result<()> {
    if !args.value_in_argv.is_empty() {
        return Err(keyshare::Error::invalid(
            "arguments",
            "`keyshare set` never takes the value on the command line (other users can read \
             argv); pipe it on standard input, e.g. `printf %s \"$TOKEN\" | keyshare set KEY`, or \
             use --from-file PATH",
        )
        .into());
    }
    let key = parse_key(&args.key)?;
    let value = read_value(
        args.from_file.as_deref(),
        &ctx.limits,
        &format!("Value for {key}: "),
    )?;
    crate::input::check_not_empty(&value, args.from_file.as_deref(), args.allow_empty)?;
    let opened = stores::open(ctx)?;
    opened.storage.set(&key, &value)?;
    crate::cmd::say_if_queued(&opened.storage, &key, ctx);
    Ok(())
}
