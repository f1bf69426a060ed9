//! The store conformance suite over the broker client: each namespace is its own in-process
//! broker (over a `MemoryStore`), and reopening a namespace connects a new client to it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keyshare::Store;

use common::TestBroker;

fn broker_factory() -> impl Fn(&str) -> Arc<dyn Store> {
    // The brokers outlive the test's clients: they stop when the test process exits.
    static BROKERS: Mutex<Option<HashMap<String, &'static TestBroker>>> = Mutex::new(None);
    move |namespace: &str| -> Arc<dyn Store> {
        let mut brokers = BROKERS.lock().unwrap();
        let broker = *brokers
            .get_or_insert_with(HashMap::new)
            .entry(namespace.to_owned())
            .or_insert_with(|| Box::leak(Box::new(TestBroker::memory())));
        Arc::new(broker.client("conformance"))
    }
}

keyshare::conformance_tests!(broker_factory());
