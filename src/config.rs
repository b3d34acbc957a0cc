//! The facility config file (TOML), validated at start.
//!
//! Every error names the file and, where it can, the key. Unknown keys are
//! errors: a typo must not silently fall back to a default.

use crate::facility::DetectionSpec;
use bulwark_actors::cap::heal::ConflictPolicy;
use bulwark_actors::detect::{DetectConfig, PhiConfig};
use bulwark_actors::flow::admission::AdmissionConfig;
use bulwark_actors::keys::{self, Keyring, PublicKeys};
use bulwark_actors::raft::{ClusterState, RaftConfig};
use bulwark_runtime::SupervisionConfig;
use bulwark_transport::identity::Pin;
use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// One facility's whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilityConfig {
    /// This facility.
    pub facility: FacilitySection,
    /// Every other facility.
    #[serde(default, rename = "peer")]
    pub peers: Vec<PeerSection>,
    /// Supervision strategies and restart intensities.
    #[serde(default)]
    pub supervision: SupervisionConfig,
    /// Raft settings.
    #[serde(default)]
    pub consensus: ConsensusSection,
    /// Failure detection and partition healing.
    #[serde(default)]
    pub detection: DetectionSection,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiSection,
    /// Scheduled backups of the redb file.
    #[serde(default)]
    pub backup: BackupSection,
    /// Chaos experiments against this facility.
    #[serde(default)]
    pub chaos: ChaosSection,
    /// The schedule's data life cycle.
    #[serde(default)]
    pub schedule: ScheduleSection,
    /// Admission of API requests.
    #[serde(default)]
    pub flow: FlowSection,
}

/// `[flow]`: the admission controller every `/v1` request passes (a token
/// bucket for the rate, then an adaptive concurrency limit that follows
/// latency, then a bounded queue). Every key optional; the defaults are
/// the embedded ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowSection {
    /// Requests admitted per second, sustained; 0 (the default): no fixed
    /// rate, the adaptive concurrency limit alone follows capacity.
    pub admission_rate_per_s: u64,
    /// Requests admitted at once after a quiet spell.
    pub admission_burst: u64,
    /// Requests that may wait; more are refused (429).
    pub admission_queue_len: usize,
    /// How long a request may wait, in ms.
    pub admission_queue_timeout_ms: u64,
    /// The latency the adaptive concurrency limit aims for, in ms.
    pub admission_target_latency_ms: u64,
    /// The adaptive limit's ceiling (requests in flight).
    pub admission_limit_max: u32,
}

impl Default for FlowSection {
    fn default() -> Self {
        let a = AdmissionConfig::default();
        FlowSection {
            admission_rate_per_s: a.rate_per_s,
            admission_burst: a.burst,
            admission_queue_len: a.queue_len_max,
            admission_queue_timeout_ms: a.queue_timeout_ms,
            admission_target_latency_ms: a.target_latency_ms,
            admission_limit_max: a.limit_max,
        }
    }
}

impl FlowSection {
    /// The admission controller's settings.
    pub fn admission(&self) -> AdmissionConfig {
        let d = AdmissionConfig::default();
        AdmissionConfig {
            rate_per_s: self.admission_rate_per_s,
            burst: self.admission_burst,
            queue_len_max: self.admission_queue_len,
            queue_timeout_ms: self.admission_queue_timeout_ms,
            target_latency_ms: self.admission_target_latency_ms,
            limit_max: self.admission_limit_max,
            limit_initial: d.limit_initial.min(self.admission_limit_max),
            limit_min: d.limit_min.min(self.admission_limit_max),
            ..d
        }
    }
}

/// `[schedule]`: every key optional; archiving is off unless
/// `archive_after_days` > 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    /// Days kept in the hot tables before the last finally approved day:
    /// older approved days are archived (`POST /v1/archive`, proposed by
    /// the leader). 0: never archive on its own.
    pub archive_after_days: u32,
    /// Seconds between the leader's looks for days to archive.
    pub archive_every_s: u64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        ScheduleSection {
            archive_after_days: 0,
            archive_every_s: 600,
        }
    }
}

/// `[chaos]`: off unless `enabled = true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChaosSection {
    /// Serve `POST /v1/admin/chaos` (fault rules, clock skew, disk faults,
    /// actor kills, a lying validator), behind the `[api]` token. Every lever
    /// is released by a dead-man timer. Default false: 403 CHAOS_DISABLED.
    pub enabled: bool,
}

/// `[api]`: every key optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSection {
    /// A bearer token with every scope, named `default` in the audit
    /// trail (at least 16 characters). Prefer `tokens`; if set, prefer the
    /// environment: `BULWARK_API__TOKEN`.
    pub token: Option<String>,
    /// Named tokens with scopes, stored as hashes (`[[api.tokens]]`, made
    /// by `bulwark token`). With no token at all, every `/v1` route and
    /// `/metrics` answer 403 API_CLOSED.
    pub tokens: Vec<crate::http::auth::TokenConfig>,
    /// Requests served at once, split into bulkhead pools: writes 40%,
    /// reads 40%, operator endpoints 10% (reserved), flex 10%.
    pub concurrency: u32,
    /// HTTPS: the API's certificate and key. Without it the API is plain
    /// HTTP, allowed only on a loopback `http_listen`.
    pub tls: Option<crate::http::serve::TlsFiles>,
    /// Serve plain HTTP on a non-loopback `http_listen` (a TLS proxy in
    /// front does TLS). Default false: such a config is refused at start.
    pub allow_plain_http: bool,
    /// Connections open at once; more are closed at once.
    pub connections_max: usize,
    /// Connections open at once from one remote address (loopback not
    /// counted); 0: no cap.
    pub connections_per_ip_max: usize,
    /// A connection's TLS handshake, and each request's headers, must
    /// arrive within this (after it opens or after the previous answer;
    /// idle connections close then).
    pub header_read_timeout_ms: u64,
    /// Largest request head (line and headers), bytes; larger: 431.
    pub header_bytes_max: usize,
    /// Every request is answered within this (503 TIMED_OUT past it).
    pub request_timeout_ms: u64,
    /// Audit records kept (the newest; `<data_dir>/audit.redb`).
    pub audit_keep: u64,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            token: None,
            tokens: Vec::new(),
            concurrency: 64,
            tls: None,
            allow_plain_http: false,
            connections_max: 4_096,
            connections_per_ip_max: 256,
            header_read_timeout_ms: 10_000,
            header_bytes_max: 16 * 1024,
            request_timeout_ms: 30_000,
            audit_keep: 1_000_000,
        }
    }
}

/// `[backup]`: every key optional. Every checkpoint the facility applies
/// is backed up into `dir` (a checkpoint is cluster-wide: see
/// `crate::backup`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupSection {
    /// Where backups go; relative to the config file. Default
    /// `<data_dir>/backups`.
    pub dir: Option<PathBuf>,
    /// Seconds between the checkpoints this facility commits while it
    /// leads; 0: none scheduled (checkpoints others commit, or `bulwark
    /// backup` asks for, are still backed up here).
    pub every_s: u64,
    /// Backups kept (the oldest are deleted).
    pub keep: usize,
}

impl Default for BackupSection {
    fn default() -> Self {
        BackupSection {
            dir: None,
            every_s: 3600,
            keep: 24,
        }
    }
}

/// `[detection]`: every key optional; the defaults are the embedded ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSection {
    /// Mean interval between heartbeats (QUIC datagrams), in ms.
    pub heartbeat_ms: u64,
    /// Each interval is drawn from `heartbeat_ms × (1 ± jitter)`.
    pub heartbeat_jitter: f64,
    /// Heartbeat intervals kept per peer.
    pub window: usize,
    /// Floor of the intervals' standard deviation, in ms.
    pub min_std_ms: f64,
    /// A pause always tolerated on top of the mean interval, in ms.
    pub acceptable_pause_ms: f64,
    /// A peer is Suspect at φ ≥ this.
    pub suspect_phi: f64,
    /// A peer is Down at φ ≥ this.
    pub down_phi: f64,
    /// `"last_write_wins"` (on the hybrid logical clock) or
    /// `"manual_review"`.
    pub conflict_policy: ConflictPolicy,
    /// A facility its peers suspect is not preferred as leader.
    pub leadership_follows_detector: bool,
}

impl Default for DetectionSection {
    fn default() -> Self {
        let d = DetectConfig::default();
        DetectionSection {
            heartbeat_ms: d.heartbeat_ms,
            heartbeat_jitter: d.heartbeat_jitter,
            window: d.phi.window,
            min_std_ms: d.phi.min_std_ms,
            acceptable_pause_ms: d.phi.acceptable_pause_ms,
            suspect_phi: d.phi.suspect_phi,
            down_phi: d.phi.down_phi,
            conflict_policy: ConflictPolicy::default(),
            leadership_follows_detector: true,
        }
    }
}

impl DetectionSection {
    /// The detection zone's settings.
    pub fn spec(&self) -> DetectionSpec {
        let d = DetectConfig::default();
        DetectionSpec {
            detect: DetectConfig {
                heartbeat_ms: self.heartbeat_ms,
                heartbeat_jitter: self.heartbeat_jitter,
                phi: PhiConfig {
                    window: self.window,
                    min_std_ms: self.min_std_ms,
                    acceptable_pause_ms: self.acceptable_pause_ms,
                    suspect_phi: self.suspect_phi,
                    down_phi: self.down_phi,
                    ..d.phi.clone()
                },
                ..d
            },
            policy: self.conflict_policy,
            leadership_follows_detector: self.leadership_follows_detector,
        }
    }
}

/// `[consensus]`: every key optional; the defaults are the embedded ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsensusSection {
    /// `"new"`: a facility with a new (just created) store starts a cluster
    /// with every listed facility as a voter. `"existing"`: it waits to be
    /// added by the leader. An old store with no Raft state is refused
    /// with `"new"`.
    pub initial_cluster_state: ClusterState,
    /// One Raft tick, in ms.
    pub tick_ms: u64,
    /// The election timeout (check-quorum's lease), in ticks.
    pub election_ticks: usize,
    /// A follower campaigns after a random number of ticks in
    /// `[election_ticks, election_ticks_max)` without a leader.
    pub election_ticks_max: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Applied entries between snapshots (log compaction).
    pub snapshot_every_entries: u64,
    /// Bytes of log entries kept before compaction, whatever their count.
    pub snapshot_every_bytes: u64,
    /// Ticks a proposal or read waits for its outcome.
    pub proposal_timeout_ticks: u64,
    /// A durable Raft write that takes at least this long, in ms, is slow;
    /// after `slow_writes_to_yield` slow writes in a row the facility
    /// stops being preferred as leader and hands leadership to a caught-up
    /// voter. 0 turns it off.
    pub slow_write_ms: u64,
    /// Consecutive slow writes that make the disk slow.
    pub slow_writes_to_yield: u32,
    /// The genesis validator set: facility id -> `ed25519:<64 hex>`, the
    /// vote keys that certified the cluster's first heights (later sets
    /// are ledger entries: `bulwark validator`). Empty: this facility's own
    /// key and the `[[peer]]` vote keys, which is right for the facilities
    /// a cluster started with as long as no key was rotated. `bulwark init`
    /// writes it; a facility that joins later, or whose key was rotated,
    /// needs it (`bulwark validator list` prints it).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub genesis_vote_keys: BTreeMap<String, String>,
}

impl Default for ConsensusSection {
    fn default() -> Self {
        let r = RaftConfig::default();
        ConsensusSection {
            initial_cluster_state: ClusterState::New,
            tick_ms: r.tick_ms,
            election_ticks: r.election_ticks,
            election_ticks_max: r.election_ticks_max,
            heartbeat_ticks: r.heartbeat_ticks,
            snapshot_every_entries: r.snapshot_every_entries,
            snapshot_every_bytes: r.snapshot_every_bytes,
            proposal_timeout_ticks: r.proposal_timeout_ticks,
            slow_write_ms: r.slow_write_ms,
            slow_writes_to_yield: r.slow_writes_to_yield,
            genesis_vote_keys: BTreeMap::new(),
        }
    }
}

impl ConsensusSection {
    /// The RaftPeer's settings.
    pub fn raft_config(&self) -> RaftConfig {
        RaftConfig {
            tick_ms: self.tick_ms,
            election_ticks: self.election_ticks,
            election_ticks_min: self.election_ticks,
            election_ticks_max: self.election_ticks_max,
            heartbeat_ticks: self.heartbeat_ticks,
            snapshot_every_entries: self.snapshot_every_entries,
            snapshot_every_bytes: self.snapshot_every_bytes,
            proposal_timeout_ticks: self.proposal_timeout_ticks,
            slow_write_ms: self.slow_write_ms,
            slow_writes_to_yield: self.slow_writes_to_yield,
            ..RaftConfig::default()
        }
    }
}

/// `[facility]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FacilitySection {
    /// The facility id.
    pub id: FacilityId,
    /// Directory of the redb file; relative paths are relative to the config file.
    pub data_dir: PathBuf,
    /// UDP address QUIC listens on.
    pub quic_listen: SocketAddr,
    /// TCP address of the HTTP API (health, metrics); localhost by default.
    pub http_listen: SocketAddr,
    /// PEM private key (PKCS#8 ed25519), written by `bulwark keygen`.
    pub key: PathBuf,
    /// PEM self-signed certificate, written by `bulwark keygen`.
    pub cert: PathBuf,
    /// The vote-signing secret key (64 hex digits), written by `bulwark
    /// keygen` as `vote.key`. Separate from the TLS key (docs/DECISIONS.md).
    pub vote_key: PathBuf,
    /// The vote key this facility rotates to (`bulwark keygen` writes
    /// one): held beside `vote_key`, it signs from the epoch in which
    /// `bulwark validator rotate` made it this facility's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vote_key_next: Option<PathBuf>,
    /// The cluster's id, 32 hex digits (`bulwark init` draws one and writes
    /// it into every facility's config). Without it, the id is derived from
    /// the members' ids and certificate pins as this config lists them: the
    /// same on every facility of one cluster as long as the lists agree.
    /// Carried in every hello and stamped into the store at its first
    /// start: a peer or a store of another cluster is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The newest wire protocol version this facility offers its peers
    /// (default: the newest this build speaks). Every link runs at the
    /// newest version both ends speak, so a rolling upgrade needs no
    /// setting; lower it only to hold a facility at an older version
    /// (docs/OPERATIONS.md, "Upgrading").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wire_protocol_max: Option<u32>,
}

/// Whether `addr` is `IP:port` or `name:port` (a DNS name of letters,
/// digits, dots and dashes, at most 253 chars; a port 1-65535).
fn peer_addr_ok(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("{addr:?}: IP:port or name:port");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-']);
    if port == 0 || !name_ok {
        return Err(bad());
    }
    Ok(())
}

/// `[[peer]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// The peer's facility id.
    pub id: FacilityId,
    /// The peer's QUIC address: `IP:port`, or `name:port` (a DNS name,
    /// resolved again before every dial).
    pub addr: String,
    /// blake3 hash of the peer's certificate (`bulwark keygen` prints it).
    pub pin: Pin,
    /// The pin of the certificate the peer rotates to, accepted beside
    /// `pin` (docs/OPERATIONS.md, "Rotating a TLS certificate").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_next: Option<Pin>,
    /// The peer's vote-signing public key, `ed25519:<64 hex digits>`
    /// (`bulwark keygen` prints it).
    pub vote_key: String,
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML is malformed, or a key is unknown, missing or of the wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// The values are inconsistent.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The offending key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl FacilityConfig {
    /// Every facility's vote public key: the peers' from the config, this
    /// facility's from its secret key file.
    pub fn public_keys(&self, own: &ed25519_dalek::VerifyingKey) -> PublicKeys {
        let peers = self.peers.iter().map(|p| {
            let k = keys::parse_public(&p.vote_key).expect("validated at load");
            (p.id.clone(), k)
        });
        PublicKeys::new(std::iter::once((self.facility.id.clone(), *own)).chain(peers))
    }

    /// The cluster id: `facility.cluster_id`, or derived from every
    /// member's id and pin (`own_pin`: this facility's).
    pub fn cluster_id(&self, own_pin: &Pin) -> Result<[u8; 16], String> {
        if let Some(text) = &self.facility.cluster_id {
            return bulwark_transport::quic::parse_cluster(text);
        }
        let mut members: Vec<(String, String)> = self
            .peers
            .iter()
            .map(|p| (p.id.to_string(), p.pin.to_string()))
            .collect();
        members.push((self.facility.id.to_string(), own_pin.to_string()));
        members.sort();
        let mut h = blake3::Hasher::new();
        h.update(b"bulwark cluster id v1");
        for (id, pin) in &members {
            h.update(id.as_bytes());
            h.update(&[0]);
            h.update(pin.as_bytes());
            h.update(&[0]);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Ok(id)
    }

    /// Every peer as the transport dials it: an `IP:port` as it is; a
    /// `name:port` resolved once now (its first address of the family
    /// this facility listens on; none yet: dialled once it resolves) and
    /// again before every dial.
    pub fn peer_specs(&self) -> Vec<bulwark_transport::quic::PeerSpec> {
        let v4 = self.facility.quic_listen.is_ipv4();
        self.peers
            .iter()
            .map(|p| {
                let (addr, host) = match p.addr.parse::<SocketAddr>() {
                    Ok(a) => (a, None),
                    Err(_) => {
                        let port = p
                            .addr
                            .rsplit_once(':')
                            .and_then(|(_, port)| port.parse().ok());
                        let unspecified = SocketAddr::from(([0, 0, 0, 0], port.unwrap_or(0)));
                        let resolved = std::net::ToSocketAddrs::to_socket_addrs(p.addr.as_str())
                            .ok()
                            .and_then(|mut a| a.find(|a| !v4 || a.is_ipv4()));
                        (resolved.unwrap_or(unspecified), Some(p.addr.clone()))
                    }
                };
                bulwark_transport::quic::PeerSpec {
                    id: p.id.clone(),
                    addr,
                    pin: p.pin,
                    pin_next: p.pin_next,
                    host,
                }
            })
            .collect()
    }

    /// Reads this facility's vote key and builds its keyring.
    pub fn keyring(&self) -> Result<Keyring, ConfigError> {
        let path = &self.facility.vote_key;
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.clone(),
            key: "facility.vote_key".into(),
            message,
        };
        let secret = keys::parse_secret(&text).map_err(|e| invalid(e.to_string()))?;
        let mut secrets = vec![secret];
        if let Some(next) = &self.facility.vote_key_next {
            let text = std::fs::read_to_string(next).map_err(|source| ConfigError::Read {
                path: next.clone(),
                source,
            })?;
            let k = keys::parse_secret(&text).map_err(|e| ConfigError::Invalid {
                path: next.clone(),
                key: "facility.vote_key_next".into(),
                message: e.to_string(),
            })?;
            secrets.push(k);
        }
        if self.consensus.genesis_vote_keys.is_empty() {
            // The configured set: the own key must be the one listed.
            let public = self.public_keys(&secrets[0].verifying_key());
            let ring = Keyring::new(self.facility.id.clone(), secrets.remove(0), public)
                .map_err(|e| invalid(e.to_string()))?;
            return Ok(secrets.into_iter().fold(ring, |r, k| r.and_next(k)));
        }
        Ok(Keyring::holding(
            self.facility.id.clone(),
            secrets,
            self.genesis_keys(),
        ))
    }

    /// The genesis validator set's public keys:
    /// `consensus.genesis_vote_keys`, or this facility's own key and the
    /// `[[peer]]` vote keys (`own`: its public key) when that is empty.
    pub fn genesis_public(&self, own: &ed25519_dalek::VerifyingKey) -> PublicKeys {
        if self.consensus.genesis_vote_keys.is_empty() {
            self.public_keys(own)
        } else {
            self.genesis_keys()
        }
    }

    fn genesis_keys(&self) -> PublicKeys {
        PublicKeys::new(self.consensus.genesis_vote_keys.iter().map(|(id, k)| {
            (
                id.parse().expect("validated at load"),
                keys::parse_public(k).expect("validated at load"),
            )
        }))
    }

    /// Reads, parses and validates `path` with the process environment's
    /// overrides ([`ENV_PREFIX`]); relative paths inside are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        let mut cfg = Self::parse_with(&text, path, &env)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut backup_dir = cfg.backup.dir.take();
        for p in [
            &mut cfg.facility.data_dir,
            &mut cfg.facility.key,
            &mut cfg.facility.cert,
            &mut cfg.facility.vote_key,
        ]
        .into_iter()
        .chain(cfg.facility.vote_key_next.as_mut())
        .chain(backup_dir.as_mut())
        .chain(
            cfg.api
                .tls
                .iter_mut()
                .flat_map(|t| [&mut t.cert, &mut t.key]),
        ) {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.backup.dir = backup_dir;
        Ok(cfg)
    }

    /// The API server's limits.
    pub fn limits(&self) -> crate::http::serve::Limits {
        let a = &self.api;
        crate::http::serve::Limits {
            connections_max: a.connections_max,
            header_read_timeout: std::time::Duration::from_millis(a.header_read_timeout_ms),
            handshake_timeout: std::time::Duration::from_millis(a.header_read_timeout_ms),
            header_bytes_max: a.header_bytes_max,
            request_timeout: std::time::Duration::from_millis(a.request_timeout_ms),
            connections_per_ip_max: a.connections_per_ip_max,
            loopback_exempt: true,
        }
    }

    /// Who may call the API: the `[api]` token and tokens.
    pub fn tokens(&self) -> Result<crate::http::auth::Tokens, String> {
        crate::http::auth::Tokens::new(self.api.token.as_deref(), &self.api.tokens)
    }

    /// Where backups go.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup
            .dir
            .clone()
            .unwrap_or_else(|| self.facility.data_dir.join("backups"))
    }

    /// Parses and validates TOML text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(text, path, &[])
    }

    /// Parses TOML text, applies the overrides among `env` (variables
    /// named [`ENV_PREFIX`]`SECTION__KEY`, e.g. `BULWARK_FACILITY__HTTP_LISTEN`;
    /// others are ignored), and validates the result. An override's value
    /// keeps the type of the key it replaces (a string stays a string);
    /// for a key the file does not set, it is read as a TOML value, or as
    /// a string if it is not one.
    pub fn parse_with(
        text: &str,
        path: &Path,
        env: &[(String, String)],
    ) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let mut applied = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(|k| k.to_ascii_lowercase()).collect();
            override_key(&mut table, &keys, value).map_err(|message| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("{} (from ${name})", keys.join(".")),
                message,
            })?;
            applied.push(name.clone());
        }
        let cfg: FacilityConfig = table.try_into().map_err(|e: toml::de::Error| {
            if applied.is_empty() {
                parse_error(e.to_string())
            } else {
                parse_error(format!("{e} (with overrides from {})", applied.join(", ")))
            }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if let Some(text) = &self.facility.cluster_id {
            bulwark_transport::quic::parse_cluster(text)
                .map_err(|m| invalid("facility.cluster_id", m))?;
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            peer_addr_ok(&p.addr).map_err(|m| invalid(&format!("peer[{i}].addr"), m))?;
            if p.id == self.facility.id {
                return Err(invalid(
                    &format!("peer[{i}].id"),
                    "a facility cannot be its own peer".into(),
                ));
            }
            if !seen.insert(p.id.clone()) {
                return Err(invalid(
                    &format!("peer[{i}].id"),
                    format!("{} is listed twice", p.id),
                ));
            }
            keys::parse_public(&p.vote_key)
                .map_err(|e| invalid(&format!("peer[{i}].vote_key"), e.to_string()))?;
        }
        if self.consensus.genesis_vote_keys.len() > bulwark_actors::ledger::SIGNERS_MAX {
            return Err(invalid(
                "consensus.genesis_vote_keys",
                format!("at most {}", bulwark_actors::ledger::SIGNERS_MAX),
            ));
        }
        // A facility that joins a running cluster cannot derive the genesis
        // set from its own config: it lists itself, whose key the genesis
        // never held.
        if self.consensus.initial_cluster_state == ClusterState::Existing
            && self.consensus.genesis_vote_keys.is_empty()
        {
            return Err(invalid(
                "consensus.genesis_vote_keys",
                "a facility joining a running cluster (initial_cluster_state = \"existing\") needs \
                 the cluster's genesis vote keys: copy epoch 0 of `bulwark validator list`"
                    .into(),
            ));
        }
        for (id, k) in &self.consensus.genesis_vote_keys {
            id.parse::<FacilityId>().map_err(|e| {
                invalid(&format!("consensus.genesis_vote_keys.{id}"), e.to_string())
            })?;
            keys::parse_public(k).map_err(|e| {
                invalid(&format!("consensus.genesis_vote_keys.{id}"), e.to_string())
            })?;
        }
        self.consensus
            .raft_config()
            .validate()
            .map_err(|m| invalid("consensus", m))?;
        self.detection
            .spec()
            .detect
            .validate()
            .map_err(|m| invalid("detection", m))?;
        if let Some(t) = &self.api.token {
            if t.len() < crate::http::auth::TOKEN_LEN_MIN
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "api.token",
                    "at least 16 characters, no whitespace".into(),
                ));
            }
        }
        self.tokens().map_err(|m| invalid("api.tokens", m))?;
        let a = &self.api;
        if !(1..=1_000_000).contains(&a.connections_max) {
            return Err(invalid("api.connections_max", "1 to 1000000".into()));
        }
        if !(100..=3_600_000).contains(&a.header_read_timeout_ms) {
            return Err(invalid(
                "api.header_read_timeout_ms",
                "100 to 3600000 ms".into(),
            ));
        }
        // Below a write's own budget it would cut writes off after they
        // were proposed, answering TIMED_OUT for writes that commit.
        let least = crate::http::api::WRITE_TIMEOUT.as_millis() as u64;
        if !(least..=3_600_000).contains(&a.request_timeout_ms) {
            return Err(invalid(
                "api.request_timeout_ms",
                format!("{least} (a write's budget) to 3600000 ms"),
            ));
        }
        if !(1_000..=1_000_000_000).contains(&a.audit_keep) {
            return Err(invalid("api.audit_keep", "1000 to 1000000000".into()));
        }
        if !(crate::http::serve::HEADER_BYTES_MIN..=1 << 20).contains(&a.header_bytes_max) {
            return Err(invalid("api.header_bytes_max", "8192 to 1048576".into()));
        }
        if !(4..=65_536).contains(&self.api.concurrency) {
            return Err(invalid("api.concurrency", "4 to 65536".into()));
        }
        if self.backup.every_s > 0 && self.backup.keep == 0 {
            return Err(invalid("backup.keep", "keep at least one backup".into()));
        }
        let f = &self.flow;
        if f.admission_rate_per_s > 1_000_000 {
            return Err(invalid(
                "flow.admission_rate_per_s",
                "0 (no fixed rate) to 1000000".into(),
            ));
        }
        for (key, v) in [
            ("flow.admission_burst", f.admission_burst),
            ("flow.admission_queue_len", f.admission_queue_len as u64),
            (
                "flow.admission_queue_timeout_ms",
                f.admission_queue_timeout_ms,
            ),
            (
                "flow.admission_target_latency_ms",
                f.admission_target_latency_ms,
            ),
            ("flow.admission_limit_max", u64::from(f.admission_limit_max)),
        ] {
            if !(1..=1_000_000).contains(&v) {
                return Err(invalid(key, "1 to 1000000".into()));
            }
        }
        let keep = self.schedule.archive_after_days;
        let margin = bulwark_actors::schedule::ARCHIVE_MARGIN_DAYS;
        if keep > 0 && keep < margin {
            return Err(invalid(
                "schedule.archive_after_days",
                format!("0 (off) or at least {margin}: the archive stays {margin} days behind the last approved day"),
            ));
        }
        if self.schedule.archive_after_days > 0 && self.schedule.archive_every_s == 0 {
            return Err(invalid(
                "schedule.archive_every_s",
                "at least 1 second while archive_after_days is set".into(),
            ));
        }
        self.supervision
            .validate()
            .map_err(|m| invalid("supervision", m))
    }
}

/// Environment variables overriding config keys start with this, then
/// the section and key joined by `__`: `BULWARK_API__TOKEN`,
/// `BULWARK_DETECTION__SUSPECT_PHI`, `BULWARK_SUPERVISION__ROOT__MAX_RESTARTS`.
pub const ENV_PREFIX: &str = "BULWARK_";

fn override_key(table: &mut toml::Table, keys: &[String], value: &str) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("no key named")?;
    let mut t = table;
    for k in parents {
        if k == "peer" {
            return Err("[[peer]] entries cannot be overridden from the environment".into());
        }
        let entry = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{k}` is not a section"))?;
    }
    let parsed = match t.get(last) {
        Some(toml::Value::String(_)) => toml::Value::String(value.to_string()),
        Some(toml::Value::Table(_)) | Some(toml::Value::Array(_)) => {
            return Err("a section or list cannot be overridden".into())
        }
        _ => literal(value).unwrap_or_else(|| toml::Value::String(value.to_string())),
    };
    t.insert(last.clone(), parsed);
    Ok(())
}

fn literal(value: &str) -> Option<toml::Value> {
    let t: toml::Table = toml::from_str(&format!("v = {value}")).ok()?;
    t.get("v").cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "blake3:0000000000000000000000000000000000000000000000000000000000000000";
    const VOTE: &str = "ed25519:d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn text(extra: &str) -> String {
        format!(
            r#"
[facility]
id = "alpha"
data_dir = "alpha"
quic_listen = "127.0.0.1:7401"
http_listen = "127.0.0.1:8401"
key = "alpha/facility.key"
cert = "alpha/facility.crt"
vote_key = "alpha/vote.key"

[[peer]]
id = "bravo"
addr = "127.0.0.1:7402"
pin = "{PIN}"
vote_key = "{VOTE}"
{extra}"#
        )
    }

    #[test]
    fn parses_a_valid_config() {
        let cfg = FacilityConfig::parse(&text(""), Path::new("a.toml")).unwrap();
        assert_eq!(cfg.facility.id.as_str(), "alpha");
        assert_eq!(cfg.peers.len(), 1);
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let err = FacilityConfig::parse(&text("colour = 1\n"), Path::new("a.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("a.toml") && msg.contains("colour"), "{msg}");
    }

    #[test]
    fn self_as_peer_and_duplicates_are_refused() {
        let dup = format!("[[peer]]\nid = \"bravo\"\naddr = \"127.0.0.1:1\"\npin = \"{PIN}\"\nvote_key = \"{VOTE}\"\n");
        let err = FacilityConfig::parse(&text(&dup), Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("peer[1].id"), "{err}");
        let me = format!("[[peer]]\nid = \"alpha\"\naddr = \"127.0.0.1:1\"\npin = \"{PIN}\"\nvote_key = \"{VOTE}\"\n");
        let err = FacilityConfig::parse(&text(&me), Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("own peer"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_not_defaults() {
        let bad = text("").replace("127.0.0.1:7402", "not-an-address");
        assert!(FacilityConfig::parse(&bad, Path::new("a.toml")).is_err());
        let bad = text("").replace("id = \"alpha\"", "id = \"Alpha!\"");
        assert!(FacilityConfig::parse(&bad, Path::new("a.toml")).is_err());
    }

    /// A peer is `IP:port` or `name:port`; anything else is named.
    #[test]
    fn peer_addresses_are_ip_or_dns_name_with_a_port() {
        for ok in [
            "127.0.0.1:7402",
            "[::1]:7402",
            "bravo.hospital.example:7402",
            "localhost:1",
        ] {
            let cfg = text("").replace("127.0.0.1:7402", ok);
            assert!(
                FacilityConfig::parse(&cfg, Path::new("a.toml")).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "bravo",
            "bravo:0",
            "bravo:99999",
            ":7402",
            "-bravo:7402",
            "br_avo:7402",
            "bravo example:1",
        ] {
            let cfg = text("").replace("127.0.0.1:7402", bad);
            let err = FacilityConfig::parse(&cfg, Path::new("a.toml")).unwrap_err();
            assert!(err.to_string().contains("peer[0].addr"), "{bad}: {err}");
        }
        let cfg = FacilityConfig::parse(
            &text("").replace("127.0.0.1:7402", "localhost:7402"),
            Path::new("a.toml"),
        )
        .unwrap();
        let spec = &cfg.peer_specs()[0];
        assert_eq!(spec.host.as_deref(), Some("localhost:7402"));
        assert_eq!(spec.addr.port(), 7402);
    }

    #[test]
    fn a_bad_peer_vote_key_is_named() {
        let bad = text("").replace(VOTE, "ed25519:00");
        let err = FacilityConfig::parse(&bad, Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("peer[0].vote_key"), "{err}");
    }

    #[test]
    fn consensus_settings_are_checked() {
        let cfg = FacilityConfig::parse(&text(""), Path::new("a.toml")).unwrap();
        assert_eq!(cfg.consensus, ConsensusSection::default());
        // Joining needs the genesis set written out.
        let joining = "[consensus]\ninitial_cluster_state = \"existing\"\ntick_ms = 20\n";
        let err = FacilityConfig::parse(&text(joining), Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("genesis_vote_keys"), "{err}");
        let ok = format!("{joining}\n[consensus.genesis_vote_keys]\nbravo = \"{VOTE}\"\n");
        let cfg = FacilityConfig::parse(&text(&ok), Path::new("a.toml")).unwrap();
        assert_eq!(cfg.consensus.initial_cluster_state, ClusterState::Existing);
        assert_eq!(cfg.consensus.raft_config().tick_ms, 20);
        let bad = "[consensus]\nheartbeat_ticks = 10\n";
        let err = FacilityConfig::parse(&text(bad), Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("`consensus`"), "{err}");
        let bad = "[consensus]\ninitial_cluster_state = \"maybe\"\n";
        assert!(FacilityConfig::parse(&text(bad), Path::new("a.toml")).is_err());
    }

    #[test]
    fn admission_and_archive_settings_are_read_and_checked() {
        let cfg = FacilityConfig::parse(&text(""), Path::new("a.toml")).unwrap();
        assert_eq!(cfg.flow.admission(), AdmissionConfig::default());
        let ok = "[flow]
admission_rate_per_s = 5000
admission_burst = 500

[schedule]
archive_after_days = 90
";
        let cfg = FacilityConfig::parse(&text(ok), Path::new("a.toml")).unwrap();
        let a = cfg.flow.admission();
        assert_eq!((a.rate_per_s, a.burst), (5000, 500));
        assert_eq!(cfg.schedule.archive_after_days, 90);
        let bad = "[flow]
admission_rate_per_s = 2000000
";
        let err = FacilityConfig::parse(&text(bad), Path::new("a.toml")).unwrap_err();
        assert!(
            err.to_string().contains("flow.admission_rate_per_s"),
            "{err}"
        );
        let bad = "[schedule]
archive_after_days = 30
archive_every_s = 0
";
        let err = FacilityConfig::parse(&text(bad), Path::new("a.toml")).unwrap_err();
        assert!(
            err.to_string().contains("schedule.archive_every_s"),
            "{err}"
        );
    }

    #[test]
    fn detection_settings_are_checked() {
        let ok = "[detection]\nsuspect_phi = 10.0\ndown_phi = 20.0\nconflict_policy = \"manual_review\"\n";
        let cfg = FacilityConfig::parse(&text(ok), Path::new("a.toml")).unwrap();
        let spec = cfg.detection.spec();
        assert_eq!(spec.detect.phi.down_phi, 20.0);
        assert_eq!(spec.policy, ConflictPolicy::ManualReview);
        let bad = "[detection]\nsuspect_phi = 20.0\ndown_phi = 10.0\n";
        let err = FacilityConfig::parse(&text(bad), Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("`detection`"), "{err}");
        let bad = "[detection]\nconflict_policy = \"coin_flip\"\n";
        assert!(FacilityConfig::parse(&text(bad), Path::new("a.toml")).is_err());
    }

    #[test]
    fn environment_overrides_keys_and_names_them() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let root =
            "[supervision.root]\nstrategy = \"one-for-one\"\nmax_restarts = 3\nwindow_ms = 1000\n";
        let cfg = FacilityConfig::parse_with(
            &text(root),
            Path::new("a.toml"),
            &env(&[
                ("BULWARK_FACILITY__HTTP_LISTEN", "127.0.0.1:9999"),
                ("BULWARK_API__TOKEN", "0123456789abcdef0123"),
                ("BULWARK_DETECTION__SUSPECT_PHI", "9.5"),
                ("BULWARK_SUPERVISION__ROOT__MAX_RESTARTS", "7"),
                // Not overrides: no `__`, or another prefix.
                ("BULWARK_SIM_SEEDS", "5"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.facility.http_listen.port(), 9999);
        assert_eq!(cfg.api.token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(cfg.detection.suspect_phi, 9.5);
        assert_eq!(cfg.supervision.root.max_restarts, 7);
        // A bad value names the key, the variable and the file.
        let refused = |var: &str, value: &str| {
            FacilityConfig::parse_with(&text(""), Path::new("a.toml"), &env(&[(var, value)]))
                .unwrap_err()
                .to_string()
        };
        let err = refused("BULWARK_FACILITY__HTTP_LISTEN", "nowhere");
        assert!(
            err.contains("a.toml") && err.contains("BULWARK_FACILITY__HTTP_LISTEN"),
            "{err}"
        );
        let err = refused("BULWARK_API__TOKEN", "short");
        assert!(err.contains("api.token"), "{err}");
        let err = refused("BULWARK_PEER__ADDR", "127.0.0.1:1");
        assert!(err.contains("$BULWARK_PEER__ADDR"), "{err}");
        let err = refused("BULWARK_API__COLOUR", "1");
        assert!(
            err.contains("colour") && err.contains("BULWARK_API__COLOUR"),
            "{err}"
        );
    }

    #[test]
    fn a_partial_supervision_section_keeps_the_other_defaults() {
        use bulwark_runtime::{Strategy, Zone};
        let extra = "[supervision.zones.service]\nstrategy = \"one-for-all\"\nmax_restarts = 1\nwindow_ms = 500\n";
        let cfg = FacilityConfig::parse(&text(extra), Path::new("a.toml")).unwrap();
        let sup = &cfg.supervision;
        assert_eq!(sup.zone(Zone::Service).strategy, Strategy::OneForAll);
        assert_eq!(sup.zone(Zone::Transport).max_restarts, 10);
        assert_eq!(sup.zone(Zone::Consensus).strategy, Strategy::OneForAll);
        assert_eq!(sup.root.max_restarts, 3);
        let zero = extra.replace("500", "0");
        let err = FacilityConfig::parse(&text(&zero), Path::new("a.toml")).unwrap_err();
        assert!(err.to_string().contains("service.window_ms"), "{err}");
    }
}
