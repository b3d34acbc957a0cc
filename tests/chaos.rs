//! The ChaosAgent in the harness: every shipped experiment runs against
//! three in-process facilities (the whole stack, SimNet, virtual time) and
//! reports findings computed from what it measured; seeded faults are found
//! and their absence is not reported; the chaos levers are guarded.

use bulwark::chaos::sim::SimTarget;
use bulwark::chaos::{load_experiment, parse_experiment, Agent, ChaosCall, ChaosCluster};
use bulwark::sim::cluster::{SimCluster, SimOptions};
use bulwark_actors::chaos::report::{Phase, Report, Verdict};
use bulwark_actors::flow::bulkhead::{PoolSpec, Pools};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

fn experiments() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

async fn cluster(seed: u64, tweak: impl FnOnce(&mut SimOptions)) -> (SimCluster, SimTarget) {
    let mut opts = SimOptions::new(3, seed);
    opts.chaos = true;
    tweak(&mut opts);
    let c = SimCluster::start(opts).await.unwrap();
    c.wait_leader(Duration::from_secs(20), Duration::from_millis(100))
        .await
        .expect("a first leader");
    let t = SimTarget::new(c.api(), c.token());
    (c, t)
}

async fn post(t: &SimTarget, path: &str, body: serde_json::Value, key: &str) -> u16 {
    for i in 0..t.size() {
        let r = t
            .call(
                i,
                ChaosCall {
                    method: axum::http::Method::POST,
                    path: path.into(),
                    body: Some(body.clone()),
                    key: Some(key.into()),
                },
            )
            .await;
        if r.status != 503 {
            return r.status;
        }
    }
    503
}

/// Three faculty on two overlapping day-1 blocks; with `spare`, a fourth
/// who is free.
async fn staff(t: &SimTarget, spare: bool) {
    let mut people = vec!["f1", "f2", "f3"];
    if spare {
        people.push("f4");
    }
    for p in &people {
        let s = post(
            t,
            "/v1/people",
            json!({"id": p, "name": p, "role": "faculty"}),
            &format!("staff-{p}"),
        )
        .await;
        assert!((200..300).contains(&s), "person {p}: {s}");
    }
    for (b, start) in [("b1", 480), ("b2", 540)] {
        let s = post(
            t,
            "/v1/blocks",
            json!({"id": b, "day": 1, "start_min": start, "duration_min": 240, "pool": "icu", "required": if b == "b1" { 2 } else { 1 }}),
            &format!("staff-{b}"),
        )
        .await;
        assert!((200..300).contains(&s), "block {b}: {s}");
    }
    for (p, b) in [("f1", "b1"), ("f2", "b1"), ("f3", "b2")] {
        let s = post(
            t,
            "/v1/assignments",
            json!({"person": p, "block": b}),
            &format!("staff-{p}-{b}"),
        )
        .await;
        assert!((200..300).contains(&s), "assign {p} {b}: {s}");
    }
}

fn every_finding_is_measured(r: &Report) {
    for w in &r.weaknesses {
        assert!(!w.measured.is_empty() && !w.required.is_empty(), "{w:?}");
    }
}

/// Runs the future `make` builds on a thread of its own, on a
/// current-thread runtime with paused (virtual) time: independent harness
/// runs side by side, each as deterministic as alone.
fn on_paused_thread<F, M>(make: M) -> std::thread::JoinHandle<F::Output>
where
    M: FnOnce() -> F + Send + 'static,
    F: std::future::Future,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime")
            .block_on(make())
    })
}

/// The experiments run side by side, each on its own paused runtime.
#[test]
fn every_experiment_runs_in_the_harness_and_reports_from_measurements() {
    // CHAOS_EXPERIMENT=<part of a file name> runs only the matching ones.
    let only = std::env::var("CHAOS_EXPERIMENT").ok();
    let runs: Vec<_> = experiments()
        .into_iter()
        .enumerate()
        .filter(|(_, file)| {
            only.as_deref()
                .is_none_or(|o| file.to_string_lossy().contains(o))
        })
        .map(|(k, file)| on_paused_thread(move || run_experiment(k, file)))
        .collect();
    let failed = runs
        .into_iter()
        .map(|r| r.join())
        .filter(Result::is_err)
        .count();
    assert_eq!(
        failed, 0,
        "{failed} experiments failed (their panics above)"
    );
}

/// Runs the `k`th experiment and checks its report.
async fn run_experiment(k: usize, file: PathBuf) {
    let exp = load_experiment(&file).unwrap();
    let (c, t) = cluster(100 + k as u64, |_| {}).await;
    staff(&t, true).await;
    let report = Agent::new(t.clone(), exp.clone(), format!("run{k}"))
        .run()
        .await;
    println!("{}\n{}", file.display(), report.render_text());
    assert!(
        !matches!(report.verdict, Verdict::Refused(_)),
        "{}: {:?}",
        exp.name,
        report.verdict
    );
    for phase in Phase::ALL {
        let m = report.phase(phase).expect("every phase measured");
        assert!(m.probes > 0, "{} {phase:?}: no probes", exp.name);
    }
    assert!(report.heatmap.samples.len() >= 10, "{}", exp.name);
    assert!(
        report.observations.iter().any(|o| o.contains("started")),
        "{}",
        exp.name
    );
    assert_eq!(
        report.rollback.confirmed.len(),
        3,
        "{}: rollback {:?}",
        exp.name,
        report.rollback
    );
    every_finding_is_measured(&report);
    let svg = report.heatmap.render_svg(&exp.name);
    assert!(
        svg.starts_with("<svg") && svg.contains("/api"),
        "{}",
        exp.name
    );
    // Nothing is held anywhere after the run.
    for i in 0..3 {
        let r = t
            .call(
                i,
                ChaosCall {
                    method: axum::http::Method::GET,
                    path: "/v1/admin/chaos".into(),
                    body: None,
                    key: None,
                },
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body["rules"], json!([]), "{}", exp.name);
        assert_eq!(r.body["skew_ms"], json!(0), "{}", exp.name);
        assert_eq!(r.body["disk_latency_ms"], json!(0), "{}", exp.name);
    }
    c.shutdown().await;
}

fn operator_without_reserve(concurrency: u32) -> Pools {
    // The seeded fault: the operator pool keeps no reserve and lends its
    // units to the writes.
    let mut specs = std::collections::BTreeMap::new();
    let part = |pct: u32| (concurrency * pct / 100).max(1);
    let open = |capacity: u32| PoolSpec {
        capacity,
        reserved: capacity / 2,
        borrow_limit: capacity,
        protected: false,
    };
    specs.insert("writes".to_string(), open(part(40)));
    specs.insert("reads".to_string(), open(part(40)));
    specs.insert(
        "operator".to_string(),
        PoolSpec {
            capacity: part(10),
            reserved: 0,
            borrow_limit: 0,
            protected: false,
        },
    );
    Pools::new(specs, part(10)).unwrap()
}

const SPIKE: &str = r#"
name = "spike"
blast_radius = 0.01
duration_ms = 2000
[fault]
kind = "load_spike"
factor = 10
burst = true
[observe]
probe_rate_per_s = 30
before_ms = 1000
after_ms = 3000
"#;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_load_spike_finds_a_disabled_operator_reserve_and_not_a_working_one() {
    let title = "operator requests were refused during the spike";
    for broken in [true, false] {
        let exp = parse_experiment(SPIKE, "spike.toml").unwrap();
        let (c, t) = cluster(7, |o| {
            o.api_concurrency = 20;
            if broken {
                o.pools = Some(std::sync::Arc::new(|_| operator_without_reserve(20)));
            }
        })
        .await;
        let report = Agent::new(t, exp, "spike").run().await;
        println!("broken={broken}\n{}", report.render_text());
        let found = report.weaknesses.iter().any(|w| w.title == title);
        assert_eq!(found, broken, "broken={broken}: {:?}", report.weaknesses);
        let during = report.phase(Phase::During).unwrap();
        assert!(during.shed > 0, "the spike is shed (429) either way");
        c.shutdown().await;
    }
}

const N1: &str = r#"
name = "n-1"
blast_radius = 0.01
duration_ms = 500
[fault]
kind = "faculty_loss"
lose = 1
[observe]
before_ms = 500
after_ms = 1000
"#;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn faculty_loss_names_the_block_a_lost_member_leaves_short_only_without_a_spare() {
    for spare in [false, true] {
        let (c, t) = cluster(9, |_| {}).await;
        staff(&t, spare).await;
        let exp = parse_experiment(N1, "n1.toml").unwrap();
        let report = Agent::new(t, exp, "n1").run().await;
        println!("spare={spare}\n{}", report.render_text());
        let gaps: Vec<_> = report
            .weaknesses
            .iter()
            .filter(|w| w.title.starts_with("N-1 contingency fails"))
            .collect();
        if spare {
            assert!(gaps.is_empty(), "{gaps:?}");
        } else {
            assert!(!gaps.is_empty());
            assert!(gaps.iter().any(|w| w.title.contains("b1")), "{gaps:?}");
        }
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn levers_need_chaos_enabled_and_the_token_and_release_themselves() {
    let get = ChaosCall {
        method: axum::http::Method::GET,
        path: "/v1/admin/chaos".into(),
        body: None,
        key: None,
    };
    let post = |body: serde_json::Value| ChaosCall {
        method: axum::http::Method::POST,
        path: "/v1/admin/chaos".into(),
        body: Some(body),
        key: None,
    };
    // Off by default.
    let (c, t) = cluster(11, |o| o.chaos = false).await;
    let r = t.call(0, get.clone()).await;
    assert_eq!((r.status, r.code()), (403, Some("CHAOS_DISABLED")));
    c.shutdown().await;

    let (c, t) = cluster(12, |_| {}).await;
    // A wrong token changes nothing.
    let wrong = SimTarget::new(c.api(), "not-the-token-at-all");
    let skew = json!({"action": {"kind": "clock_skew", "skew_ms": 5000}});
    let r = wrong.call(0, post(skew.clone())).await;
    assert_eq!(r.status, 401);
    assert_eq!(t.call(0, get.clone()).await.body["skew_ms"], json!(0));
    // Malformed and out-of-range actions are refused, naming the field.
    for (bad, field) in [
        (json!({"action": {"kind": "meteor"}}), "action.kind"),
        (
            json!({"action": {"kind": "clock_skew", "skew_ms": 1_000_000_000}}),
            "action.skew_ms",
        ),
        (
            json!({"action": {"kind": "clear"}, "dead_man_ms": 0}),
            "dead_man_ms",
        ),
        (
            json!({"action": {"kind": "disk", "latency_ms": 5, "write_failure": 3.0}}),
            "action",
        ),
        (
            json!({"action": {"kind": "kill_actor", "zone": "consensus", "name": "nobody"}}),
            "",
        ),
    ] {
        let r = t.call(0, post(bad.clone())).await;
        assert!(
            matches!(r.status, 400 | 404),
            "{bad}: {} {}",
            r.status,
            r.body
        );
        if r.status == 400 {
            assert_eq!(r.body["field"], json!(field), "{bad}: {}", r.body);
        }
    }
    let v = t.call(0, get.clone()).await.body;
    assert_eq!(
        (v["skew_ms"].clone(), v["rules"].clone()),
        (json!(0), json!([]))
    );
    // A lever with a 1 s dead-man timer is released by the facility itself.
    let mut armed = skew.clone();
    armed["dead_man_ms"] = json!(1000);
    let r = t.call(0, post(armed)).await;
    assert_eq!((r.status, r.body["skew_ms"].clone()), (200, json!(5000)));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let v = t.call(0, get).await.body;
    assert_eq!(v["skew_ms"], json!(0), "{v}");
    assert_eq!(v["dead_man_releases"], json!(1), "{v}");
    c.shutdown().await;
}

const SCHEDULED: &str = r#"
name = "scheduled-skew"
blast_radius = 0.34
duration_ms = 4000
[schedule]
timing = { at = { ms = 1000 } }
lifetime = { fixed = { ms = 1000 } }
[fault]
kind = "clock_skew"
target = "follower"
skew_ms = 5000
[observe]
before_ms = 500
after_ms = 1000
"#;

const NEVER: &str = r#"
name = "never"
blast_radius = 0.34
duration_ms = 2000
[schedule]
timing = { when = { above = { metric = "no_leader", value = 2 } } }
[fault]
kind = "clock_skew"
target = "follower"
skew_ms = 5000
[observe]
before_ms = 500
after_ms = 500
"#;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_fault_starts_and_stops_as_its_schedule_says() {
    let (c, t) = cluster(13, |_| {}).await;
    let exp = parse_experiment(SCHEDULED, "s.toml").unwrap();
    let report = Agent::new(t.clone(), exp, "sched").run().await;
    println!("{}", report.render_text());
    let at = |needle: &str| -> u64 {
        let line = report
            .observations
            .iter()
            .find(|o| o.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {:?}", report.observations));
        line[2..line.find("ms").unwrap()].parse().unwrap()
    };
    let started = at("injected: clock of");
    let ended = at("the schedule ended the fault");
    let window = at("started:") + 500;
    assert!(started >= window + 1000, "starts 1 s into the window");
    assert!(
        (ended - started) >= 1000 && ended - started < 2000,
        "held about its 1 s lifetime: {started}..{ended}"
    );
    assert!(!matches!(report.verdict, Verdict::Refused(_)));
    c.shutdown().await;

    // A condition that never holds never starts the fault: nothing is
    // touched and the report says so.
    let (c, t) = cluster(14, |_| {}).await;
    let exp = parse_experiment(NEVER, "n.toml").unwrap();
    let report = Agent::new(t.clone(), exp, "never").run().await;
    assert!(
        matches!(&report.verdict, Verdict::Refused(why) if why.contains("never started")),
        "{:?}",
        report.verdict
    );
    assert!(!report.observations.iter().any(|o| o.contains("injected")));
    c.shutdown().await;
}

/// Found by the slow-disk experiment: a request whose client went away
/// mid-flight (a timeout, a reset connection) kept its bulkhead units and
/// its admission slot forever, until the facility's operator view itself
/// was refused. Now both are given back however the request ends.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn requests_cancelled_mid_flight_give_back_their_units_and_slots() {
    let (c, t) = cluster(15, |_| {}).await;
    staff(&t, true).await;
    let leader = c.leader().await.expect("a leader");
    let lever = |body: serde_json::Value| ChaosCall {
        method: axum::http::Method::POST,
        path: "/v1/admin/chaos".into(),
        body: Some(body),
        key: None,
    };
    let slow = json!({"action": {"kind": "disk", "latency_ms": 3000}});
    assert_eq!(t.call(leader, lever(slow)).await.status, 200);
    // Writes and cluster views that hang behind the slow disk; each client
    // gives up after 50 ms.
    for k in 0..40 {
        let i = k % 3;
        let call = if k % 2 == 0 {
            ChaosCall {
                method: axum::http::Method::POST,
                path: "/v1/assignments".into(),
                body: Some(json!({"person": "f4", "block": "b2"})),
                key: Some(format!("cancel-{k}")),
            }
        } else {
            ChaosCall {
                method: axum::http::Method::GET,
                path: "/v1/schedule?consistency=linearizable".into(),
                body: None,
                key: None,
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(50), t.call(i, call)).await;
    }
    assert_eq!(
        t.call(leader, lever(json!({"action": {"kind": "clear"}})))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    for i in 0..3 {
        let r = t
            .call(
                i,
                ChaosCall {
                    method: axum::http::Method::GET,
                    path: "/v1/cluster".into(),
                    body: None,
                    key: None,
                },
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        for pool in r.body["bulkheads"].as_array().unwrap() {
            // The probe itself holds one operator unit.
            let own = if pool["name"] == "operator" { 1 } else { 0 };
            assert!(
                pool["allocated"].as_u64().unwrap() <= own,
                "facility {i}: units kept by cancelled requests: {pool}"
            );
        }
    }
    c.shutdown().await;
}
