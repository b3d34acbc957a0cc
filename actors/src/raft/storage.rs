//! raft-rs `Storage` over the facility's redb file.
//!
//! Layout: `RAFT_LOG` holds entries by index (as [`WireEntry`]), `RAFT_META`
//! holds the hard state, the conf state and the latest compaction point (a
//! snapshot's metadata; the state itself is the replica's, in its own
//! tables). A snapshot to send is made by the replica and offered here
//! ([`RaftStore::offer_snapshot`]) when raft-rs asks for one
//! ([`RaftStore::snapshot_wanted`]). Every write is one durable redb transaction:
//! when a method returns `Ok`, what it wrote survives a crash, and a crash in
//! the middle leaves the previous state (redb commits atomically).
//!
//! The log after the snapshot is also kept in memory, since raft-rs reads it
//! on every Ready; compaction (a new snapshot) bounds both.

// raft-rs's protobuf structs have private fields: they are built with
// `default()` and field writes.
#![allow(clippy::field_reassign_with_default)]

use bulwark_storage::schema::{RAFT_LOG, RAFT_META};
use bulwark_storage::{codec, StorageError, Store};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};
use redb::{ReadableDatabase, ReadableTable};

use super::wire::{WireConfState, WireEntry, WireHardState, WireSnapshot};
use crate::plant::Bug;

const KEY_HARD_STATE: &str = "hard_state";
const KEY_CONF_STATE: &str = "conf_state";
/// The log index of the last configuration change the stored
/// configuration holds (absent in stores written before it was kept).
const KEY_CONF_INDEX: &str = "conf_index";
const KEY_SNAPSHOT: &str = "snapshot";
const KEY_INCARNATION: &str = "incarnation";
const KEY_FENCE: &str = "vote_fence";
const KEY_PEERS: &str = "peer_stores";
const KEY_STORE_ID: &str = "store_id";
const KEY_IDENTITY: &str = "identity";

/// What this facility knows of its peers' stores (see `RaftCore`'s vote
/// fence), durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStores {
    /// Each peer's store id, as it last announced it (raft id → store id).
    pub announced: std::collections::BTreeMap<u64, u64>,
    /// The (raft id, store id) pairs heard from with a history of their
    /// own: an acknowledged append, a vote request or a leader's message
    /// with entries behind it.
    pub heard: std::collections::BTreeSet<(u64, u64)>,
}

/// Why a facility withholds its votes (see `RaftCore`'s vote fence),
/// durable so that a restart keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Fence {
    /// A store created by this start bootstrapped a new cluster: it votes
    /// only once a majority of the voters say they are new too (a first
    /// start), or once it has caught up with a cluster that has a history.
    Awaiting,
    /// The cluster has a history this store never saw: no vote until this
    /// commit index is reached.
    UntilCommit(u64),
    /// A peer had heard from this facility before its store was created:
    /// its votes and log were lost. It never votes again under this
    /// identity; the reason says so.
    Refused(String),
}

/// The Raft log and state of one facility, durable in redb.
pub struct RaftStore {
    store: Store,
    hard_state: HardState,
    conf_state: ConfState,
    /// See [`RaftStore::conf_index`].
    conf_index: Option<u64>,
    snapshot: Snapshot,
    /// Entries after the snapshot, contiguous: `entries[i].index ==
    /// snapshot index + 1 + i`.
    entries: Vec<Entry>,
    /// Bytes of entry data in `entries`.
    log_bytes: u64,
    /// How many times this store has been opened for Raft.
    incarnation: u64,
    /// A snapshot made to be sent, if any.
    offered: Option<Snapshot>,
    /// The index raft-rs asked a snapshot for and was not given.
    wanted: std::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for RaftStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftStore")
            .field("path", &self.store.path())
            .field("hard_state", &self.hard_state)
            .field("snapshot_index", &self.snapshot_index())
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl RaftStore {
    /// Loads the Raft state from `store`. When the store holds no Raft state
    /// at all and `bootstrap_voters` is given, writes that initial
    /// configuration (a new cluster). Returns whether the store was empty.
    pub fn open(
        store: Store,
        bootstrap_voters: Option<&[u64]>,
    ) -> Result<(RaftStore, bool), StorageError> {
        let corrupt = |reason: String| StorageError::Corrupt {
            path: store.path().to_path_buf(),
            reason,
        };
        let (hs, cs, conf_index, snap, log) = {
            let tx = store.database().begin_read().map_err(|e| store.redb(e))?;
            let meta = tx.open_table(RAFT_META).map_err(|e| store.redb(e))?;
            let read = |key: &'static str| -> Result<Option<Vec<u8>>, StorageError> {
                Ok(meta
                    .get(key)
                    .map_err(|e| store.redb(e))?
                    .map(|v| v.value().to_vec()))
            };
            let hs: Option<WireHardState> = read(KEY_HARD_STATE)?
                .map(|b| {
                    codec::decode(&b).map_err(|e| store.codec_error("raft_meta", KEY_HARD_STATE, e))
                })
                .transpose()?;
            let cs: Option<WireConfState> = read(KEY_CONF_STATE)?
                .map(|b| {
                    codec::decode(&b).map_err(|e| store.codec_error("raft_meta", KEY_CONF_STATE, e))
                })
                .transpose()?;
            let conf_index: Option<u64> = read(KEY_CONF_INDEX)?
                .map(|b| {
                    codec::decode(&b).map_err(|e| store.codec_error("raft_meta", KEY_CONF_INDEX, e))
                })
                .transpose()?;
            let snap: Option<WireSnapshot> = read(KEY_SNAPSHOT)?
                .map(|b| {
                    codec::decode(&b).map_err(|e| store.codec_error("raft_meta", KEY_SNAPSHOT, e))
                })
                .transpose()?;
            let table = tx.open_table(RAFT_LOG).map_err(|e| store.redb(e))?;
            let mut log = Vec::new();
            for row in table.iter().map_err(|e| store.redb(e))? {
                let (k, v) = row.map_err(|e| store.redb(e))?;
                let w: WireEntry = codec::decode(v.value())
                    .map_err(|e| store.codec_error("raft_log", k.value(), e))?;
                if w.index != k.value() {
                    return Err(corrupt(format!(
                        "raft_log key {} holds entry {}",
                        k.value(),
                        w.index
                    )));
                }
                log.push(w);
            }
            (hs, cs, conf_index, snap, log)
        };
        let empty = hs.is_none() && cs.is_none() && snap.is_none() && log.is_empty();
        let snapshot = match &snap {
            Some(s) => s.to_raft().map_err(|e| corrupt(format!("snapshot: {e}")))?,
            None => Snapshot::default(),
        };
        let snap_index = snapshot.get_metadata().index;
        let mut entries = Vec::with_capacity(log.len());
        for w in log {
            if w.index <= snap_index {
                continue; // compacted but not yet deleted: harmless
            }
            let expected = snap_index + 1 + entries.len() as u64;
            if w.index != expected {
                return Err(corrupt(format!(
                    "raft_log has a gap: expected {expected}, found {}",
                    w.index
                )));
            }
            entries.push(
                w.to_raft()
                    .map_err(|e| corrupt(format!("entry {}: {e}", w.index)))?,
            );
        }
        let mut rs = RaftStore {
            hard_state: hs.map(WireHardState::to_raft).unwrap_or_default(),
            conf_state: match cs {
                Some(c) => c
                    .to_raft()
                    .map_err(|e| corrupt(format!("conf state: {e}")))?,
                None => snapshot.get_metadata().get_conf_state().clone(),
            },
            conf_index,
            snapshot,
            entries,
            store,
            incarnation: 0,
            log_bytes: 0,
            offered: None,
            wanted: std::sync::Mutex::new(None),
        };
        rs.recount();
        rs.bump_incarnation()?;
        if empty {
            if let Some(voters) = bootstrap_voters {
                // The fence first: a crash before the configuration leaves
                // an empty store, which a start refuses (`UnexpectedlyEmpty`).
                if voters.len() > 1 {
                    rs.put_meta(KEY_FENCE, Some(&Fence::Awaiting))?;
                }
                let mut cs = ConfState::default();
                cs.voters = voters.to_vec();
                rs.set_conf_state(&cs, 0)?;
            }
        }
        rs.check()?;
        Ok((rs, empty))
    }

    /// Checks the loaded state against Raft's invariants; a violation means
    /// the file is damaged.
    fn check(&self) -> Result<(), StorageError> {
        let last = self.last();
        let commit = self.hard_state.commit;
        if commit > last {
            return Err(StorageError::Corrupt {
                path: self.store.path().to_path_buf(),
                reason: format!("commit index {commit} beyond the last entry {last}"),
            });
        }
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let s = &self.store;
        let tx = s.database().begin_read().map_err(|e| s.redb(e))?;
        let meta = match tx.open_table(RAFT_META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(s.redb(e)),
        };
        let Some(v) = meta.get(key).map_err(|e| s.redb(e))? else {
            return Ok(None);
        };
        let value = codec::decode(v.value()).map_err(|err| s.codec_error("raft_meta", key, err))?;
        Ok(Some(value))
    }

    /// Durably writes (or, with `None`, removes) the row `key` of the Raft
    /// metadata.
    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), StorageError> {
        let s = &self.store;
        let tx = s.begin_write()?;
        {
            let mut meta = tx.open_table(RAFT_META).map_err(|e| s.redb(e))?;
            match value {
                Some(v) => {
                    let bytes =
                        codec::encode(v).map_err(|err| s.codec_error("raft_meta", key, err))?;
                    meta.insert(key, bytes.as_slice()).map_err(|e| s.redb(e))?;
                }
                None => {
                    meta.remove(key).map_err(|e| s.redb(e))?;
                }
            }
        }
        tx.commit().map_err(|e| s.redb(e))
    }

    /// The vote fence, if any.
    pub fn fence(&self) -> Result<Option<Fence>, StorageError> {
        self.get_meta(KEY_FENCE)
    }

    /// Durably sets (or lifts, with `None`) the vote fence.
    pub fn set_fence(&self, fence: Option<&Fence>) -> Result<(), StorageError> {
        self.put_meta(KEY_FENCE, fence)
    }

    /// The raft id this store last ran under (`None`: not recorded yet).
    pub fn identity(&self) -> Result<Option<u64>, StorageError> {
        self.get_meta(KEY_IDENTITY)
    }

    /// Durably records the raft id this store runs under; with
    /// `lift_fence`, lifts the vote fence in the same commit (a fence
    /// belongs to the identity it was set for: a new incarnation made for
    /// this store never voted).
    pub fn set_identity(&self, id: u64, lift_fence: bool) -> Result<(), StorageError> {
        let s = &self.store;
        let tx = s.begin_write()?;
        self.stage_identity(&tx, id, lift_fence)?;
        tx.commit().map_err(|e| s.redb(e))
    }

    /// As [`RaftStore::set_identity`], in `tx` (the apply transaction of
    /// the configuration change that made it).
    pub fn stage_identity(
        &self,
        tx: &redb::WriteTransaction,
        id: u64,
        lift_fence: bool,
    ) -> Result<(), StorageError> {
        let s = &self.store;
        {
            let mut meta = tx.open_table(RAFT_META).map_err(|e| s.redb(e))?;
            let bytes =
                codec::encode(&id).map_err(|err| s.codec_error("raft_meta", KEY_IDENTITY, err))?;
            meta.insert(KEY_IDENTITY, bytes.as_slice())
                .map_err(|e| s.redb(e))?;
            if lift_fence {
                meta.remove(KEY_FENCE).map_err(|e| s.redb(e))?;
            }
        }
        Ok(())
    }

    /// What this facility knows of its peers' stores.
    pub fn peer_stores(&self) -> Result<PeerStores, StorageError> {
        Ok(self.get_meta(KEY_PEERS)?.unwrap_or_default())
    }

    /// This store's id: drawn by `draw` the first time the store is opened
    /// for Raft (a wiped or replaced store gets a new one), then durable.
    pub fn store_id(&self, draw: impl FnOnce() -> u64) -> Result<u64, StorageError> {
        if let Some(id) = self.get_meta::<u64>(KEY_STORE_ID)? {
            return Ok(id);
        }
        let id = draw();
        self.put_meta(KEY_STORE_ID, Some(&id))?;
        Ok(id)
    }

    /// Durably gives this store a new id: a copy put in place of a store
    /// (a backup restored into a running cluster) is another store, and
    /// must not pass for the one its peers heard, nor take a replacement
    /// made for it.
    pub fn renew_store_id(&self, id: u64) -> Result<(), StorageError> {
        self.put_meta(KEY_STORE_ID, Some(&id))
    }

    /// Durably records `peers`.
    pub fn set_peer_stores(&self, peers: &PeerStores) -> Result<(), StorageError> {
        self.put_meta(KEY_PEERS, Some(peers))
    }

    /// Reads, increments and durably writes the open counter.
    fn bump_incarnation(&mut self) -> Result<(), StorageError> {
        let now = self.get_meta::<u64>(KEY_INCARNATION)?.unwrap_or(0);
        let next = now.checked_add(1).ok_or_else(|| StorageError::Corrupt {
            path: self.store.path().to_path_buf(),
            reason: "incarnation counter overflow".into(),
        })?;
        self.put_meta(KEY_INCARNATION, Some(&next))?;
        self.incarnation = next;
        Ok(())
    }

    fn recount(&mut self) {
        self.log_bytes = self.entries.iter().map(|e| e.data.len() as u64).sum();
    }

    /// Bytes of entry data after the compaction point.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// How many times the store has been opened for Raft (from 1).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.snapshot_index() + self.entries.len() as u64
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The persisted configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The latest snapshot (index 0 when none).
    pub fn latest_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The underlying store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends `entries` (replacing any conflicting suffix) and, if given,
    /// the hard state, in one transaction: durable (one fsync) when it
    /// holds entries or a new term or vote, which must be on disk before
    /// any message that depends on them leaves. A change of the commit
    /// index alone is a deferred commit: the commit index need not survive
    /// a crash (a leader tells it again), and redb's commit order keeps it
    /// ahead of everything applied after it.
    pub fn persist(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<(), StorageError> {
        if let Some(first) = entries.first() {
            assert!(
                first.index >= self.first() && first.index <= self.last() + 1,
                "append at {} outside [{}, {}]",
                first.index,
                self.first(),
                self.last() + 1
            );
            for pair in entries.windows(2) {
                assert_eq!(
                    pair[1].index,
                    pair[0].index + 1,
                    "entries to append are not contiguous"
                );
            }
        }
        let s = &self.store;
        let durable = !entries.is_empty()
            || hs.is_some_and(|h| h.term != self.hard_state.term || h.vote != self.hard_state.vote);
        let mut tx = if durable {
            s.begin_write()?
        } else {
            s.begin_write_deferred()?
        };
        if crate::plant::active(Bug::LogNotSynced) {
            tx.set_durability(redb::Durability::None)
                .map_err(|e| s.redb(redb::Error::from(e)))?;
        }
        {
            let mut log = tx.open_table(RAFT_LOG).map_err(|e| s.redb(e))?;
            if let Some(first) = entries.first() {
                log.retain_in(first.index.., |_, _| false)
                    .map_err(|e| s.redb(e))?;
                for e in entries {
                    let w = WireEntry::from_raft(e).map_err(|err| StorageError::Corrupt {
                        path: s.path().to_path_buf(),
                        reason: format!("entry {} does not mirror: {err}", e.index),
                    })?;
                    let bytes =
                        codec::encode(&w).map_err(|err| s.codec_error("raft_log", e.index, err))?;
                    log.insert(e.index, bytes.as_slice())
                        .map_err(|e| s.redb(e))?;
                }
            }
            if let Some(hs) = hs {
                let mut meta = tx.open_table(RAFT_META).map_err(|e| s.redb(e))?;
                let mut w = WireHardState::from_raft(hs);
                if crate::plant::active(Bug::VoteTwicePerTerm) {
                    w.vote = 0;
                }
                let bytes = codec::encode(&w)
                    .map_err(|err| s.codec_error("raft_meta", KEY_HARD_STATE, err))?;
                meta.insert(KEY_HARD_STATE, bytes.as_slice())
                    .map_err(|e| s.redb(e))?;
            }
        }
        if durable && !crate::plant::active(Bug::LogNotSynced) {
            // The validator's staged writes (its votes, final entries)
            // ride this fsync.
            s.commit_durable(tx)?;
            metrics::counter!("bulwark_raft_durable_persists_total", "facility" => s.facility().to_string())
                .increment(1);
        } else {
            tx.commit().map_err(|e| s.redb(e))?;
        }
        if let Some(first) = entries.first() {
            let keep = (first.index - self.first()) as usize;
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
            self.recount();
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Drops every log entry after `index` and lowers the commit index to
    /// it, in one durable commit: a restored backup's Raft state made to
    /// end where its applied state does (`bulwark restore`), so that every
    /// facility restored from one checkpoint holds the same log, ending at
    /// the checkpoint (entries after it were not committed as far as the
    /// backups know, and a commit index beyond another facility's log
    /// would make Raft refuse it). Term and vote stay. Refused, changing
    /// nothing, when `index` is before the compaction point or beyond the
    /// log. Returns how many entries were dropped.
    pub fn rewind_to(&mut self, index: u64) -> Result<u64, StorageError> {
        let (first, last) = (self.first(), self.last());
        if index + 1 < first || index > last {
            return Err(StorageError::Corrupt {
                path: self.store.path().to_path_buf(),
                reason: format!(
                    "cannot rewind the Raft log to {index}: it holds {} to {last}",
                    first - 1
                ),
            });
        }
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.min(index);
        let s = &self.store;
        let tx = s.begin_write()?;
        {
            let mut log = tx.open_table(RAFT_LOG).map_err(|e| s.redb(e))?;
            log.retain_in(index + 1.., |_, _| false)
                .map_err(|e| s.redb(e))?;
            let mut meta = tx.open_table(RAFT_META).map_err(|e| s.redb(e))?;
            let bytes = codec::encode(&WireHardState::from_raft(&hs))
                .map_err(|err| s.codec_error("raft_meta", KEY_HARD_STATE, err))?;
            meta.insert(KEY_HARD_STATE, bytes.as_slice())
                .map_err(|e| s.redb(e))?;
        }
        tx.commit().map_err(|e| s.redb(e))?;
        self.entries.truncate((index + 1 - first) as usize);
        self.hard_state = hs;
        self.recount();
        Ok(last - index)
    }

    /// Records a new commit index (from a `LightReady`; a deferred commit,
    /// see [`RaftStore::persist`]).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.persist(&[], Some(&hs))
    }

    /// Durably records the configuration, as it stands after the
    /// configuration change at log index `index` (0: the bootstrap set).
    pub fn set_conf_state(&mut self, cs: &ConfState, index: u64) -> Result<(), StorageError> {
        let tx = self.store.begin_write()?;
        self.stage_conf_state(&tx, cs, index)?;
        tx.commit().map_err(|e| self.store.redb(e))?;
        self.note_conf_state(cs, index);
        Ok(())
    }

    /// Writes the configuration as the change at log index `index` left
    /// it, in `tx` (the replica's batch that applies the change);
    /// [`RaftStore::note_conf_state`] after it commits.
    pub fn stage_conf_state(
        &self,
        tx: &redb::WriteTransaction,
        cs: &ConfState,
        index: u64,
    ) -> Result<(), StorageError> {
        let s = &self.store;
        let bytes = codec::encode(&WireConfState::from_raft(cs))
            .map_err(|err| s.codec_error("raft_meta", KEY_CONF_STATE, err))?;
        let at =
            codec::encode(&index).map_err(|err| s.codec_error("raft_meta", KEY_CONF_INDEX, err))?;
        let mut meta = tx.open_table(RAFT_META).map_err(|e| s.redb(e))?;
        meta.insert(KEY_CONF_STATE, bytes.as_slice())
            .map_err(|e| s.redb(e))?;
        meta.insert(KEY_CONF_INDEX, at.as_slice())
            .map_err(|e| s.redb(e))?;
        Ok(())
    }

    /// The configuration staged by [`RaftStore::stage_conf_state`] is
    /// committed.
    pub fn note_conf_state(&mut self, cs: &ConfState, index: u64) {
        self.conf_state = cs.clone();
        self.conf_index = Some(index);
    }

    /// The log index of the last configuration change the configuration
    /// holds: raft-rs took every change up to it (a later one, even in an
    /// entry the replica already holds, still has to reach raft-rs).
    /// `None` for a store written before this was kept.
    pub fn conf_index(&self) -> Option<u64> {
        self.conf_index
    }

    /// The index raft-rs last asked a snapshot for and was not given.
    pub fn snapshot_wanted(&self) -> Option<u64> {
        *self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `snap` (the replica's, at its index) to raft-rs's next
    /// request; `None` withdraws the offer.
    pub fn offer_snapshot(&mut self, snap: Option<Snapshot>) {
        if let Some(s) = &snap {
            let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
            if wanted.is_some_and(|w| w <= s.get_metadata().index) {
                *wanted = None;
            }
        }
        self.offered = snap;
    }

    /// The offered snapshot's index.
    pub fn offered_index(&self) -> Option<u64> {
        self.offered.as_ref().map(|s| s.get_metadata().index)
    }

    /// Durably installs a snapshot received from the leader: the log is
    /// replaced by it, and the configuration and commit follow it.
    pub fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        let m = snap.get_metadata();
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(m.index);
        hs.term = hs.term.max(m.term);
        self.write_snapshot(snap, .., &hs, Some(m.index))?;
        self.entries.clear();
        self.log_bytes = 0;
        self.hard_state = hs;
        Ok(())
    }

    /// Durably records the compaction point `index` (which must be
    /// applied, so committed and in the log; the replica holds the state)
    /// and compacts the log up to it. Its commit also makes every earlier
    /// apply batch durable.
    pub fn compact_to(&mut self, index: u64, cs: &ConfState) -> Result<(), StorageError> {
        assert!(
            index > self.snapshot_index() && index <= self.last(),
            "snapshot at {index} outside ({}, {}]",
            self.snapshot_index(),
            self.last()
        );
        assert!(
            index <= self.hard_state.commit,
            "snapshot of an uncommitted index"
        );
        let term = self.entries[(index - self.first()) as usize].term;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(cs.clone());
        let hs = self.hard_state.clone();
        // Counted before the snapshot moves `first()`.
        let drop_n = (index + 1 - self.first()) as usize;
        self.write_snapshot(&snap, ..=index, &hs, None)?;
        self.entries.drain(..drop_n);
        self.recount();
        Ok(())
    }

    fn write_snapshot(
        &mut self,
        snap: &Snapshot,
        delete: impl std::ops::RangeBounds<u64> + 'static,
        hs: &HardState,
        conf_index: Option<u64>,
    ) -> Result<(), StorageError> {
        let s = &self.store;
        let wire = WireSnapshot::from_raft(snap);
        let snap_bytes =
            codec::encode(&wire).map_err(|err| s.codec_error("raft_meta", KEY_SNAPSHOT, err))?;
        let cs_bytes = codec::encode(&wire.conf_state)
            .map_err(|err| s.codec_error("raft_meta", KEY_CONF_STATE, err))?;
        let hs_bytes = codec::encode(&WireHardState::from_raft(hs))
            .map_err(|err| s.codec_error("raft_meta", KEY_HARD_STATE, err))?;
        let tx = s.begin_write()?;
        {
            let mut log = tx.open_table(RAFT_LOG).map_err(|e| s.redb(e))?;
            log.retain_in::<u64, _>(delete, |_, _| false)
                .map_err(|e| s.redb(e))?;
            let mut meta = tx.open_table(RAFT_META).map_err(|e| s.redb(e))?;
            meta.insert(KEY_SNAPSHOT, snap_bytes.as_slice())
                .map_err(|e| s.redb(e))?;
            meta.insert(KEY_CONF_STATE, cs_bytes.as_slice())
                .map_err(|e| s.redb(e))?;
            meta.insert(KEY_HARD_STATE, hs_bytes.as_slice())
                .map_err(|e| s.redb(e))?;
            if let Some(at) = conf_index {
                let at = codec::encode(&at)
                    .map_err(|err| s.codec_error("raft_meta", KEY_CONF_INDEX, err))?;
                meta.insert(KEY_CONF_INDEX, at.as_slice())
                    .map_err(|e| s.redb(e))?;
            }
        }
        tx.commit().map_err(|e| s.redb(e))?;
        self.snapshot = snap.clone();
        self.conf_state = snap.get_metadata().get_conf_state().clone();
        if conf_index.is_some() {
            self.conf_index = conf_index;
        }
        Ok(())
    }
}

impl raft::Storage for RaftStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut ents = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than the compaction point would leave the
        // follower short of the log again.
        let need = request_index.max(self.snapshot_index());
        match &self.offered {
            Some(s) if s.get_metadata().index >= need => Ok(s.clone()),
            _ => {
                // The replica makes one (RaftCore::drive_snapshots); raft-rs
                // asks again at its next probe.
                let mut wanted = self.wanted.lock().unwrap_or_else(|p| p.into_inner());
                *wanted = Some(wanted.map_or(need, |w| w.max(need)));
                Err(raft::Error::Store(
                    raft::StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = format!("e{index}").into_bytes().into();
        e
    }

    fn open(dir: &std::path::Path) -> (RaftStore, bool) {
        let opened = Store::open(&dir.join("f.redb"), "alpha").unwrap();
        RaftStore::open(opened.store, Some(&[1, 2, 3])).unwrap()
    }

    #[test]
    fn compaction_and_suffix_replacement_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut rs, empty) = open(dir.path());
        assert!(empty);
        assert_eq!(rs.conf_state().voters, vec![1, 2, 3]);
        let ents: Vec<Entry> = (1..=80).map(|i| entry(i, 1)).collect();
        let mut hs = HardState::default();
        hs.term = 1;
        rs.persist(&ents, Some(&hs)).unwrap();
        rs.set_commit(70).unwrap();
        let cs = rs.conf_state().clone();
        rs.compact_to(40, &cs).unwrap();
        // A new leader replaces entries from 71 on.
        let tail: Vec<Entry> = (71..=75).map(|i| entry(i, 2)).collect();
        rs.persist(&tail, None).unwrap();
        let check = |rs: &RaftStore| {
            assert_eq!(rs.first_index().unwrap(), 41);
            assert_eq!(rs.last_index().unwrap(), 75);
            assert_eq!(rs.term(40).unwrap(), 1);
            assert_eq!(rs.term(71).unwrap(), 2);
            assert!(rs.term(39).is_err());
            let got = rs
                .entries(41, 76, None, GetEntriesContext::empty(false))
                .unwrap();
            assert_eq!(got.len(), 35);
            assert_eq!(&got[0].data[..], b"e41");
            assert_eq!(rs.latest_snapshot().get_metadata().index, 40);
        };
        check(&rs);
        drop(rs);
        let (rs, empty) = open(dir.path());
        assert!(!empty);
        check(&rs);
        assert_eq!(rs.hard_state().commit, 70);
        assert_eq!(rs.incarnation(), 2);
    }

    /// A restored backup's log is cut at its applied index: the entries
    /// after it go, the commit index comes down to it, term and vote stay,
    /// and a reopen reads the same; a point outside the log is refused and
    /// changes nothing.
    #[test]
    fn a_rewind_cuts_the_log_at_the_applied_index() {
        let dir = tempfile::tempdir().unwrap();
        let (mut rs, _) = open(dir.path());
        let ents: Vec<Entry> = (1..=30).map(|i| entry(i, 3)).collect();
        let mut hs = HardState::default();
        hs.term = 4;
        hs.vote = 2;
        rs.persist(&ents, Some(&hs)).unwrap();
        rs.set_commit(28).unwrap();
        let cs = rs.conf_state().clone();
        rs.compact_to(10, &cs).unwrap();
        for bad in [8, 31] {
            assert!(matches!(
                rs.rewind_to(bad),
                Err(StorageError::Corrupt { .. })
            ));
            assert_eq!(rs.last_index().unwrap(), 30);
            assert_eq!(rs.hard_state().commit, 28);
        }
        assert_eq!(rs.rewind_to(25).unwrap(), 5);
        drop(rs);
        let (rs, _) = open(dir.path());
        assert_eq!(rs.last_index().unwrap(), 25);
        assert_eq!(rs.first_index().unwrap(), 11);
        assert_eq!(
            (
                rs.hard_state().commit,
                rs.hard_state().term,
                rs.hard_state().vote
            ),
            (25, 4, 2)
        );
        let mut rs = rs;
        // At the compaction point itself: an empty log after it.
        assert_eq!(rs.rewind_to(10).unwrap(), 15);
        assert_eq!(rs.last_index().unwrap(), 10);
    }

    /// Entries and a new term or vote cost one fsync each time; a new
    /// commit index alone costs none (it is a deferred commit), and still
    /// reads back after a clean reopen.
    #[test]
    fn only_entries_terms_and_votes_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let (mut rs, _) = open(dir.path());
        let synced = |rs: &RaftStore| rs.store().durable_writes();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.vote = 2;
        let before = synced(&rs);
        rs.persist(&[], Some(&hs)).unwrap();
        assert_eq!(synced(&rs), before + 1, "a vote is synced");
        rs.persist(&[entry(1, 1), entry(2, 1)], None).unwrap();
        assert_eq!(synced(&rs), before + 2, "entries are synced");
        let mut commit_only = hs.clone();
        commit_only.commit = 2;
        rs.persist(&[], Some(&commit_only)).unwrap();
        rs.set_commit(2).unwrap();
        assert_eq!(synced(&rs), before + 2, "a commit index alone is not");
        hs.term = 2;
        hs.commit = 2;
        rs.persist(&[], Some(&hs)).unwrap();
        assert_eq!(synced(&rs), before + 3, "a new term is");
        drop(rs);
        let (rs, _) = open(dir.path());
        assert_eq!(rs.hard_state().commit, 2);
        assert_eq!(rs.hard_state().term, 2);
    }
}
