//! What consensus drives: the replicated state machine, as the RaftPeer
//! sees it.
//!
//! The RaftPeer's core ([`crate::raft::RaftCore`]) orders entries and knows
//! nothing of what they mean. Everything that does (how a client's command
//! becomes a signed entry, how a forwarded one is checked, what applying a
//! committed entry changes and answers, how the state is read, streamed to
//! a follower and installed there) is behind [`StateMachine`]. The
//! facility's machine is the schedule's replica
//! ([`crate::replica::Replica`]); a test or an embedding application can
//! drive its own.
//!
//! The contract a machine keeps:
//! - **One transaction per batch.** [`StateMachine::apply`] applies a batch
//!   of committed entries and moves its applied index in one redb write
//!   transaction of the facility's store; the consensus layer's own rows
//!   for the batch (a configuration change) go into that same transaction
//!   through the hook, so a restart resumes from one consistent point.
//! - **Deterministic.** The same entries give the same state and the same
//!   answers on every facility.
//! - **Held entries change nothing.** Entries at or before
//!   [`Batch::held_through`] were applied before (a restart, an installed
//!   snapshot): they are only shown again.
//! - **Every configuration change reaches the hook once.** A change after
//!   [`Batch::conf_through`] goes to the hook even in a held entry (an
//!   installed snapshot carried the replica past it, but raft-rs, whose log
//!   already held it, did not take the snapshot's configuration); one at or
//!   before it is in force already and does not (a replica taken again
//!   from the log).
//! - **Snapshots are rows.** A snapshot is the machine's tables read from
//!   one read transaction ([`StateMachine::snapshot_source`]) in chunks of
//!   [`bulwark_storage::stream`]; installing one is atomic and a refused
//!   one leaves the state as it was.

use bulwark_storage::stream::{Chunk, Cursor, Descriptor, Row, RowHasher, SnapshotError};
use bulwark_storage::{StorageError, Store};
use bulwark_transport::FacilityId;
use raft::eraftpb::Entry;
use redb::WriteTransaction;

/// How a proposal ended, for a machine whose commands answer `O`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeOutcome<O> {
    /// Committed at `index` and applied; `outcome` is the machine's answer
    /// (for the schedule: applied, or rejected with the rule). `duplicate`
    /// when the idempotency key had already been applied (the first
    /// outcome is repeated).
    Committed {
        /// Log index.
        index: u64,
        /// The machine's answer.
        outcome: O,
        /// A retry of an already applied command.
        duplicate: bool,
        /// The ledger height it was given (`None` when the command changed
        /// nothing: refused by a rule, or a retry). It is final once the
        /// validators certify it (the validator's `AwaitFinal`).
        height: Option<u64>,
    },
    /// No leader could take it; `hint` is the leader as last known.
    NotLeader {
        /// The leader, if known.
        hint: Option<FacilityId>,
    },
    /// No outcome in time. The command may still commit later; retry with
    /// the same idempotency key.
    TimedOut,
    /// Refused before reaching the log.
    Rejected {
        /// Why.
        reason: String,
    },
    /// Refused at once, nothing sent: the breaker guarding the call to
    /// the leader is open (it failed lately, or the detector holds it
    /// Down). Definitely not applied.
    Shed {
        /// The open dependency (`forward@bravo`).
        dependency: String,
        /// When a call may pass again.
        retry_after_ms: u64,
    },
}

/// A batch of committed entries for [`StateMachine::apply`].
#[derive(Debug)]
pub struct Batch<'a> {
    /// The entries, in log order.
    pub entries: &'a [Entry],
    /// Entries at or before this index are held already: they change
    /// nothing and are only shown.
    pub held_through: u64,
    /// Configuration changes at or before this index are in force (see
    /// the module's contract): only later ones go to the hook.
    pub conf_through: u64,
    /// The log is compacted through this index: what the machine keeps
    /// per entry for showing it again may be forgotten up to here.
    pub compacted: u64,
    /// Whether the caller shows applied entries ([`Decided::shown`]).
    pub show: bool,
}

/// Who proposed an entry: enough for the proposer to know its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<K> {
    /// The proposing facility.
    pub proposer: FacilityId,
    /// Its sequence number for the proposal.
    pub seq: u64,
    /// The command's idempotency key.
    pub key: K,
}

/// What the proposer of an entry is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<O> {
    /// Applied (or found applied before, `duplicate`), with the machine's
    /// answer and the ledger height it was given, if any.
    Applied {
        /// The machine's answer.
        outcome: O,
        /// The key had been applied before.
        duplicate: bool,
        /// Where it was first applied (a duplicate: the first answer's
        /// index, so a retry anywhere answers what the first try did).
        first_index: Option<u64>,
        /// Its height in the ledger (a duplicate: the first application's,
        /// while the verdicts still hold it).
        height: Option<u64>,
    },
    /// Refused before the state saw it, by the named check.
    Refused {
        /// Why, starting with the refusing check's code.
        reason: String,
    },
}

/// One entry of a batch, decided.
#[derive(Debug)]
pub struct Decided<M: StateMachine> {
    /// Who proposed it (none for an empty, foreign or undecodable entry).
    pub origin: Option<Origin<M::Key>>,
    /// What its proposer is answered (none for a held entry).
    pub answer: Option<Answer<M::Outcome>>,
    /// What a tap shows of it (none: not shown; always none unless
    /// [`Batch::show`]).
    pub shown: Option<M::Shown>,
}

/// A forwarded proposal that passed the machine's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The proposer's sequence number.
    pub seq: u64,
    /// The proposer's clock when it issued the command.
    pub at_unix_ms: u64,
}

/// Why a forwarded proposal is dropped unanswered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardRefused {
    /// It does not decode.
    #[error("malformed: {0}")]
    Malformed(String),
    /// Its proposer is not its sender, or its signature does not verify.
    #[error("forged proposer or signature")]
    Forged,
}

/// The replicated state machine. See the module docs.
pub trait StateMachine: Sized + Send + Sync + 'static {
    /// A client's command.
    type Command: Send + std::fmt::Debug + 'static;
    /// A command's idempotency key.
    type Key: Copy + Eq + std::fmt::Debug + Send + Sync + 'static;
    /// What applying a command answers.
    type Outcome: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// A consistent read of the applied state.
    type View: Send + 'static;
    /// What a tap of applied entries shows of one entry.
    type Shown: Clone + std::fmt::Debug + Send + Sync + 'static;
    /// What opening the machine needs besides its store (keys).
    type Context: Clone + Send + Sync + 'static;
    /// A consistent read of the state to stream out as a snapshot.
    type Source: Send + Sync + 'static;

    /// Opens the machine's state in `store`.
    fn open(store: Store, cx: &Self::Context) -> Result<Self, StorageError>;

    /// Empties the machine's state in `store` (durably) and opens it: for a
    /// state that does not open, taken again from the peers.
    fn reset(store: Store, cx: &Self::Context) -> Result<Self, StorageError>;

    /// The facility's store.
    fn store(&self) -> &Store;

    /// The last log index applied.
    fn applied(&self) -> u64;

    /// A consistent read of the applied state.
    fn view(&self) -> Result<Self::View, StorageError>;

    /// The idempotency key of `command`.
    fn key(command: &Self::Command) -> Self::Key;

    /// The entry bytes of `command`, proposed by `me` as its proposal
    /// `seq`, issued at `now_unix_ms` (the machine stamps and signs it).
    fn propose(
        &self,
        me: &FacilityId,
        seq: u64,
        command: Self::Command,
        now_unix_ms: u64,
    ) -> Result<Vec<u8>, String>;

    /// Whether `f` may propose under the applied state (a machine whose
    /// proposals are signed: `f` holds a key of the set in force; with
    /// `f` this facility, one its keyring holds). A leader that may not
    /// hands leadership to a voter that may, so client writes through it
    /// are taken. Default: every facility may.
    fn proposes(&self, f: &FacilityId) -> bool {
        let _ = f;
        true
    }

    /// Checks `bytes`, a proposal `from` forwarded (at most `limit` bytes
    /// decoded): the proposer must be the authenticated sender, and signed.
    fn check_forwarded(
        &self,
        from: &FacilityId,
        bytes: &[u8],
        limit: usize,
    ) -> Result<Forwarded, ForwardRefused>;

    /// Applies `batch` in one write transaction, which it commits with the
    /// new applied index. `conf` is called, in order, for every
    /// configuration-change entry not yet held, with the transaction, for
    /// the consensus layer's own rows. One [`Decided`] per entry, in order.
    /// On `Err` nothing of the batch is kept.
    fn apply<E: From<StorageError>>(
        &mut self,
        batch: Batch<'_>,
        conf: &mut dyn FnMut(&WriteTransaction, &Entry) -> Result<(), E>,
    ) -> Result<Vec<Decided<Self>>, E>;

    /// A consistent read of the state at [`StateMachine::applied`], to
    /// stream out.
    fn snapshot_source(&self) -> Result<Self::Source, StorageError>;

    /// The chunk of `source` that starts at `at`, of at most `max_bytes`.
    fn read_chunk(
        &self,
        source: &Self::Source,
        at: &Cursor,
        max_bytes: usize,
    ) -> Result<Chunk, StorageError>;

    /// Forgets every staged row (a new transfer begins).
    fn clear_staging(&self) -> Result<(), StorageError>;

    /// Stages `rows` after the `first` rows staged, adding them to
    /// `hasher`.
    fn stage(&self, first: u64, rows: &[Row], hasher: &mut RowHasher) -> Result<(), SnapshotError>;

    /// Replaces the state by the staged rows in one durable transaction,
    /// once they match `desc`; on `Err` the state is as it was.
    fn install(&mut self, desc: &Descriptor, hasher: &RowHasher) -> Result<(), SnapshotError>;
}
