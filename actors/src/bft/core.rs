//! The BftValidator's core: votes, certificates, evidence. No tokio, no
//! redb: the actor feeds applied entries, peer messages and ticks in, and
//! carries out the [`Output`]s in order (a vote is persisted before it is
//! sent).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bulwark_storage::codec;
use bulwark_transport::FacilityId;

use super::evidence::{
    trust_score, Drill, Evidence, Kind, Patterns, DRILLS_KEPT, DRILL_SLACK_MS, TRUST_WINDOW_MS,
};
use super::wire::{BftWire, FINALS_PER_MSG_MAX, VOTES_PER_MSG_MAX};
use super::{Behaviour, BftConfig};
use crate::epoch::{Epochs, ValidatorSet};
use crate::keys::{Domain, Keyring, PublicKeys};
use crate::ledger::{
    quorum, verify_final, Certificate, FinalEntry, Hash, LedgerEntry, Link, Reason, Verdict, Vote,
    VoteBody, ENTRY_LEN_MAX, GENESIS,
};
use crate::raft::AppliedEntry;
use crate::schedule::Op;

/// Something the actor must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Persist these own votes and the entries they are for, durably,
    /// before any later output is carried out.
    PersistVotes(Vec<(Link, Vote)>),
    /// Send to a peer.
    Send {
        /// The peer.
        to: FacilityId,
        /// The message.
        msg: BftWire,
    },
    /// These entries became final, in height order: append to the ledger.
    Final(Vec<(u64, FinalEntry)>),
    /// New evidence: persist it.
    Evidence(Evidence),
    /// A drill was declared: persist every drill kept.
    Drills(Vec<Drill>),
    /// A validator epoch became known: persist it.
    Epoch(std::sync::Arc<ValidatorSet>),
    /// Send `to` the stored final entries from height `from`.
    ServeFinals {
        /// The peer.
        to: FacilityId,
        /// First height.
        from: u64,
        /// How many at most.
        max: u32,
    },
}

/// What the core restores from on start.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// The last final height and its hash.
    pub final_head: (u64, Hash),
    /// Entries voted for, not final, with this validator's vote.
    pub pending: Vec<(Link, Vote)>,
    /// Evidence recorded so far.
    pub evidence: Vec<Evidence>,
    /// Drills declared, oldest first.
    pub drills: Vec<Drill>,
    /// Validator epochs after genesis known so far.
    pub epochs: Vec<ValidatorSet>,
}

/// A validator's view, for status queries.
#[derive(Debug, Clone, PartialEq)]
pub struct BftStatus {
    /// This facility.
    pub facility: FacilityId,
    /// Last final height.
    pub final_height: u64,
    /// Its hash.
    pub final_hash: Hash,
    /// Heights voted for, not yet final.
    pub pending: usize,
    /// The validator set's size.
    pub signers: usize,
    /// Votes needed.
    pub quorum: usize,
    /// Evidence recorded.
    pub evidence: usize,
    /// The highest raft index seen.
    pub cursor: u64,
    /// Each peer's final height, as it last announced it.
    pub peer_heights: BTreeMap<FacilityId, u64>,
}

/// Votes seen for one height, by signer: the hash voted for and the vote.
type VotesBySigner = BTreeMap<FacilityId, (Hash, Vote)>;

struct Pending {
    link: Link,
    my_vote: Option<Vote>,
    /// Whether this validator's history knows the set that certifies it
    /// (not after a snapshot skipped an epoch: final entries fetched from
    /// peers fill the history in, and this height is finalized that way).
    epoch_ok: bool,
    /// The epoch the replica said certifies it (None: not said).
    epoch: Option<u64>,
}

/// The core. See the module docs.
pub struct Core {
    ring: Keyring,
    config: BftConfig,
    behaviour: Behaviour,
    /// Every facility of any known epoch but this one.
    peers: Vec<FacilityId>,
    /// Facilities outside every known set that announced their head (one
    /// joining): they hear this validator's head too, so they can fetch.
    listeners: BTreeSet<FacilityId>,
    epochs: Epochs,
    final_height: u64,
    final_hash: Hash,
    /// Recent final heights: hash and every vote seen for the height.
    recent_finals: BTreeMap<u64, (Hash, VotesBySigner)>,
    pending: BTreeMap<u64, Pending>,
    /// Votes for heights above the final one, by signer.
    votes: BTreeMap<u64, VotesBySigner>,
    my_votes: BTreeMap<u64, Hash>,
    shadows: BTreeMap<Hash, (u64, &'static str)>,
    shadow_order: VecDeque<Hash>,
    relayed: BTreeSet<(u64, FacilityId, Hash)>,
    /// Votes taken in without a signature check yet, with who delivered
    /// them: checked in one batch when they complete a certificate.
    unverified: BTreeMap<(u64, FacilityId), FacilityId>,
    stale: BTreeMap<(FacilityId, u64), u32>,
    /// Each peer's announced final height.
    peer_final: BTreeMap<FacilityId, u64>,
    /// When final entries were last served to each peer (ticks).
    served: BTreeMap<FacilityId, u64>,
    /// When the final height last moved (ticks).
    advanced_tick: u64,
    evidence: Vec<Evidence>,
    evidence_seen: BTreeSet<(FacilityId, &'static str, u64, Hash)>,
    /// Drills declared (ledger entries), oldest first.
    drills: Vec<Drill>,
    /// Final entries from peers refused (failed verification), ever.
    finals_refused: u64,
    /// Peers not asked for final entries until this tick (their breaker
    /// is open).
    shunned: BTreeMap<FacilityId, u64>,
    patterns: Patterns,
    /// Per peer: the first final height of its current streak without a
    /// vote, and the streak's length.
    missed: BTreeMap<FacilityId, (u64, u64)>,
    /// Per peer: the tick its current streak without a vote began.
    streak_tick: BTreeMap<FacilityId, u64>,
    heard: BTreeMap<FacilityId, u64>,
    /// The newest height each peer announced it holds an entry for
    /// ([`BftWire::HeadOf`]; absent for a peer that sent only heads).
    peer_holds: BTreeMap<FacilityId, u64>,
    /// The newest height of an entry this validator's replica applied
    /// since it started (announced in [`BftWire::HeadOf`]).
    holds: u64,
    fetch_tick: u64,
    cursor: u64,
    ticks: u64,
    outbox: Vec<(Option<FacilityId>, Vote)>,
    persist: Vec<(Link, Vote)>,
    out: Vec<Output>,
    /// The liar's own final votes, to replay.
    replay: VecDeque<Vote>,
}

const SHADOWS_KEPT: usize = 4096;

/// Most non-validators whose heads are answered (the cluster's facilities
/// are at most a few dozen; the transport authenticated each).
const LISTENERS_MAX: usize = 256;

impl Core {
    /// A core for `ring`'s facility, resuming from `restored`.
    /// Switches how this validator behaves from now on (chaos: a facility
    /// that starts lying, or stops); answers the behaviour before.
    pub fn set_behaviour(&mut self, behaviour: Behaviour) -> Behaviour {
        std::mem::replace(&mut self.behaviour, behaviour)
    }

    /// How this validator behaves.
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
    }

    pub fn new(ring: Keyring, config: BftConfig, behaviour: Behaviour, restored: Restored) -> Core {
        let mut epochs = Epochs::new(ValidatorSet::genesis(ring.public().clone()));
        for e in restored.epochs {
            if let Err(e) = epochs.insert(std::sync::Arc::new(e)) {
                tracing::error!(error = %e, "a stored validator epoch disagrees; ignored");
            }
        }
        let mut core = Core {
            ring,
            config,
            behaviour,
            peers: Vec::new(),
            listeners: BTreeSet::new(),
            epochs,
            final_height: restored.final_head.0,
            final_hash: restored.final_head.1,
            recent_finals: BTreeMap::new(),
            pending: BTreeMap::new(),
            votes: BTreeMap::new(),
            my_votes: BTreeMap::new(),
            shadows: BTreeMap::new(),
            shadow_order: VecDeque::new(),
            relayed: BTreeSet::new(),
            unverified: BTreeMap::new(),
            stale: BTreeMap::new(),
            peer_final: BTreeMap::new(),
            served: BTreeMap::new(),
            advanced_tick: 0,
            evidence: Vec::new(),
            evidence_seen: BTreeSet::new(),
            drills: restored.drills,
            finals_refused: 0,
            shunned: BTreeMap::new(),
            patterns: Patterns::default(),
            missed: BTreeMap::new(),
            streak_tick: BTreeMap::new(),
            heard: BTreeMap::new(),
            peer_holds: BTreeMap::new(),
            holds: 0,
            fetch_tick: 0,
            cursor: 0,
            ticks: 0,
            outbox: Vec::new(),
            persist: Vec::new(),
            out: Vec::new(),
            replay: VecDeque::new(),
        };
        // Validator changes among the restored pending entries name their
        // next sets (the row that records learned epochs may have missed
        // one a refused write took with it).
        let mut changes: Vec<(u64, Vec<u8>)> = restored
            .pending
            .iter()
            .map(|(l, _)| (l.entry.height, l.entry.proposal.clone()))
            .collect();
        changes.sort_by_key(|(h, _)| *h);
        for (h, proposal) in changes {
            let Some(change) = validator_change(&proposal) else {
                continue;
            };
            if let Ok(next) = core.epochs.at(h).change(&change, h) {
                let _ = core.epochs.insert(std::sync::Arc::new(next));
            }
        }
        core.peers = core.others();
        for e in restored.evidence {
            if core.evidence_seen.insert(e.dedup_key()) {
                core.evidence.push(e);
            }
        }
        for (link, vote) in restored.pending {
            let h = link.entry.height;
            if h <= core.final_height {
                continue;
            }
            core.cursor = core.cursor.max(link.entry.raft_index);
            core.my_votes.insert(h, link.hash);
            core.votes
                .entry(h)
                .or_default()
                .insert(core.ring.me().clone(), (link.hash, vote.clone()));
            core.pending.insert(
                h,
                Pending {
                    link,
                    my_vote: Some(vote),
                    epoch_ok: true,
                    epoch: None,
                },
            );
        }
        core
    }

    /// Every facility of any known epoch but this one.
    fn others(&self) -> Vec<FacilityId> {
        self.epochs
            .everyone()
            .into_iter()
            .filter(|f| f != self.ring.me())
            .collect()
    }

    /// The keys that certify `height`.
    fn keys_at(&self, height: u64) -> &PublicKeys {
        self.epochs.at(height).keys()
    }

    /// The votes that make `height` final.
    fn quorum_at(&self, height: u64) -> usize {
        quorum(self.keys_at(height).len())
    }

    /// Whether this validator knows for sure which set certifies `h`, so
    /// that a vote for it that does not verify proves a lie.
    fn judged(&self, h: u64) -> bool {
        h <= self.final_height + 1
            || self
                .pending
                .get(&h)
                .or_else(|| self.pending.get(&(h - 1)))
                .is_some_and(|p| p.epoch_ok)
    }

    /// Records a validator epoch learned from an entry; persists it.
    fn learn_epoch(&mut self, set: std::sync::Arc<ValidatorSet>) {
        match self.epochs.insert(set.clone()) {
            Ok(true) => {
                tracing::info!(
                    epoch = set.number,
                    from_height = set.from_height,
                    signers = set.keys().len(),
                    "validator epoch"
                );
                self.peers = self.others();
                self.out.push(Output::Epoch(set));
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "validator epoch refused"),
        }
    }

    /// Pending entries whose set this history did not know when they came
    /// (a snapshot skipped an epoch): once the history names the epoch the
    /// replica said, this validator votes for them too.
    fn recheck_epochs(&mut self) -> bool {
        let unsure: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !p.epoch_ok)
            .map(|(h, _)| *h)
            .collect();
        let mut any = false;
        for h in unsure {
            let number = self.epochs.at(h).number;
            // Said by the replica: that epoch. Fetched from a peer: once
            // the height before it is sure.
            let sure_before = h <= self.final_height + 1
                || self.pending.get(&(h - 1)).is_some_and(|p| p.epoch_ok);
            let Some(p) = self.pending.get_mut(&h) else {
                continue;
            };
            let sure = match p.epoch {
                Some(n) => n == number,
                None => sure_before,
            };
            if !sure {
                continue;
            }
            p.epoch_ok = true;
            any = true;
            let link = p.link.clone();
            let voted_other = self.my_votes.get(&h).is_some_and(|x| *x != link.hash);
            if p.my_vote.is_some() || voted_other {
                continue;
            }
            if let Some(v) = self.sign_vote(&link) {
                self.cast_own(&link, &v);
                if let Some(p) = self.pending.get_mut(&h) {
                    p.my_vote = Some(v);
                }
            }
        }
        any
    }

    /// The validator epochs known, genesis first.
    pub fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    /// Takes what the actor must do now, in order.
    pub fn drain(&mut self) -> Vec<Output> {
        self.flush_votes();
        std::mem::take(&mut self.out)
    }

    fn flush_votes(&mut self) {
        if !self.persist.is_empty() {
            let p = std::mem::take(&mut self.persist);
            self.out.push(Output::PersistVotes(p));
        }
        if self.outbox.is_empty() {
            return;
        }
        let mut per: BTreeMap<FacilityId, Vec<Vote>> = BTreeMap::new();
        for (to, vote) in std::mem::take(&mut self.outbox) {
            match to {
                Some(t) => per.entry(t).or_default().push(vote),
                None => {
                    for p in &self.peers {
                        per.entry(p.clone()).or_default().push(vote.clone());
                    }
                }
            }
        }
        for (to, votes) in per {
            for chunk in votes.chunks(VOTES_PER_MSG_MAX) {
                self.out.push(Output::Send {
                    to: to.clone(),
                    msg: BftWire::Votes(chunk.to_vec()),
                });
            }
        }
    }

    /// The highest raft index seen (applied entries at or below it are not
    /// new).
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The status.
    pub fn status(&self) -> BftStatus {
        BftStatus {
            facility: self.ring.me().clone(),
            final_height: self.final_height,
            final_hash: self.final_hash,
            pending: self.pending.len(),
            signers: self.keys_at(self.final_height + 1).len(),
            quorum: self.quorum_at(self.final_height + 1),
            evidence: self.evidence.len(),
            cursor: self.cursor,
            peer_heights: self.peer_final.clone(),
        }
    }

    /// Every piece of evidence recorded.
    pub fn evidence(&self) -> &[Evidence] {
        &self.evidence
    }

    /// Every facility's trust score at `now_unix_ms`.
    pub fn trust(&self, now_unix_ms: u64) -> BTreeMap<FacilityId, f64> {
        self.epochs
            .everyone()
            .into_iter()
            .map(|f| {
                let t = trust_score(&f, &self.evidence, &self.drills, now_unix_ms);
                (f, t)
            })
            .collect()
    }

    /// The last final height.
    pub fn final_height(&self) -> u64 {
        self.final_height
    }

    /// Final entries from peers refused so far (a peer that serves bad
    /// ones).
    pub fn finals_refused(&self) -> u64 {
        self.finals_refused
    }

    /// The fetch just asked of `peer` was not sent (its breaker is open):
    /// it is not asked for a head period, and the peer furthest ahead of
    /// the others is asked at once instead.
    pub fn fetch_refused(&mut self, peer: &FacilityId) {
        let until = self.ticks + self.config.head_ticks;
        self.shunned.insert(peer.clone(), until);
        let ticks = self.ticks;
        self.shunned.retain(|_, t| *t > ticks);
        let other = self
            .peer_final
            .iter()
            .filter(|(p, h)| **h > self.final_height && !self.shunned.contains_key(*p))
            .max_by_key(|(p, h)| (**h, std::cmp::Reverse((*p).clone())))
            .map(|(p, _)| p.clone());
        match other {
            Some(to) => {
                self.fetch_tick = self.ticks + self.config.head_ticks;
                self.out.push(Output::Send {
                    to,
                    msg: BftWire::Fetch {
                        from: self.final_height + 1,
                        max: self.config.fetch_max.min(FINALS_PER_MSG_MAX),
                    },
                });
            }
            None => self.fetch_tick = self.ticks,
        }
    }

    /// The drills declared, oldest first.
    pub fn drills(&self) -> &[Drill] {
        &self.drills
    }

    /// Whether a drill produced `e`.
    pub fn is_drill(&self, e: &Evidence) -> bool {
        self.drills.iter().any(|d| d.covers(e))
    }

    /// A drill admitted to the ledger at `raft_index`.
    fn on_drill(
        &mut self,
        facility: &FacilityId,
        from: u64,
        for_ms: u64,
        raft_index: u64,
        now_unix_ms: u64,
    ) {
        if self.drills.iter().any(|d| d.raft_index == raft_index) {
            return;
        }
        // Drills whose window left the trust window cover nothing that
        // still counts: they go first; the count is a memory bound only.
        let horizon = now_unix_ms.saturating_sub(TRUST_WINDOW_MS + DRILL_SLACK_MS);
        self.drills.retain(|d| d.until_unix_ms >= horizon);
        tracing::warn!(%facility, for_ms, "drill declared: evidence against it costs no trust meanwhile");
        self.drills.push(Drill {
            facility: facility.clone(),
            from_unix_ms: from,
            until_unix_ms: from.saturating_add(for_ms),
            raft_index,
        });
        if self.drills.len() > DRILLS_KEPT {
            self.drills.remove(0);
        }
        self.out.push(Output::Drills(self.drills.clone()));
    }

    fn record(&mut self, offender: FacilityId, kind: Kind, now_unix_ms: u64) {
        if offender == *self.ring.me() {
            return;
        }
        let e = Evidence {
            offender,
            at_unix_ms: now_unix_ms,
            kind,
        };
        if !self.evidence_seen.insert(e.dedup_key()) {
            return;
        }
        metrics::counter!("bulwark_bft_evidence_total", "kind" => e.kind.code()).increment(1);
        tracing::warn!(offender = %e.offender, kind = e.kind.code(), "evidence recorded");
        if self.evidence.len() >= self.config.evidence_kept {
            self.evidence.remove(0);
        }
        self.evidence.push(e.clone());
        self.out.push(Output::Evidence(e));
    }

    /// One entry the facility's RaftPeer applied.
    pub fn on_applied(&mut self, e: &AppliedEntry, now_unix_ms: u64) {
        if e.index <= self.cursor {
            return;
        }
        self.cursor = e.index;
        let assigned = e
            .shown
            .payload
            .as_ref()
            .map(|p| assigned_people(&p.command.op))
            .unwrap_or_default();
        match &e.shown.verdict {
            Verdict::Admitted(link) => {
                if let Some(Op::Drill { facility, for_ms }) =
                    e.shown.payload.as_ref().map(|p| &p.command.op)
                {
                    self.on_drill(
                        facility,
                        link.entry.at_unix_ms,
                        *for_ms,
                        e.index,
                        now_unix_ms,
                    );
                }
                self.patterns_note(&link.entry.proposer, false, &assigned, now_unix_ms);
                let ahead = link.entry.at_unix_ms.saturating_sub(now_unix_ms);
                if ahead > self.config.clock_skew_max_ms {
                    self.record(
                        link.entry.proposer.clone(),
                        Kind::FutureTimestamp {
                            raft_index: e.index,
                            ahead_ms: ahead,
                        },
                        now_unix_ms,
                    );
                }
                // The set that certifies it, as the replica admitted it;
                // and the next one, if it began an epoch.
                let epoch_ok = match &e.shown.epoch {
                    Some((number, next)) => {
                        let ok = self.epochs.at(link.entry.height).number == *number;
                        if let (true, Some(next)) = (ok, next) {
                            self.learn_epoch(std::sync::Arc::new(next.clone()));
                        }
                        ok
                    }
                    None => true,
                };
                let epoch = e.shown.epoch.as_ref().map(|(n, _)| *n);
                // What the replica applied, in order (an entry fetched
                // past a gap does not count: the ones before it are not
                // held).
                self.holds = self.holds.max(link.entry.height);
                self.on_admitted(link.clone(), epoch_ok, epoch, now_unix_ms);
            }
            Verdict::Rejected {
                reason,
                proposer,
                shadow,
            } => {
                let proof = shadow
                    .as_ref()
                    .map(|s| s.entry.proposal.clone())
                    .unwrap_or_default();
                match reason {
                    Reason::ForgedSignature => {
                        // Not signed by its claimed proposer: the term's
                        // leader put it in the log. Unless it verifies
                        // under the set in force after its anchor as this
                        // validator's full epoch history has it: the
                        // replica keeps two sets, so a proposal that saw
                        // two changes while in flight (a key rotated, its
                        // proposer removed and added back) is refused
                        // there without being a lie.
                        let signed = shadow.as_ref().is_some_and(|s| {
                            s.entry
                                .verified_payload(&self.epochs)
                                .is_ok_and(|p| p.command.issued_by == p.proposer)
                        });
                        if signed {
                            metrics::counter!("bulwark_bft_stale_signatures_total").increment(1);
                            tracing::info!(
                                raft_index = e.index,
                                %proposer,
                                "a proposal signed under an older validator set: refused, no evidence"
                            );
                            return;
                        }
                        if let Some(leader) = &e.leader {
                            self.record(
                                leader.clone(),
                                Kind::BadProposal {
                                    reason: reason.code().into(),
                                    raft_index: e.index,
                                    proposal: proof,
                                },
                                now_unix_ms,
                            );
                        }
                        return;
                    }
                    Reason::TimeTravel => self.record(
                        proposer.clone(),
                        Kind::TimestampManipulation {
                            raft_index: e.index,
                        },
                        now_unix_ms,
                    ),
                    r if r.is_violation() => self.record(
                        proposer.clone(),
                        Kind::BadProposal {
                            reason: r.code().into(),
                            raft_index: e.index,
                            proposal: proof,
                        },
                        now_unix_ms,
                    ),
                    _ => {}
                }
                let violation = matches!(reason, Reason::DoubleAssign | Reason::AcgmeViolation);
                self.patterns_note(proposer, violation, &assigned, now_unix_ms);
                if let Some(s) = shadow {
                    if reason.is_violation() {
                        self.note_shadow(s, reason.code());
                    }
                }
            }
            Verdict::Duplicate | Verdict::Skipped => {}
        }
    }

    fn patterns_note(
        &mut self,
        proposer: &FacilityId,
        violation: bool,
        assigned: &[String],
        now_unix_ms: u64,
    ) {
        for kind in self.patterns.note(proposer, violation, assigned) {
            self.record(proposer.clone(), kind, now_unix_ms);
        }
    }

    fn note_shadow(&mut self, s: &Link, code: &'static str) {
        self.shadows.insert(s.hash, (s.entry.height, code));
        self.shadow_order.push_back(s.hash);
        while self.shadow_order.len() > SHADOWS_KEPT {
            if let Some(old) = self.shadow_order.pop_front() {
                self.shadows.remove(&old);
            }
        }
        if self.behaviour == Behaviour::VoteForInvalid {
            let body = VoteBody {
                signer: self.ring.me().clone(),
                height: s.entry.height,
                hash: s.hash,
                prev: s.entry.prev,
            };
            if let Ok(v) = Vote::sign(&self.ring, &body) {
                self.my_votes.insert(s.entry.height, s.hash);
                self.outbox.push((None, v));
            }
        }
    }

    fn on_admitted(&mut self, link: Link, epoch_ok: bool, epoch: Option<u64>, now_unix_ms: u64) {
        let h = link.entry.height;
        if h <= self.final_height {
            return;
        }
        if let Some(p) = self.pending.get(&h) {
            if p.link.hash != link.hash {
                metrics::counter!("bulwark_bft_divergence_total").increment(1);
                tracing::error!(
                    height = h,
                    "replica gave another entry for a height already voted"
                );
            }
            return;
        }
        // CHAIN_BREAK: the entry must link to the one before it, as far as
        // this validator knows it.
        let known_prev = if h == self.final_height + 1 {
            Some(self.final_hash)
        } else {
            self.pending.get(&(h - 1)).map(|p| p.link.hash)
        };
        if known_prev.is_some_and(|p| p != link.entry.prev) {
            metrics::counter!("bulwark_bft_divergence_total").increment(1);
            tracing::error!(
                height = h,
                "CHAIN_BREAK: entry does not link to the ledger head; no vote"
            );
            return;
        }
        let my_vote = match self.my_votes.get(&h) {
            Some(hash) if *hash != link.hash => None, // never sign two entries at one height
            _ if !epoch_ok => None,
            _ => self.sign_vote(&link),
        };
        if let Some(v) = &my_vote {
            self.cast_own(&link, v);
        }
        self.pending.insert(
            h,
            Pending {
                link: link.clone(),
                my_vote,
                epoch_ok,
                epoch,
            },
        );
        // Votes that arrived before the entry: check them against it.
        let early: Vec<(FacilityId, Hash, Vote)> = self
            .votes
            .get(&h)
            .map(|m| {
                m.iter()
                    .filter(|(_, (hash, _))| *hash != link.hash)
                    .map(|(s, (hash, v))| (s.clone(), *hash, v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (signer, hash, vote) in early {
            self.conflicting(None, &signer, h, &hash, &vote, now_unix_ms);
        }
        self.try_finalize(now_unix_ms);
    }

    /// Records this validator's own vote `v` for `link` (persisted before
    /// it is sent) and sends it as its behaviour says.
    fn cast_own(&mut self, link: &Link, v: &Vote) {
        let h = link.entry.height;
        self.my_votes.insert(h, link.hash);
        self.persist.push((link.clone(), v.clone()));
        self.votes
            .entry(h)
            .or_default()
            .insert(self.ring.me().clone(), (link.hash, v.clone()));
        self.send_own(h, v, link);
    }

    /// Signs with this facility's key in the set that certifies the
    /// entry's height; None if it is no validator there or holds no such
    /// key (a rotation it was not given the key for).
    fn sign_vote(&self, link: &Link) -> Option<Vote> {
        let body = VoteBody {
            signer: self.ring.me().clone(),
            height: link.entry.height,
            hash: link.hash,
            prev: link.entry.prev,
        };
        let key = self.keys_at(body.height).get(self.ring.me())?;
        let bytes = codec::encode(&body).ok()?;
        if crate::plant::active(crate::plant::Bug::VoteUnderFirstKey) {
            let sig = self.ring.sign(Domain::Vote, &bytes);
            return Some(Vote { body: bytes, sig });
        }
        let sig = self.ring.sign_as(key, Domain::Vote, &bytes)?;
        Some(Vote { body: bytes, sig })
    }

    /// Sends this validator's vote the way its behaviour says.
    fn send_own(&mut self, h: u64, v: &Vote, link: &Link) {
        match self.behaviour {
            Behaviour::Honest | Behaviour::ReplayStale | Behaviour::VoteForInvalid => {
                self.outbox.push((None, v.clone()))
            }
            Behaviour::Withhold => {}
            Behaviour::Equivocate => {
                let mut evil = *blake3::hash(&link.hash).as_bytes();
                evil[0] ^= 0xff;
                let body = VoteBody {
                    signer: self.ring.me().clone(),
                    height: h,
                    hash: evil,
                    prev: link.entry.prev,
                };
                let Ok(other) = Vote::sign(&self.ring, &body) else {
                    return;
                };
                let half = self.peers.len() / 2;
                for (i, p) in self.peers.clone().into_iter().enumerate() {
                    let vote = if i < half { v.clone() } else { other.clone() };
                    self.outbox.push((Some(p), vote));
                }
            }
            Behaviour::ForgeVotes => {
                self.outbox.push((None, v.clone()));
                // A vote in a victim's name, signed with the liar's own key.
                if let Some(victim) = self.peers.first().cloned() {
                    let body = VoteBody {
                        signer: victim.clone(),
                        height: h,
                        hash: link.hash,
                        prev: link.entry.prev,
                    };
                    if let Ok(bytes) = codec::encode(&body) {
                        let sig = self.ring.sign(Domain::Vote, &bytes);
                        let forged = Vote { body: bytes, sig };
                        for p in self.peers.clone() {
                            if p != victim {
                                self.outbox.push((Some(p), forged.clone()));
                            }
                        }
                    }
                }
            }
        }
    }

    /// A message from a peer's validator. `from` is the authenticated
    /// sender.
    pub fn on_wire(&mut self, from: &FacilityId, msg: BftWire, now_unix_ms: u64) {
        // Any facility of the cluster (the transport authenticated it) may
        // announce its head and fetch final entries: one that joins is no
        // validator yet. Votes and entries come from validators only.
        // Final entries and entries are verified before they are taken.
        let open = !matches!(msg, BftWire::Votes(_));
        if !open && !self.peers.contains(from) {
            metrics::counter!("bulwark_bft_unknown_peer_total").increment(1);
            return;
        }
        match msg {
            BftWire::Votes(votes) => self.on_votes(from, votes, now_unix_ms),
            BftWire::HeadOf { height, holds } => {
                self.on_wire(from, BftWire::Head { height }, now_unix_ms);
                self.peer_holds.insert(from.clone(), holds);
            }
            BftWire::Head { height } => {
                // A peer that announces only its head (held back to
                // version 5 again) is judged by its head from now on.
                self.peer_holds.remove(from);
                if !self.peers.contains(from) && self.listeners.len() < LISTENERS_MAX {
                    self.listeners.insert(from.clone());
                }
                self.heard.insert(from.clone(), self.ticks);
                self.peer_final.insert(from.clone(), height);
                let shunned = self.shunned.get(from).is_some_and(|t| *t > self.ticks);
                if height > self.final_height && self.ticks >= self.fetch_tick && !shunned {
                    // Behind a peer and not finalizing by ourselves (no entry
                    // to finalize next, far behind, or no progress for a
                    // while: the peers stopped re-sending votes for what
                    // they finalized): ask.
                    let stuck = !self.pending.contains_key(&(self.final_height + 1))
                        || height >= self.final_height + self.config.fetch_lag_heights
                        || self.ticks >= self.advanced_tick + self.config.head_ticks;
                    if stuck {
                        self.fetch_tick = self.ticks + self.config.head_ticks;
                        self.out.push(Output::Send {
                            to: from.clone(),
                            msg: BftWire::Fetch {
                                from: self.final_height + 1,
                                max: self.config.fetch_max.min(FINALS_PER_MSG_MAX),
                            },
                        });
                    }
                }
            }
            BftWire::Fetch { from: h, max } => {
                if h <= self.final_height && h > 0 {
                    self.out.push(Output::ServeFinals {
                        to: from.clone(),
                        from: h,
                        max: max.min(FINALS_PER_MSG_MAX),
                    });
                }
            }
            BftWire::Finals(finals) => self.on_finals(from, finals, now_unix_ms),
            BftWire::FetchEntry { height } => {
                if let Some(p) = self.pending.get(&height) {
                    self.out.push(Output::Send {
                        to: from.clone(),
                        msg: BftWire::Entry(p.link.bytes.clone()),
                    });
                }
            }
            BftWire::Entry(bytes) => self.on_entry(bytes, now_unix_ms),
        }
    }

    fn on_votes(&mut self, from: &FacilityId, votes: Vec<Vote>, now_unix_ms: u64) {
        if votes.len() > VOTES_PER_MSG_MAX {
            metrics::counter!("bulwark_bft_oversized_total").increment(1);
            return;
        }
        for v in votes {
            match v.decode() {
                Ok(b) if self.keys_at(b.height).get(&b.signer).is_some() => {
                    self.accept_vote(from, b, v, now_unix_ms)
                }
                _ => metrics::counter!("bulwark_bft_malformed_total").increment(1),
            }
        }
        self.try_finalize(now_unix_ms);
    }

    /// `verify_strict` over the bytes received.
    fn strict(&self, body: &VoteBody, vote: &Vote) -> bool {
        metrics::counter!("bulwark_bft_votes_verified_total", "how" => "strict").increment(1);
        self.keys_at(body.height)
            .verify(&body.signer, Domain::Vote, &vote.body, &vote.sig)
            .is_ok()
    }

    fn bad_signature(&mut self, from: &FacilityId, body: &VoteBody, vote: Vote, now_unix_ms: u64) {
        if !self.judged(body.height) {
            // Checked against a set this validator is not sure of (an
            // epoch it has not seen yet): dropped, proves nothing.
            metrics::counter!("bulwark_bft_votes_unjudged_total").increment(1);
            return;
        }
        self.record(
            from.clone(),
            Kind::BadVoteSignature {
                claimed: body.signer.clone(),
                vote,
            },
            now_unix_ms,
        );
    }

    /// Takes a vote in. The common one (first from its signer, for the entry
    /// this replica has) waits unverified until a quorum is there, and the
    /// certificate's votes are checked in one batch. Anything else (a
    /// conflict, a late vote, an entry not known yet) is checked at once.
    fn accept_vote(&mut self, from: &FacilityId, body: VoteBody, vote: Vote, now_unix_ms: u64) {
        let h = body.height;
        if h <= self.final_height {
            if !self.strict(&body, &vote) {
                self.bad_signature(from, &body, vote, now_unix_ms);
                return;
            }
            self.on_late_vote(from, body, vote, now_unix_ms);
            return;
        }
        if h > self.final_height + self.config.pending_heights_max {
            return;
        }
        let ours = self.pending.get(&h).map(|p| p.link.hash);
        let existing = self
            .votes
            .get(&h)
            .and_then(|m| m.get(&body.signer))
            .cloned();
        let Some((old_hash, old)) = existing else {
            if ours == Some(body.hash) {
                self.votes
                    .entry(h)
                    .or_default()
                    .insert(body.signer.clone(), (body.hash, vote));
                self.unverified.insert((h, body.signer), from.clone());
                return;
            }
            if !self.strict(&body, &vote) {
                self.bad_signature(from, &body, vote, now_unix_ms);
                return;
            }
            self.votes
                .entry(h)
                .or_default()
                .insert(body.signer.clone(), (body.hash, vote.clone()));
            if ours.is_some() {
                self.conflicting(Some(from), &body.signer, h, &body.hash, &vote, now_unix_ms);
            }
            return;
        };
        if old == vote || crate::plant::active(crate::plant::Bug::EquivocationUndetected) {
            return;
        }
        if !self.strict(&body, &vote) {
            self.bad_signature(from, &body, vote, now_unix_ms);
            return;
        }
        let key = (h, body.signer.clone());
        if let Some(deliverer) = self.unverified.remove(&key) {
            let old_body = old.decode().expect("decoded when it arrived");
            if !self.strict(&old_body, &old) {
                // The slot held a forgery: the valid vote takes its place.
                self.bad_signature(&deliverer, &old_body, old, now_unix_ms);
                self.votes
                    .entry(h)
                    .or_default()
                    .insert(body.signer.clone(), (body.hash, vote.clone()));
                if ours.is_some_and(|o| o != body.hash) {
                    self.conflicting(Some(from), &body.signer, h, &body.hash, &vote, now_unix_ms);
                }
                return;
            }
        }
        if old_hash != body.hash {
            self.record(
                body.signer.clone(),
                Kind::Equivocation {
                    height: h,
                    first: old.clone(),
                    second: vote.clone(),
                },
                now_unix_ms,
            );
            // Both votes travel on, so every peer can see the pair.
            self.relay(from, &body, &vote);
            if let Ok(first_body) = old.decode() {
                self.relay(from, &first_body, &old);
            }
        }
    }

    /// A valid vote for another entry than ours at `h`: relay it (so peers
    /// holding the signer's other vote see the equivocation) and, if it is
    /// for an entry our replica refused, record it.
    fn conflicting(
        &mut self,
        from: Option<&FacilityId>,
        signer: &FacilityId,
        h: u64,
        hash: &Hash,
        vote: &Vote,
        now_unix_ms: u64,
    ) {
        if let Some((_, code)) = self.shadows.get(hash) {
            self.record(
                signer.clone(),
                Kind::VoteForInvalid {
                    reason: (*code).into(),
                    vote: vote.clone(),
                },
                now_unix_ms,
            );
        }
        let body = VoteBody {
            signer: signer.clone(),
            height: h,
            hash: *hash,
            prev: GENESIS,
        };
        let me = self.ring.me().clone();
        self.relay(from.unwrap_or(&me), &body, vote);
    }

    fn relay(&mut self, from: &FacilityId, body: &VoteBody, vote: &Vote) {
        if !self
            .relayed
            .insert((body.height, body.signer.clone(), body.hash))
        {
            return;
        }
        for p in self.peers.clone() {
            if p != *from && p != body.signer {
                self.outbox.push((Some(p), vote.clone()));
            }
        }
    }

    fn on_late_vote(&mut self, from: &FacilityId, body: VoteBody, vote: Vote, now_unix_ms: u64) {
        let h = body.height;
        let kept_before = self
            .recent_finals
            .get(&h)
            .and_then(|(_, seen)| seen.get(&body.signer).cloned());
        self.remember_late(&body, &vote, now_unix_ms);
        if let Some((hash, _)) = self.recent_finals.get(&h) {
            if *hash != body.hash {
                if let Some((_, first)) = &kept_before {
                    if first.body != vote.body
                        && !crate::plant::active(crate::plant::Bug::EquivocationUndetected)
                    {
                        let first = first.clone();
                        self.record(
                            body.signer.clone(),
                            Kind::Equivocation {
                                height: h,
                                first,
                                second: vote.clone(),
                            },
                            now_unix_ms,
                        );
                    }
                } else if let Some((_, code)) = self.shadows.get(&body.hash) {
                    self.record(
                        body.signer.clone(),
                        Kind::VoteForInvalid {
                            reason: (*code).into(),
                            vote: vote.clone(),
                        },
                        now_unix_ms,
                    );
                }
                self.relay(from, &body, &vote);
                return;
            }
        }
        // A vote for a final entry: a late voter is no withholder.
        if self
            .recent_finals
            .get(&h)
            .is_some_and(|(hash, _)| *hash == body.hash)
        {
            if let Some(m) = self.missed.get_mut(&body.signer) {
                *m = (self.final_height + 1, 0);
            }
        }
        if *from != body.signer {
            return;
        }
        // From its own signer. One that has not announced `h` final is
        // behind: send it what it lacks (from its announced head). One that
        // announced `h` final and still sends votes for it replays them.
        let head = self.peer_final.get(from).copied();
        if head.is_none_or(|f| f < h) {
            if self.served.get(from).is_none_or(|t| self.ticks >= t + 2) {
                self.served.insert(from.clone(), self.ticks);
                self.out.push(Output::ServeFinals {
                    to: from.clone(),
                    from: head.map_or(h, |f| f + 1),
                    max: self.config.fetch_max.min(FINALS_PER_MSG_MAX),
                });
            }
            return;
        }
        let n = self.stale.entry((body.signer.clone(), h)).or_default();
        *n += 1;
        let n = *n;
        if n > self.config.stale_repeats {
            self.record(
                body.signer.clone(),
                Kind::StaleVote {
                    height: h,
                    repeats: n - self.config.stale_repeats,
                    vote,
                },
                now_unix_ms,
            );
        }
        while self.stale.len() > 65_536 {
            self.stale.pop_first();
        }
    }

    /// Appends every final entry that is now certified, in height order.
    fn try_finalize(&mut self, now_unix_ms: u64) {
        let mut finals = Vec::new();
        self.recheck_epochs();
        loop {
            let h = self.final_height + 1;
            if self.pending.get(&h).is_some_and(|p| !p.epoch_ok) && !self.recheck_epochs() {
                break; // finalized by final entries fetched from peers
            }
            let Some(p) = self.pending.get(&h) else { break };
            if !p.epoch_ok {
                break;
            }
            if p.link.entry.prev != self.final_hash {
                metrics::counter!("bulwark_bft_divergence_total").increment(1);
                tracing::error!(height = h, "pending entry does not link to the final head");
                break;
            }
            let hash = p.link.hash;
            let slot = self.votes.get(&h);
            let for_it: Vec<Vote> = slot
                .map(|m| {
                    m.values()
                        .filter(|(vh, _)| *vh == hash)
                        .map(|(_, v)| v.clone())
                        .collect()
                })
                .unwrap_or_default();
            if for_it.len() < self.quorum_at(h) {
                break;
            }
            let cert = Certificate {
                height: h,
                hash,
                prev: p.link.entry.prev,
                votes: for_it,
            };
            metrics::counter!("bulwark_bft_votes_verified_total", "how" => "batch")
                .increment(cert.votes.len() as u64);
            if cert.verify(self.keys_at(h)).is_err() {
                // Some vote is bad: check the unverified ones one by one,
                // drop the bad, and try again with what is left.
                if self.evict_bad_votes(h, now_unix_ms) == 0 {
                    tracing::error!(height = h, "a certificate of checked votes does not verify");
                    break;
                }
                continue;
            }
            self.unverified.retain(|(vh, _), _| *vh != h);
            let fin = FinalEntry {
                entry: p.link.bytes.clone(),
                cert,
            };
            finals.push((h, fin));
            self.advance(h, hash, now_unix_ms);
        }
        if !finals.is_empty() {
            metrics::counter!("bulwark_bft_final_total").increment(finals.len() as u64);
            self.out.push(Output::Final(finals));
        }
    }

    /// Checks every unverified vote at `h` with `verify_strict`; removes the
    /// bad ones (evidence against whoever delivered them). Returns how many
    /// were removed.
    fn evict_bad_votes(&mut self, h: u64, now_unix_ms: u64) -> usize {
        let keys: Vec<(u64, FacilityId)> = self
            .unverified
            .keys()
            .filter(|(vh, _)| *vh == h)
            .cloned()
            .collect();
        let mut removed = 0;
        for key in keys {
            let deliverer = self.unverified.remove(&key).expect("listed");
            let Some((_, vote)) = self.votes.get(&h).and_then(|m| m.get(&key.1)).cloned() else {
                continue;
            };
            let body = vote.decode().expect("decoded when it arrived");
            if !self.strict(&body, &vote) {
                if let Some(m) = self.votes.get_mut(&h) {
                    m.remove(&key.1);
                }
                self.bad_signature(&deliverer, &body, vote, now_unix_ms);
                removed += 1;
            }
        }
        removed
    }

    /// A vote for a recent final height that arrived after it was final:
    /// kept as its signer's vote there if none was (verified first), so a
    /// conflicting one arriving later, in either order, is seen as
    /// equivocation. A vote for the final entry that meets a kept vote for
    /// another entry is recorded here; the other order below.
    fn remember_late(&mut self, body: &VoteBody, vote: &Vote, now_unix_ms: u64) {
        let h = body.height;
        let Some((final_hash, seen)) = self.recent_finals.get(&h) else {
            return;
        };
        let final_hash = *final_hash;
        match seen.get(&body.signer).cloned() {
            None => {
                if self.strict(body, vote) {
                    if let Some((_, seen)) = self.recent_finals.get_mut(&h) {
                        seen.insert(body.signer.clone(), (body.hash, vote.clone()));
                    }
                }
            }
            Some((kept_hash, kept))
                if kept_hash != final_hash
                    && body.hash == final_hash
                    && !crate::plant::active(crate::plant::Bug::EquivocationUndetected) =>
            {
                // The kept vote may have been stored unverified (a catch-up
                // keeps the votes it was given): both must verify before
                // they accuse anyone.
                let kept_ok = kept
                    .decode()
                    .is_ok_and(|kb| kb.signer == body.signer && self.strict(&kb, &kept));
                if kept_ok && self.strict(body, vote) {
                    self.record(
                        body.signer.clone(),
                        Kind::Equivocation {
                            height: h,
                            first: kept,
                            second: vote.clone(),
                        },
                        now_unix_ms,
                    );
                }
            }
            Some(_) => {}
        }
    }

    /// Whether `peer` is near height `h`, as it announced: the newest
    /// entry it holds (from a version-6 peer), else its final head, within
    /// `withhold_heights` of `h`. Unknown: near. A facility that restarted
    /// behind learns final entries from its peers long before its replica
    /// holds the entries after them: its head is near while it cannot vote
    /// (a growth run over real processes drew WITHHOLDING against such a
    /// facility), so the entries it holds are what count.
    fn near(&self, peer: &FacilityId, h: u64) -> bool {
        let w = self.config.withhold_heights;
        match self.peer_holds.get(peer) {
            Some(held) => held.saturating_add(w) >= h,
            None => self
                .peer_final
                .get(peer)
                .is_none_or(|f| f.saturating_add(w) >= h),
        }
    }

    fn advance(&mut self, h: u64, hash: Hash, now_unix_ms: u64) {
        let seen = self.votes.remove(&h).unwrap_or_default();
        let me = self.ring.me().clone();
        let signers: Vec<FacilityId> = self
            .keys_at(h)
            .facilities()
            .filter(|f| **f != me)
            .cloned()
            .collect();
        for peer in &signers {
            let voted = seen.get(peer).is_some_and(|(vh, _)| *vh == hash);
            // A miss from a peer that is behind (its announced head, or
            // the newest entry it announced it holds, far from `h`) proves
            // nothing: it cannot vote for what it has not seen. A peer not
            // heard from at all is counted, and judged when it is heard
            // (the suspects below).
            let near = self.near(peer, h);
            let m = self.missed.entry(peer.clone()).or_insert((h, 0));
            if voted || !near {
                *m = (h + 1, 0);
            } else {
                if m.1 == 0 {
                    self.streak_tick.insert(peer.clone(), self.ticks);
                }
                *m = (m.0, m.1 + 1);
            }
        }
        let _ = now_unix_ms;
        if self.behaviour == Behaviour::ReplayStale {
            if let Some((_, v)) = seen.get(self.ring.me()) {
                self.replay.push_back(v.clone());
                while self.replay.len() > 64 {
                    self.replay.pop_front();
                }
            }
        }
        // A validator change made final here begins the next epoch, as a
        // final entry fetched from a peer does (`on_finals`): the replica
        // says so when it applies the entry, but not after a restart that
        // replayed it past two later changes (it keeps two sets).
        let change = self
            .pending
            .get(&h)
            .and_then(|p| validator_change(&p.link.entry.proposal));
        if let Some(change) = change {
            if self.epochs.at(h + 1).from_height != h + 1 {
                match self.epochs.at(h).change(&change, h) {
                    Ok(next) => self.learn_epoch(std::sync::Arc::new(next)),
                    Err(e) => {
                        tracing::error!(height = h, error = %e, "a final validator change does not apply")
                    }
                }
            }
        }
        self.recent_finals.insert(h, (hash, seen));
        while self.recent_finals.len() as u64 > self.config.final_votes_kept {
            self.recent_finals.pop_first();
        }
        self.pending.remove(&h);
        self.my_votes.remove(&h);
        self.unverified.retain(|(vh, _), _| *vh > h);
        self.final_height = h;
        self.final_hash = hash;
        self.advanced_tick = self.ticks;
        let floor = h.saturating_sub(self.config.final_votes_kept);
        self.relayed.retain(|(rh, _, _)| *rh > floor);
    }

    /// Final entries from a peer (catch-up): each is verified (certificate,
    /// link, proposal signature) before it is trusted.
    fn on_finals(&mut self, from: &FacilityId, finals: Vec<FinalEntry>, now_unix_ms: u64) {
        if finals.len() > FINALS_PER_MSG_MAX as usize {
            metrics::counter!("bulwark_bft_oversized_total").increment(1);
            return;
        }
        let mut adopted = Vec::new();
        for fin in finals {
            let h = self.final_height + 1;
            if fin.cert.height < h {
                continue;
            }
            let checked =
                verify_final(&fin, h, &self.final_hash, &self.epochs).and_then(|(_, hash, p)| {
                    let next = match &p.command.op {
                        Op::Validator(change) => Some(
                            self.epochs
                                .at(h)
                                .change(change, h)
                                .map(std::sync::Arc::new)
                                .map_err(|reason| crate::ledger::LedgerFault {
                                    height: h,
                                    reason: format!("validator change not allowed: {reason}"),
                                })?,
                        ),
                        _ => None,
                    };
                    Ok((hash, next))
                });
            match checked {
                Ok((hash, next)) => {
                    if let Some(next) = next {
                        self.learn_epoch(next);
                    }
                    if let Some(p) = self.pending.get(&h) {
                        if p.link.hash != hash {
                            metrics::counter!("bulwark_bft_divergence_total").increment(1);
                            tracing::error!(
                                height = h,
                                "a certified entry differs from this replica's"
                            );
                        }
                    }
                    // Remember the certificate's votes for equivocation checks.
                    for v in &fin.cert.votes {
                        if let Ok(b) = v.decode() {
                            self.votes
                                .entry(h)
                                .or_default()
                                .entry(b.signer)
                                .or_insert((hash, v.clone()));
                        }
                    }
                    self.advance(h, hash, now_unix_ms);
                    adopted.push((h, fin));
                }
                Err(fault) => {
                    self.finals_refused += 1;
                    metrics::counter!("bulwark_bft_catchup_refused_total").increment(1);
                    tracing::warn!(%from, %fault, "final entry from a peer refused");
                    break;
                }
            }
        }
        if !adopted.is_empty() {
            metrics::counter!("bulwark_bft_caught_up_total").increment(adopted.len() as u64);
            self.out.push(Output::Final(adopted));
        }
        self.try_finalize(now_unix_ms);
    }

    /// An entry fetched from a peer, taken only if it is authentic: its
    /// hash is the previous hash of this replica's next entry, or f+1
    /// distinct signers (so at least one honest) voted for it.
    fn on_entry(&mut self, bytes: Vec<u8>, now_unix_ms: u64) {
        let Ok(entry) = codec::decode_limited::<LedgerEntry>(&bytes, ENTRY_LEN_MAX) else {
            metrics::counter!("bulwark_bft_malformed_total").increment(1);
            return;
        };
        let h = entry.height;
        if h <= self.final_height || self.pending.contains_key(&h) {
            return;
        }
        let hash = *blake3::hash(&bytes).as_bytes();
        let linked = self
            .pending
            .get(&(h + 1))
            .is_some_and(|next| next.link.entry.prev == hash);
        let f = (self.keys_at(h).len().saturating_sub(1)) / 3;
        let voted = self.votes.get(&h).map_or(0, |m| {
            m.iter()
                .filter(|(s, (vh, _))| {
                    *vh == hash && !self.unverified.contains_key(&(h, (*s).clone()))
                })
                .count()
        });
        if !linked && voted < f + 1 {
            return;
        }
        let Ok(payload) = entry.verified_payload(&self.epochs) else {
            return;
        };
        metrics::counter!("bulwark_bft_entries_fetched_total").increment(1);
        // Authentic (linked, or f+1 voted for it); its set is the one this
        // history holds for its height only if the history reaches it. A
        // validator change there names the next set.
        let epoch_ok = self.judged(h);
        if let (true, Op::Validator(change)) = (epoch_ok, &payload.command.op) {
            match self.epochs.at(h).change(change, h) {
                Ok(next) => self.learn_epoch(std::sync::Arc::new(next)),
                Err(_) => return, // never admissible: not this chain's entry
            }
        }
        self.on_admitted(Link { entry, bytes, hash }, epoch_ok, None, now_unix_ms);
    }

    /// Heights above the final one this validator has no entry for, but
    /// knows exist (a later entry, or votes for them).
    fn missing_heights(&self) -> Vec<u64> {
        let top = self
            .pending
            .keys()
            .next_back()
            .copied()
            .max(self.votes.keys().next_back().copied())
            .unwrap_or(0);
        (self.final_height + 1..=top)
            .filter(|h| !self.pending.contains_key(h))
            .take(FINALS_PER_MSG_MAX as usize)
            .collect()
    }

    /// One tick: re-send own votes for heights not yet final, announce the
    /// head.
    pub fn on_tick(&mut self, now_unix_ms: u64) {
        self.ticks += 1;
        if self.ticks % self.config.rebroadcast_ticks == 0 && self.behaviour != Behaviour::Withhold
        {
            let mine: Vec<Vote> = self
                .pending
                .values()
                .filter_map(|p| p.my_vote.clone())
                .take(VOTES_PER_MSG_MAX)
                .collect();
            for v in mine {
                self.outbox.push((None, v));
            }
        }
        if self.ticks % self.config.head_ticks == 0 {
            // Stalled a while: ask for entries this replica never saw.
            let stalled = self.ticks >= self.advanced_tick + self.config.head_ticks;
            let missing = if stalled {
                self.missing_heights()
            } else {
                Vec::new()
            };
            for height in missing {
                for p in self.peers.clone() {
                    self.out.push(Output::Send {
                        to: p,
                        msg: BftWire::FetchEntry { height },
                    });
                }
            }
            let peers = self.peers.clone();
            self.listeners.retain(|l| !peers.contains(l));
            for p in peers.into_iter().chain(self.listeners.iter().cloned()) {
                self.out.push(Output::Send {
                    to: p,
                    msg: BftWire::HeadOf {
                        height: self.final_height,
                        holds: self.holds,
                    },
                });
            }
        }
        // A peer in touch (its heads arrive, also well after its streak
        // began, and announce it caught up) whose votes are missing from
        // many final heights in a row. One paused, crashed or cut off when
        // its streak began is heard again only behind, or after it voted
        // late (which ends the streak): found by SIGSTOP of a follower
        // under writes, which once drew WITHHOLDING records.
        let head_ticks = self.config.head_ticks;
        let suspects: Vec<(FacilityId, u64, u64)> = self
            .missed
            .iter()
            .filter(|(p, (_, n))| {
                let heard = self.heard.get(*p).copied();
                let began = self.streak_tick.get(*p).copied().unwrap_or(0);
                let caught_up = self.peer_final.contains_key(*p) && self.near(p, self.final_height);
                *n >= self.config.withhold_heights
                    && heard.is_some_and(|t| {
                        self.ticks <= t + 3 * head_ticks && t >= began + 2 * head_ticks
                    })
                    && caught_up
            })
            .map(|(p, (since, n))| (p.clone(), *since, *n))
            .collect();
        for (peer, since, missed) in suspects {
            self.record(peer, Kind::Withholding { since, missed }, now_unix_ms);
        }
        if self.behaviour == Behaviour::ReplayStale {
            let old: Vec<Vote> = self.replay.iter().cloned().collect();
            for v in old {
                self.outbox.push((None, v));
            }
        }
    }
}

/// The validator change a stored proposal carries, if any (decoded, not
/// verified: the replica admitted it).
fn validator_change(proposal: &[u8]) -> Option<crate::epoch::ValidatorChange> {
    let signed: crate::ledger::SignedProposal =
        codec::decode_limited(proposal, ENTRY_LEN_MAX).ok()?;
    let payload: crate::ledger::EntryPayload =
        codec::decode_limited(&signed.body, ENTRY_LEN_MAX).ok()?;
    match payload.command.op {
        Op::Validator(c) => Some(c),
        _ => None,
    }
}

/// The people a command puts on blocks (for the favoritism detector).
fn assigned_people(op: &Op) -> Vec<String> {
    let people = match op {
        Op::Assign { person, .. } | Op::EmergencyCoverage { person, .. } => vec![person],
        Op::Swap { a, b, .. } => vec![a, b],
        _ => Vec::new(),
    };
    // An experiment's probes (chaos namespaces) are nobody's favour.
    people
        .into_iter()
        .filter(|p| crate::schedule::namespace_of(p.as_str()).is_none())
        .map(|p| p.as_str().to_string())
        .collect()
}
