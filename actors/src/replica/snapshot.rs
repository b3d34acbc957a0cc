//! Snapshots of the replica, streamed: no size ceiling, bounded memory.
//!
//! - **Out.** A snapshot is one redb read transaction ([`Outgoing`]): the
//!   replica's tables exactly as they were at one applied index, however
//!   much is applied meanwhile. Its rows are read in key order, table after
//!   table, in [`Chunk`]s of at most [`CHUNK_BYTES`]; a [`Cursor`] names
//!   where the next chunk starts, so a transfer resumes where it stopped.
//!   The [`Descriptor`] that travels in the Raft snapshot message names the
//!   index, the row count and a blake3 digest of every row.
//! - **In.** The receiver checks each chunk's checksum, stages its rows in
//!   the `sched_staging` table ([`stage`]), and, when the digest of all the
//!   rows matches the descriptor's, installs them in one durable
//!   transaction ([`install`]). A chunk or a digest that does not match is
//!   a typed [`SnapshotError`] that leaves the replica as it was.

use bulwark_storage::schema::{SCHED_META, SCHED_STAGING, SCHED_TABLES};
use bulwark_storage::{codec, StorageError, Store};
use redb::{Durability, ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::ledger::Hash;

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
    pub digest: Hash,
}

/// Where a chunk starts: table number and the last key already sent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Cursor {
    /// Index into [`SCHED_TABLES`].
    pub table: u8,
    /// The last key sent from `table` (none: from its first row).
    pub after: Option<Vec<u8>>,
    /// Rows sent before this cursor.
    pub rows: u64,
}

/// One row of a replica table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Index into [`SCHED_TABLES`].
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
    /// The replica has already applied the snapshot's index (it caught up
    /// by the log while the rows came): installing would move it back.
    #[error("snapshot at index {index} is behind the replica, which has applied {applied}")]
    Stale {
        /// The snapshot's index.
        index: u64,
        /// The replica's applied index.
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
    pub fn digest(&self) -> Hash {
        *self.h.finalize().as_bytes()
    }
}

/// Reads the chunk that starts at `from` from `tx`.
pub fn read_chunk(
    store: &Store,
    tx: &ReadTransaction,
    from: &Cursor,
    max_bytes: usize,
) -> Result<Chunk, StorageError> {
    let mut rows = Vec::new();
    let mut size = 0usize;
    let mut cursor = from.clone();
    while (cursor.table as usize) < SCHED_TABLES.len() {
        let def = SCHED_TABLES[cursor.table as usize];
        let t = match tx.open_table(def) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(store.redb(e)),
        };
        if let Some(t) = t {
            let iter = match &cursor.after {
                Some(after) => t.range::<&[u8]>((
                    std::ops::Bound::Excluded(after.as_slice()),
                    std::ops::Bound::Unbounded,
                )),
                None => t.range::<&[u8]>(..),
            }
            .map_err(|e| store.redb(e))?;
            for row in iter {
                let (k, v) = row.map_err(|e| store.redb(e))?;
                let (k, v) = (k.value().to_vec(), v.value().to_vec());
                let len = k.len() + v.len() + 16;
                if size + len > max_bytes && !rows.is_empty() {
                    return Ok(Chunk {
                        rows,
                        next: Some(cursor),
                    });
                }
                size += len;
                cursor.after = Some(k.clone());
                cursor.rows += 1;
                rows.push(Row {
                    table: cursor.table,
                    key: k,
                    value: v,
                });
            }
        }
        cursor.table += 1;
        cursor.after = None;
    }
    Ok(Chunk { rows, next: None })
}

/// Hashes every row of `tx` (the sender's descriptor).
pub fn digest_all(store: &Store, tx: &ReadTransaction) -> Result<RowHasher, StorageError> {
    let mut h = RowHasher::default();
    let mut cursor = Cursor::default();
    loop {
        let chunk = read_chunk(store, tx, &cursor, CHUNK_BYTES)?;
        for r in &chunk.rows {
            h.add(r.table, &r.key, &r.value);
        }
        match chunk.next {
            Some(next) => cursor = next,
            None => return Ok(h),
        }
    }
}

/// Encodes a chunk for the wire, with its checksum.
pub fn seal(chunk: &Chunk) -> Result<(Vec<u8>, Hash), StorageError> {
    let bytes = codec::encode(chunk).map_err(|e| StorageError::Corrupt {
        path: Default::default(),
        reason: format!("snapshot chunk does not encode: {e}"),
    })?;
    let sum = *blake3::hash(&bytes).as_bytes();
    Ok((bytes, sum))
}

/// Checks and decodes a chunk received as `bytes` with `checksum`; `at` is
/// the receiver's row count so far (for the error).
pub fn open(bytes: &[u8], checksum: &Hash, at: u64) -> Result<Chunk, SnapshotError> {
    if blake3::hash(bytes).as_bytes() != checksum {
        return Err(SnapshotError::DamagedChunk {
            at,
            why: "checksum mismatch".into(),
        });
    }
    let chunk: Chunk = codec::decode_limited(bytes, CHUNK_BYTES + CHUNK_SLACK).map_err(|e| {
        SnapshotError::DamagedChunk {
            at,
            why: e.to_string(),
        }
    })?;
    if let Some(r) = chunk
        .rows
        .iter()
        .find(|r| r.table as usize >= SCHED_TABLES.len())
    {
        return Err(SnapshotError::UnknownTable(r.table));
    }
    Ok(chunk)
}

/// Empties the staging table (a new transfer begins).
pub fn clear_staging(store: &Store) -> Result<(), StorageError> {
    let mut tx = store.begin_write()?;
    tx.set_durability(Durability::None)
        .map_err(|e| store.redb(redb::Error::from(e)))?;
    {
        let mut t = tx.open_table(SCHED_STAGING).map_err(|e| store.redb(e))?;
        t.retain(|_, _| false).map_err(|e| store.redb(e))?;
    }
    tx.commit().map_err(|e| store.redb(e))
}

/// Stages `rows` after the `first` rows already staged, and adds them to
/// `hasher`.
pub fn stage(
    store: &Store,
    first: u64,
    rows: &[Row],
    hasher: &mut RowHasher,
) -> Result<(), StorageError> {
    let mut tx = store.begin_write()?;
    tx.set_durability(Durability::None)
        .map_err(|e| store.redb(redb::Error::from(e)))?;
    {
        let mut t = tx.open_table(SCHED_STAGING).map_err(|e| store.redb(e))?;
        for (i, r) in rows.iter().enumerate() {
            let bytes =
                codec::encode(r).map_err(|e| store.codec_error("sched_staging", first, e))?;
            let seq = first + i as u64;
            t.insert(seq.to_be_bytes().as_slice(), bytes.as_slice())
                .map_err(|e| store.redb(e))?;
            hasher.add(r.table, &r.key, &r.value);
        }
    }
    tx.commit().map_err(|e| store.redb(e))
}

/// Replaces the replica's tables by the staged rows, in one durable
/// transaction, after checking them against `desc`. On `Err` the replica
/// is as it was (the staging is kept for a look, and cleared by the next
/// transfer).
pub fn install(store: &Store, desc: &Descriptor, hasher: &RowHasher) -> Result<(), SnapshotError> {
    let mismatch = |why: String| SnapshotError::Mismatch {
        index: desc.index,
        why,
    };
    if hasher.rows() != desc.rows || hasher.bytes() != desc.bytes {
        return Err(mismatch(format!(
            "{} rows / {} bytes received, {} / {} described",
            hasher.rows(),
            hasher.bytes(),
            desc.rows,
            desc.bytes
        )));
    }
    if hasher.digest() != desc.digest {
        return Err(mismatch("digest differs".into()));
    }
    let tx = store.begin_write()?;
    let applied = {
        let t = tx.open_table(SCHED_META).map_err(|e| store.redb(e))?;
        let meta = t.get(super::META_KEY).map_err(|e| store.redb(e))?;
        match meta {
            Some(v) => {
                codec::decode::<super::Meta>(v.value())
                    .map_err(|e| store.codec_error("sched_meta", "meta", e))?
                    .applied
            }
            None => 0,
        }
    };
    if applied >= desc.index {
        return Err(SnapshotError::Stale {
            index: desc.index,
            applied,
        });
    }
    replace_from_staging(store, &tx)?;
    {
        // The sender's scalars, with this facility's install recorded.
        let mut t = tx.open_table(SCHED_META).map_err(|e| store.redb(e))?;
        let meta = t
            .get(super::META_KEY)
            .map_err(|e| store.redb(e))?
            .map(|v| codec::decode::<super::Meta>(v.value()));
        let mut meta = match meta {
            Some(m) => m.map_err(|e| store.codec_error("sched_meta", "meta", e))?,
            None => {
                return Err(SnapshotError::Mismatch {
                    index: desc.index,
                    why: "no scalars row".into(),
                })
            }
        };
        if meta.applied != desc.index {
            return Err(SnapshotError::Mismatch {
                index: desc.index,
                why: format!("the rows are at index {}", meta.applied),
            });
        }
        meta.installed = desc.index;
        let bytes = codec::encode(&meta).map_err(|e| store.codec_error("sched_meta", "meta", e))?;
        t.insert(super::META_KEY, bytes.as_slice())
            .map_err(|e| store.redb(e))?;
    }
    tx.commit().map_err(|e| store.redb(e))?;
    Ok(())
}

fn replace_from_staging(store: &Store, tx: &WriteTransaction) -> Result<(), SnapshotError> {
    for def in SCHED_TABLES {
        let mut t = tx.open_table(def).map_err(|e| store.redb(e))?;
        t.retain(|_, _| false).map_err(|e| store.redb(e))?;
    }
    let mut staging = tx.open_table(SCHED_STAGING).map_err(|e| store.redb(e))?;
    {
        let mut tables = Vec::new();
        for def in SCHED_TABLES {
            tables.push(tx.open_table(def).map_err(|e| store.redb(e))?);
        }
        for row in staging.iter().map_err(|e| store.redb(e))? {
            let (k, v) = row.map_err(|e| store.redb(e))?;
            let r: Row = codec::decode(v.value())
                .map_err(|e| store.codec_error("sched_staging", hex_key(k.value()), e))?;
            let t = tables
                .get_mut(r.table as usize)
                .ok_or(SnapshotError::UnknownTable(r.table))?;
            t.insert(r.key.as_slice(), r.value.as_slice())
                .map_err(|e| store.redb(e))?;
        }
    }
    staging.retain(|_, _| false).map_err(|e| store.redb(e))?;
    Ok(())
}

fn hex_key(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}
