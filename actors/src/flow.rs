//! The flow kit: the pieces that keep one facility serving when demand or
//! a dependency goes wrong. Each is a sans-IO core (time comes in as
//! `now_ms`, chance as a drawn number), unit- and property-tested.
//!
//! - [`rate`]: the token bucket (admission's optional fixed rate).
//! - [`breaker`]: the circuit breaker (count or time window, failure and
//!   slow-call rates, minimum calls, open duration, half-open probe budget,
//!   forced-open and disabled, transition events, stats).
//! - [`bulkhead`]: resource pools with reserves and a shared flex pool.
//! - [`retry`]: backoff with jitter and a cap, transient-only retries, a
//!   retry budget (the API's resubmitted writes).
//! - [`admission`]: the BackpressureController's core: token bucket,
//!   adaptive (AIMD) concurrency limit, a bounded queue served by
//!   priority with a timeout, retry-after on every refusal, a pressure
//!   signal for upstream.
//! - [`timeout`]: deadlines that only shrink along a call chain.
//! - [`fallback`]: fallback chains (level used, degraded flag).
//! - [`health`]: liveness, readiness and deep checks with a grace period;
//!   error and latency budgets with burn rates and exhaustion events.
//! - [`idempotency`]: the durable idempotency store (redb, with a TTL):
//!   a retried request gets its first answer; a key reused for another
//!   body is refused.
//!
//! [`gate`] puts the admission core and the pools behind a mutex as
//! in-process layers that every `/v1` request enters (429 + Retry-After),
//! each grant a guard; [`actors`] are their owners in the flow zone (the
//! BackpressureController ticks the queue and takes the mesh's buffer, the
//! BulkheadPool answers status). The node's HTTP layer also serves the
//! health registry at `/health/*`. [`mesh`] holds a facility's named
//! breakers in a set shared with their callers (the RaftPeer's calls to
//! the leader) and an actor that trips the ones depending on a peer the
//! failure detector holds Down, tells peers of every transition, and
//! raises the local capacity buffer when peers' breakers open.

pub mod actors;
pub mod admission;
pub mod breaker;
pub mod bulkhead;
pub mod fallback;
pub mod gate;
pub mod health;
pub mod idempotency;
pub mod mesh;
pub mod rate;
pub mod retry;
pub mod timeout;
