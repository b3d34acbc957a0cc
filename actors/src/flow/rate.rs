//! The token bucket behind admission's optional fixed rate.
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
    }
}
