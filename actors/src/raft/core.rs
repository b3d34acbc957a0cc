//! The RaftPeer's core: raft-rs's `RawNode` over the redb [`RaftStore`],
//! the state machine it applies to ([`StateMachine`]), and the proposals
//! waiting for an outcome. No tokio and no ractor here: the actor feeds
//! ticks, peer messages and proposals in, and drains [`Output`]s.
//!
//! The core never names what the entries mean: it hands a client's
//! command to the machine to encode, a forwarded proposal to the machine
//! to check, and committed entries to the machine to apply; it answers its
//! own proposals from what the machine decided.
//!
//! Every Ready is handled in the order the consensus issue fixes: persist
//! (snapshot, entries, hard state) durably, then send, then apply committed
//! entries, then advance. The one exception is raft-rs's own: a leader's
//! appends may leave before its persist (Raft thesis 10.2.1), so its fsync
//! and its followers' run at once; its own acknowledgement counts only
//! after its persist ([`RaftCore::on_ready_sending`]).
//!
//! The applied state is the machine's, in redb: committed entries are
//! applied in one transaction per batch that also moves its applied index,
//! so a restart resumes from disk. Entries at or before that index that
//! raft-rs delivers again after a restart change nothing; a tap sees them
//! again as the machine decided them then.
//!
//! **The vote fence.** A voter that forgot its votes and its log can help
//! elect a leader that lacks committed entries, so a store that may have
//! lost them never votes until that is ruled out. Every store has an id,
//! drawn when it is first opened; every facility announces it to the
//! members ([`RaftWire::Probe`]) until each has answered, and each member
//! records, durably, the (facility, store) pairs it has heard from with a
//! history (an acknowledged append, a vote request or a leader's message
//! with entries behind it). A store created by this start is fenced
//! ([`Fence`], durable): it neither grants nor asks for votes (pre-votes,
//! votes, leadership transfers), and the answers decide:
//! - a member that heard from this facility under *another* store: its
//!   store was wiped or replaced. It follows and acknowledges (truthfully:
//!   it persists what it acks) but never votes again under this identity,
//!   and its status says why;
//! - bootstrapping a new cluster, a majority of voters (itself included)
//!   know of no committed entry, and every voter answered or a whole probe
//!   interval passed: a first start; the fence lifts;
//! - otherwise (a member with a history; or any start that joins an
//!   existing cluster): it votes once it has committed the highest commit
//!   index the answers named and an entry of the current leader's term (so
//!   it holds everything committed before it started).
//!
//! Snapshots stream ([`bulwark_storage::stream`]): when raft-rs asks for
//! one, the leader holds a read of its machine's state
//! ([`StateMachine::snapshot_source`]), hashes its rows a few chunks per
//! tick, and then offers raft-rs a snapshot whose data is only a
//! [`snap::Descriptor`]. A follower that receives it fetches the
//! rows chunk by chunk ([`RaftWire::SnapshotFetch`]), stages them, checks
//! the digest, installs them in one transaction, and only then steps the
//! snapshot message into raft-rs.

use std::collections::BTreeMap;

use bulwark_storage::stream::{self as snap, SnapshotError};
use bulwark_storage::{codec, StorageError, Store};
use bulwark_transport::FacilityId;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, MessageType,
};
use raft::{RawNode, StateRole};

use super::actor::RaftSetup;
use super::storage::{Fence, PeerStores, RaftStore};

/// Ticks between exports of the Raft gauges (1 s at the default 50 ms).
const GAUGE_TICKS: u64 = 20;
use super::wire::WireMessage;
use super::{raft_id, ClusterState, RaftConfig, RaftWire, ReadOutcome, Refusal};
use crate::flow::timeout::child_deadline;
use crate::ids::{raft_id_at, INCARNATIONS_MAX};
use crate::machine::{Answer, Batch, Decided, ForwardRefused, ProposeOutcome, StateMachine};
use crate::plant::Bug;

/// Something the actor must do after a call into the core.
#[derive(Debug)]
pub enum Output<M: StateMachine> {
    /// Send to a peer's RaftPeer.
    Send {
        /// The peer.
        to: FacilityId,
        /// The message.
        msg: RaftWire,
    },
    /// Send to a peer's RaftPeer work done for a request: the envelope
    /// carries the deadline, and the peer drops it unread once past.
    SendBy {
        /// The peer.
        to: FacilityId,
        /// The message.
        msg: RaftWire,
        /// Wall-clock ms (this facility's clock) after which it is dropped.
        deadline_unix_ms: u64,
    },
    /// A proposal of ours has its outcome.
    Proposed {
        /// The proposal's sequence number.
        seq: u64,
        /// Its outcome.
        outcome: ProposeOutcome<M::Outcome>,
    },
    /// An entry was applied (only when [`RaftCore::emit_applied`] is on).
    Applied(Box<ShownEntry<M::Shown>>),
    /// A linearizable read may now be served from the local state.
    ReadReady {
        /// The read's sequence number.
        seq: u64,
        /// Its outcome.
        outcome: ReadOutcome,
    },
}

/// One applied log entry, as the applied-entry tap sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShownEntry<S> {
    /// Log index.
    pub index: u64,
    /// Term it was proposed in.
    pub term: u64,
    /// blake3 of the entry's type and data.
    pub hash: [u8; 32],
    /// What the machine shows of it.
    pub shown: S,
    /// The leader of `term`, as far as this facility saw it.
    pub leader: Option<FacilityId>,
}

struct Pending<K> {
    deadline_tick: u64,
    /// The proposal's idempotency key (none for reads).
    key: Option<K>,
    /// When the request last went to raft-rs (reads only).
    issued_tick: u64,
    /// The leader a proposal was forwarded to (raft id; none when this
    /// facility proposed it as leader, and for reads).
    via: Option<u64>,
}

/// The core. See the module docs.
pub struct RaftCore<M: StateMachine> {
    node: RawNode<RaftStore>,
    me: FacilityId,
    my_id: u64,
    /// Every raft id a member can take (each incarnation of each
    /// configured facility) -> the facility.
    members: BTreeMap<u64, FacilityId>,
    /// The same raft ids -> their incarnation.
    incarnations: BTreeMap<u64, u64>,
    /// An applied configuration names a newer incarnation of this
    /// facility: the actor rebuilds the core under it.
    reincarnated: bool,
    /// This core's tick when it last applied a configuration change.
    conf_applied_tick: u64,
    /// No leadership handoff to a validator is asked before this tick
    /// ([`RaftCore::drive_proposer`]).
    handoff_tick: u64,
    machine: M,
    /// Entries at or before this index are not applied again (the machine
    /// holds them); see [`RaftCore::open`].
    skip_through: u64,
    /// The replica did not open and was emptied: nothing is applied or
    /// read until a snapshot from the leader is installed.
    recovering: Option<Recovery>,
    config: RaftConfig,
    ticks: u64,
    next_seq: u64,
    proposals: BTreeMap<u64, Pending<M::Key>>,
    /// Reads waiting for their read index, then for it to be applied.
    reads: BTreeMap<u64, (Pending<M::Key>, Option<u64>)>,
    out: Vec<Output<M>>,
    emit_applied: bool,
    /// A configuration change applied: the next snapshot must carry it, or
    /// a facility it added would refuse the older one.
    snapshot_due: bool,
    /// The snapshot this facility holds to send.
    outgoing: Option<Outgoing<M::Source>>,
    /// The snapshot this facility is receiving.
    incoming: Option<Incoming>,
    /// Snapshot chunks taken and refused (damaged, or not stageable) at
    /// the cursor they were asked for, ever: how a fetch went.
    chunks: (u64, u64),
    /// The next outgoing snapshot's id (the store's incarnation in the
    /// high half).
    next_snap_id: u64,
    /// The leader of each recent term, as seen here.
    term_leaders: BTreeMap<u64, u64>,
    /// Why this facility withholds its votes, if it does (module docs).
    fence: Option<Fence>,
    /// Voters that answered a probe as starting new too.
    fresh_answers: std::collections::BTreeSet<u64>,
    /// When the last probes went out.
    probed_tick: Option<u64>,
    /// The peers' stores as announced, and the ones heard from with a
    /// history (durable).
    peers: PeerStores,
    /// This store's id.
    store_id: u64,
    /// Members that answered a probe of this start.
    answered: std::collections::BTreeSet<u64>,
    /// When the first probes went out.
    first_probe_tick: Option<u64>,
    /// Members whose last probe said they withhold their votes.
    fenced_peers: std::collections::BTreeSet<u64>,
}

/// Terms whose leader is remembered.
const TERM_LEADERS_KEPT: usize = 256;

/// The newest incarnation of `f` that `cs` names (as voter or learner, on
/// either side of a joint configuration), if any.
fn newest_id(
    members: &BTreeMap<u64, FacilityId>,
    incarnations: &BTreeMap<u64, u64>,
    cs: &raft::eraftpb::ConfState,
    f: &FacilityId,
) -> Option<u64> {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .filter(|id| members.get(id) == Some(f))
        .max_by_key(|id| incarnations.get(id).copied().unwrap_or(0))
        .copied()
}

/// One Raft identity in the configuration, as `bulwark member list` shows
/// it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberView {
    /// The facility.
    pub facility: FacilityId,
    /// Which of its identities (0: its first; each replacement adds one).
    pub incarnation: u64,
    /// The raft id.
    pub raft_id: u64,
    /// `voter`, `learner`, or `outgoing` (a voter of the old side of a
    /// joint configuration only).
    pub role: String,
    /// How far its log matches the leader's (known at the leader only).
    pub matched: Option<u64>,
}

/// An operator's change of the members ([`RaftCore::change_member`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberChange {
    /// Add a new incarnation of the facility as a learner: how a facility
    /// whose store was lost (or is replaced) comes back. Its old identity
    /// stays a voter until the promotion.
    Replace,
    /// Make the facility's newest incarnation, a learner caught up with
    /// the leader's commit index, a voter, and remove its older voter
    /// identity in the same change (joint consensus).
    Promote,
    /// Add a configured facility that is in no Raft configuration yet (it
    /// started with `initial_cluster_state = "existing"`) as a learner: it
    /// reads locally and forwards writes; `Promote` makes it a voter.
    Add,
    /// Remove every identity of the facility, voter or learner: it leaves
    /// the cluster for good (take it out of the validator set first).
    /// Refused for the leader itself, and when the voters left could not
    /// commit.
    Remove,
}

/// Chunks of the digest pass over an outgoing snapshot per tick.
const DIGEST_CHUNKS_PER_TICK: usize = 8;

/// Chunks the leader sends for one fetch, each from where the previous one
/// ended: the follower asks again only after the last of them, so a
/// transfer takes one round trip per window, not per chunk. A lost or
/// damaged chunk drops the rest of its window (they no longer start at the
/// follower's cursor) and is asked for again.
pub const FETCH_WINDOW: u32 = 4;

/// While a snapshot is streamed, the log is kept (not compacted) up to this
/// many times `snapshot_every_bytes`.
const TRANSFER_HOLD_LOG_FACTOR: u64 = 4;

/// A snapshot this leader holds to send: one read of its machine's state,
/// at one applied index.
struct Outgoing<S> {
    id: u64,
    tx: S,
    index: u64,
    term: u64,
    conf: raft::eraftpb::ConfState,
    hasher: snap::RowHasher,
    /// Where the digest pass is; `None` once it is done.
    digesting: Option<snap::Cursor>,
    used_tick: u64,
    /// The windows served lately: to whom, from which cursor, at which
    /// tick. A fetch for a window still in flight is not served twice.
    served: Vec<(FacilityId, snap::Cursor, u64)>,
}

/// A snapshot this follower is receiving.
struct Incoming {
    from: FacilityId,
    desc: snap::Descriptor,
    /// The snapshot message, stepped into raft-rs once the rows are in.
    msg: raft::eraftpb::Message,
    hasher: snap::RowHasher,
    cursor: snap::Cursor,
    asked_tick: u64,
    started: std::time::Instant,
    /// Fetches sent since the last chunk that moved the cursor.
    tries: u32,
    /// Chunks of the last fetch's window still to come.
    window_left: u32,
}

/// Fetches of one chunk before a transfer is given up (the leader sends a
/// new snapshot message later).
const FETCH_TRIES_MAX: u32 = 10;

/// A replica taken again from the peers (see [`RaftCore::open`]).
#[derive(Debug, Clone)]
struct Recovery {
    /// Why the replica did not open.
    reason: String,
}

/// Why the core could not start or continue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftCoreError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// raft-rs refused.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The stored snapshot does not restore.
    #[error("snapshot does not restore: {0}")]
    Snapshot(String),
    /// The replica (the applied schedule) does not open, or holds less
    /// than the log needs: the facility cannot take part until its state
    /// is restored (see [`RaftCoreError::quarantines`]).
    #[error("the replica does not open: {0}")]
    Replica(String),
    /// An existing store holds no Raft state while the config says to start
    /// a new cluster.
    #[error(
        "{} existed but holds no Raft state; refusing to bootstrap a voter from it \
         (to rejoin, set initial_cluster_state = \"existing\" and add the facility from the leader)",
        path.display()
    )]
    UnexpectedlyEmpty {
        /// The store's file.
        path: std::path::PathBuf,
    },
}

impl RaftCoreError {
    /// True when an injected disk fault refused a write
    /// ([`StorageError::Injected`]): nothing was written, and the store is
    /// intact, so the core can be rebuilt from it in place.
    pub fn is_injected(&self) -> bool {
        matches!(self, RaftCoreError::Storage(e) if e.is_injected())
    }

    /// True when the facility's applied state is unusable: restarting the
    /// actor cannot help, so the RaftPeer starts quarantined (out of
    /// consensus, saying why) instead of failing into a restart loop.
    pub fn quarantines(&self) -> bool {
        matches!(self, RaftCoreError::Replica(_))
    }
}

impl<M: StateMachine> RaftCore<M> {
    /// Opens the Raft state in `store` for `me` as `setup` describes, and
    /// the machine's state in the same store.
    ///
    /// A store with Raft state resumes from it. A store without any:
    /// - with [`ClusterState::New`] and a store created by this start
    ///   (`fresh_store`), the initial voters are written;
    /// - with [`ClusterState::New`] and a store that existed before, it is
    ///   refused: an old store that lost its Raft state must not vote as if
    ///   it had never voted;
    /// - with [`ClusterState::Existing`], it starts with no configuration and
    ///   waits for a leader to add it (and send it a snapshot).
    pub fn open(
        store: Store,
        me: FacilityId,
        setup: &RaftSetup<M>,
        fresh_store: bool,
        logger: &slog::Logger,
    ) -> Result<RaftCore<M>, RaftCoreError> {
        let start = setup.start;
        let config = setup.config.clone();
        let mut members = BTreeMap::new();
        let mut incarnations = BTreeMap::new();
        for f in &setup.members {
            for k in 0..INCARNATIONS_MAX {
                let id = raft_id_at(f, k);
                members.insert(id, f.clone());
                incarnations.insert(id, k);
            }
        }
        let initial = setup.initial_voters.as_ref().unwrap_or(&setup.members);
        let voters: Vec<u64> = initial.iter().map(raft_id).collect();
        let bootstrap = start == ClusterState::New && fresh_store;
        let path = store.path().to_path_buf();
        let opened = match M::open(store.clone(), &setup.keyring) {
            Ok(r) => Ok(r),
            Err(e) if e.is_injected() => return Err(e.into()),
            Err(e) => Err(e.to_string()),
        };
        let (mut rs, empty) =
            RaftStore::open(store.clone(), bootstrap.then_some(voters.as_slice()))?;
        let incarnation = rs.incarnation();
        if empty && start == ClusterState::Existing && fresh_store {
            // Joining with a store made by this start: it may be a lost one.
            rs.set_fence(Some(&Fence::UntilCommit(0)))?;
        }
        // The identity: the one this store recorded running under while the
        // configuration still names it (or names none of this facility);
        // else the newest the configuration names. The fence is never
        // lifted here: only applying the replacement made for this very
        // store lifts it (see `apply`).
        let cs = rs.conf_state();
        let named = |id: u64| {
            cs.voters
                .iter()
                .chain(&cs.learners)
                .chain(&cs.voters_outgoing)
                .chain(&cs.learners_next)
                .any(|x| *x == id)
        };
        let newest = newest_id(&members, &incarnations, cs, &me);
        let recorded = rs.identity()?;
        let inc = |id: u64| incarnations.get(&id).copied().unwrap_or(0);
        let my_id = match (recorded, newest) {
            // Still named, or newer than anything its configuration knows
            // (taken from the leader's messages before the log caught up).
            (Some(r), Some(n)) if named(r) || inc(r) > inc(n) => r,
            (Some(r), None) => r,
            (Some(r), Some(n)) => {
                // The configuration moved on to an identity this store did
                // not become itself (a backup or snapshot from before the
                // switch, or a store of this facility that is gone): that
                // identity may have voted from elsewhere.
                let reason = format!(
                    "{me}'s configuration names its Raft identity {n} (incarnation {}), which this \
                     store did not become itself (it ran as {r}): that identity may have voted \
                     from a store that is gone. It follows but never votes under it: replace it \
                     (bulwark member replace --facility {me})",
                    incarnations.get(&n).copied().unwrap_or(0)
                );
                tracing::error!("{reason}");
                rs.set_fence(Some(&Fence::Refused(reason)))?;
                n
            }
            (None, n) => n.unwrap_or_else(|| raft_id(&me)),
        };
        if recorded != Some(my_id) {
            rs.set_identity(my_id, false)?;
        }
        let fence = rs.fence()?;
        let peers = rs.peer_stores()?;
        let store_id = rs.store_id(|| match setup.store_id_seed {
            Some(seed) => {
                let mut h = blake3::Hasher::new();
                h.update(b"bulwark store id");
                h.update(&seed.to_le_bytes());
                h.update(me.as_str().as_bytes());
                u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
            }
            None => rand::random(),
        })?;
        if empty && start == ClusterState::New && !fresh_store {
            return Err(RaftCoreError::UnexpectedlyEmpty { path });
        }
        let snap_index = rs.latest_snapshot().get_metadata().index;
        let opened = opened.and_then(|r| match r.applied() < snap_index {
            true => Err(format!(
                "it has applied {} but the log is compacted to {snap_index}",
                r.applied()
            )),
            false => Ok(r),
        });
        // A replica that does not open is derived state: it is emptied and
        // taken again, by replaying the log if the log holds everything,
        // else from a snapshot of the leader's (the Raft log, votes and
        // acknowledged entries stay). Only an emptying that fails
        // quarantines the facility.
        let (machine, recovering) = match opened {
            Ok(r) => (r, None),
            Err(reason) => {
                tracing::error!(%reason, snap_index, "the replica does not open; emptying it to take it again from the peers");
                metrics::counter!("bulwark_replica_recoveries_total").increment(1);
                let r = M::reset(store, &setup.keyring).map_err(|e| {
                    RaftCoreError::Replica(format!("{reason}; emptying it failed: {e}"))
                })?;
                let recovering = (snap_index > 0).then_some(Recovery { reason });
                (r, recovering)
            }
        };
        // raft-rs delivers the entries after the compaction point again;
        // those the replica holds change nothing (see `apply`).
        let mut skip_through = machine.applied();
        if skip_through > 0 && crate::plant::active(Bug::SnapshotIndexPlusOne) {
            skip_through += 1;
        }
        // A store from before the configuration's index was kept: its
        // configuration holds every change the replica applied (both were
        // written in one transaction). Unknown when the replica was emptied:
        // then changes reach raft-rs as they did before (`apply`).
        if rs.conf_index().is_none() && recovering.is_none() && machine.applied() > 0 {
            let cs = rs.conf_state().clone();
            rs.set_conf_state(&cs, machine.applied())?;
        }
        let cfg = config.to_raft(my_id, snap_index);
        let node = RawNode::new(&cfg, rs, logger)?;
        Ok(RaftCore {
            node,
            me,
            my_id,
            members,
            incarnations,
            reincarnated: false,
            conf_applied_tick: 0,
            handoff_tick: 0,
            machine,
            skip_through,
            recovering,
            config,
            ticks: 0,
            // Sequence numbers never repeat across restarts: the high half
            // is the store's incarnation.
            next_seq: (incarnation << 32) | 1,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            out: Vec::new(),
            emit_applied: false,
            snapshot_due: false,
            outgoing: None,
            incoming: None,
            chunks: (0, 0),
            next_snap_id: incarnation << 32,
            term_leaders: BTreeMap::new(),
            fence,
            fresh_answers: Default::default(),
            probed_tick: None,
            peers,
            store_id,
            answered: Default::default(),
            first_probe_tick: None,
            fenced_peers: Default::default(),
        })
    }

    /// Also report every applied entry as [`Output::Applied`].
    pub fn emit_applied(&mut self, on: bool) {
        self.emit_applied = on;
    }

    /// Takes what the actor must do now.
    pub fn drain(&mut self) -> Vec<Output<M>> {
        std::mem::take(&mut self.out)
    }

    /// A consistent view of the applied state (none while it is being
    /// taken again from the peers).
    pub fn view(&self) -> Result<M::View, StorageError> {
        if let Some(r) = &self.recovering {
            return Err(StorageError::Corrupt {
                path: self.machine.store().path().to_path_buf(),
                reason: format!("recovering from the leader's snapshot: {}", r.reason),
            });
        }
        self.machine.view()
    }

    /// Why the replica is being taken again from the peers, if it is.
    pub fn recovering(&self) -> Option<String> {
        self.recovering.as_ref().map(|r| {
            format!(
                "the replica did not open ({}); waiting for a snapshot from the leader",
                r.reason
            )
        })
    }

    /// While recovering: asks the leader for a snapshot (raft-rs takes the
    /// request once this follower holds an entry of the current term), and
    /// hands leadership away if this facility was elected.
    fn drive_recovery(&mut self) {
        if self.recovering.is_none() {
            return;
        }
        if self.node.raft.state == StateRole::Leader {
            let to = self.voters_by_progress().into_iter().next();
            if let Some(to) = to {
                tracing::warn!(%to, "elected while recovering its replica; handing leadership over");
                self.node.transfer_leader(self.voter_id_of(&to));
            }
            return;
        }
        // raft-rs forgets the request whenever this facility campaigns or
        // leads (`reset`): ask again whenever none is pending and no
        // transfer is under way.
        let pending = self.node.raft.pending_request_snapshot != raft::INVALID_INDEX;
        if !pending
            && self.incoming.is_none()
            && self.node.raft.leader_id != raft::INVALID_ID
            && self.node.request_snapshot().is_ok()
        {
            tracing::info!("asked the leader for a snapshot to take the replica again");
        }
    }

    /// Whether this facility may propose under the applied state
    /// ([`StateMachine::proposes`]).
    pub fn proposes(&self) -> bool {
        self.machine.proposes(&self.me)
    }

    /// A leader that may not propose (its facility is no validator of the
    /// set in force, or holds no key of it) hands leadership to the voter
    /// furthest along that may, among those that answer and hold every
    /// committed entry: a write sent to the leader, as clients do, would
    /// otherwise be refused until the set changes again. None such (every
    /// validator down, behind, or no voter): it keeps leading, and writes
    /// that validators forward to it still commit.
    fn drive_proposer(&mut self) {
        if !self.is_leader()
            || self.node.raft.lead_transferee.is_some()
            || self.recovering.is_some()
            || self.ticks < self.handoff_tick
            || self.machine.proposes(&self.me)
        {
            return;
        }
        // Judged on what this leader has applied: a new leader that has
        // not applied its term's first entry may not know yet that it was
        // added back.
        let raft = &self.node.raft;
        let committed = raft.raft_log.committed;
        if raft.raft_log.term(committed).ok() != Some(raft.term)
            || self.machine.applied() < committed
        {
            return;
        }
        // Only to a voter that answers and holds every committed entry: a
        // transfer under way drops proposals, so one to an identity no
        // store runs (a replaced facility's old one) would stop writes.
        let voters = raft.prs().conf().voters().ids();
        let mut ready: Vec<(u64, u64, &FacilityId)> = raft
            .prs()
            .iter()
            .filter(|(id, pr)| {
                **id != raft.id
                    && voters.contains(**id)
                    && !self.fenced_peers.contains(id)
                    && pr.recent_active
                    && pr.state == raft::ProgressState::Replicate
                    && pr.matched >= committed
            })
            .filter_map(|(id, pr)| self.members.get(id).map(|f| (pr.matched, *id, f)))
            .filter(|(_, _, f)| self.machine.proposes(f))
            .collect();
        ready.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.cmp(b.2)));
        if let Some(&(_, id, to)) = ready.first() {
            // Once per election timeout: a transfer under way drops
            // proposals until it ends or raft-rs gives it up.
            self.handoff_tick = self.ticks + self.config.election_ticks as u64;
            tracing::info!(%to, "this leader is no validator of the set in force; handing leadership to one");
            metrics::counter!("bulwark_raft_transfers_to_a_validator_total").increment(1);
            self.node.transfer_leader(id);
        }
    }

    /// The replica's applied index (at least [`RaftCore::applied_index`]
    /// once a restart has replayed).
    pub fn replica_applied(&self) -> u64 {
        self.machine.applied()
    }

    /// The leader as this facility knows it.
    pub fn leader(&self) -> Option<FacilityId> {
        self.members.get(&self.node.raft.leader_id).cloned()
    }

    /// Whether this facility leads.
    pub fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.node.raft.term
    }

    /// The commit index.
    pub fn commit_index(&self) -> u64 {
        self.node.raft.raft_log.committed
    }

    /// The applied index.
    pub fn applied_index(&self) -> u64 {
        self.node.raft.raft_log.applied
    }

    /// The current voters.
    pub fn voters(&self) -> Vec<FacilityId> {
        self.node
            .raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter_map(|id| self.members.get(&id).cloned())
            .collect()
    }

    /// One clock tick. The Ready it makes is handled by the next
    /// [`RaftCore::on_ready`], which the actor calls right after (awaiting
    /// an injected disk latency first when the Ready writes).
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.node.tick();
        if self.ticks % GAUGE_TICKS == 0 {
            self.export_gauges();
        }
        let (now, out) = (self.ticks, &mut self.out);
        self.proposals.retain(|&seq, p| {
            let live = p.deadline_tick > now;
            if !live {
                out.push(Output::Proposed {
                    seq,
                    outcome: ProposeOutcome::TimedOut,
                });
            }
            live
        });
        self.reads.retain(|&seq, (p, _)| {
            let live = p.deadline_tick > now;
            if !live {
                out.push(Output::ReadReady {
                    seq,
                    outcome: ReadOutcome::TimedOut,
                });
            }
            live
        });
        self.retry_reads();
        self.drive_recovery();
        self.drive_proposer();
        self.drive_snapshots();
        if let Err(e) = self.drive_fence() {
            tracing::error!(error = %e, "the vote fence could not be written; retried next tick");
        }
    }

    /// Why this facility withholds its votes, if it does.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Each tick: lifts an [`Fence::UntilCommit`] once caught up; probes
    /// every election timeout the members that have not answered yet (all
    /// of them while fenced, so a wiped store keeps telling the leader
    /// where its log really ends).
    fn drive_fence(&mut self) -> Result<(), RaftCoreError> {
        match self.fence {
            Some(Fence::UntilCommit(target)) if self.caught_up(target) => {
                tracing::info!(target, "caught up with the cluster's history; votes again");
                self.set_fence(None)?;
            }
            Some(Fence::Awaiting) => self.maybe_first_start()?,
            _ => {}
        }
        // A refused store probes less often: only to show a new leader
        // where its log ends.
        let every = match self.fence {
            Some(Fence::Refused(_)) => 10,
            _ => 1,
        } * self.config.election_ticks as u64;
        if self.probed_tick.is_some_and(|t| self.ticks < t + every) {
            return Ok(());
        }
        let fenced = self.fence.is_some();
        let peers: std::collections::BTreeSet<FacilityId> = self
            .members
            .values()
            .filter(|f| **f != self.me)
            .cloned()
            .collect();
        let to: Vec<FacilityId> = peers
            .into_iter()
            .filter(|f| fenced || !self.answered.contains(&self.id_of(f)))
            .collect();
        if to.is_empty() {
            return Ok(());
        }
        self.probed_tick = Some(self.ticks);
        self.first_probe_tick.get_or_insert(self.ticks);
        let last_index = self.node.raft.raft_log.last_index();
        for to in to {
            self.out.push(Output::Send {
                to,
                msg: RaftWire::Probe {
                    store: self.store_id,
                    last_index,
                    fenced,
                    id: self.my_id,
                },
            });
        }
        Ok(())
    }

    /// A first start: a majority of the voters (this one included) answered
    /// that they know of no committed entry, and every voter answered or a
    /// whole probe interval passed (so a member that remembers this
    /// facility had its time to say so).
    fn maybe_first_start(&mut self) -> Result<(), RaftCoreError> {
        let voters: Vec<u64> = self.voters().iter().map(|f| self.id_of(f)).collect();
        let fresh = voters
            .iter()
            .filter(|v| **v == self.my_id || self.fresh_answers.contains(v))
            .count();
        let all = voters
            .iter()
            .all(|v| *v == self.my_id || self.answered.contains(v));
        let waited = self
            .first_probe_tick
            .is_some_and(|t| self.ticks >= t + self.config.election_ticks as u64);
        if !voters.is_empty() && 2 * fresh > voters.len() && (all || waited) {
            tracing::info!("a majority of the voters start new too: a first start; votes");
            self.set_fence(None)?;
        }
        Ok(())
    }

    /// Whether this facility holds everything committed before it started:
    /// it has committed at least `target` (the highest commit index the
    /// probe answers named) and an entry of the current leader's term. A
    /// leader elected without this facility's vote holds every committed
    /// entry, and everything before an entry it committed in its own term
    /// is committed, so this facility's log then holds all of it.
    fn caught_up(&self, target: u64) -> bool {
        let raft = &self.node.raft;
        let commit = raft.raft_log.committed;
        commit >= target
            && raft.leader_id != raft::INVALID_ID
            && raft.raft_log.term(commit).ok() == Some(raft.term)
    }

    /// The Raft view as gauges (term, leading, a leader known, commit and
    /// applied indexes), for dashboards and alerts.
    fn export_gauges(&self) {
        let raft = &self.node.raft;
        let f = self.me.to_string();
        metrics::gauge!("bulwark_raft_term", "facility" => f.clone()).set(raft.term as f64);
        metrics::gauge!("bulwark_raft_is_leader", "facility" => f.clone())
            .set(f64::from(u8::from(raft.state == StateRole::Leader)));
        metrics::gauge!("bulwark_raft_leader_known", "facility" => f.clone())
            .set(f64::from(u8::from(raft.leader_id != raft::INVALID_ID)));
        metrics::gauge!("bulwark_raft_commit_index", "facility" => f.clone())
            .set(raft.raft_log.committed as f64);
        metrics::gauge!("bulwark_raft_applied_index", "facility" => f)
            .set(self.machine.applied() as f64);
    }

    fn set_fence(&mut self, fence: Option<Fence>) -> Result<(), RaftCoreError> {
        self.node.store().set_fence(fence.as_ref())?;
        if fence.is_none() {
            // Tell every member the fence is gone.
            self.answered.clear();
            self.probed_tick = None;
        }
        metrics::gauge!("bulwark_raft_vote_fenced", "facility" => self.me.to_string())
            .set(if fence.is_some() { 1.0 } else { 0.0 });
        self.fence = fence;
        Ok(())
    }

    /// An answer to our probe.
    fn on_probe_answer(
        &mut self,
        from: &FacilityId,
        commit: u64,
        knew_you: bool,
    ) -> Result<(), RaftCoreError> {
        let from_id = self.id_of(from);
        self.answered.insert(from_id);
        let waiting = match &self.fence {
            Some(Fence::Awaiting) => None,
            Some(Fence::UntilCommit(t)) => Some(*t),
            Some(Fence::Refused(_)) | None => return Ok(()),
        };
        if knew_you {
            let reason = format!(
                "{from} had heard from {} under another store: its votes and Raft log were \
                 lost (a wiped or replaced data directory). It follows the leader but never \
                 votes again under this identity: run bulwark member replace --facility {}, \
                 then promote (docs/OPERATIONS.md, \"A facility's store was lost\")",
                self.me, self.me
            );
            tracing::error!(%from, "{reason}");
            return self.set_fence(Some(Fence::Refused(reason)));
        }
        // A voter that knows of no committed entry (starting new, or
        // started new a moment ago and lifted its own fence) counts as new.
        if commit > 0 {
            let target = waiting.unwrap_or(0).max(commit);
            if waiting != Some(target) {
                tracing::warn!(%from, target, "a new store in a cluster with a history: no vote until caught up");
                self.set_fence(Some(Fence::UntilCommit(target)))?;
            }
            return Ok(());
        }
        if waiting.is_none() {
            self.fresh_answers.insert(from_id);
            self.maybe_first_start()?;
        }
        Ok(())
    }

    /// A member's probe: records the store it announces, answers what this
    /// facility knows, and, leading, probes a lost store's log from where
    /// it really ends.
    fn on_probe(
        &mut self,
        from: &FacilityId,
        store: u64,
        last_index: u64,
        fenced: bool,
        id: u64,
    ) -> Result<(), RaftCoreError> {
        // The identity it runs under (one of its own), else the newest the
        // configuration names: a store that lost its log may run under an
        // older one than the configuration's newest.
        let from_id = if self.members.get(&id) == Some(from) {
            id
        } else {
            self.id_of(from)
        };
        if fenced {
            self.fenced_peers.insert(from_id);
        } else {
            self.fenced_peers.remove(&from_id);
        }
        // Heard under any identity of this facility, from another store.
        let knew_you = self
            .peers
            .heard
            .iter()
            .any(|(r, s)| self.members.get(r) == Some(from) && *s != store);
        if self.peers.announced.get(&from_id) != Some(&store) {
            let mut peers = self.peers.clone();
            peers.announced.insert(from_id, store);
            self.node.store().set_peer_stores(&peers)?;
            self.peers = peers;
        }
        if self.is_leader() {
            if let Some(pr) = self.node.raft.mut_prs().get_mut(from_id) {
                if pr.matched > last_index && pr.state != raft::ProgressState::Snapshot {
                    // It lost what it acknowledged: probe it from the start
                    // (raft-rs never lowers a follower's match by itself,
                    // and would take its rejections as stale).
                    pr.become_probe();
                    pr.matched = 0;
                    pr.next_idx = 1;
                }
            }
        }
        self.out.push(Output::Send {
            to: from.clone(),
            msg: RaftWire::ProbeAnswer {
                commit: self.commit_index(),
                knew_you,
            },
        });
        Ok(())
    }

    /// Records, durably and once per store, that `from` showed a history of
    /// its own in `m` under the store it announced (a probe of a later
    /// store of it is answered with that).
    fn note_heard(&mut self, from: u64, m: &raft::eraftpb::Message) -> Result<(), RaftCoreError> {
        let history = match m.msg_type {
            MessageType::MsgAppendResponse => !m.reject && m.index > 0,
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => m.index > 0,
            MessageType::MsgAppend | MessageType::MsgHeartbeat => m.commit > 0,
            _ => false,
        };
        let Some(&store) = self.peers.announced.get(&from) else {
            return Ok(()); // not attributable to a store yet
        };
        if history && !self.peers.heard.contains(&(from, store)) {
            let mut peers = self.peers.clone();
            peers.heard.insert((from, store));
            self.node.store().set_peer_stores(&peers)?;
            self.peers = peers;
        }
        Ok(())
    }

    /// raft-rs drops a read-index request silently when the leader has not
    /// yet committed an entry in its term, or when it is lost on the way
    /// to the leader. A read with no read state after two heartbeats is
    /// asked again (raft-rs ignores a context it already holds).
    fn retry_reads(&mut self) {
        if self.node.raft.leader_id == raft::INVALID_ID {
            return;
        }
        let now = self.ticks;
        let every = 2 * self.config.heartbeat_ticks as u64;
        let mut again = Vec::new();
        for (seq, (p, at)) in self.reads.iter_mut() {
            if at.is_none() && now >= p.issued_tick + every {
                p.issued_tick = now;
                again.push(*seq);
            }
        }
        for seq in again {
            self.node.read_index(self.read_ctx(seq));
        }
    }

    fn deadline(&self) -> u64 {
        self.ticks + self.config.proposal_timeout_ticks
    }

    /// A message from a peer's RaftPeer. `from` is the authenticated sender.
    /// It is stepped into raft-rs; the Ready it makes is handled by the next
    /// [`RaftCore::on_ready`], so messages that arrive together share one
    /// redb commit.
    /// `now_unix_ms` is this facility's wall clock, to check a forwarded
    /// proposal's timestamp.
    pub fn on_peer(
        &mut self,
        from: &FacilityId,
        msg: RaftWire,
        now_unix_ms: u64,
    ) -> Result<(), RaftCoreError> {
        if !self.members.contains_key(&raft_id(from)) {
            tracing::warn!(%from, "raft message from a non-member dropped");
            return Ok(());
        }
        match msg {
            RaftWire::Raft(w) => {
                // Any incarnation of the sender (a peer that has not yet
                // applied its replacement), to this one of ours.
                let from_id = w.from;
                // Only what a leader sends (appends, heartbeats, snapshots)
                // names the identity this facility now has.
                let from_leader = [
                    MessageType::MsgAppend,
                    MessageType::MsgHeartbeat,
                    MessageType::MsgSnapshot,
                ]
                .iter()
                .any(|t| *t as u8 == w.msg_type);
                if self.members.get(&from_id) == Some(from)
                    && w.to != self.my_id
                    && self.members.get(&w.to) == Some(&self.me)
                {
                    if from_leader && w.term >= self.term() {
                        return self.adopt_from_message(from, w.to);
                    }
                    return Ok(());
                }
                if self.members.get(&from_id) != Some(from) || w.to != self.my_id {
                    tracing::warn!(%from, "raft message with forged from/to dropped");
                    return Ok(());
                }
                let mut m = match w.to_raft() {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "malformed raft message dropped");
                        return Ok(());
                    }
                };
                self.guard_reject_hint(&mut m);
                self.guard_heartbeat_commit(&mut m);
                self.note_heard(from_id, &m)?;
                if self.fence.is_some()
                    && matches!(
                        m.msg_type,
                        MessageType::MsgRequestVote
                            | MessageType::MsgRequestPreVote
                            | MessageType::MsgTimeoutNow
                    )
                {
                    return Ok(()); // fenced: no vote, no campaign
                }
                if m.msg_type == MessageType::MsgSnapshot && !self.receive_snapshot(from, &m)? {
                    return Ok(());
                }
                match self.node.step(m) {
                    Ok(())
                    | Err(raft::Error::StepPeerNotFound)
                    | Err(raft::Error::StepLocalMsg) => {}
                    Err(e) => tracing::debug!(%from, error = %e, "step refused"),
                }
            }
            RaftWire::Forward { payload } => {
                let outcome = self.propose_forwarded(from, payload, now_unix_ms);
                if let Err((seq, refusal)) = outcome {
                    self.out.push(Output::Send {
                        to: from.clone(),
                        msg: RaftWire::ForwardRefused { seq, refusal },
                    });
                }
            }
            RaftWire::ForwardRefused { seq, refusal } => {
                if self.proposals.remove(&seq).is_some() {
                    let outcome = match refusal {
                        Refusal::NotLeader { hint } => ProposeOutcome::NotLeader { hint },
                        Refusal::Rejected { reason } => ProposeOutcome::Rejected { reason },
                    };
                    self.out.push(Output::Proposed { seq, outcome });
                }
            }
            RaftWire::SnapshotFetch { id, cursor } => self.serve_chunk(from, id, cursor),
            RaftWire::TransferLeader { to } => {
                // Only a voter passes one on, and only to a voter.
                let voters = self.voters();
                if self.is_leader() && voters.contains(from) && voters.contains(&to) {
                    tracing::info!(%from, %to, "leadership transfer passed on by a follower");
                    self.node.transfer_leader(self.voter_id_of(&to));
                }
            }
            RaftWire::ChangeMember { facility, change } => {
                if !self.voters().contains(from) {
                    tracing::warn!(%from, "a membership change from a non-voter dropped");
                } else if self.is_leader() {
                    match self.change_member(&facility, change) {
                        Ok(_) => {
                            tracing::info!(%from, %facility, ?change, "membership change passed on by a follower")
                        }
                        Err(e) => {
                            tracing::warn!(%from, %facility, ?change, error = %e, "membership change passed on by a follower refused")
                        }
                    }
                }
            }
            RaftWire::SnapshotChunk {
                id,
                at,
                bytes,
                checksum,
            } => self.on_chunk(from, id, at, &bytes, &checksum)?,
            RaftWire::Probe {
                store,
                last_index,
                fenced,
                id,
            } => self.on_probe(from, store, last_index, fenced, id)?,
            RaftWire::ProbeAnswer { commit, knew_you } => {
                self.on_probe_answer(from, commit, knew_you)?
            }
            RaftWire::SnapshotGone { id } => {
                if self
                    .incoming
                    .as_ref()
                    .is_some_and(|i| i.from == *from && i.desc.id == id)
                {
                    tracing::warn!(%from, id, "the leader dropped the snapshot being fetched");
                    self.incoming = None;
                }
            }
        }
        Ok(())
    }

    /// A snapshot message from the leader: `Ok(true)` when raft-rs may take
    /// it now (the replica already holds its index), `Ok(false)` when its
    /// rows are fetched first.
    fn receive_snapshot(
        &mut self,
        from: &FacilityId,
        m: &raft::eraftpb::Message,
    ) -> Result<bool, RaftCoreError> {
        let meta = m.get_snapshot().get_metadata();
        let desc = match codec::decode_limited::<snap::Descriptor>(&m.get_snapshot().data, 4096) {
            Ok(d) if d.index == meta.index => d,
            Ok(_) | Err(_) => {
                metrics::counter!("bulwark_snapshot_refused_total", "facility" => self.me.to_string(), "reason" => "descriptor")
                    .increment(1);
                tracing::warn!(%from, index = meta.index, "snapshot message without a valid descriptor dropped");
                return Ok(false);
            }
        };
        if desc.index <= self.machine.applied() {
            return Ok(true);
        }
        if let Some(i) = &self.incoming {
            if i.from == *from && i.desc == desc {
                return Ok(false); // already fetching it
            }
        }
        self.machine.clear_staging()?;
        metrics::counter!("bulwark_snapshot_fetches_started_total", "facility" => self.me.to_string())
            .increment(1);
        tracing::info!(%from, index = desc.index, rows = desc.rows, bytes = desc.bytes,
            "receiving a snapshot");
        let cursor = snap::Cursor::default();
        self.out.push(Output::Send {
            to: from.clone(),
            msg: RaftWire::SnapshotFetch {
                id: desc.id,
                cursor: cursor.clone(),
            },
        });
        self.incoming = Some(Incoming {
            from: from.clone(),
            desc,
            msg: m.clone(),
            hasher: snap::RowHasher::default(),
            cursor,
            asked_tick: self.ticks,
            started: std::time::Instant::now(),
            tries: 1,
            window_left: FETCH_WINDOW,
        });
        Ok(false)
    }

    /// Serves a window of [`FETCH_WINDOW`] chunks of the held snapshot `id`
    /// from `cursor`.
    fn serve_chunk(&mut self, to: &FacilityId, id: u64, cursor: snap::Cursor) {
        // A follower asks again only an election timeout after its last
        // chunk; a fetch for the same cursor sooner than that after it was
        // served is a duplicate of a window still in flight (a slow
        // leader, a reordered message). Serving it again would only add
        // load when the leader is already behind.
        let (ticks, fresh) = (self.ticks, self.config.election_ticks as u64);
        if let Some(o) = self.outgoing.as_mut().filter(|o| o.id == id) {
            o.served.retain(|(_, _, at)| ticks < at + fresh);
            if o.served.iter().any(|(t, c, _)| t == to && *c == cursor) {
                return;
            }
            o.served.push((to.clone(), cursor.clone(), ticks));
        }
        let mut at = Some(cursor);
        for _ in 0..FETCH_WINDOW {
            let Some(cursor) = at.take() else {
                return;
            };
            at = self.serve_one(to, id, cursor);
        }
    }

    /// Serves the chunk at `cursor`; the cursor of the next one, if any.
    fn serve_one(
        &mut self,
        to: &FacilityId,
        id: u64,
        cursor: snap::Cursor,
    ) -> Option<snap::Cursor> {
        let chunk = match &mut self.outgoing {
            Some(o) if o.id == id && o.digesting.is_none() => {
                o.used_tick = self.ticks;
                self.machine
                    .read_chunk(&o.tx, &cursor, snap::CHUNK_BYTES)
                    .and_then(|c| Ok((snap::seal(&c)?, c.next)))
            }
            _ => {
                self.out.push(Output::Send {
                    to: to.clone(),
                    msg: RaftWire::SnapshotGone { id },
                });
                return None;
            }
        };
        match chunk {
            Ok(((bytes, checksum), next)) => {
                metrics::counter!("bulwark_snapshot_sent_bytes_total", "facility" => self.me.to_string())
                    .increment(bytes.len() as u64);
                self.out.push(Output::Send {
                    to: to.clone(),
                    msg: RaftWire::SnapshotChunk {
                        id,
                        at: cursor,
                        bytes,
                        checksum,
                    },
                });
                next
            }
            Err(e) => {
                tracing::error!(error = %e, id, "snapshot chunk could not be read; dropped");
                self.outgoing = None;
                self.node.mut_store().offer_snapshot(None);
                self.out.push(Output::Send {
                    to: to.clone(),
                    msg: RaftWire::SnapshotGone { id },
                });
                None
            }
        }
    }

    /// One chunk of the snapshot being received.
    fn on_chunk(
        &mut self,
        from: &FacilityId,
        id: u64,
        at: snap::Cursor,
        bytes: &[u8],
        checksum: &[u8; 32],
    ) -> Result<(), RaftCoreError> {
        let Some(inc) = self.incoming.as_mut() else {
            return Ok(());
        };
        if inc.from != *from || inc.desc.id != id || inc.cursor != at {
            return Ok(()); // late or duplicate
        }
        let chunk = match snap::open(bytes, checksum, inc.hasher.rows()) {
            Ok(c) => c,
            Err(e) => {
                self.chunks.1 += 1;
                metrics::counter!("bulwark_snapshot_refused_total", "facility" => self.me.to_string(), "reason" => "chunk")
                    .increment(1);
                tracing::warn!(%from, error = %e, "damaged snapshot chunk refused; asking again");
                self.ask_again();
                return Ok(());
            }
        };
        let first = inc.hasher.rows();
        match self.machine.stage(first, &chunk.rows, &mut inc.hasher) {
            Ok(()) => {}
            Err(SnapshotError::Storage(e)) => return Err(e.into()),
            Err(e) => {
                self.chunks.1 += 1;
                metrics::counter!("bulwark_snapshot_refused_total", "facility" => self.me.to_string(), "reason" => "chunk")
                    .increment(1);
                tracing::warn!(%from, error = %e, "snapshot chunk refused; asking again");
                // The rows staged so far stay; the hasher has not moved.
                self.ask_again();
                return Ok(());
            }
        }
        self.chunks.0 += 1;
        metrics::counter!("bulwark_snapshot_received_bytes_total", "facility" => self.me.to_string()).increment(bytes.len() as u64);
        inc.tries = 0;
        inc.window_left = inc.window_left.saturating_sub(1);
        if let Some(next) = chunk.next {
            inc.cursor = next.clone();
            inc.asked_tick = self.ticks;
            if inc.window_left == 0 {
                // The window is in: ask for the next one.
                inc.tries = 1;
                inc.window_left = FETCH_WINDOW;
                let to = inc.from.clone();
                self.out.push(Output::Send {
                    to,
                    msg: RaftWire::SnapshotFetch { id, cursor: next },
                });
            }
            return Ok(());
        }
        let Some(inc) = self.incoming.take() else {
            return Ok(());
        };
        match self.machine.install(&inc.desc, &inc.hasher) {
            Ok(()) => {}
            Err(SnapshotError::Stale { index, applied }) => {
                tracing::info!(%from, index, applied, "snapshot no longer needed: the log caught up");
                return Ok(());
            }
            Err(SnapshotError::Storage(e)) => return Err(e.into()),
            Err(e) => {
                metrics::counter!("bulwark_snapshot_refused_total", "facility" => self.me.to_string(), "reason" => "digest")
                    .increment(1);
                tracing::warn!(%from, error = %e, "snapshot refused; the old state stays");
                return Ok(());
            }
        }
        let recovered = self.recovering.take().inspect(|r| {
            tracing::warn!(index = inc.desc.index, reason = %r.reason, "replica taken again from the leader's snapshot");
        }).is_some();
        let secs = inc.started.elapsed().as_secs_f64();
        metrics::counter!("bulwark_snapshot_installed_total", "facility" => self.me.to_string())
            .increment(1);
        tracing::info!(%from, index = inc.desc.index, rows = inc.desc.rows, bytes = inc.desc.bytes,
            secs, "snapshot installed");
        match self.node.step(inc.msg) {
            Ok(()) | Err(raft::Error::StepPeerNotFound) | Err(raft::Error::StepLocalMsg) => {}
            Err(e) => tracing::debug!(%from, error = %e, "step refused"),
        }
        // Entries raft-rs handed out while the replica waited (it forgets
        // the request for a snapshot when this facility campaigns, and then
        // takes appends; `apply` skipped them): those past the snapshot are
        // applied now, from the log (not compacted while recovering), or
        // the replica would lack them for good.
        let (next, handed) = (self.machine.applied() + 1, self.node.raft.raft_log.applied);
        if recovered && handed >= next {
            let entries = raft::Storage::entries(
                self.node.store(),
                next,
                handed + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )?;
            tracing::warn!(
                from = next,
                through = handed,
                "applying the entries handed out while the replica waited for its snapshot"
            );
            self.apply(entries)?;
        }
        Ok(())
    }

    /// Snapshot chunks taken and refused at their cursor so far.
    pub fn snapshot_chunks(&self) -> (u64, u64) {
        self.chunks
    }

    /// The ask for chunks just made was held (its source's breaker is
    /// open): it does not count as a try, so the transfer is not given up
    /// while the breaker holds it.
    pub fn hold_snapshot_ask(&mut self) {
        if let Some(inc) = self.incoming.as_mut() {
            inc.tries = inc.tries.saturating_sub(1);
            metrics::counter!("bulwark_snapshot_asks_held_total", "facility" => self.me.to_string())
                .increment(1);
        }
    }

    /// Asks the leader again for the chunk at the incoming cursor, or gives
    /// the transfer up after [`FETCH_TRIES_MAX`] tries.
    fn ask_again(&mut self) {
        let Some(inc) = self.incoming.as_mut() else {
            return;
        };
        if inc.tries >= FETCH_TRIES_MAX {
            tracing::warn!(from = %inc.from, index = inc.desc.index, "snapshot transfer given up");
            self.incoming = None;
            return;
        }
        inc.tries += 1;
        inc.asked_tick = self.ticks;
        inc.window_left = FETCH_WINDOW;
        let (to, id, cursor) = (inc.from.clone(), inc.desc.id, inc.cursor.clone());
        self.out.push(Output::Send {
            to,
            msg: RaftWire::SnapshotFetch { id, cursor },
        });
    }

    /// Each tick: the leader's digest pass over the snapshot it holds, its
    /// expiry, a new one when raft-rs wants one; the follower's re-ask for a
    /// chunk that did not come.
    fn drive_snapshots(&mut self) {
        let resend = self.config.election_ticks as u64;
        if self
            .incoming
            .as_ref()
            .is_some_and(|i| self.ticks >= i.asked_tick + resend)
        {
            self.ask_again();
        }
        if let Err(e) = self.drive_outgoing() {
            tracing::error!(error = %e, "outgoing snapshot dropped");
            self.outgoing = None;
            self.node.mut_store().offer_snapshot(None);
        }
    }

    fn drive_outgoing(&mut self) -> Result<(), RaftCoreError> {
        let hold = 20 * self.config.election_ticks as u64;
        let wanted = self.node.store().snapshot_wanted();
        let stale = self.outgoing.as_ref().is_some_and(|o| {
            self.ticks > o.used_tick + hold || wanted.is_some_and(|w| w > o.index)
        });
        if stale || (self.outgoing.is_some() && !self.is_leader()) {
            self.outgoing = None;
            self.node.mut_store().offer_snapshot(None);
        }
        if self.outgoing.is_none() && wanted.is_some() && self.is_leader() {
            let tx = self.machine.snapshot_source()?;
            let index = self.machine.applied();
            let term = raft::Storage::term(self.node.store(), index)?;
            self.next_snap_id += 1;
            self.outgoing = Some(Outgoing {
                id: self.next_snap_id,
                tx,
                index,
                term,
                conf: self.node.store().conf_state().clone(),
                hasher: snap::RowHasher::default(),
                digesting: Some(snap::Cursor::default()),
                used_tick: self.ticks,
                served: Vec::new(),
            });
        }
        let Some(o) = self.outgoing.as_mut() else {
            return Ok(());
        };
        let mut done = None;
        for _ in 0..DIGEST_CHUNKS_PER_TICK {
            let Some(cursor) = o.digesting.take() else {
                break;
            };
            let chunk = self.machine.read_chunk(&o.tx, &cursor, snap::CHUNK_BYTES)?;
            for r in &chunk.rows {
                o.hasher.add(r.table, &r.key, &r.value);
            }
            o.digesting = chunk.next;
            if o.digesting.is_none() {
                done = Some(snap::Descriptor {
                    id: o.id,
                    index: o.index,
                    rows: o.hasher.rows(),
                    bytes: o.hasher.bytes(),
                    digest: o.hasher.digest(),
                });
            }
        }
        if let Some(desc) = done {
            let store = self.machine.store();
            let data =
                codec::encode(&desc).map_err(|e| store.codec_error("snapshot", desc.index, e))?;
            let mut snapshot = raft::eraftpb::Snapshot {
                data: data.into(),
                ..Default::default()
            };
            let meta = snapshot.mut_metadata();
            meta.index = o.index;
            meta.term = o.term;
            meta.set_conf_state(o.conf.clone());
            tracing::info!(
                index = desc.index,
                rows = desc.rows,
                bytes = desc.bytes,
                "snapshot ready to send"
            );
            self.node.mut_store().offer_snapshot(Some(snapshot));
        }
        Ok(())
    }

    /// A leader's heartbeat carries the commit index up to what it believes
    /// this follower holds; a follower whose store was lost holds less, and
    /// raft-rs would panic committing past its log. Such a heartbeat
    /// commits nothing here: the leader's view of this log is wrong, so
    /// whatever this log holds past its commit index may not be the
    /// leader's (a deposed leader may have written it).
    fn guard_heartbeat_commit(&self, m: &mut raft::eraftpb::Message) {
        if m.msg_type == MessageType::MsgHeartbeat {
            let log = &self.node.raft.raft_log;
            if m.commit > log.last_index() {
                metrics::counter!("bulwark_raft_heartbeat_commit_clamped_total").increment(1);
                m.commit = log.committed;
            }
        }
    }

    /// raft-rs 0.7.0 lacks tikv/raft-rs#557: in probe state a stale or
    /// reordered rejection whose hint is below the follower's match index
    /// can move `next` to or below `match`. Clamp the hint, as the fix does.
    fn guard_reject_hint(&self, m: &mut raft::eraftpb::Message) {
        if m.msg_type == MessageType::MsgAppendResponse && m.reject && self.is_leader() {
            if let Some(pr) = self.node.raft.prs().get(m.from) {
                if m.reject_hint < pr.matched {
                    m.reject_hint = pr.matched;
                }
            }
        }
    }

    /// Proposes `command`, issued and signed by this facility and stamped
    /// with `now_unix_ms` (the proposer's clock). The outcome comes later as
    /// [`Output::Proposed`] with the returned sequence number, or at once as
    /// `Err`.
    ///
    /// `deadline_unix_ms` is the request's own deadline: the proposal
    /// times out by then at the latest, and a forward to the leader carries
    /// the earlier of it and this hop's own timeout
    /// ([`crate::flow::timeout::child_deadline`]); one already past is
    /// refused as timed out before anything is proposed.
    pub fn propose(
        &mut self,
        command: M::Command,
        now_unix_ms: u64,
        deadline_unix_ms: Option<u64>,
    ) -> Result<u64, ProposeOutcome<M::Outcome>> {
        self.propose_stamped(command, now_unix_ms, now_unix_ms, deadline_unix_ms)
    }

    /// [`RaftCore::propose`], the command stamped with the wall clock's
    /// `stamp_unix_ms` while deadlines run from `now_unix_ms` (they differ
    /// when the wall clock was stepped back: [`crate::hlc::TimeFloor`]).
    pub fn propose_stamped(
        &mut self,
        command: M::Command,
        stamp_unix_ms: u64,
        now_unix_ms: u64,
        deadline_unix_ms: Option<u64>,
    ) -> Result<u64, ProposeOutcome<M::Outcome>> {
        let hop_ms = self
            .config
            .proposal_timeout_ticks
            .saturating_mul(self.config.tick_ms);
        let Some(deadline) = child_deadline(deadline_unix_ms, now_unix_ms, hop_ms) else {
            metrics::counter!("bulwark_deadline_expired_total", "stage" => "propose").increment(1);
            return Err(ProposeOutcome::TimedOut);
        };
        if let Some(why) = self.recovering() {
            // Its chain head is empty: a proposal anchored there would be
            // refused by every replica, under the client's key.
            return Err(ProposeOutcome::Rejected { reason: why });
        }
        if self.proposals.len() >= self.config.pending_proposals_max {
            return Err(ProposeOutcome::Rejected {
                reason: "too many proposals in flight".into(),
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = M::key(&command);
        let bytes = self
            .machine
            .propose(&self.me, seq, command, stamp_unix_ms)
            .map_err(|reason| ProposeOutcome::Rejected { reason })?;
        if bytes.len() as u64 > self.config.entry_len_max {
            return Err(ProposeOutcome::Rejected {
                reason: format!(
                    "command of {} bytes exceeds {}",
                    bytes.len(),
                    self.config.entry_len_max
                ),
            });
        }
        let via;
        if self.is_leader() {
            self.node
                .propose(Vec::new(), bytes)
                .map_err(|e| ProposeOutcome::Rejected {
                    reason: format!("leader dropped the proposal: {e}"),
                })?;
            via = None;
        } else {
            let Some(leader) = self.leader() else {
                return Err(ProposeOutcome::NotLeader { hint: None });
            };
            via = Some(self.node.raft.leader_id);
            metrics::counter!("bulwark_raft_forwards_sent_total").increment(1);
            self.out.push(Output::SendBy {
                to: leader,
                msg: RaftWire::Forward { payload: bytes },
                deadline_unix_ms: deadline,
            });
        }
        // The ticks left before the deadline, rounded up.
        let left = deadline
            .saturating_sub(now_unix_ms)
            .div_ceil(self.config.tick_ms.max(1));
        let deadline_tick = self.deadline().min(self.ticks + left);
        self.proposals.insert(
            seq,
            Pending {
                deadline_tick,
                key: Some(key),
                issued_tick: self.ticks,
                via,
            },
        );
        Ok(seq)
    }

    fn propose_forwarded(
        &mut self,
        from: &FacilityId,
        payload: Vec<u8>,
        now_unix_ms: u64,
    ) -> Result<(), (u64, Refusal)> {
        let limit = self.config.entry_len_max as usize;
        let fwd = match self.machine.check_forwarded(from, &payload, limit) {
            Ok(f) => f,
            Err(e) => {
                let reason = match e {
                    ForwardRefused::Malformed(_) => "malformed",
                    ForwardRefused::Forged => "forged",
                };
                metrics::counter!("bulwark_raft_forward_refused_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(%from, error = %e, "forwarded proposal dropped");
                return Ok(());
            }
        };
        // Only a timestamp from the future is refused: one behind is a
        // proposer whose clock is behind (or was stepped back), which the
        // ledger's own rule (never before the proposer's previous) judges.
        let skew = self.config.clock_skew_max_ms;
        if fwd.at_unix_ms > now_unix_ms.saturating_add(skew) {
            return Err((
                fwd.seq,
                Refusal::Rejected {
                    reason: format!(
                        "TIME_TRAVEL: timestamp {} is more than {skew} ms ahead of the leader's clock {now_unix_ms}",
                        fwd.at_unix_ms
                    ),
                },
            ));
        }
        if !self.is_leader() {
            return Err((
                fwd.seq,
                Refusal::NotLeader {
                    hint: self.leader(),
                },
            ));
        }
        self.node.propose(Vec::new(), payload).map_err(|e| {
            (
                fwd.seq,
                Refusal::Rejected {
                    reason: format!("leader dropped the proposal: {e}"),
                },
            )
        })
    }

    /// Starts a linearizable read (read-index). [`Output::ReadReady`] with
    /// the returned sequence number says when the local state may serve it.
    pub fn read(&mut self) -> Result<u64, ReadOutcome> {
        if self.node.raft.leader_id == raft::INVALID_ID || self.recovering.is_some() {
            return Err(ReadOutcome::NotLeader { hint: None });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if crate::plant::active(Bug::ReadWithoutIndex) {
            self.out.push(Output::ReadReady {
                seq,
                outcome: ReadOutcome::Ready {
                    read_index: self.applied_index(),
                },
            });
            return Ok(seq);
        }
        self.node.read_index(self.read_ctx(seq));
        let deadline_tick = self.deadline();
        self.reads.insert(
            seq,
            (
                Pending {
                    deadline_tick,
                    key: None,
                    issued_tick: self.ticks,
                    via: None,
                },
                None,
            ),
        );
        Ok(seq)
    }

    /// Sets this facility's election priority: a voter whose log is no
    /// longer refuses its vote to a candidate of lower priority, so a
    /// facility that lowers its own is not preferred as leader.
    pub fn set_priority(&mut self, priority: i64) {
        self.node.raft.set_priority(priority);
    }

    /// This facility's election priority.
    pub fn priority(&self) -> i64 {
        self.node.raft.priority
    }

    /// Ticks since this core opened.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// The other voters, most caught-up first (by the index this leader
    /// knows each has matched; ties by id). Empty unless this facility
    /// leads. Voters whose probes say they withhold their votes (the vote
    /// fence) are left out: they would not take leadership.
    pub fn voters_by_progress(&self) -> Vec<FacilityId> {
        if !self.is_leader() {
            return Vec::new();
        }
        let raft = &self.node.raft;
        let voters = raft.prs().conf().voters().ids();
        let mut peers: Vec<(u64, &FacilityId)> = raft
            .prs()
            .iter()
            .filter(|(id, _)| **id != raft.id && voters.contains(**id))
            .filter(|(id, _)| !self.fenced_peers.contains(id))
            .filter_map(|(id, pr)| self.members.get(id).map(|f| (pr.matched, f)))
            .collect();
        // Voters that may propose first: one that may not would hand
        // leadership straight back (`drive_proposer`).
        peers.sort_by(|a, b| {
            let (pa, pb) = (self.machine.proposes(a.1), self.machine.proposes(b.1));
            pb.cmp(&pa).then(b.0.cmp(&a.0)).then(a.1.cmp(b.1))
        });
        peers.into_iter().map(|(_, f)| f.clone()).collect()
    }

    /// Asks raft-rs to hand leadership to `to`; the next
    /// [`RaftCore::on_ready`] sends the request.
    pub fn transfer_leader(&mut self, to: &FacilityId) {
        if self.is_leader() {
            self.node.transfer_leader(self.voter_id_of(to));
        } else if let Some(leader) = self.leader() {
            // A follower passes it on (raft-rs's own forward would name
            // the target as sender).
            self.out.push(Output::Send {
                to: leader,
                msg: RaftWire::TransferLeader { to: to.clone() },
            });
        }
    }

    /// The raft id `f` runs under as this facility's configuration knows
    /// it: its newest incarnation there, else its first.
    fn id_of(&self, f: &FacilityId) -> u64 {
        newest_id(
            &self.members,
            &self.incarnations,
            self.node.store().conf_state(),
            f,
        )
        .unwrap_or_else(|| raft_id(f))
    }

    /// A message for another identity of this facility. A fenced store
    /// (a new one, or one that lost its votes: its facility was replaced
    /// before, under an identity this store never ran) takes on the newer
    /// one the leader writes to, but vote-fenced for good: a store that is
    /// gone ran it and may have voted. `bulwark member replace` then gives
    /// it an identity of its own. A store that votes drops such messages
    /// (a replacement made for it comes through its log).
    fn adopt_from_message(&mut self, from: &FacilityId, to: u64) -> Result<(), RaftCoreError> {
        let newer = self.incarnations.get(&to) > self.incarnations.get(&self.my_id);
        if self.fence.is_none() || !newer || self.reincarnated {
            tracing::debug!(%from, to, "a message for another identity of this facility dropped");
            return Ok(());
        }
        let k = self.incarnations.get(&to).copied().unwrap_or(0);
        let reason = format!(
            "{from} writes to {}'s Raft identity {to} (incarnation {k}), which this store does \
             not run yet: it takes it vote-fenced. If the replacement was made for this store, \
             applying it lifts the fence; if not (another store of this facility ran it and may \
             have voted), replace it: bulwark member replace --facility {}",
            self.me, self.me
        );
        tracing::warn!("{reason}");
        // The fence first: a crash between the two leaves it fenced under
        // its old identity.
        self.set_fence(Some(Fence::Refused(reason)))?;
        self.node.store().set_identity(to, false)?;
        self.reincarnated = true;
        Ok(())
    }

    /// The voter identity of `f` a leadership transfer goes to: its newest
    /// one among the voters, else [`RaftCore::id_of`].
    fn voter_id_of(&self, f: &FacilityId) -> u64 {
        let cs = self.node.store().conf_state();
        let voters = raft::eraftpb::ConfState {
            voters: cs.voters.clone(),
            ..Default::default()
        };
        newest_id(&self.members, &self.incarnations, &voters, f).unwrap_or_else(|| self.id_of(f))
    }

    /// True once an applied configuration names a newer incarnation of
    /// this facility: the actor rebuilds the core, which then runs under
    /// it.
    pub fn wants_rebuild(&self) -> bool {
        self.reincarnated
    }

    /// This facility's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnations.get(&self.my_id).copied().unwrap_or(0)
    }

    /// Every identity in the configuration in force (both sides of a joint
    /// one), with its progress where this facility leads.
    pub fn members_view(&self) -> Vec<MemberView> {
        let cs = self.node.store().conf_state();
        let mut out = Vec::new();
        let push = |ids: &[u64], role: &str, out: &mut Vec<MemberView>| {
            for id in ids {
                if out.iter().any(|m: &MemberView| m.raft_id == *id) {
                    continue;
                }
                let Some(f) = self.members.get(id) else {
                    continue;
                };
                out.push(MemberView {
                    facility: f.clone(),
                    incarnation: self.incarnations.get(id).copied().unwrap_or(0),
                    raft_id: *id,
                    role: role.to_string(),
                    matched: self
                        .is_leader()
                        .then(|| self.node.raft.prs().get(*id).map(|p| p.matched))
                        .flatten(),
                });
            }
        };
        push(&cs.voters, "voter", &mut out);
        push(&cs.learners, "learner", &mut out);
        push(&cs.learners_next, "learner", &mut out);
        push(&cs.voters_outgoing, "outgoing", &mut out);
        out.sort_by(|a, b| (&a.facility, a.incarnation).cmp(&(&b.facility, b.incarnation)));
        out
    }

    /// An operator's change of the members (leader only; one at a time):
    /// - [`MemberChange::Replace`]: `f`'s next incarnation joins as a
    ///   learner (refused for the leader itself, and while any learner
    ///   waits for its promotion: one replacement at a time);
    /// - [`MemberChange::Add`]: a configured facility in no configuration
    ///   yet joins as a learner;
    /// - [`MemberChange::Promote`]: `f`'s learner incarnation, once its log
    ///   matches the commit index, becomes a voter and `f`'s older voter
    ///   identities leave, in one change (joint consensus, left by the
    ///   leader on its own).
    ///
    /// Returns the raft id the change is about. The next
    /// [`RaftCore::on_ready`] writes it to the log.
    pub fn change_member(&mut self, f: &FacilityId, change: MemberChange) -> Result<u64, String> {
        if !self.is_leader() {
            return Err(format!("not the leader; the leader is {:?}", self.leader()));
        }
        if !self.members.contains_key(&raft_id(f)) {
            return Err(format!("{f} is not a configured member"));
        }
        if self.in_joint() || self.node.raft.has_pending_conf() {
            return Err("a configuration change is still in progress: try again".into());
        }
        let cs = self.node.store().conf_state().clone();
        let of_f = |ids: &[u64]| -> Vec<u64> {
            ids.iter()
                .copied()
                .filter(|id| self.members.get(id) == Some(f))
                .collect()
        };
        let (voters, learners) = (of_f(&cs.voters), of_f(&cs.learners));
        let single = |id: u64, kind: ConfChangeType| {
            let mut c = ConfChangeSingle::default();
            c.set_change_type(kind);
            c.node_id = id;
            c
        };
        let mut context = Vec::new();
        let (target, changes) = match change {
            MemberChange::Replace => {
                if *f == self.me {
                    return Err(format!(
                        "{f} leads: move leadership to another voter first (bulwark leader transfer)"
                    ));
                }
                if voters.is_empty() {
                    return Err(format!(
                        "{f} has no voter identity to replace (add it, or promote its learner)"
                    ));
                }
                // One replacement at a time, cluster-wide: each leaves an
                // old voter identity that no longer answers until its
                // promotion, and two could leave no majority to promote
                // either. (A learner whose facility holds no voter identity
                // is an added one, not a replacement.)
                let replacing = cs.learners.iter().find(|l| {
                    let lf = self.members.get(*l);
                    cs.voters.iter().any(|v| self.members.get(v) == lf)
                });
                // The same facility's waiting replacement is replaced in
                // turn (made for a store it no longer runs, or one that
                // caught up by a snapshot past it): it goes, the next comes.
                let again = replacing
                    .filter(|l| self.members.get(*l) == Some(f))
                    .copied();
                // Unless the store it was made for took it (it announces
                // itself under it): that one is catching up, and replacing
                // it would cut it off before it learned of its own removal
                // (seed 4560: asked twice, the second replacement removed
                // the first after the store had taken it, and the store,
                // no longer sent anything, never took the second).
                if let Some(l) = again.filter(|l| self.peers.announced.contains_key(l)) {
                    return Err(format!(
                        "{f}'s replacement (incarnation {}) runs and is catching up: promote it \
                         once caught up (bulwark member list)",
                        self.incarnations.get(&l).copied().unwrap_or(0)
                    ));
                }
                // Nor one made a moment ago: its store may have it in its
                // log and be about to learn it committed (asked twice in a
                // row, the second would cut the store off mid-way).
                let grace = 2 * self.config.election_ticks as u64;
                if again.is_some() && self.ticks < self.conf_applied_tick + grace {
                    return Err(format!(
                        "{f} was replaced a moment ago; its store is taking the new identity: \
                         try again shortly (bulwark member list)"
                    ));
                }
                if let Some(l) = replacing.filter(|_| again.is_none()) {
                    let who = self
                        .members
                        .get(l)
                        .map_or_else(|| l.to_string(), |m| m.to_string());
                    return Err(format!(
                        "a replacement of {who} (incarnation {}) waits for its promotion: \
                         promote it first",
                        self.incarnations.get(l).copied().unwrap_or(0)
                    ));
                }
                // Without the old identity answering, the others must still
                // make a majority of the voters, or the promotion could
                // never commit.
                let prs = self.node.raft.prs();
                let live = cs
                    .voters
                    .iter()
                    .filter(|v| self.members.get(*v) != Some(f))
                    .filter(|v| **v == self.my_id || prs.get(**v).is_some_and(|p| p.recent_active))
                    .count();
                if 2 * live <= cs.voters.len() {
                    return Err(format!(
                        "only {live} of the {} voters besides {f} are reachable: its replacement \
                         could never be promoted; bring them back first",
                        cs.voters.len()
                    ));
                }
                // Its store must hold the log through the commit index, so
                // that it applies the change from its log (the leader
                // compacts right after a configuration change: a store
                // behind would get a snapshot past it and never take it).
                let behind = voters
                    .iter()
                    .chain(again.iter())
                    .map(|id| prs.get(*id).map_or(0, |p| p.matched))
                    .max()
                    .unwrap_or(0);
                if behind < self.commit_index() {
                    return Err(format!(
                        "{f} has not caught up yet: its log matches through {behind}, the commit \
                         index is {}; wait (bulwark member list shows it)",
                        self.commit_index()
                    ));
                }
                // Made for the store the facility runs now: the one it last
                // announced (its probes), which alone takes the new identity.
                let store = self
                    .peers
                    .announced
                    .iter()
                    .filter(|(id, _)| self.members.get(*id) == Some(f))
                    .max_by_key(|(id, _)| self.incarnations.get(*id).copied().unwrap_or(0))
                    .map(|(_, s)| *s)
                    .ok_or_else(|| {
                        format!("{f} has not announced its store to this leader yet: try again")
                    })?;
                let next = voters
                    .iter()
                    .chain(again.iter())
                    .map(|id| self.incarnations[id])
                    .max()
                    .map_or(0, |k| k + 1);
                if next >= INCARNATIONS_MAX {
                    return Err(format!("{f} has used all {INCARNATIONS_MAX} incarnations"));
                }
                let id = raft_id_at(f, next);
                let mut changes = vec![single(id, ConfChangeType::AddLearnerNode)];
                if let Some(old) = again {
                    changes.push(single(old, ConfChangeType::RemoveNode));
                }
                context = store.to_le_bytes().to_vec();
                (id, changes)
            }
            MemberChange::Add => {
                let named = cs
                    .voters
                    .iter()
                    .chain(&cs.learners)
                    .chain(&cs.voters_outgoing)
                    .chain(&cs.learners_next)
                    .any(|id| self.members.get(id) == Some(f));
                if named {
                    return Err(format!(
                        "{f} is in the configuration already (replace it, or promote its learner)"
                    ));
                }
                // Never a member (removal is not built): its first identity.
                let id = raft_id_at(f, 0);
                (id, vec![single(id, ConfChangeType::AddLearnerNode)])
            }
            MemberChange::Remove => {
                if *f == self.me {
                    return Err(format!(
                        "{f} leads: move leadership to another voter first (bulwark leader transfer)"
                    ));
                }
                let ids: Vec<u64> = voters.iter().chain(&learners).copied().collect();
                let Some(&first) = ids.first() else {
                    return Err(format!("{f} is in no configuration"));
                };
                // The voters left must be a live majority of themselves.
                let prs = self.node.raft.prs();
                let left: Vec<u64> = cs
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| !voters.contains(v))
                    .collect();
                if left.is_empty() {
                    return Err(format!("{f} is the last voter"));
                }
                let live = left
                    .iter()
                    .filter(|v| **v == self.my_id || prs.get(**v).is_some_and(|p| p.recent_active))
                    .count();
                if 2 * live <= left.len() {
                    return Err(format!(
                        "only {live} of the {} voters left without {f} are reachable: they could \
                         not commit; bring them back first",
                        left.len()
                    ));
                }
                let changes = ids
                    .iter()
                    .map(|&id| single(id, ConfChangeType::RemoveNode))
                    .collect();
                (first, changes)
            }
            MemberChange::Promote => {
                let Some(&id) = learners.iter().max_by_key(|id| self.incarnations[*id]) else {
                    return Err(format!("{f} has no learner incarnation to promote"));
                };
                let matched = self.node.raft.prs().get(id).map_or(0, |p| p.matched);
                let commit = self.commit_index();
                if matched < commit {
                    return Err(format!(
                        "{f}'s incarnation {} has not caught up: its log matches through \
                         {matched}, the commit index is {commit}",
                        self.incarnations[&id]
                    ));
                }
                // Its store must have taken it (and so lifted its fence):
                // it has probed under it, unfenced. A store that caught up
                // past the change by snapshot, or another store, runs it
                // fenced: a voter that never votes.
                if !self.peers.announced.contains_key(&id) || self.fenced_peers.contains(&id) {
                    return Err(format!(
                        "{f}'s incarnation {} has not been taken by its store yet, or runs \
                         vote-fenced (it caught up past the change by snapshot, or its store \
                         changed): wait, or replace it again",
                        self.incarnations[&id]
                    ));
                }
                let mut changes = vec![single(id, ConfChangeType::AddNode)];
                changes.extend(
                    voters
                        .iter()
                        .map(|&old| single(old, ConfChangeType::RemoveNode)),
                );
                (id, changes)
            }
        };
        let mut cc = ConfChangeV2::default();
        cc.set_changes(changes.into());
        cc.set_transition(ConfChangeTransition::Auto);
        cc.context = context.into();
        self.node
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| format!("refused: {e}"))?;
        tracing::info!(%f, ?change, raft_id = target, "membership change proposed");
        Ok(target)
    }

    /// Proposes adding and removing voters in one configuration change.
    /// More than one change goes through joint consensus (C_old,new, then
    /// C_new, which the leader proposes by itself once the joint
    /// configuration applies). Only the leader takes it, one at a time.
    /// The next [`RaftCore::on_ready`] writes it to the log.
    pub fn change_voters(
        &mut self,
        add: &[FacilityId],
        remove: &[FacilityId],
    ) -> Result<(), String> {
        if !self.is_leader() {
            return Err(format!("not the leader; the leader is {:?}", self.leader()));
        }
        let mut changes = Vec::new();
        for (list, kind) in [
            (add, ConfChangeType::AddNode),
            (remove, ConfChangeType::RemoveNode),
        ] {
            for f in list {
                let id = self.id_of(f);
                if !self.members.contains_key(&id) {
                    return Err(format!(
                        "{f} is not a known member (add it to the peers first)"
                    ));
                }
                let mut c = ConfChangeSingle::default();
                c.set_change_type(kind);
                c.node_id = id;
                changes.push(c);
            }
        }
        if changes.is_empty() {
            return Err("no change".into());
        }
        let mut cc = ConfChangeV2::default();
        cc.set_changes(changes.into());
        cc.set_transition(ConfChangeTransition::Auto);
        self.node
            .propose_conf_change(Vec::new(), cc)
            .map_err(|e| format!("refused: {e}"))
    }

    /// True while a joint configuration is in force.
    pub fn in_joint(&self) -> bool {
        !self.node.store().conf_state().voters_outgoing.is_empty()
    }

    /// True when the next [`RaftCore::on_ready`] makes a durable commit (an
    /// fsync): new log entries, a snapshot to install, or a new term or
    /// vote.
    pub fn ready_syncs(&self) -> bool {
        let raft = &self.node.raft;
        let (hs, stored) = (raft.hard_state(), self.node.store().hard_state());
        !raft.raft_log.unstable_entries().is_empty()
            || raft.raft_log.unstable.snapshot.is_some()
            || hs.term != stored.term
            || hs.vote != stored.vote
    }

    /// True when the next [`RaftCore::on_ready`] writes to the store: what
    /// [`RaftCore::ready_syncs`] covers, or a new commit index alone (a
    /// deferred commit). The actor awaits an injected disk latency only
    /// then.
    pub fn ready_writes(&self) -> bool {
        let raft = &self.node.raft;
        !raft.raft_log.unstable_entries().is_empty()
            || raft.raft_log.unstable.snapshot.is_some()
            || raft.hard_state() != *self.node.store().hard_state()
    }

    /// Handles every pending Ready.
    ///
    /// On `Err` (a write failed) nothing of the Ready in hand that needed
    /// the write was sent (a leader's appends, which need none, may have
    /// been: the others may still commit those entries, so a proposal
    /// waiting on them answers TimedOut, never a refusal), nothing was
    /// applied, and raft-rs was not advanced past it: this core must not be
    /// used again, only rebuilt from the store. What it output before the
    /// failure came from durable state and may still be carried out.
    pub fn on_ready(&mut self) -> Result<(), RaftCoreError> {
        self.on_ready_sending(None)
    }

    /// [`RaftCore::on_ready`], handing the messages a leader may send
    /// before it persists to `send_now` as soon as they exist, so its
    /// appends travel while its own fsync runs (Raft thesis 10.2.1; raft-rs
    /// gives a non-leader none). Without `send_now` they are queued with
    /// the other outputs. The leader's own acknowledgement still counts only
    /// once its entries are durable: raft-rs learns of that when the Ready
    /// is advanced, after the persist.
    pub fn on_ready_sending(
        &mut self,
        mut send_now: Option<&mut dyn FnMut(Output<M>)>,
    ) -> Result<(), RaftCoreError> {
        // Bounded: each round consumes a Ready; raft-rs produces a new one
        // only for new input, so a handful of rounds drains it.
        for _ in 0..self.config.ready_rounds_max {
            if !self.node.has_ready() {
                return Ok(());
            }
            self.note_leader();
            let mut rd = self.node.ready();
            if crate::plant::active(Bug::SendBeforePersist) {
                let msgs = rd.take_messages();
                self.send_all(msgs);
                let msgs = rd.take_persisted_messages();
                self.send_all(msgs);
            }
            // 1. A leader's appends leave before its own persist.
            let msgs = rd.take_messages();
            let queued = self.out.len();
            self.send_all(msgs);
            if let Some(f) = send_now.as_mut() {
                for o in self.out.drain(queued..) {
                    f(o);
                }
            }
            // 2. Persist: snapshot, entries, hard state (durable redb commits).
            if !rd.snapshot().is_empty() {
                let snapshot = rd.snapshot().clone();
                let index = snapshot.get_metadata().index;
                if self.machine.applied() < index {
                    // Only a snapshot whose rows are installed is stepped.
                    return Err(RaftCoreError::Snapshot(format!(
                        "raft-rs took a snapshot at {index}; the machine holds {}",
                        self.machine.applied()
                    )));
                }
                self.node.mut_store().apply_snapshot(&snapshot)?;
            }
            if !rd.entries().is_empty() || rd.hs().is_some() {
                let hs = rd.hs().cloned();
                self.node.mut_store().persist(rd.entries(), hs.as_ref())?;
            }
            // 3. Send what needed the persist (every message of a
            // non-leader: acknowledgements, votes).
            let msgs = rd.take_persisted_messages();
            self.send_all(msgs);
            // 4. Apply.
            let committed = rd.take_committed_entries();
            self.apply(committed)?;
            for rs in rd.take_read_states() {
                self.on_read_state(&rs.request_ctx, rs.index);
            }
            // 5. Advance.
            let mut light = self.node.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.node.mut_store().set_commit(commit)?;
            }
            let msgs = light.take_messages();
            self.send_all(msgs);
            let committed = light.take_committed_entries();
            self.apply(committed)?;
            self.node.advance_apply();
            self.serve_reads();
            self.maybe_compact()?;
        }
        Ok(())
    }

    fn note_leader(&mut self) {
        let (term, leader) = (self.node.raft.term, self.node.raft.leader_id);
        if leader != raft::INVALID_ID {
            // Proposals forwarded to a leader that no longer leads answer
            // TimedOut now rather than at their deadline: they may still
            // commit (the old leader may have appended them), so the
            // client retries with the same key, which applies once.
            let out = &mut self.out;
            self.proposals.retain(|&seq, p| {
                let stale = p.via.is_some_and(|v| v != leader);
                if stale {
                    out.push(Output::Proposed {
                        seq,
                        outcome: ProposeOutcome::TimedOut,
                    });
                }
                !stale
            });
        }
        if leader != raft::INVALID_ID && self.term_leaders.get(&term) != Some(&leader) {
            let before = self.term_leaders.last_key_value().map(|(_, l)| *l);
            let name = |id: u64| {
                self.members
                    .get(&id)
                    .map_or_else(|| id.to_string(), |f| f.to_string())
            };
            if leader == self.my_id {
                tracing::info!(term, "elected leader");
            } else if before == Some(self.my_id) {
                tracing::info!(term, leader = %name(leader), "lost leadership");
            } else {
                tracing::info!(term, leader = %name(leader), "new leader");
            }
            self.term_leaders.insert(term, leader);
            while self.term_leaders.len() > TERM_LEADERS_KEPT {
                self.term_leaders.pop_first();
            }
        }
    }

    fn send_all(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        for m in msgs {
            let Some(to) = self.members.get(&m.to).cloned() else {
                continue;
            };
            let snapshot = m.msg_type == MessageType::MsgSnapshot;
            if self.fence.is_some()
                && matches!(
                    m.msg_type,
                    MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                )
            {
                continue; // fenced: asks nobody for a vote
            }
            match WireMessage::from_raft(&m) {
                Ok(w) => self.out.push(Output::Send {
                    to,
                    msg: RaftWire::Raft(Box::new(w)),
                }),
                Err(e) => tracing::error!(error = %e, "raft message does not mirror; not sent"),
            }
            if snapshot {
                // raft-rs keeps the follower's progress in its snapshot state
                // (sending it nothing) until the application reports the
                // snapshot. The transport gives no delivery receipt, so the
                // snapshot is reported as sent: the follower goes back to
                // probing, and if the snapshot was lost, the next probe finds
                // the log compacted and sends it again. Without this, one
                // lost snapshot message left a follower behind for good
                // (found by the randomized BFT run, seeds 932 and 985).
                self.node
                    .report_snapshot(m.to, raft::SnapshotStatus::Finish);
            }
        }
    }

    fn apply(&mut self, entries: Vec<raft::eraftpb::Entry>) -> Result<(), RaftCoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        for e in &entries {
            // Guard for tikv/raft-rs#543/#561: nothing beyond the commit index
            // (and, in 0.7.0, beyond what is persisted) is ever applied.
            assert!(
                e.index <= self.commit_index(),
                "applying {} beyond commit {}",
                e.index,
                self.commit_index()
            );
        }
        // raft-rs takes every configuration change it hands out as applied
        // (unless it took a snapshot's configuration instead): each one
        // after those the stored configuration holds goes to it, even in
        // an entry the replica holds already (seed 754: an installed
        // snapshot carried the replica past a change raft-rs's log also
        // held, raft-rs kept its own configuration, and the leader it
        // became never knew the new learner).
        let conf_through = self.node.store().conf_index().unwrap_or(self.skip_through);
        let batch = Batch {
            entries: &entries,
            held_through: self.skip_through,
            conf_through,
            compacted: self.node.store().latest_snapshot().get_metadata().index,
            show: self.emit_applied,
        };
        // While the replica waits for a snapshot, only changes past a known
        // point (a store from before it was kept skips them, as before).
        let recovering = self
            .recovering
            .is_some()
            .then(|| self.node.store().conf_index());
        let store = self.node.store().store().clone();
        let (node, snapshot_due) = (&mut self.node, &mut self.snapshot_due);
        let (members, incarnations, me) = (&self.members, &self.incarnations, &self.me);
        let (my_id, store_id) = (self.my_id, self.store_id);
        let mut conf = None;
        let mut adopted = None;
        let mut on_conf = |tx: &redb::WriteTransaction,
                           e: &raft::eraftpb::Entry|
         -> Result<(), RaftCoreError> {
            let cc: ConfChangeV2 = protobuf::Message::parse_from_bytes(&e.data).map_err(|err| {
                RaftCoreError::Snapshot(format!("conf change at {}: {err}", e.index))
            })?;
            let cs = node.apply_conf_change(&cc)?;
            node.store().stage_conf_state(tx, &cs, e.index)?;
            // A replacement made for this very store (its context names the
            // store id the leader heard from it): its new identity never
            // voted, so the old one's fence goes with it, in this commit.
            // (At this store's own identity too: it may have taken it,
            // fenced, from the leader's messages before applying this.)
            let mine = cc.get_changes().iter().find(|c| {
                c.get_change_type() == ConfChangeType::AddLearnerNode
                    && members.get(&c.node_id) == Some(me)
                    && incarnations.get(&c.node_id) >= incarnations.get(&my_id)
            });
            if let Some(c) = mine {
                if cc.context.as_ref() == store_id.to_le_bytes().as_slice() {
                    node.store().stage_identity(tx, c.node_id, true)?;
                    adopted = Some(c.node_id);
                } else {
                    tracing::warn!(
                        index = e.index,
                        "a replacement of this facility made for another store: not taken"
                    );
                }
            }
            conf = Some((cs, e.index));
            *snapshot_due = true;
            Ok(())
        };
        if let Some(known) = recovering {
            // The replica takes these entries' rows from the snapshot it
            // waits for, or from the log once it is in (`on_chunk`). Their
            // configuration changes go to raft-rs now, one commit each.
            for e in entries.iter().filter(|e| {
                e.entry_type == raft::eraftpb::EntryType::EntryConfChangeV2
                    && known.is_some_and(|k| e.index > k)
            }) {
                let tx = store.begin_write()?;
                on_conf(&tx, e)?;
                tx.commit().map_err(|err| store.redb(err))?;
            }
            self.took_conf(conf, adopted);
            return Ok(());
        }
        let decided = self.machine.apply(batch, &mut on_conf)?;
        metrics::counter!("bulwark_raft_applied_batches_total", "facility" => self.me.to_string())
            .increment(1);
        assert_eq!(
            decided.len(),
            entries.len(),
            "the state machine decides every entry of a batch, in order"
        );
        self.took_conf(conf, adopted);
        for (e, d) in entries.iter().zip(decided) {
            self.answer(e.index, &d);
            let Some(shown) = d.shown else {
                continue;
            };
            let mut h = blake3::Hasher::new();
            h.update(&[e.entry_type as u8]);
            h.update(&e.data);
            let leader = self
                .term_leaders
                .get(&e.term)
                .and_then(|id| self.members.get(id))
                .cloned();
            self.out.push(Output::Applied(Box::new(ShownEntry {
                index: e.index,
                term: e.term,
                hash: *h.finalize().as_bytes(),
                shown,
                leader,
            })));
        }
        Ok(())
    }

    /// After a commit that applied configuration changes: the configuration
    /// as it now stands (and the index of its last change), and the new
    /// identity if one was made for this store.
    fn took_conf(&mut self, conf: Option<(raft::eraftpb::ConfState, u64)>, adopted: Option<u64>) {
        if let Some((cs, index)) = conf {
            self.node.mut_store().note_conf_state(&cs, index);
            self.conf_applied_tick = self.ticks;
        }
        if let Some(id) = adopted {
            tracing::warn!(
                incarnation = self.incarnations[&id],
                "replaced: rebuilding under the new Raft identity (its vote fence lifted)"
            );
            self.reincarnated = true;
        }
    }

    /// Answers our own proposal that `d` decided. Ours if the origin, the
    /// sequence number and the key all match: an entry re-applied after a
    /// restart never answers a new proposal.
    fn answer(&mut self, index: u64, d: &Decided<M>) {
        let (Some(origin), Some(answer)) = (&d.origin, &d.answer) else {
            return;
        };
        let ours = origin.proposer == self.me
            && self
                .proposals
                .get(&origin.seq)
                .is_some_and(|p| p.key == Some(origin.key));
        if !ours {
            return;
        }
        self.proposals.remove(&origin.seq);
        let outcome = match answer.clone() {
            Answer::Applied {
                outcome,
                duplicate,
                first_index,
                height,
            } => ProposeOutcome::Committed {
                index: first_index.unwrap_or(index),
                outcome,
                duplicate,
                height,
            },
            // Refused before the state saw it (a forged signature cannot be
            // ours, but a refusal is answered all the same).
            Answer::Refused { reason } => ProposeOutcome::Rejected { reason },
        };
        self.out.push(Output::Proposed {
            seq: origin.seq,
            outcome,
        });
    }

    /// A read's context: this facility's raft id and the read's sequence
    /// number, so reads from different facilities never share a context at
    /// the leader (raft-rs keys pending reads by context alone).
    fn read_ctx(&self, seq: u64) -> Vec<u8> {
        let mut ctx = self.my_id.to_be_bytes().to_vec();
        ctx.extend_from_slice(&seq.to_be_bytes());
        ctx
    }

    fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Ok(bytes) = <[u8; 16]>::try_from(ctx) else {
            return;
        };
        let (id, seq) = bytes.split_at(8);
        if id != self.my_id.to_be_bytes() {
            return;
        }
        let seq = u64::from_be_bytes(seq.try_into().expect("8 bytes"));
        if let Some((_, at)) = self.reads.get_mut(&seq) {
            *at = Some(index);
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.applied_index();
        let ready: Vec<(u64, u64)> = self
            .reads
            .iter()
            .filter_map(|(seq, (_, at))| at.filter(|i| *i <= applied).map(|i| (*seq, i)))
            .collect();
        for (seq, index) in ready {
            self.reads.remove(&seq);
            self.out.push(Output::ReadReady {
                seq,
                outcome: ReadOutcome::Ready { read_index: index },
            });
        }
    }

    fn maybe_compact(&mut self) -> Result<(), RaftCoreError> {
        if self.recovering.is_some() {
            return Ok(());
        }
        let applied = self.applied_index();
        let snap_index = self.node.store().latest_snapshot().get_metadata().index;
        let due = (self.snapshot_due
            || self.node.store().log_bytes() >= self.config.snapshot_every_bytes)
            && applied > snap_index;
        if !due && applied < snap_index + self.config.snapshot_every_entries {
            return Ok(());
        }
        // A snapshot being made or streamed to a follower keeps the log
        // after its index until the transfer ends, so the follower goes on
        // from the log once the snapshot is in. Compacting past it made
        // raft-rs want a newer snapshot and the follower start over: under
        // steady writes, a snapshot that took longer to stream than the log
        // took to pass `snapshot_every_entries` never arrived (seen growing
        // a schedule past 100,000 writes). Held up to a bound of log bytes
        // (past it the transfer starts over), never for a membership change.
        let held = TRANSFER_HOLD_LOG_FACTOR.saturating_mul(self.config.snapshot_every_bytes);
        if self.outgoing.is_some() && !self.snapshot_due && self.node.store().log_bytes() < held {
            metrics::counter!("bulwark_raft_compaction_held_total", "facility" => self.me.to_string())
                .increment(1);
            return Ok(());
        }
        self.snapshot_due = false;
        // The replica holds the state: compaction writes only the point
        // (and makes every apply batch before it durable). Nothing is ever
        // skipped for size.
        let cs = self.node.store().conf_state().clone();
        self.node.mut_store().compact_to(applied, &cs)?;
        Ok(())
    }

    /// This facility.
    pub fn facility(&self) -> &FacilityId {
        &self.me
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;
    use crate::replica::ScheduleMachine;
    use crate::schedule::{Command, IdempotencyKey};

    type Core = RaftCore<ScheduleMachine>;

    fn open(dir: &std::path::Path, start: ClusterState) -> (Result<Core, RaftCoreError>, bool) {
        let me: FacilityId = "alpha".parse().unwrap();
        let members: Vec<FacilityId> = ["alpha", "bravo", "charlie"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let opened = Store::open(&dir.join("f.redb"), "alpha").unwrap();
        let fresh = opened.fresh;
        let logger = super::super::tracing_logger(&me);
        let rings = Keyring::deterministic(&members, 1);
        let mut setup = RaftSetup::new(members, rings[&me].clone());
        setup.start = start;
        let core = RaftCore::open(opened.store, me, &setup, fresh, &logger);
        (core, fresh)
    }

    #[test]
    fn an_old_store_without_raft_state_is_refused_as_a_new_voter() {
        let dir = tempfile::tempdir().unwrap();
        // Create the store but no Raft state, as a crash right after
        // creating the file would leave it.
        drop(Store::open(&dir.path().join("f.redb"), "alpha").unwrap());
        let (core, fresh) = open(dir.path(), ClusterState::New);
        assert!(!fresh);
        match core {
            Err(RaftCoreError::UnexpectedlyEmpty { path }) => assert!(path.ends_with("f.redb")),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("an old, empty store bootstrapped a voter"),
        }
        // Joining an existing cluster is allowed: it starts with no voters.
        let (core, _) = open(dir.path(), ClusterState::Existing);
        let core = core.unwrap();
        assert!(core.voters().is_empty());
    }

    #[test]
    fn a_fresh_store_bootstraps_and_a_reopen_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (core, fresh) = open(dir.path(), ClusterState::New);
        assert!(fresh);
        let core = core.unwrap();
        assert_eq!(core.voters().len(), 3);
        // A store made by this start may be a lost one: fenced until the
        // members answer.
        assert_eq!(core.fence(), Some(&Fence::Awaiting));
        let id = core.store_id;
        drop(core);
        let (core, fresh) = open(dir.path(), ClusterState::New);
        assert!(!fresh);
        let core = core.unwrap();
        assert_eq!(core.voters().len(), 3);
        assert_eq!(core.fence(), Some(&Fence::Awaiting), "the fence is durable");
        assert_eq!(core.store_id, id, "the store id is durable");
    }

    #[test]
    fn joining_with_a_fresh_store_is_fenced_until_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let (core, fresh) = open(dir.path(), ClusterState::Existing);
        assert!(fresh);
        let core = core.unwrap();
        assert!(core.voters().is_empty());
        assert_eq!(core.fence(), Some(&Fence::UntilCommit(0)));
    }

    /// A proposal's deadline: one already past is refused before anything
    /// is proposed; a forward to the leader carries the earlier of the
    /// request's deadline and this hop's own timeout, never a later one.
    #[test]
    fn a_forward_carries_the_shrinking_deadline_and_a_past_one_is_refused() {
        use crate::schedule::{Op, Person, PersonId, Role};
        use raft::eraftpb::{Message, MessageType};
        let dir = tempfile::tempdir().unwrap();
        let (core, _) = open(dir.path(), ClusterState::New);
        let mut core = core.unwrap();
        // bravo leads term 1: a heartbeat tells alpha so.
        let bravo: FacilityId = "bravo".parse().unwrap();
        let mut hb = Message::default();
        hb.set_msg_type(MessageType::MsgHeartbeat);
        hb.from = raft_id(&bravo);
        hb.to = raft_id(core.facility());
        hb.term = 1;
        let wire = crate::raft::wire::WireMessage::from_raft(&hb).unwrap();
        core.on_peer(&bravo, RaftWire::Raft(Box::new(wire)), 0)
            .unwrap();
        assert_eq!(core.leader(), Some(bravo.clone()));
        let mut n = 0u8;
        let mut command = || {
            n += 1;
            Command {
                key: IdempotencyKey([n; 16]),
                issued_by: bravo.clone(),
                at_unix_ms: 0,
                hlc: crate::hlc::Hlc::ZERO,
                op: Op::AddPerson(Person {
                    id: format!("p{n}").parse::<PersonId>().unwrap(),
                    name: "Dr P".into(),
                    role: Role::Resident { pgy: 1 },
                }),
            }
        };
        let now = 1_000_000;
        let hop = RaftConfig::default().proposal_timeout_ticks * RaftConfig::default().tick_ms;
        let forwarded = |core: &mut Core| -> Vec<u64> {
            core.drain()
                .into_iter()
                .filter_map(|o| match o {
                    Output::SendBy {
                        to,
                        msg: RaftWire::Forward { .. },
                        deadline_unix_ms,
                    } if to == bravo => Some(deadline_unix_ms),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(
            core.propose(command(), now, Some(now)),
            Err(ProposeOutcome::TimedOut)
        );
        assert!(
            forwarded(&mut core).is_empty(),
            "nothing left for the leader"
        );
        core.propose(command(), now, Some(now + 300)).unwrap();
        assert_eq!(forwarded(&mut core), vec![now + 300]);
        core.propose(command(), now, Some(now + 10 * hop)).unwrap();
        assert_eq!(forwarded(&mut core), vec![now + hop]);
        core.propose(command(), now, None).unwrap();
        assert_eq!(forwarded(&mut core), vec![now + hop]);
    }
}
