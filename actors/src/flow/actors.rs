//! The flow zone's actors: thin shells around the cores.
//!
//! - [`Backpressure`] (the BackpressureController): the admission core
//!   behind a mailbox. A request that must wait gets its answer when it is
//!   admitted or times out; every refusal carries a retry-after.
//! - [`BulkheadPool`]: the resource pools behind a mailbox, with leases.
//!
//! Both publish metrics (`bulwark_flow_*`, labelled by facility through
//! the recorder) and answer status queries.

use std::collections::BTreeMap;

use bulwark_runtime::{ChildDef, Node, NodeCtx, Zone};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::admission::{Admission, AdmissionConfig, Arrival, Event, Rejected};
use super::bulkhead::{Lease, PoolError, PoolStatus, Pools};

/// The BackpressureController's registered name.
pub const BACKPRESSURE: &str = "backpressure";

/// The BulkheadPool's registered name.
pub const BULKHEADS: &str = "bulkheads";

/// A request may go ahead; report its completion with this ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The ticket.
    pub ticket: u64,
    /// How long it waited in the queue, in ms.
    pub waited_ms: u64,
}

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

/// Messages of the [`Backpressure`] actor.
pub enum BackpressureMsg {
    /// A request arrives; the answer comes when it may run or is refused.
    Arrive(RpcReplyPort<Result<Admitted, Rejected>>),
    /// An admitted request finished after `latency_ms`.
    Complete {
        /// Its latency.
        latency_ms: u64,
    },
    /// An admitted request was cancelled before it finished (its client
    /// went away): its slot is freed without adapting the limit.
    Abandon,
    /// Start queued requests, time out stale ones (self-sent).
    Tick,
    /// Set the capacity buffer: extra queue slots (the breaker mesh).
    SetBuffer(usize),
    /// The view.
    Status(RpcReplyPort<BackpressureStatus>),
}

/// The BackpressureController actor.
pub struct Backpressure;

/// Its state.
pub struct BackpressureState {
    core: Admission,
    ctx: NodeCtx,
    start: tokio::time::Instant,
    waiting: BTreeMap<u64, (u64, RpcReplyPort<Result<Admitted, Rejected>>)>,
    ticker: ractor::concurrency::JoinHandle<()>,
}

impl BackpressureState {
    fn now_ms(&self) -> u64 {
        self.ctx.clock.now().duration_since(self.start).as_millis() as u64
    }

    fn carry_out(&mut self, events: Vec<Event>, now: u64) {
        let mut abandoned = Vec::new();
        for e in events {
            match e {
                Event::Admitted(id) => {
                    if let Some((at, reply)) = self.waiting.remove(&id) {
                        metrics::counter!("bulwark_flow_admitted_total").increment(1);
                        let sent = reply.send(Ok(Admitted {
                            ticket: id,
                            waited_ms: now - at,
                        }));
                        if sent.is_err() {
                            // The caller gave up while queued: its slot is
                            // free again (else every cancelled request
                            // would shrink capacity for good).
                            abandoned.push(id);
                        }
                    }
                }
                Event::TimedOut(id, r) => {
                    if let Some((_, reply)) = self.waiting.remove(&id) {
                        metrics::counter!("bulwark_flow_rejected_total", "reason" => r.reason)
                            .increment(1);
                        let _ = reply.send(Err(r));
                    }
                }
            }
        }
        for _ in abandoned {
            metrics::counter!("bulwark_flow_abandoned_total").increment(1);
            let more = self.core.abandon(now);
            self.carry_out(more, now);
        }
        metrics::gauge!("bulwark_flow_queue_len").set(self.core.queued() as f64);
        metrics::gauge!("bulwark_flow_limit").set(f64::from(self.core.limit()));
    }
}

/// The BackpressureController as a child of the flow zone; `tick_ms`
/// paces queue polling.
pub fn backpressure_child(config: AdmissionConfig, tick_ms: u64) -> (Zone, ChildDef) {
    let def = ChildDef::new(BACKPRESSURE, move |ctx: &NodeCtx| {
        (Backpressure, (ctx.clone(), config.clone(), tick_ms))
    });
    (Zone::Flow, def)
}

/// The running BackpressureController of `node`.
pub fn backpressure(node: &Node) -> Option<ActorRef<BackpressureMsg>> {
    node.ctx().find(Zone::Flow, BACKPRESSURE)
}

impl Actor for Backpressure {
    type Msg = BackpressureMsg;
    type State = BackpressureState;
    type Arguments = (NodeCtx, AdmissionConfig, u64);

    async fn pre_start(
        &self,
        myself: ActorRef<BackpressureMsg>,
        (ctx, config, tick_ms): (NodeCtx, AdmissionConfig, u64),
    ) -> Result<BackpressureState, ActorProcessingErr> {
        let ticker = myself.send_interval(std::time::Duration::from_millis(tick_ms.max(1)), || {
            BackpressureMsg::Tick
        });
        let start = ctx.clock.now();
        Ok(BackpressureState {
            core: Admission::new(config, 0),
            ctx,
            start,
            waiting: BTreeMap::new(),
            ticker,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BackpressureMsg>,
        msg: BackpressureMsg,
        st: &mut BackpressureState,
    ) -> Result<(), ActorProcessingErr> {
        let now = st.now_ms();
        match msg {
            BackpressureMsg::Arrive(reply) => match st.core.arrive(now) {
                Ok(Arrival::Admitted(id)) => {
                    metrics::counter!("bulwark_flow_admitted_total").increment(1);
                    let sent = reply.send(Ok(Admitted {
                        ticket: id,
                        waited_ms: 0,
                    }));
                    if sent.is_err() {
                        metrics::counter!("bulwark_flow_abandoned_total").increment(1);
                        let events = st.core.abandon(now);
                        st.carry_out(events, now);
                    }
                }
                Ok(Arrival::Queued(id)) => {
                    st.waiting.insert(id, (now, reply));
                }
                Err(r) => {
                    metrics::counter!("bulwark_flow_rejected_total", "reason" => r.reason)
                        .increment(1);
                    let _ = reply.send(Err(r));
                }
            },
            BackpressureMsg::Complete { latency_ms } => {
                let events = st.core.complete(latency_ms, now);
                st.carry_out(events, now);
            }
            BackpressureMsg::Abandon => {
                metrics::counter!("bulwark_flow_abandoned_total").increment(1);
                let events = st.core.abandon(now);
                st.carry_out(events, now);
            }
            BackpressureMsg::Tick => {
                let events = st.core.poll(now);
                st.carry_out(events, now);
            }
            BackpressureMsg::SetBuffer(extra) => {
                metrics::gauge!("bulwark_flow_buffer").set(extra as f64);
                st.core.set_buffer(extra);
            }
            BackpressureMsg::Status(reply) => {
                let _ = reply.send(BackpressureStatus {
                    limit: st.core.limit(),
                    in_flight: st.core.in_flight(),
                    queued: st.core.queued(),
                    pressure: st.core.pressure(),
                    buffer: st.core.buffer(),
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BackpressureMsg>,
        st: &mut BackpressureState,
    ) -> Result<(), ActorProcessingErr> {
        st.ticker.abort();
        Ok(())
    }
}

/// Messages of the [`BulkheadPool`] actor.
pub enum BulkheadMsg {
    /// Take `n` units of `pool`; the answer is a lease id.
    Acquire {
        /// The pool.
        pool: String,
        /// Units.
        n: u32,
        /// The lease id, or the refusal naming the pool and the reason.
        reply: RpcReplyPort<Result<u64, PoolError>>,
    },
    /// Give a lease back.
    Release(u64),
    /// Every pool's status.
    Status(RpcReplyPort<Vec<PoolStatus>>),
}

/// The BulkheadPool actor.
pub struct BulkheadPool;

/// Its state.
pub struct BulkheadState {
    pools: Pools,
    leases: BTreeMap<u64, Lease>,
    next: u64,
}

/// The BulkheadPool as a child of the flow zone, with the default split of
/// `total` faculty.
pub fn bulkhead_child(total: u32) -> (Zone, ChildDef) {
    bulkhead_child_with(Pools::default_split(total))
}

/// The BulkheadPool as a child of the flow zone, with `pools`.
pub fn bulkhead_child_with(pools: Pools) -> (Zone, ChildDef) {
    let def = ChildDef::new(BULKHEADS, move |_ctx: &NodeCtx| {
        (BulkheadPool, pools.clone())
    });
    (Zone::Flow, def)
}

/// The running BulkheadPool of `node`.
pub fn bulkheads(node: &Node) -> Option<ActorRef<BulkheadMsg>> {
    node.ctx().find(Zone::Flow, BULKHEADS)
}

impl Actor for BulkheadPool {
    type Msg = BulkheadMsg;
    type State = BulkheadState;
    type Arguments = Pools;

    async fn pre_start(
        &self,
        _myself: ActorRef<BulkheadMsg>,
        pools: Pools,
    ) -> Result<BulkheadState, ActorProcessingErr> {
        Ok(BulkheadState {
            pools,
            leases: BTreeMap::new(),
            next: 1,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BulkheadMsg>,
        msg: BulkheadMsg,
        st: &mut BulkheadState,
    ) -> Result<(), ActorProcessingErr> {
        let mut changed = false;
        match msg {
            BulkheadMsg::Acquire { pool, n, reply } => {
                let out = st.pools.acquire(&pool, n).map(|lease| {
                    changed = true;
                    let id = st.next;
                    st.next += 1;
                    st.leases.insert(id, lease);
                    id
                });
                if out.is_err() {
                    metrics::counter!("bulwark_flow_pool_rejected_total", "pool" => pool.clone())
                        .increment(1);
                }
                if let Err(ractor::MessagingErr::SendErr(Ok(id))) = reply.send(out) {
                    // The caller is gone: give its units back at once.
                    if let Some(lease) = st.leases.remove(&id) {
                        st.pools.release(lease);
                    }
                }
            }
            BulkheadMsg::Release(id) => {
                if let Some(lease) = st.leases.remove(&id) {
                    st.pools.release(lease);
                    changed = true;
                }
            }
            BulkheadMsg::Status(reply) => {
                let _ = reply.send(st.pools.status());
            }
        }
        if changed {
            for s in st.pools.status() {
                metrics::gauge!("bulwark_flow_pool_allocated", "pool" => s.name.clone())
                    .set(f64::from(s.allocated));
            }
        }
        Ok(())
    }
}
