//! The vault across processes: four writers on one vault file, one killed with SIGKILL in the
//! middle of its writes; and the passphrase read from `KEYSHARE_PASSPHRASE` in a child process
//! (the environment is per process, so tests never change their own).
//!
//! Children are this test binary itself, re-run with `KEYSHARE_VAULT_TEST_ROLE` set: the
//! `child_process_entry` test does the child's work then, and nothing in a normal run.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use keyshare::store::vault::{Argon2Params, VaultOptions};
use keyshare::{SecretKey, SecretValue, Store, VaultStore};

const ROLE: &str = "KEYSHARE_VAULT_TEST_ROLE";
const VAULT: &str = "KEYSHARE_VAULT_TEST_PATH";
const CHILD: &str = "KEYSHARE_VAULT_TEST_CHILD";
const WRITES: &str = "KEYSHARE_VAULT_TEST_WRITES";
/// Each writer cycles over this many keys of its own.
const KEYS_PER_CHILD: u64 = 16;

fn key_of(child: u64, n: u64) -> SecretKey {
    SecretKey::new(format!("c{child}-k{}", n % KEYS_PER_CHILD)).unwrap()
}

fn value_of(child: u64, n: u64) -> String {
    format!("c{child}-n{n}")
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

/// The child side. In a normal test run (no role set) it has nothing to do.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let path = std::env::var_os(VAULT).expect("vault path");
    match role.as_str() {
        "writer" => writer(Path::new(&path)),
        "passphrase-env" => passphrase_from_env(Path::new(&path)),
        other => panic!("unknown child role {other}"),
    }
}

/// Writes its keys in order, printing each write only after `set` acknowledged it.
fn writer(path: &Path) {
    let child = env_u64(CHILD);
    let writes = env_u64(WRITES);
    let mut options = VaultOptions::new(path, "dev.keyshare.shared-secrets");
    options.keys.passphrase_env = None;
    let store = VaultStore::open(options).unwrap();
    if let Some(notice) = store.notice() {
        eprintln!("NOTICE {notice}");
    }
    // Ends the harness's "test child_process_entry ... " line, so every ACK starts a line.
    println!("READY");
    for n in 0..writes {
        store
            .set(
                &key_of(child, n),
                &SecretValue::from(value_of(child, n).into_bytes()),
            )
            .unwrap();
        // stdout is line-buffered: the line is in the pipe before the next write starts.
        println!("ACK {child} {n}");
    }
}

/// Opens a passphrase vault with the passphrase from `KEYSHARE_PASSPHRASE` only.
fn passphrase_from_env(path: &Path) {
    let mut options = VaultOptions::new(path, "ns");
    options.keys.allow_key_file = false;
    options.keys.argon2 = Argon2Params {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
    let key = SecretKey::new("k").unwrap();
    match VaultStore::open(options) {
        Ok(store) => {
            if store.get(&key).unwrap().is_none() {
                store.set(&key, &SecretValue::from_slice(b"v")).unwrap();
            }
            println!("OPENED {:?}", store.protection());
        }
        Err(e) => println!("ERROR {e}"),
    }
}

fn private_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn spawn_child(role: &str, path: &Path, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(VAULT, path)
        .env_remove("KEYSHARE_PASSPHRASE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().unwrap()
}

enum Line {
    Ack(u64, u64),
    Notice,
    Other,
}

#[test]
fn four_writers_one_killed_lose_no_acknowledged_write() {
    const VICTIM: u64 = 0;
    const WRITES: u64 = 300;
    const KILL_AFTER: u64 = 40;

    let dir = private_tempdir();
    let path = dir.path().join("vault.db");
    let (tx, rx) = mpsc::channel();
    let mut children: Vec<Child> = (0..4u64)
        .map(|i| {
            // The victim never finishes on its own: only the SIGKILL stops it.
            let writes = if i == VICTIM { u64::MAX } else { WRITES };
            let mut child = spawn_child(
                "writer",
                &path,
                &[(CHILD, i.to_string()), (self::WRITES, writes.to_string())],
            );
            let stdout = child.stdout.take().unwrap();
            let stderr = child.stderr.take().unwrap();
            for (stream, is_err) in [
                (Box::new(stdout) as Box<dyn std::io::Read + Send>, false),
                (Box::new(stderr), true),
            ] {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines() {
                        let line = line.unwrap();
                        let parsed = match line.split(' ').collect::<Vec<_>>()[..] {
                            ["ACK", c, n] if !is_err => {
                                Line::Ack(c.parse().unwrap(), n.parse().unwrap())
                            }
                            ["NOTICE", ..] if is_err => Line::Notice,
                            _ => {
                                if is_err {
                                    eprintln!("child stderr: {line}");
                                }
                                Line::Other
                            }
                        };
                        let _ = tx.send(parsed);
                    }
                });
            }
            child
        })
        .collect();
    drop(tx);

    // Last acknowledged write number per child (writers go in order, so the last is the max).
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut notices = 0;
    let mut killed = false;
    for line in rx {
        match line {
            Line::Ack(child, n) => {
                last.insert(child, n);
                if child == VICTIM && n + 1 >= KILL_AFTER && !killed {
                    // `Child::kill` sends SIGKILL on Unix.
                    children[VICTIM as usize].kill().unwrap();
                    killed = true;
                }
            }
            Line::Notice => notices += 1,
            Line::Other => {}
        }
    }
    for (i, child) in children.iter_mut().enumerate() {
        let status = child.wait().unwrap();
        if i as u64 == VICTIM {
            assert_eq!(status.signal(), Some(9), "the victim was killed by SIGKILL");
        } else {
            assert!(status.success(), "writer {i} failed: {status}");
            assert_eq!(last.get(&(i as u64)), Some(&(WRITES - 1)));
        }
    }
    assert!(killed);
    assert_eq!(notices, 1, "exactly one process created the vault");

    let mut options = VaultOptions::new(&path, "dev.keyshare.shared-secrets");
    options.keys.passphrase_env = None;
    let store = VaultStore::open(options).unwrap();
    for child in 0..4u64 {
        let last_acked = last[&child];
        for slot in 0..KEYS_PER_CHILD {
            let key = key_of(child, slot);
            let got = store
                .get(&key)
                .unwrap()
                .map(|v| String::from_utf8(v.expose_secret().to_vec()).unwrap());
            // The last acknowledged write of this key, if any.
            let acked = (0..=last_acked)
                .rev()
                .find(|n| n % KEYS_PER_CHILD == slot)
                .map(|n| value_of(child, n));
            let mut allowed = vec![acked.clone()];
            if child == VICTIM && (last_acked + 1) % KEYS_PER_CHILD == slot {
                // The write in flight when the SIGKILL landed may or may not have committed.
                allowed.push(Some(value_of(child, last_acked + 1)));
            }
            assert!(
                allowed.contains(&got),
                "{key}: found {got:?}, allowed {allowed:?}"
            );
        }
    }
    drop(store);
    let check: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

fn run_passphrase_child(path: &Path, passphrase: Option<&str>) -> String {
    let env: Vec<(&str, String)> = passphrase
        .map(|p| vec![("KEYSHARE_PASSPHRASE", p.to_owned())])
        .unwrap_or_default();
    let output = spawn_child("passphrase-env", path, &env)
        .wait_with_output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // With --nocapture the harness's "test child_process_entry ... " precedes the child's
    // first line on the same line.
    let stdout = String::from_utf8(output.stdout).unwrap();
    stdout
        .lines()
        .find_map(|l| {
            l.find("OPENED ")
                .or_else(|| l.find("ERROR "))
                .map(|at| l[at..].to_owned())
        })
        .unwrap_or_default()
}

#[test]
fn passphrase_comes_from_the_environment() {
    let dir = private_tempdir();
    let path = dir.path().join("vault.db");

    let created = run_passphrase_child(&path, Some("correct horse"));
    assert_eq!(created, "OPENED Passphrase");

    let wrong = run_passphrase_child(&path, Some("battery staple"));
    assert!(wrong.starts_with("ERROR"), "{wrong}");
    assert!(wrong.contains("passphrase does not unlock"), "{wrong}");
    assert!(!wrong.contains("battery"), "{wrong}");

    let missing = run_passphrase_child(&path, None);
    assert!(missing.contains("KEYSHARE_PASSPHRASE"), "{missing}");

    let empty = run_passphrase_child(&path, Some(""));
    assert!(empty.contains("empty"), "{empty}");

    // The same passphrase through a prompt opens what the environment variable created.
    let mut options = VaultOptions::new(&path, "ns");
    options.keys.passphrase_env = None;
    options.keys.passphrase_prompt = Some(std::sync::Arc::new(|_| {
        Ok(Some(SecretValue::from_slice(b"correct horse")))
    }));
    let store = VaultStore::open(options).unwrap();
    assert_eq!(
        store
            .get(&SecretKey::new("k").unwrap())
            .unwrap()
            .unwrap()
            .expose_secret(),
        b"v"
    );
}
