//! Consensus in the harness: three facilities over SimNet, on virtual time,
//! each running the real RaftPeer over its own redb file.

mod support;

use std::time::Duration;

use bulwark_actors::raft::ProposeOutcome;
use bulwark_actors::schedule::{Effect, Op, Outcome};
use support::{block, committed, person, Cluster};

const SEEDS: [u64; 3] = [1, 7, 42];

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_leader_is_elected_and_commits() {
    for seed in SEEDS {
        let mut c = Cluster::start(3, seed).await;
        let (leader, term, took) = c
            .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
            .await
            .expect("a leader");
        // The first election completes within the longest campaign timeout
        // plus a few round trips.
        let slowest = (0..3).map(|i| c.election_timeout(i)).max().unwrap();
        assert!(
            took <= slowest * 2,
            "seed {seed}: first leader after {took:?}"
        );
        // Every facility agrees on the leader.
        for i in 0..3 {
            let s = c.status(i).await.unwrap();
            assert_eq!(s.leader, Some(c.h.id(leader)), "seed {seed}");
            assert_eq!(s.term, term);
        }
        // Proposals from the leader and from a follower (forwarded) commit.
        c.seed_schedule(leader, 2, 2).await;
        let follower = (leader + 1) % 3;
        let cmd = c.command(
            follower,
            Op::Assign {
                person: person(0),
                block: block(0),
            },
        );
        match c.propose(follower, cmd).await {
            ProposeOutcome::Committed {
                outcome, duplicate, ..
            } => {
                assert_eq!(outcome, Outcome::Applied(Effect::Assigned));
                assert!(!duplicate);
            }
            other => panic!("seed {seed}: {other:?}"),
        }
        // Everyone applies it; a linearizable read on any facility sees it.
        for i in 0..3 {
            let on = c.read(i, |s| s.assignees(&block(0))).await.unwrap();
            assert_eq!(on, vec![person(0)], "seed {seed} facility {i}");
        }
        assert_eq!(c.violations(), Vec::<String>::new(), "seed {seed}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_retried_command_applies_once() {
    let mut c = Cluster::start(3, 3).await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .unwrap();
    c.seed_schedule(leader, 1, 1).await;
    let cmd = c.command(
        leader,
        Op::Assign {
            person: person(0),
            block: block(0),
        },
    );
    let first = committed(&c.propose(leader, cmd.clone()).await);
    match c.propose((leader + 1) % 3, cmd).await {
        ProposeOutcome::Committed {
            index,
            duplicate,
            outcome,
            ..
        } => {
            // A retry at another facility goes through the log and
            // answers where the key first applied.
            assert!(duplicate);
            assert_eq!(index, first);
            assert_eq!(outcome, Outcome::Applied(Effect::Assigned));
        }
        other => panic!("{other:?}"),
    }
    let on = c.read(leader, |s| s.assignees(&block(0))).await.unwrap();
    assert_eq!(on, vec![person(0)]);
    c.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn killing_the_leader_elects_a_new_one_within_the_election_timeout() {
    for seed in SEEDS {
        let mut c = Cluster::start(3, seed).await;
        let (old, old_term, _) = c
            .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
            .await
            .unwrap();
        c.seed_schedule(old, 1, 1).await;
        // Let heartbeats settle, then crash the leader.
        c.h.step(Duration::from_millis(500)).await;
        c.crash(old).await;
        let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
        let (new, term, took) = c
            .wait_leader(&rest, old_term, Duration::from_secs(10))
            .await
            .expect("a new leader");
        assert_ne!(new, old);
        assert!(term > old_term);
        // A follower campaigns once its own timeout passes without word from
        // the leader; the election then takes two round trips (pre-vote,
        // vote), a few ms here.
        let bound = rest.iter().map(|&i| c.election_timeout(i)).max().unwrap() + c.tick() * 2;
        assert!(
            took <= bound,
            "seed {seed}: new leader after {took:?}, bound {bound:?}"
        );
        eprintln!("seed {seed}: new leader {new} after {took:?} (bound {bound:?})");
        // The survivors commit.
        let cmd = c.command(
            new,
            Op::Assign {
                person: person(0),
                block: block(0),
            },
        );
        committed(&c.propose(new, cmd).await);
        assert_eq!(c.violations(), Vec::<String>::new(), "seed {seed}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_leader_cut_off_in_a_minority_cannot_commit_and_is_overwritten_on_heal() {
    for seed in SEEDS {
        let mut c = Cluster::start(3, seed).await;
        let (old, old_term, _) = c
            .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
            .await
            .unwrap();
        c.seed_schedule(old, 3, 3).await;
        let rest: Vec<usize> = (0..3).filter(|&i| i != old).collect();
        c.h.partition(&[old], &rest).unwrap();
        // The old leader still takes a proposal into its log, but it can
        // never commit it: it times out, or fails once the leader steps down.
        let stranded = c.command(
            old,
            Op::Assign {
                person: person(1),
                block: block(1),
            },
        );
        let stranded_key = stranded.key;
        let outcome = c.propose(old, stranded).await;
        assert!(
            matches!(
                outcome,
                ProposeOutcome::TimedOut | ProposeOutcome::NotLeader { .. }
            ),
            "seed {seed}: minority leader answered {outcome:?}"
        );
        // The majority elects a leader and commits.
        let (new, _, _) = c
            .wait_leader(&rest, old_term, Duration::from_secs(10))
            .await
            .expect("majority leader");
        let cmd = c.command(
            new,
            Op::Assign {
                person: person(2),
                block: block(1),
            },
        );
        let at = committed(&c.propose(new, cmd).await);
        let old_commit = c.status(old).await.unwrap().commit;
        assert!(
            old_commit < at,
            "seed {seed}: the cut-off facility committed {old_commit} >= {at}"
        );
        // Heal: the old leader's uncommitted entry is replaced by the
        // majority's log.
        c.h.heal();
        let mut caught_up = false;
        for _ in 0..200 {
            c.h.step(Duration::from_millis(50)).await;
            if c.status(old).await.unwrap().applied >= at {
                caught_up = true;
                break;
            }
        }
        assert!(caught_up, "seed {seed}: the old leader never caught up");
        for i in 0..3 {
            let (on, stranded_seen) = c
                .local_read(i, move |s| {
                    (
                        s.assignees(&block(1)),
                        s.outcome_of(&stranded_key).is_some(),
                    )
                })
                .await
                .unwrap();
            assert_eq!(on, vec![person(2)], "seed {seed} facility {i}");
            assert!(
                !stranded_seen,
                "seed {seed}: the stranded command applied on {i}"
            );
        }
        assert_eq!(c.violations(), Vec::<String>::new(), "seed {seed}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_acknowledged_command_survives_a_restart_of_every_facility() {
    for seed in SEEDS {
        let mut c = Cluster::start(3, seed).await;
        let (leader, _, _) = c
            .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
            .await
            .unwrap();
        c.seed_schedule(leader, 4, 30).await;
        let mut acked = Vec::new();
        for b in 0..30 {
            let via = b % 3;
            let cmd = c.command(
                via,
                Op::Assign {
                    person: person(b % 4),
                    block: block(b),
                },
            );
            let key = cmd.key;
            if let ProposeOutcome::Committed { index, outcome, .. } = c.propose(via, cmd).await {
                acked.push((key, index, outcome));
            }
        }
        assert!(acked.len() >= 25, "seed {seed}: only {} acked", acked.len());
        for i in 0..3 {
            c.crash(i).await;
        }
        for i in 0..3 {
            c.restart(i).await;
        }
        c.wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
            .await
            .expect("leader after restart");
        for i in 0..3 {
            let acked = acked.clone();
            let missing = c
                .read(i, move |s| {
                    acked
                        .iter()
                        .filter(|(k, index, outcome)| {
                            s.outcome_of(k) != Some((*index, outcome.clone()))
                        })
                        .count()
                })
                .await
                .expect("read after restart");
            assert_eq!(
                missing, 0,
                "seed {seed}: facility {i} lost acknowledged commands"
            );
        }
        // Compaction ran (snapshots every 40 entries in the harness).
        assert_eq!(c.violations(), Vec::<String>::new(), "seed {seed}");
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn joint_consensus_swaps_a_facility_and_the_newcomer_catches_up() {
    use bulwark_actors::raft::{raft_peer, ClusterState, RaftMsg};
    let four: Vec<_> = (0..4).map(support::harness_id).collect();
    let voters = four[..3].to_vec();
    let mut c = Cluster::start_custom(4, 5, support::configs_for(4, 5), move |i, mut s| {
        s.initial_voters = Some(voters.clone());
        if i == 3 {
            // delta joins an existing cluster: it waits to be added.
            s.start = ClusterState::Existing;
        }
        s
    })
    .await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2, 3], 0, Duration::from_secs(10))
        .await
        .unwrap();
    assert_ne!(leader, 3, "a facility that is no voter cannot lead");
    // Enough entries that the log is compacted: delta needs a snapshot.
    c.seed_schedule(leader, 4, 60).await;
    let out = (0..3).find(|&i| i != leader).unwrap();
    let peer = raft_peer(c.h.node(leader)).unwrap();
    let (add, remove) = (vec![c.h.id(3)], vec![c.h.id(out)]);
    peer.call(
        |reply| RaftMsg::ChangeVoters { add, remove, reply },
        Some(support::CALL_TIMEOUT),
    )
    .await
    .unwrap()
    .unwrap()
    .expect("the leader takes the change");
    // The change passes through the joint configuration to the new one.
    let mut want: Vec<_> = (0..4).filter(|&i| i != out).map(|i| c.h.id(i)).collect();
    want.sort();
    let mut seen_joint = false;
    let mut done = false;
    for _ in 0..400 {
        let s = c.status(leader).await.unwrap();
        seen_joint |= s.joint;
        let mut v = s.voters.clone();
        v.sort();
        if !s.joint && v == want {
            done = true;
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    assert!(done, "the configuration never settled on {want:?}");
    assert!(
        seen_joint,
        "the change did not pass through joint consensus"
    );
    // Without the removed facility, the new configuration commits, and
    // delta serves a linearizable read with the whole schedule.
    c.crash(out).await;
    let cmd = c.command(
        leader,
        Op::Assign {
            person: person(3),
            block: block(59),
        },
    );
    committed(&c.propose(leader, cmd).await);
    let on = c
        .read(3, |s| (s.blocks().count(), s.assignees(&block(59))))
        .await
        .unwrap();
    assert_eq!(on, (60, vec![person(3)]));
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn leadership_moves_to_the_facility_asked_for() {
    use bulwark_actors::raft::{raft_peer, RaftMsg};
    let mut c = Cluster::start(3, 9).await;
    let (leader, term, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .unwrap();
    c.seed_schedule(leader, 1, 1).await;
    let target = (leader + 2) % 3;
    raft_peer(c.h.node(leader))
        .unwrap()
        .cast(RaftMsg::TransferLeader(c.h.id(target)))
        .unwrap();
    let (now, new_term, took) = c
        .wait_leader(&[0, 1, 2], term, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(now, target);
    assert!(new_term > term);
    // A transfer needs no election timeout: the target campaigns at once.
    assert!(took < c.election_timeout(target), "transfer took {took:?}");
    let cmd = c.command(
        target,
        Op::Assign {
            person: person(0),
            block: block(0),
        },
    );
    committed(&c.propose(target, cmd).await);
    c.shutdown().await;
}

/// A follower that fell behind the compacted log (120 blocks seeded while
/// it was down, past the harness's compaction point of 40 entries: it needs
/// a snapshot), restarted while every chunk-sized payload to it arrives
/// with a byte flipped: (the leader, the follower, the corrupting rule).
async fn behind_a_damaging_link(c: &mut Cluster) -> (usize, usize, bulwark_transport::RuleId) {
    use bulwark_transport::{FaultRule, Selector};
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .unwrap();
    let lag = (leader + 1) % 3;
    c.crash(lag).await;
    c.seed_schedule(leader, 4, 120).await;
    let rule =
        c.h.net()
            .faults()
            .add(FaultRule::Corrupt {
                from: Selector::Any,
                to: Selector::one(&c.h.id(lag)),
                every: 1,
                min_len: 16 * 1024,
            })
            .unwrap();
    c.restart(lag).await;
    (leader, lag, rule)
}

/// Steps (at most `steps` × 5 ms) until `lag` holds the 120 seeded
/// blocks; the count it holds.
async fn installed(c: &Cluster, lag: usize, steps: u32) -> Option<usize> {
    let mut blocks = None;
    for _ in 0..steps {
        blocks = c.local_read(lag, |s| s.blocks().count()).await;
        if blocks == Some(120) {
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    blocks
}

/// A damaged snapshot chunk is refused and fetched again: while every
/// chunk-sized payload to a follower that fell behind the compacted log
/// arrives with a byte flipped, it refuses each chunk (its checksum) and
/// installs nothing; once the link is clean it installs the leader's state.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_damaged_snapshot_chunk_is_refused_and_fetched_again() {
    let mut c = Cluster::start(3, 11).await;
    let (_, lag, rule) = behind_a_damaging_link(&mut c).await;
    let refused = |c: &support::Cluster| {
        c.h.counter(
            lag,
            "bulwark_snapshot_refused_total",
            &[("reason", "chunk")],
        )
    };
    for _ in 0..2_000 {
        if refused(&c) >= 2 {
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    assert!(refused(&c) >= 2, "no damaged chunk was refused");
    assert_eq!(c.h.counter(lag, "bulwark_snapshot_installed_total", &[]), 0);
    assert_ne!(
        c.local_read(lag, |s| s.blocks().count()).await,
        Some(120),
        "a damaged snapshot was installed"
    );
    assert!(c.h.net().faults().remove(rule));
    assert_eq!(
        installed(&c, lag, 2_000).await,
        Some(120),
        "the clean transfer did not install"
    );
    assert!(c.h.counter(lag, "bulwark_snapshot_installed_total", &[]) >= 1);
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

/// A snapshot that takes longer to stream than the log takes to pass the
/// compaction point still arrives: a follower far behind fetches it over a
/// slow link (its asks held 1.5 s each) while the leader commits 50 writes a
/// second, more than the harness's 40-entry compaction interval per ask.
/// The leader keeps the log after the snapshot being streamed, so the
/// follower takes one snapshot and goes on from the log. Before that, each
/// compaction made raft-rs want a newer snapshot, the follower started the
/// transfer over, and it never caught up.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_slow_snapshot_transfer_under_steady_writes_completes_once() {
    use bulwark_actors::schedule::{Person, Role};
    use bulwark_transport::{FaultRule, Selector};
    let mut c = Cluster::start(3, 5).await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .unwrap();
    let lag = (leader + 1) % 3;
    c.crash(lag).await;
    c.seed_schedule(leader, 4, 120).await;
    c.h.net()
        .faults()
        .add(FaultRule::Delay {
            from: Selector::one(&c.h.id(lag)),
            to: Selector::Any,
            delay_ms: 1_500,
        })
        .unwrap();
    c.restart(lag).await;
    let mut installed = false;
    for k in 0..1_500 {
        let op = Op::AddPerson(Person {
            id: person(100 + k),
            name: format!("Late {k}"),
            role: Role::Resident { pgy: 2 },
        });
        let cmd = c.command(leader, op);
        committed(&c.propose(leader, cmd).await);
        c.h.step(Duration::from_millis(20)).await;
        if c.local_read(lag, |s| s.blocks().count()).await == Some(120) {
            installed = true;
            break;
        }
    }
    let started =
        c.h.counter(lag, "bulwark_snapshot_fetches_started_total", &[]);
    assert!(
        installed,
        "the follower never took the snapshot ({started} transfers started)"
    );
    assert_eq!(c.h.counter(lag, "bulwark_snapshot_installed_total", &[]), 1);
    assert!(started <= 2, "{started} transfers started for one snapshot");
    assert!(
        c.h.counter(leader, "bulwark_raft_compaction_held_total", &[]) >= 1,
        "the log was never held for the transfer"
    );
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

/// A voter that forgot its vote in a restart could elect a second leader in
/// its term. The leader A is cut off; X wins the next term with Y's vote
/// (their messages slowed by half a tick); Y crashes before X's first
/// append reaches it. Once A has stepped down (alone, still in the old
/// term), Y restarts beside A, away from X: A campaigns for X's term, and Y
/// must refuse (its hard state keeps the vote). Returns the violations
/// seen (one leader per term, by every facility's status).
async fn forgotten_vote(seed: u64) -> Vec<String> {
    use bulwark_transport::{FaultRule, Selector};
    let mut c = Cluster::start(3, seed).await;
    let (a, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .unwrap();
    let (b, d) = ((a + 1) % 3, (a + 2) % 3);
    // Half a tick: the first candidate's two rounds (pre-vote, vote) end
    // before the other's timeout, two ticks later, and its first append
    // is still in flight for a while after it leads.
    let delay_ms = (c.tick().as_millis() / 2) as u64;
    let slow = |from: usize, to: usize| FaultRule::Delay {
        from: Selector::one(&c.h.id(from)),
        to: Selector::one(&c.h.id(to)),
        delay_ms,
    };
    c.h.partition(&[a], &[b, d]).unwrap();
    c.h.net().faults().add(slow(b, d)).unwrap();
    c.h.net().faults().add(slow(d, b)).unwrap();
    let mut found = None;
    for _ in 0..20_000 {
        for i in [b, d] {
            if let Some(s) = c.status(i).await {
                if s.is_leader {
                    found = Some((i, s.term));
                }
            }
        }
        if found.is_some() {
            break;
        }
        c.h.step(Duration::from_millis(1)).await;
    }
    let Some((x, _)) = found else {
        return vec!["no leader among the two".into()];
    };
    let y = if x == b { d } else { b };
    c.crash(y).await;
    c.h.heal();
    c.h.partition(&[x], &[a, y]).unwrap();
    // A, alone now, gives up leading (check-quorum) and stays in its old
    // term (its pre-votes find nobody); then Y comes back beside it.
    for _ in 0..3_000 {
        if c.status(a).await.is_some_and(|s| !s.is_leader) {
            break;
        }
        c.h.step(Duration::from_millis(10)).await;
    }
    c.restart(y).await;
    // A and Y elect one of them; every status is checked for a second
    // leader in a term.
    for _ in 0..300 {
        for i in 0..3 {
            c.status(i).await;
        }
        c.h.step(Duration::from_millis(10)).await;
    }
    let v = c.violations();
    c.shutdown().await;
    v
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_restarted_voter_does_not_vote_twice_in_a_term() {
    for seed in [1, 2, 3, 4, 5, 6] {
        assert_eq!(
            forgotten_vote(seed).await,
            Vec::<String>::new(),
            "seed {seed}"
        );
    }
}

/// The scenario catches the planted `vote-twice-per-term` (the hard state
/// stored without the vote):
/// `BULWARK_PLANT=vote-twice-per-term cargo test -p bulwark-actors
/// --features plant --test raft_harness forgotten`.
#[cfg(feature = "plant")]
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_forgotten_vote_scenario_catches_a_hard_state_without_the_vote() {
    if !bulwark_actors::plant::active(bulwark_actors::plant::Bug::VoteTwicePerTerm) {
        return;
    }
    let mut caught = 0;
    for seed in [1, 2, 3, 4, 5, 6] {
        caught += usize::from(!forgotten_vote(seed).await.is_empty());
    }
    assert!(caught > 0, "no seed elected two leaders in one term");
}

/// Snapshot transfers go under the `snapshot@<leader>` breaker, fed by what
/// each ask for chunks brings: while every chunk to a follower behind the
/// compacted log arrives damaged, its asks fail, the breaker opens and the
/// asks are held (not sent, the transfer kept) instead of taking damaged
/// chunks again and again; once the link is clean, a half-open probe's
/// chunk is taken, the breaker closes and the snapshot installs.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn failing_snapshot_asks_open_the_breaker_and_a_good_chunk_closes_it() {
    use bulwark_actors::flow::mesh::Breakers;
    use bulwark_actors::raft::actor::snapshot_dependency;
    let breakers: Vec<Breakers> = (0..3).map(|_| Breakers::default()).collect();
    let b2 = breakers.clone();
    let mut c = Cluster::start_custom(3, 11, support::configs_for(3, 11), move |i, mut s| {
        s.breakers = Some(b2[i].clone());
        s
    })
    .await;
    let (leader, lag, rule) = behind_a_damaging_link(&mut c).await;
    let name = snapshot_dependency(&c.h.id(leader));
    let view = |b: &Breakers| b.views().into_iter().find(|v| v.name == name).unwrap();
    let held = |c: &support::Cluster| c.h.counter(lag, "bulwark_snapshot_asks_held_total", &[]);
    for _ in 0..4_000 {
        if held(&c) >= 1 {
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    assert!(held(&c) >= 1, "the open breaker held an ask");
    let v = view(&breakers[lag]);
    assert_eq!(v.state, "open");
    assert!(v.stats.failures >= 3 && v.stats.refused >= 1, "{v:?}");
    let refused = c.h.counter(
        lag,
        "bulwark_snapshot_refused_total",
        &[("reason", "chunk")],
    );
    // Held, not retried: no more damaged chunks while it is open.
    for _ in 0..400 {
        c.h.step(Duration::from_millis(5)).await;
    }
    assert_eq!(
        c.h.counter(
            lag,
            "bulwark_snapshot_refused_total",
            &[("reason", "chunk")]
        ),
        refused,
        "asks went out while the breaker was open"
    );
    assert!(c.h.net().faults().remove(rule));
    assert_eq!(
        installed(&c, lag, 10_000).await,
        Some(120),
        "the clean transfer did not install"
    );
    assert_eq!(view(&breakers[lag]).state, "closed");
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

/// A checkpoint backs every facility up at its own index, however the
/// entries around it were batched: one facility is down while it commits
/// and applies it on restart in one batch with what came after, and its
/// backup still holds exactly the state at the checkpoint.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_facility_backs_up_a_checkpoint_at_its_index() {
    use bulwark_actors::replica::{CheckpointSink, Replica};
    use bulwark_storage::Store;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    // (facility, index, backup file), written as each facility applies it.
    let written: Arc<Mutex<Vec<(usize, u64, std::path::PathBuf)>>> = Arc::default();
    let w = written.clone();
    let mut c = Cluster::start_custom(3, 11, support::configs_for(3, 11), move |i, mut s| {
        let (w, root) = (w.clone(), root.clone());
        s.keyring.checkpoints = Some(CheckpointSink(Arc::new(move |cp| {
            let path = root.join(format!("f{i}-{}.redb", cp.index));
            cp.store.backup_from(&cp.source, &path).unwrap();
            w.lock().unwrap().push((i, cp.index, path));
        })));
        s
    })
    .await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .unwrap();
    c.seed_schedule(leader, 4, 10).await;
    let down = (leader + 1) % 3;
    c.crash(down).await;
    let assign = |c: &mut Cluster, b: usize| {
        c.command(
            leader,
            Op::Assign {
                person: person(b % 4),
                block: block(b),
            },
        )
    };
    for b in 0..5 {
        let cmd = assign(&mut c, b);
        committed(&c.propose(leader, cmd).await);
    }
    let cmd = c.command(leader, Op::Checkpoint);
    let at = committed(&c.propose(leader, cmd).await);
    for b in 5..10 {
        let cmd = assign(&mut c, b);
        committed(&c.propose(leader, cmd).await);
    }
    c.restart(down).await;
    let mut caught_up = false;
    for _ in 0..200 {
        if c.local_read(down, |s| s.assignments().count()).await == Some(10) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(c.tick()).await;
    }
    assert!(caught_up, "the restarted facility catches up");
    let written = written.lock().unwrap().clone();
    let mut facilities: Vec<usize> = written.iter().map(|(i, _, _)| *i).collect();
    facilities.sort();
    assert_eq!(
        facilities,
        vec![0, 1, 2],
        "one backup per facility: {written:?}"
    );
    for (i, index, path) in &written {
        assert_eq!(*index, at, "facility {i}");
        let store = Store::open(path, &support::harness_id(*i).to_string())
            .unwrap()
            .store;
        let r = Replica::open(store).unwrap();
        assert_eq!(
            r.applied(),
            at,
            "facility {i}'s backup is at the checkpoint"
        );
        let s = r.read().unwrap().to_state().unwrap();
        assert_eq!(
            s.assignments().count(),
            5,
            "facility {i}'s backup holds what came before the checkpoint, nothing after"
        );
    }
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

/// A facility replaced under a new Raft identity: `Replace` adds its next
/// incarnation as a learner, the facility rebuilds its core under it and
/// catches up; `Promote` (refused until then) makes it a voter and removes
/// the old identity. The new identity then counts: with another voter
/// down it commits with the leader, and with the old leader down it helps
/// elect the next one.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_replaced_facility_returns_as_a_learner_then_a_voter() {
    use bulwark_actors::raft::{raft_peer, MemberChange, MemberView, RaftMsg};
    let mut c = Cluster::start(3, 13).await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .unwrap();
    c.seed_schedule(leader, 4, 20).await;
    let f = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let change = |c: &Cluster, at: usize, change: MemberChange| {
        let peer = raft_peer(c.h.node(at)).unwrap();
        let facility = c.h.id(f);
        async move {
            peer.call(
                |reply| RaftMsg::ChangeMember {
                    facility,
                    change,
                    reply,
                },
                Some(support::CALL_TIMEOUT),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    let members = |c: &Cluster, at: usize| {
        let peer = raft_peer(c.h.node(at)).unwrap();
        async move {
            peer.call(RaftMsg::Members, Some(support::CALL_TIMEOUT))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let role = |m: &[MemberView], incarnation: u64| {
        m.iter()
            .find(|v| v.facility == c.h.id(f) && v.incarnation == incarnation)
            .map(|v| (v.role.clone(), v.matched))
    };
    // The leader cannot replace itself.
    let refused = {
        let peer = raft_peer(c.h.node(leader)).unwrap();
        let facility = c.h.id(leader);
        peer.call(
            |reply| RaftMsg::ChangeMember {
                facility,
                change: MemberChange::Replace,
                reply,
            },
            Some(support::CALL_TIMEOUT),
        )
        .await
        .unwrap()
        .unwrap()
    };
    assert!(refused.is_err(), "{refused:?}");
    // Asked at the other follower: passed to the leader.
    let asked = change(&c, other, MemberChange::Replace).await;
    assert!(asked.unwrap().contains("passed to the leader"));
    let mut learner = false;
    for _ in 0..400 {
        let m = members(&c, leader).await;
        if matches!(role(&m, 1), Some((r, Some(_))) if r == "learner") {
            learner = true;
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    assert!(learner, "{:?}", members(&c, leader).await);
    // Promoted once caught up (asked until the leader takes it).
    let mut promoted = false;
    for _ in 0..400 {
        if change(&c, leader, MemberChange::Promote).await.is_ok() {
            promoted = true;
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    assert!(promoted, "never caught up: {:?}", members(&c, leader).await);
    let mut settled = false;
    for _ in 0..400 {
        let m = members(&c, leader).await;
        let s = c.status(leader).await.unwrap();
        if !s.joint && matches!(role(&m, 1), Some((r, _)) if r == "voter") && role(&m, 0).is_none()
        {
            settled = true;
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    assert!(settled, "{:?}", members(&c, leader).await);
    // A restart keeps the new identity (it is read from the configuration
    // the store holds).
    c.crash(f).await;
    c.restart(f).await;
    // With the other voter down, the leader commits with the new identity.
    c.crash(other).await;
    let cmd = c.command(
        leader,
        Op::Assign {
            person: person(1),
            block: block(3),
        },
    );
    committed(&c.propose(leader, cmd).await);
    c.restart(other).await;
    // With the old leader down, the new identity helps elect the next.
    c.crash(leader).await;
    let (next, _, _) = c
        .wait_leader(&[f, other], 0, Duration::from_secs(20))
        .await
        .expect("a leader among the replaced facility and the other");
    let cmd = c.command(
        next,
        Op::Assign {
            person: person(2),
            block: block(4),
        },
    );
    committed(&c.propose(next, cmd).await);
    let on = c.read(f, |s| s.assignees(&block(4))).await.unwrap();
    assert_eq!(on, vec![person(2)]);
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

/// A network past seven sites: 20 facilities, 7 voters and 13 learners
/// added one by one (`MemberChange::Add`; they started waiting to be
/// added). A write sent to a learner is forwarded and commits; a
/// linearizable read at a learner sees it; the learners never vote (the
/// leader stays among the voters), and every learner applies the log.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn twenty_facilities_seven_voters_and_thirteen_learners_commit_and_read() {
    use bulwark_actors::raft::{raft_peer, ClusterState, MemberChange, RaftMsg};
    const N: usize = 20;
    const VOTERS: usize = 7;
    let ids: Vec<_> = (0..N).map(support::harness_id).collect();
    let voters = ids[..VOTERS].to_vec();
    let mut c = Cluster::start_custom(N, 21, support::configs_for(N, 21), move |i, mut s| {
        s.initial_voters = Some(voters.clone());
        if i >= VOTERS {
            s.start = ClusterState::Existing;
        }
        s
    })
    .await;
    let all: Vec<usize> = (0..N).collect();
    let (leader, _, _) = c
        .wait_leader(&all, 0, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(leader < VOTERS, "only a voter leads");
    for j in VOTERS..N {
        let peer = raft_peer(c.h.node(leader)).unwrap();
        let facility = c.h.id(j);
        let mut added = false;
        for _ in 0..400 {
            let f = facility.clone();
            let taken = peer
                .call(
                    |reply| RaftMsg::ChangeMember {
                        facility: f,
                        change: MemberChange::Add,
                        reply,
                    },
                    Some(support::CALL_TIMEOUT),
                )
                .await
                .unwrap()
                .unwrap();
            if taken.is_ok() {
                added = true;
                break;
            }
            // A change still in progress: the previous one is applying.
            c.h.step(Duration::from_millis(5)).await;
        }
        assert!(added, "{} was never added", c.h.id(j));
    }
    // The last addition applies.
    let mut roles = (0, 0);
    for _ in 0..400 {
        let members = raft_peer(c.h.node(leader))
            .unwrap()
            .call(RaftMsg::Members, Some(support::CALL_TIMEOUT))
            .await
            .unwrap()
            .unwrap();
        let count = |role: &str| members.iter().filter(|m| m.role == role).count();
        roles = (count("voter"), count("learner"));
        if roles == (VOTERS, N - VOTERS) {
            break;
        }
        c.h.step(Duration::from_millis(5)).await;
    }
    assert_eq!(roles, (VOTERS, N - VOTERS));
    c.seed_schedule(leader, 4, 10).await;
    // A write through a learner is forwarded to the leader and commits.
    let learner = N - 1;
    let cmd = c.command(
        learner,
        Op::Assign {
            person: person(2),
            block: block(7),
        },
    );
    committed(&c.propose(learner, cmd).await);
    // A linearizable read at another learner sees it.
    let on = c.read(VOTERS, |s| s.assignees(&block(7))).await.unwrap();
    assert_eq!(on, vec![person(2)]);
    // Every learner applies the log.
    for j in VOTERS..N {
        let mut seen = false;
        for _ in 0..200 {
            if c.local_read(j, |s| s.assignees(&block(7))).await == Some(vec![person(2)]) {
                seen = true;
                break;
            }
            c.h.step(Duration::from_millis(5)).await;
        }
        assert!(seen, "learner {j} never applied the write");
    }
    let (now, _) = c.leader().await.unwrap();
    assert!(now < VOTERS, "a learner never leads");
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}
