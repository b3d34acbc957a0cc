//! The transport's frame decoder (transport/src/frame.rs) on arbitrary
//! bytes: a frame that decodes has a body within FRAME_LEN_MAX and encodes
//! back to exactly the input; any body round-trips through a frame; a
//! length prefix is accepted only within the limit.
#![no_main]

use bulwark_transport::frame::{self, FRAME_LEN_MAX, PREFIX_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = frame::decode(data) {
        assert!(body.len() <= FRAME_LEN_MAX);
        assert_eq!(frame::encode(body).expect("a decoded body encodes"), data);
    }
    if let Some(prefix) = data.get(..PREFIX_LEN) {
        let prefix: [u8; PREFIX_LEN] = prefix.try_into().expect("4 bytes");
        let limit = usize::from(data.get(PREFIX_LEN).copied().unwrap_or(0)) << 8;
        if let Ok(len) = frame::body_len(prefix, limit) {
            assert!(len <= limit.min(FRAME_LEN_MAX));
        }
    }
    let framed = frame::encode(data).expect("fuzz inputs are under the limit");
    assert_eq!(frame::decode(&framed).expect("a frame decodes"), data);
});
