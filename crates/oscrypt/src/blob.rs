//! Encrypting and decrypting OSCrypt blobs.

use aes::Aes128;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::key::{Key, KeySet, Keys, Material, Version};
use crate::Platform;

/// Chromium's fixed CBC IV: sixteen spaces.
const CBC_IV: [u8; 16] = [0x20; 16];
const AES_BLOCK_LEN: usize = 16;
/// Length of the Windows AES-GCM nonce that follows the version tag.
pub const GCM_NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// Why a blob could not be decrypted.
///
/// Messages name only the failure, never key or plaintext bytes.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecryptError {
    /// The blob does not start with `v10` or `v11` (Electron rejects such blobs too).
    #[error("blob does not start with the version tag v10 or v11")]
    UnknownPrefix,
    /// The platform never writes this version tag, so no key can read it.
    #[error("blob version tag {prefix} is not used on {platform}")]
    UnsupportedPrefix {
        /// The blob's version tag.
        prefix: &'static str,
        /// The platform whose keys were given.
        platform: Platform,
    },
    /// The blob needs a key that was not given (a Linux `v11` blob without the keyring secret).
    #[error("blob version tag {prefix} needs a key that was not given")]
    MissingKey {
        /// The blob's version tag.
        prefix: &'static str,
    },
    /// The blob is shorter than its format's fixed parts (cipher block, or nonce and tag).
    #[error("blob is too short for its format")]
    Truncated,
    /// The CBC ciphertext is not a whole number of AES blocks.
    #[error("blob ciphertext is not a whole number of AES blocks")]
    NotBlockAligned,
    /// CBC decryption gave invalid PKCS#7 padding: the key is wrong or the blob corrupted.
    #[error("wrong key or corrupted blob (invalid PKCS#7 padding)")]
    BadPadding,
    /// The AES-GCM tag did not verify: the key is wrong or the blob corrupted.
    #[error("wrong key or corrupted blob (AES-GCM tag mismatch)")]
    TagMismatch,
}

/// Why a plaintext could not be encrypted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// The operating system's random number generator failed to give a GCM nonce.
    #[error("could not get a random nonce from the operating system")]
    Random(#[source] getrandom::Error),
    /// The plaintext exceeds AES-GCM's per-message limit (64 GiB).
    #[error("plaintext is too long for AES-GCM")]
    TooLong,
}

/// Encrypts `plaintext` into the exact blob the key's platform writes.
///
/// CBC formats are deterministic. The Windows format draws a fresh random nonce. An empty
/// plaintext gives an empty blob, as on every platform.
pub fn encrypt(key: &Key, plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
    let mut nonce = [0u8; GCM_NONCE_LEN];
    if matches!(key.material, Material::Gcm(_)) && !plaintext.is_empty() {
        getrandom::getrandom(&mut nonce).map_err(EncryptError::Random)?;
    }
    encrypt_with_nonce(key, plaintext, nonce)
}

/// Like [`encrypt`], with the Windows AES-GCM nonce given, so that tests can reproduce blobs.
///
/// CBC formats have a fixed IV and ignore `nonce`. Never reuse a nonce with the same Windows key
/// outside tests: that breaks AES-GCM.
pub fn encrypt_with_nonce(
    key: &Key,
    plaintext: &[u8],
    nonce: [u8; GCM_NONCE_LEN],
) -> Result<Vec<u8>, EncryptError> {
    if plaintext.is_empty() {
        return Ok(Vec::new());
    }
    let tag = key.version().tag();
    match &key.material {
        Material::Cbc(k) => {
            let ciphertext = cbc::Encryptor::<Aes128>::new(k.as_ref().into(), &CBC_IV.into())
                .encrypt_padded_vec_mut::<Pkcs7>(plaintext);
            let mut blob = Vec::with_capacity(tag.len() + ciphertext.len());
            blob.extend_from_slice(tag);
            blob.extend_from_slice(&ciphertext);
            Ok(blob)
        }
        Material::Gcm(k) => {
            let header_len = tag.len() + GCM_NONCE_LEN;
            // Reserved up front so the plaintext copied in is never left behind by a reallocation,
            // and zeroized if encryption fails with the plaintext still in place.
            let mut blob = Zeroizing::new(Vec::with_capacity(
                header_len + plaintext.len() + GCM_TAG_LEN,
            ));
            blob.extend_from_slice(tag);
            blob.extend_from_slice(&nonce);
            blob.extend_from_slice(plaintext);
            let gcm_tag = Aes256Gcm::new(k.as_ref().into())
                .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"", &mut blob[header_len..])
                .map_err(|_| EncryptError::TooLong)?;
            blob.extend_from_slice(&gcm_tag);
            Ok(std::mem::take(&mut *blob))
        }
    }
}

/// Decrypts a blob by its platform's rules.
///
/// - An empty blob is the empty plaintext.
/// - Otherwise the blob must start with `v10` or `v11`, and the key is chosen by that tag.
/// - Linux: if the chosen key fails the padding check, the empty-password key is tried once
///   (Chromium does this for both tags). A Linux `v11` blob with no keyring secret fails.
/// - macOS and Windows read `v10` only.
///
/// CBC has no authentication: a wrong key is detected only by invalid PKCS#7 padding, which a
/// wrong key still passes by chance about once in 256 tries, as it does in Chromium.
pub fn decrypt(keys: &Keys, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    if blob.is_empty() {
        return Ok(Zeroizing::new(Vec::new()));
    }
    let (version, body) = Version::split(blob).ok_or(DecryptError::UnknownPrefix)?;
    match &keys.0 {
        KeySet::Linux {
            v10,
            v11,
            empty_fallback,
        } => {
            let key = match version {
                Version::V10 => v10,
                Version::V11 => v11.as_ref().ok_or(DecryptError::MissingKey {
                    prefix: version.as_str(),
                })?,
            };
            match decrypt_body(key, body) {
                Err(DecryptError::BadPadding) => decrypt_body(empty_fallback, body),
                other => other,
            }
        }
        KeySet::MacOs(key) | KeySet::Windows(key) => {
            if version != key.version() {
                return Err(DecryptError::UnsupportedPrefix {
                    prefix: version.as_str(),
                    platform: keys.platform(),
                });
            }
            decrypt_body(key, body)
        }
    }
}

/// Decrypts what follows the version tag with exactly `key`.
fn decrypt_body(key: &Key, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    match &key.material {
        Material::Cbc(k) => {
            if body.is_empty() {
                return Err(DecryptError::Truncated);
            }
            if !body.len().is_multiple_of(AES_BLOCK_LEN) {
                return Err(DecryptError::NotBlockAligned);
            }
            // Decrypted in a zeroizing buffer so that a failed attempt's bytes do not linger.
            let mut buf = Zeroizing::new(body.to_vec());
            let plaintext_len = cbc::Decryptor::<Aes128>::new(k.as_ref().into(), &CBC_IV.into())
                .decrypt_padded_mut::<Pkcs7>(&mut buf)
                .map_err(|_| DecryptError::BadPadding)?
                .len();
            buf.truncate(plaintext_len);
            Ok(buf)
        }
        Material::Gcm(k) => {
            let (nonce, rest) = body
                .split_first_chunk::<GCM_NONCE_LEN>()
                .ok_or(DecryptError::Truncated)?;
            let (ciphertext, tag) = rest
                .split_last_chunk::<GCM_TAG_LEN>()
                .ok_or(DecryptError::Truncated)?;
            // aes-gcm decrypts before it compares tags, so a forged blob's output must be wiped.
            let mut buf = Zeroizing::new(ciphertext.to_vec());
            Aes256Gcm::new(k.as_ref().into())
                .decrypt_in_place_detached(
                    Nonce::from_slice(nonce),
                    b"",
                    &mut buf,
                    Tag::from_slice(tag),
                )
                .map_err(|_| DecryptError::TagMismatch)?;
            Ok(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"k8Q2Vx0mZt5bN1cR4yW7pA==";

    fn all_keys() -> Vec<(Key, Keys)> {
        vec![
            (Key::linux_v10(), Keys::linux(None)),
            (Key::linux_v11(SECRET), Keys::linux(Some(SECRET))),
            (Key::macos(SECRET), Keys::macos(SECRET)),
            (Key::windows([7; 32]), Keys::windows([7; 32])),
        ]
    }

    #[test]
    fn empty_plaintext_is_empty_blob_on_every_platform() {
        for (key, keys) in all_keys() {
            assert_eq!(encrypt(&key, b"").unwrap(), b"", "{key:?}");
            assert_eq!(encrypt_with_nonce(&key, b"", [1; 12]).unwrap(), b"");
            assert_eq!(decrypt(&keys, b"").unwrap().as_slice(), b"", "{key:?}");
        }
    }

    #[test]
    fn bare_version_tag_is_truncated() {
        for (_, keys) in all_keys() {
            assert_eq!(
                decrypt(&keys, b"v10").unwrap_err(),
                DecryptError::Truncated,
                "{keys:?}"
            );
        }
    }

    #[test]
    fn truncated_blobs_fail_without_panicking() {
        for (key, keys) in all_keys() {
            let blob = encrypt(&key, b"a secret of some length").unwrap();
            for len in 1..blob.len() {
                let err = decrypt(&keys, &blob[..len]).unwrap_err();
                let expected: &[DecryptError] = if len < Version::LEN {
                    &[DecryptError::UnknownPrefix]
                } else {
                    &[
                        DecryptError::Truncated,
                        DecryptError::NotBlockAligned,
                        DecryptError::BadPadding,
                        DecryptError::TagMismatch,
                    ]
                };
                assert!(expected.contains(&err), "{key:?} len {len}: {err:?}");
            }
        }
    }

    #[test]
    fn gcm_blob_shorter_than_nonce_and_tag_is_truncated() {
        let keys = Keys::windows([7; 32]);
        let mut blob = b"v10".to_vec();
        blob.extend_from_slice(&[0; GCM_NONCE_LEN + GCM_TAG_LEN - 1]);
        assert_eq!(decrypt(&keys, &blob).unwrap_err(), DecryptError::Truncated);
    }

    #[test]
    fn cbc_blob_off_block_boundary_is_rejected() {
        let mut blob = encrypt(&Key::linux_v10(), b"hello").unwrap();
        blob.push(0);
        assert_eq!(
            decrypt(&Keys::linux(None), &blob).unwrap_err(),
            DecryptError::NotBlockAligned
        );
    }

    #[test]
    fn unknown_prefixes_are_rejected() {
        for (key, keys) in all_keys() {
            // A fixed nonce: a shorter prefix takes the first byte after it into the tag, and
            // a random Windows nonce starting with b'0' or b'1' made "v1" + nonce a valid
            // "v10"/"v11" blob (a failure in 1 run of 128).
            let blob = encrypt_with_nonce(&key, b"hello", [0xa5; GCM_NONCE_LEN]).unwrap();
            for prefix in [&b"v20"[..], b"V10", b"v1", b"x", b"v12"] {
                let mut bad = prefix.to_vec();
                bad.extend_from_slice(&blob[Version::LEN..]);
                assert_eq!(
                    decrypt(&keys, &bad).unwrap_err(),
                    DecryptError::UnknownPrefix,
                    "{keys:?} {prefix:?}"
                );
            }
        }
    }

    #[test]
    fn v11_is_unsupported_on_macos_and_windows() {
        let blob = encrypt(&Key::linux_v11(SECRET), b"hello").unwrap();
        for keys in [Keys::macos(SECRET), Keys::windows([7; 32])] {
            assert!(matches!(
                decrypt(&keys, &blob).unwrap_err(),
                DecryptError::UnsupportedPrefix { prefix: "v11", .. }
            ));
        }
    }

    #[test]
    fn linux_v11_without_keyring_secret_is_missing_key() {
        let blob = encrypt(&Key::linux_v11(SECRET), b"hello").unwrap();
        assert_eq!(
            decrypt(&Keys::linux(None), &blob).unwrap_err(),
            DecryptError::MissingKey { prefix: "v11" }
        );
    }

    #[test]
    fn wrong_key_is_an_error_not_garbage() {
        let plaintext = b"a token that must not come back wrong";
        let cases = [
            (Key::linux_v11(SECRET), Keys::linux(Some(b"other secret"))),
            (Key::macos(SECRET), Keys::macos(b"other password")),
            (Key::windows([7; 32]), Keys::windows([8; 32])),
        ];
        for (key, wrong) in cases {
            let blob = encrypt(&key, plaintext).unwrap();
            let err = decrypt(&wrong, &blob).unwrap_err();
            assert!(
                matches!(err, DecryptError::BadPadding | DecryptError::TagMismatch),
                "{key:?}: {err:?}"
            );
        }
    }

    #[test]
    fn linux_falls_back_to_the_empty_password_key_for_both_tags() {
        let plaintext = b"written by a Chromium that had an empty keyring secret";
        let blob_v11 = encrypt(&Key::linux_v11(b""), plaintext).unwrap();
        let decrypted = decrypt(&Keys::linux(Some(SECRET)), &blob_v11).unwrap();
        assert_eq!(decrypted.as_slice(), plaintext);

        let mut blob_v10 = blob_v11.clone();
        blob_v10[..Version::LEN].copy_from_slice(b"v10");
        let decrypted = decrypt(&Keys::linux(None), &blob_v10).unwrap();
        assert_eq!(decrypted.as_slice(), plaintext);
    }

    #[test]
    fn macos_does_not_fall_back_to_the_empty_password_key() {
        let blob = encrypt(&Key::macos(b""), b"hello").unwrap();
        assert_eq!(
            decrypt(&Keys::macos(SECRET), &blob).unwrap_err(),
            DecryptError::BadPadding
        );
    }

    #[test]
    fn tampered_gcm_blob_fails_tag_check() {
        let key = Key::windows([7; 32]);
        let blob = encrypt(&key, b"hello").unwrap();
        for i in Version::LEN..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 1;
            assert_eq!(
                decrypt(&Keys::windows([7; 32]), &bad).unwrap_err(),
                DecryptError::TagMismatch,
                "byte {i}"
            );
        }
    }

    #[test]
    fn random_gcm_nonces_differ() {
        let key = Key::windows([7; 32]);
        let a = encrypt(&key, b"hello").unwrap();
        let b = encrypt(&key, b"hello").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), Version::LEN + GCM_NONCE_LEN + 5 + GCM_TAG_LEN);
    }
}
