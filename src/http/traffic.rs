//! The API's traffic over the last minutes, for the status page: every
//! `/v1` request is counted as it is answered (two relaxed atomic adds),
//! and the health loop turns the counts into one sample a second
//! (requests per second, mean write latency), keeping the last
//! [`SAMPLES_KEPT`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Samples kept: five minutes at one a second.
pub const SAMPLES_KEPT: usize = 300;

/// One second of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// When it was taken.
    pub at_unix_ms: u64,
    /// `/v1` requests answered per second since the previous sample.
    pub requests_per_s: f64,
    /// Mean time to answer a write since the previous sample, ms (0: none).
    pub write_ms: f64,
}

/// The counters and the samples.
#[derive(Debug, Default)]
pub struct Traffic {
    requests: AtomicU64,
    writes: AtomicU64,
    write_us: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<(u64, u64, u64, u64)>,
    samples: VecDeque<Sample>,
}

impl Traffic {
    /// Counts one answered request (`write`: a schedule write, which
    /// took `micros`).
    pub fn count(&self, write: bool, micros: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if write {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.write_us.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// Takes a sample at `now_ms` (the first call only sets the baseline).
    pub fn sample(&self, now_ms: u64) {
        let now = (
            now_ms,
            self.requests.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
            self.write_us.load(Ordering::Relaxed),
        );
        let mut st = self.state.lock().expect("traffic lock");
        if let Some((t, r, w, us)) = st.last {
            let secs = (now_ms.saturating_sub(t) as f64 / 1_000.0).max(0.001);
            let writes = now.2.saturating_sub(w);
            let sample = Sample {
                at_unix_ms: now_ms,
                requests_per_s: now.1.saturating_sub(r) as f64 / secs,
                write_ms: if writes == 0 {
                    0.0
                } else {
                    now.3.saturating_sub(us) as f64 / writes as f64 / 1_000.0
                },
            };
            st.samples.push_back(sample);
            while st.samples.len() > SAMPLES_KEPT {
                st.samples.pop_front();
            }
        }
        st.last = Some(now);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let st = self.state.lock().expect("traffic lock");
        st.samples.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_rates_over_the_interval_and_bounded() {
        let t = Traffic::default();
        t.sample(0);
        for _ in 0..10 {
            t.count(false, 0);
        }
        t.count(true, 4_000);
        t.count(true, 2_000);
        t.sample(2_000);
        let s = t.samples();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].requests_per_s, 6.0);
        assert_eq!(s[0].write_ms, 3.0);
        for i in 0..400u64 {
            t.sample(4_000 + i * 1_000);
        }
        let s = t.samples();
        assert_eq!(s.len(), SAMPLES_KEPT);
        assert_eq!(s.last().unwrap().write_ms, 0.0);
    }
}
