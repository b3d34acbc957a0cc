//! The serde mirror of raft-rs's protobuf types. Raft messages cross the
//! wire (and rest in redb) only in these forms, encoded by bulwark's one
//! codec; protobuf is never parsed from the network (rust-protobuf 2 has
//! RUSTSEC-2024-0437). Conversions from the mirror validate every enum tag
//! and every size; a value that does not convert is the sender's fault.

// raft-rs builds its protobuf structs with `default()` and field writes.
#![allow(clippy::field_reassign_with_default)]

use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry,
    EntryType, HardState, Message, MessageType, Snapshot, SnapshotMetadata,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Entries in one message, at most.
pub const ENTRIES_PER_MESSAGE_MAX: usize = 4096;
/// Members in one configuration, at most.
pub const MEMBERS_MAX: usize = 64;

/// Why a mirror value does not convert into a raft-rs value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// An enum tag outside the known values.
    #[error("unknown {kind} tag {tag}")]
    UnknownTag {
        /// Which enum.
        kind: &'static str,
        /// The tag.
        tag: u8,
    },
    /// A list longer than allowed.
    #[error("{what}: {len} items exceed the limit of {limit}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A message type that only exists inside one node (MsgHup, MsgBeat,
    /// MsgUnreachable, MsgSnapStatus, MsgCheckQuorum) arrived from a peer.
    #[error("local-only message type {0:?} from the network")]
    LocalOnly(MessageType),
    /// A field is inconsistent (for example a conf change payload in a
    /// normal entry).
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Mirror of `EntryType`, with the conf-change payload carried as a mirror
/// too, so no protobuf bytes travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireEntryData {
    /// An application entry (bulwark's own codec inside).
    Normal(Vec<u8>),
    /// A joint-consensus configuration change.
    ConfChangeV2(WireConfChangeV2),
}

/// Mirror of `Entry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// Term of the entry.
    pub term: u64,
    /// Index of the entry.
    pub index: u64,
    /// Payload.
    pub data: WireEntryData,
    /// Opaque context (raft-rs uses it for leader transfer and reads).
    pub context: Vec<u8>,
}

/// Mirror of `ConfChangeSingle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireConfChangeSingle {
    /// 0 AddNode, 1 RemoveNode, 2 AddLearnerNode.
    pub change_type: u8,
    /// The raft id concerned.
    pub node_id: u64,
}

/// Mirror of `ConfChangeV2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireConfChangeV2 {
    /// 0 Auto, 1 Implicit, 2 Explicit.
    pub transition: u8,
    /// The changes.
    pub changes: Vec<WireConfChangeSingle>,
    /// Opaque context.
    pub context: Vec<u8>,
}

/// Mirror of `ConfState`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireConfState {
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners.
    pub learners: Vec<u64>,
    /// Voters of the outgoing configuration (joint consensus).
    pub voters_outgoing: Vec<u64>,
    /// Learners to be.
    pub learners_next: Vec<u64>,
    /// Leave the joint configuration automatically.
    pub auto_leave: bool,
}

/// Mirror of `HardState`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHardState {
    /// Current term.
    pub term: u64,
    /// Vote in the current term (0 = none).
    pub vote: u64,
    /// Highest committed index known.
    pub commit: u64,
}

/// Mirror of `Snapshot` (metadata plus the state machine's bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireSnapshot {
    /// Last index covered.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// Configuration at `index`.
    pub conf_state: WireConfState,
    /// The state machine, encoded by its own `snapshot()`.
    pub data: Vec<u8>,
}

/// Mirror of `Message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireMessage {
    /// `MessageType` tag.
    pub msg_type: u8,
    /// Recipient raft id.
    pub to: u64,
    /// Sender raft id.
    pub from: u64,
    /// Sender's term.
    pub term: u64,
    /// Term of the entry before `entries`.
    pub log_term: u64,
    /// Index of the entry before `entries`.
    pub index: u64,
    /// Entries.
    pub entries: Vec<WireEntry>,
    /// Leader's commit index.
    pub commit: u64,
    /// Term of the commit index.
    pub commit_term: u64,
    /// A snapshot, for MsgSnapshot.
    pub snapshot: Option<WireSnapshot>,
    /// Requested snapshot index.
    pub request_snapshot: u64,
    /// Rejection flag.
    pub reject: bool,
    /// Rejection hint.
    pub reject_hint: u64,
    /// Opaque context.
    pub context: Vec<u8>,
    /// Election priority.
    pub priority: i64,
}

fn message_type(tag: u8) -> Result<MessageType, WireError> {
    use MessageType::*;
    let t = match tag {
        0 => MsgHup,
        1 => MsgBeat,
        2 => MsgPropose,
        3 => MsgAppend,
        4 => MsgAppendResponse,
        5 => MsgRequestVote,
        6 => MsgRequestVoteResponse,
        7 => MsgSnapshot,
        8 => MsgHeartbeat,
        9 => MsgHeartbeatResponse,
        10 => MsgUnreachable,
        11 => MsgSnapStatus,
        12 => MsgCheckQuorum,
        13 => MsgTransferLeader,
        14 => MsgTimeoutNow,
        15 => MsgReadIndex,
        16 => MsgReadIndexResp,
        17 => MsgRequestPreVote,
        18 => MsgRequestPreVoteResponse,
        tag => {
            return Err(WireError::UnknownTag {
                kind: "MessageType",
                tag,
            })
        }
    };
    Ok(t)
}

fn limit<T>(what: &'static str, v: &[T], limit: usize) -> Result<(), WireError> {
    if v.len() > limit {
        return Err(WireError::TooMany {
            what,
            len: v.len(),
            limit,
        });
    }
    Ok(())
}

impl WireConfState {
    /// From raft-rs.
    pub fn from_raft(c: &ConfState) -> Self {
        WireConfState {
            voters: c.voters.clone(),
            learners: c.learners.clone(),
            voters_outgoing: c.voters_outgoing.clone(),
            learners_next: c.learners_next.clone(),
            auto_leave: c.auto_leave,
        }
    }

    /// Into raft-rs, checking sizes.
    pub fn to_raft(&self) -> Result<ConfState, WireError> {
        for (what, v) in [
            ("voters", &self.voters),
            ("learners", &self.learners),
            ("voters_outgoing", &self.voters_outgoing),
            ("learners_next", &self.learners_next),
        ] {
            limit(what, v, MEMBERS_MAX)?;
        }
        let mut c = ConfState::default();
        c.voters = self.voters.clone();
        c.learners = self.learners.clone();
        c.voters_outgoing = self.voters_outgoing.clone();
        c.learners_next = self.learners_next.clone();
        c.auto_leave = self.auto_leave;
        Ok(c)
    }
}

impl WireHardState {
    /// From raft-rs.
    pub fn from_raft(h: &HardState) -> Self {
        WireHardState {
            term: h.term,
            vote: h.vote,
            commit: h.commit,
        }
    }

    /// Into raft-rs.
    pub fn to_raft(self) -> HardState {
        let mut h = HardState::default();
        h.term = self.term;
        h.vote = self.vote;
        h.commit = self.commit;
        h
    }
}

impl WireConfChangeV2 {
    /// From raft-rs.
    pub fn from_raft(cc: &ConfChangeV2) -> Self {
        WireConfChangeV2 {
            transition: cc.transition as u8,
            changes: cc
                .changes
                .iter()
                .map(|c| WireConfChangeSingle {
                    change_type: c.change_type as u8,
                    node_id: c.node_id,
                })
                .collect(),
            context: cc.context.to_vec(),
        }
    }

    /// Into raft-rs, checking tags and sizes.
    pub fn to_raft(&self) -> Result<ConfChangeV2, WireError> {
        limit("changes", &self.changes, MEMBERS_MAX)?;
        let mut cc = ConfChangeV2::default();
        cc.transition = match self.transition {
            0 => ConfChangeTransition::Auto,
            1 => ConfChangeTransition::Implicit,
            2 => ConfChangeTransition::Explicit,
            tag => {
                return Err(WireError::UnknownTag {
                    kind: "ConfChangeTransition",
                    tag,
                })
            }
        };
        let mut changes = Vec::with_capacity(self.changes.len());
        for c in &self.changes {
            let mut s = ConfChangeSingle::default();
            s.change_type = match c.change_type {
                0 => ConfChangeType::AddNode,
                1 => ConfChangeType::RemoveNode,
                2 => ConfChangeType::AddLearnerNode,
                tag => {
                    return Err(WireError::UnknownTag {
                        kind: "ConfChangeType",
                        tag,
                    })
                }
            };
            s.node_id = c.node_id;
            changes.push(s);
        }
        cc.changes = changes.into();
        cc.context = self.context.clone().into();
        Ok(cc)
    }
}

impl WireEntry {
    /// From raft-rs. A conf-change entry's protobuf payload was produced by
    /// this node's raft-rs (from a locally built `ConfChangeV2`), so parsing
    /// it here parses nothing that came from the network.
    pub fn from_raft(e: &Entry) -> Result<Self, WireError> {
        let data = match e.entry_type {
            EntryType::EntryNormal => WireEntryData::Normal(e.data.to_vec()),
            EntryType::EntryConfChangeV2 => {
                let cc: ConfChangeV2 = protobuf::Message::parse_from_bytes(&e.data)
                    .map_err(|err| WireError::Invalid(format!("local conf change: {err}")))?;
                WireEntryData::ConfChangeV2(WireConfChangeV2::from_raft(&cc))
            }
            EntryType::EntryConfChange => {
                return Err(WireError::Invalid(
                    "v1 conf changes are not used; bulwark proposes ConfChangeV2".into(),
                ))
            }
        };
        Ok(WireEntry {
            term: e.term,
            index: e.index,
            data,
            context: e.context.to_vec(),
        })
    }

    /// Into raft-rs; a conf change is re-encoded locally from the mirror.
    pub fn to_raft(&self) -> Result<Entry, WireError> {
        let mut e = Entry::default();
        e.term = self.term;
        e.index = self.index;
        e.context = self.context.clone().into();
        match &self.data {
            WireEntryData::Normal(d) => {
                e.entry_type = EntryType::EntryNormal;
                e.data = d.clone().into();
            }
            WireEntryData::ConfChangeV2(cc) => {
                e.entry_type = EntryType::EntryConfChangeV2;
                let bytes = protobuf::Message::write_to_bytes(&cc.to_raft()?)
                    .map_err(|err| WireError::Invalid(err.to_string()))?;
                e.data = bytes.into();
            }
        }
        Ok(e)
    }
}

impl WireSnapshot {
    /// From raft-rs.
    pub fn from_raft(s: &Snapshot) -> Self {
        let m = s.get_metadata();
        WireSnapshot {
            index: m.index,
            term: m.term,
            conf_state: WireConfState::from_raft(m.get_conf_state()),
            data: s.data.to_vec(),
        }
    }

    /// Into raft-rs.
    pub fn to_raft(&self) -> Result<Snapshot, WireError> {
        let mut m = SnapshotMetadata::default();
        m.index = self.index;
        m.term = self.term;
        m.set_conf_state(self.conf_state.to_raft()?);
        let mut s = Snapshot::default();
        s.set_metadata(m);
        s.data = self.data.clone().into();
        Ok(s)
    }
}

impl WireMessage {
    /// From raft-rs, for sending.
    pub fn from_raft(m: &Message) -> Result<Self, WireError> {
        Ok(WireMessage {
            msg_type: m.msg_type as u8,
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries: m
                .entries
                .iter()
                .map(WireEntry::from_raft)
                .collect::<Result<_, _>>()?,
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot: m.snapshot.as_ref().map(WireSnapshot::from_raft),
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context: m.context.to_vec(),
            priority: m.priority,
        })
    }

    /// Into raft-rs, for a message that arrived from a peer: every tag and
    /// size is checked, and node-local message types are refused.
    pub fn to_raft(&self) -> Result<Message, WireError> {
        let t = message_type(self.msg_type)?;
        if raft::raw_node::is_local_msg(t) {
            return Err(WireError::LocalOnly(t));
        }
        limit("entries", &self.entries, ENTRIES_PER_MESSAGE_MAX)?;
        let mut m = Message::default();
        m.msg_type = t;
        m.to = self.to;
        m.from = self.from;
        m.term = self.term;
        m.log_term = self.log_term;
        m.index = self.index;
        m.entries = self
            .entries
            .iter()
            .map(WireEntry::to_raft)
            .collect::<Result<Vec<_>, _>>()?
            .into();
        m.commit = self.commit;
        m.commit_term = self.commit_term;
        if let Some(s) = &self.snapshot {
            m.set_snapshot(s.to_raft()?);
        }
        m.request_snapshot = self.request_snapshot;
        m.reject = self.reject;
        m.reject_hint = self.reject_hint;
        m.context = self.context.clone().into();
        m.priority = self.priority;
        Ok(m)
    }
}
