//! Per-key linearizability across processes: 2 client processes x 8 threads hammer 4 shared
//! keys through one broker; every operation's invocation and response times (on the machine's
//! monotonic clock) and values are recorded, and each key's history is checked.

mod common;
#[path = "common/linearizability.rs"]
mod linearizability;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::Arc;

use keyshare::{SecretKey, SecretValue, Store};

use common::{child_test, now_ns, TestBroker};
use linearizability::{check, Op};

const KEYS: usize = 4;
const PROCESSES: usize = 2;
const THREADS: usize = 8;
const OPS_PER_THREAD: usize = 150;
const DIR_ENV: &str = "KEYSHARE_HAMMER_DIR";
const PROC_ENV: &str = "KEYSHARE_HAMMER_PROCESS";

fn key(i: usize) -> SecretKey {
    SecretKey::new(format!("shared.{i}")).unwrap()
}

/// One process's share of the hammer: prints one `OP key write value invoked responded` line
/// per operation.
#[test]
#[ignore = "helper: runs as a child process of `two_processes_eight_threads_stay_linearizable`"]
fn hammer_child() {
    let dir = std::env::var_os(DIR_ENV).expect("run by the hammer test");
    let process: usize = std::env::var(PROC_ENV).unwrap().parse().unwrap();
    let paths = common::socket_of(std::path::Path::new(&dir));
    let client = Arc::new(
        keyshare_broker::BlockingBrokerClient::new(keyshare_broker::ClientConfig::with_paths(
            paths,
            keyshare::AppId::new(format!("hammer{process}")).unwrap(),
        ))
        .unwrap(),
    );
    let lines: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let client = Arc::clone(&client);
                s.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed((process * 100 + thread) as u64);
                    let mut out = Vec::new();
                    for i in 0..OPS_PER_THREAD {
                        let k = rng.usize(..KEYS);
                        if rng.bool() {
                            let value = format!("p{process}-t{thread}-{i}");
                            let invoked = now_ns();
                            client
                                .set(&key(k), &SecretValue::from_slice(value.as_bytes()))
                                .unwrap();
                            let responded = now_ns();
                            out.push(format!("OP {k} w {value} {invoked} {responded}"));
                        } else {
                            let invoked = now_ns();
                            let got = client.get(&key(k)).unwrap().expect("keys are never empty");
                            let responded = now_ns();
                            let value = String::from_utf8(got.expose_secret().to_vec()).unwrap();
                            out.push(format!("OP {k} r {value} {invoked} {responded}"));
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    for line in lines {
        println!("{line}");
    }
}

#[test]
fn two_processes_eight_threads_stay_linearizable() {
    let broker = TestBroker::memory();
    let client = broker.client("parent");
    let mut histories: HashMap<usize, Vec<Op>> = HashMap::new();
    for k in 0..KEYS {
        let value = format!("init-{k}");
        let invoked = now_ns();
        client
            .set(&key(k), &SecretValue::from_slice(value.as_bytes()))
            .unwrap();
        histories
            .entry(k)
            .or_default()
            .push(Op::write(&value, invoked, now_ns()));
    }
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            child_test("hammer_child")
                .env(DIR_ENV, broker.dir.path())
                .env(PROC_ENV, p.to_string())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ops = 0;
    for mut child in children {
        let stdout = child.stdout.take().unwrap();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest may print its progress text on the same line as the first record.
            let Some(record) = line.find("OP ").map(|at| &line[at + 3..]) else {
                continue;
            };
            let f: Vec<&str> = record.split(' ').collect();
            let op = Op {
                write: f[1] == "w",
                value: f[2].to_owned(),
                invoked: f[3].parse().unwrap(),
                responded: f[4].parse().unwrap(),
            };
            histories.entry(f[0].parse().unwrap()).or_default().push(op);
            ops += 1;
        }
        assert!(child.wait().unwrap().success(), "a hammer process failed");
    }
    assert_eq!(ops, PROCESSES * THREADS * OPS_PER_THREAD);

    for k in 0..KEYS {
        // After the run: the final value, read as one more operation of the history.
        let invoked = now_ns();
        let last = client.get(&key(k)).unwrap().unwrap();
        let last = String::from_utf8(last.expose_secret().to_vec()).unwrap();
        let history = histories.get_mut(&k).unwrap();
        history.push(Op::read(&last, invoked, now_ns()));
        if let Err(violation) = check(history) {
            panic!("key {k} is not linearizable: {violation}");
        }
        // Spelled out: the final value is an acknowledged write that no other write of the key
        // followed entirely.
        let write = history.iter().find(|o| o.write && o.value == last).unwrap();
        let overtaken = history
            .iter()
            .any(|o| o.write && o.invoked > write.responded);
        assert!(
            !overtaken,
            "key {k}: final value {last} was overwritten later"
        );
    }
}
