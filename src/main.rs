//! The bulwark facility binary. `bulwark --help` lists the commands.

use bulwark::config::FacilityConfig;
use bulwark::facility::{self, FacilitySpec};
use bulwark::http::{self, ApiState};
use bulwark_actors::raft::RaftSetup;
use bulwark_runtime::RealClock;
use bulwark_transport::identity::Identity;
use bulwark_transport::quic::PeerSpec;
use bulwark_transport::FacilityId;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "bulwark", version, about = "One facility of a bulwark cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a facility's ed25519 key and self-signed certificate, print its pin.
    Keygen {
        /// The facility id.
        #[arg(long)]
        id: FacilityId,
        /// Directory for facility.key and facility.crt.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one facility from its config file.
    Node {
        /// The facility's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Three facilities on loopback QUIC, on embedded defaults; exits 0 on success.
    Demo,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Keygen { id, out } => keygen(id, out),
            Cmd::Node { config } => node(config).await,
            Cmd::Demo => bulwark::demo::run().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e.to_string()),
    }
}

fn fail(msg: String) -> ExitCode {
    eprintln!("bulwark: {msg}");
    ExitCode::FAILURE
}

type AnyResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn keygen(id: FacilityId, out: PathBuf) -> AnyResult {
    let identity = Identity::generate(id)?;
    identity.write_pem(&out)?;
    println!("wrote {}/facility.key and facility.crt", out.display());
    println!("pin = \"{}\"", identity.pin());
    Ok(())
}

async fn node(path: PathBuf) -> AnyResult {
    let cfg = FacilityConfig::load(&path)?;
    // Checks that the certificate names this facility and matches the key.
    let identity = Identity::read_pem(
        cfg.facility.id.clone(),
        &cfg.facility.cert,
        &cfg.facility.key,
    )?;
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let peers = cfg
        .peers
        .iter()
        .map(|p| PeerSpec {
            id: p.id.clone(),
            addr: p.addr,
            pin: p.pin,
        })
        .collect();
    let spec = FacilitySpec {
        identity,
        data_dir: cfg.facility.data_dir.clone(),
        listen: cfg.facility.quic_listen,
        socket: None,
        peers,
        supervision: cfg.supervision.clone(),
        extra: Vec::new(),
        raft: Some(RaftSetup {
            start: cfg.consensus.initial_cluster_state,
            config: cfg.consensus.raft_config(),
            ..RaftSetup::new(
                std::iter::once(cfg.facility.id.clone())
                    .chain(cfg.peers.iter().map(|p| p.id.clone()))
                    .collect(),
            )
        }),
    };
    let mut f = facility::start(spec, Arc::new(RealClock)).await?;
    let running = Arc::new(AtomicBool::new(true));
    let state = ApiState {
        prometheus,
        transport: Arc::new(f.transport.clone()),
        running: running.clone(),
    };
    let listener = tokio::net::TcpListener::bind(cfg.facility.http_listen).await?;
    eprintln!(
        "bulwark: {} serving quic {} http {}",
        cfg.facility.id,
        cfg.facility.quic_listen,
        listener.local_addr()?
    );
    let server = tokio::spawn(std::future::IntoFuture::into_future(axum::serve(
        listener,
        http::app(state),
    )));
    let stopped = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = f.node.wait_stopped(std::time::Duration::MAX) => true,
    };
    running.store(false, Ordering::Relaxed);
    server.abort();
    if stopped {
        return Err("supervision tree stopped: restart intensity exceeded at the root".into());
    }
    f.node.stop().await;
    Ok(())
}
