//! The invariant checkers of the simulation. Each looks across every
//! facility and keeps only what it needs to judge the next observation;
//! each returns the first broken invariant as an `Err` naming it (the
//! [`RaftObserver`] collects them, since it runs inside the RaftPeers'
//! taps). Pure: the run feeds them what it reads from the cluster, so a
//! test can feed them a planted violation.
//!
//! - [`RaftObserver`]: one leader per term; every facility applies the
//!   same entry at each index, in index order (a replay after a restart of
//!   the RaftPeer is allowed, a gap never).
//!   Each committed command is decided by every facility alike and as the
//!   reference model ([`super::model`]) decides it.
//! - [`LedgerChecker`]: no ledger entry is final without a certificate of
//!   [`QUORUM`] distinct valid signers (counted here, from a table written
//!   out by hand); honest ledgers never fork and never lose a final entry;
//!   every final command applies in the reference model, each key once.
//! - [`ScheduleChecker`]: every schedule keeps every rule (the reference
//!   model's [`super::model::check_state`]: no double booking, duty hours,
//!   leave, staffing; and the state's own structural check) and facilities
//!   that applied the same log prefix hold the same schedule.
//! - [`check_pools`]: a bulkhead pool's reserve is never lent out.
//! - [`RetryChecker`]: a retry of a committed write, sent to any
//!   facility, answers as a retry with the first outcome.
//! - [`ReadChecker`]: a linearizable read reflects every write
//!   acknowledged before it began.
//! - [`check_healer`]: a healer resolving a filled block by last write
//!   wins kept the later stamp (recomputed here from the report's stamps).
//! - [`check_liar_named`]: a validator that equivocated or forged votes is
//!   named by an honest facility, with a proof the checker verifies itself.
//! - [`check_blame`]: evidence that proves lying (two votes at one height,
//!   a vote in another's name, a vote for an entry the rules refused, a
//!   forged proposal) names only the Byzantine facility.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bulwark_actors::bft::evidence::{Evidence, Kind};
use bulwark_actors::bft::wire::BftWire;
use bulwark_actors::bft::BFT;
use bulwark_actors::cap::heal::{Conflict, ConflictPolicy, Report, Resolution};
use bulwark_actors::cap::store::{Provisional, ROW_LEN_MAX as PROVISIONAL_ROW_LEN_MAX};
use bulwark_actors::flow::bulkhead::{PoolStatus, FLEX};
use bulwark_actors::hlc::Hlc;
use bulwark_actors::keys::Domain;
use bulwark_actors::keys::PublicKeys;
use bulwark_actors::ledger::{
    self, FinalEntry, Hash, SignedProposal, Verdict, Vote, VoteBody, ENTRY_LEN_MAX, GENESIS,
};
use bulwark_actors::raft::wire::{WireHardState, WireSnapshot};
use bulwark_actors::raft::{AppliedEntry, EntryPayload, RaftStatus, RaftWire, RAFT};
use bulwark_actors::replica::Meta as ReplicaMeta;
use bulwark_actors::schedule::{Command, IdempotencyKey};
use bulwark_runtime::disk::SimDisk;
use bulwark_runtime::{Clock, Envelope, VirtualClock};
use bulwark_storage::codec;
use bulwark_storage::schema::{
    BFT_VOTES, LEDGER, PROVISIONAL, RAFT_META, SCHED_ASSIGN, SCHED_META,
};
use bulwark_storage::Store;
use bulwark_transport::FacilityId;
use redb::ReadableDatabase;
use redb::ReadableTable;
use std::time::Duration;
use tokio::time::Instant;

use super::model::{Decision, Model};

/// The properties the simulation checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Invariant {
    /// At most one leader per Raft term.
    OneLeaderPerTerm,
    /// Every facility applies the same entry at each committed index, in
    /// index order.
    CommittedEntries,
    /// No ledger entry final without a valid certificate; honest ledgers
    /// never fork or lose a final entry; final commands keep the rules.
    FinalLedger,
    /// Every schedule keeps every rule; equal log prefixes, equal
    /// schedules.
    ScheduleRules,
    /// A bulkhead pool's reserve is never lent out.
    BulkheadReserve,
    /// A linearizable read reflects every write acknowledged before it.
    LinearizableRead,
    /// Every committed command is decided as the reference model of the
    /// schedule decides it (applied, refused for a rule it breaks, or
    /// answered as a retry), and the final chain holds each key once.
    ReferenceModel,
    /// A retry of a committed write answers its first outcome.
    Idempotency,
    /// Every acknowledged write is on every facility at the end.
    AcknowledgedWrites,
    /// Every answer is one the API documents for the request.
    ApiContract,
    /// No honest facility is blamed with a proof of lying.
    HonestBlamed,
    /// A healer's last-write-wins keeps the later hybrid-clock stamp.
    HealerChoice,
    /// A validator that equivocates or forges votes is named, with a proof
    /// that holds up, by an honest facility.
    LiarNamed,
    /// With the faults healed, the facilities converge (liveness).
    Convergence,
    /// An honest validator's vote is on its disk (its vote or the final
    /// entry) before it is on the wire.
    VoteDurable,
    /// A Raft vote granted is in the voter's hard state on disk (that term,
    /// that candidate) before the grant is on the wire.
    RaftVoteDurable,
    /// Work a request causes on another facility (a forwarded proposal)
    /// carries a deadline no later than the request's own.
    DeadlineShrinks,
    /// A facility's backup of a checkpoint holds the schedule exactly as it
    /// stood right after the checkpoint's index: applied through that
    /// index, with the reference model's assignments there.
    CheckpointState,
}

impl Invariant {
    /// Stable name.
    pub fn code(self) -> &'static str {
        match self {
            Invariant::OneLeaderPerTerm => "ONE_LEADER_PER_TERM",
            Invariant::CommittedEntries => "COMMITTED_ENTRIES",
            Invariant::FinalLedger => "FINAL_LEDGER",
            Invariant::ScheduleRules => "SCHEDULE_RULES",
            Invariant::BulkheadReserve => "BULKHEAD_RESERVE",
            Invariant::LinearizableRead => "LINEARIZABLE_READ",
            Invariant::ReferenceModel => "REFERENCE_MODEL",
            Invariant::Idempotency => "IDEMPOTENCY",
            Invariant::AcknowledgedWrites => "ACKNOWLEDGED_WRITES",
            Invariant::ApiContract => "API_CONTRACT",
            Invariant::HonestBlamed => "HONEST_BLAMED",
            Invariant::HealerChoice => "HEALER_CHOICE",
            Invariant::LiarNamed => "LIAR_NAMED",
            Invariant::Convergence => "CONVERGENCE",
            Invariant::VoteDurable => "VOTE_DURABLE",
            Invariant::RaftVoteDurable => "RAFT_VOTE_DURABLE",
            Invariant::DeadlineShrinks => "DEADLINE_SHRINKS",
            Invariant::CheckpointState => "CHECKPOINT_STATE",
        }
    }
}

/// The replica's scalars as `tx` reads them from `sched_meta` (not through
/// the replica's code).
fn replica_meta(tx: &redb::ReadTransaction) -> Option<ReplicaMeta> {
    let t = tx.open_table(SCHED_META).ok()?;
    let v = t.get(b"meta".as_slice()).ok()??;
    codec::decode::<ReplicaMeta>(v.value()).ok()
}

/// A checkpoint backup as read: (facility, checkpoint index, applied
/// index, `(block, person)` assignments).
type CheckpointSeen = (FacilityId, u64, u64, Vec<(String, String)>);

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which.
    pub invariant: Invariant,
    /// What was seen.
    pub detail: String,
}

impl Violation {
    /// `invariant` broken as `detail` says.
    pub fn new(invariant: Invariant, detail: impl Into<String>) -> Violation {
        Violation {
            invariant,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant.code(), self.detail)
    }
}

impl std::error::Error for Violation {}

/// The key of the Raft snapshot in [`RAFT_META`] (the RaftStore's, read
/// here without opening a RaftStore).
const RAFT_SNAPSHOT_KEY: &str = "snapshot";

/// `MsgRequestVoteResponse` in raft-rs's `eraftpb::MessageType`, written
/// out here (a test checks it against raft-rs).
const MSG_REQUEST_VOTE_RESPONSE: u8 = 6;

/// The key of the hard state in [`RAFT_META`] (the RaftStore's).
const RAFT_HARD_STATE_KEY: &str = "hard_state";

/// The Raft hard state in `db`, read from the table directly.
fn hard_state_on_disk(db: &redb::Database) -> Option<WireHardState> {
    let tx = db.begin_read().ok()?;
    let meta = tx.open_table(RAFT_META).ok()?;
    let row = meta.get(RAFT_HARD_STATE_KEY).ok()??;
    codec::decode::<WireHardState>(row.value()).ok()
}

/// True if `store` holds a provisional change keyed `key` (a healer
/// proposes those under the client's key, on its own time).
fn provisional_on_disk(store: &Store, key: &IdempotencyKey) -> bool {
    let Ok(tx) = store.database().begin_read() else {
        return false;
    };
    let Ok(t) = tx.open_table(PROVISIONAL) else {
        return false;
    };
    let Ok(rows) = t.iter() else {
        return false;
    };
    let found = rows.flatten().any(|(_, v)| {
        codec::decode_limited::<Provisional>(v.value(), PROVISIONAL_ROW_LEN_MAX)
            .is_ok_and(|p| p.command.key == *key)
    });
    found
}

/// True if `db` holds the vote `body` (as `bytes`) in its vote table, or
/// a final entry at its height with the voted hash.
fn vote_on_disk(db: &redb::Database, body: &VoteBody, bytes: &[u8]) -> bool {
    let Ok(tx) = db.begin_read() else {
        return false;
    };
    let voted = tx.open_table(BFT_VOTES).ok().and_then(|t| {
        let row = t.get(body.height).ok()??;
        codec::decode::<Vote>(row.value()).ok()
    });
    if voted.is_some_and(|v| v.body == bytes) {
        return true;
    }
    tx.open_table(LEDGER)
        .ok()
        .and_then(|t| {
            let row = t.get(body.height).ok()??;
            Some(*blake3::hash(row.value()).as_bytes() == body.hash)
        })
        .unwrap_or(false)
}

/// Watches the RaftPeers' applied entries and statuses.
#[derive(Debug, Default)]
pub struct RaftObserver {
    /// index -> (term, hash, the first facility seen applying it).
    applied: BTreeMap<u64, (u64, [u8; 32], FacilityId)>,
    /// term -> the facility seen leading it.
    leaders: BTreeMap<u64, FacilityId>,
    /// Per facility, the last index applied since its node started.
    last_applied: BTreeMap<FacilityId, u64>,
    /// Per facility, applied indices that went backwards since its node
    /// started (each must be a restart of its RaftPeer).
    replays: BTreeMap<FacilityId, u64>,
    /// Each running facility's store, to tell a snapshot install from
    /// skipped entries.
    stores: BTreeMap<FacilityId, Store>,
    /// Each running facility's simulated disk (power loss on), with the
    /// database over its durable bytes as of a count of syncs: the wire
    /// checkers judge what a power loss would leave, not what the page
    /// cache holds.
    disks: BTreeMap<FacilityId, (SimDisk, Option<(u64, redb::Database)>)>,
    /// Snapshots installed from a leader, seen as gaps in applied indices.
    snapshot_installs: u64,
    /// index -> the command and how the first facility applying it
    /// decided it (none: not a command).
    /// Each index's command, the ledger height its proposal was anchored
    /// at, and its decision.
    decided: BTreeMap<u64, Option<(Command, u64, Decision)>>,
    /// The reference schedule, fed the committed commands in index order.
    model: Model,
    /// The next index the model takes (set by the first entry seen).
    model_next: Option<u64>,
    /// Validators that lie: what they send is not judged by VOTE_DURABLE.
    liars: BTreeSet<FacilityId>,
    /// Own votes seen on the wire and found on their signer's disk.
    votes_checked: u64,
    /// Raft vote grants seen on the wire and checked against the hard state.
    grants_checked: u64,
    /// Per command key, the client's attempt in flight: (the facility it
    /// was sent to, when it began, its deadline), on tokio's clock.
    budgets: BTreeMap<IdempotencyKey, (FacilityId, Instant, Instant)>,
    /// Each facility's wall clock, to read a forward's deadline against.
    clocks: BTreeMap<FacilityId, VirtualClock>,
    /// When each facility's clock skew last changed.
    skewed_at: BTreeMap<FacilityId, Instant>,
    /// Forwards whose deadline was checked against their request's.
    forwards_checked: u64,
    /// Checkpoint index -> the reference model's assignments right after
    /// it.
    checkpoint_model: BTreeMap<u64, Vec<(String, String)>>,
    /// Checkpoint backups not judged yet (the model has not reached their
    /// index): (facility, index, applied index, assignments) as read from
    /// the backup's tables.
    checkpoint_seen: Vec<CheckpointSeen>,
    /// Checkpoint backups judged against the model.
    checkpoints_checked: u64,
    violations: Vec<Violation>,
}

impl RaftObserver {
    /// The genesis validator set, for the reference model.
    pub fn set_genesis(&mut self, keys: &PublicKeys) {
        self.model.set_validators(keys);
    }

    /// An entry applied by `f`: the same entry as every other facility
    /// applied at that index, right after the previous one (or, once per
    /// RaftPeer restart, again from its snapshot).
    pub fn on_applied(&mut self, f: &FacilityId, e: &AppliedEntry) {
        self.on_decided(f, e);
        match self.applied.get(&e.index) {
            Some((term, hash, first)) if (*term, *hash) != (e.term, e.hash) => {
                self.violations.push(Violation::new(
                    Invariant::CommittedEntries,
                    format!(
                        "{f} applied index {} of term {} but {first} applied term {term} there",
                        e.index, e.term
                    ),
                ));
            }
            Some(_) => {}
            None => {
                self.applied.insert(e.index, (e.term, e.hash, f.clone()));
            }
        }
        let last = self.last_applied.get(f).copied().unwrap_or(0);
        if last != 0 && e.index > last + 1 {
            // Legitimate only if the entries in between came in a snapshot
            // from the leader, installed right before this entry.
            match self.snapshot_index(f) {
                // The snapshot read now may already be a later one (taken
                // right after, as small intervals do): entries up to it are
                // in it. Skipped entries would still show as diverging
                // schedules and as the reference model's disagreement.
                Some(s) if s + 1 >= e.index && s > last => self.snapshot_installs += 1,
                s => self.violations.push(Violation::new(
                    Invariant::CommittedEntries,
                    format!(
                        "{f} applied {} right after {last} (its snapshot is at {s:?})",
                        e.index
                    ),
                )),
            }
        }
        if last != 0 && e.index <= last {
            *self.replays.entry(f.clone()).or_insert(0) += 1;
        }
        self.last_applied.insert(f.clone(), e.index);
    }

    /// How `f` decided the command at `e.index`: as every other facility
    /// did, and (fed to the model in index order) as the reference model
    /// decides it.
    fn on_decided(&mut self, f: &FacilityId, e: &AppliedEntry) {
        let decision = match &e.shown.verdict {
            Verdict::Admitted(_) => Some(Decision::Applied),
            Verdict::Rejected { reason, .. } => Some(Decision::Refused(reason.code().to_string())),
            Verdict::Duplicate => Some(Decision::Duplicate),
            Verdict::Skipped => None,
        };
        let seen = e
            .shown
            .payload
            .as_ref()
            .zip(decision)
            .map(|(p, d)| (p.command.clone(), p.anchor.height, d));
        match self.decided.get(&e.index) {
            Some(first) => {
                let decision =
                    |d: &Option<(Command, u64, Decision)>| d.as_ref().map(|(_, _, d)| d.clone());
                if decision(first) != decision(&seen) {
                    self.violations.push(Violation::new(
                        Invariant::CommittedEntries,
                        format!(
                            "{f} decided index {} as {:?}, another facility as {:?}",
                            e.index,
                            decision(&seen),
                            decision(first)
                        ),
                    ));
                }
                return;
            }
            None => {
                self.decided.insert(e.index, seen);
            }
        }
        let mut next = *self.model_next.get_or_insert(e.index);
        while let Some(d) = self.decided.get(&next) {
            if let Some((cmd, anchor, decision)) = d {
                if let Err(e) = self.model.step_at(next, cmd, Some(*anchor), decision) {
                    self.violations
                        .push(Violation::new(Invariant::ReferenceModel, e));
                }
                if cmd.op == bulwark_actors::schedule::Op::Checkpoint
                    && *decision == Decision::Applied
                {
                    self.checkpoint_model.insert(next, self.model.assignments());
                }
            }
            next += 1;
        }
        self.model_next = Some(next);
        self.judge_checkpoints();
    }

    /// Checkpoint `index` as `f` backed it up, read straight from the
    /// backup's source (its tables, not the replica's code): its applied
    /// index and who is on which block. Judged against the reference model
    /// at that index, now or once the model gets there.
    pub fn on_checkpoint(&mut self, f: &FacilityId, index: u64, source: &redb::ReadTransaction) {
        let applied = replica_meta(source).map_or(0, |m| m.applied);
        let mut assigned = Vec::new();
        if let Ok(t) = source.open_table(SCHED_ASSIGN) {
            if let Ok(rows) = t.iter() {
                for (k, _) in rows.flatten() {
                    let key = k.value();
                    if let Some(cut) = key.iter().position(|&b| b == 0) {
                        assigned.push((
                            String::from_utf8_lossy(&key[..cut]).into_owned(),
                            String::from_utf8_lossy(&key[cut + 1..]).into_owned(),
                        ));
                    }
                }
            }
        }
        assigned.sort();
        self.checkpoint_seen
            .push((f.clone(), index, applied, assigned));
        self.judge_checkpoints();
    }

    fn judge_checkpoints(&mut self) {
        let model = &self.checkpoint_model;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.checkpoint_seen)
            .into_iter()
            .partition(|(_, index, _, _)| model.contains_key(index));
        self.checkpoint_seen = waiting;
        for (f, index, applied, assigned) in ready {
            self.checkpoints_checked += 1;
            let want = &self.checkpoint_model[&index];
            if applied != index {
                self.violations.push(Violation::new(
                    Invariant::CheckpointState,
                    format!("{f}'s backup of checkpoint {index} is applied through {applied}"),
                ));
            } else if assigned != *want {
                let extra: Vec<_> = assigned.iter().filter(|a| !want.contains(a)).collect();
                let missing: Vec<_> = want.iter().filter(|a| !assigned.contains(a)).collect();
                self.violations.push(Violation::new(
                    Invariant::CheckpointState,
                    format!(
                        "{f}'s backup of checkpoint {index} differs from the schedule there: \
                         {extra:?} extra, {missing:?} missing"
                    ),
                ));
            }
        }
    }

    /// Checkpoint backups judged against the reference model.
    pub fn checkpoints_checked(&self) -> u64 {
        self.checkpoints_checked
    }

    /// The reference schedule, having taken every committed command up to
    /// [`Model::last_index`].
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The index of the snapshot in `f`'s Raft store, read without
    /// writing (opening a `RaftStore` would bump its incarnation).
    fn snapshot_index(&self, f: &FacilityId) -> Option<u64> {
        let store = self.stores.get(f)?;
        let tx = store.database().begin_read().ok()?;
        let meta = tx.open_table(RAFT_META).ok()?;
        let raft = match meta.get(RAFT_SNAPSHOT_KEY).ok()? {
            Some(bytes) => codec::decode::<WireSnapshot>(bytes.value()).ok()?.index,
            None => 0,
        };
        // A snapshot whose rows the replica installed covers its entries
        // even before raft-rs records it (or when raft-rs refuses it).
        let installed = replica_meta(&tx).map_or(0, |m| m.installed);
        Some(raft.max(installed))
    }

    /// Validators in `liars` lie on purpose: their sends are not judged.
    pub fn set_liars(&mut self, liars: impl IntoIterator<Item = FacilityId>) {
        self.liars = liars.into_iter().collect();
    }

    /// A payload `from` put on the wire (the SimNet's tap): each of its
    /// own BFT votes must already be on its disk, as its vote row or as
    /// the final entry of that height (`VOTE_DURABLE`), and a Raft vote it
    /// grants must be in its hard state (`RAFT_VOTE_DURABLE`). Read from
    /// the tables directly, not through the validator's or RaftStore's code.
    pub fn on_wire(&mut self, from: &FacilityId, payload: &[u8]) {
        if !self.stores.contains_key(from) {
            return; // starting or stopping: not judged
        }
        let Ok(env) = codec::decode::<Envelope>(payload) else {
            return;
        };
        if env.to.actor == RAFT {
            let wire = codec::decode::<RaftWire>(&env.body);
            if let Ok(RaftWire::Forward { payload }) = &wire {
                self.check_forward(from, env.deadline_unix_ms, payload);
            }
            if let Ok(RaftWire::Raft(m)) = wire {
                if m.msg_type == MSG_REQUEST_VOTE_RESPONSE && !m.reject {
                    let hs = self.durable_db(from).and_then(hard_state_on_disk);
                    self.grants_checked += 1;
                    // A later term on disk is a later Ready, persisted in order.
                    let held = hs.is_some_and(|hs| {
                        hs.term > m.term || (hs.term == m.term && hs.vote == m.to)
                    });
                    if !held {
                        self.violations.push(Violation::new(
                            Invariant::RaftVoteDurable,
                            format!(
                                "{from} granted its vote in term {} to raft id {} while its disk held {hs:?}",
                                m.term, m.to
                            ),
                        ));
                    }
                }
            }
            return;
        }
        if env.to.actor != BFT || self.liars.contains(from) {
            return;
        }
        let Ok(BftWire::Votes(votes)) = codec::decode::<BftWire>(&env.body) else {
            return;
        };
        for vote in votes {
            let Ok(body) = codec::decode::<VoteBody>(&vote.body) else {
                continue;
            };
            if body.signer != *from {
                continue; // a relayed vote of another signer
            }
            let held = self
                .durable_db(from)
                .is_some_and(|db| vote_on_disk(db, &body, &vote.body));
            self.votes_checked += 1;
            if !held {
                self.violations.push(Violation::new(
                    Invariant::VoteDurable,
                    format!(
                        "{from} sent its vote at height {} before its disk held it",
                        body.height
                    ),
                ));
            }
        }
    }

    /// A client sends a write whose command key is `key` to `via` with
    /// `budget`: until its answer, a proposal `via` forwards for that key
    /// must end within it.
    pub fn on_budget(&mut self, key: IdempotencyKey, via: &FacilityId, budget: Duration) {
        let now = Instant::now();
        self.budgets.insert(key, (via.clone(), now, now + budget));
    }

    /// The client's attempt for `key` was answered: what is proposed for
    /// it from now on (the healer settling a provisional write, say) is no
    /// longer that request's work.
    pub fn on_answered(&mut self, key: &IdempotencyKey) {
        self.budgets.remove(key);
    }

    /// Facility `f`'s wall clock (the checker reads deadlines against it).
    pub fn on_clock(&mut self, f: &FacilityId, clock: VirtualClock) {
        self.clocks.insert(f.clone(), clock);
    }

    /// Facility `f`'s clock skew changed now.
    pub fn on_skew(&mut self, f: &FacilityId) {
        self.skewed_at.insert(f.clone(), Instant::now());
    }

    /// `DEADLINE_SHRINKS`: a proposal `from` forwards while its client's
    /// budgeted attempt there is in flight must carry a deadline, and what
    /// is left of it by `from`'s clock may not exceed what is left of the
    /// budget (1 ms for rounding). Not judged when `from`'s skew changed
    /// since the attempt began (the wall clock jumped under the deadline).
    fn check_forward(&mut self, from: &FacilityId, deadline: Option<u64>, payload: &[u8]) {
        let limit = ENTRY_LEN_MAX;
        let Ok(signed) = codec::decode_limited::<SignedProposal>(payload, limit) else {
            return;
        };
        let Ok(p) = codec::decode_limited::<EntryPayload>(&signed.body, limit) else {
            return;
        };
        let Some((via, began, until)) = self.budgets.get(&p.command.key) else {
            return;
        };
        let (began, until) = (*began, *until);
        if via != from || until <= Instant::now() {
            return; // not this attempt's facility, or its client gave up
        }
        if self
            .stores
            .get(from)
            .is_some_and(|store| provisional_on_disk(store, &p.command.key))
        {
            return; // the healer settling a provisional write: its own work
        }
        let Some(clock) = self.clocks.get(from) else {
            return;
        };
        if self.skewed_at.get(from).is_some_and(|&at| at >= began) {
            return;
        }
        self.forwards_checked += 1;
        let now = Instant::now();
        let left_client = until.saturating_duration_since(now).as_millis() as u64;
        let left_forward = deadline.map(|d| d.saturating_sub(clock.unix_ms()));
        if left_forward.is_none_or(|l| l > left_client + 1) {
            self.violations.push(Violation::new(
                Invariant::DeadlineShrinks,
                format!(
                    "{from} forwarded key {:?} with {left_forward:?} ms left; its client had {left_client} ms",
                    p.command.key
                ),
            ));
        }
    }

    /// Forwards checked by `DEADLINE_SHRINKS` so far.
    pub fn forwards_checked(&self) -> u64 {
        self.forwards_checked
    }

    /// Raft vote grants checked by `RAFT_VOTE_DURABLE` so far.
    pub fn grants_checked(&self) -> u64 {
        self.grants_checked
    }

    /// Own votes checked by `VOTE_DURABLE` so far.
    pub fn votes_checked(&self) -> u64 {
        self.votes_checked
    }

    /// Facility `f`'s node started with `store`.
    pub fn on_store(&mut self, f: &FacilityId, store: Store) {
        self.stores.insert(f.clone(), store);
    }

    /// Facility `f`'s node runs on `disk`: the wire checkers read what its
    /// last sync made durable.
    pub fn on_disk(&mut self, f: &FacilityId, disk: SimDisk) {
        self.disks.insert(f.clone(), (disk, None));
    }

    /// Facility `f`'s node stopped: its store must be let go.
    pub fn forget_store(&mut self, f: &FacilityId) {
        self.stores.remove(f);
        self.disks.remove(f);
    }

    /// What `f`'s disk holds durably: the image of its last sync when it
    /// runs on a simulated disk (opened again only after a new sync), else
    /// its live store.
    fn durable_db(&mut self, f: &FacilityId) -> Option<&redb::Database> {
        let Some((disk, image)) = self.disks.get_mut(f) else {
            return self.stores.get(f).map(|s| s.database());
        };
        let syncs = disk.syncs();
        if image.as_ref().is_none_or(|(at, _)| *at != syncs) {
            // A crash image: redb repairs it as a restart would.
            *image = redb::Database::builder()
                .create_with_backend(disk.durable_image())
                .ok()
                .map(|db| (syncs, db));
        }
        image.as_ref().map(|(_, db)| db)
    }

    /// Snapshots installed from a leader so far.
    pub fn snapshot_installs(&self) -> u64 {
        self.snapshot_installs
    }

    /// A status poll: one leader per term.
    pub fn on_status(&mut self, s: &RaftStatus) {
        if !s.is_leader {
            return;
        }
        match self.leaders.get(&s.term) {
            Some(l) if *l != s.facility => self.violations.push(Violation::new(
                Invariant::OneLeaderPerTerm,
                format!("two leaders in term {}: {l} and {}", s.term, s.facility),
            )),
            Some(_) => {}
            None => {
                self.leaders.insert(s.term, s.facility.clone());
            }
        }
    }

    /// Facility `f`'s node starts again: its applied sequence starts
    /// afresh after its snapshot.
    pub fn on_node_start(&mut self, f: &FacilityId) {
        self.last_applied.insert(f.clone(), 0);
        self.replays.insert(f.clone(), 0);
    }

    /// How often applied indices went backwards on `f` since its node
    /// started.
    pub fn replays(&self, f: &FacilityId) -> u64 {
        self.replays.get(f).copied().unwrap_or(0)
    }

    /// Applied indices went backwards on `f` only as often as its RaftPeer
    /// restarted or was rebuilt from its store (`raft_restarts` in its
    /// node's current run).
    pub fn check_replays(&mut self, f: &FacilityId, raft_restarts: u64) {
        let replays = self.replays.get(f).copied().unwrap_or(0);
        if replays > raft_restarts {
            self.violations.push(Violation::new(
                Invariant::CommittedEntries,
                format!(
                    "{f} applied an earlier index again {replays} times with {raft_restarts} RaftPeer restarts"
                ),
            ));
            self.replays.insert(f.clone(), raft_restarts);
        }
    }

    /// The broken invariants seen so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Committed indices seen applied.
    pub fn applied_len(&self) -> usize {
        self.applied.len()
    }

    /// Terms seen with a leader.
    pub fn terms_led(&self) -> usize {
        self.leaders.len()
    }
}

/// Checks every honest facility's final ledger entries as they appear.
#[derive(Debug)]
pub struct LedgerChecker {
    /// The validator set in force at the next height, by this checker's
    /// own account: the genesis set changed by each final validator-change
    /// entry (a key set or a facility removed), applied here by hand.
    keys: PublicKeys,
    /// Its epoch number.
    epoch: u64,
    /// The same account as epochs, for the entry checks
    /// (`ledger::verify_final`).
    epochs: bulwark_actors::epoch::Epochs,
    /// The chain as the honest facilities made it final: each entry's
    /// bytes and hash, by height - 1.
    chain: Vec<(Vec<u8>, Hash)>,
    /// The chain's commands, replayed through the reference model: each
    /// must apply, each key once.
    replay: Model,
    /// Per facility, the highest height checked.
    seen: BTreeMap<FacilityId, u64>,
}

impl LedgerChecker {
    /// A checker verifying signatures against `keys`.
    pub fn new(keys: PublicKeys) -> LedgerChecker {
        LedgerChecker {
            epochs: bulwark_actors::epoch::Epochs::new(
                bulwark_actors::epoch::ValidatorSet::genesis(keys.clone()),
            ),
            epoch: 0,
            keys,
            chain: Vec::new(),
            replay: Model::new(),
            seen: BTreeMap::new(),
        }
    }

    /// The height to read `f`'s final entries from next (the last one
    /// checked, read again to see that it is still there).
    pub fn from_height(&self, f: &FacilityId) -> u64 {
        self.seen.get(f).copied().unwrap_or(0).max(1)
    }

    /// The hash of the honest chain's entry at `height`, once seen.
    pub fn hash_at(&self, height: u64) -> Option<Hash> {
        let at = usize::try_from(height.checked_sub(1)?).ok()?;
        self.chain.get(at).map(|(_, h)| *h)
    }

    /// The final height of the honest chain so far.
    pub fn height(&self) -> u64 {
        self.chain.len() as u64
    }

    /// `rows`: facility `f`'s final entries from [`Self::from_height`], in
    /// order. Each must verify (entry, link, a certificate with a quorum of
    /// valid votes, the proposer's signature), be the entry every other
    /// honest facility made final at its height, and keep the rules.
    pub fn observe(&mut self, f: &FacilityId, rows: &[FinalEntry]) -> Result<(), Violation> {
        let from = self.from_height(f);
        let seen = self.seen.get(f).copied().unwrap_or(0);
        if seen >= 1 && rows.is_empty() {
            return Err(Violation::new(
                Invariant::FinalLedger,
                format!("{f} no longer holds its final entry at height {seen}"),
            ));
        }
        for (k, fin) in rows.iter().enumerate() {
            let height = from + k as u64;
            self.check_one(f, height, fin)?;
            self.seen.insert(f.clone(), height);
        }
        Ok(())
    }

    fn check_one(
        &mut self,
        f: &FacilityId,
        height: u64,
        fin: &FinalEntry,
    ) -> Result<(), Violation> {
        let broken = |d: String| Violation::new(Invariant::FinalLedger, d);
        let at = (height - 1) as usize;
        let prev = match at {
            0 => GENESIS,
            _ => self.chain[at - 1].1,
        };
        let (entry, hash, payload) = ledger::verify_final(fin, height, &prev, &self.epochs)
            .map_err(|e| broken(format!("{f}'s final entry does not verify: {e}")))?;
        if let Some((bytes, _)) = self.chain.get(at) {
            if *bytes != fin.entry {
                return Err(broken(format!(
                    "honest ledgers fork: {f} holds another entry at height {height}"
                )));
            }
            return Ok(());
        }
        let signers = certified_by(fin, height, &hash, &prev, &self.keys);
        // Past the table, every validator.
        let needed = QUORUM
            .get(self.keys.len())
            .copied()
            .unwrap_or(self.keys.len());
        if signers < needed {
            return Err(broken(format!(
                "{f}'s final entry at height {height} has {signers} valid distinct signers of the {needed} needed among {}",
                self.keys.len()
            )));
        }
        self.replay
            .step(entry.raft_index, &payload.command, &Decision::Applied)
            .map_err(|e| {
                Violation::new(
                    Invariant::ReferenceModel,
                    format!("{f}'s final entry at height {height}: {e}"),
                )
            })?;
        self.chain.push((fin.entry.clone(), hash));
        if let bulwark_actors::schedule::Op::Validator(c) = &payload.command.op {
            let mut next: BTreeMap<FacilityId, ed25519_dalek::VerifyingKey> = self
                .keys
                .facilities()
                .map(|g| (g.clone(), *self.keys.get(g).expect("listed")))
                .collect();
            match &c.key {
                Some(k) => {
                    let key = ed25519_dalek::VerifyingKey::from_bytes(&k.0).map_err(|e| {
                        broken(format!(
                            "final validator change at {height} names no key: {e}"
                        ))
                    })?;
                    next.insert(c.facility.clone(), key);
                }
                None => {
                    next.remove(&c.facility);
                }
            }
            self.keys = PublicKeys::new(next);
            self.epoch += 1;
            let set =
                bulwark_actors::epoch::ValidatorSet::new(self.epoch, height + 1, self.keys.clone());
            self.epochs
                .insert(std::sync::Arc::new(set))
                .map_err(|e| broken(format!("epoch at {height}: {e}")))?;
        }
        Ok(())
    }

    /// Validator-set changes seen final so far.
    pub fn epochs_seen(&self) -> u64 {
        self.epoch
    }
}

/// Votes that make an entry final among `n` validators, written out by
/// hand (⌈(n+f+1)/2⌉ with f = ⌊(n−1)/3⌋ faults tolerated): index `n`.
/// The checkers count against this table, never against the
/// implementation's `quorum`.
pub const QUORUM: [usize; 11] = [1, 1, 2, 2, 3, 4, 4, 5, 6, 6, 7];

/// Distinct facilities with a valid vote in `fin`'s certificate for
/// (`height`, `hash`, `prev`), counted here: each vote's body decoded, its
/// fields compared, its signature checked against its signer's key.
pub fn certified_by(
    fin: &FinalEntry,
    height: u64,
    hash: &Hash,
    prev: &Hash,
    keys: &PublicKeys,
) -> usize {
    let mut signers = std::collections::BTreeSet::new();
    for v in &fin.cert.votes {
        let Ok(body) = codec::decode::<VoteBody>(&v.body) else {
            continue;
        };
        let same = body.height == height && body.hash == *hash && body.prev == *prev;
        if same
            && keys
                .verify(&body.signer, Domain::Vote, &v.body, &v.sig)
                .is_ok()
        {
            signers.insert(body.signer);
        }
    }
    signers.len()
}

/// Checks the schedules the facilities hold.
#[derive(Debug, Default)]
pub struct ScheduleChecker {
    /// last applied command index -> (digest, the first facility seen).
    digests: BTreeMap<u64, ([u8; 32], FacilityId)>,
}

impl ScheduleChecker {
    /// Facility `f`'s schedule, having applied commands up to
    /// `last_index`: its own invariants, and the same schedule as any
    /// facility seen at that index.
    pub fn observe(
        &mut self,
        f: &FacilityId,
        last_index: u64,
        digest: [u8; 32],
        invariants: Result<(), String>,
    ) -> Result<(), Violation> {
        invariants.map_err(|e| Violation::new(Invariant::ScheduleRules, format!("{f}: {e}")))?;
        match self.digests.get(&last_index) {
            Some((d, first)) if *d != digest => Err(Violation::new(
                Invariant::ScheduleRules,
                format!(
                    "schedules diverge: {f} and {first} applied up to index {last_index} and hold different schedules"
                ),
            )),
            Some(_) => Ok(()),
            None => {
                self.digests.insert(last_index, (digest, f.clone()));
                Ok(())
            }
        }
    }

    /// The highest index seen and its digest.
    pub fn latest(&self) -> Option<(u64, [u8; 32])> {
        self.digests.last_key_value().map(|(i, (d, _))| (*i, *d))
    }

    /// The digest any facility held after applying up to `last_index`.
    pub fn digest_at(&self, last_index: u64) -> Option<[u8; 32]> {
        self.digests.get(&last_index).map(|(d, _)| *d)
    }
}

/// A bulkhead pool never lends its reserve, never hands out more of its
/// own units than it owns, and every unit borrowed was lent by the flex
/// pool or another pool ([`FLEX`]'s status counts its units out as both
/// allocated and lent).
pub fn check_pools(f: &FacilityId, pools: &[PoolStatus]) -> Result<(), Violation> {
    let broken = |d: String| {
        Err(Violation::new(
            Invariant::BulkheadReserve,
            format!("{f}: {d}"),
        ))
    };
    let (mut borrowed, mut lent) = (0u64, 0u64);
    for p in pools {
        lent += u64::from(p.lent);
        if p.name == FLEX {
            if p.lent > p.capacity {
                return broken(format!("the flex pool lent {} of {}", p.lent, p.capacity));
            }
            continue;
        }
        borrowed += u64::from(p.borrowed);
        let lendable = p.capacity.saturating_sub(p.reserved);
        if p.lent > lendable {
            return broken(format!(
                "pool {} lent {} of capacity {} with {} reserved",
                p.name, p.lent, p.capacity, p.reserved
            ));
        }
        let own_used = p.allocated.saturating_sub(p.borrowed);
        if own_used + p.lent > p.capacity || p.borrowed > p.allocated {
            return broken(format!(
                "pool {} allocated {} (borrowed {}) and lent {} of {}",
                p.name, p.allocated, p.borrowed, p.lent, p.capacity
            ));
        }
    }
    if borrowed != lent {
        return broken(format!("{borrowed} units borrowed but {lent} lent"));
    }
    Ok(())
}

/// Stamp `a` is later than `b`: wall clock first, then the logical
/// counter, then the node id as the tie-break (written out here, not the
/// implementation's ordering).
fn stamp_later(a: &Hlc, b: &Hlc) -> bool {
    (a.wall_ms, a.logical, a.node) > (b.wall_ms, b.logical, b.node)
}

/// Each conflict `f`'s healer settled by last write wins over a filled
/// block went to the later stamp: the provisional change won only if its
/// stamp is later than every holder's, and lost to a holder only if not.
pub fn check_healer(f: &FacilityId, reports: &[Report]) -> Result<(), Violation> {
    for r in reports
        .iter()
        .filter(|r| r.policy == ConflictPolicy::LastWriteWins)
    {
        for item in &r.items {
            let Some(Conflict::BlockFilled { holders, block }) = &item.conflict else {
                continue;
            };
            let Some(latest) =
                holders
                    .iter()
                    .map(|h| h.stamp)
                    .reduce(|a, b| if stamp_later(&b, &a) { b } else { a })
            else {
                continue;
            };
            let won = match &item.resolution {
                Resolution::Won { .. } => true,
                Resolution::Superseded { winner } if !winner.starts_with("rule") => false,
                _ => continue,
            };
            if won != stamp_later(&item.hlc, &latest) {
                return Err(Violation::new(
                    Invariant::HealerChoice,
                    format!(
                        "{f}'s healer let provisional change {} ({:?}) {} on {block} against a holder stamped {latest:?}",
                        item.id,
                        item.hlc,
                        if won { "win" } else { "lose" }
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A vote's body, if its signature verifies under `signer`'s key.
fn signed_by(v: &ledger::Vote, signer: &FacilityId, keys: &PublicKeys) -> Option<VoteBody> {
    let body: VoteBody = codec::decode(&v.body).ok()?;
    keys.verify(signer, Domain::Vote, &v.body, &v.sig).ok()?;
    Some(body)
}

/// The honest facilities' `evidence` names `liar`, whose lie is `lie`,
/// with a proof that holds: for equivocation, two votes both signed by the
/// liar at one height for different entries; for forged votes, a vote in
/// another's name whose signature does not verify under that one's key.
/// Other lies prove nothing by themselves and are not judged.
pub fn check_liar_named(
    liar: &FacilityId,
    lie: bulwark_actors::bft::Behaviour,
    evidence: &[Evidence],
    keys: &PublicKeys,
) -> Result<(), Violation> {
    use bulwark_actors::bft::Behaviour;
    let proven = |e: &Evidence| match (&e.kind, lie) {
        (Kind::Equivocation { first, second, .. }, Behaviour::Equivocate) => {
            match (signed_by(first, liar, keys), signed_by(second, liar, keys)) {
                (Some(a), Some(b)) => {
                    a.signer == *liar
                        && b.signer == *liar
                        && a.height == b.height
                        && a.hash != b.hash
                }
                _ => false,
            }
        }
        (Kind::BadVoteSignature { claimed, vote }, Behaviour::ForgeVotes) => {
            claimed != liar && signed_by(vote, claimed, keys).is_none()
        }
        _ => false,
    };
    let judged = matches!(lie, Behaviour::Equivocate | Behaviour::ForgeVotes);
    if !judged || evidence.iter().any(|e| e.offender == *liar && proven(e)) {
        return Ok(());
    }
    Err(Violation::new(
        Invariant::LiarNamed,
        format!("no honest facility holds a proof that {liar} lied ({lie:?})"),
    ))
}

/// Evidence recorded by an honest validator proves lying only against
/// facilities not in `honest`. Evidence that an honest facility can earn
/// under faults is not a proof of lying and is not judged: a proposal the
/// rules refused (clients ask for double bookings), a stale vote resent
/// after a restart, missing votes (a heuristic), a timestamp ahead.
pub fn check_blame(
    at: &FacilityId,
    evidence: &[Evidence],
    honest: &[FacilityId],
) -> Result<(), Violation> {
    for e in evidence {
        let proof = match &e.kind {
            Kind::Equivocation { .. } | Kind::BadVoteSignature { .. } => true,
            Kind::VoteForInvalid { .. } => true,
            Kind::BadProposal { reason, .. } => reason == "FORGED_SIGNATURE",
            _ => false,
        };
        if proof && honest.contains(&e.offender) {
            return Err(Violation::new(
                Invariant::HonestBlamed,
                format!(
                    "{at} holds {} evidence against honest {}",
                    e.kind.code(),
                    e.offender
                ),
            ));
        }
    }
    Ok(())
}

/// What clients were told about their writes, by idempotency key: once a
/// write is answered as committed (200), every later answer for its key,
/// at any facility, is a 200 with the same effect and the same log index
/// (the first answer again, kept by the facility, or a retry through the
/// log marked `duplicate` that answers where the key first applied), or
/// an answer that decides nothing (202, 429, 503, unreachable, or a 409
/// judged in a partition, which names it).
#[derive(Debug, Default)]
pub struct RetryChecker {
    /// key -> (effect, index) of the first committed answer.
    committed: BTreeMap<String, (String, u64)>,
}

impl RetryChecker {
    /// `facility` answered the write under `key` with `status` and `body`.
    pub fn on_answer(
        &mut self,
        key: &str,
        facility: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), Violation> {
        let effect = body["effect"].as_str().unwrap_or_default().to_string();
        let index = body["index"].as_u64().unwrap_or(0);
        let Some((first_effect, first_index)) = self.committed.get(key) else {
            if status == 200 {
                self.committed.insert(key.to_string(), (effect, index));
            }
            return Ok(());
        };
        let broken = |what: String| {
            Err(Violation::new(
                Invariant::Idempotency,
                format!("{facility} answered a retry of committed write {key} {what}"),
            ))
        };
        match status {
            // The first answer again (kept by the facility), or a retry
            // that went through the log and was answered as one: either
            // way at the index where the key first applied.
            200 if index != *first_index => broken(format!(
                "at index {index} (duplicate: {}), first at {first_index}",
                body["duplicate"]
            )),
            200 if effect != *first_effect => broken(format!(
                "with {effect} at index {index}, first {first_effect} at {first_index}"
            )),
            200 | 202 | 429 | 503 => Ok(()),
            // A refusal judged in a partition decides nothing for the key.
            409 if body["partition"].is_string() => Ok(()),
            _ => broken(format!("with {status} {}", body["code"])),
        }
    }
}

/// Linearizable reads see every write acknowledged before they began.
#[derive(Debug, Default)]
pub struct ReadChecker {
    /// The highest log index of a write acknowledged as committed.
    acked_index: u64,
}

impl ReadChecker {
    /// A write was acknowledged as committed at `index`.
    pub fn on_ack(&mut self, index: u64) {
        self.acked_index = self.acked_index.max(index);
    }

    /// What a read starting now must reflect.
    pub fn floor(&self) -> u64 {
        self.acked_index
    }

    /// A linearizable read that began when [`Self::floor`] was `floor`
    /// was served from a schedule applied up to `applied_index`.
    pub fn check(&self, facility: &str, floor: u64, applied_index: u64) -> Result<(), Violation> {
        if applied_index < floor {
            return Err(Violation::new(
                Invariant::LinearizableRead,
                format!(
                    "{facility} served a read at index {applied_index}, but a write at {floor} was acknowledged before it began"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_actors::ledger::Verdict;

    fn f(s: &str) -> FacilityId {
        s.parse().unwrap()
    }

    /// Every answer for a committed key: same effect, same index, marked
    /// duplicate or not; a duplicate at its own index (what facilities
    /// answered before the first index was kept) is caught.
    #[test]
    fn a_retry_answers_the_first_index() {
        let mut c = RetryChecker::default();
        let first = serde_json::json!({"effect": "assigned", "index": 7});
        c.on_answer("k", "alpha", 200, &first).unwrap();
        let same = serde_json::json!({"effect": "assigned", "index": 7, "duplicate": true});
        c.on_answer("k", "bravo", 200, &same).unwrap();
        c.on_answer("k", "bravo", 503, &serde_json::json!({"code": "NO_LEADER"}))
            .unwrap();
        let own_index = serde_json::json!({"effect": "assigned", "index": 12, "duplicate": true});
        assert!(c.on_answer("k", "charlie", 200, &own_index).is_err());
        let applied_twice = serde_json::json!({"effect": "assigned", "index": 12});
        assert!(c.on_answer("k", "charlie", 200, &applied_twice).is_err());
        let other = serde_json::json!({"effect": "swapped", "index": 7});
        assert!(c.on_answer("k", "charlie", 200, &other).is_err());
    }

    fn leading(who: &str, term: u64) -> RaftStatus {
        RaftStatus {
            facility: f(who),
            leader: Some(f(who)),
            is_leader: true,
            term,
            commit: 0,
            applied: 0,
            voters: vec![],
            joint: false,
            fault: None,
            vote_fence: None,
            proposes: true,
        }
    }

    fn entry(index: u64, term: u64, byte: u8) -> AppliedEntry {
        AppliedEntry {
            index,
            term,
            hash: [byte; 32],
            shown: bulwark_actors::replica::Shown {
                payload: None,
                verdict: Verdict::Skipped,
                epoch: None,
            },
            leader: None,
        }
    }

    fn kinds(o: &RaftObserver) -> Vec<Invariant> {
        o.violations().iter().map(|v| v.invariant).collect()
    }

    #[test]
    fn the_raft_observer_catches_two_leaders_in_a_term() {
        let mut o = RaftObserver::default();
        o.on_status(&leading("alpha", 3));
        o.on_status(&leading("alpha", 3));
        o.on_status(&leading("bravo", 4));
        assert!(o.violations().is_empty());
        o.on_status(&leading("bravo", 3));
        assert_eq!(kinds(&o), [Invariant::OneLeaderPerTerm]);
    }

    #[test]
    fn the_raft_observer_catches_changed_skipped_and_reordered_entries() {
        let mut o = RaftObserver::default();
        for i in 1..=3 {
            o.on_applied(&f("alpha"), &entry(i, 1, i as u8));
            o.on_applied(&f("bravo"), &entry(i, 1, i as u8));
        }
        assert!(o.violations().is_empty());
        // Another entry at a committed index.
        o.on_applied(&f("charlie"), &entry(1, 2, 9));
        assert_eq!(kinds(&o), [Invariant::CommittedEntries]);
        // An index skipped.
        o.on_applied(&f("alpha"), &entry(5, 1, 5));
        assert_eq!(o.violations().len(), 2);
        // Applied again from its snapshot: fine once per RaftPeer restart.
        o.on_applied(&f("bravo"), &entry(2, 1, 2));
        o.check_replays(&f("bravo"), 1);
        assert_eq!(o.violations().len(), 2);
        o.on_applied(&f("bravo"), &entry(1, 1, 1));
        o.check_replays(&f("bravo"), 1);
        assert_eq!(o.violations().len(), 3, "{:?}", o.violations());
        // A new node starts its sequence afresh.
        o.on_node_start(&f("bravo"));
        o.on_applied(&f("bravo"), &entry(1, 1, 1));
        o.check_replays(&f("bravo"), 0);
        assert_eq!(o.violations().len(), 3);
    }

    #[test]
    fn the_schedule_checker_catches_broken_rules_and_divergence() {
        let mut c = ScheduleChecker::default();
        c.observe(&f("alpha"), 4, [1; 32], Ok(())).unwrap();
        c.observe(&f("bravo"), 4, [1; 32], Ok(())).unwrap();
        c.observe(&f("bravo"), 5, [2; 32], Ok(())).unwrap();
        let e = c.observe(&f("charlie"), 4, [3; 32], Ok(())).unwrap_err();
        assert_eq!(e.invariant, Invariant::ScheduleRules);
        let e = c
            .observe(&f("alpha"), 6, [4; 32], Err("b1 has 3 of 2 people".into()))
            .unwrap_err();
        assert!(e.detail.contains("b1 has 3 of 2"), "{e}");
        assert_eq!(c.latest(), Some((5, [2; 32])));
    }

    #[test]
    fn the_pool_check_catches_a_lent_reserve() {
        let pool = |name: &str, lent, allocated, borrowed| PoolStatus {
            name: name.into(),
            capacity: 4,
            reserved: if name == FLEX { 0 } else { 2 },
            allocated,
            borrowed,
            lent,
            utilization: 0.0,
            rejections: 0,
        };
        let a = f("alpha");
        // reads lent 2 to writes, flex lent 1 to writes.
        let good = [
            pool("reads", 2, 2, 0),
            pool("writes", 0, 7, 3),
            pool(FLEX, 1, 1, 0),
        ];
        check_pools(&a, &good).unwrap();
        let e = check_pools(&a, &[pool("reads", 3, 0, 0), pool("writes", 0, 3, 3)]).unwrap_err();
        assert_eq!(e.invariant, Invariant::BulkheadReserve);
        assert!(e.detail.contains("2 reserved"), "{e}");
        let over = [pool("reads", 2, 3, 0), pool("writes", 0, 2, 2)];
        assert!(check_pools(&a, &over).is_err(), "own units over capacity");
        let unlent = [pool("writes", 0, 3, 1)];
        assert!(
            check_pools(&a, &unlent).is_err(),
            "a unit borrowed from nobody"
        );
    }

    #[test]
    fn the_blame_check_catches_proof_against_an_honest_facility() {
        let ev = |offender: &str, kind: Kind| Evidence {
            offender: f(offender),
            at_unix_ms: 0,
            kind,
        };
        let refused = || Kind::BadProposal {
            reason: "DOUBLE_ASSIGN".into(),
            raft_index: 3,
            proposal: vec![],
        };
        let invalid = || Kind::VoteForInvalid {
            reason: "DOUBLE_ASSIGN".into(),
            vote: bulwark_actors::ledger::Vote {
                body: vec![],
                sig: bulwark_actors::keys::Sig([0; 64]),
            },
        };
        let honest = [f("alpha"), f("bravo")];
        let fine = [ev("alpha", refused()), ev("delta", invalid())];
        check_blame(&f("alpha"), &fine, &honest).unwrap();
        let e = check_blame(&f("alpha"), &[ev("bravo", invalid())], &honest).unwrap_err();
        assert_eq!(e.invariant, Invariant::HonestBlamed);
    }

    #[test]
    fn the_healer_check_recomputes_last_write_wins() {
        use bulwark_actors::cap::heal::{Holder, Item};
        let stamp = |wall_ms| Hlc {
            wall_ms,
            logical: 0,
            node: 1,
        };
        let report = |hlc, resolution| Report {
            round: 1,
            facility: f("alpha"),
            policy: ConflictPolicy::LastWriteWins,
            at_unix_ms: 0,
            items: vec![Item {
                id: 7,
                hlc,
                operation: "emergency_coverage".into(),
                target: None,
                conflict: Some(Conflict::BlockFilled {
                    block: "b1".parse().unwrap(),
                    holders: vec![
                        Holder {
                            person: "p1".parse().unwrap(),
                            stamp: stamp(5),
                        },
                        Holder {
                            person: "p2".parse().unwrap(),
                            stamp: stamp(9),
                        },
                    ],
                }),
                resolution,
            }],
        };
        let won = || Resolution::Won {
            index: 3,
            height: None,
            replaced: vec![],
        };
        let lost = || Resolution::Superseded {
            winner: "p2 on b1".into(),
        };
        check_healer(&f("alpha"), &[report(stamp(10), won())]).unwrap();
        check_healer(&f("alpha"), &[report(stamp(7), lost())]).unwrap();
        // The earlier change won over the latest holder: caught.
        let e = check_healer(&f("alpha"), &[report(stamp(7), won())]).unwrap_err();
        assert_eq!(e.invariant, Invariant::HealerChoice);
        assert!(check_healer(&f("alpha"), &[report(stamp(10), lost())]).is_err());
    }

    #[test]
    fn the_quorum_table_is_the_formula() {
        for (n, &q) in QUORUM.iter().enumerate().skip(1) {
            let f = (n - 1) / 3;
            // Smallest q with 2q > n + f: any two quorums share f + 1
            // signers, so an honest one.
            let smallest = (1..=n).find(|q| 2 * q > n + f).unwrap();
            assert_eq!(q, smallest, "n = {n}");
        }
        assert_eq!(&QUORUM[3..=7], &[2, 3, 4, 4, 5]);
    }

    fn decided(index: u64, command: Option<Command>, verdict: Verdict) -> AppliedEntry {
        AppliedEntry {
            index,
            term: 1,
            hash: [index as u8; 32],
            shown: bulwark_actors::replica::Shown {
                payload: command.map(|command| bulwark_actors::raft::EntryPayload {
                    proposer: f("alpha"),
                    seq: index,
                    anchor: Default::default(),
                    command,
                }),
                verdict,
                epoch: None,
            },
            leader: None,
        }
    }

    fn admitted() -> Verdict {
        Verdict::Admitted(bulwark_actors::ledger::Link {
            entry: bulwark_actors::ledger::LedgerEntry {
                height: 1,
                prev: GENESIS,
                raft_index: 1,
                raft_term: 1,
                proposer: f("alpha"),
                at_unix_ms: 0,
                proposal: vec![],
            },
            bytes: vec![],
            hash: [0; 32],
        })
    }

    fn add_person(key: u8, id: &str) -> Command {
        Command {
            key: bulwark_actors::schedule::IdempotencyKey([key; 16]),
            issued_by: f("alpha"),
            at_unix_ms: 0,
            hlc: bulwark_actors::hlc::Hlc::ZERO,
            op: bulwark_actors::schedule::Op::AddPerson(bulwark_actors::schedule::Person {
                id: id.parse().unwrap(),
                name: "P".into(),
                role: bulwark_actors::schedule::Role::Faculty,
            }),
        }
    }

    #[test]
    fn the_raft_observer_judges_decisions_by_the_reference_model() {
        let refused = |code: &str| Verdict::Rejected {
            reason: match code {
                "ALREADY_EXISTS" => bulwark_actors::ledger::Reason::Rule(
                    bulwark_actors::schedule::Rule::AlreadyExists,
                ),
                _ => bulwark_actors::ledger::Reason::DoubleAssign,
            },
            proposer: f("alpha"),
            shadow: None,
        };
        let mut o = RaftObserver::default();
        o.on_applied(&f("alpha"), &decided(1, None, Verdict::Skipped));
        o.on_applied(
            &f("alpha"),
            &decided(2, Some(add_person(1, "p")), Verdict::Duplicate),
        );
        // A retry answered before its first try was decided.
        assert_eq!(kinds(&o), [Invariant::ReferenceModel]);
        let mut o = RaftObserver::default();
        let add = add_person(1, "p");
        o.on_applied(&f("alpha"), &decided(2, Some(add.clone()), admitted()));
        o.on_applied(
            &f("alpha"),
            &decided(3, Some(add.clone()), Verdict::Duplicate),
        );
        o.on_applied(
            &f("alpha"),
            &decided(4, Some(add_person(2, "p")), refused("ALREADY_EXISTS")),
        );
        assert!(o.violations().is_empty(), "{:?}", o.violations());
        // The same person added again under a new key and applied.
        o.on_applied(
            &f("alpha"),
            &decided(5, Some(add_person(3, "p")), admitted()),
        );
        assert_eq!(kinds(&o), [Invariant::ReferenceModel]);
        // Another facility decides index 4 otherwise.
        o.on_applied(
            &f("bravo"),
            &decided(4, Some(add_person(2, "p")), refused("DOUBLE_ASSIGN")),
        );
        assert_eq!(kinds(&o)[1], Invariant::CommittedEntries);
    }

    #[test]
    fn the_read_checker_catches_a_read_missing_an_acknowledged_write() {
        let mut r = ReadChecker::default();
        r.on_ack(7);
        r.on_ack(5);
        assert_eq!(r.floor(), 7);
        r.check("alpha", 7, 7).unwrap();
        let e = r.check("alpha", 7, 6).unwrap_err();
        assert_eq!(e.invariant, Invariant::LinearizableRead);
    }

    /// VOTE_DURABLE fails for an own vote the signer's disk does not hold,
    /// and passes once the vote row (or the final entry) is there; relayed
    /// votes and liars are not judged.
    #[test]
    fn a_vote_on_the_wire_before_the_disk_is_a_violation() {
        use bulwark_actors::keys::Keyring;
        use bulwark_runtime::{Address, Kind as EnvKind};
        let ids = [f("alpha"), f("bravo")];
        let rings = Keyring::deterministic(&ids, 7);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), "alpha")
            .unwrap()
            .store;
        let body = VoteBody {
            signer: f("alpha"),
            height: 3,
            hash: [9; 32],
            prev: [8; 32],
        };
        let vote = Vote::sign(&rings[&ids[0]], &body).unwrap();
        let relayed = Vote::sign(
            &rings[&ids[1]],
            &VoteBody {
                signer: f("bravo"),
                ..body.clone()
            },
        )
        .unwrap();
        let wire = |from: &FacilityId, votes: Vec<Vote>| {
            codec::encode(&Envelope {
                from: from.clone(),
                to: Address::new(f("charlie"), BFT),
                trace_id: 1,
                deadline_unix_ms: None,
                kind: EnvKind::OneWay,
                body: codec::encode(&BftWire::Votes(votes)).unwrap(),
            })
            .unwrap()
        };
        let mut obs = RaftObserver::default();
        obs.on_store(&ids[0], store.clone());
        obs.on_store(&ids[1], store.clone());
        obs.set_liars([f("bravo")]);
        // A relayed vote, and a liar's own: not judged.
        obs.on_wire(&ids[0], &wire(&ids[0], vec![relayed.clone()]));
        obs.on_wire(&ids[1], &wire(&ids[1], vec![relayed]));
        assert!(obs.violations().is_empty());
        assert_eq!(obs.votes_checked(), 0);
        // Its own vote, not on its disk: caught.
        obs.on_wire(&ids[0], &wire(&ids[0], vec![vote.clone()]));
        assert_eq!(obs.violations().len(), 1);
        assert_eq!(obs.violations()[0].invariant, Invariant::VoteDurable);
        // Written (the row the validator writes), it passes.
        let tx = store.database().begin_write().unwrap();
        {
            let mut t = tx.open_table(BFT_VOTES).unwrap();
            t.insert(3, codec::encode(&vote).unwrap().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
        obs.on_wire(&ids[0], &wire(&ids[0], vec![vote.clone()]));
        assert_eq!(obs.violations().len(), 1);
        assert_eq!(obs.votes_checked(), 2);
        // Another vote body at that height in the row does not count.
        let other = Vote::sign(
            &rings[&ids[0]],
            &VoteBody {
                hash: [1; 32],
                ..body
            },
        )
        .unwrap();
        obs.on_wire(&ids[0], &wire(&ids[0], vec![other]));
        assert_eq!(obs.violations().len(), 2);
    }

    /// On a simulated disk, VOTE_DURABLE judges what a power loss would
    /// leave: a vote committed without an fsync (visible in the store) is
    /// a violation until a durable commit covers it.
    #[test]
    fn a_vote_committed_but_not_synced_is_a_violation() {
        use bulwark_actors::keys::Keyring;
        use bulwark_runtime::{Address, Kind as EnvKind};
        let alpha = f("alpha");
        let rings = Keyring::deterministic(std::slice::from_ref(&alpha), 7);
        let disk = SimDisk::new();
        let store = Store::open_backend(disk.clone(), std::path::Path::new("sim"), "alpha")
            .unwrap()
            .store;
        let body = VoteBody {
            signer: alpha.clone(),
            height: 3,
            hash: [9; 32],
            prev: [8; 32],
        };
        let vote = Vote::sign(&rings[&alpha], &body).unwrap();
        let wire = codec::encode(&Envelope {
            from: alpha.clone(),
            to: Address::new(f("bravo"), BFT),
            trace_id: 1,
            deadline_unix_ms: None,
            kind: EnvKind::OneWay,
            body: codec::encode(&BftWire::Votes(vec![vote.clone()])).unwrap(),
        })
        .unwrap();
        let mut obs = RaftObserver::default();
        obs.on_store(&alpha, store.clone());
        obs.on_disk(&alpha, disk.clone());
        let tx = store.begin_write_deferred().unwrap();
        {
            let mut t = tx.open_table(BFT_VOTES).unwrap();
            t.insert(3, codec::encode(&vote).unwrap().as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
        obs.on_wire(&alpha, &wire);
        assert_eq!(obs.violations().len(), 1, "visible but not synced");
        assert_eq!(obs.violations()[0].invariant, Invariant::VoteDurable);
        store.sync().unwrap();
        obs.on_wire(&alpha, &wire);
        assert_eq!(obs.violations().len(), 1, "synced: held");
        assert_eq!(obs.votes_checked(), 2);
    }

    /// RAFT_VOTE_DURABLE fails for a grant the voter's hard state does not
    /// hold (no vote, another candidate, an older term), and passes for one
    /// it does; refusals are not judged.
    #[test]
    fn a_raft_vote_granted_before_the_hard_state_is_a_violation() {
        use bulwark_actors::raft::wire::WireMessage;
        use bulwark_runtime::{Address, Kind as EnvKind};
        assert_eq!(
            MSG_REQUEST_VOTE_RESPONSE,
            raft::eraftpb::MessageType::MsgRequestVoteResponse as u8
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), "alpha")
            .unwrap()
            .store;
        let set_hs = |term: u64, vote: u64| {
            let tx = store.database().begin_write().unwrap();
            {
                let mut t = tx.open_table(RAFT_META).unwrap();
                let hs = WireHardState {
                    term,
                    vote,
                    commit: 0,
                };
                t.insert(RAFT_HARD_STATE_KEY, codec::encode(&hs).unwrap().as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        };
        let grant = |term: u64, to: u64, reject: bool| {
            let m = WireMessage {
                msg_type: MSG_REQUEST_VOTE_RESPONSE,
                to,
                from: 1,
                term,
                log_term: 0,
                index: 0,
                entries: Vec::new(),
                commit: 0,
                commit_term: 0,
                snapshot: None,
                request_snapshot: 0,
                reject,
                reject_hint: 0,
                context: Vec::new(),
                priority: 0,
            };
            codec::encode(&Envelope {
                from: f("alpha"),
                to: Address::new(f("bravo"), RAFT),
                trace_id: 1,
                deadline_unix_ms: None,
                kind: EnvKind::OneWay,
                body: codec::encode(&RaftWire::Raft(Box::new(m))).unwrap(),
            })
            .unwrap()
        };
        let mut obs = RaftObserver::default();
        obs.on_store(&f("alpha"), store.clone());
        set_hs(5, 0);
        obs.on_wire(&f("alpha"), &grant(5, 2, true));
        assert!(obs.violations().is_empty(), "a refusal is not judged");
        obs.on_wire(&f("alpha"), &grant(5, 2, false));
        set_hs(5, 3);
        obs.on_wire(&f("alpha"), &grant(5, 2, false));
        set_hs(4, 2);
        obs.on_wire(&f("alpha"), &grant(5, 2, false));
        assert_eq!(obs.violations().len(), 3);
        assert!(obs
            .violations()
            .iter()
            .all(|v| v.invariant == Invariant::RaftVoteDurable));
        set_hs(5, 2);
        obs.on_wire(&f("alpha"), &grant(5, 2, false));
        set_hs(6, 0);
        obs.on_wire(&f("alpha"), &grant(5, 2, false));
        assert_eq!(obs.violations().len(), 3);
        assert_eq!(obs.grants_checked(), 5);
    }
}

#[cfg(test)]
mod epoch_tests {
    //! The ledger checker follows validator epochs by its own account: a
    //! chain where alpha rotates its key passes, and one whose later
    //! certificate still carries alpha's old key is caught.

    use super::*;
    use bulwark_actors::epoch::{ValidatorChange, ValidatorSet, VoteKey};
    use bulwark_actors::keys::Keyring;
    use bulwark_actors::ledger::{admit, Certificate, Link, SignedProposal, Verdict};
    use bulwark_actors::raft::EntryPayload;
    use bulwark_actors::schedule::{
        Command, IdempotencyKey, Person, PersonId, Role, ScheduleState,
    };
    use ed25519_dalek::SigningKey;

    fn ids() -> Vec<FacilityId> {
        ["alpha", "bravo", "charlie"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    fn old(f: &FacilityId) -> SigningKey {
        Keyring::deterministic_secret(f, 5)
    }

    fn genesis() -> PublicKeys {
        PublicKeys::new(ids().iter().map(|f| (f.clone(), old(f).verifying_key())))
    }

    fn entry(
        state: &mut ScheduleState,
        by: &FacilityId,
        key: &SigningKey,
        i: u64,
        op: bulwark_actors::schedule::Op,
    ) -> Link {
        let payload = EntryPayload {
            proposer: by.clone(),
            seq: i,
            anchor: state.chain().anchor(),
            command: Command {
                key: IdempotencyKey([i as u8; 16]),
                issued_by: by.clone(),
                at_unix_ms: 1_000 + i,
                hlc: bulwark_actors::hlc::Hlc::ZERO,
                op,
            },
        };
        let body = codec::encode(&payload).unwrap();
        let ring = Keyring::holding(by.clone(), vec![key.clone()], genesis());
        let sig = ring.sign(Domain::Proposal, &body);
        let data = codec::encode(&SignedProposal { body, sig }).unwrap();
        match admit(state, &ValidatorSet::genesis(genesis()), i, 1, &data).verdict {
            Verdict::Admitted(l) => l,
            other => panic!("{other:?}"),
        }
    }

    fn cert(l: &Link, by: &[(&FacilityId, &SigningKey)]) -> FinalEntry {
        let votes = by
            .iter()
            .map(|(f, k)| {
                let body = VoteBody {
                    signer: (*f).clone(),
                    height: l.entry.height,
                    hash: l.hash,
                    prev: l.entry.prev,
                };
                let ring = Keyring::holding((*f).clone(), vec![(*k).clone()], genesis());
                ledger::Vote::sign(&ring, &body).unwrap()
            })
            .collect();
        FinalEntry {
            entry: l.bytes.clone(),
            cert: Certificate {
                height: l.entry.height,
                hash: l.hash,
                prev: l.entry.prev,
                votes,
            },
        }
    }

    fn person(i: u64) -> bulwark_actors::schedule::Op {
        bulwark_actors::schedule::Op::AddPerson(Person {
            id: format!("p{i}").parse::<PersonId>().unwrap(),
            name: "P".into(),
            role: Role::Faculty,
        })
    }

    #[test]
    fn a_rotation_is_followed_and_a_stale_key_after_it_is_caught() {
        let ids = ids();
        let (a, b) = (&ids[0], &ids[1]);
        let new_a = Keyring::deterministic_secret(a, 6);
        let mut state = ScheduleState::new();
        let l1 = entry(&mut state, a, &old(a), 1, person(1));
        let rotate = bulwark_actors::schedule::Op::Validator(ValidatorChange {
            facility: a.clone(),
            key: Some(VoteKey::from(&new_a.verifying_key())),
        });
        let l2 = entry(&mut state, b, &old(b), 2, rotate);
        let l3 = entry(&mut state, a, &new_a, 3, person(3));
        let good = [
            cert(&l1, &[(a, &old(a)), (b, &old(b))]),
            cert(&l2, &[(a, &old(a)), (b, &old(b))]),
            cert(&l3, &[(a, &new_a), (b, &old(b))]),
        ];
        let mut ok = LedgerChecker::new(genesis());
        ok.observe(a, &good).unwrap();
        assert_eq!(ok.epochs_seen(), 1);
        // The planted fault: height 3 certified with alpha's old key.
        let mut stale = good.clone();
        stale[2] = cert(&l3, &[(a, &old(a)), (b, &old(b))]);
        let mut c = LedgerChecker::new(genesis());
        let v = c.observe(a, &stale).unwrap_err();
        assert_eq!(v.invariant, Invariant::FinalLedger, "{v:?}");
    }
}
