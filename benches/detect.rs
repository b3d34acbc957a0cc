//! The phi accrual core: recording a heartbeat (the sliding window of 200
//! intervals, running sums) and computing φ for a peer; the HLC stamp
//! beside them. No I/O.
//!
//! Run: `cargo bench --bench detect`. Results: docs/BENCHMARKS.md, beside
//! seed `002_b1430fb4c471c41b.txt` (heartbeat 127 ns, phi 892 ns).

use bulwark_actors::detect::{PhiConfig, PhiDetector};
use bulwark_actors::hlc::HlcState;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn detect(c: &mut Criterion) {
    let mut g = c.benchmark_group("phi");
    // A full window, so every heartbeat evicts the oldest interval.
    let mut d = PhiDetector::new(PhiConfig::default());
    let mut t = 0u64;
    for _ in 0..400 {
        t += 1_000 + (t / 1_000) % 300;
        d.heartbeat(t);
    }
    g.bench_function("heartbeat", |x| {
        x.iter(|| {
            t += 1_000 + (t / 7) % 300;
            d.heartbeat(black_box(t));
        })
    });
    let at = t + 1_500;
    g.bench_function("phi", |x| x.iter(|| black_box(d.phi(black_box(at)))));
    g.finish();

    let mut h = HlcState::new(1, 60_000);
    let mut wall = 0u64;
    c.bench_function("hlc_now", |x| {
        x.iter(|| {
            wall += 1;
            black_box(h.now(black_box(wall / 4)))
        })
    });
}

criterion_group!(benches, detect);
criterion_main!(benches);
