//! Bad input to `keyshare git-credential` and `docker-credential-keyshare`: each gets a clear
//! error (a snapshot of the exit code, stdout and stderr, the temporary directory replaced by
//! `[HOME]`), never echoes a secret, and changes nothing in the store.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        Env { dir }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str], stdin: &[u8]) -> Output {
        Command::cargo_bin("keyshare")
            .unwrap()
            .env_clear()
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join("config"))
            .env("XDG_DATA_HOME", self.home().join("data"))
            .env("XDG_RUNTIME_DIR", self.home().join("run"))
            .args(["--store", "vault"])
            .args(args)
            .write_stdin(stdin.to_vec())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str], stdin: &[u8]) -> Output {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Exit code, stdout and stderr of a failing call, for a snapshot; the secret in the
    /// input must appear in none of them.
    fn failure(&self, args: &[&str], stdin: &[u8]) -> String {
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
        format!(
            "exit {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            out.status.code().unwrap_or(-1)
        )
        .replace(&self.home().display().to_string(), "[HOME]")
    }

    /// What the store holds, values included, to show that a failed call changed nothing.
    fn state(&self) -> Vec<(String, Vec<u8>)> {
        let keys = self.ok(&["list"], b"").stdout;
        String::from_utf8(keys)
            .unwrap()
            .lines()
            .map(|k| (k.to_owned(), self.ok(&["get", k], b"").stdout))
            .collect()
    }
}

macro_rules! snapshot {
    ($name:literal, $value:expr) => {
        insta::with_settings!({ prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}

const GIT_OK: &[u8] = b"protocol=https\nhost=h.example\nusername=u\npassword=original\n";

#[test]
fn git_credential_bad_input() {
    let env = Env::new();
    env.ok(&["git-credential", "store"], GIT_OK);
    let before = env.state();
    let store = &["git-credential", "store"][..];
    let long = format!(
        "protocol=https\nhost=h.example\nusername=u\npassword=hunter2{}\n",
        "x".repeat(65_536)
    );
    snapshot!("git_oversized_line", env.failure(store, long.as_bytes()));
    snapshot!(
        "git_nul_byte",
        env.failure(
            store,
            b"protocol=https\nhost=h.example\nusername=u\npassword=hunt\0er2\n"
        )
    );
    snapshot!(
        "git_not_key_value",
        env.failure(
            store,
            b"protocol=https\nhost=h.example\nusername=u\nhunter2\n"
        )
    );
    snapshot!(
        "git_invalid_utf8",
        env.failure(
            store,
            b"protocol=https\nhost=h.example\nusername=u\npassword=\xffhunter2\n"
        )
    );
    snapshot!(
        "git_bad_expiry",
        env.failure(
            store,
            b"protocol=https\nhost=h.example\nusername=u\npassword=hunter2\npassword_expiry_utc=tomorrow\n"
        )
    );
    snapshot!(
        "git_missing_protocol",
        env.failure(store, b"host=h.example\nusername=u\npassword=hunter2\n")
    );
    snapshot!(
        "git_missing_host",
        env.failure(store, b"protocol=https\nusername=u\npassword=hunter2\n")
    );
    snapshot!(
        "git_missing_username",
        env.failure(store, b"protocol=https\nhost=h.example\npassword=hunter2\n")
    );
    snapshot!(
        "git_missing_password",
        env.failure(store, b"protocol=https\nhost=h.example\nusername=u\n")
    );
    snapshot!(
        "git_erase_oversized",
        env.failure(&["git-credential", "erase"], long.as_bytes())
    );
    snapshot!(
        "git_get_missing_host",
        env.failure(&["git-credential", "get"], b"protocol=https\n")
    );
    assert_eq!(env.state(), before, "a rejected request changed the store");
}

#[test]
fn git_credential_corrupt_stored_value_is_reported_and_kept() {
    let env = Env::new();
    env.ok(
        &["set", "git:https://u@h.example"],
        br#"{"v":1,"password":"hunter2""#,
    );
    let before = env.state();
    snapshot!(
        "git_corrupt_stored",
        env.failure(
            &["git-credential", "get"],
            b"protocol=https\nhost=h.example\n"
        )
    );
    snapshot!(
        "git_corrupt_erase",
        env.failure(
            &["git-credential", "erase"],
            b"protocol=https\nhost=h.example\n"
        )
    );
    assert_eq!(env.state(), before);
}

#[test]
fn docker_credential_bad_input() {
    let env = Env::new();
    let docker = |verb: &'static str| ["docker-credential", verb];
    env.ok(
        &docker("store"),
        br#"{"ServerURL":"r.example","Username":"u","Secret":"original"}"#,
    );
    let before = env.state();
    snapshot!(
        "docker_malformed_json",
        env.failure(
            &docker("store"),
            br#"{"ServerURL":"r.example","Username":"u","Secret":"hunter2""#
        )
    );
    snapshot!(
        "docker_wrong_type",
        env.failure(
            &docker("store"),
            br#"{"ServerURL":"r.example","Username":"u","Secret":["hunter2"]}"#
        )
    );
    snapshot!(
        "docker_missing_secret",
        env.failure(
            &docker("store"),
            br#"{"ServerURL":"r.example","Username":"u"}"#
        )
    );
    snapshot!(
        "docker_missing_server_url",
        env.failure(&docker("store"), br#"{"Username":"u","Secret":"hunter2"}"#)
    );
    snapshot!(
        "docker_missing_username",
        env.failure(
            &docker("store"),
            br#"{"ServerURL":"r.example","Secret":"hunter2"}"#
        )
    );
    snapshot!(
        "docker_nul_byte",
        env.failure(
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
        env.failure(&docker("store"), big.as_bytes())
    );
    snapshot!("docker_get_empty", env.failure(&docker("get"), b"\n"));
    snapshot!(
        "docker_erase_two_lines",
        env.failure(&docker("erase"), b"r.example\nother\n")
    );
    snapshot!(
        "docker_not_found",
        env.failure(&docker("get"), b"nothing.example")
    );
    snapshot!(
        "docker_unknown_verb",
        env.failure(&docker("frobnicate"), b"")
    );
    snapshot!("docker_no_verb", env.failure(&["docker-credential"], b""));
    snapshot!(
        "docker_two_verbs",
        env.failure(&["docker-credential", "get", "extra"], b"r.example")
    );
    assert_eq!(env.state(), before, "a rejected request changed the store");
}
