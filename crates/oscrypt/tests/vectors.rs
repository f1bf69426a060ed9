//! Checks every vector in `vectors/oscrypt-vectors.json` (a copy of the shared reference vectors,
//! which several independent decryptors agree on).

use oscrypt::{
    decode_buffer_json, decrypt, encode_buffer_json, encrypt, encrypt_with_nonce, DecryptError,
    Key, Keys, Platform, GCM_NONCE_LEN,
};
use serde_json::Value;

const VECTORS: &str = include_str!("vectors/oscrypt-vectors.json");

fn load() -> Value {
    serde_json::from_str(VECTORS).expect("vectors file is JSON")
}

fn field<'a>(vector: &'a Value, name: &str) -> &'a str {
    vector[name]
        .as_str()
        .unwrap_or_else(|| panic!("{}: missing string field {name}", vector["name"]))
}

fn hex_field(vector: &Value, name: &str) -> Vec<u8> {
    hex::decode(field(vector, name))
        .unwrap_or_else(|e| panic!("{}: {name} is not hex: {e}", vector["name"]))
}

fn u64_field(vector: &Value, name: &str) -> u64 {
    vector[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{}: missing integer field {name}", vector["name"]))
}

/// The plaintext bytes: `plaintext_hex` where given (checked against `plaintext_utf8`), else
/// `plaintext_utf8` (the Windows vector has no hex form).
fn plaintext_of(vector: &Value) -> Vec<u8> {
    let text = field(vector, "plaintext_utf8").as_bytes().to_vec();
    if vector.get("plaintext_hex").is_some() {
        assert_eq!(
            hex_field(vector, "plaintext_hex"),
            text,
            "{}",
            vector["name"]
        );
    }
    text
}

/// The encryption key and the decryption key set a vector's platform and prefix call for.
fn keys_for(vector: &Value) -> (Key, Keys, Platform) {
    let name = field(vector, "name");
    let prefix = field(vector, "version_prefix_ascii");
    match (field(vector, "platform_format"), prefix) {
        ("linux", "v10") => {
            // Linux v10 has one fixed password; a vector with another would need another API.
            assert_eq!(field(vector, "password_utf8"), "peanuts", "{name}");
            assert_eq!(u64_field(vector, "iterations"), 1, "{name}");
            (Key::linux_v10(), Keys::linux(None), Platform::Linux)
        }
        ("linux", "v11") => {
            assert_eq!(u64_field(vector, "iterations"), 1, "{name}");
            let password = hex_field(vector, "password_hex");
            assert_eq!(
                password,
                field(vector, "password_utf8").as_bytes(),
                "{name}"
            );
            (
                Key::linux_v11(&password),
                Keys::linux(Some(&password)),
                Platform::Linux,
            )
        }
        ("macos", "v10") => {
            assert_eq!(u64_field(vector, "iterations"), 1003, "{name}");
            let password = hex_field(vector, "password_hex");
            assert_eq!(
                password,
                field(vector, "password_utf8").as_bytes(),
                "{name}"
            );
            (
                Key::macos(&password),
                Keys::macos(&password),
                Platform::MacOs,
            )
        }
        ("windows", "v10") => {
            let raw: [u8; 32] = hex_field(vector, "raw_key_hex")
                .try_into()
                .unwrap_or_else(|_| panic!("{name}: raw key is not 32 bytes"));
            (Key::windows(raw), Keys::windows(raw), Platform::Windows)
        }
        (platform, prefix) => panic!("{name}: unhandled platform {platform} / prefix {prefix}"),
    }
}

/// Checks one platform vector; returns its platform.
fn check_platform_vector(vector: &Value) -> Platform {
    let name = field(vector, "name");
    let (key, keys, platform) = keys_for(vector);
    let blob = hex_field(vector, "blob_hex");
    let plaintext = plaintext_of(vector);
    let prefix = field(vector, "version_prefix_ascii");

    assert_eq!(key.platform(), platform, "{name}");
    assert_eq!(keys.platform(), platform, "{name}");
    assert_eq!(key.prefix(), prefix, "{name}");
    assert_eq!(
        plaintext,
        field(vector, "plaintext_utf8").as_bytes(),
        "{name}"
    );
    assert_eq!(blob.len() as u64, u64_field(vector, "blob_len"), "{name}");
    assert!(blob.starts_with(prefix.as_bytes()), "{name}");

    // Key material.
    if platform == Platform::Windows {
        assert_eq!(
            key.expose_secret(),
            hex_field(vector, "raw_key_hex"),
            "{name}"
        );
    } else {
        assert_eq!(
            key.expose_secret(),
            hex_field(vector, "derived_key_hex"),
            "{name}: derived key"
        );
        assert_eq!(u64_field(vector, "derived_key_len"), 16, "{name}");
        assert_eq!(field(vector, "salt_ascii"), "saltysalt", "{name}");
        assert_eq!(field(vector, "iv_hex"), "20".repeat(16), "{name}");
    }

    // Decrypt, byte for byte.
    let decrypted = decrypt(&keys, &blob).unwrap_or_else(|e| panic!("{name}: decrypt: {e}"));
    assert_eq!(decrypted.as_slice(), plaintext, "{name}: plaintext");

    // Encrypt reproduces the blob exactly.
    let encrypted = if platform == Platform::Windows {
        let nonce: [u8; GCM_NONCE_LEN] = hex_field(vector, "nonce_hex")
            .try_into()
            .unwrap_or_else(|_| panic!("{name}: nonce is not {GCM_NONCE_LEN} bytes"));
        let mut parts = prefix.as_bytes().to_vec();
        parts.extend_from_slice(&nonce);
        parts.extend_from_slice(&hex_field(vector, "ciphertext_hex"));
        parts.extend_from_slice(&hex_field(vector, "tag_hex"));
        assert_eq!(
            parts, blob,
            "{name}: blob is prefix || nonce || ciphertext || tag"
        );
        encrypt_with_nonce(&key, &plaintext, nonce)
    } else {
        let mut parts = prefix.as_bytes().to_vec();
        parts.extend_from_slice(&hex_field(vector, "ciphertext_without_prefix_hex"));
        assert_eq!(parts, blob, "{name}: blob is prefix || ciphertext");
        encrypt(&key, &plaintext)
    }
    .unwrap_or_else(|e| panic!("{name}: encrypt: {e}"));
    assert_eq!(hex::encode(encrypted), hex::encode(&blob), "{name}: blob");

    if let Some(check) = vector.get("negative_check") {
        check_negative(vector, check.as_str().unwrap_or_default(), &blob);
    }
    platform
}

fn check_negative(vector: &Value, check: &str, blob: &[u8]) {
    let name = field(vector, "name");
    if check.contains("ciphertext_without_prefix with chromium_kV10Key") {
        // The only way a Linux reader applies the v10 key to these bytes is a v10 tag; the
        // empty-password fallback it then tries must fail as well.
        let ciphertext = hex_field(vector, "ciphertext_without_prefix_hex");
        let mut as_v10 = b"v10".to_vec();
        as_v10.extend_from_slice(&ciphertext);
        let keyring_secret = hex_field(vector, "password_hex");
        for keys in [Keys::linux(None), Keys::linux(Some(&keyring_secret))] {
            assert_eq!(
                decrypt(&keys, &as_v10).map(|p| p.to_vec()),
                Err(DecryptError::BadPadding),
                "{name}: {check}"
            );
        }
        assert_eq!(
            decrypt(&Keys::linux(None), blob).map(|p| p.to_vec()),
            Err(DecryptError::MissingKey { prefix: "v11" }),
            "{name}: v11 blob without the keyring secret"
        );
    } else {
        panic!("{name}: unhandled negative_check {check:?}");
    }
}

fn check_empty_vector(vector: &Value) {
    let name = field(vector, "name");
    assert!(field(vector, "blob_hex").is_empty(), "{name}");
    assert!(field(vector, "plaintext_utf8").is_empty(), "{name}");
    let every_platform = [
        (Key::linux_v10(), Keys::linux(None)),
        (Key::linux_v11(b"secret"), Keys::linux(Some(b"secret"))),
        (Key::macos(b"secret"), Keys::macos(b"secret")),
        (Key::windows([1; 32]), Keys::windows([1; 32])),
    ];
    for (key, keys) in every_platform {
        assert_eq!(encrypt(&key, b"").expect("encrypt"), b"", "{name}: {key:?}");
        assert_eq!(
            decrypt(&keys, b"").expect("decrypt").as_slice(),
            b"",
            "{name}: {keys:?}"
        );
    }
}

#[test]
fn every_vector_holds() {
    let vectors = load();
    let list = vectors["vectors"].as_array().expect("vectors array");
    let mut platforms = Vec::new();
    let mut empty_checked = false;
    for vector in list {
        let name = field(vector, "name");
        let blob = hex_field(vector, "blob_hex");

        // The stored row value round-trips through the row codec.
        let row_value = field(vector, "vscode_statevscdb_value");
        assert_eq!(encode_buffer_json(&blob), row_value, "{name}: row value");
        assert_eq!(
            decode_buffer_json(row_value).expect("row value decodes"),
            blob,
            "{name}: row value"
        );

        if vector.get("platform_format").is_some() {
            platforms.push(check_platform_vector(vector));
        } else {
            check_empty_vector(vector);
            empty_checked = true;
        }
    }
    // A vectors file that lost entries must not pass quietly.
    assert!(empty_checked, "no empty-plaintext vector");
    for platform in [Platform::Linux, Platform::MacOs, Platform::Windows] {
        assert!(platforms.contains(&platform), "no vector for {platform}");
    }
    assert_eq!(list.len(), 5, "vector count changed: review this test");
}

#[test]
fn chromium_constant_keys_match() {
    let vectors = load();
    let common = &vectors["common"];
    assert_eq!(
        hex::encode(Key::linux_v10().expose_secret()),
        field(common, "chromium_kV10Key_hex")
    );
    assert_eq!(
        hex::encode(Key::linux_v11(b"").expose_secret()),
        field(common, "chromium_kEmptyKey_hex")
    );
}
