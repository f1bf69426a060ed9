//! The Windows key of an Electron app is read from the JSON file `Local State`, which the app
//! (and anything running as the user) writes. `wrapped_key_from_local_state` must never panic on
//! it; when it succeeds, it returns exactly the bytes after `DPAPI` in the base64 of
//! `os_crypt.encrypted_key`; any well-formed file with a DPAPI-prefixed key yields that key
//! whatever else the file holds; and its errors say what is wrong without quoting the file.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use keyshare::store::electron::wrapped_key_from_local_state;
use keyshare::Error;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

/// Every way the file can be refused, in the words the errors use.
const DETAILS: [&str; 4] = [
    "not valid JSON",
    "no os_crypt.encrypted_key string",
    "os_crypt.encrypted_key is not base64",
    "os_crypt.encrypted_key does not start with \"DPAPI\"",
];

fn assert_named_refusal(err: &Error, input: &[u8]) {
    match err {
        Error::Corrupt {
            store,
            key: None,
            detail,
        } if store == "Local State" && DETAILS.contains(&detail.as_str()) => {}
        // The input is not shown: it may hold a wrapped key.
        other => panic!("unexpected error for {} input bytes: {other}", input.len()),
    }
}

/// Whether a JSON text may spell a `$`: as itself or as the escape `\u0024`.
fn has_dollar(input: &[u8]) -> bool {
    input.contains(&b'$') || input.windows(6).any(|w| w == b"\\u0024")
}

fuzz_target!(|input: &[u8]| {
    // The input as the file.
    match wrapped_key_from_local_state(input) {
        // A `serde_json::Value` reads the file as any JSON reader does unless a key holds a `$`
        // (serde_json's raw-value token starts with one; this build has that feature).
        Ok(wrapped) if !has_dollar(input) => {
            let json: serde_json::Value = serde_json::from_slice(input).unwrap();
            let encoded = json["os_crypt"]["encrypted_key"].as_str().unwrap();
            let mut expected = b"DPAPI".to_vec();
            expected.extend_from_slice(&wrapped);
            // The standard alphabet with padding and no stray bits: one spelling per key.
            assert_eq!(STANDARD.encode(&expected), encoded);
        }
        Ok(_) => {}
        Err(err) => assert_named_refusal(&err, input),
    }

    // The input as the wrapped key, in a file that also holds other settings (some derived from
    // the input, as a real file holds the app's own text) and Chromium's app-bound key.
    let text = String::from_utf8_lossy(input);
    let mut prefixed = b"DPAPI".to_vec();
    prefixed.extend_from_slice(input);
    let mut app_bound = b"APPB".to_vec();
    app_bound.extend_from_slice(input);
    let file = json!({
        "browser": { "last_title": text, "enabled_labs_experiments": [text, 1, null] },
        "os_crypt": {
            "app_bound_encrypted_key": STANDARD.encode(&app_bound),
            "audit_enabled": true,
            "encrypted_key": STANDARD.encode(&prefixed),
        },
        "profile": { "info_cache": { text.to_string(): { "name": text } } },
    });
    let bytes = serde_json::to_vec_pretty(&file).unwrap();
    assert_eq!(
        wrapped_key_from_local_state(&bytes).ok().as_deref(),
        Some(input)
    );

    // The same file with the app-bound key (APPB, not DPAPI) where the DPAPI key belongs.
    let mut file = file;
    file["os_crypt"]["encrypted_key"] = json!(STANDARD.encode(&app_bound));
    let bytes = serde_json::to_vec(&file).unwrap();
    let err = wrapped_key_from_local_state(&bytes).unwrap_err();
    assert_named_refusal(&err, input);
});
