//! Assembles one facility: its consensus and detection actors
//! ([`consensus_children`]), its API ([`api_flow_children`],
//! [`api_state`]), and, for a real deployment, QUIC and the node
//! ([`start`]). The simulation ([`crate::sim`]) runs the same assembly
//! over SimNet.

use bulwark_actors::bft::{self, bft_child, AppliedFeed, BftConfig, BftMsg, BftSetup, BftStatus};
use bulwark_actors::cap::gate::{gate_child, GateSetup};
use bulwark_actors::cap::heal::{healer_child, ConflictPolicy, HealerSetup};
use bulwark_actors::detect::{detector_child, DetectConfig, Detection};
use bulwark_actors::flow::actors::{backpressure, backpressure_child, bulkhead_child_with};
use bulwark_actors::flow::admission::AdmissionConfig;
use bulwark_actors::flow::bulkhead::Pools;
use bulwark_actors::flow::mesh::{breakers_child, BreakerMsg, MeshSetup, BREAKERS};
use bulwark_actors::keys::{self, Keyring, PublicKeys};
use bulwark_actors::raft::{
    raft_child, raft_peer, ProposeOutcome, RaftConfig, RaftMsg, RaftSetup, RaftStatus, RAFT,
};
use bulwark_actors::schedule::Command;
use bulwark_runtime::{
    ChildDef, Clock, Node, NodeConfig, NodeCtx, NodeError, RouterConfig, SupervisionConfig, Zone,
};
use bulwark_transport::FacilityId;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::AtomicBool;

use crate::backup::Checkpoints;
use crate::http::{self, api::Service, ApiState};
use bulwark_transport::identity::Identity;
use bulwark_transport::quic::{ClusterId, PeerSpec, QuicConfig, QuicError, QuicTransport};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;

/// Everything needed to start one facility on QUIC.
pub struct FacilitySpec {
    /// Certificate and key; the id inside is the facility's.
    pub identity: Identity,
    /// Where the redb file lives.
    pub data_dir: PathBuf,
    /// Address to listen on (ignored when `socket` is given).
    pub listen: SocketAddr,
    /// A pre-bound socket (demos and tests pick ports first).
    pub socket: Option<UdpSocket>,
    /// Every other facility.
    pub peers: Vec<PeerSpec>,
    /// Strategies and intensities.
    pub supervision: SupervisionConfig,
    /// Actors added to the built-in tree.
    pub extra: Vec<(Zone, ChildDef)>,
    /// The RaftPeer's setup; `None` runs no consensus (transport-only tests).
    pub raft: Option<RaftSetup>,
    /// The BftValidator's setup (needs `raft`); `None` runs no validator.
    pub bft: Option<BftSetup>,
    /// The detection zone (FailureDetector, CapGate), the Healer and the
    /// breaker mesh (need `raft`); `None` runs none of them.
    pub detection: Option<DetectionSpec>,
    /// The cluster: carried in every hello (a peer of another is refused)
    /// and stamped into the store (a store of another refuses to start);
    /// `None`: unchecked (demos, in-process runs).
    pub cluster: Option<ClusterId>,
    /// The newest wire version offered to peers (`None`: this build's).
    pub protocol_max: Option<u32>,
}

/// Settings of the detection zone and the healer.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectionSpec {
    /// The failure detector.
    pub detect: DetectConfig,
    /// How the healer resolves conflicts.
    pub policy: ConflictPolicy,
    /// Whether leadership moves away from a facility its peers suspect.
    pub leadership_follows_detector: bool,
}

impl Default for DetectionSpec {
    fn default() -> Self {
        DetectionSpec {
            detect: DetectConfig::default(),
            policy: ConflictPolicy::default(),
            leadership_follows_detector: true,
        }
    }
}

/// Why a facility did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FacilityError {
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// The node could not be started.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A running facility on QUIC.
pub struct Facility {
    /// The supervision tree.
    pub node: Node,
    /// The QUIC transport it uses.
    pub transport: QuicTransport,
    /// How it was started (without the socket), to start it again.
    pub spec: FacilitySpec,
    /// What the failure detector knows, when it runs.
    pub detection: Option<Detection>,
}

impl FacilitySpec {
    /// The same spec, to bind its listen address afresh.
    pub fn relaunch(&self) -> FacilitySpec {
        FacilitySpec {
            identity: self.identity.clone(),
            data_dir: self.data_dir.clone(),
            listen: self.listen,
            socket: None,
            peers: self.peers.clone(),
            supervision: self.supervision.clone(),
            extra: self.extra.clone(),
            raft: self.raft.clone(),
            // A new process starts with an empty feed of applied entries.
            bft: self.bft.clone().map(|b| BftSetup {
                feed: AppliedFeed::new(b.config.feed_len_max),
                ..b
            }),
            detection: self.detection.clone(),
            cluster: self.cluster,
            protocol_max: self.protocol_max,
        }
    }
}

/// Binds QUIC and starts the node.
pub async fn start(spec: FacilitySpec, clock: Arc<dyn Clock>) -> Result<Facility, FacilityError> {
    let kept = spec.relaunch();
    let facility = spec.identity.id.clone();
    let quic = QuicConfig {
        listen: spec.listen,
        peers: spec.peers,
        cluster: spec.cluster.unwrap_or_default(),
        protocol_max: spec
            .protocol_max
            .unwrap_or(QuicConfig::default().protocol_max),
        ..QuicConfig::default()
    };
    let (transport, inbound) = QuicTransport::bind(spec.identity, quic, spec.socket)?;
    let mut extra = spec.extra;
    let mut detection = None;
    if let Some(setup) = spec.raft {
        let parts = consensus_children(&facility, setup, spec.bft, spec.detection);
        extra.extend(parts.children);
        detection = parts.detection;
    }
    let config = NodeConfig {
        facility,
        data_dir: spec.data_dir,
        supervision: spec.supervision,
        router: RouterConfig::default(),
        cluster: spec.cluster,
    };
    let node = Node::start(config, Arc::new(transport.clone()), inbound, clock, extra).await?;
    Ok(Facility {
        node,
        transport,
        spec: kept,
        detection,
    })
}

/// What [`consensus_children`] built for one facility.
pub struct ConsensusParts {
    /// The actors to add to the facility's tree: the failure detector and
    /// the CapGate (detection zone), the breaker mesh (flow zone), the
    /// Healer, the RaftPeer and the BftValidator (consensus zone).
    pub children: Vec<(Zone, ChildDef)>,
    /// What the failure detector knows, when it runs.
    pub detection: Option<Detection>,
}

/// The consensus and detection actors of facility `facility`: the RaftPeer
/// from `raft`, the BftValidator beside it (fed by the RaftPeer's applied
/// entries) when `bft` is given, and the detection zone, the Healer and the
/// breaker mesh when `detection` is given. Independent of the transport:
/// a node on QUIC ([`start`]) and a simulated one ([`crate::sim`]) run the
/// same actors. Call it once per process start: the detection handle and
/// the validator's feed belong to one incarnation.
pub fn consensus_children(
    facility: &FacilityId,
    mut raft: RaftSetup,
    mut bft: Option<BftSetup>,
    detection: Option<DetectionSpec>,
) -> ConsensusParts {
    let mut children = Vec::new();
    if let Some(b) = &bft {
        raft.tap = Some(b.feed.tap(raft.tap.take()));
    }
    let mut handle = None;
    if let Some(ds) = detection {
        let peers: Vec<_> = raft
            .members
            .iter()
            .filter(|m| *m != facility)
            .cloned()
            .collect();
        let d = Detection::new(facility.clone(), &peers, ds.detect);
        if ds.leadership_follows_detector {
            raft.detection = Some(d.clone());
        }
        children.push(detector_child(d.clone()));
        children.push(gate_child(GateSetup::new(d.clone())));
        children.push(healer_child(HealerSetup {
            policy: ds.policy,
            ..HealerSetup::new(d.clone())
        }));
        // The RaftPeer guards its calls to the leader with the breakers
        // the mesh announces and the detector trips.
        let mesh = MeshSetup {
            detection: Some(d.clone()),
            ..MeshSetup::default()
        };
        raft.breakers = Some(mesh.breakers.clone());
        if let Some(b) = bft.as_mut() {
            b.breakers = Some(mesh.breakers.clone());
        }
        children.push(breakers_child(mesh));
        handle = Some(d);
    }
    children.push(raft_child(raft));
    if let Some(b) = bft {
        children.push(bft_child(b));
    }
    ConsensusParts {
        children,
        detection: handle,
    }
}

/// The flow-zone actors of a facility that serves the API: the
/// BackpressureController every `/v1` request passes, and the
/// BulkheadPool with the API's `pools` ([`http::api_pools`]).
pub fn api_flow_children(pools: Pools) -> Vec<(Zone, ChildDef)> {
    api_flow_children_with(pools, AdmissionConfig::default())
}

/// [`api_flow_children`] with the admission controller's settings
/// (`[flow]` in a facility's config).
pub fn api_flow_children_with(pools: Pools, admission: AdmissionConfig) -> Vec<(Zone, ChildDef)> {
    vec![
        backpressure_child(admission, 10),
        bulkhead_child_with(pools),
    ]
}

/// What the API of one running facility is made of, besides its node.
pub struct ApiSpec {
    /// Every member, this facility included.
    pub members: Vec<FacilityId>,
    /// Every facility's vote key.
    pub keys: PublicKeys,
    /// What the failure detector knows.
    pub detection: Option<Detection>,
    /// Who may call the API.
    pub tokens: Arc<crate::http::auth::Tokens>,
    /// Where the API records writes and operator actions; `None`: nowhere.
    pub audit: Option<Arc<crate::http::audit::AuditLog>>,
    /// This facility's checkpoint backups (`POST /v1/admin/backup` commits
    /// a checkpoint and waits for its file here); `None` refuses it.
    pub backup: Option<std::sync::Arc<Checkpoints>>,
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// False once the supervision tree has stopped.
    pub running: Arc<AtomicBool>,
}

/// The API state of the facility `node`: the schedule [`Service`] over its
/// context, its transport's link states, and its BackpressureController
/// (from [`api_flow_children`]) in front of `/v1`. Serve it with
/// [`http::app`].
pub fn api_state(node: &Node, spec: ApiSpec) -> ApiState {
    let service = Service {
        backup: spec.backup,
        ..Service::new(node.ctx().clone(), spec.members, spec.keys, spec.detection)
    };
    ApiState::new(
        spec.prometheus,
        node.router().transport().clone(),
        spec.running,
        backpressure(node),
    )
    .with_service(service)
    .with_tokens(spec.tokens)
    .with_audit(spec.audit)
}

/// One round of a facility's own health probes ([`http::run_checks`]):
/// the store takes a durable write, the RaftPeer answers, knows a leader,
/// and its replica is open.
pub async fn probe(ctx: NodeCtx) -> http::Probes {
    // A durable write, not a read: a disk that refuses writes (full, read
    // only, failing) must turn readiness off. One small fsync per check.
    let now = ctx.clock.unix_ms();
    let store = ctx
        .store
        .put_state("health.probe", &now)
        .and_then(|()| ctx.store.get_state::<u64>("health.probe"))
        .map_err(|e| format!("the store refuses a write: {e}"))
        .and_then(|v| match v {
            Some(t) if t == now => Ok(()),
            other => Err(format!("the store read back {other:?}, not {now}")),
        });
    // Liveness: the actors a facility cannot serve without answer a status
    // question within WEDGED (a mailbox that does not move for that long,
    // three checks in a row, is a wedged actor: a restart is the cure). A
    // missing one is the supervisor's to restart, not a wedge.
    let raft = ctx.find::<RaftMsg>(Zone::Consensus, RAFT);
    let validator = ctx.find::<BftMsg>(Zone::Consensus, bft::BFT);
    let breakers = ctx.find::<BreakerMsg>(Zone::Flow, BREAKERS);
    let (status, bft_ok, breakers_ok) = tokio::join!(
        async {
            match raft {
                Some(p) => match p.call(RaftMsg::Status, Some(WEDGED)).await {
                    Ok(ractor::rpc::CallResult::Success(s)) => Ok(s),
                    Ok(_) => Err("the RaftPeer did not answer".to_string()),
                    Err(e) => Err(e.to_string()),
                },
                None => Err("the RaftPeer is not running".to_string()),
            }
        },
        answers(validator, BftMsg::Status, "the validator"),
        answers(breakers, BreakerMsg::Status, "the breaker actor"),
    );
    let actors = match &status {
        Ok(_) => bft_ok.and(breakers_ok),
        Err(e) => Err(format!("the RaftPeer does not answer: {e}")),
    };
    let replica = match &status {
        Ok(s) => match s.fault.as_ref().or(s.vote_fence.as_ref()) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        },
        // Not known: the leader check reports the RaftPeer.
        Err(_) => Ok(()),
    };
    let leader = match status {
        Ok(s) if s.leader.is_some() => Ok(()),
        Ok(_) => Err("no leader known".to_string()),
        Err(e) => Err(e),
    };
    http::Probes {
        store,
        leader,
        replica,
        actors,
    }
}

/// How long an actor may take to answer the liveness probe.
pub const WEDGED: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether `actor` (when it runs) answers `ask` within [`WEDGED`].
async fn answers<M: ractor::Message, T: Send + 'static>(
    actor: Option<ractor::ActorRef<M>>,
    ask: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
    what: &str,
) -> Result<(), String> {
    let Some(a) = actor else { return Ok(()) };
    match a.call(ask, Some(WEDGED)).await {
        Ok(ractor::rpc::CallResult::Success(_)) => Ok(()),
        _ => Err(format!("{what} did not answer in {} s", WEDGED.as_secs())),
    }
}

/// Starts one facility per name on loopback QUIC, each pinning all the
/// others, each with its store under `dir/<name>`. For the demo and tests.
pub async fn start_loopback_cluster(
    dir: &std::path::Path,
    names: &[&str],
    supervision: SupervisionConfig,
    raft: Option<RaftConfig>,
    clock: Arc<dyn Clock>,
) -> Result<Vec<Facility>, Box<dyn std::error::Error + Send + Sync>> {
    start_loopback_cluster_with(dir, names, supervision, raft, clock, &Vec::new).await
}

/// [`start_loopback_cluster`] with `extra()` actors added to each
/// facility (e.g. [`api_flow_children`] for facilities that serve the API).
pub async fn start_loopback_cluster_with(
    dir: &std::path::Path,
    names: &[&str],
    supervision: SupervisionConfig,
    raft: Option<RaftConfig>,
    clock: Arc<dyn Clock>,
    extra: &dyn Fn() -> Vec<(Zone, ChildDef)>,
) -> Result<Vec<Facility>, Box<dyn std::error::Error + Send + Sync>> {
    let ids: Vec<bulwark_transport::FacilityId> =
        names.iter().map(|n| n.parse()).collect::<Result<_, _>>()?;
    let identities: Vec<Identity> = ids
        .iter()
        .map(|id| Identity::generate(id.clone()))
        .collect::<Result<_, _>>()?;
    let secrets: Vec<_> = ids.iter().map(|_| keys::generate_secret()).collect();
    let public = PublicKeys::new(
        ids.iter()
            .cloned()
            .zip(secrets.iter().map(|s| s.verifying_key())),
    );
    let sockets = (0..names.len())
        .map(|_| bulwark_transport::quic::loopback_socket())
        .collect::<Result<Vec<_>, _>>()?;
    let addrs = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let peers = (0..names.len())
            .filter(|&j| j != i)
            .map(|j| PeerSpec {
                id: ids[j].clone(),
                addr: addrs[j],
                pin: identities[j].pin(),
                pin_next: None,
                host: None,
            })
            .collect();
        let spec = FacilitySpec {
            identity: identities[i].clone(),
            data_dir: dir.join(ids[i].as_str()),
            listen: addrs[i],
            socket: Some(socket),
            peers,
            supervision: supervision.clone(),
            extra: extra(),
            raft: None,
            bft: None,
            detection: None,
            cluster: None,
            protocol_max: None,
        };
        let ring = Keyring::new(ids[i].clone(), secrets[i].clone(), public.clone())?;
        let spec = with_consensus(spec, ids.clone(), ring, raft.clone());
        out.push(start(spec, clock.clone()).await?);
    }
    Ok(out)
}

/// Adds consensus to `spec`: a RaftPeer with `raft` settings (none: no
/// consensus) and a BftValidator beside it, both signing with `ring`, and
/// the detection zone and the healer on their embedded defaults.
pub fn with_consensus(
    mut spec: FacilitySpec,
    members: Vec<bulwark_transport::FacilityId>,
    ring: Keyring,
    raft: Option<RaftConfig>,
) -> FacilitySpec {
    if let Some(config) = raft {
        spec.raft = Some(RaftSetup {
            config,
            ..RaftSetup::new(members, ring.clone())
        });
        let config = BftConfig::default();
        spec.bft = Some(BftSetup {
            keyring: ring,
            feed: AppliedFeed::new(config.feed_len_max),
            config,
            behaviour: Default::default(),
            breakers: None,
        });
        spec.detection = Some(DetectionSpec::default());
    }
    spec
}

impl Facility {
    /// Waits until every link of this facility is up (hello received), or
    /// `timeout` passes; returns whether all came up.
    pub async fn wait_links_up(&self, timeout: std::time::Duration) -> bool {
        use bulwark_transport::{LinkStatus, Transport};
        let all = async {
            for peer in self.transport.peers() {
                if !self.transport.wait_link(&peer, LinkStatus::Up).await {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, all).await.unwrap_or(false)
    }
}

impl Facility {
    /// This facility's RaftPeer, if it runs.
    pub fn raft(&self) -> Option<ractor::ActorRef<RaftMsg>> {
        raft_peer(&self.node)
    }

    /// A planned stop's first step: if this facility leads, it hands
    /// leadership to the most caught-up voter and waits, at most `within`,
    /// until it no longer leads. Returns the facility asked to take over.
    pub async fn hand_over(&self, within: std::time::Duration) -> Option<FacilityId> {
        let peer = self.raft()?;
        let to = peer
            .call(RaftMsg::StepDown, Some(std::time::Duration::from_secs(1)))
            .await
            .ok()?
            .success_or(())
            .ok()??;
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            match self.raft_status(std::time::Duration::from_secs(1)).await {
                Some(s) if s.is_leader => {}
                _ => break,
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Some(to)
    }

    /// The RaftPeer's view, or `None` if it does not answer in `timeout`.
    pub async fn raft_status(&self, timeout: std::time::Duration) -> Option<RaftStatus> {
        let peer = self.raft()?;
        peer.call(RaftMsg::Status, Some(timeout))
            .await
            .ok()?
            .success_or(())
            .ok()
    }

    /// This facility's BftValidator, if it runs.
    pub fn validator(&self) -> Option<ractor::ActorRef<BftMsg>> {
        bft::validator(&self.node)
    }

    /// The validator's view, if it answers.
    pub async fn bft_status(&self) -> Option<BftStatus> {
        bft::status(&self.validator()?).await
    }

    /// Waits until the ledger entry at `height` is final here; `None` if the
    /// validator does not answer within `timeout`.
    pub async fn await_final(
        &self,
        height: u64,
        timeout: std::time::Duration,
    ) -> Option<bft::FinalNotice> {
        let v = self.validator()?;
        v.call(|reply| BftMsg::AwaitFinal { height, reply }, Some(timeout))
            .await
            .ok()?
            .success_or(())
            .ok()
    }

    /// Proposes `command` here (a follower forwards it to the leader) and
    /// waits for its outcome; `None` if the RaftPeer does not answer.
    pub async fn propose(
        &self,
        command: Command,
        timeout: std::time::Duration,
    ) -> Option<ProposeOutcome> {
        let peer = self.raft()?;
        let deadline = Some(tokio::time::Instant::now() + timeout);
        peer.call(
            |reply| RaftMsg::Propose {
                command,
                deadline,
                reply,
            },
            Some(timeout),
        )
        .await
        .ok()?
        .success_or(())
        .ok()
    }
}

/// Polls every facility until one leads in a term above `after_term`;
/// returns its position and term, or `None` after `timeout`.
pub async fn wait_leader(
    fs: &[Facility],
    after_term: u64,
    timeout: std::time::Duration,
) -> Option<(usize, u64)> {
    // A status call is one local actor message: polling often is cheap, and
    // keeps the failover benchmark's resolution at a few ms.
    let poll = std::time::Duration::from_millis(2);
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        for (i, f) in fs.iter().enumerate() {
            if let Some(s) = f.raft_status(std::time::Duration::from_secs(1)).await {
                if s.is_leader && s.term > after_term {
                    return Some((i, s.term));
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
    None
}

impl Facility {
    /// Stops the facility as a crash would: the tree stops, the endpoint
    /// closes, nothing is flushed beyond what was already durable.
    pub async fn stop(self) -> FacilitySpec {
        self.transport.close();
        self.node.stop().await;
        self.spec
    }
}

/// Starts a facility again from `spec` (its data dir and listen address),
/// retrying the bind while the old endpoint lets go of the port (bounded).
pub async fn restart(spec: FacilitySpec, clock: Arc<dyn Clock>) -> Result<Facility, FacilityError> {
    let mut attempt = 0;
    loop {
        match start(spec.relaunch(), clock.clone()).await {
            Err(FacilityError::Quic(e)) if attempt < 50 => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "rebinding");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}
