//! A soak of crashes and pauses over real processes, counting blame. Four
//! facilities (one liar tolerated, so the validators' heuristics run as in
//! production) take writes from a client that keeps its own record of
//! what was acknowledged, while a seeded schedule of faults runs: `kill -9`
//! and restart of a follower or of the leader, SIGSTOP of a facility for
//! 4 s then SIGCONT. Afterwards every acknowledged write is on every
//! facility and no facility holds any evidence against another: crashing,
//! restarting and pausing are not lying (WITHHOLDING, FAVORITISM and the
//! rest must not fire on them).

#[path = "support/procs.rs"]
mod procs;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procs::*;
use rand::{Rng, SeedableRng};
use serde_json::json;

const ROUNDS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_pauses_lose_nothing_and_blame_nobody() {
    let root = tempfile::tempdir().unwrap();
    let names = ["alpha", "bravo", "charlie", "delta"];
    let mut s = sites(root.path(), &names, "[backup]\nevery_s = 0\n");
    let c = client();
    start_all(&c, &mut s).await;

    // The client: one write at a time, each to the next facility: a
    // person, a block, the person on the block (an ordinary schedule's
    // traffic, which the favoritism heuristic watches). Each acknowledged
    // one is recorded; a refused or unanswered one is tried again under
    // its key (so it applies once) until it is acknowledged.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (c, bases, acked, stop) = (c.clone(), base_urls(&s), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0usize;
            let mut tries = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (path, body, id) = write_of(i);
                let url = format!("{}{path}", bases[(i + tries) % bases.len()]);
                let (st, _) = post(&c, &url, &format!("w{i}"), &body).await;
                if st == 200 {
                    acked.lock().unwrap().push(id);
                    i += 1;
                    tries = 0;
                } else {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    };

    // SOAK_SEED=n runs another schedule (a failure prints its rounds).
    let seed = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2026);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for round in 0..ROUNDS {
        let li = leader_index(&c, &s).await;
        let victim = if rng.random_range(0..3) == 0 {
            li
        } else {
            (li + 1 + rng.random_range(0..3)) % 4
        };
        let pause = rng.random_range(0..2) == 0;
        eprintln!(
            "round {round}: {} {} (leader {})",
            if pause { "pause" } else { "kill -9" },
            s[victim].id,
            s[li].id
        );
        if pause {
            s[victim].signal("STOP");
            tokio::time::sleep(Duration::from_secs(4)).await;
            s[victim].signal("CONT");
        } else {
            s[victim].kill();
            tokio::time::sleep(Duration::from_secs(1)).await;
            s[victim].start();
        }
        // Settled: every facility up and naming one leader, with writes
        // acknowledged since.
        let before = acked.lock().unwrap().len();
        until(Duration::from_secs(60), "the cluster settled", || async {
            let mut leaders = std::collections::BTreeSet::new();
            for x in &s {
                let (st, v) = get(&c, &x.url("/v1/cluster")).await;
                if st != 200 {
                    return None;
                }
                leaders.insert(v["leader"].as_str()?.to_string());
            }
            (leaders.len() == 1 && acked.lock().unwrap().len() >= before + 3).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 30, "{} writes acknowledged", acked.len());

    for x in &s {
        until(
            Duration::from_secs(60),
            "every acknowledged write",
            || async {
                let (st, v) = get(&c, &x.url("/v1/schedule?consistency=linearizable")).await;
                if st != 200 {
                    return None;
                }
                let mut held = std::collections::BTreeSet::new();
                for p in v["people"].as_array()? {
                    held.insert(format!("people/{}", p["id"].as_str()?));
                }
                for b in v["blocks"].as_array()? {
                    let id = b["id"].as_str()?;
                    held.insert(format!("blocks/{id}"));
                    for a in b["assigned"].as_array()? {
                        held.insert(format!("assigned/{}@{id}", a["person"].as_str()?));
                    }
                }
                acked.iter().all(|a| held.contains(a)).then_some(())
            },
        )
        .await;
    }
    no_evidence(&c, &s).await;
}

/// Each facility's API base URL.
fn base_urls(s: &[Site]) -> Vec<String> {
    s.iter().map(|x| x.url("")).collect()
}

/// Write `i` of the client: a person, a block, the person on the block;
/// its path, body and how an acknowledged one shows in the schedule.
fn write_of(i: usize) -> (&'static str, serde_json::Value, String) {
    let k = i / 3;
    match i % 3 {
        0 => (
            "/v1/people",
            json!({"id": format!("r{k}"), "name": "Resident", "role": "resident", "pgy": 1}),
            format!("people/r{k}"),
        ),
        1 => (
            "/v1/blocks",
            json!({"id": format!("b{k}"), "day": k, "start_min": 480,
                "duration_min": 600, "pool": "icu", "required": 1}),
            format!("blocks/b{k}"),
        ),
        _ => (
            "/v1/assignments",
            json!({"person": format!("r{k}"), "block": format!("b{k}")}),
            format!("assigned/r{k}@b{k}"),
        ),
    }
}

/// The index of the facility every answering one names as leader.
async fn leader_index(c: &reqwest::Client, s: &[Site]) -> usize {
    let id = leader(c, &s[0]).await;
    s.iter().position(|x| x.id == id).expect("a member leads")
}
