//! The liveness phase and the end checks of a run.
//!
//! Every fault healed and every facility up, the cluster must replay every
//! provisional change, commit a new write, let every facility apply it and
//! make every chained ledger entry final, each within the plan's
//! convergence time (polled every 100 ms of virtual time). Then: every
//! acknowledged write is on every facility, every facility holds the same
//! schedule, and every honest ledger is the same chain, verified from
//! genesis.

use std::time::Duration;

use axum::http::StatusCode;
use bulwark_actors::bft::{self, Behaviour, LedgerStore};
use bulwark_actors::ledger::{self, FinalEntry};
use bulwark_actors::raft::{inspect, raft_peer};
use bulwark_actors::replica::ScheduleView;
use bulwark_actors::schedule::{Outcome, ScheduleState};
use bulwark_transport::simnet::{LinkParams, UniformModel};
use bulwark_transport::FacilityId;
use serde_json::Value;
use tokio::time::Instant;

use super::{BoxFut, Run, SimFailure};
use crate::http::api::command_key;
use crate::sim::check::{check_blame, check_healer, check_liar_named, Invariant, Violation};
use crate::sim::client;
use crate::sim::cluster::STATUS_TIMEOUT;
use crate::sim::workload::{Ack, Write};
use bulwark_actors::cap::heal::{HealerMsg, HEALER};
use bulwark_runtime::Zone;

/// Virtual ms between two polls of the liveness phase.
const POLL_MS: u64 = 100;

/// New heights the end writes, at most, for a lying validator to be named.
pub const LIAR_HEIGHTS: usize = 6;

impl Run<'_> {
    /// Heals every fault, then waits for the cluster to converge and
    /// checks the end state.
    pub(super) async fn liveness(&mut self) -> Result<(), SimFailure> {
        self.heal_all().await?;
        while let Some(done) = self.clients.join_next().await {
            let done = done.map_err(|e| self.stuck(format!("a client task failed: {e}")))?;
            self.on_done(done)?;
        }
        // A facility removed from the validators replays its provisional
        // changes once it is one again (docs/OPERATIONS.md).
        for w in self.work.validators_back() {
            self.write_until_decided(w).await?;
        }
        self.wait_provisional().await?;
        let w = self.work.next_final_write();
        let index = self.write_until_committed(w).await?;
        self.wait_applied(index).await?;
        self.wait_final().await?;
        self.check_step().await?;
        self.check_end().await?;
        self.check_healers().await?;
        self.check_blame().await?;
        self.check_liar().await
    }

    /// Every healer's last-write-wins decisions pick the later stamp.
    async fn check_healers(&self) -> Result<(), SimFailure> {
        for i in 0..self.c.n() {
            let f = &self.c.ids()[i];
            let node = self.c.harness().node(i);
            let Some(healer) = node.ctx().find::<HealerMsg>(Zone::Consensus, HEALER) else {
                continue;
            };
            let reports = healer.call(HealerMsg::Reports, Some(STATUS_TIMEOUT)).await;
            let Ok(ractor::rpc::CallResult::Success(reports)) = reports else {
                return Err(self.stuck(format!("{f}: the healer did not answer")));
            };
            check_healer(f, &reports).map_err(|v| self.fail(v))?;
        }
        Ok(())
    }

    /// No honest validator holds proof of lying against an honest
    /// facility.
    async fn check_blame(&self) -> Result<(), SimFailure> {
        let ids = self.c.ids();
        let honest: Vec<FacilityId> = self.honest.iter().map(|&i| ids[i].clone()).collect();
        for &i in &self.honest {
            let f = &ids[i];
            let v = bft::validator(self.c.harness().node(i));
            let v = v.ok_or_else(|| self.stuck(format!("{f}: no validator")))?;
            let mut ev = bft::evidence_of(&v)
                .await
                .ok_or_else(|| self.stuck(format!("{f}: the validator did not answer")))?;
            ev.extend(self.planted_evidence.iter().cloned());
            check_blame(f, &ev, &honest).map_err(|v| self.fail(v))?;
        }
        Ok(())
    }

    /// A validator that equivocates or forges votes is named, with a
    /// proof, by an honest facility, once its lies reach them. Naming
    /// needs an honest validator to see both votes of a pair, and relays
    /// are not retried: so the check waits until the liar's validator has
    /// caught up with the honest final height (one that cannot within the
    /// convergence time lies to nobody and is not judged), makes every link
    /// lossless, and writes up to [`LIAR_HEIGHTS`] new heights, each one
    /// to lie at, until the liar is named.
    async fn check_liar(&mut self) -> Result<(), SimFailure> {
        let Some((l, lie)) = self.liar else {
            return Ok(());
        };
        if !self.plan.judge_liar || !matches!(lie, Behaviour::Equivocate | Behaviour::ForgeVotes) {
            return Ok(());
        }
        let liar = self.c.ids()[l].clone();
        if !self.liar_caught_up(l).await {
            return Ok(());
        }
        let net = self.c.harness().net().clone();
        net.set_model(Box::new(UniformModel));
        net.set_default_link(LinkParams::default());
        let mut last = None;
        for written in 0..=LIAR_HEIGHTS {
            let mut all = Vec::new();
            for &i in &self.honest {
                let f = self.c.ids()[i].clone();
                let v = bft::validator(self.c.harness().node(i));
                let v = v.ok_or_else(|| self.stuck(format!("{f}: no validator")))?;
                let ev = tokio::time::timeout(STATUS_TIMEOUT, bft::evidence_of(&v)).await;
                let ev = ev.ok().flatten();
                let ev =
                    ev.ok_or_else(|| self.stuck(format!("{f}: the validator did not answer")))?;
                all.extend(ev);
            }
            match check_liar_named(&liar, lie, &all, self.c.keys()) {
                Ok(()) => return Ok(()),
                Err(v) => last = Some(v),
            }
            if written == LIAR_HEIGHTS {
                break;
            }
            let w = self.work.next_final_write();
            let index = self.write_until_committed(w).await?;
            self.wait_applied(index).await?;
            self.wait_final().await?;
            self.c.step(Duration::from_secs(1)).await;
        }
        Err(self.fail(last.expect("checked at least once")))
    }

    /// Whether the liar's validator reaches the honest final height within
    /// the convergence time.
    async fn liar_caught_up(&mut self, l: usize) -> bool {
        let target = self.ledger.height();
        let deadline = Instant::now() + Duration::from_millis(self.plan.converge_ms);
        while Instant::now() < deadline {
            let v = bft::validator(self.c.harness().node(l));
            if let Some(v) = v {
                let status = tokio::time::timeout(STATUS_TIMEOUT, bft::status(&v)).await;
                if status
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.final_height >= target)
                {
                    return true;
                }
            }
            self.c.step(Duration::from_millis(100)).await;
        }
        false
    }

    /// Polls `f` every 100 ms of virtual time until it holds, within the
    /// plan's convergence time.
    async fn poll_until<F>(&mut self, what: &str, mut f: F) -> Result<(), SimFailure>
    where
        F: for<'a> FnMut(&'a mut Self) -> BoxFut<'a, Result<(), String>>,
    {
        let poll = Duration::from_millis(POLL_MS);
        let mut last = String::new();
        for _ in 0..self.plan.converge_ms / POLL_MS {
            match f(self).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            self.c.step(poll).await;
        }
        Err(self.stuck(format!("{what}: {last}")))
    }

    /// Every provisional change on every facility has been replayed.
    async fn wait_provisional(&mut self) -> Result<(), SimFailure> {
        self.poll_until("provisional changes not replayed", |r| {
            Box::pin(async move {
                for i in 0..r.c.n() {
                    let (st, v) = client::json(
                        r.c.call(
                            i,
                            client::get("/v1/schedule?consistency=stale", r.c.token()),
                        )
                        .await,
                    )
                    .await;
                    let pending = v["staleness"]["provisional_pending"].as_u64();
                    if st != StatusCode::OK || pending != Some(0) {
                        let why = if st == StatusCode::OK { Value::Null } else { v };
                        return Err(format!("{}: {st} pending {pending:?} {why}", r.c.ids()[i]));
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Every facility applied up to `index`.
    async fn wait_applied(&mut self, index: u64) -> Result<(), SimFailure> {
        self.poll_until("facilities did not catch up", |r| {
            Box::pin(async move {
                for i in 0..r.c.n() {
                    let applied = r.c.raft_status(i).await.map(|s| s.applied);
                    if applied.is_none_or(|a| a < index) {
                        return Err(format!("{} applied {applied:?} of {index}", r.c.ids()[i]));
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Every honest validator made final every entry the schedule chained.
    async fn wait_final(&mut self) -> Result<(), SimFailure> {
        let mut target = 0;
        for i in 0..self.c.n() {
            let Some(peer) = raft_peer(self.c.harness().node(i)) else {
                return Err(self.stuck(format!("{}: no RaftPeer", self.c.ids()[i])));
            };
            let h = inspect(&peer, |s: &ScheduleView| s.chain().height()).await;
            target = target.max(h.unwrap_or(0));
        }
        self.poll_until("ledger entries not final", move |r| {
            Box::pin(async move {
                for &i in &r.honest {
                    let v = bft::validator(r.c.harness().node(i));
                    let h = match v {
                        Some(v) => bft::status(&v).await.map(|s| s.final_height),
                        None => None,
                    };
                    if h.is_none_or(|h| h < target) {
                        return Err(format!("{} final {h:?} of {target}", r.c.ids()[i]));
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Every acknowledged write on every facility; the same schedule
    /// everywhere; every honest ledger the same verified chain.
    async fn check_end(&mut self) -> Result<(), SimFailure> {
        let acked: Vec<(Write, Ack)> = self.work.acked().to_vec();
        // Work may still be applied (a reconciliation the healer proposes):
        // compare the schedules once every facility applied the same log.
        let mut last = String::new();
        for _ in 0..self.plan.converge_ms / POLL_MS {
            match self.final_reads(&acked).await {
                Ok(seen) if seen.iter().all(|s| s.1 == seen[0].1) => {
                    // What that log chained is final everywhere before the
                    // ledgers are compared (entries applied since the last
                    // wait, a reconciliation's, may still be certifying).
                    self.wait_final().await?;
                    return self.judge_end(&seen);
                }
                Ok(seen) => {
                    let at: Vec<u64> = seen.iter().map(|s| s.1).collect();
                    last = format!("applied up to {at:?}");
                }
                Err(e) => last = e,
            }
            self.c.step(Duration::from_millis(POLL_MS)).await;
        }
        Err(self.stuck(format!("the facilities did not settle on one log: {last}")))
    }

    /// Every acknowledged write on every facility; one schedule; the
    /// honest ledgers.
    fn judge_end(&self, seen: &[(Vec<String>, u64, [u8; 32])]) -> Result<(), SimFailure> {
        for (i, (lost, _, _)) in seen.iter().enumerate() {
            if let Some(first) = lost.first() {
                return Err(self.fail(Violation::new(
                    Invariant::AcknowledgedWrites,
                    format!(
                        "{} lacks {} acknowledged writes, first {first}",
                        self.c.ids()[i],
                        lost.len()
                    ),
                )));
            }
        }
        if seen.windows(2).any(|w| w[0].2 != w[1].2) {
            return Err(self.fail(Violation::new(
                Invariant::ScheduleRules,
                format!(
                    "the facilities hold different schedules at index {}",
                    seen[0].1
                ),
            )));
        }
        self.check_chains()
    }

    /// Each facility's acknowledged writes it lacks, its last applied
    /// command index and its schedule's digest.
    async fn final_reads(
        &self,
        acked: &[(Write, Ack)],
    ) -> Result<Vec<(Vec<String>, u64, [u8; 32])>, String> {
        let mut out = Vec::new();
        for i in 0..self.c.n() {
            let f = &self.c.ids()[i];
            let peer = raft_peer(self.c.harness().node(i)).ok_or(format!("{f}: no RaftPeer"))?;
            let acked = acked.to_vec();
            let read = inspect(&peer, move |v: &ScheduleView| {
                let s = v.to_state().map_err(|e| e.to_string())?;
                let s = &s;
                let lost: Vec<String> = acked
                    .iter()
                    .filter(|(w, a)| !present(s, w, a))
                    .map(|(w, a)| format!("{} {} {a:?}", w.key, w.path))
                    .collect();
                Ok::<_, String>((lost, s.last_index(), s.digest().unwrap_or_default()))
            });
            out.push(
                read.await
                    .ok_or(format!("{f}: no final read"))?
                    .map_err(|e| format!("{f}: final read: {e}"))?,
            );
        }
        Ok(out)
    }

    /// Every honest ledger is the same chain and verifies from genesis.
    fn check_chains(&self) -> Result<(), SimFailure> {
        let mut first: Option<Vec<(u64, Vec<u8>)>> = None;
        for &i in &self.honest {
            let f = &self.c.ids()[i];
            let rows = self.finals(i, 1)?;
            let chain = rows
                .into_iter()
                .enumerate()
                .map(|(k, fin)| (k as u64 + 1, Ok::<FinalEntry, String>(fin)));
            let genesis = bulwark_actors::epoch::ValidatorSet::genesis(self.c.keys().clone());
            ledger::verify_chain(chain, &genesis).map_err(|e| {
                self.fail(Violation::new(Invariant::FinalLedger, format!("{f}: {e}")))
            })?;
            let raw = LedgerStore::new(self.c.harness().node(i).ctx().store.clone())
                .raw_finals()
                .map_err(|e| self.stuck(format!("ledger read: {e}")))?;
            match &first {
                Some(r) if *r != raw => {
                    return Err(self.fail(Violation::new(
                        Invariant::FinalLedger,
                        format!(
                            "honest ledgers differ at the end ({f}: {} rows, the first honest {}; first difference at height {:?})",
                            raw.len(),
                            r.len(),
                            r.iter().zip(&raw).position(|(a, b)| a != b).map(|k| k + 1)
                        ),
                    )))
                }
                Some(_) => {}
                None => first = Some(raw),
            }
        }
        Ok(())
    }
}

/// Whether acknowledged write `w` is in schedule `s`: a commit at its
/// index (a retry's answer names its own, later index), a provisional
/// change replayed through consensus.
fn present(s: &ScheduleState, w: &Write, ack: &Ack) -> bool {
    let got = s.outcome_of(&command_key(&w.key));
    match (ack, got) {
        (Ack::Committed { index, duplicate }, Some((at, Outcome::Applied(_)))) => {
            *duplicate || at == *index
        }
        (Ack::Committed { .. }, _) => false,
        (Ack::Provisional, got) => got.is_some(),
    }
}
