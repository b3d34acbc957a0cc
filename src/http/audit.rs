//! The audit trail: who changed what, when, with which idempotency key,
//! and how it ended.
//!
//! Recorded: every `/v1` request by a known token that is not a plain
//! read — writes, approvals, backups, archiving, chaos levers, whether
//! answered 2xx or refused (403 for want of a scope included) — and every
//! read of the audit trail itself and of the chaos levers. Not recorded:
//! plain reads of the schedule (a read-heavy clinic would fill the trail
//! with them; their token still needs the `read` scope), and requests
//! without a valid token (nobody to attribute them to, and a flood of them
//! would push real records out of the bounded trail; they are counted,
//! `bulwark_api_unauthorized_total`).
//!
//! Each record is durable before its request is answered: the records of
//! concurrent requests go to disk in one group commit (one fsync) on a
//! writer thread of their own, in their own redb file
//! (`<data_dir>/audit.redb`), so the trail never waits behind consensus
//! writes and never slows them. Records are numbered from 1 in arrival
//! order; the trail keeps the newest [`AuditConfig::keep`] (older ones
//! are dropped in the same commit that goes past the bound). Served at
//! `GET /v1/audit?after=N&limit=M` (operator scope), oldest first.
//!
//! A request and its record run on a task of their own, so a client that
//! goes away mid-request does not keep its write out of the trail. If the
//! trail cannot be written (disk full, failing), requests it would record
//! are refused before they run (503 AUDIT_UNAVAILABLE), and an empty
//! durable commit is tried at most once a second to find out when it takes
//! writes again. A record whose own commit fails after its request ran is
//! logged and counted (`bulwark_audit_failures_total`); the write it names
//! is in the ledger regardless.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::Response;
use bulwark_storage::codec;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;

const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// The trail's file in a data directory.
pub const AUDIT_FILE: &str = "audit.redb";
/// Largest encoded record.
pub const RECORD_LEN_MAX: usize = 4 * 1024;
/// Most records one `GET /v1/audit` answers.
pub const PAGE_MAX: usize = 1_000;
/// Longest path kept in a record (longer ones are cut, marked `…`).
const PATH_LEN_MAX: usize = 512;
/// Records committed together at most.
const GROUP_MAX: usize = 1_024;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// Its number (from 1, in arrival order).
    pub seq: u64,
    /// When it was answered (unix ms, this facility's clock).
    pub at_unix_ms: u64,
    /// The token's name.
    pub who: String,
    /// `POST`, `GET`.
    pub method: String,
    /// The path (and query).
    pub path: String,
    /// The request's Idempotency-Key, if it had one.
    pub idempotency_key: Option<String>,
    /// The answer's HTTP status.
    pub status: u16,
    /// The error code, for an error answer (FORBIDDEN, RULE_VIOLATION, …).
    pub code: Option<String>,
}

/// `[api]` keys of the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Records kept (the newest).
    pub keep: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { keep: 1_000_000 }
    }
}

/// Why the trail cannot be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The file does not open or a transaction fails.
    #[error("audit trail {0}")]
    Store(String),
    /// The writer thread has stopped.
    #[error("the audit writer has stopped")]
    Stopped,
}

fn store_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Store(e.to_string())
}

/// A record to write, or `None`: a probe (an empty durable commit) that
/// finds out whether the trail takes writes again.
type Queued = (Option<AuditRecord>, oneshot::Sender<Result<u64, String>>);

/// The trail: a writer thread and a read handle.
pub struct AuditLog {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<Queued>>,
    writer: Option<std::thread::JoinHandle<()>>,
    healthy: Arc<AtomicBool>,
    probed_ms: std::sync::atomic::AtomicU64,
}

impl Drop for AuditLog {
    /// Stops the writer (after the records already sent) and waits for it,
    /// so the file is closed when this returns.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

/// An error answer's code, left in the response's extensions for the
/// trail.
#[derive(Debug, Clone)]
pub struct ErrorCode(pub String);

impl AuditLog {
    /// Opens (or creates) the trail in `dir` and starts its writer thread.
    pub fn open(dir: &Path, cfg: AuditConfig) -> Result<AuditLog, AuditError> {
        let path = dir.join(AUDIT_FILE);
        let db = Arc::new(
            Database::create(&path)
                .map_err(|e| AuditError::Store(format!("{}: {e}", path.display())))?,
        );
        {
            let w = db.begin_write().map_err(store_err)?;
            w.open_table(RECORDS).map_err(store_err)?;
            w.commit().map_err(store_err)?;
        }
        let next = {
            let r = db.begin_read().map_err(store_err)?;
            let t = r.open_table(RECORDS).map_err(store_err)?;
            let last = t.last().map_err(store_err)?;
            last.map_or(1, |(k, _)| k.value() + 1)
        };
        let (tx, rx) = mpsc::channel::<Queued>(8 * GROUP_MAX);
        let healthy = Arc::new(AtomicBool::new(true));
        let (wdb, whealthy) = (db.clone(), healthy.clone());
        let writer = std::thread::Builder::new()
            .name("bulwark-audit".into())
            .spawn(move || write_loop(&wdb, rx, next, cfg.keep.max(1), &whealthy))
            .map_err(store_err)?;
        Ok(AuditLog {
            db,
            tx: Some(tx),
            writer: Some(writer),
            healthy,
            probed_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// True while the last commit succeeded.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// While the trail fails: tries an empty durable commit, at most one a
    /// second (other callers meanwhile get the last verdict); answers
    /// whether the trail takes writes again.
    pub async fn probe(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let last = self.probed_ms.load(Ordering::Relaxed);
        if now < last.saturating_add(1_000)
            || self
                .probed_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return self.healthy();
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.send(None)).await;
        self.healthy()
    }

    /// Records `r` (its `seq` is given here) durably; answers its number.
    pub async fn record(&self, r: AuditRecord) -> Result<u64, AuditError> {
        self.send(Some(r)).await
    }

    async fn send(&self, r: Option<AuditRecord>) -> Result<u64, AuditError> {
        let (done, wait) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(AuditError::Stopped)?;
        tx.send((r, done)).await.map_err(|_| AuditError::Stopped)?;
        wait.await
            .map_err(|_| AuditError::Stopped)?
            .map_err(AuditError::Store)
    }

    /// Up to `limit` records after number `after`, oldest first.
    pub fn page(&self, after: u64, limit: usize) -> Result<Vec<AuditRecord>, AuditError> {
        let r = self.db.begin_read().map_err(store_err)?;
        let t = r.open_table(RECORDS).map_err(store_err)?;
        let mut out = Vec::new();
        for row in t.range(after.saturating_add(1)..).map_err(store_err)? {
            if out.len() >= limit.min(PAGE_MAX) {
                break;
            }
            let (_, v) = row.map_err(store_err)?;
            out.push(
                codec::decode_limited::<AuditRecord>(v.value(), RECORD_LEN_MAX)
                    .map_err(store_err)?,
            );
        }
        Ok(out)
    }

    /// Records held.
    pub fn len(&self) -> Result<u64, AuditError> {
        let r = self.db.begin_read().map_err(store_err)?;
        let t = r.open_table(RECORDS).map_err(store_err)?;
        t.len().map_err(store_err)
    }

    /// True if no record is held.
    pub fn is_empty(&self) -> Result<bool, AuditError> {
        Ok(self.len()? == 0)
    }
}

/// The writer: takes every record waiting (up to [`GROUP_MAX`]), writes
/// them and drops what is past `keep` in one durable commit, then answers
/// each. Ends when every sender is gone.
fn write_loop(
    db: &Database,
    mut rx: mpsc::Receiver<Queued>,
    mut next: u64,
    keep: u64,
    healthy: &AtomicBool,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let seq0 = next;
        let mut seq = seq0;
        let written = (|| -> Result<(), AuditError> {
            let w = db.begin_write().map_err(store_err)?;
            {
                let mut t = w.open_table(RECORDS).map_err(store_err)?;
                for r in group.iter_mut().filter_map(|(r, _)| r.as_mut()) {
                    r.seq = seq;
                    seq += 1;
                    let bytes = codec::encode(&*r).map_err(store_err)?;
                    t.insert(r.seq, bytes.as_slice()).map_err(store_err)?;
                }
                let held = t.len().map_err(store_err)?;
                if held > keep {
                    let cut = seq - keep;
                    t.retain_in(..cut, |_, _| false).map_err(store_err)?;
                }
            }
            w.commit().map_err(store_err)
        })();
        match written {
            Ok(()) => {
                next = seq;
                healthy.store(true, Ordering::Relaxed);
                metrics::counter!("bulwark_audit_records_total").increment(seq - seq0);
                metrics::counter!("bulwark_audit_commits_total").increment(1);
                for (r, done) in group {
                    let _ = done.send(Ok(r.map_or(0, |r| r.seq)));
                }
            }
            Err(e) => {
                healthy.store(false, Ordering::Relaxed);
                metrics::counter!("bulwark_audit_failures_total").increment(1);
                tracing::error!(error = %e, "the audit trail refused a write");
                for (_, done) in group {
                    let _ = done.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// True for the requests the trail records: anything under `/v1` but a
/// plain read, and reads of the trail and of the chaos levers.
pub fn audited(method: &Method, path: &str) -> bool {
    let Some(v1) = path.strip_prefix("/v1/") else {
        return false;
    };
    let plain_read = method == Method::GET || method == Method::HEAD;
    !plain_read || v1.starts_with("audit") || v1.starts_with("admin/")
}

/// The 503 for audited requests while the trail cannot be written.
pub fn unavailable() -> ApiError {
    ApiError::unavailable(
        "AUDIT_UNAVAILABLE",
        "the audit trail cannot be written; nothing that it records is taken until it can",
        5_000,
    )
}

/// What a record takes from the request, before it runs.
pub struct Pending {
    who: String,
    method: String,
    path: String,
    key: Option<String>,
}

impl Pending {
    /// The request's side of its record.
    pub fn of(req: &Request, caller: &Caller) -> Pending {
        let mut path = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
        if path.len() > PATH_LEN_MAX {
            let mut cut = PATH_LEN_MAX;
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            path.truncate(cut);
            path.push('…');
        }
        Pending {
            who: caller.name.to_string(),
            method: req.method().to_string(),
            path,
            key: req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(|k| k.chars().take(128).collect()),
        }
    }

    /// Records the request with its answer `resp` in `log`, durably, then
    /// hands `resp` back.
    pub async fn record(self, log: &AuditLog, resp: Response) -> Response {
        let record = AuditRecord {
            seq: 0,
            // The host's clock, not the facility's (which a chaos lever
            // may skew).
            at_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            who: self.who,
            method: self.method,
            path: self.path,
            idempotency_key: self.key,
            status: resp.status().as_u16(),
            code: resp.extensions().get::<ErrorCode>().map(|c| c.0.clone()),
        };
        match tokio::time::timeout(Duration::from_secs(10), log.record(record)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "an answered request is not in the audit trail")
            }
            Err(_) => {
                metrics::counter!("bulwark_audit_failures_total").increment(1);
                tracing::error!("the audit trail took over 10 s to record an answered request");
            }
        }
        resp
    }
}

/// `GET /v1/audit`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Records after this number (default 0: from the oldest kept).
    pub after: Option<u64>,
    /// Most records (default 100, at most 1,000).
    pub limit: Option<usize>,
}

/// `GET /v1/audit`'s answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// The records, oldest first.
    pub records: Vec<AuditRecord>,
    /// Ask with `after` = this for the next page; absent at the end.
    pub next: Option<u64>,
}

/// The audit trail, oldest first (operator scope). Every write, approval,
/// backup, archive and chaos lever, with the token's name, the
/// idempotency key and the outcome.
#[utoipa::path(
    get,
    path = "/audit",
    tag = "operations",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of records", body = AuditPage),
        (status = 400, description = "Bad query", body = super::error::ErrorBody),
        (status = 503, description = "No trail on this facility, or it cannot be read", body = super::error::ErrorBody),
    )
)]
pub async fn get_audit(
    State(s): State<ApiState>,
    q: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<AuditPage>, ApiError> {
    let axum::extract::Query(q) = q.map_err(|e| ApiError::bad("query", e.body_text()))?;
    let log = s
        .audit
        .clone()
        .ok_or_else(|| ApiError::unavailable("UNAVAILABLE", "no audit trail here", 60_000))?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::bad("limit", format!("1 to {PAGE_MAX}")));
    }
    let after = q.after.unwrap_or(0);
    let records = tokio::task::spawn_blocking(move || log.page(after, limit))
        .await
        .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?
        .map_err(|e| ApiError::unavailable("UNAVAILABLE", e.to_string(), 1_000))?;
    let next = (records.len() == limit).then(|| records[records.len() - 1].seq);
    Ok(axum::Json(AuditPage { records, next }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at_unix_ms: i,
            who: "scheduler".into(),
            method: "POST".into(),
            path: "/v1/people".into(),
            idempotency_key: Some(format!("k{i}")),
            status: 200,
            code: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_are_numbered_paged_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(AuditLog::open(dir.path(), AuditConfig { keep: 250 }).unwrap());
        // 600 concurrent records: group commits, numbered 1..=600.
        let mut tasks = Vec::new();
        for i in 0..600u64 {
            let log = log.clone();
            tasks.push(tokio::spawn(
                async move { log.record(rec(i)).await.unwrap() },
            ));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=600).collect::<Vec<_>>());
        // Past the bound: the newest 250 kept.
        assert_eq!(log.len().unwrap(), 250);
        let first = log.page(0, 100).unwrap();
        assert_eq!(first.first().unwrap().seq, 351);
        assert_eq!(first.len(), 100);
        let rest = log.page(first.last().unwrap().seq, 1_000).unwrap();
        assert_eq!(rest.len(), 150);
        assert_eq!(rest.last().unwrap().seq, 600);
        // Reopened: numbering goes on.
        drop(first);
        drop(log);
        let log = AuditLog::open(dir.path(), AuditConfig { keep: 250 }).unwrap();
        assert_eq!(log.record(rec(600)).await.unwrap(), 601);
    }

    #[test]
    fn plain_reads_are_not_audited_and_everything_else_under_v1_is() {
        assert!(!audited(&Method::GET, "/v1/schedule"));
        assert!(!audited(&Method::GET, "/health/ready"));
        assert!(audited(&Method::GET, "/v1/audit"));
        assert!(audited(&Method::GET, "/v1/admin/chaos"));
        assert!(audited(&Method::POST, "/v1/people"));
        assert!(audited(&Method::POST, "/v1/admin/backup"));
    }

    #[test]
    fn a_foreign_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(AUDIT_FILE), b"not a redb file at all").unwrap();
        assert!(matches!(
            AuditLog::open(dir.path(), AuditConfig::default()),
            Err(AuditError::Store(_))
        ));
    }
}
