//! The admission controller and the bulkhead pools as in-process layers:
//! the sans-IO cores behind a mutex that every request enters directly
//! (no mailbox round trip), each grant a guard that gives itself back when
//! dropped, however the request ends. The flow zone's actors own them
//! ([`super::actors`]): the BackpressureController ticks the queue (time-
//! outs), takes the breaker mesh's buffer and answers status; the
//! BulkheadPool answers status. A supervised restart of either actor keeps
//! the same gate, so requests in flight keep their slots.
//!
//! The mutex is held only for the core's bookkeeping (a few comparisons),
//! never across an await; a grant handed to a waiter that is gone comes
//! back as a guard and is dropped after the lock is released.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::admission::{Admission, AdmissionConfig, Arrival, Event, Priority, Rejected};
use super::bulkhead::{Lease, PoolError, PoolStatus, Pools};

/// The admission controller's view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackpressureStatus {
    /// The adaptive concurrency limit.
    pub limit: u32,
    /// Requests running.
    pub in_flight: u32,
    /// Requests queued.
    pub queued: usize,
    /// Queue fill, 0.0 to 1.0 (the signal for upstream).
    pub pressure: f64,
    /// Extra queue slots raised by the breaker mesh.
    pub buffer: usize,
}

type Waiter = oneshot::Sender<Result<Permit, Rejected>>;

struct AdmissionState {
    core: Admission,
    /// Queued requests: when they arrived (ms) and where their answer goes.
    waiting: BTreeMap<u64, (u64, Waiter)>,
}

struct AdmissionInner {
    state: Mutex<AdmissionState>,
    start: Instant,
}

/// The admission controller shared by one facility's requests. Cheap to
/// clone.
#[derive(Clone)]
pub struct AdmissionGate {
    inner: Arc<AdmissionInner>,
}

impl std::fmt::Debug for AdmissionGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionGate")
            .field("status", &self.status())
            .finish()
    }
}

/// An admitted request's slot: [`Permit::complete`] reports its latency
/// (the limit adapts); dropped without it (the request was cancelled), the
/// slot is freed without teaching the limit anything.
#[must_use = "a permit holds a slot until it is completed or dropped"]
pub struct Permit {
    gate: AdmissionGate,
    since: Instant,
    done: bool,
}

impl Permit {
    /// The request finished: its latency since admission adapts the limit.
    pub fn complete(mut self) {
        self.done = true;
        let latency_ms = self.since.elapsed().as_millis() as u64;
        self.gate.settle(|core, now| core.complete(latency_ms, now));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            metrics::counter!("bulwark_flow_abandoned_total").increment(1);
            self.gate.settle(|core, now| core.abandon(now));
        }
    }
}

impl AdmissionGate {
    /// A gate with `config`, its clock starting now.
    pub fn new(config: AdmissionConfig) -> AdmissionGate {
        AdmissionGate {
            inner: Arc::new(AdmissionInner {
                state: Mutex::new(AdmissionState {
                    core: Admission::new(config, 0),
                    waiting: BTreeMap::new(),
                }),
                start: Instant::now(),
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.inner.start.elapsed().as_millis() as u64
    }

    fn lock(&self) -> MutexGuard<'_, AdmissionState> {
        // A panic while the lock was held left plain counters behind; the
        // core stays usable.
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn permit(&self) -> Permit {
        metrics::counter!("bulwark_flow_admitted_total").increment(1);
        Permit {
            gate: self.clone(),
            since: Instant::now(),
            done: false,
        }
    }

    /// A request arrives: admitted now, or after a wait in the queue, or
    /// refused with a retry-after (queue full, or it waited too long).
    pub async fn admit(&self) -> Result<Permit, Rejected> {
        self.admit_as(Priority::Write).await
    }

    /// [`AdmissionGate::admit`] for a request of `priority`: while others
    /// wait, higher priorities go first (and may displace a lower one from
    /// a full queue).
    pub async fn admit_as(&self, priority: Priority) -> Result<Permit, Rejected> {
        let rx = {
            let mut st = self.lock();
            let now = self.now_ms();
            let (arrival, displaced) = st.core.arrive_as(now, priority);
            for e in displaced {
                if let Event::TimedOut(id, r) = e {
                    if let Some((_, tx)) = st.waiting.remove(&id) {
                        metrics::counter!("bulwark_flow_rejected_total", "reason" => r.reason)
                            .increment(1);
                        let _ = tx.send(Err(r));
                    }
                }
            }
            match arrival {
                Ok(Arrival::Admitted(_)) => return Ok(self.permit()),
                Ok(Arrival::Queued(id)) => {
                    let (tx, rx) = oneshot::channel();
                    st.waiting.insert(id, (now, tx));
                    rx
                }
                Err(r) => {
                    metrics::counter!("bulwark_flow_rejected_total", "reason" => r.reason)
                        .increment(1);
                    return Err(r);
                }
            }
        };
        rx.await.unwrap_or(Err(Rejected {
            reason: "admission_unavailable",
            retry_after_ms: 1_000,
        }))
    }

    /// Runs `f` on the core and carries out what it decided: queued
    /// requests start or time out. A permit handed to a waiter that is gone
    /// comes back and is dropped once the lock is released (which frees
    /// its slot and may start the next one).
    fn settle(&self, f: impl FnOnce(&mut Admission, u64) -> Vec<Event>) {
        let mut returned = Vec::new();
        {
            let mut st = self.lock();
            let now = self.now_ms();
            let events = f(&mut st.core, now);
            for e in events {
                match e {
                    Event::Admitted(id) => {
                        if let Some((_, tx)) = st.waiting.remove(&id) {
                            if let Err(Ok(p)) = tx.send(Ok(self.permit())) {
                                returned.push(p);
                            }
                        }
                    }
                    Event::TimedOut(id, r) => {
                        if let Some((_, tx)) = st.waiting.remove(&id) {
                            metrics::counter!("bulwark_flow_rejected_total", "reason" => r.reason)
                                .increment(1);
                            let _ = tx.send(Err(r));
                        }
                    }
                }
            }
            metrics::gauge!("bulwark_flow_queue_len").set(st.core.queued() as f64);
            metrics::gauge!("bulwark_flow_in_flight").set(f64::from(st.core.in_flight()));
            metrics::gauge!("bulwark_flow_limit").set(f64::from(st.core.limit()));
        }
        drop(returned);
    }

    /// Starts queued requests that may start and times out those that
    /// waited too long (the BackpressureController's tick).
    pub fn poll(&self) {
        self.settle(|core, now| core.poll(now));
    }

    /// Sets the capacity buffer (the breaker mesh).
    pub fn set_buffer(&self, extra: usize) {
        metrics::gauge!("bulwark_flow_buffer").set(extra as f64);
        self.lock().core.set_buffer(extra);
    }

    /// The view.
    pub fn status(&self) -> BackpressureStatus {
        let st = self.lock();
        BackpressureStatus {
            limit: st.core.limit(),
            in_flight: st.core.in_flight(),
            queued: st.core.queued(),
            pressure: st.core.pressure(),
            buffer: st.core.buffer(),
        }
    }
}

struct PoolsInner {
    pools: Mutex<Pools>,
}

/// The bulkhead pools shared by one facility's requests. Cheap to clone.
#[derive(Clone)]
pub struct BulkheadGate {
    inner: Arc<PoolsInner>,
}

impl std::fmt::Debug for BulkheadGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkheadGate")
            .field("pools", &self.status())
            .finish()
    }
}

/// Units of a pool held by a request; given back when dropped.
#[must_use = "a hold keeps its units until it is dropped"]
pub struct Held {
    gate: BulkheadGate,
    lease: Option<Lease>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            let mut pools = self.gate.lock();
            pools.release(lease);
            BulkheadGate::publish(&pools);
        }
    }
}

impl BulkheadGate {
    /// A gate over `pools`.
    pub fn new(pools: Pools) -> BulkheadGate {
        BulkheadGate {
            inner: Arc::new(PoolsInner {
                pools: Mutex::new(pools),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pools> {
        self.inner
            .pools
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(pools: &Pools) {
        for s in pools.status() {
            metrics::gauge!("bulwark_flow_pool_allocated", "pool" => s.name.clone())
                .set(f64::from(s.allocated));
        }
    }

    /// Takes `n` units of `pool` (its own, then flex, then what other pools
    /// lend) or refuses, naming the pool and the reason.
    pub fn acquire(&self, pool: &str, n: u32) -> Result<Held, PoolError> {
        let mut pools = self.lock();
        match pools.acquire(pool, n) {
            Ok(lease) => {
                Self::publish(&pools);
                Ok(Held {
                    gate: self.clone(),
                    lease: Some(lease),
                })
            }
            Err(e) => {
                metrics::counter!("bulwark_flow_pool_rejected_total", "pool" => pool.to_string())
                    .increment(1);
                Err(e)
            }
        }
    }

    /// Every pool's status.
    pub fn status(&self) -> Vec<PoolStatus> {
        self.lock().status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> AdmissionConfig {
        AdmissionConfig {
            queue_len_max: 2,
            queue_timeout_ms: 100,
            limit_min: 1,
            limit_initial: 1,
            limit_max: 1,
            ..AdmissionConfig::default()
        }
    }

    /// One slot: the second request waits, the fourth is refused; the
    /// waiter starts when the first completes; a dropped permit frees its
    /// slot; a waiter that gave up gets nothing and keeps nothing.
    #[tokio::test(start_paused = true)]
    async fn permits_free_their_slot_however_the_request_ends() {
        let gate = AdmissionGate::new(small());
        let first = gate.admit().await.unwrap();
        let g = gate.clone();
        let second = tokio::spawn(async move { g.admit().await.map(|p| p.complete()) });
        let g = gate.clone();
        let third = tokio::spawn(async move { g.admit().await });
        tokio::task::yield_now().await;
        assert_eq!(gate.status().queued, 2);
        let r = gate.admit().await.err().expect("queue full");
        assert_eq!(r.reason, "queue_full");
        assert!(r.retry_after_ms >= 1);
        third.abort(); // its client went away while it waited
        let _ = third.await;
        first.complete();
        second.await.unwrap().unwrap();
        assert_eq!(gate.status().in_flight, 0, "{:?}", gate.status());
        assert_eq!(gate.status().queued, 0, "{:?}", gate.status());
        let p = gate.admit().await.unwrap();
        drop(p); // cancelled mid-flight
        assert_eq!(gate.status().in_flight, 0);
        // A waiter that waits too long is refused by the tick.
        let _held = gate.admit().await.unwrap();
        let g = gate.clone();
        let late = tokio::spawn(async move { g.admit().await });
        tokio::task::yield_now().await;
        tokio::time::advance(std::time::Duration::from_millis(150)).await;
        gate.poll();
        let r = late.await.unwrap().err().expect("timed out");
        assert_eq!(r.reason, "queue_timeout");
    }

    #[test]
    fn a_hold_gives_its_units_back_when_dropped() {
        let gate = BulkheadGate::new(Pools::default_split(10));
        let name = gate.status()[0].name.clone();
        let before = gate.status()[0].allocated;
        let held = gate.acquire(&name, 1).unwrap();
        assert_eq!(gate.status()[0].allocated, before + 1);
        drop(held);
        assert_eq!(gate.status()[0].allocated, before);
        assert!(gate.acquire("no-such-pool", 1).is_err());
    }
}
