//! The CapGate (detection zone): every schedule write and read of the
//! facility passes it on the way to consensus.
//!
//! - Writes are stamped with the facility's hybrid logical clock, then
//!   [`super::decide`]d from the operation's mode and the partition state
//!   the detector publishes. Through consensus, the RaftPeer's outcome is
//!   the answer (each write runs in its own task: the gate never waits on
//!   the log). A CP write without a quorum is refused at once with a
//!   [`PartitionError`]. An AP write without a quorum is checked against
//!   the local schedule plus the pending provisional changes (a change
//!   that could never apply is refused with its rule), then stored
//!   durably as a [`Provisional`] change and acknowledged as such. An AP
//!   write that consensus could not take in time (the detector has not
//!   noticed the partition yet) falls back to the provisional path; its
//!   idempotency key makes the later replay safe if it did commit.
//! - Reads: linearizable (CP) ones are confirmed by a quorum first and
//!   refused in a minority; stale (AP) ones are served from the local
//!   schedule. Both carry their [`Staleness`].

use std::time::Duration;

use bulwark_runtime::{ChildDef, NodeCtx, Zone};
use bulwark_transport::FacilityId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::store::{Provisional, ProvisionalStore, Status};
use super::{decide, mode_of, Consistency, Decision, Mode, PartitionError, PartitionState};
use crate::detect::Detection;
use crate::hlc::Hlc;
use crate::raft::{inspect, ProposeOutcome, RaftMsg, ReadOutcome, RAFT};
use crate::replica::ScheduleView;
use crate::schedule::{Applied, Command, Outcome, Overlay, Rejection, Rule, Schedule};

/// The CapGate's registered name.
pub const CAP_GATE: &str = "cap_gate";

/// How to make a facility's CapGate.
#[derive(Clone)]
pub struct GateSetup {
    /// The membership view and the clock.
    pub detection: Detection,
    /// Longest wait for consensus on one write or read.
    pub consensus_timeout: Duration,
    /// Most provisional changes kept pending; beyond, AP writes are
    /// refused (a partition must not fill the disk).
    pub provisional_max: usize,
}

impl GateSetup {
    /// The defaults: 10 s for consensus, 10,000 pending provisional changes.
    pub fn new(detection: Detection) -> GateSetup {
        GateSetup {
            detection,
            consensus_timeout: Duration::from_secs(10),
            provisional_max: 10_000,
        }
    }
}

/// How a write ended at the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOutcome {
    /// It went through consensus; the RaftPeer's answer.
    Consensus(ProposeOutcome),
    /// Accepted as a provisional change, to be replayed on heal.
    Provisional {
        /// The provisional change's id.
        id: u64,
        /// Its stamp.
        hlc: Hlc,
        /// The partition state it was accepted in.
        partition: PartitionState,
    },
    /// A CP operation without a quorum.
    Partitioned(PartitionError),
    /// An AP operation this facility's partition-time view refuses (the
    /// local schedule with its pending provisional changes), or the
    /// provisional store is full or failing. Judged without a quorum, it
    /// decides nothing for the command's key: a retry after the partition
    /// heals goes through consensus (a write the majority committed may be
    /// refused here by a facility that has not seen it yet).
    Refused {
        /// Why.
        rejection: Rejection,
        /// The partition state it was judged in.
        partition: PartitionState,
    },
}

/// How current a read is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staleness {
    /// How it was served.
    pub consistency: Consistency,
    /// The partition state when served.
    pub partition: PartitionState,
    /// The last log index applied to the state read.
    pub applied_index: u64,
    /// How long ago a quorum was last reachable, in ms (0 while it is).
    pub stale_ms: u64,
    /// Provisional changes of this facility not yet replayed (not in the
    /// state read).
    pub provisional_pending: usize,
    /// Served stale because the linearizable read the client asked for
    /// failed with this code and the client allowed the fallback
    /// (`fallback=stale`); `None` otherwise.
    pub fallback_from: Option<String>,
}

/// Why a read was not served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A linearizable read without a quorum.
    #[error(transparent)]
    Partitioned(#[from] PartitionError),
    /// No leader is known to confirm a linearizable read (the same state
    /// a write answers `NO_LEADER` in); `hint` is the leader as last known.
    #[error("no leader is known to confirm the read")]
    NoLeader {
        /// The leader as last known, if any.
        hint: Option<bulwark_transport::FacilityId>,
    },
    /// No quorum confirmed a linearizable read in time.
    #[error("no quorum confirmed the read in time")]
    TimedOut,
    /// The RaftPeer is not running, or the replica cannot serve now.
    #[error("read unavailable: {0}")]
    Unavailable(String),
    /// The breaker guarding the read-index request to the leader is open:
    /// refused at once, nothing sent.
    #[error("the circuit to the leader is open ({dependency}); retry after {retry_after_ms} ms")]
    Shed {
        /// The open dependency.
        dependency: String,
        /// When a call may pass again.
        retry_after_ms: u64,
    },
}

/// A read to run on the schedule.
pub type ReadFn = Box<dyn FnOnce(Result<(&ScheduleView, Staleness), ReadError>) + Send>;

/// Messages of the [`CapGate`].
pub enum GateMsg {
    /// A schedule write. `emergency` marks a swap made for emergency
    /// coverage (AP); other operations' modes are fixed.
    Submit {
        /// The command (its key from the client; stamped here).
        command: Command,
        /// The emergency mark.
        emergency: bool,
        /// The request's deadline, if it has one: the consensus call waits
        /// no longer, and one already past is answered as timed out.
        deadline: Option<tokio::time::Instant>,
        /// The outcome.
        reply: RpcReplyPort<GateOutcome>,
    },
    /// A schedule read: `f` sees the state and its staleness, or why not.
    Read {
        /// Linearizable or stale.
        consistency: Consistency,
        /// The read.
        f: ReadFn,
    },
    /// An AP write consensus could not take in time: store it provisionally.
    Fallback {
        /// The stamped command.
        command: Command,
        /// The outcome.
        reply: RpcReplyPort<GateOutcome>,
    },
}

/// The CapGate actor.
pub struct CapGate;

/// Its state.
pub struct GateState {
    ctx: NodeCtx,
    setup: GateSetup,
    store: ProvisionalStore,
}

/// The CapGate as a child of the detection zone.
pub fn gate_child(setup: GateSetup) -> (Zone, ChildDef) {
    let def = ChildDef::new(CAP_GATE, move |ctx: &NodeCtx| {
        (CapGate, (ctx.clone(), setup.clone()))
    });
    (Zone::Detection, def)
}

impl GateState {
    fn raft(&self) -> Option<ActorRef<RaftMsg>> {
        self.ctx.find(Zone::Consensus, RAFT)
    }

    /// Checks `command` against the local schedule with the pending
    /// provisional changes applied, then stores it durably.
    async fn provisional(&self, command: Command, partition: PartitionState) -> GateOutcome {
        let refused = |detail: String| GateOutcome::Refused {
            rejection: Rejection {
                rule: Rule::InvalidInput,
                detail,
            },
            partition,
        };
        let pending = match self.store.with_status(&Status::Pending) {
            Ok(p) => p,
            Err(e) => return refused(format!("provisional store: {e}")),
        };
        if pending.len() >= self.setup.provisional_max {
            return refused(format!(
                "{} provisional changes already wait for the partition to heal",
                pending.len()
            ));
        }
        if let Some(raft) = self.raft() {
            // A facility outside the validator set could never replay it.
            let proposes = ractor::call_t!(raft, RaftMsg::Status, 1_000).map(|s| s.proposes);
            if matches!(proposes, Ok(false)) {
                return refused(
                    "this facility is no validator of the set in force: it takes no provisional \
                     writes (it could not replay them); write through a validator"
                        .into(),
                );
            }
            let cmd = command.clone();
            let verdict = inspect(&raft, move |s: &ScheduleView| {
                // A trial run over the view: writes stay in memory.
                let mut trial = Schedule::over(Overlay::new(s.tables()));
                let mut index = s.last_index();
                for p in &pending {
                    index += 1;
                    trial.apply(index, &p.command);
                }
                match trial.apply(index + 1, &cmd) {
                    Applied::Fresh(Outcome::Rejected(r)) => Some(r),
                    _ => None,
                }
            })
            .await;
            if let Some(Some(rejection)) = verdict {
                return GateOutcome::Refused {
                    rejection,
                    partition,
                };
            }
        }
        let p = Provisional {
            id: 0,
            hlc: command.hlc,
            facility: self.ctx.facility.clone(),
            state: partition,
            command,
            status: Status::Pending,
        };
        match self.store.insert(p) {
            Ok(p) => {
                metrics::counter!("bulwark_cap_provisional_total").increment(1);
                GateOutcome::Provisional {
                    id: p.id,
                    hlc: p.hlc,
                    partition,
                }
            }
            Err(e) => refused(format!("provisional store: {e}")),
        }
    }

    fn staleness(&self, consistency: Consistency, applied_index: u64) -> Staleness {
        let view = self.setup.detection.view();
        Staleness {
            consistency,
            partition: view.partition,
            applied_index,
            stale_ms: view.stale_ms,
            provisional_pending: self
                .store
                .with_status(&Status::Pending)
                .map_or(0, |p| p.len()),
            fallback_from: None,
        }
    }
}

fn stamp(command: &mut Command, facility: &FacilityId, detection: &Detection, now_ms: u64) {
    command.hlc = detection.hlc().now(now_ms);
    command.issued_by = facility.clone();
    command.at_unix_ms = now_ms;
}

impl Actor for CapGate {
    type Msg = GateMsg;
    type State = GateState;
    type Arguments = (NodeCtx, GateSetup);

    async fn pre_start(
        &self,
        _myself: ActorRef<GateMsg>,
        (ctx, setup): (NodeCtx, GateSetup),
    ) -> Result<GateState, ActorProcessingErr> {
        let store = ProvisionalStore::new(ctx.store.clone());
        Ok(GateState { ctx, setup, store })
    }

    async fn handle(
        &self,
        myself: ActorRef<GateMsg>,
        msg: GateMsg,
        st: &mut GateState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GateMsg::Submit {
                mut command,
                emergency,
                deadline,
                reply,
            } => {
                let mode = mode_of(&command.op, emergency);
                let partition = st.setup.detection.view().partition;
                let op = command.op.name();
                metrics::counter!("bulwark_cap_writes_total", "mode" => mode.code(), "partition" => partition.code())
                    .increment(1);
                stamp(
                    &mut command,
                    &st.ctx.facility,
                    &st.setup.detection,
                    st.ctx.clock.unix_ms(),
                );
                match decide(mode, partition, op) {
                    Decision::Refuse(e) => {
                        metrics::counter!("bulwark_cap_refused_total").increment(1);
                        let _ = reply.send(GateOutcome::Partitioned(e));
                    }
                    Decision::Provisional => {
                        let _ = reply.send(st.provisional(command, partition).await);
                    }
                    Decision::Consensus => {
                        let Some(raft) = st.raft() else {
                            let _ = reply.send(GateOutcome::Consensus(ProposeOutcome::Rejected {
                                reason: "the RaftPeer is not running".into(),
                            }));
                            return Ok(());
                        };
                        let mut timeout = st.setup.consensus_timeout;
                        if let Some(d) = deadline {
                            let left = d.saturating_duration_since(tokio::time::Instant::now());
                            if left.is_zero() {
                                metrics::counter!("bulwark_deadline_expired_total", "stage" => "gate")
                                    .increment(1);
                                let _ =
                                    reply.send(GateOutcome::Consensus(ProposeOutcome::TimedOut));
                                return Ok(());
                            }
                            timeout = timeout.min(left);
                        }
                        let timeout = timeout.as_millis() as u64;
                        tokio::spawn(async move {
                            let cmd = command.clone();
                            let out = ractor::call_t!(
                                raft,
                                |r| RaftMsg::Propose {
                                    command: cmd,
                                    deadline,
                                    reply: r
                                },
                                timeout
                            )
                            .unwrap_or(ProposeOutcome::TimedOut);
                            // Including an open circuit to the leader: an
                            // AP write is then taken provisionally too.
                            let unavailable = matches!(
                                out,
                                ProposeOutcome::TimedOut
                                    | ProposeOutcome::NotLeader { .. }
                                    | ProposeOutcome::Shed { .. }
                            );
                            if mode == Mode::Ap && unavailable {
                                let _ = myself.cast(GateMsg::Fallback { command, reply });
                            } else {
                                let _ = reply.send(GateOutcome::Consensus(out));
                            }
                        });
                    }
                }
            }
            GateMsg::Fallback { command, reply } => {
                let partition = st.setup.detection.view().partition;
                let _ = reply.send(st.provisional(command, partition).await);
            }
            GateMsg::Read { consistency, f } => {
                let partition = st.setup.detection.view().partition;
                let Some(raft) = st.raft() else {
                    f(Err(ReadError::Unavailable(
                        "the RaftPeer is not running".into(),
                    )));
                    return Ok(());
                };
                if consistency == Consistency::Linearizable && !partition.has_quorum() {
                    f(Err(ReadError::Partitioned(PartitionError {
                        state: partition,
                        mode: Mode::Cp,
                        operation: "linearizable read".into(),
                    })));
                    return Ok(());
                }
                let staleness = st.staleness(consistency, 0);
                let timeout = st.setup.consensus_timeout.as_millis() as u64;
                // Reads wait on the log in their own task, as writes do.
                tokio::spawn(async move {
                    let mut at = 0;
                    if consistency == Consistency::Linearizable {
                        let confirmed =
                            match ractor::call_t!(raft, |r| RaftMsg::Read { reply: r }, timeout) {
                                Ok(ReadOutcome::Ready { read_index }) => Ok(read_index),
                                Ok(ReadOutcome::NotLeader { hint }) => {
                                    Err(ReadError::NoLeader { hint })
                                }
                                Ok(ReadOutcome::TimedOut) => Err(ReadError::TimedOut),
                                Ok(ReadOutcome::Shed {
                                    dependency,
                                    retry_after_ms,
                                }) => Err(ReadError::Shed {
                                    dependency,
                                    retry_after_ms,
                                }),
                                Err(ractor::RactorErr::Timeout) => Err(ReadError::TimedOut),
                                Err(e) => Err(ReadError::Unavailable(format!(
                                    "the RaftPeer did not answer: {e}"
                                ))),
                            };
                        match confirmed {
                            Ok(read_index) => at = read_index,
                            Err(e) => {
                                f(Err(e));
                                return;
                            }
                        }
                    }
                    // Served only from a schedule that has applied the read
                    // index: the RaftPeer may have been rebuilt from its
                    // store in between (found by `bulwark sim`, seeds 3474
                    // and 8003).
                    let _ = raft.cast(RaftMsg::InspectAt {
                        at,
                        f: Box::new(move |s: Option<ScheduleView>| match s {
                            Some(s) => off_actor(move || {
                                let staleness = Staleness {
                                    applied_index: s.last_index(),
                                    ..staleness
                                };
                                f(Ok((&s, staleness)));
                            }),
                            None => f(Err(ReadError::Unavailable(format!(
                                "this replica cannot serve the read index {at} now (rebuilt from its store, or taking its state again from its peers: see /health/ready); retry"
                            )))),
                        }),
                    });
                });
            }
        }
        Ok(())
    }
}

/// Runs a read of a view off the RaftPeer: on the blocking pool of a
/// multi-threaded runtime (a node), so a long read takes neither the
/// RaftPeer nor an async worker; inline on a current-thread runtime (the
/// simulation), where it keeps the schedule of events deterministic.
fn off_actor(read: impl FnOnce() + Send + 'static) {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
            drop(tokio::task::spawn_blocking(read));
        }
        _ => read(),
    }
}
