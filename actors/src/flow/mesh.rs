//! The CircuitBreaker actor and its mesh (flow zone).
//!
//! - It owns the facility's named breakers ([`super::breaker::Breaker`]);
//!   callers take a permit and report the outcome through messages.
//! - A breaker may depend on a peer facility. When the failure detector
//!   holds that peer Down, the breaker trips at once, before any call has
//!   to fail (it recovers through half-open probes, as after failures).
//! - Mesh: every transition of a local breaker is told to the peers'
//!   breaker actors ([`MeshWire`]). Each facility keeps the mesh state
//!   (which peer has which dependency open) for operators
//!   ([`BreakerMsg::Status`]) and raises its capacity buffer: for every
//!   open breaker among its peers, `buffer_per_open` extra queue slots in
//!   the BackpressureController, because the load those peers shed may
//!   arrive here.

use std::collections::BTreeMap;

use bulwark_runtime::{Address, ChildDef, Delivery, NodeCtx, Zone};
use bulwark_storage::codec;
use bulwark_transport::FacilityId;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use super::actors::{BackpressureMsg, BACKPRESSURE};
use super::breaker::{Breaker, BreakerConfig, Outcome, Permit, Refused, Stats, Transition};
use crate::detect::{Detection, Liveness, MembershipEvent};

/// The breaker actor's registered name.
pub const BREAKERS: &str = "breakers";

/// Longest dependency name, in bytes.
pub const DEPENDENCY_LEN_MAX: usize = 64;

/// Breakers one facility tells its peers about, at most.
pub const REMOTE_BREAKERS_MAX: usize = 1_024;

/// What breaker actors tell each other: one local transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshWire {
    /// The dependency the breaker guards.
    pub dependency: String,
    /// The state it moved to (a [`super::breaker::State`] name).
    pub state: String,
    /// When, by the sender's wall clock.
    pub at_unix_ms: u64,
}

const STATE_NAMES: [&str; 5] = ["closed", "open", "half_open", "forced_open", "disabled"];

/// How to make the breaker actor.
#[derive(Clone)]
pub struct MeshSetup {
    /// The membership view (peer Down trips dependents). `None`: no
    /// detector.
    pub detection: Option<Detection>,
    /// Queue slots added to the local admission controller per open
    /// breaker among the peers.
    pub buffer_per_open: usize,
}

impl Default for MeshSetup {
    fn default() -> Self {
        MeshSetup {
            detection: None,
            buffer_per_open: 32,
        }
    }
}

/// One local breaker as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerView {
    /// The dependency.
    pub name: String,
    /// The peer it depends on, if any.
    pub peer: Option<FacilityId>,
    /// The state's name.
    pub state: &'static str,
    /// Counters.
    pub stats: Stats,
}

/// A peer's breaker, as last told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBreaker {
    /// The peer.
    pub facility: FacilityId,
    /// Its dependency.
    pub dependency: String,
    /// The state's name.
    pub state: String,
    /// When it changed, by the peer's clock.
    pub at_unix_ms: u64,
}

/// The mesh as this facility sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshStatus {
    /// Local breakers.
    pub local: Vec<BreakerView>,
    /// Peers' breakers.
    pub remote: Vec<RemoteBreaker>,
    /// The capacity buffer raised here, in queue slots.
    pub buffer: usize,
}

/// Messages of the [`CircuitBreakers`] actor.
pub enum BreakerMsg {
    /// Adds (or replaces) the breaker `name`, optionally tied to `peer`.
    Register {
        /// The dependency.
        name: String,
        /// The peer facility it depends on.
        peer: Option<FacilityId>,
        /// Settings.
        config: BreakerConfig,
    },
    /// Leave for one call to `name`.
    Acquire {
        /// The dependency.
        name: String,
        /// A permit, or the refusal (unknown names are refused as open).
        reply: RpcReplyPort<Result<Permit, Refused>>,
    },
    /// The outcome of a call made with a permit.
    Record {
        /// The dependency.
        name: String,
        /// The permit.
        permit: Permit,
        /// How it ended.
        outcome: Outcome,
        /// How long it took, in ms.
        took_ms: u64,
    },
    /// A membership event (forwarded from the detector).
    Membership(MembershipEvent),
    /// A peer's transition, through the Router.
    Remote(Delivery),
    /// The mesh.
    Status(RpcReplyPort<MeshStatus>),
}

/// The breaker actor.
pub struct CircuitBreakers;

/// Its state.
pub struct MeshState {
    ctx: NodeCtx,
    setup: MeshSetup,
    start: tokio::time::Instant,
    local: BTreeMap<String, (Option<FacilityId>, Breaker)>,
    remote: BTreeMap<(FacilityId, String), (String, u64)>,
    buffer: usize,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl MeshState {
    fn now_ms(&self) -> u64 {
        self.ctx.clock.now().duration_since(self.start).as_millis() as u64
    }

    /// Reports and broadcasts the transitions of breaker `name`.
    fn announce(&mut self, name: &str) {
        let Some((_, b)) = self.local.get_mut(name) else {
            return;
        };
        let events: Vec<Transition> = b.drain_events();
        for t in events {
            metrics::counter!("bulwark_flow_breaker_transitions_total",
                "dependency" => name.to_string(), "to" => t.to)
            .increment(1);
            tracing::info!(
                dependency = name,
                from = t.from,
                to = t.to,
                "breaker transition"
            );
            let wire = MeshWire {
                dependency: name.to_string(),
                state: t.to.to_string(),
                at_unix_ms: self.ctx.clock.unix_ms(),
            };
            let Ok(body) = codec::encode(&wire) else {
                continue;
            };
            let peers = match &self.setup.detection {
                Some(d) => d.peers().to_vec(),
                None => self.ctx.router.transport().peers(),
            };
            for peer in peers {
                // Best effort: a peer that misses it learns the next one.
                let _ = self
                    .ctx
                    .router
                    .send(Address::new(peer, BREAKERS), body.clone(), None);
            }
        }
    }

    /// Trips every breaker that depends on `peer`.
    fn trip_dependents(&mut self, peer: &FacilityId) {
        let now = self.now_ms();
        let names: Vec<String> = self
            .local
            .iter()
            .filter(|(_, (p, _))| p.as_ref() == Some(peer))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            if let Some((_, b)) = self.local.get_mut(&name) {
                b.trip(now);
                metrics::counter!("bulwark_flow_breaker_detector_trips_total",
                    "dependency" => name.clone())
                .increment(1);
            }
            self.announce(&name);
        }
    }

    fn peer_down(&self, peer: &FacilityId) -> bool {
        self.setup
            .detection
            .as_ref()
            .is_some_and(|d| d.view().liveness(peer) == Some(Liveness::Down))
    }

    fn on_remote(&mut self, d: Delivery) {
        let from = d.envelope.from.clone();
        let w: MeshWire = match codec::decode_limited(&d.envelope.body, 4_096) {
            Ok(w) => w,
            Err(_) => {
                metrics::counter!("bulwark_flow_mesh_malformed_total").increment(1);
                return;
            }
        };
        let known = self
            .remote
            .contains_key(&(from.clone(), w.dependency.clone()));
        if w.dependency.is_empty()
            || w.dependency.len() > DEPENDENCY_LEN_MAX
            || !STATE_NAMES.contains(&w.state.as_str())
            || (!known && self.remote.len() >= REMOTE_BREAKERS_MAX)
        {
            metrics::counter!("bulwark_flow_mesh_malformed_total").increment(1);
            return;
        }
        self.remote
            .insert((from, w.dependency), (w.state, w.at_unix_ms));
        let open = self
            .remote
            .values()
            .filter(|(s, _)| s == "open" || s == "forced_open")
            .count();
        let buffer = open * self.setup.buffer_per_open;
        if buffer != self.buffer {
            self.buffer = buffer;
            tracing::info!(open, buffer, "peers' breakers open: capacity buffer set");
            if let Some(bp) = self.ctx.find::<BackpressureMsg>(Zone::Flow, BACKPRESSURE) {
                let _ = bp.cast(BackpressureMsg::SetBuffer(buffer));
            }
        }
    }
}

/// The breaker actor as a child of the flow zone.
pub fn breakers_child(setup: MeshSetup) -> (Zone, ChildDef) {
    let def = ChildDef::new(BREAKERS, move |ctx: &NodeCtx| {
        (CircuitBreakers, (ctx.clone(), setup.clone()))
    });
    (Zone::Flow, def)
}

impl Actor for CircuitBreakers {
    type Msg = BreakerMsg;
    type State = MeshState;
    type Arguments = (NodeCtx, MeshSetup);

    async fn pre_start(
        &self,
        myself: ActorRef<BreakerMsg>,
        (ctx, setup): (NodeCtx, MeshSetup),
    ) -> Result<MeshState, ActorProcessingErr> {
        ctx.router
            .register(BREAKERS, myself.clone(), BreakerMsg::Remote);
        let listener = setup.detection.as_ref().map(|d| {
            let mut rx = d.subscribe();
            let me = myself.clone();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(e) => {
                            if me.cast(BreakerMsg::Membership(e)).is_err() {
                                break;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            })
        });
        Ok(MeshState {
            start: ctx.clock.now(),
            ctx,
            setup,
            local: BTreeMap::new(),
            remote: BTreeMap::new(),
            buffer: 0,
            listener,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BreakerMsg>,
        msg: BreakerMsg,
        st: &mut MeshState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BreakerMsg::Register { name, peer, config } => {
                if name.is_empty() || name.len() > DEPENDENCY_LEN_MAX {
                    return Ok(());
                }
                config.validate()?;
                let down = peer.as_ref().is_some_and(|p| st.peer_down(p));
                st.local.insert(name.clone(), (peer, Breaker::new(config)));
                if down {
                    let now = st.now_ms();
                    if let Some((_, b)) = st.local.get_mut(&name) {
                        b.trip(now);
                    }
                }
                st.announce(&name);
            }
            BreakerMsg::Acquire { name, reply } => {
                let now = st.now_ms();
                let out = match st.local.get_mut(&name) {
                    Some((_, b)) => b.try_acquire(now),
                    None => Err(Refused {
                        state: "unknown",
                        retry_after_ms: 0,
                    }),
                };
                st.announce(&name);
                let _ = reply.send(out);
            }
            BreakerMsg::Record {
                name,
                permit,
                outcome,
                took_ms,
            } => {
                let now = st.now_ms();
                if let Some((_, b)) = st.local.get_mut(&name) {
                    b.on_result(permit, outcome, took_ms, now);
                }
                st.announce(&name);
            }
            BreakerMsg::Membership(MembershipEvent::Peer(c)) => {
                if c.to == Liveness::Down {
                    st.trip_dependents(&c.peer);
                }
            }
            BreakerMsg::Membership(MembershipEvent::Partition { .. }) => {}
            BreakerMsg::Remote(d) => st.on_remote(d),
            BreakerMsg::Status(reply) => {
                let _ = reply.send(MeshStatus {
                    local: st
                        .local
                        .iter()
                        .map(|(n, (p, b))| BreakerView {
                            name: n.clone(),
                            peer: p.clone(),
                            state: b.state().name(),
                            stats: b.stats(),
                        })
                        .collect(),
                    remote: st
                        .remote
                        .iter()
                        .map(|((f, dep), (s, at))| RemoteBreaker {
                            facility: f.clone(),
                            dependency: dep.clone(),
                            state: s.clone(),
                            at_unix_ms: *at,
                        })
                        .collect(),
                    buffer: st.buffer,
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BreakerMsg>,
        st: &mut MeshState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(l) = st.listener.take() {
            l.abort();
        }
        Ok(())
    }
}
