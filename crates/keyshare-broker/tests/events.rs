//! Two apps as separate processes: `code` sets `github.auth`, a subscribed `agents` receives the
//! change event and reads the new value. The latency is asserted generously here (a loaded CI
//! machine is no place for timing); `benches/broker.rs` measures it precisely.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Stdio};
use std::time::Duration;

use keyshare::{Notification, SecretKey, SecretValue, Store};

use common::{child_test, now_ns, TestBroker};

const DIR_ENV: &str = "KEYSHARE_EVENTS_DIR";
const VALUE_ENV: &str = "KEYSHARE_EVENTS_VALUE";

fn client(app: &str) -> keyshare_broker::BlockingBrokerClient {
    let dir = std::env::var_os(DIR_ENV).expect("run by the events test");
    let paths = common::socket_of(std::path::Path::new(&dir));
    keyshare_broker::BlockingBrokerClient::new(keyshare_broker::ClientConfig::with_paths(
        paths,
        keyshare::AppId::new(app).unwrap(),
    ))
    .unwrap()
}

fn key() -> SecretKey {
    SecretKey::new("github.auth").unwrap()
}

#[test]
#[ignore = "helper: the `agents` process of `a_change_reaches_another_process`"]
fn agents_child() {
    let agents = client("agents");
    let mut events = agents.subscribe(Some(vec![key()])).unwrap();
    println!("\nSUBSCRIBED");
    match events.blocking_next() {
        Some(Notification::Changed(event)) => {
            let received = now_ns();
            let value = agents.get(&event.key).unwrap().unwrap();
            println!(
                "EVENT {} {received} {}",
                event.seq,
                String::from_utf8(value.expose_secret().to_vec()).unwrap()
            );
        }
        other => panic!("expected a change, got {other:?}"),
    }
}

#[test]
#[ignore = "helper: the `code` process of `a_change_reaches_another_process`"]
fn code_child() {
    let code = client("code");
    code.server_info().unwrap();
    let value = std::env::var(VALUE_ENV).unwrap();
    let before = now_ns();
    code.set(&key(), &SecretValue::from_slice(value.as_bytes()))
        .unwrap();
    println!("\nSET {before}");
}

/// The first line of `stdout` that starts with `prefix`, without the prefix.
fn line_with(stdout: &mut BufReader<ChildStdout>, prefix: &str) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the child ended without a {prefix:?} line"
        );
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return rest.to_owned();
        }
    }
}

fn spawn(name: &str, broker: &TestBroker) -> (Child, BufReader<ChildStdout>) {
    let mut child = child_test(name)
        .env(DIR_ENV, broker.dir.path())
        .env(VALUE_ENV, "gho_new_token")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    (child, stdout)
}

#[test]
fn a_change_reaches_another_process() {
    let broker = TestBroker::memory();
    broker
        .client("code")
        .set(&key(), &SecretValue::from_slice(b"old"))
        .unwrap();
    let (mut agents, mut agents_out) = spawn("agents_child", &broker);
    // Readiness through the pipe, not a sleep.
    line_with(&mut agents_out, "SUBSCRIBED");
    let (mut code, mut code_out) = spawn("code_child", &broker);
    let before: u64 = line_with(&mut code_out, "SET ").parse().unwrap();
    let event = line_with(&mut agents_out, "EVENT ");
    let fields: Vec<&str> = event.split(' ').collect();
    let (seq, received, value) = (fields[0], fields[1].parse::<u64>().unwrap(), fields[2]);
    assert_eq!(seq, "2", "the second change of the broker");
    assert_eq!(value, "gho_new_token", "agents reads the new value");
    let latency = Duration::from_nanos(received.saturating_sub(before));
    eprintln!("set -> event in another process: {latency:?}");
    assert!(
        latency < Duration::from_millis(500),
        "the event took {latency:?} (target 50 ms, asserted generously)"
    );
    assert!(code.wait().unwrap().success());
    assert!(agents.wait().unwrap().success());
}
