//! Failure detection: the phi accrual detector (Hayashibara et al. 2004)
//! per peer, and the membership view it feeds. Sans-IO: heartbeats and
//! ticks come in with `now_ms`.
//!
//! φ is how unlikely it is, given the heartbeat intervals seen so far, that
//! the next heartbeat is merely late: φ = −log10(1 − F(Δ)), with F the
//! normal CDF of the intervals (mean plus an acceptable pause, standard
//! deviation at least a floor), Δ the time since the last heartbeat. The
//! CDF uses the logistic approximation Akka's detector uses. φ = 8 means
//! a one-in-10⁸ chance of a false suspicion per check.
//!
//! [`actor`] runs it: the FailureDetector sends heartbeats as QUIC
//! datagrams and publishes the membership view and its changes through
//! the [`Detection`] handle.

pub mod actor;
pub mod partition;

pub use actor::{
    detector_child, ClusterView, DetectConfig, DetectMsg, Detection, FailureDetector, Heartbeat,
    MembershipEvent, PeerView, DETECTOR,
};

use std::collections::{BTreeMap, VecDeque};

use bulwark_transport::FacilityId;

/// Settings of the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct PhiConfig {
    /// Intervals kept.
    pub window: usize,
    /// Floor of the standard deviation, in ms (steady heartbeats would
    /// otherwise make any delay look fatal).
    pub min_std_ms: f64,
    /// Pause always tolerated on top of the mean, in ms.
    pub acceptable_pause_ms: f64,
    /// The interval assumed before any has been seen, in ms.
    pub first_interval_ms: f64,
    /// Suspect at φ ≥ this.
    pub suspect_phi: f64,
    /// Down at φ ≥ this.
    pub down_phi: f64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            window: 200,
            min_std_ms: 100.0,
            acceptable_pause_ms: 1_000.0,
            first_interval_ms: 1_000.0,
            suspect_phi: 8.0,
            down_phi: 16.0,
        }
    }
}

/// φ for `elapsed_ms` since the last heartbeat, given the intervals' mean
/// and standard deviation (both in ms).
pub fn phi(elapsed_ms: f64, mean_ms: f64, std_ms: f64) -> f64 {
    let y = (elapsed_ms - mean_ms) / std_ms;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    if elapsed_ms > mean_ms {
        -(e / (1.0 + e)).log10()
    } else {
        -(1.0 - 1.0 / (1.0 + e)).log10()
    }
}

/// One peer's detector.
#[derive(Debug, Clone)]
pub struct PhiDetector {
    config: PhiConfig,
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    last_ms: Option<u64>,
}

impl PhiDetector {
    /// A detector that has heard nothing yet.
    pub fn new(config: PhiConfig) -> PhiDetector {
        PhiDetector {
            config,
            intervals: VecDeque::new(),
            sum: 0.0,
            sum_sq: 0.0,
            last_ms: None,
        }
    }

    /// A heartbeat arrived.
    pub fn heartbeat(&mut self, now_ms: u64) {
        if let Some(last) = self.last_ms {
            let d = now_ms.saturating_sub(last) as f64;
            self.intervals.push_back(d);
            self.sum += d;
            self.sum_sq += d * d;
            while self.intervals.len() > self.config.window.max(1) {
                if let Some(old) = self.intervals.pop_front() {
                    self.sum -= old;
                    self.sum_sq -= old * old;
                }
            }
        }
        self.last_ms = Some(self.last_ms.map_or(now_ms, |l| l.max(now_ms)));
    }

    /// Mean and standard deviation of the intervals (with the floor and
    /// the acceptable pause applied).
    pub fn stats(&self) -> (f64, f64) {
        let n = self.intervals.len() as f64;
        let (mean, var) = if n == 0.0 {
            let m = self.config.first_interval_ms;
            (m, (m / 4.0) * (m / 4.0))
        } else {
            let m = self.sum / n;
            (m, (self.sum_sq / n - m * m).max(0.0))
        };
        (
            mean + self.config.acceptable_pause_ms,
            var.sqrt().max(self.config.min_std_ms),
        )
    }

    /// φ now; 0 before the first heartbeat.
    pub fn phi(&self, now_ms: u64) -> f64 {
        let Some(last) = self.last_ms else {
            return 0.0;
        };
        let (mean, std) = self.stats();
        phi(now_ms.saturating_sub(last) as f64, mean, std)
    }

    /// The peer's state now.
    pub fn state(&self, now_ms: u64) -> Liveness {
        let p = self.phi(now_ms);
        if p >= self.config.down_phi {
            Liveness::Down
        } else if p >= self.config.suspect_phi {
            Liveness::Suspect
        } else {
            Liveness::Up
        }
    }
}

/// What the detector says of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Liveness {
    /// Heard from recently enough.
    Up,
    /// φ crossed the suspicion threshold.
    Suspect,
    /// φ crossed the down threshold.
    Down,
}

/// A peer's state changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The peer.
    pub peer: FacilityId,
    /// Before.
    pub from: Liveness,
    /// Now.
    pub to: Liveness,
    /// When.
    pub at_ms: u64,
}

/// The membership view: a detector per peer and each peer's last state;
/// changes are what subscribers hear.
#[derive(Debug, Clone)]
pub struct Membership {
    peers: BTreeMap<FacilityId, (PhiDetector, Liveness)>,
}

impl Membership {
    /// All `peers` Up, nothing heard yet.
    pub fn new(peers: impl IntoIterator<Item = FacilityId>, config: &PhiConfig) -> Membership {
        Membership {
            peers: peers
                .into_iter()
                .map(|p| (p, (PhiDetector::new(config.clone()), Liveness::Up)))
                .collect(),
        }
    }

    /// Presumes every peer heard at `now_ms` (a start): a peer that never
    /// answers is then suspected like one that stopped.
    pub fn started(&mut self, now_ms: u64) {
        for (d, _) in self.peers.values_mut() {
            if d.last_ms.is_none() {
                d.last_ms = Some(now_ms);
            }
        }
    }

    /// A heartbeat from `peer` (unknown peers are ignored).
    pub fn heartbeat(&mut self, peer: &FacilityId, now_ms: u64) -> Vec<Change> {
        if let Some((d, _)) = self.peers.get_mut(peer) {
            d.heartbeat(now_ms);
        }
        self.tick(now_ms)
    }

    /// Re-evaluates every peer; returns the changes.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Change> {
        let mut out = Vec::new();
        for (peer, (d, last)) in &mut self.peers {
            let now = d.state(now_ms);
            if now != *last {
                out.push(Change {
                    peer: peer.clone(),
                    from: *last,
                    to: now,
                    at_ms: now_ms,
                });
                *last = now;
            }
        }
        out
    }

    /// φ and state of every peer.
    pub fn view(&self, now_ms: u64) -> Vec<(FacilityId, f64, Liveness)> {
        self.peers
            .iter()
            .map(|(p, (d, s))| (p.clone(), d.phi(now_ms), *s))
            .collect()
    }
}

/// The detector's whole sans-IO core: the membership view, the
/// partition monitor, and what each peer last reported suspecting. The
/// actor feeds it heartbeats and ticks and publishes what it returns.
#[derive(Debug, Clone)]
pub struct Detector {
    me: FacilityId,
    membership: Membership,
    monitor: partition::PartitionMonitor,
    reports: BTreeMap<FacilityId, (Vec<FacilityId>, u64)>,
    report_fresh_ms: u64,
}

impl Detector {
    /// The core of `me` watching `peers`, started at `now_ms`: every peer
    /// is presumed heard then, so one that never answers is suspected like
    /// one that stopped.
    pub fn new(
        me: FacilityId,
        peers: &[FacilityId],
        config: &DetectConfig,
        now_ms: u64,
    ) -> Detector {
        let mut membership = Membership::new(peers.iter().cloned(), &config.phi);
        membership.started(now_ms);
        Detector {
            me,
            membership,
            monitor: partition::PartitionMonitor::new(peers.len() + 1, now_ms),
            reports: BTreeMap::new(),
            report_fresh_ms: config.report_fresh_ms,
        }
    }

    /// A heartbeat from `peer`, which suspects `suspects`.
    pub fn heartbeat(
        &mut self,
        peer: &FacilityId,
        suspects: Vec<FacilityId>,
        now_ms: u64,
    ) -> Vec<Change> {
        self.reports.insert(peer.clone(), (suspects, now_ms));
        self.membership.heartbeat(peer, now_ms)
    }

    /// Re-evaluates every peer.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Change> {
        self.membership.tick(now_ms)
    }

    /// The peers this facility holds Suspect or Down (what its heartbeats say).
    pub fn suspects(&self) -> Vec<FacilityId> {
        self.membership
            .peers
            .iter()
            .filter(|(_, (_, l))| *l != Liveness::Up)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The view at `now_ms` (wall clock `wall_ms`) after `changes`, and
    /// the events to publish (peer changes, then a partition transition).
    pub fn view(
        &mut self,
        changes: Vec<Change>,
        now_ms: u64,
        wall_ms: u64,
    ) -> (ClusterView, Vec<MembershipEvent>) {
        let view = self.membership.view(now_ms);
        let reachable = view.iter().filter(|(_, _, l)| *l != Liveness::Down).count();
        let transition = self.monitor.update(reachable, now_ms);
        let fresh = |p: &FacilityId| -> Vec<FacilityId> {
            self.reports
                .get(p)
                .filter(|(_, at)| now_ms.saturating_sub(*at) <= self.report_fresh_ms)
                .map(|(s, _)| s.clone())
                .unwrap_or_default()
        };
        let peers: Vec<PeerView> = view
            .into_iter()
            .map(|(peer, phi, liveness)| PeerView {
                suspects: fresh(&peer),
                peer,
                phi,
                liveness,
            })
            .collect();
        let suspected_by = peers
            .iter()
            .filter(|p| p.suspects.contains(&self.me))
            .map(|p| p.peer.clone())
            .collect();
        let since_ago = now_ms.saturating_sub(self.monitor.since_ms());
        let out = ClusterView {
            facility: self.me.clone(),
            peers,
            partition: self.monitor.state(),
            partition_since_unix_ms: wall_ms.saturating_sub(since_ago),
            stale_ms: self.monitor.stale_ms(now_ms),
            suspected_by,
        };
        let mut events: Vec<MembershipEvent> =
            changes.into_iter().map(MembershipEvent::Peer).collect();
        if let Some((from, to)) = transition {
            events.push(MembershipEvent::Partition { from, to });
        }
        (out, events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Against values computed by hand (Python, the same formula).
    #[test]
    fn phi_matches_hand_computed_values() {
        let cases = [
            (1000.0, std::f64::consts::LOG10_2),
            (1200.0, 1.6428278854871123),
            (1500.0, 7.299947394460206),
            (2000.0, 37.58471305287122),
        ];
        for (elapsed, want) in cases {
            let got = phi(elapsed, 1000.0, 100.0);
            assert!(
                (got - want).abs() < 1e-9,
                "phi({elapsed}) = {got}, want {want}"
            );
        }
        // φ grows with the delay and falls with a wider spread.
        assert!(phi(1500.0, 1000.0, 100.0) > phi(1400.0, 1000.0, 100.0));
        assert!(phi(1500.0, 1000.0, 300.0) < phi(1500.0, 1000.0, 100.0));
    }

    #[test]
    fn the_detector_learns_the_interval_and_adapts_to_jitter() {
        let cfg = PhiConfig {
            min_std_ms: 10.0,
            acceptable_pause_ms: 0.0,
            ..PhiConfig::default()
        };
        let mut steady = PhiDetector::new(cfg.clone());
        let mut jittery = PhiDetector::new(cfg);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (mut a, mut b) = (0u64, 0u64);
        for _ in 0..200 {
            a += 1_000;
            b += rng.random_range(700..=1_300);
            steady.heartbeat(a);
            jittery.heartbeat(b);
        }
        let (mean, std) = steady.stats();
        assert_eq!((mean, std), (1_000.0, 10.0), "steady: the floor");
        // 400 ms late: fatal for the steady peer, ordinary for the
        // jittery one.
        assert!(steady.phi(a + 1_400) > 16.0);
        assert!(jittery.phi(b + 1_400) < 8.0, "{}", jittery.phi(b + 1_400));
    }

    #[test]
    fn the_core_names_who_suspects_whom_and_the_partition() {
        let ids: Vec<FacilityId> = ["alpha", "bravo", "charlie"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut d = Detector::new(ids[0].clone(), &ids[1..], &DetectConfig::default(), 0);
        for t in 1..=20u64 {
            d.heartbeat(&ids[1], vec![ids[0].clone()], t * 1_000);
            d.heartbeat(&ids[2], vec![ids[0].clone()], t * 1_000);
        }
        let (v, _) = d.view(Vec::new(), 20_000, 1_000_000);
        assert!(v.self_suspected());
        assert_eq!(v.partition, partition::PartitionState::Connected);
        // charlie goes quiet: Down, and alpha is left a majority with bravo.
        let mut events = Vec::new();
        for t in 20_001..40_000u64 {
            if t % 1_000 == 0 {
                d.heartbeat(&ids[1], Vec::new(), t);
            }
            let c = d.tick(t);
            events.extend(d.view(c, t, 1_000_000 + t).1);
        }
        assert_eq!(d.suspects(), vec![ids[2].clone()]);
        assert!(events.contains(&MembershipEvent::Partition {
            from: partition::PartitionState::Connected,
            to: partition::PartitionState::Majority,
        }));
        // Reports go stale: charlie's accusation no longer counts.
        let (v, _) = d.view(Vec::new(), 40_000, 1_040_000);
        assert_eq!(v.suspected_by, Vec::<FacilityId>::new());
        assert_eq!(v.healthiest_peer(), Some(ids[1].clone()));
    }

    #[test]
    fn membership_publishes_changes() {
        let peers: Vec<FacilityId> = vec!["bravo".parse().unwrap()];
        let mut m = Membership::new(peers.clone(), &PhiConfig::default());
        for t in 0..20u64 {
            assert!(m.heartbeat(&peers[0], t * 1_000).is_empty());
        }
        let mut changes = Vec::new();
        for t in 19_000..30_000u64 {
            changes.extend(m.tick(t));
        }
        let to: Vec<Liveness> = changes.iter().map(|c| c.to).collect();
        assert_eq!(to, vec![Liveness::Suspect, Liveness::Down]);
        let back = m.heartbeat(&peers[0], 30_000);
        assert_eq!(
            back.iter().map(|c| c.to).collect::<Vec<_>>(),
            vec![Liveness::Up]
        );
    }

    /// The next heartbeat interval, in ms: uniform within ±30% of 1 s, or
    /// (harsh) normal with σ = 30% of 1 s, at least 50 ms, and 1% of the
    /// heartbeats lost (the interval then spans two).
    fn interval(rng: &mut rand_chacha::ChaCha8Rng, harsh: bool) -> u64 {
        if !harsh {
            return rng.random_range(700..=1_300);
        }
        let one = |rng: &mut rand_chacha::ChaCha8Rng| {
            // Box-Muller from two uniform draws.
            let (u1, u2): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (1_000.0 + 300.0 * z).max(50.0) as u64
        };
        let mut d = one(rng);
        if rng.random_bool(0.01) {
            d += one(rng);
        }
        d
    }

    /// For threshold `th`: false suspicions per hour over `hours` of
    /// healthy heartbeats (checked every 10 ms), then the time from the
    /// last heartbeat (a crash) until φ crosses `th`.
    fn measure(th: f64, harsh: bool, hours: u64) -> (u64, f64) {
        let mut d = PhiDetector::new(PhiConfig {
            acceptable_pause_ms: 0.0,
            ..PhiConfig::default()
        });
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut next = 0u64;
        let mut suspected = false;
        let mut false_suspicions = 0u64;
        let end = hours * 3_600_000;
        let mut t = 0u64;
        while t < end {
            if t >= next {
                d.heartbeat(next);
                next += interval(&mut rng, harsh);
            }
            let s = d.phi(t) >= th;
            if s && !suspected {
                false_suspicions += 1;
            }
            suspected = s;
            t += 10;
        }
        let last = d.last_ms.expect("heard");
        let mut after = 0u64;
        while d.phi(last + after) < th && after < 120_000 {
            after += 10;
        }
        (after, false_suspicions as f64 / hours as f64)
    }

    /// Heartbeats every 1 s with 30% jitter, seeded, for several
    /// thresholds: the time from a crash to suspicion, and the false
    /// suspicions per hour without one. Printed (and kept in
    /// docs/BENCHMARKS.md); the test checks their order.
    #[test]
    fn detection_time_and_false_suspicions_by_threshold() {
        for harsh in [false, true] {
            let rows: Vec<(f64, u64, f64)> = [2.0, 4.0, 8.0, 12.0, 16.0]
                .iter()
                .map(|&th| {
                    let (after, fph) = measure(th, harsh, 10);
                    (th, after, fph)
                })
                .collect();
            for (th, after, fph) in &rows {
                let kind = if harsh {
                    "normal σ30% + 1% loss"
                } else {
                    "uniform ±30%"
                };
                eprintln!("{kind}: phi {th:>4}: crash to crossing {after:>5} ms; false suspicions {fph:.2}/hour");
            }
            // A higher threshold crosses later and suspects falsely no more.
            for w in rows.windows(2) {
                assert!(w[1].1 >= w[0].1 && w[1].2 <= w[0].2, "{rows:?}");
            }
        }
    }
}
