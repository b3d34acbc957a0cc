//! Flow-kit cores, per decision (no I/O): the circuit breaker's state
//! check, a closed call (permit + result), a refused call when open; a
//! token-bucket acquire; a pool acquire + release; an admission decision
//! (arrive + complete).
//!
//! Run: `cargo bench --bench flow`. Results: docs/BENCHMARKS.md, beside
//! seed `002_b1430fb4c471c41b.txt` (breaker state check 12 ns, execute
//! closed 145 ns, open 8 ns).

use bulwark_actors::flow::admission::{Admission, AdmissionConfig, Arrival};
use bulwark_actors::flow::breaker::{Breaker, BreakerConfig, Outcome};
use bulwark_actors::flow::bulkhead::Pools;
use bulwark_actors::flow::rate::TokenBucket;
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let mut b = Breaker::new(BreakerConfig::default());
    g.bench_function("state_check", |x| x.iter(|| black_box(b.state())));
    let mut now = 0u64;
    g.bench_function("execute_closed", |x| {
        x.iter(|| {
            now += 1;
            let p = b.try_acquire(now).unwrap();
            b.on_result(p, Outcome::Success, 1, now);
        })
    });
    let mut open = Breaker::new(BreakerConfig::default());
    open.force_open(0);
    g.bench_function("execute_open", |x| {
        x.iter(|| black_box(open.try_acquire(black_box(1)).is_err()))
    });
    g.finish();

    let mut bucket = TokenBucket::new(u64::MAX / 1_000_000, 1_000_000, 0);
    let mut t = 0u64;
    c.bench_function("token_bucket_acquire", |x| {
        x.iter(|| {
            t += 1;
            black_box(bucket.try_acquire(1, t).is_ok())
        })
    });

    let mut pools = Pools::default_split(100);
    c.bench_function("bulkhead_acquire_release", |x| {
        x.iter(|| {
            let l = pools.acquire(black_box("clinic"), 1).unwrap();
            pools.release(l);
        })
    });

    let mut a = Admission::new(
        AdmissionConfig {
            rate_per_s: 1_000_000_000,
            burst: 1_000_000,
            ..AdmissionConfig::default()
        },
        0,
    );
    let mut n = 0u64;
    c.bench_function("admission_decision", |x| {
        x.iter(|| {
            n += 1;
            match a.arrive(n) {
                Ok(Arrival::Admitted(_)) => {
                    black_box(a.complete(1, n));
                }
                other => panic!("{other:?}"),
            }
        })
    });
}

criterion_group!(benches, flow);
criterion_main!(benches);
