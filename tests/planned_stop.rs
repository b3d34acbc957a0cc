//! A planned stop over real processes: SIGTERM on the leader while clients
//! write through the other facilities. The leader hands leadership to a
//! caught-up voter before it stops, so each client sees at most one failed
//! attempt (retried under the same key, as a client does), the process
//! exits 0, and every acknowledged write is there after it starts again.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::json;

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
/// Writes per client.
const WRITES: usize = 30;
/// The write of client 0 after which the leader gets SIGTERM.
const STOP_AT: usize = 8;
/// Attempts at one write, at most.
const ATTEMPTS_MAX: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_over_and_clients_retry_at_most_once() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    let c = client();
    let li = start_all(&c, &mut s).await;
    let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    // Warm up: the followers know the leader and forward.
    for (k, &f) in followers.iter().enumerate() {
        let body = json!({"id": format!("warm{k}"), "name": "Dr Warm", "role": "faculty"});
        let (st, v) =
            write_until_final(&c, &s[f].url("/v1/people"), &format!("warm{k}"), &body).await;
        assert_eq!(st, 200, "{v}");
    }
    let (tx, mut at_stop) = tokio::sync::mpsc::channel::<()>(1);
    // When each write committed, for the planned-restart RTO (printed;
    // docs/BENCHMARKS.md).
    let commits: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>> = Default::default();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..3usize {
        let url = s[followers[client % 2]].url("/v1/people");
        let c = c.clone();
        let tx = tx.clone();
        let commits = commits.clone();
        clients.spawn(async move {
            let mut failed = 0;
            let mut acked = Vec::new();
            for w in 0..WRITES {
                let id = format!("c{client}w{w}");
                let body = json!({"id": id, "name": "Dr Busy", "role": "faculty"});
                let mut done = false;
                for _ in 0..ATTEMPTS_MAX {
                    let (st, _) = post(&c, &url, &id, &body).await;
                    if st == 200 {
                        commits.lock().unwrap().push(std::time::Instant::now());
                        done = true;
                        break;
                    }
                    failed += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert!(done, "client {client}: {id} never committed");
                acked.push(id);
                if client == 0 && w == STOP_AT {
                    let _ = tx.send(()).await;
                }
            }
            (client, failed, acked)
        });
    }
    drop(tx);
    at_stop.recv().await.expect("client 0 reached the stop");
    let stopped = std::time::Instant::now();
    assert!(
        s[li].terminate(),
        "the leader exits 0 on SIGTERM\n{}",
        s[li].log()
    );
    let log = s[li].log();
    assert!(log.contains("leadership handed to"), "{log}");
    let mut all = Vec::new();
    while let Some(r) = clients.join_next().await {
        let (client, failed, acked) = r.unwrap();
        assert!(failed <= 1, "client {client} saw {failed} failed attempts");
        all.extend(acked);
    }
    let mut at = commits.lock().unwrap().clone();
    at.sort();
    let first_after = at.iter().find(|t| **t > stopped).map(|t| *t - stopped);
    let longest_gap = at
        .windows(2)
        .filter(|w| w[1] > stopped && w[0] < stopped + Duration::from_secs(10))
        .map(|w| w[1] - w[0])
        .max();
    eprintln!(
        "planned stop of the leader: first write committed {first_after:?} after SIGTERM; \
         longest gap between commits around it {longest_gap:?}"
    );
    // Started again, the stopped facility holds every acknowledged write.
    s[li].start();
    let c2 = c.clone();
    let url = s[li].url("/v1/schedule?consistency=stale");
    until(
        Duration::from_secs(60),
        "the restarted facility has every write",
        || {
            let (c, url, all) = (c2.clone(), url.clone(), all.clone());
            async move {
                let (st, v) = get(&c, &url).await;
                if st != 200 {
                    return None;
                }
                let people: Vec<String> = v["people"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| p["id"].as_str().map(str::to_string))
                    .collect();
                all.iter().all(|id| people.contains(id)).then_some(())
            }
        },
    )
    .await;
}
