//! `kill -9` of the Raft leader during a write storm from two clients: no acknowledged write
//! is lost, and both clients carry on with the new leader. Also: a stalled node (SIGSTOP) and a
//! sealed node are skipped within the time bounds, and reported for what they are. Needs the 3-node cluster from
//! `scripts/openbao start raft` (fails when `CI=true` without it, skips loudly otherwise). Its
//! own test binary, so nothing else runs against the cluster while its leader dies. The killed
//! node is started again at the end (`scripts/openbao restart-node`), so the test can be rerun.

#![cfg(feature = "openbao")]

#[path = "support/openbao.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keyshare::store::openbao::{NodeState, OpenBaoStore};
use keyshare::{Error, Store, UnavailableReason};
use support::{key, unique_prefix, value, Server};

/// Keys `k0..k5` only get writes (their whole history is checked); `k6` and `k7` also get
/// deletes (which erase history, so only their final state is checked).
const KEYS_PER_CLIENT: usize = 8;
const SET_ONLY_KEYS: usize = 6;
/// Acknowledged writes each client must make before the kill, and again after the new leader.
const WRITES_PER_PHASE: u64 = 40;

/// Per key, every value a read may return: after an acknowledged write exactly that one (or
/// `None` after a delete); a write that failed adds its value (it may have landed).
type Allowed = Vec<HashSet<Option<String>>>;

struct Client {
    store: OpenBaoStore,
    allowed: Mutex<Allowed>,
    /// Every acknowledged value of each set-only key.
    acked_values: Mutex<Vec<Vec<String>>>,
    acked: AtomicU64,
    failed: AtomicU64,
    unexpected: Mutex<Vec<String>>,
}

fn node_of(state: &Path, address: &str) -> (String, u32) {
    let nodes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("nodes.json")).unwrap()).unwrap();
    let node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["api_addr"] == address)
        .unwrap_or_else(|| panic!("the leader {address} is not in nodes.json"));
    (
        node["name"].as_str().unwrap().to_owned(),
        node["pid"].as_u64().unwrap() as u32,
    )
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The tests of this binary take turns: each one breaks a node.
static CLUSTER: Mutex<()> = Mutex::new(());

fn script(args: &[&str], state: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openbao");
    let status = std::process::Command::new(script)
        .args(args)
        .env("KEYSHARE_OPENBAO_STATE", state.parent().unwrap())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/openbao {args:?} failed");
}

fn signal(sig: &str, pid: u32) -> bool {
    std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Resumes a stopped node even when the test fails half-way.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal("-CONT", self.0);
    }
}

#[test]
fn stalled_and_sealed_nodes_are_skipped_within_the_time_bounds() {
    let _turn = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = support::raft() else {
        return;
    };
    let state = server
        .state_dir
        .clone()
        .expect("KEYSHARE_TEST_OPENBAO_RAFT_STATE is set");
    let observer = server.store(&unique_prefix("observer"));
    let leader = observer.probe().leader.expect("the cluster has a leader");
    let standby = server
        .addresses
        .iter()
        .find(|a| **a != leader)
        .unwrap()
        .clone();
    let (name, pid) = node_of(&state, &standby);
    let prefix = unique_prefix("bad-node");
    // A store over `addresses` with short bounds.
    let store_with = |addresses: Vec<String>, timeout: Duration| {
        let mut config = server.config(&prefix);
        config.addresses = addresses;
        config.request_timeout = Duration::from_millis(300);
        config.connect_timeout = Duration::from_millis(300);
        config.timeout = timeout;
        OpenBaoStore::new(config, Server::credentials(&server.root_token)).unwrap()
    };
    let bad_first: Vec<String> = std::iter::once(standby.clone())
        .chain(server.addresses.iter().filter(|a| **a != standby).cloned())
        .collect();

    // Stalled: the kernel still accepts connections, nothing answers.
    assert!(signal("-STOP", pid), "kill -STOP {pid}");
    {
        let _resume = Resume(pid);
        let store = store_with(bad_first.clone(), Duration::from_secs(5));
        store.set(&key("k"), &value("v1")).unwrap();
        assert_eq!(
            store.get(&key("k")).unwrap().unwrap().expose_secret(),
            b"v1"
        );
        let alone = store_with(vec![standby.clone()], Duration::from_secs(1));
        let started = Instant::now();
        let err = alone.get(&key("k")).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    reason: UnavailableReason::TimedOut,
                    ..
                }
            ),
            "{err}"
        );
        assert!(took < Duration::from_secs(3), "a 1s call took {took:?}");
    }

    // Sealed: the node restarts and stays sealed.
    assert!(signal("-9", pid), "kill -9 {pid}");
    wait_for(
        "the killed node to be gone",
        Duration::from_secs(10),
        || !signal("-0", pid),
    );
    script(&["restart-node", &name, "--sealed"], &state);
    let sealed = observer.probe();
    let node = sealed.nodes.iter().find(|n| n.address == standby).unwrap();
    assert_eq!(node.state, NodeState::Sealed, "{:?}", sealed.nodes);
    let store = store_with(bad_first, Duration::from_secs(5));
    store.set(&key("k"), &value("v2")).unwrap();
    assert_eq!(
        store.get(&key("k")).unwrap().unwrap().expose_secret(),
        b"v2"
    );
    let alone = store_with(vec![standby.clone()], Duration::from_millis(500));
    let err = alone.get(&key("k")).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                reason: UnavailableReason::Locked,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("unseal"), "{err}");

    script(&["restart-node", &name], &state);
    let healthy = observer.probe();
    assert!(
        healthy
            .nodes
            .iter()
            .all(|n| matches!(n.state, NodeState::Active | NodeState::Standby)),
        "{:?}",
        healthy.nodes
    );
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let _turn = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let Some(server) = support::raft() else {
        return;
    };
    let state = server
        .state_dir
        .clone()
        .expect("KEYSHARE_TEST_OPENBAO_RAFT_STATE names the cluster's state directory");
    let prefix = unique_prefix("failover");
    let observer = server.store(&unique_prefix("observer"));
    let old_leader = observer.probe().leader.expect("the cluster has a leader");
    let (name, pid) = node_of(&state, &old_leader);

    // Two clients ("machines"), each with its own store, the node list in a different order.
    let clients: Vec<Client> = (0..2)
        .map(|c| {
            let mut config = server.config(&format!("{prefix}/c{c}"));
            config.addresses.rotate_left(c);
            Client {
                store: OpenBaoStore::new(config, Server::credentials(&server.root_token)).unwrap(),
                allowed: Mutex::new(vec![HashSet::from([None]); KEYS_PER_CLIENT]),
                acked_values: Mutex::new(vec![Vec::new(); SET_ONLY_KEYS]),
                acked: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                unexpected: Mutex::default(),
            }
        })
        .collect();
    // Keep every version of the set-only keys, so their whole history can be checked.
    let admin = server.admin();
    for c in 0..clients.len() {
        for i in 0..SET_ONLY_KEYS {
            admin.must_post(
                &format!("secret/metadata/{prefix}/c{c}/k{i}"),
                serde_json::json!({ "max_versions": 100000 }),
            );
        }
    }
    let stop = AtomicBool::new(false);
    let mut acked_after_new_leader = [0u64; 2];

    std::thread::scope(|scope| {
        for client in &clients {
            let stop = &stop;
            scope.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) && n < 100_000 {
                    n += 1;
                    let i = (n as usize) % KEYS_PER_CLIENT;
                    let k = key(&format!("k{i}"));
                    // Writes, and on the last keys every other operation a delete.
                    let (result, outcome) = if i >= SET_ONLY_KEYS && n.is_multiple_of(2) {
                        (client.store.delete(&k).map(|_| ()), None)
                    } else {
                        let v = format!("v{n}");
                        (client.store.set(&k, &value(&v)), Some(v))
                    };
                    let mut allowed = client.allowed.lock().unwrap();
                    match result {
                        Ok(()) => {
                            if let (Some(v), true) = (&outcome, i < SET_ONLY_KEYS) {
                                client.acked_values.lock().unwrap()[i].push(v.clone());
                            }
                            allowed[i] = HashSet::from([outcome]);
                            client.acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            allowed[i].insert(outcome);
                            if client.failed.fetch_add(1, Ordering::SeqCst) < 3 {
                                eprintln!("during failover: {e}");
                            }
                            if !matches!(e, Error::Unavailable { .. }) {
                                client.unexpected.lock().unwrap().push(e.to_string());
                            }
                        }
                    }
                }
            });
        }

        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(
                "both clients to write before the kill",
                Duration::from_secs(60),
                || {
                    clients
                        .iter()
                        .all(|c| c.acked.load(Ordering::SeqCst) >= WRITES_PER_PHASE)
                },
            );
            let status = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success(), "kill -9 {pid} ({name}) failed");
            eprintln!("killed the leader {name} ({old_leader}, pid {pid})");
            wait_for("a new leader", Duration::from_secs(60), || {
                observer.probe().leader.is_some_and(|l| l != old_leader)
            });
            let new_leader = observer.probe().leader;
            eprintln!("new leader: {new_leader:?}");
            let base: Vec<u64> = clients
                .iter()
                .map(|c| c.acked.load(Ordering::SeqCst))
                .collect();
            wait_for(
                "both clients to continue on the new leader",
                Duration::from_secs(60),
                || {
                    clients
                        .iter()
                        .zip(&base)
                        .all(|(c, b)| c.acked.load(Ordering::SeqCst) >= b + WRITES_PER_PHASE)
                },
            );
            for (i, c) in clients.iter().enumerate() {
                acked_after_new_leader[i] = c.acked.load(Ordering::SeqCst) - base[i];
            }
        }));
        stop.store(true, Ordering::SeqCst);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    });

    // Every acknowledged write is there: each key reads as its last acknowledged value (or a
    // later write whose acknowledgement was lost), through either client, i.e. any node.
    for (c, client) in clients.iter().enumerate() {
        let unexpected = client.unexpected.lock().unwrap();
        assert!(
            unexpected.is_empty(),
            "client {c}: errors other than Unavailable: {unexpected:?}"
        );
        let allowed = client.allowed.lock().unwrap();
        for reader in &clients {
            let reader_store = OpenBaoStore::new(
                {
                    let mut cfg = reader.store.config().clone();
                    cfg.prefix = client.store.config().prefix.clone();
                    cfg
                },
                Server::credentials(&server.root_token),
            )
            .unwrap();
            for (i, allowed) in allowed.iter().enumerate() {
                let got = reader_store
                    .get(&key(&format!("k{i}")))
                    .unwrap()
                    .map(|v| String::from_utf8(v.expose_secret().to_vec()).unwrap());
                assert!(
                    allowed.contains(&got),
                    "client {c} key k{i}: read {got:?}, but the last acknowledged state allows only {allowed:?}"
                );
            }
        }
        eprintln!(
            "client {c}: {} acknowledged, {} failed (unavailable during the election), {} after the new leader",
            client.acked.load(Ordering::SeqCst),
            client.failed.load(Ordering::SeqCst),
            acked_after_new_leader[c]
        );
    }

    // Bring the killed node back so the cluster has three voters again.
    script(&["restart-node", &name], &state);

    // Every acknowledged write is a version in its key's history (read at the leader).
    let mut admin = server.admin();
    admin.address = observer.probe().leader.expect("a leader after the restart");
    for (c, client) in clients.iter().enumerate() {
        let acked_values = client.acked_values.lock().unwrap();
        for (i, acked) in acked_values.iter().enumerate() {
            let path = format!("{prefix}/c{c}/k{i}");
            let (status, meta) = admin.get(&format!("secret/metadata/{path}"));
            assert_eq!(status, 200, "{path}: {meta}");
            let current = meta["data"]["current_version"].as_u64().unwrap();
            let mut history = HashSet::new();
            for version in 1..=current {
                let (status, body) = admin.get(&format!("secret/data/{path}?version={version}"));
                assert_eq!(status, 200, "{path} version {version}: {body}");
                use base64::Engine as _;
                let b64 = body["data"]["data"]["value"].as_str().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap();
                history.insert(String::from_utf8(bytes).unwrap());
            }
            let lost: Vec<&String> = acked.iter().filter(|v| !history.contains(*v)).collect();
            assert!(
                lost.is_empty(),
                "client {c} key k{i}: acknowledged writes missing from the history: {lost:?}"
            );
        }
    }
}
