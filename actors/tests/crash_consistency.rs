//! Crash consistency of the actors' stores, by redb's own method: the Raft
//! log (`RaftStore`), the replica's schedule tables (`Replica`), the ledger
//! (`LedgerStore`) and the idempotency store (`IdempotencyStore`) are
//! driven through seeded random operations on a
//! backend that takes a crash image at every sync
//! (`storage/tests/common/crash.rs`: power loss, power loss with reordered
//! writes, process crash). Each image is reopened with the real code
//! (`Store::open`, then the store's own open or restore) and compared with a
//! reference model: everything a durable operation acknowledged before the
//! crash is there, deferred operations after it (`Subject::durable`) are
//! there as a prefix, and the operation in flight is wholly there or
//! wholly absent.
//!
//! The writes are the real stores', over the crash backend: each is opened
//! on a `Store` from `Store::open_backend` as a starting facility opens it,
//! driven through its public API, and a reopen drops it and opens the
//! backend again (clones of the backend share its file).
//!
//! Every sync of every seed is a crash point. The default run checks
//! 1,000+ per store, except the ledger (about 700: each of its images
//! replays the chain through `ledger verify`); its 1,000+ run is ignored by
//! default: `cargo test -p bulwark-actors --test crash_consistency --
//! --ignored`. Other seeds: `CRASH_SEEDS=0..200` before the same command.

#[path = "../../storage/tests/common/crash.rs"]
mod crash;
#[path = "crash/idempotency.rs"]
mod idempotency;
#[path = "crash/ledger.rs"]
mod ledger;
#[path = "crash/raft_log.rs"]
mod raft_log;
#[path = "crash/replica.rs"]
mod replica;

use std::fmt::Debug;
use std::path::Path;

use bulwark_storage::Store;
use crash::{scratch_dir, seeds, write_image, CrashBackend, Image};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// The facility that owns every file here.
pub const FACILITY: &str = "alpha";

/// One store under test: its operations, its model, how the real store is
/// opened and driven, and how the real code reads a reopened file.
pub trait Subject {
    /// One call into the store.
    type Op: Clone + Debug;
    /// What the store holds, as the test compares it.
    type Model: Clone + PartialEq + Debug;
    /// The real store, as the test holds it between operations.
    type Real;

    /// Operations per seed.
    const OPS: usize;

    /// Opens the real store on `store` as a starting facility does. The
    /// first open, on a fresh `Store`, sets the file up before crashes are
    /// counted.
    fn open(store: Store) -> Self::Real;
    /// The model right after the first `open`.
    fn initial() -> Self::Model;
    /// A random operation that is valid in `model`.
    fn random_op(rng: &mut ChaCha8Rng, model: &Self::Model) -> Self::Op;
    /// The operation's effect on the model.
    fn apply_model(model: &mut Self::Model, op: &Self::Op);
    /// Whether the store acknowledges `op` (applied to `before`) only once
    /// it is on disk. A deferred one (false) is durable with the next
    /// durable one; a crash may take back a suffix of deferred operations
    /// (never a middle), so an image may show any state from the last
    /// durable one acknowledged on.
    fn durable(_op: &Self::Op, _before: &Self::Model) -> bool {
        true
    }
    /// The operation through the real store's public API; it panics unless
    /// the store returns `Ok` (the operation is then acknowledged). A
    /// reopen drops `real` and opens the backend again ([`reopen`]).
    fn apply(real: Self::Real, backend: &CrashBackend, op: &Self::Op) -> Self::Real;
    /// Opens the file at `path` with the real code and reads it back.
    fn read_back(path: &Path, ctx: &str) -> Self::Model;
}

/// A clean restart of `S` on `backend`: the real `Store::open_backend` on
/// what the last handle wrote (the caller has dropped it), then `S::open`.
pub fn reopen<S: Subject>(backend: &CrashBackend) -> S::Real {
    let opened = crash::open_backend(backend, FACILITY);
    assert!(!opened.fresh, "a reopened store is not fresh");
    S::open(opened.store)
}

/// Opens the image at `path` with the real `Store::open`.
pub fn open_store(path: &Path, ctx: &str) -> Store {
    let opened = Store::open(path, FACILITY).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    assert!(!opened.fresh, "{ctx}: a crashed file opened as fresh");
    opened.store
}

/// Every row of a `u64`-keyed table of `db`.
pub fn dump_u64(
    db: &impl ReadableDatabase,
    table: TableDefinition<u64, &[u8]>,
) -> Vec<(u64, Vec<u8>)> {
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(table).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect()
}

/// `floors[i]`: the last state at or before `history[i]` that a durable
/// operation made (the states from it to `history[i]` may be what a crash
/// leaves).
fn check_image<S: Subject>(
    dir: &Path,
    image: &Image,
    history: &[S::Model],
    floors: &[usize],
    seed: u64,
) {
    let path = write_image(dir, &image.bytes);
    let ctx = format!(
        "SEED={seed} sync={} crash={:?} acked={}",
        image.sync, image.crash, image.acked
    );
    let found = S::read_back(&path, &ctx);
    let before = &history[image.acked];
    let after = history.get(image.acked + 1);
    let floor = floors[image.acked];
    assert!(
        history[floor..=image.acked].contains(&found) || Some(&found) == after,
        "{ctx}: state is neither one since the last durable operation (state {floor}) \
         nor after the operation in flight\n\
         found  {found:?}\nbefore {before:?}\nafter  {after:?}"
    );
}

/// One seed: a set-up store, then `S::OPS` random operations with a crash
/// image at every sync, each checked. Returns the images checked.
pub fn run_seed<S: Subject>(seed: u64, dir: &Path) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let backend = CrashBackend::new(seed);
    backend.set_capture(false);
    let opened = crash::open_backend(&backend, FACILITY);
    assert!(opened.fresh);
    let mut real = S::open(opened.store);
    backend.set_capture(true);
    let mut history = vec![S::initial()];
    let mut floors = vec![0];
    let mut checked = 0;
    for _ in 0..S::OPS {
        let op = S::random_op(&mut rng, history.last().unwrap());
        real = S::apply(real, &backend, &op);
        backend.acknowledge();
        let mut model = history.last().unwrap().clone();
        let durable = S::durable(&op, &model);
        S::apply_model(&mut model, &op);
        history.push(model);
        let floor = if durable {
            history.len() - 1
        } else {
            *floors.last().unwrap()
        };
        floors.push(floor);
        for image in backend.take_images() {
            check_image::<S>(dir, &image, &history, &floors, seed);
            checked += 1;
        }
    }
    // Any sync of the clean shutdown is a crash point too.
    drop(real);
    for image in backend.take_images() {
        check_image::<S>(dir, &image, &history, &floors, seed);
        checked += 1;
    }
    checked
}

/// Runs `default` seeds (or `CRASH_SEEDS`) for `S`, and checks that at
/// least `points_min` crash points were (unless `CRASH_SEEDS` is set).
pub fn run<S: Subject>(name: &str, default: std::ops::Range<u64>, points_min: usize) {
    let dir = scratch_dir();
    let mut points = 0;
    for seed in seeds(default) {
        points += run_seed::<S>(seed, dir.path());
    }
    println!("{name}: crash points checked: {points}");
    assert!(points >= points_min || std::env::var("CRASH_SEEDS").is_ok());
}
