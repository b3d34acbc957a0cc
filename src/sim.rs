//! The whole-stack simulation: N facilities in one process over SimNet on
//! virtual time, each running what `bulwark node` runs, reached through
//! their HTTP APIs.
//!
//! - [`cluster`]: [`SimCluster`], the facilities and their APIs.
//! - [`check`]: the invariant checkers, across facilities.
//! - [`model`]: the reference schedule the checkers judge decisions by.
//! - [`client`]: requests and answers as an HTTP client sees them.
//! - [`workload`]: what the simulated clients send.
//! - [`run`]: one randomized run of a seed, [`run_seed`].
//! - [`cli`]: `bulwark sim`, many seeds in worker processes.
//!
//! A cluster, one write through a follower's API, and one randomized run:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use bulwark::sim::client::{get, json, post};
//! use bulwark::sim::{run_seed, SimCluster, SimOptions, SimPlan};
//! use std::time::Duration;
//!
//! let c = SimCluster::start(SimOptions::new(3, 7)).await.unwrap();
//! let leader = c.wait_leader(Duration::from_secs(10), Duration::from_millis(50)).await;
//! let follower = (leader.unwrap() + 1) % 3;
//! let body = serde_json::json!({"id": "p1", "name": "P One", "role": "faculty"});
//! let (status, _) = json(c.call(follower, post("/v1/people", c.token(), "k1", &body)).await).await;
//! assert_eq!(status, 200);
//! let (_, view) = json(c.call(follower, get("/v1/cluster", c.token())).await).await;
//! assert!(view["leader"].is_string());
//! c.shutdown().await;
//!
//! // Seed 7, a short plan: faults race the clients, every invariant holds.
//! let plan = SimPlan { steps: 5, ..SimPlan::default() };
//! let report = run_seed(7, &plan).await.unwrap();
//! assert_eq!((report.seed, report.steps), (7, 5));
//! # }
//! ```
//!
//! `bulwark sim --seeds N` runs many seeds ([`cli`]); a failure prints
//! `SEED=<s>` and `bulwark sim --first <s> --seeds 1` replays it exactly.

pub mod check;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod model;
pub mod run;
pub mod workload;

pub use cluster::{SimApi, SimCluster, SimError, SimOptions, Unreachable, SIM_TOKEN};
pub use run::{run_seed, FaultKind, SeedReport, SimFailure, SimPlan};
