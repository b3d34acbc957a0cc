//! A chaos experiment as data: what to break, how much of the cluster it may
//! touch, for how long, under which safety checks, and the thresholds its
//! measurements are judged against. Experiments are written in TOML; the
//! same file runs against a live cluster (`bulwark chaos run FILE`) and in
//! the in-process harness.
//!
//! ```toml
//! name = "partition-a-follower"
//! blast_radius = 0.34       # at most a third of the facilities
//! duration_ms = 8000        # how long the fault is held
//!
//! [fault]
//! kind = "network_partition"
//! target = "follower"       # "leader", "follower" or a facility id
//!
//! [safety]
//! max_error_rate = 0.6      # above this during the fault: roll back at once
//! ```

use crate::bft::Behaviour;
use crate::chaos::inject::{Lifetime, ScheduledFault, Timing};
use serde::{Deserialize, Serialize};

/// Longest an experiment may hold its fault (one hour).
pub const DURATION_MS_MAX: u64 = 3_600_000;

/// Largest clock skew an experiment may inject (one day).
pub const SKEW_MS_MAX: i64 = 86_400_000;

/// Largest injected disk or network latency (one minute).
pub const LATENCY_MS_MAX: u64 = 60_000;

/// Largest load-spike factor.
pub const SPIKE_FACTOR_MAX: u32 = 1_000;

/// One experiment. See the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Short name, used in the report.
    pub name: String,
    /// What it tests, for the report.
    #[serde(default)]
    pub description: String,
    /// What to break.
    pub fault: FaultSpec,
    /// The largest fraction of the facilities the fault may touch (0 to 1];
    /// an experiment whose fault would touch more is refused before it
    /// starts.
    pub blast_radius: f64,
    /// The window the fault may be held in, in ms: it is rolled back at
    /// the end of it at the latest.
    pub duration_ms: u64,
    /// When, inside that window, the fault starts and stops (default: at
    /// its start, for all of it).
    #[serde(default)]
    pub schedule: Schedule,
    /// How the agent watches.
    #[serde(default)]
    pub observe: Observe,
    /// When it may run and when it must stop.
    #[serde(default)]
    pub safety: Safety,
    /// What the measurements are judged against.
    #[serde(default)]
    pub thresholds: Thresholds,
}

/// What an experiment breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FaultSpec {
    /// Faculty loss: removes `lose` faculty members at a time (1: N-1,
    /// 2: N-2) from a copy of the real schedule and checks every block can
    /// still be staffed. Nothing is written: the schedule is the system.
    FacultyLoss {
        /// 1 or 2.
        lose: u8,
    },
    /// A slow (and optionally failing) disk on the target's store.
    StorageLatency {
        /// `leader`, `follower` or a facility id.
        target: String,
        /// Added to each durable write, in ms.
        latency_ms: u64,
        /// Chance each durable write fails (0 to 1).
        #[serde(default)]
        write_failure: f64,
    },
    /// Cuts the target off from every other facility.
    NetworkPartition {
        /// `leader`, `follower` or a facility id.
        target: String,
        /// Only traffic from the target is cut (it still hears the others).
        #[serde(default)]
        one_way: bool,
    },
    /// The target's validator lies.
    Byzantine {
        /// `leader`, `follower` or a facility id.
        target: String,
        /// `equivocate`, `forge_votes`, `vote_for_invalid`, `replay_stale`
        /// or `withhold`.
        behaviour: String,
    },
    /// `factor` times the probe load at once, with operator requests
    /// (`GET /v1/cluster`) beside it.
    LoadSpike {
        /// Multiple of the probe rate.
        factor: u32,
        /// The extra requests of each sampling period arrive at once at its
        /// start (a thundering herd) instead of evenly spaced.
        #[serde(default)]
        burst: bool,
    },
    /// The target's wall clock jumps by `skew_ms`.
    ClockSkew {
        /// `leader`, `follower` or a facility id.
        target: String,
        /// Signed offset in ms.
        skew_ms: i64,
    },
    /// A slow disk and a lossy, slow network on the target at once; the
    /// report follows how the failure spreads through the dependency graph.
    CascadingFailure {
        /// `leader`, `follower` or a facility id.
        target: String,
        /// Disk latency in ms.
        latency_ms: u64,
        /// Network delay added to the target's outgoing traffic, in ms.
        delay_ms: u64,
        /// Chance each of the target's outgoing messages is lost (0 to 1).
        loss: f64,
    },
    /// Kills the leader's RaftPeer through its supervisor.
    LeaderKill,
}

impl FaultSpec {
    /// The kind's name, as written in TOML.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultSpec::FacultyLoss { .. } => "faculty_loss",
            FaultSpec::StorageLatency { .. } => "storage_latency",
            FaultSpec::NetworkPartition { .. } => "network_partition",
            FaultSpec::Byzantine { .. } => "byzantine",
            FaultSpec::LoadSpike { .. } => "load_spike",
            FaultSpec::ClockSkew { .. } => "clock_skew",
            FaultSpec::CascadingFailure { .. } => "cascading_failure",
            FaultSpec::LeaderKill => "leader_kill",
        }
    }

    /// The facility the fault aims at, if it aims at one.
    pub fn target(&self) -> Option<&str> {
        match self {
            FaultSpec::StorageLatency { target, .. }
            | FaultSpec::NetworkPartition { target, .. }
            | FaultSpec::Byzantine { target, .. }
            | FaultSpec::ClockSkew { target, .. }
            | FaultSpec::CascadingFailure { target, .. } => Some(target),
            FaultSpec::LeaderKill => Some("leader"),
            FaultSpec::FacultyLoss { .. } | FaultSpec::LoadSpike { .. } => None,
        }
    }

    /// How many facilities the fault touches.
    pub fn facilities_touched(&self) -> usize {
        match self {
            FaultSpec::FacultyLoss { .. } => 0,
            // The spike is spread over every facility's API, but it breaks
            // nothing: it is the load the cluster must shed.
            FaultSpec::LoadSpike { .. } => 0,
            _ => 1,
        }
    }
}

/// When the fault starts and stops inside the experiment's window, as the
/// agent's [`crate::chaos::inject::Injector`] judges it at each sample:
/// `timing` at a time, by chance or on a condition; `lifetime` fixed, until
/// a condition, or permanent (the rest of the window). Conditions read the
/// agent's metrics of the last second: `error_rate`, `p99_ms`, `probes`,
/// `no_leader` (facilities that know none), `leaders` (distinct leaders
/// named), `unreachable` (facilities whose view did not answer), `commit`
/// (highest commit index).
///
/// ```toml
/// [schedule]
/// timing = { when = { above = { metric = "probes", value = 10 } } }
/// lifetime = { until = { above = { metric = "error_rate", value = 0.2 } } }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    /// When it starts (ms from the window's start).
    pub timing: Timing,
    /// How long it stays.
    pub lifetime: Lifetime,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            timing: Timing::At { ms: 0 },
            lifetime: Lifetime::Permanent,
        }
    }
}

impl Schedule {
    /// The schedule as the injector's one fault.
    pub fn fault<F>(&self, fault: F) -> ScheduledFault<F> {
        ScheduledFault {
            id: "fault".into(),
            fault,
            timing: self.timing.clone(),
            duration: self.lifetime.clone(),
        }
    }
}

/// A lie's name in an experiment file.
pub fn behaviour_named(name: &str) -> Option<Behaviour> {
    Some(match name {
        "honest" => Behaviour::Honest,
        "equivocate" => Behaviour::Equivocate,
        "forge_votes" => Behaviour::ForgeVotes,
        "vote_for_invalid" => Behaviour::VoteForInvalid,
        "replay_stale" => Behaviour::ReplayStale,
        "withhold" => Behaviour::Withhold,
        _ => return None,
    })
}

/// How the agent watches the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Observe {
    /// Baseline before the fault, in ms.
    pub before_ms: u64,
    /// Recovery watched after the rollback, in ms.
    pub after_ms: u64,
    /// One sample of every facility's view (and one heatmap column) per
    /// this many ms.
    pub sample_every_ms: u64,
    /// Probe requests per second over the whole cluster (writes, reads and
    /// operator requests in turn).
    pub probe_rate_per_s: u32,
    /// A probe without an answer after this long counts as timed out.
    pub request_timeout_ms: u64,
}

impl Default for Observe {
    fn default() -> Self {
        Observe {
            before_ms: 3_000,
            after_ms: 6_000,
            sample_every_ms: 500,
            probe_rate_per_s: 20,
            request_timeout_ms: 5_000,
        }
    }
}

/// When an experiment may run and when it must stop early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Safety {
    /// UTC hours `[from, to)` in which it may start; `None`: any time.
    pub window: Option<Window>,
    /// Refuse to start unless every facility answers, agrees on a leader
    /// and sees every peer up.
    pub require_healthy: bool,
    /// Roll back at once if, over the last second of probes, more than this
    /// fraction failed (5xx or no answer).
    pub max_error_rate: f64,
    /// The fault is reverted on every facility after at most this many ms,
    /// even if the agent dies (the facilities enforce it themselves).
    pub dead_man_ms: Option<u64>,
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            window: None,
            require_healthy: true,
            max_error_rate: 0.9,
            dead_man_ms: None,
        }
    }
}

/// A daily run window in UTC hours, `from` included, `to` excluded; it may
/// wrap midnight (`from = 22, to = 6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// First hour (0 to 23).
    pub from_hour: u8,
    /// First hour after the window (0 to 24).
    pub to_hour: u8,
}

impl Window {
    /// Whether `unix_ms` falls inside the window.
    pub fn contains(&self, unix_ms: u64) -> bool {
        let hour = ((unix_ms / 3_600_000) % 24) as u8;
        if self.from_hour <= self.to_hour {
            (self.from_hour..self.to_hour).contains(&hour)
        } else {
            hour >= self.from_hour || hour < self.to_hour
        }
    }
}

/// What the measurements are judged against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Probes answered 99% within this many ms, in every phase.
    pub latency_p99_ms: u64,
    /// Fraction of the probes sent to facilities the fault does not touch
    /// that must succeed while it is held.
    pub availability_min: f64,
    /// A new leader (or the detector's verdict) within this many ms.
    pub detect_within_ms: u64,
    /// Every facility back on one leader and one commit within this many ms
    /// of the rollback.
    pub recover_within_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            latency_p99_ms: 1_000,
            availability_min: 0.95,
            detect_within_ms: 5_000,
            recover_within_ms: 5_000,
        }
    }
}

/// Why an experiment file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExperimentError {
    /// A field out of range; names the field.
    #[error("experiment field `{field}`: {reason}")]
    Invalid {
        /// The field, dotted.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn fraction(field: &'static str, v: f64) -> Result<(), ExperimentError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(field, format!("{v} is outside 0..=1")))
    }
}

fn target_ok(target: &str) -> Result<(), ExperimentError> {
    if target == "leader" || target == "follower" {
        return Ok(());
    }
    target
        .parse::<bulwark_transport::FacilityId>()
        .map(|_| ())
        .map_err(|e| invalid("fault.target", format!("{target:?}: {e}")))
}

impl Experiment {
    /// Checks every field; the agent runs nothing that fails this.
    pub fn validate(&self) -> Result<(), ExperimentError> {
        if self.name.is_empty() || self.name.len() > 128 {
            return Err(invalid("name", "1 to 128 characters"));
        }
        if !(self.blast_radius > 0.0 && self.blast_radius <= 1.0) {
            return Err(invalid(
                "blast_radius",
                format!("{} is outside (0, 1]", self.blast_radius),
            ));
        }
        if self.duration_ms == 0 || self.duration_ms > DURATION_MS_MAX {
            return Err(invalid("duration_ms", format!("1 to {DURATION_MS_MAX} ms")));
        }
        let o = &self.observe;
        if o.sample_every_ms == 0 || o.sample_every_ms > 60_000 {
            return Err(invalid("observe.sample_every_ms", "1 to 60000 ms"));
        }
        if o.before_ms > DURATION_MS_MAX || o.after_ms > DURATION_MS_MAX {
            return Err(invalid(
                "observe.before_ms",
                format!("before_ms and after_ms at most {DURATION_MS_MAX}"),
            ));
        }
        if o.probe_rate_per_s == 0 || o.probe_rate_per_s > 10_000 {
            return Err(invalid("observe.probe_rate_per_s", "1 to 10000"));
        }
        if o.request_timeout_ms == 0 || o.request_timeout_ms > 600_000 {
            return Err(invalid("observe.request_timeout_ms", "1 to 600000 ms"));
        }
        fraction("safety.max_error_rate", self.safety.max_error_rate)?;
        if let Some(w) = self.safety.window {
            if w.from_hour > 23 || w.to_hour > 24 || w.from_hour == w.to_hour {
                return Err(invalid(
                    "safety.window",
                    "from_hour 0..=23, to_hour 0..=24, not equal",
                ));
            }
        }
        if let Err(e) = self.schedule.fault(()).validate() {
            return Err(invalid("schedule", e.to_string()));
        }
        if self.safety.dead_man_ms == Some(0) {
            return Err(invalid("safety.dead_man_ms", "must be > 0"));
        }
        fraction(
            "thresholds.availability_min",
            self.thresholds.availability_min,
        )?;
        match &self.fault {
            FaultSpec::FacultyLoss { lose } => {
                if !(1..=2).contains(lose) {
                    return Err(invalid("fault.lose", "1 (N-1) or 2 (N-2)"));
                }
            }
            FaultSpec::StorageLatency {
                target,
                latency_ms,
                write_failure,
            } => {
                target_ok(target)?;
                if *latency_ms > LATENCY_MS_MAX {
                    return Err(invalid(
                        "fault.latency_ms",
                        format!("at most {LATENCY_MS_MAX}"),
                    ));
                }
                fraction("fault.write_failure", *write_failure)?;
            }
            FaultSpec::NetworkPartition { target, .. } => target_ok(target)?,
            FaultSpec::Byzantine { target, behaviour } => {
                target_ok(target)?;
                if behaviour_named(behaviour).is_none_or(|b| b == Behaviour::Honest) {
                    return Err(invalid(
                        "fault.behaviour",
                        format!("{behaviour:?}: equivocate, forge_votes, vote_for_invalid, replay_stale or withhold"),
                    ));
                }
            }
            FaultSpec::LoadSpike { factor, .. } => {
                if *factor < 2 || *factor > SPIKE_FACTOR_MAX {
                    return Err(invalid("fault.factor", format!("2 to {SPIKE_FACTOR_MAX}")));
                }
            }
            FaultSpec::ClockSkew { target, skew_ms } => {
                target_ok(target)?;
                if *skew_ms == 0 || !(-SKEW_MS_MAX..=SKEW_MS_MAX).contains(skew_ms) {
                    return Err(invalid(
                        "fault.skew_ms",
                        format!("non-zero, at most {SKEW_MS_MAX} either way"),
                    ));
                }
            }
            FaultSpec::CascadingFailure {
                target,
                latency_ms,
                delay_ms,
                loss,
            } => {
                target_ok(target)?;
                if *latency_ms > LATENCY_MS_MAX || *delay_ms > LATENCY_MS_MAX {
                    return Err(invalid(
                        "fault.latency_ms",
                        format!("latency_ms and delay_ms at most {LATENCY_MS_MAX}"),
                    ));
                }
                fraction("fault.loss", *loss)?;
            }
            FaultSpec::LeaderKill => {}
        }
        Ok(())
    }

    /// Whether the fault fits the blast radius in a cluster of `n`.
    pub fn fits_blast_radius(&self, n: usize) -> bool {
        let touched = self.fault.facilities_touched();
        touched as f64 <= (self.blast_radius * n as f64) + 1e-9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition() -> Experiment {
        Experiment {
            name: "p".into(),
            description: String::new(),
            fault: FaultSpec::NetworkPartition {
                target: "follower".into(),
                one_way: false,
            },
            blast_radius: 0.34,
            duration_ms: 5_000,
            schedule: Schedule::default(),
            observe: Observe::default(),
            safety: Safety::default(),
            thresholds: Thresholds::default(),
        }
    }

    #[test]
    fn a_valid_experiment_passes_and_each_bad_field_is_named() {
        assert_eq!(partition().validate(), Ok(()));
        type Mutation = Box<dyn Fn(&mut Experiment)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|e| e.blast_radius = 0.0), "blast_radius"),
            (Box::new(|e| e.blast_radius = 1.5), "blast_radius"),
            (Box::new(|e| e.duration_ms = 0), "duration_ms"),
            (
                Box::new(|e| e.safety.max_error_rate = 2.0),
                "safety.max_error_rate",
            ),
            (
                Box::new(|e| {
                    e.safety.window = Some(Window {
                        from_hour: 9,
                        to_hour: 9,
                    })
                }),
                "safety.window",
            ),
            (
                Box::new(|e| {
                    e.fault = FaultSpec::NetworkPartition {
                        target: "no such!".into(),
                        one_way: false,
                    }
                }),
                "fault.target",
            ),
            (
                Box::new(|e| e.fault = FaultSpec::FacultyLoss { lose: 3 }),
                "fault.lose",
            ),
            (
                Box::new(|e| {
                    e.schedule.timing = Timing::Chance {
                        probability: 2.0,
                        every_ms: 100,
                    }
                }),
                "schedule",
            ),
            (
                Box::new(|e| {
                    e.fault = FaultSpec::Byzantine {
                        target: "leader".into(),
                        behaviour: "honest".into(),
                    }
                }),
                "fault.behaviour",
            ),
            (
                Box::new(|e| {
                    e.fault = FaultSpec::LoadSpike {
                        factor: 1,
                        burst: true,
                    }
                }),
                "fault.factor",
            ),
            (
                Box::new(|e| {
                    e.fault = FaultSpec::ClockSkew {
                        target: "leader".into(),
                        skew_ms: 0,
                    }
                }),
                "fault.skew_ms",
            ),
        ];
        for (mutate, field) in cases {
            let mut e = partition();
            mutate(&mut e);
            match e.validate() {
                Err(ExperimentError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_blast_radius_bounds_the_facilities_touched() {
        let e = partition();
        assert!(e.fits_blast_radius(3), "1 of 3 within 0.34");
        assert!(!e.fits_blast_radius(2), "1 of 2 is more than 0.34");
        let spike = Experiment {
            fault: FaultSpec::LoadSpike {
                factor: 10,
                burst: false,
            },
            blast_radius: 0.01,
            ..partition()
        };
        assert!(spike.fits_blast_radius(3));
    }

    #[test]
    fn windows_may_wrap_midnight() {
        let at = |h: u64| h * 3_600_000 + 17;
        let day = Window {
            from_hour: 9,
            to_hour: 17,
        };
        assert!(day.contains(at(9)) && day.contains(at(16)));
        assert!(!day.contains(at(17)) && !day.contains(at(3)));
        let night = Window {
            from_hour: 22,
            to_hour: 6,
        };
        assert!(night.contains(at(23)) && night.contains(at(24 + 2)));
        assert!(!night.contains(at(12)));
    }

    #[test]
    fn every_lie_has_a_name() {
        for name in [
            "equivocate",
            "forge_votes",
            "vote_for_invalid",
            "replay_stale",
            "withhold",
        ] {
            assert!(behaviour_named(name).is_some_and(|b| b != Behaviour::Honest));
        }
        assert_eq!(behaviour_named("lie"), None);
    }
}
