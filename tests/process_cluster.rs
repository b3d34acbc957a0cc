//! Three real `bulwark node` processes on loopback, started from their
//! config files and driven only over HTTP: writes and reads, bad input
//! refused with nothing stored, `kill -9` of the leader, writes going on,
//! the killed node restarting and catching up, a backup restored, and no
//! acknowledged write lost (checked against the client's own record).

#[path = "support/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use procs::*;
use serde_json::{json, Value};

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Waits until every running site answers a linearizable read with the
/// same digest and holds every acked assignment; on timeout, panics with
/// what each site last answered and the tail of its log.
async fn converged(c: &reqwest::Client, sites: &[&Site], acked: &[(String, String)]) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mut seen = Vec::new();
        for s in sites {
            seen.push((s.id.clone(), assignments(c, s).await));
        }
        let complete = seen.iter().all(|(_, a)| {
            a.as_ref()
                .is_some_and(|(_, have)| acked.iter().all(|x| have.contains(x)))
        });
        let digests: Vec<_> = seen
            .iter()
            .filter_map(|(_, a)| a.as_ref().map(|a| &a.0))
            .collect();
        if complete && digests.windows(2).all(|w| w[0] == w[1]) {
            return digests[0].clone();
        }
        if Instant::now() > deadline {
            let mut msg = String::new();
            for (s, (id, a)) in sites.iter().zip(&seen) {
                let log = s.log();
                let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                msg += &format!(
                    "{id}: {:?}\n  log (newest first): {tail}\n",
                    a.as_ref().map(|a| (&a.0, a.1.len()))
                );
            }
            panic!("no convergence on {} acked writes:\n{msg}", acked.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A request that must be refused, and how.
struct Bad {
    what: &'static str,
    token: Option<&'static str>,
    key: Option<&'static str>,
    body: String,
    status: u16,
    code: &'static str,
    field: Option<&'static str>,
}

async fn assign(c: &reqwest::Client, site: &Site, i: usize) -> (u16, Value) {
    write_until_final(
        c,
        &site.url("/v1/assignments"),
        &format!("assign-{i}"),
        &json!({"person": format!("p{i}"), "block": format!("b{i}")}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_over_http_lose_no_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    let lead = leader(&c, &s[0]).await;
    eprintln!("leader {lead}");

    // Setup through a follower or the leader alike: each write is acked
    // by the facility the client spoke to.
    for i in 0..13 {
        let (person, block) = setup_bodies(i);
        let site = &s[i % 3];
        let (st, v) =
            write_until_final(&c, &site.url("/v1/people"), &format!("person-{i}"), &person).await;
        assert_eq!(st, 200, "{v}");
        let (st, v) =
            write_until_final(&c, &site.url("/v1/blocks"), &format!("block-{i}"), &block).await;
        assert_eq!(
            (st, v["effect"].as_str()),
            (200, Some("block_added")),
            "{v}"
        );
    }
    let mut acked: Vec<(String, String)> = Vec::new();
    for i in 0..6 {
        let (st, v) = assign(&c, &s[i % 3], i).await;
        assert_eq!((st, v["status"].as_str()), (200, Some("committed")), "{v}");
        acked.push((format!("b{i}"), format!("p{i}")));
    }
    // A rule violation is 409 naming the rule: p0 is on b0 already, and
    // b0 takes one person.
    let (st, v) = write_until_final(
        &c,
        &s[1].url("/v1/assignments"),
        "full",
        &json!({"person": "p1", "block": "b0"}),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["code"], "RULE_VIOLATION");
    assert_eq!(v["rule"], "BLOCK_FULL");

    // ---- bad input: refused with a clear error, nothing stored.
    let before = converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;
    let url = s[1].url("/v1/assignments");
    let good = json!({"person": "p6", "block": "b6"}).to_string();
    let bad = |what, token, key, body: String, status, code, field| Bad {
        what,
        token,
        key,
        body,
        status,
        code,
        field,
    };
    let t = Some(TOKEN);
    let cases = [
        bad(
            "malformed",
            t,
            Some("bad-1"),
            "{\"person\": ".into(),
            400,
            "BAD_REQUEST",
            Some("person"),
        ),
        bad(
            "not json",
            t,
            Some("bad-0"),
            "assign p6".into(),
            400,
            "BAD_REQUEST",
            Some("body"),
        ),
        bad(
            "unknown field",
            t,
            Some("bad-2"),
            json!({"person": "p6", "block": "b6", "priority": 1}).to_string(),
            400,
            "BAD_REQUEST",
            Some("priority"),
        ),
        bad(
            "missing field",
            t,
            Some("bad-3"),
            json!({"person": "p6"}).to_string(),
            400,
            "BAD_REQUEST",
            Some("block"),
        ),
        bad(
            "bad id",
            t,
            Some("bad-4"),
            json!({"person": "p 6!", "block": "b6"}).to_string(),
            400,
            "BAD_REQUEST",
            Some("person"),
        ),
        bad(
            "oversized",
            t,
            Some("bad-5"),
            json!({"person": "x".repeat(70_000), "block": "b6"}).to_string(),
            413,
            "PAYLOAD_TOO_LARGE",
            None,
        ),
        bad(
            "no token",
            None,
            Some("bad-6"),
            good.clone(),
            401,
            "UNAUTHORIZED",
            None,
        ),
        bad(
            "bad token",
            Some("not-the-token-at-all"),
            Some("bad-7"),
            good.clone(),
            401,
            "UNAUTHORIZED",
            None,
        ),
        bad(
            "no key",
            t,
            None,
            good.clone(),
            400,
            "BAD_REQUEST",
            Some("Idempotency-Key"),
        ),
    ];
    for b in cases {
        let (st, v) = post_raw(&c, &url, b.token, b.key, b.body).await;
        assert_eq!(st, b.status, "{}: {v}", b.what);
        assert_eq!(v["code"], b.code, "{}: {v}", b.what);
        if let Some(f) = b.field {
            assert_eq!(v["field"], f, "{}: {v}", b.what);
        }
    }
    // A replayed key with another body: 422, and the first answer stands.
    let (st, first) = post(
        &c,
        &s[0].url("/v1/assignments"),
        "assign-0",
        &json!({"person": "p0", "block": "b0"}),
    )
    .await;
    assert_eq!(st, 200, "{first}");
    let (st, v) = post(
        &c,
        &s[0].url("/v1/assignments"),
        "assign-0",
        &json!({"person": "p7", "block": "b7"}),
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (422, Some("KEY_REUSED")), "{v}");
    let after = converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;
    assert_eq!(before, after, "bad input changed the schedule");
    let (_, have) = assignments(&c, &s[0]).await.unwrap();
    assert!(!have.contains(&("b7".into(), "p7".into())));
    assert!(!have.contains(&("b6".into(), "p6".into())));

    // ---- reads: the ledger with its certificate, evidence, staleness,
    // the cluster view, the OpenAPI document.
    let (st, v) = until(Duration::from_secs(30), "height 1 final", || async {
        let (st, v) = get(&c, &s[2].url("/v1/ledger/1")).await;
        (st == 200).then_some((st, v))
    })
    .await;
    assert_eq!((st, v["verified"].as_bool()), (200, Some(true)), "{v}");
    assert!(v["votes"].as_array().unwrap().len() >= 2, "{v}");
    assert_eq!(v["op"], "add_person");
    let (st, v) = get(&c, &s[2].url("/v1/ledger/1000000")).await;
    assert_eq!((st, v["code"].as_str()), (404, Some("NOT_FOUND")), "{v}");
    let (st, v) = get(&c, &s[2].url("/v1/ledger/one")).await;
    assert_eq!((st, v["field"].as_str()), (400, Some("height")), "{v}");
    let (st, v) = get(&c, &s[2].url("/v1/evidence")).await;
    assert_eq!((st, v.as_array().map(Vec::len)), (200, Some(0)), "{v}");
    let (st, v) = get(&c, &s[2].url("/v1/schedule?consistency=stale")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["staleness"]["consistency"], "stale");
    assert_eq!(v["staleness"]["partition"], "CONNECTED");
    let (st, v) = get(&c, &s[2].url("/v1/schedule?consistency=eventual")).await;
    assert_eq!((st, v["field"].as_str()), (400, Some("consistency")), "{v}");
    let (st, v) = get(&c, &s[2].url("/v1/cluster")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["peers"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["bulkheads"].as_array().unwrap().len(), 4, "{v}");
    let (st, v) = get(&c, &s[2].url("/v1/openapi.json")).await;
    assert_eq!(st, 200);
    assert!(v["paths"]["/v1/swaps"]["post"].is_object(), "{v}");

    // ---- kill -9 the leader; writes continue at the survivors.
    let li = NAMES.iter().position(|n| *n == lead).unwrap();
    s[li].kill();
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let mut rto = None;
    for i in 6..10 {
        let (st, v) = assign(&c, &s[survivors[i % 2]], i).await;
        assert_eq!((st, v["status"].as_str()), (200, Some("committed")), "{v}");
        rto.get_or_insert(killed.elapsed());
        acked.push((format!("b{i}"), format!("p{i}")));
    }
    eprintln!(
        "RTO (leader kill -9 -> first write accepted): {:?}",
        rto.unwrap()
    );
    let new_leader = leader(&c, &s[survivors[0]]).await;
    assert_ne!(new_leader, lead);

    // ---- the killed node restarts from its redb file and catches up.
    eprintln!("restarting {}", s[li].id);
    s[li].start();
    converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;

    // ---- disaster recovery from a consistent cluster backup: one
    // `bulwark backup` commits a checkpoint, and every facility backs up
    // at its index, even one that was stopped (SIGSTOP) while it committed
    // and applies it later, in one batch with the writes after it. Two
    // more writes, then all stopped and each restored at that index. The
    // restored cluster elects, serves every write acked before the
    // checkpoint, and has lost the two after it: the RPO is the writes
    // since the checkpoint.
    converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;
    let (_, mut before_dr) = assignments(&c, &s[0]).await.unwrap();
    before_dr.sort();
    // Asked at the leader; a follower is paused (a paused leader would
    // only delay the checkpoint until another is elected).
    let now_leading = leader(&c, &s[0]).await;
    let asked = NAMES.iter().position(|n| *n == now_leading).unwrap();
    let paused = (asked + 1) % 3;
    s[paused].signal("STOP");
    let out = run(&["backup", "--config", s[asked].config.to_str().unwrap()]);
    assert!(out.starts_with("checkpoint "), "{out}");
    let index: u64 = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut after_backup = Vec::new();
    for i in 10..12 {
        let (st, v) = assign(&c, &s[asked], i).await;
        assert_eq!(st, 200, "{v}");
        after_backup.push((format!("b{i}"), format!("p{i}")));
    }
    s[paused].signal("CONT");
    let suffix = format!("-{index:012}.redb");
    for x in s.iter() {
        let dir = x.dir.join("data/backups");
        until(
            Duration::from_secs(60),
            "every facility's backup of the checkpoint",
            || {
                let found = std::fs::read_dir(&dir).ok().and_then(|d| {
                    d.filter_map(|e| e.ok())
                        .find(|e| e.file_name().to_string_lossy().ends_with(&suffix))
                });
                async move { found.map(|_| ()) }
            },
        )
        .await;
    }
    for x in s.iter_mut() {
        x.kill();
    }
    let refused = std::process::Command::new(BIN)
        .args(["restore", "--config", s[0].config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a restore that does not say which (--whole-cluster) is refused"
    );
    for x in s.iter() {
        let out = run(&[
            "restore",
            "--config",
            x.config.to_str().unwrap(),
            "--index",
            &index.to_string(),
            "--whole-cluster",
        ]);
        assert!(
            out.contains(&format!("its log ends at index {index} ")),
            "{out}"
        );
    }
    for x in s.iter_mut() {
        x.start();
    }
    // Every facility's digest (which covers the log index and the ledger
    // chain) agrees, and the schedule is the one before the checkpoint.
    converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;
    let (_, mut restored) = assignments(&c, &s[0]).await.unwrap();
    restored.sort();
    assert_eq!(
        restored, before_dr,
        "the restored cluster is the backed-up one"
    );
    let (_, have) = assignments(&c, &s[0]).await.unwrap();
    let lost = after_backup.iter().filter(|a| !have.contains(a)).count();
    eprintln!("full-cluster restore: RPO = {lost} acked writes (made after the checkpoint)");
    assert_eq!(lost, 2);
    // Writes go on after the restore.
    let (st, v) = assign(&c, &s[0], 12).await;
    assert_eq!(st, 200, "{v}");
    acked.push(("b12".into(), "p12".into()));

    // `bulwark status` prints the cluster from a node's API.
    let out = run(&["status", "--url", &s[0].url(""), "--token", TOKEN]);
    for n in NAMES {
        assert!(out.contains(n), "{out}");
    }
    assert!(out.contains("leader"), "{out}");

    // Every acked write is on every facility (checked in `converged`), and
    // nothing that was refused is.
    let (_, have) = assignments(&c, &s[0]).await.unwrap();
    let mut have = have;
    have.sort();
    let mut want = acked.clone();
    want.sort();
    assert_eq!(have, want);
    for x in s.iter() {
        assert!(!x.log().contains("panicked"), "{}: {}", x.id, x.log());
    }
}

/// RTO and RPO over repeated leader kills (`-- --ignored --nocapture`;
/// the figures in docs/BENCHMARKS.md come from this). Each round: a client
/// writes continuously at a follower; the leader process is killed with
/// SIGKILL; RTO is the time from the kill until the next write is
/// accepted; the killed node restarts and catches up. RPO counts acked
/// writes missing at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: BULWARK_RTO_ROUNDS rounds (default 10)"]
async fn rto_and_rpo_over_leader_kills() {
    let rounds: usize = std::env::var("BULWARK_RTO_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    let blocks = rounds * 4 + 4;
    for i in 0..blocks {
        let (person, block) = setup_bodies(i);
        assert_eq!(
            write_until_final(&c, &s[0].url("/v1/people"), &format!("person-{i}"), &person)
                .await
                .0,
            200
        );
        assert_eq!(
            write_until_final(&c, &s[0].url("/v1/blocks"), &format!("block-{i}"), &block)
                .await
                .0,
            200
        );
    }
    let mut acked = Vec::new();
    let mut rtos = Vec::new();
    let mut next = 0;
    for round in 0..rounds {
        let lead = leader(&c, &s[0]).await;
        let li = NAMES.iter().position(|n| *n == lead).unwrap();
        let fi = (li + 1) % 3;
        // One write before the kill, acked.
        let (st, _) = assign(&c, &s[fi], next).await;
        assert_eq!(st, 200);
        acked.push((format!("b{next}"), format!("p{next}")));
        next += 1;
        s[li].kill();
        let killed = Instant::now();
        let (st, v) = assign(&c, &s[fi], next).await;
        assert_eq!(st, 200, "{v}");
        let rto = killed.elapsed();
        acked.push((format!("b{next}"), format!("p{next}")));
        next += 1;
        rtos.push(rto);
        eprintln!("round {round}: leader {lead} killed, writes accepted again after {rto:?}");
        s[li].start();
        converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;
    }
    let (_, have) = assignments(&c, &s[0]).await.unwrap();
    let lost = acked.iter().filter(|a| !have.contains(a)).count();
    rtos.sort();
    let ms = |d: Duration| d.as_millis();
    eprintln!(
        "RTO over {rounds} leader kills: min {} ms, median {} ms, max {} ms; RPO: {lost} of {} acked writes lost",
        ms(rtos[0]),
        ms(rtos[rtos.len() / 2]),
        ms(rtos[rtos.len() - 1]),
        acked.len()
    );
    assert_eq!(lost, 0);
}

/// Restart time over repeated `kill -9` of a follower
/// (`-- --ignored --nocapture`; the figures in docs/BENCHMARKS.md come
/// from this). Each round: a follower is killed with SIGKILL, started
/// again at once, and timed from its process start to its first
/// successful linearizable read and its first acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: BULWARK_RESTART_ROUNDS rounds (default 5)"]
async fn a_killed_follower_serves_again_soon_after_its_restart() {
    let rounds: usize = std::env::var("BULWARK_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(root.path(), &NAMES, "[backup]\nevery_s = 0\n");
    for x in s.iter_mut() {
        x.start();
    }
    let c = client();
    leader(&c, &s[0]).await;
    for i in 0..rounds + 2 {
        let (person, block) = setup_bodies(i);
        let url = |p| s[0].url(p);
        assert_eq!(
            write_until_final(&c, &url("/v1/people"), &format!("person-{i}"), &person)
                .await
                .0,
            200
        );
        assert_eq!(
            write_until_final(&c, &url("/v1/blocks"), &format!("block-{i}"), &block)
                .await
                .0,
            200
        );
    }
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for round in 0..rounds {
        let lead = leader(&c, &s[0]).await;
        let li = NAMES.iter().position(|n| *n == lead).unwrap();
        let fi = (li + 1 + round % 2) % 3;
        s[fi].kill();
        s[fi].start();
        let started = Instant::now();
        until(Duration::from_secs(30), "a linearizable read", || async {
            let (st, _) = get(&c, &s[fi].url("/v1/schedule?consistency=linearizable")).await;
            (st == 200).then_some(())
        })
        .await;
        let read = started.elapsed();
        let (st, v) = assign(&c, &s[fi], round).await;
        assert_eq!(st, 200, "{v}");
        let write = started.elapsed();
        eprintln!("round {round}: {} restarted; first read after {read:?}, first write acked after {write:?}", s[fi].id);
        reads.push(read);
        writes.push(write);
    }
    reads.sort();
    writes.sort();
    let ms = |d: &Duration| d.as_millis();
    eprintln!(
        "restart -> first linearizable read over {rounds} kill -9 rounds: min {} ms, median {} ms, max {} ms; first write: min {} ms, median {} ms, max {} ms",
        ms(&reads[0]),
        ms(&reads[rounds / 2]),
        ms(&reads[rounds - 1]),
        ms(&writes[0]),
        ms(&writes[rounds / 2]),
        ms(&writes[rounds - 1]),
    );
}
