//! Consensus on real QUIC over loopback, with durable redb commits: the
//! leader-kill and full-restart scenarios of the harness, on the real
//! transport. Waits are bounded and poll the facilities' own state; no
//! test asserts a wall-clock speed.

use bulwark::facility::{self, start_loopback_cluster, Facility, FacilitySpec};
use bulwark_actors::raft::{inspect, ProposeOutcome, RaftConfig, RaftMsg, ReadOutcome};
use bulwark_actors::schedule::{
    Block, BlockId, Command, IdempotencyKey, Op, Outcome, Person, PersonId, Pool, Role,
    ScheduleState,
};
use bulwark_runtime::{RealClock, SupervisionConfig};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);
const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];

async fn cluster(dir: &std::path::Path) -> Vec<Facility> {
    let fs = start_loopback_cluster(
        dir,
        &NAMES,
        SupervisionConfig::default(),
        Some(RaftConfig::default()),
        Arc::new(RealClock),
    )
    .await
    .expect("cluster starts");
    for f in &fs {
        assert!(f.wait_links_up(T).await, "{}: links up", f.node.facility());
    }
    fs
}

fn command(n: u64, op: Op) -> Command {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_le_bytes());
    Command {
        key: IdempotencyKey(key),
        issued_by: "alpha".parse().unwrap(),
        at_unix_ms: 0,
        hlc: bulwark_actors::hlc::Hlc::ZERO,
        op,
    }
}

fn pid(i: usize) -> PersonId {
    format!("p{i}").parse().unwrap()
}

fn bid(i: usize) -> BlockId {
    format!("b{i}").parse().unwrap()
}

/// Proposes through `f`, retrying (same key) while there is no leader.
async fn commit(f: &Facility, cmd: Command) -> (u64, Outcome) {
    for _ in 0..100 {
        match f.propose(cmd.clone(), T).await {
            Some(ProposeOutcome::Committed { index, outcome, .. }) => return (index, outcome),
            Some(ProposeOutcome::NotLeader { .. } | ProposeOutcome::TimedOut) | None => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Some(other) => panic!("{other:?}"),
        }
    }
    panic!("{:?} never committed", cmd.op);
}

async fn setup(f: &Facility, people: usize, blocks: usize) -> u64 {
    let mut n = 1_000_000;
    for p in 0..people {
        n += 1;
        let op = Op::AddPerson(Person {
            id: pid(p),
            name: format!("P{p}"),
            role: Role::Faculty,
        });
        commit(f, command(n, op)).await;
    }
    for b in 0..blocks {
        n += 1;
        let op = Op::AddBlock(Block {
            id: bid(b),
            day: 2 * b as u32,
            start_min: 480,
            duration_min: 480,
            pool: Pool::Icu,
            required: 1,
        });
        commit(f, command(n, op)).await;
    }
    n
}

/// A linearizable read of `f`'s schedule through `g`.
async fn read<T: Send + 'static>(
    f: &Facility,
    g: impl FnOnce(&ScheduleState) -> T + Send + 'static,
) -> T {
    let peer = f.raft().expect("RaftPeer runs");
    for _ in 0..50 {
        let ready = peer
            .call(|reply| RaftMsg::Read { reply }, Some(T))
            .await
            .unwrap()
            .unwrap();
        if matches!(ready, ReadOutcome::Ready { .. }) {
            return inspect(&peer, move |v| {
                g(&v.to_state().expect("the replica reads back"))
            })
            .await
            .expect("RaftPeer answers");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{}: no linearizable read", f.node.facility());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_it_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut fs: Vec<Option<Facility>> = cluster(dir.path()).await.into_iter().map(Some).collect();
    let live = |fs: &[Option<Facility>]| -> Vec<usize> {
        (0..fs.len()).filter(|&i| fs[i].is_some()).collect()
    };
    let all: Vec<Facility> = fs.iter_mut().map(|f| f.take().unwrap()).collect();
    let (leader, term) = facility::wait_leader(&all, 0, T).await.expect("a leader");
    setup(&all[leader], 2, 4).await;
    commit(
        &all[leader],
        command(
            1,
            Op::Assign {
                person: pid(0),
                block: bid(0),
            },
        ),
    )
    .await;
    let mut fs: Vec<Option<Facility>> = all.into_iter().map(Some).collect();
    // Crash the leader: its process-like unit stops; its store stays.
    let spec: FacilitySpec = fs[leader].take().unwrap().stop().await;
    let rest: Vec<Facility> = live(&fs)
        .into_iter()
        .map(|i| fs[i].take().unwrap())
        .collect();
    let (new, new_term) = facility::wait_leader(&rest, term, T)
        .await
        .expect("a new leader");
    assert!(new_term > term);
    commit(
        &rest[new],
        command(
            2,
            Op::Assign {
                person: pid(1),
                block: bid(1),
            },
        ),
    )
    .await;
    // The old leader restarts from its redb file and catches up.
    let back = facility::restart(spec, Arc::new(RealClock))
        .await
        .expect("restart");
    assert!(!back.node.fresh_store());
    let on = read(&back, |s| (s.assignees(&bid(0)), s.assignees(&bid(1)))).await;
    assert_eq!(on, (vec![pid(0)], vec![pid(1)]));
    back.stop().await;
    for f in rest {
        f.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_command_survives_a_restart_of_every_facility() {
    let dir = tempfile::tempdir().unwrap();
    let fs = cluster(dir.path()).await;
    let (leader, _) = facility::wait_leader(&fs, 0, T).await.expect("a leader");
    setup(&fs[leader], 3, 12).await;
    let mut acked = Vec::new();
    for b in 0..12 {
        let cmd = command(
            10 + b as u64,
            Op::Assign {
                person: pid(b % 3),
                block: bid(b),
            },
        );
        let key = cmd.key;
        let (index, outcome) = commit(&fs[b % 3], cmd).await;
        acked.push((key, index, outcome));
    }
    let mut specs = Vec::new();
    for f in fs {
        specs.push(f.stop().await);
    }
    let mut fs = Vec::new();
    for spec in specs {
        fs.push(
            facility::restart(spec, Arc::new(RealClock))
                .await
                .expect("restart"),
        );
    }
    facility::wait_leader(&fs, 0, T)
        .await
        .expect("a leader after the restart");
    for f in &fs {
        let acked = acked.clone();
        let missing = read(f, move |s| {
            acked
                .iter()
                .filter(|(k, i, o)| s.outcome_of(k) != Some((*i, o.clone())))
                .count()
        })
        .await;
        assert_eq!(
            missing,
            0,
            "{} lost acknowledged commands",
            f.node.facility()
        );
    }
    for f in fs {
        f.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_become_final_over_quic_and_every_stored_ledger_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let fs = cluster(dir.path()).await;
    let (leader, _) = facility::wait_leader(&fs, 0, T).await.expect("a leader");
    setup(&fs[leader], 2, 6).await;
    let mut heights = Vec::new();
    for b in 0..6 {
        let cmd = command(
            50 + b as u64,
            Op::Assign {
                person: pid(b % 2),
                block: bid(b),
            },
        );
        match fs[b % 3].propose(cmd, T).await {
            Some(ProposeOutcome::Committed {
                height: Some(h), ..
            }) => heights.push((b % 3, h)),
            other => panic!("{other:?}"),
        }
    }
    // Every facility certifies every entry (2 of 3 votes each).
    let top = heights.iter().map(|(_, h)| *h).max().unwrap();
    let mut notices = Vec::new();
    for f in &fs {
        notices.push(f.await_final(top, T).await.expect("final everywhere"));
    }
    assert!(notices
        .windows(2)
        .all(|w| w[0].entry_hash == w[1].entry_hash));
    let public = fs[0].spec.bft.as_ref().unwrap().keyring.public().clone();
    let mut files = Vec::new();
    for f in fs {
        files.push(f.node.ctx().store.path().to_path_buf());
        f.stop().await;
    }
    let mut chains = Vec::new();
    for path in &files {
        // The stopped node's last actor states release the file shortly
        // after `stop` returns; redb's lock says when.
        let mut report = bulwark_actors::bft::verify_file(
            path,
            &bulwark_actors::epoch::ValidatorSet::genesis(public.clone()),
        );
        for _ in 0..100 {
            match &report {
                Err(bulwark_actors::bft::VerifyError::Open(m)) if m.contains("lock") => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    report = bulwark_actors::bft::verify_file(
                        path,
                        &bulwark_actors::epoch::ValidatorSet::genesis(public.clone()),
                    );
                }
                _ => break,
            }
        }
        let report = report.expect("the ledger verifies");
        assert!(report.entries >= top, "{report:?}");
        chains.push(report.head);
    }
    assert!(
        chains.windows(2).all(|w| w[0] == w[1]),
        "the ledgers differ"
    );
}

/// The failure detector on real QUIC datagrams: every peer Up while all
/// run; a stopped facility is Down at the others, who stay a Majority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_sees_a_stopped_facility_go_down_over_quic() {
    use bulwark_actors::cap::PartitionState;
    use bulwark_actors::detect::Liveness;
    let dir = tempfile::tempdir().unwrap();
    let mut fs = cluster(dir.path()).await;
    // Heartbeats flow: each facility hears both peers (bounded poll).
    let heard = |f: &Facility| {
        let v = f.detection.as_ref().expect("detection runs").view();
        v.peers.len() == 2
            && v.peers
                .iter()
                .all(|p| p.liveness == Liveness::Up && p.phi < 1.0)
    };
    let mut ok = false;
    for _ in 0..200 {
        if fs.iter().all(heard) {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "every facility hears every peer");
    let gone = fs.pop().unwrap();
    let gone_id = gone.node.facility().clone();
    gone.stop().await;
    let mut down = false;
    for _ in 0..300 {
        down = fs.iter().all(|f| {
            let v = f.detection.as_ref().unwrap().view();
            v.liveness(&gone_id) == Some(Liveness::Down) && v.partition == PartitionState::Majority
        });
        if down {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down, "{gone_id} is Down at both others");
    for f in fs {
        f.stop().await;
    }
}
