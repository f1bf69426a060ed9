//! The macOS and Windows key fetches: thin wrappers over the OS, compiled on their OS only.
//! Parsing `Local State` is platform-independent and tested everywhere.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// What Chromium puts before the DPAPI blob in `os_crypt.encrypted_key`.
const DPAPI_PREFIX: &[u8] = b"DPAPI";

/// The parts of a JSON document keyshare reads: an object's members by name (the last of
/// repeated names counts), and anything else skipped.
///
/// Not a `serde_json::Value`: with serde_json's `raw_value` feature, which the target marker
/// enables for the whole build, a `Value` takes an object whose first key is serde_json's private
/// raw-value token for the JSON text held in that key's string, so it refused some well-formed
/// files and read others differently from any JSON reader.
#[derive(Deserialize)]
#[serde(untagged)]
enum Json<T> {
    Object(HashMap<String, T>),
    Other(IgnoredAny),
}

/// A member that is read only when it is a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    Text(String),
    Other(IgnoredAny),
}

/// The DPAPI-wrapped key from the text of `Local State`:
/// `os_crypt.encrypted_key` = base64("DPAPI" || CryptProtectData(key)).
pub fn wrapped_key_from_local_state(local_state: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |detail: &str| Error::Corrupt {
        store: "Local State".to_owned(),
        key: None,
        detail: detail.to_owned(),
    };
    let json: Json<Json<Text>> =
        serde_json::from_slice(local_state).map_err(|_| corrupt("not valid JSON"))?;
    let encoded = match json {
        Json::Object(mut members) => match members.remove("os_crypt") {
            Some(Json::Object(mut os_crypt)) => match os_crypt.remove("encrypted_key") {
                Some(Text::Text(encoded)) => Some(encoded),
                _ => None,
            },
            _ => None,
        },
        Json::Other(_) => None,
    }
    .ok_or_else(|| corrupt("no os_crypt.encrypted_key string"))?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| corrupt("os_crypt.encrypted_key is not base64"))?;
    decoded
        .strip_prefix(DPAPI_PREFIX)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| corrupt("os_crypt.encrypted_key does not start with \"DPAPI\""))
}

/// The raw AES-256 key of the app whose user-data directory is `user_data_dir` (Windows only).
pub fn windows_local_state_key(user_data_dir: &Path) -> Result<Zeroizing<[u8; 32]>> {
    let path = user_data_dir.join("Local State");
    let text =
        std::fs::read(&path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let wrapped = wrapped_key_from_local_state(&text)?;
    let raw = dpapi::unprotect(&wrapped)?;
    let key: [u8; 32] = raw.as_slice().try_into().map_err(|_| Error::Corrupt {
        store: "Local State".to_owned(),
        key: None,
        detail: format!("the unwrapped key is {} bytes, not 32", raw.len()),
    })?;
    Ok(Zeroizing::new(key))
}

#[cfg(windows)]
mod dpapi {
    //! The one call into DPAPI.
    #![allow(unsafe_code)]

    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Cryptography::{
        CryptUnprotectData, CRYPTPROTECT_UI_FORBIDDEN, CRYPT_INTEGER_BLOB,
    };
    use zeroize::Zeroizing;

    use crate::error::{Error, Result, UnavailableReason};

    pub fn unprotect(wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let len = u32::try_from(wrapped.len()).map_err(|_| Error::Corrupt {
            store: "Local State".to_owned(),
            key: None,
            detail: "the wrapped key is too long".to_owned(),
        })?;
        let input = CRYPT_INTEGER_BLOB {
            cbData: len,
            pbData: wrapped.as_ptr().cast_mut(),
        };
        let mut output = CRYPT_INTEGER_BLOB {
            cbData: 0,
            pbData: std::ptr::null_mut(),
        };
        // SAFETY: `input` points at `len` readable bytes that outlive the call (DPAPI does not
        // write through it); the optional pointers are null, which the API allows; `output` is
        // a valid place for the API to store its LocalAlloc'ed result. UI_FORBIDDEN: a call
        // that would need a dialog fails instead of waiting for one.
        let ok = unsafe {
            CryptUnprotectData(
                &input,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null(),
                CRYPTPROTECT_UI_FORBIDDEN,
                &mut output,
            )
        };
        if ok == 0 {
            return Err(Error::unavailable(
                "DPAPI",
                UnavailableReason::Denied,
                format!(
                    "CryptUnprotectData failed: {}; the key belongs to another Windows user",
                    std::io::Error::last_os_error()
                ),
            ));
        }
        // SAFETY: on success DPAPI filled `output` with `cbData` bytes at `pbData`, allocated
        // with LocalAlloc; they are copied out, wiped, then freed exactly once.
        let plain = unsafe {
            let bytes = std::slice::from_raw_parts_mut(output.pbData, output.cbData as usize);
            let copy = Zeroizing::new(bytes.to_vec());
            zeroize::Zeroize::zeroize(bytes);
            LocalFree(output.pbData.cast());
            copy
        };
        Ok(plain)
    }
}

#[cfg(not(windows))]
mod dpapi {
    use zeroize::Zeroizing;

    use crate::error::{Error, Result};

    pub fn unprotect(_wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        Err(Error::ProtectionUnavailable(
            "the Windows key in Local State can only be unwrapped (DPAPI) on Windows, by its user"
                .to_owned(),
        ))
    }
}

/// The keychain password of `<App> Safe Storage` (macOS only): account `<App> Key` (Electron 23
/// and later), else the older account `<App>`.
///
/// Reading another app's item makes macOS ask the user for permission, so the call is bounded
/// by a timeout long enough for a person to answer.
#[cfg(target_os = "macos")]
pub fn macos_keychain_password(app_name: &str) -> Result<Zeroizing<Vec<u8>>> {
    const ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
    let app = app_name.to_owned();
    crate::store::os_call::call_with_timeout(
        "macOS keychain",
        ANSWER_TIMEOUT,
        "reading the safeStorage password (is a keychain dialog waiting for an answer?)",
        move || keychain_lookup(&app),
    )?
}

#[cfg(target_os = "macos")]
fn keychain_lookup(app_name: &str) -> Result<Zeroizing<Vec<u8>>> {
    use crate::error::UnavailableReason;
    use security_framework::passwords::get_generic_password;

    // errSecItemNotFound
    const NOT_FOUND: i32 = -25300;
    let service = format!("{app_name} Safe Storage");
    let mut last = None;
    for account in [format!("{app_name} Key"), app_name.to_owned()] {
        match get_generic_password(&service, &account) {
            Ok(password) => return Ok(Zeroizing::new(password)),
            Err(e) if e.code() == NOT_FOUND => last = Some(e),
            Err(e) => {
                return Err(Error::unavailable(
                    "macOS keychain",
                    UnavailableReason::Denied,
                    format!("reading {service:?} (account {account:?}): {e}"),
                ))
            }
        }
    }
    Err(Error::unavailable(
        "macOS keychain",
        UnavailableReason::Backend,
        format!(
            "no keychain item {service:?} with account \"{app_name} Key\" or {app_name:?}: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        ),
    ))
}

#[cfg(not(target_os = "macos"))]
pub fn macos_keychain_password(_app_name: &str) -> Result<Zeroizing<Vec<u8>>> {
    Err(Error::ProtectionUnavailable(
        "the macOS keychain key source exists on macOS only".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_state_key_is_unwrapped_from_base64_and_prefix() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(b"DPAPI\x01\x02\x03");
        let text = format!(r#"{{"os_crypt":{{"encrypted_key":"{encoded}"}},"other":1}}"#);
        assert_eq!(
            wrapped_key_from_local_state(text.as_bytes()).unwrap(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn local_state_problems_are_named() {
        let no_prefix = base64::engine::general_purpose::STANDARD.encode(b"XXXXX\x01");
        for (text, expected) in [
            ("not json", "not valid JSON"),
            (r#"{"os_crypt":{}}"#, "no os_crypt.encrypted_key"),
            (r#"{"os_crypt":{"encrypted_key":"!!"}}"#, "not base64"),
            (
                &format!(r#"{{"os_crypt":{{"encrypted_key":"{no_prefix}"}}}}"#),
                "does not start with \"DPAPI\"",
            ),
        ] {
            let err = wrapped_key_from_local_state(text.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    /// Any well-formed JSON is read as a JSON reader reads it. A `serde_json::Value` is not:
    /// with serde_json's `raw_value` feature (which the target marker enables for the whole
    /// build), an object whose first key is serde_json's private raw-value token is taken for
    /// the JSON text in its value. So a file with such a key anywhere was refused as "not valid
    /// JSON", and one could hide an `encrypted_key` that Chromium does not see (found by the
    /// `local_state` fuzz target).
    #[test]
    fn every_object_is_read_as_plain_json() {
        const TOKEN: &str = "$serde_json::private::RawValue";
        let encoded = base64::engine::general_purpose::STANDARD.encode(b"DPAPI\x01\x02");
        let text = format!(
            r#"{{"profile":{{"{TOKEN}":{{"name":"a"}}}},"os_crypt":{{"encrypted_key":"{encoded}"}}}}"#
        );
        assert_eq!(
            wrapped_key_from_local_state(text.as_bytes()).unwrap(),
            vec![1, 2]
        );
        let hidden =
            format!(r#"{{"os_crypt":{{"{TOKEN}":"{{\"encrypted_key\":\"{encoded}\"}}"}}}}"#);
        let err = wrapped_key_from_local_state(hidden.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("no os_crypt.encrypted_key string"),
            "{err}"
        );
        let top =
            format!(r#"{{"{TOKEN}":"{{\"os_crypt\":{{\"encrypted_key\":\"{encoded}\"}}}}"}}"#);
        let err = wrapped_key_from_local_state(top.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("no os_crypt.encrypted_key string"),
            "{err}"
        );
    }

    /// What is not an object where one is expected, or not a string, is a missing key (as
    /// before), and the last of repeated keys counts.
    #[test]
    fn shapes_and_repeated_keys() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(b"DPAPI\x07");
        for text in [
            "[]".to_owned(),
            "1".to_owned(),
            "null".to_owned(),
            r#"{"os_crypt":[]}"#.to_owned(),
            r#"{"os_crypt":{"encrypted_key":7}}"#.to_owned(),
            format!(r#"{{"os_crypt":{{"encrypted_key":"{encoded}"}},"os_crypt":{{}}}}"#),
        ] {
            let err = wrapped_key_from_local_state(text.as_bytes()).unwrap_err();
            assert!(
                err.to_string().contains("no os_crypt.encrypted_key string"),
                "{text}: {err}"
            );
        }
        let text = format!(
            r#"{{"os_crypt":{{"encrypted_key":1,"encrypted_key":"{encoded}"}},"x":[{{"y":[]}}]}}"#
        );
        assert_eq!(
            wrapped_key_from_local_state(text.as_bytes()).unwrap(),
            vec![7]
        );
    }

    #[cfg(not(windows))]
    #[test]
    fn dpapi_is_refused_off_windows() {
        let dir = tempfile::tempdir().unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode(b"DPAPI\x01");
        std::fs::write(
            dir.path().join("Local State"),
            format!(r#"{{"os_crypt":{{"encrypted_key":"{encoded}"}}}}"#),
        )
        .unwrap();
        let err = windows_local_state_key(dir.path()).unwrap_err();
        assert!(matches!(err, Error::ProtectionUnavailable(_)), "{err}");
    }
}
