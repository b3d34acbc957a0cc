//! Backups of a facility's redb file: consistent snapshots
//! ([`Store::backup_to`]) named by the time they were taken,
//! `bulwark-<unix ms>.redb`, kept up to a count; restore picks the newest
//! at or before a point in time and puts it in place of the store, moving
//! the old file aside.
//!
//! A restored facility starts from the backup's state and catches up from
//! its peers (Raft sends it the entries, or a snapshot, it lacks). What a
//! restore can and cannot promise is in docs/DECISIONS.md ("Backup and
//! restore").

use std::path::{Path, PathBuf};

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
    /// When it was taken (unix ms), from its name.
    pub at_unix_ms: u64,
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
        let Some(ms) = name
            .to_str()
            .and_then(|n| n.strip_prefix("bulwark-"))
            .and_then(|n| n.strip_suffix(".redb"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push(Backup {
            path: e.path(),
            at_unix_ms: ms,
        });
    }
    out.sort_by_key(|b| b.at_unix_ms);
    Ok(out)
}

/// Takes a backup of `store` into `plan.dir` stamped `now_unix_ms`, then
/// deletes all but the newest `plan.keep`.
pub fn take(
    store: &Store,
    plan: &BackupPlan,
    now_unix_ms: u64,
) -> Result<(Backup, BackupInfo), BackupError> {
    std::fs::create_dir_all(&plan.dir).map_err(io(&plan.dir))?;
    let path = plan.dir.join(format!("bulwark-{now_unix_ms:013}.redb"));
    let info = store.backup_to(&path)?;
    let all = list(&plan.dir)?;
    let excess = all.len().saturating_sub(plan.keep.max(1));
    for old in &all[..excess] {
        std::fs::remove_file(&old.path).map_err(io(&old.path))?;
    }
    metrics::counter!("bulwark_backups_total", "facility" => store.facility().to_string())
        .increment(1);
    Ok((
        Backup {
            path,
            at_unix_ms: now_unix_ms,
        },
        info,
    ))
}

/// The newest backup in `dir` taken at or before `at_unix_ms` (`None`:
/// the newest of all).
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

/// Puts `backup` in place of the store at `db` for `facility` (the node
/// must be stopped: redb locks the file). The backup is first opened with
/// the integrity check and must belong to `facility`; the current file, if
/// any, is moved to `<db>.before-restore-<now>`. Returns that path.
pub fn restore(
    backup: &Path,
    db: &Path,
    facility: &str,
    now_unix_ms: u64,
) -> Result<Option<PathBuf>, BackupError> {
    drop(Store::open(backup, facility)?);
    if let Some(dir) = db.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut staged = db.as_os_str().to_owned();
    staged.push(".restoring");
    let staged = PathBuf::from(staged);
    std::fs::copy(backup, &staged).map_err(io(&staged))?;
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
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_keeps_picks_and_restores() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data/bulwark.redb");
        std::fs::create_dir_all(db.parent().unwrap()).unwrap();
        let store = Store::open(&db, "alpha").unwrap().store;
        let plan = BackupPlan {
            dir: dir.path().join("backups"),
            keep: 2,
        };
        for (i, t) in [1_000u64, 2_000, 3_000].into_iter().enumerate() {
            store.put_state("n", &(i as u64)).unwrap();
            take(&store, &plan, t).unwrap();
        }
        let kept: Vec<u64> = list(&plan.dir)
            .unwrap()
            .iter()
            .map(|b| b.at_unix_ms)
            .collect();
        assert_eq!(kept, vec![2_000, 3_000]);
        assert_eq!(pick(&plan.dir, None).unwrap().at_unix_ms, 3_000);
        assert_eq!(pick(&plan.dir, Some(2_999)).unwrap().at_unix_ms, 2_000);
        assert!(matches!(
            pick(&plan.dir, Some(1_500)),
            Err(BackupError::NotFound(_))
        ));
        store.put_state("n", &99u64).unwrap();
        drop(store);
        // Point in time 2_500: the backup of 2_000, where n was 1.
        let b = pick(&plan.dir, Some(2_500)).unwrap();
        // Another facility's backup is refused and changes nothing.
        assert!(restore(&b.path, &db, "bravo", 5).is_err());
        let aside = restore(&b.path, &db, "alpha", 7).unwrap().unwrap();
        assert!(aside.ends_with("bulwark.redb.before-restore-7"));
        let store = Store::open(&db, "alpha").unwrap().store;
        assert_eq!(store.get_state::<u64>("n").unwrap(), Some(1));
    }
}
