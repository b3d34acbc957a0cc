//! The chaos lever body (`POST /v1/admin/chaos`, src/http/chaos.rs) and the
//! `GET /v1/coverage` query, on arbitrary bytes within the 64 KiB body cap,
//! through the handlers' own decoding and checks:
//!
//! - the body through `decode_json::<ChaosRequest>` then `chaos::check`: a
//!   refusal is a 400 BAD_REQUEST naming a field; an accepted request's
//!   numbers are within the documented limits (checked here against the
//!   limits themselves, not through the validators) and it decodes again
//!   to the same request;
//! - the bytes as a query string through axum's `Query::<CoverageQuery>`
//!   and the handler's range check: `lose` is 1 or 2, or the refusal is a
//!   400 naming `lose`.
#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use bulwark::http::api::{decode_json, BODY_LEN_MAX};
use bulwark::http::chaos::{check, ChaosAction, ChaosRequest, DEAD_MAN_MS_MAX};
use bulwark::http::coverage::CoverageQuery;
use bulwark::http::error::ApiError;
use bulwark_actors::chaos::experiment::behaviour_named;
use bulwark_storage::DISK_LATENCY_MS_MAX;
use bulwark_transport::fault::FAULT_DELAY_MS_MAX;
use bulwark_transport::FaultRule;
use libfuzzer_sys::fuzz_target;

/// Skew the lever accepts at most, either way: one day.
const SKEW_MS_MAX: i64 = 86_400_000;

fn bad_request(e: &ApiError, fields: &[&str]) {
    assert_eq!(e.status.as_u16(), 400, "{e:?}");
    assert_eq!(e.body.code, "BAD_REQUEST");
    let field = e.body.field.as_deref().expect("a 400 names a field");
    assert!(!field.is_empty(), "{e:?}");
    if !fields.is_empty() {
        assert!(fields.contains(&field), "unexpected field {field}: {e:?}");
    }
    assert!(!e.body.message.is_empty(), "{e:?}");
}

fn unit(p: f64) -> bool {
    (0.0..=1.0).contains(&p)
}

fn rule_within_limits(rule: &FaultRule) {
    match *rule {
        FaultRule::Drop { probability, .. } => assert!(unit(probability), "{rule:?}"),
        FaultRule::Delay { delay_ms, .. } | FaultRule::Slow { delay_ms, .. } => {
            assert!(delay_ms <= FAULT_DELAY_MS_MAX, "{rule:?}")
        }
        FaultRule::Partial {
            fraction,
            delay_ms,
            loss,
            ..
        } => {
            assert!(unit(fraction) && unit(loss), "{rule:?}");
            assert!(delay_ms <= FAULT_DELAY_MS_MAX, "{rule:?}");
        }
        FaultRule::Corrupt { every, .. } => assert!(every >= 1, "{rule:?}"),
        FaultRule::Partition { .. } => {}
    }
}

fn within_limits(req: &ChaosRequest) {
    if let Some(ms) = req.dead_man_ms {
        assert!((1..=DEAD_MAN_MS_MAX).contains(&ms), "{req:?}");
    }
    match &req.action {
        ChaosAction::FaultRule { rule } => rule_within_limits(rule),
        ChaosAction::Disk {
            latency_ms,
            write_failure,
            ..
        } => {
            assert!(*latency_ms <= DISK_LATENCY_MS_MAX, "{req:?}");
            assert!(unit(*write_failure), "{req:?}");
        }
        ChaosAction::ClockSkew { skew_ms } => {
            assert!((-SKEW_MS_MAX..=SKEW_MS_MAX).contains(skew_ms), "{req:?}")
        }
        ChaosAction::Behaviour { behaviour } => {
            assert!(behaviour_named(behaviour).is_some(), "{req:?}")
        }
        ChaosAction::KillActor { .. } | ChaosAction::Clear => {}
    }
}

fn chaos_body(data: &[u8]) {
    let req = match decode_json::<ChaosRequest>(data) {
        Ok(req) => req,
        Err(e) => return bad_request(&e, &[]),
    };
    let again = decode_json::<ChaosRequest>(data).expect("accepted twice");
    assert_eq!(again.action, req.action);
    assert_eq!(again.dead_man_ms, req.dead_man_ms);
    match check(&req) {
        Ok(()) => within_limits(&req),
        Err(e) => bad_request(
            &e,
            &[
                "dead_man_ms",
                "action",
                "action.rule",
                "action.skew_ms",
                "action.behaviour",
            ],
        ),
    }
}

/// `get_coverage`'s decoding and range check (src/http/coverage.rs).
fn coverage_query(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    // A query hyper would not have accepted never reaches the handler.
    let Ok(uri) = format!("/v1/coverage?{query}").parse::<Uri>() else {
        return;
    };
    let lose = Query::<CoverageQuery>::try_from_uri(&uri)
        .map_err(|e| ApiError::bad("lose", e.body_text()))
        .and_then(|Query(q)| {
            let lose = q.lose.unwrap_or(1);
            if !(1..=2).contains(&lose) {
                return Err(ApiError::bad("lose", "1 (N-1) or 2 (N-2)"));
            }
            Ok(lose)
        });
    match lose {
        Ok(lose) => assert!(lose == 1 || lose == 2),
        Err(e) => bad_request(&e, &["lose"]),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > BODY_LEN_MAX {
        return;
    }
    chaos_body(data);
    coverage_query(data);
});
