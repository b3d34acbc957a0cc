//! `ledger verify` (`bft::verify_file`) on a file of arbitrary bytes: a
//! verdict or a typed error, never a panic; the file is never written; the
//! verdict is the same twice.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bulwark_actors::bft::verify_file;
use bulwark_fuzz::keys;
use libfuzzer_sys::fuzz_target;

fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("bulwark-fuzz-ledger-{}.redb", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let keys = bulwark_actors::epoch::ValidatorSet::genesis(keys());
    let path = path();
    std::fs::write(path, data).expect("write the fuzz file");
    let first = verify_file(path, &keys).map_err(|e| e.to_string());
    assert_eq!(
        std::fs::read(path).expect("read back"),
        data,
        "ledger verify wrote the file"
    );
    let second = verify_file(path, &keys).map_err(|e| e.to_string());
    assert_eq!(
        first.map(|r| (r.entries, r.head)),
        second.map(|r| (r.entries, r.head))
    );
});
