//! A Raft cluster in the harness: N facilities over SimNet on virtual time,
//! each with a RaftPeer, plus the checkers that watch every step.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_actors::bft::{bft_child, validator, AppliedFeed, Behaviour, BftConfig, BftSetup};
use bulwark_actors::cap::gate::{
    gate_child, GateMsg, GateOutcome, GateSetup, ReadError, Staleness, CAP_GATE,
};
use bulwark_actors::cap::heal::{
    healer_child, ConflictPolicy, HealerMsg, HealerSetup, Report, HEALER,
};
use bulwark_actors::cap::Consistency;
use bulwark_actors::detect::{detector_child, ClusterView, DetectConfig, Detection};
use bulwark_actors::flow::mesh::{breakers_child, MeshSetup};
use bulwark_actors::keys::Keyring;
use bulwark_actors::raft::{
    inspect, raft_child, raft_peer, AppliedEntry, ProposeOutcome, RaftConfig, RaftMsg, RaftSetup,
    RaftStatus, ReadOutcome,
};
use bulwark_actors::schedule::{
    Block, BlockId, Command, IdempotencyKey, Op, Person, PersonId, Pool, Role, ScheduleState,
};
use bulwark_runtime::Harness;
use bulwark_runtime::Zone;
use bulwark_transport::FacilityId;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Longest a test call waits for an answer (virtual time).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// What the applied-entry tap and the status polls have seen, and every
/// broken invariant.
#[derive(Default)]
pub struct Observed {
    /// index -> (term, hash, first facility to apply it).
    pub applied: BTreeMap<u64, (u64, [u8; 32], FacilityId)>,
    /// term -> the facility seen leading it.
    pub leaders: BTreeMap<u64, FacilityId>,
    /// Per facility, the last index applied since its last start.
    pub last_applied: BTreeMap<FacilityId, u64>,
    /// Broken invariants, in the order seen.
    pub violations: Vec<String>,
}

impl Observed {
    /// Committed entries are never lost or reordered: every facility
    /// applies the same entry at each index, in index order.
    pub fn on_applied(&mut self, f: &FacilityId, e: &AppliedEntry) {
        match self.applied.get(&e.index) {
            Some((term, hash, first)) if (*term, *hash) != (e.term, e.hash) => {
                self.violations.push(format!(
                    "{f} applied index {} term {} but {first} applied term {term} there",
                    e.index, e.term
                ));
            }
            Some(_) => {}
            None => {
                self.applied.insert(e.index, (e.term, e.hash, f.clone()));
            }
        }
        let last = self.last_applied.entry(f.clone()).or_insert(0);
        if *last != 0 && e.index != *last + 1 {
            self.violations
                .push(format!("{f} applied {} right after {}", e.index, *last));
        }
        *last = e.index;
    }

    /// One leader per term.
    pub fn on_status(&mut self, s: &RaftStatus) {
        if !s.is_leader {
            return;
        }
        match self.leaders.get(&s.term) {
            Some(l) if *l != s.facility => self.violations.push(format!(
                "two leaders in term {}: {l} and {}",
                s.term, s.facility
            )),
            Some(_) => {}
            None => {
                self.leaders.insert(s.term, s.facility.clone());
            }
        }
    }

    /// A facility restarted: its applied sequence starts again after its
    /// snapshot.
    pub fn on_restart(&mut self, f: &FacilityId) {
        self.last_applied.insert(f.clone(), 0);
    }
}

/// A harness with a RaftPeer on every facility.
pub struct Cluster {
    pub h: Harness,
    pub observed: Arc<Mutex<Observed>>,
    pub configs: Vec<RaftConfig>,
    /// Each facility's keyring (deterministic from the seed).
    pub rings: Vec<Keyring>,
    /// Each facility's detection handle, when the detection zone runs.
    pub detections: Vec<Detection>,
    next_key: u64,
}

/// The detection zone and the healer beside the RaftPeers.
#[derive(Clone)]
pub struct CapPlan {
    pub detect: DetectConfig,
    pub policy: ConflictPolicy,
    /// Leadership follows the detector.
    pub leadership: bool,
}

thread_local! {
    /// Keyrings the next cluster started on this thread takes
    /// ([`Cluster::start_bft_rings`]).
    static RINGS: std::cell::RefCell<Option<Vec<Keyring>>> = const { std::cell::RefCell::new(None) };
}

/// Validators to run beside the RaftPeers: settings and each facility's
/// behaviour.
#[derive(Clone)]
pub struct BftPlan {
    pub config: BftConfig,
    pub behaviours: Vec<Behaviour>,
    /// Each facility's breakers for its validator's fetches (empty: none).
    pub breakers: Vec<bulwark_actors::flow::mesh::Breakers>,
}

/// Per-facility settings for `seed`: the same check-quorum lease for all,
/// and a fixed, different campaign timeout each (`max = min + 1`, so
/// raft-rs's `thread_rng` draw has one value).
pub fn configs_for(n: usize, seed: u64) -> Vec<RaftConfig> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_e1ec);
    // Distinct timeouts, two ticks apart, in a seeded order: equal fixed
    // timeouts would split the vote the same way every round.
    let mut mins: Vec<usize> = (0..n).map(|k| 10 + 2 * k).collect();
    mins.shuffle(&mut rng);
    mins.into_iter()
        .map(|min| RaftConfig {
            election_ticks: 10,
            election_ticks_min: min,
            election_ticks_max: min + 1,
            // A short snapshot interval, so compaction runs in tests.
            snapshot_every_entries: 40,
            ..RaftConfig::default()
        })
        .collect()
}

impl Cluster {
    pub async fn start(n: usize, seed: u64) -> Cluster {
        Self::start_with(n, seed, configs_for(n, seed)).await
    }

    pub async fn start_with(n: usize, seed: u64, configs: Vec<RaftConfig>) -> Cluster {
        Self::start_custom(n, seed, configs, |_, s| s).await
    }

    /// Like [`Cluster::start_with`], with `custom` adjusting each
    /// facility's setup.
    pub async fn start_custom(
        n: usize,
        seed: u64,
        configs: Vec<RaftConfig>,
        custom: impl Fn(usize, RaftSetup) -> RaftSetup + Send + Sync + 'static,
    ) -> Cluster {
        Self::start_full(n, seed, configs, custom, None, None).await
    }

    /// A cluster whose facilities also run the failure detector, the
    /// CapGate, the Healer and the breaker mesh.
    pub async fn start_cap(n: usize, seed: u64, plan: CapPlan) -> Cluster {
        Self::start_full(n, seed, configs_for(n, seed), |_, s| s, None, Some(plan)).await
    }

    /// A cluster whose facilities also run BftValidators.
    pub async fn start_bft(n: usize, seed: u64, plan: BftPlan) -> Cluster {
        Self::start_full(n, seed, configs_for(n, seed), |_, s| s, Some(plan), None).await
    }

    /// Like [`Cluster::start_bft`], with `rings` as the facilities'
    /// keyrings (a genesis set of some of them, next keys held).
    pub async fn start_bft_rings(
        n: usize,
        seed: u64,
        plan: BftPlan,
        rings: Vec<Keyring>,
    ) -> Cluster {
        RINGS.with(|r| *r.borrow_mut() = Some(rings));
        Self::start_bft(n, seed, plan).await
    }

    pub async fn start_full(
        n: usize,
        seed: u64,
        configs: Vec<RaftConfig>,
        custom: impl Fn(usize, RaftSetup) -> RaftSetup + Send + Sync + 'static,
        bft: Option<BftPlan>,
        cap: Option<CapPlan>,
    ) -> Cluster {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let obs = observed.clone();
        let cfgs = configs.clone();
        let members: Vec<FacilityId> = (0..n).map(harness_id).collect();
        let by_id = Keyring::deterministic(&members, seed);
        let rings: Vec<Keyring> = RINGS
            .with(|r| r.borrow_mut().take())
            .unwrap_or_else(|| members.iter().map(|f| by_id[f].clone()).collect());
        let rings2 = rings.clone();
        // Feeds outlive restarts of the actors (as in the binary).
        let feeds: Vec<AppliedFeed> = (0..n)
            .map(|_| AppliedFeed::new(BftConfig::default().feed_len_max))
            .collect();
        // Detection handles outlive restarts of the actors, as in the binary.
        let detections: Vec<Detection> = match &cap {
            Some(plan) => members
                .iter()
                .map(|f| {
                    let peers: Vec<FacilityId> =
                        members.iter().filter(|p| *p != f).cloned().collect();
                    Detection::new(f.clone(), &peers, plan.detect.clone())
                })
                .collect(),
            None => Vec::new(),
        };
        let dets = detections.clone();
        let h = Harness::builder(n, seed)
            .children(move |i| {
                let obs = obs.clone();
                let mut setup = RaftSetup::new(members.clone(), rings2[i].clone());
                setup.config = cfgs[i].clone();
                setup.store_id_seed = Some(seed);
                let tap: bulwark_actors::raft::AppliedTap =
                    Arc::new(move |f: &FacilityId, e: &AppliedEntry| {
                        obs.lock().unwrap().on_applied(f, e)
                    });
                let mut children = Vec::new();
                match &bft {
                    Some(plan) => {
                        setup.tap = Some(feeds[i].tap(Some(tap)));
                        children.push(bft_child(BftSetup {
                            keyring: rings2[i].clone(),
                            config: plan.config.clone(),
                            behaviour: plan.behaviours[i],
                            feed: feeds[i].clone(),
                            breakers: plan.breakers.get(i).cloned(),
                        }));
                    }
                    None => setup.tap = Some(tap),
                }
                if let Some(plan) = &cap {
                    let d = dets[i].clone();
                    if plan.leadership {
                        setup.detection = Some(d.clone());
                    }
                    children.push(detector_child(d.clone()));
                    children.push(gate_child(GateSetup::new(d.clone())));
                    children.push(healer_child(HealerSetup {
                        policy: plan.policy,
                        ..HealerSetup::new(d.clone())
                    }));
                    children.push(breakers_child(MeshSetup {
                        detection: Some(d),
                        ..MeshSetup::default()
                    }));
                }
                children.insert(0, raft_child(custom(i, setup)));
                children
            })
            .start()
            .await
            .expect("harness starts");
        Cluster {
            h,
            observed,
            configs,
            rings,
            detections,
            next_key: 1,
        }
    }

    /// Facility `i`'s validator status, if it runs.
    pub async fn bft_status(&self, i: usize) -> Option<bulwark_actors::bft::BftStatus> {
        if !self.h.is_up(i) {
            return None;
        }
        bulwark_actors::bft::status(&validator(self.h.node(i))?).await
    }

    pub fn n(&self) -> usize {
        self.h.ids().len()
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.configs[0].tick_ms)
    }

    /// Facility `i`'s campaign timeout.
    pub fn election_timeout(&self, i: usize) -> Duration {
        self.tick() * self.configs[i].election_ticks_min as u32
    }

    pub fn violations(&self) -> Vec<String> {
        self.observed.lock().unwrap().violations.clone()
    }

    pub async fn status(&self, i: usize) -> Option<RaftStatus> {
        if !self.h.is_up(i) {
            return None;
        }
        let peer = raft_peer(self.h.node(i))?;
        let s = peer
            .call(RaftMsg::Status, Some(CALL_TIMEOUT))
            .await
            .ok()?
            .success_or(())
            .ok()?;
        self.observed.lock().unwrap().on_status(&s);
        Some(s)
    }

    /// Polls every running facility; the leader of the highest term seen.
    pub async fn leader(&self) -> Option<(usize, u64)> {
        let mut best: Option<(usize, u64)> = None;
        for i in 0..self.n() {
            if let Some(s) = self.status(i).await {
                if s.is_leader && best.is_none_or(|(_, t)| s.term > t) {
                    best = Some((i, s.term));
                }
            }
        }
        best
    }

    /// Steps virtual time by `step` until a leader in a term above
    /// `after_term` is seen among `among`, for at most `limit`.
    pub async fn wait_leader(
        &self,
        among: &[usize],
        after_term: u64,
        limit: Duration,
    ) -> Option<(usize, u64, Duration)> {
        let start = tokio::time::Instant::now();
        let step = Duration::from_millis(10);
        for _ in 0..=limit.as_millis() / step.as_millis() {
            for &i in among {
                if let Some(s) = self.status(i).await {
                    if s.is_leader && s.term > after_term {
                        return Some((i, s.term, start.elapsed()));
                    }
                }
            }
            self.h.step(step).await;
        }
        None
    }

    pub fn key(&mut self) -> IdempotencyKey {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.next_key.to_le_bytes());
        self.next_key += 1;
        IdempotencyKey(k)
    }

    pub fn command(&mut self, i: usize, op: Op) -> Command {
        Command {
            key: self.key(),
            issued_by: self.h.id(i),
            at_unix_ms: 0,
            hlc: bulwark_actors::hlc::Hlc::ZERO,
            op,
        }
    }

    /// Proposes on facility `i` and waits for the outcome.
    pub async fn propose(&self, i: usize, command: Command) -> ProposeOutcome {
        let Some(peer) = self.h.is_up(i).then(|| raft_peer(self.h.node(i))).flatten() else {
            return ProposeOutcome::NotLeader { hint: None };
        };
        match peer
            .call(
                |reply| RaftMsg::Propose {
                    command,
                    deadline: None,
                    reply,
                },
                Some(CALL_TIMEOUT),
            )
            .await
        {
            Ok(r) => r.success_or(()).unwrap_or(ProposeOutcome::TimedOut),
            Err(_) => ProposeOutcome::TimedOut,
        }
    }

    /// A linearizable read on facility `i`: read-index, then `f` on the
    /// applied schedule.
    pub async fn read<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce(&ScheduleState) -> T + Send + 'static,
    ) -> Option<T> {
        let peer = self
            .h
            .is_up(i)
            .then(|| raft_peer(self.h.node(i)))
            .flatten()?;
        let ready = peer
            .call(|reply| RaftMsg::Read { reply }, Some(CALL_TIMEOUT))
            .await
            .ok()?
            .success_or(())
            .ok()?;
        if !matches!(ready, ReadOutcome::Ready { .. }) {
            eprintln!("read on {i}: {ready:?}");
            return None;
        }
        self.local_read(i, f).await
    }

    /// Runs `f` on facility `i`'s applied schedule, with no read-index
    /// (possibly stale).
    pub async fn local_read<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce(&ScheduleState) -> T + Send + 'static,
    ) -> Option<T> {
        let peer = self
            .h
            .is_up(i)
            .then(|| raft_peer(self.h.node(i)))
            .flatten()?;
        inspect(&peer, move |v| v.to_state().ok().map(|s| f(&s)))
            .await
            .flatten()
    }

    pub async fn crash(&mut self, i: usize) {
        self.h.crash(i).await;
    }

    pub async fn restart(&mut self, i: usize) {
        self.observed.lock().unwrap().on_restart(&self.h.id(i));
        self.h.restart(i).await.expect("restart");
    }

    /// People `p0..` and one-person blocks `b0..` (a day apart, 8 h each),
    /// committed through facility `via`.
    pub async fn seed_schedule(&mut self, via: usize, people: usize, blocks: usize) {
        for p in 0..people {
            let op = Op::AddPerson(Person {
                id: person(p),
                name: format!("Person {p}"),
                role: Role::Resident { pgy: 1 },
            });
            let c = self.command(via, op);
            committed(&self.propose(via, c).await);
        }
        for b in 0..blocks {
            let op = Op::AddBlock(Block {
                id: block(b),
                day: b as u32 * 2,
                start_min: 8 * 60,
                duration_min: 8 * 60,
                pool: Pool::Clinic,
                required: 1,
            });
            let c = self.command(via, op);
            committed(&self.propose(via, c).await);
        }
    }

    pub async fn shutdown(self) {
        self.h.shutdown().await;
    }

    /// Facility `i`'s membership view.
    pub fn view(&self, i: usize) -> ClusterView {
        self.detections[i].view()
    }

    /// A write through facility `i`'s CapGate.
    pub async fn submit(&self, i: usize, command: Command, emergency: bool) -> GateOutcome {
        let gate = self
            .h
            .node(i)
            .ctx()
            .find::<GateMsg>(Zone::Detection, CAP_GATE)
            .expect("gate runs");
        ractor::call_t!(
            gate,
            |reply| GateMsg::Submit {
                command,
                emergency,
                deadline: None,
                reply
            },
            CALL_TIMEOUT.as_millis() as u64
        )
        .expect("gate answers")
    }

    /// A read through facility `i`'s CapGate.
    pub async fn gate_read<T: Send + 'static>(
        &self,
        i: usize,
        consistency: Consistency,
        f: impl FnOnce(&ScheduleState, &Staleness) -> T + Send + 'static,
    ) -> Result<T, ReadError> {
        let gate = self
            .h
            .node(i)
            .ctx()
            .find::<GateMsg>(Zone::Detection, CAP_GATE)
            .expect("gate runs");
        let (tx, rx) = tokio::sync::oneshot::channel();
        gate.cast(GateMsg::Read {
            consistency,
            f: Box::new(move |r| {
                let _ = tx.send(r.map(|(s, st)| {
                    let s = s.to_state().expect("the replica reads back");
                    f(&s, &st)
                }));
            }),
        })
        .expect("gate runs");
        rx.await.expect("read answered")
    }

    /// Facility `i`'s reconciliation reports.
    pub async fn reports(&self, i: usize) -> Vec<Report> {
        let healer = self
            .h
            .node(i)
            .ctx()
            .find::<HealerMsg>(Zone::Consensus, HEALER)
            .expect("healer runs");
        ractor::call_t!(healer, HealerMsg::Reports, CALL_TIMEOUT.as_millis() as u64)
            .expect("healer answers")
    }
}

/// The seeds of a full randomized run: `BULWARK_SIM_SEEDS` of them
/// (default `default_n`) from `BULWARK_SIM_FIRST` (default 0).
pub fn sim_seeds(default_n: u64) -> std::ops::Range<u64> {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let n = env("BULWARK_SIM_SEEDS").unwrap_or(default_n);
    let first = env("BULWARK_SIM_FIRST").unwrap_or(0);
    first..first + n
}

/// Facility `i`'s id in the harness (its names, then `f<i>`).
pub fn harness_id(i: usize) -> FacilityId {
    [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
    ]
    .get(i)
    .map_or_else(|| format!("f{i}"), |n| n.to_string())
    .parse()
    .unwrap()
}

pub fn person(i: usize) -> PersonId {
    format!("p{i}").parse().unwrap()
}

pub fn block(i: usize) -> BlockId {
    format!("b{i}").parse().unwrap()
}

/// The index of a committed outcome; panics on any other.
pub fn committed(o: &ProposeOutcome) -> u64 {
    match o {
        ProposeOutcome::Committed { index, .. } => *index,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Runs the future `make` builds on a thread of its own, on a
/// current-thread runtime with paused (virtual) time: independent harness
/// runs side by side, each as deterministic as alone. Join the handle for
/// the output (a panic inside comes back as `Err`).
pub fn on_paused_thread<F, M>(make: M) -> std::thread::JoinHandle<F::Output>
where
    M: FnOnce() -> F + Send + 'static,
    F: std::future::Future,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
            .block_on(make())
    })
}
