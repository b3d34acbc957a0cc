//! The chaos drill: three facilities in this process on loopback QUIC
//! (mutual TLS, pinned certificates), each serving its HTTP API on a real
//! TCP port with `[chaos] enabled`; the agent partitions a facility, kills
//! the leader and spikes the load, one experiment after the other, through
//! those APIs, as `bulwark chaos run` would against separate processes.
//! `examples/chaos_drill.rs` runs it and writes the reports and heatmaps.

use super::live::HttpCluster;
use super::{parse_experiment, Agent};
use crate::facility::{self, ApiSpec, Facility};
use crate::http;
use bulwark_actors::chaos::experiment::Experiment;
use bulwark_actors::chaos::report::Report;
use bulwark_runtime::{SkewableClock, SupervisionConfig};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// The drill's bearer token (loopback only).
pub const DRILL_TOKEN: &str = "bulwark-chaos-drill-token";

type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// The three experiments of the drill, shortened for a demonstration.
pub fn experiments() -> Vec<Experiment> {
    let drill =
        |text: &str| parse_experiment(text, "drill").expect("the drill's experiments are valid");
    vec![
        drill(
            r#"
name = "drill-partition"
description = "Cut a follower off over real QUIC."
blast_radius = 0.34
duration_ms = 5000
[fault]
kind = "network_partition"
target = "follower"
[observe]
before_ms = 2000
after_ms = 4000
probe_rate_per_s = 15
"#,
        ),
        drill(
            r#"
name = "drill-leader-kill"
description = "Kill the leader's RaftPeer; a new leader must come, no acknowledged write lost."
blast_radius = 0.34
duration_ms = 4000
[fault]
kind = "leader_kill"
[observe]
before_ms = 2000
after_ms = 4000
probe_rate_per_s = 15
"#,
        ),
        drill(
            r#"
name = "drill-load-spike"
description = "A 10x herd of writes; operator requests must still be served."
blast_radius = 0.01
duration_ms = 3000
[fault]
kind = "load_spike"
factor = 10
burst = true
[observe]
before_ms = 2000
after_ms = 4000
probe_rate_per_s = 15
"#,
        ),
    ]
}

/// A running drill cluster.
pub struct Drill {
    /// The facilities.
    pub facilities: Vec<Facility>,
    /// Their APIs.
    pub urls: Vec<String>,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drill {
    /// Starts three facilities under `dir`, each with its API on a loopback
    /// TCP port, and waits (bounded) for links and a leader.
    pub async fn start(dir: &Path) -> Result<Drill, AnyError> {
        let names = ["alpha", "bravo", "charlie"];
        let pools = || facility::api_flow_children(http::api_pools(64));
        let facilities = facility::start_loopback_cluster_with(
            dir,
            &names,
            SupervisionConfig::default(),
            Some(Default::default()),
            Arc::new(SkewableClock::new()),
            &pools,
        )
        .await?;
        let members: Vec<_> = facilities
            .iter()
            .map(|f| f.node.facility().clone())
            .collect();
        let mut urls = Vec::new();
        let mut servers = Vec::new();
        for f in &facilities {
            let keys = f
                .spec
                .raft
                .as_ref()
                .map(|r| r.keyring.keyring.public().clone())
                .ok_or("the drill's facilities run consensus")?;
            let state = facility::api_state(
                &f.node,
                ApiSpec {
                    members: members.clone(),
                    keys,
                    detection: f.detection.clone(),
                    audit: None,
                    tokens: std::sync::Arc::new(
                        crate::http::auth::Tokens::new(Some(DRILL_TOKEN), &[])
                            .expect("the drill's token"),
                    ),
                    backup: None,
                    prometheus: metrics_exporter_prometheus::PrometheusBuilder::new()
                        .build_recorder()
                        .handle(),
                    running: Arc::new(AtomicBool::new(true)),
                },
            )
            .with_chaos(http::chaos::ChaosControl::new());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            urls.push(format!("http://{}", listener.local_addr()?));
            let app = http::app(state);
            servers.push(tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "drill API server stopped");
                }
            }));
        }
        for f in &facilities {
            if !f.wait_links_up(Duration::from_secs(20)).await {
                return Err(format!("{}: links did not come up", f.node.facility()).into());
            }
        }
        facility::wait_leader(&facilities, 0, Duration::from_secs(30))
            .await
            .ok_or("no leader within 30 s")?;
        Ok(Drill {
            facilities,
            urls,
            servers,
        })
    }

    /// Stops the APIs and the facilities.
    pub async fn stop(self) {
        for s in &self.servers {
            s.abort();
        }
        for f in self.facilities {
            f.stop().await;
        }
    }
}

/// Runs the drill: the three experiments in turn against a fresh cluster
/// under `dir`; each report is printed, and written with its heatmap to
/// `out` (`<name>.txt`, `<name>.json`, `<name>.svg`).
pub async fn run(dir: &Path, out: &Path) -> Result<Vec<Report>, AnyError> {
    let drill = Drill::start(dir).await?;
    let client = crate::client::ApiArgs {
        token: Some(DRILL_TOKEN.into()),
        ..Default::default()
    }
    .client(Duration::from_secs(30))
    .map_err(crate::chaos::live::LiveError::Members)?;
    let cluster = HttpCluster::connect(drill.urls.clone(), client).await?;
    std::fs::create_dir_all(out)?;
    let mut reports = Vec::new();
    for (k, exp) in experiments().into_iter().enumerate() {
        let name = exp.name.clone();
        let report = Agent::new(cluster.clone(), exp, format!("drill{k}"))
            .run()
            .await;
        println!("{}", report.render_text());
        std::fs::write(out.join(format!("{name}.txt")), report.render_text())?;
        std::fs::write(
            out.join(format!("{name}.json")),
            serde_json::to_vec_pretty(&report)?,
        )?;
        std::fs::write(
            out.join(format!("{name}.svg")),
            report.heatmap.render_svg(&name),
        )?;
        reports.push(report);
    }
    drill.stop().await;
    Ok(reports)
}
