//! Decrypting arbitrary blobs must never panic, and whatever decrypts must re-encrypt to the same
//! blob where the format is deterministic.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use oscrypt::{decrypt, encrypt, encrypt_with_nonce, Key, Keys, GCM_NONCE_LEN};

const SECRET: &[u8] = b"k8Q2Vx0mZt5bN1cR4yW7pA==";
const RAW_KEY: [u8; 32] = [0x42; 32];

// Derived once: the macOS key's 1003 PBKDF2 rounds per input would dominate the run.
static LINUX_NO_KEYRING: LazyLock<Keys> = LazyLock::new(|| Keys::linux(None));
static LINUX_KEYRING: LazyLock<Keys> = LazyLock::new(|| Keys::linux(Some(SECRET)));
static MACOS: LazyLock<(Key, Keys)> = LazyLock::new(|| (Key::macos(SECRET), Keys::macos(SECRET)));
static WINDOWS: LazyLock<(Key, Keys)> =
    LazyLock::new(|| (Key::windows(RAW_KEY), Keys::windows(RAW_KEY)));

fuzz_target!(|input: &[u8]| {
    let Some((&selector, blob)) = input.split_first() else {
        return;
    };
    match selector % 4 {
        // Linux may succeed through the empty-password fallback, so no re-encryption check.
        0 => {
            let _ = decrypt(&LINUX_NO_KEYRING, blob);
        }
        1 => {
            let _ = decrypt(&LINUX_KEYRING, blob);
        }
        2 => {
            if let Ok(plaintext) = decrypt(&MACOS.1, blob) {
                let again = encrypt(&MACOS.0, &plaintext).expect("CBC encrypt");
                assert_eq!(again, blob, "macOS blob did not re-encrypt identically");
            }
        }
        _ => {
            if let Ok(plaintext) = decrypt(&WINDOWS.1, blob) {
                if blob.is_empty() {
                    assert!(plaintext.is_empty());
                    return;
                }
                let nonce: [u8; GCM_NONCE_LEN] = blob[3..3 + GCM_NONCE_LEN]
                    .try_into()
                    .expect("a decrypted Windows blob holds a nonce");
                let again = encrypt_with_nonce(&WINDOWS.0, &plaintext, nonce).expect("GCM encrypt");
                assert_eq!(again, blob, "Windows blob did not re-encrypt identically");
            }
        }
    }
});
