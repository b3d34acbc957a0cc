//! `Store::backup_to`: a consistent, complete copy that opens as the same
//! facility's store, never a half-written file.

use bulwark_storage::schema::{BYTES_TABLES, STR_TABLES, U64_TABLES};
use bulwark_storage::Store;
use redb::{ReadableDatabase, ReadableTableMetadata};

#[test]
fn a_backup_holds_every_row_of_every_table_and_opens_as_the_same_facility() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("a.redb"), "alpha")
        .unwrap()
        .store;
    let tx = store.begin_write().unwrap();
    for t in STR_TABLES.iter().skip(1) {
        let mut t = tx.open_table(*t).unwrap();
        t.insert("k", b"v".as_slice()).unwrap();
    }
    for (i, t) in U64_TABLES.iter().enumerate() {
        let mut t = tx.open_table(*t).unwrap();
        for k in 0..=i as u64 {
            t.insert(k, b"row".as_slice()).unwrap();
        }
    }
    for t in BYTES_TABLES {
        tx.open_table(t)
            .unwrap()
            .insert(b"key".as_slice(), b"answer".as_slice())
            .unwrap();
    }
    tx.commit().unwrap();

    let dest = dir.path().join("backup.redb");
    let info = store.backup_to(&dest).unwrap();
    // meta (2 rows) + state + raft_meta + 1+2+…+8 + one row in each
    // bytes-keyed table.
    assert_eq!(info.rows, 2 + 2 + 36 + BYTES_TABLES.len() as u64);
    assert!(info.bytes > 0);
    assert!(!dir.path().join("backup.redb.partial").exists());
    // A second backup to the same file is refused; the first is untouched.
    assert!(store.backup_to(&dest).is_err());

    let copy = Store::open(&dest, "alpha").unwrap();
    assert!(!copy.fresh);
    let rx = copy.store.database().begin_read().unwrap();
    for (i, t) in U64_TABLES.iter().enumerate() {
        assert_eq!(rx.open_table(*t).unwrap().len().unwrap(), i as u64 + 1);
    }
    drop(rx);
    // It is alpha's: bravo cannot open it.
    drop(copy);
    assert!(Store::open(&dest, "bravo").is_err());
}
