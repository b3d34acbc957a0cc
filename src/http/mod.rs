//! The facility's HTTP surface: `/health/live`, `/health/ready`,
//! `/health/deep`, `/metrics`, the status page at `/`, and the `/v1` API
//! ([`api`]: schedule writes and reads, the cluster view, the ledger,
//! evidence; `/v1/status`, `/v1/heatmap`, `/v1/openapi.json`).
//!
//! Bound to localhost by default (the config's `http_listen`).
//! - Health comes from the flow kit's [`Health`] registry, which a
//!   background task fills ([`run_checks`]): `live` is "the supervision tree
//!   runs and its key actors answer" (`facility::probe`); `ready` adds "a majority of the cluster is linked" and "the
//!   store answers"; `deep` adds "a Raft leader is known". A check fails
//!   only after 3 consecutive failures (the grace).
//! - Every `/v1` request passes the BackpressureController first: a
//!   refusal is `429 Too Many Requests` with `Retry-After` (seconds,
//!   rounded up) and a JSON body with the code `OVERLOADED`.

pub mod api;
pub mod audit;
pub mod auth;
pub mod chaos;
pub mod coverage;
pub mod error;
pub mod leader;
pub mod members;
mod page;
pub mod review;
pub mod serve;
pub mod traffic;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use bulwark_actors::flow::actors::{
    AdmissionGate, BackpressureMsg, BackpressureStatus, BulkheadGate,
};
use bulwark_actors::flow::admission::{Priority, Rejected};
use bulwark_actors::flow::health::{
    BudgetEvent, CheckStatus, ErrorBudget, Health, Kind, LatencyBudget,
};
use bulwark_actors::heatmap::{Heatmap, Level};
use bulwark_transport::{LinkStatus, Transport};
use metrics_exporter_prometheus::PrometheusHandle;
use ractor::ActorRef;
use serde::Serialize;

/// Consecutive failures before a check counts as failed.
pub const HEALTH_GRACE: u32 = 3;

/// What the handlers read: one shared [`ApiShared`], so the state every
/// middleware layer and handler takes per request is one reference count,
/// not one per field.
#[derive(Clone)]
pub struct ApiState {
    shared: Arc<ApiShared>,
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;

    fn deref(&self) -> &ApiShared {
        &self.shared
    }
}

/// The parts of [`ApiState`].
#[derive(Clone)]
pub struct ApiShared {
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
    /// The schedule API's access to the facility; `None` serves health,
    /// metrics and status only.
    pub service: Option<Arc<api::Service>>,
    /// Each component's health over the last samples ([`run_checks`]).
    pub heatmap: Arc<Mutex<Heatmap>>,
    /// The gates requests enter, asked of their actors once and kept (a
    /// restarted actor keeps its gate).
    gates: Arc<Gates>,
    /// Who may call what ([`auth`]); none configured: only the open routes
    /// answer.
    pub tokens: Arc<auth::Tokens>,
    /// The audit trail ([`audit`]); `None`: nothing is recorded.
    pub audit: Option<Arc<audit::AuditLog>>,
    /// Every request is answered within this.
    pub request_timeout: Duration,
    /// Requests and write latency over the last minutes ([`traffic`]).
    pub traffic: Arc<traffic::Traffic>,
}

/// The gate kept in `cell`, or asked of the actor `find` gives (with
/// `ask`) and kept: the flow actors keep their gate across restarts.
async fn gate_of<T: Clone + Send + 'static, M: ractor::Message>(
    cell: &std::sync::OnceLock<T>,
    find: impl FnOnce() -> Option<ActorRef<M>>,
    ask: fn(ractor::RpcReplyPort<T>) -> M,
) -> Option<T> {
    if let Some(g) = cell.get() {
        return Some(g.clone());
    }
    let g = find()?
        .call(ask, Some(Duration::from_secs(5)))
        .await
        .ok()?
        .success_or(())
        .ok()?;
    Some(cell.get_or_init(|| g).clone())
}

#[derive(Default)]
struct Gates {
    admission: std::sync::OnceLock<AdmissionGate>,
    bulkheads: std::sync::OnceLock<BulkheadGate>,
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
        h.register("leader", Kind::Ready);
        h.register("replica", Kind::Ready);
        h.register("actors", Kind::Live);
        let shared = ApiShared {
            prometheus,
            transport,
            running,
            health: Arc::new(Mutex::new(h)),
            admission,
            slo: Arc::new(Mutex::new(Slo::default())),
            service: None,
            heatmap: Arc::new(Mutex::new(Heatmap::default())),
            gates: Arc::default(),
            tokens: Arc::default(),
            audit: None,
            request_timeout: serve::Limits::default().request_timeout,
            traffic: Arc::default(),
        };
        ApiState {
            shared: Arc::new(shared),
        }
    }

    /// The parts, to change while the state is being built.
    fn parts(&mut self) -> &mut ApiShared {
        Arc::make_mut(&mut self.shared)
    }

    /// The same state answering every request within `limit` (503
    /// TIMED_OUT past it).
    pub fn with_request_timeout(mut self, limit: Duration) -> ApiState {
        self.parts().request_timeout = limit;
        self
    }

    /// The same state recording to `audit`.
    pub fn with_audit(mut self, audit: Option<Arc<audit::AuditLog>>) -> ApiState {
        self.parts().audit = audit;
        self
    }

    /// The same state admitting the callers `tokens` names.
    pub fn with_tokens(mut self, tokens: Arc<auth::Tokens>) -> ApiState {
        self.parts().tokens = tokens;
        self
    }

    /// The same state serving the schedule API through `service`.
    pub fn with_service(mut self, service: api::Service) -> ApiState {
        self.parts().service = Some(Arc::new(service));
        self
    }

    /// The running BackpressureController: looked up by name (a supervised
    /// restart makes a new actor; the one the state was built with is then
    /// dead — every request would be refused), else the one given.
    pub fn admission(&self) -> Option<ActorRef<BackpressureMsg>> {
        use bulwark_actors::flow::actors::BACKPRESSURE;
        self.service
            .as_ref()
            .and_then(|svc| {
                svc.ctx
                    .find::<BackpressureMsg>(bulwark_runtime::Zone::Flow, BACKPRESSURE)
            })
            .or_else(|| self.admission.clone())
    }

    /// The admission gate every `/v1` request enters: asked of the
    /// BackpressureController once, then kept. `None` while no controller
    /// runs (everything is admitted).
    async fn admission_gate(&self) -> Option<AdmissionGate> {
        gate_of(
            &self.gates.admission,
            || self.admission(),
            BackpressureMsg::Gate,
        )
        .await
    }

    /// The bulkhead gate, asked of the BulkheadPool once, then kept.
    async fn bulkhead_gate(&self) -> Option<BulkheadGate> {
        use bulwark_actors::flow::actors::{BulkheadMsg, BULKHEADS};
        let find = || {
            self.service
                .as_ref()?
                .ctx
                .find::<BulkheadMsg>(bulwark_runtime::Zone::Flow, BULKHEADS)
        };
        gate_of(&self.gates.bulkheads, find, BulkheadMsg::Gate).await
    }

    /// Serves `/v1/admin/chaos` with `control` (`[chaos] enabled`); without
    /// a schedule service this changes nothing.
    pub fn with_chaos(mut self, control: Arc<chaos::ChaosControl>) -> ApiState {
        let parts = self.parts();
        if let Some(svc) = parts.service.take() {
            let mut svc = (*svc).clone();
            svc.chaos = Some(control);
            parts.service = Some(Arc::new(svc));
        }
        self
    }
}

/// The router of the API.
pub fn app(state: ApiState) -> axum::Router {
    let (v1, _) = api::routes().split_for_parts();
    let v1 = v1
        .route("/status", get(status))
        .route("/heatmap", get(heatmap_json))
        .route("/heatmap.svg", get(heatmap_svg))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            bulkhead,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit));
    // Serialized once: the route is open, so each request costs a copy of
    // a reference-counted buffer, not a walk of the document.
    let openapi = axum::body::Bytes::from(
        serde_json::to_vec(&api::openapi()).expect("the OpenAPI document serializes"),
    );
    axum::Router::new()
        .route("/", get(page::page))
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .route("/health/live", get(|s| health(s, Kind::Live)))
        .route("/health/ready", get(|s| health(s, Kind::Ready)))
        .route("/health/deep", get(|s| health(s, Kind::Deep)))
        .route("/metrics", get(render_metrics))
        .nest("/v1", v1)
        // Outermost, one layer: the token and its scope (a request without
        // them costs no admission), the audit trail, the request timeout.
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// The front of every request: [`auth`] (the route's scope), then, for
/// what [`audit`] records, the trail (refused while it cannot be written;
/// the record durable before the answer), all within the request timeout.
async fn guard(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let scope = auth::required(req.method(), req.uri().path());
    let kind = match scope {
        None => "open",
        Some(auth::Scope::Read | auth::Scope::Metrics) => "read",
        Some(auth::Scope::Operator | auth::Scope::Chaos) => "operator",
        Some(_) => "write",
    };
    let resp = guarded(&s, scope, req, next).await;
    if kind != "open" {
        s.traffic
            .count(kind == "write", started.elapsed().as_micros() as u64);
    }
    metrics::counter!("bulwark_api_requests_total", "kind" => kind, "status" => status_label(resp.status()))
        .increment(1);
    metrics::histogram!("bulwark_api_request_duration_seconds", "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// The buckets of `bulwark_api_request_duration_seconds`.
pub const DURATION_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A status as a label from a fixed set (bounded cardinality).
fn status_label(s: StatusCode) -> &'static str {
    match s.as_u16() {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        c if c < 300 => "2xx",
        c if c < 500 => "4xx",
        _ => "5xx",
    }
}

async fn guarded(
    s: &ApiState,
    scope: Option<auth::Scope>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(scope) = scope else {
        return timed(s.request_timeout, next.run(req)).await;
    };
    let caller = match s.tokens.identify(req.headers(), scope) {
        Ok(c) => c,
        Err(e) => {
            if e.status == StatusCode::UNAUTHORIZED {
                metrics::counter!("bulwark_api_unauthorized_total").increment(1);
            }
            return e.into_response();
        }
    };
    let audited = s
        .audit
        .clone()
        .filter(|_| audit::audited(req.method(), req.uri().path()));
    let Some(log) = audited else {
        return match caller.require(scope) {
            Ok(()) => {
                req.extensions_mut().insert(caller);
                timed(s.request_timeout, next.run(req)).await
            }
            Err(e) => e.into_response(),
        };
    };
    if !log.healthy() && !log.probe().await {
        return audit::unavailable().into_response();
    }
    let pending = audit::Pending::of(&req, &caller);
    // Run and record on a task of its own: a client that goes away drops
    // this future, but a write it started is still recorded.
    let limit = s.request_timeout;
    let task = tokio::spawn(async move {
        let resp = match caller.require(scope) {
            Ok(()) => {
                req.extensions_mut().insert(caller);
                timed(limit, next.run(req)).await
            }
            Err(e) => e.into_response(),
        };
        pending.record(&log, resp).await
    });
    match task.await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::error!(error = %e, "an audited request's task failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// `run`, answered 503 TIMED_OUT past `limit`.
async fn timed(limit: Duration, run: impl std::future::Future<Output = Response>) -> Response {
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r,
        Err(_) => {
            metrics::counter!("bulwark_api_request_timeouts_total").increment(1);
            error::ApiError::unavailable(
                "TIMED_OUT",
                format!(
                    "no answer within the server's {} ms request limit",
                    limit.as_millis()
                ),
                1_000,
            )
            .into_response()
        }
    }
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
    /// The replica (the applied schedule) opened: the facility is not
    /// quarantined.
    pub replica: Result<(), String>,
    /// The actors that must answer do (liveness).
    pub actors: Result<(), String>,
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
            h.report("replica", p.replica);
            h.report("actors", p.actors);
        }
        let levels = sample(&state).await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        state
            .heatmap
            .lock()
            .expect("heatmap lock")
            .record(now_ms, levels);
        state.traffic.sample(now_ms);
        tokio::time::sleep(every).await;
    }
    let mut h = state.health.lock().expect("health lock");
    for _ in 0..HEALTH_GRACE {
        h.report("tree", Err("the supervision tree stopped".into()));
    }
}

/// 429 with `Retry-After` for a refusal from the admission controller.
pub fn overloaded(r: Rejected) -> Response {
    error::ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "OVERLOADED",
        format!("admission refused: {}", r.reason),
    )
    .retry(r.retry_after_ms)
    .into_response()
}

tokio::task_local! {
    /// When the request being served arrived, before any queue: a write's
    /// deadline runs from here ([`arrived`]).
    static ARRIVED: tokio::time::Instant;
}

/// When the request being served arrived (now, outside a request).
pub fn arrived() -> tokio::time::Instant {
    ARRIVED
        .try_with(|t| *t)
        .unwrap_or_else(|_| tokio::time::Instant::now())
}

async fn admit(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let t = tokio::time::Instant::now();
    let resp = ARRIVED.scope(t, admitted(&s, req, next)).await;
    let latency_ms = t.elapsed().as_millis() as u64;
    s.slo
        .lock()
        .expect("slo lock")
        .record(resp.status(), latency_ms);
    resp
}

async fn admitted(s: &ApiState, req: Request, next: Next) -> Response {
    // Operator requests (the cluster view, chaos levers, backups) skip the
    // admission queue: their own protected bulkhead pool bounds them, and
    // an overloaded facility must still show what is wrong with it (found
    // by the slow-disk chaos experiment: the view was shed with the writes).
    if pool_of(req.method(), req.uri().path()) == "operator" {
        return next.run(req).await;
    }
    let Some(gate) = s.admission_gate().await else {
        return next.run(req).await;
    };
    // In process (no mailbox round trip); the permit frees its slot
    // however the request ends: completed, or dropped when its client
    // went away (a cancelled request never keeps its slot).
    let permit = match gate
        .admit_as(priority_of(req.method(), req.uri().path()))
        .await
    {
        Ok(p) => p,
        Err(r) => return overloaded(r),
    };
    let resp = next.run(req).await;
    permit.complete();
    resp
}

/// The order a request waits in when admission is saturated: approvals,
/// leave and emergency coverage first, then routine writes, then reads
/// (the operator's requests do not wait: [`admitted`]).
fn priority_of(method: &axum::http::Method, path: &str) -> Priority {
    match (method == axum::http::Method::POST, path) {
        (true, "/approvals" | "/leave" | "/emergency") => Priority::Approval,
        (true, _) => Priority::Write,
        (false, _) => Priority::Read,
    }
}

/// The API's bulkhead pools for `concurrency` requests at once: writes
/// 40%, reads 40% (each reserving half and borrowing up to half), the
/// operator endpoints 10% (reserved and protected, so a flood of writes
/// never hides the cluster view), and 10% flex.
pub fn api_pools(concurrency: u32) -> bulwark_actors::flow::bulkhead::Pools {
    use bulwark_actors::flow::bulkhead::{PoolSpec, Pools};
    let part = |pct: u32| (concurrency * pct / 100).max(1);
    let open = |capacity: u32| PoolSpec {
        capacity,
        reserved: capacity / 2,
        borrow_limit: capacity / 2,
        protected: false,
    };
    let operator = part(10);
    let specs = std::collections::BTreeMap::from([
        ("writes".to_string(), open(part(40))),
        ("reads".to_string(), open(part(40))),
        (
            "operator".to_string(),
            PoolSpec {
                capacity: operator,
                reserved: operator,
                borrow_limit: 0,
                protected: true,
            },
        ),
    ]);
    Pools::new(specs, part(10)).expect("the API split is valid")
}

/// The bulkhead pool a `/v1` request draws from.
fn pool_of(method: &axum::http::Method, path: &str) -> &'static str {
    if path.starts_with("/admin") {
        // Backups and chaos levers: the operator's, even as POSTs (a
        // rollback must get through a load spike).
        "operator"
    } else if method == axum::http::Method::POST {
        "writes"
    } else if ["/cluster", "/status", "/heatmap", "/heatmap.svg"].contains(&path) {
        // The views an operator reads during an incident.
        "operator"
    } else {
        // Every other read: the schedule, people, blocks, ledger,
        // evidence, coverage (person reads used to fall through to the
        // operator's reserve, which has no admission queue).
        "reads"
    }
}

/// Takes one unit of the request's pool (in process) for the request's
/// length; a refusal is 429 naming the pool. Without a running
/// BulkheadPool every request is let through.
async fn bulkhead(State(s): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(gate) = s.bulkhead_gate().await else {
        return next.run(req).await;
    };
    let pool = pool_of(req.method(), req.uri().path());
    let _held = match gate.acquire(pool, 1) {
        Ok(h) => h,
        Err(e) => {
            return error::ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "OVERLOADED",
                format!("bulkhead {pool}: {e}"),
            )
            .retry(1_000)
            .into_response()
        }
    };
    next.run(req).await
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
    /// The last minutes, a sample a second.
    traffic: Vec<traffic::Sample>,
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
    let admission = match &s.admission() {
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
        traffic: s.traffic.samples(),
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

/// Each component's level now: the health checks (failing within the
/// grace: degraded; failed: critical), the partition state, each peer's
/// liveness, the breakers and the admission pressure.
pub async fn sample(state: &ApiState) -> Vec<(String, Level)> {
    let mut out: Vec<(String, Level)> = {
        let h = state.health.lock().expect("health lock");
        h.status()
            .into_iter()
            .map(|c| {
                let l = match (c.healthy, c.consecutive_failures) {
                    (true, 0) => Level::Healthy,
                    (true, _) => Level::Degraded,
                    (false, _) => Level::Critical,
                };
                (c.name, l)
            })
            .collect()
    };
    if let Ok(c) = api::cluster_status(state).await {
        out.push((
            "partition".into(),
            match c.partition.as_str() {
                "CONNECTED" => Level::Healthy,
                "MAJORITY" => Level::Degraded,
                "MINORITY" => Level::Warning,
                _ => Level::Critical,
            },
        ));
        for p in &c.peers {
            let l = match p.liveness.as_str() {
                "up" => Level::Healthy,
                "suspect" => Level::Warning,
                _ => Level::Critical,
            };
            out.push((format!("peer:{}", p.id), l));
        }
        let here: Vec<_> = c
            .breakers
            .iter()
            .filter(|b| b.facility == c.facility)
            .collect();
        let breakers = if here
            .iter()
            .any(|b| b.state == "open" || b.state == "forced_open")
        {
            Level::Warning
        } else if here.iter().any(|b| b.state != "closed") {
            Level::Degraded
        } else {
            Level::Healthy
        };
        out.push(("breakers".into(), breakers));
        if let Some(p) = c.admission_pressure {
            let l = if p < 0.5 {
                Level::Healthy
            } else if p < 0.8 {
                Level::Degraded
            } else if p < 0.95 {
                Level::Warning
            } else {
                Level::Critical
            };
            out.push(("admission".into(), l));
        }
    }
    out
}

async fn heatmap_json(State(s): State<ApiState>) -> Json<Heatmap> {
    Json(s.heatmap.lock().expect("heatmap lock").clone())
}

async fn heatmap_svg(State(s): State<ApiState>) -> Response {
    let title = match &s.service {
        Some(svc) => format!("{} health", svc.ctx.facility),
        None => "health".to_string(),
    };
    let svg = s.heatmap.lock().expect("heatmap lock").render_svg(&title);
    ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
}

/// The cluster view as text, for `bulwark status`.
pub fn render_status(c: &api::ClusterStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "facility {}  leader {}  term {}  commit {}  partition {}",
        c.facility,
        c.leader.as_deref().unwrap_or("none"),
        c.term.map_or("-".into(), |t| t.to_string()),
        c.commit.map_or("-".into(), |t| t.to_string()),
        c.partition
    );
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<10} {:<9} {:>8} {:>5}",
        "FACILITY", "ROLE", "LINK", "LIVENESS", "PHI", "WIRE"
    );
    let role = |id: &str| {
        if c.leader.as_deref() == Some(id) {
            "leader"
        } else {
            "follower"
        }
    };
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<10} {:<9} {:>8} {:>5}",
        c.facility,
        role(&c.facility),
        "self",
        "up",
        "-",
        "-"
    );
    for p in &c.peers {
        let phi = if p.phi > 1e12 {
            "inf".to_string()
        } else {
            format!("{:.2}", if p.phi > 0.0 { p.phi } else { 0.0 })
        };
        // 0: a node from before version 6 does not report it.
        let wire = match p.wire {
            0 => "-".to_string(),
            w => w.to_string(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:<10} {:<9} {:>8} {:>5}",
            p.id,
            role(&p.id),
            p.link,
            p.liveness,
            phi,
            wire
        );
    }
    if let Some(l) = &c.ledger {
        let _ = writeln!(
            out,
            "ledger height {}  head {}  evidence {}",
            l.height,
            &l.hash[..l.hash.len().min(16)],
            l.evidence
        );
        if !l.peers.is_empty() {
            let heads: Vec<String> = l.peers.iter().map(|(f, h)| format!("{f} {h}")).collect();
            let _ = writeln!(out, "peers' ledger heights: {}", heads.join(", "));
        }
    }
    // Every facility's breakers toward every peer add up (12 a facility
    // in a cluster of four): the closed ones are counted, the others listed.
    let closed = c.breakers.iter().filter(|b| b.state == "closed").count();
    if !c.breakers.is_empty() {
        let _ = writeln!(out, "breakers: {closed} of {} closed", c.breakers.len());
    }
    for b in c.breakers.iter().filter(|b| b.state != "closed") {
        let _ = writeln!(out, "breaker {}:{} {}", b.facility, b.dependency, b.state);
    }
    for b in &c.bulkheads {
        let _ = writeln!(
            out,
            "bulkhead {} {}/{} (reserved {}, refused {})",
            b.name, b.allocated, b.capacity, b.reserved, b.rejections
        );
    }
    out
}

#[cfg(test)]
mod tests {

    use super::{pool_of, priority_of, timed};
    use axum::http::{Method, StatusCode};
    use axum::response::IntoResponse;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_request_past_the_limit_is_answered_timed_out() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late".into_response()
        };
        let r = timed(Duration::from_millis(100), slow).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(r.into_body(), 4096).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("TIMED_OUT"));
        let quick = async { "ok".into_response() };
        assert_eq!(
            timed(Duration::from_millis(100), quick).await.status(),
            StatusCode::OK
        );
    }

    #[test]
    fn each_request_draws_from_its_pool_and_admin_posts_are_the_operators() {
        assert_eq!(pool_of(&Method::POST, "/assignments"), "writes");
        assert_eq!(pool_of(&Method::GET, "/schedule"), "reads");
        assert_eq!(pool_of(&Method::GET, "/coverage"), "reads");
        assert_eq!(pool_of(&Method::GET, "/people/p1"), "reads");
        assert_eq!(pool_of(&Method::GET, "/blocks/b1"), "reads");
        assert_eq!(pool_of(&Method::GET, "/cluster"), "operator");
        assert_eq!(pool_of(&Method::GET, "/status"), "operator");
        assert_eq!(pool_of(&Method::GET, "/heatmap.svg"), "operator");
        assert_eq!(pool_of(&Method::POST, "/admin/chaos"), "operator");
        assert_eq!(pool_of(&Method::POST, "/admin/backup"), "operator");
    }

    #[test]
    fn approvals_wait_ahead_of_writes_and_writes_ahead_of_reads() {
        use bulwark_actors::flow::admission::Priority;
        for p in ["/approvals", "/leave", "/emergency"] {
            assert_eq!(priority_of(&Method::POST, p), Priority::Approval, "{p}");
        }
        for p in ["/people", "/assignments", "/swaps", "/batch"] {
            assert_eq!(priority_of(&Method::POST, p), Priority::Write, "{p}");
        }
        assert_eq!(priority_of(&Method::GET, "/approvals"), Priority::Read);
        assert_eq!(priority_of(&Method::GET, "/schedule"), Priority::Read);
    }

    /// `bulwark status` counts the closed breakers and lists the others.
    #[test]
    fn status_text_counts_closed_breakers_and_lists_the_rest() {
        let b = |f: &str, d: &str, st: &str| serde_json::json!({"facility": f, "dependency": d, "state": st});
        let c: super::api::ClusterStatus = serde_json::from_value(serde_json::json!({
            "facility": "alpha", "members": [], "leader": "bravo", "term": 2, "commit": 5,
            "applied": 5, "partition": "CONNECTED", "peers": [],
            "breakers": [b("alpha", "forward@bravo", "closed"), b("alpha", "snapshot@bravo", "open"),
                b("charlie", "ledger_fetch@bravo", "closed")],
            "bulkheads": [], "admission_pressure": 0.0, "ledger": null
        }))
        .unwrap();
        let text = super::render_status(&c);
        assert!(text.contains("breakers: 2 of 3 closed\n"), "{text}");
        assert!(
            text.contains("breaker alpha:snapshot@bravo open\n"),
            "{text}"
        );
        assert!(!text.contains("forward@bravo"), "{text}");
    }

    /// Each peer's wire version shows in `bulwark status`; an answer from a
    /// node older than version 6 has none and still reads.
    #[test]
    fn status_text_shows_each_links_wire_version_and_reads_older_answers() {
        let c: super::api::ClusterStatus = serde_json::from_value(serde_json::json!({
            "facility": "alpha", "members": [], "leader": "alpha", "term": 2, "commit": 5,
            "applied": 5, "partition": "CONNECTED",
            "peers": [
                {"id": "bravo", "link": "up", "phi": 0.5, "liveness": "up", "wire": 6},
                {"id": "charlie", "link": "up", "phi": 0.5, "liveness": "up"}
            ],
            "breakers": [], "bulkheads": [], "admission_pressure": 0.0, "ledger": null
        }))
        .unwrap();
        let text = super::render_status(&c);
        let row = |id: &str| {
            text.lines()
                .find(|l| l.starts_with(id))
                .unwrap()
                .to_string()
        };
        assert!(row("bravo").ends_with(" 6"), "{text}");
        assert!(row("charlie").ends_with(" -"), "{text}");
        assert!(text.contains("WIRE"), "{text}");
    }
}
