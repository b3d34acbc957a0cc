//! The simulated clients: what they send through the API and what they
//! remember of the answers.
//!
//! The schedule starts with [`PEOPLE`] people and [`BLOCKS`] one-day
//! blocks. Clients then add people and blocks, assign, unassign, swap,
//! grant leave, cover emergencies, approve days, retire people and blocks
//! and archive approved days, and read the
//! schedule (linearizable and stale), the cluster view, the ledger and the
//! evidence. Every write carries a fresh idempotency key; a write that got
//! no final answer (a time-out, no leader, a partition, an unreachable
//! facility, an overload) may be sent again later, with the same key and
//! body, to any facility, as a real client's retry would.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client;

/// People the schedule starts with.
pub const PEOPLE: usize = 6;
/// Blocks the schedule starts with (one per day from day 0).
pub const BLOCKS: usize = 8;
/// Blocks the duty-edge schedule starts with (ten days of them).
pub const EDGE_BLOCKS: usize = 40;
/// Unanswered writes remembered for a retry, at most.
pub const PENDING_MAX: usize = 32;
/// People and blocks the clients may add, at most (bounds the state).
pub const ADDED_MAX: usize = 24;

/// One write as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// Its idempotency key.
    pub key: String,
    /// The endpoint, e.g. `/v1/assignments`.
    pub path: &'static str,
    /// The JSON body.
    pub body: Value,
    /// Its time budget (`Bulwark-Timeout-Ms`), if the client sets one.
    pub timeout_ms: Option<u64>,
}

/// Budgets a client gives a quarter of its writes, in ms: all shorter
/// than a RaftPeer's own proposal timeout (5 s), so a forward that took
/// its own timeout instead of what is left would outlive its request.
const BUDGETS_MS: [u64; 3] = [300, 800, 2_000];

/// The budget of the write keyed `key`: from the key's hash, so the
/// workload's draws (and every seed's run) stay as they were.
pub fn budget_of(key: &str) -> Option<u64> {
    let h = blake3::hash(key.as_bytes());
    let b = h.as_bytes();
    (b[0] % 4 == 0).then(|| BUDGETS_MS[b[1] as usize % BUDGETS_MS.len()])
}

impl Write {
    /// A write keyed `key`, with the budget [`budget_of`] gives it.
    pub fn new(key: String, path: &'static str, body: Value) -> Write {
        let timeout_ms = budget_of(&key);
        Write {
            key,
            path,
            body,
            timeout_ms,
        }
    }

    /// The request, with `token`.
    pub fn request(&self, token: &str) -> Request<Body> {
        let mut r = client::post(self.path, token, &self.key, &self.body);
        if let Some(ms) = self.timeout_ms {
            r.headers_mut()
                .insert(crate::http::api::TIMEOUT_HEADER, ms.into());
        }
        r
    }
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// A write (a first try or a retry).
    Write(Write),
    /// `GET /v1/schedule` (linearizable); `floor` is the highest index
    /// acknowledged as committed before it was sent.
    LinearizableRead {
        /// What it must reflect.
        floor: u64,
    },
    /// `GET /v1/schedule?consistency=stale`.
    StaleRead,
    /// `GET /v1/cluster`.
    Cluster,
    /// `GET /v1/ledger/{height}`.
    Ledger(u64),
    /// `GET /v1/evidence`.
    Evidence,
}

impl Op {
    /// The request, with `token`.
    pub fn request(&self, token: &str) -> Request<Body> {
        match self {
            Op::Write(w) => w.request(token),
            Op::LinearizableRead { .. } => client::get("/v1/schedule", token),
            Op::StaleRead => client::get("/v1/schedule?consistency=stale", token),
            Op::Cluster => client::get("/v1/cluster", token),
            Op::Ledger(h) => client::get(&format!("/v1/ledger/{h}"), token),
            Op::Evidence => client::get("/v1/evidence", token),
        }
    }

    /// Whether `status` is an answer the API documents for this request.
    pub fn documented(&self, status: StatusCode) -> bool {
        let s = status.as_u16();
        match self {
            Op::Write(_) => matches!(s, 200 | 202 | 409 | 429 | 503),
            Op::Ledger(_) => matches!(s, 200 | 404 | 429 | 503),
            _ => matches!(s, 200 | 429 | 503),
        }
    }
}

/// How a write was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// 200: committed at this log index (`duplicate`: a retry of a
    /// command applied before, at an earlier index).
    Committed {
        /// The index.
        index: u64,
        /// A retry's answer.
        duplicate: bool,
    },
    /// 202: accepted provisionally in a partition, to be replayed.
    Provisional,
}

/// What the clients' schedule looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// One 8 or 10 h block a day, people picked evenly: the duty limits
    /// are out of reach.
    Daily,
    /// Long and touching blocks (24 h + 4 h handover + 2 h, 12 to 14 h
    /// days, nights), overlapping ones, most writes assignments of three
    /// people preloaded near the limits ([`Workload::preload`]): duty
    /// near 80 h in rolling weeks, shifts at 28 h and past, days on near
    /// the 1-in-7 limit, double bookings asked for.
    DutyEdge,
}

/// The clients' side of one run.
#[derive(Debug)]
pub struct Workload {
    shape: Shape,
    prefix: String,
    next_key: u64,
    people: usize,
    blocks: usize,
    /// Writes without a final answer yet, which a client may retry.
    pending: Vec<Write>,
    /// Writes acknowledged (2xx), with their acknowledgement.
    acked: Vec<(Write, Ack)>,
    /// Final writes made so far (each adds a new person).
    finals: usize,
    /// Each facility's two vote keys (`ed25519:…`): a rotation sets one of
    /// them (empty: no rotations drawn).
    rotations: Vec<(String, [String; 2])>,
    /// Whether validator removals and additions are drawn too (among the
    /// facilities of `rotations`).
    changing_validators: bool,
}

impl Workload {
    /// The clients of the run of `seed`, writing a schedule of `shape`.
    pub fn new(seed: u64, shape: Shape) -> Workload {
        Workload {
            shape,
            prefix: format!("s{seed}"),
            next_key: 0,
            people: PEOPLE,
            blocks: BLOCKS,
            pending: Vec::new(),
            acked: Vec::new(),
            finals: 0,
            rotations: Vec::new(),
            changing_validators: false,
        }
    }

    /// Also draws validator removals and additions (with rotations drawn).
    pub fn changing_validators(mut self, on: bool) -> Workload {
        self.changing_validators = on;
        self
    }

    /// Draws vote-key rotations among `keys` (each facility's two).
    pub fn rotating(mut self, keys: Vec<(String, [String; 2])>) -> Workload {
        self.rotations = keys;
        self
    }

    fn write(&mut self, path: &'static str, body: Value) -> Write {
        self.next_key += 1;
        Write::new(format!("{}-w{}", self.prefix, self.next_key), path, body)
    }

    /// The writes that set the schedule up: people (with a vote-key
    /// rotation amid them, when rotations are drawn), then blocks (with a
    /// checkpoint amid them).
    pub fn setup(&mut self) -> Vec<Write> {
        let mut out = Vec::new();
        for p in 0..PEOPLE {
            if p == PEOPLE / 2 && !self.rotations.is_empty() {
                // A vote-key rotation amid the people: the facility that
                // rotates signs under its next key from the next height.
                let pick = self.prefix.bytes().map(usize::from).sum::<usize>();
                let (f, keys) = &self.rotations[pick % self.rotations.len()];
                let body = json!({"facility": f, "key": keys[1]});
                out.push(self.write("/v1/admin/validators", body));
            }
            out.push(self.write("/v1/people", person_body(p)));
        }
        let blocks = self.first_blocks();
        self.blocks = blocks;
        for b in 0..blocks {
            if b == blocks / 2 {
                // A cluster checkpoint amid the blocks: each facility's
                // backup must hold the half before it, none after.
                out.push(self.write("/v1/admin/checkpoints", json!({})));
            }
            let body = self.block_body(b);
            out.push(self.write("/v1/blocks", body));
        }
        out
    }

    /// At the duty edge, assignments that bring three people to the
    /// limits (each allowed): p0 to 69 h 20 min on days 1–5, one long
    /// day short of 80 h in a week; p1 to six days on in a row (days
    /// 1–6); p2 to 28 h of continuous duty (24 h + 4 h handover). Daily:
    /// none.
    pub fn preload(&mut self) -> Vec<Write> {
        if self.shape != Shape::DutyEdge {
            return Vec::new();
        }
        let load: [(usize, &[usize]); 3] = [
            (0, &[4, 5, 12, 13, 15]),
            (1, &[2, 5, 10, 13, 18, 21]),
            (2, &[8, 9]),
        ];
        let mut out = Vec::new();
        for (p, blocks) in load {
            for b in blocks {
                let body = json!({"person": format!("p{p}"), "block": format!("b{b}")});
                out.push(self.write("/v1/assignments", body));
            }
        }
        out
    }

    /// A person and a block that exist (at the duty edge, three people
    /// take three writes in four).
    fn pick(&self, rng: &mut ChaCha8Rng) -> (String, String) {
        let person = match self.shape {
            Shape::DutyEdge if rng.random_range(0..4) > 0 => rng.random_range(0..3),
            _ => rng.random_range(0..self.people),
        };
        (
            format!("p{person}"),
            format!("b{}", rng.random_range(0..self.blocks)),
        )
    }

    /// The blocks the schedule starts with.
    fn first_blocks(&self) -> usize {
        match self.shape {
            Shape::Daily => BLOCKS,
            Shape::DutyEdge => EDGE_BLOCKS,
        }
    }

    fn block_body(&self, b: usize) -> Value {
        match self.shape {
            Shape::Daily => block_body(b),
            Shape::DutyEdge => edge_block_body(b),
        }
    }

    /// A random new write.
    pub fn next_write(&mut self, rng: &mut ChaCha8Rng) -> Write {
        if self.changing_validators && !self.rotations.is_empty() && rng.random_ratio(1, 12) {
            // A facility removed from the validators, or added (back) with
            // one of its keys; refused (INVALID_INPUT) when the set does
            // not allow it (the last validator, no change).
            let (f, keys) = &self.rotations[rng.random_range(0..self.rotations.len())];
            let body = if rng.random_bool(0.5) {
                json!({"facility": f, "remove": true})
            } else {
                json!({"facility": f, "key": keys[rng.random_range(0..2)]})
            };
            return self.write("/v1/admin/validators", body);
        }
        let (p, b) = self.pick(rng);
        let r = match self.shape {
            Shape::Daily => rng.random_range(0..100),
            // At the edge: mostly assignments and emergency coverage.
            Shape::DutyEdge => {
                [0, 0, 0, 0, 0, 0, 35, 45, 55, 60, 60, 60, 80, 85, 90][rng.random_range(0..15)]
            }
        };
        match r {
            0..=34 => self.write("/v1/assignments", json!({"person": p, "block": b})),
            35..=44 => self.write("/v1/unassignments", json!({"person": p, "block": b})),
            45..=54 => {
                let (q, c) = self.pick(rng);
                let emergency = rng.random_bool(0.3);
                self.write(
                    "/v1/swaps",
                    json!({"a": p, "a_block": b, "b": q, "b_block": c, "emergency": emergency}),
                )
            }
            55..=59 => {
                let from = rng.random_range(0..(BLOCKS as u32 + 4));
                let to = from + rng.random_range(0..2);
                self.write(
                    "/v1/leave",
                    json!({"person": p, "from_day": from, "to_day": to}),
                )
            }
            60..=79 => self.write("/v1/emergency", json!({"person": p, "block": b})),
            80..=82 => {
                let day = rng.random_range(0..4u32);
                self.write("/v1/approvals", json!({"through_day": day}))
            }
            // The data's life cycle: a retirement (a person from a day, or
            // a block), or the archive of approved days.
            83 => match rng.random_range(0..2) {
                0 => {
                    let from = rng.random_range(0..(BLOCKS as u32 + 4));
                    self.write("/v1/retirements", json!({"person": p, "from_day": from}))
                }
                _ => self.write("/v1/retirements", json!({"block": b})),
            },
            // Or a cluster checkpoint (every facility backs up at it), or
            // a facility's vote key rotated to one of its two (the same
            // as now: refused, INVALID_INPUT).
            84 => match rng.random_range(0..3) {
                0 => {
                    let day = rng.random_range(0..4u32);
                    self.write("/v1/archive", json!({"through_day": day}))
                }
                1 if !self.rotations.is_empty() => {
                    let (f, keys) = &self.rotations[rng.random_range(0..self.rotations.len())];
                    let key = keys[rng.random_range(0..2)].clone();
                    let body = json!({"facility": f, "key": key});
                    self.write("/v1/admin/validators", body)
                }
                _ => self.write("/v1/admin/checkpoints", json!({})),
            },
            85..=92 if self.people < PEOPLE + ADDED_MAX => {
                self.people += 1;
                self.write("/v1/people", person_body(self.people - 1))
            }
            85..=99 if self.blocks < self.first_blocks() + ADDED_MAX => {
                self.blocks += 1;
                let body = self.block_body(self.blocks - 1);
                self.write("/v1/blocks", body)
            }
            _ => self.write("/v1/assignments", json!({"person": p, "block": b})),
        }
    }

    /// A random client request: a new write, a retry, or a read.
    /// `floor` is what a linearizable read sent now must reflect;
    /// `height` the final ledger height seen so far.
    pub fn next_op(&mut self, rng: &mut ChaCha8Rng, floor: u64, height: u64) -> Op {
        match rng.random_range(0..100) {
            0..=49 => Op::Write(self.next_write(rng)),
            50..=59 if !self.pending.is_empty() => {
                let k = rng.random_range(0..self.pending.len());
                Op::Write(self.pending.swap_remove(k))
            }
            // A client that lost the answer to a committed write sends it
            // again, to whichever facility it reaches.
            60..=63 if !self.acked.is_empty() => {
                let k = rng.random_range(0..self.acked.len());
                Op::Write(self.acked[k].0.clone())
            }
            50..=71 => Op::LinearizableRead { floor },
            72..=86 => Op::StaleRead,
            87..=92 => Op::Cluster,
            93..=97 => Op::Ledger(rng.random_range(1..=height.max(1) + 1)),
            _ => Op::Evidence,
        }
    }

    /// In a run that draws validator removals: each facility added back
    /// (or its key set) with its first key, so that every facility can
    /// replay the provisional changes it took while it was a validator
    /// (refused, INVALID_INPUT, where nothing would change). Empty in the
    /// other runs.
    pub fn validators_back(&mut self) -> Vec<Write> {
        if !self.changing_validators {
            return Vec::new();
        }
        let back: Vec<Value> = self
            .rotations
            .iter()
            .map(|(f, keys)| json!({"facility": f, "key": keys[0]}))
            .collect();
        back.into_iter()
            .map(|body| self.write("/v1/admin/validators", body))
            .collect()
    }

    /// The write that shows the healed cluster commits: a new person.
    pub fn next_final_write(&mut self) -> Write {
        self.finals += 1;
        let id = match self.finals {
            1 => "final".to_string(),
            k => format!("final-{k}"),
        };
        let body = json!({"id": id, "name": "Final check", "role": "faculty"});
        self.write("/v1/people", body)
    }

    /// A write came back with `status` and `body`: remembered as
    /// acknowledged, kept for a retry, or (a rule's refusal) dropped.
    pub fn on_write(&mut self, w: Write, status: StatusCode, body: &Value) -> Option<Ack> {
        let ack = match status.as_u16() {
            200 => Ack::Committed {
                index: body["index"].as_u64().unwrap_or(0),
                duplicate: body["duplicate"].as_bool().unwrap_or(false),
            },
            202 => Ack::Provisional,
            429 | 503 => {
                if self.pending.len() < PENDING_MAX {
                    self.pending.push(w);
                }
                return None;
            }
            _ => return None,
        };
        self.acked.push((w, ack));
        Some(ack)
    }

    /// Every acknowledged write.
    pub fn acked(&self) -> &[(Write, Ack)] {
        &self.acked
    }

    /// Records an acknowledgement the run never got (test-only: shows the
    /// final check catches a lost write).
    pub fn plant_ack(&mut self, w: Write, ack: Ack) {
        self.acked.push((w, ack));
    }
}

fn person_body(p: usize) -> Value {
    if p % 3 == 2 {
        json!({"id": format!("p{p}"), "name": format!("Faculty {p}"), "role": "faculty"})
    } else {
        json!({"id": format!("p{p}"), "name": format!("Resident {p}"), "role": "resident", "pgy": 1 + p % 3})
    }
}

/// Block `b` of the duty-edge schedule: eight kinds, two days further on
/// every eight blocks. Kinds 0, 1 and 2 touch (24 h, then 4 h of handover,
/// then 2 h: 28 h and 30 h of continuous duty); 3 overlaps 0; 4, 5 and 7
/// are long days that reach 80 h in a week on few people.
fn edge_block_body(b: usize) -> Value {
    let d = 2 * (b / 8) as u32;
    let (day, start, minutes) = match b % 8 {
        0 => (d, 420, 1440),
        1 => (d + 1, 420, 240),
        2 => (d + 1, 660, 120),
        3 => (d, 1140, 720),
        4 => (d + 1, 420, 840),
        5 => (d + 2, 420, 840),
        6 => (d + 1, 1260, 600),
        _ => (d + 3, 420, 800),
    };
    let pool = ["icu", "clinic", "procedures", "call"][b % 4];
    json!({
        "id": format!("b{b}"),
        "day": day,
        "start_min": start,
        "duration_min": minutes,
        "pool": pool,
        "required": 2 + (b % 2) as u32,
    })
}

fn block_body(b: usize) -> Value {
    let pool = ["icu", "clinic", "procedures", "call"][b % 4];
    json!({
        "id": format!("b{b}"),
        "day": b as u32,
        "start_min": 420 + 60 * (b % 3) as u32,
        "duration_min": 480 + 120 * (b % 2) as u32,
        "pool": pool,
        "required": 1 + (b % 2) as u32,
    })
}
