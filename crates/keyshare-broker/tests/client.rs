//! The clients' robustness around the broker's life cycle: a stuck autostart, and a broker that
//! closes a connection before answering hello (an idle broker exiting as a client connects).

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use keyshare::{Error, SecretKey, SecretValue, Store, UnavailableReason};
use keyshare_broker::client::Autostart;
use keyshare_broker::daemon::{BrokerPaths, FileLock};
use keyshare_broker::{BlockingBrokerClient, ClientConfig, OneShotClient};

fn k(s: &str) -> SecretKey {
    SecretKey::new(s).unwrap()
}

fn v(s: &str) -> SecretValue {
    SecretValue::from_slice(s.as_bytes())
}

fn config(paths: &BrokerPaths) -> ClientConfig {
    ClientConfig::with_paths(paths.clone(), keyshare::AppId::new("code").unwrap())
}

/// `err` says that no broker took the request (the reason commands exit 3 with).
fn assert_not_running(err: &Error) {
    assert!(
        matches!(
            err,
            Error::Unavailable {
                reason: UnavailableReason::NotRunning,
                ..
            }
        ),
        "{err:?}"
    );
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
        prefer_own_executable: false,
        args: vec!["-c".into(), "exit 3".into()],
        env: vec![],
        ready_timeout: Duration::from_millis(300),
        passphrase_on_stdin: false,
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
        prefer_own_executable: false,
        args: vec![
            "-c".into(),
            r#"echo "holder: $(cat "$0")" >&2; exit 3"#.into(),
            paths.startup_lock.clone().into(),
        ],
        env: vec![],
        ready_timeout: Duration::from_secs(30),
        passphrase_on_stdin: false,
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

/// What a broker does with the first connection it accepts, before it drops it.
#[derive(Clone, Copy, Debug)]
enum First {
    /// Drops it unread: what a broker's exit does to a connection still in its listener's
    /// backlog (the client sees a reset).
    CloseUnread,
    /// Reads what arrived, then closes it without a word (the client sees the end of the
    /// stream before any reply).
    ReadAndClose,
    /// Reads one frame (hello), then closes it.
    ReadOneFrameAndClose,
    /// Answers hello, reads the next frame, then closes it without answering that.
    AnswerHelloThenClose,
}

/// What the first connection sent: its frames, and whether more bytes were waiting behind
/// the frames read.
#[derive(Debug)]
struct FirstSeen {
    frames: Vec<serde_json::Value>,
    more_waiting: bool,
}

/// A socket whose first connection is handled as `first` says and dropped, like a broker that
/// exits (idle) just as a client connects; every later connection is served by a real broker
/// over `storage`, on the same listener.
struct FlakyBroker {
    storage: keyshare::SecretStorage,
    first_seen: mpsc::Receiver<FirstSeen>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn read_frame(conn: &mut std::os::unix::net::UnixStream) -> serde_json::Value {
    use std::io::Read;
    let mut header = [0u8; 4];
    conn.read_exact(&mut header).unwrap();
    let mut body = vec![0; u32::from_be_bytes(header) as usize];
    conn.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn bytes_waiting(conn: &std::os::unix::net::UnixStream) -> bool {
    use rustix::net::{recv, RecvFlags};
    let mut byte = [0u8; 1];
    matches!(
        recv(conn, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT),
        Ok((_, n)) if n > 0
    )
}

impl FlakyBroker {
    /// The value the broker's storage holds for `key` (which must be there).
    fn stored(&self, key: &str) -> Vec<u8> {
        let value = self.storage.get(&k(key)).unwrap();
        value.expect("no value stored").expose_secret().to_vec()
    }

    fn start(paths: &BrokerPaths, first: First) -> FlakyBroker {
        use keyshare_broker::protocol::{encode, Reply, ServerFrame, PROTOCOL_VERSION};
        use std::io::{Read, Write};
        paths.ensure_dir().unwrap();
        let storage =
            keyshare::SecretStorage::builder(std::sync::Arc::new(keyshare::MemoryStore::new()))
                .build();
        let listener = std::os::unix::net::UnixListener::bind(&paths.socket).unwrap();
        let (seen_tx, first_seen) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = keyshare_broker::BrokerState::new(storage.clone());
        let thread = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut frames = Vec::new();
            match first {
                First::CloseUnread => {}
                First::ReadAndClose => {
                    let mut buf = vec![0; 64 * 1024];
                    let n = conn.read(&mut buf).unwrap();
                    let mut rest = &buf[..n];
                    while rest.len() >= 4 {
                        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                        frames.push(serde_json::from_slice(&rest[4..4 + len]).unwrap());
                        rest = &rest[4 + len..];
                    }
                }
                First::ReadOneFrameAndClose => frames.push(read_frame(&mut conn)),
                First::AnswerHelloThenClose => {
                    frames.push(read_frame(&mut conn));
                    let hello = ServerFrame::Reply {
                        id: 0,
                        reply: Reply::Hello {
                            server: "flaky".into(),
                            server_version: "0".into(),
                            protocol: PROTOCOL_VERSION,
                            store: None,
                            keeps_change_times: false,
                        },
                    };
                    conn.write_all(&encode(&hello).unwrap()).unwrap();
                    frames.push(read_frame(&mut conn));
                }
            }
            let more_waiting = bytes_waiting(&conn);
            drop(conn);
            seen_tx
                .send(FirstSeen {
                    frames,
                    more_waiting,
                })
                .unwrap();
            listener.set_nonblocking(true).unwrap();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime
                .block_on(async move {
                    let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                    keyshare_broker::run(
                        listener,
                        async {
                            let _ = stopped.await;
                        },
                        state,
                    )
                    .await
                })
                .unwrap();
        });
        FlakyBroker {
            storage,
            first_seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn first_seen(&self) -> FirstSeen {
        self.first_seen
            .recv_timeout(Duration::from_secs(10))
            .expect("the first connection was handled")
    }
}

impl Drop for FlakyBroker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if !std::thread::panicking() {
                thread.join().unwrap();
            }
        }
    }
}

fn ops(seen: &FirstSeen) -> Vec<&str> {
    seen.frames
        .iter()
        .map(|f| f["op"].as_str().unwrap())
        .collect()
}

/// A read whose connection ends before hello is answered is asked again on a new connection:
/// the broker was going away (or never took the connection), and a read is safe to repeat.
#[test]
fn a_one_shot_read_is_asked_again_when_the_broker_closes_before_hello() {
    for first in [First::CloseUnread, First::ReadAndClose] {
        let dir = tempfile::tempdir().unwrap();
        let paths = common::socket_of(dir.path());
        let broker = FlakyBroker::start(&paths, first);
        broker.storage.set(&k("k"), &v("token")).unwrap();
        let client = OneShotClient::new(config(&paths));
        let got = client.get(&k("k"));
        assert_eq!(
            got.unwrap_or_else(|e| panic!("{first:?}: {e}"))
                .unwrap()
                .expose_secret(),
            b"token",
            "{first:?}"
        );
        let seen = broker.first_seen();
        if let First::ReadAndClose = first {
            // The read rode with hello, as it always does.
            assert_eq!(ops(&seen), ["hello", "get"]);
        }
    }
}

/// A write on a new connection waits for hello's answer before it is sent, so that when the
/// connection ends before that answer the write certainly was not made, and is sent (once)
/// on a new connection.
#[test]
fn a_one_shot_write_is_sent_after_hello_and_once_when_the_broker_closes_before_hello() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    let broker = FlakyBroker::start(&paths, First::ReadOneFrameAndClose);
    let client = OneShotClient::new(config(&paths));
    client.set(&k("k"), &v("token")).unwrap();
    let seen = broker.first_seen();
    assert_eq!(ops(&seen), ["hello"]);
    assert!(!seen.more_waiting, "the set was sent before hello's answer");
    assert_eq!(broker.stored("k"), b"token");

    let broker = {
        drop(broker);
        let _ = std::fs::remove_file(&paths.socket);
        FlakyBroker::start(&paths, First::ReadOneFrameAndClose)
    };
    broker.storage.set(&k("k"), &v("token")).unwrap();
    let client = OneShotClient::new(config(&paths));
    assert!(client.delete(&k("k")).unwrap(), "deleted");
    assert!(!broker.first_seen().more_waiting);
    assert_eq!(broker.storage.get(&k("k")).unwrap(), None);
}

/// A write whose connection ends after hello's answer may have been made: it is reported as
/// failed and never sent again (another app may have written or deleted the key since, and a
/// replay would undo that).
#[test]
fn a_write_whose_connection_ends_after_hello_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    let broker = FlakyBroker::start(&paths, First::AnswerHelloThenClose);
    let err = OneShotClient::new(config(&paths))
        .set(&k("k"), &v("secret-value"))
        .unwrap_err();
    assert_not_running(&err);
    assert!(!err.to_string().contains("secret-value"), "{err}");
    assert_eq!(ops(&broker.first_seen()), ["hello", "set"]);
    assert_eq!(broker.storage.get(&k("k")).unwrap(), None);
    drop(broker);

    let _ = std::fs::remove_file(&paths.socket);
    let broker = FlakyBroker::start(&paths, First::AnswerHelloThenClose);
    broker.storage.set(&k("k"), &v("kept")).unwrap();
    let client = BlockingBrokerClient::new(config(&paths)).unwrap();
    client.delete(&k("k")).unwrap_err();
    assert_eq!(ops(&broker.first_seen()), ["hello", "delete"]);
    assert_eq!(broker.stored("k"), b"kept");
}

/// The async client says hello before any request, so a connection that ends before hello's
/// answer carried nothing else: it connects again, whatever the request.
#[test]
fn the_async_client_connects_again_when_the_broker_closes_before_hello() {
    for first in [First::CloseUnread, First::ReadOneFrameAndClose] {
        let dir = tempfile::tempdir().unwrap();
        let paths = common::socket_of(dir.path());
        let broker = FlakyBroker::start(&paths, first);
        let client = BlockingBrokerClient::new(config(&paths)).unwrap();
        client
            .set(&k("k"), &v("token"))
            .unwrap_or_else(|e| panic!("{first:?}: {e}"));
        assert_eq!(broker.stored("k"), b"token");
    }
}

const CHILD_DIR: &str = "KEYSHARE_TEST_CLIENT_BROKER_DIR";

/// Run by the tests here as the autostarted broker: what `keyshare serve --autostarted` does,
/// over a memory store, until SIGTERM.
#[test]
#[ignore = "helper: runs as a child process of another test"]
fn autostarted_broker_child() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by a test of this file");
    let paths = common::socket_of(std::path::Path::new(&dir));
    let daemon = keyshare_broker::daemon::Daemon::prepare(&paths).unwrap();
    keyshare_broker::daemon::notify_ready_on_stdout().unwrap();
    let storage =
        keyshare::SecretStorage::builder(std::sync::Arc::new(keyshare::MemoryStore::new())).build();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async {
            // Inside the runtime: the signal handlers register with it.
            let stop = keyshare_broker::daemon::shutdown_signal().unwrap();
            daemon
                .serve(keyshare_broker::BrokerState::new(storage), stop)
                .await
        })
        .unwrap();
}

fn autostart_child(dir: &std::path::Path) -> Autostart {
    let child = common::child_test("autostarted_broker_child");
    Autostart {
        program: child.get_program().into(),
        prefer_own_executable: false,
        args: child.get_args().map(Into::into).collect(),
        env: vec![(CHILD_DIR.into(), dir.into())],
        ready_timeout: Duration::from_secs(30),
        passphrase_on_stdin: false,
    }
}

/// Stops the broker that holds the instance lock, and waits until it is gone.
fn stop_broker(paths: &BrokerPaths) {
    let pid = keyshare_broker::daemon::lock_holder_pid(&paths.instance_lock).unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    drop(FileLock::acquire(&paths.instance_lock).unwrap());
}

/// A broker exiting (idle) closes its listener first and releases its instance lock only when
/// its process ends. A client that meets that moment waits for it to go before it starts the
/// next one, which would otherwise find the lock taken and fail ("another broker already
/// serves"), and the client with it.
#[test]
fn autostart_waits_for_a_broker_on_its_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    paths.ensure_dir().unwrap();
    // The exiting broker: no socket any more, the instance lock still held.
    let exiting = FileLock::try_acquire(&paths.instance_lock)
        .unwrap()
        .unwrap();
    let gone = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(exiting);
    });
    let client = OneShotClient::new(config(&paths).autostart(Some(autostart_child(dir.path()))));
    let got = within(Duration::from_secs(30), move || client.get(&k("k")));
    gone.join().unwrap();
    assert_eq!(got.unwrap(), None);
    stop_broker(&paths);
}

/// A value over what a request can carry is `TooLarge` with the protocol's value limit, not
/// `Unavailable` ("frame of ... bytes is over the limit", which an app retries forever), from
/// every client and for a repair's conditional write too; a request over the frame limit for
/// another reason (a subscription to very many keys) is `Invalid`, not an outage (found in an
/// API review).
#[test]
fn a_value_no_request_can_carry_is_too_large_and_not_an_outage() {
    use keyshare_broker::protocol::{MAX_FRAME_LEN, MAX_VALUE_LEN};
    use keyshare_broker::BrokerClient;

    let broker = common::TestBroker::memory();
    let blocking = broker.client("code");
    let one_shot = OneShotClient::new(broker.config("code"));
    let huge = SecretValue::from(vec![7u8; 1_200_000]);
    let just_over = SecretValue::from(vec![7u8; MAX_VALUE_LEN + 1]);
    let too_large = |err: Error, actual: usize| match err {
        Error::TooLarge { limit, actual: got } => {
            assert_eq!((limit, got), (MAX_VALUE_LEN, actual));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    };
    let stores: [&dyn Store; 2] = [&blocking, &one_shot];
    for store in stores {
        for value in [&huge, &just_over] {
            too_large(store.set(&k("big"), value).unwrap_err(), value.len());
            too_large(
                store
                    .write_unless_changed_after(
                        &k("big"),
                        Some(value),
                        std::time::SystemTime::now(),
                    )
                    .unwrap_err(),
                value.len(),
            );
        }
        // The client still works.
        store.set(&k("small"), &v("1")).unwrap();
        assert_eq!(store.get(&k("small")).unwrap(), Some(v("1")));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = BrokerClient::new(broker.config("code"));
        let err = client.set(&k("big"), &huge).await.unwrap_err();
        too_large(err.into_store_error(client.store_name()), huge.len());

        // 300 keys of 4096 bytes: over the frame limit with no value at all.
        let keys: Vec<SecretKey> = (0..300)
            .map(|i| k(&format!("{i:04}{}", "k".repeat(4092))))
            .collect();
        let err = client.subscribe(Some(keys)).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&MAX_FRAME_LEN.to_string()), "{text}");
        match err.into_store_error(client.store_name()) {
            Error::Invalid { .. } => {}
            other => panic!("expected Invalid, got {other:?}"),
        }
        // Nothing was sent: the connection serves on.
        client.set(&k("small"), &v("2")).await.unwrap();
    });
}

/// `AsyncSecretStorage` asks its shared store `keeps_change_times` from async code, and may run
/// the store's calls there too: over a `BlockingBrokerClient`, `Runtime::block_on` panicked
/// ("Cannot start a runtime from within a runtime"; found in an API review). Every `Store`
/// method of both blocking clients works from a task, and `keeps_change_times` answers from
/// what hello said, without connecting.
#[tokio::test]
async fn the_blocking_clients_work_from_async_code() {
    use keyshare::SecretStorage;
    use std::sync::Arc;
    use std::time::SystemTime;

    // Its memory store keeps change times, and its hello says so.
    let broker = common::TestBroker::memory();
    let one_shot = OneShotClient::new(broker.config("code"));
    let blocking = broker.client("code");
    let stores: [(&str, &dyn Store); 2] = [("blocking", &blocking), ("one-shot", &one_shot)];
    for (name, store) in stores {
        assert!(!store.keeps_change_times(), "{name}: not connected yet");
        let key = k(&format!("{name}.a"));
        store.set(&key, &v("1")).unwrap();
        assert_eq!(store.get(&key).unwrap(), Some(v("1")), "{name}");
        assert!(store.keys().unwrap().contains(&key), "{name}");
        assert!(store
            .write_unless_changed_after(&key, Some(&v("2")), SystemTime::now())
            .unwrap());
        assert!(store.delete(&key).unwrap(), "{name}");
        assert!(store.keeps_change_times(), "{name}: hello said so");
    }
    blocking.status().unwrap();
    assert!(blocking.hello().unwrap().keeps_change_times);
    let mut events = blocking.subscribe(Some(vec![k("watched")])).unwrap();
    blocking.set(&k("watched"), &v("1")).unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap();
    assert!(
        matches!(event, Some(keyshare::Notification::Changed(ref e)) if e.key == k("watched")),
        "{event:?}"
    );

    // The async face of a storage over a blocking client.
    let storage = SecretStorage::builder(Arc::new(broker.client("agents")))
        .build()
        .to_async();
    assert!(!storage.keeps_change_times());
    storage.set(&k("b"), &v("1")).await.unwrap();
    assert_eq!(storage.get(&k("b")).await.unwrap(), Some(v("1")));
    assert!(storage.keeps_change_times());
}

/// `keeps_change_times` never waits: not for a broker that does not answer, nor for another
/// thread's call that does (found in an API review: the one-shot client waited for the
/// connection, the other panicked in async code and blocked elsewhere).
#[test]
fn keeps_change_times_never_waits_for_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    paths.ensure_dir().unwrap();
    // Accepts connections (the backlog does), never answers.
    let _silent = std::os::unix::net::UnixListener::bind(&paths.socket).unwrap();
    let slow = config(&paths).timeout(Duration::from_secs(3));
    let one_shot = std::sync::Arc::new(OneShotClient::new(slow.clone()));
    let blocking = std::sync::Arc::new(BlockingBrokerClient::new(slow).unwrap());
    let stores: [std::sync::Arc<dyn Store>; 2] = [one_shot, blocking];
    for store in stores {
        let waiting = std::sync::Arc::clone(&store);
        let call = std::thread::spawn(move || waiting.get(&k("k")));
        std::thread::sleep(Duration::from_millis(200));
        let asked = Instant::now();
        assert!(!store.keeps_change_times());
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "keeps_change_times waited {:?}",
            asked.elapsed()
        );
        assert!(call.join().unwrap().is_err());
        let asked = Instant::now();
        assert!(!store.keeps_change_times());
        assert!(asked.elapsed() < Duration::from_millis(500));
    }
}

/// A write whose every connection ends before hello is answered was never sent: the error
/// says that nothing was done (found by QA: it said the write "may or may not have been
/// carried out", about a write only hello had gone ahead of).
#[test]
fn a_write_that_never_got_past_hello_says_nothing_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    paths.ensure_dir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&paths.socket).unwrap();
    let (seen_tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        // Reads hello, then closes without answering: an idle broker exiting, again and again.
        for conn in listener.incoming() {
            let mut conn = conn.unwrap();
            let _ = seen_tx.send(read_frame(&mut conn));
        }
    });
    let err = within(Duration::from_secs(20), move || {
        OneShotClient::new(config(&paths)).set(&k("k"), &v("token"))
    })
    .unwrap_err();
    assert_not_running(&err);
    assert!(err.to_string().contains("nothing was done"), "{err}");
    let frames: Vec<serde_json::Value> = seen.try_iter().collect();
    assert_eq!(
        frames.len(),
        2,
        "sent once more on a new connection: {frames:?}"
    );
    assert!(
        frames.iter().all(|frame| frame["op"] == "hello"),
        "{frames:?}"
    );
}

/// A broker that goes away before a write is sent, with no broker to send it to after: the
/// error says both, and that nothing was done (found by QA: it said only "no broker is
/// running", which read as if the command had not tried, when it could be run again).
#[test]
fn a_write_whose_broker_left_before_it_was_sent_says_so_and_that_nothing_was_done() {
    let dir = tempfile::tempdir().unwrap();
    let paths = common::socket_of(dir.path());
    paths.ensure_dir().unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&paths.socket).unwrap();
    let socket = paths.socket.clone();
    let (seen_tx, seen) = mpsc::channel();
    std::thread::spawn(move || {
        // One connection: reads hello, then the broker is gone, socket and all.
        let (mut conn, _) = listener.accept().unwrap();
        let hello = read_frame(&mut conn);
        std::fs::remove_file(&socket).unwrap();
        drop(listener);
        let _ = seen_tx.send(hello);
    });
    let err = within(Duration::from_secs(20), move || {
        OneShotClient::new(config(&paths)).set(&k("k"), &v("token"))
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("stopped before the request was sent")
            && text.contains("no broker is running")
            && text.contains("nothing was done"),
        "{text}"
    );
    assert_not_running(&err);
    assert_eq!(seen.recv().unwrap()["op"], "hello");
}
