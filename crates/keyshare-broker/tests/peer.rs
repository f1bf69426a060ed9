//! A connection from another user is refused (and the refusal says why), even when file
//! permissions would let it through: the peer-credential check is the second lock.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;

use keyshare_broker::protocol::{self, ErrorCode, ServerFrame};

use common::TestBroker;

const SOCKET_ENV: &str = "KEYSHARE_PEER_SOCKET";
const NOBODY: u32 = 65534;

/// Connects, says hello, prints what the broker answered.
#[test]
#[ignore = "helper: run as another user by `another_uid_is_refused`"]
fn peer_child() {
    let socket = std::env::var_os(SOCKET_ENV).expect("run by the peer test");
    let mut stream = UnixStream::connect(socket).expect("the socket is open to everyone");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let hello =
        br#"{"id":0,"op":"hello","client":"peer","client_version":"1","protocol":1,"app":"code"}"#;
    // The broker may refuse (and close) before the hello is even written: a failed write is
    // expected then, and the refusal is still there to read.
    let _ = stream
        .write_all(&(hello.len() as u32).to_be_bytes())
        .and_then(|()| stream.write_all(hello));
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).unwrap();
    println!("\nREPLY {}", String::from_utf8(body).unwrap());
    // Then the broker closes the connection.
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap_or(0), 0);
    println!("CLOSED");
}

#[test]
fn another_uid_is_refused() {
    if !rustix::process::geteuid().is_root() {
        common::skip_unless_ci("root (to run a client as another user with setpriv)");
        return;
    }
    let broker = TestBroker::memory();
    // Open the directory and socket to everyone, so that only the broker's own check stands
    // between the other user and the store.
    std::fs::set_permissions(broker.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&broker.paths.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&broker.paths.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    // A copy of this test binary that the other user can run wherever the build lives.
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("peer-client");
    std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let output = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(&bin)
        .args(["peer_child", "--exact", "--ignored", "--nocapture"])
        .env(SOCKET_ENV, &broker.paths.socket)
        .current_dir(bin_dir.path())
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client as nobody failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply = stdout
        .lines()
        .find_map(|l| l.strip_prefix("REPLY "))
        .expect("a reply line");
    assert!(stdout.contains("CLOSED"), "{stdout}");
    match protocol::decode::<ServerFrame>(reply.as_bytes()).unwrap() {
        ServerFrame::Error { id: None, error } => {
            assert_eq!(error.code, ErrorCode::Denied);
            assert!(
                error.message.contains(&format!("you are uid {NOBODY}")),
                "{}",
                error.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The broker's own user is still served.
    keyshare::Store::keys(&broker.client("code")).unwrap();
}

const LISTEN_ENV: &str = "KEYSHARE_PEER_LISTEN";

/// Another user's stand-in for a broker: listens at the socket path it is given, answers
/// nothing, and prints how many bytes each of two connections sent before closing.
#[test]
#[ignore = "helper: run as another user by `a_socket_another_user_serves_gets_nothing`"]
fn foreign_listener_child() {
    let socket = std::path::PathBuf::from(std::env::var_os(LISTEN_ENV).expect("run by the test"));
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    println!("\nLISTENING");
    for _ in 0..2 {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let _ = conn.read_to_end(&mut got);
        println!("GOT {}", got.len());
    }
}

// Found by QA: the clients sent hello, the app id and the value to whatever socket was at the
// path, so another user able to write where XDG_RUNTIME_DIR points (a shared /tmp) received
// secrets and could answer reads. Both clients now refuse a socket another user serves before
// writing anything.
#[test]
fn a_socket_another_user_serves_gets_nothing() {
    use std::io::BufRead;
    if !rustix::process::geteuid().is_root() {
        common::skip_unless_ci("root (to serve a socket as another user with setpriv)");
        return;
    }
    // A directory everyone may write, as a shared /tmp is.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let paths = common::socket_of(shared.path());
    // The broker directory is this user's (another user's is refused before connecting), but
    // others may create files in it.
    std::fs::create_dir(&paths.dir).unwrap();
    std::fs::set_permissions(&paths.dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bin_dir.path().join("foreign-listener");
    std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg(&bin)
        .args([
            "foreign_listener_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(LISTEN_ENV, &paths.socket)
        .current_dir(bin_dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) runs");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.unwrap() == "LISTENING"));

    let config = keyshare_broker::ClientConfig::with_paths(
        paths.clone(),
        keyshare::AppId::new("code").unwrap(),
    );
    let token = keyshare::SecretValue::from_slice(b"my-github-token");
    let key = keyshare::SecretKey::new("github.auth").unwrap();
    let one_shot = keyshare_broker::OneShotClient::new(config.clone());
    let err = keyshare::Store::set(&one_shot, &key, &token).unwrap_err();
    let blocking = keyshare_broker::BlockingBrokerClient::new(config).unwrap();
    let err2 = keyshare::Store::set(&blocking, &key, &token).unwrap_err();
    for err in [err, err2] {
        let text = err.to_string();
        assert!(
            text.contains(&format!("another user (uid {NOBODY}) serves it"))
                && text.contains("nothing was sent"),
            "{text}"
        );
        assert!(
            matches!(err, keyshare::Error::ProtectionUnavailable(_)),
            "{err:?}"
        );
        assert!(!text.contains("refused access"), "{text}");
    }
    let got: Vec<String> = lines
        .map(|l| l.unwrap())
        .filter(|l| l.starts_with("GOT"))
        .collect();
    assert_eq!(got, ["GOT 0", "GOT 0"], "the other user received bytes");
    assert!(child.wait().unwrap().success());
}
