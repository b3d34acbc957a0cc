//! `/v1/admin/chaos`: the levers a chaos experiment pulls on one facility,
//! and the guarantee that they are let go.
//!
//! Off unless `[chaos] enabled = true` (403 `CHAOS_DISABLED`), and every
//! change needs the bearer token. Each action arms a dead-man timer on the
//! facility itself: when it runs out before another action re-arms it,
//! every lever is released here — fault rules removed, disk faults cleared,
//! clock skew zeroed, the validator honest again — so a fault outlives
//! neither its experiment nor an agent that died mid-run.

use super::api::{decode_json, service, Service};
use super::error::{ApiError, ErrorBody};
use super::ApiState;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use bulwark_actors::bft::Behaviour;
use bulwark_actors::bft::BftMsg;
use bulwark_actors::chaos::experiment::{behaviour_named, SKEW_MS_MAX};
use bulwark_runtime::Zone;
use bulwark_transport::{FaultRule, RuleId};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use utoipa::ToSchema;

/// Longest a dead-man timer may run (one hour).
pub const DEAD_MAN_MS_MAX: u64 = 3_600_000;

/// Dead-man timer when the request names none (ten minutes).
pub const DEAD_MAN_MS_DEFAULT: u64 = 600_000;

/// Fault rules one facility holds for chaos at most.
pub const CHAOS_RULES_MAX: usize = 64;

/// One lever.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChaosAction {
    /// Adds a rule to this facility's fault plan (its outgoing traffic obeys
    /// it; install a partition on every facility to cut both directions).
    FaultRule {
        /// The rule, as `bulwark_transport::FaultRule` serializes.
        #[schema(value_type = Object)]
        rule: FaultRule,
    },
    /// A slow and/or failing disk under this facility's store.
    Disk {
        /// Added before each durable write on the consensus path, in ms.
        latency_ms: u64,
        /// Chance each durable write transaction is refused (0 to 1).
        #[serde(default)]
        write_failure: f64,
        /// Seed of the refusals.
        #[serde(default)]
        seed: u64,
    },
    /// Shifts this facility's wall clock.
    ClockSkew {
        /// Signed offset in ms, at most a day either way.
        skew_ms: i64,
    },
    /// The validator behaves as named from now on: `equivocate`,
    /// `forge_votes`, `vote_for_invalid`, `replay_stale`, `withhold` or
    /// `honest`.
    Behaviour {
        /// The behaviour's name.
        behaviour: String,
    },
    /// Kills one actor as a crash would; its supervisor restarts it.
    KillActor {
        /// transport, detection, consensus, flow, chaos or service.
        #[schema(value_type = String)]
        zone: Zone,
        /// The actor's name (`raft`, `bft`, `cap_gate`, …).
        name: String,
    },
    /// Releases every lever held here.
    Clear,
}

/// The handler's checks that need only the request: the dead-man timer's
/// range and each action's numbers and names. What needs the facility (the
/// rules it holds, a skewable clock, a running validator, the actor to
/// kill) is checked by the handler after this. The fuzz target
/// `chaos_body` calls it on every body that decodes.
pub fn check(req: &ChaosRequest) -> Result<(), ApiError> {
    let dead_man = req.dead_man_ms.unwrap_or(DEAD_MAN_MS_DEFAULT);
    if dead_man == 0 || dead_man > DEAD_MAN_MS_MAX {
        return Err(ApiError::bad(
            "dead_man_ms",
            format!("1 to {DEAD_MAN_MS_MAX} ms"),
        ));
    }
    match &req.action {
        ChaosAction::FaultRule { rule } => rule
            .validate()
            .map_err(|e| ApiError::bad("action.rule", e.to_string())),
        ChaosAction::Disk {
            latency_ms,
            write_failure,
            seed,
        } => bulwark_storage::DiskFaultSpec {
            latency_ms: *latency_ms,
            write_failure: *write_failure,
            seed: *seed,
        }
        .validate()
        .map_err(|e| ApiError::bad("action", e.to_string())),
        ChaosAction::ClockSkew { skew_ms } => {
            // Not `abs()`: `i64::MIN` has none (it panics, or wraps and
            // passes in a release build).
            if !(-SKEW_MS_MAX..=SKEW_MS_MAX).contains(skew_ms) {
                return Err(ApiError::bad("action.skew_ms", "at most a day either way"));
            }
            Ok(())
        }
        ChaosAction::Behaviour { behaviour } => {
            behaviour_named(behaviour).map(|_| ()).ok_or_else(|| {
                ApiError::bad(
                    "action.behaviour",
                    "honest, equivocate, forge_votes, vote_for_invalid, replay_stale or withhold",
                )
            })
        }
        ChaosAction::KillActor { .. } | ChaosAction::Clear => Ok(()),
    }
}

/// `POST /v1/admin/chaos`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChaosRequest {
    /// The lever.
    pub action: ChaosAction,
    /// Release everything after this many ms without another action
    /// (default 600000, at most 3600000).
    #[serde(default)]
    pub dead_man_ms: Option<u64>,
}

/// What this facility holds for chaos now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChaosView {
    /// Fault rules added through chaos.
    pub rules: Vec<String>,
    /// The clock skew, ms.
    pub skew_ms: i64,
    /// Injected disk latency, ms.
    pub disk_latency_ms: u64,
    /// Injected chance of a refused durable write.
    pub disk_write_failure: f64,
    /// Actors killed since the last clear.
    pub killed: Vec<String>,
    /// The validator's behaviour set through chaos, if one is.
    pub behaviour: Option<String>,
    /// When everything is released unless re-armed (ms from now), if armed.
    pub release_in_ms: Option<u64>,
    /// Times the dead-man timer released everything.
    pub dead_man_releases: u64,
}

#[derive(Default)]
struct Held {
    rules: Vec<RuleId>,
    killed: Vec<String>,
    /// The behaviour set, and the one before the first change.
    behaviour: Option<(String, Behaviour)>,
    deadline: Option<tokio::time::Instant>,
}

/// The chaos levers of one facility and what they hold.
#[derive(Default)]
pub struct ChaosControl {
    held: Mutex<Held>,
    generation: AtomicU64,
    releases: AtomicU64,
}

impl ChaosControl {
    /// Nothing held.
    pub fn new() -> Arc<ChaosControl> {
        Arc::new(ChaosControl::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Releases every lever; returns what was released.
    pub fn clear(&self, state: &ApiState, svc: &Service) -> Vec<String> {
        let mut held = self.lock();
        let mut released = Vec::new();
        for id in held.rules.drain(..) {
            if state.transport.faults().remove(id) {
                released.push(format!("fault rule {id:?}"));
            }
        }
        if !svc.ctx.store.disk_faults().spec().is_clear() {
            svc.ctx.store.disk_faults().clear();
            released.push("disk faults".into());
        }
        if svc.ctx.clock.skew_ms() != 0 {
            svc.ctx.clock.set_skew_ms(0);
            released.push("clock skew".into());
        }
        held.killed.clear();
        if let Some((_, before)) = held.behaviour.take() {
            if let Some(v) = bulwark_actors::bft::validator_of(&svc.ctx) {
                // Nobody waits for the answer: the cast is what counts.
                let (reply, _) = ractor::concurrency::oneshot();
                let _ = v.cast(BftMsg::SetBehaviour {
                    behaviour: before,
                    reply: reply.into(),
                });
            }
            released.push("validator behaviour".into());
        }
        held.deadline = None;
        self.generation.fetch_add(1, Ordering::SeqCst);
        released
    }

    fn view(&self, svc: &Service) -> ChaosView {
        let held = self.lock();
        let now = tokio::time::Instant::now();
        ChaosView {
            rules: held.rules.iter().map(|r| format!("{r:?}")).collect(),
            skew_ms: svc.ctx.clock.skew_ms(),
            disk_latency_ms: svc.ctx.store.disk_faults().spec().latency_ms,
            disk_write_failure: svc.ctx.store.disk_faults().spec().write_failure,
            killed: held.killed.clone(),
            behaviour: held.behaviour.as_ref().map(|b| b.0.clone()),
            release_in_ms: held
                .deadline
                .map(|d| d.saturating_duration_since(now).as_millis() as u64),
            dead_man_releases: self.releases.load(Ordering::SeqCst),
        }
    }

    /// (Re-)arms the dead-man timer: unless another action comes first,
    /// everything is released after `ms`.
    fn arm(self: &Arc<Self>, state: &ApiState, ms: u64) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.lock().deadline = Some(tokio::time::Instant::now() + Duration::from_millis(ms));
        let (me, state) = (self.clone(), state.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if me.generation.load(Ordering::SeqCst) != generation {
                return;
            }
            if let Some(svc) = state.service.clone() {
                let released = me.clear(&state, &svc);
                me.releases.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(?released, "chaos dead-man timer released every lever");
                metrics::counter!("bulwark_chaos_dead_man_releases_total",
                    "facility" => svc.ctx.facility.to_string())
                .increment(1);
            }
        });
    }
}

fn control(svc: &Service) -> Result<Arc<ChaosControl>, ApiError> {
    svc.chaos.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "CHAOS_DISABLED",
            "chaos is disabled on this facility ([chaos] enabled = false)",
        )
    })
}

/// Pulls one chaos lever on this facility (see the module docs of
/// `bulwark::http::chaos`).
#[utoipa::path(
    post,
    path = "/admin/chaos",
    tag = "operations",
    request_body = ChaosRequest,
    responses(
        (status = 200, description = "Done; what is held now", body = ChaosView),
        (status = 400, description = "Malformed action, bad rule or out-of-range value", body = ErrorBody),
        (status = 403, description = "Chaos disabled here", body = ErrorBody),
        (status = 404, description = "No such actor", body = ErrorBody),
        (status = 409, description = "This facility's clock cannot be skewed", body = ErrorBody),
    )
)]
pub(crate) async fn post_chaos(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<Json<ChaosView>, ApiError> {
    let svc = service(&s)?.clone();
    let ctl = control(&svc)?;
    let req: ChaosRequest = decode_json(&body)?;
    check(&req)?;
    let dead_man = req.dead_man_ms.unwrap_or(DEAD_MAN_MS_DEFAULT);
    let facility = svc.ctx.facility.to_string();
    match req.action {
        ChaosAction::FaultRule { rule } => {
            if ctl.lock().rules.len() >= CHAOS_RULES_MAX {
                return Err(ApiError::bad(
                    "action.rule",
                    format!("this facility already holds {CHAOS_RULES_MAX} chaos rules"),
                ));
            }
            let id = s
                .transport
                .faults()
                .add(rule)
                .map_err(|e| ApiError::bad("action.rule", e.to_string()))?;
            ctl.lock().rules.push(id);
        }
        ChaosAction::Disk {
            latency_ms,
            write_failure,
            seed,
        } => {
            let spec = bulwark_storage::DiskFaultSpec {
                latency_ms,
                write_failure,
                seed,
            };
            svc.ctx
                .store
                .disk_faults()
                .set(spec)
                .map_err(|e| ApiError::bad("action", e.to_string()))?;
        }
        ChaosAction::ClockSkew { skew_ms } => {
            if !svc.ctx.clock.set_skew_ms(skew_ms) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "NOT_SUPPORTED",
                    "this facility's clock cannot be skewed",
                ));
            }
        }
        ChaosAction::Behaviour { behaviour } => {
            let b = behaviour_named(&behaviour).expect("check() accepted the name");
            let v = bulwark_actors::bft::validator_of(&svc.ctx).ok_or_else(|| {
                ApiError::unavailable("UNAVAILABLE", "the validator is not running", 1_000)
            })?;
            let before = v
                .call(
                    |reply| BftMsg::SetBehaviour {
                        behaviour: b,
                        reply,
                    },
                    Some(Duration::from_secs(5)),
                )
                .await
                .ok()
                .and_then(|r| r.success_or(()).ok())
                .ok_or_else(|| {
                    ApiError::unavailable("UNAVAILABLE", "the validator did not answer", 1_000)
                })?;
            let mut held = ctl.lock();
            let original = held.behaviour.take().map_or(before, |h| h.1);
            held.behaviour = Some((behaviour, original));
        }
        ChaosAction::KillActor { zone, name } => {
            if !svc.ctx.kill_actor(zone, &name) {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    format!("no actor {}/{name} runs here", zone.as_str()),
                ));
            }
            ctl.lock().killed.push(format!("{}/{name}", zone.as_str()));
        }
        ChaosAction::Clear => {
            let released = ctl.clear(&s, &svc);
            tracing::info!(?released, "chaos levers released");
            return Ok(Json(ctl.view(&svc)));
        }
    }
    metrics::counter!("bulwark_chaos_actions_total", "facility" => facility).increment(1);
    ctl.arm(&s, dead_man);
    Ok(Json(ctl.view(&svc)))
}

/// What this facility holds for chaos.
#[utoipa::path(
    get,
    path = "/admin/chaos",
    tag = "operations",
    responses(
        (status = 200, description = "Held now", body = ChaosView),
        (status = 403, description = "Chaos disabled here", body = ErrorBody),
    )
)]
pub(crate) async fn get_chaos(State(s): State<ApiState>) -> Result<Json<ChaosView>, ApiError> {
    let svc = service(&s)?.clone();
    let ctl = control(&svc)?;
    Ok(Json(ctl.view(&svc)))
}
