//! Chromium OSCrypt / Electron `safeStorage` blobs, as VS Code keeps them in `state.vscdb`.
//!
//! | platform | blob |
//! |---|---|
//! | Linux, no keyring | `v10` ‖ AES-128-CBC, key PBKDF2-HMAC-SHA1(`peanuts`, `saltysalt`, 1) |
//! | Linux, keyring | `v11` ‖ AES-128-CBC, key PBKDF2-HMAC-SHA1(keyring secret text, `saltysalt`, 1) |
//! | macOS | `v10` ‖ AES-128-CBC, key PBKDF2-HMAC-SHA1(keychain password text, `saltysalt`, 1003) |
//! | Windows | `v10` ‖ nonce\[12\] ‖ AES-256-GCM ciphertext ‖ tag\[16\], raw 32-byte key |
//!
//! CBC uses an IV of sixteen spaces and PKCS#7 padding. The empty plaintext is the empty blob on
//! every platform. VS Code stores a blob as `JSON.stringify` of a Node `Buffer`, under a row key
//! `secret://<key>`.
//!
//! This crate does no I/O: fetching the keyring secret, keychain password or DPAPI-wrapped key,
//! and reading the database, are the caller's.
//!
//! ```
//! use oscrypt::{decode_buffer_json, decrypt, encode_buffer_json, encrypt, Key, Keys};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keyring_secret = b"k8Q2Vx0mZt5bN1cR4yW7pA==";
//! let blob = encrypt(&Key::linux_v11(keyring_secret), b"hello")?;
//! assert!(blob.starts_with(b"v11"));
//!
//! let row_value = encode_buffer_json(&blob);
//! assert!(row_value.starts_with(r#"{"type":"Buffer","data":[118,49,49,"#));
//!
//! let plaintext = decrypt(&Keys::linux(Some(keyring_secret)), &decode_buffer_json(&row_value)?)?;
//! assert_eq!(plaintext.as_slice(), b"hello");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod blob;
mod key;
mod row;

pub use blob::{decrypt, encrypt, encrypt_with_nonce, DecryptError, EncryptError, GCM_NONCE_LEN};
pub use key::{Key, Keys, Platform};
pub use row::{
    decode_buffer_json, encode_buffer_json, extension_secret_row_key, parse_secret_row_key,
    ExtensionSecretKey, RowError, SecretRowKey, SECRET_ROW_PREFIX,
};
pub use zeroize::Zeroizing;
