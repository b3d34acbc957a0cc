//! The idempotency store (`actors/src/flow/idempotency.rs`) under crashes.

use std::collections::BTreeMap;
use std::path::Path;

use bulwark_actors::flow::idempotency::{IdempotencyStore, Lookup};
use bulwark_storage::codec;
use bulwark_storage::schema::IDEMPOTENCY;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use redb::{Database, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::crash::CrashBackend;
use crate::{begin_write, mirror_file, mirror_reopen, open_store, ops, Subject};

const TTL_MS: u64 = 1_000;
const KEYS: u8 = 10;

/// The store's row, field for field (its encoding is what is compared).
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

fn record(body: &[u8], answer: &[u8], now: u64) -> Record {
    Record {
        body_hash: *blake3::hash(body).as_bytes(),
        answer: answer.to_vec(),
        expires_unix_ms: now.saturating_add(TTL_MS),
    }
}

/// Mirror of `IdempotencyStore::remember`.
fn mirror_remember(db: &Database, key: &[u8], body: &[u8], answer: &[u8], now: u64) {
    let bytes = codec::encode(&record(body, answer, now)).unwrap();
    let tx = begin_write(db);
    tx.open_table(IDEMPOTENCY)
        .unwrap()
        .insert(key, bytes.as_slice())
        .unwrap();
    tx.commit().unwrap();
}

/// Mirror of `IdempotencyStore::expire`.
fn mirror_expire(db: &Database, now: u64, max: usize) {
    let tx = begin_write(db);
    {
        let mut t = tx.open_table(IDEMPOTENCY).unwrap();
        let mut expired = Vec::new();
        for row in t.iter().unwrap() {
            let (k, v) = row.unwrap();
            let done =
                codec::decode::<Record>(v.value()).map_or(true, |r| r.expires_unix_ms <= now);
            if done {
                expired.push(k.value().to_vec());
                if expired.len() >= max {
                    break;
                }
            }
        }
        for k in expired {
            t.remove(k.as_slice()).unwrap();
        }
    }
    tx.commit().unwrap();
}

/// The table, raw.
fn table(store: &bulwark_storage::Store) -> Vec<(Vec<u8>, Vec<u8>)> {
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
    const OPS: usize = 70;

    fn setup(_db: &Database) {}

    fn initial() -> Model {
        Model::default()
    }

    fn random_op(rng: &mut ChaCha8Rng, model: &Model) -> Op {
        random_op(rng, model)
    }

    fn apply_model(model: &mut Model, op: &Op) {
        apply_model(model, op)
    }

    fn apply_mirror(db: Database, backend: &CrashBackend, op: &Op) -> Database {
        match op {
            Op::Remember {
                key,
                body,
                answer,
                now,
            } => mirror_remember(&db, key, body, answer, *now),
            Op::Expire { now, max } => mirror_expire(&db, *now, *max),
            Op::Reopen => {
                drop(db);
                return mirror_reopen(backend);
            }
        }
        db
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
fn a_crash_at_any_sync_keeps_every_remembered_answer() {
    crate::run::<Idempotency>("idempotency", 0..9, 1_000);
}

#[test]
fn mirror_writes_what_the_store_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("real.redb");
    let ops = ops::<Idempotency>(13, 200);
    let open = || {
        IdempotencyStore::new(
            bulwark_storage::Store::open(&path, crate::FACILITY)
                .unwrap()
                .store,
            TTL_MS,
        )
    };
    let mut s = open();
    for op in &ops {
        match op {
            Op::Remember {
                key,
                body,
                answer,
                now,
            } => s.remember(key, body, answer, *now).unwrap(),
            Op::Expire { now, max } => {
                s.expire(*now, *max).unwrap();
            }
            Op::Reopen => {
                drop(s);
                s = open();
            }
        }
    }
    drop(s);
    let mirror = mirror_file::<Idempotency>(dir.path(), 13, &ops);
    assert_eq!(
        table(&open_store(&mirror, "mirror")),
        table(&open_store(&path, "real"))
    );
}
