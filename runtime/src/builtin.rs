//! The actors every node runs: the inbound pump and the peer links
//! (transport zone), and the probe (service zone).

use crate::envelope::Address;
use crate::node::{ChildDef, NodeCtx};
use crate::router::{Delivery, RouteError, Router};
use bulwark_storage::codec;
use bulwark_transport::{BoxFuture, FacilityId, Inbound, Transport};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};

/// Runs one long-lived future (a link or a pump) and fails when it ends, so
/// its supervisor restarts it; the future is aborted when the actor stops.
pub struct Driver;

/// Makes the driven future afresh for each incarnation.
pub type MakeFuture = Arc<dyn Fn() -> BoxFuture + Send + Sync>;

/// Messages of a [`Driver`].
#[derive(Debug)]
pub enum DriverMsg {
    /// The driven future returned.
    Ended,
}

/// The driven task; dropping it aborts the task, so a Driver that is
/// killed (no `post_stop`) does not leave its future running.
pub struct DriverTask(tokio::task::JoinHandle<()>);

impl Drop for DriverTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Actor for Driver {
    type Msg = DriverMsg;
    type State = DriverTask;
    type Arguments = MakeFuture;

    async fn pre_start(
        &self,
        myself: ActorRef<DriverMsg>,
        make: MakeFuture,
    ) -> Result<Self::State, ActorProcessingErr> {
        let fut = make();
        Ok(DriverTask(tokio::spawn(async move {
            fut.await;
            let _ = myself.cast(DriverMsg::Ended);
        })))
    }

    async fn handle(
        &self,
        _: ActorRef<DriverMsg>,
        msg: DriverMsg,
        _: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DriverMsg::Ended => Err("driven future ended".into()),
        }
    }

    async fn post_stop(
        &self,
        _: ActorRef<DriverMsg>,
        task: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        task.0.abort();
        Ok(())
    }
}

/// The inbound pump: moves transport payloads into the Router. The receiver
/// outlives the actor, so a restart resumes where the last one stopped.
pub(crate) fn inbox_child(inbound: mpsc::Receiver<Inbound>) -> ChildDef {
    let rx = Arc::new(Mutex::new(inbound));
    ChildDef::new("inbox", move |ctx: &NodeCtx| {
        let (rx, router) = (rx.clone(), ctx.router.clone());
        let make: MakeFuture = Arc::new(move || {
            let (rx, router) = (rx.clone(), router.clone());
            Box::pin(pump(rx, router))
        });
        (Driver, make)
    })
}

async fn pump(rx: Arc<Mutex<mpsc::Receiver<Inbound>>>, router: Router) {
    let mut rx = rx.lock().await;
    while let Some(inbound) = rx.recv().await {
        router.on_inbound(inbound);
    }
}

/// One PeerLink per peer, for transports whose links need a driver.
pub(crate) fn link_children(transport: &dyn Transport) -> Vec<ChildDef> {
    let mut defs = Vec::new();
    for peer in transport.peers() {
        if transport.link_driver(&peer).is_none() {
            continue;
        }
        let name = format!("link-{peer}");
        defs.push(ChildDef::new(name, move |ctx: &NodeCtx| {
            let (transport, peer) = (ctx.router.transport().clone(), peer.clone());
            let make: MakeFuture = Arc::new(move || {
                let driver = transport.link_driver(&peer);
                Box::pin(async move {
                    if let Some(d) = driver {
                        d.await
                    }
                })
            });
            (Driver, make)
        }));
    }
    if transport.accept_driver().is_some() {
        defs.push(ChildDef::new("accept", |ctx: &NodeCtx| {
            let transport = ctx.router.transport().clone();
            let make: MakeFuture = Arc::new(move || {
                let driver = transport.accept_driver();
                Box::pin(async move {
                    if let Some(d) = driver {
                        d.await
                    }
                })
            });
            (Driver, make)
        }));
    }
    defs
}

/// The probe's registered name.
pub const PROBE: &str = "probe";

/// What probes say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeWire {
    /// Asks for a [`ProbeWire::Pong`] with the same nonce.
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// The answer.
    Pong {
        /// The ping's nonce.
        nonce: u64,
        /// Who answered.
        facility: FacilityId,
    },
}

/// Messages of the [`Probe`] actor.
#[derive(Debug)]
pub enum ProbeMsg {
    /// A message from the Router.
    Remote(Delivery),
    /// Fail on purpose (demos and supervision tests).
    Crash,
}

/// Answers pings: a liveness and round-trip check between facilities.
pub struct Probe;

impl Actor for Probe {
    type Msg = ProbeMsg;
    type State = NodeCtx;
    type Arguments = NodeCtx;

    async fn pre_start(
        &self,
        myself: ActorRef<ProbeMsg>,
        ctx: NodeCtx,
    ) -> Result<NodeCtx, ActorProcessingErr> {
        ctx.router.register(PROBE, myself, ProbeMsg::Remote);
        Ok(ctx)
    }

    async fn handle(
        &self,
        _: ActorRef<ProbeMsg>,
        msg: ProbeMsg,
        ctx: &mut NodeCtx,
    ) -> Result<(), ActorProcessingErr> {
        let delivery = match msg {
            ProbeMsg::Crash => return Err("probe crashed on request".into()),
            ProbeMsg::Remote(d) => d,
        };
        // A malformed probe message is the sender's fault: drop it, stay up.
        if let Ok(ProbeWire::Ping { nonce }) = codec::decode(&delivery.envelope.body) {
            let pong = ProbeWire::Pong {
                nonce,
                facility: ctx.facility.clone(),
            };
            let _ = ctx
                .router
                .respond(&delivery.envelope, codec::encode(&pong)?);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<ProbeMsg>,
        ctx: &mut NodeCtx,
    ) -> Result<(), ActorProcessingErr> {
        ctx.router.unregister(PROBE, myself.get_id());
        Ok(())
    }
}

pub(crate) fn probe_child() -> ChildDef {
    ChildDef::new(PROBE, |ctx: &NodeCtx| (Probe, ctx.clone()))
}

/// Why a ping failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// Routing failed or timed out.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The reply was not the matching pong.
    #[error("unexpected reply from {0}")]
    BadReply(FacilityId),
}

/// Pings `peer`'s probe; returns the round-trip time on the router's clock.
pub async fn ping(
    router: &Router,
    peer: &FacilityId,
    timeout: Duration,
) -> Result<Duration, PingError> {
    let nonce = router.next_id();
    let body = codec::encode(&ProbeWire::Ping { nonce }).map_err(RouteError::from)?;
    let start = router.clock().now();
    let reply = router
        .request(Address::new(peer.clone(), PROBE), body, timeout)
        .await?;
    let elapsed = router.clock().now() - start;
    match codec::decode(&reply) {
        Ok(ProbeWire::Pong { nonce: n, facility }) if n == nonce && facility == *peer => {
            Ok(elapsed)
        }
        _ => Err(PingError::BadReply(peer.clone())),
    }
}
