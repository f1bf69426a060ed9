//! Property tests: round trips on every platform, and no panics on arbitrary input.

use oscrypt::{
    decode_buffer_json, decrypt, encode_buffer_json, encrypt, encrypt_with_nonce,
    extension_secret_row_key, parse_secret_row_key, DecryptError, Key, Keys, GCM_NONCE_LEN,
};
use proptest::prelude::*;

/// A key for encrypting, and the key set that should decrypt what it writes, per platform.
fn key_pair(platform: u8, secret: &[u8], raw: [u8; 32]) -> (Key, Keys) {
    match platform % 4 {
        0 => (Key::linux_v10(), Keys::linux(Some(secret))),
        1 => (Key::linux_v11(secret), Keys::linux(Some(secret))),
        2 => (Key::macos(secret), Keys::macos(secret)),
        _ => (Key::windows(raw), Keys::windows(raw)),
    }
}

fn expected_len(key: &Key, plaintext_len: usize) -> usize {
    if plaintext_len == 0 {
        0
    } else if key.platform() == oscrypt::Platform::Windows {
        3 + GCM_NONCE_LEN + plaintext_len + 16
    } else {
        3 + (plaintext_len / 16 + 1) * 16
    }
}

proptest! {
    #[test]
    fn encrypt_then_decrypt_round_trips(
        platform in 0u8..4,
        secret in proptest::collection::vec(any::<u8>(), 0..40),
        raw in any::<[u8; 32]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let (key, keys) = key_pair(platform, &secret, raw);
        let blob = encrypt(&key, &plaintext).unwrap();
        prop_assert_eq!(blob.len(), expected_len(&key, plaintext.len()));
        if !plaintext.is_empty() {
            prop_assert!(blob.starts_with(key.prefix().as_bytes()));
        }
        let decrypted = decrypt(&keys, &blob).unwrap();
        prop_assert_eq!(decrypted.as_slice(), plaintext.as_slice());
    }

    #[test]
    fn explicit_nonce_is_deterministic_and_round_trips(
        raw in any::<[u8; 32]>(),
        nonce in any::<[u8; GCM_NONCE_LEN]>(),
        plaintext in proptest::collection::vec(any::<u8>(), 1..200),
    ) {
        let key = Key::windows(raw);
        let blob = encrypt_with_nonce(&key, &plaintext, nonce).unwrap();
        prop_assert_eq!(&blob, &encrypt_with_nonce(&key, &plaintext, nonce).unwrap());
        prop_assert_eq!(&blob[3..3 + GCM_NONCE_LEN], &nonce[..]);
        let decrypted = decrypt(&Keys::windows(raw), &blob).unwrap();
        prop_assert_eq!(decrypted.as_slice(), plaintext.as_slice());
    }

    #[test]
    fn decrypt_never_panics_and_only_accepts_tagged_blobs(
        platform in 0u8..4,
        blob in proptest::collection::vec(any::<u8>(), 0..100),
    ) {
        let (_, keys) = key_pair(platform, b"secret", [9; 32]);
        match decrypt(&keys, &blob) {
            Ok(plaintext) => {
                prop_assert!(
                    blob.is_empty() || blob.starts_with(b"v10") || blob.starts_with(b"v11")
                );
                prop_assert!(plaintext.len() < blob.len().max(1));
            }
            Err(DecryptError::UnknownPrefix) => {
                prop_assert!(!blob.starts_with(b"v10") && !blob.starts_with(b"v11"));
            }
            Err(_) => {}
        }
    }

    #[test]
    fn row_json_round_trips(blob in proptest::collection::vec(any::<u8>(), 0..300)) {
        let json = encode_buffer_json(&blob);
        prop_assert_eq!(decode_buffer_json(&json).unwrap(), blob.clone());
        // Node's own spelling: a JSON array of the bytes inside the object.
        let array = serde_json::to_string(&blob).unwrap();
        prop_assert_eq!(json, format!(r#"{{"type":"Buffer","data":{array}}}"#));
    }

    #[test]
    fn decode_never_panics(value in proptest::collection::vec(any::<u8>(), 0..100)) {
        let _ = decode_buffer_json(&value);
    }

    #[test]
    fn extension_row_keys_round_trip(extension_id in ".*", key in ".*") {
        let row_key = extension_secret_row_key(&extension_id, &key);
        let parsed = parse_secret_row_key(&row_key).unwrap();
        let extension = parsed.extension.unwrap();
        prop_assert_eq!(extension.extension_id, extension_id);
        prop_assert_eq!(extension.key, key);
    }

    #[test]
    fn any_string_after_the_prefix_is_a_secret_key(raw in ".*") {
        let parsed = parse_secret_row_key(&format!("secret://{raw}")).unwrap();
        prop_assert_eq!(parsed.key, raw);
    }
}
