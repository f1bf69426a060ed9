//! The Electron legacy store over real SQLite files: the sample database from the reference
//! material, VS Code's row and marker bookkeeping, undecryptable rows, the running-app check,
//! backups, keyring-password checks and the import.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keyshare::store::electron::{
    import_legacy, import_legacy_with, state_db_path, ElectronStore, ImportOptions, ImportOutcome,
    KeySource, KeyringLookup, SafeStorageKeys, TARGET_MARKER_ROW,
};
use keyshare::store::vault::{VaultOptions, VaultStore};
use keyshare::{Error, MemoryStore, SecretKey, SecretValue, Store, UnavailableReason};
use rusqlite::Connection;
use zeroize::Zeroizing;

const GITHUB: &str = r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#;
const API_TOKEN: &str = r#"{"extensionId":"publisher.my-ext","key":"apiToken"}"#;
/// The sample database's keyring password (reference README).
const KEYRING_PASSWORD: &[u8] = b"k8Q2Vx0mZt5bN1cR4yW7pA==";
const SAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/sample-state.vscdb");

fn key(s: &str) -> SecretKey {
    SecretKey::new(s).unwrap()
}

fn value(s: &str) -> SecretValue {
    SecretValue::from_slice(s.as_bytes())
}

fn keyring_keys() -> SafeStorageKeys {
    SafeStorageKeys::linux_keyring(KEYRING_PASSWORD, "the test password".to_owned(), true)
}

/// A copy of the sample database at `<tmp>/Code/User/globalStorage/state.vscdb`, so that the
/// user-data directory is `<tmp>/Code`.
fn sample_copy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = state_db_path(&dir.path().join("Code"));
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(SAMPLE, &db).unwrap();
    (dir, db)
}

/// A keyring password as the user typed it: to be checked before the first write.
fn typed(password: &[u8]) -> SafeStorageKeys {
    SafeStorageKeys::linux_keyring(password, "the typed password".to_owned(), true)
}

/// A Secret Service stand-in for the app's item, counting how often it is asked.
struct FakeKeyring {
    item: std::result::Result<Option<&'static [u8]>, ()>,
    asked: Arc<AtomicUsize>,
}

impl FakeKeyring {
    fn holding(secret: &'static [u8]) -> Self {
        FakeKeyring {
            item: Ok(Some(secret)),
            asked: Arc::default(),
        }
    }

    fn without_item() -> Self {
        FakeKeyring {
            item: Ok(None),
            asked: Arc::default(),
        }
    }

    fn unreachable() -> Self {
        FakeKeyring {
            item: Err(()),
            asked: Arc::default(),
        }
    }
}

impl KeyringLookup for FakeKeyring {
    fn keyring_secret(&self, app_name: &str) -> keyshare::Result<Option<Zeroizing<Vec<u8>>>> {
        assert_eq!(app_name, "Code");
        self.asked.fetch_add(1, Ordering::Relaxed);
        match self.item {
            Ok(item) => Ok(item.map(|s| Zeroizing::new(s.to_vec()))),
            Err(()) => Err(Error::unavailable(
                "secret service",
                UnavailableReason::NotRunning,
                "no session bus (test)",
            )),
        }
    }
}

/// For stores that must not ask the Secret Service at all.
struct NeverAsked;

impl KeyringLookup for NeverAsked {
    fn keyring_secret(&self, _: &str) -> keyshare::Result<Option<Zeroizing<Vec<u8>>>> {
        panic!("the Secret Service was asked")
    }
}

/// The sample without its `v11` row: nothing left in it can confirm or contradict a keyring
/// password (the other row is `v10`).
fn sample_without_v11_rows() -> (tempfile::TempDir, PathBuf) {
    let (dir, db) = sample_copy();
    exec(
        &db,
        &format!("DELETE FROM ItemTable WHERE key = 'secret://{GITHUB}'"),
    );
    (dir, db)
}

fn user_data_dir(db: &Path) -> PathBuf {
    db.ancestors().nth(3).unwrap().to_path_buf()
}

/// Every row as (SQLite type, bytes), read behind the store's back.
fn raw_rows(db: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let conn = Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, typeof(value), COALESCE(CAST(value AS BLOB), x'') FROM ItemTable")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap();
    rows.collect::<rusqlite::Result<_>>().unwrap()
}

fn exec(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

fn backups_of(db: &Path) -> Vec<PathBuf> {
    let name = db.file_name().unwrap().to_string_lossy().into_owned();
    let mut found: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.keyshare-backup-"))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn sample_database_decrypts_with_the_keyring_password() {
    let (_dir, db) = sample_copy();
    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    for k in [GITHUB, API_TOKEN] {
        let got = store.get(&key(k)).unwrap().expect("present");
        assert_eq!(got.expose_secret(), b"hello", "{k}");
    }
    let mut keys: Vec<String> = store
        .keys()
        .unwrap()
        .iter()
        .map(|k| k.to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, [API_TOKEN, GITHUB]);

    let listing = store.rows().unwrap();
    assert!(listing.marker_problem.is_none());
    let github = listing.rows.iter().find(|r| r.key == GITHUB).unwrap();
    let extension = github.extension.as_ref().unwrap();
    assert_eq!(extension.extension_id, "vscode.github-authentication");
    assert_eq!(extension.key, "github.auth");
    assert!(github.listed);
    assert_eq!(github.version.as_deref(), Some("v11"));
    assert_eq!(github.value.as_ref().unwrap().expose_secret(), b"hello");
}

#[test]
fn without_the_keyring_only_the_v10_row_reads() {
    let (_dir, db) = sample_copy();
    let store = ElectronStore::builder(&db, SafeStorageKeys::linux_basic())
        .read_only(true)
        .open()
        .unwrap();
    assert_eq!(
        store.get(&key(API_TOKEN)).unwrap().unwrap().expose_secret(),
        b"hello"
    );
    let err = store.get(&key(GITHUB)).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("keyring secret"), "{err}");
    // Listing needs no key at all.
    assert_eq!(store.keys().unwrap().len(), 2);
}

/// What `legacy list` and `import vscode` read with when the keyring cannot be asked (QA #3):
/// the `v10` row, and for the `v11` row the caller's advice; never a write.
#[test]
fn with_the_keyring_unavailable_v10_reads_v11_says_what_to_do_and_nothing_writes() {
    let (_dir, db) = sample_copy();
    let before = raw_rows(&db);
    let keys = SafeStorageKeys::linux_keyring_unavailable("Code", "Unlock the keyring (test).");
    let store = ElectronStore::builder(&db, keys)
        .force(true)
        .open()
        .unwrap();
    assert_eq!(
        store.get(&key(API_TOKEN)).unwrap().unwrap().expose_secret(),
        b"hello"
    );
    let err = store.get(&key(GITHUB)).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let shown = err.to_string();
    assert!(
        shown.contains("v11 secret") && shown.ends_with("Unlock the keyring (test)."),
        "{shown}"
    );
    // Not the advice for a store on password store basic.
    assert!(!shown.contains("password store basic"), "{shown}");
    assert!(!shown.contains("gnome-libsecret"), "{shown}");
    // The app's key is unknown, so nothing is written, not even a v10 row.
    let err = store.set(&key("new"), &value("v")).unwrap_err();
    assert!(err.to_string().contains("could not be got"), "{err}");
    drop(store);
    assert_eq!(raw_rows(&db), before);
}

#[test]
fn a_wrong_password_is_an_error_never_garbage_and_the_row_stays() {
    let (_dir, db) = sample_copy();
    let before = raw_rows(&db);
    let wrong = SafeStorageKeys::linux_keyring(b"AAAAAAAAAAAAAAAAAAAAAA==", "wrong".into(), true);
    let store = ElectronStore::builder(&db, wrong).open().unwrap();
    let err = store.get(&key(GITHUB)).unwrap_err();
    match &err {
        Error::Corrupt {
            key: Some(k),
            detail,
            ..
        } => {
            assert_eq!(k, GITHUB);
            assert!(detail.contains("wrong key"), "{detail}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The v10 row still reads, and the listing is whole.
    assert!(store.get(&key(API_TOKEN)).unwrap().is_some());
    assert_eq!(store.keys().unwrap().len(), 2);
    drop(store);
    assert_eq!(raw_rows(&db), before, "a failed read changed the database");
}

#[test]
fn undecodable_rows_are_reported_listed_and_left_byte_for_byte() {
    let (_dir, db) = sample_copy();
    let bad_rows = [
        ("not-json", "'{\"type\":\"Buffer\",\"data\":[118,49,49,'"),
        ("not-a-buffer", "'[1,2,3]'"),
        (
            "bad-blob",
            "'{\"type\":\"Buffer\",\"data\":[118,49,49,1,2,3]}'",
        ),
        ("null-value", "NULL"),
    ];
    let mut marker = String::new();
    for (name, sql_value) in bad_rows {
        exec(
            &db,
            &format!("INSERT INTO ItemTable VALUES ('secret://{name}', {sql_value})"),
        );
        marker.push_str(&format!(",\"secret://{name}\":1"));
    }
    exec(
        &db,
        &format!(
            "UPDATE ItemTable SET value = substr(value, 1, length(value) - 1) || '{marker}}}' \
             WHERE key = '{TARGET_MARKER_ROW}'"
        ),
    );
    let before = raw_rows(&db);
    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    for (name, _) in bad_rows {
        let err = store.get(&key(name)).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { key: Some(k), .. } if k == name),
            "{name}: {err:?}"
        );
        let shown = err.to_string();
        assert!(
            shown.contains(name) && shown.contains("left untouched"),
            "{shown}"
        );
    }
    let keys = store.keys().unwrap();
    assert_eq!(keys.len(), 2 + bad_rows.len(), "{keys:?}");
    assert_eq!(
        store.get(&key(GITHUB)).unwrap().unwrap().expose_secret(),
        b"hello"
    );

    let listing = store.rows().unwrap();
    let failing: Vec<_> = listing.rows.iter().filter(|r| r.value.is_err()).collect();
    assert_eq!(failing.len(), bad_rows.len());
    drop(store);
    assert_eq!(raw_rows(&db), before, "a read changed the database");
}

#[test]
fn writes_are_text_in_node_buffer_json_with_a_marker() {
    let (_dir, db) = sample_copy();
    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    let odd_key = "not json at all: ünïcødé \"quoted\"";
    store.set(&key(odd_key), &value("s3cret")).unwrap();
    let rows = raw_rows(&db);
    let row_key = format!("secret://{odd_key}");
    let (kind, bytes) = &rows[&row_key];
    assert_eq!(kind, "text");
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with(r#"{"type":"Buffer","data":[118,49,49,"#),
        "{text}"
    );
    let blob = oscrypt::decode_buffer_json(text).unwrap();
    assert_eq!(oscrypt::encode_buffer_json(&blob), text);
    assert_eq!(
        oscrypt::decrypt(&oscrypt::Keys::linux(Some(KEYRING_PASSWORD)), &blob)
            .unwrap()
            .as_slice(),
        b"s3cret"
    );
    let (marker_kind, marker) = &rows[TARGET_MARKER_ROW];
    assert_eq!(marker_kind, "text");
    let marker: serde_json::Value = serde_json::from_slice(marker).unwrap();
    assert_eq!(marker[&row_key], 1);
    assert_eq!(
        marker[format!("secret://{GITHUB}")],
        1,
        "other entries kept"
    );
    // Unrelated rows are untouched.
    assert_eq!(rows["__$__isNewStorageMarker"].1, b"false");

    assert!(store.delete(&key(odd_key)).unwrap());
    let rows = raw_rows(&db);
    assert!(!rows.contains_key(&row_key));
    let marker: serde_json::Value = serde_json::from_slice(&rows[TARGET_MARKER_ROW].1).unwrap();
    assert!(
        marker.get(&row_key).is_none(),
        "delete removes the marker entry"
    );
    assert_eq!(marker.as_object().unwrap().len(), 2);
    assert!(!store.delete(&key(odd_key)).unwrap());
}

#[test]
fn blob_values_are_read_and_unmarked_rows_are_not_listed() {
    let (_dir, db) = sample_copy();
    let blob = oscrypt::encrypt(&oscrypt::Key::linux_v10(), b"from a blob").unwrap();
    let json = oscrypt::encode_buffer_json(&blob);
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO ItemTable VALUES ('secret://as-blob', ?1)",
        [json.as_bytes()],
    )
    .unwrap();
    drop(conn);
    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    assert_eq!(
        store.get(&key("as-blob")).unwrap().unwrap().expose_secret(),
        b"from a blob"
    );
    // No marker entry: VS Code's keys() would not list it, so neither does ours.
    assert!(!store.keys().unwrap().contains(&key("as-blob")));
    let listing = store.rows().unwrap();
    let row = listing.rows.iter().find(|r| r.key == "as-blob").unwrap();
    assert!(!row.listed);
    assert!(row.value.is_ok());
}

#[test]
fn a_corrupt_marker_blocks_listing_and_writes_but_not_reads() {
    let (_dir, db) = sample_copy();
    exec(
        &db,
        &format!("UPDATE ItemTable SET value = '{{\"oops' WHERE key = '{TARGET_MARKER_ROW}'"),
    );
    let before = raw_rows(&db);
    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    assert!(store.get(&key(GITHUB)).unwrap().is_some());
    let err = store.keys().unwrap_err();
    assert!(matches!(err, Error::Corrupt { key: None, .. }), "{err:?}");
    assert!(
        err.to_string().contains("__$__targetStorageMarker"),
        "{err}"
    );
    let err = store.set(&key("new"), &value("v")).unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    assert!(store.rows().unwrap().marker_problem.is_some());
    drop(store);
    assert_eq!(raw_rows(&db), before);
}

#[test]
fn a_running_app_blocks_writes_unless_forced_and_never_reads() {
    let (_dir, db) = sample_copy();
    let mut app = std::process::Command::new("/bin/sh")
        .args(["-c", "read x"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(user_data_dir(&db).join("code.lock"), app.id().to_string()).unwrap();
    let before = raw_rows(&db);

    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    assert!(
        store.get(&key(GITHUB)).unwrap().is_some(),
        "reads are always allowed"
    );
    for result in [
        store.set(&key("new"), &value("v")).map(drop),
        store.delete(&key(GITHUB)).map(drop),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    reason: UnavailableReason::InUse,
                    ..
                }
            ),
            "{err:?}"
        );
        let shown = err.to_string();
        // The library's words hold for any caller: no flag (QA #4: it named a --force that no
        // command takes).
        assert!(
            shown.contains("Code is running")
                && shown.contains("open the store with force (ElectronStoreBuilder::force)"),
            "{shown}"
        );
        assert!(!shown.contains("--"), "{shown}");
    }
    // A caller says how its own user forces a write.
    let told = ElectronStore::builder(&db, keyring_keys())
        .how_to_force("set the test's force switch")
        .open()
        .unwrap();
    let shown = told.set(&key("new"), &value("v")).unwrap_err().to_string();
    assert!(
        shown.contains("Quit Code and retry, or set the test's force switch to write anyway"),
        "{shown}"
    );
    assert_eq!(raw_rows(&db), before);
    assert!(
        backups_of(&db).is_empty(),
        "a refused write takes no backup"
    );

    let forced = ElectronStore::builder(&db, keyring_keys())
        .force(true)
        .open()
        .unwrap();
    forced.set(&key("new"), &value("v")).unwrap();
    assert_eq!(
        forced.get(&key("new")).unwrap().unwrap().expose_secret(),
        b"v"
    );

    drop(app.stdin.take());
    app.wait().unwrap();
    // The pid in code.lock is gone: the app has exited (or crashed).
    store.set(&key("after-exit"), &value("v")).unwrap();
}

#[test]
fn the_first_write_backs_the_database_up_once() {
    let (_dir, db) = sample_copy();
    let before = std::fs::read(&db).unwrap();
    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    store.get(&key(GITHUB)).unwrap();
    store.keys().unwrap();
    assert!(backups_of(&db).is_empty(), "reads take no backup");
    store.set(&key("a"), &value("1")).unwrap();
    store.set(&key("b"), &value("2")).unwrap();
    store.delete(&key("a")).unwrap();
    let backups = backups_of(&db);
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(store.backup_path().as_ref(), Some(&backups[0]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backups[0]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The backup holds the state before the first write.
    let saved = raw_rows(&backups[0]);
    let original = {
        let copy = backups[0].with_extension("original");
        std::fs::write(&copy, &before).unwrap();
        raw_rows(&copy)
    };
    assert_eq!(saved, original);

    // A new instance within the hour: that backup stands for its own (QA #5: one per command).
    let again = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    again.set(&key("c"), &value("3")).unwrap();
    assert_eq!(backups_of(&db), backups);
    assert_eq!(again.backup_path().as_ref(), Some(&backups[0]));
}

/// QA #5: every writing command left another full copy, forever, holding deleted tokens. Now:
/// a backup less than an hour old stands for a new one, and only the newest three are kept;
/// nothing but keyshare's own backups of this database is deleted.
#[test]
fn backups_are_reused_within_the_hour_and_only_the_newest_three_kept() {
    let (_dir, db) = sample_copy();
    let dir = db.parent().unwrap();
    let hours_ago = |h: u64| {
        keyshare::store::electron::utc_stamp(
            std::time::SystemTime::now() - std::time::Duration::from_secs(h * 3600),
        )
    };
    let old: Vec<PathBuf> = (2..=6)
        .rev()
        .map(|h| {
            let path = dir.join(format!("state.vscdb.keyshare-backup-{}", hours_ago(h)));
            std::fs::copy(&db, &path).unwrap();
            path
        })
        .collect();
    let decoys = [
        dir.join("state.vscdb.keyshare-backup-mine"),
        dir.join(format!("state.vscdb.keyshare-backup-{}.bak", hours_ago(9))),
        dir.join(format!("state.vscdb.bak-{}", hours_ago(9))),
    ];
    for decoy in &decoys {
        std::fs::write(decoy, b"not keyshare's").unwrap();
    }
    let keyshares = || -> Vec<PathBuf> {
        let mut found = backups_of(&db);
        found.retain(|p| !decoys.contains(p));
        found
    };

    let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    store.set(&key("a"), &value("1")).unwrap();
    let taken = store.backup_path().unwrap();
    assert!(!old.contains(&taken));
    let mut expected = vec![old[3].clone(), old[4].clone(), taken.clone()];
    expected.sort();
    assert_eq!(keyshares(), expected, "the three newest are kept");
    for decoy in &decoys {
        assert!(decoy.exists(), "{} was deleted", decoy.display());
    }

    // The QA's sequence: one command writes a token, the next deletes it. Neither takes a
    // backup (the one above is recent), so no backup holds the token.
    for write in [
        |s: &ElectronStore| s.set(&key("tmp"), &value("gone")),
        |s: &ElectronStore| s.delete(&key("tmp")).map(drop),
    ] {
        let store = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
        write(&store).unwrap();
        assert_eq!(store.backup_path(), Some(taken.clone()));
    }
    assert_eq!(keyshares(), expected);
    for backup in keyshares() {
        assert!(
            !raw_rows(&backup).contains_key("secret://tmp"),
            "{}",
            backup.display()
        );
    }
}

#[test]
fn a_mistyped_keyring_password_never_writes() {
    let (_dir, db) = sample_copy();
    let before = raw_rows(&db);
    let wrong = SafeStorageKeys::linux_keyring(b"AAAAAAAAAAAAAAAAAAAAAA==", "typed".into(), true);
    // The rows decide: the Secret Service is not asked, and an opt-in does not override them.
    let store = ElectronStore::builder(&db, wrong)
        .backup(false)
        .keyring_lookup(NeverAsked)
        .write_unverified_password(true)
        .open()
        .unwrap();
    let err = store.set(&key("new"), &value("v")).unwrap_err();
    assert_password_refused(&err, &[]);
    drop(store);
    assert_eq!(raw_rows(&db), before);
    // The right one writes.
    let store = ElectronStore::builder(&db, keyring_keys())
        .backup(false)
        .keyring_lookup(NeverAsked)
        .open()
        .unwrap();
    store.set(&key("new"), &value("v")).unwrap();
}

#[test]
fn a_typed_password_no_row_can_check_is_checked_against_the_apps_keyring_item() {
    let (_dir, db) = sample_without_v11_rows();
    let before = raw_rows(&db);
    let keyring = FakeKeyring::holding(KEYRING_PASSWORD);
    let asked = keyring.asked.clone();
    let store = ElectronStore::builder(&db, typed(b"AAAAAAAAAAAAAAAAAAAAAA=="))
        .keyring_lookup(keyring)
        .open()
        .unwrap();
    // Reads never need the check.
    assert_eq!(
        store.get(&key(API_TOKEN)).unwrap().unwrap().expose_secret(),
        b"hello"
    );
    assert_eq!(asked.load(Ordering::Relaxed), 0, "a read asked the keyring");
    // Over an existing value too: a wrong password would have replaced it with garbage.
    for k in ["new", API_TOKEN] {
        let err = store.set(&key(k), &value("v")).unwrap_err();
        assert_password_refused(
            &err,
            &[
                "not the secret of the Secret Service item application=\"Code\"",
                "write_unverified_password",
            ],
        );
        let shown = err.to_string();
        assert!(
            !shown.contains("AAAA"),
            "the password is in the error: {shown}"
        );
    }
    assert!(
        backups_of(&db).is_empty(),
        "a refused password left a backup behind"
    );
    drop(store);
    assert_eq!(raw_rows(&db), before);

    // The item's own secret writes, and the Secret Service is asked once per store.
    let keyring = FakeKeyring::holding(KEYRING_PASSWORD);
    let asked = keyring.asked.clone();
    let store = ElectronStore::builder(&db, typed(KEYRING_PASSWORD))
        .keyring_lookup(keyring)
        .open()
        .unwrap();
    store.set(&key("new"), &value("v1")).unwrap();
    store.set(&key("other"), &value("v2")).unwrap();
    assert_eq!(asked.load(Ordering::Relaxed), 1);
    let blob = oscrypt::decode_buffer_json(&raw_rows(&db)["secret://new"].1).unwrap();
    assert_eq!(
        oscrypt::decrypt(&oscrypt::Keys::linux(Some(KEYRING_PASSWORD)), &blob)
            .unwrap()
            .as_slice(),
        b"v1"
    );
}

#[test]
fn a_typed_password_nothing_can_check_is_refused_unless_the_caller_opts_in() {
    for (keyring, expected) in [
        (
            FakeKeyring::without_item(),
            "the Secret Service has no item application=\"Code\"",
        ),
        (FakeKeyring::unreachable(), "no session bus (test)"),
    ] {
        // A new database as well as one with v10 rows only: neither can tell.
        let dir = tempfile::tempdir().unwrap();
        let new_db = state_db_path(&dir.path().join("new"));
        let (_sample, sample_db) = sample_without_v11_rows();
        let asked = keyring.asked.clone();
        let keyring = Arc::new(keyring);
        struct Shared(Arc<FakeKeyring>);
        impl KeyringLookup for Shared {
            fn keyring_secret(&self, app: &str) -> keyshare::Result<Option<Zeroizing<Vec<u8>>>> {
                self.0.keyring_secret(app)
            }
        }
        for (db, create) in [(&new_db, true), (&sample_db, false)] {
            let store = ElectronStore::builder(db, typed(KEYRING_PASSWORD))
                .create(create)
                .keyring_lookup(Shared(keyring.clone()))
                .open()
                .unwrap();
            let before = raw_rows(db);
            let err = store.set(&key("new"), &value("v")).unwrap_err();
            assert_password_refused(
                &err,
                &[
                    "can confirm it",
                    expected,
                    "ElectronStoreBuilder::write_unverified_password",
                ],
            );
            drop(store);
            assert_eq!(raw_rows(db), before, "{}", db.display());
        }
        assert_eq!(asked.load(Ordering::Relaxed), 2);

        // Opting in writes, without asking the Secret Service.
        for db in [&new_db, &sample_db] {
            let store = ElectronStore::builder(db, typed(KEYRING_PASSWORD))
                .keyring_lookup(NeverAsked)
                .write_unverified_password(true)
                .open()
                .unwrap();
            store.set(&key("new"), &value("v")).unwrap();
            assert_eq!(
                store.get(&key("new")).unwrap().unwrap().expose_secret(),
                b"v"
            );
        }
    }
}

#[test]
fn basic_never_writes_a_v10_row_where_the_app_keeps_v11_rows() {
    let (_dir, db) = sample_copy();
    let before = raw_rows(&db);
    let keys = KeySource::Basic
        .resolve("Code", Some(&user_data_dir(&db)))
        .unwrap();
    let store = ElectronStore::builder(&db, keys)
        .backup(false)
        .open()
        .unwrap();
    // GITHUB is a v11 row this store cannot read; neither it nor a new key is written.
    for k in [GITHUB, "new"] {
        let err = store.set(&key(k), &value("v")).unwrap_err();
        assert!(matches!(err, Error::ProtectionUnavailable(_)), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("keyring"), "{shown}");
        assert!(shown.contains("v11"), "{shown}");
        assert!(shown.contains("Nothing was written"), "{shown}");
    }
    drop(store);
    assert_eq!(raw_rows(&db), before);

    // Without v11 rows, basic is what the app uses: writes go ahead.
    exec(
        &db,
        &format!("DELETE FROM ItemTable WHERE key = 'secret://{GITHUB}'"),
    );
    let store = ElectronStore::builder(&db, SafeStorageKeys::linux_basic())
        .backup(false)
        .open()
        .unwrap();
    store.set(&key("new"), &value("v")).unwrap();
    assert_eq!(
        store.get(&key("new")).unwrap().unwrap().expose_secret(),
        b"v"
    );
}

#[test]
fn an_unknown_app_key_or_a_read_only_store_never_writes() {
    let (_dir, db) = sample_copy();
    let before = raw_rows(&db);
    struct NoItem;
    impl KeyringLookup for NoItem {
        fn keyring_secret(&self, _: &str) -> keyshare::Result<Option<Zeroizing<Vec<u8>>>> {
            Ok(None)
        }
    }
    let keys = KeySource::GnomeLibsecret
        .resolve_with("Code", None, &NoItem)
        .unwrap();
    let store = ElectronStore::builder(&db, keys).open().unwrap();
    let err = store.set(&key("new"), &value("v")).unwrap_err();
    assert!(err.to_string().contains("application=\"Code\""), "{err}");

    let read_only = ElectronStore::builder(&db, keyring_keys())
        .read_only(true)
        .open()
        .unwrap();
    assert!(read_only.set(&key("new"), &value("v")).is_err());
    assert!(read_only.delete(&key(GITHUB)).is_err());
    drop((store, read_only));
    assert_eq!(raw_rows(&db), before);
}

#[test]
fn opening_checks_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.vscdb");
    let err = ElectronStore::builder(&missing, keyring_keys())
        .open()
        .unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
    assert!(!missing.exists(), "opening must not create");

    // A directory where the database should be: said so, not SQLite's "disk I/O error".
    for read_only in [true, false] {
        let err = ElectronStore::builder(dir.path(), keyring_keys())
            .read_only(read_only)
            .open()
            .unwrap_err();
        assert!(err.to_string().contains("it is a directory"), "{err}");
    }

    let not_sqlite = dir.path().join("garbage.vscdb");
    std::fs::write(
        &not_sqlite,
        b"this is not a database, just some bytes to be ignored....",
    )
    .unwrap();
    let err = ElectronStore::builder(&not_sqlite, keyring_keys())
        .open()
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    let other_schema = dir.path().join("other.vscdb");
    exec(&other_schema, "CREATE TABLE t (x)");
    let err = ElectronStore::builder(&other_schema, keyring_keys())
        .open()
        .unwrap_err();
    assert!(err.to_string().contains("no ItemTable"), "{err}");

    // An ItemTable without the `value` column: refused at open, for writing too, and left as
    // it was (found by QA: a write reached the shared store, then failed on this one).
    let odd_table = dir.path().join("odd.vscdb");
    exec(&odd_table, "CREATE TABLE ItemTable (k TEXT)");
    let before = std::fs::read(&odd_table).unwrap();
    for read_only in [true, false] {
        let err = ElectronStore::builder(&odd_table, keyring_keys())
            .read_only(read_only)
            .create(!read_only)
            .open()
            .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("ItemTable has no key or value column"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&odd_table).unwrap(), before);

    let created = dir.path().join("new/User/globalStorage/state.vscdb");
    let store = ElectronStore::builder(&created, keyring_keys())
        .create(true)
        .write_unverified_password(true)
        .open()
        .unwrap();
    store.set(&key("k"), &value("v")).unwrap();
    let conn = Connection::open(&created).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 1);
    assert!(
        backups_of(&created).is_empty(),
        "nothing to back up in a new file"
    );
}

#[test]
fn import_is_idempotent_keeps_conflicts_and_reports_failures() {
    let (_dir, db) = sample_copy();
    exec(
        &db,
        &format!(
            "INSERT INTO ItemTable VALUES ('secret://broken', '{{\"type\":\"Buffer\",\"data\":[118,49,49,1]}}'); \
             UPDATE ItemTable SET value = substr(value, 1, length(value) - 1) || ',\"secret://broken\":1}}' \
             WHERE key = '{TARGET_MARKER_ROW}'"
        ),
    );
    let source = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    let target = MemoryStore::new();

    let mut seen = Vec::new();
    let dry = import_legacy(&source, &target, true, &mut |p| {
        seen.push((p.done, p.total, p.key.to_string(), p.outcome))
    })
    .unwrap();
    assert_eq!(dry.imported.len(), 2);
    assert!(
        target.keys().unwrap().is_empty(),
        "a dry run writes nothing"
    );
    assert_eq!(seen.len(), 3);
    assert_eq!(seen.last().unwrap().0, 3);
    assert!(seen.iter().all(|s| s.1 == 3));

    let first = import_legacy(&source, &target, false, &mut |_| {}).unwrap();
    assert_eq!(first.imported.len(), 2);
    assert_eq!(first.failed.len(), 1);
    assert_eq!(first.failed[0].0, key("broken"));
    assert!(
        first.failed[0].1.contains("broken"),
        "{}",
        first.failed[0].1
    );
    assert!(!first.is_success());
    assert_eq!(
        target.get(&key(GITHUB)).unwrap().unwrap().expose_secret(),
        b"hello"
    );

    // A value another app wrote since is kept, not overwritten.
    target.set(&key(API_TOKEN), &value("newer")).unwrap();
    let mut outcomes = BTreeMap::new();
    let second = import_legacy(&source, &target, false, &mut |p| {
        outcomes.insert(p.key.to_string(), p.outcome);
    })
    .unwrap();
    assert!(second.imported.is_empty());
    assert_eq!(second.already_present, vec![key(GITHUB)]);
    assert_eq!(second.conflicts.len(), 1);
    assert_eq!(outcomes[API_TOKEN], ImportOutcome::Conflict);
    assert_eq!(outcomes["broken"], ImportOutcome::Failed);
    assert_eq!(
        target
            .get(&key(API_TOKEN))
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"newer"
    );
    assert!(second.to_string().contains("1 kept"), "{second}");
}

/// Damages the key index's entry for the GitHub secret only (its last copy in the file: the
/// table's row comes first), as QA's f-corrupt-index2.sh does: rows still read in a table scan,
/// but a lookup by key misses the row, and `PRAGMA quick_check` finds nothing wrong.
fn damage_key_index(db: &Path) {
    let mut bytes = std::fs::read(db).unwrap();
    let needle = br#""key":"github.auth""#;
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap();
    assert!(
        bytes.windows(needle.len()).filter(|w| *w == needle).count() >= 2,
        "the row and its index entry"
    );
    bytes[at + 7] = b'G';
    std::fs::write(db, bytes).unwrap();
    let quick: String = Connection::open(db)
        .unwrap()
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(quick, "ok", "the damage is one quick_check misses");
}

/// QA s19 F4: over a state database whose key index is damaged, a read said "not found" and a
/// write added a second row for the key. It is now refused at open, read-only or not, naming
/// the file, and the file is left as it was.
#[test]
fn a_state_database_with_a_damaged_index_is_refused_and_left_untouched() {
    let (_dir, db) = sample_copy();
    damage_key_index(&db);
    let before = std::fs::read(&db).unwrap();
    for read_only in [false, true] {
        let err = ElectronStore::builder(&db, keyring_keys())
            .read_only(read_only)
            .open()
            .unwrap_err();
        let Error::Corrupt { store, detail, .. } = &err else {
            panic!("expected Corrupt, got {err:?}");
        };
        assert!(store.contains(&db.display().to_string()), "{store}");
        assert!(detail.contains("left untouched"), "{detail}");
        assert!(detail.contains("sqlite_autoindex_ItemTable_1"), "{detail}");
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the file was not changed"
    );
    assert!(backups_of(&db).is_empty(), "nothing was even backed up");
}

/// QA s19 F2: an import must not bring back a secret another app deleted (signed out of) in a
/// shared store that records deletes, neither in the memory store nor in the vault, and its dry
/// run must say so; `restore_deleted` brings it back on request.
#[test]
fn import_leaves_a_key_deleted_in_the_target_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // The vault refuses a directory others can read.
    std::fs::create_dir(dir.path().join("v")).unwrap();
    std::fs::set_permissions(
        dir.path().join("v"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut options = VaultOptions::new(dir.path().join("v/vault.db"), "ns");
    options.keys.passphrase_env = None;
    let vault = VaultStore::open(options).unwrap();
    let targets: [(&str, Box<dyn Store>); 2] = [
        ("memory", Box::new(MemoryStore::new())),
        ("vault", Box::new(vault)),
    ];
    for (name, target) in targets {
        let (_dir, db) = sample_copy();
        let source = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
        let target = target.as_ref();
        let first = import_legacy(&source, target, false, &mut |_| {}).unwrap();
        assert_eq!(first.imported.len(), 2, "{name}");
        // Another app signs out.
        assert!(target.delete(&key(GITHUB)).unwrap(), "{name}");

        let mut outcomes = BTreeMap::new();
        let dry = import_legacy(&source, target, true, &mut |p| {
            outcomes.insert(p.key.to_string(), p.outcome);
        })
        .unwrap();
        assert!(dry.imported.is_empty(), "{name}: {dry}");
        assert_eq!(dry.left_deleted.len(), 1, "{name}: {dry}");
        assert_eq!(dry.left_deleted[0].0, key(GITHUB), "{name}");
        assert!(
            dry.left_deleted[0].1.contains("deleted in"),
            "{name}: {}",
            dry.left_deleted[0].1
        );
        assert_eq!(outcomes[GITHUB], ImportOutcome::LeftDeleted, "{name}");
        assert!(dry.to_string().contains("1 left deleted"), "{name}: {dry}");

        let again = import_legacy(&source, target, false, &mut |_| {}).unwrap();
        assert!(again.imported.is_empty(), "{name}: {again}");
        assert_eq!(again.left_deleted.len(), 1, "{name}: {again}");
        assert!(
            again.is_success(),
            "{name}: a delete left standing is no failure"
        );
        assert_eq!(
            target.get(&key(GITHUB)).unwrap(),
            None,
            "{name}: sign-out holds"
        );

        let restore = ImportOptions::new(false).restore_deleted(true);
        let restored = import_legacy_with(&source, target, &restore, &mut |_| {}).unwrap();
        assert_eq!(restored.imported, vec![key(GITHUB)], "{name}: {restored}");
        assert_eq!(
            target.get(&key(GITHUB)).unwrap().unwrap().expose_secret(),
            b"hello",
            "{name}"
        );
    }
}

/// A shared store that records no change times (as the Secret Service and OpenBao).
#[derive(Debug, Default)]
struct NoChangeTimes(MemoryStore);

impl Store for NoChangeTimes {
    fn info(&self) -> keyshare::StoreInfo {
        self.0.info()
    }
    fn get(&self, key: &SecretKey) -> keyshare::Result<Option<SecretValue>> {
        self.0.get(key)
    }
    fn set(&self, key: &SecretKey, value: &SecretValue) -> keyshare::Result<()> {
        self.0.set(key, value)
    }
    fn delete(&self, key: &SecretKey) -> keyshare::Result<bool> {
        self.0.delete(key)
    }
    fn keys(&self) -> keyshare::Result<Vec<SecretKey>> {
        self.0.keys()
    }
}

/// QA s19 F2 over a store that records no deletes: a key an earlier import handled, absent
/// now, was deleted there, and is left deleted unless asked.
#[test]
fn import_into_a_store_without_change_times_uses_what_was_imported_before() {
    let (_dir, db) = sample_copy();
    let source = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    let target = NoChangeTimes::default();
    let first = import_legacy(&source, &target, false, &mut |_| {}).unwrap();
    let handled: std::collections::HashSet<SecretKey> = first.handled().cloned().collect();
    assert_eq!(handled.len(), 2);
    target.delete(&key(GITHUB)).unwrap();

    let options = ImportOptions::new(false).imported_before(handled.clone());
    let again = import_legacy_with(&source, &target, &options, &mut |_| {}).unwrap();
    assert!(again.imported.is_empty(), "{again}");
    assert_eq!(again.left_deleted.len(), 1, "{again}");
    assert!(
        again.left_deleted[0].1.contains("earlier import"),
        "{}",
        again.left_deleted[0].1
    );
    assert_eq!(target.get(&key(GITHUB)).unwrap(), None);

    let restore = options.restore_deleted(true);
    let restored = import_legacy_with(&source, &target, &restore, &mut |_| {}).unwrap();
    assert_eq!(restored.imported, vec![key(GITHUB)]);
    // A dry run handles nothing.
    let dry = import_legacy(&source, &target, true, &mut |_| {}).unwrap();
    assert_eq!(dry.handled().count(), 0);
}

#[test]
fn import_reports_a_failing_target_per_key() {
    use keyshare::testing::{Calls, Fault, FaultStore};
    let (_dir, db) = sample_copy();
    let source = ElectronStore::builder(&db, keyring_keys()).open().unwrap();
    let target = FaultStore::new(MemoryStore::new(), std::time::Duration::from_millis(1));
    // The first write fails the batch; the second fails the same key again when the batch is
    // retried key by key.
    target.arm_on(0, Fault::FailBefore, Calls::Writes);
    target.arm_on(1, Fault::FailBefore, Calls::Writes);
    let report = import_legacy(&source, &target, false, &mut |_| {}).unwrap();
    assert_eq!(report.imported.len(), 1);
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].1.starts_with("writing the target"),
        "{:?}",
        report.failed
    );
    // The re-run imports only what failed.
    let again = import_legacy(&source, &target, false, &mut |_| {}).unwrap();
    assert_eq!(again.imported, vec![report.failed[0].0.clone()]);
    assert_eq!(again.already_present.len(), 1);
}

#[test]
fn import_in_batches_reports_every_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.vscdb");
    let mut conn = Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE ItemTable (key TEXT UNIQUE ON CONFLICT REPLACE, value BLOB)")
        .unwrap();
    let tx = conn.transaction().unwrap();
    let mut marker = serde_json::Map::new();
    for i in 0..600 {
        let blob = oscrypt::encrypt(&oscrypt::Key::linux_v10(), format!("v{i}").as_bytes());
        let row_key = format!("secret://k{i:03}");
        tx.execute(
            "INSERT INTO ItemTable VALUES (?1, ?2)",
            (&row_key, oscrypt::encode_buffer_json(&blob.unwrap())),
        )
        .unwrap();
        marker.insert(row_key, 1.into());
    }
    tx.execute(
        "INSERT INTO ItemTable VALUES (?1, ?2)",
        (
            TARGET_MARKER_ROW,
            serde_json::Value::Object(marker).to_string(),
        ),
    )
    .unwrap();
    tx.commit().unwrap();
    drop(conn);

    let source = ElectronStore::builder(&db, SafeStorageKeys::linux_basic())
        .read_only(true)
        .open()
        .unwrap();
    let target = MemoryStore::new();
    for i in 0..10 {
        target
            .set(&key(&format!("k{i:03}")), &value(&format!("v{i}")))
            .unwrap();
    }
    for i in 300..305 {
        target
            .set(&key(&format!("k{i:03}")), &value("other"))
            .unwrap();
    }
    let mut seen = BTreeMap::new();
    let report = import_legacy(&source, &target, false, &mut |p| {
        assert_eq!(p.total, 600);
        assert!(
            seen.insert(p.key.to_string(), p.outcome).is_none(),
            "{} twice",
            p.key
        );
    })
    .unwrap();
    assert_eq!(seen.len(), 600);
    assert_eq!(report.imported.len(), 585);
    assert_eq!(report.already_present.len(), 10);
    assert_eq!(report.conflicts.len(), 5);
    assert!(report.failed.is_empty());
    let count = |o| seen.values().filter(|x| **x == o).count();
    assert_eq!(count(ImportOutcome::Imported), 585);
    assert_eq!(count(ImportOutcome::Conflict), 5);
    assert_eq!(seen["k301"], ImportOutcome::Conflict);
    assert_eq!(
        target.get(&key("k599")).unwrap().unwrap().expose_secret(),
        b"v599"
    );
    assert_eq!(target.keys().unwrap().len(), 600);
}

#[test]
fn secret_storage_dual_writes_into_and_migrates_from_the_electron_store() {
    let (_dir, db) = sample_copy();
    let legacy = Arc::new(ElectronStore::builder(&db, keyring_keys()).open().unwrap());
    let shared = Arc::new(MemoryStore::new());
    let storage = keyshare::SecretStorage::builder(shared.clone())
        .legacy(legacy.clone())
        .build();
    // Lazy migration copies the legacy secrets to the shared store.
    assert_eq!(
        storage.get(&key(GITHUB)).unwrap().unwrap().expose_secret(),
        b"hello"
    );
    let report = storage.migrate(|_| {}).unwrap();
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        shared
            .get(&key(API_TOKEN))
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"hello"
    );
    storage.set(&key(GITHUB), &value("rotated")).unwrap();
    assert_eq!(
        legacy.get(&key(GITHUB)).unwrap().unwrap().expose_secret(),
        b"rotated"
    );
    // What VS Code would read: the row under its exact key, decryptable with its key.
    let rows = raw_rows(&db);
    let blob = oscrypt::decode_buffer_json(&rows[&format!("secret://{GITHUB}")].1).unwrap();
    assert_eq!(
        oscrypt::decrypt(&oscrypt::Keys::linux(Some(KEYRING_PASSWORD)), &blob)
            .unwrap()
            .as_slice(),
        b"rotated"
    );
}

mod conformance_basic {
    use super::*;

    fn factory() -> impl Fn(&str) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        move |ns: &str| -> Arc<dyn Store> {
            let db = state_db_path(&dir.path().join(ns));
            Arc::new(
                ElectronStore::builder(db, SafeStorageKeys::linux_basic())
                    .create(true)
                    .open()
                    .unwrap(),
            )
        }
    }

    keyshare::conformance_tests!(factory());
}

mod conformance_v11 {
    use super::*;

    fn factory() -> impl Fn(&str) -> Arc<dyn Store> {
        let dir = tempfile::tempdir().unwrap();
        move |ns: &str| -> Arc<dyn Store> {
            let db = state_db_path(&dir.path().join(ns));
            Arc::new(
                ElectronStore::builder(db, keyring_keys())
                    .create(true)
                    .keyring_lookup(FakeKeyring::holding(KEYRING_PASSWORD))
                    .open()
                    .unwrap(),
            )
        }
    }

    keyshare::conformance_tests!(factory());
}

/// Asserts that `err` refuses a typed keyring password, says that nothing was written, and
/// says each of `says`.
fn assert_password_refused(err: &Error, says: &[&str]) {
    assert!(
        matches!(
            err,
            Error::Invalid {
                what: "keyring password",
                ..
            }
        ),
        "{err:?}"
    );
    let shown = err.to_string();
    for part in says.iter().chain(&["Nothing was written"]) {
        assert!(shown.contains(part), "{part:?} missing from: {shown}");
    }
}

/// QA s19 F8: the wait for a lock another program holds on the database ignored the configured
/// `timeout_ms` and always took 5 s. It now waits as long as the builder's timeout says.
#[test]
fn a_locked_database_fails_after_the_configured_timeout() {
    let (_dir, db) = sample_copy();
    let store = ElectronStore::builder(&db, keyring_keys())
        .timeout(std::time::Duration::from_millis(300))
        .open()
        .unwrap();
    let holder = Connection::open(&db).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = std::time::Instant::now();
    let err = store.get(&key(GITHUB)).unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                reason: UnavailableReason::TimedOut,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("300 ms"), "{err}");
    assert!(
        waited >= std::time::Duration::from_millis(250)
            && waited < std::time::Duration::from_secs(2),
        "waited {waited:?}"
    );
}
