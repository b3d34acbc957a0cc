//! The HTTP write bodies (src/http/api.rs, `decode_json`) on arbitrary
//! bytes within the 64 KiB cap (the handler caps before decoding): it
//! never panics; a refusal is a 400 BAD_REQUEST naming a field; an
//! accepted body decodes to the same value again.
#![no_main]

use bulwark::http::api::{
    decode_json, ApprovalBody, AssignBody, BlockBody, LeaveBody, PersonBody, SwapBody, BODY_LEN_MAX,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fn check<T: DeserializeOwned + std::fmt::Debug>(data: &[u8]) {
    match decode_json::<T>(data) {
        Ok(a) => {
            let b = decode_json::<T>(data).expect("accepted twice");
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400);
            assert_eq!(e.body.code, "BAD_REQUEST");
            let field = e.body.field.as_deref().expect("a 400 names a field");
            assert!(!field.is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > BODY_LEN_MAX {
        return;
    }
    check::<PersonBody>(data);
    check::<BlockBody>(data);
    check::<AssignBody>(data);
    check::<SwapBody>(data);
    check::<LeaveBody>(data);
    check::<ApprovalBody>(data);
});
