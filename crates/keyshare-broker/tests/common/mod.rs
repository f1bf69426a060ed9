//! Shared by the integration tests: an in-process broker on a temporary socket, and re-running
//! the test binary as a child process.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use keyshare::{AppId, Flavour, MemoryStore, SecretStorage};
use keyshare_broker::access::AccessPolicy;
use keyshare_broker::daemon::BrokerPaths;
use keyshare_broker::server::{run, BrokerState, ServerOptions};
use keyshare_broker::{BlockingBrokerClient, ClientConfig};

/// A broker serving on a temporary socket from its own thread and runtime, stopped (gracefully)
/// by `stop` or on drop.
pub struct TestBroker {
    pub dir: tempfile::TempDir,
    pub paths: BrokerPaths,
    pub storage: SecretStorage,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<keyshare::Result<()>>>,
}

pub fn flavour() -> Flavour {
    Flavour::with_default_service("stable").unwrap()
}

impl TestBroker {
    pub fn memory() -> TestBroker {
        Self::start(
            SecretStorage::builder(Arc::new(MemoryStore::new())).build(),
            AccessPolicy::default(),
            ServerOptions::default(),
        )
    }

    pub fn start(storage: SecretStorage, policy: AccessPolicy, options: ServerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(dir.path(), &flavour());
        paths.ensure_dir().unwrap();
        Self::start_at(dir, paths, storage, policy, options)
    }

    pub fn start_at(
        dir: tempfile::TempDir,
        paths: BrokerPaths,
        storage: SecretStorage,
        policy: AccessPolicy,
        options: ServerOptions,
    ) -> Self {
        let state = BrokerState::new(storage.clone())
            .with_policy(policy)
            .with_options(options);
        Self::start_state_at(dir, paths, storage, state)
    }

    /// Serves `state`, whose storage is `storage`.
    pub fn start_state(storage: SecretStorage, state: BrokerState) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let paths = BrokerPaths::under(dir.path(), &flavour());
        paths.ensure_dir().unwrap();
        Self::start_state_at(dir, paths, storage, state)
    }

    fn start_state_at(
        dir: tempfile::TempDir,
        paths: BrokerPaths,
        storage: SecretStorage,
        state: BrokerState,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let socket = paths.socket.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::UnixListener::bind(&socket).unwrap();
                ready_tx.send(()).unwrap();
                run(
                    listener,
                    async {
                        let _ = stopped.await;
                    },
                    state,
                )
                .await
            })
        });
        ready_rx.recv().expect("the broker thread bound its socket");
        TestBroker {
            dir,
            paths,
            storage,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn config(&self, app: &str) -> ClientConfig {
        ClientConfig::with_paths(self.paths.clone(), AppId::new(app).unwrap())
    }

    pub fn client(&self, app: &str) -> BlockingBrokerClient {
        BlockingBrokerClient::new(self.config(app)).unwrap()
    }

    /// Asks the server to stop and waits until `run` returned.
    pub fn stop(mut self) -> keyshare::Result<()> {
        self.stop_inner()
    }

    /// Sends the stop signal without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return on its own, without asking it to stop.
    pub fn wait_for_exit(mut self) -> keyshare::Result<()> {
        let thread = self.thread.take().expect("still running");
        thread.join().expect("the broker thread panicked")
    }

    /// Waits for `run` to return (after `signal_stop`).
    pub fn join(mut self) -> keyshare::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> keyshare::Result<()> {
        self.signal_stop();
        match self.thread.take() {
            Some(thread) => thread.join().expect("the broker thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = self.stop_inner();
        } else {
            self.signal_stop();
        }
    }
}

/// The test binary itself, running only the ignored helper test `name` (the helpers are
/// `#[ignore]`d so a normal run never counts them as passing tests).
pub fn child_test(name: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        name,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    cmd
}

/// The monotonic clock in nanoseconds: the same clock in every process of the machine, so
/// timestamps of different processes compare.
pub fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

pub fn socket_of(dir: &Path) -> BrokerPaths {
    BrokerPaths::under(dir, &flavour())
}

/// Whether the test may skip for lack of `what`: never in CI, where the test must fail.
pub fn skip_unless_ci(what: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required in CI");
    }
    eprintln!("\n!!! SKIPPED: {what} is not available here; CI runs this test !!!\n");
    true
}
