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
use crate::keys::{Domain, Keyring};
use crate::ledger::{self, EntryPayload, SignedProposal, Verdict};
use crate::machine::{Answer, Batch, Decided, ForwardRefused, Forwarded, Origin, StateMachine};
use crate::schedule::{Applied, Command, IdempotencyKey, Outcome};

/// The replica with the keys that sign and check proposals.
#[derive(Debug)]
pub struct ScheduleMachine {
    replica: Replica,
    keyring: Keyring,
}

/// What the applied-entry tap shows of one entry: its decoded payload and
/// the ledger's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The payload of a normal entry that decoded.
    pub payload: Option<EntryPayload>,
    /// The ledger's verdict.
    pub verdict: Verdict,
}

impl Shown {
    fn skipped() -> Shown {
        Shown {
            payload: None,
            verdict: Verdict::Skipped,
        }
    }
}

impl ScheduleMachine {
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
    type Context = Keyring;
    type Source = ReadTransaction;

    fn open(store: Store, keyring: &Keyring) -> Result<Self, StorageError> {
        Ok(ScheduleMachine {
            replica: Replica::open(store)?,
            keyring: keyring.clone(),
        })
    }

    fn reset(store: Store, keyring: &Keyring) -> Result<Self, StorageError> {
        Ok(ScheduleMachine {
            replica: Replica::reset(store)?,
            keyring: keyring.clone(),
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
        let sig = self.keyring.sign(Domain::Proposal, &body);
        codec::encode(&SignedProposal { body, sig }).map_err(|e| format!("cannot encode: {e}"))
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
        // The proposer is bound to the authenticated sender, and signed it.
        let signed_ok = self
            .keyring
            .public()
            .verify(from, Domain::Proposal, &signed.body, &signed.sig)
            .is_ok();
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
        let Some(last) = batch.entries.last().map(|e| e.index) else {
            return Ok(Vec::new());
        };
        let keys = self.keyring.public();
        let r = &mut self.replica;
        let tx = r.begin()?;
        let mut sched = r.schedule(&tx);
        let held = batch.held_through.max(r.applied());
        let mut decided = Vec::with_capacity(batch.entries.len());
        for e in batch.entries {
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
                if batch.show {
                    d.shown = match e.entry_type {
                        EntryType::EntryNormal => match r.verdict_at(e.index)? {
                            Some(rec) => {
                                let (payload, verdict) =
                                    ledger::relink(sched.chain(), e.index, e.term, &e.data, &rec);
                                Some(Shown { payload, verdict })
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
                    let adm = ledger::admit(&mut sched, keys, e.index, e.term, &e.data);
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
                        });
                    }
                }
                EntryType::EntryConfChangeV2 => {
                    conf(&tx, e)?;
                    d.shown = batch.show.then(Shown::skipped);
                }
                EntryType::EntryConfChange => {
                    tracing::error!(index = e.index, "v1 conf change ignored");
                    d.shown = batch.show.then(Shown::skipped);
                }
            }
            decided.push(d);
        }
        r.prune_verdicts(&tx, batch.compacted)?;
        let done = sched.into_tables().finish()?;
        r.commit(tx, done, last)?;
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
