//! The `keyshare` binary against the real gnome-keyring that `scripts/test` starts
//! (`KEYSHARE_TEST_SECRET_SERVICE` set). Without it these tests fail when `CI=true` and skip
//! loudly otherwise.
#![cfg(target_os = "linux")]

mod support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

struct Env {
    dir: tempfile::TempDir,
    flavor: String,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        // A flavour (and so a service name) of its own, so runs never see each other's items.
        let flavor = format!(
            "t{}x{}",
            std::process::id(),
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace('.', "")
                // Flavour names are lowercase.
                .to_ascii_lowercase()
        );
        Env { dir, flavor }
    }

    fn service(&self) -> String {
        format!("dev.keyshare.{}.shared-secrets", self.flavor)
    }

    fn home(&self) -> &Path {
        self.dir.path()
    }

    /// keyshare's data directory for this flavour (its vault, the `auto` record).
    fn flavour_dir(&self) -> std::path::PathBuf {
        self.home().join("data/keyshare").join(&self.flavor)
    }

    fn write_config(&self, text: &str) {
        let config = self.home().join("config/keyshare/config.toml");
        std::fs::create_dir_all(config.parent().unwrap()).unwrap();
        std::fs::write(&config, text).unwrap();
    }

    fn command(&self, with_bus: bool) -> Command {
        let mut cmd = Command::cargo_bin("keyshare").unwrap();
        cmd.env_clear()
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join("config"))
            .env("XDG_DATA_HOME", self.home().join("data"))
            .env("XDG_RUNTIME_DIR", self.home().join("run"))
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .args(["--flavor", &self.flavor]);
        if with_bus {
            if let Some(bus) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
                cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
            }
        }
        cmd
    }

    fn run(&self, with_bus: bool, args: &[&str], stdin: &[u8]) -> Output {
        self.command(with_bus)
            .args(args)
            .write_stdin(stdin.to_vec())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str], stdin: &[u8]) -> Output {
        let out = self.run(true, args, stdin);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn secret_tool(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = std::process::Command::new("secret-tool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("secret-tool runs");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn auto_picks_the_keyring_and_secret_tool_sees_the_same_items() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    env.ok(&["--app", "code", "set", "github.auth"], b"from-keyshare");
    let looked_up = secret_tool(
        &[
            "lookup",
            "service",
            &env.service(),
            "account",
            "github.auth",
        ],
        b"",
    );
    assert_eq!(looked_up.stdout, b"from-keyshare");
    let stored = secret_tool(
        &[
            "store",
            "--label=x",
            "service",
            &env.service(),
            "account",
            "from.tool",
        ],
        b"from-secret-tool",
    );
    assert!(stored.status.success());
    let got = env.ok(&["--app", "agents", "get", "from.tool"], b"");
    assert_eq!(got.stdout, b"from-secret-tool");
    let doctor = env.ok(&["--json", "doctor"], b"");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(report["shared"]["kind"], "secret-service", "{report}");
    assert!(report["shared"]["chosen_because"]
        .as_str()
        .unwrap()
        .starts_with("auto: the Secret Service is usable"));
    for key in ["github.auth", "from.tool"] {
        env.ok(&["delete", key], b"");
    }
}

#[test]
fn without_a_keyring_auto_uses_the_vault_and_says_why() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    let out = env.run(false, &["set", "k"], b"v");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doctor = env.run(false, &["--json", "doctor"], b"");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(report["shared"]["kind"], "vault", "{report}");
    assert!(report["shared"]["chosen_because"]
        .as_str()
        .unwrap()
        .contains("not usable"));
    // The choice is kept: with the keyring reachable later, the flavour's secrets are still
    // in its vault (deciding again would answer "not found").
    assert_eq!(env.ok(&["--direct", "get", "k"], b"").stdout, b"v");
    let doctor = env.ok(&["--direct", "--json", "doctor"], b"");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_eq!(report["shared"]["kind"], "vault", "{report}");
}

/// Once `auto` chose the keyring for a flavour, a run that cannot reach it (a shell without the
/// session bus) says the store is unavailable (exit 3), never "not found", and does not start
/// a vault of its own that later runs would not read.
#[test]
fn auto_keeps_the_keyring_it_chose_and_is_unavailable_without_it() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    env.ok(&["--direct", "set", "github.auth"], b"t1");
    let record = env.flavour_dir().join("auto-store");
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "secret-service\n"
    );
    for args in [
        &["--direct", "get", "github.auth"][..],
        &["--direct", "set", "github.auth"],
    ] {
        let out = env.run(false, args, b"t2");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("auto-store"), "{stderr}");
    }
    assert!(!env.flavour_dir().join("vault.db").exists());
    assert_eq!(
        env.ok(&["--direct", "get", "github.auth"], b"").stdout,
        b"t1"
    );
    env.ok(&["--direct", "delete", "github.auth"], b"");
    // A record that says something else is reported, and left as it is.
    std::fs::write(&record, "keychain\n").unwrap();
    let out = env.run(true, &["--direct", "get", "github.auth"], b"");
    assert_eq!(out.status.code(), Some(7));
    assert!(String::from_utf8_lossy(&out.stderr).contains("left untouched"));
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "keychain\n");
}

#[test]
fn a_new_vault_keeps_its_key_in_the_keyring_when_there_is_one() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    let out = env.ok(&["--store", "vault", "set", "k"], b"v");
    assert!(
        out.stderr.is_empty(),
        "no key-file notice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doctor = env.ok(&["--store", "vault", "--json", "doctor"], b"");
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert!(
        report["shared"]["protection"]
            .as_str()
            .unwrap()
            .starts_with("OS keyring"),
        "{report}"
    );
    assert_eq!(env.ok(&["--store", "vault", "get", "k"], b"").stdout, b"v");
    // The same vault without the keyring cannot be opened, and says so: never a silent switch.
    // (`--direct`: the broker started above already holds the vault's key.)
    let out = env.run(false, &["--direct", "--store", "vault", "get", "k"], b"");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn require_os_keyring_refuses_a_key_file() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    env.write_config("require_os_keyring = true\n");
    let out = env.run(false, &["--store", "vault", "set", "k"], b"v");
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("require_os_keyring"));
    assert!(!env.flavour_dir().join("vault.db").exists());
    env.ok(&["--store", "vault", "set", "k"], b"v");
}

/// With `store = "auto"` a command cannot tell which store the broker chose; an app's repair
/// journal must still be keyed to that store (here the keyring), as a direct open would key
/// it, or its marks would not apply when the app next runs without the broker.
#[test]
fn through_the_broker_an_apps_journal_is_keyed_to_the_store_the_broker_serves() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    env.write_config("[apps.code]\nlegacy = { kind = \"vault\" }\n");
    // Starts the broker (the command inherits the session bus, so auto picks the keyring).
    env.ok(&["--app", "code", "set", "github.auth"], b"v1");
    let lock = env.home().join(format!("run/keyshare/{}.lock", env.flavor));
    let broker: i32 = std::fs::read_to_string(&lock)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let app_vault = env
        .home()
        .join(format!("data/keyshare/{}/apps/code.db", env.flavor));
    let namespaces: Vec<String> = {
        let db = rusqlite::Connection::open_with_flags(
            &app_vault,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let mut stmt = db
            .prepare("SELECT DISTINCT namespace FROM secrets")
            .unwrap();
        let rows = stmt.query_map([], |row| row.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(broker).unwrap(),
        rustix::process::Signal::TERM,
    );
    let journal = format!("journal:secret-service:{}", env.service());
    assert!(namespaces.contains(&journal), "{namespaces:?}");
    assert!(
        !namespaces.iter().any(|n| n.starts_with("journal:vault:")),
        "{namespaces:?}"
    );
}

/// A Secret Service of this test's own (`scripts/secret-service MODE`), for states the shared
/// test keyring must not be put in (locked, hung); stopped when dropped.
struct PrivateKeyring {
    dir: std::path::PathBuf,
    bus: String,
}

impl PrivateKeyring {
    fn start(mode: &str) -> PrivateKeyring {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        // Short: a unix socket path has to fit in about 100 bytes.
        let dir = std::env::temp_dir().join(format!(
            "ks-dr-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/secret-service");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(mode)
            .arg(&dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        let mut private = PrivateKeyring {
            dir,
            bus: String::new(),
        };
        assert!(out.status.success(), "scripts/secret-service {mode} failed");
        private.bus = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("export DBUS_SESSION_BUS_ADDRESS="))
            .expect("the script prints the bus address")
            .to_owned();
        private
    }

    fn keyring_pid(&self) -> String {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap()
            .lines()
            .rev()
            // "gnome-keyring-daemon PID START"
            .find_map(|l| l.strip_prefix("gnome-keyring-daemon "))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("a keyring pid is recorded")
            .to_owned()
    }

    fn signal(&self, sig: &str) {
        let pid = self.keyring_pid();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }
}

impl Drop for PrivateKeyring {
    fn drop(&mut self) {
        let _ = self.signal_quietly("-CONT");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/secret-service");
        let _ = std::process::Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

impl PrivateKeyring {
    fn signal_quietly(&self, sig: &str) -> std::io::Result<()> {
        let pids = std::fs::read_to_string(self.dir.join("pids"))?;
        if let Some(pid) = pids
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("gnome-keyring-daemon "))
            .and_then(|rest| rest.split_whitespace().next())
        {
            std::process::Command::new("kill")
                .args([sig, pid])
                .status()?;
        }
        Ok(())
    }
}

impl Env {
    fn run_on(&self, bus: Option<&str>, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = self.command(false);
        if let Some(bus) = bus {
            cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        cmd.args(args).write_stdin(stdin.to_vec()).output().unwrap()
    }

    /// Stops the broker a command started for this flavour, if any.
    fn stop_broker(&self) {
        let lock = self
            .home()
            .join(format!("run/keyshare/{}.lock", self.flavor));
        if let Some(pid) = std::fs::read_to_string(lock)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                rustix::process::Signal::TERM,
            );
        }
    }
}

/// A locked keyring makes every command fail (exit 3); doctor used to say "no problems found"
/// (exit 0), and garbled why `auto` chose it ("the Secret Service is secret service is
/// unavailable (locked)").
#[test]
fn doctor_reports_a_locked_keyring() {
    if !support::keyring_available() {
        return;
    }
    let private = PrivateKeyring::start("start-locked");
    let env = Env::new();
    let bus = Some(private.bus.as_str());
    let get = env.run_on(bus, &["--direct", "get", "x"], b"");
    assert_eq!(get.status.code(), Some(3));

    let out = env.run_on(bus, &["--json", "doctor"], b"");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(7), "{report}");
    assert_eq!(report["shared"]["kind"], "secret-service", "{report}");
    assert_eq!(report["shared"]["answers"], false, "{report}");
    let because = report["shared"]["chosen_because"].as_str().unwrap();
    assert!(!because.contains("is secret service is"), "{because}");
    assert!(
        because.starts_with("auto: the Secret Service answers, but its keyring is locked"),
        "{because}"
    );
    let problems = report["problems"].to_string();
    assert!(problems.contains("locked"), "{problems}");

    let human = env.run_on(bus, &["doctor"], b"");
    let text = String::from_utf8_lossy(&human.stdout);
    assert_eq!(human.status.code(), Some(7), "{text}");
    assert!(!text.contains("no problems found"), "{text}");
    assert!(text.contains("problem: the shared store (secret-service) does not answer"));
}

/// While the keyring hangs, writes through the broker are acknowledged by the app's legacy
/// store and queued for repair in its journal, which is keyed to the Secret Service (the store
/// the broker serves). doctor, opening the stores itself, could not open the Secret Service and
/// labelled the shared store "vault" (auto's record says the Secret Service), read the
/// vault's journal instead, and so printed `pending repairs: 0` and "no problems found".
#[test]
fn doctor_counts_the_repairs_queued_while_the_keyring_hangs() {
    if !support::keyring_available() {
        return;
    }
    let private = PrivateKeyring::start("start");
    let env = Env::new();
    env.write_config("timeout_ms = 1500\n[apps.code]\nlegacy = { kind = \"vault\" }\n");
    let bus = Some(private.bus.as_str());
    // The legacy vault's key goes into a file (no bus yet), so that the hung keyring does not
    // keep the legacy store from opening.
    let seed = env.run_on(
        None,
        &["--app", "code", "--store", "memory", "set", "seed"],
        b"v0",
    );
    assert!(
        seed.status.success(),
        "{}",
        String::from_utf8_lossy(&seed.stderr)
    );
    for key in ["a", "b"] {
        let out = env.run_on(bus, &["--app", "code", "set", key], b"x");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    struct Broker<'a>(&'a Env);
    impl Drop for Broker<'_> {
        fn drop(&mut self) {
            self.0.stop_broker();
        }
    }
    let _broker = Broker(&env);

    private.signal("-STOP");
    for key in ["a", "b"] {
        let out = env.run_on(bus, &["--app", "code", "set", key], b"y");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = env.run_on(bus, &["--app", "code", "--json", "doctor"], b"");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(7), "{report}");
    assert_eq!(report["shared"]["kind"], "secret-service", "{report}");
    let mut pending: Vec<&str> = report["pending_repairs"]
        .as_array()
        .unwrap_or_else(|| panic!("{report}"))
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    pending.sort();
    assert_eq!(pending, ["a", "b"], "{report}");
    let problems = report["problems"].to_string();
    assert!(problems.contains("does not answer"), "{problems}");
    // The advice names the flavour: followed without it, it would act on another one.
    let advice = format!("`keyshare --flavor {} --app code repair`", env.flavor);
    assert!(problems.contains(&advice), "{problems}");
    private.signal("-CONT");
}

/// QA s19 F5: `auto` chose a key-file vault (no Secret Service on the flavour's first use);
/// once one answers, doctor says the OS keyring could protect the secrets, and that switching
/// leaves the vault's secrets behind (keyshare has no command to move them). After a switch,
/// doctor reports the secrets left in the vault as a problem (they had gone unmentioned, and
/// every app found them missing), until they are copied and the vault moved away.
#[test]
fn doctor_speaks_of_a_key_file_vault_once_a_keyring_answers_and_of_secrets_left_in_it() {
    if !support::keyring_available() {
        return;
    }
    let env = Env::new();
    let out = env.run(false, &["--direct", "set", "github.auth"], b"TOKEN");
    assert!(out.status.success(), "{out:?}");
    let record = env.flavour_dir().join("auto-store");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "vault\n");

    let doctor = env.run(true, &["doctor"], b"");
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(
        doctor.status.code(),
        Some(0),
        "a note, not a problem: {stdout}"
    );
    assert!(
        stdout.contains("though a Secret Service answers now"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the vault's 1 secret(s) would stay behind in it"),
        "{stdout}"
    );
    assert!(
        stdout.contains("keyshare has no command that moves secrets"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("remove that file to choose again"),
        "{stdout}"
    );
    // Without a Secret Service there is nothing to say.
    let doctor = env.run(false, &["doctor"], b"");
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert!(!stdout.contains("Secret Service answers now"), "{stdout}");

    // Choosing again strands the secret: doctor says where it is, by key.
    std::fs::remove_file(&record).unwrap();
    assert_eq!(
        env.run(true, &["--direct", "get", "github.auth"], b"")
            .status
            .code(),
        Some(1)
    );
    let doctor = env.run(true, &["doctor"], b"");
    let stdout = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(7), "{stdout}");
    assert!(
        stdout.contains(
            "holds 1 secret(s) of this flavour that the shared store in use (secret-service) \
             does not have access to, so every app finds them missing: github.auth"
        ),
        "{stdout}"
    );
    // The advice works: copy, then move the vault away.
    let value = env.ok(&["--direct", "--store", "vault", "get", "github.auth"], b"");
    env.ok(
        &[
            "--direct",
            "--store",
            "secret-service",
            "set",
            "github.auth",
        ],
        &value.stdout,
    );
    assert_eq!(
        env.ok(&["--direct", "get", "github.auth"], b"").stdout,
        b"TOKEN"
    );
    let aside = env.home().join("old-vault");
    std::fs::create_dir(&aside).unwrap();
    for file in std::fs::read_dir(env.flavour_dir()).unwrap() {
        let file = file.unwrap();
        if file.file_name().to_string_lossy().starts_with("vault.") {
            std::fs::rename(file.path(), aside.join(file.file_name())).unwrap();
        }
    }
    let doctor = env.run(true, &["doctor"], b"");
    assert_eq!(
        doctor.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&doctor.stdout)
    );
    env.ok(&["--direct", "delete", "github.auth"], b"");
}

/// QA s19 F2 over the Secret Service, which records no deletes: `import vscode` remembers what
/// it imported from that database, so a secret another app signed out of since is left deleted
/// (dry run included) until `--restore-deleted` asks for it.
#[test]
fn import_vscode_into_the_keyring_does_not_bring_back_a_signed_out_secret() {
    if !support::keyring_available() {
        return;
    }
    const SAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../keyshare/tests/data/sample-state.vscdb"
    );
    const GITHUB: &str = r#"{"extensionId":"vscode.github-authentication","key":"github.auth"}"#;
    let env = Env::new();
    env.write_config("store = \"secret-service\"\n");
    let dir = env.home().join("Code");
    let db = dir.join("User/globalStorage/state.vscdb");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(SAMPLE, &db).unwrap();
    let import = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "--json",
            "import",
            "vscode",
            "--user-data-dir",
            dir.to_str().unwrap(),
            "--keyring-password-stdin",
        ];
        args.extend_from_slice(extra);
        serde_json::from_slice(&env.ok(&args, b"k8Q2Vx0mZt5bN1cR4yW7pA==").stdout).unwrap()
    };
    let first = import(&[]);
    assert_eq!(first["imported"].as_array().unwrap().len(), 2, "{first}");
    env.ok(&["--app", "agents", "delete", GITHUB], b"");

    for report in [import(&["--dry-run"]), import(&[])] {
        assert!(
            report["imported"].as_array().unwrap().is_empty(),
            "{report}"
        );
        let left = report["left_deleted"].as_array().unwrap();
        assert_eq!(left.len(), 1, "{report}");
        assert_eq!(left[0]["key"], GITHUB, "{report}");
    }
    let out = env.run(true, &["--app", "agents", "get", GITHUB], b"");
    assert_eq!(out.status.code(), Some(1), "the sign-out holds: {out:?}");

    let restored = import(&["--restore-deleted"]);
    assert_eq!(
        restored["imported"].as_array().unwrap().len(),
        1,
        "{restored}"
    );
    assert_eq!(
        env.ok(&["--app", "agents", "get", GITHUB], b"").stdout,
        b"hello"
    );
    env.ok(&["--app", "agents", "delete", GITHUB], b"");
    env.ok(
        &[
            "delete",
            r#"{"extensionId":"publisher.my-ext","key":"apiToken"}"#,
        ],
        b"",
    );
    env.ok(&["stop"], b"");
}
