//! The replica's tables (`actors/src/replica.rs`) under crashes.
//!
//! Apply batches commit without an fsync of their own (the Raft log holds
//! what they apply); the next durable commit on the file makes them
//! durable, and so does a clean close. So the model is the schedule as of
//! the last durable point: a crash image must hold it exactly, or, for a
//! crash during a durable commit, everything applied up to it.

use std::path::Path;

use bulwark_actors::replica::Replica;
use bulwark_actors::schedule::{
    Block, BlockId, Command, IdempotencyKey, MemTables, Op as Cmd, Person, PersonId, Pool, Role,
    ScheduleState,
};
use bulwark_storage::Store;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::crash::CrashBackend;
use crate::{open_store, reopen, Subject, FACILITY};

/// The schedule at the last durable point, and as applied.
#[derive(Debug, Clone)]
pub struct Model {
    durable: (u64, MemTables),
    applied: ScheduleState,
    next: u64,
    /// Read back from an image (compared against a model's durable point,
    /// or, for the clean close that ends a run, against all it applied).
    read: bool,
}

impl PartialEq for Model {
    fn eq(&self, other: &Model) -> bool {
        let all = |m: &Model| (m.next - 1, m.applied.tables().clone());
        match (self.read, other.read) {
            (true, false) => self.durable == other.durable || self.durable == all(other),
            (false, true) => other == self,
            _ => self.durable == other.durable,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Op {
    /// One apply batch (one write transaction, not durable by itself).
    Apply(Vec<Cmd>),
    /// Another durable commit on the file (the Raft log's, a compaction's).
    Sync,
    /// A clean restart.
    Reopen,
}

pub struct ReplicaTables;

fn pid(rng: &mut ChaCha8Rng) -> PersonId {
    format!("p{}", rng.random_range(0..6)).parse().unwrap()
}

fn bid(rng: &mut ChaCha8Rng) -> BlockId {
    format!("b{}", rng.random_range(0..24)).parse().unwrap()
}

fn random_cmd(rng: &mut ChaCha8Rng) -> Cmd {
    match rng.random_range(0..16u8) {
        0..=1 => {
            let id = pid(rng);
            Cmd::AddPerson(Person {
                name: format!("Dr {id}"),
                id,
                role: Role::Resident { pgy: 2 },
            })
        }
        2..=4 => {
            let id = bid(rng);
            let n: u32 = id.as_str()[1..].parse().unwrap();
            Cmd::AddBlock(Block {
                id,
                day: n / 2,
                start_min: if n % 2 == 0 { 360 } else { 1080 },
                duration_min: 600,
                pool: Pool::Icu,
                required: rng.random_range(1..=2),
            })
        }
        5..=9 => Cmd::Assign {
            person: pid(rng),
            block: bid(rng),
        },
        10 => Cmd::Unassign {
            person: pid(rng),
            block: bid(rng),
        },
        11 => Cmd::Swap {
            a: pid(rng),
            a_block: bid(rng),
            b: pid(rng),
            b_block: bid(rng),
        },
        12 => {
            let from_day = rng.random_range(0..12);
            Cmd::Leave {
                person: pid(rng),
                from_day,
                to_day: from_day + rng.random_range(0..2),
            }
        }
        13 => Cmd::EmergencyCoverage {
            block: bid(rng),
            person: pid(rng),
        },
        _ => Cmd::Approve {
            through_day: rng.random_range(0..6),
        },
    }
}

fn command(n: u64, op: Cmd) -> Command {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_le_bytes());
    Command {
        key: IdempotencyKey(key),
        issued_by: FACILITY.parse().unwrap(),
        at_unix_ms: 1_700_000_000_000 + n,
        hlc: bulwark_actors::hlc::Hlc::ZERO,
        op,
    }
}

fn read(replica: &Replica) -> (u64, MemTables) {
    let view = replica.read().expect("a view opens");
    let tables = view
        .tables()
        .to_mem()
        .expect("the replica reads back whole");
    (replica.applied(), tables)
}

impl Subject for ReplicaTables {
    type Op = Op;
    type Model = Model;
    type Real = Replica;
    const OPS: usize = 60;

    fn open(store: Store) -> Replica {
        Replica::open(store).expect("the replica opens")
    }

    fn initial() -> Model {
        Model {
            durable: (0, MemTables::default()),
            applied: ScheduleState::new(),
            next: 1,
            read: false,
        }
    }

    fn random_op(rng: &mut ChaCha8Rng, _m: &Model) -> Op {
        match rng.random_range(0..10u8) {
            0..=6 => {
                let n = rng.random_range(1..=6);
                Op::Apply((0..n).map(|_| random_cmd(rng)).collect())
            }
            7..=8 => Op::Sync,
            _ => Op::Reopen,
        }
    }

    fn apply_model(m: &mut Model, op: &Op) {
        match op {
            Op::Apply(cmds) => {
                for c in cmds {
                    let n = m.next;
                    m.applied.apply(n, &command(n, c.clone()));
                    m.next += 1;
                }
            }
            Op::Sync | Op::Reopen => {
                m.durable = (m.next - 1, m.applied.tables().clone());
            }
        }
    }

    fn apply(mut real: Replica, backend: &CrashBackend, op: &Op) -> Replica {
        match op {
            Op::Apply(cmds) => {
                let first = real.applied() + 1;
                let tx = real.begin().unwrap();
                let mut sched = real.schedule(&tx);
                for (i, c) in cmds.iter().enumerate() {
                    let n = first + i as u64;
                    sched.apply(n, &command(n, c.clone()));
                }
                let done = sched.into_tables().finish().unwrap();
                let last = first + cmds.len() as u64 - 1;
                real.commit(tx, done, last).unwrap();
            }
            Op::Sync => {
                let tx = real.store().begin_write().unwrap();
                tx.commit().unwrap();
            }
            Op::Reopen => {
                drop(real);
                return reopen::<ReplicaTables>(backend);
            }
        }
        real
    }

    fn read_back(path: &Path, ctx: &str) -> Model {
        let store = open_store(path, ctx);
        let replica = Replica::open(store).unwrap_or_else(|e| panic!("{ctx}: Replica::open: {e}"));
        let durable = read(&replica);
        Model {
            applied: ScheduleState::new(),
            next: durable.0 + 1,
            durable,
            read: true,
        }
    }
}

#[test]
fn a_crash_at_any_sync_keeps_the_replica_at_its_last_durable_point() {
    crate::run::<ReplicaTables>("replica", 0..30, 1_000);
}
