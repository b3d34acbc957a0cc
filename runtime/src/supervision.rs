//! Zones, strategies and restart intensity, on `ractor-supervisor`.
//!
//! The tree is: one root supervisor (one-for-one) over one supervisor per
//! [`Zone`]; each zone supervises its actors with its own [`Strategy`] and
//! restart intensity (at most `max_restarts` in `window_ms`). A zone that
//! exceeds its intensity stops abnormally; the root sees that failure and
//! restarts the whole zone, which counts against the root's own intensity.
//! Past that, the root stops and the node reports it.
//!
//! Why `ractor-supervisor` and not our own: it implements exactly the OTP
//! strategies and meltdown windows this needs, on ractor 0.16, and measures
//! its windows with tokio's clock, so virtual time drives it in the harness.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A failure domain with its own supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Zone {
    /// Peer links, the accept loop and the inbound pump.
    Transport,
    /// Failure detection and partition monitoring.
    Detection,
    /// Raft, BFT and healing.
    Consensus,
    /// Bulkheads, backpressure and breakers.
    Flow,
    /// Chaos experiments: never allowed to take another zone down.
    Chaos,
    /// The scheduling service and probes.
    Service,
}

impl Zone {
    /// Every zone, in start order (transport first, service last).
    pub const ALL: [Zone; 6] = [
        Zone::Transport,
        Zone::Detection,
        Zone::Consensus,
        Zone::Flow,
        Zone::Chaos,
        Zone::Service,
    ];

    /// Lowercase name, used in actor names and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Zone::Transport => "transport",
            Zone::Detection => "detection",
            Zone::Consensus => "consensus",
            Zone::Flow => "flow",
            Zone::Chaos => "chaos",
            Zone::Service => "service",
        }
    }
}

/// What a supervisor restarts when one child fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Only the failed child.
    OneForOne,
    /// Every child of the zone.
    OneForAll,
    /// The failed child and every child started after it.
    RestForOne,
}

impl Strategy {
    pub(crate) fn to_lib(self) -> ractor_supervisor::SupervisorStrategy {
        use ractor_supervisor::SupervisorStrategy as S;
        match self {
            Strategy::OneForOne => S::OneForOne,
            Strategy::OneForAll => S::OneForAll,
            Strategy::RestForOne => S::RestForOne,
        }
    }
}

/// One supervisor's strategy and restart intensity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// What to restart when a child fails.
    pub strategy: Strategy,
    /// Restarts tolerated inside `window_ms`; one more escalates.
    pub max_restarts: usize,
    /// The window restarts are counted in, in milliseconds.
    pub window_ms: u64,
}

impl ZoneConfig {
    fn new(strategy: Strategy, max_restarts: usize, window_ms: u64) -> Self {
        ZoneConfig {
            strategy,
            max_restarts,
            window_ms,
        }
    }
}

/// The whole tree's supervision settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionConfig {
    /// The root supervisor: restarts a zone that escalated.
    #[serde(default = "SupervisionConfig::root_default")]
    pub root: ZoneConfig,
    /// Per zone; a zone missing here uses [`SupervisionConfig::zone_default`].
    #[serde(default)]
    pub zones: BTreeMap<Zone, ZoneConfig>,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            root: Self::root_default(),
            zones: BTreeMap::new(),
        }
    }
}

impl SupervisionConfig {
    /// The root's default: it absorbs 3 zone escalations a minute.
    pub fn root_default() -> ZoneConfig {
        ZoneConfig::new(Strategy::OneForOne, 3, 60_000)
    }

    /// The default of `zone` when the config does not list it. Links restart
    /// independently and often (10 in 10 s); consensus restarts as a unit
    /// because its actors share durable state; chaos gets a long window so a
    /// misbehaving experiment is stopped, not retried forever; everything
    /// else is one-for-one, 5 in 10 s.
    pub fn zone_default(zone: Zone) -> ZoneConfig {
        match zone {
            Zone::Transport => ZoneConfig::new(Strategy::OneForOne, 10, 10_000),
            Zone::Consensus => ZoneConfig::new(Strategy::OneForAll, 3, 10_000),
            Zone::Chaos => ZoneConfig::new(Strategy::OneForOne, 3, 60_000),
            _ => ZoneConfig::new(Strategy::OneForOne, 5, 10_000),
        }
    }

    /// The setting in force for `zone`: the config's, else the zone default.
    pub fn zone(&self, zone: Zone) -> ZoneConfig {
        self.zones
            .get(&zone)
            .copied()
            .unwrap_or_else(|| Self::zone_default(zone))
    }

    /// Checks that every window is positive.
    pub fn validate(&self) -> Result<(), String> {
        let all = std::iter::once(("root", self.root))
            .chain(self.zones.iter().map(|(z, c)| (z.as_str(), *c)));
        for (name, c) in all {
            if c.window_ms == 0 {
                return Err(format!("supervision.{name}.window_ms must be > 0"));
            }
        }
        Ok(())
    }
}

/// Counts every spawn of every supervised child, so tests and operators can
/// see exactly which actors restarted. Keys are `zone/actor`.
#[derive(Debug, Clone)]
pub struct SpawnLedger {
    inner: Arc<Mutex<BTreeMap<String, u64>>>,
    /// Bumped on every spawn, so waiters wake without polling.
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for SpawnLedger {
    fn default() -> Self {
        SpawnLedger {
            inner: Arc::default(),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl SpawnLedger {
    /// Records a spawn; returns how many times `key` has now been spawned.
    pub fn record(&self, key: &str) -> u64 {
        let n = {
            let mut map = self.inner.lock().expect("ledger lock");
            let n = map.entry(key.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        self.changed.send_modify(|g| *g += 1);
        n
    }

    /// Waits until `key` has been spawned at least `spawns` times.
    pub async fn wait_spawns(&self, key: &str, spawns: u64) {
        let mut rx = self.changed.subscribe();
        while self.spawns(key) < spawns {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Spawns of `key` so far.
    pub fn spawns(&self, key: &str) -> u64 {
        self.inner
            .lock()
            .expect("ledger lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Restarts of `key` so far (spawns after the first).
    pub fn restarts(&self, key: &str) -> u64 {
        self.spawns(key).saturating_sub(1)
    }

    /// Every key with its spawn count.
    pub fn all(&self) -> BTreeMap<String, u64> {
        self.inner.lock().expect("ledger lock").clone()
    }
}
