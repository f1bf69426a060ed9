//! The records the helpers read back from the shared store, which any app sharing it can
//! write: arbitrary bytes stored under a git or a docker key must make `get`, `erase` and
//! `list` succeed or fail with an error, never panic, and what `get` returns must be
//! answerable to git or docker.
#![no_main]

use std::sync::{Arc, LazyLock};

use keyshare::{MemoryStore, SecretStorage, SecretValue};
use keyshare_credential_helpers::{docker, git};
use libfuzzer_sys::fuzz_target;

static STORAGE: LazyLock<SecretStorage> =
    LazyLock::new(|| SecretStorage::builder(Arc::new(MemoryStore::new())).build());

const NOW: u64 = 1_700_000_000;

fn git_request(username: Option<&str>) -> git::Request {
    git::Request {
        protocol: Some("https".to_owned()),
        host: Some("example.com".to_owned()),
        username: username.map(str::to_owned),
        ..git::Request::default()
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, record)) = input.split_first() else {
        return;
    };
    let storage = &*STORAGE;
    let value = SecretValue::from_slice(record);
    if which % 2 == 0 {
        let key = git::key_for("https", "example.com", None, "alice").expect("a valid key");
        if storage.set(&key, &value).is_err() {
            return;
        }
        for request in [git_request(Some("alice")), git_request(None)] {
            if let Ok(Some(credential)) = git::get(storage, &request, NOW) {
                let mut answer = Vec::new();
                credential
                    .write_answer(&mut answer, NOW)
                    .expect("a credential read back can be sent to git");
            }
        }
        let _ = git::erase(storage, &git_request(None));
        let _ = storage.delete(&key);
    } else {
        let url = "registry.example.com";
        let key = docker::key(url).expect("a valid key");
        if storage.set(&key, &value).is_err() {
            return;
        }
        if let Ok(Some(credential)) = docker::get(storage, url) {
            credential
                .answer()
                .expect("a credential read back can be sent to docker");
        }
        let _ = docker::list(storage);
        let _ = docker::erase(storage, url);
    }
});
