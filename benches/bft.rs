//! BFT benchmarks.
//!
//! - `votes_verify/*`: 64 signed votes (7 signers) checked one by one with
//!   `verify_strict`, beside the same 64 in one ed25519 batch verification.
//! - `commit_to_final/{3,4,7}`: facilities on loopback QUIC with mutual TLS,
//!   each running a RaftPeer and a BftValidator (every vote persisted with
//!   a durable redb commit before it leaves). One proposal at a time through
//!   the leader; the time measured is from the proposer's commit outcome
//!   until the proposer's validator holds the entry's quorum certificate.
//!   p50/p99 over a fixed run are printed beside criterion's estimate.
//!
//! Run: `cargo bench --bench bft`. Results: docs/BENCHMARKS.md.

mod common;

use bulwark::facility::{self, Facility};
use bulwark_actors::keys::{Domain, Keyring};
use bulwark_actors::ledger::{Vote, VoteBody};
use bulwark_actors::raft::ProposeOutcome;
use bulwark_transport::FacilityId;
use common::{command, runtime, T};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hdrhistogram::Histogram;
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAMES: [&str; 7] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
];

fn votes_verify(c: &mut Criterion) {
    let ids: Vec<FacilityId> = NAMES.iter().map(|s| s.parse().unwrap()).collect();
    let rings = Keyring::deterministic(&ids, 1);
    let public = rings[&ids[0]].public().clone();
    let votes: Vec<(FacilityId, Vote)> = (0..64u64)
        .map(|i| {
            let signer = ids[i as usize % ids.len()].clone();
            let body = VoteBody {
                signer: signer.clone(),
                height: i + 1,
                hash: [i as u8; 32],
                prev: [i as u8 ^ 0xff; 32],
            };
            (signer.clone(), Vote::sign(&rings[&signer], &body).unwrap())
        })
        .collect();
    let mut g = c.benchmark_group("votes_verify");
    g.throughput(Throughput::Elements(votes.len() as u64));
    g.bench_function("one_by_one_64", |b| {
        b.iter(|| {
            for (s, v) in &votes {
                public.verify(s, Domain::Vote, &v.body, &v.sig).unwrap();
            }
        })
    });
    g.bench_function("batched_64", |b| {
        b.iter(|| {
            let items: Vec<_> = votes
                .iter()
                .map(|(s, v)| (s, v.body.as_slice(), &v.sig))
                .collect();
            public.verify_batch(Domain::Vote, &items).unwrap();
        })
    });
    g.finish();
}

async fn cluster(dir: &std::path::Path, n: usize) -> Vec<Facility> {
    common::cluster(dir, &NAMES[..n]).await
}

/// Proposes through `f` and returns the time from its commit outcome until
/// its validator holds the certificate.
async fn commit_to_final(f: &Facility) -> Duration {
    let height = match f.propose(command(), T).await {
        Some(ProposeOutcome::Committed {
            height: Some(h), ..
        }) => h,
        other => panic!("{other:?}"),
    };
    let t = Instant::now();
    f.await_final(height, T).await.expect("final");
    t.elapsed()
}

fn finality(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("commit_to_final");
    g.sample_size(20);
    for n in [3usize, 4, 7] {
        let dir = tempfile::tempdir().unwrap();
        let fs = rt.block_on(cluster(dir.path(), n));
        let (l, _) = rt
            .block_on(facility::wait_leader(&fs, 0, T))
            .expect("leader");
        let fs = Arc::new(fs);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.to_async(&rt).iter_custom(|iters| {
                let fs = fs.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += commit_to_final(&fs[l]).await;
                    }
                    total
                }
            })
        });
        let mut hist = Histogram::<u64>::new(3).unwrap();
        rt.block_on(async {
            for _ in 0..300 {
                let d = commit_to_final(&fs[l]).await;
                hist.record(d.as_micros() as u64).unwrap();
            }
        });
        println!(
            "commit_to_final/{n} (300 sequential): p50={:.3} ms p99={:.3} ms max={:.3} ms",
            hist.value_at_quantile(0.5) as f64 / 1e3,
            hist.value_at_quantile(0.99) as f64 / 1e3,
            hist.max() as f64 / 1e3
        );
        let fs = Arc::try_unwrap(fs).ok().expect("no other owner");
        rt.block_on(async {
            for f in fs {
                f.stop().await;
            }
        });
    }
    g.finish();
}

criterion_group!(benches, votes_verify, finality);
criterion_main!(benches);
