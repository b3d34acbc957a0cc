//! From zero to a running cluster with the binary alone: `bulwark init`
//! writes three facilities, `bulwark up` runs them from the written
//! configs with no edits, `bulwark schedule …` drives them over HTTPS with
//! the printed token and the cluster's CA (exit codes by outcome, a key
//! retried at another facility applied once), a SIGTERM stops all of them
//! cleanly, and a second `up` finds everything written before.

#[path = "support/procs.rs"]
mod procs;

use std::process::{Command, Stdio};
use std::time::Duration;

use procs::{until, BIN};
use serde_json::Value;

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
            .args(["up", "--log-format", "json", "--dir"])
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
    // No secret token in any written file; one cluster id in every one.
    let mut clusters = std::collections::BTreeSet::new();
    for n in ["alpha", "bravo", "charlie"] {
        let cfg = std::fs::read_to_string(dir.join(n).join("facility.toml")).unwrap();
        let line = cfg.lines().find(|l| l.starts_with("cluster_id = \""));
        clusters.insert(line.expect("a cluster id").to_string());
        for t in [&admin, &app, &prom] {
            assert!(
                !cfg.contains(t.as_str()),
                "a token in plain text in {n}'s config"
            );
        }
    }
    assert_eq!(clusters.len(), 1, "{clusters:?}");

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

    // The schedule through the CLI client alone, with the app token.
    let cli = |args: &[&str], token: &str, port_offset: u16| {
        let out = Command::new(BIN)
            .args(args)
            .env(
                "BULWARK_URL",
                format!("https://localhost:{}", base + 1000 + port_offset),
            )
            .env("BULWARK_TOKEN", token)
            .env("BULWARK_CA", &ca)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ok = |args: &[&str]| {
        let (code, out, err) = cli(args, &app, 0);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    let out = ok(&[
        "schedule",
        "add-person",
        "--id",
        "p1",
        "--name",
        "Ada",
        "--role",
        "resident",
        "--pgy",
        "2",
    ]);
    assert!(out.starts_with("committed"), "{out}");
    for (id, start) in [("b1", "480"), ("b2", "600")] {
        ok(&[
            "schedule",
            "add-block",
            "--id",
            id,
            "--day",
            "3",
            "--start-min",
            start,
            "--duration-min",
            "600",
            "--pool",
            "clinic",
        ]);
    }
    let out = ok(&[
        "schedule",
        "assign",
        "--person",
        "p1",
        "--block",
        "b1",
        "--key",
        "assign-p1-b1",
    ]);
    assert!(out.contains("assigned"), "{out}");
    // The same key again, at another facility: applied once, the first
    // outcome answered.
    let (code, out, err) = cli(
        &[
            "schedule",
            "assign",
            "--person",
            "p1",
            "--block",
            "b1",
            "--key",
            "assign-p1-b1",
        ],
        &app,
        1,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("already applied"), "{out}");
    // And at the third, as JSON: the first answer's index and height.
    let first = |port: u16| {
        let (code, out, _) = cli(
            &[
                "schedule",
                "assign",
                "--person",
                "p1",
                "--block",
                "b1",
                "--key",
                "assign-p1-b1",
                "--json",
            ],
            &app,
            port,
        );
        assert_eq!(code, 0, "{out}");
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        (v["answer"]["index"].clone(), v["answer"]["height"].clone())
    };
    let at_alpha = first(0);
    assert!(at_alpha.0.is_u64() && at_alpha.1.is_u64(), "{at_alpha:?}");
    assert_eq!(
        first(2),
        at_alpha,
        "a retry at charlie answers another index or height"
    );
    // A rule refusal: exit 2, the rule named.
    let (code, out, err) = cli(
        &["schedule", "assign", "--person", "p1", "--block", "b2"],
        &app,
        0,
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("409 RULE_VIOLATION"), "{err}");
    // No scope: exit 4, the scope named.
    let (code, _, err) = cli(&["schedule", "approve", "--through-day", "3"], &app, 0);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("\"approve\""), "{err}");
    // --json: the API's answer and the outcome.
    let (code, out, _) = cli(
        &[
            "schedule", "unassign", "--person", "p1", "--block", "b2", "--json",
        ],
        &app,
        0,
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!((code, v["outcome"].as_str()), (2, Some("refused")), "{v}");
    // Reads.
    let out = ok(&["schedule", "show"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("b1"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(row.ends_with("p1"), "{out}");
    let out = ok(&["schedule", "person", "p1"]);
    assert!(
        out.contains("Ada") && out.contains("PGY-2") && out.contains("b1"),
        "{out}"
    );
    let out = ok(&["ledger", "show", "1"]);
    assert!(
        out.contains("signed by") && out.contains("verified    true"),
        "{out}"
    );
    let out = ok(&["evidence"]);
    assert!(out.contains("no evidence"), "{out}");
    // The prometheus token scrapes, and reads nothing else.
    let c_prom = client(&prom);
    let m = c_prom.get(url("/metrics")).send().await.unwrap();
    assert_eq!(m.status().as_u16(), 200);
    let r = c_prom.get(url("/v1/schedule")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // The admin token reads the trail: the refused assignment is there.
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

    // The facilities log their lifecycle at info, as JSON lines: one of
    // them was elected, and every line parses.
    let mut elected = 0;
    for n in ["alpha", "bravo", "charlie"] {
        let log = std::fs::read_to_string(dir.join(n).join("node.log")).unwrap();
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if v["fields"]["message"] == "elected leader" {
                elected += 1;
                assert_eq!(v["level"], "INFO", "{line}");
            }
        }
    }
    assert!(elected >= 1, "no election logged");

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
