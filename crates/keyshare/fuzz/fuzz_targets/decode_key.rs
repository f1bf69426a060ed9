//! Key names listed by an OpenBao server are decoded with `decode_key`; anything the server
//! sends must be handled without a panic. The encoding is canonical: a name decodes only if it
//! is exactly what `encode_key` writes for the key it decodes to, and every valid key's name is
//! one path segment that decodes back to that key.
#![no_main]

use keyshare::store::openbao::{decode_key, encode_key};
use keyshare::{Error, SecretKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The input as a name the server might list.
    let name = String::from_utf8_lossy(input);
    match decode_key(&name) {
        Ok(key) => assert_eq!(encode_key(&key), name),
        Err(err) => assert!(
            matches!(err, Error::Invalid { what: "key", .. }),
            "{name:?}: {err}"
        ),
    }

    // The input as the bytes of a key keyshare writes.
    if let Ok(key) = SecretKey::from_bytes(input) {
        let name = encode_key(&key);
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'%')),
            "{name:?}"
        );
        assert!(name != "." && name != "..", "{name:?}");
        assert_eq!(decode_key(&name).ok(), Some(key));
    }
});
