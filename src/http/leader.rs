//! Leadership transfer over HTTP (`operator` scope): `POST
//! /v1/admin/leader` with `{"to": "bravo"}` asks the cluster to hand
//! leadership to that voter, and answers once it leads (or why not).
//! `bulwark leader transfer --to bravo` drives it. Any facility takes it:
//! a follower passes the request to the leader (raft-rs forwards a
//! transfer), and the leader hands over once the target holds its whole
//! log.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bulwark_actors::raft::{RaftMsg, RaftStatus, RAFT};
use bulwark_runtime::Zone;
use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{decode_json, service};
use super::error::{ApiError, ErrorBody};
use super::ApiState;

/// Longest wait for leadership to move.
pub const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// How often the RaftPeer is asked meanwhile.
const POLL: Duration = Duration::from_millis(50);

/// Where leadership should go.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// A voter's facility id.
    pub to: String,
}

/// Leadership after the transfer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransferAnswer {
    /// The leader now.
    pub leader: String,
    /// Its term.
    pub term: u64,
    /// Whether it moved (false: the target led already).
    pub moved: bool,
}

/// Hands leadership to a voter.
#[utoipa::path(
    post,
    path = "/admin/leader",
    tag = "operations",
    request_body = TransferBody,
    responses(
        (status = 200, description = "The target leads", body = TransferAnswer),
        (status = 400, description = "BAD_REQUEST: not a facility id, or not a voter", body = ErrorBody),
        (status = 503, description = "NO_LEADER: none known to hand over from; TIMED_OUT: it did not move within 5 s (the target is behind, unreachable or vote-fenced); UNAVAILABLE", body = ErrorBody),
    )
)]
pub(crate) async fn post_leader(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<Json<TransferAnswer>, ApiError> {
    let svc = service(&s)?;
    let TransferBody { to } = decode_json(&body)?;
    let to: FacilityId = to
        .parse()
        .map_err(|e| ApiError::bad("to", format!("{e}")))?;
    let raft = svc
        .ctx
        .find::<RaftMsg>(Zone::Consensus, RAFT)
        .ok_or_else(no_raft)?;
    let status = |raft: ractor::ActorRef<RaftMsg>| async move {
        ractor::call!(raft, RaftMsg::Status).map_err(|_| no_raft())
    };
    let before: RaftStatus = status(raft.clone()).await?;
    if !before.voters.contains(&to) {
        return Err(ApiError::bad(
            "to",
            format!("{to} is not a voter (voters: {:?})", before.voters),
        ));
    }
    let Some(leader) = before.leader.clone() else {
        return Err(ApiError::unavailable(
            "NO_LEADER",
            "no leader is known here to hand over from; try again",
            1_000,
        ));
    };
    if leader == to {
        return Ok(Json(TransferAnswer {
            leader: to.to_string(),
            term: before.term,
            moved: false,
        }));
    }
    tracing::warn!(from = %leader, %to, "leadership transfer asked by an operator");
    raft.cast(RaftMsg::TransferLeader(to.clone()))
        .map_err(|_| no_raft())?;
    let until = tokio::time::Instant::now() + TRANSFER_WAIT;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(POLL).await;
        let now = status(raft.clone()).await?;
        if now.leader.as_ref() == Some(&to) {
            return Ok(Json(TransferAnswer {
                leader: to.to_string(),
                term: now.term,
                moved: true,
            }));
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "TIMED_OUT",
        format!(
            "leadership did not move from {leader} to {to} within {} s: {to} may be behind, unreachable or vote-fenced (see /v1/cluster)",
            TRANSFER_WAIT.as_secs()
        ),
    ))
}

fn no_raft() -> ApiError {
    ApiError::unavailable("UNAVAILABLE", "the RaftPeer does not answer", 1_000)
}
