//! What the Router decodes from a transport frame (runtime/src/router.rs):
//! an `Envelope`, and the built-in probe's `ProbeWire` inside one. Both
//! round-trip (decode -> encode -> decode, canonically); every facility id
//! that decodes is one `FacilityId::from_str` accepts.
#![no_main]

use bulwark_fuzz::round_trip;
use bulwark_runtime::builtin::ProbeWire;
use bulwark_runtime::Envelope;
use bulwark_storage::codec::MESSAGE_LEN_MAX;
use bulwark_transport::FacilityId;
use libfuzzer_sys::fuzz_target;

fn valid(id: &FacilityId) {
    assert_eq!(id.as_str().parse::<FacilityId>().as_ref(), Ok(id));
}

fuzz_target!(|data: &[u8]| {
    if let Some(env) = round_trip::<Envelope>(data, MESSAGE_LEN_MAX) {
        valid(&env.from);
        valid(&env.to.facility);
        if let Some(ProbeWire::Pong { facility, .. }) =
            round_trip::<ProbeWire>(&env.body, MESSAGE_LEN_MAX)
        {
            valid(&facility);
        }
    }
    if let Some(ProbeWire::Pong { facility, .. }) = round_trip::<ProbeWire>(data, MESSAGE_LEN_MAX) {
        valid(&facility);
    }
});
