//! Another machine's writes to an OpenBao shared store reach the broker's subscribers as change
//! events, through the broker's polling of the KV metadata. Needs the OpenBao dev server that
//! `scripts/test` starts (`scripts/openbao start dev --tls`): without it the test fails when
//! `CI=true` and is skipped loudly otherwise.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyshare::store::openbao::{OpenBaoAuth, OpenBaoConfig, OpenBaoStore};
use keyshare::{
    ChangeKind, MemoryStore, Notification, SecretKey, SecretStorage, SecretValue, Store,
};
use keyshare_broker::client::{BrokerClient, EventStream};
use keyshare_broker::{BrokerState, ExternalChanges, OpenBaoChanges};

use common::TestBroker;

const TOKEN_KEY: &str = "openbao.token";
/// Generous for a loaded CI machine; the poll interval below is 100 ms.
const EVENT_WITHIN: Duration = Duration::from_secs(5);

/// The dev server's address, token and CA file, or `None` after a loud skip.
fn dev_server() -> Option<(String, String, Option<PathBuf>)> {
    let Ok(addr) = std::env::var("KEYSHARE_TEST_OPENBAO_ADDR") else {
        let message = "the OpenBao dev server is not running (KEYSHARE_TEST_OPENBAO_ADDR is not \
                       set): run the tests through scripts/test, or start it with \
                       `eval \"$(scripts/openbao start dev --tls)\"`";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and {message}");
        }
        eprintln!("\n!!!!!!!!!! SKIPPED: {message} !!!!!!!!!!\n");
        return None;
    };
    let token_file = std::env::var("KEYSHARE_TEST_OPENBAO_TOKEN_FILE")
        .expect("KEYSHARE_TEST_OPENBAO_TOKEN_FILE is set with KEYSHARE_TEST_OPENBAO_ADDR");
    let token = std::fs::read_to_string(&token_file)
        .unwrap_or_else(|e| panic!("cannot read the OpenBao token file {token_file}: {e}"));
    let ca = std::env::var_os("KEYSHARE_TEST_OPENBAO_CA_FILE").map(PathBuf::from);
    Some((addr, token.trim().to_owned(), ca))
}

fn key(s: &str) -> SecretKey {
    SecretKey::new(s).unwrap()
}

/// One machine's view of the server: its own store (own HTTP agent, own write memory).
fn machine(addr: &str, token: &str, ca: &Option<PathBuf>, prefix: &str) -> Arc<OpenBaoStore> {
    let mut config = OpenBaoConfig::new(
        vec![addr.to_owned()],
        "secret",
        prefix,
        OpenBaoAuth::token(key(TOKEN_KEY)),
    );
    config.ca_file = ca.clone();
    let creds = Arc::new(MemoryStore::new());
    creds
        .set(&key(TOKEN_KEY), &SecretValue::from_slice(token.as_bytes()))
        .unwrap();
    Arc::new(OpenBaoStore::new(config, creds).unwrap())
}

async fn next_change(events: &mut EventStream, what: &str) -> (SecretKey, ChangeKind) {
    match tokio::time::timeout(EVENT_WITHIN, events.next()).await {
        Ok(Some(Notification::Changed(event))) => (event.key, event.kind),
        Ok(other) => panic!("waiting for {what}: got {other:?}"),
        Err(_) => panic!("no event for {what} within {EVENT_WITHIN:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_machines_writes_reach_subscribers() {
    let Some((addr, token, ca)) = dev_server() else {
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let prefix = format!("keyshare-tests/events-{}-{nanos}", std::process::id());
    let here = machine(&addr, &token, &ca, &prefix);
    let elsewhere = machine(&addr, &token, &ca, &prefix);

    // The baseline is taken before anything is written, so no write below can fall before it.
    let baseline = tokio::task::block_in_place(|| here.snapshot()).unwrap();
    let storage = SecretStorage::builder(here.clone()).build();
    let state = BrokerState::new(storage.clone()).with_external_changes(ExternalChanges::new(
        Box::new(OpenBaoChanges::since(here.clone(), baseline)),
        Duration::from_millis(100),
    ));
    let broker = TestBroker::start_state(storage, state);
    let client = BrokerClient::connect(broker.config("agents"))
        .await
        .unwrap();
    let mut events = client.subscribe(None).await.unwrap();

    let remote = key("github.auth");
    let write = |k: SecretKey, v: Option<&'static str>| {
        let elsewhere = Arc::clone(&elsewhere);
        tokio::task::spawn_blocking(move || match v {
            Some(v) => elsewhere.set(&k, &SecretValue::from_slice(v.as_bytes())),
            None => elsewhere.delete(&k).map(drop),
        })
    };
    write(remote.clone(), Some("from another machine"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        next_change(&mut events, "the other machine's set").await,
        (remote.clone(), ChangeKind::Set)
    );

    // A write through the broker is announced once: the poll that finds the next remote write
    // has seen it too, and must not report it again.
    let own = key("own");
    client
        .set(&own, &SecretValue::from_slice(b"mine"))
        .await
        .unwrap();
    assert_eq!(
        next_change(&mut events, "the broker's own set").await,
        (own.clone(), ChangeKind::Set)
    );
    write(remote.clone(), None).await.unwrap().unwrap();
    assert_eq!(
        next_change(&mut events, "the other machine's delete").await,
        (remote.clone(), ChangeKind::Delete)
    );

    drop(events);
    drop(client);
    tokio::task::block_in_place(|| broker.stop()).unwrap();
    let _ = tokio::task::block_in_place(|| here.delete(&own));
}
