//! Harness: N facilities in one process, over SimNet, on virtual time.
//!
//! Run it inside `#[tokio::test(flavor = "current_thread", start_paused =
//! true)]`: every actor then runs on the test's thread, tokio's clock only
//! moves when every task waits, and SimNet draws all chance from the seed,
//! so one seed replays one run. The seed is printed first (`SEED=`), so a
//! failing run can be replayed.
//!
//! Metrics: the harness installs a debugging recorder as the thread's
//! default, so each facility's counters can be read (they carry a
//! `facility` label). That is why it needs the current-thread runtime.

use crate::disk::{Crash, SimDisk};
use crate::node::{ChildDef, Node, NodeConfig, NodeError};
use crate::router::{Router, RouterConfig};
use crate::supervision::{SupervisionConfig, Zone};
use crate::VirtualClock;
use bulwark_transport::simnet::{SimNet, TraceEvent};
use bulwark_transport::{FacilityId, FaultPlanError, RuleId};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Inbound queue length of each harness facility.
pub const HARNESS_INBOUND_LEN_MAX: usize = 4_096;

/// Names the first facilities readably; past these, `f<i>`.
const NAMES: [&str; 7] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
];

/// Extra actors for facility `i`.
pub type ExtraChildren = Arc<dyn Fn(usize) -> Vec<(Zone, ChildDef)> + Send + Sync>;

struct Slot {
    dir: PathBuf,
    clock: VirtualClock,
    node: Option<Node>,
    /// The facility's disk, with power loss on.
    disk: Option<SimDisk>,
}

/// Builds a [`Harness`] with options.
pub struct HarnessBuilder {
    n: usize,
    seed: u64,
    supervision: SupervisionConfig,
    extra: ExtraChildren,
    power_loss: bool,
}

impl HarnessBuilder {
    /// Sets every facility's supervision config.
    pub fn supervision(mut self, s: SupervisionConfig) -> Self {
        self.supervision = s;
        self
    }

    /// Adds actors to each facility's tree (called again on every restart).
    pub fn children(
        mut self,
        f: impl Fn(usize) -> Vec<(Zone, ChildDef)> + Send + Sync + 'static,
    ) -> Self {
        self.extra = Arc::new(f);
        self
    }

    /// Runs every store on a [`SimDisk`]: a crash then loses what was not
    /// synced (a power loss) or keeps it (a process kill), drawn from the
    /// seed at each crash. Off: a crash closes the store's file, and a
    /// restart opens it with everything written.
    pub fn power_loss(mut self, on: bool) -> Self {
        self.power_loss = on;
        self
    }

    /// Starts every facility.
    pub async fn start(self) -> Result<Harness, NodeError> {
        eprintln!("SEED={} facilities={}", self.seed, self.n);
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        let guard = metrics::set_default_local_recorder(recorder);
        let tmp = tempfile::tempdir().map_err(|e| NodeError::Config(format!("tempdir: {e}")))?;
        let ids: Vec<FacilityId> = (0..self.n).map(facility_name).collect();
        let slots = ids
            .iter()
            .map(|id| Slot {
                dir: tmp.path().join(id.as_str()),
                clock: VirtualClock::new(),
                node: None,
                disk: self.power_loss.then(SimDisk::new),
            })
            .collect();
        let mut h = Harness {
            seed: self.seed,
            net: SimNet::new(self.seed),
            ids,
            slots,
            supervision: self.supervision,
            extra: self.extra,
            recorder,
            counters: Default::default(),
            crash_rng: ChaCha8Rng::seed_from_u64(self.seed ^ 0x0d15_c0de),
            power_losses: 0,
            _guard: guard,
            _tmp: tmp,
        };
        for i in 0..self.n {
            h.start_facility(i).await?;
        }
        Ok(h)
    }
}

fn facility_name(i: usize) -> FacilityId {
    let name = NAMES
        .get(i)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("f{i}"));
    name.parse().expect("harness names are valid ids")
}

/// N facilities in one process. See the module docs.
pub struct Harness {
    seed: u64,
    net: SimNet,
    ids: Vec<FacilityId>,
    slots: Vec<Slot>,
    supervision: SupervisionConfig,
    extra: ExtraChildren,
    recorder: &'static DebuggingRecorder,
    /// Counter totals so far: the recorder's snapshots drain counters, so
    /// every snapshot is folded in here.
    counters: std::sync::Mutex<std::collections::HashMap<metrics_util::CompositeKey, u64>>,
    /// Draws each crash's kind, with power loss on.
    crash_rng: ChaCha8Rng,
    power_losses: u64,
    _guard: metrics::LocalRecorderGuard<'static>,
    _tmp: tempfile::TempDir,
}

impl Harness {
    /// `n` facilities with default settings, all chance drawn from `seed`.
    pub async fn new(n: usize, seed: u64) -> Result<Harness, NodeError> {
        Self::builder(n, seed).start().await
    }

    /// A builder for other settings.
    pub fn builder(n: usize, seed: u64) -> HarnessBuilder {
        HarnessBuilder {
            n,
            seed,
            supervision: SupervisionConfig::default(),
            extra: Arc::new(|_| Vec::new()),
            power_loss: false,
        }
    }

    /// The seed this run replays from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Facility `i`'s id.
    pub fn id(&self, i: usize) -> FacilityId {
        self.ids[i].clone()
    }

    /// Every facility id.
    pub fn ids(&self) -> &[FacilityId] {
        &self.ids
    }

    /// The simulated network.
    pub fn net(&self) -> &SimNet {
        &self.net
    }

    /// Facility `i`'s node. Panics if it is crashed.
    pub fn node(&self, i: usize) -> &Node {
        self.slots[i].node.as_ref().expect("facility is crashed")
    }

    /// Facility `i`'s router. Panics if it is crashed.
    pub fn router(&self, i: usize) -> &Router {
        self.node(i).router()
    }

    /// Facility `i`'s virtual clock (for skew).
    pub fn clock(&self, i: usize) -> &VirtualClock {
        &self.slots[i].clock
    }

    /// True if facility `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].node.as_ref().is_some_and(|n| n.is_running())
    }

    /// Lets virtual time pass: every timer due in `d` fires, in order.
    pub async fn step(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// Cuts every link between the two groups of facilities.
    pub fn partition(&self, side_a: &[usize], side_b: &[usize]) -> Result<RuleId, FaultPlanError> {
        let a = side_a.iter().map(|&i| self.id(i));
        let b = side_b.iter().map(|&i| self.id(i));
        self.net.faults().partition(a, b)
    }

    /// Removes every fault rule.
    pub fn heal(&self) {
        self.net.faults().clear();
    }

    /// Waits up to `timeout` for facility `i`'s root supervisor to stop by
    /// itself (an escalation past the root's intensity).
    pub async fn wait_root_stopped(&mut self, i: usize, timeout: Duration) -> bool {
        match self.slots[i].node.as_mut() {
            Some(node) => node.wait_stopped(timeout).await,
            None => true,
        }
    }

    /// Kills one actor (`zone/name`) on facility `i`; its supervisor decides.
    /// Returns false if no such actor runs.
    pub fn kill_actor(&self, i: usize, zone: Zone, name: &str) -> bool {
        self.node(i).ctx().kill_actor(zone, name)
    }

    /// Crashes facility `i`: its tree stops and in-flight traffic to it is
    /// lost. With power loss on, its disk keeps what the drawn crash keeps
    /// (taken before the tree stops: nothing it writes while stopping
    /// lands).
    pub async fn crash(&mut self, i: usize) {
        self.net.leave(&self.ids[i]);
        let Some(node) = self.slots[i].node.take() else {
            return;
        };
        if let Some(disk) = &self.slots[i].disk {
            let kind = if self.crash_rng.random_bool(0.5) {
                self.power_losses += 1;
                Crash::PowerLoss
            } else {
                Crash::ProcessKill
            };
            self.slots[i].disk = Some(disk.crash(kind));
        }
        node.stop().await;
    }

    /// Facility `i`'s disk, when power loss is on.
    pub fn disk(&self, i: usize) -> Option<SimDisk> {
        self.slots[i].disk.clone()
    }

    /// Crashes that lost what was not synced, so far.
    pub fn power_losses(&self) -> u64 {
        self.power_losses
    }

    /// Restarts a crashed facility from its redb file.
    pub async fn restart(&mut self, i: usize) -> Result<(), NodeError> {
        assert!(
            self.slots[i].node.is_none(),
            "restart of a running facility"
        );
        self.start_facility(i).await
    }

    async fn start_facility(&mut self, i: usize) -> Result<(), NodeError> {
        let id = self.ids[i].clone();
        let (transport, inbound) = self.net.join(id.clone(), HARNESS_INBOUND_LEN_MAX);
        let config = NodeConfig {
            facility: id,
            data_dir: self.slots[i].dir.clone(),
            supervision: self.supervision.clone(),
            router: RouterConfig::default(),
            cluster: None,
        };
        let clock = Arc::new(self.slots[i].clock.clone());
        let extra = (self.extra)(i);
        let node = match &self.slots[i].disk {
            Some(disk) => {
                Node::start_on(
                    config,
                    Arc::new(transport),
                    inbound,
                    clock,
                    extra,
                    disk.clone(),
                )
                .await?
            }
            None => Node::start(config, Arc::new(transport), inbound, clock, extra).await?,
        };
        self.slots[i].node = Some(node);
        Ok(())
    }

    /// The SimNet trace so far.
    pub fn trace(&self) -> Vec<TraceEvent> {
        self.net.trace()
    }

    /// Sum of counter `name` on facility `i` over every series whose labels
    /// include all of `labels`.
    pub fn counter(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> u64 {
        let facility = self.ids[i].as_str();
        let mut counters = self.counters.lock().expect("counter lock");
        for (key, _, _, value) in self.recorder.snapshotter().snapshot().into_vec() {
            if let DebugValue::Counter(c) = value {
                *counters.entry(key).or_insert(0) += c;
            }
        }
        let mut total = 0;
        for (key, value) in counters.iter() {
            let key = key.key();
            let has = |k: &str, v: &str| key.labels().any(|l| l.key() == k && l.value() == v);
            if key.name() == name
                && has("facility", facility)
                && labels.iter().all(|(k, v)| has(k, v))
            {
                total += value;
            }
        }
        total
    }

    /// Stops every facility.
    pub async fn shutdown(mut self) {
        for i in 0..self.slots.len() {
            if let Some(node) = self.slots[i].node.take() {
                node.stop().await;
            }
        }
    }
}
