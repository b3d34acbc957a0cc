//! The error taxonomy over real processes: each code the README's retry
//! table lists, produced by a request a client could send, and the CLI's
//! answer to it — retried with the same key only where the outcome is
//! undecided (exit 3 with the key, or 0 once a retry lands), refused at
//! once where nothing was applied (exit 2), not allowed (exit 4). A key
//! retried at another facility replays the first answer.
//!
//! Alpha pulls chaos levers; bravo admits one request a second (for
//! OVERLOADED); charlie has chaos off, then no token at all (API_CLOSED).
//! Not produced here: NO_LEADER (the moment between losing a leader and
//! the detector's verdict; `actors/src/raft` tests), UNAVAILABLE (an actor
//! that does not answer) and AUDIT_UNAVAILABLE (a failing trail disk;
//! `src/http/audit.rs` tests) — all three are in the CLI's table test.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use procs::*;
use serde_json::{json, Value};

const READER: &str = "reader-token-for-the-taxonomy-test";

fn add_person(id: &str, name: &str) -> Vec<String> {
    [
        "schedule",
        "add-person",
        "--id",
        id,
        "--name",
        name,
        "--role",
        "faculty",
    ]
    .map(str::to_string)
    .to_vec()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Asserts an error answer's status and code.
#[track_caller]
fn is(answer: (u16, Value), status: u16, code: &str) {
    assert_eq!(
        (answer.0, answer.1["code"].as_str()),
        (status, Some(code)),
        "{}",
        answer.1
    );
}

async fn lever(c: &reqwest::Client, site: &Site, key: &str, action: Value) -> (u16, Value) {
    let body = json!({"action": action, "dead_man_ms": 600_000});
    post(c, &site.url("/v1/admin/chaos"), key, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_code_from_a_real_request_and_the_clients_answer() {
    let root = tempfile::tempdir().unwrap();
    let reader = format!(
        "[[api.tokens]]\nname = \"reader\"\nhash = \"{}\"\nscopes = [\"read\"]\n\n",
        blake3::hash(READER.as_bytes()).to_hex()
    );
    let mut s = sites(root.path(), &["alpha", "bravo", "charlie"], &reader);
    let append = |site: &Site, text: &str| {
        let mut cfg = std::fs::read_to_string(&site.config).unwrap();
        cfg += text;
        std::fs::write(&site.config, cfg).unwrap();
    };
    append(&s[0], "[chaos]\nenabled = true\n\n");
    append(
        &s[1],
        "[flow]\nadmission_rate_per_s = 1\nadmission_burst = 1\nadmission_queue_len = 1\n\n",
    );
    let c = client();
    start_all(&c, &mut s).await;
    let (a, b, ch) = (&s[0], &s[1], &s[2]);
    for (path, body) in [
        (
            "people",
            json!({"id": "p1", "name": "Ann", "role": "faculty"}),
        ),
        (
            "blocks",
            json!({"id": "b1", "day": 3, "start_min": 480, "duration_min": 600, "pool": "clinic", "required": 1}),
        ),
    ] {
        let key = format!("setup-{}", body["id"]);
        let (st, v) = write_until_final(&c, &a.url(&format!("/v1/{path}")), &key, &body).await;
        assert_eq!(st, 200, "{v}");
    }

    // A read that allows a stale fallback but does not need it.
    let (st, v) = get(&c, &a.url("/v1/people/p1?fallback=stale")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["staleness"]["consistency"], "linearizable", "{v}");
    assert!(v["staleness"].get("fallback_from").is_none(), "{v}");

    // Definitely not applied: fix the request.
    let person = |id: &str| json!({"id": id, "name": "Bo", "role": "faculty"});
    let raw = |body: String, ct: &'static str| {
        let c = c.clone();
        let url = a.url("/v1/people");
        async move {
            match c
                .post(url)
                .bearer_auth(TOKEN)
                .header("content-type", ct)
                .header("idempotency-key", "raw")
                .body(body)
                .send()
                .await
            {
                Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
                Err(_) => (0, Value::Null),
            }
        }
    };
    is(
        raw("{\"id\":".into(), "application/json").await,
        400,
        "BAD_REQUEST",
    );
    is(
        raw(person("p9").to_string(), "text/plain").await,
        415,
        "UNSUPPORTED_MEDIA_TYPE",
    );
    is(
        raw(
            format!("{{\"id\":\"{}\"}}", "x".repeat(70_000)),
            "application/json",
        )
        .await,
        413,
        "PAYLOAD_TOO_LARGE",
    );
    is(get(&c, &a.url("/v1/people/nobody")).await, 404, "NOT_FOUND");
    let assign = json!({"person": "ghost", "block": "b1"});
    is(
        post(&c, &a.url("/v1/assignments"), "ghost", &assign).await,
        409,
        "RULE_VIOLATION",
    );
    let (st, v) = post(&c, &a.url("/v1/people"), "k-p2", &person("p2")).await;
    assert_eq!(st, 200, "{v}");
    is(
        post(&c, &a.url("/v1/people"), "k-p2", &person("p3")).await,
        422,
        "KEY_REUSED",
    );
    // The CLI refuses at once, never retrying: a rule (p2 exists) and a
    // key reused for another body.
    for (cmd, key) in [
        (add_person("p2", "Bo"), "k-new"),
        (add_person("p3", "Cy"), "k-p2"),
    ] {
        let mut cmd = cmd;
        cmd.extend(["--key".into(), key.into()]);
        let (code, out, err) = cli(a, TOKEN, &args(&cmd));
        assert_eq!(code, 2, "{cmd:?}: {out}{err}");
        assert!(!err.contains("retrying"), "{err}");
    }

    // Not allowed: another token or scope.
    let (st, _) = match c.get(a.url("/v1/cluster")).send().await {
        Ok(r) => (r.status().as_u16(), ()),
        Err(_) => (0, ()),
    };
    assert_eq!(st, 401);
    let (st, v) = post_raw(
        &c,
        &a.url("/v1/people"),
        Some(READER),
        Some("r"),
        person("p4").to_string(),
    )
    .await;
    is((st, v), 403, "FORBIDDEN");
    let (code, out, err) = cli(a, READER, &args(&add_person("p4", "Di")));
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        err.contains("FORBIDDEN") && !err.contains("retrying"),
        "{err}"
    );
    let (code, out, err) = cli(a, "no-such-token", &args(&add_person("p4", "Di")));
    assert_eq!(code, 4, "{out}{err}");
    is(
        lever(&c, ch, "chaos-off", json!({"kind": "clear"})).await,
        403,
        "CHAOS_DISABLED",
    );

    // Applied: a key retried at another facility replays the first answer.
    let (st, first) = post(&c, &a.url("/v1/people"), "k-p5", &person("p5")).await;
    assert_eq!(st, 200, "{first}");
    let (st, again) = write_until_final(&c, &ch.url("/v1/people"), "k-p5", &person("p5")).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(
        (&again["index"], &again["height"], &again["duplicate"]),
        (&first["index"], &first["height"], &json!(true)),
        "first {first}, again {again}"
    );
    let mut cmd = add_person("p5", "Bo");
    cmd.extend(["--key".into(), "k-p5".into()]);
    let (code, out, err) = cli(ch, TOKEN, &args(&cmd));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("already applied under this key"), "{out}");

    // Overloaded (bravo admits one a second, one waiting; the cluster view is an
    // operator read and skips admission): 429 with Retry-After, and the
    // CLI waits and retries with the same key.
    let overloaded = until(Duration::from_secs(30), "a 429", || async {
        // Six at once: one admitted, one queued, the rest refused.
        let mut tries = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (c, url) = (c.clone(), b.url("/v1/people/p1"));
            tries.spawn(async move {
                let r = c.get(url).bearer_auth(TOKEN).send().await.ok()?;
                let after = r.headers().get("retry-after").is_some();
                let st = r.status().as_u16();
                let v: Value = r.json().await.unwrap_or(Value::Null);
                (st == 429).then_some((st, v, after))
            });
        }
        let mut refused = None;
        while let Some(r) = tries.join_next().await {
            refused = refused.or(r.ok().flatten());
        }
        refused
    })
    .await;
    assert!(overloaded.2, "no Retry-After");
    is((overloaded.0, overloaded.1), 429, "OVERLOADED");
    let (code, out, err) = cli(b, TOKEN, &args(&add_person("p6", "Ed")));
    assert_eq!(code, 0, "{out}{err}");
    if err.contains("429") {
        assert!(err.contains("retrying with the same key"), "{err}");
    }

    // Undecided: alpha's every message held 3 s, each try given 300 ms.
    let (st, v) = lever(
        &c,
        a,
        "slow",
        json!({"kind": "fault_rule", "rule": {"Delay": {
            "from": {"OneOf": ["alpha"]}, "to": "Any", "delay_ms": 3000}}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let timed = async {
        match c
            .post(a.url("/v1/people"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", "k-p7")
            .header("bulwark-timeout-ms", "300")
            .json(&person("p7"))
            .send()
            .await
        {
            Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    };
    is(timed.await, 503, "TIMED_OUT");
    let mut cmd = add_person("p8", "Fay");
    cmd.extend([
        "--key".into(),
        "k-p8".into(),
        "--timeout-ms".into(),
        "300".into(),
    ]);
    let (code, out, err) = cli(a, TOKEN, &args(&cmd));
    assert!(
        err.contains("answer 503 TIMED_OUT: retrying with the same key"),
        "{err}"
    );
    // Either a retry landed (0), or the key to run again with (3).
    match code {
        0 => {}
        3 => assert!(err.contains("--key k-p8"), "{err}"),
        _ => panic!("exit {code}: {out}{err}"),
    }

    // Partitioned: alpha cut off from both; CP work there is refused, and
    // the CLI does not retry it.
    let (st, v) = lever(&c, a, "clear-slow", json!({"kind": "clear"})).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = lever(
        &c,
        a,
        "cut",
        json!({"kind": "fault_rule", "rule": {"Partition": {
            "side_a": ["alpha"], "side_b": ["bravo", "charlie"], "one_way": false}}}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    until(Duration::from_secs(60), "alpha isolated", || async {
        let (st, v) = get(&c, &a.url("/v1/cluster")).await;
        (st == 200 && v["partition"] == "ISOLATED").then_some(())
    })
    .await;
    is(
        post(
            &c,
            &a.url("/v1/approvals"),
            "approve",
            &json!({"through_day": 3}),
        )
        .await,
        503,
        "PARTITIONED",
    );
    is(
        get(&c, &a.url("/v1/schedule?consistency=linearizable")).await,
        503,
        "PARTITIONED",
    );
    // Unless the client takes a stale answer instead: flagged.
    let (st, v) = get(&c, &a.url("/v1/people/p1?fallback=stale")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (
            &v["staleness"]["consistency"],
            &v["staleness"]["fallback_from"]
        ),
        (&json!("stale"), &json!("PARTITIONED")),
        "{v}"
    );
    is(
        get(&c, &a.url("/v1/people/p1?fallback=cache")).await,
        400,
        "BAD_REQUEST",
    );
    let (code, out, err) = cli(a, TOKEN, &["schedule", "approve", "--through-day", "3"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("PARTITIONED") && !err.contains("retrying"),
        "{err}"
    );

    // Healed: the undecided key applies once.
    let (st, v) = lever(&c, a, "heal", json!({"kind": "clear"})).await;
    assert_eq!(st, 200, "{v}");
    let (code, out, err) = until(Duration::from_secs(60), "p8 applied", || {
        let r = cli(a, TOKEN, &args(&cmd));
        async move { (r.0 == 0).then_some(r) }
    })
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (st, v) = get(&c, &a.url("/v1/people/p8?consistency=linearizable")).await;
    assert_eq!(st, 200, "{v}");

    // No token configured at all: the API is closed, not open.
    s[2].kill();
    let cfg = std::fs::read_to_string(&s[2].config).unwrap();
    let closed: String = cfg
        .lines()
        .filter(|l| !l.starts_with("token =") && !l.contains("[[api.tokens]]"))
        .filter(|l| {
            !l.starts_with("name =") && !l.starts_with("hash =") && !l.starts_with("scopes =")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&s[2].config, closed).unwrap();
    s[2].start();
    let answer = until(Duration::from_secs(60), "charlie answering", || async {
        let (st, v) = get(&c, &s[2].url("/v1/cluster")).await;
        (st != 0).then_some((st, v))
    })
    .await;
    is(answer, 403, "API_CLOSED");
    for x in s.iter_mut() {
        x.kill();
    }
}
