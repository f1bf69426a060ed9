//! A secret row's value the way a legacy store reads and writes it: a Node Buffer's JSON around
//! an OSCrypt blob. Reading arbitrary bytes (decode, then decrypt) must never panic, and any
//! plaintext written with a platform's key must read back unchanged with that platform's keys.
//!
//! Input: a selector byte (its high bit: write-then-read instead of read; its low bits: the
//! platform), then the row value or the plaintext.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use oscrypt::{decode_buffer_json, decrypt, encode_buffer_json, encrypt_with_nonce, Key, Keys};

const SECRET: &[u8] = b"k8Q2Vx0mZt5bN1cR4yW7pA==";
const RAW_KEY: [u8; 32] = [0x42; 32];

// Derived once: the macOS key's 1003 PBKDF2 rounds per input would dominate the run.
static PLATFORMS: LazyLock<[(Key, Keys); 4]> = LazyLock::new(|| {
    [
        (Key::linux_v10(), Keys::linux(None)),
        (Key::linux_v11(SECRET), Keys::linux(Some(SECRET))),
        (Key::macos(SECRET), Keys::macos(SECRET)),
        (Key::windows(RAW_KEY), Keys::windows(RAW_KEY)),
    ]
});

fuzz_target!(|input: &[u8]| {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let (key, keys) = &PLATFORMS[usize::from(selector % 4)];
    if selector & 0x80 == 0 {
        if let Ok(blob) = decode_buffer_json(rest) {
            let _ = decrypt(keys, &blob);
        }
        return;
    }
    let blob = encrypt_with_nonce(key, rest, [selector; 12]).expect("a small plaintext encrypts");
    let row = encode_buffer_json(&blob);
    let read = decode_buffer_json(row.as_bytes()).expect("a written row decodes");
    assert_eq!(read, blob);
    let plaintext = decrypt(keys, &read).expect("a written blob decrypts with its keys");
    assert_eq!(plaintext.as_slice(), rest);
});
