//! Planted bugs (mutation testing): realistic one-line bugs, each compiled
//! in only with the test-only feature `plant` and switched on at run time
//! by name, so `bulwark sim --plant NAME` can show the simulation catches
//! it.
//!
//! At most one bug is active per process. It is chosen once, by [`set`]
//! before anything runs, or else from the environment variable
//! [`ENV_VAR`] the first time [`active`] is asked. Without the feature,
//! [`active`] is the constant `false` and every planted path compiles away.

/// The environment variable naming the active bug (read once).
pub const ENV_VAR: &str = "BULWARK_PLANT";

/// One planted bug. [`Bug::name`] is its stable name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bug {
    /// A Ready's messages go out before its entries and hard state are durable.
    SendBeforePersist,
    /// The BFT quorum is one vote short.
    QuorumMinusOne,
    /// A retried command executes again instead of answering its first outcome.
    RetryAppliedTwice,
    /// A linearizable read is served without the read-index confirmation.
    ReadWithoutIndex,
    /// A restart resumes applying one past the replica's applied index.
    SnapshotIndexPlusOne,
    /// The 80-hour rule looks at 6 days instead of 7.
    DutyWindow6Days,
    /// The day-off rule lets 7 days on in a row through.
    DaysOn7,
    /// The continuous-shift limit is 30 h instead of 28 h.
    Shift30h,
    /// The double-booking check misses blocks that start at the same minute.
    TouchingIsOverlapFree,
    /// The healer's last-write-wins keeps the earlier stamp.
    LwwReversed,
    /// A validator sends its vote before recording it durably.
    VoteNotDurable,
    /// Two votes by one signer at one height are not recorded as evidence.
    EquivocationUndetected,
    /// A child call gets a fresh full deadline, not what its parent has left.
    DeadlineGrows,
    /// A bulkhead pool lends out units of its reserve.
    ReserveLent,
    /// The Raft hard state is stored without the vote.
    VoteTwicePerTerm,
    /// The Raft log and hard state commit without an fsync.
    LogNotSynced,
    /// A checkpoint's backup is read after its whole batch, not right
    /// after its entry.
    CheckpointAfterBatch,
    /// A validator signs every vote with its first key, whatever key its
    /// height's validator set names.
    VoteUnderFirstKey,
    /// A validator's sends leave as soon as its votes are staged, before
    /// the durable commit that writes them.
    VoteNotSynced,
}

/// Every planted bug, in a stable order.
pub const ALL: [Bug; 19] = [
    Bug::SendBeforePersist,
    Bug::QuorumMinusOne,
    Bug::RetryAppliedTwice,
    Bug::ReadWithoutIndex,
    Bug::SnapshotIndexPlusOne,
    Bug::DutyWindow6Days,
    Bug::DaysOn7,
    Bug::Shift30h,
    Bug::TouchingIsOverlapFree,
    Bug::LwwReversed,
    Bug::VoteNotDurable,
    Bug::EquivocationUndetected,
    Bug::DeadlineGrows,
    Bug::ReserveLent,
    Bug::VoteTwicePerTerm,
    Bug::LogNotSynced,
    Bug::CheckpointAfterBatch,
    Bug::VoteUnderFirstKey,
    Bug::VoteNotSynced,
];

impl Bug {
    /// The stable, kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Bug::SendBeforePersist => "send-before-persist",
            Bug::QuorumMinusOne => "quorum-minus-one",
            Bug::RetryAppliedTwice => "retry-applied-twice",
            Bug::ReadWithoutIndex => "read-without-index",
            Bug::SnapshotIndexPlusOne => "snapshot-index-plus-one",
            Bug::DutyWindow6Days => "duty-window-6-days",
            Bug::DaysOn7 => "days-on-7",
            Bug::Shift30h => "shift-30h",
            Bug::TouchingIsOverlapFree => "touching-is-overlap-free",
            Bug::LwwReversed => "lww-reversed",
            Bug::VoteNotDurable => "vote-not-durable",
            Bug::EquivocationUndetected => "equivocation-undetected",
            Bug::DeadlineGrows => "deadline-grows",
            Bug::ReserveLent => "reserve-lent",
            Bug::VoteTwicePerTerm => "vote-twice-per-term",
            Bug::LogNotSynced => "log-not-synced",
            Bug::CheckpointAfterBatch => "checkpoint-after-batch",
            Bug::VoteUnderFirstKey => "vote-under-first-key",
            Bug::VoteNotSynced => "vote-not-synced",
        }
    }

    /// The bug named `name`, if any.
    pub fn from_name(name: &str) -> Option<Bug> {
        ALL.into_iter().find(|b| b.name() == name)
    }

    /// The bug as a developer would have written it, and where.
    pub fn what(self) -> &'static str {
        match self {
            Bug::SendBeforePersist => {
                "raft/core.rs on_ready: a Ready's messages (votes, append acks) are sent before its entries and hard state are persisted"
            }
            Bug::QuorumMinusOne => {
                "ledger.rs quorum: the certificate size is one vote less than (n+f+1)/2 rounded up"
            }
            Bug::RetryAppliedTwice => {
                "schedule/mod.rs apply and is_duplicate: a retry (same key, same op) executes again instead of answering its first outcome"
            }
            Bug::ReadWithoutIndex => {
                "raft/core.rs read: a linearizable read is served at the local applied index without the read-index round"
            }
            Bug::SnapshotIndexPlusOne => {
                "raft/core.rs open: after a restart, the replica's applied index is taken as one more than it is, so the next committed entry is never applied"
            }
            Bug::DutyWindow6Days => {
                "schedule/rules.rs check: the rolling 80-hour window is 6 days instead of 7"
            }
            Bug::DaysOn7 => {
                "schedule/rules.rs check: the day-off run test is `>` instead of `>=`, so 7 days on in a row pass"
            }
            Bug::Shift30h => {
                "schedule/rules.rs check: the continuous-shift limit is 30 h instead of 28 h"
            }
            Bug::TouchingIsOverlapFree => {
                "schedule/rules.rs check: the overlap test asks that the next block start strictly after the previous one's start, so two blocks starting at the same minute pass"
            }
            Bug::LwwReversed => {
                "cap/heal.rs judge: last-write-wins compares the HLC stamps the wrong way round (the earlier write wins)"
            }
            Bug::VoteNotDurable => {
                "bft.rs carry_out: a validator's votes are sent before the batch recording them is written"
            }
            Bug::EquivocationUndetected => {
                "bft/core.rs accept_vote and on_late_vote: a second vote by a signer at a height is dropped as a repeat, not recorded as equivocation"
            }
            Bug::DeadlineGrows => {
                "flow/timeout.rs child_deadline: a child call gets its own full timeout instead of the parent's remaining time"
            }
            Bug::ReserveLent => {
                "flow/bulkhead.rs acquire: a pool's lendable units forget to subtract its reserve"
            }
            Bug::VoteTwicePerTerm => {
                "raft/storage.rs persist: the hard state is written with term and commit but without the vote"
            }
            Bug::LogNotSynced => {
                "raft/storage.rs persist: the log's entries and hard state commit with Durability::None, so what a facility acknowledged can vanish in a power loss"
            }
            Bug::CheckpointAfterBatch => {
                "replica/machine.rs apply: a checkpoint does not end its batch's transaction, so its backup holds the entries applied after it in the same batch"
            }
            Bug::VoteUnderFirstKey => {
                "bft/core.rs sign_vote: a validator signs every vote with its first key, not the one its height's validator set names, so after a rotation its votes do not verify"
            }
            Bug::VoteNotSynced => {
                "bft.rs carry_out: a batch's sends wait for nothing after its votes are staged, so a vote leaves before the durable commit that writes it"
            }
        }
    }
}

/// Why [`set`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlantError {
    /// The binary has no planted bugs.
    #[error("this binary was built without `--features plant`: no planted bugs")]
    Disabled,
    /// Another choice was made first.
    #[error("a planted bug was already chosen ({})", .0.map_or("none", Bug::name))]
    AlreadySet(Option<Bug>),
}

/// True when the planted bugs are compiled in.
pub fn enabled() -> bool {
    cfg!(feature = "plant")
}

#[cfg(feature = "plant")]
static CHOSEN: std::sync::OnceLock<Option<Bug>> = std::sync::OnceLock::new();

/// Chooses the active bug (`None`: none) for this process, once, before
/// anything runs. Setting the same choice again is accepted.
#[cfg(feature = "plant")]
pub fn set(bug: Option<Bug>) -> Result<(), PlantError> {
    let now = *CHOSEN.get_or_init(|| bug);
    if now == bug {
        Ok(())
    } else {
        Err(PlantError::AlreadySet(now))
    }
}

/// Refuses: the binary was built without the feature.
#[cfg(not(feature = "plant"))]
pub fn set(_bug: Option<Bug>) -> Result<(), PlantError> {
    Err(PlantError::Disabled)
}

/// Whether `bug` is the active one. Without a [`set`], the choice is read
/// once from [`ENV_VAR`]; an unknown name is logged and means none.
#[cfg(feature = "plant")]
pub fn active(bug: Bug) -> bool {
    *CHOSEN.get_or_init(from_env) == Some(bug)
}

/// Always false: the binary was built without the feature.
#[cfg(not(feature = "plant"))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}

#[cfg(feature = "plant")]
fn from_env() -> Option<Bug> {
    let name = std::env::var(ENV_VAR).ok()?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let bug = Bug::from_name(name);
    if bug.is_none() {
        tracing::error!(name, "{ENV_VAR} names no planted bug; none is active");
    }
    bug
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut seen = std::collections::BTreeSet::new();
        for b in ALL {
            assert_eq!(Bug::from_name(b.name()), Some(b));
            assert!(seen.insert(b.name()), "{} twice", b.name());
            assert!(!b.what().is_empty());
            assert!(b
                .name()
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
        assert_eq!(Bug::from_name("no-such-bug"), None);
        assert_eq!(Bug::from_name(""), None);
    }

    #[cfg(not(feature = "plant"))]
    #[test]
    fn without_the_feature_nothing_is_active_and_set_refuses() {
        assert!(!enabled());
        assert_eq!(set(Some(Bug::QuorumMinusOne)), Err(PlantError::Disabled));
        assert!(ALL.into_iter().all(|b| !active(b)));
    }

    #[cfg(feature = "plant")]
    #[test]
    fn with_the_feature_the_choice_is_made_once() {
        // The unit tests of this crate choose no bug: every test runs the
        // real code.
        assert!(enabled());
        assert_eq!(set(None), Ok(()));
        assert_eq!(set(None), Ok(()));
        assert_eq!(
            set(Some(Bug::QuorumMinusOne)),
            Err(PlantError::AlreadySet(None))
        );
        assert!(ALL.into_iter().all(|b| !active(b)));
    }
}
