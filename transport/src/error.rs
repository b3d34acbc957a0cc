use crate::FacilityId;
use thiserror::Error;

/// Why a payload was not queued; the payload comes back to the caller.
#[derive(Debug, Error)]
#[error("send to {to} refused: {kind}")]
pub struct SendError {
    /// The intended peer.
    pub to: FacilityId,
    /// The cause.
    pub kind: SendErrorKind,
    /// The payload, unsent.
    pub payload: Vec<u8>,
}

/// The cause of a [`SendError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// Not a configured peer.
    #[error("unknown peer")]
    UnknownPeer,
    /// The peer's outgoing queue is full: back off and retry later.
    #[error("outgoing queue full")]
    Overloaded,
    /// Larger than the class allows (frame or datagram limit).
    #[error("payload too large")]
    TooLarge,
    /// The transport has shut down.
    #[error("transport closed")]
    Closed,
}

/// Why a frame could not be read; the stream carrying it is closed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// Limit in force.
        limit: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream failed.
    #[error("stream error: {0}")]
    Stream(String),
    /// Reading the frame took longer than allowed.
    #[error("frame read timed out")]
    TimedOut,
}
