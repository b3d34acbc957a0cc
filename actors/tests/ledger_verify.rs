//! The ledger checkers: `ledger verify` on a real redb file finds a flipped
//! byte in any stored entry or certificate and names its height;
//! certificates never verify without a quorum of distinct signers or with a
//! signature over other bytes (property tests), and the planted bug that
//! counts a signer twice is caught.

use std::collections::BTreeMap;

use bulwark_actors::bft::{verify_file, LedgerStore, VerifyError};
use bulwark_actors::epoch::{ValidatorChange, ValidatorSet, VoteKey};
use bulwark_actors::keys::{Domain, Keyring, PublicKeys};
use bulwark_actors::ledger::{
    admit, quorum, verify_chain, Certificate, FinalEntry, Link, SignedProposal, Verdict, Vote,
    VoteBody,
};
use bulwark_actors::raft::EntryPayload;
use bulwark_actors::schedule::{
    Block, BlockId, Command, IdempotencyKey, Op, Person, PersonId, Pool, Role, ScheduleState,
};
use bulwark_storage::schema::{LEDGER, LEDGER_CERTS};
use bulwark_storage::{codec, Store};
use bulwark_transport::FacilityId;
use proptest::prelude::*;
use redb::ReadableTable;

fn ids(n: usize) -> Vec<FacilityId> {
    [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf",
    ][..n]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
}

fn rings(n: usize) -> BTreeMap<FacilityId, Keyring> {
    Keyring::deterministic(&ids(n), 9)
}

fn ops(len: usize) -> Vec<Op> {
    let mut v = vec![Op::AddPerson(Person {
        id: "p0".parse::<PersonId>().unwrap(),
        name: "Person 0".into(),
        role: Role::Resident { pgy: 2 },
    })];
    for b in 0..len.saturating_sub(1) {
        v.push(Op::AddBlock(Block {
            id: format!("b{b}").parse::<BlockId>().unwrap(),
            day: b as u32,
            start_min: 0,
            duration_min: 60,
            pool: Pool::Clinic,
            required: 1,
        }));
    }
    v
}

/// A chain of `len` final entries proposed in turn by 3 facilities, each
/// certified by the first two signers.
fn chain(len: usize) -> (Vec<FinalEntry>, ValidatorSet) {
    let rings = rings(3);
    let public = ValidatorSet::genesis(rings[&ids(3)[0]].public().clone());
    let mut state = ScheduleState::new();
    let mut out = Vec::new();
    for (i, op) in ops(len).into_iter().enumerate() {
        let proposer = ids(3)[i % 3].clone();
        let payload = EntryPayload {
            proposer: proposer.clone(),
            seq: i as u64,
            anchor: state.chain().anchor(),
            command: Command {
                key: IdempotencyKey([i as u8; 16]),
                issued_by: proposer.clone(),
                at_unix_ms: 1_000 + i as u64,
                hlc: bulwark_actors::hlc::Hlc::ZERO,
                op,
            },
        };
        let body = codec::encode(&payload).unwrap();
        let sig = rings[&proposer].sign(Domain::Proposal, &body);
        let data = codec::encode(&SignedProposal { body, sig }).unwrap();
        let adm = admit(&mut state, &public, i as u64 + 1, 1, &data);
        let Verdict::Admitted(link) = adm.verdict else {
            panic!("not admitted: {:?}", adm.verdict)
        };
        out.push(certify(&rings, &link, &ids(3)[..2]));
    }
    (out, public)
}

fn certify(
    rings: &BTreeMap<FacilityId, Keyring>,
    link: &Link,
    signers: &[FacilityId],
) -> FinalEntry {
    let votes = signers
        .iter()
        .map(|s| {
            let body = VoteBody {
                signer: s.clone(),
                height: link.entry.height,
                hash: link.hash,
                prev: link.entry.prev,
            };
            Vote::sign(&rings[s], &body).unwrap()
        })
        .collect();
    FinalEntry {
        entry: link.bytes.clone(),
        cert: Certificate {
            height: link.entry.height,
            hash: link.hash,
            prev: link.entry.prev,
            votes,
        },
    }
}

fn rows(finals: &[FinalEntry]) -> impl Iterator<Item = (u64, Result<FinalEntry, String>)> + '_ {
    finals
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64 + 1, Ok(f.clone())))
}

#[test]
fn a_good_chain_verifies() {
    let (finals, public) = chain(6);
    let report = verify_chain(rows(&finals), &public).unwrap();
    assert_eq!(report.entries, 6);
}

/// Every byte of every stored entry and certificate, flipped one at a
/// time, is found at its height (the values exactly as the ledger tables
/// store them).
#[test]
fn any_flipped_byte_of_an_entry_or_certificate_is_found_at_its_height() {
    let (finals, public) = chain(4);
    for (k, f) in finals.iter().enumerate() {
        let height = k as u64 + 1;
        let cert_bytes = codec::encode(&f.cert).unwrap();
        for (which, len) in [("entry", f.entry.len()), ("cert", cert_bytes.len())] {
            for at in 0..len {
                let mut tampered = finals.clone();
                let row: Result<FinalEntry, String> = if which == "entry" {
                    tampered[k].entry[at] ^= 0x01;
                    Ok(tampered[k].clone())
                } else {
                    let mut b = cert_bytes.clone();
                    b[at] ^= 0x01;
                    codec::decode::<Certificate>(&b)
                        .map(|cert| FinalEntry {
                            entry: f.entry.clone(),
                            cert,
                        })
                        .map_err(|e| e.to_string())
                };
                let mut rs: Vec<(u64, Result<FinalEntry, String>)> = rows(&finals).collect();
                rs[k] = (height, row);
                let fault = verify_chain(rs, &public).expect_err(&format!(
                    "{which} byte {at} at height {height} flipped, not found"
                ));
                assert_eq!(fault.height, height, "{which} byte {at}: {fault}");
            }
        }
    }
}

/// The same through `ledger verify`'s file reader, on a real redb file
/// written by the validator's store, tampered with through redb.
#[test]
fn ledger_verify_on_a_file_names_the_height_of_a_tampered_row() {
    let (finals, public) = chain(5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulwark.redb");
    {
        let store = Store::open(&path, "alpha").unwrap().store;
        let ls = LedgerStore::new(store);
        let numbered: Vec<(u64, FinalEntry)> = finals
            .iter()
            .enumerate()
            .map(|(i, f)| (i as u64 + 1, f.clone()))
            .collect();
        ls.append_finals(&numbered).unwrap();
    }
    let report = verify_file(&path, &public).unwrap();
    assert_eq!(report.entries, 5);
    for (table, height, at) in [
        (LEDGER, 3u64, 10usize),
        (LEDGER_CERTS, 4, 40),
        (LEDGER, 1, 0),
    ] {
        let original;
        {
            let store = Store::open(&path, "alpha").unwrap().store;
            let tx = store.begin_write().unwrap();
            {
                let mut t = tx.open_table(table).unwrap();
                let mut v = t.get(height).unwrap().unwrap().value().to_vec();
                original = v.clone();
                v[at] ^= 0x80;
                t.insert(height, v.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        match verify_file(&path, &public) {
            Err(VerifyError::Fault(f)) => assert_eq!(f.height, height, "{f}"),
            other => panic!("tampered row at {height} not found: {other:?}"),
        }
        let store = Store::open(&path, "alpha").unwrap().store;
        let tx = store.begin_write().unwrap();
        tx.open_table(table)
            .unwrap()
            .insert(height, original.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    assert_eq!(verify_file(&path, &public).unwrap().entries, 5);
    // A missing certificate, and a missing entry in the middle.
    let store = Store::open(&path, "alpha").unwrap().store;
    let tx = store.begin_write().unwrap();
    tx.open_table(LEDGER_CERTS).unwrap().remove(2).unwrap();
    tx.commit().unwrap();
    drop(store);
    match verify_file(&path, &public) {
        Err(VerifyError::Fault(f)) => assert_eq!(f.height, 2, "{f}"),
        other => panic!("{other:?}"),
    }
}

/// A certificate for `signers` (indices into `ids(n)`, repeats allowed).
fn cert_of(n: usize, signers: &[usize]) -> (Certificate, PublicKeys) {
    let rings = rings(n);
    let all = ids(n);
    let (height, hash, prev) = (7, [3u8; 32], [4u8; 32]);
    let votes = signers
        .iter()
        .map(|&i| {
            let body = VoteBody {
                signer: all[i].clone(),
                height,
                hash,
                prev,
            };
            Vote::sign(&rings[&all[i]], &body).unwrap()
        })
        .collect();
    (
        Certificate {
            height,
            hash,
            prev,
            votes,
        },
        rings[&all[0]].public().clone(),
    )
}

/// The property: a certificate verifies exactly when it holds a quorum of
/// distinct signers and no signer twice.
fn quorum_property(n: usize, signers: &[usize], planted_bug: bool) -> Result<(), String> {
    let (cert, public) = cert_of(n, signers);
    let distinct: std::collections::BTreeSet<_> = signers.iter().collect();
    let ok = cert.verify_with(&public, planted_bug).is_ok();
    let want = distinct.len() == signers.len() && distinct.len() >= quorum(n);
    if ok && !want {
        return Err(format!(
            "n={n} signers={signers:?}: verified with {} distinct of quorum {}",
            distinct.len(),
            quorum(n)
        ));
    }
    if !ok && want && !planted_bug {
        return Err(format!("n={n} signers={signers:?}: a valid quorum refused"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_certificate_verifies_only_with_a_quorum_of_distinct_signers(
        n in 1usize..=7,
        picks in proptest::collection::vec(0usize..7, 0..10),
    ) {
        let signers: Vec<usize> = picks.into_iter().map(|p| p % n).collect();
        prop_assert_eq!(quorum_property(n, &signers, false), Ok(()));
    }

    #[test]
    fn a_signature_over_other_bytes_never_verifies(
        n in 3usize..=7,
        vote in 0usize..7,
        byte in 0usize..200,
        bit in 0u8..8,
    ) {
        let q = quorum(n);
        let signers: Vec<usize> = (0..q).collect();
        let (mut cert, public) = cert_of(n, &signers);
        prop_assert!(cert.verify(&public).is_ok());
        let v = vote % q;
        let at = byte % cert.votes[v].body.len();
        cert.votes[v].body[at] ^= 1 << bit;
        prop_assert!(cert.verify(&public).is_err());
    }
}

/// The planted bug (a signer counted twice) is caught by the property.
#[test]
fn the_property_catches_a_checker_that_counts_a_signer_twice() {
    let mut found = None;
    'search: for n in 1..=7usize {
        let q = quorum(n);
        if q < 2 {
            continue;
        }
        // q - 1 distinct signers, the first repeated.
        let mut signers: Vec<usize> = (0..q - 1).collect();
        signers.push(0);
        for planted in [false, true] {
            if let Err(e) = quorum_property(n, &signers, planted) {
                assert!(planted, "the real checker failed: {e}");
                found = Some(e);
                break 'search;
            }
        }
    }
    let e = found.expect("the planted bug was not caught");
    assert!(e.contains("distinct"), "{e}");
}

/// A file copied while its store was open looks like one left by a crash
/// (redb must repair it, which a read-only open cannot): `ledger verify`
/// repairs a copy and verifies it, and leaves the file as it was.
#[test]
fn a_file_left_by_a_crash_is_verified_from_a_repaired_copy() {
    let (finals, public) = chain(3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bulwark.redb");
    let crashed = dir.path().join("crashed.redb");
    let store = Store::open(&path, "alpha").unwrap().store;
    let numbered: Vec<(u64, FinalEntry)> = finals
        .iter()
        .enumerate()
        .map(|(i, f)| (i as u64 + 1, f.clone()))
        .collect();
    LedgerStore::new(store.clone())
        .append_finals(&numbered)
        .unwrap();
    std::fs::copy(&path, &crashed).unwrap();
    drop(store);
    assert!(
        matches!(
            redb::ReadOnlyDatabase::open(&crashed),
            Err(redb::DatabaseError::RepairAborted)
        ),
        "the copy needs a repair"
    );
    let before = std::fs::read(&crashed).unwrap();
    let report = verify_file(&crashed, &public).expect("verified from a repaired copy");
    assert_eq!(report.entries, 3);
    assert_eq!(
        std::fs::read(&crashed).unwrap(),
        before,
        "the file itself is untouched"
    );
}

/// One proposal by `proposer`, signed with `key`, admitted to `state`.
fn admitted(
    state: &mut ScheduleState,
    genesis: &ValidatorSet,
    proposer: &FacilityId,
    key: &ed25519_dalek::SigningKey,
    i: u64,
    op: Op,
) -> Link {
    let payload = EntryPayload {
        proposer: proposer.clone(),
        seq: i,
        anchor: state.chain().anchor(),
        command: Command {
            key: IdempotencyKey([i as u8; 16]),
            issued_by: proposer.clone(),
            at_unix_ms: 1_000 + i,
            hlc: bulwark_actors::hlc::Hlc::ZERO,
            op,
        },
    };
    let body = codec::encode(&payload).unwrap();
    let ring = Keyring::holding(proposer.clone(), vec![key.clone()], genesis.keys().clone());
    let sig = ring.sign(Domain::Proposal, &body);
    let data = codec::encode(&SignedProposal { body, sig }).unwrap();
    match admit(state, genesis, i, 1, &data).verdict {
        Verdict::Admitted(l) => l,
        other => panic!("entry {i} not admitted: {other:?}"),
    }
}

/// A certificate of `link` signed by `(facility, key)`s.
fn signed_by(link: &Link, signers: &[(&FacilityId, &ed25519_dalek::SigningKey)]) -> FinalEntry {
    let votes = signers
        .iter()
        .map(|(f, k)| {
            let body = VoteBody {
                signer: (*f).clone(),
                height: link.entry.height,
                hash: link.hash,
                prev: link.entry.prev,
            };
            let ring = Keyring::holding((*f).clone(), vec![(*k).clone()], PublicKeys::default());
            Vote::sign(&ring, &body).unwrap()
        })
        .collect();
    FinalEntry {
        entry: link.bytes.clone(),
        cert: Certificate {
            height: link.entry.height,
            hash: link.hash,
            prev: link.entry.prev,
            votes,
        },
    }
}

/// Validator epochs: alpha rotates its key at height 2, charlie leaves at
/// height 4. The chain verifies from the genesis keys alone, each
/// certificate under its height's set. A certificate after the rotation
/// with alpha's old key, or after the removal with charlie's vote, is
/// refused at its height, though the genesis set alone would take either
/// (the check that ignores epochs is shown to miss them).
#[test]
fn certificates_are_checked_under_their_heights_epoch() {
    let ids = ids(3);
    let (a, b, c) = (&ids[0], &ids[1], &ids[2]);
    let old = |f: &FacilityId| Keyring::deterministic_secret(f, 9);
    let a2 = Keyring::deterministic_secret(a, 10);
    let genesis = ValidatorSet::genesis(rings(3)[a].public().clone());
    let mut state = ScheduleState::new();
    let ops = ops(3);
    let h1 = admitted(&mut state, &genesis, a, &old(a), 1, ops[0].clone());
    let rotate = Op::Validator(ValidatorChange {
        facility: a.clone(),
        key: Some(VoteKey::from(&a2.verifying_key())),
    });
    let h2 = admitted(&mut state, &genesis, b, &old(b), 2, rotate);
    // After the rotation alpha proposes with its new key.
    let h3 = admitted(&mut state, &genesis, a, &a2, 3, ops[1].clone());
    let remove = Op::Validator(ValidatorChange {
        facility: c.clone(),
        key: None,
    });
    let h4 = admitted(&mut state, &genesis, a, &a2, 4, remove);
    let h5 = admitted(&mut state, &genesis, b, &old(b), 5, ops[2].clone());
    let good = vec![
        signed_by(&h1, &[(a, &old(a)), (b, &old(b))]),
        signed_by(&h2, &[(a, &old(a)), (c, &old(c))]),
        signed_by(&h3, &[(a, &a2), (b, &old(b))]),
        signed_by(&h4, &[(b, &old(b)), (c, &old(c))]),
        signed_by(&h5, &[(a, &a2), (b, &old(b))]),
    ];
    let report = verify_chain(rows(&good), &genesis).unwrap();
    assert_eq!(report.entries, 5);
    let sets: Vec<(u64, u64, usize)> = report
        .epochs
        .iter()
        .map(|e| (e.number, e.from_height, e.keys().len()))
        .collect();
    assert_eq!(sets, vec![(0, 1, 3), (1, 3, 3), (2, 5, 2)]);
    // Alpha's old key after its rotation.
    let mut stale = good.clone();
    stale[2] = signed_by(&h3, &[(a, &old(a)), (b, &old(b))]);
    let fault = verify_chain(rows(&stale), &genesis).unwrap_err();
    assert_eq!(fault.height, 3, "{fault}");
    assert!(
        stale[2].cert.verify(genesis.keys()).is_ok(),
        "genesis alone takes it"
    );
    // Charlie's vote after it left.
    let mut gone = good.clone();
    gone[4] = signed_by(&h5, &[(b, &old(b)), (c, &old(c))]);
    let fault = verify_chain(rows(&gone), &genesis).unwrap_err();
    assert_eq!(fault.height, 5, "{fault}");
    assert!(fault.reason.contains("epoch 2"), "{fault}");
    assert!(
        gone[4].cert.verify(genesis.keys()).is_ok(),
        "genesis alone takes it"
    );
}

/// A validator change under an idempotency key that decided another
/// command is refused (KEY_REUSED) and changes no set: found by review,
/// where the set changed with no ledger entry for it and finality stopped.
#[test]
fn a_validator_change_under_a_reused_key_changes_nothing() {
    let ids = ids(3);
    let a = &ids[0];
    let old = Keyring::deterministic_secret(a, 9);
    let genesis = ValidatorSet::genesis(rings(3)[a].public().clone());
    let mut state = ScheduleState::new();
    admitted(&mut state, &genesis, a, &old, 1, ops(1)[0].clone());
    // The same key (entry 1's) for a rotation.
    let payload = EntryPayload {
        proposer: a.clone(),
        seq: 2,
        anchor: state.chain().anchor(),
        command: Command {
            key: IdempotencyKey([1; 16]),
            issued_by: a.clone(),
            at_unix_ms: 1_002,
            hlc: bulwark_actors::hlc::Hlc::ZERO,
            op: Op::Validator(ValidatorChange {
                facility: a.clone(),
                key: Some(VoteKey::from(
                    &Keyring::deterministic_secret(a, 10).verifying_key(),
                )),
            }),
        },
    };
    let body = codec::encode(&payload).unwrap();
    let ring = Keyring::holding(a.clone(), vec![old], genesis.keys().clone());
    let sig = ring.sign(Domain::Proposal, &body);
    let data = codec::encode(&SignedProposal { body, sig }).unwrap();
    let adm = admit(&mut state, &genesis, 2, 1, &data);
    assert!(
        matches!(&adm.verdict, Verdict::Rejected { reason, .. } if reason.code() == "KEY_REUSED"),
        "{:?}",
        adm.verdict
    );
    assert_eq!(state.chain().in_force().current, None, "the set changed");
    assert!(adm.epoch.is_none());
}
