use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest facility id, in bytes.
pub const FACILITY_ID_LEN_MAX: usize = 32;

/// A facility's name: 1 to 32 bytes of `[a-z0-9-]`, starting with a letter.
///
/// It names the facility in configs, certificates, metrics labels and actor
/// names, so it is kept to characters safe in all of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct FacilityId(String);

/// Why a string is not a [`FacilityId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid facility id {0:?}: use 1-32 chars of [a-z0-9-], starting with a letter")]
pub struct InvalidFacilityId(pub String);

impl FacilityId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for FacilityId {
    type Err = InvalidFacilityId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok_len = !s.is_empty() && s.len() <= FACILITY_ID_LEN_MAX;
        let ok_first = s.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok_len && ok_first && ok_chars {
            Ok(FacilityId(s.to_string()))
        } else {
            Err(InvalidFacilityId(s.chars().take(64).collect()))
        }
    }
}

// Validate on the way in: an id decoded from a peer is untrusted input.
impl<'de> Deserialize<'de> for FacilityId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for FacilityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_simple_ids_and_refuses_the_rest() {
        for ok in ["alpha", "b", "site-7", &"a".repeat(32)] {
            assert!(ok.parse::<FacilityId>().is_ok(), "{ok}");
        }
        for bad in ["", "Alpha", "7site", "a b", "a/b", &"a".repeat(33)] {
            assert!(bad.parse::<FacilityId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn decoding_validates() {
        let bytes = bulwark_storage::codec::encode(&"Not/Valid".to_string()).unwrap();
        assert!(bulwark_storage::codec::decode::<FacilityId>(&bytes).is_err());
    }
}
