//! The facility's HTTP surface: `/health/live`, `/health/ready`, `/metrics`.
//!
//! Bound to localhost by default (the config's `http_listen`). Liveness is
//! "the process answers"; readiness is "the supervision tree runs and at
//! least a majority of the cluster (counting this facility) is linked".

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use bulwark_transport::{LinkStatus, Transport};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// Renders the Prometheus text.
    pub prometheus: PrometheusHandle,
    /// The transport, for link states.
    pub transport: Arc<dyn Transport>,
    /// False once the supervision tree has stopped.
    pub running: Arc<AtomicBool>,
}

/// The router of the API.
pub fn app(state: ApiState) -> axum::Router {
    axum::Router::new()
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

async fn ready(State(s): State<ApiState>) -> (StatusCode, String) {
    let peers = s.transport.peers();
    let up = peers
        .iter()
        .filter(|p| s.transport.link_status(p) == LinkStatus::Up)
        .count();
    let cluster = peers.len() + 1;
    let linked = up + 1;
    let running = s.running.load(Ordering::Relaxed);
    let body = format!("running={running} linked={linked}/{cluster}\n");
    if running && linked * 2 > cluster {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn render_metrics(State(s): State<ApiState>) -> String {
    s.prometheus.render()
}
