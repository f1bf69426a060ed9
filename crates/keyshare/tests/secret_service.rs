//! The Secret Service store against a real gnome-keyring.
//!
//! `scripts/test` starts a private one (`scripts/secret-service start`) and sets
//! `KEYSHARE_TEST_SECRET_SERVICE`; tests that use the session bus run only then, so they never
//! write to your own login keyring. Tests about a locked keyring, a bus without a Secret Service
//! and a hung daemon start private instances of their own through the same script.
//! When what a test needs is missing it fails if `CI=true` and skips loudly otherwise.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyshare::store::secret_service::{
    probe, probe_on, Bus, SecretServiceKekStore, SecretServiceStore, SCHEMA, VAULT_KEY_SCHEMA,
};
use keyshare::store::vault::{Kek, KekStore, VaultId, VaultOptions, VaultStore};
use keyshare::testing::conformance::unique_namespace;
use keyshare::testing::model::{check_model, ModelConfig, ModelStores};
use keyshare::{Error, MemoryStore, SecretKey, SecretValue, Store, UnavailableReason};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Fails the test in CI, else prints why it is skipped (loudly) and returns false.
fn skip(reason: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true, but {reason}");
    }
    // Straight to stderr: libtest captures `eprintln!` of passing tests, and a skip must show.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED: {reason}\n!!!!!!!! run the tests through scripts/test, which starts a private gnome-keyring\n"
    );
    false
}

/// True when the session bus carries the private Secret Service `scripts/test` started.
fn session_service() -> bool {
    std::env::var_os("KEYSHARE_TEST_SECRET_SERVICE").is_some()
        || skip("no test Secret Service (KEYSHARE_TEST_SECRET_SERVICE is not set)")
}

/// True when the programs needed to start private instances are installed.
fn keyring_programs() -> bool {
    let found = |program: &str| {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
            .unwrap_or(false)
    };
    [
        "dbus-daemon",
        "dbus-send",
        "gnome-keyring-daemon",
        "secret-tool",
    ]
    .iter()
    .all(|p| found(p))
        || skip("dbus-daemon, dbus-send, gnome-keyring-daemon or secret-tool is not installed")
}

fn open(namespace: &str) -> SecretServiceStore {
    SecretServiceStore::open(namespace, TIMEOUT).expect("open the test Secret Service")
}

fn key(name: &str) -> SecretKey {
    SecretKey::new(name).unwrap()
}

fn value(bytes: &[u8]) -> SecretValue {
    SecretValue::from_slice(bytes)
}

fn factory() -> impl Fn(&str) -> Arc<dyn Store> {
    |namespace: &str| -> Arc<dyn Store> { Arc::new(open(namespace)) }
}

mod conformance {
    // The block is the factory expression of each generated test: without a service it returns
    // from the test (skipping it, or failing it in CI) before any store is made.
    keyshare::conformance_tests!({
        if !super::session_service() {
            return;
        }
        super::factory()
    });
}

#[test]
fn consistency_contract_holds_over_gnome_keyring() {
    if !keyring_programs() {
        return;
    }
    // A keyring of its own: gnome-keyring rewrites its whole file on every change, so the other
    // tests' items (a 256 KiB one among them) would only slow this one down.
    let private = Private::start("start");
    let cases = std::env::var("KEYSHARE_SS_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let config = ModelConfig {
        cases,
        ..ModelConfig::from_env(cases)
    };
    let connection = SecretServiceStore::open_on(private.bus(), "model", TIMEOUT).unwrap();
    let open = |namespace: &str| Arc::new(connection.for_namespace(namespace).unwrap());
    // Each case gets fresh namespaces. The shared and legacy stores live in the keyring; the
    // journal (an app's own small file in real use, written on most operations) in memory,
    // which keeps the test's length modest.
    check_model(&config, &|| ModelStores {
        shared: open(&unique_namespace("model-shared")),
        legacy: open(&unique_namespace("model-legacy")),
        journal: Arc::new(MemoryStore::new()),
    });
}

/// Runs `secret-tool ARGS`, feeding `stdin`; returns (success, stdout).
fn secret_tool(args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>) {
    secret_tool_on(None, args, stdin)
}

/// Like [`secret_tool`], on the bus at `address` when given.
fn secret_tool_on(address: Option<&str>, args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>) {
    let mut command = Command::new("secret-tool");
    if let Some(address) = address {
        command.env("DBUS_SESSION_BUS_ADDRESS", address);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run secret-tool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("write secret-tool's stdin");
    let out = child.wait_with_output().unwrap();
    (out.status.success(), out.stdout)
}

#[test]
fn secret_tool_reads_what_keyshare_stores() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("interop-read");
    let store = open(&ns);
    store
        .set(&key("github.auth"), &value(b"token \x00\xff bytes"))
        .unwrap();
    let (ok, out) = secret_tool(&["lookup", "service", &ns, "account", "github.auth"], b"");
    assert!(ok, "secret-tool lookup failed");
    assert_eq!(out, b"token \x00\xff bytes");

    // The item is documented: schema and label.
    let (ok, out) = secret_tool(
        &["search", "--all", "service", &ns, "account", "github.auth"],
        b"",
    );
    assert!(ok);
    let listing = String::from_utf8_lossy(&out);
    assert!(
        listing.contains(&format!("\nschema = {SCHEMA}\n")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("label = keyshare: github.auth ({ns})")),
        "{listing}"
    );

    // An empty value is a value, to secret-tool too; a deleted one is gone.
    store.set(&key("empty"), &value(b"")).unwrap();
    let (ok, out) = secret_tool(&["lookup", "service", &ns, "account", "empty"], b"");
    assert!(ok && out.is_empty(), "empty value: ok={ok} out={out:?}");
    assert!(store.delete(&key("empty")).unwrap());
    let (ok, _) = secret_tool(&["lookup", "service", &ns, "account", "empty"], b"");
    assert!(!ok, "secret-tool still finds a deleted item");
}

#[test]
fn keyshare_reads_what_secret_tool_stores() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("interop-write");
    let (ok, _) = secret_tool(
        &["store", "--label=x", "service", &ns, "account", "from-tool"],
        b"stored by secret-tool",
    );
    assert!(ok, "secret-tool store failed");
    let store = open(&ns);
    assert_eq!(
        store
            .get(&key("from-tool"))
            .unwrap()
            .expect("keyshare finds the item")
            .expose_secret(),
        b"stored by secret-tool"
    );
    assert_eq!(store.keys().unwrap(), vec![key("from-tool")]);

    // Writing the key over the tool's item leaves one copy, keyshare's, for everyone.
    store.set(&key("from-tool"), &value(b"replaced")).unwrap();
    let (ok, out) = secret_tool(&["lookup", "service", &ns, "account", "from-tool"], b"");
    assert!(ok);
    assert_eq!(out, b"replaced");
    let (_, out) = secret_tool(&["search", "--all", "service", &ns], b"");
    let listing = String::from_utf8_lossy(&out);
    assert_eq!(listing.matches("label = ").count(), 1, "{listing}");
    assert_eq!(store.keys().unwrap(), vec![key("from-tool")]);

    assert!(store.delete(&key("from-tool")).unwrap());
    let (ok, _) = secret_tool(&["lookup", "service", &ns, "account", "from-tool"], b"");
    assert!(!ok, "the item is still there after keyshare deleted it");
}

#[test]
fn items_without_a_valid_account_are_skipped_in_listings() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("odd-items");
    // An item of our service with no account attribute, from some other program.
    let (ok, _) = secret_tool(&["store", "--label=x", "service", &ns, "user", "u"], b"v");
    assert!(ok);
    let store = open(&ns);
    store.set(&key("good"), &value(b"v")).unwrap();
    assert_eq!(store.keys().unwrap(), vec![key("good")]);
}

#[test]
fn values_over_the_limit_are_refused_before_any_call() {
    if !session_service() {
        return;
    }
    let store =
        open(&unique_namespace("limits")).with_limits(keyshare::Limits { max_value_len: 4 });
    let err = store.set(&key("k"), &value(b"12345")).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                limit: 4,
                actual: 5
            }
        ),
        "{err}"
    );
    assert_eq!(store.get(&key("k")).unwrap(), None);
}

#[test]
fn probe_says_usable() {
    if !session_service() {
        return;
    }
    let report = probe(TIMEOUT);
    assert!(report.is_usable(), "{report}");
    assert!(
        report
            .collection
            .as_deref()
            .is_some_and(|c| c.starts_with("/org/freedesktop/secrets/collection/")),
        "{report:?}"
    );
}

// A store is a blocking API; it must never try to start a runtime of its own inside tokio's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usable_from_tokio_blocking_pool_and_runtime_threads() {
    if !session_service() {
        return;
    }
    let ns = unique_namespace("tokio");
    let store = Arc::new(open(&ns));
    let in_pool = store.clone();
    let got = tokio::task::spawn_blocking(move || {
        in_pool.set(&key("k"), &value(b"from the blocking pool"))?;
        in_pool.get(&key("k"))
    })
    .await
    .expect("the blocking task must not panic")
    .unwrap();
    assert_eq!(got.unwrap().expose_secret(), b"from the blocking pool");
    // Even straight on a runtime thread (discouraged: it blocks that thread) it works.
    assert_eq!(
        store.get(&key("k")).unwrap().unwrap().expose_secret(),
        b"from the blocking pool"
    );
    let reopened = SecretServiceStore::open(&ns, TIMEOUT).unwrap();
    assert_eq!(reopened.keys().unwrap(), vec![key("k")]);
}

#[tokio::test(flavor = "current_thread")]
async fn usable_from_a_current_thread_runtime() {
    if !session_service() {
        return;
    }
    let store = open(&unique_namespace("tokio-current"));
    store.set(&key("k"), &value(b"v")).unwrap();
    let store = Arc::new(store);
    let in_pool = store.clone();
    let got = tokio::task::spawn_blocking(move || in_pool.get(&key("k")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.unwrap().expose_secret(), b"v");
}

/// A private bus (and keyring, depending on the mode) started by `scripts/secret-service`,
/// stopped on drop.
struct Private {
    dir: PathBuf,
    address: String,
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/secret-service")
}

impl Private {
    fn start(mode: &str) -> Private {
        // Short: a unix socket path has to fit in about 100 bytes.
        let dir = std::env::temp_dir().join(format!(
            "ks-ss-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let out = Command::new("bash")
            .arg(script())
            .arg(mode)
            .arg(&dir)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/secret-service");
        // Stops whatever did start, even when the checks below fail.
        let mut private = Private {
            dir,
            address: String::new(),
        };
        assert!(out.status.success(), "scripts/secret-service {mode} failed");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let address = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export DBUS_SESSION_BUS_ADDRESS="))
            .expect("the script prints the bus address")
            .to_owned();
        assert!(
            !address.contains(['\'', '\\', '$']),
            "unexpected quoting: {address}"
        );
        private.address = address;
        private
    }

    fn bus(&self) -> Bus {
        Bus::Address(self.address.clone())
    }

    /// The keyring daemon dies (SIGKILL) and comes back on the same keyring and bus, unlocked.
    fn restart_keyring(&self) {
        let status = Command::new("bash")
            .arg(script())
            .arg("restart-keyring")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/secret-service");
        assert!(
            status.success(),
            "scripts/secret-service restart-keyring failed"
        );
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
}

impl Drop for Private {
    fn drop(&mut self) {
        // A failing test says what the keyring daemon and the bus printed (a daemon that
        // crashed, a bus that dropped it) before `stop` removes their logs.
        if std::thread::panicking() {
            for log in ["gnome-keyring.log", "dbus.log"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.join(log)) {
                    eprintln!(
                        "--- {log} of {} ---\n{text}--- end of {log} ---",
                        self.dir.display()
                    );
                }
            }
        }
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn assert_unavailable<T: std::fmt::Debug>(
    result: keyshare::Result<T>,
    reason: UnavailableReason,
    says: &[&str],
) {
    match result {
        Err(Error::Unavailable {
            reason: got,
            ref detail,
            ..
        }) if got == reason => {
            let message = result.as_ref().unwrap_err().to_string();
            for s in says {
                assert!(
                    message.contains(s),
                    "{message:?} should say {s:?} ({detail})"
                );
            }
        }
        other => panic!("expected Unavailable({reason:?}), got {other:?}"),
    }
}

#[test]
fn locked_collection_is_reported_at_once_with_what_to_do() {
    if !keyring_programs() {
        return;
    }
    let private = Private::start("start-locked");
    let timeout = Duration::from_secs(2);
    let bound = timeout + Duration::from_secs(2);
    let started = Instant::now();
    let store = SecretServiceStore::open_on(private.bus(), "dev.keyshare.locked-marker", timeout)
        .expect("opening works on a locked collection");
    assert!(started.elapsed() < bound);
    let says = ["locked", "unlock your login keyring", "--store vault"];
    // The marker item exists (locked); the other key does not exist at all: both are "locked",
    // never "not found".
    for name in ["marker", "never-stored"] {
        let started = Instant::now();
        assert_unavailable(store.get(&key(name)), UnavailableReason::Locked, &says);
        assert!(
            started.elapsed() < bound,
            "get took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert_unavailable(store.delete(&key(name)), UnavailableReason::Locked, &says);
        assert!(
            started.elapsed() < bound,
            "delete took {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    assert_unavailable(
        store.set(&key("new"), &value(b"v")),
        UnavailableReason::Locked,
        &says,
    );
    assert!(
        started.elapsed() < bound,
        "set took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_unavailable(store.keys(), UnavailableReason::Locked, &says);
    assert!(
        started.elapsed() < bound,
        "keys took {:?}",
        started.elapsed()
    );

    let report = probe_on(private.bus(), timeout);
    assert!(!report.is_usable());
    assert!(report.elapsed < bound);
    assert_eq!(
        report.collection.as_deref(),
        Some("/org/freedesktop/secrets/collection/login")
    );
    assert_unavailable(report.outcome, UnavailableReason::Locked, &says);
}

#[test]
fn no_bus_or_no_service_is_not_running() {
    if !keyring_programs() {
        return;
    }
    let timeout = Duration::from_secs(2);
    let nowhere = Bus::Address("unix:path=/nonexistent/keyshare-test/bus.sock".to_owned());
    assert_unavailable(
        SecretServiceStore::open_on(nowhere.clone(), "ns", timeout),
        UnavailableReason::NotRunning,
        &["DBUS_SESSION_BUS_ADDRESS", "--store vault"],
    );
    assert_unavailable(
        probe_on(nowhere, timeout).outcome,
        UnavailableReason::NotRunning,
        &["DBUS_SESSION_BUS_ADDRESS"],
    );

    // A bus with nobody owning org.freedesktop.secrets (and nothing to start it).
    let bare = Private::start("start-bare");
    assert_unavailable(
        SecretServiceStore::open_on(bare.bus(), "ns", timeout),
        UnavailableReason::NotRunning,
        &["org.freedesktop.secrets", "DBUS_SESSION_BUS_ADDRESS"],
    );
    assert_unavailable(
        probe_on(bare.bus(), timeout).outcome,
        UnavailableReason::NotRunning,
        &["org.freedesktop.secrets"],
    );
}

#[test]
fn a_hung_service_times_out() {
    if !keyring_programs() {
        return;
    }
    let private = Private::start("start");
    let timeout = Duration::from_millis(1500);
    let bound = timeout + Duration::from_secs(2);
    let store = SecretServiceStore::open_on(private.bus(), "dev.keyshare.hung", timeout).unwrap();
    store.set(&key("k"), &value(b"v")).unwrap();

    let pid = private.keyring_pid();
    let signal = |sig: &str| {
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    struct Resume<'a>(&'a dyn Fn(&str));
    impl Drop for Resume<'_> {
        fn drop(&mut self) {
            (self.0)("-CONT");
        }
    }
    let resume = Resume(&signal);

    let started = Instant::now();
    assert_unavailable(
        store.get(&key("k")),
        UnavailableReason::TimedOut,
        &["no answer within 1500 ms", "reading key \"k\""],
    );
    let took = started.elapsed();
    assert!(took >= timeout && took < bound, "get took {took:?}");
    // A write that timed out is not said to have changed nothing: its call was sent.
    assert_unavailable(
        store.set(&key("k"), &value(b"v2")),
        UnavailableReason::TimedOut,
        &["writing key \"k\"", "may still take effect"],
    );
    assert_unavailable(
        store.delete(&key("k")),
        UnavailableReason::TimedOut,
        &["deleting key \"k\"", "may still take effect"],
    );
    let started = Instant::now();
    assert_unavailable(
        SecretServiceStore::open_on(private.bus(), "dev.keyshare.hung", timeout),
        UnavailableReason::TimedOut,
        &["no answer"],
    );
    assert!(started.elapsed() < bound);
    assert!(!probe_on(private.bus(), timeout).is_usable());

    drop(resume);
    // Once the service answers again, the same store (connection and session) works again.
    store.set(&key("k"), &value(b"v3")).unwrap();
    assert_eq!(
        store.get(&key("k")).unwrap().unwrap().expose_secret(),
        b"v3"
    );
}

/// A temporary directory the vault accepts (0700).
fn private_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// A store keeps working after the keyring daemon crashes and comes back: its session died
/// with the daemon, so the call that finds it gone opens a new one and is made again (found by
/// QA: every read and write of a running broker failed with "NoSession: The session does not
/// exist" until it was restarted). Vault keys, on the same connection, too.
#[test]
fn a_store_gets_a_new_session_after_the_keyring_daemon_restarts() {
    if !keyring_programs() {
        return;
    }
    let private = Private::start("start");
    let store =
        SecretServiceStore::open_on(private.bus(), "dev.keyshare.restart", TIMEOUT).unwrap();
    let vault_keys = store.kek_store();
    let dir = private_tempdir();
    let id = key_file_vault_id(dir.path());
    let kek = Kek::generate().unwrap();
    store.set(&key("k"), &value(b"before")).unwrap();
    vault_keys.store(&id, &kek).unwrap();

    private.restart_keyring();
    assert_eq!(store.get(&key("k")).unwrap(), Some(value(b"before")));
    private.restart_keyring();
    store.set(&key("k"), &value(b"after")).unwrap();
    assert_eq!(store.get(&key("k")).unwrap(), Some(value(b"after")));
    private.restart_keyring();
    let loaded = vault_keys
        .load(&id)
        .unwrap()
        .expect("the vault key is kept");
    assert_eq!(loaded.expose_secret(), kek.expose_secret());
    private.restart_keyring();
    assert!(store.delete(&key("k")).unwrap());
    assert_eq!(store.get(&key("k")).unwrap(), None);
}

/// A vault protected by a key file (no keyring involved), for a vault id no keyring knows.
fn key_file_vault_id(dir: &Path) -> VaultId {
    let mut options = VaultOptions::new(dir.join("other.db"), "ns");
    options.keys.passphrase_env = None;
    VaultStore::open(options).unwrap().vault_id()
}

#[test]
fn vault_keys_live_in_gnome_keyring() {
    if !keyring_programs() {
        return;
    }
    let private = Private::start("start");
    let dir = private_tempdir();
    let path = dir.path().join("vault.db");
    let options = |keyring: Arc<SecretServiceKekStore>| {
        let mut o = VaultOptions::new(&path, "ns");
        o.keys.os_keyring = Some(keyring);
        o.keys.passphrase_env = None;
        o.require_os_keyring = true;
        o
    };
    let keyring = Arc::new(SecretServiceKekStore::open_on(private.bus(), TIMEOUT).unwrap());
    let vault = VaultStore::open(options(keyring.clone())).unwrap();
    assert!(vault.protection().is_os_keyring(), "{}", vault.protection());
    assert_eq!(keyring.describe(), "Secret Service (collection \"login\")");
    vault.set(&key("k"), &value(b"v")).unwrap();
    let id = vault.vault_id();
    drop(vault);

    // Another connection (another process, in effect) opens the vault through the keyring.
    let reopened = Arc::new(SecretServiceKekStore::open_on(private.bus(), TIMEOUT).unwrap());
    let vault = VaultStore::open(options(reopened.clone())).unwrap();
    assert_eq!(vault.get(&key("k")).unwrap().unwrap(), value(b"v"));
    let kek = reopened.load(&id).unwrap().expect("the vault key is there");

    // The item follows the documented schema.
    let (ok, out) = secret_tool_on(
        Some(&private.address),
        &[
            "lookup",
            "xdg:schema",
            VAULT_KEY_SCHEMA,
            "vault",
            &id.to_hex(),
        ],
        b"",
    );
    assert!(ok);
    assert_eq!(out, kek.expose_secret());

    // A vault's key is never replaced.
    let err = reopened.store(&id, &Kek::generate().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    assert_eq!(
        reopened.load(&id).unwrap().unwrap().expose_secret(),
        kek.expose_secret()
    );

    // No key for a vault the keyring never saw; a malformed key is corrupt, and left alone.
    let other = key_file_vault_id(dir.path());
    assert!(reopened.load(&other).unwrap().is_none());
    let (ok, _) = secret_tool_on(
        Some(&private.address),
        &[
            "store",
            "--label=x",
            "xdg:schema",
            VAULT_KEY_SCHEMA,
            "vault",
            &other.to_hex(),
        ],
        b"short",
    );
    assert!(ok);
    let err = reopened.load(&other).unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }) && err.to_string().contains("5 bytes"),
        "{err:?}"
    );
    let (ok, out) = secret_tool_on(
        Some(&private.address),
        &[
            "lookup",
            "xdg:schema",
            VAULT_KEY_SCHEMA,
            "vault",
            &other.to_hex(),
        ],
        b"",
    );
    assert!(ok && out == b"short");

    // The key of a vault that was never created is removed (a vault that lost a creation
    // race); removing one that is not there is not an error.
    let uncreated = key_file_vault_id(private_tempdir().path());
    reopened
        .store(&uncreated, &Kek::generate().unwrap())
        .unwrap();
    assert!(reopened.load(&uncreated).unwrap().is_some());
    reopened.forget_uncreated(&uncreated).unwrap();
    assert!(reopened.load(&uncreated).unwrap().is_none());
    let (found, _) = secret_tool_on(
        Some(&private.address),
        &[
            "lookup",
            "xdg:schema",
            VAULT_KEY_SCHEMA,
            "vault",
            &uncreated.to_hex(),
        ],
        b"",
    );
    assert!(!found);
    reopened.forget_uncreated(&uncreated).unwrap();
    // The vault that exists still opens.
    assert_eq!(
        reopened.load(&id).unwrap().unwrap().expose_secret(),
        kek.expose_secret()
    );
}

#[test]
fn vault_keys_in_a_locked_keyring_are_unavailable_not_missing() {
    if !keyring_programs() {
        return;
    }
    let private = Private::start("start-locked");
    let dir = private_tempdir();
    let id = key_file_vault_id(dir.path());
    let keyring = SecretServiceKekStore::open_on(private.bus(), TIMEOUT).unwrap();
    let says = ["locked", "unlock your login keyring"];
    assert_unavailable(keyring.load(&id), UnavailableReason::Locked, &says);
    assert_unavailable(
        keyring.store(&id, &Kek::generate().unwrap()),
        UnavailableReason::Locked,
        &says,
    );
}

// --- Other clients deleting items between keyshare's search and its use of what it found (found
// by QA: concurrent set/delete/get on one key from several processes failed with "Object does
// not exist at path"). The store's `after_search` hook plays the other client at exactly that
// moment, through D-Bus calls of its own (dbus-send, secret-tool) as any other program would.

/// A hook that runs `act` with the paths the store's first search found, and nothing after.
fn on_first_search(
    act: impl Fn(&[String]) + Send + Sync + 'static,
) -> impl Fn(&[String]) + Send + Sync + 'static {
    let done = AtomicBool::new(false);
    move |paths: &[String]| {
        if !done.swap(true, Ordering::SeqCst) {
            act(paths)
        }
    }
}

/// Deletes the items at `paths` from another D-Bus connection (dbus-send).
fn delete_items(paths: &[String]) {
    assert!(!paths.is_empty(), "the search found nothing to delete");
    for path in paths {
        let status = Command::new("dbus-send")
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                path,
                "org.freedesktop.Secret.Item.Delete",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("run dbus-send");
        assert!(status.success(), "dbus-send could not delete {path}");
    }
}

#[test]
fn get_answers_not_found_when_another_client_deletes_the_item_it_found() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("vanish-get");
    open(&ns).set(&key("k"), &value(b"v")).unwrap();
    let store = open(&ns).after_search(on_first_search(delete_items));
    assert_eq!(store.get(&key("k")).unwrap(), None);
}

#[test]
fn get_reads_the_item_that_replaced_the_one_it_found() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("vanish-replaced");
    open(&ns).set(&key("k"), &value(b"old")).unwrap();
    let hook_ns = ns.clone();
    let store = open(&ns).after_search(on_first_search(move |paths| {
        delete_items(paths);
        let (ok, _) = secret_tool(
            &["store", "--label=x", "service", &hook_ns, "account", "k"],
            b"new",
        );
        assert!(ok, "secret-tool store failed");
    }));
    let read = store
        .get(&key("k"))
        .unwrap()
        .expect("the new item is found");
    assert_eq!(read.expose_secret(), b"new");
}

#[test]
fn delete_succeeds_when_another_client_deleted_the_item_first() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("vanish-delete");
    open(&ns).set(&key("k"), &value(b"v")).unwrap();
    let store = open(&ns).after_search(on_first_search(delete_items));
    // Nothing was left for this call to remove: answered as for an absent key.
    assert!(!store.delete(&key("k")).unwrap());
    assert_eq!(open(&ns).get(&key("k")).unwrap(), None);

    // Two copies (stored by other tools), one deleted by the other client meanwhile: this call
    // removed the other, and says so.
    for copy in ["1", "2"] {
        let (ok, _) = secret_tool(
            &[
                "store",
                "--label=x",
                "service",
                &ns,
                "account",
                "two",
                "copy",
                copy,
            ],
            b"w",
        );
        assert!(ok, "secret-tool store failed");
    }
    let store = open(&ns).after_search(on_first_search(|paths| {
        assert_eq!(paths.len(), 2, "{paths:?}");
        delete_items(&paths[..1]);
    }));
    assert!(store.delete(&key("two")).unwrap());
    assert_eq!(open(&ns).get(&key("two")).unwrap(), None);
}

#[test]
fn set_goes_on_when_an_older_copy_is_already_gone() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("vanish-set");
    // A copy stored by another tool (no xdg:schema): `set` deletes it after writing its own.
    let (ok, _) = secret_tool(
        &["store", "--label=x", "service", &ns, "account", "k"],
        b"theirs",
    );
    assert!(ok, "secret-tool store failed");
    let theirs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = theirs.clone();
    let finder = open(&ns).after_search(move |paths| *record.lock().unwrap() = paths.to_vec());
    assert!(finder.get(&key("k")).unwrap().is_some());
    let theirs = theirs.lock().unwrap().clone();
    assert_eq!(theirs.len(), 1, "{theirs:?}");

    // The other client deletes that copy after `set` found it, before `set` deletes it.
    let store = open(&ns).after_search(on_first_search(move |paths| {
        assert!(paths.contains(&theirs[0]), "{paths:?} {theirs:?}");
        delete_items(&theirs);
    }));
    store.set(&key("k"), &value(b"ours")).unwrap();
    let read = open(&ns)
        .get(&key("k"))
        .unwrap()
        .expect("the key has a value");
    assert_eq!(read.expose_secret(), b"ours");
}

#[test]
fn keys_skip_an_item_another_client_deleted() {
    if !session_service() || !keyring_programs() {
        return;
    }
    let ns = unique_namespace("vanish-keys");
    open(&ns).set(&key("a"), &value(b"v")).unwrap();
    open(&ns).set(&key("b"), &value(b"v")).unwrap();
    let hook_ns = ns.clone();
    let store = open(&ns).after_search(on_first_search(move |paths| {
        assert_eq!(paths.len(), 2, "{paths:?}");
        let (ok, _) = secret_tool(&["clear", "service", &hook_ns, "account", "a"], b"");
        assert!(ok, "secret-tool clear failed");
    }));
    assert_eq!(store.keys().unwrap(), vec![key("b")]);
}

/// QA's reproduction in one test: clients on connections of their own (as separate processes
/// are) set, delete, read and list one key at once for a few seconds. Every call must succeed.
#[test]
fn concurrent_clients_on_one_key_never_fail() {
    if !session_service() {
        return;
    }
    const CLIENTS: usize = 4;
    const FOR: Duration = Duration::from_secs(3);
    let ns = unique_namespace("race");
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let ns = ns.clone();
            std::thread::spawn(move || {
                let store = open(&ns);
                let k = key("race");
                let mut failures = Vec::new();
                let mut calls = 0u32;
                while started.elapsed() < FOR {
                    let v = value(format!("value of client {client}").as_bytes());
                    let results = [
                        ("set", store.set(&k, &v).map(drop)),
                        ("get", store.get(&k).map(drop)),
                        ("delete", store.delete(&k).map(drop)),
                        ("keys", store.keys().map(drop)),
                    ];
                    for (call, result) in results {
                        calls += 1;
                        if let Err(e) = result {
                            failures.push(format!("client {client} {call}: {e}"));
                        }
                    }
                }
                (calls, failures)
            })
        })
        .collect();
    let mut calls = 0;
    let mut failures = Vec::new();
    for thread in threads {
        let (n, f) = thread.join().unwrap();
        calls += n;
        failures.extend(f);
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_deleted_default_collection_is_looked_up_again() {
    if !keyring_programs() {
        return;
    }
    let private = Private::start("start");
    let call = |path: &str, args: &[&str]| {
        let status = Command::new("dbus-send")
            .env("DBUS_SESSION_BUS_ADDRESS", &private.address)
            .args([
                "--session",
                "--print-reply",
                "--dest=org.freedesktop.secrets",
                path,
            ])
            .args(args)
            .stdout(Stdio::null())
            .status()
            .expect("run dbus-send");
        assert!(status.success(), "dbus-send {path} {args:?} failed");
    };
    let store = SecretServiceStore::open_on(private.bus(), "moved", TIMEOUT).unwrap();
    // Finds (and remembers) the default collection: the login keyring.
    assert_eq!(store.get(&key("k")).unwrap(), None);
    assert!(
        store.info().location.contains("/login"),
        "{:?}",
        store.info()
    );

    // Another client points `default` at the session collection and deletes the login one.
    call(
        "/org/freedesktop/secrets",
        &[
            "org.freedesktop.Secret.Service.SetAlias",
            "string:default",
            "objpath:/org/freedesktop/secrets/collection/session",
        ],
    );
    call(
        "/org/freedesktop/secrets/collection/login",
        &["org.freedesktop.Secret.Collection.Delete"],
    );
    store.set(&key("k"), &value(b"v")).unwrap();
    let read = store.get(&key("k")).unwrap().expect("the key has a value");
    assert_eq!(read.expose_secret(), b"v");
    assert!(
        store.info().location.contains("/session"),
        "{:?}",
        store.info()
    );
}

/// A `sleep 60` child of this test, with its PID and start time (field 22 of /proc/PID/stat),
/// as `scripts/secret-service` records the processes it starts.
fn sleeper() -> (std::process::Child, u32, u64) {
    let sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = sleeper.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Field 22, counted after the parenthesised command name (field 2).
    let started: u64 = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|field| field.parse().ok())
        .expect("a start time in /proc/PID/stat");
    (sleeper, pid, started)
}

/// Runs `scripts/secret-service stop` on a state directory that records `sleep` as process
/// `pid` started at `start`, and checks that it succeeds and removes the directory.
fn stop_recorded(state: &Path, pid: u32, start: u64) {
    std::fs::create_dir(state).unwrap();
    std::fs::write(state.join(".keyshare-secret-service"), "").unwrap();
    std::fs::write(state.join("pids"), format!("sleep {pid} {start}\n")).unwrap();
    let stopped = Command::new("bash")
        .arg(script())
        .arg("stop")
        .arg(state)
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(!state.exists(), "stop removes the state directory");
}

/// `scripts/secret-service stop` stops only the processes it started: a process that got a
/// recorded PID after the recorded one died is left alone, even one of the same name (another
/// test's keyring daemon). PIDs are reused: pid_max can be 32768, and a test run starts tens of
/// thousands of processes. Needs only bash.
#[test]
fn stop_leaves_alone_a_process_that_got_a_recorded_pid() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (mut sleeper, pid, started) = sleeper();

    // Recorded with another start time: the process that had this PID is gone.
    stop_recorded(&state, pid, started + 1);
    assert!(
        sleeper.try_wait().unwrap().is_none(),
        "stop killed a process it did not start"
    );

    // Recorded with its own: stopped (reaped here at once, so stop sees it gone).
    let reaper = std::thread::spawn(move || sleeper.wait());
    stop_recorded(&state, pid, started);
    let status = reaper.join().unwrap().unwrap();
    assert!(!status.success(), "the recorded process was stopped");
}

/// `scripts/secret-service stop` takes a process that has exited but is not reaped yet (a
/// zombie) as stopped: the daemons outlive the `start` that forked them, so their parent is
/// PID 1, which on the CI machines reaps seconds later, and stop waited for that, up to its 5 s
/// limit, at every test's teardown.
#[test]
fn stop_does_not_wait_for_a_stopped_process_to_be_reaped() {
    let dir = tempfile::tempdir().unwrap();
    // This test is its parent and reaps it only after stop has returned.
    let (mut sleeper, pid, started) = sleeper();
    let began = std::time::Instant::now();
    stop_recorded(&dir.path().join("state"), pid, started);
    let took = began.elapsed();
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "the recorded process was stopped");
    // Not a speed target: the wait it must not do is 5 s long, and a stop that does not wait
    // takes milliseconds.
    assert!(
        took < std::time::Duration::from_millis(2500),
        "stop waited {took:?} for a process that had exited"
    );
}
