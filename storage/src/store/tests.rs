use std::io::Write;

use proptest::prelude::*;
use redb::StorageBackend;

use super::*;

fn fresh(dir: &tempfile::TempDir) -> (PathBuf, Store) {
    let path = dir.path().join("alpha.redb");
    let opened = Store::open(&path, "alpha").unwrap();
    assert!(opened.fresh);
    (path, opened.store)
}

#[test]
fn state_round_trips_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = fresh(&dir);
    store.put_state("tally", &41u64).unwrap();
    store.put_state("tally", &42u64).unwrap();
    assert_eq!(store.get_state::<u64>("tally").unwrap(), Some(42));
    assert_eq!(store.get_state::<u64>("absent").unwrap(), None);
    drop(store);

    let opened = Store::open(&path, "alpha").unwrap();
    assert!(!opened.fresh, "an existing file is not fresh");
    assert_eq!(opened.store.get_state::<u64>("tally").unwrap(), Some(42));
    assert!(opened.store.delete_state("tally").unwrap());
    assert!(!opened.store.delete_state("tally").unwrap());
    assert_eq!(opened.store.get_state::<u64>("tally").unwrap(), None);
}

#[test]
fn empty_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.redb");
    std::fs::File::create(&path).unwrap();
    let err = Store::open(&path, "alpha").unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("empty.redb"), "{err}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        0,
        "nothing written"
    );
}

#[test]
fn garbage_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.redb");
    std::fs::write(&path, b"this is a text file, not a database\n").unwrap();
    let err = Store::open(&path, "alpha").unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("garbage.redb"), "{err}");
}

#[test]
fn truncated_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = fresh(&dir);
    for i in 0..64u64 {
        store
            .put_state(&format!("k{i}"), &vec![i as u8; 512])
            .unwrap();
    }
    drop(store);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    match Store::open(&path, "alpha") {
        Err(err) => assert!(err.to_string().contains("alpha.redb"), "{err}"),
        Ok(opened) => {
            // redb may recover an older consistent state; it must still be ours
            // and never silently empty of its metadata.
            assert!(!opened.fresh);
        }
    }
}

#[test]
fn foreign_redb_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.redb");
    {
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let def: TableDefinition<&str, u64> = TableDefinition::new("stuff");
            let mut t = tx.open_table(def).unwrap();
            t.insert("x", 1).unwrap();
        }
        tx.commit().unwrap();
    }
    let err = Store::open(&path, "alpha").unwrap_err();
    assert!(matches!(err, StorageError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("foreign.redb"), "{err}");
}

/// A store is stamped with the first cluster that claims it; another
/// cluster's claim is refused, naming both, and changes nothing.
#[test]
fn a_store_belongs_to_the_cluster_that_first_claimed_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = fresh(&dir);
    store.claim_cluster(&[1; 16]).unwrap();
    store.claim_cluster(&[1; 16]).unwrap();
    drop(store);
    let store = Store::open(&path, "alpha").unwrap().store;
    match store.claim_cluster(&[2; 16]).unwrap_err() {
        StorageError::WrongCluster {
            expected, found, ..
        } => {
            assert_eq!(expected, "02".repeat(16));
            assert_eq!(found, "01".repeat(16));
        }
        other => panic!("expected WrongCluster, got {other:?}"),
    }
    store.claim_cluster(&[1; 16]).unwrap();
    drop(store);
    // Read back without keeping the store open: what a start without a
    // configured id uses.
    assert_eq!(
        Store::stamped_cluster(&path, "alpha").unwrap(),
        Some([1; 16])
    );
    let none = dir.path().join("none.redb");
    assert_eq!(Store::stamped_cluster(&none, "alpha").unwrap(), None);
    assert!(!none.exists(), "nothing is created");
}

#[test]
fn other_facilitys_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, store) = fresh(&dir);
    drop(store);
    let err = Store::open(&path, "bravo").unwrap_err();
    match &err {
        StorageError::WrongFacility {
            expected, found, ..
        } => {
            assert_eq!(expected, "bravo");
            assert_eq!(found, "alpha");
        }
        other => panic!("expected WrongFacility, got {other:?}"),
    }
}

#[test]
fn second_open_in_one_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _store) = fresh(&dir);
    let err = Store::open(&path, "alpha").unwrap_err();
    assert!(matches!(err, StorageError::AlreadyOpen { .. }), "{err:?}");
}

#[test]
fn undecodable_state_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_path, store) = fresh(&dir);
    store.put_state("s", &"a string".to_string()).unwrap();
    let err = store.get_state::<u64>("s").unwrap_err();
    assert!(
        matches!(err, StorageError::Codec { table: "state", .. }),
        "{err:?}"
    );
}

/// An in-memory backend whose clones share the bytes, so a store can be
/// dropped and opened again over what it wrote.
#[derive(Debug, Clone, Default)]
struct Shared(Arc<redb::backends::InMemoryBackend>);

impl redb::StorageBackend for Shared {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

impl Shared {
    /// A backend holding `bytes`.
    fn of(bytes: &[u8]) -> Shared {
        let b = Shared::default();
        b.set_len(bytes.len() as u64).unwrap();
        b.write(0, bytes).unwrap();
        b
    }

    /// Every byte it holds.
    fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0; self.len().unwrap() as usize];
        self.read(0, &mut out).unwrap();
        out
    }
}

fn label() -> &'static Path {
    Path::new("memory:alpha")
}

#[test]
fn an_empty_backend_opens_fresh_and_keeps_its_writes_across_a_reopen() {
    let opened =
        Store::open_backend(redb::backends::InMemoryBackend::new(), label(), "alpha").unwrap();
    assert!(opened.fresh);
    assert_eq!(opened.store.path(), label());
    drop(opened);

    let backend = Shared::default();
    let store = Store::open_backend(backend.clone(), label(), "alpha")
        .unwrap()
        .store;
    store.put_state("tally", &42u64).unwrap();
    store.put_state("gone", &1u64).unwrap();
    assert!(store.delete_state("gone").unwrap());
    drop(store);

    let opened = Store::open_backend(backend.clone(), label(), "alpha").unwrap();
    assert!(!opened.fresh, "a backend holding a store is not fresh");
    assert_eq!(opened.store.get_state::<u64>("tally").unwrap(), Some(42));
    assert_eq!(opened.store.get_state::<u64>("gone").unwrap(), None);
    drop(opened);

    // The same bytes as a file open with `Store::open`, and the reverse.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("alpha.redb");
    std::fs::write(&path, backend.bytes()).unwrap();
    let store = Store::open(&path, "alpha").unwrap().store;
    assert_eq!(store.get_state::<u64>("tally").unwrap(), Some(42));
    store.put_state("tally", &43u64).unwrap();
    drop(store);
    let from_file = Shared::of(&std::fs::read(&path).unwrap());
    let opened = Store::open_backend(from_file, label(), "alpha").unwrap();
    assert_eq!(opened.store.get_state::<u64>("tally").unwrap(), Some(43));
}

#[test]
fn a_backend_of_another_facility_is_refused() {
    let backend = Shared::default();
    let store = Store::open_backend(backend.clone(), label(), "alpha")
        .unwrap()
        .store;
    store.put_state("tally", &42u64).unwrap();
    drop(store);
    let err = Store::open_backend(backend.clone(), Path::new("memory:bravo"), "bravo").unwrap_err();
    match &err {
        StorageError::WrongFacility {
            path,
            expected,
            found,
        } => {
            assert_eq!(path, Path::new("memory:bravo"));
            assert_eq!(expected, "bravo");
            assert_eq!(found, "alpha");
        }
        other => panic!("expected WrongFacility, got {other:?}"),
    }
    // Still alpha's store, as it was.
    let opened = Store::open_backend(backend, label(), "alpha").unwrap();
    assert_eq!(opened.store.get_state::<u64>("tally").unwrap(), Some(42));
}

#[test]
fn a_backend_of_garbage_is_refused_naming_its_label() {
    let garbage = Shared::of(b"this is a text file, not a database\n");
    let err = Store::open_backend(garbage.clone(), label(), "alpha").unwrap_err();
    assert!(matches!(err, StorageError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("memory:alpha"), "{err}");
    assert_eq!(garbage.bytes(), b"this is a text file, not a database\n");
}

#[test]
fn a_backend_of_a_foreign_database_is_refused() {
    let backend = Shared::default();
    {
        let db = Database::builder()
            .create_with_backend(backend.clone())
            .unwrap();
        let tx = db.begin_write().unwrap();
        {
            let def: TableDefinition<&str, u64> = TableDefinition::new("stuff");
            tx.open_table(def).unwrap().insert("x", 1).unwrap();
        }
        tx.commit().unwrap();
    }
    let err = Store::open_backend(backend, label(), "alpha").unwrap_err();
    assert!(matches!(err, StorageError::Foreign { .. }), "{err:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Arbitrary bytes on disk never panic the opener and never open as a store.
    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 1..8192)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("random.redb");
        std::fs::File::create(&path).unwrap().write_all(&bytes).unwrap();
        prop_assert!(Store::open(&path, "alpha").is_err());
    }

    /// A real store with bytes flipped at a random place either refuses to open
    /// with a typed error or opens as the same facility's store; never a panic.
    #[test]
    fn flipped_bytes_never_panic(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let dir = tempfile::tempdir().unwrap();
        let (path, store) = fresh(&dir);
        store.put_state("k", &7u64).unwrap();
        drop(store);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        std::fs::write(&path, &bytes).unwrap();
        if let Ok(opened) = Store::open(&path, "alpha") {
            prop_assert_eq!(opened.store.facility(), "alpha");
            let _ = opened.store.get_state::<u64>("k");
        }
    }
    /// Arbitrary bytes in a backend never panic the opener and never open
    /// as a store.
    #[test]
    fn random_backend_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 1..8192)) {
        prop_assert!(Store::open_backend(Shared::of(&bytes), label(), "alpha").is_err());
    }

    /// A real store's bytes with one flipped, in a backend: refused with a
    /// typed error or opened as the same facility's store; never a panic.
    #[test]
    fn flipped_backend_bytes_never_panic(at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let backend = Shared::default();
        let store = Store::open_backend(backend.clone(), label(), "alpha").unwrap().store;
        store.put_state("k", &7u64).unwrap();
        drop(store);
        let mut bytes = backend.bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(opened) = Store::open_backend(Shared::of(&bytes), label(), "alpha") {
            prop_assert!(!opened.fresh);
            prop_assert_eq!(opened.store.facility(), "alpha");
            let _ = opened.store.get_state::<u64>("k");
        }
    }
}

/// A staged write inserting `value` under `key` in the state table.
fn staged_row(key: &'static str, value: &'static [u8]) -> StagedWrite {
    Arc::new(move |s: &Store, tx: &redb::WriteTransaction| {
        let mut t = tx.open_table(schema::STATE).map_err(|e| s.redb(e))?;
        t.insert(key, value).map_err(|e| s.redb(e))?;
        Ok(Ok(()))
    })
}

fn state_row(store: &Store, key: &str) -> Option<Vec<u8>> {
    let tx = store.database().begin_read().unwrap();
    let t = tx.open_table(schema::STATE).unwrap();
    t.get(key).unwrap().map(|v| v.value().to_vec())
}

/// A staged write is invisible until a durable commit takes it, in
/// staging order, and its ticket is durable only then; a deferred commit
/// does not take it.
#[test]
fn staged_writes_ride_the_next_durable_commit_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = fresh(&dir);
    let first = store.stage(staged_row("k", b"first"));
    let second = store.stage(staged_row("k", b"second"));
    assert!(second > first);
    assert_eq!(state_row(&store, "k"), None);
    let deferred = store.begin_write_deferred().unwrap();
    deferred.commit().unwrap();
    assert_eq!(state_row(&store, "k"), None, "a deferred commit takes none");
    assert!(!store.is_staged_durable(first));
    let mut watch = store.watch_staged();
    let tx = store.begin_write().unwrap();
    store.commit_durable(tx).unwrap();
    assert_eq!(state_row(&store, "k").as_deref(), Some(&b"second"[..]));
    assert!(store.is_staged_durable(first) && store.is_staged_durable(second));
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), second);
    assert_eq!(store.staged_drops(), 0);
}

/// A staged write that refuses is dropped (counted) and the commit goes
/// on with the caller's rows and the other staged writes; one whose
/// transaction fails goes back to the queue for the next commit.
#[test]
fn a_refused_staged_write_is_dropped_and_the_commit_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = fresh(&dir);
    store.stage(Arc::new(|_: &Store, _: &redb::WriteTransaction| {
        Ok(Err("planted".to_string()))
    }));
    let good = store.stage(staged_row("k", b"v"));
    let tx = store.begin_write().unwrap();
    {
        let mut t = tx.open_table(schema::STATE).unwrap();
        t.insert("own", &b"row"[..]).unwrap();
    }
    store.commit_durable(tx).unwrap();
    assert_eq!(store.staged_drops(), 1);
    assert_eq!(state_row(&store, "own").as_deref(), Some(&b"row"[..]));
    assert_eq!(state_row(&store, "k").as_deref(), Some(&b"v"[..]));
    assert!(store.is_staged_durable(good));
    // A failure of the transaction itself puts the staged writes back.
    let s = store.clone();
    let failing = store.stage(Arc::new(move |_: &Store, _: &redb::WriteTransaction| {
        Err(StorageError::Injected {
            path: s.path().to_path_buf(),
        })
    }));
    let tx = store.begin_write().unwrap();
    assert!(store.commit_durable(tx).is_err());
    assert!(!store.is_staged_durable(failing));
    store.drop_staged();
    assert_eq!(store.staged_drops(), 2);
    store.sync().unwrap();
    let later = store.stage(staged_row("k", b"later"));
    store.sync().unwrap();
    assert!(store.is_staged_durable(later));
    assert_eq!(state_row(&store, "k").as_deref(), Some(&b"later"[..]));
}
