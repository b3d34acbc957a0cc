//! The healer's review queue over HTTP (`operator` scope): the changes
//! this facility accepted while cut off that met a conflict on heal under
//! `conflict_policy = "manual_review"`, and the operator's decision on
//! each. `bulwark review list|resolve` drives these.
//!
//! - `GET /v1/admin/reviews`: the queued changes, oldest first.
//! - `POST /v1/admin/reviews/{id}` with `{"accept": true|false}`: accept
//!   (emergency coverage replaces the block's latest holder, through
//!   consensus) or refuse (superseded by the operator). The answer is the
//!   reconciliation report of the decision.
//!
//! Each facility queues its own provisional changes: ask the facility that
//! took them.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use bulwark_actors::cap::heal::{HealerMsg, ResolveError, HEALER};
use bulwark_actors::cap::store::Provisional;
use bulwark_runtime::Zone;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{decode_json, service, Service};
use super::error::{ApiError, ErrorBody};
use super::ApiState;

/// Longest wait for the healer (a decision runs through consensus).
const HEALER_WAIT: Duration = Duration::from_secs(10);

/// A change waiting for an operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReviewView {
    /// Its id at this facility (what `resolve` takes).
    pub id: u64,
    /// The facility that accepted it.
    pub facility: String,
    /// When it was accepted (unix ms, the accepting facility's clock).
    pub at_unix_ms: u64,
    /// The operation's name (`emergency`, `swap`, …).
    pub operation: String,
    /// The partition state it was accepted in.
    pub partition: String,
    /// The whole command as recorded.
    #[schema(value_type = Object)]
    pub command: serde_json::Value,
}

impl ReviewView {
    fn of(p: &Provisional) -> ReviewView {
        ReviewView {
            id: p.id,
            facility: p.facility.to_string(),
            at_unix_ms: p.command.at_unix_ms,
            operation: p.command.op.name().to_string(),
            partition: format!("{:?}", p.state).to_lowercase(),
            command: serde_json::to_value(&p.command).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// The queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReviewList {
    /// Oldest first.
    pub reviews: Vec<ReviewView>,
}

/// An operator's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    /// Accept the change (it replaces the block's holder) or refuse it.
    pub accept: bool,
}

/// What the decision did: the reconciliation report's one item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResolveAnswer {
    /// The reconciliation round that recorded it.
    pub round: u64,
    /// The change.
    pub id: u64,
    /// `WON` (accepted, the holder replaced) or `SUPERSEDED` (refused).
    pub resolution: String,
    /// The report's text.
    pub report: String,
}

fn healer(svc: &Service) -> Result<ractor::ActorRef<HealerMsg>, ApiError> {
    svc.ctx
        .find::<HealerMsg>(Zone::Consensus, HEALER)
        .ok_or_else(|| {
            ApiError::unavailable(
                "UNAVAILABLE",
                "no healer runs on this facility (no failure detector configured)",
                60_000,
            )
        })
}

fn no_answer() -> ApiError {
    ApiError::unavailable(
        "UNAVAILABLE",
        "the healer did not answer in time; list the queue again before deciding again",
        1_000,
    )
}

/// The changes waiting for an operator's decision at this facility.
#[utoipa::path(
    get,
    path = "/admin/reviews",
    tag = "operations",
    responses(
        (status = 200, description = "The queue, oldest first", body = ReviewList),
        (status = 503, description = "UNAVAILABLE: no healer here, or it did not answer", body = ErrorBody),
    )
)]
pub(crate) async fn get_reviews(State(s): State<ApiState>) -> Result<Json<ReviewList>, ApiError> {
    let h = healer(service(&s)?)?;
    let queued = h
        .call(HealerMsg::Reviews, Some(HEALER_WAIT))
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .ok_or_else(no_answer)?;
    Ok(Json(ReviewList {
        reviews: queued.iter().map(ReviewView::of).collect(),
    }))
}

/// Accepts or refuses one queued change.
#[utoipa::path(
    post,
    path = "/admin/reviews/{id}",
    tag = "operations",
    params(("id" = u64, Path, description = "The change's id (from the list)")),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "Decided and recorded", body = ResolveAnswer),
        (status = 400, description = "A bad id or body", body = ErrorBody),
        (status = 404, description = "NOT_FOUND: no such change waits for review", body = ErrorBody),
        (status = 409, description = "NOT_ACCEPTABLE: only emergency coverage can be accepted over a holder", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: not decided or not recorded now; list the queue again before deciding again", body = ErrorBody),
    )
)]
pub(crate) async fn post_review(
    State(s): State<ApiState>,
    id: Result<Path<u64>, PathRejection>,
    body: Bytes,
) -> Result<Json<ResolveAnswer>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad("id", e.body_text()))?;
    let ResolveBody { accept } = decode_json(&body)?;
    let h = healer(service(&s)?)?;
    let decided = h
        .call(
            |reply| HealerMsg::Resolve { id, accept, reply },
            Some(HEALER_WAIT),
        )
        .await
        .ok()
        .and_then(|r| r.success_or(()).ok())
        .ok_or_else(no_answer)?;
    let report = decided.map_err(|e| match e {
        ResolveError::NotQueued(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", e.to_string())
        }
        ResolveError::NotAcceptable => {
            ApiError::new(StatusCode::CONFLICT, "NOT_ACCEPTABLE", e.to_string())
        }
        ResolveError::Unavailable(_) => ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000),
    })?;
    let item = report.items.iter().find(|i| i.id == id);
    Ok(Json(ResolveAnswer {
        round: report.round,
        id,
        resolution: item.map_or("", |i| i.resolution.code()).to_string(),
        report: report.render(),
    }))
}
