//! The transport's hello (transport/src/quic.rs), the first frame a dialler
//! reads from the facility it dialled, on arbitrary bodies: a hello that
//! decodes round-trips within HELLO_LEN_MAX, and `Hello::accept` takes
//! exactly one body, the canonical hello of the facility dialled at this
//! protocol version; everything else is a typed `BadHello`.
#![no_main]

use bulwark_fuzz::{ids, round_trip};
use bulwark_storage::codec;
use bulwark_transport::quic::{DialError, Hello, HELLO_LEN_MAX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = round_trip::<Hello>(data, HELLO_LEN_MAX);
    for expected in ids() {
        match Hello::accept(data, &expected) {
            Ok(hello) => {
                assert_eq!(hello, Hello::new(expected.clone()));
                assert_eq!(decoded.as_ref(), Some(&hello));
                assert_eq!(data, codec::encode(&hello).expect("encodes"));
            }
            Err(DialError::BadHello(_)) => {
                assert_ne!(decoded, Some(Hello::new(expected)));
            }
            Err(e) => panic!("not a BadHello: {e:?}"),
        }
    }
});
