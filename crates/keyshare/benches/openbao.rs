//! `OpenBaoStore::get` against a running OpenBao dev server, next to two baselines measured in
//! the same run against the same server and the same KV path:
//! - a bare HTTP GET on one keep-alive connection (ureq, same TLS), reading the body without
//!   parsing it: the floor for any client. Target: keyshare's `get` within 1.3x of it.
//! - the `bao kv get` CLI as a process, as a user or script without keyshare would do it.
//!
//! Run with `scripts/bench-openbao` (starts the server), or with the environment printed by
//! `scripts/openbao start dev --tls` and `cargo bench -p keyshare --bench openbao`.

use std::hint::black_box;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyshare::store::openbao::{encode_key, OpenBaoAuth, OpenBaoConfig, OpenBaoStore};
use keyshare::{MemoryStore, SecretKey, SecretValue, Store};

/// Median time per call over several rounds.
fn per_op(rounds: usize, iters: u32, mut op: impl FnMut()) -> Duration {
    for _ in 0..iters / 4 + 1 {
        op();
    }
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            start.elapsed() / iters
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

/// Median time per call of each operation, the operations taking turns round by round so
/// that drift in the machine's load (other builds, the server's own work) hits them alike.
fn interleaved(rounds: usize, iters: u32, ops: &mut [Box<dyn FnMut() + '_>]) -> Vec<Duration> {
    for op in ops.iter_mut() {
        for _ in 0..iters {
            op();
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); ops.len()];
    for _ in 0..rounds {
        for (op, t) in ops.iter_mut().zip(times.iter_mut()) {
            let start = Instant::now();
            for _ in 0..iters {
                op();
            }
            t.push(start.elapsed() / iters);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort();
            t[rounds / 2]
        })
        .collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        eprintln!(
            "openbao bench: {name} is not set; run scripts/bench-openbao, which starts a dev server"
        );
        std::process::exit(2);
    })
}

fn main() {
    // `cargo test --benches` runs bench binaries without `--bench`; keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("openbao bench: skipped (run with `cargo bench` or scripts/bench-openbao)");
        return;
    }
    let addr = env("KEYSHARE_TEST_OPENBAO_ADDR");
    let token_file = env("KEYSHARE_TEST_OPENBAO_TOKEN_FILE");
    let ca_file = std::env::var_os("KEYSHARE_TEST_OPENBAO_CA_FILE").map(PathBuf::from);
    let bao = std::env::var_os("KEYSHARE_TEST_OPENBAO_BIN").map(PathBuf::from);
    let token = std::fs::read_to_string(&token_file)
        .expect("reading the token file")
        .trim()
        .to_owned();

    let token_key = SecretKey::new("openbao.token").unwrap();
    let creds = Arc::new(MemoryStore::new());
    creds
        .set(&token_key, &SecretValue::from_slice(token.as_bytes()))
        .unwrap();
    let prefix = format!("keyshare-bench/{}", std::process::id());
    let mut config = OpenBaoConfig::new(
        vec![addr.clone()],
        "secret",
        prefix.clone(),
        OpenBaoAuth::token(token_key),
    );
    config.ca_file = ca_file.clone();
    let store = OpenBaoStore::new(config, creds).unwrap();
    let key = SecretKey::new("github.auth").unwrap();
    store
        .set(&key, &SecretValue::from_slice(&[7u8; 256]))
        .unwrap();
    let path = format!("{prefix}/{}", encode_key(&key));

    // The baseline client: same library, same TLS roots, one pooled keep-alive connection.
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = &ca_file {
        let pem = std::fs::read(ca).unwrap();
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|i| match i.unwrap() {
                ureq::tls::PemItem::Certificate(c) => Some(c),
                _ => None,
            })
            .collect();
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .max_idle_connections_per_host(1)
        .build()
        .into();
    let url = format!("{addr}/v1/secret/data/{path}");

    let bare_get = || {
        let mut r = agent
            .get(&url)
            .header("X-Vault-Token", &token)
            .call()
            .unwrap();
        black_box(r.body_mut().read_to_vec().unwrap());
    };
    let keyshare_get = || {
        black_box(store.get(&key).unwrap().unwrap());
    };
    let mut ops: Vec<Box<dyn FnMut()>> = vec![Box::new(bare_get), Box::new(keyshare_get)];
    let t = interleaved(21, 100, &mut ops);
    let (bare, keyshare_get) = (t[0], t[1]);

    println!("openbao server: {addr} (dev, TLS: {})", ca_file.is_some());
    println!(
        "baseline  bare HTTP GET, one keep-alive connection: {:8.1} us/op",
        bare.as_secs_f64() * 1e6
    );
    println!(
        "measured  keyshare OpenBaoStore::get:               {:8.1} us/op  ratio {:.2}x (target <= 1.30x)",
        keyshare_get.as_secs_f64() * 1e6,
        keyshare_get.as_secs_f64() / bare.as_secs_f64()
    );

    match bao {
        Some(bao) => {
            let cli = per_op(5, 4, || {
                let mut cmd = Command::new(&bao);
                cmd.args(["kv", "get", "-mount=secret", "-format=json", &path])
                    .env_clear()
                    .env("BAO_ADDR", &addr)
                    // The token goes through the environment, never argv.
                    .env("BAO_TOKEN", &token)
                    .env("HOME", std::env::temp_dir())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if let Some(ca) = &ca_file {
                    cmd.env("BAO_CACERT", ca);
                }
                let status = cmd.status().unwrap();
                assert!(status.success(), "bao kv get failed");
            });
            println!(
                "baseline  `bao kv get` CLI, one process per read:  {:8.1} us/op  (keyshare get is {:.0}x faster)",
                cli.as_secs_f64() * 1e6,
                cli.as_secs_f64() / keyshare_get.as_secs_f64()
            );
        }
        None => println!("baseline  `bao kv get` CLI: skipped (KEYSHARE_TEST_OPENBAO_BIN not set)"),
    }
    store.delete(&key).unwrap();
}
