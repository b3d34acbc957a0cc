//! N-1 / N-2 coverage on the real schedule: if these people were lost,
//! could the others still staff every block they leave?
//!
//! [`coverage`] works on a clone of the [`ScheduleState`]; the input is never
//! changed. On the clone, through the real rules ([`ScheduleState::apply`]):
//! 1. **Take them out.** Each lost person gets a real [`Op::Leave`] over the
//!    days their blocks touch (one command per run of consecutive days, cut
//!    at [`LEAVE_DAYS_MAX`]), which vacates those blocks as leave does.
//! 2. **Refill.** Each vacated block, earliest first, is refilled up to its
//!    `required` with [`Op::EmergencyCoverage`] (which may change finally
//!    approved days, as in a real emergency). Candidates are tried in a
//!    deterministic order: fewest duty minutes first, then by id; the rules
//!    decide (double booking, 80 hours in 7 days, a day off in 7, shift
//!    length, leave). A candidate refused for a block is not tried again for
//!    it.
//! 3. **Judge.** A vacated block still below `required` is a [`Gap`]: the
//!    block, what it needs, how many it had before the loss and after the
//!    refill, and who was tried with the rule that refused each.
//!
//! Only blocks the loss vacated are judged: a block that was short before
//! and that the lost people did not work is not theirs to answer for. A
//! vacated block that was already short is refilled to `required` too, and
//! is a gap if that fails.
//!
//! Who may refill ([`Refill`]): by default someone of the same kind as a
//! person the block lost (faculty for faculty, a resident of any year for
//! a resident), since faculty coverage is the question; [`Refill::Anyone`]
//! lets anyone try.
//!
//! [`n_minus_1`] checks each person alone; [`n_minus_2`] each pair, at most
//! [`PAIRS_MAX`] pairs (in order of the sorted ids; the rest are counted as
//! skipped), since every pair is a clone and a refill. [`faculty`] lists
//! the usual subjects. A gap records at most [`TRIED_MAX`] attempts (all
//! are counted).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hlc::Hlc;
use crate::schedule::{
    Applied, BlockId, Command, Effect, IdempotencyKey, Op, Outcome, PersonId, Pool, Rejection,
    Role, Rule, ScheduleState, LEAVE_DAYS_MAX,
};

/// People lost at once, at most.
pub const LOST_MAX: usize = 8;
/// Pairs [`n_minus_2`] checks at most.
pub const PAIRS_MAX: usize = 1_000;
/// Attempts one gap records at most.
pub const TRIED_MAX: usize = 32;

/// Who may refill a vacated block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refill {
    /// Someone of the same kind (faculty or resident) as a person the block
    /// lost.
    #[default]
    SameRole,
    /// Anyone not lost.
    Anyone,
}

/// Why a coverage check could not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoverageError {
    /// A lost person is not in the schedule.
    #[error("no person {0} in the schedule")]
    UnknownPerson(PersonId),
    /// More than [`LOST_MAX`] people lost at once.
    #[error("{0} people lost at once; at most {LOST_MAX}")]
    TooManyLost(usize),
    /// The schedule refused to take a lost person out.
    #[error("leave for {person} refused: {rejection}")]
    LeaveRefused {
        /// The person.
        person: PersonId,
        /// Why.
        rejection: Rejection,
    },
}

/// One candidate refused for a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Who was tried.
    pub person: PersonId,
    /// The rule that refused them.
    pub refused: Rejection,
}

/// A slot filled by the refill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cover {
    /// The block.
    pub block: BlockId,
    /// Who covers it now.
    pub person: PersonId,
}

/// A vacated block the refill could not staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The block.
    pub block: BlockId,
    /// Its day.
    pub day: u32,
    /// Its pool.
    pub pool: Pool,
    /// People it needs.
    pub required: u8,
    /// People on it before the loss.
    pub staffed_before: usize,
    /// People on it after the refill.
    pub staffed_after: usize,
    /// Candidates refused, in the order tried (at most [`TRIED_MAX`]).
    pub tried: Vec<Attempt>,
    /// Candidates refused in all.
    pub tried_total: usize,
}

/// What losing some people does to the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoverageReport {
    /// Who was lost, sorted.
    pub lost: Vec<PersonId>,
    /// The blocks they left, in refill order (earliest first).
    pub vacated: Vec<BlockId>,
    /// The slots the refill filled.
    pub covers: Vec<Cover>,
    /// The blocks left short.
    pub gaps: Vec<Gap>,
}

impl CoverageReport {
    /// True when every vacated block is staffed again.
    pub fn covered(&self) -> bool {
        self.gaps.is_empty()
    }
}

impl fmt::Display for CoverageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lost: Vec<&str> = self.lost.iter().map(PersonId::as_str).collect();
        write!(
            f,
            "lost {}: {} vacated, {} refilled",
            lost.join("+"),
            self.vacated.len(),
            self.covers.len()
        )?;
        if self.covered() {
            return f.write_str(", covered");
        }
        for g in &self.gaps {
            let tried: Vec<String> = g
                .tried
                .iter()
                .map(|a| format!("{} {}", a.person, a.refused.rule.code()))
                .collect();
            write!(
                f,
                "; GAP {} (day {}, {:?}) {}/{} (had {}), tried [{}]",
                g.block,
                g.day,
                g.pool,
                g.staffed_after,
                g.required,
                g.staffed_before,
                tried.join(", ")
            )?;
            if g.tried_total > g.tried.len() {
                write!(f, " +{} more", g.tried_total - g.tried.len())?;
            }
        }
        Ok(())
    }
}

/// The pairs [`n_minus_2`] checked, and how many it left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairsReport {
    /// Each pair checked, with its report.
    pub results: Vec<((PersonId, PersonId), CoverageReport)>,
    /// Pairs there were.
    pub pairs_total: usize,
    /// Pairs left out beyond [`PAIRS_MAX`].
    pub skipped: usize,
}

impl PairsReport {
    /// The pairs whose loss leaves a gap.
    pub fn failing(&self) -> impl Iterator<Item = &((PersonId, PersonId), CoverageReport)> {
        self.results.iter().filter(|(_, r)| !r.covered())
    }
}

/// Every faculty member, by id.
pub fn faculty(state: &ScheduleState) -> Vec<PersonId> {
    state
        .people()
        .filter(|p| p.role == Role::Faculty)
        .map(|p| p.id.clone())
        .collect()
}

/// What losing `lost` does, refilled by [`Refill::SameRole`].
pub fn coverage(state: &ScheduleState, lost: &[PersonId]) -> Result<CoverageReport, CoverageError> {
    coverage_with(state, lost, Refill::SameRole)
}

/// What losing `lost` does, refilled by `refill`. See the module docs.
pub fn coverage_with(
    state: &ScheduleState,
    lost: &[PersonId],
    refill: Refill,
) -> Result<CoverageReport, CoverageError> {
    let lost: BTreeSet<PersonId> = lost.iter().cloned().collect();
    if lost.len() > LOST_MAX {
        return Err(CoverageError::TooManyLost(lost.len()));
    }
    let roles: BTreeMap<&PersonId, Role> = state.people().map(|p| (&p.id, p.role)).collect();
    if let Some(p) = lost.iter().find(|p| !roles.contains_key(p)) {
        return Err(CoverageError::UnknownPerson(p.clone()));
    }
    let mut sim = Sim::new(state);
    // Which kinds of people each vacated block lost.
    let mut vacated: BTreeMap<BlockId, BTreeSet<Kind>> = BTreeMap::new();
    for p in &lost {
        for block in sim.take_out(p)? {
            vacated.entry(block).or_default().insert(kind(roles[p]));
        }
    }
    let mut order: Vec<(u64, BlockId)> = vacated
        .keys()
        .filter_map(|b| Some((state.block_of(b)?.interval().start, b.clone())))
        .collect();
    order.sort();
    let mut report = CoverageReport {
        lost: lost.iter().cloned().collect(),
        vacated: order.iter().map(|(_, b)| b.clone()).collect(),
        covers: Vec::new(),
        gaps: Vec::new(),
    };
    for (_, block) in order {
        let allowed = match refill {
            Refill::SameRole => Some(&vacated[&block]),
            Refill::Anyone => None,
        };
        let candidates: Vec<&PersonId> = roles
            .iter()
            .filter(|(p, r)| !lost.contains(**p) && allowed.is_none_or(|a| a.contains(&kind(**r))))
            .map(|(p, _)| *p)
            .collect();
        let before = state.assignees(&block).len();
        if let Some(gap) = sim.refill(&block, &candidates, before, &mut report.covers) {
            report.gaps.push(gap);
        }
    }
    Ok(report)
}

/// Each person in `who` lost alone, in the order given (repeats once).
pub fn n_minus_1(
    state: &ScheduleState,
    who: &[PersonId],
) -> Result<Vec<(PersonId, CoverageReport)>, CoverageError> {
    let mut seen = BTreeSet::new();
    who.iter()
        .filter(|p| seen.insert(*p))
        .map(|p| Ok((p.clone(), coverage(state, std::slice::from_ref(p))?)))
        .collect()
}

/// Each pair of people in `who` lost together: the pairs of the sorted,
/// distinct ids in order, at most [`PAIRS_MAX`].
pub fn n_minus_2(state: &ScheduleState, who: &[PersonId]) -> Result<PairsReport, CoverageError> {
    let people: Vec<&PersonId> = who.iter().collect::<BTreeSet<_>>().into_iter().collect();
    let n = people.len();
    let pairs_total = n * n.saturating_sub(1) / 2;
    let mut results = Vec::new();
    'pairs: for (i, a) in people.iter().enumerate() {
        for b in &people[i + 1..] {
            if results.len() == PAIRS_MAX {
                break 'pairs;
            }
            let pair = [(*a).clone(), (*b).clone()];
            results.push((((*a).clone(), (*b).clone()), coverage(state, &pair)?));
        }
    }
    Ok(PairsReport {
        skipped: pairs_total - results.len(),
        pairs_total,
        results,
    })
}

/// Faculty or resident, whatever the year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Faculty,
    Resident,
}

fn kind(role: Role) -> Kind {
    match role {
        Role::Faculty => Kind::Faculty,
        Role::Resident { .. } => Kind::Resident,
    }
}

/// The clone and the commands applied to it.
struct Sim {
    state: ScheduleState,
    index: u64,
}

impl Sim {
    fn new(state: &ScheduleState) -> Sim {
        Sim {
            index: state.last_index(),
            state: state.clone(),
        }
    }

    /// Applies `op` as the next committed command.
    fn apply(&mut self, op: Op) -> Result<Effect, Rejection> {
        self.index += 1;
        let issued_by = "chaos".parse().expect("a valid facility id");
        let cmd = Command {
            key: coverage_key(self.index),
            issued_by,
            at_unix_ms: 0,
            hlc: Hlc::ZERO,
            op,
        };
        match self.state.apply(self.index, &cmd) {
            Applied::Fresh(Outcome::Applied(effect)) => Ok(effect),
            Applied::Fresh(Outcome::Rejected(r)) => Err(r),
            Applied::Duplicate { first_index, .. } => Err(Rejection {
                rule: Rule::KeyReused,
                detail: format!("coverage key already applied at {first_index}"),
            }),
        }
    }

    /// Puts `person` on leave over every day they work; the blocks vacated.
    fn take_out(&mut self, person: &PersonId) -> Result<Vec<BlockId>, CoverageError> {
        let days: BTreeSet<u32> = self
            .state
            .duty_of(person)
            .iter()
            .filter_map(|b| self.state.block_of(b))
            .flat_map(|b| b.interval().days())
            .collect();
        let mut vacated = Vec::new();
        for (from_day, to_day) in runs(&days) {
            let op = Op::Leave {
                person: person.clone(),
                from_day,
                to_day,
            };
            match self.apply(op) {
                Ok(Effect::LeaveGranted { vacated: v }) => vacated.extend(v),
                Ok(other) => unreachable!("leave answered {other:?}"),
                Err(rejection) => {
                    return Err(CoverageError::LeaveRefused {
                        person: person.clone(),
                        rejection,
                    })
                }
            }
        }
        Ok(vacated)
    }

    /// Fills `block` up to its `required` from `candidates`, fewest duty
    /// minutes first; a gap if it stays short.
    fn refill(
        &mut self,
        block: &BlockId,
        candidates: &[&PersonId],
        before: usize,
        covers: &mut Vec<Cover>,
    ) -> Option<Gap> {
        let b = self.state.block_of(block)?.clone();
        let required = usize::from(b.required);
        let mut refused: Vec<Attempt> = Vec::new();
        // Those already on the block are not candidates for it.
        let on = self.state.assignees(block);
        let mut out: BTreeSet<&PersonId> = candidates
            .iter()
            .copied()
            .filter(|p| on.contains(p))
            .collect();
        while self.state.assignees(block).len() < required {
            let mut order: Vec<(u64, &PersonId)> = candidates
                .iter()
                .filter(|p| !out.contains(*p))
                .map(|p| (self.duty_min(p), *p))
                .collect();
            order.sort();
            let mut filled = false;
            for (_, p) in order {
                out.insert(p);
                let op = Op::EmergencyCoverage {
                    block: block.clone(),
                    person: p.clone(),
                };
                match self.apply(op) {
                    Ok(_) => {
                        covers.push(Cover {
                            block: block.clone(),
                            person: p.clone(),
                        });
                        filled = true;
                        break;
                    }
                    Err(r) => refused.push(Attempt {
                        person: p.clone(),
                        refused: r,
                    }),
                }
            }
            if !filled {
                break;
            }
        }
        let after = self.state.assignees(block).len();
        (after < required).then(|| Gap {
            block: block.clone(),
            day: b.day,
            pool: b.pool,
            required: b.required,
            staffed_before: before,
            staffed_after: after,
            tried_total: refused.len(),
            tried: refused.into_iter().take(TRIED_MAX).collect(),
        })
    }

    /// Minutes of duty `person` has in the clone.
    fn duty_min(&self, person: &PersonId) -> u64 {
        self.state
            .duty_of(person)
            .iter()
            .filter_map(|b| self.state.block_of(b))
            .map(|b| u64::from(b.duration_min))
            .sum()
    }
}

/// Consecutive days as `(first, last)` runs, each at most
/// [`LEAVE_DAYS_MAX`] days long.
fn runs(days: &BTreeSet<u32>) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &d in days {
        match out.last_mut() {
            Some((first, last))
                if last.checked_add(1) == Some(d) && d - *first < LEAVE_DAYS_MAX =>
            {
                *last = d
            }
            _ => out.push((d, d)),
        }
    }
    out
}

/// A key no client sends: blake3 of a label and the index.
fn coverage_key(index: u64) -> IdempotencyKey {
    let mut h = blake3::Hasher::new();
    h.update(b"bulwark chaos coverage");
    h.update(&index.to_le_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&h.finalize().as_bytes()[..16]);
    IdempotencyKey(key)
}

#[cfg(test)]
mod tests;
