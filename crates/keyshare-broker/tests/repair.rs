//! Repairs across apps through the broker: an app whose write the broker failed repairs it
//! later, and another app's change made meanwhile (through the broker) is later, so it stands.
//! The broker's vault records when each key changed and decides in one transaction.

mod common;

use std::sync::Arc;
use std::time::Duration;

use keyshare::store::vault::{VaultOptions, VaultStore};
use keyshare::testing::{Calls, Fault, FaultStore};
use keyshare::{MemoryStore, SecretKey, SecretStorage, SecretValue, Store};
use keyshare_broker::access::AccessPolicy;
use keyshare_broker::server::ServerOptions;

use common::TestBroker;

fn k(s: &str) -> SecretKey {
    SecretKey::new(s).unwrap()
}

fn v(s: &str) -> SecretValue {
    SecretValue::from_slice(s.as_bytes())
}

fn text(value: Option<SecretValue>) -> Option<String> {
    value.map(|v| String::from_utf8(v.expose_secret().to_vec()).unwrap())
}

#[test]
fn another_apps_later_change_through_the_broker_stands_over_a_repair() {
    let data = tempfile::tempdir().unwrap();
    let mut options = VaultOptions::new(data.path().join("data").join("vault.db"), "shared");
    options.keys.passphrase_env = None;
    let vault = VaultStore::open(options).unwrap();
    let broker = TestBroker::start(
        SecretStorage::builder(Arc::new(vault)).build(),
        AccessPolicy::default(),
        ServerOptions::default(),
    );
    let agents = broker.client("agents");
    assert!(agents.server_info().unwrap().keeps_change_times);
    // `code` keeps a legacy store of its own, and its broker calls can be made to fail.
    let code_broker = Arc::new(FaultStore::new(
        broker.client("code"),
        Duration::from_millis(5),
    ));
    let code = SecretStorage::builder(code_broker.clone())
        .legacy(Arc::new(MemoryStore::new()))
        .journal(Arc::new(MemoryStore::new()))
        .build();

    // Agents wrote `earlier` before code's write failed: code's write is later and wins.
    agents.set(&k("earlier"), &v("agents")).unwrap();
    for key in ["signed.out", "replaced", "earlier"] {
        code_broker.arm_on(0, Fault::FailBefore, Calls::Writes);
        code.set(&k(key), &v("code")).unwrap();
    }
    assert_eq!(code.status().pending_repairs.len(), 3);
    agents.delete(&k("signed.out")).unwrap();
    agents.set(&k("replaced"), &v("agents")).unwrap();

    let report = code.repair().unwrap();
    assert_eq!(report.repaired, 1, "{report:?}");
    let mut superseded = report.superseded;
    superseded.sort();
    assert_eq!(superseded, vec![k("replaced"), k("signed.out")]);
    for (key, expected) in [
        ("signed.out", None),
        ("replaced", Some("agents")),
        ("earlier", Some("code")),
    ] {
        assert_eq!(
            text(agents.get(&k(key)).unwrap()).as_deref(),
            expected,
            "{key}"
        );
        assert_eq!(
            text(code.get(&k(key)).unwrap()).as_deref(),
            expected,
            "{key}"
        );
    }
    broker.stop().unwrap();
}
