//! One randomized run of the whole stack: [`run_seed`].
//!
//! One `u64` seed draws the scenario: 3 or 4 facilities, with 4 sometimes
//! one Byzantine validator (a lie drawn from the seed), the clients'
//! requests, and the faults that race them: crashes and restarts, two-way
//! and one-way partitions, loss and delay on the links, clock skew per
//! facility, and actors killed under their supervisors.
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
//!   must hold the same schedule, and every honest ledger must be the same
//!   chain and verify from genesis.
//!
//! A run is exact on a current-thread runtime with paused time: the same
//! seed gives the same SimNet trace and the same [`SeedReport`].

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use bulwark_actors::bft::{self, Behaviour, LedgerStore};
use bulwark_actors::cap::gate::CAP_GATE;
use bulwark_actors::cap::heal::HEALER;
use bulwark_actors::detect::DETECTOR;
use bulwark_actors::flow::actors::{BulkheadMsg, BACKPRESSURE, BULKHEADS};
use bulwark_actors::flow::bulkhead::PoolStatus;
use bulwark_actors::flow::mesh::BREAKERS;
use bulwark_actors::ledger::{self, FinalEntry};
use bulwark_actors::raft::{inspect, raft_peer, AppliedEntry, RAFT};
use bulwark_actors::schedule::{Outcome, ScheduleState};
use bulwark_runtime::Zone;
use bulwark_transport::simnet::LinkParams;
use bulwark_transport::{FacilityId, FaultRule, Selector};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::check::{
    check_pools, Invariant, LedgerChecker, ReadChecker, ScheduleChecker, Violation,
};
use super::client;
use super::cluster::{SimCluster, SimOptions, STATUS_TIMEOUT};
use super::workload::{Ack, Op, Workload, Write};
use crate::http::api::command_key;

/// The lies a Byzantine validator may tell (as in the BFT simulation).
pub const LIES: [Behaviour; 5] = [
    Behaviour::Equivocate,
    Behaviour::ForgeVotes,
    Behaviour::VoteForInvalid,
    Behaviour::ReplayStale,
    Behaviour::Withhold,
];

/// The actors a fault may kill, by zone.
pub const KILLABLE: [(Zone, &str); 8] = [
    (Zone::Consensus, RAFT),
    (Zone::Consensus, bft::BFT),
    (Zone::Consensus, HEALER),
    (Zone::Detection, CAP_GATE),
    (Zone::Detection, DETECTOR),
    (Zone::Flow, BACKPRESSURE),
    (Zone::Flow, BULKHEADS),
    (Zone::Flow, BREAKERS),
];

/// Actors whose kill reaches a known bug, not killed unless
/// [`SimPlan::known_bugs`]: the API keeps the BackpressureController it was
/// built with (`ApiState::admission`), so after a supervised restart of
/// that actor every `/v1` request is refused `429 admission_unavailable`
/// until the process restarts (seed 0 of the default plan).
pub const KNOWN_BUG_KILLS: [&str; 1] = [BACKPRESSURE];

/// Largest clock skew a fault sets, in ms either way. Changes of a
/// facility's skew stay under the ledger's allowed step back (5 s), as an
/// NTP-disciplined clock's would.
pub const SKEW_MS_MAX: i64 = 2_000;

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
            api_concurrency: 10,
            converge_ms: 60_000,
            known_bugs: false,
            plant: None,
        }
    }
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
    /// An actor killed (its supervisor restarts it).
    ActorKill,
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
    /// SimNet payloads traced.
    pub trace_events: u64,
    /// blake3 of the SimNet trace (equal runs, equal digests), hex.
    pub trace_digest: String,
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
    plan: &'p SimPlan,
    rng: ChaCha8Rng,
    c: SimCluster,
    honest: Vec<usize>,
    liar: Option<(usize, Behaviour)>,
    ledger: LedgerChecker,
    schedules: ScheduleChecker,
    reads: ReadChecker,
    work: Workload,
    clients: JoinSet<Done>,
    faults: BTreeMap<FaultKind, u64>,
    /// The last faults injected, for a failure's report.
    log: std::collections::VecDeque<String>,
    /// Details of the fault being injected, for the log.
    last_fault: Option<String>,
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
        let mut opts = SimOptions::new(n, seed);
        opts.api_concurrency = plan.api_concurrency;
        opts.behaviours = liar.into_iter().collect();
        let c = SimCluster::start(opts).await.map_err(|e| SimFailure {
            seed,
            step: None,
            violation: Violation::new(Invariant::Convergence, format!("start: {e}")),
            recent_faults: Vec::new(),
        })?;
        let ledger = LedgerChecker::new(c.keys().clone());
        let mut faults = BTreeMap::new();
        if liar.is_some() {
            faults.insert(FaultKind::Byzantine, 1);
        }
        Ok(Run {
            seed,
            plan,
            rng,
            honest: (0..n)
                .filter(|&i| liar.is_none_or(|(l, _)| l != i))
                .collect(),
            liar,
            ledger,
            schedules: ScheduleChecker::default(),
            reads: ReadChecker::default(),
            work: Workload::new(seed),
            clients: JoinSet::new(),
            faults,
            log: Default::default(),
            last_fault: None,
            ops: 0,
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
        for s in 0..self.plan.steps {
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
            let ack = self.write_until_committed(w).await?;
            if let Ack::Committed { index, .. } = ack {
                self.reads.on_ack(index);
            }
        }
        Ok(())
    }

    /// Sends `w` to the leader (or any facility) until it commits,
    /// stepping 200 ms between tries, at most 150 tries.
    async fn write_until_committed(&mut self, w: Write) -> Result<Ack, SimFailure> {
        let token = self.c.token().to_string();
        let mut last = String::new();
        for attempt in 0..150usize {
            let via = match self.c.leader().await {
                Some(l) => l,
                None => attempt % self.c.n(),
            };
            self.ops += 1;
            let (st, v) = client::json(self.c.call(via, w.request(&token)).await).await;
            if st == StatusCode::OK {
                let ack = self
                    .work
                    .on_write(w, st, &v)
                    .expect("a 200 is acknowledged");
                return Ok(ack);
            }
            last = format!("{st} {v}");
            self.c.step(Duration::from_millis(200)).await;
        }
        Err(self.stuck(format!("write {} did not commit: {last}", w.key)))
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

    /// Plants `p` where its checker will see it (test-only).
    async fn plant(&mut self, p: Plant) -> Result<(), SimFailure> {
        let ids = self.c.ids().to_vec();
        let missing = |what: &str| self.stuck(format!("nothing to plant {what} on"));
        match p {
            Plant::SecondLeader => {
                let l = self.c.leader().await.ok_or_else(|| missing("a leader"))?;
                let mut s = self
                    .c
                    .raft_status(l)
                    .await
                    .ok_or_else(|| missing("a leader"))?;
                s.facility = ids[(l + 1) % ids.len()].clone();
                self.c
                    .observer()
                    .lock()
                    .expect("observer lock")
                    .on_status(&s);
            }
            Plant::ChangedEntry => {
                let e = AppliedEntry {
                    index: 1,
                    term: u64::MAX,
                    hash: [7; 32],
                    payload: None,
                    verdict: ledger::Verdict::Skipped,
                    leader: None,
                };
                self.c
                    .observer()
                    .lock()
                    .expect("observer lock")
                    .on_applied(&ids[0], &e);
            }
            Plant::WeakCertificate => {
                let mut rows = self.finals(self.honest[0], 1)?;
                rows.truncate(1);
                let fin = rows.first_mut().ok_or_else(|| missing("a final entry"))?;
                fin.cert.votes.truncate(1);
                let ghost: FacilityId = "ghost".parse().expect("a valid id");
                self.ledger
                    .observe(&ghost, &rows)
                    .map_err(|v| self.fail(v))?;
            }
            Plant::DivergentSchedule => {
                let (last, mut digest) = self
                    .schedules
                    .latest()
                    .ok_or_else(|| missing("a schedule"))?;
                digest[0] ^= 1;
                self.schedules
                    .observe(&ids[0], last, digest, Ok(()))
                    .map_err(|v| self.fail(v))?;
            }
            Plant::LentReserve => {
                let lent = PoolStatus {
                    name: "writes".into(),
                    capacity: 4,
                    reserved: 2,
                    allocated: 0,
                    borrowed: 0,
                    lent: 3,
                    utilization: 0.0,
                    rejections: 0,
                };
                check_pools(&ids[0], &[lent]).map_err(|v| self.fail(v))?;
            }
            Plant::LostWrite => {
                let w = Write {
                    key: format!("s{}-planted", self.seed),
                    path: "/v1/people",
                    body: serde_json::json!({"id": "planted"}),
                };
                self.work.plant_ack(
                    w,
                    Ack::Committed {
                        index: 1,
                        duplicate: false,
                    },
                );
            }
            Plant::StaleRead => {
                let floor = self.reads.floor();
                self.reads
                    .check(ids[0].as_str(), floor, floor.saturating_sub(1))
                    .map_err(|v| self.fail(v))?;
            }
        }
        Ok(())
    }

    /// Starts one client request on a random facility.
    fn send_op(&mut self) {
        let via = self.rng.random_range(0..self.c.n());
        let op = self
            .work
            .next_op(&mut self.rng, self.reads.floor(), self.ledger.height());
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

    /// Draws and injects one fault.
    async fn inject(&mut self) -> Result<(), SimFailure> {
        let n = self.c.n();
        let i = self.rng.random_range(0..n);
        let at = self.c.ids()[i].clone();
        let kind = match self.rng.random_range(0..100) {
            0..=9 => self.crash(i).await,
            10..=27 => self.restart_one().await?,
            28..=37 => self.partition(),
            38..=44 => self.one_way(i),
            45..=54 => {
                self.c.harness().heal();
                Some(FaultKind::Heal)
            }
            55..=62 => self.link_change(),
            63..=67 => self.link_rule(i, true),
            68..=72 => self.link_rule(i, false),
            73..=84 => {
                let skew = self.rng.random_range(-SKEW_MS_MAX..=SKEW_MS_MAX);
                self.last_fault = Some(format!("{skew} ms"));
                self.c.harness().clock(i).set_skew_ms(skew);
                Some(FaultKind::ClockSkew)
            }
            _ => self.kill(i),
        };
        if let Some(k) = kind {
            *self.faults.entry(k).or_insert(0) += 1;
            let what = self.last_fault.take().unwrap_or_default();
            self.note(format!("{k:?} {at} {what}"));
        }
        Ok(())
    }

    /// Adds `what` to the fault log, with the step and virtual time.
    fn note(&mut self, what: String) {
        if self.log.len() == FAULT_LOG_LEN {
            self.log.pop_front();
        }
        let t = self.start.elapsed().as_millis();
        let step = phase(&self.step);
        self.log
            .push_back(format!("{step} t={t}ms {}", what.trim_end()));
    }

    async fn crash(&mut self, i: usize) -> Option<FaultKind> {
        let up = (0..self.c.n()).filter(|&j| self.c.is_up(j)).count();
        if !self.c.is_up(i) || up <= 1 {
            return None;
        }
        self.c.crash(i).await;
        Some(FaultKind::Crash)
    }

    async fn restart_one(&mut self) -> Result<Option<FaultKind>, SimFailure> {
        let down: Vec<usize> = (0..self.c.n()).filter(|&j| !self.c.is_up(j)).collect();
        let Some(&i) = down.get(self.rng.random_range(0..down.len().max(1))) else {
            return Ok(None);
        };
        self.restart(i).await?;
        Ok(Some(FaultKind::Restart))
    }

    async fn restart(&mut self, i: usize) -> Result<(), SimFailure> {
        self.c
            .restart(i)
            .await
            .map_err(|e| self.stuck(format!("{} did not restart: {e}", self.c.ids()[i])))
    }

    fn partition(&mut self) -> Option<FaultKind> {
        let mut ids = self.c.ids().to_vec();
        ids.shuffle(&mut self.rng);
        let k = self.rng.random_range(1..ids.len());
        let (a, b) = ids.split_at(k);
        self.last_fault = Some(format!("{a:?} | {b:?}"));
        let plan = self.c.harness().net().faults();
        plan.partition(a.to_vec(), b.to_vec()).ok()?;
        Some(FaultKind::Partition)
    }

    fn one_way(&mut self, i: usize) -> Option<FaultKind> {
        let me = std::collections::BTreeSet::from([self.c.ids()[i].clone()]);
        let rest = self
            .c
            .ids()
            .iter()
            .filter(|f| !me.contains(*f))
            .cloned()
            .collect();
        let (side_a, side_b) = if self.rng.random_bool(0.5) {
            (me, rest)
        } else {
            (rest, me)
        };
        let rule = FaultRule::Partition {
            side_a,
            side_b,
            one_way: true,
        };
        self.c.harness().net().faults().add(rule).ok()?;
        Some(FaultKind::OneWayPartition)
    }

    fn link_change(&mut self) -> Option<FaultKind> {
        let params = if self.rng.random_bool(0.3) {
            LinkParams::default()
        } else {
            LinkParams {
                latency: Duration::from_millis(self.rng.random_range(1..20)),
                jitter: Duration::from_millis(self.rng.random_range(0..30)),
                loss: self.rng.random_range(0.0..0.1),
            }
        };
        self.c.harness().net().set_default_link(params);
        Some(FaultKind::LinkChange)
    }

    /// A delay (`delay`) or random drops on the link from `i` to another.
    fn link_rule(&mut self, i: usize, delay: bool) -> Option<FaultKind> {
        let n = self.c.n();
        let j = (i + self.rng.random_range(1..n)) % n;
        let (from, to) = (
            Selector::one(&self.c.ids()[i]),
            Selector::one(&self.c.ids()[j]),
        );
        let (rule, kind) = if delay {
            let delay_ms = self.rng.random_range(20..1_500);
            (FaultRule::Delay { from, to, delay_ms }, FaultKind::Delay)
        } else {
            let probability = self.rng.random_range(0.1..0.7);
            let class = None;
            (
                FaultRule::Drop {
                    from,
                    to,
                    probability,
                    class,
                },
                FaultKind::Drop,
            )
        };
        self.c.harness().net().faults().add(rule).ok()?;
        Some(kind)
    }

    fn kill(&mut self, i: usize) -> Option<FaultKind> {
        let (zone, name) = KILLABLE[self.rng.random_range(0..KILLABLE.len())];
        if !self.plan.known_bugs && KNOWN_BUG_KILLS.contains(&name) {
            return None;
        }
        self.last_fault = Some(format!("{}/{name}", zone.as_str()));
        (self.c.is_up(i) && self.c.harness().kill_actor(i, zone, name))
            .then_some(FaultKind::ActorKill)
    }

    /// A facility whose root supervisor gave up is down, as the process
    /// of a real node would be.
    async fn notice_escalations(&mut self) {
        for i in 0..self.c.n() {
            if !self.c.is_up(i) && self.c.api().state(i).is_some() {
                self.c.crash(i).await;
                *self.faults.entry(FaultKind::Escalation).or_insert(0) += 1;
                let f = self.c.ids()[i].clone();
                self.note(format!("Escalation {f}"));
            }
        }
    }

    /// Every invariant across the running facilities.
    async fn check_step(&mut self) -> Result<(), SimFailure> {
        for i in 0..self.c.n() {
            if !self.c.is_up(i) {
                continue;
            }
            self.c.raft_status(i).await;
            let f = self.c.ids()[i].clone();
            let restarts = self
                .c
                .harness()
                .node(i)
                .ctx()
                .spawns
                .restarts("consensus/raft");
            let broken = {
                let obs = self.c.observer();
                let mut obs = obs.lock().expect("observer lock");
                obs.check_replays(&f, restarts);
                obs.violations().first().cloned()
            };
            if let Some(v) = broken {
                return Err(self.fail(v));
            }
            self.check_schedule(i).await?;
            self.check_bulkheads(i).await?;
            if self.honest.contains(&i) {
                self.check_ledger(i)?;
            }
        }
        Ok(())
    }

    async fn check_schedule(&mut self, i: usize) -> Result<(), SimFailure> {
        let Some(peer) = raft_peer(self.c.harness().node(i)) else {
            return Ok(());
        };
        let seen = inspect(&peer, |s: &ScheduleState| {
            (
                s.last_index(),
                s.digest().unwrap_or_default(),
                s.check_invariants(),
            )
        });
        let Ok(Some((last, digest, invariants))) = tokio::time::timeout(STATUS_TIMEOUT, seen).await
        else {
            return Ok(());
        };
        let f = self.c.ids()[i].clone();
        self.schedules
            .observe(&f, last, digest, invariants)
            .map_err(|v| self.fail(v))
    }

    async fn check_bulkheads(&mut self, i: usize) -> Result<(), SimFailure> {
        let node = self.c.harness().node(i);
        let Some(pools) = node.ctx().find::<BulkheadMsg>(Zone::Flow, BULKHEADS) else {
            return Ok(());
        };
        let Ok(status) = pools.call(BulkheadMsg::Status, Some(STATUS_TIMEOUT)).await else {
            return Ok(());
        };
        let Some(status) = status.success_or(()).ok() else {
            return Ok(());
        };
        check_pools(&self.c.ids()[i], &status).map_err(|v| self.fail(v))
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
        SeedReport {
            seed: self.seed,
            facilities: self.c.n(),
            liar: self.liar.map(|(i, b)| format!("{} {b:?}", self.c.ids()[i])),
            steps: self.plan.steps,
            ops: self.ops,
            committed: count(|a| matches!(a, Ack::Committed { .. })),
            provisional: count(|a| matches!(a, Ack::Provisional)),
            faults: self.faults.clone(),
            virtual_ms: self.start.elapsed().as_millis() as u64,
            height: self.ledger.height(),
            trace_events: trace.len() as u64,
            trace_digest: h.finalize().to_hex()[..16].to_string(),
        }
    }
}

// ------------------------------------------------------------- liveness

impl Run<'_> {
    async fn liveness(&mut self) -> Result<(), SimFailure> {
        self.heal_all().await?;
        while let Some(done) = self.clients.join_next().await {
            let done = done.map_err(|e| self.stuck(format!("a client task failed: {e}")))?;
            self.on_done(done)?;
        }
        self.wait_provisional().await?;
        let w = self.work.next_final_write();
        let index = match self.write_until_committed(w).await? {
            Ack::Committed { index, .. } => index,
            Ack::Provisional => unreachable!("write_until_committed waits for a 200"),
        };
        self.wait_applied(index).await?;
        self.wait_final().await?;
        self.check_step().await?;
        self.check_end().await
    }

    async fn heal_all(&mut self) -> Result<(), SimFailure> {
        let h = self.c.harness();
        h.heal();
        h.net().set_default_link(LinkParams::default());
        for i in 0..self.c.n() {
            self.c.harness().clock(i).set_skew_ms(0);
        }
        for i in 0..self.c.n() {
            if !self.c.is_up(i) {
                self.restart(i).await?;
            }
        }
        Ok(())
    }

    /// Polls `f` every 100 ms of virtual time until it holds, within the
    /// plan's convergence time.
    async fn poll_until<F>(&mut self, what: &str, mut f: F) -> Result<(), SimFailure>
    where
        F: for<'a> FnMut(&'a mut Self) -> BoxFut<'a, Result<(), String>>,
    {
        let poll = Duration::from_millis(100);
        let mut last = String::new();
        for _ in 0..self.plan.converge_ms / 100 {
            match f(self).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            self.c.step(poll).await;
        }
        Err(self.stuck(format!("{what}: {last}")))
    }

    /// Every provisional change on every facility has been replayed.
    async fn wait_provisional(&mut self) -> Result<(), SimFailure> {
        self.poll_until("provisional changes not replayed", |r| {
            Box::pin(async move {
                for i in 0..r.c.n() {
                    let (st, v) = client::json(
                        r.c.call(i, client::get("/v1/schedule?consistency=stale"))
                            .await,
                    )
                    .await;
                    let pending = v["staleness"]["provisional_pending"].as_u64();
                    if st != StatusCode::OK || pending != Some(0) {
                        let why = if st == StatusCode::OK { Value::Null } else { v };
                        return Err(format!("{}: {st} pending {pending:?} {why}", r.c.ids()[i]));
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Every facility applied up to `index`.
    async fn wait_applied(&mut self, index: u64) -> Result<(), SimFailure> {
        self.poll_until("facilities did not catch up", |r| {
            Box::pin(async move {
                for i in 0..r.c.n() {
                    let applied = r.c.raft_status(i).await.map(|s| s.applied);
                    if applied.is_none_or(|a| a < index) {
                        return Err(format!("{} applied {applied:?} of {index}", r.c.ids()[i]));
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Every honest validator made final every entry the schedule chained.
    async fn wait_final(&mut self) -> Result<(), SimFailure> {
        let mut target = 0;
        for i in 0..self.c.n() {
            let Some(peer) = raft_peer(self.c.harness().node(i)) else {
                return Err(self.stuck(format!("{}: no RaftPeer", self.c.ids()[i])));
            };
            let h = inspect(&peer, |s: &ScheduleState| s.chain().height()).await;
            target = target.max(h.unwrap_or(0));
        }
        self.poll_until("ledger entries not final", move |r| {
            Box::pin(async move {
                for &i in &r.honest {
                    let v = bft::validator(r.c.harness().node(i));
                    let h = match v {
                        Some(v) => bft::status(&v).await.map(|s| s.final_height),
                        None => None,
                    };
                    if h.is_none_or(|h| h < target) {
                        return Err(format!("{} final {h:?} of {target}", r.c.ids()[i]));
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Every acknowledged write on every facility; the same schedule
    /// everywhere; every honest ledger the same verified chain.
    async fn check_end(&mut self) -> Result<(), SimFailure> {
        let acked: Vec<(Write, Ack)> = self.work.acked().to_vec();
        let mut digests = Vec::new();
        for i in 0..self.c.n() {
            let peer = raft_peer(self.c.harness().node(i))
                .ok_or_else(|| self.stuck(format!("{}: no RaftPeer", self.c.ids()[i])))?;
            let acked = acked.clone();
            let seen = inspect(&peer, move |s: &ScheduleState| {
                let lost: Vec<String> = acked
                    .iter()
                    .filter(|(w, a)| !present(s, w, a))
                    .map(|(w, a)| format!("{} {} {a:?}", w.key, w.path))
                    .collect();
                (lost, s.digest().unwrap_or_default())
            })
            .await
            .ok_or_else(|| self.stuck(format!("{}: no final read", self.c.ids()[i])))?;
            if let Some(first) = seen.0.first() {
                return Err(self.fail(Violation::new(
                    Invariant::AcknowledgedWrites,
                    format!(
                        "{} lacks {} acknowledged writes, first {first}",
                        self.c.ids()[i],
                        seen.0.len()
                    ),
                )));
            }
            digests.push(seen.1);
        }
        if digests.windows(2).any(|w| w[0] != w[1]) {
            return Err(self.fail(Violation::new(
                Invariant::ScheduleRules,
                "the facilities hold different schedules at the end",
            )));
        }
        self.check_chains()
    }

    /// Every honest ledger is the same chain and verifies from genesis.
    fn check_chains(&self) -> Result<(), SimFailure> {
        let mut first: Option<Vec<(u64, Vec<u8>)>> = None;
        for &i in &self.honest {
            let f = &self.c.ids()[i];
            let rows = self.finals(i, 1)?;
            let chain = rows
                .into_iter()
                .enumerate()
                .map(|(k, fin)| (k as u64 + 1, Ok::<FinalEntry, String>(fin)));
            ledger::verify_chain(chain, self.c.keys()).map_err(|e| {
                self.fail(Violation::new(Invariant::FinalLedger, format!("{f}: {e}")))
            })?;
            let raw = LedgerStore::new(self.c.harness().node(i).ctx().store.clone())
                .raw_finals()
                .map_err(|e| self.stuck(format!("ledger read: {e}")))?;
            match &first {
                Some(r) if *r != raw => {
                    return Err(self.fail(Violation::new(
                        Invariant::FinalLedger,
                        format!("honest ledgers differ at the end ({f})"),
                    )))
                }
                Some(_) => {}
                None => first = Some(raw),
            }
        }
        Ok(())
    }
}

/// Whether acknowledged write `w` is in schedule `s`: a commit at its
/// index (a retry's answer names its own, later index), a provisional
/// change replayed through consensus.
fn present(s: &ScheduleState, w: &Write, ack: &Ack) -> bool {
    let got = s.outcome_of(&command_key(&w.key));
    match (ack, got) {
        (Ack::Committed { index, duplicate }, Some((at, Outcome::Applied(_)))) => {
            *duplicate || at == *index
        }
        (Ack::Committed { .. }, _) => false,
        (Ack::Provisional, got) => got.is_some(),
    }
}
