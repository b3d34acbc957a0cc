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
//!
//! The chunks, cursors, descriptor and digest are the storage crate's
//! ([`bulwark_storage::stream`]), the same for any state machine's tables;
//! which tables, and how they are staged and installed, is the replica's.

use bulwark_storage::schema::{SCHED_META, SCHED_STAGING, SCHED_TABLES};
use bulwark_storage::{codec, StorageError, Store};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

pub use bulwark_storage::stream::{
    open, seal, Chunk, Cursor, Descriptor, Row, RowHasher, SnapshotError, CHUNK_BYTES,
};

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

/// Empties the staging table (a new transfer begins).
pub fn clear_staging(store: &Store) -> Result<(), StorageError> {
    let tx = store.begin_write_deferred()?;
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
) -> Result<(), SnapshotError> {
    if let Some(r) = rows.iter().find(|r| r.table as usize >= SCHED_TABLES.len()) {
        return Err(SnapshotError::UnknownTable(r.table));
    }
    let tx = store.begin_write_deferred()?;
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
    tx.commit().map_err(|e| store.redb(e))?;
    Ok(())
}

/// Replaces the replica's tables by the staged rows, in one durable
/// transaction, after checking them against `desc`. On `Err` the replica
/// is as it was (the staging is kept for a look, and cleared by the next
/// transfer).
pub fn install(store: &Store, desc: &Descriptor, hasher: &RowHasher) -> Result<(), SnapshotError> {
    hasher.check(desc)?;
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
