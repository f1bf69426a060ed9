//! VS Code's `state.vscdb` secret rows: the Node Buffer JSON values and the `secret://` keys.

use std::fmt::{self, Write as _};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What every secret row key in `ItemTable` starts with.
pub const SECRET_ROW_PREFIX: &str = "secret://";

/// Why a row value is not a Node Buffer's JSON.
///
/// Messages give positions, never the row's content.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowError {
    /// The value is not well-formed JSON (or is cut short).
    #[error("row value is not valid JSON (line {line}, column {column})")]
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The value is JSON but not an object of exactly `type` (a string) and `data` (an array of
    /// numbers).
    #[error(
        "row value is not a Node Buffer object {{\"type\":\"Buffer\",\"data\":[...]}} \
         (line {line}, column {column})"
    )]
    NotABuffer {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The object's `type` is not `"Buffer"`.
    #[error("row value's \"type\" is not \"Buffer\"")]
    WrongType,
    /// An element of `data` is not an integer from 0 to 255.
    #[error("row value's data[{index}] is not an integer from 0 to 255")]
    ByteOutOfRange {
        /// Index of the offending element in `data`.
        index: usize,
    },
}

impl From<serde_json::Error> for RowError {
    fn from(err: serde_json::Error) -> Self {
        let (line, column) = (err.line(), err.column());
        // Only the category and position are kept: serde_json's message can quote the input.
        match err.classify() {
            serde_json::error::Category::Data => RowError::NotABuffer { line, column },
            serde_json::error::Category::Syntax
            | serde_json::error::Category::Eof
            | serde_json::error::Category::Io => RowError::Syntax { line, column },
        }
    }
}

/// `JSON.stringify` of a Node `Buffer`.
struct NodeBufferJson {
    kind: String,
    // Numbers rather than `u8`, so that an out-of-range byte gets its own error and index.
    data: Vec<serde_json::Number>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum NodeBufferField {
    Type,
    Data,
}

// Written by hand because derived struct deserializers also accept the array form
// `["Buffer",[...]]`, which Node never writes.
impl<'de> Deserialize<'de> for NodeBufferJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly;

        impl<'de> Visitor<'de> for ObjectOnly {
            type Value = NodeBufferJson;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Node Buffer object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeBufferJson, A::Error> {
                let mut kind = None;
                let mut data = None;
                while let Some(field) = map.next_key()? {
                    match field {
                        NodeBufferField::Type if kind.is_some() => {
                            return Err(de::Error::duplicate_field("type"))
                        }
                        NodeBufferField::Type => kind = Some(map.next_value()?),
                        NodeBufferField::Data if data.is_some() => {
                            return Err(de::Error::duplicate_field("data"))
                        }
                        NodeBufferField::Data => data = Some(map.next_value()?),
                    }
                }
                Ok(NodeBufferJson {
                    kind: kind.ok_or_else(|| de::Error::missing_field("type"))?,
                    data: data.ok_or_else(|| de::Error::missing_field("data"))?,
                })
            }
        }

        deserializer.deserialize_map(ObjectOnly)
    }
}

/// Encodes a blob as VS Code stores it: `JSON.stringify` of a Node `Buffer`, exactly
/// `{"type":"Buffer","data":[118,49,48,...]}`.
pub fn encode_buffer_json(blob: &[u8]) -> String {
    const HEAD: &str = r#"{"type":"Buffer","data":["#;
    const TAIL: &str = "]}";
    // Up to three digits and a comma per byte.
    let mut json = String::with_capacity(HEAD.len() + blob.len() * 4 + TAIL.len());
    json.push_str(HEAD);
    for (i, byte) in blob.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(json, "{byte}");
    }
    json.push_str(TAIL);
    json
}

/// Decodes a row value written by [`encode_buffer_json`] or by Node, read as TEXT or BLOB.
///
/// Accepts an object of exactly `type: "Buffer"` and `data: [bytes]`, in either key order and with
/// any JSON whitespace; rejects anything else (extra or duplicate keys, other types, bytes outside
/// 0..=255, fractions, trailing content).
pub fn decode_buffer_json(value: impl AsRef<[u8]>) -> Result<Vec<u8>, RowError> {
    let parsed: NodeBufferJson = serde_json::from_slice(value.as_ref())?;
    if parsed.kind != "Buffer" {
        return Err(RowError::WrongType);
    }
    parsed
        .data
        .iter()
        .enumerate()
        .map(|(index, n)| {
            n.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or(RowError::ByteOutOfRange { index })
        })
        .collect()
}

/// A parsed `secret://` row key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRowKey {
    /// Everything after `secret://`, verbatim.
    pub key: String,
    /// The extension id and key, when `key` is exactly what VS Code writes for an extension's
    /// secret.
    pub extension: Option<ExtensionSecretKey>,
}

/// The parts of an extension secret's row key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionSecretKey {
    /// The extension's id (VS Code lower-cases it), e.g. `vscode.github-authentication`.
    pub extension_id: String,
    /// The key the extension stored the secret under, e.g. `github.auth`.
    pub key: String,
}

/// `JSON.stringify({extensionId, key})`, in the order VS Code builds it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtensionKeyJson<S> {
    #[serde(rename = "extensionId")]
    extension_id: S,
    key: S,
}

/// Parses an `ItemTable` row key; `None` unless it starts with `secret://`.
///
/// Any string may follow the prefix. The extension parts are reported only when that string is
/// byte for byte what VS Code writes for an extension (`JSON.stringify({extensionId, key})`), since
/// VS Code looks extension secrets up by that exact string: other spellings of the same JSON are
/// plain keys to it.
pub fn parse_secret_row_key(row_key: &str) -> Option<SecretRowKey> {
    let key = row_key.strip_prefix(SECRET_ROW_PREFIX)?;
    let extension = serde_json::from_str::<ExtensionKeyJson<String>>(key)
        .ok()
        .filter(|parsed| serde_json::to_string(parsed).is_ok_and(|canonical| canonical == key))
        .map(|parsed| ExtensionSecretKey {
            extension_id: parsed.extension_id,
            key: parsed.key,
        });
    Some(SecretRowKey {
        key: key.to_owned(),
        extension,
    })
}

/// The row key VS Code uses for an extension's secret:
/// `secret://{"extensionId":"...","key":"..."}`.
///
/// VS Code lower-cases the extension id before building the key; this does not, so that the
/// caller decides.
pub fn extension_secret_row_key(extension_id: &str, key: &str) -> String {
    let json = serde_json::to_string(&ExtensionKeyJson { extension_id, key });
    // Serializing two strings into JSON cannot fail; the fallback keeps this total all the same.
    format!("{SECRET_ROW_PREFIX}{}", json.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_exactly_like_node() {
        assert_eq!(encode_buffer_json(b""), r#"{"type":"Buffer","data":[]}"#);
        assert_eq!(
            encode_buffer_json(&[118, 49, 48, 0, 9, 10, 255]),
            r#"{"type":"Buffer","data":[118,49,48,0,9,10,255]}"#
        );
    }

    #[test]
    fn decodes_node_output_as_text_or_bytes() {
        let value = r#"{"type":"Buffer","data":[118,49,48,0,255]}"#;
        assert_eq!(decode_buffer_json(value).unwrap(), [118, 49, 48, 0, 255]);
        assert_eq!(
            decode_buffer_json(value.as_bytes()).unwrap(),
            [118, 49, 48, 0, 255]
        );
        assert_eq!(
            decode_buffer_json(r#"{"type":"Buffer","data":[]}"#).unwrap(),
            b""
        );
    }

    #[test]
    fn accepts_incidental_whitespace_and_key_order() {
        let value = " {\n \"data\" : [ 1 , 2 ] ,\t\"type\": \"Buffer\" }\n";
        assert_eq!(decode_buffer_json(value).unwrap(), [1, 2]);
    }

    #[test]
    fn rejects_bytes_that_are_not_u8() {
        for (value, index) in [
            (r#"{"type":"Buffer","data":[1,256]}"#, 1),
            (r#"{"type":"Buffer","data":[-1]}"#, 0),
            (r#"{"type":"Buffer","data":[1,2,1.5]}"#, 2),
            (r#"{"type":"Buffer","data":[1.0]}"#, 0),
            (r#"{"type":"Buffer","data":[1e2]}"#, 0),
            (r#"{"type":"Buffer","data":[18446744073709551616]}"#, 0),
        ] {
            assert_eq!(
                decode_buffer_json(value),
                Err(RowError::ByteOutOfRange { index }),
                "{value}"
            );
        }
    }

    #[test]
    fn rejects_other_types() {
        for value in [
            r#"{"type":"buffer","data":[1]}"#,
            r#"{"type":"Uint8Array","data":[1]}"#,
            r#"{"type":"","data":[1]}"#,
        ] {
            assert_eq!(
                decode_buffer_json(value),
                Err(RowError::WrongType),
                "{value}"
            );
        }
    }

    #[test]
    fn rejects_other_shapes() {
        for value in [
            r#"{"data":[1]}"#,
            r#"{"type":"Buffer"}"#,
            r#"{"type":"Buffer","data":[1],"extra":0}"#,
            r#"{"type":"Buffer","type":"Buffer","data":[1]}"#,
            r#"{"type":"Buffer","data":"AQI="}"#,
            r#"{"type":"Buffer","data":["1"]}"#,
            r#"{"type":"Buffer","data":[null]}"#,
            r#"{"type":1,"data":[1]}"#,
            r#"[118,49,48]"#,
            r#"["Buffer",[1,2]]"#,
            r#""v10""#,
            "null",
        ] {
            assert!(
                matches!(decode_buffer_json(value), Err(RowError::NotABuffer { .. })),
                "{value}: {:?}",
                decode_buffer_json(value)
            );
        }
    }

    #[test]
    fn rejects_malformed_json() {
        for value in [
            "",
            "v10\u{1}\u{2}",
            r#"{"type":"Buffer","data":[1,2]"#,
            r#"{"type":"Buffer","data":[1,2,]}"#,
            r#"{"type":"Buffer","data":[01]}"#,
            r#"{"type":"Buffer","data":[1]} x"#,
            r#"{"type":"Buffer","data":[1]}{}"#,
        ] {
            assert!(
                matches!(decode_buffer_json(value), Err(RowError::Syntax { .. })),
                "{value:?}: {:?}",
                decode_buffer_json(value)
            );
        }
        assert!(matches!(
            decode_buffer_json(b"{\"type\":\"Buf\xfffer\",\"data\":[]}"),
            Err(RowError::Syntax { .. })
        ));
    }

    #[test]
    fn row_errors_do_not_quote_the_value() {
        let err = decode_buffer_json(r#"{"type":"Buffer","data":"hunter2"}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn parses_extension_row_keys() {
        let parsed = parse_secret_row_key(
            r#"secret://{"extensionId":"vscode.github-authentication","key":"github.auth"}"#,
        )
        .unwrap();
        assert_eq!(
            parsed.key,
            r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#
        );
        assert_eq!(
            parsed.extension,
            Some(ExtensionSecretKey {
                extension_id: "vscode.github-authentication".into(),
                key: "github.auth".into(),
            })
        );
    }

    #[test]
    fn parses_escaped_extension_keys() {
        let row_key = extension_secret_row_key("pub.ext", "a \"quoted\"\n\u{1} ключ");
        assert_eq!(
            row_key,
            "secret://{\"extensionId\":\"pub.ext\",\"key\":\"a \\\"quoted\\\"\\n\\u0001 ключ\"}"
        );
        let parsed = parse_secret_row_key(&row_key).unwrap();
        assert_eq!(parsed.extension.unwrap().key, "a \"quoted\"\n\u{1} ключ");
    }

    #[test]
    fn plain_keys_have_no_extension() {
        for raw in [
            "github.auth",
            "",
            "pca:04b07795-8ddb-461a-bbee-02f9e1bf7b46",
            "secret://nested",
            r#"{"extensionId":"a"}"#,
            r#"{"extensionId":"a","key":"b","extra":1}"#,
            r#"{"extensionId":"a","key":2}"#,
            // Valid JSON for the object, but not the string VS Code would write.
            r#"{"key":"b","extensionId":"a"}"#,
            r#"{ "extensionId":"a","key":"b"}"#,
            r#"{"extensionId":"\u0061","key":"b"}"#,
        ] {
            let parsed = parse_secret_row_key(&format!("secret://{raw}")).unwrap();
            assert_eq!(parsed.key, raw);
            assert_eq!(parsed.extension, None, "{raw}");
        }
    }

    #[test]
    fn non_secret_rows_are_not_secret_keys() {
        for row_key in [
            "__$__targetStorageMarker",
            "secret:/x",
            "SECRET://x",
            " secret://x",
        ] {
            assert_eq!(parse_secret_row_key(row_key), None, "{row_key}");
        }
    }
}
