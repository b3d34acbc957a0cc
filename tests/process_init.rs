//! From zero to a running cluster with the binary alone: `bulwark init`
//! writes three facilities, `bulwark up` runs them from the written
//! configs with no edits, the API answers over HTTPS with the printed
//! token and pin, a SIGTERM stops all of them cleanly, and a second `up`
//! finds everything written before.

#[path = "support/procs.rs"]
mod procs;

use std::process::{Command, Stdio};
use std::time::Duration;

use procs::{until, BIN};
use serde_json::{json, Value};

/// A base port whose QUIC (UDP) and HTTPS (TCP) ports are free now.
fn free_base() -> u16 {
    for _ in 0..50 {
        let p = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p > 60_000 {
            continue;
        }
        let free = (0..3).all(|i| {
            std::net::UdpSocket::bind(("127.0.0.1", p + i)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 1000 + i)).is_ok()
        });
        if free {
            return p;
        }
    }
    panic!("no free ports");
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "bulwark {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Up(std::process::Child);

impl Up {
    fn start(dir: &std::path::Path) -> Up {
        Up(Command::new(BIN)
            .args(["up", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap())
    }

    /// SIGTERM; true if `up` (and so every facility) stopped cleanly.
    fn terminate(mut self) -> bool {
        let pid = self.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.0.wait().unwrap().success()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_then_up_serves_https_with_the_printed_token_and_stops_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cluster");
    let base = free_base();
    let out = run(&[
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--facilities",
        "alpha,bravo,charlie",
        "--base-port",
        &base.to_string(),
    ]);
    let token = |name: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("no {name} token in {out}"))
            .to_string()
    };
    let (admin, app, prom) = (token("admin"), token("app"), token("prometheus"));
    let ca = dir.join("ca.crt");
    assert!(out.contains(&format!("--ca {}", ca.display())), "{out}");
    // No secret token in any written file.
    for n in ["alpha", "bravo", "charlie"] {
        let cfg = std::fs::read_to_string(dir.join(n).join("facility.toml")).unwrap();
        for t in [&admin, &app, &prom] {
            assert!(
                !cfg.contains(t.as_str()),
                "a token in plain text in {n}'s config"
            );
        }
    }

    let up = Up::start(&dir);
    let url = |p: &str| format!("https://localhost:{}{p}", base + 1000);
    let client = |t: &str| {
        bulwark::client::ApiArgs {
            token: Some(t.to_string()),
            ca: Some(ca.clone()),
            ..Default::default()
        }
        .client(Duration::from_secs(20))
        .unwrap()
    };
    let (c_admin, c_app) = (client(&admin), client(&app));
    let leader = until(Duration::from_secs(60), "a leader over HTTPS", || async {
        let v: Value = c_app
            .get(url("/v1/cluster"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["leader"].as_str().map(str::to_string)
    })
    .await;
    assert!(["alpha", "bravo", "charlie"].contains(&leader.as_str()));
    // One CA file trusts every facility, by host name.
    for i in 0..3 {
        let status = run(&[
            "status",
            "--url",
            &format!("https://localhost:{}", base + 1000 + i),
            "--token",
            &app,
            "--ca",
            ca.to_str().unwrap(),
        ]);
        assert!(status.contains("charlie"), "{status}");
    }

    // Writes with the app token, a refusal by the rules, a read back.
    let post = |c: reqwest::Client, path: &'static str, key: &'static str, body: Value| {
        let u = url(path);
        async move {
            until(Duration::from_secs(30), "a final answer", || {
                let (c, u, body) = (c.clone(), u.clone(), body.clone());
                async move {
                    let r = c
                        .post(u)
                        .header("idempotency-key", key)
                        .json(&body)
                        .send()
                        .await
                        .ok()?;
                    let s = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    (s != 503 && s != 429).then_some((s, v))
                }
            })
            .await
        }
    };
    let person = json!({"id": "p1", "name": "Ada", "role": "resident", "pgy": 2});
    let (s, v) = post(c_app.clone(), "/v1/people", "k-p1", person).await;
    assert_eq!(s, 200, "{v}");
    for (key, id, start) in [("k-b1", "b1", 480), ("k-b2", "b2", 600)] {
        let block = json!({"id": id, "day": 3, "start_min": start, "duration_min": 600, "pool": "clinic", "required": 1});
        let (s, v) = post(c_app.clone(), "/v1/blocks", key, block).await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = post(
        c_app.clone(),
        "/v1/assignments",
        "k-a1",
        json!({"person": "p1", "block": "b1"}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = post(
        c_app.clone(),
        "/v1/assignments",
        "k-a2",
        json!({"person": "p1", "block": "b2"}),
    )
    .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("RULE_VIOLATION")),
        "{v}"
    );
    // The app token cannot approve; the admin token reads the trail.
    let (s, v) = post(
        c_app.clone(),
        "/v1/approvals",
        "k-ap",
        json!({"through_day": 3}),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    let trail: Value = c_admin
        .get(url("/v1/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        trail["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["who"] == "app" && r["path"] == "/v1/assignments" && r["status"] == 409),
        "{trail}"
    );

    // SIGTERM: every facility stops cleanly; a second `up` has it all.
    assert!(up.terminate(), "up did not stop cleanly");
    let up = Up::start(&dir);
    let v = until(Duration::from_secs(60), "p1 after the restart", || async {
        let r = c_app
            .get(url("/v1/people/p1?consistency=linearizable"))
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(v["person"]["name"], "Ada", "{v}");
    assert_eq!(v["blocks"].as_array().map(Vec::len), Some(1), "{v}");
    assert!(up.terminate());
}
