//! One module per command. Each takes the parsed arguments and the context, and returns an
//! error for `main` to render; none of them exits or prints errors itself.

pub mod delete;
pub mod doctor;
pub mod get;
pub mod import;
pub mod legacy;
pub mod list;
pub mod migrate;
pub mod repair;
pub mod serve;
pub mod set;
pub mod watch;

use keyshare::SecretKey;

/// Validates a key given on the command line.
pub fn parse_key(key: &str) -> anyhow::Result<SecretKey> {
    Ok(SecretKey::new(key)?)
}
