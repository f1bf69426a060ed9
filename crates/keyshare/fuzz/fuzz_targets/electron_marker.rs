//! Parsing arbitrary `__$__targetStorageMarker` values must never panic; what parses must
//! survive a re-encode, and the edits keyshare makes must keep it parseable.
#![no_main]

use keyshare::store::electron::TargetMarker;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(mut marker) = TargetMarker::parse(input) else {
        return;
    };
    let json = marker.to_json();
    assert_eq!(TargetMarker::parse(json.as_bytes()).as_ref(), Ok(&marker));
    let key = String::from_utf8_lossy(input).into_owned();
    marker.set_machine(&key);
    assert!(marker.is_machine(&key));
    marker.remove(&key);
    assert!(!marker.is_machine(&key));
    assert!(TargetMarker::parse(marker.to_json().as_bytes()).is_ok());
});
