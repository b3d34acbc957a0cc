//! What the fuzz targets share: the round-trip property of bulwark's one
//! codec, and the facilities and keys the seeds were signed with.

use std::collections::BTreeMap;
use std::fmt::Debug;

use bulwark_actors::keys::{Keyring, PublicKeys};
use bulwark_storage::codec;
use bulwark_transport::FacilityId;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as a `T` under `limit`, as a receiver does. A value that
/// decodes must (1) come from at most `limit` bytes, (2) encode again, in
/// no more bytes than it came from and within `limit`, (3) decode from its
/// encoding to the same value, and (4) encode the same way again (the
/// encoding is canonical).
pub fn round_trip<T>(data: &[u8], limit: usize) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value: T = codec::decode_limited(data, limit).ok()?;
    assert!(
        data.len() <= limit,
        "decoded {} bytes over the limit {limit}",
        data.len()
    );
    let bytes = codec::encode(&value).expect("a decoded value encodes");
    assert!(
        bytes.len() <= data.len(),
        "re-encoding grew from {} to {} bytes",
        data.len(),
        bytes.len()
    );
    let back: T = codec::decode_limited(&bytes, limit).expect("an encoding decodes");
    assert_eq!(back, value, "decode -> encode -> decode changed the value");
    assert_eq!(
        codec::encode(&back).expect("encodes"),
        bytes,
        "encoding is not canonical"
    );
    Some(value)
}

/// The facilities of the seeds.
pub fn ids() -> Vec<FacilityId> {
    ["alpha", "bravo", "charlie"]
        .iter()
        .map(|s| s.parse().expect("facility id"))
        .collect()
}

/// Their keyrings (deterministic, seed 9).
pub fn rings() -> BTreeMap<FacilityId, Keyring> {
    Keyring::deterministic(&ids(), 9)
}

/// Their public keys.
pub fn keys() -> PublicKeys {
    static KEYS: std::sync::OnceLock<PublicKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| rings()[&ids()[0]].public().clone())
        .clone()
}
