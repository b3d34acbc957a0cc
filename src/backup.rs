//! Backups of a facility's redb file. A backup is taken at a
//! **checkpoint** ([`Op::Checkpoint`](bulwark_actors::schedule::Op)): a
//! command through consensus that every facility, when it applies it,
//! follows with a copy of its store as it stands right after it
//! ([`Checkpoints::sink`]). So every facility's backup of one checkpoint
//! holds the same committed index, and restoring each from it gives a
//! cluster whose logs agree (restore cuts each log at that index:
//! [`restore`]). Files are named by the checkpoint's agreed time and index,
//! `bulwark-<unix ms>-<index>.redb`, kept up to a count; restore picks one
//! by index or by time.
//!
//! What a restore can and cannot promise is in docs/DECISIONS.md ("Backup
//! and restore").

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bulwark_actors::cap::gate::{GateMsg, GateOutcome, CAP_GATE};
use bulwark_actors::hlc::Hlc;
use bulwark_actors::raft::{ProposeOutcome, RaftMsg, RAFT};
use bulwark_actors::schedule::{Command, IdempotencyKey, Op, Outcome};
use bulwark_runtime::{NodeCtx, Zone};

use bulwark_actors::raft::{Fence, RaftStore};
use bulwark_actors::replica::{Checkpoint, CheckpointSink, Replica};
use bulwark_storage::{BackupInfo, StorageError, Store};

/// Where backups go and how many are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPlan {
    /// The directory.
    pub dir: PathBuf,
    /// Backups kept; older ones are deleted after each new one.
    pub keep: usize,
}

/// One backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The file.
    pub path: PathBuf,
    /// When it was taken (unix ms; a checkpoint's agreed time), from its
    /// name.
    pub at_unix_ms: u64,
    /// The checkpoint's index, from its name (`None`: a backup taken
    /// before checkpoints existed, at no agreed index).
    pub index: Option<u64>,
}

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// No backup matches.
    #[error("{0}")]
    NotFound(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The backups in `dir`, oldest first (files not named by [`take`] are
/// ignored).
pub fn list(dir: &Path) -> Result<Vec<Backup>, BackupError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(dir)(e)),
    };
    for e in entries {
        let e = e.map_err(io(dir))?;
        let name = e.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|n| n.strip_prefix("bulwark-"))
            .and_then(|n| n.strip_suffix(".redb"))
        else {
            continue;
        };
        let (ms, index) = match stem.split_once('-') {
            Some((ms, index)) => (ms.parse::<u64>().ok(), index.parse::<u64>().ok().map(Some)),
            None => (stem.parse::<u64>().ok(), Some(None)),
        };
        let (Some(ms), Some(index)) = (ms, index) else {
            continue;
        };
        out.push(Backup {
            path: e.path(),
            at_unix_ms: ms,
            index,
        });
    }
    // Checkpoints in index order (their agreed times come from the
    // proposers' clocks and may step back across leaders); files from
    // before checkpoints first, by time.
    out.sort_by_key(|b| (b.index.is_some(), b.index, b.at_unix_ms));
    Ok(out)
}

/// The file name of checkpoint `index` taken at `at_unix_ms`.
pub fn checkpoint_name(at_unix_ms: u64, index: u64) -> String {
    format!("bulwark-{at_unix_ms:013}-{index:012}.redb")
}

/// Writes checkpoint `cp` into `plan.dir`, then deletes all but the
/// newest `plan.keep` backups.
pub fn write_checkpoint(
    cp: &Checkpoint,
    plan: &BackupPlan,
) -> Result<(Backup, BackupInfo), BackupError> {
    std::fs::create_dir_all(&plan.dir).map_err(io(&plan.dir))?;
    let path = plan.dir.join(checkpoint_name(cp.at_unix_ms, cp.index));
    let info = cp.store.backup_from(&cp.source, &path)?;
    let all = list(&plan.dir)?;
    let excess = all.len().saturating_sub(plan.keep.max(1));
    for old in &all[..excess] {
        match std::fs::remove_file(&old.path) {
            // Another checkpoint's thread trimmed it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other.map_err(io(&old.path))?,
        }
    }
    metrics::counter!("bulwark_backups_total", "facility" => cp.store.facility().to_string())
        .increment(1);
    Ok((
        Backup {
            path,
            at_unix_ms: cp.at_unix_ms,
            index: Some(cp.index),
        },
        info,
    ))
}

/// How writing one checkpoint's backup ended.
pub type Written = Result<(Backup, BackupInfo), String>;

/// This facility's checkpoint backups: the sink the machine hands each
/// checkpoint to (written on a thread of its own), and what was written,
/// for the API to wait on.
#[derive(Debug)]
pub struct Checkpoints {
    plan: BackupPlan,
    written: Mutex<BTreeMap<u64, Written>>,
    notify: tokio::sync::Notify,
}

/// Outcomes of recent checkpoints kept for [`Checkpoints::wait`].
const WRITTEN_KEPT: usize = 64;

impl Checkpoints {
    /// Checkpoints backed up into `plan`.
    pub fn new(plan: BackupPlan) -> Arc<Checkpoints> {
        Arc::new(Checkpoints {
            plan,
            written: Mutex::new(BTreeMap::new()),
            notify: tokio::sync::Notify::new(),
        })
    }

    /// Where backups go.
    pub fn plan(&self) -> &BackupPlan {
        &self.plan
    }

    /// The sink for the schedule machine: each checkpoint is written on a
    /// new thread (the applying task goes on; the read transaction keeps
    /// the checkpoint's state meanwhile).
    pub fn sink(self: &Arc<Self>) -> CheckpointSink {
        let me = self.clone();
        CheckpointSink(Arc::new(move |cp: Checkpoint| {
            let me2 = me.clone();
            let index = cp.index;
            let spawned = std::thread::Builder::new()
                .name("bulwark-checkpoint".into())
                .spawn(move || {
                    let out = write_checkpoint(&cp, &me2.plan).map_err(|e| e.to_string());
                    match &out {
                        Ok((b, info)) => tracing::info!(
                            index = cp.index,
                            path = %b.path.display(),
                            rows = info.rows,
                            bytes = info.bytes,
                            "checkpoint backed up"
                        ),
                        Err(e) => tracing::error!(index = cp.index, error = %e, "checkpoint backup failed"),
                    }
                    drop(cp);
                    me2.record(index, out);
                });
            if let Err(e) = spawned {
                me.record(index, Err(format!("cannot start the backup thread: {e}")));
            }
        }))
    }

    fn record(&self, index: u64, out: Written) {
        let mut w = self.written.lock().expect("checkpoints lock");
        w.insert(index, out);
        while w.len() > WRITTEN_KEPT {
            w.pop_first();
        }
        drop(w);
        self.notify.notify_waiters();
    }

    /// How checkpoint `index`'s backup ended here, waiting until `deadline`
    /// for it (`None`: not written by then).
    pub async fn wait(&self, index: u64, deadline: tokio::time::Instant) -> Option<Written> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(w) = self.written.lock().expect("checkpoints lock").get(&index) {
                return Some(w.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// The key of the scheduled checkpoint of period `period` (unix ms /
/// the interval): two facilities that both believe they lead in one
/// period commit one checkpoint.
pub fn scheduled_key(period: u64) -> IdempotencyKey {
    let h = blake3::hash(format!("bulwark checkpoint {period}").as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.as_bytes()[..16]);
    IdempotencyKey(k)
}

/// A scheduled checkpoint: proposed by the leader only (a follower's
/// timer does nothing), under [`scheduled_key`]. Returns the committed
/// index, or `None` when this facility does not lead.
pub async fn scheduled_round(
    ctx: &NodeCtx,
    period: u64,
    timeout: Duration,
) -> Result<Option<u64>, String> {
    let raft = ctx
        .find::<RaftMsg>(Zone::Consensus, RAFT)
        .ok_or("the RaftPeer is not running")?;
    let gate = ctx
        .find::<GateMsg>(Zone::Detection, CAP_GATE)
        .ok_or("the CAP gate is not running")?;
    let status = raft
        .call(RaftMsg::Status, Some(timeout))
        .await
        .map_err(|e| e.to_string())?
        .success_or("the RaftPeer did not answer in time")?;
    if !status.is_leader {
        return Ok(None);
    }
    let command = Command {
        key: scheduled_key(period),
        issued_by: ctx.facility.clone(),
        at_unix_ms: ctx.clock.unix_ms(),
        hlc: Hlc::ZERO,
        op: Op::Checkpoint,
    };
    let outcome = gate
        .call(
            |reply| GateMsg::Submit {
                command,
                emergency: false,
                deadline: Some(tokio::time::Instant::now() + timeout),
                reply,
            },
            Some(timeout),
        )
        .await
        .map_err(|e| e.to_string())?
        .success_or("the CAP gate did not answer in time")?;
    match outcome {
        GateOutcome::Consensus(ProposeOutcome::Committed {
            index,
            outcome: Outcome::Applied(_),
            ..
        }) => Ok(Some(index)),
        other => Err(format!("checkpoint: {other:?}")),
    }
}

/// The backup of checkpoint `index` in `dir`.
pub fn pick_index(dir: &Path, index: u64) -> Result<Backup, BackupError> {
    list(dir)?
        .into_iter()
        .find(|b| b.index == Some(index))
        .ok_or_else(|| {
            BackupError::NotFound(format!(
                "no backup of checkpoint {index} in {}",
                dir.display()
            ))
        })
}

/// The newest backup in `dir` (the highest checkpoint index) taken at or
/// before `at_unix_ms` (`None`: the newest of all).
pub fn pick(dir: &Path, at_unix_ms: Option<u64>) -> Result<Backup, BackupError> {
    list(dir)?
        .into_iter()
        .rev()
        .find(|b| at_unix_ms.is_none_or(|t| b.at_unix_ms <= t))
        .ok_or_else(|| {
            BackupError::NotFound(match at_unix_ms {
                Some(t) => format!("no backup in {} taken at or before {t}", dir.display()),
                None => format!("no backup in {}", dir.display()),
            })
        })
}

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Where the previous file went, if there was one.
    pub aside: Option<PathBuf>,
    /// The restored store's applied index: its Raft log now ends there.
    pub index: u64,
    /// Log entries after it that were dropped.
    pub dropped: u64,
}

/// Puts `backup` in place of the store at `db` for `facility` (the node
/// must be stopped: redb locks the file). The backup is first opened with
/// the integrity check and must belong to `facility`. The copy's Raft log
/// is then cut at its applied index, the commit index brought down to it
/// ([`RaftStore::rewind_to`]): restored from one checkpoint, every
/// facility's log ends at that checkpoint. The current file, if any, is
/// moved to `<db>.before-restore-<now>`. Nothing changes unless every step
/// before the final rename succeeded.
///
/// With `fence`, the restored store is also vote-fenced for good with that
/// reason: restored into a running cluster, it has forgotten the votes it
/// cast since the backup, so it follows and catches up but never votes
/// under its identity again (`bulwark member replace` gives it a new one).
pub fn restore(
    backup: &Path,
    db: &Path,
    facility: &str,
    now_unix_ms: u64,
    fence: Option<String>,
) -> Result<Restored, BackupError> {
    drop(Store::open(backup, facility)?);
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut staged = db.as_os_str().to_owned();
    staged.push(".restoring");
    let staged = PathBuf::from(staged);
    std::fs::copy(backup, &staged).map_err(io(&staged))?;
    let (index, dropped) = {
        let store = Store::open(&staged, facility)?.store;
        let index = Replica::open(store.clone())?.applied();
        let (mut raft, _) = RaftStore::open(store, None)?;
        let dropped = raft.rewind_to(index)?;
        if let Some(reason) = fence {
            raft.set_fence(Some(&Fence::Refused(reason)))?;
            // Another store than the one backed up (which may have gone on
            // to take a replacement and vote under it).
            raft.renew_store_id(rand::random())?;
        }
        (index, dropped)
    };
    std::fs::File::open(&staged)
        .and_then(|f| f.sync_all())
        .map_err(io(&staged))?;
    let aside = if db.exists() {
        let mut a = db.as_os_str().to_owned();
        a.push(format!(".before-restore-{now_unix_ms}"));
        let a = PathBuf::from(a);
        std::fs::rename(db, &a).map_err(io(db))?;
        Some(a)
    } else {
        None
    };
    std::fs::rename(&staged, db).map_err(io(db))?;
    Ok(Restored {
        aside,
        index,
        dropped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    fn checkpoint(store: &Store, index: u64, at_unix_ms: u64) -> Checkpoint {
        Checkpoint {
            index,
            term: 1,
            at_unix_ms,
            source: store.database().begin_read().unwrap(),
            store: store.clone(),
        }
    }

    #[test]
    fn writes_keeps_picks_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/bulwark.redb");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let store = Store::open(&db, "alpha").unwrap().store;
        let plan = BackupPlan {
            dir: dir.path().join("backups"),
            keep: 2,
        };
        for (i, (t, index)) in [(1_000u64, 5u64), (2_000, 9), (3_000, 12)]
            .into_iter()
            .enumerate()
        {
            store.put_state("n", &(i as u64)).unwrap();
            let cp = checkpoint(&store, index, t);
            // Written after later changes: the backup is the state at the
            // checkpoint's read, not at the write.
            store.put_state("n", &77u64).unwrap();
            write_checkpoint(&cp, &plan).unwrap();
        }
        // A backup from before checkpoints (no index in its name) is listed
        // too; a stray file is not.
        store
            .backup_to(&plan.dir.join("bulwark-0000000000500.redb"))
            .unwrap();
        std::fs::write(plan.dir.join("bulwark-x-1.redb"), b"junk").unwrap();
        let kept: Vec<(u64, Option<u64>)> = list(&plan.dir)
            .unwrap()
            .iter()
            .map(|b| (b.at_unix_ms, b.index))
            .collect();
        assert_eq!(kept, vec![(500, None), (2_000, Some(9)), (3_000, Some(12))]);
        assert_eq!(pick(&plan.dir, None).unwrap().index, Some(12));
        assert_eq!(pick(&plan.dir, Some(2_999)).unwrap().index, Some(9));
        assert_eq!(pick_index(&plan.dir, 9).unwrap().at_unix_ms, 2_000);
        assert!(matches!(
            pick_index(&plan.dir, 5),
            Err(BackupError::NotFound(_))
        ));
        assert!(matches!(
            pick(&plan.dir, Some(400)),
            Err(BackupError::NotFound(_))
        ));
        drop(store);
        let b = pick_index(&plan.dir, 9).unwrap();
        // Another facility's backup is refused and changes nothing.
        assert!(restore(&b.path, &db, "bravo", 5, None).is_err());
        let store = Store::open(&db, "alpha").unwrap().store;
        assert_eq!(store.get_state::<u64>("n").unwrap(), Some(77));
        drop(store);
        let r = restore(&b.path, &db, "alpha", 7, None).unwrap();
        assert!(r.aside.unwrap().ends_with("bulwark.redb.before-restore-7"));
        assert_eq!((r.index, r.dropped), (0, 0), "a store with no Raft state");
        let store = Store::open(&db, "alpha").unwrap().store;
        assert_eq!(store.get_state::<u64>("n").unwrap(), Some(1));
    }

    /// The sink writes on a thread of its own and the API's wait sees it;
    /// an index never checkpointed times out.
    #[tokio::test]
    async fn the_sink_writes_and_the_wait_sees_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("f.redb"), "alpha")
            .unwrap()
            .store;
        let cps = Checkpoints::new(BackupPlan {
            dir: dir.path().join("backups"),
            keep: 4,
        });
        (cps.sink().0)(checkpoint(&store, 42, 1_234));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        let (b, _) = cps.wait(42, deadline).await.unwrap().unwrap();
        assert_eq!(b.path, cps.plan().dir.join(checkpoint_name(1_234, 42)));
        assert!(b.path.exists());
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(1);
        assert!(cps.wait(43, soon).await.is_none());
    }
}
