//! The idempotency store (`actors/src/flow/idempotency.rs`) under crashes.
//! Its writes are deferred commits (no fsync of their own), so its crash
//! points are the syncs redb makes when a handle is closed (`Reopen`), and
//! what a crash may leave is any state from the initial one on: a prefix
//! of what it was told, never a torn or reordered one.

use std::collections::BTreeMap;
use std::path::Path;

use bulwark_actors::flow::idempotency::{IdempotencyStore, Lookup};
use bulwark_storage::schema::IDEMPOTENCY;
use bulwark_storage::{codec, Store};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::crash::CrashBackend;
use crate::{open_store, reopen, Subject};

const TTL_MS: u64 = 1_000;
const KEYS: u8 = 10;

/// The store's row, field for field (the raw table is decoded with it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    body_hash: [u8; 32],
    answer: Vec<u8>,
    expires_unix_ms: u64,
}

/// What the store holds: key -> (blake3 of the body, answer, expiry).
/// `now` is the test's clock, not stored, and not compared.
#[derive(Debug, Clone, Default)]
pub struct Model {
    rows: BTreeMap<Vec<u8>, ([u8; 32], Vec<u8>, u64)>,
    now: u64,
}

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        self.rows == other.rows
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    /// `remember(key, body, answer, now)`.
    Remember {
        key: Vec<u8>,
        body: Vec<u8>,
        answer: Vec<u8>,
        now: u64,
    },
    /// `expire(now, max)`.
    Expire { now: u64, max: usize },
    /// A clean restart.
    Reopen,
}

pub struct Idempotency;

fn key(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let k = rng.random_range(0..KEYS);
    // Keys of different lengths, so their order is not their number's.
    vec![b'k'; 1 + usize::from(k) * 7 % 16]
        .into_iter()
        .chain([k])
        .collect()
}

fn random_op(rng: &mut ChaCha8Rng, m: &Model) -> Op {
    let now = m.now + rng.random_range(0..300);
    match rng.random_range(0..10u8) {
        0..=5 => {
            let mut body = vec![0u8; rng.random_range(0..64)];
            rng.fill(&mut body[..]);
            let len = if rng.random_bool(0.1) {
                rng.random_range(8_000..=64 * 1024)
            } else {
                rng.random_range(0..200)
            };
            let mut answer = vec![0u8; len];
            rng.fill(&mut answer[..]);
            Op::Remember {
                key: key(rng),
                body,
                answer,
                now,
            }
        }
        6..=8 => Op::Expire {
            now,
            max: rng.random_range(1..=4),
        },
        _ => Op::Reopen,
    }
}

fn apply_model(m: &mut Model, op: &Op) {
    match op {
        Op::Remember {
            key,
            body,
            answer,
            now,
        } => {
            m.now = *now;
            let hash = *blake3::hash(body).as_bytes();
            m.rows
                .insert(key.clone(), (hash, answer.clone(), now + TTL_MS));
        }
        Op::Expire { now, max } => {
            m.now = *now;
            let expired: Vec<Vec<u8>> = m
                .rows
                .iter()
                .filter(|(_, r)| r.2 <= *now)
                .map(|(k, _)| k.clone())
                .take(*max)
                .collect();
            for k in expired {
                m.rows.remove(&k);
            }
        }
        Op::Reopen => {}
    }
}

/// The table, raw.
fn table(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
    let tx = store.database().begin_read().unwrap();
    let t = tx.open_table(IDEMPOTENCY).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

impl Subject for Idempotency {
    type Op = Op;
    type Model = Model;
    type Real = IdempotencyStore;
    const OPS: usize = 70;

    /// `IdempotencyStore::new` (it writes nothing).
    fn open(store: Store) -> IdempotencyStore {
        IdempotencyStore::new(store, TTL_MS)
    }

    fn initial() -> Model {
        Model::default()
    }

    fn random_op(rng: &mut ChaCha8Rng, model: &Model) -> Op {
        random_op(rng, model)
    }

    /// Every write is deferred (the store is a cache of answers the
    /// replicated schedule also gives): a crash may take back any suffix.
    fn durable(_op: &Op, _before: &Model) -> bool {
        false
    }

    fn apply_model(model: &mut Model, op: &Op) {
        apply_model(model, op)
    }

    fn apply(s: IdempotencyStore, backend: &CrashBackend, op: &Op) -> IdempotencyStore {
        match op {
            Op::Remember {
                key,
                body,
                answer,
                now,
            } => s
                .remember(key, body, answer, *now)
                .unwrap_or_else(|e| panic!("remember: {e}")),
            Op::Expire { now, max } => {
                s.expire(*now, *max)
                    .unwrap_or_else(|e| panic!("expire: {e}"));
            }
            Op::Reopen => {
                drop(s);
                return reopen::<Idempotency>(backend);
            }
        }
        s
    }

    /// The rows, each also answered by the real `lookup`: a retry before
    /// its expiry replays the answer (or is a reused key, for another
    /// body), and at its expiry the key is forgotten.
    fn read_back(path: &Path, ctx: &str) -> Model {
        let store = open_store(path, ctx);
        let raw = table(&store);
        let s = IdempotencyStore::new(store, TTL_MS);
        let empty = *blake3::hash(b"").as_bytes();
        let mut rows = BTreeMap::new();
        for (k, v) in raw {
            let rec: Record = codec::decode(&v).unwrap_or_else(|e| panic!("{ctx}: row: {e}"));
            let at = rec.expires_unix_ms;
            let expected = if rec.body_hash == empty {
                Lookup::Replay(rec.answer.clone())
            } else {
                Lookup::KeyReused
            };
            assert_eq!(s.lookup(&k, b"", at - 1).unwrap(), expected, "{ctx}");
            assert_eq!(s.lookup(&k, b"", at).unwrap(), Lookup::Miss, "{ctx}");
            rows.insert(k, (rec.body_hash, rec.answer, at));
        }
        Model { rows, now: 0 }
    }
}

#[test]
fn a_crash_at_any_sync_leaves_a_prefix_of_the_remembered_answers() {
    crate::run::<Idempotency>("idempotency", 0..18, 1_000);
}
