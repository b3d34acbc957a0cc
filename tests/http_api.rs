//! The HTTP surface on loopback: health endpoints backed by the health
//! registry (with its grace), and the admission controller in front of
//! `/v1`: a refusal is 429 with Retry-After and a JSON code.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use bulwark::facility::start_loopback_cluster;
use bulwark::http::{self, ApiState, Probes, HEALTH_GRACE};
use bulwark_actors::flow::actors::Backpressure;
use bulwark_actors::flow::admission::AdmissionConfig;
use bulwark_actors::flow::health::Kind;
use bulwark_runtime::{RealClock, SupervisionConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET with [`TOKEN`] over a fresh connection: status code
/// and the raw response.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    get_as(addr, path, Some(TOKEN)).await
}

/// [`get`] with `token`, or none.
async fn get_as(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    let code = out[9..12].parse().unwrap();
    (code, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_admission_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let fs = start_loopback_cluster(
        dir.path(),
        &["alpha"],
        SupervisionConfig::default(),
        None,
        Arc::new(RealClock),
    )
    .await
    .unwrap();
    let f = &fs[0];
    // An admission controller that admits one request and queues none.
    let cfg = AdmissionConfig {
        rate_per_s: 1,
        burst: 1,
        queue_len_max: 0,
        ..AdmissionConfig::default()
    };
    let gate = bulwark_actors::flow::actors::AdmissionGate::new(cfg);
    let (bp, _handle) = ractor::Actor::spawn(None, Backpressure, (gate, 10))
        .await
        .unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let state = ApiState::new(
        recorder.handle(),
        Arc::new(f.transport.clone()),
        Arc::new(AtomicBool::new(true)),
        Some(bp.clone()),
    )
    .with_tokens(tokens(TOKEN));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        http::app(state.clone()),
    )));

    // Health: every check healthy until it fails GRACE times in a row.
    assert_eq!(get(addr, "/health/deep").await.0, 200);
    for _ in 0..HEALTH_GRACE - 1 {
        state
            .health
            .lock()
            .unwrap()
            .report("leader", Err("no leader".into()));
    }
    assert_eq!(get(addr, "/health/deep").await.0, 200, "within the grace");
    state
        .health
        .lock()
        .unwrap()
        .report("leader", Err("no leader".into()));
    let (code, body) = get(addr, "/health/deep").await;
    assert_eq!(code, 503);
    assert!(body.contains("no leader"), "{body}");
    let (code, body) = get(addr, "/health/ready").await;
    assert_eq!(code, 503, "ready needs a leader known: {body}");
    assert_eq!(get(addr, "/health/live").await.0, 200);
    state.health.lock().unwrap().report("leader", Ok(()));

    // A request without a token is refused before admission: it costs
    // none of the one admission this controller grants.
    let (code, body) = get_as(addr, "/v1/schedule", None).await;
    assert_eq!(code, 401, "{body}");
    let (code, body) = get_as(addr, "/metrics", Some("not-a-token-of-this-site")).await;
    assert_eq!(code, 401, "{body}");

    // Admission: the first /v1 request passes (this facility runs no
    // schedule: 503 from the handler), the next is refused. Operator
    // requests skip admission: the status answers throughout.
    let (code, body) = get(addr, "/v1/schedule").await;
    assert_eq!(code, 503, "{body}");
    let (code, resp) = get(addr, "/v1/schedule").await;
    assert_eq!(code, 429, "{resp}");
    let (code, body) = get(addr, "/v1/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"admission\""), "{body}");
    let lower = resp.to_ascii_lowercase();
    let retry = lower
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("a Retry-After header");
    assert!(retry.trim().parse::<u64>().unwrap() >= 1);
    assert!(resp.contains("\"code\":\"OVERLOADED\""), "{resp}");
    // Health is never behind the admission controller.
    assert_eq!(get(addr, "/health/live").await.0, 200);
    // The availability SLO counted one good and one refused answer: half
    // the requests failed, far past a 0.1% budget.
    assert!(state.slo.lock().unwrap().errors.remaining_ppm() < 0);

    server.abort();
    bp.stop(None);
    for f in fs {
        f.stop().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_check_loop_reports_probes_and_a_stopped_tree() {
    let dir = tempfile::tempdir().unwrap();
    let fs = start_loopback_cluster(
        dir.path(),
        &["alpha"],
        SupervisionConfig::default(),
        None,
        Arc::new(RealClock),
    )
    .await
    .unwrap();
    let running = Arc::new(AtomicBool::new(true));
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let state = ApiState::new(
        recorder.handle(),
        Arc::new(fs[0].transport.clone()),
        running.clone(),
        None,
    );
    let task = tokio::spawn(http::run_checks(
        state.clone(),
        Duration::from_secs(1),
        || async {
            Probes {
                store: Ok(()),
                leader: Err("no leader known".into()),
                replica: Ok(()),
                actors: Err("the RaftPeer does not answer".into()),
            }
        },
    ));
    // Four rounds of one second (virtual time).
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    {
        let h = state.health.lock().unwrap();
        assert!(!h.healthy(Kind::Ready), "no leader after the grace");
        assert!(!h.healthy(Kind::Live), "an actor that does not answer");
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();
    assert!(!state.health.lock().unwrap().healthy(Kind::Live));
    for f in fs {
        f.stop().await;
    }
}

/// Serves facility `f`'s API (with the schedule service) on a loopback
/// port; returns its base URL.
async fn serve(f: &bulwark::facility::Facility, token: &str) -> String {
    use bulwark::http::api::Service;
    let setup = f.spec.raft.as_ref().unwrap();
    let service = Service::new(
        f.node.ctx().clone(),
        setup.members.clone(),
        setup.keyring.keyring.public().clone(),
        f.detection.clone(),
    );
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let state = ApiState::new(
        recorder.handle(),
        Arc::new(f.transport.clone()),
        Arc::new(AtomicBool::new(true)),
        None,
    )
    .with_service(service)
    .with_tokens(tokens(token));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        http::app(state),
    )));
    format!("http://{addr}")
}

async fn post_json(
    c: &reqwest::Client,
    url: &str,
    key: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = c
        .post(url)
        .bearer_auth(TOKEN)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    (st, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Polls `f` every 50 ms, at most 60 s.
async fn until<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    for _ in 0..1200 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

const TOKEN: &str = "partition-test-token-0123";

/// The legacy all-scope `token`.
fn tokens(token: &str) -> Arc<bulwark::http::auth::Tokens> {
    Arc::new(bulwark::http::auth::Tokens::new(Some(token), &[]).unwrap())
}

/// Over HTTP, a facility cut off from the others: a CP write (final
/// approval) is 503 PARTITIONED naming the state (ISOLATED) and CP; an AP write
/// (emergency coverage) is 202 provisional; a linearizable read is 503
/// and a stale one reports the minority and the pending change; after the
/// heal the provisional change is replayed and every facility has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_facility_answers_partitioned_for_cp_and_provisional_for_ap() {
    use bulwark_actors::cap::PartitionState;
    use bulwark_actors::raft::RaftConfig;
    use bulwark_transport::Transport;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let fs = start_loopback_cluster(
        dir.path(),
        &["alpha", "bravo", "charlie"],
        SupervisionConfig::default(),
        Some(RaftConfig::default()),
        Arc::new(RealClock),
    )
    .await
    .unwrap();
    let alpha = serve(&fs[0], TOKEN).await;
    let charlie = serve(&fs[2], TOKEN).await;
    let c = reqwest::Client::new();
    let ok = |st: u16| st == 200;
    until("setup committed", || async {
        let (a, _) = post_json(&c, &format!("{alpha}/v1/people"), "p1", json!({"id": "p1", "name": "P One", "role": "faculty"})).await;
        let (b, _) = post_json(&c, &format!("{alpha}/v1/blocks"), "b1", json!({"id": "b1", "day": 3, "start_min": 0, "duration_min": 480, "pool": "icu", "required": 1})).await;
        (ok(a) && ok(b)).then_some(())
    })
    .await;
    // charlie has applied the setup before it is cut off.
    until("charlie has b1", || async {
        let r = c
            .get(format!("{charlie}/v1/schedule?consistency=stale"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["blocks"].as_array()?.len() == 1).then_some(())
    })
    .await;

    let ids: Vec<_> = fs.iter().map(|f| f.node.ctx().facility.clone()).collect();
    let cut = fs[2]
        .transport
        .faults()
        .partition([ids[2].clone()], [ids[0].clone(), ids[1].clone()])
        .unwrap();
    let d = fs[2].detection.clone().unwrap();
    // Alone of three, charlie is ISOLATED (no peer reachable): no quorum.
    until("charlie cut off", || async {
        (d.view().partition == PartitionState::Isolated).then_some(())
    })
    .await;

    let (st, v) = post_json(
        &c,
        &format!("{charlie}/v1/approvals"),
        "approve-1",
        json!({"through_day": 2}),
    )
    .await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(
        (
            v["code"].as_str(),
            v["partition"].as_str(),
            v["mode"].as_str()
        ),
        (Some("PARTITIONED"), Some("ISOLATED"), Some("CP")),
        "{v}"
    );
    let (st, v) = post_json(
        &c,
        &format!("{charlie}/v1/emergency"),
        "cover-1",
        json!({"person": "p1", "block": "b1"}),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["partition"].as_str()),
        (Some("provisional"), Some("ISOLATED")),
        "{v}"
    );
    let r = c
        .get(format!("{charlie}/v1/schedule"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: serde_json::Value = c
        .get(format!("{charlie}/v1/schedule?consistency=stale"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["staleness"]["partition"], "ISOLATED", "{v}");
    assert_eq!(v["staleness"]["provisional_pending"], 1, "{v}");
    // The majority adds p2; charlie, cut off, has not seen it and refuses
    // an AP write naming p2 by its own view: a 409 that says it was judged
    // in a partition, and decides nothing for its key.
    until("p2 committed at alpha", || async {
        let (st, _) = post_json(
            &c,
            &format!("{alpha}/v1/people"),
            "p2",
            json!({"id": "p2", "name": "P Two", "role": "faculty"}),
        )
        .await;
        ok(st).then_some(())
    })
    .await;
    let cover2 = json!({"person": "p2", "block": "b1"});
    let (st, v) = post_json(
        &c,
        &format!("{charlie}/v1/emergency"),
        "cover-2",
        cover2.clone(),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(
        (
            v["rule"].as_str(),
            v["partition"].as_str(),
            v["mode"].as_str()
        ),
        (Some("UNKNOWN_PERSON"), Some("ISOLATED"), Some("AP")),
        "{v}"
    );

    // Heal: the healer replays the change through consensus.
    assert!(fs[2].transport.faults().remove(cut));
    until("the cover replayed at alpha", || async {
        let v: serde_json::Value = c
            .get(format!("{alpha}/v1/schedule"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let b = &v["blocks"].as_array()?[0];
        (b["assigned"][0]["person"] == "p1" && b["assigned"][0]["emergency"] == true).then_some(())
    })
    .await;
    // The partition-time refusal was not kept: the retry at charlie now
    // goes through consensus (b1 is full: a refusal the schedule decided,
    // with no partition named).
    let (st, v) = until("the retry decided by consensus", || async {
        let (st, v) = post_json(
            &c,
            &format!("{charlie}/v1/emergency"),
            "cover-2",
            cover2.clone(),
        )
        .await;
        // Until charlie sees the heal: before, it answers 503 or judges
        // by its own view again (a 409 naming the partition).
        (st != 503 && v["partition"].is_null()).then_some((st, v))
    })
    .await;
    assert_eq!(
        (st, v["rule"].as_str(), v["partition"].as_str()),
        (409, Some("BLOCK_FULL"), None),
        "{v}"
    );
    for f in fs {
        f.stop().await;
    }
}

/// A write's deadline rides with the work it causes. A bad
/// `Bulwark-Timeout-Ms` is a 400 naming the header. With the link from a
/// follower to the leader slower than the budget, a write sent to the
/// follower with a 300 ms budget answers 503 TIMED_OUT, and its forward,
/// arriving after its deadline, is dropped by the leader: a later write on
/// the same slow link commits, and the first is not in the schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_past_its_deadline_is_dropped_by_the_leader() {
    use bulwark_actors::raft::RaftConfig;
    use bulwark_transport::{FaultRule, Selector, Transport};
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let fs = start_loopback_cluster(
        dir.path(),
        &["alpha", "bravo", "charlie"],
        SupervisionConfig::default(),
        Some(RaftConfig::default()),
        Arc::new(RealClock),
    )
    .await
    .unwrap();
    let leader = until("a leader", || async {
        for (i, f) in fs.iter().enumerate() {
            if f.raft_status(Duration::from_secs(1)).await?.is_leader {
                return Some(i);
            }
        }
        None
    })
    .await;
    let follower = (leader + 1) % 3;
    let url = serve(&fs[follower], TOKEN).await;
    let c = reqwest::Client::new();
    let person = |id: &str| json!({"id": id, "name": "Dr Late", "role": "faculty"});
    until("a first write commits", || async {
        let (st, _) = post_json(&c, &format!("{url}/v1/people"), "warm", person("warm")).await;
        (st == 200).then_some(())
    })
    .await;

    for bad in ["0", "soon", "-5"] {
        let r = c
            .post(format!("{url}/v1/people"))
            .bearer_auth(TOKEN)
            .header("idempotency-key", format!("bad-{bad}"))
            .header("bulwark-timeout-ms", bad)
            .json(&person("never"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["field"], "Bulwark-Timeout-Ms", "{v}");
    }

    let ids: Vec<_> = fs.iter().map(|f| f.node.ctx().facility.clone()).collect();
    let slow = fs[follower]
        .transport
        .faults()
        .add(FaultRule::Delay {
            from: Selector::one(&ids[follower]),
            to: Selector::one(&ids[leader]),
            delay_ms: 1_500,
        })
        .unwrap();
    let r = c
        .post(format!("{url}/v1/people"))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "late")
        .header("bulwark-timeout-ms", "300")
        .json(&person("late"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["code"], "TIMED_OUT", "{v}");
    // Sent after it on the same slow link, with the default budget: once it
    // commits, the late forward has reached the leader before it.
    let (st, v) = post_json(&c, &format!("{url}/v1/people"), "marker", person("marker")).await;
    assert_eq!(st, 200, "{v}");
    fs[follower].transport.faults().remove(slow);
    let body: serde_json::Value = c
        .get(format!("{url}/v1/schedule"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let people: Vec<&str> = body["people"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    assert!(people.contains(&"marker"), "{people:?}");
    assert!(
        !people.contains(&"late"),
        "the expired forward was applied: {people:?}"
    );
    for f in fs {
        f.stop().await;
    }
}
