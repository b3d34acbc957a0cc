//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes.
//!
//! The length is checked against [`FRAME_LEN_MAX`] before any byte of the body
//! is read or allocated. A frame that breaks the limit is an error; the caller
//! closes the stream that carried it and nothing else.

use crate::FrameError;

/// Largest frame body, in bytes: the codec's own message limit.
pub const FRAME_LEN_MAX: usize = bulwark_storage::codec::MESSAGE_LEN_MAX;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Prefixes `body` with its length. Refuses bodies over [`FRAME_LEN_MAX`].
pub fn encode(body: &[u8]) -> Result<Vec<u8>, FrameError> {
    if body.len() > FRAME_LEN_MAX {
        return Err(FrameError::TooLarge {
            len: body.len() as u64,
            limit: FRAME_LEN_MAX,
        });
    }
    let len = u32::try_from(body.len()).expect("FRAME_LEN_MAX fits u32");
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// Reads the announced body length from a prefix and checks it.
pub fn body_len(prefix: [u8; PREFIX_LEN], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit.min(FRAME_LEN_MAX) {
        return Err(FrameError::TooLarge {
            len: len as u64,
            limit: limit.min(FRAME_LEN_MAX),
        });
    }
    Ok(len)
}

/// Splits one whole frame held in memory into its body.
pub fn decode(bytes: &[u8]) -> Result<&[u8], FrameError> {
    let prefix: [u8; PREFIX_LEN] = bytes
        .get(..PREFIX_LEN)
        .and_then(|p| p.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let len = body_len(prefix, FRAME_LEN_MAX)?;
    let body = &bytes[PREFIX_LEN..];
    match body.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(FrameError::Truncated),
        std::cmp::Ordering::Equal => Ok(body),
        std::cmp::Ordering::Greater => Err(FrameError::Stream(format!(
            "{} trailing bytes after frame",
            body.len() - len
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = encode(b"abc").unwrap();
        assert_eq!(f, [0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(decode(&f).unwrap(), b"abc");
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading() {
        let prefix = ((FRAME_LEN_MAX + 1) as u32).to_be_bytes();
        assert!(matches!(
            body_len(prefix, FRAME_LEN_MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_and_trailing_are_errors() {
        assert!(matches!(decode(&[0, 0]), Err(FrameError::Truncated)));
        assert!(matches!(
            decode(&[0, 0, 0, 2, 1]),
            Err(FrameError::Truncated)
        ));
        assert!(decode(&[0, 0, 0, 1, 1, 2]).is_err());
    }
}
