//! The Raft mirror-type conversion (actors/src/raft/wire.rs): a
//! `WireMessage` from a peer that converts into a raft-rs `Message` is not
//! node-local, respects the entry and member limits, and converts back to
//! the same mirror value (no field is lost or altered on the way).
#![no_main]

use bulwark_actors::raft::wire::{WireMessage, ENTRIES_PER_MESSAGE_MAX, MEMBERS_MAX};
use bulwark_fuzz::round_trip;
use bulwark_storage::codec::MESSAGE_LEN_MAX;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(wire) = round_trip::<WireMessage>(data, MESSAGE_LEN_MAX) else {
        return;
    };
    let Ok(msg) = wire.to_raft() else {
        return;
    };
    assert!(!raft::raw_node::is_local_msg(msg.msg_type));
    assert!(msg.entries.len() <= ENTRIES_PER_MESSAGE_MAX);
    if let Some(s) = msg.snapshot.as_ref() {
        let cs = s.get_metadata().get_conf_state();
        assert!(cs.voters.len() <= MEMBERS_MAX && cs.learners.len() <= MEMBERS_MAX);
    }
    let back = WireMessage::from_raft(&msg).expect("a converted message mirrors back");
    assert_eq!(back, wire, "mirror -> raft -> mirror changed the message");
});
