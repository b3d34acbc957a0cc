//! The status page at `/`: one page that shows the cluster, the leader,
//! each peer's φ and liveness, breakers, bulkheads, the ledger head and
//! the health heatmap, from `/v1/cluster` and `/v1/heatmap`, refreshed
//! every 2 s by its own script (no external assets).

use axum::response::Html;

/// The page.
pub async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
