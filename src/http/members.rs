//! Membership over HTTP (`operator` scope). `GET /v1/admin/members` lists
//! the Raft identities in this facility's configuration; `POST
//! /v1/admin/members` with `{"facility": "bravo", "action": "replace"}`
//! adds bravo's next incarnation as a learner (how a facility whose store
//! was lost comes back: docs/OPERATIONS.md), and `"action": "promote"`
//! makes that learner a voter once it has caught up, removing the old
//! identity; `"action": "add"` adds a configured facility that is in no
//! Raft configuration yet (started with `initial_cluster_state =
//! "existing"`) as a learner. Any facility takes a change: a follower passes it to the
//! leader. `bulwark member list|replace|promote` drives them.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bulwark_actors::raft::{MemberChange, MemberView, RaftMsg, RAFT};
use bulwark_runtime::Zone;
use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::api::{decode_json, service};
use super::error::{ApiError, ErrorBody};
use super::ApiState;

/// Longest wait for a change to show in this facility's configuration.
pub const CHANGE_WAIT: Duration = Duration::from_secs(10);

/// How often the RaftPeer is asked meanwhile.
const POLL: Duration = Duration::from_millis(50);

/// One Raft identity in the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Member {
    /// The facility.
    pub facility: String,
    /// Which of its identities (0: its first; each replacement adds one).
    pub incarnation: u64,
    /// `voter`, `learner`, or `outgoing` (a voter of the old side of a
    /// joint configuration only).
    pub role: String,
    /// How far its log matches the leader's (answered by the leader only).
    pub matched: Option<u64>,
}

/// The configuration as this facility knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MembersAnswer {
    /// This facility.
    pub facility: String,
    /// The leader, if known.
    pub leader: Option<String>,
    /// The commit index here.
    pub commit: u64,
    /// A joint configuration is in force.
    pub joint: bool,
    /// Every identity, by facility and incarnation.
    pub members: Vec<Member>,
}

/// A change of the members.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    /// A configured facility.
    pub facility: String,
    /// `replace`, `add` or `promote`.
    #[schema(value_type = String)]
    pub action: MemberChange,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChangeAnswer {
    /// Proposed by the leader, or passed to it.
    pub done: String,
    /// Whether the change shows in this facility's configuration yet.
    pub in_force: bool,
    /// The configuration after it (as far as it shows here).
    pub members: MembersAnswer,
}

fn no_raft() -> ApiError {
    ApiError::unavailable("UNAVAILABLE", "the RaftPeer is not running", 1_000)
}

async fn members_of(raft: &ractor::ActorRef<RaftMsg>) -> Result<MembersAnswer, ApiError> {
    let status = ractor::call!(raft, RaftMsg::Status).map_err(|_| no_raft())?;
    let view: Vec<MemberView> = ractor::call!(raft, RaftMsg::Members).map_err(|_| no_raft())?;
    Ok(MembersAnswer {
        facility: status.facility.to_string(),
        leader: status.leader.map(|l| l.to_string()),
        commit: status.commit,
        joint: status.joint,
        members: view
            .into_iter()
            .map(|m| Member {
                facility: m.facility.to_string(),
                incarnation: m.incarnation,
                role: m.role,
                matched: m.matched,
            })
            .collect(),
    })
}

/// Whether `change` of `f` shows in `m`, against `before` (the
/// configuration when it was asked): a learner of a newer incarnation than
/// any before (replace, add); the learner seen before now `f`'s only
/// identity, a voter, outside a joint configuration (promote).
fn in_force(before: &MembersAnswer, m: &MembersAnswer, f: &str, change: MemberChange) -> bool {
    let of = |a: &MembersAnswer| -> Vec<Member> {
        a.members
            .iter()
            .filter(|x| x.facility == f)
            .cloned()
            .collect()
    };
    let (was, now) = (of(before), of(m));
    match change {
        MemberChange::Replace | MemberChange::Add => {
            let top = was.iter().map(|x| x.incarnation).max();
            now.iter()
                .any(|x| x.role == "learner" && top.is_none_or(|t| x.incarnation > t))
        }
        MemberChange::Remove => now.is_empty(),
        MemberChange::Promote => {
            let Some(k) = was
                .iter()
                .filter(|x| x.role == "learner")
                .map(|x| x.incarnation)
                .max()
            else {
                return false;
            };
            !m.joint && now.len() == 1 && now[0].role == "voter" && now[0].incarnation == k
        }
    }
}

/// The Raft identities in this facility's configuration.
#[utoipa::path(
    get,
    path = "/admin/members",
    tag = "operations",
    responses(
        (status = 200, description = "The configuration as known here", body = MembersAnswer),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    )
)]
pub(crate) async fn get_members(
    State(s): State<ApiState>,
) -> Result<Json<MembersAnswer>, ApiError> {
    let svc = service(&s)?;
    let raft = svc
        .ctx
        .find::<RaftMsg>(Zone::Consensus, RAFT)
        .ok_or_else(no_raft)?;
    Ok(Json(members_of(&raft).await?))
}

/// Replaces a facility's Raft identity (its next incarnation joins as a
/// learner) or promotes that learner to voter.
#[utoipa::path(
    post,
    path = "/admin/members",
    tag = "operations",
    request_body = ChangeBody,
    responses(
        (status = 200, description = "In force here", body = ChangeAnswer),
        (status = 202, description = "Proposed or passed on; not yet in force here (see GET)", body = ChangeAnswer),
        (status = 400, description = "BAD_REQUEST: not a facility id, or an unknown action", body = ErrorBody),
        (status = 409, description = "MEMBER_CHANGE_REFUSED: the leader refused it (not caught up, a change in progress, a learner waiting, the leader replacing itself), named", body = ErrorBody),
        (status = 503, description = "NO_LEADER; UNAVAILABLE", body = ErrorBody),
    )
)]
pub(crate) async fn post_members(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, Json<ChangeAnswer>), ApiError> {
    let svc = service(&s)?;
    let ChangeBody { facility, action } = decode_json(&body)?;
    let f: FacilityId = facility
        .parse()
        .map_err(|e| ApiError::bad("facility", format!("{e}")))?;
    let raft = svc
        .ctx
        .find::<RaftMsg>(Zone::Consensus, RAFT)
        .ok_or_else(no_raft)?;
    // A facility leaves the validator set before it leaves for good: a
    // removed facility that still counts toward the quorum would never
    // vote again.
    if action == MemberChange::Remove {
        let epochs = bulwark_actors::bft::LedgerStore::new(svc.ctx.store.clone())
            .epochs(&svc.keys)
            .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
        if epochs.newest().keys().get(&f).is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "MEMBER_CHANGE_REFUSED",
                format!(
                    "{f} is still a validator (epoch {}): bulwark validator remove --facility {f} first",
                    epochs.newest().number
                ),
            ));
        }
    }
    tracing::warn!(facility = %f, ?action, "membership change asked by an operator");
    let before = members_of(&raft).await?;
    let taken = ractor::call!(raft, |reply| RaftMsg::ChangeMember {
        facility: f.clone(),
        change: action,
        reply,
    })
    .map_err(|_| no_raft())?;
    let done = match taken {
        Ok(done) => done,
        Err(e) if e.starts_with("no leader") => {
            return Err(ApiError::unavailable("NO_LEADER", e, 1_000));
        }
        Err(e) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "MEMBER_CHANGE_REFUSED",
                e,
            ))
        }
    };
    let until = tokio::time::Instant::now() + CHANGE_WAIT;
    loop {
        let members = members_of(&raft).await?;
        let shown = in_force(&before, &members, f.as_str(), action);
        if shown || tokio::time::Instant::now() >= until {
            let code = if shown {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            return Ok((
                code,
                Json(ChangeAnswer {
                    done,
                    in_force: shown,
                    members,
                }),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}
