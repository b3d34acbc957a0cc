//! The ledger store (`actors/src/bft/store.rs`) under crashes: own votes,
//! final entries and evidence, written by `write_batch`. Besides the model,
//! every crash image must pass `ledger verify` (`verify_file`, on the image
//! as the crash left it) up to the final head it reopens with.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;

use bulwark_actors::bft::evidence::{Evidence, Kind};
use bulwark_actors::bft::{verify_file, LedgerStore};
use bulwark_actors::keys::{Domain, Keyring, PublicKeys};
use bulwark_actors::ledger::{
    admit, Certificate, FinalEntry, Link, SignedProposal, Verdict, Vote, VoteBody,
};
use bulwark_actors::raft::EntryPayload;
use bulwark_actors::schedule::{
    Block, BlockId, Command, IdempotencyKey, Op as ScheduleOp, Person, PersonId, Pool, Role,
    ScheduleState,
};
use bulwark_storage::schema::{BFT_PENDING, BFT_VOTES, EVIDENCE, LEDGER, LEDGER_CERTS};
use bulwark_storage::{codec, Store};
use bulwark_transport::FacilityId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::crash::CrashBackend;
use crate::{dump_u64, open_store, reopen, Subject};

/// Heights of the prepared chain.
const CHAIN_LEN: usize = 120;

/// A valid chain of `CHAIN_LEN` final entries (3 facilities, certificates
/// of 2 votes) and this validator's (alpha's) vote for each.
struct Chain {
    links: Vec<Link>,
    finals: Vec<FinalEntry>,
    votes: Vec<Vote>,
    keys: PublicKeys,
}

fn ids() -> Vec<FacilityId> {
    ["alpha", "bravo", "charlie"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

fn schedule_op(i: usize) -> ScheduleOp {
    if i == 0 {
        return ScheduleOp::AddPerson(Person {
            id: "p0".parse::<PersonId>().unwrap(),
            name: "Person 0".into(),
            role: Role::Resident { pgy: 2 },
        });
    }
    ScheduleOp::AddBlock(Block {
        id: format!("b{i}").parse::<BlockId>().unwrap(),
        day: i as u32,
        start_min: 0,
        duration_min: 60,
        pool: Pool::Clinic,
        required: 1,
    })
}

fn vote(ring: &Keyring, link: &Link) -> Vote {
    let body = VoteBody {
        signer: ring.me().clone(),
        height: link.entry.height,
        hash: link.hash,
        prev: link.entry.prev,
    };
    Vote::sign(ring, &body).unwrap()
}

fn chain() -> &'static Chain {
    static CHAIN: OnceLock<Chain> = OnceLock::new();
    CHAIN.get_or_init(|| {
        let ids = ids();
        let rings = Keyring::deterministic(&ids, 9);
        let keys = rings[&ids[0]].public().clone();
        let mut state = ScheduleState::new();
        let mut c = Chain {
            links: Vec::new(),
            finals: Vec::new(),
            votes: Vec::new(),
            keys: keys.clone(),
        };
        for i in 0..CHAIN_LEN {
            let proposer = ids[i % 3].clone();
            let payload = EntryPayload {
                proposer: proposer.clone(),
                seq: i as u64,
                anchor: state.chain().anchor(),
                command: Command {
                    key: IdempotencyKey([i as u8; 16]),
                    issued_by: proposer.clone(),
                    at_unix_ms: 1_000 + i as u64,
                    hlc: bulwark_actors::hlc::Hlc::ZERO,
                    op: schedule_op(i),
                },
            };
            let body = codec::encode(&payload).unwrap();
            let sig = rings[&proposer].sign(Domain::Proposal, &body);
            let data = codec::encode(&SignedProposal { body, sig }).unwrap();
            let Verdict::Admitted(link) = admit(
                &mut state,
                &bulwark_actors::epoch::ValidatorSet::genesis(keys.clone()),
                i as u64 + 1,
                1,
                &data,
            )
            .verdict
            else {
                panic!("chain entry {i} not admitted")
            };
            let votes = ids[..2].iter().map(|s| vote(&rings[s], &link)).collect();
            c.finals.push(FinalEntry {
                entry: link.bytes.clone(),
                cert: Certificate {
                    height: link.entry.height,
                    hash: link.hash,
                    prev: link.entry.prev,
                    votes,
                },
            });
            c.votes.push(vote(&rings[&ids[0]], &link));
            c.links.push(link);
        }
        c
    })
}

/// What the ledger store holds: the final head (a prefix of the chain),
/// the heights alpha voted for and not final, and the evidence.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Model {
    head: u64,
    voted: BTreeSet<u64>,
    evidence: Vec<Evidence>,
}

#[derive(Debug, Clone)]
pub enum Op {
    /// `write_batch` (durable) or `stage_batch` (the validator's group
    /// commit: written by the store's next durable commit): own votes for
    /// chain heights, final entries (the chain's next heights) and
    /// evidence, in one transaction.
    Batch {
        votes: Vec<u64>,
        finals: Vec<u64>,
        evidence: Vec<Evidence>,
        durable: bool,
    },
    /// `sync`: the durable commit (the Raft peer's, or the validator's
    /// fallback) that writes the staged batches.
    Sync,
    /// A clean restart (the validator's stop writes what it staged).
    Reopen,
}

pub struct Ledger;

fn evidence(rng: &mut ChaCha8Rng) -> Vec<Evidence> {
    (0..rng.random_range(1..=3))
        .map(|_| Evidence {
            offender: "bravo".parse().unwrap(),
            at_unix_ms: rng.random_range(0..1_000_000),
            kind: Kind::TimestampManipulation {
                raft_index: rng.random_range(0..1_000),
            },
        })
        .collect()
}

fn random_op(rng: &mut ChaCha8Rng, m: &Model) -> Op {
    let top = m.voted.last().copied().unwrap_or(m.head).max(m.head);
    let room = CHAIN_LEN as u64 - top;
    let mut votes = Vec::new();
    if room > 0 && rng.random_bool(0.6) {
        let n = rng.random_range(1..=room.min(3));
        votes.extend(top + 1..=top + n);
    }
    if let Some(&again) = m.voted.first() {
        if rng.random_bool(0.2) {
            votes.push(again); // a re-sent vote rewrites its row
        }
    }
    let mut finals = Vec::new();
    let left = CHAIN_LEN as u64 - m.head;
    // Kept short: every image replays the whole chain through `ledger
    // verify`, whose cost grows with it.
    if left > 0 && rng.random_bool(0.35) {
        let n = rng.random_range(1..=left.min(2));
        finals.extend(m.head + 1..=m.head + n);
    }
    let evidence = if rng.random_bool(0.2) {
        evidence(rng)
    } else {
        Vec::new()
    };
    if rng.random_bool(0.1) {
        return Op::Sync;
    }
    if rng.random_bool(0.15) || (votes.is_empty() && finals.is_empty() && evidence.is_empty()) {
        return Op::Reopen;
    }
    Op::Batch {
        votes,
        finals,
        evidence,
        durable: rng.random_bool(0.3),
    }
}

fn apply_model(m: &mut Model, op: &Op) {
    let Op::Batch {
        votes,
        finals,
        evidence,
        ..
    } = op
    else {
        return;
    };
    m.voted.extend(votes.iter().copied());
    if let Some(&last) = finals.last() {
        m.head = last;
        m.voted.retain(|&h| h > last);
    }
    m.evidence.extend(evidence.iter().cloned());
}

/// Own votes and final entries, as `write_batch` takes them.
type Batch = (Vec<(Link, Vote)>, Vec<(u64, FinalEntry)>);

fn batch(votes: &[u64], finals: &[u64]) -> Batch {
    let c = chain();
    let at = |h: u64| (h - 1) as usize;
    (
        votes
            .iter()
            .map(|&h| (c.links[at(h)].clone(), c.votes[at(h)].clone()))
            .collect(),
        finals
            .iter()
            .map(|&h| (h, c.finals[at(h)].clone()))
            .collect(),
    )
}

impl Subject for Ledger {
    type Op = Op;
    type Model = Model;
    type Real = LedgerStore;
    const OPS: usize = 70;

    /// `LedgerStore::new`, as the validator opens it (it writes nothing).
    fn open(store: Store) -> LedgerStore {
        LedgerStore::new(store)
    }

    fn initial() -> Model {
        Model::default()
    }

    fn random_op(rng: &mut ChaCha8Rng, model: &Model) -> Op {
        random_op(rng, model)
    }

    /// A staged batch is on disk only with the next durable commit.
    fn durable(op: &Op, _before: &Model) -> bool {
        match op {
            Op::Batch { durable, .. } => *durable,
            Op::Sync | Op::Reopen => true,
        }
    }

    fn apply_model(model: &mut Model, op: &Op) {
        apply_model(model, op)
    }

    fn apply(s: LedgerStore, backend: &CrashBackend, op: &Op) -> LedgerStore {
        match op {
            Op::Batch {
                votes,
                finals,
                evidence,
                durable,
            } => {
                let (votes, finals) = batch(votes, finals);
                if *durable {
                    s.write_batch(&votes, &finals, evidence)
                        .unwrap_or_else(|e| panic!("write_batch: {e}"));
                } else {
                    s.stage_batch(&votes, &finals, evidence)
                        .unwrap_or_else(|e| panic!("stage_batch: {e}"));
                }
                s
            }
            Op::Sync => {
                s.sync().unwrap_or_else(|e| panic!("sync: {e}"));
                s
            }
            Op::Reopen => {
                s.sync().unwrap_or_else(|e| panic!("sync at stop: {e}"));
                drop(s);
                reopen::<Ledger>(backend)
            }
        }
    }

    /// `ledger verify` on the image as the crash left it, then the rows
    /// (each must be the chain's, byte for byte) and `restore`.
    fn read_back(path: &Path, ctx: &str) -> Model {
        let c = chain();
        let report = verify_file(
            path,
            &bulwark_actors::epoch::ValidatorSet::genesis(c.keys.clone()),
        )
        .unwrap_or_else(|e| panic!("{ctx}: ledger verify: {e}"));
        let store = open_store(path, ctx);
        let model = rows_of(&store, ctx);
        assert_eq!(
            report.entries, model.head,
            "{ctx}: verify and the rows disagree"
        );
        let restored = LedgerStore::new(store)
            .restore()
            .unwrap_or_else(|e| panic!("{ctx}: restore: {e}"));
        let head_hash = match model.head {
            0 => bulwark_actors::ledger::GENESIS,
            h => c.links[(h - 1) as usize].hash,
        };
        assert_eq!(restored.final_head, (model.head, head_hash), "{ctx}");
        assert_eq!(report.head, head_hash, "{ctx}");
        let pending: BTreeSet<u64> = restored.pending.iter().map(|p| p.0.entry.height).collect();
        assert_eq!(pending, model.voted, "{ctx}: restored pending votes");
        for (link, vote) in &restored.pending {
            let h = (link.entry.height - 1) as usize;
            assert_eq!((link, vote), (&c.links[h], &c.votes[h]), "{ctx}");
        }
        assert_eq!(restored.evidence, model.evidence, "{ctx}");
        model
    }
}

/// The five tables, checked row by row against the chain.
fn rows_of(store: &Store, ctx: &str) -> Model {
    let c = chain();
    let db = store.database();
    let ledger = dump_u64(db, LEDGER);
    let certs = dump_u64(db, LEDGER_CERTS);
    assert_eq!(
        ledger.len(),
        certs.len(),
        "{ctx}: an entry without its certificate"
    );
    for ((h, entry), (hc, cert)) in ledger.iter().zip(&certs) {
        let i = (*h - 1) as usize;
        assert_eq!(h, hc, "{ctx}");
        assert_eq!(entry, &c.finals[i].entry, "{ctx}: ledger row {h}");
        assert_eq!(cert, &codec::encode(&c.finals[i].cert).unwrap(), "{ctx}");
    }
    let votes = dump_u64(db, BFT_VOTES);
    let pending = dump_u64(db, BFT_PENDING);
    let heights = |rows: &[(u64, Vec<u8>)]| rows.iter().map(|r| r.0).collect::<BTreeSet<_>>();
    assert_eq!(
        heights(&votes),
        heights(&pending),
        "{ctx}: a vote without its entry"
    );
    for (h, v) in &votes {
        let i = (*h - 1) as usize;
        assert_eq!(
            v,
            &codec::encode(&c.votes[i]).unwrap(),
            "{ctx}: vote row {h}"
        );
    }
    for (h, p) in &pending {
        assert_eq!(
            p,
            &c.links[(*h - 1) as usize].bytes,
            "{ctx}: pending row {h}"
        );
    }
    let evidence = dump_u64(db, EVIDENCE)
        .into_iter()
        .map(|(_, v)| codec::decode(&v).unwrap())
        .collect();
    Model {
        head: ledger.len() as u64,
        voted: heights(&votes),
        evidence,
    }
}

#[test]
fn a_crash_at_any_sync_keeps_the_acknowledged_ledger_and_it_verifies() {
    crate::run::<Ledger>("ledger", 0..3, 500);
}

/// The same over 1,000+ crash points (about 35 s in a debug build).
#[test]
#[ignore = "long: 1,000+ crash points of the ledger"]
fn a_crash_at_any_of_1000_syncs_keeps_the_acknowledged_ledger_and_it_verifies() {
    crate::run::<Ledger>("ledger", 3..8, 1_000);
}
