//! The docker-credential-helpers protocol, as the docker CLI speaks it: the verb is the only
//! argument; `store` reads `{"ServerURL","Username","Secret"}` on stdin (field names in any
//! case, as docker's Go decoder reads them); `get` and `erase` read
//! a server URL; `get` answers with the same JSON; `list` answers with a JSON map from server
//! URL to username. Errors are one line on stdout and a non-zero exit; the docker CLI matches
//! three of those lines exactly ([`NOT_FOUND`], [`MISSING_SERVER_URL`], [`MISSING_USERNAME`]).
//!
//! # Key scheme
//!
//! `docker:<ServerURL>`, e.g. `docker:https://index.docker.io/v1/`, the URL exactly as docker
//! passes it. The value is a JSON document with the server URL, the username and the secret.

use std::collections::BTreeMap;
use std::fmt;

use keyshare::{Error, Result, SecretKey, SecretStorage, SecretValue};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// The most input accepted, in bytes (a store payload carries a token, rarely over a few KiB).
pub const MAX_INPUT_LEN: usize = 1024 * 1024;

/// The prefix of every docker credential's key.
pub const KEY_PREFIX: &str = "docker:";

/// The canonical "not found" line the docker CLI recognises.
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// The canonical line for a request without a server URL.
pub const MISSING_SERVER_URL: &str = "no credentials server URL";
/// The canonical line for a store payload without a username.
pub const MISSING_USERNAME: &str = "no credentials username";

/// The `what` of an [`Error::Invalid`] whose `reason` is a line docker defines
/// ([`MISSING_SERVER_URL`], [`MISSING_USERNAME`], and a helper's usage lines): printed on
/// stdout exactly, since docker matches some of them.
pub const DOCKER_WORDING: &str = "docker credential request";

/// The `what` of every other [`Error::Invalid`] this module returns: keyshare's own words,
/// printed as keyshare's messages are (`keyshare: ` and the whole message), so that a user can
/// tell which program refused the input.
pub const INPUT: &str = "docker credential input";

const STORE_NAME: &str = "docker credentials";

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(INPUT, reason)
}

/// An input error in docker's own words ([`DOCKER_WORDING`]).
fn in_docker_words(line: &'static str) -> Error {
    Error::invalid(DOCKER_WORDING, line)
}

/// A credential as docker stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The registry, e.g. `https://index.docker.io/v1/`.
    pub server_url: String,
    /// The username.
    pub username: String,
    /// The password or token.
    pub secret: SecretValue,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("server_url", &self.server_url)
            .field("username", &self.username)
            .field("secret", &self.secret)
            .finish()
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    #[serde(rename = "ServerURL")]
    server_url: &'a str,
    #[serde(rename = "Username")]
    username: &'a str,
    #[serde(rename = "Secret")]
    secret: &'a str,
}

/// A field of the JSON document, as docker names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    ServerUrl,
    Username,
    Secret,
}

impl Field {
    const ALL: [Field; 3] = [Field::ServerUrl, Field::Username, Field::Secret];

    fn name(self) -> &'static str {
        match self {
            Field::ServerUrl => "ServerURL",
            Field::Username => "Username",
            Field::Secret => "Secret",
        }
    }

    /// The field a JSON key names, matched as Go's encoding/json matches it (docker and the
    /// reference helpers decode with it, and other clients imitate what it accepts): without
    /// regard to case, under Unicode's simple case folding, where the only characters other
    /// than ASCII letters that fold to ASCII letters are U+017F (long s, as `s`) and U+212A
    /// (Kelvin sign, as `k`).
    fn from_key(key: &str) -> Option<Field> {
        fn fold(c: char) -> char {
            match c {
                '\u{17F}' => 's',
                '\u{212A}' => 'k',
                c => c.to_ascii_lowercase(),
            }
        }
        Field::ALL
            .into_iter()
            .find(|field| key.chars().map(fold).eq(field.name().chars().map(fold)))
    }
}

/// The JSON document as read: `store`'s payload, or a stored value.
#[derive(Default)]
struct WireIn {
    server_url: String,
    username: String,
    secret: Option<Zeroizing<String>>,
    /// A field the document names twice (in any case), with the first two keys naming it.
    /// Go's decoder keeps the last one; which one the writer meant is anyone's guess, so the
    /// document is refused. Kept here rather than failed in the deserializer because a serde
    /// error can only be reported by its category: its message may quote the secret.
    duplicate: Option<(Field, String, String)>,
}

impl WireIn {
    fn duplicate_error(&self) -> Option<String> {
        self.duplicate.as_ref().map(|(field, first, second)| {
            // Both keys fold to the field's name, so quoting them shows nothing of the values.
            format!(
                "the field {:?} is given twice (as {first:?} and {second:?}); field names are \
                 matched without regard to case, so give it once",
                field.name()
            )
        })
    }
}

impl<'de> Deserialize<'de> for WireIn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = WireIn;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WireIn, A::Error> {
                let mut wire = WireIn::default();
                let mut seen: [Option<String>; Field::ALL.len()] = Default::default();
                while let Some(key) = map.next_key::<String>()? {
                    let Some(field) = Field::from_key(&key) else {
                        // Unknown fields are ignored, as Go's decoder does (docker may add some).
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    };
                    let first = &mut seen[field as usize];
                    if let Some(first) = first {
                        if wire.duplicate.is_none() {
                            wire.duplicate = Some((field, first.clone(), key));
                        }
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    match field {
                        Field::ServerUrl => wire.server_url = map.next_value()?,
                        Field::Username => wire.username = map.next_value()?,
                        Field::Secret => wire.secret = map.next_value()?,
                    }
                    *first = Some(key);
                }
                Ok(wire)
            }
        }

        deserializer.deserialize_map(Visitor)
    }
}

fn check_input(input: &[u8]) -> Result<()> {
    if input.len() > MAX_INPUT_LEN {
        return Err(invalid(format!(
            "more than {MAX_INPUT_LEN} bytes of input; docker never sends that much"
        )));
    }
    if input.contains(&0) {
        return Err(invalid("the input contains a NUL byte"));
    }
    Ok(())
}

fn json_error(e: &serde_json::Error) -> String {
    // serde_json's message may quote the document (the secret): only the category and the
    // position are reported.
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "a field has the wrong type",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {}, column {}", e.line(), e.column())
}

impl Credential {
    /// Parses `store`'s input. Field names are matched without regard to case, as docker's Go
    /// decoder matches them; unknown fields are ignored (docker may add some).
    ///
    /// Errors ([`Error::Invalid`], never quoting the input): malformed JSON, a NUL byte, input
    /// over [`MAX_INPUT_LEN`], a field given twice (`Secret` and `secret`, say), and, with
    /// docker's exact wording, an empty `ServerURL`
    /// ([`MISSING_SERVER_URL`]) or `Username` ([`MISSING_USERNAME`]); a missing `Secret`; a
    /// `ServerURL` that [`parse_server_url`] would refuse (over several lines, or too long for
    /// a key), since what is stored must be found and erased with it.
    pub fn parse_store(input: &[u8]) -> Result<Credential> {
        check_input(input)?;
        let mut wire: WireIn = serde_json::from_slice(input).map_err(|e| {
            invalid(format!(
                "the store payload is not {{\"ServerURL\",\"Username\",\"Secret\"}}: {}",
                json_error(&e)
            ))
        })?;
        if let Some(reason) = wire.duplicate_error() {
            return Err(invalid(format!("the store payload is ambiguous: {reason}")));
        }
        // Trimmed as `get` and `erase` trim theirs: kept as given, "reg.example " would be
        // listed but never found or erased.
        let trimmed = wire.server_url.trim();
        if trimmed.len() != wire.server_url.len() {
            wire.server_url = trimmed.to_owned();
        }
        check_server_url(&wire.server_url)?;
        if wire.username.is_empty() {
            return Err(in_docker_words(MISSING_USERNAME));
        }
        let Some(secret) = wire.secret.as_mut() else {
            return Err(invalid("the store payload has no \"Secret\" field"));
        };
        let credential = Credential {
            server_url: wire.server_url,
            username: wire.username,
            secret: SecretValue::new(std::mem::take(&mut **secret).into_bytes()),
        };
        Ok(credential)
    }

    /// `get`'s answer: the JSON document and a newline, as docker's own helpers write it.
    pub fn answer(&self) -> Result<Zeroizing<Vec<u8>>> {
        let mut buf = self.to_json()?;
        buf.push(b'\n');
        Ok(buf)
    }

    fn to_json(&self) -> Result<Zeroizing<Vec<u8>>> {
        let secret = std::str::from_utf8(self.secret.expose_secret())
            .map_err(|_| invalid("the secret is not valid UTF-8"))?;
        // Sized up front so the buffer holding the secret is never reallocated.
        let mut buf = Zeroizing::new(Vec::with_capacity(
            128 + 2 * (self.server_url.len() + self.username.len() + secret.len()) + 16,
        ));
        serde_json::to_writer(
            &mut *buf,
            &Wire {
                server_url: &self.server_url,
                username: &self.username,
                secret,
            },
        )
        .map_err(|e| invalid(format!("cannot encode the credential: {}", json_error(&e))))?;
        Ok(buf)
    }

    fn decode(key: &SecretKey, value: &SecretValue) -> Result<Credential> {
        let corrupt = |detail: String| Error::Corrupt {
            store: STORE_NAME.to_owned(),
            key: Some(key.as_str().to_owned()),
            detail,
        };
        let mut wire: WireIn = serde_json::from_slice(value.expose_secret()).map_err(|e| {
            corrupt(format!(
                "not a keyshare docker credential ({})",
                json_error(&e)
            ))
        })?;
        if let Some(reason) = wire.duplicate_error() {
            return Err(corrupt(reason));
        }
        let Some(secret) = wire.secret.as_mut() else {
            return Err(corrupt("the stored credential has no Secret".to_owned()));
        };
        let credential = Credential {
            server_url: wire.server_url,
            username: wire.username,
            secret: SecretValue::new(std::mem::take(&mut **secret).into_bytes()),
        };
        if KEY_PREFIX.to_owned() + &credential.server_url != key.as_str() {
            return Err(corrupt(
                "the credential stored under this key is for another server".to_owned(),
            ));
        }
        Ok(credential)
    }
}

/// Parses `get`'s and `erase`'s input: the server URL, surrounding whitespace trimmed (as
/// docker's helpers do). Empty: [`MISSING_SERVER_URL`].
pub fn parse_server_url(input: &[u8]) -> Result<String> {
    check_input(input)?;
    let text =
        std::str::from_utf8(input).map_err(|_| invalid("the server URL is not valid UTF-8"))?;
    let url = text.trim();
    check_server_url(url)?;
    Ok(url.to_owned())
}

/// What `store`'s `ServerURL` and `get`'s and `erase`'s input must both be (already trimmed),
/// so that every credential stored can be asked for and erased again: not empty
/// ([`MISSING_SERVER_URL`]), one line, and a valid key once prefixed.
fn check_server_url(url: &str) -> Result<()> {
    if url.is_empty() {
        return Err(in_docker_words(MISSING_SERVER_URL));
    }
    if url.contains(['\n', '\r']) {
        return Err(invalid("the server URL spans several lines; send one URL"));
    }
    key(url).map(drop)
}

/// The key a docker credential for `server_url` is stored under.
pub fn key(server_url: &str) -> Result<SecretKey> {
    SecretKey::new(format!("{KEY_PREFIX}{server_url}"))
        .map_err(|e| invalid(format!("the server URL cannot be stored: {e}")))
}

/// `store`: saves (or replaces) the credential for its server.
pub fn store(storage: &SecretStorage, credential: &Credential) -> Result<()> {
    let value = SecretValue::from(credential.to_json()?);
    storage.set(&key(&credential.server_url)?, &value)
}

/// `get`: the credential for `server_url`, `None` when there is none.
pub fn get(storage: &SecretStorage, server_url: &str) -> Result<Option<Credential>> {
    let key = key(server_url)?;
    storage
        .get(&key)?
        .map(|value| Credential::decode(&key, &value))
        .transpose()
}

/// `erase`: removes the credential for `server_url`; `false` when there was none (which the
/// helper answers with success, as docker's helpers for Linux do).
pub fn erase(storage: &SecretStorage, server_url: &str) -> Result<bool> {
    storage.delete(&key(server_url)?)
}

/// `list`: every stored server URL with its username. Unreadable entries are logged; see
/// [`list_reporting`].
pub fn list(storage: &SecretStorage) -> Result<BTreeMap<String, String>> {
    list_reporting(storage, &mut |key, err| {
        tracing::warn!(key = %key, error = %err, "skipped an unreadable docker credential");
    })
}

/// [`list`], telling `unreadable` of each entry that cannot be read (left untouched) instead
/// of failing the whole listing: one corrupt entry hid every other (found by QA).
pub fn list_reporting(
    storage: &SecretStorage,
    unreadable: &mut dyn FnMut(&keyshare::SecretKey, &Error),
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for key in storage.keys()? {
        if !key.as_str().starts_with(KEY_PREFIX) {
            continue;
        }
        if let Some(value) = storage.get(&key)? {
            match Credential::decode(&key, &value) {
                Ok(credential) => {
                    out.insert(credential.server_url, credential.username);
                }
                Err(err @ Error::Corrupt { .. }) => unreadable(&key, &err),
                Err(err) => return Err(err),
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyshare::MemoryStore;
    use proptest::prelude::*;

    use super::*;

    fn reason(err: Error) -> String {
        match err {
            Error::Invalid { reason, .. } => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn store_get_list_erase() {
        let storage = SecretStorage::builder(Arc::new(MemoryStore::new())).build();
        for (url, user, secret) in [
            ("https://index.docker.io/v1/", "alice", "s1"),
            ("ghcr.io", "bob", "s2"),
        ] {
            let payload = format!(
                r#"{{"ServerURL":"{url}","Username":"{user}","Secret":"{secret}","Extra":1}}"#
            );
            store(
                &storage,
                &Credential::parse_store(payload.as_bytes()).unwrap(),
            )
            .unwrap();
        }
        let got = get(&storage, &parse_server_url(b" ghcr.io\n").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(
            &got.answer().unwrap()[..],
            b"{\"ServerURL\":\"ghcr.io\",\"Username\":\"bob\",\"Secret\":\"s2\"}\n"
        );
        let listed = list(&storage).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed["https://index.docker.io/v1/"], "alice");
        assert!(erase(&storage, "ghcr.io").unwrap());
        assert!(!erase(&storage, "ghcr.io").unwrap());
        assert!(get(&storage, "ghcr.io").unwrap().is_none());
        assert_eq!(
            storage.keys().unwrap()[0].as_str(),
            "docker:https://index.docker.io/v1/"
        );
        // Surrounding whitespace in a stored ServerURL: found and erased as `get` and `erase`
        // name it (found in review: listed, but never found or erased).
        let payload = br#"{"ServerURL":" reg.example ","Username":"u","Secret":"s"}"#;
        store(&storage, &Credential::parse_store(payload).unwrap()).unwrap();
        let url = parse_server_url(b"reg.example \n").unwrap();
        assert!(get(&storage, &url).unwrap().is_some());
        assert!(erase(&storage, &url).unwrap());
        assert!(!list(&storage)
            .unwrap()
            .keys()
            .any(|k| k.contains("reg.example")));
    }

    /// A store payload's ServerURL must be one that `get` and `erase` accept: one spanning
    /// several lines was stored and listed, and could never be found or erased again (found by
    /// the `docker_input` fuzz target).
    #[test]
    fn a_server_url_that_get_refuses_is_not_stored() {
        for url in [r"reg\nexample", r"reg\r\nexample", r" reg\rexample "] {
            let payload = format!(r#"{{"ServerURL":"{url}","Username":"u","Secret":"hunter2"}}"#);
            let text = reason(Credential::parse_store(payload.as_bytes()).unwrap_err());
            assert!(text.contains("several lines"), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
        let long = format!(
            r#"{{"ServerURL":"{}","Username":"u","Secret":"s"}}"#,
            "r".repeat(keyshare::model::MAX_KEY_LEN)
        );
        assert!(
            reason(Credential::parse_store(long.as_bytes()).unwrap_err())
                .contains("cannot be stored")
        );
    }

    #[test]
    fn bad_payloads_name_the_problem_without_the_secret() {
        assert_eq!(
            reason(Credential::parse_store(br#"{"Username":"u","Secret":"hunter2"}"#).unwrap_err()),
            MISSING_SERVER_URL
        );
        assert_eq!(
            reason(
                Credential::parse_store(br#"{"ServerURL":"s","Secret":"hunter2"}"#).unwrap_err()
            ),
            MISSING_USERNAME
        );
        assert!(reason(
            Credential::parse_store(br#"{"ServerURL":"s","Username":"u"}"#).unwrap_err()
        )
        .contains("no \"Secret\""));
        for bad in [
            &br#"{"ServerURL":"s","Username":"u","Secret":"hunter2""#[..],
            br#"{"ServerURL":"s","Username":"u","Secret":hunter2}"#,
            br#"{"ServerURL":"s","Username":"u","Secret":["hunter2"]}"#,
        ] {
            let text = reason(Credential::parse_store(bad).unwrap_err());
            assert!(
                !text.contains("hunter2") && text.contains("line 1, column"),
                "{text}"
            );
        }
        assert_eq!(
            reason(parse_server_url(b"  \n").unwrap_err()),
            MISSING_SERVER_URL
        );
        assert!(reason(parse_server_url(b"a\0b").unwrap_err()).contains("NUL"));
        assert!(reason(parse_server_url(b"a\nb").unwrap_err()).contains("several lines"));
    }

    /// The CLI prints docker's wordings as they are and its own with `keyshare: `: it tells
    /// them apart by `what`.
    #[test]
    fn docker_s_wordings_are_told_apart_from_keyshare_s() {
        let what = |err: Error| match err {
            Error::Invalid { what, .. } => what,
            other => panic!("expected Invalid, got {other:?}"),
        };
        assert_eq!(what(parse_server_url(b"").unwrap_err()), DOCKER_WORDING);
        assert_eq!(
            what(Credential::parse_store(br#"{"ServerURL":"s","Secret":"x"}"#).unwrap_err()),
            DOCKER_WORDING
        );
        assert_eq!(
            what(Credential::parse_store(b"not json").unwrap_err()),
            INPUT
        );
        assert_eq!(what(parse_server_url(b"a\nb").unwrap_err()), INPUT);
    }

    /// docker's Go decoder matches field names without regard to case, and clients that
    /// imitate it send `serverurl` or `SERVERURL`; keyshare matched them exactly and refused
    /// such a payload as having no server URL.
    #[test]
    fn field_names_are_matched_without_regard_to_case_as_go_does() {
        let expected = Credential {
            server_url: "r.example".to_owned(),
            username: "u".to_owned(),
            secret: SecretValue::from_slice(b"s"),
        };
        for payload in [
            &br#"{"serverurl":"r.example","username":"u","secret":"s"}"#[..],
            br#"{"SERVERURL":"r.example","USERNAME":"u","SECRET":"s"}"#,
            br#"{"serverUrl":"r.example","userName":"u","sEcReT":"s"}"#,
            // Go folds U+017F (long s) to 's', as Unicode's simple case folding does.
            "{\"ServerURL\":\"r.example\",\"Username\":\"u\",\"\u{17F}ecret\":\"s\"}".as_bytes(),
            // Escaped keys are compared once unescaped.
            br#"{"Server\u0055RL":"r.example","Username":"u","Secret":"s"}"#,
        ] {
            assert_eq!(
                Credential::parse_store(payload).unwrap(),
                expected,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        // Not a case variant: an unknown field, ignored.
        assert_eq!(
            reason(
                Credential::parse_store(
                    br#"{"Server_URL":"r.example","Username":"u","Secret":"s"}"#
                )
                .unwrap_err()
            ),
            MISSING_SERVER_URL
        );
    }

    #[test]
    fn a_field_given_twice_in_any_case_is_refused_without_the_secret() {
        for (payload, first, second) in [
            (
                &br#"{"ServerURL":"r","Username":"u","Secret":"hunter2","secret":"hunter3"}"#[..],
                "Secret",
                "secret",
            ),
            (
                br#"{"Secret":"hunter2","ServerURL":"r","Username":"u","Secret":"hunter3"}"#,
                "Secret",
                "Secret",
            ),
            (
                br#"{"username":"u","ServerURL":"r","Secret":"hunter2","USERNAME":"v"}"#,
                "username",
                "USERNAME",
            ),
        ] {
            let text = reason(Credential::parse_store(payload).unwrap_err());
            assert!(
                text.starts_with("the store payload is ambiguous: the field")
                    && text.contains(&format!("(as {first:?} and {second:?})")),
                "{text}"
            );
            assert!(!text.contains("hunter"), "{text}");
        }
        // A stored value with a field twice is corrupt, and left alone.
        let storage = SecretStorage::builder(Arc::new(MemoryStore::new())).build();
        let key = key("r").unwrap();
        storage
            .set(
                &key,
                &SecretValue::from_slice(
                    br#"{"ServerURL":"r","Username":"u","Secret":"hunter2","SECRET":"x"}"#,
                ),
            )
            .unwrap();
        let err = get(&storage, "r").unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { detail, .. } if detail.contains("given twice")),
            "{err:?}"
        );
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(storage.get(&key).unwrap().is_some());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = Credential::parse_store(&bytes);
            let _ = parse_server_url(&bytes);
        }

        #[test]
        fn any_casing_of_the_field_names_parses_the_same(
            upper in prop::collection::vec(any::<bool>(), "ServerURLUsernameSecret".len()),
            order in Just([0usize, 1, 2]).prop_shuffle(),
        ) {
            let mut flips = upper.into_iter();
            let entries = [("ServerURL", "r.example"), ("Username", "u"), ("Secret", "s")]
                .map(|(name, value)| {
                    let name: String = name
                        .chars()
                        .zip(&mut flips)
                        .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                        .collect();
                    format!("{name:?}:{value:?}")
                });
            let payload = format!(
                "{{{},{},{}}}",
                entries[order[0]], entries[order[1]], entries[order[2]]
            );
            let credential = Credential::parse_store(payload.as_bytes()).unwrap();
            prop_assert_eq!(
                (credential.server_url.as_str(), credential.username.as_str(), credential.secret.expose_secret()),
                ("r.example", "u", &b"s"[..])
            );
        }

        #[test]
        fn answer_parses_back(url in "[^\\s\0]([^\0\n\r]{0,38}[^\\s\0])?", user in "[^\0]{1,20}", secret in "[^\0]{0,40}") {
            let credential = Credential { server_url: url, username: user, secret: SecretValue::from_slice(secret.as_bytes()) };
            prop_assert_eq!(Credential::parse_store(&credential.answer().unwrap()).unwrap(), credential);
        }
    }
}
