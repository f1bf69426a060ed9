//! Bad input to `keyshare git-credential` and `docker-credential-keyshare`: each gets a clear
//! error (a snapshot of the exit code, stdout and stderr, the temporary directory replaced by
//! `[HOME]`), never echoes a secret, and changes nothing in the store.

mod support;

use support::Home;

/// A home whose commands use the vault.
fn home() -> Home {
    Home::new().with_store("vault")
}

/// How these tests look at a failed call and at the store.
trait Helpers {
    /// Exit code, stdout and stderr of a failing call, for a snapshot; the secret in the
    /// input must appear in none of them.
    fn failure_with_stdout(&self, args: &[&str], stdin: &[u8]) -> String;
    /// What the store holds, values included, to show that a failed call changed nothing.
    fn state(&self) -> Vec<(String, Vec<u8>)>;
}

impl Helpers for Home {
    fn failure_with_stdout(&self, args: &[&str], stdin: &[u8]) -> String {
        let out = self.run(args, stdin);
        assert!(!out.status.success(), "expected failure for {args:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for secret in ["hunter2", "tok3n"] {
            assert!(
                !stdout.contains(secret) && !stderr.contains(secret),
                "secret echoed: {stdout}{stderr}"
            );
        }
        self.redact(&format!(
            "exit {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            out.status.code().unwrap_or(-1)
        ))
    }

    fn state(&self) -> Vec<(String, Vec<u8>)> {
        let keys = self.ok(&["list"], b"").stdout;
        String::from_utf8(keys)
            .unwrap()
            .lines()
            .map(|k| (k.to_owned(), self.ok(&["get", k], b"").stdout))
            .collect()
    }
}

const GIT_OK: &[u8] = b"protocol=https\nhost=h.example\nusername=u\npassword=original\n";

#[test]
fn git_credential_bad_input() {
    let env = home();
    env.ok(&["git-credential", "store"], GIT_OK);
    let before = env.state();
    let store = &["git-credential", "store"][..];
    let long = format!(
        "protocol=https\nhost=h.example\nusername=u\npassword=hunter2{}\n",
        "x".repeat(65_536)
    );
    snapshot!(
        "git_oversized_line",
        env.failure_with_stdout(store, long.as_bytes())
    );
    snapshot!(
        "git_nul_byte",
        env.failure_with_stdout(
            store,
            b"protocol=https\nhost=h.example\nusername=u\npassword=hunt\0er2\n"
        )
    );
    snapshot!(
        "git_not_key_value",
        env.failure_with_stdout(
            store,
            b"protocol=https\nhost=h.example\nusername=u\nhunter2\n"
        )
    );
    snapshot!(
        "git_invalid_utf8",
        env.failure_with_stdout(
            store,
            b"protocol=https\nhost=h.example\nusername=u\npassword=\xffhunter2\n"
        )
    );
    snapshot!(
        "git_bad_expiry",
        env.failure_with_stdout(
            store,
            b"protocol=https\nhost=h.example\nusername=u\npassword=hunter2\npassword_expiry_utc=tomorrow\n"
        )
    );
    snapshot!(
        "git_missing_protocol",
        env.failure_with_stdout(store, b"host=h.example\nusername=u\npassword=hunter2\n")
    );
    snapshot!(
        "git_missing_host",
        env.failure_with_stdout(store, b"protocol=https\nusername=u\npassword=hunter2\n")
    );
    snapshot!(
        "git_erase_oversized",
        env.failure_with_stdout(&["git-credential", "erase"], long.as_bytes())
    );
    snapshot!(
        "git_get_missing_host",
        env.failure_with_stdout(&["git-credential", "get"], b"protocol=https\n")
    );
    assert_eq!(env.state(), before, "a rejected request changed the store");
}

/// A `store` without a username or a password stores nothing and says nothing, with success,
/// as git's own helpers do (git shows a helper's stderr; it used to show an error here). The
/// store is not even opened: opening it may print (a new vault) or fail.
#[test]
fn git_credential_store_without_username_or_password_is_ignored_silently() {
    let fresh = home();
    let incomplete: [&[u8]; 3] = [
        b"protocol=https\nhost=h.example\npassword=hunter2\n",
        b"protocol=https\nhost=h.example\nusername=u\n",
        b"capability[]=authtype\nprotocol=https\nhost=h.example\nauthtype=Bearer\n\
          credential=tok3n\n",
    ];
    for input in incomplete {
        let out = fresh.run(&["git-credential", "store"], input);
        assert_eq!(
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            (Some(0), "".into(), "".into()),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    assert!(
        !fresh.data_dir().exists(),
        "the store was opened (a vault created) for nothing to store"
    );

    let env = home();
    env.ok(&["git-credential", "store"], GIT_OK);
    let before = env.state();
    for input in incomplete {
        env.ok(&["git-credential", "store"], input);
    }
    assert_eq!(env.state(), before);
}

#[test]
fn git_credential_corrupt_stored_value_is_reported_and_kept() {
    let env = home();
    env.ok(
        &["set", "git:https://u@h.example"],
        br#"{"v":1,"password":"hunter2""#,
    );
    let before = env.state();
    snapshot!(
        "git_corrupt_stored",
        env.failure_with_stdout(
            &["git-credential", "get"],
            b"protocol=https\nhost=h.example\n"
        )
    );
    snapshot!(
        "git_corrupt_erase",
        env.failure_with_stdout(
            &["git-credential", "erase"],
            b"protocol=https\nhost=h.example\n"
        )
    );
    assert_eq!(env.state(), before);
}

#[test]
fn docker_credential_bad_input() {
    let env = home();
    let docker = |verb: &'static str| ["docker-credential", verb];
    env.ok(
        &docker("store"),
        br#"{"ServerURL":"r.example","Username":"u","Secret":"original"}"#,
    );
    let before = env.state();
    snapshot!(
        "docker_malformed_json",
        env.failure_with_stdout(
            &docker("store"),
            br#"{"ServerURL":"r.example","Username":"u","Secret":"hunter2""#
        )
    );
    snapshot!(
        "docker_wrong_type",
        env.failure_with_stdout(
            &docker("store"),
            br#"{"ServerURL":"r.example","Username":"u","Secret":["hunter2"]}"#
        )
    );
    snapshot!(
        "docker_missing_secret",
        env.failure_with_stdout(
            &docker("store"),
            br#"{"ServerURL":"r.example","Username":"u"}"#
        )
    );
    snapshot!(
        "docker_missing_server_url",
        env.failure_with_stdout(&docker("store"), br#"{"Username":"u","Secret":"hunter2"}"#)
    );
    snapshot!(
        "docker_missing_username",
        env.failure_with_stdout(
            &docker("store"),
            br#"{"ServerURL":"r.example","Secret":"hunter2"}"#
        )
    );
    snapshot!(
        "docker_duplicate_field",
        env.failure_with_stdout(
            &docker("store"),
            br#"{"ServerURL":"r.example","Username":"u","Secret":"hunter2","secret":"tok3n"}"#
        )
    );
    snapshot!(
        "docker_nul_byte",
        env.failure_with_stdout(
            &docker("store"),
            b"{\"ServerURL\":\"r.example\",\"Username\":\"u\",\"Secret\":\"hun\0ter2\"}"
        )
    );
    let big = format!(
        r#"{{"ServerURL":"r.example","Username":"u","Secret":"hunter2{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    snapshot!(
        "docker_oversized",
        env.failure_with_stdout(&docker("store"), big.as_bytes())
    );
    snapshot!(
        "docker_get_empty",
        env.failure_with_stdout(&docker("get"), b"\n")
    );
    snapshot!(
        "docker_erase_two_lines",
        env.failure_with_stdout(&docker("erase"), b"r.example\nother\n")
    );
    snapshot!(
        "docker_not_found",
        env.failure_with_stdout(&docker("get"), b"nothing.example")
    );
    snapshot!(
        "docker_unknown_verb",
        env.failure_with_stdout(&docker("frobnicate"), b"")
    );
    snapshot!(
        "docker_no_verb",
        env.failure_with_stdout(&["docker-credential"], b"")
    );
    snapshot!(
        "docker_two_verbs",
        env.failure_with_stdout(&["docker-credential", "get", "extra"], b"r.example")
    );
    assert_eq!(env.state(), before, "a rejected request changed the store");
}

/// docker's own wordings are printed exactly (docker matches some of them); every other error
/// is keyshare's and says so with `keyshare: `, as the README promises (found by QA: malformed
/// JSON and a field given twice came without it).
#[test]
fn docker_errors_are_docker_wordings_or_say_they_are_keyshare_s() {
    let env = home();
    // The vault, created first: its creation is a warning on stderr.
    env.ok(
        &["docker-credential", "store"],
        br#"{"ServerURL":"r.example","Username":"u","Secret":"original"}"#,
    );
    let stdout_of = |args: &[&str], stdin: &[u8]| {
        let out = env.run(args, stdin);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: nothing on stderr");
        String::from_utf8(out.stdout).unwrap()
    };
    let store = ["docker-credential", "store"];
    for (args, stdin, line) in [
        (
            &store[..],
            &br#"{"Username":"u","Secret":"s"}"#[..],
            "no credentials server URL",
        ),
        (
            &store,
            br#"{"ServerURL":"r","Secret":"s"}"#,
            "no credentials username",
        ),
        (
            &["docker-credential", "get"],
            b"x.example",
            "credentials not found in native keychain",
        ),
        (
            &["docker-credential", "bogus"],
            b"",
            "Unknown credential action `bogus`",
        ),
        (
            &["docker-credential"],
            b"",
            "Usage: docker-credential-keyshare <store|get|erase|list|version>",
        ),
    ] {
        assert_eq!(stdout_of(args, stdin), format!("{line}\n"), "{args:?}");
    }
    for stdin in [
        &b"not json"[..],
        br#"{"ServerURL":"r","Username":"u","Secret":"s","secret":"t"}"#,
        br#"{"ServerURL":"r","Username":"u"}"#,
        b"{\"ServerURL\":\"r\",\"Username\":\"u\",\"Secret\":\"s\0\"}",
    ] {
        let line = stdout_of(&store, stdin);
        assert!(
            line.starts_with("keyshare: invalid docker credential input: ")
                && line.lines().count() == 1,
            "{line}"
        );
    }
}

/// One corrupt entry no longer hides the good ones: docker `list` lists the others and git
/// `get` for a host answers with another user's good credential, each warning on stderr about
/// the entry it skipped, which is left untouched (found by QA: both failed with exit 4).
#[test]
fn a_corrupt_entry_does_not_hide_the_good_ones() {
    let env = home();
    env.ok(
        &["docker-credential", "store"],
        br#"{"ServerURL":"a.io","Username":"u","Secret":"tok3n"}"#,
    );
    env.ok(&["set", "docker:leak.io"], b"junk");
    let out = env.ok(&["docker-credential", "list"], b"");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, serde_json::json!({"a.io": "u"}));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped \"docker:leak.io\", left untouched"),
        "{stderr}"
    );

    env.ok(
        &["git-credential", "store"],
        b"protocol=https\nhost=h.io\nusername=v\npassword=good\n",
    );
    env.ok(&["set", "git:https://u@h.io"], b"junk");
    let out = env.ok(&["git-credential", "get"], b"protocol=https\nhost=h.io\n");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("username=v\n") && answer.contains("password=good\n"),
        "{answer}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipped \"git:https://u@h.io\", left untouched"),
        "{stderr}"
    );
    assert_eq!(env.ok(&["get", "git:https://u@h.io"], b"").stdout, b"junk");
    assert_eq!(env.ok(&["get", "docker:leak.io"], b"").stdout, b"junk");
}
