//! The failure detector's heartbeat (actors/src/detect/actor.rs), decoded
//! from a QUIC datagram under DATAGRAM_LEN_MAX: it round-trips and its
//! encoding fits one datagram.
#![no_main]

use bulwark_actors::detect::actor::Heartbeat;
use bulwark_fuzz::round_trip;
use bulwark_storage::codec;
use bulwark_transport::DATAGRAM_LEN_MAX;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(hb) = round_trip::<Heartbeat>(data, DATAGRAM_LEN_MAX) {
        assert!(codec::encode(&hb).expect("encodes").len() <= DATAGRAM_LEN_MAX);
    }
});
