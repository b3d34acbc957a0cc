//! The Envelope: what the Router moves between actors and facilities.

use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};

/// Longest actor name in an [`Address`], in bytes.
pub const ACTOR_NAME_LEN_MAX: usize = 64;

/// An actor on a facility, by its registered name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// The facility that hosts the actor.
    pub facility: FacilityId,
    /// The name the actor registered with its Router.
    pub actor: String,
}

impl Address {
    /// `actor` on `facility`.
    pub fn new(facility: FacilityId, actor: impl Into<String>) -> Self {
        Address {
            facility,
            actor: actor.into(),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.facility, self.actor)
    }
}

/// What kind of message an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// No reply expected.
    OneWay,
    /// A reply is expected under this correlation id.
    Request {
        /// Chosen by the requester, unique among its open requests.
        corr: u64,
    },
    /// The reply to the request with this id.
    Response {
        /// The request's correlation id.
        corr: u64,
    },
    /// The request with this id was not delivered.
    Refused {
        /// The request's correlation id.
        corr: u64,
        /// Why.
        reason: Refusal,
    },
}

/// Why a Router refused to deliver a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// No actor of that name is registered there.
    #[error("no such actor")]
    UnknownActor,
    /// The actor's remote mailbox is full: back off.
    #[error("actor overloaded")]
    Overloaded,
    /// The deadline passed before delivery.
    #[error("deadline expired")]
    DeadlineExpired,
}

/// One message with its routing facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The sending facility; checked against the transport's authenticated
    /// peer on arrival.
    pub from: FacilityId,
    /// The destination actor.
    pub to: Address,
    /// Follows one request through every hop.
    pub trace_id: u64,
    /// Wall-clock ms after which the message is dropped, not processed.
    pub deadline_unix_ms: Option<u64>,
    /// One-way, request, response or refusal.
    pub kind: Kind,
    /// The payload, encoded by the actor's own wire types.
    pub body: Vec<u8>,
}

impl Envelope {
    /// True if the deadline is set and `now_unix_ms` is past it.
    pub fn expired(&self, now_unix_ms: u64) -> bool {
        self.deadline_unix_ms.is_some_and(|d| now_unix_ms > d)
    }

    /// The remaining budget, for passing a shrinking deadline along a chain.
    pub fn remaining_ms(&self, now_unix_ms: u64) -> Option<u64> {
        self.deadline_unix_ms.map(|d| d.saturating_sub(now_unix_ms))
    }
}
