//! The hash chain's data: entries, links and the head the replicated state
//! keeps. Types only, importing no other concern: the schedule's tables
//! store the head, and the ledger decides what extends it.

use std::collections::{BTreeMap, VecDeque};

use bulwark_storage::{codec, CodecError};
use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};

/// A blake3 hash.
pub type Hash = [u8; 32];

/// The previous hash of the first entry.
pub const GENESIS: Hash = [0; 32];

/// How many recent chain entries a proposal may anchor to.
pub const ANCHOR_WINDOW: u64 = 1024;

/// The ledger position a proposer has seen; signed with its proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Anchor {
    /// Height (0: the empty chain).
    pub height: u64,
    /// Hash of the entry at `height` ([`GENESIS`] at 0).
    pub hash: Hash,
}

/// One entry of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Position in the chain, from 1.
    pub height: u64,
    /// Hash of the entry at `height - 1` ([`GENESIS`] for the first).
    pub prev: Hash,
    /// The Raft log index it was committed at.
    pub raft_index: u64,
    /// The Raft term it was proposed in.
    pub raft_term: u64,
    /// Who proposed and signed it.
    pub proposer: FacilityId,
    /// The proposer's timestamp.
    pub at_unix_ms: u64,
    /// The encoded signed proposal, exactly as committed.
    pub proposal: Vec<u8>,
}

impl LedgerEntry {
    /// The entry's bytes and their blake3 hash.
    pub fn encode(&self) -> Result<(Vec<u8>, Hash), CodecError> {
        let bytes = codec::encode(self)?;
        let hash = *blake3::hash(&bytes).as_bytes();
        Ok((bytes, hash))
    }
}

/// A chain entry as the ledger's `admit` made it: the entry, its bytes and its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The entry.
    pub entry: LedgerEntry,
    /// Its encoding (what the hash is over).
    pub bytes: Vec<u8>,
    /// blake3 of `bytes`.
    pub hash: Hash,
}

/// The chain's head as the replicated state knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChainHead {
    height: u64,
    /// Hashes of the last entries, oldest first; the last is the head.
    recent: VecDeque<Hash>,
    /// Each proposer's latest admitted timestamp.
    last_at: BTreeMap<FacilityId, u64>,
    /// The validator sets in force (see `crate::epoch`).
    #[serde(default)]
    in_force: crate::epoch::InForce,
}

impl ChainHead {
    /// The head's height (0: empty).
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The head's hash ([`GENESIS`] when empty).
    pub fn hash(&self) -> Hash {
        self.recent.back().copied().unwrap_or(GENESIS)
    }

    /// The recent hashes, oldest first, with their heights.
    pub(crate) fn recent(&self) -> impl Iterator<Item = (u64, Hash)> + '_ {
        let first = self.height + 1 - self.recent.len() as u64;
        self.recent
            .iter()
            .enumerate()
            .map(move |(i, h)| (first + i as u64, *h))
    }

    /// Each proposer's latest admitted timestamp.
    pub(crate) fn last_at(&self) -> &BTreeMap<FacilityId, u64> {
        &self.last_at
    }

    /// A head from its stored parts (checked with [`ChainHead::check`]).
    pub(crate) fn from_parts(
        height: u64,
        recent: VecDeque<Hash>,
        last_at: BTreeMap<FacilityId, u64>,
        in_force: crate::epoch::InForce,
    ) -> ChainHead {
        ChainHead {
            height,
            recent,
            last_at,
            in_force,
        }
    }

    /// The validator sets in force (None in them: the genesis set).
    pub fn in_force(&self) -> &crate::epoch::InForce {
        &self.in_force
    }

    pub(crate) fn set_in_force(&mut self, v: crate::epoch::InForce) {
        self.in_force = v;
    }

    /// The anchor a proposer signs now.
    pub fn anchor(&self) -> Anchor {
        Anchor {
            height: self.height,
            hash: self.hash(),
        }
    }

    /// The hash at `height`, if it is among the recent ones.
    pub(crate) fn hash_at(&self, height: u64) -> Option<Hash> {
        if height == 0 {
            return (self.height < ANCHOR_WINDOW).then_some(GENESIS);
        }
        let back = self.height.checked_sub(height)?;
        let pos = (self.recent.len() as u64).checked_sub(back + 1)?;
        self.recent.get(pos as usize).copied()
    }

    pub(crate) fn check_anchor(&self, a: &Anchor) -> Result<(), String> {
        match self.hash_at(a.height) {
            Some(h) if h == a.hash => Ok(()),
            Some(_) => Err(format!("anchor at height {} has another hash", a.height)),
            None => Err(format!(
                "anchor height {} is not among the chain's last {ANCHOR_WINDOW} (head {})",
                a.height, self.height
            )),
        }
    }

    pub(crate) fn push(&mut self, link: &Link) {
        self.height = link.entry.height;
        self.recent.push_back(link.hash);
        while self.recent.len() as u64 > ANCHOR_WINDOW {
            self.recent.pop_front();
        }
        let last = self.last_at.entry(link.entry.proposer.clone()).or_default();
        *last = (*last).max(link.entry.at_unix_ms);
    }

    /// Checks the head's own consistency (after a restore).
    pub fn check(&self) -> Result<(), String> {
        if self.recent.len() as u64 > ANCHOR_WINDOW || self.recent.len() as u64 > self.height {
            return Err("chain head keeps more hashes than entries".into());
        }
        if self.height > 0 && self.recent.is_empty() {
            return Err("chain head at height > 0 without a hash".into());
        }
        Ok(())
    }
}
