//! QUIC between facilities: quinn 0.11 over rustls 0.23 (ring provider,
//! TLS 1.3 only, no 0-RTT), both sides authenticated against pinned
//! certificates.
//!
//! ## Model
//! Each facility *dials* every peer to send and *accepts* every peer to
//! receive, so a pair of facilities holds two connections, one per
//! direction, and neither has to decide who owns a shared one.
//!
//! - The dialling side (the peer's PeerLink, [`QuicTransport::link_driver`])
//!   connects, then waits for the acceptor's **hello**. With TLS 1.3 a client
//!   whose certificate the server refuses still sees its handshake complete;
//!   only the hello proves that the peer accepted us, so the link counts as
//!   [`LinkStatus::Up`] only once it arrives. Control payloads then go as
//!   length-prefixed frames on one long-lived unidirectional stream (ordered);
//!   heartbeat payloads go as QUIC datagrams, never queued behind control.
//! - The accepting side ([`QuicTransport::accept_driver`]) maps the client's
//!   certificate to a facility id through its pin, sends the hello, and reads
//!   streams and datagrams. The id from the pin is the `from` of every
//!   [`Inbound`]; nothing the peer claims can change it.
//!
//! ## Bad input
//! A frame whose length prefix exceeds [`FRAME_LEN_MAX`], a stream that ends
//! inside a frame, or a frame body that stalls beyond the read timeout stops
//! that stream (application code [`STOP_FRAME_ERROR`]) and is counted; the
//! connection and the node keep serving and the sender opens a new stream.
//! An oversized datagram is dropped and counted. An unknown certificate is
//! refused during the handshake (TLS alert `access_denied`, QUIC close
//! 0x131) and counted; a client without a certificate is refused with
//! `certificate_required` (0x174).
//!
//! ## Faults
//! The transport obeys its [`FaultPlan`] twice: on send for the traffic it
//! sends (`from` = this facility) and on receipt for the traffic it receives
//! (`to` = this facility). A rule installed on only one end of a link
//! therefore applies once; installed on both ends, a probabilistic drop
//! applies twice. Delays hold the link (later payloads wait behind the
//! delayed one), as a slower link would.

use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_storage::codec;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::frame::{self, FRAME_LEN_MAX, PREFIX_LEN};
use crate::identity::{server_name, Identity, Pin};
use crate::{
    BoxFuture, FacilityId, FaultPlan, Inbound, LinkStatus, SendError, SendErrorKind, TrafficClass,
    Transport, Verdict, DATAGRAM_LEN_MAX,
};

/// The ALPN protocol id of wire versions 1 to 5 (builds before version
/// negotiation offered this one id).
pub const ALPN: &[u8] = b"bulwark/1";
/// The newest wire version this build speaks. Both ends offer every version
/// they speak as ALPN ids (newest first, [`alpn_of`]); the TLS handshake
/// settles on the newest both speak, and the hello must carry that version.
/// So version N and N+1 interoperate in a rolling upgrade, and a peer that
/// shares no version with this build fails its handshake.
/// 1: the first.
/// 2: both ends send a hello, and it carries the sender's boot id.
/// 3: the hello carries the sender's cluster id.
/// 4: a facility's Raft identity may be a later incarnation (a replaced
/// store), and RaftPeers pass membership changes to the leader.
/// 5: Raft entries may carry validator-set changes (`Op::Validator`), a
/// membership change may remove a facility, and a facility outside the
/// validator set exchanges ledger heads: a version-4 build would skip
/// such entries and diverge, so it is refused.
/// 6: versions are negotiated (ALPN `bulwark/6`, falling back to
/// `bulwark/1` for a version-5 peer), and a validator's ledger head
/// announcement also carries the newest ledger height its replica holds
/// (`BftWire::HeadOf`), sent only over a link at version 6 or later.
pub const PROTOCOL_VERSION: u32 = 6;
/// The oldest wire version this build still speaks.
pub const PROTOCOL_MIN: u32 = 5;

/// The ALPN id of wire `version`: `bulwark/1` up to 5 (the id those builds
/// offered), `bulwark/<version>` from 6 on.
pub fn alpn_of(version: u32) -> Vec<u8> {
    if version <= 5 {
        ALPN.to_vec()
    } else {
        format!("bulwark/{version}").into_bytes()
    }
}

/// The wire version an ALPN id names, if this build speaks it.
pub fn version_of_alpn(alpn: &[u8]) -> Option<u32> {
    (PROTOCOL_MIN..=PROTOCOL_VERSION)
        .rev()
        .find(|v| alpn_of(*v) == alpn)
}

/// The ALPN ids offered by a build speaking up to `max`, newest first.
fn alpn_offer(max: u32) -> Vec<Vec<u8>> {
    (PROTOCOL_MIN..=max).rev().map(alpn_of).collect()
}

/// Which cluster a facility belongs to: drawn by `bulwark init` (or
/// derived from the first members' ids and pins), stored with the
/// facility's data, and carried in every hello: a facility of another
/// cluster is refused even with a pinned certificate.
pub type ClusterId = [u8; 16];
/// Application code when a stream is stopped for a bad frame.
pub const STOP_FRAME_ERROR: u32 = 0x10;
/// Application close code when a newer connection from the same peer
/// replaces this one.
pub const CLOSE_REPLACED: u32 = 0x11;
/// Application close code on shutdown.
pub const CLOSE_SHUTDOWN: u32 = 0x12;
/// Application close code for a bad hello.
pub const CLOSE_BAD_HELLO: u32 = 0x13;
/// Largest hello frame body.
pub const HELLO_LEN_MAX: usize = 256;

/// One peer as the config lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    /// Its facility id.
    pub id: FacilityId,
    /// Its QUIC address (with `host`: the one it resolved to at start,
    /// dialled when resolving fails).
    pub addr: SocketAddr,
    /// Its certificate's pin.
    pub pin: Pin,
    /// The pin of the certificate it rotates to, accepted as its own
    /// beside `pin` (a rotation without downtime: docs/OPERATIONS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_next: Option<Pin>,
    /// A DNS name and port (`bravo.example.org:7402`) resolved again
    /// before every dial, so a peer whose address changes is found on
    /// the next reconnect; `None`: `addr` as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Settings of a [`QuicTransport`]. [`Default`] gives the embedded defaults.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// Address to listen on (ignored when a socket is handed to `bind`).
    pub listen: SocketAddr,
    /// Every other facility.
    pub peers: Vec<PeerSpec>,
    /// Outgoing payloads queued per peer before `send` answers Overloaded.
    pub send_queue_len: usize,
    /// Received payloads queued for the node before the transport waits
    /// (control, which pushes back through QUIC flow control) or drops
    /// (heartbeats).
    pub inbound_len: usize,
    /// Longest wait for a handshake.
    pub handshake_timeout: Duration,
    /// Longest wait for the peer's hello after the handshake.
    pub hello_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive interval (must be below `idle_timeout`).
    pub keep_alive: Duration,
    /// Longest time to read one frame body once its prefix arrived.
    pub frame_read_timeout: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// Concurrent unidirectional streams a peer may open.
    pub streams_per_connection_max: u32,
    /// Handshakes in progress at once, beyond which new ones are refused.
    pub incoming_max: usize,
    /// Seed for fault decisions and backoff jitter; `None` draws one.
    pub seed: Option<u64>,
    /// This facility's cluster; a hello naming another is refused.
    pub cluster: ClusterId,
    /// The newest wire version offered, between [`PROTOCOL_MIN`] and
    /// [`PROTOCOL_VERSION`] (default). Lower only to stage an upgrade or to
    /// stand in for an older build in a test.
    pub protocol_max: u32,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: Vec::new(),
            send_queue_len: 1024,
            inbound_len: 4096,
            handshake_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(2),
            // A peer that stops answering (killed, frozen, cut off) reads
            // Down within 3 s: six keep-alives go unanswered first.
            idle_timeout: Duration::from_secs(3),
            keep_alive: Duration::from_millis(500),
            frame_read_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            streams_per_connection_max: 8,
            incoming_max: 64,
            seed: None,
            cluster: [0; 16],
            protocol_max: PROTOCOL_VERSION,
        }
    }
}

impl QuicConfig {
    /// Checks the settings against `local`, the facility they are for.
    pub fn validate(&self, local: &FacilityId) -> Result<(), QuicError> {
        let bad = |s: String| Err(QuicError::Config(s));
        let mut ids = std::collections::BTreeSet::new();
        let mut pins = std::collections::BTreeSet::new();
        for p in &self.peers {
            if &p.id == local {
                return bad(format!("peer {} is this facility", p.id));
            }
            if !ids.insert(&p.id) {
                return bad(format!("peer {} is listed twice", p.id));
            }
            for pin in std::iter::once(p.pin).chain(p.pin_next) {
                if !pins.insert(pin) {
                    return bad(format!("peer {} reuses another peer's pin", p.id));
                }
            }
        }
        if self.send_queue_len == 0 || self.inbound_len == 0 {
            return bad("queue lengths must be at least 1".into());
        }
        if self.streams_per_connection_max == 0 || self.incoming_max == 0 {
            return bad("stream and incoming limits must be at least 1".into());
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return bad("backoff_initial must be positive and at most backoff_max".into());
        }
        if self.keep_alive >= self.idle_timeout {
            return bad("keep_alive must be shorter than idle_timeout".into());
        }
        if !(PROTOCOL_MIN..=PROTOCOL_VERSION).contains(&self.protocol_max) {
            return bad(format!(
                "protocol_max {} is outside the versions this build speaks ({PROTOCOL_MIN} to {PROTOCOL_VERSION})",
                self.protocol_max
            ));
        }
        Ok(())
    }
}

/// Why the transport could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The settings are inconsistent.
    #[error("quic config: {0}")]
    Config(String),
    /// rustls refused the identity or settings.
    #[error("tls: {0}")]
    Tls(String),
    /// The socket could not be bound or used.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No tokio runtime is running.
    #[error("QuicTransport::bind needs a running tokio runtime")]
    NoRuntime,
}

/// Why one dial did not produce a usable link.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DialError {
    /// The handshake did not complete in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// The peer closed the connection with a transport-level code, such as
    /// 0x131 (access_denied: our certificate is not pinned there) or 0x174
    /// (certificate_required).
    #[error("refused by peer: transport close code {code:#x} ({reason})")]
    Refused {
        /// The QUIC transport error code on the wire.
        code: u64,
        /// The peer's reason text.
        reason: String,
    },
    /// The peer closed the connection with an application code.
    #[error("closed by peer: application code {code:#x}")]
    Closed {
        /// The application close code.
        code: u64,
    },
    /// The handshake or hello failed locally (our verifier refused the
    /// peer's certificate, the connection timed out, ...).
    #[error("connection failed: {0}")]
    Failed(String),
    /// The hello did not arrive in time.
    #[error("no hello from the peer in time")]
    HelloTimeout,
    /// The hello was malformed or named another facility.
    #[error("bad hello: {0}")]
    BadHello(String),
}

/// Counters kept by the transport (also exported as metrics).
#[derive(Debug, Default)]
pub struct QuicStats {
    /// Handshakes refused by our verifiers (unknown certificate, wrong name).
    pub handshakes_refused: AtomicU64,
    /// Incoming handshakes that failed for any reason (including refusals).
    pub incoming_failed: AtomicU64,
    /// Streams stopped for a bad frame.
    pub frame_errors: AtomicU64,
    /// Datagrams dropped for exceeding [`DATAGRAM_LEN_MAX`].
    pub datagrams_oversized: AtomicU64,
    /// Dials that did not produce a link.
    pub dial_failures: AtomicU64,
    /// Payloads dropped by the fault plan (both directions).
    pub fault_drops: AtomicU64,
    /// Heartbeats dropped because the inbound queue was full or the link down.
    pub heartbeats_dropped: AtomicU64,
    /// Control payloads lost to a failed stream write.
    pub write_failures: AtomicU64,
}

impl QuicStats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The first frame each end sends on a connection: the sender's facility,
/// protocol version and boot id. Each end accepts only the facility whose
/// pinned certificate the handshake checked, at the version the handshake
/// negotiated (its ALPN id). Its layout is the same at every version.
///
/// The boot id is drawn at random when a transport starts. A facility that
/// receives a hello on a new incoming connection with another boot id than
/// its own outgoing link last saw knows the peer restarted: that link is
/// writing into a dead connection, so it is dropped and dialled again at
/// once, not after the idle timeout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// The facility that sent it.
    pub facility: FacilityId,
    /// Its protocol version.
    pub protocol: u32,
    /// The sender's boot id (0: none given).
    pub boot: u64,
    /// The sender's cluster.
    pub cluster: ClusterId,
}

impl Hello {
    /// The hello from `facility` of `cluster`, booted as `boot`, on a
    /// connection at wire `version`.
    pub fn booted(facility: FacilityId, version: u32, boot: u64, cluster: ClusterId) -> Self {
        Hello {
            facility,
            protocol: version,
            boot,
            cluster,
        }
    }

    /// Decodes a hello frame's body (at most [`HELLO_LEN_MAX`] bytes,
    /// nothing trailing) and accepts it only from `expected`, at the
    /// connection's negotiated `version`, of `cluster`. A refusal names
    /// what differs.
    pub fn accept(
        body: &[u8],
        expected: &FacilityId,
        cluster: &ClusterId,
        version: u32,
    ) -> Result<Hello, DialError> {
        let refuse = |reason: &'static str, detail: String| {
            metrics::counter!("bulwark_quic_hello_refused_total", "reason" => reason).increment(1);
            tracing::warn!(peer = %expected, reason, "{detail}");
            Err(DialError::BadHello(detail))
        };
        let hello = match codec::decode_limited::<Hello>(body, HELLO_LEN_MAX) {
            Ok(h) => h,
            Err(e) => return refuse("malformed", format!("a hello that does not decode: {e}")),
        };
        if hello.facility != *expected {
            return refuse(
                "facility",
                format!(
                    "the hello names {}, the certificate {expected}",
                    hello.facility
                ),
            );
        }
        if hello.protocol != version {
            return refuse(
                "protocol",
                format!(
                    "{expected} sent a hello at protocol {}, the connection's is {version} (this build speaks {PROTOCOL_MIN} to {PROTOCOL_VERSION})",
                    hello.protocol
                ),
            );
        }
        if hello.cluster != *cluster {
            return refuse(
                "cluster",
                format!(
                    "{expected} belongs to cluster {}, this facility to {}: refused (a data dir or config of another cluster?)",
                    cluster_text(&hello.cluster),
                    cluster_text(cluster)
                ),
            );
        }
        Ok(hello)
    }
}

/// A cluster id as text (32 hex digits).
pub fn cluster_text(id: &ClusterId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cluster id from its text (32 hex digits).
pub fn parse_cluster(text: &str) -> Result<ClusterId, String> {
    let bad = || format!("a cluster id is 32 hex digits, not {text:?}");
    if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(id)
}

struct Outgoing {
    class: TrafficClass,
    payload: Vec<u8>,
    not_before: Option<Instant>,
}

struct Peer {
    spec: PeerSpec,
    tx: mpsc::Sender<Outgoing>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Outgoing>>,
    status: watch::Sender<LinkStatus>,
    /// The boot id in the hello of the outgoing link's connection.
    linked_boot: AtomicU64,
    /// The boot id in the hello of the newest incoming connection.
    heard_boot: AtomicU64,
    /// The wire version last negotiated with this peer (0: none yet).
    protocol: AtomicU32,
    /// Wakes the outgoing link when `heard_boot` changes.
    restarted: tokio::sync::Notify,
}

struct Inner {
    id: FacilityId,
    /// This transport's boot id (see [`Hello`]).
    boot: u64,
    pin: Pin,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    peers: BTreeMap<FacilityId, Peer>,
    by_pin: Arc<HashMap<Pin, FacilityId>>,
    inbound: mpsc::Sender<Inbound>,
    faults: FaultPlan,
    config: QuicConfig,
    rng: Mutex<ChaCha8Rng>,
    stats: Arc<QuicStats>,
    accepted: Mutex<HashMap<FacilityId, quinn::Connection>>,
    /// Set by [`QuicTransport::close`]: links stop redialling.
    closed: std::sync::atomic::AtomicBool,
}

/// The QUIC [`Transport`]. Cheap to clone; clones share one endpoint.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("id", &self.inner.id)
            .field("addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// Binds an ephemeral UDP socket on 127.0.0.1, for demos and tests that
/// must know every address before any facility starts.
pub fn loopback_socket() -> std::io::Result<UdpSocket> {
    UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl QuicTransport {
    /// Sets up the endpoint for `identity` on `socket` (or a new socket bound
    /// to `config.listen`). Returns the transport and the channel on which
    /// received payloads arrive. Nothing is sent until the drivers run.
    pub fn bind(
        identity: Identity,
        config: QuicConfig,
        socket: Option<UdpSocket>,
    ) -> Result<(QuicTransport, mpsc::Receiver<Inbound>), QuicError> {
        config.validate(&identity.id)?;
        let stats = Arc::new(QuicStats::default());
        let by_pin: Arc<HashMap<Pin, FacilityId>> = Arc::new(
            config
                .peers
                .iter()
                .flat_map(|p| {
                    std::iter::once(p.pin)
                        .chain(p.pin_next)
                        .map(|pin| (pin, p.id.clone()))
                })
                .collect(),
        );
        let verifier = Arc::new(PinVerifier::new(by_pin.clone(), stats.clone()));
        let transport_config = Arc::new(transport_config(&config)?);
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto(
            &identity,
            verifier.clone(),
            config.protocol_max,
        )?));
        client.transport_config(transport_config.clone());
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto(
            &identity,
            verifier,
            config.protocol_max,
        )?));
        server
            .transport_config(transport_config)
            .max_incoming(config.incoming_max)
            .migration(false);

        let socket = match socket {
            Some(s) => s,
            None => UdpSocket::bind(config.listen).map_err(|source| QuicError::Bind {
                addr: config.listen,
                source,
            })?,
        };
        let addr = socket.local_addr().map_err(|source| QuicError::Bind {
            addr: config.listen,
            source,
        })?;
        let runtime = quinn::default_runtime().ok_or(QuicError::NoRuntime)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| QuicError::Bind { addr, source })?;

        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_len);
        let peers = config
            .peers
            .iter()
            .map(|spec| {
                let (tx, rx) = mpsc::channel(config.send_queue_len);
                let (status, _) = watch::channel(LinkStatus::Down);
                let peer = Peer {
                    spec: spec.clone(),
                    tx,
                    rx: tokio::sync::Mutex::new(rx),
                    status,
                    linked_boot: AtomicU64::new(0),
                    heard_boot: AtomicU64::new(0),
                    protocol: AtomicU32::new(0),
                    restarted: tokio::sync::Notify::new(),
                };
                (spec.id.clone(), peer)
            })
            .collect();
        let seed = config.seed.unwrap_or_else(|| rand::rng().random());
        let inner = Inner {
            boot: rand::rng().random_range(1..u64::MAX),
            id: identity.id.clone(),
            pin: identity.pin(),
            endpoint,
            client,
            peers,
            by_pin,
            inbound: inbound_tx,
            faults: FaultPlan::new(),
            config,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            stats,
            accepted: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((
            QuicTransport {
                inner: Arc::new(inner),
            },
            inbound_rx,
        ))
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// This facility's pin (what its peers list).
    pub fn pin(&self) -> Pin {
        self.inner.pin
    }

    /// The transport's counters.
    pub fn stats(&self) -> &QuicStats {
        &self.inner.stats
    }

    /// Waits until the link to `peer` has `status`. Returns `false` at once
    /// for an unknown peer.
    pub async fn wait_link(&self, peer: &FacilityId, status: LinkStatus) -> bool {
        let Some(p) = self.inner.peers.get(peer) else {
            return false;
        };
        let mut rx = p.status.subscribe();
        let reached = rx.wait_for(|s| *s == status).await.is_ok();
        reached
    }

    /// Dials `peer` once and waits for its hello, without touching the link
    /// the PeerLink owns. For diagnostics and tests of refusal.
    pub async fn dial_once(&self, peer: &FacilityId) -> Result<(), DialError> {
        let p = self
            .inner
            .peers
            .get(peer)
            .ok_or_else(|| DialError::Failed(format!("{peer} is not a configured peer")))?;
        let (conn, _) = self.inner.dial(&p.spec).await?;
        conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"probe done");
        Ok(())
    }

    /// Closes every connection and the endpoint.
    pub fn close(&self) {
        self.inner
            .closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutdown");
    }
}

impl Transport for QuicTransport {
    fn local_id(&self) -> &FacilityId {
        &self.inner.id
    }

    fn peers(&self) -> Vec<FacilityId> {
        self.inner.peers.keys().cloned().collect()
    }

    fn send(
        &self,
        to: &FacilityId,
        class: TrafficClass,
        payload: Vec<u8>,
    ) -> Result<(), SendError> {
        let refuse = |kind, payload| {
            Err(SendError {
                to: to.clone(),
                kind,
                payload,
            })
        };
        let Some(peer) = self.inner.peers.get(to) else {
            return refuse(SendErrorKind::UnknownPeer, payload);
        };
        let limit = match class {
            TrafficClass::Control => FRAME_LEN_MAX,
            TrafficClass::Heartbeat => DATAGRAM_LEN_MAX,
        };
        if payload.len() > limit {
            return refuse(SendErrorKind::TooLarge, payload);
        }
        if class == TrafficClass::Heartbeat && *peer.status.borrow() == LinkStatus::Down {
            // A heartbeat queued behind a dead link is stale when it lands.
            QuicStats::bump(&self.inner.stats.heartbeats_dropped);
            return Ok(());
        }
        let not_before = match self.inner.judge(&self.inner.id, to, class) {
            Verdict::Drop => return Ok(()),
            Verdict::Deliver(d) if d.is_zero() => None,
            Verdict::Deliver(d) => Some(Instant::now() + d),
        };
        let mut payload = payload;
        if self.inner.faults.corrupt(&self.inner.id, to, &mut payload) {
            metrics::counter!("bulwark_transport_fault_corrupted_total").increment(1);
        }
        let out = Outgoing {
            class,
            payload,
            not_before,
        };
        match peer.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(o)) => {
                metrics::counter!("bulwark_transport_send_refused_total", "reason" => "overloaded")
                    .increment(1);
                refuse(SendErrorKind::Overloaded, o.payload)
            }
            Err(mpsc::error::TrySendError::Closed(o)) => refuse(SendErrorKind::Closed, o.payload),
        }
    }

    fn link_status(&self, peer: &FacilityId) -> LinkStatus {
        self.inner
            .peers
            .get(peer)
            .map_or(LinkStatus::Down, |p| *p.status.borrow())
    }

    fn peer_protocol(&self, peer: &FacilityId) -> u32 {
        match self.inner.peers.get(peer) {
            Some(p) => match p.protocol.load(Ordering::Relaxed) {
                0 => PROTOCOL_MIN,
                v => v,
            },
            None => PROTOCOL_MIN,
        }
    }

    fn faults(&self) -> &FaultPlan {
        &self.inner.faults
    }

    fn link_driver(&self, peer: &FacilityId) -> Option<BoxFuture> {
        if !self.inner.peers.contains_key(peer) {
            return None;
        }
        Some(Box::pin(run_link(self.inner.clone(), peer.clone())))
    }

    fn accept_driver(&self) -> Option<BoxFuture> {
        Some(Box::pin(run_accept(self.inner.clone())))
    }
}

impl Inner {
    fn judge(&self, from: &FacilityId, to: &FacilityId, class: TrafficClass) -> Verdict {
        let mut rng = self.rng.lock().expect("rng lock");
        let verdict = self.faults.judge(from, to, class, &mut *rng);
        if verdict == Verdict::Drop {
            QuicStats::bump(&self.stats.fault_drops);
            metrics::counter!("bulwark_transport_fault_drops_total").increment(1);
        }
        verdict
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let initial = self.config.backoff_initial;
        let cap = initial
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.config.backoff_max);
        // Equal jitter: half fixed, half random, so peers spread out but
        // never retry at once.
        let half = cap / 2;
        let jitter = self
            .rng
            .lock()
            .expect("rng lock")
            .random_range(0..=half.as_micros() as u64);
        half + Duration::from_micros(jitter)
    }

    /// Where to dial `spec`: its host name resolved now (an IPv4 address
    /// for an IPv4 endpoint; any for an IPv6 one, IPv6 first), else the
    /// address it resolved to at start.
    async fn resolve(&self, spec: &PeerSpec) -> Result<SocketAddr, DialError> {
        let Some(host) = &spec.host else {
            return Ok(spec.addr);
        };
        let v4 = self.endpoint.local_addr().map_or(true, |a| a.is_ipv4());
        match tokio::net::lookup_host(host.as_str()).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.filter(|a| !v4 || a.is_ipv4()).collect();
                addrs.sort_by_key(|a| a.is_ipv4());
                if let Some(a) = addrs.first() {
                    return Ok(*a);
                }
                tracing::warn!(peer = %spec.id, %host, "no address of this endpoint's family");
            }
            Err(e) => {
                metrics::counter!("bulwark_quic_resolve_failed_total").increment(1);
                tracing::warn!(peer = %spec.id, %host, error = %e, "peer name does not resolve");
            }
        }
        if spec.addr.ip().is_unspecified() {
            return Err(DialError::Failed(format!("{host} does not resolve")));
        }
        Ok(spec.addr)
    }

    /// Notes the wire `version` negotiated with `peer`.
    fn negotiated(&self, peer: &FacilityId, version: u32) {
        if let Some(p) = self.peers.get(peer) {
            if p.protocol.swap(version, Ordering::Relaxed) != version {
                tracing::info!(%peer, version, "wire version negotiated");
            }
        }
        metrics::gauge!("bulwark_quic_peer_protocol", "peer" => peer.to_string())
            .set(version as f64);
    }

    /// Connects to `spec`, waits for its hello and sends ours. Returns the
    /// connection and the peer's boot id.
    async fn dial(&self, spec: &PeerSpec) -> Result<(quinn::Connection, u64), DialError> {
        let addr = self.resolve(spec).await?;
        let connecting = self
            .endpoint
            .connect_with(self.client.clone(), addr, &server_name(&spec.id))
            .map_err(|e| DialError::Failed(e.to_string()))?;
        let conn = match tokio::time::timeout(self.config.handshake_timeout, connecting).await {
            Err(_) => return Err(DialError::HandshakeTimeout),
            Ok(Err(e)) => return Err(dial_error(e)),
            Ok(Ok(conn)) => conn,
        };
        // The verifier checked the pin against the name we dialled; check
        // again that the certificate is this peer's.
        let pin = peer_pin(&conn);
        if pin != Some(spec.pin) && (pin.is_none() || pin != spec.pin_next) {
            conn.close(VarInt::from_u32(CLOSE_BAD_HELLO), b"unexpected certificate");
            return Err(DialError::Failed(
                "peer presented another certificate".into(),
            ));
        }
        let hello = async {
            let mut recv = conn.accept_uni().await.map_err(dial_error)?;
            read_frame(&mut recv, HELLO_LEN_MAX)
                .await
                .map_err(|e| DialError::BadHello(e.to_string()))
        };
        let body = match tokio::time::timeout(self.config.hello_timeout, hello).await {
            Err(_) => {
                conn.close(VarInt::from_u32(CLOSE_BAD_HELLO), b"no hello");
                return Err(DialError::HelloTimeout);
            }
            Ok(r) => r?,
        };
        let version = negotiated_version(&conn);
        let hello = match Hello::accept(&body, &spec.id, &self.config.cluster, version) {
            Ok(h) => h,
            Err(e) => {
                conn.close(VarInt::from_u32(CLOSE_BAD_HELLO), b"bad hello");
                return Err(e);
            }
        };
        if send_hello(self, &conn, version).await.is_err() {
            return Err(DialError::Failed("our hello could not be sent".into()));
        }
        self.negotiated(&spec.id, version);
        Ok((conn, hello.boot))
    }

    /// Hands a received payload to the node, after the fault plan.
    async fn deliver(&self, from: &FacilityId, class: TrafficClass, payload: Vec<u8>) {
        match self.judge(from, &self.id, class) {
            Verdict::Drop => return,
            Verdict::Deliver(d) if !d.is_zero() => tokio::time::sleep(d).await,
            Verdict::Deliver(_) => {}
        }
        metrics::counter!("bulwark_transport_received_total", "class" => class.as_str())
            .increment(1);
        let inbound = Inbound {
            from: from.clone(),
            class,
            payload,
        };
        match class {
            // Control waits: a full node pushes back through QUIC flow control
            // to the sender, whose queue then answers Overloaded.
            TrafficClass::Control => {
                let _ = self.inbound.send(inbound).await;
            }
            TrafficClass::Heartbeat => {
                if self.inbound.try_send(inbound).is_err() {
                    QuicStats::bump(&self.stats.heartbeats_dropped);
                }
            }
        }
    }
}

fn dial_error(e: ConnectionError) -> DialError {
    match e {
        ConnectionError::ConnectionClosed(close) => DialError::Refused {
            code: u64::from(close.error_code),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        ConnectionError::ApplicationClosed(close) => DialError::Closed {
            code: close.error_code.into_inner(),
        },
        other => DialError::Failed(other.to_string()),
    }
}

fn peer_pin(conn: &quinn::Connection) -> Option<Pin> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(Pin::of)
}

/// The PeerLink's task: dial, wait for the hello, pump the queue, and after
/// any failure reconnect with capped exponential backoff and jitter. It only
/// returns if the transport is gone.
async fn run_link(inner: Arc<Inner>, peer_id: FacilityId) {
    let Some(peer) = inner.peers.get(&peer_id) else {
        return;
    };
    let mut queue = peer.rx.lock().await;
    // Whatever ends this incarnation (an error, or the PeerLink actor being
    // killed and this future dropped), the link reads Down until a new hello.
    struct DownOnDrop<'a>(&'a watch::Sender<LinkStatus>);
    impl Drop for DownOnDrop<'_> {
        fn drop(&mut self) {
            self.0.send_replace(LinkStatus::Down);
        }
    }
    let _down = DownOnDrop(&peer.status);
    let label = peer_id.to_string();
    let mut attempt: u32 = 0;
    loop {
        if inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        match inner.dial(&peer.spec).await {
            Ok((conn, boot)) => {
                attempt = 0;
                peer.linked_boot.store(boot, Ordering::Relaxed);
                peer.status.send_replace(LinkStatus::Up);
                metrics::gauge!("bulwark_quic_link_up", "peer" => label.clone()).set(1.0);
                tracing::info!(peer = %peer_id, "link up");
                let why = pump(&inner, peer, &conn, &mut queue).await;
                peer.status.send_replace(LinkStatus::Down);
                metrics::gauge!("bulwark_quic_link_up", "peer" => label.clone()).set(0.0);
                tracing::info!(peer = %peer_id, %why, "link down");
                // Unknown until the next handshake: the peer may come back
                // on an older build (what is sent meanwhile is written for
                // the oldest version this build speaks).
                peer.protocol.store(0, Ordering::Relaxed);
                conn.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"link reset");
                match why {
                    PumpEnd::QueueClosed => return,
                    // The peer is back as a new process: dial it now.
                    PumpEnd::PeerRestarted => continue,
                    PumpEnd::ConnectionLost(_) => {}
                }
            }
            Err(e) => {
                QuicStats::bump(&inner.stats.dial_failures);
                metrics::counter!("bulwark_quic_dial_failures_total", "peer" => label.clone())
                    .increment(1);
                tracing::debug!(peer = %peer_id, error = %e, "dial failed");
            }
        }
        let delay = inner.backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum PumpEnd {
    ConnectionLost(String),
    PeerRestarted,
    QueueClosed,
}

impl std::fmt::Display for PumpEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PumpEnd::ConnectionLost(e) => write!(f, "connection lost: {e}"),
            PumpEnd::PeerRestarted => f.write_str("the peer restarted"),
            PumpEnd::QueueClosed => f.write_str("queue closed"),
        }
    }
}

/// Sends queued payloads over `conn` until it fails.
async fn pump(
    inner: &Inner,
    peer: &Peer,
    conn: &quinn::Connection,
    queue: &mut mpsc::Receiver<Outgoing>,
) -> PumpEnd {
    let mut stream: Option<quinn::SendStream> = None;
    let restarted = || {
        let heard = peer.heard_boot.load(Ordering::Relaxed);
        heard != 0 && heard != peer.linked_boot.load(Ordering::Relaxed)
    };
    loop {
        if restarted() {
            metrics::counter!("bulwark_quic_peer_restarts_total").increment(1);
            return PumpEnd::PeerRestarted;
        }
        let out = tokio::select! {
            biased;
            e = conn.closed() => return PumpEnd::ConnectionLost(e.to_string()),
            () = peer.restarted.notified() => continue,
            out = queue.recv() => match out {
                Some(out) => out,
                None => return PumpEnd::QueueClosed,
            },
        };
        if let Some(at) = out.not_before {
            tokio::time::sleep_until(at).await;
        }
        match out.class {
            TrafficClass::Heartbeat => match conn.send_datagram(out.payload.into()) {
                Ok(()) => {}
                Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                    return PumpEnd::ConnectionLost(e.to_string())
                }
                Err(e) => {
                    QuicStats::bump(&inner.stats.heartbeats_dropped);
                    tracing::debug!(error = %e, "datagram not sent");
                }
            },
            TrafficClass::Control => {
                let frame = match frame::encode(&out.payload) {
                    Ok(f) => f,
                    Err(_) => continue, // checked in send(); unreachable in practice
                };
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => match conn.open_uni().await {
                        Ok(s) => stream.insert(s),
                        Err(e) => return PumpEnd::ConnectionLost(e.to_string()),
                    },
                };
                if let Err(e) = s.write_all(&frame).await {
                    // The payload is lost (as on any lossy link); the next
                    // one goes on a fresh stream.
                    QuicStats::bump(&inner.stats.write_failures);
                    tracing::debug!(error = %e, "control stream write failed");
                    stream = None;
                    if let Some(reason) = conn.close_reason() {
                        return PumpEnd::ConnectionLost(reason.to_string());
                    }
                }
            }
        }
    }
}

/// The accept task: every incoming connection is handled in a task it owns,
/// so stopping this future stops them all.
async fn run_accept(inner: Arc<Inner>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            incoming = inner.endpoint.accept() => {
                let Some(incoming) = incoming else {
                    if inner.closed.load(std::sync::atomic::Ordering::Relaxed) {
                        // Closed on purpose: nothing to restart. Let go of
                        // the endpoint (and its port) and wait to be stopped.
                        drop(conns);
                        drop(inner);
                        std::future::pending::<()>().await;
                    }
                    return;
                };
                conns.spawn(serve_incoming(inner.clone(), incoming));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_incoming(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let conn = match tokio::time::timeout(inner.config.handshake_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            QuicStats::bump(&inner.stats.incoming_failed);
            metrics::counter!("bulwark_quic_incoming_failed_total").increment(1);
            tracing::debug!(error = %e, "incoming handshake failed");
            return;
        }
        Err(_) => {
            QuicStats::bump(&inner.stats.incoming_failed);
            metrics::counter!("bulwark_quic_incoming_failed_total").increment(1);
            return;
        }
    };
    let Some(peer) = peer_pin(&conn).and_then(|pin| inner.by_pin.get(&pin).cloned()) else {
        // The verifier refuses unknown certificates; this guards its absence.
        conn.close(VarInt::from_u32(CLOSE_BAD_HELLO), b"unknown peer");
        return;
    };
    if let Some(old) = inner
        .accepted
        .lock()
        .expect("accepted lock")
        .insert(peer.clone(), conn.clone())
    {
        old.close(VarInt::from_u32(CLOSE_REPLACED), b"replaced");
    }
    let version = negotiated_version(&conn);
    if send_hello(&inner, &conn, version).await.is_err() {
        return;
    }
    // The dialler's hello comes first, on its first stream.
    let hello = async {
        let mut recv = conn.accept_uni().await.map_err(dial_error)?;
        let body = read_frame(&mut recv, HELLO_LEN_MAX)
            .await
            .map_err(|e| DialError::BadHello(e.to_string()))?;
        Hello::accept(&body, &peer, &inner.config.cluster, version)
    };
    let boot = match tokio::time::timeout(inner.config.hello_timeout, hello).await {
        Ok(Ok(h)) => h.boot,
        _ => {
            conn.close(VarInt::from_u32(CLOSE_BAD_HELLO), b"no hello");
            return;
        }
    };
    inner.negotiated(&peer, version);
    if let Some(p) = inner.peers.get(&peer) {
        if boot != 0 && p.heard_boot.swap(boot, Ordering::Relaxed) != boot {
            p.restarted.notify_one();
        }
    }
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_uni() => match stream {
                Ok(recv) => {
                    readers.spawn(read_stream(inner.clone(), peer.clone(), recv));
                }
                Err(_) => break,
            },
            datagram = conn.read_datagram() => match datagram {
                Ok(bytes) if bytes.len() > DATAGRAM_LEN_MAX => {
                    QuicStats::bump(&inner.stats.datagrams_oversized);
                    metrics::counter!("bulwark_quic_frame_errors_total", "reason" => "datagram_too_large")
                        .increment(1);
                }
                Ok(bytes) => inner.deliver(&peer, TrafficClass::Heartbeat, bytes.to_vec()).await,
                Err(_) => break,
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
    let mut accepted = inner.accepted.lock().expect("accepted lock");
    if accepted
        .get(&peer)
        .is_some_and(|c| c.stable_id() == conn.stable_id())
    {
        accepted.remove(&peer);
    }
}

/// The wire version a connection's handshake settled on (its ALPN id).
/// Both ends offer only versions they speak, so an id this build does not
/// know cannot come out of a handshake; [`PROTOCOL_MIN`] stands in.
fn negotiated_version(conn: &quinn::Connection) -> u32 {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol.as_deref().and_then(version_of_alpn))
        .unwrap_or(PROTOCOL_MIN)
}

async fn send_hello(inner: &Inner, conn: &quinn::Connection, version: u32) -> Result<(), ()> {
    let hello = Hello::booted(inner.id.clone(), version, inner.boot, inner.config.cluster);
    let body = codec::encode(&hello).map_err(|_| ())?;
    let frame = frame::encode(&body).map_err(|_| ())?;
    let mut s = conn.open_uni().await.map_err(|_| ())?;
    s.write_all(&frame).await.map_err(|_| ())?;
    s.finish().map_err(|_| ())
}

/// Reads frames from one stream until it ends; a bad frame stops the stream.
async fn read_stream(inner: Arc<Inner>, peer: FacilityId, mut recv: quinn::RecvStream) {
    loop {
        let body = match read_frame_timed(&mut recv, FRAME_LEN_MAX, inner.config.frame_read_timeout)
            .await
        {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(e) => {
                QuicStats::bump(&inner.stats.frame_errors);
                let reason = match e {
                    crate::FrameError::TooLarge { .. } => "too_large",
                    crate::FrameError::Truncated => "truncated",
                    crate::FrameError::TimedOut => "timed_out",
                    _ => "stream",
                };
                metrics::counter!("bulwark_quic_frame_errors_total", "reason" => reason)
                    .increment(1);
                tracing::warn!(%peer, error = %e, "bad frame; stream stopped");
                let _ = recv.stop(VarInt::from_u32(STOP_FRAME_ERROR));
                return;
            }
        };
        inner.deliver(&peer, TrafficClass::Control, body).await;
    }
}

/// Reads one frame; `Ok(None)` when the stream ended cleanly between frames.
async fn read_frame_timed(
    recv: &mut quinn::RecvStream,
    limit: usize,
    body_timeout: Duration,
) -> Result<Option<Vec<u8>>, crate::FrameError> {
    let mut prefix = [0u8; PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(crate::FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(crate::FrameError::Stream(e.to_string()))
        }
    }
    let len = frame::body_len(prefix, limit)?;
    let mut body = vec![0u8; len];
    match tokio::time::timeout(body_timeout, recv.read_exact(&mut body)).await {
        Err(_) => Err(crate::FrameError::TimedOut),
        Ok(Ok(())) => Ok(Some(body)),
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => Err(crate::FrameError::Truncated),
        Ok(Err(quinn::ReadExactError::ReadError(e))) => {
            Err(crate::FrameError::Stream(e.to_string()))
        }
    }
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
) -> Result<Vec<u8>, crate::FrameError> {
    read_frame_timed(recv, limit, Duration::from_secs(60))
        .await?
        .ok_or(crate::FrameError::Truncated)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config(config: &QuicConfig) -> Result<quinn::TransportConfig, QuicError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout)
        .map_err(|e| QuicError::Config(format!("idle_timeout: {e}")))?;
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive))
        .max_concurrent_uni_streams(VarInt::from_u32(config.streams_per_connection_max))
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(Some(64 * 1024))
        .datagram_send_buffer_size(64 * 1024);
    Ok(t)
}

fn client_crypto(
    identity: &Identity,
    verifier: Arc<PinVerifier>,
    protocol_max: u32,
) -> Result<QuicClientConfig, QuicError> {
    let tls = |e: rustls::Error| QuicError::Tls(e.to_string());
    let mut c = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert_der().clone()], identity.key_der())
        .map_err(tls)?;
    c.alpn_protocols = alpn_offer(protocol_max);
    c.enable_early_data = false;
    QuicClientConfig::try_from(c).map_err(|e| QuicError::Tls(e.to_string()))
}

fn server_crypto(
    identity: &Identity,
    verifier: Arc<PinVerifier>,
    protocol_max: u32,
) -> Result<QuicServerConfig, QuicError> {
    let tls = |e: rustls::Error| QuicError::Tls(e.to_string());
    let mut s = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert_der().clone()], identity.key_der())
        .map_err(tls)?;
    // The server's order decides: the newest version both speak.
    s.alpn_protocols = alpn_offer(protocol_max);
    s.max_early_data_size = 0; // no 0-RTT: replayable data has no place here
    QuicServerConfig::try_from(s).map_err(|e| QuicError::Tls(e.to_string()))
}

/// Accepts exactly the pinned certificates, as server and as client verifier.
#[derive(Debug)]
struct PinVerifier {
    pins: Arc<HashMap<Pin, FacilityId>>,
    provider: Arc<CryptoProvider>,
    stats: Arc<QuicStats>,
}

impl PinVerifier {
    fn new(pins: Arc<HashMap<Pin, FacilityId>>, stats: Arc<QuicStats>) -> PinVerifier {
        PinVerifier {
            pins,
            provider: provider(),
            stats,
        }
    }

    fn refuse(&self, side: &'static str, reason: &'static str) -> rustls::Error {
        QuicStats::bump(&self.stats.handshakes_refused);
        metrics::counter!("bulwark_quic_handshake_refused_total", "side" => side, "reason" => reason)
            .increment(1);
        // ApplicationVerificationFailure is sent as access_denied (0x31).
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(id) = self.pins.get(&Pin::of(end_entity)) else {
            return Err(self.refuse("client", "unknown_certificate"));
        };
        // The pin must belong to the facility we meant to dial.
        let meant =
            ServerName::try_from(server_name(id)).map_err(|_| self.refuse("client", "bad_name"))?;
        if &meant != name {
            return Err(self.refuse("client", "wrong_facility"));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ClientCertVerifier for PinVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.pins.contains_key(&Pin::of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(self.refuse("server", "unknown_certificate"))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not accepted".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
