//! The ChaosAgent: runs one [`Experiment`] against a cluster through the
//! facilities' HTTP API, measures, rolls back, and reports.
//!
//! The agent only speaks HTTP, so one experiment file runs unchanged against
//! a live cluster ([`live::HttpCluster`], `bulwark chaos run FILE`) and in
//! the in-process harness ([`SimTarget`] over
//! [`crate::sim::cluster::SimApi`], virtual time). A run:
//!
//! 1. **Safety first.** The run window, the blast radius, and a healthy
//!    cluster (every facility answers, one leader, every peer up) — or the
//!    experiment is refused and nothing is touched.
//! 2. **Before** (`observe.before_ms`): probe load and samples for the
//!    baseline.
//! 3. **During** (`duration_ms`): the fault is injected through
//!    `/v1/admin/chaos` (each action arms the facility's own dead-man
//!    timer). If the probes' error rate over the last second crosses
//!    `safety.max_error_rate`, the agent rolls back at once.
//! 4. **Rollback**, always — also after an early stop or an agent error: a
//!    `clear` on every facility, confirmed by the view it answers.
//! 5. **After** (`observe.after_ms`): recovery is watched.
//!
//! Every finding compares a measurement with a threshold of the
//! experiment; nothing is drawn at random.

pub mod drill;
pub mod live;
pub mod sim;

use axum::http::Method;
use bulwark_actors::bft::evidence::DRILL_SLACK_MS;
use bulwark_actors::chaos::experiment::{behaviour_named, Experiment, FaultSpec};
use bulwark_actors::chaos::inject::{Change, Injector};
use bulwark_actors::chaos::propagation::{
    self as prop, bulwark_graph, default_rules, Engine, EngineConfig, Health, Status,
};
use bulwark_actors::chaos::report::{
    Answer, Finding, Phase, PhaseMetrics, Probe, ProbeKind, Report, Rollback, Verdict,
};
use bulwark_actors::heatmap::{Heatmap, Level};
use bulwark_actors::schedule::{namespace_prefix, valid_namespace, DRILL_MS_MAX};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use crate::http::api::ClusterStatus;

/// Day of the probe blocks: far beyond any real schedule (year 2126 of the
/// schedule's epoch), so probes never meet real assignments.
pub const PROBE_DAY: u32 = 36_500;

/// How long after a burst the operator's requests leave (the burst's
/// writes hold their bulkhead units by then).
pub const HERD_OPERATOR_DELAY: Duration = Duration::from_millis(3);

/// Tries of the rollback's `clear` per facility (with backoff).
pub const ROLLBACK_ATTEMPTS: u32 = 8;

/// Most steps of dropping a run's namespace (each removes up to 256
/// blocks and people).
pub const NAMESPACE_DROP_STEPS_MAX: u32 = 64;

/// Samples kept in a report's heatmap at most.
pub const HEATMAP_SAMPLES_MAX: usize = 240;

/// Why an experiment file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExperimentFileError {
    /// Not readable.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML of an experiment (names the key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value out of range (names the field).
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// Which field and why.
        source: bulwark_actors::chaos::experiment::ExperimentError,
    },
}

/// Largest experiment file read, in bytes.
pub const EXPERIMENT_FILE_LEN_MAX: u64 = 64 * 1024;

/// Parses and validates an experiment from TOML text.
pub fn parse_experiment(text: &str, path: &str) -> Result<Experiment, ExperimentFileError> {
    let exp: Experiment = toml::from_str(text).map_err(|e| ExperimentFileError::Parse {
        path: path.into(),
        message: e.to_string(),
    })?;
    exp.validate()
        .map_err(|source| ExperimentFileError::Invalid {
            path: path.into(),
            source,
        })?;
    Ok(exp)
}

/// Reads, parses and validates an experiment file.
pub fn load_experiment(path: &std::path::Path) -> Result<Experiment, ExperimentFileError> {
    let shown = path.display().to_string();
    let read = |source| ExperimentFileError::Read {
        path: shown.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > EXPERIMENT_FILE_LEN_MAX {
        return Err(ExperimentFileError::Parse {
            path: shown,
            message: format!("{len} bytes, more than {EXPERIMENT_FILE_LEN_MAX}"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse_experiment(&text, &shown)
}

/// One request the agent sends.
#[derive(Debug, Clone)]
pub struct ChaosCall {
    /// GET or POST.
    pub method: Method,
    /// Path and query, e.g. `/v1/cluster`.
    pub path: String,
    /// JSON body of a POST.
    pub body: Option<Value>,
    /// Idempotency key of a schedule write.
    pub key: Option<String>,
}

impl ChaosCall {
    fn get(path: impl Into<String>) -> ChaosCall {
        ChaosCall {
            method: Method::GET,
            path: path.into(),
            body: None,
            key: None,
        }
    }

    fn post(path: impl Into<String>, body: Value, key: Option<String>) -> ChaosCall {
        ChaosCall {
            method: Method::POST,
            path: path.into(),
            body: Some(body),
            key,
        }
    }
}

/// An answer: status 0 when none came (unreachable, reset).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status, or 0.
    pub status: u16,
    /// The JSON body (`Null` if none or not JSON).
    pub body: Value,
}

impl Reply {
    /// The error code of an error answer.
    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }
}

/// A cluster the agent can reach: N facilities' HTTP APIs, with the bearer
/// token added by the implementation.
pub trait ChaosCluster: Clone + Send + Sync + 'static {
    /// Facilities.
    fn size(&self) -> usize;
    /// Facility `i`'s id.
    fn name(&self, i: usize) -> String;
    /// Sends `call` to facility `i`.
    fn call(&self, i: usize, call: ChaosCall) -> impl Future<Output = Reply> + Send;
    /// Wall time for the run window, ms since the Unix epoch.
    fn unix_ms(&self) -> u64;
}

/// One look at every facility.
#[derive(Debug, Clone)]
struct Sample {
    at_ms: u64,
    phase: Phase,
    views: Vec<Option<ClusterStatus>>,
}

/// What the agent did to the cluster, to undo and to report.
#[derive(Debug, Clone, Default)]
struct Injected {
    actions: Vec<String>,
    /// Facilities that received a lever.
    touched: Vec<usize>,
}

/// Runs experiments.
pub struct Agent<C: ChaosCluster> {
    cluster: C,
    exp: Experiment,
    run: String,
    start: Instant,
    phase: Phase,
    seq: u64,
    inflight: JoinSet<(u64, Probe)>,
    probes: Vec<Probe>,
    samples: Vec<Sample>,
    observations: Vec<String>,
    heatmap: Heatmap,
    toggles: Vec<bool>,
    markers: std::collections::BTreeMap<u64, String>,
    acked: std::collections::BTreeSet<String>,
    base_seq: u64,
    /// The failure-propagation engine, fed each sample's observations.
    engine: Option<Engine>,
    /// Components the engine marked failed while the fault was held.
    failed_during: std::collections::BTreeSet<String>,
    /// Starts and stops the fault inside the window.
    injector: Option<Injector<()>>,
    /// The injector's chance, seeded from the run's name.
    rng: ChaCha8Rng,
    /// Target and leader the fault aims at.
    fault_ctx: (Option<usize>, Option<usize>),
    /// What was injected.
    injected: Injected,
    /// When the window opened, ms since the run started.
    window_at: u64,
    /// When the fault started and ended.
    fault_at: Option<u64>,
    fault_end: Option<u64>,
    /// Facilities a drill was declared on.
    drilled: std::collections::BTreeSet<usize>,
}

impl<C: ChaosCluster> Agent<C> {
    /// An agent for one run of `exp` (validated by the caller's parse);
    /// `run` names this run in probe keys (unique per run).
    pub fn new(cluster: C, exp: Experiment, run: impl Into<String>) -> Agent<C> {
        let n = cluster.size();
        let run: String = run.into();
        Agent {
            cluster,
            exp,
            run: run.clone(),
            start: Instant::now(),
            phase: Phase::Before,
            seq: 0,
            inflight: JoinSet::new(),
            probes: Vec::new(),
            samples: Vec::new(),
            observations: Vec::new(),
            heatmap: Heatmap::new(HEATMAP_SAMPLES_MAX),
            toggles: vec![false; n],
            markers: Default::default(),
            acked: Default::default(),
            base_seq: 0,
            engine: None,
            failed_during: Default::default(),
            injector: None,
            rng: ChaCha8Rng::seed_from_u64(u64::from_le_bytes(
                blake3::hash(run.as_bytes()).as_bytes()[..8]
                    .try_into()
                    .expect("8 bytes"),
            )),
            fault_ctx: (None, None),
            injected: Injected::default(),
            window_at: 0,
            fault_at: None,
            fault_end: None,
            drilled: Default::default(),
        }
    }

    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn observe(&mut self, what: impl Into<String>) {
        let line = format!("t={}ms {}", self.ms(), what.into());
        tracing::info!(experiment = %self.exp.name, "{line}");
        self.observations.push(line);
    }

    /// Runs the experiment to its report. Nothing is injected unless every
    /// safety check passes; whatever was injected is rolled back.
    pub async fn run(mut self) -> Report {
        let n = self.cluster.size();
        if let Err(why) = self.exp.validate() {
            return self.refused(why.to_string());
        }
        if self.run.is_empty() || !valid_namespace(&self.run) {
            let why = format!(
                "the run's name {:?} is not a namespace (1 to 32 chars of [A-Za-z0-9._-])",
                self.run
            );
            return self.refused(why);
        }
        let ids: Result<Vec<bulwark_transport::FacilityId>, _> =
            (0..n).map(|i| self.cluster.name(i).parse()).collect();
        match ids.map_err(|e| e.to_string()).and_then(|ids| {
            let graph = bulwark_graph(&ids).map_err(|e| e.to_string())?;
            Engine::new(graph, default_rules(), EngineConfig::default()).map_err(|e| e.to_string())
        }) {
            Ok(engine) => self.engine = Some(engine),
            Err(why) => return self.refused(format!("dependency graph: {why}")),
        }
        if let Some(w) = self.exp.safety.window {
            let now = self.cluster.unix_ms();
            if !w.contains(now) {
                return self.refused(format!(
                    "outside the run window {:02}:00-{:02}:00 UTC",
                    w.from_hour, w.to_hour
                ));
            }
        }
        if !self.exp.fits_blast_radius(n) {
            let why = format!(
                "the fault touches {} of {n} facilities, more than blast_radius {}",
                self.exp.fault.facilities_touched(),
                self.exp.blast_radius
            );
            return self.refused(why);
        }
        let healthy = self.wait_healthy(Duration::from_secs(20)).await;
        if self.exp.safety.require_healthy {
            if let Err(why) = healthy {
                return self.refused(format!("the cluster is not healthy: {why}"));
            }
        }
        let leader = healthy.ok();
        let target = match self.resolve_target(leader) {
            Ok(t) => t,
            Err(why) => return self.refused(why),
        };
        if let Err(why) = self.prepare(leader.unwrap_or(0)).await {
            let why = format!("could not set up the probe blocks: {why}");
            return self.refused_after_prepare(leader, why).await;
        }
        // Every facility a lever will be pulled on is declared in a drill
        // first (through consensus), so the evidence it produces costs no
        // trust.
        for i in self.lever_targets(target, leader) {
            if let Err(why) = self.declare_drill(i).await {
                return self.refused_after_prepare(leader, why).await;
            }
        }
        self.observe(format!(
            "started: {} ({}), target {}",
            self.exp.name,
            self.exp.fault.kind(),
            target.map_or("none".into(), |t| self.cluster.name(t))
        ));

        // Before.
        self.phase = Phase::Before;
        let before = self.exp.observe.before_ms;
        self.drive(before, false).await;

        // During: the injector starts and stops the fault as its schedule
        // says, judged at each sample.
        self.phase = Phase::During;
        self.window_at = self.ms();
        self.fault_ctx = (target, leader);
        match Injector::new(vec![self.exp.schedule.fault(())]) {
            Ok(i) => self.injector = Some(i),
            Err(e) => {
                return self
                    .refused_after_prepare(leader, format!("schedule: {e}"))
                    .await
            }
        }
        let duration = self.exp.duration_ms;
        let stopped_early = self.drive(duration, true).await;
        let now = self.ms();
        if let Some(injector) = &mut self.injector {
            if !injector.rollback(now - self.window_at).is_empty() {
                self.fault_end = Some(now);
            }
        }

        // Rollback, always.
        let injected = self.injected.clone();
        let rollback = self.rollback(&injected).await;
        let rolled_back_at = self.ms();

        // After.
        self.phase = Phase::After;
        let after = self.exp.observe.after_ms;
        self.drive(after, false).await;
        while let Some(done) = self.inflight.join_next().await {
            if let Ok((seq, p)) = done {
                self.done(seq, p);
            }
        }
        let Some(fault_at) = self.fault_at else {
            self.observe("the schedule never started the fault within the window");
            let why = "the fault's schedule never started it within duration_ms".to_string();
            return self.refused_after_prepare(leader, why).await;
        };
        self.finish(
            target,
            leader,
            fault_at,
            rolled_back_at,
            rollback,
            stopped_early,
        )
        .await
    }

    /// Metrics of the last second for the injector's conditions.
    fn schedule_metrics(&self, views: &[Option<ClusterStatus>]) -> BTreeMap<String, f64> {
        let now = self.ms();
        let recent: Vec<&Probe> = self
            .probes
            .iter()
            .filter(|p| p.at_ms + 1_000 + p.latency_ms >= now)
            .collect();
        let m = PhaseMetrics::of(recent.iter().copied());
        let leaders: std::collections::BTreeSet<&String> = views
            .iter()
            .flatten()
            .filter_map(|v| v.leader.as_ref())
            .collect();
        BTreeMap::from([
            ("error_rate".to_string(), m.error_rate),
            ("p99_ms".to_string(), m.p99_ms as f64),
            ("probes".to_string(), m.probes as f64),
            (
                "no_leader".to_string(),
                views
                    .iter()
                    .flatten()
                    .filter(|v| v.leader.is_none())
                    .count() as f64,
            ),
            ("leaders".to_string(), leaders.len() as f64),
            (
                "unreachable".to_string(),
                views.iter().filter(|v| v.is_none()).count() as f64,
            ),
            (
                "commit".to_string(),
                views
                    .iter()
                    .flatten()
                    .filter_map(|v| v.commit)
                    .max()
                    .unwrap_or(0) as f64,
            ),
        ])
    }

    /// One injector step at a sample of the During phase: injects when the
    /// schedule starts the fault, reverts when it ends it. `Err` stops the
    /// experiment (an injection that failed).
    async fn step_schedule(&mut self, views: &[Option<ClusterStatus>]) -> Result<(), String> {
        let Some(mut injector) = self.injector.take() else {
            return Ok(());
        };
        let metrics = self.schedule_metrics(views);
        let now = self.ms() - self.window_at;
        let transitions = injector.step(now, &metrics, &mut self.rng);
        self.injector = Some(injector);
        for t in transitions {
            match t.change {
                Change::Activated => {
                    self.fault_at = Some(self.ms());
                    let (target, leader) = self.fault_ctx;
                    match self.inject(target, leader).await {
                        Ok(inj) => self.injected = inj,
                        Err((inj, why)) => {
                            self.injected = inj;
                            self.observe(format!("injection failed: {why}"));
                            return Err(format!("injection failed: {why}"));
                        }
                    }
                }
                Change::Deactivated(reason) => {
                    self.fault_end = Some(self.ms());
                    self.observe(format!(
                        "the schedule ended the fault ({reason:?}); reverting"
                    ));
                    let injected = self.injected.clone();
                    self.rollback(&injected).await;
                }
            }
        }
        Ok(())
    }

    fn refused(mut self, why: String) -> Report {
        self.observe(format!("refused: {why}"));
        Report {
            name: self.exp.name.clone(),
            kind: self.exp.fault.kind().into(),
            verdict: Verdict::Refused(why),
            observations: self.observations,
            weaknesses: Vec::new(),
            phases: Vec::new(),
            heatmap: self.heatmap,
            timeline: Vec::new(),
            rollback: Rollback::default(),
            probes: Vec::new(),
        }
    }

    /// Every facility's `/v1/cluster`; one that does not answer 200 within
    /// two sampling periods counts as not answering.
    async fn views(&self) -> Vec<Option<ClusterStatus>> {
        let mut set = JoinSet::new();
        let within = Duration::from_millis(
            (2 * self.exp.observe.sample_every_ms).min(self.exp.observe.request_timeout_ms),
        );
        for i in 0..self.cluster.size() {
            let c = self.cluster.clone();
            set.spawn(async move {
                let r = tokio::time::timeout(within, c.call(i, ChaosCall::get("/v1/cluster")))
                    .await
                    .unwrap_or(Reply {
                        status: 0,
                        body: Value::Null,
                    });
                let v = (r.status == 200)
                    .then(|| serde_json::from_value::<ClusterStatus>(r.body).ok())
                    .flatten();
                (i, v)
            });
        }
        let mut out = vec![None; self.cluster.size()];
        while let Some(Ok((i, v))) = set.join_next().await {
            out[i] = v;
        }
        out
    }

    /// Waits (bounded) until every facility answers, all name the same
    /// leader and see every peer up; the leader's index, or why not.
    async fn wait_healthy(&mut self, within: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + within;
        loop {
            let views = self.views().await;
            let why = match healthy(&views) {
                Ok(leader) => {
                    let idx = (0..self.cluster.size()).find(|&i| self.cluster.name(i) == leader);
                    match idx {
                        Some(i) => return Ok(i),
                        None => format!("leader {leader} is not a member"),
                    }
                }
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(why);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn resolve_target(&self, leader: Option<usize>) -> Result<Option<usize>, String> {
        let Some(t) = self.exp.fault.target() else {
            return Ok(None);
        };
        let n = self.cluster.size();
        match t {
            "leader" => leader
                .map(Some)
                .ok_or_else(|| "no leader to target".to_string()),
            "follower" => {
                let l = leader.ok_or("no leader, so no follower to target")?;
                Ok(Some((l + 1) % n))
            }
            id => (0..n)
                .find(|&i| self.cluster.name(i) == id)
                .map(Some)
                .ok_or_else(|| format!("target {id} is not a member")),
        }
    }

    /// The run's namespace (`chaos:<run>:…`, dropped at the end): one
    /// person and one far-future block per facility, written through the
    /// leader.
    async fn prepare(&mut self, via: usize) -> Result<(), String> {
        for i in 0..self.cluster.size() {
            let person = json!({"id": self.probe_person(i), "name": "chaos probe",
                "role": "resident", "pgy": 1});
            let block = json!({"id": self.probe_block(i), "day": PROBE_DAY + i as u32, "start_min": 0,
                "duration_min": 60, "pool": "clinic", "required": 1});
            for (path, body, key) in [
                (
                    "/v1/people",
                    person,
                    format!("chaos-{}-person-{i}", self.run),
                ),
                ("/v1/blocks", block, format!("chaos-{}-block-{i}", self.run)),
            ] {
                let r = self
                    .cluster
                    .call(via, ChaosCall::post(path, body, Some(key)))
                    .await;
                // 409: it exists already (an earlier run made it).
                if !(200..300).contains(&r.status) && r.status != 409 {
                    return Err(format!("{path}: {} {}", r.status, r.body));
                }
            }
        }
        // Start every probe block empty, so toggles alternate cleanly.
        for i in 0..self.cluster.size() {
            let body = json!({"person": self.probe_person(i), "block": self.probe_block(i)});
            let key = format!("chaos-{}-reset-{i}", self.run);
            let _ = self
                .cluster
                .call(via, ChaosCall::post("/v1/unassignments", body, Some(key)))
                .await;
        }
        Ok(())
    }

    /// Probes and samples for `ms`; with `guard`, stops early (returning
    /// why) when the error-rate ceiling is crossed.
    async fn drive(&mut self, ms: u64, guard: bool) -> Option<String> {
        let every = Duration::from_millis(self.exp.observe.sample_every_ms);
        let start = Instant::now();
        let end = start + Duration::from_millis(ms);
        // Open-loop load: probes leave evenly spaced at the probe rate,
        // whatever the answers; a spike adds writes at (factor - 1) times
        // that rate.
        let base = Duration::from_secs_f64(1.0 / self.exp.observe.probe_rate_per_s as f64);
        let (extra, burst) = match (&self.exp.fault, self.phase) {
            (FaultSpec::LoadSpike { factor, burst }, Phase::During) => (
                Some(Duration::from_secs_f64(
                    1.0 / (self.exp.observe.probe_rate_per_s as f64 * (*factor as f64 - 1.0)),
                )),
                *burst,
            ),
            _ => (None, false),
        };
        let (mut next_sample, mut next_base, mut next_extra) = (start, start, start);
        let mut herd_ops: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= next_sample {
                let views = self.sample().await;
                if self.phase == Phase::During {
                    if let Err(why) = self.step_schedule(&views).await {
                        return Some(why);
                    }
                }
                if let Some(why) = guard.then(|| self.ceiling_crossed()).flatten() {
                    self.observe(format!("safety: {why}; rolling back"));
                    return Some(why);
                }
                next_sample += every;
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            // A burst: the whole sampling period's extra writes leave now,
            // ahead of the base probes due at this instant.
            if let (Some(extra), true) = (extra, burst) {
                let before = next_extra;
                while next_extra < next_sample.min(end) {
                    self.launch(ProbeKind::Write);
                    next_extra += extra;
                }
                // The operator looks at every facility while the herd is
                // in flight (a few ms on, once it holds its units): what
                // the reserve is for.
                if next_extra > before {
                    herd_ops = Some(now + HERD_OPERATOR_DELAY);
                }
            }
            if herd_ops.is_some_and(|at| at <= now) {
                herd_ops = None;
                for _ in 0..self.cluster.size() {
                    self.launch(ProbeKind::Operator);
                }
            }
            while next_base <= now {
                self.base_seq += 1;
                let kind = match self.base_seq % 3 {
                    0 => ProbeKind::Operator,
                    1 => ProbeKind::Write,
                    _ => ProbeKind::Read,
                };
                self.launch(kind);
                next_base += base;
            }
            if let Some(extra) = extra {
                while next_extra <= now {
                    self.launch(ProbeKind::Write);
                    next_extra += extra;
                }
            }
            let mut wake_at = next_sample.min(next_base).min(end);
            if extra.is_some() {
                wake_at = wake_at.min(next_extra);
            }
            if let Some(at) = herd_ops {
                wake_at = wake_at.min(at);
            }
            let wake = tokio::time::sleep_until(wake_at.max(now + Duration::from_millis(1)));
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    Some(done) = self.inflight.join_next() => {
                        if let Ok((seq, p)) = done { self.done(seq, p); }
                    }
                }
            }
        }
    }

    fn done(&mut self, seq: u64, p: Probe) {
        if p.answer == Answer::Ok {
            if let Some(id) = self.markers.get(&seq) {
                self.acked.insert(id.clone());
            }
        }
        self.probes.push(p);
    }

    fn ceiling_crossed(&self) -> Option<String> {
        let now = self.ms();
        let recent: Vec<&Probe> = self
            .probes
            .iter()
            .filter(|p| p.phase == Phase::During && p.at_ms + 1_000 + p.latency_ms >= now)
            .collect();
        if recent.len() < 10 {
            return None;
        }
        let failed = recent.iter().filter(|p| p.answer.failed()).count();
        let rate = failed as f64 / recent.len() as f64;
        (rate > self.exp.safety.max_error_rate).then(|| {
            format!(
                "error rate {:.0}% over the last second ({failed} of {}) > ceiling {:.0}%",
                rate * 100.0,
                recent.len(),
                self.exp.safety.max_error_rate * 100.0
            )
        })
    }

    async fn sample(&mut self) -> Vec<Option<ClusterStatus>> {
        let views = self.views().await;
        let at_ms = self.ms();
        let every = self.exp.observe.sample_every_ms;
        let mut levels = Vec::new();
        for (i, v) in views.iter().enumerate() {
            let name = self.cluster.name(i);
            let window: Vec<&Probe> = self
                .probes
                .iter()
                .filter(|p| p.facility == i && p.at_ms + 2 * every >= at_ms)
                .collect();
            for (component, level) in component_levels(&name, v.as_ref(), &window, &self.exp) {
                levels.push((component, level));
            }
        }
        self.heatmap.record(at_ms, levels);
        let observed = self.observations_of(&views, at_ms);
        if let Some(engine) = &mut self.engine {
            engine.step(at_ms, &observed);
            if self.phase == Phase::During {
                for (c, st) in engine.troubled() {
                    if st == Status::Failed {
                        self.failed_during.insert(c.to_string());
                    }
                }
            }
        }
        self.samples.push(Sample {
            at_ms,
            phase: self.phase,
            views: views.clone(),
        });
        views
    }

    /// What the propagation engine is told about each facility's
    /// components at one sample: the API from the probes sent to it lately,
    /// the RaftPeer and the detector from its view, the backpressure
    /// controller from its admission pressure.
    fn observations_of(
        &self,
        views: &[Option<ClusterStatus>],
        at_ms: u64,
    ) -> std::collections::BTreeMap<String, Health> {
        let every = self.exp.observe.sample_every_ms;
        let mut out = std::collections::BTreeMap::new();
        for (i, v) in views.iter().enumerate() {
            let Ok(id) = self
                .cluster
                .name(i)
                .parse::<bulwark_transport::FacilityId>()
            else {
                continue;
            };
            let window: Vec<&Probe> = self
                .probes
                .iter()
                .filter(|p| p.facility == i && p.at_ms + 2 * every >= at_ms)
                .collect();
            let total = window.len().max(1) as f64;
            let errors = window.iter().filter(|p| p.answer == Answer::Error).count() as f64;
            let timeouts = window
                .iter()
                .filter(|p| p.answer == Answer::Timeout)
                .count() as f64;
            let latency_ms = window.iter().map(|p| p.latency_ms).max().unwrap_or(0);
            let Some(v) = v else {
                // No answer at all: the facility's API is down.
                out.insert(prop::component(&id, prop::API), Health::failed());
                continue;
            };
            let failing = (errors + timeouts) / total;
            let api_status = if failing >= 0.5 {
                Status::Failed
            } else if failing > 0.0 || latency_ms > self.exp.thresholds.latency_p99_ms {
                Status::Degraded
            } else {
                Status::Up
            };
            out.insert(
                prop::component(&id, prop::API),
                Health {
                    status: api_status,
                    error_rate: errors / total,
                    latency_ms,
                    queue_depth: 0,
                    timeout_rate: timeouts / total,
                },
            );
            let raft = if v.leader.is_some() {
                Status::Up
            } else {
                Status::Degraded
            };
            out.insert(
                prop::component(&id, prop::RAFT),
                Health {
                    status: raft,
                    ..Health::up()
                },
            );
            let unsure = v.peers.iter().any(|p| p.liveness != "up");
            out.insert(
                prop::component(&id, prop::DETECTOR),
                Health {
                    status: if unsure { Status::Degraded } else { Status::Up },
                    ..Health::up()
                },
            );
            let pressure = v.admission_pressure.unwrap_or(0.0);
            out.insert(
                prop::component(&id, prop::BACKPRESSURE),
                Health {
                    status: if pressure >= 0.8 {
                        Status::Degraded
                    } else {
                        Status::Up
                    },
                    queue_depth: (pressure * 1_000.0) as u64,
                    ..Health::up()
                },
            );
        }
        out
    }

    /// Sends one probe of `kind` to the next facility in turn.
    fn launch(&mut self, kind: ProbeKind) {
        let n = self.cluster.size();
        self.seq += 1;
        let seq = self.seq;
        let i = (seq as usize) % n;
        {
            let call = match kind {
                ProbeKind::Operator => ChaosCall::get("/v1/cluster"),
                ProbeKind::Read => ChaosCall::get("/v1/schedule?consistency=linearizable"),
                ProbeKind::Write => self.write_probe(i, seq),
            };
            let (c, phase, timeout) = (
                self.cluster.clone(),
                self.phase,
                Duration::from_millis(self.exp.observe.request_timeout_ms),
            );
            let at_ms = self.ms();
            self.inflight.spawn(async move {
                let sent = Instant::now();
                let (answer, latency_ms) =
                    match tokio::time::timeout(timeout, c.call(i, call)).await {
                        Ok(r) => (
                            Answer::of(r.status, r.code()),
                            sent.elapsed().as_millis() as u64,
                        ),
                        Err(_) => (Answer::Timeout, timeout.as_millis() as u64),
                    };
                let probe = Probe {
                    at_ms,
                    phase,
                    facility: i,
                    kind,
                    answer,
                    latency_ms,
                };
                (seq, probe)
            });
        }
    }

    fn write_probe(&mut self, i: usize, seq: u64) -> ChaosCall {
        let key = format!("chaos-{}-{seq}", self.run);
        if matches!(self.exp.fault, FaultSpec::LeaderKill) {
            // Markers: each acknowledged one must survive the kill.
            let id = format!("{}m{seq}", namespace_prefix(&self.run));
            self.markers.insert(seq, id.clone());
            return ChaosCall::post(
                "/v1/people",
                json!({"id": id, "name": "chaos marker", "role": "resident", "pgy": 1}),
                Some(key),
            );
        }
        self.toggles[i] = !self.toggles[i];
        let path = if self.toggles[i] {
            "/v1/assignments"
        } else {
            "/v1/unassignments"
        };
        ChaosCall::post(
            path,
            json!({"person": self.probe_person(i), "block": self.probe_block(i)}),
            Some(key),
        )
    }

    fn probe_person(&self, i: usize) -> String {
        format!("{}p{i}", namespace_prefix(&self.run))
    }

    fn probe_block(&self, i: usize) -> String {
        format!("{}b{i}", namespace_prefix(&self.run))
    }

    /// How long a lever may hold: the dead-man timer.
    fn dead_man_ms(&self) -> u64 {
        self.exp
            .safety
            .dead_man_ms
            .unwrap_or(self.exp.duration_ms + self.exp.observe.after_ms + 60_000)
    }

    /// Declares a drill on facility `i` through another facility, once per
    /// run: evidence its levers produce costs it no trust.
    async fn declare_drill(&mut self, i: usize) -> Result<(), String> {
        let n = self.cluster.size();
        if self.drilled.contains(&i) || n < 2 {
            return Ok(());
        }
        let name = self.cluster.name(i);
        // Declared before the observation's first phase; a lever pulled as
        // late as the window allows may hold its dead-man time from then.
        let o = &self.exp.observe;
        let for_ms = (o.before_ms + self.exp.duration_ms + o.after_ms)
            .saturating_add(self.dead_man_ms())
            .saturating_add(DRILL_SLACK_MS)
            .min(DRILL_MS_MAX);
        let body = json!({"facility": name, "for_ms": for_ms});
        let key = format!("chaos-{}-drill-{i}", self.run);
        let mut last = String::new();
        // Through each other facility in turn until one commits it.
        for k in 1..n {
            let via = (i + k) % n;
            let r = self
                .cluster
                .call(
                    via,
                    ChaosCall::post("/v1/admin/chaos/drills", body.clone(), Some(key.clone())),
                )
                .await;
            if r.status == 200 {
                self.drilled.insert(i);
                self.observe(format!(
                    "drill declared on {name} for {for_ms} ms (through {})",
                    self.cluster.name(via)
                ));
                return Ok(());
            }
            last = format!("{} {}", r.status, r.body);
        }
        Err(format!("could not declare the drill on {name}: {last}"))
    }

    /// Drops the run's namespace through consensus, in steps; bounded.
    async fn drop_namespace(&mut self, via: Option<usize>) -> Result<u32, String> {
        let n = self.cluster.size();
        let body = json!({"namespace": self.run});
        let mut last = String::new();
        for step in 0..NAMESPACE_DROP_STEPS_MAX {
            let key = format!("chaos-{}-drop-{step}", self.run);
            let mut done = None;
            for k in 0..n {
                let i = (via.unwrap_or(0) + k) % n;
                let call = ChaosCall::post(
                    "/v1/admin/chaos/namespace-drops",
                    body.clone(),
                    Some(key.clone()),
                );
                let r = self.cluster.call(i, call).await;
                if r.status == 200 {
                    done = Some(r.body["effect"].as_str() == Some("namespace_dropped"));
                    break;
                }
                last = format!("{}: {} {}", self.cluster.name(i), r.status, r.body);
            }
            match done {
                Some(true) => return Ok(step + 1),
                Some(false) => continue,
                None => return Err(last),
            }
        }
        Err(format!("still more after {NAMESPACE_DROP_STEPS_MAX} steps"))
    }

    /// Refuses the run after the probes may have written: their namespace
    /// is dropped first (a failure to is observed in the report).
    async fn refused_after_prepare(mut self, leader: Option<usize>, why: String) -> Report {
        let ns = namespace_prefix(&self.run);
        match self.drop_namespace(leader).await {
            Ok(steps) => self.observe(format!("namespace {ns} dropped ({steps} steps)")),
            Err(e) => self.observe(format!(
                "namespace {ns} not dropped: {e} (bulwark chaos clean --namespace {})",
                self.run
            )),
        }
        self.refused(why)
    }

    /// The facilities the fault pulls levers on.
    fn lever_targets(&self, target: Option<usize>, leader: Option<usize>) -> Vec<usize> {
        match self.exp.fault {
            FaultSpec::NetworkPartition { .. } => (0..self.cluster.size()).collect(),
            FaultSpec::FacultyLoss { .. } | FaultSpec::LoadSpike { .. } => Vec::new(),
            FaultSpec::LeaderKill => target.or(leader).into_iter().collect(),
            FaultSpec::StorageLatency { .. }
            | FaultSpec::Byzantine { .. }
            | FaultSpec::ClockSkew { .. }
            | FaultSpec::CascadingFailure { .. } => target.into_iter().collect(),
        }
    }

    async fn lever(&self, i: usize, action: Value) -> Result<(), String> {
        let dead_man = self.dead_man_ms();
        let body = json!({"action": action, "dead_man_ms": dead_man.min(3_600_000)});
        let r = self
            .cluster
            .call(i, ChaosCall::post("/v1/admin/chaos", body, None))
            .await;
        if r.status == 200 {
            Ok(())
        } else {
            Err(format!("{}: {} {}", self.cluster.name(i), r.status, r.body))
        }
    }

    /// Pulls the experiment's levers; on error, what was pulled so far
    /// (for the rollback) and why.
    async fn inject(
        &mut self,
        target: Option<usize>,
        leader: Option<usize>,
    ) -> Result<Injected, (Injected, String)> {
        let n = self.cluster.size();
        let mut inj = Injected::default();
        let all: Vec<usize> = (0..n).collect();
        let fault = self.exp.fault.clone();
        match fault {
            FaultSpec::FacultyLoss { lose } => {
                self.observe(format!(
                    "checking N-{lose} coverage on the real schedule (nothing is written)"
                ));
            }
            FaultSpec::LoadSpike { factor, .. } => {
                self.observe(format!("load spike: {factor}x the probe rate, writes"));
            }
            FaultSpec::NetworkPartition { one_way, .. } => {
                let t = target.expect("resolved");
                let me = self.cluster.name(t);
                let rest: Vec<String> = (0..n)
                    .filter(|&j| j != t)
                    .map(|j| self.cluster.name(j))
                    .collect();
                let rule =
                    json!({"Partition": {"side_a": [me], "side_b": rest, "one_way": one_way}});
                // Each facility judges its own outgoing traffic: the rule
                // goes to every one of them.
                for &i in &all {
                    if let Err(e) = self
                        .lever(i, json!({"kind": "fault_rule", "rule": rule}))
                        .await
                    {
                        return Err((inj, e));
                    }
                    inj.touched.push(i);
                }
                inj.actions.push(format!(
                    "{} partition of {me} from {rest:?}",
                    if one_way { "one-way" } else { "two-way" }
                ));
            }
            FaultSpec::StorageLatency {
                latency_ms,
                write_failure,
                ..
            } => {
                let t = target.expect("resolved");
                let action = json!({"kind": "disk", "latency_ms": latency_ms, "write_failure": write_failure, "seed": 7});
                if let Err(e) = self.lever(t, action).await {
                    return Err((inj, e));
                }
                inj.touched.push(t);
                inj.actions.push(format!(
                    "disk of {}: +{latency_ms} ms per durable write, {:.0}% write failures",
                    self.cluster.name(t),
                    write_failure * 100.0
                ));
            }
            FaultSpec::Byzantine { ref behaviour, .. } => {
                let t = target.expect("resolved");
                debug_assert!(behaviour_named(behaviour).is_some());
                if let Err(e) = self
                    .lever(t, json!({"kind": "behaviour", "behaviour": behaviour}))
                    .await
                {
                    return Err((inj, e));
                }
                inj.touched.push(t);
                inj.actions.push(format!(
                    "validator of {} lies: {behaviour}",
                    self.cluster.name(t)
                ));
            }
            FaultSpec::ClockSkew { skew_ms, .. } => {
                let t = target.expect("resolved");
                if let Err(e) = self
                    .lever(t, json!({"kind": "clock_skew", "skew_ms": skew_ms}))
                    .await
                {
                    return Err((inj, e));
                }
                inj.touched.push(t);
                inj.actions.push(format!(
                    "clock of {} skewed {skew_ms:+} ms",
                    self.cluster.name(t)
                ));
            }
            FaultSpec::CascadingFailure {
                latency_ms,
                delay_ms,
                loss,
                ..
            } => {
                let t = target.expect("resolved");
                let me = self.cluster.name(t);
                let disk = json!({"kind": "disk", "latency_ms": latency_ms, "write_failure": 0.0, "seed": 7});
                let slow = json!({"kind": "fault_rule", "rule": {"Partial": {
                    "from": {"OneOf": [me]}, "to": "Any", "fraction": 1.0, "delay_ms": delay_ms, "loss": loss}}});
                for action in [disk, slow] {
                    if let Err(e) = self.lever(t, action).await {
                        return Err((inj, e));
                    }
                }
                inj.touched.push(t);
                inj.actions.push(format!(
                    "cascade at {me}: disk +{latency_ms} ms, outgoing +{delay_ms} ms and {:.0}% loss",
                    loss * 100.0
                ));
            }
            FaultSpec::LeaderKill => {
                let t = target.or(leader).expect("resolved");
                if let Err(e) = self
                    .lever(
                        t,
                        json!({"kind": "kill_actor", "zone": "consensus", "name": "raft"}),
                    )
                    .await
                {
                    return Err((inj, e));
                }
                inj.touched.push(t);
                inj.actions.push(format!(
                    "killed the RaftPeer of leader {}",
                    self.cluster.name(t)
                ));
            }
        }
        for a in &inj.actions {
            self.observe(format!("injected: {a}"));
        }
        Ok(inj)
    }

    /// Clears every lever on every facility and confirms it from the view
    /// each answers. Bounded retries; a facility that never confirms is
    /// listed (its dead-man timer releases it).
    async fn rollback(&mut self, inj: &Injected) -> Rollback {
        let mut rb = Rollback {
            reverted: inj.actions.clone(),
            ..Rollback::default()
        };
        let timeout = Duration::from_millis(self.exp.observe.request_timeout_ms);
        for i in 0..self.cluster.size() {
            let mut last = String::new();
            for attempt in 0..ROLLBACK_ATTEMPTS {
                let body = json!({"action": {"kind": "clear"}});
                let call = self
                    .cluster
                    .call(i, ChaosCall::post("/v1/admin/chaos", body, None));
                match tokio::time::timeout(timeout, call).await {
                    Ok(r) if r.status == 200 && clean(&r.body) => {
                        last.clear();
                        break;
                    }
                    Ok(r) => last = format!("{} {}", r.status, r.body),
                    Err(_) => last = "no answer".into(),
                }
                // Backoff: 200 ms, 400 ms, … (bounded).
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(4))).await;
            }
            let name = self.cluster.name(i);
            if last.is_empty() {
                rb.confirmed.push(name);
            } else {
                self.observe(format!("{name} did not confirm the rollback: {last}"));
                rb.unconfirmed.push(name);
            }
        }
        self.observe(format!(
            "rolled back; confirmed clean: {:?}, unconfirmed: {:?}",
            rb.confirmed, rb.unconfirmed
        ));
        rb
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        mut self,
        target: Option<usize>,
        leader: Option<usize>,
        fault_at: u64,
        rolled_back_at: u64,
        rollback: Rollback,
        stopped_early: Option<String>,
    ) -> Report {
        let mut weaknesses = Vec::new();
        let phases: Vec<(Phase, PhaseMetrics)> = Phase::ALL
            .iter()
            .map(|&ph| {
                let mut m = PhaseMetrics::of(self.probes.iter().filter(|p| p.phase == ph));
                let (leaders, advance) =
                    leaders_and_advance(self.samples.iter().filter(|s| s.phase == ph));
                m.leaders = leaders;
                m.commit_advance = advance;
                (ph, m)
            })
            .collect();
        let during = phases[1].1.clone();
        let th = self.exp.thresholds.clone();

        // Availability where the fault did not reach.
        let untouched: Vec<&Probe> = self
            .probes
            .iter()
            .filter(|p| p.phase == Phase::During && Some(p.facility) != target)
            .collect();
        let kind = self.exp.fault.clone();
        let judged_for_availability = !matches!(
            kind,
            FaultSpec::LeaderKill | FaultSpec::LoadSpike { .. } | FaultSpec::FacultyLoss { .. }
        );
        if judged_for_availability && !untouched.is_empty() {
            let m = PhaseMetrics::of(untouched.iter().copied());
            if m.served() < th.availability_min {
                weaknesses.push(Finding {
                    title: "facilities outside the blast radius lost availability".into(),
                    measured: format!(
                        "{:.1}% of {} probes served (ok or rule answer); {} shed, {} refused, {} errors, {} timeouts",
                        m.served() * 100.0, m.probes, m.shed, m.refused, m.errors, m.timeouts
                    ),
                    required: format!("at least {:.1}%", th.availability_min * 100.0),
                });
            }
        }
        if !matches!(kind, FaultSpec::LoadSpike { .. }) && during.p99_ms > th.latency_p99_ms {
            weaknesses.push(Finding {
                title: "latency rose above the objective while the fault was held".into(),
                measured: format!(
                    "p99 {} ms (before: {} ms)",
                    during.p99_ms, phases[0].1.p99_ms
                ),
                required: format!("p99 at most {} ms", th.latency_p99_ms),
            });
        }
        match &kind {
            FaultSpec::NetworkPartition { .. } => {
                let t = target.expect("resolved");
                self.partition_findings(t, fault_at, &mut weaknesses);
            }
            FaultSpec::LeaderKill => {
                self.leader_kill_findings(leader, fault_at, &mut weaknesses)
                    .await;
            }
            FaultSpec::LoadSpike { factor, .. } => {
                self.spike_findings(*factor, &during, &mut weaknesses);
            }
            FaultSpec::Byzantine { .. } => {
                self.byzantine_findings(target.expect("resolved"), &mut weaknesses);
            }
            FaultSpec::FacultyLoss { lose } => {
                self.coverage_findings(leader.unwrap_or(0), *lose, &mut weaknesses)
                    .await;
            }
            FaultSpec::StorageLatency { .. }
            | FaultSpec::ClockSkew { .. }
            | FaultSpec::CascadingFailure { .. } => {
                self.finality_findings(target, &mut weaknesses);
            }
        }
        // Recovery after the rollback.
        let recovery = self
            .recovered_at(rolled_back_at)
            .map(|at| at - rolled_back_at);
        if recovery.is_none_or(|ms| ms > th.recover_within_ms) {
            weaknesses.push(Finding {
                title: "the cluster did not recover in time after the rollback".into(),
                measured: recovery
                    .map_or("not within the after phase".into(), |ms| format!("{ms} ms")),
                required: format!(
                    "one leader and one commit index within {} ms",
                    th.recover_within_ms
                ),
            });
        }
        if !rollback.unconfirmed.is_empty() {
            weaknesses.push(Finding {
                title: "rollback not confirmed on every facility".into(),
                measured: format!("unconfirmed: {:?}", rollback.unconfirmed),
                required: "every facility confirms it holds no chaos lever".into(),
            });
        }
        // The run's writes leave the schedule, through consensus.
        let ns = namespace_prefix(&self.run);
        match self.drop_namespace(leader).await {
            Ok(steps) => self.observe(format!("namespace {ns} dropped ({steps} steps)")),
            Err(why) => {
                self.observe(format!("namespace {ns} not dropped: {why}"));
                weaknesses.push(Finding {
                    title: "the experiment's writes were not removed from the schedule".into(),
                    measured: why,
                    required: format!(
                        "namespace {ns} dropped (by hand: bulwark chaos clean --namespace {})",
                        self.run
                    ),
                });
            }
        }
        let timeline = self.timeline();
        let verdict = match stopped_early {
            Some(why) => {
                weaknesses.push(Finding {
                    title:
                        "the error-rate ceiling was crossed; the experiment was rolled back early"
                            .into(),
                    measured: why.clone(),
                    required: format!(
                        "error rate at most {:.0}%",
                        self.exp.safety.max_error_rate * 100.0
                    ),
                });
                Verdict::RolledBack(why)
            }
            None if weaknesses.is_empty() => Verdict::Passed,
            None => Verdict::WeaknessesFound,
        };
        self.observe(format!("finished: {verdict:?}"));
        Report {
            name: self.exp.name.clone(),
            kind: kind.kind().into(),
            verdict,
            observations: self.observations,
            weaknesses,
            phases,
            heatmap: self.heatmap,
            timeline,
            rollback,
            probes: self.probes,
        }
    }

    /// First sample after `from` where every facility answers, all name
    /// one leader and one commit index.
    fn recovered_at(&self, from: u64) -> Option<u64> {
        self.samples
            .iter()
            .filter(|s| s.at_ms >= from)
            .find(|s| {
                let views: Option<Vec<&ClusterStatus>> =
                    s.views.iter().map(Option::as_ref).collect();
                views.is_some_and(|v| {
                    v.iter()
                        .all(|c| c.leader.is_some() && c.leader == v[0].leader)
                        && v.iter().all(|c| c.commit == v[0].commit)
                })
            })
            .map(|s| s.at_ms)
    }

    fn partition_findings(&mut self, t: usize, fault_at: u64, weaknesses: &mut Vec<Finding>) {
        let th = self.exp.thresholds.clone();
        let fault_end = self.fault_end.unwrap_or(u64::MAX);
        // The cut-off facility must not commit alone.
        let committed_alone = self
            .probes
            .iter()
            .filter(|p| {
                p.phase == Phase::During
                    && p.facility == t
                    && p.kind == ProbeKind::Write
                    && p.at_ms >= fault_at + th.detect_within_ms
                    && p.at_ms < fault_end
                    && p.answer == Answer::Ok
            })
            .count();
        if committed_alone > 0 {
            weaknesses.push(Finding {
                title: "the cut-off facility accepted CP writes after detection".into(),
                measured: format!("{committed_alone} writes answered 2xx there"),
                required: "503 PARTITIONED for CP writes on a minority".into(),
            });
        }
        // Detection: the cut-off facility knows it is cut off.
        let seen = self.samples.iter().find(|s| {
            s.at_ms >= fault_at
                && s.views[t]
                    .as_ref()
                    .is_some_and(|v| v.partition != "CONNECTED")
        });
        match seen {
            Some(s) => {
                let ms = s.at_ms - fault_at;
                let state = s.views[t]
                    .as_ref()
                    .map(|v| v.partition.clone())
                    .unwrap_or_default();
                self.observe(format!(
                    "{} saw itself {state} {ms} ms after the cut",
                    self.cluster.name(t)
                ));
                if ms > th.detect_within_ms {
                    weaknesses.push(Finding {
                        title: "the partition was detected late".into(),
                        measured: format!("{ms} ms"),
                        required: format!("within {} ms", th.detect_within_ms),
                    });
                }
            }
            None => weaknesses.push(Finding {
                title: "the cut-off facility never saw the partition".into(),
                measured: "partition state stayed CONNECTED".into(),
                required: format!("detected within {} ms", th.detect_within_ms),
            }),
        }
    }

    async fn leader_kill_findings(
        &mut self,
        leader: Option<usize>,
        fault_at: u64,
        weaknesses: &mut Vec<Finding>,
    ) {
        let th = self.exp.thresholds.clone();
        let old = leader.map(|l| self.cluster.name(l));
        let term0 = self
            .samples
            .iter()
            .rev()
            .find(|s| s.at_ms < fault_at)
            .and_then(|s| s.views.iter().flatten().filter_map(|v| v.term).max());
        // A leader in a later term, agreed by a majority.
        let n = self.cluster.size();
        let elected = self.samples.iter().find(|s| {
            s.at_ms >= fault_at && {
                let later: Vec<&ClusterStatus> = s
                    .views
                    .iter()
                    .flatten()
                    .filter(|v| v.leader.is_some() && v.term > term0)
                    .collect();
                later.len() * 2 > n
            }
        });
        match elected {
            Some(s) => {
                let ms = s.at_ms - fault_at;
                let who = s
                    .views
                    .iter()
                    .flatten()
                    .find_map(|v| v.leader.clone())
                    .unwrap_or_default();
                self.observe(format!(
                    "leader {who} (was {old:?}) elected {ms} ms after the kill"
                ));
                if ms > th.detect_within_ms {
                    weaknesses.push(Finding {
                        title: "failover was slow".into(),
                        measured: format!("{ms} ms to a new term's leader"),
                        required: format!("within {} ms", th.detect_within_ms),
                    });
                }
            }
            None => weaknesses.push(Finding {
                title: "no new leader after the kill".into(),
                measured: "no later term with a leader during the run".into(),
                required: format!("within {} ms", th.detect_within_ms),
            }),
        }
        // Every acknowledged marker is on every facility.
        let mut missing = 0usize;
        let mut checked = 0usize;
        let acked_ids: Vec<String> = self.acked.iter().cloned().collect();
        for i in 0..n {
            let r = self
                .cluster
                .call(i, ChaosCall::get("/v1/schedule?consistency=linearizable"))
                .await;
            let Some(people) = r.body.get("people").and_then(Value::as_array) else {
                continue;
            };
            let have: std::collections::BTreeSet<&str> = people
                .iter()
                .filter_map(|p| p.get("id").and_then(Value::as_str))
                .collect();
            checked += 1;
            missing += acked_ids
                .iter()
                .filter(|id| !have.contains(id.as_str()))
                .count();
        }
        self.observe(format!(
            "{} acknowledged marker writes checked on {checked} facilities: {missing} missing",
            acked_ids.len()
        ));
        if missing > 0 {
            weaknesses.push(Finding {
                title: "acknowledged writes were lost".into(),
                measured: format!("{missing} acknowledged markers missing"),
                required: "every acknowledged write on every facility".into(),
            });
        }
        if checked < n {
            weaknesses.push(Finding {
                title: "not every facility served a linearizable read after the run".into(),
                measured: format!("{checked} of {n}"),
                required: "all".into(),
            });
        }
    }

    fn spike_findings(
        &mut self,
        factor: u32,
        during: &PhaseMetrics,
        weaknesses: &mut Vec<Finding>,
    ) {
        let th = self.exp.thresholds.clone();
        let ops: Vec<Answer> = self
            .probes
            .iter()
            .filter(|p| p.phase == Phase::During && p.kind == ProbeKind::Operator)
            .map(|p| p.answer)
            .collect();
        let refused = ops.iter().filter(|a| **a != Answer::Ok).count();
        self.observe(format!(
            "spike {factor}x: {} probes, {} shed (429), {} errors, {} timeouts, p99 {} ms; operator requests {} of {} served",
            during.probes, during.shed, during.errors, during.timeouts, during.p99_ms,
            ops.len() - refused, ops.len()
        ));
        if refused > 0 {
            weaknesses.push(Finding {
                title: "operator requests were refused during the spike".into(),
                measured: format!(
                    "{refused} of {} GET /v1/cluster not answered 200",
                    ops.len()
                ),
                required:
                    "every operator request served (the operator pool's reserve is never lent)"
                        .into(),
            });
        }
        if during.shed == 0 && during.p99_ms > th.latency_p99_ms {
            weaknesses.push(Finding {
                title: "no load was shed while latency exceeded its objective".into(),
                measured: format!("0 answers 429, p99 {} ms", during.p99_ms),
                required: format!(
                    "backpressure (429) before p99 exceeds {} ms",
                    th.latency_p99_ms
                ),
            });
        }
        if during.error_rate > 0.01 {
            weaknesses.push(Finding {
                title: "the spike caused errors instead of early refusals".into(),
                measured: format!("{:.1}% errors or timeouts", during.error_rate * 100.0),
                required: "overload answered 429 with Retry-After, errors at most 1%".into(),
            });
        }
    }

    /// Ledger heights and evidence counts of every facility but `skip`, at
    /// the first and the last sample of a phase.
    fn ledger_span(
        &self,
        phase: Phase,
        skip: Option<usize>,
    ) -> Option<((u64, usize), (u64, usize))> {
        let at = |s: &Sample| -> Option<(u64, usize)> {
            let ls: Vec<_> = s
                .views
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .filter_map(|(_, v)| v.as_ref()?.ledger.clone())
                .collect();
            (!ls.is_empty()).then(|| {
                (
                    ls.iter().map(|l| l.height).max().unwrap_or(0),
                    ls.iter().map(|l| l.evidence).max().unwrap_or(0),
                )
            })
        };
        let seen: Vec<(u64, usize)> = self
            .samples
            .iter()
            .filter(|s| s.phase == phase)
            .filter_map(at)
            .collect();
        Some((*seen.first()?, *seen.last()?))
    }

    fn finality_findings(&mut self, target: Option<usize>, weaknesses: &mut Vec<Finding>) {
        let during = self.phases_commit_advance(Phase::During);
        if let Some(((h0, _), (h1, _))) = self.ledger_span(Phase::During, target) {
            self.observe(format!(
                "while the fault was held: commit advanced {during}, ledger finalized {} heights on the other facilities",
                h1 - h0
            ));
            if during > 0 && h1 == h0 {
                weaknesses.push(Finding {
                    title: "finality stalled while commits went on".into(),
                    measured: format!("commit +{during}, ledger +0"),
                    required: "committed entries become final".into(),
                });
            }
        }
        // The blast radius: other facilities' components must not fail.
        let spread: Vec<String> = self
            .heatmap
            .components
            .iter()
            .filter(|c| {
                target.is_none_or(|t| !c.starts_with(&format!("{}/", self.cluster.name(t))))
            })
            .filter(|c| {
                self.heatmap.samples.iter().any(|s| {
                    s.at_ms >= self.during_from()
                        && s.at_ms < self.during_to()
                        && s.levels.get(*c) == Some(&Level::Critical)
                })
            })
            .cloned()
            .collect();
        let engine_spread: Vec<String> = self
            .failed_during
            .iter()
            .filter(|c| {
                target.is_none_or(|t| !c.starts_with(&format!("{}/", self.cluster.name(t))))
            })
            .cloned()
            .collect();
        if !engine_spread.is_empty() {
            weaknesses.push(Finding {
                title: "the propagation engine saw the failure reach other facilities".into(),
                measured: format!("failed outside the target: {engine_spread:?}"),
                required: "failures stay inside the target facility".into(),
            });
        }
        if !spread.is_empty() {
            weaknesses.push(Finding {
                title: "the failure spread beyond the target facility".into(),
                measured: format!("critical outside the blast radius: {spread:?}"),
                required: "components of other facilities never critical".into(),
            });
        }
    }

    fn during_from(&self) -> u64 {
        self.samples
            .iter()
            .find(|s| s.phase == Phase::During)
            .map_or(u64::MAX, |s| s.at_ms)
    }

    fn during_to(&self) -> u64 {
        self.samples
            .iter()
            .find(|s| s.phase == Phase::After)
            .map_or(u64::MAX, |s| s.at_ms)
    }

    fn phases_commit_advance(&self, phase: Phase) -> u64 {
        leaders_and_advance(self.samples.iter().filter(|s| s.phase == phase)).1
    }

    fn byzantine_findings(&mut self, t: usize, weaknesses: &mut Vec<Finding>) {
        self.finality_findings(Some(t), weaknesses);
        let before = self.ledger_span(Phase::Before, Some(t)).map(|(a, _)| a.1);
        let after = self
            .ledger_span(Phase::After, Some(t))
            .map(|(_, b)| b.1)
            .or(self.ledger_span(Phase::During, Some(t)).map(|(_, b)| b.1));
        let recorded = after.unwrap_or(0).saturating_sub(before.unwrap_or(0));
        self.observe(format!(
            "evidence recorded by the honest facilities during the run: {recorded}"
        ));
        if recorded == 0 {
            weaknesses.push(Finding {
                title: "the lie left no evidence".into(),
                measured: "no new evidence on any honest facility".into(),
                required: "the lying validator named by evidence".into(),
            });
        }
    }

    async fn coverage_findings(&mut self, via: usize, lose: u8, weaknesses: &mut Vec<Finding>) {
        let r = self
            .cluster
            .call(via, ChaosCall::get(format!("/v1/coverage?lose={lose}")))
            .await;
        if r.status != 200 {
            self.observe(format!("coverage check failed: {} {}", r.status, r.body));
            weaknesses.push(Finding {
                title: "the coverage check could not run".into(),
                measured: format!("GET /v1/coverage answered {}", r.status),
                required: "200".into(),
            });
            return;
        }
        let checked = r.body.get("scenarios").and_then(Value::as_u64).unwrap_or(0);
        let gaps = r
            .body
            .get("gaps")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        self.observe(format!(
            "N-{lose}: {checked} loss scenarios checked on the real schedule, {} leave a block understaffed",
            gaps.len()
        ));
        for g in gaps.iter().take(20) {
            let lost = g.get("lost").cloned().unwrap_or(Value::Null);
            let block = g.get("block").and_then(Value::as_str).unwrap_or("?");
            let staffed = g.get("staffed").and_then(Value::as_u64).unwrap_or(0);
            let required = g.get("required").and_then(Value::as_u64).unwrap_or(0);
            weaknesses.push(Finding {
                title: format!(
                    "N-{lose} contingency fails: losing {lost} leaves {block} understaffed"
                ),
                measured: format!("{staffed} of {required} after trying every eligible cover"),
                required: format!("{required} of {required}"),
            });
        }
        if gaps.len() > 20 {
            weaknesses.push(Finding {
                title: format!("N-{lose}: {} more understaffed scenarios", gaps.len() - 20),
                measured: format!("{} gaps", gaps.len()),
                required: "none".into(),
            });
        }
    }

    /// The propagation engine's causal timeline (each root, then what it
    /// led to), then each heatmap component's level changes.
    fn timeline(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Some(engine) = &self.engine {
            out.extend(engine.timeline_text().lines().map(str::to_string));
            if let Err(v) = engine.check() {
                out.push(format!(
                    "(the propagation timeline failed its own check: {v})"
                ));
            }
        }
        out.extend(self.level_changes());
        out
    }

    /// Each heatmap component's level changes, in time order.
    fn level_changes(&self) -> Vec<String> {
        let mut last: std::collections::BTreeMap<&str, Level> = Default::default();
        let mut out = Vec::new();
        for s in &self.heatmap.samples {
            for (c, l) in &s.levels {
                let prev = last.insert(c.as_str(), *l);
                if prev.is_some_and(|p| p != *l) || (prev.is_none() && *l != Level::Healthy) {
                    out.push(format!(
                        "t={}ms {c} {} -> {}",
                        s.at_ms,
                        prev.map_or("(first seen)", Level::name),
                        l.name()
                    ));
                }
            }
        }
        out
    }
}

/// Whether a chaos view holds nothing.
fn clean(view: &Value) -> bool {
    view.get("rules")
        .and_then(Value::as_array)
        .is_some_and(|r| r.is_empty())
        && view.get("skew_ms").and_then(Value::as_i64) == Some(0)
        && view.get("disk_latency_ms").and_then(Value::as_u64) == Some(0)
        && view.get("disk_write_failure").and_then(Value::as_f64) == Some(0.0)
        && view.get("behaviour").is_none_or(Value::is_null)
}

/// Ok(leader) when every facility answered, all name one leader and every
/// peer is up; otherwise why not.
fn healthy(views: &[Option<ClusterStatus>]) -> Result<String, String> {
    let mut leader: Option<&String> = None;
    for (i, v) in views.iter().enumerate() {
        let v = v.as_ref().ok_or(format!("facility #{i} did not answer"))?;
        let l = v
            .leader
            .as_ref()
            .ok_or(format!("{} knows no leader", v.facility))?;
        if leader.is_some_and(|x| x != l) {
            return Err("facilities name different leaders".into());
        }
        leader = Some(l);
        if let Some(p) = v.peers.iter().find(|p| p.liveness != "up") {
            return Err(format!("{} sees {} {}", v.facility, p.id, p.liveness));
        }
    }
    leader.cloned().ok_or("no facilities".into())
}

fn leaders_and_advance<'a>(samples: impl Iterator<Item = &'a Sample>) -> (Vec<String>, u64) {
    let mut leaders: Vec<String> = Vec::new();
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for s in samples {
        for v in s.views.iter().flatten() {
            if let Some(l) = &v.leader {
                if leaders.last() != Some(l) {
                    leaders.push(l.clone());
                }
            }
            if let Some(c) = v.commit {
                lo = lo.min(c);
                hi = hi.max(c);
            }
        }
    }
    (
        leaders,
        hi.saturating_sub(if lo == u64::MAX { hi } else { lo }),
    )
}

/// Each component of one facility at one sample: api from the probes sent
/// to it lately; consensus, detection and flow from its view.
fn component_levels(
    name: &str,
    view: Option<&ClusterStatus>,
    probes: &[&Probe],
    exp: &Experiment,
) -> Vec<(String, Level)> {
    let api = if probes.is_empty() {
        if view.is_some() {
            Level::Healthy
        } else {
            Level::Critical
        }
    } else {
        let failed =
            probes.iter().filter(|p| p.answer.failed()).count() as f64 / probes.len() as f64;
        let refused = probes
            .iter()
            .filter(|p| matches!(p.answer, Answer::Shed | Answer::Refused))
            .count() as f64
            / probes.len() as f64;
        let slow = probes
            .iter()
            .any(|p| p.latency_ms > exp.thresholds.latency_p99_ms);
        if failed >= 0.5 {
            Level::Critical
        } else if failed > 0.0 || refused >= 0.5 {
            Level::Warning
        } else if refused > 0.0 || slow {
            Level::Degraded
        } else {
            Level::Healthy
        }
    };
    let mut out = vec![(format!("{name}/api"), api)];
    let Some(v) = view else {
        for c in ["consensus", "detection", "flow"] {
            out.push((format!("{name}/{c}"), Level::Critical));
        }
        return out;
    };
    let consensus = match (&v.leader, v.partition.as_str()) {
        (Some(_), "CONNECTED") => Level::Healthy,
        (Some(_), _) => Level::Degraded,
        (None, _) => Level::Warning,
    };
    let down = v.peers.iter().filter(|p| p.liveness == "down").count();
    let suspect = v.peers.iter().filter(|p| p.liveness == "suspect").count();
    let detection = if down * 2 >= v.peers.len().max(1) && down > 0 {
        Level::Critical
    } else if down > 0 {
        Level::Warning
    } else if suspect > 0 {
        Level::Degraded
    } else {
        Level::Healthy
    };
    let pressure = v.admission_pressure.unwrap_or(0.0);
    let open = v
        .breakers
        .iter()
        .any(|b| b.facility == v.facility && b.state != "closed");
    let rejecting = v
        .bulkheads
        .iter()
        .any(|b| b.rejections > 0 && b.allocated >= b.capacity);
    let flow = if pressure >= 1.0 {
        Level::Critical
    } else if pressure >= 0.8 || open || rejecting {
        Level::Warning
    } else if pressure >= 0.5 {
        Level::Degraded
    } else {
        Level::Healthy
    };
    out.push((format!("{name}/consensus"), consensus));
    out.push((format!("{name}/detection"), detection));
    out.push((format!("{name}/flow"), flow));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_experiment_parses_and_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut kinds = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let exp = load_experiment(&path).unwrap_or_else(|e| panic!("{e}"));
            kinds.insert(exp.fault.kind());
        }
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            [
                "byzantine",
                "cascading_failure",
                "clock_skew",
                "faculty_loss",
                "leader_kill",
                "load_spike",
                "network_partition",
                "storage_latency"
            ],
            "one shipped experiment per kind"
        );
    }

    #[test]
    fn bad_experiment_files_name_the_key_or_field() {
        let unknown = "name = \"x\"\nblast_radius = 0.5\nduration_ms = 10\nspeed = 3\n[fault]\nkind = \"leader_kill\"\n";
        let e = parse_experiment(unknown, "x.toml").unwrap_err().to_string();
        assert!(e.contains("speed"), "{e}");
        let bad_kind =
            "name = \"x\"\nblast_radius = 0.5\nduration_ms = 10\n[fault]\nkind = \"meteor\"\n";
        let e = parse_experiment(bad_kind, "x.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("meteor"), "{e}");
        let range =
            "name = \"x\"\nblast_radius = 2.0\nduration_ms = 10\n[fault]\nkind = \"leader_kill\"\n";
        let e = parse_experiment(range, "x.toml").unwrap_err().to_string();
        assert!(e.contains("blast_radius"), "{e}");
    }

    fn view(facility: &str, leader: Option<&str>, peers: &[(&str, &str)]) -> ClusterStatus {
        serde_json::from_value(json!({
            "facility": facility, "members": [], "leader": leader, "term": 2, "commit": 5,
            "applied": 5, "partition": "CONNECTED",
            "peers": peers.iter().map(|(id, l)| json!({"id": id, "link": "up", "phi": 0.1, "liveness": l})).collect::<Vec<_>>(),
            "breakers": [], "bulkheads": [], "admission_pressure": 0.0, "ledger": null
        }))
        .unwrap()
    }

    #[test]
    fn health_needs_every_answer_one_leader_and_every_peer_up() {
        let ok = vec![
            Some(view("alpha", Some("alpha"), &[("bravo", "up")])),
            Some(view("bravo", Some("alpha"), &[("alpha", "up")])),
        ];
        assert_eq!(healthy(&ok), Ok("alpha".to_string()));
        let mut missing = ok.clone();
        missing[1] = None;
        assert!(healthy(&missing).unwrap_err().contains("did not answer"));
        let split = vec![
            Some(view("alpha", Some("alpha"), &[])),
            Some(view("bravo", Some("bravo"), &[])),
        ];
        assert!(healthy(&split).unwrap_err().contains("different leaders"));
        let suspect = vec![Some(view("alpha", Some("alpha"), &[("bravo", "suspect")]))];
        assert!(healthy(&suspect).unwrap_err().contains("suspect"));
    }
}
