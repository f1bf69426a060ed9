//! The Credential Manager calls (advapi32) behind safe functions: the one place the Windows
//! store uses `unsafe`.
//!
//! NEVER RUN on the project's machines (Linux only): type-checked and linted with
//! `cargo clippy -p keyshare --lib --target x86_64-pc-windows-gnu`, against windows-sys 0.60.
#![allow(unsafe_code)]

use std::ffi::c_void;

use windows_sys::Win32::Foundation::{GetLastError, ERROR_NOT_FOUND};
use windows_sys::Win32::Security::Credentials::{
    CredDeleteW, CredEnumerateW, CredFree, CredReadW, CredWriteW, CREDENTIALW,
    CREDENTIAL_ATTRIBUTEW, CRED_PERSIST_LOCAL_MACHINE, CRED_TYPE_GENERIC,
};
use zeroize::Zeroizing;

/// A Win32 error code (`GetLastError`).
pub(super) type Win32Error = u32;

/// What a credential holds that the store uses.
pub(super) struct Credential {
    pub blob: Zeroizing<Vec<u8>>,
    /// The value of the attribute asked for, if the credential has it.
    pub attribute: Option<Vec<u8>>,
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

/// Reads a NUL-terminated UTF-16 string.
///
/// SAFETY (for callers): `p` is NULL or points to a NUL-terminated UTF-16 string that stays
/// valid during the call.
unsafe fn from_wide(p: *const u16) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut len = 0;
    // SAFETY: the caller guarantees a terminating NUL, so every index read is in bounds.
    while unsafe { *p.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` elements from `p` were just read, so they are valid.
    String::from_utf16(unsafe { std::slice::from_raw_parts(p, len) }).ok()
}

/// Reads the generic credential `target`; `Ok(None)` when there is none.
pub(super) fn read(target: &str, keyword: &str) -> Result<Option<Credential>, Win32Error> {
    let target = wide(target);
    let mut cred: *mut CREDENTIALW = std::ptr::null_mut();
    // SAFETY: `target` is NUL-terminated and outlives the call; `cred` is a valid out-pointer.
    if unsafe { CredReadW(target.as_ptr(), CRED_TYPE_GENERIC, 0, &mut cred) } == 0 {
        // SAFETY: no precondition.
        return match unsafe { GetLastError() } {
            ERROR_NOT_FOUND => Ok(None),
            e => Err(e),
        };
    }
    // SAFETY: on success `cred` points to a CREDENTIALW that stays valid until `CredFree`; its
    // blob holds `CredentialBlobSize` bytes and its attribute array `AttributeCount` entries,
    // each with `ValueSize` bytes of value and a NUL-terminated keyword. Everything is copied
    // out before the free.
    let credential = unsafe {
        let c = &*cred;
        let blob = if c.CredentialBlob.is_null() || c.CredentialBlobSize == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(c.CredentialBlob, c.CredentialBlobSize as usize).to_vec()
        };
        let mut attribute = None;
        for i in 0..c.AttributeCount as usize {
            let a = &*c.Attributes.add(i);
            if from_wide(a.Keyword).as_deref() == Some(keyword) {
                attribute = Some(if a.Value.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(a.Value, a.ValueSize as usize).to_vec()
                });
            }
        }
        CredFree(cred as *const c_void);
        Credential {
            blob: Zeroizing::new(blob),
            attribute,
        }
    };
    Ok(Some(credential))
}

/// Creates or replaces the generic credential `target`, persisted on this machine.
pub(super) fn write(
    target: &str,
    user: &str,
    blob: &[u8],
    attribute: Option<(&str, &[u8])>,
) -> Result<(), Win32Error> {
    let mut target = wide(target);
    let mut user = wide(user);
    let mut keyword = attribute.map(|(k, _)| wide(k)).unwrap_or_default();
    let mut value = attribute.map(|(_, v)| v.to_vec()).unwrap_or_default();
    let mut attributes = CREDENTIAL_ATTRIBUTEW {
        Keyword: keyword.as_mut_ptr(),
        Flags: 0,
        ValueSize: value.len() as u32,
        Value: value.as_mut_ptr(),
    };
    // CredWriteW takes a mutable blob pointer but only reads it.
    let mut blob = Zeroizing::new(blob.to_vec());
    let credential = CREDENTIALW {
        Type: CRED_TYPE_GENERIC,
        TargetName: target.as_mut_ptr(),
        UserName: user.as_mut_ptr(),
        CredentialBlobSize: blob.len() as u32,
        CredentialBlob: blob.as_mut_ptr(),
        Persist: CRED_PERSIST_LOCAL_MACHINE,
        AttributeCount: u32::from(attribute.is_some()),
        Attributes: if attribute.is_some() {
            &mut attributes
        } else {
            std::ptr::null_mut()
        },
        ..CREDENTIALW::default()
    };
    // SAFETY: every pointer in `credential` points into a buffer above that outlives the call
    // and matches the size stored next to it; the strings are NUL-terminated.
    if unsafe { CredWriteW(&credential, 0) } == 0 {
        // SAFETY: no precondition.
        return Err(unsafe { GetLastError() });
    }
    Ok(())
}

/// Deletes the generic credential `target`; `Ok(false)` when there was none.
pub(super) fn delete(target: &str) -> Result<bool, Win32Error> {
    let target = wide(target);
    // SAFETY: `target` is NUL-terminated and outlives the call.
    if unsafe { CredDeleteW(target.as_ptr(), CRED_TYPE_GENERIC, 0) } == 0 {
        // SAFETY: no precondition.
        return match unsafe { GetLastError() } {
            ERROR_NOT_FOUND => Ok(false),
            e => Err(e),
        };
    }
    Ok(true)
}

/// The target names matching `filter` (a prefix followed by `*`).
pub(super) fn enumerate(filter: &str) -> Result<Vec<String>, Win32Error> {
    let filter = wide(filter);
    let mut count = 0u32;
    let mut list: *mut *mut CREDENTIALW = std::ptr::null_mut();
    // SAFETY: `filter` is NUL-terminated and outlives the call; the out-pointers are valid.
    if unsafe { CredEnumerateW(filter.as_ptr(), 0, &mut count, &mut list) } == 0 {
        // SAFETY: no precondition.
        return match unsafe { GetLastError() } {
            ERROR_NOT_FOUND => Ok(Vec::new()),
            e => Err(e),
        };
    }
    // SAFETY: on success `list` holds `count` valid credential pointers until `CredFree`; the
    // names are copied out before the free. Secrets (the blobs) are not read.
    let names = unsafe {
        let names = (0..count as usize)
            .filter_map(|i| from_wide((**list.add(i)).TargetName))
            .collect();
        CredFree(list as *const c_void);
        names
    };
    Ok(names)
}
