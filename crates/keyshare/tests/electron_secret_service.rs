//! The `gnome-libsecret` key source against a real Secret Service (gnome-keyring on a private
//! bus): `eval "$(scripts/secret-service start DIR)"` before `cargo test`, which sets
//! `KEYSHARE_TEST_SECRET_SERVICE` (`scripts/test` does). Without it the tests skip loudly, and
//! fail in CI (`CI=true`).
#![cfg(target_os = "linux")]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use keyshare::store::electron::{
    state_db_path, ElectronStore, KeySource, KeyringLookup, SafeStorageLookup,
};
use keyshare::{SecretKey, SecretValue, Store};

const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sample-state.vscdb");
const KEYRING_PASSWORD: &str = "k8Q2Vx0mZt5bN1cR4yW7pA==";
const GITHUB: &str = r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#;

fn service_available() -> bool {
    if std::env::var_os("KEYSHARE_TEST_SECRET_SERVICE").is_some() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, but KEYSHARE_TEST_SECRET_SERVICE is not set: run the tests through scripts/test");
    }
    // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip must show.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: no test Secret Service (KEYSHARE_TEST_SECRET_SERVICE is not set)\n\
         !!!!!!!! run the tests through scripts/test, which starts a private gnome-keyring\n"
    );
    false
}

/// An app name no other test run uses, so that items never collide.
fn unique_app() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "Keyshare Test {}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Stores an item as Chromium does (the secret goes through stdin).
fn store_item(label: &str, attributes: &[(&str, &str)], secret: &str) {
    let mut args = vec!["store".to_owned(), format!("--label={label}")];
    for (k, v) in attributes {
        args.push((*k).to_owned());
        args.push((*v).to_owned());
    }
    let mut child = Command::new("secret-tool")
        .args(&args)
        .stdin(Stdio::piped())
        .spawn()
        .expect("secret-tool (libsecret-tools) is installed by scripts/secret-service");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(secret.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "secret-tool store failed");
}

fn clear_items(app: &str) {
    let _ = Command::new("secret-tool")
        .args(["clear", "application", app])
        .status();
}

struct Items(String);

impl Drop for Items {
    fn drop(&mut self) {
        clear_items(&self.0);
    }
}

fn lookup() -> SafeStorageLookup {
    SafeStorageLookup::open(std::time::Duration::from_secs(5)).unwrap()
}

fn sample_user_data_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let user_data = dir.path().join("app");
    let db = state_db_path(&user_data);
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(SAMPLE, &db).unwrap();
    (dir, user_data)
}

#[test]
fn the_item_is_found_by_application_never_by_label() {
    if !service_available() {
        return;
    }
    let app = unique_app();
    let decoy = unique_app();
    let _cleanup = (Items(app.clone()), Items(decoy.clone()));
    // The label the app's item would have on Electron >= 42, on an item of another app.
    store_item(
        &format!("{app} Safe Storage"),
        &[
            ("application", &decoy),
            ("xdg:schema", "chrome_libsecret_os_crypt_password_v2"),
        ],
        "AAAAAAAAAAAAAAAAAAAAAA==",
    );
    assert_eq!(
        lookup().keyring_secret(&app).unwrap(),
        None,
        "matched an item by its label"
    );
    store_item(
        "Chromium Safe Storage",
        &[
            ("application", &app),
            ("xdg:schema", "chrome_libsecret_os_crypt_password_v2"),
        ],
        KEYRING_PASSWORD,
    );
    let secret = lookup().keyring_secret(&app).unwrap().expect("item found");
    assert_eq!(secret.as_slice(), KEYRING_PASSWORD.as_bytes());
}

#[test]
fn gnome_libsecret_reads_and_writes_with_the_apps_keyring_secret() {
    if !service_available() {
        return;
    }
    let app = unique_app();
    let _cleanup = Items(app.clone());
    store_item(
        "Chromium Safe Storage",
        &[
            ("application", &app),
            ("xdg:schema", "chrome_libsecret_os_crypt_password_v2"),
        ],
        KEYRING_PASSWORD,
    );
    let (_dir, user_data) = sample_user_data_dir();
    let store = ElectronStore::for_app(&app, Some(&user_data), &KeySource::GnomeLibsecret)
        .unwrap()
        .open()
        .unwrap();
    let github = SecretKey::new(GITHUB).unwrap();
    assert_eq!(
        store.get(&github).unwrap().unwrap().expose_secret(),
        b"hello"
    );
    store
        .set(&github, &SecretValue::from_slice(b"rotated"))
        .unwrap();
    // What the app itself would decrypt: v11 with the keyring secret.
    let keys = oscrypt::Keys::linux(Some(KEYRING_PASSWORD.as_bytes()));
    let conn = rusqlite::Connection::open(state_db_path(&user_data)).unwrap();
    let row: String = conn
        .query_row(
            "SELECT value FROM ItemTable WHERE key = ?1",
            [format!("secret://{GITHUB}")],
            |r| r.get(0),
        )
        .unwrap();
    let blob = oscrypt::decode_buffer_json(&row).unwrap();
    assert!(blob.starts_with(b"v11"));
    assert_eq!(
        oscrypt::decrypt(&keys, &blob).unwrap().as_slice(),
        b"rotated"
    );
}

#[test]
fn without_an_item_v11_is_read_with_the_empty_key_and_nothing_is_written() {
    if !service_available() {
        return;
    }
    let app = unique_app();
    let (_dir, user_data) = sample_user_data_dir();
    let store = ElectronStore::for_app(&app, Some(&user_data), &KeySource::GnomeLibsecret)
        .unwrap()
        .open()
        .unwrap();
    assert!(store.keys_in_use().origin().contains("empty-password"));
    // The sample's v11 row was written with another keyring's secret: said so, not merely
    // "corrupt" (found by QA).
    let err = store.get(&SecretKey::new(GITHUB).unwrap()).unwrap_err();
    assert!(
        err.to_string().contains("may well be intact: written with")
            && err.to_string().contains("give that password"),
        "{err}"
    );
    let err = store
        .set(
            &SecretKey::new("k").unwrap(),
            &SecretValue::from_slice(b"v"),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("no item with application="),
        "{err}"
    );
}

/// The sample without its `v11` row: no row left to confirm or contradict a typed password.
fn sample_without_v11_rows() -> (tempfile::TempDir, PathBuf) {
    let (dir, user_data) = sample_user_data_dir();
    rusqlite::Connection::open(state_db_path(&user_data))
        .unwrap()
        .execute(
            "DELETE FROM ItemTable WHERE key = ?1",
            [format!("secret://{GITHUB}")],
        )
        .unwrap();
    (dir, user_data)
}

fn typed(password: &str) -> KeySource {
    KeySource::KeyringPassword(zeroize::Zeroizing::new(password.as_bytes().to_vec()))
}

#[test]
fn a_typed_password_no_row_can_check_is_checked_against_the_apps_item() {
    if !service_available() {
        return;
    }
    let app = unique_app();
    let _cleanup = Items(app.clone());
    let (_dir, user_data) = sample_without_v11_rows();
    let db = state_db_path(&user_data);
    let before = std::fs::read(&db).unwrap();
    let new = SecretKey::new("new").unwrap();

    // No item yet: nothing can check the password.
    let store = ElectronStore::for_app(&app, Some(&user_data), &typed(KEYRING_PASSWORD))
        .unwrap()
        .open()
        .unwrap();
    let err = store.set(&new, &SecretValue::from_slice(b"v")).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("has no item application="), "{shown}");
    assert!(shown.contains("write_unverified_password"), "{shown}");
    drop(store);

    store_item(
        &format!("{app} Safe Storage"),
        &[
            ("application", &app),
            ("xdg:schema", "chrome_libsecret_os_crypt_password_v2"),
        ],
        KEYRING_PASSWORD,
    );
    let store = ElectronStore::for_app(&app, Some(&user_data), &typed("AAAAAAAAAAAAAAAAAAAAAA=="))
        .unwrap()
        .open()
        .unwrap();
    let err = store.set(&new, &SecretValue::from_slice(b"v")).unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("not the secret of the Secret Service item application="),
        "{shown}"
    );
    assert!(shown.contains("Nothing was written"), "{shown}");
    drop(store);
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "a refused write changed the database"
    );

    let store = ElectronStore::for_app(&app, Some(&user_data), &typed(KEYRING_PASSWORD))
        .unwrap()
        .open()
        .unwrap();
    store.set(&new, &SecretValue::from_slice(b"v")).unwrap();
    assert_eq!(store.get(&new).unwrap().unwrap().expose_secret(), b"v");
}
