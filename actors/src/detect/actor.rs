//! The FailureDetector actor (detection zone) and the [`Detection`]
//! handle through which the rest of the facility sees what it knows.
//!
//! Every `heartbeat_ms` (± a seeded jitter, so facilities do not beat in
//! step) it sends each peer a [`Heartbeat`] on the unreliable path (QUIC
//! datagrams): a sequence number, the sender's hybrid logical clock, and
//! the peers the sender currently suspects. Every `tick_ms` it recomputes
//! φ per peer, the partition state ([`super::partition::PartitionMonitor`]),
//! and who suspects this facility, and publishes:
//! - the latest [`ClusterView`] (a `watch` channel: CapGate, Healer,
//!   RaftPeer and the HTTP API read it);
//! - every [`MembershipEvent`] (a `broadcast` channel: Up / Suspect /
//!   Down per peer, and partition transitions) to subscribers.
//!
//! The handle outlives restarts of the actor; a restarted detector
//! presumes every peer heard at its start and relearns the intervals.

use std::sync::Arc;
use std::time::Duration;

use bulwark_runtime::{Address, ChildDef, Delivery, NodeCtx, Zone};
use bulwark_storage::codec;
use bulwark_transport::FacilityId;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::partition::PartitionState;
use super::{Change, Detector, Liveness, PhiConfig};
use crate::hlc::{Hlc, HlcClock};

/// The FailureDetector's registered name.
pub const DETECTOR: &str = "failure_detector";

/// Most peers named in one heartbeat.
pub const SUSPECTS_MAX: usize = 64;

/// Settings of the detector. [`Default`] gives the embedded defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectConfig {
    /// The φ core's settings.
    pub phi: PhiConfig,
    /// Mean interval between heartbeats, in ms.
    pub heartbeat_ms: u64,
    /// Each interval is drawn from `heartbeat_ms × (1 ± jitter)`.
    pub heartbeat_jitter: f64,
    /// How often φ, the view and the partition state are recomputed, in ms.
    pub tick_ms: u64,
    /// A peer's report of whom it suspects counts for this long, in ms.
    pub report_fresh_ms: u64,
    /// A peer's clock more than this ahead is not adopted by the HLC, in ms.
    pub hlc_offset_max_ms: u64,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            phi: PhiConfig::default(),
            heartbeat_ms: 1_000,
            heartbeat_jitter: 0.1,
            tick_ms: 100,
            report_fresh_ms: 5_000,
            hlc_offset_max_ms: 60_000,
        }
    }
}

impl DetectConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_ms == 0 || self.tick_ms == 0 {
            return Err("heartbeat_ms and tick_ms must be positive".into());
        }
        if !(0.0..=0.9).contains(&self.heartbeat_jitter) {
            return Err("heartbeat_jitter must be within 0.0..=0.9".into());
        }
        if self.phi.window == 0 || self.phi.min_std_ms <= 0.0 {
            return Err("phi window and min_std_ms must be positive".into());
        }
        if !(self.phi.suspect_phi > 0.0 && self.phi.down_phi >= self.phi.suspect_phi) {
            return Err("phi thresholds: 0 < suspect_phi <= down_phi".into());
        }
        Ok(())
    }
}

/// What a facility's detector tells each peer, on the unreliable path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Counts up from the sender's start.
    pub seq: u64,
    /// The sender's hybrid logical clock.
    pub hlc: Hlc,
    /// The peers the sender holds Suspect or Down.
    pub suspects: Vec<FacilityId>,
}

/// One peer as this facility sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// The peer.
    pub peer: FacilityId,
    /// φ now.
    pub phi: f64,
    /// Up, Suspect or Down.
    pub liveness: Liveness,
    /// Whom the peer suspects, by its last fresh heartbeat.
    pub suspects: Vec<FacilityId>,
}

/// The membership view: what the detector publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterView {
    /// This facility.
    pub facility: FacilityId,
    /// Every peer.
    pub peers: Vec<PeerView>,
    /// The partition state.
    pub partition: PartitionState,
    /// Wall-clock ms when the partition state last changed.
    pub partition_since_unix_ms: u64,
    /// How long ago a quorum was last reachable, in ms (0 while it is).
    pub stale_ms: u64,
    /// Peers whose fresh heartbeat names this facility as suspect.
    pub suspected_by: Vec<FacilityId>,
}

impl ClusterView {
    /// A view before the detector has run: every peer Up.
    pub fn initial(facility: FacilityId, peers: &[FacilityId]) -> ClusterView {
        ClusterView {
            facility,
            peers: peers
                .iter()
                .map(|p| PeerView {
                    peer: p.clone(),
                    phi: 0.0,
                    liveness: Liveness::Up,
                    suspects: Vec::new(),
                })
                .collect(),
            partition: super::partition::partition_state(peers.len() + 1, peers.len()),
            partition_since_unix_ms: 0,
            stale_ms: 0,
            suspected_by: Vec::new(),
        }
    }

    /// True when a majority of the peers suspect this facility.
    pub fn self_suspected(&self) -> bool {
        !self.peers.is_empty() && self.suspected_by.len() * 2 > self.peers.len()
    }

    /// How this facility sees `peer`.
    pub fn liveness(&self, peer: &FacilityId) -> Option<Liveness> {
        self.peers
            .iter()
            .find(|p| p.peer == *peer)
            .map(|p| p.liveness)
    }

    /// The peer best suited to lead instead of this facility: Up here,
    /// suspected by the fewest others, then the lowest φ.
    pub fn healthiest_peer(&self) -> Option<FacilityId> {
        self.peers
            .iter()
            .filter(|p| p.liveness == Liveness::Up)
            .map(|p| {
                let accusers = self
                    .peers
                    .iter()
                    .filter(|o| o.suspects.contains(&p.peer))
                    .count();
                (accusers, p.phi, &p.peer)
            })
            .min_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(b.2)))
            .map(|(_, _, p)| p.clone())
    }
}

/// What subscribers hear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A peer changed between Up, Suspect and Down.
    Peer(Change),
    /// The partition state changed.
    Partition {
        /// Before.
        from: PartitionState,
        /// Now.
        to: PartitionState,
    },
}

struct Shared {
    peers: Vec<FacilityId>,
    view: watch::Sender<ClusterView>,
    events: broadcast::Sender<MembershipEvent>,
    hlc: HlcClock,
    config: DetectConfig,
}

/// What the facility knows about who is reachable: the latest view, the
/// event stream and the hybrid logical clock. Cheap to clone; made once
/// per facility, before its actors.
#[derive(Clone)]
pub struct Detection {
    inner: Arc<Shared>,
}

impl Detection {
    /// The handle of `facility` among `peers`.
    pub fn new(facility: FacilityId, peers: &[FacilityId], config: DetectConfig) -> Detection {
        let node = crate::ids::raft_id(&facility);
        let (view, _) = watch::channel(ClusterView::initial(facility, peers));
        let (events, _) = broadcast::channel(1024);
        Detection {
            inner: Arc::new(Shared {
                peers: peers.to_vec(),
                view,
                events,
                hlc: HlcClock::new(node, config.hlc_offset_max_ms),
                config,
            }),
        }
    }

    /// The latest view.
    pub fn view(&self) -> ClusterView {
        self.inner.view.borrow().clone()
    }

    /// The view as it changes.
    pub fn watch(&self) -> watch::Receiver<ClusterView> {
        self.inner.view.subscribe()
    }

    /// Every membership event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<MembershipEvent> {
        self.inner.events.subscribe()
    }

    /// The facility's hybrid logical clock.
    pub fn hlc(&self) -> &HlcClock {
        &self.inner.hlc
    }

    /// The peers watched (every member but this facility).
    pub fn peers(&self) -> &[FacilityId] {
        &self.inner.peers
    }

    /// The settings.
    pub fn config(&self) -> &DetectConfig {
        &self.inner.config
    }
}

/// Messages of the [`FailureDetector`].
pub enum DetectMsg {
    /// Recompute and publish (self-sent every `tick_ms`).
    Tick,
    /// Send the next heartbeats (self-sent).
    Beat,
    /// A peer's heartbeat, through the Router.
    Remote(Delivery),
}

/// The FailureDetector actor.
pub struct FailureDetector;

/// Its state.
pub struct DetectorState {
    ctx: NodeCtx,
    detection: Detection,
    core: Detector,
    peers: Vec<FacilityId>,
    start: tokio::time::Instant,
    seq: u64,
    rng: rand_chacha::ChaCha8Rng,
    ticker: ractor::concurrency::JoinHandle<()>,
}

impl DetectorState {
    fn now_ms(&self) -> u64 {
        self.ctx.clock.now().duration_since(self.start).as_millis() as u64
    }

    fn next_interval(&mut self) -> Duration {
        let c = self.detection.config();
        let j = c.heartbeat_jitter;
        let factor = if j > 0.0 {
            self.rng.random_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        Duration::from_millis(((c.heartbeat_ms as f64) * factor).max(1.0) as u64)
    }

    fn beat(&mut self) {
        self.seq += 1;
        let hb = Heartbeat {
            seq: self.seq,
            hlc: self.detection.hlc().now(self.ctx.clock.unix_ms()),
            suspects: self.core.suspects(),
        };
        let Ok(body) = codec::encode(&hb) else {
            return;
        };
        for peer in &self.peers {
            // A full queue or a down link loses the beat, as the network
            // would: the detector is built for lost heartbeats.
            let _ = self
                .ctx
                .router
                .send_datagram(Address::new(peer.clone(), DETECTOR), body.clone());
        }
    }

    fn on_heartbeat(&mut self, d: Delivery) {
        let from = d.envelope.from.clone();
        let hb: Heartbeat =
            match codec::decode_limited(&d.envelope.body, bulwark_transport::DATAGRAM_LEN_MAX) {
                Ok(hb) => hb,
                Err(e) => {
                    metrics::counter!("bulwark_detect_malformed_total").increment(1);
                    tracing::warn!(%from, error = %e, "malformed heartbeat dropped");
                    return;
                }
            };
        if !self.peers.contains(&from) || hb.suspects.len() > SUSPECTS_MAX {
            metrics::counter!("bulwark_detect_malformed_total").increment(1);
            return;
        }
        let now = self.now_ms();
        if let Err(e) = self
            .detection
            .hlc()
            .observe(hb.hlc, self.ctx.clock.unix_ms())
        {
            metrics::counter!("bulwark_detect_clock_ahead_total", "peer" => from.to_string())
                .increment(1);
            tracing::warn!(%from, error = %e, "peer clock far ahead; not adopted");
        }
        let changes = self.core.heartbeat(&from, hb.suspects, now);
        self.publish(changes, now);
    }

    fn publish(&mut self, changes: Vec<Change>, now: u64) {
        let (out, events) = self.core.view(changes, now, self.ctx.clock.unix_ms());
        for p in &out.peers {
            let peer = p.peer.to_string();
            metrics::gauge!("bulwark_detect_phi", "peer" => peer.clone()).set(p.phi.min(1e6));
            metrics::gauge!("bulwark_detect_peer_state", "peer" => peer).set(match p.liveness {
                Liveness::Up => 0.0,
                Liveness::Suspect => 1.0,
                Liveness::Down => 2.0,
            });
        }
        self.detection.inner.view.send_replace(out);
        for e in events {
            match &e {
                MembershipEvent::Peer(c) => {
                    metrics::counter!("bulwark_detect_transitions_total",
                        "peer" => c.peer.to_string(), "to" => format!("{:?}", c.to))
                    .increment(1);
                    tracing::info!(peer = %c.peer, from = ?c.from, to = ?c.to, "peer liveness changed");
                }
                MembershipEvent::Partition { from, to } => {
                    metrics::counter!("bulwark_detect_partition_changes_total", "to" => to.code())
                        .increment(1);
                    tracing::warn!(%from, %to, "partition state changed");
                }
            }
            let _ = self.detection.inner.events.send(e);
        }
    }
}

/// The FailureDetector as a child of the detection zone.
pub fn detector_child(detection: Detection) -> (Zone, ChildDef) {
    let def = ChildDef::new(DETECTOR, move |ctx: &NodeCtx| {
        (FailureDetector, (ctx.clone(), detection.clone()))
    });
    (Zone::Detection, def)
}

impl Actor for FailureDetector {
    type Msg = DetectMsg;
    type State = DetectorState;
    type Arguments = (NodeCtx, Detection);

    async fn pre_start(
        &self,
        myself: ActorRef<DetectMsg>,
        (ctx, detection): (NodeCtx, Detection),
    ) -> Result<DetectorState, ActorProcessingErr> {
        let config = detection.config().clone();
        config.validate()?;
        let peers = detection.peers().to_vec();
        let core = Detector::new(ctx.facility.clone(), &peers, &config, 0);
        ctx.router
            .register(DETECTOR, myself.clone(), DetectMsg::Remote);
        let seed = u64::from_le_bytes(
            blake3::hash(ctx.facility.as_str().as_bytes()).as_bytes()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        let ticker =
            myself.send_interval(Duration::from_millis(config.tick_ms), || DetectMsg::Tick);
        let _ = myself.cast(DetectMsg::Beat);
        Ok(DetectorState {
            start: ctx.clock.now(),
            ctx,
            detection,
            core,
            peers,
            seq: 0,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            ticker,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DetectMsg>,
        msg: DetectMsg,
        st: &mut DetectorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DetectMsg::Tick => {
                let now = st.now_ms();
                let changes = st.core.tick(now);
                st.publish(changes, now);
            }
            DetectMsg::Beat => {
                st.beat();
                let next = st.next_interval();
                myself.send_after(next, || DetectMsg::Beat);
            }
            DetectMsg::Remote(d) => st.on_heartbeat(d),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DetectMsg>,
        st: &mut DetectorState,
    ) -> Result<(), ActorProcessingErr> {
        st.ticker.abort();
        Ok(())
    }
}
