//! Harness tests: determinism, partitions, supervision and escalation.

use bulwark_runtime::builtin::{ping, PROBE};
use bulwark_runtime::{Harness, Strategy, SupervisionConfig, Zone, ZoneConfig};
use bulwark_transport::simnet::{LinkParams, Outcome};
use std::time::Duration;

const T: Duration = Duration::from_secs(2);

async fn chatter(seed: u64) -> Vec<bulwark_transport::simnet::TraceEvent> {
    let h = Harness::new(3, seed).await.unwrap();
    h.net().set_default_link(LinkParams {
        latency: Duration::from_millis(3),
        jitter: Duration::from_millis(10),
        loss: 0.1,
    });
    for round in 0..20 {
        for i in 0..3 {
            let peer = h.id((i + 1 + round % 2) % 3);
            let _ = ping(h.router(i), &peer, Duration::from_millis(200)).await;
        }
    }
    let trace = h.trace();
    h.shutdown().await;
    trace
}

/// DESIGN.md §5: a failing seed replays the same run.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn same_seed_gives_the_same_trace() {
    let a = chatter(11).await;
    let b = chatter(11).await;
    let c = chatter(12).await;
    assert!(a.len() >= 100, "too little traffic: {}", a.len());
    assert!(
        a.iter().any(|e| e.outcome == Outcome::Lost),
        "loss never happened"
    );
    assert_eq!(a, b, "same seed, different trace");
    assert_ne!(a, c, "different seed, same trace");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn partition_stops_delivery_and_heal_restores_it() {
    let h = Harness::new(3, 5).await.unwrap();
    let (b, c) = (h.id(1), h.id(2));
    assert!(ping(h.router(0), &b, T).await.is_ok());
    h.partition(&[0], &[1, 2]).unwrap();
    assert!(
        ping(h.router(0), &b, T).await.is_err(),
        "alpha reached bravo across a partition"
    );
    assert!(ping(h.router(0), &c, T).await.is_err());
    assert!(
        ping(h.router(1), &c, T).await.is_ok(),
        "the majority side must still talk"
    );
    h.heal();
    assert!(
        ping(h.router(0), &b, T).await.is_ok(),
        "heal did not restore delivery"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn killed_actor_restarts_and_other_zones_see_no_restart() {
    let h = Harness::new(3, 1).await.unwrap();
    let spawns = &h.node(0).ctx().spawns;
    let before = spawns.all();
    assert!(h.kill_actor(0, Zone::Service, PROBE));
    h.step(Duration::from_millis(50)).await;
    assert_eq!(
        spawns.restarts("service/probe"),
        1,
        "the probe was not restarted"
    );
    for (key, n) in spawns.all() {
        if key != "service/probe" {
            assert_eq!(Some(&n), before.get(&key), "{key} restarted too");
        }
    }
    for i in 1..3 {
        assert!(
            h.node(i).ctx().spawns.all().values().all(|&n| n == 1),
            "facility {i} restarted something"
        );
    }
    assert_eq!(
        h.counter(
            0,
            "bulwark_supervisor_restarts_total",
            &[("actor", "probe")]
        ),
        1
    );
    // The restarted probe serves again.
    assert!(ping(h.router(1), &h.id(0), T).await.is_ok());
    h.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn exceeding_zone_intensity_escalates_to_root_then_stops_the_node() {
    let mut sup = SupervisionConfig::default();
    let tight = |n| ZoneConfig {
        strategy: Strategy::OneForOne,
        max_restarts: n,
        window_ms: 10_000,
    };
    sup.zones.insert(Zone::Service, tight(1));
    sup.root = tight(1);
    let mut h = Harness::builder(2, 3)
        .supervision(sup)
        .start()
        .await
        .unwrap();
    let kill = |h: &Harness| assert!(h.kill_actor(0, Zone::Service, PROBE));
    // Within the zone's intensity: the probe restarts, the zone does not.
    kill(&h);
    h.step(Duration::from_millis(10)).await;
    let spawns = h.node(0).ctx().spawns.clone();
    assert_eq!(
        (
            spawns.restarts("service/probe"),
            spawns.restarts("root/service")
        ),
        (1, 0)
    );
    // One more inside the window: the zone melts down and the root restarts it.
    kill(&h);
    h.step(Duration::from_millis(10)).await;
    assert_eq!(
        spawns.restarts("root/service"),
        1,
        "no escalation to the root"
    );
    assert_eq!(
        spawns.restarts("root/transport"),
        0,
        "another zone was restarted"
    );
    // Twice more: the restarted zone melts down again, past the root's intensity.
    kill(&h);
    h.step(Duration::from_millis(10)).await;
    kill(&h);
    assert!(
        h.wait_root_stopped(0, Duration::from_secs(1)).await,
        "root did not stop"
    );
    assert!(h.is_up(1), "the other facility went down too");
    h.crash(0).await;
    h.shutdown().await;
}
