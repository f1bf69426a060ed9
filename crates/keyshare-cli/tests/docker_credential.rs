//! `docker-credential-keyshare` driven exactly as the docker CLI drives a credential helper
//! (docker-credential-helpers' `client` package): the program is found on PATH by name, the
//! verb is its only argument, the payload is on stdin (`store`: the JSON document plus a
//! newline; `get`/`erase`: the bare server URL; `list`: the word "unused"), the answer is read
//! from stdout, and any non-zero exit is an error whose stdout line docker matches against the
//! canonical messages. The shared store is the embedded vault (config file), in a throwaway
//! HOME.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const KEYSHARE: &str = env!("CARGO_BIN_EXE_keyshare");
const NOT_FOUND: &str = "credentials not found in native keychain\n";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // The documented installation: a link named docker-credential-keyshare on PATH.
        std::os::unix::fs::symlink(KEYSHARE, bin.join("docker-credential-keyshare")).unwrap();
        let config = dir.path().join("config/keyshare/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "store = \"vault\"\n").unwrap();
        Env { dir }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self) -> std::ffi::OsString {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        std::env::join_paths(
            std::iter::once(self.home().join("bin")).chain(std::env::split_paths(&inherited)),
        )
        .unwrap()
    }

    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("HOME", self.home())
            .env("PATH", self.path())
            .env("XDG_CONFIG_HOME", self.home().join("config"))
            .env("XDG_DATA_HOME", self.home().join("data"))
            .env("XDG_RUNTIME_DIR", self.home().join("run"));
        cmd
    }

    /// One helper call, as docker makes it.
    fn helper(&self, verb: &str, stdin: &[u8]) -> Output {
        let mut child = self
            .command("docker-credential-keyshare")
            .arg(verb)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let written = child.stdin.take().unwrap().write_all(stdin);
        if let Err(err) = written {
            assert_eq!(err.kind(), std::io::ErrorKind::BrokenPipe, "{err}");
        }
        child.wait_with_output().unwrap()
    }

    fn keyshare_list(&self) -> Vec<String> {
        let out = self.command(KEYSHARE).arg("list").output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).lines().map(str::to_owned).collect()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

fn store_payload(url: &str, user: &str, secret: &str) -> Vec<u8> {
    // docker's json.Encoder output: the document and a newline.
    let mut payload = serde_json::to_vec(&serde_json::json!({
        "ServerURL": url, "Username": user, "Secret": secret
    }))
    .unwrap();
    payload.push(b'\n');
    payload
}

#[test]
fn version() {
    let env = Env::new();
    let out = ok(env.helper("version", b""));
    assert_eq!(
        text(&out.stdout),
        format!(
            "docker-credential-keyshare (keyshare) {}\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn store_get_list_erase_as_docker_does() {
    let env = Env::new();
    let hub = "https://index.docker.io/v1/";
    let ghcr = "ghcr.io";

    let missing = env.helper("get", hub.as_bytes());
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(text(&missing.stdout), NOT_FOUND);

    ok(env.helper("store", &store_payload(hub, "alice", "hub-token")));
    ok(env.helper("store", &store_payload(ghcr, "bob", "first")));
    // Storing again replaces.
    ok(env.helper("store", &store_payload(ghcr, "bob", "gh\"token\\2")));

    let got = ok(env.helper("get", ghcr.as_bytes()));
    let doc: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(
        doc,
        serde_json::json!({"ServerURL": ghcr, "Username": "bob", "Secret": "gh\"token\\2"})
    );

    let listed = ok(env.helper("list", b"unused"));
    let map: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(map, serde_json::json!({hub: "alice", ghcr: "bob"}));
    let mut keys = env.keyshare_list();
    keys.sort();
    assert_eq!(keys, [format!("docker:{ghcr}"), format!("docker:{hub}")]);

    ok(env.helper("erase", ghcr.as_bytes()));
    let gone = env.helper("get", ghcr.as_bytes());
    assert_eq!(
        (gone.status.code(), text(&gone.stdout)),
        (Some(1), NOT_FOUND.to_owned())
    );
    // Erasing what is not there succeeds, silently, as docker's Linux helpers do: `docker
    // logout` keeps its config.json entry when the helper's erase fails.
    let again = ok(env.helper("erase", ghcr.as_bytes()));
    assert_eq!(
        (text(&again.stdout), text(&again.stderr)),
        (String::new(), String::new())
    );
    // The other one is untouched.
    let hub_doc: serde_json::Value =
        serde_json::from_slice(&ok(env.helper("get", hub.as_bytes())).stdout).unwrap();
    assert_eq!(hub_doc["Secret"], "hub-token");
    let listed = ok(env.helper("list", b"unused"));
    assert_eq!(text(&listed.stdout), format!("{{\"{hub}\":\"alice\"}}\n"));
}

/// docker decodes a store payload with Go's encoding/json, which matches field names without
/// regard to case, and clients that imitate it send them in other cases; keyshare refused
/// those as having no server URL.
#[test]
fn store_field_names_in_any_case_as_go_reads_them() {
    let env = Env::new();
    ok(env.helper(
        "store",
        b"{\"serverurl\":\"r.example\",\"USERNAME\":\"u\",\"secret\":\"tok\"}\n",
    ));
    let got = ok(env.helper("get", b"r.example"));
    assert_eq!(
        text(&got.stdout),
        "{\"ServerURL\":\"r.example\",\"Username\":\"u\",\"Secret\":\"tok\"}\n"
    );
}

/// `docker logout` erases several spellings of the registry's address and removes its own
/// config.json entry only once the helper's erase succeeds; keyshare failed an erase of
/// nothing with `credentials not found in native keychain`, where the reference helpers on
/// Linux (secretservice, pass) succeed.
#[test]
fn erasing_a_server_with_nothing_stored_succeeds() {
    let env = Env::new();
    ok(env.helper("store", &store_payload("kept.example", "u", "s")));
    for url in [
        "gone.example",
        "https://gone.example",
        "http://gone.example",
    ] {
        let out = ok(env.helper("erase", url.as_bytes()));
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
    assert_eq!(env.keyshare_list(), ["docker:kept.example"]);
}

#[test]
fn docker_s_canonical_error_lines() {
    let env = Env::new();
    // docker maps these two stdout lines to its own typed errors.
    let out = env.helper("get", b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout)),
        (Some(2), "no credentials server URL\n".to_owned())
    );
    let out = env.helper(
        "store",
        br#"{"ServerURL":"r.example","Username":"","Secret":"s"}"#,
    );
    assert_eq!(text(&out.stdout), "no credentials username\n");
    assert!(env.keyshare_list().is_empty());
}

/// docker passes a helper's stderr to the user's terminal and reads its errors from stdout,
/// where the reference helpers write them, and only there. QA: keyshare also wrote
/// "keyshare: error: credentials not found in native keychain" to stderr, so every `docker
/// pull` from a registry without a login, and every first `docker login`, showed it.
#[test]
fn errors_go_to_stdout_only() {
    let env = Env::new();
    // The first call creates the vault, and says so on stderr (documented): not under test.
    ok(env.helper("store", &store_payload("kept.example", "u", "s")));
    let out = env.helper("get", b"nothing.example\n");
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(1), NOT_FOUND.to_owned(), String::new())
    );
    // An input error and a failure of keyshare's own: the same, one line each.
    let out = env.helper("erase", b"");
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (
            Some(2),
            "no credentials server URL\n".to_owned(),
            String::new()
        )
    );
    std::fs::write(
        env.home().join("config/keyshare/config.toml"),
        "store = \"bogus\"\n",
    )
    .unwrap();
    let out = env.helper("get", b"kept.example\n");
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("keyshare: ")
            && stdout.contains("config.toml")
            && stdout.lines().count() == 1,
        "{stdout}"
    );
    assert_eq!(text(&out.stderr), "");
}
