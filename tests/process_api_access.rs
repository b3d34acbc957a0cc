//! Who may call what, over real `bulwark node` processes: every `/v1`
//! route needs a token (reads included), scopes are enforced and named,
//! every write and refusal by a token holder lands in the durable audit
//! trail with the token's name; the API speaks TLS when configured, refuses a plain
//! listener off loopback, and keeps serving past 2,000 idle or half-sent
//! connections.

#[path = "support/procs.rs"]
mod procs;

use std::time::Duration;

use bulwark::http::auth::hash_token;
use procs::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const READER: &str = "reader-token-000000000000000000";
const SCHEDULER: &str = "scheduler-token-00000000000000";
const PROM: &str = "prometheus-token-0000000000000";
const OPERATOR: &str = "operator-token-000000000000000";

fn tokens_config() -> String {
    let mut out = String::new();
    for (name, token, scopes) in [
        ("reader", READER, r#"["read"]"#),
        ("scheduler", SCHEDULER, r#"["read", "schedule"]"#),
        ("prometheus", PROM, r#"["metrics"]"#),
        ("ops", OPERATOR, r#"["operator"]"#),
    ] {
        out += &format!(
            "[[api.tokens]]\nname = \"{name}\"\nhash = \"{}\"\nscopes = {scopes}\n\n",
            hash_token(token)
        );
    }
    out
}

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut r = c.request(method, url);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(k) = key {
        r = r.header("idempotency-key", k);
    }
    if let Some(b) = body {
        r = r.json(b);
    }
    match r.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Every route of the OpenAPI document, with its parameters filled in.
async fn every_route(c: &reqwest::Client, site: &Site) -> Vec<(reqwest::Method, String)> {
    let doc: Value = c
        .get(site.url("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let path = path.replace("{id}", "x").replace("{height}", "1");
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase().parse().unwrap(), path.clone()));
        }
    }
    for p in ["/v1/status", "/v1/heatmap", "/v1/heatmap.svg", "/metrics"] {
        out.push((reqwest::Method::GET, p.to_string()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_scopes_and_the_audit_trail_over_real_processes() {
    let root = tempfile::tempdir().unwrap();
    let mut s = sites(
        root.path(),
        &["alpha", "bravo", "charlie"],
        &tokens_config(),
    );
    let c = client();
    let lead = start_all(&c, &mut s).await;
    let url = |p: &str| s[lead].url(p);
    let (person, block) = setup_bodies(0);

    // No token: 401 on every /v1 route (reads included) and /metrics.
    let routes = every_route(&c, &s[lead]).await;
    assert!(routes.len() > 20, "{routes:?}");
    for (m, p) in &routes {
        let (st, v) = call(&c, m.clone(), &url(p), None, Some("k"), Some(&json!({}))).await;
        assert_eq!(st, 401, "{m} {p}: {v}");
        assert_eq!(v["code"], "UNAUTHORIZED", "{m} {p}");
        let (st, _) = call(
            &c,
            m.clone(),
            &url(p),
            Some("no-such-token-0000000"),
            None,
            None,
        )
        .await;
        assert_eq!(st, 401, "{m} {p} with an unknown token");
    }
    // The open routes stay open.
    for p in ["/health/live", "/v1/openapi.json", "/"] {
        let r = c.get(url(p)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{p}");
    }

    // A read token reads and cannot write.
    let (st, v) = call(
        &c,
        reqwest::Method::GET,
        &url("/v1/schedule"),
        Some(READER),
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(
        &c,
        reqwest::Method::POST,
        &url("/v1/people"),
        Some(READER),
        Some("r1"),
        Some(&person),
    )
    .await;
    assert_eq!((st, v["code"].as_str()), (403, Some("FORBIDDEN")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("\"schedule\""),
        "{v}"
    );

    // A schedule token writes, and cannot approve, take leave in a batch,
    // pull a chaos lever or take a backup.
    let (st, v) = call(
        &c,
        reqwest::Method::POST,
        &url("/v1/people"),
        Some(SCHEDULER),
        Some("s1"),
        Some(&person),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = call(
        &c,
        reqwest::Method::POST,
        &url("/v1/blocks"),
        Some(SCHEDULER),
        Some("s2"),
        Some(&block),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for (p, body, scope) in [
        ("/v1/approvals", json!({"through_day": 3}), "approve"),
        ("/v1/admin/chaos", json!({}), "chaos"),
        ("/v1/admin/backup", json!({}), "operator"),
        (
            "/v1/batch",
            json!({"commands": [
                {"op": "assign", "person": "p0", "block": "b0"},
                {"op": "leave", "person": "p0", "from_day": 10, "to_day": 12},
            ]}),
            "approve",
        ),
    ] {
        let (st, v) = call(
            &c,
            reqwest::Method::POST,
            &url(p),
            Some(SCHEDULER),
            Some("s3"),
            Some(&body),
        )
        .await;
        assert_eq!(st, 403, "{p}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains(&format!("\"{scope}\"")),
            "{p}: {v}"
        );
    }
    // Nothing of the refused batch was applied.
    let (_, v) = call(
        &c,
        reqwest::Method::GET,
        &url("/v1/people/p0"),
        Some(READER),
        None,
        None,
    )
    .await;
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(0), "{v}");
    assert!(v["person"]["leave_days"].is_null(), "{v}");

    // The metrics token scrapes and reads nothing else.
    let r = c
        .get(url("/metrics"))
        .bearer_auth(PROM)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (st, _) = call(
        &c,
        reqwest::Method::GET,
        &url("/v1/schedule"),
        Some(PROM),
        None,
        None,
    )
    .await;
    assert_eq!(st, 403);

    // The trail: the operator reads it; each write and refusal is there
    // with its token's name, key and outcome.
    let (st, v) = call(
        &c,
        reqwest::Method::GET,
        &url("/v1/audit?limit=1000"),
        Some(READER),
        None,
        None,
    )
    .await;
    assert_eq!(st, 403, "a read token cannot read the audit trail: {v}");
    let trail = |v: &Value| -> Vec<(String, String, String, Option<String>, u64)> {
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["who"].as_str().unwrap().to_string(),
                    r["method"].as_str().unwrap().to_string(),
                    r["path"].as_str().unwrap().to_string(),
                    r["idempotency_key"].as_str().map(str::to_string),
                    r["status"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let (st, v) = call(
        &c,
        reqwest::Method::GET,
        &url("/v1/audit?limit=1000"),
        Some(OPERATOR),
        None,
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let before = trail(&v);
    let has = |t: &[(String, String, String, Option<String>, u64)],
               who: &str,
               path: &str,
               key: &str,
               status: u64| {
        t.iter().any(|r| {
            r.0 == who
                && r.1 == "POST"
                && r.2 == path
                && r.3.as_deref() == Some(key)
                && r.4 == status
        })
    };
    assert!(
        has(&before, "scheduler", "/v1/people", "s1", 200),
        "{before:?}"
    );
    assert!(
        has(&before, "scheduler", "/v1/blocks", "s2", 200),
        "{before:?}"
    );
    assert!(
        has(&before, "reader", "/v1/people", "r1", 403),
        "{before:?}"
    );
    assert!(
        has(&before, "scheduler", "/v1/approvals", "s3", 403),
        "{before:?}"
    );
    assert!(
        !before.iter().any(|r| r.4 == 401),
        "requests without a valid token are counted, not recorded"
    );
    assert!(
        !before.iter().any(|r| r.2 == "/v1/schedule"),
        "plain reads are not recorded"
    );

    // The trail is durable: kill -9 the leader's process and restart it.
    s[lead].kill();
    s[lead].start();
    let v = until(
        Duration::from_secs(60),
        "the restarted facility's trail",
        || async {
            let (st, v) = call(
                &c,
                reqwest::Method::GET,
                &s[lead].url("/v1/audit?limit=1000"),
                Some(OPERATOR),
                None,
                None,
            )
            .await;
            (st == 200).then_some(v)
        },
    )
    .await;
    let after = trail(&v);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "records lost or changed across kill -9"
    );
    for x in s.iter_mut() {
        x.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_plain_refusals_and_two_thousand_idle_connections() {
    let root = tempfile::tempdir().unwrap();
    // One facility with HTTPS (keygen wrote api.crt and api.key), short
    // header timeouts so slow connections end within the test.
    let extra =
        "header_read_timeout_ms = 2000\n\n[api.tls]\ncert = \"api.crt\"\nkey = \"api.key\"\n";
    let mut s = sites(root.path(), &["alpha"], extra);
    s[0].start();
    let https = format!("https://localhost:{}", s[0].http.port());
    let pin = bulwark::http::serve::pin_of(&s[0].dir.join("api.crt"))
        .unwrap()
        .to_string();
    let status = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["status", "--url", &https, "--token", TOKEN])
            .args(args)
            .output()
            .unwrap()
    };
    // By pin and by CA file: answers; with neither, or another pin: refused.
    let out = until(Duration::from_secs(60), "an HTTPS answer", || async {
        let o = status(&["--pin", &pin]);
        o.status.success().then_some(o)
    })
    .await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("alpha"));
    let ca = s[0].dir.join("api.crt");
    assert!(status(&["--ca", ca.to_str().unwrap()]).status.success());
    assert!(
        !status(&[]).status.success(),
        "no trust given, yet it connected"
    );
    let other = format!("blake3:{}", "ab".repeat(32));
    let o = status(&["--pin", &other]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pinned"),
        "{o:?}"
    );
    // Plain HTTP to the TLS listener gets no answer.
    let plain = client()
        .get(s[0].url("/v1/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    // 2,000 connections: half idle, half with half a request sent. The
    // facility still answers, and closes them after the header timeout.
    let mut held = Vec::new();
    for i in 0..2_000 {
        let mut t = tokio::net::TcpStream::connect(s[0].http)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e} (raise ulimit -n)"));
        if i % 2 == 1 {
            let _ = t.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01").await;
        }
        held.push(t);
    }
    let o = status(&["--pin", &pin]);
    assert!(
        o.status.success(),
        "not serving with 2,000 idle connections: {o:?}"
    );
    let mut closed = 0;
    for mut t in held {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(30), t.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, 2_000, "slow connections left open");
    s[0].kill();

    // A plain listener off loopback is refused at start, saying why.
    let cfg = std::fs::read_to_string(&s[0].config).unwrap();
    let http = s[0].http.to_string();
    let open = cfg
        .replace(&http, &format!("0.0.0.0:{}", s[0].http.port()))
        .replace("[api.tls]\ncert = \"api.crt\"\nkey = \"api.key\"\n", "");
    std::fs::write(&s[0].config, open).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["node", "--config"])
        .arg(&s[0].config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}
