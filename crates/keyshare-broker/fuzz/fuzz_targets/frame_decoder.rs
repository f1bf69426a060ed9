//! Arbitrary bytes as a stream of frames, decoded the way the broker and the client decode
//! them: no input may panic, and every request that decodes re-encodes to an equal request.

#![no_main]

use keyshare_broker::protocol::{
    decode, encode, frame_len, hello_version, RequestFrame, ServerFrame, UncheckedRequestFrame,
    HEADER_LEN, MAX_FRAME_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match frame_len(rest) {
            Ok(Some(total)) => {
                assert!(total >= HEADER_LEN && total <= HEADER_LEN + MAX_FRAME_LEN);
                let body = &rest[HEADER_LEN..total];
                // What the broker reads of a connection's first frame before the rest.
                let _ = hello_version(body);
                // The broker decodes keys unchecked, then checks them: that must accept
                // exactly what a strict decode accepts, as the same request.
                let strict = decode::<RequestFrame>(body).ok();
                let checked = decode::<UncheckedRequestFrame>(body)
                    .ok()
                    .and_then(|unchecked| unchecked.check_keys().ok());
                assert_eq!(checked, strict);
                if let Some(request) = strict {
                    let again = encode(&request).expect("a decoded request encodes");
                    let back: RequestFrame = decode(&again[HEADER_LEN..]).expect("round trip");
                    assert_eq!(back, request);
                }
                if let Ok(frame) = decode::<ServerFrame>(body) {
                    let again = encode(&frame).expect("a decoded frame encodes");
                    let back: ServerFrame = decode(&again[HEADER_LEN..]).expect("round trip");
                    assert_eq!(back, frame);
                }
                rest = &rest[total..];
            }
            Ok(None) | Err(_) => break,
        }
    }
});
