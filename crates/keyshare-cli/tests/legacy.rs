//! `keyshare legacy list` and `keyshare import vscode` end to end, over a copy of the reference
//! sample database (tests/data in the keyshare crate), in a throwaway home with no D-Bus.

use std::path::PathBuf;

use serde_json::Value;

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../keyshare/tests/data/sample-state.vscdb"
);
/// The sample database's keyring password (reference README).
const KEYRING_PASSWORD: &str = "k8Q2Vx0mZt5bN1cR4yW7pA==";
const GITHUB: &str = r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#;

mod support;

use support::Home;

fn home() -> Home {
    Home::new().with_xdg_dirs()
}

/// What these tests need of a home besides running commands.
trait VsCode {
    /// A user-data directory holding a copy of the sample database.
    fn user_data_dir(&self) -> PathBuf;
    fn state_db(&self) -> PathBuf;
    fn ok_json(&self, args: &[&str], stdin: &[u8]) -> Value;
}

impl VsCode for Home {
    fn user_data_dir(&self) -> PathBuf {
        let dir = self.path().join("config/Code");
        let db = dir.join("User/globalStorage/state.vscdb");
        if !db.exists() {
            std::fs::create_dir_all(db.parent().unwrap()).unwrap();
            std::fs::copy(SAMPLE, &db).unwrap();
        }
        dir
    }

    fn state_db(&self) -> PathBuf {
        self.user_data_dir().join("User/globalStorage/state.vscdb")
    }

    fn ok_json(&self, args: &[&str], stdin: &[u8]) -> Value {
        serde_json::from_slice(&self.ok(args, stdin).stdout).expect("JSON on stdout")
    }
}

#[test]
fn legacy_list_decrypts_both_sample_secrets_with_the_keyring_password() {
    let env = home();
    let db = env.state_db();
    let db = db.to_str().unwrap();
    let before = std::fs::read(db).unwrap();
    let listing = env.ok_json(
        &[
            "legacy",
            "list",
            "--state-db",
            db,
            "--keyring-password-stdin",
            "--show-values",
            "--json",
        ],
        format!("{KEYRING_PASSWORD}\n").as_bytes(),
    );
    let secrets = listing["secrets"].as_array().unwrap();
    assert_eq!(secrets.len(), 2, "{listing}");
    for secret in secrets {
        assert_eq!(secret["decrypts"], true, "{secret}");
        assert_eq!(secret["value"], "hello", "{secret}");
        assert_eq!(secret["listed"], true);
    }
    let github = secrets.iter().find(|s| s["key"] == GITHUB).unwrap();
    assert_eq!(github["extension_id"], "vscode.github-authentication");
    assert_eq!(github["extension_key"], "github.auth");
    assert_eq!(github["version"], "v11");
    assert_eq!(
        std::fs::read(db).unwrap(),
        before,
        "listing wrote to the database"
    );

    // Human output, and no values without --show-values.
    let out = env.run(
        &[
            "legacy",
            "list",
            "--state-db",
            db,
            "--keyring-password-stdin",
        ],
        KEYRING_PASSWORD.as_bytes(),
    );
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("decrypts (5 bytes)").count(), 2, "{text}");
    assert!(!text.contains("hello"), "a value was printed: {text}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(KEYRING_PASSWORD),
        "the password leaked to stderr"
    );
}

#[test]
fn legacy_list_without_a_keyring_reads_v10_and_says_why_v11_fails() {
    let env = home();
    let db = env.state_db();
    let listing = env.ok_json(
        &[
            "legacy",
            "list",
            "--state-db",
            db.to_str().unwrap(),
            "--json",
        ],
        b"",
    );
    assert!(
        listing["notes"][0]
            .as_str()
            .unwrap()
            .contains("only v10 secrets can be decrypted"),
        "{listing}"
    );
    let secrets = listing["secrets"].as_array().unwrap();
    let v10 = secrets.iter().find(|s| s["version"] == "v10").unwrap();
    assert_eq!(v10["decrypts"], true);
    assert!(v10.get("value").is_none());
    let v11 = secrets.iter().find(|s| s["version"] == "v11").unwrap();
    assert_eq!(v11["decrypts"], false);
    assert!(
        v11["error"].as_str().unwrap().contains("keyring secret"),
        "{v11}"
    );

    // A wrong password is reported per row, never turned into garbage.
    let listing = env.ok_json(
        &[
            "legacy",
            "list",
            "--state-db",
            db.to_str().unwrap(),
            "--keyring-password-stdin",
            "--json",
        ],
        b"AAAAAAAAAAAAAAAAAAAAAA==",
    );
    let v11 = &listing["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["version"] == "v11")
        .unwrap()
        .clone();
    assert_eq!(v11["decrypts"], false);
    assert!(
        v11["error"].as_str().unwrap().contains("wrong key"),
        "{v11}"
    );
}

#[test]
fn import_vscode_copies_into_the_shared_store() {
    let env = home();
    let dir = env.user_data_dir();
    let dir = dir.to_str().unwrap();
    let before = std::fs::read(env.state_db()).unwrap();
    let args = [
        "--store",
        "memory",
        "--json",
        "import",
        "vscode",
        "--user-data-dir",
        dir,
        "--keyring-password-stdin",
    ];
    let report = env.ok_json(&args, KEYRING_PASSWORD.as_bytes());
    assert_eq!(report["imported"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["failed"].as_array().unwrap().is_empty());
    assert_eq!(report["dry_run"], false);

    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let report = env.ok_json(&dry, KEYRING_PASSWORD.as_bytes());
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["imported"].as_array().unwrap().len(), 2);
    assert_eq!(
        std::fs::read(env.state_db()).unwrap(),
        before,
        "importing wrote to the source"
    );
}

/// A dry run on a fresh machine creates nothing: no shared vault, no key file, no broker
/// (found by QA: it did all three), and still reports what an import would copy.
#[test]
fn a_dry_run_import_creates_no_vault_and_starts_no_broker() {
    let env = home();
    let dir = env.user_data_dir();
    let report = env.ok_json(
        &[
            "--store",
            "vault",
            "--json",
            "import",
            "vscode",
            "--user-data-dir",
            dir.to_str().unwrap(),
            "--keyring-password-stdin",
            "--dry-run",
        ],
        KEYRING_PASSWORD.as_bytes(),
    );
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["imported"].as_array().unwrap().len(), 2, "{report}");
    let shared = env.path().join("data/keyshare/stable");
    assert!(
        !shared.join("vault.db").exists() && !shared.join("vault.key").exists(),
        "the dry run created the shared vault"
    );
    assert!(
        !env.path().join("run/keyshare/stable.sock").exists(),
        "the dry run started a broker"
    );
}

#[test]
fn import_vscode_into_the_vault_is_idempotent_and_get_reads_the_key() {
    let env = home();
    let dir = env.user_data_dir();
    let args = [
        "--store",
        "vault",
        "--json",
        "import",
        "vscode",
        "--user-data-dir",
        dir.to_str().unwrap(),
        "--keyring-password-stdin",
    ];
    let first = env.ok_json(&args, KEYRING_PASSWORD.as_bytes());
    assert_eq!(first["imported"].as_array().unwrap().len(), 2, "{first}");
    let second = env.ok_json(&args, KEYRING_PASSWORD.as_bytes());
    assert!(
        second["imported"].as_array().unwrap().is_empty(),
        "{second}"
    );
    assert_eq!(second["already_present"].as_array().unwrap().len(), 2);

    // The shared-store key is the row key without `secret://`.
    let out = env.run(&["--store", "vault", "get", GITHUB], b"");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"hello");
}

/// QA s19 F2: a re-run of the import brought back a secret another app had signed out of. The
/// vault records the delete (here seen through the broker), so the import leaves it deleted and
/// says so, in the dry run too; `--restore-deleted` brings it back on request.
#[test]
fn import_vscode_leaves_a_secret_another_app_deleted_deleted() {
    let env = home();
    let dir = env.user_data_dir();
    let import = |extra: &[&str]| {
        let mut args = vec![
            "--store",
            "vault",
            "--json",
            "import",
            "vscode",
            "--user-data-dir",
            dir.to_str().unwrap(),
            "--keyring-password-stdin",
        ];
        args.extend_from_slice(extra);
        env.ok_json(&args, KEYRING_PASSWORD.as_bytes())
    };
    let first = import(&[]);
    assert_eq!(first["imported"].as_array().unwrap().len(), 2, "{first}");
    env.ok(
        &["--store", "vault", "--app", "agents", "delete", GITHUB],
        b"",
    );

    for report in [import(&["--dry-run"]), import(&[])] {
        assert!(
            report["imported"].as_array().unwrap().is_empty(),
            "{report}"
        );
        let left = report["left_deleted"].as_array().unwrap();
        assert_eq!(left.len(), 1, "{report}");
        assert_eq!(left[0]["key"], GITHUB, "{report}");
        assert!(
            left[0]["reason"]
                .as_str()
                .unwrap()
                .contains("--restore-deleted"),
            "{report}"
        );
    }
    assert_eq!(
        env.code(&["--store", "vault", "--app", "agents", "get", GITHUB]),
        1,
        "the sign-out holds"
    );
    // The text report names the key and why.
    let out = env.ok(
        &[
            "--store",
            "vault",
            "import",
            "vscode",
            "--dry-run",
            "--user-data-dir",
            dir.to_str().unwrap(),
            "--keyring-password-stdin",
        ],
        KEYRING_PASSWORD.as_bytes(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 left deleted"), "{text}");
    assert!(text.contains("left deleted: "), "{text}");

    let restored = import(&["--restore-deleted"]);
    assert_eq!(
        restored["imported"].as_array().unwrap().len(),
        1,
        "{restored}"
    );
    let out = env.ok(&["--store", "vault", "--app", "agents", "get", GITHUB], b"");
    assert_eq!(out.stdout, b"hello");
}

#[test]
fn import_vscode_fails_with_the_reason_when_a_secret_does_not_decrypt() {
    let env = home();
    let dir = env.user_data_dir();
    // With the basic key the v11 sample row cannot be read: one imported, one failed.
    let out = env.run(
        &[
            "--store",
            "memory",
            "import",
            "vscode",
            "--user-data-dir",
            dir.to_str().unwrap(),
            "--password-store",
            "basic",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("1 imported"), "{stdout}");
    assert!(
        stdout.contains("failed: {\"extensionId\":\"vscode.github-authentication\""),
        "{stdout}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("import incomplete: 1 secret(s) failed"),
        "{stderr}"
    );
}

/// Removes the sample database's one v11 row (github.auth): every row left reads with the fixed
/// v10 key, and keyshare may write with it.
fn remove_the_v11_row(env: &Home) {
    rusqlite::Connection::open(env.state_db())
        .unwrap()
        .execute(
            "DELETE FROM ItemTable WHERE key = ?1",
            [format!("secret://{GITHUB}")],
        )
        .unwrap();
}

fn basic_legacy_config(env: &Home, dir: &std::path::Path) {
    let config = env.path().join("config/keyshare/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "[apps.code]\nlegacy = {{ kind = \"electron\", app_name = \"Code\", \
             user_data_dir = {:?}, password_store = \"basic\" }}\n",
            dir.display().to_string()
        ),
    )
    .unwrap();
}

#[test]
fn a_basic_legacy_store_never_writes_where_the_app_uses_the_keyring() {
    let env = home();
    let dir = env.user_data_dir();
    basic_legacy_config(&env, &dir);
    let out = env.run(
        &["--app", "code", "--store", "vault", "set", "new.key"],
        b"tok",
    );
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("protects its secrets with the keyring"),
        "{stderr}"
    );
    // Advice a command can follow (the config's password store), not a flag no write takes.
    assert!(
        stderr.contains("Use the gnome-libsecret password store"),
        "{stderr}"
    );
    assert!(!stderr.contains("--keyring-password-stdin"), "{stderr}");
    let rows = rusqlite::Connection::open(env.state_db())
        .unwrap()
        .query_row(
            "SELECT count(*) FROM ItemTable WHERE key = 'secret://new.key'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn an_electron_legacy_store_in_the_config_is_dual_written_and_migrated_from() {
    let env = home();
    let dir = env.user_data_dir();
    // An app on password store basic has only v10 rows: the sample's v11 row (keyring-protected)
    // would make keyshare refuse to write with the fixed key.
    remove_the_v11_row(&env);
    basic_legacy_config(&env, &dir);
    let out = env.run(
        &["--app", "code", "--store", "vault", "set", "new.key"],
        b"tok",
    );
    assert!(out.status.success(), "{out:?}");
    // Read back through the app's own database, as VS Code would find it.
    let db = env.state_db();
    let listing = env.ok_json(
        &[
            "legacy",
            "list",
            "--state-db",
            db.to_str().unwrap(),
            "--password-store",
            "basic",
            "--show-values",
            "--json",
        ],
        b"",
    );
    let row = listing["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == "new.key")
        .unwrap_or_else(|| panic!("no new.key row: {listing}"))
        .clone();
    assert_eq!(row["value"], "tok");
    assert_eq!(row["listed"], true);
    assert_eq!(row["version"], "v10");
    let backups = std::fs::read_dir(db.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("state.vscdb.keyshare-backup-")
        })
        .count();
    assert_eq!(backups, 1);
    // The v10 legacy secret reaches the app through lazy migration.
    let out = env.run(
        &[
            "--app",
            "code",
            "--store",
            "vault",
            "get",
            r#"{"extensionId":"publisher.my-ext","key":"apiToken"}"#,
        ],
        b"",
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"hello");
}

#[test]
fn legacy_error_messages() {
    let env = home();
    snapshot!(
        "legacy_list_missing_db",
        env.failure(
            &["legacy", "list", "--state-db", "/nonexistent/state.vscdb"],
            b""
        )
    );
    snapshot!(
        "legacy_list_password_with_basic",
        env.failure(
            &[
                "legacy",
                "list",
                "--state-db",
                "/nonexistent/state.vscdb",
                "--password-store",
                "basic",
                "--keyring-password-stdin"
            ],
            b"pw"
        )
    );
    snapshot!(
        "legacy_list_bad_app_name",
        env.failure(&["legacy", "list", "--app-name", "../x"], b"")
    );
    snapshot!(
        "import_vscode_missing_dir",
        env.failure(
            &[
                "--store",
                "memory",
                "import",
                "vscode",
                "--app-name",
                "VSCodium",
                "--password-store",
                "basic"
            ],
            b""
        )
    );
    snapshot!(
        "import_vscode_no_secret_service",
        env.failure(
            &[
                "--store",
                "memory",
                "import",
                "vscode",
                "--user-data-dir",
                env.user_data_dir().to_str().unwrap(),
                "--password-store",
                "gnome-libsecret"
            ],
            b""
        )
    );
}

/// `import vscode` looks at the database before it asks the Secret Service (none here) for the
/// app's key: a missing database says so (exit 7), as `legacy list` does, and a damaged one is
/// corrupt (exit 4). QA #9: both reported the unreachable Secret Service (exit 3).
#[test]
fn import_vscode_reports_a_missing_or_corrupt_database_before_the_keyring() {
    let env = home();
    let dir = env.path().join("udd");
    let import = ["--store", "memory", "import", "vscode", "--user-data-dir"];
    let args = |dir: &std::path::Path| {
        let mut args = import.map(str::to_owned).to_vec();
        args.push(dir.to_str().unwrap().to_owned());
        args
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        env.run(&args, b"")
    };

    let out = run(&args(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("no such file (is the app name or user-data directory right?)"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret service"), "{stderr}");

    let db = dir.join("User/globalStorage/state.vscdb");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::write(&db, vec![0x5a_u8; 5000]).unwrap();
    let out = run(&args(&dir));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert!(!stderr.contains("secret service"), "{stderr}");
}

/// QA #3: with the default password store and no Secret Service, `import vscode` did not import
/// anything (exit 3), though `legacy list` read the v10 rows. It now imports what reads, reports
/// each v11 secret with what to do (exit 7), and exits 0 when every secret read; a dry run
/// ends the same way.
#[test]
fn import_vscode_without_a_keyring_imports_v10_and_reports_v11_secrets() {
    let env = home();
    let dir = env.user_data_dir();
    let dir = dir.to_str().unwrap();
    for dry_run in [true, false] {
        let mut args = vec![
            "--store",
            "memory",
            "import",
            "vscode",
            "--user-data-dir",
            dir,
        ];
        if dry_run {
            args.push("--dry-run");
        }
        let out = env.run(&args, b"");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{stdout}{stderr}");
        assert!(
            stdout.contains(if dry_run { "1 to import" } else { "1 imported" }),
            "{stdout}"
        );
        assert!(
            stdout.contains("note: cannot get Code's keyring secret"),
            "{stdout}"
        );
        assert!(
            stdout.contains("say so with --password-store basic"),
            "{stdout}"
        );
        let failed = stdout
            .lines()
            .find(|l| l.starts_with("failed: "))
            .unwrap_or_else(|| panic!("no failed line: {stdout}"));
        assert!(
            failed.contains("github.auth") && failed.contains("v11"),
            "{failed}"
        );
        assert!(
            failed.contains("Start or unlock the keyring")
                && failed.ends_with("--keyring-password-stdin"),
            "{failed}"
        );
        assert!(
            stderr.contains("import incomplete: 1 secret(s) failed"),
            "{stderr}"
        );
    }

    // Without the v11 row every secret reads: exit 0.
    remove_the_v11_row(&env);
    let args = [
        "--store",
        "memory",
        "--json",
        "import",
        "vscode",
        "--user-data-dir",
        dir,
    ];
    for dry_run in [true, false] {
        let mut args = args.to_vec();
        if dry_run {
            args.push("--dry-run");
        }
        let report = env.ok_json(&args, b"");
        assert_eq!(report["imported"].as_array().unwrap().len(), 1, "{report}");
        assert!(report["failed"].as_array().unwrap().is_empty(), "{report}");
        assert!(
            report["notes"][0]
                .as_str()
                .unwrap()
                .contains("--password-store basic"),
            "{report}"
        );
    }
    // Saying how the app keeps its key leaves nothing to note.
    let mut basic = args.to_vec();
    basic.extend(["--password-store", "basic"]);
    let report = env.ok_json(&basic, b"");
    assert_eq!(report["imported"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["notes"].as_array().unwrap().is_empty(), "{report}");
}

/// QA #4: a refused write to an Electron legacy store while the app runs told the user to pass
/// `--force`, which no command takes; the config's `force = true` is the way, and the message
/// says so. The same for the keyring's advice: no command that writes takes
/// `--keyring-password-stdin`, so a legacy store on the default password store without a
/// Secret Service points at the config's `password_store = "basic"`.
#[test]
fn electron_legacy_store_errors_name_the_config_setting_not_flags() {
    let env = home();
    let dir = env.user_data_dir();
    remove_the_v11_row(&env);
    let config = env.path().join("config/keyshare/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let write_config = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[apps.code]\nlegacy = {{ kind = \"electron\", app_name = \"Code\", \
                 user_data_dir = {:?}{extra} }}\n",
                dir.display().to_string()
            ),
        )
        .unwrap()
    };
    let set = |key: &str| env.run(&["--app", "code", "--store", "vault", "set", key], b"tok");

    let mut app = std::process::Command::new("/bin/sh")
        .args(["-c", "read x"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(dir.join("code.lock"), app.id().to_string()).unwrap();
    write_config(", password_store = \"basic\"");
    let out = set("k1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("Code is running"), "{stderr}");
    assert!(
        stderr.contains("set force = true in the legacy setting of [apps.code] in the config file"),
        "{stderr}"
    );
    assert!(!stderr.contains("--force"), "{stderr}");
    // What the message says works.
    write_config(", password_store = \"basic\", force = true");
    let out = set("k2");
    assert!(out.status.success(), "{out:?}");
    drop(app.stdin.take());
    app.wait().unwrap();

    // No Secret Service here, and the default password store needs it.
    write_config("");
    let out = set("k3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("--keyring-password-stdin"), "{stderr}");
    assert!(
        stderr.contains(
            "if Code runs with --password-store=basic (no keyring), set password_store = \"basic\" \
             in the legacy setting of [apps.code] in the config file"
        ),
        "{stderr}"
    );
}

/// QA #5: five `set`s left five full copies of the state database, and a token set and deleted
/// stayed in them. Within the hour, the first backup stands for the rest; only the newest three
/// are kept.
#[test]
fn writing_commands_do_not_pile_up_backups() {
    let env = home();
    let dir = env.user_data_dir();
    remove_the_v11_row(&env);
    basic_legacy_config(&env, &dir);
    let db = env.state_db();
    let backups = || -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(db.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("state.vscdb.keyshare-backup-")
            })
            .collect();
        found.sort();
        found
    };
    let run = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--app", "code", "--store", "vault"];
        all.extend(args);
        let out = env.run(&all, stdin);
        assert!(out.status.success(), "{out:?}");
    };
    for i in 1..=5 {
        run(&["set", &format!("bk{i}")], format!("x{i}").as_bytes());
    }
    assert_eq!(backups().len(), 1, "{:?}", backups());
    run(&["set", "tmp"], b"gone");
    run(&["delete", "tmp"], b"");
    let left = backups();
    assert_eq!(left.len(), 1, "{left:?}");
    let rows: i64 = rusqlite::Connection::open(&left[0])
        .unwrap()
        .query_row(
            "SELECT count(*) FROM ItemTable WHERE key = 'secret://tmp'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 0, "a deleted token is in a backup");

    // Backups older than an hour: a new one is taken, and the oldest go.
    let stamp = |hours: u64| {
        keyshare::store::electron::utc_stamp(
            std::time::SystemTime::now() - std::time::Duration::from_secs(hours * 3600),
        )
    };
    std::fs::remove_file(&left[0]).unwrap();
    let old: Vec<PathBuf> = (2..=5)
        .rev()
        .map(|hours| {
            let old = db.with_file_name(format!("state.vscdb.keyshare-backup-{}", stamp(hours)));
            std::fs::copy(&db, &old).unwrap();
            old
        })
        .collect();
    run(&["set", "bk6"], b"x6");
    let left = backups();
    assert_eq!(left.len(), 3, "{left:?}");
    assert_eq!(left[..2], old[2..], "the newest old ones are kept");
}

/// A copy of the sample database (its v11 row removed: password store basic) as the state
/// database of product `name` (`Code`, `Code - Insiders`) under the home's config directory;
/// its user-data directory.
fn product_dir(env: &Home, name: &str) -> PathBuf {
    let dir = env.path().join("config").join(name);
    let db = dir.join("User/globalStorage/state.vscdb");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(SAMPLE, &db).unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "DELETE FROM ItemTable WHERE key = ?1",
            [format!("secret://{GITHUB}")],
        )
        .unwrap();
    dir
}

/// Whether the state database under `dir` holds a row for `key`.
fn has_row(dir: &std::path::Path, key: &str) -> bool {
    rusqlite::Connection::open(dir.join("User/globalStorage/state.vscdb"))
        .unwrap()
        .query_row(
            "SELECT count(*) FROM ItemTable WHERE key = ?1",
            [format!("secret://{key}")],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
        > 0
}

const API_TOKEN: &str = r#"{"extensionId":"publisher.my-ext","key":"apiToken"}"#;

/// QA s19 F3: stable VS Code's database (`app_name = "Code"`), configured as app code's
/// legacy store, was read and written by `--flavor insiders` commands: its token was copied
/// into the insiders shared store and insiders values were written into stable's database.
/// It belongs to the stable flavour: an insiders command leaves it alone and says so.
#[test]
fn an_electron_legacy_store_serves_only_the_flavour_its_app_name_implies() {
    let env = home();
    let stable = product_dir(&env, "Code");
    env.config(&format!(
        "[apps.code]\nlegacy = {{ kind = \"electron\", app_name = \"Code\", user_data_dir = \
         {:?}, password_store = \"basic\" }}\n",
        stable.display().to_string()
    ));
    let insiders = |args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--flavor", "insiders", "--app", "code", "--store", "vault"];
        all.extend(args);
        env.run(&all, stdin)
    };
    let out = insiders(&["get", API_TOKEN], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "read stable's database: {out:?}"
    );
    assert!(
        stderr.contains(
            "app code's legacy store (Code's state database, which belongs to the stable \
             flavour) is not used by this insiders command"
        ),
        "{stderr}"
    );
    let out = insiders(&["set", "insiders.key"], b"INSIDERS");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !has_row(&stable, "insiders.key"),
        "an insiders value was written into stable's database"
    );
    // Nothing of stable's reached the insiders shared store, for any app.
    let out = env.run(
        &["--flavor", "insiders", "--store", "vault", "get", API_TOKEN],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // doctor says it too, as a note (nothing fails), with the store shown as none.
    let out = insiders(&["doctor"], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("legacy store:  none"), "{stdout}");
    assert!(
        stdout.contains("note: app code's legacy store (Code's state database"),
        "{stdout}"
    );
    // Stable, whose database it is, still uses it.
    let out = env.ok(
        &["--app", "code", "--store", "vault", "get", API_TOKEN],
        b"",
    );
    assert_eq!(out.stdout, b"hello");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{out:?}"
    );
}

/// One app, one store per flavour: stable VS Code's and Insiders's databases, each used by
/// its own flavour only; `flavor` says which flavour a database belongs to when its name does
/// not.
#[test]
fn an_app_may_list_one_electron_legacy_store_per_flavour() {
    let env = home();
    let stable = product_dir(&env, "Code");
    let insiders = product_dir(&env, "Code - Insiders");
    let cursor = product_dir(&env, "Cursor");
    env.config(&format!(
        "[[apps.code.legacy]]\nkind = \"electron\"\napp_name = \"Code\"\nuser_data_dir = {:?}\n\
         password_store = \"basic\"\n\
         [[apps.code.legacy]]\nkind = \"electron\"\napp_name = \"Code - Insiders\"\n\
         user_data_dir = {:?}\npassword_store = \"basic\"\n\
         [apps.cursor]\nlegacy = {{ kind = \"electron\", app_name = \"Cursor\", user_data_dir = \
         {:?}, password_store = \"basic\", flavor = \"insiders\" }}\n",
        stable.display().to_string(),
        insiders.display().to_string(),
        cursor.display().to_string()
    ));
    for (flavour, app, dir, other) in [
        ("stable", "code", &stable, Some(&insiders)),
        ("insiders", "code", &insiders, Some(&stable)),
        ("insiders", "cursor", &cursor, None),
    ] {
        let key = format!("{flavour}.{app}.key");
        let args = ["--flavor", flavour, "--app", app, "--store", "vault"];
        let out = env.run(&[&args[..], &["set", &key]].concat(), b"v");
        assert!(out.status.success(), "{flavour} {app}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("warning"), "{flavour} {app}: {stderr}");
        assert!(has_row(dir, &key), "{flavour} {app}: not in its database");
        if let Some(other) = other {
            assert!(
                !has_row(other, &key),
                "{flavour} {app}: in the other database"
            );
        }
    }
    // Cursor's database belongs to insiders, as its `flavor` says: stable leaves it alone.
    let out = env.run(
        &[
            "--app",
            "cursor",
            "--store",
            "vault",
            "set",
            "stable.cursor.key",
        ],
        b"v",
    );
    assert!(out.status.success(), "{out:?}");
    assert!(!has_row(&cursor, "stable.cursor.key"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not used by this stable command"),
        "{out:?}"
    );
}

/// QA s19 F3: `--flavor insiders import vscode` read stable VS Code's database by default.
/// Without `--app-name` it reads the flavour's own VS Code; another flavour's, named on
/// purpose, is read with a warning.
#[test]
fn import_vscode_defaults_to_the_flavours_own_vscode() {
    let env = home();
    product_dir(&env, "Code - Insiders");
    let import = |extra: &[&str]| {
        let mut args = vec![
            "--flavor",
            "insiders",
            "--store",
            "memory",
            "--json",
            "import",
            "vscode",
            "--password-store",
            "basic",
        ];
        args.extend(extra);
        env.run(&args, b"")
    };
    let out = import(&[]);
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["imported"].as_array().unwrap().len(), 1, "{report}");
    assert!(
        out.stderr.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stable's is not there: naming it fails on its missing database, after the warning.
    let out = import(&["--app-name", "Code"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: importing the secrets of Code, a stable build, into the insiders flavour's \
             shared store"
        ),
        "{stderr}"
    );
    // Stable's default stays `Code`.
    let out = env.run(
        &[
            "--store",
            "memory",
            "import",
            "vscode",
            "--password-store",
            "basic",
        ],
        b"",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("config/Code/User"), "{stderr}");
}

/// QA s19 F4: a state database whose key index is damaged (rows still read, `quick_check`
/// passes) was read as "not found" and written to (a second row for the key). Every command
/// now refuses it (exit 4, naming the file, saying it is left untouched), and `doctor` names it
/// as the legacy store instead of "legacy store: none".
#[test]
fn a_state_database_with_a_damaged_index_is_reported_and_never_written() {
    let env = home();
    let dir = env.user_data_dir();
    let db = env.state_db();
    let mut bytes = std::fs::read(&db).unwrap();
    let needle = br#""key":"github.auth""#;
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == needle)
        .unwrap();
    bytes[at + 7] = b'G';
    std::fs::write(&db, &bytes).unwrap();
    basic_legacy_config(&env, &dir);

    for (args, stdin) in [
        (
            &["--store", "memory", "--app", "code", "get", GITHUB][..],
            &b""[..],
        ),
        (
            &["--store", "memory", "--app", "code", "set", GITHUB],
            b"new",
        ),
        (
            &["--store", "memory", "--app", "code", "delete", GITHUB],
            b"",
        ),
    ] {
        let out = env.run(args, stdin);
        assert_eq!(out.status.code(), Some(4), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&db.display().to_string()), "{stderr}");
        assert!(stderr.contains("left untouched"), "{stderr}");
    }
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the file was not changed"
    );

    let out = env.run(&["--store", "memory", "--app", "code", "doctor"], b"");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("legacy store:  none"), "{stdout}");
    assert!(
        stdout.contains(&format!("legacy store:  electron at {}", db.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains("problem: cannot open the legacy store"),
        "{stdout}"
    );
}

/// QA s19 F9: `keyshare --app code legacy list` ignored the app's configured legacy store
/// (`user_data_dir` under `[apps.code]`) and looked in ~/.config/Code (no such file, exit 7).
/// The sample lives elsewhere here, so only the configured directory finds it.
#[test]
fn legacy_list_for_an_app_reads_its_configured_database() {
    let env = home();
    let elsewhere = env.path().join("elsewhere/Code");
    let db = elsewhere.join("User/globalStorage/state.vscdb");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(SAMPLE, &db).unwrap();
    basic_legacy_config(&env, &elsewhere);

    let report = env.ok_json(&["--app", "code", "--json", "legacy", "list"], b"");
    assert_eq!(report["state_db"], db.display().to_string(), "{report}");
    // password_store = "basic" came from the config too: the v10 row reads, without a keyring.
    let rows = report["secrets"].as_array().expect("secrets");
    assert_eq!(rows.len(), 2, "{report}");
    // An app without a configured Electron store keeps the default directory (none here).
    let out = env.run(&["--app", "agents", "legacy", "list"], b"");
    assert_eq!(out.status.code(), Some(7), "{out:?}");
}

/// `legacy list` under insiders reads the insiders VS Code's database, as `import vscode` does
/// (found by QA: it read stable's, and `--show-values` printed stable's token).
#[test]
fn legacy_list_defaults_to_the_flavours_own_vscode() {
    let env = home();
    product_dir(&env, "Code");
    let list = |flavour: &str| {
        env.run(
            &[
                "--flavor",
                flavour,
                "legacy",
                "list",
                "--password-store",
                "basic",
            ],
            b"",
        )
    };
    assert!(list("stable").status.success());
    let out = list("insiders");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "read another flavour's database: {out:?}"
    );
    assert!(stderr.contains("config/Code - Insiders/User"), "{stderr}");
    product_dir(&env, "Code - Insiders");
    assert!(list("insiders").status.success());
}

/// QA s20 #11: the help said `[default: Code]` for `--app-name` and `[default: stable]` for
/// `--flavor`, but the defaults are computed: the flavour's own VS Code, and the config file's
/// `default_flavor`. The help says so, and the flavour's default is what a command takes.
#[test]
fn help_gives_the_computed_defaults() {
    let env = home();
    for args in [
        &["import", "vscode", "--help"][..],
        &["legacy", "list", "--help"],
    ] {
        let help = String::from_utf8(env.ok(args, b"").stdout).unwrap();
        assert!(!help.contains("[default: Code]"), "{args:?}: {help}");
        assert!(!help.contains("[default: stable]"), "{args:?}: {help}");
        assert!(
            help.contains("`Code` or `Code - Insiders` under insiders"),
            "{args:?}: {help}"
        );
        assert!(
            help.contains("[default: the config file's `default_flavor`, else stable]"),
            "{args:?}: {help}"
        );
    }
    // With a directory but no `--app-name`, insiders means its own VS Code (the app name
    // decides the keyring item the key is read from).
    let dir = product_dir(&env, "Code - Insiders");
    let report = env.ok_json(
        &[
            "--flavor",
            "insiders",
            "--json",
            "legacy",
            "list",
            "--user-data-dir",
            dir.to_str().unwrap(),
            "--password-store",
            "basic",
        ],
        b"",
    );
    assert_eq!(report["app_name"], "Code - Insiders", "{report}");
}
