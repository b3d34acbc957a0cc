//! `bulwark chaos run` against a live cluster: three real `bulwark node`
//! processes with `[chaos] enabled`, one shipped experiment file, the
//! report written, every lever released afterwards; and a facility without
//! `[chaos]` refuses the levers.

#[path = "support/procs.rs"]
mod procs;

use procs::*;
use std::process::Command;

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_run_partitions_a_live_cluster_and_releases_every_lever() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &NAMES,
        "[backup]\nevery_s = 0\n\n[chaos]\nenabled = true\n",
    );
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/partition.toml");
    let out = root.path().join("report");
    let mut args = vec!["chaos", "run", file, "--token", TOKEN];
    let urls: Vec<String> = s.iter().map(|x| x.url("")).collect();
    for u in &urls {
        args.extend(["--api", u.as_str()]);
    }
    let out_s = out.display().to_string();
    args.extend(["--out", out_s.as_str()]);
    let run = Command::new(BIN).args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    // 0: passed; 2: weaknesses found (real time measures what it measures);
    // 1 would be a refusal or an error.
    assert!(
        matches!(run.status.code(), Some(0) | Some(2)),
        "{:?}\n{text}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        text.contains("experiment partition-a-follower (network_partition)"),
        "{text}"
    );
    assert!(text.contains("injected: two-way partition"), "{text}");
    for f in ["report.txt", "report.json", "heatmap.svg"] {
        assert!(out.join(f).exists(), "{f}");
    }
    for x in &s {
        let (status, v) = get(&c, &x.url("/v1/admin/chaos")).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["rules"], serde_json::json!([]), "{}: {v}", x.id);
    }
    // A facility without [chaos] refuses every lever.
    let plain = sites(&root.path().join("plain"), &["delta", "echo"], "");
    let mut plain = plain;
    plain[0].start();
    let (status, v) = until(std::time::Duration::from_secs(30), "the API", || async {
        let r = post(
            &c,
            &plain[0].url("/v1/admin/chaos"),
            "k",
            &serde_json::json!({"action": {"kind": "clear"}}),
        )
        .await;
        (r.0 != 0).then_some(r)
    })
    .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("CHAOS_DISABLED")),
        "{v}"
    );
}

/// Readiness follows the disk: a facility whose store refuses writes (the
/// disk lever, every write refused) turns `/health/ready` 503 naming the
/// store within the grace, while staying live; cleared, it turns 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_store_refuses_writes_and_returns_after() {
    use std::time::Duration;
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &NAMES,
        "[backup]\nevery_s = 0\n\n[chaos]\nenabled = true\n",
    );
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    let ready = |x: &Site| {
        let (c, url) = (c.clone(), x.url("/health/ready"));
        async move { get(&c, &url).await }
    };
    until(Duration::from_secs(60), "charlie ready", || async {
        (ready(&s[2]).await.0 == 200).then_some(())
    })
    .await;
    let lever =
        serde_json::json!({"action": {"kind": "disk", "latency_ms": 0, "write_failure": 1.0}});
    let (st, v) = post(&c, &s[2].url("/v1/admin/chaos"), "disk-on", &lever).await;
    assert_eq!(st, 200, "{v}");
    // Bounded; on a timeout, what readiness said and charlie's log are
    // printed (this wait once timed out in a full CI run and could not be
    // reproduced alone: the next one must say why).
    let mut body = None;
    for _ in 0..600 {
        let (st, b) = ready(&s[2]).await;
        if st == 503 {
            body = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(body) = body else {
        let (st, b) = ready(&s[2]).await;
        panic!(
            "charlie stayed ready with its store refusing writes: {st} {b}\n{}",
            s[2].log()
        );
    };
    assert!(body.to_string().contains("store"), "{body}");
    assert_eq!(
        get(&c, &s[2].url("/health/live")).await.0,
        200,
        "still live"
    );
    let clear = serde_json::json!({"action": {"kind": "clear"}});
    let (st, v) = post(&c, &s[2].url("/v1/admin/chaos"), "disk-off", &clear).await;
    assert_eq!(st, 200, "{v}");
    until(Duration::from_secs(60), "charlie ready again", || async {
        (ready(&s[2]).await.0 == 200).then_some(())
    })
    .await;
}

/// Liveness follows the actors: a RaftPeer stuck in one durable write
/// (the disk lever with 20 s per write, then a write to replicate) does
/// not answer the liveness probe within 5 s, three checks in a row, so
/// `/health/live` turns 503 naming it; with the lever cleared and the write
/// done, it turns 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_fails_while_the_raft_peer_is_wedged_and_returns_after() {
    use std::time::Duration;
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &NAMES,
        "[backup]\nevery_s = 0\n\n[chaos]\nenabled = true\n",
    );
    let c = client();
    start_all(&c, &mut s).await;
    let live = |x: &Site| {
        let (c, url) = (c.clone(), x.url("/health/live"));
        async move { get(&c, &url).await }
    };
    until(Duration::from_secs(60), "charlie live", || async {
        (live(&s[2]).await.0 == 200).then_some(())
    })
    .await;
    let lever =
        serde_json::json!({"action": {"kind": "disk", "latency_ms": 20_000, "write_failure": 0.0}});
    let (st, v) = post(&c, &s[2].url("/v1/admin/chaos"), "wedge", &lever).await;
    assert_eq!(st, 200, "{v}");
    // A write reaches charlie's log: its RaftPeer sleeps in the write.
    let body = serde_json::json!({"id": "p1", "name": "Ann", "role": "faculty"});
    let (st, v) = write_until_final(&c, &s[0].url("/v1/people"), "p1", &body).await;
    assert_eq!(st, 200, "{v}");
    let (_, body) = until(Duration::from_secs(90), "charlie not live", || async {
        let (st, b) = live(&s[2]).await;
        (st == 503).then_some((st, b))
    })
    .await;
    assert!(body.to_string().contains("RaftPeer"), "{body}");
    let clear = serde_json::json!({"action": {"kind": "clear"}});
    let (st, v) = post(&c, &s[2].url("/v1/admin/chaos"), "unwedge", &clear).await;
    assert_eq!(st, 200, "{v}");
    until(Duration::from_secs(90), "charlie live again", || async {
        (live(&s[2]).await.0 == 200).then_some(())
    })
    .await;
    for x in s.iter_mut() {
        x.kill();
    }
}

/// A wall clock stepped back 60 s (the clock lever), on a follower and then
/// on the leader: every write through any facility still commits, and no
/// facility records evidence against any other (the facility's proposals
/// never go back in time, deadlines and the leader's and validators'
/// checks read time as the committed entries carry it forward).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clock_stepped_back_a_minute_is_neither_refused_nor_blamed() {
    use std::time::Duration;
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &NAMES,
        "[backup]\nevery_s = 0\n\n[chaos]\nenabled = true\n",
    );
    let c = client();
    let li = start_all(&c, &mut s).await;
    let fi = (li + 1) % 3;
    let mut n = 0;
    let mut write_all = |c: reqwest::Client, s: &[Site]| {
        let urls: Vec<String> = s.iter().map(|x| x.url("/v1/people")).collect();
        let first = n;
        n += 3 * 5;
        async move {
            for i in 0..15 {
                let id = format!("p{}", first + i);
                let body = serde_json::json!({"id": id, "name": "Kept", "role": "faculty"});
                let (st, v) = write_until_final(&c, &urls[i % 3], &id, &body).await;
                assert_eq!(st, 200, "{id} at {}: {v}", urls[i % 3]);
            }
        }
    };
    write_all(c.clone(), &s).await;
    for stepped in [fi, li] {
        let back = serde_json::json!({"action": {"kind": "clock_skew", "skew_ms": -60_000}, "dead_man_ms": 600_000});
        let (st, v) = post(&c, &s[stepped].url("/v1/admin/chaos"), "back", &back).await;
        assert_eq!(st, 200, "{v}");
        write_all(c.clone(), &s).await;
        let clear = serde_json::json!({"action": {"kind": "clear"}});
        let (st, v) = post(&c, &s[stepped].url("/v1/admin/chaos"), "clear", &clear).await;
        assert_eq!(st, 200, "{v}");
    }
    // Every facility has every write final, and no evidence.
    for x in &s {
        until(
            Duration::from_secs(60),
            "the last write at every facility",
            || async {
                let (st, _) = get(&c, &x.url("/v1/people/p44?consistency=stale")).await;
                (st == 200).then_some(())
            },
        )
        .await;
    }
    no_evidence(&c, &s).await;
    for x in s.iter_mut() {
        x.kill();
    }
}
