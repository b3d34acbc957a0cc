//! Where a schedule's state lives. The rules in [`super::Schedule`] read
//! and write it only through [`Tables`], so the same code runs over the
//! in-memory [`MemTables`] (tests, the simulation's replays, `ledger
//! verify`) and over the replica's redb tables.
//!
//! Every query a command needs is bounded by the command, never by the
//! length of the history: one person, one block (at most
//! [`super::BLOCK_REQUIRED_MAX`] people), one person's duty in a window
//! of days, one key.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    ArchivedBlock, Assignment, Block, BlockId, IdempotencyKey, Interval, Outcome, Person, PersonId,
    RejectionRecord, IDEMPOTENCY_KEYS_MAX, REJECTIONS_KEPT,
};
use crate::chain::{ChainHead, Link};

/// The first outcome of an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The log index it applied at.
    pub index: u64,
    /// blake3 of the command's op: a retry carries the same op.
    pub op_hash: [u8; 32],
    /// The outcome it got.
    pub outcome: Outcome,
}

/// A block that has fewer people than it requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Understaffed {
    /// The block.
    pub block: BlockId,
    /// People on it.
    pub staffed: usize,
    /// People it requires.
    pub required: u8,
}

/// The state a schedule reads and writes. Reads return owned values; a
/// backend whose reads can fail (a disk) records the failure and refuses
/// to commit what was computed from it.
pub trait TablesRead {
    /// The last log index applied.
    fn last_index(&self) -> u64;
    /// The last finally approved day.
    fn approved_through(&self) -> Option<u32>;
    /// The ledger chain's head.
    fn chain(&self) -> &ChainHead;
    /// The person `id`.
    fn person(&self, id: &PersonId) -> Option<Person>;
    /// The block `id`.
    fn block(&self, id: &BlockId) -> Option<Block>;
    /// The assignments on `block`, by person.
    fn assignments_on(&self, block: &BlockId) -> Vec<(PersonId, Assignment)>;
    /// `person`'s assignment to `block`.
    fn assignment(&self, block: &BlockId, person: &PersonId) -> Option<Assignment>;
    /// `person`'s blocks that start in `[from, to)` minutes, by start time.
    fn duty_starting(&self, person: &PersonId, from: u64, to: u64) -> Vec<(Interval, BlockId)>;
    /// Blocks on days up to `through_day` with fewer people than they need,
    /// earliest day first, at most `limit`.
    fn understaffed(&self, through_day: u32, limit: usize) -> Vec<Understaffed>;
    /// The first day of `from..=to` that `person` is on leave.
    fn leave_day_in(&self, person: &PersonId, from: u32, to: u32) -> Option<u32>;
    /// The days of `from..=to` that `person` is on leave, in order.
    fn leave_days(&self, person: &PersonId, from: u32, to: u32) -> Vec<u32>;
    /// Blocks on days `from_day..=to_day` in (day, id) order, at most
    /// `limit`; with `after`, only those after (`from_day`, `after`).
    fn blocks_by_day(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<Block>;
    /// The record of `key`.
    fn key(&self, key: &IdempotencyKey) -> Option<KeyRecord>;
    /// The last archived day.
    fn archived_through(&self) -> Option<u32>;
    /// The day `person` is retired from.
    fn retired_from(&self, person: &PersonId) -> Option<u32>;
    /// The day of the archived block `id`, if it was archived.
    fn archived_day(&self, id: &BlockId) -> Option<u32>;
    /// People whose id starts with `prefix`, in id order, at most `limit`.
    fn people_with_prefix(&self, prefix: &str, limit: usize) -> Vec<PersonId>;
    /// Blocks (not archived) whose id starts with `prefix`, in id order,
    /// at most `limit`.
    fn blocks_with_prefix(&self, prefix: &str, limit: usize) -> Vec<Block>;
    /// Archived blocks on days `from_day..=to_day` in (day, id) order, at
    /// most `limit`; with `after`, only those after (`from_day`, `after`).
    fn archived_blocks(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<ArchivedBlock>;
}

/// [`TablesRead`] and the writes a command makes.
pub trait Tables: TablesRead {
    /// Sets the last log index applied.
    fn set_last_index(&mut self, index: u64);
    /// Sets the last finally approved day.
    fn set_approved_through(&mut self, day: u32);
    /// Appends `link` to the chain.
    fn push_link(&mut self, link: &Link);
    /// Records the validator sets in force (an epoch began).
    fn set_validators(&mut self, v: &crate::epoch::InForce);
    /// Adds (or replaces) a person.
    fn put_person(&mut self, person: &Person);
    /// Adds a block (it has nobody yet).
    fn put_block(&mut self, block: &Block);
    /// Puts `person` on `block`, keeping every index.
    fn insert_assignment(&mut self, block: &Block, person: &PersonId, assignment: Assignment);
    /// Takes `person` off `block`, keeping every index.
    fn remove_assignment(&mut self, block: &Block, person: &PersonId);
    /// Grants `person` leave for days `from..=to`.
    fn add_leave(&mut self, person: &PersonId, from: u32, to: u32);
    /// Records `key`'s first outcome; beyond [`IDEMPOTENCY_KEYS_MAX`] keys
    /// the oldest (by log index) is forgotten.
    fn remember_key(&mut self, key: IdempotencyKey, record: KeyRecord);
    /// Records a rejection; the last [`REJECTIONS_KEPT`] are kept and all
    /// are counted.
    fn record_rejection(&mut self, record: RejectionRecord);
    /// Retires `person` from `day` on.
    fn retire_person(&mut self, person: &PersonId, day: u32);
    /// Removes `block` (nobody is on it) and its index rows.
    fn remove_block(&mut self, block: &Block);
    /// Removes `person` (on no block), their leave and retirement.
    fn remove_person(&mut self, person: &PersonId);
    /// Moves `block` and its assignments out of every hot table and index
    /// into the archive.
    fn archive_block(&mut self, block: &Block);
    /// Sets the last archived day.
    fn set_archived_through(&mut self, day: u32);
}

/// The schedule's state in memory. Its encoding is the snapshot format of
/// `ScheduleState` (the derived indices are rebuilt, not stored).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemTables {
    pub(crate) last_index: u64,
    pub(crate) people: BTreeMap<PersonId, Person>,
    pub(crate) blocks: BTreeMap<BlockId, Block>,
    pub(crate) assignments: BTreeMap<BlockId, BTreeMap<PersonId, Assignment>>,
    pub(crate) leave: BTreeMap<PersonId, BTreeSet<u32>>,
    pub(crate) approved_through: Option<u32>,
    pub(crate) keys: BTreeMap<IdempotencyKey, KeyRecord>,
    pub(crate) rejections: VecDeque<RejectionRecord>,
    pub(crate) rejected_total: u64,
    /// The ledger chain's head: which committed commands joined the chain
    /// (see the ledger's `admit`).
    pub(crate) chain: ChainHead,
    /// The last archived day.
    pub(crate) archived_through: Option<u32>,
    /// Retired people, with the first day they cannot work.
    pub(crate) retired: BTreeMap<PersonId, u32>,
    /// Archived blocks with their people, by (day, id).
    pub(crate) archive: BTreeMap<(u32, BlockId), ArchivedBlock>,
    /// Derived: archived blocks' days by id.
    #[serde(skip)]
    pub(crate) archived_ids: BTreeMap<BlockId, u32>,
    /// Derived: each person's blocks by start time.
    #[serde(skip)]
    pub(crate) by_person: BTreeMap<PersonId, BTreeMap<(u64, BlockId), Interval>>,
    /// Derived: idempotency keys by the index they applied at.
    #[serde(skip)]
    pub(crate) key_order: BTreeMap<u64, IdempotencyKey>,
    /// Derived: blocks with an open slot, by day.
    #[serde(skip)]
    pub(crate) open: BTreeSet<(u32, BlockId)>,
    /// Derived: every block, by day.
    #[serde(skip)]
    pub(crate) by_day: BTreeSet<(u32, BlockId)>,
}

impl MemTables {
    /// Rebuilds the derived indices from the stored fields.
    pub(crate) fn rebuild(&mut self) -> Result<(), String> {
        self.by_person.clear();
        self.open.clear();
        for (blk, people) in &self.assignments {
            let iv = self
                .blocks
                .get(blk)
                .ok_or_else(|| format!("assignment to unknown block {blk}"))?
                .interval();
            for p in people.keys() {
                self.by_person
                    .entry(p.clone())
                    .or_default()
                    .insert((iv.start, blk.clone()), iv);
            }
        }
        self.by_day.clear();
        for b in self.blocks.values() {
            if self.staffed(&b.id) < usize::from(b.required) {
                self.open.insert((b.day, b.id.clone()));
            }
            self.by_day.insert((b.day, b.id.clone()));
        }
        self.archived_ids = self.archive.keys().map(|(d, b)| (b.clone(), *d)).collect();
        if self.archived_ids.len() != self.archive.len() {
            return Err("two archived blocks under one id".into());
        }
        self.key_order = self.keys.iter().map(|(k, r)| (r.index, *k)).collect();
        if self.key_order.len() != self.keys.len() {
            return Err("two idempotency keys at one index".into());
        }
        Ok(())
    }

    pub(crate) fn staffed(&self, block: &BlockId) -> usize {
        self.assignments.get(block).map_or(0, BTreeMap::len)
    }

    fn reopen(&mut self, block: &Block) {
        if self.staffed(&block.id) < usize::from(block.required) {
            self.open.insert((block.day, block.id.clone()));
        } else {
            self.open.remove(&(block.day, block.id.clone()));
        }
    }
}

impl TablesRead for MemTables {
    fn last_index(&self) -> u64 {
        self.last_index
    }

    fn approved_through(&self) -> Option<u32> {
        self.approved_through
    }

    fn chain(&self) -> &ChainHead {
        &self.chain
    }

    fn person(&self, id: &PersonId) -> Option<Person> {
        self.people.get(id).cloned()
    }

    fn block(&self, id: &BlockId) -> Option<Block> {
        self.blocks.get(id).cloned()
    }

    fn assignments_on(&self, block: &BlockId) -> Vec<(PersonId, Assignment)> {
        self.assignments
            .get(block)
            .map(|m| m.iter().map(|(p, a)| (p.clone(), *a)).collect())
            .unwrap_or_default()
    }

    fn assignment(&self, block: &BlockId, person: &PersonId) -> Option<Assignment> {
        self.assignments.get(block)?.get(person).copied()
    }

    fn duty_starting(&self, person: &PersonId, from: u64, to: u64) -> Vec<(Interval, BlockId)> {
        let Some(m) = self.by_person.get(person) else {
            return Vec::new();
        };
        if from >= to {
            return Vec::new();
        }
        let lo = (from, min_block_id());
        m.range(lo..)
            .take_while(|((start, _), _)| *start < to)
            .map(|((_, b), iv)| (*iv, b.clone()))
            .collect()
    }

    fn understaffed(&self, through_day: u32, limit: usize) -> Vec<Understaffed> {
        self.open
            .iter()
            .take_while(|(day, _)| *day <= through_day)
            .take(limit)
            .filter_map(|(_, id)| {
                let b = self.blocks.get(id)?;
                Some(Understaffed {
                    block: id.clone(),
                    staffed: self.staffed(id),
                    required: b.required,
                })
            })
            .collect()
    }

    fn leave_day_in(&self, person: &PersonId, from: u32, to: u32) -> Option<u32> {
        self.leave.get(person)?.range(from..=to).next().copied()
    }

    fn leave_days(&self, person: &PersonId, from: u32, to: u32) -> Vec<u32> {
        self.leave
            .get(person)
            .map(|l| l.range(from..=to).copied().collect())
            .unwrap_or_default()
    }

    fn blocks_by_day(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<Block> {
        use std::ops::Bound;
        let lo = match after {
            Some(a) => Bound::Excluded((from_day, a.clone())),
            None => Bound::Included((from_day, min_block_id())),
        };
        self.by_day
            .range((lo, Bound::Unbounded))
            .take_while(|(d, _)| *d <= to_day)
            .take(limit)
            .filter_map(|(_, id)| self.blocks.get(id).cloned())
            .collect()
    }

    fn key(&self, key: &IdempotencyKey) -> Option<KeyRecord> {
        self.keys.get(key).cloned()
    }

    fn archived_through(&self) -> Option<u32> {
        self.archived_through
    }

    fn retired_from(&self, person: &PersonId) -> Option<u32> {
        self.retired.get(person).copied()
    }

    fn archived_day(&self, id: &BlockId) -> Option<u32> {
        self.archived_ids.get(id).copied()
    }

    fn people_with_prefix(&self, prefix: &str, limit: usize) -> Vec<PersonId> {
        self.people
            .range(PersonId(prefix.to_string())..)
            .take_while(|(id, _)| id.as_str().starts_with(prefix))
            .take(limit)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn blocks_with_prefix(&self, prefix: &str, limit: usize) -> Vec<Block> {
        self.blocks
            .range(BlockId(prefix.to_string())..)
            .take_while(|(id, _)| id.as_str().starts_with(prefix))
            .take(limit)
            .map(|(_, b)| b.clone())
            .collect()
    }

    fn archived_blocks(
        &self,
        from_day: u32,
        after: Option<&BlockId>,
        to_day: u32,
        limit: usize,
    ) -> Vec<ArchivedBlock> {
        use std::ops::Bound;
        let lo = match after {
            Some(a) => Bound::Excluded((from_day, a.clone())),
            None => Bound::Included((from_day, min_block_id())),
        };
        self.archive
            .range((lo, Bound::Unbounded))
            .take_while(|((d, _), _)| *d <= to_day)
            .take(limit)
            .map(|(_, a)| a.clone())
            .collect()
    }
}

impl Tables for MemTables {
    fn set_last_index(&mut self, index: u64) {
        self.last_index = index;
    }

    fn set_approved_through(&mut self, day: u32) {
        self.approved_through = Some(day);
    }

    fn push_link(&mut self, link: &Link) {
        self.chain.push(link);
    }

    fn set_validators(&mut self, v: &crate::epoch::InForce) {
        self.chain.set_in_force(v.clone());
    }

    fn put_person(&mut self, person: &Person) {
        self.people.insert(person.id.clone(), person.clone());
    }

    fn put_block(&mut self, block: &Block) {
        self.blocks.insert(block.id.clone(), block.clone());
        self.by_day.insert((block.day, block.id.clone()));
        self.reopen(block);
    }

    fn insert_assignment(&mut self, block: &Block, person: &PersonId, assignment: Assignment) {
        let iv = block.interval();
        self.assignments
            .entry(block.id.clone())
            .or_default()
            .insert(person.clone(), assignment);
        self.by_person
            .entry(person.clone())
            .or_default()
            .insert((iv.start, block.id.clone()), iv);
        self.reopen(block);
    }

    fn remove_assignment(&mut self, block: &Block, person: &PersonId) {
        let iv = block.interval();
        if let Some(m) = self.assignments.get_mut(&block.id) {
            m.remove(person);
            if m.is_empty() {
                self.assignments.remove(&block.id);
            }
        }
        if let Some(m) = self.by_person.get_mut(person) {
            m.remove(&(iv.start, block.id.clone()));
            if m.is_empty() {
                self.by_person.remove(person);
            }
        }
        self.reopen(block);
    }

    fn add_leave(&mut self, person: &PersonId, from: u32, to: u32) {
        self.leave
            .entry(person.clone())
            .or_default()
            .extend(from..=to);
    }

    fn remember_key(&mut self, key: IdempotencyKey, record: KeyRecord) {
        self.key_order.insert(record.index, key);
        self.keys.insert(key, record);
        while self.keys.len() > IDEMPOTENCY_KEYS_MAX {
            let Some((_, oldest)) = self.key_order.pop_first() else {
                break;
            };
            self.keys.remove(&oldest);
        }
    }

    fn record_rejection(&mut self, record: RejectionRecord) {
        self.rejected_total += 1;
        self.rejections.push_back(record);
        while self.rejections.len() > REJECTIONS_KEPT {
            self.rejections.pop_front();
        }
    }

    fn retire_person(&mut self, person: &PersonId, day: u32) {
        self.retired.insert(person.clone(), day);
    }

    fn remove_block(&mut self, block: &Block) {
        let key = (block.day, block.id.clone());
        self.blocks.remove(&block.id);
        self.by_day.remove(&key);
        self.open.remove(&key);
    }

    fn remove_person(&mut self, person: &PersonId) {
        self.people.remove(person);
        self.leave.remove(person);
        self.retired.remove(person);
        self.by_person.remove(person);
    }

    fn archive_block(&mut self, block: &Block) {
        let assigned = self.assignments_on(&block.id);
        for (p, _) in &assigned {
            self.remove_assignment(block, p);
        }
        self.remove_block(block);
        self.archived_ids.insert(block.id.clone(), block.day);
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

/// The smallest block id, to start a range at a minute.
fn min_block_id() -> BlockId {
    BlockId(String::new())
}
