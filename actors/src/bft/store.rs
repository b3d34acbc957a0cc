//! The validator's tables in the facility's redb file: the ledger of final
//! entries, its own votes and the entries they are for, and evidence.
//! Every write is one durable transaction.

use std::path::Path;
use std::sync::Arc;

use bulwark_storage::schema::{BFT_PENDING, BFT_VOTES, EVIDENCE, LEDGER, LEDGER_CERTS, STATE};
use bulwark_storage::{codec, StorageError, Store};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableError};

use super::core::Restored;
use super::evidence::{Drill, Evidence, DRILLS_KEPT};
use crate::epoch::{Epochs, ValidatorSet, EPOCHS_MAX};
use crate::ledger::{
    verify_chain, Certificate, FinalEntry, LedgerEntry, LedgerFault, Link, VerifyReport, Vote,
    CERTIFICATE_LEN_MAX, ENTRY_LEN_MAX, GENESIS,
};

/// Evidence rows kept in the table.
pub const EVIDENCE_ROWS_MAX: u64 = 10_000;

/// The `state` row the drills are kept in.
const DRILLS_ROW: &str = "bft_drills";

/// The `state` row the validator epochs after genesis are kept in.
const EPOCHS_ROW: &str = "bft_epochs";

/// The validator's view of the store.
#[derive(Clone, Debug)]
pub struct LedgerStore {
    store: Store,
}

impl LedgerStore {
    /// Wraps `store`.
    pub fn new(store: Store) -> LedgerStore {
        LedgerStore { store }
    }

    /// Loads what the core resumes from.
    pub fn restore(&self) -> Result<Restored, StorageError> {
        let s = &self.store;
        let tx = s.database().begin_read().map_err(|e| s.redb(e))?;
        let mut r = Restored {
            final_head: (0, GENESIS),
            ..Restored::default()
        };
        match tx.open_table(LEDGER) {
            Ok(t) => {
                if let Some((k, v)) = t.last().map_err(|e| s.redb(e))? {
                    r.final_head = (k.value(), *blake3::hash(v.value()).as_bytes());
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(s.redb(e)),
        }
        let votes = match tx.open_table(BFT_VOTES) {
            Ok(t) => Some(t),
            Err(TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(s.redb(e)),
        };
        match tx.open_table(BFT_PENDING) {
            Ok(t) => {
                for row in t.range(r.final_head.0 + 1..).map_err(|e| s.redb(e))? {
                    let (k, v) = row.map_err(|e| s.redb(e))?;
                    let h = k.value();
                    let bytes = v.value().to_vec();
                    let entry: LedgerEntry = codec::decode_limited(&bytes, ENTRY_LEN_MAX)
                        .map_err(|e| s.codec_error("bft_pending", h, e))?;
                    let Some(vt) = &votes else { continue };
                    let Some(vb) = vt.get(h).map_err(|e| s.redb(e))? else {
                        continue;
                    };
                    let vote: Vote =
                        codec::decode(vb.value()).map_err(|e| s.codec_error("bft_votes", h, e))?;
                    let hash = *blake3::hash(&bytes).as_bytes();
                    r.pending.push((Link { entry, bytes, hash }, vote));
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(s.redb(e)),
        }
        match tx.open_table(STATE) {
            Ok(t) => {
                if let Some(v) = t.get(DRILLS_ROW).map_err(|e| s.redb(e))? {
                    let mut drills: Vec<Drill> = codec::decode(v.value())
                        .map_err(|e| s.codec_error("state", DRILLS_ROW, e))?;
                    // Never more than kept in memory, whatever the row says.
                    let over = drills.len().saturating_sub(DRILLS_KEPT);
                    r.drills = drills.split_off(over);
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(s.redb(e)),
        }
        match tx.open_table(EVIDENCE) {
            Ok(t) => {
                for row in t.iter().map_err(|e| s.redb(e))? {
                    let (k, v) = row.map_err(|e| s.redb(e))?;
                    let e: Evidence = codec::decode(v.value())
                        .map_err(|e| s.codec_error("evidence", k.value(), e))?;
                    r.evidence.push(e);
                }
            }
            Err(TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(s.redb(e)),
        }
        r.epochs = self.restore_epochs()?;
        Ok(r)
    }

    /// Replaces the drills kept, durably.
    pub fn put_drills(&self, drills: &[Drill]) -> Result<(), StorageError> {
        let s = &self.store;
        let bytes =
            codec::encode(&drills.to_vec()).map_err(|e| s.codec_error("state", DRILLS_ROW, e))?;
        let tx = s.begin_write()?;
        {
            let mut t = tx.open_table(STATE).map_err(|e| s.redb(e))?;
            t.insert(DRILLS_ROW, bytes.as_slice())
                .map_err(|e| s.redb(e))?;
        }
        tx.commit().map_err(|e| s.redb(e))
    }

    /// The validator epochs this facility's validator recorded, after
    /// `genesis` (the keyring's public keys).
    pub fn epochs(&self, genesis: &crate::keys::PublicKeys) -> Result<Epochs, StorageError> {
        let mut epochs = Epochs::new(ValidatorSet::genesis(genesis.clone()));
        for e in self.restore_epochs()? {
            let _ = epochs.insert(std::sync::Arc::new(e));
        }
        Ok(epochs)
    }

    fn restore_epochs(&self) -> Result<Vec<ValidatorSet>, StorageError> {
        let s = &self.store;
        let tx = s.database().begin_read().map_err(|e| s.redb(e))?;
        let t = match tx.open_table(STATE) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(s.redb(e)),
        };
        let Some(v) = t.get(EPOCHS_ROW).map_err(|e| s.redb(e))? else {
            return Ok(Vec::new());
        };
        let epochs: Vec<ValidatorSet> =
            codec::decode(v.value()).map_err(|e| s.codec_error("state", EPOCHS_ROW, e))?;
        if epochs.len() > EPOCHS_MAX {
            return Err(s.codec_error(
                "state",
                EPOCHS_ROW,
                bulwark_storage::CodecError::Malformed(format!(
                    "{} epochs, over {EPOCHS_MAX}",
                    epochs.len()
                )),
            ));
        }
        Ok(epochs)
    }

    /// Replaces the validator epochs kept (after genesis), durably.
    pub fn put_epochs(&self, epochs: &[ValidatorSet]) -> Result<(), StorageError> {
        let s = &self.store;
        let bytes =
            codec::encode(&epochs.to_vec()).map_err(|e| s.codec_error("state", EPOCHS_ROW, e))?;
        let tx = s.begin_write()?;
        {
            let mut t = tx.open_table(STATE).map_err(|e| s.redb(e))?;
            t.insert(EPOCHS_ROW, bytes.as_slice())
                .map_err(|e| s.redb(e))?;
        }
        tx.commit().map_err(|e| s.redb(e))
    }

    /// Appends final entries (in height order) and drops the votes and
    /// pending entries they settle.
    pub fn append_finals(&self, finals: &[(u64, FinalEntry)]) -> Result<(), StorageError> {
        self.write_batch(&[], finals, &[])
    }

    /// Own votes, final entries (in height order) and evidence in one
    /// durable transaction, after whatever is staged on the store.
    pub fn write_batch(
        &self,
        votes: &[(Link, Vote)],
        finals: &[(u64, FinalEntry)],
        evidence: &[Evidence],
    ) -> Result<(), StorageError> {
        // Staged, so that it is written after what is staged before it.
        let drops = self.store.staged_drops();
        if let Some(ticket) = self.stage_batch(votes, finals, evidence)? {
            self.store.sync()?;
            if !self.store.is_staged_durable(ticket) || self.store.staged_drops() != drops {
                return Err(StorageError::StagedDropped {
                    path: self.store.path().to_path_buf(),
                });
            }
        }
        Ok(())
    }

    /// [`LedgerStore::write_batch`] staged to ride the store's next durable
    /// commit (the Raft peer's next persist, usually: one fsync for both;
    /// [`Store::stage`]). Not visible until then. Returns its ticket (`None`
    /// for an empty batch): nothing that depends on the batch (an own vote)
    /// may leave before [`Store::is_staged_durable`] says so of it.
    pub fn stage_batch(
        &self,
        votes: &[(Link, Vote)],
        finals: &[(u64, FinalEntry)],
        evidence: &[Evidence],
    ) -> Result<Option<u64>, StorageError> {
        let batch = self.encode(votes, finals, evidence)?;
        if batch.is_empty() {
            return Ok(None);
        }
        let batch = Arc::new(batch);
        Ok(Some(
            self.store.stage(Arc::new(move |s, tx| batch.put(s, tx))),
        ))
    }

    /// One durable commit of what is staged on the store.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.store.sync()
    }

    fn encode(
        &self,
        votes: &[(Link, Vote)],
        finals: &[(u64, FinalEntry)],
        evidence: &[Evidence],
    ) -> Result<Encoded, StorageError> {
        let s = &self.store;
        let mut out = Encoded::default();
        for (link, vote) in votes {
            let h = link.entry.height;
            let vb = codec::encode(vote).map_err(|e| s.codec_error("bft_votes", h, e))?;
            out.votes.push((h, vb, link.bytes.clone()));
        }
        for (h, fin) in finals {
            let cert =
                codec::encode(&fin.cert).map_err(|e| s.codec_error("ledger_certs", *h, e))?;
            out.finals.push((*h, fin.entry.clone(), cert));
        }
        for (i, e) in evidence.iter().enumerate() {
            let b = codec::encode(e).map_err(|err| s.codec_error("evidence", i as u64, err))?;
            out.evidence.push(b);
        }
        Ok(out)
    }

    /// Final entries from `from`, at most `max`.
    pub fn finals(&self, from: u64, max: u32) -> Result<Vec<FinalEntry>, StorageError> {
        let s = &self.store;
        let tx = s.database().begin_read().map_err(|e| s.redb(e))?;
        let (t, ct) = match (tx.open_table(LEDGER), tx.open_table(LEDGER_CERTS)) {
            (Ok(t), Ok(ct)) => (t, ct),
            (Err(TableError::TableDoesNotExist(_)), _)
            | (_, Err(TableError::TableDoesNotExist(_))) => return Ok(Vec::new()),
            (Err(e), _) | (_, Err(e)) => return Err(s.redb(e)),
        };
        let mut out = Vec::new();
        for row in t.range(from..).map_err(|e| s.redb(e))?.take(max as usize) {
            let (k, v) = row.map_err(|e| s.redb(e))?;
            let h = k.value();
            let c = ct.get(h).map_err(|e| s.redb(e))?.ok_or_else(|| {
                s.codec_error(
                    "ledger_certs",
                    h,
                    bulwark_storage::CodecError::Malformed("missing".into()),
                )
            })?;
            let cert: Certificate = codec::decode_limited(c.value(), CERTIFICATE_LEN_MAX)
                .map_err(|e| s.codec_error("ledger_certs", h, e))?;
            out.push(FinalEntry {
                entry: v.value().to_vec(),
                cert,
            });
        }
        Ok(out)
    }

    /// Every final entry's stored bytes (the chain, without certificates),
    /// in height order, for comparing ledgers byte for byte.
    pub fn raw_finals(&self) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        self.store.rows(LEDGER)
    }
}

/// Why `ledger verify` could not give a verdict on the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The file could not be opened or read.
    #[error("{0}")]
    Open(String),
    /// The chain is bad at a height.
    #[error("ledger verify failed at {0}")]
    Fault(#[from] LedgerFault),
}

/// Verifies the ledger in the redb file at `path` (opened read-only) from
/// the genesis set's public keys alone: every link, certificate (under its
/// height's validator epoch, each named by the epoch entries met on the
/// way), proposal signature and rule, from height 1. Names the first bad
/// height.
///
/// A file left by a crash needs redb's repair, which a read-only open
/// cannot do: then a copy is repaired and verified, and the file itself is
/// never written.
pub fn verify_file(path: &Path, genesis: &ValidatorSet) -> Result<VerifyReport, VerifyError> {
    // The file is never trusted as it is: redb reads a damaged file with
    // `unreachable!` panics (fuzzing found two), so a copy is opened with
    // redb's integrity check first (which also repairs a file a crash left
    // unclean) and the chain is read from the checked copy.
    let open = |e: String| VerifyError::Open(format!("{}: {e}", path.display()));
    let copy = std::env::temp_dir().join(format!(
        "bulwark-verify-{}-{}.redb",
        std::process::id(),
        blake3::hash(path.as_os_str().as_encoded_bytes()).to_hex()
    ));
    std::fs::copy(path, &copy).map_err(|e| open(format!("copy: {e}")))?;
    let checked = redb::Database::builder()
        .set_check_integrity_on_open(true)
        .open(&copy)
        .map(drop)
        .map_err(|e| open(format!("integrity check: {e}")))
        .and_then(|()| verify_open(&copy, genesis));
    let _ = std::fs::remove_file(&copy);
    checked
}

fn verify_open(path: &Path, genesis: &ValidatorSet) -> Result<VerifyReport, VerifyError> {
    let open = |e: String| VerifyError::Open(format!("{}: {e}", path.display()));
    let db = redb::ReadOnlyDatabase::open(path).map_err(|e| open(e.to_string()))?;
    let tx = db.begin_read().map_err(|e| open(e.to_string()))?;
    let empty = VerifyReport {
        entries: 0,
        head: GENESIS,
        epochs: vec![std::sync::Arc::new(genesis.clone())],
    };
    let table = match tx.open_table(LEDGER) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(empty),
        Err(e) => return Err(open(e.to_string())),
    };
    let certs = match tx.open_table(LEDGER_CERTS) {
        Ok(c) => Some(c),
        Err(TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(open(e.to_string())),
    };
    let iter = table.iter().map_err(|e| open(e.to_string()))?;
    let rows = iter.map(|row| match row {
        Ok((k, v)) => {
            let h = k.value();
            let cert = match certs.as_ref().map(|c| c.get(h)) {
                Some(Ok(Some(c))) => {
                    codec::decode_limited::<Certificate>(c.value(), CERTIFICATE_LEN_MAX)
                        .map_err(|e| format!("stored certificate does not decode: {e}"))
                }
                Some(Ok(None)) | None => Err("no certificate stored".to_string()),
                Some(Err(e)) => Err(format!("read failed: {e}")),
            };
            (
                h,
                cert.map(|cert| FinalEntry {
                    entry: v.value().to_vec(),
                    cert,
                }),
            )
        }
        Err(e) => (u64::MAX, Err(format!("read failed: {e}"))),
    });
    Ok(verify_chain(rows, genesis)?)
}

/// A validator batch, encoded: own votes `(height, vote, pending entry)`,
/// final entries `(height, entry, certificate)` in height order, evidence.
#[derive(Default)]
struct Encoded {
    votes: Vec<(u64, Vec<u8>, Vec<u8>)>,
    finals: Vec<(u64, Vec<u8>, Vec<u8>)>,
    evidence: Vec<Vec<u8>>,
}

impl Encoded {
    fn is_empty(&self) -> bool {
        self.votes.is_empty() && self.finals.is_empty() && self.evidence.is_empty()
    }

    /// Writes the batch in `tx`: final entries drop the votes and pending
    /// entries they settle; evidence beyond [`EVIDENCE_ROWS_MAX`] drops the
    /// oldest. Final entries that do not extend the ledger by one are
    /// refused before anything is written (`Ok(Err(reason))`).
    fn put(
        &self,
        s: &Store,
        tx: &redb::WriteTransaction,
    ) -> Result<Result<(), String>, StorageError> {
        let mut lt = tx.open_table(LEDGER).map_err(|e| s.redb(e))?;
        if let Some(first) = self.finals.first() {
            let head = lt
                .last()
                .map_err(|e| s.redb(e))?
                .map_or(0, |(k, _)| k.value());
            if head + 1 != first.0 {
                return Ok(Err(format!(
                    "final entries from height {} do not extend the ledger at {head}",
                    first.0
                )));
            }
        }
        let mut vt = tx.open_table(BFT_VOTES).map_err(|e| s.redb(e))?;
        let mut pt = tx.open_table(BFT_PENDING).map_err(|e| s.redb(e))?;
        for (h, vote, pending) in &self.votes {
            vt.insert(*h, vote.as_slice()).map_err(|e| s.redb(e))?;
            pt.insert(*h, pending.as_slice()).map_err(|e| s.redb(e))?;
        }
        if let Some(last) = self.finals.last() {
            let mut ct = tx.open_table(LEDGER_CERTS).map_err(|e| s.redb(e))?;
            for (h, entry, cert) in &self.finals {
                lt.insert(*h, entry.as_slice()).map_err(|e| s.redb(e))?;
                ct.insert(*h, cert.as_slice()).map_err(|e| s.redb(e))?;
            }
            vt.retain_in(..=last.0, |_, _| false)
                .map_err(|e| s.redb(e))?;
            pt.retain_in(..=last.0, |_, _| false)
                .map_err(|e| s.redb(e))?;
        }
        if !self.evidence.is_empty() {
            let mut t = tx.open_table(EVIDENCE).map_err(|e| s.redb(e))?;
            let mut next = t
                .last()
                .map_err(|e| s.redb(e))?
                .map_or(0, |(k, _)| k.value() + 1);
            for b in &self.evidence {
                t.insert(next, b.as_slice()).map_err(|e| s.redb(e))?;
                next += 1;
            }
            if t.len().map_err(|e| s.redb(e))? > EVIDENCE_ROWS_MAX {
                let keep_from = next.saturating_sub(EVIDENCE_ROWS_MAX);
                t.retain_in(..keep_from, |_, _| false)
                    .map_err(|e| s.redb(e))?;
            }
        }
        Ok(Ok(()))
    }
}
