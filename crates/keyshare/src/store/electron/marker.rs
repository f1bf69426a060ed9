//! VS Code's `__$__targetStorageMarker` row: a JSON object `{"<row key>": 0|1, ...}` that says
//! which storage target (0 = user, 1 = machine) each key belongs to. VS Code's `keys()` lists the
//! keys whose target is 1, so a secret write adds `"secret://...": 1` and a delete removes it.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The row key of the target marker in `ItemTable`.
pub const TARGET_MARKER_ROW: &str = "__$__targetStorageMarker";

/// VS Code's `StorageTarget.MACHINE`, the target of every secret, as the marker spells it (the
/// only JSON spelling of the integer 1).
const MACHINE: &str = "1";

/// Why the marker row cannot be used. Messages give positions, never content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MarkerError {
    /// Not well-formed JSON, or not a JSON object.
    #[error("the {TARGET_MARKER_ROW} row is not a JSON object (line {line}, column {column})")]
    NotAnObject {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The same key appears twice, so which target it has is ambiguous.
    #[error("the {TARGET_MARKER_ROW} row names a key twice")]
    DuplicateKey,
}

/// The parsed target marker, in its original order, every entry kept verbatim.
///
/// Entries other than the ones keyshare changes are written back exactly as they were read
/// (same order, each value's JSON text unchanged), so VS Code's other bookkeeping is never
/// disturbed. The text is kept rather than a parsed value: serde_json reads a number that is not
/// a 64-bit integer as an f64, not always correctly rounded, and writing that f64 back changed
/// the number (`100000000000000000000000000000000` became `1e+32`, and drifted on every write).
#[derive(Clone, Default, PartialEq)]
pub struct TargetMarker {
    /// Row key and the value's JSON text, verbatim.
    entries: Vec<(String, String)>,
}

impl fmt::Debug for TargetMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetMarker")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl TargetMarker {
    /// Parses the marker row's value (read as TEXT or BLOB).
    pub fn parse(value: &[u8]) -> Result<TargetMarker, MarkerError> {
        let parsed: OrderedObject = serde_json::from_slice(value).map_err(|e| {
            if e.to_string().starts_with(DUPLICATE) {
                MarkerError::DuplicateKey
            } else {
                MarkerError::NotAnObject {
                    line: e.line(),
                    column: e.column(),
                }
            }
        })?;
        Ok(TargetMarker { entries: parsed.0 })
    }

    /// The marker as VS Code writes it: compact JSON, entries in order.
    pub fn to_json(&self) -> String {
        let mut out = String::from("{");
        for (i, (key, value)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Serializing a string or an already-parsed value cannot fail.
            out.push_str(&serde_json::to_string(key).unwrap_or_default());
            out.push(':');
            out.push_str(value);
        }
        out.push('}');
        out
    }

    /// Whether `row_key`'s target is the machine (what VS Code's `keys()` lists for secrets).
    pub fn is_machine(&self, row_key: &str) -> bool {
        self.position(row_key)
            .is_some_and(|i| self.entries[i].1 == MACHINE)
    }

    /// The row keys whose target is the machine, in marker order.
    pub fn machine_keys(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|(_, v)| v == MACHINE)
            .map(|(k, _)| k.as_str())
    }

    /// Marks `row_key` as a machine key; returns whether the marker changed.
    pub fn set_machine(&mut self, row_key: &str) -> bool {
        match self.position(row_key) {
            Some(i) if self.entries[i].1 == MACHINE => false,
            Some(i) => {
                self.entries[i].1 = MACHINE.to_owned();
                true
            }
            None => {
                self.entries.push((row_key.to_owned(), MACHINE.to_owned()));
                true
            }
        }
    }

    /// Removes `row_key`'s entry; returns whether the marker changed.
    pub fn remove(&mut self, row_key: &str) -> bool {
        match self.position(row_key) {
            Some(i) => {
                // `remove`, not `swap_remove`: the order is VS Code's insertion order.
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the marker has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, row_key: &str) -> Option<usize> {
        self.entries.iter().position(|(k, _)| k == row_key)
    }
}

const DUPLICATE: &str = "duplicate marker key";

/// A JSON object read into a vector, so that order and duplicates are visible; each value as
/// its JSON text.
struct OrderedObject(Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;

        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = OrderedObject;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut entries: Vec<(String, String)> = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some((key, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if !seen.insert(key.clone()) {
                        return Err(de::Error::custom(DUPLICATE));
                    }
                    entries.push((key, value.get().to_owned()));
                }
                Ok(OrderedObject(entries))
            }
        }

        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"{"secret://{\"extensionId\":\"vscode.github-authentication\",\"key\":\"github.auth\"}":1,"secret://{\"extensionId\":\"publisher.my-ext\",\"key\":\"apiToken\"}":1}"#;

    #[test]
    fn sample_marker_round_trips_byte_for_byte() {
        let marker = TargetMarker::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(marker.to_json(), SAMPLE);
        assert!(
            marker.is_machine(r#"secret://{"extensionId":"publisher.my-ext","key":"apiToken"}"#)
        );
        assert_eq!(marker.machine_keys().count(), 2);
    }

    #[test]
    fn other_entries_and_order_are_kept() {
        let text = r#"{"z.user":0,"secret://b":1,"odd":"text","secret://a":1,"n":1.5}"#;
        let mut marker = TargetMarker::parse(text.as_bytes()).unwrap();
        assert_eq!(marker.to_json(), text);
        assert!(!marker.set_machine("secret://b"));
        assert!(marker.remove("secret://b"));
        assert!(!marker.remove("secret://b"));
        assert!(marker.set_machine("secret://c"));
        assert!(marker.set_machine("z.user"));
        assert_eq!(
            marker.to_json(),
            r#"{"z.user":1,"odd":"text","secret://a":1,"n":1.5,"secret://c":1}"#
        );
        let machine: Vec<_> = marker.machine_keys().collect();
        assert_eq!(machine, ["z.user", "secret://a", "secret://c"]);
    }

    #[test]
    fn escapes_like_json_stringify() {
        let mut marker = TargetMarker::default();
        marker.set_machine("secret://line\nbreak \"quoted\" \u{1} ü /");
        assert_eq!(
            marker.to_json(),
            "{\"secret://line\\nbreak \\\"quoted\\\" \\u0001 ü /\":1}"
        );
        assert_eq!(
            TargetMarker::parse(marker.to_json().as_bytes()).unwrap(),
            marker
        );
    }

    proptest::proptest! {
        #[test]
        fn edits_keep_the_marker_parseable_and_other_entries_intact(
            entries in proptest::collection::btree_map(".{0,12}", 0u8..3, 0..8),
            key in ".{0,12}",
        ) {
            let mut marker = TargetMarker::default();
            for (k, target) in &entries {
                marker.entries.push((k.clone(), target.to_string()));
            }
            let parsed = TargetMarker::parse(marker.to_json().as_bytes()).unwrap();
            proptest::prop_assert_eq!(&parsed, &marker);
            let mut edited = parsed;
            edited.set_machine(&key);
            proptest::prop_assert!(edited.is_machine(&key));
            edited.remove(&key);
            proptest::prop_assert!(!edited.is_machine(&key));
            let reparsed = TargetMarker::parse(edited.to_json().as_bytes()).unwrap();
            for (k, target) in entries.iter().filter(|(k, _)| **k != key) {
                proptest::prop_assert_eq!(reparsed.is_machine(k), *target == 1);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(marker) = TargetMarker::parse(&input) {
                proptest::prop_assert_eq!(TargetMarker::parse(marker.to_json().as_bytes()), Ok(marker));
            }
        }
    }

    /// Values keyshare does not change are written back as they were read, numbers included:
    /// a number that is not a u64 was re-read as a (not always correctly rounded) f64 and
    /// written back in that f64's shortest form, so it changed with every write (found by the
    /// `electron_marker` fuzz target).
    #[test]
    fn other_values_are_written_back_verbatim() {
        for value in [
            "100000000000000000000000000000000",
            // The fuzz target's minimised input: its f64 changed on every re-read.
            "100000000500000000500",
            "18446744073709551616",
            "0.1",
            "1.0",
            "-0",
            "1e400000",
            "2.2250738585072011e-308",
            "123456789012345678901234567890e-5",
            "[1, 2.50, {\"a\" : -0.0}]",
        ] {
            let text = format!(r#"{{"secret://a":1,"other":{value},"secret://b":0}}"#);
            let mut marker = TargetMarker::parse(text.as_bytes()).unwrap();
            assert_eq!(marker.to_json(), text);
            assert!(marker.set_machine("secret://b"));
            assert!(marker.remove("secret://a"));
            assert_eq!(
                marker.to_json(),
                format!(r#"{{"other":{value},"secret://b":1}}"#)
            );
            assert_eq!(TargetMarker::parse(marker.to_json().as_bytes()), Ok(marker));
        }
        // The whitespace around a value is not part of it.
        let marker = TargetMarker::parse(b"{ \"secret://a\" : 1 ,\n\"n\":\t2 }").unwrap();
        assert!(marker.is_machine("secret://a"));
        assert_eq!(marker.to_json(), r#"{"secret://a":1,"n":2}"#);
    }

    #[test]
    fn bad_markers_are_errors_without_content() {
        for bad in [
            &b"[1,2]"[..],
            b"{\"secret://x\":1",
            b"",
            b"null",
            b"\xff",
            b"{\"secret://x\":\"\xff\"}",
            b"{\"secret://x\":[1,}",
        ] {
            let err = TargetMarker::parse(bad).unwrap_err();
            assert!(matches!(err, MarkerError::NotAnObject { .. }), "{err}");
            assert!(!err.to_string().contains("secret://x"));
        }
        assert_eq!(
            TargetMarker::parse(br#"{"a":1,"a":0}"#).unwrap_err(),
            MarkerError::DuplicateKey
        );
    }
}
