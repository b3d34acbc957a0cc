//! Violations planted in a run (test-only), to show that each checker
//! catches what it checks, in a run, through the same path a real
//! violation would take.

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
        let ids = self.c.ids().to_vec();
        let missing = |what: &str| self.stuck(format!("nothing to plant {what} on"));
        match p {
            Plant::SecondLeader => {
                let l = self.c.leader().await.ok_or_else(|| missing("a leader"))?;
                let mut s = self
                    .c
                    .raft_status(l)
                    .await
                    .ok_or_else(|| missing("a leader"))?;
                s.facility = ids[(l + 1) % ids.len()].clone();
                self.c
                    .observer()
                    .lock()
                    .expect("observer lock")
                    .on_status(&s);
            }
            Plant::ChangedEntry => {
                let e = AppliedEntry {
                    index: 1,
                    term: u64::MAX,
                    hash: [7; 32],
                    payload: None,
                    verdict: ledger::Verdict::Skipped,
                    leader: None,
                };
                self.c
                    .observer()
                    .lock()
                    .expect("observer lock")
                    .on_applied(&ids[0], &e);
            }
            Plant::WeakCertificate => {
                let mut rows = self.finals(self.honest[0], 1)?;
                rows.truncate(1);
                let fin = rows.first_mut().ok_or_else(|| missing("a final entry"))?;
                fin.cert.votes.truncate(1);
                let ghost: FacilityId = "ghost".parse().expect("a valid id");
                self.ledger
                    .observe(&ghost, &rows)
                    .map_err(|v| self.fail(v))?;
            }
            Plant::DivergentSchedule => {
                let (last, mut digest) = self
                    .schedules
                    .latest()
                    .ok_or_else(|| missing("a schedule"))?;
                digest[0] ^= 1;
                self.schedules
                    .observe(&ids[0], last, digest, Ok(()))
                    .map_err(|v| self.fail(v))?;
            }
            Plant::LentReserve => {
                // A real status, with one more unit lent by a pool that had
                // nothing above its reserve to lend, to another.
                let i = (0..ids.len()).find(|&i| self.c.is_up(i));
                let i = i.ok_or_else(|| missing("a running facility"))?;
                let mut pools = self.pools(i).await.ok_or_else(|| missing("pools"))?;
                let open: Vec<usize> = (0..pools.len())
                    .filter(|&k| pools[k].name != FLEX && pools[k].reserved < pools[k].capacity)
                    .collect();
                let [lender, borrower, ..] = open[..] else {
                    return Err(missing("two pools that may lend"));
                };
                let p = &mut pools[lender];
                let extra = p.capacity - p.reserved - p.lent + 1;
                p.lent += extra;
                pools[borrower].borrowed += extra;
                pools[borrower].allocated += extra;
                check_pools(&ids[i], &pools).map_err(|v| self.fail(v))?;
            }
            Plant::LostWrite => {
                let w = Write {
                    key: format!("s{}-planted", self.seed),
                    path: "/v1/people",
                    body: serde_json::json!({"id": "planted"}),
                };
                self.work.plant_ack(
                    w,
                    Ack::Committed {
                        index: 1,
                        duplicate: false,
                    },
                );
            }
            Plant::StaleRead => {
                let floor = self.reads.floor();
                self.reads
                    .check(ids[0].as_str(), floor, floor.saturating_sub(1))
                    .map_err(|v| self.fail(v))?;
            }
        }
        Ok(())
    }
}
