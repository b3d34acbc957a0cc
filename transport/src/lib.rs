//! bulwark-transport: how facilities reach each other.
//!
//! A [`Transport`] moves opaque payloads (already encoded by the one codec)
//! from this facility to a named peer, in one of two [`TrafficClass`]es, and
//! hands what arrives to a bounded channel of [`Inbound`] values. The sender's
//! identity in an [`Inbound`] is the one the transport authenticated (the
//! pinned TLS certificate for QUIC, the link for SimNet), never a claim made
//! inside the payload.
//!
//! Two implementations share the trait and obey the same [`FaultPlan`]:
//! - [`quic::QuicTransport`]: quinn + rustls, TLS 1.3, mutual authentication
//!   against pinned certificates;
//! - [`simnet::SimNet`]: in memory, on tokio's (virtual) clock, with per-link
//!   latency, loss and partitions set at run time, or network physics
//!   ([`simnet::Physics`]: distance, bandwidth, hops, queuing under measured
//!   load) with a per-payload latency breakdown in its trace.
//!
//! Backpressure: `send` never blocks and never queues without bound. A full
//! per-peer queue answers [`SendErrorKind::Overloaded`] and hands the payload
//! back; the inbound channel is bounded and a full one drops (and counts) what
//! arrives.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use bulwark_transport::{simnet::SimNet, FacilityId, TrafficClass, Transport};
//! let net = SimNet::new(7);
//! let a: FacilityId = "alpha".parse().unwrap();
//! let b: FacilityId = "bravo".parse().unwrap();
//! let (ta, _ra) = net.join(a.clone(), 64);
//! let (_tb, mut rb) = net.join(b.clone(), 64);
//! ta.send(&b, TrafficClass::Control, b"hello".to_vec()).unwrap();
//! let got = rb.recv().await.unwrap();
//! assert_eq!((got.from, got.payload), (a, b"hello".to_vec()));
//! # }
//! ```

mod error;
pub mod fault;
pub mod frame;
mod id;
pub mod identity;
pub mod quic;
pub mod simnet;

pub use error::{FrameError, SendError, SendErrorKind};
pub use fault::{FaultPlan, FaultPlanError, FaultRule, RuleId, Selector, Verdict};
pub use id::{FacilityId, InvalidFacilityId};

use std::future::Future;
use std::pin::Pin;

/// Which path a payload takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TrafficClass {
    /// Reliable, ordered per message: Raft, BFT votes, requests and replies.
    Control,
    /// Unreliable and never queued behind bulk data (QUIC datagrams):
    /// heartbeats. Must fit one datagram ([`DATAGRAM_LEN_MAX`]).
    Heartbeat,
}

impl TrafficClass {
    /// Label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Control => "control",
            TrafficClass::Heartbeat => "heartbeat",
        }
    }
}

/// Largest heartbeat-class payload; QUIC datagrams fit about 1,200 bytes on
/// any path, so this stays below that.
pub const DATAGRAM_LEN_MAX: usize = 1_100;

/// One payload that arrived from an authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    /// The peer as the transport authenticated it.
    pub from: FacilityId,
    /// The path it came by.
    pub class: TrafficClass,
    /// The bytes, still encoded.
    pub payload: Vec<u8>,
}

/// Whether a link to a peer is usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkStatus {
    /// The peer answered our hello; sends go out.
    Up,
    /// Not (yet) confirmed by the peer; sends are queued, bounded.
    Down,
}

/// A boxed future, for the link drivers that the runtime supervises.
pub type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Moves payloads between facilities. See the crate docs.
pub trait Transport: Send + Sync + 'static {
    /// This facility.
    fn local_id(&self) -> &FacilityId;
    /// Every configured peer, in a stable order.
    fn peers(&self) -> Vec<FacilityId>;
    /// Queues `payload` for `to`. Never blocks; a refusal returns the payload.
    fn send(&self, to: &FacilityId, class: TrafficClass, payload: Vec<u8>)
        -> Result<(), SendError>;
    /// The link's state as last observed.
    fn link_status(&self, peer: &FacilityId) -> LinkStatus;
    /// The wire version to write for `peer`: the one its link negotiated,
    /// the oldest this build speaks before any did. A message that only a
    /// newer version knows is sent only where this is high enough.
    fn peer_protocol(&self, _peer: &FacilityId) -> u32 {
        quic::PROTOCOL_VERSION
    }
    /// The faults this transport obeys; shared, changeable at run time.
    fn faults(&self) -> &FaultPlan;
    /// The task that owns the connection to `peer` (dial, hello, pump,
    /// reconnect with backoff). The runtime runs it inside that peer's
    /// PeerLink actor. `None` when the implementation needs no driver.
    fn link_driver(&self, peer: &FacilityId) -> Option<BoxFuture>;
    /// The task that accepts and reads incoming connections. `None` when the
    /// implementation needs none.
    fn accept_driver(&self) -> Option<BoxFuture>;
}
