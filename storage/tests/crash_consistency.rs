//! Crash consistency of the facility's store (`Store`'s state table), by
//! redb's own method: seeded random puts, deletes and clean reopens on a
//! backend that takes a crash image at every sync (`common/crash.rs`); each
//! image is reopened with the real `Store::open` and compared with a
//! reference model. The property: the store opens, everything acknowledged
//! before the crash is there, and the operation in flight is either wholly
//! there or wholly absent.
//!
//! The writes are the real `Store`'s, over the crash backend: it is opened
//! with `Store::open_backend`, written with `put_state` and
//! `delete_state`, and a reopen drops it and opens the backend again.
//!
//! More seeds: `CRASH_SEEDS=0..200 cargo test -p bulwark-storage --test
//! crash_consistency`.

#[path = "common/crash.rs"]
mod crash;

use std::collections::BTreeMap;
use std::path::Path;

use bulwark_storage::schema;
use bulwark_storage::{codec, StorageError, Store};
use crash::{open_backend, scratch_dir, seeds, write_image, CrashBackend, Image};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redb::{ReadableDatabase, ReadableTable};

const FACILITY: &str = "alpha";
const OPS_PER_SEED: usize = 60;
const KEYS: u8 = 12;

/// The state table as the model sees it: key -> encoded value.
type Model = BTreeMap<String, Vec<u8>>;

#[derive(Debug, Clone)]
enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
    Reopen,
}

fn random_op(rng: &mut ChaCha8Rng) -> Op {
    let key = format!("actor-{}", rng.random_range(0..KEYS));
    match rng.random_range(0..10u8) {
        0..=5 => {
            // Now and then a value large enough to grow the file.
            let len = if rng.random_bool(0.1) {
                rng.random_range(8_000..40_000)
            } else {
                rng.random_range(0..300)
            };
            let mut value = vec![0u8; len];
            rng.fill(&mut value[..]);
            Op::Put { key, value }
        }
        6..=8 => Op::Delete { key },
        _ => Op::Reopen,
    }
}

fn apply_model(model: &mut Model, op: &Op) {
    match op {
        Op::Put { key, value } => {
            model.insert(key.clone(), codec::encode(value).unwrap());
        }
        Op::Delete { key } => {
            model.remove(key);
        }
        Op::Reopen => {}
    }
}

/// The operation through the real `Store` (one durable transaction per
/// call); a reopen drops `store` and opens the backend again.
fn apply(store: Store, backend: &CrashBackend, op: &Op) -> Store {
    match op {
        Op::Put { key, value } => store
            .put_state(key, value)
            .unwrap_or_else(|e| panic!("put_state: {e}")),
        Op::Delete { key } => {
            store
                .delete_state(key)
                .unwrap_or_else(|e| panic!("delete_state: {e}"));
        }
        Op::Reopen => {
            drop(store);
            let opened = open_backend(backend, FACILITY);
            assert!(!opened.fresh, "a reopened store is not fresh");
            return opened.store;
        }
    }
    store
}

/// The state table of an open store, read through the real `Store`.
fn state_of(store: &Store) -> Model {
    let tx = store.database().begin_read().unwrap();
    let table = tx.open_table(schema::STATE).unwrap();
    let mut out = Model::new();
    for row in table.iter().unwrap() {
        let (k, v) = row.unwrap();
        let key = k.value().to_string();
        // Every value reads back through the store's own decoder too.
        let decoded: Vec<u8> = store.get_state(&key).unwrap().unwrap();
        assert_eq!(codec::encode(&decoded).unwrap(), v.value());
        out.insert(key, v.value().to_vec());
    }
    out
}

/// Reopens `image` with the real `Store::open` and checks it against the
/// model before and after the operation in flight.
fn check_image(dir: &Path, image: &Image, history: &[Model], seed: u64) {
    let path = write_image(dir, &image.bytes);
    let ctx = format!(
        "SEED={seed} sync={} crash={:?} acked={}",
        image.sync, image.crash, image.acked
    );
    let opened = Store::open(&path, FACILITY).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
    assert!(!opened.fresh, "{ctx}");
    let found = state_of(&opened.store);
    let before = &history[image.acked];
    let after = history.get(image.acked + 1);
    assert!(
        found == *before || Some(&found) == after,
        "{ctx}: state is neither before nor after the operation in flight\n\
         found  {:?}\nbefore {:?}",
        found.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
}

/// One seed: a created store, then `OPS_PER_SEED` random operations with a
/// crash image at every sync, each checked. Returns the images checked.
fn run_seed(seed: u64, dir: &Path) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let backend = CrashBackend::new(seed);
    backend.set_capture(false);
    let opened = open_backend(&backend, FACILITY);
    assert!(opened.fresh);
    let mut store = opened.store;
    backend.set_capture(true);
    let mut history = vec![Model::new()];
    let mut checked = 0;
    for _ in 0..OPS_PER_SEED {
        let op = random_op(&mut rng);
        store = apply(store, &backend, &op);
        backend.acknowledge();
        let mut model = history.last().unwrap().clone();
        apply_model(&mut model, &op);
        history.push(model);
        for image in backend.take_images() {
            check_image(dir, &image, &history, seed);
            checked += 1;
        }
    }
    // Any sync of the clean shutdown is a crash point too.
    drop(store);
    for image in backend.take_images() {
        check_image(dir, &image, &history, seed);
        checked += 1;
    }
    checked
}

/// Every sync of every seed is a crash point; the default run covers
/// 1,000+ of them.
#[test]
fn a_crash_at_any_sync_keeps_every_acknowledged_write_and_no_half_write() {
    let dir = scratch_dir();
    let mut points = 0;
    for seed in seeds(0..16) {
        points += run_seed(seed, dir.path());
    }
    println!("crash points checked: {points}");
    assert!(points >= 1_000 || std::env::var("CRASH_SEEDS").is_ok());
}

/// A crash while a store is being created (before `init_meta` commits)
/// leaves a file that `Store::open` refuses with a typed error, never a
/// panic. The images are those of `Store::open_backend` creating a store on
/// an empty backend: the same redb calls and the same `init_meta` as
/// `Store::open` creating one at `<file>.creating`.
#[test]
fn a_crash_during_creation_is_refused_with_a_typed_error() {
    let dir = scratch_dir();
    for seed in seeds(0..16) {
        let backend = CrashBackend::new(seed);
        drop(open_backend(&backend, FACILITY));
        let images = backend.take_images();
        // The last images are from after init_meta committed (and the
        // clean shutdown); those must open.
        for image in images {
            let path = write_image(dir.path(), &image.bytes);
            match Store::open(&path, FACILITY) {
                Ok(opened) => assert!(!opened.fresh),
                Err(
                    StorageError::Corrupt { .. }
                    | StorageError::Foreign { .. }
                    | StorageError::Redb { .. },
                ) => {}
                Err(e) => panic!("SEED={seed} sync={}: {e}", image.sync),
            }
        }
    }
}

/// What `Store::open_backend` documents: creation on a backend is not
/// crash-safe (there is no rename), so a crash image of the creation, put
/// back in a backend, opens as a fresh store only when it is empty; any
/// other either opens as the created store or is refused with a typed
/// error, never a panic.
#[test]
fn a_crash_during_creation_on_a_backend_is_refused_with_a_typed_error() {
    use redb::StorageBackend as _;
    let mut refused = 0;
    for seed in seeds(0..16) {
        let backend = CrashBackend::new(seed);
        drop(open_backend(&backend, FACILITY));
        for image in backend.take_images() {
            let copy = redb::backends::InMemoryBackend::new();
            copy.set_len(image.bytes.len() as u64).unwrap();
            copy.write(0, &image.bytes).unwrap();
            let ctx = format!("SEED={seed} sync={} crash={:?}", image.sync, image.crash);
            match Store::open_backend(copy, Path::new(crash::LABEL), FACILITY) {
                Ok(opened) => assert_eq!(opened.fresh, image.bytes.is_empty(), "{ctx}"),
                Err(
                    StorageError::Corrupt { .. }
                    | StorageError::Foreign { .. }
                    | StorageError::Redb { .. },
                ) => refused += 1,
                Err(e) => panic!("{ctx}: {e}"),
            }
        }
    }
    println!("creation images refused: {refused}");
}

/// Regression test for a finding of this suite (issue 9): a crash during
/// the first `Store::open` of a facility (after `Database::create`, before
/// `init_meta` commits) used to leave an empty or meta-less file that
/// every later `Store::open` refused, so the facility could not start
/// again although nothing was ever acknowledged. `Store::open` now builds a
/// new store at `creating_path(path)` and renames it into place once its
/// meta is durable, so every crash image of the creation is left at the
/// temporary path: the next open starts fresh over it.
#[test]
fn a_crash_during_creation_leaves_a_file_that_opens() {
    let dir = scratch_dir();
    for seed in seeds(0..16) {
        let backend = CrashBackend::new(seed);
        drop(open_backend(&backend, FACILITY));
        for image in backend.take_images() {
            let path = dir.path().join("facility.redb");
            let _ = std::fs::remove_file(&path);
            std::fs::write(bulwark_storage::creating_path(&path), &image.bytes).unwrap();
            match Store::open(&path, FACILITY) {
                Ok(opened) => assert!(opened.fresh, "SEED={seed} sync={}", image.sync),
                Err(e) => panic!(
                    "SEED={seed} sync={} crash={:?}: {e}",
                    image.sync, image.crash
                ),
            }
            assert!(!bulwark_storage::creating_path(&path).exists());
        }
    }
}
