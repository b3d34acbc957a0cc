//! bulwark-runtime: supervised facilities, the Router, clocks and the
//! in-process Harness.
//!
//! A facility is a [`Node`]: a root supervisor over one supervisor per
//! [`Zone`], each running actors described by [`ChildDef`]s. Actors reach
//! each other, here or on another facility, through the [`Router`], which
//! moves [`Envelope`]s over a [`bulwark_transport::Transport`].
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use bulwark_runtime::{builtin::ping, Harness};
//! use std::time::Duration;
//! let h = Harness::new(3, 7).await.unwrap();
//! let (a, b) = (h.id(0), h.id(1));
//! let rtt = ping(h.router(0), &b, Duration::from_secs(1)).await.unwrap();
//! assert!(rtt > Duration::ZERO);
//! # let _ = a;
//! h.shutdown().await;
//! # }
//! ```

pub mod builtin;
mod clock;
pub mod disk;
pub mod envelope;
pub mod harness;
pub mod lincheck;
pub mod node;
pub mod router;
pub mod supervision;

pub use clock::{Clock, RealClock, SkewableClock, VirtualClock, VIRTUAL_EPOCH_MS};
pub use envelope::{Address, Envelope, Kind, Refusal};
pub use harness::Harness;
pub use node::{ChildDef, Node, NodeConfig, NodeCtx, NodeError, STORE_FILE};
pub use router::{Delivery, RouteError, Router, RouterConfig};
pub use supervision::{SpawnLedger, Strategy, SupervisionConfig, Zone, ZoneConfig};

/// Runs `f`, which blocks on the disk (an fsync), without holding up an
/// async worker: in place on a multi-threaded runtime (a node; tokio hands
/// this worker's other tasks to another thread while `f` runs), inline on
/// a current-thread runtime (the simulation and the harness, whose
/// schedule of events stays deterministic).
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
