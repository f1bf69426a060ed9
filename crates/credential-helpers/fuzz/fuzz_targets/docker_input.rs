//! docker's helper input: any bytes either parse or give an error, never a panic, and a parsed
//! store payload's `get` answer parses back to the same credential.
#![no_main]

use keyshare_credential_helpers::docker::{parse_server_url, Credential};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_server_url(data);
    if let Ok(credential) = Credential::parse_store(data) {
        let answer = credential.answer().expect("a parsed credential encodes");
        assert_eq!(Credential::parse_store(&answer).expect("an answer parses"), credential);
    }
});
