//! When faults start and stop: a schedule of faults, each with a timing (when
//! it starts) and a lifetime (when it stops), stepped by the caller's clock.
//!
//! Sans-IO and generic over the fault payload `F`: the injector never knows
//! what a fault does, only when it is on. The caller applies each
//! [`Transition`] (a `FaultPlan` change, a crashed actor, a slow disk) and
//! undoes it on deactivation.
//!
//! - **Timing** ([`Timing`]): `At` a time since the experiment started
//!   (deterministic); `Chance` of `probability` at each check, checks at
//!   every multiple of `every_ms` (probabilistic); `When` a [`Condition`] over
//!   the metrics the caller supplies holds (conditional).
//! - **Lifetime** ([`Lifetime`]): `Fixed` for `ms` after activation, `Until`
//!   a condition holds (checked from the step after activation, so a fault
//!   is on for at least one step), or `Permanent` (until rollback).
//! - A fault activates **at most once**: once it has stopped it stays
//!   stopped. To repeat a fault, schedule another with another id.
//! - **Rollback** ([`Injector::rollback`]) deactivates every active fault
//!   and stops the injector: nothing is active afterwards and nothing
//!   activates again, whatever later steps are fed.
//!
//! Time and chance are inputs. `now_ms` is the experiment clock; a step
//! with an earlier time than the last one is taken at the last one. A
//! `Chance` fault draws one number from the caller's seeded ChaCha8 per
//! step in which checks fell due: if `n` checks fell due since the last
//! step, it fires with `1 - (1 - p)^n`, the chance that at least one of the
//! `n` checks would have fired. So a long step costs one draw, not `n`, and
//! a run replays exactly from its seed and its step times. A transition is
//! dated at the step that saw it, not at the check boundary.
//!
//! Limits: [`FAULTS_MAX`] faults, ids of [`ID_LEN_MAX`] bytes, conditions
//! [`CONDITION_DEPTH_MAX`] deep with [`CONDITION_TERMS_MAX`] terms per
//! `All`/`Any`; a schedule beyond them is refused with an [`InjectError`].
//! A metric a condition names but the caller does not supply reads as
//! absent: `Above` and `Below` on it are false ([`Condition::metrics`] lists
//! the names a condition needs, to check them against the metrics offered).

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Faults one injector holds at most.
pub const FAULTS_MAX: usize = 256;
/// Longest fault id, in bytes.
pub const ID_LEN_MAX: usize = 64;
/// Longest metric name, in bytes.
pub const METRIC_LEN_MAX: usize = 128;
/// Deepest nesting of `All`/`Any` (a leaf alone is depth 1).
pub const CONDITION_DEPTH_MAX: usize = 4;
/// Most terms in one `All` or `Any`.
pub const CONDITION_TERMS_MAX: usize = 16;

/// A predicate over the caller's metrics and the experiment clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The metric is present and strictly above `value`.
    Above {
        /// Metric name, as the caller supplies it.
        metric: String,
        /// Threshold.
        value: f64,
    },
    /// The metric is present and strictly below `value`.
    Below {
        /// Metric name.
        metric: String,
        /// Threshold.
        value: f64,
    },
    /// The experiment clock has reached `ms`.
    AtLeastMs {
        /// Milliseconds since the experiment started.
        ms: u64,
    },
    /// Every term holds.
    All(Vec<Condition>),
    /// Some term holds.
    Any(Vec<Condition>),
}

/// Why a condition is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConditionError {
    /// A metric name is empty or longer than [`METRIC_LEN_MAX`].
    #[error("metric name must be 1-{METRIC_LEN_MAX} bytes")]
    MetricName,
    /// A threshold is NaN or infinite.
    #[error("threshold of {metric} is not finite")]
    NotFinite {
        /// The metric.
        metric: String,
    },
    /// An `All` or `Any` has no terms or more than [`CONDITION_TERMS_MAX`].
    #[error("all/any needs 1-{CONDITION_TERMS_MAX} terms, has {terms}")]
    Terms {
        /// How many it has.
        terms: usize,
    },
    /// Nested deeper than [`CONDITION_DEPTH_MAX`].
    #[error("nested deeper than {CONDITION_DEPTH_MAX}")]
    TooDeep,
}

impl Condition {
    /// Whether it holds at `now_ms` over `metrics`.
    pub fn holds(&self, now_ms: u64, metrics: &BTreeMap<String, f64>) -> bool {
        match self {
            Condition::Above { metric, value } => metrics.get(metric).is_some_and(|m| m > value),
            Condition::Below { metric, value } => metrics.get(metric).is_some_and(|m| m < value),
            Condition::AtLeastMs { ms } => now_ms >= *ms,
            Condition::All(terms) => terms.iter().all(|c| c.holds(now_ms, metrics)),
            Condition::Any(terms) => terms.iter().any(|c| c.holds(now_ms, metrics)),
        }
    }

    /// The metric names it reads.
    pub fn metrics(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        self.collect_metrics(&mut out);
        out
    }

    fn collect_metrics<'a>(&'a self, out: &mut BTreeSet<&'a str>) {
        match self {
            Condition::Above { metric, .. } | Condition::Below { metric, .. } => {
                out.insert(metric);
            }
            Condition::AtLeastMs { .. } => {}
            Condition::All(terms) | Condition::Any(terms) => {
                terms.iter().for_each(|c| c.collect_metrics(out));
            }
        }
    }

    /// Checks names, thresholds and the nesting limits.
    pub fn validate(&self) -> Result<(), ConditionError> {
        self.validate_at(1)
    }

    fn validate_at(&self, depth: usize) -> Result<(), ConditionError> {
        if depth > CONDITION_DEPTH_MAX {
            return Err(ConditionError::TooDeep);
        }
        match self {
            Condition::Above { metric, value } | Condition::Below { metric, value } => {
                if metric.is_empty() || metric.len() > METRIC_LEN_MAX {
                    return Err(ConditionError::MetricName);
                }
                if !value.is_finite() {
                    return Err(ConditionError::NotFinite {
                        metric: metric.clone(),
                    });
                }
                Ok(())
            }
            Condition::AtLeastMs { .. } => Ok(()),
            Condition::All(terms) | Condition::Any(terms) => {
                if terms.is_empty() || terms.len() > CONDITION_TERMS_MAX {
                    return Err(ConditionError::Terms { terms: terms.len() });
                }
                terms.iter().try_for_each(|c| c.validate_at(depth + 1))
            }
        }
    }
}

/// When a fault starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Timing {
    /// At the first step at or after `ms` (deterministic).
    At {
        /// Milliseconds since the experiment started.
        ms: u64,
    },
    /// With `probability` at each check; checks fall at every multiple of
    /// `every_ms` after the start (probabilistic).
    Chance {
        /// Chance per check, in `0.0..=1.0`.
        probability: f64,
        /// Milliseconds between checks, at least 1.
        every_ms: u64,
    },
    /// At the first step at which the condition holds (conditional).
    When(Condition),
}

/// When an active fault stops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifetime {
    /// At the first step at least `ms` after activation.
    Fixed {
        /// Milliseconds on, at least 1.
        ms: u64,
    },
    /// At the first step after activation at which the condition holds.
    Until(Condition),
    /// Only at rollback.
    Permanent,
}

/// One fault and when it is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledFault<F> {
    /// Unique within the injector, 1 to [`ID_LEN_MAX`] bytes.
    pub id: String,
    /// What the fault is; the injector only hands it back.
    pub fault: F,
    /// When it starts.
    pub timing: Timing,
    /// When it stops.
    pub duration: Lifetime,
}

/// Why a schedule is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum InjectError {
    /// A fault id is empty or longer than [`ID_LEN_MAX`].
    #[error("fault id {id:?} must be 1-{ID_LEN_MAX} bytes")]
    Id {
        /// The id (cut to [`ID_LEN_MAX`] characters).
        id: String,
    },
    /// Two faults share an id.
    #[error("fault id {id:?} is used twice")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// More than [`FAULTS_MAX`] faults.
    #[error("more than {FAULTS_MAX} faults")]
    TooMany,
    /// A chance is not in `0.0..=1.0`.
    #[error("fault {id}: probability {probability} is not in 0..=1")]
    Probability {
        /// The fault.
        id: String,
        /// The chance given.
        probability: f64,
    },
    /// A chance is checked every 0 ms.
    #[error("fault {id}: every_ms must be at least 1")]
    ZeroInterval {
        /// The fault.
        id: String,
    },
    /// A fixed lifetime of 0 ms.
    #[error("fault {id}: a fixed lifetime must be at least 1 ms")]
    ZeroLifetime {
        /// The fault.
        id: String,
    },
    /// A timing or lifetime condition is refused.
    #[error("fault {id}: {source}")]
    Condition {
        /// The fault.
        id: String,
        /// Why.
        source: ConditionError,
    },
}

impl<F> ScheduledFault<F> {
    /// Checks the id, the chance, the intervals and the conditions.
    pub fn validate(&self) -> Result<(), InjectError> {
        let id = || self.id.clone();
        if self.id.is_empty() || self.id.len() > ID_LEN_MAX {
            return Err(InjectError::Id {
                id: self.id.chars().take(ID_LEN_MAX).collect(),
            });
        }
        let condition = |c: &Condition| {
            c.validate()
                .map_err(|source| InjectError::Condition { id: id(), source })
        };
        match &self.timing {
            Timing::At { .. } => {}
            Timing::Chance {
                probability,
                every_ms,
            } => {
                if !(0.0..=1.0).contains(probability) {
                    return Err(InjectError::Probability {
                        id: id(),
                        probability: *probability,
                    });
                }
                if *every_ms == 0 {
                    return Err(InjectError::ZeroInterval { id: id() });
                }
            }
            Timing::When(c) => condition(c)?,
        }
        match &self.duration {
            Lifetime::Fixed { ms: 0 } => Err(InjectError::ZeroLifetime { id: id() }),
            Lifetime::Until(c) => condition(c),
            Lifetime::Fixed { .. } | Lifetime::Permanent => Ok(()),
        }
    }
}

/// Where a fault is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not started. `checks` counts the `Chance` checks already made.
    Pending {
        /// Chance checks consumed (the multiples of `every_ms` passed).
        checks: u64,
    },
    /// On since `since_ms`.
    Active {
        /// When it activated.
        since_ms: u64,
    },
    /// Was on from `since_ms` to `until_ms`; never on again.
    Done {
        /// When it activated.
        since_ms: u64,
        /// When it stopped.
        until_ms: u64,
    },
    /// Rolled back or stopped before it ever started; never on.
    Cancelled,
}

/// Why a fault stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its fixed lifetime ran out.
    Expired,
    /// Its `Until` condition held.
    ConditionMet,
    /// The injector was rolled back.
    RolledBack,
}

/// A fault starting or stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// It started.
    Activated,
    /// It stopped.
    Deactivated(EndReason),
}

/// One fault starting or stopping, for the caller to apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition<F> {
    /// The fault's id.
    pub id: String,
    /// The fault.
    pub fault: F,
    /// The step's time.
    pub at_ms: u64,
    /// Started or stopped.
    pub change: Change,
}

/// The fault schedule. See the module docs.
#[derive(Debug, Clone)]
pub struct Injector<F> {
    faults: Vec<(ScheduledFault<F>, Phase)>,
    last_ms: u64,
    stopped: bool,
}

impl<F: Clone> Injector<F> {
    /// An injector for `faults`, each validated, ids unique.
    pub fn new(faults: Vec<ScheduledFault<F>>) -> Result<Injector<F>, InjectError> {
        if faults.len() > FAULTS_MAX {
            return Err(InjectError::TooMany);
        }
        let mut ids = BTreeSet::new();
        for f in &faults {
            f.validate()?;
            if !ids.insert(f.id.as_str()) {
                return Err(InjectError::DuplicateId { id: f.id.clone() });
            }
        }
        Ok(Injector {
            faults: faults
                .into_iter()
                .map(|f| (f, Phase::Pending { checks: 0 }))
                .collect(),
            last_ms: 0,
            stopped: false,
        })
    }

    /// Advances to `now_ms`: first stops the active faults whose lifetime
    /// ended, then starts the pending ones whose timing came, each in
    /// schedule order. After [`Injector::rollback`] it does nothing.
    pub fn step(
        &mut self,
        now_ms: u64,
        metrics: &BTreeMap<String, f64>,
        rng: &mut ChaCha8Rng,
    ) -> Vec<Transition<F>> {
        if self.stopped {
            return Vec::new();
        }
        let now_ms = now_ms.max(self.last_ms);
        self.last_ms = now_ms;
        let mut out = Vec::new();
        for (fault, phase) in &mut self.faults {
            let Phase::Active { since_ms } = *phase else {
                continue;
            };
            if let Some(reason) = ended(&fault.duration, since_ms, now_ms, metrics) {
                *phase = Phase::Done {
                    since_ms,
                    until_ms: now_ms,
                };
                out.push(transition(fault, now_ms, Change::Deactivated(reason)));
            }
        }
        for (fault, phase) in &mut self.faults {
            let Phase::Pending { checks } = phase else {
                continue;
            };
            if starts(&fault.timing, checks, now_ms, metrics, rng) {
                *phase = Phase::Active { since_ms: now_ms };
                out.push(transition(fault, now_ms, Change::Activated));
            }
        }
        out
    }

    /// Stops everything at `now_ms`: every active fault is deactivated
    /// (returned, in schedule order), every pending one cancelled, and no
    /// later step starts anything. Calling it again returns nothing.
    pub fn rollback(&mut self, now_ms: u64) -> Vec<Transition<F>> {
        let now_ms = now_ms.max(self.last_ms);
        self.last_ms = now_ms;
        self.stopped = true;
        let mut out = Vec::new();
        for (fault, phase) in &mut self.faults {
            match *phase {
                Phase::Active { since_ms } => {
                    *phase = Phase::Done {
                        since_ms,
                        until_ms: now_ms,
                    };
                    out.push(transition(
                        fault,
                        now_ms,
                        Change::Deactivated(EndReason::RolledBack),
                    ));
                }
                Phase::Pending { .. } => *phase = Phase::Cancelled,
                Phase::Done { .. } | Phase::Cancelled => {}
            }
        }
        out
    }

    /// The faults on now, in schedule order.
    pub fn active(&self) -> Vec<&ScheduledFault<F>> {
        self.faults
            .iter()
            .filter(|(_, p)| matches!(p, Phase::Active { .. }))
            .map(|(f, _)| f)
            .collect()
    }

    /// Every fault with its phase, in schedule order.
    pub fn faults(&self) -> impl Iterator<Item = (&ScheduledFault<F>, Phase)> {
        self.faults.iter().map(|(f, p)| (f, *p))
    }

    /// The phase of fault `id`, if it exists.
    pub fn phase(&self, id: &str) -> Option<Phase> {
        self.faults
            .iter()
            .find(|(f, _)| f.id == id)
            .map(|(_, p)| *p)
    }

    /// True after [`Injector::rollback`].
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// True when no fault is active or can still start: every fault is
    /// done or cancelled (or the injector is stopped).
    pub fn is_finished(&self) -> bool {
        self.stopped
            || self
                .faults
                .iter()
                .all(|(_, p)| matches!(p, Phase::Done { .. } | Phase::Cancelled))
    }
}

fn transition<F: Clone>(fault: &ScheduledFault<F>, at_ms: u64, change: Change) -> Transition<F> {
    Transition {
        id: fault.id.clone(),
        fault: fault.fault.clone(),
        at_ms,
        change,
    }
}

/// Whether a fault active since `since_ms` stops at `now_ms`. Not in the
/// step it started.
fn ended(
    duration: &Lifetime,
    since_ms: u64,
    now_ms: u64,
    metrics: &BTreeMap<String, f64>,
) -> Option<EndReason> {
    if now_ms == since_ms {
        return None;
    }
    match duration {
        Lifetime::Fixed { ms } => (now_ms - since_ms >= *ms).then_some(EndReason::Expired),
        Lifetime::Until(c) => c.holds(now_ms, metrics).then_some(EndReason::ConditionMet),
        Lifetime::Permanent => None,
    }
}

/// Whether a pending fault starts at `now_ms`; consumes the chance checks
/// that fell due.
fn starts(
    timing: &Timing,
    checks: &mut u64,
    now_ms: u64,
    metrics: &BTreeMap<String, f64>,
    rng: &mut ChaCha8Rng,
) -> bool {
    match timing {
        Timing::At { ms } => now_ms >= *ms,
        Timing::When(c) => c.holds(now_ms, metrics),
        Timing::Chance {
            probability,
            every_ms,
        } => {
            let due_total = now_ms / every_ms;
            let due = due_total.saturating_sub(*checks);
            if due == 0 {
                return false;
            }
            *checks = due_total;
            // At least one of `due` independent checks fires.
            let p = 1.0 - (1.0 - probability).powf(due as f64);
            rng.random::<f64>() < p
        }
    }
}

#[cfg(test)]
mod tests;
