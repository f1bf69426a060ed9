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
