//! docker's helper input: any bytes either parse or give an error, never a panic, and a parsed
//! store payload's `get` answer parses back to the same credential, whose server URL `get` and
//! `erase` accept as it is (or it would be stored, listed, and never found or erased again).
#![no_main]

use keyshare_credential_helpers::docker::{parse_server_url, Credential};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_server_url(data);
    if let Ok(credential) = Credential::parse_store(data) {
        let answer = credential.answer().expect("a parsed credential encodes");
        assert_eq!(
            Credential::parse_store(&answer).expect("an answer parses"),
            credential
        );
        let url = parse_server_url(credential.server_url.as_bytes())
            .expect("a stored server URL can be asked for");
        assert_eq!(url, credential.server_url);
    }
});
