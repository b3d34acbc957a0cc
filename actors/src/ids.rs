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

/// Raft identities one facility can take over its life: incarnation 0 is
/// [`raft_id`]; each replacement of its store takes the next
/// (`bulwark member replace`).
pub const INCARNATIONS_MAX: u64 = 64;

/// The raft id of incarnation `incarnation` of facility `f` (0:
/// [`raft_id`]): never 0, and distinct per facility and incarnation.
pub fn raft_id_at(f: &FacilityId, incarnation: u64) -> u64 {
    if incarnation == 0 {
        return raft_id(f);
    }
    let mut h = blake3::Hasher::new();
    h.update(b"bulwark raft id\0");
    h.update(f.as_str().as_bytes());
    h.update(b"\0");
    h.update(&incarnation.to_le_bytes());
    let id = u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    id.max(1)
}
