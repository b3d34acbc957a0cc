//! Messaging benchmarks: local actor request/response beside a raw tokio
//! mpsc + oneshot round trip (the baseline, same run), and a QUIC loopback
//! request/response between two facilities through the Router.
//!
//! Run: `cargo bench --bench messaging`. Results: docs/BENCHMARKS.md.

use bulwark::facility::{self, Facility};
use bulwark_runtime::builtin::ping;
use bulwark_runtime::{RealClock, SupervisionConfig};
use criterion::{criterion_group, criterion_main, Criterion};
use ractor::{call_t, Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

struct Echo;

enum EchoMsg {
    Ask(u64, RpcReplyPort<u64>),
}

impl Actor for Echo {
    type Msg = EchoMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<EchoMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<EchoMsg>,
        msg: EchoMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let EchoMsg::Ask(n, reply) = msg;
        let _ = reply.send(n + 1);
        Ok(())
    }
}

fn local(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("local_request_response");
    let (actor, _) = rt.block_on(Actor::spawn(None, Echo, ())).unwrap();
    g.bench_function("ractor_call", |b| {
        b.to_async(&rt)
            .iter(|| async { call_t!(actor, EchoMsg::Ask, 1_000, 1).unwrap() })
    });
    let (tx, mut rx) = mpsc::channel::<(u64, oneshot::Sender<u64>)>(1024);
    rt.spawn(async move {
        while let Some((n, reply)) = rx.recv().await {
            let _ = reply.send(n + 1);
        }
    });
    g.bench_function("tokio_mpsc_oneshot_baseline", |b| {
        b.to_async(&rt).iter(|| async {
            let (otx, orx) = oneshot::channel();
            tx.send((1, otx)).await.unwrap();
            orx.await.unwrap()
        })
    });
    g.finish();
    actor.stop(None);
}

async fn two_facilities(dir: &std::path::Path) -> Vec<Facility> {
    let fs = facility::start_loopback_cluster(
        dir,
        &["alpha", "bravo"],
        SupervisionConfig::default(),
        None,
        Arc::new(RealClock),
    )
    .await
    .unwrap();
    for f in &fs {
        assert!(f.wait_links_up(Duration::from_secs(10)).await, "links up");
    }
    fs
}

fn quic(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fs = rt.block_on(two_facilities(dir.path()));
    let router = fs[0].node.router().clone();
    let peer = fs[1].node.facility().clone();
    c.bench_function("quic_loopback_request_response", |b| {
        b.to_async(&rt)
            .iter(|| async { ping(&router, &peer, Duration::from_secs(2)).await.unwrap() })
    });
    rt.block_on(async {
        for f in fs {
            f.transport.close();
            f.node.stop().await;
        }
    });
}

criterion_group!(benches, local, quic);
criterion_main!(benches);
