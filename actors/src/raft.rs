//! RaftPeer: raft-rs (`raft = "=0.7.0"`, the sans-IO core TiKV runs) inside a
//! supervised actor, ordering every schedule change across facilities.
//!
//! - The actor is the only owner of the `RawNode` (in [`core::RaftCore`]).
//!   A tick from the clock calls `tick()`, a peer's message calls `step()`,
//!   and each Ready is persisted to redb (durable commits), then sent, then
//!   applied, then advanced.
//! - Raft messages cross the wire as [`wire`] mirror types in bulwark's
//!   codec; protobuf is never parsed from the network.
//! - Pre-vote and check-quorum are on. Reads are linearizable through
//!   read-index. Followers forward proposals to the leader; the proposer's
//!   origin is bound to the authenticated sender.
//! - A proposal ends in a typed [`ProposeOutcome`]: committed at an index
//!   (with the schedule's verdict), not leader (with a hint), timed out, or
//!   rejected with a reason.
//! - Proposals and peer messages are batched: they are handed to raft-rs as
//!   they arrive, and the Ready they make is handled by one Flush queued
//!   behind them in the mailbox, so one redb commit (and one message per
//!   peer) covers the batch, on the leader and on the followers.
//! - Snapshots every [`RaftConfig::snapshot_every_entries`] applied entries
//!   compact the log.
//! - raft-rs logs through slog; [`tracing_logger`] bridges it to `tracing`.
//!
//! Disk faults ([`bulwark_storage::DiskFaults`] on the facility's store):
//! - Latency: before handling a Ready that writes log entries, a snapshot
//!   or the hard state, the actor awaits the injected latency once (one
//!   redb commit covers them; the compaction and configuration writes that
//!   follow in the same pass share it). Its mailbox waits meanwhile, as
//!   behind a slow fsync: a slow leader disk delays every commit by at
//!   least the latency, a slow follower disk is masked by the quorum. With
//!   no latency set there is no extra await, so runs replay as before.
//! - Slow disks, injected or real: every durable write is timed (the
//!   awaited latency and the redb commit). After
//!   [`RaftConfig::slow_writes_to_yield`] writes in a row of at least
//!   [`RaftConfig::slow_write_ms`] ([`DiskWatch`]) the facility lowers its
//!   election priority and, when it leads, hands leadership to the most
//!   caught-up voter its detector does not suspect (at most once per
//!   two election timeouts). One fast write restores its priority. A
//!   leader handing over answers proposals `NotLeader` meanwhile.
//! - A refused write ([`bulwark_storage::StorageError::Injected`]) happens
//!   before anything of that Ready is sent or applied, so nothing that is
//!   not durable is acknowledged, voted for or answered. raft-rs has then
//!   handed out a Ready that was never advanced, so the core is *fenced*:
//!   what it already output (from durable state) is carried out, every
//!   waiting proposal and read answers `TimedOut` (a proposal may still
//!   commit; a retry with the same key applies once), and the core is
//!   rebuilt from redb in place, as a supervisor restart would, at once
//!   and then on every tick until the store takes the rebuild's write.
//!   Meanwhile peer messages are dropped (lost, to Raft), proposals and
//!   reads answer `NotLeader`, and the status shows no leader; local reads
//!   see the last applied schedule. A facility whose disk refuses writes
//!   thus drops out of consensus (a fenced leader falls silent and the
//!   others elect) and rejoins as a follower when the disk takes writes
//!   again, without spending the consensus zone's restart intensity on a fault a
//!   restart does not fix.
//! - Any other storage error stops the actor as before: its supervisor
//!   restarts it from redb, and a store that keeps failing escalates (a
//!   redb that failed an fsync must be reopened, which only a new node
//!   does). A refused write while the RaftPeer starts fails the start.
//!
//! Guards for raft-rs 0.7.0 (fixes that are only on master):
//! - tikv/raft-rs#557: a stale rejection could move a follower's `next` to
//!   or below its `match`; the core clamps the rejection hint.
//! - tikv/raft-rs#543 and #561 fix applying entries before they are
//!   persisted (a master-only feature). bulwark never enables it: entries
//!   are applied only from a Ready, after the redb commit, and the core
//!   asserts that nothing past the commit index is applied.

pub mod core;
mod storage;
pub mod wire;

pub use self::core::{Output, RaftCore, RaftCoreError, ShownEntry};
pub use self::storage::RaftStore;
pub use crate::ledger::{AppliedEntry, EntryPayload};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bulwark_runtime::{Address, ChildDef, Delivery, Node, NodeCtx, Zone};
use bulwark_storage::codec;
use bulwark_transport::FacilityId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use crate::keys::Keyring;
use crate::replica::{ScheduleMachine, ScheduleView};
use crate::schedule::{Command, Outcome};
use wire::WireMessage;

/// The RaftPeer's registered name.
pub const RAFT: &str = "raft";

pub use crate::ids::raft_id;

/// Settings of a RaftPeer. [`Default`] gives the embedded defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// Length of one Raft tick, in ms.
    pub tick_ms: u64,
    /// The election timeout in ticks: a follower that heard from a leader
    /// within it refuses to (pre-)vote (check-quorum's lease), and a leader
    /// that has not heard from a quorum within it steps down.
    pub election_ticks: usize,
    /// Fewest ticks without a leader before campaigning (at least
    /// `election_ticks`).
    pub election_ticks_min: usize,
    /// Exclusive upper bound of the election timeout, in ticks. raft-rs draws
    /// it from `thread_rng` in `[min, max)`; the harness sets `max = min + 1`
    /// with `min` from the seed, so it is fixed per facility.
    pub election_ticks_max: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest append message, in bytes.
    pub max_size_per_msg: u64,
    /// Append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Uncommitted bytes a leader accepts before dropping proposals.
    pub max_uncommitted_size: u64,
    /// Largest encoded proposal, in bytes.
    pub entry_len_max: u64,
    /// Applied entries between snapshots (log compaction).
    pub snapshot_every_entries: u64,
    /// Bytes of log entries held (in memory and on disk) before the log is
    /// compacted, whatever their count (batches make large entries).
    pub snapshot_every_bytes: u64,
    /// Ticks a proposal or read may wait for its outcome.
    pub proposal_timeout_ticks: u64,
    /// Proposals in flight at once, beyond which new ones are rejected.
    pub pending_proposals_max: usize,
    /// Ready rounds handled per input, at most.
    pub ready_rounds_max: usize,
    /// The allowed clock skew between facilities, in ms: a leader refuses a
    /// forwarded proposal whose timestamp is further than this from its own
    /// clock (TIME_TRAVEL).
    pub clock_skew_max_ms: u64,
    /// A durable write (one Ready's redb commit, an injected latency
    /// included) that takes at least this long, in ms, is slow. 0 turns
    /// the slow-disk check off.
    pub slow_write_ms: u64,
    /// Consecutive slow writes after which this facility's disk counts as
    /// slow: it stops being preferred as leader and, when it leads, hands
    /// leadership to the most caught-up voter. One write under
    /// `slow_write_ms` clears it.
    pub slow_writes_to_yield: u32,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: 50,
            election_ticks: 10,
            election_ticks_min: 10,
            election_ticks_max: 20,
            heartbeat_ticks: 2,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 16 * 1024 * 1024,
            entry_len_max: 192 * 1024,
            snapshot_every_entries: 1000,
            snapshot_every_bytes: 16 * 1024 * 1024,
            proposal_timeout_ticks: 100,
            pending_proposals_max: 4096,
            ready_rounds_max: 16,
            clock_skew_max_ms: 10_000,
            slow_write_ms: 200,
            slow_writes_to_yield: 3,
        }
    }
}

impl RaftConfig {
    /// Checks the relations between the settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.tick_ms == 0 {
            return Err("tick_ms must be > 0".into());
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err("heartbeat_ticks must be in 1..election_ticks".into());
        }
        if self.election_ticks_min < self.election_ticks {
            return Err("election_ticks_min must be at least election_ticks".into());
        }
        if self.election_ticks_max <= self.election_ticks_min {
            return Err("election_ticks_max must exceed election_ticks_min".into());
        }
        if self.entry_len_max == 0
            || self.entry_len_max + 16 * 1024 > crate::ledger::ENTRY_LEN_MAX as u64
        {
            return Err(
                "entry_len_max must be in 1..=240 KiB (a ledger entry holds the proposal)".into(),
            );
        }
        if self.snapshot_every_entries == 0
            || self.snapshot_every_bytes == 0
            || self.ready_rounds_max == 0
        {
            return Err(
                "snapshot_every_entries, snapshot_every_bytes and ready_rounds_max must be > 0"
                    .into(),
            );
        }
        if self.slow_write_ms > 0 && self.slow_writes_to_yield == 0 {
            return Err("slow_writes_to_yield must be > 0 when slow_write_ms is set".into());
        }
        Ok(())
    }

    fn to_raft(&self, id: u64, applied: u64) -> raft::Config {
        raft::Config {
            id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            min_election_tick: self.election_ticks_min,
            max_election_tick: self.election_ticks_max,
            read_only_option: raft::ReadOnlyOption::Safe,
            max_uncommitted_size: self.max_uncommitted_size,
            ..raft::Config::default()
        }
    }
}

/// How a proposal of a schedule command ended (see
/// [`crate::machine::ProposeOutcome`]).
pub type ProposeOutcome = crate::machine::ProposeOutcome<Outcome>;

/// Why a leader could not take a forwarded proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// It does not lead; `hint` is the leader as it knows it.
    NotLeader {
        /// The leader, if known.
        hint: Option<FacilityId>,
    },
    /// It refused the proposal.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// How a linearizable read ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The local state has applied everything committed when the read
    /// started; it may be served.
    Ready {
        /// The read index confirmed by a quorum.
        read_index: u64,
    },
    /// No leader is known.
    NotLeader {
        /// The leader, if known.
        hint: Option<FacilityId>,
    },
    /// No quorum confirmed it in time.
    TimedOut,
}

/// What RaftPeers say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftWire {
    /// A raft-rs message, mirrored.
    Raft(Box<WireMessage>),
    /// A follower forwards a proposal (an encoded [`EntryPayload`]) to the
    /// leader.
    Forward {
        /// The encoded payload.
        payload: Vec<u8>,
    },
    /// The leader could not take a forwarded proposal.
    ForwardRefused {
        /// The follower's sequence number.
        seq: u64,
        /// Why.
        refusal: Refusal,
    },
    /// A follower asks the leader for the chunk of snapshot `id` that
    /// starts at `cursor`.
    SnapshotFetch {
        /// The snapshot, as its descriptor names it.
        id: u64,
        /// Where the chunk starts.
        cursor: bulwark_storage::stream::Cursor,
    },
    /// The leader's answer: one sealed chunk.
    SnapshotChunk {
        /// The snapshot.
        id: u64,
        /// Where the chunk starts (the fetch's cursor).
        at: bulwark_storage::stream::Cursor,
        /// The encoded chunk.
        bytes: Vec<u8>,
        /// blake3 of `bytes`.
        checksum: [u8; 32],
    },
    /// The leader no longer holds snapshot `id`.
    SnapshotGone {
        /// The snapshot.
        id: u64,
    },
}

/// A snapshot of a RaftPeer's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    /// This facility.
    pub facility: FacilityId,
    /// The leader as known here.
    pub leader: Option<FacilityId>,
    /// Whether this facility leads.
    pub is_leader: bool,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Voters (both sides while a joint configuration is in force).
    pub voters: Vec<FacilityId>,
    /// A joint configuration is in force.
    pub joint: bool,
    /// Why this facility is out of consensus with an unusable replica
    /// (quarantined), if it is.
    pub fault: Option<String>,
}

/// Messages of the [`RaftPeer`].
pub enum RaftMsg {
    /// One Raft tick.
    Tick,
    /// A message from a peer's RaftPeer, through the Router.
    Remote(Delivery),
    /// Propose a schedule command.
    Propose {
        /// The command.
        command: Command,
        /// The request's deadline, if it has one: past it the proposal is
        /// refused as timed out, and a forward to the leader carries it.
        deadline: Option<tokio::time::Instant>,
        /// Where the outcome goes.
        reply: RpcReplyPort<ProposeOutcome>,
    },
    /// Wait until a linearizable read may be served locally.
    Read {
        /// Where the outcome goes.
        reply: RpcReplyPort<ReadOutcome>,
    },
    /// Run `f` on a view of the applied schedule (reads, tests). If the
    /// view cannot be opened, `f` is dropped unrun.
    Inspect(Box<dyn FnOnce(&ScheduleView) + Send>),
    /// Run `f` on the applied schedule if this replica has applied at least
    /// `at` (a linearizable read's confirmed index), else on `None`: a core
    /// rebuilt from its store since the read was confirmed starts again
    /// from its last snapshot, and must not answer for that read.
    InspectAt {
        /// The read index the schedule must have applied.
        at: u64,
        /// The read.
        f: ReadAtFn,
    },
    /// The peer's view.
    Status(RpcReplyPort<RaftStatus>),
    /// Hand leadership to another facility.
    TransferLeader(FacilityId),
    /// A planned stop: if this facility leads, hand leadership to the most
    /// caught-up voter the detector does not suspect. Answers the facility
    /// asked to take over (`None`: not leading, or no voter to take it).
    StepDown(RpcReplyPort<Option<FacilityId>>),
    /// Add and remove voters in one change (joint consensus for more than
    /// one). Answers when the leader has taken the change into its log; the
    /// status shows when it is in force.
    ChangeVoters {
        /// Facilities to make voters.
        add: Vec<FacilityId>,
        /// Voters to remove.
        remove: Vec<FacilityId>,
        /// `Err` names why the change was refused.
        reply: RpcReplyPort<Result<(), String>>,
    },
    /// Handle the pending Ready (self-sent, so queued proposals batch).
    Flush,
}

/// How a facility with no Raft state joins (etcd's `initial-cluster-state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// A new cluster: a store created by this start bootstraps with every
    /// member as a voter.
    #[default]
    New,
    /// An existing cluster: start empty and wait for the leader to add this
    /// facility (joint consensus) and send it a snapshot.
    Existing,
}

/// Sees every entry a RaftPeer applies (tests, and the validators that
/// attest to committed entries). Called on the RaftPeer's task: keep it
/// short. After a restart, entries past the last snapshot are applied, and
/// seen, again.
pub type AppliedTap = Arc<dyn Fn(&FacilityId, &AppliedEntry) + Send + Sync>;

/// How to make a facility's RaftPeer.
#[derive(Clone)]
pub struct RaftSetup {
    /// Every member facility, including this one: the address book of
    /// facilities that may be voters now or later.
    pub members: Vec<FacilityId>,
    /// The voters a new cluster starts with; `None`: every member.
    pub initial_voters: Option<Vec<FacilityId>>,
    /// How to start from a store with no Raft state.
    pub start: ClusterState,
    /// Settings.
    pub config: RaftConfig,
    /// Optional applied-entry tap.
    pub tap: Option<AppliedTap>,
    /// This facility's signing key and every member's public key: proposals
    /// are signed, and every committed proposal's signature is checked.
    pub keyring: Keyring,
    /// The failure detector's view: while a majority of the peers suspect
    /// this facility, it lowers its election priority (it is not
    /// preferred as leader) and, leading, hands leadership to the
    /// healthiest peer. `None`: leadership ignores the detector.
    pub detection: Option<crate::detect::Detection>,
}

impl RaftSetup {
    /// A new cluster of `members` with the default settings.
    pub fn new(members: Vec<FacilityId>, keyring: Keyring) -> RaftSetup {
        RaftSetup {
            members,
            initial_voters: None,
            start: ClusterState::New,
            config: RaftConfig::default(),
            tap: None,
            keyring,
            detection: None,
        }
    }
}

/// Arguments of a [`RaftPeer`].
#[derive(Clone)]
pub struct RaftPeerArgs {
    /// The node's context.
    pub ctx: NodeCtx,
    /// The setup.
    pub setup: RaftSetup,
}

/// How fast this facility's durable writes have been: a streak of slow
/// ones ([`RaftConfig::slow_write_ms`], [`RaftConfig::slow_writes_to_yield`])
/// makes the disk slow until one write is fast again.
#[derive(Debug, Clone)]
pub struct DiskWatch {
    slow_ms: u64,
    streak_to_yield: u32,
    streak: u32,
}

impl DiskWatch {
    /// A watch with `config`'s thresholds.
    pub fn new(config: &RaftConfig) -> Self {
        DiskWatch {
            slow_ms: config.slow_write_ms,
            streak_to_yield: config.slow_writes_to_yield,
            streak: 0,
        }
    }

    /// Records one durable write that took `took`.
    pub fn observe(&mut self, took: std::time::Duration) {
        let slow = self.slow_ms > 0 && took.as_millis() >= u128::from(self.slow_ms);
        self.streak = if slow {
            self.streak.saturating_add(1)
        } else {
            0
        };
    }

    /// True while the last `slow_writes_to_yield` writes were all slow.
    pub fn slow(&self) -> bool {
        self.slow_ms > 0 && self.streak >= self.streak_to_yield
    }
}

/// The RaftPeer actor. See the module docs.
pub struct RaftPeer;

/// The RaftPeer's state.
pub struct RaftPeerState {
    core: RaftCore<ScheduleMachine>,
    ctx: NodeCtx,
    proposals: BTreeMap<u64, RpcReplyPort<ProposeOutcome>>,
    reads: BTreeMap<u64, RpcReplyPort<ReadOutcome>>,
    flush_queued: bool,
    ticker: ractor::concurrency::JoinHandle<()>,
    tap: Option<AppliedTap>,
    detection: Option<crate::detect::Detection>,
    /// The tick of the last leadership transfer this facility asked for.
    transferred_at: Option<u64>,
    /// Ticks between two transfers asked for.
    transfer_cooldown: u64,
    /// How fast the durable writes have been.
    disk: DiskWatch,
    /// How the core is rebuilt from the store after a refused write.
    setup: RaftSetup,
    logger: slog::Logger,
    /// A write was refused and the core is not rebuilt yet: `core` is kept
    /// for local reads of the applied schedule only, never stepped.
    fenced: bool,
}

impl RaftPeerState {
    /// Leadership follows the facility's health: a facility a majority of
    /// its peers suspect (the detector), or whose disk is slow
    /// ([`DiskWatch`]), is not preferred as leader and hands leadership
    /// away when it holds it (at most once per cooldown): a suspected one
    /// to the detector's healthiest peer, a slow-disk one to the most
    /// caught-up voter that the detector (if any) does not suspect.
    /// Returns whether it asked for a transfer (the Ready that sends it is
    /// then due).
    fn follow_health(&mut self) -> bool {
        let view = self.detection.as_ref().map(|d| d.view());
        let suspected = view.as_ref().is_some_and(|v| v.self_suspected());
        let slow_disk = self.disk.slow();
        let want = if suspected || slow_disk { -1 } else { 0 };
        if self.core.priority() != want {
            tracing::warn!(suspected, slow_disk, "election priority {want}");
            self.core.set_priority(want);
        }
        let now = self.core.ticks();
        let cooled = self
            .transferred_at
            .is_none_or(|t| now >= t + self.transfer_cooldown);
        if !self.core.is_leader() || !cooled {
            return false;
        }
        let (to, reason) = if suspected {
            let voters = self.core.voters();
            let to = view
                .as_ref()
                .and_then(|v| v.healthiest_peer())
                .filter(|p| voters.contains(p));
            (to, "suspected")
        } else if slow_disk {
            (self.caught_up_voter(view.as_ref()), "slow_disk")
        } else {
            (None, "")
        };
        let Some(to) = to else {
            return false;
        };
        self.hand_to(&to, reason);
        true
    }

    /// The most caught-up voter that `view` (if any) does not suspect.
    fn caught_up_voter(&self, view: Option<&crate::detect::ClusterView>) -> Option<FacilityId> {
        let up = |p: &FacilityId| {
            view.is_none_or(|v| {
                v.liveness(p)
                    .is_none_or(|l| l == crate::detect::Liveness::Up)
            })
        };
        self.core.voters_by_progress().into_iter().find(up)
    }

    /// Asks raft-rs to hand leadership to `to`, for `reason` (logged,
    /// counted, and the cooldown starts).
    fn hand_to(&mut self, to: &FacilityId, reason: &'static str) {
        tracing::warn!(%to, reason, "handing leadership over");
        metrics::counter!("bulwark_raft_leader_transfers_total",
            "facility" => self.ctx.facility.to_string(), "reason" => reason)
        .increment(1);
        self.transferred_at = Some(self.core.ticks());
        self.core.transfer_leader(to);
    }

    /// A planned stop ([`RaftMsg::StepDown`]): the transfer it asked for.
    fn step_down(&mut self) -> Option<FacilityId> {
        if !self.core.is_leader() {
            return None;
        }
        let view = self.detection.as_ref().map(|d| d.view());
        let to = self.caught_up_voter(view.as_ref())?;
        self.hand_to(&to, "planned_stop");
        Some(to)
    }

    /// The peer's view; a fenced peer shows no leader.
    /// A view of the applied schedule, or `None` (logged) when the store
    /// cannot open one.
    fn view(&self) -> Option<ScheduleView> {
        match self.core.view() {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "the replica's view could not be opened");
                None
            }
        }
    }

    fn inspect(&self, f: Box<dyn FnOnce(&ScheduleView) + Send>) {
        if let Some(v) = self.view() {
            f(&v);
        }
    }

    fn status(&self) -> RaftStatus {
        let c = &self.core;
        let live = !self.fenced;
        RaftStatus {
            facility: c.facility().clone(),
            leader: c.leader().filter(|_| live),
            is_leader: live && c.is_leader(),
            term: c.term(),
            commit: c.commit_index(),
            applied: c.applied_index(),
            voters: c.voters(),
            joint: c.in_joint(),
            fault: c.recovering(),
        }
    }

    /// Awaits the injected disk latency, if any, before a durable write.
    async fn disk_latency(&self) {
        let latency = self.ctx.store.disk_faults().latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

/// The RaftPeer as a child of the consensus zone.
pub fn raft_child(setup: RaftSetup) -> (Zone, ChildDef) {
    let def = ChildDef::new(RAFT, move |ctx: &NodeCtx| {
        (
            RaftPeer,
            RaftPeerArgs {
                ctx: ctx.clone(),
                setup: setup.clone(),
            },
        )
    });
    (Zone::Consensus, def)
}

/// A read given the schedule's view (a redb read transaction, owned) if
/// it has applied the read index. The read runs wherever the receiver
/// puts it, never on the RaftPeer: a long read must not stall consensus.
pub type ReadAtFn = Box<dyn FnOnce(Option<ScheduleView>) + Send>;

/// The running RaftPeer of `node`, if any.
pub fn raft_peer(node: &Node) -> Option<ActorRef<RaftMsg>> {
    node.ctx().find(Zone::Consensus, RAFT)
}

/// The RaftPeer's state: running, or quarantined because its replica
/// does not open.
pub enum PeerState {
    /// In consensus (or fenced, retrying).
    Running(Box<RaftPeerState>),
    /// Out of consensus for good: the replica does not open. It votes for
    /// nobody and acknowledges nothing (as if the facility were down),
    /// refuses proposals and reads with the reason, and reports it in its
    /// status (so `/health/ready` fails, naming it). The remedy is the
    /// operator's: restore the store from a backup (`bulwark restore`),
    /// after which it catches up from its peers.
    Quarantined {
        /// Its context.
        ctx: NodeCtx,
        /// Why.
        reason: String,
    },
}

impl Actor for RaftPeer {
    type Msg = RaftMsg;
    type State = PeerState;
    type Arguments = RaftPeerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RaftMsg>,
        args: RaftPeerArgs,
    ) -> Result<PeerState, ActorProcessingErr> {
        let setup = args.setup;
        setup.config.validate()?;
        let logger = tracing_logger(&args.ctx.facility);
        let opened = RaftCore::open(
            args.ctx.store.clone(),
            args.ctx.facility.clone(),
            &setup,
            args.ctx.fresh_store,
            &setup.keyring,
            &logger,
        );
        let mut core = match opened {
            Ok(core) => core,
            Err(e) if e.quarantines() => {
                let reason = e.to_string();
                tracing::error!(
                    facility = %args.ctx.facility,
                    %reason,
                    "quarantined: this facility stays out of consensus until its store is restored (bulwark restore)"
                );
                metrics::gauge!("bulwark_replica_quarantined").set(1.0);
                args.ctx
                    .router
                    .register(RAFT, myself.clone(), RaftMsg::Remote);
                return Ok(PeerState::Quarantined {
                    ctx: args.ctx,
                    reason,
                });
            }
            Err(e) => return Err(e.into()),
        };
        core.emit_applied(setup.tap.is_some());
        let transfer_cooldown = 2 * setup.config.election_ticks as u64;
        args.ctx
            .router
            .register(RAFT, myself.clone(), RaftMsg::Remote);
        let tick = std::time::Duration::from_millis(setup.config.tick_ms);
        let ticker = myself.send_interval(tick, || RaftMsg::Tick);
        Ok(PeerState::Running(Box::new(RaftPeerState {
            core,
            ctx: args.ctx,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            flush_queued: false,
            ticker,
            tap: setup.tap.clone(),
            detection: setup.detection.clone(),
            transferred_at: None,
            transfer_cooldown,
            disk: DiskWatch::new(&setup.config),
            setup,
            logger,
            fenced: false,
        })))
    }

    async fn handle(
        &self,
        myself: ActorRef<RaftMsg>,
        msg: RaftMsg,
        st: &mut PeerState,
    ) -> Result<(), ActorProcessingErr> {
        let st = match st {
            PeerState::Running(st) => st,
            PeerState::Quarantined { ctx, reason } => {
                handle_quarantined(ctx, reason, msg);
                return Ok(());
            }
        };
        if st.fenced {
            handle_fenced(&myself, msg, st).await?;
        } else {
            handle_live(&myself, msg, st).await?;
        }
        flush_outputs(st);
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RaftMsg>,
        st: &mut PeerState,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = match st {
            PeerState::Running(st) => {
                st.ticker.abort();
                &st.ctx
            }
            PeerState::Quarantined { ctx, .. } => ctx,
        };
        ctx.router.unregister(RAFT, myself.get_id());
        Ok(())
    }
}

/// A quarantined peer takes part in nothing and answers with its reason.
fn handle_quarantined(ctx: &NodeCtx, reason: &str, msg: RaftMsg) {
    let why = format!("this facility is quarantined: {reason}");
    match msg {
        RaftMsg::Tick | RaftMsg::Remote(_) | RaftMsg::TransferLeader(_) | RaftMsg::Flush => {}
        RaftMsg::StepDown(reply) => {
            let _ = reply.send(None);
        }
        RaftMsg::Propose { reply, .. } => {
            let _ = reply.send(ProposeOutcome::Rejected { reason: why });
        }
        RaftMsg::Read { reply } => {
            let _ = reply.send(ReadOutcome::NotLeader { hint: None });
        }
        RaftMsg::Inspect(_) => {}
        RaftMsg::InspectAt { f, .. } => f(None),
        RaftMsg::Status(reply) => {
            let _ = reply.send(RaftStatus {
                facility: ctx.facility.clone(),
                leader: None,
                is_leader: false,
                term: 0,
                commit: 0,
                applied: 0,
                voters: Vec::new(),
                joint: false,
                fault: Some(reason.to_string()),
            });
        }
        RaftMsg::ChangeVoters { reply, .. } => {
            let _ = reply.send(Err(why));
        }
    }
}

async fn handle_live(
    myself: &ActorRef<RaftMsg>,
    msg: RaftMsg,
    st: &mut RaftPeerState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        RaftMsg::Tick => {
            st.core.tick();
            ready(myself, st).await?;
            if !st.fenced && st.follow_health() {
                ready(myself, st).await?;
            }
        }
        RaftMsg::Remote(d) => {
            let from = d.envelope.from.clone();
            match codec::decode::<RaftWire>(&d.envelope.body) {
                Ok(w) => {
                    st.core.on_peer(&from, w, st.ctx.clock.unix_ms())?;
                    queue_flush(myself, st)?;
                }
                Err(e) => {
                    metrics::counter!("bulwark_raft_malformed_total").increment(1);
                    tracing::warn!(%from, error = %e, "malformed raft wire message dropped");
                }
            }
        }
        RaftMsg::Propose {
            command,
            deadline,
            reply,
        } => {
            let now = st.ctx.clock.unix_ms();
            // The monotonic deadline as this facility's wall clock reads it
            // now (an envelope's deadline is wall-clock ms).
            let deadline_unix_ms = deadline.map(|d| {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                now.saturating_add(left.as_millis() as u64)
            });
            match st.core.propose(command, now, deadline_unix_ms) {
                Ok(seq) => {
                    st.proposals.insert(seq, reply);
                    queue_flush(myself, st)?;
                }
                Err(outcome) => {
                    let _ = reply.send(outcome);
                }
            }
        }
        RaftMsg::Read { reply } => match st.core.read() {
            Ok(seq) => {
                st.reads.insert(seq, reply);
                ready(myself, st).await?;
            }
            Err(outcome) => {
                let _ = reply.send(outcome);
            }
        },
        RaftMsg::Inspect(f) => st.inspect(f),
        RaftMsg::InspectAt { at, f } => {
            let view = (st.core.replica_applied() >= at)
                .then(|| st.view())
                .flatten();
            f(view);
        }
        RaftMsg::Status(reply) => {
            let _ = reply.send(st.status());
        }
        RaftMsg::TransferLeader(to) => {
            st.core.transfer_leader(&to);
            ready(myself, st).await?;
        }
        RaftMsg::StepDown(reply) => {
            let to = st.step_down();
            if to.is_some() {
                ready(myself, st).await?;
            }
            let _ = reply.send(to);
        }
        RaftMsg::ChangeVoters { add, remove, reply } => {
            let mut taken = st.core.change_voters(&add, &remove);
            if taken.is_ok() {
                ready(myself, st).await?;
                if st.fenced {
                    taken = Err(FENCED.into());
                }
            }
            let _ = reply.send(taken);
        }
        RaftMsg::Flush => {
            st.flush_queued = false;
            ready(myself, st).await?;
        }
    }
    Ok(())
}

/// Why a fenced RaftPeer refuses a configuration change.
const FENCED: &str = "this facility's disk refused a Raft write; it is out of consensus until the store takes writes again";

/// A fenced peer takes nothing that needs its log: it retries the rebuild
/// on every tick, drops peer messages, and refuses proposals and reads.
async fn handle_fenced(
    myself: &ActorRef<RaftMsg>,
    msg: RaftMsg,
    st: &mut RaftPeerState,
) -> Result<(), ActorProcessingErr> {
    match msg {
        RaftMsg::Tick => rebuild(myself, st).await?,
        RaftMsg::Remote(_) | RaftMsg::TransferLeader(_) => {}
        RaftMsg::StepDown(reply) => {
            let _ = reply.send(None);
        }
        RaftMsg::Propose { reply, .. } => {
            let _ = reply.send(ProposeOutcome::NotLeader { hint: None });
        }
        RaftMsg::Read { reply } => {
            let _ = reply.send(ReadOutcome::NotLeader { hint: None });
        }
        RaftMsg::Inspect(f) => st.inspect(f),
        RaftMsg::InspectAt { f, .. } => f(None),
        RaftMsg::Status(reply) => {
            let _ = reply.send(st.status());
        }
        RaftMsg::ChangeVoters { reply, .. } => {
            let _ = reply.send(Err(FENCED.into()));
        }
        RaftMsg::Flush => st.flush_queued = false,
    }
    Ok(())
}

/// Handles the core's pending Ready, after the injected disk latency when
/// it writes. A write an injected fault refused fences the core (module
/// docs); any other failure stops the actor.
async fn ready(
    myself: &ActorRef<RaftMsg>,
    st: &mut RaftPeerState,
) -> Result<(), ActorProcessingErr> {
    let writes = st.core.ready_writes();
    let started = tokio::time::Instant::now();
    if writes {
        st.disk_latency().await;
    }
    let handled = st.core.on_ready();
    if writes {
        st.disk.observe(started.elapsed());
    }
    match handled {
        Ok(()) => Ok(()),
        Err(e) if e.is_injected() => {
            fence(st, &e);
            rebuild(myself, st).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Fences the core after a refused write: what it output before the
/// failure came from durable state and is carried out; everything still
/// waiting answers `TimedOut` (the rebuilt core knows nothing of it).
fn fence(st: &mut RaftPeerState, err: &RaftCoreError) {
    tracing::error!(facility = %st.ctx.facility, error = %err,
        "a Raft write was refused: out of consensus until the core is rebuilt from the store");
    metrics::counter!("bulwark_raft_fenced_total", "facility" => st.ctx.facility.to_string())
        .increment(1);
    st.fenced = true;
    flush_outputs(st);
    for (_, reply) in std::mem::take(&mut st.proposals) {
        let _ = reply.send(ProposeOutcome::TimedOut);
    }
    for (_, reply) in std::mem::take(&mut st.reads) {
        let _ = reply.send(ReadOutcome::TimedOut);
    }
}

/// Rebuilds a fenced core from the store, as a restart would (its open
/// writes the incarnation, so it waits the disk latency too). A refused
/// write leaves it fenced for the next tick; any other failure stops the
/// actor.
async fn rebuild(
    myself: &ActorRef<RaftMsg>,
    st: &mut RaftPeerState,
) -> Result<(), ActorProcessingErr> {
    st.disk_latency().await;
    let opened = RaftCore::open(
        st.ctx.store.clone(),
        st.ctx.facility.clone(),
        &st.setup,
        st.ctx.fresh_store,
        &st.setup.keyring,
        &st.logger,
    );
    match opened {
        Ok(mut core) => {
            core.emit_applied(st.tap.is_some());
            st.core = core;
            st.fenced = false;
            st.transferred_at = None;
            tracing::warn!(facility = %st.ctx.facility, "Raft core rebuilt from the store; rejoining");
            queue_flush(myself, st)
        }
        Err(e) if e.is_injected() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Queues one Flush behind what the mailbox already holds, so proposals and
/// peer messages that arrive together are persisted by one redb commit.
fn queue_flush(
    myself: &ActorRef<RaftMsg>,
    st: &mut RaftPeerState,
) -> Result<(), ActorProcessingErr> {
    if !st.flush_queued {
        st.flush_queued = true;
        myself.cast(RaftMsg::Flush)?;
    }
    Ok(())
}

/// Sends `msg` to `to`'s RaftPeer, with the envelope's deadline if any.
fn send(st: &RaftPeerState, to: FacilityId, msg: &RaftWire, deadline_unix_ms: Option<u64>) {
    let body = match codec::encode(msg) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "raft message does not encode");
            return;
        }
    };
    if let Err(e) = st
        .ctx
        .router
        .send(Address::new(to, RAFT), body, deadline_unix_ms)
    {
        metrics::counter!("bulwark_raft_send_failed_total").increment(1);
        tracing::debug!(error = %e, "raft send failed");
    }
}

fn flush_outputs(st: &mut RaftPeerState) {
    for out in st.core.drain() {
        match out {
            Output::Send { to, msg } => send(st, to, &msg, None),
            Output::SendBy {
                to,
                msg,
                deadline_unix_ms,
            } => send(st, to, &msg, Some(deadline_unix_ms)),
            Output::Proposed { seq, outcome } => {
                if let Some(reply) = st.proposals.remove(&seq) {
                    let _ = reply.send(outcome);
                }
            }
            Output::ReadReady { seq, outcome } => {
                if let Some(reply) = st.reads.remove(&seq) {
                    let _ = reply.send(outcome);
                }
            }
            Output::Applied(e) => {
                if let Some(tap) = &st.tap {
                    let ShownEntry {
                        index,
                        term,
                        hash,
                        shown,
                        leader,
                    } = *e;
                    let entry = AppliedEntry {
                        index,
                        term,
                        hash,
                        payload: shown.payload,
                        verdict: shown.verdict,
                        leader,
                    };
                    tap(st.core.facility(), &entry);
                }
            }
        }
    }
}

/// Runs `f` on `peer`'s applied schedule and returns its result; `None` if
/// the RaftPeer is gone. Not linearizable by itself: send
/// [`RaftMsg::Read`] first and wait for [`ReadOutcome::Ready`].
pub async fn inspect<T: Send + 'static>(
    peer: &ActorRef<RaftMsg>,
    f: impl FnOnce(&ScheduleView) -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    peer.cast(RaftMsg::Inspect(Box::new(move |s: &ScheduleView| {
        let _ = tx.send(f(s));
    })))
    .ok()?;
    rx.await.ok()
}

/// A slog logger whose records go to `tracing` (target `raft`). raft-rs's
/// chatty info-level records (elections, state changes) become debug events.
pub fn tracing_logger(facility: &FacilityId) -> slog::Logger {
    use slog::Drain;
    slog::Logger::root(
        TracingDrain.fuse(),
        slog::o!("facility" => facility.to_string()),
    )
}

struct TracingDrain;

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        use slog::KV;
        let mut kv = KvText(String::new());
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{msg}{}", kv.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Debug | slog::Level::Trace => {
                tracing::trace!(target: "raft", "{msg}{}", kv.0)
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod disk_watch_tests {
    use std::time::Duration;

    use super::{DiskWatch, RaftConfig};

    fn watch(slow_write_ms: u64) -> DiskWatch {
        DiskWatch::new(&RaftConfig {
            slow_write_ms,
            slow_writes_to_yield: 3,
            ..RaftConfig::default()
        })
    }

    #[test]
    fn a_streak_of_slow_writes_makes_the_disk_slow_and_one_fast_write_clears_it() {
        let ms = Duration::from_millis;
        let mut w = watch(200);
        for _ in 0..2 {
            w.observe(ms(500));
        }
        assert!(!w.slow(), "two slow writes are not a streak of three");
        w.observe(ms(199));
        w.observe(ms(200));
        w.observe(ms(300));
        assert!(!w.slow(), "the fast write broke the streak");
        w.observe(ms(250));
        assert!(w.slow());
        w.observe(ms(5));
        assert!(!w.slow());
    }

    #[test]
    fn zero_turns_the_check_off() {
        let mut w = watch(0);
        for _ in 0..10 {
            w.observe(Duration::from_secs(5));
        }
        assert!(!w.slow());
        let bad = RaftConfig {
            slow_writes_to_yield: 0,
            ..RaftConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("slow_writes_to_yield"));
    }
}
