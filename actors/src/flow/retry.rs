//! Retries: exponential backoff with full or ±50% jitter and a cap, only
//! for errors classified as transient, within a retry budget (at most a
//! share of the requests over a sliding window). Sans-IO: the caller gives
//! the random draw and the time.

use std::collections::VecDeque;

/// How a failure is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// May succeed if tried again (timeout, overload, no leader).
    Transient,
    /// Will fail again (bad input, a rule, forbidden).
    Permanent,
}

/// How the delay is randomized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Uniform in `[0, d]` (AWS "full jitter").
    Full,
    /// Uniform in `[d/2, 3d/2]` (±50%).
    Equal,
}

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay, in ms.
    pub base_ms: u64,
    /// No delay above this, in ms.
    pub cap_ms: u64,
    /// Tries after the first, at most.
    pub max_retries: u32,
    /// Randomization.
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 50,
            cap_ms: 5_000,
            max_retries: 3,
            jitter: Jitter::Full,
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (1 for the first retry), from a
    /// uniform draw `u` in `[0, 1)`.
    pub fn delay_ms(&self, attempt: u32, u: f64) -> u64 {
        let exp = self
            .base_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(self.cap_ms);
        let u = u.clamp(0.0, 1.0);
        let d = match self.jitter {
            Jitter::Full => exp as f64 * u,
            Jitter::Equal => exp as f64 * (0.5 + u),
        };
        (d as u64).min(self.cap_ms)
    }
}

/// The retry budget: retries may be at most `ratio_pct`% of the requests
/// seen in the last `window_ms` (plus `min_per_window`, so a quiet system
/// can still retry).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    ratio_pct: u64,
    min_per_window: u64,
    window_ms: u64,
    requests: VecDeque<u64>,
    retries: VecDeque<u64>,
}

/// Most events a budget keeps per kind (bounds memory).
pub const BUDGET_EVENTS_MAX: usize = 100_000;

impl RetryBudget {
    /// A budget of `ratio_pct`% over `window_ms`.
    pub fn new(ratio_pct: u64, min_per_window: u64, window_ms: u64) -> RetryBudget {
        RetryBudget {
            ratio_pct,
            min_per_window,
            window_ms: window_ms.max(1),
            requests: VecDeque::new(),
            retries: VecDeque::new(),
        }
    }

    fn trim(&mut self, now_ms: u64) {
        for q in [&mut self.requests, &mut self.retries] {
            while q.front().is_some_and(|t| t + self.window_ms <= now_ms)
                || q.len() > BUDGET_EVENTS_MAX
            {
                q.pop_front();
            }
        }
    }

    /// Notes a first try.
    pub fn on_request(&mut self, now_ms: u64) {
        self.trim(now_ms);
        self.requests.push_back(now_ms);
    }

    /// Takes one retry from the budget, if there is room.
    pub fn try_retry(&mut self, now_ms: u64) -> bool {
        self.trim(now_ms);
        let allowed = self.requests.len() as u64 * self.ratio_pct / 100 + self.min_per_window;
        if (self.retries.len() as u64) < allowed {
            self.retries.push_back(now_ms);
            true
        } else {
            false
        }
    }

    /// Retries and requests in the window now.
    pub fn counts(&mut self, now_ms: u64) -> (u64, u64) {
        self.trim(now_ms);
        (self.retries.len() as u64, self.requests.len() as u64)
    }
}

/// What to do after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this many ms.
    RetryAfter(u64),
    /// Give up: permanent error, tries used up, or no budget.
    GiveUp(&'static str),
}

/// Decides after failed try number `attempt` (1 for the first try).
pub fn decide(
    backoff: &Backoff,
    budget: &mut RetryBudget,
    class: Class,
    attempt: u32,
    u: f64,
    now_ms: u64,
) -> Decision {
    if class == Class::Permanent {
        return Decision::GiveUp("permanent error");
    }
    if attempt > backoff.max_retries {
        return Decision::GiveUp("tries used up");
    }
    if !budget.try_retry(now_ms) {
        return Decision::GiveUp("retry budget exhausted");
    }
    Decision::RetryAfter(backoff.delay_ms(attempt, u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn backoff_doubles_jitters_and_caps() {
        let b = Backoff {
            base_ms: 100,
            cap_ms: 1_000,
            max_retries: 10,
            jitter: Jitter::Equal,
        };
        assert_eq!(b.delay_ms(1, 0.5), 100);
        assert_eq!(b.delay_ms(2, 0.5), 200);
        assert_eq!(b.delay_ms(3, 0.0), 200, "-50%");
        assert_eq!(b.delay_ms(3, 0.999), 599, "+50%");
        assert_eq!(b.delay_ms(9, 0.5), 1_000, "capped");
        let full = Backoff {
            jitter: Jitter::Full,
            ..b
        };
        assert_eq!(full.delay_ms(2, 0.0), 0);
        assert_eq!(full.delay_ms(60, 0.999), 999);
    }

    #[test]
    fn only_transient_errors_are_retried_within_the_tries() {
        let b = Backoff::default();
        let mut budget = RetryBudget::new(10, 100, 1_000);
        assert_eq!(
            decide(&b, &mut budget, Class::Permanent, 1, 0.5, 0),
            Decision::GiveUp("permanent error")
        );
        assert!(matches!(
            decide(&b, &mut budget, Class::Transient, 1, 0.5, 0),
            Decision::RetryAfter(_)
        ));
        assert_eq!(
            decide(&b, &mut budget, Class::Transient, 4, 0.5, 0),
            Decision::GiveUp("tries used up")
        );
    }

    proptest! {
        /// Retries in any window never exceed 10% of its requests (plus the
        /// floor).
        #[test]
        fn the_retry_budget_is_never_exceeded(
            events in proptest::collection::vec((0u64..50, any::<bool>()), 1..500),
        ) {
            let mut budget = RetryBudget::new(10, 1, 1_000);
            let mut now = 0;
            for (dt, retry) in events {
                now += dt;
                if retry {
                    if budget.try_retry(now) {
                        // At the moment a retry is granted, the window's
                        // retries are within the budget.
                        let (retries, requests) = budget.counts(now);
                        prop_assert!(retries <= requests * 10 / 100 + 1);
                    }
                } else {
                    budget.on_request(now);
                }
            }
        }
    }
}
