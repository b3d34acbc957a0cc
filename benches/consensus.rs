//! Consensus benchmarks: three facilities on loopback QUIC with mutual TLS,
//! each RaftPeer persisting every Ready in a durable redb commit (fsync).
//!
//! - `commit_latency`: one proposal at a time through the leader, from the
//!   call until the outcome (committed on a quorum and applied). The p50
//!   and p99 of every measured proposal are printed beside criterion's
//!   estimate.
//! - `batched_throughput/*`: 256 proposals in flight at once (they share
//!   Readies, hence redb commits and messages), beside the same 256 one
//!   after another in the same run: the ratio is what batching buys.
//! - `leader_failover`: kill the leader's RaftPeer actor (its supervisor
//!   restarts it from redb) and time until a leader of a later term is
//!   seen; the median is printed.
//!
//! Run: `cargo bench --bench consensus`. Results: docs/BENCHMARKS.md.

mod common;

use bulwark::facility::{self, Facility};
use bulwark_actors::raft::{ProposeOutcome, RaftMsg, RAFT};
use bulwark_runtime::Zone;
use common::{command, runtime, T};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn three(dir: &std::path::Path) -> Vec<Facility> {
    common::cluster(dir, &["alpha", "bravo", "charlie"]).await
}

async fn leader(fs: &[Facility], after_term: u64) -> (usize, u64) {
    facility::wait_leader(fs, after_term, T)
        .await
        .expect("a leader")
}

async fn propose(f: &Facility) {
    match f.propose(command(), T).await {
        Some(ProposeOutcome::Committed { .. }) => {}
        other => panic!("{other:?}"),
    }
}

fn percentiles(name: &str, h: &Histogram<u64>) {
    println!(
        "{name}: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
        h.len(),
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
        h.max() as f64 / 1e3
    );
}

fn consensus(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let fs = rt.block_on(three(dir.path()));
    let (l, _) = rt.block_on(leader(&fs, 0));
    let fs = Arc::new(fs);

    let mut hist = Histogram::<u64>::new(3).unwrap();
    c.bench_function("commit_latency", |b| {
        b.to_async(&rt).iter(|| {
            let fs = fs.clone();
            async move { propose(&fs[l]).await }
        })
    });
    // Criterion reports means; a fixed run gives the percentiles.
    rt.block_on(async {
        for _ in 0..1000 {
            let t = Instant::now();
            propose(&fs[l]).await;
            hist.record(t.elapsed().as_micros() as u64).unwrap();
        }
    });
    percentiles("commit_latency (1000 sequential proposals)", &hist);

    const BATCH: u64 = 256;
    let mut g = c.benchmark_group("batched_throughput");
    g.throughput(Throughput::Elements(BATCH));
    g.sample_size(20);
    g.bench_function("concurrent_256", |b| {
        b.to_async(&rt).iter(|| {
            let fs = fs.clone();
            async move {
                let peer = fs[l].raft().unwrap();
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..BATCH {
                    let peer = peer.clone();
                    set.spawn(async move {
                        let command = command();
                        let out = peer
                            .call(
                                |reply| RaftMsg::Propose {
                                    command,
                                    deadline: None,
                                    reply,
                                },
                                Some(T),
                            )
                            .await
                            .unwrap()
                            .unwrap();
                        assert!(matches!(out, ProposeOutcome::Committed { .. }), "{out:?}");
                    });
                }
                while let Some(r) = set.join_next().await {
                    r.unwrap();
                }
            }
        })
    });
    g.bench_function("sequential_256_baseline", |b| {
        b.to_async(&rt).iter(|| {
            let fs = fs.clone();
            async move {
                for _ in 0..BATCH {
                    propose(&fs[l]).await;
                }
            }
        })
    });
    g.finish();

    let mut failover = Histogram::<u64>::new(3).unwrap();
    let mut g = c.benchmark_group("failover");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(15));
    let runs = std::sync::Mutex::new(Vec::new());
    g.bench_function("leader_failover", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let fs = fs.clone();
            let runs = &runs;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (l, term) = leader(&fs, 0).await;
                    let name = fs[l].node.ctx().actor_name(Zone::Consensus, RAFT);
                    let t = Instant::now();
                    ractor::registry::where_is(name)
                        .expect("RaftPeer runs")
                        .kill();
                    let (_, _) = leader(&fs, term).await;
                    let d = t.elapsed();
                    total += d;
                    runs.lock().unwrap().push(d);
                    // Let the restarted peer settle before the next kill.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                total
            }
        })
    });
    g.finish();
    for d in runs.into_inner().unwrap() {
        failover.record(d.as_micros() as u64).unwrap();
    }
    percentiles(
        "leader_failover (kill leader RaftPeer -> new leader)",
        &failover,
    );

    let fs = Arc::try_unwrap(fs).ok().expect("no other owner");
    rt.block_on(async {
        for f in fs {
            f.stop().await;
        }
    });
}

criterion_group!(benches, consensus);
criterion_main!(benches);
