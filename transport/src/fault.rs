//! FaultPlan: drop, delay, slow-down, partial, partition and corruption
//! rules that every transport obeys.
//!
//! The sender consults the plan for each payload before it leaves, so the
//! same rules cut a SimNet link in a test and a QUIC link in a real
//! deployment. Rules are data (serde), shared behind an `Arc`, and change at
//! run time. Chance comes from the caller's RNG, so a seeded run stays
//! reproducible. Time (for [`FaultRule::Slow`]'s ramp) is tokio's clock, so
//! under `tokio::time::pause` a ramp follows virtual time.
//!
//! Limits: at most [`RULES_MAX`] rules; every added delay is at most
//! [`FAULT_DELAY_MS_MAX`], so a rule cannot park a payload for ever or
//! overflow a deadline.

use crate::{FacilityId, TrafficClass};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// Most rules a plan holds; adding more is refused.
pub const RULES_MAX: usize = 256;

/// Largest delay one rule may add (one hour), in milliseconds.
pub const FAULT_DELAY_MS_MAX: u64 = 3_600_000;

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
    /// A link that slows down progressively: payloads from `from` to `to`
    /// are held for an extra delay that grows linearly from 0 to `delay_ms`
    /// over the `ramp_ms` after the rule was added, then stays at
    /// `delay_ms`. Without a ramp (or a ramp of 0) the full delay applies at
    /// once.
    Slow {
        /// Senders covered.
        from: Selector,
        /// Receivers covered.
        to: Selector,
        /// Added delay once the ramp is over, in milliseconds.
        delay_ms: u64,
        /// How long the delay takes to grow to `delay_ms`, in milliseconds.
        ramp_ms: Option<u64>,
    },
    /// Only some payloads suffer: each payload from `from` to `to` is
    /// affected with chance `fraction`; an affected one is lost with chance
    /// `loss` and otherwise held for an extra `delay_ms`.
    Partial {
        /// Senders covered.
        from: Selector,
        /// Receivers covered.
        to: Selector,
        /// Chance that a payload is affected (0.0..=1.0).
        fraction: f64,
        /// Added delay of an affected payload, in milliseconds.
        delay_ms: u64,
        /// Chance that an affected payload is lost (0.0..=1.0).
        loss: f64,
    },
    /// Every `every`-th payload of at least `min_len` bytes from `from` to
    /// `to` arrives with one byte in its middle flipped: a damaged frame
    /// that still arrives whole, for the checks above the transport (a
    /// snapshot chunk's checksum, a signature) to catch. Counted, not
    /// drawn, so a test sees exactly which payloads suffer; a retry is a
    /// new payload and is counted again.
    Corrupt {
        /// Senders covered.
        from: Selector,
        /// Receivers covered.
        to: Selector,
        /// One payload in this many (at least 1).
        every: u32,
        /// Smaller payloads pass untouched.
        min_len: usize,
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
    /// A drop or loss probability outside 0..=1 (or NaN).
    #[error("drop probability {0} is outside 0..=1")]
    BadProbability(f64),
    /// A [`FaultRule::Partial`] fraction outside 0..=1 (or NaN).
    #[error("affected fraction {0} is outside 0..=1")]
    BadFraction(f64),
    /// An added delay above [`FAULT_DELAY_MS_MAX`].
    #[error("delay {0} ms is above {FAULT_DELAY_MS_MAX} ms")]
    DelayTooLong(u64),
    /// A [`FaultRule::Corrupt`] with `every` = 0.
    #[error("a corruption rule needs every >= 1")]
    BadEvery,
}

impl FaultRule {
    /// Checks the rule's numbers: probabilities and fractions in 0..=1,
    /// delays at most [`FAULT_DELAY_MS_MAX`].
    pub fn validate(&self) -> Result<(), FaultPlanError> {
        let unit = |p: f64| (0.0..=1.0).contains(&p);
        let delay = |ms: u64| {
            if ms > FAULT_DELAY_MS_MAX {
                return Err(FaultPlanError::DelayTooLong(ms));
            }
            Ok(())
        };
        match *self {
            FaultRule::Drop { probability, .. } if !unit(probability) => {
                Err(FaultPlanError::BadProbability(probability))
            }
            FaultRule::Delay { delay_ms, .. } | FaultRule::Slow { delay_ms, .. } => delay(delay_ms),
            FaultRule::Partial {
                fraction,
                delay_ms,
                loss,
                ..
            } => {
                if !unit(fraction) {
                    return Err(FaultPlanError::BadFraction(fraction));
                }
                if !unit(loss) {
                    return Err(FaultPlanError::BadProbability(loss));
                }
                delay(delay_ms)
            }
            FaultRule::Corrupt { every: 0, .. } => Err(FaultPlanError::BadEvery),
            FaultRule::Drop { .. } | FaultRule::Partition { .. } | FaultRule::Corrupt { .. } => {
                Ok(())
            }
        }
    }
}

/// The delay a [`FaultRule::Slow`] adds `since` it was added: linear from 0
/// to `delay_ms` over `ramp_ms`, then flat.
fn ramped(delay_ms: u64, ramp_ms: Option<u64>, since: Duration) -> Duration {
    let full = Duration::from_millis(delay_ms);
    let ramp = Duration::from_millis(ramp_ms.unwrap_or(0));
    if since >= ramp {
        return full;
    }
    // Both fit in u64 microseconds: delay_ms <= FAULT_DELAY_MS_MAX and
    // since < ramp.
    let us = full.as_micros() * since.as_micros() / ramp.as_micros();
    Duration::from_micros(us as u64)
}

#[derive(Debug, Default)]
struct Rules {
    next_id: u64,
    rules: Vec<(RuleId, FaultRule, Instant, AtomicU64)>,
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

    /// Adds a rule, after [`FaultRule::validate`]. A [`FaultRule::Slow`]
    /// ramp starts now (tokio's clock).
    pub fn add(&self, rule: FaultRule) -> Result<RuleId, FaultPlanError> {
        rule.validate()?;
        let added = Instant::now();
        let mut inner = self.inner.write().expect("fault plan lock");
        if inner.rules.len() >= RULES_MAX {
            return Err(FaultPlanError::Full);
        }
        let id = RuleId(inner.next_id);
        inner.next_id += 1;
        inner.rules.push((id, rule, added, AtomicU64::new(0)));
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
        inner.rules.retain(|(rid, ..)| *rid != id);
        inner.rules.len() != before
    }

    /// Removes every rule (heals every partition).
    pub fn clear(&self) {
        self.inner.write().expect("fault plan lock").rules.clear();
    }

    /// The rules in force.
    pub fn rules(&self) -> Vec<FaultRule> {
        let inner = self.inner.read().expect("fault plan lock");
        inner.rules.iter().map(|(_, r, ..)| r.clone()).collect()
    }

    /// Applies the [`FaultRule::Corrupt`] rules to a payload about to leave
    /// `from` for `to`: true if a byte of it was flipped.
    pub fn corrupt(&self, from: &FacilityId, to: &FacilityId, payload: &mut [u8]) -> bool {
        let inner = self.inner.read().expect("fault plan lock");
        for (_, rule, _, seen) in &inner.rules {
            if let FaultRule::Corrupt {
                from: f,
                to: t,
                every,
                min_len,
            } = rule
            {
                if f.covers(from) && t.covers(to) && payload.len() >= (*min_len).max(1) {
                    let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
                    if n % u64::from(*every) == 0 {
                        let mid = payload.len() / 2;
                        payload[mid] ^= 0x5a;
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Decides one payload's fate: the first rule that drops it wins,
    /// otherwise the delays of every covering rule add up. Draws from `rng`
    /// only for probabilistic rules ([`FaultRule::Drop`],
    /// [`FaultRule::Partial`]), so a plan without them consumes no
    /// randomness. Reads tokio's clock only for a ramping
    /// [`FaultRule::Slow`].
    pub fn judge<R: Rng + ?Sized>(
        &self,
        from: &FacilityId,
        to: &FacilityId,
        class: TrafficClass,
        rng: &mut R,
    ) -> Verdict {
        let inner = self.inner.read().expect("fault plan lock");
        let mut delay = Duration::ZERO;
        for (_, rule, added, _) in &inner.rules {
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
                FaultRule::Slow {
                    from: f,
                    to: t,
                    delay_ms,
                    ramp_ms,
                } => {
                    if f.covers(from) && t.covers(to) {
                        let since = match ramp_ms {
                            Some(r) if *r > 0 => added.elapsed(),
                            _ => Duration::MAX,
                        };
                        delay += ramped(*delay_ms, *ramp_ms, since);
                    }
                }
                FaultRule::Partial {
                    from: f,
                    to: t,
                    fraction,
                    delay_ms,
                    loss,
                } => {
                    if f.covers(from) && t.covers(to) && rng.random_bool(*fraction) {
                        if rng.random_bool(*loss) {
                            return Verdict::Drop;
                        }
                        delay += Duration::from_millis(*delay_ms);
                    }
                }
                // Applied to the bytes by `corrupt`.
                FaultRule::Corrupt { .. } => {}
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

    fn partial(fraction: f64, delay_ms: u64, loss: f64) -> FaultRule {
        FaultRule::Partial {
            from: Selector::Any,
            to: Selector::Any,
            fraction,
            delay_ms,
            loss,
        }
    }

    #[test]
    fn bad_fractions_losses_and_delays_are_refused() {
        let plan = FaultPlan::new();
        let e = plan.add(partial(1.5, 10, 0.0)).unwrap_err();
        assert_eq!(e, FaultPlanError::BadFraction(1.5));
        let e = plan.add(partial(0.5, 10, -0.1)).unwrap_err();
        assert_eq!(e, FaultPlanError::BadProbability(-0.1));
        let e = plan.add(partial(f64::NAN, 10, 0.0)).unwrap_err();
        assert!(matches!(e, FaultPlanError::BadFraction(f) if f.is_nan()));
        let slow = FaultRule::Slow {
            from: Selector::Any,
            to: Selector::Any,
            delay_ms: FAULT_DELAY_MS_MAX + 1,
            ramp_ms: None,
        };
        let e = plan.add(slow).unwrap_err();
        assert_eq!(e, FaultPlanError::DelayTooLong(FAULT_DELAY_MS_MAX + 1));
        assert!(plan.rules().is_empty(), "a refused rule was kept");
    }

    fn slow_delay(plan: &FaultPlan, rng: &mut rand_chacha::ChaCha8Rng) -> Duration {
        match plan.judge(&id("a"), &id("b"), TrafficClass::Control, rng) {
            Verdict::Deliver(d) => d,
            Verdict::Drop => panic!("a slow rule dropped a payload"),
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn slow_rule_ramps_linearly_on_tokio_time_then_holds() {
        let plan = FaultPlan::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        plan.add(FaultRule::Slow {
            from: Selector::one(&id("a")),
            to: Selector::Any,
            delay_ms: 200,
            ramp_ms: Some(1_000),
        })
        .unwrap();
        assert_eq!(slow_delay(&plan, &mut rng), Duration::ZERO);
        let mut last = Duration::ZERO;
        for step in 1..=5u64 {
            tokio::time::advance(Duration::from_millis(250)).await;
            let d = slow_delay(&plan, &mut rng);
            let expected = Duration::from_millis((step * 50).min(200));
            assert_eq!(d, expected, "after {} ms", step * 250);
            assert!(d >= last, "the ramp went down");
            last = d;
        }
        let back = plan.judge(&id("b"), &id("a"), TrafficClass::Control, &mut rng);
        assert_eq!(back, Verdict::Deliver(Duration::ZERO), "only a -> *");
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn slow_rule_without_ramp_applies_at_once() {
        let plan = FaultPlan::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        plan.add(FaultRule::Slow {
            from: Selector::Any,
            to: Selector::Any,
            delay_ms: 80,
            ramp_ms: None,
        })
        .unwrap();
        assert_eq!(slow_delay(&plan, &mut rng), Duration::from_millis(80));
    }

    #[test]
    fn partial_affects_about_fraction_and_loses_about_loss_of_those() {
        let plan = FaultPlan::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        plan.add(partial(0.3, 40, 0.5)).unwrap();
        let n = 10_000;
        let (mut dropped, mut delayed, mut clean) = (0, 0, 0);
        for _ in 0..n {
            match plan.judge(&id("a"), &id("b"), TrafficClass::Control, &mut rng) {
                Verdict::Drop => dropped += 1,
                Verdict::Deliver(d) if d == Duration::from_millis(40) => delayed += 1,
                Verdict::Deliver(d) if d.is_zero() => clean += 1,
                Verdict::Deliver(d) => panic!("unexpected delay {d:?}"),
            }
        }
        let affected = dropped + delayed;
        assert!((2_800..3_200).contains(&affected), "affected {affected}");
        assert!((1_350..1_650).contains(&dropped), "dropped {dropped}");
        assert_eq!(affected + clean, n);
    }

    #[test]
    fn partial_with_fraction_one_and_loss_one_drops_everything() {
        let plan = FaultPlan::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        plan.add(partial(1.0, 0, 1.0)).unwrap();
        for _ in 0..100 {
            let v = plan.judge(&id("a"), &id("b"), TrafficClass::Heartbeat, &mut rng);
            assert_eq!(v, Verdict::Drop);
        }
    }

    #[test]
    fn new_rules_round_trip_through_serde() {
        let rules = vec![
            partial(0.25, 10, 0.1),
            FaultRule::Slow {
                from: Selector::one(&id("a")),
                to: Selector::Any,
                delay_ms: 5,
                ramp_ms: Some(100),
            },
        ];
        let bytes = bulwark_storage::codec::encode(&rules).unwrap();
        let back: Vec<FaultRule> = bulwark_storage::codec::decode(&bytes).unwrap();
        assert_eq!(back, rules);
    }
}
