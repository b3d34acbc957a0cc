//! Disk faults at the storage layer, in the harness: three facilities over
//! SimNet on virtual time, one of them with a slow disk or a disk that
//! refuses writes (`Store::disk_faults`). Fixed seeds; every duration is
//! virtual.

mod support;

use std::time::Duration;

use bulwark_actors::bft::{evidence_of, validator, Behaviour, BftConfig, LedgerStore};
use bulwark_actors::keys::PublicKeys;
use bulwark_actors::ledger::{verify_chain, FinalEntry};
use bulwark_actors::raft::{ProposeOutcome, RaftConfig};
use bulwark_actors::schedule::{IdempotencyKey, Op, Outcome, Person, Role};
use bulwark_runtime::Zone;
use bulwark_storage::{DiskFaultSpec, DiskFaults};
use support::{person, BftPlan, Cluster};
use tokio::time::Instant;

const SEED: u64 = 7_007;

/// Longest any wait below steps virtual time, in 50 ms steps.
const STEPS_MAX: usize = 1_200;

fn faults(c: &Cluster, i: usize) -> DiskFaults {
    c.h.node(i).ctx().store.disk_faults().clone()
}

fn add_person(c: &mut Cluster, via: usize, p: usize) -> bulwark_actors::schedule::Command {
    c.command(
        via,
        Op::AddPerson(Person {
            id: person(p),
            name: format!("Person {p}"),
            role: Role::Resident { pgy: 1 },
        }),
    )
}

/// An acknowledged command: its key, log index and outcome.
type Acked = (IdempotencyKey, u64, Outcome);

/// Proposes `p`'s addition via `via`; it must commit.
async fn commit(c: &mut Cluster, via: usize, p: usize) -> Acked {
    let cmd = add_person(c, via, p);
    let key = cmd.key;
    match c.propose(via, cmd).await {
        ProposeOutcome::Committed { index, outcome, .. } => (key, index, outcome),
        other => panic!("person {p} via {via}: {other:?}"),
    }
}

/// Per person in `people`: virtual time from proposing its addition on
/// `via` to the commit being answered.
async fn commit_times(
    c: &mut Cluster,
    via: usize,
    people: std::ops::Range<usize>,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for p in people {
        let start = Instant::now();
        commit(c, via, p).await;
        times.push(start.elapsed());
    }
    times
}

fn spec(latency_ms: u64, write_failure: f64) -> DiskFaultSpec {
    DiskFaultSpec {
        latency_ms,
        write_failure,
        seed: SEED,
    }
}

/// What one facility holds at the end: its schedule's digest and, per
/// acknowledged command, whether it is there with the acknowledged index
/// and outcome.
struct Held {
    digest: [u8; 32],
    present: Vec<bool>,
}

async fn held(c: &Cluster, i: usize, acked: &[Acked]) -> Held {
    let acked = acked.to_vec();
    c.local_read(i, move |s| Held {
        digest: s.digest().expect("digest"),
        present: acked
            .iter()
            .map(|(k, index, outcome)| s.outcome_of(k) == Some((*index, outcome.clone())))
            .collect(),
    })
    .await
    .expect("local read")
}

/// No acknowledged command is lost and every facility holds the same
/// schedule. `Err` names the first facility that breaks it.
fn check_converged(held: &[Held]) -> Result<(), String> {
    for (i, h) in held.iter().enumerate() {
        if let Some(k) = h.present.iter().position(|p| !p) {
            return Err(format!("facility {i} lost acknowledged command {k}"));
        }
        if h.digest != held[0].digest {
            return Err(format!("facility {i} holds another schedule than 0"));
        }
    }
    Ok(())
}

/// Steps time until every facility applied at least `index`.
async fn wait_applied(c: &Cluster, index: u64) {
    for _ in 0..STEPS_MAX {
        let mut all = true;
        for i in 0..c.n() {
            all &= c.status(i).await.is_some_and(|s| s.applied >= index);
        }
        if all {
            return;
        }
        c.h.step(Duration::from_millis(50)).await;
    }
    panic!("the facilities did not all apply {index}");
}

/// The harness's configs with the slow-disk hand-over off.
fn never_yield() -> Vec<RaftConfig> {
    support::configs_for(3, SEED)
        .into_iter()
        .map(|c| RaftConfig {
            slow_write_ms: 0,
            ..c
        })
        .collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_leader_disk_delays_its_commits_by_the_latency_and_a_slow_follower_disk_does_not() {
    // With the hand-over off, the slow leader keeps leading: what a slow
    // disk costs the commits it orders.
    let mut c = Cluster::start_with(3, SEED, never_yield()).await;
    let (leader, term, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .expect("a leader");
    let follower = (leader + 1) % 3;
    let latency = Duration::from_millis(200);
    let base = commit_times(&mut c, leader, 0..3).await;
    faults(&c, leader).set(spec(200, 0.0)).unwrap();
    let slow = commit_times(&mut c, leader, 3..6).await;
    faults(&c, leader).clear();
    faults(&c, follower).set(spec(200, 0.0)).unwrap();
    let follower_slow = commit_times(&mut c, leader, 6..9).await;
    faults(&c, follower).clear();
    eprintln!("SEED={SEED} commit times: base {base:?}, slow leader {slow:?}, slow follower {follower_slow:?}");

    let (base_min, base_max) = (*base.iter().min().unwrap(), *base.iter().max().unwrap());
    // Every commit on the slow leader waits for its own durable writes.
    for t in &slow {
        assert!(
            *t >= base_max + latency,
            "slow leader {t:?} vs base {base:?}"
        );
    }
    // The same check fails for a slow follower: the leader commits with the
    // other follower's acknowledgement (a quorum masks one slow disk).
    for t in &follower_slow {
        assert!(
            *t < base_min + latency,
            "slow follower {t:?} vs base {base:?}"
        );
    }
    let s = c.status(leader).await.unwrap();
    assert!(s.is_leader && s.term == term, "leadership held: {s:?}");
    for i in 0..3 {
        assert_eq!(faults(&c, i).injected(), 0, "latency refuses nothing");
    }
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

/// A leader's disk turns slow (500 ms per durable write) while writes
/// keep coming through a follower; returns the new leader, if leadership
/// moved within 40 commits, and the commit times after it moved.
async fn slow_leader_disk(configs: Vec<RaftConfig>) -> (usize, Option<usize>, Vec<Duration>) {
    let mut c = Cluster::start_with(3, SEED, configs).await;
    let (leader, term, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .expect("a leader");
    let via = (leader + 1) % 3;
    let base = commit_times(&mut c, via, 0..3).await;
    faults(&c, leader).set(spec(500, 0.0)).unwrap();
    let mut moved = None;
    let mut p = 3;
    while moved.is_none() && p < 43 {
        // A leader handing over refuses proposals meanwhile (NotLeader);
        // the client retries the same command (same key), as through the API.
        let cmd = add_person(&mut c, via, p);
        let mut done = false;
        for _ in 0..20 {
            match c.propose(via, cmd.clone()).await {
                ProposeOutcome::Committed { .. } => {
                    done = true;
                    break;
                }
                ProposeOutcome::NotLeader { .. } | ProposeOutcome::TimedOut => {
                    c.h.step(Duration::from_millis(100)).await;
                }
                other => panic!("person {p} via {via}: {other:?}"),
            }
        }
        assert!(done, "person {p} via {via} did not commit in 20 tries");
        p += 1;
        for i in 0..3 {
            if c.status(i)
                .await
                .is_some_and(|s| s.is_leader && s.term > term)
            {
                moved = Some(i);
            }
        }
    }
    // Commits after the move: the old leader's disk is still slow, and a
    // quorum without it masks it (as for any slow follower).
    let after = match moved {
        Some(_) => commit_times(&mut c, via, p..p + 3).await,
        None => Vec::new(),
    };
    eprintln!(
        "SEED={SEED} leader {leader} slow; moved to {moved:?} after {} commits; \
         commit times: base {base:?}, after the move {after:?}",
        p - 3
    );
    let base_min = *base.iter().min().unwrap();
    for t in &after {
        assert!(
            *t < base_min + Duration::from_millis(500),
            "after the move {t:?} vs base {base:?}"
        );
    }
    faults(&c, leader).clear();
    let acked_to = c.status(via).await.unwrap().commit;
    wait_applied(&c, acked_to).await;
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
    (leader, moved, after)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_leader_whose_disk_turns_slow_hands_leadership_to_a_caught_up_voter() {
    let (leader, moved, after) = slow_leader_disk(support::configs_for(3, SEED)).await;
    let to = moved.expect("leadership moved away from the slow disk");
    assert_ne!(to, leader);
    assert_eq!(after.len(), 3);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn with_the_hand_over_off_leadership_stays_on_the_slow_disk() {
    // The check above fails without the hand-over: the same run keeps the
    // slow leader for all 40 commits.
    let (_, moved, _) = slow_leader_disk(never_yield()).await;
    assert_eq!(moved, None);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_leader_whose_disk_refuses_writes_drops_out_the_others_commit_and_it_catches_up_after_clear(
) {
    let mut c = Cluster::start(3, SEED).await;
    let (old, term, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .expect("a leader");
    let mut acked = Vec::new();
    for p in 0..3 {
        acked.push(commit(&mut c, old, p).await);
    }
    let disk = faults(&c, old);
    disk.set(spec(0, 1.0)).unwrap();

    // The write is refused by the leader's disk: never acknowledged. Its
    // appends may have left before the refused fsync (a leader's appends
    // travel while it persists), so the others may still commit it: the
    // client hears TimedOut (may have been applied), not a refusal.
    let refused = add_person(&mut c, old, 3);
    let refused_key = refused.key;
    let outcome = c.propose(old, refused).await;
    assert_eq!(outcome, ProposeOutcome::TimedOut);
    assert!(disk.injected() >= 1);
    assert!(c.h.counter(old, "bulwark_raft_fenced_total", &[]) >= 1);

    // The others elect a leader and commit, directly and forwarded.
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    let (new, _, _) = c
        .wait_leader(&others, term, Duration::from_secs(10))
        .await
        .expect("a new leader among the others");
    let other = others.iter().copied().find(|&i| i != new).unwrap();
    for p in 4..10 {
        let via = if p % 2 == 0 { new } else { other };
        acked.push(commit(&mut c, via, p).await);
    }
    // The fenced facility takes no proposal and claims no leader.
    let cmd = add_person(&mut c, old, 10);
    assert_eq!(
        c.propose(old, cmd).await,
        ProposeOutcome::NotLeader { hint: None }
    );
    let fenced = c.status(old).await.unwrap();
    assert!(!fenced.is_leader && fenced.leader.is_none(), "{fenced:?}");
    let lead = c.status(new).await.unwrap();
    assert!(fenced.applied < lead.commit, "{fenced:?} vs {lead:?}");
    // No supervisor restart: the core is fenced in place.
    let spawns = c.h.node(old).ctx().spawns.clone();
    assert_eq!(
        spawns.restarts(&format!("{}/raft", Zone::Consensus.as_str())),
        0
    );

    // The disk takes writes again: the core is rebuilt from redb and the
    // facility catches up as a follower.
    c.observed.lock().unwrap().on_restart(&c.h.id(old));
    disk.clear();
    let last = acked.last().unwrap().1;
    wait_applied(&c, last).await;
    let back = c.status(old).await.unwrap();
    assert_eq!(back.leader, Some(c.h.id(new)), "{back:?}");

    let mut all = Vec::new();
    for i in 0..3 {
        all.push(held(&c, i, &acked).await);
    }
    check_converged(&all).unwrap();
    // The command whose answer was TimedOut is on every facility or on
    // none: it committed through the others or it did not.
    let mut there = Vec::new();
    for i in 0..3 {
        there.push(
            c.local_read(i, move |s| s.outcome_of(&refused_key).is_some())
                .await
                .unwrap(),
        );
    }
    assert!(
        there.iter().all(|&t| t == there[0]),
        "the unacknowledged command is on some facilities only: {there:?}"
    );
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

#[test]
fn the_convergence_check_catches_a_lost_command_and_a_diverged_schedule() {
    let good = || Held {
        digest: [1; 32],
        present: vec![true, true],
    };
    assert!(check_converged(&[good(), good()]).is_ok());
    let lost = Held {
        present: vec![true, false],
        ..good()
    };
    assert!(check_converged(&[good(), lost])
        .unwrap_err()
        .contains("lost"));
    let other = Held {
        digest: [2; 32],
        ..good()
    };
    assert!(check_converged(&[good(), other])
        .unwrap_err()
        .contains("another schedule"));
}

fn raw_ledger(c: &Cluster, i: usize) -> Vec<(u64, Vec<u8>)> {
    LedgerStore::new(c.h.node(i).ctx().store.clone())
        .raw_finals()
        .expect("ledger reads")
}

fn verify_ledger(c: &Cluster, i: usize, keys: &PublicKeys) -> u64 {
    let finals = LedgerStore::new(c.h.node(i).ctx().store.clone())
        .finals(1, u32::MAX)
        .expect("ledger reads");
    let rows = finals
        .into_iter()
        .enumerate()
        .map(|(k, f)| (k as u64 + 1, Ok::<FinalEntry, String>(f)));
    verify_chain(
        rows,
        &bulwark_actors::epoch::ValidatorSet::genesis(keys.clone()),
    )
    .expect("every final entry verifies")
    .entries
}

async fn final_heights(c: &Cluster) -> Vec<u64> {
    let mut v = Vec::new();
    for i in 0..c.n() {
        v.push(c.bft_status(i).await.map_or(0, |s| s.final_height));
    }
    v
}

/// The Observed checker expects each facility to apply indices in a row
/// unless told of a restart; a rebuilt Raft core applies again from its
/// snapshot, as a restarted one does. True for such a report about `f`
/// (worded as support/mod.rs words it): an index at or below the last one.
fn is_reapplication(violation: &str, f: &str) -> bool {
    let Some(rest) = violation.strip_prefix(&format!("{f} applied ")) else {
        return false;
    };
    let Some((at, after)) = rest.split_once(" right after ") else {
        return false;
    };
    matches!((at.parse::<u64>(), after.parse::<u64>()), (Ok(a), Ok(b)) if a <= b)
}

/// Every violation but `f`'s re-applications.
fn violations_but_reapplication(c: &Cluster, f: &str) -> Vec<String> {
    c.violations()
        .into_iter()
        .filter(|v| !is_reapplication(v, f))
        .collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_facility_whose_disk_refuses_some_writes_keeps_the_ledger_safe_and_catches_up() {
    let plan = BftPlan {
        config: BftConfig::default(),
        behaviours: vec![Behaviour::Honest; 3],
        breakers: Vec::new(),
    };
    let mut c = Cluster::start_bft(3, SEED, plan).await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .expect("a leader");
    let faulty = (leader + 1) % 3;
    let disk = faults(&c, faulty);
    disk.set(spec(0, 0.3)).unwrap();
    eprintln!("SEED={SEED} faulty={faulty} spec={:?}", disk.spec());

    let mut acked = Vec::new();
    for p in 0..12 {
        acked.push(commit(&mut c, leader, p).await);
        c.h.step(Duration::from_millis(100)).await;
    }
    let refused = disk.injected();
    let fenced = c.h.counter(faulty, "bulwark_raft_fenced_total", &[]);
    let rebuilt = c.h.counter(faulty, "bulwark_bft_rebuilds_total", &[]);
    eprintln!("refused {refused} writes: raft fenced {fenced}, validator rebuilt {rebuilt}");
    assert!(fenced > 0 && rebuilt > 0, "both failure paths ran");

    disk.clear();
    let last = acked.last().unwrap().1;
    wait_applied(&c, last).await;
    let height = acked.len() as u64;
    for _ in 0..STEPS_MAX {
        if final_heights(&c).await.iter().all(|&h| h >= height) {
            break;
        }
        c.h.step(Duration::from_millis(50)).await;
    }
    let heights = final_heights(&c).await;
    assert!(
        heights.iter().all(|&h| h >= height),
        "final heights {heights:?}"
    );

    // One chain everywhere, every entry certified; nobody blamed.
    let keys = c.rings[0].public().clone();
    let first = raw_ledger(&c, 0);
    for i in 0..3 {
        assert_eq!(raw_ledger(&c, i), first, "ledger of {i} differs");
        assert_eq!(verify_ledger(&c, i, &keys), first.len() as u64);
        let ev = evidence_of(&validator(c.h.node(i)).unwrap()).await.unwrap();
        assert!(ev.is_empty(), "evidence at {i}: {ev:?}");
    }
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(held(&c, i, &acked).await);
    }
    check_converged(&all).unwrap();
    let f = c.h.id(faulty);
    assert_eq!(
        violations_but_reapplication(&c, f.as_str()),
        Vec::<String>::new()
    );
    c.shutdown().await;
}

#[test]
fn the_reapplication_filter_keeps_gaps_and_other_facilities() {
    assert!(is_reapplication("bravo applied 41 right after 57", "bravo"));
    assert!(
        !is_reapplication("bravo applied 60 right after 57", "bravo"),
        "a gap"
    );
    assert!(!is_reapplication(
        "alpha applied 41 right after 57",
        "bravo"
    ));
    let other = "bravo applied index 4 term 2 but alpha applied term 3 there";
    assert!(!is_reapplication(other, "bravo"));
    assert!(!is_reapplication(
        "two leaders in term 3: alpha and bravo",
        "bravo"
    ));
}
