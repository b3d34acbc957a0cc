//! The call guard: the layer an actor puts around calls to one
//! dependency. It combines the kit's cores: a circuit breaker, a
//! concurrency bulkhead (a tokio semaphore with a bounded wait), an
//! adaptive timeout, and retries with jittered backoff inside a retry
//! budget. Time is tokio's (virtual in the harness); the jitter comes from
//! a seeded RNG.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerConfig, Outcome};
use super::retry::{decide, Backoff, Class, Decision, RetryBudget};
use super::timeout::AdaptiveTimeout;

/// Settings of one guard.
#[derive(Debug, Clone)]
pub struct GuardConfig {
    /// The breaker; `None` runs without one.
    pub breaker: Option<BreakerConfig>,
    /// Calls at once into the dependency.
    pub max_concurrent: u32,
    /// Calls waiting for a slot at most.
    pub queue_len_max: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Backoff between tries.
    pub backoff: Backoff,
    /// Retries as a share of requests (percent); `None`: unlimited.
    pub retry_budget_pct: Option<u64>,
    /// Timeout bounds for one try, in ms.
    pub timeout_min_ms: u64,
    /// Ceiling.
    pub timeout_max_ms: u64,
    /// Seed of the jitter.
    pub seed: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            breaker: Some(BreakerConfig::default()),
            max_concurrent: 16,
            queue_len_max: 64,
            queue_timeout: Duration::from_millis(500),
            backoff: Backoff::default(),
            retry_budget_pct: Some(10),
            timeout_min_ms: 50,
            timeout_max_ms: 5_000,
            seed: 0,
        }
    }
}

/// Why a guarded call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError<E> {
    /// The breaker is open.
    #[error("circuit open; retry after {retry_after_ms} ms")]
    Open {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// No slot in time, or the queue is full.
    #[error("bulkhead full")]
    Full,
    /// The try took longer than the adaptive timeout.
    #[error("timed out after {0} ms")]
    TimedOut(u64),
    /// The dependency's own error (after the retries the policy allowed).
    #[error("dependency failed")]
    Failed(E),
}

struct Inner {
    breaker: Option<Breaker>,
    budget: RetryBudget,
    timeout: AdaptiveTimeout,
    rng: ChaCha8Rng,
    waiting: usize,
}

/// The guard. See the module docs.
pub struct Guard {
    config: GuardConfig,
    slots: Semaphore,
    inner: Mutex<Inner>,
    start: Instant,
}

impl Guard {
    /// A guard with `config`.
    pub fn new(config: GuardConfig) -> Guard {
        let budget = RetryBudget::new(config.retry_budget_pct.unwrap_or(0), 1, 10_000);
        Guard {
            slots: Semaphore::new(config.max_concurrent as usize),
            inner: Mutex::new(Inner {
                breaker: config.breaker.clone().map(Breaker::new),
                budget,
                timeout: AdaptiveTimeout::new(
                    config.timeout_min_ms,
                    config.timeout_max_ms,
                    150,
                    1_000,
                ),
                rng: ChaCha8Rng::seed_from_u64(config.seed),
                waiting: 0,
            }),
            config,
            start: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("guard lock")
    }

    /// Calls `f` under the guard; `classify` says which errors are worth a
    /// retry.
    pub async fn call<T, E, F, Fut>(
        &self,
        classify: impl Fn(&E) -> Class,
        f: F,
    ) -> Result<T, GuardError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.lock().budget.on_request(self.now_ms());
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = self.try_once(&f).await;
            let class = match &result {
                Ok(_) => return result,
                Err(GuardError::Failed(e)) => classify(e),
                Err(GuardError::TimedOut(_)) => Class::Transient,
                Err(_) => return result,
            };
            let decision = {
                let now = self.now_ms();
                let mut g = self.lock();
                let u: f64 = g.rng.random();
                if self.config.retry_budget_pct.is_none() {
                    if class == Class::Transient && attempt <= self.config.backoff.max_retries {
                        Decision::RetryAfter(self.config.backoff.delay_ms(attempt, u))
                    } else {
                        Decision::GiveUp("no retry")
                    }
                } else {
                    decide(&self.config.backoff, &mut g.budget, class, attempt, u, now)
                }
            };
            match decision {
                Decision::RetryAfter(ms) => {
                    metrics::counter!("bulwark_flow_retries_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Decision::GiveUp(_) => return result,
            }
        }
    }

    async fn try_once<T, E, F, Fut>(&self, f: &F) -> Result<T, GuardError<E>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = {
            let now = self.now_ms();
            let mut g = self.lock();
            let acquired = g.breaker.as_mut().map(|b| b.try_acquire(now));
            report_transitions(g.breaker.as_mut());
            match acquired {
                Some(Err(r)) => {
                    metrics::counter!("bulwark_flow_breaker_refused_total").increment(1);
                    return Err(GuardError::Open {
                        retry_after_ms: r.retry_after_ms,
                    });
                }
                Some(Ok(p)) => Some(p),
                None => None,
            }
        };
        // A slot in the bulkhead, waiting a bounded time in a bounded queue.
        let slot = match self.slots.try_acquire() {
            Ok(s) => s,
            Err(_) => {
                {
                    let mut g = self.lock();
                    if g.waiting >= self.config.queue_len_max {
                        return Err(GuardError::Full);
                    }
                    g.waiting += 1;
                }
                let got =
                    tokio::time::timeout(self.config.queue_timeout, self.slots.acquire()).await;
                self.lock().waiting -= 1;
                match got {
                    Ok(Ok(s)) => s,
                    _ => return Err(GuardError::Full),
                }
            }
        };
        let limit_ms = self.lock().timeout.timeout_ms();
        let started = Instant::now();
        let out = tokio::time::timeout(Duration::from_millis(limit_ms), f()).await;
        drop(slot);
        let took = started.elapsed().as_millis() as u64;
        let now = self.now_ms();
        let mut g = self.lock();
        let (outcome, result) = match out {
            Ok(Ok(v)) => (Outcome::Success, Ok(v)),
            Ok(Err(e)) => (Outcome::Failure, Err(GuardError::Failed(e))),
            Err(_) => (Outcome::Failure, Err(GuardError::TimedOut(limit_ms))),
        };
        if outcome == Outcome::Success {
            g.timeout.record(took);
        }
        if let (Some(b), Some(p)) = (g.breaker.as_mut(), permit) {
            b.on_result(p, outcome, took, now);
        }
        report_transitions(g.breaker.as_mut());
        result
    }
}

/// Turns the breaker's transitions into metrics and log lines.
fn report_transitions(breaker: Option<&mut Breaker>) {
    for t in breaker.map(Breaker::drain_events).unwrap_or_default() {
        metrics::counter!("bulwark_flow_breaker_transitions_total", "to" => t.to).increment(1);
        tracing::info!(from = t.from, to = t.to, "circuit breaker transition");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Clients with retries against a dependency that always fails: with
    /// the budget and the breaker, the dependency sees little more than
    /// the offered load; without them, every request becomes four calls.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_retry_storm_is_contained_by_the_budget_and_the_breaker() {
        async fn storm(config: GuardConfig) -> (u64, u64) {
            let guard = Arc::new(Guard::new(config));
            let calls = Arc::new(AtomicU64::new(0));
            let mut offered = 0;
            let mut tasks = tokio::task::JoinSet::new();
            // 20 requests every 100 ms for 10 virtual seconds.
            for _ in 0..100 {
                for _ in 0..20 {
                    offered += 1;
                    let (g, c) = (guard.clone(), calls.clone());
                    tasks.spawn(async move {
                        let _ = g
                            .call(
                                |_: &&str| Class::Transient,
                                || {
                                    c.fetch_add(1, Ordering::Relaxed);
                                    async {
                                        tokio::time::sleep(Duration::from_millis(10)).await;
                                        Err::<(), _>("503")
                                    }
                                },
                            )
                            .await;
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            while tasks.join_next().await.is_some() {}
            (offered, calls.load(Ordering::Relaxed))
        }
        let base = GuardConfig {
            max_concurrent: 1_000,
            queue_len_max: 1_000,
            ..GuardConfig::default()
        };
        let (offered, unprotected) = storm(GuardConfig {
            breaker: None,
            retry_budget_pct: None,
            ..base.clone()
        })
        .await;
        let (_, protected) = storm(base).await;
        let (u, p) = (
            unprotected as f64 / offered as f64,
            protected as f64 / offered as f64,
        );
        eprintln!("retry storm: offered {offered}; dependency calls {unprotected} ({u:.2}x) unprotected, {protected} ({p:.2}x) with budget and breaker");
        assert!(
            u >= 3.9,
            "without protection every request is retried 3 times: {u:.2}x"
        );
        assert!(
            p <= 0.2,
            "with protection the dependency sees under 0.2x the offered load: {p:.2}x"
        );
    }

    /// A hung dependency and a fast one share 8 workers. Without per-
    /// dependency bulkheads the hung one takes every worker and the fast
    /// one's calls wait; with a bulkhead of 4 each, the fast one's latency
    /// stays what it is alone.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_slow_dependency_behind_a_bulkhead_leaves_the_other_unchanged() {
        async fn run(bulkheaded: bool, slow_load: bool) -> u64 {
            let workers = Arc::new(Semaphore::new(8));
            let cfg = |max| GuardConfig {
                breaker: None,
                max_concurrent: max,
                queue_len_max: 10_000,
                queue_timeout: Duration::from_secs(60),
                retry_budget_pct: Some(0),
                timeout_max_ms: 60_000,
                ..GuardConfig::default()
            };
            let per = if bulkheaded { 4 } else { 1_000 };
            let slow = Arc::new(Guard::new(cfg(per)));
            let fast = Arc::new(Guard::new(cfg(per)));
            let mut tasks = tokio::task::JoinSet::new();
            if slow_load {
                for _ in 0..50 {
                    let (g, w) = (slow.clone(), workers.clone());
                    tasks.spawn(async move {
                        let _ = g
                            .call(
                                |_: &()| Class::Permanent,
                                || {
                                    let w = w.clone();
                                    async move {
                                        let _worker = w.acquire().await;
                                        tokio::time::sleep(Duration::from_secs(5)).await;
                                        Ok::<(), ()>(())
                                    }
                                },
                            )
                            .await;
                        0
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut lat = Vec::new();
            for _ in 0..20 {
                let (g, w) = (fast.clone(), workers.clone());
                let t = Instant::now();
                let _ = g
                    .call(
                        |_: &()| Class::Permanent,
                        || {
                            let w = w.clone();
                            async move {
                                let _worker = w.acquire().await;
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                Ok::<(), ()>(())
                            }
                        },
                    )
                    .await;
                lat.push(t.elapsed().as_millis() as u64);
            }
            tasks.abort_all();
            lat.sort_unstable();
            lat[lat.len() * 99 / 100]
        }
        let alone = run(true, false).await;
        let with_bulkheads = run(true, true).await;
        let without = run(false, true).await;
        eprintln!("fast dependency p99: alone {alone} ms, beside a hung one with bulkheads {with_bulkheads} ms, without {without} ms");
        assert_eq!(
            with_bulkheads, alone,
            "the bulkhead keeps the fast path as it is alone"
        );
        assert!(
            without >= 100 * alone,
            "without bulkheads it waits behind the hung one"
        );
    }
}
