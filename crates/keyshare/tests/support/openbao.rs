//! Finding the OpenBao servers `scripts/openbao` started (through `scripts/test`), and talking
//! to them as an administrator.
//!
//! A test that needs a server calls [`dev`] or [`raft`]: with `CI=true` a missing server fails
//! the test; otherwise it is skipped with a loud message on stderr. To run these tests by hand:
//! `eval "$(scripts/openbao start dev --tls)"; eval "$(scripts/openbao start raft)"` first.

#![allow(dead_code)] // each test binary uses part of this

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyshare::store::openbao::{OpenBaoAuth, OpenBaoConfig, OpenBaoStore};
use keyshare::{MemoryStore, SecretKey, SecretValue, Store};

pub const TOKEN_KEY: &str = "openbao.token";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn missing(what: &str, var: &str) -> Option<Server> {
    let message = format!(
        "{what} is not running ({var} is not set): run the tests through scripts/test, or start it with \
         `eval \"$(scripts/openbao start {})\"`",
        if var.contains("RAFT") { "raft" } else { "dev --tls" }
    );
    if in_ci() {
        panic!("CI=true and {message}");
    }
    eprintln!("\n!!!!!!!!!! SKIPPED: {message} !!!!!!!!!!\n");
    None
}

fn read_token(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the OpenBao token file {path}: {e}"))
        .trim()
        .to_owned()
}

/// A running server (or cluster) and its root token.
#[derive(Clone)]
pub struct Server {
    pub addresses: Vec<String>,
    pub root_token: String,
    pub ca_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub bao: Option<PathBuf>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addresses", &self.addresses)
            .finish_non_exhaustive()
    }
}

/// The dev server (TLS, KV v2 at `secret/`), or `None` after a loud skip.
pub fn dev() -> Option<Server> {
    let Ok(addr) = std::env::var("KEYSHARE_TEST_OPENBAO_ADDR") else {
        return missing("the OpenBao dev server", "KEYSHARE_TEST_OPENBAO_ADDR");
    };
    let token_file = std::env::var("KEYSHARE_TEST_OPENBAO_TOKEN_FILE")
        .expect("KEYSHARE_TEST_OPENBAO_TOKEN_FILE is set with KEYSHARE_TEST_OPENBAO_ADDR");
    Some(Server {
        addresses: vec![addr],
        root_token: read_token(&token_file),
        ca_file: std::env::var_os("KEYSHARE_TEST_OPENBAO_CA_FILE").map(PathBuf::from),
        state_dir: None,
        bao: std::env::var_os("KEYSHARE_TEST_OPENBAO_BIN").map(PathBuf::from),
    })
}

/// The 3-node Raft cluster, or `None` after a loud skip.
pub fn raft() -> Option<Server> {
    let Ok(addrs) = std::env::var("KEYSHARE_TEST_OPENBAO_RAFT_ADDRS") else {
        return missing(
            "the OpenBao Raft cluster",
            "KEYSHARE_TEST_OPENBAO_RAFT_ADDRS",
        );
    };
    let token_file = std::env::var("KEYSHARE_TEST_OPENBAO_RAFT_TOKEN_FILE")
        .expect("KEYSHARE_TEST_OPENBAO_RAFT_TOKEN_FILE is set with the addresses");
    Some(Server {
        addresses: addrs.split(',').map(str::to_owned).collect(),
        root_token: read_token(&token_file),
        ca_file: None,
        state_dir: std::env::var_os("KEYSHARE_TEST_OPENBAO_RAFT_STATE").map(PathBuf::from),
        bao: None,
    })
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A prefix no other test (in this run or an earlier one against the same server) has used.
pub fn unique_prefix(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "keyshare-tests/{what}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn key(s: &str) -> SecretKey {
    SecretKey::new(s).unwrap()
}

pub fn value(s: &str) -> SecretValue {
    SecretValue::from_slice(s.as_bytes())
}

impl Server {
    /// A config for this server with token auth, under `prefix`.
    pub fn config(&self, prefix: &str) -> OpenBaoConfig {
        let mut c = OpenBaoConfig::new(
            self.addresses.clone(),
            "secret",
            prefix,
            OpenBaoAuth::token(key(TOKEN_KEY)),
        );
        c.ca_file = self.ca_file.clone();
        c
    }

    /// A credentials store holding `token` under [`TOKEN_KEY`].
    pub fn credentials(token: &str) -> Arc<MemoryStore> {
        let creds = Arc::new(MemoryStore::new());
        creds.set(&key(TOKEN_KEY), &value(token)).unwrap();
        creds
    }

    /// A store with the root token under `prefix`.
    pub fn store(&self, prefix: &str) -> OpenBaoStore {
        OpenBaoStore::new(self.config(prefix), Self::credentials(&self.root_token)).unwrap()
    }

    /// The conformance factory: one store per namespace, under a prefix unique to this run.
    pub fn factory(&self) -> impl Fn(&str) -> Arc<dyn Store> {
        let server = self.clone();
        let base = unique_prefix("conformance");
        move |ns: &str| -> Arc<dyn Store> { Arc::new(server.store(&format!("{base}/{ns}"))) }
    }

    pub fn admin(&self) -> Admin {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &self.ca_file {
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
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(tls.build())
            .build()
            .into();
        Admin {
            address: self.addresses[0].clone(),
            token: self.root_token.clone(),
            agent,
        }
    }
}

/// Root-token HTTP calls for setting up policies, roles and odd entries.
pub struct Admin {
    pub address: String,
    token: String,
    pub agent: ureq::Agent,
}

impl Admin {
    fn finish(mut r: ureq::http::Response<ureq::Body>) -> (u16, serde_json::Value) {
        let status = r.status().as_u16();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        Self::finish(
            self.agent
                .get(format!("{}/v1/{path}", self.address))
                .header("X-Vault-Token", &self.token)
                .call()
                .unwrap(),
        )
    }

    pub fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        Self::finish(
            self.agent
                .post(format!("{}/v1/{path}", self.address))
                .header("X-Vault-Token", &self.token)
                .send(body.to_string())
                .unwrap(),
        )
    }

    pub fn delete(&self, path: &str) -> (u16, serde_json::Value) {
        Self::finish(
            self.agent
                .delete(format!("{}/v1/{path}", self.address))
                .header("X-Vault-Token", &self.token)
                .call()
                .unwrap(),
        )
    }

    /// POST that must succeed.
    pub fn must_post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let (status, reply) = self.post(path, body);
        assert!(
            (200..300).contains(&status),
            "POST {path}: HTTP {status} {reply}"
        );
        reply
    }
}
