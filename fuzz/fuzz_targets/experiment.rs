//! The experiment file parser (src/chaos.rs, `parse_experiment`) on
//! arbitrary text within `EXPERIMENT_FILE_LEN_MAX` (the limit
//! `load_experiment` checks before parsing): it never panics; an accepted
//! experiment validates, and written back as TOML parses again to an equal
//! experiment; a refused one names where it is wrong (the field that fails
//! validation, or the parser's line and column or key).
#![no_main]

use bulwark::chaos::{parse_experiment, ExperimentFileError, EXPERIMENT_FILE_LEN_MAX};
use bulwark_actors::chaos::experiment::ExperimentError;
use libfuzzer_sys::fuzz_target;

const PATH: &str = "fuzz.toml";

fn refused(e: &ExperimentFileError) {
    let shown = e.to_string();
    assert!(shown.starts_with(PATH), "the error names the file: {shown}");
    match e {
        ExperimentFileError::Invalid { source, .. } => {
            let ExperimentError::Invalid { field, reason } = source else {
                panic!("an unknown validation error: {source:?}");
            };
            assert!(!field.is_empty() && !reason.is_empty(), "{source:?}");
            assert!(shown.contains(field), "the message names {field}: {shown}");
        }
        ExperimentFileError::Parse { message, .. } => {
            // toml places every error it finds in the text; one without a
            // place (a missing key) names the key in backquotes.
            let placed = message.contains("at line ");
            let named = message.contains('`');
            assert!(placed || named, "neither a place nor a key: {message}");
        }
        ExperimentFileError::Read { .. } => panic!("parsing text read a file: {e}"),
        _ => panic!("an unknown error: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > EXPERIMENT_FILE_LEN_MAX {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let exp = match parse_experiment(text, PATH) {
        Ok(exp) => exp,
        Err(e) => return refused(&e),
    };
    exp.validate().expect("an accepted experiment validates");
    let written = toml::to_string(&exp).expect("an accepted experiment serializes");
    let again = parse_experiment(&written, PATH)
        .unwrap_or_else(|e| panic!("a written experiment parses: {e}\n{written}"));
    assert_eq!(
        again, exp,
        "written and parsed back, it changed:\n{written}"
    );
});
