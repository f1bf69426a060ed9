//! Decoding arbitrary row values and row keys must never panic, and what decodes must survive a
//! re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oscrypt::{
    decode_buffer_json, encode_buffer_json, extension_secret_row_key, parse_secret_row_key,
};

fuzz_target!(|input: &[u8]| {
    if let Ok(blob) = decode_buffer_json(input) {
        let encoded = encode_buffer_json(&blob);
        assert_eq!(decode_buffer_json(&encoded).ok(), Some(blob));
    }
    let row_key = String::from_utf8_lossy(input);
    if let Some(parsed) = parse_secret_row_key(&row_key) {
        assert_eq!(format!("secret://{}", parsed.key), row_key);
        if let Some(extension) = parsed.extension {
            assert_eq!(
                extension_secret_row_key(&extension.extension_id, &extension.key),
                row_key
            );
        }
    }
});
