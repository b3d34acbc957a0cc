//! `bulwark demo`: three facilities on loopback QUIC with mutual TLS.
//!
//! Prints the supervision tree, the peers connected, one round trip per
//! ordered pair, and a supervised restart after a deliberate actor crash.
//! Then consensus: a leader is elected, schedule commands commit (and one
//! that breaks a rule is rejected), the leader's RaftPeer is killed, its
//! supervisor restarts it from redb, a leader is elected again and the
//! schedule reads the same, linearizably, on every facility.

use crate::facility::{self, Facility};
use bulwark_actors::raft::{inspect, ProposeOutcome, RaftMsg, ReadOutcome, RAFT};
use bulwark_actors::replica::ScheduleView;
use bulwark_actors::schedule::{
    Block, BlockId, Command, IdempotencyKey, Op, Outcome, Person, PersonId, Pool, Role,
    ScheduleState,
};
use bulwark_runtime::builtin::{ping, PingError, PROBE};
use bulwark_runtime::{RealClock, SupervisionConfig, Zone};
use bulwark_runtime::{Refusal, RouteError};
use bulwark_transport::{LinkStatus, Transport};
use std::sync::Arc;
use std::time::Duration;

type DemoResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const NAMES: [&str; 3] = ["alpha", "bravo", "charlie"];
/// How long the demo waits for any one step before it gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs the demo; an error means some step failed.
pub async fn run() -> DemoResult<()> {
    let tmp = tempfile::tempdir()?;
    let facilities = facility::start_loopback_cluster(
        tmp.path(),
        &NAMES,
        SupervisionConfig::default(),
        Some(bulwark_actors::raft::RaftConfig::default()),
        Arc::new(RealClock),
    )
    .await?;
    for f in &facilities {
        println!(
            "started {} on quic://{} (pin {})",
            f.node.facility(),
            f.transport.local_addr()?,
            f.transport.pin()
        );
    }
    println!(
        "== supervision tree (alpha) ==\n{}",
        facilities[0].node.tree()
    );
    connect_all(&facilities).await?;
    round_trips(&facilities).await?;
    supervised_restart(&facilities).await?;
    consensus(&facilities).await?;
    for f in facilities {
        f.transport.close();
        f.node.stop().await;
    }
    println!("== demo finished: ok ==");
    Ok(())
}

async fn connect_all(fs: &[Facility]) -> DemoResult<()> {
    println!("== peers connected (mutual TLS, pinned certificates) ==");
    for a in fs {
        if !a.wait_links_up(STEP_TIMEOUT).await {
            return Err(format!("{}: not every link came up", a.node.facility()).into());
        }
        for b in a.transport.peers() {
            debug_assert_eq!(a.transport.link_status(&b), LinkStatus::Up);
            println!("  {} -> {}: up", a.node.facility(), b);
        }
    }
    Ok(())
}

async fn round_trips(fs: &[Facility]) -> DemoResult<()> {
    println!("== one round trip per ordered pair (probe ping/pong over QUIC) ==");
    for a in fs {
        for b in fs {
            if a.node.facility() != b.node.facility() {
                let rtt = ping(a.node.router(), b.node.facility(), STEP_TIMEOUT).await?;
                println!(
                    "  {} -> {}: {:.3} ms",
                    a.node.facility(),
                    b.node.facility(),
                    rtt.as_secs_f64() * 1e3
                );
            }
        }
    }
    Ok(())
}

async fn supervised_restart(fs: &[Facility]) -> DemoResult<()> {
    println!("== supervised restart ==");
    let alpha = &fs[0].node;
    let name = alpha.ctx().actor_name(Zone::Service, PROBE);
    let cell = ractor::registry::where_is(name.clone()).ok_or("alpha's probe is not running")?;
    println!("  killing {name} (deliberate crash)");
    let spawns = &alpha.ctx().spawns;
    let before = spawns.all();
    cell.kill();
    tokio::time::timeout(STEP_TIMEOUT, spawns.wait_spawns("service/probe", 2))
        .await
        .map_err(|_| "the probe was not restarted")?;
    println!(
        "  service supervisor restarted {name} (spawns: {})",
        spawns.spawns("service/probe")
    );
    // A spawn is counted when it starts; the new probe takes the router's
    // registration in its own start, a moment later: until then a ping
    // is refused (nothing was delivered), so it is sent again.
    let started = std::time::Instant::now();
    let rtt = loop {
        match ping(fs[1].node.router(), alpha.facility(), STEP_TIMEOUT).await {
            Err(PingError::Route(RouteError::Refused {
                reason: Refusal::UnknownActor,
                ..
            })) if started.elapsed() < STEP_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => break other?,
        }
    };
    println!(
        "  bravo -> alpha after restart: {:.3} ms",
        rtt.as_secs_f64() * 1e3
    );
    let others: u64 = spawns
        .all()
        .iter()
        .filter(|(k, _)| *k != "service/probe")
        .map(|(k, n)| n - before.get(k).copied().unwrap_or(0))
        .sum();
    println!("  restarts elsewhere in alpha's tree: {others}");
    if others != 0 {
        return Err("a restart spread beyond the crashed actor".into());
    }
    Ok(())
}

fn command(f: &Facility, n: u64, op: Op) -> Command {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&n.to_le_bytes());
    key[8..].copy_from_slice(b"demo-key");
    Command {
        key: IdempotencyKey(key),
        issued_by: f.node.facility().clone(),
        at_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        hlc: bulwark_actors::hlc::Hlc::ZERO,
        op,
    }
}

async fn commit(fs: &[Facility], via: usize, n: u64, op: Op) -> DemoResult<ProposeOutcome> {
    let f = &fs[via];
    let what = format!("{op:?}");
    // NotLeader means nothing was proposed: a facility that has just
    // restarted its RaftPeer has not heard from the new leader yet. Ask
    // again, as a client would, within the step's time.
    let started = std::time::Instant::now();
    let outcome = loop {
        let outcome = f
            .propose(command(f, n, op.clone()), STEP_TIMEOUT)
            .await
            .ok_or("the RaftPeer did not answer")?;
        if !matches!(outcome, ProposeOutcome::NotLeader { .. }) || started.elapsed() > STEP_TIMEOUT
        {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    match &outcome {
        ProposeOutcome::Committed { index, outcome, .. } => {
            println!(
                "  via {}: {what}\n    -> committed at {index}: {outcome:?}",
                f.node.facility()
            )
        }
        other => return Err(format!("{what}: {other:?}").into()),
    }
    Ok(outcome)
}

async fn consensus(fs: &[Facility]) -> DemoResult<()> {
    println!("== consensus: raft-rs in each facility's RaftPeer, log in redb ==");
    let started = std::time::Instant::now();
    let (leader, term) = facility::wait_leader(fs, 0, STEP_TIMEOUT)
        .await
        .ok_or("no leader was elected")?;
    println!(
        "  leader: {} (term {term}), elected {:.0} ms after start-up",
        fs[leader].node.facility(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let follower = (leader + 1) % fs.len();
    let pid = |s: &str| s.parse::<PersonId>().map_err(|e| e.to_string());
    let bid = |s: &str| s.parse::<BlockId>().map_err(|e| e.to_string());
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    for (id, name) in [("ana", "Dr Ana"), ("ben", "Dr Ben")] {
        let person = Person {
            id: pid(id)?,
            name: name.into(),
            role: Role::Resident { pgy: 2 },
        };
        commit(fs, leader, next(), Op::AddPerson(person)).await?;
    }
    for (id, day) in [("icu-mon", 0), ("icu-tue", 1), ("clinic-mon", 0)] {
        let block = Block {
            id: bid(id)?,
            day,
            start_min: 7 * 60,
            duration_min: 12 * 60,
            pool: if id.starts_with("icu") {
                Pool::Icu
            } else {
                Pool::Clinic
            },
            required: 1,
        };
        commit(fs, leader, next(), Op::AddBlock(block)).await?;
    }
    println!("  (a follower forwards its proposals to the leader)");
    commit(
        fs,
        follower,
        next(),
        Op::Assign {
            person: pid("ana")?,
            block: bid("icu-mon")?,
        },
    )
    .await?;
    commit(
        fs,
        follower,
        next(),
        Op::Assign {
            person: pid("ben")?,
            block: bid("icu-tue")?,
        },
    )
    .await?;
    println!("  (the rules are checked at apply time, identically everywhere)");
    let clash = Op::Assign {
        person: pid("ana")?,
        block: bid("clinic-mon")?,
    };
    let out = commit(fs, leader, next(), clash).await?;
    if !matches!(
        out,
        ProposeOutcome::Committed {
            outcome: Outcome::Rejected(_),
            ..
        }
    ) {
        return Err("a double booking was not rejected".into());
    }

    println!("== kill the leader's RaftPeer: supervised restart and re-election ==");
    let old = &fs[leader].node;
    let name = old.ctx().actor_name(Zone::Consensus, RAFT);
    let cell =
        ractor::registry::where_is(name.clone()).ok_or("the leader's RaftPeer is not running")?;
    let t0 = std::time::Instant::now();
    println!("  killing {name}");
    cell.kill();
    let spawns = &old.ctx().spawns;
    tokio::time::timeout(STEP_TIMEOUT, spawns.wait_spawns("consensus/raft", 2))
        .await
        .map_err(|_| "the RaftPeer was not restarted")?;
    println!(
        "  consensus supervisor restarted it from redb after {:.1} ms (spawns: {})",
        t0.elapsed().as_secs_f64() * 1e3,
        spawns.spawns("consensus/raft")
    );
    let (new_leader, new_term) = facility::wait_leader(fs, term, STEP_TIMEOUT)
        .await
        .ok_or("no leader after the kill")?;
    println!(
        "  new leader: {} (term {new_term}), {:.0} ms after the kill",
        fs[new_leader].node.facility(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let via = (new_leader + 1) % fs.len();
    commit(
        fs,
        via,
        next(),
        Op::Assign {
            person: pid("ben")?,
            block: bid("clinic-mon")?,
        },
    )
    .await?;
    println!("== linearizable reads (read-index) on every facility ==");
    let mut views = Vec::new();
    for f in fs {
        let peer = f.raft().ok_or("no RaftPeer")?;
        let ready = peer
            .call(|reply| RaftMsg::Read { reply }, Some(STEP_TIMEOUT))
            .await?
            .success_or("read timed out")?;
        if !matches!(ready, ReadOutcome::Ready { .. }) {
            return Err(format!("{}: read {ready:?}", f.node.facility()).into());
        }
        let (view, rejected) = inspect(&peer, |v: &ScheduleView| {
            let s: ScheduleState = v.to_state()?;
            let view: Vec<String> = s
                .assignments()
                .map(|(b, p, _)| format!("{b}={p}"))
                .collect();
            Ok::<_, bulwark_storage::StorageError>((view, s.rejected_total()))
        })
        .await
        .ok_or("the RaftPeer stopped")??;
        println!(
            "  {}: {} (rejections recorded: {rejected})",
            f.node.facility(),
            view.join(", ")
        );
        views.push(view);
    }
    if views.windows(2).any(|w| w[0] != w[1]) {
        return Err("facilities disagree on the schedule".into());
    }
    finality(fs).await
}

/// Waits until every validator has made final every entry its replica
/// admitted, and shows the ledger heads (one chain, everywhere).
async fn finality(fs: &[Facility]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    println!("== BFT: signed votes, quorum certificates, one hash-chained ledger ==");
    let target = inspect(&fs[0].raft().ok_or("no RaftPeer")?, |s: &ScheduleView| {
        s.chain().height()
    })
    .await
    .ok_or("the RaftPeer stopped")?;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    let mut heads = Vec::new();
    loop {
        heads.clear();
        for f in fs {
            heads.push(f.bft_status().await.ok_or("no validator")?);
        }
        if heads.iter().all(|s| s.final_height >= target) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("entries not final in time: {heads:?}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for s in &heads {
        let head: String = s.final_hash[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        println!(
            "  {}: {} final entries, head {head}…, quorum {} of {}",
            s.facility, s.final_height, s.quorum, s.signers
        );
    }
    if heads.windows(2).any(|w| w[0].final_hash != w[1].final_hash) {
        return Err("ledgers disagree".into());
    }
    Ok(())
}
