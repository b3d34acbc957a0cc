//! Violations planted in a run (test-only), to show that each checker
//! catches what it checks, in a run, through the same path a real
//! violation would take: each plant alters something real (a status, an
//! applied entry, a final entry, a schedule's digest, a pool status, an
//! acknowledgement, a read) and hands it to the run's own checker.

use bulwark_actors::bft::evidence::{Evidence, Kind};
use bulwark_actors::flow::bulkhead::FLEX;
use bulwark_actors::ledger;
use bulwark_actors::raft::AppliedEntry;
use bulwark_transport::FacilityId;

use super::{Plant, Run, SimFailure};
use crate::sim::check::check_pools;
use crate::sim::workload::{Ack, Write};

impl Run<'_> {
    /// Plants `p` where its checker will see it (test-only).
    pub(super) async fn plant(&mut self, p: Plant) -> Result<(), SimFailure> {
        match p {
            Plant::SecondLeader => self.plant_second_leader().await,
            Plant::ChangedEntry => {
                let e = AppliedEntry {
                    index: 1,
                    term: u64::MAX,
                    hash: [7; 32],
                    shown: bulwark_actors::replica::Shown {
                        payload: None,
                        verdict: ledger::Verdict::Skipped,
                        epoch: None,
                    },
                    leader: None,
                };
                let obs = self.c.observer();
                obs.lock()
                    .expect("observer lock")
                    .on_applied(&self.c.ids()[0], &e);
                Ok(())
            }
            Plant::WeakCertificate => self.plant_weak_certificate(),
            Plant::DivergentSchedule => {
                let (last, mut digest) = self
                    .schedules
                    .latest()
                    .ok_or_else(|| self.missing("a schedule"))?;
                digest[0] ^= 1;
                let f = self.c.ids()[0].clone();
                self.schedules
                    .observe(&f, last, digest, Ok(()))
                    .map_err(|v| self.fail(v))
            }
            Plant::LentReserve => self.plant_lent_reserve().await,
            Plant::LostWrite => {
                let w = Write::new(
                    format!("s{}-planted", self.seed),
                    "/v1/people",
                    serde_json::json!({"id": "planted"}),
                );
                let ack = Ack::Committed {
                    index: 1,
                    duplicate: false,
                };
                self.work.plant_ack(w, ack);
                Ok(())
            }
            Plant::HonestBlamed => {
                // A real vote of an honest facility, as evidence of a vote
                // for an entry the rules refused.
                let vote = self.a_vote()?;
                let offender = self.c.ids()[self.honest[0]].clone();
                self.planted_evidence.push(Evidence {
                    offender,
                    at_unix_ms: 0,
                    kind: Kind::VoteForInvalid {
                        reason: "DOUBLE_ASSIGN".into(),
                        vote,
                    },
                });
                Ok(())
            }
            Plant::StaleRead => {
                let floor = self.reads.floor();
                let f = self.c.ids()[0].to_string();
                self.reads
                    .check(&f, floor, floor.saturating_sub(1))
                    .map_err(|v| self.fail(v))
            }
        }
    }

    /// A vote from the certificate of the first final entry.
    fn a_vote(&self) -> Result<ledger::Vote, SimFailure> {
        let rows = self.finals(self.honest[0], 1)?;
        let fin = rows.first().ok_or_else(|| self.missing("a final entry"))?;
        let vote = fin.cert.votes.first().cloned();
        vote.ok_or_else(|| self.missing("a vote"))
    }

    fn missing(&self, what: &str) -> SimFailure {
        self.stuck(format!("nothing to plant {what} on"))
    }

    /// The leader's own status, reported as another facility's.
    async fn plant_second_leader(&mut self) -> Result<(), SimFailure> {
        let ids = self.c.ids().to_vec();
        let l = self
            .c
            .leader()
            .await
            .ok_or_else(|| self.missing("a leader"))?;
        let status = self.c.raft_status(l).await;
        let mut s = status.ok_or_else(|| self.missing("a leader"))?;
        s.facility = ids[(l + 1) % ids.len()].clone();
        let obs = self.c.observer();
        obs.lock().expect("observer lock").on_status(&s);
        Ok(())
    }

    /// The first final entry with all but one vote of its certificate
    /// dropped, as held by a facility the checker has not read yet.
    fn plant_weak_certificate(&mut self) -> Result<(), SimFailure> {
        let mut rows = self.finals(self.honest[0], 1)?;
        rows.truncate(1);
        let fin = rows
            .first_mut()
            .ok_or_else(|| self.missing("a final entry"))?;
        fin.cert.votes.truncate(1);
        let ghost: FacilityId = "ghost".parse().expect("a valid id");
        self.ledger.observe(&ghost, &rows).map_err(|v| self.fail(v))
    }

    /// A real pool status, with one more unit lent by a pool that had
    /// nothing above its reserve left to lend, to another pool.
    async fn plant_lent_reserve(&mut self) -> Result<(), SimFailure> {
        let up = (0..self.c.n()).find(|&i| self.c.is_up(i));
        let i = up.ok_or_else(|| self.missing("a running facility"))?;
        let pools = self.pools(i).await;
        let mut pools = pools.ok_or_else(|| self.missing("pools"))?;
        let open: Vec<usize> = (0..pools.len())
            .filter(|&k| pools[k].name != FLEX && pools[k].reserved < pools[k].capacity)
            .collect();
        let [lender, borrower, ..] = open[..] else {
            return Err(self.missing("two pools that may lend"));
        };
        let p = &mut pools[lender];
        let extra = p.capacity - p.reserved - p.lent + 1;
        p.lent += extra;
        pools[borrower].borrowed += extra;
        pools[borrower].allocated += extra;
        check_pools(&self.c.ids()[i], &pools).map_err(|v| self.fail(v))
    }
}
