//! The archiver: on the leader, proposes [`Op::Archive`] for the finally
//! approved days more than `[schedule] archive_after_days` before the last
//! approved day, a few days per command ([`ARCHIVE_DAYS_MAX`]), so the hot
//! tables hold a bounded stretch of days however long the history grows.
//!
//! Every proposal carries a key derived from the day it archives through:
//! the same step proposed twice (a leader change mid-round, two facilities
//! that both believe they lead) applies once.

use std::time::Duration;

use bulwark_actors::cap::gate::{GateMsg, GateOutcome, CAP_GATE};
use bulwark_actors::hlc::Hlc;
use bulwark_actors::raft::{inspect, ProposeOutcome, RaftMsg, RAFT};
use bulwark_actors::schedule::TablesRead;
use bulwark_actors::schedule::{Command, IdempotencyKey, Op, Outcome, ARCHIVE_DAYS_MAX};
use bulwark_runtime::{NodeCtx, Zone};

/// Most archive commands one round proposes.
pub const STEPS_PER_ROUND: usize = 64;

/// The day the next archive step runs through, if any is due: the approved
/// days more than `keep_days` before the last approved one, from the first
/// day not yet archived, at most [`ARCHIVE_DAYS_MAX`] of them.
pub fn next_through(approved: Option<u32>, archived: Option<u32>, keep_days: u32) -> Option<u32> {
    let target = approved?.checked_sub(keep_days)?;
    let from = match archived {
        Some(d) => d.checked_add(1)?,
        None => 0,
    };
    (target >= from).then(|| target.min(from + (ARCHIVE_DAYS_MAX - 1)))
}

/// The key of the step that archives through `day`.
pub fn step_key(day: u32) -> IdempotencyKey {
    let h = blake3::hash(format!("bulwark archive through {day}").as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.as_bytes()[..16]);
    IdempotencyKey(k)
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// This facility does not lead: nothing proposed.
    NotLeader,
    /// Archived through this day (or nothing was due: the current day).
    Done(Option<u32>),
}

/// One round: while this facility leads and a step is due, propose it.
/// `Err` names what stopped it (a refused step, no quorum, a timeout);
/// the next round tries again.
pub async fn round(ctx: &NodeCtx, keep_days: u32, timeout: Duration) -> Result<Round, String> {
    let raft = ctx
        .find::<RaftMsg>(Zone::Consensus, RAFT)
        .ok_or("the RaftPeer is not running")?;
    let gate = ctx
        .find::<GateMsg>(Zone::Detection, CAP_GATE)
        .ok_or("the CAP gate is not running")?;
    let mut archived = None;
    for _ in 0..STEPS_PER_ROUND {
        let status = raft
            .call(RaftMsg::Status, Some(timeout))
            .await
            .map_err(|e| e.to_string())?
            .success_or("the RaftPeer did not answer in time")?;
        if !status.is_leader {
            return Ok(Round::NotLeader);
        }
        let (approved, done) = inspect(&raft, |v| {
            (v.approved_through(), v.tables().archived_through())
        })
        .await
        .ok_or("the replica could not be read")?;
        archived = done;
        let Some(through) = next_through(approved, done, keep_days) else {
            return Ok(Round::Done(archived));
        };
        let command = Command {
            key: step_key(through),
            issued_by: ctx.facility.clone(),
            at_unix_ms: ctx.clock.unix_ms(),
            hlc: Hlc::ZERO,
            op: Op::Archive {
                through_day: through,
            },
        };
        let outcome = gate
            .call(
                |reply| GateMsg::Submit {
                    command,
                    emergency: false,
                    deadline: Some(tokio::time::Instant::now() + timeout),
                    reply,
                },
                Some(timeout),
            )
            .await
            .map_err(|e| e.to_string())?
            .success_or("the CAP gate did not answer in time")?;
        match outcome {
            GateOutcome::Consensus(ProposeOutcome::Committed {
                outcome: Outcome::Applied(_),
                ..
            }) => {
                tracing::info!(through_day = through, "archived");
                archived = Some(through);
            }
            other => return Err(format!("archive through day {through}: {other:?}")),
        }
    }
    Ok(Round::Done(archived))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_step_keeps_the_horizon_and_moves_a_week_at_most() {
        assert_eq!(next_through(None, None, 30), None);
        assert_eq!(next_through(Some(20), None, 30), None);
        assert_eq!(next_through(Some(30), None, 30), Some(0));
        assert_eq!(next_through(Some(100), None, 30), Some(6));
        assert_eq!(next_through(Some(100), Some(6), 30), Some(13));
        assert_eq!(next_through(Some(100), Some(66), 30), Some(70));
        assert_eq!(next_through(Some(100), Some(70), 30), None);
        assert_eq!(next_through(Some(100), Some(u32::MAX), 0), None);
        assert_ne!(step_key(6), step_key(13));
    }
}
