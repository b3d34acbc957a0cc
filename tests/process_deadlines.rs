//! Deadlines end to end over real processes: the leader's disk takes 5 s
//! per write (the disk lever), and 20 writes with a 200 ms budget
//! (`Bulwark-Timeout-Ms`) go to a follower at once. Each is answered 503
//! TIMED_OUT, and once they are all answered the follower holds nothing
//! for them: no bulkhead unit, no admission slot or queue place, no Raft
//! proposal waiting on the log (its metrics and `/v1/cluster`, before and
//! after). Then the lever is cleared and the same keys apply once.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::{json, Value};

/// Units the API's bulkheads hold at `site`.
async fn held(c: &reqwest::Client, site: &Site) -> u64 {
    let (st, v) = get(c, &site.url("/v1/cluster")).await;
    assert_eq!(st, 200, "{v}");
    v["bulkheads"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["name"] != "operator")
        .map(|b| b["allocated"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_past_their_deadline_hold_nothing_at_the_facility() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &["alpha", "bravo", "charlie"],
        "[chaos]\nenabled = true\n\n[backup]\nevery_s = 0\n",
    );
    let c = client();
    let li = start_all(&c, &mut s).await;
    let fi = (li + 1) % 3;
    let body = json!({"id": "warm", "name": "Warm", "role": "faculty"});
    let (st, v) = write_until_final(&c, &s[fi].url("/v1/people"), "warm", &body).await;
    assert_eq!(st, 200, "{v}");
    let slow = json!({"action": {"kind": "disk", "latency_ms": 5_000, "write_failure": 0.0},
        "dead_man_ms": 600_000});
    let (st, v) = post(&c, &s[li].url("/v1/admin/chaos"), "slow", &slow).await;
    assert_eq!(st, 200, "{v}");

    let mut writes = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (c, url) = (c.clone(), s[fi].url("/v1/people"));
        writes.spawn(async move {
            let r = c
                .post(url)
                .bearer_auth(TOKEN)
                .header("idempotency-key", format!("d{i}"))
                .header("bulwark-timeout-ms", "200")
                .json(&json!({"id": format!("d{i}"), "name": "Late", "role": "faculty"}))
                .send()
                .await
                .unwrap();
            let st = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (st, v)
        });
    }
    while let Some(r) = writes.join_next().await {
        let (st, v) = r.unwrap();
        assert_eq!((st, v["code"].as_str()), (503, Some("TIMED_OUT")), "{v}");
    }
    // Answered: nothing is held for them any more. The RaftPeer drops a
    // proposal at the first tick past its deadline (50 ms ticks), long
    // before the leader's 5 s write could answer it.
    until(
        Duration::from_secs(2),
        "the follower holding nothing",
        || async {
            let pending = metric(&c, &s[fi], "bulwark_raft_proposals_pending").await;
            let in_flight = metric(&c, &s[fi], "bulwark_flow_in_flight").await;
            let queued = metric(&c, &s[fi], "bulwark_flow_queue_len").await;
            let units = held(&c, &s[fi]).await;
            (pending == 0.0 && in_flight == 0.0 && queued == 0.0 && units == 0).then_some(())
        },
    )
    .await;

    // The disk back to speed: the same keys apply, once each.
    let clear = json!({"action": {"kind": "clear"}});
    let (st, v) = post(&c, &s[li].url("/v1/admin/chaos"), "clear", &clear).await;
    assert_eq!(st, 200, "{v}");
    for i in 0..20 {
        let body = json!({"id": format!("d{i}"), "name": "Late", "role": "faculty"});
        let url = s[fi].url("/v1/people");
        let (st, v) = write_until_final(&c, &url, &format!("d{i}"), &body).await;
        assert_eq!(st, 200, "d{i}: {v}");
    }
    let (st, v) = get(&c, &s[li].url("/v1/schedule?consistency=linearizable")).await;
    assert_eq!(st, 200, "{v}");
    let people = v["people"].as_array().unwrap();
    for i in 0..20 {
        let n = people.iter().filter(|p| p["id"] == format!("d{i}")).count();
        assert_eq!(n, 1, "d{i} is there {n} times");
    }
    for x in s.iter_mut() {
        x.kill();
    }
}
