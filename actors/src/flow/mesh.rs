//! The CircuitBreaker actor and its mesh (flow zone).
//!
//! - It owns the facility's named breakers ([`super::breaker::Breaker`])
//!   in a shared set ([`Breakers`]): callers on a hot path (the RaftPeer
//!   forwarding a proposal or asking the leader for a read index) take a
//!   permit and report the outcome in process, without a mailbox round
//!   trip; the actor announces every transition (log, metrics, mesh) on its
//!   next tick. [`BreakerMsg::Acquire`] and [`BreakerMsg::Record`] do the
//!   same through messages.
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
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

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

/// How often the actor announces the transitions callers caused.
pub const ANNOUNCE_EVERY: Duration = Duration::from_millis(100);

/// One breaker in the set.
#[derive(Debug)]
struct Entry {
    peer: Option<FacilityId>,
    breaker: Breaker,
    /// Opened by the failure detector (not by calls): closed again when
    /// the detector holds the peer Up.
    tripped_by_detector: bool,
}

/// The facility's breakers, shared between the breaker actor and the
/// callers that guard a dependency with them. Time is the caller's
/// monotonic clock, counted from the first call.
#[derive(Clone, Default)]
pub struct Breakers {
    inner: Arc<Mutex<BTreeMap<String, Entry>>>,
    origin: Arc<OnceLock<tokio::time::Instant>>,
}

impl std::fmt::Debug for Breakers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breakers").finish_non_exhaustive()
    }
}

impl Breakers {
    fn ms(&self, now: tokio::time::Instant) -> u64 {
        let origin = *self.origin.get_or_init(|| now);
        now.saturating_duration_since(origin).as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding it leaves plain data: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or replaces) breaker `name`, tied to `peer` when it guards
    /// calls to one facility. A bad name or config is refused.
    pub fn register(
        &self,
        name: &str,
        peer: Option<FacilityId>,
        config: BreakerConfig,
    ) -> Result<(), String> {
        if name.is_empty() || name.len() > DEPENDENCY_LEN_MAX {
            return Err(format!(
                "a dependency name is 1 to {DEPENDENCY_LEN_MAX} bytes"
            ));
        }
        config.validate()?;
        self.lock().insert(
            name.to_string(),
            Entry {
                peer,
                breaker: Breaker::new(config),
                tripped_by_detector: false,
            },
        );
        Ok(())
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// A caller that restarted lost the permits it held: a half-open
    /// breaker would wait for their probes forever, so it closes with an
    /// empty window (the permits out no longer count). Open and closed
    /// ones keep their state (a peer the detector holds Down stays open).
    pub fn reset(&self, name: &str, now: tokio::time::Instant) {
        let ms = self.ms(now);
        if let Some(e) = self.lock().get_mut(name) {
            if e.breaker.state().name() == "half_open" {
                e.breaker.reset(ms);
                e.tripped_by_detector = false;
            }
        }
    }

    /// Leave for one call to `name` (an unknown name is refused as open).
    pub fn acquire(&self, name: &str, now: tokio::time::Instant) -> Result<Permit, Refused> {
        let ms = self.ms(now);
        match self.lock().get_mut(name) {
            Some(e) => e.breaker.try_acquire(ms),
            None => Err(Refused {
                state: "unknown",
                retry_after_ms: 0,
            }),
        }
    }

    /// The outcome of a call made with `permit`.
    pub fn record(
        &self,
        name: &str,
        permit: Permit,
        outcome: Outcome,
        took_ms: u64,
        now: tokio::time::Instant,
    ) {
        let ms = self.ms(now);
        if let Some(e) = self.lock().get_mut(name) {
            e.breaker.on_result(permit, outcome, took_ms, ms);
        }
    }

    /// Opens every breaker tied to `peer` (the detector holds it Down);
    /// returns their names.
    pub fn trip_peer(&self, peer: &FacilityId, now: tokio::time::Instant) -> Vec<String> {
        let ms = self.ms(now);
        let mut tripped = Vec::new();
        for (name, e) in self.lock().iter_mut() {
            if e.peer.as_ref() == Some(peer) {
                e.breaker.trip(ms);
                e.tripped_by_detector = true;
                tripped.push(name.clone());
            }
        }
        tripped
    }

    /// Closes the breakers tied to `peer` that the detector opened (it
    /// holds the peer Up again); ones opened by failed calls recover
    /// through their own half-open probes.
    pub fn untrip_peer(&self, peer: &FacilityId, now: tokio::time::Instant) {
        let ms = self.ms(now);
        for e in self.lock().values_mut() {
            if e.peer.as_ref() == Some(peer) && e.tripped_by_detector {
                e.tripped_by_detector = false;
                if matches!(e.breaker.state().name(), "open" | "half_open") {
                    e.breaker.reset(ms);
                }
            }
        }
    }

    /// Every breaker's transitions since the last call.
    fn drain(&self) -> Vec<(String, Transition)> {
        let mut out = Vec::new();
        for (name, e) in self.lock().iter_mut() {
            out.extend(
                e.breaker
                    .drain_events()
                    .into_iter()
                    .map(|t| (name.clone(), t)),
            );
        }
        out
    }

    /// Every breaker as operators see it.
    pub fn views(&self) -> Vec<BreakerView> {
        self.lock()
            .iter()
            .map(|(n, e)| BreakerView {
                name: n.clone(),
                peer: e.peer.clone(),
                state: e.breaker.state().name(),
                stats: e.breaker.stats(),
            })
            .collect()
    }
}

/// How to make the breaker actor.
#[derive(Clone)]
pub struct MeshSetup {
    /// The membership view (peer Down trips dependents). `None`: no
    /// detector.
    pub detection: Option<Detection>,
    /// Queue slots added to the local admission controller per open
    /// breaker among the peers.
    pub buffer_per_open: usize,
    /// The breakers, shared with the callers that use them.
    pub breakers: Breakers,
}

impl Default for MeshSetup {
    fn default() -> Self {
        MeshSetup {
            detection: None,
            buffer_per_open: 32,
            breakers: Breakers::default(),
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
    /// Announce the transitions callers caused (self-sent, every
    /// [`ANNOUNCE_EVERY`]).
    Announce,
}

/// The breaker actor.
pub struct CircuitBreakers;

/// Its state.
pub struct MeshState {
    ctx: NodeCtx,
    setup: MeshSetup,
    remote: BTreeMap<(FacilityId, String), (String, u64)>,
    buffer: usize,
    listener: Option<tokio::task::JoinHandle<()>>,
    ticker: Option<ractor::concurrency::JoinHandle<()>>,
}

impl MeshState {
    fn breakers(&self) -> &Breakers {
        &self.setup.breakers
    }

    /// Reports and broadcasts every transition since the last time.
    fn announce(&mut self) {
        for (name, t) in self.breakers().drain() {
            metrics::counter!("bulwark_flow_breaker_transitions_total",
                "dependency" => name.clone(), "to" => t.to)
            .increment(1);
            let open = matches!(t.to, "open" | "forced_open");
            metrics::gauge!("bulwark_flow_breaker_open", "dependency" => name.clone())
                .set(if open { 1.0 } else { 0.0 });
            tracing::info!(
                dependency = %name,
                from = t.from,
                to = t.to,
                "breaker transition"
            );
            let wire = MeshWire {
                dependency: name,
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
        for name in self.breakers().trip_peer(peer, self.ctx.clock.now()) {
            metrics::counter!("bulwark_flow_breaker_detector_trips_total",
                "dependency" => name)
            .increment(1);
        }
        self.announce();
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
        let ticker = Some(myself.send_interval(ANNOUNCE_EVERY, || BreakerMsg::Announce));
        Ok(MeshState {
            ctx,
            setup,
            remote: BTreeMap::new(),
            buffer: 0,
            listener,
            ticker,
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
                let down = peer.as_ref().is_some_and(|p| st.peer_down(p));
                if let Err(why) = st.breakers().register(&name, peer.clone(), config) {
                    tracing::warn!(dependency = %name, %why, "breaker not registered");
                    return Ok(());
                }
                if let (true, Some(p)) = (down, peer) {
                    st.breakers().trip_peer(&p, st.ctx.clock.now());
                }
                st.announce();
            }
            BreakerMsg::Acquire { name, reply } => {
                let out = st.breakers().acquire(&name, st.ctx.clock.now());
                st.announce();
                let _ = reply.send(out);
            }
            BreakerMsg::Record {
                name,
                permit,
                outcome,
                took_ms,
            } => {
                st.breakers()
                    .record(&name, permit, outcome, took_ms, st.ctx.clock.now());
                st.announce();
            }
            BreakerMsg::Announce => st.announce(),
            BreakerMsg::Membership(MembershipEvent::Peer(c)) => {
                if c.to == Liveness::Down {
                    st.trip_dependents(&c.peer);
                } else if c.to == Liveness::Up {
                    st.breakers().untrip_peer(&c.peer, st.ctx.clock.now());
                    st.announce();
                }
            }
            BreakerMsg::Membership(MembershipEvent::Partition { .. }) => {}
            BreakerMsg::Remote(d) => st.on_remote(d),
            BreakerMsg::Status(reply) => {
                let _ = reply.send(MeshStatus {
                    local: st.breakers().views(),
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
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: &str) -> FacilityId {
        n.parse().unwrap()
    }

    fn quick() -> BreakerConfig {
        BreakerConfig {
            window: super::super::breaker::Window::Count(4),
            failure_rate_pct: 50,
            slow_call_rate_pct: 100,
            slow_call_ms: 10_000,
            min_calls: 2,
            open_ms: 1_000,
            half_open_probes: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_detector_closes_only_what_it_opened() {
        let b = Breakers::default();
        let t0 = tokio::time::Instant::now();
        b.register("forward@bravo", Some(peer("bravo")), quick())
            .unwrap();
        b.register("forward@charlie", Some(peer("charlie")), quick())
            .unwrap();
        // charlie's opens on failed calls, bravo's by the detector.
        for _ in 0..2 {
            let p = b.acquire("forward@charlie", t0).unwrap();
            b.record("forward@charlie", p, Outcome::Failure, 5, t0);
        }
        assert_eq!(
            b.trip_peer(&peer("bravo"), t0),
            vec!["forward@bravo".to_string()]
        );
        let state = |n: &str| b.views().into_iter().find(|v| v.name == n).unwrap().state;
        assert_eq!(
            (state("forward@bravo"), state("forward@charlie")),
            ("open", "open")
        );
        assert!(b.acquire("forward@bravo", t0).is_err());
        b.untrip_peer(&peer("bravo"), t0);
        b.untrip_peer(&peer("charlie"), t0);
        assert_eq!(
            (state("forward@bravo"), state("forward@charlie")),
            ("closed", "open")
        );
        // The transitions are announced once each, in order.
        let names: Vec<(String, &str)> = b.drain().into_iter().map(|(n, t)| (n, t.to)).collect();
        assert_eq!(
            names,
            vec![
                ("forward@bravo".to_string(), "open"),
                ("forward@bravo".to_string(), "closed"),
                ("forward@charlie".to_string(), "open"),
            ]
        );
        assert!(b.drain().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_frees_a_half_open_breaker_whose_probe_was_lost() {
        let b = Breakers::default();
        let t0 = tokio::time::Instant::now();
        b.register("read_index@bravo", None, quick()).unwrap();
        for _ in 0..2 {
            let p = b.acquire("read_index@bravo", t0).unwrap();
            b.record("read_index@bravo", p, Outcome::Failure, 5, t0);
        }
        let later = t0 + Duration::from_secs(2);
        // Half-open: one probe out, never answered (its caller restarted).
        let _lost = b.acquire("read_index@bravo", later).unwrap();
        assert!(b.acquire("read_index@bravo", later).is_err());
        b.reset("read_index@bravo", later);
        assert!(b.acquire("read_index@bravo", later).is_ok());
        assert!(b.register("", None, quick()).is_err());
        assert!(b.acquire("unknown", later).is_err());
    }
}
