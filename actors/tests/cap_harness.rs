//! Detection, CAP-aware operations and healing in the harness: facilities
//! over SimNet on virtual time, each with a RaftPeer, the FailureDetector,
//! the CapGate, the Healer and the breaker mesh.

mod support;

use std::time::Duration;

use bulwark_actors::cap::gate::{GateOutcome, ReadError};
use bulwark_actors::cap::heal::{Conflict, ConflictPolicy, HealerMsg, Report, Resolution, HEALER};
use bulwark_actors::cap::{Consistency, Mode, PartitionState};
use bulwark_actors::detect::{DetectConfig, Liveness};
use bulwark_actors::flow::breaker::BreakerConfig;
use bulwark_actors::flow::mesh::{BreakerMsg, MeshStatus, BREAKERS};
use bulwark_actors::raft::ProposeOutcome;
use bulwark_actors::schedule::{BlockId, Op, Outcome, PersonId, Rule};
use bulwark_runtime::Zone;
use bulwark_transport::simnet::LinkParams;
use bulwark_transport::{FaultRule, Selector, TrafficClass};
use support::{block, person, CapPlan, Cluster, CALL_TIMEOUT};

fn plan(policy: ConflictPolicy, leadership: bool) -> CapPlan {
    CapPlan {
        detect: DetectConfig {
            heartbeat_jitter: 0.3,
            ..DetectConfig::default()
        },
        policy,
        leadership,
    }
}

/// Steps virtual time by 100 ms until `done`, for at most `limit`.
async fn step_until(c: &Cluster, limit: Duration, mut done: impl FnMut(&Cluster) -> bool) -> bool {
    for _ in 0..limit.as_millis() / 100 {
        if done(c) {
            return true;
        }
        c.h.step(Duration::from_millis(100)).await;
    }
    done(c)
}

fn cover(b: usize, p: usize) -> Op {
    Op::EmergencyCoverage {
        block: block(b),
        person: person(p),
    }
}

fn applied(o: &GateOutcome) {
    match o {
        GateOutcome::Consensus(ProposeOutcome::Committed {
            outcome: Outcome::Applied(_),
            ..
        }) => {}
        other => panic!("expected a committed change, got {other:?}"),
    }
}

fn provisional(o: &GateOutcome) {
    assert!(
        matches!(o, GateOutcome::Provisional { .. }),
        "expected a provisional change, got {o:?}"
    );
}

async fn mesh(c: &Cluster, i: usize) -> MeshStatus {
    let b =
        c.h.node(i)
            .ctx()
            .find::<BreakerMsg>(Zone::Flow, BREAKERS)
            .expect("breakers run");
    ractor::call_t!(b, BreakerMsg::Status, 5_000).expect("status")
}

async fn wait_reports(c: &Cluster, i: usize, limit: Duration) -> Vec<Report> {
    for _ in 0..limit.as_millis() / 500 {
        let r = c.reports(i).await;
        if !r.is_empty() {
            return r;
        }
        c.h.step(Duration::from_millis(500)).await;
    }
    panic!("facility {i} wrote no reconciliation report in {limit:?}");
}

fn item(r: &[Report], b: usize) -> &bulwark_actors::cap::heal::Item {
    r.iter()
        .flat_map(|r| r.items.iter())
        .rfind(|i| i.target.as_ref().map(|(blk, _)| blk) == Some(&block(b)))
        .unwrap_or_else(|| panic!("no report item for b{b}: {r:?}"))
}

/// Every facility's final schedule: identical, and no double booking.
async fn assert_converged(c: &Cluster) -> Vec<(BlockId, PersonId)> {
    let mut seen: Option<Vec<(BlockId, PersonId)>> = None;
    for i in 0..c.n() {
        let (rows, ok) = c
            .read(i, |s| {
                let rows: Vec<(BlockId, PersonId)> = s
                    .assignments()
                    .map(|(b, p, _)| (b.clone(), p.clone()))
                    .collect();
                let full = s
                    .blocks()
                    .all(|b| s.assignees(&b.id).len() <= usize::from(b.required));
                (rows, s.check_invariants().is_ok() && full)
            })
            .await
            .expect("linearizable read after heal");
        assert!(ok, "facility {i}: invariants broken (double booking?)");
        match &seen {
            None => seen = Some(rows),
            Some(first) => assert_eq!(&rows, first, "facility {i} differs"),
        }
    }
    seen.unwrap()
}

/// The partition scenario of the detection issue, for one policy: five
/// facilities split 3 | 2. Returns the two minority facilities' reports.
async fn partition_scenario(policy: ConflictPolicy, seed: u64) -> (Cluster, usize, usize, usize) {
    let mut c = Cluster::start_cap(5, seed, plan(policy, false)).await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2, 3, 4], 0, Duration::from_secs(20))
        .await
        .expect("a leader");
    c.seed_schedule(leader, 6, 4).await;
    let others: Vec<usize> = (0..5).filter(|&i| i != leader).collect();
    let (m1, m2) = (others[0], others[1]);
    let majority: Vec<usize> = (0..5).filter(|&i| i != m1 && i != m2).collect();

    // A breaker on the leader that depends on m1: it must open when m1 is
    // Down, with no failed call.
    let br =
        c.h.node(leader)
            .ctx()
            .find::<BreakerMsg>(Zone::Flow, BREAKERS)
            .unwrap();
    br.cast(BreakerMsg::Register {
        name: "peer-api".into(),
        peer: Some(c.h.id(m1)),
        config: BreakerConfig::default(),
    })
    .unwrap();

    c.h.partition(&[m1, m2], &majority).unwrap();
    assert!(
        step_until(&c, Duration::from_secs(20), |c| {
            c.view(m1).partition == PartitionState::Minority
                && c.view(m2).partition == PartitionState::Minority
                && majority
                    .iter()
                    .all(|&i| c.view(i).partition == PartitionState::Majority)
        })
        .await,
        "the partition is seen on both sides: {:?} / {:?}",
        c.view(m1),
        c.view(majority[0])
    );

    // Detector-driven breaker: open, without a single call.
    let st = mesh(&c, leader).await;
    let local = &st.local[0];
    assert_eq!((local.state, local.stats.permitted), ("open", 0), "{st:?}");
    // The mesh: the leader's majority peers heard of it and raised their
    // capacity buffer; the cut-off side did not.
    c.h.step(Duration::from_millis(500)).await;
    for &i in majority.iter().filter(|&&i| i != leader) {
        let st = mesh(&c, i).await;
        assert!(
            st.remote
                .iter()
                .any(|r| r.facility == c.h.id(leader) && r.state == "open"),
            "{st:?}"
        );
        assert!(st.buffer > 0);
    }

    // The majority covers b0 first.
    let cmd = c.command(leader, cover(0, 5));
    applied(&c.submit(leader, cmd, false).await);
    c.h.step(Duration::from_millis(100)).await;
    // The minority: emergency coverage proceeds provisionally...
    let cmd = c.command(m1, cover(1, 1));
    provisional(&c.submit(m1, cmd, false).await);
    let cmd = c.command(m1, cover(3, 3));
    provisional(&c.submit(m1, cmd, false).await);
    let cmd = c.command(m2, cover(0, 0));
    provisional(&c.submit(m2, cmd, false).await);
    let cmd = c.command(m2, cover(2, 2));
    provisional(&c.submit(m2, cmd, false).await);
    // ... a change that could never apply is refused at once ...
    let cmd = c.command(m2, cover(2, 4));
    match c.submit(m2, cmd, false).await {
        GateOutcome::Refused { rejection, .. } => assert_eq!(rejection.rule, Rule::BlockFull),
        other => panic!("{other:?}"),
    }
    // ... and a final approval fails fast with the partition error.
    let cmd = c.command(m1, Op::Approve { through_day: 6 });
    match c.submit(m1, cmd, false).await {
        GateOutcome::Partitioned(e) => {
            assert_eq!((e.state, e.mode), (PartitionState::Minority, Mode::Cp));
            assert!(e.to_string().contains("MINORITY"), "{e}");
        }
        other => panic!("a final approval in a minority: {other:?}"),
    }
    // Reads: linearizable refused, stale served with its staleness.
    match c.gate_read(m1, Consistency::Linearizable, |_, _| ()).await {
        Err(ReadError::Partitioned(e)) => assert_eq!(e.state, PartitionState::Minority),
        other => panic!("{other:?}"),
    }
    let staleness = c
        .gate_read(m1, Consistency::Stale, |_, st| st.clone())
        .await
        .expect("a stale read is served");
    assert_eq!(staleness.partition, PartitionState::Minority);
    assert_eq!(staleness.provisional_pending, 2);
    assert!(staleness.stale_ms > 0, "{staleness:?}");

    // Later, the majority fills b1 differently and grants p3 leave on
    // b3's day.
    c.h.step(Duration::from_millis(100)).await;
    let cmd = c.command(leader, cover(1, 4));
    applied(&c.submit(leader, cmd, false).await);
    let cmd = c.command(
        leader,
        Op::Leave {
            person: person(3),
            from_day: 6,
            to_day: 6,
        },
    );
    applied(&c.submit(leader, cmd, false).await);

    c.h.heal();
    (c, leader, m1, m2)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_partition_heals_by_last_write_wins() {
    let (c, _, m1, m2) = partition_scenario(ConflictPolicy::LastWriteWins, 3).await;
    let r1 = wait_reports(&c, m1, Duration::from_secs(60)).await;
    let r2 = wait_reports(&c, m2, Duration::from_secs(60)).await;
    for r in r1.iter().chain(&r2) {
        eprintln!("{}", r.render());
    }
    // m1 covered b1 before the majority did: the majority's later write wins.
    let i = item(&r1, 1);
    assert!(
        matches!(&i.resolution, Resolution::Superseded { winner } if winner.contains("p4")),
        "{i:?}"
    );
    assert!(
        matches!(&i.conflict, Some(Conflict::BlockFilled { holders, .. }) if holders[0].person == person(4))
    );
    // m1's b3 now breaks p3's leave: it cannot win.
    let i = item(&r1, 3);
    assert!(
        matches!(&i.resolution, Resolution::Superseded { .. }),
        "{i:?}"
    );
    assert!(matches!(
        &i.conflict,
        Some(Conflict::RuleBroken {
            rule: Rule::OnLeave,
            ..
        })
    ));
    // m2 covered b0 after the majority: its later write wins and replaces p5.
    let i = item(&r2, 0);
    assert!(
        matches!(&i.resolution, Resolution::Won { replaced, .. } if *replaced == vec![person(5)]),
        "{i:?}"
    );
    // m2's b2 had no rival.
    let i = item(&r2, 2);
    assert!(matches!(i.resolution, Resolution::Applied { .. }) && i.conflict.is_none());

    let rows = assert_converged(&c).await;
    assert_eq!(
        rows,
        vec![
            (block(0), person(0)),
            (block(1), person(4)),
            (block(2), person(2)),
        ]
    );
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_partition_heals_by_manual_review() {
    let (c, _, m1, m2) = partition_scenario(ConflictPolicy::ManualReview, 3).await;
    let r1 = wait_reports(&c, m1, Duration::from_secs(60)).await;
    let r2 = wait_reports(&c, m2, Duration::from_secs(60)).await;
    // Every conflict waits for an operator; the change with no rival applied.
    for (r, b) in [(&r1, 1), (&r1, 3), (&r2, 0)] {
        let i = item(r, b);
        assert_eq!(i.resolution, Resolution::Queued, "{i:?}");
        assert!(i.conflict.is_some());
    }
    assert!(matches!(
        item(&r2, 2).resolution,
        Resolution::Applied { .. }
    ));

    let healer = |i: usize| {
        c.h.node(i)
            .ctx()
            .find::<HealerMsg>(Zone::Consensus, HEALER)
            .unwrap()
    };
    let reviews = ractor::call_t!(healer(m2), HealerMsg::Reviews, 5_000).unwrap();
    assert_eq!(reviews.len(), 1);
    // The operator takes m2's b0 over the majority's, refuses m1's b1, and
    // accepts m1's b3, which the leave rule still refuses.
    let t = CALL_TIMEOUT.as_millis() as u64;
    let id = reviews[0].id;
    let r = ractor::call_t!(
        healer(m2),
        |reply| HealerMsg::Resolve {
            id,
            accept: true,
            reply
        },
        t
    )
    .unwrap()
    .expect("resolved");
    assert!(
        matches!(&r.items[0].resolution, Resolution::Won { replaced, .. } if *replaced == vec![person(5)])
    );
    let reviews = ractor::call_t!(healer(m1), HealerMsg::Reviews, 5_000).unwrap();
    for p in reviews {
        let on_b1 =
            matches!(&p.command.op, Op::EmergencyCoverage { block: b, .. } if *b == block(1));
        let id = p.id;
        let r = ractor::call_t!(
            healer(m1),
            |reply| HealerMsg::Resolve {
                id,
                accept: !on_b1,
                reply
            },
            t
        )
        .unwrap()
        .expect("resolved");
        assert!(
            matches!(r.items[0].resolution, Resolution::Superseded { .. }),
            "{r:?}"
        );
    }
    assert!(ractor::call_t!(healer(m1), HealerMsg::Reviews, 5_000)
        .unwrap()
        .is_empty());

    let rows = assert_converged(&c).await;
    assert_eq!(
        rows,
        vec![
            (block(0), person(0)),
            (block(1), person(4)),
            (block(2), person(2)),
        ]
    );
    assert_eq!(c.violations(), Vec::<String>::new());
    c.shutdown().await;
}

/// Makes facility `i`'s links slow and jittery: streams arrive late
/// (retransmissions on a lossy path), datagrams (heartbeats) are lost.
fn degrade(c: &Cluster, i: usize) {
    let bad = LinkParams {
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(120),
        loss: 0.0,
    };
    for j in 0..c.n() {
        if j != i {
            c.h.net().set_link(&c.h.id(i), &c.h.id(j), bad);
            c.h.net().set_link(&c.h.id(j), &c.h.id(i), bad);
        }
    }
    c.h.net()
        .faults()
        .add(FaultRule::Drop {
            from: Selector::one(&c.h.id(i)),
            to: Selector::Any,
            probability: 0.85,
            class: Some(TrafficClass::Heartbeat),
        })
        .unwrap();
}

/// Who leads over `span`, polled every 500 ms, and whether the majority
/// suspected `watched` at some point.
async fn leaders_over(c: &Cluster, span: Duration, watched: usize) -> (Vec<usize>, bool) {
    let mut out = Vec::new();
    let mut suspected = false;
    for _ in 0..span.as_millis() / 500 {
        if let Some((l, _)) = c.leader().await {
            if out.last() != Some(&l) {
                out.push(l);
            }
        }
        suspected |= c.view(watched).self_suspected();
        c.h.step(Duration::from_millis(500)).await;
    }
    (out, suspected)
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_leader_on_a_slow_jittery_link_hands_over_to_a_healthy_one() {
    for leadership in [true, false] {
        let c = Cluster::start_cap(3, 5, plan(ConflictPolicy::LastWriteWins, leadership)).await;
        c.wait_leader(&[0, 1, 2], 0, Duration::from_secs(20))
            .await
            .expect("a leader");
        // Let the detectors learn the healthy intervals first.
        c.h.step(Duration::from_secs(30)).await;
        let (slow, _) = c.leader().await.expect("a leader");
        degrade(&c, slow);
        let (leaders, suspected) = leaders_over(&c, Duration::from_secs(120), slow).await;
        eprintln!("leadership follows the detector: {leadership}; leaders {leaders:?}; slow {slow} suspected {suspected}");
        assert!(suspected, "the peers suspect the slow facility");
        if leadership {
            let last = *leaders.last().unwrap();
            assert_ne!(last, slow, "{leaders:?}");
            assert!(!c.view(last).self_suspected(), "the new leader is healthy");
            // Once handed over, it never came back.
            let first_away = leaders.iter().position(|&l| l != slow).unwrap();
            assert!(!leaders[first_away..].contains(&slow), "{leaders:?}");
            assert!(
                c.h.counter(slow, "bulwark_raft_leader_transfers_total", &[]) >= 1,
                "the slow leader handed over itself"
            );
        } else {
            // Control: without the detector, Raft alone keeps the slow leader.
            assert_eq!(leaders, vec![slow], "{leaders:?}");
        }
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_minority_write_before_detection_falls_back_to_provisional() {
    let mut c = Cluster::start_cap(3, 11, plan(ConflictPolicy::LastWriteWins, false)).await;
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(20))
        .await
        .expect("a leader");
    c.seed_schedule(leader, 2, 2).await;
    let cut = (leader + 1) % 3;
    let rest: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
    c.h.partition(&[cut], &rest).unwrap();
    // At once, before the detector has noticed: the AP write tries
    // consensus, which cannot answer, and is kept provisionally.
    assert_eq!(c.view(cut).partition, PartitionState::Connected);
    let cmd = c.command(cut, cover(0, 0));
    let out = c.submit(cut, cmd, false).await;
    provisional(&out);
    assert_eq!(c.view(cut).liveness(&c.h.id(leader)), Some(Liveness::Down));
    c.h.heal();
    let r = wait_reports(&c, cut, Duration::from_secs(60)).await;
    assert!(
        matches!(
            item(&r, 0).resolution,
            Resolution::Applied { .. } | Resolution::AlreadyApplied
        ),
        "{r:?}"
    );
    assert_eq!(assert_converged(&c).await, vec![(block(0), person(0))]);
    c.shutdown().await;
}

/// A linearizable read before any leader is elected answers the same typed
/// state a write does (`NO_LEADER` over HTTP), not an opaque error; once a
/// leader is known it is served.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_read_without_a_leader_says_no_leader() {
    let c = Cluster::start_cap(3, 17, plan(ConflictPolicy::LastWriteWins, false)).await;
    match c.gate_read(0, Consistency::Linearizable, |_, _| ()).await {
        Err(ReadError::NoLeader { hint: None }) => {}
        other => panic!("a read with no leader yet: {other:?}"),
    }
    let (leader, _, _) = c
        .wait_leader(&[0, 1, 2], 0, Duration::from_secs(10))
        .await
        .expect("a leader");
    c.h.step(Duration::from_millis(500)).await;
    c.gate_read(leader, Consistency::Linearizable, |_, _| ())
        .await
        .expect("a read with a leader is served");
    c.shutdown().await;
}
