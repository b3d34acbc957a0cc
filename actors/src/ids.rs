//! Numeric ids derived from facility ids, shared by the concerns that need
//! one (Raft's node ids, the hybrid clock's node field) without any of them
//! importing another.

use bulwark_transport::FacilityId;

/// The raft id of a facility: the first 8 bytes of blake3 of its id, never 0.
pub fn raft_id(f: &FacilityId) -> u64 {
    let h = blake3::hash(f.as_str().as_bytes());
    let id = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    id.max(1)
}
