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
    // Said as it is: no bus at all, not a bus without a Secret Service (found by QA).
    assert!(
        notice.contains("no Secret Service reachable (DBUS_SESSION_BUS_ADDRESS is not set)"),
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
    // unusable by putting something else at its path, which only a fresh open notices.
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

    // Make the shared vault unusable: what is at its path now is not a vault. (Unsafe
    // permissions used to stand in for an outage here; they are a protection problem that
    // every app is refused for, see below.)
    let shared = env.data_dir().join("stable/vault.db");
    let aside = shared.with_extension("aside");
    std::fs::rename(&shared, &aside).unwrap();
    std::fs::write(&shared, [0x5a_u8; 4096]).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.ok(&["--app", "code", "set", "github.auth"], b"v2");
    assert!(stderr(&out).contains("queues repairs"), "{}", stderr(&out));
    // This app reads its acknowledged value; the other app is refused with a clear error.
    assert_eq!(
        env.ok(&["--app", "code", "get", "github.auth"], b"").stdout,
        b"v2"
    );
    let refused = env.run(&["--app", "agents", "get", "github.auth"], b"");
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("is not a keyshare vault"),
        "{}",
        stderr(&refused)
    );
    let doctor = env.run(&["--app", "code", "doctor"], b"");
    assert!(!doctor.status.success());
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(report.contains("pending repairs: 1"), "{report}");

    // Fixed: a repair brings the shared store up to date, and the other app converges.
    std::fs::rename(&aside, &shared).unwrap();
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

/// A sign-out does not come back when the shared store changes under an app with a legacy
/// store (another flavour `service`, `auto` choosing the keyring once its record is removed):
/// the app's own copy of a key it shared before is not migrated into the new store. Found by
/// QA: `agents` signed out, then the first `code` command after a `service` rename copied
/// `code`'s stale copy into the new store, and every app was signed in again.
#[test]
fn a_sign_out_does_not_come_back_when_the_shared_store_changes() {
    let env = home();
    let legacy = "[apps.code]\nlegacy = { kind = \"vault\" }\n";
    env.config(legacy);
    env.ok(&["--direct", "--app", "code", "set", "github.auth"], b"tok");
    env.ok(
        &["--direct", "--app", "agents", "delete", "github.auth"],
        b"",
    );
    env.config(&format!(
        "[flavors.stable]\nservice = \"com.example.renamed\"\n{legacy}"
    ));
    for app in ["code", "agents", "code"] {
        let out = env.run(&["--direct", "--app", app, "get", "github.auth"], b"");
        assert_eq!(out.status.code(), Some(1), "{app}: {}", stderr(&out));
    }
    // Nothing is left to migrate: doctor has no problem with the new store.
    env.ok(&["--direct", "--app", "code", "doctor"], b"");
    // A key the app writes now reaches the new store as always.
    env.ok(&["--direct", "--app", "code", "set", "new.key"], b"n");
    let out = env.ok(&["--direct", "--app", "agents", "get", "new.key"], b"");
    assert_eq!(out.stdout, b"n");
}

/// The access policy holds while the shared store cannot be opened: a key the app may not use
/// is refused (exit 8), not written to the app's own store and queued for a repair the broker
/// would refuse forever (found by QA: the app read the denied key back from its own copy).
#[test]
fn the_policy_holds_while_the_shared_store_cannot_be_opened() {
    let env = home();
    env.config("[apps.agents]\nlegacy = { kind = \"vault\" }\nshared_keys = [\"github.auth\"]\n");
    env.ok(
        &["--no-autostart", "--app", "agents", "set", "github.auth"],
        b"gh",
    );
    // Something that is not a vault at the shared vault's path: an outage for this app.
    let vault = env.data_dir().join("stable/vault.db");
    std::fs::rename(&vault, vault.with_extension("aside")).unwrap();
    std::fs::write(&vault, [0x5a_u8; 4096]).unwrap();
    std::fs::set_permissions(&vault, std::fs::Permissions::from_mode(0o600)).unwrap();
    let denied = env.run(
        &["--no-autostart", "--app", "agents", "set", "openai.key"],
        b"x",
    );
    assert_eq!(denied.status.code(), Some(8), "{}", stderr(&denied));
    let read = env.run(
        &["--no-autostart", "--app", "agents", "get", "openai.key"],
        b"",
    );
    assert_eq!(read.status.code(), Some(8), "{}", stderr(&read));
    assert!(read.stdout.is_empty());
    // An allowed key rides out the outage as before.
    env.ok(
        &["--no-autostart", "--app", "agents", "set", "github.auth"],
        b"gh2",
    );
    let legacy = open_raw(&env.data_dir().join("stable/apps/agents.db"), "legacy");
    assert_eq!(
        legacy.get(&SecretKey::new("openai.key").unwrap()).unwrap(),
        None
    );
    assert_eq!(
        legacy.get(&SecretKey::new("github.auth").unwrap()).unwrap(),
        Some(SecretValue::from_slice(b"gh2"))
    );
}

/// A shared vault others could read is a protection problem for every app (exit 6), not an
/// outage that an app with a legacy store rides out on its own copy (found by QA: its writes
/// were acknowledged, exit 0, and queued).
#[test]
fn unsafe_permissions_on_the_shared_vault_are_refused_for_an_app_with_a_legacy_store_too() {
    let env = home();
    env.config("[apps.code]\nlegacy = { kind = \"vault\" }\n");
    env.ok(&["--no-autostart", "--app", "code", "set", "k"], b"v1");
    let key_file = env.data_dir().join("stable/vault.key");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    for (args, stdin) in [
        (
            &["--no-autostart", "--app", "code", "get", "k"][..],
            &b""[..],
        ),
        (&["--no-autostart", "--app", "code", "set", "k"], b"v2"),
        (&["--no-autostart", "--app", "agents", "get", "k"], b""),
    ] {
        let out = env.run(args, stdin);
        assert_eq!(out.status.code(), Some(6), "{args:?}: {}", stderr(&out));
    }
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.ok(&["--no-autostart", "--app", "agents", "get", "k"], b"");
    assert_eq!(out.stdout, b"v1", "the refused set wrote nothing");
}

/// A write acknowledged while the shared store was out, pending its repair, follows the app to
/// a shared store new to it: read from the app's own copy, then repaired into the new store
/// (found in review: it read "not found" after the switch).
#[test]
fn a_pending_write_follows_the_app_to_a_new_shared_store() {
    let env = Home::new();
    env.config("[apps.code]\nlegacy = { kind = \"vault\" }\n");
    // No session bus here: the Secret Service is out, the write is the app's own.
    let out = env.ok(
        &[
            "--store",
            "secret-service",
            "--direct",
            "--app",
            "code",
            "set",
            "k",
        ],
        b"v1",
    );
    assert!(stderr(&out).contains("queued"), "{}", stderr(&out));
    let got = env.ok(
        &["--store", "vault", "--direct", "--app", "code", "get", "k"],
        b"",
    );
    assert_eq!(got.stdout, b"v1");
    // That first command on the vault repaired it there: the other apps see it.
    let got = env.ok(
        &[
            "--store", "vault", "--direct", "--app", "agents", "get", "k",
        ],
        b"",
    );
    assert_eq!(got.stdout, b"v1");
}

/// A pending repair follows the app to a shared store new to it once: moved, not copied. Found
/// by QA: left in the earlier journal, it was carried again at the next change of store, long
/// after it was carried out, and brought back a secret another app had signed out of since.
#[test]
fn a_repair_carried_to_a_new_store_is_not_carried_again() {
    let env = home();
    let legacy = "[apps.code]\nlegacy = { kind = \"vault\" }\n";
    let with_service =
        |service: &str| format!("[flavors.stable]\nservice = \"{service}\"\n{legacy}");
    env.config(legacy);
    env.ok(&["--direct", "--app", "code", "set", "k"], b"v1");
    // An outage: code's write is its own, pending.
    let key_file = env.data_dir().join("stable/vault.key");
    let aside = env.path().join("vault.key.aside");
    std::fs::rename(&key_file, &aside).unwrap();
    env.ok(&["--direct", "--app", "code", "set", "k"], b"v2");
    std::fs::rename(&aside, &key_file).unwrap();
    // A new store: the write follows code there; then agents signs out.
    env.config(&with_service("com.example.second"));
    let got = env.ok(&["--direct", "--app", "code", "get", "k"], b"");
    assert_eq!(got.stdout, b"v2");
    env.ok(&["--direct", "--app", "agents", "delete", "k"], b"");
    // Another new store: nothing comes back.
    env.config(&with_service("com.example.third"));
    for app in ["code", "agents"] {
        let out = env.run(&["--direct", "--app", app, "get", "k"], b"");
        assert_eq!(out.status.code(), Some(1), "{app}: {}", stderr(&out));
    }
    // And doctor has no repair left anywhere to report.
    env.ok(&["--direct", "--app", "code", "doctor"], b"");
}
