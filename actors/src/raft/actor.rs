//! The RaftPeer's shell: the supervised actor around [`RaftCore`], over
//! any [`StateMachine`]. It owns the core, feeds it ticks, peer messages,
//! proposals and reads, awaits the injected disk latency before a Ready
//! that writes, fences and rebuilds the core after a refused write, and
//! carries out the core's [`Output`]s (see the module docs of
//! [`crate::raft`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;

use bulwark_runtime::{Address, ChildDef, Delivery, Node, NodeCtx, Router, Zone};
use bulwark_storage::codec;
use bulwark_transport::FacilityId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::core::{MemberChange, MemberView};
use super::{
    tracing_logger, ClusterState, DiskWatch, Output, RaftConfig, RaftCore, RaftCoreError,
    RaftStatus, RaftWire, ReadOutcome, ShownEntry, RAFT,
};
use crate::flow::breaker::{BreakerConfig, Outcome as BreakerOutcome, Permit, Window};
use crate::flow::mesh::Breakers;
use crate::hlc::TimeFloor;
use crate::machine::{ProposeOutcome, StateMachine};

/// Messages of the [`RaftPeer`].
pub enum RaftMsg<M: StateMachine> {
    /// One Raft tick.
    Tick,
    /// A message from a peer's RaftPeer, through the Router.
    Remote(Delivery),
    /// Propose a command.
    Propose {
        /// The command.
        command: M::Command,
        /// The request's deadline, if it has one: past it the proposal is
        /// refused as timed out, and a forward to the leader carries it.
        deadline: Option<tokio::time::Instant>,
        /// Where the outcome goes.
        reply: RpcReplyPort<ProposeOutcome<M::Outcome>>,
    },
    /// Wait until a linearizable read may be served locally.
    Read {
        /// Where the outcome goes.
        reply: RpcReplyPort<ReadOutcome>,
    },
    /// Run `f` on a view of the applied state (reads, tests). If the view
    /// cannot be opened, `f` is dropped unrun.
    Inspect(InspectFn<M>),
    /// Run `f` on the applied state if this facility has applied at least
    /// `at` (a linearizable read's confirmed index), else on `None`: a core
    /// rebuilt from its store since the read was confirmed starts again
    /// from its last snapshot, and must not answer for that read.
    InspectAt {
        /// The read index the state must have applied.
        at: u64,
        /// The read.
        f: ReadAtFn<M>,
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
    /// The identities in the configuration (`bulwark member list`).
    Members(RpcReplyPort<Vec<MemberView>>),
    /// An operator's change of the members; a follower passes it to the
    /// leader. Answers what was done (proposed here, or passed on) or why
    /// it was refused; the members list shows when it is in force.
    ChangeMember {
        /// The facility.
        facility: FacilityId,
        /// What to do.
        change: MemberChange,
        /// `Ok`: what was done; `Err`: why not.
        reply: RpcReplyPort<Result<String, String>>,
    },
    /// Handle the pending Ready (self-sent, so queued proposals batch).
    Flush,
}

/// Sees every entry a RaftPeer applies (tests, and the validators that
/// attest to committed entries). Called on the RaftPeer's task: keep it
/// short. After a restart, entries past the last snapshot are applied, and
/// seen, again.
pub type AppliedTap<S> = Arc<dyn Fn(&FacilityId, &ShownEntry<S>) + Send + Sync>;

/// How to make a facility's RaftPeer.
pub struct RaftSetup<M: StateMachine> {
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
    pub tap: Option<AppliedTap<M::Shown>>,
    /// What the machine opens with besides the store (for the schedule:
    /// this facility's signing key and every member's public key, so
    /// proposals are signed and every committed proposal's signature is
    /// checked).
    pub keyring: M::Context,
    /// The failure detector's view: while a majority of the peers suspect
    /// this facility, it lowers its election priority (it is not
    /// preferred as leader) and, leading, hands leadership to the
    /// healthiest peer. `None`: leadership ignores the detector.
    pub detection: Option<crate::detect::Detection>,
    /// Where a new store's id comes from: `None` draws it at random (each
    /// new store gets a new id); `Some(seed)` derives it from the seed and
    /// the facility, for runs that must replay exactly (the simulation).
    pub store_id_seed: Option<u64>,
    /// The facility's breakers: the RaftPeer guards each call to the
    /// leader (`forward@<peer>` for a forwarded proposal,
    /// `read_index@<peer>` for a read-index request) with one, fed by how
    /// the call ended. `None`: unguarded.
    pub breakers: Option<Breakers>,
}

// Not derived: the machine itself need not be Clone.
impl<M: StateMachine> Clone for RaftSetup<M> {
    fn clone(&self) -> Self {
        RaftSetup {
            members: self.members.clone(),
            initial_voters: self.initial_voters.clone(),
            start: self.start,
            config: self.config.clone(),
            tap: self.tap.clone(),
            keyring: self.keyring.clone(),
            detection: self.detection.clone(),
            store_id_seed: self.store_id_seed,
            breakers: self.breakers.clone(),
        }
    }
}

impl<M: StateMachine> RaftSetup<M> {
    /// A new cluster of `members` with the default settings.
    pub fn new(members: Vec<FacilityId>, keyring: impl Into<M::Context>) -> RaftSetup<M> {
        RaftSetup {
            members,
            initial_voters: None,
            start: ClusterState::New,
            config: RaftConfig::default(),
            tap: None,
            keyring: keyring.into(),
            detection: None,
            store_id_seed: None,
            breakers: None,
        }
    }
}

/// Arguments of a [`RaftPeer`].
pub struct RaftPeerArgs<M: StateMachine> {
    /// The node's context.
    pub ctx: NodeCtx,
    /// The setup.
    pub setup: RaftSetup<M>,
}

/// The RaftPeer actor, over the state machine `M`. See the module docs.
pub struct RaftPeer<M>(PhantomData<fn() -> M>);

impl<M> Default for RaftPeer<M> {
    fn default() -> Self {
        RaftPeer(PhantomData)
    }
}

/// The RaftPeer's state.
pub struct RaftPeerState<M: StateMachine> {
    core: RaftCore<M>,
    ctx: NodeCtx,
    proposals: BTreeMap<u64, RpcReplyPort<ProposeOutcome<M::Outcome>>>,
    reads: BTreeMap<u64, RpcReplyPort<ReadOutcome>>,
    flush_queued: bool,
    ticker: ractor::concurrency::JoinHandle<()>,
    tap: Option<AppliedTap<M::Shown>>,
    detection: Option<crate::detect::Detection>,
    /// The tick of the last leadership transfer this facility asked for.
    transferred_at: Option<u64>,
    /// Ticks between two transfers asked for.
    transfer_cooldown: u64,
    /// How fast the durable writes have been.
    disk: DiskWatch,
    /// How the core is rebuilt from the store after a refused write.
    setup: RaftSetup<M>,
    logger: slog::Logger,
    /// A write was refused and the core is not rebuilt yet: `core` is kept
    /// for local reads of the applied schedule only, never stepped.
    fenced: bool,
    /// Forwarded proposals and read-index requests in flight under a
    /// breaker's permit, by sequence number.
    guarded_proposals: BTreeMap<u64, Guarded>,
    guarded_reads: BTreeMap<u64, Guarded>,
    /// The last ask for snapshot chunks, under the breaker of the peer
    /// asked: settled by the first chunk that peer sends, or as a failure
    /// by the next ask (the last one went unanswered).
    snapshot_call: Option<Guarded>,
    /// "Now" that a step back of the wall clock cannot move back: what
    /// the deadlines sent and the leader's check of a forwarded timestamp
    /// read.
    floor: TimeFloor,
}

/// A call to the leader made under a breaker's permit.
struct Guarded {
    dependency: String,
    permit: Permit,
    at: tokio::time::Instant,
    /// The leader the call went to.
    leader: FacilityId,
}

/// The breakers' settings for calls to the leader: judged over the last 20
/// calls, open at half of them failed (timed out) once 5 were made, for
/// 3 s, then 2 probes. A call slower than 2 s counts as slow, and all of
/// the window slow opens it too.
pub fn leader_breaker_config() -> BreakerConfig {
    BreakerConfig {
        window: Window::Count(20),
        failure_rate_pct: 50,
        slow_call_rate_pct: 100,
        slow_call_ms: 2_000,
        min_calls: 5,
        open_ms: 3_000,
        half_open_probes: 2,
    }
}

/// The breakers' settings for snapshot transfers from a peer: judged over
/// the last 6 asks for chunks, open at half of them answered with a chunk
/// refused (damaged, or not stageable) once 3 were made, for 10 s, then
/// one probe. An ask answered late is not a failure (a leader under load
/// serves slowly). An open one holds the asks (the transfer keeps what it
/// staged) instead of taking damaged chunks again and again.
pub fn snapshot_breaker_config() -> BreakerConfig {
    BreakerConfig {
        window: Window::Count(6),
        failure_rate_pct: 50,
        slow_call_rate_pct: 100,
        slow_call_ms: 5_000,
        min_calls: 3,
        open_ms: 10_000,
        half_open_probes: 1,
    }
}

/// The dependency names of calls from this facility to `peer`.
pub fn forward_dependency(peer: &FacilityId) -> String {
    format!("forward@{peer}")
}

/// See [`forward_dependency`].
pub fn snapshot_dependency(peer: &FacilityId) -> String {
    format!("snapshot@{peer}")
}

/// See [`forward_dependency`].
pub fn read_index_dependency(peer: &FacilityId) -> String {
    format!("read_index@{peer}")
}

impl<M: StateMachine> RaftPeerState<M> {
    /// Wall-clock ms that a step back cannot move back ([`TimeFloor`]):
    /// what the leader judges a forwarded timestamp against.
    fn now_ms(&mut self) -> u64 {
        self.floor
            .reference(self.ctx.clock.unix_ms(), self.ctx.clock.now())
    }

    /// The wall clock for the deadlines sent, unless it was stepped back
    /// past the allowed skew ([`TimeFloor::unless_behind`]).
    fn send_ms(&mut self) -> u64 {
        self.floor
            .unless_behind(self.ctx.clock.unix_ms(), self.ctx.clock.now())
    }

    /// A permit for a call to the leader guarded by the breaker `name(leader)`,
    /// when this facility is a follower that knows the leader: `Ok(None)`
    /// when unguarded (leading, no leader known, no breakers).
    fn guard(&self, name: fn(&FacilityId) -> String) -> Result<Option<Guarded>, (String, u64)> {
        let (Some(breakers), false, Some(leader)) = (
            self.setup.breakers.as_ref(),
            self.core.is_leader(),
            self.core.leader(),
        ) else {
            return Ok(None);
        };
        let dependency = name(&leader);
        let at = self.ctx.clock.now();
        match breakers.acquire(&dependency, at) {
            Ok(permit) => Ok(Some(Guarded {
                dependency,
                permit,
                at,
                leader,
            })),
            Err(r) if r.state == "unknown" => Ok(None),
            Err(r) => {
                metrics::counter!("bulwark_flow_breaker_refused_total", "dependency" => dependency.clone())
                    .increment(1);
                Err((dependency, r.retry_after_ms))
            }
        }
    }

    /// How a call that timed out counts: against the leader only when the
    /// leader is still the one it went to and the call had the hop's whole
    /// timeout (a leader change answers forwarded proposals at once, and a
    /// client's own short budget says nothing of the leader).
    fn timed_out(&self, g: &Guarded) -> BreakerOutcome {
        let hop_ms = self
            .setup
            .config
            .proposal_timeout_ticks
            .saturating_mul(self.setup.config.tick_ms);
        let took = self.ctx.clock.now().saturating_duration_since(g.at);
        let same_leader = self.core.leader().as_ref() == Some(&g.leader);
        if same_leader && took.as_millis() as u64 >= hop_ms.saturating_mul(9) / 10 {
            BreakerOutcome::Failure
        } else {
            BreakerOutcome::Ignored
        }
    }

    /// Whether an ask for snapshot chunks may go to `to`: the last ask,
    /// still unanswered, is not judged (a loaded leader answers late, and
    /// a late answer is no fault); an open breaker holds the ask (nothing
    /// is sent, and the transfer keeps what it staged) until its open
    /// period is over and a probe may go.
    fn guard_snapshot(&mut self, to: &FacilityId) -> bool {
        if let Some(last) = self.snapshot_call.take() {
            self.settle(last, BreakerOutcome::Ignored);
        }
        let Some(breakers) = self.setup.breakers.as_ref() else {
            return true;
        };
        let dependency = snapshot_dependency(to);
        let at = self.ctx.clock.now();
        match breakers.acquire(&dependency, at) {
            Ok(permit) => {
                self.snapshot_call = Some(Guarded {
                    dependency,
                    permit,
                    at,
                    leader: to.clone(),
                });
                true
            }
            Err(r) if r.state == "unknown" => true,
            Err(r) => {
                metrics::counter!("bulwark_flow_breaker_refused_total", "dependency" => dependency.clone())
                    .increment(1);
                tracing::warn!(%to, retry_after_ms = r.retry_after_ms,
                    "snapshot ask held: its breaker is open");
                self.core.hold_snapshot_ask();
                false
            }
        }
    }

    /// A chunk came from `from`: the ask it answers succeeded when the
    /// chunk was taken, failed when it was refused (damaged); a late one
    /// settles nothing. `before`: the core's chunk counts before it.
    fn snapshot_answered(&mut self, from: &FacilityId, before: (u64, u64)) {
        if self
            .snapshot_call
            .as_ref()
            .is_none_or(|g| g.leader != *from)
        {
            return;
        }
        let now = self.core.snapshot_chunks();
        let outcome = if now.1 > before.1 {
            BreakerOutcome::Failure
        } else if now.0 > before.0 {
            BreakerOutcome::Success
        } else {
            return;
        };
        if let Some(g) = self.snapshot_call.take() {
            self.settle(g, outcome);
        }
    }

    /// Reports how a guarded call ended.
    fn settle(&self, g: Guarded, outcome: BreakerOutcome) {
        if let Some(b) = &self.setup.breakers {
            let now = self.ctx.clock.now();
            let took = now.saturating_duration_since(g.at).as_millis() as u64;
            b.record(&g.dependency, g.permit, outcome, took, now);
        }
    }
}

impl<M: StateMachine> RaftPeerState<M> {
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

    /// A view of the applied state, or `None` (logged) when the store
    /// cannot open one.
    fn view(&self) -> Option<M::View> {
        match self.core.view() {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %e, "the replica's view could not be opened");
                None
            }
        }
    }

    fn inspect(&self, f: InspectFn<M>) {
        if let Some(v) = self.view() {
            f(&v);
        }
    }

    /// The peer's view; a fenced peer shows no leader.
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
            fault: c.recovering().or_else(|| match c.fence() {
                Some(super::Fence::Refused(reason)) => Some(reason.clone()),
                _ => None,
            }),
            vote_fence: match c.fence() {
                Some(super::Fence::Awaiting) => {
                    Some("vote-fenced: a new store waiting for the members' answers".into())
                }
                Some(super::Fence::UntilCommit(t)) => Some(format!(
                    "vote-fenced: a new store catching up with the cluster's history (until \
                     it has committed index {t} under a live leader)"
                )),
                Some(super::Fence::Refused(reason)) => Some(reason.clone()),
                None => None,
            },
            proposes: c.proposes(),
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
pub fn raft_child<M: StateMachine>(setup: RaftSetup<M>) -> (Zone, ChildDef) {
    let def = ChildDef::new(RAFT, move |ctx: &NodeCtx| {
        (
            RaftPeer::<M>::default(),
            RaftPeerArgs {
                ctx: ctx.clone(),
                setup: setup.clone(),
            },
        )
    });
    (Zone::Consensus, def)
}

/// A look at the applied state's view ([`RaftMsg::Inspect`]).
pub type InspectFn<M> = Box<dyn FnOnce(&<M as StateMachine>::View) + Send>;

/// A read given the state's view (for the schedule, a redb read
/// transaction, owned) if it has applied the read index. The read runs
/// wherever the receiver puts it, never on the RaftPeer: a long read must
/// not stall consensus.
pub type ReadAtFn<M> = Box<dyn FnOnce(Option<<M as StateMachine>::View>) + Send>;

/// The running RaftPeer of `node` over the machine `M`, if any.
pub fn raft_peer<M: StateMachine>(node: &Node) -> Option<ActorRef<RaftMsg<M>>> {
    node.ctx().find(Zone::Consensus, RAFT)
}

/// The RaftPeer's state: running, or quarantined because its replica
/// does not open.
pub enum PeerState<M: StateMachine> {
    /// In consensus (or fenced, retrying).
    Running(Box<RaftPeerState<M>>),
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

impl<M: StateMachine> Actor for RaftPeer<M> {
    type Msg = RaftMsg<M>;
    type State = PeerState<M>;
    type Arguments = RaftPeerArgs<M>;

    async fn pre_start(
        &self,
        myself: ActorRef<RaftMsg<M>>,
        args: RaftPeerArgs<M>,
    ) -> Result<PeerState<M>, ActorProcessingErr> {
        let setup = args.setup;
        setup.config.validate()?;
        let logger = tracing_logger(&args.ctx.facility);
        let opened = RaftCore::open(
            args.ctx.store.clone(),
            args.ctx.facility.clone(),
            &setup,
            args.ctx.fresh_store,
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
        let floor = TimeFloor::new(setup.config.clock_skew_max_ms);
        if let Some(b) = &setup.breakers {
            for peer in setup.members.iter().filter(|m| **m != args.ctx.facility) {
                for (name, config) in [
                    (forward_dependency(peer), leader_breaker_config()),
                    (read_index_dependency(peer), leader_breaker_config()),
                    (snapshot_dependency(peer), snapshot_breaker_config()),
                ] {
                    // After a restart: the permits the old actor held are
                    // lost, so a half-open breaker would wait for them
                    // forever.
                    if b.contains(&name) {
                        b.reset(&name, args.ctx.clock.now());
                    } else {
                        b.register(&name, Some(peer.clone()), config)?;
                    }
                }
            }
        }
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
            guarded_proposals: BTreeMap::new(),
            guarded_reads: BTreeMap::new(),
            snapshot_call: None,
            floor,
        })))
    }

    async fn handle(
        &self,
        myself: ActorRef<RaftMsg<M>>,
        msg: RaftMsg<M>,
        st: &mut PeerState<M>,
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
        myself: ActorRef<RaftMsg<M>>,
        st: &mut PeerState<M>,
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
fn handle_quarantined<M: StateMachine>(ctx: &NodeCtx, reason: &str, msg: RaftMsg<M>) {
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
                fault: Some(format!(
                    "quarantined: {reason}; restore the store from a backup (bulwark restore)"
                )),
                vote_fence: None,
                proposes: false,
            });
        }
        RaftMsg::ChangeVoters { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        RaftMsg::ChangeMember { reply, .. } => {
            let _ = reply.send(Err(why));
        }
        RaftMsg::Members(reply) => {
            let _ = reply.send(Vec::new());
        }
    }
}

async fn handle_live<M: StateMachine>(
    myself: &ActorRef<RaftMsg<M>>,
    msg: RaftMsg<M>,
    st: &mut RaftPeerState<M>,
) -> Result<(), ActorProcessingErr> {
    match msg {
        RaftMsg::Tick => {
            st.core.tick();
            ready(myself, st).await?;
            if !st.fenced && st.follow_health() {
                ready(myself, st).await?;
            }
            // What waits on the log for an answer: each leaves by its
            // deadline at the latest.
            metrics::gauge!("bulwark_raft_proposals_pending").set(st.proposals.len() as f64);
            metrics::gauge!("bulwark_raft_reads_pending").set(st.reads.len() as f64);
        }
        RaftMsg::Remote(d) => {
            let from = d.envelope.from.clone();
            let now = st.now_ms();
            let w = match codec::decode::<RaftWire>(&d.envelope.body) {
                Ok(w) => w,
                Err(e) => {
                    metrics::counter!("bulwark_raft_malformed_total").increment(1);
                    tracing::warn!(%from, error = %e, "malformed raft wire message dropped");
                    return Ok(());
                }
            };
            let chunk = matches!(w, RaftWire::SnapshotChunk { .. });
            let before = st.core.snapshot_chunks();
            let stepped = st.core.on_peer(&from, w, now);
            if chunk {
                st.snapshot_answered(&from, before);
            }
            match stepped {
                Ok(()) => queue_flush(myself, st)?,
                // The vote fence's own rows (a probe answered, a peer's
                // store recorded) are writes too: a refused one fences
                // the core like a refused Ready, rather than stopping the
                // actor (whose restart, on a disk that refuses every
                // write, failed in a loop until the whole tree stopped:
                // the chaos_live readiness test's rare failure).
                Err(e) if e.is_injected() => {
                    fence(st, &e);
                    rebuild(myself, st).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        RaftMsg::Propose {
            command,
            deadline,
            reply,
        } => {
            let now = st.send_ms();
            // The monotonic deadline as this facility's wall clock reads it
            // now (an envelope's deadline is wall-clock ms).
            let deadline_unix_ms = deadline.map(|d| {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                now.saturating_add(left.as_millis() as u64)
            });
            let guard = match st.guard(forward_dependency) {
                Ok(g) => g,
                Err((dependency, retry_after_ms)) => {
                    let _ = reply.send(ProposeOutcome::Shed {
                        dependency,
                        retry_after_ms,
                    });
                    return Ok(());
                }
            };
            // Stamped by the wall clock (never before this facility's
            // previous stamp: the machine), deadlines by `now`.
            let stamp = st.ctx.clock.unix_ms();
            match st
                .core
                .propose_stamped(command, stamp, now, deadline_unix_ms)
            {
                Ok(seq) => {
                    st.proposals.insert(seq, reply);
                    if let Some(g) = guard {
                        st.guarded_proposals.insert(seq, g);
                    }
                    queue_flush(myself, st)?;
                }
                Err(outcome) => {
                    if let Some(g) = guard {
                        st.settle(g, BreakerOutcome::Ignored);
                    }
                    let _ = reply.send(outcome);
                }
            }
        }
        RaftMsg::Read { reply } => {
            let guard = match st.guard(read_index_dependency) {
                Ok(g) => g,
                Err((dependency, retry_after_ms)) => {
                    let _ = reply.send(ReadOutcome::Shed {
                        dependency,
                        retry_after_ms,
                    });
                    return Ok(());
                }
            };
            match st.core.read() {
                Ok(seq) => {
                    st.reads.insert(seq, reply);
                    if let Some(g) = guard {
                        st.guarded_reads.insert(seq, g);
                    }
                    ready(myself, st).await?;
                }
                Err(outcome) => {
                    if let Some(g) = guard {
                        st.settle(g, BreakerOutcome::Ignored);
                    }
                    let _ = reply.send(outcome);
                }
            }
        }
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
        RaftMsg::Members(reply) => {
            let _ = reply.send(st.core.members_view());
        }
        RaftMsg::ChangeMember {
            facility,
            change,
            reply,
        } => {
            let taken = if st.core.is_leader() {
                st.core
                    .change_member(&facility, change)
                    .map(|id| format!("proposed by the leader {} (raft id {id})", st.ctx.facility))
            } else {
                match st.core.leader() {
                    Some(leader) => {
                        send(
                            st,
                            leader.clone(),
                            &RaftWire::ChangeMember {
                                facility: facility.clone(),
                                change,
                            },
                            None,
                        );
                        Ok(format!("passed to the leader {leader}"))
                    }
                    None => Err("no leader is known: try again".into()),
                }
            };
            if taken.is_ok() {
                ready(myself, st).await?;
                if st.fenced {
                    let _ = reply.send(Err(FENCED.into()));
                    return Ok(());
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
async fn handle_fenced<M: StateMachine>(
    myself: &ActorRef<RaftMsg<M>>,
    msg: RaftMsg<M>,
    st: &mut RaftPeerState<M>,
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
        RaftMsg::ChangeMember { reply, .. } => {
            let _ = reply.send(Err(FENCED.into()));
        }
        RaftMsg::Members(reply) => {
            let _ = reply.send(Vec::new());
        }
        RaftMsg::Flush => st.flush_queued = false,
    }
    Ok(())
}

/// Handles the core's pending Ready, after the injected disk latency when
/// it writes. A write an injected fault refused fences the core (module
/// docs); any other failure stops the actor.
async fn ready<M: StateMachine>(
    myself: &ActorRef<RaftMsg<M>>,
    st: &mut RaftPeerState<M>,
) -> Result<(), ActorProcessingErr> {
    let writes = st.core.ready_writes();
    let started = tokio::time::Instant::now();
    if writes {
        st.disk_latency().await;
    }
    // A leader's appends go out while its own fsync runs.
    let router = &st.ctx.router;
    let mut send_now = |o: Output<M>| {
        if let Output::Send { to, msg } = o {
            send_via(router, to, &msg, None);
        }
    };
    // A Ready that writes blocks this thread on its fsync, not an async
    // worker; one that does not (reads, heartbeats) runs in place (handing
    // the worker over costs more than such a Ready).
    let handled = if st.core.ready_syncs() {
        bulwark_runtime::blocking(|| st.core.on_ready_sending(Some(&mut send_now)))
    } else {
        st.core.on_ready_sending(Some(&mut send_now))
    };
    if writes {
        st.disk.observe(started.elapsed());
    }
    match handled {
        Ok(()) if st.core.wants_rebuild() => {
            // A replacement named a newer incarnation of this facility:
            // what waits here is answered (the new core knows nothing of
            // it) and the core is opened again under it.
            drop_waiting(st);
            rebuild(myself, st).await
        }
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
fn fence<M: StateMachine>(st: &mut RaftPeerState<M>, err: &RaftCoreError) {
    tracing::error!(facility = %st.ctx.facility, error = %err,
        "a Raft write was refused: out of consensus until the core is rebuilt from the store");
    metrics::counter!("bulwark_raft_fenced_total", "facility" => st.ctx.facility.to_string())
        .increment(1);
    st.fenced = true;
    drop_waiting(st);
}

/// Before the core is rebuilt: what it output is carried out, and
/// everything still waiting answers `TimedOut` (the rebuilt core knows
/// nothing of it). Breakers count nothing: the cause is this facility's,
/// not the leader's.
fn drop_waiting<M: StateMachine>(st: &mut RaftPeerState<M>) {
    flush_outputs(st);
    for (_, reply) in std::mem::take(&mut st.proposals) {
        let _ = reply.send(ProposeOutcome::TimedOut);
    }
    for (_, reply) in std::mem::take(&mut st.reads) {
        let _ = reply.send(ReadOutcome::TimedOut);
    }
    let guarded = std::mem::take(&mut st.guarded_proposals)
        .into_values()
        .chain(std::mem::take(&mut st.guarded_reads).into_values());
    for g in guarded.collect::<Vec<_>>() {
        st.settle(g, BreakerOutcome::Ignored);
    }
}

/// Rebuilds a fenced core from the store, as a restart would (its open
/// writes the incarnation, so it waits the disk latency too). A refused
/// write leaves it fenced for the next tick; any other failure stops the
/// actor.
async fn rebuild<M: StateMachine>(
    myself: &ActorRef<RaftMsg<M>>,
    st: &mut RaftPeerState<M>,
) -> Result<(), ActorProcessingErr> {
    st.disk_latency().await;
    let opened = RaftCore::open(
        st.ctx.store.clone(),
        st.ctx.facility.clone(),
        &st.setup,
        st.ctx.fresh_store,
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
fn queue_flush<M: StateMachine>(
    myself: &ActorRef<RaftMsg<M>>,
    st: &mut RaftPeerState<M>,
) -> Result<(), ActorProcessingErr> {
    if !st.flush_queued {
        st.flush_queued = true;
        myself.cast(RaftMsg::Flush)?;
    }
    Ok(())
}

/// Sends `msg` to `to`'s RaftPeer, with the envelope's deadline if any.
fn send<M: StateMachine>(
    st: &RaftPeerState<M>,
    to: FacilityId,
    msg: &RaftWire,
    deadline_unix_ms: Option<u64>,
) {
    send_via(&st.ctx.router, to, msg, deadline_unix_ms);
}

fn send_via(router: &Router, to: FacilityId, msg: &RaftWire, deadline_unix_ms: Option<u64>) {
    let body = match codec::encode(msg) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "raft message does not encode");
            return;
        }
    };
    if let Err(e) = router.send(Address::new(to, RAFT), body, deadline_unix_ms) {
        metrics::counter!("bulwark_raft_send_failed_total").increment(1);
        tracing::debug!(error = %e, "raft send failed");
    }
}

fn flush_outputs<M: StateMachine>(st: &mut RaftPeerState<M>) {
    for out in st.core.drain() {
        match out {
            Output::Send { to, msg } => {
                if matches!(msg, RaftWire::SnapshotFetch { .. }) && !st.guard_snapshot(&to) {
                    continue;
                }
                send(st, to, &msg, None)
            }
            Output::SendBy {
                to,
                msg,
                deadline_unix_ms,
            } => send(st, to, &msg, Some(deadline_unix_ms)),
            Output::Proposed { seq, outcome } => {
                if let Some(g) = st.guarded_proposals.remove(&seq) {
                    // The leader answered (committed, or refused the
                    // forward), or did not in time.
                    let judged = match &outcome {
                        ProposeOutcome::Committed { .. } | ProposeOutcome::Rejected { .. } => {
                            BreakerOutcome::Success
                        }
                        ProposeOutcome::TimedOut => st.timed_out(&g),
                        ProposeOutcome::NotLeader { .. } | ProposeOutcome::Shed { .. } => {
                            BreakerOutcome::Ignored
                        }
                    };
                    st.settle(g, judged);
                }
                if let Some(reply) = st.proposals.remove(&seq) {
                    let _ = reply.send(outcome);
                }
            }
            Output::ReadReady { seq, outcome } => {
                if let Some(g) = st.guarded_reads.remove(&seq) {
                    let judged = match &outcome {
                        ReadOutcome::Ready { .. } => BreakerOutcome::Success,
                        ReadOutcome::TimedOut => st.timed_out(&g),
                        ReadOutcome::NotLeader { .. } | ReadOutcome::Shed { .. } => {
                            BreakerOutcome::Ignored
                        }
                    };
                    st.settle(g, judged);
                }
                if let Some(reply) = st.reads.remove(&seq) {
                    let _ = reply.send(outcome);
                }
            }
            Output::Applied(entry) => {
                if let Some(tap) = &st.tap {
                    tap(st.core.facility(), &entry);
                }
            }
        }
    }
}

/// Runs `f` on `peer`'s applied state and returns its result; `None` if
/// the RaftPeer is gone. Not linearizable by itself: send
/// [`RaftMsg::Read`] first and wait for [`ReadOutcome::Ready`].
pub async fn inspect<M: StateMachine, T: Send + 'static>(
    peer: &ActorRef<RaftMsg<M>>,
    f: impl FnOnce(&M::View) -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    peer.cast(RaftMsg::Inspect(Box::new(move |s: &M::View| {
        let _ = tx.send(f(s));
    })))
    .ok()?;
    rx.await.ok()
}
