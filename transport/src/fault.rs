//! FaultPlan: drop, delay and partition rules that every transport obeys.
//!
//! The sender consults the plan for each payload before it leaves, so the
//! same rules cut a SimNet link in a test and a QUIC link in a real
//! deployment. Rules are data (serde), shared behind an `Arc`, and change at
//! run time. Chance comes from the caller's RNG, so a seeded run stays
//! reproducible.

use crate::{FacilityId, TrafficClass};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Most rules a plan holds; adding more is refused.
pub const RULES_MAX: usize = 256;

/// Which facilities a rule covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selector {
    /// Every facility.
    Any,
    /// These facilities.
    OneOf(BTreeSet<FacilityId>),
}

impl Selector {
    /// A selector for one facility.
    pub fn one(id: &FacilityId) -> Self {
        Selector::OneOf(BTreeSet::from([id.clone()]))
    }

    fn covers(&self, id: &FacilityId) -> bool {
        match self {
            Selector::Any => true,
            Selector::OneOf(set) => set.contains(id),
        }
    }
}

/// One fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FaultRule {
    /// Drop payloads from `from` to `to` with `probability` (0.0..=1.0).
    Drop {
        /// Senders covered.
        from: Selector,
        /// Receivers covered.
        to: Selector,
        /// Chance that each payload is dropped.
        probability: f64,
        /// Only this class, or every class when `None`.
        class: Option<TrafficClass>,
    },
    /// Hold payloads from `from` to `to` for an extra `delay_ms`.
    Delay {
        /// Senders covered.
        from: Selector,
        /// Receivers covered.
        to: Selector,
        /// Added delay in milliseconds.
        delay_ms: u64,
    },
    /// Nothing crosses between `side_a` and `side_b`; with `one_way`, only
    /// traffic from `side_a` to `side_b` is cut.
    Partition {
        /// One side.
        side_a: BTreeSet<FacilityId>,
        /// The other side.
        side_b: BTreeSet<FacilityId>,
        /// Cut only a -> b.
        one_way: bool,
    },
}

/// What happens to one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver, after this extra delay.
    Deliver(Duration),
    /// Drop it.
    Drop,
}

/// Handle to a rule, for removing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

/// Why a rule was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultPlanError {
    /// The plan already holds [`RULES_MAX`] rules.
    #[error("fault plan is full ({RULES_MAX} rules)")]
    Full,
    /// A drop probability outside 0..=1.
    #[error("drop probability {0} is outside 0..=1")]
    BadProbability(f64),
}

#[derive(Debug, Default)]
struct Rules {
    next_id: u64,
    rules: Vec<(RuleId, FaultRule)>,
}

/// A shared, run-time-changeable set of [`FaultRule`]s.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    inner: Arc<RwLock<Rules>>,
}

impl FaultPlan {
    /// An empty plan: everything is delivered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a rule.
    pub fn add(&self, rule: FaultRule) -> Result<RuleId, FaultPlanError> {
        if let FaultRule::Drop { probability, .. } = rule {
            if !(0.0..=1.0).contains(&probability) {
                return Err(FaultPlanError::BadProbability(probability));
            }
        }
        let mut inner = self.inner.write().expect("fault plan lock");
        if inner.rules.len() >= RULES_MAX {
            return Err(FaultPlanError::Full);
        }
        let id = RuleId(inner.next_id);
        inner.next_id += 1;
        inner.rules.push((id, rule));
        Ok(id)
    }

    /// Cuts all traffic between the two sides, both ways.
    pub fn partition(
        &self,
        side_a: impl IntoIterator<Item = FacilityId>,
        side_b: impl IntoIterator<Item = FacilityId>,
    ) -> Result<RuleId, FaultPlanError> {
        self.add(FaultRule::Partition {
            side_a: side_a.into_iter().collect(),
            side_b: side_b.into_iter().collect(),
            one_way: false,
        })
    }

    /// Removes one rule; false if it was already gone.
    pub fn remove(&self, id: RuleId) -> bool {
        let mut inner = self.inner.write().expect("fault plan lock");
        let before = inner.rules.len();
        inner.rules.retain(|(rid, _)| *rid != id);
        inner.rules.len() != before
    }

    /// Removes every rule (heals every partition).
    pub fn clear(&self) {
        self.inner.write().expect("fault plan lock").rules.clear();
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<FaultRule> {
        let inner = self.inner.read().expect("fault plan lock");
        inner.rules.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Decides one payload's fate. Draws from `rng` only for probabilistic
    /// drops, so a plan without them consumes no randomness.
    pub fn judge<R: Rng + ?Sized>(
        &self,
        from: &FacilityId,
        to: &FacilityId,
        class: TrafficClass,
        rng: &mut R,
    ) -> Verdict {
        let inner = self.inner.read().expect("fault plan lock");
        let mut delay = Duration::ZERO;
        for (_, rule) in &inner.rules {
            match rule {
                FaultRule::Partition {
                    side_a,
                    side_b,
                    one_way,
                } => {
                    let a_to_b = side_a.contains(from) && side_b.contains(to);
                    let b_to_a = side_b.contains(from) && side_a.contains(to);
                    if a_to_b || (!one_way && b_to_a) {
                        return Verdict::Drop;
                    }
                }
                FaultRule::Drop {
                    from: f,
                    to: t,
                    probability,
                    class: c,
                } => {
                    let covered = f.covers(from) && t.covers(to) && c.is_none_or(|c| c == class);
                    if covered && rng.random_bool(*probability) {
                        return Verdict::Drop;
                    }
                }
                FaultRule::Delay {
                    from: f,
                    to: t,
                    delay_ms,
                } => {
                    if f.covers(from) && t.covers(to) {
                        delay += Duration::from_millis(*delay_ms);
                    }
                }
            }
        }
        Verdict::Deliver(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn id(s: &str) -> FacilityId {
        s.parse().unwrap()
    }

    #[test]
    fn partition_cuts_both_ways_and_heals() {
        let plan = FaultPlan::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let r = plan.partition([id("a")], [id("b"), id("c")]).unwrap();
        let c = TrafficClass::Control;
        assert_eq!(plan.judge(&id("a"), &id("b"), c, &mut rng), Verdict::Drop);
        assert_eq!(plan.judge(&id("c"), &id("a"), c, &mut rng), Verdict::Drop);
        assert_eq!(
            plan.judge(&id("b"), &id("c"), c, &mut rng),
            Verdict::Deliver(Duration::ZERO)
        );
        assert!(plan.remove(r));
        assert_eq!(
            plan.judge(&id("a"), &id("b"), c, &mut rng),
            Verdict::Deliver(Duration::ZERO)
        );
    }

    #[test]
    fn one_way_partition_cuts_one_direction() {
        let plan = FaultPlan::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        plan.add(FaultRule::Partition {
            side_a: [id("a")].into(),
            side_b: [id("b")].into(),
            one_way: true,
        })
        .unwrap();
        let c = TrafficClass::Control;
        assert_eq!(plan.judge(&id("a"), &id("b"), c, &mut rng), Verdict::Drop);
        assert_eq!(
            plan.judge(&id("b"), &id("a"), c, &mut rng),
            Verdict::Deliver(Duration::ZERO)
        );
    }

    #[test]
    fn delays_add_up_and_drops_follow_probability() {
        let plan = FaultPlan::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for ms in [5, 7] {
            plan.add(FaultRule::Delay {
                from: Selector::Any,
                to: Selector::one(&id("b")),
                delay_ms: ms,
            })
            .unwrap();
        }
        let c = TrafficClass::Heartbeat;
        assert_eq!(
            plan.judge(&id("a"), &id("b"), c, &mut rng),
            Verdict::Deliver(Duration::from_millis(12))
        );
        plan.clear();
        plan.add(FaultRule::Drop {
            from: Selector::Any,
            to: Selector::Any,
            probability: 0.5,
            class: Some(TrafficClass::Heartbeat),
        })
        .unwrap();
        let dropped = (0..1000)
            .filter(|_| plan.judge(&id("a"), &id("b"), c, &mut rng) == Verdict::Drop)
            .count();
        assert!((400..600).contains(&dropped), "{dropped}");
        let control = TrafficClass::Control;
        assert_ne!(
            plan.judge(&id("a"), &id("b"), control, &mut rng),
            Verdict::Drop
        );
    }

    #[test]
    fn bad_probability_is_refused() {
        let plan = FaultPlan::new();
        let rule = FaultRule::Drop {
            from: Selector::Any,
            to: Selector::Any,
            probability: 1.5,
            class: None,
        };
        assert_eq!(plan.add(rule), Err(FaultPlanError::BadProbability(1.5)));
    }
}
