//! `bulwark demo`: three facilities on loopback QUIC with mutual TLS.
//!
//! Prints the supervision tree, the peers connected, one round trip per
//! ordered pair, and a supervised restart after a deliberate actor crash.

use crate::facility::{self, Facility};
use bulwark_runtime::builtin::{ping, PROBE};
use bulwark_runtime::{RealClock, SupervisionConfig, Zone};
use bulwark_transport::{LinkStatus, Transport};
use std::sync::Arc;
use std::time::Duration;

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
/// How long the demo waits for any one step before it gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the demo; an error means some step failed.
pub async fn run() -> DemoResult<()> {
    let tmp = tempfile::tempdir()?;
    let facilities = facility::start_loopback_cluster(
        tmp.path(),
        &NAMES,
        SupervisionConfig::default(),
        Arc::new(RealClock),
    )
    .await?;
    for f in &facilities {
        println!(
            "started {} on quic://{} (pin {})",
            f.node.facility(),
            f.transport.local_addr()?,
            f.transport.pin()
        );
    }
    println!(
        "== supervision tree (alpha) ==\n{}",
        facilities[0].node.tree()
    );
    connect_all(&facilities).await?;
    round_trips(&facilities).await?;
    supervised_restart(&facilities).await?;
    for f in facilities {
        f.transport.close();
        f.node.stop().await;
    }
    println!("== demo finished: ok ==");
    Ok(())
}

async fn connect_all(fs: &[Facility]) -> DemoResult<()> {
    println!("== peers connected (mutual TLS, pinned certificates) ==");
    for a in fs {
        if !a.wait_links_up(STEP_TIMEOUT).await {
            return Err(format!("{}: not every link came up", a.node.facility()).into());
        }
        for b in a.transport.peers() {
            debug_assert_eq!(a.transport.link_status(&b), LinkStatus::Up);
            println!("  {} -> {}: up", a.node.facility(), b);
        }
    }
    Ok(())
}

async fn round_trips(fs: &[Facility]) -> DemoResult<()> {
    println!("== one round trip per ordered pair (probe ping/pong over QUIC) ==");
    for a in fs {
        for b in fs {
            if a.node.facility() != b.node.facility() {
                let rtt = ping(a.node.router(), b.node.facility(), STEP_TIMEOUT).await?;
                println!(
                    "  {} -> {}: {:.3} ms",
                    a.node.facility(),
                    b.node.facility(),
                    rtt.as_secs_f64() * 1e3
                );
            }
        }
    }
    Ok(())
}

async fn supervised_restart(fs: &[Facility]) -> DemoResult<()> {
    println!("== supervised restart ==");
    let alpha = &fs[0].node;
    let name = alpha.ctx().actor_name(Zone::Service, PROBE);
    let cell = ractor::registry::where_is(name.clone()).ok_or("alpha's probe is not running")?;
    println!("  killing {name} (deliberate crash)");
    let spawns = &alpha.ctx().spawns;
    let before = spawns.all();
    cell.kill();
    tokio::time::timeout(STEP_TIMEOUT, spawns.wait_spawns("service/probe", 2))
        .await
        .map_err(|_| "the probe was not restarted")?;
    println!(
        "  service supervisor restarted {name} (spawns: {})",
        spawns.spawns("service/probe")
    );
    let rtt = ping(fs[1].node.router(), alpha.facility(), STEP_TIMEOUT).await?;
    println!(
        "  bravo -> alpha after restart: {:.3} ms",
        rtt.as_secs_f64() * 1e3
    );
    let others: u64 = spawns
        .all()
        .iter()
        .filter(|(k, _)| *k != "service/probe")
        .map(|(k, n)| n - before.get(k).copied().unwrap_or(0))
        .sum();
    println!("  restarts elsewhere in alpha's tree: {others}");
    if others != 0 {
        return Err("a restart spread beyond the crashed actor".into());
    }
    Ok(())
}
