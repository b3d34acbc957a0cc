//! What the cluster benchmarks share: commands, the runtime, a loopback
//! cluster.

use bulwark::facility::{self, Facility};
use bulwark_actors::raft::RaftConfig;
use bulwark_actors::schedule::{Command, IdempotencyKey, Op};
use bulwark_runtime::{RealClock, SupervisionConfig};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Longest any step of a benchmark waits.
pub const T: Duration = Duration::from_secs(20);

static NEXT: AtomicU64 = AtomicU64::new(1);

/// A fresh command that applies and keeps the state bounded (a growing
/// schedule would soon outgrow the 4 MiB snapshot limit): a final approval
/// through a new day.
pub fn command() -> Command {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_le_bytes());
    Command {
        key: IdempotencyKey(key),
        issued_by: "alpha".parse().unwrap(),
        at_unix_ms: 0,
        hlc: bulwark_actors::hlc::Hlc::ZERO,
        op: Op::Approve {
            through_day: n as u32,
        },
    }
}

/// The runtime the benchmarks run on: 2 workers, like the machine.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Facilities `names` on loopback QUIC with default settings, links up.
pub async fn cluster(dir: &std::path::Path, names: &[&str]) -> Vec<Facility> {
    let fs = facility::start_loopback_cluster(
        dir,
        names,
        SupervisionConfig::default(),
        Some(RaftConfig::default()),
        Arc::new(RealClock),
    )
    .await
    .unwrap();
    for f in &fs {
        assert!(f.wait_links_up(T).await, "links up");
    }
    fs
}
