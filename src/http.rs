//! The facility's HTTP surface: `/health/live`, `/health/ready`,
//! `/health/deep`, `/metrics`, and the `/v1` API (so far `/v1/status`).
//!
//! Bound to localhost by default (the config's `http_listen`).
//! - Health comes from the flow kit's [`Health`] registry, which a
//!   background task fills ([`run_checks`]): `live` is "the supervision tree
//!   runs"; `ready` adds "a majority of the cluster is linked" and "the
//!   store answers"; `deep` adds "a Raft leader is known". A check fails
//!   only after 3 consecutive failures (the grace).
//! - Every `/v1` request passes the BackpressureController first: a
//!   refusal is `429 Too Many Requests` with `Retry-After` (seconds,
//!   rounded up) and a JSON body with the code `OVERLOADED`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use bulwark_actors::flow::actors::{BackpressureMsg, BackpressureStatus};
use bulwark_actors::flow::admission::Rejected;
use bulwark_actors::flow::health::{
    BudgetEvent, CheckStatus, ErrorBudget, Health, Kind, LatencyBudget,
};
use bulwark_transport::{LinkStatus, Transport};
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::ActorRef;
use serde::Serialize;

/// Consecutive failures before a check counts as failed.
pub const HEALTH_GRACE: u32 = 3;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// Renders the Prometheus text.
    pub prometheus: PrometheusHandle,
    /// The transport, for link states.
    pub transport: Arc<dyn Transport>,
    /// False once the supervision tree has stopped.
    pub running: Arc<AtomicBool>,
    /// The health checks, filled by [`run_checks`].
    pub health: Arc<Mutex<Health>>,
    /// The BackpressureController every `/v1` request passes; `None` admits
    /// everything.
    pub admission: Option<ActorRef<BackpressureMsg>>,
    /// The `/v1` SLOs: availability (no 5xx, no 429) and latency.
    pub slo: Arc<Mutex<Slo>>,
}

/// The API's service-level objectives, over a 30-day window: 99.9% of
/// `/v1` requests answered without a 5xx or a 429, and 99% within 1 s.
/// Exhaustion is logged and counted (`bulwark_slo_exhausted_total`).
#[derive(Debug)]
pub struct Slo {
    /// Availability.
    pub errors: ErrorBudget,
    /// Latency.
    pub latency: LatencyBudget,
    start: tokio::time::Instant,
}

/// The SLO window: 30 days.
pub const SLO_WINDOW_S: u64 = 30 * 24 * 3600;

impl Default for Slo {
    fn default() -> Self {
        Slo {
            errors: ErrorBudget::new(999_000, SLO_WINDOW_S),
            latency: LatencyBudget::new(1_000, 990_000, SLO_WINDOW_S),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Slo {
    /// Records one `/v1` answer.
    pub fn record(&mut self, status: StatusCode, latency_ms: u64) {
        let now = self.start.elapsed().as_millis() as u64;
        let good = !status.is_server_error() && status != StatusCode::TOO_MANY_REQUESTS;
        for (slo, event) in [
            ("availability", self.errors.record(good, now)),
            ("latency", self.latency.record(latency_ms, now)),
        ] {
            match event {
                Some(BudgetEvent::Exhausted) => {
                    metrics::counter!("bulwark_slo_exhausted_total", "slo" => slo).increment(1);
                    tracing::warn!(slo, "error budget exhausted");
                }
                Some(BudgetEvent::Restored) => tracing::info!(slo, "error budget restored"),
                None => {}
            }
        }
        metrics::gauge!("bulwark_slo_budget_remaining_ppm", "slo" => "availability")
            .set(self.errors.remaining_ppm() as f64);
        metrics::gauge!("bulwark_slo_budget_remaining_ppm", "slo" => "latency")
            .set(self.latency.budget().remaining_ppm() as f64);
    }
}

impl ApiState {
    /// A state with the standard checks registered (all healthy until they
    /// fail).
    pub fn new(
        prometheus: PrometheusHandle,
        transport: Arc<dyn Transport>,
        running: Arc<AtomicBool>,
        admission: Option<ActorRef<BackpressureMsg>>,
    ) -> ApiState {
        let mut h = Health::new(HEALTH_GRACE);
        h.register("tree", Kind::Live);
        h.register("links", Kind::Ready);
        h.register("store", Kind::Ready);
        h.register("leader", Kind::Deep);
        ApiState {
            prometheus,
            transport,
            running,
            health: Arc::new(Mutex::new(h)),
            admission,
            slo: Arc::new(Mutex::new(Slo::default())),
        }
    }
}

/// The router of the API.
pub fn app(state: ApiState) -> axum::Router {
    let v1 = axum::Router::new()
        .route("/status", get(status))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit));
    axum::Router::new()
        .route("/health/live", get(|s| health(s, Kind::Live)))
        .route("/health/ready", get(|s| health(s, Kind::Ready)))
        .route("/health/deep", get(|s| health(s, Kind::Deep)))
        .route("/metrics", get(render_metrics))
        .nest("/v1", v1)
        .with_state(state)
}

#[derive(Serialize)]
struct Check {
    name: String,
    kind: &'static str,
    healthy: bool,
    consecutive_failures: u32,
    last_error: Option<String>,
}

fn checks(h: &Health) -> Vec<Check> {
    h.status()
        .into_iter()
        .map(|c: CheckStatus| Check {
            name: c.name,
            kind: match c.kind {
                Kind::Live => "live",
                Kind::Ready => "ready",
                Kind::Deep => "deep",
            },
            healthy: c.healthy,
            consecutive_failures: c.consecutive_failures,
            last_error: c.last_error,
        })
        .collect()
}

#[derive(Serialize)]
struct HealthBody {
    healthy: bool,
    checks: Vec<Check>,
}

async fn health(State(s): State<ApiState>, kind: Kind) -> (StatusCode, Json<HealthBody>) {
    let h = s.health.lock().expect("health lock");
    let healthy = h.healthy(kind);
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(HealthBody {
            healthy,
            checks: checks(&h),
        }),
    )
}

/// What one round of this facility's own probes found.
#[derive(Debug, Clone)]
pub struct Probes {
    /// The store answers a read.
    pub store: Result<(), String>,
    /// A Raft leader is known.
    pub leader: Result<(), String>,
}

/// Runs the standard checks every `every` until `running` turns false:
/// the tree (the running flag), the links (a majority linked), and the
/// store and leader from `probe`.
pub async fn run_checks<F, Fut>(state: ApiState, every: Duration, probe: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Probes>,
{
    while state.running.load(Ordering::Relaxed) {
        let (linked, cluster) = links(state.transport.as_ref());
        let p = probe().await;
        {
            let mut h = state.health.lock().expect("health lock");
            h.report("tree", Ok(()));
            h.report(
                "links",
                if linked * 2 > cluster {
                    Ok(())
                } else {
                    Err(format!("{linked} of {cluster} linked"))
                },
            );
            h.report("store", p.store);
            h.report("leader", p.leader);
        }
        tokio::time::sleep(every).await;
    }
    let mut h = state.health.lock().expect("health lock");
    for _ in 0..HEALTH_GRACE {
        h.report("tree", Err("the supervision tree stopped".into()));
    }
}

#[derive(Serialize)]
struct ErrorBody {
    code: &'static str,
    reason: &'static str,
    retry_after_ms: u64,
}

/// 429 with `Retry-After` for a refusal from the admission controller.
pub fn overloaded(r: Rejected) -> Response {
    let secs = r.retry_after_ms.div_ceil(1000).max(1);
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        Json(ErrorBody {
            code: "OVERLOADED",
            reason: r.reason,
            retry_after_ms: r.retry_after_ms,
        }),
    )
        .into_response();
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&secs.to_string()).expect("digits"),
    );
    resp
}

async fn admit(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let t = tokio::time::Instant::now();
    let resp = admitted(&s, req, next).await;
    let latency_ms = t.elapsed().as_millis() as u64;
    s.slo
        .lock()
        .expect("slo lock")
        .record(resp.status(), latency_ms);
    resp
}

async fn admitted(s: &ApiState, req: Request, next: Next) -> Response {
    let Some(bp) = &s.admission else {
        return next.run(req).await;
    };
    let answer = bp
        .call(BackpressureMsg::Arrive, Some(Duration::from_secs(30)))
        .await;
    match answer {
        Ok(ractor::rpc::CallResult::Success(Ok(_))) => {}
        Ok(ractor::rpc::CallResult::Success(Err(r))) => return overloaded(r),
        _ => {
            return overloaded(Rejected {
                reason: "admission_unavailable",
                retry_after_ms: 1_000,
            })
        }
    }
    let t = tokio::time::Instant::now();
    let resp = next.run(req).await;
    let latency_ms = t.elapsed().as_millis() as u64;
    let _ = bp.cast(BackpressureMsg::Complete { latency_ms });
    resp
}

#[derive(Serialize)]
struct StatusBody {
    running: bool,
    linked: usize,
    cluster: usize,
    healthy_ready: bool,
    admission: Option<Admission>,
    slo_availability_remaining_ppm: i64,
    slo_latency_remaining_ppm: i64,
}

#[derive(Serialize)]
struct Admission {
    limit: u32,
    in_flight: u32,
    queued: usize,
    pressure: f64,
}

async fn status(State(s): State<ApiState>) -> Json<StatusBody> {
    let (linked, cluster) = links(s.transport.as_ref());
    let admission = match &s.admission {
        Some(bp) => bp
            .call(BackpressureMsg::Status, Some(Duration::from_secs(5)))
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .map(|b: BackpressureStatus| Admission {
                limit: b.limit,
                in_flight: b.in_flight,
                queued: b.queued,
                pressure: b.pressure,
            }),
        None => None,
    };
    let healthy_ready = s.health.lock().expect("health lock").healthy(Kind::Ready);
    let (avail, lat) = {
        let slo = s.slo.lock().expect("slo lock");
        (
            slo.errors.remaining_ppm(),
            slo.latency.budget().remaining_ppm(),
        )
    };
    Json(StatusBody {
        running: s.running.load(Ordering::Relaxed),
        linked,
        cluster,
        healthy_ready,
        admission,
        slo_availability_remaining_ppm: avail,
        slo_latency_remaining_ppm: lat,
    })
}

/// Links up (counting this facility) and the cluster's size.
pub fn links(t: &dyn Transport) -> (usize, usize) {
    let peers = t.peers();
    let up = peers
        .iter()
        .filter(|p| t.link_status(p) == LinkStatus::Up)
        .count();
    (up + 1, peers.len() + 1)
}

async fn render_metrics(State(s): State<ApiState>) -> String {
    s.prometheus.render()
}
