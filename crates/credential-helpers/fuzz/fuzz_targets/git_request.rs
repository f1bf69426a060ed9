//! git's credential input: any bytes either parse or give an error, never a panic, and what
//! parses writes back to the same request.
#![no_main]

use keyshare_credential_helpers::git::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::parse(data) {
        let mut written = Vec::new();
        // Parsed values never hold a newline or NUL, so writing cannot fail.
        request
            .write_to(&mut written)
            .expect("a parsed request writes");
        if written.len() > keyshare_credential_helpers::git::MAX_INPUT_LEN {
            // Adding the final newline and blank line may push a maximal input over the limit.
            return;
        }
        let again = Request::parse(&written[..]).expect("a written request parses");
        assert_eq!(again, request);
    }
});
