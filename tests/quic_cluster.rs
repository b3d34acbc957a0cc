//! Facilities on real QUIC over loopback: mutual TLS, supervised restarts
//! and escalation, observed through the spawn ledger and the links. Every
//! wait is bounded by a timeout and wakes on an event, not a sleep.

use bulwark::facility::{start_loopback_cluster, Facility};
use bulwark_runtime::builtin::{ping, PROBE};
use bulwark_runtime::{RealClock, Strategy, SupervisionConfig, Zone, ZoneConfig};
use bulwark_transport::LinkStatus;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(10);
const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

async fn cluster(dir: &std::path::Path, sup: SupervisionConfig) -> Vec<Facility> {
    let fs = start_loopback_cluster(dir, &NAMES, sup, None, Arc::new(RealClock))
        .await
        .expect("cluster starts");
    for f in &fs {
        assert!(f.wait_links_up(T).await, "{}: links up", f.node.facility());
    }
    fs
}

fn kill(f: &Facility, zone: Zone, actor: &str) {
    let name = f.node.ctx().actor_name(zone, actor);
    ractor::registry::where_is(name.clone())
        .unwrap_or_else(|| panic!("{name} is running"))
        .kill();
}

async fn wait_spawns(f: &Facility, key: &str, n: u64) {
    tokio::time::timeout(T, f.node.ctx().spawns.wait_spawns(key, n))
        .await
        .unwrap_or_else(|_| panic!("{key} reached {n} spawns"));
}

async fn stop(fs: Vec<Facility>) {
    for f in fs {
        f.transport.close();
        f.node.stop().await;
    }
}

#[tokio::test]
async fn three_facilities_connect_with_mutual_tls_and_answer() {
    let dir = tempfile::tempdir().unwrap();
    let fs = cluster(dir.path(), SupervisionConfig::default()).await;
    for a in &fs {
        for b in &fs {
            if a.node.facility() != b.node.facility() {
                ping(a.node.router(), b.node.facility(), T)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{} -> {}: {e}", a.node.facility(), b.node.facility())
                    });
            }
        }
        assert_eq!(
            a.transport
                .stats()
                .handshakes_refused
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
    stop(fs).await;
}

#[tokio::test]
async fn a_killed_actor_restarts_and_other_zones_see_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fs = cluster(dir.path(), SupervisionConfig::default()).await;
    let before: Vec<BTreeMap<String, u64>> = fs.iter().map(|f| f.node.ctx().spawns.all()).collect();

    kill(&fs[0], Zone::Service, PROBE);
    wait_spawns(&fs[0], "service/probe", 2).await;
    ping(fs[1].node.router(), fs[0].node.facility(), T)
        .await
        .expect("the restarted probe answers over QUIC");

    let after = fs[0].node.ctx().spawns.all();
    for (key, n) in &after {
        if key != "service/probe" {
            assert_eq!(Some(n), before[0].get(key), "alpha: {key} restarted too");
        }
    }
    for i in 1..3 {
        assert_eq!(
            fs[i].node.ctx().spawns.all(),
            before[i],
            "{} restarted something",
            NAMES[i]
        );
    }

    // A PeerLink is an actor too: killed, it restarts and redials.
    kill(&fs[0], Zone::Transport, "link-bravo");
    wait_spawns(&fs[0], "transport/link-bravo", 2).await;
    let bravo = fs[1].node.facility().clone();
    assert!(
        tokio::time::timeout(T, fs[0].transport.wait_link(&bravo, LinkStatus::Up))
            .await
            .unwrap(),
        "the link came back"
    );
    ping(fs[0].node.router(), &bravo, T)
        .await
        .expect("alpha reaches bravo again");
    assert_eq!(
        fs[0].node.ctx().spawns.restarts("transport/link-charlie"),
        0
    );
    assert_eq!(fs[0].node.ctx().spawns.restarts("service/probe"), 1);
    stop(fs).await;
}

#[tokio::test]
async fn exceeding_a_zones_intensity_escalates_to_the_root() {
    let mut sup = SupervisionConfig::default();
    sup.zones.insert(
        Zone::Service,
        ZoneConfig {
            strategy: Strategy::OneForOne,
            max_restarts: 1,
            window_ms: 60_000,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let fs = cluster(dir.path(), sup).await;
    let alpha = &fs[0];
    let spawns = alpha.node.ctx().spawns.clone();

    kill(alpha, Zone::Service, PROBE);
    wait_spawns(alpha, "service/probe", 2).await;
    assert_eq!(
        spawns.restarts("root/service"),
        0,
        "within intensity: the zone handles it"
    );

    kill(alpha, Zone::Service, PROBE);
    wait_spawns(alpha, "root/service", 2).await;
    // The root restarted the service zone, which rebuilt its probe.
    wait_spawns(alpha, "service/probe", 3).await;
    assert_eq!(
        spawns.restarts("root/transport"),
        0,
        "the transport zone was untouched"
    );
    assert_eq!(spawns.restarts("transport/link-bravo"), 0);
    assert!(alpha.node.is_running(), "the root absorbed one escalation");
    ping(fs[2].node.router(), alpha.node.facility(), T)
        .await
        .expect("alpha serves after the escalation");
    stop(fs).await;
}
