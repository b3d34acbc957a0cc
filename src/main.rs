//! The bulwark facility binary. `bulwark --help` lists the commands.

use bulwark::backup::{self, BackupPlan};
use bulwark::config::FacilityConfig;
use bulwark::facility::{self, ApiSpec, FacilitySpec};
use bulwark::http;
use bulwark_actors::keys;
use bulwark_runtime::{Clock, RealClock, SkewableClock};
use bulwark_transport::identity::Identity;
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
    /// Log lines as text or one JSON object per line (stderr).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// What to log: a level (error, warn, info, debug) or filter
    /// directives; default: info (the lifecycle: elections, peers up and
    /// down, partitions, snapshots, backups, restarts), dependencies at
    /// warn. RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// The log filter for `level`: the dependencies that speak at info about
/// each packet and connection stay at warn unless named.
fn log_filter(level: &str) -> tracing_subscriber::EnvFilter {
    if let Ok(f) = tracing_subscriber::EnvFilter::try_from_default_env() {
        return f;
    }
    let quiet = [
        "quinn",
        "quinn_proto",
        "quinn_udp",
        "rustls",
        "hyper",
        "hyper_util",
        "ractor",
        "redb",
        "raft",
        "reqwest",
    ];
    let mut spec = level.to_string();
    if !level.contains('=') {
        for q in quiet {
            spec += &format!(",{q}=warn");
        }
    }
    tracing_subscriber::EnvFilter::try_new(&spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a facility's TLS key and self-signed certificate and its vote
    /// key, and the API's HTTPS key and certificate; print the pins and
    /// the vote public key.
    Keygen {
        /// The facility id.
        #[arg(long)]
        id: FacilityId,
        /// Directory for facility.key, facility.crt, vote.key, api.key and
        /// api.crt.
        #[arg(long)]
        out: PathBuf,
        /// A host name or IP address clients reach the API by (repeat);
        /// localhost, 127.0.0.1 and ::1 are always in the certificate.
        #[arg(long = "api-host")]
        api_hosts: Vec<String>,
    },
    /// Write a whole new cluster's keys, certificates and configs (every
    /// peer's pin and vote key filled in, HTTPS on, API tokens made and
    /// printed once, ports that do not collide on one host) into
    /// DIR/<facility>/; then `bulwark up --dir DIR` runs it.
    Init {
        /// Where to write (one directory per facility inside).
        #[arg(long)]
        dir: PathBuf,
        /// The facilities, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        facilities: Vec<FacilityId>,
        /// Each facility's IP address, comma-separated, in the same order
        /// (default: all on 127.0.0.1).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<std::net::IpAddr>,
        /// Facility i listens on QUIC BASE+i and HTTPS BASE+1000+i.
        #[arg(long, default_value_t = bulwark::init::BASE_PORT)]
        base_port: u16,
    },
    /// Run every facility `bulwark init` wrote in DIR on this host, until
    /// Ctrl-C or SIGTERM (each is stopped gracefully).
    Up {
        /// The directory `bulwark init` wrote.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Make an API token: prints the token (once; it is stored nowhere)
    /// and the `[[api.tokens]]` entry, with its hash, for the configs of
    /// the facilities that should accept it.
    Token {
        /// Who it is for (the audit trail records it).
        #[arg(long)]
        name: String,
        /// What it may do, comma-separated: read, schedule, approve,
        /// operator, chaos, metrics.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// The hash-chained ledger.
    Ledger {
        #[command(subcommand)]
        cmd: LedgerCmd,
    },
    /// Change and read the schedule through a facility's API (URL and
    /// token from flags or BULWARK_URL / BULWARK_TOKEN). Exit codes: 0
    /// done, 2 refused (not applied), 3 outcome unknown (retry with the
    /// key printed), 4 not allowed.
    Schedule {
        #[command(subcommand)]
        cmd: bulwark::commands::ScheduleCmd,
    },
    /// The healer's review queue at a facility (operator token).
    Review {
        #[command(subcommand)]
        cmd: bulwark::commands::ReviewCmd,
    },
    /// Raft leadership: hand it to another voter.
    Leader {
        #[command(subcommand)]
        cmd: bulwark::commands::LeaderCmd,
    },
    /// Raft membership: list the identities, replace a facility whose store
    /// was lost (its next incarnation joins as a learner), promote it.
    Member {
        #[command(subcommand)]
        cmd: bulwark::commands::MemberCmd,
    },
    /// The validator set: list its epochs, add a facility, rotate a vote
    /// key, remove a facility (each a ledger entry).
    Validator {
        #[command(subcommand)]
        cmd: bulwark::commands::ValidatorCmd,
    },
    /// Evidence of misbehaviour the facility's validator recorded.
    Evidence {
        #[command(flatten)]
        target: bulwark::commands::Target,
    },
    /// Run one facility from its config file.
    Node {
        /// The facility's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Three facilities on loopback QUIC, on embedded defaults; exits 0 on success.
    Demo,
    /// Randomized runs of whole simulated clusters (every actor, the HTTP
    /// API) racing faults on virtual time; a failure prints its seed and
    /// the command that replays it.
    Sim(bulwark::sim::cli::SimArgs),
    /// Chaos experiments against a live cluster.
    Chaos {
        #[command(subcommand)]
        cmd: ChaosCmd,
    },
    /// Load a schedule from a CSV file through a running node's
    /// `POST /v1/batch` (header row; an `op` column and the fields of each
    /// command's endpoint). Running it again with the same file and batch
    /// size applies nothing twice. Exits 1 if a row was refused (each is
    /// listed).
    Import {
        /// The CSV file.
        file: PathBuf,
        /// The node's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8401")]
        url: String,
        #[command(flatten)]
        api: bulwark::client::ApiArgs,
        /// Rows per batch (at most 1,000).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Print the cluster as a node sees it (from its HTTP API).
    Status {
        /// The node's HTTP address.
        #[arg(long, default_value = "http://127.0.0.1:8401")]
        url: String,
        #[command(flatten)]
        api: bulwark::client::ApiArgs,
    },
    /// Take a consistent backup: of a running node through its API (with
    /// `--config`), or of a stopped node's file (with `--db` and `--out`).
    Backup {
        /// The facility's config: asks the running node (its http_listen;
        /// https with its [api.tls] certificate) for a cluster backup, with
        /// an operator token (--token, else the config's [api] token): a
        /// checkpoint through consensus, at which every facility backs up
        /// into its backup directory. Prints the checkpoint's index.
        #[arg(long, conflicts_with_all = ["db", "out"])]
        config: Option<PathBuf>,
        #[command(flatten)]
        api: bulwark::client::ApiArgs,
        /// A stopped node's redb file.
        #[arg(long, requires = "out")]
        db: Option<PathBuf>,
        /// Where to write the backup of `--db`.
        #[arg(long, requires = "db")]
        out: Option<PathBuf>,
    },
    /// Disaster recovery: put a backup in place of a stopped node's store
    /// (the old file is moved aside) and cut its Raft log at the backup's
    /// index. Every facility of the cluster must be stopped and restored,
    /// each from its own backup of one checkpoint (the same --index
    /// everywhere). Restoring one facility into a running cluster is
    /// refused (see docs/DECISIONS.md, "Backup and restore").
    Restore {
        /// The facility's config (data_dir, [backup] dir).
        #[arg(long)]
        config: PathBuf,
        /// A backup file to restore.
        #[arg(long, conflicts_with_all = ["at", "index"])]
        from: Option<PathBuf>,
        /// Point in time (unix ms): the newest backup whose checkpoint was
        /// taken at or before it. Without `--from`, `--index` or `--at`: the
        /// newest backup.
        #[arg(long, conflicts_with = "index")]
        at: Option<u64>,
        /// The checkpoint's index (`bulwark backup` prints it): use the same
        /// on every facility.
        #[arg(long)]
        index: Option<u64>,
        /// Confirms that every facility is stopped and will be restored.
        #[arg(long, conflicts_with = "into_running_cluster")]
        whole_cluster: bool,
        /// Restores this facility alone while the others run: its store is
        /// vote-fenced (it forgot the votes it cast since the backup); it
        /// catches up from the backup's index, and `bulwark member replace`
        /// then `promote` make it a voter again under a new Raft identity.
        #[arg(long)]
        into_running_cluster: bool,
    },
}

#[derive(Subcommand)]
enum ChaosCmd {
    /// Run one experiment file (TOML, see experiments/) against a live
    /// cluster whose facilities run with `[chaos] enabled = true`; prints
    /// the report and exits 0 when it passed, 2 when it found weaknesses or
    /// rolled back, 1 when it was refused or failed.
    Run {
        /// The experiment file.
        file: PathBuf,
        /// Every facility's HTTP API (repeat once per facility).
        #[arg(long = "api", required = true)]
        api: Vec<String>,
        /// A token with the read, schedule and chaos scopes.
        #[command(flatten)]
        access: bulwark::client::ApiArgs,
        /// Directory for report.txt, report.json and heatmap.svg.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove what experiments wrote: every person and block of a chaos
    /// namespace (`chaos:<namespace>:…`; a run's namespace is its name in
    /// the report), through consensus. An experiment drops its own at its
    /// end; this is for one that was interrupted.
    Clean {
        /// The namespace; without it, every `chaos:` id.
        #[arg(long, default_value = "")]
        namespace: String,
        #[command(flatten)]
        target: bulwark::commands::Target,
    },
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// One final entry and who certified it, from a facility's API.
    Show {
        /// The height.
        height: u64,
        #[command(flatten)]
        target: bulwark::commands::Target,
    },
    /// Re-check the whole chain and every certificate in a facility's redb
    /// file from the facilities' public keys alone; exits 1 naming the first
    /// bad height.
    Verify {
        /// The facility's redb file (`<data_dir>/bulwark.redb`); opened
        /// read-only (stop the node first: redb locks the file).
        #[arg(long)]
        db: PathBuf,
        /// A facility config listing every facility's vote key (reads that
        /// facility's secret vote key for its own public one).
        #[arg(long, required_unless_present = "keys", conflicts_with = "keys")]
        config: Option<PathBuf>,
        /// A file of public vote keys alone, as `bulwark ledger keys`
        /// writes it (what an auditor needs: no secret).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Print every facility's public vote key as a keys file for
    /// `bulwark ledger verify --keys` (run where the config's own vote key
    /// is readable; the output holds public keys only).
    Keys {
        /// A facility config.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The node logs its lifecycle at info; client commands only problems.
    let level = match (&cli.cmd, cli.log_level.as_str()) {
        (Cmd::Node { .. } | Cmd::Up { .. }, l) => l.to_string(),
        (_, "info") => "warn".to_string(),
        (_, l) => l.to_string(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter(&level))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
    let log_args = vec![
        "--log-format".to_string(),
        format!("{:?}", cli.log_format).to_lowercase(),
        "--log-level".to_string(),
        cli.log_level.clone(),
    ];
    let cmd = match cli.cmd {
        // Its own runtimes: current-thread, on paused (virtual) time.
        Cmd::Sim(args) => return bulwark::sim::cli::main(args),
        other => other,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    let result: Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> = rt.block_on(async {
        let done = match cmd {
            Cmd::Chaos {
                cmd:
                    ChaosCmd::Run {
                        file,
                        api,
                        access,
                        out,
                    },
            } => return chaos_run(file, api, access, out).await,
            Cmd::Chaos {
                cmd: ChaosCmd::Clean { namespace, target },
            } => return Ok(bulwark::commands::chaos_clean(&target, &namespace).await?),
            Cmd::Keygen { id, out, api_hosts } => keygen(id, out, &api_hosts),
            Cmd::Token { name, scopes } => token(name, scopes),
            Cmd::Init {
                dir,
                facilities,
                hosts,
                base_port,
            } => init(dir, facilities, hosts, base_port),
            Cmd::Up { dir } => return up(dir, log_args).await,
            Cmd::Node { config } => node(config).await,
            Cmd::Demo => bulwark::demo::run().await,
            Cmd::Ledger {
                cmd: LedgerCmd::Verify { db, config, keys },
            } => ledger_verify(db, config, keys),
            Cmd::Ledger {
                cmd: LedgerCmd::Keys { config },
            } => ledger_keys(config),
            Cmd::Ledger {
                cmd: LedgerCmd::Show { height, target },
            } => return Ok(bulwark::commands::ledger_show(height, target).await?),
            Cmd::Schedule { cmd } => return Ok(bulwark::commands::schedule(cmd).await?),
            Cmd::Review { cmd } => return Ok(bulwark::commands::review(cmd).await?),
            Cmd::Leader { cmd } => return Ok(bulwark::commands::leader(cmd).await?),
            Cmd::Member { cmd } => return Ok(bulwark::commands::member(cmd).await?),
            Cmd::Validator { cmd } => return Ok(bulwark::commands::validator(cmd).await?),
            Cmd::Evidence { target } => return Ok(bulwark::commands::evidence(target).await?),
            Cmd::Status { url, api } => status(url, api).await,
            Cmd::Import {
                file,
                url,
                api,
                batch,
            } => return import(file, url, api, batch).await,
            Cmd::Backup {
                config,
                api,
                db,
                out,
            } => backup(config, api, db, out).await,
            Cmd::Restore {
                config,
                from,
                at,
                index,
                whole_cluster,
                into_running_cluster,
            } => restore(config, from, at, index, whole_cluster, into_running_cluster),
            Cmd::Sim(_) => unreachable!("bulwark sim runs before this runtime"),
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // The whole chain: "error sending request" alone hides why.
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                let more = s.to_string();
                if !text.contains(&more) {
                    text = format!("{text}: {more}");
                }
                source = s.source();
            }
            fail(text)
        }
    }
}

async fn import(
    file: PathBuf,
    url: String,
    api: bulwark::client::ApiArgs,
    batch: usize,
) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    if api.token().is_none() {
        return Err("give a token with the schedule scope: --token or BULWARK_TOKEN".into());
    }
    bulwark::client::check_url(&url)?;
    let client = api.client(std::time::Duration::from_secs(30))?;
    let r = bulwark::import::run(&url, &client, &file, batch).await?;
    for (line, code, detail) in &r.refused {
        println!("line {line}: refused {code}: {detail}");
    }
    println!(
        "{}: {} applied, {} refused{}",
        file.display(),
        r.applied,
        r.refused.len(),
        if r.replayed > 0 {
            format!(
                " ({} batches answered from an earlier import of this file)",
                r.replayed
            )
        } else {
            String::new()
        }
    );
    Ok(if r.refused.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn fail(msg: String) -> ExitCode {
    eprintln!("bulwark: {msg}");
    ExitCode::FAILURE
}

type AnyResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn keygen(id: FacilityId, out: PathBuf, api_hosts: &[String]) -> AnyResult {
    let identity = Identity::generate(id)?;
    identity.write_pem(&out)?;
    let vote = keys::generate_secret();
    let vote_path = out.join("vote.key");
    bulwark::init::write_secret(&vote_path, &keys::format_secret(&vote))?;
    let api_pin = http::serve::write_self_signed(&out, api_hosts)?;
    println!(
        "wrote {}/facility.key, facility.crt, vote.key, api.key and api.crt",
        out.display()
    );
    println!("# for the [[peer]] entries of the other facilities:");
    println!("pin = \"{}\"", identity.pin());
    println!(
        "vote_key = \"{}\"",
        keys::format_public(&vote.verifying_key())
    );
    println!("# HTTPS for this facility's API (clients: --pin {api_pin}):");
    println!("[api.tls]\ncert = \"api.crt\"\nkey = \"api.key\"");
    Ok(())
}

fn init(
    dir: PathBuf,
    facilities: Vec<FacilityId>,
    hosts: Vec<std::net::IpAddr>,
    base_port: u16,
) -> AnyResult {
    let out = bulwark::init::init(&bulwark::init::InitSpec {
        dir: dir.clone(),
        facilities,
        hosts,
        base_port,
    })?;
    for w in &out.facilities {
        println!("wrote {} (API https://{})", w.config.display(), w.http);
    }
    println!();
    println!("API tokens (shown only now; the configs hold their hashes):");
    for (name, scopes, token) in &out.tokens {
        let names: Vec<&str> = scopes.iter().map(|s| s.name()).collect();
        println!("  {name:<11} {token}   ({})", names.join(", "));
    }
    let first = &out.facilities[0];
    println!();
    println!("next:");
    println!("  bulwark up --dir {}", dir.display());
    println!(
        "  export BULWARK_TOKEN={}",
        out.tokens.first().map_or("", |t| t.2.as_str())
    );
    println!(
        "  bulwark status --url https://localhost:{} --ca {}",
        first.http.port(),
        dir.join(bulwark::init::CA_FILE).display()
    );
    println!(
        "(every facility's API certificate is signed by {}; keep {} offline)",
        dir.join(bulwark::init::CA_FILE).display(),
        dir.join("ca.key").display()
    );
    Ok(())
}

/// Runs every facility under `dir` as a child `bulwark node`; on Ctrl-C or
/// SIGTERM sends each SIGTERM (a graceful stop) and waits.
async fn up(
    dir: PathBuf,
    log_args: Vec<String>,
) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path().join("facility.toml")))
        .filter(|p| p.is_file())
        .collect();
    configs.sort();
    if configs.is_empty() {
        return Err(format!(
            "{} holds no <facility>/facility.toml: run `bulwark init --dir {} --facilities …` first",
            dir.display(),
            dir.display()
        )
        .into());
    }
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for c in &configs {
        let cfg = FacilityConfig::load(c)?;
        let log = c.with_file_name("node.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = tokio::process::Command::new(&exe)
            .args(["node", "--config"])
            .arg(c)
            .args(&log_args)
            .stdout(std::process::Stdio::null())
            .stderr(out)
            .kill_on_drop(true)
            .spawn()?;
        let scheme = if cfg.api.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let host = match cfg.facility.http_listen.ip() {
            ip if ip.is_loopback() || ip.is_unspecified() => "localhost".to_string(),
            ip => ip.to_string(),
        };
        println!(
            "{}: {scheme}://{host}:{}/ (log {})",
            cfg.facility.id,
            cfg.facility.http_listen.port(),
            log.display()
        );
        children.push((cfg.facility.id.clone(), child, false));
    }
    if let Some(c) = configs.first() {
        let cfg = FacilityConfig::load(c)?;
        let ca = dir.join(bulwark::init::CA_FILE);
        let pin = match &cfg.api.tls {
            Some(_) if ca.is_file() => format!(" --ca {}", ca.display()),
            Some(t) => format!(" --pin {}", http::serve::pin_of(&t.cert)?),
            None => String::new(),
        };
        println!(
            "status page: open a facility's URL with /#token=<read token>; or
               BULWARK_TOKEN=<token> bulwark status --url https://localhost:{}{pin}",
            cfg.facility.http_listen.port()
        );
    }
    println!("Ctrl-C stops every facility gracefully");
    // A facility that exits (killed, crashed) is reported; the others
    // keep serving until Ctrl-C or SIGTERM, or until none is left.
    let mut running = children.len();
    let mut clean = true;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let mut term = std::pin::pin!(terminated());
    loop {
        let stopped = tokio::select! {
            _ = &mut interrupted => break,
            _ = &mut term => break,
            who = first_exit(&mut children) => who,
        };
        let (id, status) = stopped;
        clean = false;
        running -= 1;
        eprintln!("bulwark up: {id} exited ({status}); {running} still running");
        if running == 0 {
            break;
        }
    }
    for (_, child, _) in &children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for (id, child, reported) in &mut children {
        if *reported {
            continue;
        }
        match tokio::time::timeout(std::time::Duration::from_secs(15), child.wait()).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => {
                clean = false;
                eprintln!("bulwark up: {id} exited with {s}");
            }
            _ => {
                clean = false;
                eprintln!("bulwark up: {id} did not stop within 15 s; killing it");
                let _ = child.kill().await;
            }
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Resolves with the id and exit status of a child that has exited and
/// was not reported before (each is reported once: `reported` marks it).
async fn first_exit(
    children: &mut [(FacilityId, tokio::process::Child, bool)],
) -> (FacilityId, std::process::ExitStatus) {
    loop {
        for (id, child, reported) in children.iter_mut() {
            if *reported {
                continue;
            }
            if let Ok(Some(status)) = child.try_wait() {
                *reported = true;
                return (id.clone(), status);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn token(name: String, scopes: Vec<String>) -> AnyResult {
    use bulwark::http::auth::{hash_token, new_token, Scope, TokenConfig};
    let scopes = scopes
        .iter()
        .map(|s| Scope::parse(s.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let token = new_token();
    let entry = TokenConfig {
        name,
        hash: hash_token(&token),
        scopes,
    };
    entry.validate()?;
    println!("token (give it to {}; it is stored nowhere):", entry.name);
    println!("{token}");
    println!();
    println!("# add to the config of every facility that should accept it:");
    let names: Vec<String> = entry
        .scopes
        .iter()
        .map(|s| format!("\"{}\"", s.name()))
        .collect();
    println!(
        "[[api.tokens]]\nname = \"{}\"\nhash = \"{}\"\nscopes = [{}]",
        entry.name,
        entry.hash,
        names.join(", ")
    );
    Ok(())
}

/// Largest keys file read.
const KEYS_FILE_LEN_MAX: u64 = 64 * 1024;

/// `[vote_keys]`: facility id = public vote key.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    vote_keys: std::collections::BTreeMap<String, String>,
}

fn ledger_keys(config: PathBuf) -> AnyResult {
    let cfg = FacilityConfig::load(&config)?;
    let ring = cfg.keyring()?;
    let vote_keys = ring
        .public()
        .facilities()
        .map(|f| {
            let k = ring.public().get(f).expect("listed");
            (f.to_string(), bulwark_actors::keys::format_public(k))
        })
        .collect();
    print!(
        "# Public vote keys only: bulwark ledger verify --db FILE --keys THIS_FILE\n{}",
        toml::to_string(&KeysFile { vote_keys })?
    );
    Ok(())
}

fn read_keys_file(path: &std::path::Path) -> Result<bulwark_actors::keys::PublicKeys, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .len();
    if len > KEYS_FILE_LEN_MAX {
        return Err(format!("{shown}: over {KEYS_FILE_LEN_MAX} bytes"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let file: KeysFile = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    let mut keys = Vec::new();
    for (id, k) in &file.vote_keys {
        let f: FacilityId = id
            .parse()
            .map_err(|e| format!("{shown}: vote_keys.{id}: {e}"))?;
        let key = bulwark_actors::keys::parse_public(k)
            .map_err(|e| format!("{shown}: vote_keys.{id}: {e}"))?;
        keys.push((f, key));
    }
    if keys.is_empty() {
        return Err(format!("{shown}: no [vote_keys]"));
    }
    Ok(bulwark_actors::keys::PublicKeys::new(keys))
}

fn ledger_verify(db: PathBuf, config: Option<PathBuf>, keys: Option<PathBuf>) -> AnyResult {
    let public = match (config, keys) {
        (_, Some(k)) => read_keys_file(&k)?,
        (Some(c), None) => FacilityConfig::load(&c)?.keyring()?.public().clone(),
        (None, None) => return Err("give --keys FILE or --config FILE".into()),
    };
    let genesis = bulwark_actors::epoch::ValidatorSet::genesis(public);
    match bulwark_actors::bft::verify_file(&db, &genesis) {
        Ok(report) => {
            let head: String = report.head.iter().map(|b| format!("{b:02x}")).collect();
            println!(
                "ok: {} final entries, every link, certificate and signature verified; head {head}",
                report.entries
            );
            for e in &report.epochs {
                let who: Vec<String> = e.keys().facilities().map(|f| f.to_string()).collect();
                println!(
                    "epoch {} from height {}: {} signers ({}), quorum {}",
                    e.number,
                    e.from_height,
                    e.keys().len(),
                    who.join(", "),
                    bulwark_actors::ledger::quorum(e.keys().len())
                );
            }
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
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                "bulwark_api_request_duration_seconds".into(),
            ),
            &http::DURATION_BUCKETS,
        )?
        .install_recorder()?;
    // Series the shipped alert rules and dashboard read that would not
    // exist until their first event: present, at zero, from the start.
    for c in [
        "bulwark_bft_evidence_total",
        "bulwark_audit_failures_total",
        "bulwark_audit_records_total",
        "bulwark_supervisor_restarts_total",
    ] {
        metrics::counter!(c).absolute(0);
    }
    metrics::gauge!("bulwark_replica_quarantined").set(0.0);
    // The configured id; else the one the store was stamped with (a
    // derived id changes with the peer list and the pins, a stamped one
    // does not); else derived from the members.
    let stamped = match &cfg.facility.cluster_id {
        Some(_) => None,
        None => bulwark_storage::Store::stamped_cluster(
            &cfg.facility.data_dir.join(bulwark_runtime::STORE_FILE),
            cfg.facility.id.as_str(),
        )?,
    };
    let cluster = match stamped {
        Some(id) => id,
        None => cfg
            .cluster_id(&identity.pin())
            .map_err(|e| format!("facility.cluster_id: {e}"))?,
    };
    tracing::info!(
        cluster = %bulwark_transport::quic::cluster_text(&cluster),
        "cluster"
    );
    // The genesis validator set anchors the ledger: the one this store's
    // history was admitted under, stamped at its first start; a config
    // that now gives another (an edited key, a rotated key moved into
    // `vote_key` without `genesis_vote_keys`) would admit differently.
    let ring = cfg.keyring()?;
    let genesis = bulwark_actors::epoch::ValidatorSet::genesis(ring.public().clone());
    let stamp = *blake3::hash(&bulwark_storage::codec::encode(&genesis)?).as_bytes();
    if let Some(held) = bulwark_storage::Store::claim_stamp(
        &cfg.facility.data_dir.join(bulwark_runtime::STORE_FILE),
        cfg.facility.id.as_str(),
        "genesis_vote_keys",
        &stamp,
    )? {
        let shown: Vec<String> = genesis
            .entries()
            .map(|(f, k)| format!("{f} = {}", hex::encode(k.0)))
            .collect();
        return Err(format!(
            "the genesis vote keys this config gives ({}) are not the ones this store started \
             with (stamp {}): set [consensus] genesis_vote_keys to the cluster's genesis set \
             (bulwark validator list, epoch 0, at any facility) and start again",
            shown.join(", "),
            hex::encode(&held[..held.len().min(8)])
        )
        .into());
    }
    let peers = cfg.peer_specs();
    // Every /v1 request passes the admission controller and the API's
    // bulkheads (flow zone).
    let flow = facility::api_flow_children_with(
        http::api_pools(cfg.api.concurrency),
        cfg.flow.admission(),
    );
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
        cluster: Some(cluster),
        protocol_max: cfg.facility.wire_protocol_max,
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
    // Every checkpoint this facility applies is backed up here.
    let checkpoints = backup::Checkpoints::new(BackupPlan {
        dir: cfg.backup_dir(),
        keep: cfg.backup.keep,
    });
    if let Some(raft) = &mut spec.raft {
        raft.start = cfg.consensus.initial_cluster_state;
        raft.keyring.checkpoints = Some(checkpoints.sink());
    }
    spec.detection = Some(cfg.detection.spec());
    let public = spec
        .raft
        .as_ref()
        .map(|r| r.keyring.keyring.public().clone())
        .ok_or("the node runs no consensus")?;
    // A skewable system clock: `[chaos] enabled` lets an experiment shift
    // this facility's wall time (zero otherwise, and always released).
    let mut f = facility::start(spec, Arc::new(SkewableClock::new())).await?;
    // A store created by this start is stamped now (one that existed was
    // checked above, before anything ran on it).
    if let Some(held) = f.node.ctx().store.claim_meta("genesis_vote_keys", &stamp)? {
        return Err(format!(
            "this store names other genesis vote keys (stamp {})",
            hex::encode(&held[..held.len().min(8)])
        )
        .into());
    }
    let running = Arc::new(AtomicBool::new(true));
    let members: Vec<FacilityId> = std::iter::once(cfg.facility.id.clone())
        .chain(cfg.peers.iter().map(|p| p.id.clone()))
        .collect();
    let state = facility::api_state(
        &f.node,
        ApiSpec {
            members,
            keys: public,
            detection: f.detection.clone(),
            tokens: Arc::new(cfg.tokens()?),
            audit: Some(Arc::new(http::audit::AuditLog::open(
                &cfg.facility.data_dir,
                http::audit::AuditConfig {
                    keep: cfg.api.audit_keep,
                },
            )?)),
            backup: Some(checkpoints),
            prometheus,
            running: running.clone(),
        },
    );
    let state = state.with_request_timeout(cfg.limits().request_timeout);
    let state = if cfg.chaos.enabled {
        tracing::warn!("[chaos] enabled: /v1/admin/chaos accepts fault levers (token required)");
        state.with_chaos(bulwark::http::chaos::ChaosControl::new())
    } else {
        state
    };
    if cfg.backup.every_s > 0 {
        // The leader commits a checkpoint every `every_s`; every facility
        // backs up at it (followers' timers do nothing).
        let ctx = f.node.ctx().clone();
        let every = std::time::Duration::from_secs(cfg.backup.every_s);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let period = RealClock.unix_ms() / every.as_millis().max(1) as u64;
                let timeout = std::time::Duration::from_secs(10);
                match backup::scheduled_round(&ctx, period, timeout).await {
                    Ok(Some(index)) => tracing::info!(index, "checkpoint committed"),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "scheduled checkpoint failed; the next one retries")
                    }
                }
            }
        });
    }
    if cfg.schedule.archive_after_days > 0 {
        let ctx = f.node.ctx().clone();
        let keep = cfg.schedule.archive_after_days;
        let every = std::time::Duration::from_secs(cfg.schedule.archive_every_s);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let timeout = std::time::Duration::from_secs(10);
                match bulwark::archive::round(&ctx, keep, timeout).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "archive round stopped; the next one retries")
                    }
                }
            }
        });
    }
    let ctx = f.node.ctx().clone();
    tokio::spawn(http::run_checks(
        state.clone(),
        std::time::Duration::from_secs(1),
        move || facility::probe(ctx.clone()),
    ));
    let tls = cfg
        .api
        .tls
        .as_ref()
        .map(http::serve::tls_config)
        .transpose()?;
    http::serve::check_plain(
        cfg.facility.http_listen,
        tls.is_some(),
        cfg.api.allow_plain_http,
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.facility.http_listen).await?;
    eprintln!(
        "bulwark: {} serving quic {} {} {}",
        cfg.facility.id,
        cfg.facility.quic_listen,
        if tls.is_some() { "https" } else { "http" },
        listener.local_addr()?
    );
    let (quit, quitting) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve::serve(
        listener,
        http::app(state),
        tls,
        cfg.limits(),
        async move {
            let _ = quitting.await;
        },
        std::time::Duration::from_secs(5),
    ));
    let stopped = tokio::select! {
        _ = tokio::signal::ctrl_c() => false,
        _ = terminated() => false,
        _ = f.node.wait_stopped(std::time::Duration::MAX) => true,
    };
    if stopped {
        running.store(false, Ordering::Relaxed);
        server.abort();
        return Err("supervision tree stopped: restart intensity exceeded at the root".into());
    }
    // A planned stop (SIGTERM, Ctrl-C): a leader hands leadership to a
    // caught-up voter first, so writes move on within a round trip instead
    // of an election timeout; then the API stops taking requests and
    // finishes those in flight (a few seconds at most), then the tree.
    eprintln!("bulwark: {} stopping", cfg.facility.id);
    if let Some(to) = f.hand_over(std::time::Duration::from_secs(3)).await {
        eprintln!("bulwark: leadership handed to {to}");
    }
    let _ = quit.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
    running.store(false, Ordering::Relaxed);
    f.node.stop().await;
    Ok(())
}

/// Resolves when the process gets SIGTERM (never where there is none).
async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut s) = signal(SignalKind::terminate()) {
            s.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await
}

async fn chaos_run(
    file: PathBuf,
    api: Vec<String>,
    access: bulwark::client::ApiArgs,
    out: Option<PathBuf>,
) -> Result<ExitCode, Box<dyn std::error::Error + Send + Sync>> {
    use bulwark::chaos::{live::HttpCluster, load_experiment, Agent};
    use bulwark_actors::chaos::report::Verdict;
    let exp = load_experiment(&file)?;
    for u in &api {
        bulwark::client::check_url(u)?;
    }
    let client = access.client(std::time::Duration::from_secs(30))?;
    if access.token().is_none() {
        return Err("give the facilities' token: --token or BULWARK_TOKEN".into());
    }
    let cluster = HttpCluster::connect(api, client).await?;
    let run = format!("{}", RealClock.unix_ms());
    let name = exp.name.clone();
    let report = Agent::new(cluster, exp, run).run().await;
    print!("{}", report.render_text());
    if let Some(dir) = out {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("report.txt"), report.render_text())?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
        std::fs::write(dir.join("heatmap.svg"), report.heatmap.render_svg(&name))?;
        println!(
            "wrote {}/report.txt, report.json and heatmap.svg",
            dir.display()
        );
    }
    Ok(match report.verdict {
        Verdict::Passed => ExitCode::SUCCESS,
        Verdict::WeaknessesFound | Verdict::RolledBack(_) => ExitCode::from(2),
        Verdict::Refused(_) => ExitCode::FAILURE,
    })
}

async fn status(url: String, api: bulwark::client::ApiArgs) -> AnyResult {
    bulwark::client::check_url(&url)?;
    let base = url.trim_end_matches('/');
    let resp = api
        .client(std::time::Duration::from_secs(10))?
        .get(format!("{base}/v1/cluster"))
        .send()
        .await?;
    let code = resp.status();
    if !code.is_success() {
        return Err(format!("{code}: {}", resp.text().await.unwrap_or_default()).into());
    }
    let c: bulwark::http::api::ClusterStatus = resp.json().await?;
    print!("{}", bulwark::http::render_status(&c));
    Ok(())
}

/// How many times `bulwark backup` asks for a checkpoint.
const BACKUP_TRIES: u32 = 5;

async fn backup(
    config: Option<PathBuf>,
    mut api: bulwark::client::ApiArgs,
    db: Option<PathBuf>,
    out: Option<PathBuf>,
) -> AnyResult {
    if let (Some(db), Some(out)) = (db, out) {
        // A stopped node's file: opened as its owner (the meta table names it).
        let facility = bulwark_storage::Store::owner(&db)?;
        let store = bulwark_storage::Store::open(&db, &facility)?.store;
        let info = store.backup_to(&out)?;
        println!(
            "wrote {} ({} rows, {} bytes)",
            out.display(),
            info.rows,
            info.bytes
        );
        return Ok(());
    }
    let Some(config) = config else {
        return Err("give --config (a running node) or --db and --out (a stopped one)".into());
    };
    let cfg = FacilityConfig::load(&config)?;
    if api.token().is_none() {
        api.token = Some(
            cfg.api
                .token
                .clone()
                .ok_or("give an operator token: --token, or the config's [api] token")?,
        );
    }
    let scheme = match &cfg.api.tls {
        Some(tls) => {
            // Exactly the facility's own certificate (pinned: it may be
            // signed by the cluster's CA, which the config does not name).
            if api.ca.is_none() && api.pin.is_none() {
                api.pin = Some(bulwark::http::serve::pin_of(&tls.cert)?);
            }
            "https"
        }
        None => "http",
    };
    let host = match cfg.facility.http_listen.ip() {
        ip if ip.is_unspecified() || ip.is_loopback() => "localhost".to_string(),
        ip => ip.to_string(),
    };
    let client = api.client(std::time::Duration::from_secs(600))?;
    let url = format!(
        "{scheme}://{host}:{}/v1/admin/backup",
        cfg.facility.http_listen.port()
    );
    // A checkpoint that found no leader, or none in time, is asked again
    // (at worst one more checkpoint commits: one more backup).
    let mut tries = 0;
    let body = loop {
        tries += 1;
        let resp = client.post(&url).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if status.is_success() {
            break body;
        }
        let retry_ms = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .filter(|v| matches!(v["code"].as_str(), Some("TIMED_OUT" | "NO_LEADER")))
            .and_then(|v| v["retry_after_ms"].as_u64());
        match retry_ms {
            Some(ms) if status.as_u16() == 503 && tries < BACKUP_TRIES => {
                eprintln!("{status}: {body}; asking again");
                tokio::time::sleep(std::time::Duration::from_millis(ms.clamp(100, 5_000))).await;
            }
            _ => return Err(format!("{status}: {body}").into()),
        }
    };
    let b: bulwark::http::api::BackupAnswer = serde_json::from_str(&body)?;
    println!(
        "checkpoint {} at {}: wrote {} ({} rows, {} bytes); every facility backs up at it",
        b.index, b.at_unix_ms, b.path, b.rows, b.bytes
    );
    println!(
        "restore with: bulwark restore --config <each facility's config> --index {} --whole-cluster",
        b.index
    );
    Ok(())
}

fn restore(
    config: PathBuf,
    from: Option<PathBuf>,
    at: Option<u64>,
    index: Option<u64>,
    whole_cluster: bool,
    into_running_cluster: bool,
) -> AnyResult {
    if !whole_cluster && !into_running_cluster {
        return Err(
            "say which restore: --whole-cluster (disaster recovery: stop every facility, \
                    restore each one at the same --index, then start them) or \
                    --into-running-cluster (this facility alone, stopped, while the others \
                    run: it comes back vote-fenced and is made a voter again with bulwark \
                    member replace and promote); docs/OPERATIONS.md"
                .into(),
        );
    }
    if whole_cluster && index.is_none() && from.is_none() {
        return Err(
            "a whole-cluster restore needs --index N (or --from FILE): the same checkpoint on \
             every facility (each facility's newest, or newest before --at, may differ, and \
             facilities restored at different checkpoints would not agree on what is committed)"
                .into(),
        );
    }
    let cfg = FacilityConfig::load(&config)?;
    let chosen = match (from, index) {
        (Some(p), _) => p,
        (None, Some(i)) => backup::pick_index(&cfg.backup_dir(), i)?.path,
        (None, None) => backup::pick(&cfg.backup_dir(), at)?.path,
    };
    let db = cfg.facility.data_dir.join(bulwark_runtime::STORE_FILE);
    let id = cfg.facility.id.as_str();
    let fence = into_running_cluster.then(|| {
        format!(
            "{id} was restored from a backup into a running cluster: its votes and Raft log \
             since the backup were lost. It follows the leader but never votes again under \
             this identity: run bulwark member replace --facility {id}, then promote \
             (docs/OPERATIONS.md)"
        )
    });
    let r = backup::restore(&chosen, &db, id, RealClock.unix_ms(), fence)?;
    println!(
        "restored {} from {}: its log ends at index {} ({} later entries dropped)",
        db.display(),
        chosen.display(),
        r.index,
        r.dropped
    );
    if let Some(a) = r.aside {
        println!("the previous file is kept as {}", a.display());
    }
    if into_running_cluster {
        println!(
            "start it: it catches up from index {} (vote-fenced); then bulwark member replace \
             --facility {id} and bulwark member promote --facility {id}",
            r.index
        );
    } else {
        println!(
            "restore every facility at index {} (--index {}), then start them all",
            r.index, r.index
        );
    }
    Ok(())
}
