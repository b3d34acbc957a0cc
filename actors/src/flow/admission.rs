//! The admission controller (the BackpressureController's core): an
//! adaptive concurrency limit (AIMD on observed latency against a target),
//! optionally a token bucket for a fixed rate on top, and a bounded queue
//! with a timeout. By default there is no fixed rate: the limit follows
//! what the cluster completes within the target latency, so the cap sits
//! at its real capacity. Every refusal carries a retry-after computed from
//! the queue and the rate (the configured one, or the limit's);
//! [`Admission::pressure`] is the signal a slow consumer sends upstream.
//! Waiting requests are served by [`Priority`]: approvals before routine
//! writes before reads, first come first served within one; when the
//! queue is full, an arrival displaces the newest waiter of a lower
//! priority (refused as `displaced`) rather than being refused itself.
//! Sans-IO.

use std::collections::VecDeque;

use super::rate::TokenBucket;

/// Settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    /// Requests admitted per second, sustained; 0 (the default): no fixed
    /// rate, the adaptive limit alone.
    pub rate_per_s: u64,
    /// Requests admitted at once after a quiet spell (with a fixed rate).
    pub burst: u64,
    /// Requests waiting at most; more are refused.
    pub queue_len_max: usize,
    /// A request waits in the queue at most this long.
    pub queue_timeout_ms: u64,
    /// Latency the adaptive limit aims for.
    pub target_latency_ms: u64,
    /// The concurrency limit's floor, start and ceiling.
    pub limit_min: u32,
    /// Start.
    pub limit_initial: u32,
    /// Ceiling.
    pub limit_max: u32,
    /// Multiplicative decrease on a slow completion (0.9 = −10%).
    pub decrease: f64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            rate_per_s: 0,
            burst: 50,
            queue_len_max: 1_024,
            queue_timeout_ms: 1_000,
            target_latency_ms: 100,
            limit_min: 4,
            limit_initial: 32,
            limit_max: 128,
            decrease: 0.9,
        }
    }
}

/// A refusal, with when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("overloaded ({reason}); retry after {retry_after_ms} ms")]
pub struct Rejected {
    /// Why: `queue_full` or `queue_timeout`.
    pub reason: &'static str,
    /// When to try again, in ms (at least 1).
    pub retry_after_ms: u64,
}

/// The order in which waiting requests are served (highest first). The
/// operator's requests do not wait here at all (the API lets them past
/// admission, bounded by their own bulkhead pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Priority {
    /// Schedule reads.
    Read = 0,
    /// Routine writes.
    Write = 1,
    /// Approvals, leave and emergency coverage.
    Approval = 2,
}

/// Priorities, lowest first.
const PRIORITIES: [Priority; 3] = [Priority::Read, Priority::Write, Priority::Approval];

/// What happened to a request that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Go ahead; report the completion.
    Admitted(u64),
    /// Wait: it is in the queue under this id.
    Queued(u64),
}

/// Something for the caller to act on after a call into the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A queued request may go ahead now.
    Admitted(u64),
    /// A queued request waited too long: refuse it.
    TimedOut(u64, Rejected),
}

/// The controller. See the module docs.
#[derive(Debug, Clone)]
pub struct Admission {
    config: AdmissionConfig,
    /// The fixed rate, when one is configured.
    bucket: Option<TokenBucket>,
    limit: f64,
    in_flight: u32,
    /// Waiting requests (id, arrival ms), one queue per [`Priority`].
    queues: [VecDeque<(u64, u64)>; 3],
    next_id: u64,
    /// When the limit was last cut: at most once per target latency, so
    /// one slow round trip cuts it once, not once per completion.
    last_decrease_ms: Option<u64>,
    /// Extra queue slots on top of `queue_len_max` (the capacity buffer
    /// the breaker mesh raises when peers' breakers open).
    buffer: usize,
}

impl Admission {
    /// A controller at `now_ms`.
    pub fn new(config: AdmissionConfig, now_ms: u64) -> Admission {
        let bucket = (config.rate_per_s > 0)
            .then(|| TokenBucket::new(config.rate_per_s, config.burst.max(1), now_ms));
        let limit = f64::from(config.limit_initial);
        Admission {
            config,
            bucket,
            limit,
            in_flight: 0,
            queues: Default::default(),
            next_id: 1,
            last_decrease_ms: None,
            buffer: 0,
        }
    }

    /// Sets the capacity buffer: `extra` queue slots beyond the
    /// configured length, so load shifted here by a peer's open breaker
    /// waits instead of being refused.
    pub fn set_buffer(&mut self, extra: usize) {
        self.buffer = extra;
    }

    /// The capacity buffer.
    pub fn buffer(&self) -> usize {
        self.buffer
    }

    fn queue_cap(&self) -> usize {
        self.config.queue_len_max + self.buffer
    }

    /// The concurrency limit now.
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    /// Requests in the queue.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Requests admitted and not completed.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// How full the queue is, 0.0 to 1.0: what a slow consumer tells the
    /// stage before it.
    pub fn pressure(&self) -> f64 {
        self.queued() as f64 / self.queue_cap().max(1) as f64
    }

    fn retry_after(&mut self, now_ms: u64) -> u64 {
        // The queue ahead drains at the rate; a token may also be missing.
        // Without a fixed rate, `limit` requests complete about once per
        // target latency.
        let ahead = self.queued() as u64 + 1;
        match &mut self.bucket {
            Some(bucket) => {
                let drain = ahead * 1000 / self.config.rate_per_s.max(1);
                drain.max(bucket.wait_ms(1, now_ms)).max(1)
            }
            None => {
                let per_round = (self.limit.floor() as u64).max(1);
                (ahead.div_ceil(per_round) * self.config.target_latency_ms).max(1)
            }
        }
    }

    fn can_start(&mut self, now_ms: u64) -> bool {
        f64::from(self.in_flight) < self.limit.floor()
            && self
                .bucket
                .as_mut()
                .is_none_or(|b| b.try_acquire(1, now_ms).is_ok())
    }

    /// A routine write arrives, where every waiter is a routine write
    /// (tests, benchmarks): with waiters of other priorities use
    /// [`Admission::arrive_as`], whose displacement events must be acted on.
    pub fn arrive(&mut self, now_ms: u64) -> Result<Arrival, Rejected> {
        self.arrive_as(now_ms, Priority::Write).0
    }

    /// A request of `priority` arrives. The events are for waiters it
    /// displaced (a full queue makes room for a higher priority by
    /// refusing the newest waiter of the lowest one below it).
    pub fn arrive_as(
        &mut self,
        now_ms: u64,
        priority: Priority,
    ) -> (Result<Arrival, Rejected>, Vec<Event>) {
        let id = self.next_id;
        self.next_id += 1;
        if self.queued() == 0 && self.can_start(now_ms) {
            self.in_flight += 1;
            return (Ok(Arrival::Admitted(id)), Vec::new());
        }
        let mut events = Vec::new();
        if self.queued() >= self.queue_cap() {
            let lower = PRIORITIES
                .iter()
                .take_while(|p| **p < priority)
                .find(|p| !self.queues[**p as usize].is_empty());
            let Some(&lower) = lower else {
                let r = Rejected {
                    reason: "queue_full",
                    retry_after_ms: self.retry_after(now_ms),
                };
                return (Err(r), events);
            };
            if let Some((gone, _)) = self.queues[lower as usize].pop_back() {
                let r = Rejected {
                    reason: "displaced",
                    retry_after_ms: self.retry_after(now_ms),
                };
                events.push(Event::TimedOut(gone, r));
            }
        }
        self.queues[priority as usize].push_back((id, now_ms));
        (Ok(Arrival::Queued(id)), events)
    }

    /// An admitted request completed after `latency_ms`: the limit adapts
    /// (additive increase when on target, multiplicative decrease when
    /// slow), and queued requests may start.
    pub fn complete(&mut self, latency_ms: u64, now_ms: u64) -> Vec<Event> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if latency_ms <= self.config.target_latency_ms {
            self.limit += 1.0 / self.limit.max(1.0);
        } else if self
            .last_decrease_ms
            .is_none_or(|t| now_ms >= t + self.config.target_latency_ms)
        {
            self.limit *= self.config.decrease;
            self.last_decrease_ms = Some(now_ms);
        }
        self.limit = self.limit.clamp(
            f64::from(self.config.limit_min),
            f64::from(self.config.limit_max),
        );
        self.poll(now_ms)
    }

    /// An admitted request whose caller was gone (its answer could not be
    /// delivered, or it was cancelled): frees its slot without teaching the
    /// limit anything, and queued requests may start.
    pub fn abandon(&mut self, now_ms: u64) -> Vec<Event> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.poll(now_ms)
    }

    /// Starts queued requests that may start, and times out those that
    /// waited too long. Call it on every tick too.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Event> {
        let mut out = Vec::new();
        for q in &mut self.queues {
            while let Some(&(id, at)) = q.front() {
                if at + self.config.queue_timeout_ms > now_ms {
                    break;
                }
                q.pop_front();
                out.push(id);
            }
        }
        let mut out: Vec<Event> = out
            .into_iter()
            .map(|id| {
                let r = Rejected {
                    reason: "queue_timeout",
                    retry_after_ms: self.retry_after(now_ms),
                };
                Event::TimedOut(id, r)
            })
            .collect();
        // Highest priority first, oldest first within one.
        while let Some(q) = self.queues.iter().rposition(|q| !q.is_empty()) {
            if !self.can_start(now_ms) {
                break;
            }
            let (id, _) = self.queues[q].pop_front().expect("not empty");
            self.in_flight += 1;
            out.push(Event::Admitted(id));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// 10× the configured rate for 60 virtual seconds: the admitted rate
    /// stays within ±10% of the rate, every refusal has a retry-after, the
    /// queue stays bounded, and admitted requests wait a bounded time.
    #[test]
    fn ten_times_the_capacity_for_a_minute() {
        let cfg = AdmissionConfig {
            rate_per_s: 100,
            burst: 20,
            queue_len_max: 50,
            queue_timeout_ms: 500,
            ..AdmissionConfig::default()
        };
        let mut a = Admission::new(cfg.clone(), 0);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut admitted = 0u64;
        let mut rejected = 0u64;
        let mut queued_at = std::collections::BTreeMap::new();
        let mut waits = Vec::new();
        let mut running: Vec<u64> = Vec::new(); // completion times
        let service_ms = 20;
        for t_ms in 0..60_000u64 {
            // Completions due at this ms.
            running.sort_unstable();
            while running.first().is_some_and(|&t| t <= t_ms) {
                running.remove(0);
                for e in a.complete(service_ms, t_ms) {
                    match e {
                        Event::Admitted(id) => {
                            admitted += 1;
                            waits.push(t_ms - queued_at.remove(&id).unwrap());
                            running.push(t_ms + service_ms);
                        }
                        Event::TimedOut(id, r) => {
                            queued_at.remove(&id);
                            assert!(r.retry_after_ms >= 1);
                            rejected += 1;
                        }
                    }
                }
            }
            for e in a.poll(t_ms) {
                match e {
                    Event::Admitted(id) => {
                        admitted += 1;
                        waits.push(t_ms - queued_at.remove(&id).unwrap());
                        running.push(t_ms + service_ms);
                    }
                    Event::TimedOut(id, r) => {
                        queued_at.remove(&id);
                        assert!(r.retry_after_ms >= 1);
                        rejected += 1;
                    }
                }
            }
            // 1,000 requests/s offered: one per ms on average.
            let arrivals = if rng.random_bool(0.5) { 2 } else { 0 };
            for _ in 0..arrivals {
                match a.arrive(t_ms) {
                    Ok(Arrival::Admitted(_)) => {
                        admitted += 1;
                        waits.push(0);
                        running.push(t_ms + service_ms);
                    }
                    Ok(Arrival::Queued(id)) => {
                        queued_at.insert(id, t_ms);
                    }
                    Err(r) => {
                        assert!(r.retry_after_ms >= 1, "{r:?}");
                        rejected += 1;
                    }
                }
            }
            assert!(a.queued() <= cfg.queue_len_max);
        }
        let rate = admitted as f64 / 60.0;
        assert!(
            (90.0..=110.0).contains(&rate),
            "admitted {rate:.1}/s against a rate of 100/s"
        );
        assert!(rejected > 50_000, "{rejected}");
        waits.sort_unstable();
        let p99 = waits[waits.len() * 99 / 100];
        assert!(p99 <= cfg.queue_timeout_ms, "p99 wait {p99} ms");
    }

    /// A consumer that serves 8 requests at once in 10 ms, slower when
    /// more are in flight (latency 10 ms × in-flight / 8 above 8). With a
    /// 12 ms latency target the AIMD limit settles near 8 × 12 / 10 ≈ 10:
    /// the target utilization. When the consumer slows down (its base
    /// latency goes to 40 ms) the limit falls and fewer requests are
    /// admitted: the slow consumer's signal reaches the callers as 429s.
    #[test]
    fn the_limit_converges_near_the_target_and_a_slow_consumer_pushes_back() {
        // No fixed rate (the default): the limit alone.
        let cfg = AdmissionConfig {
            rate_per_s: 0,
            burst: 1_000,
            queue_len_max: 100,
            queue_timeout_ms: 200,
            target_latency_ms: 12,
            limit_min: 1,
            limit_initial: 32,
            limit_max: 1_000,
            decrease: 0.9,
        };
        let mut a = Admission::new(cfg, 0);
        let mut running: Vec<(u64, u64)> = Vec::new(); // (done at, latency)
        let mut limits = Vec::new();
        let mut admitted = [0u64; 2];
        for t_ms in 0..60_000u64 {
            let base = if t_ms < 30_000 { 10 } else { 40 };
            running.sort_unstable();
            let mut started = 0;
            while running.first().is_some_and(|&(t, _)| t <= t_ms) {
                let (_, lat) = running.remove(0);
                started += a
                    .complete(lat, t_ms)
                    .iter()
                    .filter(|e| matches!(e, Event::Admitted(_)))
                    .count();
            }
            started += a
                .poll(t_ms)
                .iter()
                .filter(|e| matches!(e, Event::Admitted(_)))
                .count();
            for _ in 0..2 {
                match a.arrive(t_ms) {
                    Ok(Arrival::Admitted(_)) => started += 1,
                    Ok(Arrival::Queued(_)) => {}
                    Err(r) => assert!(r.retry_after_ms >= 1, "{r}"),
                }
            }
            for _ in 0..started {
                let load = u64::from(a.in_flight()).max(8);
                let lat = base * load / 8;
                running.push((t_ms + lat, lat));
            }
            admitted[usize::from(t_ms >= 30_000)] += started as u64;
            if (20_000..30_000).contains(&t_ms) {
                limits.push(a.limit());
            }
        }
        let mean = limits.iter().map(|&l| f64::from(l)).sum::<f64>() / limits.len() as f64;
        eprintln!("limit settled at {mean:.1}; admitted {admitted:?} (fast half, slow half)");
        assert!(
            (8.0..=12.0).contains(&mean),
            "limit settled at {mean:.1}, not near 9.6"
        );
        assert!(
            admitted[1] * 2 < admitted[0],
            "a slower consumer admits fewer: {admitted:?}"
        );
    }

    #[test]
    fn the_limit_backs_off_when_slow_and_grows_when_fast() {
        let mut a = Admission::new(AdmissionConfig::default(), 0);
        let start = a.limit();
        for _ in 0..20 {
            a.arrive(0).unwrap();
            a.complete(1_000, 0);
        }
        assert!(a.limit() < start);
        let low = a.limit();
        for t in 0..2_000 {
            if let Ok(Arrival::Admitted(_)) = a.arrive(t * 10) {
                a.complete(10, t * 10);
            }
        }
        assert!(a.limit() > low);
    }

    /// One request at a time, two waiting: approvals go before writes
    /// before reads, and a full queue makes room for a higher priority by
    /// refusing the newest lower waiter, never an equal or higher one.
    #[test]
    fn saturated_admission_serves_approvals_then_writes_then_reads() {
        let mut a = Admission::new(
            AdmissionConfig {
                queue_len_max: 2,
                queue_timeout_ms: 10_000,
                limit_min: 1,
                limit_initial: 1,
                limit_max: 1,
                ..AdmissionConfig::default()
            },
            0,
        );
        let id = |r: (Result<Arrival, Rejected>, Vec<Event>)| match r {
            (Ok(Arrival::Admitted(i) | Arrival::Queued(i)), ev) => (i, ev),
            (Err(e), _) => panic!("refused: {e}"),
        };
        let (_busy, _) = id(a.arrive_as(0, Priority::Read));
        let (r1, _) = id(a.arrive_as(1, Priority::Read));
        let (r2, _) = id(a.arrive_as(2, Priority::Read));
        // Full: a third read is refused; an approval displaces r2.
        let (refused, ev) = a.arrive_as(3, Priority::Read);
        assert_eq!(refused.unwrap_err().reason, "queue_full");
        assert!(ev.is_empty());
        let (ap, ev) = id(a.arrive_as(4, Priority::Approval));
        assert!(matches!(ev[..], [Event::TimedOut(g, r)] if g == r2 && r.reason == "displaced"));
        // A write displaces r1; a second approval displaces the write.
        let (w, ev) = id(a.arrive_as(5, Priority::Write));
        assert!(matches!(ev[..], [Event::TimedOut(g, _)] if g == r1));
        let (ap2, ev) = id(a.arrive_as(6, Priority::Approval));
        assert!(matches!(ev[..], [Event::TimedOut(g, _)] if g == w));
        // Full of approvals: nothing lower to displace.
        let (refused, _) = a.arrive_as(7, Priority::Approval);
        assert_eq!(refused.unwrap_err().reason, "queue_full");
        // Served oldest approval first, one at a time.
        assert_eq!(a.complete(1, 10), vec![Event::Admitted(ap)]);
        assert_eq!(a.complete(1, 11), vec![Event::Admitted(ap2)]);
        assert_eq!(a.queued(), 0);
        // With room, order is by priority, not arrival.
        let (_, _) = id(a.arrive_as(12, Priority::Read));
        let (w2, _) = id(a.arrive_as(13, Priority::Write));
        let (ap3, _) = id(a.arrive_as(14, Priority::Approval));
        assert_eq!(a.complete(1, 15), vec![Event::Admitted(ap3)]);
        assert_eq!(a.complete(1, 16), vec![Event::Admitted(w2)]);
    }
}
