//! The replicated schedule: the state machine that Raft orders commands for.
//!
//! - **Data:** people (residents and faculty), blocks (a day, a start time, a
//!   duration and a rotation pool, staffed by `required` people) and the
//!   assignments of people to blocks; leave days; how far the schedule is
//!   finally approved.
//! - **Commands** ([`Op`]): add a person or a block, assign, unassign, swap,
//!   leave, emergency coverage and final approval. Each carries an
//!   [`IdempotencyKey`]: a retried command applies once and answers with its
//!   first outcome.
//! - **Rules**, checked at apply time from the command and the state alone,
//!   so every facility reaches the same verdict (see [`rules`]):
//!   nobody in two places at once ([`Rule::DoubleBooking`]), at most 80 duty
//!   hours in any rolling 7 days ([`Rule::DutyHours80`]), a day off in every
//!   7 ([`Rule::DayOffIn7`]), no shift over 24 h + 4 h of handover
//!   ([`Rule::ShiftTooLong`]). The limits bind every person, faculty too.
//! - A rejected command changes nothing but the record of rejections.
//! - [`ScheduleState::snapshot`] / [`ScheduleState::restore`] round-trip
//!   exactly (the bytes of a restored state's snapshot are the same).
//!
//! Only `BTreeMap`/`BTreeSet` hold state, so iteration order, and with it
//! every verdict and every snapshot, is the same on every facility.

pub mod overlay;
pub mod rules;
pub mod tables;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use bulwark_storage::{codec, CodecError};
use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};

use crate::chain::ChainHead;
use crate::hlc::Hlc;
pub use overlay::Overlay;
pub use rules::{Interval, Rule};
pub use tables::{KeyRecord, MemTables, Tables, TablesRead, Understaffed};

/// Minutes in a day.
pub const DAY_MIN: u64 = 1440;
/// Longest block, in minutes: 24 h of duty plus 4 h of handover.
pub const BLOCK_MIN_MAX: u16 = rules::SHIFT_MIN_MAX as u16;
/// Most people one block may require.
pub const BLOCK_REQUIRED_MAX: u8 = 32;
/// Longest leave granted by one command, in days.
pub const LEAVE_DAYS_MAX: u32 = 366;
/// Idempotency keys remembered; beyond this the oldest (by log index) is
/// forgotten, so a retry older than the last 16,384 commands applies anew.
pub const IDEMPOTENCY_KEYS_MAX: usize = 16_384;
/// Rejections kept in the record (the total is counted beyond it).
pub const REJECTIONS_KEPT: usize = 1024;
/// Most commands in one [`Op::Batch`].
pub const BATCH_OPS_MAX: usize = 1000;
/// Most days one [`Op::Archive`] moves out of the hot tables (it reads and
/// moves every block of them in one apply).
pub const ARCHIVE_DAYS_MAX: u32 = 7;
/// Days after the archived ones that no command may change: a change reads
/// a person's duty up to [`DUTY_REACH_MIN`] back, and that duty must still
/// be in the hot tables for the verdict to be the whole history's.
pub const ARCHIVE_MARGIN_DAYS: u32 = 8;

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidInput;

            fn from_str(s: &str) -> Result<Self, InvalidInput> {
                if valid_id(s) {
                    Ok($name(s.to_string()))
                } else {
                    Err(InvalidInput {
                        field: $what,
                        reason: "use 1-64 chars of [A-Za-z0-9._:-]".into(),
                    })
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

text_id!(
    /// A person's id: 1 to 64 chars of `[A-Za-z0-9._:-]`.
    PersonId,
    "person"
);
text_id!(
    /// A block's id: 1 to 64 chars of `[A-Za-z0-9._:-]`.
    BlockId,
    "block"
);

/// A field that is not valid, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// The field.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// Residents and faculty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A resident in a postgraduate year.
    Resident {
        /// Postgraduate year, 1 to 7.
        pgy: u8,
    },
    /// Faculty.
    Faculty,
}

/// A person who can be assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Id.
    pub id: PersonId,
    /// Display name, 1 to 128 chars, no control characters.
    pub name: String,
    /// Role.
    pub role: Role,
}

/// Rotation pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Pool {
    /// Intensive care.
    Icu,
    /// Clinic.
    Clinic,
    /// Procedures.
    Procedures,
    /// Call.
    Call,
}

/// A block: one shift on one day in one pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// Id.
    pub id: BlockId,
    /// Day number (days since the schedule's epoch).
    pub day: u32,
    /// Start, in minutes after midnight (0..1440).
    pub start_min: u16,
    /// Length in minutes, 1 to [`BLOCK_MIN_MAX`].
    pub duration_min: u16,
    /// Rotation pool.
    pub pool: Pool,
    /// People the block needs, 1 to [`BLOCK_REQUIRED_MAX`].
    pub required: u8,
}

impl Block {
    /// The block's time, in minutes since the epoch.
    pub fn interval(&self) -> Interval {
        let start = u64::from(self.day) * DAY_MIN + u64::from(self.start_min);
        Interval {
            start,
            end: start + u64::from(self.duration_min),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if u64::from(self.start_min) >= DAY_MIN {
            return Err(format!("start_min {} is not in 0..1440", self.start_min));
        }
        if self.duration_min == 0 || self.duration_min > BLOCK_MIN_MAX {
            return Err(format!(
                "duration_min {} is not in 1..={BLOCK_MIN_MAX}",
                self.duration_min
            ));
        }
        if self.required == 0 || self.required > BLOCK_REQUIRED_MAX {
            return Err(format!(
                "required {} is not in 1..={BLOCK_REQUIRED_MAX}",
                self.required
            ));
        }
        Ok(())
    }
}

/// A client's idempotency key: a retry carries the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey(pub [u8; 16]);

/// One schedule command, as proposed to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The client's idempotency key.
    pub key: IdempotencyKey,
    /// The facility that accepted it from its client (set by the proposing
    /// facility, which signs it).
    pub issued_by: FacilityId,
    /// When it was issued, by the proposing facility's clock (set when it
    /// is proposed). The schedule's rules never read it; the ledger checks
    /// it (TIME_TRAVEL).
    pub at_unix_ms: u64,
    /// Its hybrid-logical-clock timestamp: when it happened, for
    /// last-write-wins after a partition. Stamped by the facility that
    /// accepted it (a provisional change keeps the stamp it was made
    /// with when it is replayed); [`Hlc::ZERO`] means unstamped, and
    /// [`Command::stamp`] then falls back to `at_unix_ms`.
    pub hlc: Hlc,
    /// What to do.
    pub op: Op,
}

impl Command {
    /// The command's timestamp for last-write-wins: its HLC, or, when
    /// unstamped, the proposer's clock and id.
    pub fn stamp(&self) -> Hlc {
        if self.hlc.is_zero() {
            Hlc {
                wall_ms: self.at_unix_ms,
                logical: 0,
                node: crate::ids::raft_id(&self.issued_by),
            }
        } else {
            self.hlc
        }
    }
}

/// What a command does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Add a person.
    AddPerson(Person),
    /// Add a block.
    AddBlock(Block),
    /// Put a person on a block.
    Assign {
        /// Who.
        person: PersonId,
        /// Where.
        block: BlockId,
    },
    /// Take a person off a block.
    Unassign {
        /// Who.
        person: PersonId,
        /// Where.
        block: BlockId,
    },
    /// Exchange: `a` takes `b_block` and `b` takes `a_block`, both or neither.
    Swap {
        /// First person, now on `a_block`.
        a: PersonId,
        /// `a`'s block.
        a_block: BlockId,
        /// Second person, now on `b_block`.
        b: PersonId,
        /// `b`'s block.
        b_block: BlockId,
    },
    /// Leave for days `from_day..=to_day`: the person's blocks that touch
    /// those days are vacated, and no block touching them can be assigned.
    Leave {
        /// Who.
        person: PersonId,
        /// First day.
        from_day: u32,
        /// Last day.
        to_day: u32,
    },
    /// Fill an open slot of a block, even one already finally approved.
    EmergencyCoverage {
        /// Where.
        block: BlockId,
        /// Who covers.
        person: PersonId,
    },
    /// Final approval of every day up to `through_day`: each block in it must
    /// be fully staffed; afterwards only leave and emergency coverage change
    /// them.
    Approve {
        /// Last approved day.
        through_day: u32,
    },
    /// The healer's resolution of a partition conflict: take `remove` off
    /// `block` and put `cover` on it as emergency coverage, all or
    /// nothing (approved blocks too, as emergency coverage may).
    Reconcile {
        /// Where.
        block: BlockId,
        /// The assignments that lost (last-write-wins or a review).
        remove: Vec<PersonId>,
        /// The provisional change that won.
        cover: PersonId,
    },
    /// Up to [`BATCH_OPS_MAX`] commands as one entry: each runs in order
    /// and gets its own outcome (a refused one changes nothing, the others
    /// still apply); the batch's key makes the whole idempotent. No batch
    /// nests another or emergency coverage (an AP write), and refusals
    /// inside are answered, not recorded in the rejections.
    Batch(Vec<Op>),
    /// Retire a person from `from_day` on: no block on or after that day
    /// can take them. Refused while they hold such a block. The person and
    /// their past duty stay.
    RetirePerson {
        /// Who.
        person: PersonId,
        /// The first day they cannot work.
        from_day: u32,
    },
    /// Remove a block nobody is on and that is not finally approved.
    RetireBlock {
        /// Which.
        block: BlockId,
    },
    /// Move every block of the finally approved days up to `through_day`
    /// (at most [`ARCHIVE_DAYS_MAX`] days past the last archived one) and
    /// who was on it out of the hot tables into the archive. The days
    /// within [`ARCHIVE_MARGIN_DAYS`] after it stop taking changes; the
    /// ledger keeps every entry.
    Archive {
        /// The last day archived.
        through_day: u32,
    },
    /// Remove up to [`NAMESPACE_DROP_MAX`] blocks and people of the
    /// namespace `namespace` (ids `chaos:<namespace>:…`; empty: every
    /// `chaos:` id), their assignments, leave and retirement: what a chaos
    /// experiment wrote. Blocks go first, people once no block is left;
    /// the effect says whether more remain. Archived blocks stay.
    DropNamespace {
        /// The namespace (0 to [`NAMESPACE_LEN_MAX`] chars of
        /// `[A-Za-z0-9._-]`).
        namespace: String,
    },
    /// The operator declares a drill on `facility` for `for_ms` from the
    /// command's timestamp: evidence against it recorded in that window
    /// is drill evidence, kept and shown but costing no trust. Refused
    /// when `facility` issues it itself (a liar cannot excuse itself).
    Drill {
        /// The facility the operator pulls levers on.
        facility: FacilityId,
        /// How long, in ms (at most [`DRILL_MS_MAX`]).
        for_ms: u64,
    },
    /// A cluster backup point: every facility, when it applies this
    /// command, backs its store up as it stands right after it, so every
    /// facility's backup holds the same committed index (a consistent
    /// cluster backup; `bulwark restore` rewinds each to it). Changes
    /// nothing in the schedule.
    Checkpoint,
    /// A change of the validator set (docs: `crate::epoch`): adds
    /// `facility` with `key`, rotates its key, or (`key` None) removes it.
    /// The ledger admits it only if the set in force allows the change;
    /// the next set certifies from the next height. Changes nothing in
    /// the schedule.
    Validator(crate::epoch::ValidatorChange),
}

/// The id prefix of every namespace: an id `chaos:<ns>:…` belongs to
/// namespace `<ns>`; every other id to the schedule itself.
pub const NAMESPACE_PREFIX: &str = "chaos:";
/// Longest namespace name.
pub const NAMESPACE_LEN_MAX: usize = 32;
/// Blocks plus people one [`Op::DropNamespace`] removes at most.
pub const NAMESPACE_DROP_MAX: usize = 256;
/// Longest drill: a day.
pub const DRILL_MS_MAX: u64 = 24 * 3600 * 1000;

/// The namespace an id belongs to: `Some(ns)` for `chaos:<ns>:…`,
/// `Some("")` for any other `chaos:` id (dropped with every namespace),
/// `None` for the schedule's own ids.
pub fn namespace_of(id: &str) -> Option<&str> {
    let rest = id.strip_prefix(NAMESPACE_PREFIX)?;
    Some(rest.split_once(':').map_or("", |(ns, _)| ns))
}

/// The id prefix of namespace `ns` (empty: every namespace).
pub fn namespace_prefix(ns: &str) -> String {
    if ns.is_empty() {
        NAMESPACE_PREFIX.to_string()
    } else {
        format!("{NAMESPACE_PREFIX}{ns}:")
    }
}

/// Whether `ns` is a namespace name ([`Op::DropNamespace`]).
pub fn valid_namespace(ns: &str) -> bool {
    ns.len() <= NAMESPACE_LEN_MAX
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Op {
    /// The command's name, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Op::AddPerson(_) => "add_person",
            Op::AddBlock(_) => "add_block",
            Op::Assign { .. } => "assign",
            Op::Unassign { .. } => "unassign",
            Op::Swap { .. } => "swap",
            Op::Leave { .. } => "leave",
            Op::EmergencyCoverage { .. } => "emergency_coverage",
            Op::Approve { .. } => "approve",
            Op::Reconcile { .. } => "reconcile",
            Op::Batch(_) => "batch",
            Op::RetirePerson { .. } => "retire_person",
            Op::RetireBlock { .. } => "retire_block",
            Op::Archive { .. } => "archive",
            Op::DropNamespace { .. } => "drop_namespace",
            Op::Drill { .. } => "drill",
            Op::Checkpoint => "checkpoint",
            Op::Validator(_) => "validator",
        }
    }
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A person was added.
    PersonAdded,
    /// A block was added.
    BlockAdded,
    /// A person was assigned.
    Assigned,
    /// A person was unassigned.
    Unassigned,
    /// Two people swapped blocks.
    Swapped,
    /// Leave granted; these blocks lost the person.
    LeaveGranted {
        /// Blocks vacated.
        vacated: Vec<BlockId>,
    },
    /// An open slot was covered.
    Covered,
    /// A partition conflict was resolved: these people lost the block to
    /// the cover.
    Reconciled {
        /// Who was taken off.
        removed: Vec<PersonId>,
    },
    /// Days up to `through_day` are final.
    Approved {
        /// Last approved day.
        through_day: u32,
    },
    /// A batch ran: each command's outcome, in order.
    Batch {
        /// The outcomes.
        outcomes: Vec<Outcome>,
    },
    /// A person was retired.
    PersonRetired,
    /// A block was removed.
    BlockRetired,
    /// Days up to `through_day` were archived.
    Archived {
        /// The last day archived.
        through_day: u32,
        /// Blocks moved.
        blocks: u32,
    },
    /// Part or all of a namespace was removed.
    NamespaceDropped {
        /// Blocks removed.
        blocks: u32,
        /// People removed.
        people: u32,
        /// Whether more of the namespace is left (drop it again).
        more: bool,
    },
    /// A drill was declared.
    DrillDeclared,
    /// A cluster backup point was set.
    Checkpointed,
    /// The validator set changed: this epoch certifies from `from_height`.
    ValidatorsChanged {
        /// The new epoch's number.
        epoch: u64,
        /// The first height it certifies.
        from_height: u64,
    },
}

/// Why a command was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The rule.
    pub rule: Rule,
    /// What broke it, for people.
    pub detail: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.rule.code(), self.detail)
    }
}

/// The verdict on one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// It changed the schedule.
    Applied(Effect),
    /// It broke a rule and changed nothing.
    Rejected(Rejection),
}

/// What [`ScheduleState::apply`] did with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// First time this key was seen.
    Fresh(Outcome),
    /// The key was applied before, at `first_index`; nothing changed and the
    /// first outcome is repeated.
    Duplicate {
        /// Where it first applied.
        first_index: u64,
        /// Its first outcome.
        outcome: Outcome,
    },
}

/// A rejection as recorded in the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionRecord {
    /// Log index of the command.
    pub index: u64,
    /// Its idempotency key.
    pub key: IdempotencyKey,
    /// Its name ([`Op::name`]).
    pub op: String,
    /// Who issued it.
    pub issued_by: FacilityId,
    /// The rejection.
    pub rejection: Rejection,
}

/// An assignment of a person to a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Log index of the command that made it.
    pub index: u64,
    /// Made by emergency coverage.
    pub emergency: bool,
    /// The timestamp of the command that made it ([`Command::stamp`]).
    pub stamp: Hlc,
}

/// A block moved out of the hot tables by [`Op::Archive`], with who was on
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchivedBlock {
    /// The block.
    pub block: Block,
    /// Its people, by id.
    pub assigned: Vec<(PersonId, Assignment)>,
}

/// Why a snapshot does not restore.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes do not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The decoded state breaks an invariant.
    #[error("snapshot breaks an invariant: {0}")]
    Invalid(String),
}

/// The schedule over its [`Tables`]. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schedule<T> {
    t: T,
}

/// The schedule in memory: tests, the simulation's replays, `ledger
/// verify`, and the snapshot format.
pub type ScheduleState = Schedule<MemTables>;

/// Minutes around a new block within which a duty rule can involve it:
/// the rolling 7 days, a 7-day run of days and a 28-hour shift all fit in
/// 8 days either side.
const DUTY_REACH_MIN: u64 = 8 * DAY_MIN;

impl<T> Schedule<T> {
    /// The schedule over `tables`.
    pub fn over(tables: T) -> Schedule<T> {
        Schedule { t: tables }
    }

    /// The tables.
    pub fn tables(&self) -> &T {
        &self.t
    }

    /// The tables, to write.
    pub fn tables_mut(&mut self) -> &mut T {
        &mut self.t
    }

    /// Gives the tables back.
    pub fn into_tables(self) -> T {
        self.t
    }
}

impl<T: TablesRead> Schedule<T> {
    /// The ledger chain's head.
    pub fn chain(&self) -> &ChainHead {
        self.t.chain()
    }

    /// The last log index applied.
    pub fn last_index(&self) -> u64 {
        self.t.last_index()
    }

    /// The last approved day, if any.
    pub fn approved_through(&self) -> Option<u32> {
        self.t.approved_through()
    }

    /// The first outcome recorded for `key`, with its index.
    pub fn outcome_of(&self, key: &IdempotencyKey) -> Option<(u64, Outcome)> {
        self.t.key(key).map(|r| (r.index, r.outcome))
    }

    /// The person `id`, if it exists.
    pub fn person_of(&self, id: &PersonId) -> Option<Person> {
        self.t.person(id)
    }

    /// The block `id`, if it exists.
    pub fn block_of(&self, id: &BlockId) -> Option<Block> {
        self.t.block(id)
    }

    /// The people on `block`.
    pub fn assignees(&self, block: &BlockId) -> Vec<PersonId> {
        self.t
            .assignments_on(block)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// The assignments on `block`, by person.
    pub fn assignments_on(&self, block: &BlockId) -> Vec<(PersonId, Assignment)> {
        self.t.assignments_on(block)
    }
}

impl<T: Tables> Schedule<T> {
    /// Applies the command committed at `index`. Deterministic: the same
    /// commands in the same order give the same state on every facility.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Applied {
        self.bump(index);
        let op_hash = op_hash(&cmd.op);
        let known = self.t.key(&cmd.key).filter(|r| {
            !(r.op_hash == op_hash && crate::plant::active(crate::plant::Bug::RetryAppliedTwice))
        });
        if let Some(rec) = known {
            if rec.op_hash == op_hash {
                return Applied::Duplicate {
                    first_index: rec.index,
                    outcome: rec.outcome,
                };
            }
            let rejection = Rejection {
                rule: Rule::KeyReused,
                detail: format!("key already applied at {} to another command", rec.index),
            };
            self.record_rejection(index, cmd, &rejection);
            return Applied::Fresh(Outcome::Rejected(rejection));
        }
        let outcome = match self.execute(index, cmd.stamp(), &cmd.issued_by, &cmd.op) {
            Ok(effect) => Outcome::Applied(effect),
            Err(rejection) => {
                self.record_rejection(index, cmd, &rejection);
                Outcome::Rejected(rejection)
            }
        };
        self.remember_key(index, cmd.key, op_hash, outcome.clone());
        Applied::Fresh(outcome)
    }

    /// Whether `key` decided a command already (any command).
    pub fn key_known(&self, key: &IdempotencyKey) -> bool {
        self.t.key(key).is_some()
    }

    /// Whether `key` was applied before to the same `op` (a retry).
    pub fn is_duplicate(&self, key: &IdempotencyKey, op: &Op) -> bool {
        self.t.key(key).is_some_and(|r| r.op_hash == op_hash(op))
            && !crate::plant::active(crate::plant::Bug::RetryAppliedTwice)
    }

    /// Records `cmd` as refused for `rejection` (decided outside the
    /// schedule's own rules, e.g. by the ledger's checks): it changes
    /// nothing but the rejection log and the key, as a rule would.
    pub fn reject(&mut self, index: u64, cmd: &Command, rejection: Rejection) -> Applied {
        self.bump(index);
        if self.t.key(&cmd.key).is_some() {
            return self.apply(index, cmd);
        }
        self.record_rejection(index, cmd, &rejection);
        let outcome = Outcome::Rejected(rejection);
        self.remember_key(index, cmd.key, op_hash(&cmd.op), outcome.clone());
        Applied::Fresh(outcome)
    }

    pub(crate) fn push_link(&mut self, link: &crate::chain::Link) {
        self.t.push_link(link);
    }

    pub(crate) fn set_validators(&mut self, v: &crate::epoch::InForce) {
        self.t.set_validators(v);
    }

    fn bump(&mut self, index: u64) {
        if index > self.t.last_index() {
            self.t.set_last_index(index);
        }
    }

    fn remember_key(
        &mut self,
        index: u64,
        key: IdempotencyKey,
        op_hash: [u8; 32],
        outcome: Outcome,
    ) {
        self.t.remember_key(
            key,
            KeyRecord {
                index,
                op_hash,
                outcome,
            },
        );
    }

    fn record_rejection(&mut self, index: u64, cmd: &Command, rejection: &Rejection) {
        self.t.record_rejection(RejectionRecord {
            index,
            key: cmd.key,
            op: cmd.op.name().to_string(),
            issued_by: cmd.issued_by.clone(),
            rejection: rejection.clone(),
        });
    }

    /// Runs `op`: on `Err` nothing has changed.
    fn execute(
        &mut self,
        index: u64,
        stamp: Hlc,
        by: &FacilityId,
        op: &Op,
    ) -> Result<Effect, Rejection> {
        match op {
            Op::AddPerson(p) => {
                validate_name(&p.name).map_err(|d| reject(Rule::InvalidInput, d))?;
                if let Role::Resident { pgy } = p.role {
                    if !(1..=7).contains(&pgy) {
                        return Err(reject(
                            Rule::InvalidInput,
                            format!("pgy {pgy} is not in 1..=7"),
                        ));
                    }
                }
                if self.t.person(&p.id).is_some() {
                    return Err(reject(
                        Rule::AlreadyExists,
                        format!("person {} exists", p.id),
                    ));
                }
                self.t.put_person(p);
                Ok(Effect::PersonAdded)
            }
            Op::AddBlock(b) => {
                b.validate().map_err(|d| reject(Rule::InvalidInput, d))?;
                self.check_live_day(b.day)?;
                if self.t.block(&b.id).is_some() {
                    return Err(reject(
                        Rule::AlreadyExists,
                        format!("block {} exists", b.id),
                    ));
                }
                if let Some(day) = self.t.archived_day(&b.id) {
                    return Err(reject(
                        Rule::AlreadyExists,
                        format!("block {} exists, archived with day {day}", b.id),
                    ));
                }
                self.t.put_block(b);
                Ok(Effect::BlockAdded)
            }
            Op::Assign { person, block } => {
                let b = self.check_open(person, block, false)?;
                self.check_person_with(person, &[], &[&b])?;
                self.insert_assignment(index, stamp, person, &b, false);
                Ok(Effect::Assigned)
            }
            Op::EmergencyCoverage { block, person } => {
                let b = self.check_open(person, block, true)?;
                self.check_person_with(person, &[], &[&b])?;
                self.insert_assignment(index, stamp, person, &b, true);
                Ok(Effect::Covered)
            }
            Op::Unassign { person, block } => {
                let (b, _) = self.check_assigned(person, block)?;
                self.check_not_frozen(&b)?;
                self.t.remove_assignment(&b, person);
                Ok(Effect::Unassigned)
            }
            Op::Swap {
                a,
                a_block,
                b,
                b_block,
            } => {
                if a == b || a_block == b_block {
                    return Err(reject(
                        Rule::InvalidInput,
                        "a swap needs two people and two blocks".into(),
                    ));
                }
                let (ab, ia) = self.check_assigned(a, a_block)?;
                let (bb, ib) = self.check_assigned(b, b_block)?;
                self.check_not_frozen(&ab)?;
                self.check_not_frozen(&bb)?;
                for (p, blk) in [(a, b_block), (b, a_block)] {
                    if self.t.assignment(blk, p).is_some() {
                        return Err(reject(
                            Rule::DoubleBooking,
                            format!("{p} is already on {blk}"),
                        ));
                    }
                }
                self.check_person_with(a, &[a_block], &[&bb])?;
                self.check_person_with(b, &[b_block], &[&ab])?;
                self.t.remove_assignment(&ab, a);
                self.t.remove_assignment(&bb, b);
                self.insert_assignment(index, stamp, a, &bb, ia.emergency);
                self.insert_assignment(index, stamp, b, &ab, ib.emergency);
                Ok(Effect::Swapped)
            }
            Op::Leave {
                person,
                from_day,
                to_day,
            } => {
                self.person(person)?;
                if from_day > to_day || to_day - from_day >= LEAVE_DAYS_MAX {
                    return Err(reject(
                        Rule::InvalidInput,
                        format!("leave {from_day}..={to_day} must be 1 to {LEAVE_DAYS_MAX} days"),
                    ));
                }
                self.check_live_day(*from_day)?;
                // A block touching those days starts at most one longest
                // block before the first.
                let from = (u64::from(*from_day) * DAY_MIN).saturating_sub(rules::SHIFT_MIN_MAX);
                let to = (u64::from(*to_day) + 1) * DAY_MIN;
                let vacated: Vec<BlockId> = self
                    .t
                    .duty_starting(person, from, to)
                    .into_iter()
                    .filter(|(iv, _)| iv.days().any(|d| (*from_day..=*to_day).contains(&d)))
                    .map(|(_, blk)| blk)
                    .collect();
                for blk in &vacated {
                    if let Some(b) = self.t.block(blk) {
                        self.t.remove_assignment(&b, person);
                    }
                }
                self.t.add_leave(person, *from_day, *to_day);
                Ok(Effect::LeaveGranted { vacated })
            }
            Op::Approve { through_day } => {
                if let Some(d) = self.t.approved_through().filter(|d| d >= through_day) {
                    return Err(reject(
                        Rule::AlreadyApproved,
                        format!("days through {d} are already approved"),
                    ));
                }
                let short: Vec<String> = self
                    .t
                    .understaffed(*through_day, 8)
                    .into_iter()
                    .map(|u| format!("{} ({}/{})", u.block, u.staffed, u.required))
                    .collect();
                if !short.is_empty() {
                    return Err(reject(
                        Rule::Understaffed,
                        format!("blocks not fully staffed: {}", short.join(", ")),
                    ));
                }
                self.t.set_approved_through(*through_day);
                Ok(Effect::Approved {
                    through_day: *through_day,
                })
            }
            Op::Reconcile {
                block,
                remove,
                cover,
            } => {
                let unique: BTreeSet<&PersonId> = remove.iter().collect();
                if unique.len() != remove.len() || unique.contains(cover) {
                    return Err(reject(
                        Rule::InvalidInput,
                        "reconcile removes distinct people other than the cover".into(),
                    ));
                }
                self.person(cover)?;
                let b = self.block(block)?;
                let required = usize::from(b.required);
                for p in remove {
                    self.check_assigned(p, block)?;
                }
                if self.t.assignment(block, cover).is_some() {
                    return Err(reject(
                        Rule::DoubleBooking,
                        format!("{cover} is already on {block}"),
                    ));
                }
                if self.t.assignments_on(block).len() - remove.len() >= required {
                    return Err(reject(
                        Rule::BlockFull,
                        format!("{block} keeps its {required} people"),
                    ));
                }
                self.check_person_with(cover, &[], &[&b])?;
                for p in remove {
                    self.t.remove_assignment(&b, p);
                }
                self.insert_assignment(index, stamp, cover, &b, true);
                Ok(Effect::Reconciled {
                    removed: remove.clone(),
                })
            }
            Op::Batch(ops) => {
                if ops.is_empty() || ops.len() > BATCH_OPS_MAX {
                    return Err(reject(
                        Rule::InvalidInput,
                        format!("a batch holds 1 to {BATCH_OPS_MAX} commands"),
                    ));
                }
                if ops.iter().any(|o| {
                    matches!(
                        o,
                        Op::Batch(_)
                            | Op::EmergencyCoverage { .. }
                            | Op::Archive { .. }
                            | Op::DropNamespace { .. }
                            | Op::Drill { .. }
                            | Op::Checkpoint
                            | Op::Validator(_)
                    )
                }) {
                    return Err(reject(
                        Rule::InvalidInput,
                        "a batch holds no batch, emergency coverage, archive, namespace drop, drill, checkpoint or validator change".into(),
                    ));
                }
                let outcomes = ops
                    .iter()
                    .map(|op| match self.execute(index, stamp, by, op) {
                        Ok(e) => Outcome::Applied(e),
                        Err(r) => Outcome::Rejected(r),
                    })
                    .collect();
                Ok(Effect::Batch { outcomes })
            }
            Op::RetirePerson { person, from_day } => {
                self.person(person)?;
                self.check_live_day(*from_day)?;
                if let Some(d) = self.t.retired_from(person) {
                    return Err(reject(
                        Rule::Retired,
                        format!("{person} is retired from day {d}"),
                    ));
                }
                let from = u64::from(*from_day) * DAY_MIN;
                // A block that starts the day before may run into `from_day`
                // but is the day before's: only blocks on or after it count.
                if let Some((_, blk)) = self.t.duty_starting(person, from, u64::MAX).first() {
                    return Err(reject(
                        Rule::HoldsAssignments,
                        format!("{person} is on {blk}, on or after day {from_day}"),
                    ));
                }
                self.t.retire_person(person, *from_day);
                Ok(Effect::PersonRetired)
            }
            Op::RetireBlock { block } => {
                let b = self.block(block)?;
                self.check_not_frozen(&b)?;
                let on = self.t.assignments_on(block);
                if let Some((p, _)) = on.first() {
                    return Err(reject(
                        Rule::HoldsAssignments,
                        format!("{p} and {} more are on {block}", on.len() - 1),
                    ));
                }
                self.t.remove_block(&b);
                Ok(Effect::BlockRetired)
            }
            Op::DropNamespace { namespace } => self.drop_namespace(namespace),
            Op::Drill { facility, for_ms } => {
                if *for_ms == 0 || *for_ms > DRILL_MS_MAX {
                    return Err(reject(
                        Rule::InvalidInput,
                        format!("a drill lasts 1 to {DRILL_MS_MAX} ms"),
                    ));
                }
                if facility == by {
                    return Err(reject(
                        Rule::InvalidInput,
                        format!("{by} cannot declare a drill on itself: send it through another facility"),
                    ));
                }
                Ok(Effect::DrillDeclared)
            }
            Op::Checkpoint => Ok(Effect::Checkpointed),
            // The ledger checked the change against the set in force and
            // recorded the next set before applying (`ledger::admit`).
            Op::Validator(_) => {
                let next = self.t.chain().in_force().current.as_ref();
                Ok(Effect::ValidatorsChanged {
                    epoch: next.map_or(0, |s| s.number),
                    from_height: next.map_or(1, |s| s.from_height),
                })
            }
            Op::Archive { through_day } => {
                let approved = self.t.approved_through();
                // The archive stays ARCHIVE_MARGIN_DAYS behind the last
                // approved day, so the days it quiets are final ones.
                let reach = u64::from(*through_day) + u64::from(ARCHIVE_MARGIN_DAYS);
                if approved.is_none_or(|d| reach > u64::from(d)) {
                    return Err(reject(
                        Rule::NotFinal,
                        format!(
                            "only finally approved days at least {ARCHIVE_MARGIN_DAYS} days before the last approved one are archived (approved through {})",
                            approved.map_or("none".into(), |d| d.to_string())
                        ),
                    ));
                }
                // A block left short since its approval (by leave) still
                // holds approval back: it stays hot.
                if let Some(u) = self.t.understaffed(*through_day, 1).first() {
                    return Err(reject(
                        Rule::Understaffed,
                        format!(
                            "{} ({}/{}) is not fully staffed: it is not archived",
                            u.block, u.staffed, u.required
                        ),
                    ));
                }
                let from = self.t.archived_through().map_or(0, |d| d + 1);
                if *through_day < from {
                    return Err(reject(
                        Rule::Archived,
                        format!("days through {} are archived", from - 1),
                    ));
                }
                if through_day - from >= ARCHIVE_DAYS_MAX {
                    return Err(reject(
                        Rule::InvalidInput,
                        format!(
                            "one archive moves at most {ARCHIVE_DAYS_MAX} days (from day {from})"
                        ),
                    ));
                }
                let blocks = self.t.blocks_by_day(from, None, *through_day, usize::MAX);
                for b in &blocks {
                    self.t.archive_block(b);
                }
                self.t.set_archived_through(*through_day);
                Ok(Effect::Archived {
                    through_day: *through_day,
                    blocks: u32::try_from(blocks.len()).unwrap_or(u32::MAX),
                })
            }
        }
    }

    /// Refuses a change on `day` if the day is archived or within
    /// [`ARCHIVE_MARGIN_DAYS`] after the archive.
    fn check_live_day(&self, day: u32) -> Result<(), Rejection> {
        match self.t.archived_through() {
            Some(t) if u64::from(day) <= u64::from(t) + u64::from(ARCHIVE_MARGIN_DAYS) => {
                Err(reject(
                    Rule::Archived,
                    format!(
                        "day {day} is archived or within {ARCHIVE_MARGIN_DAYS} days of the archive (days through {t})"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    fn person(&self, id: &PersonId) -> Result<Person, Rejection> {
        self.t
            .person(id)
            .ok_or_else(|| reject(Rule::UnknownPerson, format!("no person {id}")))
    }

    fn block(&self, id: &BlockId) -> Result<Block, Rejection> {
        self.t
            .block(id)
            .ok_or_else(|| match self.t.archived_day(id) {
                Some(day) => reject(
                    Rule::Archived,
                    format!("block {id} is archived (day {day})"),
                ),
                None => reject(Rule::UnknownBlock, format!("no block {id}")),
            })
    }

    /// The block and the person's assignment to it.
    fn check_assigned(
        &self,
        person: &PersonId,
        block: &BlockId,
    ) -> Result<(Block, Assignment), Rejection> {
        self.person(person)?;
        let b = self.block(block)?;
        match self.t.assignment(block, person) {
            Some(a) => Ok((b, a)),
            None => Err(reject(
                Rule::NotAssigned,
                format!("{person} is not on {block}"),
            )),
        }
    }

    fn check_not_frozen(&self, b: &Block) -> Result<(), Rejection> {
        if self.t.approved_through().is_some_and(|d| b.day <= d) {
            return Err(reject(
                Rule::Frozen,
                format!(
                    "{} is finally approved; only leave and emergency coverage change it",
                    b.id
                ),
            ));
        }
        Ok(())
    }

    /// Person and block exist, the person is not on it, it has a free slot,
    /// and (unless an emergency) it is not finally approved.
    fn check_open(
        &self,
        person: &PersonId,
        block: &BlockId,
        emergency: bool,
    ) -> Result<Block, Rejection> {
        self.person(person)?;
        let b = self.block(block)?;
        let on = self.t.assignments_on(block);
        if on.iter().any(|(p, _)| p == person) {
            return Err(reject(
                Rule::DoubleBooking,
                format!("{person} is already on {block}"),
            ));
        }
        if on.len() >= usize::from(b.required) {
            return Err(reject(
                Rule::BlockFull,
                format!("{block} has its {} people", b.required),
            ));
        }
        if !emergency {
            self.check_not_frozen(&b)?;
        }
        Ok(b)
    }

    /// Checks every rule for `person`'s duty after leaving `drop` and
    /// taking `add`. The state before keeps every rule, so a broken rule
    /// involves an added block: only the person's duty within
    /// [`DUTY_REACH_MIN`] of the added blocks is read.
    /// Removes what [`Op::DropNamespace`] removes.
    fn drop_namespace(&mut self, ns: &str) -> Result<Effect, Rejection> {
        if !valid_namespace(ns) {
            return Err(reject(
                Rule::InvalidInput,
                format!("a namespace is 0 to {NAMESPACE_LEN_MAX} chars of [A-Za-z0-9._-]"),
            ));
        }
        let prefix = namespace_prefix(ns);
        let blocks = self.t.blocks_with_prefix(&prefix, NAMESPACE_DROP_MAX);
        for b in &blocks {
            for (p, _) in self.t.assignments_on(&b.id) {
                self.t.remove_assignment(b, &p);
            }
            self.t.remove_block(b);
        }
        // People only once their namespace holds no block: a person of
        // the namespace is on its blocks only, so none holds duty then.
        let room = NAMESPACE_DROP_MAX - blocks.len();
        let people = if blocks.len() < NAMESPACE_DROP_MAX {
            self.t.people_with_prefix(&prefix, room)
        } else {
            Vec::new()
        };
        for p in &people {
            // Duty can only be on the namespace's own blocks, gone by now;
            // a store older than the namespace rule may hold more.
            for (_, blk) in self.t.duty_starting(p, 0, u64::MAX) {
                if let Some(b) = self.t.block(&blk) {
                    self.t.remove_assignment(&b, p);
                }
            }
            self.t.remove_person(p);
        }
        Ok(Effect::NamespaceDropped {
            blocks: blocks.len() as u32,
            people: people.len() as u32,
            more: blocks.len() + people.len() == NAMESPACE_DROP_MAX,
        })
    }

    fn check_person_with(
        &self,
        person: &PersonId,
        drop: &[&BlockId],
        add: &[&Block],
    ) -> Result<(), Rejection> {
        let home = namespace_of(person.as_str());
        if let Some(b) = add.iter().find(|b| namespace_of(b.id.as_str()) != home) {
            return Err(reject(
                Rule::Namespace,
                format!("{person} and {} are in different namespaces", b.id),
            ));
        }
        let ivs: Vec<Interval> = add.iter().map(|b| b.interval()).collect();
        let from = ivs.iter().map(|iv| iv.start).min().unwrap_or(0);
        let to = ivs.iter().map(|iv| iv.end).max().unwrap_or(0);
        let mut duty: Vec<Interval> = self
            .t
            .duty_starting(
                person,
                from.saturating_sub(DUTY_REACH_MIN),
                to.saturating_add(DUTY_REACH_MIN),
            )
            .into_iter()
            .filter(|(_, blk)| !drop.contains(&blk))
            .map(|(iv, _)| iv)
            .collect();
        let retired = self.t.retired_from(person);
        for b in add {
            self.check_live_day(b.day)?;
            if let Some(d) = retired.filter(|d| b.day >= *d) {
                return Err(reject(
                    Rule::Retired,
                    format!("{person} is retired from day {d}"),
                ));
            }
        }
        for iv in ivs {
            let (first, last) = (iv.days().next(), iv.days().last());
            if let (Some(first), Some(last)) = (first, last) {
                if let Some(day) = self.t.leave_day_in(person, first, last) {
                    return Err(reject(
                        Rule::OnLeave,
                        format!("{person} is on leave on day {day}"),
                    ));
                }
            }
            duty.push(iv);
        }
        duty.sort_unstable();
        rules::check(&duty).map_err(|(rule, detail)| reject(rule, format!("{person}: {detail}")))
    }

    fn insert_assignment(
        &mut self,
        index: u64,
        stamp: Hlc,
        person: &PersonId,
        block: &Block,
        emergency: bool,
    ) {
        self.t.insert_assignment(
            block,
            person,
            Assignment {
                index,
                emergency,
                stamp,
            },
        );
    }
}

impl ScheduleState {
    /// An empty schedule.
    pub fn new() -> ScheduleState {
        ScheduleState::default()
    }

    /// The exact bytes of the state (the derived indices are rebuilt on
    /// restore, not stored).
    pub fn snapshot(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(&self.t)
    }

    /// The state from [`ScheduleState::snapshot`] bytes. The decoded state is
    /// checked against every invariant before it is trusted.
    pub fn restore(bytes: &[u8]) -> Result<ScheduleState, SnapshotError> {
        let mut t: MemTables = codec::decode(bytes)?;
        t.rebuild().map_err(SnapshotError::Invalid)?;
        let st = Schedule { t };
        st.check_invariants().map_err(SnapshotError::Invalid)?;
        Ok(st)
    }

    /// Checks every invariant of the state: references resolve, no block is
    /// over-staffed, nobody works on leave, every person's duty keeps every
    /// rule, the derived indices agree, the bounded records are in bounds.
    pub fn check_invariants(&self) -> Result<(), String> {
        let t = &self.t;
        t.chain.check()?;
        for (blk, people) in &t.assignments {
            let b = t
                .blocks
                .get(blk)
                .ok_or(format!("assignment to unknown block {blk}"))?;
            if people.is_empty() || people.len() > usize::from(b.required) {
                return Err(format!(
                    "{blk} has {} of {} people",
                    people.len(),
                    b.required
                ));
            }
            for p in people.keys() {
                if !t.people.contains_key(p) {
                    return Err(format!("unknown person {p} on {blk}"));
                }
                if namespace_of(p.as_str()) != namespace_of(blk.as_str()) {
                    return Err(format!("{p} on {blk}: two namespaces meet"));
                }
                let on_leave = t
                    .leave
                    .get(p)
                    .and_then(|l| b.interval().days().find(|d| l.contains(d)));
                if let Some(day) = on_leave {
                    return Err(format!("{p} works {blk} while on leave on day {day}"));
                }
            }
        }
        let mut derived = 0usize;
        for (p, duty) in &t.by_person {
            derived += duty.len();
            let ivs: Vec<Interval> = duty.values().copied().collect();
            rules::check(&ivs).map_err(|(rule, d)| format!("{p} breaks {}: {d}", rule.code()))?;
            for (_, blk) in duty.keys() {
                if t.assignment(blk, p).is_none() {
                    return Err(format!("index has {p} on {blk}, assignments do not"));
                }
            }
        }
        let direct: usize = t.assignments.values().map(BTreeMap::len).sum();
        if derived != direct {
            return Err(format!("index holds {derived} assignments, state {direct}"));
        }
        for b in t.blocks.values() {
            let open = t.staffed(&b.id) < usize::from(b.required);
            if open != t.open.contains(&(b.day, b.id.clone())) {
                return Err(format!("the open-slot index disagrees on {}", b.id));
            }
        }
        if t.by_day.len() != t.blocks.len()
            || t.blocks
                .values()
                .any(|b| !t.by_day.contains(&(b.day, b.id.clone())))
        {
            return Err("the by-day index disagrees with the blocks".into());
        }
        if t.open.len() > t.blocks.len() {
            return Err("the open-slot index names unknown blocks".into());
        }
        if t.keys.len() > IDEMPOTENCY_KEYS_MAX || t.rejections.len() > REJECTIONS_KEPT {
            return Err("a bounded record is over its bound".into());
        }
        if t.rejected_total < t.rejections.len() as u64 {
            return Err("fewer rejections counted than kept".into());
        }
        if let Some(through) = t.archived_through {
            if let Some(b) = t.blocks.values().find(|b| b.day <= through) {
                return Err(format!("{} is on archived day {}", b.id, b.day));
            }
        }
        for ((day, id), a) in &t.archive {
            if (a.block.day, &a.block.id) != (*day, id)
                || t.archived_through.is_none_or(|d| *day > d)
            {
                return Err(format!("archive row {day}:{id} is misplaced"));
            }
        }
        if let Some(p) = t.retired.keys().find(|p| !t.people.contains_key(*p)) {
            return Err(format!("unknown person {p} retired"));
        }
        for (p, from) in &t.retired {
            let late = t.by_person.get(p).and_then(|d| {
                d.keys()
                    .find(|(start, _)| *start >= u64::from(*from) * DAY_MIN)
            });
            if let Some((_, blk)) = late {
                return Err(format!("{p} is retired from day {from} but on {blk}"));
            }
        }
        Ok(())
    }

    /// Every person.
    pub fn people(&self) -> impl Iterator<Item = &Person> {
        self.t.people.values()
    }

    /// Every block.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.t.blocks.values()
    }

    /// Every assignment as (block, person, assignment).
    pub fn assignments(&self) -> impl Iterator<Item = (&BlockId, &PersonId, &Assignment)> {
        self.t
            .assignments
            .iter()
            .flat_map(|(b, m)| m.iter().map(move |(p, a)| (b, p, a)))
    }

    /// The blocks `person` works, by start time.
    pub fn duty_of(&self, person: &PersonId) -> Vec<BlockId> {
        self.t
            .by_person
            .get(person)
            .map(|m| m.keys().map(|(_, b)| b.clone()).collect())
            .unwrap_or_default()
    }

    /// The days `person` is on leave, in order.
    pub fn leave_of(&self, person: &PersonId) -> Vec<u32> {
        self.t
            .leave
            .get(person)
            .map(|d| d.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The rejections kept, oldest first.
    pub fn rejections(&self) -> impl Iterator<Item = &RejectionRecord> {
        self.t.rejections.iter()
    }

    /// Rejections ever recorded.
    pub fn rejected_total(&self) -> u64 {
        self.t.rejected_total
    }

    /// blake3 of the snapshot: equal digests, equal schedules.
    pub fn digest(&self) -> Result<[u8; 32], CodecError> {
        Ok(*blake3::hash(&self.snapshot()?).as_bytes())
    }
}

fn reject(rule: Rule, detail: String) -> Rejection {
    Rejection { rule, detail }
}

fn validate_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > 128 || name.chars().any(char::is_control) {
        return Err("name must be 1-128 chars without control characters".into());
    }
    Ok(())
}

fn op_hash(op: &Op) -> [u8; 32] {
    // An op that arrived in a bounded entry always re-encodes; should it not,
    // hashing the debug text keeps the key check deterministic.
    match codec::encode(op) {
        Ok(bytes) => *blake3::hash(&bytes).as_bytes(),
        Err(_) => *blake3::hash(format!("{op:?}").as_bytes()).as_bytes(),
    }
}
