//! The Healer (consensus zone): when this facility reaches a quorum
//! again, it replays its provisional changes through consensus, oldest
//! stamp first, resolves the conflicts by the configured policy, and
//! writes a reconciliation report.
//!
//! A provisional change is replayed as it was made (same idempotency key,
//! same HLC stamp), so a change that had in fact committed before is a
//! duplicate, not a second copy. When the schedule refuses it, [`judge`]
//! decides, from the refusal and the committed state:
//! - the same person already holds the block: nothing to do;
//! - the block was filled by someone else meanwhile ("two facilities
//!   filling one block differently"): under last-write-wins the later
//!   HLC stamp wins; if the provisional change is later than the latest
//!   holder, an [`Op::Reconcile`] takes that holder off and puts the
//!   provisional person on, in one committed command; otherwise it is
//!   superseded, naming the winner. Under manual review it is queued;
//! - it now breaks another rule (duty hours, double booking elsewhere,
//!   leave): it cannot win; superseded by the rule (last-write-wins) or
//!   queued (manual review).
//!
//! Queued changes wait for [`HealerMsg::Resolve`]: accepted, the change
//! replaces the block's latest holder; refused, it is superseded.

use std::time::Duration;

use bulwark_runtime::{ChildDef, NodeCtx, Zone};
use bulwark_transport::FacilityId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use super::store::{Provisional, ProvisionalStore, Status};
use crate::detect::Detection;
use crate::hlc::Hlc;
use crate::raft::{inspect, ProposeOutcome, RaftMsg, RAFT};
use crate::replica::ScheduleView;
use crate::schedule::{
    BlockId, Command, IdempotencyKey, Op, Outcome, PersonId, Rejection, Rule, Schedule, TablesRead,
};

/// The Healer's registered name.
pub const HEALER: &str = "healer";

/// How conflicts are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictPolicy {
    /// The later hybrid-logical-clock stamp wins.
    #[default]
    LastWriteWins,
    /// Conflicts wait for an operator.
    ManualReview,
}

/// Somebody on a block, with the stamp of the command that put them there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Who.
    pub person: PersonId,
    /// When (the command's HLC stamp).
    pub stamp: Hlc,
}

/// Why a provisional change did not simply apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Conflict {
    /// The block was filled differently while this facility was cut off.
    BlockFilled {
        /// The block.
        block: BlockId,
        /// Who holds it now.
        holders: Vec<Holder>,
    },
    /// The change breaks a rule against the committed schedule.
    RuleBroken {
        /// The rule.
        rule: Rule,
        /// The schedule's explanation.
        detail: String,
    },
}

/// What became of a provisional change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Resolution {
    /// Replayed and committed.
    Applied {
        /// Log index.
        index: u64,
        /// Ledger height.
        height: Option<u64>,
    },
    /// It had already been applied (committed before, or the same person
    /// holds the block).
    AlreadyApplied,
    /// It won a conflict and replaced the losers, in one committed command.
    Won {
        /// Log index of the reconciling command.
        index: u64,
        /// Ledger height.
        height: Option<u64>,
        /// Who was taken off the block.
        replaced: Vec<PersonId>,
    },
    /// It lost: `winner` names the committed change or the rule.
    Superseded {
        /// The winner.
        winner: String,
    },
    /// Waiting for an operator.
    Queued,
}

impl Resolution {
    /// Stable name.
    pub fn code(&self) -> &'static str {
        match self {
            Resolution::Applied { .. } => "APPLIED",
            Resolution::AlreadyApplied => "ALREADY_APPLIED",
            Resolution::Won { .. } => "WON",
            Resolution::Superseded { .. } => "SUPERSEDED",
            Resolution::Queued => "QUEUED",
        }
    }
}

/// One provisional change in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// The provisional change's id.
    pub id: u64,
    /// Its stamp.
    pub hlc: Hlc,
    /// The operation.
    pub operation: String,
    /// The block and person it concerned, when it names them.
    pub target: Option<(BlockId, PersonId)>,
    /// The conflict found, if any.
    pub conflict: Option<Conflict>,
    /// What became of it.
    pub resolution: Resolution,
}

/// A reconciliation report: every provisional change one round handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The round (local sequence).
    pub round: u64,
    /// The facility that made the changes.
    pub facility: FacilityId,
    /// The policy applied.
    pub policy: ConflictPolicy,
    /// When the round ended (wall clock).
    pub at_unix_ms: u64,
    /// Every change handled.
    pub items: Vec<Item>,
}

impl Report {
    /// The items that met a conflict.
    pub fn conflicts(&self) -> impl Iterator<Item = &Item> {
        self.items.iter().filter(|i| i.conflict.is_some())
    }

    /// A plain-text rendering, one line per change.
    pub fn render(&self) -> String {
        let mut s = format!(
            "reconciliation round {} at {} ({:?}): {} changes, {} conflicts\n",
            self.round,
            self.facility,
            self.policy,
            self.items.len(),
            self.conflicts().count()
        );
        for i in &self.items {
            let target = i
                .target
                .as_ref()
                .map(|(b, p)| format!(" {p} on {b}"))
                .unwrap_or_default();
            let conflict = match &i.conflict {
                None => String::new(),
                Some(Conflict::BlockFilled { holders, .. }) => format!(
                    "; conflict: block held by {}",
                    holders
                        .iter()
                        .map(|h| format!("{}@{}", h.person, h.stamp))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Some(Conflict::RuleBroken { rule, detail }) => {
                    format!("; conflict: {} ({detail})", rule.code())
                }
            };
            let how = match &i.resolution {
                Resolution::Superseded { winner } => format!("SUPERSEDED by {winner}"),
                Resolution::Won { replaced, .. } => format!(
                    "WON, replaced {}",
                    replaced
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                other => other.code().to_string(),
            };
            s.push_str(&format!(
                "  #{} {}{target} @{}: {how}{conflict}\n",
                i.id, i.operation, i.hlc
            ));
        }
        s
    }
}

/// What to do after the schedule refused a replayed change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Settled.
    Done(Resolution),
    /// Propose an [`Op::Reconcile`] taking these people off the block.
    Replace(Vec<PersonId>),
    /// Queue for review.
    Queue,
}

/// The block and person a change concerns, if it names one.
pub fn target(op: &Op) -> Option<(BlockId, PersonId)> {
    match op {
        Op::EmergencyCoverage { block, person } | Op::Assign { person, block } => {
            Some((block.clone(), person.clone()))
        }
        _ => None,
    }
}

/// Judges a provisional change the schedule refused with `rejection`,
/// against the committed `state`. Deterministic.
pub fn judge<T: TablesRead>(
    p: &Provisional,
    rejection: &Rejection,
    state: &Schedule<T>,
    policy: ConflictPolicy,
) -> (Option<Conflict>, Next) {
    if let Op::EmergencyCoverage { block, person } = &p.command.op {
        if state.assignees(block).contains(person) {
            return (None, Next::Done(Resolution::AlreadyApplied));
        }
        if rejection.rule == Rule::BlockFull {
            let mut holders: Vec<Holder> = state
                .assignments_on(block)
                .into_iter()
                .map(|(person, a)| Holder {
                    person,
                    stamp: a.stamp,
                })
                .collect();
            holders.sort_by_key(|h| h.stamp);
            let latest = holders.last().cloned();
            let conflict = Conflict::BlockFilled {
                block: block.clone(),
                holders,
            };
            let next = match (policy, latest) {
                (ConflictPolicy::ManualReview, _) => Next::Queue,
                (ConflictPolicy::LastWriteWins, Some(l)) if later(p.hlc, l.stamp) => {
                    Next::Replace(vec![l.person])
                }
                (ConflictPolicy::LastWriteWins, Some(l)) => Next::Done(Resolution::Superseded {
                    winner: format!("{} on {block} at {}", l.person, l.stamp),
                }),
                (ConflictPolicy::LastWriteWins, None) => Next::Done(Resolution::Superseded {
                    winner: format!("rule {}", rejection.rule.code()),
                }),
            };
            return (Some(conflict), next);
        }
    }
    let conflict = Conflict::RuleBroken {
        rule: rejection.rule,
        detail: rejection.detail.clone(),
    };
    let next = match policy {
        ConflictPolicy::ManualReview => Next::Queue,
        ConflictPolicy::LastWriteWins => Next::Done(Resolution::Superseded {
            winner: format!("rule {}: {}", rejection.rule.code(), rejection.detail),
        }),
    };
    (Some(conflict), next)
}

/// Whether stamp `a` is later than `b` (last-write-wins).
fn later(a: Hlc, b: Hlc) -> bool {
    if crate::plant::active(crate::plant::Bug::LwwReversed) {
        return a < b;
    }
    a > b
}

/// The key of the reconciling command made for provisional change `key`
/// (so a retried resolution applies once).
pub fn reconcile_key(key: &IdempotencyKey) -> IdempotencyKey {
    let mut h = blake3::Hasher::new();
    h.update(b"bulwark.reconcile.v1");
    h.update(&key.0);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    IdempotencyKey(out)
}

/// How to make a facility's Healer.
#[derive(Clone)]
pub struct HealerSetup {
    /// The membership view (when to heal).
    pub detection: Detection,
    /// The conflict policy.
    pub policy: ConflictPolicy,
    /// How often to look for work, in ms.
    pub tick_ms: u64,
    /// Longest wait for one proposal.
    pub propose_timeout: Duration,
}

impl HealerSetup {
    /// The defaults: last-write-wins, a look every second.
    pub fn new(detection: Detection) -> HealerSetup {
        HealerSetup {
            detection,
            policy: ConflictPolicy::default(),
            tick_ms: 1_000,
            propose_timeout: Duration::from_secs(10),
        }
    }
}

/// Messages of the [`Healer`].
pub enum HealerMsg {
    /// Look for work (self-sent).
    Tick,
    /// Every report so far, oldest first.
    Reports(RpcReplyPort<Vec<Report>>),
    /// The changes waiting for review.
    Reviews(RpcReplyPort<Vec<Provisional>>),
    /// An operator's decision on a queued change.
    Resolve {
        /// The provisional change.
        id: u64,
        /// Accept it (it replaces the block's latest holder) or refuse it.
        accept: bool,
        /// The report of the decision, or why it could not be made.
        reply: RpcReplyPort<Result<Report, ResolveError>>,
    },
}

/// Why an operator's decision on a queued change was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No change with that id waits for review (unknown, or settled).
    #[error("no provisional change {0} awaits review")]
    NotQueued(u64),
    /// Only emergency coverage can replace a block's holder.
    #[error("only emergency coverage can be accepted over a holder; refuse this one")]
    NotAcceptable,
    /// The decision could not be made or recorded now; list the queue
    /// again before deciding again (it may have been taken).
    #[error("{0}; list the queue again before deciding again")]
    Unavailable(String),
}

/// The Healer actor.
pub struct Healer;

/// Its state.
pub struct HealerState {
    ctx: NodeCtx,
    setup: HealerSetup,
    store: ProvisionalStore,
    next_round: u64,
    ticker: ractor::concurrency::JoinHandle<()>,
}

/// The Healer as a child of the consensus zone.
pub fn healer_child(setup: HealerSetup) -> (Zone, ChildDef) {
    let def = ChildDef::new(HEALER, move |ctx: &NodeCtx| {
        (Healer, (ctx.clone(), setup.clone()))
    });
    (Zone::Consensus, def)
}

/// A committed proposal.
struct Committed {
    index: u64,
    outcome: Outcome,
    height: Option<u64>,
    duplicate: bool,
}

/// How one replay ended.
enum Replay {
    Done(Option<Conflict>, Resolution),
    Queue(Option<Conflict>),
    /// No quorum or no answer: try again next time.
    Later,
}

impl HealerState {
    fn raft(&self) -> Option<ActorRef<RaftMsg>> {
        self.ctx.find(Zone::Consensus, RAFT)
    }

    async fn propose(&self, command: Command) -> Option<ProposeOutcome> {
        let raft = self.raft()?;
        ractor::call_t!(
            raft,
            |reply| RaftMsg::Propose {
                command,
                deadline: None,
                reply,
            },
            self.setup.propose_timeout.as_millis() as u64
        )
        .ok()
    }

    /// Proposes `command`: `Ok` with the committed outcome (and whether
    /// it was a retry of an applied command), `Err` when no quorum took
    /// it (try later).
    async fn commit(&self, command: Command) -> Result<Committed, ()> {
        match self.propose(command).await {
            Some(ProposeOutcome::Committed {
                index,
                outcome,
                height,
                duplicate,
            }) => Ok(Committed {
                index,
                outcome,
                height,
                duplicate,
            }),
            _ => Err(()),
        }
    }

    async fn replace(
        &self,
        p: &Provisional,
        remove: Vec<PersonId>,
        conflict: Option<Conflict>,
    ) -> Replay {
        let Op::EmergencyCoverage { block, person } = &p.command.op else {
            return Replay::Done(
                conflict,
                Resolution::Superseded {
                    winner: "only emergency coverage can replace a holder".into(),
                },
            );
        };
        let mut cmd = p.command.clone();
        cmd.key = reconcile_key(&p.command.key);
        cmd.op = Op::Reconcile {
            block: block.clone(),
            remove: remove.clone(),
            cover: person.clone(),
        };
        match self.commit(cmd).await {
            Err(()) => Replay::Later,
            Ok(Committed {
                index,
                outcome: Outcome::Applied(_),
                height,
                ..
            }) => Replay::Done(
                conflict,
                Resolution::Won {
                    index,
                    height,
                    replaced: remove,
                },
            ),
            Ok(Committed {
                outcome: Outcome::Rejected(r),
                ..
            }) => Replay::Done(
                conflict,
                Resolution::Superseded {
                    winner: format!("rule {}: {}", r.rule.code(), r.detail),
                },
            ),
        }
    }

    async fn replay(&self, p: &Provisional) -> Replay {
        let c = match self.commit(p.command.clone()).await {
            Ok(c) => c,
            Err(()) => return Replay::Later,
        };
        let rejection = match c.outcome {
            Outcome::Applied(_) if c.duplicate => {
                return Replay::Done(None, Resolution::AlreadyApplied)
            }
            Outcome::Applied(_) => {
                return Replay::Done(
                    None,
                    Resolution::Applied {
                        index: c.index,
                        height: c.height,
                    },
                )
            }
            Outcome::Rejected(r) => r,
        };
        let Some(raft) = self.raft() else {
            return Replay::Later;
        };
        let (pp, policy) = (p.clone(), self.setup.policy);
        let Some((conflict, next)) = inspect(&raft, move |s: &ScheduleView| {
            judge(&pp, &rejection, s, policy)
        })
        .await
        else {
            return Replay::Later;
        };
        match next {
            Next::Done(r) => Replay::Done(conflict, r),
            Next::Queue => Replay::Queue(conflict),
            Next::Replace(remove) => self.replace(p, remove, conflict).await,
        }
    }

    fn item(p: &Provisional, conflict: Option<Conflict>, resolution: Resolution) -> Item {
        Item {
            id: p.id,
            hlc: p.hlc,
            operation: p.command.op.name().to_string(),
            target: target(&p.command.op),
            conflict,
            resolution,
        }
    }

    fn finish(&mut self, items: Vec<Item>, updates: Vec<(u64, Status)>) -> Option<Report> {
        if items.is_empty() {
            return None;
        }
        let report = Report {
            round: self.next_round,
            facility: self.ctx.facility.clone(),
            policy: self.setup.policy,
            at_unix_ms: self.ctx.clock.unix_ms(),
            items,
        };
        if let Err(e) = self.store.settle(&updates, Some(&report)) {
            tracing::error!(error = %e, "reconciliation report not stored; will replay again");
            return None;
        }
        self.next_round += 1;
        for i in &report.items {
            metrics::counter!("bulwark_heal_changes_total", "resolution" => i.resolution.code())
                .increment(1);
        }
        tracing::info!(report = %report.render(), "partition healed");
        Some(report)
    }

    /// One round over every pending change.
    async fn heal(&mut self) -> Result<(), ActorProcessingErr> {
        let pending = self.store.with_status(&Status::Pending)?;
        if pending.is_empty() {
            return Ok(());
        }
        let round = self.next_round;
        let mut items = Vec::new();
        let mut updates = Vec::new();
        for p in &pending {
            match self.replay(p).await {
                Replay::Later => break,
                Replay::Done(c, r) => {
                    items.push(Self::item(p, c, r));
                    updates.push((p.id, Status::Settled { round }));
                }
                Replay::Queue(c) => {
                    items.push(Self::item(p, c, Resolution::Queued));
                    updates.push((p.id, Status::Review));
                }
            }
        }
        self.finish(items, updates);
        Ok(())
    }

    async fn resolve(&mut self, id: u64, accept: bool) -> Result<Report, ResolveError> {
        let queued = self
            .store
            .with_status(&Status::Review)
            .map_err(|e| ResolveError::Unavailable(e.to_string()))?;
        let p = queued
            .into_iter()
            .find(|p| p.id == id)
            .ok_or(ResolveError::NotQueued(id))?;
        let round = self.next_round;
        let replay = if !accept {
            Replay::Done(
                None,
                Resolution::Superseded {
                    winner: "operator review".into(),
                },
            )
        } else {
            let Op::EmergencyCoverage { block, .. } = &p.command.op else {
                return Err(ResolveError::NotAcceptable);
            };
            let raft = self
                .raft()
                .ok_or_else(|| ResolveError::Unavailable("no RaftPeer runs".into()))?;
            let b = block.clone();
            let latest = inspect(&raft, move |s: &ScheduleView| {
                let mut on = s.assignments_on(&b);
                on.sort_by_key(|(_, a)| a.stamp);
                on.last().map(|(p, _)| p.clone())
            })
            .await
            .ok_or_else(|| ResolveError::Unavailable("the RaftPeer did not answer".into()))?;
            self.replace(&p, latest.into_iter().collect(), None).await
        };
        match replay {
            Replay::Done(c, r) => {
                let item = Self::item(&p, c, r);
                self.finish(vec![item], vec![(p.id, Status::Settled { round })])
                    .ok_or_else(|| ResolveError::Unavailable("the report was not stored".into()))
            }
            _ => Err(ResolveError::Unavailable(
                "no quorum took the resolution".into(),
            )),
        }
    }
}

impl Actor for Healer {
    type Msg = HealerMsg;
    type State = HealerState;
    type Arguments = (NodeCtx, HealerSetup);

    async fn pre_start(
        &self,
        myself: ActorRef<HealerMsg>,
        (ctx, setup): (NodeCtx, HealerSetup),
    ) -> Result<HealerState, ActorProcessingErr> {
        let store = ProvisionalStore::new(ctx.store.clone());
        let next_round = store.reports()?.last().map_or(1, |r| r.round + 1);
        let ticker = myself.send_interval(Duration::from_millis(setup.tick_ms.max(1)), || {
            HealerMsg::Tick
        });
        Ok(HealerState {
            ctx,
            setup,
            store,
            next_round,
            ticker,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HealerMsg>,
        msg: HealerMsg,
        st: &mut HealerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HealerMsg::Tick => {
                if st.setup.detection.view().partition.has_quorum() {
                    st.heal().await?;
                }
            }
            HealerMsg::Reports(reply) => {
                let _ = reply.send(st.store.reports()?);
            }
            HealerMsg::Reviews(reply) => {
                let _ = reply.send(st.store.with_status(&Status::Review)?);
            }
            HealerMsg::Resolve { id, accept, reply } => {
                let _ = reply.send(st.resolve(id, accept).await);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<HealerMsg>,
        st: &mut HealerState,
    ) -> Result<(), ActorProcessingErr> {
        st.ticker.abort();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cap::PartitionState;
    use crate::schedule::{Applied, Block, Person, Pool, Role};

    fn cmd(n: u64, wall: u64, op: Op) -> Command {
        Command {
            key: IdempotencyKey([n as u8; 16]),
            issued_by: "alpha".parse().unwrap(),
            at_unix_ms: wall,
            hlc: Hlc {
                wall_ms: wall,
                logical: 0,
                node: 1,
            },
            op,
        }
    }

    use crate::schedule::ScheduleState;

    fn world() -> ScheduleState {
        let mut s = ScheduleState::new();
        let mut n = 0;
        let mut apply = |s: &mut ScheduleState, op: Op, wall: u64| {
            n += 1;
            assert!(matches!(
                s.apply(n, &cmd(n, wall, op)),
                Applied::Fresh(Outcome::Applied(_))
            ));
        };
        for p in ["ann", "bob"] {
            apply(
                &mut s,
                Op::AddPerson(Person {
                    id: p.parse().unwrap(),
                    name: p.into(),
                    role: Role::Resident { pgy: 1 },
                }),
                1,
            );
        }
        apply(
            &mut s,
            Op::AddBlock(Block {
                id: "night".parse().unwrap(),
                day: 3,
                start_min: 1200,
                duration_min: 600,
                pool: Pool::Icu,
                required: 1,
            }),
            1,
        );
        // The majority side covered the night at wall time 5,000.
        apply(
            &mut s,
            Op::EmergencyCoverage {
                block: "night".parse().unwrap(),
                person: "ann".parse().unwrap(),
            },
            5_000,
        );
        s
    }

    fn provisional(wall: u64, who: &str) -> Provisional {
        Provisional {
            id: 1,
            hlc: Hlc {
                wall_ms: wall,
                logical: 0,
                node: 2,
            },
            facility: "charlie".parse().unwrap(),
            state: PartitionState::Isolated,
            command: cmd(
                99,
                wall,
                Op::EmergencyCoverage {
                    block: "night".parse().unwrap(),
                    person: who.parse().unwrap(),
                },
            ),
            status: Status::Pending,
        }
    }

    fn full() -> Rejection {
        Rejection {
            rule: Rule::BlockFull,
            detail: "night has its 1 people".into(),
        }
    }

    #[test]
    fn last_write_wins_by_stamp() {
        let s = world();
        let (c, next) = judge(
            &provisional(6_000, "bob"),
            &full(),
            &s,
            ConflictPolicy::LastWriteWins,
        );
        assert!(matches!(c, Some(Conflict::BlockFilled { .. })));
        assert_eq!(next, Next::Replace(vec!["ann".parse().unwrap()]));
        let (_, next) = judge(
            &provisional(4_000, "bob"),
            &full(),
            &s,
            ConflictPolicy::LastWriteWins,
        );
        let Next::Done(Resolution::Superseded { winner }) = next else {
            panic!("an earlier write loses: {next:?}");
        };
        assert!(winner.contains("ann"), "{winner}");
    }

    #[test]
    fn manual_review_queues_and_the_same_holder_is_no_conflict() {
        let s = world();
        let (c, next) = judge(
            &provisional(6_000, "bob"),
            &full(),
            &s,
            ConflictPolicy::ManualReview,
        );
        assert!(c.is_some());
        assert_eq!(next, Next::Queue);
        let dup = Rejection {
            rule: Rule::DoubleBooking,
            detail: "ann is already on night".into(),
        };
        assert_eq!(
            judge(
                &provisional(6_000, "ann"),
                &dup,
                &s,
                ConflictPolicy::ManualReview
            ),
            (None, Next::Done(Resolution::AlreadyApplied))
        );
    }

    #[test]
    fn a_broken_rule_never_wins() {
        let s = world();
        let hours = Rejection {
            rule: Rule::DutyHours80,
            detail: "too many".into(),
        };
        let (c, next) = judge(
            &provisional(9_000, "bob"),
            &hours,
            &s,
            ConflictPolicy::LastWriteWins,
        );
        assert!(matches!(
            c,
            Some(Conflict::RuleBroken {
                rule: Rule::DutyHours80,
                ..
            })
        ));
        assert!(matches!(next, Next::Done(Resolution::Superseded { .. })));
    }
}
