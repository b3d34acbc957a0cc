//! BFT votes and certificates (actors/src/ledger.rs) as `ledger verify`
//! and catch-up read them: a `Certificate` decoded under
//! CERTIFICATE_LEN_MAX round-trips, and one that verifies holds a quorum of
//! distinct known signers, each vote for the certificate's own (height,
//! hash, prev), and no more than SIGNERS_MAX votes. The seeds are valid
//! certificates, so the fuzzer mutates ones that verify.
#![no_main]

use std::collections::BTreeSet;

use bulwark_actors::ledger::{quorum, Certificate, Vote, CERTIFICATE_LEN_MAX, SIGNERS_MAX};
use bulwark_fuzz::{keys, round_trip};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = keys();
    if let Some(cert) = round_trip::<Certificate>(data, CERTIFICATE_LEN_MAX) {
        if cert.verify(&keys).is_ok() {
            assert!(cert.votes.len() <= SIGNERS_MAX);
            let mut signers = BTreeSet::new();
            for v in &cert.votes {
                let body = v
                    .verify(&keys)
                    .expect("each vote of a valid certificate verifies");
                assert_eq!(
                    (body.height, body.hash, body.prev),
                    (cert.height, cert.hash, cert.prev)
                );
                assert!(signers.insert(body.signer), "a signer counted twice");
            }
            assert!(signers.len() >= quorum(keys.len()));
        }
    }
    if let Some(vote) = round_trip::<Vote>(data, CERTIFICATE_LEN_MAX) {
        let _ = vote.verify(&keys);
    }
});
