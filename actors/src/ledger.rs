//! The hash-chained ledger: which committed entries it holds, how each is
//! linked to the one before, the votes and certificates that make an entry
//! final, and how a ledger file is verified from the public keys alone.
//!
//! - Every Raft entry carries a [`SignedProposal`]: the proposer's
//!   [`EntryPayload`] bytes and its signature over them.
//! - [`admit`] decides, deterministically from the log, whether a committed
//!   entry joins the chain: the proposer's signature (FORGED_SIGNATURE), the
//!   proposal's anchor against the chain (CHAIN_BREAK), its timestamp
//!   against its proposer's previous one (TIME_TRAVEL), then the schedule's
//!   rules (DOUBLE_ASSIGN, ACGME_VIOLATION, other rules). An admitted entry
//!   gets the next height and links to the previous entry's hash. Every
//!   facility computes the same chain, so the chain's head is part of the
//!   replicated state (and of Raft snapshots).
//! - A validator votes over (height, entry hash, previous hash). A
//!   [`Certificate`] of [`quorum`]`(n)` distinct valid votes makes the entry
//!   final.
//!
//! Why the anchor and not "the previous hash" in a proposal: proposals are
//! pipelined, so a proposer cannot know which entry will precede its own.
//! It signs the ledger head it has seen (its anchor); the entry's real
//! predecessor is fixed by the log order. An anchor that is not one of the
//! chain's last [`ANCHOR_WINDOW`] entries breaks the chain.

use std::collections::BTreeSet;

use bulwark_storage::{codec, CodecError};
use bulwark_transport::FacilityId;
use serde::{Deserialize, Serialize};

pub use crate::chain::{Anchor, ChainHead, Hash, LedgerEntry, Link, ANCHOR_WINDOW, GENESIS};
use crate::epoch::{Epochs, ValidatorSet};
use crate::keys::{Domain, KeyError, PublicKeys, Sig};
use crate::schedule::{
    Applied, Command, Op, Outcome, Rejection, Rule, Schedule, ScheduleState, Tables,
};

/// How far a proposer's timestamp may step back from its previous admitted
/// one (its own clock stepping back, or its own proposals reordered).
pub const CLOCK_STEP_BACK_MAX_MS: u64 = 5_000;

/// Largest encoded ledger entry (a proposal is at most
/// the RaftPeer's `entry_len_max`, 192 KiB by default, and
/// never more than this less 16 KiB).
pub const ENTRY_LEN_MAX: usize = 256 * 1024;

/// Largest encoded certificate (7 votes take about 1 KiB).
pub const CERTIFICATE_LEN_MAX: usize = 64 * 1024;

/// Largest number of signers in a validator set.
pub const SIGNERS_MAX: usize = 64;

/// What one entry of the log carries: the command and who proposed it, so
/// the proposer can answer its client when the entry applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryPayload {
    /// The facility that proposed (and signed) it.
    pub proposer: FacilityId,
    /// The proposer's sequence number for this proposal.
    pub seq: u64,
    /// The ledger head the proposer had seen.
    pub anchor: Anchor,
    /// The command.
    pub command: Command,
}

/// A Raft entry's data: the proposer's payload bytes and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedProposal {
    /// An encoded [`EntryPayload`].
    pub body: Vec<u8>,
    /// The proposer's signature over `body` (domain [`Domain::Proposal`]).
    pub sig: Sig,
}

impl LedgerEntry {
    /// The proposal's payload, after checking its signature over the bytes
    /// stored, under the set in force right after its anchor (`epochs`).
    pub fn verified_payload(&self, epochs: &Epochs) -> Result<EntryPayload, String> {
        let signed: SignedProposal = codec::decode_limited(&self.proposal, ENTRY_LEN_MAX)
            .map_err(|e| format!("proposal does not decode: {e}"))?;
        let payload: EntryPayload = codec::decode_limited(&signed.body, ENTRY_LEN_MAX)
            .map_err(|e| format!("payload does not decode: {e}"))?;
        let keys = epochs.at(payload.anchor.height + 1).keys();
        keys.verify(&self.proposer, Domain::Proposal, &signed.body, &signed.sig)
            .map_err(|e| format!("FORGED_SIGNATURE: {e}"))?;
        if payload.proposer != self.proposer || payload.command.at_unix_ms != self.at_unix_ms {
            return Err("entry fields disagree with the signed proposal".into());
        }
        Ok(payload)
    }
}

/// Why a committed entry is not in the chain. [`Reason::code`] names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    /// The proposer's signature does not verify, or the command names
    /// another issuer than the signer.
    ForgedSignature,
    /// The anchor is not a recent entry of the chain.
    ChainBreak,
    /// The timestamp steps back past the proposer's previous one.
    TimeTravel,
    /// The command would put somebody in two places at once.
    DoubleAssign,
    /// The command breaks a duty-hour rule (80 hours, day off in 7, shift
    /// length).
    AcgmeViolation,
    /// Another rule of the schedule.
    Rule(Rule),
}

impl Reason {
    /// The stable name.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::ForgedSignature => "FORGED_SIGNATURE",
            Reason::ChainBreak => "CHAIN_BREAK",
            Reason::TimeTravel => "TIME_TRAVEL",
            Reason::DoubleAssign => "DOUBLE_ASSIGN",
            Reason::AcgmeViolation => "ACGME_VIOLATION",
            Reason::Rule(r) => r.code(),
        }
    }

    /// The reason for a schedule rule.
    pub fn of_rule(rule: Rule) -> Reason {
        match rule {
            Rule::DoubleBooking => Reason::DoubleAssign,
            Rule::DutyHours80 | Rule::DayOffIn7 | Rule::ShiftTooLong => Reason::AcgmeViolation,
            Rule::ChainBreak => Reason::ChainBreak,
            Rule::TimeTravel => Reason::TimeTravel,
            other => Reason::Rule(other),
        }
    }

    /// Whether it breaks the chain or the duty rules (evidence against the
    /// proposer), rather than being an ordinary refused request.
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            Reason::ForgedSignature
                | Reason::ChainBreak
                | Reason::TimeTravel
                | Reason::DoubleAssign
                | Reason::AcgmeViolation
        )
    }
}

/// What [`admit`] decided about one committed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Applied to the schedule and appended to the chain.
    Admitted(Link),
    /// Not in the chain. `shadow` is the link it would have had (so a vote
    /// for it can be recognised as a vote for an invalid entry).
    Rejected {
        /// Why.
        reason: Reason,
        /// Who proposed it (as claimed, for a forged signature).
        proposer: FacilityId,
        /// The entry as it would have been admitted.
        shadow: Option<Link>,
    },
    /// A retry of a command already decided; nothing changed.
    Duplicate,
    /// Not a proposal (the leader's empty entry, a configuration change) or
    /// bytes that do not decode; nothing changed.
    Skipped,
}

/// A [`Verdict`] in the compact form the replica keeps for the entries
/// since the log's compaction point, so that after a restart the
/// validators see them again as they were decided ([`relink`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Recorded {
    /// Admitted at `height`.
    Admitted {
        /// Its height.
        height: u64,
    },
    /// Rejected; it would have had `height`.
    Rejected {
        /// Why.
        reason: Reason,
        /// Who proposed it (as claimed).
        proposer: FacilityId,
        /// The height it would have had.
        height: u64,
    },
    /// A retry of a command already decided.
    Duplicate,
    /// Not a proposal.
    Skipped,
}

impl Verdict {
    /// The verdict's compact record.
    pub fn recorded(&self) -> Recorded {
        match self {
            Verdict::Admitted(l) => Recorded::Admitted {
                height: l.entry.height,
            },
            Verdict::Rejected {
                reason,
                proposer,
                shadow,
            } => Recorded::Rejected {
                reason: reason.clone(),
                proposer: proposer.clone(),
                height: shadow.as_ref().map_or(0, |l| l.entry.height),
            },
            Verdict::Duplicate => Recorded::Duplicate,
            Verdict::Skipped => Recorded::Skipped,
        }
    }
}

/// Rebuilds the payload and verdict of the committed entry at `index`
/// from its bytes and its [`Recorded`] verdict, with `chain` holding the
/// hash before its height. A record whose link cannot be rebuilt (the hash
/// before it left the anchor window) reads as [`Verdict::Skipped`].
pub fn relink(
    chain: &ChainHead,
    index: u64,
    term: u64,
    data: &[u8],
    rec: &Recorded,
) -> (Option<EntryPayload>, Verdict) {
    let payload = codec::decode_limited::<SignedProposal>(data, ENTRY_LEN_MAX)
        .ok()
        .and_then(|s| codec::decode_limited::<EntryPayload>(&s.body, ENTRY_LEN_MAX).ok());
    let link = |height: u64| -> Option<Link> {
        let p = payload.as_ref()?;
        let prev = chain.hash_at(height.checked_sub(1)?)?;
        let entry = LedgerEntry {
            height,
            prev,
            raft_index: index,
            raft_term: term,
            proposer: p.proposer.clone(),
            at_unix_ms: p.command.at_unix_ms,
            proposal: data.to_vec(),
        };
        let (bytes, hash) = entry.encode().ok()?;
        Some(Link { entry, bytes, hash })
    };
    let verdict = match rec {
        Recorded::Admitted { height } => link(*height).map_or(Verdict::Skipped, Verdict::Admitted),
        Recorded::Rejected {
            reason,
            proposer,
            height,
        } => Verdict::Rejected {
            reason: reason.clone(),
            proposer: proposer.clone(),
            shadow: link(*height),
        },
        Recorded::Duplicate => Verdict::Duplicate,
        Recorded::Skipped => Verdict::Skipped,
    };
    (payload, verdict)
}

/// [`admit`]'s result.
#[derive(Debug)]
pub struct Admission {
    /// The decoded payload, if it decoded.
    pub payload: Option<EntryPayload>,
    /// The schedule's answer to the proposer (for a payload that decoded and
    /// was signed by its proposer).
    pub applied: Option<Applied>,
    /// The ledger's verdict.
    pub verdict: Verdict,
    /// For an admitted entry: the epoch of the set that certifies it, and
    /// the next set if this entry began an epoch.
    pub epoch: Option<(u64, Option<ValidatorSet>)>,
}

/// Decides one committed normal entry: checks it, applies it to `state`
/// and extends the chain. Deterministic: the same log gives the same state
/// and the same chain on every facility.
pub fn admit<T: Tables>(
    state: &mut Schedule<T>,
    genesis: &ValidatorSet,
    index: u64,
    term: u64,
    data: &[u8],
) -> Admission {
    let skipped = |payload| Admission {
        payload,
        applied: None,
        verdict: Verdict::Skipped,
        epoch: None,
    };
    if data.is_empty() {
        return skipped(None);
    }
    let Ok(signed) = codec::decode_limited::<SignedProposal>(data, ENTRY_LEN_MAX) else {
        tracing::error!(index, "committed entry does not decode; skipped");
        return skipped(None);
    };
    let Ok(payload) = codec::decode_limited::<EntryPayload>(&signed.body, ENTRY_LEN_MAX) else {
        tracing::error!(index, "committed payload does not decode; skipped");
        return skipped(None);
    };
    let proposer = payload.proposer.clone();
    let entry = LedgerEntry {
        height: state.chain().height() + 1,
        prev: state.chain().hash(),
        raft_index: index,
        raft_term: term,
        proposer: proposer.clone(),
        at_unix_ms: payload.command.at_unix_ms,
        proposal: data.to_vec(),
    };
    let link = |entry: LedgerEntry| -> Option<Link> {
        let (bytes, hash) = entry.encode().ok()?;
        Some(Link { entry, bytes, hash })
    };
    // Signed under the set its proposer saw (the one in force right after
    // its anchor). An anchor older than the previous epoch (two changes
    // while the proposal was in flight) is checked against every set kept,
    // and refused as stale input, not as a lie (below).
    let in_force = state.chain().in_force().clone();
    let certifiers = in_force.current(genesis);
    let signer_set = in_force.for_anchor(genesis, payload.anchor.height);
    let signed_by = |set: &ValidatorSet| {
        set.keys()
            .verify(&proposer, Domain::Proposal, &signed.body, &signed.sig)
            .is_ok()
    };
    let signed_ok = payload.command.issued_by == proposer
        && match signer_set {
            Some(set) => signed_by(set),
            None => {
                signed_by(certifiers)
                    || signed_by(in_force.prior.as_ref().unwrap_or(genesis))
                    || signed_by(genesis)
            }
        };
    if !signed_ok {
        return Admission {
            payload: Some(payload),
            applied: None,
            verdict: Verdict::Rejected {
                reason: Reason::ForgedSignature,
                proposer,
                shadow: link(entry),
            },
            epoch: None,
        };
    }
    let cmd = &payload.command;
    let duplicate = state.is_duplicate(&cmd.key, &cmd.op);
    let mut pre = if duplicate {
        None
    } else if signer_set.is_none() {
        Some(Rejection {
            rule: Rule::InvalidInput,
            detail: format!(
                "anchored at height {}, before the previous validator epoch: propose it again",
                payload.anchor.height
            ),
        })
    } else if let Err(detail) = state.chain().check_anchor(&payload.anchor) {
        Some(Rejection {
            rule: Rule::ChainBreak,
            detail,
        })
    } else {
        state
            .chain()
            .last_at()
            .get(&proposer)
            .filter(|&&last| cmd.at_unix_ms.saturating_add(CLOCK_STEP_BACK_MAX_MS) < last)
            .map(|last| Rejection {
                rule: Rule::TimeTravel,
                detail: format!(
                    "timestamp {} is {} ms before {proposer}'s previous {last}",
                    cmd.at_unix_ms,
                    last - cmd.at_unix_ms
                ),
            })
    };
    // A validator change: checked against the set in force; the next set
    // is recorded before the command applies (its answer names it).
    // Only a command that will apply changes the set: not a retry, not a
    // key used before for another command (KEY_REUSED).
    let mut next = None;
    let fresh_key = !state.key_known(&cmd.key);
    if let (None, true, Op::Validator(change)) = (&pre, fresh_key, &cmd.op) {
        match certifiers.change(change, entry.height) {
            Ok(set) => next = Some(set),
            Err(detail) => {
                pre = Some(Rejection {
                    rule: Rule::InvalidInput,
                    detail,
                })
            }
        }
    }
    let number = certifiers.number;
    if let Some(set) = &next {
        state.set_validators(&in_force.advanced(set.clone()));
    }
    let applied = match pre {
        Some(rejection) => state.reject(index, cmd, rejection),
        None => state.apply(index, cmd),
    };
    let verdict = match &applied {
        Applied::Duplicate { .. } => Verdict::Duplicate,
        Applied::Fresh(Outcome::Rejected(r)) => Verdict::Rejected {
            reason: Reason::of_rule(r.rule),
            proposer: proposer.clone(),
            shadow: link(entry),
        },
        Applied::Fresh(Outcome::Applied(_)) => match link(entry) {
            Some(l) => {
                state.push_link(&l);
                Verdict::Admitted(l)
            }
            None => {
                // An entry that fits a Raft entry always encodes; if not, the
                // chain would differ between facilities.
                panic!("ledger entry at raft index {index} does not encode")
            }
        },
    };
    let epoch = matches!(verdict, Verdict::Admitted(_)).then_some((number, next));
    Admission {
        payload: Some(payload),
        applied: Some(applied),
        verdict,
        epoch,
    }
}

/// The votes needed to make an entry final among `n` signers:
/// ⌈(n+f+1)/2⌉ with f = ⌊(n−1)/3⌋ (2 of 3, 3 of 4, 5 of 7).
pub fn quorum(n: usize) -> usize {
    if n == 0 {
        return 1;
    }
    let f = (n - 1) / 3;
    if crate::plant::active(crate::plant::Bug::QuorumMinusOne) {
        return (n + f + 1).div_ceil(2) - 1;
    }
    (n + f + 1).div_ceil(2)
}

/// What a validator signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteBody {
    /// The signer.
    pub signer: FacilityId,
    /// The entry's height.
    pub height: u64,
    /// The entry's hash.
    pub hash: Hash,
    /// The previous entry's hash.
    pub prev: Hash,
}

/// A signed vote: the body's bytes as signed, and the signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// An encoded [`VoteBody`].
    pub body: Vec<u8>,
    /// The signer's signature over `body` (domain [`Domain::Vote`]).
    pub sig: Sig,
}

/// Largest encoded vote body.
pub const VOTE_BODY_LEN_MAX: usize = 256;

impl Vote {
    /// Signs `body` with `ring` (whose facility must be `body.signer`).
    pub fn sign(ring: &crate::keys::Keyring, body: &VoteBody) -> Result<Vote, CodecError> {
        let bytes = codec::encode(body)?;
        let sig = ring.sign(Domain::Vote, &bytes);
        Ok(Vote { body: bytes, sig })
    }

    /// The body, decoded (signature not checked).
    pub fn decode(&self) -> Result<VoteBody, CodecError> {
        codec::decode_limited(&self.body, VOTE_BODY_LEN_MAX)
    }

    /// The body, after checking the signature over the bytes received.
    pub fn verify(&self, keys: &PublicKeys) -> Result<VoteBody, CertError> {
        let body = self
            .decode()
            .map_err(|e| CertError::Malformed(e.to_string()))?;
        keys.verify(&body.signer, Domain::Vote, &self.body, &self.sig)?;
        Ok(body)
    }
}

/// A quorum of votes for one (height, hash, prev).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Height.
    pub height: u64,
    /// Entry hash.
    pub hash: Hash,
    /// Previous hash.
    pub prev: Hash,
    /// The votes, one per signer, ordered by signer.
    pub votes: Vec<Vote>,
}

/// Why a certificate (or a vote in it) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A vote's body does not decode.
    #[error("malformed vote: {0}")]
    Malformed(String),
    /// A signature is bad or its signer unknown.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A vote is for other (height, hash, prev) than the certificate.
    #[error("a vote by {0} is for another entry")]
    Mismatch(FacilityId),
    /// One signer counted twice.
    #[error("{0} signed twice")]
    DuplicateSigner(FacilityId),
    /// Fewer distinct valid signers than the quorum.
    #[error("{have} distinct signers, quorum is {need}")]
    NoQuorum {
        /// Distinct valid signers.
        have: usize,
        /// Needed.
        need: usize,
    },
}

impl Certificate {
    /// Checks every vote (signer known and counted once, same entry), the
    /// quorum of `keys.len()`, and the signatures over the bytes in the
    /// certificate in one ed25519 batch verification.
    ///
    /// Batch verification accepts what `verify_strict` accepts and, with
    /// small probability, a signature its own signer crafted with a torsion
    /// component: it cannot be forged by anyone else. The rule is the same
    /// everywhere a certificate is checked (forming it, catch-up, `ledger
    /// verify`), and deterministic (the batch's weights come from its
    /// contents), so a certificate valid at one facility is valid at all.
    pub fn verify(&self, keys: &PublicKeys) -> Result<(), CertError> {
        self.verify_with(keys, false)
    }

    /// [`Certificate::verify`]; with `planted_bug_count_duplicates`, a test
    /// variant that counts a signer twice (it must be caught by the tests
    /// that guard the checker).
    #[doc(hidden)]
    pub fn verify_with(
        &self,
        keys: &PublicKeys,
        planted_bug_count_duplicates: bool,
    ) -> Result<(), CertError> {
        if self.votes.len() > SIGNERS_MAX {
            return Err(CertError::Malformed(format!(
                "{} votes exceed {SIGNERS_MAX}",
                self.votes.len()
            )));
        }
        let mut signers = BTreeSet::new();
        let mut counted = 0;
        let mut bodies = Vec::with_capacity(self.votes.len());
        for v in &self.votes {
            let body = v
                .decode()
                .map_err(|e| CertError::Malformed(e.to_string()))?;
            if keys.get(&body.signer).is_none() {
                return Err(KeyError::UnknownSigner(body.signer).into());
            }
            if (body.height, body.hash, body.prev) != (self.height, self.hash, self.prev) {
                return Err(CertError::Mismatch(body.signer));
            }
            if !signers.insert(body.signer.clone()) && !planted_bug_count_duplicates {
                return Err(CertError::DuplicateSigner(body.signer));
            }
            counted += 1;
            bodies.push(body);
        }
        // One ed25519 batch verification over the votes, in their stored
        // order (its weights derive from them, so the verdict is the same on
        // every facility). If it fails, name a vote that fails on its own.
        let items: Vec<(&FacilityId, &[u8], &Sig)> = bodies
            .iter()
            .zip(&self.votes)
            .map(|(b, v)| (&b.signer, v.body.as_slice(), &v.sig))
            .collect();
        if !items.is_empty() && keys.verify_batch(Domain::Vote, &items).is_err() {
            let culprit = items
                .iter()
                .find(|(s, b, sig)| keys.verify(s, Domain::Vote, b, sig).is_err())
                .map_or_else(|| bodies[0].signer.clone(), |(s, _, _)| (*s).clone());
            return Err(KeyError::BadSignature(culprit).into());
        }
        let have = if planted_bug_count_duplicates {
            counted
        } else {
            signers.len()
        };
        let need = quorum(keys.len());
        if have < need {
            return Err(CertError::NoQuorum { have, need });
        }
        Ok(())
    }
}

/// A final entry as the ledger table stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalEntry {
    /// The encoded [`LedgerEntry`] (its hash is the certificate's).
    pub entry: Vec<u8>,
    /// Its certificate.
    pub cert: Certificate,
}

/// Why a final entry does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("height {height}: {reason}")]
pub struct LedgerFault {
    /// The first bad height.
    pub height: u64,
    /// What is wrong there.
    pub reason: String,
}

/// Checks one final entry against its expected height and previous hash:
/// the entry decodes, its hash is the certificate's, its height and link
/// are right, its proposal is signed by its proposer, and the certificate
/// holds a quorum of valid votes. Returns the entry, its hash and its
/// verified payload.
pub fn verify_final(
    fin: &FinalEntry,
    height: u64,
    prev: &Hash,
    epochs: &Epochs,
) -> Result<(LedgerEntry, Hash, EntryPayload), LedgerFault> {
    let fault = |reason: String| LedgerFault { height, reason };
    let entry: LedgerEntry = codec::decode_limited(&fin.entry, ENTRY_LEN_MAX)
        .map_err(|e| fault(format!("entry does not decode: {e}")))?;
    let hash = *blake3::hash(&fin.entry).as_bytes();
    if entry.height != height || fin.cert.height != height {
        return Err(fault(format!(
            "entry says height {}, certificate {}",
            entry.height, fin.cert.height
        )));
    }
    if entry.prev != *prev {
        return Err(fault(
            "CHAIN_BREAK: previous hash is not the entry before".into(),
        ));
    }
    if fin.cert.hash != hash || fin.cert.prev != entry.prev {
        return Err(fault("certificate is for another entry".into()));
    }
    let set = epochs.at(height);
    fin.cert
        .verify(set.keys())
        .map_err(|e| fault(format!("certificate (epoch {}): {e}", set.number)))?;
    let payload = entry.verified_payload(epochs).map_err(fault)?;
    Ok((entry, hash, payload))
}

/// The epoch a final entry at `height` with `payload` begins, if it is a
/// validator change: the set after it, recorded in `epochs`. A change
/// the set in force does not allow is a fault (it was never admissible).
pub fn note_epoch(
    epochs: &mut Epochs,
    height: u64,
    payload: &EntryPayload,
) -> Result<Option<std::sync::Arc<ValidatorSet>>, LedgerFault> {
    let Op::Validator(change) = &payload.command.op else {
        return Ok(None);
    };
    let fault = |reason: String| LedgerFault { height, reason };
    let next = epochs
        .at(height)
        .change(change, height)
        .map_err(|e| fault(format!("validator change not allowed: {e}")))?;
    let next = std::sync::Arc::new(next);
    epochs.insert(next.clone()).map_err(fault)?;
    Ok(Some(next))
}

/// What [`verify_chain`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Final entries checked.
    pub entries: u64,
    /// The head's hash.
    pub head: Hash,
    /// The validator epochs met, genesis first.
    pub epochs: Vec<std::sync::Arc<ValidatorSet>>,
}

/// Checks a whole chain of final entries, from height 1, in order: every
/// link, certificate and proposal signature, and the schedule's rules by
/// replaying every command (each must apply; an idempotency-key repeat is
/// not a violation). Stops at the first bad height.
pub fn verify_chain(
    finals: impl IntoIterator<Item = (u64, Result<FinalEntry, String>)>,
    genesis: &ValidatorSet,
) -> Result<VerifyReport, LedgerFault> {
    let mut epochs = Epochs::new(genesis.clone());
    let mut prev = GENESIS;
    let mut expected = 1u64;
    let mut replay = ScheduleState::new();
    for (height, fin) in finals {
        if height != expected {
            return Err(LedgerFault {
                height: expected,
                reason: format!("missing (next stored height is {height})"),
            });
        }
        let fin = fin.map_err(|reason| LedgerFault { height, reason })?;
        let (entry, hash, payload) = verify_final(&fin, height, &prev, &epochs)?;
        note_epoch(&mut epochs, height, &payload)?;
        match replay.apply(entry.raft_index, &payload.command) {
            Applied::Fresh(Outcome::Rejected(r)) if r.rule != Rule::KeyReused => {
                return Err(LedgerFault {
                    height,
                    reason: format!("{}: {}", Reason::of_rule(r.rule).code(), r.detail),
                })
            }
            _ => {}
        }
        prev = hash;
        expected += 1;
    }
    Ok(VerifyReport {
        entries: expected - 1,
        head: prev,
        epochs: epochs.iter().cloned().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keyring;
    use crate::schedule::{
        Block, BlockId, Command, IdempotencyKey, Op, Person, PersonId, Pool, Role,
    };

    fn ids() -> Vec<FacilityId> {
        ["alpha", "bravo", "charlie"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    struct Chain {
        rings: std::collections::BTreeMap<FacilityId, Keyring>,
        state: ScheduleState,
        index: u64,
    }

    impl Chain {
        fn new() -> Chain {
            Chain {
                rings: Keyring::deterministic(&ids(), 3),
                state: ScheduleState::new(),
                index: 0,
            }
        }

        /// Proposes `op` as facility `by` at `at`, signed by `signer`, with
        /// `anchor` (the current head if `None`), and admits it.
        fn admit_as(
            &mut self,
            by: usize,
            signer: usize,
            at: u64,
            anchor: Option<Anchor>,
            op: Op,
        ) -> Verdict {
            self.index += 1;
            let payload = EntryPayload {
                proposer: ids()[by].clone(),
                seq: self.index,
                anchor: anchor.unwrap_or_else(|| self.state.chain().anchor()),
                command: Command {
                    key: IdempotencyKey([self.index as u8; 16]),
                    issued_by: ids()[by].clone(),
                    at_unix_ms: at,
                    hlc: crate::hlc::Hlc::ZERO,
                    op,
                },
            };
            let body = codec::encode(&payload).unwrap();
            let sig = self.rings[&ids()[signer]].sign(Domain::Proposal, &body);
            let data = codec::encode(&SignedProposal { body, sig }).unwrap();
            let keys = self.rings[&ids()[0]].public().clone();
            let genesis = crate::epoch::ValidatorSet::genesis(keys);
            admit(&mut self.state, &genesis, self.index, 1, &data).verdict
        }

        fn admit(&mut self, op: Op) -> Verdict {
            self.admit_as(0, 0, 10_000 + self.index, None, op)
        }
    }

    fn reason(v: &Verdict) -> &'static str {
        match v {
            Verdict::Admitted(_) => "ADMITTED",
            Verdict::Rejected { reason, .. } => reason.code(),
            Verdict::Duplicate => "DUPLICATE",
            Verdict::Skipped => "SKIPPED",
        }
    }

    fn person(p: &str) -> Op {
        Op::AddPerson(Person {
            id: p.parse::<PersonId>().unwrap(),
            name: p.into(),
            role: Role::Faculty,
        })
    }

    fn block(b: &str, day: u32, start_min: u16, duration_min: u16) -> Op {
        Op::AddBlock(Block {
            id: b.parse::<BlockId>().unwrap(),
            day,
            start_min,
            duration_min,
            pool: Pool::Icu,
            required: 1,
        })
    }

    fn assign(p: &str, b: &str) -> Op {
        Op::Assign {
            person: p.parse().unwrap(),
            block: b.parse().unwrap(),
        }
    }

    #[test]
    fn admitted_entries_link_by_hash_and_heights_count_admissions_only() {
        let mut c = Chain::new();
        let Verdict::Admitted(a) = c.admit(person("p0")) else {
            panic!()
        };
        assert_eq!((a.entry.height, a.entry.prev), (1, GENESIS));
        // A refused command gets no height.
        assert_eq!(reason(&c.admit(assign("p0", "nope"))), "UNKNOWN_BLOCK");
        let Verdict::Admitted(b) = c.admit(block("b0", 0, 0, 60)) else {
            panic!()
        };
        assert_eq!((b.entry.height, b.entry.prev), (2, a.hash));
        assert_eq!(c.state.chain().hash(), b.hash);
    }

    #[test]
    fn each_check_refuses_with_its_reason() {
        let mut c = Chain::new();
        c.admit(person("p0"));
        c.admit(block("b0", 0, 8 * 60, 8 * 60));
        c.admit(block("x0", 0, 8 * 60, 8 * 60));
        c.admit(block("l0", 1, 0, 16 * 60));
        c.admit(block("l1", 1, 16 * 60, 16 * 60));
        c.admit(assign("p0", "b0"));
        // Signed by bravo's key while naming alpha: forged.
        let v = c.admit_as(0, 1, 20_000, None, person("p9"));
        assert_eq!(reason(&v), "FORGED_SIGNATURE");
        // An anchor that is not in the chain.
        let bad = Anchor {
            height: 1,
            hash: [7; 32],
        };
        assert_eq!(
            reason(&c.admit_as(0, 0, 20_000, Some(bad), person("p8"))),
            "CHAIN_BREAK"
        );
        let future = Anchor {
            height: 99,
            hash: [0; 32],
        };
        assert_eq!(
            reason(&c.admit_as(0, 0, 20_000, Some(future), person("p8"))),
            "CHAIN_BREAK"
        );
        // Alpha's clock steps back more than the allowance: time travel.
        assert_eq!(
            reason(&c.admit_as(0, 0, 1, None, person("p7"))),
            "TIME_TRAVEL"
        );
        // Bravo's first proposal may be earlier than alpha's: per proposer.
        assert_eq!(reason(&c.admit_as(1, 1, 1, None, person("p6"))), "ADMITTED");
        assert_eq!(reason(&c.admit(assign("p0", "x0"))), "DOUBLE_ASSIGN");
        // 32 hours of continuous duty: over 24 + 4.
        c.admit(assign("p0", "l0"));
        assert_eq!(reason(&c.admit(assign("p0", "l1"))), "ACGME_VIOLATION");
        assert!(c.state.check_invariants().is_ok());
    }

    #[test]
    fn a_refused_proposal_has_the_shadow_it_would_have_had() {
        let mut c = Chain::new();
        c.admit(person("p0"));
        let head = c.state.chain().anchor();
        match c.admit(assign("p0", "nope")) {
            Verdict::Rejected {
                shadow: Some(s), ..
            } => {
                assert_eq!((s.entry.height, s.entry.prev), (head.height + 1, head.hash));
                assert_eq!(c.state.chain().anchor(), head, "the chain did not move");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retry_is_a_duplicate_whatever_its_anchor() {
        let mut c = Chain::new();
        c.admit(person("p0"));
        for k in 0..3 {
            c.admit(block(&format!("b{k}"), k, 0, 60));
        }
        // The first command's key and op again, with an anchor that would
        // break the chain: the retry is answered, not judged again.
        c.index = 0;
        let bad = Anchor {
            height: 1,
            hash: [7; 32],
        };
        let v = c.admit_as(0, 0, 10_001, Some(bad), person("p0"));
        assert_eq!(reason(&v), "DUPLICATE");
    }

    #[test]
    fn quorum_sizes() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(7), 5);
        assert_eq!(quorum(10), 7);
    }
}
