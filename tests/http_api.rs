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

/// One HTTP/1.1 GET over a fresh connection: status code and the raw
/// response.
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
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
    let (bp, _handle) = ractor::Actor::spawn(None, Backpressure, (f.node.ctx().clone(), cfg, 10))
        .await
        .unwrap();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let state = ApiState::new(
        recorder.handle(),
        Arc::new(f.transport.clone()),
        Arc::new(AtomicBool::new(true)),
        Some(bp.clone()),
    );
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
    assert_eq!(
        get(addr, "/health/ready").await.0,
        200,
        "ready does not need a leader"
    );
    assert_eq!(get(addr, "/health/live").await.0, 200);

    // Admission: the first /v1 request passes, the next is refused.
    let (code, body) = get(addr, "/v1/status").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"admission\""), "{body}");
    let (code, resp) = get(addr, "/v1/status").await;
    assert_eq!(code, 429, "{resp}");
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
            }
        },
    ));
    // Four rounds of one second (virtual time).
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    {
        let h = state.health.lock().unwrap();
        assert!(h.healthy(Kind::Ready), "one facility of one is a majority");
        assert!(!h.healthy(Kind::Deep), "no leader after the grace");
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    task.await.unwrap();
    assert!(!state.health.lock().unwrap().healthy(Kind::Live));
    for f in fs {
        f.stop().await;
    }
}
