//! The circuit breaker core: closed / open / half-open over a count-based
//! or time-based sliding window, with failure-rate and slow-call-rate
//! thresholds, a minimum number of calls, an open duration, a half-open
//! probe budget, and forced-open and disabled states for operators.
//! Sans-IO: time is `now_ms`; transitions are drained as events.

use std::collections::VecDeque;

/// The breaker's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` calls.
    Count(usize),
    /// The calls of the last `ms` milliseconds (at most
    /// [`WINDOW_CALLS_MAX`] kept).
    Time(u64),
}

/// Calls a time window keeps at most (bounds memory).
pub const WINDOW_CALLS_MAX: usize = 100_000;

/// Settings of one breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Which calls are judged.
    pub window: Window,
    /// Open when at least this percentage of the window's calls failed.
    pub failure_rate_pct: u8,
    /// Open when at least this percentage were slow (100 with no slow calls
    /// possible turns it off: set `slow_call_ms` to `u64::MAX`).
    pub slow_call_rate_pct: u8,
    /// A call slower than this is slow.
    pub slow_call_ms: u64,
    /// No verdict on fewer calls than this.
    pub min_calls: usize,
    /// How long it stays open before probing.
    pub open_ms: u64,
    /// Calls let through while half-open; their rates decide.
    pub half_open_probes: usize,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window: Window::Count(100),
            failure_rate_pct: 50,
            slow_call_rate_pct: 100,
            slow_call_ms: 5_000,
            min_calls: 10,
            open_ms: 30_000,
            half_open_probes: 3,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<(), String> {
        match self.window {
            Window::Count(0) | Window::Time(0) => return Err("window must be > 0".into()),
            _ => {}
        }
        if self.failure_rate_pct == 0 || self.failure_rate_pct > 100 {
            return Err("failure_rate_pct must be in 1..=100".into());
        }
        if self.slow_call_rate_pct == 0 || self.slow_call_rate_pct > 100 {
            return Err("slow_call_rate_pct must be in 1..=100".into());
        }
        if self.min_calls == 0 || self.half_open_probes == 0 || self.open_ms == 0 {
            return Err("min_calls, half_open_probes and open_ms must be > 0".into());
        }
        Ok(())
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are refused until `until_ms`.
    Open {
        /// When probing may start.
        until_ms: u64,
    },
    /// Up to the probe budget passes; their outcomes decide.
    HalfOpen,
    /// An operator holds it open.
    ForcedOpen,
    /// An operator turned it off: everything passes, nothing is counted.
    Disabled,
}

impl State {
    /// The state's name, for metrics and events.
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

/// A refused call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit {state}: retry after {retry_after_ms} ms")]
pub struct Refused {
    /// The state's name.
    pub state: &'static str,
    /// When a call may pass again (an estimate for half-open and forced).
    pub retry_after_ms: u64,
}

/// Leave to make one call; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "report the call's outcome with on_result"]
pub struct Permit {
    epoch: u64,
    counted: bool,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed in a way that counts against the dependency.
    Failure,
    /// It failed in a way that says nothing about the dependency (bad
    /// input): not counted.
    Ignored,
}

/// A state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// From.
    pub from: &'static str,
    /// To.
    pub to: &'static str,
    /// When.
    pub at_ms: u64,
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Calls let through.
    pub permitted: u64,
    /// Calls refused.
    pub refused: u64,
    /// Successes reported.
    pub successes: u64,
    /// Failures reported.
    pub failures: u64,
    /// Slow calls reported.
    pub slow: u64,
    /// Transitions to open.
    pub opened: u64,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    at_ms: u64,
    failed: bool,
    slow: bool,
}

/// The breaker. See the module docs.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// Bumped at every transition: results of calls permitted before it
    /// are not counted.
    epoch: u64,
    window: VecDeque<Call>,
    /// Failed and slow calls in `window` (kept as the window moves, so a
    /// verdict is O(1)).
    window_failed: u64,
    window_slow: u64,
    probes_issued: usize,
    probes: Vec<Call>,
    stats: Stats,
    events: Vec<Transition>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: State::Closed,
            epoch: 0,
            window: VecDeque::new(),
            window_failed: 0,
            window_slow: 0,
            probes_issued: 0,
            probes: Vec::new(),
            stats: Stats::default(),
            events: Vec::new(),
        }
    }

    /// The state now (an open breaker past its duration reads as half-open
    /// only once a call asks).
    pub fn state(&self) -> State {
        self.state
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Takes the transitions since the last call.
    pub fn drain_events(&mut self) -> Vec<Transition> {
        std::mem::take(&mut self.events)
    }

    fn go(&mut self, to: State, now_ms: u64) {
        if to == self.state {
            return;
        }
        self.events.push(Transition {
            from: self.state.name(),
            to: to.name(),
            at_ms: now_ms,
        });
        if matches!(to, State::Open { .. } | State::ForcedOpen) {
            self.stats.opened += 1;
        }
        self.state = to;
        self.epoch += 1;
        self.window.clear();
        self.window_failed = 0;
        self.window_slow = 0;
        self.probes.clear();
        self.probes_issued = 0;
    }

    /// Asks to make a call.
    pub fn try_acquire(&mut self, now_ms: u64) -> Result<Permit, Refused> {
        if let State::Open { until_ms } = self.state {
            if now_ms >= until_ms {
                self.go(State::HalfOpen, now_ms);
            }
        }
        let permit = match self.state {
            State::Disabled => Ok(Permit {
                epoch: self.epoch,
                counted: false,
            }),
            State::Closed => Ok(Permit {
                epoch: self.epoch,
                counted: true,
            }),
            State::Open { until_ms } => Err(Refused {
                state: "open",
                retry_after_ms: (until_ms - now_ms).max(1),
            }),
            State::ForcedOpen => Err(Refused {
                state: "forced_open",
                retry_after_ms: self.config.open_ms,
            }),
            State::HalfOpen => {
                if self.probes_issued < self.config.half_open_probes {
                    self.probes_issued += 1;
                    Ok(Permit {
                        epoch: self.epoch,
                        counted: true,
                    })
                } else {
                    Err(Refused {
                        state: "half_open",
                        retry_after_ms: self.config.slow_call_ms.min(self.config.open_ms).max(1),
                    })
                }
            }
        };
        match &permit {
            Ok(_) => self.stats.permitted += 1,
            Err(_) => self.stats.refused += 1,
        }
        permit
    }

    /// Reports how a permitted call ended and how long it took.
    pub fn on_result(&mut self, permit: Permit, outcome: Outcome, took_ms: u64, now_ms: u64) {
        let slow = took_ms >= self.config.slow_call_ms;
        match outcome {
            Outcome::Success => self.stats.successes += 1,
            Outcome::Failure => self.stats.failures += 1,
            Outcome::Ignored => {
                // Says nothing of the dependency: a half-open probe it held
                // is given back, or the breaker would wait for it forever.
                if self.state == State::HalfOpen && permit.counted && permit.epoch == self.epoch {
                    self.probes_issued = self.probes_issued.saturating_sub(1);
                }
                return;
            }
        }
        self.stats.slow += u64::from(slow);
        if !permit.counted || permit.epoch != self.epoch {
            return;
        }
        let call = Call {
            at_ms: now_ms,
            failed: outcome == Outcome::Failure,
            slow,
        };
        match self.state {
            State::Closed => {
                self.window.push_back(call);
                self.window_failed += u64::from(call.failed);
                self.window_slow += u64::from(call.slow);
                self.trim(now_ms);
                let n = self.window.len() as u64;
                if self.window.len() >= self.config.min_calls
                    && self.over_thresholds(n, self.window_failed, self.window_slow)
                {
                    self.open(now_ms);
                }
            }
            State::HalfOpen => {
                self.probes.push(call);
                if self.probes.len() >= self.config.half_open_probes {
                    let n = self.probes.len() as u64;
                    let failed = self.probes.iter().filter(|c| c.failed).count() as u64;
                    let slow = self.probes.iter().filter(|c| c.slow).count() as u64;
                    if self.over_thresholds(n, failed, slow) {
                        self.open(now_ms);
                    } else {
                        self.go(State::Closed, now_ms);
                    }
                }
            }
            _ => {}
        }
    }

    fn trim(&mut self, now_ms: u64) {
        loop {
            let drop = match self.config.window {
                Window::Count(n) => self.window.len() > n,
                Window::Time(ms) => {
                    self.window.front().is_some_and(|c| c.at_ms + ms <= now_ms)
                        || self.window.len() > WINDOW_CALLS_MAX
                }
            };
            if !drop {
                break;
            }
            if let Some(c) = self.window.pop_front() {
                self.window_failed -= u64::from(c.failed);
                self.window_slow -= u64::from(c.slow);
            }
        }
    }

    fn over_thresholds(&self, n: u64, failed: u64, slow: u64) -> bool {
        n > 0
            && (failed * 100 >= u64::from(self.config.failure_rate_pct) * n
                || slow * 100 >= u64::from(self.config.slow_call_rate_pct) * n)
    }

    fn open(&mut self, now_ms: u64) {
        self.go(
            State::Open {
                until_ms: now_ms + self.config.open_ms,
            },
            now_ms,
        );
    }

    /// Opens now, without waiting for failed calls (the failure detector
    /// says the dependency is down).
    pub fn trip(&mut self, now_ms: u64) {
        if !matches!(self.state, State::ForcedOpen | State::Disabled) {
            self.open(now_ms);
        }
    }

    /// Operator: hold it open until [`Breaker::reset`].
    pub fn force_open(&mut self, now_ms: u64) {
        self.go(State::ForcedOpen, now_ms);
    }

    /// Operator: let everything through, count nothing, until reset.
    pub fn disable(&mut self, now_ms: u64) {
        self.go(State::Disabled, now_ms);
    }

    /// Operator: back to closed with an empty window.
    pub fn reset(&mut self, now_ms: u64) {
        self.go(State::Closed, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            window: Window::Count(10),
            failure_rate_pct: 50,
            slow_call_rate_pct: 80,
            slow_call_ms: 1_000,
            min_calls: 4,
            open_ms: 5_000,
            half_open_probes: 2,
        }
    }

    fn call(b: &mut Breaker, outcome: Outcome, took: u64, now: u64) -> bool {
        match b.try_acquire(now) {
            Ok(p) => {
                b.on_result(p, outcome, took, now);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn opens_on_the_failure_rate_probes_and_closes() {
        let mut b = Breaker::new(cfg());
        call(&mut b, Outcome::Success, 1, 0);
        call(&mut b, Outcome::Failure, 1, 0);
        call(&mut b, Outcome::Success, 1, 0);
        assert_eq!(b.state(), State::Closed, "below min_calls");
        call(&mut b, Outcome::Failure, 1, 0);
        assert_eq!(b.state(), State::Open { until_ms: 5_000 });
        let e = b.try_acquire(1_000).unwrap_err();
        assert_eq!((e.state, e.retry_after_ms), ("open", 4_000));
        // Half-open: exactly two probes.
        let p1 = b.try_acquire(5_000).unwrap();
        let p2 = b.try_acquire(5_000).unwrap();
        assert!(b.try_acquire(5_000).is_err());
        b.on_result(p1, Outcome::Success, 1, 5_001);
        b.on_result(p2, Outcome::Success, 1, 5_002);
        assert_eq!(b.state(), State::Closed);
        let names: Vec<_> = b.drain_events().iter().map(|t| t.to).collect();
        assert_eq!(names, vec!["open", "half_open", "closed"]);
    }

    #[test]
    fn slow_calls_open_it_and_a_failed_probe_reopens() {
        let mut b = Breaker::new(cfg());
        for _ in 0..4 {
            call(&mut b, Outcome::Success, 2_000, 0);
        }
        assert!(matches!(b.state(), State::Open { .. }));
        let p = b.try_acquire(5_000).unwrap();
        let q = b.try_acquire(5_000).unwrap();
        b.on_result(p, Outcome::Failure, 1, 5_000);
        b.on_result(q, Outcome::Failure, 1, 5_000);
        assert_eq!(b.state(), State::Open { until_ms: 10_000 });
    }

    #[test]
    fn operators_force_and_disable_and_trip_opens_at_once() {
        let mut b = Breaker::new(cfg());
        b.force_open(0);
        assert_eq!(b.try_acquire(1_000_000).unwrap_err().state, "forced_open");
        b.disable(1);
        for _ in 0..20 {
            assert!(call(&mut b, Outcome::Failure, 1, 2));
        }
        assert_eq!(b.state(), State::Disabled);
        b.reset(3);
        b.trip(4);
        assert!(matches!(b.state(), State::Open { .. }));
    }

    #[test]
    fn results_from_an_earlier_state_are_not_counted() {
        let mut b = Breaker::new(cfg());
        let old = b.try_acquire(0).unwrap();
        b.trip(0);
        let p = b.try_acquire(5_000).unwrap();
        b.on_result(old, Outcome::Failure, 1, 5_000);
        assert_eq!(b.state(), State::HalfOpen);
        b.on_result(p, Outcome::Success, 1, 5_000);
    }

    proptest! {
        /// However calls and results interleave, a half-open breaker never
        /// lets through more than its probe budget.
        #[test]
        fn a_half_open_breaker_never_exceeds_its_probe_budget(
            ops in proptest::collection::vec((0u8..4, 0u64..3_000), 1..300),
        ) {
            let mut b = Breaker::new(cfg());
            let mut now = 0;
            let mut outstanding = Vec::new();
            let mut probes = 0usize;
            for (op, dt) in ops {
                now += dt;
                if op < 2 {
                    let r = b.try_acquire(now);
                    if b.drain_events().iter().any(|t| t.to == "half_open") {
                        probes = 0;
                    }
                    if let Ok(p) = r {
                        if b.state() == State::HalfOpen {
                            probes += 1;
                            prop_assert!(probes <= cfg().half_open_probes);
                        }
                        outstanding.push(p);
                    }
                } else if let Some(p) = outstanding.pop() {
                    let o = if op == 2 { Outcome::Success } else { Outcome::Failure };
                    b.on_result(p, o, dt, now);
                    let _ = b.drain_events();
                }
            }
        }
    }

    /// A probe whose call ended saying nothing of the dependency (bad
    /// input, a leader change) gives its slot back: the half-open breaker
    /// lets the next call probe instead of refusing everything.
    #[test]
    fn an_ignored_probe_frees_its_slot() {
        let mut b = Breaker::new(BreakerConfig {
            window: Window::Count(4),
            failure_rate_pct: 50,
            slow_call_rate_pct: 100,
            slow_call_ms: 10_000,
            min_calls: 2,
            open_ms: 100,
            half_open_probes: 1,
        });
        for _ in 0..2 {
            let p = b.try_acquire(0).unwrap();
            b.on_result(p, Outcome::Failure, 1, 0);
        }
        let probe = b.try_acquire(200).unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.try_acquire(200).is_err(), "one probe at a time");
        b.on_result(probe, Outcome::Ignored, 1, 200);
        let probe = b.try_acquire(201).expect("the slot was given back");
        b.on_result(probe, Outcome::Success, 1, 201);
        assert_eq!(b.state(), State::Closed);
    }
}
