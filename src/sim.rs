//! The whole-stack simulation: N facilities in one process over SimNet on
//! virtual time, each running what `bulwark node` runs, reached through
//! their HTTP APIs.
//!
//! - [`cluster`]: [`SimCluster`], the facilities and their APIs.
//! - [`check`]: the invariant checkers, across facilities.
//! - [`client`]: requests and answers as an HTTP client sees them.
//! - [`workload`]: what the simulated clients send.
//! - [`run`]: one randomized run of a seed, [`run_seed`].
//! - [`cli`]: `bulwark sim`, many seeds in worker processes.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use bulwark::sim::{SimCluster, SimOptions};
//! use std::time::Duration;
//! let c = SimCluster::start(SimOptions::new(3, 7)).await.unwrap();
//! let leader = c.wait_leader(Duration::from_secs(10), Duration::from_millis(50)).await;
//! assert!(leader.is_some());
//! c.shutdown().await;
//! # }
//! ```

pub mod check;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod run;
pub mod workload;

pub use cluster::{SimApi, SimCluster, SimError, SimOptions, Unreachable, SIM_TOKEN};
pub use run::{run_seed, FaultKind, SeedReport, SimFailure, SimPlan};
