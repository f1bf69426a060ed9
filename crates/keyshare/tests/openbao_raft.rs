//! Two "machines" sharing one 3-node OpenBao Raft cluster (started by `scripts/test` through
//! `scripts/openbao start raft`). Without the cluster: fails when `CI=true`, skips loudly
//! otherwise. The leader-failover test lives in `openbao_failover.rs`, its own binary, so that
//! it never runs while these do.

#![cfg(feature = "openbao")]

#[path = "support/openbao.rs"]
mod support;

use std::collections::BTreeSet;

use keyshare::model::MAX_KEY_LEN;
use keyshare::store::openbao::{NodeState, OpenBaoStore};
use keyshare::{ChangeKind, Store};
use support::{key, unique_prefix, value, Server};

/// Machine A lists the nodes in one order, machine B in the reverse order, each with its own
/// credentials store: nothing is shared but the cluster.
fn two_machines(server: &Server, prefix: &str) -> (OpenBaoStore, OpenBaoStore) {
    let a = OpenBaoStore::new(
        server.config(prefix),
        Server::credentials(&server.root_token),
    )
    .unwrap();
    let mut reversed = server.config(prefix);
    reversed.addresses.reverse();
    let b = OpenBaoStore::new(reversed, Server::credentials(&server.root_token)).unwrap();
    (a, b)
}

#[test]
fn two_machines_see_each_others_writes() {
    let Some(server) = support::raft() else {
        return;
    };
    let prefix = unique_prefix("machines");
    let (a, b) = two_machines(&server, &prefix);
    // Read-after-write across machines, many times: B lists the nodes in the other order, so
    // its reads start at a standby whose replica may lag the leader.
    for i in 0..20 {
        let v = format!("from-a-{i}");
        a.set(&key("github.auth"), &value(&v)).unwrap();
        let got = b.get(&key("github.auth")).unwrap();
        assert_eq!(
            got.as_ref().map(|g| g.expose_secret()),
            Some(v.as_bytes()),
            "round {i}: machine B read a stale value after A's acknowledged write"
        );
    }
    a.set(&key("github.auth"), &value("from-a")).unwrap();

    b.set(&key("github.auth"), &value("from-b")).unwrap();
    b.set(&key("only-b"), &value("b")).unwrap();
    assert_eq!(
        a.get(&key("github.auth")).unwrap().unwrap().expose_secret(),
        b"from-b"
    );
    let listed: BTreeSet<String> = a
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from(["github.auth".to_owned(), "only-b".to_owned()])
    );

    // Sign-out on one machine is sign-out on the other, and stays so.
    assert!(a.delete(&key("github.auth")).unwrap());
    assert_eq!(b.get(&key("github.auth")).unwrap(), None);
    assert!(!b.delete(&key("github.auth")).unwrap());

    // B's change poller sees A's writes, and not its own.
    let baseline = b.snapshot().unwrap();
    a.set(&key("from-a"), &value("1")).unwrap();
    b.set(&key("from-b"), &value("1")).unwrap();
    let (next, changes) = b.changes_since(&baseline).unwrap();
    assert_eq!(changes, vec![(key("from-a"), ChangeKind::Set)]);
    a.delete(&key("from-a")).unwrap();
    let (_, changes) = b.changes_since(&next).unwrap();
    assert_eq!(changes, vec![(key("from-a"), ChangeKind::Delete)]);
}

#[test]
fn keys_at_the_size_limit_survive_raft_storage() {
    let Some(server) = support::raft() else {
        return;
    };
    let (a, b) = two_machines(&server, &unique_prefix("long"));
    // The worst case for the path: every byte escaped (4-byte characters, 12 name bytes each).
    let long = key(&"🔑".repeat(MAX_KEY_LEN / 4));
    a.set(&long, &value("v")).unwrap();
    assert_eq!(b.get(&long).unwrap().unwrap().expose_secret(), b"v");
    assert_eq!(b.keys().unwrap(), vec![long.clone()]);
    assert!(b.delete(&long).unwrap());
}

#[test]
fn probe_names_the_leader_and_every_node() {
    let Some(server) = support::raft() else {
        return;
    };
    let store = server.store(&unique_prefix("probe"));
    let status = store.probe();
    assert_eq!(status.nodes.len(), 3);
    assert_eq!(status.ha_enabled, Some(true));
    let active: Vec<_> = status
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Active)
        .collect();
    assert_eq!(active.len(), 1, "{:?}", status.nodes);
    assert_eq!(status.leader.as_deref(), Some(active[0].address.as_str()));
    assert!(status
        .nodes
        .iter()
        .all(|n| matches!(n.state, NodeState::Active | NodeState::Standby)));
    assert!(status.token.is_ok(), "{:?}", status.token);
}
