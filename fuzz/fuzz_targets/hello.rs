//! The transport's hello (transport/src/quic.rs), the first frame a dialler
//! reads from the facility it dialled, on arbitrary bodies: a hello that
//! decodes round-trips within HELLO_LEN_MAX, and `Hello::accept` takes
//! exactly the canonical hellos of the facility dialled, of this cluster,
//! at the connection's negotiated version (any boot id); everything else is
//! a typed `BadHello`.
#![no_main]

use bulwark_fuzz::{ids, round_trip};
use bulwark_storage::codec;
use bulwark_transport::quic::{DialError, Hello, HELLO_LEN_MAX, PROTOCOL_MIN, PROTOCOL_VERSION};
use libfuzzer_sys::fuzz_target;

const CLUSTER: [u8; 16] = [7; 16];

fuzz_target!(|data: &[u8]| {
    let decoded = round_trip::<Hello>(data, HELLO_LEN_MAX);
    for expected in ids() {
        for version in PROTOCOL_MIN..=PROTOCOL_VERSION {
            let canonical =
                |h: &Hello| *h == Hello::booted(expected.clone(), version, h.boot, CLUSTER);
            match Hello::accept(data, &expected, &CLUSTER, version) {
                Ok(hello) => {
                    assert!(canonical(&hello), "{hello:?}");
                    assert_eq!(decoded.as_ref(), Some(&hello));
                    assert_eq!(data, codec::encode(&hello).expect("encodes"));
                }
                Err(DialError::BadHello(_)) => {
                    assert!(!decoded.as_ref().is_some_and(canonical));
                }
                Err(e) => panic!("not a BadHello: {e:?}"),
            }
        }
    }
});
