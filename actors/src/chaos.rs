//! Chaos: fault injection schedules, failure propagation, experiments and
//! their reports. Every module here is a sans-IO core: the ChaosAgent that
//! runs an experiment against a cluster lives in the facility binary's
//! library, which owns the network, the clock and the HTTP client.

pub mod coverage;
pub mod experiment;
pub mod inject;
pub mod propagation;
pub mod report;
