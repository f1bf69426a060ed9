//! systemd socket activation: the broker takes the socket it is passed (LISTEN_FDS) instead of
//! binding one, serves on it, and leaves the socket file to systemd when it stops.
//! `systemd-socket-activate` plays systemd's part.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use keyshare::{MemoryStore, SecretStorage, Store as _};
use keyshare_broker::daemon::{self, Daemon};
use keyshare_broker::BrokerState;

const DIR_ENV: &str = "KEYSHARE_ACTIVATION_DIR";

#[test]
#[ignore = "helper: started by systemd-socket-activate in `a_socket_activated_broker_serves`"]
fn activated_broker_child() {
    let dir = std::env::var_os(DIR_ENV).expect("run by the activation test");
    let paths = common::socket_of(Path::new(&dir));
    let daemon = Daemon::prepare(&paths).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async {
            let storage = SecretStorage::builder(Arc::new(MemoryStore::new())).build();
            let signal = daemon::shutdown_signal().unwrap();
            daemon.serve(BrokerState::new(storage), signal).await
        })
        .unwrap();
}

#[test]
fn a_socket_activated_broker_serves() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        common::skip_unless_ci("systemd-socket-activate (package systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    paths.ensure_dir().unwrap();
    let mut activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&paths.socket)
        // The activator passes on only the environment it is told to.
        .arg(format!("--setenv={DIR_ENV}={}", dir.path().display()))
        .arg(std::env::current_exe().unwrap())
        .args([
            "activated_broker_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Readiness: the activator says when it listens.
    let mut stderr = BufReader::new(activator.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Listening on") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "activator ended");
    }
    // The first connection starts the broker on the passed socket.
    let client =
        keyshare_broker::BlockingBrokerClient::new(keyshare_broker::ClientConfig::with_paths(
            paths.clone(),
            keyshare::AppId::new("code").unwrap(),
        ))
        .unwrap();
    client
        .set(
            &keyshare::SecretKey::new("k").unwrap(),
            &keyshare::SecretValue::from_slice(b"v"),
        )
        .unwrap();
    let status = client.status().unwrap();
    assert_eq!(
        status.pid,
        activator.id(),
        "the activator exec'd the broker"
    );
    assert_eq!(
        daemon::lock_holder_pid(&paths.instance_lock),
        Some(activator.id()),
        "an activated broker still holds the instance lock"
    );
    drop(client);
    // Stopped as `keyshare stop` does (SIGTERM), which tells that the socket stays.
    let stopped = keyshare_broker::stop::stop(&paths, std::time::Duration::from_secs(10)).unwrap();
    assert_eq!(
        stopped,
        keyshare_broker::stop::Stopped::Stopped {
            pid: activator.id(),
            socket: keyshare_broker::stop::SocketLeft::Socket
        }
    );
    assert!(activator.wait().unwrap().success());
    assert!(
        paths.socket.exists(),
        "the socket file belongs to systemd and is left in place"
    );
}
