//! Adaptive timeouts: P95 × 1.5 of the observed latencies, clamped to
//! `[min, max]`, from an HDR histogram; and deadlines that only shrink
//! along a call chain. Sans-IO.

use hdrhistogram::Histogram;

/// Latency percentiles, in ms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyStats {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: u64,
    /// 95th percentile.
    pub p95_ms: u64,
    /// 99th percentile.
    pub p99_ms: u64,
    /// 99.9th percentile.
    pub p999_ms: u64,
}

/// The adaptive timeout. Two histograms rotate every `window` samples, so
/// the timeout follows the recent latency, not all history; a third holds
/// their sum, kept as samples arrive and rotate out, so reading the timeout
/// on every call merges nothing.
#[derive(Debug, Clone)]
pub struct AdaptiveTimeout {
    min_ms: u64,
    max_ms: u64,
    /// Multiplier in hundredths (150 = ×1.5).
    factor_pct: u64,
    window: u64,
    current: Histogram<u64>,
    previous: Histogram<u64>,
    /// `current` + `previous`.
    both: Histogram<u64>,
}

/// Latencies above this are recorded as this (one hour).
pub const LATENCY_MAX_MS: u64 = 3_600_000;

impl AdaptiveTimeout {
    /// Timeouts in `[min_ms, max_ms]`, P95 × `factor_pct`/100, over the
    /// last `window` to `2 × window` samples. Before any sample: `max_ms`.
    pub fn new(min_ms: u64, max_ms: u64, factor_pct: u64, window: u64) -> AdaptiveTimeout {
        assert!(min_ms <= max_ms && window > 0, "min <= max and window > 0");
        let h = || Histogram::new_with_bounds(1, LATENCY_MAX_MS, 3).expect("valid bounds");
        AdaptiveTimeout {
            min_ms,
            max_ms,
            factor_pct,
            window,
            current: h(),
            previous: h(),
            both: h(),
        }
    }

    /// Records one call's latency.
    pub fn record(&mut self, latency_ms: u64) {
        if self.current.len() >= self.window {
            self.both
                .subtract(&self.previous)
                .expect("previous is part of both");
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.reset();
        }
        let v = latency_ms.clamp(1, LATENCY_MAX_MS);
        self.current.saturating_record(v);
        self.both.saturating_record(v);
    }

    /// The timeout for the next call.
    pub fn timeout_ms(&self) -> u64 {
        let h = &self.both;
        if h.is_empty() {
            return self.max_ms;
        }
        let p95 = h.value_at_quantile(0.95);
        (p95 * self.factor_pct / 100).clamp(self.min_ms, self.max_ms)
    }

    /// The percentiles now.
    pub fn stats(&self) -> LatencyStats {
        let h = &self.both;
        LatencyStats {
            count: h.len(),
            p50_ms: h.value_at_quantile(0.5),
            p95_ms: h.value_at_quantile(0.95),
            p99_ms: h.value_at_quantile(0.99),
            p999_ms: h.value_at_quantile(0.999),
        }
    }
}

/// The deadline for a call made at `now_ms` by a request whose own deadline
/// is `parent_ms` (if any), with this hop's timeout: never later than the
/// parent's, so deadlines only shrink along a chain. `None` when the parent
/// deadline has passed: drop the request instead of working on it.
pub fn child_deadline(parent_ms: Option<u64>, now_ms: u64, timeout_ms: u64) -> Option<u64> {
    let own = now_ms.saturating_add(timeout_ms);
    match parent_ms {
        Some(p) if p <= now_ms => None,
        Some(_) if crate::plant::active(crate::plant::Bug::DeadlineGrows) => Some(own),
        Some(p) => Some(p.min(own)),
        None => Some(own),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_timeout_is_p95_times_one_and_a_half_clamped() {
        let mut t = AdaptiveTimeout::new(10, 1_000, 150, 1_000);
        assert_eq!(t.timeout_ms(), 1_000, "no samples: the ceiling");
        for i in 1..=100 {
            t.record(i);
        }
        let p95 = t.stats().p95_ms;
        assert_eq!(p95, 95);
        assert_eq!(t.timeout_ms(), 142);
        for _ in 0..3_000 {
            t.record(1);
        }
        assert_eq!(t.timeout_ms(), 10, "the floor; old samples rotated out");
        for _ in 0..3_000 {
            t.record(10_000);
        }
        assert_eq!(t.timeout_ms(), 1_000, "the ceiling");
    }

    proptest! {
        /// Along any chain of hops, each deadline is at most the one before
        /// it, and a passed deadline stops the chain.
        #[test]
        fn deadlines_only_shrink(
            start in 0u64..1_000_000,
            hops in proptest::collection::vec((0u64..500, 1u64..5_000), 1..20),
        ) {
            let mut now = start;
            let mut deadline: Option<u64> = None;
            for (spent, timeout) in hops {
                now += spent;
                match child_deadline(deadline, now, timeout) {
                    Some(d) => {
                        if let Some(p) = deadline {
                            prop_assert!(d <= p);
                        }
                        prop_assert!(d > now);
                        deadline = Some(d);
                    }
                    None => {
                        prop_assert!(deadline.is_some_and(|p| p <= now));
                        break;
                    }
                }
            }
        }
    }
}
