//! The vault's crypto boundary: data keys, key-encryption keys, sealed values and the FROZEN
//! associated-data encoding. Everything on the far side of [`Sealed`] is ciphertext; everything
//! on the near side is a [`SecretValue`] or a zeroized key. `docs/vault-format.md` describes the
//! same bytes for readers who do not read Rust.

use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};
use crate::model::SecretValue;

/// The version of the sealed-record schema: the first byte of every [`Sealed`] value and the
/// `schema_version` bound into its associated data. Changing how a value is sealed means a new
/// number, never a new meaning for this one.
pub(crate) const RECORD_SCHEMA_V1: u8 = 1;

/// The version of the wrapped-DEK encoding kept in the vault's `meta` table.
pub(crate) const WRAPPED_DEK_V1: u8 = 1;

pub(crate) const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 24;
pub(crate) const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 1 + NONCE_LEN;

/// Domain separation tags: a sealed value can never be taken for a wrapped DEK or vice versa.
const VALUE_DOMAIN: &[u8] = b"keyshare/vault/value";
const DEK_DOMAIN: &[u8] = b"keyshare/vault/dek";

/// How much of the stack below a cipher call [`wipe_stack`] overwrites: more than the cipher's
/// frames take, in which it leaves plaintext (see there). Measured on x86-64 with AVX2, opening
/// a value wrote at most 4.6 KiB below the caller optimised, 46 KiB unoptimised (a debug build,
/// where every temporary has a slot of its own). The margin leaves room for another backend or
/// compiler; 16 KiB costs a few microseconds, little beside the SQLite read or write around it.
const STACK_WIPE_LEN: usize = if cfg!(debug_assertions) {
    64 * 1024
} else {
    16 * 1024
};

/// Overwrites the stack that a cipher call has just returned from: call it right after the
/// call, from the same function, so that its frame lies where the cipher's frames were.
///
/// chacha20's backends XOR each 64-byte block through a stack temporary (`inout`'s
/// `xor_in2out`): after a value is sealed or opened, the last whole block that did not go
/// through a 4-block (256-byte) batch stays in that temporary, in plaintext, on a stack that
/// lives as long as its thread (a broker's worker thread: days), until deeper calls happen to
/// overwrite it (QA s18 F3, found with gcore in the broker after `get`). The cipher's API
/// offers no way to clear it, so it is wiped from outside.
#[inline(never)]
fn wipe_stack() {
    // Words, not bytes: the writes are volatile, one each.
    let mut scratch = [0u64; STACK_WIPE_LEN / 8];
    scratch.zeroize();
    // Keeps the frame, and so the writes, from being optimised away.
    std::hint::black_box(&scratch);
}

/// Fills `buf` from the OS's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::getrandom(buf).map_err(|e| {
        Error::io(
            "reading the OS random number generator",
            std::io::Error::other(e),
        )
    })
}

/// A vault's data-encryption key: 256 random bits, one per vault file. Never stored in the
/// clear; the vault keeps it wrapped by a [`Kek`].
#[derive(Clone)]
pub(crate) struct Dek(Zeroizing<[u8; KEY_LEN]>);

impl Dek {
    pub(crate) fn generate() -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(key.as_mut())?;
        Ok(Dek(key))
    }

    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Dek(Zeroizing::new(bytes))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        // The cipher zeroizes its copy of the key on drop (chacha20poly1305's `Drop`).
        XChaCha20Poly1305::new(Key::from_slice(self.0.as_ref()))
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek([REDACTED])")
    }
}

/// A key-encryption key: what an OS keyring entry, a key file or a passphrase (through
/// Argon2id) provides to unwrap a vault's data key. 256 bits, zeroized on drop, redacted in
/// `Debug`, read through [`Kek::expose_secret`].
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; KEY_LEN]>);

impl Kek {
    /// The length of a KEK in bytes.
    pub const LEN: usize = KEY_LEN;

    /// A fresh random KEK.
    pub fn generate() -> Result<Self> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(key.as_mut())?;
        Ok(Kek(key))
    }

    /// Wraps exactly [`Kek::LEN`] bytes, e.g. as read back from a keyring.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            Error::invalid(
                "vault key",
                format!(
                    "a vault key is {KEY_LEN} bytes, this one is {} bytes",
                    bytes.len()
                ),
            )
        })?;
        Ok(Kek(Zeroizing::new(array)))
    }

    pub(crate) fn from_array(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        Kek(bytes)
    }

    /// The key bytes. The name is deliberately loud.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(self.0.as_ref()))
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek([REDACTED])")
    }
}

/// The associated data every sealed value is bound to. **FROZEN**: the byte encoding below is
/// part of the on-disk format (see `docs/vault-format.md` and the fixed vector in the tests);
/// changing it makes every existing vault unreadable. A new encoding needs a new
/// `schema_version`, with the old one still readable.
///
/// Encoding, version 1 (all integers big-endian):
///
/// | bytes | field |
/// |---|---|
/// | 20 | ASCII `keyshare/vault/value` (domain tag) |
/// | 1 | `schema_version` (= 1) |
/// | 4 | length of `namespace` in bytes |
/// | n | `namespace`, UTF-8 |
/// | 4 | length of `key` in bytes |
/// | k | `key`, UTF-8 |
///
/// The length prefixes keep `("a", "bc")` and `("ab", "c")` apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AssociatedData<'a> {
    pub(crate) schema_version: u8,
    pub(crate) namespace: &'a str,
    pub(crate) key: &'a str,
}

impl<'a> AssociatedData<'a> {
    pub(crate) fn v1(namespace: &'a str, key: &'a str) -> Self {
        AssociatedData {
            schema_version: RECORD_SCHEMA_V1,
            namespace,
            key,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(VALUE_DOMAIN.len() + 1 + 8 + self.namespace.len() + self.key.len());
        out.extend_from_slice(VALUE_DOMAIN);
        out.push(self.schema_version);
        push_prefixed(&mut out, self.namespace.as_bytes());
        push_prefixed(&mut out, self.key.as_bytes());
        out
    }
}

fn push_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Namespaces and keys are bounded far below 4 GiB (keys by `MAX_KEY_LEN`, namespaces by
    // the vault's check), so the length always fits.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A value as stored: `schema_version (1) || nonce (24) || ciphertext || tag (16)`. Holding a
/// `Sealed` says nothing about whether it authenticates; only [`Sealed::open`] does.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Sealed(Vec<u8>);

impl Sealed {
    /// Encrypts `value` under `dek` with a fresh random nonce, bound to `aad`.
    pub(crate) fn seal(dek: &Dek, aad: &AssociatedData<'_>, value: &SecretValue) -> Result<Self> {
        let mut nonce = [0u8; NONCE_LEN];
        random_bytes(&mut nonce)?;
        Self::seal_with_nonce(dek, &nonce, aad, value)
    }

    /// [`Sealed::seal`] with a caller-chosen nonce: only for the fixed test vector, since a
    /// repeated nonce under one key breaks the cipher.
    pub(crate) fn seal_with_nonce(
        dek: &Dek,
        nonce: &[u8; NONCE_LEN],
        aad: &AssociatedData<'_>,
        value: &SecretValue,
    ) -> Result<Self> {
        let plain = value.expose_secret();
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.push(aad.schema_version);
        out.extend_from_slice(nonce);
        out.extend_from_slice(plain);
        // Encrypting in place leaves no plaintext copy behind in `out`, but the cipher leaves
        // one block of it on the stack.
        let sealed = dek.cipher().encrypt_in_place_detached(
            XNonce::from_slice(nonce),
            &aad.encode(),
            &mut out[HEADER_LEN..],
        );
        wipe_stack();
        let tag = sealed.map_err(|_| Error::invalid("value", "too large to encrypt"))?;
        out.extend_from_slice(&tag);
        Ok(Sealed(out))
    }

    pub(crate) fn from_stored(bytes: Vec<u8>) -> Self {
        Sealed(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Authenticates and decrypts. The error says which check failed, never anything about
    /// the plaintext; the caller adds the store and key to it.
    pub(crate) fn open(
        &self,
        dek: &Dek,
        aad: &AssociatedData<'_>,
    ) -> std::result::Result<SecretValue, &'static str> {
        let bytes = &self.0;
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err("sealed value is too short");
        }
        if bytes[0] != aad.schema_version {
            return Err("sealed value has an unknown format version");
        }
        let nonce = XNonce::from_slice(&bytes[1..HEADER_LEN]);
        let (body, tag) = bytes[HEADER_LEN..].split_at(bytes.len() - HEADER_LEN - TAG_LEN);
        let mut plain = Zeroizing::new(body.to_vec());
        let opened = dek.cipher().decrypt_in_place_detached(
            nonce,
            &aad.encode(),
            &mut plain,
            Tag::from_slice(tag),
        );
        // The cipher leaves one block of the plaintext on the stack.
        wipe_stack();
        opened.map_err(|_| {
            "authentication failed (the value was altered, or moved from another key or \
             namespace)"
        })?;
        Ok(SecretValue::from(plain))
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({} bytes)", self.0.len())
    }
}

/// The associated data of a wrapped DEK: the domain tag, the format version, the vault id and
/// the provider name, so a wrapped key cannot be moved to another vault or relabelled as
/// protected by another provider.
fn dek_aad(vault_id: &[u8], provider: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(DEK_DOMAIN.len() + 1 + 8 + vault_id.len() + provider.len());
    out.extend_from_slice(DEK_DOMAIN);
    out.push(WRAPPED_DEK_V1);
    push_prefixed(&mut out, vault_id);
    push_prefixed(&mut out, provider.as_bytes());
    out
}

/// Wraps `dek` under `kek`: `version (1) || nonce (24) || encrypted DEK (32) || tag (16)`.
pub(crate) fn wrap_dek(kek: &Kek, dek: &Dek, vault_id: &[u8], provider: &str) -> Result<Vec<u8>> {
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    let mut out = Vec::with_capacity(HEADER_LEN + KEY_LEN + TAG_LEN);
    out.push(WRAPPED_DEK_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(dek.0.as_ref());
    let wrapped = kek.cipher().encrypt_in_place_detached(
        XNonce::from_slice(&nonce),
        &dek_aad(vault_id, provider),
        &mut out[HEADER_LEN..],
    );
    // As for values: the cipher's stack may hold the key's bytes.
    wipe_stack();
    let tag = wrapped.map_err(|_| Error::invalid("vault key", "cannot wrap the data key"))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Why a wrapped DEK did not unwrap.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum UnwrapError {
    /// The stored bytes are not a wrapped DEK of a known version.
    Malformed,
    /// The KEK is not the one the DEK was wrapped with (or the bytes were altered).
    WrongKey,
}

pub(crate) fn unwrap_dek(
    kek: &Kek,
    wrapped: &[u8],
    vault_id: &[u8],
    provider: &str,
) -> std::result::Result<Dek, UnwrapError> {
    if wrapped.len() != HEADER_LEN + KEY_LEN + TAG_LEN || wrapped[0] != WRAPPED_DEK_V1 {
        return Err(UnwrapError::Malformed);
    }
    let nonce = XNonce::from_slice(&wrapped[1..HEADER_LEN]);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&wrapped[HEADER_LEN..HEADER_LEN + KEY_LEN]);
    let tag = Tag::from_slice(&wrapped[HEADER_LEN + KEY_LEN..]);
    let unwrapped = kek.cipher().decrypt_in_place_detached(
        nonce,
        &dek_aad(vault_id, provider),
        key.as_mut(),
        tag,
    );
    wipe_stack();
    unwrapped.map_err(|_| UnwrapError::WrongKey)?;
    Ok(Dek(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::Aead;
    use proptest::prelude::*;

    fn dek(byte: u8) -> Dek {
        Dek::from_bytes([byte; KEY_LEN])
    }

    /// The committed vector for sealed-record format v1 (`docs/vault-format.md`). If this test
    /// fails, the on-disk format changed: existing vaults would no longer open.
    #[test]
    fn fixed_vector_v1() {
        let dek = Dek::from_bytes(std::array::from_fn(|i| i as u8)); // 00 01 .. 1f
        let nonce: [u8; NONCE_LEN] = std::array::from_fn(|i| 0xa0 + i as u8); // a0 .. b7
        let aad = AssociatedData::v1("dev.keyshare.shared-secrets", "github.auth");
        let value = SecretValue::from_slice(b"gho_exampletoken");
        let sealed = Sealed::seal_with_nonce(&dek, &nonce, &aad, &value).unwrap();
        let expected = concat!(
            "01",
            "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7",
            // ciphertext (16 bytes) then tag (16 bytes)
            "22846542d225c5c1110348fd1e5bc6ae",
            "f8cc59a73282d8daeb22337518934dad",
        );
        assert_eq!(hex::encode(sealed.as_bytes()), expected);

        // The AAD bytes written out by hand, independently of `AssociatedData::encode`.
        let mut manual = b"keyshare/vault/value".to_vec();
        manual.push(1);
        manual.extend_from_slice(&[0, 0, 0, 27]);
        manual.extend_from_slice(b"dev.keyshare.shared-secrets");
        manual.extend_from_slice(&[0, 0, 0, 11]);
        manual.extend_from_slice(b"github.auth");
        assert_eq!(aad.encode(), manual);
        let plain =
            XChaCha20Poly1305::new(Key::from_slice(&std::array::from_fn::<u8, 32, _>(|i| {
                i as u8
            })))
            .decrypt(
                XNonce::from_slice(&nonce),
                chacha20poly1305::aead::Payload {
                    msg: &sealed.as_bytes()[HEADER_LEN..],
                    aad: &manual,
                },
            )
            .unwrap();
        assert_eq!(plain, b"gho_exampletoken");
        assert_eq!(
            sealed.open(&dek, &aad).unwrap().expose_secret(),
            b"gho_exampletoken"
        );
    }

    #[test]
    fn nonces_differ_per_write() {
        let aad = AssociatedData::v1("ns", "k");
        let v = SecretValue::from_slice(b"same");
        let a = Sealed::seal(&dek(1), &aad, &v).unwrap();
        let b = Sealed::seal(&dek(1), &aad, &v).unwrap();
        assert_ne!(a.as_bytes()[1..HEADER_LEN], b.as_bytes()[1..HEADER_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let aad = AssociatedData::v1("ns", "k");
        let sealed = Sealed::seal(&dek(1), &aad, &SecretValue::from_slice(b"value")).unwrap();
        for i in 0..sealed.as_bytes().len() {
            let mut bytes = sealed.as_bytes().to_vec();
            bytes[i] ^= 0x01;
            assert!(
                Sealed::from_stored(bytes).open(&dek(1), &aad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        assert!(Sealed::from_stored(vec![1; 10])
            .open(&dek(1), &aad)
            .is_err());
    }

    #[test]
    fn dek_wrapping() {
        let kek = Kek::generate().unwrap();
        let data_key = Dek::generate().unwrap();
        let wrapped = wrap_dek(&kek, &data_key, b"vault-1", "key-file").unwrap();
        let back = unwrap_dek(&kek, &wrapped, b"vault-1", "key-file").unwrap();
        assert_eq!(back.0.as_ref(), data_key.0.as_ref());
        let other = Kek::generate().unwrap();
        assert_eq!(
            unwrap_dek(&other, &wrapped, b"vault-1", "key-file").err(),
            Some(UnwrapError::WrongKey)
        );
        assert_eq!(
            unwrap_dek(&kek, &wrapped, b"vault-2", "key-file").err(),
            Some(UnwrapError::WrongKey)
        );
        assert_eq!(
            unwrap_dek(&kek, &wrapped, b"vault-1", "passphrase").err(),
            Some(UnwrapError::WrongKey)
        );
        assert_eq!(
            unwrap_dek(&kek, &wrapped[1..], b"vault-1", "key-file").err(),
            Some(UnwrapError::Malformed)
        );
    }

    #[test]
    fn keys_are_redacted() {
        let kek = Kek::from_slice(&[0x41; 32]).unwrap();
        assert_eq!(format!("{kek:?}"), "Kek([REDACTED])");
        assert_eq!(format!("{:?}", dek(0x41)), "Dek([REDACTED])");
        assert!(Kek::from_slice(&[0; 31]).is_err());
    }

    /// The bytes of `masked` unmasked (each XORed with 0xa5). The tests below keep the value
    /// they look for masked, so that their own copy of it is not what they find.
    fn unmask(masked: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(masked.iter().map(|b| b ^ 0xa5).collect())
    }

    /// Whether this thread's stack holds a 32-byte window of the value `masked` hides, read
    /// through `/proc/self/mem` (no unsafe code needed to read memory no variable owns).
    #[cfg(target_os = "linux")]
    fn stack_holds(masked: &[u8]) -> bool {
        use std::os::unix::fs::FileExt;
        let here = std::hint::black_box(0u8);
        let here = std::ptr::addr_of!(here) as u64;
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let (start, end) = maps
            .lines()
            .filter_map(|line| {
                let (start, rest) = line.split_once('-')?;
                let end = rest.split_whitespace().next()?;
                Some((
                    u64::from_str_radix(start, 16).ok()?,
                    u64::from_str_radix(end, 16).ok()?,
                ))
            })
            .find(|(start, end)| (*start..*end).contains(&here))
            .expect("this thread's stack is mapped");
        let mut stack = Zeroizing::new(vec![0u8; (end - start) as usize]);
        let mem = std::fs::File::open("/proc/self/mem").unwrap();
        mem.read_exact_at(&mut stack, start).unwrap();
        // Masked in place at once: this buffer then holds the masked form, never the value.
        for byte in stack.iter_mut() {
            *byte ^= 0xa5;
        }
        masked
            .windows(32)
            .step_by(16)
            .any(|needle| stack.windows(32).any(|w| w == needle))
    }

    /// Leaves copies of the value on the stack, 4 to 8 KiB above the end of what
    /// [`wipe_stack`] clears below the caller: as a cipher backend leaves a block of it in a
    /// temporary of its own frames (QA s18 F3), only deeper than the cipher's calls reach
    /// ([`STACK_WIPE_LEN`] says how deep they go), so that they cannot overwrite it by chance.
    #[inline(never)]
    fn leave_on_stack(masked: &[u8]) {
        let mut frame = [0u8; STACK_WIPE_LEN - 4096];
        // An array's first bytes are the deepest in the frame (stacks grow down).
        for (byte, masked) in frame[..4096].iter_mut().zip(masked.iter().cycle()) {
            *byte = masked ^ 0xa5;
        }
        std::hint::black_box(&mut frame);
    }

    /// `open` and `seal` wipe the stack below them, where the cipher left plaintext (QA s18
    /// F3: a block of each value a broker served stayed in its worker thread's stack). The
    /// cipher leaves its block there only in some builds (an optimised one; the vault_memory
    /// integration test sees it there), so the residue here is planted, where the cipher's
    /// frames would be.
    #[cfg(target_os = "linux")]
    #[test]
    fn sealing_and_opening_leave_no_plaintext_on_the_stack() {
        let mut masked = Zeroizing::new(vec![0u8; 200]);
        random_bytes(&mut masked).unwrap();
        let d = dek(3);
        let aad = AssociatedData::v1("ns", "k");
        let sealed = Sealed::seal(&d, &aad, &SecretValue::from_slice(&unmask(&masked))).unwrap();

        leave_on_stack(&masked);
        assert!(
            stack_holds(&masked),
            "the planted copy is gone before the test looks: the test cannot see a residue"
        );

        leave_on_stack(&masked);
        let opened = sealed.open(&d, &aad).unwrap();
        assert_eq!(opened.expose_secret(), &unmask(&masked)[..]);
        drop(opened);
        assert!(
            !stack_holds(&masked),
            "opening left the value's bytes on the stack below it"
        );

        leave_on_stack(&masked);
        let value = SecretValue::from_slice(&unmask(&masked));
        Sealed::seal(&d, &aad, &value).unwrap();
        drop(value);
        assert!(
            !stack_holds(&masked),
            "sealing left the value's bytes on the stack below it"
        );
    }

    proptest! {
        #[test]
        fn round_trip(ns in "\\PC{1,40}", key in "\\PC{1,80}", value in proptest::collection::vec(any::<u8>(), 0..512)) {
            let d = dek(7);
            let aad = AssociatedData::v1(&ns, &key);
            let sealed = Sealed::seal(&d, &aad, &SecretValue::from_slice(&value)).unwrap();
            let back = sealed.open(&d, &aad).unwrap();
            prop_assert_eq!(back.expose_secret(), &value[..]);
        }

        #[test]
        fn bound_to_namespace_and_key(
            ns in "[a-z.]{1,12}", key in "[a-z.]{1,12}",
            other_ns in "[a-z.]{1,12}", other_key in "[a-z.]{1,12}",
            value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            prop_assume!((ns.as_str(), key.as_str()) != (other_ns.as_str(), other_key.as_str()));
            let d = dek(9);
            let sealed = Sealed::seal(&d, &AssociatedData::v1(&ns, &key), &SecretValue::from_slice(&value)).unwrap();
            prop_assert!(sealed.open(&d, &AssociatedData::v1(&other_ns, &other_key)).is_err());
            // Only the namespace moved, or only the key.
            if other_ns != ns {
                prop_assert!(sealed.open(&d, &AssociatedData::v1(&other_ns, &key)).is_err());
            }
            if other_key != key {
                prop_assert!(sealed.open(&d, &AssociatedData::v1(&ns, &other_key)).is_err());
            }
            // Same bytes, shifted between namespace and key: the length prefixes keep them apart.
            let joined = format!("{ns}{key}");
            if joined.len() > 1 {
                let (a, b) = joined.split_at(1);
                if (a, b) != (ns.as_str(), key.as_str()) {
                    prop_assert!(sealed.open(&d, &AssociatedData::v1(a, b)).is_err());
                }
            }
            // A different record schema version never opens it either.
            let mut aad = AssociatedData::v1(&ns, &key);
            aad.schema_version = 2;
            prop_assert!(sealed.open(&d, &aad).is_err());
        }
    }
}
