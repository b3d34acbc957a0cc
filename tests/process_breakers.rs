//! Circuit breakers on the calls a facility makes to its leader, over real
//! processes.
//!
//! 1. SIGSTOP a follower for 10 s under writes: the other two facilities'
//!    breakers toward it (`forward@…`, `read_index@…`, `snapshot@…`,
//!    `ledger_fetch@…`) open once their
//!    detectors hold it Down, each facility's `/v1/cluster` shows both its
//!    own and its peer's open breakers (the mesh), writes keep committing,
//!    and after SIGCONT every breaker reads closed at every facility, and no
//!    facility holds evidence against the paused one.
//! 2. A follower whose messages to the leader are lost (a one-way chaos
//!    rule; it still hears the leader): its forwarded writes time out after
//!    the hop's whole timeout, the breaker opens on those failures, and
//!    later writes there are refused
//!    at once with 503 CIRCUIT_OPEN (nothing sent; the CLI's table says
//!    not applied) instead of each waiting out its budget. A storm of
//!    clients retrying every failure sends the leader no more than 10% of
//!    its requests. Once the rule is gone the half-open probes close it
//!    and writes there commit.

#[path = "support/procs.rs"]
mod procs;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use procs::*;
use serde_json::{json, Value};

/// The state of `dependency` held by `holder`, as `site` shows the mesh.
async fn breaker(
    c: &reqwest::Client,
    site: &Site,
    holder: &str,
    dependency: &str,
) -> Option<String> {
    let (st, v) = get(c, &site.url("/v1/cluster")).await;
    if st != 200 {
        return None;
    }
    v["breakers"]
        .as_array()?
        .iter()
        .find(|b| b["facility"] == holder && b["dependency"] == dependency)
        .and_then(|b| b["state"].as_str().map(str::to_string))
}

/// Waits until every one of `sites` shows, for each of them, its breakers
/// toward `peer` in `state` (its own, and the others' through the mesh).
async fn mesh_reads(c: &reqwest::Client, s: &[Site], sites: &[usize], peer: &str, state: &str) {
    let deps = [
        format!("forward@{peer}"),
        format!("read_index@{peer}"),
        format!("snapshot@{peer}"),
        format!("ledger_fetch@{peer}"),
    ];
    for dep in deps {
        for &viewer in sites {
            for &holder in sites {
                let holder_id = s[holder].id.clone();
                let what = format!("{dep} of {holder_id} {state} at {}", s[viewer].id);
                until(Duration::from_secs(60), &what, || async {
                    (breaker(c, &s[viewer], &holder_id, &dep).await? == state).then_some(())
                })
                .await;
            }
        }
    }
}

fn person(i: usize) -> Value {
    json!({"id": format!("w{i}"), "name": format!("Writer {i}"), "role": "faculty"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_open_toward_a_stopped_or_unreachable_peer_and_close_after() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &["alpha", "bravo", "charlie"],
        "[chaos]\nenabled = true\n\n[backup]\nevery_s = 0\n",
    );
    let c = client();
    let li = start_all(&c, &mut s).await;
    let lead = s[li].id.clone();
    let f: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let (f1, f2) = (f[0], f[1]);
    let stopped = s[f2].id.clone();

    // Writes at the leader all along part 1.
    let done = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (c, url, done, acked) = (
            c.clone(),
            s[li].url("/v1/people"),
            done.clone(),
            acked.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) && i < 10_000 {
                let (st, _) = post(&c, &url, &format!("w{i}"), &person(i)).await;
                if st == 200 {
                    acked.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }
        })
    };

    // 1. SIGSTOP a follower.
    s[f2].signal("STOP");
    let before = acked.load(Ordering::Relaxed);
    mesh_reads(&c, &s, &[li, f1], &stopped, "open").await;
    // Writes went on without it.
    until(
        Duration::from_secs(60),
        "writes while it is stopped",
        || async { (acked.load(Ordering::Relaxed) >= before + 20).then_some(()) },
    )
    .await;
    s[f2].signal("CONT");
    mesh_reads(&c, &s, &[li, f1], &stopped, "closed").await;
    done.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    // A paused facility missed votes but withheld nothing: no facility
    // holds evidence against it (it once collected WITHHOLDING records).
    no_evidence(&c, &s).await;

    // 2. f1's messages to the leader are lost; it still hears the leader.
    let leader_now = leader(&c, &s[f1]).await;
    assert_eq!(
        leader_now, lead,
        "the leader changed: the test needs it stable"
    );
    let rule = json!({"action": {"kind": "fault_rule", "rule": {"Drop": {
        "from": {"OneOf": [s[f1].id]}, "to": {"OneOf": [lead]},
        "probability": 1.0, "class": null}}}, "dead_man_ms": 600_000});
    let (st, v) = post(&c, &s[f1].url("/v1/admin/chaos"), "cut", &rule).await;
    assert_eq!(st, 200, "{v}");
    let dep = format!("forward@{lead}");
    // Six writes at once with the default budget: each forward waits out
    // the hop's whole timeout (5 s) with the leader unchanged, a failure
    // the breaker counts (a client's own short budget would not count).
    let mut first = tokio::task::JoinSet::new();
    for i in 0..6 {
        let (c, url) = (c.clone(), s[f1].url("/v1/people"));
        first.spawn(async move { post(&c, &url, &format!("cut-{i}"), &person(20_000 + i)).await });
    }
    while let Some(r) = first.join_next().await {
        let (st, v) = r.unwrap();
        assert!(
            st == 503 || st == 0,
            "a write through the cut committed: {st} {v}"
        );
    }
    let mut n = 100;
    let refused = until(
        Duration::from_secs(60),
        "CIRCUIT_OPEN at the follower",
        || {
            let (c, url) = (c.clone(), s[f1].url("/v1/people"));
            n += 1;
            let i = 20_000 + n;
            async move {
                let r = c
                    .post(url)
                    .bearer_auth(TOKEN)
                    .header("idempotency-key", format!("cut-{i}"))
                    .header("bulwark-timeout-ms", "500")
                    .json(&person(i))
                    .send()
                    .await
                    .ok()?;
                let st = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                (v["code"] == "CIRCUIT_OPEN").then_some((st, v))
            }
        },
    )
    .await;
    assert_eq!(refused.0, 503, "{}", refused.1);

    // A retry storm: clients retrying every failure at once, 300 requests.
    // The forwards the follower sends toward the leader stay within the
    // 10% retry budget (in fact the breaker's probes).
    let before = metric(&c, &s[f1], "bulwark_raft_forwards_sent_total").await;
    let mut requests = 0;
    for i in 0..100 {
        for _ in 0..3 {
            requests += 1;
            let key = format!("storm-{i}");
            let (st, _) = post(&c, &s[f1].url("/v1/people"), &key, &person(40_000 + i)).await;
            if st != 503 && st != 0 && st != 429 {
                break;
            }
        }
    }
    let sent = metric(&c, &s[f1], "bulwark_raft_forwards_sent_total").await - before;
    assert!(
        sent <= requests as f64 / 10.0,
        "{sent} forwards toward the leader for {requests} requests"
    );
    assert_eq!(
        breaker(&c, &s[f1], &s[f1].id, &dep).await.as_deref(),
        Some("open")
    );

    // The rule gone, probes close it and writes there commit again.
    let (st, v) = post(
        &c,
        &s[f1].url("/v1/admin/chaos"),
        "heal",
        &json!({"action": {"kind": "clear"}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // Each write is a probe while half-open; two that commit close it.
    let mut n = 30_000;
    let committed = Arc::new(AtomicUsize::new(0));
    until(Duration::from_secs(60), "the breaker closed", || {
        n += 1;
        let (c, url) = (c.clone(), s[f1].url("/v1/people"));
        let site = &s[f1];
        let dep = dep.clone();
        let c2 = c.clone();
        let committed = committed.clone();
        async move {
            let (st, _) = post(&c, &url, &format!("heal-{n}"), &person(n)).await;
            committed.fetch_add(usize::from(st == 200), Ordering::Relaxed);
            (breaker(&c2, site, &site.id, &dep).await? == "closed").then_some(())
        }
    })
    .await;
    assert!(
        committed.load(Ordering::Relaxed) >= 1,
        "no write committed at the follower after the heal"
    );
    let text = metrics_text(&c, &s[f1]).await.expect("metrics answer");
    assert!(
        text.lines()
            .any(|l| l.starts_with("bulwark_flow_breaker_refused_total") && l.contains(&dep)),
        "no refusals counted: {text}"
    );
    for x in s.iter_mut() {
        x.kill();
    }
}
