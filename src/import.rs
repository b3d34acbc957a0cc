//! `bulwark import FILE.csv`: loads a schedule through a running node's
//! `POST /v1/batch`, up to 1,000 rows per batch.
//!
//! The file has a header row. Its `op` column names each row's command
//! (`add_person`, `add_block`, `assign`, `unassign`, `swap`, `leave`,
//! `approve`, `retire`); the other columns are the fields of that command's
//! own endpoint (`id`, `name`, `role`, `pgy`, `day`, `start_min`,
//! `duration_min`, `pool`, `required`, `person`, `block`, `a`, `a_block`,
//! `b`, `b_block`, `from_day`, `to_day`, `through_day`); a row leaves the
//! columns its command does not take empty.
//!
//! ```text
//! op,id,name,role,pgy,day,start_min,duration_min,pool,required,person,block
//! add_person,p1,Ann Lee,resident,2,,,,,,,
//! add_block,icu-1,,,,10,420,720,icu,1,,
//! assign,,,,,,,,,,p1,icu-1
//! ```
//!
//! Every batch's idempotency key is derived from the file's bytes, the
//! batch size and the batch's place in it: importing the same file again
//! with the same `--batch` (after a crash, a timeout, or to be sure)
//! applies nothing twice and reports the first outcomes. With another
//! batch size the keys differ: the rows are sent again, and the schedule's
//! own rules refuse what already exists (`ALREADY_EXISTS`,
//! `DOUBLE_BOOKING`), so nothing is applied twice either, but the report
//! lists those refusals.

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

/// The commands a row may name.
pub const OPS: [&str; 8] = [
    "add_person",
    "add_block",
    "assign",
    "unassign",
    "swap",
    "leave",
    "approve",
    "retire",
];

/// Columns whose values are numbers.
const NUMBERS: [&str; 8] = [
    "pgy",
    "day",
    "start_min",
    "duration_min",
    "required",
    "from_day",
    "to_day",
    "through_day",
];

/// Most rows per batch (the API's own limit).
pub const BATCH_MAX: usize = 1_000;

/// Largest file read.
pub const FILE_LEN_MAX: u64 = 256 * 1024 * 1024;

/// Why an import could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is over [`FILE_LEN_MAX`].
    #[error("{path}: {len} bytes; at most {FILE_LEN_MAX} are imported at once (split the file)")]
    TooLarge {
        /// The file.
        path: String,
        /// Its length.
        len: u64,
    },
    /// The CSV does not parse.
    #[error("line {line}: {why}")]
    Row {
        /// The line (1 is the header).
        line: u64,
        /// Why.
        why: String,
    },
    /// The node refused a batch as a whole.
    #[error("batch {batch} (lines {first}..={last}): HTTP {status}: {body}")]
    Refused {
        /// The batch (0-based).
        batch: usize,
        /// Its first line.
        first: u64,
        /// Its last line.
        last: u64,
        /// The HTTP status.
        status: u16,
        /// The answer.
        body: String,
    },
    /// The node did not answer a batch finally.
    #[error("batch {batch}: {why}; run the import again: it resumes (every batch keeps its key)")]
    Unanswered {
        /// The batch.
        batch: usize,
        /// Why.
        why: String,
    },
}

/// One row as a batch command, with its line in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The line (the header is line 1).
    pub line: u64,
    /// The command, in `POST /v1/batch`'s item shape.
    pub command: Value,
}

/// The file's rows as batch commands. A bad row is an error naming its
/// line and column; nothing is sent then.
pub fn rows(csv_bytes: &[u8]) -> Result<Vec<Row>, ImportError> {
    let mut r = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(csv_bytes);
    let bad = |line: u64, why: String| ImportError::Row { line, why };
    let header: Vec<String> = r
        .headers()
        .map_err(|e| bad(1, e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let op_col = header
        .iter()
        .position(|h| h == "op")
        .ok_or_else(|| bad(1, "the header has no `op` column".into()))?;
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| line_at(csv_bytes, p.byte()));
            bad(line, e.to_string())
        })?;
        // The line from the byte offset: the reader's own count skips
        // blank lines.
        let line = rec.position().map_or(0, |p| line_at(csv_bytes, p.byte()));
        let op = rec.get(op_col).unwrap_or_default();
        if op.is_empty() && rec.iter().all(str::is_empty) {
            continue;
        }
        if !OPS.contains(&op) {
            return Err(bad(
                line,
                format!("op `{op}` is not one of {}", OPS.join(", ")),
            ));
        }
        let mut m = Map::new();
        m.insert("op".into(), Value::String(op.into()));
        for (name, value) in header.iter().zip(rec.iter()) {
            if name == "op" || value.is_empty() {
                continue;
            }
            let v = if NUMBERS.contains(&name.as_str()) {
                let n: u64 = value.parse().map_err(|_| {
                    bad(line, format!("column `{name}`: `{value}` is not a number"))
                })?;
                Value::from(n)
            } else {
                Value::String(value.into())
            };
            m.insert(name.clone(), v);
        }
        out.push(Row {
            line,
            command: Value::Object(m),
        });
    }
    Ok(out)
}

/// The 1-based line of the record that starts at byte `at` (the reader
/// puts a record after blank lines at the first of them).
fn line_at(bytes: &[u8], at: u64) -> u64 {
    let mut end = usize::try_from(at).unwrap_or(usize::MAX).min(bytes.len());
    while end < bytes.len() && matches!(bytes[end], b'\n' | b'\r') {
        end += 1;
    }
    1 + bytes[..end].iter().filter(|b| **b == b'\n').count() as u64
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Commands applied.
    pub applied: usize,
    /// Refused commands: line, rule, why.
    pub refused: Vec<(u64, String, String)>,
    /// Batches answered from a previous run of the same file.
    pub replayed: usize,
}

/// Imports `path` through the node at `url`, `batch` rows per batch, with
/// `client` (which carries the token: [`crate::client::ApiArgs::client`]).
pub async fn run(
    url: &str,
    client: &reqwest::Client,
    path: &Path,
    batch: usize,
) -> Result<Report, ImportError> {
    let name = path.display().to_string();
    let read = |source| ImportError::Read {
        path: name.clone(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > FILE_LEN_MAX {
        return Err(ImportError::TooLarge { path: name, len });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let all = rows(&bytes)?;
    let file_id = hex::encode(&blake3::hash(&bytes).as_bytes()[..12]);
    let mut report = Report::default();
    for (n, chunk) in all.chunks(batch.clamp(1, BATCH_MAX)).enumerate() {
        let key = format!("import-{file_id}-{}-{n}", chunk.len());
        let body = serde_json::json!({
            "commands": chunk.iter().map(|r| r.command.clone()).collect::<Vec<_>>()
        });
        let (status, replayed, answer) = post(client, url, &key, &body, n).await?;
        let (first, last) = (chunk[0].line, chunk[chunk.len() - 1].line);
        if status != 200 {
            return Err(ImportError::Refused {
                batch: n,
                first,
                last,
                status,
                body: answer.to_string(),
            });
        }
        report.replayed += usize::from(replayed);
        let outcomes = answer["outcomes"].as_array().cloned().unwrap_or_default();
        for (row, o) in chunk.iter().zip(&outcomes) {
            if o["status"] == "applied" {
                report.applied += 1;
            } else {
                report.refused.push((
                    row.line,
                    o["code"].as_str().unwrap_or("?").to_string(),
                    o["detail"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    Ok(report)
}

/// Posts one batch until it has a final answer (not 429, 503 or no answer),
/// at most 60 tries with a growing pause.
async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    batch: usize,
) -> Result<(u16, bool, Value), ImportError> {
    let mut why = String::new();
    for attempt in 0..60u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(10)))).await;
        }
        let sent = client
            .post(format!("{}/v1/batch", url.trim_end_matches('/')))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await;
        let r = match sent {
            Ok(r) => r,
            Err(e) => {
                why = e.to_string();
                continue;
            }
        };
        let status = r.status().as_u16();
        let replayed = r.headers().contains_key("idempotent-replayed");
        let answer: Value = r.json().await.unwrap_or(Value::Null);
        if matches!(status, 429 | 503) {
            why = format!("HTTP {status}: {answer}");
            continue;
        }
        return Ok((status, replayed, answer));
    }
    Err(ImportError::Unanswered { batch, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_batch_commands_with_numbers_and_their_lines() {
        let csv = b"op,id,name,role,pgy,day,start_min,duration_min,pool,required,person,block\n\
            add_person,p1,\"Lee, Ann\",resident,2,,,,,,,\n\
            \n\
            add_block,icu-1,,,,10,420,720,icu,1,,\n\
            assign,,,,,,,,,,p1,icu-1\n";
        let r = rows(csv).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            r[0].command,
            serde_json::json!({"op":"add_person","id":"p1","name":"Lee, Ann","role":"resident","pgy":2})
        );
        assert_eq!(r[1].command["day"], 10);
        assert_eq!(r[1].line, 4);
        assert_eq!(
            r[2].command,
            serde_json::json!({"op":"assign","person":"p1","block":"icu-1"})
        );
    }

    #[test]
    fn a_bad_row_names_its_line_and_column() {
        let err = |csv: &[u8]| rows(csv).unwrap_err().to_string();
        assert!(err(b"id,name\np1,x\n").contains("no `op` column"));
        let e = err(b"op,id\nadd_person,p1\nfire,p2\n");
        assert!(e.starts_with("line 3:") && e.contains("fire"), "{e}");
        let e = err(b"op,day\nadd_block,ten\n");
        assert!(e.contains("line 2") && e.contains("`day`"), "{e}");
        let e = err(b"op,id\nadd_person,p1,extra\n");
        assert!(e.contains("line 2"), "{e}");
    }
}
