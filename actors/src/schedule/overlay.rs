//! [`Overlay`]: tables that read through to a base and keep their own
//! writes in memory, for trial runs (the CAP gate judges a provisional
//! change against the committed schedule plus the changes still pending)
//! without touching the base. Its memory is what the trial writes.
//!
//! Two simplifications, both harmless for a short trial: keys are never
//! forgotten (a trial adds a handful), and rejections are counted, not
//! kept.

use std::collections::{BTreeMap, BTreeSet};

use super::tables::{KeyRecord, Tables, TablesRead, Understaffed};
use super::{
    ArchivedBlock, Assignment, Block, BlockId, IdempotencyKey, Interval, Person, PersonId,
    RejectionRecord,
};
use crate::chain::{ChainHead, Link};

/// Tables over `base` whose writes stay here. See the module docs.
pub struct Overlay<'a, B> {
    base: &'a B,
    last_index: Option<u64>,
    approved_through: Option<u32>,
    chain: Option<ChainHead>,
    people: BTreeMap<PersonId, Person>,
    blocks: BTreeMap<BlockId, Block>,
    /// `None`: removed here.
    assign: BTreeMap<(BlockId, PersonId), Option<Assignment>>,
    /// `None`: removed here.
    duty: BTreeMap<PersonId, BTreeMap<(u64, BlockId), Option<Interval>>>,
    leave: BTreeMap<PersonId, BTreeSet<u32>>,
    keys: BTreeMap<IdempotencyKey, KeyRecord>,
    rejected: u64,
    /// Blocks removed or archived here.
    gone: BTreeSet<BlockId>,
    archive: BTreeMap<(u32, BlockId), ArchivedBlock>,
    archived_through: Option<u32>,
    retired: BTreeMap<PersonId, u32>,
    /// People removed here (their base leave and retirement with them).
    gone_people: BTreeSet<PersonId>,
}

impl<'a, B: TablesRead> Overlay<'a, B> {
    /// Empty writes over `base`.
    pub fn new(base: &'a B) -> Overlay<'a, B> {
        Overlay {
            base,
            last_index: None,
            approved_through: None,
            chain: None,
            people: BTreeMap::new(),
            blocks: BTreeMap::new(),
            assign: BTreeMap::new(),
            duty: BTreeMap::new(),
            leave: BTreeMap::new(),
            keys: BTreeMap::new(),
            rejected: 0,
            gone: BTreeSet::new(),
            archive: BTreeMap::new(),
            archived_through: None,
            retired: BTreeMap::new(),
            gone_people: BTreeSet::new(),
        }
    }

    /// Rejections the trial recorded.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    fn min_person() -> PersonId {
        PersonId(String::new())
    }

    fn min_block() -> BlockId {
        BlockId(String::new())
    }
}

impl<B: TablesRead> TablesRead for Overlay<'_, B> {
    fn last_index(&self) -> u64 {
        self.last_index.unwrap_or_else(|| self.base.last_index())
    }

    fn approved_through(&self) -> Option<u32> {
        self.approved_through
            .or_else(|| self.base.approved_through())
    }

    fn chain(&self) -> &ChainHead {
        self.chain.as_ref().unwrap_or_else(|| self.base.chain())
    }

    fn person(&self, id: &PersonId) -> Option<Person> {
        if let Some(p) = self.people.get(id) {
            return Some(p.clone());
        }
        if self.gone_people.contains(id) {
            return None;
        }
        self.base.person(id)
    }

    fn block(&self, id: &BlockId) -> Option<Block> {
        if self.gone.contains(id) {
            return None;
        }
        self.blocks.get(id).cloned().or_else(|| self.base.block(id))
    }

    fn assignments_on(&self, block: &BlockId) -> Vec<(PersonId, Assignment)> {
        let mut on: BTreeMap<PersonId, Assignment> =
            self.base.assignments_on(block).into_iter().collect();
        let from = (block.clone(), Self::min_person());
        for ((b, p), a) in self.assign.range(from..) {
            if b != block {
                break;
            }
            match a {
                Some(a) => on.insert(p.clone(), *a),
                None => on.remove(p),
            };
        }
        on.into_iter().collect()
    }

    fn assignment(&self, block: &BlockId, person: &PersonId) -> Option<Assignment> {
        match self.assign.get(&(block.clone(), person.clone())) {
            Some(a) => *a,
            None => self.base.assignment(block, person),
        }
    }

    fn duty_starting(&self, person: &PersonId, from: u64, to: u64) -> Vec<(Interval, BlockId)> {
        let mut duty: BTreeMap<(u64, BlockId), Interval> = self
            .base
            .duty_starting(person, from, to)
            .into_iter()
            .map(|(iv, b)| ((iv.start, b), iv))
            .collect();
        if let Some(mine) = self.duty.get(person) {
            for ((start, b), iv) in mine.range((from, Self::min_block())..) {
                if *start >= to {
                    break;
                }
                match iv {
                    Some(iv) => duty.insert((*start, b.clone()), *iv),
                    None => duty.remove(&(*start, b.clone())),
                };
            }
        }
        duty.into_iter().map(|((_, b), iv)| (iv, b)).collect()
    }

    fn understaffed(&self, through_day: u32, limit: usize) -> Vec<Understaffed> {
        // Blocks this trial touched may have filled or opened: ask the base
        // for enough to make up for them, then judge every candidate here.
        let touched: BTreeSet<&BlockId> = self
            .assign
            .keys()
            .map(|(b, _)| b)
            .chain(self.blocks.keys())
            .collect();
        let mut candidates: BTreeSet<(u32, BlockId)> = self
            .base
            .understaffed(through_day, limit.saturating_add(touched.len()))
            .into_iter()
            .filter_map(|u| Some((self.block(&u.block)?.day, u.block)))
            .collect();
        for b in touched {
            if let Some(blk) = self.block(b) {
                if blk.day <= through_day {
                    candidates.insert((blk.day, b.clone()));
                }
            }
        }
        candidates
            .into_iter()
            .filter_map(|(_, id)| {
                // As the trial sees it: a block the base holds in range may
                // have been removed and added again on a later day.
                let b = self.block(&id).filter(|b| b.day <= through_day)?;
                let staffed = self.assignments_on(&id).len();
                (staffed < usize::from(b.required)).then_some(Understaffed {
                    block: id,
                    staffed,
                    required: b.required,
                })
            })
            .take(limit)
            .collect()
    }

    fn leave_day_in(&self, person: &PersonId, from: u32, to: u32) -> Option<u32> {
        let mine = self
            .leave
            .get(person)
            .and_then(|l| l.range(from..=to).next().copied());
        if self.gone_people.contains(person) {
            return mine;
        }
        match (mine, self.base.leave_day_in(person, from, to)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn key(&self, key: &IdempotencyKey) -> Option<KeyRecord> {
        self.keys.get(key).cloned().or_else(|| self.base.key(key))
    }

    fn leave_days(&self, person: &PersonId, from: u32, to: u32) -> Vec<u32> {
        let mut days: BTreeSet<u32> = if self.gone_people.contains(person) {
            BTreeSet::new()
        } else {
            self.base.leave_days(person, from, to).into_iter().collect()
        };
        if let Some(l) = self.leave.get(person) {
            days.extend(l.range(from..=to));
        }
        days.into_iter().collect()
    }

    fn blocks_by_day(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<Block> {
        let mut all: BTreeMap<(u32, BlockId), Block> = self
            .base
            .blocks_by_day(
                from_day,
                after,
                to_day,
                limit.saturating_add(self.gone.len()),
            )
            .into_iter()
            .filter(|b| !self.gone.contains(&b.id))
            .map(|b| ((b.day, b.id.clone()), b))
            .collect();
        for b in self.blocks.values() {
            let k = (b.day, b.id.clone());
            let past = match after {
                Some(a) => k > (from_day, a.clone()),
                None => b.day >= from_day,
            };
            if b.day <= to_day && past {
                all.insert(k, b.clone());
            }
        }
        all.into_values().take(limit).collect()
    }

    fn archived_through(&self) -> Option<u32> {
        self.archived_through
            .or_else(|| self.base.archived_through())
    }

    fn retired_from(&self, person: &PersonId) -> Option<u32> {
        if let Some(d) = self.retired.get(person) {
            return Some(*d);
        }
        if self.gone_people.contains(person) {
            return None;
        }
        self.base.retired_from(person)
    }

    fn people_with_prefix(&self, prefix: &str, limit: usize) -> Vec<PersonId> {
        let base = self
            .base
            .people_with_prefix(prefix, limit.saturating_add(self.gone_people.len()));
        let mine = self
            .people
            .range(PersonId(prefix.to_string())..)
            .take_while(|(id, _)| id.as_str().starts_with(prefix))
            .map(|(id, _)| id.clone());
        let all: BTreeSet<PersonId> = base
            .into_iter()
            .filter(|p| !self.gone_people.contains(p))
            .chain(mine)
            .collect();
        all.into_iter().take(limit).collect()
    }

    fn blocks_with_prefix(&self, prefix: &str, limit: usize) -> Vec<Block> {
        let base = self
            .base
            .blocks_with_prefix(prefix, limit.saturating_add(self.gone.len()));
        let mut all: BTreeMap<BlockId, Block> = base
            .into_iter()
            .filter(|b| !self.gone.contains(&b.id))
            .map(|b| (b.id.clone(), b))
            .collect();
        all.extend(
            self.blocks
                .range(BlockId(prefix.to_string())..)
                .take_while(|(id, _)| id.as_str().starts_with(prefix))
                .map(|(id, b)| (id.clone(), b.clone())),
        );
        all.into_values().take(limit).collect()
    }

    fn archived_day(&self, id: &BlockId) -> Option<u32> {
        self.archive
            .keys()
            .find(|(_, b)| b == id)
            .map(|(d, _)| *d)
            .or_else(|| self.base.archived_day(id))
    }

    fn archived_blocks(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<ArchivedBlock> {
        let mut all: BTreeMap<(u32, BlockId), ArchivedBlock> = self
            .base
            .archived_blocks(from_day, after, to_day, limit)
            .into_iter()
            .map(|a| ((a.block.day, a.block.id.clone()), a))
            .collect();
        for (k, a) in &self.archive {
            let past = match after {
                Some(b) => *k > (from_day, b.clone()),
                None => k.0 >= from_day,
            };
            if k.0 <= to_day && past {
                all.insert(k.clone(), a.clone());
            }
        }
        all.into_values().take(limit).collect()
    }
}

impl<B: TablesRead> Tables for Overlay<'_, B> {
    fn set_last_index(&mut self, index: u64) {
        self.last_index = Some(index);
    }

    fn set_approved_through(&mut self, day: u32) {
        self.approved_through = Some(day);
    }

    fn push_link(&mut self, link: &Link) {
        let mut chain = self.chain().clone();
        chain.push(link);
        self.chain = Some(chain);
    }

    fn set_validators(&mut self, v: &crate::epoch::InForce) {
        let mut chain = self.chain().clone();
        chain.set_in_force(v.clone());
        self.chain = Some(chain);
    }

    fn put_person(&mut self, person: &Person) {
        self.people.insert(person.id.clone(), person.clone());
    }

    fn remove_person(&mut self, person: &PersonId) {
        self.people.remove(person);
        self.leave.remove(person);
        self.retired.remove(person);
        self.gone_people.insert(person.clone());
    }

    fn put_block(&mut self, block: &Block) {
        self.gone.remove(&block.id);
        self.blocks.insert(block.id.clone(), block.clone());
    }

    fn insert_assignment(&mut self, block: &Block, person: &PersonId, assignment: Assignment) {
        let iv = block.interval();
        self.assign
            .insert((block.id.clone(), person.clone()), Some(assignment));
        self.duty
            .entry(person.clone())
            .or_default()
            .insert((iv.start, block.id.clone()), Some(iv));
    }

    fn remove_assignment(&mut self, block: &Block, person: &PersonId) {
        let iv = block.interval();
        self.assign.insert((block.id.clone(), person.clone()), None);
        self.duty
            .entry(person.clone())
            .or_default()
            .insert((iv.start, block.id.clone()), None);
    }

    fn add_leave(&mut self, person: &PersonId, from: u32, to: u32) {
        self.leave
            .entry(person.clone())
            .or_default()
            .extend(from..=to);
    }

    fn remember_key(&mut self, key: IdempotencyKey, record: KeyRecord) {
        self.keys.insert(key, record);
    }

    fn record_rejection(&mut self, _record: RejectionRecord) {
        self.rejected += 1;
    }

    fn retire_person(&mut self, person: &PersonId, day: u32) {
        self.retired.insert(person.clone(), day);
    }

    fn remove_block(&mut self, block: &Block) {
        self.blocks.remove(&block.id);
        self.gone.insert(block.id.clone());
    }

    fn archive_block(&mut self, block: &Block) {
        let assigned = self.assignments_on(&block.id);
        for (p, _) in &assigned {
            self.remove_assignment(block, p);
        }
        self.remove_block(block);
        self.archive.insert(
            (block.day, block.id.clone()),
            ArchivedBlock {
                block: block.clone(),
                assigned,
            },
        );
    }

    fn set_archived_through(&mut self, day: u32) {
        self.archived_through = Some(day);
    }
}
