//! bulwark-actors: one module per concern, each a sans-IO core (pure,
//! deterministic, unit-tested without tokio) plus a thin actor.

pub mod raft;
pub mod schedule;
