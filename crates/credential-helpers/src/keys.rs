//! Building blocks of the key schemes: percent-encoding of the parts of a key that could
//! otherwise be confused with its separators.

/// Percent-encodes every byte that is not an RFC 3986 "unreserved" character, except the bytes
/// in `keep`. The result never contains `@`, `/` or `%` unless they are in `keep`, so a
/// segment encoded this way cannot be mistaken for a separator.
pub(crate) fn encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'.' | b'_' | b'~')
            || keep.contains(&byte)
        {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_are_encoded() {
        assert_eq!(encode("a@b/c%d e", b""), "a%40b%2Fc%25d%20e");
        assert_eq!(encode("[::1]:8080", b":[]"), "[::1]:8080");
        assert_eq!(encode("é", b""), "%C3%A9");
    }
}
