//! The facility's redb file.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::schema::{self, FORMAT_VERSION, META, META_CLUSTER, META_FACILITY, META_FORMAT};
use crate::{codec, DiskFaults, StorageError};

/// A facility's durable store: one redb file, cheap to clone, safe to share.
///
/// Every write commits with [`Durability::Immediate`]: when a write method
/// returns `Ok`, the data is on disk. The calls block the calling thread for
/// the length of one redb transaction; actors call them from their handlers,
/// which is the point (the reply leaves only after the fsync).
///
/// Each store owns the [`DiskFaults`] that tests and chaos experiments
/// inject into it ([`Store::disk_faults`]); they start clear.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    facility: String,
    faults: DiskFaults,
    /// Durable write transactions begun.
    durable_writes: std::sync::atomic::AtomicU64,
    /// Writes waiting for the next durable commit ([`Store::stage`]).
    staged: std::sync::Mutex<std::collections::VecDeque<(u64, StagedWrite)>>,
    /// The last ticket handed out.
    staged_next: std::sync::atomic::AtomicU64,
    /// The highest ticket committed durably, watched by the writers that
    /// staged them.
    staged_through: tokio::sync::watch::Sender<u64>,
    /// Times staged writes were dropped unwritten.
    staged_drops: std::sync::atomic::AtomicU64,
    /// Held from the moment a durable commit takes the staged writes until
    /// their fate is published, so that [`Store::drop_staged`] never races
    /// a commit that holds some of them.
    staged_commit: std::sync::Mutex<()>,
}

/// A write staged to ride the next durable commit ([`Store::stage`]).
/// It is handed the store it was staged on (a staged write that held a
/// clone of the store would keep the file open after its last user let
/// go) and answers `Ok(Ok(()))` when written, `Ok(Err(reason))` when it
/// refuses before writing anything (it is dropped, and the commit goes
/// on without it), or `Err` for a failure of the transaction itself.
pub type StagedWrite = Arc<
    dyn Fn(&Store, &redb::WriteTransaction) -> Result<Result<(), String>, StorageError>
        + Send
        + Sync,
>;

/// The result of [`Store::open`].
#[derive(Debug)]
pub struct Opened {
    /// The open store.
    pub store: Store,
    /// `true` when the file did not exist and was created by this call.
    /// A facility that expected history and finds a fresh store must not
    /// rejoin consensus as a voter on its own say-so.
    pub fresh: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("facility", &self.inner.facility)
            .finish()
    }
}

impl Store {
    /// Opens the store at `path` for `facility`, creating it only if no file
    /// is there.
    ///
    /// An existing file that is empty, truncated, damaged, written by
    /// something other than bulwark, or owned by another facility is refused
    /// with a [`StorageError`] that names it; nothing is written to it.
    pub fn open(path: &Path, facility: &str) -> Result<Opened, StorageError> {
        let path_buf = path.to_path_buf();
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.len() == 0 {
                    return Err(StorageError::Corrupt {
                        path: path_buf,
                        reason: "the file is empty".into(),
                    });
                }
                let db = checked_builder()
                    .open(path)
                    .map_err(|e| open_error(path, e))?;
                Ok(Opened {
                    store: Store::existing(db, path_buf, facility)?,
                    fresh: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Created under a temporary name and renamed into place
                // once its meta table is durable: a crash while creating
                // leaves nothing at `path` (the next start is fresh again),
                // never a file every later open refuses.
                let tmp = creating_path(path);
                let _ = std::fs::remove_file(&tmp);
                let db = cached_builder()
                    .create(&tmp)
                    .map_err(|e| open_error(&tmp, e))?;
                drop(Store::initialized(db, tmp.clone(), facility)?);
                let io = |source| StorageError::Io {
                    path: path_buf.clone(),
                    source,
                };
                std::fs::rename(&tmp, path).map_err(io)?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(io)?;
                }
                let db = cached_builder()
                    .create(path)
                    .map_err(|e| open_error(path, e))?;
                Ok(Opened {
                    store: Store::existing(db, path_buf, facility)?,
                    fresh: true,
                })
            }
            Err(source) => Err(StorageError::Io {
                path: path_buf,
                source,
            }),
        }
    }

    /// Opens the store held by `backend` for `facility`, creating it when
    /// the backend is empty: [`Store::open`] over any redb
    /// [`StorageBackend`](redb::StorageBackend) instead of a file (an
    /// in-memory store, an embedder's own storage, a test backend that
    /// injects crashes).
    ///
    /// - An empty backend (length 0) gets a new store: the database is
    ///   created on it and the meta tables are written as [`Store::open`]
    ///   writes them, in one durable transaction; `fresh` is `true`.
    /// - A non-empty backend is opened with redb's integrity check (the
    ///   whole backend is read once) and its meta tables are checked as
    ///   [`Store::open`] checks them: a damaged backend, one that does not
    ///   hold a bulwark store, or one that holds another facility's store is
    ///   refused with the same typed [`StorageError`]s, and no table of it
    ///   is written; `fresh` is `false`.
    ///
    /// `label` names the backend wherever a path would name the file: in
    /// every error (the `path` field of [`StorageError`]) and as
    /// [`Store::path`].
    ///
    /// Creation is **not** crash-safe here: [`Store::open`] builds a new
    /// store under a temporary name and renames it into place, and a
    /// backend has no rename. A crash while an empty backend is being
    /// created (before its meta tables commit) can leave a backend that
    /// every later open refuses with a typed error ([`StorageError::Corrupt`],
    /// [`StorageError::Foreign`] or [`StorageError::Redb`]), never a
    /// panic. Create stores on a backend when nothing is at stake yet (an
    /// embedder's first start, a test's set-up), or recreate the backend
    /// from scratch when that open is refused.
    pub fn open_backend<B: redb::StorageBackend>(
        backend: B,
        label: &Path,
        facility: &str,
    ) -> Result<Opened, StorageError> {
        let len = backend.len().map_err(|source| StorageError::Io {
            path: label.to_path_buf(),
            source,
        })?;
        if len == 0 {
            let db = cached_builder()
                .create_with_backend(backend)
                .map_err(|e| open_error(label, e))?;
            let store = Store::initialized(db, label.to_path_buf(), facility)?;
            store.check_meta()?;
            return Ok(Opened { store, fresh: true });
        }
        // `create_with_backend` only creates on an empty backend, which
        // this one is not: it opens the store there, or refuses it.
        let db = checked_builder()
            .create_with_backend(backend)
            .map_err(|e| open_error(label, e))?;
        Ok(Opened {
            store: Store::existing(db, label.to_path_buf(), facility)?,
            fresh: false,
        })
    }

    /// The facility that owns the existing store at `path` (checked as
    /// [`Store::open`] checks it; nothing is created or written).
    pub fn owner(path: &Path) -> Result<String, StorageError> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
        // No facility id is empty: the check names the recorded owner.
        match Store::open(path, "") {
            Err(StorageError::WrongFacility { found, .. }) => Ok(found),
            Err(e) => Err(e),
            Ok(_) => Err(StorageError::Foreign {
                path: path.to_path_buf(),
                reason: "no owning facility".into(),
            }),
        }
    }

    fn wrap(db: Database, path: PathBuf, facility: &str) -> Store {
        Store {
            inner: Arc::new(Inner {
                db,
                path,
                facility: facility.to_string(),
                faults: DiskFaults::default(),
                durable_writes: std::sync::atomic::AtomicU64::new(0),
                staged: std::sync::Mutex::new(std::collections::VecDeque::new()),
                staged_next: std::sync::atomic::AtomicU64::new(0),
                staged_through: tokio::sync::watch::Sender::new(0),
                staged_drops: std::sync::atomic::AtomicU64::new(0),
                staged_commit: std::sync::Mutex::new(()),
            }),
        }
    }

    /// `db`, just created, as a new store of `facility`: its meta tables
    /// and every table of the schema written in one durable transaction.
    fn initialized(db: Database, path: PathBuf, facility: &str) -> Result<Store, StorageError> {
        let store = Store::wrap(db, path, facility);
        store.init_meta()?;
        Ok(store)
    }

    /// `db`, an existing database, as `facility`'s store once its meta
    /// tables say it is one.
    fn existing(db: Database, path: PathBuf, facility: &str) -> Result<Store, StorageError> {
        let store = Store::wrap(db, path, facility);
        store.check_meta()?;
        Ok(store)
    }

    /// The file this store lives in (for a store opened with
    /// [`Store::open_backend`], the label it was given).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The facility that owns this store.
    pub fn facility(&self) -> &str {
        &self.inner.facility
    }

    /// The underlying database, for crates that keep their own tables from
    /// [`schema`]. Commit with [`Store::begin_write`] so durability is uniform.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The disk faults injected into this store (shared by every clone).
    pub fn disk_faults(&self) -> &DiskFaults {
        &self.inner.faults
    }

    /// Begins a write transaction that commits durably.
    ///
    /// Every durable write of every table starts here, so this is where an
    /// injected write failure refuses it: with the probability in force it
    /// returns [`StorageError::Injected`] before a transaction exists, and
    /// nothing is written.
    ///
    /// Each one is counted in `bulwark_store_durable_writes_total` (labelled
    /// by facility): a committed one costs one fsync, so this counter over
    /// `bulwark_raft_applied_batches_total` is the fsyncs per committed
    /// batch.
    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        let tx = self.begin(Durability::Immediate)?;
        self.inner
            .durable_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!("bulwark_store_durable_writes_total", "facility" => self.inner.facility.clone())
            .increment(1);
        Ok(tx)
    }

    /// Durable write transactions begun on this store since it was opened
    /// (the per-store figure behind `bulwark_store_durable_writes_total`).
    pub fn durable_writes(&self) -> u64 {
        self.inner
            .durable_writes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stages `write` to ride the next durable commit of this store
    /// ([`Store::commit_durable`]): it is run inside that transaction, just
    /// before it commits, so what it writes becomes visible and durable at
    /// once, in the same fsync as that commit's own rows. Staged writes run
    /// in staging order. Returns the write's ticket, durable once
    /// [`Store::is_staged_durable`] says so. A write must only insert or
    /// remove rows it owns; it may be run again (when a commit that ran it
    /// failed), so it must not consume what it writes.
    pub fn stage(&self, write: StagedWrite) -> u64 {
        let mut q = self.staged();
        let ticket = self
            .inner
            .staged_next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        q.push_back((ticket, write));
        ticket
    }

    fn staged(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, StagedWrite)>> {
        self.inner.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits `tx`, which must be a durable transaction
    /// ([`Store::begin_write`]), with every staged write run into it first
    /// (one fsync for all). On success the staged writes' tickets are
    /// durable. A staged write that refuses (before writing anything) is
    /// dropped, counted by [`Store::staged_drops`] and
    /// `bulwark_store_staged_dropped_total`, and the commit goes on: a bad
    /// staged write never fails the caller's own rows. If the transaction
    /// itself fails, the staged writes go back to the front of the queue
    /// for the next durable commit.
    pub fn commit_durable(&self, tx: redb::WriteTransaction) -> Result<(), StorageError> {
        let _fate = self
            .inner
            .staged_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let taken: Vec<(u64, StagedWrite)> = self.staged().drain(..).collect();
        let requeue = |taken: Vec<(u64, StagedWrite)>| {
            let mut q = self.staged();
            for item in taken.into_iter().rev() {
                q.push_front(item);
            }
        };
        let mut refused = 0u64;
        for (_, write) in &taken {
            match write(self, &tx) {
                Ok(Ok(())) => {}
                Ok(Err(_reason)) => refused += 1,
                Err(e) => {
                    requeue(taken);
                    return Err(e);
                }
            }
        }
        if let Err(e) = tx.commit() {
            requeue(taken);
            return Err(self.redb(e));
        }
        if refused > 0 {
            self.inner
                .staged_drops
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            metrics::counter!("bulwark_store_staged_dropped_total", "facility" => self.inner.facility.clone())
                .increment(refused);
        }
        if let Some((last, _)) = taken.last() {
            let last = *last;
            self.inner.staged_through.send_if_modified(|through| {
                let newer = last > *through;
                if newer {
                    *through = last;
                }
                newer
            });
        }
        Ok(())
    }

    /// Whether the staged write `ticket` is on disk, provided no staged
    /// write was dropped since it was staged: read this before
    /// [`Store::staged_drops`] (a drop is counted before any later commit
    /// can make a higher ticket durable).
    pub fn is_staged_durable(&self, ticket: u64) -> bool {
        *self.inner.staged_through.borrow() >= ticket
    }

    /// How many times staged writes were dropped unwritten (a staged write
    /// failed, or [`Store::drop_staged`]). A writer that sees this change
    /// must assume its pending staged writes are gone.
    pub fn staged_drops(&self) -> u64 {
        self.inner
            .staged_drops
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops every write still staged (a writer rebuilding its state from
    /// the store, which will stage them again), after any commit that took
    /// some of them has published their fate: once it returns, nothing
    /// staged before it will be written.
    pub fn drop_staged(&self) {
        let _fate = self
            .inner
            .staged_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.staged().clear();
        self.inner
            .staged_drops
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Changes whenever staged writes reach the disk.
    pub fn watch_staged(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.staged_through.subscribe()
    }

    /// One durable commit of the staged writes alone (one fsync), for a
    /// writer whose staged writes no other durable commit took in time.
    pub fn sync(&self) -> Result<(), StorageError> {
        let tx = self.begin_write()?;
        self.commit_durable(tx)
    }

    /// Begins a write transaction that commits without an fsync: visible
    /// at once, durable with the next durable commit of this file. redb
    /// keeps commit order, so a crash loses a suffix of deferred commits
    /// and never reorders them: what survives is always a prefix of the
    /// commits made. For writes that can be lost in a power loss because
    /// they can be rebuilt (applied state, from the durable log) or only
    /// cache an answer that is replicated elsewhere. Injected write
    /// failures refuse it like [`Store::begin_write`].
    pub fn begin_write_deferred(&self) -> Result<redb::WriteTransaction, StorageError> {
        self.begin(Durability::None)
    }

    fn begin(&self, durability: Durability) -> Result<redb::WriteTransaction, StorageError> {
        if self.inner.faults.refuse_write() {
            return Err(StorageError::Injected {
                path: self.inner.path.clone(),
            });
        }
        let mut tx = self.inner.db.begin_write().map_err(|e| self.redb(e))?;
        tx.set_durability(durability)
            .map_err(|e| self.redb(redb::Error::from(e)))?;
        Ok(tx)
    }

    /// Wraps a redb error with this store's path.
    pub fn redb(&self, e: impl Into<redb::Error>) -> StorageError {
        StorageError::Redb {
            path: self.inner.path.clone(),
            source: Box::new(e.into()),
        }
    }

    /// Durably stores `value` under `key` in the state table.
    pub fn put_state<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StorageError> {
        let bytes =
            codec::encode(value).map_err(|source| self.codec_error("state", key, source))?;
        let tx = self.begin_write()?;
        {
            let mut table = tx.open_table(schema::STATE).map_err(|e| self.redb(e))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| self.redb(e))?;
        }
        tx.commit().map_err(|e| self.redb(e))
    }

    /// Reads the value under `key` in the state table, if any.
    pub fn get_state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError> {
        let Some(bytes) = self.read_bytes(schema::STATE, key)? else {
            return Ok(None);
        };
        codec::decode(&bytes)
            .map(Some)
            .map_err(|source| self.codec_error("state", key, source))
    }

    /// Durably removes `key` from the state table. Returns whether it was there.
    pub fn delete_state(&self, key: &str) -> Result<bool, StorageError> {
        let tx = self.begin_write()?;
        let existed = {
            let mut table = tx.open_table(schema::STATE).map_err(|e| self.redb(e))?;
            let removed = table.remove(key).map_err(|e| self.redb(e))?;
            removed.is_some()
        };
        tx.commit().map_err(|e| self.redb(e))?;
        Ok(existed)
    }

    /// Every row of a `u64`-keyed table, in key order; a missing table
    /// reads as empty.
    pub fn rows(
        &self,
        table: TableDefinition<u64, &[u8]>,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let tx = self.inner.db.begin_read().map_err(|e| self.redb(e))?;
        let table = match tx.open_table(table) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.redb(e)),
        };
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.redb(e))? {
            let (k, v) = row.map_err(|e| self.redb(e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Writes a consistent snapshot of every table to a new redb file at
    /// `dest`: all tables are read in one read transaction (a point in
    /// time; writers go on meanwhile) and written in one durable commit to
    /// `dest` plus `.partial`, which is then renamed to `dest`, so `dest`
    /// is either absent or complete. Refuses to overwrite `dest`.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupInfo, StorageError> {
        let rx = self.inner.db.begin_read().map_err(|e| self.redb(e))?;
        self.backup_from(&rx, dest)
    }

    /// As [`Store::backup_to`], from a read transaction taken earlier (a
    /// point in time chosen by the caller: the state right after a given
    /// commit, while writers went on).
    pub fn backup_from(
        &self,
        rx: &redb::ReadTransaction,
        dest: &Path,
    ) -> Result<BackupInfo, StorageError> {
        let io = |source: std::io::Error| StorageError::Io {
            path: dest.to_path_buf(),
            source,
        };
        if dest.exists() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a backup is already there",
            )));
        }
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let _ = std::fs::remove_file(&partial);
        let out = Database::create(&partial).map_err(|e| open_error(&partial, e))?;
        let theirs = |e: redb::Error| StorageError::Redb {
            path: partial.clone(),
            source: Box::new(e),
        };
        let mut tx = out.begin_write().map_err(|e| theirs(e.into()))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| theirs(redb::Error::from(e)))?;
        let mut rows = 0u64;
        for t in schema::STR_TABLES {
            rows += copy_table(rx, &tx, t).map_err(|e| self.redb(e))?;
        }
        for t in schema::U64_TABLES {
            rows += copy_table(rx, &tx, t).map_err(|e| self.redb(e))?;
        }
        for t in schema::BYTES_TABLES {
            rows += copy_table(rx, &tx, t).map_err(|e| self.redb(e))?;
        }
        tx.commit().map_err(|e| theirs(e.into()))?;
        drop(out);
        std::fs::rename(&partial, dest).map_err(io)?;
        if let Some(dir) = dest.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        let bytes = std::fs::metadata(dest).map_err(io)?.len();
        Ok(BackupInfo { rows, bytes })
    }

    /// Reads raw bytes from a `&str`-keyed table; a missing table reads as empty.
    fn read_bytes(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let tx = self.inner.db.begin_read().map_err(|e| self.redb(e))?;
        let table = match tx.open_table(table) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(self.redb(e)),
        };
        let value = table.get(key).map_err(|e| self.redb(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Builds a codec error for a value at `table/key` in this file.
    pub fn codec_error(
        &self,
        table: &'static str,
        key: impl Display,
        source: crate::CodecError,
    ) -> StorageError {
        StorageError::Codec {
            path: self.inner.path.clone(),
            table,
            key: key.to_string(),
            source,
        }
    }

    /// The cluster the store at `path` was stamped with, without keeping
    /// it open; `None` when there is no store yet or it names none.
    pub fn stamped_cluster(path: &Path, facility: &str) -> Result<Option<[u8; 16]>, StorageError> {
        if !path.exists() {
            return Ok(None);
        }
        let opened = Store::open(path, facility)?;
        let s = &opened.store;
        let tx = s.inner.db.begin_read().map_err(|e| s.redb(e))?;
        let meta = tx.open_table(META).map_err(|e| s.redb(e))?;
        let v = meta.get(META_CLUSTER).map_err(|e| s.redb(e))?;
        Ok(v.and_then(|v| v.value().try_into().ok()))
    }

    /// Stamps `key` in the meta table of the store at `path` with `value`
    /// if it holds none (durably); answers the value it holds if that is
    /// another (nothing written then). No store at `path` yet: nothing is
    /// done (the next start stamps it).
    pub fn claim_stamp(
        path: &Path,
        facility: &str,
        key: &str,
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StorageError> {
        if !path.exists() {
            return Ok(None);
        }
        let opened = Store::open(path, facility)?;
        opened.store.claim_meta(key, value)
    }

    /// [`Store::claim_stamp`] on this open store.
    pub fn claim_meta(&self, key: &str, value: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let s = self;
        let held = {
            let tx = s.inner.db.begin_read().map_err(|e| s.redb(e))?;
            let meta = tx.open_table(META).map_err(|e| s.redb(e))?;
            let v = meta.get(key).map_err(|e| s.redb(e))?;
            v.map(|v| v.value().to_vec())
        };
        match held {
            Some(h) if h == value => Ok(None),
            Some(h) => Ok(Some(h)),
            None => {
                let tx = s.begin_write()?;
                {
                    let mut meta = tx.open_table(META).map_err(|e| s.redb(e))?;
                    meta.insert(key, value).map_err(|e| s.redb(e))?;
                }
                tx.commit().map_err(|e| s.redb(e))?;
                Ok(None)
            }
        }
    }

    /// Claims this store for `cluster`: a store that names none is stamped
    /// with it (durably); one that names another is refused
    /// ([`StorageError::WrongCluster`]) and nothing changes.
    pub fn claim_cluster(&self, cluster: &[u8; 16]) -> Result<(), StorageError> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let tx = self.inner.db.begin_read().map_err(|e| self.redb(e))?;
        let stored = {
            let meta = tx.open_table(META).map_err(|e| self.redb(e))?;
            let v = meta.get(META_CLUSTER).map_err(|e| self.redb(e))?;
            v.map(|v| v.value().to_vec())
        };
        drop(tx);
        match stored {
            Some(s) if s == cluster => Ok(()),
            Some(s) => Err(StorageError::WrongCluster {
                path: self.inner.path.clone(),
                expected: hex(cluster),
                found: hex(&s),
            }),
            None => {
                let tx = self.begin_write()?;
                {
                    let mut meta = tx.open_table(META).map_err(|e| self.redb(e))?;
                    meta.insert(META_CLUSTER, cluster.as_slice())
                        .map_err(|e| self.redb(e))?;
                }
                tx.commit().map_err(|e| self.redb(e))
            }
        }
    }

    fn init_meta(&self) -> Result<(), StorageError> {
        let format = codec::encode(&FORMAT_VERSION)
            .map_err(|source| self.codec_error("meta", META_FORMAT, source))?;
        let tx = self.begin_write()?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.redb(e))?;
            meta.insert(META_FORMAT, format.as_slice())
                .map_err(|e| self.redb(e))?;
            meta.insert(META_FACILITY, self.inner.facility.as_bytes())
                .map_err(|e| self.redb(e))?;
        }
        // Create every table up front, so a bulwark file always has them all.
        for t in schema::STR_TABLES {
            tx.open_table(t).map_err(|e| self.redb(e))?;
        }
        for t in schema::U64_TABLES {
            tx.open_table(t).map_err(|e| self.redb(e))?;
        }
        for t in schema::BYTES_TABLES {
            tx.open_table(t).map_err(|e| self.redb(e))?;
        }
        tx.commit().map_err(|e| self.redb(e))
    }

    fn check_meta(&self) -> Result<(), StorageError> {
        let foreign = |reason: &str| StorageError::Foreign {
            path: self.inner.path.clone(),
            reason: reason.to_string(),
        };
        let tx = self.inner.db.begin_read().map_err(|e| self.redb(e))?;
        let meta = match tx.open_table(META) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Err(foreign("no meta table")),
            Err(TableError::TableTypeMismatch { .. }) => {
                return Err(foreign("meta table has another type"))
            }
            Err(e) => return Err(self.redb(e)),
        };
        let format = meta
            .get(META_FORMAT)
            .map_err(|e| self.redb(e))?
            .ok_or_else(|| foreign("no format version"))?;
        let format: u32 = codec::decode(format.value())
            .map_err(|source| self.codec_error("meta", META_FORMAT, source))?;
        if format != FORMAT_VERSION {
            return Err(foreign(&format!(
                "format version {format}, this build reads {FORMAT_VERSION}"
            )));
        }
        let owner = meta
            .get(META_FACILITY)
            .map_err(|e| self.redb(e))?
            .ok_or_else(|| foreign("no owning facility"))?;
        let owner = String::from_utf8_lossy(owner.value()).into_owned();
        if owner != self.inner.facility {
            return Err(StorageError::WrongFacility {
                path: self.inner.path.clone(),
                expected: self.inner.facility.clone(),
                found: owner,
            });
        }
        Ok(())
    }
}

/// A database builder that runs redb's integrity check on open: it reads the
/// whole file once, so a file altered behind redb's back is refused as
/// corrupt instead of trusted (a plain open may panic on such a file).
/// redb's page cache per store: what the schedule's size costs in memory
/// (redb's own default is 1 GiB).
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

fn cached_builder() -> redb::Builder {
    let mut builder = Database::builder();
    builder.set_cache_size(CACHE_BYTES);
    builder
}

fn checked_builder() -> redb::Builder {
    let mut builder = cached_builder();
    builder.set_check_integrity_on_open(true);
    builder
}

/// Maps an error from opening or creating the file to a typed error naming it.
fn open_error(path: &Path, e: redb::DatabaseError) -> StorageError {
    let path = path.to_path_buf();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => StorageError::AlreadyOpen { path },
        redb::DatabaseError::Storage(redb::StorageError::Io(source))
            if source.kind() == std::io::ErrorKind::InvalidData =>
        {
            StorageError::Corrupt {
                path,
                reason: source.to_string(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => {
            StorageError::Io { path, source }
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            StorageError::Corrupt { path, reason }
        }
        other => StorageError::Redb {
            path,
            source: Box::new(other.into()),
        },
    }
}

#[cfg(test)]
mod tests;

/// Where [`Store::open`] builds a new store before renaming it into place.
pub fn creating_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".creating");
    PathBuf::from(p)
}

/// What [`Store::backup_to`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupInfo {
    /// Rows copied, over every table.
    pub rows: u64,
    /// The backup file's size.
    pub bytes: u64,
}

/// Copies one table's rows from a read transaction into a write
/// transaction; a table missing in the source is skipped.
fn copy_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    rx: &redb::ReadTransaction,
    tx: &redb::WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<u64, redb::Error> {
    let src = match rx.open_table(table) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut dst = tx.open_table(table)?;
    let mut n = 0;
    for row in src.iter()? {
        let (k, v) = row?;
        dst.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}
