//! bulwark-actors: one module per concern, each a sans-IO core (pure,
//! deterministic, unit-tested without tokio) plus a thin actor.

pub mod bft;
pub mod cap;
pub mod chain;
pub mod chaos;
pub mod detect;
pub mod epoch;
pub mod flow;
pub mod heatmap;
pub mod hlc;
pub mod ids;
pub mod keys;
pub mod ledger;
pub mod machine;
pub mod plant;
pub mod raft;
pub mod replica;
pub mod schedule;
