//! The flow zone's actors in the harness, on virtual time.

use std::time::Duration;

use bulwark_actors::flow::actors::{
    backpressure, backpressure_child, bulkhead_child, bulkheads, AdmissionGate, BackpressureMsg,
    BulkheadGate, BulkheadMsg,
};
use bulwark_actors::flow::admission::AdmissionConfig;
use bulwark_actors::flow::bulkhead::PoolError;
use bulwark_runtime::Harness;

async fn admission_gate(bp: &ractor::ActorRef<BackpressureMsg>) -> AdmissionGate {
    bp.call(BackpressureMsg::Gate, Some(Duration::from_secs(5)))
        .await
        .unwrap()
        .success_or(())
        .unwrap()
}

async fn bulkhead_gate(b: &ractor::ActorRef<BulkheadMsg>) -> BulkheadGate {
    b.call(BulkheadMsg::Gate, Some(Duration::from_secs(5)))
        .await
        .unwrap()
        .success_or(())
        .unwrap()
}

/// 10× the configured rate for 60 virtual seconds through the gate the
/// BackpressureController actor owns (and ticks): the admitted rate stays within ±10% of
/// the rate, every refusal carries a retry-after, the queue stays bounded,
/// and admitted requests wait a bounded time (p99 within the queue
/// timeout).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn ten_times_the_capacity_for_a_minute_through_the_actor() {
    let cfg = AdmissionConfig {
        rate_per_s: 100,
        burst: 20,
        queue_len_max: 50,
        queue_timeout_ms: 500,
        ..AdmissionConfig::default()
    };
    let c2 = cfg.clone();
    let h = Harness::builder(1, 61)
        .children(move |_| vec![backpressure_child(c2.clone(), 5)])
        .start()
        .await
        .unwrap();
    let bp = backpressure(h.node(0)).expect("running");
    let gate = admission_gate(&bp).await;
    let mut tasks = tokio::task::JoinSet::new();
    let mut max_queue = 0;
    for ms in 0..60_000u64 {
        // 1,000 requests per second offered: one per virtual ms.
        let gate = gate.clone();
        tasks.spawn(async move {
            let arrived = tokio::time::Instant::now();
            match gate.admit().await {
                Ok(permit) => {
                    let waited_ms = arrived.elapsed().as_millis() as u64;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    permit.complete();
                    Ok(waited_ms)
                }
                Err(r) => Err(r.retry_after_ms),
            }
        });
        if ms % 1_000 == 0 {
            let s = bp
                .call(BackpressureMsg::Status, Some(Duration::from_secs(5)))
                .await
                .unwrap()
                .success_or(())
                .unwrap();
            max_queue = max_queue.max(s.queued);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (mut waits, mut refused) = (Vec::new(), 0u64);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(w) => waits.push(w),
            Err(retry_after_ms) => {
                assert!(retry_after_ms >= 1, "a refusal without a retry-after");
                refused += 1;
            }
        }
    }
    let rate = waits.len() as f64 / 60.0;
    waits.sort_unstable();
    let p99 = waits[waits.len() * 99 / 100];
    eprintln!(
        "admitted {:.1}/s (rate 100/s), refused {refused}, max queue {max_queue}, p99 wait {p99} ms",
        rate
    );
    assert!((90.0..=110.0).contains(&rate), "admitted {rate:.1}/s");
    assert!(max_queue <= cfg.queue_len_max);
    assert!(p99 <= cfg.queue_timeout_ms);
    h.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_pool_actor_names_the_pool_and_keeps_the_reserves() {
    let h = Harness::builder(1, 62)
        .children(|_| vec![bulkhead_child(100)])
        .start()
        .await
        .unwrap();
    let b = bulkheads(h.node(0)).expect("running");
    let gate = bulkhead_gate(&b).await;
    let l1 = gate.acquire("icu", 27).unwrap();
    let _l2 = gate.acquire("icu", 13).unwrap();
    match gate.acquire("icu", 1) {
        Err(PoolError::Exhausted { pool, .. }) => assert_eq!(pool, "icu"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("icu lent past its limit"),
    }
    // Call is protected: its 9 are there whatever ICU did.
    let _call = gate.acquire("call", 9).unwrap();
    drop(l1);
    let status = b
        .call(BulkheadMsg::Status, Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .success_or(())
        .unwrap();
    let icu = status.iter().find(|s| s.name == "icu").unwrap();
    assert_eq!((icu.allocated, icu.borrowed), (13, 13));
    h.shutdown().await;
}

/// A caller that went away keeps nothing: a hold dropped gives its units
/// back, a request dropped while it waited in the queue or after it was
/// admitted gives its slot back, and a restarted controller keeps the
/// gate (and so the slots of the requests in flight).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_caller_gone_keeps_no_units_and_no_slot() {
    let h = Harness::builder(1, 63)
        .children(|_| {
            vec![
                bulkhead_child(100),
                backpressure_child(
                    AdmissionConfig {
                        limit_initial: 4,
                        limit_min: 4,
                        limit_max: 4,
                        ..AdmissionConfig::default()
                    },
                    5,
                ),
            ]
        })
        .start()
        .await
        .unwrap();
    let b = bulkheads(h.node(0)).expect("running");
    let pools = bulkhead_gate(&b).await;
    let bp = backpressure(h.node(0)).expect("running");
    let gate = admission_gate(&bp).await;
    let mut waiting = Vec::new();
    for _ in 0..10 {
        drop(pools.acquire("icu", 5).unwrap());
        let g = gate.clone();
        waiting.push(tokio::spawn(async move {
            let p = g.admit().await;
            std::future::pending::<()>().await;
            drop(p);
        }));
    }
    h.step(Duration::from_millis(5)).await;
    assert_eq!(gate.status().in_flight, 4);
    assert_eq!(gate.status().queued, 6);
    for w in waiting {
        w.abort();
        let _ = w.await;
    }
    h.step(Duration::from_millis(50)).await;
    let status = b
        .call(BulkheadMsg::Status, Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .success_or(())
        .unwrap();
    assert!(status.iter().all(|s| s.allocated == 0), "{status:?}");
    assert_eq!(gate.status().in_flight, 0, "{:?}", gate.status());
    assert_eq!(gate.status().queued, 0, "{:?}", gate.status());
    // A permit held across a restart of the controller keeps its slot in
    // the same gate.
    let held = gate.admit().await.unwrap();
    bp.kill();
    h.step(Duration::from_millis(500)).await;
    let restarted = backpressure(h.node(0)).expect("restarted");
    assert_ne!(restarted.get_id(), bp.get_id());
    let again = admission_gate(&restarted).await;
    assert_eq!(again.status().in_flight, 1);
    held.complete();
    assert_eq!(again.status().in_flight, 0);
    // Four slots, all free: four arrivals are admitted at once.
    let mut permits = Vec::new();
    for _ in 0..4 {
        permits.push(again.admit().await.unwrap());
    }
    assert_eq!(again.status().in_flight, 4);
    h.shutdown().await;
}
