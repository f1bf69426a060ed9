//! The broker over the durable vault, killed with SIGKILL during a write storm 20 times in a
//! row and restarted each time: no acknowledged write is lost, and the vault passes SQLite's
//! integrity check at the end.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc};

use keyshare::store::vault::{VaultOptions, VaultStore};
use keyshare::{AppId, SecretKey, SecretStorage, SecretValue, Store};
use keyshare_broker::daemon::{self, BrokerPaths, Daemon, READY_LINE};
use keyshare_broker::{BlockingBrokerClient, BrokerState, ClientConfig};

const DIR_ENV: &str = "KEYSHARE_STORM_DIR";
const ROUNDS: usize = 20;
const WRITERS: usize = 4;
const KEYS_PER_WRITER: u64 = 3;
const NAMESPACE: &str = "dev.keyshare.shared-secrets";

fn vault_options(dir: &Path) -> VaultOptions {
    let mut options = VaultOptions::new(dir.join("data").join("vault.db"), NAMESPACE);
    options.keys.passphrase_env = None;
    options
}

fn key_of(writer: usize, n: u64) -> SecretKey {
    SecretKey::new(format!("w{writer}.k{}", n % KEYS_PER_WRITER)).unwrap()
}

fn value_of(writer: usize, n: u64) -> String {
    format!("w{writer}-{n}")
}

/// The broker process: `keyshare serve` over the vault, as the CLI runs it.
#[test]
#[ignore = "helper: the broker process of `sigkill_during_write_storms_loses_no_acknowledged_write`"]
fn storm_broker_child() {
    let dir = std::env::var_os(DIR_ENV).expect("run by the storm test");
    let dir = Path::new(&dir);
    let paths = common::socket_of(dir);
    let daemon = Daemon::prepare(&paths).unwrap();
    let vault = VaultStore::open(vault_options(dir)).unwrap();
    let storage = SecretStorage::builder(Arc::new(vault)).build();
    daemon::notify_ready_on_stdout().unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async {
            daemon
                .serve(
                    BrokerState::new(storage),
                    daemon::shutdown_signal().unwrap(),
                )
                .await
        })
        .unwrap();
}

fn start_broker(dir: &Path) -> Child {
    let mut child = common::child_test("storm_broker_child")
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.ends_with(READY_LINE));
    assert!(ready, "the broker did not become ready");
    child
}

fn client(paths: &BrokerPaths) -> BlockingBrokerClient {
    BlockingBrokerClient::new(ClientConfig::with_paths(
        paths.clone(),
        AppId::new("storm").unwrap(),
    ))
    .unwrap()
}

/// What each writer knows: its last acknowledged write, and the one in flight when the broker
/// died (which may or may not have committed).
#[derive(Clone, Copy, Debug, Default)]
struct Progress {
    next: u64,
    acked: Option<u64>,
    in_flight: Option<u64>,
}

#[test]
fn sigkill_during_write_storms_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    let mut progress = vec![Progress::default(); WRITERS];
    let mut total_acked = 0;
    for round in 0..ROUNDS {
        let mut broker = start_broker(dir.path());
        verify(&paths, &mut progress);
        let (ack_tx, ack_rx) = mpsc::channel::<()>();
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let paths = paths.clone();
                let ack_tx = ack_tx.clone();
                let mut p = progress[w];
                std::thread::spawn(move || {
                    let client = client(&paths);
                    p.in_flight = None;
                    loop {
                        let n = p.next;
                        p.in_flight = Some(n);
                        let value = SecretValue::from_slice(value_of(w, n).as_bytes());
                        if client.set(&key_of(w, n), &value).is_err() {
                            return p;
                        }
                        p.acked = Some(n);
                        p.in_flight = None;
                        p.next += 1;
                        let _ = ack_tx.send(());
                    }
                })
            })
            .collect();
        drop(ack_tx);
        // Kill after a varying number of acknowledged writes, mid-storm.
        let kill_after = 20 + (round * 7) % 30;
        for _ in 0..kill_after {
            ack_rx.recv().unwrap();
        }
        broker.kill().unwrap(); // SIGKILL
        broker.wait().unwrap();
        for (w, writer) in writers.into_iter().enumerate() {
            progress[w] = writer.join().unwrap();
        }
        total_acked += kill_after;
    }
    // One last restart, then the vault's own check, with no broker running.
    let mut broker = start_broker(dir.path());
    verify(&paths, &mut progress);
    broker.kill().unwrap();
    broker.wait().unwrap();
    let check: String = rusqlite::Connection::open(vault_options(dir.path()).path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    eprintln!("{ROUNDS} SIGKILLs, at least {total_acked} acknowledged writes, none lost");
}

/// Every key holds its writer's last acknowledged value, or the value that was in flight when
/// the broker died (then that write committed, and counts as acknowledged from now on).
fn verify(paths: &BrokerPaths, progress: &mut [Progress]) {
    let client = client(paths);
    let mut found: HashMap<SecretKey, String> = HashMap::new();
    for key in client.keys().unwrap() {
        let value = client.get(&key).unwrap().unwrap();
        found.insert(
            key,
            String::from_utf8(value.expose_secret().to_vec()).unwrap(),
        );
    }
    for (w, p) in progress.iter_mut().enumerate() {
        for slot in 0..KEYS_PER_WRITER {
            let key = key_of(w, slot);
            let acked = p
                .acked
                .and_then(|last| (0..=last).rev().find(|n| n % KEYS_PER_WRITER == slot));
            let in_flight = p.in_flight.filter(|n| n % KEYS_PER_WRITER == slot);
            let got = found.get(&key).cloned();
            if got.is_some() && got == in_flight.map(|n| value_of(w, n)) {
                p.acked = in_flight;
                p.next = in_flight.unwrap() + 1;
                p.in_flight = None;
                continue;
            }
            assert_eq!(
                got,
                acked.map(|n| value_of(w, n)),
                "{key}: an acknowledged write was lost (in flight: {in_flight:?})"
            );
        }
    }
}
