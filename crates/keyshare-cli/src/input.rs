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
                .with_context(|| format!("cannot read the value from {}", path.display()))?;
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
                    .context("cannot read the value from standard input")?;
            }
        }
    }
    Ok(SecretValue::from(std::mem::take(&mut *buf)))
}

fn read_limited(reader: impl Read, buf: &mut Vec<u8>, limits: &Limits) -> anyhow::Result<()> {
    let max = limits.max_value_len;
    reader
        .take(max as u64 + 1)
        .read_to_end(buf)
        .map_err(|e| Error::io("read", e))?;
    if buf.len() > max {
        // The true size is unknown (we stopped reading); say "more than".
        return Err(Error::TooLarge {
            limit: max,
            actual: buf.len(),
        }
        .into());
    }
    Ok(())
}
