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
/// same digest and holds every acked assignment.
async fn converged(c: &reqwest::Client, sites: &[&Site], acked: &[(String, String)]) -> String {
    until(Duration::from_secs(90), "convergence", || async {
        let mut digests = Vec::new();
        for s in sites {
            let (d, have) = assignments(c, s).await?;
            if acked.iter().any(|a| !have.contains(a)) {
                return None;
            }
            digests.push(d);
        }
        digests
            .windows(2)
            .all(|w| w[0] == w[1])
            .then(|| digests[0].clone())
    })
    .await
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
    for i in 0..12 {
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
    s[li].start();
    converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;

    // ---- a backup of one facility, restored after more writes: it
    // starts from the backup and catches up from its peers.
    let r = survivors[0];
    let out = run(&["backup", "--config", s[r].config.to_str().unwrap()]);
    assert!(out.starts_with("wrote "), "{out}");
    for i in 10..12 {
        let (st, v) = assign(&c, &s[survivors[1]], i).await;
        assert_eq!(st, 200, "{v}");
        acked.push((format!("b{i}"), format!("p{i}")));
    }
    s[r].kill();
    let out = run(&["restore", "--config", s[r].config.to_str().unwrap()]);
    assert!(out.contains("restored"), "{out}");
    s[r].start();
    converged(&c, &[&s[0], &s[1], &s[2]], &acked).await;

    // `bulwark status` prints the cluster from a node's API.
    let out = run(&["status", "--url", &s[0].url("")]);
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
