//! Reading secret values: from stdin or a file, never from argv.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use keyshare::{Error, Limits, SecretValue};
use zeroize::Zeroizing;

/// Reads at most `limits.max_value_len` bytes; one byte more is a `TooLarge` error naming the
/// limit. On a terminal, prompts without echo and takes one line.
pub fn read_value(
    from_file: Option<&Path>,
    limits: &Limits,
    prompt: &str,
) -> anyhow::Result<SecretValue> {
    let mut buf = Zeroizing::new(Vec::new());
    match from_file {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot read the value from {}", path.display()))?;
            read_limited(file, &mut buf, limits)
                .map_err(|err| about_the_value(err, &path.display().to_string()))?;
        }
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                let line = Zeroizing::new(
                    rpassword::prompt_password(prompt)
                        .context("cannot read the value from the terminal")?,
                );
                buf.extend_from_slice(line.as_bytes());
                limits.check_value(&SecretValue::from_slice(&buf))?;
            } else {
                read_limited(std::io::stdin().lock(), &mut buf, limits)
                    .map_err(|err| about_the_value(err, "standard input"))?;
            }
        }
    }
    Ok(SecretValue::from(std::mem::take(&mut *buf)))
}

/// `err` of reading the value from `source`, said as what it is: a value over the limit was
/// read, and is too large (found by QA: "cannot read the value", for a value that was read).
fn about_the_value(err: anyhow::Error, source: &str) -> anyhow::Error {
    let too_large = matches!(
        err.downcast_ref::<Error>(),
        Some(Error::TooLarge { .. } | Error::Invalid { what: "value", .. })
    );
    if too_large {
        err.context(format!("the value from {source} is too large"))
    } else {
        err.context(format!("cannot read the value from {source}"))
    }
}

/// How much of an input over the limit is counted (not kept) so that the error can say its
/// true size; past this, reading stops. Endless input (`--from-file /dev/zero`, `yes |`) must
/// end in an error, not in a command that reads forever.
const COUNTED_PAST_LIMIT: u64 = 64 * 1024 * 1024;

fn read_limited(mut reader: impl Read, buf: &mut Vec<u8>, limits: &Limits) -> anyhow::Result<()> {
    let max = limits.max_value_len;
    (&mut reader)
        .take(max as u64 + 1)
        .read_to_end(buf)
        .map_err(|e| Error::io("read", e))?;
    if buf.len() > max {
        let rest = std::io::copy(
            &mut (&mut reader).take(COUNTED_PAST_LIMIT),
            &mut std::io::sink(),
        )
        .map_err(|e| Error::io("read", e))?;
        if rest == COUNTED_PAST_LIMIT {
            return Err(Error::invalid(
                "value",
                format!(
                    "the input goes on past {} bytes, where reading stopped; the limit is {max} bytes",
                    buf.len() as u64 + rest
                ),
            )
            .into());
        }
        return Err(Error::TooLarge {
            limit: max,
            actual: buf.len() + rest as usize,
        }
        .into());
    }
    Ok(())
}

/// Refuses an empty value unless `allow_empty`: an empty read is far more often a broken pipe
/// or an unset variable (`printf %s "$TOKEN"`) than a value, and storing it would replace a
/// working secret with nothing.
pub fn check_not_empty(
    value: &SecretValue,
    from_file: Option<&Path>,
    allow_empty: bool,
) -> anyhow::Result<()> {
    if value.expose_secret().is_empty() && !allow_empty {
        let source = match from_file {
            Some(path) => format!("{} is empty", path.display()),
            None => "standard input was empty".to_owned(),
        };
        return Err(Error::invalid(
            "value",
            format!(
                "{source}, so nothing was stored (an empty value would replace the secret); pass \
                 --allow-empty to store an empty value"
            ),
        )
        .into());
    }
    Ok(())
}
