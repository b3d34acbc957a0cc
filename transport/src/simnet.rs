//! SimNet: an in-memory network on tokio's clock, for the harness.
//!
//! Each `send` is judged by the [`FaultPlan`], then by the link's loss, then
//! scheduled for delivery after the link's latency plus jitter plus any fault
//! delay. Delivery is a timer on tokio's clock, so under
//! `tokio::time::pause` a run is driven by virtual time. All chance comes from
//! one ChaCha RNG seeded at construction: with a single-threaded runtime the
//! same seed gives the same [`TraceEvent`] sequence.
//!
//! A facility that leaves (a crash) loses what was in flight to it: delivery
//! checks that the receiver is the same incarnation that was there at send
//! time, as a reset QUIC connection would.
//!
//! The link model is a seam: a [`LinkModel`] decides each payload's delay,
//! as a [`Breakdown`] that the trace keeps. Two models ship: the default
//! [`UniformModel`] (per-link [`LinkParams`]: base latency, uniform jitter,
//! loss) and [`Physics`] (per-link [`LinkSpec`]: distance, bandwidth, hops,
//! queuing distributions, congestion at measured utilization), which the
//! net switches to when a spec is set. Delivery happens on tokio's timer,
//! which has millisecond resolution: a payload arrives up to 1 ms after its
//! breakdown's total.

use crate::{
    FacilityId, FaultPlan, Inbound, LinkStatus, SendError, SendErrorKind, TrafficClass, Transport,
    Verdict, DATAGRAM_LEN_MAX,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub mod physics;

pub use physics::{Congestion, Distribution, LinkSpec, Physics, PhysicsError};

/// Most trace events kept; older ones are discarded first.
pub const TRACE_LEN_MAX: usize = 100_000;

/// Latency and loss of one directed link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkParams {
    /// One-way base latency.
    pub latency: Duration,
    /// Extra latency drawn uniformly from `0..=jitter`.
    pub jitter: Duration,
    /// Chance that a payload is lost (0..=1).
    pub loss: f64,
}

impl Default for LinkParams {
    /// Same-datacenter-like: 1 ms, up to 1 ms of jitter, no loss.
    fn default() -> Self {
        LinkParams {
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(1),
            loss: 0.0,
        }
    }
}

/// Where one payload's delay came from. Its [`total`](Breakdown::total) is
/// the time the net held it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Breakdown {
    /// Signal travel over the distance ([`UniformModel`]: the base latency).
    pub propagation: Duration,
    /// Putting the bytes on the wire.
    pub transmission: Duration,
    /// Routers along the path.
    pub processing: Duration,
    /// Waiting in buffers, congestion included.
    pub queuing: Duration,
    /// Random variation on top.
    pub jitter: Duration,
    /// Added by the [`FaultPlan`].
    pub fault: Duration,
}

impl Breakdown {
    /// The sum of the parts.
    pub fn total(&self) -> Duration {
        self.propagation
            + self.transmission
            + self.processing
            + self.queuing
            + self.jitter
            + self.fault
    }
}

/// What a [`LinkModel`] knows about one payload it must carry.
#[derive(Debug, Clone, Copy)]
pub struct LinkCtx<'a> {
    /// Sender.
    pub from: &'a FacilityId,
    /// Receiver.
    pub to: &'a FacilityId,
    /// The link's [`LinkParams`] (what [`SimNet::set_link`] set).
    pub params: &'a LinkParams,
    /// Payload size.
    pub bytes: usize,
    /// Virtual time since the net was created.
    pub elapsed: Duration,
}

/// Decides one payload's network delay, or that it is lost.
pub trait LinkModel: Send {
    /// The delay broken down (leave `fault` at zero: the net fills it in),
    /// or `None` when the payload is lost. Draw every chance from `rng`.
    fn transit(&mut self, link: &LinkCtx<'_>, rng: &mut ChaCha8Rng) -> Option<Breakdown>;
}

/// The default model: base latency, uniform jitter, independent loss, from
/// each link's [`LinkParams`].
#[derive(Debug, Default)]
pub struct UniformModel;

impl LinkModel for UniformModel {
    /// Reports the base latency as propagation and the uniform extra as
    /// jitter.
    fn transit(&mut self, link: &LinkCtx<'_>, rng: &mut ChaCha8Rng) -> Option<Breakdown> {
        let params = link.params;
        if params.loss > 0.0 && rng.random_bool(params.loss.clamp(0.0, 1.0)) {
            return None;
        }
        let jitter_us = params.jitter.as_micros() as u64;
        let extra = if jitter_us == 0 {
            0
        } else {
            rng.random_range(0..=jitter_us)
        };
        Some(Breakdown {
            propagation: params.latency,
            jitter: Duration::from_micros(extra),
            ..Breakdown::default()
        })
    }
}

/// What happened to one payload; the harness compares traces across runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Virtual milliseconds since the net was created.
    pub at_ms: u64,
    /// Sender.
    pub from: FacilityId,
    /// Receiver.
    pub to: FacilityId,
    /// Path.
    pub class: TrafficClass,
    /// blake3 of the payload, first 8 bytes.
    pub digest: u64,
    /// The outcome.
    pub outcome: Outcome,
    /// The delay it travelled with, for a payload that reached the
    /// receiver's end (delivered, or refused there as full or gone); `None`
    /// when it was cut, lost or had no receiver at send time.
    pub breakdown: Option<Breakdown>,
}

/// The fate of a payload in the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handed to the receiver.
    Delivered,
    /// Cut by the fault plan.
    DroppedByFault,
    /// Lost on the link.
    Lost,
    /// The receiver was gone or restarted before it arrived.
    ReceiverGone,
    /// The receiver's inbound queue was full.
    ReceiverFull,
}

struct Slot {
    tx: mpsc::Sender<Inbound>,
    incarnation: u64,
}

/// The model in use. Physics is kept by type so the spec setters reach it.
enum Model {
    Custom(Box<dyn LinkModel>),
    Physics(Physics),
}

impl Model {
    fn get(&mut self) -> &mut dyn LinkModel {
        match self {
            Model::Custom(m) => m.as_mut(),
            Model::Physics(p) => p,
        }
    }
}

struct State {
    rng: ChaCha8Rng,
    start: tokio::time::Instant,
    nodes: BTreeMap<FacilityId, Slot>,
    links: BTreeMap<(FacilityId, FacilityId), LinkParams>,
    default_link: LinkParams,
    model: Model,
    trace: std::collections::VecDeque<TraceEvent>,
    incarnations: u64,
}

impl State {
    fn record(
        &mut self,
        from: &FacilityId,
        to: &FacilityId,
        class: TrafficClass,
        payload: &[u8],
        outcome: Outcome,
        breakdown: Option<Breakdown>,
    ) {
        if self.trace.len() >= TRACE_LEN_MAX {
            self.trace.pop_front();
        }
        let hash = blake3::hash(payload);
        let digest = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        self.trace.push_back(TraceEvent {
            at_ms: self.start.elapsed().as_millis() as u64,
            from: from.clone(),
            to: to.clone(),
            class,
            digest,
            outcome,
            breakdown,
        });
        let label = match outcome {
            Outcome::Delivered => return,
            Outcome::DroppedByFault => "fault",
            Outcome::Lost => "lost",
            Outcome::ReceiverGone => "receiver_gone",
            Outcome::ReceiverFull => "receiver_full",
        };
        metrics::counter!("bulwark_transport_dropped_total",
            "facility" => from.to_string(), "peer" => to.to_string(), "reason" => label)
        .increment(1);
    }
}

/// The shared in-memory network. Clone it to hand it around.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<State>>,
    faults: FaultPlan,
    tap: Arc<Mutex<Option<Tap>>>,
}

/// Sees every payload a facility puts on the net, as it leaves the sender
/// (before faults judge it): `(from, to, class, payload)`. Checkers use it
/// to compare what a facility said with what its disk held at that moment.
pub type Tap = Arc<dyn Fn(&FacilityId, &FacilityId, TrafficClass, &[u8]) + Send + Sync>;

impl SimNet {
    /// A network whose every chance is drawn from `seed`.
    pub fn new(seed: u64) -> Self {
        SimNet {
            state: Arc::new(Mutex::new(State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                start: tokio::time::Instant::now(),
                nodes: BTreeMap::new(),
                links: BTreeMap::new(),
                default_link: LinkParams::default(),
                model: Model::Custom(Box::new(UniformModel)),
                trace: Default::default(),
                incarnations: 0,
            })),
            faults: FaultPlan::new(),
            tap: Arc::new(Mutex::new(None)),
        }
    }

    /// Installs `tap` (replacing any earlier one): from now on it sees every
    /// payload sent, before the net's faults act on it.
    pub fn set_tap(&self, tap: Tap) {
        *self.tap.lock().expect("simnet tap lock") = Some(tap);
    }

    /// Adds (or re-adds, after a crash) a facility. Its inbound channel holds
    /// at most `inbound_len_max` payloads.
    pub fn join(
        &self,
        id: FacilityId,
        inbound_len_max: usize,
    ) -> (SimTransport, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(inbound_len_max.max(1));
        let mut st = self.lock();
        st.incarnations += 1;
        let incarnation = st.incarnations;
        st.nodes.insert(id.clone(), Slot { tx, incarnation });
        let t = SimTransport {
            id,
            net: self.clone(),
        };
        (t, rx)
    }

    /// Removes a facility (a crash): what is in flight to it is lost.
    pub fn leave(&self, id: &FacilityId) {
        self.lock().nodes.remove(id);
    }

    /// The fault plan every SimTransport of this net obeys.
    pub fn faults(&self) -> &FaultPlan {
        &self.faults
    }

    /// Sets one directed link's parameters (used by [`UniformModel`] and
    /// other custom models; [`Physics`] follows [`LinkSpec`]s instead).
    pub fn set_link(&self, from: &FacilityId, to: &FacilityId, params: LinkParams) {
        self.lock().links.insert((from.clone(), to.clone()), params);
    }

    /// Sets the parameters of every link not set one by one.
    pub fn set_default_link(&self, params: LinkParams) {
        self.lock().default_link = params;
    }

    /// Replaces the link model. A boxed [`Physics`] works, but the spec
    /// setters below cannot reach inside it; use them for physics instead.
    pub fn set_model(&self, model: Box<dyn LinkModel>) {
        self.lock().model = Model::Custom(model);
    }

    /// Switches the net to [`Physics`] (if it used another model) and sets
    /// the spec of every link not set one by one. Measured traffic and
    /// per-link specs survive when physics was already on.
    pub fn set_default_spec(&self, spec: LinkSpec) -> Result<(), PhysicsError> {
        let mut st = self.lock();
        match &mut st.model {
            Model::Physics(p) => p.set_default(spec),
            Model::Custom(_) => {
                st.model = Model::Physics(Physics::new(spec)?);
                Ok(())
            }
        }
    }

    /// Sets the spec of the directed link `from -> to`. If the net used
    /// another model, it switches to [`Physics`] with
    /// [`LinkSpec::same_datacenter`] for every other link (the nearest to
    /// `LinkParams::default()`); call [`set_default_spec`](Self::set_default_spec)
    /// first to choose otherwise.
    pub fn set_link_spec(
        &self,
        from: &FacilityId,
        to: &FacilityId,
        spec: LinkSpec,
    ) -> Result<(), PhysicsError> {
        let mut st = self.lock();
        match &mut st.model {
            Model::Physics(p) => p.set_link(from, to, spec),
            Model::Custom(_) => {
                let mut p = Physics::new(LinkSpec::same_datacenter())?;
                p.set_link(from, to, spec)?;
                st.model = Model::Physics(p);
                Ok(())
            }
        }
    }

    /// Every event so far, oldest first.
    pub fn trace(&self) -> Vec<TraceEvent> {
        self.lock().trace.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("simnet lock")
    }

    fn members(&self) -> Vec<FacilityId> {
        self.lock().nodes.keys().cloned().collect()
    }

    fn route(&self, from: &FacilityId, to: &FacilityId, class: TrafficClass, payload: Vec<u8>) {
        let tap = self.tap.lock().expect("simnet tap lock").clone();
        if let Some(tap) = tap {
            tap(from, to, class, &payload);
        }
        let mut st = self.lock();
        let st = &mut *st;
        let Some(incarnation) = st.nodes.get(to).map(|s| s.incarnation) else {
            st.record(from, to, class, &payload, Outcome::ReceiverGone, None);
            return;
        };
        let fault_delay = match self.faults.judge(from, to, class, &mut st.rng) {
            Verdict::Drop => {
                return st.record(from, to, class, &payload, Outcome::DroppedByFault, None)
            }
            Verdict::Deliver(d) => d,
        };
        let mut payload = payload;
        self.faults.corrupt(from, to, &mut payload);
        let params = *st
            .links
            .get(&(from.clone(), to.clone()))
            .unwrap_or(&st.default_link);
        let link = LinkCtx {
            from,
            to,
            params: &params,
            bytes: payload.len(),
            elapsed: st.start.elapsed(),
        };
        let Some(mut breakdown) = st.model.get().transit(&link, &mut st.rng) else {
            return st.record(from, to, class, &payload, Outcome::Lost, None);
        };
        breakdown.fault = fault_delay;
        let net = self.clone();
        let inbound = Inbound {
            from: from.clone(),
            class,
            payload,
        };
        let to = to.clone();
        tokio::spawn(async move {
            tokio::time::sleep(breakdown.total()).await;
            net.deliver(to, incarnation, inbound, breakdown);
        });
    }

    fn deliver(&self, to: FacilityId, incarnation: u64, inbound: Inbound, breakdown: Breakdown) {
        let mut st = self.lock();
        let outcome = match st.nodes.get(&to) {
            Some(slot) if slot.incarnation == incarnation => {
                match slot.tx.try_send(inbound.clone()) {
                    Ok(()) => Outcome::Delivered,
                    Err(mpsc::error::TrySendError::Full(_)) => Outcome::ReceiverFull,
                    Err(mpsc::error::TrySendError::Closed(_)) => Outcome::ReceiverGone,
                }
            }
            _ => Outcome::ReceiverGone,
        };
        let (from, class) = (&inbound.from, inbound.class);
        st.record(from, &to, class, &inbound.payload, outcome, Some(breakdown));
    }
}

/// One facility's view of a [`SimNet`].
#[derive(Clone)]
pub struct SimTransport {
    id: FacilityId,
    net: SimNet,
}

impl SimTransport {
    /// The network this transport belongs to.
    pub fn net(&self) -> &SimNet {
        &self.net
    }
}

impl Transport for SimTransport {
    fn local_id(&self) -> &FacilityId {
        &self.id
    }

    fn peers(&self) -> Vec<FacilityId> {
        self.net
            .members()
            .into_iter()
            .filter(|p| *p != self.id)
            .collect()
    }

    fn send(
        &self,
        to: &FacilityId,
        class: TrafficClass,
        payload: Vec<u8>,
    ) -> Result<(), SendError> {
        let limit = match class {
            TrafficClass::Control => crate::frame::FRAME_LEN_MAX,
            TrafficClass::Heartbeat => DATAGRAM_LEN_MAX,
        };
        if payload.len() > limit {
            let kind = SendErrorKind::TooLarge;
            return Err(SendError {
                to: to.clone(),
                kind,
                payload,
            });
        }
        if *to == self.id {
            let kind = SendErrorKind::UnknownPeer;
            return Err(SendError {
                to: to.clone(),
                kind,
                payload,
            });
        }
        metrics::counter!("bulwark_transport_sent_total",
            "facility" => self.id.to_string(), "peer" => to.to_string(), "class" => class.as_str())
        .increment(1);
        self.net.route(&self.id, to, class, payload);
        Ok(())
    }

    fn link_status(&self, peer: &FacilityId) -> LinkStatus {
        if self.net.lock().nodes.contains_key(peer) {
            LinkStatus::Up
        } else {
            LinkStatus::Down
        }
    }

    fn faults(&self) -> &FaultPlan {
        &self.net.faults
    }

    fn link_driver(&self, _peer: &FacilityId) -> Option<crate::BoxFuture> {
        None
    }

    fn accept_driver(&self) -> Option<crate::BoxFuture> {
        None
    }
}

#[cfg(test)]
mod tests;
