//! What serving a value leaves in the broker's memory once the reply went out: the value's
//! wire form (base64) must not stay in a buffer for the connection's life. The connection's
//! write buffer (tokio's `BufWriter`) kept the last `get` reply it held until the connection
//! closed, then freed it uncleared (found with gcore in review after QA s18 F3).
//!
//! Broker and client run in this process, so a copy either of them keeps fails the test. The
//! store is the memory store, which holds the value itself, raw: the test looks for the
//! base64 text only, which exists nowhere but on the way through the protocol.

#![cfg(target_os = "linux")]

mod common;

use base64::Engine as _;
use keyshare::testing::memory::{
    is_masked, masked_random_value, scan_now, unmasked, Needles, MASK,
};
use keyshare::{SecretKey, Store};
use zeroize::Zeroizing;

use common::TestBroker;

/// The masked form of the base64 text of the value `masked` is the masked form of.
fn masked_wire_form(masked: &[u8]) -> Zeroizing<Vec<u8>> {
    let value = unmasked(masked);
    let text =
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(value.expose_secret()));
    Zeroizing::new(text.bytes().map(|b| b ^ MASK).collect())
}

#[test]
fn a_served_value_leaves_no_copy_of_its_wire_form_in_memory() {
    let broker = TestBroker::memory();
    let client = broker.client("code");
    let key = SecretKey::new("github.auth").unwrap();
    // Under and over the 16 KiB that writes gather, and one frame's worth of small ones.
    for len in [40, 300, 3000, 20_000] {
        let masked = masked_random_value(len);
        let needles = Needles::new(&masked_wire_form(&masked));
        client.set(&key, &unmasked(&masked)).unwrap();
        let got = client.get(&key).unwrap().unwrap();
        assert!(is_masked(&got, &masked));
        drop(got);
        // The connection stays open, and with it whatever its tasks hold.
        let hits = scan_now(&needles);
        assert!(
            hits.is_empty(),
            "{len}-byte value: its base64 text is still in memory: {hits:?}"
        );
    }
}

/// The check on the test: a live copy of the wire form is found.
#[test]
fn the_scan_finds_a_live_wire_form() {
    let masked = masked_random_value(300);
    let masked_wire = masked_wire_form(&masked);
    let needles = Needles::new(&masked_wire);
    let live: Zeroizing<Vec<u8>> = Zeroizing::new(masked_wire.iter().map(|b| b ^ MASK).collect());
    let hits = scan_now(&needles);
    assert!(!hits.is_empty(), "a live copy was not found");
    drop(live);
}
