//! The CLI client: `bulwark schedule …`, `bulwark ledger show`, `bulwark
//! evidence`, driving a facility's API as any other client would.
//!
//! Every write gets an Idempotency-Key (`--key`, else a fresh random one,
//! printed when the outcome is not known) and is retried with the same key
//! only while its outcome is unknown or it was not taken at all: no answer,
//! 429 OVERLOADED, 503 NO_LEADER, TIMED_OUT, UNAVAILABLE, AUDIT_UNAVAILABLE
//! (at most
//! [`TRIES`] tries, waiting as `Retry-After` says, or longer each time).
//! Everything else is final and never retried: a rule refusal, bad input, a
//! token without the scope, 503 PARTITIONED (a CP write in a minority: it
//! was not applied; try again once the partition heals). A refusal that
//! did not consult the log (PARTITIONED) after an earlier try that may have
//! been applied (a timeout, no answer) is reported as unknown, with the key.
//!
//! Output is a short text by default and the API's JSON with `--json`.
//! Exit codes by outcome:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (committed, or accepted provisionally in a partition) |
//! | 1 | the command could not be run (bad flags, unreadable files) |
//! | 2 | refused: definitely not applied (rules, bad input, 404, partitioned) |
//! | 3 | unknown: may have been applied; retry with the key printed |
//! | 4 | not allowed: missing or unknown token (401), scope missing (403) |

use std::process::ExitCode;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::ApiArgs;

/// Tries per write (the first and the retries).
pub const TRIES: u32 = 8;

/// Where the API is, and how to reach it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The facility's API (default: $BULWARK_URL, else https://localhost:8401).
    #[arg(long, env = "BULWARK_URL", default_value = "https://localhost:8401")]
    pub url: String,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print the API's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `bulwark schedule …`.
#[derive(Debug, clap::Subcommand)]
pub enum ScheduleCmd {
    /// Add a person.
    AddPerson {
        /// 1 to 64 of [A-Za-z0-9._:-].
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// resident or faculty.
        #[arg(long)]
        role: String,
        /// Postgraduate year (residents).
        #[arg(long)]
        pgy: Option<u8>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Add a block.
    AddBlock {
        /// 1 to 64 of [A-Za-z0-9._:-].
        #[arg(long)]
        id: String,
        /// Days since the schedule's epoch.
        #[arg(long)]
        day: u32,
        /// Minutes after midnight.
        #[arg(long)]
        start_min: u16,
        /// Length in minutes.
        #[arg(long)]
        duration_min: u16,
        /// icu, clinic, procedures or call.
        #[arg(long)]
        pool: String,
        /// People needed.
        #[arg(long, default_value_t = 1)]
        required: u8,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Put a person on a block.
    Assign {
        /// The person.
        #[arg(long)]
        person: String,
        /// The block.
        #[arg(long)]
        block: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Take a person off a block.
    Unassign {
        /// The person.
        #[arg(long)]
        person: String,
        /// The block.
        #[arg(long)]
        block: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Exchange two people's blocks.
    Swap {
        /// First person.
        #[arg(long)]
        a: String,
        /// Their block.
        #[arg(long)]
        a_block: String,
        /// Second person.
        #[arg(long)]
        b: String,
        /// Their block.
        #[arg(long)]
        b_block: String,
        /// For emergency coverage (available in a partition).
        #[arg(long)]
        emergency: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Leave for days (vacates the person's blocks).
    Leave {
        /// Who.
        #[arg(long)]
        person: String,
        /// First day.
        #[arg(long)]
        from_day: u32,
        /// Last day.
        #[arg(long)]
        to_day: u32,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Fill an open slot in an emergency.
    Emergency {
        /// The person.
        #[arg(long)]
        person: String,
        /// The block.
        #[arg(long)]
        block: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Final approval of every day up to a day.
    Approve {
        /// The last approved day.
        #[arg(long)]
        through_day: u32,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// The schedule's blocks and who is on them (one page).
    Show {
        /// First day.
        #[arg(long)]
        from_day: Option<u32>,
        /// Last day.
        #[arg(long)]
        to_day: Option<u32>,
        /// Only this pool.
        #[arg(long)]
        pool: Option<String>,
        /// Most blocks (at most 1,000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        target: Target,
    },
    /// One person, their leave and their blocks.
    Person {
        /// The person's id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// What every write takes.
#[derive(Debug, Clone, clap::Args)]
pub struct WriteArgs {
    /// The Idempotency-Key (default: a new random one). Give the key a
    /// previous run printed to retry that write: it applies once.
    #[arg(long)]
    pub key: Option<String>,
    /// Each try's time budget, ms (the API's Bulwark-Timeout-Ms; default
    /// and most: the facility's 10,000).
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

/// How an answer ends the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Done,
    /// Definitely not applied.
    Refused,
    /// May have been applied.
    Unknown,
    /// 401 or 403.
    NotAllowed,
}

impl Outcome {
    /// The exit code.
    pub fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Outcome::Done => 0,
            Outcome::Refused => 2,
            Outcome::Unknown => 3,
            Outcome::NotAllowed => 4,
        })
    }

    /// The outcome of an answer with `status` and error `code`.
    pub fn of(status: u16, code: Option<&str>) -> Outcome {
        match (status, code) {
            (200..=299, _) => Outcome::Done,
            (401 | 403, _) => Outcome::NotAllowed,
            (503, Some("PARTITIONED" | "AUDIT_UNAVAILABLE" | "CIRCUIT_OPEN")) => Outcome::Refused,
            (429 | 503, _) | (0, _) => Outcome::Unknown,
            (500..=599, _) => Outcome::Unknown,
            _ => Outcome::Refused,
        }
    }
}

/// True if a write answered so may be sent again with the same key: no
/// answer, overloaded, or a 503 that says nothing was decided yet.
pub fn retryable(status: u16, code: Option<&str>) -> bool {
    matches!(
        (status, code),
        (0, _)
            | (429, _)
            | (
                503,
                Some(
                    "NO_LEADER"
                        | "TIMED_OUT"
                        | "UNAVAILABLE"
                        | "OVERLOADED"
                        | "AUDIT_UNAVAILABLE"
                        | "CIRCUIT_OPEN"
                )
            )
    )
}

/// True if a try answered so may have been applied: no answer, a
/// timeout, or a server error that does not say nothing was done.
pub fn maybe(status: u16, code: Option<&str>) -> bool {
    match (status, code) {
        (0, _) => true,
        (
            503,
            Some("NO_LEADER" | "PARTITIONED" | "AUDIT_UNAVAILABLE" | "OVERLOADED" | "CIRCUIT_OPEN"),
        ) => false,
        (s, _) => s >= 500,
    }
}

/// True if a refusal decides the key whatever happened before: the schedule
/// judged the command (a rule, a reused key) or the request itself is bad.
/// A refusal that did not consult the log (PARTITIONED, AUDIT_UNAVAILABLE,
/// a token refused) says nothing about an earlier try, nor does a 409
/// judged in a partition (its body names the partition).
pub fn conclusive(status: u16, code: Option<&str>) -> bool {
    !matches!(
        (status, code),
        (503, _) | (429, _) | (0, _) | (401 | 403, _)
    )
}

/// One HTTP answer: status (0: none), JSON body, `Retry-After` in ms.
struct Answer {
    status: u16,
    body: Value,
    retry_after_ms: Option<u64>,
    error: Option<String>,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let retry_after_ms = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| s * 1_000);
            let body = r.json().await.unwrap_or(Value::Null);
            Answer {
                status,
                body,
                retry_after_ms,
                error: None,
            }
        }
        Err(e) => {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                why = format!("{why}: {s}");
                src = s.source();
            }
            Answer {
                status: 0,
                body: Value::Null,
                retry_after_ms: None,
                error: Some(why),
            }
        }
    }
}

fn base(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// Posts `body` to `path` under `key`, retrying what [`retryable`] allows.
async fn write(w: &WriteArgs, path: &str, body: Value) -> Result<ExitCode, String> {
    let t = &w.target;
    if t.api.token().is_none() {
        return Err("give a token: --token or BULWARK_TOKEN".into());
    }
    crate::client::check_url(&t.url)?;
    let client = t.api.client(Duration::from_secs(15))?;
    let key = w
        .key
        .clone()
        .unwrap_or_else(|| format!("cli-{}", hex::encode(rand::random::<[u8; 12]>())));
    let url = format!("{}{path}", base(&t.url));
    let mut last = None;
    // Whether an earlier try may have been applied (no answer, or one that
    // says the outcome is not known): then a later refusal that did not
    // consult the log (PARTITIONED) proves nothing about it.
    let mut maybe_applied = false;
    for attempt in 0..TRIES {
        let mut req = client
            .post(&url)
            .header("idempotency-key", &key)
            .json(&body);
        if let Some(ms) = w.timeout_ms {
            req = req.header("bulwark-timeout-ms", ms.to_string());
        }
        let a = send(req).await;
        let code = a.body["code"].as_str().map(str::to_string);
        maybe_applied |= maybe(a.status, code.as_deref());
        if !retryable(a.status, code.as_deref()) || attempt + 1 == TRIES {
            last = Some(a);
            break;
        }
        let wait = a
            .retry_after_ms
            .unwrap_or(250 * u64::from(attempt + 1))
            .min(5_000);
        if !t.json {
            eprintln!(
                "answer {} {}: retrying with the same key in {wait} ms",
                a.status,
                code.as_deref().unwrap_or("(no answer)")
            );
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
    let a = last.expect("at least one try");
    let code = a.body["code"].as_str();
    let judged_in_partition = a.body["partition"].is_string();
    let outcome = match Outcome::of(a.status, code) {
        // A refusal that did not decide the key, after a try that may have
        // been applied, says nothing about that try.
        Outcome::Refused | Outcome::NotAllowed
            if maybe_applied && (!conclusive(a.status, code) || judged_in_partition) =>
        {
            Outcome::Unknown
        }
        o => o,
    };
    if t.json {
        println!(
            "{}",
            json!({"status": a.status, "key": key, "outcome": format!("{outcome:?}").to_lowercase(), "answer": a.body})
        );
        return Ok(outcome.code());
    }
    match outcome {
        Outcome::Done => {
            let b = &a.body;
            let mut line = match b["status"].as_str() {
                Some("provisional") => "accepted provisionally (partition)".to_string(),
                _ => "committed".to_string(),
            };
            if let Some(e) = b["effect"].as_str() {
                line += &format!(": {e}");
            }
            if let Some(h) = b["height"].as_u64() {
                line += &format!(" (ledger height {h})");
            }
            if b["duplicate"].as_bool() == Some(true) {
                line += " (already applied under this key: its first answer)";
            }
            if let Some(v) = b["vacated"].as_array().filter(|v| !v.is_empty()) {
                let ids: Vec<&str> = v.iter().filter_map(Value::as_str).collect();
                line += &format!("; vacated {}", ids.join(", "));
            }
            println!("{line}");
        }
        Outcome::Unknown => {
            eprintln!(
                "outcome unknown ({}): it may have been applied. Retry with --key {key}; it applies once.",
                a.error
                    .clone()
                    .unwrap_or_else(|| describe(a.status, &a.body))
            );
        }
        Outcome::Refused | Outcome::NotAllowed => {
            eprintln!("{}", describe(a.status, &a.body));
        }
    }
    Ok(outcome.code())
}

/// One line for an error answer.
fn describe(status: u16, body: &Value) -> String {
    let code = body["code"].as_str().unwrap_or("");
    let mut s = format!("{status} {code}");
    let message = body["message"].as_str().unwrap_or("");
    if let Some(r) = body["rule"].as_str().filter(|r| !message.starts_with(r)) {
        s += &format!(" {r}");
    }
    if let Some(f) = body["field"].as_str() {
        s += &format!(" ({f})");
    }
    if !message.is_empty() {
        s += &format!(": {message}");
    }
    s
}

/// GETs `path`; prints the JSON (`--json`) or `text` of it.
async fn read(t: &Target, path: &str, text: impl Fn(&Value) -> String) -> Result<ExitCode, String> {
    once(t, path, None, text).await
}

/// One request, never retried: a GET, or a POST of `body`.
async fn once(
    t: &Target,
    path: &str,
    body: Option<Value>,
    text: impl Fn(&Value) -> String,
) -> Result<ExitCode, String> {
    crate::client::check_url(&t.url)?;
    let client = t.api.client(Duration::from_secs(15))?;
    let url = format!("{}{path}", base(&t.url));
    let a = send(match body {
        Some(b) => client.post(url).json(&b),
        None => client.get(url),
    })
    .await;
    let outcome = Outcome::of(a.status, a.body["code"].as_str());
    if let Some(e) = &a.error {
        eprintln!("no answer: {e}");
        return Ok(Outcome::Unknown.code());
    }
    if outcome != Outcome::Done {
        eprintln!("{}", describe(a.status, &a.body));
        return Ok(outcome.code());
    }
    if t.json {
        println!("{}", a.body);
    } else {
        print!("{}", text(&a.body));
    }
    Ok(ExitCode::SUCCESS)
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn blocks_table(blocks: &[Value]) -> String {
    let mut out = format!(
        "{:<24} {:>5} {:>5} {:>5} {:<11} {:>4}  {}\n",
        "block", "day", "start", "min", "pool", "need", "people"
    );
    for b in blocks {
        let people: Vec<String> = b["assigned"]
            .as_array()
            .map(|a| a.iter().map(|p| str_of(&p["person"])).collect())
            .unwrap_or_default();
        out += &format!(
            "{:<24} {:>5} {:>5} {:>5} {:<11} {:>4}  {}\n",
            str_of(&b["id"]),
            str_of(&b["day"]),
            str_of(&b["start_min"]),
            str_of(&b["duration_min"]),
            str_of(&b["pool"]),
            str_of(&b["required"]),
            people.join(", ")
        );
    }
    out
}

/// Runs a `bulwark schedule` command.
pub async fn schedule(cmd: ScheduleCmd) -> Result<ExitCode, String> {
    match cmd {
        ScheduleCmd::AddPerson {
            id,
            name,
            role,
            pgy,
            write: w,
        } => {
            let mut body = json!({"id": id, "name": name, "role": role});
            if let Some(p) = pgy {
                body["pgy"] = json!(p);
            }
            write(&w, "/v1/people", body).await
        }
        ScheduleCmd::AddBlock {
            id,
            day,
            start_min,
            duration_min,
            pool,
            required,
            write: w,
        } => {
            let body = json!({"id": id, "day": day, "start_min": start_min,
                "duration_min": duration_min, "pool": pool, "required": required});
            write(&w, "/v1/blocks", body).await
        }
        ScheduleCmd::Assign {
            person,
            block,
            write: w,
        } => on_block(&w, "/v1/assignments", &person, &block).await,
        ScheduleCmd::Unassign {
            person,
            block,
            write: w,
        } => on_block(&w, "/v1/unassignments", &person, &block).await,
        ScheduleCmd::Swap {
            a,
            a_block,
            b,
            b_block,
            emergency,
            write: w,
        } => {
            let body = json!({"a": a, "a_block": a_block, "b": b, "b_block": b_block,
                "emergency": emergency});
            write(&w, "/v1/swaps", body).await
        }
        ScheduleCmd::Leave {
            person,
            from_day,
            to_day,
            write: w,
        } => {
            let body = json!({"person": person, "from_day": from_day, "to_day": to_day});
            write(&w, "/v1/leave", body).await
        }
        ScheduleCmd::Emergency {
            person,
            block,
            write: w,
        } => {
            write(
                &w,
                "/v1/emergency",
                json!({"person": person, "block": block}),
            )
            .await
        }
        ScheduleCmd::Approve {
            through_day,
            write: w,
        } => write(&w, "/v1/approvals", json!({"through_day": through_day})).await,
        ScheduleCmd::Show {
            from_day,
            to_day,
            pool,
            limit,
            target,
        } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(d) = from_day {
                q.push(format!("from_day={d}"));
            }
            if let Some(d) = to_day {
                q.push(format!("to_day={d}"));
            }
            if let Some(p) = pool {
                q.push(format!("pool={p}"));
            }
            let path = format!("/v1/schedule?{}", q.join("&"));
            read(&target, &path, |v| {
                let blocks = v["blocks"].as_array().cloned().unwrap_or_default();
                let mut out = blocks_table(&blocks);
                if !v["next"].is_null() {
                    out += &format!("(more blocks: next page from {})\n", str_of(&v["next"]));
                }
                out
            })
            .await
        }
        ScheduleCmd::Person { id, target } => {
            read(&target, &format!("/v1/people/{id}"), |v| {
                let p = &v["person"];
                let mut out = format!(
                    "{} — {} ({}{})\n",
                    str_of(&p["id"]),
                    str_of(&p["name"]),
                    str_of(&p["role"]),
                    p["pgy"]
                        .as_u64()
                        .map_or(String::new(), |g| format!(", PGY-{g}"))
                );
                if let Some(l) = p["leave_days"].as_array().filter(|l| !l.is_empty()) {
                    let days: Vec<String> = l.iter().map(str_of).collect();
                    out += &format!("leave: days {}\n", days.join(", "));
                }
                let blocks = v["blocks"].as_array().cloned().unwrap_or_default();
                out += &blocks_table(&blocks);
                out
            })
            .await
        }
    }
}

/// Puts `person` on `block` or takes them off (`path`).
async fn on_block(
    w: &WriteArgs,
    path: &str,
    person: &str,
    block: &str,
) -> Result<ExitCode, String> {
    write(w, path, json!({"person": person, "block": block})).await
}

/// `bulwark ledger show HEIGHT`.
pub async fn ledger_show(height: u64, target: Target) -> Result<ExitCode, String> {
    read(&target, &format!("/v1/ledger/{height}"), |v| {
        let mut out = String::new();
        for key in [
            "height",
            "op",
            "proposer",
            "at_unix_ms",
            "raft_index",
            "hash",
            "prev",
            "verified",
        ] {
            out += &format!("{key:<11} {}\n", str_of(&v[key]));
        }
        if let Some(votes) = v["votes"].as_array() {
            let names: Vec<String> = votes.iter().map(|x| str_of(&x["signer"])).collect();
            out += &format!("{:<11} {}\n", "signed by", names.join(", "));
        }
        out
    })
    .await
}

/// `bulwark member`.
#[derive(clap::Subcommand, Debug)]
pub enum MemberCmd {
    /// The Raft identities in the configuration, as the facility asked
    /// knows it (how far each matches the leader's log: at the leader).
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Give a facility a new Raft identity: its next incarnation joins as a
    /// learner and catches up; its old one stays a voter until `promote`.
    /// The way back for a facility whose store was lost (docs/OPERATIONS.md).
    Replace {
        /// The facility.
        #[arg(long)]
        facility: String,
        #[command(flatten)]
        target: Target,
    },
    /// Add a configured facility that is in no Raft configuration yet (it
    /// started with `initial_cluster_state = "existing"`) as a learner: it
    /// reads locally and forwards writes until promoted.
    Add {
        /// The facility.
        #[arg(long)]
        facility: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a facility from the cluster for good: every identity of it,
    /// voter or learner (take it out of the validator set first, `bulwark
    /// validator remove`; then stop it). Refused for the leader (transfer
    /// first) and when the voters left could not commit.
    Remove {
        /// The facility.
        #[arg(long)]
        facility: String,
        #[command(flatten)]
        target: Target,
    },
    /// Make a replaced (or added) facility's learner a voter, once it has
    /// caught up, and remove its old identity (joint consensus).
    Promote {
        /// The facility.
        #[arg(long)]
        facility: String,
        #[command(flatten)]
        target: Target,
    },
}

fn members_table(v: &Value) -> String {
    let mut out = format!(
        "as known at {} (leader {}, commit {}{})\n{:<16} {:>11} {:<9} {:>8}\n",
        str_of(&v["facility"]),
        str_of(&v["leader"]),
        str_of(&v["commit"]),
        if v["joint"].as_bool() == Some(true) {
            ", joint"
        } else {
            ""
        },
        "facility",
        "incarnation",
        "role",
        "matched"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        out += &format!(
            "{:<16} {:>11} {:<9} {:>8}\n",
            str_of(&m["facility"]),
            str_of(&m["incarnation"]),
            str_of(&m["role"]),
            str_of(&m["matched"])
        );
    }
    out
}

/// `bulwark member`.
pub async fn member(cmd: MemberCmd) -> Result<ExitCode, String> {
    let change = |v: &Value| {
        format!(
            "{}; {}\n{}",
            str_of(&v["done"]),
            if v["in_force"].as_bool() == Some(true) {
                "in force"
            } else {
                "not in force here yet (bulwark member list)"
            },
            members_table(&v["members"])
        )
    };
    match cmd {
        MemberCmd::List { target } => once(&target, "/v1/admin/members", None, members_table).await,
        MemberCmd::Replace { facility, target } => {
            let body = json!({ "facility": facility, "action": "replace" });
            once(&target, "/v1/admin/members", Some(body), change).await
        }
        MemberCmd::Add { facility, target } => {
            let body = json!({ "facility": facility, "action": "add" });
            once(&target, "/v1/admin/members", Some(body), change).await
        }
        MemberCmd::Remove { facility, target } => {
            let body = json!({ "facility": facility, "action": "remove" });
            once(&target, "/v1/admin/members", Some(body), change).await
        }
        MemberCmd::Promote { facility, target } => {
            let body = json!({ "facility": facility, "action": "promote" });
            once(&target, "/v1/admin/members", Some(body), change).await
        }
    }
}

/// `bulwark validator`.
#[derive(clap::Subcommand, Debug)]
pub enum ValidatorCmd {
    /// The validator epochs the facility asked knows: each set, the first
    /// height it certifies and its quorum.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Add a facility to the validator set with its vote key (`bulwark
    /// keygen` prints it). The set in force certifies the change; the new
    /// set certifies every later height.
    Add {
        /// The facility.
        #[arg(long)]
        facility: String,
        /// Its vote key, `ed25519:<64 hex digits>`.
        #[arg(long)]
        vote_key: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Rotate a facility's vote key. With `--config`, the facility's own
    /// `vote_key_next` (which it already holds: it signs with it from the
    /// new epoch on) is read from its config; else give `--vote-key`.
    Rotate {
        /// The facility.
        #[arg(long)]
        facility: String,
        /// The new key, `ed25519:<64 hex digits>`.
        #[arg(long, conflicts_with = "config")]
        vote_key: Option<String>,
        /// The facility's config: its `facility.vote_key_next` is the new key.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// Remove a facility from the validator set (before removing it from
    /// the cluster for good, docs/OPERATIONS.md).
    Remove {
        /// The facility.
        #[arg(long)]
        facility: String,
        #[command(flatten)]
        write: WriteArgs,
    },
}

fn epochs_table(v: &Value) -> String {
    let mut out = format!("validator epochs as known at {}\n", str_of(&v["facility"]));
    for e in v["epochs"].as_array().into_iter().flatten() {
        out += &format!(
            "epoch {} from height {} (quorum {}):\n",
            str_of(&e["epoch"]),
            str_of(&e["from_height"]),
            str_of(&e["quorum"])
        );
        for s in e["signers"].as_array().into_iter().flatten() {
            out += &format!("  {:<16} {}\n", str_of(&s["facility"]), str_of(&s["key"]));
        }
    }
    out
}

/// `bulwark validator`.
pub async fn validator(cmd: ValidatorCmd) -> Result<ExitCode, String> {
    match cmd {
        ValidatorCmd::List { target } => {
            once(&target, "/v1/admin/validators", None, epochs_table).await
        }
        ValidatorCmd::Add {
            facility,
            vote_key,
            write: w,
        } => {
            let body = json!({ "facility": facility, "key": vote_key });
            write(&w, "/v1/admin/validators", body).await
        }
        ValidatorCmd::Rotate {
            facility,
            vote_key,
            config,
            write: w,
        } => {
            let key = match (vote_key, config) {
                (Some(k), _) => k,
                (None, Some(c)) => {
                    let cfg = crate::config::FacilityConfig::load(&c).map_err(|e| e.to_string())?;
                    if cfg.facility.id.as_str() != facility {
                        return Err(format!(
                            "{} is {}'s config, not {facility}'s",
                            c.display(),
                            cfg.facility.id
                        ));
                    }
                    let held = cfg.keyring().map_err(|e| e.to_string())?.held();
                    let next = held.get(1).ok_or_else(|| {
                        format!(
                            "{}: no facility.vote_key_next; write one with bulwark keygen, \
                             set it, restart the facility, then rotate",
                            c.display()
                        )
                    })?;
                    bulwark_actors::keys::format_public(next)
                }
                (None, None) => return Err("give --vote-key or --config".into()),
            };
            let body = json!({ "facility": facility, "key": key });
            write(&w, "/v1/admin/validators", body).await
        }
        ValidatorCmd::Remove { facility, write: w } => {
            let body = json!({ "facility": facility, "remove": true });
            write(&w, "/v1/admin/validators", body).await
        }
    }
}

/// `bulwark leader`.
#[derive(clap::Subcommand, Debug)]
pub enum LeaderCmd {
    /// Hand leadership to a voter (a planned move: maintenance of the
    /// leader's host, a site with better links). Any facility takes it;
    /// answers once the voter leads, or why not within 5 s.
    Transfer {
        /// The voter to lead.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `bulwark leader transfer`.
pub async fn leader(cmd: LeaderCmd) -> Result<ExitCode, String> {
    match cmd {
        LeaderCmd::Transfer { to, target } => {
            once(
                &target,
                "/v1/admin/leader",
                Some(json!({ "to": to })),
                |v| {
                    if v["moved"].as_bool() == Some(false) {
                        format!(
                            "{} leads already (term {})\n",
                            str_of(&v["leader"]),
                            str_of(&v["term"])
                        )
                    } else {
                        format!(
                            "{} leads now (term {})\n",
                            str_of(&v["leader"]),
                            str_of(&v["term"])
                        )
                    }
                },
            )
            .await
        }
    }
}

/// `bulwark chaos clean`: drops a chaos namespace (every one when
/// `namespace` is empty) through consensus, step by step.
pub async fn chaos_clean(t: &Target, namespace: &str) -> Result<ExitCode, String> {
    if t.api.token().is_none() {
        return Err("give a token with the chaos scope: --token or BULWARK_TOKEN".into());
    }
    crate::client::check_url(&t.url)?;
    let client = t.api.client(Duration::from_secs(15))?;
    let url = format!("{}/v1/admin/chaos/namespace-drops", base(&t.url));
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let shown = bulwark_actors::schedule::namespace_prefix(namespace);
    for step in 0..crate::chaos::NAMESPACE_DROP_STEPS_MAX {
        let key = format!("chaos-clean-{run}-{step}");
        let a = send(
            client
                .post(&url)
                .header("idempotency-key", &key)
                .json(&json!({"namespace": namespace})),
        )
        .await;
        if let Some(e) = &a.error {
            eprintln!("no answer: {e} (nothing is lost: run it again)");
            return Ok(Outcome::Unknown.code());
        }
        let outcome = Outcome::of(a.status, a.body["code"].as_str());
        if outcome != Outcome::Done {
            eprintln!("{}", describe(a.status, &a.body));
            return Ok(outcome.code());
        }
        if a.body["effect"].as_str() == Some("namespace_dropped") {
            println!("{shown}* dropped ({} steps)", step + 1);
            return Ok(ExitCode::SUCCESS);
        }
    }
    eprintln!("{shown}* still holds more after the bounded steps: run it again");
    Ok(Outcome::Unknown.code())
}

/// `bulwark evidence`.
pub async fn evidence(target: Target) -> Result<ExitCode, String> {
    read(&target, "/v1/evidence", |v| {
        let items = v.as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return "no evidence\n".into();
        }
        let mut out = String::new();
        for e in items {
            let drill = if e["drill"].as_bool() == Some(true) {
                "  (drill: costs no trust)"
            } else {
                ""
            };
            out += &format!(
                "{:<12} {:<22} {}{drill}\n",
                str_of(&e["offender"]),
                str_of(&e["code"]),
                str_of(&e["at_unix_ms"])
            );
        }
        out
    })
    .await
}

/// `bulwark review`: the healer's review queue at one facility.
#[derive(clap::Subcommand, Debug)]
pub enum ReviewCmd {
    /// The changes this facility took while cut off that met a conflict
    /// on heal (`conflict_policy = "manual_review"`), oldest first.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Accept a queued change (emergency coverage replaces the block's
    /// holder, through consensus) or refuse it. Not retried: after a 503,
    /// list the queue again before deciding again.
    Resolve {
        /// The change's id, from `review list`.
        id: u64,
        /// Accept it.
        #[arg(long, conflicts_with = "refuse", required_unless_present = "refuse")]
        accept: bool,
        /// Refuse it.
        #[arg(long)]
        refuse: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// `bulwark review list|resolve`.
pub async fn review(cmd: ReviewCmd) -> Result<ExitCode, String> {
    match cmd {
        ReviewCmd::List { target } => {
            read(&target, "/v1/admin/reviews", |v| {
                let items = v["reviews"].as_array().cloned().unwrap_or_default();
                if items.is_empty() {
                    return "nothing waits for review\n".into();
                }
                let mut out = format!(
                    "{:>6} {:<12} {:<12} {:<14} {}\n",
                    "id", "facility", "operation", "at_unix_ms", "command"
                );
                for r in items {
                    out += &format!(
                        "{:>6} {:<12} {:<12} {:<14} {}\n",
                        str_of(&r["id"]),
                        str_of(&r["facility"]),
                        str_of(&r["operation"]),
                        str_of(&r["at_unix_ms"]),
                        r["command"]["op"]
                    );
                }
                out
            })
            .await
        }
        ReviewCmd::Resolve {
            id, accept, target, ..
        } => {
            let path = format!("/v1/admin/reviews/{id}");
            once(&target, &path, Some(json!({ "accept": accept })), |v| {
                format!("{}: {}\n", str_of(&v["resolution"]), str_of(&v["report"]))
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The taxonomy, by hand: what may be retried and what each answer
    /// means for the caller.
    #[test]
    fn only_undecided_answers_are_retried() {
        for (status, code, retry, outcome) in [
            (200, None, false, Outcome::Done),
            (202, None, false, Outcome::Done),
            (0, None, true, Outcome::Unknown),
            (429, Some("OVERLOADED"), true, Outcome::Unknown),
            (503, Some("NO_LEADER"), true, Outcome::Unknown),
            (503, Some("TIMED_OUT"), true, Outcome::Unknown),
            (503, Some("UNAVAILABLE"), true, Outcome::Unknown),
            (503, Some("PARTITIONED"), false, Outcome::Refused),
            (503, Some("AUDIT_UNAVAILABLE"), true, Outcome::Refused),
            (503, Some("CIRCUIT_OPEN"), true, Outcome::Refused),
            (409, Some("RULE_VIOLATION"), false, Outcome::Refused),
            (400, Some("BAD_REQUEST"), false, Outcome::Refused),
            (422, Some("KEY_REUSED"), false, Outcome::Refused),
            (404, Some("NOT_FOUND"), false, Outcome::Refused),
            (401, Some("UNAUTHORIZED"), false, Outcome::NotAllowed),
            (403, Some("FORBIDDEN"), false, Outcome::NotAllowed),
        ] {
            assert_eq!(retryable(status, code), retry, "{status} {code:?}");
            assert_eq!(Outcome::of(status, code), outcome, "{status} {code:?}");
        }
        // What a try says about having been applied.
        assert!(maybe(0, None));
        assert!(maybe(503, Some("TIMED_OUT")));
        assert!(maybe(503, Some("UNAVAILABLE")));
        assert!(!maybe(503, Some("NO_LEADER")));
        assert!(!maybe(503, Some("PARTITIONED")));
        assert!(!maybe(409, Some("RULE_VIOLATION")));
        assert!(conclusive(409, Some("RULE_VIOLATION")));
        assert!(!conclusive(503, Some("PARTITIONED")));
        assert!(!conclusive(403, Some("FORBIDDEN")));
    }
}
