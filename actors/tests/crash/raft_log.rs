//! The Raft log store (`actors/src/raft/storage.rs`) under crashes.

// raft-rs's protobuf structs are built with `default()` and field writes.
#![allow(clippy::field_reassign_with_default)]

use std::path::Path;

use bulwark_actors::raft::RaftStore;
use bulwark_storage::Store;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage as _};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::crash::CrashBackend;
use crate::{open_store, reopen, Subject};

const BOOTSTRAP: [u64; 3] = [1, 2, 3];

/// (term, vote, commit).
type Hs = (u64, u64, u64);

/// What the Raft store holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    hard_state: Hs,
    voters: Vec<u64>,
    /// The index of the change the configuration holds.
    conf_index: Option<u64>,
    /// (index, term, voters, data).
    snapshot: (u64, u64, Vec<u64>, Vec<u8>),
    /// (index, term, data), contiguous after the snapshot.
    entries: Vec<(u64, u64, Vec<u8>)>,
    incarnation: u64,
}

impl Model {
    fn first(&self) -> u64 {
        self.snapshot.0 + 1
    }

    fn last(&self) -> u64 {
        self.snapshot.0 + self.entries.len() as u64
    }

    fn term_at(&self, index: u64) -> u64 {
        if index == self.snapshot.0 {
            return self.snapshot.1;
        }
        self.entries[(index - self.first()) as usize].1
    }
}

/// One call into `RaftStore`, carrying what the model needs besides its
/// arguments.
#[derive(Debug, Clone)]
pub enum Op {
    /// `persist(entries, hard_state)`.
    Append {
        entries: Vec<(u64, u64, Vec<u8>)>,
        hard_state: Option<Hs>,
    },
    /// `set_commit`, with the hard state it writes.
    SetCommit { hard_state: Hs },
    /// `set_conf_state`, as the change at `index` left it.
    SetConfState { voters: Vec<u64>, index: u64 },
    /// `compact_to(index, cs)` (`data` stays empty).
    CompactTo {
        index: u64,
        term: u64,
        voters: Vec<u64>,
        data: Vec<u8>,
        hard_state: Hs,
    },
    /// `apply_snapshot`, with the hard state it writes.
    ApplySnapshot {
        index: u64,
        term: u64,
        voters: Vec<u64>,
        data: Vec<u8>,
        hard_state: Hs,
    },
    /// A clean restart: `RaftStore::open` again.
    Reopen,
}

pub struct RaftLog;

fn data(rng: &mut ChaCha8Rng, small_max: usize) -> Vec<u8> {
    let len = if rng.random_bool(0.1) {
        rng.random_range(8_000..30_000)
    } else {
        rng.random_range(0..small_max)
    };
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn voters(rng: &mut ChaCha8Rng) -> Vec<u64> {
    let v: Vec<u64> = (1..=5).filter(|_| rng.random_bool(0.6)).collect();
    if v.is_empty() {
        vec![1]
    } else {
        v
    }
}

fn append(rng: &mut ChaCha8Rng, m: &Model) -> Op {
    let (term, vote, commit) = m.hard_state;
    let lo = (commit + 1).max(m.first());
    let start = if lo > m.last() || rng.random_bool(0.75) {
        m.last() + 1
    } else {
        rng.random_range(lo..=m.last() + 1)
    };
    let new_term = term.max(m.term_at(start - 1)) + u64::from(rng.random_bool(0.2));
    let n = rng.random_range(1..=4u64);
    let entries = (start..start + n)
        .map(|i| (i, new_term, data(rng, 200)))
        .collect();
    let hard_state = if new_term > term {
        Some((new_term, rng.random_range(1..=3), commit))
    } else if rng.random_bool(0.3) {
        Some((term, vote, commit))
    } else {
        None
    };
    Op::Append {
        entries,
        hard_state,
    }
}

fn random_op(rng: &mut ChaCha8Rng, m: &Model) -> Op {
    let (term, vote, commit) = m.hard_state;
    match rng.random_range(0..20u8) {
        0..=8 => append(rng, m),
        9..=11 if commit < m.last() => Op::SetCommit {
            hard_state: (term, vote, rng.random_range(commit + 1..=m.last())),
        },
        12..=13 => Op::SetConfState {
            voters: voters(rng),
            index: m.last(),
        },
        14..=15 if commit > m.snapshot.0 => {
            let index = rng.random_range(m.snapshot.0 + 1..=commit);
            Op::CompactTo {
                index,
                term: m.term_at(index),
                voters: m.voters.clone(),
                // The replica holds the state; compaction stores none.
                data: Vec::new(),
                hard_state: m.hard_state,
            }
        }
        16 => {
            let index = m.last() + rng.random_range(1..=5);
            let snap_term = term.max(m.term_at(m.last())) + rng.random_range(0..=1);
            Op::ApplySnapshot {
                index,
                term: snap_term,
                voters: voters(rng),
                data: data(rng, 500),
                hard_state: (term.max(snap_term), vote, commit.max(index)),
            }
        }
        _ => Op::Reopen,
    }
}

fn apply_model(m: &mut Model, op: &Op) {
    match op {
        Op::Append {
            entries,
            hard_state,
        } => {
            let keep = (entries[0].0 - m.first()) as usize;
            m.entries.truncate(keep);
            m.entries.extend(entries.iter().cloned());
            if let Some(hs) = hard_state {
                m.hard_state = *hs;
            }
        }
        Op::SetCommit { hard_state } => m.hard_state = *hard_state,
        Op::SetConfState { voters, index } => {
            m.voters = voters.clone();
            m.conf_index = Some(*index);
        }
        Op::CompactTo {
            index,
            term,
            voters,
            data,
            hard_state,
        } => {
            let drop_n = (index + 1 - m.first()) as usize;
            m.entries.drain(..drop_n);
            m.snapshot = (*index, *term, voters.clone(), data.clone());
            m.voters = voters.clone();
            m.hard_state = *hard_state;
        }
        Op::ApplySnapshot {
            index,
            term,
            voters,
            data,
            hard_state,
        } => {
            m.entries.clear();
            m.snapshot = (*index, *term, voters.clone(), data.clone());
            m.voters = voters.clone();
            m.conf_index = Some(*index);
            m.hard_state = *hard_state;
        }
        Op::Reopen => m.incarnation += 1,
    }
}

fn raft_entry(&(index, term, ref data): &(u64, u64, Vec<u8>)) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.clone().into();
    e
}

fn hard_state(&(term, vote, commit): &Hs) -> HardState {
    let mut hs = HardState::default();
    hs.term = term;
    hs.vote = vote;
    hs.commit = commit;
    hs
}

fn conf_state(voters: &[u64]) -> ConfState {
    let mut cs = ConfState::default();
    cs.voters = voters.to_vec();
    cs
}

fn snapshot(index: u64, term: u64, voters: &[u64], data: &[u8]) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.data = data.to_vec().into();
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(conf_state(voters));
    snap
}

impl Subject for RaftLog {
    type Op = Op;
    type Model = Model;
    type Real = RaftStore;
    const OPS: usize = 70;

    /// `RaftStore::open` with bootstrap voters, as a starting facility
    /// does: the first open bumps the incarnation and writes the bootstrap
    /// configuration, every later one bumps the incarnation.
    fn open(store: Store) -> RaftStore {
        RaftStore::open(store, Some(&BOOTSTRAP))
            .unwrap_or_else(|e| panic!("RaftStore::open: {e}"))
            .0
    }

    fn initial() -> Model {
        Model {
            hard_state: (0, 0, 0),
            voters: BOOTSTRAP.to_vec(),
            conf_index: Some(0),
            snapshot: (0, 0, Vec::new(), Vec::new()),
            entries: Vec::new(),
            incarnation: 1,
        }
    }

    fn random_op(rng: &mut ChaCha8Rng, model: &Model) -> Op {
        random_op(rng, model)
    }

    /// Entries, a new term or vote, the configuration, compaction, a
    /// snapshot and an open are synced; a commit index alone is deferred.
    fn durable(op: &Op, before: &Model) -> bool {
        let (term, vote, _) = before.hard_state;
        match op {
            Op::Append {
                entries,
                hard_state,
            } => !entries.is_empty() || hard_state.is_some_and(|(t, v, _)| (t, v) != (term, vote)),
            Op::SetCommit { .. } => false,
            _ => true,
        }
    }

    fn apply_model(model: &mut Model, op: &Op) {
        apply_model(model, op)
    }

    fn apply(rs: RaftStore, backend: &CrashBackend, op: &Op) -> RaftStore {
        let mut rs = rs;
        let done = match op {
            Op::Append {
                entries,
                hard_state: hs,
            } => {
                let ents: Vec<Entry> = entries.iter().map(raft_entry).collect();
                rs.persist(&ents, hs.as_ref().map(hard_state).as_ref())
            }
            Op::SetCommit { hard_state } => rs.set_commit(hard_state.2),
            Op::SetConfState { voters, index } => rs.set_conf_state(&conf_state(voters), *index),
            Op::CompactTo { index, voters, .. } => rs.compact_to(*index, &conf_state(voters)),
            Op::ApplySnapshot {
                index,
                term,
                voters,
                data,
                ..
            } => rs.apply_snapshot(&snapshot(*index, *term, voters, data)),
            Op::Reopen => {
                drop(rs);
                return reopen::<RaftLog>(backend);
            }
        };
        done.unwrap_or_else(|e| panic!("{op:?}: {e}"));
        rs
    }

    /// `RaftStore::open` on the reopened file, as a restarting facility
    /// does; the incarnation it reports counts that open too.
    fn read_back(path: &Path, ctx: &str) -> Model {
        let store = open_store(path, ctx);
        let (rs, empty) = RaftStore::open(store, Some(&BOOTSTRAP))
            .unwrap_or_else(|e| panic!("{ctx}: RaftStore::open: {e}"));
        assert!(!empty, "{ctx}: the Raft state is gone");
        model_of(&rs)
    }
}

fn model_of(rs: &RaftStore) -> Model {
    let hs = rs.hard_state();
    let snap = rs.latest_snapshot();
    let meta = snap.get_metadata();
    let first = rs.first_index().unwrap();
    let last = rs.last_index().unwrap();
    let entries = rs
        .entries(first, last + 1, None, GetEntriesContext::empty(false))
        .unwrap()
        .iter()
        .map(|e| (e.index, e.term, e.data.to_vec()))
        .collect();
    Model {
        hard_state: (hs.term, hs.vote, hs.commit),
        voters: rs.conf_state().voters.clone(),
        conf_index: rs.conf_index(),
        snapshot: (
            meta.index,
            meta.term,
            meta.get_conf_state().voters.clone(),
            snap.data.to_vec(),
        ),
        entries,
        incarnation: rs.incarnation() - 1,
    }
}

#[test]
fn a_crash_at_any_sync_keeps_the_acknowledged_raft_log() {
    crate::run::<RaftLog>("raft log", 0..6, 1_000);
}
