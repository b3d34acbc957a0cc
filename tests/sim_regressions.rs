//! Bugs the randomized simulation found, each replayed from its seed (or
//! its shortest reproduction) after the fix.

use std::time::Duration;

use bulwark::sim::client::{get, json};
use bulwark::sim::{run_seed, SimCluster, SimOptions, SimPlan};

/// A linearizable read must reflect every write acknowledged before it.
/// The plan the seeds below were found under: the standard plan before
/// runs drew validator removals and additions (a seed replays its run
/// only under the draws it was found with).
fn found_under() -> SimPlan {
    SimPlan {
        validator_changes_pct: 0,
        ..SimPlan::default()
    }
}

/// `bulwark sim` seeds 3474 and 8003 (of 10,000): a refused disk write
/// fenced the RaftPeer between the read's confirmation and its inspect;
/// the core was rebuilt from its store (schedule back at its last
/// snapshot, index 0) and the read was served from it. Reads are now
/// served only from a schedule that has applied the read index
/// (`RaftMsg::InspectAt`).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn seeds_3474_and_8003_serve_no_stale_linearizable_read() {
    for seed in [3474, 8003] {
        if let Err(e) = run_seed(seed, &found_under()).await {
            panic!("SEED={seed}: {e}\n{}", e.recent_faults.join("\n"));
        }
    }
}

/// A configuration change in an entry an installed snapshot carried
/// reaches raft-rs (`bulwark sim` seed 754, with the group commit on):
/// alpha, sent a snapshot at the index of charlie's replacement that its
/// log already held, applied past the change without taking it, later led
/// without charlie's new identity, and charlie never applied again. The
/// case built by hand: `a_configuration_change_in_an_entry_a_snapshot_carried_still_takes_effect`
/// in `actors/tests/machine.rs`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn seed_754_a_replaced_facility_keeps_applying() {
    if let Err(e) = run_seed(754, &found_under()).await {
        panic!("SEED=754: {e}\n{}", e.recent_faults.join("\n"));
    }
}

/// A supervised restart of the BackpressureController leaves the API
/// admitting requests (`bulwark sim --known-bugs`, seed 0): the API held
/// the ActorRef it was built with and refused every `/v1` request with 429
/// `admission_unavailable` after the restart. It now looks the controller
/// up by name.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_api_admits_after_the_backpressure_controller_restarts() {
    use bulwark_actors::flow::actors::BACKPRESSURE;
    use bulwark_runtime::Zone;
    let c = SimCluster::start(SimOptions::new(3, 11)).await.unwrap();
    c.wait_leader(Duration::from_secs(10), Duration::from_millis(50))
        .await
        .expect("a leader");
    assert!(c.harness().kill_actor(0, Zone::Flow, BACKPRESSURE));
    c.step(Duration::from_secs(1)).await;
    for path in ["/v1/status", "/v1/schedule?consistency=linearizable"] {
        let (st, v) = json(c.call(0, get(path, c.token())).await).await;
        assert_eq!(st, 200, "{path}: {v}");
    }
    c.shutdown().await;
}
