//! [`SimCluster`]: N whole facilities in one process on the runtime's
//! [`Harness`] (SimNet, virtual clocks), each running what `bulwark node`
//! runs (the same assembly from [`crate::facility`]), with its HTTP API
//! served in-process.
//!
//! Every facility runs the RaftPeer, the BftValidator (with a
//! [`Behaviour`] per facility, so one can lie), the failure detector, the
//! CapGate, the Healer, the breaker mesh, the BackpressureController and
//! the API's BulkheadPool, under the same supervision tree as a node. Its
//! API is an [`ApiState`] with the schedule [`crate::http::api::Service`],
//! served by [`http::app`] through `tower::ServiceExt::oneshot`: no
//! sockets, so it runs under paused time, and a request passes admission,
//! the bulkheads and the handlers exactly as over TCP.
//!
//! A crashed facility answers as an unreachable server would: a client
//! gets no answer from the facility at all. [`SimApi::try_call`] says so
//! with [`Unreachable`]; [`SimApi::call`] turns it into a `503` whose JSON
//! code is `UNREACHABLE` (no facility ever answers that code) and whose
//! `bulwark-sim` header is `unreachable`. A request in flight when its
//! facility crashes ends the same way (a reset connection), whatever the
//! facility did with it.
//!
//! Chance: everything is drawn from `SimOptions::seed` (SimNet's RNG, the
//! keys, each facility's fixed election timeout). Run it on a
//! current-thread tokio runtime with paused time, and one seed replays
//! one run. Shutdown: [`SimCluster::shutdown`] stops every facility.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use bulwark_actors::bft::{AppliedFeed, Behaviour, BftConfig, BftSetup};
use bulwark_actors::detect::Detection;
use bulwark_actors::flow::bulkhead::Pools;
use bulwark_actors::keys::{Keyring, PublicKeys};
use bulwark_actors::raft::{raft_peer, AppliedEntry, RaftConfig, RaftMsg, RaftSetup, RaftStatus};
use bulwark_actors::replica::{Checkpoint, CheckpointSink};
use bulwark_runtime::{Harness, NodeError, SupervisionConfig, Zone};
use bulwark_transport::FacilityId;
use ed25519_dalek::VerifyingKey;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tower::ServiceExt;

use super::check::RaftObserver;
use crate::facility::{self, ApiSpec, DetectionSpec};
use crate::http::error::ApiError;
use crate::http::{self, ApiState};

/// The bearer token of [`SimOptions::new`].
pub const SIM_TOKEN: &str = "bulwark-simulation-token";

/// Longest a status call to one facility's actor waits (virtual time).
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Scheduler yields a crash waits, at most, for its requests in flight
/// to let go of the facility's store (they were woken: one is enough).
const INFLIGHT_DRAIN_YIELDS_MAX: usize = 64;

/// The header that marks the simulation's own answers (`unreachable`).
pub const SIM_HEADER: &str = "bulwark-sim";

/// Most facilities a simulation runs (ids `alpha`..`golf`).
pub const FACILITIES_MAX: usize = 7;

/// Names of the facilities, as the harness gives them.
const NAMES: [&str; FACILITIES_MAX] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
];

/// Builds facility `i`'s bulkhead pools.
pub type PoolsFn = Arc<dyn Fn(usize) -> Pools + Send + Sync>;

/// How to build a [`SimCluster`].
#[derive(Clone)]
pub struct SimOptions {
    /// Facilities, 1 to [`FACILITIES_MAX`].
    pub n: usize,
    /// Every chance of the run is drawn from it.
    pub seed: u64,
    /// Validators that lie, by facility position; the rest are honest.
    pub behaviours: Vec<(usize, Behaviour)>,
    /// Requests each facility's API serves at once ([`http::api_pools`]).
    pub api_concurrency: u32,
    /// Overrides the API pools of facility `i` (`None`: `api_pools`).
    pub pools: Option<PoolsFn>,
    /// The bearer token writes need.
    pub token: String,
    /// Each facility's Raft settings; `None`: [`raft_configs`] of the seed.
    pub raft: Option<Vec<RaftConfig>>,
    /// The validators' settings.
    pub bft: BftConfig,
    /// The detection zone's settings.
    pub detection: DetectionSpec,
    /// Strategies and restart intensities.
    pub supervision: SupervisionConfig,
    /// Run each facility's health checks ([`http::run_checks`], every
    /// second), as `bulwark node` does.
    pub health_checks: bool,
    /// Serve `/v1/admin/chaos` on every facility (`[chaos] enabled`).
    pub chaos: bool,
    /// Stores on [`bulwark_runtime::disk::SimDisk`]s: a crash loses what
    /// was not synced (a power loss) or keeps it (a process kill), drawn
    /// per crash.
    pub power_loss: bool,
}

impl SimOptions {
    /// `n` facilities from `seed`, all honest, the node's defaults, API
    /// concurrency 64 and the token [`SIM_TOKEN`].
    pub fn new(n: usize, seed: u64) -> SimOptions {
        SimOptions {
            n,
            seed,
            behaviours: Vec::new(),
            api_concurrency: 64,
            pools: None,
            token: SIM_TOKEN.to_string(),
            raft: None,
            bft: BftConfig::default(),
            detection: DetectionSpec::default(),
            supervision: SupervisionConfig::default(),
            health_checks: true,
            chaos: false,
            power_loss: false,
        }
    }

    /// Checks the options.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Options(m));
        if !(1..=FACILITIES_MAX).contains(&self.n) {
            return bad(format!("n must be 1 to {FACILITIES_MAX}"));
        }
        if let Some(&(i, _)) = self.behaviours.iter().find(|(i, _)| *i >= self.n) {
            return bad(format!("behaviour for facility {i} of {}", self.n));
        }
        if self.raft.as_ref().is_some_and(|r| r.len() != self.n) {
            return bad("one Raft config per facility".into());
        }
        for r in self.raft.iter().flatten() {
            r.validate().map_err(SimError::Options)?;
        }
        self.bft.validate().map_err(SimError::Options)?;
        self.detection
            .detect
            .validate()
            .map_err(SimError::Options)?;
        if self.api_concurrency == 0 || self.token.len() < 16 {
            return bad("api_concurrency > 0 and a token of 16+ characters".into());
        }
        Ok(())
    }

    fn behaviour(&self, i: usize) -> Behaviour {
        self.behaviours
            .iter()
            .rev()
            .find(|(j, _)| *j == i)
            .map_or(Behaviour::Honest, |(_, b)| *b)
    }
}

/// Applied entries between snapshots in the simulation's default Raft
/// settings.
pub const SNAPSHOT_EVERY: u64 = 64;

/// Each facility's Raft settings for `seed`: the node's defaults, with a
/// fixed campaign timeout per facility (`max = min + 1`, so raft-rs's
/// `thread_rng` draw has one value), the facilities' timeouts two ticks
/// apart in a seeded order (equal ones would split the vote the same way
/// every round), and snapshots every 64 entries so compaction runs.
pub fn raft_configs(n: usize, seed: u64) -> Vec<RaftConfig> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_e1ec);
    let mut mins: Vec<usize> = (0..n).map(|k| 10 + 2 * k).collect();
    mins.shuffle(&mut rng);
    mins.into_iter()
        .map(|min| RaftConfig {
            election_ticks: 10,
            election_ticks_min: min,
            election_ticks_max: min + 1,
            snapshot_every_entries: SNAPSHOT_EVERY,
            ..RaftConfig::default()
        })
        .collect()
}

/// Why the simulation could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The options are inconsistent.
    #[error("invalid simulation options: {0}")]
    Options(String),
    /// A facility's node did not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The facility is crashed.
    #[error("facility {0} is down")]
    Down(usize),
    /// The facility is already running.
    #[error("facility {0} is running")]
    Running(usize),
}

/// A facility that did not answer: it is down, or went down while the
/// request was in flight (a reset connection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("facility {facility} is unreachable ({why})")]
pub struct Unreachable {
    /// The facility.
    pub facility: FacilityId,
    /// `down` or `reset`.
    pub why: &'static str,
}

impl IntoResponse for Unreachable {
    fn into_response(self) -> axum::response::Response {
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNREACHABLE",
            self.to_string(),
        )
        .into_response();
        r.headers_mut().insert(
            SIM_HEADER,
            axum::http::HeaderValue::from_static("unreachable"),
        );
        r
    }
}

/// One facility's API as clients reach it.
struct Endpoint {
    /// The router serving its API; `None` while it is down.
    app: Option<axum::Router>,
    /// Its state (health, SLOs, service).
    state: Option<ApiState>,
    /// Bumped at every crash: requests in flight end unanswered.
    epoch: watch::Sender<u64>,
    /// Its health-check task.
    checks: Option<tokio::task::JoinHandle<()>>,
    /// Held by every request in flight (they hold the facility's store).
    inflight: Arc<()>,
}

/// The facilities' APIs, as clients see them. Cheap to clone, `'static`:
/// hand it to client tasks that race the faults.
#[derive(Clone)]
pub struct SimApi {
    ids: Arc<[FacilityId]>,
    endpoints: Arc<Mutex<Vec<Endpoint>>>,
}

impl SimApi {
    /// Sends `req` to facility `i`'s whole API (admission, bulkheads,
    /// handlers) and waits for its answer. A down facility, or one that
    /// goes down meanwhile, answers like an unreachable server: see the
    /// module docs.
    pub async fn call(&self, i: usize, req: Request<Body>) -> Response<Body> {
        match self.try_call(i, req).await {
            Ok(r) => r,
            Err(u) => u.into_response(),
        }
    }

    /// Like [`SimApi::call`], with an unreachable facility as an `Err`.
    pub async fn try_call(
        &self,
        i: usize,
        req: Request<Body>,
    ) -> Result<Response<Body>, Unreachable> {
        let unreachable = |why| Unreachable {
            facility: self.ids[i].clone(),
            why,
        };
        let (app, mut epoch, _inflight) = {
            let eps = self.endpoints.lock().expect("endpoints lock");
            let ep = &eps[i];
            match &ep.app {
                Some(app) => (app.clone(), ep.epoch.subscribe(), ep.inflight.clone()),
                None => return Err(unreachable("down")),
            }
        };
        tokio::select! {
            biased;
            _ = epoch.changed() => Err(unreachable("reset")),
            r = app.oneshot(req) => match r {
                Ok(r) => Ok(r),
                Err(never) => match never {},
            },
        }
    }

    /// Facility `i`'s API state, while it runs (health, SLOs).
    pub fn state(&self, i: usize) -> Option<ApiState> {
        self.endpoints.lock().expect("endpoints lock")[i]
            .state
            .clone()
    }

    /// The facilities.
    pub fn ids(&self) -> &[FacilityId] {
        &self.ids
    }
}

/// Per facility, the detection handle of its current incarnation (the
/// children closure makes a new one at every start).
type Detections = Arc<Mutex<Vec<Option<Detection>>>>;

/// Salt of the seed each facility's next vote key derives from.
const NEXT_KEY_SALT: u64 = 0x6e65_7874_6b65_7921;

/// N facilities in one process. See the module docs.
pub struct SimCluster {
    harness: Harness,
    opts: SimOptions,
    api: SimApi,
    keys: PublicKeys,
    detections: Detections,
    observer: Arc<Mutex<RaftObserver>>,
}

impl SimCluster {
    /// Starts every facility and its API.
    pub async fn start(opts: SimOptions) -> Result<SimCluster, SimError> {
        opts.validate()?;
        let ids: Vec<FacilityId> = NAMES[..opts.n]
            .iter()
            .map(|s| s.parse().expect("simulation names are valid ids"))
            .collect();
        // Each facility also holds the key it may rotate to (the workload
        // draws rotations between the two).
        let rings: BTreeMap<FacilityId, Keyring> = Keyring::deterministic(&ids, opts.seed)
            .into_iter()
            .map(|(f, r)| {
                let next = Keyring::deterministic_secret(&f, opts.seed ^ NEXT_KEY_SALT);
                (f, r.and_next(next))
            })
            .collect();
        let keys = rings[&ids[0]].public().clone();
        let observer = Arc::new(Mutex::new(RaftObserver::default()));
        observer.lock().expect("observer lock").set_genesis(&keys);
        let detections: Detections = Arc::new(Mutex::new(vec![None; opts.n]));
        let children = children_fn(&opts, &ids, &rings, &observer, &detections);
        let harness = Harness::builder(opts.n, opts.seed)
            .supervision(opts.supervision.clone())
            .power_loss(opts.power_loss)
            .children(children)
            .start()
            .await?;
        assert_eq!(
            harness.ids(),
            &ids[..],
            "the harness names facilities alike"
        );
        {
            let liars = opts
                .behaviours
                .iter()
                .filter(|(_, b)| *b != Behaviour::Honest);
            let mut obs = observer.lock().expect("observer lock");
            obs.set_liars(liars.map(|(i, _)| ids[*i].clone()));
            for (i, f) in ids.iter().enumerate() {
                obs.on_clock(f, harness.clock(i).clone());
            }
        }
        let tap_observer = observer.clone();
        harness
            .net()
            .set_tap(Arc::new(move |from, _to, _class, payload| {
                tap_observer
                    .lock()
                    .expect("observer lock")
                    .on_wire(from, payload)
            }));
        let endpoints = ids
            .iter()
            .map(|_| Endpoint {
                app: None,
                state: None,
                epoch: watch::channel(0).0,
                checks: None,
                inflight: Arc::new(()),
            })
            .collect();
        let mut c = SimCluster {
            harness,
            opts,
            api: SimApi {
                ids: ids.into(),
                endpoints: Arc::new(Mutex::new(endpoints)),
            },
            keys,
            detections,
            observer,
        };
        for i in 0..c.opts.n {
            c.open_api(i);
        }
        Ok(c)
    }

    /// Serves facility `i`'s API from its running node.
    fn open_api(&mut self, i: usize) {
        let node = self.harness.node(i);
        {
            let mut observer = self.observer.lock().expect("observer lock");
            observer.on_store(&self.api.ids[i], node.ctx().store.clone());
            if let Some(disk) = self.harness.disk(i) {
                observer.on_disk(&self.api.ids[i], disk);
            }
        }
        let running = Arc::new(AtomicBool::new(true));
        let detection = self.detections.lock().expect("detections lock")[i].clone();
        let state = facility::api_state(
            node,
            ApiSpec {
                members: self.api.ids.to_vec(),
                keys: self.keys.clone(),
                detection,
                audit: None,
                tokens: Arc::new(
                    crate::http::auth::Tokens::new(Some(&self.opts.token), &[])
                        .expect("a validated token"),
                ),
                backup: None,
                prometheus: metrics_exporter_prometheus::PrometheusBuilder::new()
                    .build_recorder()
                    .handle(),
                running,
            },
        );
        let state = if self.opts.chaos {
            state.with_chaos(http::chaos::ChaosControl::new())
        } else {
            state
        };
        let checks = self.opts.health_checks.then(|| {
            let ctx = node.ctx().clone();
            tokio::spawn(http::run_checks(
                state.clone(),
                Duration::from_secs(1),
                move || facility::probe(ctx.clone()),
            ))
        });
        let mut eps = self.api.endpoints.lock().expect("endpoints lock");
        eps[i].app = Some(http::app(state.clone()));
        eps[i].state = Some(state);
        eps[i].checks = checks;
    }

    /// The harness underneath (SimNet, clocks, nodes).
    pub fn harness(&self) -> &Harness {
        &self.harness
    }

    /// The harness, to change it.
    pub fn harness_mut(&mut self) -> &mut Harness {
        &mut self.harness
    }

    /// The facilities, by position.
    pub fn ids(&self) -> &[FacilityId] {
        self.api.ids()
    }

    /// How many facilities.
    pub fn n(&self) -> usize {
        self.opts.n
    }

    /// The options it was started with.
    pub fn options(&self) -> &SimOptions {
        &self.opts
    }

    /// Every facility's vote key in the genesis set.
    pub fn keys(&self) -> &PublicKeys {
        &self.keys
    }

    /// Each facility's two vote keys (genesis, next): what a rotation
    /// moves between.
    pub fn rotation_keys(&self) -> Vec<(FacilityId, [VerifyingKey; 2])> {
        self.keys
            .facilities()
            .map(|f| {
                let next = Keyring::deterministic_secret(f, self.opts.seed ^ NEXT_KEY_SALT);
                (
                    f.clone(),
                    [*self.keys.get(f).expect("listed"), next.verifying_key()],
                )
            })
            .collect()
    }

    /// The bearer token writes need.
    pub fn token(&self) -> &str {
        &self.opts.token
    }

    /// The APIs, for client tasks.
    pub fn api(&self) -> SimApi {
        self.api.clone()
    }

    /// Facility `i`'s whole API; see [`SimApi::call`].
    pub async fn call(&self, i: usize, req: Request<Body>) -> Response<Body> {
        self.api.call(i, req).await
    }

    /// True while facility `i` runs.
    pub fn is_up(&self, i: usize) -> bool {
        self.harness.is_up(i)
    }

    /// Facility `i`'s failure-detection view of its current incarnation.
    pub fn detection(&self, i: usize) -> Option<Detection> {
        if !self.is_up(i) {
            return None;
        }
        self.detections.lock().expect("detections lock")[i].clone()
    }

    /// What the RaftPeers' applied entries and statuses have shown.
    pub fn observer(&self) -> Arc<Mutex<RaftObserver>> {
        self.observer.clone()
    }

    /// Crashes facility `i`: its API stops answering (requests in flight
    /// end unanswered), its tree stops, what is in flight to it is lost.
    /// Nothing happens if it is down already.
    pub async fn crash(&mut self, i: usize) {
        let (checks, inflight) = {
            let mut eps = self.api.endpoints.lock().expect("endpoints lock");
            let ep = &mut eps[i];
            ep.app = None;
            if let Some(s) = ep.state.take() {
                s.running.store(false, Ordering::Relaxed);
            }
            ep.epoch.send_modify(|e| *e += 1);
            (ep.checks.take(), ep.inflight.clone())
        };
        if let Some(task) = checks {
            task.abort();
            let _ = task.await;
        }
        // A node that stopped by itself (its root supervisor gave up) is
        // still in its slot: stop and remove it too, or it could never
        // restart.
        self.harness.crash(i).await;
        self.detections.lock().expect("detections lock")[i] = None;
        // The observer's handle too, so the store can reopen.
        self.observer
            .lock()
            .expect("observer lock")
            .forget_store(&self.api.ids[i]);
        // The requests in flight were woken by the epoch; once they have
        // run, nothing holds the facility's store and it can reopen.
        for _ in 0..INFLIGHT_DRAIN_YIELDS_MAX {
            if Arc::strong_count(&inflight) == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Restarts crashed facility `i` from its redb file, as a new process:
    /// new detection state, an empty validator feed, a new API.
    pub async fn restart(&mut self, i: usize) -> Result<(), SimError> {
        if self.harness.is_up(i) {
            return Err(SimError::Running(i));
        }
        self.observer
            .lock()
            .expect("observer lock")
            .on_node_start(&self.api.ids[i]);
        self.harness.restart(i).await?;
        self.open_api(i);
        Ok(())
    }

    /// Lets `d` of virtual time pass.
    pub async fn step(&self, d: Duration) {
        self.harness.step(d).await;
    }

    /// Facility `i`'s RaftPeer status, if it runs and answers (seen by the
    /// observer: one leader per term).
    pub async fn raft_status(&self, i: usize) -> Option<RaftStatus> {
        if !self.is_up(i) {
            return None;
        }
        let peer = raft_peer(self.harness.node(i))?;
        let s = peer
            .call(RaftMsg::Status, Some(STATUS_TIMEOUT))
            .await
            .ok()?
            .success_or(())
            .ok()?;
        self.observer.lock().expect("observer lock").on_status(&s);
        Some(s)
    }

    /// The facility leading the highest term any running facility reports.
    pub async fn leader(&self) -> Option<usize> {
        let mut best: Option<(usize, u64)> = None;
        for i in 0..self.n() {
            if let Some(s) = self.raft_status(i).await {
                if s.is_leader && best.is_none_or(|(_, t)| s.term > t) {
                    best = Some((i, s.term));
                }
            }
        }
        best.map(|(i, _)| i)
    }

    /// Steps virtual time by `poll` until a leader is seen, for at most
    /// `limit`.
    pub async fn wait_leader(&self, limit: Duration, poll: Duration) -> Option<usize> {
        let rounds = limit.as_millis() / poll.as_millis().max(1);
        for _ in 0..=rounds {
            if let Some(l) = self.leader().await {
                return Some(l);
            }
            self.step(poll).await;
        }
        None
    }

    /// Stops every facility.
    pub async fn shutdown(mut self) {
        for i in 0..self.n() {
            self.crash(i).await;
        }
        self.harness.shutdown().await;
    }
}

/// The actors of facility `i` for each start: the consensus and detection
/// children and the API's flow children, as `bulwark node` builds them.
fn children_fn(
    opts: &SimOptions,
    ids: &[FacilityId],
    rings: &std::collections::BTreeMap<FacilityId, Keyring>,
    observer: &Arc<Mutex<RaftObserver>>,
    detections: &Detections,
) -> impl Fn(usize) -> Vec<(Zone, bulwark_runtime::ChildDef)> + Send + Sync + 'static {
    let opts = opts.clone();
    let ids = ids.to_vec();
    let rings: Vec<Keyring> = ids.iter().map(|f| rings[f].clone()).collect();
    let raft = opts
        .raft
        .clone()
        .unwrap_or_else(|| raft_configs(opts.n, opts.seed));
    let observer = observer.clone();
    let detections = detections.clone();
    move |i| {
        let obs = observer.clone();
        let tap: bulwark_actors::raft::AppliedTap =
            Arc::new(move |f: &FacilityId, e: &AppliedEntry| {
                obs.lock().expect("observer lock").on_applied(f, e)
            });
        let mut setup = RaftSetup {
            config: raft[i].clone(),
            tap: Some(tap),
            store_id_seed: Some(opts.seed),
            ..RaftSetup::new(ids.clone(), rings[i].clone())
        };
        // Each checkpoint is judged from what a backup would copy.
        let (obs, f) = (observer.clone(), ids[i].clone());
        setup.keyring.checkpoints = Some(CheckpointSink(Arc::new(move |cp: Checkpoint| {
            obs.lock()
                .expect("observer lock")
                .on_checkpoint(&f, cp.index, &cp.source)
        })));
        let bft = BftSetup {
            keyring: rings[i].clone(),
            config: opts.bft.clone(),
            behaviour: opts.behaviour(i),
            feed: AppliedFeed::new(opts.bft.feed_len_max),
            breakers: None,
        };
        let parts =
            facility::consensus_children(&ids[i], setup, Some(bft), Some(opts.detection.clone()));
        detections.lock().expect("detections lock")[i] = parts.detection;
        let pools = match &opts.pools {
            Some(f) => f(i),
            None => http::api_pools(opts.api_concurrency),
        };
        let mut children = parts.children;
        children.extend(facility::api_flow_children(pools));
        children
    }
}
