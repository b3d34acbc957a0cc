//! Injected disk faults (`Store::disk_faults`): a refused write changes
//! nothing, refusals replay from their seed, and a bad spec is refused.
//! Each store is checked against a model of what it should hold, the way
//! redb's fuzz targets check against a BTreeMap.

use std::collections::BTreeMap;
use std::time::Duration;

use bulwark_storage::{DiskFaultError, DiskFaultSpec, StorageError, Store, DISK_LATENCY_MS_MAX};

fn fresh(dir: &tempfile::TempDir, name: &str) -> Store {
    Store::open(&dir.path().join(name), "alpha").unwrap().store
}

fn failing(write_failure: f64, seed: u64) -> DiskFaultSpec {
    DiskFaultSpec {
        latency_ms: 0,
        write_failure,
        seed,
    }
}

/// Writes `{run}.0..{run}.{n}` one transaction each; returns which were
/// refused and checks the store holds exactly the accepted ones (the model).
fn write_n(store: &Store, run: &str, n: u64) -> Vec<bool> {
    let mut model = BTreeMap::new();
    let mut refused = Vec::new();
    for i in 0..n {
        let key = format!("{run}.{i}");
        match store.put_state(&key, &i) {
            Ok(()) => {
                model.insert(key, i);
                refused.push(false);
            }
            Err(e) => {
                assert!(e.is_injected(), "{e:?}");
                refused.push(true);
            }
        }
    }
    for i in 0..n {
        let key = format!("{run}.{i}");
        assert_eq!(
            store.get_state::<u64>(&key).unwrap(),
            model.get(&key).copied(),
            "{key}"
        );
    }
    refused
}

#[test]
fn certain_failure_refuses_every_write_with_the_typed_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir, "a.redb");
    store.put_state("kept", &1u64).unwrap();
    let size = std::fs::metadata(store.path()).unwrap().len();
    store.disk_faults().set(failing(1.0, 9)).unwrap();

    let err = store.put_state("kept", &2u64).unwrap_err();
    assert!(matches!(err, StorageError::Injected { .. }), "{err:?}");
    assert!(err.to_string().contains("a.redb"), "names the file: {err}");
    assert!(store.delete_state("kept").unwrap_err().is_injected());
    assert!(store.begin_write().err().is_some_and(|e| e.is_injected()));
    assert!(write_n(&store, "r", 50).iter().all(|r| *r));

    assert_eq!(store.get_state::<u64>("kept").unwrap(), Some(1));
    assert_eq!(store.disk_faults().injected(), 53);
    assert_eq!(
        std::fs::metadata(store.path()).unwrap().len(),
        size,
        "the file did not change"
    );
}

#[test]
fn zero_probability_refuses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir, "a.redb");
    store.disk_faults().set(failing(0.0, 9)).unwrap();
    assert!(write_n(&store, "r", 200).iter().all(|r| !r));
    assert_eq!(store.disk_faults().injected(), 0);
}

#[test]
fn refusals_replay_from_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (fresh(&dir, "a.redb"), fresh(&dir, "b.redb"));
    a.disk_faults().set(failing(0.3, 42)).unwrap();
    b.disk_faults().set(failing(0.3, 42)).unwrap();
    let run_a = write_n(&a, "first", 300);
    assert_eq!(write_n(&b, "first", 300), run_a, "same seed, same refusals");
    let count = run_a.iter().filter(|r| **r).count() as u64;
    // The ChaCha8 stream of rand_chacha 0.9 for seed 42: a different count
    // means the generator changed, and recorded seeds no longer replay.
    assert_eq!(count, 92);
    assert_eq!(a.disk_faults().injected(), count);

    // `set` restarts the stream from the seed; another seed draws another
    // pattern (so the replay check above can fail).
    a.disk_faults().set(failing(0.3, 42)).unwrap();
    assert_eq!(write_n(&a, "again", 300), run_a);
    a.disk_faults().set(failing(0.3, 43)).unwrap();
    assert_ne!(write_n(&a, "other", 300), run_a);
}

#[test]
fn a_bad_spec_is_refused_with_a_typed_error_and_the_faults_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir, "a.redb");
    let faults = store.disk_faults();
    let good = DiskFaultSpec {
        latency_ms: DISK_LATENCY_MS_MAX,
        write_failure: 1.0,
        seed: 3,
    };
    faults.set(good).unwrap();
    for p in [1.5, -0.1, f64::NAN, f64::INFINITY] {
        let err = faults.set(failing(p, 1)).unwrap_err();
        assert!(
            matches!(err, DiskFaultError::WriteFailure { .. }),
            "{p}: {err:?}"
        );
    }
    let long = DiskFaultSpec {
        latency_ms: DISK_LATENCY_MS_MAX + 1,
        ..DiskFaultSpec::default()
    };
    assert_eq!(
        faults.set(long),
        Err(DiskFaultError::Latency {
            latency_ms: DISK_LATENCY_MS_MAX + 1,
            max_ms: DISK_LATENCY_MS_MAX
        })
    );
    assert_eq!(faults.spec(), good, "refused specs changed nothing");
    assert_eq!(faults.latency(), Duration::from_millis(DISK_LATENCY_MS_MAX));
}

#[test]
fn clear_restores_writes_and_keeps_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir, "a.redb");
    let spec = DiskFaultSpec {
        latency_ms: 200,
        write_failure: 1.0,
        seed: 5,
    };
    store.disk_faults().set(spec).unwrap();
    assert_eq!(store.disk_faults().latency(), Duration::from_millis(200));
    assert!(store.put_state("k", &1u64).unwrap_err().is_injected());

    store.disk_faults().clear();
    assert!(store.disk_faults().spec().is_clear());
    assert_eq!(store.disk_faults().latency(), Duration::ZERO);
    store.put_state("k", &1u64).unwrap();
    assert_eq!(store.get_state::<u64>("k").unwrap(), Some(1));
    assert_eq!(store.disk_faults().injected(), 1, "the count is kept");
}

#[test]
fn clones_share_the_faults_and_a_reopened_store_starts_clear() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh(&dir, "a.redb");
    let path = store.path().to_path_buf();
    store.clone().disk_faults().set(failing(1.0, 1)).unwrap();
    assert!(store.put_state("k", &1u64).unwrap_err().is_injected());
    drop(store);
    let store = Store::open(&path, "alpha").unwrap().store;
    assert!(store.disk_faults().spec().is_clear());
    store.put_state("k", &1u64).unwrap();
}

#[test]
fn a_spec_round_trips_through_the_codec() {
    let full = DiskFaultSpec {
        latency_ms: 5,
        write_failure: 0.25,
        seed: 11,
    };
    let bytes = bulwark_storage::codec::encode(&full).unwrap();
    let back: DiskFaultSpec = bulwark_storage::codec::decode(&bytes).unwrap();
    assert_eq!(back, full);
    assert!(back.validate().is_ok());
}
