//! The breaker mesh's message (actors/src/flow/mesh.rs), decoded under its
//! 4 KiB limit: it round-trips and re-encodes within the limit.
#![no_main]

use bulwark_actors::flow::mesh::MeshWire;
use bulwark_fuzz::round_trip;
use libfuzzer_sys::fuzz_target;

/// The limit the breaker actor decodes with.
const MESH_LEN_MAX: usize = 4_096;

fuzz_target!(|data: &[u8]| {
    let _ = round_trip::<MeshWire>(data, MESH_LEN_MAX);
});
