//! Reads this process's `keychain-access-groups` entitlement: the one place keyshare calls
//! Security.framework directly, because security-framework has no binding for `SecTask`.
//!
//! NEVER RUN on the project's machines (Linux only); type-checked for aarch64-apple-darwin.
#![allow(unsafe_code)]

use std::ffi::c_void;

use core_foundation::array::CFArray;
use core_foundation::base::{CFType, TCFType};
use core_foundation::string::CFString;
use core_foundation_sys::base::{kCFAllocatorDefault, CFAllocatorRef, CFRelease, CFTypeRef};
use core_foundation_sys::error::CFErrorRef;
use core_foundation_sys::string::CFStringRef;

/// `SecTaskRef`: a CoreFoundation object describing a task.
type SecTaskRef = *const c_void;

#[link(name = "Security", kind = "framework")]
extern "C" {
    fn SecTaskCreateFromSelf(allocator: CFAllocatorRef) -> SecTaskRef;
    fn SecTaskCopyValueForEntitlement(
        task: SecTaskRef,
        entitlement: CFStringRef,
        error: *mut CFErrorRef,
    ) -> CFTypeRef;
}

/// The access groups this binary is entitled to, in the order its signature lists them; empty
/// when it has no such entitlement (an unsigned or ad-hoc signed binary, a plain CLI).
pub(super) fn keychain_access_groups() -> Vec<String> {
    let entitlement = CFString::from_static_string("keychain-access-groups");
    // SAFETY: the default allocator is a valid argument; the function returns an owned (+1)
    // reference or NULL, and we release it below.
    let task = unsafe { SecTaskCreateFromSelf(kCFAllocatorDefault) };
    if task.is_null() {
        return Vec::new();
    }
    // SAFETY: `task` is a live SecTaskRef; `entitlement` outlives the call; a NULL error
    // out-pointer is documented as allowed. The result is an owned (+1) reference or NULL.
    let value = unsafe {
        SecTaskCopyValueForEntitlement(
            task,
            entitlement.as_concrete_TypeRef(),
            std::ptr::null_mut(),
        )
    };
    // SAFETY: we own exactly one reference to `task` (from a Create function) and do not use
    // it afterwards.
    unsafe { CFRelease(task) };
    if value.is_null() {
        return Vec::new();
    }
    // SAFETY: `value` is a non-NULL owned (+1) reference; the wrapper takes that reference over
    // and releases it when dropped.
    let value = unsafe { CFType::wrap_under_create_rule(value) };
    let Some(array) = value.downcast_into::<CFArray>() else {
        return Vec::new();
    };
    array
        .iter()
        .filter_map(|item| {
            // SAFETY: the elements of a CFArray are valid CF objects for as long as the array
            // lives; the get rule takes a new reference of our own, so nothing outlives it.
            let item = unsafe { CFType::wrap_under_get_rule(*item as CFTypeRef) };
            item.downcast::<CFString>().map(|s| s.to_string())
        })
        .collect()
}
