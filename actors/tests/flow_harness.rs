//! The flow zone's actors in the harness, on virtual time.

use std::time::Duration;

use bulwark_actors::flow::actors::{
    backpressure, backpressure_child, bulkhead_child, bulkheads, BackpressureMsg, BulkheadMsg,
};
use bulwark_actors::flow::admission::AdmissionConfig;
use bulwark_actors::flow::bulkhead::PoolError;
use bulwark_runtime::Harness;

/// 10× the configured rate for 60 virtual seconds through the
/// BackpressureController actor: the admitted rate stays within ±10% of
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
    let mut tasks = tokio::task::JoinSet::new();
    let mut max_queue = 0;
    for ms in 0..60_000u64 {
        // 1,000 requests per second offered: one per virtual ms.
        let bp2 = bp.clone();
        tasks.spawn(async move {
            let out = bp2
                .call(BackpressureMsg::Arrive, Some(Duration::from_secs(5)))
                .await
                .expect("the actor answers")
                .success_or(())
                .expect("an answer");
            match out {
                Ok(a) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = bp2.cast(BackpressureMsg::Complete { latency_ms: 20 });
                    Ok(a.waited_ms)
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
    let acquire = |pool: &str, n| {
        let b = b.clone();
        let pool = pool.to_string();
        async move {
            b.call(
                |reply| BulkheadMsg::Acquire { pool, n, reply },
                Some(Duration::from_secs(1)),
            )
            .await
            .unwrap()
            .success_or(())
            .unwrap()
        }
    };
    let l1 = acquire("icu", 27).await.unwrap();
    let _l2 = acquire("icu", 13).await.unwrap();
    match acquire("icu", 1).await {
        Err(PoolError::Exhausted { pool, .. }) => assert_eq!(pool, "icu"),
        other => panic!("{other:?}"),
    }
    // Call is protected: its 9 are there whatever ICU did.
    acquire("call", 9).await.unwrap();
    b.cast(BulkheadMsg::Release(l1)).unwrap();
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

/// A caller that went away before its answer came keeps nothing: the
/// pool's units and the admission slot go back at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_caller_gone_before_the_answer_keeps_no_units_and_no_slot() {
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
    let bp = backpressure(h.node(0)).expect("running");
    for _ in 0..10 {
        let (tx, rx) = ractor::concurrency::oneshot();
        drop(rx);
        b.cast(BulkheadMsg::Acquire {
            pool: "icu".into(),
            n: 5,
            reply: tx.into(),
        })
        .unwrap();
        let (tx, rx) = ractor::concurrency::oneshot();
        drop(rx);
        bp.cast(BackpressureMsg::Arrive(tx.into())).unwrap();
    }
    h.step(Duration::from_millis(50)).await;
    let status = b
        .call(BulkheadMsg::Status, Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .success_or(())
        .unwrap();
    assert!(status.iter().all(|s| s.allocated == 0), "{status:?}");
    // Four slots, all free again: four arrivals are admitted at once.
    for _ in 0..4 {
        let admitted = bp
            .call(BackpressureMsg::Arrive, Some(Duration::from_millis(1)))
            .await
            .unwrap()
            .success_or(())
            .unwrap();
        assert!(admitted.is_ok(), "{admitted:?}");
    }
    h.shutdown().await;
}
