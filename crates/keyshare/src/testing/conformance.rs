//! The one conformance suite every [`Store`] runs.
//!
//! A store's tests provide a factory `Fn(&str) -> Arc<dyn Store>` that returns a store over the
//! namespace it is given: a fresh namespace must start empty, and calling the factory again
//! with the same namespace must return a store over the same data (a reopen). Then:
//!
//! ```ignore
//! keyshare::conformance_tests!(my_factory);
//! ```
//!
//! expands to one `#[test]` per check, so a failure names the contract that broke.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::model::{SecretKey, SecretValue, MAX_KEY_LEN};
use crate::store::Store;

/// A store factory: namespace in, store over that namespace out.
pub type Factory<'a> = &'a dyn Fn(&str) -> Arc<dyn Store>;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A namespace no other test in this process (or, thanks to the pid and time, in a concurrent
/// run against the same service) has used.
pub fn unique_namespace(check: &str) -> String {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("conformance.{check}.{}.{nanos}.{n}", std::process::id())
}

fn key(s: &str) -> SecretKey {
    SecretKey::new(s).expect("test keys are valid")
}

fn value(bytes: &[u8]) -> SecretValue {
    SecretValue::from_slice(bytes)
}

fn sorted(keys: Vec<SecretKey>) -> BTreeSet<String> {
    keys.into_iter().map(|k| k.as_str().to_owned()).collect()
}

/// A value written is read back exactly.
pub fn round_trip(factory: Factory) {
    let s = factory(&unique_namespace("round_trip"));
    s.set(&key("github.auth"), &value(b"token-1")).unwrap();
    let got = s.get(&key("github.auth")).unwrap().expect("value present");
    assert_eq!(got.expose_secret(), b"token-1");
}

/// A missing key is `Ok(None)`, not an error.
pub fn missing_is_none(factory: Factory) {
    let s = factory(&unique_namespace("missing_is_none"));
    assert_eq!(s.get(&key("nothing-here")).unwrap(), None);
}

/// The empty value is a value, distinct from "not found".
pub fn empty_value_is_a_value(factory: Factory) {
    let s = factory(&unique_namespace("empty_value"));
    s.set(&key("empty"), &value(b"")).unwrap();
    let got = s.get(&key("empty")).unwrap();
    assert_eq!(
        got.map(|v| v.len()),
        Some(0),
        "empty value must read back as Some(empty)"
    );
    assert!(sorted(s.keys().unwrap()).contains("empty"));
}

/// `set` replaces the previous value.
pub fn overwrite(factory: Factory) {
    let s = factory(&unique_namespace("overwrite"));
    s.set(&key("k"), &value(b"first, and longer")).unwrap();
    s.set(&key("k"), &value(b"second")).unwrap();
    assert_eq!(
        s.get(&key("k")).unwrap().unwrap().expose_secret(),
        b"second"
    );
    assert_eq!(sorted(s.keys().unwrap()).len(), 1);
}

/// `delete` reports whether something was deleted, and deleted values stay gone.
pub fn delete(factory: Factory) {
    let s = factory(&unique_namespace("delete"));
    s.set(&key("k"), &value(b"v")).unwrap();
    assert!(
        s.delete(&key("k")).unwrap(),
        "deleting a present key returns true"
    );
    assert_eq!(s.get(&key("k")).unwrap(), None);
    assert!(
        !s.delete(&key("k")).unwrap(),
        "deleting a missing key returns false"
    );
    assert!(s.keys().unwrap().is_empty());
}

/// `keys` lists exactly the keys with values.
pub fn keys_lists_exactly(factory: Factory) {
    let s = factory(&unique_namespace("keys"));
    assert!(s.keys().unwrap().is_empty(), "a fresh namespace is empty");
    for k in ["a", "b", "c", "d"] {
        s.set(&key(k), &value(k.as_bytes())).unwrap();
    }
    s.delete(&key("c")).unwrap();
    let expected: BTreeSet<String> = ["a", "b", "d"].iter().map(|s| s.to_string()).collect();
    assert_eq!(sorted(s.keys().unwrap()), expected);
}

/// Every byte value survives, including NUL and invalid UTF-8.
pub fn binary_values(factory: Factory) {
    let s = factory(&unique_namespace("binary"));
    let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    s.set(&key("bin"), &value(&all)).unwrap();
    assert_eq!(
        s.get(&key("bin")).unwrap().unwrap().expose_secret(),
        &all[..]
    );
}

/// A 256 KiB value round-trips.
pub fn large_value(factory: Factory) {
    let s = factory(&unique_namespace("large"));
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    s.set(&key("big"), &value(&big)).unwrap();
    let got = s.get(&key("big")).unwrap().unwrap();
    assert_eq!(got.len(), big.len());
    assert!(got.expose_secret() == &big[..], "256 KiB value differs");
}

/// Keys with any characters the model allows round-trip and list exactly.
pub fn unusual_keys(factory: Factory) {
    let s = factory(&unique_namespace("unusual_keys"));
    let keys = [
        r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#.to_owned(),
        "with/slashes/and%percent and spaces".to_owned(),
        "ünïcødé 🔑 ключ".to_owned(),
        "line\nbreak\ttab".to_owned(),
        "..".to_owned(),
        "x".repeat(MAX_KEY_LEN),
    ];
    for (i, k) in keys.iter().enumerate() {
        s.set(&key(k), &value(format!("v{i}").as_bytes())).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        let got = s
            .get(&key(k))
            .unwrap()
            .unwrap_or_else(|| panic!("key #{i} missing"));
        assert_eq!(got.expose_secret(), format!("v{i}").as_bytes(), "key #{i}");
    }
    let expected: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(sorted(s.keys().unwrap()), expected);
}

/// `set_many` writes every value, replacing earlier ones, as `set` would.
pub fn set_many(factory: Factory) {
    let s = factory(&unique_namespace("set_many"));
    s.set(&key("b"), &value(b"old")).unwrap();
    s.set_many(&[]).unwrap();
    s.set_many(&[
        (key("a"), value(b"1")),
        (key("b"), value(b"2")),
        (key("c"), value(b"")),
    ])
    .unwrap();
    for (k, v) in [("a", &b"1"[..]), ("b", b"2"), ("c", b"")] {
        assert_eq!(s.get(&key(k)).unwrap().unwrap().expose_secret(), v, "{k}");
    }
    let expected: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    assert_eq!(sorted(s.keys().unwrap()), expected);
}

/// `set_many_if_empty` writes into an empty store and says so; into one that holds anything
/// it writes nothing and says `false`.
pub fn set_many_if_empty(factory: Factory) {
    let s = factory(&unique_namespace("set_many_if_empty"));
    let entries = [(key("a"), value(b"1")), (key("b"), value(b"2"))];
    assert!(s.set_many_if_empty(&entries).unwrap());
    assert_eq!(s.get(&key("b")).unwrap().unwrap().expose_secret(), b"2");
    assert!(!s
        .set_many_if_empty(&[(key("a"), value(b"new")), (key("c"), value(b"3"))])
        .unwrap());
    assert_eq!(s.get(&key("a")).unwrap().unwrap().expose_secret(), b"1");
    assert_eq!(s.get(&key("c")).unwrap(), None);
}

/// `set_many_joining` writes its entries and every entry `more` returned (a store may never
/// call `more`; one that does stops calling once it returns nothing).
pub fn set_many_joining(factory: Factory) {
    let s = factory(&unique_namespace("set_many_joining"));
    let mut offers = vec![
        vec![(key("c"), value(b"3")), (key("d"), value(b"4"))],
        vec![(key("e"), value(b""))],
    ]
    .into_iter();
    let (mut joined, mut ended, mut calls_after_end) = (Vec::new(), false, 0);
    s.set_many_joining(
        &[(key("a"), value(b"1")), (key("b"), value(b"2"))],
        &mut || {
            calls_after_end += usize::from(ended);
            let offer = offers.next().unwrap_or_default();
            ended = offer.is_empty();
            joined.extend(offer.iter().map(|(k, _)| k.as_str().to_owned()));
            offer
        },
    )
    .unwrap();
    assert_eq!(
        calls_after_end, 0,
        "`more` was called after it returned nothing"
    );
    for (k, v) in [
        ("a", &b"1"[..]),
        ("b", b"2"),
        ("c", b"3"),
        ("d", b"4"),
        ("e", b""),
    ] {
        let got = s.get(&key(k)).unwrap();
        if k < "c" || joined.iter().any(|j| j == k) {
            assert_eq!(got.unwrap().expose_secret(), v, "{k}");
        } else {
            assert_eq!(got, None, "{k} was never offered, yet written");
        }
    }
    let expected: BTreeSet<String> = ["a", "b"]
        .iter()
        .map(|s| s.to_string())
        .chain(joined)
        .collect();
    assert_eq!(sorted(s.keys().unwrap()), expected);
}

/// Two namespaces never see each other's keys.
pub fn namespaces_are_isolated(factory: Factory) {
    let a = factory(&unique_namespace("iso_a"));
    let b = factory(&unique_namespace("iso_b"));
    a.set(&key("same"), &value(b"from a")).unwrap();
    assert_eq!(b.get(&key("same")).unwrap(), None);
    assert!(b.keys().unwrap().is_empty());
    b.set(&key("same"), &value(b"from b")).unwrap();
    assert_eq!(
        a.get(&key("same")).unwrap().unwrap().expose_secret(),
        b"from a"
    );
    b.delete(&key("same")).unwrap();
    assert!(a.get(&key("same")).unwrap().is_some());
}

/// Reopening a namespace sees what was written before.
pub fn reopen_sees_data(factory: Factory) {
    let ns = unique_namespace("reopen");
    {
        let s = factory(&ns);
        s.set(&key("kept"), &value(b"v1")).unwrap();
        s.set(&key("gone"), &value(b"v2")).unwrap();
        s.delete(&key("gone")).unwrap();
    }
    let s = factory(&ns);
    assert_eq!(s.get(&key("kept")).unwrap().unwrap().expose_secret(), b"v1");
    assert_eq!(s.get(&key("gone")).unwrap(), None);
}

/// Writers on several threads do not lose each other's writes.
pub fn concurrent_writers(factory: Factory) {
    let s = factory(&unique_namespace("concurrent"));
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..10 {
                    let k = key(&format!("t{t}-k{i}"));
                    s.set(&k, &value(format!("{t}:{i}").as_bytes())).unwrap();
                }
            });
        }
    });
    assert_eq!(s.keys().unwrap().len(), 40);
    for t in 0..4 {
        for i in 0..10 {
            let got = s.get(&key(&format!("t{t}-k{i}"))).unwrap().unwrap();
            assert_eq!(got.expose_secret(), format!("{t}:{i}").as_bytes());
        }
    }
}

/// A repair's conditional write: in a store that keeps change times, a set or delete made
/// after the write's time stands (a delete of a key that had no value included), and a write
/// from after every change goes through; in a store that does not, every one goes through.
pub fn write_unless_changed_after(factory: Factory) {
    let s = factory(&unique_namespace("write_unless_changed_after"));
    let (changed, signed_out, fresh) = (key("github.auth"), key("signed.out"), key("fresh"));
    let before = std::time::SystemTime::now();
    s.set(&changed, &value(b"theirs")).unwrap();
    assert!(!s.delete(&signed_out).unwrap());
    let mine = value(b"mine");
    let wrote = s
        .write_unless_changed_after(&changed, Some(&mine), before)
        .unwrap();
    let wrote_deleted = s
        .write_unless_changed_after(&signed_out, Some(&mine), before)
        .unwrap();
    let read = |k: &SecretKey| s.get(k).unwrap().map(|v| v.expose_secret().to_vec());
    if s.keeps_change_times() {
        assert!(!wrote, "a set after the repair's time must stand");
        assert_eq!(read(&changed).as_deref(), Some(&b"theirs"[..]));
        assert!(
            !wrote_deleted,
            "a delete after the repair's time must stand"
        );
        assert_eq!(read(&signed_out), None);
    } else {
        assert!(
            wrote && wrote_deleted,
            "a store without change times always writes"
        );
        assert_eq!(read(&changed).as_deref(), Some(&b"mine"[..]));
        assert_eq!(read(&signed_out).as_deref(), Some(&b"mine"[..]));
    }
    // From after every change: a set, then a delete, both written.
    let after = std::time::SystemTime::now();
    assert!(s
        .write_unless_changed_after(&changed, Some(&value(b"later")), after)
        .unwrap());
    assert_eq!(read(&changed).as_deref(), Some(&b"later"[..]));
    assert!(s
        .write_unless_changed_after(&changed, None, std::time::SystemTime::now())
        .unwrap());
    assert_eq!(read(&changed), None);
    // A key this store never saw: written, whatever the time.
    assert!(s
        .write_unless_changed_after(&fresh, Some(&mine), std::time::UNIX_EPOCH)
        .unwrap());
    assert_eq!(read(&fresh).as_deref(), Some(&b"mine"[..]));
}

/// Expands to one `#[test]` per conformance check, each calling `$factory`
/// (an expression of type `Fn(&str) -> Arc<dyn Store>`).
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@tests $factory;
            round_trip, missing_is_none, empty_value_is_a_value, overwrite, delete,
            keys_lists_exactly, binary_values, large_value, unusual_keys, set_many,
            set_many_if_empty, set_many_joining, namespaces_are_isolated, reopen_sees_data,
            concurrent_writers, write_unless_changed_after);
    };
    (@tests $factory:expr; $($check:ident),*) => {
        $(
            #[test]
            fn $check() {
                let factory = $factory;
                $crate::testing::conformance::$check(&factory);
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use crate::store::{MemoryStore, Store};

    fn memory_factory() -> impl Fn(&str) -> Arc<dyn Store> {
        let stores: Mutex<HashMap<String, Arc<MemoryStore>>> = Mutex::default();
        move |ns: &str| -> Arc<dyn Store> {
            stores
                .lock()
                .unwrap()
                .entry(ns.to_owned())
                .or_default()
                .clone()
        }
    }

    crate::conformance_tests!(memory_factory());
}
