//! Where a facility stands in the network, from the membership view:
//! Connected / Majority / Minority / Isolated ([`partition_state`]), and
//! the [`PartitionMonitor`] that tracks it over time. Detection owns it
//! (the detector publishes it with its view); the CAP gate reads it
//! (the CAP module re-exports it).

use serde::{Deserialize, Serialize};

/// Where this facility stands in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PartitionState {
    /// Every member is reachable.
    Connected,
    /// A majority (with this facility) is reachable, not every member.
    Majority,
    /// Some peers are reachable, not a majority.
    Minority,
    /// No peer is reachable.
    Isolated,
}

impl PartitionState {
    /// Stable name, for errors, logs and the API.
    pub fn code(self) -> &'static str {
        match self {
            PartitionState::Connected => "CONNECTED",
            PartitionState::Majority => "MAJORITY",
            PartitionState::Minority => "MINORITY",
            PartitionState::Isolated => "ISOLATED",
        }
    }

    /// True when a quorum is reachable (consensus can make progress).
    pub fn has_quorum(self) -> bool {
        matches!(self, PartitionState::Connected | PartitionState::Majority)
    }
}

impl std::fmt::Display for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// The state of a facility that reaches `reachable_peers` of the other
/// `members - 1`.
pub fn partition_state(members: usize, reachable_peers: usize) -> PartitionState {
    let reach = reachable_peers.min(members.saturating_sub(1)) + 1;
    if reach >= members {
        PartitionState::Connected
    } else if reach * 2 > members {
        PartitionState::Majority
    } else if reachable_peers > 0 {
        PartitionState::Minority
    } else {
        PartitionState::Isolated
    }
}

/// Tracks the partition state over time: when it last changed and when a
/// majority was last reachable (the staleness of local reads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionMonitor {
    members: usize,
    state: PartitionState,
    since_ms: u64,
    quorum_seen_ms: u64,
}

impl PartitionMonitor {
    /// A monitor for `members` facilities, Connected at `now_ms` (every
    /// peer is presumed up until the detector says otherwise).
    pub fn new(members: usize, now_ms: u64) -> PartitionMonitor {
        PartitionMonitor {
            members,
            state: partition_state(members, members.saturating_sub(1)),
            since_ms: now_ms,
            quorum_seen_ms: now_ms,
        }
    }

    /// The view changed (or time passed): `reachable_peers` peers are not
    /// Down. Returns the transition, if any.
    pub fn update(
        &mut self,
        reachable_peers: usize,
        now_ms: u64,
    ) -> Option<(PartitionState, PartitionState)> {
        let next = partition_state(self.members, reachable_peers);
        if self.state.has_quorum() || next.has_quorum() {
            self.quorum_seen_ms = now_ms;
        }
        if next == self.state {
            return None;
        }
        let from = self.state;
        self.state = next;
        self.since_ms = now_ms;
        Some((from, next))
    }

    /// The state now.
    pub fn state(&self) -> PartitionState {
        self.state
    }

    /// When the state last changed.
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// How long ago a quorum was last reachable: 0 while it is.
    pub fn stale_ms(&self, now_ms: u64) -> u64 {
        if self.state.has_quorum() {
            0
        } else {
            now_ms.saturating_sub(self.quorum_seen_ms)
        }
    }
}
