//! The flow zone's actors: the owners of the in-process gates
//! ([`super::gate`]).
//!
//! - [`Backpressure`] (the BackpressureController): owns the facility's
//!   [`AdmissionGate`], which every request enters directly; the actor
//!   ticks its queue (time-outs), takes the breaker mesh's capacity buffer
//!   and answers status.
//! - [`BulkheadPool`]: owns the facility's [`BulkheadGate`] and answers
//!   status.
//!
//! Both gates are made once per child definition, so a supervised restart
//! of either actor keeps the gate (and the slots of the requests in
//! flight). Both publish metrics (`bulwark_flow_*`, labelled by facility
//! through the recorder).

use bulwark_runtime::{ChildDef, Node, NodeCtx, Zone};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::admission::AdmissionConfig;
use super::bulkhead::{PoolStatus, Pools};
pub use super::gate::{AdmissionGate, BackpressureStatus, BulkheadGate};

/// The BackpressureController's registered name.
pub const BACKPRESSURE: &str = "backpressure";

/// The BulkheadPool's registered name.
pub const BULKHEADS: &str = "bulkheads";

/// Messages of the [`Backpressure`] actor.
pub enum BackpressureMsg {
    /// The gate requests enter.
    Gate(RpcReplyPort<AdmissionGate>),
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
    gate: AdmissionGate,
    ticker: ractor::concurrency::JoinHandle<()>,
}

/// The BackpressureController as a child of the flow zone, owning a new
/// gate with `config`; `tick_ms` paces queue polling.
pub fn backpressure_child(config: AdmissionConfig, tick_ms: u64) -> (Zone, ChildDef) {
    let gate = AdmissionGate::new(config);
    let def = ChildDef::new(BACKPRESSURE, move |_ctx: &NodeCtx| {
        (Backpressure, (gate.clone(), tick_ms))
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
    type Arguments = (AdmissionGate, u64);

    async fn pre_start(
        &self,
        myself: ActorRef<BackpressureMsg>,
        (gate, tick_ms): (AdmissionGate, u64),
    ) -> Result<BackpressureState, ActorProcessingErr> {
        let ticker = myself.send_interval(std::time::Duration::from_millis(tick_ms.max(1)), || {
            BackpressureMsg::Tick
        });
        Ok(BackpressureState { gate, ticker })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BackpressureMsg>,
        msg: BackpressureMsg,
        st: &mut BackpressureState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackpressureMsg::Gate(reply) => {
                let _ = reply.send(st.gate.clone());
            }
            BackpressureMsg::Tick => st.gate.poll(),
            BackpressureMsg::SetBuffer(extra) => st.gate.set_buffer(extra),
            BackpressureMsg::Status(reply) => {
                let _ = reply.send(st.gate.status());
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
    /// The gate requests enter.
    Gate(RpcReplyPort<BulkheadGate>),
    /// Every pool's status.
    Status(RpcReplyPort<Vec<PoolStatus>>),
}

/// The BulkheadPool actor.
pub struct BulkheadPool;

/// The BulkheadPool as a child of the flow zone, with the default split of
/// `total` faculty.
pub fn bulkhead_child(total: u32) -> (Zone, ChildDef) {
    bulkhead_child_with(Pools::default_split(total))
}

/// The BulkheadPool as a child of the flow zone, owning a new gate over
/// `pools`.
pub fn bulkhead_child_with(pools: Pools) -> (Zone, ChildDef) {
    let gate = BulkheadGate::new(pools);
    let def = ChildDef::new(BULKHEADS, move |_ctx: &NodeCtx| {
        (BulkheadPool, gate.clone())
    });
    (Zone::Flow, def)
}

/// The running BulkheadPool of `node`.
pub fn bulkheads(node: &Node) -> Option<ActorRef<BulkheadMsg>> {
    node.ctx().find(Zone::Flow, BULKHEADS)
}

impl Actor for BulkheadPool {
    type Msg = BulkheadMsg;
    type State = BulkheadGate;
    type Arguments = BulkheadGate;

    async fn pre_start(
        &self,
        _myself: ActorRef<BulkheadMsg>,
        gate: BulkheadGate,
    ) -> Result<BulkheadGate, ActorProcessingErr> {
        Ok(gate)
    }

    async fn handle(
        &self,
        _myself: ActorRef<BulkheadMsg>,
        msg: BulkheadMsg,
        gate: &mut BulkheadGate,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BulkheadMsg::Gate(reply) => {
                let _ = reply.send(gate.clone());
            }
            BulkheadMsg::Status(reply) => {
                let _ = reply.send(gate.status());
            }
        }
        Ok(())
    }
}
