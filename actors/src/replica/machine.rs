//! The schedule's replica as the state machine consensus drives
//! ([`crate::machine::StateMachine`]).
//!
//! - A client's command becomes a [`SignedProposal`]: its
//!   [`EntryPayload`] (proposer, sequence number, the chain anchor it saw,
//!   the command stamped with the proposer's clock), signed with the
//!   facility's proposal key.
//! - A committed entry is decided by the ledger's [`ledger::admit`] over
//!   the replica's tables: checked, applied to the schedule, linked into
//!   the hash chain; its verdict is recorded so it can be shown again
//!   after a restart ([`ledger::relink`]).
//! - Snapshots are the replica's tables ([`super::snapshot`]).

use bulwark_storage::stream::{Chunk, Cursor, Descriptor, Row, RowHasher, SnapshotError};
use bulwark_storage::{codec, StorageError, Store};
use bulwark_transport::FacilityId;
use raft::eraftpb::{Entry, EntryType};
use redb::{ReadTransaction, ReadableDatabase, WriteTransaction};

use super::{snapshot, Replica, ScheduleView};
use crate::epoch::ValidatorSet;
use crate::keys::{Domain, Keyring};
use crate::ledger::{self, EntryPayload, SignedProposal, Verdict};
use crate::machine::{Answer, Batch, Decided, ForwardRefused, Forwarded, Origin, StateMachine};
use crate::schedule::{Applied, Command, IdempotencyKey, Op, Outcome};

/// The replica with the keys that sign and check proposals.
#[derive(Debug)]
pub struct ScheduleMachine {
    replica: Replica,
    keyring: Keyring,
    /// The genesis validator set (the keyring's public keys).
    genesis: ValidatorSet,
    checkpoints: Option<CheckpointSink>,
}

/// A cluster backup point ([`crate::schedule::Op::Checkpoint`]) this
/// facility just applied: the store as it stands right after the entry at
/// `index` (the batch is committed up to it and no further), to be
/// copied while applying goes on.
pub struct Checkpoint {
    /// The checkpoint entry's index: the backup's applied index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The command's agreed timestamp (the same on every facility).
    pub at_unix_ms: u64,
    /// The store at that point.
    pub source: ReadTransaction,
    /// The store it reads.
    pub store: Store,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("index", &self.index)
            .field("term", &self.term)
            .field("at_unix_ms", &self.at_unix_ms)
            .finish_non_exhaustive()
    }
}

/// Where the machine hands its checkpoints (the node writes each to a
/// backup file on a thread of its own). Called on the applying task: it
/// must not block.
#[derive(Clone)]
pub struct CheckpointSink(pub std::sync::Arc<dyn Fn(Checkpoint) + Send + Sync>);

impl std::fmt::Debug for CheckpointSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckpointSink")
    }
}

/// What the schedule machine opens with besides its store: this
/// facility's keys, and where its checkpoints go (`None`: checkpoints
/// apply, and no backup is written).
#[derive(Debug, Clone)]
pub struct ScheduleContext {
    /// The keys that sign and check proposals.
    pub keyring: Keyring,
    /// Where checkpoints go.
    pub checkpoints: Option<CheckpointSink>,
}

impl From<Keyring> for ScheduleContext {
    fn from(keyring: Keyring) -> Self {
        ScheduleContext {
            keyring,
            checkpoints: None,
        }
    }
}

/// What the applied-entry tap shows of one entry: its decoded payload and
/// the ledger's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The payload of a normal entry that decoded.
    pub payload: Option<EntryPayload>,
    /// The ledger's verdict.
    pub verdict: Verdict,
    /// For an entry admitted now: the epoch whose set certifies it, and
    /// the next set if it began one (None when shown again after a
    /// restart: the validator's own history answers then).
    pub epoch: Option<(u64, Option<ValidatorSet>)>,
}

impl Shown {
    fn skipped() -> Shown {
        Shown {
            payload: None,
            verdict: Verdict::Skipped,
            epoch: None,
        }
    }
}

impl ScheduleMachine {
    /// Applies `batch.entries` in one transaction up to and including the
    /// first fresh checkpoint, pushing each entry's decision to `decided`.
    /// Returns how many entries it took and, if it ended at a checkpoint,
    /// its index, term and timestamp.
    #[allow(clippy::type_complexity)]
    fn apply_until_checkpoint<E: From<StorageError>>(
        &mut self,
        batch: Batch<'_>,
        conf: &mut dyn FnMut(&WriteTransaction, &Entry) -> Result<(), E>,
        decided: &mut Vec<Decided<Self>>,
    ) -> Result<(usize, Option<(u64, u64, u64)>), E> {
        let genesis = &self.genesis;
        let r = &mut self.replica;
        let tx = r.begin()?;
        let mut sched = r.schedule(&tx);
        let held = batch.held_through.max(r.applied());
        let mut taken = (batch.entries.len(), None);
        for (i, e) in batch.entries.iter().enumerate() {
            let mut checkpoint = None;
            let mut d = Decided {
                origin: None,
                answer: None,
                shown: None,
            };
            if e.index <= held {
                // Applied before a restart (or carried by an installed
                // snapshot): the replica holds it. Shown again as decided;
                // an entry an installed snapshot carried, with no verdict
                // recorded here, is not shown (as raft-rs shows none of
                // the entries a snapshot replaces).
                if e.entry_type == EntryType::EntryConfChangeV2 && e.index > batch.conf_through {
                    conf(&tx, e)?;
                }
                if batch.show {
                    d.shown = match e.entry_type {
                        EntryType::EntryNormal => match r.verdict_at(e.index)? {
                            Some(rec) => {
                                let (payload, verdict) =
                                    ledger::relink(sched.chain(), e.index, e.term, &e.data, &rec);
                                let epoch = match &verdict {
                                    Verdict::Admitted(l) => sched.chain().in_force().shown_again(
                                        genesis,
                                        l.entry.height,
                                        payload.as_ref().map(|p| &p.command.op),
                                    ),
                                    _ => None,
                                };
                                Some(Shown {
                                    payload,
                                    verdict,
                                    epoch,
                                })
                            }
                            None if !e.data.is_empty() => None,
                            None => Some(Shown::skipped()),
                        },
                        _ => Some(Shown::skipped()),
                    };
                }
                decided.push(d);
                continue;
            }
            match e.entry_type {
                EntryType::EntryNormal => {
                    let adm = ledger::admit(&mut sched, genesis, e.index, e.term, &e.data);
                    if let (Some(p), Some(Applied::Fresh(Outcome::Applied(_)))) =
                        (&adm.payload, &adm.applied)
                    {
                        if p.command.op == Op::Checkpoint {
                            checkpoint = Some((e.index, e.term, p.command.at_unix_ms));
                        }
                    }
                    if let Some(p) = &adm.payload {
                        d.origin = Some(Origin {
                            proposer: p.proposer.clone(),
                            seq: p.seq,
                            key: p.command.key,
                        });
                        d.answer = match (adm.applied, &adm.verdict) {
                            (Some(applied), verdict) => {
                                let height = match verdict {
                                    Verdict::Admitted(link) => Some(link.entry.height),
                                    _ => None,
                                };
                                match applied {
                                    Applied::Fresh(outcome) => Some(Answer::Applied {
                                        outcome,
                                        duplicate: false,
                                        first_index: None,
                                        height,
                                    }),
                                    Applied::Duplicate {
                                        outcome,
                                        first_index,
                                    } => Some(Answer::Applied {
                                        outcome,
                                        duplicate: true,
                                        first_index: Some(first_index),
                                        // The first application's height, in
                                        // this transaction (it may be in
                                        // this very batch).
                                        height: match r.verdict_in(&tx, first_index)? {
                                            Some(crate::ledger::Recorded::Admitted { height }) => {
                                                Some(height)
                                            }
                                            _ => None,
                                        },
                                    }),
                                }
                            }
                            (None, Verdict::Rejected { reason, .. }) => Some(Answer::Refused {
                                reason: format!(
                                    "{}: refused by the ledger's checks",
                                    reason.code()
                                ),
                            }),
                            (None, _) => None,
                        };
                    }
                    if !e.data.is_empty() {
                        r.record_verdict(&tx, e.index, &adm.verdict.recorded())?;
                    }
                    if batch.show {
                        d.shown = Some(Shown {
                            payload: adm.payload,
                            verdict: adm.verdict,
                            epoch: adm.epoch,
                        });
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    if e.index > batch.conf_through {
                        conf(&tx, e)?;
                    }
                    d.shown = batch.show.then(Shown::skipped);
                }
                EntryType::EntryConfChange => {
                    tracing::error!(index = e.index, "v1 conf change ignored");
                    d.shown = batch.show.then(Shown::skipped);
                }
            }
            decided.push(d);
            if checkpoint.is_some() {
                if crate::plant::active(crate::plant::Bug::CheckpointAfterBatch) {
                    taken.1 = checkpoint;
                    continue;
                }
                taken = (i + 1, checkpoint);
                break;
            }
        }
        let last = batch.entries[taken.0 - 1].index;
        r.prune_verdicts(&tx, batch.compacted)?;
        let done = sched.into_tables().finish()?;
        r.commit(tx, done, last)?;
        Ok(taken)
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }
}

impl StateMachine for ScheduleMachine {
    type Command = Command;
    type Key = IdempotencyKey;
    type Outcome = Outcome;
    type View = ScheduleView;
    type Shown = Shown;
    type Context = ScheduleContext;
    type Source = ReadTransaction;

    fn open(store: Store, cx: &ScheduleContext) -> Result<Self, StorageError> {
        Ok(ScheduleMachine {
            replica: Replica::open(store)?,
            keyring: cx.keyring.clone(),
            genesis: ValidatorSet::genesis(cx.keyring.public().clone()),
            checkpoints: cx.checkpoints.clone(),
        })
    }

    fn reset(store: Store, cx: &ScheduleContext) -> Result<Self, StorageError> {
        Ok(ScheduleMachine {
            replica: Replica::reset(store)?,
            keyring: cx.keyring.clone(),
            genesis: ValidatorSet::genesis(cx.keyring.public().clone()),
            checkpoints: cx.checkpoints.clone(),
        })
    }

    fn store(&self) -> &Store {
        self.replica.store()
    }

    fn applied(&self) -> u64 {
        self.replica.applied()
    }

    fn view(&self) -> Result<ScheduleView, StorageError> {
        self.replica.read()
    }

    fn key(command: &Command) -> IdempotencyKey {
        command.key
    }

    fn propose(
        &self,
        me: &FacilityId,
        seq: u64,
        mut command: Command,
        now_unix_ms: u64,
    ) -> Result<Vec<u8>, String> {
        // This facility accepted it from its client: it is the issuer, and
        // its clock stamps it (a retry through another facility is issued
        // again there; the idempotency key still makes it apply once).
        // Never before its own previous admitted stamp: a wall clock
        // stepped back must not read as TIME_TRAVEL. (Only admitted ones:
        // a stamp refused as from the future must not hold later ones.)
        let chained = self.replica.chain().last_at().get(me).copied().unwrap_or(0);
        command.at_unix_ms = now_unix_ms.max(chained);
        command.issued_by = me.clone();
        let payload = EntryPayload {
            proposer: me.clone(),
            seq,
            anchor: self.replica.chain().anchor(),
            command,
        };
        let body = codec::encode(&payload).map_err(|e| format!("cannot encode: {e}"))?;
        // Signed with this facility's key in the set in force.
        let set = self.replica.chain().in_force().current(&self.genesis);
        let sig = set
            .keys()
            .get(me)
            .and_then(|k| self.keyring.sign_as(k, Domain::Proposal, &body))
            .ok_or_else(|| {
                format!(
                    "{me} holds no vote key of validator epoch {}: it proposes again once \
                     it is a validator with a key it holds",
                    set.number
                )
            })?;
        codec::encode(&SignedProposal { body, sig }).map_err(|e| format!("cannot encode: {e}"))
    }

    fn proposes(&self, f: &FacilityId) -> bool {
        let set = self.replica.chain().in_force().current(&self.genesis);
        match set.keys().get(f) {
            Some(k) if f == self.keyring.me() => self.keyring.holds(k),
            Some(_) => true,
            None => false,
        }
    }

    fn check_forwarded(
        &self,
        from: &FacilityId,
        bytes: &[u8],
        limit: usize,
    ) -> Result<Forwarded, ForwardRefused> {
        let (signed, payload) = codec::decode_limited::<SignedProposal>(bytes, limit)
            .and_then(|sp| codec::decode_limited::<EntryPayload>(&sp.body, limit).map(|p| (sp, p)))
            .map_err(|e| ForwardRefused::Malformed(e.to_string()))?;
        // The proposer is bound to the authenticated sender, and signed it
        // (under the set after its anchor, as the ledger will check it).
        let in_force = self.replica.chain().in_force();
        let signed_ok = in_force
            .for_anchor(&self.genesis, payload.anchor.height)
            .is_some_and(|set| {
                set.keys()
                    .verify(from, Domain::Proposal, &signed.body, &signed.sig)
                    .is_ok()
            });
        if payload.proposer != *from || payload.command.issued_by != *from || !signed_ok {
            return Err(ForwardRefused::Forged);
        }
        Ok(Forwarded {
            seq: payload.seq,
            at_unix_ms: payload.command.at_unix_ms,
        })
    }

    fn apply<E: From<StorageError>>(
        &mut self,
        batch: Batch<'_>,
        conf: &mut dyn FnMut(&WriteTransaction, &Entry) -> Result<(), E>,
    ) -> Result<Vec<Decided<Self>>, E> {
        // One transaction per batch, except that a checkpoint ends one: the
        // store is committed through it, read there, and the rest of the
        // batch goes on in the next.
        let mut decided = Vec::with_capacity(batch.entries.len());
        let mut rest = batch.entries;
        while !rest.is_empty() {
            let segment = Batch {
                entries: rest,
                ..batch
            };
            let (taken, checkpoint) = self.apply_until_checkpoint(segment, conf, &mut decided)?;
            rest = &rest[taken..];
            if let Some((index, term, at_unix_ms)) = checkpoint {
                let store = self.replica.store();
                let source = store.database().begin_read().map_err(|e| store.redb(e))?;
                metrics::counter!("bulwark_checkpoints_applied_total",
                    "facility" => store.facility().to_string())
                .increment(1);
                match &self.checkpoints {
                    Some(sink) => (sink.0)(Checkpoint {
                        index,
                        term,
                        at_unix_ms,
                        source,
                        store: store.clone(),
                    }),
                    None => tracing::debug!(index, "checkpoint applied; no backup is configured"),
                }
            }
        }
        Ok(decided)
    }

    fn snapshot_source(&self) -> Result<ReadTransaction, StorageError> {
        let store = self.replica.store();
        store.database().begin_read().map_err(|e| store.redb(e))
    }

    fn read_chunk(
        &self,
        source: &ReadTransaction,
        at: &Cursor,
        max_bytes: usize,
    ) -> Result<Chunk, StorageError> {
        snapshot::read_chunk(self.replica.store(), source, at, max_bytes)
    }

    fn clear_staging(&self) -> Result<(), StorageError> {
        snapshot::clear_staging(self.replica.store())
    }

    fn stage(&self, first: u64, rows: &[Row], hasher: &mut RowHasher) -> Result<(), SnapshotError> {
        snapshot::stage(self.replica.store(), first, rows, hasher)
    }

    fn install(&mut self, desc: &Descriptor, hasher: &RowHasher) -> Result<(), SnapshotError> {
        snapshot::install(self.replica.store(), desc, hasher)?;
        self.replica.reload()?;
        Ok(())
    }
}
