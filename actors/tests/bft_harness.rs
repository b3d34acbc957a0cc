//! BFT validation in the harness: four facilities, one of them lying in
//! each of the ways the validator must survive, and three facilities with
//! one liar. Virtual time, fixed seeds.

mod support;

use std::time::Duration;

use bulwark_actors::bft::evidence::{Evidence, Kind};
use bulwark_actors::bft::{evidence_of, trust_of, validator, Behaviour, BftConfig, LedgerStore};
use bulwark_actors::keys::{Domain, PublicKeys};
use bulwark_actors::ledger::{verify_chain, Anchor, FinalEntry, SignedProposal};
use bulwark_actors::raft::{EntryPayload, RaftWire, RAFT};
use bulwark_actors::schedule::{Block, BlockId, Op, Pool};
use bulwark_runtime::Address;
use bulwark_storage::codec;
use support::{block, committed, person, BftPlan, Cluster};

const SEED: u64 = 4_004;

fn plan(n: usize, liar: Option<(usize, Behaviour)>) -> BftPlan {
    let mut behaviours = vec![Behaviour::Honest; n];
    if let Some((i, b)) = liar {
        behaviours[i] = b;
    }
    BftPlan {
        config: BftConfig::default(),
        behaviours,
        breakers: Vec::new(),
    }
}

/// Final heights of the validators in `among`.
async fn finals(c: &Cluster, among: &[usize]) -> Vec<u64> {
    let mut v = Vec::new();
    for &i in among {
        v.push(c.bft_status(i).await.map_or(0, |s| s.final_height));
    }
    v
}

/// Steps time until every validator in `among` has `height` final.
async fn wait_final(c: &Cluster, among: &[usize], height: u64) {
    for _ in 0..600 {
        if finals(c, among).await.iter().all(|&h| h >= height) {
            return;
        }
        c.h.step(Duration::from_millis(50)).await;
    }
    panic!(
        "validators {among:?} did not reach final height {height}: {:?}",
        finals(c, among).await
    );
}

fn raw_ledger(c: &Cluster, i: usize) -> Vec<(u64, Vec<u8>)> {
    LedgerStore::new(c.h.node(i).ctx().store.clone())
        .raw_finals()
        .expect("ledger reads")
}

fn public(c: &Cluster) -> PublicKeys {
    c.rings[0].public().clone()
}

/// The honest ledgers are byte-identical, hold `height` entries, and every
/// entry verifies (link, quorum certificate, signatures, rules).
fn check_ledgers(c: &Cluster, honest: &[usize], height: u64) {
    let first = raw_ledger(c, honest[0]);
    assert!(first.len() as u64 >= height, "{} < {height}", first.len());
    for &i in honest {
        let l = raw_ledger(c, i);
        let common = l.len().min(first.len());
        assert_eq!(l[..common], first[..common], "ledger of {i} differs");
        let finals = LedgerStore::new(c.h.node(i).ctx().store.clone())
            .finals(1, u32::MAX)
            .expect("ledger reads");
        let rows = finals
            .into_iter()
            .enumerate()
            .map(|(k, f)| (k as u64 + 1, Ok::<FinalEntry, String>(f)));
        let genesis = bulwark_actors::epoch::ValidatorSet::genesis(public(c));
        let report = verify_chain(rows, &genesis).expect("every final entry verifies");
        assert_eq!(report.entries, l.len() as u64);
    }
}

async fn evidence(c: &Cluster, i: usize) -> Vec<Evidence> {
    evidence_of(&validator(c.h.node(i)).expect("validator runs"))
        .await
        .expect("answers")
}

/// Every honest facility's evidence names only the liar; the union holds
/// `code`; the liar's trust is below 1 where it was caught and honest
/// facilities keep full trust.
async fn check_evidence(c: &Cluster, honest: &[usize], liar: usize, code: &str) {
    let liar_id = c.h.id(liar);
    let mut caught = 0;
    for &i in honest {
        let ev = evidence(c, i).await;
        for e in &ev {
            assert_eq!(
                e.offender, liar_id,
                "evidence against an honest facility: {e:?}"
            );
        }
        let trust = trust_of(&validator(c.h.node(i)).unwrap()).await.unwrap();
        for &j in honest {
            assert_eq!(trust[&c.h.id(j)], 1.0, "honest {j} lost trust at {i}");
        }
        if ev.iter().any(|e| e.kind.code() == code) {
            caught += 1;
            assert!(trust[&liar_id] < 1.0, "liar keeps full trust at {i}");
        }
    }
    assert!(caught > 0, "no honest facility recorded {code}");
}

/// People, blocks, and `n` assignments proposed through the honest
/// facilities in turn; returns the number of ledger entries they make.
async fn workload(c: &mut Cluster, via: &[usize], n: usize) -> u64 {
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2, 3][..c.n()], 0, Duration::from_secs(10))
        .await
        .expect("a leader");
    let people = 4;
    c.seed_schedule(leader, people, n).await;
    for k in 0..n {
        let at = via[k % via.len()];
        let cmd = c.command(
            at,
            Op::Assign {
                person: person(k % people),
                block: block(k),
            },
        );
        committed(&c.propose(at, cmd).await);
    }
    (people + 2 * n) as u64
}

async fn run_with_liar(behaviour: Behaviour, code: &str) {
    let liar = 3;
    let honest = [0, 1, 2];
    let mut c = Cluster::start_bft(4, SEED, plan(4, Some((liar, behaviour)))).await;
    let height = workload(&mut c, &honest, 12).await;
    wait_final(&c, &honest, height).await;
    // Time for replays and relays to be seen.
    c.h.step(Duration::from_secs(3)).await;
    check_ledgers(&c, &honest, height);
    check_evidence(&c, &honest, liar, code).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn four_honest_validators_finalize_every_admitted_entry() {
    let mut c = Cluster::start_bft(4, SEED, plan(4, None)).await;
    let height = workload(&mut c, &[0, 1, 2, 3], 8).await;
    wait_final(&c, &[0, 1, 2, 3], height).await;
    check_ledgers(&c, &[0, 1, 2, 3], height);
    for i in 0..4 {
        assert!(evidence(&c, i).await.is_empty());
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_equivocating_validator_is_caught_and_the_rest_finalize() {
    run_with_liar(Behaviour::Equivocate, "EQUIVOCATION").await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_validator_forging_votes_is_caught_and_the_rest_finalize() {
    run_with_liar(Behaviour::ForgeVotes, "BAD_VOTE_SIGNATURE").await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_validator_replaying_stale_votes_is_caught_and_the_rest_finalize() {
    run_with_liar(Behaviour::ReplayStale, "STALE_VOTE").await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_validator_withholding_votes_is_suspected_and_the_rest_finalize() {
    // Withholding is suspected after 16 final heights without its vote.
    run_with_liar(Behaviour::Withhold, "WITHHOLDING").await;
}

/// A block overlapping `block(0)` (same day and hours).
fn overlapping(id: &str) -> Op {
    Op::AddBlock(Block {
        id: id.parse::<BlockId>().unwrap(),
        day: 0,
        start_min: 8 * 60,
        duration_min: 8 * 60,
        pool: Pool::Icu,
        required: 1,
    })
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_validator_voting_for_a_double_booking_is_caught_and_it_never_becomes_final() {
    let liar = 3;
    let honest = [0, 1, 2];
    let mut c = Cluster::start_bft(4, SEED, plan(4, Some((liar, Behaviour::VoteForInvalid)))).await;
    let mut height = workload(&mut c, &honest, 4).await;
    // person 0 is on block 0; the liar's facility proposes person 0 on an
    // overlapping block too, and its validator votes for it.
    let add = c.command(0, overlapping("x0"));
    committed(&c.propose(0, add).await);
    height += 1;
    let bad = c.command(
        liar,
        Op::Assign {
            person: person(0),
            block: "x0".parse().unwrap(),
        },
    );
    let out = c.propose(liar, bad).await;
    assert!(format!("{out:?}").contains("DoubleBooking"), "{out:?}");
    // Later entries take the height the double booking would have had.
    for k in 0..3 {
        let cmd = c.command(k, overlapping(&format!("y{k}")));
        committed(&c.propose(k, cmd).await);
        height += 1;
    }
    wait_final(&c, &honest, height).await;
    c.h.step(Duration::from_secs(2)).await;
    check_ledgers(&c, &honest, height);
    check_evidence(&c, &honest, liar, "VOTE_FOR_INVALID").await;
    // The double booking is in no ledger: replaying every ledger applies
    // every entry (check_ledgers), and the liar's own ledger matches.
    let liar_ledger = raw_ledger(&c, liar);
    let honest_ledger = raw_ledger(&c, 0);
    let common = liar_ledger.len().min(honest_ledger.len());
    assert_eq!(liar_ledger[..common], honest_ledger[..common]);
    c.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_proposal_with_a_broken_chain_is_refused_and_names_its_proposer() {
    let honest_all = [0, 1, 2, 3];
    let mut c = Cluster::start_bft(4, SEED, plan(4, None)).await;
    let mut height = workload(&mut c, &honest_all, 4).await;
    let (leader, _) = c.leader().await.expect("a leader");
    let liar = (leader + 1) % 4;
    let honest: Vec<usize> = (0..4).filter(|&i| i != liar).collect();
    // The liar signs a proposal anchored to a ledger entry that does not
    // exist and forwards it to the leader.
    let mut cmd = c.command(liar, overlapping("z0"));
    cmd.at_unix_ms = bulwark_runtime::Clock::unix_ms(c.h.clock(liar));
    let payload = EntryPayload {
        proposer: c.h.id(liar),
        seq: 1,
        anchor: Anchor {
            height: 2,
            hash: [7; 32],
        },
        command: cmd,
    };
    let body = codec::encode(&payload).unwrap();
    let sig = c.rings[liar].sign(Domain::Proposal, &body);
    let signed = codec::encode(&SignedProposal { body, sig }).unwrap();
    let wire = codec::encode(&RaftWire::Forward { payload: signed }).unwrap();
    c.h.router(liar)
        .send(Address::new(c.h.id(leader), RAFT), wire, None)
        .unwrap();
    c.h.step(Duration::from_secs(1)).await;
    let after = c.command(leader, overlapping("z1"));
    committed(&c.propose(leader, after).await);
    height += 1;
    wait_final(&c, &honest, height).await;
    check_ledgers(&c, &honest, height);
    let z0 = c
        .local_read(leader, |s| s.blocks().any(|b| b.id.as_str() == "z0"))
        .await
        .unwrap();
    assert!(!z0, "a proposal with a broken chain changed the schedule");
    check_evidence(&c, &honest, liar, "BAD_PROPOSAL").await;
    let ev = evidence(&c, honest[0]).await;
    assert!(
        ev.iter().any(
            |e| matches!(&e.kind, Kind::BadProposal { reason, .. } if reason == "CHAIN_BREAK")
        ),
        "{ev:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn with_three_facilities_a_liar_never_finalizes_anything_alone() {
    let liar = 2;
    let mut c = Cluster::start_bft(3, SEED, plan(3, Some((liar, Behaviour::VoteForInvalid)))).await;
    let height = workload(&mut c, &[0, 1], 4).await;
    wait_final(&c, &[0, 1, 2], height).await;
    // Cut the liar off: whatever it proposes or votes for alone, its final
    // height does not move (a certificate needs 2 of 3).
    c.h.partition(&[liar], &[0, 1]).unwrap();
    for k in 0..3 {
        let cmd = c.command(liar, overlapping(&format!("w{k}")));
        let _ = c.propose(liar, cmd).await;
    }
    c.h.step(Duration::from_secs(5)).await;
    assert_eq!(finals(&c, &[liar]).await, vec![height]);
    c.h.heal();
    check_ledgers(&c, &[0, 1, liar], height);
    c.shutdown().await;
}

/// Four validators finalize a workload; then a follower goes down and 60
/// more entries (ids `<tag>0..`) become final without it: enough that the
/// Raft log is compacted past it (snapshots every 40 entries), so it comes
/// back by snapshot and its validator fetches the final entries it missed.
/// (the facility down, the others, the final height).
async fn one_down_and_behind(c: &mut Cluster, tag: &str) -> (usize, Vec<usize>, u64) {
    let all = [0, 1, 2, 3];
    let mut height = workload(c, &all, 4).await;
    wait_final(c, &all, height).await;
    let (leader, _) = c.leader().await.unwrap();
    let down = (leader + 1) % 4;
    c.crash(down).await;
    let up: Vec<usize> = all.iter().copied().filter(|&i| i != down).collect();
    for k in 0..60 {
        let via = up[k % up.len()];
        let cmd = c.command(via, overlapping(&format!("{tag}{k}")));
        committed(&c.propose(via, cmd).await);
        height += 1;
    }
    wait_final(c, &up, height).await;
    (down, up, height)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_facility_that_was_down_catches_up_on_certified_entries() {
    let all = [0, 1, 2, 3];
    let mut c = Cluster::start_bft(4, SEED, plan(4, None)).await;
    let (down, _, height) = one_down_and_behind(&mut c, "c").await;
    c.restart(down).await;
    wait_final(&c, &all, height).await;
    check_ledgers(&c, &all, height);
    c.shutdown().await;
}

/// Fetches of final entries go under `ledger_fetch@<peer>` breakers fed by
/// what each fetch brings. A validator that was down asks its peers for
/// the entries it missed while every large payload to it arrives damaged
/// (its fetches go unanswered): the breaker of the peer it asks opens
/// after three, the next fetch for that peer is refused in process and
/// goes to another peer instead; once the link is clean it catches up on
/// certified entries.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn unanswered_fetches_open_a_peers_breaker_and_move_to_another_peer() {
    use bulwark_actors::bft::ledger_fetch_dependency;
    use bulwark_actors::flow::mesh::Breakers;
    use bulwark_transport::{FaultRule, Selector};
    let all = [0, 1, 2, 3];
    let breakers: Vec<Breakers> = (0..4).map(|_| Breakers::default()).collect();
    let mut p = plan(4, None);
    p.breakers = breakers.clone();
    let mut c = Cluster::start_bft(4, SEED, p).await;
    let (down, up, height) = one_down_and_behind(&mut c, "f").await;
    let rule =
        c.h.net()
            .faults()
            .add(FaultRule::Corrupt {
                from: Selector::Any,
                to: Selector::one(&c.h.id(down)),
                every: 1,
                min_len: 8 * 1024,
            })
            .unwrap();
    c.restart(down).await;
    let views = |c: &Cluster| {
        let mut v = Vec::new();
        for &i in &up {
            let name = ledger_fetch_dependency(&c.h.id(i));
            let view = breakers[down].views().into_iter().find(|b| b.name == name);
            v.push(view.expect("registered"));
        }
        v
    };
    for _ in 0..1_200 {
        if views(&c).iter().any(|v| v.stats.opened >= 1) {
            break;
        }
        c.h.step(Duration::from_millis(50)).await;
    }
    let seen = views(&c);
    let opened: Vec<_> = seen.iter().filter(|v| v.stats.opened >= 1).collect();
    assert!(
        opened
            .iter()
            .all(|v| v.stats.failures >= 3 && v.stats.successes == 0),
        "a breaker opened on three unanswered fetches: {seen:?}"
    );
    assert!(!opened.is_empty(), "{seen:?}");
    // An open breaker refuses its fetches in process: the next is sent to
    // another peer instead.
    for _ in 0..1_200 {
        let v = views(&c);
        if v.iter().any(|v| v.stats.refused >= 1)
            && v.iter().filter(|v| v.stats.permitted >= 1).count() >= 2
        {
            break;
        }
        c.h.step(Duration::from_millis(50)).await;
    }
    let after = views(&c);
    assert!(after.iter().any(|v| v.stats.refused >= 1), "{after:?}");
    assert!(
        after.iter().filter(|v| v.stats.permitted >= 1).count() >= 2,
        "the fetches moved to another peer: {after:?}"
    );
    assert!(c.h.net().faults().remove(rule));
    wait_final(&c, &all, height).await;
    check_ledgers(&c, &all, height);
    c.shutdown().await;
}

/// Validator-set epochs: a facility outside the genesis set joins it, one
/// facility's key is rotated to a key it already holds, another facility
/// leaves. Each change is a ledger entry certified by the set before it;
/// every ledger verifies from height 1 with the genesis keys alone, meets
/// the four epochs, and nobody is blamed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_validator_set_grows_rotates_and_shrinks_and_every_ledger_verifies_from_genesis() {
    use bulwark_actors::epoch::{ValidatorChange, ValidatorSet, VoteKey};
    use bulwark_actors::keys::Keyring;
    use bulwark_actors::raft::ProposeOutcome;
    let n = 4;
    let all = [0, 1, 2, 3];
    let ids: Vec<_> = (0..n).map(support::harness_id).collect();
    let secret = |i: usize, seed: u64| Keyring::deterministic_secret(&ids[i], seed);
    let genesis =
        PublicKeys::new((0..3).map(|i| (ids[i].clone(), secret(i, SEED).verifying_key())));
    let rings: Vec<Keyring> = (0..n)
        .map(|i| {
            let mut held = vec![secret(i, SEED)];
            if i == 0 {
                held.push(secret(0, SEED + 1)); // the key it rotates to
            }
            Keyring::holding(ids[i].clone(), held, genesis.clone())
        })
        .collect();
    let mut c = Cluster::start_bft_rings(n, SEED, plan(n, None), rings).await;
    let mut height = workload(&mut c, &[0, 1, 2], 4).await;
    // Facility 3 is no validator yet: it proposes nothing (it holds no key
    // of the set), and follows the ledger by fetching final entries.
    let cmd = c.command(
        3,
        Op::AddPerson(bulwark_actors::schedule::Person {
            id: "early".parse().unwrap(),
            name: "Early".into(),
            role: bulwark_actors::schedule::Role::Faculty,
        }),
    );
    match c.propose(3, cmd).await {
        ProposeOutcome::Rejected { reason } => {
            assert!(reason.contains("holds no vote key"), "{reason}")
        }
        other => panic!("a facility outside the validator set proposed: {other:?}"),
    }
    wait_final(&c, &all, height).await;
    let change = |facility: usize, key: Option<VoteKey>| {
        Op::Validator(ValidatorChange {
            facility: ids[facility].clone(),
            key,
        })
    };
    let writes = |c: &mut Cluster, via: &'static [usize], from: usize| {
        let cmds: Vec<_> = (0..4)
            .map(|k| {
                let at = via[k % via.len()];
                (
                    at,
                    c.command(
                        at,
                        Op::AddPerson(bulwark_actors::schedule::Person {
                            id: format!("joiner-{}", from + k).parse().unwrap(),
                            name: "Joiner".into(),
                            role: bulwark_actors::schedule::Role::Faculty,
                        }),
                    ),
                )
            })
            .collect();
        cmds
    };
    let mut epochs_expected = 1;
    let steps: [(usize, Option<VoteKey>, &'static [usize]); 3] = [
        // Facility 3 joins with its key.
        (
            3,
            Some(VoteKey::from(&secret(3, SEED).verifying_key())),
            &[0, 3],
        ),
        // Facility 0 rotates to the key it holds beside its first.
        (
            0,
            Some(VoteKey::from(&secret(0, SEED + 1).verifying_key())),
            &[0, 2, 3],
        ),
        // Facility 1 leaves the set.
        (1, None, &[0, 2, 3]),
    ];
    let mut block_at = 4;
    for (facility, key, via) in steps {
        let cmd = c.command(0, change(facility, key));
        match c.propose(0, cmd).await {
            ProposeOutcome::Committed {
                outcome: bulwark_actors::schedule::Outcome::Applied(_),
                ..
            } => {}
            other => panic!("validator change not applied: {other:?}"),
        }
        height += 1;
        epochs_expected += 1;
        // Writes proposed under the new set, through its members.
        for (at, cmd) in writes(&mut c, via, block_at) {
            committed(&c.propose(at, cmd).await);
            height += 1;
        }
        block_at += 4;
        wait_final(&c, &all, height).await;
    }
    c.h.step(Duration::from_secs(3)).await;
    check_ledgers(&c, &all, height);
    for i in all {
        let finals = LedgerStore::new(c.h.node(i).ctx().store.clone())
            .finals(1, u32::MAX)
            .expect("ledger reads");
        let rows = finals
            .into_iter()
            .enumerate()
            .map(|(k, f)| (k as u64 + 1, Ok::<FinalEntry, String>(f)));
        let report = verify_chain(rows, &ValidatorSet::genesis(genesis.clone())).unwrap();
        let sizes: Vec<usize> = report.epochs.iter().map(|e| e.keys().len()).collect();
        assert_eq!(report.epochs.len(), epochs_expected, "facility {i}");
        assert_eq!(sizes, vec![3, 4, 4, 3], "facility {i}");
        let last = report.epochs.last().unwrap();
        assert!(last.keys().get(&ids[1]).is_none());
        assert_eq!(
            last.keys().get(&ids[0]),
            Some(&secret(0, SEED + 1).verifying_key())
        );
        assert!(evidence(&c, i).await.is_empty(), "evidence at {i}");
        let trust = trust_of(&validator(c.h.node(i)).unwrap()).await.unwrap();
        assert!(trust.values().all(|t| *t == 1.0), "{trust:?}");
    }
    // A change the set does not allow is refused, with why, and changes
    // nothing: removing a facility that is not a validator.
    let cmd = c.command(0, change(1, None));
    match c.propose(0, cmd).await {
        ProposeOutcome::Committed {
            outcome: bulwark_actors::schedule::Outcome::Rejected(r),
            height: None,
            ..
        } => assert!(r.detail.contains("not a validator"), "{r:?}"),
        other => panic!("{other:?}"),
    }
    c.shutdown().await;
}
