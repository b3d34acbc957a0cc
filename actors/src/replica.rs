//! The replica: the applied schedule in the facility's redb file, below
//! consensus.
//!
//! - The schedule's rules ([`crate::schedule`]) run over [`RedbTables`], a
//!   write transaction on the `sched_*` tables; the applied index, the
//!   schedule and the ledger chain's head are written in that one
//!   transaction, so a restart resumes from disk where the last batch
//!   left it, never from a decoded blob.
//! - Reads ([`Replica::read`]) run over one read transaction
//!   ([`RedbRead`]): a consistent view at one applied index, whatever is
//!   applied meanwhile.
//! - Memory is bounded by the chain's anchor window (1,024 hashes), not by
//!   the history: every command reads one person's duty near its block,
//!   one block's people and one key.
//! - Snapshots ([`snapshot`]) stream the tables' rows from one read
//!   transaction in bounded chunks, and install atomically.
//!
//! Apply transactions commit without an fsync of their own: every entry
//! they apply is already durable in the Raft log, and the next durable
//! commit (the Raft log's own, or a compaction's) makes them durable too. A
//! crash loses at most applied work that the log replays.

mod machine;
pub mod snapshot;
mod tables;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bulwark_storage::schema::{SCHED_CHAIN, SCHED_META, SCHED_VERDICTS};
use bulwark_storage::{codec, StorageError, Store};
use bulwark_transport::FacilityId;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::ledger::{ChainHead, Hash, Recorded, ANCHOR_WINDOW};
use crate::schedule::Schedule;
pub use machine::{Checkpoint, CheckpointSink, ScheduleContext, ScheduleMachine, Shown};
pub use tables::{RedbRead, RedbTables};

/// The key of the scalars' row of `sched_meta`.
pub(crate) const META_KEY: &[u8] = b"meta";
/// The key of the last archived day in `sched_meta` (a row of its own, so
/// a store written before archiving existed reads as it was).
pub(crate) const ARCHIVED_KEY: &[u8] = b"archived";
/// The key of the validator sets in force in `sched_meta` (a row of its
/// own, written only when an epoch begins; absent: the genesis set).
pub(crate) const VALIDATORS_KEY: &[u8] = b"validators";

/// The replica's scalars, one row.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Meta {
    /// The last Raft index applied (any entry type).
    pub applied: u64,
    /// The last index of a schedule command applied.
    pub last_index: u64,
    /// The last finally approved day.
    pub approved_through: Option<u32>,
    /// Rejections ever recorded.
    pub rejected_total: u64,
    /// Idempotency keys held.
    pub keys_len: u64,
    /// The chain's height.
    pub chain_height: u64,
    /// Each proposer's latest admitted timestamp.
    pub last_at: BTreeMap<FacilityId, u64>,
    /// The index of the last snapshot installed here (0: none). Entries up
    /// to it may have no recorded verdict here.
    pub installed: u64,
    /// The last archived day (stored under [`ARCHIVED_KEY`]).
    #[serde(skip)]
    pub archived_through: Option<u32>,
}

/// A batch's scalars and chain head, from [`RedbTables::finish`].
#[derive(Debug)]
pub struct Done {
    meta: Meta,
    chain: ChainHead,
}

/// The schedule as a read transaction sees it.
pub type ScheduleView = Schedule<RedbRead>;

/// The applied state of one facility. See the module docs.
pub struct Replica {
    store: Store,
    meta: Meta,
    chain: Arc<ChainHead>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("path", &self.store.path())
            .field("applied", &self.meta.applied)
            .finish()
    }
}

impl Replica {
    /// Loads the replica's scalars and chain head from `store`.
    pub fn open(store: Store) -> Result<Replica, StorageError> {
        let (meta, chain) = load(&store)?;
        Ok(Replica {
            store,
            meta,
            chain: Arc::new(chain),
        })
    }

    /// Empties every replica table in one durable transaction and opens
    /// the empty replica: for a replica that does not open, whose state
    /// the facility then takes again from its peers (the Raft log, with
    /// every vote and acknowledged entry, is kept).
    pub fn reset(store: Store) -> Result<Replica, StorageError> {
        let tx = store.begin_write()?;
        for def in bulwark_storage::schema::SCHED_TABLES
            .into_iter()
            .chain([bulwark_storage::schema::SCHED_STAGING])
        {
            let mut t = tx.open_table(def).map_err(|e| store.redb(e))?;
            t.retain(|_, _| false).map_err(|e| store.redb(e))?;
        }
        tx.commit().map_err(|e| store.redb(e))?;
        Replica::open(store)
    }

    /// The last Raft index applied.
    pub fn applied(&self) -> u64 {
        self.meta.applied
    }

    /// The ledger chain's head.
    pub fn chain(&self) -> &ChainHead {
        &self.chain
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Starts a batch of applies: one write transaction, committed by
    /// [`Replica::commit`].
    pub fn begin(&self) -> Result<WriteTransaction, StorageError> {
        let tx = self.store.begin_write_deferred()?;
        Ok(tx)
    }

    /// The schedule over `tx`, from the replica's current scalars.
    pub fn schedule<'a>(&self, tx: &'a WriteTransaction) -> Schedule<RedbTables<'a>> {
        Schedule::over(RedbTables::new(
            tx,
            self.store.clone(),
            self.meta.clone(),
            (*self.chain).clone(),
        ))
    }

    /// Writes the batch's scalars (from [`RedbTables::finish`]) with
    /// `applied` and commits it. On `Err`
    /// nothing of the batch is kept and the replica is as before.
    pub fn commit(
        &mut self,
        tx: WriteTransaction,
        done: Done,
        applied: u64,
    ) -> Result<(), StorageError> {
        let Done { mut meta, chain } = done;
        meta.applied = meta.applied.max(applied);
        write_meta(&self.store, &tx, &meta)?;
        tx.commit().map_err(|e| self.store.redb(e))?;
        self.meta = meta;
        self.chain = Arc::new(chain);
        Ok(())
    }

    /// Records `applied` (entries that change no schedule state: the
    /// leader's empty entry, configuration changes) in `tx`.
    pub fn note_applied(&self, tx: &WriteTransaction, applied: u64) -> Result<Meta, StorageError> {
        let mut meta = self.meta.clone();
        meta.applied = meta.applied.max(applied);
        write_meta(&self.store, tx, &meta)?;
        Ok(meta)
    }

    /// Commits a transaction that only moved the applied index.
    pub fn commit_meta(&mut self, tx: WriteTransaction, meta: Meta) -> Result<(), StorageError> {
        tx.commit().map_err(|e| self.store.redb(e))?;
        self.meta = meta;
        Ok(())
    }

    /// Records the ledger's verdict on the entry at `index` in `tx`.
    pub fn record_verdict(
        &self,
        tx: &WriteTransaction,
        index: u64,
        rec: &Recorded,
    ) -> Result<(), StorageError> {
        let s = &self.store;
        let bytes = codec::encode(rec).map_err(|e| s.codec_error("sched_verdicts", index, e))?;
        let mut t = tx.open_table(SCHED_VERDICTS).map_err(|e| s.redb(e))?;
        t.insert(index.to_be_bytes().as_slice(), bytes.as_slice())
            .map_err(|e| s.redb(e))?;
        Ok(())
    }

    /// Forgets the verdicts at and before `index` (the log is compacted
    /// there) in `tx`.
    pub fn prune_verdicts(&self, tx: &WriteTransaction, index: u64) -> Result<(), StorageError> {
        let s = &self.store;
        let mut t = tx.open_table(SCHED_VERDICTS).map_err(|e| s.redb(e))?;
        let end = index.saturating_add(1).to_be_bytes();
        t.retain_in::<&[u8], _>(..end.as_slice(), |_, _| false)
            .map_err(|e| s.redb(e))?;
        Ok(())
    }

    /// The verdict on the entry at `index` as `tx` sees it (its own writes
    /// included), if kept.
    pub fn verdict_in(
        &self,
        tx: &WriteTransaction,
        index: u64,
    ) -> Result<Option<Recorded>, StorageError> {
        let t = tx
            .open_table(SCHED_VERDICTS)
            .map_err(|e| self.store.redb(e))?;
        self.verdict_from(&t, index)
    }

    /// The recorded verdict on the entry at `index`, if kept.
    pub fn verdict_at(&self, index: u64) -> Result<Option<Recorded>, StorageError> {
        let s = &self.store;
        let tx = s.database().begin_read().map_err(|e| s.redb(e))?;
        let t = match tx.open_table(SCHED_VERDICTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(s.redb(e)),
        };
        self.verdict_from(&t, index)
    }

    fn verdict_from(
        &self,
        t: &impl ReadableTable<&'static [u8], &'static [u8]>,
        index: u64,
    ) -> Result<Option<Recorded>, StorageError> {
        let s = &self.store;
        let Some(v) = t
            .get(index.to_be_bytes().as_slice())
            .map_err(|e| s.redb(e))?
        else {
            return Ok(None);
        };
        let rec =
            codec::decode(v.value()).map_err(|e| s.codec_error("sched_verdicts", index, e))?;
        Ok(Some(rec))
    }

    /// A consistent view of the applied schedule.
    pub fn read(&self) -> Result<ScheduleView, StorageError> {
        let tx = self
            .store
            .database()
            .begin_read()
            .map_err(|e| self.store.redb(e))?;
        Ok(Schedule::over(RedbRead::new(
            tx,
            self.store.clone(),
            self.meta.clone(),
            self.chain.clone(),
        )))
    }

    /// Reloads the scalars from disk (after an install, or a failed batch).
    pub fn reload(&mut self) -> Result<(), StorageError> {
        let (meta, chain) = load(&self.store)?;
        self.meta = meta;
        self.chain = Arc::new(chain);
        Ok(())
    }
}

fn write_meta(store: &Store, tx: &WriteTransaction, meta: &Meta) -> Result<(), StorageError> {
    let bytes = codec::encode(meta).map_err(|e| store.codec_error("sched_meta", "meta", e))?;
    let mut t = tx.open_table(SCHED_META).map_err(|e| store.redb(e))?;
    t.insert(META_KEY, bytes.as_slice())
        .map_err(|e| store.redb(e))?;
    if let Some(day) = meta.archived_through {
        t.insert(ARCHIVED_KEY, day.to_be_bytes().as_slice())
            .map_err(|e| store.redb(e))?;
    }
    Ok(())
}

fn load(store: &Store) -> Result<(Meta, ChainHead), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        path: store.path().to_path_buf(),
        reason,
    };
    let tx = store.database().begin_read().map_err(|e| store.redb(e))?;
    let mut in_force = crate::epoch::InForce::default();
    let meta = match tx.open_table(SCHED_META) {
        Ok(t) => {
            if let Some(v) = t.get(VALIDATORS_KEY).map_err(|e| store.redb(e))? {
                in_force = codec::decode(v.value())
                    .map_err(|e| store.codec_error("sched_meta", "validators", e))?;
            }
            let mut meta = match t.get(META_KEY).map_err(|e| store.redb(e))? {
                Some(v) => codec::decode::<Meta>(v.value())
                    .map_err(|e| store.codec_error("sched_meta", "meta", e))?,
                None => Meta::default(),
            };
            if let Some(v) = t.get(ARCHIVED_KEY).map_err(|e| store.redb(e))? {
                let day: [u8; 4] = v
                    .value()
                    .try_into()
                    .map_err(|_| corrupt("sched_meta archived is not a day".into()))?;
                meta.archived_through = Some(u32::from_be_bytes(day));
            }
            meta
        }
        Err(redb::TableError::TableDoesNotExist(_)) => Meta::default(),
        Err(e) => return Err(store.redb(e)),
    };
    let mut recent: VecDeque<Hash> = VecDeque::new();
    match tx.open_table(SCHED_CHAIN) {
        Ok(t) => {
            let first = meta.chain_height.saturating_sub(ANCHOR_WINDOW) + 1;
            for (expect, row) in (first..).zip(t.iter().map_err(|e| store.redb(e))?) {
                let (k, v) = row.map_err(|e| store.redb(e))?;
                let height = tables::be_u64(k.value())
                    .ok_or_else(|| corrupt("sched_chain key is not a height".into()))?;
                let hash: Hash = v
                    .value()
                    .try_into()
                    .map_err(|_| corrupt(format!("sched_chain {height} is not a hash")))?;
                if height != expect {
                    return Err(corrupt(format!(
                        "sched_chain has height {height} where {expect} belongs"
                    )));
                }
                recent.push_back(hash);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(store.redb(e)),
    }
    let chain = ChainHead::from_parts(meta.chain_height, recent, meta.last_at.clone(), in_force);
    chain.check().map_err(corrupt)?;
    if chain.recent().count() as u64 != meta.chain_height.min(ANCHOR_WINDOW) {
        return Err(corrupt("sched_chain misses recent hashes".into()));
    }
    Ok((meta, chain))
}

impl Schedule<RedbRead> {
    /// The whole schedule in memory (see [`RedbRead::to_mem`]): for checks,
    /// tests and whole-schedule answers, at the cost of the history's size.
    pub fn to_state(&self) -> Result<crate::schedule::ScheduleState, StorageError> {
        Ok(Schedule::over(self.tables().to_mem()?))
    }
}
