//! What BftValidators say to each other.

use serde::{Deserialize, Serialize};

use crate::ledger::{FinalEntry, Vote};

/// Most votes in one message.
pub const VOTES_PER_MSG_MAX: usize = 4096;

/// Most final entries asked for or sent in one message.
pub const FINALS_PER_MSG_MAX: u32 = 256;

/// A validator's message to a peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BftWire {
    /// Signed votes: the sender's own, or another signer's relayed because
    /// they conflict with the sender's entry.
    Votes(Vec<Vote>),
    /// The sender's final height (a heartbeat; a peer that is behind asks
    /// for the entries it lacks).
    Head {
        /// Final height.
        height: u64,
    },
    /// Asks for final entries from `from` on.
    Fetch {
        /// First height wanted.
        from: u64,
        /// How many at most.
        max: u32,
    },
    /// Final entries with their certificates, in height order.
    Finals(Vec<FinalEntry>),
    /// Asks for the (not yet final) entry at `height`: a facility that
    /// missed it (its replica was restored from a snapshot) cannot vote
    /// for it otherwise.
    FetchEntry {
        /// The height.
        height: u64,
    },
    /// An encoded ledger entry, answering [`BftWire::FetchEntry`]. Taken
    /// only if its hash is the previous hash of the receiver's next entry,
    /// or the hash f+1 signers voted for.
    Entry(Vec<u8>),
    /// [`BftWire::Head`] with the newest ledger height whose entry the
    /// sender's replica applied since it started: a peer's vote is missed
    /// only near heights it holds, so a facility catching up after a
    /// restart is not taken for one withholding votes. Wire version 6 and
    /// later; a peer linked at version 5 is sent [`BftWire::Head`].
    /// (New variants go last: a variant's place is its encoding.)
    HeadOf {
        /// Final height.
        height: u64,
        /// Newest height held.
        holds: u64,
    },
}

/// The wire version that first knows [`BftWire::HeadOf`].
pub const HEAD_OF_SINCE: u32 = 6;

impl BftWire {
    /// This message as a peer speaking wire `version` reads it: a
    /// [`BftWire::HeadOf`] becomes a [`BftWire::Head`] before version 6.
    pub fn for_version(self, version: u32) -> BftWire {
        match self {
            BftWire::HeadOf { height, .. } if version < HEAD_OF_SINCE => BftWire::Head { height },
            other => other,
        }
    }
}
