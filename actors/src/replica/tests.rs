use proptest::prelude::*;

use super::snapshot::{self, Cursor, Descriptor, SnapshotError};
use super::*;
use crate::schedule::tests::{arb_op, cmd};
use crate::schedule::TablesRead;
use crate::schedule::{Applied, ScheduleState};

fn store(dir: &std::path::Path, name: &str) -> Store {
    Store::open(&dir.join(format!("{name}.redb")), "alpha")
        .unwrap()
        .store
}

/// Applies `ops` to a replica (one batch per `batch` commands) and to the
/// in-memory schedule; returns both.
fn run(dir: &std::path::Path, ops: &[(Op, u8)], batch: usize) -> (Replica, ScheduleState) {
    let mut replica = Replica::open(store(dir, "a")).unwrap();
    let mut mem = ScheduleState::new();
    for (n, group) in ops.chunks(batch.max(1)).enumerate() {
        let tx = replica.begin().unwrap();
        let mut sched = replica.schedule(&tx);
        let mut last = 0;
        for (i, (op, retry)) in group.iter().enumerate() {
            let index = (n * batch + i) as u64 + 1;
            // One in eight repeats the previous command's key.
            let k = if *retry == 0 && index > 1 {
                index - 1
            } else {
                index
            };
            let c = cmd(k, op.clone());
            let on_disk: Applied = sched.apply(index, &c);
            let in_mem: Applied = mem.apply(index, &c);
            assert_eq!(on_disk, in_mem, "index {index}: {op:?}");
            last = index;
        }
        let done = sched.into_tables().finish().unwrap();
        replica.commit(tx, done, last).unwrap();
    }
    (replica, mem)
}

use crate::schedule::Op;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The rules over redb give the verdicts and the state of the rules in
    /// memory, batch by batch, and a restart reads back the same state.
    #[test]
    fn the_replica_on_disk_agrees_with_the_schedule_in_memory(
        ops in prop::collection::vec((arb_op(), 0u8..8), 1..120),
        batch in 1usize..9,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (replica, mem) = run(dir.path(), &ops, batch);
        let view = replica.read().unwrap();
        let back = view.tables().to_mem().unwrap();
        prop_assert_eq!(&back, mem.tables());
        // Paging by day reads the same blocks from either.
        let (mut after, mut pages) = (None::<(u32, crate::schedule::BlockId)>, 0);
        loop {
            let (d, a) = after.clone().map_or((0, None), |(d, b)| (d, Some(b)));
            let disk = view.tables().blocks_by_day(d, a.as_ref(), u32::MAX, 3);
            let ram = mem.tables().blocks_by_day(d, a.as_ref(), u32::MAX, 3);
            prop_assert_eq!(&disk, &ram);
            pages += 1;
            match disk.last() {
                Some(b) if disk.len() == 3 && pages < 100 => after = Some((b.day, b.id.clone())),
                _ => break,
            }
        }
        prop_assert_eq!(
            view.tables().archived_blocks(0, None, u32::MAX, usize::MAX),
            mem.tables().archived_blocks(0, None, u32::MAX, usize::MAX)
        );
        prop_assert_eq!(replica.applied(), ops.len() as u64);
        let path = replica.store().path().to_path_buf();
        drop(view);
        drop(replica);
        let reopened = Replica::open(Store::open(&path, "alpha").unwrap().store).unwrap();
        prop_assert_eq!(reopened.applied(), ops.len() as u64);
        let back = reopened.read().unwrap().tables().to_mem().unwrap();
        prop_assert_eq!(&back, mem.tables());
    }
}

/// Streams every row of `from` in chunks of `max` bytes into `to`'s
/// staging; returns the descriptor and the receiver's hasher.
fn transfer(from: &Replica, to: &Store, max: usize) -> (Descriptor, snapshot::RowHasher, usize) {
    let tx = from.store().database().begin_read().unwrap();
    let all = snapshot::digest_all(from.store(), &tx).unwrap();
    let desc = Descriptor {
        id: 1,
        index: from.applied(),
        rows: all.rows(),
        bytes: all.bytes(),
        digest: all.digest(),
    };
    snapshot::clear_staging(to).unwrap();
    let mut h = snapshot::RowHasher::default();
    let mut cursor = Cursor::default();
    let mut chunks = 0;
    loop {
        let chunk = snapshot::read_chunk(from.store(), &tx, &cursor, max).unwrap();
        let (bytes, sum) = snapshot::seal(&chunk).unwrap();
        let got = snapshot::open(&bytes, &sum, h.rows()).unwrap();
        snapshot::stage(to, h.rows(), &got.rows, &mut h).unwrap();
        chunks += 1;
        match got.next {
            Some(next) => cursor = next,
            None => break,
        }
    }
    (desc, h, chunks)
}

fn busy_replica(dir: &std::path::Path) -> (Replica, ScheduleState) {
    let mut ops = Vec::new();
    for p in 0..5 {
        ops.push((crate::schedule::tests::person_op(&format!("p{p}")), 1));
    }
    for b in 0..40u32 {
        ops.push((
            crate::schedule::tests::block_op(&format!("b{b}"), b / 2, b % 2),
            1,
        ));
    }
    for b in 0..40u32 {
        ops.push((
            Op::Assign {
                person: format!("p{}", b % 5).parse().unwrap(),
                block: format!("b{b}").parse().unwrap(),
            },
            1,
        ));
    }
    run(dir, &ops, 7)
}

#[test]
fn a_snapshot_streams_in_chunks_and_installs_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mem) = busy_replica(dir.path());
    let b_store = store(dir.path(), "b");
    let (desc, h, chunks) = transfer(&a, &b_store, 512);
    assert!(
        chunks > 5,
        "{chunks} chunks: the test must cross chunk bounds"
    );
    snapshot::install(&b_store, &desc, &h).unwrap();
    let b = Replica::open(b_store).unwrap();
    assert_eq!(b.applied(), a.applied());
    let back = b.read().unwrap().tables().to_mem().unwrap();
    assert_eq!(&back, mem.tables());
}

#[test]
fn a_damaged_chunk_or_digest_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = busy_replica(dir.path());
    // The receiver already holds a state of its own.
    let (b_before, b_mem) = {
        let sub = dir.path().join("b");
        std::fs::create_dir(&sub).unwrap();
        let ops = vec![(crate::schedule::tests::person_op("zed"), 1)];
        let (r, m) = run(&sub, &ops, 1);
        (r, m)
    };
    let b_store = b_before.store().clone();
    // A flipped byte fails the chunk's checksum.
    let tx = a.store().database().begin_read().unwrap();
    let chunk = snapshot::read_chunk(a.store(), &tx, &Cursor::default(), 4096).unwrap();
    let (mut bytes, sum) = snapshot::seal(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    assert!(matches!(
        snapshot::open(&bytes, &sum, 0),
        Err(SnapshotError::DamagedChunk { .. })
    ));
    // Rows that do not hash to the descriptor are not installed.
    let (mut desc, h, _) = transfer(&a, &b_store, 4096);
    desc.digest[0] ^= 1;
    assert!(matches!(
        snapshot::install(&b_store, &desc, &h),
        Err(SnapshotError::Mismatch { .. })
    ));
    let back = b_before.read().unwrap().tables().to_mem().unwrap();
    assert_eq!(&back, b_mem.tables());
    assert_eq!(b_before.applied(), 1);
}

#[test]
fn an_index_that_disagrees_with_its_data_is_refused_on_read_back() {
    use bulwark_storage::schema::{SCHED_DAYS, SCHED_DUTY, SCHED_OPEN};
    for (name, table) in [
        ("sched_duty", SCHED_DUTY),
        ("sched_open", SCHED_OPEN),
        ("sched_days", SCHED_DAYS),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = busy_replica(dir.path());
        assert!(a.read().unwrap().tables().to_mem().is_ok());
        // Drop one row of the index behind the rules' back (or, for an
        // empty one, add a stray row).
        let tx = a.store().begin_write().unwrap();
        {
            let mut t = tx.open_table(table).unwrap();
            let first = t.first().unwrap().map(|(k, _)| k.value().to_vec());
            match first {
                Some(k) => {
                    t.remove(k.as_slice()).unwrap();
                }
                None => {
                    t.insert([0u8, 0, 0, 1, b'x'].as_slice(), [].as_slice())
                        .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        let back = a.read().unwrap().tables().to_mem();
        assert!(
            matches!(back, Err(bulwark_storage::StorageError::Corrupt { .. })),
            "{name}: {back:?}",
        );
    }
}

#[test]
fn archives_and_retirements_on_disk_agree_with_memory_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pid = |s: &str| s.parse::<crate::schedule::PersonId>().unwrap();
    let mut ops = Vec::new();
    for p in 0..3 {
        ops.push((crate::schedule::tests::person_op(&format!("p{p}")), 1));
    }
    // Twenty days of two blocks, everyone working two days in three.
    for d in 0..20u32 {
        for half in 0..2 {
            let id = format!("b{d}-{half}");
            ops.push((crate::schedule::tests::block_op(&id, d, half), 1));
            ops.push((
                Op::Assign {
                    person: pid(&format!("p{}", (d + half) % 3)),
                    block: id.parse().unwrap(),
                },
                1,
            ));
        }
    }
    ops.push((Op::Approve { through_day: 19 }, 1));
    ops.push((Op::Archive { through_day: 6 }, 1));
    ops.push((Op::Archive { through_day: 9 }, 1));
    ops.push((
        Op::RetirePerson {
            person: pid("p0"),
            from_day: 30,
        },
        1,
    ));
    ops.push((crate::schedule::tests::block_op("late", 31, 0), 1));
    ops.push((
        Op::Assign {
            person: pid("p0"),
            block: "late".parse().unwrap(),
        },
        1,
    ));
    let (replica, mem) = run(dir.path(), &ops, 5);
    let last = |a: &Applied| match a {
        Applied::Fresh(o) => o.clone(),
        Applied::Duplicate { outcome, .. } => outcome.clone(),
    };
    // The verdicts were compared one by one in `run`; the state is the
    // same, with 20 blocks archived and the last assignment refused.
    assert_eq!(mem.tables().archived_through(), Some(9));
    let archived = mem.tables().archived_blocks(0, None, u32::MAX, usize::MAX);
    assert_eq!(archived.len(), 20);
    let view = replica.read().unwrap();
    assert_eq!(view.tables().archived_through(), Some(9));
    assert_eq!(
        view.tables().archived_blocks(0, None, u32::MAX, usize::MAX),
        archived
    );
    assert_eq!(view.tables().retired_from(&pid("p0")), Some(30));
    let mut again = mem.clone();
    let o = last(&again.apply(
        10_000,
        &cmd(
            10_000,
            Op::Assign {
                person: pid("p0"),
                block: "late".parse().unwrap(),
            },
        ),
    ));
    assert!(
        matches!(o, crate::schedule::Outcome::Rejected(r) if r.rule == crate::schedule::Rule::Retired)
    );
    // A snapshot carries the archive, the retirements and the archived day.
    let b_store = store(dir.path(), "b");
    let (desc, h, _) = transfer(&replica, &b_store, 512);
    snapshot::install(&b_store, &desc, &h).unwrap();
    let b = Replica::open(b_store).unwrap();
    assert_eq!(&b.read().unwrap().tables().to_mem().unwrap(), mem.tables());
    let path = replica.store().path().to_path_buf();
    drop(view);
    drop(replica);
    let reopened = Replica::open(Store::open(&path, "alpha").unwrap().store).unwrap();
    let back = reopened.read().unwrap().tables().to_mem().unwrap();
    assert_eq!(&back, mem.tables());
    assert_eq!(back.archived_through(), Some(9));
}
