//! Both credential helpers against the real gnome-keyring that `scripts/test` starts
//! (`KEYSHARE_TEST_SECRET_SERVICE` set): git through `git credential approve/fill/reject`,
//! docker through `docker-credential-keyshare` on PATH, each item visible to `secret-tool`.
//! Without the keyring these tests fail when `CI=true` and skip loudly otherwise.
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const KEYSHARE: &str = env!("CARGO_BIN_EXE_keyshare");

struct Env {
    dir: tempfile::TempDir,
    flavor: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // A flavour (so a service name) of its own: runs never see each other's items.
        let flavor = format!(
            "h{}x{}",
            std::process::id(),
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace('.', "")
                // Flavour names are lowercase.
                .to_ascii_lowercase()
        );
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(KEYSHARE, bin.join("docker-credential-keyshare")).unwrap();
        // The helpers take no keyshare flags: the config file picks the keyring.
        let config = dir.path().join("config/keyshare/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, "store = \"secret-service\"\n").unwrap();
        Env { dir, flavor }
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    fn service(&self) -> String {
        format!("dev.keyshare.{}.shared-secrets", self.flavor)
    }

    fn command(&self, program: &str) -> Command {
        let inherited = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(self.home().join("bin")).chain(std::env::split_paths(&inherited)),
        )
        .unwrap();
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("HOME", self.home())
            .env("PATH", path)
            .env("XDG_CONFIG_HOME", self.home().join("config"))
            .env("XDG_DATA_HOME", self.home().join("data"))
            .env("XDG_RUNTIME_DIR", self.home().join("run"))
            .env("KEYSHARE_FLAVOR", &self.flavor)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_TERMINAL_PROMPT", "0");
        if let Some(bus) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
            cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        cmd
    }

    fn git(&self, args: &[&str], stdin: &str) -> Output {
        let mut cmd = self.command("git");
        cmd.args(["-c", "credential.helper=", "-c"])
            .arg(format!("credential.helper=!'{KEYSHARE}' git-credential"))
            .args(args);
        feed(cmd, stdin.as_bytes())
    }

    fn docker(&self, verb: &str, stdin: &[u8]) -> Output {
        let mut cmd = self.command("docker-credential-keyshare");
        cmd.arg(verb);
        feed(cmd, stdin)
    }
}

fn feed(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
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

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn secret_tool_lookup(env: &Env, account: &str) -> Output {
    env.command("secret-tool")
        .args(["lookup", "service", &env.service(), "account", account])
        .output()
        .expect("secret-tool runs")
}

#[test]
fn git_credentials_live_in_the_keyring() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    ok(env.git(
        &["credential", "approve"],
        "protocol=https\nhost=k.example\nusername=alice\npassword=from-git\n",
    ));
    let item = ok(secret_tool_lookup(&env, "git:https://alice@k.example"));
    assert!(
        String::from_utf8_lossy(&item.stdout).contains("\"password\":\"from-git\""),
        "the keyring item holds the JSON record"
    );
    let filled = ok(env.git(&["credential", "fill"], "protocol=https\nhost=k.example\n"));
    assert!(String::from_utf8_lossy(&filled.stdout).contains("username=alice\npassword=from-git\n"));
    ok(env.git(
        &["credential", "reject"],
        "protocol=https\nhost=k.example\nusername=alice\npassword=from-git\n",
    ));
    assert!(!secret_tool_lookup(&env, "git:https://alice@k.example")
        .status
        .success());
    assert!(!env
        .git(&["credential", "fill"], "protocol=https\nhost=k.example\n")
        .status
        .success());
}

#[test]
fn docker_credentials_live_in_the_keyring() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    ok(env.docker(
        "store",
        b"{\"ServerURL\":\"registry.example\",\"Username\":\"bob\",\"Secret\":\"from-docker\"}\n",
    ));
    let item = ok(secret_tool_lookup(&env, "docker:registry.example"));
    assert!(String::from_utf8_lossy(&item.stdout).contains("\"Secret\":\"from-docker\""));
    let got = ok(env.docker("get", b"registry.example"));
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        "{\"ServerURL\":\"registry.example\",\"Username\":\"bob\",\"Secret\":\"from-docker\"}\n"
    );
    let listed = ok(env.docker("list", b"unused"));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        "{\"registry.example\":\"bob\"}\n"
    );
    ok(env.docker("erase", b"registry.example"));
    let gone = env.docker("get", b"registry.example");
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&gone.stdout),
        "credentials not found in native keychain\n"
    );
}
