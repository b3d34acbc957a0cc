//! Rate limiters: token bucket, sliding-window counter, leaky bucket.
//! Sans-IO: time comes in as `now_ms` (monotonic milliseconds), so tests
//! and the harness drive them deterministically.

/// Why a limiter said no, with when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry after {retry_after_ms} ms")]
pub struct Limited {
    /// Milliseconds until the request would be admitted (at least 1).
    pub retry_after_ms: u64,
}

/// A token bucket: `burst` tokens at most, refilled at `rate_per_s`.
/// Tokens are kept in millitokens so refills are exact at any rate.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    burst_milli: u64,
    rate_per_s: u64,
    tokens_milli: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket. `rate_per_s` and `burst` must be > 0.
    pub fn new(rate_per_s: u64, burst: u64, now_ms: u64) -> TokenBucket {
        assert!(rate_per_s > 0 && burst > 0, "rate and burst must be > 0");
        TokenBucket {
            burst_milli: burst * 1000,
            rate_per_s,
            tokens_milli: burst * 1000,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        // rate tokens per second = rate millitokens per ms.
        let add = elapsed.saturating_mul(self.rate_per_s);
        self.tokens_milli = (self.tokens_milli.saturating_add(add)).min(self.burst_milli);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Takes `n` tokens, or says when `n` will be there.
    pub fn try_acquire(&mut self, n: u64, now_ms: u64) -> Result<(), Limited> {
        self.refill(now_ms);
        let want = n.saturating_mul(1000);
        if want > self.burst_milli {
            return Err(Limited {
                retry_after_ms: u64::MAX,
            });
        }
        if self.tokens_milli >= want {
            self.tokens_milli -= want;
            return Ok(());
        }
        let missing = want - self.tokens_milli;
        Err(Limited {
            retry_after_ms: missing.div_ceil(self.rate_per_s).max(1),
        })
    }

    /// How long until `n` tokens are there (0 if they are), without
    /// taking any.
    pub fn wait_ms(&mut self, n: u64, now_ms: u64) -> u64 {
        self.refill(now_ms);
        let want = n.saturating_mul(1000);
        if self.tokens_milli >= want {
            return 0;
        }
        (want - self.tokens_milli).div_ceil(self.rate_per_s)
    }

    /// Whole tokens available now.
    pub fn available(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        self.tokens_milli / 1000
    }

    /// The most tokens the bucket holds.
    pub fn burst(&self) -> u64 {
        self.burst_milli / 1000
    }

    /// Changes the refill rate (adaptive limits), keeping the tokens.
    pub fn set_rate(&mut self, rate_per_s: u64, now_ms: u64) {
        self.refill(now_ms);
        self.rate_per_s = rate_per_s.max(1);
    }
}

/// A sliding-window counter: at most `limit` events in any `window_ms`,
/// estimated from the current and previous fixed windows (the previous
/// one weighted by how much of it still overlaps the sliding window).
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    limit: u64,
    window_ms: u64,
    current_start: u64,
    current: u64,
    previous: u64,
}

impl SlidingWindow {
    /// An empty window. `limit` and `window_ms` must be > 0.
    pub fn new(limit: u64, window_ms: u64, now_ms: u64) -> SlidingWindow {
        assert!(limit > 0 && window_ms > 0, "limit and window must be > 0");
        SlidingWindow {
            limit,
            window_ms,
            current_start: now_ms - now_ms % window_ms,
            current: 0,
            previous: 0,
        }
    }

    fn roll(&mut self, now_ms: u64) {
        let start = now_ms - now_ms % self.window_ms;
        if start == self.current_start {
            return;
        }
        self.previous = if start == self.current_start + self.window_ms {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.current_start = start;
    }

    /// The weighted count now, in thousandths of an event.
    fn estimate_milli(&self, now_ms: u64) -> u64 {
        let into = now_ms - self.current_start;
        let overlap = self.window_ms - into;
        self.current * 1000 + self.previous * 1000 * overlap / self.window_ms
    }

    /// Counts one event if the window has room.
    pub fn try_acquire(&mut self, now_ms: u64) -> Result<(), Limited> {
        self.roll(now_ms);
        if self.estimate_milli(now_ms) + 1000 <= self.limit * 1000 {
            self.current += 1;
            return Ok(());
        }
        // Room comes back as the previous window slides out (or at the
        // next window when the current one alone is full).
        let retry_after_ms = if self.current >= self.limit || self.previous == 0 {
            self.current_start + self.window_ms - now_ms
        } else {
            let excess = self.estimate_milli(now_ms) + 1000 - self.limit * 1000;
            (excess * self.window_ms).div_ceil(self.previous * 1000)
        };
        Err(Limited {
            retry_after_ms: retry_after_ms.max(1),
        })
    }
}

/// A leaky bucket (as a meter): requests fill it by one, it drains at
/// `rate_per_s`, and a request that would overflow `capacity` is refused.
/// Admitted requests are spaced as if served at the drain rate.
#[derive(Debug, Clone)]
pub struct LeakyBucket {
    capacity_milli: u64,
    rate_per_s: u64,
    level_milli: u64,
    last_ms: u64,
}

impl LeakyBucket {
    /// An empty bucket. `rate_per_s` and `capacity` must be > 0.
    pub fn new(rate_per_s: u64, capacity: u64, now_ms: u64) -> LeakyBucket {
        assert!(
            rate_per_s > 0 && capacity > 0,
            "rate and capacity must be > 0"
        );
        LeakyBucket {
            capacity_milli: capacity * 1000,
            rate_per_s,
            level_milli: 0,
            last_ms: now_ms,
        }
    }

    fn drain(&mut self, now_ms: u64) {
        let out = now_ms
            .saturating_sub(self.last_ms)
            .saturating_mul(self.rate_per_s);
        self.level_milli = self.level_milli.saturating_sub(out);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Adds one request, or says when there will be room.
    pub fn try_acquire(&mut self, now_ms: u64) -> Result<(), Limited> {
        self.drain(now_ms);
        if self.level_milli + 1000 <= self.capacity_milli {
            self.level_milli += 1000;
            return Ok(());
        }
        let over = self.level_milli + 1000 - self.capacity_milli;
        Err(Limited {
            retry_after_ms: over.div_ceil(self.rate_per_s).max(1),
        })
    }

    /// Requests in the bucket now.
    pub fn level(&mut self, now_ms: u64) -> u64 {
        self.drain(now_ms);
        self.level_milli.div_ceil(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn token_bucket_refills_at_its_rate_and_names_the_wait() {
        let mut b = TokenBucket::new(10, 5, 0);
        for _ in 0..5 {
            b.try_acquire(1, 0).unwrap();
        }
        // 10/s: one token per 100 ms.
        assert_eq!(
            b.try_acquire(1, 0),
            Err(Limited {
                retry_after_ms: 100
            })
        );
        assert_eq!(b.try_acquire(1, 40), Err(Limited { retry_after_ms: 60 }));
        b.try_acquire(1, 100).unwrap();
        assert_eq!(b.available(10_000), 5, "never above the burst");
        assert!(
            b.try_acquire(6, 10_000).is_err(),
            "more than the burst never fits"
        );
    }

    #[test]
    fn sliding_window_weights_the_previous_window() {
        let mut w = SlidingWindow::new(10, 1000, 0);
        for _ in 0..10 {
            w.try_acquire(500).unwrap();
        }
        assert!(w.try_acquire(900).is_err());
        // At 1500 the previous window (10 events) still overlaps by half: 5.
        for _ in 0..5 {
            w.try_acquire(1500).unwrap();
        }
        let e = w.try_acquire(1500).unwrap_err();
        assert!(e.retry_after_ms >= 1 && e.retry_after_ms <= 500, "{e:?}");
    }

    #[test]
    fn leaky_bucket_spaces_requests_at_the_drain_rate() {
        let mut l = LeakyBucket::new(2, 2, 0);
        l.try_acquire(0).unwrap();
        l.try_acquire(0).unwrap();
        assert_eq!(
            l.try_acquire(0),
            Err(Limited {
                retry_after_ms: 500
            })
        );
        l.try_acquire(500).unwrap();
        assert_eq!(l.level(500), 2);
    }

    proptest! {
        /// Over any schedule of requests, a token bucket never admits more
        /// than its burst plus what its rate refilled.
        #[test]
        fn a_token_bucket_never_exceeds_its_burst(
            rate in 1u64..1000,
            burst in 1u64..100,
            steps in proptest::collection::vec((0u64..500, 1u64..5), 1..200),
        ) {
            let mut b = TokenBucket::new(rate, burst, 0);
            let mut now = 0;
            let mut admitted = 0u64;
            for (dt, n) in steps {
                now += dt;
                if b.try_acquire(n, now).is_ok() {
                    admitted += n;
                }
                prop_assert!(b.available(now) <= burst);
                // Admitted so far: at most the burst plus the refill.
                prop_assert!(admitted * 1000 <= burst * 1000 + now * rate);
            }
        }

        #[test]
        fn a_sliding_window_never_admits_more_than_its_limit_in_a_fixed_window(
            limit in 1u64..50,
            steps in proptest::collection::vec(0u64..50, 1..300),
        ) {
            let window = 1000;
            let mut w = SlidingWindow::new(limit, window, 0);
            let mut now = 0;
            let mut times = Vec::new();
            for dt in steps {
                now += dt;
                if w.try_acquire(now).is_ok() {
                    times.push(now);
                }
            }
            // Any aligned window holds at most `limit`.
            let mut per: std::collections::BTreeMap<u64, u64> = Default::default();
            for t in times {
                *per.entry(t / window).or_default() += 1;
            }
            prop_assert!(per.values().all(|&n| n <= limit));
        }
    }
}
