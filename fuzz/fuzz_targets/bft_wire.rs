//! What a validator decodes from a peer (actors/src/bft.rs): a `BftWire`.
//! It round-trips; every vote in it is checked (`Vote::verify`), every
//! final entry verified (`verify_final`) and a fetched entry decoded as a
//! `LedgerEntry` (under ENTRY_LEN_MAX), all without panicking (a head
//! announcement, old or new form, round-trips like the rest). A forged
//! vote or entry never verifies.
#![no_main]

use bulwark_actors::bft::wire::BftWire;
use bulwark_actors::epoch::{Epochs, ValidatorSet};
use bulwark_actors::ledger::{verify_final, LedgerEntry, ENTRY_LEN_MAX};
use bulwark_fuzz::{keys, round_trip};
use bulwark_storage::codec::MESSAGE_LEN_MAX;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    let epochs = Epochs::new(ValidatorSet::genesis(keys.clone()));
    match round_trip::<BftWire>(data, MESSAGE_LEN_MAX) {
        Some(BftWire::Votes(votes)) => {
            for v in &votes {
                if let Ok(body) = v.verify(&keys) {
                    assert_eq!(v.decode().expect("a verified vote decodes"), body);
                }
            }
        }
        Some(BftWire::Finals(finals)) => {
            for f in &finals {
                let _ = verify_final(f, f.cert.height, &f.cert.prev, &epochs);
            }
        }
        Some(BftWire::Entry(bytes)) => {
            let _ = round_trip::<LedgerEntry>(&bytes, ENTRY_LEN_MAX);
        }
        _ => {}
    }
});
