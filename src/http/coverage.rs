//! `GET /v1/coverage?lose=1|2`: the N-1 / N-2 contingency check on this
//! facility's schedule — for each faculty member (or pair) lost, can every
//! block they staff be refilled through the real rules? Nothing is
//! written: the check runs on a copy.

use super::api::{gate_read, service};
use super::error::{ApiError, ErrorBody};
use super::ApiState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use bulwark_actors::cap::Consistency;
use bulwark_actors::chaos::coverage::{self, CoverageReport};
use bulwark_actors::schedule::ScheduleState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Gaps listed in one answer at most (the count is always complete).
pub const GAPS_LISTED_MAX: usize = 200;

/// The query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CoverageQuery {
    /// 1 (N-1, default) or 2 (N-2).
    pub lose: Option<u8>,
}

/// A block left short by a loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GapView {
    /// Who was lost.
    pub lost: Vec<String>,
    /// The block.
    pub block: String,
    /// Its day.
    pub day: u32,
    /// People it needs.
    pub required: u8,
    /// People on it after every eligible cover was tried.
    pub staffed: usize,
    /// Candidates refused, with the rule that refused each (first ones).
    pub refused: Vec<String>,
}

/// The contingency check's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CoverageView {
    /// 1 or 2.
    pub lose: u8,
    /// Faculty members on the schedule.
    pub faculty: usize,
    /// Loss scenarios checked (members, or pairs).
    pub scenarios: usize,
    /// Scenarios left out beyond the pair cap.
    pub skipped: usize,
    /// Scenarios with at least one gap.
    pub failing: usize,
    /// Gaps, up to [`GAPS_LISTED_MAX`].
    pub gaps: Vec<GapView>,
    /// Gaps in all.
    pub gaps_total: usize,
}

fn gaps_of(report: &CoverageReport, out: &mut Vec<GapView>, total: &mut usize) {
    for g in &report.gaps {
        *total += 1;
        if out.len() < GAPS_LISTED_MAX {
            out.push(GapView {
                lost: report.lost.iter().map(|p| p.as_str().to_string()).collect(),
                block: g.block.as_str().to_string(),
                day: g.day,
                required: g.required,
                staffed: g.staffed_after,
                refused: g
                    .tried
                    .iter()
                    .map(|a| format!("{}: {:?}", a.person.as_str(), a.refused))
                    .collect(),
            });
        }
    }
}

/// Runs the check on a copy of `state`.
pub fn check(state: &ScheduleState, lose: u8) -> Result<CoverageView, ApiError> {
    let faculty = coverage::faculty(state);
    let mut gaps = Vec::new();
    let mut gaps_total = 0;
    let (scenarios, skipped, failing) = match lose {
        1 => {
            let results = coverage::n_minus_1(state, &faculty)
                .map_err(|e| ApiError::bad("lose", e.to_string()))?;
            let failing = results.iter().filter(|(_, r)| !r.covered()).count();
            for (_, r) in &results {
                gaps_of(r, &mut gaps, &mut gaps_total);
            }
            (results.len(), 0, failing)
        }
        2 => {
            let pairs = coverage::n_minus_2(state, &faculty)
                .map_err(|e| ApiError::bad("lose", e.to_string()))?;
            let failing = pairs.failing().count();
            for (_, r) in &pairs.results {
                gaps_of(r, &mut gaps, &mut gaps_total);
            }
            (pairs.results.len(), pairs.skipped, failing)
        }
        _ => return Err(ApiError::bad("lose", "1 (N-1) or 2 (N-2)")),
    };
    Ok(CoverageView {
        lose,
        faculty: faculty.len(),
        scenarios,
        skipped,
        failing,
        gaps,
        gaps_total,
    })
}

/// The N-1 / N-2 faculty contingency check on this facility's schedule (a
/// linearizable read; nothing is written).
#[utoipa::path(
    get,
    path = "/coverage",
    tag = "schedule",
    params(CoverageQuery),
    responses(
        (status = 200, description = "Checked", body = CoverageView),
        (status = 400, description = "lose is not 1 or 2", body = ErrorBody),
        (status = 503, description = "No consistent read here now", body = ErrorBody),
    )
)]
pub(crate) async fn get_coverage(
    State(s): State<ApiState>,
    q: Result<Query<CoverageQuery>, QueryRejection>,
) -> Result<Json<CoverageView>, ApiError> {
    let svc = service(&s)?;
    let q = q.map_err(|e| ApiError::bad("lose", e.body_text()))?;
    let lose = q.lose.unwrap_or(1);
    if !(1..=2).contains(&lose) {
        return Err(ApiError::bad("lose", "1 (N-1) or 2 (N-2)"));
    }
    let state = gate_read(svc, Consistency::Linearizable, |v, _| v.to_state())
        .await?
        .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
    // Up to 1,000 pairs of schedule copies: off the async threads.
    tokio::task::spawn_blocking(move || check(&state, lose))
        .await
        .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?
        .map(Json)
}
