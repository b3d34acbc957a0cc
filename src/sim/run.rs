//! One randomized run of the whole stack: [`run_seed`].
//!
//! One `u64` seed draws the scenario: 3 or 4 facilities, with 4 sometimes
//! one Byzantine validator (a lie drawn from the seed), the clients'
//! requests, the network (the uniform link model or a physics preset), and
//! the faults that race the requests: crashes and restarts, two-way and
//! one-way partitions, loss and delay on the links, clock skew per
//! facility, slow disks and disks that refuse writes, and actors killed
//! under their supervisors ([`faults`]).
//!
//! - Safety phase ([`SimPlan::steps`] steps): each step starts a few client
//!   requests through the facilities' APIs (they run concurrently, across
//!   steps), perhaps injects one fault, lets virtual time pass, then checks
//!   every invariant of [`super::check`] across the facilities, and every
//!   answer the clients got so far.
//! - Liveness phase: every fault is healed and every facility restarted;
//!   the cluster must commit a write, replay every provisional change and
//!   make every ledger entry final within [`SimPlan::converge_ms`]. Then
//!   every acknowledged write must be on every facility, every facility
//!   must hold the same schedule, every honest ledger must be the same
//!   chain and verify from genesis, and no honest facility may be blamed
//!   with a proof of lying ([`end`]).
//!
//! Bounds: [`SimPlan::steps`] steps, at most [`SimPlan::ops_per_step_max`]
//! requests started per step, every wait of the liveness phase within
//! [`SimPlan::converge_ms`] of virtual time, every client request bounded
//! by the API's own time-outs.
//!
//! A run is exact on a current-thread runtime with paused time: the same
//! seed gives the same SimNet trace and the same [`SeedReport`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::http::StatusCode;
use bulwark_actors::bft::{Behaviour, LedgerStore};
use bulwark_actors::flow::actors::{BulkheadMsg, BULKHEADS};
use bulwark_actors::flow::bulkhead::PoolStatus;
use bulwark_actors::ledger::FinalEntry;
use bulwark_actors::raft::{inspect, raft_peer};
use bulwark_actors::replica::ScheduleView;
use bulwark_actors::schedule::ScheduleState;
use bulwark_runtime::Zone;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::check::{
    check_pools, Invariant, LedgerChecker, ReadChecker, RetryChecker, ScheduleChecker, Violation,
};
use super::client;
use super::cluster::{SimCluster, SimOptions, STATUS_TIMEOUT};
use super::model;
use super::workload::{Ack, Op, Shape, Workload, Write};

pub mod end;
pub mod faults;
mod plant;

pub use faults::{
    Network, DISK_LATENCY_MS_MAX, DISK_WRITE_FAILURE_MAX, KILLABLE, KNOWN_BUG_KILLS, SKEW_MS_MAX,
};

/// The lies a Byzantine validator may tell (as in the BFT simulation).
pub const LIES: [Behaviour; 5] = [
    Behaviour::Equivocate,
    Behaviour::ForgeVotes,
    Behaviour::VoteForInvalid,
    Behaviour::ReplayStale,
    Behaviour::Withhold,
];

/// True if seed `seed` runs long (`pct` percent of seeds), from a hash
/// of the seed apart from its random stream.
pub fn is_long(seed: u64, pct: u32) -> bool {
    drawn_apart(b"long", seed, pct)
}

/// Whether the run of `seed` draws validator removals and additions
/// ([`SimPlan::validator_changes_pct`]); apart from its other draws.
pub fn changes_validators(seed: u64, pct: u32) -> bool {
    drawn_apart(b"validators", seed, pct)
}

/// A `pct` chance for `seed`, from its hash under `tag`: it takes no
/// draw from the run's generator.
fn drawn_apart(tag: &[u8], seed: u64, pct: u32) -> bool {
    let h = blake3::hash(&[tag, &seed.to_le_bytes()].concat());
    u32::from(h.as_bytes()[0]) * 100 / 256 < pct
}

/// How big a run is and what it draws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimPlan {
    /// Steps of the safety phase.
    pub steps: usize,
    /// Virtual time per step, drawn from `step_ms.0..=step_ms.1` ms.
    pub step_ms: (u64, u64),
    /// Client requests started per step, drawn from `0..=ops_per_step_max`.
    pub ops_per_step_max: usize,
    /// Chance, in percent, that a step injects a fault.
    pub fault_pct: u32,
    /// Chance, in percent, that a run has 4 facilities (else 3).
    pub four_pct: u32,
    /// Chance, in percent, that a run of 4 has a Byzantine validator.
    pub liar_pct: u32,
    /// Judge `LIAR_NAMED` at the end ([`super::check::check_liar_named`]).
    /// On by default; `BULWARK_SIM_SKIP_LIAR=1` turns it off for `bulwark
    /// sim` and its workers.
    pub judge_liar: bool,
    /// Chance, in percent, that the API pools are lopsided
    /// ([`lopsided_pools`]) instead of the node's split.
    pub lopsided_pools_pct: u32,
    /// Chance, in percent, that the facilities snapshot every 3 to 13
    /// applied entries instead of every 64.
    pub small_snapshot_pct: u32,
    /// Chance, in percent, that the clients write the duty-edge schedule
    /// ([`Shape::DutyEdge`]) instead of the daily one.
    pub duty_edge_pct: u32,
    /// Chance, in percent, that a run is long: [`SimPlan::long_factor`]
    /// times the steps (minutes of virtual time). Drawn from the seed's
    /// own hash, so the other draws of every seed stay as they were.
    pub long_pct: u32,
    /// Chance, in percent, that a run without a liar also draws validator
    /// removals and additions amid its writes (each facility's key set by
    /// an addition is one of its two). Drawn from the seed's own hash, so
    /// the other runs draw as they did before.
    pub validator_changes_pct: u32,
    /// How many times the steps a long run takes.
    pub long_factor: usize,
    /// Requests each facility's API serves at once (small, so that the
    /// bulkhead pools borrow and lend).
    pub api_concurrency: u32,
    /// Longest the liveness phase may take, in virtual ms.
    pub converge_ms: u64,
    /// Also draw the faults that reach a known bug ([`KNOWN_BUG_KILLS`]).
    pub known_bugs: bool,
    /// Test-only: plant a violation at this step, to show the checkers
    /// catch it.
    pub plant: Option<(usize, Plant)>,
}

impl Default for SimPlan {
    /// The plan of `bulwark sim`.
    fn default() -> Self {
        SimPlan {
            steps: 40,
            step_ms: (20, 400),
            ops_per_step_max: 4,
            fault_pct: 35,
            four_pct: 50,
            liar_pct: 60,
            duty_edge_pct: 40,
            long_pct: 2,
            long_factor: 10,
            validator_changes_pct: 30,
            small_snapshot_pct: 30,
            lopsided_pools_pct: 30,
            judge_liar: std::env::var_os("BULWARK_SIM_SKIP_LIAR").is_none(),
            api_concurrency: 10,
            converge_ms: 60_000,
            known_bugs: false,
            plant: None,
        }
    }
}

/// API pools a deployment may configure, lopsided: writes own 3 units
/// and may borrow 4, reads own 4 and keep 3 of them reserved, the
/// operator's 1 is protected, flex has 1. A burst of writes borrows flex
/// and the one unit reads may lend, and no more.
pub fn lopsided_pools() -> bulwark_actors::flow::bulkhead::Pools {
    use bulwark_actors::flow::bulkhead::{PoolSpec, Pools};
    let spec = |capacity, reserved, borrow_limit, protected| PoolSpec {
        capacity,
        reserved,
        borrow_limit,
        protected,
    };
    let specs = std::collections::BTreeMap::from([
        ("writes".to_string(), spec(3, 1, 4, false)),
        ("reads".to_string(), spec(4, 3, 1, false)),
        ("operator".to_string(), spec(1, 1, 0, true)),
    ]);
    Pools::new(specs, 1).expect("a valid split")
}

/// A violation planted in a run (test-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// A second leader reported for a term already led.
    SecondLeader,
    /// A different entry reported applied at a committed index.
    ChangedEntry,
    /// A final entry whose certificate lost its votes.
    WeakCertificate,
    /// A schedule that differs from another at the same index.
    DivergentSchedule,
    /// A pool status that lends its reserve.
    LentReserve,
    /// An acknowledgement for a write the cluster never saw.
    LostWrite,
    /// A linearizable read that misses an acknowledged write.
    StaleRead,
    /// Evidence of a vote for an invalid entry against an honest facility.
    HonestBlamed,
}

/// A fault the run injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A facility crashed.
    Crash,
    /// A crashed facility restarted.
    Restart,
    /// The facilities split in two groups.
    Partition,
    /// One facility's traffic to the rest (or theirs to it) is cut.
    OneWayPartition,
    /// Every fault rule removed.
    Heal,
    /// Latency, jitter and loss changed on every link.
    LinkChange,
    /// Extra delay on one directed link.
    Delay,
    /// Random drops on one directed link.
    Drop,
    /// A facility's clock skewed.
    ClockSkew,
    /// A facility's disk made slow or refusing writes.
    DiskFault,
    /// An actor killed (its supervisor restarts it).
    ActorKill,
    /// An operator's membership change: a facility replaced under its
    /// next Raft incarnation (a learner), or that learner promoted.
    Member,
    /// A facility's root supervisor stopped by itself (its restart
    /// intensity ran out); the run treats it as a crash.
    Escalation,
    /// The run has a Byzantine validator.
    Byzantine,
}

/// What one seed's run did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedReport {
    /// The seed.
    pub seed: u64,
    /// Facilities.
    pub facilities: usize,
    /// The Byzantine validator and its lie, if any.
    pub liar: Option<String>,
    /// The network model.
    pub network: Network,
    /// The clients' schedule.
    pub shape: Shape,
    /// Applied entries between snapshots.
    pub snapshot_every: u64,
    /// Safety steps run.
    pub steps: usize,
    /// Client requests sent (first tries and retries).
    pub ops: u64,
    /// Writes acknowledged as committed (200).
    pub committed: u64,
    /// Writes acknowledged as provisional (202).
    pub provisional: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, u64>,
    /// Virtual time the run took, in ms.
    pub virtual_ms: u64,
    /// The final ledger height.
    pub height: u64,
    /// Snapshots a lagging facility installed from a leader.
    pub snapshot_installs: u64,
    /// Crashes that lost what was not synced.
    #[serde(default)]
    pub power_losses: u64,
    /// Own BFT votes the wire tap saw and checked against their signer's
    /// disk (`VOTE_DURABLE`).
    #[serde(default)]
    pub votes_checked: u64,
    /// Raft vote grants the tap saw and checked against the voter's hard
    /// state (`RAFT_VOTE_DURABLE`).
    #[serde(default)]
    pub grants_checked: u64,
    /// Forwarded proposals whose deadline was checked against their
    /// client's budget (`DEADLINE_SHRINKS`).
    #[serde(default)]
    pub forwards_checked: u64,
    /// Checkpoint backups judged against the reference model
    /// (`CHECKPOINT_STATE`).
    #[serde(default)]
    pub checkpoints_checked: u64,
    /// Validator epochs final in the ledger (key rotations, removals,
    /// additions: the epochs the ledger checker followed by its own account).
    #[serde(default)]
    pub rotations: u64,
    /// Replacements the leader took (a facility's next Raft incarnation
    /// added as a learner; `Member` faults).
    #[serde(default)]
    pub replaced: u64,
    /// Promotions the leader took (that learner made a voter).
    #[serde(default)]
    pub promoted: u64,
    /// SimNet payloads traced.
    pub trace_events: u64,
    /// blake3 of the SimNet trace (equal runs, equal digests), hex.
    pub trace_digest: String,
    /// The clients' answers during the safety phase and the drain after
    /// it, by status and error code (`unreachable`: the facility was
    /// down).
    pub answers: BTreeMap<String, u64>,
}

/// A run that broke an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {}", phase(.step), .violation)]
pub struct SimFailure {
    /// The seed.
    pub seed: u64,
    /// The safety step it was seen at; `None`: set-up or the liveness
    /// phase.
    pub step: Option<usize>,
    /// What broke.
    pub violation: Violation,
    /// The last faults injected before it, oldest first
    /// ([`FAULT_LOG_LEN`] at most), each with its step and virtual time.
    pub recent_faults: Vec<String>,
}

/// Faults a [`SimFailure`] lists.
pub const FAULT_LOG_LEN: usize = 12;

fn phase(step: &Option<usize>) -> String {
    match step {
        Some(s) => format!("step {s}"),
        None => "end".to_string(),
    }
}

/// The counter of RaftPeer cores fenced (then rebuilt from redb in place)
/// after a refused write.
const FENCED: &str = "bulwark_raft_fenced_total";

/// A boxed future borrowing the run.
type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>>;

/// What one client request came back with.
struct Done {
    via: usize,
    op: Op,
    status: StatusCode,
    body: Value,
}

/// One run in progress.
struct Run<'p> {
    seed: u64,
    /// Membership changes the leader took: (replacements, promotions).
    member_changes: (u64, u64),
    plan: &'p SimPlan,
    /// Safety steps of this run (more in a long one).
    steps: usize,
    rng: ChaCha8Rng,
    c: SimCluster,
    honest: Vec<usize>,
    liar: Option<(usize, Behaviour)>,
    network: Network,
    shape: Shape,
    snapshot_every: u64,
    ledger: LedgerChecker,
    schedules: ScheduleChecker,
    reads: ReadChecker,
    retries: RetryChecker,
    work: Workload,
    clients: JoinSet<Done>,
    faults: BTreeMap<FaultKind, u64>,
    /// The last faults injected, for a failure's report.
    log: std::collections::VecDeque<String>,
    /// The clients' answers by status and code.
    answers: BTreeMap<String, u64>,
    /// Details of the fault being injected, for the log.
    last_fault: Option<String>,
    /// Per facility, [`FENCED`] when its node last started.
    fence_base: Vec<u64>,
    /// Evidence planted for the end's blame check (test-only).
    planted_evidence: Vec<bulwark_actors::bft::evidence::Evidence>,
    ops: u64,
    step: Option<usize>,
    start: Instant,
}

/// Runs seed `seed` as `plan` says. `Err` names the first broken
/// invariant and where. Needs a current-thread runtime with paused time.
pub async fn run_seed(seed: u64, plan: &SimPlan) -> Result<SeedReport, SimFailure> {
    let mut run = Run::start(seed, plan).await?;
    let result = run.drive().await;
    let report = run.report();
    run.c.shutdown().await;
    result.map(|()| report)
}

impl<'p> Run<'p> {
    async fn start(seed: u64, plan: &'p SimPlan) -> Result<Run<'p>, SimFailure> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = if rng.random_range(0..100) < plan.four_pct {
            4
        } else {
            3
        };
        let liar = (n == 4 && rng.random_range(0..100) < plan.liar_pct).then(|| {
            (
                rng.random_range(0..n),
                LIES[rng.random_range(0..LIES.len())],
            )
        });
        let network = Network::draw(&mut rng);
        let shape = if rng.random_range(0..100) < plan.duty_edge_pct {
            Shape::DutyEdge
        } else {
            Shape::Daily
        };
        let mut opts = SimOptions::new(n, seed);
        opts.api_concurrency = plan.api_concurrency;
        // Every crash loses what was not synced, or keeps it, as drawn.
        opts.power_loss = true;
        // Small snapshot intervals in a share of seeds: the log compacts
        // often, so lagging facilities install snapshots from the leader
        // and restarts start from snapshots.
        let snapshot_every = (rng.random_range(0..100) < plan.small_snapshot_pct)
            .then(|| [3, 5, 8, 13][rng.random_range(0..4)]);
        // Lopsided API pools in a share of seeds: writes may borrow all
        // they own, reads keep most of theirs reserved, so lending runs
        // into a reserve when it is wrong about one.
        let lopsided = rng.random_range(0..100) < plan.lopsided_pools_pct;
        if lopsided {
            opts.pools = Some(std::sync::Arc::new(|_| lopsided_pools()));
        }
        if let Some(every) = snapshot_every {
            let mut raft = super::cluster::raft_configs(n, seed);
            for r in &mut raft {
                r.snapshot_every_entries = every;
            }
            opts.raft = Some(raft);
        }
        opts.behaviours = liar.into_iter().collect();
        let c = SimCluster::start(opts).await.map_err(|e| SimFailure {
            seed,
            step: None,
            violation: Violation::new(Invariant::Convergence, format!("start: {e}")),
            recent_faults: Vec::new(),
        })?;
        if let Some(spec) = network.spec() {
            c.harness()
                .net()
                .set_default_spec(spec)
                .map_err(|e| SimFailure {
                    seed,
                    step: None,
                    violation: Violation::new(Invariant::Convergence, format!("network: {e}")),
                    recent_faults: Vec::new(),
                })?;
        }
        let ledger = LedgerChecker::new(c.keys().clone());
        let mut faults = BTreeMap::new();
        if liar.is_some() {
            faults.insert(FaultKind::Byzantine, 1);
        }
        let steps = if is_long(seed, plan.long_pct) {
            plan.steps.saturating_mul(plan.long_factor.max(1))
        } else {
            plan.steps
        };
        Ok(Run {
            steps,
            seed,
            plan,
            rng,
            honest: (0..n)
                .filter(|&i| liar.is_none_or(|(l, _)| l != i))
                .collect(),
            liar,
            network,
            ledger,
            schedules: ScheduleChecker::default(),
            reads: ReadChecker::default(),
            retries: RetryChecker::default(),
            // Key rotations where no validator lies (a liar's votes under
            // a changing set are the BFT runs' concern).
            work: Workload::new(seed, shape)
                .rotating(if liar.is_none() {
                    c.rotation_keys()
                        .into_iter()
                        .map(|(f, [a, b])| {
                            (
                                f.to_string(),
                                [
                                    bulwark_actors::keys::format_public(&a),
                                    bulwark_actors::keys::format_public(&b),
                                ],
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                })
                .changing_validators(changes_validators(seed, plan.validator_changes_pct)),
            shape,
            snapshot_every: snapshot_every.unwrap_or(super::cluster::SNAPSHOT_EVERY),
            clients: JoinSet::new(),
            faults,
            log: Default::default(),
            last_fault: None,
            fence_base: vec![0; n],
            planted_evidence: Vec::new(),
            member_changes: (0, 0),
            ops: 0,
            answers: BTreeMap::new(),
            step: None,
            start: Instant::now(),
            c,
        })
    }

    fn fail(&self, v: Violation) -> SimFailure {
        SimFailure {
            seed: self.seed,
            step: self.step,
            violation: v,
            recent_faults: self.log.iter().cloned().collect(),
        }
    }

    fn stuck(&self, what: String) -> SimFailure {
        self.fail(Violation::new(Invariant::Convergence, what))
    }

    async fn drive(&mut self) -> Result<(), SimFailure> {
        self.setup().await?;
        for s in 0..self.steps {
            self.step = Some(s);
            self.safety_step(s).await?;
        }
        self.step = None;
        self.liveness().await
    }

    /// People and blocks, each written until it commits.
    async fn setup(&mut self) -> Result<(), SimFailure> {
        let writes = self.work.setup();
        for w in writes {
            let index = self.write_until_committed(w).await?;
            self.reads.on_ack(index);
        }
        // The duty edge's starting load: assignments the rules allow,
        // each written until decided (a refusal is an answer too: a rule
        // that is wrong shows in the reference model's check).
        for w in self.work.preload() {
            self.write_until_decided(w).await?;
        }
        Ok(())
    }

    /// Sends `w` until it commits or is refused by a rule.
    async fn write_until_decided(&mut self, w: Write) -> Result<(), SimFailure> {
        let decided = |st: StatusCode| st == StatusCode::OK || st == StatusCode::CONFLICT;
        let (st, v) = self.write_until(&w, decided, "was never decided").await?;
        if let Some(Ack::Committed { index, .. }) = self.work.on_write(w, st, &v) {
            self.reads.on_ack(index);
        }
        Ok(())
    }

    /// Sends `w` to the leader (or any facility) until it commits,
    /// stepping 200 ms between tries, at most 150 tries; its log index.
    async fn write_until_committed(&mut self, w: Write) -> Result<u64, SimFailure> {
        let committed = |st: StatusCode| st == StatusCode::OK;
        let (st, v) = self.write_until(&w, committed, "did not commit").await?;
        let index = v["index"].as_u64().unwrap_or(0);
        self.work.on_write(w, st, &v);
        Ok(index)
    }

    /// Sends `w` to the leader (or any facility) until `done` holds for
    /// the answer's status, stepping 200 ms between tries, at most 150
    /// tries; every answer goes to the retry checker. The last answer, or
    /// a failure saying `w` `what`.
    async fn write_until(
        &mut self,
        w: &Write,
        done: impl Fn(StatusCode) -> bool,
        what: &str,
    ) -> Result<(StatusCode, Value), SimFailure> {
        let token = self.c.token().to_string();
        let mut last = String::new();
        // Facilities that answered they are no validator (a leader handing
        // over, or a follower): the next tries go to the others, the
        // leader first (all refused: each again).
        let mut not_validators = BTreeSet::new();
        for attempt in 0..150usize {
            let n = self.c.n();
            if not_validators.len() >= n {
                not_validators.clear();
            }
            let via = match self.c.leader().await {
                Some(l) if !not_validators.contains(&l) => l,
                _ => (0..n)
                    .map(|k| (attempt + k) % n)
                    .find(|i| !not_validators.contains(i))
                    .unwrap_or(attempt % n),
            };
            self.ops += 1;
            self.note_budget(w, via);
            let (st, v) = client::json(self.c.call(via, w.request(&token)).await).await;
            self.note_answered(w);
            let f = self.c.ids()[via].to_string();
            self.retries
                .on_answer(&w.key, &f, st.as_u16(), &v)
                .map_err(|e| self.fail(e))?;
            if done(st) {
                return Ok((st, v));
            }
            if st == StatusCode::SERVICE_UNAVAILABLE
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("holds no vote key"))
            {
                not_validators.insert(via);
            }
            last = format!("{st} {v}");
            self.c.step(Duration::from_millis(200)).await;
        }
        Err(self.stuck(format!("write {} {what}: {last}", w.key)))
    }

    async fn safety_step(&mut self, s: usize) -> Result<(), SimFailure> {
        for _ in 0..self.rng.random_range(0..=self.plan.ops_per_step_max) {
            self.send_op();
        }
        if self.rng.random_range(0..100) < self.plan.fault_pct {
            self.inject().await?;
        }
        let (lo, hi) = self.plan.step_ms;
        let d = self.rng.random_range(lo..=hi);
        self.c.step(Duration::from_millis(d)).await;
        self.notice_escalations().await;
        while let Some(done) = self.clients.try_join_next() {
            let done = done.map_err(|e| self.stuck(format!("a client task failed: {e}")))?;
            self.on_done(done)?;
        }
        if let Some((at, plant)) = self.plan.plant {
            if at == s {
                self.plant(plant).await?;
            }
        }
        self.check_step().await
    }

    /// Tells the checker the budget `w` is sent to `via` with
    /// (`DEADLINE_SHRINKS`).
    fn note_budget(&self, w: &Write, via: usize) {
        if let Some(ms) = w.timeout_ms {
            let key = crate::http::api::command_key(&w.key);
            let f = self.c.ids()[via].clone();
            self.c.observer().lock().expect("observer lock").on_budget(
                key,
                &f,
                Duration::from_millis(ms),
            );
        }
    }

    /// Tells the checker `w`'s attempt was answered.
    fn note_answered(&self, w: &Write) {
        let key = crate::http::api::command_key(&w.key);
        self.c
            .observer()
            .lock()
            .expect("observer lock")
            .on_answered(&key);
    }

    /// Starts one client request on a random facility.
    fn send_op(&mut self) {
        let via = self.rng.random_range(0..self.c.n());
        let op = self
            .work
            .next_op(&mut self.rng, self.reads.floor(), self.ledger.height());
        if let Op::Write(w) = &op {
            self.note_budget(w, via);
        }
        let req = op.request(self.c.token());
        let api = self.c.api();
        self.ops += 1;
        self.clients.spawn(async move {
            let (status, body) = client::json(api.call(via, req).await).await;
            Done {
                via,
                op,
                status,
                body,
            }
        });
    }

    /// Judges one answer.
    fn on_done(&mut self, d: Done) -> Result<(), SimFailure> {
        let unreachable = d.body["code"] == "UNREACHABLE";
        let answer = match (unreachable, d.body["code"].as_str()) {
            (true, _) => "unreachable".to_string(),
            (false, Some(code)) => match d.body["rule"].as_str() {
                Some(rule) => format!("{} {code} {rule}", d.status.as_u16()),
                None => format!("{} {code}", d.status.as_u16()),
            },
            (false, None) => d.status.as_u16().to_string(),
        };
        *self.answers.entry(answer).or_insert(0) += 1;
        if !d.op.documented(d.status) && !unreachable {
            return Err(self.fail(Violation::new(
                Invariant::ApiContract,
                format!(
                    "undocumented answer {} from {} to {:?}: {}",
                    d.status,
                    self.c.ids()[d.via],
                    d.op,
                    d.body
                ),
            )));
        }
        let facility = self.c.ids()[d.via].to_string();
        match d.op {
            Op::Write(w) => {
                self.note_answered(&w);
                self.retries
                    .on_answer(&w.key, &facility, d.status.as_u16(), &d.body)
                    .map_err(|v| self.fail(v))?;
                if let Some(Ack::Committed { index, .. }) = self.work.on_write(w, d.status, &d.body)
                {
                    self.reads.on_ack(index);
                }
            }
            Op::LinearizableRead { floor } if d.status == StatusCode::OK => {
                let applied = d.body["staleness"]["applied_index"].as_u64().unwrap_or(0);
                self.reads
                    .check(&facility, floor, applied)
                    .map_err(|v| self.fail(v))?;
                self.check_served_digest(&facility, applied, &d.body)?;
            }
            Op::StaleRead if d.status == StatusCode::OK => {
                let applied = d.body["staleness"]["applied_index"].as_u64().unwrap_or(0);
                self.check_served_digest(&facility, applied, &d.body)?;
            }
            Op::Ledger(h) if d.status == StatusCode::OK && self.honest.contains(&d.via) => {
                self.check_served_entry(&facility, h, &d.body)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A schedule the API served is the one the facilities held at its
    /// index.
    fn check_served_digest(&self, f: &str, applied: u64, body: &Value) -> Result<(), SimFailure> {
        let served = body["digest"].as_str().unwrap_or_default();
        match self.schedules.digest_at(applied) {
            Some(d) if hex::encode(d) != served => Err(self.fail(Violation::new(
                Invariant::ScheduleRules,
                format!("{f} served another schedule than the one held at index {applied}"),
            ))),
            _ => Ok(()),
        }
    }

    /// A final entry an honest facility served is verified and is the
    /// honest chain's.
    fn check_served_entry(&self, f: &str, h: u64, body: &Value) -> Result<(), SimFailure> {
        let verified = body["verified"].as_bool() == Some(true);
        let hash = body["hash"].as_str().unwrap_or_default();
        let known = self.ledger.hash_at(h).map(hex::encode);
        if !verified || known.is_some_and(|k| k != hash) {
            return Err(self.fail(Violation::new(
                Invariant::FinalLedger,
                format!("{f} served height {h} as {hash} (verified: {verified})"),
            )));
        }
        Ok(())
    }

    /// Every invariant across the running facilities.
    async fn check_step(&mut self) -> Result<(), SimFailure> {
        for i in 0..self.c.n() {
            if !self.c.is_up(i) {
                continue;
            }
            self.c.raft_status(i).await;
            self.check_raft(i)?;
            self.check_schedule(i).await?;
            self.check_bulkheads(i).await?;
            if self.honest.contains(&i) {
                self.check_ledger(i)?;
            }
        }
        Ok(())
    }

    /// One leader per term and committed entries applied in order: an
    /// index applied again only after the RaftPeer restarted or its core
    /// was rebuilt from redb after a refused write.
    fn check_raft(&mut self, i: usize) -> Result<(), SimFailure> {
        let f = self.c.ids()[i].clone();
        let h = self.c.harness();
        let restarts = h.node(i).ctx().spawns.restarts("consensus/raft");
        let obs = self.c.observer();
        let broken = {
            let mut obs = obs.lock().expect("observer lock");
            let mut allowed = restarts;
            if obs.replays(&f) > restarts {
                // Read only when needed: a counter read snapshots every metric.
                let fenced = h.counter(i, FENCED, &[]);
                allowed += fenced.saturating_sub(self.fence_base[i]);
            }
            obs.check_replays(&f, allowed);
            obs.violations().first().cloned()
        };
        match broken {
            Some(v) => Err(self.fail(v)),
            None => Ok(()),
        }
    }

    async fn check_schedule(&mut self, i: usize) -> Result<(), SimFailure> {
        let Some(peer) = raft_peer(self.c.harness().node(i)) else {
            return Ok(());
        };
        let seen = inspect(&peer, |v: &ScheduleView| {
            let s: ScheduleState = match v.to_state() {
                Ok(s) => s,
                // Tables that do not read back whole break an invariant;
                // no index matches the model's.
                Err(e) => return (u64::MAX, [0; 32], Err(e.to_string()), Vec::new()),
            };
            let assignments: Vec<(String, String)> = s
                .assignments()
                .map(|(b, p, _)| (b.to_string(), p.to_string()))
                .collect();
            let rules = model::check_state(&s).and_then(|()| s.check_invariants());
            (
                s.last_index(),
                s.digest().unwrap_or_default(),
                rules,
                assignments,
            )
        });
        let Ok(Some((last, digest, invariants, mut assignments))) =
            tokio::time::timeout(STATUS_TIMEOUT, seen).await
        else {
            return Ok(());
        };
        let f = self.c.ids()[i].clone();
        {
            let obs = self.c.observer();
            let obs = obs.lock().expect("observer lock");
            if obs.model().last_index() == last {
                assignments.sort();
                if obs.model().assignments() != assignments {
                    return Err(self.fail(Violation::new(
                        Invariant::ReferenceModel,
                        format!("{f}'s schedule at index {last} is not the reference model's"),
                    )));
                }
            }
        }
        self.schedules
            .observe(&f, last, digest, invariants)
            .map_err(|v| self.fail(v))
    }

    async fn check_bulkheads(&mut self, i: usize) -> Result<(), SimFailure> {
        match self.pools(i).await {
            Some(status) => check_pools(&self.c.ids()[i], &status).map_err(|v| self.fail(v)),
            None => Ok(()),
        }
    }

    /// Facility `i`'s bulkhead pools, if its BulkheadPool runs and answers.
    async fn pools(&self, i: usize) -> Option<Vec<PoolStatus>> {
        let node = self.c.harness().node(i);
        let pools = node.ctx().find::<BulkheadMsg>(Zone::Flow, BULKHEADS)?;
        let status = pools.call(BulkheadMsg::Status, Some(STATUS_TIMEOUT)).await;
        status.ok()?.success_or(()).ok()
    }

    fn finals(&self, i: usize, from: u64) -> Result<Vec<FinalEntry>, SimFailure> {
        LedgerStore::new(self.c.harness().node(i).ctx().store.clone())
            .finals(from, u32::MAX)
            .map_err(|e| self.stuck(format!("ledger read: {e}")))
    }

    fn check_ledger(&mut self, i: usize) -> Result<(), SimFailure> {
        let f = self.c.ids()[i].clone();
        let rows = self.finals(i, self.ledger.from_height(&f))?;
        self.ledger.observe(&f, &rows).map_err(|v| self.fail(v))
    }

    fn report(&self) -> SeedReport {
        let trace = self.c.harness().trace();
        let mut h = blake3::Hasher::new();
        for e in &trace {
            h.update(format!("{e:?}\n").as_bytes());
        }
        let acked = self.work.acked();
        let count = |p: fn(&Ack) -> bool| acked.iter().filter(|(_, a)| p(a)).count() as u64;
        let (
            snapshot_installs,
            votes_checked,
            grants_checked,
            forwards_checked,
            checkpoints_checked,
        ) = {
            let obs = self.c.observer();
            let obs = obs.lock().expect("observer lock");
            (
                obs.snapshot_installs(),
                obs.votes_checked(),
                obs.grants_checked(),
                obs.forwards_checked(),
                obs.checkpoints_checked(),
            )
        };
        SeedReport {
            seed: self.seed,
            facilities: self.c.n(),
            liar: self.liar.map(|(i, b)| format!("{} {b:?}", self.c.ids()[i])),
            network: self.network,
            shape: self.shape,
            snapshot_every: self.snapshot_every,
            steps: self.steps,
            ops: self.ops,
            committed: count(|a| matches!(a, Ack::Committed { .. })),
            provisional: count(|a| matches!(a, Ack::Provisional)),
            faults: self.faults.clone(),
            virtual_ms: self.start.elapsed().as_millis() as u64,
            height: self.ledger.height(),
            snapshot_installs,
            power_losses: self.c.harness().power_losses(),
            votes_checked,
            grants_checked,
            forwards_checked,
            checkpoints_checked,
            rotations: self.ledger.epochs_seen(),
            replaced: self.member_changes.0,
            promoted: self.member_changes.1,
            trace_events: trace.len() as u64,
            trace_digest: h.finalize().to_hex()[..16].to_string(),
            answers: self.answers.clone(),
        }
    }
}
