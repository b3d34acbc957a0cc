//! The durable idempotency store: a request's key, the hash of its body
//! and its answer, kept in redb with a time to live. A retry with the same
//! key and body gets the first answer again; the same key with another
//! body is refused (`KEY_REUSED`); after the TTL the key is forgotten.
//! Expiry runs in bounded batches.
//!
//! Its writes are deferred commits (no fsync of their own; durable with the
//! facility's next durable commit, which the Raft log makes all the time):
//! a record lost in a power loss costs nothing but the cached answer. The
//! replicated schedule applies each key once whatever this store says, and
//! a retry that finds no record reaches consensus again and is answered as
//! a duplicate with the first outcome.

use bulwark_storage::schema::IDEMPOTENCY;
use bulwark_storage::{codec, StorageError, Store};
use redb::{ReadableDatabase, ReadableTable, TableError};
use serde::{Deserialize, Serialize};

/// Largest key, in bytes.
pub const KEY_LEN_MAX: usize = 128;

/// Largest remembered answer, in bytes.
pub const ANSWER_LEN_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    body_hash: [u8; 32],
    answer: Vec<u8>,
    expires_unix_ms: u64,
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Never seen (or expired): go ahead.
    Miss,
    /// A retry: here is the first answer.
    Replay(Vec<u8>),
    /// The key was used for another body.
    KeyReused,
}

/// Why the store refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdempotencyError {
    /// The key or answer is too large.
    #[error("{what} of {len} bytes exceeds {limit}")]
    TooLarge {
        /// Key or answer.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The store. See the module docs.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    store: Store,
    ttl_ms: u64,
}

impl IdempotencyStore {
    /// Keys in `store`, remembered for `ttl_ms`.
    pub fn new(store: Store, ttl_ms: u64) -> IdempotencyStore {
        IdempotencyStore { store, ttl_ms }
    }

    fn check_key(key: &[u8]) -> Result<(), IdempotencyError> {
        if key.is_empty() || key.len() > KEY_LEN_MAX {
            return Err(IdempotencyError::TooLarge {
                what: "key",
                len: key.len(),
                limit: KEY_LEN_MAX,
            });
        }
        Ok(())
    }

    /// Looks `key` up for a request with `body`.
    pub fn lookup(
        &self,
        key: &[u8],
        body: &[u8],
        now_unix_ms: u64,
    ) -> Result<Lookup, IdempotencyError> {
        Self::check_key(key)?;
        let s = &self.store;
        let tx = s.database().begin_read().map_err(|e| s.redb(e))?;
        let t = match tx.open_table(IDEMPOTENCY) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Lookup::Miss),
            Err(e) => return Err(s.redb(e).into()),
        };
        let Some(v) = t.get(key).map_err(|e| s.redb(e))? else {
            return Ok(Lookup::Miss);
        };
        let rec: Record =
            codec::decode(v.value()).map_err(|e| s.codec_error("idempotency", hex(key), e))?;
        if rec.expires_unix_ms <= now_unix_ms {
            return Ok(Lookup::Miss);
        }
        if rec.body_hash != *blake3::hash(body).as_bytes() {
            return Ok(Lookup::KeyReused);
        }
        Ok(Lookup::Replay(rec.answer))
    }

    /// Remembers `answer` for `key` and `body` (durably, before the answer
    /// is sent).
    pub fn remember(
        &self,
        key: &[u8],
        body: &[u8],
        answer: &[u8],
        now_unix_ms: u64,
    ) -> Result<(), IdempotencyError> {
        Self::check_key(key)?;
        if answer.len() > ANSWER_LEN_MAX {
            return Err(IdempotencyError::TooLarge {
                what: "answer",
                len: answer.len(),
                limit: ANSWER_LEN_MAX,
            });
        }
        let rec = Record {
            body_hash: *blake3::hash(body).as_bytes(),
            answer: answer.to_vec(),
            expires_unix_ms: now_unix_ms.saturating_add(self.ttl_ms),
        };
        let s = &self.store;
        let bytes = codec::encode(&rec).map_err(|e| s.codec_error("idempotency", hex(key), e))?;
        let tx = s.begin_write_deferred()?;
        tx.open_table(IDEMPOTENCY)
            .map_err(|e| s.redb(e))?
            .insert(key, bytes.as_slice())
            .map_err(|e| s.redb(e))?;
        tx.commit().map_err(|e| s.redb(e))?;
        Ok(())
    }

    /// Forgets up to `max` expired keys; returns how many.
    pub fn expire(&self, now_unix_ms: u64, max: usize) -> Result<usize, IdempotencyError> {
        let s = &self.store;
        let tx = s.begin_write_deferred()?;
        let mut removed = 0;
        {
            let mut t = tx.open_table(IDEMPOTENCY).map_err(|e| s.redb(e))?;
            let mut expired = Vec::new();
            for row in t.iter().map_err(|e| s.redb(e))? {
                let (k, v) = row.map_err(|e| s.redb(e))?;
                // An undecodable row is treated as expired: it is dropped.
                let done = codec::decode::<Record>(v.value())
                    .map_or(true, |r| r.expires_unix_ms <= now_unix_ms);
                if done {
                    expired.push(k.value().to_vec());
                    if expired.len() >= max {
                        break;
                    }
                }
            }
            for k in expired {
                t.remove(k.as_slice()).map_err(|e| s.redb(e))?;
                removed += 1;
            }
        }
        tx.commit().map_err(|e| s.redb(e))?;
        Ok(removed)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_replays_another_body_is_refused_and_the_ttl_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.redb");
        let s = IdempotencyStore::new(Store::open(&path, "alpha").unwrap().store, 1_000);
        assert_eq!(s.lookup(b"k1", b"body", 0).unwrap(), Lookup::Miss);
        s.remember(b"k1", b"body", b"201 created", 0).unwrap();
        assert_eq!(
            s.lookup(b"k1", b"body", 10).unwrap(),
            Lookup::Replay(b"201 created".to_vec())
        );
        assert_eq!(s.lookup(b"k1", b"other", 10).unwrap(), Lookup::KeyReused);
        drop(s);
        // Durable: a reopen remembers.
        let s = IdempotencyStore::new(Store::open(&path, "alpha").unwrap().store, 1_000);
        assert_eq!(
            s.lookup(b"k1", b"body", 20).unwrap(),
            Lookup::Replay(b"201 created".to_vec())
        );
        assert_eq!(
            s.lookup(b"k1", b"body", 1_000).unwrap(),
            Lookup::Miss,
            "expired"
        );
        assert_eq!(s.expire(1_000, 10).unwrap(), 1);
        assert_eq!(s.expire(1_000, 10).unwrap(), 0);
        assert!(matches!(
            s.lookup(&[0; 129], b"", 0),
            Err(IdempotencyError::TooLarge { .. })
        ));
        assert!(matches!(
            s.remember(b"k2", b"", &vec![0; ANSWER_LEN_MAX + 1], 0),
            Err(IdempotencyError::TooLarge { what: "answer", .. })
        ));
    }
}
