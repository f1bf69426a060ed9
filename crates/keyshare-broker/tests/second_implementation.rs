//! docs/protocol.md is enough to write a client: `tests/protocol_client.py`, a Python client
//! written from the document alone, against a real broker, next to the Rust client. Each
//! scenario of the script prints one line per outcome (never a value: it compares values itself
//! and prints a verdict), and these tests compare its whole output.
//!
//! `python3` is required (scripts/test installs it); without it these tests fail.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keyshare::{MemoryStore, SecretKey, SecretStorage, SecretValue, Store};
use keyshare_broker::access::AccessPolicy;
use keyshare_broker::server::BrokerState;
use keyshare_broker::ServerOptions;
use serde_json::json;

use common::TestBroker;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/protocol_client.py");

fn k(s: &str) -> SecretKey {
    SecretKey::new(s).unwrap()
}

fn v(bytes: &[u8]) -> SecretValue {
    SecretValue::from_slice(bytes)
}

/// The Python client running one scenario: its inputs (values included) go in on stdin,
/// never in argv.
struct Scenario {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Scenario {
    fn start(socket: &Path, name: &str, inputs: serde_json::Value) -> Scenario {
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg(socket)
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| {
                panic!("python3 is required for this test (scripts/test installs it): {err}")
            });
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{inputs}").unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Scenario {
            name: name.to_owned(),
            child,
            stdin: Some(stdin),
            stdout,
        }
    }

    /// The script's next line of output.
    fn line(&mut self) -> String {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).unwrap() == 0 {
            let stderr = self.stderr_after_exit();
            panic!("scenario {} ended early:\n{stderr}", self.name);
        }
        line.trim_end().to_owned()
    }

    /// Sends a line the script waits for.
    fn tell(&mut self, message: serde_json::Value) {
        writeln!(self.stdin.as_mut().unwrap(), "{message}").unwrap();
    }

    /// The rest of the output, once the script succeeded.
    fn finish(mut self) -> String {
        drop(self.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        let status = self.child.wait().unwrap();
        if !status.success() {
            let stderr = self.stderr_after_exit();
            panic!(
                "scenario {} failed ({status}) after printing:\n{rest}\n{stderr}",
                self.name
            );
        }
        rest
    }

    fn stderr_after_exit(&mut self) -> String {
        let _ = self.child.wait();
        let mut stderr = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr);
        stderr
    }
}

fn run(broker: &TestBroker, name: &str, inputs: serde_json::Value) -> String {
    Scenario::start(&broker.paths.socket, name, inputs).finish()
}

/// `block`'s lines without their indentation, each ending in a newline: expected output
/// written as an indented block.
fn text(block: &str) -> String {
    block
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.is_empty())
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn python_and_rust_clients_share_values_keys_and_status() {
    let broker = TestBroker::memory();
    let rust = broker.client("code");
    let from_rust: &[u8] = b"rust secret \x00\xff\xfe";
    let from_python: &[u8] = b"python secret \xc3\x28\x00";
    rust.set(&k("rs.token"), &v(from_rust)).unwrap();

    let output = run(
        &broker,
        "exchange",
        json!({
            "write": {"key": "py.token", "value": STANDARD.encode(from_python)},
            "read": {"key": "rs.token", "value": STANDARD.encode(from_rust)},
        }),
    );
    assert_eq!(
        output,
        text(
            "hello protocol=1 server=keyshare-broker
             set py.token ok
             get py.token matches
             get rs.token matches
             get never.set null
             get id=18446744073709551615 op=get matches
             get empty.value empty
             delete empty.value deleted=true"
        )
    );
    let written = rust.get(&k("py.token")).unwrap().expect("Python's value");
    assert!(
        written.expose_secret() == from_python,
        "the Rust client reads what Python wrote"
    );

    assert_eq!(run(&broker, "keys", json!({})), "keys py.token,rs.token\n");

    assert_eq!(
        run(&broker, "delete", json!({"key": "py.token"})),
        "delete py.token deleted=true\ndelete py.token deleted=false\nget py.token null\n"
    );
    assert_eq!(rust.get(&k("py.token")).unwrap(), None);

    let output = run(&broker, "status", json!({}));
    let status = rust.status().unwrap();
    assert_eq!(
        status.last_seq, 6,
        "two sets and a delete by Rust and Python, then two deletes: one found nothing"
    );
    assert_eq!(
        output,
        format!(
            "server_version={}\npid={}\nconnections=2\nlast_seq={}\nshared_store={}\n\
             legacy_store=null\npending_repairs=0\n",
            json!(env!("CARGO_PKG_VERSION")),
            std::process::id(),
            status.last_seq,
            json!(status.shared_store),
        )
    );
}

#[test]
fn a_python_subscriber_gets_the_rust_clients_changes_in_sequence() {
    let broker = TestBroker::memory();
    let rust = broker.client("code");
    rust.set(&k("before"), &v(b"0")).unwrap();
    let mut watcher = Scenario::start(
        &broker.paths.socket,
        "watch",
        json!({
            "first": ["w.c"],
            "keys": ["w.a", "w.b"],
            "read": {"key": "w.a", "value": STANDARD.encode(b"one")},
            "until": {"key": "w.a", "kind": "delete"},
        }),
    );
    assert_eq!(watcher.line(), "subscribed last_seq=1");
    rust.set(&k("w.a"), &v(b"one")).unwrap();
    assert_eq!(watcher.line(), "event seq=2 key=w.a kind=set increasing");
    // The value is read before it changes again.
    assert_eq!(watcher.line(), "get w.a matches");
    rust.set(&k("w.c"), &v(b"unwatched since the second subscribe"))
        .unwrap();
    rust.set(&k("w.b"), &v(b"two")).unwrap();
    rust.set(&k("w.b"), &v(b"two")).unwrap();
    assert!(rust.delete(&k("w.b")).unwrap());
    assert!(!rust.delete(&k("w.b")).unwrap());
    assert!(rust.delete(&k("w.a")).unwrap());
    assert_eq!(
        watcher.finish(),
        "event seq=4 key=w.b kind=set increasing\n\
         event seq=5 key=w.b kind=set increasing\n\
         event seq=6 key=w.b kind=delete increasing\n\
         event seq=7 key=w.b kind=delete increasing\n\
         event seq=8 key=w.a kind=delete increasing\n"
    );

    assert_eq!(
        run(&broker, "own_change", json!({})),
        "event set; reply set\n",
        "a subscriber hears of its own changes too"
    );
}

#[test]
fn a_python_subscriber_that_does_not_read_is_told_to_resync() {
    let storage = SecretStorage::builder(Arc::new(MemoryStore::new()))
        .event_capacity(8)
        .build();
    let broker = TestBroker::start(storage, AccessPolicy::default(), ServerOptions::default());
    let mut lagging = Scenario::start(&broker.paths.socket, "lag", json!({}));
    assert_eq!(lagging.line(), "subscribed last_seq=0");
    // Enough events to fill the socket buffers and the broker's queues while the script
    // reads nothing; four writers make them quickly.
    let (writers, sets) = (4, 2500);
    std::thread::scope(|s| {
        for w in 0..writers {
            let client = broker.client("code");
            s.spawn(move || {
                for i in 0..sets {
                    client
                        .set(&k(&format!("lag.{w}.{}", i % 10)), &v(b"x"))
                        .unwrap();
                }
            });
        }
    });
    lagging.tell(json!({"until_seq": writers * sets}));
    assert_eq!(
        lagging.finish(),
        "resynced: True, each after missed events: True\nsilent gaps=0 last seq=10000\n"
    );
}

#[test]
fn pipelined_requests_are_each_answered_once() {
    let broker = TestBroker::memory();
    assert_eq!(
        run(&broker, "pipeline", json!({"count": 3000})),
        // Each get sees the set sent before it on its key; replies come in any order.
        "replies=3000 distinct=3000 wrong=0\n"
    );
    assert_eq!(
        run(&broker, "duplicate_ids", json!({})),
        "reply id=5; reply id=5; then status: reply\n",
        "the broker does not check that ids are unique"
    );
}

#[test]
fn hello_is_checked_as_documented() {
    let store = "vault:/data/keyshare/stable/vault.db#dev.keyshare.shared-secrets";
    let storage = SecretStorage::builder(Arc::new(MemoryStore::new())).build();
    let state = BrokerState::new(storage.clone())
        .with_store_identity(Some(store.into()))
        .with_os_keyring_protection(Some(false));
    let broker = TestBroker::start_state(storage, state);
    let quoted = json!(store);
    assert_eq!(
        run(&broker, "hello", json!({"store": store})),
        text(&format!(
            "plain: reply id=1 store={quoted}; reply id=2; open
             expect_store this: reply id=1 store={quoted}; reply id=2; open
             expect_store other: error id=1 code=store_mismatch; closed (ended)
             require_os_keyring: error id=1 code=protection; closed (ended)
             require_os_keyring false: reply id=1 store={quoted}; reply id=2; open
             app of 64: reply id=1 store={quoted}; reply id=2; open
             app of 65: error id=1 code=invalid; closed (ended)
             app with a space: error id=1 code=invalid; closed (ended)
             app starting with a dot: error id=1 code=invalid; closed (ended)
             app empty: error id=1 code=invalid; closed (ended)
             without client: error id=null code=protocol; closed (ended)
             without client_version: error id=null code=protocol; closed (ended)
"
        ))
    );

    assert_eq!(
        run(&broker, "version", json!({})),
        "version 2: error id=1 code=version_mismatch protocol=1; closed (ended)\n\
         version 0: error id=1 code=version_mismatch protocol=1; closed (ended)\n\
         version 2, reshaped: error id=1 code=version_mismatch protocol=1; closed (ended)\n"
    );
    assert_eq!(
        run(&broker, "before_hello", json!({})),
        "error id=1 code=protocol\nclosed (ended)\n"
    );

    // Where the OS keyring's protection does not apply, a hello requiring it is accepted.
    let unprotected = TestBroker::memory();
    let output = run(&unprotected, "hello", json!({"store": store}));
    assert!(
        output.contains("\nrequire_os_keyring: reply id=1 store=null; reply id=2; open\n"),
        "{output}"
    );
}

#[test]
fn an_invalid_key_fails_alone_with_invalid() {
    let broker = TestBroker::memory();
    let mut expected = String::new();
    let mut id = 2;
    for case in ["empty", "nul", "4097 bytes", "2049 two-byte chars"] {
        for op in ["get", "set", "delete"] {
            expected += &format!("{op} {case}: error id={id} code=invalid\n");
            id += 1;
        }
    }
    expected += "get 4096 bytes: null\nget 2048 two-byte chars: null\n";
    expected += "subscribe with an empty key: error id=16 code=invalid\nthen status: reply\n";
    assert_eq!(run(&broker, "invalid_keys", json!({})), expected);
}

#[test]
fn a_keys_reply_over_the_frame_limit_fails_with_invalid() {
    let broker = TestBroker::memory();
    let rust = broker.client("code");
    // 300 keys of 4000 bytes: about 1.2 MB of names, over the 1 MiB frame.
    for i in 0..300 {
        let key = format!("{i:03}.{}", "k".repeat(3996));
        rust.set(&k(&key), &v(b"x")).unwrap();
    }
    assert_eq!(
        run(&broker, "keys", json!({})),
        "keys: error id=2 code=invalid\nthen status: reply\n"
    );
}

#[test]
fn values_and_frames_at_and_over_their_limits() {
    let broker = TestBroker::memory();
    assert_eq!(
        run(&broker, "values", json!({"limit": 256 * 1024})),
        text(
            "set 262144 bytes: ok
         set 262145 bytes: error id=3 code=too_large actual=262145 limit=262144
         set unpadded: error id=null code=protocol; closed (ended)
         set urlsafe: error id=null code=protocol; closed (ended)
         set not base64: error id=null code=protocol; closed (ended)
         first connection then: reply
",
        )
    );
    assert_eq!(
        run(&broker, "oversized", json!({})),
        text(
            "set in a 1 MiB frame: error id=2 code=too_large actual=786399 limit=262144
         error id=null code=protocol
         closed (ended)
         another connection: reply
",
        )
    );
}

#[test]
fn a_malformed_message_closes_its_connection_with_a_protocol_error() {
    let broker = TestBroker::memory();
    let closed = "error id=null code=protocol; closed (ended)";
    assert_eq!(
        run(&broker, "malformed", json!({})),
        text(&format!(
            "not json: {closed}
             not an object: {closed}
             unknown op: {closed}
             no id: {closed}
             id not an integer: {closed}
             key not a string: {closed}
             unknown field: reply id=2; open
             negative id: {closed}
             id over u64: {closed}
             lone surrogate key: {closed}
             control characters in key: reply id=2; open
"
        ))
    );
}

#[test]
fn a_silent_hello_or_an_unfinished_frame_times_out_but_silence_between_frames_does_not() {
    let mut options = ServerOptions::default();
    options.handshake_timeout = Duration::from_millis(300);
    options.frame_timeout = Duration::from_millis(300);
    let broker = TestBroker::start(
        SecretStorage::builder(Arc::new(MemoryStore::new())).build(),
        AccessPolicy::default(),
        options,
    );
    assert_eq!(
        run(&broker, "silent", json!({"wait": 5})),
        "silent before hello: error id=null code=protocol; closed (ended)\n"
    );
    assert_eq!(
        run(&broker, "stall", json!({"wait": 0.6})),
        "silent between frames, then status: reply\n\
         half a frame: error id=null code=protocol; closed (ended)\n"
    );
}
