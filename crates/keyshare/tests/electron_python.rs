//! Round trip through an independent decoder: keyshare writes a `state.vscdb`, and a Python
//! script using the `cryptography` package (tests/electron_decode.py, PBKDF2 included) decrypts
//! every row. In CI (`CI=true`) a missing `python3` or `cryptography` fails the test;
//! `scripts/test` installs the package when it is missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use keyshare::store::electron::{state_db_path, ElectronStore, SafeStorageKeys};
use keyshare::{SecretKey, SecretValue, Store};

const DECODER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/electron_decode.py");
const KEYRING_PASSWORD: &[u8] = b"k8Q2Vx0mZt5bN1cR4yW7pA==";

fn python_with_cryptography() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import cryptography"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("python3 with the `cryptography` package is required in CI (pip install cryptography)");
        }
        // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip must show.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!!!!!!! SKIPPED: the Python round trip needs python3 with `cryptography` \
             (pip install cryptography; scripts/test installs it)\n"
        );
    }
    ok
}

/// Runs the decoder; `Ok(key -> hex)` or `Err(stderr)`.
fn decode(db: &Path, password: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let mut child = Command::new("python3")
        .arg(DECODER)
        .arg(db)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    // The password goes through stdin, never argv.
    child.stdin.take().unwrap().write_all(password).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("decoder prints JSON"))
}

fn write_sample(db: &Path, keys: SafeStorageKeys) -> BTreeMap<String, String> {
    let store = ElectronStore::builder(db, keys)
        .create(true)
        .open()
        .unwrap();
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let entries: Vec<(&str, Vec<u8>)> = vec![
        (
            r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#,
            br#"[{"id":"1","accessToken":"gho_abc","scopes":["repo"]}]"#.to_vec(),
        ),
        ("plain core key", b"hello".to_vec()),
        ("empty", Vec::new()),
        ("exactly one block", b"0123456789abcdef".to_vec()),
        ("every byte", all_bytes),
        ("big", big),
        ("ünïcødé \"quoted\"\nkey", "välue".as_bytes().to_vec()),
        ("deleted later", b"gone".to_vec()),
    ];
    for (k, v) in &entries {
        store
            .set(&SecretKey::new(*k).unwrap(), &SecretValue::from_slice(v))
            .unwrap();
    }
    assert!(store
        .delete(&SecretKey::new("deleted later").unwrap())
        .unwrap());
    entries
        .into_iter()
        .filter(|(k, _)| *k != "deleted later")
        .map(|(k, v)| (k.to_owned(), hex::encode(v)))
        .collect()
}

#[test]
fn python_decrypts_what_keyshare_writes_v10() {
    if !python_with_cryptography() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = state_db_path(dir.path());
    let expected = write_sample(&db, SafeStorageKeys::linux_basic());
    assert_eq!(decode(&db, b"").unwrap(), expected);
}

#[test]
fn python_decrypts_what_keyshare_writes_v11() {
    if !python_with_cryptography() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = state_db_path(dir.path());
    // As read from the app's Secret Service item (a new database has no row to check a typed
    // password against).
    let keys = SafeStorageKeys::linux_keyring(KEYRING_PASSWORD, "test".to_owned(), false);
    let expected = write_sample(&db, keys);
    assert_eq!(decode(&db, KEYRING_PASSWORD).unwrap(), expected);
    // The decoder is not a rubber stamp: with another password the padding check fails.
    let err = decode(&db, b"AAAAAAAAAAAAAAAAAAAAAA==").unwrap_err();
    assert!(err.contains("does not decrypt"), "{err}");
}

#[test]
fn python_reads_the_reference_sample() {
    if !python_with_cryptography() {
        return;
    }
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sample-state.vscdb");
    let decoded = decode(Path::new(sample), KEYRING_PASSWORD).unwrap();
    assert_eq!(decoded.len(), 2);
    assert!(decoded.values().all(|v| v == &hex::encode("hello")));
}
