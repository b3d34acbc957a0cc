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
    // Under load charlie may take that write before its liveness is
    // asked, or miss it: each look that finds it live sends one more
    // write, so its RaftPeer is soon asleep in one again.
    let n = std::sync::atomic::AtomicU32::new(1);
    let (_, body) = until(Duration::from_secs(90), "charlie not live", || async {
        let (st, b) = live(&s[2]).await;
        if st == 503 {
            return Some((st, b));
        }
        let k = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = serde_json::json!({"id": format!("p1-{k}"), "name": "Ann", "role": "faculty"});
        post(&c, &s[0].url("/v1/people"), &format!("p1-{k}"), &body).await;
        None
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

/// The schedule's people and blocks (with who is on each) at `x`, by a
/// linearizable read: every id and its JSON, by id.
async fn content(
    c: &reqwest::Client,
    x: &Site,
) -> Option<std::collections::BTreeMap<String, String>> {
    let (st, v) = get(c, &x.url("/v1/schedule?consistency=linearizable")).await;
    if st != 200 {
        return None;
    }
    let mut out = std::collections::BTreeMap::new();
    for kind in ["people", "blocks"] {
        for item in v[kind].as_array()? {
            let id = item["id"].as_str()?;
            out.insert(format!("{kind}/{id}"), item.to_string());
        }
    }
    Some(out)
}

/// A live experiment cleans up after itself. `byzantine.toml` (a
/// follower's validator signs two votes per height) runs through `bulwark
/// chaos run` against four real facilities holding a schedule, while a
/// client writes people of its own. Afterwards every facility holds the
/// schedule it held before plus the client's writes and nothing else (no
/// `chaos:` id: the run's namespace was dropped through consensus); the
/// liar's evidence is there, each piece marked as the drill's, and every
/// facility still trusts every other fully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_experiment_leaves_the_schedule_and_trust_as_they_were() {
    use serde_json::json;
    use std::time::Duration;
    let root = tempfile::tempdir().unwrap();
    let names = ["alpha", "bravo", "charlie", "delta"];
    let mut s = sites(
        root.path(),
        &names,
        "[backup]\nevery_s = 0\n\n[chaos]\nenabled = true\n",
    );
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    // A schedule: 60 people, 30 blocks, 30 assignments.
    for i in 0..60 {
        let body = json!({"id": format!("r{i}"), "name": format!("Resident {i}"),
            "role": "resident", "pgy": 1 + i % 3});
        let (st, v) =
            write_until_final(&c, &s[i % 4].url("/v1/people"), &format!("r{i}"), &body).await;
        assert_eq!(st, 200, "{v}");
    }
    for i in 0..30 {
        let body = json!({"id": format!("blk{i}"), "day": i, "start_min": 480,
            "duration_min": 600, "pool": "icu", "required": 2});
        let (st, v) =
            write_until_final(&c, &s[i % 4].url("/v1/blocks"), &format!("blk{i}"), &body).await;
        assert_eq!(st, 200, "{v}");
        let body = json!({"person": format!("r{i}"), "block": format!("blk{i}")});
        let url = s[(i + 1) % 4].url("/v1/assignments");
        let (st, v) = write_until_final(&c, &url, &format!("a{i}"), &body).await;
        assert_eq!(st, 200, "{v}");
    }
    // What an interrupted experiment would leave behind, removed by hand.
    for (path, body) in [
        (
            "/v1/people",
            json!({"id": "chaos:old:p", "name": "Probe", "role": "faculty"}),
        ),
        (
            "/v1/blocks",
            json!({"id": "chaos:old:b", "day": 36500, "start_min": 0,
            "duration_min": 60, "pool": "clinic", "required": 1}),
        ),
        (
            "/v1/assignments",
            json!({"person": "chaos:old:p", "block": "chaos:old:b"}),
        ),
    ] {
        let (st, v) = write_until_final(&c, &s[1].url(path), path, &body).await;
        assert_eq!(st, 200, "{v}");
    }
    let (code, out, err) = cli(&s[2], TOKEN, &["chaos", "clean"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("chaos:* dropped (1 steps)"), "{out}");
    let before = until(Duration::from_secs(30), "the schedule", || {
        content(&c, &s[0])
    })
    .await;
    assert_eq!(
        before.len(),
        90,
        "{:?}",
        before
            .keys()
            .filter(|k| k.contains("chaos"))
            .collect::<Vec<_>>()
    );

    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/byzantine.toml");
    let mut args: Vec<String> = ["chaos", "run", file, "--token", TOKEN]
        .iter()
        .map(|a| a.to_string())
        .collect();
    for x in &s {
        args.extend(["--api".to_string(), x.url("")]);
    }
    let run = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output());
    // The client's own writes while the experiment runs.
    let mut mine = Vec::new();
    let mut acked = Vec::new();
    for k in 0..20 {
        let id = format!("client{k}");
        let body = json!({"id": id, "name": format!("Client {k}"), "role": "faculty"});
        let (st, _) = post(&c, &s[k % 4].url("/v1/people"), &id, &body).await;
        mine.push(format!("people/{id}"));
        if st == 200 {
            acked.push(format!("people/{id}"));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let run = run.await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        matches!(run.status.code(), Some(0) | Some(2)),
        "{:?}\n{text}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(text.contains("drill declared on"), "{text}");
    assert!(
        text.contains("namespace chaos:") && text.contains("dropped ("),
        "{text}"
    );
    assert!(!acked.is_empty(), "the client's writes went through");

    for x in &s {
        let after = until(Duration::from_secs(30), "the schedule", || content(&c, x)).await;
        let chaos: Vec<&String> = after.keys().filter(|k| k.contains("/chaos:")).collect();
        assert!(chaos.is_empty(), "{}: the experiment left {chaos:?}", x.id);
        for a in &acked {
            assert!(after.contains_key(a), "{}: acknowledged {a} missing", x.id);
        }
        let mut theirs = after.clone();
        theirs.retain(|k, _| !mine.contains(k));
        assert_eq!(theirs, before, "{}: the schedule changed", x.id);
    }
    // The liar was caught, and its evidence is the drill's.
    let mut caught = 0;
    let mut witness = None;
    for (i, x) in s.iter().enumerate() {
        let (st, v) = get(&c, &x.url("/v1/evidence")).await;
        assert_eq!(st, 200, "{v}");
        for e in v.as_array().unwrap() {
            assert_eq!(e["drill"], json!(true), "{}: {e}", x.id);
            if e["code"] == "EQUIVOCATION" {
                caught += 1;
                witness = Some(i);
            }
        }
        let (st, v) = get(&c, &x.url("/v1/trust")).await;
        assert_eq!(st, 200, "{v}");
        let trust = v.as_object().unwrap();
        assert_eq!(trust.len(), 4, "{v}");
        for (f, t) in trust {
            assert_eq!(t.as_f64(), Some(1.0), "{} trusts {f} {t}", x.id);
        }
    }
    assert!(caught > 0, "no facility recorded the equivocation");
    // The liar holds none against itself: ask one that saw it lie.
    let (code, out, err) = cli(&s[witness.unwrap()], TOKEN, &["evidence"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("EQUIVOCATION") && out.contains("(drill: costs no trust)"),
        "{out}"
    );
    eprintln!("{caught} equivocation records, all the drill's\n{text}");
}
