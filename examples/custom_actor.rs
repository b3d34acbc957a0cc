//! Extending bulwark with your own actor.
//!
//! Run: `cargo run --example custom_actor`
//!
//! Adds a `tally` actor to the service zone of two facilities on loopback
//! QUIC. Bravo asks alpha's tally to add numbers; alpha keeps the running
//! total durably in its redb store, so when the tally is killed and its
//! supervisor restarts it, the total is still there. See docs/EXTENDING.md.

use bulwark::facility::{self, Facility, FacilitySpec};
use bulwark_runtime::{Address, ChildDef, Delivery, NodeCtx, RealClock, SupervisionConfig, Zone};
use bulwark_storage::codec;
use bulwark_transport::identity::Identity;
use bulwark_transport::quic::{loopback_socket, PeerSpec};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The name the tally registers with its facility's Router.
const TALLY: &str = "tally";
/// The key of its durable state.
const TOTAL_KEY: &str = "tally/total";

/// What crosses the wire: explicitly sized integers, serde, bincode.
#[derive(Debug, Serialize, Deserialize)]
enum TallyWire {
    Add { n: u64 },
    Total { total: u64 },
}

/// The actor's one message enum.
enum TallyMsg {
    /// A request that arrived through the Router (remote or local).
    Remote(Delivery),
}

struct Tally;

struct TallyState {
    ctx: NodeCtx,
    total: u64,
}

impl Actor for Tally {
    type Msg = TallyMsg;
    type State = TallyState;
    type Arguments = NodeCtx;

    // Rebuild state from redb, never from memory, then register for traffic.
    async fn pre_start(
        &self,
        me: ActorRef<TallyMsg>,
        ctx: NodeCtx,
    ) -> Result<TallyState, ActorProcessingErr> {
        let total = ctx.store.get_state::<u64>(TOTAL_KEY)?.unwrap_or(0);
        ctx.router.register(TALLY, me, TallyMsg::Remote);
        Ok(TallyState { ctx, total })
    }

    async fn handle(
        &self,
        _: ActorRef<TallyMsg>,
        msg: TallyMsg,
        st: &mut TallyState,
    ) -> Result<(), ActorProcessingErr> {
        let TallyMsg::Remote(d) = msg;
        // A bad message from a peer is its problem: answer nothing, stay up.
        let Ok(TallyWire::Add { n }) = codec::decode(&d.envelope.body) else {
            return Ok(());
        };
        let total = st.total.saturating_add(n);
        st.ctx.store.put_state(TOTAL_KEY, &total)?; // durable before the reply leaves
        st.total = total;
        st.ctx
            .router
            .respond(&d.envelope, codec::encode(&TallyWire::Total { total })?)?;
        Ok(())
    }

    async fn post_stop(
        &self,
        me: ActorRef<TallyMsg>,
        st: &mut TallyState,
    ) -> Result<(), ActorProcessingErr> {
        st.ctx.router.unregister(TALLY, me.get_id());
        Ok(())
    }
}

fn tally_child() -> (Zone, ChildDef) {
    (
        Zone::Service,
        ChildDef::new(TALLY, |ctx: &NodeCtx| (Tally, ctx.clone())),
    )
}

async fn add(from: &Facility, to: &Facility, n: u64) -> Result<u64, Box<dyn std::error::Error>> {
    let addr = Address::new(to.node.facility().clone(), TALLY);
    let body = codec::encode(&TallyWire::Add { n })?;
    for _ in 0..50 {
        if let Ok(reply) = from
            .node
            .router()
            .request(addr.clone(), body.clone(), Duration::from_millis(300))
            .await
        {
            if let TallyWire::Total { total } = codec::decode(&reply)? {
                return Ok(total);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("tally did not answer".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let ids: [bulwark_transport::FacilityId; 2] =
        ["alpha", "bravo"].map(|s| s.parse().expect("valid id"));
    let idents = [
        Identity::generate(ids[0].clone())?,
        Identity::generate(ids[1].clone())?,
    ];
    let sockets = [loopback_socket()?, loopback_socket()?];
    let addrs = [sockets[0].local_addr()?, sockets[1].local_addr()?];
    let mut fs = Vec::new();
    for (i, socket) in sockets.into_iter().enumerate() {
        let j = 1 - i;
        let spec = FacilitySpec {
            identity: idents[i].clone(),
            data_dir: tmp.path().join(ids[i].as_str()),
            listen: addrs[i],
            socket: Some(socket),
            peers: vec![PeerSpec {
                id: ids[j].clone(),
                addr: addrs[j],
                pin: idents[j].pin(),
                pin_next: None,
                host: None,
            }],
            supervision: SupervisionConfig::default(),
            extra: vec![tally_child()],
            raft: None,
            bft: None,
            detection: None,
            cluster: None,
            protocol_max: None,
        };
        fs.push(facility::start(spec, Arc::new(RealClock)).await?);
    }
    println!("{}", fs[0].node.tree());
    println!(
        "bravo -> alpha add 5: total {}",
        add(&fs[1], &fs[0], 5).await?
    );
    println!(
        "bravo -> alpha add 7: total {}",
        add(&fs[1], &fs[0], 7).await?
    );
    let name = fs[0].node.ctx().actor_name(Zone::Service, TALLY);
    ractor::registry::where_is(name.clone())
        .ok_or("tally not running")?
        .kill();
    println!("killed {name}; its supervisor restarts it from redb");
    let total = add(&fs[1], &fs[0], 1).await?;
    println!(
        "bravo -> alpha add 1: total {total} (restarts: {})",
        fs[0].node.ctx().spawns.restarts("service/tally")
    );
    assert_eq!(total, 13, "the restarted tally lost its durable total");
    for f in fs {
        f.node.stop().await;
    }
    Ok(())
}
