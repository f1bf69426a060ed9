//! The `keyshare` binary over the real embedded vault, in a throwaway home: the seed's two-app
//! scenario, dual writes into an app's legacy vault, repair after the shared store was
//! unusable, migration, and the error paths that need real files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use keyshare::store::vault::{VaultOptions, VaultStore};
use keyshare::{SecretKey, SecretValue, Store};

mod support;

use support::Home;

/// A home whose commands use the vault.
fn home() -> Home {
    Home::new().with_store("vault")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn one_app_signs_in_the_other_reads_and_other_flavours_see_nothing() {
    let env = home();
    let first = env.ok(&["--app", "code", "set", "github.auth"], b"s3cret");
    let notice = stderr(&first);
    assert!(
        notice.contains("protected only by that file's permissions"),
        "{notice}"
    );
    assert_eq!(notice.lines().count(), 1, "one line: {notice}");
    let got = env.ok(&["--app", "agents", "get", "github.auth"], b"");
    assert_eq!(got.stdout, b"s3cret", "exact bytes, no newline added");
    assert!(
        stderr(&got).is_empty(),
        "no second notice: {}",
        stderr(&got)
    );
    assert_eq!(
        env.code(&[
            "--app",
            "agents",
            "--flavor",
            "insiders",
            "get",
            "github.auth"
        ]),
        1
    );
}

#[test]
fn values_round_trip_exactly_and_empty_is_not_missing() {
    let env = home();
    let bin: Vec<u8> = (0..=255u8).collect();
    let file = env.path().join("value.bin");
    std::fs::write(&file, &bin).unwrap();
    env.ok(&["set", "bin", "--from-file", file.to_str().unwrap()], b"");
    assert_eq!(env.ok(&["get", "bin"], b"").stdout, bin);
    env.ok(&["set", "--allow-empty", "empty"], b"");
    let empty = env.ok(&["get", "empty"], b"");
    assert!(empty.stdout.is_empty());
    assert_eq!(env.code(&["get", "missing"]), 1);
    let json = env.ok(&["--json", "get", "empty"], b"");
    assert_eq!(
        String::from_utf8(json.stdout).unwrap().trim(),
        r#"{"key":"empty","value":""}"#
    );
    let json = env.ok(&["--json", "get", "bin"], b"");
    assert!(String::from_utf8(json.stdout)
        .unwrap()
        .contains("value_base64"));
}

#[test]
fn list_and_delete() {
    let env = home();
    for k in ["b", "a", "c"] {
        env.ok(&["set", k], k.as_bytes());
    }
    assert_eq!(env.ok(&["list"], b"").stdout, b"a\nb\nc\n");
    env.ok(&["delete", "b"], b"");
    assert_eq!(env.ok(&["--json", "list"], b"").stdout, b"[\"a\",\"c\"]\n");
    assert_eq!(env.code(&["delete", "b"]), 1);
}

fn open_raw(path: &Path, namespace: &str) -> VaultStore {
    VaultStore::open(VaultOptions::new(path, namespace)).unwrap()
}

#[test]
fn dual_write_fallback_and_repair_through_the_cli() {
    let env = home();
    // Direct access: a running broker would keep the shared vault open, and this test makes it
    // unusable by changing its permissions, which only a fresh open notices.
    env.config("autostart = false\n[apps.code]\nlegacy = { kind = \"vault\" }\n");
    env.ok(&["--app", "code", "set", "github.auth"], b"v1");
    // Both copies exist: the shared one for every app, the legacy one for rollback.
    let app_vault = env.data_dir().join("stable/apps/code.db");
    let legacy = open_raw(&app_vault, "legacy");
    let key = SecretKey::new("github.auth").unwrap();
    assert_eq!(
        legacy.get(&key).unwrap(),
        Some(SecretValue::from_slice(b"v1"))
    );
    assert_eq!(
        env.ok(&["--app", "agents", "get", "github.auth"], b"")
            .stdout,
        b"v1"
    );

    // Make the shared vault unusable: its permissions are now unsafe.
    let shared = env.data_dir().join("stable/vault.db");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.ok(&["--app", "code", "set", "github.auth"], b"v2");
    assert!(stderr(&out).contains("queues repairs"), "{}", stderr(&out));
    // This app reads its acknowledged value; the other app is refused with a clear error.
    assert_eq!(
        env.ok(&["--app", "code", "get", "github.auth"], b"").stdout,
        b"v2"
    );
    let refused = env.run(&["--app", "agents", "get", "github.auth"], b"");
    assert_eq!(refused.status.code(), Some(6), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("chmod 600"),
        "{}",
        stderr(&refused)
    );
    let doctor = env.run(&["--app", "code", "doctor"], b"");
    assert!(!doctor.status.success());
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(report.contains("pending repairs: 1"), "{report}");

    // Fixed: a repair brings the shared store up to date, and the other app converges.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).unwrap();
    let repaired = env.ok(&["--app", "code", "repair"], b"");
    assert!(String::from_utf8_lossy(&repaired.stdout).contains("repaired: 1"));
    assert_eq!(
        env.ok(&["--app", "agents", "get", "github.auth"], b"")
            .stdout,
        b"v2"
    );
    let doctor = env.ok(&["--app", "code", "--json", "doctor"], b"");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(report["pending_repairs"], serde_json::json!([]));
    assert_eq!(report["shared"]["kind"], "vault");
    assert_eq!(report["legacy"]["kind"], "vault");
    assert!(report["shared"]["protection"]
        .as_str()
        .unwrap()
        .contains("key file"));
}

#[test]
fn migrate_copies_legacy_secrets_and_is_idempotent() {
    let env = home();
    env.config("[apps.code]\nlegacy = { kind = \"vault\" }\n");
    // Secrets the app kept before it shared anything.
    let app_vault = env.data_dir().join("stable/apps/code.db");
    std::fs::create_dir_all(app_vault.parent().unwrap()).unwrap();
    std::fs::set_permissions(env.data_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        env.data_dir().join("stable"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::set_permissions(
        app_vault.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let legacy = open_raw(&app_vault, "legacy");
    for i in 0..5 {
        let key = SecretKey::new(format!("k{i}")).unwrap();
        legacy
            .set(&key, &SecretValue::from_slice(format!("v{i}").as_bytes()))
            .unwrap();
    }
    drop(legacy);
    let out = env.ok(&["--app", "code", "--json", "migrate"], b"");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The first operation's lazy pass may already have copied everything.
    let copied = report["copied"].as_u64().unwrap() + report["already_present"].as_u64().unwrap();
    assert_eq!(copied, 5, "{report}");
    assert_eq!(report["complete"], true);
    for i in 0..5 {
        let got = env.ok(&["--app", "agents", "get", &format!("k{i}")], b"");
        assert_eq!(got.stdout, format!("v{i}").as_bytes());
    }
    let again = env.ok(&["--app", "code", "--json", "migrate"], b"");
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["copied"], 0, "{report}");
}

#[test]
fn a_file_that_is_not_a_vault_is_reported_and_left_untouched() {
    let env = home();
    let shared = env.data_dir().join("stable/vault.db");
    std::fs::create_dir_all(shared.parent().unwrap()).unwrap();
    for dir in [env.data_dir(), env.data_dir().join("stable")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let garbage = b"this is somebody's notes, not a vault".repeat(40);
    std::fs::write(&shared, &garbage).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.run(&["set", "k"], b"v");
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a keyshare vault"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(&shared).unwrap(), garbage);
}

#[test]
fn a_corrupt_value_is_exit_4_and_other_keys_still_read() {
    let env = home();
    env.ok(&["set", "good"], b"fine");
    env.ok(&["set", "bad"], b"will be damaged");
    let shared = env.data_dir().join("stable/vault.db");
    let conn = rusqlite::Connection::open(&shared).unwrap();
    conn.execute(
        "UPDATE secrets SET sealed = substr(sealed, 1, length(sealed) - 1) || x'00' WHERE key = CAST('bad' AS BLOB)",
        [],
    )
    .unwrap();
    drop(conn);
    let out = env.run(&["get", "bad"], b"");
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"bad\""), "{}", stderr(&out));
    assert_eq!(env.ok(&["get", "good"], b"").stdout, b"fine");
}
