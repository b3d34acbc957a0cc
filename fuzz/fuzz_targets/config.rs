//! The config parser (src/config.rs, `FacilityConfig::parse_with`) on
//! arbitrary text and environment overrides: it never panics, and a
//! config it accepts, written back as TOML, parses again to the same
//! config.
#![no_main]

use std::path::Path;

use bulwark::config::FacilityConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Text after a NUL byte is one `NAME=value` override per line.
    let (text, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = Path::new("fuzz.toml");
    let Ok(cfg) = FacilityConfig::parse_with(text, path, &env) else {
        return;
    };
    let written = toml::to_string(&cfg).expect("an accepted config serializes");
    let again = FacilityConfig::parse(&written, path).expect("a written config parses");
    assert_eq!(toml::to_string(&again).expect("serializes"), written);
});
