//! Provisional changes and reconciliation reports in the facility's redb
//! file. Every write is one durable transaction: a provisional change
//! acknowledged to a client survives a crash of its facility.

use bulwark_storage::schema::{PROVISIONAL, RECONCILIATION};
use bulwark_storage::{codec, StorageError, Store};
use bulwark_transport::FacilityId;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::heal::Report;
use super::PartitionState;
use crate::hlc::Hlc;
use crate::schedule::Command;

/// Largest stored provisional change or report, in bytes.
pub const ROW_LEN_MAX: usize = 1 << 20;

/// A change accepted while this facility could not reach a quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisional {
    /// Local sequence.
    pub id: u64,
    /// When it was made (the command carries the same stamp).
    pub hlc: Hlc,
    /// The facility that accepted it.
    pub facility: FacilityId,
    /// The partition state it was accepted in.
    pub state: PartitionState,
    /// The command, stamped.
    pub command: Command,
    /// Where it stands.
    pub status: Status,
}

/// Where a provisional change stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Not yet replayed.
    Pending,
    /// Conflicting, waiting for an operator ([`super::heal::HealerMsg::Resolve`]).
    Review,
    /// Settled; the report of `round` says how.
    Settled {
        /// The reconciliation round.
        round: u64,
    },
}

/// The provisional table and the reports.
#[derive(Clone, Debug)]
pub struct ProvisionalStore {
    store: Store,
}

impl ProvisionalStore {
    /// Wraps `store`.
    pub fn new(store: Store) -> ProvisionalStore {
        ProvisionalStore { store }
    }

    /// Every provisional change, by id.
    pub fn all(&self) -> Result<Vec<Provisional>, StorageError> {
        self.decoded(PROVISIONAL, "provisional")
    }

    fn decoded<T: serde::de::DeserializeOwned>(
        &self,
        table: redb::TableDefinition<u64, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>, StorageError> {
        let s = &self.store;
        s.rows(table)?
            .into_iter()
            .map(|(k, v)| {
                codec::decode_limited(&v, ROW_LEN_MAX).map_err(|e| s.codec_error(name, k, e))
            })
            .collect()
    }

    /// The changes with `status`, oldest stamp first.
    pub fn with_status(&self, status: &Status) -> Result<Vec<Provisional>, StorageError> {
        let mut p: Vec<Provisional> = self
            .all()?
            .into_iter()
            .filter(|p| p.status == *status)
            .collect();
        p.sort_by_key(|p| p.hlc);
        Ok(p)
    }

    /// Stores a new change (its id is assigned here) and returns it.
    pub fn insert(&self, mut p: Provisional) -> Result<Provisional, StorageError> {
        let s = &self.store;
        let tx = s.begin_write()?;
        {
            let mut t = tx.open_table(PROVISIONAL).map_err(|e| s.redb(e))?;
            let last = t
                .last()
                .map_err(|e| s.redb(e))?
                .map_or(0, |(k, _)| k.value());
            p.id = last + 1;
            let bytes = codec::encode(&p).map_err(|e| s.codec_error("provisional", p.id, e))?;
            t.insert(p.id, bytes.as_slice()).map_err(|e| s.redb(e))?;
        }
        tx.commit().map_err(|e| s.redb(e))?;
        Ok(p)
    }

    /// Sets the status of changes and stores `report`, in one transaction.
    pub fn settle(
        &self,
        updates: &[(u64, Status)],
        report: Option<&Report>,
    ) -> Result<(), StorageError> {
        let s = &self.store;
        let tx = s.begin_write()?;
        {
            let mut t = tx.open_table(PROVISIONAL).map_err(|e| s.redb(e))?;
            for (id, status) in updates {
                let Some(bytes) = t
                    .get(id)
                    .map_err(|e| s.redb(e))?
                    .map(|v| v.value().to_vec())
                else {
                    continue;
                };
                let mut p: Provisional = codec::decode_limited(&bytes, ROW_LEN_MAX)
                    .map_err(|e| s.codec_error("provisional", id, e))?;
                p.status = status.clone();
                let bytes = codec::encode(&p).map_err(|e| s.codec_error("provisional", id, e))?;
                t.insert(id, bytes.as_slice()).map_err(|e| s.redb(e))?;
            }
        }
        if let Some(r) = report {
            let mut t = tx.open_table(RECONCILIATION).map_err(|e| s.redb(e))?;
            let bytes =
                codec::encode(r).map_err(|e| s.codec_error("reconciliation", r.round, e))?;
            t.insert(r.round, bytes.as_slice()).map_err(|e| s.redb(e))?;
        }
        tx.commit().map_err(|e| s.redb(e))
    }

    /// Every stored report, oldest first.
    pub fn reports(&self) -> Result<Vec<Report>, StorageError> {
        self.decoded(RECONCILIATION, "reconciliation")
    }
}
