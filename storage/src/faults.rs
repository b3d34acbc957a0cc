//! Disk faults injected into one [`Store`](crate::Store): slow writes and
//! refused writes, for tests and chaos experiments.
//!
//! Every store owns one [`DiskFaults`] handle (clones of the store share
//! it). It starts clear, and it is never persisted: reopening the file, as
//! a restarted process does, starts clear again.
//!
//! - **Write failures.** [`Store::begin_write`](crate::Store::begin_write) is
//!   the one door of every durable write. With probability
//!   [`DiskFaultSpec::write_failure`] it refuses with
//!   [`StorageError::Injected`](crate::StorageError::Injected) before a
//!   transaction exists, so nothing is written and the file stays as it was
//!   (as a disk that refuses a write before redb touches the file). The
//!   draws come from a ChaCha8 stream seeded by [`DiskFaultSpec::seed`]: the
//!   same writes in the same order fail the same way.
//! - **Latency.** A blocking sleep inside redb would stall the runtime and
//!   be invisible to a paused test clock, so the store does not sleep: the
//!   actors on the consensus write path (RaftPeer, BftValidator) await
//!   [`DiskFaults::latency`] before a durable write. Other writers see
//!   failures but no latency.
//!
//! Limits: the latency is capped at [`DISK_LATENCY_MS_MAX`]; the handle
//! holds one spec and one generator, so its memory is fixed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest latency a spec may add to one durable write, in ms: one minute
/// is already far past every Raft and BFT timeout, so longer is no
/// different experiment, only a longer one.
pub const DISK_LATENCY_MS_MAX: u64 = 60_000;

/// What disk faults to inject. The default is no fault.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiskFaultSpec {
    /// Added before every durable write on the consensus path, in ms; at
    /// most [`DISK_LATENCY_MS_MAX`].
    pub latency_ms: u64,
    /// Probability, in `0.0..=1.0`, that a write transaction is refused.
    pub write_failure: f64,
    /// Seed of the ChaCha8 stream the refusals are drawn from.
    pub seed: u64,
}

impl DiskFaultSpec {
    /// Checks the spec: the probability is a number in `0..=1` and the
    /// latency within [`DISK_LATENCY_MS_MAX`].
    pub fn validate(&self) -> Result<(), DiskFaultError> {
        if !(0.0..=1.0).contains(&self.write_failure) {
            return Err(DiskFaultError::WriteFailure {
                write_failure: self.write_failure,
            });
        }
        if self.latency_ms > DISK_LATENCY_MS_MAX {
            return Err(DiskFaultError::Latency {
                latency_ms: self.latency_ms,
                max_ms: DISK_LATENCY_MS_MAX,
            });
        }
        Ok(())
    }

    /// True when the spec injects nothing.
    pub fn is_clear(&self) -> bool {
        self.latency_ms == 0 && self.write_failure == 0.0
    }
}

/// Why a [`DiskFaultSpec`] was refused; the faults in force are unchanged.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum DiskFaultError {
    /// `write_failure` is not a probability (NaN, negative, or above 1).
    #[error("write_failure {write_failure} is not a probability in 0..=1")]
    WriteFailure {
        /// The value offered.
        write_failure: f64,
    },
    /// `latency_ms` is above the cap.
    #[error("latency_ms {latency_ms} exceeds the limit of {max_ms} ms")]
    Latency {
        /// The value offered.
        latency_ms: u64,
        /// The cap, [`DISK_LATENCY_MS_MAX`].
        max_ms: u64,
    },
}

/// A store's disk faults: a cheap, shared handle (clones see and change the
/// same faults). See the module docs.
#[derive(Clone)]
pub struct DiskFaults {
    inner: Arc<Inner>,
}

struct Inner {
    /// The spec's latency, readable without the lock on every write.
    latency_ms: AtomicU64,
    /// Writes refused so far, over every spec.
    injected: AtomicU64,
    drawing: Mutex<Drawing>,
}

struct Drawing {
    spec: DiskFaultSpec,
    rng: ChaCha8Rng,
}

impl Default for DiskFaults {
    fn default() -> Self {
        let spec = DiskFaultSpec::default();
        DiskFaults {
            inner: Arc::new(Inner {
                latency_ms: AtomicU64::new(0),
                injected: AtomicU64::new(0),
                drawing: Mutex::new(Drawing {
                    rng: ChaCha8Rng::seed_from_u64(spec.seed),
                    spec,
                }),
            }),
        }
    }
}

impl std::fmt::Debug for DiskFaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskFaults")
            .field("spec", &self.spec())
            .field("injected", &self.injected())
            .finish()
    }
}

impl DiskFaults {
    /// Puts `spec` in force, restarting the failure draws from its seed.
    /// A spec that does not validate is refused and the faults in force
    /// stay as they are.
    pub fn set(&self, spec: DiskFaultSpec) -> Result<(), DiskFaultError> {
        spec.validate()?;
        let mut d = self.lock();
        d.spec = spec;
        d.rng = ChaCha8Rng::seed_from_u64(spec.seed);
        self.inner
            .latency_ms
            .store(spec.latency_ms, Ordering::Relaxed);
        Ok(())
    }

    /// Removes every fault (the count of refused writes is kept).
    pub fn clear(&self) {
        self.set(DiskFaultSpec::default())
            .expect("the default spec is valid");
    }

    /// The spec in force.
    pub fn spec(&self) -> DiskFaultSpec {
        self.lock().spec
    }

    /// The latency to await before a durable write (zero when none).
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.inner.latency_ms.load(Ordering::Relaxed))
    }

    /// How many writes were refused so far, over every spec (monotonic).
    pub fn injected(&self) -> u64 {
        self.inner.injected.load(Ordering::Relaxed)
    }

    /// Draws whether the next write is refused, and counts it if so. No
    /// draw is made while the failure probability is zero, so clear faults
    /// cost one uncontended lock.
    pub(crate) fn refuse_write(&self) -> bool {
        let mut d = self.lock();
        let p = d.spec.write_failure;
        if p == 0.0 {
            return false;
        }
        // `random` is in [0, 1): p = 1 always refuses, p = 0 never does.
        let refused = d.rng.random::<f64>() < p;
        if refused {
            self.inner.injected.fetch_add(1, Ordering::Relaxed);
        }
        refused
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Drawing> {
        // Nothing panics while the lock is held; a poisoned lock still
        // holds a whole spec and generator.
        self.inner
            .drawing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
