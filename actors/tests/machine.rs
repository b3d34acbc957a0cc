//! The RaftPeer's core drives any [`StateMachine`], not only the schedule.
//!
//! A small key-value machine of this test's own (its own redb tables, its
//! own entry encoding, its own snapshot rows) runs under three
//! `RaftCore`s wired together by hand, in one thread, with a fixed
//! delivery order: proposals made at every facility commit once and apply
//! everywhere in the same order, and a facility cut off while the log is
//! compacted past it comes back by a streamed snapshot of the machine's
//! rows. Nothing here knows the schedule, the ledger or the validators.
//!
//! The same harness shows the vote fence of a store created by this start
//! (`RaftCore`'s module docs): a first start lifts it, a facility that
//! starts late catches up and then votes, and a facility whose store was
//! wiped is refused its vote for good while it still follows, until a
//! replacement gives it a new identity (twice over).

use std::collections::{BTreeMap, VecDeque};

use bulwark_actors::machine::{
    Answer, Batch, Decided, ForwardRefused, Forwarded, Origin, ProposeOutcome, StateMachine,
};
use bulwark_actors::raft::actor::RaftSetup;
use bulwark_actors::raft::{tracing_logger, Output, RaftConfig, RaftCore, RaftWire};
use bulwark_storage::stream::{Chunk, Cursor, Descriptor, Row, RowHasher, SnapshotError};
use bulwark_storage::{codec, StorageError, Store};
use bulwark_transport::FacilityId;
use raft::eraftpb::{Entry, EntryType};
use redb::{
    Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};

const KV: TableDefinition<&str, &str> = TableDefinition::new("kv_data");
const KV_META: TableDefinition<&str, u64> = TableDefinition::new("kv_meta");
const KV_STAGING: TableDefinition<u64, &[u8]> = TableDefinition::new("kv_staging");

/// Snapshots installed (this binary runs one test).
static INSTALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets `k` to `v`, once per `id`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Put {
    id: u64,
    k: String,
    v: String,
}

/// An entry: who proposed it, its sequence number, when, and the put.
#[derive(Debug, Serialize, Deserialize)]
struct KvEntry {
    proposer: FacilityId,
    seq: u64,
    at_unix_ms: u64,
    put: Put,
}

/// The key-value machine: `kv_data` and the applied index in `kv_meta`.
struct Kv {
    store: Store,
    applied: u64,
}

fn applied_in(store: &Store) -> Result<u64, StorageError> {
    let tx = store.database().begin_read().map_err(|e| store.redb(e))?;
    match tx.open_table(KV_META) {
        Ok(t) => Ok(t
            .get("applied")
            .map_err(|e| store.redb(e))?
            .map_or(0, |v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(store.redb(e)),
    }
}

impl StateMachine for Kv {
    type Command = Put;
    type Key = u64;
    /// The value the key held before.
    type Outcome = Option<String>;
    type View = BTreeMap<String, String>;
    type Shown = ();
    type Context = ();
    type Source = ReadTransaction;

    fn open(store: Store, _: &()) -> Result<Self, StorageError> {
        let applied = applied_in(&store)?;
        Ok(Kv { store, applied })
    }

    fn reset(store: Store, _: &()) -> Result<Self, StorageError> {
        let tx = store.begin_write()?;
        tx.delete_table(KV).map_err(|e| store.redb(e))?;
        tx.delete_table(KV_META).map_err(|e| store.redb(e))?;
        tx.commit().map_err(|e| store.redb(e))?;
        Kv::open(store, &())
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn view(&self) -> Result<BTreeMap<String, String>, StorageError> {
        let s = &self.store;
        let tx = s.database().begin_read().map_err(|e| s.redb(e))?;
        let t = match tx.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
            Err(e) => return Err(s.redb(e)),
        };
        let mut all = BTreeMap::new();
        for row in t.iter().map_err(|e| s.redb(e))? {
            let (k, v) = row.map_err(|e| s.redb(e))?;
            all.insert(k.value().to_string(), v.value().to_string());
        }
        Ok(all)
    }

    fn key(put: &Put) -> u64 {
        put.id
    }

    fn propose(&self, me: &FacilityId, seq: u64, put: Put, now: u64) -> Result<Vec<u8>, String> {
        codec::encode(&KvEntry {
            proposer: me.clone(),
            seq,
            at_unix_ms: now,
            put,
        })
        .map_err(|e| e.to_string())
    }

    fn check_forwarded(
        &self,
        from: &FacilityId,
        bytes: &[u8],
        limit: usize,
    ) -> Result<Forwarded, ForwardRefused> {
        let e: KvEntry = codec::decode_limited(bytes, limit)
            .map_err(|e| ForwardRefused::Malformed(e.to_string()))?;
        if e.proposer != *from {
            return Err(ForwardRefused::Forged);
        }
        Ok(Forwarded {
            seq: e.seq,
            at_unix_ms: e.at_unix_ms,
        })
    }

    fn apply<E: From<StorageError>>(
        &mut self,
        batch: Batch<'_>,
        conf: &mut dyn FnMut(&WriteTransaction, &Entry) -> Result<(), E>,
    ) -> Result<Vec<Decided<Self>>, E> {
        let Some(last) = batch.entries.last().map(|e| e.index) else {
            return Ok(Vec::new());
        };
        let s = self.store.clone();
        let mut tx = s.begin_write()?;
        tx.set_durability(Durability::None)
            .map_err(|e| s.redb(redb::Error::from(e)))?;
        let held = batch.held_through.max(self.applied);
        let mut decided = Vec::new();
        for e in batch.entries {
            let mut d = Decided {
                origin: None,
                answer: None,
                shown: None,
            };
            if e.entry_type == EntryType::EntryConfChangeV2
                && e.index <= held
                && e.index > batch.conf_through
            {
                conf(&tx, e)?;
            }
            if e.index > held {
                match e.entry_type {
                    EntryType::EntryNormal if !e.data.is_empty() => {
                        let entry: KvEntry =
                            codec::decode(&e.data).map_err(|err| StorageError::Corrupt {
                                path: s.path().to_path_buf(),
                                reason: format!("entry {}: {err}", e.index),
                            })?;
                        let mut t = tx.open_table(KV).map_err(|e| s.redb(e))?;
                        let before = t
                            .insert(entry.put.k.as_str(), entry.put.v.as_str())
                            .map_err(|e| s.redb(e))?
                            .map(|v| v.value().to_string());
                        d.origin = Some(Origin {
                            proposer: entry.proposer,
                            seq: entry.seq,
                            key: entry.put.id,
                        });
                        d.answer = Some(Answer::Applied {
                            first_index: None,
                            outcome: before,
                            duplicate: false,
                            height: None,
                        });
                    }
                    EntryType::EntryConfChangeV2 if e.index > batch.conf_through => conf(&tx, e)?,
                    _ => {}
                }
            }
            d.shown = batch.show.then_some(());
            decided.push(d);
        }
        {
            let mut m = tx.open_table(KV_META).map_err(|e| s.redb(e))?;
            m.insert("applied", last.max(self.applied))
                .map_err(|e| s.redb(e))?;
        }
        tx.commit().map_err(|e| s.redb(e))?;
        self.applied = last.max(self.applied);
        Ok(decided)
    }

    fn snapshot_source(&self) -> Result<ReadTransaction, StorageError> {
        self.store
            .database()
            .begin_read()
            .map_err(|e| self.store.redb(e))
    }

    fn read_chunk(
        &self,
        tx: &ReadTransaction,
        at: &Cursor,
        max_bytes: usize,
    ) -> Result<Chunk, StorageError> {
        let s = &self.store;
        let t = match tx.open_table(KV) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(Chunk {
                    rows: Vec::new(),
                    next: None,
                })
            }
            Err(e) => return Err(s.redb(e)),
        };
        let after = at
            .after
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).to_string());
        let iter = match &after {
            Some(a) => t.range::<&str>((
                std::ops::Bound::Excluded(a.as_str()),
                std::ops::Bound::Unbounded,
            )),
            None => t.range::<&str>(..),
        }
        .map_err(|e| s.redb(e))?;
        let (mut rows, mut size, mut cursor) = (Vec::new(), 0, at.clone());
        for row in iter {
            let (k, v) = row.map_err(|e| s.redb(e))?;
            let (k, v) = (k.value().as_bytes().to_vec(), v.value().as_bytes().to_vec());
            if size + k.len() + v.len() > max_bytes && !rows.is_empty() {
                return Ok(Chunk {
                    rows,
                    next: Some(cursor),
                });
            }
            size += k.len() + v.len();
            cursor.after = Some(k.clone());
            cursor.rows += 1;
            rows.push(Row {
                table: 0,
                key: k,
                value: v,
            });
        }
        Ok(Chunk { rows, next: None })
    }

    fn clear_staging(&self) -> Result<(), StorageError> {
        let s = &self.store;
        let tx = s.begin_write()?;
        tx.delete_table(KV_STAGING).map_err(|e| s.redb(e))?;
        tx.commit().map_err(|e| s.redb(e))
    }

    fn stage(&self, first: u64, rows: &[Row], hasher: &mut RowHasher) -> Result<(), SnapshotError> {
        if let Some(r) = rows.iter().find(|r| r.table != 0) {
            return Err(SnapshotError::UnknownTable(r.table));
        }
        let s = &self.store;
        let tx = s.begin_write()?;
        {
            let mut t = tx.open_table(KV_STAGING).map_err(|e| s.redb(e))?;
            for (i, r) in rows.iter().enumerate() {
                let bytes = codec::encode(r).map_err(|e| s.codec_error("kv_staging", i, e))?;
                t.insert(first + i as u64, bytes.as_slice())
                    .map_err(|e| s.redb(e))?;
                hasher.add(r.table, &r.key, &r.value);
            }
        }
        tx.commit().map_err(|e| s.redb(e))?;
        Ok(())
    }

    fn install(&mut self, desc: &Descriptor, hasher: &RowHasher) -> Result<(), SnapshotError> {
        hasher.check(desc)?;
        if self.applied >= desc.index {
            return Err(SnapshotError::Stale {
                index: desc.index,
                applied: self.applied,
            });
        }
        let s = self.store.clone();
        let tx = s.begin_write()?;
        tx.delete_table(KV).map_err(|e| s.redb(e))?;
        {
            let staged = tx.open_table(KV_STAGING).map_err(|e| s.redb(e))?;
            let mut kv = tx.open_table(KV).map_err(|e| s.redb(e))?;
            for row in staged.iter().map_err(|e| s.redb(e))? {
                let (_, v) = row.map_err(|e| s.redb(e))?;
                let r: Row =
                    codec::decode(v.value()).map_err(|e| s.codec_error("kv_staging", 0, e))?;
                let (k, v) = (
                    String::from_utf8_lossy(&r.key),
                    String::from_utf8_lossy(&r.value),
                );
                kv.insert(k.as_ref(), v.as_ref()).map_err(|e| s.redb(e))?;
            }
            let mut m = tx.open_table(KV_META).map_err(|e| s.redb(e))?;
            m.insert("applied", desc.index).map_err(|e| s.redb(e))?;
        }
        tx.delete_table(KV_STAGING).map_err(|e| s.redb(e))?;
        tx.commit().map_err(|e| s.redb(e))?;
        self.applied = desc.index;
        INSTALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// Three cores and the messages between them, delivered in order.
/// Which messages a link loses: `(from, to, msg) -> lost`.
type Loses = dyn Fn(&FacilityId, &FacilityId, &RaftWire) -> bool;

struct Cluster {
    cores: BTreeMap<FacilityId, RaftCore<Kv>>,
    queue: VecDeque<(FacilityId, FacilityId, RaftWire)>,
    /// A facility whose messages, both ways, are lost.
    cut: Option<FacilityId>,
    answers: BTreeMap<(FacilityId, u64), ProposeOutcome<Option<String>>>,
    now_ms: u64,
    members: Vec<FacilityId>,
    /// Facilities not running (no ticks, no messages).
    down: Vec<FacilityId>,
    /// Messages lost besides: `(from, to, msg) -> lost`.
    lose: Option<Box<Loses>>,
    dir: tempfile::TempDir,
}

fn f(name: &str) -> FacilityId {
    name.parse().unwrap()
}

impl Cluster {
    fn new() -> Cluster {
        let members = vec![f("alpha"), f("bravo"), f("charlie")];
        let mut c = Cluster {
            cores: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: None,
            answers: BTreeMap::new(),
            now_ms: 1_000_000,
            members: members.clone(),
            down: Vec::new(),
            lose: None,
            dir: tempfile::tempdir().unwrap(),
        };
        for me in &members {
            c.start(me);
        }
        c
    }

    /// Opens `me`'s core from its store (created if missing).
    fn start(&mut self, me: &FacilityId) {
        let i = self.members.iter().position(|m| m == me).unwrap();
        let path = self.dir.path().join(format!("{me}.redb"));
        let opened = Store::open(&path, me.as_str()).unwrap();
        let mut setup = RaftSetup::<Kv>::new(self.members.clone(), ());
        // Distinct, fixed election timeouts: alpha campaigns first.
        let min = 10 + 4 * i;
        setup.config = RaftConfig {
            election_ticks_min: min,
            election_ticks_max: min + 1,
            snapshot_every_entries: 20,
            ..RaftConfig::default()
        };
        let core = RaftCore::open(
            opened.store,
            me.clone(),
            &setup,
            opened.fresh,
            &tracing_logger(me),
        )
        .unwrap();
        self.cores.insert(me.clone(), core);
    }

    /// Stops `me`, deletes its store, and starts it again on a new one.
    fn wipe(&mut self, me: &FacilityId) {
        self.cores.remove(me);
        std::fs::remove_file(self.dir.path().join(format!("{me}.redb"))).unwrap();
        self.start(me);
    }

    fn collect(&mut self, from: &FacilityId) {
        let core = self.cores.get_mut(from).unwrap();
        core.on_ready().unwrap();
        for out in core.drain() {
            match out {
                Output::Send { to, msg } | Output::SendBy { to, msg, .. } => {
                    self.queue.push_back((from.clone(), to, msg));
                }
                Output::Proposed { seq, outcome } => {
                    self.answers.insert((from.clone(), seq), outcome);
                }
                Output::ReadReady { .. } | Output::Applied(_) => {}
            }
        }
        // As the RaftPeer does: a replacement taken is run under a rebuilt
        // core.
        if core.wants_rebuild() {
            self.cores.remove(from);
            self.start(from);
        }
    }

    /// One tick everywhere, then every message it causes, in order.
    fn tick(&mut self) {
        self.now_ms += 50;
        let names: Vec<FacilityId> = self.cores.keys().cloned().collect();
        for n in &names {
            if self.down.contains(n) {
                continue;
            }
            self.cores.get_mut(n).unwrap().tick();
            self.collect(n);
        }
        for _ in 0..10_000 {
            let Some((from, to, msg)) = self.queue.pop_front() else {
                return;
            };
            if self.cut.as_ref().is_some_and(|c| *c == from || *c == to)
                || self.down.contains(&from)
                || self.down.contains(&to)
                || self.lose.as_ref().is_some_and(|l| l(&from, &to, &msg))
            {
                continue;
            }
            let now = self.now_ms;
            self.cores
                .get_mut(&to)
                .unwrap()
                .on_peer(&from, msg, now)
                .unwrap();
            self.collect(&to);
        }
        panic!("messages did not settle within one tick");
    }

    fn leader(&self) -> Option<FacilityId> {
        self.cores
            .values()
            .find(|c| c.is_leader() && !self.down.contains(c.facility()))
            .map(|c| c.facility().clone())
    }

    fn put(&mut self, at: &FacilityId, id: u64) -> u64 {
        let put = Put {
            id,
            k: format!("k{}", id % 37),
            v: format!("v{id}"),
        };
        let now = self.now_ms;
        let seq = self
            .cores
            .get_mut(at)
            .unwrap()
            .propose(put, now, None)
            .unwrap();
        self.collect(at);
        seq
    }
}

#[test]
fn three_cores_replicate_a_machine_of_their_own_and_a_cut_one_catches_up_by_snapshot() {
    let mut c = Cluster::new();
    for _ in 0..100 {
        if c.leader().is_some() {
            break;
        }
        c.tick();
    }
    assert_eq!(
        c.leader(),
        Some(f("alpha")),
        "alpha's timeout is the shortest"
    );
    let names: Vec<FacilityId> = c.cores.keys().cloned().collect();

    // Proposals at every facility (the followers forward them).
    let mut sent = Vec::new();
    for id in 0..60u64 {
        let at = names[id as usize % 3].clone();
        sent.push((at.clone(), c.put(&at, id)));
        c.tick();
    }
    for _ in 0..20 {
        c.tick();
    }
    for key in &sent {
        assert!(
            matches!(c.answers.get(key), Some(ProposeOutcome::Committed { .. })),
            "{key:?}: {:?}",
            c.answers.get(key)
        );
    }
    let views: Vec<_> = c.cores.values().map(|k| k.view().unwrap()).collect();
    assert_eq!(views[0].len(), 37);
    assert!(views.iter().all(|v| *v == views[0]), "the machines differ");

    // charlie is cut off while the log is compacted (every 20 entries)
    // well past it; healed, it takes the machine's rows by snapshot.
    c.cut = Some(f("charlie"));
    for id in 60..160u64 {
        let at = names[id as usize % 2].clone();
        c.put(&at, id);
        c.tick();
    }
    let behind = c.cores[&f("charlie")].replica_applied();
    c.cut = None;
    for _ in 0..200 {
        c.tick();
        let a = c.cores[&f("alpha")].replica_applied();
        if c.cores[&f("charlie")].replica_applied() == a && a > behind + 100 {
            break;
        }
    }
    let views: Vec<_> = c.cores.values().map(|k| k.view().unwrap()).collect();
    assert!(
        views.iter().all(|v| *v == views[0]),
        "charlie did not catch up"
    );
    assert_eq!(views[2].get("k5").map(String::as_str), Some("v153"));
    assert!(
        INSTALLS.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "charlie caught up without a snapshot"
    );
}

fn elect(c: &mut Cluster) {
    for _ in 0..200 {
        if c.leader().is_some() {
            return;
        }
        c.tick();
    }
    panic!("no leader");
}

fn settle(c: &mut Cluster) {
    for _ in 0..100 {
        c.tick();
    }
}

#[test]
fn a_first_start_lifts_every_fence_and_a_late_starter_votes_once_caught_up() {
    use bulwark_actors::raft::Fence;
    let mut c = Cluster::new();
    // charlie is not running while the others start and take writes.
    c.down.push(f("charlie"));
    elect(&mut c);
    for n in ["alpha", "bravo"] {
        assert_eq!(
            c.cores[&f(n)].fence(),
            None,
            "{n}: two of three starting new is a first start"
        );
    }
    for id in 0..30 {
        c.put(&f("alpha"), id);
        c.tick();
    }
    let commit = c.cores[&f("alpha")].commit_index();
    assert!(commit > 30);
    // charlie starts for the first time, late: the cluster has a history it
    // never saw, and nobody heard from it, so it may vote once caught up.
    c.down.clear();
    for _ in 0..3 {
        c.tick();
    }
    assert!(
        matches!(c.cores[&f("charlie")].fence(), Some(Fence::UntilCommit(t)) if *t >= commit - 1),
        "{:?}",
        c.cores[&f("charlie")].fence()
    );
    // It restarts before it caught up: the same store, so no member takes
    // it for a lost one (its own acknowledgements are not a past).
    for _ in 0..50 {
        if c.cores[&f("charlie")].replica_applied() > 0 {
            break;
        }
        c.tick();
    }
    let ch = &c.cores[&f("charlie")];
    assert!(ch.replica_applied() > 0, "it took entries under this store");
    assert!(
        matches!(ch.fence(), Some(Fence::UntilCommit(_))),
        "{:?} at commit {}",
        ch.fence(),
        ch.commit_index()
    );
    c.cores.remove(&f("charlie"));
    c.start(&f("charlie"));
    assert!(matches!(
        c.cores[&f("charlie")].fence(),
        Some(Fence::UntilCommit(_))
    ));
    settle(&mut c);
    assert_eq!(c.cores[&f("charlie")].fence(), None);
    let views: Vec<_> = c.cores.values().map(|k| k.view().unwrap()).collect();
    assert!(views.iter().all(|v| *v == views[0]));
}

#[test]
fn a_wiped_store_follows_but_never_votes_again() {
    use bulwark_actors::raft::Fence;
    let mut c = Cluster::new();
    elect(&mut c);
    for id in 0..40 {
        c.put(&f("alpha"), id);
        c.tick();
    }
    settle(&mut c);
    c.wipe(&f("charlie"));
    for _ in 0..3 {
        c.tick();
    }
    match c.cores[&f("charlie")].fence() {
        Some(Fence::Refused(reason)) => assert!(reason.contains("were lost"), "{reason}"),
        other => panic!("a wiped store was not refused its vote: {other:?}"),
    }
    // It still follows: it catches up and applies what the others apply.
    for id in 40..60 {
        c.put(&f("bravo"), id);
        c.tick();
    }
    settle(&mut c);
    let views: Vec<_> = c.cores.values().map(|k| k.view().unwrap()).collect();
    assert!(
        views.iter().all(|v| *v == views[0]),
        "charlie did not follow"
    );
    // With alpha down, bravo cannot be elected by charlie's vote: no
    // leader, rather than one chosen by a voter that forgot.
    c.down.push(f("alpha"));
    settle(&mut c);
    settle(&mut c);
    assert_eq!(c.leader(), None, "a wiped facility helped elect a leader");
    // The fence survives charlie's restart.
    c.cores.remove(&f("charlie"));
    c.start(&f("charlie"));
    assert!(matches!(
        c.cores[&f("charlie")].fence(),
        Some(Fence::Refused(_))
    ));
}

/// A store lost twice: each time the facility is fenced, `Replace` made
/// for its new store gives it the next identity (fence lifted) and
/// `Promote` a vote. The second time its new store first takes the
/// identity the leader writes to (incarnation 1, which a store now gone
/// ran), fenced, before its own replacement (incarnation 2). At the end
/// it helps elect a leader with alpha down, and every store agrees.
#[test]
fn a_store_lost_twice_comes_back_each_time_under_a_new_identity() {
    use bulwark_actors::raft::{Fence, MemberChange};
    let mut c = Cluster::new();
    elect(&mut c);
    let mut id = 0;
    let mut puts = |c: &mut Cluster, n: u64| {
        for _ in 0..n {
            let at = c.leader().unwrap();
            c.put(&at, id);
            id += 1;
            c.tick();
        }
        settle(c);
    };
    puts(&mut c, 30);
    let (leader, ch) = (c.leader().unwrap(), f("charlie"));
    assert_ne!(leader, ch);
    let change = |c: &mut Cluster, what: MemberChange| -> Result<u64, String> {
        let l = c.leader().unwrap();
        let r = c.cores.get_mut(&l).unwrap().change_member(&ch, what);
        c.collect(&l);
        r
    };
    let promote = |c: &mut Cluster| {
        for _ in 0..100 {
            if change(c, MemberChange::Promote).is_ok() {
                settle(c);
                return;
            }
            c.tick();
        }
        panic!("never promoted");
    };
    for (round, k) in [(1, 1u64), (2, 2)] {
        c.wipe(&ch);
        settle(&mut c);
        assert!(
            matches!(c.cores[&ch].fence(), Some(Fence::Refused(_))),
            "round {round}: {:?}",
            c.cores[&ch].fence()
        );
        if round == 2 {
            // It took the identity the leader writes to, fenced.
            assert_eq!(c.cores[&ch].incarnation(), 1);
        }
        // Taken once its store holds the log (asked again meanwhile).
        let mut taken = false;
        for _ in 0..200 {
            if change(&mut c, MemberChange::Replace).is_ok() {
                taken = true;
                break;
            }
            c.tick();
        }
        assert!(
            taken,
            "round {round}: the leader never took the replacement"
        );
        settle(&mut c);
        assert_eq!(c.cores[&ch].incarnation(), k, "round {round}");
        assert_eq!(c.cores[&ch].fence(), None, "round {round}");
        promote(&mut c);
        let view = c.cores[&c.leader().unwrap()].members_view();
        let of_ch: Vec<_> = view.iter().filter(|m| m.facility == ch).collect();
        assert_eq!(of_ch.len(), 1, "round {round}: {view:?}");
        assert_eq!((of_ch[0].incarnation, of_ch[0].role.as_str()), (k, "voter"));
        puts(&mut c, 10);
    }
    let views: Vec<_> = c.cores.values().map(|k| k.view().unwrap()).collect();
    assert!(
        views.iter().all(|v| *v == views[0]),
        "charlie did not follow"
    );
    // With the leader down, charlie's vote elects the next one.
    c.down.push(leader.clone());
    settle(&mut c);
    settle(&mut c);
    assert!(c.leader().is_some(), "no leader without {leader}");
}

/// A follower whose log already holds a configuration change it has not
/// seen committed is sent a snapshot at that very index (its
/// acknowledgements were lost, and the leader compacted right after the
/// change). It installs the machine's rows, and raft-rs, whose log holds
/// the snapshot's index and term, only moves its commit index there and
/// hands the entries out as committed: the change, in an entry the
/// machine now holds, must still reach raft-rs and the stored
/// configuration. Found by the whole-stack simulation (seed 754): the
/// follower later led without the new learner, which never applied again.
#[test]
fn a_configuration_change_in_an_entry_a_snapshot_carried_still_takes_effect() {
    use bulwark_actors::raft::wire::WireMessage;
    use bulwark_actors::raft::MemberChange;
    use raft::eraftpb::MessageType;
    let mut c = Cluster::new();
    elect(&mut c);
    let (a, b, ch) = (f("alpha"), f("bravo"), f("charlie"));
    assert_eq!(c.leader(), Some(a.clone()));
    for id in 0..10 {
        c.put(&a, id);
        c.tick();
    }
    settle(&mut c);
    // From here bravo's acknowledgements are lost, and so is every
    // message telling it of a commit past this one.
    let c0 = c.cores[&a].commit_index();
    c.lose = Some(Box::new(move |from, to, msg| match msg {
        RaftWire::Raft(w) => {
            let (append, ack) = (
                [
                    MessageType::MsgAppend as u8,
                    MessageType::MsgHeartbeat as u8,
                ]
                .contains(&w.msg_type),
                w.msg_type == MessageType::MsgAppendResponse as u8 && !w.reject,
            );
            (*from == f("alpha") && *to == f("bravo") && append && w.commit > c0)
                || (*from == f("bravo") && *to == f("alpha") && ack)
        }
        _ => false,
    }));
    let raft_id = c
        .cores
        .get_mut(&a)
        .unwrap()
        .change_member(&ch, MemberChange::Replace)
        .expect("charlie's replacement");
    c.collect(&a);
    for _ in 0..5 {
        c.tick();
    }
    let n = c.cores[&a].commit_index();
    assert!(n > c0, "the change committed with charlie");
    assert_eq!(
        c.cores[&ch].incarnation(),
        1,
        "charlie took its new identity"
    );
    assert!(
        c.cores[&b].commit_index() <= c0,
        "bravo must not know the change committed"
    );
    let learner = |c: &Cluster, at: &FacilityId| {
        c.cores[at]
            .members_view()
            .iter()
            .any(|m| m.raft_id == raft_id && m.role == "learner")
    };
    assert!(learner(&c, &a));
    assert!(!learner(&c, &b));
    // bravo rejects an append past what the leader knows it holds: the
    // leader probes from there, finds the log compacted, and sends its
    // snapshot, whose index bravo's log holds.
    let reject = WireMessage {
        msg_type: MessageType::MsgAppendResponse as u8,
        to: bulwark_actors::raft::raft_id(&a),
        from: bulwark_actors::raft::raft_id(&b),
        term: c.cores[&a].term(),
        log_term: 0,
        index: n,
        entries: Vec::new(),
        commit: 0,
        commit_term: 0,
        snapshot: None,
        request_snapshot: 0,
        reject: true,
        reject_hint: c0,
        context: Vec::new(),
        priority: 0,
    };
    c.queue
        .push_back((b.clone(), a.clone(), RaftWire::Raft(Box::new(reject))));
    for _ in 0..20 {
        c.tick();
    }
    assert!(
        c.cores[&b].snapshot_chunks().0 > 0,
        "bravo took no snapshot: the scenario did not happen"
    );
    assert!(c.cores[&b].replica_applied() >= n);
    assert!(
        learner(&c, &b),
        "bravo applied past the change without taking it: {:?}",
        c.cores[&b].members_view()
    );
    // The same after a restart: the stored configuration holds it.
    c.lose = None;
    c.cores.remove(&b);
    c.start(&b);
    assert!(learner(&c, &b));
    settle(&mut c);
    let views: Vec<_> = c.cores.values().map(|k| k.view().unwrap()).collect();
    assert!(views.iter().all(|v| *v == views[0]));
}

/// A facility whose replica does not open takes it again from a snapshot
/// of the leader's. While it fetches one, it may forget its request
/// (raft-rs does when it campaigns) and take appends, which raft-rs hands
/// out while the replica skips them; it still ends with every entry. (Here
/// the fetch starts over, and the snapshot taken is newer than what raft-rs
/// handed out: the source dropped the one first fetched. Had it been
/// older, `RaftCore::on_chunk` applies the entries between from the log;
/// this run does not reach that case.)
#[test]
fn entries_handed_out_while_a_replica_waits_for_its_snapshot_are_applied_after_it() {
    let mut c = Cluster::new();
    elect(&mut c);
    let (a, ch) = (f("alpha"), f("charlie"));
    let mut id = 0;
    for _ in 0..50 {
        c.put(&a, id);
        id += 1;
        c.tick();
    }
    settle(&mut c);
    // charlie's replica no longer opens: it says it applied nothing while
    // its log is compacted.
    c.cores.remove(&ch);
    {
        let path = c.dir.path().join("charlie.redb");
        let opened = Store::open(&path, "charlie").unwrap();
        let tx = opened.store.begin_write().unwrap();
        tx.open_table(KV_META)
            .unwrap()
            .insert("applied", 0u64)
            .unwrap();
        tx.commit().unwrap();
    }
    c.start(&ch);
    assert!(c.cores[&ch].recovering().is_some());
    // Its snapshot's chunks are lost: it asks for them and waits.
    let asked = std::rc::Rc::new(std::cell::Cell::new(false));
    let seen = asked.clone();
    c.lose = Some(Box::new(move |from, to, msg| {
        if *from == f("charlie") && matches!(msg, RaftWire::SnapshotFetch { .. }) {
            seen.set(true);
        }
        *to == f("charlie") && matches!(msg, RaftWire::SnapshotChunk { .. })
    }));
    for _ in 0..50 {
        if asked.get() {
            break;
        }
        c.tick();
    }
    assert!(asked.get(), "charlie never began fetching a snapshot");
    let fetching_from = c.cores[&a].commit_index();
    // bravo stops, and the leader's heartbeats and appends to charlie are
    // lost: the leader, hearing from no majority, steps down; charlie
    // campaigns (forgetting its request), is elected and hands leadership
    // back.
    c.down.push(f("bravo"));
    c.lose = Some(Box::new(|from, to, msg| {
        *to == f("charlie")
            && match msg {
                RaftWire::SnapshotChunk { .. } => true,
                RaftWire::Raft(w) => {
                    *from == f("alpha")
                        && [
                            raft::eraftpb::MessageType::MsgAppend as u8,
                            raft::eraftpb::MessageType::MsgHeartbeat as u8,
                        ]
                        .contains(&w.msg_type)
                }
                _ => false,
            }
    }));
    let term = c.cores[&ch].term();
    for _ in 0..60 {
        if c.cores[&ch].term() > term && c.leader().is_some() {
            break;
        }
        c.tick();
    }
    assert!(c.cores[&ch].term() > term, "charlie never campaigned");
    c.down.clear();
    // Everything but the chunks comes through again: appends go on.
    c.lose = Some(Box::new(|_, to, msg| {
        *to == f("charlie") && matches!(msg, RaftWire::SnapshotChunk { .. })
    }));
    // (Elected while recovering, charlie hands leadership over.)
    for _ in 0..100 {
        if c.leader().is_some_and(|l| l != ch) {
            break;
        }
        c.tick();
    }
    for _ in 0..10 {
        let at = c.leader().unwrap();
        c.put(&at, id);
        id += 1;
        c.tick();
    }
    let handed = c.cores[&ch].applied_index();
    assert!(
        c.cores[&ch].recovering().is_some() && handed > fetching_from,
        "the scenario did not happen: raft-rs handed out {handed} (the fetch began at {fetching_from}), recovering {:?}",
        c.cores[&ch].recovering()
    );
    c.lose = None;
    for _ in 0..200 {
        c.tick();
        if c.cores[&ch].recovering().is_none() {
            break;
        }
    }
    assert!(c.cores[&ch].recovering().is_none(), "never recovered");
    settle(&mut c);
    let views: Vec<_> = c.cores.values().map(|k| k.view().unwrap()).collect();
    assert!(
        views.iter().all(|v| *v == views[0]),
        "charlie's replica lacks entries: {} keys against {}",
        views[2].len(),
        views[0].len()
    );
}

/// A facility replaced twice in a row keeps the first replacement while
/// its store takes it: the second is refused a moment after the first
/// (the store may hold the change in its log, about to learn it
/// committed), and refused once the store runs it (it is catching up).
/// Replacing it then would cut the store off before it learned of its
/// own removal, and it would never take the second (simulation seed
/// 4560).
#[test]
fn a_replacement_being_taken_is_not_replaced_again() {
    use bulwark_actors::raft::MemberChange;
    let mut c = Cluster::new();
    elect(&mut c);
    let (a, ch) = (f("alpha"), f("charlie"));
    for id in 0..10 {
        c.put(&a, id);
        c.tick();
    }
    settle(&mut c);
    let replace = |c: &mut Cluster| {
        let r = c
            .cores
            .get_mut(&a)
            .unwrap()
            .change_member(&ch, MemberChange::Replace);
        c.collect(&a);
        r
    };
    replace(&mut c).expect("the first replacement");
    c.tick();
    let again = replace(&mut c).expect_err("replaced again a moment later");
    assert!(again.contains("a moment ago"), "{again}");
    for _ in 0..40 {
        c.tick();
    }
    assert_eq!(
        c.cores[&ch].incarnation(),
        1,
        "charlie took its new identity"
    );
    let again = replace(&mut c).expect_err("replaced again while catching up");
    assert!(again.contains("catching up"), "{again}");
    // Promoted, it is a voter under its new identity.
    for _ in 0..100 {
        let l = c.leader().unwrap();
        let r = c
            .cores
            .get_mut(&l)
            .unwrap()
            .change_member(&ch, MemberChange::Promote);
        c.collect(&l);
        if r.is_ok() {
            break;
        }
        c.tick();
    }
    settle(&mut c);
    let view = c.cores[&c.leader().unwrap()].members_view();
    assert!(
        view.iter()
            .any(|m| m.facility == ch && m.incarnation == 1 && m.role == "voter"),
        "{view:?}"
    );
}
