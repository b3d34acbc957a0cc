//! Inputs the fuzzers (`fuzz/`) found, kept as regression tests.
//!
//! `tests/data/ledger-verify-*.redb`: crashes of the `ledger_verify`
//! target, each a real two-entry ledger file with B-tree page bytes
//! changed (the first has 812 bytes changed). `verify_file` opens a file
//! read-only without redb's integrity check; reading the ledger table then
//! reaches `unreachable!()` in redb 4.6 (`btree_cursor.rs:167` while
//! iterating, `btree.rs:1110` in a `get`), so `bulwark ledger verify` on a
//! damaged file panics instead of naming the damage. `Store::open`, which
//! checks integrity on open, refuses the same files with a typed error.
//!
//! `tests/data/ledger-verify-region-assert.redb`: stopped a `ledger_verify`
//! run built with cargo-fuzz's default `-Cdebug-assertions`, which turns
//! on redb's own `debug_assert!(regional_start < region_size)` (page
//! addressing, reached by the integrity check's repair). No bulwark build
//! compiles redb's debug assertions (`[profile.*.package.redb]`); there the
//! file ends in a typed error from both `Store::open` and `verify_file`,
//! which the tests below hold.

use std::path::{Path, PathBuf};

use bulwark_actors::bft::verify_file;
use bulwark_actors::keys::Keyring;
use bulwark_storage::{StorageError, Store};
use bulwark_transport::FacilityId;

const FIXTURES: [&str; 3] = [
    "ledger-verify-unreachable.redb",
    "ledger-verify-btree-get.redb",
    "ledger-verify-region-assert.redb",
];

fn fixture(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    let path = dir.join(name);
    std::fs::copy(src, &path).unwrap();
    path
}

fn keys() -> bulwark_actors::keys::PublicKeys {
    let ids: Vec<FacilityId> = ["alpha", "bravo", "charlie"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    Keyring::deterministic(&ids, 9)[&ids[0]].public().clone()
}

/// The damage is visible to redb's integrity check: the store refuses the
/// file, naming it, without panicking.
#[test]
fn the_damaged_ledger_files_are_refused_by_store_open() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let path = fixture(dir.path(), name);
        match Store::open(&path, "alpha") {
            Err(StorageError::Corrupt { .. } | StorageError::Redb { .. }) => {}
            Err(e) => panic!("{name}: unexpected error: {e}"),
            Ok(_) => panic!("{name}: a damaged file opened"),
        }
    }
}

/// `ledger verify` must end in a verdict or a typed error on any file:
/// `verify_file` checks a copy's integrity before reading it, as
/// `Store::open` does (the file itself is never written). Before that fix
/// these files panicked inside redb.
#[test]
fn ledger_verify_on_the_damaged_files_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let path = fixture(dir.path(), name);
        let before = std::fs::read(&path).unwrap();
        let verdict = std::panic::catch_unwind(|| {
            verify_file(&path, &bulwark_actors::epoch::ValidatorSet::genesis(keys()))
                .map(|r| r.entries)
        });
        let verdict = verdict.unwrap_or_else(|_| panic!("{name}: ledger verify panicked"));
        assert!(
            verdict.is_err(),
            "{name}: a damaged ledger verified: {verdict:?}"
        );
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after, before, "{name}: the file was written");
    }
}
