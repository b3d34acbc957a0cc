//! Hybrid logical clocks (Kulkarni et al. 2014): timestamps that follow
//! the wall clock yet never go backwards and order every message after
//! its cause, even between facilities whose clocks disagree.
//!
//! A timestamp is (wall ms, logical counter, node). `now` takes the larger
//! of the wall clock and the last timestamp (bumping the counter on a
//! tie); `observe` folds in a timestamp that arrived from a peer, so the
//! next local timestamp is later than it. The node (a facility's raft id)
//! breaks ties, so the order is total: last-write-wins needs that.
//!
//! A peer's timestamp more than `max_offset_ms` ahead of the local wall
//! clock is not adopted (a lying or badly skewed clock could otherwise
//! drag every facility into the future); `observe` reports it.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// One hybrid-logical-clock timestamp. Ordered by wall time, then the
/// counter, then the node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Wall-clock ms since the Unix epoch (the largest seen).
    pub wall_ms: u64,
    /// Events at the same wall ms.
    pub logical: u32,
    /// The stamping facility (its raft id): the tie-break.
    pub node: u64,
}

impl Hlc {
    /// No timestamp: commands not stamped by a clock carry it.
    pub const ZERO: Hlc = Hlc {
        wall_ms: 0,
        logical: 0,
        node: 0,
    };

    /// True for [`Hlc::ZERO`].
    pub fn is_zero(&self) -> bool {
        *self == Hlc::ZERO
    }
}

impl std::fmt::Display for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{:x}", self.wall_ms, self.logical, self.node)
    }
}

/// A timestamp from a peer was too far ahead to adopt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {remote} is {ahead_ms} ms ahead of the local clock (limit {limit_ms} ms)")]
pub struct TooFarAhead {
    /// The peer's timestamp.
    pub remote: Hlc,
    /// How far ahead of the local wall clock.
    pub ahead_ms: u64,
    /// The limit.
    pub limit_ms: u64,
}

/// The clock's state. Sans-IO: the wall clock comes in as `wall_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HlcState {
    node: u64,
    last: Hlc,
    max_offset_ms: u64,
}

impl HlcState {
    /// A clock for `node` that refuses peers more than `max_offset_ms`
    /// ahead.
    pub fn new(node: u64, max_offset_ms: u64) -> HlcState {
        HlcState {
            node,
            last: Hlc { node, ..Hlc::ZERO },
            max_offset_ms,
        }
    }

    /// A timestamp for a local event, later than every one before.
    pub fn now(&mut self, wall_ms: u64) -> Hlc {
        if wall_ms > self.last.wall_ms {
            self.last.wall_ms = wall_ms;
            self.last.logical = 0;
        } else {
            self.bump();
        }
        self.last
    }

    /// Folds in `remote` (from a message): later local timestamps order
    /// after it. Refused, changing nothing, when it is too far ahead.
    pub fn observe(&mut self, remote: Hlc, wall_ms: u64) -> Result<(), TooFarAhead> {
        let ahead_ms = remote.wall_ms.saturating_sub(wall_ms);
        if ahead_ms > self.max_offset_ms {
            return Err(TooFarAhead {
                remote,
                ahead_ms,
                limit_ms: self.max_offset_ms,
            });
        }
        let wall = wall_ms.max(remote.wall_ms).max(self.last.wall_ms);
        let logical = match (wall == self.last.wall_ms, wall == remote.wall_ms) {
            (true, true) => self.last.logical.max(remote.logical).saturating_add(1),
            (true, false) => self.last.logical.saturating_add(1),
            (false, true) => remote.logical.saturating_add(1),
            (false, false) => 0,
        };
        self.last = Hlc {
            wall_ms: wall,
            logical,
            node: self.node,
        };
        Ok(())
    }

    /// The last timestamp given or observed.
    pub fn last(&self) -> Hlc {
        self.last
    }

    fn bump(&mut self) {
        match self.last.logical.checked_add(1) {
            Some(l) => self.last.logical = l,
            None => {
                // 4 billion events in one ms: borrow the next ms.
                self.last.wall_ms += 1;
                self.last.logical = 0;
            }
        }
    }
}

/// A facility's clock, shared by the actors that stamp or observe; each
/// passes its wall clock's reading.
#[derive(Clone)]
pub struct HlcClock {
    inner: Arc<Mutex<HlcState>>,
}

impl std::fmt::Debug for HlcClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = self.inner.lock().expect("hlc lock").last();
        f.debug_struct("HlcClock").field("last", &last).finish()
    }
}

impl HlcClock {
    /// The clock of `node`.
    pub fn new(node: u64, max_offset_ms: u64) -> HlcClock {
        HlcClock {
            inner: Arc::new(Mutex::new(HlcState::new(node, max_offset_ms))),
        }
    }

    /// A timestamp for a local event at wall time `wall_ms`.
    pub fn now(&self, wall_ms: u64) -> Hlc {
        self.inner.lock().expect("hlc lock").now(wall_ms)
    }

    /// Folds in a peer's timestamp at wall time `wall_ms`.
    pub fn observe(&self, remote: Hlc, wall_ms: u64) -> Result<(), TooFarAhead> {
        self.inner
            .lock()
            .expect("hlc lock")
            .observe(remote, wall_ms)
    }
}

/// "Now" that a step back of this facility's wall clock (an NTP step, a
/// VM resumed, a chaos lever) cannot move back: the larger of the wall
/// clock and the highest wall reading so far carried forward by the
/// monotonic clock. Judging others' timestamps reads it (so a clock
/// stepped back here never makes honest peers look like they stamp the
/// future), and so do the deadlines sent once the wall clock is more than
/// the allowed skew behind it ([`TimeFloor::unless_behind`]). Only this
/// facility's own readings move it: no peer can push it. Sans-IO: the
/// caller gives both clocks. It starts at the first reading: a facility
/// restarted with a clock far behind starts from there.
#[derive(Debug, Clone, Copy)]
pub struct TimeFloor {
    skew_ms: u64,
    /// The highest wall reading and the monotonic instant it was taken.
    high: Option<(u64, tokio::time::Instant)>,
}

impl TimeFloor {
    /// A floor whose deadlines switch to it `skew_ms` behind.
    pub fn new(skew_ms: u64) -> TimeFloor {
        TimeFloor {
            skew_ms,
            high: None,
        }
    }

    /// The reference at wall time `wall_ms` and monotonic time `now`.
    pub fn reference(&mut self, wall_ms: u64, now: tokio::time::Instant) -> u64 {
        let carried = self
            .high
            .map(|(w, at)| w.saturating_add(now.saturating_duration_since(at).as_millis() as u64));
        match carried {
            Some(c) if c >= wall_ms => c,
            _ => {
                self.high = Some((wall_ms, now));
                wall_ms
            }
        }
    }

    /// The wall clock, unless it is more than the skew behind the
    /// reference (stepped back): then the reference. For the deadlines
    /// this facility sends, which peers judge by their own clocks: a clock
    /// within the allowed skew keeps its own readings exactly.
    pub fn unless_behind(&mut self, wall_ms: u64, now: tokio::time::Instant) -> u64 {
        let reference = self.reference(wall_ms, now);
        if reference > wall_ms.saturating_add(self.skew_ms) {
            reference
        } else {
            wall_ms
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn follows_the_wall_clock_and_never_goes_back() {
        let mut c = HlcState::new(7, 1_000);
        let a = c.now(100);
        assert_eq!((a.wall_ms, a.logical, a.node), (100, 0, 7));
        // The wall clock steps back: the counter moves instead.
        let b = c.now(90);
        assert_eq!((b.wall_ms, b.logical), (100, 1));
        let d = c.now(200);
        assert_eq!((d.wall_ms, d.logical), (200, 0));
        assert!(a < b && b < d);
    }

    #[test]
    fn a_received_timestamp_orders_later_events_after_it() {
        let mut slow = HlcState::new(1, 10_000);
        let fast = Hlc {
            wall_ms: 5_000,
            logical: 3,
            node: 2,
        };
        slow.observe(fast, 1_000).unwrap();
        let next = slow.now(1_001);
        assert!(next > fast, "{next} after {fast}");
        assert_eq!((next.wall_ms, next.logical), (5_000, 5));
    }

    #[test]
    fn a_timestamp_too_far_ahead_is_refused_and_changes_nothing() {
        let mut c = HlcState::new(1, 500);
        c.now(1_000);
        let before = c.clone();
        let far = Hlc {
            wall_ms: 1_501,
            logical: 0,
            node: 2,
        };
        let e = c.observe(far, 1_000).unwrap_err();
        assert_eq!(e.ahead_ms, 501);
        assert_eq!(c, before);
    }

    proptest! {
        /// Whatever mix of local events and received stamps, local
        /// stamps strictly increase and each is later than every stamp
        /// received before it.
        #[test]
        fn stamps_increase_and_follow_their_causes(
            events in proptest::collection::vec((any::<bool>(), 0u64..10_000, 0u32..5), 1..200)
        ) {
            let mut c = HlcState::new(1, u64::MAX);
            let mut last_local = Hlc::ZERO;
            let mut seen = Hlc::ZERO;
            for (local, wall, logical) in events {
                if local {
                    let t = c.now(wall);
                    prop_assert!(t > last_local);
                    prop_assert!(t > seen || seen.node == 1);
                    prop_assert!(t.wall_ms >= wall);
                    last_local = t;
                } else {
                    let r = Hlc { wall_ms: wall, logical, node: 2 };
                    c.observe(r, wall / 2).unwrap();
                    seen = seen.max(r);
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_back_of_the_wall_clock_does_not_move_the_reference_back() {
        let t0 = tokio::time::Instant::now();
        let mut f = TimeFloor::new(10_000);
        assert_eq!(f.reference(1_000_000, t0), 1_000_000, "the first reading");
        // 30 s later the wall clock is stepped back 60 s: carried forward.
        let t1 = t0 + std::time::Duration::from_secs(30);
        assert_eq!(f.reference(970_000, t1), 1_030_000);
        // Deadlines: the reference once the wall is more than 10 s behind,
        // the wall while within 10 s.
        assert_eq!(f.unless_behind(970_000, t1), 1_030_000);
        assert_eq!(f.unless_behind(1_025_000, t1), 1_025_000);
        // A wall clock ahead of the carried reading wins, and becomes it.
        assert_eq!(f.reference(1_040_000, t1), 1_040_000);
        let t2 = t1 + std::time::Duration::from_secs(1);
        assert_eq!(f.reference(0, t2), 1_041_000);
    }
}
