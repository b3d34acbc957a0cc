//! Health checks and SLO budgets.
//!
//! - [`Health`]: liveness, readiness (dependencies) and deep checks; a
//!   check is unhealthy only after `grace` consecutive failures, so one
//!   blip does not take a facility out of rotation.
//! - [`ErrorBudget`]: an availability SLO (say 99.9%) over a window; the
//!   budget's burn rate and an exhaustion event.
//! - [`LatencyBudget`]: the share of requests slower than a target, as a
//!   budget of its own.
//!
//! Sans-IO: the caller runs the checks and feeds the results and times.

use std::collections::{BTreeMap, VecDeque};

/// Which kind of check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The process is alive (served at `/health/live`).
    Live,
    /// It can serve: its dependencies answer (`/health/ready`).
    Ready,
    /// Everything, end to end (`/health/deep`).
    Deep,
}

#[derive(Debug, Clone)]
struct Check {
    kind: Kind,
    consecutive_failures: u32,
    last_error: Option<String>,
}

/// One check's view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckStatus {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: Kind,
    /// Healthy (fewer consecutive failures than the grace).
    pub healthy: bool,
    /// Consecutive failures now.
    pub consecutive_failures: u32,
    /// The last failure's message.
    pub last_error: Option<String>,
}

/// The registry of checks.
#[derive(Debug, Clone)]
pub struct Health {
    grace: u32,
    checks: BTreeMap<String, Check>,
}

impl Health {
    /// Checks fail only after `grace` consecutive failures (at least 1).
    pub fn new(grace: u32) -> Health {
        Health {
            grace: grace.max(1),
            checks: BTreeMap::new(),
        }
    }

    /// Adds a check (healthy until it fails).
    pub fn register(&mut self, name: &str, kind: Kind) {
        self.checks.insert(
            name.to_string(),
            Check {
                kind,
                consecutive_failures: 0,
                last_error: None,
            },
        );
    }

    /// Records one run of check `name`.
    pub fn report(&mut self, name: &str, result: Result<(), String>) {
        let Some(c) = self.checks.get_mut(name) else {
            return;
        };
        match result {
            Ok(()) => c.consecutive_failures = 0,
            Err(e) => {
                c.consecutive_failures = c.consecutive_failures.saturating_add(1);
                c.last_error = Some(e);
            }
        }
    }

    /// Whether every check of `kind` and of the kinds below it is healthy
    /// (ready includes live; deep includes both).
    pub fn healthy(&self, kind: Kind) -> bool {
        self.checks
            .values()
            .filter(|c| c.kind <= kind)
            .all(|c| c.consecutive_failures < self.grace)
    }

    /// Every check's status.
    pub fn status(&self) -> Vec<CheckStatus> {
        self.checks
            .iter()
            .map(|(name, c)| CheckStatus {
                name: name.clone(),
                kind: c.kind,
                healthy: c.consecutive_failures < self.grace,
                consecutive_failures: c.consecutive_failures,
                last_error: c.last_error.clone(),
            })
            .collect()
    }
}

/// An availability SLO over a sliding window of per-second buckets.
#[derive(Debug, Clone)]
pub struct ErrorBudget {
    /// Allowed bad requests per million (999.9‰ availability = 1,000).
    allowed_ppm: u64,
    window_s: u64,
    buckets: VecDeque<(u64, u64, u64)>,
    exhausted: bool,
}

/// An event from a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetEvent {
    /// The budget ran out.
    Exhausted,
    /// It is back.
    Restored,
}

impl ErrorBudget {
    /// An SLO of `target_ppm` good requests per million over `window_s`
    /// seconds (999,000 = 99.9%).
    pub fn new(target_ppm: u64, window_s: u64) -> ErrorBudget {
        ErrorBudget {
            allowed_ppm: 1_000_000 - target_ppm.min(1_000_000),
            window_s: window_s.max(1),
            buckets: VecDeque::new(),
            exhausted: false,
        }
    }

    fn trim(&mut self, now_s: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|(s, _, _)| s + self.window_s <= now_s)
        {
            self.buckets.pop_front();
        }
    }

    /// Records one request; returns an event when the budget runs out or
    /// comes back.
    pub fn record(&mut self, good: bool, now_ms: u64) -> Option<BudgetEvent> {
        let now_s = now_ms / 1000;
        self.trim(now_s);
        match self.buckets.back_mut() {
            Some((s, total, bad)) if *s == now_s => {
                *total += 1;
                *bad += u64::from(!good);
            }
            _ => self.buckets.push_back((now_s, 1, u64::from(!good))),
        }
        let out = self.remaining_ppm() <= 0;
        match (out, self.exhausted) {
            (true, false) => {
                self.exhausted = true;
                Some(BudgetEvent::Exhausted)
            }
            (false, true) => {
                self.exhausted = false;
                Some(BudgetEvent::Restored)
            }
            _ => None,
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.buckets
            .iter()
            .fold((0, 0), |(t, b), (_, tt, bb)| (t + tt, b + bb))
    }

    /// The budget left, in parts per million of the window's requests
    /// (negative: overspent).
    pub fn remaining_ppm(&self) -> i64 {
        let (total, bad) = self.totals();
        if total == 0 {
            return self.allowed_ppm as i64;
        }
        self.allowed_ppm as i64 - (bad * 1_000_000 / total) as i64
    }

    /// How fast the budget burns: the bad share over the allowed share
    /// (1.0 spends it exactly over the window).
    pub fn burn_rate(&self) -> f64 {
        let (total, bad) = self.totals();
        if total == 0 || self.allowed_ppm == 0 {
            return 0.0;
        }
        (bad as f64 / total as f64) / (self.allowed_ppm as f64 / 1e6)
    }
}

/// A latency SLO: at most `allowed_ppm` of requests slower than
/// `target_ms`, tracked like an error budget.
#[derive(Debug, Clone)]
pub struct LatencyBudget {
    target_ms: u64,
    budget: ErrorBudget,
}

impl LatencyBudget {
    /// `target_ppm` of requests within `target_ms` over `window_s`.
    pub fn new(target_ms: u64, target_ppm: u64, window_s: u64) -> LatencyBudget {
        LatencyBudget {
            target_ms,
            budget: ErrorBudget::new(target_ppm, window_s),
        }
    }

    /// Records one request's latency.
    pub fn record(&mut self, latency_ms: u64, now_ms: u64) -> Option<BudgetEvent> {
        self.budget.record(latency_ms <= self.target_ms, now_ms)
    }

    /// The underlying budget.
    pub fn budget(&self) -> &ErrorBudget {
        &self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_fails_only_after_its_grace() {
        let mut h = Health::new(3);
        h.register("redb", Kind::Ready);
        h.register("process", Kind::Live);
        h.register("quorum", Kind::Deep);
        h.report("redb", Err("slow".into()));
        h.report("redb", Err("slow".into()));
        assert!(h.healthy(Kind::Ready), "two failures are within the grace");
        h.report("redb", Err("down".into()));
        assert!(!h.healthy(Kind::Ready));
        assert!(h.healthy(Kind::Live), "liveness does not depend on redb");
        assert!(!h.healthy(Kind::Deep), "deep includes ready");
        h.report("redb", Ok(()));
        assert!(h.healthy(Kind::Deep));
        let s = h.status();
        assert_eq!(
            s.iter()
                .find(|c| c.name == "redb")
                .unwrap()
                .last_error
                .as_deref(),
            Some("down")
        );
    }

    #[test]
    fn the_error_budget_burns_runs_out_and_comes_back() {
        // 99% over 60 s: 1% may fail.
        let mut b = ErrorBudget::new(990_000, 60);
        for i in 0..1_000 {
            assert_eq!(b.record(true, i), None);
        }
        let mut events = Vec::new();
        for i in 0..20 {
            events.extend(b.record(false, 1_000 + i));
        }
        assert_eq!(events, vec![BudgetEvent::Exhausted]);
        assert!(b.burn_rate() > 1.0);
        // A minute later the bad second has slid out.
        assert_eq!(b.record(true, 70_000), Some(BudgetEvent::Restored));
    }

    #[test]
    fn the_latency_budget_counts_slow_requests() {
        let mut l = LatencyBudget::new(100, 990_000, 60);
        for i in 0..100 {
            l.record(10, i);
        }
        assert_eq!(l.record(500, 100), None, "1 of 101 is within 1%");
        assert_eq!(l.record(500, 101), Some(BudgetEvent::Exhausted));
    }
}
