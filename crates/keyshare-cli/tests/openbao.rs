//! `store = "openbao"` end to end: the `keyshare` binary against the OpenBao dev server that
//! `scripts/test` starts (`scripts/openbao start dev --tls`). Without it: fails when `CI=true`,
//! skips loudly otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use assert_cmd::Command;
use keyshare::store::openbao::{OpenBaoAuth, OpenBaoConfig, OpenBaoStore};
use keyshare::{MemoryStore, SecretKey, SecretValue, Store};

struct Server {
    addr: String,
    token: String,
    ca: String,
}

fn server() -> Option<Server> {
    let Ok(addr) = std::env::var("KEYSHARE_TEST_OPENBAO_ADDR") else {
        let message = "the OpenBao dev server is not running (KEYSHARE_TEST_OPENBAO_ADDR is not \
                       set): run the tests through scripts/test";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {message}");
        }
        eprintln!("\n!!!!!!!!!! SKIPPED: {message} !!!!!!!!!!\n");
        return None;
    };
    let token_file = std::env::var("KEYSHARE_TEST_OPENBAO_TOKEN_FILE").unwrap();
    Some(Server {
        addr,
        token: std::fs::read_to_string(token_file)
            .unwrap()
            .trim()
            .to_owned(),
        ca: std::env::var("KEYSHARE_TEST_OPENBAO_CA_FILE")
            .expect("the dev server runs with TLS (scripts/openbao start dev --tls)"),
    })
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new(server: &Server, prefix: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let config = dir.path().join("config/keyshare/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(
            &config,
            format!(
                "store = \"openbao\"\n[openbao]\naddresses = [\"{}\"]\nprefix = \"{prefix}\"\nca_file = \"{}\"\n",
                server.addr, server.ca
            ),
        )
        .unwrap();
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
            .args(args)
            .write_stdin(stdin.to_vec())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str], stdin: &[u8]) -> Output {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("keyshare-cli-tests/{}-{nanos}", std::process::id())
}

#[test]
fn login_set_get_doctor_against_the_server() {
    let Some(server) = server() else { return };
    let prefix = unique_prefix();
    let env = Env::new(&server, &prefix);

    // Before a token is stored: denied (exit 8), with what to do.
    let out = env.run(&["get", "github.auth"], b"");
    assert_eq!(
        out.status.code(),
        Some(8),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("openbao.token"));

    let out = env.ok(&["openbao-login"], format!("{}\n", server.token).as_bytes());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("accepted"), "{said}");
    assert!(!said.contains(&server.token), "{said}");

    env.ok(&["set", "github.auth"], b"s3cret");
    let out = env.ok(&["get", "github.auth"], b"");
    assert_eq!(out.stdout, b"s3cret");

    // A wrong token is refused and does not replace the working one.
    let out = env.run(&["openbao-login"], b"not-a-token\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("the server did not accept the OpenBao token; nothing was stored"),
        "{stderr}"
    );
    // The trial store it was checked in is no credentials store the user knows of.
    assert!(!stderr.contains("(memory)"), "{stderr}");
    let out = env.ok(&["get", "github.auth"], b"");
    assert_eq!(out.stdout, b"s3cret");

    // Another machine (the library, its own credentials) reads it at the documented path.
    let creds = Arc::new(MemoryStore::new());
    let token_key = SecretKey::new("openbao.token").unwrap();
    creds
        .set(
            &token_key,
            &SecretValue::from_slice(server.token.as_bytes()),
        )
        .unwrap();
    let mut config = OpenBaoConfig::new(
        vec![server.addr.clone()],
        "secret",
        format!("{prefix}/dev.keyshare.shared-secrets"),
        OpenBaoAuth::token(token_key),
    );
    config.ca_file = Some(server.ca.clone().into());
    let other = OpenBaoStore::new(config, creds).unwrap();
    let got = other.get(&SecretKey::new("github.auth").unwrap()).unwrap();
    assert_eq!(got.unwrap().expose_secret(), b"s3cret");

    let out = env.run(&["doctor", "--json"], b"");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let bao = &report["openbao"];
    assert_eq!(bao["auth_method"], "token", "{report}");
    assert_eq!(bao["nodes"][0]["state"], "active", "{report}");
    assert!(bao["latency_ms"].is_number(), "{report}");
    assert!(
        bao["token"]["ttl_seconds"].is_null(),
        "the dev root token never expires: {report}"
    );
    assert_eq!(report["shared"]["kind"], "openbao", "{report}");
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert!(!out
        .stdout
        .windows(server.token.len())
        .any(|w| w == server.token.as_bytes()));

    let human = env.ok(&["doctor"], b"");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("openbao:") && text.contains("never expires"),
        "{text}"
    );
}

#[test]
fn openbao_without_its_section_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("keyshare")
        .unwrap()
        .env_clear()
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .args(["--store", "openbao", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("[openbao]"));
}

#[test]
fn a_zero_watch_interval_is_a_config_error_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config/keyshare/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        "store = \"openbao\"\n[openbao]\naddresses = [\"https://bao.example:8200\"]\nwatch_interval_ms = 0\n",
    )
    .unwrap();
    let out = Command::cargo_bin("keyshare")
        .unwrap()
        .env_clear()
        .env("HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .args(["get", "k"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("watch_interval_ms"), "{stderr}");
}

/// Sends each line `from` prints to the returned channel, so a test can wait with a deadline.
fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The first line from `lines` that contains `needle`; on a timeout, the panic message shows
/// what `context` printed so far (the broker's log says why an event never came).
fn wait_for(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    context: &std::sync::mpsc::Receiver<String>,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(e) => {
                let printed: Vec<String> = context.try_iter().collect();
                panic!(
                    "no line with {needle:?} within 10 s ({e}); the broker printed:\n{}",
                    printed.join("\n")
                )
            }
        }
    }
}

/// A child process that is killed and reaped when the test ends, passing or not.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_announces_writes_made_without_the_broker() {
    let Some(server) = server() else { return };
    let env = Env::new(&server, &unique_prefix());
    let config = env.home().join("config/keyshare/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("watch_interval_ms = 100\n");
    std::fs::write(&config, text).unwrap();
    env.ok(&["openbao-login"], format!("{}\n", server.token).as_bytes());
    std::fs::create_dir_all(env.home().join("run")).unwrap();
    std::fs::set_permissions(
        env.home().join("run"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();

    let spawn = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keyshare"))
            .env_clear()
            .env("HOME", env.home())
            .env("XDG_CONFIG_HOME", env.home().join("config"))
            .env("XDG_DATA_HOME", env.home().join("data"))
            .env("XDG_RUNTIME_DIR", env.home().join("run"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map(Reaped)
            .unwrap()
    };
    let mut serve = spawn(&["serve"]);
    let serve_err = lines_of(serve.0.stderr.take().unwrap());
    wait_for(&serve_err, "keyshare: serving flavour stable", &serve_err);
    let mut watch = spawn(&["--no-autostart", "--json", "watch", "github.auth"]);
    let watch_err = lines_of(watch.0.stderr.take().unwrap());
    let watch_out = lines_of(watch.0.stdout.take().unwrap());
    wait_for(&watch_err, "watching github.auth", &serve_err);

    // `--direct` (and no XDG_RUNTIME_DIR in `env.ok`): written as another machine would.
    env.ok(&["--direct", "set", "github.auth"], b"elsewhere");
    let event: serde_json::Value =
        serde_json::from_str(&wait_for(&watch_out, "github.auth", &serve_err)).unwrap();
    assert_eq!(
        (&event["kind"], &event["key"]),
        (&"set".into(), &"github.auth".into())
    );
    env.ok(&["--direct", "delete", "github.auth"], b"");
    let event: serde_json::Value =
        serde_json::from_str(&wait_for(&watch_out, "github.auth", &serve_err)).unwrap();
    assert_eq!(event["kind"], "delete");
    drop((watch, serve));
}

/// A single node without HA has no leader: doctor used to print `leader null`.
#[test]
fn doctor_says_what_no_leader_means() {
    let Some(server) = server() else { return };
    let env = Env::new(&server, &unique_prefix());
    env.ok(&["openbao-login"], format!("{}\n", server.token).as_bytes());
    let out = env.ok(&["doctor", "--json"], b"");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let human = env.ok(&["doctor"], b"");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(!text.contains("leader null"), "{text}");
    if report["openbao"]["leader"].is_null() {
        let expected = if report["openbao"]["ha_enabled"] == true {
            "leader none (no node names one)"
        } else {
            "leader none (HA is not enabled)"
        };
        assert!(text.contains(expected), "{text}");
    }
}

/// A loopback address on which nothing listens: a port the system just handed out, closed
/// again.
fn dead_address(scheme: &str) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("{scheme}://127.0.0.1:{port}")
}

/// With the server down, a command going through the broker reports the store's own error
/// (every address refused the connection), not a broker that "did not answer": it waits as
/// long as the broker's OpenBao calls may take (twice `timeout_ms`, failovers and backoff
/// included), not `timeout_ms` alone. QA #8: the command always said "the broker did not
/// answer within 5s".
#[test]
fn through_the_broker_a_server_that_is_down_is_reported_as_such() {
    let Some(server) = server() else { return };
    let env = Env::new(&server, &unique_prefix());
    env.ok(&["openbao-login"], format!("{}\n", server.token).as_bytes());
    // The token is kept; the server moves to an address where nothing answers.
    std::fs::write(
        env.home().join("config/keyshare/config.toml"),
        format!(
            "store = \"openbao\"\ntimeout_ms = 1000\n[openbao]\naddresses = [\"{}\"]\nca_file = \"{}\"\n",
            dead_address("https"),
            server.ca
        ),
    )
    .unwrap();
    let run_dir = env.home().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let out = Command::cargo_bin("keyshare")
        .unwrap()
        .env_clear()
        .env("HOME", env.home())
        .env("XDG_CONFIG_HOME", env.home().join("config"))
        .env("XDG_DATA_HOME", env.home().join("data"))
        .env("XDG_RUNTIME_DIR", &run_dir)
        .args(["get", "github.auth"])
        .output()
        .unwrap();
    // The command started a broker: stop it whatever the outcome.
    if let Some(pid) = std::fs::read_to_string(run_dir.join("keyshare/stable.lock"))
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
    {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::TERM,
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("did not answer"), "{stderr}");
    assert!(
        stderr.contains("failed on every address") && stderr.contains("check that the server runs"),
        "{stderr}"
    );
}

/// `keyshare` in a home whose config points the OpenBao store at `address`, with a short
/// `timeout_ms`, and no broker (no `XDG_RUNTIME_DIR`).
fn env_at(address: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let config = dir.path().join("config/keyshare/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!("store = \"openbao\"\ntimeout_ms = 300\n[openbao]\naddresses = [\"{address}\"]\n"),
    )
    .unwrap();
    dir
}

fn run_in(home: &Path, args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let out = Command::cargo_bin("keyshare")
        .unwrap()
        .env_clear()
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .args(args)
        .write_stdin(stdin.to_vec())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openbao-login` says what went wrong in the user's terms (QA #10): an empty input is a
/// usage error found before anything is contacted or stored (as for `set`); a server that
/// cannot be reached is said to be unreachable, not to have refused the token; and a command
/// that finds no token names the command that stores one. No server needed: nothing listens
/// at the configured address.
#[test]
fn openbao_login_messages_say_what_happened_and_what_to_do() {
    let home = env_at(&dead_address("http"));
    let home = home.path();
    let credentials = home.join("data/keyshare/credentials.db");

    for input in [&b""[..], b"  \n"] {
        let (code, stderr) = run_in(home, &["openbao-login"], input);
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("standard input was empty"), "{stderr}");
        assert!(!stderr.contains("did not accept"), "{stderr}");
    }
    assert!(
        !credentials.exists(),
        "nothing is stored for an empty input"
    );

    let (code, stderr) = run_in(home, &["openbao-login"], b"s.some-token\n");
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("the OpenBao server could not be reached"),
        "{stderr}"
    );
    assert!(!stderr.contains("did not accept"), "{stderr}");
    assert!(!credentials.exists(), "an unchecked token is not stored");

    let (code, stderr) = run_in(home, &["get", "github.auth"], b"");
    assert_eq!(code, Some(8), "{stderr}");
    assert!(
        stderr.contains("no OpenBao token is stored")
            && stderr.contains("`keyshare --flavor stable openbao-login`"),
        "{stderr}"
    );
}

/// A stored token the server refuses for the shared secrets (here: one whose policy does not
/// cover them) is reported with the command that replaces it.
#[test]
fn a_refused_token_names_openbao_login_as_the_fix() {
    let Some(server) = server() else { return };
    let bin = std::env::var("KEYSHARE_TEST_OPENBAO_BIN")
        .expect("scripts/openbao start dev prints KEYSHARE_TEST_OPENBAO_BIN");
    // A token with only the default policy: it may look itself up (so login accepts it),
    // not read the KV mount.
    let minted = std::process::Command::new(bin)
        .args([
            "token",
            "create",
            "-policy=default",
            "-ttl=10m",
            "-field=token",
        ])
        .env("BAO_ADDR", &server.addr)
        .env("BAO_CACERT", &server.ca)
        .env("BAO_TOKEN", &server.token)
        .output()
        .unwrap();
    assert!(minted.status.success(), "{minted:?}");
    let token = String::from_utf8(minted.stdout).unwrap();
    let env = Env::new(&server, &unique_prefix());
    env.ok(&["openbao-login"], token.as_bytes());

    let out = env.run(&["get", "github.auth"], b"");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{stderr}");
    assert!(
        stderr.contains("`keyshare --flavor stable openbao-login"),
        "{stderr}"
    );
    assert!(!stderr.contains(token.trim()), "{stderr}");
}
