//! The schedule API under `/v1`: writes through the CapGate, reads with
//! their staleness, the cluster view, the ledger with its certificates,
//! evidence, and the OpenAPI document generated from these handlers'
//! annotations (`/v1/openapi.json`), so it cannot drift from them.
//!
//! Writes:
//! - need a bearer token with the route's scope ([`super::auth`]: reads
//!   need `read` too), an `Idempotency-Key` header (1 to 128 visible ASCII characters) and a
//!   JSON body of at most [`BODY_LEN_MAX`] bytes with no unknown field;
//! - a retry with the same key and body gets the first answer again (from
//!   the durable idempotency store, kept [`IDEMPOTENCY_TTL_MS`]); the same
//!   key with another body is refused (422 KEY_REUSED); the key also
//!   becomes the schedule command's key, so a retry at another facility
//!   applies once too;
//! - may carry a `Bulwark-Timeout-Ms` budget (default and most:
//!   [`WRITE_TIMEOUT`]); the deadline it makes rides in every envelope the
//!   write causes, shrinking at each hop, and expired work is dropped and
//!   counted (`bulwark_deadline_expired_total`);
//! - go through the CapGate: CP operations in a minority answer 503
//!   PARTITIONED with the state and the mode; AP operations there answer
//!   202 with the provisional change.
//!
//! Bad input changes nothing: every check runs before the gate sees the
//! command, and nothing is remembered for a refused request.

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bulwark_actors::bft::{self, BftMsg, LedgerStore};
use bulwark_actors::cap::gate::{GateMsg, GateOutcome, ReadError, Staleness, CAP_GATE};
use bulwark_actors::cap::Consistency;
use bulwark_actors::detect::Detection;
use bulwark_actors::flow::actors::{BackpressureMsg, BulkheadMsg, BULKHEADS};
use bulwark_actors::flow::idempotency::{IdempotencyStore, Lookup};
use bulwark_actors::flow::mesh::{BreakerMsg, BREAKERS};
use bulwark_actors::flow::retry::{
    decide, Backoff, Class, Decision as RetryDecision, Jitter, RetryBudget,
};
use bulwark_actors::hlc::Hlc;
use bulwark_actors::keys::PublicKeys;
use bulwark_actors::ledger::{self, LedgerEntry, GENESIS};
use bulwark_actors::raft::{ProposeOutcome, RaftMsg, RaftStatus, RAFT};
use bulwark_actors::replica::ScheduleView as ReplicaView;
use bulwark_actors::schedule::{
    Block, BlockId, Command, Effect, IdempotencyKey, Op, Outcome, Person, PersonId, Pool, Role,
    Schedule, ScheduleState, TablesRead, BATCH_OPS_MAX,
};
use bulwark_runtime::{NodeCtx, Zone};
use bulwark_storage::codec;
use bulwark_transport::{FacilityId, LinkStatus};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{json_error, ApiError, ErrorBody};
use super::ApiState;

/// Largest request body, in bytes.
pub const BODY_LEN_MAX: usize = 64 * 1024;
/// Largest `Idempotency-Key`, in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;
/// How long an idempotency key's answer is kept: 24 h.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;
/// How long a write waits for its outcome.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a read or a status call waits.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// The header of replayed answers.
pub const REPLAYED: &str = "idempotent-replayed";

/// What the schedule API needs of the facility.
#[derive(Clone)]
pub struct Service {
    /// The node's context: its actors, its store, its clock.
    pub ctx: NodeCtx,
    /// Every member, this facility included.
    pub members: Vec<FacilityId>,
    /// Every facility's vote key (ledger entries are verified before they
    /// are served).
    pub keys: PublicKeys,
    /// What the failure detector knows.
    pub detection: Option<Detection>,
    /// Answers of writes by idempotency key.
    pub idempotency: IdempotencyStore,
    /// Where `POST /v1/admin/backup` writes; `None`: refused.
    pub backup: Option<std::sync::Arc<crate::backup::Checkpoints>>,
    /// The chaos levers (`/v1/admin/chaos`); `None`: chaos disabled.
    pub chaos: Option<std::sync::Arc<super::chaos::ChaosControl>>,
    /// The budget of the writes this facility submits again on a client's
    /// behalf ([`Resubmit`]).
    pub retries: std::sync::Arc<std::sync::Mutex<RetryBudget>>,
}

/// When a write whose proposal went nowhere is submitted again inside its
/// own deadline: a leader change under it (no leader known, or the
/// leader it was forwarded to lost leadership: the answer is NO_LEADER or
/// an early TIMED_OUT). The same command key applies once however often it
/// is proposed, so a second proposal is safe; the budget (10% of writes
/// over 10 s, at least 5) keeps an outage from doubling the load, and the
/// jittered backoff (50 ms doubling, at most 1 s) spreads the retries.
pub struct Resubmit;

impl Resubmit {
    /// Retries at most this share of the writes, in percent.
    pub const RATIO_PCT: u64 = 10;
    /// ... plus this many per window.
    pub const MIN_PER_WINDOW: u64 = 5;
    /// The window, in ms.
    pub const WINDOW_MS: u64 = 10_000;
    /// Retries of one write, at most.
    pub const TRIES_MAX: u32 = 3;
    /// No retry with less than this left of the deadline.
    pub const LEFT_MIN: Duration = Duration::from_millis(100);

    /// The budget.
    pub fn budget() -> RetryBudget {
        RetryBudget::new(Self::RATIO_PCT, Self::MIN_PER_WINDOW, Self::WINDOW_MS)
    }

    /// The backoff.
    pub fn backoff() -> Backoff {
        Backoff {
            base_ms: 50,
            cap_ms: 1_000,
            max_retries: Self::TRIES_MAX,
            jitter: Jitter::Full,
        }
    }

    /// Whether `o` says the proposal went nowhere that a second one would
    /// not reach (a leader change), rather than a decision.
    pub fn worth_it(o: &GateOutcome) -> bool {
        matches!(
            o,
            GateOutcome::Consensus(ProposeOutcome::NotLeader { .. } | ProposeOutcome::TimedOut)
        )
    }
}

impl Service {
    /// A service over `ctx` (who may call it is the [`ApiState`]'s
    /// tokens: [`super::auth`]).
    pub fn new(
        ctx: NodeCtx,
        members: Vec<FacilityId>,
        keys: PublicKeys,
        detection: Option<Detection>,
    ) -> Service {
        let idempotency = IdempotencyStore::new(ctx.store.clone(), IDEMPOTENCY_TTL_MS);
        Service {
            ctx,
            members,
            keys,
            detection,
            idempotency,
            backup: None,
            chaos: None,
            retries: std::sync::Arc::new(std::sync::Mutex::new(Resubmit::budget())),
        }
    }

    fn now_ms(&self) -> u64 {
        self.ctx.clock.unix_ms()
    }
}

/// The `/v1` routes with their OpenAPI paths.
pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(post_people))
        .routes(routes!(post_blocks))
        .routes(routes!(post_assignments))
        .routes(routes!(post_unassignments))
        .routes(routes!(post_swaps))
        .routes(routes!(post_leave))
        .routes(routes!(post_emergency))
        .routes(routes!(post_approvals))
        .routes(routes!(post_batch))
        .routes(routes!(post_retirements))
        .routes(routes!(post_archive))
        .routes(routes!(post_checkpoint))
        .routes(routes!(get_validators, post_validators))
        .routes(routes!(post_namespace_drop))
        .routes(routes!(post_drill))
        .routes(routes!(get_schedule))
        .routes(routes!(get_person))
        .routes(routes!(get_block))
        .routes(routes!(get_cluster))
        .routes(routes!(get_ledger))
        .routes(routes!(get_evidence))
        .routes(routes!(get_trust))
        .routes(routes!(post_backup))
        .routes(routes!(super::chaos::post_chaos, super::chaos::get_chaos))
        .routes(routes!(super::coverage::get_coverage))
        .routes(routes!(super::audit::get_audit))
        .routes(routes!(super::review::get_reviews))
        .routes(routes!(super::review::post_review))
        .routes(routes!(super::leader::post_leader))
        .routes(routes!(
            super::members::get_members,
            super::members::post_members
        ))
}

// ---------------------------------------------------------------- bodies

/// A change of the validator set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidatorBody {
    /// The facility.
    pub facility: String,
    /// Its (new) vote key, `ed25519:<64 hex digits>`: adds it or rotates
    /// its key.
    #[serde(default)]
    pub key: Option<String>,
    /// Removes it from the set instead.
    #[serde(default)]
    pub remove: bool,
}

/// The validator epochs known here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ValidatorsAnswer {
    /// This facility.
    pub facility: String,
    /// Every epoch, genesis (0) first.
    pub epochs: Vec<EpochView>,
}

/// One validator epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EpochView {
    /// Its number (genesis: 0).
    pub epoch: u64,
    /// The first height its set certifies.
    pub from_height: u64,
    /// Votes a certificate needs.
    pub quorum: usize,
    /// The set.
    pub signers: Vec<SignerView>,
}

/// One validator of an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignerView {
    /// The facility.
    pub facility: String,
    /// Its vote key.
    pub key: String,
}

/// A person to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PersonBody {
    /// 1 to 64 chars of `[A-Za-z0-9._:-]`.
    pub id: String,
    /// Display name, 1 to 128 chars.
    pub name: String,
    /// `resident` or `faculty`.
    pub role: String,
    /// Postgraduate year 1 to 7 (residents only).
    #[serde(default)]
    pub pgy: Option<u8>,
}

/// A block to add.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockBody {
    /// 1 to 64 chars of `[A-Za-z0-9._:-]`.
    pub id: String,
    /// Days since the schedule's epoch.
    pub day: u32,
    /// Minutes after midnight, 0 to 1439.
    pub start_min: u16,
    /// Length in minutes, 1 to 1680.
    pub duration_min: u16,
    /// `icu`, `clinic`, `procedures` or `call`.
    pub pool: String,
    /// People needed, 1 to 32.
    pub required: u8,
}

/// A person and a block.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignBody {
    /// The person.
    pub person: String,
    /// The block.
    pub block: String,
}

impl AssignBody {
    /// The person's and the block's ids, checked.
    fn ids(self) -> Result<(PersonId, BlockId), ApiError> {
        Ok((self.person.parse()?, self.block.parse()?))
    }
}

/// An exchange of blocks between two people.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwapBody {
    /// First person, now on `a_block`.
    pub a: String,
    /// Their block.
    pub a_block: String,
    /// Second person, now on `b_block`.
    pub b: String,
    /// Their block.
    pub b_block: String,
    /// Made for emergency coverage: available (AP) during a partition.
    #[serde(default)]
    pub emergency: bool,
}

/// Leave for a range of days.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaveBody {
    /// Who.
    pub person: String,
    /// First day.
    pub from_day: u32,
    /// Last day (at most 366 days).
    pub to_day: u32,
}

/// Final approval of every day up to `through_day`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBody {
    /// Last approved day.
    pub through_day: u32,
}

/// A retirement: a person from a day on (`person` and `from_day`), or a
/// block nobody is on (`block`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    /// The person to retire (with `from_day`).
    #[serde(default)]
    pub person: Option<String>,
    /// The first day the person cannot work.
    #[serde(default)]
    pub from_day: Option<u32>,
    /// The block to remove (alone).
    #[serde(default)]
    pub block: Option<String>,
}

/// Archive the finally approved days up to `through_day` (at most 7 past
/// the last archived day).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchiveBody {
    /// Last day archived.
    pub through_day: u32,
}

/// A checkpoint: no fields (`{}`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {}

/// A chaos namespace to drop.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamespaceDropBody {
    /// The namespace (ids `chaos:<namespace>:…`); empty: every one.
    pub namespace: String,
}

/// A drill to declare.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrillBody {
    /// The facility levers are pulled on (not the one this request goes
    /// to).
    pub facility: String,
    /// How long from now, in ms (1 to a day).
    pub for_ms: u64,
}

/// A write's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WriteAnswer {
    /// `committed` (200) or `provisional` (202: accepted in a partition,
    /// replayed through consensus on heal).
    pub status: String,
    /// The schedule's effect (`assigned`, `swapped`, …, `batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// A batch's outcome for each of its commands, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outcomes: Vec<ItemOutcome>,
    /// Blocks vacated by leave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vacated: Vec<String>,
    /// Raft log index (committed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Ledger height (committed and changed the schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u64>,
    /// The schedule had applied this key before; its first outcome.
    #[serde(default)]
    pub duplicate: bool,
    /// The provisional change's id (provisional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisional_id: Option<u64>,
    /// Its hybrid logical clock stamp (provisional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlc: Option<String>,
    /// The partition state it was accepted in (provisional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

/// One command's outcome in a batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ItemOutcome {
    /// `applied` or `rejected`.
    pub status: String,
    /// What an applied command did (`assigned`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// The rule a rejected command broke (`DOUBLE_BOOKING`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ItemOutcome {
    fn of(o: &Outcome) -> ItemOutcome {
        match o {
            Outcome::Applied(e) => ItemOutcome {
                status: "applied".into(),
                effect: Some(effect_name(e).0.into()),
                code: None,
                detail: None,
            },
            Outcome::Rejected(r) => ItemOutcome {
                status: "rejected".into(),
                effect: None,
                code: Some(r.rule.code().into()),
                detail: Some(r.detail.clone()),
            },
        }
    }
}

/// One command of a batch: `op` names it, the other fields are the body of
/// that write's own endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum BatchItem {
    /// As `POST /v1/people`.
    AddPerson(PersonBody),
    /// As `POST /v1/blocks`.
    AddBlock(BlockBody),
    /// As `POST /v1/assignments`.
    Assign(AssignBody),
    /// As `POST /v1/unassignments`.
    Unassign(AssignBody),
    /// As `POST /v1/swaps` (not marked emergency).
    Swap(SwapBody),
    /// As `POST /v1/leave`.
    Leave(LeaveBody),
    /// As `POST /v1/approvals`.
    Approve(ApprovalBody),
    /// As `POST /v1/retirements`.
    Retire(RetireBody),
}

/// Up to 1,000 commands, committed as one Raft entry and one ledger entry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The commands, run in order.
    pub commands: Vec<BatchItem>,
}

/// Largest batch body.
pub const BATCH_BODY_LEN_MAX: usize = 1024 * 1024;

fn batch_op(b: BatchBody) -> Result<(Op, bool), ApiError> {
    if b.commands.is_empty() || b.commands.len() > BATCH_OPS_MAX {
        return Err(ApiError::bad(
            "commands",
            format!("1 to {BATCH_OPS_MAX} commands"),
        ));
    }
    let mut ops = Vec::with_capacity(b.commands.len());
    for (i, c) in b.commands.into_iter().enumerate() {
        let at = |mut e: ApiError| {
            e.body.field = e.body.field.map(|f| format!("commands[{i}].{f}"));
            e
        };
        let op = match c {
            BatchItem::AddPerson(b) => person_op(b),
            BatchItem::AddBlock(b) => block_op(b),
            BatchItem::Assign(b) => assign_op(b),
            BatchItem::Unassign(b) => unassign_op(b),
            BatchItem::Swap(b) if b.emergency => Err(ApiError::bad(
                "emergency",
                "an emergency swap is an AP write: send it alone",
            )),
            BatchItem::Swap(b) => swap_op(b),
            BatchItem::Leave(b) => leave_op(b),
            BatchItem::Approve(b) => approval_op(b),
            BatchItem::Retire(b) => retire_op(b),
        };
        ops.push(op.map_err(at)?.0);
    }
    Ok((Op::Batch(ops), false))
}

/// Runs up to 1,000 commands as one entry (CP): each gets its own outcome
/// in `outcomes`, in order; the Idempotency-Key covers the whole batch.
#[utoipa::path(
    post,
    path = "/batch",
    tag = "writes",
    request_body = BatchBody,
    params(WriteHeaders),
    responses(
        (status = 200, description = "Committed; each command's outcome in `outcomes`", body = WriteAnswer),
        (status = 400, description = "Bad input, naming the command and field", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB, or the entry over the Raft entry limit", body = ErrorBody),
        (status = 422, description = "Idempotency key reused with another body", body = ErrorBody),
        (status = 429, description = "Overloaded; Retry-After", body = ErrorBody),
        (status = 503, description = "PARTITIONED, NO_LEADER, TIMED_OUT, CIRCUIT_OPEN", body = ErrorBody),
    )
)]
async fn post_batch(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write_limited::<BatchBody>(&s, &caller, &headers, body, BATCH_BODY_LEN_MAX, batch_op).await
}

// ---------------------------------------------------------------- writes

#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
struct WriteHeaders {
    /// 1 to 128 visible ASCII characters; a retry carries the same key.
    #[param(rename = "Idempotency-Key")]
    idempotency_key: String,
    /// The request's time budget in ms (1 or more; above the default of
    /// 10,000 it is the default). Every hop it causes (the forward to the
    /// leader) carries what is left of it, and work past it is dropped.
    #[param(rename = "Bulwark-Timeout-Ms")]
    timeout_ms: Option<u64>,
}

macro_rules! write_endpoint {
    ($name:ident, $path:literal, $body:ty, $doc:literal, $op:expr) => {
        #[doc = $doc]
        #[utoipa::path(
            post,
            path = $path,
            tag = "writes",
            request_body = $body,
            params(WriteHeaders),
            responses(
                (status = 200, description = "Committed", body = WriteAnswer),
                (status = 202, description = "Accepted provisionally (AP, in a partition)", body = WriteAnswer),
                (status = 400, description = "Bad input, naming the field", body = ErrorBody),
                (status = 409, description = "A schedule rule, named", body = ErrorBody),
                (status = 413, description = "Body over 64 KiB", body = ErrorBody),
                (status = 422, description = "Idempotency key reused with another body", body = ErrorBody),
                (status = 429, description = "Overloaded; Retry-After", body = ErrorBody),
                (status = 503, description = "PARTITIONED (CP in a minority), NO_LEADER, TIMED_OUT, CIRCUIT_OPEN", body = ErrorBody),
            )
        )]
        async fn $name(
            State(s): State<ApiState>,
            Extension(caller): Extension<Caller>,
            headers: HeaderMap,
            body: Body,
        ) -> Response {
            write::<$body>(&s, &caller, &headers, body, $op).await
        }
    };
}

fn person_op(b: PersonBody) -> Result<(Op, bool), ApiError> {
    let role = match (b.role.as_str(), b.pgy) {
        ("resident", Some(pgy)) if (1..=7).contains(&pgy) => Role::Resident { pgy },
        ("resident", _) => return Err(ApiError::bad("pgy", "a resident needs pgy 1 to 7")),
        ("faculty", None) => Role::Faculty,
        ("faculty", Some(_)) => return Err(ApiError::bad("pgy", "faculty have no pgy")),
        _ => return Err(ApiError::bad("role", "role is resident or faculty")),
    };
    if b.name.is_empty() || b.name.chars().count() > 128 || b.name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "name",
            "1 to 128 characters, no control characters",
        ));
    }
    Ok((
        Op::AddPerson(Person {
            id: b.id.parse()?,
            name: b.name,
            role,
        }),
        false,
    ))
}

write_endpoint!(
    post_people,
    "/people",
    PersonBody,
    "Adds a person.",
    person_op
);

fn block_op(b: BlockBody) -> Result<(Op, bool), ApiError> {
    let pool = match b.pool.as_str() {
        "icu" => Pool::Icu,
        "clinic" => Pool::Clinic,
        "procedures" => Pool::Procedures,
        "call" => Pool::Call,
        _ => return Err(ApiError::bad("pool", "icu, clinic, procedures or call")),
    };
    Ok((
        Op::AddBlock(Block {
            id: b.id.parse()?,
            day: b.day,
            start_min: b.start_min,
            duration_min: b.duration_min,
            pool,
            required: b.required,
        }),
        false,
    ))
}

write_endpoint!(
    post_blocks,
    "/blocks",
    BlockBody,
    "Adds a block (one shift on one day in one pool).",
    block_op
);

fn assign_op(b: AssignBody) -> Result<(Op, bool), ApiError> {
    let (person, block) = b.ids()?;
    Ok((Op::Assign { person, block }, false))
}

write_endpoint!(
    post_assignments,
    "/assignments",
    AssignBody,
    "Puts a person on a block (CP: refused in a minority).",
    assign_op
);

fn unassign_op(b: AssignBody) -> Result<(Op, bool), ApiError> {
    let (person, block) = b.ids()?;
    Ok((Op::Unassign { person, block }, false))
}

write_endpoint!(
    post_unassignments,
    "/unassignments",
    AssignBody,
    "Takes a person off a block (CP).",
    unassign_op
);

fn swap_op(b: SwapBody) -> Result<(Op, bool), ApiError> {
    Ok((
        Op::Swap {
            a: b.a.parse()?,
            a_block: b.a_block.parse()?,
            b: b.b.parse()?,
            b_block: b.b_block.parse()?,
        },
        b.emergency,
    ))
}

write_endpoint!(
    post_swaps,
    "/swaps",
    SwapBody,
    "Exchanges two people's blocks, both or neither (CP; AP when marked emergency).",
    swap_op
);

fn leave_op(b: LeaveBody) -> Result<(Op, bool), ApiError> {
    if b.to_day < b.from_day {
        return Err(ApiError::bad("to_day", "to_day is before from_day"));
    }
    Ok((
        Op::Leave {
            person: b.person.parse()?,
            from_day: b.from_day,
            to_day: b.to_day,
        },
        false,
    ))
}

write_endpoint!(
    post_leave,
    "/leave",
    LeaveBody,
    "Grants leave; the person's blocks on those days are vacated (CP).",
    leave_op
);

write_endpoint!(
    post_emergency,
    "/emergency",
    AssignBody,
    "Fills an open slot, even on an approved day (AP: accepted provisionally in a partition).",
    |b: AssignBody| {
        let (person, block) = b.ids()?;
        Ok((Op::EmergencyCoverage { person, block }, true))
    }
);

fn approval_op(b: ApprovalBody) -> Result<(Op, bool), ApiError> {
    Ok((
        Op::Approve {
            through_day: b.through_day,
        },
        false,
    ))
}

write_endpoint!(
    post_approvals,
    "/approvals",
    ApprovalBody,
    "Final approval of every day up to through_day (CP).",
    approval_op
);

fn retire_op(b: RetireBody) -> Result<(Op, bool), ApiError> {
    let op = match (b.person, b.from_day, b.block) {
        (Some(p), Some(from_day), None) => Op::RetirePerson {
            person: p.parse()?,
            from_day,
        },
        (None, None, Some(blk)) => Op::RetireBlock {
            block: blk.parse()?,
        },
        (Some(_), None, None) => {
            return Err(ApiError::bad("from_day", "a person retires from a day"))
        }
        _ => {
            return Err(ApiError::bad(
                "person",
                "either person and from_day, or block alone",
            ))
        }
    };
    Ok((op, false))
}

write_endpoint!(
    post_retirements,
    "/retirements",
    RetireBody,
    "Retires a person from a day on (refused while they hold a block on or after it), or removes a block nobody is on (CP).",
    retire_op
);

write_endpoint!(
    post_archive,
    "/archive",
    ArchiveBody,
    "Moves the finally approved days up to through_day out of the hot tables; they stay readable by day through GET /v1/schedule (CP).",
    |b: ArchiveBody| Ok((
        Op::Archive {
            through_day: b.through_day
        },
        false
    ))
);

write_endpoint!(
    post_checkpoint,
    "/admin/checkpoints",
    CheckpointBody,
    "Commits a checkpoint: every facility, when it applies it, backs its store up as it stands right after it (into its backup directory), so the backups of one checkpoint hold the same index. Answers once committed (effect `checkpointed`, its `index`), not waiting for the files; `POST /v1/admin/backup` also waits for this facility's (CP, operator scope).",
    |_: CheckpointBody| Ok((Op::Checkpoint, false))
);

fn validator_op(b: ValidatorBody) -> Result<(Op, bool), ApiError> {
    let facility: FacilityId = b
        .facility
        .parse()
        .map_err(|e| ApiError::bad("facility", format!("{e}")))?;
    let key = match (b.key, b.remove) {
        (Some(k), false) => {
            let k = bulwark_actors::keys::parse_public(&k)
                .map_err(|e| ApiError::bad("key", e.to_string()))?;
            Some(bulwark_actors::epoch::VoteKey::from(&k))
        }
        (None, true) => None,
        _ => {
            return Err(ApiError::bad(
                "key",
                "give either key (add or rotate) or remove: true",
            ))
        }
    };
    Ok((
        Op::Validator(bulwark_actors::epoch::ValidatorChange { facility, key }),
        false,
    ))
}

write_endpoint!(
    post_validators,
    "/admin/validators",
    ValidatorBody,
    "Changes the validator set through the ledger: `{facility, key}` adds the facility with that vote key or rotates its key; `{facility, remove: true}` removes it. The set in force certifies the change; the next set (effect `validators_changed`, naming the epoch and its first height) certifies every later height. Refused (409 INVALID_INPUT, named) when the set does not allow it: a key another facility holds, no change, removing a facility that is not a validator or the last one, over 64 (CP, operator scope).",
    validator_op
);

/// The validator epochs this facility's validator knows, genesis first.
#[utoipa::path(
    get,
    path = "/admin/validators",
    tag = "operations",
    responses(
        (status = 200, description = "Every epoch known here", body = ValidatorsAnswer),
        (status = 503, description = "UNAVAILABLE", body = ErrorBody),
    )
)]
async fn get_validators(State(s): State<ApiState>) -> Result<Json<ValidatorsAnswer>, ApiError> {
    let svc = service(&s)?;
    let epochs = LedgerStore::new(svc.ctx.store.clone())
        .epochs(&svc.keys)
        .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
    Ok(Json(ValidatorsAnswer {
        facility: svc.ctx.facility.to_string(),
        epochs: epochs
            .iter()
            .map(|e| EpochView {
                epoch: e.number,
                from_height: e.from_height,
                quorum: ledger::quorum(e.keys().len()),
                signers: e
                    .keys()
                    .facilities()
                    .map(|f| SignerView {
                        facility: f.to_string(),
                        key: bulwark_actors::keys::format_public(e.keys().get(f).expect("listed")),
                    })
                    .collect(),
            })
            .collect(),
    }))
}

write_endpoint!(
    post_namespace_drop,
    "/admin/chaos/namespace-drops",
    NamespaceDropBody,
    "Removes up to 256 blocks and people of a chaos namespace with their assignments (blocks first); effect `namespace_dropped`, or `namespace_dropped_partly` when more are left: send it again under a new key (CP, chaos scope).",
    |b: NamespaceDropBody| {
        if !bulwark_actors::schedule::valid_namespace(&b.namespace) {
            return Err(ApiError::bad("namespace", "0 to 32 chars of [A-Za-z0-9._-]"));
        }
        Ok((Op::DropNamespace { namespace: b.namespace }, false))
    }
);

write_endpoint!(
    post_drill,
    "/admin/chaos/drills",
    DrillBody,
    "Declares a drill on a facility for for_ms: evidence against it recorded in that time is drill evidence, kept and shown (`drill: true`) but costing no trust. Refused when sent to that facility itself (CP, chaos scope).",
    |b: DrillBody| {
        let facility = b
            .facility
            .parse()
            .map_err(|e| ApiError::bad("facility", format!("{e}")))?;
        Ok((Op::Drill { facility, for_ms: b.for_ms }, false))
    }
);

/// The header a write names its time budget in, in ms.
pub const TIMEOUT_HEADER: &str = "bulwark-timeout-ms";

/// The write's time budget: its `Bulwark-Timeout-Ms`, at most
/// [`WRITE_TIMEOUT`] (a budget can shorten the default, never lengthen
/// it), or the default.
fn write_budget(headers: &HeaderMap) -> Result<Duration, ApiError> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else {
        return Ok(WRITE_TIMEOUT);
    };
    let ms = v
        .to_str()
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&ms| ms >= 1)
        .ok_or_else(|| ApiError::bad("Bulwark-Timeout-Ms", "a whole number of ms, 1 or more"))?;
    Ok(Duration::from_millis(ms).min(WRITE_TIMEOUT))
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let field = "Idempotency-Key";
    let v = headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::bad(field, "writes need an Idempotency-Key header"))?;
    let s = v
        .to_str()
        .ok()
        .filter(|s| {
            (1..=IDEMPOTENCY_KEY_LEN_MAX).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad(
                field,
                format!("1 to {IDEMPOTENCY_KEY_LEN_MAX} visible ASCII characters"),
            )
        })?;
    Ok(s.to_string())
}

/// Reads at most `limit` bytes of a JSON body.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the body must be Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("the body exceeds {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large())
}

/// Decodes a JSON body: unknown fields, wrong types and trailing bytes are
/// refused, naming the field.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end()
        .map_err(|e| ApiError::bad("body", format!("invalid JSON body: {e}")))?;
    Ok(v)
}

/// The schedule command key of a client's idempotency key.
pub fn command_key(key: &str) -> IdempotencyKey {
    let h = blake3::hash(key.as_bytes());
    let mut k = [0; 16];
    k.copy_from_slice(&h.as_bytes()[..16]);
    IdempotencyKey(k)
}

async fn write<B: DeserializeOwned>(
    s: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    op_of: impl FnOnce(B) -> Result<(Op, bool), ApiError>,
) -> Response {
    write_limited(s, caller, headers, body, BODY_LEN_MAX, op_of).await
}

async fn write_limited<B: DeserializeOwned>(
    s: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    op_of: impl FnOnce(B) -> Result<(Op, bool), ApiError>,
) -> Response {
    match write_inner(s, caller, headers, body, limit, op_of).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn write_inner<B: DeserializeOwned>(
    s: &ApiState,
    caller: &Caller,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    op_of: impl FnOnce(B) -> Result<(Op, bool), ApiError>,
) -> Result<Response, ApiError> {
    let svc = service(s)?;
    let key = idempotency_key(headers)?;
    // The budget runs from the request's arrival: time in the admission
    // queue counts.
    let deadline = super::arrived() + write_budget(headers)?;
    let bytes = read_body(headers, body, limit).await?;
    let (op, emergency) = op_of(decode_json::<B>(&bytes)?)?;
    // The route's scope was checked before; a batch needs each command's,
    // and an emergency (partition-tolerant) swap needs `approve` as
    // emergency coverage does.
    caller.allows_op(&op)?;
    if emergency {
        caller.require(super::auth::Scope::Approve)?;
    }
    let now = svc.now_ms();
    let store_failed = |e: bulwark_actors::flow::idempotency::IdempotencyError| {
        ApiError::unavailable("UNAVAILABLE", format!("idempotency store: {e}"), 1_000)
    };
    match svc
        .idempotency
        .lookup(key.as_bytes(), &bytes, now)
        .map_err(store_failed)?
    {
        Lookup::Replay(answer) => return Ok(replay(&answer)),
        Lookup::KeyReused => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "KEY_REUSED",
                "this Idempotency-Key was used with another body",
            ))
        }
        Lookup::Miss => {}
    }
    let gate = svc
        .ctx
        .find::<GateMsg>(Zone::Detection, CAP_GATE)
        .ok_or_else(|| {
            ApiError::unavailable("UNAVAILABLE", "the CAP gate is not running", 1_000)
        })?;
    let command = Command {
        key: command_key(&key),
        issued_by: svc.ctx.facility.clone(),
        at_unix_ms: now,
        hlc: Hlc::ZERO,
        op,
    };
    svc.retries
        .lock()
        .expect("retry budget lock")
        .on_request(svc.now_ms());
    let mut tries = 0;
    let outcome = loop {
        let o = submit(&gate, command.clone(), emergency, deadline).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        tries += 1;
        let class = if Resubmit::worth_it(&o) && left >= Resubmit::LEFT_MIN {
            Class::Transient
        } else {
            Class::Permanent
        };
        let decided = decide(
            &Resubmit::backoff(),
            &mut svc.retries.lock().expect("retry budget lock"),
            class,
            tries,
            // Jitter drawn from the key and the try: spread across writes,
            // and the same in a replayed simulation.
            {
                let h = blake3::hash(&[key.as_bytes(), &tries.to_le_bytes()].concat());
                let mut b = [0u8; 8];
                b.copy_from_slice(&h.as_bytes()[..8]);
                (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
            },
            svc.now_ms(),
        );
        match decided {
            RetryDecision::RetryAfter(wait) => {
                metrics::counter!("bulwark_api_resubmit_total", "outcome" => "sent").increment(1);
                tokio::time::sleep(Duration::from_millis(wait).min(left / 2)).await;
            }
            RetryDecision::GiveUp(why) => {
                if class == Class::Transient {
                    metrics::counter!("bulwark_api_resubmit_total", "outcome" => why).increment(1);
                }
                break o;
            }
        }
    };
    let (status, answer) = match written(outcome) {
        Ok((status, a)) => (status, serde_json::to_vec(&a)),
        // A refusal the schedule decided. One judged in a partition
        // (`partition` set) decided nothing: like the answers below it is
        // not remembered, so a retry after the heal reaches consensus.
        Err(e) if e.status == StatusCode::CONFLICT && e.body.partition.is_none() => {
            (e.status, serde_json::to_vec(&e.body))
        }
        // Not final (no quorum, no leader, timed out): not remembered, so a
        // retry with the same key tries again.
        Err(e) => return Err(e),
    };
    let answer = answer.map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
    // Remembered before it is sent: a client that saw this answer finds it
    // again. A failure here only costs the replay (the schedule dedups).
    let mut stored = status.as_u16().to_be_bytes().to_vec();
    stored.extend_from_slice(&answer);
    if let Err(e) = svc
        .idempotency
        .remember(key.as_bytes(), &bytes, &stored, now)
    {
        tracing::warn!(error = %e, "idempotency answer not stored");
    }
    Ok(json_response(status, answer))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn replay(stored: &[u8]) -> Response {
    let Some((code, body)) = stored.split_first_chunk::<2>() else {
        return ApiError::unavailable("UNAVAILABLE", "a stored answer is damaged", 1_000)
            .into_response();
    };
    let status = StatusCode::from_u16(u16::from_be_bytes(*code)).unwrap_or(StatusCode::OK);
    let mut r = json_response(status, body.to_vec());
    r.headers_mut()
        .insert(REPLAYED, axum::http::HeaderValue::from_static("true"));
    r
}

fn effect_name(e: &Effect) -> (&'static str, Vec<String>) {
    match e {
        Effect::PersonAdded => ("person_added", vec![]),
        Effect::BlockAdded => ("block_added", vec![]),
        Effect::Assigned => ("assigned", vec![]),
        Effect::Unassigned => ("unassigned", vec![]),
        Effect::Swapped => ("swapped", vec![]),
        Effect::LeaveGranted { vacated } => (
            "leave_granted",
            vacated.iter().map(|b| b.to_string()).collect(),
        ),
        Effect::Covered => ("covered", vec![]),
        Effect::Reconciled { .. } => ("reconciled", vec![]),
        Effect::Approved { .. } => ("approved", vec![]),
        Effect::Batch { .. } => ("batch", vec![]),
        Effect::PersonRetired => ("person_retired", vec![]),
        Effect::BlockRetired => ("block_retired", vec![]),
        Effect::Archived { .. } => ("archived", vec![]),
        Effect::NamespaceDropped { more: false, .. } => ("namespace_dropped", vec![]),
        Effect::NamespaceDropped { more: true, .. } => ("namespace_dropped_partly", vec![]),
        Effect::DrillDeclared => ("drill_declared", vec![]),
        Effect::Checkpointed => ("checkpointed", vec![]),
        Effect::ValidatorsChanged { epoch, from_height } => (
            "validators_changed",
            vec![
                format!("epoch {epoch}"),
                format!("from height {from_height}"),
            ],
        ),
    }
}

/// The HTTP answer of a gate outcome.
/// One submission of `command` to the CAP gate, waiting until `deadline`.
async fn submit(
    gate: &ractor::ActorRef<GateMsg>,
    command: Command,
    emergency: bool,
    deadline: tokio::time::Instant,
) -> Result<GateOutcome, ApiError> {
    match gate
        .call(
            |reply| GateMsg::Submit {
                command,
                emergency,
                deadline: Some(deadline),
                reply,
            },
            Some(
                deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(Duration::from_millis(1)),
            ),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(o)) => Ok(o),
        Ok(_) => Err(ApiError::unavailable(
            "TIMED_OUT",
            "no outcome in time; retry with the same Idempotency-Key",
            1_000,
        )),
        Err(e) => Err(ApiError::unavailable(
            "UNAVAILABLE",
            format!("the CAP gate failed: {e}"),
            1_000,
        )),
    }
}

pub fn written(o: GateOutcome) -> Result<(StatusCode, WriteAnswer), ApiError> {
    let blank = WriteAnswer {
        status: String::new(),
        effect: None,
        outcomes: vec![],
        vacated: vec![],
        index: None,
        height: None,
        duplicate: false,
        provisional_id: None,
        hlc: None,
        partition: None,
    };
    match o {
        GateOutcome::Consensus(ProposeOutcome::Committed {
            index,
            outcome,
            duplicate,
            height,
        }) => match outcome {
            Outcome::Applied(effect) => {
                let (name, vacated) = effect_name(&effect);
                let outcomes = match &effect {
                    Effect::Batch { outcomes } => outcomes.iter().map(ItemOutcome::of).collect(),
                    _ => Vec::new(),
                };
                Ok((
                    StatusCode::OK,
                    WriteAnswer {
                        status: "committed".into(),
                        effect: Some(name.into()),
                        outcomes,
                        vacated,
                        index: Some(index),
                        height,
                        duplicate,
                        ..blank
                    },
                ))
            }
            Outcome::Rejected(r) => Err(ApiError::rule(&r)),
        },
        GateOutcome::Consensus(ProposeOutcome::NotLeader { hint }) => Err(no_leader(hint)),
        GateOutcome::Consensus(ProposeOutcome::TimedOut) => Err(ApiError::unavailable(
            "TIMED_OUT",
            "no outcome in time; it may still commit: retry with the same Idempotency-Key",
            1_000,
        )),
        GateOutcome::Consensus(ProposeOutcome::Rejected { reason }) => {
            Err(ApiError::unavailable("UNAVAILABLE", reason, 1_000))
        }
        GateOutcome::Consensus(ProposeOutcome::Shed {
            dependency,
            retry_after_ms,
        }) => Err(circuit_open(&dependency, retry_after_ms)),
        GateOutcome::Provisional { id, hlc, partition } => Ok((
            StatusCode::ACCEPTED,
            WriteAnswer {
                status: "provisional".into(),
                provisional_id: Some(id),
                hlc: Some(format!("{}.{}.{}", hlc.wall_ms, hlc.logical, hlc.node)),
                partition: Some(partition.code().into()),
                ..blank
            },
        )),
        GateOutcome::Partitioned(p) => Err(ApiError::partitioned(&p)),
        GateOutcome::Refused {
            rejection,
            partition,
        } => {
            // Judged in a partition: the body says so, and that it
            // decides nothing for the key.
            let mut e = ApiError::rule(&rejection);
            e.body.partition = Some(partition.code().into());
            e.body.mode = Some("AP".into());
            Err(e)
        }
    }
}

pub(crate) fn service(s: &ApiState) -> Result<&Service, ApiError> {
    s.service.as_deref().ok_or_else(|| {
        ApiError::unavailable("UNAVAILABLE", "this facility runs no schedule", 5_000)
    })
}

// ---------------------------------------------------------------- reads

/// How a schedule read is served.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ScheduleQuery {
    /// `linearizable` (default; confirmed by a quorum, refused in a
    /// minority) or `stale` (the local state, with its staleness).
    pub consistency: Option<String>,
    /// Paged: blocks from this day (default 0).
    pub from_day: Option<u32>,
    /// Paged: blocks up to this day (default: the last).
    pub to_day: Option<u32>,
    /// Paged: only this pool's blocks (`icu`, `clinic`, `procedures`, `call`).
    pub pool: Option<String>,
    /// Paged: the `next` of the previous page.
    pub cursor: Option<String>,
    /// Paged: blocks per page, 1 to 1,000 (default 500).
    pub limit: Option<usize>,
    /// `stale`: if a linearizable read cannot be confirmed now (no leader,
    /// no quorum, a timeout, an open circuit), answer from the local state
    /// instead, flagged in `staleness.fallback_from`.
    pub fallback: Option<String>,
}

impl ScheduleQuery {
    fn paged(&self) -> bool {
        self.from_day.is_some()
            || self.to_day.is_some()
            || self.pool.is_some()
            || self.cursor.is_some()
            || self.limit.is_some()
    }
}

/// Most blocks in one page of `GET /v1/schedule`.
pub const PAGE_LEN_MAX: usize = 1_000;
/// Most days one read of a person's duty covers.
pub const PERSON_DAYS_MAX: u32 = 366;

fn consistency_of(q: Option<&str>) -> Result<Consistency, ApiError> {
    match q {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(_) => Err(ApiError::bad("consistency", "linearizable or stale")),
    }
}

/// How a read asked to be served: its consistency, and whether a
/// linearizable one that cannot be confirmed now may be served stale
/// instead (`fallback=stale`; the answer's staleness then says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadMode {
    consistency: Consistency,
    fallback_stale: bool,
}

fn read_mode(consistency: Option<&str>, fallback: Option<&str>) -> Result<ReadMode, ApiError> {
    let consistency = consistency_of(consistency)?;
    let fallback_stale = match fallback {
        None => false,
        Some("stale") => true,
        Some(_) => return Err(ApiError::bad("fallback", "stale, or leave it out")),
    };
    Ok(ReadMode {
        consistency,
        fallback_stale,
    })
}

/// The codes of a linearizable read that a stale one may stand in for:
/// the read could not be confirmed now (no leader, no quorum, a timeout,
/// an open circuit), not a bad request.
const FALLS_BACK: [&str; 5] = [
    "NO_LEADER",
    "TIMED_OUT",
    "PARTITIONED",
    "CIRCUIT_OPEN",
    "UNAVAILABLE",
];

/// [`gate_read`] as `mode` asks: a linearizable read first and, when it
/// fails with one of [`FALLS_BACK`] and the client allowed it, the local
/// state with its staleness, flagged (`fallback_from`), through the flow
/// kit's fallback chain.
pub(crate) async fn read_as<T, F>(svc: &Service, mode: ReadMode, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: Fn(&ReplicaView, &Staleness) -> T + Clone + Send + Sync + 'static,
{
    if !mode.fallback_stale || mode.consistency == Consistency::Stale {
        return gate_read(svc, mode.consistency, f).await;
    }
    use bulwark_actors::flow::fallback::Fallback;
    let why: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    let (svc1, f1, why1) = (svc.clone(), f.clone(), why.clone());
    let (svc2, why2) = (svc.clone(), why.clone());
    let chain: Fallback<T, ApiError> = Fallback::new()
        .then("linearizable", move || {
            let (svc, f, why) = (svc1.clone(), f1.clone(), why1.clone());
            Box::pin(async move {
                let r = gate_read(&svc, Consistency::Linearizable, f).await;
                if let Err(e) = &r {
                    *why.lock().expect("fallback lock") = Some(e.body.code.clone());
                }
                r
            })
        })
        .then("stale", move || {
            let (svc, f, why) = (svc2.clone(), f.clone(), why2.clone());
            Box::pin(async move {
                let from = why.lock().expect("fallback lock").clone();
                match from.as_deref() {
                    Some(code) if FALLS_BACK.contains(&code) => {
                        gate_read(&svc, Consistency::Stale, move |v, s| {
                            let s = Staleness {
                                fallback_from: from.clone(),
                                ..s.clone()
                            };
                            f(v, &s)
                        })
                        .await
                    }
                    _ => Err(ApiError::unavailable(
                        "UNAVAILABLE",
                        "no fallback for this refusal",
                        0,
                    )),
                }
            })
        });
    match chain.run().await {
        Ok(served) => Ok(served.value),
        // The first level's refusal is the answer.
        Err(mut errors) => Err(errors.swap_remove(0).1),
    }
}

fn staleness_view(staleness: &Staleness) -> StalenessView {
    StalenessView {
        consistency: match staleness.consistency {
            Consistency::Linearizable => "linearizable".into(),
            Consistency::Stale => "stale".into(),
        },
        partition: staleness.partition.code().into(),
        applied_index: staleness.applied_index,
        stale_ms: staleness.stale_ms,
        provisional_pending: staleness.provisional_pending,
        fallback_from: staleness.fallback_from.clone(),
    }
}

fn block_view<T: TablesRead>(s: &Schedule<T>, b: &Block) -> BlockView {
    block_with(b, &s.assignments_on(&b.id), false)
}

fn block_with(
    b: &Block,
    on: &[(PersonId, bulwark_actors::schedule::Assignment)],
    archived: bool,
) -> BlockView {
    BlockView {
        id: b.id.to_string(),
        day: b.day,
        start_min: b.start_min,
        duration_min: b.duration_min,
        pool: pool_name(b.pool).into(),
        required: b.required,
        assigned: on
            .iter()
            .map(|(p, a)| AssigneeView {
                person: p.to_string(),
                emergency: a.emergency,
                index: a.index,
            })
            .collect(),
        archived,
    }
}

fn person_view(p: &Person, leave_days: Vec<u32>) -> PersonView {
    PersonView {
        id: p.id.to_string(),
        name: p.name.clone(),
        role: match p.role {
            Role::Resident { .. } => "resident".into(),
            Role::Faculty => "faculty".into(),
        },
        pgy: match p.role {
            Role::Resident { pgy } => Some(pgy),
            Role::Faculty => None,
        },
        leave_days,
    }
}

/// A page of blocks, by day.
fn schedule_page(
    v: &ReplicaView,
    staleness: &Staleness,
    q: &ScheduleQuery,
    pool: Option<Pool>,
) -> Result<ScheduleView, ApiError> {
    let limit = q.limit.unwrap_or(500);
    let (from_day, after) = match q.cursor.as_deref() {
        Some(c) => {
            let (d, id) = parse_cursor(c)?;
            (d, Some(id))
        }
        None => (q.from_day.unwrap_or(0), None),
    };
    let to_day = q.to_day.unwrap_or(u32::MAX);
    let t = v.tables();
    let keep = |b: &Block| pool.is_none_or(|p| b.pool == p);
    let (mut blocks, mut read, mut last) = (Vec::new(), 0, None);
    // Archived days come first (they are the oldest), then the hot ones.
    let mut hot = Some((from_day, after));
    if let Some(through) = t.archived_through().filter(|d| from_day <= *d) {
        let page = t.archived_blocks(
            from_day,
            hot.take().and_then(|h| h.1).as_ref(),
            to_day.min(through),
            limit,
        );
        read += page.len();
        last = page.last().map(|a| (a.block.day, a.block.id.clone()));
        blocks.extend(
            page.iter()
                .filter(|a| keep(&a.block))
                .map(|a| block_with(&a.block, &a.assigned, true)),
        );
        hot = through.checked_add(1).map(|d| (d, None));
    }
    if let Some((from, after)) = hot.filter(|(d, _)| read < limit && *d <= to_day) {
        let page = t.blocks_by_day(from, after.as_ref(), to_day, limit - read);
        read += page.len();
        last = page.last().map(|b| (b.day, b.id.clone())).or(last);
        blocks.extend(page.iter().filter(|b| keep(b)).map(|b| block_view(v, b)));
    }
    let next = (read == limit)
        .then(|| last.map(|(day, id)| format!("{day}:{id}")))
        .flatten();
    Ok(ScheduleView {
        staleness: staleness_view(staleness),
        approved_through: v.approved_through(),
        archived_through: t.archived_through(),
        digest: String::new(),
        people: Vec::new(),
        blocks,
        next,
    })
}

fn parse_cursor(c: &str) -> Result<(u32, BlockId), ApiError> {
    let bad = || ApiError::bad("cursor", "the `next` of a previous page");
    let (day, id) = c.split_once(':').ok_or_else(bad)?;
    Ok((
        day.parse().map_err(|_| bad())?,
        id.parse().map_err(|_| bad())?,
    ))
}

/// How current a read is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StalenessView {
    /// `linearizable` or `stale`.
    pub consistency: String,
    /// CONNECTED, MAJORITY, MINORITY or ISOLATED.
    pub partition: String,
    /// The last log index applied to the state read.
    pub applied_index: u64,
    /// How long ago a quorum was last reachable, in ms (0 while it is).
    pub stale_ms: u64,
    /// This facility's provisional changes not yet in the state read.
    pub provisional_pending: usize,
    /// Served stale because the linearizable read failed with this code
    /// and the request allowed it (`fallback=stale`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_from: Option<String>,
}

/// A person.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PersonView {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// `resident` or `faculty`.
    pub role: String,
    /// Postgraduate year (residents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgy: Option<u8>,
    /// Days of leave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leave_days: Vec<u32>,
}

/// Someone on a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AssigneeView {
    /// The person.
    pub person: String,
    /// Made by emergency coverage.
    pub emergency: bool,
    /// Log index of the command that made it.
    pub index: u64,
}

/// A block and who is on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlockView {
    /// Id.
    pub id: String,
    /// Day.
    pub day: u32,
    /// Start, minutes after midnight.
    pub start_min: u16,
    /// Length in minutes.
    pub duration_min: u16,
    /// Pool.
    pub pool: String,
    /// People needed.
    pub required: u8,
    /// People on it.
    pub assigned: Vec<AssigneeView>,
    /// Read from the archive (see `POST /v1/archive`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub archived: bool,
}

/// The schedule as read here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScheduleView {
    /// How current it is.
    pub staleness: StalenessView,
    /// Days up to this one are finally approved.
    pub approved_through: Option<u32>,
    /// Days up to this one are archived: paged reads serve them from the
    /// archive; a person's duty read no longer holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_through: Option<u32>,
    /// blake3 of the whole state (equal on facilities that applied the
    /// same log prefix), hex.
    pub digest: String,
    /// People.
    pub people: Vec<PersonView>,
    /// Blocks.
    pub blocks: Vec<BlockView>,
    /// Paged reads: the cursor of the next page (none: the last page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn pool_name(p: Pool) -> &'static str {
    match p {
        Pool::Icu => "icu",
        Pool::Clinic => "clinic",
        Pool::Procedures => "procedures",
        Pool::Call => "call",
    }
}

fn schedule_view(st: &ScheduleState, staleness: &Staleness) -> ScheduleView {
    ScheduleView {
        staleness: staleness_view(staleness),
        approved_through: st.approved_through(),
        archived_through: st.tables().archived_through(),
        digest: st.digest().map(hex::encode).unwrap_or_default(),
        people: st
            .people()
            .map(|p| PersonView {
                id: p.id.to_string(),
                name: p.name.clone(),
                role: match p.role {
                    Role::Resident { .. } => "resident".into(),
                    Role::Faculty => "faculty".into(),
                },
                pgy: match p.role {
                    Role::Resident { pgy } => Some(pgy),
                    Role::Faculty => None,
                },
                leave_days: st.leave_of(&p.id),
            })
            .collect(),
        blocks: st.blocks().map(|b| block_view(st, b)).collect(),
        next: None,
    }
}

/// The schedule, linearizable or stale. Without paging parameters, the
/// whole schedule with its digest (its size is the history's: for small
/// networks and checks). With any of `from_day`, `to_day`, `pool`,
/// `cursor`, `limit`: one page of at most `limit` blocks in (day, id)
/// order, each with its people, and `next` for the following page.
#[utoipa::path(
    get,
    path = "/schedule",
    tag = "reads",
    params(ScheduleQuery),
    responses(
        (status = 200, description = "The schedule (or a page of it) and its staleness", body = ScheduleView),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 503, description = "PARTITIONED (linearizable in a minority), NO_LEADER, TIMED_OUT, CIRCUIT_OPEN or UNAVAILABLE", body = ErrorBody),
    )
)]
async fn get_schedule(
    State(s): State<ApiState>,
    q: Result<Query<ScheduleQuery>, QueryRejection>,
) -> Result<Json<ScheduleView>, ApiError> {
    let svc = service(&s)?;
    let q = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let mode = read_mode(q.consistency.as_deref(), q.fallback.as_deref())?;
    if q.paged() {
        if q.limit.is_some_and(|l| l == 0 || l > PAGE_LEN_MAX) {
            return Err(ApiError::bad("limit", format!("1 to {PAGE_LEN_MAX}")));
        }
        let pool = match q.pool.as_deref() {
            None => None,
            Some("icu") => Some(Pool::Icu),
            Some("clinic") => Some(Pool::Clinic),
            Some("procedures") => Some(Pool::Procedures),
            Some("call") => Some(Pool::Call),
            Some(_) => return Err(ApiError::bad("pool", "icu, clinic, procedures or call")),
        };
        if let Some(c) = q.cursor.as_deref() {
            parse_cursor(c)?;
        }
        let q = std::sync::Arc::new(q);
        return read_as(svc, mode, move |v, stale| schedule_page(v, stale, &q, pool))
            .await?
            .map(Json);
    }
    read_as(svc, mode, |v, stale| {
        v.to_state().map(|s| schedule_view(&s, stale))
    })
    .await?
    .map(Json)
    .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))
}

/// How one person's or block's read is served.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    /// `linearizable` (default) or `stale`.
    pub consistency: Option<String>,
    /// `stale`: a linearizable read that cannot be confirmed now is
    /// answered from the local state, flagged in `staleness.fallback_from`.
    pub fallback: Option<String>,
    /// A person's duty and leave from this day (default 0).
    pub from_day: Option<u32>,
    /// ... up to this day (default `from_day` + 365; at most 366 days).
    pub to_day: Option<u32>,
}

/// One person, their leave and their blocks in a range of days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PersonDetail {
    /// How current it is.
    pub staleness: StalenessView,
    /// The person (leave days within the range).
    pub person: PersonView,
    /// Their blocks that start within the range, by start time.
    pub blocks: Vec<BlockView>,
}

/// One block and who is on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlockDetail {
    /// How current it is.
    pub staleness: StalenessView,
    /// The block.
    pub block: BlockView,
}

/// One person's duty over a range of days: read from the person's own
/// index, so its cost is the range's, not the history's.
#[utoipa::path(
    get,
    path = "/people/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The person's id"), DetailQuery),
    responses(
        (status = 200, description = "The person and their blocks in the range", body = PersonDetail),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 404, description = "No such person", body = ErrorBody),
        (status = 503, description = "PARTITIONED (linearizable in a minority), NO_LEADER, TIMED_OUT, CIRCUIT_OPEN or UNAVAILABLE", body = ErrorBody),
    )
)]
async fn get_person(
    State(s): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    q: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Json<PersonDetail>, ApiError> {
    let svc = service(&s)?;
    let q = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let mode = read_mode(q.consistency.as_deref(), q.fallback.as_deref())?;
    let id: PersonId = id.parse()?;
    let from = q.from_day.unwrap_or(0);
    let to = q.to_day.unwrap_or(from.saturating_add(PERSON_DAYS_MAX - 1));
    if to < from || to - from >= PERSON_DAYS_MAX {
        return Err(ApiError::bad(
            "to_day",
            format!("from_day..=to_day covers 1 to {PERSON_DAYS_MAX} days"),
        ));
    }
    read_as(svc, mode, move |v, stale| {
        let p = v.person_of(&id)?;
        let t = v.tables();
        let start = u64::from(from) * bulwark_actors::schedule::DAY_MIN;
        let end = (u64::from(to) + 1) * bulwark_actors::schedule::DAY_MIN;
        let blocks = t
            .duty_starting(&id, start, end)
            .into_iter()
            .filter_map(|(_, b)| v.block_of(&b))
            .map(|b| block_view(v, &b))
            .collect();
        Some(PersonDetail {
            staleness: staleness_view(stale),
            person: person_view(&p, t.leave_days(&id, from, to)),
            blocks,
        })
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such person"))
}

/// One block and who is on it.
#[utoipa::path(
    get,
    path = "/blocks/{id}",
    tag = "reads",
    params(("id" = String, Path, description = "The block's id"), DetailQuery),
    responses(
        (status = 200, description = "The block", body = BlockDetail),
        (status = 400, description = "A bad parameter, named", body = ErrorBody),
        (status = 404, description = "No such block", body = ErrorBody),
        (status = 503, description = "PARTITIONED (linearizable in a minority), NO_LEADER, TIMED_OUT, CIRCUIT_OPEN or UNAVAILABLE", body = ErrorBody),
    )
)]
async fn get_block(
    State(s): State<ApiState>,
    axum::extract::Path(id): axum::extract::Path<String>,
    q: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Json<BlockDetail>, ApiError> {
    let svc = service(&s)?;
    let q = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let mode = read_mode(q.consistency.as_deref(), q.fallback.as_deref())?;
    let id: BlockId = id.parse()?;
    read_as(svc, mode, move |v, stale| {
        let b = v.block_of(&id)?;
        Some(BlockDetail {
            staleness: staleness_view(stale),
            block: block_view(v, &b),
        })
    })
    .await?
    .map(Json)
    .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such block"))
}

/// Runs `f` on the schedule through the CapGate (which refuses a
/// linearizable read without a quorum), with typed errors.
/// 503 `NO_LEADER`: no leader could take a write or confirm a read, the
/// same code for both; nothing was applied, so the request may be retried.
fn no_leader(hint: Option<bulwark_transport::FacilityId>) -> ApiError {
    ApiError::unavailable(
        "NO_LEADER",
        match hint {
            Some(l) => format!("the leader ({l}) could not take it; retry"),
            None => "no leader is known; retry".into(),
        },
        1_000,
    )
}

pub(crate) async fn gate_read<T: Send + 'static>(
    svc: &Service,
    consistency: Consistency,
    f: impl FnOnce(&ReplicaView, &Staleness) -> T + Send + 'static,
) -> Result<T, ApiError> {
    let gate = svc
        .ctx
        .find::<GateMsg>(Zone::Detection, CAP_GATE)
        .ok_or_else(|| {
            ApiError::unavailable("UNAVAILABLE", "the CAP gate is not running", 1_000)
        })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    gate.cast(GateMsg::Read {
        consistency,
        f: Box::new(move |r| {
            let _ = tx.send(r.map(|(st, stale)| f(st, &stale)));
        }),
    })
    .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
    match tokio::time::timeout(CALL_TIMEOUT + WRITE_TIMEOUT, rx).await {
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(ReadError::Partitioned(p)))) => Err(ApiError::partitioned(&p)),
        Ok(Ok(Err(ReadError::NoLeader { hint }))) => Err(no_leader(hint)),
        Ok(Ok(Err(ReadError::TimedOut))) => Err(ApiError::unavailable(
            "TIMED_OUT",
            "no quorum confirmed the read in time; retry",
            1_000,
        )),
        Ok(Ok(Err(ReadError::Unavailable(m)))) => {
            Err(ApiError::unavailable("UNAVAILABLE", m, 1_000))
        }
        Ok(Ok(Err(ReadError::Shed {
            dependency,
            retry_after_ms,
        }))) => Err(circuit_open(&dependency, retry_after_ms)),
        _ => Err(ApiError::unavailable(
            "TIMED_OUT",
            "the read did not answer",
            1_000,
        )),
    }
}

/// 503 CIRCUIT_OPEN: the breaker guarding the call this request needs is
/// open, so nothing was sent (definitely not applied).
fn circuit_open(dependency: &str, retry_after_ms: u64) -> ApiError {
    ApiError::unavailable(
        "CIRCUIT_OPEN",
        format!(
            "the circuit {dependency} is open (the peer failed lately or is down); nothing was sent: retry after the delay, at this or another facility"
        ),
        retry_after_ms.max(100),
    )
}

/// One peer as this facility sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PeerStatus {
    /// The facility.
    pub id: String,
    /// The QUIC link: up, connecting, down.
    pub link: String,
    /// φ of the failure detector (an unbounded φ is sent as the largest
    /// finite number).
    pub phi: f64,
    /// up, suspect or down.
    pub liveness: String,
    /// The wire protocol version the link runs at: the newest both
    /// facilities speak (the oldest this build speaks until a link came
    /// up). During a rolling upgrade, links to facilities not yet upgraded
    /// run at the older version. (Absent from an older node's answer: 0.)
    #[serde(default)]
    pub wire: u32,
}

/// A circuit breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BreakerStatus {
    /// The facility that holds it.
    pub facility: String,
    /// The dependency.
    pub dependency: String,
    /// closed, open, half_open, …
    pub state: String,
}

/// A bulkhead pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BulkheadStatus {
    /// The pool.
    pub name: String,
    /// Units owned.
    pub capacity: u32,
    /// Units in use.
    pub allocated: u32,
    /// Units never lent.
    pub reserved: u32,
    /// Requests refused.
    pub rejections: u64,
}

/// The ledger's head here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerHead {
    /// The last final height.
    pub height: u64,
    /// Its hash, hex.
    pub hash: String,
    /// Evidence recorded.
    pub evidence: usize,
    /// Each peer's final height as it last announced it (its validator's
    /// heads arrive every few ticks), so heads can be read side by side.
    #[serde(default)]
    pub peers: std::collections::BTreeMap<String, u64>,
}

/// The cluster as this facility sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// This facility.
    pub facility: String,
    /// Every member.
    pub members: Vec<String>,
    /// The Raft leader as known here.
    pub leader: Option<String>,
    /// The Raft term.
    pub term: Option<u64>,
    /// The commit index.
    pub commit: Option<u64>,
    /// The applied index.
    pub applied: Option<u64>,
    /// CONNECTED, MAJORITY, MINORITY or ISOLATED.
    pub partition: String,
    /// Every peer.
    pub peers: Vec<PeerStatus>,
    /// Breakers here and those peers reported.
    pub breakers: Vec<BreakerStatus>,
    /// Bulkhead pools here.
    pub bulkheads: Vec<BulkheadStatus>,
    /// Admission: pressure 0..1 and the queue.
    pub admission_pressure: Option<f64>,
    /// The ledger head.
    pub ledger: Option<LedgerHead>,
}

async fn ask<M: ractor::Message, T: Send + 'static>(
    actor: Option<ractor::ActorRef<M>>,
    msg: impl FnOnce(ractor::RpcReplyPort<T>) -> M,
) -> Option<T> {
    actor?
        .call(msg, Some(CALL_TIMEOUT))
        .await
        .ok()?
        .success_or(())
        .ok()
}

/// Members, leader, φ per peer, partition state, breakers, bulkheads and
/// the ledger head.
pub async fn cluster_status(s: &ApiState) -> Result<ClusterStatus, ApiError> {
    let svc = service(s)?;
    let ctx = &svc.ctx;
    let raft: Option<RaftStatus> =
        ask(ctx.find::<RaftMsg>(Zone::Consensus, RAFT), RaftMsg::Status).await;
    let view = svc.detection.as_ref().map(|d| d.view());
    let peers = svc
        .members
        .iter()
        .filter(|m| **m != ctx.facility)
        .map(|m| {
            let pv = view
                .as_ref()
                .and_then(|v| v.peers.iter().find(|p| p.peer == *m));
            PeerStatus {
                id: m.to_string(),
                link: match s.transport.link_status(m) {
                    LinkStatus::Up => "up".into(),
                    other => format!("{other:?}").to_lowercase(),
                },
                phi: pv.map_or(0.0, |p| if p.phi.is_finite() { p.phi } else { f64::MAX }),
                liveness: pv.map_or("unknown".into(), |p| {
                    format!("{:?}", p.liveness).to_lowercase()
                }),
                wire: s.transport.peer_protocol(m),
            }
        })
        .collect();
    let mut breakers = Vec::new();
    if let Some(mesh) = ask(
        ctx.find::<BreakerMsg>(Zone::Flow, BREAKERS),
        BreakerMsg::Status,
    )
    .await
    {
        for b in mesh.local {
            breakers.push(BreakerStatus {
                facility: ctx.facility.to_string(),
                dependency: b.name,
                state: b.state.to_string(),
            });
        }
        for b in mesh.remote {
            breakers.push(BreakerStatus {
                facility: b.facility.to_string(),
                dependency: b.dependency,
                state: b.state,
            });
        }
    }
    let bulkheads = ask(
        ctx.find::<BulkheadMsg>(Zone::Flow, BULKHEADS),
        BulkheadMsg::Status,
    )
    .await
    .unwrap_or_default()
    .into_iter()
    .map(|p| BulkheadStatus {
        name: p.name,
        capacity: p.capacity,
        allocated: p.allocated,
        reserved: p.reserved,
        rejections: p.rejections,
    })
    .collect();
    let admission_pressure = match &s.admission() {
        Some(bp) => ask(Some(bp.clone()), BackpressureMsg::Status)
            .await
            .map(|b| b.pressure),
        None => None,
    };
    let ledger = match bft::validator_of(ctx) {
        Some(v) => bft::status(&v).await.map(|b| LedgerHead {
            height: b.final_height,
            hash: hex::encode(b.final_hash),
            evidence: b.evidence,
            peers: b
                .peer_heights
                .iter()
                .map(|(f, h)| (f.to_string(), *h))
                .collect(),
        }),
        None => None,
    };
    Ok(ClusterStatus {
        facility: ctx.facility.to_string(),
        members: svc.members.iter().map(|m| m.to_string()).collect(),
        leader: raft
            .as_ref()
            .and_then(|r| r.leader.as_ref().map(|l| l.to_string())),
        term: raft.as_ref().map(|r| r.term),
        commit: raft.as_ref().map(|r| r.commit),
        applied: raft.as_ref().map(|r| r.applied),
        partition: view.map_or("UNKNOWN".into(), |v| v.partition.code().into()),
        peers,
        breakers,
        bulkheads,
        admission_pressure,
        ledger,
    })
}

/// The cluster view.
#[utoipa::path(
    get,
    path = "/cluster",
    tag = "reads",
    responses((status = 200, description = "The cluster as this facility sees it", body = ClusterStatus))
)]
async fn get_cluster(State(s): State<ApiState>) -> Result<Json<ClusterStatus>, ApiError> {
    cluster_status(&s).await.map(Json)
}

/// A signed vote of a certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VoteView {
    /// The signer.
    pub signer: String,
    /// The signed body, hex.
    pub body: String,
    /// The ed25519 signature, hex.
    pub sig: String,
}

/// A final ledger entry with its certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryView {
    /// Height.
    pub height: u64,
    /// blake3 of the entry's bytes, hex.
    pub hash: String,
    /// The previous entry's hash, hex.
    pub prev: String,
    /// Raft index.
    pub raft_index: u64,
    /// Raft term.
    pub raft_term: u64,
    /// Proposer.
    pub proposer: String,
    /// Proposer's timestamp.
    pub at_unix_ms: u64,
    /// The command's name.
    pub op: String,
    /// The entry's bytes, hex (what the hash is over).
    pub entry: String,
    /// The certificate's votes.
    pub votes: Vec<VoteView>,
    /// Verified here before it was served: link, certificate quorum,
    /// signatures.
    pub verified: bool,
}

/// One final ledger entry and its certificate.
#[utoipa::path(
    get,
    path = "/ledger/{height}",
    tag = "reads",
    params(("height" = u64, Path, description = "Height, from 1")),
    responses(
        (status = 200, description = "The entry, verified", body = LedgerEntryView),
        (status = 400, description = "Bad height", body = ErrorBody),
        (status = 404, description = "Not final here", body = ErrorBody),
        (status = 503, description = "The stored entry does not verify, or the store failed", body = ErrorBody),
    )
)]
async fn get_ledger(
    State(s): State<ApiState>,
    height: Result<Path<u64>, PathRejection>,
) -> Result<Json<LedgerEntryView>, ApiError> {
    let svc = service(&s)?;
    let Path(height) = height.map_err(|e| ApiError::bad("height", e.body_text()))?;
    if height == 0 {
        return Err(ApiError::bad("height", "heights start at 1"));
    }
    let store = LedgerStore::new(svc.ctx.store.clone());
    let from = height - 1;
    let finals = store
        .finals(from.max(1), 2)
        .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
    let (prev, fin) = match (from, finals.as_slice()) {
        (0, [fin, ..]) => (GENESIS, fin),
        (_, [before, fin, ..]) => (before.cert.hash, fin),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("height {height} is not final here"),
            ))
        }
    };
    let epochs = store
        .epochs(&svc.keys)
        .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
    let checked = ledger::verify_final(fin, height, &prev, &epochs);
    let entry: LedgerEntry = match &checked {
        Ok((e, _, _)) => e.clone(),
        Err(f) => {
            return Err(ApiError::unavailable(
                "UNAVAILABLE",
                format!("the stored entry does not verify: {f}"),
                60_000,
            ))
        }
    };
    let op = checked
        .as_ref()
        .map(|(_, _, p)| p.command.op.name().to_string())
        .unwrap_or_default();
    let votes = fin
        .cert
        .votes
        .iter()
        .map(|v| VoteView {
            signer: v.decode().map(|b| b.signer.to_string()).unwrap_or_default(),
            body: hex::encode(&v.body),
            sig: hex::encode(codec::encode(&v.sig).unwrap_or_default()),
        })
        .collect();
    Ok(Json(LedgerEntryView {
        height,
        hash: hex::encode(fin.cert.hash),
        prev: hex::encode(entry.prev),
        raft_index: entry.raft_index,
        raft_term: entry.raft_term,
        proposer: entry.proposer.to_string(),
        at_unix_ms: entry.at_unix_ms,
        op,
        entry: hex::encode(&fin.entry),
        votes,
        verified: true,
    }))
}

/// Evidence of misbehaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvidenceView {
    /// Who misbehaved.
    pub offender: String,
    /// When it was recorded (this facility's clock).
    pub at_unix_ms: u64,
    /// EQUIVOCATION, BAD_VOTE_SIGNATURE, BAD_PROPOSAL, …
    pub code: String,
    /// The proof (the evidence's bincode encoding), hex.
    pub proof: String,
    /// Produced by a drill the operator declared (`POST
    /// /v1/admin/chaos/drills`): kept and shown, costing no trust.
    #[serde(default)]
    pub drill: bool,
}

/// Every facility's trust score as this facility's validator holds it.
#[utoipa::path(
    get,
    path = "/trust",
    tag = "reads",
    responses((status = 200, description = "Facility -> trust, 0.0 to 1.0 (1.0 minus the penalties of its non-drill evidence of the last 30 days)", body = BTreeMap<String, f64>))
)]
async fn get_trust(
    State(s): State<ApiState>,
) -> Result<Json<std::collections::BTreeMap<String, f64>>, ApiError> {
    let svc = service(&s)?;
    let trust = ask(bft::validator_of(&svc.ctx), BftMsg::Trust)
        .await
        .ok_or_else(|| {
            ApiError::unavailable("UNAVAILABLE", "the validator does not answer", 1_000)
        })?;
    Ok(Json(
        trust.into_iter().map(|(f, t)| (f.to_string(), t)).collect(),
    ))
}

/// Every piece of evidence this facility recorded.
#[utoipa::path(
    get,
    path = "/evidence",
    tag = "reads",
    responses((status = 200, description = "Evidence, oldest first", body = [EvidenceView]))
)]
async fn get_evidence(State(s): State<ApiState>) -> Result<Json<Vec<EvidenceView>>, ApiError> {
    let svc = service(&s)?;
    let all = ask(bft::validator_of(&svc.ctx), BftMsg::EvidenceMarked)
        .await
        .ok_or_else(|| {
            ApiError::unavailable("UNAVAILABLE", "the validator does not answer", 1_000)
        })?;
    Ok(Json(
        all.into_iter()
            .map(|(e, drill)| EvidenceView {
                offender: e.offender.to_string(),
                at_unix_ms: e.at_unix_ms,
                code: e.kind.code().into(),
                proof: hex::encode(codec::encode(&e).unwrap_or_default()),
                drill,
            })
            .collect(),
    ))
}

/// A backup taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BackupAnswer {
    /// This facility's file.
    pub path: String,
    /// The checkpoint's agreed time (unix ms; restore's point in time).
    pub at_unix_ms: u64,
    /// The checkpoint's log index: every facility backs up at it (restore
    /// each with `--index`).
    pub index: u64,
    /// Rows copied.
    pub rows: u64,
    /// Its size.
    pub bytes: u64,
}

/// How long a backup request waits for this facility's file.
const BACKUP_WAIT: Duration = Duration::from_secs(120);

/// Takes a consistent cluster backup now: a checkpoint through consensus
/// (`Op::Checkpoint`), after which every facility backs its store up as it
/// stands right after that entry. Answers with this facility's file once
/// written (old ones beyond the configured count are deleted).
#[utoipa::path(
    post,
    path = "/admin/backup",
    tag = "operations",
    responses(
        (status = 200, description = "Checkpoint committed; this facility's file written", body = BackupAnswer),
        (status = 503, description = "No backup directory, no quorum, or the write failed or is still running", body = ErrorBody),
    )
)]
async fn post_backup(State(s): State<ApiState>) -> Result<Json<BackupAnswer>, ApiError> {
    let svc = service(&s)?.clone();
    let cps = svc
        .backup
        .clone()
        .ok_or_else(|| ApiError::unavailable("UNAVAILABLE", "no backup directory", 60_000))?;
    let gate = svc
        .ctx
        .find::<GateMsg>(Zone::Detection, CAP_GATE)
        .ok_or_else(|| {
            ApiError::unavailable("UNAVAILABLE", "the CAP gate is not running", 1_000)
        })?;
    // A fresh key: a retried backup is one more checkpoint, never a
    // replay of an old one.
    let key = IdempotencyKey(rand::random());
    let command = Command {
        key,
        issued_by: svc.ctx.facility.clone(),
        at_unix_ms: svc.now_ms(),
        hlc: Hlc::ZERO,
        op: Op::Checkpoint,
    };
    let deadline = super::arrived() + WRITE_TIMEOUT;
    let (_, answer) = written(submit(&gate, command, false, deadline).await?)?;
    let index = answer.index.ok_or_else(|| {
        ApiError::unavailable("UNAVAILABLE", "the checkpoint was not committed", 1_000)
    })?;
    let waited = cps
        .wait(index, tokio::time::Instant::now() + BACKUP_WAIT)
        .await
        .ok_or_else(|| {
            ApiError::unavailable(
                "TIMED_OUT",
                format!(
                    "checkpoint {index} committed; this facility's backup is still being written"
                ),
                10_000,
            )
        })?;
    let (b, info) = waited.map_err(|e| {
        ApiError::unavailable("UNAVAILABLE", format!("checkpoint {index}: {e}"), 60_000)
    })?;
    Ok(Json(BackupAnswer {
        path: b.path.display().to_string(),
        at_unix_ms: b.at_unix_ms,
        index,
        rows: info.rows,
        bytes: info.bytes,
    }))
}

/// The OpenAPI document of everything [`routes`] serves, under `/v1`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
    let mut doc = OpenApiRouter::<ApiState>::new()
        .nest("/v1", routes())
        .into_openapi();
    doc.info.title = "bulwark facility API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "One facility of a bulwark cluster: schedule writes through the CAP gate, reads with \
         their staleness, the cluster view, the ledger and evidence."
            .into(),
    );
    let comps = doc.components.get_or_insert_with(Default::default);
    comps.add_security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    // Every operation states the scope it needs (the table the middleware
    // enforces, `auth::required`) and the answers without it.
    for (path, item) in doc.paths.paths.iter_mut() {
        for (method, op) in [
            (axum::http::Method::GET, item.get.as_mut()),
            (axum::http::Method::POST, item.post.as_mut()),
        ] {
            let Some(op) = op else { continue };
            let Some(scope) = super::auth::required(&method, path) else {
                continue;
            };
            op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                "bearer",
                [scope.name()],
            )]);
            for (code, what) in [
                ("401", "Missing or unknown bearer token"),
                (
                    "403",
                    "FORBIDDEN: the token lacks the scope (named); API_CLOSED: no token configured",
                ),
            ] {
                op.responses.responses.insert(
                    code.into(),
                    utoipa::openapi::RefOr::T(
                        utoipa::openapi::ResponseBuilder::new()
                            .description(what)
                            .content(
                                "application/json",
                                utoipa::openapi::ContentBuilder::new()
                                    .schema(Some(utoipa::openapi::Ref::from_schema_name(
                                        "ErrorBody",
                                    )))
                                    .build(),
                            )
                            .build(),
                    ),
                );
            }
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document lists exactly the routes served (both come from the
    /// same `routes!` registrations), each with its responses, and the
    /// writes require the bearer scheme.
    #[test]
    fn the_openapi_document_covers_every_route() {
        let doc = openapi();
        let mut paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "/v1/admin/backup",
                "/v1/admin/chaos",
                "/v1/admin/chaos/drills",
                "/v1/admin/chaos/namespace-drops",
                "/v1/admin/checkpoints",
                "/v1/admin/leader",
                "/v1/admin/members",
                "/v1/admin/reviews",
                "/v1/admin/reviews/{id}",
                "/v1/admin/validators",
                "/v1/approvals",
                "/v1/archive",
                "/v1/assignments",
                "/v1/audit",
                "/v1/batch",
                "/v1/blocks",
                "/v1/blocks/{id}",
                "/v1/cluster",
                "/v1/coverage",
                "/v1/emergency",
                "/v1/evidence",
                "/v1/leave",
                "/v1/ledger/{height}",
                "/v1/people",
                "/v1/people/{id}",
                "/v1/retirements",
                "/v1/schedule",
                "/v1/swaps",
                "/v1/trust",
                "/v1/unassignments",
            ]
        );
        let json = serde_json::to_value(&doc).unwrap();
        let post = &json["paths"]["/v1/assignments"]["post"];
        assert!(post["responses"]["409"].is_object(), "{post}");
        assert_eq!(
            post["security"][0]["bearer"],
            serde_json::json!(["schedule"])
        );
        // Every operation names one scope and answers 401 and 403; a few
        // by hand (the table is `auth::required`; these are what the
        // README promises).
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let scopes = &op["security"][0]["bearer"];
                assert_eq!(scopes.as_array().map(Vec::len), Some(1), "{method} {path}");
                assert!(op["responses"]["401"].is_object(), "{method} {path}");
                assert!(op["responses"]["403"].is_object(), "{method} {path}");
            }
        }
        for (path, method, scope) in [
            ("/v1/schedule", "get", "read"),
            ("/v1/people", "post", "schedule"),
            ("/v1/approvals", "post", "approve"),
            ("/v1/leave", "post", "approve"),
            ("/v1/admin/backup", "post", "operator"),
            ("/v1/admin/chaos", "post", "chaos"),
            ("/v1/admin/chaos", "get", "chaos"),
        ] {
            assert_eq!(
                json["paths"][path][method]["security"][0]["bearer"],
                serde_json::json!([scope]),
                "{method} {path}"
            );
        }
        assert_eq!(post["parameters"][0]["name"], "Idempotency-Key", "{post}");
        assert!(json["components"]["schemas"]["ErrorBody"].is_object());
        assert!(json["components"]["securitySchemes"]["bearer"].is_object());
    }

    #[test]
    fn gate_outcomes_map_to_statuses() {
        use bulwark_actors::cap::{Mode, PartitionError, PartitionState};
        use bulwark_actors::schedule::{Rejection, Rule};
        let p = written(GateOutcome::Partitioned(PartitionError {
            state: PartitionState::Minority,
            mode: Mode::Cp,
            operation: "approve".into(),
        }))
        .unwrap_err();
        assert_eq!(p.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (
                p.body.code.as_str(),
                p.body.partition.as_deref(),
                p.body.mode.as_deref()
            ),
            ("PARTITIONED", Some("MINORITY"), Some("CP"))
        );
        let r = written(GateOutcome::Refused {
            rejection: Rejection {
                rule: Rule::DoubleBooking,
                detail: "x".into(),
            },
            partition: PartitionState::Minority,
        })
        .unwrap_err();
        assert_eq!(
            (
                r.status,
                r.body.rule.as_deref(),
                r.body.partition.as_deref(),
                r.body.mode.as_deref()
            ),
            (
                StatusCode::CONFLICT,
                Some("DOUBLE_BOOKING"),
                Some("MINORITY"),
                Some("AP")
            )
        );
        let (st, a) = written(GateOutcome::Provisional {
            id: 3,
            hlc: Hlc {
                wall_ms: 5,
                logical: 1,
                node: 2,
            },
            partition: PartitionState::Minority,
        })
        .unwrap();
        assert_eq!(st, StatusCode::ACCEPTED);
        assert_eq!(
            (a.status.as_str(), a.provisional_id),
            ("provisional", Some(3))
        );
        let t = written(GateOutcome::Consensus(ProposeOutcome::TimedOut)).unwrap_err();
        assert_eq!(t.body.code, "TIMED_OUT");
        assert!(t.body.retry_after_ms.is_some());
    }
}
