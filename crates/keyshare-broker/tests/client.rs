//! The clients' robustness around the broker's life cycle: a stuck autostart, and a broker that
//! closes a connection before answering hello (an idle broker exiting as a client connects).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyshare::{Error, SecretKey, Store, UnavailableReason};
use keyshare_broker::client::Autostart;
use keyshare_broker::daemon::{BrokerPaths, FileLock};
use keyshare_broker::{BlockingBrokerClient, ClientConfig, OneShotClient};

fn k(s: &str) -> SecretKey {
    SecretKey::new(s).unwrap()
}

fn config(paths: &BrokerPaths) -> ClientConfig {
    ClientConfig::with_paths(paths.clone(), keyshare::AppId::new("code").unwrap())
}

/// Runs `call` on a thread of its own and waits at most `limit` for it: a client that waits
/// forever fails the test instead of hanging it.
fn within<T: Send + 'static>(limit: Duration, call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(call());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the client was still waiting after {limit:?}"))
}

/// A client that finds the startup lock held by another process that hangs gives up after a
/// bound, naming the lock and its holder, instead of waiting forever (and with it every command
/// and app of the flavour).
#[test]
fn autostart_gives_up_on_a_startup_lock_that_another_process_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    paths.ensure_dir().unwrap();
    // A broker program that would fail at once, should the client ever get to run it.
    let autostart = Autostart {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "exit 3".into()],
        env: vec![],
        ready_timeout: Duration::from_millis(300),
    };
    let with_autostart = config(&paths).autostart(Some(autostart));

    // The stuck holder: this process, holding the lock and recording its pid there as a
    // client does.
    let held = FileLock::try_acquire(&paths.startup_lock).unwrap().unwrap();
    std::fs::write(&paths.startup_lock, format!("{}\n", std::process::id())).unwrap();

    let one_shot = OneShotClient::new(with_autostart.clone());
    let started = Instant::now();
    let err = within(Duration::from_secs(10), move || {
        one_shot.get(&k("k")).unwrap_err()
    });
    let waited = started.elapsed();
    match &err {
        Error::Unavailable { reason, detail, .. } => {
            assert_eq!(*reason, UnavailableReason::TimedOut, "{err}");
            assert!(
                detail.contains(&paths.startup_lock.display().to_string()),
                "{detail}"
            );
            assert!(
                detail.contains(&format!("pid {}", std::process::id())),
                "{detail}"
            );
        }
        other => panic!("expected a timeout naming the lock, got {other:?}"),
    }
    assert!(waited >= Duration::from_millis(300), "{waited:?}");

    // The async client autostarts through the same code.
    let blocking = BlockingBrokerClient::new(with_autostart.clone()).unwrap();
    let err = within(Duration::from_secs(10), move || {
        blocking.get(&k("k")).unwrap_err().to_string()
    });
    assert!(
        err.contains(&paths.startup_lock.display().to_string()),
        "{err}"
    );
    drop(held);

    // A client that takes the lock records its own pid there while it starts the broker, so
    // that others can name it: this "broker" prints the lock file's content.
    let autostart = Autostart {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            r#"echo "holder: $(cat "$0")" >&2; exit 3"#.into(),
            paths.startup_lock.clone().into(),
        ],
        env: vec![],
        ready_timeout: Duration::from_secs(30),
    };
    let err = OneShotClient::new(config(&paths).autostart(Some(autostart)))
        .get(&k("k"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("holder: {}", std::process::id())),
        "{err}"
    );
}
