//! The whole-stack simulation: facilities in one process on virtual time,
//! reached through their HTTP APIs.

use std::time::Duration;

use bulwark::sim::client::{get, json, post};
use bulwark::sim::{run_seed, SimCluster, SimOptions, SimPlan};
use serde_json::json;

/// Polls every 50 ms of virtual time, at most `limit`.
const POLL: Duration = Duration::from_millis(50);

/// Three facilities elect a leader; writes through any facility's API
/// commit (200) and the cluster view names the leader.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn three_facilities_serve_the_api_in_process() {
    let mut c = SimCluster::start(SimOptions::new(3, 1)).await.unwrap();
    let leader = c
        .wait_leader(Duration::from_secs(10), POLL)
        .await
        .expect("a leader");
    let token = c.token().to_string();
    let person = json!({"id": "p1", "name": "Person One", "role": "resident", "pgy": 2});
    let block = json!({"id": "b1", "day": 2, "start_min": 480, "duration_min": 600, "pool": "clinic", "required": 1});
    let assign = json!({"person": "p1", "block": "b1"});
    for (k, (path, body)) in [
        ("/v1/people", person),
        ("/v1/blocks", block),
        ("/v1/assignments", assign),
    ]
    .into_iter()
    .enumerate()
    {
        // Through a follower as well as the leader.
        let via = (leader + k) % 3;
        let (st, v) = json(
            c.call(via, post(path, &token, &format!("k{k}"), &body))
                .await,
        )
        .await;
        assert_eq!(st, 200, "{path} via {via}: {v}");
        assert_eq!(v["status"], "committed", "{v}");
    }
    let (st, v) = json(c.call(2, get("/v1/cluster")).await).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["leader"], c.ids()[leader].as_str(), "{v}");
    let (st, v) = json(c.call(1, get("/v1/schedule")).await).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["blocks"][0]["assigned"][0]["person"], "p1", "{v}");

    // A crashed facility answers like an unreachable server; restarted,
    // it serves again.
    c.crash(0).await;
    let r = c.call(0, get("/v1/cluster")).await;
    assert_eq!(r.headers()["bulwark-sim"], "unreachable");
    let (st, v) = json(r).await;
    assert_eq!(
        (st.as_u16(), v["code"].as_str()),
        (503, Some("UNREACHABLE"))
    );
    c.restart(0).await.unwrap();
    c.step(Duration::from_secs(2)).await;
    let (st, v) = json(c.call(0, get("/v1/schedule?consistency=stale")).await).await;
    assert_eq!(st, 200, "{v}");
    assert!(c.observer().lock().unwrap().violations().is_empty());
    c.shutdown().await;
}

/// The fixed seeds of the default `cargo test` run.
const SEEDS: std::ops::Range<u64> = 0..3;

/// Randomized whole-stack runs keep every invariant (see
/// `bulwark::sim::run`); a failure names its seed and how to replay it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn randomized_runs_keep_every_invariant() {
    let plan = SimPlan::default();
    for seed in SEEDS {
        let t = std::time::Instant::now();
        match run_seed(seed, &plan).await {
            Ok(r) => eprintln!("seed {seed}: {r:?} in {:?}", t.elapsed()),
            Err(e) => panic!(
                "SEED={seed}: {e}\nrecent faults:\n{}\nreplay: bulwark sim --first {seed} --seeds 1",
                e.recent_faults.join("\n")
            ),
        }
    }
}
