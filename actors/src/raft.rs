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

pub mod actor;
pub mod core;
mod storage;
pub mod wire;

pub use self::actor::{inspect, raft_child, PeerState, RaftPeerArgs, RaftPeerState};
pub use self::core::{MemberChange, MemberView, Output, RaftCore, RaftCoreError, ShownEntry};
pub use self::storage::{Fence, PeerStores, RaftStore};
pub use crate::ledger::EntryPayload;

use std::fmt::Write as _;

use bulwark_runtime::Node;
use bulwark_transport::FacilityId;
use ractor::ActorRef;
use serde::{Deserialize, Serialize};

use crate::replica::{ScheduleMachine, Shown};
use crate::schedule::Outcome;
use wire::WireMessage;

// The facility's RaftPeer: the generic peer over the schedule's machine.
// Everything in `actor` and `core` is generic over the
// [`crate::machine::StateMachine`]; only these names bind the schedule.

/// Messages of the facility's RaftPeer.
pub type RaftMsg = actor::RaftMsg<ScheduleMachine>;
/// How to make the facility's RaftPeer.
pub type RaftSetup = actor::RaftSetup<ScheduleMachine>;
/// The facility's RaftPeer actor.
pub type RaftPeer = actor::RaftPeer<ScheduleMachine>;
/// A read given the schedule's view if it has applied the read index.
pub type ReadAtFn = actor::ReadAtFn<ScheduleMachine>;
/// One applied entry as the validators and the simulation see it: what the
/// schedule's machine decided, with its index, term, hash and leader.
pub type AppliedEntry = ShownEntry<Shown>;
/// Sees every entry the facility's RaftPeer applies.
pub type AppliedTap = actor::AppliedTap<Shown>;

/// The running RaftPeer of `node`, if any.
pub fn raft_peer(node: &Node) -> Option<ActorRef<RaftMsg>> {
    actor::raft_peer::<ScheduleMachine>(node)
}

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
    /// Refused at once, nothing sent: the breaker guarding the read-index
    /// request to the leader is open.
    Shed {
        /// The open dependency (`read_index@bravo`).
        dependency: String,
        /// When a call may pass again.
        retry_after_ms: u64,
    },
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
    /// A facility announces its store and, when vote-fenced, asks whether
    /// the cluster has a history and whether this store's facility was part
    /// of it under another store (the vote fence, [`core`]).
    Probe {
        /// The sender's store id ([`RaftStore::store_id`]).
        store: u64,
        /// The sender's last log index.
        last_index: u64,
        /// The sender withholds its votes (a leader hands leadership to
        /// none such).
        fenced: bool,
        /// The raft id the sender runs under (one of its incarnations).
        id: u64,
    },
    /// The answer to a [`RaftWire::Probe`].
    ProbeAnswer {
        /// The answering facility's commit index.
        commit: u64,
        /// It had heard from the asking facility, with a history, before.
        knew_you: bool,
    },
    /// A follower passes an operator's leadership transfer on to the
    /// leader (raft-rs's own forward names the target as its sender, which
    /// the authenticated link would not match).
    TransferLeader {
        /// The voter to lead.
        to: FacilityId,
    },
    /// A follower passes an operator's membership change on to the leader
    /// (taken only from a voter).
    ChangeMember {
        /// The facility.
        facility: FacilityId,
        /// What to do.
        change: MemberChange,
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
    /// Why this facility does not vote yet, if it does not (its store's
    /// vote fence: a new store waiting for the members' answers or
    /// catching up with the cluster's history). Not ready meanwhile: with
    /// one more member down, a cluster of three would have no quorum.
    pub vote_fence: Option<String>,
    /// Whether this facility may propose under the applied state (a
    /// validator of the set in force holding its key): one that may not
    /// takes no provisional writes, which it could not replay.
    pub proposes: bool,
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
