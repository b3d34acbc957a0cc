//! CAP-aware operations: the partition monitor, the per-operation policy,
//! and (in [`gate`], [`heal`], [`store`]) the CapGate, the Healer and the
//! durable provisional changes they share.
//!
//! - [`PartitionMonitor`] turns the membership view into Connected /
//!   Majority / Minority / Isolated ([`partition_state`]): the facility
//!   itself plus every peer the detector does not hold Down, against the
//!   member count. A Suspect peer still counts as reachable: a CP
//!   operation is refused on evidence that a peer is gone, not on a
//!   hunch.
//! - [`mode_of`] is the operation table of DESIGN.md §3 (seed 000 §2):
//!   final approval, leave and the other routine changes are CP; emergency
//!   coverage is AP; a swap is CP unless marked emergency; reads choose.
//! - [`decide`]: in a Connected or Majority facility everything goes
//!   through consensus; in a Minority or Isolated one a CP operation fails
//!   fast with a [`PartitionError`] naming the state and the mode, and an
//!   AP operation proceeds as a provisional change.

pub mod gate;
pub mod heal;
pub mod store;

use serde::{Deserialize, Serialize};

pub use crate::detect::partition::{partition_state, PartitionMonitor, PartitionState};
use crate::schedule::Op;

/// Consistency or availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mode {
    /// Needs a quorum: refused in a minority.
    Cp,
    /// Proceeds alone as a provisional change, healed later.
    Ap,
}

impl Mode {
    /// Stable name.
    pub fn code(self) -> &'static str {
        match self {
            Mode::Cp => "CP",
            Mode::Ap => "AP",
        }
    }
}

/// The mode of a write (DESIGN.md §3). `emergency` marks a swap made for
/// emergency coverage; it changes nothing for other operations.
pub fn mode_of(op: &Op, emergency: bool) -> Mode {
    match op {
        Op::EmergencyCoverage { .. } => Mode::Ap,
        Op::Swap { .. } if emergency => Mode::Ap,
        Op::AddPerson(_)
        | Op::AddBlock(_)
        | Op::Assign { .. }
        | Op::Unassign { .. }
        | Op::Swap { .. }
        | Op::Leave { .. }
        | Op::Approve { .. }
        | Op::Reconcile { .. }
        | Op::Batch(_)
        | Op::RetirePerson { .. }
        | Op::RetireBlock { .. }
        | Op::Archive { .. }
        | Op::DropNamespace { .. }
        | Op::Drill { .. }
        | Op::Checkpoint
        | Op::Validator(_) => Mode::Cp,
    }
}

/// How a schedule read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Confirmed by a quorum first (CP).
    Linearizable,
    /// The local state, with its staleness reported (AP).
    Stale,
}

/// A CP operation refused because this facility cannot reach a quorum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "PARTITIONED: this facility is {state} and {operation} is a {} operation that needs a quorum of facilities",
    mode.code()
)]
pub struct PartitionError {
    /// The partition state.
    pub state: PartitionState,
    /// The operation's mode (always CP).
    pub mode: Mode,
    /// The operation.
    pub operation: String,
}

/// What the gate does with an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Through consensus.
    Consensus,
    /// Stored as a provisional change, replayed when the partition heals.
    Provisional,
    /// Refused at once.
    Refuse(PartitionError),
}

/// The gate's rule for an operation named `operation` of `mode` in `state`.
pub fn decide(mode: Mode, state: PartitionState, operation: &str) -> Decision {
    match (state.has_quorum(), mode) {
        (true, _) => Decision::Consensus,
        (false, Mode::Ap) => Decision::Provisional,
        (false, Mode::Cp) => Decision::Refuse(PartitionError {
            state,
            mode,
            operation: operation.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{BlockId, PersonId};

    #[test]
    fn partition_states_by_reach() {
        use PartitionState::*;
        let table = [
            (1, 0, Connected),
            (3, 2, Connected),
            (3, 1, Majority),
            (3, 0, Isolated),
            (4, 3, Connected),
            (4, 2, Majority),
            (4, 1, Minority),
            (4, 0, Isolated),
            (5, 2, Majority),
            (5, 1, Minority),
            (7, 3, Majority),
            (7, 2, Minority),
        ];
        for (members, reach, want) in table {
            assert_eq!(partition_state(members, reach), want, "{members}/{reach}");
        }
    }

    #[test]
    fn the_monitor_reports_transitions_and_staleness() {
        let mut m = PartitionMonitor::new(3, 0);
        assert_eq!(m.state(), PartitionState::Connected);
        assert_eq!(m.update(2, 100), None);
        assert_eq!(
            m.update(0, 1_000),
            Some((PartitionState::Connected, PartitionState::Isolated))
        );
        assert_eq!(m.stale_ms(4_000), 3_000);
        assert_eq!(
            m.update(1, 5_000),
            Some((PartitionState::Isolated, PartitionState::Majority))
        );
        assert_eq!(m.stale_ms(6_000), 0);
        assert_eq!(m.since_ms(), 5_000);
    }

    #[test]
    fn the_operation_table() {
        let (p, b): (PersonId, BlockId) = ("p".parse().unwrap(), "b".parse().unwrap());
        let swap = Op::Swap {
            a: p.clone(),
            a_block: b.clone(),
            b: p.clone(),
            b_block: b.clone(),
        };
        assert_eq!(mode_of(&Op::Approve { through_day: 1 }, true), Mode::Cp);
        assert_eq!(
            mode_of(
                &Op::Leave {
                    person: p.clone(),
                    from_day: 0,
                    to_day: 0
                },
                false
            ),
            Mode::Cp
        );
        assert_eq!(
            mode_of(
                &Op::EmergencyCoverage {
                    block: b.clone(),
                    person: p.clone()
                },
                false
            ),
            Mode::Ap
        );
        assert_eq!(mode_of(&swap, false), Mode::Cp);
        assert_eq!(mode_of(&swap, true), Mode::Ap);
        for state in [PartitionState::Connected, PartitionState::Majority] {
            assert_eq!(decide(Mode::Cp, state, "approve"), Decision::Consensus);
            assert_eq!(decide(Mode::Ap, state, "cover"), Decision::Consensus);
        }
        for state in [PartitionState::Minority, PartitionState::Isolated] {
            assert_eq!(decide(Mode::Ap, state, "cover"), Decision::Provisional);
            let Decision::Refuse(e) = decide(Mode::Cp, state, "approve") else {
                panic!("CP in {state} must be refused");
            };
            let text = e.to_string();
            assert!(text.contains(state.code()) && text.contains("CP"), "{text}");
        }
    }
}
