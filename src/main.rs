//! The bulwark facility binary. `bulwark --help` lists the commands.

use bulwark::config::FacilityConfig;
use bulwark::facility::{self, FacilitySpec};
use bulwark::http::{self, ApiState};
use bulwark_actors::flow::actors::{backpressure, backpressure_child};
use bulwark_actors::flow::admission::AdmissionConfig;
use bulwark_actors::keys;
use bulwark_actors::raft::{RaftMsg, RAFT};
use bulwark_runtime::RealClock;
use bulwark_runtime::Zone;
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
    /// Write a facility's TLS key and self-signed certificate and its vote
    /// key; print its pin and vote public key.
    Keygen {
        /// The facility id.
        #[arg(long)]
        id: FacilityId,
        /// Directory for facility.key, facility.crt and vote.key.
        #[arg(long)]
        out: PathBuf,
    },
    /// The hash-chained ledger.
    Ledger {
        #[command(subcommand)]
        cmd: LedgerCmd,
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

#[derive(Subcommand)]
enum LedgerCmd {
    /// Re-check the whole chain and every certificate in a facility's redb
    /// file from the facilities' public keys alone; exits 1 naming the first
    /// bad height.
    Verify {
        /// The facility's redb file (`<data_dir>/bulwark.redb`); opened
        /// read-only (stop the node first: redb locks the file).
        #[arg(long)]
        db: PathBuf,
        /// A facility config listing every facility's vote key.
        #[arg(long)]
        config: PathBuf,
    },
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
            Cmd::Ledger {
                cmd: LedgerCmd::Verify { db, config },
            } => ledger_verify(db, config),
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
    let vote = keys::generate_secret();
    let vote_path = out.join("vote.key");
    write_secret(&vote_path, &keys::format_secret(&vote))?;
    println!(
        "wrote {}/facility.key, facility.crt and vote.key",
        out.display()
    );
    println!("pin = \"{}\"", identity.pin());
    println!(
        "vote_key = \"{}\"",
        keys::format_public(&vote.verifying_key())
    );
    Ok(())
}

/// Writes a secret file readable by its owner only (refuses to overwrite).
fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(text.as_bytes())
}

fn ledger_verify(db: PathBuf, config: PathBuf) -> AnyResult {
    let cfg = FacilityConfig::load(&config)?;
    let ring = cfg.keyring()?;
    match bulwark_actors::bft::verify_file(&db, ring.public()) {
        Ok(report) => {
            let head: String = report.head.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "ok: {} final entries, every link, certificate and signature verified; head {head}",
                report.entries
            );
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
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
    // Every /v1 request passes the admission controller (flow zone).
    let flow = vec![backpressure_child(AdmissionConfig::default(), 10)];
    let spec = FacilitySpec {
        identity,
        data_dir: cfg.facility.data_dir.clone(),
        listen: cfg.facility.quic_listen,
        socket: None,
        peers,
        supervision: cfg.supervision.clone(),
        extra: flow,
        raft: None,
        bft: None,
        detection: None,
    };
    let members: Vec<FacilityId> = std::iter::once(cfg.facility.id.clone())
        .chain(cfg.peers.iter().map(|p| p.id.clone()))
        .collect();
    let mut spec = facility::with_consensus(
        spec,
        members,
        cfg.keyring()?,
        Some(cfg.consensus.raft_config()),
    );
    if let Some(raft) = &mut spec.raft {
        raft.start = cfg.consensus.initial_cluster_state;
    }
    spec.detection = Some(cfg.detection.spec());
    let mut f = facility::start(spec, Arc::new(RealClock)).await?;
    let running = Arc::new(AtomicBool::new(true));
    let state = ApiState::new(
        prometheus,
        Arc::new(f.transport.clone()),
        running.clone(),
        backpressure(&f.node),
    );
    let ctx = f.node.ctx().clone();
    tokio::spawn(http::run_checks(
        state.clone(),
        std::time::Duration::from_secs(1),
        move || {
            let ctx = ctx.clone();
            async move {
                let store = ctx
                    .store
                    .get_state::<u64>("health.probe")
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                let peer = ctx.find::<RaftMsg>(Zone::Consensus, RAFT);
                let leader = match peer {
                    Some(p) => match p
                        .call(RaftMsg::Status, Some(std::time::Duration::from_secs(1)))
                        .await
                    {
                        Ok(ractor::rpc::CallResult::Success(s)) if s.leader.is_some() => Ok(()),
                        Ok(_) => Err("no leader known".to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err("the RaftPeer is not running".to_string()),
                };
                http::Probes { store, leader }
            }
        },
    ));
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
