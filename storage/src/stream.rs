//! Rows of redb tables streamed in bounded chunks: what a snapshot is on
//! the wire, whatever state machine's tables it carries.
//!
//! - A sender reads its tables' rows in key order, table after table, in
//!   [`Chunk`]s of at most [`CHUNK_BYTES`]; a [`Cursor`] names where the
//!   next chunk starts, so a transfer resumes where it stopped. A
//!   [`Descriptor`] names the snapshot's index, its row count and a blake3
//!   digest of every row ([`RowHasher`]).
//! - Each chunk travels [`seal`]ed with a checksum; the receiver
//!   [`open`]s it (checksum and a bounded decode) before staging its rows.
//! - Which tables the rows come from, and how they are staged and
//!   installed, is the state machine's; a row names its table by number.

use serde::{Deserialize, Serialize};

use crate::{codec, StorageError};

/// A blake3 digest.
pub type Digest = [u8; 32];

/// Most bytes of rows in one chunk.
pub const CHUNK_BYTES: usize = 1024 * 1024;
/// Framing a chunk may add to its rows.
const CHUNK_SLACK: usize = 64 * 1024;

/// What the Raft snapshot message carries instead of the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Which held snapshot of the sender (it serves chunks by this id).
    pub id: u64,
    /// The applied index the rows are at.
    pub index: u64,
    /// Rows in all.
    pub rows: u64,
    /// Bytes of rows in all.
    pub bytes: u64,
    /// blake3 over every row ([`RowHasher`]).
    pub digest: Digest,
}

/// Where a chunk starts: table number and the last key already sent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// The table's number.
    pub table: u8,
    /// The last key sent from `table` (none: from its first row).
    pub after: Option<Vec<u8>>,
    /// Rows sent before this cursor.
    pub rows: u64,
}

/// One row of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The table's number.
    pub table: u8,
    /// The key's bytes.
    pub key: Vec<u8>,
    /// The value's bytes.
    pub value: Vec<u8>,
}

/// Up to [`CHUNK_BYTES`] of rows, and where the next chunk starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The rows, in order.
    pub rows: Vec<Row>,
    /// Where the next chunk starts; none: this was the last.
    pub next: Option<Cursor>,
}

/// Why a snapshot could not be sent, received or installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A chunk's bytes do not match its checksum, or do not decode.
    #[error("snapshot chunk at row {at} is damaged: {why}")]
    DamagedChunk {
        /// Rows before the chunk.
        at: u64,
        /// What is wrong.
        why: String,
    },
    /// The rows do not hash to the descriptor's digest, or their count or
    /// size differs.
    #[error("snapshot at index {index} does not match its descriptor: {why}")]
    Mismatch {
        /// The snapshot's index.
        index: u64,
        /// What differs.
        why: String,
    },
    /// The state has already applied the snapshot's index (it caught up by
    /// the log while the rows came): installing would move it back.
    #[error("snapshot at index {index} is behind the state, which has applied {applied}")]
    Stale {
        /// The snapshot's index.
        index: u64,
        /// The applied index here.
        applied: u64,
    },
    /// A row names a table that does not exist.
    #[error("snapshot row names table {0}, which does not exist")]
    UnknownTable(u8),
}

/// blake3 over rows, each framed by its table and lengths.
#[derive(Default)]
pub struct RowHasher {
    h: blake3::Hasher,
    rows: u64,
    bytes: u64,
}

impl RowHasher {
    /// Adds one row.
    pub fn add(&mut self, table: u8, key: &[u8], value: &[u8]) {
        self.h.update(&[table]);
        self.h.update(&(key.len() as u64).to_le_bytes());
        self.h.update(key);
        self.h.update(&(value.len() as u64).to_le_bytes());
        self.h.update(value);
        self.rows += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }

    /// Rows added.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes added.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest so far.
    pub fn digest(&self) -> Digest {
        *self.h.finalize().as_bytes()
    }

    /// Checks the rows added against `desc`.
    pub fn check(&self, desc: &Descriptor) -> Result<(), SnapshotError> {
        let mismatch = |why: String| SnapshotError::Mismatch {
            index: desc.index,
            why,
        };
        if self.rows != desc.rows || self.bytes != desc.bytes {
            return Err(mismatch(format!(
                "{} rows / {} bytes received, {} / {} described",
                self.rows, self.bytes, desc.rows, desc.bytes
            )));
        }
        if self.digest() != desc.digest {
            return Err(mismatch("digest differs".into()));
        }
        Ok(())
    }
}

/// Encodes a chunk for the wire, with its checksum.
pub fn seal(chunk: &Chunk) -> Result<(Vec<u8>, Digest), StorageError> {
    let bytes = codec::encode(chunk).map_err(|e| StorageError::Corrupt {
        path: Default::default(),
        reason: format!("snapshot chunk does not encode: {e}"),
    })?;
    let sum = *blake3::hash(&bytes).as_bytes();
    Ok((bytes, sum))
}

/// Checks and decodes a chunk received as `bytes` with `checksum`; `at` is
/// the receiver's row count so far (for the error).
pub fn open(bytes: &[u8], checksum: &Digest, at: u64) -> Result<Chunk, SnapshotError> {
    if blake3::hash(bytes).as_bytes() != checksum {
        return Err(SnapshotError::DamagedChunk {
            at,
            why: "checksum mismatch".into(),
        });
    }
    codec::decode_limited(bytes, CHUNK_BYTES + CHUNK_SLACK).map_err(|e| {
        SnapshotError::DamagedChunk {
            at,
            why: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> Chunk {
        Chunk {
            rows: vec![Row {
                table: 2,
                key: b"k".to_vec(),
                value: vec![7; 100],
            }],
            next: Some(Cursor {
                table: 2,
                after: Some(b"k".to_vec()),
                rows: 1,
            }),
        }
    }

    #[test]
    fn a_sealed_chunk_opens_and_a_flipped_byte_does_not() {
        let (mut bytes, sum) = seal(&chunk()).unwrap();
        assert_eq!(open(&bytes, &sum, 0).unwrap(), chunk());
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        assert!(matches!(
            open(&bytes, &sum, 3),
            Err(SnapshotError::DamagedChunk { at: 3, .. })
        ));
    }

    #[test]
    fn rows_that_differ_from_the_descriptor_are_a_mismatch() {
        let mut h = RowHasher::default();
        h.add(1, b"a", b"b");
        let desc = Descriptor {
            id: 1,
            index: 9,
            rows: 1,
            bytes: 2,
            digest: h.digest(),
        };
        assert!(h.check(&desc).is_ok());
        let mut other = desc.clone();
        other.digest[0] ^= 1;
        assert!(matches!(
            h.check(&other),
            Err(SnapshotError::Mismatch { index: 9, .. })
        ));
        h.add(1, b"c", b"d");
        assert!(matches!(
            h.check(&desc),
            Err(SnapshotError::Mismatch { .. })
        ));
    }
}
