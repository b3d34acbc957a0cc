//! The single bincode codec of bulwark.
//!
//! Limits: [`MESSAGE_LEN_MAX`] bytes per value, in both directions. The length
//! is checked before decoding starts; bincode's own `with_limit` then caps what
//! any length prefix inside the value may allocate. A value must consume the
//! whole input: trailing bytes are an error, so a signature checked over the
//! received bytes covers exactly the value that was decoded.
//!
//! The format is bincode 2.0.1's `standard` configuration (little endian,
//! variable-length integers). It is frozen: changing it changes every stored
//! file and every frame on the wire.

use crate::CodecError;
use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{de::DeserializeOwned, Serialize};

/// Largest encoded value, in bytes, that bulwark writes or reads (4 MiB).
pub const MESSAGE_LEN_MAX: usize = 4 * 1024 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<MESSAGE_LEN_MAX>>;

const fn config() -> Config {
    bincode::config::standard().with_limit::<MESSAGE_LEN_MAX>()
}

/// Encodes `value`; fails if the encoding would exceed [`MESSAGE_LEN_MAX`].
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let bytes = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if bytes.len() > MESSAGE_LEN_MAX {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit: MESSAGE_LEN_MAX,
        });
    }
    Ok(bytes)
}

/// Decodes exactly one `T` from all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_limited(bytes, MESSAGE_LEN_MAX)
}

/// Decodes exactly one `T` from all of `bytes`, refusing inputs longer than
/// `limit` (which may only tighten [`MESSAGE_LEN_MAX`]).
pub fn decode_limited<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    let limit = limit.min(MESSAGE_LEN_MAX);
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, used) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes {
            trailing: bytes.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        id: u64,
        name: String,
        tags: Vec<u16>,
    }

    fn sample() -> Sample {
        Sample {
            id: 42,
            name: "icu-night".into(),
            tags: vec![1, 2, 3],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&sample()).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<Sample>(&bytes),
            Err(CodecError::TrailingBytes { trailing: 1 })
        ));
    }

    #[test]
    fn truncated_input_is_malformed() {
        let bytes = encode(&sample()).unwrap();
        let cut = &bytes[..bytes.len() - 1];
        assert!(matches!(
            decode::<Sample>(cut),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        let bytes = vec![0u8; 65];
        assert!(matches!(
            decode_limited::<Vec<u8>>(&bytes, 64),
            Err(CodecError::TooLarge { len: 65, limit: 64 })
        ));
    }

    #[test]
    fn hostile_length_prefix_cannot_allocate_past_limit() {
        // A varint length prefix claiming u64::MAX elements, then nothing.
        let bytes = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<Vec<u8>>(&bytes).is_err());
    }
}
