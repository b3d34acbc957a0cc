//! Inputs found while fuzzing the chaos decoders (`fuzz/`: `experiment`,
//! `chaos_body`), kept as regression tests.
//!
//! A clock skew of `i64::MIN` ms: the experiment's validation and the chaos
//! lever's check compared `skew_ms.abs()` with one day. `i64::MIN` has no
//! absolute value: with overflow checks (debug builds, the fuzzers) the
//! check panicked; in a release build `abs()` wraps to `i64::MIN`, which is
//! below the limit, so the skew was accepted and the facility's wall clock
//! saturated to the Unix epoch.

use bulwark::chaos::{parse_experiment, ExperimentFileError};
use bulwark::http::api::decode_json;
use bulwark::http::chaos::{check, ChaosRequest};

fn clock_skew_experiment(skew_ms: i64) -> String {
    format!(
        "name = \"skew\"\nblast_radius = 0.34\nduration_ms = 6000\n\n\
         [fault]\nkind = \"clock_skew\"\ntarget = \"follower\"\nskew_ms = {skew_ms}\n"
    )
}

/// Every skew beyond a day either way is refused, naming the field; the
/// edges themselves are accepted.
#[test]
fn an_experiment_skewing_by_i64_min_is_refused_naming_the_field() {
    for skew_ms in [i64::MIN, i64::MIN + 1, -86_400_001, 86_400_001, i64::MAX] {
        match parse_experiment(&clock_skew_experiment(skew_ms), "skew.toml") {
            Err(e @ ExperimentFileError::Invalid { .. }) => {
                assert!(e.to_string().contains("fault.skew_ms"), "{skew_ms}: {e}")
            }
            other => panic!("{skew_ms}: {other:?}"),
        }
    }
    for skew_ms in [-86_400_000, 86_400_000] {
        parse_experiment(&clock_skew_experiment(skew_ms), "skew.toml").unwrap();
    }
}

/// The lever answers 400 naming `action.skew_ms` instead of panicking or
/// skewing the clock by `i64::MIN`.
#[test]
fn a_clock_skew_lever_of_i64_min_is_a_400_naming_the_field() {
    for skew_ms in [i64::MIN, -86_400_001, 86_400_001, i64::MAX] {
        let body = format!(r#"{{"action":{{"kind":"clock_skew","skew_ms":{skew_ms}}}}}"#);
        let req: ChaosRequest = decode_json(body.as_bytes()).unwrap();
        let e = check(&req).expect_err("refused");
        assert_eq!(e.status.as_u16(), 400, "{skew_ms}");
        assert_eq!(e.body.field.as_deref(), Some("action.skew_ms"), "{skew_ms}");
    }
    for skew_ms in [-86_400_000, 86_400_000] {
        let body = format!(r#"{{"action":{{"kind":"clock_skew","skew_ms":{skew_ms}}}}}"#);
        check(&decode_json(body.as_bytes()).unwrap()).unwrap();
    }
}
