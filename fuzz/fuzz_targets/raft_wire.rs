//! What a RaftPeer decodes from a peer (actors/src/raft.rs): a `RaftWire`,
//! and inside a forwarded proposal the `SignedProposal` and `EntryPayload`
//! the leader decodes (under ENTRY_LEN_MAX). Each round-trips; a mirrored
//! raft message that converts respects ENTRIES_PER_MESSAGE_MAX.
#![no_main]

use bulwark_actors::ledger::{SignedProposal, ENTRY_LEN_MAX};
use bulwark_actors::raft::wire::ENTRIES_PER_MESSAGE_MAX;
use bulwark_actors::raft::{EntryPayload, RaftWire};
use bulwark_fuzz::round_trip;
use bulwark_storage::codec::MESSAGE_LEN_MAX;
use libfuzzer_sys::fuzz_target;

fn proposal(bytes: &[u8]) {
    if let Some(sp) = round_trip::<SignedProposal>(bytes, ENTRY_LEN_MAX) {
        let _ = round_trip::<EntryPayload>(&sp.body, ENTRY_LEN_MAX);
    }
}

fuzz_target!(|data: &[u8]| {
    match round_trip::<RaftWire>(data, MESSAGE_LEN_MAX) {
        Some(RaftWire::Raft(m)) => {
            if let Ok(msg) = m.to_raft() {
                assert!(msg.entries.len() <= ENTRIES_PER_MESSAGE_MAX);
            }
        }
        Some(RaftWire::Forward { payload }) => proposal(&payload),
        _ => {}
    }
    proposal(data);
});
