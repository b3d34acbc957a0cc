//! Time as an input. Real time exists only here.
//!
//! Both clocks read monotonic time from tokio, so under
//! `tokio::time::pause` they are virtual and the harness steps them. Wall
//! time (for deadlines and timestamps that cross facilities) comes from the
//! system for [`RealClock`] and from a fixed epoch plus elapsed virtual time
//! (plus a settable skew) for [`VirtualClock`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Where actors read time from.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic now (virtual under a paused tokio runtime).
    fn now(&self) -> Instant;
    /// Milliseconds since the Unix epoch, as this facility believes it.
    fn unix_ms(&self) -> u64;
    /// Shifts the wall clock by `skew_ms` from true time (chaos); false if
    /// this clock cannot be skewed.
    fn set_skew_ms(&self, skew_ms: i64) -> bool {
        let _ = skew_ms;
        false
    }
    /// The skew set, in ms.
    fn skew_ms(&self) -> i64 {
        0
    }
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        since.as_millis() as u64
    }
}

/// A deterministic clock for the harness: wall time is `epoch_ms` plus the
/// virtual time elapsed since creation, plus a skew chaos can set.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    start: Instant,
    epoch_ms: u64,
    skew_ms: Arc<AtomicI64>,
}

/// The wall-clock origin of every virtual run: 2026-01-01T00:00:00Z.
pub const VIRTUAL_EPOCH_MS: u64 = 1_767_225_600_000;

impl VirtualClock {
    /// A clock starting at [`VIRTUAL_EPOCH_MS`].
    pub fn new() -> Self {
        VirtualClock {
            start: Instant::now(),
            epoch_ms: VIRTUAL_EPOCH_MS,
            skew_ms: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Shifts this facility's wall clock by `skew_ms` (may be negative).
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
    }
}

/// The system's clocks with a settable wall-clock skew: what a facility
/// runs on, so a chaos experiment can shift its wall time.
#[derive(Debug, Clone, Default)]
pub struct SkewableClock {
    skew_ms: Arc<AtomicI64>,
}

impl SkewableClock {
    /// True time until a skew is set.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Clock for SkewableClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        RealClock
            .unix_ms()
            .saturating_add_signed(self.skew_ms.load(Ordering::Relaxed))
    }

    fn set_skew_ms(&self, skew_ms: i64) -> bool {
        self.skew_ms.store(skew_ms, Ordering::Relaxed);
        true
    }

    fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        let base = self.epoch_ms + self.start.elapsed().as_millis() as u64;
        base.saturating_add_signed(self.skew_ms.load(Ordering::Relaxed))
    }

    fn set_skew_ms(&self, skew_ms: i64) -> bool {
        VirtualClock::set_skew_ms(self, skew_ms);
        true
    }

    fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn virtual_wall_time_follows_virtual_time_and_skew() {
        let c = VirtualClock::new();
        assert_eq!(c.unix_ms(), VIRTUAL_EPOCH_MS);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.unix_ms(), VIRTUAL_EPOCH_MS + 3_000);
        c.set_skew_ms(-500);
        assert_eq!(c.unix_ms(), VIRTUAL_EPOCH_MS + 2_500);
        let dynamic: &dyn Clock = &c;
        assert!(dynamic.set_skew_ms(700));
        assert_eq!(
            (dynamic.skew_ms(), c.unix_ms()),
            (700, VIRTUAL_EPOCH_MS + 3_700)
        );
    }

    #[test]
    fn the_skewable_clock_shifts_wall_time_and_the_real_one_refuses() {
        let c = SkewableClock::new();
        let before = RealClock.unix_ms();
        assert!(c.set_skew_ms(-86_400_000));
        let skewed = c.unix_ms();
        // A day behind, give or take the time between the two reads.
        assert!(skewed + 86_400_000 >= before && skewed + 86_400_000 <= RealClock.unix_ms());
        assert_eq!(c.skew_ms(), -86_400_000);
        assert!(
            !RealClock.set_skew_ms(5),
            "the plain system clock cannot be skewed"
        );
        assert_eq!(RealClock.skew_ms(), 0);
    }
}
